"""A bijector at a point, seen as one flat function ``w ↦ f(w)`` for the oracles.

``w`` packs everything a direction of the layer depends on: its input (``x`` for ``forward``, ``z``
for ``inverse``) and every parameter leaf, in :func:`rawflow.tree.leaves` order. ``f(w)`` packs what
the layer returns for fixed cotangents ``(g, gℓ)``::

    out                      (N, *event)      forward/inverse output
    logdet                   (N,)
    grad:input, grad:<path>  the VJP of L = Σ g·out + Σ gℓ·logdet   (input first, then each leaf)
    gradld:input, ...        the VJP of Lℓ = Σ gℓ·logdet alone       (the log-det cotangent separately)
    gradout:input, ...       the VJP of Σ g·out alone (only with ``output_only=True``)

so one derivative column ``∂f/∂w_r`` holds a Jacobian column (``out``, ``logdet`` rows) *and* a
Hessian column of ``L`` and of ``Lℓ`` (the ``grad`` rows, computed through the hand-written backward).
The gradient segments are ordered like ``w``, so the ``grad`` rows against all columns form the
square Hessian of ``L`` over ``(input, params)``.

``f`` evaluates in the dtype of ``w`` (complex128 for the complex step) or in an explicitly given
dtype (float32 for the precision checks). Arrays are handed to the layer in its own namespace
(NumPy or CuPy, from the example input) and brought back to NumPy for the oracles.
"""

from __future__ import annotations

import numpy as np

from .. import tree
from .._array import to_numpy


class Layout:
    """Named segments of a flat vector: ``[(name, shape), ...]``."""

    def __init__(self, segments):
        self.names = [name for name, _ in segments]
        self.shapes = {name: tuple(shape) for name, shape in segments}
        self.slices = {}
        start = 0
        for name, shape in segments:
            size = int(np.prod(shape, dtype=np.int64))
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start

    def pack(self, parts: dict, dtype=None) -> np.ndarray:
        chunks = [np.asarray(parts[name]).reshape(-1) for name in self.names]
        out = np.concatenate(chunks) if chunks else np.zeros(0)
        return out if dtype is None else out.astype(dtype)

    def unpack(self, flat: np.ndarray) -> dict:
        return {name: flat[self.slices[name]].reshape(self.shapes[name]) for name in self.names}

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        return flat[..., self.slices[name]]



class Probe:
    """``layer`` in one ``direction`` around ``(u, params)`` with cotangents ``(g, gℓ)``."""

    def __init__(self, layer, params: dict, u, g, glogdet, direction: str, backend=None, output_only: bool = False):
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        self.layer = layer
        self.direction = direction
        self.backend = backend if backend is not None else np
        self.run = layer.forward if direction == "forward" else layer.inverse
        self.vjp = layer.backward if direction == "forward" else layer.inverse_backward
        self.template = params
        self.paths = [path for path, _ in tree.leaves(params)]
        u = np.asarray(u, dtype=np.float64)
        leaves = {path: np.asarray(to_numpy(leaf), dtype=np.float64) for path, leaf in tree.leaves(params)}
        self.in_layout = Layout([("input", u.shape)] + [(p, leaves[p].shape) for p in self.paths])
        self.w0 = self.in_layout.pack({"input": u, **leaves})
        self.g = np.asarray(g, dtype=np.float64)
        self.glogdet = np.asarray(glogdet, dtype=np.float64)
        out, logdet, _ = self.run(self._params(leaves, np.float64), self._arr(u, np.float64))
        self.out_shape = tuple(out.shape)
        grads = [(f"grad:{name}", self.in_layout.shapes[name]) for name in self.in_layout.names]
        gradld = [(f"gradld:{name}", self.in_layout.shapes[name]) for name in self.in_layout.names]
        # the output cotangent alone: a term it carries can hide under the log-det's in grad:*
        self.output_only = bool(output_only)
        gradout = [(f"gradout:{n}", self.in_layout.shapes[n]) for n in self.in_layout.names] if output_only else []
        self.out_layout = Layout([("out", self.out_shape), ("logdet", tuple(logdet.shape))] + grads + gradld + gradout)
        self.n_samples = u.shape[0]

    # ------------------------------------------------------------------ helpers
    def _arr(self, a, dtype):
        return self.backend.asarray(np.asarray(a).astype(dtype, copy=False))

    def _params(self, leaves: dict, dtype) -> dict:
        return tree.rebuild(self.template, {p: self._arr(v, dtype) for p, v in leaves.items()})

    def split(self, w: np.ndarray) -> tuple[np.ndarray, dict]:
        parts = self.in_layout.unpack(w)
        return parts.pop("input"), parts

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, w: np.ndarray, dtype=None) -> dict:
        """All outputs at ``w`` as a dict of NumPy arrays (``out``, ``logdet``, ``grad:*``, ``gradld:*``)."""
        dtype = np.dtype(dtype) if dtype is not None else np.asarray(w).dtype
        u, leaves = self.split(np.asarray(w))
        params = self._params(leaves, dtype)
        u = self._arr(u, dtype)
        out, logdet, cache = self.run(params, u)
        g = self._arr(self.g, dtype)
        gl = self._arr(self.glogdet, dtype)
        gu, gp = self.vjp(params, cache, g, gl)
        gu0, gp0 = self.vjp(params, cache, g * 0, gl)
        parts = {"out": out, "logdet": logdet, "grad:input": gu, "gradld:input": gu0}
        gp_leaves, gp0_leaves = dict(tree.leaves(gp)), dict(tree.leaves(gp0))
        if sorted(gp_leaves) != sorted(self.paths) or sorted(gp0_leaves) != sorted(self.paths):
            raise ValueError(
                f"{_name(self.layer)}: gparams leaves {sorted(gp_leaves)} differ from params leaves {sorted(self.paths)}"
            )
        for p in self.paths:
            parts[f"grad:{p}"] = gp_leaves[p]
            parts[f"gradld:{p}"] = gp0_leaves[p]
        parts = {k: to_numpy(v) for k, v in parts.items()}
        if self.output_only and np.dtype(dtype).kind == "c":
            # derivative columns (complex step): the VJP is linear in its cotangent (a structure
            # check), so Σ g·out's VJP is grad − gradld, and one VJP per column is saved
            for name in self.in_layout.names:
                parts[f"gradout:{name}"] = parts[f"grad:{name}"] - parts[f"gradld:{name}"]
        elif self.output_only:
            gu1, gp1 = self.vjp(params, cache, g, gl * 0)
            parts["gradout:input"] = to_numpy(gu1)
            parts.update({f"gradout:{p}": to_numpy(a) for p, a in tree.leaves(gp1)})
        return parts

    def __call__(self, w: np.ndarray, dtype=None) -> np.ndarray:
        """``f(w)`` as a flat vector (complex if ``w`` is)."""
        parts = self.evaluate(w, dtype)
        kind = np.complex128 if np.iscomplexobj(w) else np.float64
        return self.out_layout.pack(parts, dtype=kind)


def _name(layer) -> str:
    return getattr(layer, "name", type(layer).__name__)
