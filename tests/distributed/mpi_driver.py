"""``rawflow train`` with a fault injected on one rank: ``python mpi_driver.py FAULT RANK STEP -- ARGS``.

Run under ``mpiexec``: the rank whose ``PMI_RANK`` (or ``OMPI_COMM_WORLD_RANK``) is ``RANK`` sends
itself ``SIGKILL`` (``FAULT`` = ``kill``: a crash) or ``SIGSTOP`` (``stop``: a hang) right after
global optimiser step ``STEP``; every rank otherwise runs the command line's ``train`` as usual.
"""

import os
import signal
import sys

import rawflow.app.runs as runs
from rawflow.app import cli


def main() -> int:
    fault, victim, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert sys.argv[4] == "--"
    me = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    how = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}[fault]
    original = runs.run_training

    def run_training(*args, **kwargs):
        def hook(step, loss):
            if me == victim and step == at:
                os.kill(os.getpid(), how)

        return original(*args, hook=hook, **kwargs)

    runs.run_training = run_training  # the CLI imports it from rawflow.app.runs when it runs
    return cli.main(["train", *sys.argv[5:]])


if __name__ == "__main__":
    sys.exit(main())
