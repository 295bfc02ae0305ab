"""Golden vectors: float64 reference values of every registered layer, for other implementations.

``export_vectors(dir)`` writes one ``<case>.npz`` per case of :mod:`rawflow.check.registry` and a
``manifest.json``; ``verify_vectors(dir)`` checks rawflow against them; :func:`load_case` gives the
arrays of one case to anyone (PyTorch, JAX, CUDA) after checking the file's sha256.

Fields of a case file (all float64; ``<p>`` runs over the parameter leaves, ``/``-joined paths such
as ``net/0/w``; ``<d>`` is ``forward`` or ``inverse``)::

    param/<p>                 the parameters
    <d>/input                 forward: x;  inverse: a latent batch (z = f(x) with the batch reversed)
    <d>/output, <d>/logdet    z = f(x), log|det ∂z/∂x|   /   x = f⁻¹(z), log|det ∂x/∂z|
    <d>/cotangent, <d>/cotangent_logdet                      g and gℓ of L = Σ g·output + Σ gℓ·logdet
    <d>/grad/input, <d>/grad/param/<p>                       ∂L/∂input, ∂L/∂params  (the VJP)
    <d>/grad_logdet/input, <d>/grad_logdet/param/<p>         the same for Lℓ = Σ gℓ·logdet alone
    <d>/hvp/direction/input, <d>/hvp/direction/param/<p>     a direction v over (input, params)
    <d>/hvp/input, <d>/hvp/param/<p>                         H·v, H the Hessian of L over (input, params)

Hessian-vector products are computed by complex step through rawflow's hand-written backward.
Files are written atomically with a fixed zip timestamp and loaded with ``allow_pickle=False``; a
file whose sha256 differs from the manifest's is refused before it is parsed.

The manifest's ``params_tree`` of each case is the parameter tree's skeleton (nested objects,
``null`` at the leaves): layers without parameters (``Squeeze``, a multi-scale model's split
levels) have empty subtrees, which no ``param/<p>`` field can express, and a verifier needs them
to call the layer. Manifests written before it existed are read as leaves-only trees.

Conditional layers (a context ``c: (N, K)``) are exported as the bijector
:class:`~rawflow.bijectors.conditional.ContextAsInput` of their joint rows: ``<d>/input`` is
``[x.reshape(N, −1) | c]``, ``<d>/output`` is ``[z.reshape(N, −1) | c]``, and ``grad/input`` holds the
input's cotangent followed by the context's (plus the output cotangent's context part, which
passes through). The manifest's ``layer`` entry gives the event shape and ``K``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .. import tree
from .._files import atomic_write
from ..bijectors.chain import Chain
from ..bijectors.conditional import ContextAsInput
from ..bijectors.coupling import AffineTransform, Coupling
from ..bijectors.openai import OpenAIAffineTransform
from ..nets.context import ConcatContext
from . import oracles, registry
from .probe import Probe
from .records import Report, compare, verdict

FORMAT = "rawflow-golden-vectors"
FORMAT_VERSION = 1

#: per-field tolerances: |actual − expected| ≤ rtol·|expected| + atol_rel·max|expected of the field|.
#: Another float64 implementation sums in another order: its results differ by ~eps times the
#: size of the summed terms, which for entries that cancel is far above eps·|value|; the norm-wise
#: floor (atol_rel) covers those. HVPs pass through one more level of sums.
TOLERANCES = {
    "output": {"rtol": 1e-12, "atol_rel": 1e-12},
    "logdet": {"rtol": 1e-12, "atol_rel": 1e-12},
    "grad": {"rtol": 1e-11, "atol_rel": 1e-11},
    "grad_logdet": {"rtol": 1e-11, "atol_rel": 1e-11},
    "hvp": {"rtol": 1e-10, "atol_rel": 1e-10},
}

CONVENTIONS = {
    "direction": "forward = data -> latent; inverse = latent -> data",
    "logdet": "forward: log|det dz/dx| per sample, shape (N,); inverse: log|det dx/dz| = -forward at matching points",
    "vjp": "grad = dL/d(input, params) with L = sum(cotangent * output) + sum(cotangent_logdet * logdet)",
    "grad_logdet": "the same VJP with the output cotangent set to zero (the log-det cotangent alone)",
    "hvp": "H v with H the Hessian of L over (input, params) jointly, v = hvp/direction; by complex step through the backward",
    "linear_layout": "conditioner Linear layers: y = x @ w.T + b with w of shape (out, in) (PyTorch's layout)",
    "coupling": "x_a = x[:, copied] is copied; h = conditioner(x_a); affine: h_s = h[:, :|b|], t = h[:, |b|:], "
                "y_b = x_b * exp(log_s(h_s)) + t; additive: y_b = x_b + h",
    "scale_maps": "exp: log s = h; bounded(c): log s = c*tanh(h/c); sigmoid: s = sigmoid(h + 2)",
    "params": "npz keys param/<path>; paths join nested dict keys with '/'",
    "openai_layers": "openai-* cases (openai/glow's definitions, NCHW): ActNorm z = (x + b) * exp(3 logs); "
                     "coupling shift = h[:, 0::2], s = sigmoid(h[:, 1::2] + 2), y_b = (x_b + shift) * s; "
                     "conv weights (C_out, C_in(+1), k, k), cross-correlation, the last input channel of a k > 1 "
                     "conv is the edge channel (1 on the zero-padded border); norms in the networks "
                     "(x + b) * exp(3 logs); invconv z = W x per pixel (the reference's NHWC w[in, out] is W^T)",
    "context": "conditional layers (class ContextAsInput): rows [x.reshape(N, -1) | c] -> [z.reshape(N, -1) | c]; "
               "the context c is part of the input, its cotangent part of grad/input; the log-det is log|det dz/dx|",
}


# ---------------------------------------------------------------------- describing layers
def _describe_net(net) -> dict | None:
    if hasattr(net, "widths"):
        return {"class": type(net).__name__, "widths": list(net.widths), "activation": net.activation.name,
                "leaky_slope": net.activation.slope}
    if hasattr(net, "width"):  # the image conditioners (GlowCNN, ResNetCNN, openai's)
        return {"class": type(net).__name__, "in": net.in_features, "out": net.out_features, "width": net.width,
                "layers": [name for name, _ in getattr(net, "layers", [])]}
    if isinstance(net, ConcatContext):
        inner = _describe_net(net.net)
        return {"class": "ConcatContext", "context_features": net.context_features,
                "input": "[x_a, context] along features", **({"net": inner} if inner else {})}
    return None


def describe(layer) -> dict:
    """A JSON description of a layer's fixed structure, enough to rebuild it elsewhere."""
    if isinstance(layer, ContextAsInput):
        return {"class": "ContextAsInput", "event_shape": list(layer.x_shape), "context_features": layer.k,
                "rows": "[x.reshape(N, -1) | context]", "layer": describe(layer.layer)}
    if isinstance(layer, Chain):
        return {"class": "Chain", "reconstruct": layer.reconstruct, "layers": [describe(s) for s in layer.layers]}
    if isinstance(layer, Coupling):
        net, t = layer.net, layer.transform
        kind = ("affine" if isinstance(t, AffineTransform) else
                "shift-then-scale, interleaved" if isinstance(t, OpenAIAffineTransform) else "additive")
        out = {
            "class": type(layer).__name__,
            "features": int(layer.event_shape[0]),
            "copied": layer.partition.idx_a.tolist(),
            "transformed": layer.partition.idx_b.tolist(),
            "transform": kind,
        }
        if isinstance(t, (AffineTransform, OpenAIAffineTransform)):
            out["scale"] = repr(t.scale)
        conditioner = _describe_net(net)
        if conditioner is not None:
            out["conditioner"] = conditioner
        return out
    out = {"class": type(layer).__name__, "event_shape": list(getattr(layer, "event_shape", ()))}
    if type(layer).__repr__ is not object.__repr__:  # object's repr is a memory address: not a description
        out["repr"] = repr(layer)
    return out


