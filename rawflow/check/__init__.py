"""Verification toolkit: check any bijector against derivative oracles to round-off.

* :func:`check_bijector` runs every check listed in ``rawflow/check/README.md`` on one layer and
  returns a :class:`Report` (one JSON-able :class:`Record` per check; ``report.table()``,
  ``report.failure_report()``);
* :func:`run_suite` runs it over the built-in layers listed in :mod:`rawflow.check.registry`;
* :func:`export_vectors` / :func:`verify_vectors` / :func:`load_case` write, check and read golden
  ``.npz`` files for other implementations;
* :mod:`rawflow.check.oracles`: complex step, Richardson and central-difference oracles;
* :func:`check_precise` (:mod:`rawflow.check.precise`): results against the layer's own code
  evaluated at 60 digits (mpmath), each beside its conditioning bound; :func:`run_stress`
  (:mod:`rawflow.check.stress`): every layer at the points where implementations break
  (``rawflow check --stress``);
* :func:`run_check_cli` / :func:`run_vectors_cli`: the ``rawflow check`` / ``rawflow vectors`` commands.

See ``rawflow/check/README.md``.
"""

from . import oracles, registry
from .cli import run_check_cli, run_vectors_cli
from .precise import check_precise
from .records import Record, Report, compare
from .registry import Case
from .stress import run_stress
from .suite import check_bijector, run_suite
from .vectors import export_vectors, load_case, verify_vectors

__all__ = [
    "Case",
    "Record",
    "Report",
    "check_bijector",
    "check_precise",
    "compare",
    "export_vectors",
    "load_case",
    "oracles",
    "registry",
    "run_check_cli",
    "run_stress",
    "run_suite",
    "run_vectors_cli",
    "verify_vectors",
]
