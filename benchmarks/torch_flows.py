"""The same flow in PyTorch: a rawflow bijector's structure and parameters, evaluated with torch ops.

:func:`forward` / :func:`inverse` walk a rawflow flow (``MultiScale``, ``Chain``, ``Squeeze``,
``Flatten``, ``ActNorm``, ``DiagonalScaling``, ``LULinear``, ``DenseLinear``, ``Logit``,
affine/additive ``Coupling`` including the image couplings and ``CheckerboardCoupling``, ``Split``;
conditioners ``MLP``, ``GlowCNN`` and ``ResNetCNN``) and compute what each layer's
docstring defines, written the way a PyTorch user would write it (``F.conv2d``, broadcasting,
autograd for the gradients). Parameters are the rawflow parameter tree with torch leaves
(:func:`to_torch`), so the torch model is *the same function*: :func:`check_same` confirms it
against rawflow in float64 (loss and every gradient) before anything is timed.

Written for the benchmarks' baselines; layers it does not know raise
:class:`~benchmarks.runner.Skip`. torch is imported inside the functions.
"""

from __future__ import annotations

import math

import numpy as np

from .runner import Skip

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def to_torch(tree, requires_grad: bool = False):
    import torch

    if isinstance(tree, dict):
        return {k: to_torch(v, requires_grad) for k, v in tree.items()}
    t = torch.from_numpy(np.ascontiguousarray(tree)).clone()
    return t.requires_grad_(requires_grad)


def leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from leaves(tree[k], prefix + (k,))
    else:
        yield prefix, tree


def _view(v):
    return v.reshape(1, -1, 1, 1)