# ---------------------------------------------------------------------- computing the fields
def _direction_fields(layer, params, u, direction, rng) -> dict:
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    out, logdet, cache = run(params, u)
    g = rng.normal(size=out.shape)
    gl = rng.normal(size=logdet.shape)
    gu, gp = vjp(params, cache, g, gl)
    gu0, gp0 = vjp(params, cache, np.zeros_like(g), gl)
    d = direction
    fields = {f"{d}/input": u, f"{d}/output": out, f"{d}/logdet": logdet, f"{d}/cotangent": g,
              f"{d}/cotangent_logdet": gl, f"{d}/grad/input": gu, f"{d}/grad_logdet/input": gu0}
    for path, leaf in tree.leaves(gp):
        fields[f"{d}/grad/param/{path}"] = leaf
    for path, leaf in tree.leaves(gp0):
        fields[f"{d}/grad_logdet/param/{path}"] = leaf
    # direction for the HVP over (input, params)
    probe = Probe(layer, params, u, g, gl, direction)
    v = rng.normal(size=probe.w0.size)
    vparts = probe.in_layout.unpack(v)
    fields[f"{d}/hvp/direction/input"] = vparts["input"]
    for path in probe.paths:
        fields[f"{d}/hvp/direction/param/{path}"] = vparts[path]
    fields.update(_hvp(probe, vparts, d))
    return fields


