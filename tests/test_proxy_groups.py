"""Proxy-patient groups: acquisition-colour clusters recover planted sessions, and the split keeps them whole."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bcd.data.datamodule import SmearDataModule
from bcd.data.proxy_groups import proxy_group_ids
from bcd.data.sources import Sample, scan_class_folders
from bcd.data.splits import split_groups, split_method
from tests.helpers.planted_data import write_sessions


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, str]]:
    root = tmp_path_factory.mktemp("sessions")
    return root, write_sessions(root)


def test_proxy_groups_recover_planted_sessions(sessions) -> None:
    root, session_of = sessions
    samples, _ = scan_class_folders(root, None)
    ids = proxy_group_ids(samples, clusters_per_class=4)
    pairs = Counter(zip(ids, (session_of[s.path] for s in samples), strict=True))
    # purity: the share of images whose cluster's most common session is their own
    majority = sum(max(n for (cluster, _), n in pairs.items() if cluster == c) for c in set(ids))
    assert majority / len(samples) >= 0.9
    assert len(set(ids)) == 8 and all(proxy.startswith("proxy:") for proxy in ids)


@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_group_split_keeps_each_session_whole(sessions, seed: int) -> None:
    root, session_of = sessions
    dm = SmearDataModule(name="t", layout="folder", root=str(root), groups="proxy", proxy_groups=4,
                         val_fraction=0.25, test_fraction=0.25, num_workers=0, img_size=32, seed=seed)
    dm.prepare()
    splits_of_session: dict[str, set[str]] = {}
    for sample in dm.samples:
        splits_of_session.setdefault(session_of[sample.path], set()).add(sample.split)
    assert all(len(splits) == 1 for splits in splits_of_session.values()), splits_of_session
    assert {s.split for s in dm.samples} == {"train", "val", "test"}
    assert dm.split_method == "proxy-group"
    assert len(dm.planned.group_ids) == len(dm.samples) and len(set(dm.planned.group_ids)) == 8


def test_a_real_group_wins_over_a_proxy() -> None:
    samples = [Sample(Path(f"/x/{i}.jpg"), "a", group="patient1" if i < 2 else None) for i in range(6)]
    features = np.array([[float(i % 3), 0.0] for i in range(6)])
    ids = proxy_group_ids(samples, clusters_per_class=2, features=features)
    assert ids[:2] == [None, None] and all(ids[2:])
    groups = split_groups(samples, "exact", proxy_ids=ids)
    assert groups[0] == groups[1]
    assert split_method("exact", samples, ids) == "proxy-group"
    assert split_method("exact", samples, [None] * 6) == "real-group"


def test_split_method_names_what_the_split_kept_together() -> None:
    samples = [Sample(Path("/a.jpg"), "a"), Sample(Path("/b.jpg"), "b")]
    assert [split_method(dedup, samples, None) for dedup in ("none", "exact", "near")] == [
        "image-level", "exact-dedup", "near-dedup"
    ]
