"""Choosing the communicator for a process started by ``mpiexec`` (or alone).

:func:`from_environment` is what ``rawflow train`` calls. The launcher tells each process how many
were started (``PMI_SIZE`` from MPICH's and Intel MPI's ``mpiexec`` and Slurm's PMI-2,
``OMPI_COMM_WORLD_SIZE`` from Open MPI's): with none set, or 1, the process is alone and gets
:class:`~rawflow.distributed.comm.SingleProcess` without importing mpi4py, so a plain
``rawflow train`` runs exactly as it did before MPI support existed. Otherwise mpi4py must be
installed (``pip install 'rawflow[mpi]'``) and must see the same number of processes as the
launcher started (a launcher of one MPI implementation running Python linked against another
leaves every process alone in its own world: P copies of one run writing one folder).

Then, by device: ``"cpu"`` → :class:`~rawflow.distributed.mpi.MPIComm`; ``"gpu"`` → one GPU per
rank (the rank's index among the ranks on its node, modulo the GPUs it sees) and
:class:`~rawflow.distributed.nccl.NcclComm`, whose NCCL communicator is set up through the MPI one.
"""

from __future__ import annotations

import os
from typing import Mapping

from .comm import Communicator, SingleProcess

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


class LaunchError(RuntimeError):
    """The processes cannot work together as launched; the message says how to launch them."""


def launched_size(environ: Mapping[str, str] | None = None) -> int:
    """How many processes the launcher says it started (1 when no launcher variable is set)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name)
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                raise LaunchError(f"the launcher variable {name}={value!r} is not a process count") from None
    return 1


def from_environment(device: str = "cpu", *, timeout: float | None = None, environ: Mapping[str, str] | None = None,
                     nccl=None) -> Communicator:
    """The communicator this process should train with (see the module docstring).

    ``timeout``: seconds a collective may wait (default :data:`rawflow.distributed.mpi.DEFAULT_TIMEOUT`).
    ``nccl``: the NCCL module for the GPU path (default ``cupy.cuda.nccl``).
    """
    size = launched_size(environ)
    if size == 1:
        return SingleProcess()
    try:
        from mpi4py import MPI  # noqa: F401
    except ImportError as exc:
        raise LaunchError(f"started as one of {size} processes but mpi4py is not installed "
                          f"(pip install 'rawflow[mpi]'); without it every process would train alone "
                          f"and write the same run folder ({exc})") from exc
    from .mpi import DEFAULT_TIMEOUT, MPIComm

    comm = MPIComm(timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    if comm.size != size:
        raise LaunchError(
            f"the launcher started {size} processes but MPI ({MPI.Get_library_version().splitlines()[0].strip()}) "
            f"sees {comm.size}: mpiexec and mpi4py come from different MPI installations; use the mpiexec "
            "installed with mpi4py's MPI (e.g. the one next to this Python)")
    return for_device(comm, device, nccl=nccl)


def for_device(comm: Communicator, device: str, *, nccl=None, device_api=None) -> Communicator:
    """``comm`` itself for ``"cpu"``; for ``"gpu"`` an :class:`NcclComm` over it, after selecting
    this rank's GPU. ``device_api`` replaces CuPy's device handling (tests)."""
    if device == "cpu" or comm.size == 1:
        return comm
    if device != "gpu":
        raise LaunchError(f"device must be 'cpu' or 'gpu', got {device!r}")
    from .nccl import CupyDevice, NcclComm

    api = CupyDevice() if device_api is None else device_api
    if nccl is None:
        nccl = api.nccl_module()
    api.select(_local_rank(comm))
    return NcclComm(comm, nccl=nccl, device=api)


def _local_rank(comm: Communicator) -> int:
    """This rank's index among the ranks on its node (by host name, gathered in rank order)."""
    import socket

    hosts = [h.decode() for h in comm.allgather_bytes(socket.gethostname().encode(), "the host names")]
    return hosts[:comm.rank].count(hosts[comm.rank])
