"""Checks shared by every bijector's tests: a layer joins a case list and gets all of them.

Oracles here are central finite differences in float64 (``h = eps^(1/3)·max(1, |v|)``), whose error
``O(h²·f''' + eps·|f|/h) ≈ 1e-10`` relative sits far below the 1e-7 (gradients) and 1e-8 (log-det)
bars of the core issue; gradients are also checked by complex step (exact to round-off).
"""

from __future__ import annotations

import numpy as np

from rawflow import tree

EPS64 = np.finfo(np.float64).eps
FD_STEP = EPS64 ** (1 / 3)


def randomize(params: dict, rng: np.random.Generator, scale: float) -> dict:
    """Replace every leaf by ``N(0, scale²)`` draws (init values, e.g. zero last layers, hide bugs)."""
    return tree.map(lambda a: rng.normal(scale=scale, size=a.shape).astype(a.dtype), params)


def rel_err(actual, expected) -> float:
    """``‖actual − expected‖∞ / ‖expected‖∞`` (∞ if expected is all zero and actual is not)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = np.max(np.abs(actual - expected), initial=0.0)
    ref = np.max(np.abs(expected), initial=0.0)
    if ref == 0:
        return 0.0 if err == 0 else np.inf
    return err / ref


def _fd_scalar_grad(fn, value: np.ndarray) -> np.ndarray:
    """Central-difference gradient of the scalar ``fn(value)`` with respect to each element."""
    assert value.flags.c_contiguous, "perturbations go through a flat view"
    grad = np.zeros_like(value)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        v0 = flat[i]
        h = FD_STEP * max(1.0, abs(v0))
        flat[i] = v0 + h
        up = fn()
        flat[i] = v0 - h
        down = fn()
        flat[i] = v0
        gflat[i] = (up - down) / (2 * h)
    return grad


def _fd_grad_with_noise(fn, value: np.ndarray, step_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of ``fn() -> (L, S)`` w.r.t. each element of ``value``, with their noise.

    ``S`` is the sum of the magnitudes of the terms summed into ``L``. Each evaluation of ``L`` is
    off by at most a few ``eps·S`` (every term carries its own rounding), so the difference quotient
    carries rounding noise up to ``4·eps·S/h`` on top of the ``O(h²)`` truncation. That noise, not the
    layer, dominates when a gradient entry is tiny compared with ``S/h``.
    """
    assert value.flags.c_contiguous, "perturbations go through a flat view"
    grad = np.zeros_like(value)
    noise = np.zeros_like(value)
    flat, gflat, nflat = value.reshape(-1), grad.reshape(-1), noise.reshape(-1)
    for i in range(flat.size):
        v0 = flat[i]
        h = step_factor * FD_STEP * max(1.0, abs(v0))
        flat[i] = v0 + h
        up, s_up = fn()
        flat[i] = v0 - h
        down, s_down = fn()
        flat[i] = v0
        gflat[i] = (up - down) / (2 * h)
        nflat[i] = 4 * EPS64 * max(s_up, s_down) / h
    return grad, noise


def _cs_scalar_grad(fn, value: np.ndarray) -> np.ndarray:
    """Complex-step gradient ``Im L(v + i·h·e_j) / h`` (h = 1e-30): no subtraction, no cancellation."""
    assert value.flags.c_contiguous, "perturbations go through a flat view"
    grad = np.zeros(value.shape)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        v0 = flat[i]
        flat[i] = v0 + 1e-30j
        gflat[i] = fn().imag / 1e-30
        flat[i] = v0
    return grad


def directional_objective(layer, params, x, g, glogdet, direction: str):
    """``L = Σ g·out + Σ glogdet·logdet`` through ``forward`` or ``inverse``."""
    run = layer.forward if direction == "forward" else layer.inverse
    out, logdet, _ = run(params, x)
    return float(np.sum(g * out) + np.sum(glogdet * logdet))


def _objective_terms(layer, params, x, g, glogdet, direction: str):
    """``L`` as above (complex when the inputs are), and for real inputs also ``S = Σ|terms|``."""
    run = layer.forward if direction == "forward" else layer.inverse
    out, logdet, _ = run(params, x)
    terms_out, terms_ld = g * out, glogdet * logdet
    value = np.sum(terms_out) + np.sum(terms_ld)
    if np.iscomplexobj(value):
        return value
    return float(value), float(np.sum(np.abs(terms_out)) + np.sum(np.abs(terms_ld)))


def _fd_error(actual, fd, noise, rtol) -> float:
    """Worst ``|actual − fd|`` in units of the allowance ``rtol·‖fd‖∞ + noise`` (pass ≤ 1)."""
    allowance = rtol * np.max(np.abs(fd), initial=0.0) + noise
    diff = np.abs(np.asarray(actual) - fd)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowance)
    return float(np.max(ratio, initial=0.0))


