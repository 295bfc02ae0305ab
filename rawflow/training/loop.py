"""A small, deterministic maximum-likelihood training loop, and evaluation helpers.

``train`` draws mini-batches without replacement from a fresh permutation each epoch (the last
incomplete batch of an epoch is dropped), so the whole run is a function of ``rng``, the data and
the initial parameters: the same inputs give bitwise-identical losses and parameters.

Resuming: the only state besides ``params`` / ``opt_state`` is the generator's state
(``rng.bit_generator.state``, a JSON-able dict) and the :class:`EpochLoader`'s position in the
current epoch's permutation (``order``, ``pos``). Saving those between two ``train`` calls and
restoring them continues the run bit for bit (``rawflow.app.runs`` does this through checkpoints), so
one call of ``N`` steps equals any split of it into consecutive calls sharing a loader.

Data parallelism (``comm=`` with ``comm.size > 1``, see :mod:`rawflow.distributed`): every rank
runs this same loop with the same generator, so it draws the same global batch (rows, and the
noise ``batch_fn`` adds) as one process would; it keeps its shard of the batch, and
:class:`~rawflow.distributed.parallel.DataParallel` sums the shard gradients in rank order. The
optimiser then runs on identical inputs everywhere; replica digests are compared at the start,
every ``DataParallel.check_every`` steps and at the end of each call.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.linalg import solve_triangular

from .._array import Array, namespace, to_numpy
from ..distributed.comm import Communicator
from ..distributed.parallel import DataParallel, check_replicas, global_sum, shard_bounds
from .._checks import array_problem, check_count, check_rng
from ..models.model import FlowModel
from .optim import Optimizer, clip_grad_norm, global_norm


class TrainingDiverged(FloatingPointError):
    """The loss or gradient became NaN/Inf. Carries the last finite state for inspection."""

    def __init__(self, message: str, step: int, losses: np.ndarray, params: dict, opt_state: dict,
                 loss: float = math.nan, grad_norm: float = math.nan):
        super().__init__(message)
        self.step, self.losses, self.params, self.opt_state = step, losses, params, opt_state
        self.loss, self.grad_norm = loss, grad_norm


class EpochLoader:
    """Mini-batch row indices: a fresh ``rng.permutation(n)`` per epoch, batches taken in order,
    the last incomplete batch of an epoch dropped.

    ``order`` (the current epoch's permutation, ``None`` before the first) and ``pos`` (the next
    row of it) are the whole state; ``EpochLoader(n, batch_size, order, pos)`` restores one.
    """

    def __init__(self, n: int, batch_size: int, order: np.ndarray | None = None, pos: int | None = None):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or not 1 <= batch_size <= n:
            raise ValueError(f"train: batch_size must be an integer in [1, {n}] (the data size), got {batch_size!r}")
        self.n, self.batch_size = int(n), int(batch_size)
        if order is not None:
            order = np.asarray(order)
            if order.shape != (self.n,) or not np.array_equal(np.sort(order), np.arange(self.n)):
                raise ValueError(f"EpochLoader: order must be a permutation of range({self.n})")
            if pos is None or not 0 <= int(pos) <= self.n:
                raise ValueError(f"EpochLoader: pos must lie in [0, {self.n}], got {pos!r}")
        self.order = order
        self.pos = self.n if order is None else int(pos)

    def next(self, rng: np.random.Generator) -> np.ndarray:
        """The next batch's row indices (drawing a new permutation from ``rng`` when one is due)."""
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = rng.permutation(self.n), 0
        rows = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return rows


