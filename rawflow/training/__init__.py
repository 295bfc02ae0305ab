"""Training: optimisers, the loop, checkpoints and a memory probe.

* :mod:`.optim`: ``SGD``, ``Adam``, ``Adamax`` on parameter trees, ``clip_grad_norm``.
* :mod:`.ema`: ``EMA``, Polyak averaging of the parameters, kept in the optimiser state.
* :mod:`.loop`: ``train``, ``evaluate_nll``, ``gaussian_baseline_nll``, ``TrainingDiverged``.
* :mod:`.checkpoint`: atomic, pickle-free, digest-verified ``save_checkpoint`` / ``load_checkpoint``.
* :mod:`.memory`: ``peak_step_memory`` (traced peak of one training step).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .loop import TrainingDiverged, evaluate_nll, gaussian_baseline_nll, train
from .memory import peak_step_memory
from .optim import SGD, Adam, Adamax, Optimizer, clip_grad_norm, global_norm

__all__ = [
    "Adam",
    "Adamax",
    "CheckpointError",
    "EMA",
    "Optimizer",
    "SGD",
    "TrainingDiverged",
    "clip_grad_norm",
    "evaluate_nll",
    "gaussian_baseline_nll",
    "global_norm",
    "load_checkpoint",
    "peak_step_memory",
    "save_checkpoint",
    "train",
]