def check_gradients(layer, params, x, rng, direction: str, rtol: float = 1e-7, cs_rtol: float = 1e-13) -> dict:
    """Hand-written VJP (input, every parameter, log-det cotangent) against two oracles.

    * central differences: ``|g − g_fd| ≤ rtol·‖g_fd‖∞ + noise`` (noise derived in
      :func:`_fd_grad_with_noise`);
    * complex step, which has no cancellation: ``‖g − g_cs‖∞ ≤ cs_rtol·‖g_cs‖∞`` (layers are
      written complex-safe; comparisons on ``.real`` make ReLU piecewise analytic).

    Returns ``{quantity: (fd error in allowance units, complex-step relative error)}``.
    """
    run = layer.forward if direction == "forward" else layer.inverse
    vjp = layer.backward if direction == "forward" else layer.inverse_backward
    out, logdet, cache = run(params, x)
    g = rng.normal(size=out.shape)
    glogdet = rng.normal(size=logdet.shape)
    gx, gparams = vjp(params, cache, g, glogdet)
    assert tree.structure(gparams) == tree.structure(params), f"{layer.name}: gparams structure"
    # The log-det cotangent on its own: a pure log-det objective, so a dropped glogdet term shows.
    g0 = np.zeros_like(g)
    gx_ld, gp_ld = vjp(params, cache, g0, glogdet)

    errors = {}
    for label, cot, grads_x, grads_p in (("", g, gx, gparams), ("logdet->", g0, gx_ld, gp_ld)):
        for dtype in (np.float64, np.complex128):
            # C-contiguous copies: the oracles perturb elements through a flat view.
            xv = np.array(x, dtype=dtype, order="C")
            pv = tree.map(lambda a: np.array(a, dtype=dtype, order="C"), params)

            def objective():
                return _objective_terms(layer, pv, xv, cot, glogdet, direction)

            targets = [("input", xv, grads_x)]
            targets += [(p, leaf, tree.get(grads_p, p)) for p, leaf in tree.leaves(pv)]
            for name, value, actual in targets:
                key = label + name
                if dtype is np.float64:
                    fd, noise = _fd_grad_with_noise(objective, value)
                    err = _fd_error(actual, fd, noise, rtol)
                    if err > 1:
                        # The 4·eps·S/h model counts only the rounding of the final terms; through a
                        # deep conditioner each term carries the rounding of every layer before it.
                        # Measure the quotient's noise instead: at 2h the truncation error is 4×
                        # (still ≲ 1e-10 relative) while the rounding noise is an independent draw,
                        # so |fd(h) − fd(2h)| estimates the noise of fd(h) directly.
                        fd2, _ = _fd_grad_with_noise(objective, value, step_factor=2.0)
                        err = _fd_error(actual, fd, np.maximum(noise, np.abs(fd - fd2)), rtol)
                    errors[key] = (err,)
                else:
                    errors[key] += (rel_err(actual, _cs_scalar_grad(objective, value)),)
    bad = {k: v for k, v in errors.items() if not (v[0] <= 1 and v[1] <= cs_rtol)}
    assert not bad, (
        f"{layer.name} {direction}: gradient errors (finite differences in allowance units ≤ 1, "
        f"complex step relative ≤ {cs_rtol}): {bad}"
    )
    return errors


