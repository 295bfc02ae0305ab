"""The schema of a run's ``config.json``: every key, its type and range, checked before a run is used.

A config is written by :func:`rawflow.app.runs.make_config`, but the file is the user's: it can be
edited, truncated or written by another version. :func:`check_config` turns every way it can be
wrong into one :class:`ValueError` message naming the file, the key and what was expected, so
``--resume``, ``sample``, ``interpolate`` and ``eval`` never fail later with a ``KeyError`` or
``TypeError`` from deep inside.
"""

from __future__ import annotations

import math
from typing import Any, Callable


def _int(lo: int | None = None, *, null: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return "an integer" + (" or null" if null else "")
        if lo is not None and v < lo:
            return f"an integer ≥ {lo}"
        return None
    return check


def _num(lo: float, hi: float, *, null: bool = False, lo_open: bool = False, hi_open: bool = True):
    def check(v):
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            return f"a finite number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}" \
                + (" or null" if null else "")
        return None
    return check


def _choice(*allowed):
    def check(v):
        return None if v in allowed else "one of " + ", ".join(repr(a) for a in allowed)
    return check


def _str(null: bool = False):
    def check(v):
        return None if isinstance(v, str) or (null and v is None) else "a string" + (" or null" if null else "")
    return check


def _int_list(n: int | None = None, lo: int = 0):
    def check(v):
        if not isinstance(v, list) or (n is not None and len(v) != n) or \
                not all(isinstance(i, int) and not isinstance(i, bool) and i >= lo for i in v):
            return f"a list of {n or ''} integers ≥ {lo}".replace("  ", " ")
        return None
    return check


INF = math.inf
KEYS: dict[str, Callable[[Any], str | None]] = {
    "format": _choice("rawflow-run"),
    "rawflow_version": _str(),
    "model": _choice("nice", "realnvp", "glow"),
    "data": _str(),
    "data_key": _str(null=True),
    "data_sha256": _str(null=True),
    "kind": _choice("vector", "image"),
    "event_shape": _int_list(lo=1),
    "n_bins": _int(2, null=True),
    "split_sizes": _int_list(3),
    "arch": lambda v: None if isinstance(v, dict) else "an object",
    "n_samples": _int(1),
    "val_fraction": _num(0, 1),
    "test_fraction": _num(0, 1),
    "preprocess": _choice(None, "center", "logit"),
    "logit_alpha": _num(0, 0.5),
    "optimizer": _choice("adam", "adamax", "sgd"),
    "lr": _num(0, INF, lo_open=True),
    "momentum": _num(0, 1),
    "schedule": _choice("constant", "cosine"),
    "warmup": _int(0),
    "batch_size": _int(1),
    "steps": _int(1),
    "clip": _num(0, INF, null=True, lo_open=True),
    "backend": _choice("reference", "numba", "auto"),
    "device": _choice("cpu", "gpu"),
    "dtype": _choice("float32", "float64"),
    "seed": _int(0),
    "eval_every": _int(1),
    "patience": _int(1, null=True),
    "checkpoint_every": _int(1),
    "init_batch": _int(1),
    "n_bits": _int(1, null=True),
    "data_n_bins": _int(2, null=True),
    "ema": _num(0, 1, null=True, lo_open=True),
    "ycond": lambda v: None if isinstance(v, bool) else "true or false",
    "context": lambda v: None if isinstance(v, bool) else "true or false",
    "weight_y": _num(0, INF),
    "n_classes": _int(2),
    "context_features": _int(1),
}
# Keys a run config may lack: written only when they apply, or by versions before they existed
# (n_bits, data_n_bins, ema and the conditioning keys: an older run is 8-bit, unaveraged, unconditional).
OPTIONAL = {"data_sha256", "n_bits", "data_n_bins", "ema", "ycond", "context", "weight_y", "n_classes",
            "context_features"}
ARCH_KEYS: dict[str, Callable[[Any], str | None]] = {
    "n_couplings": _int(1), "hidden": _int_list(lo=1), "scale": _choice("exp", "bounded", "sigmoid"),
    "activation": _choice("relu", "tanh", "leaky_relu"), "K": _int(1), "L": _int(1), "width": _int(1),
    "coupling": _choice("affine", "additive"), "permutation": _choice("lu", "dense", "reverse", "shuffle"),
    "learn_top": lambda v: None if isinstance(v, bool) else "true or false", "blocks": _int(1),
    "variant": _choice("rawflow", "openai"),
    "split_prior": lambda v: None if isinstance(v, bool) else "true or false",
}


def check_config(cfg: Any, where: str) -> None:
    """Raise :class:`ValueError` (``"<where>: ..."``) unless ``cfg`` is a complete, well-typed run config."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    missing = sorted(k for k in KEYS if k not in cfg and k not in OPTIONAL)
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}; not a complete rawflow run config")
    problems = []
    for key, check in KEYS.items():
        if key in cfg:
            want = check(cfg[key])
            if want:
                problems.append(f"{key!r} is {cfg[key]!r:.60}, expected {want}")
    for key, value in (cfg["arch"].items() if isinstance(cfg["arch"], dict) else ()):
        check = ARCH_KEYS.get(key)
        want = "an architecture option" if check is None else check(value)
        if want:
            problems.append(f"'arch.{key}' is {value!r:.60}, expected {want}")
    if not problems and cfg["kind"] == "image" and cfg["n_bins"] is None:
        problems.append("'n_bins' is None, expected an integer ≥ 2 for image data")
    if not problems and cfg.get("n_bits") is not None and (
            cfg["kind"] != "image" or cfg["n_bins"] != 2 ** cfg["n_bits"] or cfg.get("data_n_bins") is None
            or cfg["data_n_bins"] < cfg["n_bins"]):
        problems.append(f"'n_bits' {cfg['n_bits']} does not fit 'n_bins' {cfg['n_bins']} and 'data_n_bins' "
                        f"{cfg.get('data_n_bins')} (n-bit image data need n_bins = 2^n_bits ≤ data_n_bins)")
    if not problems and cfg.get("ycond") and "n_classes" not in cfg:
        problems.append("'ycond' is true but 'n_classes' is missing")
    if not problems and cfg.get("context") and "context_features" not in cfg:
        problems.append("'context' is true but 'context_features' is missing")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)"
                                                                  if len(problems) > 4 else ""))
