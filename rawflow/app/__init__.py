"""The application layer: the command line (:mod:`.cli`), the demo (:mod:`.demo`), run folders
(:mod:`.runs`: configs, checkpoints, resuming) and plots (:mod:`.plots`, needs matplotlib).

:func:`main` (the ``rawflow`` command) is loaded on first use, so that ``python -m rawflow.app.cli``
runs the module once, as a script, and not also as an import of this package.
"""

from __future__ import annotations

__all__ = ["main"]


def __getattr__(name: str):
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
