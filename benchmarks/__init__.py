"""rawflow's benchmarks: rawflow against what users would pick instead, same machine, same run.

``python -m benchmarks [SUITE ...] [--quick] [--json FILE]`` (from a checkout) or ``rawflow bench``.
Suites: ``coupling``, ``actnorm``, ``conv1x1``, ``glow``, ``memory``, ``sampling`` (CPU),
``distributed`` (data-parallel training under ``mpiexec``; needs ``rawflow[mpi]``), ``quality``
(NICE, RealNVP and Glow trained with the CLI's defaults against a PyTorch yardstick; run only when
named), and the
separate GPU script ``benchmarks/gpu_suite.py``. Bring your own kernel with :func:`register` (or
``--impl OP=MODULE:FUNCTION``); see ``benchmarks/README.md``.

Importable as ``benchmarks`` (repository root on ``sys.path``) and as ``rawflow.benchmarks``
(installed); everything inside uses relative imports. Importing it imports NumPy only.
"""

from __future__ import annotations

from .registry import Implementation, Operation, operations, register, unregister, user_implementations

SUITES = ("coupling", "actnorm", "conv1x1", "glow", "memory", "sampling", "distributed", "quality")
# What ``python -m benchmarks`` runs without suite names: ``quality`` trains 3 systems × 3 data sets ×
# 3 seeds twice (about 40 minutes on 2 cores) and runs only when named.
DEFAULT_SUITES = tuple(s for s in SUITES if s != "quality")


def main(argv=None) -> int:
    """The command line (see ``python -m benchmarks --help``); returns the exit status."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["DEFAULT_SUITES", "SUITES", "Implementation", "Operation", "main", "operations", "register", "unregister",
           "user_implementations"]
