"""Conditioner networks with hand-written backward passes.

A conditioner maps the copied part of a coupling to the parameters of its elementwise transform.
Protocol (any object with these methods can be passed to a coupling):

    params = net.init(rng, x)               # x: example input (N, in_features), fixes dtype/namespace
    y, cache = net.apply(params, x)         # y: (N, out_features)
    gx, gparams = net.backward(params, cache, gy)

The last layer is zero-initialised, so a fresh coupling is exactly the identity map. A network
may also declare ``param_spec()`` (the tree of its parameter shapes) and ``data_dependent`` (whether
``init`` measures its example batch); the layers that hold it check parameters against the spec.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import tree
from .._array import Array, namespace, sech2


def conditioner_spec(net) -> tree.Spec:
    """``net.param_spec()``, or :data:`rawflow.tree.ANY` for a network that declares none."""
    spec = getattr(net, "param_spec", None)
    return spec() if callable(spec) else tree.ANY


class Activation:
    """Elementwise nonlinearity ``a ↦ φ(a)`` with ``φ'`` expressed through what ``apply`` keeps."""

    def __init__(self, name: str, slope: float = 0.01):
        if name not in ("relu", "tanh", "leaky_relu"):
            raise ValueError(f"MLP: unknown activation {name!r}; use 'relu', 'tanh' or 'leaky_relu'")
        self.name, self.slope = name, float(slope)

    def apply(self, a: Array) -> Array:
        xp = namespace(a)
        if self.name == "tanh":
            return xp.tanh(a)
        # Comparisons on the real part keep the piecewise-linear maps complex-step safe off the kink.
        return xp.where(a.real > 0, a, 0 if self.name == "relu" else self.slope * a)

    def grad(self, a: Array, out: Array) -> Array:
        """``φ'(a)`` given the pre-activation ``a`` and ``out = φ(a)``."""
        xp = namespace(a)
        if self.name == "tanh":
            return sech2(a)
        one = xp.ones((), dtype=a.dtype)
        return xp.where(a.real > 0, one, 0 * one if self.name == "relu" else self.slope * one)


class MLP:
    """Fully connected network ``x → [Linear → φ]* → Linear``.

    Linear layers use PyTorch's layout: ``y = x @ w.T + b`` with ``w: (out, in)``, ``b: (out,)``.
    Parameters: ``{"0": {"w", "b"}, "1": {...}, ...}``; hidden layers start from PyTorch's default
    ``U(-1/√in, 1/√in)``, the last layer from zeros.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        slope: float = 0.01,
    ):
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MLP: all widths must be positive, got in={in_features}, hidden={tuple(hidden)}, "
                f"out={out_features}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.widths = [self.in_features, *map(int, hidden), self.out_features]
        self.activation = Activation(activation, slope)

    #: ``init`` draws from the generator only; no statistic of the example batch is used.
    data_dependent = False

    def param_spec(self) -> dict:
        """Parameter shapes: ``{"i": {"w": (out, in), "b": (out,)}}`` per linear layer."""
        return {str(i): {"w": (fan_out, fan_in), "b": (fan_out,)}
                for i, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:]))}

    def init(self, rng: np.random.Generator, x: Array) -> dict:
        xp = namespace(x)
        params = {}
        n_layers = len(self.widths) - 1
        for i, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            if i == n_layers - 1:
                w = np.zeros((fan_out, fan_in))
                b = np.zeros(fan_out)
            else:
                bound = 1.0 / np.sqrt(fan_in)
                w = rng.uniform(-bound, bound, size=(fan_out, fan_in))
                b = rng.uniform(-bound, bound, size=fan_out)
            params[str(i)] = {"w": xp.asarray(w, dtype=x.dtype), "b": xp.asarray(b, dtype=x.dtype)}
        return params

    def apply(self, params: dict, x: Array):
        n_layers = len(self.widths) - 1
        cache = []
        h = x
        for i in range(n_layers):
            p = params[str(i)]
            a = h @ p["w"].T + p["b"]
            if i < n_layers - 1:
                out = self.activation.apply(a)
                cache.append((h, a, out))
                h = out
            else:
                cache.append((h, None, None))
                h = a
        return h, cache

    def backward(self, params: dict, cache: list, gy: Array):
        gparams = {}
        g = gy
        for i in reversed(range(len(cache))):
            h, a, out = cache[i]
            if a is not None:
                g = g * self.activation.grad(a, out)
            w = params[str(i)]["w"]
            gparams[str(i)] = {"w": g.T @ h, "b": g.sum(axis=0)}
            g = g @ w
        return g, gparams
