"""MPI through mpi4py: every collective is non-blocking and waited for against a deadline.

MPI does not promise that a collective returns when a peer dies: the MPICH launcher kills the job
when a process is killed, but a peer that hangs (stopped, deadlocked, stuck on a file system), or
a launcher that does not clean up, leaves the others blocked for ever. So :class:`MPIComm` starts
each collective with its non-blocking form (``Ialltoall``, ``Iallgather``, ``Ibcast``) and polls
``Test`` until it completes or ``timeout`` seconds pass; then it raises :class:`CommTimeout`,
naming the operation, the rank and the deadline. Pending requests cannot be cancelled portably, so
a process that caught one must not finalise MPI normally: :meth:`MPIComm.abort` (``MPI_Abort``)
ends the whole job, which is what the command line does.

Polling sleeps between tests (from 10 µs, doubling, up to ``poll`` seconds) so a waiting rank
leaves the CPU to a computing one on an oversubscribed machine; every ``Test`` also drives MPI's
progress engine. Host (NumPy) buffers only: CuPy arrays are staged through host memory here
(the GPU path is :class:`~rawflow.distributed.nccl.NcclComm`).
"""

from __future__ import annotations

import time

import numpy as np

from .._array import Array, namespace, to_numpy
from .comm import CommError, CommTimeout, Communicator

DEFAULT_TIMEOUT = 300.0  # seconds; a checkpoint written by rank 0 must fit in it


class MPIComm(Communicator):
    """A communicator over ``comm`` (an ``mpi4py.MPI.Comm``; default: a duplicate of ``COMM_WORLD``).

    ``timeout``: seconds any one collective may wait for its peers before :class:`CommTimeout`
    (``None``: wait for ever). The duplicate keeps rawflow's messages apart from the caller's.
    """

    def __init__(self, comm=None, *, timeout: float | None = DEFAULT_TIMEOUT, poll: float = 1e-3):
        if timeout is not None and not timeout > 0:
            raise ValueError(f"MPIComm: timeout must be positive seconds or None, got {timeout!r}")
        from mpi4py import MPI

        self.MPI = MPI
        self.timeout, self.poll = timeout, float(poll)
        base = MPI.COMM_WORLD if comm is None else comm
        base.Set_errhandler(MPI.ERRORS_RETURN)  # errors become exceptions, never an abort inside MPI
        self.rank, self.size = base.Get_rank(), base.Get_size()
        dup, req = base.Idup()
        self._wait(req, "creating the communicator")
        self.comm = dup
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)

    def _wait(self, req, what: str) -> None:
        start = time.monotonic()
        delay = 1e-5
        try:
            while not req.Test():
                if self.timeout is not None and time.monotonic() - start > self.timeout:
                    raise CommTimeout(
                        f"rank {self.rank} of {self.size}: {what} did not complete within {self.timeout:g} s; "
                        "another rank has died, hung or fallen that far behind")
                time.sleep(delay)
                delay = min(self.poll, 2 * delay)
        except self.MPI.Exception as exc:
            raise CommError(f"rank {self.rank} of {self.size}: {what} failed in MPI: {exc}") from exc

    @staticmethod
    def _host(x: Array) -> np.ndarray:
        return np.ascontiguousarray(to_numpy(x))

    def _alltoall(self, send, what):
        xp, host = namespace(send), self._host(send)
        recv = np.empty_like(host)
        self._wait(self.comm.Ialltoall(host, recv), what)
        return recv if xp is np else xp.asarray(recv)

    def _allgather(self, send, what):
        xp, host = namespace(send), self._host(send)
        recv = np.empty((self.size, *host.shape), dtype=host.dtype)
        self._wait(self.comm.Iallgather(host, recv), what)
        return recv if xp is np else xp.asarray(recv)

    def _broadcast(self, buf, root, what):
        xp, host = namespace(buf), self._host(buf)
        self._wait(self.comm.Ibcast(host, root), what)
        return host if xp is np else xp.asarray(host)

    def abort(self, code: int = 1) -> None:
        """``MPI_Abort`` on ``COMM_WORLD``: the launcher ends every rank (pending requests included)."""
        self.MPI.COMM_WORLD.Abort(code)

    def __repr__(self) -> str:
        return f"MPIComm(rank={self.rank}, size={self.size}, timeout={self.timeout})"
