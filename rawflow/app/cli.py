"""Command line: ``rawflow <command> [options]`` (``python -m rawflow`` works too).

Commands:

* ``demo``: a RealNVP on 8 Gaussians (held-out NLL against the true density's) and a small Glow on
  the 8×8 digits (held-out bits/dim against an independent-pixel baseline), with plots and
  ``metrics.json`` (see :mod:`rawflow.app.demo`).
* ``train``: NICE / RealNVP / Glow on a 2-D density, the digits, or the user's ``.npy``/``.npz``
  arrays; checkpoints that resume bit for bit (see :mod:`rawflow.app.runs`).
* ``sample``, ``interpolate``, ``eval``: use a trained run folder.
* ``check``, ``vectors``, ``verify``, ``bench``: verification and benchmark tools with their own
  parsers (delegated).

Exit codes: 0 success; 1 a run that failed (diverged, unusable checkpoint, a demo claim that did
not hold); 2 bad arguments, config or data; 130 interrupted.

BLAS threads: every command runs OpenBLAS single-threaded by default (``--threads``). The GEMMs
of these models are small (batch 128 × 64 × 64, or Glow's 3×3 convolutions on 8×8 images); on a
2-core machine shared with other work, multi-threaded OpenBLAS measured 26–84 ms per 2-D step
(batch 256) and 840 ms per Glow step, against 2–4 ms and 24 ms single-threaded.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ------------------------------------------------------------------------------ argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive layer widths such as 64,64, got {text!r}")
    return sizes


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="rawflow",
        description="Exact, from-scratch flow models (NICE, RealNVP, Glow) with hand-written gradients.",
    )
    parser.add_argument("--version", action="version", version=f"rawflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(commands)
    _add_train(commands)
    _add_sample(commands)
    _add_interpolate(commands)
    _add_eval(commands)
    # Commands with their own argument parsers: listed here for --help, dispatched in main().
    for name, text in DELEGATED_HELP.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="BLAS threads (default: %(default)s; these models' small GEMMs run fastest on one)")


def _add_demo(commands) -> None:
    p = commands.add_parser(
        "demo", help="train a RealNVP on 8 Gaussians and a Glow on the 8×8 digits; plots and metrics",
        description="Train (a) a RealNVP on the 8-Gaussians density and compare its held-out NLL with the true "
        "density's on the same points, and (b) a small Glow on the 8×8 digits (17 grey levels, uniformly "
        "dequantised) and compare its held-out bits/dim with an independent-pixel baseline. Writes PNG plots, "
        "metrics.json and the two run folders (usable with sample/interpolate/eval) into --out. "
        "About 3 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="rawflow-demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds; for tests, results not checked)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _common(p)
    p.set_defaults(handler=run_demo)


def _add_train(commands) -> None:
    from ..data.datasets import DATASETS

    p = commands.add_parser(
        "train", help="train NICE, RealNVP or Glow on a 2-D density, the digits or your .npy/.npz data",
        description="Train a flow and write config.json, checkpoint.npz (resumable bit for bit), metrics.json "
        "and loss.png into --out. Data: a 2-D density (" + ", ".join(sorted(DATASETS)) + "), 'digits' "
        "(8×8, shipped with scikit-learn), or a .npy/.npz file holding (N, D) floats or (N, C, H, W) / "
        "(N, H, W) integer images (dequantised). Unset options take defaults that depend on the model "
        "and data; with --resume they come from the run's config.json.",
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--model", choices=("nice", "realnvp", "glow"), help="architecture (glow: images only)")
    g.add_argument("--data", metavar="NAME|PATH", help="dataset name or .npy/.npz file")
    g.add_argument("--data-key", metavar="KEY", help="array name inside a .npz with several arrays")
    g.add_argument("--n-samples", type=_positive_int, metavar="N", help="points drawn from a 2-D density (default 25000)")
    g.add_argument("--couplings", type=_positive_int, metavar="N", help="nice/realnvp (vectors): coupling layers")
    g.add_argument("--hidden", type=_hidden, metavar="W,W", help="nice/realnvp (vectors), nice (images): MLP widths")
    g.add_argument("--scale", choices=("exp", "bounded", "sigmoid"), help="affine couplings' scale map")
    g.add_argument("--activation", choices=("relu", "tanh", "leaky_relu"), help="MLP activation (vectors)")
    g.add_argument("--K", type=_positive_int, metavar="K", help="glow: steps of flow per level")
    g.add_argument("--L", type=_positive_int, metavar="L", help="glow, realnvp (images): levels")
    g.add_argument("--width", type=_positive_int, metavar="C", help="glow, realnvp (images): conditioner channels")
    g.add_argument("--coupling", choices=("affine", "additive"), help="glow: coupling type")
    g.add_argument("--permutation", choices=("lu", "dense", "reverse", "shuffle"), help="glow: channel mixing")
    g.add_argument("--no-learn-top", dest="learn_top", action="store_const", const=False,
                   help="glow: no learned top prior")
    g.add_argument("--blocks", type=_positive_int, metavar="B", help="realnvp (images): residual blocks")
    g.add_argument("--preprocess", choices=("center", "logit"),
                   help="images: x − ½ (glow, nice default) or a logit layer (realnvp default)")
    g.add_argument("--logit-alpha", type=float, metavar="A", help="images: logit's α (default 0.05)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("adam", "adamax", "sgd"), help="default adam")
    g.add_argument("--lr", type=_positive_float, metavar="LR", help="learning rate (adam 1e-3, adamax 2e-3, sgd 1e-2)")
    g.add_argument("--momentum", type=_fraction, metavar="M", help="sgd momentum (default 0.9)")
    g.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule (default constant)")
    g.add_argument("--warmup", type=_nonneg_int, metavar="N", help="linear warm-up steps (default 0)")
    g.add_argument("--batch-size", type=_positive_int, metavar="B", help="default 128")
    g.add_argument("--steps", type=_positive_int, metavar="N", help="optimiser steps (default 2000)")
    g.add_argument("--clip", type=_positive_float, metavar="NORM", help="clip the global gradient norm")
    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=("reference", "numba", "auto"), help="coupling kernels (default reference)")
    g.add_argument("--device", choices=("cpu", "gpu"), help="gpu: CuPy arrays (default cpu)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="default float64")
    g.add_argument("--seed", type=_seed, metavar="S", help="default 0")
    g.add_argument("--val-fraction", type=_fraction, metavar="F", help="validation split (default 0.1)")
    g.add_argument("--test-fraction", type=_fraction, metavar="F", help="held-out test split (default 0.1)")
    g.add_argument("--eval-every", type=_positive_int, metavar="N", help="validation every N steps (default steps/20)")
    g.add_argument("--patience", type=_positive_int, metavar="P",
                   help="stop after P validations without improvement (default: never)")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="default: --eval-every")
    g.add_argument("--out", default="rawflow-run", metavar="DIR", help="run folder (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--comm-timeout", type=_positive_float, default=300.0, metavar="S",
                   help="under mpiexec: seconds a collective waits for the other ranks before the run stops "
                   "with an error (default: %(default)s; must cover rank 0 writing a checkpoint)")
    _common(g)
    p.set_defaults(handler=run_train)


def _add_sample(commands) -> None:
    p = commands.add_parser("sample", help="draw samples from a trained run (PNG or NPZ)",
                            description="Draw samples x = f⁻¹(z), z ~ N(0, T²I), from a trained run.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train or demo")
    p.add_argument("--n", type=_positive_int, default=64, metavar="N", help="samples (default: %(default)s)")
    p.add_argument("--temperature", type=_positive_float, default=1.0, metavar="T",
                   help="prior temperature (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="default: %(default)s")
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.npz (default: DIR/samples.png)")
    _common(p)
    p.set_defaults(handler=run_sample)


def _add_interpolate(commands) -> None:
    p = commands.add_parser("interpolate", help="decode a straight line in latent space between held-out inputs",
                            description="Encode pairs of held-out inputs (test split), decode the straight line "
                            "between their latents and draw the frames (images) or paths (vectors).")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train or demo")
    p.add_argument("--steps", type=_positive_int, default=8, metavar="S", help="frames per pair, ≥ 2 (default: %(default)s)")
    p.add_argument("--pairs", type=_positive_int, default=4, metavar="M",
                   help="pairs (0,1), (2,3), … of the test split (default: %(default)s)")
    p.add_argument("--index", type=_nonneg_int, nargs=2, metavar=("I", "J"),
                   help="interpolate between test inputs I and J instead")
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.npz (default: DIR/interpolation.png)")
    _common(p)
    p.set_defaults(handler=run_interpolate)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="held-out NLL (and bits/dim for images) of a trained run",
                            description="Mean NLL (nats per example) of a run's best parameters on its held-out "
                            "test split, another split, or other data; bits/dim and the independent-pixel "
                            "baseline for images; the Gaussian baseline (and the true NLL for 8 Gaussians) for vectors.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train or demo")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="default: %(default)s")
    p.add_argument("--data", metavar="NAME|PATH", help="evaluate on all of this data instead of a split")
    p.add_argument("--data-key", metavar="KEY", help="array name inside a .npz with several arrays")
    p.add_argument("--n", type=_positive_int, default=5000, metavar="N", help="--data NAME (2-D): points drawn")
    p.add_argument("--seed", type=_seed, default=12345, metavar="S", help="--data: seed for drawing/dequantising")
    _common(p)
    p.set_defaults(handler=run_eval)


DELEGATED_HELP = {
    "check": "check built-in layers (or a family/case) against complex-step and difference oracles",
    "vectors": "export or verify golden vectors: 'rawflow vectors export|verify DIR'",
    "verify": "compare rawflow with a PyTorch peer (nflows, normflows, zuko, FrEIA) in float64",
    "bench": "benchmarks against the implementations users would pick instead: 'rawflow bench --help'",
}


def _delegated(name: str):
    if name == "check":
        from ..check import run_check_cli

        return run_check_cli
    if name == "vectors":
        from ..check import run_vectors_cli

        return run_vectors_cli
    if name == "verify":
        from ..interop import run_verify_cli

        return run_verify_cli
    if name == "bench":
        try:
            from ..benchmarks import main as run_bench
        except ImportError:
            def run_bench(argv):
                _err("bench", "the benchmarks are not installed with this rawflow (reinstall: pip install -e .), "
                              "or run 'python -m benchmarks' from a checkout")
                return EXIT_USAGE
        return run_bench
    return None


# ------------------------------------------------------------------------------------ helpers
def _err(command: str, message: str) -> None:
    print(f"rawflow {command}: error: {message}", file=sys.stderr)


@contextlib.contextmanager
def _blas_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it OpenBLAS keeps its own default
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _have_matplotlib(command: str) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _err(command, "plots need matplotlib: pip install 'rawflow[demo]' (or write .npz with --out FILE.npz)")
        return False
    return True


def _folder_for_output(command: str, path: str) -> bool:
    if os.path.exists(path) and not os.path.isdir(path):
        _err(command, f"--out {path!r} exists and is not a folder")
        return False
    return True


def _output_kind(command: str, path: str | None) -> str | None:
    """``".png"`` or ``".npz"`` (``None`` = the default PNG in the run folder), or ``""`` after an error."""
    if path is None:
        return ".png"
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".npz"):
        _err(command, f"--out must end in .png or .npz, got {path!r}")
        return ""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        _err(command, f"--out: folder {parent} does not exist")
        return ""
    return ext


def _summary(metrics: dict) -> str:
    if "test_bits_per_dim" in metrics:
        return (f"held-out test: {metrics['test_bits_per_dim']:.4f} bits/dim (NLL {metrics['test_nll']:.4f} nats); "
                f"independent-pixel baseline {metrics['test_baseline_bits_per_dim']:.4f} bits/dim")
    if "test_nll" in metrics:
        text = f"held-out test NLL {metrics['test_nll']:.4f} nats; full-covariance Gaussian {metrics['test_gaussian_nll']:.4f}"
        if "test_true_nll" in metrics:
            text += f"; true density {metrics['test_true_nll']:.4f}"
        return text
    return "no test split (--test-fraction 0); see metrics.json"


# --------------------------------------------------------------------------------------- train
OPTION_KEYS = ("data_key", "n_samples", "val_fraction", "test_fraction", "preprocess", "logit_alpha", "optimizer",
               "lr", "momentum", "schedule", "warmup", "batch_size", "steps", "clip", "backend", "device", "dtype",
               "seed", "eval_every", "patience", "checkpoint_every")
ARCH_OPTIONS = {"couplings": "n_couplings", "hidden": "hidden", "scale": "scale", "activation": "activation",
                "K": "K", "L": "L", "width": "width", "coupling": "coupling", "permutation": "permutation",
                "learn_top": "learn_top", "blocks": "blocks"}


def _train_options(args) -> dict:
    options = {k: getattr(args, k) for k in OPTION_KEYS}
    options["model"], options["data"] = args.model, args.data
    options["arch"] = {key: getattr(args, opt) for opt, key in ARCH_OPTIONS.items() if getattr(args, opt) is not None}
    return options


def _flag(key: str) -> str:
    inverse = {v: k for k, v in ARCH_OPTIONS.items()}
    name = inverse.get(key, key)
    return "--no-learn-top" if name == "learn_top" else "--" + name.replace("_", "-")


def _resume_config(args) -> dict:
    """The saved config, after checking the command line does not contradict it."""
    from .runs import RESUMABLE_CHANGES, RunError, read_config

    cfg = read_config(args.out)
    options = _train_options(args)
    given = {k: v for k, v in options.items() if k != "arch" and v is not None}
    if given.get("data") is not None and given["data"] not in (cfg["data"], os.path.basename(cfg["data"])) \
            and os.path.abspath(given["data"]) != cfg["data"]:
        raise RunError(f"--data {given['data']} differs from the run's data {cfg['data']}")
    given.pop("data", None)
    conflicts = [f"{_flag(k)} {v} (run has {cfg.get(k)})" for k, v in given.items()
                 if cfg.get(k) != v and k not in RESUMABLE_CHANGES]
    conflicts += [f"{_flag(k)} {v} (run has {cfg['arch'].get(k)})" for k, v in options["arch"].items()
                  if cfg["arch"].get(k) != v]
    if conflicts:
        raise RunError("--resume continues the saved run; these options contradict its config.json: "
                       + "; ".join(conflicts))
    if args.steps is not None and args.steps != cfg["steps"]:
        if cfg["schedule"] == "cosine":
            raise RunError(f"--steps {args.steps}: the run's cosine schedule is tied to its {cfg['steps']} steps")
        cfg["steps"] = args.steps
    if args.checkpoint_every is not None:
        cfg["checkpoint_every"] = args.checkpoint_every
    return cfg


def _train_config(args) -> dict:
    """The run's config from the command line; :class:`RunError` (or ``CheckpointError``) if it cannot start."""
    from .runs import CHECKPOINT, RunError, make_config

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise RunError(f"--out {args.out!r} exists and is not a folder")
    if args.resume:
        if not os.path.isfile(os.path.join(args.out, CHECKPOINT)):
            raise RunError(f"--resume: no {CHECKPOINT} in {args.out}")
        return _resume_config(args)
    if args.model is None or args.data is None:
        raise RunError("--model and --data are required (unless --resume)")
    if os.path.exists(os.path.join(args.out, CHECKPOINT)):
        raise RunError(f"{args.out} already holds a run; use --resume to continue it or choose another --out")
    try:
        return make_config(_train_options(args), flags={k: _flag(k) for k in ARCH_OPTIONS.values()})
    except ImportError as exc:  # the digits need scikit-learn
        raise RunError(str(exc)) from exc


