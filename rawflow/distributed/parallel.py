"""Data parallelism: shards of a global batch, one fixed-order gradient sum, replica checks.

Every rank holds identical parameters and the same training generator; it draws the same global
batch (rows and dequantisation noise) as a single process would, keeps its shard, and the shard
gradients are summed in rank order (:meth:`rawflow.distributed.comm.Communicator.allreduce`):

    global batch B = [shard_0, …, shard_{P−1}],   shard_r = rows [r·b, (r+1)·b),  b = B/P
    L = −(1/B) Σ_n log p(x_n) = (1/P) Σ_r L_r,     L_r = −(1/b) Σ_{n∈shard_r} log p(x_n)
    ∇L = (1/P) Σ_r ∇L_r                            (the sum in rank order, then one division by P)

so P ranks take the step one process takes on the whole batch, to round-off (the batch sum is
associated differently). The optimiser then runs on identical inputs on every rank; a digest of
the parameters compared across ranks every few steps turns any divergence into an error.
"""

from __future__ import annotations

import json
from typing import Callable, TypeVar

import numpy as np

from .. import tree as _tree
from .._array import Array, namespace, to_numpy
from .comm import Communicator, ReplicaDivergence

T = TypeVar("T")


def shard_bounds(comm: Communicator, n: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous rows ``[lo, hi)`` of ``n`` (sizes differ by at most one)."""
    lo = comm.rank * n // comm.size
    return lo, (comm.rank + 1) * n // comm.size


def global_sum(comm: Communicator | None, value: float, what: str = "sum") -> float:
    """``Σ_r value_r`` in rank order (float64), the same on every rank; ``value`` when alone."""
    if comm is None or comm.size == 1:
        return value
    return float(comm.allreduce(np.array([value], dtype=np.float64), what)[0])


class DataParallel:
    """The per-step collectives of data-parallel training with global batch ``batch_size``.

    ``check_every``: compare parameter digests across ranks (:func:`check_replicas`) every this
    many steps of a ``train`` call; 0 turns the periodic check off (``train`` still checks at the
    start and the end of every call).
    """

    def __init__(self, comm: Communicator, batch_size: int, *, check_every: int = 10):
        if batch_size % comm.size:
            raise ValueError(f"data parallel: the global batch size {batch_size} is not divisible by the "
                             f"{comm.size} processes; choose a multiple of {comm.size}")
        self.comm, self.check_every = comm, int(check_every)
        self.local = batch_size // comm.size
        self.lo = comm.rank * self.local

    def shard(self, batch: Array) -> Array:
        """This rank's rows of the global batch."""
        return batch[self.lo:self.lo + self.local]

    def nll_and_grad(self, model, params: dict, batch: Array, y: Array | None = None) -> tuple[float, dict]:
        """The global batch's mean NLL and its gradient, from this rank's shard and one allreduce
        (``y``: the batch's labels or context rows, sharded alike)."""
        labels = () if y is None else (self.shard(y),)  # a model without labels: two arguments, as before
        loss, grads = model.nll_and_grad(params, self.shard(batch), *labels)
        paths = [(p, g) for p, g in _tree.leaves(grads)]
        xp = namespace(*(g for _, g in paths))
        dtype = paths[0][1].dtype if paths else np.float64
        if any(g.dtype != dtype for _, g in paths):
            raise TypeError("data parallel: every gradient leaf must share one dtype, got "
                            + ", ".join(sorted({str(g.dtype) for _, g in paths})))
        # One message per step: the gradient leaves in tree order, then the loss.
        flat = xp.concatenate([xp.reshape(g, (-1,)) for _, g in paths] + [xp.asarray([loss], dtype=dtype)])
        total = self.comm.allreduce(flat, "the gradient sum") / self.comm.size
        out, start = {}, 0
        for path, g in paths:
            out[path] = total[start:start + g.size].reshape(g.shape)
            start += g.size
        return float(total[start]), _tree.rebuild(grads, out)

    def after_step(self, step: int, params: dict) -> None:
        """The periodic replica check, after step ``step`` (1-based) of the current ``train`` call."""
        if self.check_every and step % self.check_every == 0:
            check_replicas(self.comm, params, f"after step {step} of this train() call")


def digest(tree: dict) -> list[tuple[str, str, int, int]]:
    """``(path, dtype/shape, s1, s2)`` per leaf: ``s1 = Σ bits_i``, ``s2 = Σ (i+1)·bits_i`` (mod 2⁶⁴).

    ``bits_i`` are the leaf's elements read as unsigned integers of the same width, so the digest is
    bitwise: any single changed element changes ``s1`` (its bit pattern moves by a non-zero amount
    below 2⁶⁴), and ``s2`` catches swapped elements. Computed where the leaf lives (two passes on
    the GPU for CuPy arrays), only 16 bytes per leaf reach the host.
    """
    out = []
    for path, a in _tree.leaves(tree):
        xp = namespace(a)
        flat = xp.ascontiguousarray(a).reshape(-1)
        if flat.dtype.itemsize not in (1, 2, 4, 8):
            raise TypeError(f"digest: leaf {path} has an unsupported dtype {flat.dtype}")
        bits = flat.view(f"u{flat.dtype.itemsize}").astype(xp.uint64)
        weights = xp.arange(1, bits.size + 1, dtype=xp.uint64)
        s1, s2 = int(to_numpy(bits.sum(dtype=xp.uint64))), int(to_numpy((bits * weights).sum(dtype=xp.uint64)))
        out.append((path, f"{flat.dtype.str}{tuple(a.shape)}", s1, s2))
    return out


def check_replicas(comm: Communicator, params: dict, when: str) -> None:
    """Raise :class:`ReplicaDivergence` unless every rank holds bitwise-identical ``params``."""
    if comm.size == 1:
        return
    mine = json.dumps(digest(params)).encode()
    every = comm.allgather_bytes(mine, f"the parameter check {when}")
    bad = [r for r, d in enumerate(every) if d != every[0]]
    if not bad:
        return
    first = json.loads(every[bad[0]])
    reference = json.loads(every[0])
    leaf = next((a[0] for a, b in zip(first, reference) if a != b), "the tree structure")
    raise ReplicaDivergence(
        f"the parameters differ between ranks {when}: rank(s) {', '.join(map(str, bad))} disagree with rank 0 "
        f"(first at {leaf}); every rank must start from the same parameters and run the same libraries")


def agree(comm: Communicator | None, what: str, value: dict) -> None:
    """Raise :class:`ReplicaDivergence` unless ``value`` (JSON-able) is the same on every rank,
    naming the differing top-level keys and ranks."""
    if comm is None or comm.size == 1:
        return
    every = comm.allgather_bytes(json.dumps(value, sort_keys=True, default=str).encode(), f"comparing the {what}")
    if all(e == every[0] for e in every):
        return
    decoded = [json.loads(e) for e in every]
    lines = []
    for r, d in enumerate(decoded[1:], start=1):
        keys = sorted(k for k in set(d) | set(decoded[0]) if d.get(k) != decoded[0].get(k))
        if keys:
            lines.append(f"rank {r} differs from rank 0 in {', '.join(keys)}")
    raise ReplicaDivergence(f"the ranks were launched with different {what}: " + "; ".join(lines))


def together(comm: Communicator | None, fn: Callable[[], T], errors: tuple[type[Exception], ...]) -> T:
    """``fn()`` on every rank; if it raises one of ``errors`` on any rank, it raises on every rank.

    A rank that failed raises its own exception (when every rank failed alike) or one of the same
    type carrying every failing rank's message; the others raise the first failing rank's type
    with those messages. So ranks that each validate their own inputs (data files, a checkpoint)
    stop together, with the reason, instead of leaving the healthy ones waiting in the next
    collective until its deadline.
    """
    try:
        result, failure = fn(), None
    except errors as exc:
        result, failure = None, exc
    if comm is None or comm.size == 1:
        if failure is not None:
            raise failure
        return result
    mine = b"" if failure is None else f"{type(failure).__name__}\n{failure}".encode()
    every = comm.allgather_bytes(mine, "comparing start-up errors")
    failed = [(r, *e.decode().split("\n", 1)) for r, e in enumerate(every) if e]
    if not failed:
        return result
    texts = {text for _, _, text in failed}
    if failure is not None and len(failed) == comm.size and len(texts) == 1:
        raise failure
    message = failed[0][2] if len(texts) == 1 else "; ".join(f"rank {r}: {text}" for r, _, text in failed)
    if len(failed) < comm.size:
        message += f" (on rank{'s' if len(failed) > 1 else ''} {', '.join(str(r) for r, _, _ in failed)} of {comm.size})"
    kind = type(failure) if failure is not None else next((e for e in errors if e.__name__ == failed[0][1]), errors[0])
    try:
        shared = kind(message)
    except TypeError:  # an exception type whose constructor takes more than a message (an OSError's path)
        shared = errors[0](message)
    raise shared from failure
