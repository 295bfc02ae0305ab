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
  children's no-cache methods.
* Randomness comes from a ``numpy.random.Generator`` passed explicitly (``init`` also accepts
  ``None`` for layers that draw nothing).
* Nothing is stored on the layer by any call: calls can overlap and nothing needs flushing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .. import tree as _tree
from .._array import Array
from .._checks import Cache, MissingRng, check_array, check_rng, check_vector, open_cache


class Bijector(ABC):
    """Base class: validation and the public contract; subclasses provide the maths."""

    #: shape of one sample at the input (forward direction); ``None`` entries match any size.
    event_shape: tuple = ()

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
    def init(self, rng: np.random.Generator | None, x: Array) -> dict:
        """Parameters for this layer, in ``x``'s dtype and array namespace.

        ``x`` is an example batch; data-dependent layers (ActNorm) initialise from it and need
        ``N ≥ 1``. ``rng`` may be ``None`` for layers that draw nothing (the LU / dense 1×1
        convolutions are seeded at construction).
        """
        if rng is None:
            rng = MissingRng(self.name)
        else:
            check_rng(self.name, rng)
        self._check_array(x, self.event_shape, "input")
        if x.shape[0] == 0 and self.data_dependent:
            raise self._error(f"data-dependent init needs a non-empty example batch, got shape {tuple(x.shape)}")
        params = self._init(rng, x)
        _tree.check(self.name, params, self.param_spec(), x.dtype, what="initialised parameter")
        return params

    def forward(self, params: dict, x: Array):
        """``(z, logdet, cache)`` with ``z = f(x)`` and ``logdet = log|det ∂z/∂x|: (N,)``."""
        self._check_call(params, x, self.event_shape, "input")
        z, logdet, cache = self._forward(params, x)
        return z, logdet, Cache(self, x.shape, z.shape, x.dtype, cache)

    def inverse(self, params: dict, z: Array):
        """``(x, logdet_inv, cache)`` with ``x = f⁻¹(z)`` and ``logdet_inv = log|det ∂x/∂z|``."""
        self._check_call(params, z, self.out_event_shape, "latent input")
        x, logdet, cache = self._inverse(params, z)
        return x, logdet, Cache(self, x.shape, z.shape, z.dtype, cache)

    def backward(self, params: dict, cache: Any, gz: Array, glogdet: Array):
        """VJP of ``forward``: ``(gx, gparams)`` given cotangents of ``z`` and ``logdet``."""
        self._check_cotangents(params, gz, glogdet, self.out_event_shape)
        return self._backward(params, open_cache(self, self.name, cache, gz, "z"), gz, glogdet)

    def inverse_backward(self, params: dict, cache: Any, gx: Array, glogdet: Array):
        """VJP of ``inverse``: ``(gz, gparams)`` given cotangents of ``x`` and ``logdet_inv``."""
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

    def _forward_no_cache(self, params, x):
        """``(z, logdet)`` of :meth:`_forward`, bit for bit, without building a cache."""
        z, logdet, _ = self._forward(params, x)
        return z, logdet

    def _inverse_no_cache(self, params, z):
        """``(x, logdet_inv)`` of :meth:`_inverse`, bit for bit, without building a cache."""
        x, logdet, _ = self._inverse(params, z)
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

