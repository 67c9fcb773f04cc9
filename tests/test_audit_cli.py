"""`python -m bcd.audit`: the report lists planted duplicates, a label conflict, the colour shortcut and the
proxy groups, and is never written inside the dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bcd.audit import run_audit
from bcd.utils.errors import ConfigError
from tests.helpers.checks import assert_png
from tests.helpers.cli import run_cli
from tests.helpers.configs import compose_config
from tests.helpers.paths import REPO
from tests.helpers.planted_data import plant_duplicates, write_sessions


def test_audit_cli_reports_planted_duplicates_conflict_and_proxy_groups(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_sessions(root)
    planted = plant_duplicates(root)
    (root / "Pro" / "notes.txt").write_text("not an image")
    (root / "Pro" / "empty.jpg").write_bytes(b"")
    result = run_cli(["bcd.audit", "dataset=folder", f"dataset.root={root}", "dataset.groups=proxy", "dataset.proxy_groups=4",
                      f"paths.log_dir={tmp_path / 'runs'}"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [out] = (tmp_path / "runs" / "audit" / "runs").iterdir()
    audit = json.loads((out / "audit.json").read_text())

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    assert [[m["path"] for m in group] for group in audit["exact_duplicates"]["list"]] == [
        sorted(rel(p) for p in planted["exact"])
    ]
    near = {tuple(sorted(pair["paths"])) for pair in audit["near_duplicates"]["pairs_not_exact"]}
    assert near == {tuple(sorted(rel(p) for p in planted[kind])) for kind in ("resized", "reencoded", "conflict")}
    assert [{m["path"] for m in group} for group in audit["label_conflicts"]] == [{rel(p) for p in planted["conflict"]}]
    assert audit["bad_files"] == {"Pro/empty.jpg": "empty file (0 bytes)"}
    assert audit["other_files"] == ["Pro/notes.txt"]
    assert audit["counts"] == {"Benign": 23, "Pro": 21}
    assert 0.0 <= audit["colour_shortcut"]["balanced_accuracy"] <= 1.0 and audit["colour_shortcut"]["chance"] == 0.5
    assert audit["split_grouping"]["split_method"] == "proxy-group"
    assert {c: len(sizes) for c, sizes in audit["split_grouping"]["proxy_cluster_sizes"].items()} == {"Benign": 4, "Pro": 4}
    report = (out / "audit.md").read_text()
    assert "PROXY groups" in report and "a proxy, not patients" in report and "Can colour alone" in report
    for figure in ("colour_by_class", "duplicates", "proxy_groups_Benign", "proxy_groups_Pro"):
        assert_png(out / audit["figures"][figure])
    assert not any(p.name.startswith("audit") for p in root.rglob("*"))


def test_audit_refuses_to_write_inside_the_dataset_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_sessions(root, per_session=2, sessions=2)
    cfg = compose_config("audit", ["dataset=folder", f"dataset.root={root}", f"paths.output_dir={root / 'audit_run'}"])
    with pytest.raises(ConfigError, match="inside the data folder"):
        run_audit(cfg)
