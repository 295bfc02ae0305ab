"""GPU kernels (:mod:`rawflow.kernels.cuda_coupling`) under numba's CUDA simulator.

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if set before numba is first imported, and this test
process has imported numba already, so ``cuda_sim_check.py`` runs in a fresh interpreter: forward,
inverse and both VJPs for every scale map and both dtypes against the long-double reference path
(the term-unit bounds of ``test_kernels_cpu.py``), exact log-det cancellation, the round trip,
grid-size independence, image shapes and input validation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("cuda_sim_check.py")


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="needs an extended-precision np.longdouble oracle")
def test_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"simulator run crashed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["simulator"]
    assert not report["failures"], "\n".join(report["failures"])
    assert len(report["worst"]) >= 40  # every check ran
    try:
        import mpmath  # noqa: F401
    except ImportError:
        return
    assert len(report["stress"]) == 3  # issue 14: the stress points ran against the 60-digit oracle
