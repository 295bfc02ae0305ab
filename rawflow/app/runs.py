"""Training runs: a JSON config → data, model and optimiser; checkpoints that resume bit for bit.

A run lives in one folder::

    config.json              the run's configuration (everything needed to rebuild data, model, optimiser)
    checkpoint.safetensors   parameters, optimiser state, best-validation parameters, loss history,
                             the epoch loader's permutation, and (in the JSON manifest) the generator's
                             ``bit_generator.state``, the loader position and the early-stopping state
                             (runs written before checkpoint format 2 have ``checkpoint.npz``; both load)
    metrics.json             held-out results of the finished run (NLL; bits/dim and the independent-pixel
                             baseline for images; the Gaussian baseline, and the true NLL where known, for vectors)
    loss.png                 the training curve (when matplotlib is installed)
    .rawflow.lock            locked (``flock``) while a process trains here (:func:`rawflow.app.files.run_lock`)

Determinism: the data split and the evaluation noise come from generators seeded by
``(seed, purpose)``; initialisation, batch order and training dequantisation noise from one
generator ``default_rng([seed, SEED_TRAIN])`` whose state is checkpointed with everything else. A run resumed
from any checkpoint therefore continues the uninterrupted run's loss trajectory bit for bit (same
machine and BLAS). A NaN/Inf loss raises :class:`RunDiverged` *before* anything is written, so
the last good checkpoint stays as it was.

Data parallelism (``run_training(..., comm=)``, ``mpiexec -n P rawflow train``): every rank
builds the same data, model and generator from the same config (checked across ranks before
anything is written), trains with :func:`rawflow.training.loop.train`'s data-parallel path, and
evaluates its share of the held-out rows; rank 0 alone writes ``config.json``, checkpoints,
``metrics.json`` and plots. The checkpointed state (parameters, optimiser, generator, loader) is
the same on every rank and does not depend on P, so a run may be resumed with any P that divides
the batch size: with the same P it continues bit for bit, with another P to round-off (the
gradient sum is associated differently).

Data: 2-D densities by name (:data:`rawflow.data.datasets.DATASETS`), ``"digits"``, or a ``.npy`` /
``.npz`` file of ``(N, D)`` floats (vectors) or ``(N, C, H, W)`` / ``(N, H, W)`` integers (images,
dequantised ``(v + u)/n_bins`` with fresh noise for every training batch and fixed noise for
validation/test). Image inputs are centred (``x − ½``, volume-preserving) or passed through a
:class:`~rawflow.bijectors.logit.Logit` layer that is part of the model, so NLLs and bits/dim always refer
to the dequantised data. ``n_bits`` reduces images to ``n``-bit data first
(:func:`~rawflow.data.images.reduce_bits`; the config keeps the data's own levels as
``data_n_bins``); bits/dim then use ``n_bins = 2ⁿ`` and every report says they are not comparable
with the full data's.

Polyak averaging (``ema``: a decay in (0, 1)): the optimiser is wrapped in
:class:`~rawflow.training.ema.EMA`, so the average lives in the optimiser state, is checkpointed
with it and resumes bit for bit. A run with an average validates, selects its best parameters and
reports its test metrics with the averaged parameters (:func:`eval_params`; ``raw_test_*`` are the
latest raw parameters' figures beside them); ``load_params(..., which=)`` picks either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
from typing import Any, Callable

import numpy as np

from .._version import __version__
from ..data import arrayfile
from . import files, schema, sizes
from .. import tree as _tree
from .._array import to_numpy
from ..training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..data.datasets import DATASETS, TRUE_LOG_PROB, make_2d
from ..distributed.comm import Communicator
from ..distributed.parallel import agree, together
from ..models.model import FlowModel
from ..training.loop import EpochLoader, TrainingDiverged, evaluate_nll, gaussian_baseline_nll, train

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.npz"  # checkpoint format 1; loaded, replaced at the next save
METRICS = "metrics.json"
RUN_FORMAT = "rawflow-run"

MODELS = ("nice", "realnvp", "glow")
SYSTEM_NAMES = {"nice": "NICE", "realnvp": "RealNVP", "glow": "Glow"}
OPTIMIZERS = ("adam", "adamax", "sgd")
BACKENDS = ("reference", "numba", "auto")
DTYPES = ("float32", "float64")

# Architecture defaults per (model, data kind); the CLI's options override single entries.
# RealNVP on images: width 16 with 1 residual block costs 0.12 s a step (float32, one core) against
# 0.45 s for width 32 with 2 blocks, at the same held-out score on the digits (2.017 against 2.026
# bits/dim at their best, seed 0), so its 2000 default steps fit in 5 minutes.
ARCH_DEFAULTS = {
    ("realnvp", "vector"): {"n_couplings": 8, "hidden": [64, 64], "scale": "exp", "activation": "relu"},
    ("nice", "vector"): {"n_couplings": 4, "hidden": [64, 64], "activation": "relu"},
    ("glow", "vector"): {"K": 8, "hidden": [64, 64], "scale": "sigmoid", "activation": "relu"},
    ("glow", "image"): {"K": 4, "L": 2, "width": 32, "coupling": "affine", "permutation": "lu",
                        "scale": "sigmoid", "learn_top": True, "variant": "rawflow", "split_prior": False},
    ("realnvp", "image"): {"L": 2, "width": 16, "blocks": 1, "scale": "exp"},
    ("nice", "image"): {"n_couplings": 4, "hidden": [256, 256]},
}

DEFAULTS: dict[str, Any] = {
    "n_samples": 25000,        # 2-D densities: points generated (then split)
    "data_key": None,          # .npz: which array
    "val_fraction": 0.1,
    "test_fraction": 0.1,
    "preprocess": None,        # images: see TRAIN_DEFAULTS (a config with null: "logit" for realnvp, else "center")
    "logit_alpha": 0.05,
    "optimizer": "adam",
    "lr": None,                # adam 1e-3, adamax 2e-3, sgd 1e-2
    "momentum": 0.9,           # sgd only
    "schedule": "constant",    # or "cosine" (to zero at `steps`)
    "warmup": 0,               # linear warm-up steps
    "batch_size": 128,
    "steps": 2000,             # vectors: see TRAIN_DEFAULTS
    "clip": None,              # max global gradient norm
    "backend": "reference",
    "device": "cpu",
    "dtype": "float64",        # images: see TRAIN_DEFAULTS
    "seed": 0,
    "eval_every": None,        # default: steps // 20 (at least 1)
    "patience": 5,             # early stopping after this many evaluations without improvement; 0: never
    "checkpoint_every": None,  # default: eval_every
    "init_batch": 512,         # rows for data-dependent initialisation (ActNorm)
    "n_bits": None,            # images: model n-bit data (openai/glow's --n_bits_x); None: every level
    "ema": None,               # Polyak averaging: the decay of the parameters' moving average; None: off
    "ycond": False,            # class-conditional: labels from the data (digits; 'y' in a .npz)
    "context": False,          # conditional on a float context ('c' in a .npz; vector models)
    "weight_y": None,          # class-conditional Glow: classifier cross-entropy weight (default 0.01)
}
# Defaults that depend on the kind of data, resolved into config.json by make_config (a run resumed
# later keeps the values it started with; configs written before these existed keep theirs: a null
# preprocess means "logit" for realnvp and "center" otherwise, see `preprocess`).
# * preprocess "logit" for every model: the digits' pixels pile up at 0 and 16, the two ends of
#   [0, 1); the logit's data-dependent Jacobian lets a flow put density there. With the centring
#   (x − ½, a constant Jacobian) NICE cannot at all (2.85 bits/dim at best, a full-covariance Gaussian
#   scores 2.90) and Glow (K=4, L=2, width 32) reached 2.39 against 2.12 with the logit (seed 0,
#   2000 steps; the independent-pixel baseline is 2.41).
# * dtype float32: 1.5–2× faster steps on images; held-out bits/dim equal to float64's to 3e-4
#   (NICE, seed 0). Vectors stay float64: their small steps gain little.
# * vectors: 6000 steps (about 10–35 s on one core): after 2000 the 2-D flows were 0.05–0.14 nats
#   short of where 6000 take them (RealNVP on 8 Gaussians 3.044 → 2.969, true density 2.860).
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"preprocess": "logit", "dtype": "float32"},
    "vector": {"steps": 6000},
}
# Generators are seeded by (seed, purpose), so each purpose draws an independent stream.
SEED_DATA, SEED_SPLIT, SEED_EVAL_NOISE, SEED_TRAIN = 0, 1, 2, 3
# Settings that may change when a run is resumed (they do not alter the trajectory so far).
RESUMABLE_CHANGES = ("steps", "checkpoint_every")


class RunError(ValueError):
    """A run folder, config or data source that cannot be used; the message says why."""


class RunDiverged(RuntimeError):
    """Training hit a NaN/Inf; nothing was written after the last good checkpoint."""


def checkpoint_path(run_dir: str) -> str:
    """The run's checkpoint: ``checkpoint.safetensors``, or a format-1 ``checkpoint.npz`` if only that exists."""
    path = os.path.join(run_dir, CHECKPOINT)
    legacy = os.path.join(run_dir, LEGACY_CHECKPOINT)
    return legacy if not os.path.isfile(path) and os.path.isfile(legacy) else path


