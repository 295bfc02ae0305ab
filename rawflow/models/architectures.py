"""Ready-made flows for ``(N, D)`` data, each a :class:`~rawflow.bijectors.chain.Chain` of couplings.

Consecutive couplings alternate which half of the features is copied (``flip`` on odd layers), so
no feature is only ever copied. Every coupling starts as the identity (zero last conditioner layer).

* :func:`realnvp`: affine couplings ``y_b = x_b ⊙ s(x_a) + t(x_a)`` (Dinh et al., 2017).
* :func:`nice`: additive couplings ``y_b = x_b + t(x_a)`` followed by NICE's diagonal scaling
  ``z = y ⊙ exp(log_scale)`` (Dinh et al., 2015), the only layer that changes volume.

``context=K`` makes either a conditional flow ``p(x | c)``, ``c: (N, K)``: every coupling's MLP
also sees ``c`` (:mod:`rawflow.bijectors.conditional_coupling`). For images, :func:`glow` and
:func:`class_conditional_glow` (openai/glow's ``--ycond``: the class enters the top prior, optionally
the split priors, and a classifier head reads the top latent).
"""

from __future__ import annotations

from typing import Sequence

from ..bijectors.chain import Chain
from ..bijectors.conditional_coupling import ConditionalAdditiveCoupling, ConditionalAffineCoupling
from ..bijectors.coupling import AdditiveCoupling, AffineCoupling
from ..bijectors.scaling import DiagonalScaling


def _check(name: str, features: int, n_couplings: int) -> None:
    if isinstance(features, bool) or int(features) != features or features < 2:
        raise ValueError(f"{name}: features must be an integer ≥ 2, got {features!r}")
    if isinstance(n_couplings, bool) or int(n_couplings) != n_couplings or n_couplings < 1:
        raise ValueError(f"{name}: n_couplings must be a positive integer, got {n_couplings!r}")


def realnvp(
    features: int,
    n_couplings: int = 8,
    hidden: Sequence[int] = (64, 64),
    scale: str = "exp",
    activation: str = "relu",
    *,
    reconstruct: bool = False,
    context: int | None = None,
) -> Chain:
    """``n_couplings`` affine couplings on ``(N, features)`` data, alternating the copied half;
    conditional on ``c: (N, context)`` when ``context`` is given."""
    _check("realnvp", features, n_couplings)
    kw = dict(scale=scale, hidden=tuple(hidden), activation=activation)
    layers = [
        AffineCoupling(int(features), flip=bool(i % 2), **kw) if context is None
        else ConditionalAffineCoupling(int(features), context, flip=bool(i % 2), **kw)
        for i in range(int(n_couplings))
    ]
    return Chain(layers, reconstruct=reconstruct)


def nice(
    features: int,
    n_couplings: int = 4,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    *,
    reconstruct: bool = False,
    context: int | None = None,
) -> Chain:
    """``n_couplings`` additive couplings, alternating the copied half, then a diagonal scaling;
    conditional on ``c: (N, context)`` when ``context`` is given."""
    _check("nice", features, n_couplings)
    kw = dict(hidden=tuple(hidden), activation=activation)
    layers = [
        AdditiveCoupling(int(features), flip=bool(i % 2), **kw) if context is None
        else ConditionalAdditiveCoupling(int(features), context, flip=bool(i % 2), **kw)
        for i in range(int(n_couplings))
    ]
    return Chain([*layers, DiagonalScaling(int(features))], reconstruct=reconstruct)


# ---------------------------------------------------------------------------- images (N, C, H, W)
#: Glow's layer definitions: rawflow's own, or openai/glow's reference code (docs/glow-variants.md)
VARIANTS = ("rawflow", "openai")


def _mixer(kind: str, channels: int, seed: int, variant: str = "rawflow"):
    """Glow's channel mixing between couplings (``"dense"`` under ``variant="openai"``: the
    reference's float64 log-det, :class:`~rawflow.bijectors.openai.OpenAIInvConv`)."""
    from ..bijectors.linear import DenseLinear, LULinear
    from ..bijectors.openai import OpenAIInvConv
    from ..bijectors.permutation import Permutation, Reverse

    if kind == "lu":
        return LULinear(channels, spatial=2, seed=seed)
    if kind == "dense":
        return (OpenAIInvConv if variant == "openai" else DenseLinear)(channels, spatial=2, seed=seed)
    if kind == "reverse":
        return Reverse(channels, spatial=2)
    if kind == "shuffle":
        return Permutation(channels, seed=seed, spatial=2)
    raise ValueError(f"glow: permutation must be 'lu', 'dense', 'reverse' or 'shuffle', got {kind!r}")