# ------------------------------------------------------------------------------------ conditioners
def _net(net, p, x):
    import torch
    import torch.nn.functional as F

    from rawflow.nets.cnn import Act, ChannelNorm, Conv2d, ZeroConv2d, _Residual, _Sequential
    from rawflow.nets.mlp import MLP

    if isinstance(net, MLP):
        n = len(net.widths) - 1
        for i in range(n):
            x = F.linear(x, p[str(i)]["w"], p[str(i)]["b"])
            if i < n - 1:
                name = net.activation.name
                x = torch.relu(x) if name == "relu" else torch.tanh(x) if name == "tanh" else F.leaky_relu(
                    x, net.activation.slope)
        return x
    if isinstance(net, Conv2d):
        return F.conv2d(x, p["w"], p.get("b"), padding=net.kernel // 2)
    if isinstance(net, ZeroConv2d):
        return F.conv2d(x, p["w"], p["b"], padding=net.kernel // 2) * _view(torch.exp(net.logscale_factor * p["logs"]))
    if isinstance(net, ChannelNorm):
        return (x + _view(p["b"])) * _view(torch.exp(p["logs"]))
    if isinstance(net, Act) and net.activation.name == "relu":
        return torch.relu(x)
    if isinstance(net, _Sequential):
        y = x
        for name, layer in net.layers:
            y = _net(layer, p.get(name) if p is not None else None, y)
        return x + y if isinstance(net, _Residual) else y
    raise Skip(f"torch_flows: no torch version of conditioner {type(net).__name__}")


def _scale(transform, hs):
    import torch
    import torch.nn.functional as F

    from rawflow.bijectors.scales import BoundedScale, ExpScale, SigmoidScale

    sm = transform.scale
    if isinstance(sm, ExpScale):
        return hs, torch.exp(hs)
    if isinstance(sm, SigmoidScale):
        return F.logsigmoid(hs + 2.0), torch.sigmoid(hs + 2.0)
    if isinstance(sm, BoundedScale):
        log_s = sm.c * torch.tanh(hs / sm.c)
        return log_s, torch.exp(log_s)
    raise Skip(f"torch_flows: no torch version of scale map {sm!r}")


def _split(partition, x):
    import torch

    if partition._slices is not None:
        # Python ints: NumPy integer bounds make torch.compile break the graph at every coupling.
        sa, sb = (slice(int(s.start), int(s.stop)) for s in partition._slices)
        return x[:, sa], x[:, sb]
    return (torch.index_select(x, 1, torch.tensor(partition.idx_a.tolist())),
            torch.index_select(x, 1, torch.tensor(partition.idx_b.tolist())))


def _merge(partition, xa, xb):
    import torch

    cat = torch.cat([xa, xb], dim=1)
    if partition._slices is not None and int(partition._slices[0].start) == 0:
        return cat
    if partition._slices is not None:
        return torch.cat([xb, xa], dim=1)
    return torch.index_select(cat, 1, torch.tensor(partition._inv.tolist()))


def _row_sum(a):
    return a.sum(dim=tuple(range(1, a.ndim)))


def _lu_weight(layer, p):
    import torch

    c = layer.features
    eye = torch.eye(c, dtype=p["lower"].dtype)
    # Python lists, not NumPy arrays: torch.compile treats them as constants (no graph break).
    s = torch.tensor(layer.sign.tolist(), dtype=p["log_scale"].dtype) * torch.exp(p["log_scale"])
    lower = torch.tril(p["lower"], -1) + eye
    upper = torch.triu(p["upper"], 1) + torch.diag(s)
    return (lower @ upper)[torch.tensor(layer.perm.tolist())]


def _squeeze(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def _unsqueeze(z):
    n, c4, h, w = z.shape
    return z.reshape(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


def _checker(layer, x):
    """RealNVP's checkerboard: ``True`` where ``(i + j) mod 2 = parity`` (copied pixels), ``(1, 1, H, W)``."""
    import torch

    h, w = x.shape[2], x.shape[3]
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j) % 2 == layer.parity).reshape(1, 1, h, w)


def _positions(x):
    return math.prod(x.shape[2:])


# ------------------------------------------------------------------------------------ bijectors
def forward(layer, p, x):
    """``(z, logdet)``: data → latent, as rawflow's ``forward``."""
    import torch
    import torch.nn.functional as F

    from rawflow import ActNorm, AdditiveTransform, AffineTransform, Chain, Coupling, DenseLinear, LULinear
    from rawflow.bijectors.image_coupling import CheckerboardCoupling
    from rawflow.bijectors.logit import Logit
    from rawflow.bijectors.multiscale import MultiScale
    from rawflow.bijectors.scaling import DiagonalScaling
    from rawflow.bijectors.split import Split
    from rawflow.bijectors.squeeze import Flatten, Squeeze

    zero = torch.zeros(x.shape[0], dtype=x.dtype)
    if isinstance(layer, MultiScale):
        total, pieces = zero, []
        for i, level in enumerate(layer.levels):
            h, ld = forward(level, p[str(i)], x)
            total = total + ld
            if i < len(layer.keep):
                pieces.append(h[:, layer.keep[i]:].flatten(1))
                x = h[:, : layer.keep[i]]
            else:
                pieces.append(h.flatten(1))
        return torch.cat(pieces, dim=1), total
    if isinstance(layer, Chain):
        total = zero
        for i, sub in enumerate(layer.layers):
            x, ld = forward(sub, p[str(i)], x)
            total = total + ld
        return x, total
    if isinstance(layer, Squeeze):
        return _squeeze(x), zero
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1), zero
    if isinstance(layer, ActNorm):
        view = (1, -1) + (1,) * (x.ndim - 2)
        z = (x + p["bias"].view(view)) * torch.exp(p["log_scale"]).view(view)
        return z, zero + _positions(x) * p["log_scale"].sum()
    if isinstance(layer, DiagonalScaling):  # NICE's z = x ⊙ exp(log_scale)
        view = (1, -1) + (1,) * (x.ndim - 2)
        return x * torch.exp(p["log_scale"]).view(view), zero + _positions(x) * p["log_scale"].sum()
    if isinstance(layer, Logit):  # z = logit(α + (1 − 2α)x), log-det Σ[log(1 − 2α) + softplus(z) + softplus(−z)]
        q = layer.alpha + (1 - 2 * layer.alpha) * x
        z = torch.log(q) - torch.log1p(-q)
        return z, _row_sum(math.log1p(-2 * layer.alpha) + F.softplus(z) + F.softplus(-z))
    if isinstance(layer, (LULinear, DenseLinear)):
        w = _lu_weight(layer, p) if isinstance(layer, LULinear) else p["weight"]
        ld = p["log_scale"].sum() if isinstance(layer, LULinear) else torch.linalg.slogdet(w)[1]
        z = F.conv2d(x, w[:, :, None, None]) if x.ndim == 4 else x @ w.T
        return z, zero + _positions(x) * ld
    if isinstance(layer, CheckerboardCoupling):
        copied = _checker(layer, x)
        h = _net(layer.net, p["net"], torch.where(copied, x, torch.zeros((), dtype=x.dtype)))
        if isinstance(layer.transform, AdditiveTransform):
            return torch.where(copied, x, x + h), zero
        c = h.shape[1] // 2
        log_s, s = _scale(layer.transform, h[:, :c])
        return torch.where(copied, x, x * s + h[:, c:]), _row_sum(torch.where(copied, 0.0, log_s))
    if isinstance(layer, Coupling):
        xa, xb = _split(layer.partition, x)
        h = _net(layer.net, p["net"], xa)
        if isinstance(layer.transform, AdditiveTransform):
            return _merge(layer.partition, xa, xb + h), zero
        if not isinstance(layer.transform, AffineTransform):
            raise Skip(f"torch_flows: unknown transform {type(layer.transform).__name__}")
        c = h.shape[1] // 2
        log_s, s = _scale(layer.transform, h[:, :c])
        return _merge(layer.partition, xa, xb * s + h[:, c:]), _row_sum(log_s)
    if isinstance(layer, Split):
        x1, x2 = x[:, : layer.kept], x[:, layer.kept:]
        h = _net(layer.prior, p["prior"], x1)
        mu, logs = h[:, 0::2], h[:, 1::2]
        return torch.cat([x1, (x2 - mu) / torch.exp(logs)], dim=1), -_row_sum(logs)
    raise Skip(f"torch_flows: no torch version of {type(layer).__name__}")


def inverse(layer, p, z):
    """``x``: latent → data, as rawflow's ``inverse`` (log-dets not needed for sampling)."""
    import torch
    import torch.nn.functional as F

    from rawflow import ActNorm, AdditiveTransform, Chain, Coupling, DenseLinear, LULinear
    from rawflow.bijectors.image_coupling import CheckerboardCoupling
    from rawflow.bijectors.logit import Logit
    from rawflow.bijectors.multiscale import MultiScale
    from rawflow.bijectors.scaling import DiagonalScaling
    from rawflow.bijectors.split import Split
    from rawflow.bijectors.squeeze import Flatten, Squeeze

    if isinstance(layer, MultiScale):
        n, start, pieces = z.shape[0], 0, []
        for shape, size in zip(layer.pieces, layer.sizes):
            pieces.append(z[:, start:start + size].reshape((n,) + tuple(shape)))
            start += size
        h = pieces[-1]
        for i in reversed(range(len(layer.levels))):
            if i < len(layer.keep):
                h = torch.cat([h, pieces[i]], dim=1)
            h = inverse(layer.levels[i], p[str(i)], h)
        return h
    if isinstance(layer, Chain):
        for i in reversed(range(len(layer.layers))):
            z = inverse(layer.layers[i], p[str(i)], z)
        return z
    if isinstance(layer, Squeeze):
        return _unsqueeze(z)
    if isinstance(layer, Flatten):
        return z.reshape((z.shape[0],) + tuple(layer.event_shape))
    if isinstance(layer, ActNorm):
        view = (1, -1) + (1,) * (z.ndim - 2)
        return z / torch.exp(p["log_scale"]).view(view) - p["bias"].view(view)
    if isinstance(layer, DiagonalScaling):
        return z / torch.exp(p["log_scale"]).view((1, -1) + (1,) * (z.ndim - 2))
    if isinstance(layer, Logit):
        return (torch.sigmoid(z) - layer.alpha) / (1 - 2 * layer.alpha)
    if isinstance(layer, CheckerboardCoupling):
        copied = _checker(layer, z)
        h = _net(layer.net, p["net"], torch.where(copied, z, torch.zeros((), dtype=z.dtype)))
        if isinstance(layer.transform, AdditiveTransform):
            return torch.where(copied, z, z - h)
        c = h.shape[1] // 2
        _, s = _scale(layer.transform, h[:, :c])
        return torch.where(copied, z, (z - h[:, c:]) / s)
    if isinstance(layer, (LULinear, DenseLinear)):
        w = _lu_weight(layer, p) if isinstance(layer, LULinear) else p["weight"]
        winv = torch.linalg.inv(w)
        return F.conv2d(z, winv[:, :, None, None]) if z.ndim == 4 else z @ winv.T
    if isinstance(layer, Coupling):
        ya, yb = _split(layer.partition, z)
        h = _net(layer.net, p["net"], ya)
        if isinstance(layer.transform, AdditiveTransform):
            return _merge(layer.partition, ya, yb - h)
        c = h.shape[1] // 2
        _, s = _scale(layer.transform, h[:, :c])
        return _merge(layer.partition, ya, (yb - h[:, c:]) / s)
    if isinstance(layer, Split):
        z1, eps = z[:, : layer.kept], z[:, layer.kept:]
        h = _net(layer.prior, p["prior"], z1)
        return torch.cat([z1, h[:, 0::2] + torch.exp(h[:, 1::2]) * eps], dim=1)
    raise Skip(f"torch_flows: no torch version of {type(layer).__name__}")


def nll(flow, p, x):
    """Mean NLL (nats per sample) under a standard normal prior on the flat latent."""
    z, logdet = forward(flow, p, x)
    z = z.flatten(1)
    lp = -0.5 * (z * z).sum(dim=1) - z.shape[1] * HALF_LOG_2PI
    return -(lp + logdet).mean()


def check_same(model, params64: dict, x64: np.ndarray) -> dict:
    """Loss and gradients of the torch version against rawflow's hand-written pass, float64.

    Returns ``{"loss_rel": ..., "grad_rel": ...}`` (normwise relative differences, worst leaf).
    """
    import torch

    loss_ref, grads_ref = model.nll_and_grad(params64, x64)
    tp = to_torch(params64["flow"], requires_grad=True)
    loss = nll(model.bijector, tp, torch.from_numpy(x64))
    pairs = list(leaves(tp))
    grads = torch.autograd.grad(loss, [t for _, t in pairs], allow_unused=True)
    ref = dict(leaves(grads_ref["flow"]))
    worst = 0.0
    for (path, _), g in zip(pairs, grads):
        r = ref[path]
        g = np.zeros_like(r) if g is None else g.numpy()
        worst = max(worst, float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-300)))
    return {"loss_rel": abs(float(loss.detach()) - loss_ref) / abs(loss_ref), "grad_rel": worst}
