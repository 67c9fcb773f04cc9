"""Typed config schemas (the one home of every default), config checks and where the config files live."""
