"""Comparison engine: a peer's layer (torch autograd) against rawflow (hand-written VJPs), in float64.

For one :class:`~rawflow.interop._torch.Binding` and an input batch, every *direction* the binding
exposes is run on both sides at the same point:

* bijectors: ``forward`` (x → z, logdet) and ``inverse`` (z → x, logdet), z being rawflow's forward
  output, both in rawflow's convention (forward = data → latent);
* the multi-scale split: ``factor`` (x → kept, log p(x₂|x₁)) and ``unfactor`` (kept, ε → x, log p);
* priors: ``log_prob`` (z → log π(z)).

Compared, per direction: every output; then, for one random cotangent per output, the VJP with
respect to every input and every learned parameter of the peer module — the peer's by
``torch.autograd.grad``, rawflow's by its hand-written backward, carried into the peer's parameter
coordinates by the binding's parametrisation map (:func:`~rawflow.interop._torch.pullback`).
Exports add ``params.roundtrip``: the rawflow parameters read back from the exported module.

Error measure (per quantity, and per parameter tensor): the normwise relative error
``max|a − b| / max(‖a‖∞, ‖b‖∞)`` (0 when both are exactly zero); for log-dets and log-densities
the denominator is at least 1 (``max(1, |ld|)``, as in rawflow.check): a log-det is a sum of terms
of both signs, and near 0 its relative error measures cancellation, not disagreement. Bars:
``1e-12`` for outputs, log-dets and parameter round trips, ``1e-10`` for gradients.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .. import tree
from ._torch import Binding, pullback, tensor, to_numpy
from .verify_args import PEERS, build_parser  # noqa: F401  (build_parser: part of this module's CLI)

VALUE_TOL = 1e-12
GRAD_TOL = 1e-10


@dataclass
class Row:
    """One compared quantity."""

    peer: str
    layer: str
    build: str  # "import" (peer module → rawflow) or "export" (rawflow → peer module)
    quantity: str  # e.g. "forward.z", "inverse.grad[z]", "forward.grad[transform_net.0.weight]"
    abs_err: float
    rel_err: float
    tol: float
    passed: bool

    @property
    def kind(self) -> str:
        """Table group: the quantity with parameter names folded into ``grad[params]``."""
        direction, _, what = self.quantity.partition(".")
        if direction == "params":
            return "params.roundtrip"
        if what.startswith("grad[") and not what.startswith(("grad[x]", "grad[z]", "grad[kept]", "grad[eps]")):
            return f"{direction}.grad[params]"
        return self.quantity


def errors(actual, expected, floor: float = 0.0) -> tuple[float, float]:
    """``(max abs error, normwise relative error)`` (see the module doc); ``floor`` bounds the
    denominator from below (1 for log-densities and log-dets)."""
    a, b = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        b = np.broadcast_to(b, a.shape)
    diff = float(np.max(np.abs(a - b), initial=0.0))
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), floor)
    if not (math.isfinite(diff) and math.isfinite(scale)):
        return math.inf, math.inf
    return diff, (0.0 if diff == 0 else diff / scale)


@dataclass
class Direction:
    """One function compared on both sides.

    ``raw(inputs) -> (outputs, vjp)`` with ``vjp(cotangents) -> (input grads, rawflow gparams)``;
    ``peer(tensor inputs) -> outputs`` (torch). Dicts are keyed by name; outputs a peer returns as
    scalars are broadcast to rawflow's shape.
    """

    name: str
    inputs: dict
    raw: Callable
    peer: Callable


def bijector_directions(binding: Binding, params: dict, x: np.ndarray) -> list[Direction]:
    layer = binding.layer
    z = layer.forward(params, x)[0]

    def raw(run, vjp, key):
        def go(inputs):
            out, logdet, cache = run(params, inputs[key])
            okey = "z" if key == "x" else "x"

            def back(cot):
                g, gp = vjp(params, cache, cot[okey], cot["logdet"])
                return {key: g}, gp

            return {okey: out, "logdet": logdet}, back

        return go

    def peer(name, key):
        okey = "z" if key == "x" else "x"

        def go(inputs):
            out, logdet = binding.calls[name](inputs[key])
            return {okey: out, "logdet": logdet}

        return go

    return [
        Direction("forward", {"x": x}, raw(layer.forward, layer.backward, "x"), peer("forward", "x")),
        Direction("inverse", {"z": z}, raw(layer.inverse, layer.inverse_backward, "z"), peer("inverse", "z")),
    ]


def split_directions(binding: Binding, params: dict, x: np.ndarray, rng: np.random.Generator) -> list[Direction]:
    split = binding.layer
    kept = np.ascontiguousarray(x[:, : split.kept])
    eps = rng.normal(size=(x.shape[0], split.factored) + x.shape[2:])

    def factor(inputs):
        k, logp, _, cache = split.factor(params, inputs["x"])

        def back(c):
            gx, gp = split.factor_backward(params, cache, c["kept"], c["logp"])
            return {"x": gx}, gp

        return {"kept": k, "logp": logp}, back

    def unfactor(inputs):
        out, logp, _, cache = split.unfactor(params, inputs["kept"], inputs["eps"])

        def back(c):
            gk, ge, gp = split.unfactor_backward(params, cache, c["x"], c["logp"])
            return {"kept": gk, "eps": ge}, gp

        return {"x": out, "logp": logp}, back

    def peer_factor(inputs):
        k, logp = binding.calls["factor"](inputs["x"])
        return {"kept": k, "logp": logp}

    def peer_unfactor(inputs):
        out, logp = binding.calls["unfactor"](inputs["kept"], inputs["eps"])
        return {"x": out, "logp": logp}

    return [
        Direction("factor", {"x": x}, factor, peer_factor),
        Direction("unfactor", {"kept": kept, "eps": eps}, unfactor, peer_unfactor),
    ]


def prior_directions(binding: Binding, params: dict, z: np.ndarray) -> list[Direction]:
    prior = binding.layer

    def raw(inputs):
        lp, cache = prior.log_prob(params, inputs["z"])

        def back(c):
            gz, gp = prior.backward(params, cache, c["logp"])
            return {"z": gz}, gp

        return {"logp": lp}, back

    return [Direction("log_prob", {"z": z}, raw, lambda inputs: {"logp": binding.calls["log_prob"](inputs["z"])})]


@dataclass
class CaseResult:
    peer: str
    layer: str
    build: str
    rows: list = field(default_factory=list)
    notes: tuple = ()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


def compare_binding(binding: Binding, x: np.ndarray, *, params: dict | None = None, layer=None,
                    build: str = "import", seed: int = 0) -> CaseResult:
    """Compare ``binding`` at input ``x``.

    ``params``: the rawflow parameters to run (default: read from the peer module, an import). For
    an export pass the rawflow layer and parameters the module was built from as ``layer`` and
    ``params``; the parameters are also compared with what the module reads back
    (``params.roundtrip``).
    """
    if layer is not None:
        binding = replace(binding, layer=layer)
    rng = np.random.default_rng(seed)
    result = CaseResult(binding.peer, binding.name, build, notes=tuple(binding.notes))

    def add(quantity, actual, expected, tol, floor=0.0):
        a, r = errors(actual, expected, floor)
        result.rows.append(Row(binding.peer, binding.name, build, quantity, a, r, tol, bool(r <= tol)))

    read_back = binding.params()
    if params is None:
        params = read_back
    else:
        for path, leaf in tree.leaves(params):
            add(f"params.roundtrip[{path}]", tree.get(read_back, path), leaf, VALUE_TOL)
    if binding.kind == "bijector":
        directions = bijector_directions(binding, params, x)
    elif binding.kind == "split":
        directions = split_directions(binding, params, x, rng)
    else:
        directions = prior_directions(binding, params, x)
    named = binding.peer_parameters()
    for d in directions:
        raw_out, vjp = d.raw(d.inputs)
        t_in = {k: tensor(v).requires_grad_(True) for k, v in d.inputs.items()}
        peer_out = d.peer(t_in)
        cot = {}
        loss = 0
        for key, value in raw_out.items():
            p = peer_out[key]
            p = p if isinstance(p, torch.Tensor) else torch.as_tensor(p, dtype=torch.float64)
            p = p.expand(value.shape) if tuple(p.shape) != tuple(value.shape) else p
            add(f"{d.name}.{key}", to_numpy(p), value, VALUE_TOL, 1.0 if key in ("logdet", "logp") else 0.0)
            cot[key] = rng.normal(size=value.shape)
            loss = loss + (p * tensor(cot[key])).sum()
        g_in, g_raw = vjp(cot)
        g_peer_params = pullback(binding, g_raw)
        leaves = list(t_in.values()) + [p for _, p in named]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
        for (key, t), g in zip(t_in.items(), grads[: len(t_in)]):
            ref = np.zeros(tuple(t.shape)) if g is None else to_numpy(g)
            add(f"{d.name}.grad[{key}]", g_in[key], ref, GRAD_TOL)
        for (name, p), g in zip(named, grads[len(t_in):]):
            ref = np.zeros(tuple(p.shape)) if g is None else to_numpy(g)
            add(f"{d.name}.grad[{name}]", g_peer_params[name], ref, GRAD_TOL)
    return result


def case_pair(bind: Callable, to_peer: Callable, make_module: Callable, make_native: Callable, x_shape: tuple,
              seed: int, prepare: Callable = lambda module: None, x_fn: Callable | None = None,
              scale: float = 0.5, fix_import: Callable = lambda module: None, label: str = "") -> list[Callable]:
    """Two zero-argument comparisons of one mapped layer.

    * import: ``make_module(torch.Generator)`` builds a peer module, whose learned parameters are
      then drawn at random (``N(0, scale²)``); rawflow runs the parameters read from it;
    * export: ``make_native(np.random.Generator) -> (layer, params)`` builds a rawflow layer with
      random parameters (the caller's choice of scale); ``to_peer`` turns it into a peer module; rawflow runs its own parameters.

    ``prepare(module)`` puts a peer module into a comparable state (e.g. marks data-dependent
    initialisation as done); ``fix_import(module)`` adjusts the random peer parameters of an import
    (e.g. keeps a matrix well conditioned); ``x_fn(rng, shape)`` draws the input (default standard
    normal); ``label`` names the pair (``label:import`` / ``label:export`` on the callables).
    """
    from ._torch import randomize_

    draw = x_fn or (lambda rng, shape: rng.normal(size=shape))

    def go_import():
        gen = torch.Generator().manual_seed(seed)
        module = randomize_(make_module(gen), gen, scale)
        fix_import(module)
        prepare(module)
        x = draw(np.random.default_rng(seed), x_shape)
        return compare_binding(bind(module), x, build="import", seed=seed)

    def go_export():
        rng = np.random.default_rng(seed + 1)
        layer, params = make_native(rng)
        module = to_peer(layer, params)
        prepare(module)
        x = draw(rng, x_shape)
        return compare_binding(bind(module), x, params=params, layer=layer, build="export", seed=seed + 1)

    go_import.label, go_export.label = f"{label}:import", f"{label}:export"
    return [go_import, go_export]


def random_params(params: dict, rng: np.random.Generator, scale: float = 0.5, keep=()) -> dict:
    """``N(0, scale²)`` draws in place of every leaf whose path is not in ``keep`` (float64)."""
    out = {}
    for path, leaf in tree.leaves(params):
        value = np.asarray(leaf, dtype=np.float64)
        out[path] = value.copy() if path in keep else rng.normal(scale=scale, size=value.shape)
    result = params
    for path, value in out.items():
        result = tree.set(result, path, value)
    return result


# ---------------------------------------------------------------------- reports
def summarize(results: list[CaseResult]) -> list[dict]:
    """Worst error per (peer, layer, build, quantity group), with the worst parameter named."""
    table = {}
    for res in results:
        for r in res.rows:
            key = (r.peer, r.layer, r.build, r.kind)
            cur = table.get(key)
            if cur is None or r.rel_err > cur["rel_err"] or (r.rel_err == cur["rel_err"] and r.abs_err > cur["abs_err"]):
                table[key] = {"peer": r.peer, "layer": r.layer, "build": r.build, "quantity": r.kind,
                              "worst": r.quantity, "abs_err": r.abs_err, "rel_err": r.rel_err, "tol": r.tol,
                              "passed": True}
        for r in res.rows:
            if not r.passed:
                table[(r.peer, r.layer, r.build, r.kind)]["passed"] = False
    return list(table.values())


def format_table(results: list[CaseResult]) -> str:
    lines = []
    summary = summarize(results)
    by_layer = {}
    for s in summary:
        by_layer.setdefault((s["peer"], s["layer"], s["build"]), []).append(s)
    notes = {(r.peer, r.layer, r.build): r.notes for r in results}
    for (peer, layer, build), rows in by_layer.items():
        ok = all(s["passed"] for s in rows)
        lines.append(f"{peer} · {layer} · {build}  [{'PASS' if ok else 'FAIL'}]")
        lines.append(f"  {'quantity':<28} {'max abs':>10} {'max rel':>10} {'tol':>8}  result  (worst)")
        for s in rows:
            worst = "" if s["worst"] == s["quantity"] else f"  ({s['worst']})"
            lines.append(
                f"  {s['quantity']:<28} {s['abs_err']:>10.2e} {s['rel_err']:>10.2e} {s['tol']:>8.0e}  "
                f"{'pass' if s['passed'] else 'FAIL':<6}{worst}"
            )
        for note in notes.get((peer, layer, build), ()):
            lines.append(f"  note: {note}")
        lines.append("")
    return "\n".join(lines)


def worst_per_layer(results: list[CaseResult]) -> list[dict]:
    """One line per (peer, layer): the worst value error and the worst gradient error over builds."""
    out = {}
    for res in results:
        entry = out.setdefault((res.peer, res.layer), {"peer": res.peer, "layer": res.layer, "value_rel": 0.0,
                                                       "grad_rel": 0.0, "passed": True})
        for r in res.rows:
            k = "grad_rel" if ".grad[" in r.quantity else "value_rel"
            entry[k] = max(entry[k], r.rel_err)
            entry["passed"] = entry["passed"] and r.passed
    return list(out.values())


# ---------------------------------------------------------------------- CLI
def run_peer(peer: str, seed: int = 0) -> list[CaseResult]:
    """Every mapped layer of ``peer``, both builds (import and export)."""
    import importlib

    module = importlib.import_module(f"rawflow.interop.{peer}")
    return [case() for case in module.cases(seed)]


def _strict(obj):
    """Non-finite floats as strings ("nan", "inf"): strict JSON has no NaN/Infinity tokens."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else str(float(obj))
    return obj


def run_verify_cli(argv: list[str] | None = None) -> int:
    """``rawflow verify --peer P [--json FILE] [--seed S]``: 0 all pass, 1 a failure, 2 peer missing."""
    args = build_parser().parse_args(argv)
    if args.json:
        from .._files import check_writable

        check_writable(args.json, "--json")  # before the comparisons, not after
    peers = []
    for p in args.peer:
        for q in (PEERS if p == "all" else (p,)):
            if q not in peers:
                peers.append(q)
    results, missing = [], []
    for peer in peers:
        try:
            results.extend(run_peer(peer, args.seed))
        except ImportError as exc:
            missing.append(f"{peer}: {exc}")
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results)} layer comparisons, {len(failed)} failed"
          + (f"; not available: {'; '.join(missing)}" if missing else ""))
    if args.json:
        payload = {
            "tolerances": {"values": VALUE_TOL, "gradients": GRAD_TOL},
            "summary": summarize(results),
            "rows": [asdict(r) for res in results for r in res.rows],
            "notes": {f"{r.peer}/{r.layer}/{r.build}": list(r.notes) for r in results},
            "missing": missing,
        }
        text = json.dumps(_strict(payload), indent=1, default=float, allow_nan=False)
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    if failed:
        return 1
    if missing and not results:
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_verify_cli())
