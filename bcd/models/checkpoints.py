"""Reading checkpoint and weights files without ever running code from them: torch.load(weights_only=True), with
at most an allow-list of exact data classes, and errors that say what the file is instead of advising to turn
the safety off."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file that is not a checkpoint (or weights file) bcd can read safely; the message names the file."""


# Data containers that Lightning checkpoints of other projects drag in through Hydra/OmegaConf hyper-parameters.
# Exact class names, never module prefixes: a prefix would let a file name any callable of the module
# (`omegaconf.OmegaConf.save`, say).
DATA_GLOBALS = frozenset(
    {
        "builtins.bool",
        "builtins.dict",
        "builtins.float",
        "builtins.int",
        "builtins.list",
        "builtins.set",
        "builtins.str",
        "builtins.tuple",
        "collections.OrderedDict",
        "collections.defaultdict",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.nodes.AnyNode",
        "omegaconf.nodes.BooleanNode",
        "omegaconf.nodes.BytesNode",
        "omegaconf.nodes.FloatNode",
        "omegaconf.nodes.IntegerNode",
        "omegaconf.nodes.PathNode",
        "omegaconf.nodes.StringNode",
        "typing.Any",
    }
)


def _resolve(qualified: str) -> Any:
    """The class an allow-listed name refers to (module path, then the attribute)."""
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _reason(error: Exception) -> str:
    """What was wrong with the file, in a few words; torch's own message advises loading with weights_only=False,
    which bcd never does and never suggests."""
    named = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
    if named:
        return f"it holds a Python object of {named.group(1)}, which bcd never loads"
    return f"it cannot be read as tensors and plain values: {type(error).__name__}"


def safe_load(path: str | Path, key: str, what: str, allowed: Iterable[str] = (), map_location: str = "cpu") -> Any:
    """torch.load(path, weights_only=True), allowing only the `allowed` exact globals that the file names.

    Args:
        path: the file to read.
        key: the config key that named it (for the message).
        what: what the file should have been ("a bcd checkpoint written by bcd.train", ...).
        allowed: exact qualified names of data classes the file may contain, from DATA_GLOBALS.
        map_location: where tensors go.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist; pass {what}")
    allowed = set(allowed) & DATA_GLOBALS
    try:
        named = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) if allowed else set()
    except Exception:  # not a zip checkpoint at all: torch.load below says why
        named = set()
    try:
        with torch.serialization.safe_globals([_resolve(name) for name in sorted(named & allowed)]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a file that is not what it should be
        raise CheckpointError(f"{key}: {path} is not {what} ({_reason(error)})") from None


CHECKPOINT = "a checkpoint written by bcd.train (a .ckpt in a run's checkpoints/ folder)"


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A bcd checkpoint's contents (plain values and tensors only), or an error saying the file is not one."""
    checkpoint = safe_load(path, "ckpt_path", CHECKPOINT, map_location=map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"ckpt_path: {path} is not {CHECKPOINT} (it holds no state_dict)")
    return checkpoint
