"""A fake ``cupy.cuda.nccl`` and a host-memory device, for NcclComm's host-side logic without a GPU.

:class:`FakeNccl` has the parts of CuPy's NCCL module that :class:`rawflow.distributed.nccl.NcclComm`
uses — ``get_unique_id``, ``NcclCommunicator(ndev, commId, rank)`` with ``send``/``recv``/
``allGather``/``broadcast``/``abort``, ``groupStart``/``groupEnd`` and the ``NCCL_*`` type codes —
and moves real bytes between the raw pointers it is given (ctypes), across ranks that are threads.
Like NCCL it refuses a ``send``/``recv`` outside a group (the pairs would deadlock) and a buffer
count that disagrees between ranks; it records every call in ``log`` for the tests to read.
:class:`HostDevice` stands for CUDA: NumPy arrays are "device" arrays, their pointer is
``ctypes.data``, every operation is complete when it returns (``done`` decides what ``wait`` says).
"""

from __future__ import annotations

import ctypes
import queue
import threading

import numpy as np

_SIZES = {0: 1, 1: 1, 2: 4, 3: 4, 4: 8, 5: 8, 6: 2, 7: 4, 8: 8}


class HostDevice:
    def __init__(self, done: bool = True):
        self.done, self.selected = done, []

    def select(self, local_rank: int) -> None:
        self.selected.append(local_rank)

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def pointer(self, x) -> int:
        assert x.flags.c_contiguous, "NCCL needs contiguous buffers"
        return x.ctypes.data

    def stream(self) -> int:
        return 0

    def wait(self, stream: int, timeout) -> bool:
        return self.done


class FakeNccl:
    NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64 = 0, 1, 2, 3, 4, 5
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8

    def __init__(self, size: int, timeout: float = 30.0):
        self.size, self.timeout = size, timeout
        self.log, self._lock = [], threading.Lock()
        self._local = threading.local()
        self._mail = {(s, d): queue.Queue() for s in range(size) for d in range(size)}
        self._barrier = threading.Barrier(size)
        self._slots = [None] * size
        self.ids = []

    # ---------------------------------------------------------------------------- module API
    def get_unique_id(self):
        uid = tuple(int(v) for v in np.random.default_rng(len(self.ids)).integers(-128, 128, size=128))
        self.ids.append(uid)
        return uid

    def groupStart(self):  # noqa: N802 - CuPy's name
        self._local.pending = []

    def groupEnd(self):  # noqa: N802
        pending, self._local.pending = self._local.pending, None
        for op in pending:  # NCCL starts a group's operations together: sends cannot block receives
            if op[0] == "send":
                self._mail[(op[1], op[2])].put(op[3])
        for op in pending:
            if op[0] == "recv":
                data = self._mail[(op[2], op[1])].get(timeout=self.timeout)
                assert len(data) == op[4], f"recv of {op[4]} bytes got {len(data)}"
                ctypes.memmove(op[3], data, op[4])

    def NcclCommunicator(self, ndev, commId, rank):  # noqa: N802
        return _Comm(self, ndev, commId, rank)

    def _exchange(self, rank, value):
        self._slots[rank] = value
        self._barrier.wait(self.timeout)
        every = list(self._slots)
        self._barrier.wait(self.timeout)
        return every


class _Comm:
    def __init__(self, nccl: FakeNccl, ndev, commId, rank):
        assert ndev == nccl.size and isinstance(commId, tuple) and len(commId) == 128
        assert all(isinstance(v, int) and -128 <= v < 128 for v in commId)
        self.nccl, self.rank, self.commId, self.aborted = nccl, rank, commId, False
        with nccl._lock:
            nccl.log.append(("init", rank, commId))

    def _record(self, *call):
        with self.nccl._lock:
            self.nccl.log.append((call[0], self.rank) + call[1:])

    def send(self, ptr, count, datatype, peer, stream):
        pending = getattr(self.nccl._local, "pending", None)
        assert pending is not None, "send outside groupStart/groupEnd"
        assert peer != self.rank, "a rank's own chunk is copied, not sent"
        self._record("send", peer, count, datatype)
        pending.append(("send", self.rank, peer, ctypes.string_at(ptr, count * _SIZES[datatype])))

    def recv(self, ptr, count, datatype, peer, stream):
        pending = getattr(self.nccl._local, "pending", None)
        assert pending is not None, "recv outside groupStart/groupEnd"
        self._record("recv", peer, count, datatype)
        pending.append(("recv", self.rank, peer, ptr, count * _SIZES[datatype]))

    def allGather(self, sendptr, recvptr, count, datatype, stream):  # noqa: N802
        self._record("allGather", count, datatype)
        n = count * _SIZES[datatype]
        every = self.nccl._exchange(self.rank, (n, ctypes.string_at(sendptr, n)))
        assert len({e[0] for e in every}) == 1, "allGather counts differ between ranks"
        for j, (_, data) in enumerate(every):
            ctypes.memmove(recvptr + j * n, data, n)

    def broadcast(self, sendptr, recvptr, count, datatype, root, stream):
        self._record("broadcast", count, datatype, root)
        n = count * _SIZES[datatype]
        every = self.nccl._exchange(self.rank, ctypes.string_at(sendptr, n))
        ctypes.memmove(recvptr, every[root], n)

    def abort(self):
        self._record("abort")
        self.aborted = True
