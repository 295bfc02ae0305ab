"""The package's shape: the public API, explicit re-exports, and imports that only go down the layers.

The layers, highest first (README "Layout"):

    app → testing → training, check, interop → distributed → models → bijectors → kernels
        → nets, distributions → data, tree → _array, _checks, _files, _version

A module may import from its own folder or from a lower layer, never from a higher one or from a
sibling folder of its own layer, and never names from ``rawflow/__init__`` (only its submodules).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rawflow

REPO = Path(__file__).resolve().parents[1]

# The 74 names of rawflow.__all__ when the package was split into layer folders (issue 12): all of
# them stay importable from ``rawflow``. A new public name joins this list on purpose (issue 15:
# EMA, reduce_bits).
PUBLIC = [
    "ActNorm", "Adam", "Adamax", "AdditiveCoupling", "AdditiveTransform", "AffineCoupling", "AffineTransform",
    "Bijector", "bits_per_dim", "BoundedScale", "Chain", "ChannelCoupling", "ChannelRotationCoupling",
    "check_bijector", "checkerboard", "CheckerboardCoupling", "CheckpointError", "circles", "clip_grad_norm",
    "conv2d", "conv2d_backward", "Coupling", "DenseLinear", "dequantize", "DiagonalGaussian", "DiagonalScaling",
    "digits", "eight_gaussians", "eight_gaussians_log_prob", "evaluate_nll", "export_vectors", "ExpScale",
    "Flatten", "FlowModel", "gaussian_baseline_nll", "global_norm", "glow", "GlowCNN", "GlowTopPrior",
    "independent_pixel_baseline", "load_checkpoint", "load_images", "Logit", "LULinear", "make_2d", "MLP",
    "MultiScale", "nice", "nice_images", "Partition", "Permutation", "pinwheel", "Prior", "realnvp",
    "realnvp_multiscale", "ResNetCNN", "Reverse", "run_suite", "save_checkpoint", "scale_map", "ScaleMap", "SGD",
    "SigmoidScale", "spirals", "Split", "Squeeze", "StandardLogistic", "StandardNormal", "train",
    "TrainingDiverged", "tree", "two_moons", "Uniform", "verify_vectors",
    "EMA", "reduce_bits",
]
# Issue 15 (conditional flows, openai/glow's --ycond): 9 names joined on purpose.
PUBLIC += [
    "class_conditional_glow", "ClassifierHead", "ConditionalAdditiveCoupling", "ConditionalAffineCoupling",
    "ConditionalChannelCoupling", "ConditionalSplit", "ContextAsInput", "GlowTop", "MultiScalePrior",
]

# Layer of each top-level part of the package (a higher number is a higher layer).
LAYER = {
    "app": 9, "testing": 8, "training": 7, "check": 7, "interop": 7, "distributed": 6, "models": 5, "bijectors": 4,
    "kernels": 3, "nets": 2, "distributions": 2, "data": 1, "tree": 1, "_array": 0, "_version": 0, "_files": 0, "_checks": 0,
}
SUBPACKAGES = ["app", "bijectors", "data", "distributions", "models", "nets", "training", "check", "interop",
               "distributed"]


def test_public_api_is_pinned():
    assert len(PUBLIC) == 74 + 2 + 9  # issue 15: EMA, reduce_bits; the conditional layers and builders
    assert sorted(rawflow.__all__, key=str.lower) == sorted(PUBLIC, key=str.lower)
    missing = [name for name in PUBLIC if not hasattr(rawflow, name)]
    assert not missing, missing


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_reexport_their_names_explicitly(name):
    import importlib

    package = importlib.import_module(f"rawflow.{name}")
    assert package.__all__, f"rawflow.{name} has an empty __all__"
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing, f"rawflow.{name}.__all__ names what it does not define: {missing}"


def _modules():
    """``(dotted name, path)`` of every module of the package, ``rawflow.kernels`` included."""
    for path in sorted((REPO / "rawflow").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path
    for path in sorted((REPO / "kernels").glob("*.py")):
        yield "rawflow.kernels" + ("" if path.stem == "__init__" else "." + path.stem), path


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str, path: Path):
    """Every import in the file (function-level ones too): ``(line, target, names)``, absolute."""
    package = _package_of(module, path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target, [a.name for a in node.names]


def _part(target: str) -> str | None:
    """The top-level part of the package ``target`` lies in (``None`` outside the package)."""
    if target == "rawflow":
        return ""
    if not target.startswith("rawflow."):
        return None
    return target.split(".")[1]


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    if parts[:1] == ["kernels"]:
        base = REPO / "kernels" / Path(*parts[1:]) if parts[1:] else REPO / "kernels"
    else:
        base = REPO / "rawflow" / Path(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_every_module_is_in_a_layer():
    parts = {_part(m) for m, _ in _modules()} - {"", "__main__", "benchmarks"}
    assert parts <= set(LAYER), parts - set(LAYER)


def test_imports_go_down_only():
    bad = []
    for module, path in _modules():
        own = _part(module)
        if own in ("", "__main__"):  # rawflow/__init__ and __main__ are the top: they may import anything
            continue
        for line, target, names in _imports(module, path):
            part = _part(target)
            if part is None:
                if target in ("benchmarks",) or target.startswith("benchmarks."):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
                continue
            if part == "":
                # ``from rawflow import x`` / ``from .. import x``: only submodules, never rawflow/__init__'s names
                not_modules = [n for n in names if not _is_module(f"rawflow.{n}")]
                if not names or not_modules:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {not_modules or 'rawflow'} from rawflow/__init__")
                targets = [f"rawflow.{n}" for n in names]
            else:
                targets = [target]
            for t in targets:
                p = _part(t)
                if p == own or p == "benchmarks" and own == "app":
                    continue
                if p not in LAYER or LAYER[p] >= LAYER[own]:
                    bad.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {t} ({p}): not a lower layer")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Module-to-module imports (function-level ones included) form no cycle; in particular the
    kernel modules share their definitions through ``kernels/interface.py``, not through each other."""
    graph = {}
    for module, path in _modules():
        edges = set()
        for _, target, names in _imports(module, path):
            if _part(target) is None:
                continue
            for t in [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}")] or [target]:
                if t != module and _is_module(t):
                    edges.add(t)
        graph[module] = edges
    # packages' __init__ files re-export from their own modules: an edge into a package is an edge to
    # its __init__, which is fine as long as no module below it imports the package back
    state, cycle = {}, []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycle)


def test_no_wildcard_imports():
    bad = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, bad


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "rawflow", "--version"],
                                  [str(Path(sys.executable).with_name("rawflow")), "--version"]])
def test_entry_points(argv):
    if not Path(argv[0]).exists():
        pytest.skip("the rawflow console script is not installed next to this interpreter")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"rawflow {rawflow.__version__}"