def _hvp(probe: Probe, vparts: dict, d: str) -> dict:
    v = probe.in_layout.pack(vparts)
    hv = probe.out_layout.unpack(oracles.complex_step(probe, probe.w0, v))
    out = {f"{d}/hvp/input": hv["grad:input"]}
    for path in probe.paths:
        out[f"{d}/hvp/param/{path}"] = hv[f"grad:{path}"]
    return out


def case_fields(case: registry.Case, seed: int = 0) -> dict:
    """All golden fields of one case (float64 arrays keyed as in the module docstring)."""
    layer, params = case.layer, tree.map(lambda a: np.asarray(a, dtype=np.float64), case.params)
    x = np.asarray(case.x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    fields = {f"param/{p}": a for p, a in tree.leaves(params)}
    fields.update(_direction_fields(layer, params, x, "forward", rng))
    z_rev = fields["forward/output"][::-1].copy()
    fields.update(_direction_fields(layer, params, z_rev, "inverse", rng))
    return fields


# ---------------------------------------------------------------------- files
def _write_npz(path: Path, arrays: dict) -> None:
    """An ``.npz`` with fixed timestamps, so identical arrays give identical bytes (written atomically)."""
    atomic_write(path, lambda f: _npz_to(f, arrays))


def _npz_to(f, arrays: dict) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _field_kind(key: str) -> str | None:
    parts = key.split("/")
    if parts[0] == "param" or (len(parts) == 2 and parts[1] in ("input", "cotangent", "cotangent_logdet")):
        return None
    if parts[1] in ("output", "logdet"):
        return parts[1]
    if parts[1] in ("grad", "grad_logdet"):
        return parts[1]
    if parts[1] == "hvp":
        return None if parts[2] == "direction" else "hvp"
    return None


def _skeleton(t: dict) -> dict:
    return {k: _skeleton(v) if isinstance(v, dict) else None for k, v in t.items()}


def export_vectors(directory, families=None, names=None, seed: int = 0, *, force: bool = False) -> dict:
    """Write ``<case>.npz`` for the registered cases (optionally only ``names``) and ``manifest.json``.

    Raises :class:`ValueError` for a name that is not registered (or not in ``families``) and
    :class:`FileExistsError` for a folder that is not empty, unless ``force``: then the files the
    folder's previous manifest listed are removed (no orphans), and nothing else is touched.
    """
    from .._version import __version__

    directory = Path(directory)
    chosen = [(fam, case) for fam in families or registry.families() for case in registry.cases([fam])
              if names is None or case.name in names]
    if names is not None:
        unknown = sorted(set(names) - {case.name for _, case in chosen})
        if unknown:
            raise ValueError(f"unknown case(s) {unknown}" + (f" in families {list(families)}" if families else "")
                             + "; 'rawflow check --list' lists them")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(directory))
    if directory.is_dir() and any(directory.iterdir()):
        if not force:
            raise FileExistsError(17, "the folder is not empty; pass --force to replace the golden vectors in it",
                                  str(directory))
        _remove_previous(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for fam, case in chosen:
        fields = case_fields(case, seed)
        path = directory / f"{case.name}.npz"
        _write_npz(path, fields)
        files[path.name] = {
            "case": case.name,
            "family": fam,
            "sha256": _sha256(path),
            "layer": describe(case.layer),
            "params_tree": _skeleton(case.params),
            # parameter and input shapes; every other field's shape follows from them
            "shapes": {k: list(np.shape(v)) for k, v in sorted(fields.items())
                       if k.startswith("param/") or k in ("forward/input", "inverse/input")},
            "fields": len(fields),
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rawflow_version": __version__,
        "seed": seed,
        "dtype": "float64",
        "conventions": CONVENTIONS,
        "tolerances": TOLERANCES,
        "files": files,
    }
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    atomic_write(directory / "manifest.json", lambda f: f.write(text))
    return manifest


def _remove_previous(directory: Path) -> None:
    """Remove the case files and the manifest of an earlier export (only files it listed)."""
    try:
        listed = load_manifest(directory)["files"]
    except (OSError, ValueError):
        return
    for name in listed:
        path = directory / name
        if Path(name).name == name and name.endswith(".npz") and path.is_file():
            path.unlink()
    (directory / "manifest.json").unlink()


def load_manifest(directory) -> dict:
    """The manifest of a golden-vector folder; :class:`ValueError` if it is not one."""
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    entries = manifest.get("files")
    if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("case"), str) and isinstance(e.get("sha256"), str)
            for e in entries.values()):
        raise ValueError(f"{path}: 'files' must map file names to {{case, sha256, ...}}")
    return manifest


