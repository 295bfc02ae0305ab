"""The package version, in a module of its own so that no module has to import ``rawflow/__init__``."""

__version__ = "0.1.0"
