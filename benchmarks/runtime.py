"""Thread pools: one explicit thread count for every runtime, and no spin-waiting between them.

A process that runs NumPy (OpenBLAS), SciPy (a second OpenBLAS), Numba (OpenMP) and PyTorch
(its own OpenMP) has four thread pools. Measured on the 2-core machine the README's tables come
from, with other jobs running:

* once a Numba ``parallel=True`` kernel had run, OpenMP's default wait policy (worker threads
  spin after each parallel region) slowed the *NumPy* Glow training step that followed ~10×
  (0.3 s → 3.4 s); a tiny Glow step with the coupling kernels took 120 ms instead of 0.4 ms.
  ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep at once) removed it. It must be in the environment
  before Numba's or PyTorch's OpenMP runtime loads, so :func:`prepare_environment` sets it
  (unless the user has set it) before anything imports them;
* NumPy's and SciPy's OpenBLAS copies, two threads each, spin-waiting against each other: the
  inverse of a small Glow (GEMMs from NumPy, triangular solves from SciPy) took 60 ms instead of
  0.4 ms. SciPy's copy serves only the LU layer's ``C × C`` triangular solves in rawflow, so
  :func:`configure_threads` gives it one thread.

* PyTorch ships its own ``libgomp.so.1``, the same soname as the system OpenMP runtime Numba's
  ``omp`` threading layer loads. Whichever loads first serves both: with Numba's first, PyTorch
  ran the coupling's forward 3× slower (3.5 ms → 11 ms at 256×12288; Numba's kernels were the
  same either way). :func:`import_torch_first` imports PyTorch before Numba's pool starts.

Every other pool gets ``--threads``: Numba's default, PyTorch's intra-op threads, NumPy's BLAS
(with ``threadpoolctl`` when installed). What was set is recorded in the results file.
"""

from __future__ import annotations

import os
import sys

_ENV_SET: dict = {}


def prepare_environment() -> dict:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; say whether it can still act
    (it cannot once Numba's OpenMP pool or PyTorch has been loaded in this process)."""
    if not _ENV_SET:
        loaded = [m for m in ("torch", "numba.np.ufunc.omppool") if m in sys.modules]
        user = os.environ.get("OMP_WAIT_POLICY")
        if user is None:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _ENV_SET.update({"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"], "set_by": "user" if user else "benchmarks",
                         "effective": not loaded, "already_loaded": loaded})
    return dict(_ENV_SET)


def import_torch_first() -> dict:
    """Import PyTorch now, before Numba's OpenMP runtime loads (see the module doc), if installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"torch": "not installed"}
    late = "numba.np.ufunc.omppool" in sys.modules and "torch" not in sys.modules
    import torch  # noqa: F401

    return {"torch": torch.__version__, "torch_after_numba_omp": late}


def configure_threads(threads: int, blas_threads: int | None = None) -> dict:
    """Numba's default thread count and the BLAS pools (see the module doc); returns what was done."""
    info = {"threads": threads}
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        info["numba_threads"] = None
    blas = threads if blas_threads is None else blas_threads
    try:
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401  (load SciPy's BLAS so threadpoolctl sees it)
        from threadpoolctl import ThreadpoolController

        pools = []
        for lib in ThreadpoolController().lib_controllers:
            if lib.user_api != "blas":
                continue
            n = 1 if "scipy.libs" in (lib.filepath or "") or os.sep + "scipy" + os.sep in (lib.filepath or "") else blas
            lib.set_num_threads(n)
            pools.append({"library": os.path.basename(lib.filepath or lib.prefix), "threads": n})
        info["blas"] = pools
    except ImportError:
        info["blas"] = "threadpoolctl not installed: BLAS pools left at their defaults"
    return info
