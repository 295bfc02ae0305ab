"""Command line: ``rawflow <command> [options]`` (``python -m rawflow`` works too).

Commands:

* ``demo``: a RealNVP on 8 Gaussians (held-out NLL against the true density's) and a small Glow on
  the 8×8 digits (held-out bits/dim against an independent-pixel baseline), with plots and
  ``metrics.json`` (see :mod:`rawflow.app.demo`).
* ``train``: NICE / RealNVP / Glow on a 2-D density, the digits, or the user's ``.npy``/``.npz``
  arrays; checkpoints that resume bit for bit (see :mod:`rawflow.app.runs`).
* ``sample``, ``interpolate``, ``eval``, ``translate``: use a trained run folder (``translate``: a
  class-conditional run's held-out images moved from one class towards another).
* ``check``, ``vectors``, ``verify``, ``bench``: verification and benchmark tools with their own
  parsers (delegated).

Exit codes: 0 success; 1 a run that failed (diverged, unusable checkpoint, a demo claim that did
not hold); 2 bad arguments, config or data, or a file that cannot or must not be written (every
``OSError`` is one line naming the path); 70 an unexpected error, i.e. a bug in rawflow (one line;
``rawflow --debug COMMAND ...`` or ``RAWFLOW_DEBUG=1`` shows its traceback); 130 interrupted.

Files: nothing a user wrote is overwritten without ``--force``, a run's own files never are, run
folders are locked while a process trains in them, and outputs are checked to be writable before
the work that produces them starts (:mod:`rawflow.app.files`).

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

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 70, 130


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


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _decay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay in (0, 1) such as 0.999, got {text!r}")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a decay in (0, 1) such as 0.999, got {text}")
    return value


def _n_bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 1 to 16, got {text!r}")
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 1 to 16, got {value}")
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
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (also: RAWFLOW_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(commands)
    _add_train(commands)
    _add_sample(commands)
    _add_interpolate(commands)
    _add_translate(commands)
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
    p.add_argument("--force", action="store_true", help="replace the results of an earlier demo in --out")
    _common(p)
    p.set_defaults(handler=run_demo)


def _add_train(commands) -> None:
    from ..data.datasets import DATASETS

    p = commands.add_parser(
        "train", help="train NICE, RealNVP or Glow on a 2-D density, the digits or your .npy/.npz data",
        description="Train a flow and write config.json, checkpoint.safetensors (resumable bit for bit), metrics.json "
        "and loss.png into --out. Data: a 2-D density (" + ", ".join(sorted(DATASETS)) + "), 'digits' "
        "(8×8, shipped with scikit-learn), or a .npy/.npz file holding (N, D) floats or (N, C, H, W) / "
        "(N, H, W) integer images (dequantised). Unset options take defaults that depend on the model "
        "and data; with --resume they come from the run's config.json.",
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--model", choices=("nice", "realnvp", "glow"), help="architecture")
    g.add_argument("--data", metavar="NAME|PATH", help="dataset name or .npy/.npz file")
    g.add_argument("--data-key", metavar="KEY", help="array name inside a .npz with several arrays")
    g.add_argument("--n-samples", type=_positive_int, metavar="N", help="points drawn from a 2-D density (default 25000)")
    g.add_argument("--couplings", type=_positive_int, metavar="N", help="nice/realnvp (vectors): coupling layers")
    g.add_argument("--hidden", type=_hidden, metavar="W,W", help="vectors, nice (images): MLP widths")
    g.add_argument("--scale", choices=("exp", "bounded", "sigmoid"), help="affine couplings' scale map")
    g.add_argument("--activation", choices=("relu", "tanh", "leaky_relu"), help="MLP activation (vectors)")
    g.add_argument("--K", type=_positive_int, metavar="K", help="glow: steps of flow (per level on images)")
    g.add_argument("--L", type=_positive_int, metavar="L", help="glow, realnvp (images): levels")
    g.add_argument("--width", type=_positive_int, metavar="C", help="glow, realnvp (images): conditioner channels")
    g.add_argument("--coupling", choices=("affine", "additive"), help="glow: coupling type")
    g.add_argument("--permutation", choices=("lu", "dense", "reverse", "shuffle"), help="glow: channel mixing")
    g.add_argument("--no-learn-top", dest="learn_top", action="store_const", const=False,
                   help="glow: no learned top prior")
    g.add_argument("--variant", choices=("rawflow", "openai"),
                   help="glow: rawflow's layers (default) or openai/glow's own definitions (ActNorm exp(3·logs), "
                   "(x + shift)·sigmoid(h + 2) couplings, edge padding, dense 1×1 conv with a float64 log-det; "
                   "docs/glow-variants.md)")
    g.add_argument("--blocks", type=_positive_int, metavar="B", help="realnvp (images): residual blocks")
    g.add_argument("--ycond", action="store_const", const=True,
                   help="class-conditional p(x | y) (openai/glow's --ycond): labels from the digits or 'y' in a .npz "
                   "(images: 'x'); glow: class term in the top prior, classifier head; realnvp/nice (vectors): "
                   "one-hot label to every coupling")
    g.add_argument("--weight-y", type=_nonneg_float, metavar="W",
                   help="glow --ycond: weight of the classifier's cross-entropy, openai's --weight_y (default 0.01)")
    g.add_argument("--ycond-splits", dest="ycond_splits", action="store_const", const=True,
                   help="glow --ycond: the class term in every split prior too")
    g.add_argument("--context", action="store_const", const=True,
                   help="realnvp/nice (vectors): conditional p(x | c) on the float rows 'c' of a .npz (x: 'x')")
    g.add_argument("--preprocess", choices=("center", "logit"),
                   help="images: a logit layer (default) or x − ½ (a constant Jacobian: weaker on pixels that pile up "
                   "at 0 or the top level)")
    g.add_argument("--logit-alpha", type=float, metavar="A", help="images: logit's α (default 0.05)")
    g.add_argument("--n-bits", type=_n_bits, metavar="N",
                   help="images: model N-bit data (openai/glow's --n_bits_x; 8-bit pixels v → ⌊v/2^(8−N)⌋; the "
                   "17-level digits allow N ≤ 4); bits/dim then use n_bins = 2^N and are not comparable with "
                   "the full data's (default: every level)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("adam", "adamax", "sgd"), help="default adam")
    g.add_argument("--lr", type=_positive_float, metavar="LR", help="learning rate (adam 1e-3, adamax 2e-3, sgd 1e-2)")
    g.add_argument("--momentum", type=_fraction, metavar="M", help="sgd momentum (default 0.9)")
    g.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule (default constant)")
    g.add_argument("--warmup", type=_nonneg_int, metavar="N", help="linear warm-up steps (default 0)")
    g.add_argument("--batch-size", type=_positive_int, metavar="B", help="default 128")
    g.add_argument("--steps", type=_positive_int, metavar="N", help="optimiser steps (default: 2000 for images, "
                   "6000 for vectors)")
    g.add_argument("--clip", type=_positive_float, metavar="NORM", help="clip the global gradient norm")
    g.add_argument("--ema", type=_decay, metavar="DECAY",
                   help="Polyak averaging: keep θ̄ ← θ̄ − (1 − DECAY)(θ̄ − θ) after every step, checkpointed; validation, "
                   "the best parameters and the test metrics then use θ̄ (openai/glow: DECAY = 1 − 1/steps per "
                   "epoch). Default: off")
    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=("reference", "numba", "auto"), help="coupling kernels (default reference)")
    g.add_argument("--device", choices=("cpu", "gpu"), help="gpu: CuPy arrays (default cpu)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="default: float32 for images, float64 for vectors")
    g.add_argument("--seed", type=_seed, metavar="S", help="default 0")
    g.add_argument("--val-fraction", type=_fraction, metavar="F", help="validation split (default 0.1)")
    g.add_argument("--test-fraction", type=_fraction, metavar="F", help="held-out test split (default 0.1)")
    g.add_argument("--eval-every", type=_positive_int, metavar="N", help="validation every N steps (default steps/20)")
    g.add_argument("--patience", type=_nonneg_int, metavar="P",
                   help="stop after P validations without improvement (default 5; 0: never). Either way the "
                   "held-out figures, sample, interpolate and eval use the best-validation parameters")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="default: --eval-every")
    g.add_argument("--out", default="rawflow-run", metavar="DIR",
                   help="run folder: new, empty, or a run to --resume (default: %(default)s); locked while training")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--comm-timeout", type=_positive_float, default=300.0, metavar="S",
                   help="under mpiexec: seconds a collective waits for the other ranks before the run stops "
                   "with an error (default: %(default)s; must cover rank 0 writing a checkpoint)")
    _common(g)
    p.set_defaults(handler=run_train)


def _add_sample(commands) -> None:
    p = commands.add_parser("sample", help="draw samples from a trained run (PNG or NPZ)",
                            description="Draw samples x = f⁻¹(z), z ~ N(0, T²I), from a trained run. Draws whose "
                            "x is not finite (the flow's inverse overflowed) are left out and counted on stderr "
                            "(and in FILE.npz: n_requested, nonfinite_index); none finite is an error. A "
                            "class-conditional run samples p(x | y): --class K, or a grid with one row per "
                            "class; a run conditioned on a float context samples at the contexts of its first "
                            "N test rows.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train or demo")
    p.add_argument("--n", type=_positive_int, default=64, metavar="N", help="samples (default: %(default)s)")
    p.add_argument("--temperature", type=_positive_float, default=1.0, metavar="T",
                   help="prior temperature (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="default: %(default)s")
    _params_option(p)
    p.add_argument("--class", dest="label", type=_nonneg_int, metavar="K",
                   help="class-conditional run (--ycond): samples of class K; without it, one row per class "
                   "(ceil(N / classes) samples each)")
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.npz (default: DIR/samples.png)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never a run's own files)")
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
    _params_option(p)
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.npz (default: DIR/interpolation.png)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never a run's own files)")
    _common(p)
    p.set_defaults(handler=run_interpolate)


def _add_translate(commands) -> None:
    p = commands.add_parser("translate", help="move held-out images of one class towards another (class-conditional "
                            "runs)", description="Encode held-out (test) images of class --from, move each latent "
                            "along the direction between the mean latents of the training images of --to and of "
                            "--from, and decode --steps frames from t = 0 (the image) to t = 1 (the whole class "
                            "difference); a flow that takes the class decodes frame t with the blended one-hot "
                            "label. Writes one row per image. Needs a run trained with --ycond on images.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train --ycond or demo")
    p.add_argument("--from", dest="source", required=True, type=_nonneg_int, metavar="A", help="the images' class")
    p.add_argument("--to", dest="target", required=True, type=_nonneg_int, metavar="B", help="the class to move towards")
    p.add_argument("--n", type=_positive_int, default=6, metavar="M",
                   help="held-out images of class A (the first M of the test split; default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=8, metavar="S", help="frames per image, ≥ 2 (default: %(default)s)")
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.npz (default: DIR/translation_A_to_B.png)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never a run's own files)")
    _params_option(p)
    _common(p)
    p.set_defaults(handler=run_translate)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="held-out NLL (and bits/dim for images) of a trained run",
                            description="Mean NLL (nats per example) of a run's best parameters on its held-out "
                            "test split, another split, or other data; bits/dim and the independent-pixel "
                            "baseline for images; the Gaussian baseline (and the true NLL for 8 Gaussians) for vectors.")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by train or demo")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="default: %(default)s")
    p.add_argument("--data", metavar="NAME|PATH", help="evaluate on all of this data instead of a split")
    p.add_argument("--data-key", metavar="KEY", help="array name inside a .npz with several arrays")
    p.add_argument("--n", type=_positive_int, metavar="N", help="--data NAME (2-D): points drawn (default 5000)")
    p.add_argument("--seed", type=_seed, default=12345, metavar="S", help="--data: seed for drawing/dequantising")
    _params_option(p)
    _common(p)
    p.set_defaults(handler=run_eval)


def _params_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", choices=("best", "ema", "raw"), default="best",
                   help="best (default): the parameters the run selected (best validation, else the latest; for a "
                   "run trained with --ema these are the averaged ones); ema: the latest moving average; raw: the "
                   "optimiser's latest parameters")


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


def _warn(command: str, message: str) -> None:
    print(f"rawflow {command}: warning: {message}", file=sys.stderr)


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


def _output(command: str, args, default_name: str) -> tuple[str, str] | None:
    """``(path, ".png" | ".npz")`` for ``--out`` (default ``DIR/default_name``), or ``None`` after
    printing why not."""
    path = args.out if args.out is not None else os.path.join(args.run, default_name)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".npz"):
        _err(command, f"--out must end in .png or .npz, got {path!r}")
        return None
    if ext == ".png" and not _have_matplotlib(command):
        return None
    return path, ext


def _check_output(path: str, args, cfg: dict) -> None:
    """Raise ``OutputError`` unless ``path`` may be written now: writable, not a run's own file or
    its data, not an existing file without ``--force`` (:func:`rawflow.app.files.check_new_output`)."""
    from . import files

    data = cfg["data"] if cfg["data"].endswith((".npy", ".npz")) else ""
    files.check_new_output(path, force=args.force, protect=(data,))


def _number(value, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _class_summary(metrics: dict) -> str:
    """The class-conditional figures of a ycond run (empty for another run)."""
    if "test_bayes_accuracy" not in metrics:
        return ""
    text = ""
    if "test_marginal_bits_per_dim" in metrics:
        text += f"; labels unknown (uniform class prior) {_number(metrics['test_marginal_bits_per_dim'])} bits/dim"
    else:
        text += f"; labels unknown (uniform class prior) NLL {_number(metrics['test_marginal_nll'])}"
    text += f"; accuracy: argmax_y p(x | y) {_number(metrics['test_bayes_accuracy'], '.3f')}"
    if "test_classifier_accuracy" in metrics:
        text += f", classifier head {_number(metrics['test_classifier_accuracy'], '.3f')}"
    return text


def _summary(metrics: dict) -> str:
    return _which_parameters(metrics) + _held_out(metrics)


def _which_parameters(metrics: dict) -> str:
    """Which parameters the held-out figures come from: the best-validation ones, restored."""
    best, steps = metrics.get("best_step"), metrics.get("steps")
    if metrics.get("best_val_nll") is None or best is None:
        return ""
    stop = f", stopped early at step {steps}" if metrics.get("stopped") else f" of {steps}"
    return f"best validation NLL at step {best}{stop}; its parameters are restored for the figures below\n"


def _held_out(metrics: dict) -> str:
    if "test_bits_per_dim" in metrics:
        given = " given the labels" if "test_bayes_accuracy" in metrics else ""
        text = (f"held-out test: {_number(metrics['test_bits_per_dim'])} bits/dim{given} (NLL "
                f"{_number(metrics['test_nll'])} nats){_class_summary(metrics)}; independent-pixel baseline "
                f"{_number(metrics['test_baseline_bits_per_dim'])} bits/dim")
        if metrics.get("evaluated") == "ema":
            text += (f"; averaged parameters (EMA {metrics['ema']:g}), the raw ones "
                     f"{_number(metrics.get('raw_test_bits_per_dim'))} bits/dim")
        if metrics.get("test_bits_per_dim_note"):
            text += f"\nnote: {metrics['test_bits_per_dim_note']}"
        return text
    if "test_nll" in metrics:
        text = f"held-out test NLL {_number(metrics['test_nll'])} nats; full-covariance Gaussian "
        text += (_number(metrics["test_gaussian_nll"]) if metrics.get("test_gaussian_nll") is not None
                 else f"n/a ({metrics.get('test_gaussian_note', 'not computed')})")
        if "test_true_nll" in metrics:
            text += f"; true density {_number(metrics['test_true_nll'])}"
        return text + _class_summary(metrics)
    return "no test split (--test-fraction 0); see metrics.json"


# --------------------------------------------------------------------------------------- train
OPTION_KEYS = ("data_key", "n_samples", "val_fraction", "test_fraction", "preprocess", "logit_alpha", "optimizer",
               "lr", "momentum", "schedule", "warmup", "batch_size", "steps", "clip", "backend", "device", "dtype",
               "seed", "eval_every", "patience", "checkpoint_every", "n_bits", "ema", "ycond", "context", "weight_y")
ARCH_OPTIONS = {"couplings": "n_couplings", "hidden": "hidden", "scale": "scale", "activation": "activation",
                "K": "K", "L": "L", "width": "width", "coupling": "coupling", "permutation": "permutation",
                "learn_top": "learn_top", "blocks": "blocks", "variant": "variant", "ycond_splits": "split_prior"}


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
    if given.get("patience") == 0 and cfg.get("patience") is None:
        given.pop("patience")  # --patience 0 (never) is what a config's null says
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
    """The run's config from the command line; :class:`RunError` (or ``CheckpointError``, or an
    :class:`~rawflow.app.files.OutputError` for the folder) if it cannot start."""
    from . import files
    from .runs import RunError, has_checkpoint, make_config

    if not args.out:
        raise RunError("--out must name a folder")
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise RunError(f"--out {args.out!r} exists and is not a folder")
    if args.resume:
        if not has_checkpoint(args.out):
            raise RunError(f"--resume: no checkpoint in {args.out}")
        return _resume_config(args)
    if args.model is None or args.data is None:
        raise RunError("--model and --data are required (unless --resume)")
    files.check_fresh_run_folder(args.out)
    try:
        return make_config(_train_options(args), flags={k: _flag(k) for k in ARCH_OPTIONS.values()})
    except ImportError as exc:  # the digits need scikit-learn
        raise RunError(str(exc)) from exc


def _train_warnings(args, cfg: dict) -> list[str]:
    """Options given on the command line that have no effect in this combination."""
    out = []
    if args.momentum is not None and cfg["optimizer"] != "sgd":
        out.append(f"--momentum applies to --optimizer sgd only; the {cfg['optimizer']} run ignores it")
    if cfg["warmup"] > cfg["steps"]:
        out.append(f"--warmup {cfg['warmup']} is longer than the run's {cfg['steps']} steps: the learning rate "
                   f"never reaches --lr (it peaks at {cfg['steps'] / cfg['warmup']:.3g}× of it)")
    if args.patience and cfg["val_fraction"] == 0:
        out.append("--patience needs a validation split")
    return out


def _lock_run_folder(args, lock: contextlib.ExitStack) -> None:
    """Take the run folder's lock into ``lock`` (rank 0 only under MPI: it alone writes there) and
    check again under it: another process may have started, finished or moved a run meanwhile."""
    from . import files
    from .runs import RunError, has_checkpoint

    lock.enter_context(files.run_lock(args.out))  # FolderBusy (exit 2) while another process trains here
    if args.resume and not has_checkpoint(args.out):
        raise RunError(f"--resume: no checkpoint in {args.out}")
    if not args.resume:
        files.check_fresh_run_folder(args.out)


def run_train(args: argparse.Namespace) -> int:
    """Train alone, or as one of the ranks ``mpiexec`` started (:mod:`rawflow.distributed`).

    Under MPI every rank validates the command line itself and the ranks agree before rank 0 writes
    anything (:func:`rawflow.distributed.parallel.together`): errors that every rank reaches
    together are printed once, by rank 0, and end the job normally, while a rank-local failure (a
    collective past ``--comm-timeout``, a crash) is printed by the rank that saw it and ends every
    rank through ``MPI_Abort``. Rank 0 alone holds the run folder's lock.
    """
    from ..distributed import CommError, LaunchError, ReplicaDivergence, for_device, from_environment, together
    from ..training.checkpoint import CheckpointError
    from .runs import RunDiverged, RunError, check_launch, run_training

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

    # Errors a rank may meet before training; under MPI each is shared with every rank (an OSError,
    # e.g. a busy or foreign run folder, arrives on the other ranks as a RunError with its message).
    startup = (RunError, CheckpointError, OSError)
    lock = contextlib.ExitStack()
    try:
        try:
            cfg = together(comm, lambda: _train_config(args), startup)
        except CheckpointError as exc:  # the saved config.json / checkpoint could not be used
            return fail(str(exc), EXIT_FAILED)
        if lead:
            for message in _train_warnings(args, cfg):
                _warn("train", message)
        comm = for_device(comm, cfg["device"])
        # before the lock creates the folder, so that a bad launch writes nothing (run_training checks
        # again for callers of the API: one cheap collective)
        check_launch(cfg, args.out, args.resume, comm)
        with lock:
            together(comm, lambda: _lock_run_folder(args, lock) if lead else None, startup)
            if lead and not args.quiet:
                arch = ", ".join(f"{k}={v}" for k, v in cfg["arch"].items())
                ranks = f", {comm.size} processes (batch {cfg['batch_size'] // comm.size} each)" if comm.size > 1 else ""
                pre = f", {cfg['preprocess']} preprocessing" if cfg["kind"] == "image" and cfg["preprocess"] else ""
                stop = (f", early stopping after {cfg['patience']} evaluations without improvement"
                        if cfg["patience"] else "")
                extra = (f", {cfg['n_bits']}-bit data" if cfg.get("n_bits") is not None else "") + (
                    f", EMA {cfg['ema']:g}" if cfg.get("ema") is not None else "")
                print(f"rawflow train: {cfg['model']} ({arch}) on {cfg['data']} {tuple(cfg['event_shape'])}{pre}{extra}, "
                      f"splits {cfg['split_sizes']}, {cfg['steps']} steps{stop}, {cfg['optimizer']} lr {cfg['lr']}, "
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
            raise  # main() reports it in one line (OSError: the path; anything else: exit 70, --debug)
        import traceback

        traceback.print_exc()
        return _abort(comm, f"rank {comm.rank} of {comm.size} failed ({type(exc).__name__}: {exc}); the last "
                      f"checkpoint in {args.out} is intact (continue with --resume)", EXIT_FAILED)
    if lead:
        print(_summary(metrics))
        if not args.quiet:
            print(f"wrote {args.out}/config.json, checkpoint.safetensors, metrics.json, loss.png")
    return EXIT_OK


def _abort(comm, message: str, code: int) -> int:
    """Print this rank's failure, then end every rank (pending collectives cannot be finalised)."""
    _err("train", message)
    sys.stderr.flush()
    sys.stdout.flush()
    comm.abort(code)
    return code


