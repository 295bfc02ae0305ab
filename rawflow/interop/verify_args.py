"""The ``rawflow verify`` command line's arguments, without importing torch (so ``--help`` works
on a machine without it)."""

from __future__ import annotations

import argparse

PEERS = ("nflows", "normflows", "zuko", "freia")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawflow verify",
        description="Cross-check rawflow's layers against a PyTorch peer library in float64 "
                    "(outputs, inverses, log-dets, and gradients for inputs and every mapped parameter). "
                    "Needs torch and the peer libraries: pip install -e '.[interop]' (see the README for "
                    "the CPU build of torch).",
    )
    parser.add_argument("--peer", action="append", choices=PEERS + ("all",), required=True,
                        help="peer library to compare with (repeatable; 'all' for every installed one)")
    parser.add_argument("--json", metavar="FILE", help="write every compared quantity to FILE as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random layers and inputs (default 0)")
    return parser
