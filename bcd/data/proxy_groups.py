"""Proxy patients: when a dataset has no patient or slide ids, cluster images by how they were acquired
(background tint, illumination, overall stain) into pseudo-sessions that a split keeps on one side.

A proxy is not a patient: two sessions of one patient, or two patients on one slide, are not told apart. It
only removes the easiest leak, a test image whose slide the model has already seen in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from bcd.data.colour_features import colour_features
from bcd.data.reader import DEFAULT_READER, ImageReader
from bcd.data.sources import DatasetError, Sample

__all__ = ["PROXY_PREFIX", "describe_proxy_groups", "proxy_cluster_sizes", "proxy_group_ids"]

PROXY_PREFIX = "proxy"


def proxy_group_ids(
    samples: Sequence[Sample],
    clusters_per_class: int,
    features: np.ndarray | None = None,
    seed: int = 0,
    reader: ImageReader = DEFAULT_READER,
) -> list[str | None]:
    """A proxy group id per sample ("proxy:<class>:<k>"), None for samples that already have a real group.

    Clustering runs within each class, `clusters_per_class` clusters each: classes differ in colour, so
    clusters over all images would come out class-pure anyway, and a stratified group split needs several
    groups of every class to put some in each of train, val and test. `features`: the acquisition features
    (ColourFeatures.acquisition()) of the samples, computed from the images when not given.
    """
    if clusters_per_class < 1:
        raise DatasetError(f"dataset.proxy_groups: {clusters_per_class} must be >= 1 (clusters per class)")
    if all(s.group is not None for s in samples):
        return [None] * len(samples)
    if features is None:
        features = colour_features([s.path for s in samples], reader).acquisition()
    if len(features) != len(samples):
        raise ValueError(f"proxy_group_ids: {len(features)} feature rows for {len(samples)} samples")
    # Scaled over the whole dataset, so a feature weighs the same in every class's clustering.
    scaled = StandardScaler().fit_transform(features) if len(samples) else features
    ids: list[str | None] = [None] * len(samples)
    for label in sorted({s.label for s in samples if s.group is None}):
        rows = [i for i, s in enumerate(samples) if s.label == label and s.group is None]
        k = min(clusters_per_class, len(rows))
        clusters = [0] * len(rows)
        if k > 1:
            clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(scaled[rows]).tolist()
        for row, cluster in zip(rows, clusters, strict=True):
            ids[row] = f"{PROXY_PREFIX}:{label}:{int(cluster)}"
    return ids


def proxy_cluster_sizes(proxy_ids: Sequence[str | None]) -> dict[str, list[int]]:
    """Images per proxy cluster, by class (largest first); samples with a real group are not counted."""
    by_class: dict[str, Counter[str]] = {}
    for proxy in proxy_ids:
        if proxy is not None:
            _, label, _ = proxy.split(":", 2)
            by_class.setdefault(label, Counter())[proxy] += 1
    return {label: sorted(counts.values(), reverse=True) for label, counts in sorted(by_class.items())}


def describe_proxy_groups(proxy_ids: Sequence[str | None]) -> str:
    """One line for logs and reports that names proxy groups for what they are."""
    sizes = proxy_cluster_sizes(proxy_ids)
    kept = sum(proxy is None for proxy in proxy_ids)
    real = f"; {kept} image(s) keep their real group" if kept else ""
    return (
        "split groups are PROXY groups (dataset.groups=proxy): acquisition-colour clusters standing in for "
        f"patients, not patient ids; images per cluster by class {sizes}{real}"
    )
