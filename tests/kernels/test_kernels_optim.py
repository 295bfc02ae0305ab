"""The fused Adam kernel against the reference expressions: identical bits, every leaf shape,
both dtypes, many steps, extreme gradients; inputs untouched; the backend choice is explicit."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawflow import Adam, tree

pytest.importorskip("numba")


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _params(rng, dtype):
    return {"a": {"w": rng.normal(size=(5, 3)).astype(dtype), "b": rng.normal(size=5).astype(dtype)},
            "conv": rng.normal(size=(2, 3, 3, 3)).astype(dtype), "scalar": rng.normal(size=(1,)).astype(dtype),
            "empty": np.zeros((0, 4), dtype=dtype),
            "strided": rng.normal(size=(4, 6)).astype(dtype)[:, ::2]}


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31),
       st.sampled_from([1e-3, 2e-3, 0.3]), st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)]),
       st.sampled_from([1e-8, 0.0, 1e-3]), st.sampled_from([1.0, 1e-20, 1e20]))
def test_fused_adam_equals_the_reference_bit_for_bit(dtype, seed, lr, betas, eps, gscale):
    rng = np.random.default_rng(seed)
    ref, fused = Adam(lr, betas, eps, backend="reference"), Adam(lr, betas, eps, backend="numba")
    p_ref = p_fused = _params(rng, dtype)
    s_ref, s_fused = ref.init(p_ref), fused.init(p_fused)
    for step in range(4):
        with np.errstate(over="ignore"):  # 1e20² overflows float32: both must agree on inf too
            grads = tree.map(lambda a: (rng.normal(size=a.shape) * gscale).astype(dtype), p_ref)
        keep = tree.map(lambda a: a.copy(), {"p": p_fused, "g": grads})
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # _step: the unchecked update (an overflowed v is the point here, and update refuses it)
            p_ref, s_ref = ref._step(p_ref, grads, s_ref)
            p_new, s_fused = fused._step(p_fused, grads, s_fused)
        for path, a in tree.leaves(keep):
            assert np.array_equal(_bits(a), _bits(tree.get({"p": p_fused, "g": grads}, path))), f"{path} modified"
        p_fused = p_new
        for path, a in tree.leaves({"p": p_ref, "m": s_ref["m"], "v": s_ref["v"]}):
            b = tree.get({"p": p_fused, "m": s_fused["m"], "v": s_fused["v"]}, path)
            assert b.dtype == a.dtype and b.shape == a.shape, path
            assert np.array_equal(_bits(a), _bits(b)), f"step {step + 1}: {path} differs"
        assert int(s_fused["step"]) == step + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_over_zero_is_nan_as_in_the_reference(dtype):
    """eps = 0 with a zero gradient and state: 0/0 is NaN in both (IEEE division, no exception)."""
    p = {"w": np.ones(37, dtype=dtype)}
    g = {"w": np.zeros(37, dtype=dtype)}
    outs = []
    for backend in ("reference", "numba"):
        opt = Adam(1e-3, eps=0.0, backend=backend)
        with np.errstate(invalid="ignore"):
            outs.append(opt._step(p, g, opt.init(p))[0]["w"])
    assert np.all(np.isnan(outs[0])) and np.all(np.isnan(outs[1]))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(0)
    p = _params(rng, np.float64)
    opt = Adam(1e-2, backend="numba")
    s = opt.init(p)
    g = tree.map(lambda a: rng.normal(size=a.shape), p)
    before = tree.map(lambda a: a.copy(), {"p": p, "g": g, "m": s["m"], "v": s["v"]})
    opt.update(p, g, s)
    for path, a in tree.leaves({"p": p, "g": g, "m": s["m"], "v": s["v"]}):
        assert np.array_equal(a, tree.get(before, path)), path


def test_backend_choice():
    rng = np.random.default_rng(1)
    p = {"w": rng.normal(size=3)}
    assert Adam()._kernel(p) is not None  # auto: the kernel for NumPy float arrays
    assert Adam(backend="reference")._kernel(p) is None
    assert Adam()._kernel({"w": p["w"] + 0j}) is None  # complex: the reference expressions
    with pytest.raises(ValueError, match="Adam: backend='numba' needs"):
        Adam(backend="numba")._kernel({"w": p["w"] + 0j})
    with pytest.raises(ValueError, match="Adam: backend must be"):
        Adam(backend="cuda")
