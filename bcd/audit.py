"""Audit a dataset before training: `python -m bcd.audit dataset=... [dataset.near_threshold=6] [dataset.groups=proxy]`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.data.sources import load_samples
from bcd.evaluation.dataset_audit import audit_dataset
from bcd.reporting.dataset_audit_report import write_audit_report
from bcd.runs.run_dir import claim_run_dir

log = logging.getLogger(__name__)


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit cfg.dataset and write audit.md, audit.json and the PNGs to a new run dir; returns the summary."""
    out = Path(cfg.paths.output_dir).resolve()
    datamodule = instantiate(cfg.dataset)
    root = datamodule.data_root()
    claim_run_dir(out, root)
    samples, class_names = load_samples(datamodule.spec.layout, root, datamodule.spec.classes, datamodule.spec.manifest)
    audit = audit_dataset(
        samples, root, class_names, name=datamodule.spec.name, dedup=datamodule.spec.dedup,
        near_threshold=datamodule.spec.near_threshold,
        proxy_groups=datamodule.spec.proxy_groups if datamodule.spec.groups == "proxy" else None,
        reader=datamodule.reader, shortcut_folds=cfg.shortcut_folds,
        shortcut_warn_at=cfg.shortcut_warn_at, annotation_warn_margin=cfg.annotation_warn_margin, seed=cfg.seed,
    )
    summary = write_audit_report(out, audit, examples=cfg.examples)
    log.info("audit of %s written to %s", datamodule.spec.name, out)
    return summary


@entry_point("audit")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.audit dataset=... [dataset.near_threshold=6] [dataset.groups=proxy]`."""
    run_audit(cfg)


if __name__ == "__main__":
    main()
