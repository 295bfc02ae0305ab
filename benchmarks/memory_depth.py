"""Peak activation memory of one training step against depth: cached vs reconstructing backward.

    python benchmarks/memory_depth.py [--batch 512] [--features 16] [--depths 4 8 16 32]
    python benchmarks/memory_depth.py --glow [--ks 4 16 64]       # whole multi-scale Glow, splits included

Memory is measured with ``tracemalloc`` (NumPy buffers), above what was alive before the step and
excluding the returned gradients (see :func:`rawflow.training.memory.peak_step_memory`). Deterministic: the
figures do not depend on machine load, unlike timings.
"""

from __future__ import annotations

import argparse

import numpy as np

from rawflow import AdditiveCoupling, AffineCoupling, Chain, tree
from rawflow.training.memory import peak_step_memory


def coupling_stack(features: int, depth: int, reconstruct: bool, hidden=(64, 64)) -> Chain:
    layers = [
        AffineCoupling(features, flip=bool(k % 2), hidden=hidden) if k % 3 != 2
        else AdditiveCoupling(features, flip=bool(k % 2), hidden=hidden)
        for k in range(depth)
    ]
    return Chain(layers, reconstruct=reconstruct)


def glow_table(ks, batch: int = 32, width: int = 16, shape=(1, 8, 8)) -> None:
    from rawflow.models.architectures import glow

    x = np.random.default_rng(0).uniform(size=(batch, *shape))
    print(f"Glow L=2, width {width}, images {shape}, batch {batch}, float64 (K flow steps per level)")
    print(f"{'K':>4} {'params MiB':>11} {'cached MiB':>11} {'reconstruct MiB':>16} {'max rel grad diff':>18}")
    for k in ks:
        row = {}
        for reconstruct in (False, True):
            flow = glow(k, 2, width, shape, reconstruct=reconstruct)
            rng = np.random.default_rng(1)
            params = tree.map(lambda a: a + rng.normal(scale=0.01, size=a.shape), flow.init(rng, x))
            row[reconstruct] = peak_step_memory(flow, params, x)
        diff = max(
            float(np.max(np.abs(tree.get(row[True]["gparams"], p) - leaf)) / max(np.max(np.abs(leaf)), 1e-300))
            for p, leaf in tree.leaves(row[False]["gparams"])
        )
        mib = 2.0**20
        print(f"{k:>4} {tree.nbytes(params) / mib:>11.2f} {row[False]['peak_bytes'] / mib:>11.2f} "
              f"{row[True]['peak_bytes'] / mib:>16.2f} {diff:>18.1e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--glow", action="store_true", help="measure a multi-scale Glow instead")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    args = ap.parse_args(argv)
    if args.glow:
        glow_table(args.ks)
        return
    x = np.random.default_rng(0).normal(size=(args.batch, args.features))
    print(f"batch {args.batch} × {args.features} float64, MLP conditioners (64, 64)")
    print(f"{'depth':>5} {'params MiB':>11} {'cached MiB':>11} {'reconstruct MiB':>16} {'max rel grad diff':>18}")
    for depth in args.depths:
        row = {}
        for reconstruct in (False, True):
            chain = coupling_stack(args.features, depth, reconstruct)
            rng = np.random.default_rng(1)
            params = tree.map(lambda a: rng.normal(scale=0.05, size=a.shape), chain.init(rng, x))
            row[reconstruct] = peak_step_memory(chain, params, x)
        diff = max(
            float(np.max(np.abs(tree.get(row[True]["gparams"], p) - leaf)) / max(np.max(np.abs(leaf)), 1e-300))
            for p, leaf in tree.leaves(row[False]["gparams"])
        )
        mib = 2.0**20
        print(
            f"{depth:>5} {tree.nbytes(params) / mib:>11.2f} {row[False]['peak_bytes'] / mib:>11.2f} "
            f"{row[True]['peak_bytes'] / mib:>16.2f} {diff:>18.1e}"
        )


if __name__ == "__main__":
    main()