# ------------------------------------------------------------------------ sample / interpolate
def _run_config(command: str, run_dir: str):
    """The run's config (cheap: no checkpoint read), or an exit code after printing why not."""
    from .runs import RunError, read_config

    try:
        return read_config(run_dir)
    except RunError as exc:
        _err(command, str(exc))
        return EXIT_USAGE


def _run_data(command: str, cfg: dict):
    """The run's data (checked to be what it was trained on), or ``None`` after printing why not."""
    from .runs import RunError, load_run_data

    try:
        return load_run_data(cfg)
    except RunError as exc:
        _err(command, str(exc))
        return None


def _load_run(command: str, run_dir: str, which: str = "best"):
    """``(params, model, cfg, step)``, or an exit code after printing why the run cannot be used."""
    from ..training.checkpoint import CheckpointError
    from .runs import RunError, load_params

    try:
        return load_params(run_dir, which=which)
    except CheckpointError as exc:
        _err(command, str(exc))
        return EXIT_FAILED
    except RunError as exc:
        _err(command, str(exc))
        return EXIT_USAGE


def _size_error(command: str, check, *args) -> bool:
    try:
        check(*args)
    except ValueError as exc:
        _err(command, str(exc))
        return True
    return False


def _sample_count(cfg: dict, args) -> int:
    """How many samples ``rawflow sample`` draws (a grid per class rounds up to full rows)."""
    if cfg.get("ycond") and args.label is None:
        k = cfg["n_classes"]
        return k * -(-args.n // k)
    return args.n


def _finite_samples(model, params, rng, n: int, temperature: float, y=None):
    """``(x, dropped)``: the finite samples of ``n`` draws and the indices of the others.

    Rule (documented in ``rawflow sample --help``): a draw whose ``x = f⁻¹(z)`` is not finite is
    left out and counted, never redrawn; redrawing would sample the model conditioned on finiteness
    and hide how often its inverse overflows, which a user checking a model needs to see.
    """
    from .._array import to_numpy

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        conditions = {} if y is None else {"y": y}  # an unconditional model is called as before
        x = to_numpy(model.sample(params, rng, n, temperature=temperature, **conditions))
    ok = np.isfinite(x.reshape(n, -1)).all(axis=1)
    return x[ok], np.flatnonzero(~ok)


def to_host(a):
    from .._array import to_numpy

    return to_numpy(a)


def _sample_conditions(cfg: dict, args):
    """``(y, columns)`` for ``rawflow sample``: ``y`` the labels (or context rows) to sample at, ``None``
    for an unconditional run; ``columns`` the grid width of a one-row-per-class grid, else ``None``."""
    from .runs import RunError, conditioning, eval_labels, load_run_data

    kind = conditioning(cfg)
    if args.label is not None and kind != "labels":
        raise RunError("--class needs a class-conditional run (trained with --ycond)")
    if kind == "labels":
        k = cfg["n_classes"]
        if args.label is not None:
            if args.label >= k:
                raise RunError(f"--class {args.label}: the run has classes 0…{k - 1}")
            return np.full(args.n, args.label, dtype=np.int64), None
        per = -(-args.n // k)
        return np.repeat(np.arange(k, dtype=np.int64), per), per
    if kind == "context":
        data = load_run_data(cfg)
        c = eval_labels(cfg, data, "test")
        if c is None or len(c) == 0:
            raise RunError("the run has no test split whose context rows the samples could take")
        return c[:args.n], None
    return None, None


def run_sample(args: argparse.Namespace) -> int:
    from . import files, sizes

    out = _output("sample", args, "samples.png")
    if out is None:
        return EXIT_USAGE
    out, ext = out
    cfg = _run_config("sample", args.run)
    if isinstance(cfg, int):
        return cfg
    if args.label is not None and not cfg.get("ycond"):
        _err("sample", "--class needs a class-conditional run (trained with --ycond)")
        return EXIT_USAGE
    if args.label is not None and args.label >= cfg["n_classes"]:
        _err("sample", f"--class {args.label}: the run has classes 0…{cfg['n_classes'] - 1}")
        return EXIT_USAGE
    _check_output(out, args, cfg)
    if _size_error("sample", sizes.check_sample_sizes, _sample_count(cfg, args), cfg, ext == ".png"):
        return EXIT_USAGE
    with _blas_threads(args.threads):
        loaded = _load_run("sample", args.run, args.params)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .runs import quantize

        from .runs import RunError

        rng = np.random.default_rng(args.seed)
        try:
            y, rows = _sample_conditions(cfg, args)
        except RunError as exc:
            _err("sample", str(exc))
            return EXIT_USAGE
        n = args.n if y is None else len(y)
        x, dropped = _finite_samples(model, params, rng, n, args.temperature, y)
        if len(x) == 0:
            _err("sample", f"all {args.n} samples are non-finite (the inverse overflowed; try a lower --temperature)")
            return EXIT_FAILED
        if len(dropped):
            _warn("sample", f"{len(dropped)} of {n} samples are non-finite (the inverse overflowed) and are "
                            f"left out; {len(x)} written")
        images = cfg["kind"] == "image"
        kept = np.setdiff1d(np.arange(n), dropped)
        if ext == ".npz":
            arrays = {"samples": x, "n_requested": np.asarray(n), "nonfinite_index": dropped}
            if y is not None:
                arrays["labels" if y.ndim == 1 else "context"] = to_host(y)[kept]
            if images:
                arrays["pixels"] = quantize(cfg, x)
            files.write_with(out, lambda f: np.savez(f, **arrays))
        else:
            from . import plots

            title = f"{cfg['model']} on {os.path.basename(cfg['data'])}, step {step}, T = {args.temperature:g}"
            if images and rows is not None:  # one row per class; a dropped draw leaves its cell blank
                pixels = np.ones((n,) + x.shape[1:])
                pixels[kept] = quantize(cfg, x) / (cfg["n_bins"] - 1)
                plots.sample_grids(out, {f"one row per class 0…{cfg['n_classes'] - 1}": pixels}, ncol=rows,
                                   title=title)
            elif images:
                label = "" if y is None else f" of class {args.label}"
                pixels = quantize(cfg, x) / (cfg["n_bins"] - 1)
                plots.sample_grids(out, {f"{len(x)} samples{label}": pixels}, ncol=int(math.ceil(math.sqrt(len(x)))),
                                   title=title)
            else:
                from .runs import load_run_data

                plots.scatter(out, {"test data": load_run_data(cfg).test, "samples": x}, title=title)
    print(f"wrote {out}")
    return EXIT_OK


def run_interpolate(args: argparse.Namespace) -> int:
    from . import files, sizes

    if args.steps < 2:
        _err("interpolate", "--steps must be at least 2")
        return EXIT_USAGE
    out = _output("interpolate", args, "interpolation.png")
    if out is None:
        return EXIT_USAGE
    out, ext = out
    cfg = _run_config("interpolate", args.run)
    if isinstance(cfg, int):
        return cfg
    _check_output(out, args, cfg)
    pairs = 1 if args.index is not None else args.pairs
    if _size_error("interpolate", sizes.check_interpolation_sizes, args.steps, pairs, cfg, ext == ".png"):
        return EXIT_USAGE
    with _blas_threads(args.threads):
        loaded = _load_run("interpolate", args.run, args.params)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .._array import to_numpy
        from .runs import device_namespace, eval_inputs, eval_labels, quantize

        data = _run_data("interpolate", cfg)
        if data is None:
            return EXIT_USAGE
        n = len(data.test)
        if args.index is not None:
            first, second = [args.index[0]], [args.index[1]]
        else:
            first, second = list(range(0, 2 * args.pairs, 2)), list(range(1, 2 * args.pairs, 2))
        if max(first + second) >= n:
            _err("interpolate", f"the test split has {n} inputs; indices up to {max(first + second)} asked for")
            return EXIT_USAGE
        xp = device_namespace(cfg["device"])
        x, y = eval_inputs(cfg, data, "test", xp), eval_labels(cfg, data, "test", xp)
        y0, y1 = (None, None) if y is None else (y[first], y[second])
        frames = to_numpy(model.interpolate(params, x[first], x[second], args.steps, y0, y1))  # (S, M, *event)
        if ext == ".npz":
            arrays = {"frames": frames, "index_a": np.asarray(first), "index_b": np.asarray(second)}
            if cfg["kind"] == "image":
                arrays["pixels"] = quantize(cfg, frames)
            files.write_with(out, lambda f: np.savez(f, **arrays))
        else:
            from . import plots

            if cfg["kind"] == "image":
                pixels = quantize(cfg, frames)
                plots.interpolation_strip(out, pixels / (cfg["n_bins"] - 1))
            else:
                plots.paths_2d(out, data.test, frames)
    print(f"wrote {out}")
    return EXIT_OK


# ----------------------------------------------------------------------------------- translate
def run_translate(args: argparse.Namespace) -> int:
    from . import files, sizes

    if args.steps < 2:
        _err("translate", "--steps must be at least 2")
        return EXIT_USAGE
    if args.out is None:
        args.out = os.path.join(args.run, f"translation_{args.source}_to_{args.target}.png")
    out = _output("translate", args, "")
    if out is None:
        return EXIT_USAGE
    out, ext = out
    cfg = _run_config("translate", args.run)
    if isinstance(cfg, int):
        return cfg
    if not cfg.get("ycond") or cfg["kind"] != "image":
        _err("translate", f"{args.run} is not a class-conditional image run (train it with --model glow --ycond)")
        return EXIT_USAGE
    k = cfg["n_classes"]
    for flag, value in (("--from", args.source), ("--to", args.target)):
        if value >= k:
            _err("translate", f"{flag} {value}: the run has classes 0…{k - 1}")
            return EXIT_USAGE
    if args.source == args.target:
        _err("translate", f"--from and --to are both {args.source}: the class direction would be zero")
        return EXIT_USAGE
    _check_output(out, args, cfg)
    if _size_error("translate", sizes.check_interpolation_sizes, args.steps, args.n, cfg, ext == ".png"):
        return EXIT_USAGE
    with _blas_threads(args.threads):
        loaded = _load_run("translate", args.run, args.params)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .runs import device_namespace, eval_inputs, quantize
        from .translate import class_means, translate

        data = _run_data("translate", cfg)
        if data is None:
            return EXIT_USAGE
        have = np.bincount(data.train_y, minlength=k)
        missing = [c for c in (args.source, args.target) if have[c] == 0]
        if missing:
            _err("translate", f"the training split holds no image of class {missing[0]}: its mean latent is undefined")
            return EXIT_USAGE
        index = np.flatnonzero(data.test_y == args.source)[:args.n]
        if len(index) == 0:
            _err("translate", f"the test split holds no image of class {args.source}")
            return EXIT_USAGE
        if len(index) < args.n:
            _warn("translate", f"the test split holds {len(index)} image(s) of class {args.source}; using those")
        xp = device_namespace(cfg["device"])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            means = class_means(model, params, eval_inputs(cfg, data, "train", xp), data.train_y, k)
            x = eval_inputs(cfg, data, "test", xp)[xp.asarray(index)]
            frames = to_host(translate(model, params, x, args.source, args.target, means, args.steps))
        if not np.isfinite(frames).all():
            _warn("translate", "some frames are not finite (the inverse overflowed); they are drawn clipped")
        pixels = quantize(cfg, frames)
        if ext == ".npz":
            arrays = {"frames": frames, "pixels": pixels, "test_index": index, "source": np.asarray(args.source),
                      "target": np.asarray(args.target), "direction": means[args.target] - means[args.source]}
            files.write_with(out, lambda f: np.savez(f, **arrays))
        else:
            from . import plots

            plots.interpolation_strip(out, pixels / (cfg["n_bins"] - 1),
                                      title=f"class {args.source} → {args.target}: f⁻¹(f(x) + t·(m_{args.target} − "
                                      f"m_{args.source})), t = 0…1 (step {step})")
    print(f"wrote {out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    from ..data.datasets import DATASETS
    from . import files

    if args.n is not None and args.data not in DATASETS:
        _warn("eval", "--n sets the points drawn for --data NAME (a 2-D density); "
                      + ("without --data it is ignored" if args.data is None else f"--data {args.data} ignores it"))
    with _blas_threads(args.threads):
        loaded = _load_run("eval", args.run, args.params)
        if isinstance(loaded, int):
            return loaded
        params, model, cfg, step = loaded
        from .runs import RunError, device_namespace, held_out_metrics, load_run_data

        try:
            data = load_run_data(cfg)
            split = args.split
            if args.data is not None:
                data, split = _other_data(cfg, args, data), "test"
        except RunError as exc:
            _err("eval", str(exc))
            return EXIT_USAGE
        if len(getattr(data, split)) == 0:
            _err("eval", f"--data {args.data} holds no examples" if args.data is not None
                 else f"the run has no {split} split")
            return EXIT_USAGE
        xp = device_namespace(cfg["device"])
        eval_cfg = dict(cfg, seed=args.seed) if args.data is not None else cfg
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            metrics = held_out_metrics(eval_cfg, model, params, data, split, xp, prefix="")
    report = {"run": args.run, "step": step, "params": args.params, "data": args.data or cfg["data"],
              "split": split if args.data is None else "all", **metrics}
    print(files.json_text(report), end="")
    return EXIT_OK


def _other_data(cfg: dict, args, run_data):
    """All of ``--data`` as the test split of a :class:`~rawflow.app.runs.Data` shaped like the run's."""
    from ..data.datasets import DATASETS, make_2d
    from .runs import Data, RunError, read_array

    from .runs import _load_y, conditioning

    shape = tuple(cfg["event_shape"])
    name = args.data
    kind = conditioning(cfg)
    if name in DATASETS:
        x = make_2d(name, 5000 if args.n is None else args.n, np.random.default_rng(args.seed))
    elif name == "digits":
        from ..data.images import digits

        x = digits()[0]
    else:
        x = read_array(name, args.data_key or ("x" if kind and name.endswith(".npz") else None))
        if cfg["kind"] == "image" and x.ndim == 3:
            x = x[:, None]
    y = None if kind is None else _load_y({"data": name}, kind, x.shape[0])
    if kind == "labels" and y.size and y.max() >= cfg["n_classes"]:
        raise RunError(f"--data {name}: labels up to {int(y.max())}, the run models classes 0…{cfg['n_classes'] - 1}")
    if kind == "context" and y.shape[1] != cfg["context_features"]:
        raise RunError(f"--data {name}: context rows of {y.shape[1]} features, the run takes {cfg['context_features']}")
    if x.ndim < 1 or tuple(x.shape[1:]) != shape:
        raise RunError(f"--data {name}: examples of shape {tuple(x.shape[1:])}, the run models {shape}")
    if cfg["kind"] == "image":
        levels = cfg.get("data_n_bins") or cfg["n_bins"]  # n-bit runs: pixels at the data's own resolution
        if x.size and (x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= levels):
            raise RunError(f"--data {name}: need integer pixels in [0, {levels - 1}]")
        x = x.astype(np.int64)
        if cfg.get("n_bits") is not None:
            from ..data.images import reduce_bits

            x = reduce_bits(x, cfg["n_bits"], levels)[0]
    else:
        if x.dtype.kind not in "fiu":
            raise RunError(f"--data {name}: need real numbers, got dtype {x.dtype}")
        bad = ~np.isfinite(x.astype(np.float64)).all(axis=tuple(range(1, x.ndim)))
        if bad.any():
            raise RunError(f"--data {name}: {int(bad.sum())} of {len(x)} rows hold NaN or Inf "
                           f"(first at row {int(np.flatnonzero(bad)[0])})")
        x = x.astype(np.float64)
    empty = x[:0]
    return Data(name, cfg["kind"], run_data.train, empty, x, shape, cfg["n_bins"], run_data.data_n_bins,
                train_y=run_data.train_y, val_y=None if y is None else y[:0], test_y=y)


# ---------------------------------------------------------------------------------------- demo
def run_demo(args: argparse.Namespace) -> int:
    from . import files
    from .demo import run

    if not args.out:
        _err("demo", "--out must name a folder")
        return EXIT_USAGE
    if not _have_matplotlib("demo"):
        return EXIT_USAGE
    files.check_output_folder(args.out, force=args.force)
    try:
        with files.run_lock(args.out), _blas_threads(args.threads):
            return run(args.out, quick=args.quick, seed=args.seed, quiet=args.quiet, threads=args.threads)
    except KeyboardInterrupt:
        _err("demo", "interrupted")
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------- main
def _os_error(exc: OSError) -> str:
    """One line naming the path: ``PATH: what went wrong``."""
    from .files import OutputError

    if isinstance(exc, OutputError):
        return str(exc)
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {what}" + (f" (→ {exc.filename2})" if exc.filename2 else "")
    return what


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED_HELP:
        return _delegated(argv[0])(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\nrawflow: error: a command is required (e.g. 'rawflow demo')", file=sys.stderr)
        return EXIT_USAGE
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error a user can cause is one line on stderr and an exit code.

    ``OSError`` (a path that cannot be read or written, a full disk, a read-only filesystem) is
    ``rawflow COMMAND: error: PATH: reason`` with exit 2. Anything unexpected is a bug: one line
    with exit 70, and the traceback with ``--debug`` or ``RAWFLOW_DEBUG=1``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("RAWFLOW_DEBUG", "") not in ("", "0")
    while argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        return _dispatch(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        _err(command, "interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if debug:
            raise
        _err(command, _os_error(exc))
        return EXIT_USAGE
    except MemoryError:
        if debug:
            raise
        _err(command, "out of memory; choose smaller sizes")
        return EXIT_FAILED
    except Exception as exc:
        if debug:
            raise
        _err(command, f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} — a bug in "
                      "rawflow; 'rawflow --debug ...' (or RAWFLOW_DEBUG=1) shows the traceback")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