def load_case(directory, name: str) -> dict:
    """The arrays of case ``name`` (file ``<name>.npz``) after checking its sha256 against the manifest."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    fname = name if name.endswith(".npz") else f"{name}.npz"
    if fname not in manifest["files"]:
        raise KeyError(f"{fname} is not listed in {directory / 'manifest.json'}")
    path = directory / fname
    want = manifest["files"][fname]["sha256"]
    have = _sha256(path)
    if have != want:
        raise ValueError(f"{path}: sha256 {have} does not match the manifest's {want}; refusing to load it")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def verify_vectors(directory, layers: dict | None = None) -> Report:
    """Check rawflow against the golden files; returns a :class:`~rawflow.check.records.Report`.

    ``layers`` maps case names to layer objects (default: rebuilt from the registry by name).
    Parameters and inputs come from the files, so the check does not depend on random streams.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    tol = manifest.get("tolerances", TOLERANCES)
    report = Report(meta={"directory": str(directory), "seed": manifest.get("seed")})
    if not manifest["files"]:
        report.extend([verdict(False, layer="-", direction="-", dtype="float64", step=None, check="vectors",
                               quantity="manifest", oracle="manifest",
                               note=f"{directory / 'manifest.json'} lists no cases: nothing was verified")])
        return report
    for fname, entry in sorted(manifest["files"].items()):
        name = entry["case"]
        base = dict(layer=name, direction="-", dtype="float64", step=None)
        try:
            arrays = load_case(directory, fname)
        except (ValueError, OSError, KeyError) as exc:
            report.extend([verdict(False, check="vectors", quantity="file", oracle="sha256", note=str(exc), **base)])
            continue
        layer = (layers or {}).get(name)
        if layer is None:
            try:
                layer = registry.find(name).layer
            except KeyError as exc:
                report.extend([verdict(False, check="vectors", quantity="layer", oracle="registry",
                                       note=str(exc), **base)])
                continue
        report.extend([verdict(True, check="vectors", quantity="file", oracle="sha256", **base)])
        try:
            report.extend(_verify_case(layer, arrays, tol, name, entry.get("params_tree")))
        except (KeyError, ValueError, TypeError, IndexError, FloatingPointError) as exc:
            # A file that does not fit the layer (a field missing, a shape that does not match): this
            # case fails with the reason, and the other cases are still verified.
            report.extend([verdict(False, check="vectors", quantity="case", oracle="golden file",
                                   note=f"cannot run the case on this file: {type(exc).__name__}: {exc}", **base)])
    return report


