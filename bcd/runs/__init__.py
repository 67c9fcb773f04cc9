"""What a run leaves on disk: its run dir (run_dir.py), its summary.json schema (summary.py), and a trained run
found again from its checkpoint (trained.py)."""