def run_train(args: argparse.Namespace) -> int:
    """Train alone, or as one of the ranks ``mpiexec`` started (:mod:`rawflow.distributed`).

    Under MPI every rank validates the command line itself and the ranks agree before rank 0 writes
    anything (:func:`rawflow.distributed.parallel.together`): errors that every rank reaches
    together are printed once, by rank 0, and end the job normally, while a rank-local failure (a
    collective past ``--comm-timeout``, a crash) is printed by the rank that saw it and ends every
    rank through ``MPI_Abort``.
    """
    from ..distributed import CommError, LaunchError, ReplicaDivergence, for_device, from_environment, together
    from ..training.checkpoint import CheckpointError
    from .runs import RunDiverged, RunError, run_training

    try:
        comm = from_environment(timeout=args.comm_timeout)
    except (LaunchError, CommError) as exc:
        _err("train", str(exc))
        return EXIT_USAGE
    lead = comm.rank == 0

    def fail(message: str, code: int) -> int:
        if lead:
            _err("train", message)
        return code

    try:
        try:
            cfg = together(comm, lambda: _train_config(args), (RunError, CheckpointError))
        except CheckpointError as exc:  # the saved config.json / checkpoint could not be used
            return fail(str(exc), EXIT_FAILED)
        comm = for_device(comm, cfg["device"])
        if lead and not args.quiet:
            arch = ", ".join(f"{k}={v}" for k, v in cfg["arch"].items())
            ranks = f", {comm.size} processes (batch {cfg['batch_size'] // comm.size} each)" if comm.size > 1 else ""
            print(f"rawflow train: {cfg['model']} ({arch}) on {cfg['data']} {tuple(cfg['event_shape'])}, "
                  f"splits {cfg['split_sizes']}, {cfg['steps']} steps, {cfg['optimizer']} lr {cfg['lr']}, "
                  f"{cfg['dtype']} on {cfg['device']}, seed {cfg['seed']}{ranks} → {args.out}")
        with _blas_threads(args.threads):
            metrics = run_training(cfg, args.out, resume=args.resume, quiet=args.quiet, comm=comm)
    except RunDiverged as exc:
        return fail(str(exc), EXIT_FAILED)
    except CheckpointError as exc:
        return fail(f"{exc}; refusing to resume from it", EXIT_FAILED)
    except RunError as exc:
        return fail(str(exc), EXIT_USAGE)
    except ReplicaDivergence as exc:  # found by a collective that completed on every rank
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        message = f"interrupted; the last checkpoint in {args.out} is intact (continue with --resume)"
        if comm.size == 1:
            return fail(message, EXIT_INTERRUPTED)
        return _abort(comm, message, EXIT_INTERRUPTED)
    except CommError as exc:
        return _abort(comm, f"{exc}; the last checkpoint in {args.out} is intact (continue with --resume)", EXIT_FAILED)
    except Exception as exc:
        if comm.size == 1:
            raise
        import traceback

        traceback.print_exc()
        return _abort(comm, f"rank {comm.rank} of {comm.size} failed ({type(exc).__name__}: {exc}); the last "
                      f"checkpoint in {args.out} is intact (continue with --resume)", EXIT_FAILED)
    if lead:
        print(_summary(metrics))
        if not args.quiet:
            print(f"wrote {args.out}/config.json, checkpoint.npz, metrics.json, loss.png")
    return EXIT_OK


