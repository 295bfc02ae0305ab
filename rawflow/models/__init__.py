"""Flow models: :class:`FlowModel` (a bijector plus a prior) and the architecture builders.

* :mod:`.model`: ``log_prob``, ``nll_and_grad``, ``sample``, ``encode`` / ``decode`` / ``interpolate``.
* :mod:`.architectures`: ``nice``, ``realnvp``, ``glow_vectors`` (vectors); ``glow``, ``realnvp_multiscale``,
  ``nice_images`` (images).
"""

from .architectures import glow, glow_vectors, nice, nice_images, realnvp, realnvp_multiscale
from .model import FlowModel

__all__ = ["FlowModel", "glow", "glow_vectors", "nice", "nice_images", "realnvp", "realnvp_multiscale"]
