"""The typed schemas under the YAML files: each `_<name>` option of a group is a dataclass (bcd.models.specs for the
model, the schemas registered beside their builders in bcd.models.registry for loss, optimizer, scheduler and
colour_norm,
bcd.data.spec) that conf/<group>/<option>.yaml extends, so a default has one home and a mistyped key or a
value of the wrong type fails when the config is composed."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from bcd.data.decode import MAX_PIXELS
from bcd.data.spec import DatasetConfig
from bcd.models import specs
from bcd.models.metrics import SELECTION_METRIC
from bcd.models.registry import REGISTRY

# values of the code that YAML files refer to as ${bcd.const:<name>} instead of repeating them
CONSTANTS = {"max_pixels": MAX_PIXELS, "selection_metric": SELECTION_METRIC}


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent); every entry point calls it before composing."""
    store = ConfigStore.instance()
    store.store(group="model", name="_base", node=specs.ModelConfig)
    store.store(group="dataset", name="_base", node=DatasetConfig)
    for group, entries in REGISTRY.items():
        for name, entry in entries.items():
            store.store(group=group, name=f"_{name}", node=entry.schema)
    if not OmegaConf.has_resolver("bcd.const"):
        OmegaConf.register_new_resolver("bcd.const", CONSTANTS.__getitem__)
