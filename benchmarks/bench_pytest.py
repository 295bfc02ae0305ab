"""The operation suites under pytest-benchmark, for those who want an established harness's output.

    pip install pytest-benchmark
    pytest benchmarks/bench_pytest.py --benchmark-only                  # from the repository root
    pytest benchmarks/bench_pytest.py --benchmark-only -k "fwd+bwd and numba" --benchmark-autosave
    pytest-benchmark compare 0001 0002                                  # between saved runs
    BENCH_QUICK=1 pytest benchmarks/bench_pytest.py                     # tiny sizes

One test per (operation, case, implementation) of the coupling, ActNorm and 1×1-convolution
suites: the same operations, inputs and implementations as ``python -m benchmarks`` (users'
registrations made before collection included, e.g. in a ``conftest.py``), with pytest-benchmark's
calibration, statistics, histograms and saved-run comparisons. Each test first asserts that the
implementation agrees with rawflow's float64 reference (correctness, never time), then times it
cycling through the same rotating input sets. What this does not give is ``python -m benchmarks``'s
same-run ratios, copy-bandwidth fractions and peak memory: those need every row of a case measured
side by side, which is what the package's own harness is for. Not collected by the test suite
(``testpaths = ["tests"]``); run it by path.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

if __package__ in (None, ""):  # run by path: make the package importable by name
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import harness, runtime, suite_actnorm, suite_conv1x1, suite_coupling  # noqa: E402
    from benchmarks.registry import user_implementations  # noqa: E402
    from benchmarks.runner import Options, Skip, adapter, as_tuple, input_sets, make_context, op_args  # noqa: E402
else:
    from . import harness, runtime, suite_actnorm, suite_conv1x1, suite_coupling
    from .registry import user_implementations
    from .runner import Options, Skip, adapter, as_tuple, input_sets, make_context, op_args

QUICK = bool(os.environ.get("BENCH_QUICK"))
OPTS = Options.quick_mode(verbose=False) if QUICK else Options(verbose=False, compile=False)
runtime.prepare_environment()
if OPTS.torch:
    runtime.import_torch_first()
runtime.configure_threads(OPTS.threads)
CTX = make_context(OPTS)


def _cases():
    cpl = suite_coupling.QUICK_SIZES if QUICK else [(64, 3072), suite_coupling.TARGET_SIZE]
    act = suite_actnorm.QUICK_SIZES if QUICK else [(256, 48, 16, 16)]
    ld = suite_conv1x1.QUICK_LOGDET if QUICK else [48, 512]
    conv = suite_conv1x1.QUICK_CONV if QUICK else [(64, 48, 16, 16)]
    out = []
    for op in suite_coupling.OPERATIONS:
        out += [(op, f"{n}x{m}", (n, m), lambda o: suite_coupling.rawflow_impls(o, CTX)
                 + suite_coupling.torch_impls_for(o, CTX)) for n, m in cpl]
    for op in suite_actnorm.OPERATIONS:
        out += [(op, "x".join(map(str, s)), s, lambda o: suite_actnorm.builtin(o, CTX)) for s in act]
    out += [(suite_conv1x1.LOGDET, f"C={c}", c, lambda o: suite_conv1x1.builtin(o, CTX)) for c in ld]
    for op in (suite_conv1x1.FORWARD, suite_conv1x1.BACKWARD):
        out += [(op, "x".join(map(str, s)), s, lambda o: suite_conv1x1.builtin(o, CTX)) for s in conv]
    params = []
    for op, label, case, builtin in out:
        for impl in list(builtin(op)) + user_implementations(op.name):
            params.append(pytest.param(op, case, impl, id=f"{op.name}[{label}]-{impl.name}"))
    return params


@pytest.mark.parametrize("op, case, impl", _cases())
def test_operation(benchmark, op, case, impl):
    reason = impl.available() if impl.available is not None else None
    if reason:
        pytest.skip(reason)
    op.static_values = op.static(OPTS)
    sets = input_sets(op, case, OPTS, np.random.default_rng(OPTS.seed))
    convert, sync = adapter(impl)
    if impl.enter is not None:
        impl.enter()
    try:
        calls = [impl.make(convert(op_args(op, s)) + tuple(op.static_values)) for s in sets]
    except Skip as e:
        pytest.skip(str(e))
    ref = op.reference(tuple(np.asarray(a, dtype=np.float64) for a in op_args(op, sets[0])), OPTS)
    out = as_tuple(calls[0]())
    err = max(harness.rel_error(harness.to_numpy64(o), e, s) for o, (e, s) in zip(out, ref))
    assert err <= op.tol(OPTS.dtype), f"{impl.name}: error {err:.2e} against the float64 reference"
    cycle = itertools.cycle(calls)

    def one():
        r = next(cycle)()
        if sync is not None:
            sync()
        return r

    benchmark.extra_info.update(op=op.name, impl=impl.name, err=err, bytes=op.nbytes(op_args(op, sets[0])),
                                dtype=OPTS.dtype, threads=OPTS.threads)
    benchmark(one)
