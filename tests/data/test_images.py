import math

import numpy as np
import pytest

from rawflow.data.images import bits_per_dim, dequantize, digits, independent_pixel_baseline, load_images


def test_digits_ship_with_the_package_dependencies():
    images, n_bins = digits()
    assert images.shape == (1797, 1, 8, 8) and n_bins == 17
    assert images.min() == 0 and images.max() == 16


def test_dequantize_range_and_inverse():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 17, size=(50, 1, 4, 4))
    x = dequantize(v, 17, rng)
    assert x.min() >= 0 and x.max() < 1
    np.testing.assert_array_equal(np.floor(x * 17).astype(int), v)


def test_bits_per_dim_of_a_uniform_model_is_log2_bins():
    # A uniform density on [0, 1)^D has NLL 0; its discrete model puts 1/n_bins on every value.
    assert bits_per_dim(0.0, 64, 256) == pytest.approx(8.0, rel=1e-15)
    assert bits_per_dim(-64 * math.log(2), 64, 256) == pytest.approx(7.0, rel=1e-15)


def test_independent_pixel_baseline_matches_direct_computation():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 4, size=(200, 1, 2, 2))
    test = rng.integers(0, 4, size=(30, 1, 2, 2))
    got = independent_pixel_baseline(train, test, 4)
    flat_tr, flat_te = train.reshape(200, 4), test.reshape(30, 4)
    expected = 0.0
    for d in range(4):
        p = (np.bincount(flat_tr[:, d], minlength=4) + 1) / (200 + 4)
        expected += -np.log2(p[flat_te[:, d]]).sum()
    assert got == pytest.approx(expected / (30 * 4), rel=1e-13)


def test_load_images_npy_and_npz(tmp_path):
    imgs = np.random.default_rng(2).integers(0, 256, size=(5, 3, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    got, n_bins = load_images(tmp_path / "a.npy")
    assert n_bins == 256 and np.array_equal(got, imgs)
    np.savez(tmp_path / "b.npz", train=imgs[:, 0])
    got, _ = load_images(tmp_path / "b.npz")
    assert got.shape == (5, 1, 4, 4)


def test_load_images_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_images(tmp_path / "none.npy")
    np.save(tmp_path / "f.npy", np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="integer pixel values"):
        load_images(tmp_path / "f.npy")
    np.save(tmp_path / "o.npy", np.array([object()]), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read"):
        load_images(tmp_path / "o.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((1, 2, 2), int), b=np.ones((1, 2, 2), int))
    with pytest.raises(ValueError, match="choose one with key="):
        load_images(tmp_path / "two.npz")


# ------------------------------------------------------------------------------------ n-bit data
from rawflow.data.images import n_bits_note, reduce_bits  # noqa: E402


@pytest.mark.parametrize("n", range(1, 9))
def test_reduce_bits_of_8_bit_data_is_openai_glows_floor(n):
    """openai/glow's ``preprocess``: ``x = floor(x / 2^(8 − n_bits_x))`` on uint8 pixels."""
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    reduced, bins = reduce_bits(v, n, 256)
    assert bins == 2**n and reduced.dtype == np.int64
    assert np.array_equal(reduced, np.floor(v / 2 ** (8 - n)).astype(np.int64))


def test_reduce_bits_of_the_17_level_digits_uses_equal_width_bins():
    """Level v goes to the bin of [0, 17) that holds the centre v + ½: at 4 bits only 8 and 9 share
    one; at 2 bits the bins are 4.25 levels wide."""
    v = np.arange(17)
    assert reduce_bits(v, 4, 17)[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15]
    assert reduce_bits(v, 2, 17)[0].tolist() == [0] * 4 + [1] * 4 + [2] * 5 + [3] * 4
    images, bins = digits()
    reduced, levels = reduce_bits(images, 4, bins)
    assert levels == 16 and reduced.min() == 0 and reduced.max() == 15


def test_reduce_bits_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="at least 2\\^5 = 32 levels, the data have 17 .*n_bits ≤ 4"):
        reduce_bits(np.zeros(3, int), 5, 17)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_bits must be a positive integer"):
            reduce_bits(np.zeros(3, int), bad, 256)
    with pytest.raises(ValueError, match="integer pixel values"):
        reduce_bits(np.zeros(3), 4, 256)
    with pytest.raises(ValueError, match=r"lie in \[0, 255\]"):
        reduce_bits(np.array([256]), 4, 256)


def test_n_bit_bits_per_dim_use_two_to_the_n_bins_and_say_so():
    # the same NLL of the dequantised data: 5-bit bits/dim are 3 lower than 8-bit ones
    assert bits_per_dim(0.0, 10, 32) == pytest.approx(5.0, rel=1e-15)
    assert n_bits_note(None, 256) is None
    assert n_bits_note(5, 256) == ("5-bit data (n_bins = 2^5 = 32): bits/dim are not comparable with figures "
                                   "for the 8-bit data")
    assert "17-level data" in n_bits_note(4, 17)
