"""Communicators: ``rank``, ``size``, a fixed-order ``allreduce``, ``broadcast``, and byte exchange.

A :class:`Communicator` is an explicit object (no global state): the training loop, the run
machinery and the command line receive one. Subclasses supply three transport primitives on
arrays (:meth:`~Communicator._alltoall`, :meth:`~Communicator._allgather`,
:meth:`~Communicator._broadcast`); the algorithms built on them live here, once, so MPI
(:class:`~rawflow.distributed.mpi.MPIComm`), NCCL (:class:`~rawflow.distributed.nccl.NcclComm`) and
any test transport compute the same thing.

**The sum has a fixed order.** ``allreduce(x)`` returns, on every rank, the same array

    s = (((x_0 + x_1) + x_2) + … ) + x_{P−1}        (x_r: rank r's input; left to right in rank order)

computed as a deterministic reduce-scatter followed by an allgather: the flat input is padded to
``P·c`` elements (``c = ⌈n/P⌉``) and cut into ``P`` chunks; an all-to-all sends chunk ``j`` of
every rank to rank ``j``, which adds the ``P`` pieces in rank order; an allgather returns the summed
chunks to everyone. Each element is therefore added once, by one rank, in rank order, whatever the
timing of the messages or the reduction algorithm an MPI library would have picked, and every rank
holds the bitwise-identical result. The traffic per rank, ``2·(P−1)/P·n`` elements, is what a ring
allreduce sends. ``P = 1`` returns ``x`` itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .._array import Array, namespace


class CommError(RuntimeError):
    """A collective operation failed (a peer died, a message was lost, the library raised)."""


class CommTimeout(CommError):
    """A collective did not complete before its deadline: another rank died, hung or fell behind."""


class ReplicaDivergence(CommError):
    """Ranks that must hold identical parameters (or configurations) do not."""


class Communicator(ABC):
    """``rank`` in ``[0, size)``, ``size`` processes; collectives on NumPy (or CuPy) arrays.

    Every rank must call the same collectives in the same order with arrays of the same shape and
    dtype (the data-parallel loop guarantees this; :func:`rawflow.distributed.parallel.check_replicas`
    verifies the parameters it depends on). ``what`` names the operation in timeout messages.
    """

    rank: int = 0
    size: int = 1
    timeout: float | None = None  # seconds a collective may wait for its peers (None: forever)

    # ------------------------------------------------------------------ transport primitives
    # Each transport (MPI, NCCL, the tests' threads) supplies these three; the collectives below
    # are written once on top of them, so every transport computes the same thing.
    @abstractmethod
    def _alltoall(self, send: Array, what: str) -> Array:
        """``send: (P, c)`` → ``recv: (P, c)`` with ``recv[j]`` = rank ``j``'s ``send[self.rank]``."""

    @abstractmethod
    def _allgather(self, send: Array, what: str) -> Array:
        """``send: (c,)`` → ``(P, c)``, row ``j`` from rank ``j``."""

    @abstractmethod
    def _broadcast(self, buf: Array, root: int, what: str) -> Array:
        """``root``'s ``buf`` on every rank (same shape and dtype everywhere)."""

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (after a failure that leaves collectives pending)."""
        raise SystemExit(code)

    # ---------------------------------------------------------------------------- collectives
    def allreduce(self, x: Array, what: str = "allreduce") -> Array:
        """``Σ_r x_r`` summed left to right in rank order; bitwise identical on every rank."""
        if self.size == 1:
            return x
        xp = namespace(x)
        p, n = self.size, int(x.size)
        c = -(-n // p)
        buf = xp.zeros(p * c, dtype=x.dtype)
        buf[:n] = xp.reshape(x, (-1,))
        pieces = self._alltoall(buf.reshape(p, c), what)  # (P, c): my chunk, from every rank
        acc = pieces[0].copy()
        for j in range(1, p):
            acc += pieces[j]
        return self._allgather(acc, what).reshape(-1)[:n].reshape(x.shape)

    def broadcast(self, x: Array, root: int = 0, what: str = "broadcast") -> Array:
        """``root``'s ``x`` on every rank (every rank passes an array of the same shape and dtype)."""
        if self.size == 1:
            return x
        xp = namespace(x)
        buf = xp.ascontiguousarray(x).copy()
        return self._broadcast(buf, root, what)

    def allgather_bytes(self, data: bytes, what: str = "allgather") -> list[bytes]:
        """Every rank's ``data``, in rank order (lengths may differ)."""
        if self.size == 1:
            return [bytes(data)]
        lengths = self._allgather(np.array([len(data)], dtype=np.int64), what + " (lengths)")[:, 0]
        width = max(1, int(lengths.max()))
        buf = np.zeros(width, dtype=np.uint8)
        buf[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        rows = self._allgather(buf, what)
        return [rows[j, :int(lengths[j])].tobytes() for j in range(self.size)]

    def broadcast_bytes(self, data: bytes | None, root: int = 0, what: str = "broadcast") -> bytes:
        """``root``'s ``data`` on every rank (the others pass anything, e.g. ``None``)."""
        if self.size == 1:
            return bytes(data)
        mine = bytes(data) if self.rank == root else b""
        length = self._broadcast(np.array([len(mine)], dtype=np.int64), root, what + " (length)")
        buf = np.zeros(int(length[0]), dtype=np.uint8)
        if self.rank == root:
            buf[:] = np.frombuffer(mine, dtype=np.uint8)
        return self._broadcast(buf, root, what).tobytes()

    def barrier(self, what: str = "barrier") -> None:
        self.allgather_bytes(b"", what)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """The one-process communicator: every collective returns its input; nothing is imported.

    Training with it (or with ``comm=None``) is exactly the single-process code path.
    """

    rank, size = 0, 1

    # The collectives return their input when size == 1 without calling these; they are the
    # one-process transport all the same (P = 1: every rank's row is this rank's).
    def _alltoall(self, send: Array, what: str) -> Array:
        return send.copy()

    def _allgather(self, send: Array, what: str) -> Array:
        return send.reshape(1, -1).copy()

    def _broadcast(self, buf: Array, root: int, what: str) -> Array:
        return buf

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)