def _abort(comm, message: str, code: int) -> int:
    """Print this rank's failure, then end every rank (pending collectives cannot be finalised)."""
    _err("train", message)
    sys.stderr.flush()
    sys.stdout.flush()
    comm.abort(code)
    return code


# ------------------------------------------------------------------------ sample / interpolate
def _load_run(command: str, run_dir: str):
    """``(params, model, cfg, step)``, or an exit code after printing why the run cannot be used."""
    from ..training.checkpoint import CheckpointError
    from .runs import RunError, load_params

    try:
        return load_params(run_dir)
    except CheckpointError as exc:
        _err(command, str(exc))
        return EXIT_FAILED
    except RunError as exc:
        _err(command, str(exc))
        return EXIT_USAGE


def run_sample(args: argparse.Namespace) -> int:
    ext = _output_kind("sample", args.out)
    if not ext or (ext == ".png" and not _have_matplotlib("sample")):
        return EXIT_USAGE
    out = args.out or os.path.join(args.run, "samples.png")
    with _blas_threads(args.threads):
        loaded = _load_run("sample", args.run)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .._array import to_numpy
        from .runs import quantize

        rng = np.random.default_rng(args.seed)
        x = model.sample(params, rng, args.n, temperature=args.temperature)
        if not np.isfinite(to_numpy(x)).all():
            _err("sample", "the model produced non-finite samples (try a lower --temperature)")
            return EXIT_FAILED
        images = cfg["kind"] == "image"
        if ext == ".npz":
            arrays = {"samples": to_numpy(x)}
            if images:
                arrays["pixels"] = quantize(cfg, x)
            np.savez(out, **arrays)
        else:
            from . import plots

            title = f"{cfg['model']} on {os.path.basename(cfg['data'])}, step {step}, T = {args.temperature:g}"
            if images:
                pixels = quantize(cfg, x) / (cfg["n_bins"] - 1)
                plots.sample_grids(out, {f"{args.n} samples": pixels}, ncol=int(math.ceil(math.sqrt(args.n))),
                                   title=title)
            else:
                from .runs import load_data

                plots.scatter(out, {"test data": load_data(cfg).test, "samples": to_numpy(x)}, title=title)
    print(f"wrote {out}")
    return EXIT_OK