def train(
    model: FlowModel,
    params: dict,
    data: Array,
    optimizer: Optimizer,
    steps: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    opt_state: dict | None = None,
    max_grad_norm: float | None = None,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = False,
    loader: EpochLoader | None = None,
    batch_fn: Callable[[Array, np.random.Generator], Array] | None = None,
    comm: Communicator | None = None,
    y: Array | None = None,
) -> tuple[dict, dict, np.ndarray]:
    """Minimise the mean NLL for ``steps`` optimiser steps; returns ``(params, opt_state, losses)``.

    ``losses[t]`` is the mini-batch NLL *before* update ``t + 1``. ``max_grad_norm`` clips the
    global gradient norm; ``callback(step, loss)`` runs after every step (1-based step of this
    call); ``progress`` shows a tqdm bar when tqdm is installed. ``loader`` continues a previous
    call's epoch (it advances in place; default: a fresh one). ``batch_fn(rows, rng)`` turns the
    selected data rows into the batch, e.g. dequantising integer images with fresh noise each
    time (default: the rows themselves). A NaN/Inf loss or gradient, or updated parameters that
    a layer refuses (an LU factor that became singular or overflowed), stop the run with
    :class:`TrainingDiverged`, which holds the parameters from before the failing step.

    ``y`` (a conditional model, :mod:`rawflow.models.model`): the labels ``(N,)`` or context rows
    ``(N, K)`` of ``data``, row for row; each batch takes the same rows of both, and the loss is the
    model's objective ``nll_and_grad(params, x, y)`` (with a classifier head, its weighted
    cross-entropy included).

    ``comm`` (a :class:`~rawflow.distributed.comm.Communicator` of ``P > 1`` ranks) trains data
    parallel: call ``train`` on every rank with the same arguments (``params`` identical, e.g.
    initialised from the same batch and generator); ``batch_size`` is the global batch and must be
    divisible by ``P``. Losses and parameters equal the single-process run's to round-off. With
    ``comm=None`` or one rank this is the single-process loop, unchanged.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"train: steps must be a non-negative integer, got {steps!r}")
    _check_data("train", data)
    _check_y("train", y, data)
    check_rng("train", rng)
    n = data.shape[0]
    if loader is None:
        loader = EpochLoader(n, batch_size)
    elif loader.n != n or loader.batch_size != batch_size:
        raise ValueError(f"train: the loader serves {loader.n} rows in batches of {loader.batch_size}, "
                         f"not {n} rows in batches of {batch_size}")
    steps = int(steps)
    if opt_state is None:
        opt_state = optimizer.init(params)
    xp = namespace(data)
    dp = DataParallel(comm, batch_size) if comm is not None and comm.size > 1 else None
    if dp is not None:
        check_replicas(comm, params, "at the start of training")
    losses = np.empty(steps)
    bar = _progress(steps) if progress else None
    # a FlowModel whose nll_and_grad is its own (not a subclass's or a wrapper's) may skip re-checking params
    plain = isinstance(model, FlowModel) and type(model).nll_and_grad is FlowModel.nll_and_grad
    try:
        for t in range(steps):
            index = loader.next(rng)
            rows = data[xp.asarray(index)]
            batch = rows if batch_fn is None else batch_fn(rows, rng)
            batch_y = None if y is None else y[namespace(y).asarray(index)]
            try:
                # y only when there is one: a model without labels keeps the two-argument protocol
                labels = () if batch_y is None else (batch_y,)
                if dp is not None:
                    loss, grads = dp.nll_and_grad(model, params, batch, *labels)
                elif t == 0 or not plain:
                    loss, grads = model.nll_and_grad(params, batch, *labels)
                else:  # params come from the checked first step through the optimiser: check the batch (and y) only
                    model._check_batch(batch, "nll_and_grad")
                    loss, grads = model._nll_and_grad(params, batch, model._context(batch_y, batch, "nll_and_grad"))
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
                # Parameters an update produced that a layer refuses (an LU factor whose exp(log|s|)
                # overflowed or vanished, a non-finite leaf): the run diverged. The parameters the
                # caller passed in, before any update, are the caller's problem and re-raise.
                if int(opt_state.get("step", 0)) == 0:
                    raise
                raise TrainingDiverged(
                    f"train: the parameters after update {int(opt_state['step'])} are unusable at step {t + 1} "
                    f"({exc}); try a smaller learning rate, max_grad_norm, or a bounded scale map",
                    t + 1, losses[:t].copy(), params, opt_state, math.nan, math.nan,
                ) from exc
            if max_grad_norm is not None:
                grads, norm = clip_grad_norm(grads, max_grad_norm)
            else:
                norm = global_norm(grads)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingDiverged(
                    f"train: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step "
                    f"{t + 1} (loss {loss}, gradient norm {norm}); try a smaller learning rate, "
                    "max_grad_norm, or a bounded scale map",
                    t + 1, losses[:t].copy(), params, opt_state, loss, norm,
                )
            # The first update checks params, grads and opt_state; later ones get only trees that
            # the model and the optimiser made from them (finiteness checked just above).
            step_fn = optimizer.update if t == 0 else optimizer._step
            params, opt_state = step_fn(params, grads, opt_state)
            if dp is not None:
                dp.after_step(t + 1, params)
            losses[t] = loss
            if callback is not None:
                callback(t + 1, loss)
            if bar is not None:
                bar.update(1)
                if t % 25 == 0 or t == steps - 1:
                    bar.set_postfix(nll=f"{loss:.4f}")
    finally:
        if bar is not None:
            bar.close()
    if dp is not None and steps:
        check_replicas(comm, params, f"at the end of training ({steps} steps)")
        if isinstance(opt_state, dict) and "ema" in opt_state:  # Polyak averaging (rawflow.training.ema)
            check_replicas(comm, opt_state["ema"], f"(their moving average) at the end of training ({steps} steps)")
    return params, opt_state, losses


def _progress(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="train", unit="step", leave=False)


def evaluate_nll(model: FlowModel, params: dict, data: Array, batch_size: int = 4096,
                 comm: Communicator | None = None, y: Array | None = None) -> float:
    """Mean NLL (nats per sample) over ``data``, in batches; an empty ``data`` raises ``ValueError``.
    A conditional model takes ``y``, the labels or context rows of ``data`` (``−mean log p(x | y)``).

    With ``comm`` each rank evaluates a contiguous share of the rows and the sums of ``log p`` are
    added in rank order (:func:`~rawflow.distributed.parallel.global_sum`); every rank returns the
    same value, equal to the single-process one to round-off.
    """
    _check_data("evaluate_nll", data)
    _check_y("evaluate_nll", y, data)
    check_count("evaluate_nll", batch_size, "batch_size")
    if batch_size == 0:
        raise ValueError("evaluate_nll: batch_size must be positive, got 0")
    n = data.shape[0]
    lo, hi = (0, n) if comm is None else shard_bounds(comm, n)
    total = 0.0
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        labels = () if y is None else (y[start:end],)  # as in train: no labels, two arguments
        total += float(model.log_prob(params, data[start:end], *labels).sum())
    return -global_sum(comm, total, "the held-out log-likelihood sum") / n


def _check_data(name: str, data) -> None:
    """``data`` is an array with at least one row (the mean NLL of no samples is undefined).

    Its dtype is left to the model (``train``'s ``batch_fn`` may turn integer images into floats)."""
    problem = array_problem(data)
    if problem:
        raise ValueError(f"{name}: data {problem}")
    if data.ndim < 1 or data.shape[0] == 0:
        raise ValueError(f"{name}: data is empty (shape {tuple(data.shape)}): the mean NLL of no samples is undefined")


def _check_y(name: str, y, data) -> None:
    """``y`` (labels or context rows, ``None`` for an unconditional model) has one row per data row;
    the model checks its values batch by batch."""
    if y is None:
        return
    problem = array_problem(y)
    if problem:
        raise ValueError(f"{name}: y {problem}")
    if y.ndim not in (1, 2) or y.shape[0] != data.shape[0]:
        raise ValueError(f"{name}: y must hold one label or context row per data row ({data.shape[0]}), "
                         f"got shape {tuple(y.shape)}")


def gaussian_baseline_nll(train_data, test_data) -> float:
    """Held-out mean NLL of the maximum-likelihood full-covariance Gaussian fitted to ``train_data``.

    ``μ = mean``, ``Σ = (1/N) Σ (x − μ)(x − μ)ᵀ``; ``−log N(x; μ, Σ) = ½‖L⁻¹(x − μ)‖² + Σ log L_ii
    + (D/2) log 2π`` with ``Σ = L Lᵀ``. Computed on the host in float64 (a reporting helper).
    """
    train_data = to_numpy(train_data).astype(np.float64)
    test_data = to_numpy(test_data).astype(np.float64)
    if train_data.ndim != 2 or test_data.ndim != 2 or train_data.shape[1] != test_data.shape[1]:
        raise ValueError(
            f"gaussian_baseline_nll: need (N, D) arrays with equal D, got {train_data.shape} and {test_data.shape}"
        )
    mu = train_data.mean(axis=0)
    centred = train_data - mu
    cov = centred.T @ centred / train_data.shape[0]
    chol = np.linalg.cholesky(cov)
    u = solve_triangular(chol, (test_data - mu).T, lower=True)
    d = train_data.shape[1]
    nll = 0.5 * (u * u).sum(axis=0) + np.log(np.diag(chol)).sum() + 0.5 * d * math.log(2 * math.pi)
    return float(nll.mean())
