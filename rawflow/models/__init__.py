"""Flow models: :class:`FlowModel` (a bijector plus a prior) and the architecture builders.

* :mod:`.model`: ``log_prob``, ``nll_and_grad``, ``sample``, ``encode`` / ``decode`` / ``interpolate``.
* :mod:`.architectures`: ``nice``, ``realnvp`` (vectors, optionally conditional); ``glow``,
  ``class_conditional_glow``, ``realnvp_multiscale``, ``nice_images`` (images).
* :mod:`.classifier`: openai/glow's classifier head on the top latent (``--weight_y``).
"""

from .architectures import class_conditional_glow, glow, nice, nice_images, realnvp, realnvp_multiscale
from .classifier import ClassifierHead
from .model import FlowModel

__all__ = ["ClassifierHead", "FlowModel", "class_conditional_glow", "glow", "nice", "nice_images", "realnvp",
           "realnvp_multiscale"]