def _unflatten(arrays: dict, prefix: str) -> dict:
    params: dict = {}
    for key, value in arrays.items():
        if not key.startswith(prefix):
            continue
        node = params
        parts = key[len(prefix):].split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return params


def _with_skeleton(skeleton, leaves: dict) -> dict:
    """``leaves`` (a tree of the file's ``param/`` fields) completed with ``skeleton``'s empty subtrees."""
    if not isinstance(skeleton, dict):
        return leaves
    return {k: _with_skeleton(v, leaves.get(k, {})) if isinstance(v, dict) else leaves[k] for k, v in skeleton.items()}


def _verify_case(layer, arrays: dict, tol: dict, name: str, skeleton=None) -> list:
    params = _with_skeleton(skeleton, _unflatten(arrays, "param/"))
    expected_keys = {k for k in arrays if _field_kind(k)}
    actual = {}
    for d in ("forward", "inverse"):
        u = arrays[f"{d}/input"]
        run = layer.forward if d == "forward" else layer.inverse
        vjp = layer.backward if d == "forward" else layer.inverse_backward
        out, logdet, cache = run(params, u)
        g, gl = arrays[f"{d}/cotangent"], arrays[f"{d}/cotangent_logdet"]
        gu, gp = vjp(params, cache, g, gl)
        gu0, gp0 = vjp(params, cache, np.zeros_like(g), gl)
        actual.update({f"{d}/output": out, f"{d}/logdet": logdet, f"{d}/grad/input": gu, f"{d}/grad_logdet/input": gu0})
        actual.update({f"{d}/grad/param/{p}": a for p, a in tree.leaves(gp)})
        actual.update({f"{d}/grad_logdet/param/{p}": a for p, a in tree.leaves(gp0)})
        probe = Probe(layer, params, u, g, gl, d)
        vparts = {"input": arrays[f"{d}/hvp/direction/input"]}
        vparts.update({p: arrays[f"{d}/hvp/direction/param/{p}"] for p in probe.paths})
        actual.update(_hvp(probe, vparts, d))
    records = []
    for key in sorted(expected_keys):
        kind = _field_kind(key)
        t = tol[kind]
        e = arrays[key]
        fields = dict(layer=name, direction=key.split("/")[0], check="vectors", quantity=key, oracle="golden file",
                      step=None)
        if key not in actual:
            records.append(verdict(False, dtype="float64", note="rawflow does not produce this field", **fields))
            continue
        floor = t["atol_rel"] * float(np.max(np.abs(e), initial=0.0))
        records.append(compare(actual[key], e, rtol=t["rtol"], atol=floor, dtype="float64",
                               scale_note="|expected| (+ atol_rel·max|field|)", **fields))
    missing = sorted(k for k in actual if k not in expected_keys)
    if missing:
        records.append(verdict(False, dtype="float64", layer=name, direction="-", check="vectors",
                               quantity="fields", oracle="golden file", step=None,
                               note=f"fields missing from the file: {missing[:5]}"))
    return records
