"""GPU collectives through NCCL (``cupy.cuda.nccl``), set up over an MPI communicator.

:class:`NcclComm` runs :class:`~rawflow.distributed.comm.Communicator`'s algorithms on device
arrays with NCCL transports: the all-to-all of the fixed-order sum is a group of point-to-point
``send``/``recv`` pairs (one per peer; a rank's own chunk is a device copy), the allgather is
``allGather``, the broadcast ``broadcast`` in place. The local sum in rank order runs on the GPU,
so the GPU path adds exactly what the MPI path adds, in the same order. Host (NumPy) arrays — the
parameter digests, configs, evaluation sums — go through the MPI communicator it was built on.

Set-up: rank 0 draws NCCL's unique id, the MPI communicator broadcasts its 128 bytes, and every
rank creates ``NcclCommunicator(P, id, rank)`` on the GPU :func:`~rawflow.distributed.launch.for_device`
selected. NCCL enqueues work on the current CUDA stream and returns at once; completion is awaited
by polling a CUDA event against the same deadline as the MPI collectives, and a timed-out NCCL
communicator is aborted (``ncclCommAbort``) before :class:`CommTimeout` is raised, so no kernel is
left waiting for a dead peer.

``nccl`` (the module) and ``device`` (pointers, streams, completion; :class:`CupyDevice`) are
arguments: a test passes a fake NCCL and a host-memory device to check this file's logic without
a GPU.
"""

from __future__ import annotations

import time

import numpy as np

from .._array import Array, namespace
from .comm import CommError, CommTimeout, Communicator

_NCCL_TYPES = {"float64": "NCCL_FLOAT64", "float32": "NCCL_FLOAT32", "float16": "NCCL_FLOAT16",
               "int64": "NCCL_INT64", "uint64": "NCCL_UINT64", "int32": "NCCL_INT32", "uint8": "NCCL_UINT8"}


class CupyDevice:
    """Device handling for :class:`NcclComm` on CuPy arrays (the real one)."""

    def __init__(self):
        import cupy

        self.cupy = cupy

    def nccl_module(self):
        try:
            from cupy.cuda import nccl
        except ImportError as exc:
            raise CommError(f"--device gpu on several ranks needs NCCL for CuPy (e.g. pip install nvidia-nccl-cu12): "
                            f"{exc}") from exc
        if not getattr(nccl, "available", True):
            raise CommError("CuPy was built without NCCL: install NCCL for CuPy (e.g. pip install nvidia-nccl-cu12)")
        return nccl

    def select(self, local_rank: int) -> None:
        count = self.cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise CommError("no CUDA device is visible to this rank")
        self.cupy.cuda.Device(local_rank % count).use()

    def owns(self, x: Array) -> bool:
        return namespace(x) is self.cupy

    def pointer(self, x: Array) -> int:
        return int(x.data.ptr)

    def stream(self) -> int:
        return int(self.cupy.cuda.get_current_stream().ptr)

    def wait(self, stream: int, timeout: float | None) -> bool:
        """``True`` once the work queued on the current stream is done; ``False`` at the deadline."""
        event = self.cupy.cuda.Event(disable_timing=True)
        event.record()
        start, delay = time.monotonic(), 1e-5
        while not event.done:
            if timeout is not None and time.monotonic() - start > timeout:
                return False
            time.sleep(delay)
            delay = min(1e-3, 2 * delay)
        return True


class NcclComm(Communicator):
    """NCCL for device arrays, ``host`` (an MPI communicator) for everything else."""

    def __init__(self, host: Communicator, *, nccl, device):
        self.host, self.nccl, self.device = host, nccl, device
        self.rank, self.size, self.timeout = host.rank, host.size, host.timeout
        uid = np.asarray(nccl.get_unique_id(), dtype=np.int8).tobytes() if host.rank == 0 else None
        uid = host.broadcast_bytes(uid, 0, "the NCCL unique id")
        uid = tuple(int(v) for v in np.frombuffer(uid, dtype=np.int8))  # CuPy's id: 128 signed chars
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _type(self, x: Array) -> int:
        name = np.dtype(x.dtype).name
        if name not in _NCCL_TYPES:
            raise TypeError(f"NcclComm: no NCCL type for {name} arrays")
        return getattr(self.nccl, _NCCL_TYPES[name])

    def _done(self, what: str) -> None:
        if not self.device.wait(self.device.stream(), self.timeout):
            self.comm.abort()
            raise CommTimeout(f"rank {self.rank} of {self.size}: NCCL {what} did not complete within "
                              f"{self.timeout:g} s; another rank has died, hung or fallen that far behind "
                              "(NCCL communicator aborted)")

    def _alltoall(self, send, what):
        if not self.device.owns(send):
            return self.host._alltoall(send, what)
        xp = namespace(send)
        send = xp.ascontiguousarray(send)
        recv = xp.empty_like(send)
        recv[self.rank] = send[self.rank]
        count, kind, stream = int(send.shape[1]), self._type(send), self.device.stream()
        step = count * send.dtype.itemsize
        s0, r0 = self.device.pointer(send), self.device.pointer(recv)
        self.nccl.groupStart()
        try:
            for peer in range(self.size):
                if peer != self.rank:
                    self.comm.send(s0 + peer * step, count, kind, peer, stream)
                    self.comm.recv(r0 + peer * step, count, kind, peer, stream)
        finally:
            self.nccl.groupEnd()
        self._done(what)
        return recv

    def _allgather(self, send, what):
        if not self.device.owns(send):
            return self.host._allgather(send, what)
        xp = namespace(send)
        send = xp.ascontiguousarray(send)
        recv = xp.empty((self.size, *send.shape), dtype=send.dtype)
        self.comm.allGather(self.device.pointer(send), self.device.pointer(recv), int(send.size), self._type(send),
                            self.device.stream())
        self._done(what)
        return recv

    def _broadcast(self, buf, root, what):
        if not self.device.owns(buf):
            return self.host._broadcast(buf, root, what)
        p = self.device.pointer(buf)
        self.comm.broadcast(p, p, int(buf.size), self._type(buf), root, self.device.stream())
        self._done(what)
        return buf

    def abort(self, code: int = 1) -> None:
        try:
            self.comm.abort()
        finally:
            self.host.abort(code)

    def __repr__(self) -> str:
        return f"NcclComm(rank={self.rank}, size={self.size}, host={self.host!r})"
