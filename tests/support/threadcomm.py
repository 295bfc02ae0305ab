"""A thread transport for :class:`rawflow.distributed.comm.Communicator`: P ranks in one process.

Test double for the communicator algorithms and the data-parallel loop without ``mpiexec``: each
rank is a thread, the primitives exchange copies of NumPy arrays through shared slots between two
barrier waits (write; wait; read; wait), and a barrier that times out raises ``CommTimeout`` the
way an MPI collective past its deadline does.
"""

from __future__ import annotations

import threading

import numpy as np

from rawflow.distributed.comm import CommTimeout, Communicator


class ThreadGroup:
    def __init__(self, size: int, timeout: float = 60.0):
        self.size, self.timeout = size, timeout
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size

    def comms(self) -> list["ThreadComm"]:
        return [ThreadComm(self, r) for r in range(self.size)]


class ThreadComm(Communicator):
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.size, self.timeout = group, rank, group.size, group.timeout

    def _wait(self, what: str) -> None:
        try:
            self.group.barrier.wait(self.timeout)
        except threading.BrokenBarrierError:
            raise CommTimeout(f"rank {self.rank} of {self.size}: {what} did not complete "
                              f"within {self.timeout:g} s") from None

    def _exchange(self, value: np.ndarray, what: str) -> list[np.ndarray]:
        self.group.slots[self.rank] = np.array(value, copy=True)
        self._wait(what)
        every = list(self.group.slots)
        self._wait(what)
        return every

    def _alltoall(self, send, what):
        every = self._exchange(send, what)
        return np.stack([every[j][self.rank] for j in range(self.size)])

    def _allgather(self, send, what):
        return np.stack(self._exchange(send, what))

    def _broadcast(self, buf, root, what):
        return self._exchange(buf, what)[root].copy()


def run_ranks(size: int, fn, timeout: float = 60.0) -> list:
    """``[fn(comm_0), …, fn(comm_{P−1})]`` run in P threads; the first exception is re-raised."""
    group = ThreadGroup(size, timeout)
    results, errors = [None] * size, [None] * size

    def body(comm):
        try:
            results[comm.rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors[comm.rank] = exc
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(c,)) for c in group.comms()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None and not isinstance(exc, CommTimeout):
            raise exc
    for exc in errors:
        if exc is not None:
            raise exc
    return results
