"""Helpers shared by the tests: paths, configs, command-line runs, planted data and crash hooks."""