def _image_shape(name: str, image_shape, levels: int):
    try:
        c, h, w = (int(d) for d in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: image_shape must be (C, H, W), got {image_shape!r}")
    if min(c, h, w) < 1 or h % 2**levels or w % 2**levels:
        raise ValueError(f"{name}: H and W must be divisible by 2^{levels} for {levels} squeezes, got {(c, h, w)}")
    return c, h, w


def glow(
    K: int,
    L: int,
    width: int,
    image_shape=(1, 8, 8),
    *,
    coupling: str = "affine",
    permutation: str | None = None,
    scale: str = "sigmoid",
    learn_top: bool = True,
    reconstruct: bool = False,
    seed: int = 0,
    variant: str = "rawflow",
    split_context: int | None = None,
):
    """Glow (Kingma & Dhariwal, 2018): ``L`` levels of squeeze → ``K`` × [ActNorm → 1×1 mixing →
    coupling] → split, returning a :class:`~rawflow.bijectors.multiscale.MultiScale` onto a flat latent.

    ``coupling``: ``"affine"`` (scale map ``scale``, Glow's code uses ``sigmoid(h + 2)``) or
    ``"additive"``; conditioners are Glow's conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU →
    zero conv3×3 of ``width`` channels. ``permutation``: ``"lu"`` (default) | ``"dense"`` |
    ``"reverse"`` | ``"shuffle"``. Each split scores the factored half under a Gaussian from the
    kept half (Glow's split prior); ``learn_top`` ends the last level with a zero-initialised
    ActNorm, i.e. a learned diagonal Gaussian top prior under a standard normal ``prior``. Use with
    ``StandardNormal((C·H·W,))``. ``split_context=K`` conditions every split prior on ``c: (N, K)``
    (:class:`~rawflow.bijectors.conditional_prior.ConditionalSplit`); the flow is then conditional.

    ``variant="openai"`` builds the same architecture from the reference code's own definitions
    (:mod:`rawflow.bijectors.openai`; ``docs/glow-variants.md`` lists every difference): ActNorm
    ``(x + b)·exp(3·logs)`` with its ``1/(√var + 1e-6)`` init, the coupling
    ``(x_b + h[0::2])·sigmoid(h[1::2] + 2)``, edge-padded convolutions with factor-3 norms in the
    network, the split prior's edge-padded ``Conv2dZeros``, the dense 1×1 convolution with a
    float64 log-det (``permutation`` default ``"dense"``) and ``learn_top`` as the reference's
    ``--learntop`` prior. Its scale map is fixed (``scale`` must be ``"sigmoid"``).
    """
    from ..bijectors.actnorm import ActNorm
    from ..bijectors.conditional_prior import ConditionalSplit
    from ..bijectors.image_coupling import ChannelCoupling
    from ..bijectors.multiscale import MultiScale
    from ..bijectors.openai import OpenAIActNorm, OpenAICoupling, OpenAILearnTop, OpenAISplit
    from ..bijectors.split import Split
    from ..bijectors.squeeze import Squeeze

    for label, v in (("K", K), ("L", L), ("width", width)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"glow: {label} must be a positive integer, got {v!r}")
    if coupling not in ("affine", "additive"):
        raise ValueError(f"glow: coupling must be 'affine' or 'additive', got {coupling!r}")
    if variant not in VARIANTS:
        raise ValueError(f"glow: variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    openai = variant == "openai"
    if openai and scale != "sigmoid":
        raise ValueError(f"glow: variant 'openai' has the reference's scale map sigmoid(h + 2), got scale={scale!r}")
    if openai and split_context is not None:
        raise ValueError("glow: variant 'openai' has the reference's unconditional split prior; split_context "
                         "needs variant='rawflow'")
    if permutation is None:
        permutation = "dense" if openai else "lu"
    c, h, w = _image_shape("glow", image_shape, L)
    levels, keep = [], []
    for level in range(int(L)):
        layers = [Squeeze(c)]
        c *= 4
        for k in range(int(K)):
            mixer = _mixer(permutation, c, seed + 1000 * level + k, variant)
            if openai:
                layers += [OpenAIActNorm(c, spatial=2), mixer, OpenAICoupling(c, coupling, width=int(width))]
            else:
                layers += [ActNorm(c, spatial=2), mixer,
                           ChannelCoupling(c, coupling, scale=scale, width=int(width), conditioner="glow")]
        if level < L - 1:
            layers.append(OpenAISplit(c) if openai else Split(c) if split_context is None
                          else ConditionalSplit(c, split_context))
            keep.append(c // 2)
            c //= 2
        elif learn_top:
            layers.append(OpenAILearnTop(c) if openai else ActNorm(c, spatial=2, data_init=False))
        levels.append(Chain(layers, reconstruct=reconstruct))
    return MultiScale(levels, keep, (int(image_shape[0]), h, w), reconstruct=reconstruct)


def class_conditional_glow(
    K: int,
    L: int,
    width: int,
    image_shape=(1, 8, 8),
    n_classes: int = 10,
    *,
    weight_y: float = 0.0,
    learn_top: bool = True,
    split_prior: bool = False,
    coupling: str = "affine",
    permutation: str = "lu",
    scale: str = "sigmoid",
    reconstruct: bool = False,
    seed: int = 0,
):
    """openai/glow with ``--ycond`` (and ``--learntop``, ``--weight_y``): a class-conditional
    :class:`~rawflow.models.model.FlowModel` of ``p(x | y)``, ``y`` an integer label in ``[0, n_classes)``.

    The flow is :func:`glow` without the learned-top layer; its flat latent is scored by a
    :class:`~rawflow.bijectors.conditional_prior.MultiScalePrior` whose top prior
    (:class:`~rawflow.bijectors.conditional_prior.GlowTop`) has openai's mean and log-std
    ``b ⊙ exp(3·logs)`` (``learn_top``) ``+ linear_zeros(one_hot(y))``. ``split_prior=True`` adds the
    class term to every split prior too (the flow is then conditional). With ``weight_y > 0`` a
    :class:`~rawflow.models.classifier.ClassifierHead` on the mean-pooled top latent adds openai's
    cross-entropy term to the objective (openai's conditional examples use ``weight_y = 0.01``).
    Every class term starts at zero: a fresh model is the unconditional Glow.
    """
    from ..bijectors.conditional_prior import GlowTop, MultiScalePrior
    from .classifier import ClassifierHead
    from .model import FlowModel

    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"class_conditional_glow: n_classes must be an integer ≥ 2, got {n_classes!r}")
    flow = glow(K, L, width, image_shape, coupling=coupling, permutation=permutation, scale=scale, learn_top=False,
                reconstruct=reconstruct, seed=seed, split_context=n_classes if split_prior else None)
    top_shape = flow.pieces[-1]
    prior = MultiScalePrior(flow.size, top_shape, GlowTop(top_shape[0], context=n_classes, learn_top=learn_top))
    head = ClassifierHead(flow.size, top_shape, n_classes) if weight_y > 0 else None
    return FlowModel(flow, prior, classes=n_classes, classifier=head, weight_y=weight_y)


def realnvp_multiscale(
    L: int,
    width: int,
    image_shape=(1, 8, 8),
    *,
    blocks: int = 2,
    scale: str = "exp",
    reconstruct: bool = False,
):
    """RealNVP's multi-scale architecture (Dinh et al., 2017): per level 3 checkerboard couplings
    (alternating parity) → squeeze → 3 channel couplings (alternating halves) → factor out half;
    the last level is 4 checkerboard couplings. Conditioners: residual CNNs of ``width`` channels.
    The factored half is scored by Glow's split prior (a zero-initialised, hence initially standard
    normal, Gaussian conditioned on the kept half)."""
    from ..bijectors.image_coupling import ChannelCoupling, CheckerboardCoupling
    from ..bijectors.multiscale import MultiScale
    from ..bijectors.split import Split
    from ..bijectors.squeeze import Squeeze

    if isinstance(L, bool) or int(L) != L or L < 1:
        raise ValueError(f"realnvp_multiscale: L must be a positive integer, got {L!r}")
    c, h, w = _image_shape("realnvp_multiscale", image_shape, L - 1)

    def checker(ch, i):
        return CheckerboardCoupling(ch, "affine", scale=scale, flip=bool(i % 2), width=int(width),
                                    conditioner=_resnet(ch, 2 * ch, width, blocks))

    levels, keep = [], []
    for level in range(int(L)):
        if level == L - 1:
            levels.append(Chain([checker(c, i) for i in range(4)], reconstruct=reconstruct))
            break
        layers = [checker(c, i) for i in range(3)] + [Squeeze(c)]
        c *= 4
        half = c // 2
        layers += [
            ChannelCoupling(c, "affine", scale=scale, flip=bool(i % 2), width=int(width),
                            conditioner=_resnet(c - half if i % 2 else half, 2 * (half if i % 2 else c - half), width, blocks))
            for i in range(3)
        ]
        layers.append(Split(c))
        keep.append(c // 2)
        c //= 2
        levels.append(Chain(layers, reconstruct=reconstruct))
    return MultiScale(levels, keep, (int(image_shape[0]), h, w), reconstruct=reconstruct)


def _resnet(c_in, c_out, width, blocks):
    from ..nets.cnn import ResNetCNN

    return ResNetCNN(c_in, c_out, int(width), int(blocks))


def nice_images(image_shape, n_couplings: int = 4, hidden: Sequence[int] = (64, 64), *, reconstruct: bool = False):
    """NICE on flattened images: ``Flatten`` then :func:`nice` on ``C·H·W`` features."""
    from ..bijectors.squeeze import Flatten

    flat = Flatten(image_shape)
    inner = nice(flat.size, n_couplings, hidden, reconstruct=reconstruct)
    return Chain([flat, *inner.layers], reconstruct=reconstruct)
