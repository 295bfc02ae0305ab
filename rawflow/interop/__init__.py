"""Cross-verification against PyTorch flow libraries (nflows, normflows, zuko, FrEIA).

For each peer, ``rawflow.interop.<peer>`` maps the peer's layers to rawflow layers and back:

* ``from_peer(module) -> (layer, params)``: the rawflow layer and parameters that compute the same
  function as the peer module (in rawflow's direction convention, forward = data → latent);
* ``to_peer(layer, params) -> module``: the peer module (float64) computing the rawflow layer;
* ``bind(module)``: the :class:`~rawflow.interop._torch.Binding` the comparison engine uses
  (the parameter map as a differentiable function, and the peer's calls in rawflow's convention);
* ``cases(seed)``: every mapped layer, imported and exported, as zero-argument comparisons.

:mod:`rawflow.interop.compare` compares outputs, inverses, log-dets and gradients (inputs and every
mapped parameter) in float64; :func:`run_verify_cli` is the ``rawflow verify --peer ...`` command.
The definitional differences between the libraries are listed in ``docs/interop.md``.

torch is optional: importing this package does not import torch; the peer submodules and
:mod:`~rawflow.interop.compare` do. :mod:`~rawflow.interop.maps`, :mod:`~rawflow.interop.nets` and
:mod:`~rawflow.interop.lu` are plain rawflow (NumPy/CuPy) pieces reproducing peer definitions.
"""

from __future__ import annotations

import sys

from .verify_args import PEERS

__all__ = ["PEERS", "run_verify_cli"]


def run_verify_cli(argv: list[str] | None = None) -> int:
    """``rawflow verify --peer {nflows,normflows,zuko,freia,all} [--json FILE] [--seed S]``.

    Prints a table per layer (max abs / rel error per quantity, pass/fail); returns 0 when every
    comparison passes, 1 on a failure, 2 when torch or the requested peers are not installed.
    """
    from .verify_args import build_parser

    try:
        build_parser().parse_args(argv)  # --help and usage errors need no torch
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("rawflow verify: error: needs PyTorch and the peer libraries: pip install -e '.[interop]' "
              "(see the README for the CPU build of torch)", file=sys.stderr)
        return 2
    from .compare import run_verify_cli as run

    return run(argv)
