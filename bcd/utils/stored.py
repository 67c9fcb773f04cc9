"""Reading back files bcd wrote earlier (a run dir's config.yaml and summary.json, calibration files, CV plans, export
records) as plain data that cannot cost more than its size: a bounded read, YAML without anchors or aliases (an alias
bomb of a few hundred bytes expands into gigabytes), and error messages that show a bounded excerpt of a value."""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

# far above anything bcd writes (a summary.json of 100,000 validations is ~20 MB less than this)
MAX_STORED_BYTES = 32 * 1024 * 1024
_SHORT = reprlib.Repr()  # attributes set one by one: Python 3.11's Repr takes no keyword arguments
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 80, 80, 6, 6, 3


class StoredFileError(ValueError):
    """A stored file bcd refuses to read: too large, not plain data, or with YAML anchors/aliases; names the file."""


def short_repr(value: Any) -> str:
    """repr(value) cut to a few hundred characters whatever its size, for error messages."""
    return _SHORT.repr(value)


def read_stored_text(path: str | Path, what: str) -> str:
    """The text of a stored file, refused above MAX_STORED_BYTES (`what` says what the file should be)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_STORED_BYTES:
        raise StoredFileError(f"{path}: {size:,} bytes is far more than {what} holds (at most {MAX_STORED_BYTES:,}); "
                              "point bcd at the file it wrote")
    return path.read_text()


def load_plain_yaml(path: str | Path, what: str) -> Any:
    """A stored YAML file as plain data: bounded, safe_load (no tags that construct objects) and no anchor or alias,
    which bcd never writes and which could expand a small file into gigabytes."""
    text = read_stored_text(path, what)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise StoredFileError(f"{path}: YAML anchors and aliases (&, *) are refused in {what}; bcd writes none, "
                                      "so this file was edited or crafted: restore the one the run wrote")
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StoredFileError(f"{path}: not plain YAML ({error})".replace("\n", " ")) from None


def load_stored_json(path: str | Path, what: str) -> Any:
    """A stored JSON file as plain data, bounded in size."""
    try:
        return json.loads(read_stored_text(path, what))
    except ValueError as error:
        if isinstance(error, StoredFileError):
            raise
        raise StoredFileError(f"{path}: cannot read it as JSON ({error})") from None
