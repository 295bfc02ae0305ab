"""Peak activation memory of a training step, measured with ``tracemalloc`` (NumPy arrays only).

NumPy reports its data buffers to ``tracemalloc``, so the traced peak during a forward + backward pass,
minus what was alive before it (parameters, data) and minus the gradients it returns, is the
activation memory the pass needed. CuPy's device memory is not traced; use ``cupy`` memory pools there.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np



def peak_step_memory(bijector, params: dict, x: np.ndarray, seed: int = 0) -> dict:
    """Run ``forward`` then ``backward`` (cotangents of a Gaussian NLL) and measure memory.

    Returns ``{"peak_bytes": traced peak minus what is alive afterwards (the gradients, the state
    before the step), "grad_bytes": the gradients' footprint, "gx": ..., "gparams": ...}``.
    """
    rng = np.random.default_rng(seed)
    glogdet = np.full(x.shape[0], -1.0 / x.shape[0], dtype=x.dtype)
    gc.collect()
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        z, _, cache = bijector.forward(params, x)
        gz = z / x.shape[0] + rng.normal(size=z.shape).astype(x.dtype)  # a dense cotangent of z's size
        del z
        gx, gparams = bijector.backward(params, cache, gz, glogdet)
        del cache, gz
        gc.collect()
        # What is still alive is the gradients: their buffers and the Python objects (dicts, array
        # headers) of the tree, which for deep flows of small layers are not negligible.
        after, peak = tracemalloc.get_traced_memory()
    finally:
        if not started:
            tracemalloc.stop()
    return {"peak_bytes": peak - after, "grad_bytes": after - base, "gx": gx, "gparams": gparams}
