"""Sensitivity of robustness to the input distribution (Ding et al. 2019): diagnostics, limits and sweeps.

Ding et al. show that semantics-preserving shifts of the input distribution
(binarisation, smoothing, saturation, gamma, edge maps; see
:mod:`jaxbound.transforms`) barely move clean accuracy but move the robust
accuracy of adversarially trained models a lot. This module puts, at every
level of such a shift, the paper's geometric diagnostics and jaxbound's
data-dependent limits beside the trained models:

* :func:`perturbable_volume` -- average log2 volume of the ``eps``-box
  intersected with the data domain (App. D.1, Table 6);
  :func:`log2_perturbable_volumes` is its jittable per-image kernel.
* :func:`inter_class_distance` -- App. D.2.1 (Table 1, Figure 5), streamed over
  query blocks by :func:`jaxbound.geometry.mean_k_smallest`, never holding an
  ``n x m`` matrix; :func:`point_margins` gives the per-point values.
* Theorem 2.1: :func:`cube_concentration` (Eq. 1) and :func:`ball_concentration`
  (Eq. 2); the calculators of Example 1 (:func:`example1`) and Example 2
  (:func:`example2`).
* :func:`sensitivity_sweep` -- for every level: the concentration estimate
  (Mahloujifar et al., :func:`jaxbound.concentration.estimate`), the optimal
  adversarial 0-1 and cross-entropy losses of a class pair (Bhagoji et al.,
  :func:`jaxbound.bounds.pair_bounds`), the diagnostics, and optionally standard and
  PGD-trained models (:mod:`jaxbound.training`) with clean accuracy, robust
  accuracy and robustness w.r.t. predictions (:mod:`jaxbound.metrics`).
  Resumable (one atomic JSON record per level, updated after every quantity),
  returns a table and draws one matplotlib figure per quantity.

References:
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness to
  input data distributions." ICLR 2019, arXiv:1902.08336.
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxbound import _checks, _engine, geometry
from jaxbound._io import atomic_write_json, fingerprint, load_json_or_none, to_jsonable

__all__ = [
    "InterClassDistance",
    "ConcentrationBound",
    "Example1",
    "SweepResult",
    "log2_perturbable_volumes",
    "perturbable_volume",
    "point_margins",
    "inter_class_distance",
    "cube_concentration",
    "ball_concentration",
    "example1",
    "example2",
    "sensitivity_sweep",
]


# ---------------------------------------------------------------------------
# Perturbable volume (App. D.1)
# ---------------------------------------------------------------------------


def log2_perturbable_volumes(x: jax.Array, eps: Any, low: float = 0.0, high: float = 1.0) -> jax.Array:
    """Per-image ``log2 Vol(x, eps)`` (Ding et al. 2019, App. D.1), jittable.

    ``Vol(x, eps) = prod_i (min(x_i + eps_i, high) - max(x_i - eps_i, low))``:
    the volume of the ``l_inf`` box of radius ``eps`` around ``x`` intersected
    with the data domain ``[low, high]^d``. Concrete inputs are checked
    (finite ``x``, ``eps > 0``, ``low < high``); traced ones only by shape
    (:func:`perturbable_volume` also checks the domain).

    Args:
      x: ``[n, ...]`` points inside ``[low, high]``.
      eps: scalar or per-coordinate radii broadcastable to ``x.shape[1:]``, ``> 0``.
      low: lower end of the domain.
      high: upper end of the domain.

    Returns:
      ``[n]`` sum over coordinates of ``log2`` of the interval lengths.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (App. D.1).
    """
    if not hasattr(x, "ndim") or x.ndim < 1:
        x = _checks.as_batch(x, "x") if np.ndim(x) >= 2 else np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x: expected a batch shaped [n, ...], got shape {tuple(x.shape)}")
    _checks.check_interval((low, high), "bounds")
    _checks.check_finite(x, "x")
    if _checks.is_concrete(eps):
        e = np.asarray(eps, dtype=np.float64)
        if not np.isfinite(e).all() or (e <= 0).any():
            raise ValueError(f"eps: must be finite and > 0, got {eps!r}")
    lengths = jnp.minimum(x + eps, high) - jnp.maximum(x - eps, low)
    return jnp.sum(jnp.log2(lengths).reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64))), axis=1)


def perturbable_volume(x: Any, *, eps: Any, bounds: Sequence[float] = (0.0, 1.0)) -> float:
    """Average log2 perturbable volume (Ding et al. 2019, App. D.1, Table 6).

    ``mean_x sum_i log2(min(x_i + eps_i, high) - max(x_i - eps_i, low))`` in
    bits. A point at a corner of the cube has ``d log2 eps``, a point at least
    ``eps`` inside every face ``d log2 (2 eps)``; Table 6 uses ``eps = 0.3`` on
    MNIST (valid range -1361 to -577) and ``eps = 8/255`` on CIFAR10, on the
    test set. Computed in float64 on the host.

    Args:
      x: ``[n, ...]`` points (images ``[n, H, W, C]`` or vectors ``[n, d]``)
        inside ``bounds``.
      eps: ``> 0``, a scalar or per-coordinate radii broadcastable to
        ``x.shape[1:]``.
      bounds: the domain ``(low, high)``, ``low < high``.

    Returns:
      The average over the ``n`` points (a float, bits).

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (App. D.1, Table 6).
    """
    lo, hi = _check_bounds(bounds)
    arr = _checks.as_batch(x, "x")
    if arr.ndim < 2:
        raise ValueError(f"x: expected points shaped [n, ...] with n >= 1, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"x: is empty (shape {arr.shape})")
    flat = _checks.check_points(arr.reshape(arr.shape[0], -1), "x")
    _checks.check_bounds(flat, "x", (lo, hi))
    e = np.asarray(eps, dtype=np.float64)
    _checks.check_finite(e, "eps")
    if e.size == 0 or (e <= 0).any():
        raise ValueError(f"eps: must be > 0 (log2 of a zero-length interval is -inf), got {eps!r}")
    try:
        e = np.broadcast_to(e, arr.shape[1:]).reshape(-1)
    except ValueError:
        raise ValueError(f"eps: shape {e.shape} does not broadcast to the point shape {arr.shape[1:]}") from None
    total = 0.0
    step = max(1, 2**22 // flat.shape[1])
    for a in range(0, flat.shape[0], step):
        xb = flat[a: a + step].astype(np.float64)
        lengths = np.minimum(xb + e, hi) - np.maximum(xb - e, lo)
        total += float(np.log2(lengths).sum())
    return total / flat.shape[0]


def _check_bounds(bounds) -> tuple[float, float]:
    return _checks.check_interval(bounds, "bounds")


# ---------------------------------------------------------------------------
# Inter-class distance (App. D.2.1)
# ---------------------------------------------------------------------------


class InterClassDistance(NamedTuple):
    """Inter-class distance of a labelled dataset (Ding et al. 2019, App. D.2.1).

    Attributes:
      value: the average of ``per_class`` (the number of Table 1 / Figure 5).
      per_class: ``[K]`` ``d(D_c, D_not_c)`` of every class ``c``.
    """

    value: float
    per_class: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {"value": float(self.value), "per_class": [float(v) for v in self.per_class]}


def _count_at_least(fraction: float, m: int) -> int:
    """``max(1, ceil(fraction * m))``: the smallest count that is at least the fraction."""
    return max(1, min(m, int(math.ceil(fraction * m - 1e-9))))


def _labels_and_points(x, labels, num_classes):
    arr = _checks.as_batch(x, "x")
    _checks.check_nonempty(arr, "x")
    flat = np.asarray(_checks.check_points(arr.reshape(arr.shape[0], -1), "x"))
    y = np.asarray(_checks.check_labels(labels, "labels", n=flat.shape[0]))
    K = int(y.max()) + 1 if num_classes is None else _checks.check_int(num_classes, "num_classes", low=2)
    if num_classes is not None and y.max() >= K:
        raise ValueError(f"labels: label {int(y.max())} is out of range for {K} classes")
    counts = np.bincount(y, minlength=K)
    if K < 2:
        raise ValueError("labels: the inter-class distance needs at least two classes")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"labels: class {int(empty[0])} has no points (give num_classes or relabel)")
    return flat, y, K


def point_margins(
    x: Any,
    labels: Any,
    *,
    fraction: float = 0.1,
    norm: Any = "l2",
    num_classes: int | None = None,
    block_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Per-point margin ``d(x, D_not_c)`` of Ding et al. (2019, App. D.2.1).

    For ``x`` of class ``c``: the mean distance from ``x`` to its
    ``k_c = max(1, ceil(fraction * |D_not_c|))`` nearest points of the other
    classes. Streams query blocks of each class against that class's
    out-of-class reference set; memory is ``O(block_size x |D_not_c|)``.
    ``l2`` distances use one GEMM per block (``||x||^2 + ||y||^2 - 2 x.y`` in
    float32 with HIGHEST precision, relative error about ``1e-6`` on
    MNIST-scale data); the other norms use
    :func:`jaxbound.geometry.block_distances`. The ``k_c`` smallest are
    selected exactly (ties included) by bisection on the float32 bits.

    Args:
      x: ``[n, ...]`` points (flattened to ``[n, d]``).
      labels: ``[n]`` integer labels.
      fraction: neighbour fraction in ``(0, 1]`` (paper: 0.1).
      norm: ``"l2"`` (paper) or any norm of :mod:`jaxbound.geometry`.
      num_classes: ``K`` (default ``max(labels) + 1``); every class must have points.
      block_size: query rows per block.
      progress: show a progress bar.

    Returns:
      ``[n]`` float64 margins.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (App. D.2.1).
    """
    fraction = _checks.check_scalar(fraction, "fraction", low=0.0, high=1.0, low_inclusive=False)
    norm = _checks.canonical_norm(norm)
    block_size = _checks.check_int(block_size, "block_size", low=1)
    flat, y, K = _labels_and_points(x, labels, num_classes)
    out = np.zeros(flat.shape[0], np.float64)
    counts = np.bincount(y, minlength=K)
    m_max = int(flat.shape[0] - counts.min())
    m_pad = -(-m_max // 256) * 256  # one compiled kernel for every class (and similar data sizes)
    b = int(min(block_size, counts.max()))
    for c in range(K):
        q_idx = np.flatnonzero(y == c)
        r_idx = np.flatnonzero(y != c)
        out[q_idx] = geometry.mean_k_smallest(flat[q_idx], flat[r_idx], k=_count_at_least(fraction, r_idx.size),
                                              norm=norm, block_size=b, ref_rows=m_pad, progress=progress,
                                              desc=f"inter-class margins, class {c}/{K}")
    return out


def inter_class_distance(
    x: Any,
    labels: Any,
    *,
    fraction: float = 0.1,
    point_fraction: float | None = None,
    norm: Any = "l2",
    num_classes: int | None = None,
    block_size: int = 256,
    progress: bool = False,
) -> InterClassDistance:
    """Inter-class distance (Ding et al. 2019, App. D.2.1; Table 1, Figure 5).

    For each ``x`` in class ``c`` the margin ``d(x, D_not_c)`` is the mean
    ``l2`` distance to its ``10%`` nearest points of the other classes
    (:func:`point_margins`); the class value ``d(D_c, D_not_c)`` is the mean of
    the smallest ``10%`` of those margins over ``x`` in ``D_c``; the dataset
    value averages the classes. "10%" of ``m`` items means
    ``max(1, ceil(0.1 m))`` items.

    Args:
      x: ``[n, ...]`` points (flattened to ``[n, d]``).
      labels: ``[n]`` integer labels.
      fraction: neighbour fraction in ``(0, 1]`` (paper: 0.1).
      point_fraction: fraction of the smallest margins averaged per class
        (default: ``fraction``).
      norm: distance (paper: ``"l2"``).
      num_classes: ``K`` (default ``max(labels) + 1``); every class needs points.
      block_size: query rows per block of the streamed distance kernel.
      progress: show a progress bar.

    Returns:
      :class:`InterClassDistance` with ``value`` and ``per_class [K]``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (App. D.2.1, Table 1, Figure 5).
    """
    fraction = _checks.check_scalar(fraction, "fraction", low=0.0, high=1.0, low_inclusive=False)
    pf = fraction if point_fraction is None else point_fraction
    pf = _checks.check_scalar(pf, "point_fraction", low=0.0, high=1.0, low_inclusive=False)
    margins = point_margins(x, labels, fraction=fraction, norm=norm, num_classes=num_classes,
                            block_size=block_size, progress=progress)
    y = np.asarray(labels)
    K = len(np.bincount(y)) if num_classes is None else int(num_classes)
    per_class = np.zeros(K, np.float64)
    for c in range(K):
        mc = np.sort(margins[y == c])
        per_class[c] = float(mc[: _count_at_least(pf, mc.size)].mean())
    return InterClassDistance(float(per_class.mean()), per_class)


# ---------------------------------------------------------------------------
# Theorem 2.1 and Examples 1-2
# ---------------------------------------------------------------------------


class ConcentrationBound(NamedTuple):
    """Lower bounds on the mass of an ``eps``-expansion (Ding et al. 2019, Theorem 2.1).

    Attributes:
      bound: the sharper bound (first inequality of Eq. 1 or Eq. 2).
      simple: the weaker closed form (second inequality).

    Values at or below 0 are vacuous (still true).
    """

    bound: float
    simple: float

    def to_dict(self) -> dict:
        return {"bound": float(self.bound), "simple": float(self.simple)}


def _check_mass(p, name):
    return _checks.check_scalar(p, name, low=0.5, high=1.0)


def cube_concentration(p_a: float, eps: float) -> ConcentrationBound:
    """Theorem 2.1, Eq. (1): uniform measure on the unit cube ``[0, 1]^d``, ``l2`` expansion.

    For every ``A`` with ``P(A) >= 1/2``:
    ``P(A_eps) >= Phi(eps sqrt(2 pi) + Phi^-1(P(A))) >= 1 - exp(-pi eps^2)``,
    whatever the dimension ``d`` (``Phi`` the standard normal CDF).

    Args:
      p_a: ``P(A)`` in ``[1/2, 1]``.
      eps: ``l2`` radius ``>= 0``.

    Returns:
      :class:`ConcentrationBound`.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (Theorem 2.1, Eq. 1).
    """
    p_a = _check_mass(p_a, "p_a")
    eps = _checks.check_scalar(eps, "eps", low=0.0)
    bound = float(stats.norm.cdf(eps * math.sqrt(2.0 * math.pi) + stats.norm.ppf(p_a)))
    return ConcentrationBound(bound, 1.0 - math.exp(-math.pi * eps * eps))


def ball_concentration(p_b: float, eps: float, *, d: int) -> ConcentrationBound:
    """Theorem 2.1, Eq. (2): uniform measure on the Euclidean unit ball ``B^d``, ``l2`` expansion.

    For every ``B`` with ``P(B) >= 1/2``:
    ``P(B_eps) >= 1 - (1 - delta(eps))^(2d) / P(B) >= 1 - exp(-2d (2 - sqrt 3)/3 eps^2) / P(B)``
    with the modulus of convexity ``delta(eps) = 1 - sqrt(1 - eps^2 / 4)``.

    Args:
      p_b: ``P(B)`` in ``[1/2, 1]``.
      eps: ``l2`` radius in ``[0, 2]`` (the ball's diameter).
      d: dimension ``>= 1``.

    Returns:
      :class:`ConcentrationBound`.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (Theorem 2.1, Eq. 2).
    """
    p_b = _check_mass(p_b, "p_b")
    eps = _checks.check_scalar(eps, "eps", low=0.0, high=2.0)
    d = _checks.check_int(d, "d", low=1)
    delta = 1.0 - math.sqrt(1.0 - eps * eps / 4.0)
    bound = 1.0 - math.exp(2 * d * math.log1p(-delta)) / p_b if delta < 1 else 1.0
    simple = 1.0 - math.exp(-2.0 * d * (2.0 - math.sqrt(3.0)) / 3.0 * eps * eps) / p_b
    return ConcentrationBound(bound, simple)


class Example1(NamedTuple):
    """Robust 0-1 error of the Bayes classifier in Example 1 (Ding et al. 2019, §2.1, App. A.1).

    Attributes:
      axis: ``RR* = min(2 eps, 1)`` for the boundary ``x_1 = 1/2``.
      diagonal_lower: ``RR* >= 1 - 1 / (4 d eps^2)`` for the boundary
        ``sum_i x_i = d/2`` (Proposition A.1; vacuous when ``<= 0``).
    """

    axis: float
    diagonal_lower: float

    def to_dict(self) -> dict:
        return {"axis": float(self.axis), "diagonal_lower": float(self.diagonal_lower)}


def example1(d: int, eps: float) -> Example1:
    """Example 1: the same zero Bayes error, very different robust errors (``l_inf`` budget ``eps``).

    ``x`` uniform on ``[0, 1]^d``. With the label ``1[x_1 > 1/2]`` the Bayes
    classifier has robust error ``2 eps`` (the slab ``|x_1 - 1/2| < eps``);
    with the label ``1[sum x > d/2]`` (an injective re-mapping of the first)
    Markov's inequality on ``(sum x - d/2)^2 / d`` gives
    ``RR* >= 1 - 1 / (4 d eps^2)``.

    Args:
      d: dimension ``>= 1``.
      eps: ``l_inf`` budget ``> 0``.

    Returns:
      :class:`Example1`.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (Example 1).
    """
    d = _checks.check_int(d, "d", low=1)
    eps = _checks.check_scalar(eps, "eps", low=0.0, low_inclusive=False)
    return Example1(min(2.0 * eps, 1.0), 1.0 - 1.0 / (4.0 * d * eps * eps))


def example2(eps: float, *, domain: str = "cube", d: int | None = None, priors: Any = None,
             num_classes: int = 10) -> float:
    """Example 2: vulnerability guarantee for any classifier with perfect clean accuracy.

    ``x`` uniform on ``[0, 1]^d`` (``domain="cube"``, Eq. 1, any ``d``) or on
    ``B^d`` (``domain="ball"``, Eq. 2), classes with priors ``pi_c <= 1/2``. For
    class ``c`` let ``A`` be the region of the other classes, ``P(A) = 1 - pi_c``:
    the class-``c`` points within ``l2`` distance ``eps`` of ``A`` can be
    moved into another class, a mass ``P(A_eps) - P(A)``. The returned lower
    bound on the fraction of samples that are misclassified or attackable is
    ``sum_c max(0, bound(1 - pi_c) - (1 - pi_c))``. The paper's numbers:
    ``eps = 0.5`` on the cube with 10 uniform classes gives 94%;
    ``eps = 0.09`` on ``B^3072`` gives 97%.

    Args:
      eps: ``l2`` budget ``>= 0``.
      domain: ``"cube"`` or ``"ball"``.
      d: dimension (required for the ball).
      priors: ``[K]`` class priors (sum 1, each ``<= 1/2``); default uniform.
      num_classes: ``K`` for uniform priors (``>= 2``).

    Returns:
      The lower bound, a fraction in ``[0, 1]``.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336 (Example 2).
    """
    if domain not in ("cube", "ball"):
        raise ValueError(f"domain: must be 'cube' or 'ball', got {domain!r}")
    if priors is None:
        K = _checks.check_int(num_classes, "num_classes", low=2)
        pri = np.full(K, 1.0 / K)
    else:
        pri = np.asarray(priors, dtype=np.float64)
        if pri.ndim != 1 or pri.size < 2:
            raise ValueError(f"priors: expected [K] with K >= 2, got shape {pri.shape}")
        _checks.check_finite(pri, "priors")
        if (pri < 0).any() or abs(pri.sum() - 1.0) > 1e-9:
            raise ValueError("priors: must be non-negative and sum to 1")
        if (pri > 0.5).any():
            raise ValueError("priors: Theorem 2.1 needs every class prior <= 1/2")
    if domain == "ball":
        if d is None:
            raise ValueError("d: the ball domain needs the dimension d")
        fn = functools.partial(ball_concentration, d=d)
    else:
        fn = cube_concentration
    total = 0.0
    for p in pri:
        rest = min(1.0, max(0.5, 1.0 - float(p)))
        total += max(0.0, fn(rest, eps).bound - rest)
    return float(min(1.0, total))


# ---------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Output of :func:`sensitivity_sweep`.

    Attributes:
      table: one flat row per level (scalars only: ``label``, ``level`` and the
        quantities, ``None`` where not computed).
      records: the full per-level records (as written to ``out_dir``).
      figures: paths of the PNG figures (empty without ``out_dir``).
      out_dir: the output folder (or ``None``).
    """

    table: list
    records: list
    figures: list
    out_dir: str | None

    def to_dict(self) -> dict:
        return {"table": to_jsonable(self.table), "records": to_jsonable(self.records),
                "figures": [str(f) for f in self.figures], "out_dir": self.out_dir}


_TABLE_COLUMNS = (
    ("perturbable_volume", "log2 perturbable volume (bits)"),
    ("inter_class_distance", "inter-class distance (l2)"),
    ("concentration_adv_risk", "concentration: adversarial risk"),
    ("multiclass_zero_one_loss", "all classes: optimal adversarial 0-1 loss"),
    ("pair_zero_one_loss", "class pair: optimal adversarial 0-1 loss"),
    ("pair_cross_entropy", "class pair: optimal adversarial cross-entropy"),
    ("standard_clean_accuracy", "standard training: clean accuracy"),
    ("pgd_clean_accuracy", "PGD training: clean accuracy"),
    ("pgd_robust_accuracy", "PGD training: robust accuracy"),
    ("pgd_robustness_wrt_predictions", "PGD training: robustness w.r.t. predictions"),
)


def _as_xy(data, name):
    from jaxbound.data import Dataset

    if isinstance(data, Dataset):
        return np.asarray(data.images), np.asarray(data.labels), data.name
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1]), ""
    raise ValueError(f"{name}: expected a jaxbound.data.Dataset or a tuple (x, y)")


def _level_specs(transform, levels) -> list[tuple[str, Any, Any]]:
    """``(label, transform, level)`` for every entry of ``levels``."""
    from jaxbound import transforms as T

    def tname(t):
        return t if isinstance(t, str) else getattr(t, "__name__", "transform")

    def check_t(t, name="transform"):
        if isinstance(t, str):
            if t not in T.TRANSFORMS:
                raise ValueError(f"{name}: unknown transform {t!r}; use one of {sorted(T.TRANSFORMS)} or a callable")
        elif not callable(t):
            raise ValueError(f"{name}: expected a transform name or a callable f(x, level), got {t!r}")
        return t

    check_t(transform)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError("levels: expected a non-empty sequence of levels")
    specs = []
    for item in levels:
        if item is None:
            specs.append(("original", "identity", None))
            continue
        if isinstance(item, (tuple, list)):
            if len(item) == 3:
                label, t, lev = item
            elif len(item) == 2:
                t, lev = item
                label = None
            else:
                raise ValueError(f"levels: an entry must be a level, None, (transform, level) or "
                                 f"(label, transform, level); got {item!r}")
            t = check_t(t, "levels")
            if label is None:
                label = "original" if tname(t) == "identity" else (
                    tname(t) if lev is None else f"{tname(t)}-{lev}")
            specs.append((str(label), t, lev))
            continue
        specs.append((f"{tname(transform)}-{item}", transform, item))
    labels = [s[0] for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"levels: labels must be unique, got {labels}")
    return specs


def _run_transform(t, x, level):
    from jaxbound import transforms as T

    if isinstance(t, str):
        out = T.apply(t, x, level)
    else:
        out = t(x, level)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != x.shape:
        raise ValueError(f"transform: returned shape {out.shape} for input shape {x.shape}")
    _checks.check_finite(out, "transform")
    _checks.check_bounds(out, "transform", (0.0, 1.0))
    return out


def _slug(label: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return keep[:80] or "level"


def _level_value(lev):
    if isinstance(lev, (int, float, np.integer, np.floating)) and not isinstance(lev, bool):
        v = float(lev)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    return None if lev is None else str(lev)


def _sweep_data(dataset, test_data):
    """Validated ``(x_tr, y_tr, x_te, y_te, name)``; the test arrays are ``None`` without test data."""
    x_tr, y_tr, ds_name = _as_xy(dataset, "dataset")
    _checks.check_images(x_tr, "dataset", bounds=(0.0, 1.0))
    _checks.check_labels(y_tr, "dataset", n=x_tr.shape[0])
    x_te = y_te = None
    if test_data is not None:
        x_te, y_te, _ = _as_xy(test_data, "test_data")
        _checks.check_images(x_te, "test_data", bounds=(0.0, 1.0))
        _checks.check_labels(y_te, "test_data", n=x_te.shape[0])
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise ValueError(f"test_data: image shape {x_te.shape[1:]} differs from dataset's {x_tr.shape[1:]}")
    return x_tr, y_tr, x_te, y_te, ds_name


def _sweep_settings(attack, has_test, *, volume, inter_class, inter_class_n, concentration, alpha, n_regions,
                    concentration_n, concentration_repeats, pair, pair_n, pair_attack, train_models, model, train,
                    eval_n, multiclass_degree=3, multiclass_n=1000) -> dict:
    """Checked settings of :func:`sensitivity_sweep` (errors name the argument), as one JSON-ready dict."""
    eps = _checks.check_scalar(attack.eps, "eps", low=0.0, low_inclusive=False)
    norm = attack.norm
    if concentration not in (None, "rectangles", "balls", "halfspace"):
        raise ValueError(f"concentration: must be 'rectangles', 'balls', 'halfspace' or None, got {concentration!r}")
    if concentration == "rectangles" and norm != "linf":
        raise ValueError("concentration: 'rectangles' is the l_inf method; use norm='linf' or another method")
    if concentration == "balls" and norm != "l2":
        raise ValueError("concentration: 'balls' is the l2 method; use norm='l2' or another method")
    if concentration is not None and not has_test:
        raise ValueError("test_data: the concentration estimate needs held-out test data")
    alpha = _checks.check_probability(alpha, "alpha")
    n_regions = _checks.check_int(n_regions, "n_regions", low=1)
    concentration_repeats = _checks.check_int(concentration_repeats, "concentration_repeats", low=1)
    if pair is not None:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"pair: expected two class labels, got {pair!r}")
        pair = (_checks.check_int(pair[0], "pair"), _checks.check_int(pair[1], "pair"))
        if pair[0] == pair[1]:
            raise ValueError("pair: the two classes must differ")
    if pair_attack is not None and not hasattr(pair_attack, "norm"):
        raise ValueError(f"pair_attack: expected a jaxbound.attacks.AttackConfig, got {pair_attack!r}")
    p_eps = eps if pair_attack is None else _checks.check_scalar(pair_attack.eps, "pair_attack", low=0.0)
    p_norm = norm if pair_attack is None else pair_attack.norm
    if train_models and not has_test:
        raise ValueError("test_data: training models needs test data to evaluate on")
    if train is not None and not isinstance(train, _training().TrainConfig):
        raise ValueError(f"train: expected a jaxbound.training.TrainConfig, got {type(train).__name__}")
    if multiclass_degree is not None and (isinstance(multiclass_degree, bool) or multiclass_degree not in (2, 3)):
        raise ValueError(f"multiclass_degree: must be 2, 3 or None, got {multiclass_degree!r}")
    if multiclass_degree == 3 and str(p_norm) not in ("l2", "linf"):
        multiclass_degree = 2  # degree-3 hyperedges are defined for l2 and linf
    for nm, v in (("inter_class_n", inter_class_n), ("concentration_n", concentration_n), ("pair_n", pair_n),
                  ("eval_n", eval_n), ("multiclass_n", multiclass_n)):
        if v is not None:
            _checks.check_int(v, nm, low=1)
    return dict(
        eps=eps, norm=str(norm), volume=bool(volume), inter_class=bool(inter_class), inter_class_n=inter_class_n,
        concentration=concentration, alpha=alpha, n_regions=n_regions, concentration_n=concentration_n,
        concentration_repeats=concentration_repeats, pair=pair, pair_n=pair_n, pair_eps=p_eps,
        pair_norm=str(p_norm), train_models=bool(train_models), model=str(model), attack=attack.to_dict(),
        train=None if train is None else train.to_dict(), eval_n=eval_n,
        **({} if multiclass_degree is None else {"multiclass_degree": int(multiclass_degree),
                                                 "multiclass_n": multiclass_n}),
    )


def _training():
    from jaxbound import training

    return training


class _LevelRecord:
    """The resumable record of one level: ``out_dir/levels/<label>.json``, rewritten atomically after every quantity.

    A record whose fingerprint differs from the level's (other data, level or
    settings) is started afresh; quantities already in the record are skipped.
    """

    def __init__(self, path, fp, fresh: dict):
        self.path = path
        rec = _load_record(path, fp)
        self.rec = dict(fresh) if rec is None else rec

    def step(self, name, fn):
        q = self.rec["quantities"]
        if name in q:
            return
        t0 = time.perf_counter()
        q[name] = to_jsonable(fn())
        self.rec["seconds"][name] = time.perf_counter() - t0
        self.save()

    def save(self):
        if self.path is not None:
            atomic_write_json(self.path, self.rec)


def _run_level(lvl: _LevelRecord, lkey, data, y_tr, y_te, st: dict, attack, train, model, progress):
    """Every quantity of one level (skipping those already recorded)."""
    has_test = y_te is not None
    eps = st["eps"]
    if st["volume"]:
        lvl.step("perturbable_volume", lambda: perturbable_volume(data()[1] if has_test else data()[0], eps=eps))
    if st["inter_class"]:
        lvl.step("inter_class_distance", lambda: _icd_step(jax.random.fold_in(lkey, 1), data()[0], y_tr,
                                                           st["inter_class_n"], progress))
    if st["concentration"] is not None:
        lvl.step("concentration", lambda: _concentration_step(
            jax.random.fold_in(lkey, 2), data(), st["concentration"], eps=eps, norm=attack.norm, alpha=st["alpha"],
            T=st["n_regions"], n_fit=st["concentration_n"], repeats=st["concentration_repeats"],
            name=lvl.rec["label"]))
    if st["pair"] is not None:
        lvl.step("pair", lambda: _pair_step(data()[0], y_tr, st["pair"], st["pair_n"], st["pair_eps"],
                                            st["pair_norm"], progress))
    if st.get("multiclass_degree") is not None:
        lvl.step("multiclass", lambda: _multiclass_step(data()[0], y_tr, st["multiclass_n"], st["pair_eps"],
                                                        st["pair_norm"], st["multiclass_degree"], progress))
    if st["train_models"]:
        lvl.step("models", lambda: _models_step(jax.random.fold_in(lkey, 3), data(), y_tr, y_te, model=model,
                                                attack=attack, train=train, eval_n=st["eval_n"], progress=progress))
    lvl.rec["complete"] = True
    lvl.save()
    return lvl.rec


def sensitivity_sweep(
    dataset: Any,
    transform: Any,
    levels: Sequence[Any],
    attack: Any = None,
    *,
    key: Any,
    test_data: Any = None,
    out_dir: Any = None,
    volume: bool = True,
    inter_class: bool = True,
    inter_class_n: int | None = None,
    concentration: str | None = "rectangles",
    alpha: float = 0.01,
    n_regions: int = 10,
    concentration_n: int | None = None,
    concentration_repeats: int = 1,
    pair: tuple[int, int] | None = (3, 7),
    pair_n: int | None = 1000,
    pair_attack: Any = None,
    multiclass_degree: int | None = 3,
    multiclass_n: int | None = 1000,
    train_models: bool = False,
    model: Any = "lenet5",
    train: Any = None,
    eval_n: int | None = 1000,
    figures: bool = True,
    progress: bool = True,
    **settings: Any,
) -> SweepResult:
    """Limits, diagnostics and trained-model robustness at every level of a distribution shift.

    For each level the training set (and the test set) is transformed, then:

    * ``perturbable_volume``: :func:`perturbable_volume` at ``eps`` on the test
      set (the training set without one), App. D.1 / Table 6;
    * ``inter_class_distance``: :func:`inter_class_distance` (``l2``) on the
      training set or a random subset of ``inter_class_n`` points;
    * ``concentration``: the intrinsic-robustness estimate of Mahloujifar et
      al. (:func:`jaxbound.concentration.estimate`): ``"rectangles"``
      (``l_inf``), ``"balls"`` (``l2``) or ``"halfspace"`` under the honest
      protocol (fit on ``concentration_n`` training points, select ``q`` on
      half of the test set, report the other half) at risk ``alpha`` and
      budget ``eps``; ``concentration_adv_risk`` estimates the lowest
      adversarial risk of any classifier with risk ``>= alpha``;
    * ``pair``: for classes ``pair = (a, b)`` (first ``pair_n`` of each in file
      order, Bhagoji et al.'s protocol) the optimal adversarial 0-1 loss and
      cross-entropy (natural log) under ``pair_attack``'s budget and norm
      (default: the sweep's threat model; :func:`jaxbound.bounds.pair_bounds`);
    * ``multiclass``: the optimal adversarial 0-1 loss over all classes
      (Dai et al. 2023, ``L*(multiclass_degree)`` by
      :func:`jaxbound.bounds.multiclass_zero_one`; degree 2 for norms other
      than ``l2``/``linf``) of the first ``multiclass_n`` training points of
      each class, under the pair bounds' threat model;
    * with ``train_models``: a standard and a PGD-trained ``model``
      (:func:`jaxbound.training.train` with ``train``; PGD training at the
      threat model's ``eps`` and norm, with the steps of ``train.attack``
      when given) evaluated on ``eval_n`` test points with
      :func:`jaxbound.metrics.evaluate_robustness` under ``attack``: clean
      accuracy of both, robust accuracy and robustness w.r.t. predictions of
      the PGD model (Ding et al. §3.2). The per-epoch training history is
      evaluated on the first 256 of those points.

    Resuming: with ``out_dir`` every level has a record
    ``out_dir/levels/<label>.json`` written atomically after each quantity,
    keyed by a fingerprint of the data, the key, the level and the settings; a
    rerun skips every quantity already recorded (a record whose fingerprint
    differs is recomputed). The table is written to ``out_dir/table.json`` and
    one PNG per quantity to ``out_dir/figures/``.

    Args:
      dataset: training data, a :class:`jaxbound.data.Dataset` or ``(x [n, H, W, C], y [n])``.
      transform: a name of :data:`jaxbound.transforms.TRANSFORMS` or a callable ``f(x, level)``.
      levels: the levels; an entry may also be ``None`` (the original data),
        ``(transform, level)`` or ``(label, transform, level)``, so that one
        sweep can hold e.g. ``[("binarize", None), None, 2, 3, 4, 5]`` with
        ``transform="smooth"`` (Ding et al.'s MNIST variants).
      attack: the threat model and the evaluation attack
        (:class:`jaxbound.attacks.AttackConfig` with one budget ``eps > 0``;
        Ding et al. on MNIST: ``norm="linf", eps=0.3, steps=40,
        step_size=0.01``); ``norm`` and ``eps`` are required, here or in
        ``settings``.
      key: ``jax.random`` key (subsets, concentration, training, attacks); each
        level uses ``fold_in(key, crc32(label))``.
      test_data: optional test data (same forms as ``dataset``).
      out_dir: folder for records, table and figures (``None``: nothing written,
        nothing resumable).
      volume, inter_class: compute those diagnostics.
      inter_class_n: subset size for the inter-class distance (``None``: all).
      concentration: ``"rectangles" | "balls" | "halfspace" | None``.
      alpha: risk threshold of the concentration estimate.
      n_regions: ``T`` of the concentration estimate.
      concentration_n: training points fitted (``None``: all).
      concentration_repeats: repeats of the rectangle fit.
      pair: class pair for the optimal-loss bounds, or ``None``.
      pair_n: points per class (``None``: all).
      pair_attack: the threat model (``norm``, ``eps``) of the pair bounds,
        an :class:`jaxbound.attacks.AttackConfig` (default ``attack``; e.g.
        Bhagoji et al.'s ``AttackConfig(norm="l2", eps=3.0)`` on MNIST).
      multiclass_degree: 2 or 3 for the multi-class bound, ``None`` to skip it.
      multiclass_n: points per class of the multi-class bound (``None``: all).
      train_models: train and evaluate models (needs test data).
      model: model name or flax module for :func:`jaxbound.training.train`.
      train: :class:`jaxbound.training.TrainConfig` of both models (default
        ``TrainConfig()``); the sweep sets ``recipe`` and the attack budget.
      eval_n: test points attacked (``None``: all).
      figures: draw the figures (needs ``out_dir``).
      progress: progress bars.
      **settings: :class:`jaxbound.attacks.AttackConfig` fields overriding
        ``attack`` (``eps=0.3, norm="linf"``, ...).

    Returns:
      :class:`SweepResult`.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in
      the presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722.
    """
    from jaxbound import attacks

    key = _checks.check_key(key)
    x_tr, y_tr, x_te, y_te, ds_name = _sweep_data(dataset, test_data)
    attack = attacks.attack_config(attack, **settings)
    st = _sweep_settings(attack, x_te is not None, volume=volume, inter_class=inter_class,
                         inter_class_n=inter_class_n, concentration=concentration, alpha=alpha, n_regions=n_regions,
                         concentration_n=concentration_n, concentration_repeats=concentration_repeats, pair=pair,
                         pair_n=pair_n, pair_attack=pair_attack, train_models=train_models, model=model, train=train,
                         eval_n=eval_n, multiclass_degree=multiclass_degree, multiclass_n=multiclass_n)
    specs = _level_specs(transform, levels)
    out = None if out_dir is None else _engine.check_checkpoint_dir(out_dir, "out_dir")
    data_fp = fingerprint(x_tr, y_tr, x_te, y_te)
    key_fp = fingerprint(np.asarray(jax.random.key_data(key)))
    records = []
    for label, t, lev in specs:
        lkey = jax.random.fold_in(key, zlib.crc32(label.encode()) & 0x7FFFFFFF)
        tdesc = t if isinstance(t, str) else getattr(t, "__qualname__", repr(t))
        fp = fingerprint(data_fp, key_fp, label, tdesc, repr(lev), sorted(st.items(), key=lambda kv: kv[0]))
        lvl = _LevelRecord(None if out is None else out / "levels" / f"{_slug(label)}.json", fp, {
            "label": label, "transform": tdesc, "level": _level_value(lev), "fingerprint": fp, "dataset": ds_name,
            "settings": to_jsonable(st), "quantities": {}, "seconds": {}})
        cache: dict = {}

        def data(t=t, lev=lev, cache=cache):
            if "xt" not in cache:
                cache["xt"] = _run_transform(t, x_tr, lev)
                cache["xe"] = None if x_te is None else _run_transform(t, x_te, lev)
            return cache["xt"], cache["xe"]

        records.append(_run_level(lvl, lkey, data, y_tr, y_te, st, attack, train, model, progress))
    table = [_row(r) for r in records]
    figs: list = []
    if out is not None:
        atomic_write_json(out / "table.json", table)
        if figures:
            figs = _draw(table, out / "figures")
    return SweepResult(table, records, figs, None if out is None else str(out))


def _load_record(path, fp):
    """A level's saved record; ``None`` (recompute) when absent, of other settings, or damaged (one warning)."""
    if path is None or not path.exists():
        return None
    rec = load_json_or_none(path, what="sweep record")
    if rec is None:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("quantities", {}), dict) \
            or not isinstance(rec.get("seconds", {}), dict):
        warnings.warn(f"sweep record {path} is not a level record; recomputing it", RuntimeWarning, stacklevel=2)
        return None
    if rec.get("fingerprint") != fp:
        return None
    rec.setdefault("quantities", {})
    rec.setdefault("seconds", {})
    return rec


def _icd_step(key, x, y, n, progress):
    if n is not None and n < x.shape[0]:
        idx = np.sort(np.asarray(jax.random.permutation(key, x.shape[0])[:n]))
        x, y = x[idx], y[idx]
    r = inter_class_distance(x, y, progress=progress)
    return dict(r.to_dict(), n=int(x.shape[0]))


def _concentration_step(key, xs, method, *, eps, norm, alpha, T, n_fit, repeats, name):
    from jaxbound import concentration as C

    x_tr, x_te = xs
    ftr = x_tr.reshape(x_tr.shape[0], -1)
    fte = x_te.reshape(x_te.shape[0], -1)
    k1, k2, k3 = jax.random.split(key, 3)
    if n_fit is not None and n_fit < ftr.shape[0]:
        idx = np.sort(np.asarray(jax.random.permutation(k1, ftr.shape[0])[:n_fit]))
        ftr = ftr[idx]
    est = C.estimate(ftr, fte, norm=norm, eps=eps, alpha=alpha, n_regions=T, key=k2, method=method,
                     protocol="honest", n_repeats=repeats, fit_key=k3, dataset=name)
    rep = est.report
    return {"method": method, "risk": rep.risk, "adv_risk": rep.adv_risk, "adv_risk_ci": rep.adv_risk_ci,
            "risk_ci": rep.risk_ci, "n_fit": int(ftr.shape[0]), "n_report": rep.n, "T": rep.T, "q": rep.q,
            "records": [r.to_dict() for r in est.records]}


def _pair_step(x, y, pair, n, eps, norm, progress):
    from jaxbound import bounds as B

    a, b = pair
    ia, ib = np.flatnonzero(y == a), np.flatnonzero(y == b)
    if ia.size == 0 or ib.size == 0:
        raise ValueError(f"pair: class {a if ia.size == 0 else b} has no training points")
    if n is not None:
        ia, ib = ia[:n], ib[:n]
    r = B.pair_bounds(x[ia], x[ib], eps=eps, norm=norm, verify=False, progress=progress)
    return {"classes": [int(a), int(b)], "n_per_class": [int(ia.size), int(ib.size)], "eps": float(eps),
            "norm": str(norm), "num_edges": r.num_edges, "zero_one_loss": r.zero_one, "cross_entropy": r.cross_entropy}


def _multiclass_step(x, y, n, eps, norm, degree, progress):
    from jaxbound import bounds as B

    idx = B.first_per_class(y, n=n)
    g = B.conflict_hypergraph(x[idx].reshape(idx.size, -1), y[idx], eps=eps, norm=norm, degree=degree,
                              progress=progress)
    r = B.multiclass_zero_one(g)
    return {"n": int(idx.size), "n_per_class": n, "eps": float(eps), "norm": str(norm), "degree": int(degree),
            "zero_one_loss": float(r.loss), "n_edges": int(r.n_edges), "n_hyperedges": int(r.n_hyperedges)}


def _models_step(key, xs, y_tr, y_te, *, model, attack, train, eval_n, progress):
    from jaxbound import metrics, training

    x_tr, x_te = xs
    if eval_n is not None and eval_n < x_te.shape[0]:
        x_ev, y_ev = x_te[:eval_n], y_te[:eval_n]
    else:
        x_ev, y_ev = x_te, y_te
    k_std, k_pgd, k_ev1, k_ev2 = jax.random.split(key, 4)
    base = training.TrainConfig() if train is None else train
    # the per-epoch history is evaluated on (at most 256 of) the attacked test points, not on the whole
    # training set (training.train's default without eval_data)
    kw = dict(eval_data=(x_ev[:256], y_ev[:256]), progress=progress)
    out = {"eval_n": int(x_ev.shape[0]), "train": base.to_dict()}
    t0 = time.perf_counter()
    std = training.train(model, (x_tr, y_tr), base.replace(recipe="standard", attack=None, eval_attack=None),
                         key=k_std, **kw)
    out["standard_seconds"] = time.perf_counter() - t0
    f_std = std.logits_fn()
    out["standard_clean_accuracy"] = metrics.accuracy(f_std, x_ev, y_ev)
    threat = dict(norm=attack.norm, eps=float(attack.eps))
    train_attack = training.training_attack(base.attack, **threat)
    t0 = time.perf_counter()
    adv = training.train(model, (x_tr, y_tr), base.replace(recipe="pgd", attack=train_attack), key=k_pgd, **kw)
    out["pgd_seconds"] = time.perf_counter() - t0
    rep = metrics.evaluate_robustness(adv.logits_fn(), x_ev, y_ev, attack, key=k_ev2, progress=progress)
    out["pgd_clean_accuracy"] = rep.clean_accuracy
    out["pgd_robust_accuracy"] = rep.robust_accuracy
    out["pgd_robustness_wrt_predictions"] = rep.robustness_wrt_predictions
    out["pgd_report"] = rep.to_dict()
    out["standard_history"] = std.to_dict().get("history")
    out["pgd_history"] = adv.to_dict().get("history")
    return out


def _row(rec: dict) -> dict:
    q = rec.get("quantities", {})
    icd = q.get("inter_class_distance")
    conc = q.get("concentration")
    pr = q.get("pair")
    mod = q.get("models") or {}
    return {
        "label": rec["label"],
        "level": rec["level"],
        "perturbable_volume": q.get("perturbable_volume"),
        "inter_class_distance": None if icd is None else icd["value"],
        "concentration_risk": None if conc is None else conc["risk"],
        "concentration_adv_risk": None if conc is None else conc["adv_risk"],
        "multiclass_zero_one_loss": None if q.get("multiclass") is None else q["multiclass"]["zero_one_loss"],
        "pair_zero_one_loss": None if pr is None else pr["zero_one_loss"],
        "pair_cross_entropy": None if pr is None else pr["cross_entropy"],
        "standard_clean_accuracy": mod.get("standard_clean_accuracy"),
        "pgd_clean_accuracy": mod.get("pgd_clean_accuracy"),
        "pgd_robust_accuracy": mod.get("pgd_robust_accuracy"),
        "pgd_robustness_wrt_predictions": mod.get("pgd_robustness_wrt_predictions"),
    }


def _draw(table: list, folder: Path) -> list:
    """One PNG per quantity against the level (categorical axis labelled by the level labels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from jaxbound._io import atomic_write_bytes
    import io

    folder.mkdir(parents=True, exist_ok=True)
    labels = [r["label"] for r in table]
    pos = np.arange(len(labels))
    paths = []
    for col, title in _TABLE_COLUMNS:
        vals = [r.get(col) for r in table]
        if all(v is None for v in vals):
            continue
        y = np.array([np.nan if v is None else float(v) for v in vals])
        fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 3.2))
        ax.plot(pos, y, marker="o")
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_xlabel("level")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        p = folder / f"{col}.png"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(str(p))
    return paths
