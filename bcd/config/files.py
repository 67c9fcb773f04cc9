"""Where the config files are, and composing a config the way `python -m bcd.<command>` does.

conf/ (and experiments/, which conf/experiment links to) sit at the top of the repository; bcd/conf links to
them in a checkout, and a wheel holds the files themselves there (pyproject.toml's package-data), so an
installed bcd composes its configs from any working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from bcd.config.store import register_configs


def _config_dir() -> Path:
    """bcd/conf: the files inside an installed wheel, the link to conf/ in a checkout."""
    found = Path(__file__).resolve().parents[1] / "conf"
    if not (found / "train.yaml").is_file():
        raise FileNotFoundError(
            f"bcd's config files are missing from {found}; reinstall bcd (pip install bcd-*.whl, or pip install -e . "
            "in a checkout, where bcd/conf links to ../conf)"
        )
    return found


CONFIG_DIR = _config_dir()


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m bcd.<command> <overrides>` composes (config_name: train, cv, sweep, ...)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
