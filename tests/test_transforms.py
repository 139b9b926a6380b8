"""Tests of jaxbound.transforms (Ding et al. 2019 dataset variants)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxbound import data
from jaxbound import transforms as T


@pytest.fixture(scope="module")
def imgs():
    rng = np.random.default_rng(7)
    x = rng.random((6, 9, 11, 2)).astype(np.float32)
    # exact 0, 1 and 1/2 pixels and a few ties
    x[0, 0, :3, 0] = [0.0, 1.0, 0.5]
    x[1, 2:5, 2:5, 1] = 0.25
    return x


@pytest.fixture(scope="module")
def fashion_test(shared_data_dir):
    return data.load("fashion_mnist", split="test", data_dir=shared_data_dir)


def _np_saturate(x, p):
    v = 2.0 * x.astype(np.float64) - 1.0
    e = 0.0 if math.isinf(p) else 2.0 / p
    return np.sign(v) * np.abs(v) ** e / 2.0 + 0.5


# ---------------------------------------------------------------------------
# point-wise transforms
# ---------------------------------------------------------------------------


def test_saturate_two_is_identity(imgs):
    np.testing.assert_allclose(np.asarray(T.saturate(imgs, 2)), imgs, atol=1e-7)


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 3.0, 8.0, 64.0])
def test_saturate_matches_formula(imgs, p):
    out = np.asarray(T.saturate(imgs, p))
    np.testing.assert_allclose(out, _np_saturate(imgs, p), atol=2e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_saturate_infinity_and_large_p_binarise(imgs):
    inf = np.asarray(T.saturate(imgs, math.inf))
    off_half = imgs != 0.5
    np.testing.assert_array_equal(inf[off_half], np.asarray(T.binarize(imgs))[off_half])
    assert np.all(inf[~off_half] == 0.5)  # sign(0) = 0: exactly-grey pixels stay grey
    # MNIST-like pixels k/255 (never 1/2): a very large p is binary to within 1e-4
    grid = (np.arange(256, dtype=np.float32) / 255.0).reshape(1, 16, 16, 1)
    big = np.asarray(T.saturate(grid, 1e6))
    np.testing.assert_allclose(big, np.asarray(T.binarize(grid)), atol=1e-4)


def test_saturate_moves_towards_corners_or_centre(imgs):
    d0 = np.abs(imgs - 0.5)
    assert np.all(np.abs(np.asarray(T.saturate(imgs, 4.0)) - 0.5) >= d0 - 1e-7)
    assert np.all(np.abs(np.asarray(T.saturate(imgs, 1.0)) - 0.5) <= d0 + 1e-7)


def test_binarize(imgs):
    out = np.asarray(T.binarize(imgs))
    np.testing.assert_array_equal(out, (imgs > 0.5).astype(np.float32))
    assert out[0, 0, 2, 0] == 0.0  # exactly 1/2 rounds to 0 (half to even)
    np.testing.assert_array_equal(np.asarray(T.binarize(imgs, threshold=0.2)), (imgs > 0.2).astype(np.float32))


def test_gamma_and_scale(imgs):
    np.testing.assert_allclose(np.asarray(T.gamma(imgs, 1)), imgs, atol=0)
    np.testing.assert_allclose(np.asarray(T.scale(imgs, 1.0)), imgs, atol=1e-7)
    for g in (0.6, 1.4, 3.0):
        np.testing.assert_allclose(np.asarray(T.gamma(imgs, g)), imgs.astype(np.float64) ** g, rtol=2e-6, atol=1e-7)
    for a in (0.97, 0.809, 0.1):
        out = np.asarray(T.scale(imgs, a))
        np.testing.assert_allclose(out, a * (imgs.astype(np.float64) - 0.5) + 0.5, atol=1e-7)
        assert out.min() >= (1 - a) / 2 - 1e-7 and out.max() <= (1 + a) / 2 + 1e-7


# ---------------------------------------------------------------------------
# smoothing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 8, 15])
def test_smooth_matches_scipy_and_dominates(imgs, s):
    out = np.asarray(T.smooth(imgs, s))
    ref = np.maximum(imgs, ndi.uniform_filter(imgs.astype(np.float64), size=(1, s, s, 1), mode="reflect"))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert np.all(out >= imgs)
    assert out.max() <= 1.0
    if s == 1:
        np.testing.assert_array_equal(out, imgs)


@pytest.mark.parametrize("kernel, window", [("vertical", lambda s: (1, s, 1, 1)), ("horizontal", lambda s: (1, 1, s, 1))])
@pytest.mark.parametrize("s", [2, 3, 5])
def test_smooth_one_dimensional_kernels(imgs, kernel, window, s):
    out = np.asarray(T.smooth(imgs, s, kernel=kernel))
    ref = np.maximum(imgs, ndi.uniform_filter(imgs.astype(np.float64), size=window(s), mode="reflect"))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert np.all(out >= imgs)
    np.testing.assert_array_equal(np.asarray(T.apply("smooth_vertical", imgs, s)),
                                  np.asarray(T.smooth(imgs, s, kernel="vertical")))


def test_smooth_vertical_reproduces_table6(mnist_test):
    # Ding et al. Table 6 (MNIST test set, eps 0.3): smooth 3 -> -1265, smooth 5 -> -1234 bits.
    from jaxbound import shift

    x = mnist_test.images[:2000]
    v3 = shift.perturbable_volume(np.asarray(T.smooth(x, 3, kernel="vertical")), eps=0.3)
    v5 = shift.perturbable_volume(np.asarray(T.smooth(x, 5, kernel="vertical")), eps=0.3)
    assert abs(v3 - (-1265)) < 6 and abs(v5 - (-1234)) < 6  # 2000-image subset: a few bits of sampling noise
    sq5 = shift.perturbable_volume(np.asarray(T.smooth(x, 5)), eps=0.3)
    assert sq5 > v5 + 30  # the square window smooths much more


def test_smooth_constant_image_unchanged():
    x = np.full((2, 7, 7, 1), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(T.smooth(x, 4)), x, atol=1e-7)


# ---------------------------------------------------------------------------
# validation, jit, sizes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda x: T.saturate(x, 0), "p"),
        (lambda x: T.saturate(x, -2.0), "p"),
        (lambda x: T.saturate(x, float("nan")), "p"),
        (lambda x: T.saturate(x, "3"), "p"),
        (lambda x: T.smooth(x, 0), "s"),
        (lambda x: T.smooth(x, -1), "s"),
        (lambda x: T.smooth(x, 2.5), "s"),
        (lambda x: T.smooth(x, 3, kernel="diagonal"), "kernel"),
        (lambda x: T.gamma(x, 0.0), "g"),
        (lambda x: T.gamma(x, -1.0), "g"),
        (lambda x: T.scale(x, 0.0), "a"),
        (lambda x: T.scale(x, 1.5), "a"),
        (lambda x: T.canny(x, 0.0), "sigma"),
        (lambda x: T.canny(x, low_threshold=-0.1), "low_threshold"),
        (lambda x: T.canny(x, low_threshold=0.3, high_threshold=0.2), "high_threshold"),
        (lambda x: T.binarize(x, threshold=2.0), "threshold"),
        (lambda x: T.apply("blur", x, 1), "name"),
        (lambda x: T.apply("smooth", x), "level"),
    ],
)
def test_bad_levels_raise(imgs, call, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        call(imgs)


@pytest.mark.parametrize("fn", [lambda x: T.smooth(x, 2), lambda x: T.saturate(x, 4), lambda x: T.gamma(x, 2.0),
                                lambda x: T.scale(x, 0.5), T.binarize, T.canny])
def test_bad_images_raise(fn):
    bad = np.full((1, 5, 5, 1), 0.5, np.float32)
    bad[0, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="^x:"):
        fn(bad)
    with pytest.raises(ValueError, match="^x:"):
        fn(np.full((1, 5, 5, 1), 1.2, np.float32))  # outside [0, 1]: never clipped silently
    with pytest.raises(ValueError, match="^x:"):
        fn(np.zeros((5, 5), np.float32))  # not [n, H, W, C]


def test_jit_equals_eager(imgs):
    for fn in (lambda x: T.smooth(x, 3), lambda x: T.saturate(x, 4.0), lambda x: T.gamma(x, 0.8),
               lambda x: T.scale(x, 0.9), T.binarize, T.canny):
        np.testing.assert_array_equal(np.asarray(jax.jit(fn)(imgs)), np.asarray(fn(imgs)))


def test_sizes_zero_and_one(imgs):
    empty = np.zeros((0, 9, 11, 2), np.float32)
    for name, lev in (("smooth", 3), ("saturate", 4.0), ("gamma", 2.0), ("scale", 0.5), ("binarize", None),
                      ("canny", None), ("identity", None)):
        assert T.apply(name, empty, lev).shape == empty.shape
        one = np.asarray(T.apply(name, imgs[:1], lev))
        np.testing.assert_array_equal(one, np.asarray(T.apply(name, imgs, lev))[:1])


# ---------------------------------------------------------------------------
# Canny
# ---------------------------------------------------------------------------


def _sk_canny(x, **kw):
    from skimage.feature import canny

    planes = np.transpose(x, (0, 3, 1, 2))
    out = np.stack([[canny(p, **kw) for p in img] for img in planes])
    return np.transpose(out, (0, 2, 3, 1))


def test_canny_matches_skimage_random_images():
    rng = np.random.default_rng(3)
    x = rng.random((20, 13, 17, 2)).astype(np.float32)
    x[:5] = np.round(x[:5])  # binary images: many exact ties in the gradients
    for sigma, lo, hi in ((1.0, 0.1, 0.2), (1.5, 0.05, 0.3), (0.6, 0.0, 0.2)):
        ours = np.asarray(T.canny(x, sigma, low_threshold=lo, high_threshold=hi)).astype(bool)
        ref = _sk_canny(x, sigma=sigma, low_threshold=lo, high_threshold=hi)
        assert (ours == ref).mean() >= 0.999
        assert ours[:, 0].sum() == 0 and ours[:, :, -1].sum() == 0  # the border is never an edge


def test_canny_matches_skimage_digits(digits_train):
    x = digits_train.images[:200]
    ours = np.asarray(T.canny(x)).astype(bool)
    ref = _sk_canny(x, sigma=1.0)
    assert (ours == ref).mean() >= 0.99


def test_canny_matches_skimage_mnist(mnist_test):
    x = mnist_test.images[:300]
    ours = np.asarray(T.canny(x)).astype(bool)
    ref = _sk_canny(x, sigma=1.0, low_threshold=0.1, high_threshold=0.2)
    agree = (ours == ref).mean()
    assert agree >= 0.99, agree
    assert ref.mean() > 0.05  # the comparison is not between two empty maps


def test_canny_matches_skimage_fashion_mnist(fashion_test):
    x = fashion_test.images[:300]
    ours = np.asarray(T.canny(x, 1.0)).astype(bool)
    ref = _sk_canny(x, sigma=1.0)
    agree = (ours == ref).mean()
    assert agree >= 0.99, agree
    assert ref.mean() > 0.05


def test_canny_hysteresis_links_weak_to_strong():
    # a vertical step whose height falls from 1 (strong edge) to 0.25 (weak edge) down the image
    h = np.linspace(1.0, 0.25, 24, dtype=np.float32)
    x = np.zeros((1, 24, 16, 1), np.float32)
    x[0, :, 8:, 0] = h[:, None]
    kw = dict(low_threshold=0.2, high_threshold=1.5)  # magnitude at the step is about 2.56 h
    ours = np.asarray(T.canny(x, 1.0, **kw)).astype(bool)
    ref = _sk_canny(x, sigma=1.0, **kw)
    assert (ours == ref).mean() >= 0.98
    rows = ours[0, 1:-1, :, 0].any(axis=1)
    assert rows.all()  # the weak lower part survives, linked through the strong upper part
    alone = x * 0.5  # the same shape, all weak: no edge at all
    assert not np.asarray(T.canny(alone, 1.0, **kw)).any()
    assert _sk_canny(alone, sigma=1.0, **kw).sum() == 0
    assert ours.sum() > 0 and _sk_canny(x, sigma=1.0, low_threshold=1.3, high_threshold=1.5)[0, 20].sum() == 0
