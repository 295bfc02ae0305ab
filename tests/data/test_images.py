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
