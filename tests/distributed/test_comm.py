"""The communicator algorithms (``rawflow.distributed.comm``) on the thread transport."""

import numpy as np
import pytest

from rawflow.distributed import SingleProcess
from support.threadcomm import run_ranks


def test_allreduce_adds_left_to_right_in_rank_order():
    # (1e16 + 1) + (−1e16) = 0 in float64 but 1e16 + (1 + (−1e16)) = 0 and (1e16 + (−1e16)) + 1 = 1:
    # the result shows the association, and it is the same on every rank.
    values = [1e16, 1.0, -1e16]
    out = run_ranks(3, lambda comm: comm.allreduce(np.full(4, values[comm.rank])))
    assert all(np.array_equal(o, np.zeros(4)) for o in out)
    values = [1e16, -1e16, 1.0]
    out = run_ranks(3, lambda comm: comm.allreduce(np.full(4, values[comm.rank])))
    assert all(np.array_equal(o, np.ones(4)) for o in out)


@pytest.mark.parametrize("shape", [(), (1,), (2,), (3, 5), (0,)])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_allreduce_shapes_smaller_and_larger_than_p(shape, size):
    def x(rank):
        return np.random.default_rng(rank).normal(size=shape)

    out = run_ranks(size, lambda comm: comm.allreduce(x(comm.rank)))
    expected = x(0)
    for r in range(1, size):
        expected = expected + x(r)
    for o in out:
        assert o.shape == shape and np.array_equal(o, expected)


def test_bytes_and_broadcast():
    out = run_ranks(3, lambda comm: comm.allgather_bytes(b"x" * comm.rank * 3))
    assert out == [[b"", b"xxx", b"xxxxxx"]] * 3
    out = run_ranks(3, lambda comm: comm.broadcast_bytes(b"config" if comm.rank == 2 else None, root=2))
    assert out == [b"config"] * 3
    out = run_ranks(2, lambda comm: comm.broadcast(np.arange(3.0) + comm.rank, root=1))
    assert all(np.array_equal(o, [1.0, 2.0, 3.0]) for o in out)
    run_ranks(3, lambda comm: comm.barrier())


def test_single_process_returns_its_inputs():
    comm = SingleProcess()
    x = np.arange(3.0)
    assert comm.allreduce(x) is x and comm.broadcast(x) is x
    assert comm.allgather_bytes(b"a") == [b"a"] and comm.broadcast_bytes(b"b") == b"b"
    assert (comm.rank, comm.size) == (0, 1)


def test_a_communicator_without_its_transport_cannot_be_made():
    # the three transport primitives are abstract: a half-written transport fails at construction,
    # not at its first collective on some rank
    from rawflow.distributed.comm import Communicator

    class Partial(Communicator):
        def _alltoall(self, send, what):
            return send

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_single_process_primitives_are_the_one_rank_transport():
    from rawflow.distributed.comm import SingleProcess

    comm, x = SingleProcess(), np.arange(6.0)
    assert np.array_equal(comm._alltoall(x.reshape(1, 6), "t"), x.reshape(1, 6))
    assert np.array_equal(comm._allgather(x, "t"), x.reshape(1, 6))
    assert comm._broadcast(x, 0, "t") is x
    assert comm.allreduce(x) is x and comm.allgather_bytes(b"ab") == [b"ab"]
