"""``mpiexec -n 2 rawflow train`` for real (MPICH from PyPI): equality with one process, resume,
faults and bad launches. Skipped where mpi4py or its ``mpiexec`` is missing (``pip install
'rawflow[mpi]'``; CI installs it). Ranks oversubscribe the 2-core machine, which MPICH allows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rawflow import tree
from rawflow.app import cli
from rawflow.app.runs import CHECKPOINT
from rawflow.training.checkpoint import load_checkpoint

pytest.importorskip("mpi4py")
MPIEXEC = Path(sys.executable).with_name("mpiexec")
if not MPIEXEC.exists():
    pytest.skip("no mpiexec next to this interpreter (pip install 'rawflow[mpi]')", allow_module_level=True)

DRIVER = Path(__file__).with_name("mpi_driver.py")
HANG_GUARD = 240  # seconds: only to turn a hang into a failure, never a timing claim
COMMON = ["--eval-every", "5", "--checkpoint-every", "5", "--quiet"]
MODELS = {
    "realnvp": ["--model", "realnvp", "--data", "two_moons", "--n-samples", "2000", "--couplings", "4",
                "--hidden", "16,16", "--batch-size", "64"],
    # float64 (images default to float32): P = 2 against one process is checked to float64 round-off
    "glow": ["--model", "glow", "--data", "digits", "--K", "2", "--L", "2", "--width", "8", "--batch-size", "32",
             "--dtype", "float64"],
}


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    return env


def mpiexec(n, *args, driver=None):
    program = [sys.executable, str(DRIVER), *driver, "--"] if driver else [sys.executable, "-m", "rawflow", "train"]
    return subprocess.run([str(MPIEXEC), "-n", str(n), *program, *args], capture_output=True, text=True,
                          timeout=HANG_GUARD, env=_env())


def alone(*args):
    assert cli.main(["train", *args]) == 0


def params_and_losses(run):
    ck = load_checkpoint(os.path.join(run, CHECKPOINT))
    return ck["params"], np.asarray(ck["history"]["loss"]), ck["step"]


def max_relative(a, b):
    worst = 0.0
    for (pa, x), (pb, y) in zip(tree.leaves(a), tree.leaves(b)):
        assert pa == pb
        worst = max(worst, float(np.abs(x - y).max()) / max(float(np.abs(x).max()), 1e-300))
    return worst


def bitwise(a, b):
    return tree.structure(a) == tree.structure(b) and all(
        np.array_equal(x, y) for (_, x), (_, y) in zip(tree.leaves(a), tree.leaves(b)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """20 steps of each model: one process (in this one) and ``mpiexec -n 2``."""
    root = tmp_path_factory.mktemp("mpi")
    out = {}
    for name, args in MODELS.items():
        one, two = str(root / f"{name}-1"), str(root / f"{name}-2")
        alone(*args, *COMMON, "--steps", "20", "--out", one)
        done = mpiexec(2, *args, *COMMON, "--steps", "20", "--out", two)
        assert done.returncode == 0, done.stderr
        out[name] = (one, two, done)
    return root, out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mpiexec_2_equals_one_process(runs, name):
    one, two, done = runs[1][name]
    p1, l1, s1 = params_and_losses(one)
    p2, l2, s2 = params_and_losses(two)
    assert s1 == s2 == 20
    assert max_relative(p1, p2) <= 1e-12  # float64: the batch sum associated per rank, nothing else
    assert np.abs(l1 - l2).max() <= 1e-12 * np.abs(l1).max()
    m1, m2 = (json.load(open(os.path.join(r, "metrics.json"))) for r in (one, two))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert abs(m1["test_nll"] - m2["test_nll"]) <= 1e-12 * abs(m1["test_nll"])  # held-out NLL, evaluated in shares
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # rank 0 alone wrote, and only the run's files
    assert done.stdout.count("held-out test") == 1  # one summary, from rank 0


def test_resume_same_p_bit_for_bit_and_other_p_to_round_off(runs):
    root, out = runs
    args = MODELS["realnvp"]
    part = str(root / "realnvp-resume")
    first = mpiexec(2, *args, *COMMON, "--steps", "10", "--out", part)
    assert first.returncode == 0, first.stderr
    other = str(root / "realnvp-resume-p1")
    import shutil

    shutil.copytree(part, other)
    again = mpiexec(2, "--resume", "--steps", "20", "--out", part, "--quiet")
    assert again.returncode == 0, again.stderr
    ref, ref_losses, _ = params_and_losses(out["realnvp"][1])
    got, losses, step = params_and_losses(part)
    assert step == 20 and bitwise(ref, got) and np.array_equal(ref_losses, losses)
    # P = 2 → 1: allowed (the saved state does not depend on P); only the association of the sums changes
    alone("--resume", "--steps", "20", "--out", other, "--quiet")
    got1, losses1, _ = params_and_losses(other)
    assert max_relative(ref, got1) <= 1e-12 and np.abs(losses1 - ref_losses).max() <= 1e-12 * np.abs(ref_losses).max()
    assert np.array_equal(losses1[:10], ref_losses[:10])


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_rank_that_dies_or_hangs_ends_the_run_and_the_checkpoint_resumes(runs, fault):
    root, out = runs
    run = str(root / f"realnvp-{fault}")
    # rank 1 dies (SIGKILL) or hangs (SIGSTOP) right after step 12; the last checkpoint is step 10
    done = mpiexec(2, *MODELS["realnvp"], *COMMON, "--steps", "20", "--out", run, "--comm-timeout", "3",
                   driver=[fault, "1", "12"])
    assert done.returncode != 0
    if fault == "stop":  # rank 0 gives up waiting, says why, and MPI_Abort ends the stopped rank too
        assert "rank 0 of 2: the gradient sum did not complete within 3 s" in done.stderr, done.stderr
        assert "the last checkpoint in" in done.stderr and done.returncode == 1
    _, _, step = params_and_losses(run)  # intact: the SHA-256 inside verifies
    assert step == 10
    again = mpiexec(2, "--resume", "--out", run, "--quiet")
    assert again.returncode == 0, again.stderr
    ref, ref_losses, _ = params_and_losses(out["realnvp"][1])
    got, losses, _ = params_and_losses(run)
    assert bitwise(ref, got) and np.array_equal(ref_losses, losses)


def test_bad_launches_are_refused_with_a_reason(tmp_path):
    args = [*MODELS["realnvp"][:-1], "33", "--steps", "2", "--quiet"]
    done = mpiexec(2, *args, "--out", str(tmp_path / "odd"))
    assert done.returncode == 2
    assert done.stderr.count("batch size 33 is not divisible by the 2 processes") == 1, done.stderr
    assert not os.path.exists(tmp_path / "odd")
    # MPMD: two ranks with different learning rates
    common = [*MODELS["realnvp"], "--steps", "2", "--quiet", "--out", str(tmp_path / "mixed")]
    rank = [sys.executable, "-m", "rawflow", "train", *common]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *rank, "--lr", "0.001", ":", "-n", "1", *rank, "--lr", "0.002"],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=_env())
    assert done.returncode == 1
    assert "the ranks were launched with different run configurations: rank 1 differs from rank 0 in lr" in done.stderr
    assert not os.path.exists(tmp_path / "mixed")
    # one rank cannot read its data: every rank stops at once, rank 0 says why (no wait for a deadline)
    missing = str(tmp_path / "nowhere.npy")
    other = [sys.executable, "-m", "rawflow", "train", "--model", "realnvp", "--steps", "2", "--quiet",
             "--out", str(tmp_path / "lost")]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *other, "--data", "two_moons", ":", "-n", "1", *other,
                           "--data", missing], capture_output=True, text=True, timeout=HANG_GUARD, env=_env())
    assert done.returncode == 2 and "(on rank 1 of 2)" in done.stderr and "nowhere.npy" in done.stderr, done.stderr
    assert done.stderr.count("rawflow train: error") == 1
    # a launcher of another MPI (its variables set) with this Python's MPICH: every process would be alone
    env = {**_env(), "OMPI_COMM_WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "rawflow", "train", *common], capture_output=True,
                          text=True, timeout=HANG_GUARD, env=env)
    assert done.returncode == 2 and "the launcher started 2 processes but MPI" in done.stderr, done.stderr
