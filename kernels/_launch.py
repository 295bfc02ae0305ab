"""Running a parallel Numba kernel on the calling thread alone when the call is small."""

from __future__ import annotations

import numba


def launch(kernel, size: int, serial_below: int, *args) -> None:
    """``kernel(*args)``, on the calling thread alone when ``size`` is below ``serial_below``:
    waking the thread pool costs more than a small call's work, and on a busy machine a parallel
    region can wait a whole scheduler time slice for its second thread. The kernels' results do
    not depend on the thread count, so this changes timing only."""
    threads = numba.get_num_threads()
    if size >= serial_below or threads == 1:
        kernel(*args)
        return
    numba.set_num_threads(1)  # thread-local: other Python threads keep their setting
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(threads)
