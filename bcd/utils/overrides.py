"""Command-line overrides written from Python values, for the runs bcd composes or starts itself (sweep trials,
cross-validation folds, pruning arguments).

Own code, not Hydra's: Hydra parses override strings (OverridesParser) but has no writer for them, and the same
strings must work on the command line of a trial's or fold's `python -m bcd.train` subprocess (DDP needs one), so
in-process composition uses them too rather than a second path through override objects that could disagree.
tests/test_sweep.py round-trips awkward values (commas, quotes, backslashes, ${...}) through Hydra's parser."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# a string Hydra's override parser reads as itself when bare: a word of ASCII letters, digits, _ and -
_BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# bare words Hydra reads as null, a bool or a float instead
_HYDRA_KEYWORDS = ("null", "true", "false", "nan", "inf")


def hydra_value(value: Any) -> str:
    """A Python value written as a Hydra override value (strings quoted, so paths and URLs pass unharmed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    # group choices (model=b1) and plain words stay bare; anything Hydra would read otherwise is quoted
    if _BARE_WORD.fullmatch(text) and text.lower() not in _HYDRA_KEYWORDS:
        return text
    # OmegaConf resolves ${...} even inside quotes: escape it (doubling the backslashes before it) to keep it text
    text = re.sub(r"(\\*)\$\{", lambda match: match[1] * 2 + "\\${", text)
    # in Hydra's quoted strings a backslash escapes the quote after it, so those before a quote are doubled
    text = re.sub(r"(\\*)('|\Z)", lambda match: match[1] * 2 + ("\\'" if match[2] else ""), text)
    return f"'{text}'"


def override_key(override: str) -> str:
    """The config key of a command-line override (`+a.b=1` -> a.b)."""
    return override.split("=", 1)[0].lstrip("~+")
