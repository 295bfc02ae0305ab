"""Polyak averaging: an exponential moving average of the parameters, kept in the optimiser state.

::

    opt = EMA(Adam(1e-3), decay=0.999)
    state = opt.init(params)                          # state["ema"] = a copy of params
    params, state = opt.update(params, grads, state)  # the inner step, then the average
    averaged = EMA.average(state)                     # evaluate / sample with these

After every optimiser step, with the step's new parameters ``θ`` and decay ``d ∈ (0, 1)``::

    θ̄ ← θ̄ − (1 − d)·(θ̄ − θ)

TensorFlow's ``ExponentialMovingAverage`` update (``assign_moving_average``), which openai/glow's
``optim.polyak`` applies with ``d = 1 − 1/(steps per epoch · polyak_epochs)``; in exact arithmetic
``d·θ̄ + (1 − d)·θ``, and a leaf that stopped moving stays exactly where it is. ``θ̄`` starts at
the parameters given to :meth:`EMA.init` — for a flow, after its data-dependent initialisation
(TensorFlow starts the shadow variables at the variables' initializer values, before openai/glow's
data-dependent assignment; no debiasing is applied in either).

Why in the optimiser state: everything that saves and restores an optimiser — checkpoints, a
resumed run continuing bit for bit, data-parallel ranks that run the same step on identical
gradients — carries the average with no extra code, and the average is a pure function of the
parameter trajectory, so it is bitwise the same on every rank. Its dtype and namespace are the
parameters'.
"""

from __future__ import annotations

import math

from .. import tree as _tree
from .optim import Optimizer


class EMA(Optimizer):
    """``optimizer`` with Polyak averaging: its state gains ``"ema"``, the parameters' moving average."""

    def __init__(self, optimizer: Optimizer, decay: float):
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, EMA):
            raise ValueError(f"EMA: optimizer must be a rawflow optimiser (not an EMA), got {type(optimizer).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay < 1) \
                or not math.isfinite(decay):
            raise ValueError(f"EMA: decay must be a number in (0, 1), got {decay!r}")
        super().__init__(optimizer.lr)
        self.inner, self.decay = optimizer, float(decay)

    @property
    def name(self) -> str:
        return "EMA"

    def __repr__(self) -> str:
        return f"EMA({type(self.inner).__name__}, decay={self.decay})"

    def init(self, params: dict) -> dict:
        state = self.inner.init(params)
        state["ema"] = _tree.map(lambda a: a.copy(), params)
        return state

    def _slots(self) -> tuple[str, ...]:
        return self.inner._slots() + ("ema",)

    def _update(self, params, grads, state, t):
        inner = {key: state[key] for key in self.inner._slots()}
        new_params, new_state = self.inner._update(params, grads, inner, t)
        rate = 1.0 - self.decay
        new_state["ema"] = _tree.map(lambda a, p: a - rate * (a - p), state["ema"], new_params)
        return new_params, new_state

    @staticmethod
    def average(state: dict) -> dict:
        """The averaged parameters held in an :class:`EMA` optimiser's ``state``."""
        if not isinstance(state, dict) or "ema" not in state:
            raise ValueError("EMA.average: the state holds no moving average (not from an EMA optimiser)")
        return state["ema"]
