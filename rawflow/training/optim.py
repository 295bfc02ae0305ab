"""First-order optimisers over parameter trees, functional and pure.

::

    state = opt.init(params)
    params, state = opt.update(params, grads, state)   # new trees; inputs are not modified

``state`` is a tree of arrays: the moment estimates (same structure as ``params``) and the step
counter ``"step"`` stored as a 0-d int64 NumPy array, so a checkpoint writer saves it like any leaf.
The learning rate may be a float or a schedule ``lr(t) -> float`` of the 1-based step ``t``.
Moments live in each parameter's dtype and namespace; hyperparameters enter as Python floats, so
float32 parameters stay float32.

Updates at step ``t`` with gradient ``g`` (defaults as in the papers / PyTorch):

* SGD (momentum μ, PyTorch form): ``b ← μ·b + g``, ``θ ← θ − lr·b`` (``b = g`` when μ = 0).
* Adam (Kingma & Ba 2015, Alg. 1): ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
  ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``, ``θ ← θ − lr·m̂/(√v̂ + ε)``.
* Adamax (ibid., Alg. 2): ``m ← β₁m + (1−β₁)g``, ``u ← max(β₂u, |g|)``,
  ``θ ← θ − (lr/(1−β₁ᵗ))·m/(u + ε)``. The paper has no ε (it is the ``ε = 0`` case); PyTorch
  instead puts ε inside the max, ``u ← max(β₂u, |g| + ε)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from .. import tree as _tree
from .._array import namespace

LearningRate = float | Callable[[int], float]


def global_norm(grads: dict) -> float:
    """``√(Σ g²)`` over every leaf of the tree, as a Python float."""
    total = 0.0
    for _, g in _tree.leaves(grads):
        total += float((g * g).sum())
    return math.sqrt(total)


def clip_grad_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Scale the whole tree by ``max_norm/‖g‖`` when ``‖g‖ > max_norm``; returns ``(grads, ‖g‖)``.

    ``‖g‖`` is the norm before clipping. A non-finite norm is returned with the gradients unchanged
    (scaling cannot repair it; the caller decides, see :func:`rawflow.training.loop.train`).
    """
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"clip_grad_norm: max_norm must be positive and finite, got {max_norm!r}")
    norm = global_norm(grads)
    if math.isfinite(norm) and norm > max_norm:
        return _tree.scale(grads, max_norm / norm), norm
    return grads, norm


