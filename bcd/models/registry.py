"""Names -> code: the losses, optimizers, schedules and colour normalisations a config or a checkpoint may name.

A checkpoint stores plain values: `{"name": "ce", "weighted": false, ...}`. Rebuilding a model looks the name
up here and checks every stored field against the entry's schema (which lives beside its builder), so nothing read from
disk can name a function to call. Checkpoints written before names were recorded hold `_target_` strings;
the few that bcd itself wrote are mapped to their names (LEGACY_TARGETS), anything else is refused.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING as MISSING_VALUE
from dataclasses import asdict, dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING as OMEGACONF_MISSING

from bcd.utils.stored import load_stored_json, short_repr


class StoredConfigError(ValueError):
    """A stored or configured value that names nothing bcd knows, or does not fit its schema; names the key."""


Builder = Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    """One name of a group: its schema and the function that builds it from a schema instance."""

    schema: type
    build: Builder


GROUPS = ("loss", "optimizer", "scheduler", "colour_norm")
# filled by @register where each builder is defined (bcd.models.losses, optimizers, schedulers, colour_norm, and any
# module that adds one); the imports at the end of this module register bcd's own
REGISTRY: dict[str, dict[str, Entry]] = {group: {} for group in GROUPS}


def register(group: str, schema: type) -> Callable[[Builder], Builder]:
    """Decorator of a builder: it builds `group`'s option named by `schema`'s `name` default from an instance of
    `schema` (plus what only the code knows: an optimizer's parameters, a loss's class weights, a schedule's step
    counts). Adding an option is this function, its schema beside it, and conf/<group>/<name>.yaml."""
    name = getattr(schema, "name", None)
    if group not in REGISTRY or not isinstance(name, str):
        raise ValueError(f"register({group!r}, {schema.__name__}): the group must be one of {list(GROUPS)} and the "
                         "schema must have a `name` field with a default")

    def decorate(build: Builder) -> Builder:
        REGISTRY[group][name] = Entry(schema, build)
        return build

    return decorate


# The `_target_` strings that checkpoints of earlier bcd versions hold, and the names they mean.
LEGACY_TARGETS = {
    "loss": {
        "bcd.models.losses.CrossEntropyLoss": "ce",
        "bcd.models.losses.FocalLoss": "focal",
        "bcd.models.losses.BinaryCrossEntropyLoss": "bce",
    },
    "optimizer": {"torch.optim.Adam": "adam", "torch.optim.AdamW": "adamw", "torch.optim.SGD": "sgd"},
    "scheduler": {
        "bcd.models.schedulers.cosine_with_warmup": "cosine",
        "bcd.models.schedulers.reduce_on_plateau": "plateau",
    },
}


def checked(schema: type, stored: Any, where: str) -> Any:
    """`stored` as an instance of the dataclass `schema`: every field known, present (when it has no default) and of
    its annotated type, else an error naming the key. Values are taken as they are (nothing is resolved)."""
    if not isinstance(stored, Mapping):
        raise StoredConfigError(f"{where}: expected a mapping of {schema.__name__} fields, got {type(stored).__name__}")
    known = {f.name: f for f in fields(schema)}
    unknown = sorted(str(key) for key in stored if key not in known)
    if unknown:
        raise StoredConfigError(f"{where}: unknown field(s) {short_repr(unknown)}; {schema.__name__} has {sorted(known)}")
    hints = typing.get_type_hints(schema)
    values = {}
    for name, spec_field in known.items():
        if name in stored:
            values[name] = _typed(hints[name], stored[name], f"{where}.{name}")
        elif spec_field.default is MISSING_VALUE or spec_field.default == OMEGACONF_MISSING:
            if spec_field.default_factory is MISSING_VALUE:
                raise StoredConfigError(f"{where}.{name}: missing; {schema.__name__} needs it")
    return schema(**values)


def checked_file(schema: type, path: Path, what: str) -> Any:
    """A stored JSON file (summary.json, metrics.json, predict.json: `what` names it in errors) as an instance of the
    dataclass `schema`, read with a size bound and checked field by field (checked)."""
    try:
        data = load_stored_json(path, what)
    except OSError as error:
        raise StoredConfigError(f"{path}: cannot read it as JSON ({error})") from error
    return checked(schema, data, str(path))


def _typed(annotation: Any, value: Any, where: str) -> Any:
    """value, checked against a type annotation of a schema (plain types, enums of strings, Optional, List, Dict, Any,
    dataclasses)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return _plain(value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _typed(inner, value, where)
    if is_dataclass(annotation):
        return checked(annotation, value, where)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if isinstance(value, str) and value in {member.value for member in annotation}:
            return annotation(value)
        raise StoredConfigError(f"{where}: {short_repr(value)} is not one of {[m.value for m in annotation]}")
    if origin is list and isinstance(value, list | tuple):
        return [_typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict and isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _typed(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, str):
        return value
    raise StoredConfigError(f"{where}: {short_repr(value)} is not a {getattr(annotation, '__name__', annotation)}")


def _plain(value: Any, where: str) -> Any:
    """A value of free-form plain data (JSON's types only)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item, where) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise StoredConfigError(f"{where}: {type(value).__name__} is not plain data")




def spec(group: str, stored: Mapping[str, Any] | None, where: str) -> Any:
    """The schema instance of a group's stored config (`{"name": ..., fields}`), checked against the registry."""
    entries = REGISTRY[group]
    if stored is None and group == "scheduler":
        stored = {"name": "none"}  # checkpoints of earlier versions stored no scheduler as null
    if not isinstance(stored, Mapping):
        raise StoredConfigError(
            f"{where}: expected a mapping with a name (one of {sorted(entries)}), got {short_repr(stored)}")
    values = dict(stored)
    if "_target_" in values:
        target = values.pop("_target_")
        values.pop("_partial_", None)
        if target not in LEGACY_TARGETS.get(group, {}):
            raise StoredConfigError(
                f"{where}._target_: {short_repr(target)} is not something bcd builds; a {group} is named by `name`, one of "
                f"{sorted(entries)} (bcd.models.registry)"
            )
        values["name"] = LEGACY_TARGETS[group][target]
    name = values.get("name")
    if not isinstance(name, str) or name not in entries:
        raise StoredConfigError(f"{where}.name: {short_repr(name)} is not one of {sorted(entries)} (bcd.models.registry)")
    return checked(entries[name].schema, values, where)


def arguments_with_name(config: Any) -> dict[str, Any]:
    """A schema instance as the plain dict a checkpoint stores (its name included)."""
    return asdict(config)


def build(group: str, config: Any, *args: Any, **kwargs: Any) -> Any:
    """Build a group's entry from its checked config (a schema instance); extra arguments are what only the code
    knows (the class weights of a loss, the parameters of an optimizer, the step counts of a schedule)."""
    return REGISTRY[group][config.name].build(config, *args, **kwargs)


def build_named(group: str, stored: Mapping[str, Any] | None, where: str, *args: Any, **kwargs: Any) -> Any:
    """build() of the checked spec() of a stored or configured `{"name": ..., fields}` (where: its config key)."""
    return build(group, spec(group, stored, where), *args, **kwargs)


# bcd's own options register themselves where they are defined (imported last: they import `register` from here)
from bcd.models import colour_norm, losses, optimizers, schedulers  # noqa: E402, F401
