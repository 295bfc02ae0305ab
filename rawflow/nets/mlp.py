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


def _real_float(a: Array) -> bool:
    """Whether ``a`` is a float32/float64 array (the fast paths); complex arrays (complex-step
    checks) and object arrays (the 60-digit oracle) take the reference expressions."""
    return getattr(a, "dtype", None) is not None and a.dtype.kind == "f"


def add_inplace(a: Array, b: Array) -> Array:
    """``a + b`` for a fresh array ``a`` the caller owns (a GEMM's output), written into ``a`` when
    the dtypes agree: the same one addition per element, bit for bit, without a second buffer."""
    if a.dtype == b.dtype:
        a += b
        return a
    return a + b


def apply_no_cache(net, params: dict, x: Array) -> Array:
    """``net.apply(params, x)[0]`` without the cache: the network's own ``apply_no_cache`` when it
    has one (optional in the protocol; it must return the same values bit for bit)."""
    fast = getattr(net, "apply_no_cache", None)
    return fast(params, x) if fast is not None else net.apply(params, x)[0]


class Activation:
    """Elementwise nonlinearity ``a ↦ φ(a)`` with ``φ'`` expressed through what ``apply`` keeps.

    The reference expressions compare the real part (``where(a.real > 0, a, 0)``), which keeps the
    piecewise-linear maps complex-step safe off the kink. For real float arrays ReLU is
    ``maximum(a, 0)`` instead — the same value for every finite ``a`` (``+0`` for ``a ≤ 0``, ``−0``
    included), about 10× faster, because ``where`` on a random sign pattern is bound by branch
    misses. The one difference is deliberate: a NaN pre-activation (an overflowed network) stays
    NaN, where the ``where`` form would hide it as 0; inputs and parameters are checked finite, so
    only a diverged model meets it, and its loss check should see it.

    :attr:`needs_input` says whether :meth:`backward` needs the pre-activation ``a``: ReLU and
    leaky ReLU with a slope ≥ 0 read the sign of ``a`` from the output (``out > 0`` exactly when
    ``a > 0``), so a network need not keep ``a``.
    """

    def __init__(self, name: str, slope: float = 0.01):
        if name not in ("relu", "tanh", "leaky_relu"):
            raise ValueError(f"MLP: unknown activation {name!r}; use 'relu', 'tanh' or 'leaky_relu'")
        self.name, self.slope = name, float(slope)
        self.needs_input = name == "tanh" or (name == "leaky_relu" and not self.slope >= 0)

    def apply(self, a: Array, inplace: bool = False) -> Array:
        """``φ(a)``; ``inplace=True`` may overwrite ``a`` (a fresh array the caller owns)."""
        xp = namespace(a)
        if self.name == "tanh":
            return xp.tanh(a, out=a) if inplace and _real_float(a) else xp.tanh(a)
        if self.name == "relu" and _real_float(a):
            return xp.maximum(a, 0, out=a) if inplace else xp.maximum(a, 0)
        # Comparisons on the real part keep the piecewise-linear maps complex-step safe off the kink.
        return xp.where(a.real > 0, a, 0 if self.name == "relu" else self.slope * a)

    def grad(self, a: Array, out: Array) -> Array:
        """``φ'(a)`` given the pre-activation ``a`` and ``out = φ(a)``."""
        xp = namespace(a)
        if self.name == "tanh":
            return sech2(a)
        one = xp.ones((), dtype=a.dtype)
        return xp.where(a.real > 0, one, 0 * one if self.name == "relu" else self.slope * one)

    def backward(self, g: Array, a: Array | None, out: Array, inplace: bool = False) -> Array:
        """``g ⊙ φ'(a)``; ``a`` may be ``None`` unless :attr:`needs_input`. ``inplace=True`` may
        overwrite ``g``. ReLU multiplies by the mask ``out > 0`` (1 or 0, the same products as
        ``g ⊙ grad(a, out)``, without the ``where``)."""
        if self.needs_input or self.name != "relu":
            pre = a if a is not None else out  # leaky ReLU (slope ≥ 0): sign(out) = sign(a)
            grad = self.grad(pre, out)
            return namespace(g).multiply(g, grad, out=g) if inplace and g.dtype == grad.dtype else g * grad
        mask = out.real > 0
        return namespace(g).multiply(g, mask, out=g) if inplace else g * mask


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
            a = add_inplace(h @ p["w"].T, p["b"])
            if i < n_layers - 1:
                out = self.activation.apply(a, inplace=not self.activation.needs_input)
                cache.append((h, a if self.activation.needs_input else None, out))
                h = out
            else:
                cache.append((h, None, None))
                h = a
        return h, cache

    def apply_no_cache(self, params: dict, x: Array) -> Array:
        """``apply``'s output without its cache (inference: sampling, log-densities); every
        intermediate is overwritten in place once the next layer has read it."""
        n_layers = len(self.widths) - 1
        h = x
        for i in range(n_layers):
            p = params[str(i)]
            h = add_inplace(h @ p["w"].T, p["b"])
            if i < n_layers - 1:
                h = self.activation.apply(h, inplace=True)
        return h

    def backward(self, params: dict, cache: list, gy: Array):
        gparams = {}
        g = gy
        for i in reversed(range(len(cache))):
            h, a, out = cache[i]
            if out is not None:
                # g is the fresh product g @ w of the layer above (never the caller's gy here)
                g = self.activation.backward(g, a, out, inplace=True)
            w = params[str(i)]["w"]
            gparams[str(i)] = {"w": g.T @ h, "b": g.sum(axis=0)}
            g = g @ w
        return g, gparams