def run_interpolate(args: argparse.Namespace) -> int:
    if args.steps < 2:
        _err("interpolate", "--steps must be at least 2")
        return EXIT_USAGE
    ext = _output_kind("interpolate", args.out)
    if not ext or (ext == ".png" and not _have_matplotlib("interpolate")):
        return EXIT_USAGE
    out = args.out or os.path.join(args.run, "interpolation.png")
    with _blas_threads(args.threads):
        loaded = _load_run("interpolate", args.run)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .._array import to_numpy
        from .runs import RunError, device_namespace, eval_inputs, load_data, quantize

        try:
            data = load_data(cfg)
        except RunError as exc:
            _err("interpolate", str(exc))
            return EXIT_USAGE
        n = len(data.test)
        if args.index is not None:
            first, second = [args.index[0]], [args.index[1]]
        else:
            first, second = list(range(0, 2 * args.pairs, 2)), list(range(1, 2 * args.pairs, 2))
        if max(first + second) >= n:
            _err("interpolate", f"the test split has {n} inputs; indices up to {max(first + second)} asked for")
            return EXIT_USAGE
        x = eval_inputs(cfg, data, "test", device_namespace(cfg["device"]))
        frames = to_numpy(model.interpolate(params, x[first], x[second], args.steps))  # (S, M, *event)
        if ext == ".npz":
            arrays = {"frames": frames, "index_a": np.asarray(first), "index_b": np.asarray(second)}
            if cfg["kind"] == "image":
                arrays["pixels"] = quantize(cfg, frames.reshape(-1, *frames.shape[2:])).reshape(frames.shape)
            np.savez(out, **arrays)
        else:
            from . import plots

            if cfg["kind"] == "image":
                pixels = quantize(cfg, frames.reshape(-1, *frames.shape[2:])).reshape(frames.shape)
                plots.interpolation_strip(out, pixels / (cfg["n_bins"] - 1))
            else:
                plots.paths_2d(out, data.test, frames)
    print(f"wrote {out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    import json

    with _blas_threads(args.threads):
        loaded = _load_run("eval", args.run)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .runs import RunError, device_namespace, held_out_metrics, load_data

        try:
            data = load_data(cfg)
            split = args.split
            if args.data is not None:
                data, split = _other_data(cfg, args, data), "test"
        except RunError as exc:
            _err("eval", str(exc))
            return EXIT_USAGE
        if len(getattr(data, split)) == 0:
            _err("eval", f"the run has no {split} split")
            return EXIT_USAGE
        xp = device_namespace(cfg["device"])
        eval_cfg = dict(cfg, seed=args.seed) if args.data is not None else cfg
        metrics = held_out_metrics(eval_cfg, model, params, data, split, xp, prefix="")
    report = {"run": args.run, "step": step, "data": args.data or cfg["data"],
              "split": split if args.data is None else "all", **metrics}
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _other_data(cfg: dict, args, run_data):
    """All of ``--data`` as the test split of a :class:`~rawflow.app.runs.Data` shaped like the run's."""
    from ..data.datasets import DATASETS, make_2d
    from .runs import Data, RunError, read_array

    shape = tuple(cfg["event_shape"])
    name = args.data
    if name in DATASETS:
        x = make_2d(name, args.n, np.random.default_rng(args.seed))
    elif name == "digits":
        from ..data.images import digits

        x = digits()[0]
    else:
        x = read_array(name, args.data_key)
        if cfg["kind"] == "image" and x.ndim == 3:
            x = x[:, None]
    if tuple(x.shape[1:]) != shape:
        raise RunError(f"--data {name}: examples of shape {tuple(x.shape[1:])}, the run models {shape}")
    if cfg["kind"] == "image":
        if x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= cfg["n_bins"]:
            raise RunError(f"--data {name}: need integer pixels in [0, {cfg['n_bins'] - 1}]")
        x = x.astype(np.int64)
    else:
        x = x.astype(np.float64)
    empty = x[:0]
    return Data(name, cfg["kind"], run_data.train, empty, x, shape, cfg["n_bins"])


# ---------------------------------------------------------------------------------------- demo
def run_demo(args: argparse.Namespace) -> int:
    from .demo import run

    if not _folder_for_output("demo", args.out) or not _have_matplotlib("demo"):
        return EXIT_USAGE
    try:
        with _blas_threads(args.threads):
            return run(args.out, quick=args.quick, seed=args.seed, quiet=args.quiet)
    except KeyboardInterrupt:
        _err("demo", "interrupted")
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED_HELP:
        return _delegated(argv[0])(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\nrawflow: error: a command is required (e.g. 'rawflow demo')", file=sys.stderr)
        return EXIT_USAGE
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
