"""Data-parallel training over MPI (CPU) and NCCL (GPU): communicators and the per-step collectives.

* :mod:`.comm`: ``Communicator`` (``rank``, ``size``, a fixed-order ``allreduce``, ``broadcast``),
  ``SingleProcess``, the errors.
* :mod:`.mpi`: ``MPIComm`` (mpi4py; every collective waited for against a deadline).
* :mod:`.nccl`: ``NcclComm`` (``cupy.cuda.nccl``, set up over an MPI communicator).
* :mod:`.parallel`: ``DataParallel`` (shards, the gradient sum), replica digests and checks.
* :mod:`.launch`: ``from_environment`` (the communicator for a process started by ``mpiexec``).

mpi4py and CuPy are imported only when a communicator that needs them is created.
"""

from .comm import CommError, CommTimeout, Communicator, ReplicaDivergence, SingleProcess
from .launch import LaunchError, for_device, from_environment, launched_size
from .parallel import DataParallel, agree, check_replicas, digest, global_sum, shard_bounds, together

__all__ = [
    "CommError",
    "CommTimeout",
    "Communicator",
    "DataParallel",
    "LaunchError",
    "ReplicaDivergence",
    "SingleProcess",
    "agree",
    "check_replicas",
    "digest",
    "for_device",
    "from_environment",
    "global_sum",
    "launched_size",
    "shard_bounds",
    "together",
]
