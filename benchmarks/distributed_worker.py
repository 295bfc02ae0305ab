"""One rank of the ``distributed`` suite: ``mpiexec -n P python -m benchmarks.distributed_worker MODE ...``.

``time``: a Glow trained data parallel with :func:`rawflow.train` (the run machinery's loop: global
batch drawn, dequantised, sharded, gradients summed in rank order, Adam, replica checks), each
step timed; then the parts of a step timed alone with every rank busy at once: this rank's
``nll_and_grad`` on its shard (compute), the fixed-order allreduce of one gradient-sized message
(communication) and the optimiser update (replicated on every rank). ``equality``: 50 float64 steps of RealNVP or a small Glow; rank 0 writes
the final parameters (``.npz``) for the suite to compare across P. Rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _glow(args):
    from rawflow import FlowModel, StandardNormal
    from rawflow.data.images import dequantize
    from rawflow.models.architectures import glow

    shape = tuple(args.shape)
    model = FlowModel(glow(args.K, args.L, args.width, shape), StandardNormal((int(np.prod(shape)),)))
    images = np.random.default_rng(0).integers(0, 256, size=(8 * args.batch, *shape))

    def batch_fn(rows, rng):
        return dequantize(rows, 256, rng, args.dtype) - 0.5

    return model, images, batch_fn


def _realnvp(args):
    from rawflow import FlowModel, StandardNormal, realnvp, two_moons

    model = FlowModel(realnvp(2, n_couplings=4, hidden=(16, 16)), StandardNormal((2,)))
    return model, two_moons(1024, np.random.default_rng(0)), None


def _start(model, data, batch_fn, batch, rng):
    first = data[:batch] if batch_fn is None else batch_fn(data[:batch], rng)
    return model.init(rng, first)  # every rank: the same init batch and generator (global statistics)


def time_mode(args, comm) -> dict:
    from rawflow import Adam, tree, train
    from rawflow.distributed import DataParallel

    model, images, batch_fn = _glow(args)
    rng = np.random.default_rng(1)
    params = _start(model, images, batch_fn, args.batch, rng)
    opt = Adam(1e-4)
    params, state, _ = train(model, params, images, opt, args.warmup, args.batch, rng, batch_fn=batch_fn, comm=comm)
    stamps = [time.perf_counter()]
    train(model, params, images, opt, args.steps, args.batch, rng, opt_state=state, batch_fn=batch_fn, comm=comm,
          callback=lambda t, loss: stamps.append(time.perf_counter()))
    steps = np.diff(stamps)
    shard = DataParallel(comm, args.batch).shard(batch_fn(images[:args.batch], rng)) if comm.size > 1 \
        else batch_fn(images[:args.batch], rng)
    compute, allreduce, update = [], [], []
    _, grads = model.nll_and_grad(params, shard)
    flat = np.concatenate([g.reshape(-1) for _, g in tree.leaves(grads)] + [np.zeros(1, dtype=args.dtype)])
    for _ in range(args.repeats):
        comm.barrier()
        t0 = time.perf_counter()
        model.nll_and_grad(params, shard)
        compute.append(time.perf_counter() - t0)
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(flat, "the benchmark allreduce")
        allreduce.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt.update(params, grads, state)  # replicated on every rank: the same work whatever P
        update.append(time.perf_counter() - t0)
    return {"P": comm.size, "step_s": steps.tolist(), "compute_s": compute, "allreduce_s": allreduce,
            "update_s": update,
            "grad_bytes": int(flat.nbytes), "params": int(flat.size - 1), "local_batch": args.batch // comm.size}


def equality_mode(args, comm) -> dict:
    from rawflow import Adam, tree, train

    model, data, batch_fn = _realnvp(args) if args.model == "realnvp" else _glow(args)
    rng = np.random.default_rng(7)
    params = _start(model, data, batch_fn, 64, rng)
    t0 = time.perf_counter()
    params, _, losses = train(model, params, data, Adam(2e-3), args.steps, args.batch, rng, batch_fn=batch_fn,
                              comm=comm)
    seconds = time.perf_counter() - t0
    if comm.rank == 0:
        np.savez(args.out, **{p: a for p, a in tree.leaves(params)}, __losses__=losses)
    return {"P": comm.size, "out": args.out, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed_worker")
    p.add_argument("mode", choices=("time", "equality"))
    p.add_argument("--model", choices=("realnvp", "glow"), default="glow")
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--L", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--shape", type=int, nargs=3, default=[3, 16, 16])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--out", default="params.npz")
    args = p.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")  # one BLAS thread per rank, as `rawflow train` runs
    except ImportError:
        pass
    from rawflow.distributed import from_environment

    comm = from_environment()
    result = time_mode(args, comm) if args.mode == "time" else equality_mode(args, comm)
    if comm.rank == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