def has_checkpoint(run_dir: str) -> bool:
    return os.path.isfile(checkpoint_path(run_dir))


# ---------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    """A split data set. ``kind`` is ``"vector"`` (float rows) or ``"image"`` (integer pixels)."""

    name: str
    kind: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    event_shape: tuple
    n_bins: int | None = None
    data_n_bins: int | None = None   # the data's own levels (differs from n_bins for n-bit data)
    #: conditional runs: the labels (int64, ``(N,)``) or context rows (``(N, K)``) of each split
    train_y: np.ndarray | None = None
    val_y: np.ndarray | None = None
    test_y: np.ndarray | None = None

    @property
    def dims(self) -> int:
        return math.prod(self.event_shape)

    def y(self, split: str) -> np.ndarray | None:
        """The labels / context rows of ``split`` (``None`` for an unconditional run)."""
        return getattr(self, f"{split}_y")


def _split(x: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    order = np.random.default_rng([cfg["seed"], SEED_SPLIT]).permutation(n)
    n_val = _split_size(n, cfg["val_fraction"])
    n_test = _split_size(n, cfg["test_fraction"])
    n_train = n - n_val - n_test
    if n_train < max(2, cfg["batch_size"]):
        raise RunError(f"data: {n} rows leave {n_train} for training after the validation/test splits; "
                       f"need at least the batch size ({cfg['batch_size']}; choose a smaller one)")
    x = x[order]
    return x[:n_train], x[n_train:n_train + n_val], x[n_train + n_val:]


def _split_size(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, int(round(n * fraction)))


def read_array(path: str, key: str | None) -> np.ndarray:
    """The array in a ``.npy`` file, or the one named ``key`` (or the only one) in a ``.npz``; no pickle."""
    return arrayfile.read_array(path, key, owner="data", key_option="--data-key", error=RunError)


def _images(cfg: dict, name: str, images: np.ndarray, n_bins: int) -> Data:
    """Image data, reduced to ``cfg["n_bits"]`` bits when asked (:func:`~rawflow.data.images.reduce_bits`)."""
    from ..data.images import reduce_bits

    n_bits, levels = cfg.get("n_bits"), n_bins
    if n_bits is not None:
        if 2 ** int(n_bits) > n_bins:
            what = "the digits have" if name == "digits" else f"{name} has"
            raise RunError(f"n_bits {n_bits}: {what} {n_bins} grey levels, fewer than 2^{n_bits} = {2 ** int(n_bits)} "
                           f"(n-bit data keep at most the data's levels: use n_bits ≤ {int(math.log2(n_bins))})")
        images, levels = reduce_bits(images, n_bits, n_bins)
    return Data(name, "image", *_split(images, cfg), event_shape=tuple(images.shape[1:]), n_bins=levels,
                data_n_bins=n_bins)


def conditioning(cfg: dict) -> str | None:
    """``"labels"`` (class-conditional), ``"context"`` (float context rows) or ``None``."""
    return "labels" if cfg.get("ycond") else "context" if cfg.get("context") else None


def load_data(cfg: dict) -> Data:
    """The run's data, split into train / validation / test as the config says; a conditional run's
    labels or context rows are split alongside (the same permutation)."""
    data = _load_x(cfg)
    kind = conditioning(cfg)
    if kind is not None:
        y = _load_y(cfg, kind, len(data.train) + len(data.val) + len(data.test))
        data.train_y, data.val_y, data.test_y = _split(y, cfg)
    return data


def _load_y(cfg: dict, kind: str, n: int) -> np.ndarray:
    name = cfg["data"]
    flag = "--ycond" if kind == "labels" else "--context"
    if name == "digits" and kind == "labels":
        from ..data.images import digit_labels

        return digit_labels()
    if not name.endswith(".npz"):
        source = "the digits or a .npz holding 'y'" if kind == "labels" else "a .npz holding 'c'"
        raise RunError(f"data: {flag} needs {kind} with the data: {source}; {name} has none")
    key = "y" if kind == "labels" else "c"
    y = read_array(name, key)
    if kind == "labels":
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise RunError(f"data: {name}: labels 'y' must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
        if y.shape[0] != n:
            raise RunError(f"data: {name}: {y.shape[0]} labels for {n} examples")
        if y.size and y.min() < 0:
            raise RunError(f"data: {name}: labels must be non-negative class indices, got {int(y.min())}")
        return y.astype(np.int64)
    if y.dtype.kind != "f" or y.ndim != 2 or y.shape[1] < 1:
        raise RunError(f"data: {name}: context 'c' must be a 2-D float array (N, K), got {y.dtype} of shape {y.shape}")
    if y.shape[0] != n:
        raise RunError(f"data: {name}: {y.shape[0]} context rows for {n} examples")
    if not np.isfinite(y).all():
        raise RunError(f"data: {name}: context 'c' contains NaN or Inf")
    return y.astype(np.float64)


def _load_x(cfg: dict) -> Data:
    name = cfg["data"]
    if cfg.get("n_bits") is not None and name in DATASETS:
        raise RunError(f"n_bits applies to image data; {name} is a 2-D density")
    if name in DATASETS:
        x = make_2d(name, cfg["n_samples"], np.random.default_rng([cfg["seed"], SEED_DATA]))
        return Data(name, "vector", *_split(x, cfg), event_shape=(2,))
    if name == "digits":
        from ..data.images import digits

        images, n_bins = digits()
        return _images(cfg, name, images, n_bins)
    if not name.endswith((".npy", ".npz")):
        raise RunError(f"data: {name!r} is neither a dataset ({', '.join(sorted(DATASETS))}, digits) "
                       "nor a .npy/.npz file")
    key = cfg.get("data_key") or ("x" if conditioning(cfg) and name.endswith(".npz") else None)
    x = read_array(name, key)
    if x.dtype.kind in "iu" and x.ndim in (3, 4):
        if x.ndim == 3:
            x = x[:, None]
        if x.size == 0 or x.min() < 0:
            raise RunError(f"data: {name}: pixel values must be non-negative integers")
        n_bins = 2 ** max(1, math.ceil(math.log2(int(x.max()) + 1)))
        return _images(cfg, name, x.astype(np.int64), n_bins)
    if cfg.get("n_bits") is not None:
        raise RunError(f"n_bits applies to image data (integer pixels); {name} holds {x.dtype} {x.shape}")
    if x.dtype.kind == "f" and x.ndim == 2:
        if x.shape[1] < 2:
            raise RunError(f"data: {name}: vectors need at least 2 features, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise RunError(f"data: {name} contains NaN or Inf")
        return Data(name, "vector", *_split(x.astype(np.float64), cfg), event_shape=(x.shape[1],))
    raise RunError(f"data: {name}: expected (N, D) floats or (N, C, H, W) / (N, H, W) integer images, "
                   f"got {x.dtype} array of shape {x.shape}")


def load_run_data(cfg: dict) -> Data:
    """The data of an existing run, after checking it is the data the run was trained on: the
    file's SHA-256 (for ``.npy``/``.npz``) and the split sizes."""
    if cfg.get("data_sha256"):
        try:
            digest = file_digest(cfg["data"])
        except OSError as exc:
            raise RunError(f"data {cfg['data']}: unreadable ({exc.strerror or exc})") from None
        if digest != cfg["data_sha256"]:
            raise RunError(f"data {cfg['data']}: the file changed since the run was trained (SHA-256 differs)")
    data = load_data(cfg)
    if [len(data.train), len(data.val), len(data.test)] != cfg["split_sizes"]:
        raise RunError(f"data {cfg['data']}: split sizes changed since the run started")
    return data


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preprocess(cfg: dict) -> str | None:
    if cfg["kind"] != "image":
        return None
    if cfg["preprocess"] is not None:
        return cfg["preprocess"]
    return "logit" if cfg["model"] == "realnvp" else "center"


def to_model_space(cfg: dict, x: np.ndarray) -> np.ndarray:
    """Dequantised pixels in ``[0, 1)`` → the model's input (centred; logit is inside the model)."""
    return x - 0.5 if preprocess(cfg) == "center" else x


def from_model_space(cfg: dict, x):
    """The model's input space → dequantised pixels ``[0, 1)`` (inverse of :func:`to_model_space`)."""
    return x + 0.5 if preprocess(cfg) == "center" else x


def quantize(cfg: dict, x) -> np.ndarray:
    """Model-space images (any shape: elementwise) → integer pixel values ``0 … n_bins − 1`` (clipped)."""
    u = to_numpy(from_model_space(cfg, x))
    return np.clip(np.floor(u * cfg["n_bins"]), 0, cfg["n_bins"] - 1).astype(np.int64)


def eval_inputs(cfg: dict, data: Data, split: str, xp=np):
    """Model inputs for a split (``"train"``, ``"val"``, ``"test"``): images dequantised with noise
    fixed by the seed and the split, so every evaluation of a run sees the same inputs."""
    from ..data.images import dequantize

    x = getattr(data, split)
    if data.kind == "vector":
        return xp.asarray(x.astype(cfg["dtype"]))
    rng = np.random.default_rng([cfg["seed"], SEED_EVAL_NOISE, ("train", "val", "test").index(split)])
    return xp.asarray(to_model_space(cfg, dequantize(x, data.n_bins, rng, cfg["dtype"])))


def eval_labels(cfg: dict, data: Data, split: str, xp=np):
    """The labels (int64, on the host: the model one-hot encodes them in the input's namespace) or
    context rows (``cfg["dtype"]``, in ``xp``) of a split; ``None`` for an unconditional run."""
    y = data.y(split)
    if y is None or conditioning(cfg) == "labels":
        return y
    return xp.asarray(y.astype(cfg["dtype"]))


# --------------------------------------------------------------------------------------- model
def device_namespace(device: str):
    """``numpy`` for ``"cpu"``; ``cupy`` for ``"gpu"``, or :class:`RunError` saying what is missing."""
    if device == "cpu":
        return np
    if device != "gpu":
        raise RunError(f"device must be 'cpu' or 'gpu', got {device!r}")
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise RunError(f"--device gpu needs CuPy and a CUDA GPU (pip install 'rawflow[cuda]'); "
                       f"importing cupy failed: {type(exc).__name__}: {exc}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RunError(f"--device gpu: CuPy finds no usable CUDA device ({type(exc).__name__}: {exc})") from exc
    if count < 1:
        raise RunError("--device gpu: CuPy finds no CUDA device")
    return cupy


def _set_backend(bijector, backend: str) -> None:
    """Give every coupling transform and ActNorm in ``bijector`` the kernel ``backend``.

    Used where an architecture function takes no ``backend=`` argument; it runs right after
    construction, before any parameter exists, so it is part of building the layers.
    """
    for child in getattr(bijector, "layers", []) + getattr(bijector, "levels", []):
        _set_backend(child, backend)
    transform = getattr(bijector, "transform", None)
    if transform is not None and hasattr(transform, "backend"):
        transform.backend = backend
    if hasattr(bijector, "backend") and type(bijector).__name__ == "ActNorm":
        bijector.backend = backend


def _build(fn: Callable, backend: str, *args, **kwargs):
    if "backend" in inspect.signature(fn).parameters:
        return fn(*args, backend=backend, **kwargs)
    flow = fn(*args, **kwargs)
    if backend != "reference":
        _set_backend(flow, backend)
    return flow


def build_model(cfg: dict) -> FlowModel:
    """The run's :class:`FlowModel` (deterministic: fixed buffers come from the config)."""
    try:
        return _build_model(cfg)
    except RunError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RunError(f"cannot build the model from the config ({type(exc).__name__}: {exc})") from exc


def _build_model(cfg: dict) -> FlowModel:
    from ..models import architectures as arch
    from ..bijectors.chain import Chain
    from ..distributions.priors import StandardNormal

    a, model, kind, backend = cfg["arch"], cfg["model"], cfg["kind"], cfg["backend"]
    shape = tuple(cfg["event_shape"])
    cond = conditioning(cfg)
    classes = cfg.get("n_classes") if cond == "labels" else None
    k = classes if cond == "labels" else cfg.get("context_features") if cond == "context" else None
    if kind == "vector":
        d = shape[0]
        if model == "realnvp":
            flow = _build(arch.realnvp, backend, d, a["n_couplings"], tuple(a["hidden"]), a["scale"], a["activation"],
                          context=k)
        elif model == "nice":
            flow = _build(arch.nice, backend, d, a["n_couplings"], tuple(a["hidden"]), a["activation"], context=k)
        else:
            flow = _build(arch.glow_vectors, backend, d, a["K"], tuple(a["hidden"]), a["scale"], a["activation"])
        return FlowModel(flow, StandardNormal((d,)), classes=classes)
    if model == "glow" and classes is not None:
        built = arch.class_conditional_glow(a["K"], a["L"], a["width"], shape, classes, weight_y=cfg["weight_y"],
                                            learn_top=a["learn_top"], split_prior=a.get("split_prior", False),
                                            coupling=a["coupling"], permutation=a["permutation"], scale=a["scale"])
        flow = built.bijector
        if backend != "reference":
            _set_backend(flow, backend)
        if preprocess(cfg) == "logit":
            from ..bijectors.logit import Logit

            flow = Chain([Logit(shape, cfg["logit_alpha"]), flow])
        return FlowModel(flow, built.prior, classes=classes, classifier=built.classifier, weight_y=built.weight_y)
    if model == "glow":
        flow = _build(arch.glow, backend, a["K"], a["L"], a["width"], shape, coupling=a["coupling"],
                      permutation=a["permutation"], scale=a["scale"], learn_top=a["learn_top"],
                      variant=a.get("variant", "rawflow"))
    elif model == "realnvp":
        flow = _build(arch.realnvp_multiscale, backend, a["L"], a["width"], shape, blocks=a["blocks"],
                      scale=a["scale"])
    else:
        flow = _build(arch.nice_images, backend, shape, a["n_couplings"], tuple(a["hidden"]))
    if preprocess(cfg) == "logit":
        from ..bijectors.logit import Logit

        flow = Chain([Logit(shape, cfg["logit_alpha"]), flow])
    return FlowModel(flow, StandardNormal((math.prod(shape),)))


def make_optimizer(cfg: dict):
    from ..training.optim import SGD, Adam, Adamax

    lr0, steps, warmup, cosine = cfg["lr"], cfg["steps"], cfg["warmup"], cfg["schedule"] == "cosine"

    def lr(t: int) -> float:  # t: 1-based step
        factor = min(1.0, t / warmup) if warmup else 1.0
        if cosine:
            factor *= 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        return lr0 * factor

    if cfg["optimizer"] == "adam":
        opt = Adam(lr)
    elif cfg["optimizer"] == "adamax":
        opt = Adamax(lr)
    else:
        opt = SGD(lr, momentum=cfg["momentum"])
    if cfg.get("ema") is not None:  # runs written before Polyak averaging have no "ema" key
        from ..training.ema import EMA

        return EMA(opt, cfg["ema"])
    return opt


def eval_params(cfg: dict, st: "TrainState") -> dict:
    """The parameters a run validates and reports with: the moving average when it keeps one."""
    return st.opt_state["ema"] if cfg.get("ema") is not None else st.params


# -------------------------------------------------------------------------------------- config
def make_config(options: dict, flags: dict[str, str] | None = None) -> dict:
    """A complete run config from user options (``None`` = default), validated; data inspected.

    ``options`` holds ``model``, ``data`` and any of :data:`DEFAULTS`, plus ``arch`` (a dict of
    architecture overrides). Options left ``None`` take :data:`TRAIN_DEFAULTS` for the data's kind,
    else :data:`DEFAULTS`; every value is resolved into the returned config (so a resumed run keeps
    it). ``patience`` 0 means no early stopping. Raises :class:`RunError` with a readable message,
    naming architecture keys as ``flags`` maps them (e.g. ``{"n_couplings": "--couplings"}``).
    """
    flags = flags or {}
    cfg = {k: (options[k] if options.get(k) is not None else v) for k, v in DEFAULTS.items()}
    if cfg["patience"] == 0 or (options.get("patience") is None and cfg["val_fraction"] == 0):
        cfg["patience"] = None  # 0: never stop early; no validation split: nothing to stop on
    cfg["model"], cfg["data"] = options["model"], options["data"]
    if cfg["model"] not in MODELS:
        raise RunError(f"model must be one of {', '.join(MODELS)}, got {cfg['model']!r}")
    for key, allowed in (("optimizer", OPTIMIZERS), ("backend", BACKENDS), ("dtype", DTYPES),
                         ("schedule", ("constant", "cosine")), ("device", ("cpu", "gpu"))):
        if cfg[key] not in allowed:
            raise RunError(f"{key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    if cfg["preprocess"] not in (None, "center", "logit"):
        raise RunError(f"preprocess must be 'center' or 'logit', got {cfg['preprocess']!r}")
    if not (0 <= cfg["val_fraction"] < 1 and 0 <= cfg["test_fraction"] < 1
            and cfg["val_fraction"] + cfg["test_fraction"] < 1):
        raise RunError("val/test fractions must lie in [0, 1) and sum to less than 1")
    if cfg["backend"] == "numba" and cfg["device"] == "gpu":
        raise RunError("backend numba runs on the CPU; use --backend auto (or reference) with --device gpu")
    if cfg["patience"] is not None and cfg["val_fraction"] == 0:
        raise RunError("early stopping (patience) needs a validation split (val fraction > 0)")
    if not 0 <= cfg["logit_alpha"] < 0.5:
        raise RunError(f"logit alpha must lie in [0, 0.5), got {cfg['logit_alpha']}")
    if cfg["lr"] is None:
        cfg["lr"] = {"adam": 1e-3, "adamax": 2e-3, "sgd": 1e-2}[cfg["optimizer"]]
    if not (cfg["lr"] > 0 and math.isfinite(cfg["lr"])):
        raise RunError(f"lr must be positive and finite, got {cfg['lr']}")
    if cfg["clip"] is not None and not (cfg["clip"] > 0 and math.isfinite(cfg["clip"])):
        raise RunError(f"clip must be positive and finite, got {cfg['clip']}")
    if cfg["ema"] is not None and not (isinstance(cfg["ema"], (int, float)) and 0 < cfg["ema"] < 1):
        raise RunError(f"ema (the moving average's decay) must lie in (0, 1), got {cfg['ema']!r}")
    if cfg["n_bits"] is not None and not (isinstance(cfg["n_bits"], int) and not isinstance(cfg["n_bits"], bool)
                                          and cfg["n_bits"] >= 1):
        raise RunError(f"n_bits must be a positive integer, got {cfg['n_bits']!r}")
    if not 0 <= cfg["momentum"] < 1:
        raise RunError(f"momentum must lie in [0, 1), got {cfg['momentum']}")
    name = cfg["data"]
    if name not in DATASETS and name != "digits":
        cfg["data"] = name = os.path.abspath(name)
    try:
        sizes.check_request(cfg)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if cfg["ycond"] and cfg["context"]:
        raise RunError("--ycond (class labels) and --context (float context rows) exclude each other")
    data = load_data(cfg)
    cfg["kind"], cfg["event_shape"], cfg["n_bins"] = data.kind, list(data.event_shape), data.n_bins
    for key, value in TRAIN_DEFAULTS[data.kind].items():
        if options.get(key) is None:
            cfg[key] = value
    if cfg["eval_every"] is None:
        cfg["eval_every"] = max(1, cfg["steps"] // 20)
    if cfg["checkpoint_every"] is None:
        cfg["checkpoint_every"] = cfg["eval_every"]
    if cfg["n_bits"] is not None:
        cfg["data_n_bins"] = data.data_n_bins
    _conditioning_config(cfg, data)
    cfg["split_sizes"] = [len(data.train), len(data.val), len(data.test)]
    if name.endswith((".npy", ".npz")):
        cfg["data_sha256"] = file_digest(name)
    key = (cfg["model"], data.kind)
    if key not in ARCH_DEFAULTS:
        raise RunError(f"model {cfg['model']!r} needs image data (N, C, H, W); {name} holds vectors")
    arch = dict(ARCH_DEFAULTS[key])
    unknown = set(options.get("arch") or {}) - set(arch)
    if unknown:
        raise RunError(f"{', '.join(flags.get(k, k) for k in sorted(unknown))} do(es) not apply to {cfg['model']} "
                       f"on {data.kind} data (it takes {', '.join(flags.get(k, k) for k in sorted(arch))})")
    arch.update(options.get("arch") or {})
    if arch.get("variant") == "openai":
        if "permutation" not in (options.get("arch") or {}):
            arch["permutation"] = "dense"  # the reference's invertible 1×1 convolution
        if cfg["backend"] == "numba":
            raise RunError("backend numba: the openai variant's layers have no fused kernels; use --backend reference")
        if cfg["ycond"]:
            # class_conditional_glow is built from rawflow's layers; mixing in openai's would be a
            # third model nobody has run, so the combination is refused rather than half-honoured
            raise RunError("--variant openai with --ycond: the class-conditional Glow is built from rawflow's "
                           "layers (its GlowTop prior is openai's --ycond top); use --variant rawflow")
    cfg["arch"] = arch
    if arch.get("split_prior") and not cfg["ycond"]:
        raise RunError(f"{flags.get('split_prior', 'split_prior')} conditions the split priors on the class: it needs --ycond")
    if options.get("preprocess") is not None and data.kind != "image":
        raise RunError("preprocess applies to image data only")
    cfg["format"], cfg["rawflow_version"] = RUN_FORMAT, __version__
    try:
        sizes.check_model(cfg)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    build_model(cfg)
    return cfg


def _conditioning_config(cfg: dict, data: Data) -> None:
    """Check a conditional run's options against its data; record ``n_classes`` / ``context_features``
    and ``weight_y``."""
    cond, model = conditioning(cfg), cfg["model"]
    if cond is not None and data.kind == "vector" and model == "glow":
        flag = "--ycond" if cond == "labels" else "--context"
        raise RunError(f"{flag} on vectors conditions the couplings of realnvp or nice; glow on vectors "
                       "(glow_vectors) takes no context")
    if cond == "labels":
        if data.kind == "image" and model != "glow":
            raise RunError(f"--ycond on images is openai/glow's class-conditional Glow: use --model glow, not {model}")
        labels = np.concatenate([data.train_y, data.val_y, data.test_y])
        cfg["n_classes"] = int(labels.max()) + 1 if labels.size else 0
        if cfg["n_classes"] < 2:
            raise RunError(f"data: --ycond needs at least 2 classes, the labels hold {cfg['n_classes']}")
    elif cond == "context":
        if data.kind != "vector":
            raise RunError("--context conditions the couplings of vector models (realnvp, nice); "
                           "for images use --ycond with --model glow")
        cfg["context_features"] = int(data.train_y.shape[1])
    head = cond == "labels" and model == "glow"
    if cfg["weight_y"] is None:
        cfg["weight_y"] = 0.01 if head else 0.0  # openai/glow's conditional examples: --ycond --weight_y=0.01
    if not (isinstance(cfg["weight_y"], (int, float)) and math.isfinite(cfg["weight_y"]) and cfg["weight_y"] >= 0):
        raise RunError(f"weight_y must be a finite number ≥ 0, got {cfg['weight_y']!r}")
    if cfg["weight_y"] > 0 and not head:
        raise RunError("--weight-y weighs the classifier head of a class-conditional Glow: it needs --model glow "
                       "--ycond")


write_json = files.write_json  # atomic, strict JSON (NaN/Inf written as null)


def read_config(run_dir: str) -> dict:
    """The run's config after checking every key's presence, type and range (:mod:`.schema`)."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        raise RunError(f"{run_dir}: not a rawflow run folder (no {CONFIG})")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not a rawflow run config")
    try:
        schema.check_config(cfg, path)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return cfg


# --------------------------------------------------------------------------------------- state
@dataclasses.dataclass
class TrainState:
    """Everything a run needs to continue: saved and restored by :func:`save_state`/:func:`load_state`."""

    step: int
    params: dict
    opt_state: dict
    rng: np.random.Generator
    loader: EpochLoader
    losses: list
    val_steps: list
    val_nll: list
    best: dict | None = None
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped: str | None = None


def _to_host(t: dict) -> dict:
    return _tree.map(to_numpy, t)


def save_state(path: str, cfg: dict, st: TrainState) -> None:
    trees = {
        "params": _to_host(st.params),
        "optimizer": _to_host(st.opt_state),
        "history": {"loss": np.asarray(st.losses, dtype=np.float64),
                    "val_step": np.asarray(st.val_steps, dtype=np.int64),
                    "val_nll": np.asarray(st.val_nll, dtype=np.float64)},
    }
    if st.best is not None:
        trees["best"] = _to_host(st.best)
    if st.loader.order is not None:
        trees["loader"] = {"order": np.asarray(st.loader.order, dtype=np.int64)}
    meta = {"run": cfg, "rng": st.rng.bit_generator.state, "loader_pos": st.loader.pos,
            "best_val": st.best_val, "best_step": st.best_step, "bad_evals": st.bad_evals, "stopped": st.stopped}
    save_checkpoint(path, trees, meta, st.step)


def _same_run(saved: dict, cfg: dict) -> list[str]:
    keys = (set(saved) | set(cfg)) - set(RESUMABLE_CHANGES) - {"rawflow_version"}
    return sorted(k for k in keys if saved.get(k) != cfg.get(k))


def load_state(path: str, cfg: dict, model: FlowModel, xp=np) -> TrainState:
    """Read a training checkpoint, check it belongs to this run and model; arrays go to ``xp``."""
    ck = load_checkpoint(path, max_bytes=sizes.checkpoint_limit())
    meta = ck["config"]
    missing = [s for s in ("params", "optimizer", "history") if s not in ck]
    if missing or not isinstance(meta, dict) or not isinstance(meta.get("run"), dict) or "rng" not in meta:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint "
                              f"(missing {', '.join(missing) or 'the run state'})")
    differ = _same_run(meta["run"], cfg)
    if differ:
        raise CheckpointError(f"checkpoint {path}: written by a different run configuration "
                              f"(differs in {', '.join(differ)})")
    reference = reference_params(cfg, model, xp)
    try:
        params = _checked(path, "params", ck["params"], reference, xp)
        best = _checked(path, "best", ck["best"], reference, xp) if "best" in ck else None
        opt = ck["optimizer"]
        slots = make_optimizer(cfg).init(reference)
        if set(opt) != set(slots):
            raise CheckpointError(f"checkpoint {path}: optimiser state has {sorted(opt)}, "
                                  f"{cfg['optimizer']} needs {sorted(slots)}")
        opt_state = {k: _checked(path, f"optimizer/{k}", v, reference, xp) for k, v in opt.items() if k != "step"}
        opt_state["step"] = np.asarray(opt["step"], dtype=np.int64)
        if opt_state["step"].shape != () or int(opt_state["step"]) != ck["step"]:
            raise CheckpointError(f"checkpoint {path}: optimiser step does not match the checkpoint step")
        history = ck["history"]
        losses = [float(v) for v in history["loss"]]
        if len(losses) != ck["step"]:
            raise CheckpointError(f"checkpoint {path}: {len(losses)} losses recorded for step {ck['step']}")
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        order = ck["loader"]["order"] if "loader" in ck else None
        loader = EpochLoader(int(cfg["split_sizes"][0]), cfg["batch_size"], order,
                             meta["loader_pos"] if order is not None else None)
        return TrainState(
            step=int(ck["step"]), params=params, opt_state=opt_state, rng=rng, loader=loader, losses=losses,
            val_steps=[int(v) for v in history["val_step"]], val_nll=[float(v) for v in history["val_nll"]],
            best=best, best_val=meta["best_val"], best_step=int(meta["best_step"]),
            bad_evals=int(meta["bad_evals"]), stopped=meta["stopped"],
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path}: inconsistent training state ({type(exc).__name__}: {exc})") from exc


def reference_params(cfg: dict, model: FlowModel, xp=np) -> dict:
    """Parameters initialised on a small synthetic batch: the structure and dtypes a checkpoint must have."""
    shape = (4, *cfg["event_shape"])
    # Values in [0.25, 0.75) are valid inputs in every model space (centred images, logit, vectors).
    x = np.random.default_rng(0).uniform(0.25, 0.75, size=shape).astype(cfg["dtype"])
    cond = conditioning(cfg)
    y = (np.zeros(4, dtype=np.int64) if cond == "labels"
         else xp.zeros((4, cfg["context_features"]), dtype=cfg["dtype"]) if cond == "context" else None)
    return model.init(np.random.default_rng(0), xp.asarray(x), y)


#: which parameters of a run :func:`load_params` returns (``sample``/``interpolate``/``eval --params``)
PARAM_CHOICES = ("best", "ema", "raw")


def load_params(run_dir: str, xp=None, which: str = "best") -> tuple[dict, FlowModel, dict, int]:
    """``(params, model, cfg, step)`` of a run.

    ``which``: ``"best"`` (default) the parameters the run selected — best validation, else the
    latest; in a run with Polyak averaging both are averaged parameters (:func:`eval_params`);
    ``"ema"`` the latest moving average (a run trained with ``ema`` only); ``"raw"`` the optimiser's
    latest parameters.
    """
    if which not in PARAM_CHOICES:
        raise RunError(f"params must be one of {', '.join(PARAM_CHOICES)}, got {which!r}")
    cfg = read_config(run_dir)
    if which == "ema" and cfg.get("ema") is None:
        raise RunError(f"{run_dir}: the run keeps no moving average of its parameters (trained without --ema); "
                       "use --params best or raw")
    xp = device_namespace(cfg["device"]) if xp is None else xp
    model = build_model(cfg)
    path = checkpoint_path(run_dir)
    ck = load_checkpoint(path, max_bytes=sizes.checkpoint_limit())
    meta = ck["config"]
    if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict) or _same_run(meta["run"], cfg):
        raise CheckpointError(f"checkpoint {path}: does not belong to the run described by {CONFIG}")
    averaged = which == "ema" or (which == "best" and "best" not in ck and cfg.get("ema") is not None)
    section = "best" if which == "best" and "best" in ck else "params"
    if averaged:
        tree_ = ck.get("optimizer", {}).get("ema") if isinstance(ck.get("optimizer"), dict) else None
        if tree_ is None:
            raise CheckpointError(f"checkpoint {path}: holds no moving average although the run keeps one")
        section, found = "optimizer/ema", tree_
    else:
        if section not in ck:
            raise CheckpointError(f"checkpoint {path}: holds no parameters")
        found = ck[section]
    params = _checked(path, section, found, reference_params(cfg, model, xp), xp)
    step = meta.get("best_step") if section == "best" else ck["step"]
    return params, model, cfg, int(step if isinstance(step, int) and not isinstance(step, bool) else ck["step"])


def _checked(path: str, name: str, t: dict, reference: dict, xp) -> dict:
    """``t`` moved to ``xp`` after checking it has ``reference``'s leaves, shapes and dtypes."""
    want = {p: (tuple(a.shape), np.dtype(a.dtype).str) for p, a in _tree.leaves(reference)}
    have = {p: (tuple(a.shape), a.dtype.str) for p, a in _tree.leaves(t)}
    if have != want:
        diff = sorted(set(have.items()) ^ set(want.items()))[:2]
        raise CheckpointError(f"checkpoint {path}: '{name}' does not match the model (e.g. {diff})")
    return _shaped_like(reference, t, xp)


def _shaped_like(reference: dict, t: dict, xp) -> dict:
    """``t``'s leaves in ``reference``'s tree, restoring empty subtrees (a file stores leaves only)."""
    return {k: _shaped_like(v, t.get(k, {}), xp) if isinstance(v, dict) else xp.asarray(t[k])
            for k, v in reference.items()}


# ------------------------------------------------------------------------------------ training
def _host_batches(cfg: dict, data: Data, xp):
    """``(train_array, batch_fn)`` for :func:`rawflow.training.loop.train`."""
    if data.kind == "vector":
        return xp.asarray(data.train.astype(cfg["dtype"])), None
    from ..data.images import dequantize

    def batch_fn(rows, rng):  # fresh dequantisation noise every batch, drawn from the run's generator
        return xp.asarray(to_model_space(cfg, dequantize(rows, data.n_bins, rng, cfg["dtype"])))

    return data.train, batch_fn


def init_state(cfg: dict, model: FlowModel, data: Data, xp=np) -> TrainState:
    rng = np.random.default_rng([cfg["seed"], SEED_TRAIN])
    train_x, batch_fn = _host_batches(cfg, data, xp)
    n = min(cfg["init_batch"], len(data.train))
    first = train_x[:n] if batch_fn is None else batch_fn(data.train[:n], rng)
    y = eval_labels(cfg, data, "train", xp)
    params = model.init(rng, first, None if y is None else y[:n])
    return TrainState(step=0, params=params, opt_state=make_optimizer(cfg).init(params), rng=rng,
                      loader=EpochLoader(len(data.train), cfg["batch_size"]), losses=[], val_steps=[], val_nll=[])


def held_out_metrics(cfg: dict, model: FlowModel, params: dict, data: Data, split: str = "test", xp=np,
                     prefix: str | None = None, comm: Communicator | None = None) -> dict:
    """NLL (nats per example) on a split, with bits/dim and baselines where they apply.

    Keys are prefixed with ``prefix`` (default ``"<split>_"``): ``nll``, ``n``; images add
    ``bits_per_dim`` and ``baseline_bits_per_dim`` (independent pixels fitted to the training split);
    vectors add ``gaussian_nll`` (full-covariance Gaussian fitted to the training split) and, for
    the densities in :data:`~rawflow.data.datasets.TRUE_LOG_PROB` (8 Gaussians, checkerboard),
    ``true_nll`` (the closed-form density on the same points). Images also give the ``n_bins`` the
    bits/dim use, and for ``n``-bit data ``n_bits`` and ``bits_per_dim_note`` (not comparable with
    the full data's figures). With ``comm`` the NLL
    is evaluated in shares across the ranks (:func:`rawflow.training.loop.evaluate_nll`).
    """
    rows = getattr(data, split)
    if len(rows) == 0:
        return {}
    p = f"{split}_" if prefix is None else prefix
    x, y = eval_inputs(cfg, data, split, xp), eval_labels(cfg, data, split, xp)
    nll = evaluate_nll(model, params, x, batch_size=1024, comm=comm, y=y)
    out: dict[str, Any] = {f"{p}nll": nll, f"{p}n": int(len(rows))}
    if conditioning(cfg) == "labels":
        out.update(class_metrics(model, params, x, y, p))
    if data.kind == "image":
        from ..data.images import bits_per_dim, independent_pixel_baseline

        from ..data.images import n_bits_note

        out[f"{p}bits_per_dim"] = bits_per_dim(nll, data.dims, data.n_bins)
        if f"{p}marginal_nll" in out:
            out[f"{p}marginal_bits_per_dim"] = bits_per_dim(out[f"{p}marginal_nll"], data.dims, data.n_bins)
        out[f"{p}baseline_bits_per_dim"] = independent_pixel_baseline(data.train, rows, data.n_bins)
        out[f"{p}n_bins"] = int(data.n_bins)
        if cfg.get("n_bits") is not None:
            out[f"{p}n_bits"] = int(cfg["n_bits"])
            out[f"{p}bits_per_dim_note"] = n_bits_note(cfg["n_bits"], data.data_n_bins or cfg.get("data_n_bins"))
    else:
        value, why = gaussian_baseline(data.train, rows)
        out[f"{p}gaussian_nll"] = value
        if why:
            out[f"{p}gaussian_note"] = why
        if data.name in TRUE_LOG_PROB:
            out[f"{p}true_nll"] = float(-TRUE_LOG_PROB[data.name](rows).mean())
    return out


def class_metrics(model: FlowModel, params: dict, x, y: np.ndarray, prefix: str = "", batch_size: int = 1024) -> dict:
    """What a class-conditional model says about held-out ``(x, y)``, besides ``−log p(x | y)``:

    * ``marginal_nll``: ``−log p(x)`` with the labels unknown, ``p(x) = (1/K) Σ_k p(x | k)`` (a
      uniform class prior), comparable with an unconditional model's NLL;
    * ``bayes_accuracy``: how often ``argmax_k p(x | k)`` is the label (the flow as a classifier);
    * ``classifier_accuracy``: the same for openai's classifier head, when the model has one.
    """
    k = model.classes
    marginal, bayes, head = 0.0, 0, 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        per_class = to_numpy(model.log_prob_per_class(params, xb)).astype(np.float64)  # (B, K)
        top = per_class.max(axis=1, keepdims=True)
        lse = np.log(np.exp(per_class - top).sum(axis=1)) + top[:, 0]
        marginal += float((lse - math.log(k)).sum())
        bayes += int((per_class.argmax(axis=1) == yb).sum())
        if model.classifier is not None:
            logits = to_numpy(model.classifier_logits(params, xb, yb))
            head += int((logits.argmax(axis=1) == yb).sum())
    n = x.shape[0]
    out = {f"{prefix}marginal_nll": -marginal / n, f"{prefix}bayes_accuracy": bayes / n, f"{prefix}classes": k}
    if model.classifier is not None:
        out[f"{prefix}classifier_accuracy"] = head / n
    return out


def gaussian_baseline(train_rows: np.ndarray, rows: np.ndarray) -> tuple[float | None, str | None]:
    """``(held-out NLL of the full-covariance Gaussian, None)``, or ``(None, why)`` when the training
    data's covariance is singular (constant or collinear features: no Gaussian density exists)."""
    x = np.asarray(train_rows, dtype=np.float64)
    centred = x - x.mean(axis=0)
    eig = np.linalg.eigvalsh(centred.T @ centred / len(x))
    d = x.shape[1]
    if not eig.max() > 0 or eig.min() <= d * np.finfo(np.float64).eps * eig.max():
        rank = int((eig > d * np.finfo(np.float64).eps * max(eig.max(), 0.0)).sum())
        return None, (f"singular covariance (rank {rank} of {d}): the training data are constant or collinear "
                      "along some direction, so no full-covariance Gaussian density exists")
    return gaussian_baseline_nll(train_rows, rows), None


def check_launch(cfg: dict, out: str, resume: bool, comm: Communicator | None) -> None:
    """Under ``mpiexec``: every rank was started with the same run, and its batch splits evenly over
    the ranks (:class:`RunError` on every rank otherwise). Nothing is read or written."""
    processes = 1 if comm is None else comm.size
    agree(comm, "run configurations", {**cfg, "resume": resume, "out": os.path.abspath(out)})
    if cfg["batch_size"] % processes:
        raise RunError(f"batch size {cfg['batch_size']} is not divisible by the {processes} processes: each takes an "
                       f"equal share of every batch (use a multiple of {processes})")


def run_training(
    cfg: dict,
    out: str,
    *,
    resume: bool = False,
    quiet: bool = False,
    desc: str = "train",
    hook: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
    comm: Communicator | None = None,
) -> dict:
    """Train (or resume) the run in ``out``; returns its metrics (also written to ``metrics.json``).

    ``hook(step, loss)`` runs after every optimiser step (global 1-based step). Raises
    :class:`RunDiverged` on a NaN/Inf loss (no file is written after the last good checkpoint),
    :class:`~rawflow.training.checkpoint.CheckpointError` for an unusable checkpoint, :class:`RunError`.

    ``comm``: train data parallel over its ranks (call this on every rank with the same ``cfg``);
    only rank 0 writes files or logs. Ranks launched with different configs raise
    :class:`~rawflow.distributed.comm.ReplicaDivergence` before anything is written.
    """
    import time

    writer = comm is None or comm.rank == 0
    quiet = quiet or not writer
    processes = 1 if comm is None else comm.size
    check_launch(cfg, out, resume, comm)

    def prepare():  # each rank reads the data (and the checkpoint) itself: a failure on one fails all
        xp = device_namespace(cfg["device"])
        data = load_run_data(cfg)
        model = build_model(cfg)
        return xp, data, model, load_state(checkpoint_path(out), cfg, model, xp) if resume else init_state(cfg, model, data, xp)

    ckpt = os.path.join(out, CHECKPOINT)
    xp, data, model, st = together(comm, prepare, (RunError, CheckpointError))
    if writer:
        os.makedirs(out, exist_ok=True)
    if resume:
        if st.step >= cfg["steps"] or st.stopped is not None:  # the same on every rank: read from the checkpoint
            done = _finished(cfg, st, out) if writer else {}
            if not quiet:
                log(f"{out}: the run already finished at step {st.step} "
                    f"({st.stopped or 'all ' + str(cfg['steps']) + ' steps'}); nothing to do "
                    "(raise --steps to train further)")
            return done
        if not quiet:
            log(f"resuming {out} at step {st.step}")
    if writer:
        write_json(os.path.join(out, CONFIG), cfg)

    optimizer = make_optimizer(cfg)
    train_x, batch_fn = _host_batches(cfg, data, xp)
    train_y = eval_labels(cfg, data, "train", xp)
    val_x = eval_inputs(cfg, data, "val", xp) if len(data.val) else None
    val_y = eval_labels(cfg, data, "val", xp) if len(data.val) else None
    steps, every_eval, every_ckpt = cfg["steps"], cfg["eval_every"], cfg["checkpoint_every"]
    bar = _bar(steps, st.step, desc) if not quiet else None
    start, first_step = time.perf_counter(), st.step

    def on_step(t: int, loss: float) -> None:  # t counts from 1 within each train() call
        if bar is not None:
            bar.update(1)
            if t % 10 == 1:
                bar.set_postfix_str(f"loss {loss:.4f}" + (f", val {st.val_nll[-1]:.4f}" if st.val_nll else ""))
        if hook is not None:
            hook(st.step + t, loss)

    try:
        # Overflow warnings are noise here: a NaN/Inf loss is caught and reported as RunDiverged.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while st.step < steps and st.stopped is None:
                target = min(steps, _next_multiple(st.step, every_eval), _next_multiple(st.step, every_ckpt))
                _advance(cfg, model, optimizer, st, target, train_x, batch_fn, on_step, ckpt, comm, train_y)
                if val_x is not None and (st.step % every_eval == 0 or st.step == steps):
                    try:
                        _evaluate(cfg, model, st, val_x, comm, val_y)
                    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
                        # the last update made parameters a layer refuses (an LU factor overflowed)
                        raise _diverged(st.step, f"the updated parameters are unusable ({exc})", ckpt) from exc
                if writer and (st.step % every_ckpt == 0 or st.step == steps or st.stopped is not None):
                    save_state(ckpt, cfg, st)
                    _drop_legacy_checkpoint(out)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    if st.stopped and not quiet:
        log(st.stopped)
    final = st.best if st.best is not None else eval_params(cfg, st)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        held_out = held_out_metrics(cfg, model, final, data, "test", xp, comm=comm)
        held_out.update(_raw_metrics(cfg, model, st, data, xp, comm))
    metrics = {
        "model": cfg["model"], "data": cfg["data"], "steps": st.step, "seed": cfg["seed"],
        "best_step": st.best_step if st.best is not None else st.step,
        "stopped": st.stopped, "final_batch_loss": st.losses[-1] if st.losses else None,
        "best_val_nll": st.best_val, **held_out,
        "started_at_step": first_step, "train_time_s": elapsed, "processes": processes,
        "rawflow_version": __version__,
    }
    if not writer:
        return metrics
    write_json(os.path.join(out, METRICS), metrics)
    _plot_losses(cfg, data, out, st)
    return metrics


def _finished(cfg: dict, st: TrainState, out: str) -> dict:
    """The metrics of a resumed run that has nothing left to do.

    A finished run's ``metrics.json`` is returned as it is (its ``train_time_s`` is the training's,
    not this call's); if the run stopped before writing it, it is written now.
    """
    path = os.path.join(out, METRICS)
    try:
        with open(path) as f:
            metrics = json.load(f)
        if isinstance(metrics, dict) and metrics.get("steps") == st.step:
            return metrics
    except (OSError, ValueError):
        pass
    return _final_metrics_only(cfg, st, out)


def _final_metrics_only(cfg: dict, st: TrainState, out: str) -> dict:
    data, model, xp = load_run_data(cfg), build_model(cfg), device_namespace(cfg["device"])
    final = st.best if st.best is not None else eval_params(cfg, st)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        held_out = held_out_metrics(cfg, model, final, data, "test", xp)
        held_out.update(_raw_metrics(cfg, model, st, data, xp))
    metrics = {"model": cfg["model"], "data": cfg["data"], "steps": st.step, "seed": cfg["seed"],
               "best_step": st.best_step if st.best is not None else st.step, "stopped": st.stopped,
               "final_batch_loss": st.losses[-1] if st.losses else None, "best_val_nll": st.best_val, **held_out,
               "started_at_step": st.step, "train_time_s": None, "rawflow_version": __version__}
    write_json(os.path.join(out, METRICS), metrics)
    _plot_losses(cfg, data, out, st)
    return metrics


def _raw_metrics(cfg: dict, model: FlowModel, st: TrainState, data: Data, xp, comm=None) -> dict:
    """A run with a moving average: what it reports (``ema``, ``evaluated``) and the test figures of
    the latest raw parameters beside the averaged ones (``raw_test_*``); nothing otherwise."""
    if cfg.get("ema") is None:
        return {}
    raw = held_out_metrics(cfg, model, st.params, data, "test", xp, prefix="raw_test_", comm=comm)
    keep = ("raw_test_nll", "raw_test_bits_per_dim")
    return {"ema": cfg["ema"], "evaluated": "ema", **{k: raw[k] for k in keep if k in raw}}


def _plot_losses(cfg: dict, data: Data, out: str, st: TrainState) -> None:
    """``loss.png``: nats per example for vectors, bits/dim for images (as the metrics report them)."""
    try:
        from .plots import loss_curve
    except ImportError:
        return
    losses, val = np.asarray(st.losses, dtype=float), np.asarray(st.val_nll, dtype=float)
    title = f"{SYSTEM_NAMES[cfg['model']]} on {os.path.basename(data.name)}"
    if data.kind == "image":
        from ..data.images import bits_per_dim

        losses = np.asarray([bits_per_dim(v, data.dims, data.n_bins) for v in losses])
        val = np.asarray([bits_per_dim(v, data.dims, data.n_bins) for v in val])
        label = "bits/dim" if cfg.get("n_bits") is None else f"bits/dim ({cfg['n_bits']}-bit data)"
        loss_curve(os.path.join(out, "loss.png"), losses, st.val_steps, val, ylabel=label, title=title)
    else:
        loss_curve(os.path.join(out, "loss.png"), losses, st.val_steps, val, title=title)


def _drop_legacy_checkpoint(out: str) -> None:
    """After the first format-2 save of a resumed format-1 run, its superseded ``checkpoint.npz`` goes."""
    legacy = os.path.join(out, LEGACY_CHECKPOINT)
    if os.path.isfile(legacy) and os.path.isfile(os.path.join(out, CHECKPOINT)):
        os.unlink(legacy)


def _advance(cfg, model, optimizer, st: TrainState, target: int, train_x, batch_fn, on_step, ckpt: str,
             comm: Communicator | None = None, train_y=None) -> None:
    """Train from ``st.step`` to ``target`` and update ``st``; :class:`RunDiverged` leaves ``st`` as it was."""
    try:
        params, opt_state, losses = train(
            model, st.params, train_x, optimizer, target - st.step, cfg["batch_size"], st.rng,
            opt_state=st.opt_state, max_grad_norm=cfg["clip"], callback=on_step, loader=st.loader,
            batch_fn=batch_fn, comm=comm, y=train_y,
        )
    except TrainingDiverged as err:
        if err.__cause__ is not None:
            what = f"the updated parameters are unusable ({err.__cause__})"
        else:
            what = (f"non-finite {'loss' if not math.isfinite(err.loss) else 'gradient'} "
                    f"(loss {err.loss}, gradient norm {err.grad_norm})")
        raise _diverged(st.step + err.step, what, ckpt) from err
    st.params, st.opt_state, st.step = params, opt_state, target
    st.losses.extend(float(v) for v in losses)


def _diverged(step: int, what: str, ckpt: str) -> RunDiverged:
    saved = checkpoint_path(os.path.dirname(ckpt))
    last = f"{saved}, step {_saved_step(saved)}" if os.path.isfile(saved) else "none written yet"
    return RunDiverged(
        f"diverged at step {step}: {what}; training stopped and nothing was written after "
        f"the last good checkpoint ({last}). Try a smaller --lr, --clip or --scale bounded.")


def _saved_step(path: str) -> str:
    try:
        return str(load_checkpoint(path)["step"])
    except CheckpointError:
        return "?"


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _evaluate(cfg: dict, model: FlowModel, st: TrainState, val_x, comm: Communicator | None = None,
              val_y=None) -> None:
    params = eval_params(cfg, st)
    nll = evaluate_nll(model, params, val_x, batch_size=1024, comm=comm, y=val_y)
    st.val_steps.append(st.step)
    st.val_nll.append(nll)
    if not math.isfinite(nll):
        st.bad_evals += 1
    elif st.best_val is None or nll < st.best_val:
        st.best, st.best_val, st.best_step, st.bad_evals = params, nll, st.step, 0
    else:
        st.bad_evals += 1
    patience = cfg["patience"]
    if patience is not None and st.bad_evals >= patience and st.step < cfg["steps"]:
        st.stopped = (f"early stopping at step {st.step}: validation NLL has not improved for {patience} "
                      f"evaluations (best {st.best_val:.4f} at step {st.best_step})")


def _bar(total: int, initial: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
