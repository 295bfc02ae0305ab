"""The NCCL path's host-side logic with a fake NCCL module, and the choice of communicator.

No GPU here: :class:`support.fake_nccl.FakeNccl` moves real bytes between the pointers NcclComm
hands it (ranks are threads), so the chunking, the grouped send/recv pairs, the allgather, the
unique id's trip through the MPI side and the abort on a timeout are all exercised; the GPU's own
arithmetic (the rank-order sum on device arrays) is the same NumPy/CuPy expression as on the host.
"""

import sys

import numpy as np
import pytest

from rawflow.distributed import CommTimeout, LaunchError, SingleProcess, for_device, from_environment
from rawflow.distributed.nccl import NcclComm
from support.fake_nccl import FakeNccl, HostDevice
from support.threadcomm import run_ranks


def _inputs(rank, shape=(5, 7), dtype=np.float64):
    rng = np.random.default_rng(rank)
    return (rng.normal(size=shape) * 10.0 ** rng.integers(-8, 8, size=shape)).astype(dtype)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shape", [(5, 7), (1,), (), (2,)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nccl_allreduce_is_the_rank_order_sum_of_the_host_path(size, shape, dtype):
    nccl = FakeNccl(size)

    def body(host):
        comm = NcclComm(host, nccl=nccl, device=HostDevice())
        x = _inputs(comm.rank, shape, dtype)
        return comm.allreduce(x), host.allreduce(x)

    out = run_ranks(size, body)
    expected = _inputs(0, shape, dtype).copy()
    for r in range(1, size):
        expected = expected + _inputs(r, shape, dtype)  # left to right, rank order
    for via_nccl, via_host in out:
        assert via_nccl.shape == shape and via_nccl.dtype == dtype
        assert np.array_equal(via_nccl, expected) and np.array_equal(via_host, expected)
    sends = [e for e in nccl.log if e[0] == "send"]
    assert len(sends) == size * (size - 1)  # one chunk to every other rank, none to itself
    assert {e[1:3] for e in sends} == {(r, p) for r in range(size) for p in range(size) if p != r}
    assert all(e[4] == (FakeNccl.NCCL_FLOAT64 if dtype == np.float64 else FakeNccl.NCCL_FLOAT32) for e in sends)


def test_the_unique_id_reaches_every_rank_through_the_host_communicator():
    nccl = FakeNccl(3)
    run_ranks(3, lambda host: NcclComm(host, nccl=nccl, device=HostDevice()))
    assert len(nccl.ids) == 1  # drawn once, by rank 0
    inits = sorted(e for e in nccl.log if e[0] == "init")
    assert [e[1] for e in inits] == [0, 1, 2] and all(e[2] == nccl.ids[0] for e in inits)


def test_broadcast_and_host_arrays():
    nccl = FakeNccl(2)

    def body(host):
        comm = NcclComm(host, nccl=nccl, device=HostDevice())
        return comm.broadcast(np.full(4, comm.rank + 1.0), root=1), comm.allgather_bytes(b"r%d" % comm.rank)

    out = run_ranks(2, body)
    assert all(np.array_equal(b, np.full(4, 2.0)) for b, _ in out)
    assert all(g == [b"r0", b"r1"] for _, g in out)
    assert any(e[0] == "broadcast" and e[4] == 1 for e in nccl.log)


def test_unsupported_dtype_is_named():
    nccl = FakeNccl(2)

    def body(host):
        return NcclComm(host, nccl=nccl, device=HostDevice()).allreduce(np.zeros(3, dtype=np.complex128))

    with pytest.raises(TypeError, match="no NCCL type for complex128"):
        run_ranks(2, body, timeout=5)


def test_a_collective_past_its_deadline_aborts_nccl_and_raises():
    nccl = FakeNccl(2)
    comms = []

    def body(host):
        comm = NcclComm(host, nccl=nccl, device=HostDevice(done=False))
        comms.append(comm)
        comm.allreduce(np.ones(3))

    with pytest.raises(CommTimeout, match="NCCL allreduce did not complete within 60 s"):
        run_ranks(2, body)
    assert all(c.comm.aborted for c in comms)


def test_the_communicator_is_chosen_by_device_and_size():
    single = SingleProcess()
    assert for_device(single, "gpu") is single  # one process never needs NCCL (nor CuPy)
    nccl, device = FakeNccl(2), HostDevice()

    def body(host):
        cpu = for_device(host, "cpu")
        gpu = for_device(host, "gpu", nccl=nccl, device_api=device)
        return cpu is host, type(gpu).__name__, gpu.host is host

    assert run_ranks(2, body) == [(True, "NcclComm", True)] * 2
    assert sorted(device.selected) == [0, 1]  # one GPU per rank on this node
    with pytest.raises(LaunchError, match="device must be 'cpu' or 'gpu'"):
        run_ranks(2, lambda host: for_device(host, "tpu"))


def test_from_environment_alone_and_without_mpi4py(monkeypatch):
    assert isinstance(from_environment(environ={}), SingleProcess)
    assert isinstance(from_environment(environ={"PMI_SIZE": "1"}), SingleProcess)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    with pytest.raises(LaunchError, match=r"one of 4 processes but mpi4py is not installed \(pip install 'rawflow\[mpi"):
        from_environment(environ={"OMPI_COMM_WORLD_SIZE": "4"})
    with pytest.raises(LaunchError, match="is not a process count"):
        from_environment(environ={"PMI_SIZE": "many"})
