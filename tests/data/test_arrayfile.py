"""``rawflow.data.arrayfile.read_array``: one array from ``.npy`` / ``.npz``, never through pickle."""

from __future__ import annotations

import numpy as np
import pytest

from rawflow.data.arrayfile import read_array


class Custom(ValueError):
    pass


def test_reads_npy_and_npz_and_reports_every_failure(tmp_path):
    a, b = np.arange(6).reshape(2, 3), np.ones((2, 2))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "one.npz", only=a)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert np.array_equal(read_array(tmp_path / "a.npy", owner="t"), a)
    assert np.array_equal(read_array(tmp_path / "one.npz", owner="t"), a)  # the only array
    assert np.array_equal(read_array(tmp_path / "two.npz", "b", owner="t"), b)
    cases = [
        (tmp_path / "missing.npy", None, "t: no such file"),
        (tmp_path / "junk.npy", None, "t: cannot read"),
        (tmp_path / "obj.npy", None, "t: cannot read"),  # object arrays need pickle: refused
        (tmp_path / "two.npz", None, r"t: .*two.npz holds arrays 'a', 'b'; choose one with --key"),
        (tmp_path / "two.npz", "c", r"t: .*has no array 'c' \(it has arrays 'a', 'b'\)"),
    ]
    for path, key, message in cases:
        with pytest.raises(Custom, match=message):
            read_array(path, key, owner="t", key_option="--key", error=Custom)


def test_a_file_of_many_arrays_is_summarised_not_listed(tmp_path):
    """Seen: a 10,000-member ``.npz`` without a key listed every name in one line."""
    np.savez(tmp_path / "many.npz", **{f"a{i}": np.zeros(1) for i in range(10000)})
    with pytest.raises(Custom) as info:
        read_array(tmp_path / "many.npz", owner="t", key_option="--key", error=Custom)
    message = str(info.value)
    assert "10000 arrays ('a0', 'a1', 'a2', 'a3', 'a4', …); choose one with --key" in message
    assert len(message) < 200 + len(str(tmp_path)), message
