"""Semantics-preserving dataset transforms of Ding et al. (2019), jitted and batched.

Every transform takes images ``x [n, H, W, C]`` with pixels in ``[0, 1]`` and
returns a ``jax.Array`` of the same shape, dtype float32, again in ``[0, 1]``:

* :func:`binarize` -- pixels rounded to 0 or 1 ("binarized MNIST", §2.2 and
  footnote 5).
* :func:`smooth` -- pixel-wise maximum of ``x`` and its ``s x s`` average
  filter ("smoothing", §3.1); ``kernel="vertical"`` (``s x 1``) reproduces
  the paper's published Table 1 and Table 6 numbers.
* :func:`saturate` -- ``sign(2x - 1) |2x - 1|^(2/p) / 2 + 1/2`` ("saturation",
  §3.1): ``p = 2`` is the identity, ``p = inf`` binarisation (pixels equal to
  1/2 stay at 1/2).
* :func:`gamma` -- ``x^g`` ("gamma mapping", §4.1).
* :func:`scale` -- ``a (x - 1/2) + 1/2`` ("scaled MNIST", §5.2, Table 1).
* :func:`canny` -- Canny edge maps ("edge-fashion-MNIST", §4.2: ``sigma = 1``),
  with scikit-image's semantics (see the function's docstring).

:func:`apply` dispatches on a transform name, which is what
:func:`jaxbound.shift.sensitivity_sweep` uses.

Levels are validated on the host (a ``ValueError`` whose message starts with
the argument name); the kernels themselves are ``jax.jit``-compiled, with the
level a traced argument where it does not change shapes (saturate, gamma,
scale) and static otherwise (the smoothing size, the Canny ``sigma``).
Pixel values are checked to lie in ``[0, 1]`` when ``x`` is concrete; nothing
is clipped.

References:
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness to
  input data distributions." ICLR 2019, arXiv:1902.08336.
  Canny. "A computational approach to edge detection." IEEE Transactions on
  Pattern Analysis and Machine Intelligence 8(6), 1986 (:func:`canny`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbound import _checks

__all__ = [
    "TRANSFORMS",
    "binarize",
    "smooth",
    "saturate",
    "gamma",
    "scale",
    "canny",
    "identity",
    "apply",
]


def _images(x: Any, name: str = "x") -> jax.Array:
    """Validate ``[n, H, W, C]`` images in ``[0, 1]`` and return them as float32."""
    arr = _checks.check_images(x, name, bounds=(0.0, 1.0), allow_empty=True)
    return jnp.asarray(arr, jnp.float32)


# ---------------------------------------------------------------------------
# Point-wise transforms
# ---------------------------------------------------------------------------


@jax.jit
def _binarize(x, threshold):
    return jnp.where(x > threshold, 1.0, 0.0).astype(jnp.float32)


def binarize(x: Any, *, threshold: float = 0.5) -> jax.Array:
    """Round pixels to 0 or 1 (Ding et al. 2019, footnote 5: binarized MNIST).

    ``x > threshold`` becomes 1 and everything else 0, so a pixel exactly at
    the threshold goes to 0 (NumPy's round-half-to-even at 1/2).

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      threshold: cut in ``[0, 1]``.

    Returns:
      ``[n, H, W, C]`` float32 array with values in ``{0, 1}``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    threshold = _checks.check_scalar(threshold, "threshold", low=0.0, high=1.0)
    return _binarize(_images(x), jnp.float32(threshold))


def identity(x: Any, level: Any = None) -> jax.Array:
    """The untransformed images as float32 (the "original" variant of a sweep)."""
    return _images(x)


@jax.jit
def _saturate(x, exponent):
    v = 2.0 * x - 1.0
    return (jnp.sign(v) * jnp.power(jnp.abs(v), exponent) / 2.0 + 0.5).astype(jnp.float32)


def saturate(x: Any, p: float) -> jax.Array:
    """Saturation of level ``p`` (Ding et al. 2019, §3.1).

    ``x_hat = sign(2x - 1) |2x - 1|^(2/p) / 2 + 1/2`` pixel-wise. ``p = 2``
    leaves the image unchanged, ``p > 2`` pushes pixels towards 0 and 1,
    ``p < 2`` towards 1/2, and ``p = inf`` (exponent 0) binarises every pixel
    except those exactly at 1/2.

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      p: level ``p > 0`` (``math.inf`` allowed).

    Returns:
      ``[n, H, W, C]`` float32 array in ``[0, 1]``.

    Raises:
      ValueError: ``p <= 0`` or NaN.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ValueError(f"p: expected a real number, got {p!r}")
    p = float(p)
    if math.isnan(p) or p <= 0:
        raise ValueError(f"p: the saturation level must be > 0, got {p}")
    exponent = 0.0 if math.isinf(p) else 2.0 / p
    return _saturate(_images(x), jnp.float32(exponent))


@jax.jit
def _gamma(x, g):
    return jnp.power(x, g).astype(jnp.float32)


def gamma(x: Any, g: float) -> jax.Array:
    """Gamma mapping ``x^g`` (Ding et al. 2019, §4.1; ``g < 1`` brightens).

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      g: exponent ``g > 0``.

    Returns:
      ``[n, H, W, C]`` float32 array in ``[0, 1]``.

    Raises:
      ValueError: ``g <= 0``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    g = _checks.check_scalar(g, "g", low=0.0, low_inclusive=False)
    return _gamma(_images(x), jnp.float32(g))


@jax.jit
def _scale(x, a):
    return (a * (x - 0.5) + 0.5).astype(jnp.float32)


def scale(x: Any, a: float) -> jax.Array:
    """Scaling towards the centre ``a (x - 1/2) + 1/2`` (Ding et al. 2019, §5.2).

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      a: coefficient ``0 < a <= 1`` (``a > 1`` would leave ``[0, 1]``, ``a <= 0``
        would destroy or invert the image).

    Returns:
      ``[n, H, W, C]`` float32 array in ``[(1 - a)/2, (1 + a)/2]``.

    Raises:
      ValueError: ``a`` outside ``(0, 1]``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    a = _checks.check_scalar(a, "a", low=0.0, high=1.0, low_inclusive=False)
    return _scale(_images(x), jnp.float32(a))


# ---------------------------------------------------------------------------
# Smoothing
# ---------------------------------------------------------------------------


_KERNELS = ("square", "vertical", "horizontal")


def _window(s: int, kernel: str) -> tuple[int, int]:
    return {"square": (s, s), "vertical": (s, 1), "horizontal": (1, s)}[kernel]


def _box_mean(x: jax.Array, sh: int, sw: int) -> jax.Array:
    """``sh x sw`` average over axes 1 and 2 with SciPy's ``uniform_filter`` conventions.

    Mode ``"reflect"`` (``d c b a | a b c d``, NumPy's ``"symmetric"``) and
    the window ``[i - s // 2, i - s // 2 + s - 1]`` on each axis (for even
    ``s`` it reaches one pixel further up/left than down/right).
    """
    pad = [(0, 0), (sh // 2, sh - 1 - sh // 2), (sw // 2, sw - 1 - sw // 2), (0, 0)]
    xp = jnp.pad(x, pad, mode="symmetric")
    tot = lax.reduce_window(xp, 0.0, lax.add, (1, sh, sw, 1), (1, 1, 1, 1), "VALID")
    return tot / float(sh * sw)


@functools.partial(jax.jit, static_argnames=("sh", "sw"))
def _smooth(x, *, sh, sw):
    return jnp.maximum(x, _box_mean(x, sh, sw)).astype(jnp.float32)


def smooth(x: Any, s: int, *, kernel: str = "square") -> jax.Array:
    """Smoothing of kernel size ``s`` (Ding et al. 2019, §3.1).

    The average filter of each channel (SciPy ``ndimage.uniform_filter``
    conventions: reflected borders, even windows reaching one pixel further
    up/left), then the pixel-wise maximum with the original:
    ``max(x, mean_s(x))``, so ``smooth(x, s) >= x`` and ``s = 1`` is the
    identity.

    The paper's text describes an ``s x s`` average filter (``kernel="square"``,
    the default). Its published numbers, however, are reproduced by an
    ``s x 1`` window along the image height (``kernel="vertical"``): on the
    MNIST test set the log2 perturbable volumes of smooth-3 / smooth-5 are
    -1265.4 / -1235.1 (Table 6: -1265 / -1234) and the inter-class distances
    of smooth-3 / 4 / 5 are 7.08 / 6.98 / 6.81 (Table 1: 7.12 / 7.01 / 6.85),
    against -1239.5 / -1188.0 and 6.64 / ... for the square window (see
    ``benchmarks/shift_mnist.py``). ``kernel="horizontal"`` is ``1 x s``.

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      s: kernel size, an integer ``>= 1``.
      kernel: ``"square"`` (``s x s``), ``"vertical"`` (``s x 1``) or
        ``"horizontal"`` (``1 x s``).

    Returns:
      ``[n, H, W, C]`` float32 array in ``[0, 1]``.

    Raises:
      ValueError: ``s < 1`` or not an integer, or an unknown ``kernel``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    s = _checks.check_int(s, "s", low=1)
    if kernel not in _KERNELS:
        raise ValueError(f"kernel: must be one of {_KERNELS}, got {kernel!r}")
    x = _images(x)
    if x.shape[0] == 0:
        return x
    sh, sw = _window(s, kernel)
    return _smooth(x, sh=sh, sw=sw)


# ---------------------------------------------------------------------------
# Canny edge detector
# ---------------------------------------------------------------------------


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's ``gaussian_filter`` 1-D kernel: radius ``int(truncate sigma + 0.5)``, normalised."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _correlate_axis(img: jax.Array, weights: np.ndarray, axis: int, mode: str) -> jax.Array:
    """1-D correlation of ``[b, H, W]`` images along ``axis`` (1 or 2), ``mode`` a ``jnp.pad`` mode."""
    r = (len(weights) - 1) // 2
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    xp = jnp.pad(img, pad, mode=mode)
    n = img.shape[axis]
    out = jnp.zeros_like(img)
    for t, w in enumerate(weights):
        if w == 0.0:
            continue
        out = out + jnp.float32(w) * lax.slice_in_dim(xp, t, t + n, axis=axis)
    return out


def _shift(a: jax.Array, di: int, dj: int) -> jax.Array:
    """``out[:, i, j] = a[:, i + di, j + dj]`` with zeros outside."""
    ap = jnp.pad(a, ((0, 0), (1, 1), (1, 1)))
    h, w = a.shape[1], a.shape[2]
    return ap[:, 1 + di: 1 + di + h, 1 + dj: 1 + dj + w]


def _dilate8(a: jax.Array) -> jax.Array:
    """3 x 3 (8-connected) binary dilation of ``[b, H, W]`` booleans, zero outside."""
    return lax.reduce_window(a, False, lax.bitwise_or, (1, 3, 3), (1, 1, 1), "SAME")


@functools.partial(jax.jit, static_argnames="sigma")
def _canny(img, low, high, *, sigma):
    """Canny on ``[b, H, W]`` float32 images; returns float32 edge maps."""
    g = _gaussian_kernel(sigma)
    # Gaussian with zero ("constant") borders, renormalised by the filtered all-ones image
    # (scikit-image's bleed-over compensation).
    sm = _correlate_axis(_correlate_axis(img, g, 1, "constant"), g, 2, "constant")
    ones = jnp.ones(img.shape[1:], jnp.float32)[None]
    bleed = _correlate_axis(_correlate_axis(ones, g, 1, "constant"), g, 2, "constant")
    sm = sm / (bleed + jnp.finfo(jnp.float32).eps)
    # SciPy's sobel: derivative [-1, 0, 1] along the axis, smoothing [1, 2, 1] across, reflected borders.
    d = np.array([-1.0, 0.0, 1.0])
    s = np.array([1.0, 2.0, 1.0])
    isobel = _correlate_axis(_correlate_axis(sm, d, 1, "symmetric"), s, 2, "symmetric")
    jsobel = _correlate_axis(_correlate_axis(sm, s, 1, "symmetric"), d, 2, "symmetric")
    mag = jnp.sqrt(isobel * isobel + jsobel * jsobel)

    # Non-maximum suppression with bilinear interpolation along the gradient.
    ai, aj = jnp.abs(isobel), jnp.abs(jsobel)
    same_sign = ((isobel > 0) & (jsobel > 0)) | ((isobel <= 0) & (jsobel <= 0))
    i_major = jnp.where(same_sign, ai > aj, ai >= aj)
    w = jnp.where(i_major, aj / jnp.where(ai > 0, ai, 1.0), ai / jnp.where(aj > 0, aj, 1.0))
    M = lambda di, dj: _shift(mag, di, dj)  # noqa: E731

    def side(straight, diagonal):
        return diagonal * w + straight * (1.0 - w) <= mag

    # same-sign gradients: neighbours towards (+1, +1) and (-1, -1)
    ss_plus = jnp.where(i_major, side(M(1, 0), M(1, 1)), side(M(0, 1), M(1, 1)))
    ss_minus = jnp.where(i_major, side(M(-1, 0), M(-1, -1)), side(M(0, -1), M(-1, -1)))
    # opposite signs: neighbours towards (-1, +1) and (+1, -1)
    os_plus = jnp.where(i_major, side(M(-1, 0), M(-1, 1)), side(M(0, 1), M(-1, 1)))
    os_minus = jnp.where(i_major, side(M(1, 0), M(1, -1)), side(M(0, -1), M(1, -1)))
    local_max = jnp.where(same_sign, ss_plus & ss_minus, os_plus & os_minus)

    h, wd = img.shape[1], img.shape[2]
    ii = jnp.arange(h)[:, None]
    jj = jnp.arange(wd)[None, :]
    interior = ((ii > 0) & (ii < h - 1) & (jj > 0) & (jj < wd - 1))[None]
    low_eff = jnp.where(low == 0, jnp.float32(1e-14), low)
    weak = interior & local_max & (mag >= low_eff)
    strong = weak & (mag >= high)

    # Hysteresis: grow the strong pixels through 8-connected weak pixels to a fixed point.
    def cond(state):
        return state[1]

    def body(state):
        e, _ = state
        e2 = weak & _dilate8(e)
        return e2, jnp.any(e2 != e)

    edges, _ = lax.while_loop(cond, body, (strong, jnp.array(True)))
    return edges.astype(jnp.float32)


def canny(x: Any, sigma: float = 1.0, *, low_threshold: float = 0.1, high_threshold: float = 0.2) -> jax.Array:
    """Canny edge maps (Canny 1986), as used for edge-fashion-MNIST (Ding et al. 2019, §4.2).

    Follows ``skimage.feature.canny(image, sigma, low_threshold,
    high_threshold)`` with its defaults ``mode="constant", cval=0`` and no
    mask, on each ``[H, W]`` channel plane:

    1. Gaussian blur (SciPy kernel truncated at ``4 sigma``) with zero
       borders, divided by the blur of an all-ones image (scikit-image's
       bleed-over correction);
    2. Sobel gradients ``isobel`` (along rows) and ``jsobel`` (along columns)
       with SciPy's reflected borders, magnitude ``sqrt(isobel^2 + jsobel^2)``;
    3. non-maximum suppression with bilinear interpolation between the two
       neighbours along the gradient direction (ties kept: a pixel survives
       when both interpolated neighbours are ``<=`` its magnitude); the
       one-pixel image border is never an edge;
    4. double threshold: weak = survivors with magnitude ``>= low_threshold``,
       strong = weak with magnitude ``>= high_threshold``;
    5. hysteresis: the 8-connected components of weak pixels that hold a
       strong pixel, computed as repeated 3 x 3 dilation of the strong set
       within the weak set until a fixed point (``lax.while_loop``).

    The thresholds are absolute gradient magnitudes of the ``[0, 1]`` image:
    scikit-image's defaults for float images (10% and 20% of the dtype's
    maximum 1.0) are ``0.1`` and ``0.2``, the defaults here. Computations are
    float32, like scikit-image on float32 input.

    Args:
      x: ``[n, H, W, C]`` images in ``[0, 1]``; every channel is processed
        separately. ``H, W >= 3``.
      sigma: Gaussian standard deviation ``> 0`` (paper: 1.0).
      low_threshold: hysteresis low threshold ``>= 0``.
      high_threshold: hysteresis high threshold ``>= low_threshold``.

    Returns:
      ``[n, H, W, C]`` float32 edge maps with values in ``{0, 1}``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
      Canny. "A computational approach to edge detection." IEEE Transactions
      on Pattern Analysis and Machine Intelligence 8(6), 1986.
    """
    sigma = _checks.check_scalar(sigma, "sigma", low=0.0, low_inclusive=False)
    low = _checks.check_scalar(low_threshold, "low_threshold", low=0.0)
    high = _checks.check_scalar(high_threshold, "high_threshold", low=0.0)
    if high < low:
        raise ValueError(f"high_threshold: must be >= low_threshold ({low}), got {high}")
    x = _images(x)
    n, h, w, c = x.shape
    if h < 3 or w < 3:
        raise ValueError(f"x: Canny needs images of at least 3 x 3 pixels, got {h} x {w}")
    if n == 0:
        return x
    planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(n * c, h, w)
    edges = _canny(planes, jnp.float32(low), jnp.float32(high), sigma=float(sigma))
    return jnp.transpose(edges.reshape(n, c, h, w), (0, 2, 3, 1))


# ---------------------------------------------------------------------------
# Dispatch by name
# ---------------------------------------------------------------------------


def _binarize_level(x, level=None):
    if level is not None:
        return binarize(x, threshold=level)
    return binarize(x)


def _canny_level(x, level=None):
    return canny(x, 1.0 if level is None else level)


TRANSFORMS: dict[str, Callable[[Any, Any], jax.Array]] = {
    "identity": identity,
    "binarize": _binarize_level,
    "smooth": smooth,
    "smooth_vertical": lambda x, s: smooth(x, s, kernel="vertical"),
    "saturate": saturate,
    "gamma": gamma,
    "scale": scale,
    "canny": _canny_level,
}
"""Transforms by name, each called as ``f(x, level)`` (``level`` ignored by
``identity``; the threshold of ``binarize`` and ``sigma`` of ``canny``, with
their defaults for ``None``; ``smooth_vertical`` is ``smooth(x, s, kernel="vertical")``)."""


def apply(name: str, x: Any, level: Any = None) -> jax.Array:
    """Apply the transform ``name`` (a key of :data:`TRANSFORMS`) at ``level``.

    Args:
      name: ``"identity" | "binarize" | "smooth" | "smooth_vertical" | "saturate" | "gamma" | "scale" | "canny"``.
      x: ``[n, H, W, C]`` images in ``[0, 1]``.
      level: the transform's level (see :data:`TRANSFORMS`).

    Returns:
      ``[n, H, W, C]`` float32 transformed images.
    """
    if not isinstance(name, str) or name not in TRANSFORMS:
        raise ValueError(f"name: unknown transform {name!r}; use one of {sorted(TRANSFORMS)}")
    if name in ("smooth", "smooth_vertical", "saturate", "gamma", "scale") and level is None:
        raise ValueError(f"level: the {name} transform needs a level")
    return TRANSFORMS[name](x, level)