def fd_jacobian(fn, x: np.ndarray) -> np.ndarray:
    """Per-sample Jacobians ``(N, D_out, D_in)`` of a row-wise map, by central differences.

    Samples are independent, so perturbing feature ``j`` of every sample at once gives column ``j``
    of every sample's Jacobian.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    cols = []
    for j in range(flat.shape[1]):
        h = FD_STEP * np.maximum(1.0, np.abs(flat[:, j]))
        up, down = flat.copy(), flat.copy()
        up[:, j] += h
        down[:, j] -= h
        diff = fn(up.reshape(x.shape)).reshape(n, -1) - fn(down.reshape(x.shape)).reshape(n, -1)
        cols.append(diff / (2 * h)[:, None])
    return np.stack(cols, axis=-1)


def check_logdet(layer, params, x, rtol: float = 1e-8) -> float:
    """Forward and inverse log-dets vs ``slogdet`` of the finite-difference Jacobian."""
    z, logdet, _ = layer.forward(params, x)
    jac = fd_jacobian(lambda u: layer.forward(params, u)[0], x)
    sign, ref = np.linalg.slogdet(jac)
    assert np.all(sign != 0), f"{layer.name}: singular finite-difference Jacobian"
    err_f = np.max(np.abs(logdet - ref) / np.maximum(1.0, np.abs(ref)))
    _, logdet_inv, _ = layer.inverse(params, z)
    jac_inv = fd_jacobian(lambda u: layer.inverse(params, u)[0], z)
    _, ref_inv = np.linalg.slogdet(jac_inv)
    err_i = np.max(np.abs(logdet_inv - ref_inv) / np.maximum(1.0, np.abs(ref_inv)))
    assert err_f <= rtol and err_i <= rtol, f"{layer.name}: log-det errors fwd {err_f:.2e} inv {err_i:.2e}"
    return max(err_f, err_i)


def check_roundtrip(layer, params, x, bound_ulps: float, kappa: float = 1.0) -> float:
    """Both round trips within ``bound_ulps·eps·κ·max(‖x‖∞, ‖z‖∞)``; returns the worst in those units.

    ``κ`` is the condition factor the layer's inverse amplifies round-off by (``1/min s`` for a
    coupling, ``cond(W)`` for a linear map); the case supplies it.
    """
    eps = np.finfo(x.dtype).eps
    z, _, _ = layer.forward(params, x)
    x_back, _, _ = layer.inverse(params, z)
    scale = max(np.max(np.abs(x)), np.max(np.abs(z)), np.finfo(x.dtype).tiny)
    e1 = np.max(np.abs(x_back - x)) / (eps * kappa * scale)
    # other direction, starting from a latent point
    x2, _, _ = layer.inverse(params, z[::-1].copy())
    z2, _, _ = layer.forward(params, x2)
    scale2 = max(np.max(np.abs(z)), np.max(np.abs(x2)), np.finfo(x.dtype).tiny)
    e2 = np.max(np.abs(z2 - z[::-1])) / (eps * kappa * scale2)
    assert e1 <= bound_ulps and e2 <= bound_ulps, (
        f"{layer.name}: round trip {e1:.2f} / {e2:.2f} (eps·κ·scale units), bound {bound_ulps}"
    )
    return max(e1, e2)


def check_logdet_cancels(layer, params, x, exact: bool = True) -> float:
    """``forward`` log-det plus ``inverse`` log-det at the matching point."""
    z, logdet, _ = layer.forward(params, x)
    _, logdet_inv, _ = layer.inverse(params, z)
    total = np.max(np.abs(logdet + logdet_inv))
    if exact:
        assert total == 0, f"{layer.name}: log-dets do not cancel exactly ({total:.3e})"
    return total


def check_structure(layer, params, x, rng) -> None:
    """Zero cotangent → exactly zero gradients; VJP linear in the cotangent; caches interchangeable."""
    for direction in ("forward", "inverse"):
        run = layer.forward if direction == "forward" else layer.inverse
        vjp = layer.backward if direction == "forward" else layer.inverse_backward
        out, logdet, cache = run(params, x)
        gx, gp = vjp(params, cache, np.zeros_like(out), np.zeros_like(logdet))
        assert not np.any(gx), f"{layer.name} {direction}: zero cotangent gave a nonzero input gradient"
        for path, leaf in tree.leaves(gp):
            assert not np.any(leaf), f"{layer.name} {direction}: zero cotangent gave nonzero '{path}'"
        g1, g2 = rng.normal(size=out.shape), rng.normal(size=out.shape)
        l1, l2 = rng.normal(size=logdet.shape), rng.normal(size=logdet.shape)
        a, b = 0.75, -1.5
        gx1, gp1 = vjp(params, cache, g1, l1)
        gx2, gp2 = vjp(params, cache, g2, l2)
        gx12, gp12 = vjp(params, cache, a * g1 + b * g2, a * l1 + b * l2)
        pairs = [("input", gx12, gx1, gx2)] + [
            (path, leaf, tree.get(gp1, path), tree.get(gp2, path)) for path, leaf in tree.leaves(gp12)
        ]
        for path, v12, v1, v2 in pairs:
            # Round-off budget scaled by the size of the two terms being combined.
            budget = 64 * EPS64 * np.max(np.abs(a * v1) + np.abs(b * v2), initial=0.0)
            err = np.max(np.abs(v12 - (a * v1 + b * v2)), initial=0.0)
            assert err <= budget, f"{layer.name} {direction}: VJP not linear in '{path}' ({err:.2e} > {budget:.2e})"
    # The inverse's cache at the matching point serves backward, and vice versa.
    z, logdet, cache_f = layer.forward(params, x)
    _, _, cache_i = layer.inverse(params, z)
    g, gl = rng.normal(size=z.shape), rng.normal(size=logdet.shape)
    gx_f, gp_f = layer.backward(params, cache_f, g, gl)
    gx_i, gp_i = layer.backward(params, cache_i, g, gl)
    assert rel_err(gx_i, gx_f) <= 1e-12, f"{layer.name}: backward from the inverse's cache differs"
    for path, leaf in tree.leaves(gp_f):
        assert rel_err(tree.get(gp_i, path), leaf) <= 1e-12