class Optimizer(ABC):
    """Base class: step counting, learning-rate schedules and structure checks."""

    def __init__(self, lr: LearningRate):
        if not callable(lr) and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"{self.name}: lr must be a positive number or a schedule, got {lr!r}")
        self.lr = lr

    @property
    def name(self) -> str:
        return type(self).__name__

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}")

    def lr_at(self, t: int) -> float:
        lr = float(self.lr(t)) if callable(self.lr) else float(self.lr)
        if not (lr >= 0 and math.isfinite(lr)):
            raise self._error(f"learning rate at step {t} is {lr}")
        return lr

    def init(self, params: dict) -> dict:
        _tree.check(self.name, params, _tree.ANY)
        state = {key: _tree.zeros_like(params) for key in self._slots()}
        state["step"] = np.zeros((), dtype=np.int64)
        return state

    def update(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        """One step: new ``(params, state)``. ``params`` must be a tree of finite arrays of one
        dtype; ``grads`` and every state slot must have its structure (keys, shapes, dtype) and be
        finite (one NaN would silently poison every parameter it reaches)."""
        _tree.check(self.name, params, _tree.ANY)
        dtype = next((a.dtype for _, a in _tree.leaves(params)), None)
        spec = _tree.shapes(params)
        try:
            _tree.check(self.name, grads, spec, dtype, what="gradient", root="grads")
        except ValueError as e:
            raise self._error(f"grads do not have the structure of params: {_detail(e)}") from None
        if not isinstance(state, dict):
            raise self._error(f"state must be a dict (from {self.name}.init), got {type(state).__name__}")
        for key in self._slots():
            try:
                _tree.check(self.name, state.get(key), spec, dtype, what=f"state '{key}' entry",
                            root=f"state slot '{key}'")
            except ValueError as e:
                raise self._error(f"state slot '{key}' does not match params (state from another model?): "
                                  f"{_detail(e)}") from None
        step = state.get("step")
        if not (isinstance(step, np.ndarray) and step.shape == () and step.dtype.kind in "iu" and int(step) >= 0):
            raise self._error(f"state has no valid 'step' counter (a non-negative 0-d integer array), got {step!r}")
        return self._step(params, grads, state)

    def _step(self, params: dict, grads: dict, state: dict) -> tuple[dict, dict]:
        """:meth:`update` without its checks, for a caller that made them (``train`` checks its
        first step; later steps only see trees that step produced)."""
        t = int(state["step"]) + 1
        new_params, new_state = self._update(params, grads, state, t)
        new_state["step"] = np.asarray(t, dtype=np.int64)
        return new_params, new_state

    def _slots(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def _update(self, params, grads, state, t):
        ...


def _map3(fn, params, *rest):
    """Three trees shaped like ``params`` from one walk: ``fn(leaf, *other leaves) -> (a, b, c)``."""
    out = ({}, {}, {})
    for key, value in params.items():
        others = [r[key] for r in rest]
        triple = _map3(fn, value, *others) if isinstance(value, dict) else fn(value, *others)
        for tree, item in zip(out, triple):
            tree[key] = item
    return out


def _detail(error: ValueError) -> str:
    """The message of a tree check without its ``"<owner>: "`` prefix."""
    return str(error).split(": ", 1)[-1]


def _betas(name: str, betas) -> tuple[float, float]:
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"{name}: betas must lie in [0, 1), got {tuple(betas)}")
    return b1, b2


def _eps(name: str, eps) -> float:
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{name}: eps must be non-negative and finite, got {eps!r}")
    return float(eps)


class SGD(Optimizer):
    def __init__(self, lr: LearningRate, momentum: float = 0.0):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise self._error(f"momentum must lie in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _slots(self):
        return ("momentum",) if self.momentum else ()

    def _update(self, params, grads, state, t):
        lr = self.lr_at(t)
        if not self.momentum:
            return _tree.map(lambda p, g: p - lr * g, params, grads), {}
        mu = self.momentum
        buf = _tree.map(lambda b, g: mu * b + g, state["momentum"], grads)
        return _tree.map(lambda p, b: p - lr * b, params, buf), {"momentum": buf}


class Adam(Optimizer):
    """Adam (see the module doc). ``backend``: ``"reference"`` — the NumPy/CuPy expressions below;
    ``"numba"`` — one fused pass per leaf (:mod:`rawflow.kernels.cpu_optim`), the same operations
    in the same order and dtype, bit for bit, without NumPy's per-operation overhead and
    temporaries (NumPy float32/float64 parameters only); ``"auto"`` (default) — the kernel where
    it applies and Numba is installed, else the reference. The choice changes speed, never a bit
    of the result, which is why ``"auto"`` is the default here (the layers' kernels, which round
    differently, default to ``"reference"``)."""

    def __init__(self, lr: LearningRate = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, *,
                 backend: str = "auto"):
        super().__init__(lr)
        self.b1, self.b2 = _betas(self.name, betas)
        self.eps = _eps(self.name, eps)
        if backend not in ("reference", "numba", "auto"):
            raise self._error(f"backend must be 'reference', 'numba' or 'auto', got {backend!r}")
        self.backend = backend

    def _slots(self):
        return ("m", "v")

    def _kernel(self, params):
        """:func:`rawflow.kernels.cpu_optim.adam_leaf`, or ``None`` for the reference expressions."""
        if self.backend == "reference":
            return None
        leaf = next((a for _, a in _tree.leaves(params)), None)
        fits = type(leaf) is np.ndarray and leaf.dtype in (np.float32, np.float64)
        if fits:
            try:
                from ..kernels import cpu_optim
            except ImportError:  # no Numba
                cpu_optim = None
            if cpu_optim is not None:
                return cpu_optim
        if self.backend == "numba":
            raise self._error("backend='numba' needs Numba and NumPy float32/float64 parameters")
        return None

    def _update(self, params, grads, state, t):
        lr, b1, b2, eps = self.lr_at(t), self.b1, self.b2, self.eps
        k = self._kernel(params)
        if k is not None:
            dtype = next(a for _, a in _tree.leaves(params)).dtype
            scalars = k.adam_scalars(dtype, lr, b1, b2, eps, t)
            new_p, m, v = _map3(lambda p, g, m, v: k.adam_leaf(p, g, m, v, scalars), params, grads, state["m"],
                                state["v"])
            return new_p, {"m": m, "v": v}
        m = _tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = _tree.map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads)
        c1, c2 = 1 - b1**t, 1 - b2**t

        def step(p, m, v):
            return p - lr * (m / c1) / (namespace(v).sqrt(v / c2) + eps)

        return _tree.map(step, params, m, v), {"m": m, "v": v}


class Adamax(Optimizer):
    def __init__(self, lr: LearningRate = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(lr)
        self.b1, self.b2 = _betas(self.name, betas)
        self.eps = _eps(self.name, eps)

    def _slots(self):
        return ("m", "u")

    def _update(self, params, grads, state, t):
        b1, b2, eps = self.b1, self.b2, self.eps
        m = _tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        u = _tree.map(lambda u, g: namespace(g).maximum(b2 * u, namespace(g).abs(g)), state["u"], grads)
        step_size = self.lr_at(t) / (1 - b1**t)
        return _tree.map(lambda p, m, u: p - step_size * m / (u + eps), params, m, u), {"m": m, "u": u}
