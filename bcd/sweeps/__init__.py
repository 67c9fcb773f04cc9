"""Hyperparameter sweeps with Optuna: the study and its search space, pruning inside a run, the sweep report."""
