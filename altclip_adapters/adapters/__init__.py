"""Ecosystem adapters; each submodule imports its own ecosystem, this package imports none."""
