"""The inference paths (``_forward_no_cache`` / ``_inverse_no_cache``) return the cached paths'
values bit for bit, for every registered layer and small whole flows, in both dtypes, at the
saturated points of the registry, with the reference and the Numba kernels, and never touch their
inputs (they overwrite their own temporaries in place)."""

import numpy as np
import pytest

from rawflow import tree
from rawflow.check import registry
from rawflow.models.architectures import glow, realnvp, realnvp_multiscale


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_same_bits(actual, expected, what):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    assert np.array_equal(_bits(actual), _bits(expected)), f"{what}: differs from the cached path"


def _extra_cases():
    """Flows the registry keeps out (too big for its oracles): a two-level Glow with a learned
    top, RealNVP's multi-scale flow with residual blocks, a deep vector RealNVP."""
    rng = np.random.default_rng(7)
    out = []
    for name, flow, x in (
        ("glow-2-2", glow(2, 2, 6, (3, 8, 8)), rng.uniform(size=(3, 3, 8, 8))),
        ("realnvp-multiscale-blocks", realnvp_multiscale(2, 4, (1, 8, 8), blocks=1, scale="bounded"),
         rng.uniform(size=(3, 1, 8, 8))),
        ("realnvp-bounded", realnvp(6, 4, hidden=(16, 16), scale="bounded"), rng.normal(size=(5, 6))),
    ):
        params = tree.map(lambda a: a + rng.normal(scale=0.05, size=a.shape), flow.init(rng, x))
        out.append(registry.Case(name, flow, params, x))
    return out


CASES = registry.cases() + _extra_cases()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_no_cache_paths_equal_cached_bit_for_bit(case, dtype):
    layer = case.layer
    params = tree.map(lambda a: a.astype(dtype), case.params)
    x = case.x.astype(dtype)
    before_x, before_p = x.copy(), tree.map(lambda a: a.copy(), params)
    with np.errstate(over="ignore", under="ignore"):  # the saturated cases reach exp's edges on purpose
        z, logdet, _ = layer._forward(params, x)
        z2, logdet2 = layer._forward_no_cache(params, x)
        assert_same_bits(z2, z, f"{case.name} forward z")
        assert_same_bits(logdet2, logdet, f"{case.name} forward logdet")
        z_in = z.copy()
        xb, logdet_inv, _ = layer._inverse(params, z)
        xb2, logdet_inv2 = layer._inverse_no_cache(params, z)
        assert_same_bits(xb2, xb, f"{case.name} inverse x")
        assert_same_bits(logdet_inv2, logdet_inv, f"{case.name} inverse logdet")
    assert_same_bits(x, before_x, f"{case.name}: the input was modified")
    assert_same_bits(z, z_in, f"{case.name}: the latent input was modified")
    for path, leaf in tree.leaves(params):
        assert_same_bits(leaf, tree.get(before_p, path), f"{case.name}: parameter {path} was modified")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_cache_paths_with_the_numba_kernels(dtype):
    pytest.importorskip("numba")
    from rawflow import ActNorm, AffineCoupling, Chain

    rng = np.random.default_rng(3)
    layers = [ActNorm(6, backend="numba"), AffineCoupling(6, scale="sigmoid", hidden=(8,), backend="numba"),
              AffineCoupling(6, scale="exp", flip=True, hidden=(8,), backend="numba")]
    flow = Chain(layers)
    x = rng.normal(size=(9, 6)).astype(dtype)
    params = tree.map(lambda a: a + rng.normal(scale=0.1, size=a.shape).astype(dtype), flow.init(rng, x))
    z, logdet, _ = flow._forward(params, x)
    z2, logdet2 = flow._forward_no_cache(params, x)
    assert_same_bits(z2, z, "numba forward z")
    assert_same_bits(logdet2, logdet, "numba forward logdet")
    xb, li, _ = flow._inverse(params, z)
    xb2, li2 = flow._inverse_no_cache(params, z)
    assert_same_bits(xb2, xb, "numba inverse x")
    assert_same_bits(li2, li, "numba inverse logdet")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_cache_paths_of_a_subclassed_transform(dtype):
    """A transform that subclasses AffineTransform with other maths (interop's shift-then-scale)
    keeps its own maths on the inference paths."""
    from rawflow.bijectors.coupling import Coupling
    from rawflow.interop.maps import ShiftScaleTransform

    rng = np.random.default_rng(5)
    layer = Coupling(6, ShiftScaleTransform("exp"), hidden=(8,))
    x = rng.normal(size=(7, 6)).astype(dtype)
    params = tree.map(lambda a: a + rng.normal(scale=0.3, size=a.shape).astype(dtype), layer.init(rng, x))
    z, logdet, _ = layer._forward(params, x)
    z2, logdet2 = layer._forward_no_cache(params, x)
    assert_same_bits(z2, z, "shift-then-scale forward z")
    assert_same_bits(logdet2, logdet, "shift-then-scale forward logdet")
    xb, li, _ = layer._inverse(params, z)
    xb2, li2 = layer._inverse_no_cache(params, z)
    assert_same_bits(xb2, xb, "shift-then-scale inverse x")
    assert_same_bits(li2, li, "shift-then-scale inverse logdet")
