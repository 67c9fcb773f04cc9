"""The error a user's config can cause, raised before any data is read; its message names the key and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""
