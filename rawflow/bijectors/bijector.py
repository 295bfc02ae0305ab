"""The bijector contract every rawflow layer keeps.

Direction convention: **forward = data → latent** (the training direction). For a batch
``x: (N, *event_shape)``

    z, logdet, cache = layer.forward(params, x)        # logdet = log|det ∂z/∂x|, shape (N,)
    x, logdet_inv, cache = layer.inverse(params, z)    # logdet_inv = -logdet at matching points
    gx, gparams = layer.backward(params, cache, gz, glogdet)           # VJP of forward
    gz, gparams = layer.inverse_backward(params, cache, gx, glogdet)   # VJP of inverse

* ``params`` is a tree (nested ``dict[str, array]``, see :mod:`rawflow.tree`) of *learned* arrays;
  ``gparams`` has exactly its structure. Fixed buffers (masks, permutations, the P and sign of an
  LU factorisation) are attributes of the layer object, chosen at construction, never in ``params``.
* ``glogdet`` is the cotangent of the log-det output, shape ``(N,)``; its contribution is part of
  the VJP. A scalar objective ``L(z, logdet)`` has ``gz = ∂L/∂z``, ``glogdet = ∂L/∂logdet``.
* ``cache`` describes a *point* of the bijection (an ``(x, z)`` pair and intermediates). The cache
  returned by ``forward`` and the one returned by ``inverse`` at the matching point are
  interchangeable: ``backward`` and ``inverse_backward`` accept either. That is what lets a chain
  rebuild a layer's cache from its output alone (see :class:`rawflow.bijectors.chain.Chain`).
* The public methods validate every argument and raise ``ValueError("<Layer>: <argument> ...")``;
  subclasses implement the unchecked ``_forward``, ``_inverse``, ``_backward``,
  ``_inverse_backward``, which a chain (and a model) calls directly once it has validated its own
  arguments, so a composite checks once.
* **Parameters are checked like inputs.** Each layer declares :meth:`Bijector.param_spec`, the tree
  of parameter shapes its ``init`` produces, fixed at construction (ActNorm's data-dependent init
  changes values, never shapes). Every public method checks ``params`` against it: the same keys
  (a missing or an unexpected key is named by its path), the same shapes, the input's dtype, finite
  values — O(number of leaves) plus one finiteness reduction per leaf. ``init`` checks what it
  produced the same way.
* **Cotangents and caches.** ``g`` must have the shape of the output it is the cotangent of,
  ``glogdet`` must be a finite ``(N,)`` array of the same dtype. The public ``forward`` and
  ``inverse`` return their cache wrapped in a :class:`~rawflow._checks.Cache` that records the layer
  and the point's shapes; the public VJPs refuse ``None``, a cache of another layer, or one whose
  shapes do not match the cotangent.
* **Dtypes: one rule.** Inputs, parameters and cotangents are float32 or float64 (complex64 /
  complex128 on the reference paths, for complex-step checks), in native byte order. float16,
  longdouble, big-endian arrays, integers, ``numpy.matrix`` and masked arrays are refused with a
  ``ValueError`` at every entry point; nothing is ever converted (:mod:`rawflow._checks`).
* **Empty batches: one rule.** ``N = 0`` is a valid batch: ``forward``, ``inverse`` and both VJPs
  return correctly shaped empty outputs (``z: (0, *event)``, ``logdet: (0,)``) and exactly zero
  parameter gradients (a sum over no samples). Where the answer is a statistic *of* the batch it
  is undefined, and every such place raises ``ValueError`` saying the batch is empty: a
  data-dependent ``init`` (:attr:`Bijector.data_dependent`: ActNorm, the CNN conditioners'
  normalisation), a mean NLL, ``evaluate_nll``, ``train``. Event axes may not be empty.
* **Inference without caches.** ``_forward_no_cache(params, x) -> (z, logdet)`` and
  ``_inverse_no_cache(params, z) -> (x, logdet_inv)`` are the unchecked directions for callers that
  will not run a VJP (sampling, ``log_prob``, ``encode`` / ``decode``). They return exactly the
  values of ``_forward`` / ``_inverse``, bit for bit (the same operations; tests hold them to
  it), and keep nothing alive: a layer may then skip what only its VJP needs (a scale map's
  derivative, a network's intermediates) and overwrite its own temporaries in place. The
  defaults call ``_forward`` / ``_inverse`` and drop the cache, so a layer that does not
  override them keeps the contract; composites (chains, multi-scale flows, models) call their
  children's no-cache methods. A conditional layer (below) takes its context as a third
  argument here too, ``_forward_no_cache(params, x, c)``, as in ``_forward``.
* Randomness comes from a ``numpy.random.Generator`` passed explicitly (``init`` also accepts
  ``None`` for layers that draw nothing).
* Nothing is stored on the layer by any call: calls can overlap and nothing needs flushing.

**Conditional layers** (a context ``c: (N, K)`` such as a one-hot class label or an encoder's
output; :mod:`rawflow.bijectors.conditional`). A layer whose :attr:`Bijector.context_shape` is
``(K,)`` takes the context as a keyword and its VJPs also return the context's cotangent::

    params = layer.init(rng, x, context=c)
    z, logdet, cache = layer.forward(params, x, context=c)
    x, logdet_inv, cache = layer.inverse(params, z, context=c)
    gx, gparams, gcontext = layer.backward(params, cache, gz, glogdet)
    gz, gparams, gcontext = layer.inverse_backward(params, cache, gx, glogdet)

The context reaches the conditioner networks (or a prior's mean and log-std), never the
elementwise maths, so the log-det stays ``log|det ∂z/∂x|`` at fixed ``c``. It is checked like an
input: an array of the input's dtype and namespace, ``(N, K)`` with ``N`` the input's batch size,
finite. The cache holds the context, so the VJPs take none. A layer that takes no context
(``context_shape is None``, every layer above) is called exactly as before; passing it a context
is an error, as is calling a conditional layer without one. A :class:`~rawflow.bijectors.chain.Chain`
or :class:`~rawflow.bijectors.multiscale.MultiScale` holding conditional layers is conditional
itself: it hands the context to those layers only and sums their context cotangents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .. import tree as _tree
from .._array import Array
from .._checks import Cache, MissingRng, check_array, check_context, check_rng, check_vector, open_cache


class Bijector(ABC):
    """Base class: validation and the public contract; subclasses provide the maths."""

    #: shape of one sample at the input (forward direction); ``None`` entries match any size.
    event_shape: tuple = ()
    #: shape of one sample of the context, ``(K,)``, for a conditional layer; ``None`` for a layer
    #: that takes no context (see the module docstring).
    context_shape: tuple | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def out_event_shape(self) -> tuple:
        """Shape of one sample at the output; the same as the input unless a layer reshapes."""
        return self.event_shape

    def output_shape(self, shape: tuple) -> tuple:
        """Concrete event shape of the output for an input of concrete event shape ``shape``.

        The default keeps the input's size wherever ``out_event_shape`` says ``None``; layers that
        reshape (squeeze, flatten) override it.
        """
        out = self.out_event_shape
        if len(out) != len(shape):
            raise self._error(f"cannot map an event of shape {tuple(shape)} (expected {len(out)} axes)")
        return tuple(int(s) if o is None else int(o) for o, s in zip(out, shape))

    def param_spec(self) -> dict:
        """The tree of parameter shapes that ``init`` produces (``{}`` for a layer without
        parameters); public methods check ``params`` against it. The default, :data:`rawflow.tree.ANY`,
        is for user layers that declare none: their leaves are still checked (arrays, dtype, finite).
        """
        return _tree.ANY

    @property
    def data_dependent(self) -> bool:
        """Whether ``init`` computes parameters from statistics of its example batch (then an
        empty batch is refused)."""
        return False

    # ------------------------------------------------------------------ public, validated
    def init(self, rng: np.random.Generator | None, x: Array, *, context: Array | None = None) -> dict:
        """Parameters for this layer, in ``x``'s dtype and array namespace.

        ``x`` is an example batch; data-dependent layers (ActNorm) initialise from it and need
        ``N ≥ 1``. ``rng`` may be ``None`` for layers that draw nothing (the LU / dense 1×1
        convolutions are seeded at construction). A conditional layer also takes the example
        batch's ``context``.
        """
        if rng is None:
            rng = MissingRng(self.name)
        else:
            check_rng(self.name, rng)
        self._check_array(x, self.event_shape, "input")
        c = self._check_context(context, x)
        if x.shape[0] == 0 and self.data_dependent:
            raise self._error(f"data-dependent init needs a non-empty example batch, got shape {tuple(x.shape)}")
        params = self._init(rng, x) if c is None else self._init(rng, x, c)
        _tree.check(self.name, params, self.param_spec(), x.dtype, what="initialised parameter")
        return params

    def forward(self, params: dict, x: Array, *, context: Array | None = None):
        """``(z, logdet, cache)`` with ``z = f(x)`` and ``logdet = log|det ∂z/∂x|: (N,)``."""
        self._check_call(params, x, self.event_shape, "input")
        if context is None and self.context_shape is None:
            z, logdet, cache = self._forward(params, x)
        else:
            z, logdet, cache = self._forward(params, x, self._check_context(context, x))
        return z, logdet, Cache(self, x.shape, z.shape, x.dtype, cache)

    def inverse(self, params: dict, z: Array, *, context: Array | None = None):
        """``(x, logdet_inv, cache)`` with ``x = f⁻¹(z)`` and ``logdet_inv = log|det ∂x/∂z|``."""
        self._check_call(params, z, self.out_event_shape, "latent input")
        if context is None and self.context_shape is None:
            x, logdet, cache = self._inverse(params, z)
        else:
            x, logdet, cache = self._inverse(params, z, self._check_context(context, z))
        return x, logdet, Cache(self, x.shape, z.shape, z.dtype, cache)

    def backward(self, params: dict, cache: Any, gz: Array, glogdet: Array):
        """VJP of ``forward``: ``(gx, gparams)`` given cotangents of ``z`` and ``logdet``;
        ``(gx, gparams, gcontext)`` for a conditional layer."""
        self._check_cotangents(params, gz, glogdet, self.out_event_shape)
        return self._backward(params, open_cache(self, self.name, cache, gz, "z"), gz, glogdet)

    def inverse_backward(self, params: dict, cache: Any, gx: Array, glogdet: Array):
        """VJP of ``inverse``: ``(gz, gparams)`` given cotangents of ``x`` and ``logdet_inv``;
        ``(gz, gparams, gcontext)`` for a conditional layer."""
        self._check_cotangents(params, gx, glogdet, self.event_shape)
        return self._inverse_backward(params, open_cache(self, self.name, cache, gx, "x"), gx, glogdet)

    # ------------------------------------------------------------------ to implement
    def _init(self, rng, x):
        return {}

    @abstractmethod
    def _forward(self, params, x):
        ...

    @abstractmethod
    def _inverse(self, params, z):
        ...

    def _forward_no_cache(self, params, x, *context):
        """``(z, logdet)`` of :meth:`_forward`, bit for bit, without building a cache (a conditional
        layer takes its context here as in ``_forward``)."""
        z, logdet, _ = self._forward(params, x, *context)
        return z, logdet

    def _inverse_no_cache(self, params, z, *context):
        """``(x, logdet_inv)`` of :meth:`_inverse`, bit for bit, without building a cache."""
        x, logdet, _ = self._inverse(params, z, *context)
        return x, logdet

    @abstractmethod
    def _backward(self, params, cache, gz, glogdet):
        ...

    @abstractmethod
    def _inverse_backward(self, params, cache, gx, glogdet):
        ...

    # ------------------------------------------------------------------ validation
    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}")

    def _check_array(self, x: Any, event_shape: tuple, what: str) -> None:
        check_array(self.name, x, what, event_shape)

    def _check_params(self, params: Any, dtype) -> None:
        _tree.check(self.name, params, self.param_spec(), dtype)

    def _check_call(self, params: dict, x: Array, event_shape: tuple, what: str) -> None:
        self._check_array(x, event_shape, what)
        self._check_params(params, x.dtype)

    def _check_cotangents(self, params: dict, g: Array, glogdet: Array, event_shape: tuple) -> None:
        self._check_call(params, g, event_shape, "cotangent")
        check_vector(self.name, glogdet, "log-det cotangent", g.shape[0], g.dtype)

    def _check_context(self, context: Any, x: Array) -> Array | None:
        """``context`` checked against :attr:`context_shape` and the input ``x`` (``None`` for a
        layer that takes none)."""
        return check_context(self.name, self.context_shape, context, x)


# ---------------------------------------------------------------------- composites
# A composite (chain, multi-scale flow) calls its layers' unchecked methods and hands the context
# only to the conditional ones. The VJP helpers return ``(g, gparams, gcontext or None)``.
def run_forward(layer: Bijector, params: dict, x: Array, context: Array | None):
    return layer._forward(params, x) if layer.context_shape is None else layer._forward(params, x, context)


def run_inverse(layer: Bijector, params: dict, z: Array, context: Array | None):
    return layer._inverse(params, z) if layer.context_shape is None else layer._inverse(params, z, context)


def run_forward_no_cache(layer: Bijector, params: dict, x: Array, context: Array | None):
    """``(z, logdet)`` of :func:`run_forward`, bit for bit, without a cache (inference paths)."""
    if layer.context_shape is None:
        return layer._forward_no_cache(params, x)
    return layer._forward_no_cache(params, x, context)


def run_inverse_no_cache(layer: Bijector, params: dict, z: Array, context: Array | None):
    """``(x, logdet_inv)`` of :func:`run_inverse`, bit for bit, without a cache (sampling)."""
    if layer.context_shape is None:
        return layer._inverse_no_cache(params, z)
    return layer._inverse_no_cache(params, z, context)


def run_init(layer: Bijector, rng, x: Array, context: Array | None) -> dict:
    return layer._init(rng, x) if layer.context_shape is None else layer._init(rng, x, context)


def run_backward(layer: Bijector, params: dict, cache, g: Array, glogdet: Array):
    out = layer._backward(params, cache, g, glogdet)
    return out if layer.context_shape is not None else (*out, None)


def run_inverse_backward(layer: Bijector, params: dict, cache, g: Array, glogdet: Array):
    out = layer._inverse_backward(params, cache, g, glogdet)
    return out if layer.context_shape is not None else (*out, None)


def common_context(owner: str, parts) -> tuple | None:
    """The one context shape of the conditional ``parts`` (``None`` if none is conditional)."""
    shapes = {tuple(p.context_shape) for p in parts if p.context_shape is not None}
    if len(shapes) > 1:
        raise ValueError(f"{owner}: its conditional layers take contexts of different shapes {sorted(shapes)}; "
                         "one context is handed to all of them")
    return shapes.pop() if shapes else None

