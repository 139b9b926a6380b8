"""Empirical concentration of measure: intrinsic-robustness estimates (Mahloujifar et al. 2019).

The concentration function (Definition 2.3 of the paper)

    h(mu, alpha, eps) = inf_E { mu(E_eps) : mu(E) >= alpha }

lower-bounds the adversarial risk of every classifier whose risk is at least
``alpha`` (Theorem 2.4). This module estimates it from samples by searching
error regions ``E`` in the families the paper proves convergent:

* ``l_inf`` (paper §4.1, Algorithm 1): ``E`` is the complement of a union of
  ``T`` hyperrectangles enlarged by ``eps`` (the family CR(T), Definition 3.7).
  Points are ranked by a k-NN density radius, the top-``q`` densest points are
  clustered into ``T`` clusters (jitted k-means with l1 assignment), each
  cluster gives a box, and ``q`` is found by binary search under the
  constraint ``risk >= alpha`` -- :func:`fit_rectangles`.
* ``l2`` (paper §4.2, Algorithm 2): ``E`` is a union of ``T`` balls placed
  greedily (the family B(T), Definition 3.9) -- :func:`fit_balls`.
* The half-space baseline of Gilmer et al. (the "Gilmer" columns of Table 3)
  -- :func:`fit_halfspace`.
* The half-space search of Prescott, Zhang & Evans (2021): principal
  directions and their element-wise powers, scaled to unit dual norm, the
  upper tail of the projections as ``E`` -- :func:`fit_halfspaces`.

Validity: ``h`` is an infimum over regions of measure ``>= alpha``, so a
region holding less than ``alpha`` of the split it is reported on can show an
adversarial risk below ``h``. Every search obeys one :class:`Rule` -- at least
``alpha + margin / sqrt(N)`` of the fit split in ``E`` (:func:`fit_target`,
the margin of Prescott et al.) and a Clopper-Pearson lower end ``>= alpha`` on
the selection split (:func:`select_count`) -- in every repeat, and every
record says whether its regions hold risk ``>= alpha`` on its split
(``valid``). :func:`estimate` never presents an invalid record as the
estimate (``Estimate.valid``, ``Estimate.value``), and
``estimate(method="best")`` (:func:`best_estimate`) keeps the lowest valid
estimate over methods.

:func:`measure` gives the empirical risk ``mu_hat(E)`` and adversarial risk
``mu_hat(E_eps)`` of a region with Clopper-Pearson intervals, and
:func:`run_rectangles` / :func:`run_balls` / :func:`run_halfspace` run the
whole protocol (fit on one split, choose ``q`` and ``T`` on a second, report
on a held-out third; or the paper's protocol, which selects and reports on the
test set) and return JSON-serialisable :class:`ConcentrationRecord` rows.
:func:`estimate` is the one entry point that picks the method from the
threat-model norm (``linf`` -> rectangles, ``l2`` -> balls, any other norm ->
half-space; ``method="halfspaces"`` or ``"best"`` on request) and runs it under
the protocol.

Facts about the authors' implementation that are reproduced: the density rank
is the l1 distance to the 50-th neighbour counting the point itself; boxes are
centred at the cluster mean with per-coordinate half-width ``max |x_d - c_d|``;
the binary search over ``q`` stops at resolution 0.005; greedy ball candidate
radii sit at the ``m``-th uncovered neighbour with ``m`` in ``[n_lo, n_hi]``.
Defects of that code that are not reproduced: empty clusters keep their
previous centre (the authors' code divides by zero and gets NaN), k-NN is
streamed (no 72 GB table) and the greedy ball search never builds an
``N x N`` table.

References:
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
  Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
  "Adversarial spheres." arXiv:1801.02774 (the half-space baseline).
  Prescott, Zhang, Evans. "Improved estimation of concentration under
  lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
  Clopper, Pearson. "The use of confidence or fiducial limits illustrated in
  the case of the binomial." Biometrika 26(4), 1934.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbound import _checks, _engine, geometry, lp
from jaxbound._io import to_jsonable

__all__ = [
    "Measurement",
    "SearchStep",
    "Rectangles",
    "Balls",
    "HalfSpace",
    "Splits",
    "ConcentrationRecord",
    "clopper_pearson",
    "density_ranks",
    "kmeans_l1",
    "box_margin",
    "rectangles_at_q",
    "fit_rectangles",
    "ball_objective",
    "fit_balls",
    "fit_halfspace",
    "halfspace_directions",
    "fit_halfspaces",
    "inflate_balls",
    "fit_target",
    "select_count",
    "Rule",
    "measure",
    "make_splits",
    "run_rectangles",
    "run_balls",
    "run_halfspace",
    "run_halfspaces",
    "records",
    "Estimate",
    "METHODS",
    "ALL_METHODS",
    "method_for",
    "methods_for",
    "estimate",
    "best_estimate",
]

_BIG = np.int32(2**30)
_MEASURE_BLOCK = 2048


# ---------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------


class _ToDict:
    def to_dict(self) -> dict:
        """JSON-serialisable dictionary (arrays become lists)."""
        return to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class Measurement(_ToDict):
    """Empirical risk and adversarial risk of an error region on one sample.

    Attributes:
      n: sample size.
      n_risk: points inside the error region ``E``.
      n_adv: points inside ``E_eps`` (for rectangles: the paper's conservative
        count, see :func:`measure`).
      risk: ``mu_hat(E) = n_risk / n``.
      adv_risk: ``mu_hat(E_eps) = n_adv / n`` (an upper bound for rectangles).
      risk_ci: Clopper-Pearson interval of ``risk`` at ``confidence``.
      adv_risk_ci: Clopper-Pearson interval of ``adv_risk``.
      confidence: the intervals' confidence level.
      adv_rule: ``"exact"`` or ``"single_box_upper_bound"``.
    """

    n: int
    n_risk: int
    n_adv: int
    risk: float
    adv_risk: float
    risk_ci: tuple[float, float]
    adv_risk_ci: tuple[float, float]
    confidence: float
    adv_rule: str


@dataclasses.dataclass(frozen=True)
class SearchStep(_ToDict):
    """One evaluation of the binary search over ``q`` (Algorithm 1).

    ``risk``/``adv_risk`` are measured on the selection sample, ``fit_risk`` on
    the fit sample; ``feasible`` says whether the region meets the search's
    :class:`Rule`.
    """

    q: float
    n_dense: int
    risk: float
    adv_risk: float
    feasible: bool
    fit_risk: float | None = None


@dataclasses.dataclass(frozen=True)
class Rectangles(_ToDict):
    """Error region ``E = R^d minus the union of (Rect(c_t, h_t))_eps`` (paper Definition 3.7).

    Attributes:
      centers: ``[T, d]`` box centres (float64).
      half_widths: ``[T, d]`` non-negative per-coordinate half-widths (float64);
        box ``t`` is ``{x : |x_j - c_tj| <= h_tj for all j}``.
      eps: the budget the region was built for (``E`` depends on it).
      alpha: the risk threshold of the search.
      q: fraction of densest fit points that were clustered.
      n_dense: ``floor(N q)``.
      n_regions: requested ``T`` (``centers`` has fewer rows when clusters
        came out empty or there were fewer dense points than ``T``).
      update: ``"mean"`` (the paper) or ``"median"`` (k-medians).
      n_iter: k-means iterations run.
      key_data: raw data of the ``jax.random`` key used.
      search: the binary-search trace (empty when ``q`` was given).
    """

    centers: np.ndarray
    half_widths: np.ndarray
    eps: float
    alpha: float
    q: float
    n_dense: int
    n_regions: int
    update: str
    n_iter: int
    key_data: tuple[int, ...]
    search: tuple[SearchStep, ...] = ()

    kind = "rectangles"
    norm = "linf"


@dataclasses.dataclass(frozen=True)
class Balls(_ToDict):
    """Error region ``E = union_t Ball_2(c_t, r_t)`` (paper Definition 3.9, Algorithm 2).

    Attributes:
      centers: ``[T, d]`` ball centres (fit points).
      radii: ``[T]`` radii.
      center_indices: ``[T]`` indices of the centres in the fit set.
      m: ``[T]`` chosen ``m`` (the centre's ``m``-th uncovered neighbour sets the radius).
      objective: ``[T]`` greedy objective of each ball (newly expanded minus newly covered).
      covered: ``[T]`` fit points covered after each ball.
      expanded: ``[T]`` fit points in the eps-expansion after each ball.
      eps: budget used by the greedy objective.
      alpha: risk threshold.
      delta: coverage buffer; the target is ``n_target = ceil(N alpha (1 + delta))``.
      n_target: target number of covered fit points.
      n_regions: requested ``T``.
      n_exact: candidate centres evaluated on full distance rows, per ball.
      count_bounds: whether counting tables pruned the candidates.
      inflation: ``s >= 0`` added to every radius after the greedy search so
        that the region meets the selection rule (:func:`inflate_balls`);
        ``radii`` include it, ``covered``/``expanded`` are the greedy's counts
        before it.
    """

    centers: np.ndarray
    radii: np.ndarray
    center_indices: np.ndarray
    m: np.ndarray
    objective: np.ndarray
    covered: np.ndarray
    expanded: np.ndarray
    eps: float
    alpha: float
    delta: float
    n_target: int
    n_regions: int
    n_exact: np.ndarray
    count_bounds: bool = False
    inflation: float = 0.0

    kind = "balls"
    norm = "l2"


@dataclasses.dataclass(frozen=True)
class HalfSpace(_ToDict):
    """Error region ``E = {x : w.x > b}``; ``E_eps = {x : w.x > b - eps ||w||_*}`` (Gilmer et al.).

    Attributes:
      w: ``[d]`` direction: the unit-l2 first principal component (sign
        chosen) for ``family="first_pc"`` (:func:`fit_halfspace`), or a
        signed element-wise power of a principal component scaled to
        ``||w||_* = 1`` for ``family="pca_powers"`` (:func:`fit_halfspaces`).
      b: threshold.
      eps: budget.
      norm: perturbation norm (``"l2"`` or ``"linf"``, any lp).
      shift: ``eps * ||w||_*`` with the dual norm.
      alpha: risk threshold.
      family: ``"first_pc"`` (Gilmer et al.) or ``"pca_powers"`` (Prescott et al.).
      component: index of the principal component (0 = largest variance).
      power: element-wise power ``p`` of ``sign(v) |v|^p``.
      n_candidates: directions compared by the search.
    """

    w: np.ndarray
    b: float
    eps: float
    norm: Any
    shift: float
    alpha: float
    family: str = "first_pc"
    component: int = 0
    power: float = 1.0
    n_candidates: int = 1

    kind = "halfspace"


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def clopper_pearson(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided binomial interval for ``k`` successes in ``n`` trials.

    Args:
      k: successes, ``0 <= k <= n``.
      n: trials, ``n >= 1``.
      confidence: level in ``(0, 1)``.

    Returns:
      ``(low, high)`` with ``low = Beta^-1(a/2; k, n-k+1)`` (0 when ``k = 0``)
      and ``high = Beta^-1(1-a/2; k+1, n-k)`` (1 when ``k = n``), ``a = 1 - confidence``.

    References:
      Clopper, Pearson. "The use of confidence or fiducial limits illustrated
      in the case of the binomial." Biometrika 26(4), 1934.
    """
    from scipy.stats import beta

    n = _checks.check_int(n, "n", low=1)
    k = _checks.check_int(k, "k", low=0, high=n)
    confidence = _checks.check_probability(confidence, "confidence")
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return (low, high)


def _measurement(n: int, n_risk: int, n_adv: int, confidence: float, rule: str) -> Measurement:
    return Measurement(
        n=int(n),
        n_risk=int(n_risk),
        n_adv=int(n_adv),
        risk=n_risk / n,
        adv_risk=n_adv / n,
        risk_ci=clopper_pearson(int(n_risk), int(n), confidence=confidence),
        adv_risk_ci=clopper_pearson(int(n_adv), int(n), confidence=confidence),
        confidence=confidence,
        adv_rule=rule,
    )


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_alpha(alpha) -> float:
    return _checks.check_probability(alpha, "alpha")


def _check_eps(eps) -> float:
    return _checks.check_scalar(eps, "eps", low=0.0)


def _check_T(n_regions) -> int:
    return _checks.check_int(n_regions, "n_regions", low=1)


def _points(x, name="x") -> np.ndarray:
    return np.asarray(_checks.check_points(x, name))


def _key_data(key) -> tuple[int, ...]:
    return tuple(int(v) for v in _engine.key_data(key).ravel())


def _check_margin(margin) -> float:
    return _checks.check_scalar(margin, "margin", low=0.0)


def _check_confidence(confidence) -> float | None:
    return None if confidence is None else _checks.check_probability(confidence, "confidence")


def _check_splits(splits) -> "Splits":
    if not isinstance(splits, Splits):
        raise ValueError(f"splits: expected a Splits from make_splits, got {type(splits).__name__}")
    return splits


# ---------------------------------------------------------------------------
# The validity rule (shared by every method and every repeat)
# ---------------------------------------------------------------------------


def fit_target(alpha: float, n: int, *, margin: float = 0.5) -> float:
    """Risk a region must reach on the ``n`` points it is fitted to: ``alpha + margin / sqrt(n)``.

    The concentration function ``h(mu, alpha, eps) = inf {mu(E_eps) : mu(E) >= alpha}``
    is an infimum over regions of measure at least ``alpha``; a region fitted
    to exactly ``alpha`` of one sample covers less than ``alpha`` of another
    about half the time, and its adversarial risk can then fall below ``h``.
    Prescott et al. (2021) fit to ``alpha + 0.5 / sqrt(n)`` for this reason.

    Args:
      alpha: risk threshold in ``(0, 1)``.
      n: fit sample size ``>= 1``.
      margin: ``c >= 0`` in ``alpha + c / sqrt(n)`` (0: the authors' rule).

    Returns:
      The target risk (may exceed 1 for tiny ``n``; then no region but the
      whole space reaches it).

    References:
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    alpha = _check_alpha(alpha)
    n = _checks.check_int(n, "n", low=1)
    margin = _check_margin(margin)
    return alpha + margin / math.sqrt(n)


def select_count(alpha: float, n: int, *, confidence: float | None = 0.95) -> int:
    """Fewest of ``n`` selection points a region must hold so that its risk is surely ``>= alpha``.

    The smallest ``k`` whose Clopper-Pearson lower end (:func:`clopper_pearson`
    at ``confidence``) is at least ``alpha``; with ``confidence=None`` simply
    ``ceil(n alpha)`` (the empirical risk ``>= alpha``, the authors' rule).

    Args:
      alpha: risk threshold in ``(0, 1)``.
      n: selection sample size ``>= 1``.
      confidence: level of the interval, or ``None``.

    Returns:
      ``k`` in ``[1, n + 1]``; ``n + 1`` means no region short of the whole
      space passes (too few selection points; a search then keeps every
      selection point inside).

    References:
      Clopper, Pearson. "The use of confidence or fiducial limits illustrated
      in the case of the binomial." Biometrika 26(4), 1934.
    """
    from scipy.stats import beta

    alpha = _check_alpha(alpha)
    n = _checks.check_int(n, "n", low=1)
    confidence = _check_confidence(confidence)
    k0 = max(1, int(math.ceil(n * alpha - 1e-9)))
    if confidence is None:
        return k0
    a = (1.0 - confidence) / 2
    # CP lower end Beta^-1(a; k, n-k+1) increases with k: bisect on [k0, n].
    lo, hi = k0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if float(beta.ppf(a, mid, n - mid + 1)) >= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclasses.dataclass(frozen=True)
class Rule(_ToDict):
    """The validity rule of a search: fit target ``alpha + margin / sqrt(n_fit)``, selection count by Clopper-Pearson.

    A region passes when it holds at least ``k_fit = ceil(n_fit * fit_target)``
    fit points and (when a separate selection split is given) at least
    ``k_select`` (:func:`select_count`) selection points. A region is *valid*
    on a split when its empirical risk there is ``>= alpha``.
    """

    alpha: float
    margin: float
    confidence: float | None
    n_fit: int
    k_fit: int
    n_select: int | None = None
    k_select: int | None = None

    def passes(self, n_fit_in: int, n_select_in: int | None = None) -> bool:
        """Whether a region with these counts inside meets the rule."""
        ok = n_fit_in >= self.k_fit
        if self.k_select is not None and n_select_in is not None:
            ok = ok and n_select_in >= self.k_select
        return bool(ok)


def _rule(alpha, n_fit, n_select, margin, confidence) -> Rule:
    t = fit_target(alpha, n_fit, margin=margin)
    k_fit = int(math.ceil(n_fit * t - 1e-9))
    k_sel = None if n_select is None else select_count(alpha, n_select, confidence=confidence)
    # Capped at the sample: the whole space (every point inside) always passes.
    return Rule(float(alpha), float(margin), confidence, int(n_fit), min(k_fit, int(n_fit)),
                None if n_select is None else int(n_select), None if k_sel is None else min(k_sel, int(n_select)))


# ---------------------------------------------------------------------------
# l_inf: density ranks, k-means, boxes (Algorithm 1)
# ---------------------------------------------------------------------------


def density_ranks(
    x: Any,
    *,
    k: int = 50,
    norm: Any = "l1",
    block_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
) -> np.ndarray:
    """Density radius of every point: distance to its ``k``-th nearest neighbour (paper §4.1).

    The point itself counts as the first neighbour (the authors' convention:
    ``k = 50`` is the 49th other point). A smaller radius means a denser
    point. Streams :func:`jaxbound.geometry.knn` (no ``N x N`` table).

    Args:
      x: ``[N, d]`` points.
      k: neighbour rank, ``1 <= k < N``.
      norm: distance (the paper uses ``"l1"``).
      block_size: query rows per block for the k-NN.
      progress: show a progress bar.
      checkpoint: optional ``.npz`` path to resume an interrupted k-NN.

    Returns:
      ``[N]`` float array of radii.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
    """
    x = _points(x)
    norm = _checks.canonical_norm(norm)
    k = _checks.check_int(k, "k", low=1)
    if k >= x.shape[0]:
        raise ValueError(f"k: needs more points than k; got k={k} with {x.shape[0]} points")
    res = geometry.knn(x, k=k, norm=norm, block_size=block_size, progress=progress, checkpoint=checkpoint)
    return np.asarray(res.distances[:, k - 1])


def _median_update(xs, order, assign, centers, n_clusters):
    """Coordinate-wise median of every cluster from column-sorted data (k-medians update)."""
    n, d = xs.shape
    lab = assign[order]  # [n, d] label of the j-th smallest value of each column
    cols = jnp.arange(d)

    def one(t):
        cs = jnp.cumsum((lab == t).astype(jnp.int32), axis=0)
        cnt = cs[-1]
        p1 = jnp.argmax(cs > (cnt - 1) // 2, axis=0)
        p2 = jnp.argmax(cs > cnt // 2, axis=0)
        med = 0.5 * (xs[p1, cols] + xs[p2, cols])
        return jnp.where(cnt > 0, med, centers[t])

    return lax.map(one, jnp.arange(n_clusters))


@functools.partial(jax.jit, static_argnames=("n_clusters", "max_iter", "update"))
def _kmeans_l1(key, x, n_valid, *, n_clusters, max_iter, update):
    """k-means on the first ``n_valid`` rows of ``x`` (the rest is padding; no recompilation per size)."""
    n = x.shape[0]
    valid = jnp.arange(n) < n_valid
    u = jnp.where(valid, jax.random.uniform(key, (n,)), jnp.inf)
    _, init = lax.top_k(-u, n_clusters)  # n_clusters distinct valid rows, uniformly at random
    c0 = x[init]

    def assign(c):
        # [T, n] l1 distances via the shared geometry kernel; ties go to the lower cluster index.
        a = jnp.argmin(geometry.block_distances(c, x, norm="l1"), axis=0).astype(jnp.int32)
        return jnp.where(valid, a, -1)

    if update == "median":
        order = jnp.argsort(jnp.where(valid[:, None], x, jnp.inf), axis=0)
        xs = jnp.take_along_axis(x, order, axis=0)

    def new_centers(a, c):
        if update == "median":
            return _median_update(xs, order, a, c, n_clusters)
        seg = jnp.where(valid, a, n_clusters)
        sums = jax.ops.segment_sum(x, seg, num_segments=n_clusters + 1)[:n_clusters]
        cnt = jax.ops.segment_sum(jnp.ones((n,), x.dtype), seg, num_segments=n_clusters + 1)[:n_clusters]
        # Empty clusters keep their previous centre (the authors' code divides by zero here).
        return jnp.where(cnt[:, None] > 0, sums / jnp.maximum(cnt, 1)[:, None], c)

    def cond(state):
        it, _, _, changed = state
        return (it < max_iter) & changed

    def body(state):
        it, c, a, _ = state
        c = new_centers(a, c)
        a_new = assign(c)
        return it + 1, c, a_new, jnp.any(a_new != a)

    a0 = assign(c0)
    it, c, a, _ = lax.while_loop(cond, body, (jnp.int32(0), c0, a0, jnp.bool_(True)))
    return c, a, it


def kmeans_l1(
    x: Any, *, n_clusters: int, key: jax.Array, max_iter: int = 30, update: str = "mean"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Clustering with l1 assignment (paper §4.1; jitted).

    Centres start at ``n_clusters`` distinct points drawn with ``key``. Each
    iteration assigns every point to the nearest centre in l1 (ties to the
    lower index) and updates each centre by the arithmetic mean of its members
    (``update="mean"``, the paper's k-means) or their coordinate-wise median
    (``update="median"``, k-medians, the l1-optimal update). A cluster that
    becomes empty keeps its previous centre, so no NaN can appear. Stops after
    ``max_iter`` updates or when assignments stop changing.

    Args:
      x: ``[n, d]`` points, ``n >= n_clusters``.
      n_clusters: ``T >= 1`` (static).
      key: ``jax.random`` key drawing the initial centres.
      max_iter: maximum number of updates (static; the paper uses 30).
      update: ``"mean"`` or ``"median"`` (static).

    Returns:
      ``(centers [T, d], assignments [n] int32, n_iter)``.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
    """
    key = _checks.check_key(key)
    x = _checks.check_points(x, "x")
    n_clusters = _checks.check_int(n_clusters, "n_clusters", low=1)
    max_iter = _checks.check_int(max_iter, "max_iter", low=0)
    if update not in ("mean", "median"):
        raise ValueError(f"update: must be 'mean' or 'median', got {update!r}")
    if n_clusters > x.shape[0]:
        raise ValueError(f"n_clusters: needs at least {n_clusters} points, got {x.shape[0]}")
    x = jnp.asarray(x, dtype=jnp.result_type(x.dtype, jnp.float32))
    return _kmeans_l1(key, x, jnp.int32(x.shape[0]), n_clusters=n_clusters, max_iter=max_iter, update=update)


def box_margin(x: jax.Array, centers: jax.Array, half_widths: jax.Array) -> jax.Array:
    """``margin[i, t] = max_j (|x_ij - c_tj| - h_tj)`` (jittable).

    ``x_i`` lies in box ``t`` enlarged by ``eps`` (in l_inf) iff ``margin <= eps``.

    Args:
      x: ``[n, d]`` points.
      centers: ``[T, d]`` box centres.
      half_widths: ``[T, d]`` half-widths.

    Returns:
      ``[n, T]`` margins.

    Raises:
      ValueError: shapes that are not ``[n, d]``, ``[T, d]``, ``[T, d]``
        (shape checks only, so the function stays jittable).
    """
    for name, a in (("x", x), ("centers", centers), ("half_widths", half_widths)):
        if getattr(a, "ndim", None) != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {getattr(a, 'shape', type(a).__name__)}")
    if centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers: feature dimension {centers.shape[1]} does not match x's {x.shape[1]}")
    if half_widths.shape != centers.shape:
        raise ValueError(f"half_widths: expected shape {tuple(centers.shape)} like centers, got {tuple(half_widths.shape)}")
    return jnp.max(jnp.abs(x[:, None, :] - centers[None, :, :]) - half_widths[None, :, :], axis=-1)


def _min_margin_block(x, centers, half_widths):
    # One box at a time: each step reduces a [b, d] slab, where box_margin's [b, T, d] broadcast made XLA's CPU
    # reduction 8x slower (measured on 5,000 x 3,072 points, T = 10). The same operations per element, so the
    # margins are bit-identical to box_margin's.
    per_box = lax.map(lambda ch: jnp.max(jnp.abs(x - ch[0]) - ch[1], axis=1), (centers, half_widths))
    return jnp.min(per_box, axis=0)


def _min_box_margin(x: np.ndarray, centers: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Float64 ``min_t margin[i, t]`` streamed in blocks through the engine (``+inf`` when there is no box)."""
    n = x.shape[0]
    if centers.shape[0] == 0:
        return np.full(n, np.inf)
    with jax.enable_x64(True):
        c = jnp.asarray(centers, jnp.float64)
        h = jnp.asarray(half_widths, jnp.float64)
        blk = max(1, min(_MEASURE_BLOCK, (2**26) // max(1, x.shape[1])))
        return _engine.run(_min_margin_block, {}, [np.asarray(x, np.float64)], [c, h], block_size=blk)


def _boxes_from_clusters(x: np.ndarray, assign: np.ndarray, n_clusters: int, update: str):
    """Float64 boxes: centre = mean (median) of the members, half-width = max |x - c| per coordinate."""
    centers, widths = [], []
    for t in range(n_clusters):
        mem = x[assign == t].astype(np.float64)
        if mem.shape[0] == 0:
            continue
        c = mem.mean(axis=0) if update == "mean" else np.median(mem, axis=0)
        centers.append(c)
        widths.append(np.max(np.abs(mem - c), axis=0))
    d = x.shape[1]
    if not centers:
        return np.zeros((0, d)), np.zeros((0, d))
    return np.stack(centers), np.stack(widths)


def _dense_order(radii: np.ndarray) -> np.ndarray:
    return np.argsort(radii, kind="stable")


def rectangles_at_q(
    x: Any,
    *,
    key: jax.Array,
    q: float,
    eps: float,
    n_regions: int,
    radii: Any = None,
    alpha: float = float("nan"),
    k: int = 50,
    density_norm: Any = "l1",
    update: str = "mean",
    max_iter: int = 30,
) -> Rectangles:
    """Boxes around ``T`` clusters of the ``floor(N q)`` densest points (one step of Algorithm 1).

    Args:
      x: ``[N, d]`` fit points.
      key: ``jax.random`` key for the cluster initialisation.
      q: fraction of densest points to cover, in ``[0, 1]``.
      eps: l_inf budget (the region is the complement of the boxes enlarged by ``eps``).
      n_regions: ``T``.
      radii: ``[N]`` precomputed :func:`density_ranks` (computed when ``None``).
      alpha: recorded in the result only.
      k, density_norm: density rank settings when ``radii`` is ``None``.
      update: ``"mean"`` (paper) or ``"median"``.
      max_iter: k-means iterations (paper: 30).

    Returns:
      :class:`Rectangles`.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
    """
    key = _checks.check_key(key)
    x = _points(x)
    q = _checks.check_scalar(q, "q", low=0.0, high=1.0)
    eps = _check_eps(eps)
    T = _check_T(n_regions)
    if T > x.shape[0]:
        raise ValueError(f"n_regions: at most one box per point; got {T} boxes for {x.shape[0]} points")
    radii = _radii(x, radii, k=k, norm=density_norm)
    return _rectangles_at_q(key, x, _dense_order(radii), q=q, eps=eps, T=T, alpha=alpha, update=update,
                            max_iter=max_iter)


def _radii(x, radii, *, k, norm, progress: bool = False) -> np.ndarray:
    if radii is None:
        return density_ranks(x, k=k, norm=norm, progress=progress)
    r = np.asarray(radii)
    if r.ndim != 1 or r.shape[0] != x.shape[0]:
        raise ValueError(f"radii: expected shape [{x.shape[0]}], got {r.shape}")
    if not (np.issubdtype(r.dtype, np.floating) or np.issubdtype(r.dtype, np.integer)) or r.dtype == np.bool_:
        raise ValueError(f"radii: expected real numbers, got dtype {r.dtype}")
    _checks.check_finite(r, "radii")
    if r.size and float(r.min()) < 0:
        raise ValueError(f"radii: density radii are distances and must be >= 0, got minimum {float(r.min())}")
    return r


def _rectangles_at_q(key, x, order, *, q, eps, T, alpha, update, max_iter, x_sorted=None) -> Rectangles:
    n_dense = int(math.floor(x.shape[0] * q + 1e-9))
    t_eff = min(T, n_dense)
    if t_eff == 0:
        centers = np.zeros((0, x.shape[1]))
        widths = np.zeros((0, x.shape[1]))
        n_iter = 0
    else:
        if x_sorted is None:
            x_sorted = jnp.asarray(x[order], jnp.result_type(x.dtype, jnp.float32))
        max_iter = _checks.check_int(max_iter, "max_iter", low=0)
        # All densities share one compiled k-means: rows past n_dense are masked out.
        _, assign, n_iter = _kmeans_l1(key, x_sorted, jnp.int32(n_dense), n_clusters=t_eff, max_iter=max_iter,
                                       update=update)
        dense = x[order[:n_dense]]
        centers, widths = _boxes_from_clusters(dense, np.asarray(assign)[:n_dense], t_eff, update)
        n_iter = int(n_iter)
    return Rectangles(
        centers=centers, half_widths=widths, eps=float(eps), alpha=float(alpha), q=float(q),
        n_dense=n_dense, n_regions=T, update=update, n_iter=n_iter, key_data=_key_data(key),
    )


def fit_rectangles(
    x: Any,
    *,
    key: jax.Array,
    alpha: float,
    eps: float,
    n_regions: int,
    q: float | None = None,
    x_select: Any = None,
    radii: Any = None,
    k: int = 50,
    density_norm: Any = "l1",
    update: str = "mean",
    max_iter: int = 30,
    resolution: float = 0.005,
    margin: float = 0.5,
    confidence: float | None = 0.95,
    q_max: float = 1.0,
) -> Rectangles:
    """Complement of a union of ``T`` hyperrectangles, searched by Algorithm 1 of the paper.

    Points of ``x`` are ranked by density (:func:`density_ranks`), the
    ``floor(N q)`` densest are clustered into ``T`` clusters
    (:func:`kmeans_l1`), each cluster gives a box, and the error region is
    ``E = complement of union_t (box_t)_eps``. When ``q`` is ``None`` it is
    found by binary search on ``[0, q_max]`` until the bracket is shorter than
    ``resolution`` (8 evaluations for 0.005). A ``q`` is feasible when its
    region meets the :class:`Rule`: at least ``alpha + margin / sqrt(N)`` of
    ``x`` inside ``E`` (:func:`fit_target`) and, when ``x_select`` is given,
    at least :func:`select_count` of its points (Clopper-Pearson lower end
    ``>= alpha`` at ``confidence``). Feasible ``q`` move the lower end up,
    infeasible ones the upper end down; among feasible evaluations the lowest
    adversarial risk on ``x_select`` (on ``x`` without it) wins (ties: the
    larger ``q``). When no evaluated ``q`` is feasible the search falls back to
    ``q = 0`` (no box: ``E`` is the whole space, risk 1), so the returned
    region always meets the rule. All evaluations share ``key`` (common
    random numbers). ``margin=0, confidence=None`` is the authors' rule
    (risk ``>= alpha`` on the selection sample).

    Args:
      x: ``[N, d]`` fit points, ``N >= n_regions``.
      key: ``jax.random`` key for the k-means initialisation.
      alpha: risk threshold in ``(0, 1)``.
      eps: l_inf budget ``>= 0``.
      n_regions: number of boxes ``T >= 1``.
      q: covered fraction; searched when ``None``.
      x_select: ``[M, d]`` points on which the selection rule and the
        adversarial risk are judged during the search.
      radii: ``[N]`` precomputed non-negative density radii of ``x`` (reuse across calls).
      k: density neighbour rank (paper: 50; the point counts itself).
      density_norm: density distance (paper: ``"l1"``).
      update: ``"mean"`` (paper) or ``"median"`` (k-medians).
      max_iter: k-means iterations (paper: 30).
      resolution: binary-search stopping width (paper: 0.005).
      margin: ``c`` of the fit target ``alpha + c / sqrt(N)`` (Prescott et al.: 0.5).
      confidence: Clopper-Pearson level of the selection rule, or ``None``
        for the empirical risk ``>= alpha``.
      q_max: upper end of the searched ``q`` range.

    Returns:
      :class:`Rectangles` at the chosen ``q`` with the search trace.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    key = _checks.check_key(key)
    x = _points(x)
    alpha = _check_alpha(alpha)
    eps = _check_eps(eps)
    T = _check_T(n_regions)
    if T > x.shape[0]:
        raise ValueError(f"n_regions: at most one box per fit point; got {T} boxes for {x.shape[0]} points")
    if update not in ("mean", "median"):
        raise ValueError(f"update: must be 'mean' or 'median', got {update!r}")
    max_iter = _checks.check_int(max_iter, "max_iter", low=0)
    resolution = _checks.check_scalar(resolution, "resolution", low=0.0, high=1.0, low_inclusive=False)
    q_max = _checks.check_scalar(q_max, "q_max", low=0.0, high=1.0)
    rule = _rule(alpha, x.shape[0], None if x_select is None else _n_rows(x_select, "x_select"),
                 _check_margin(margin), _check_confidence(confidence))
    xs = x if x_select is None else _points(x_select, "x_select")
    if xs.shape[1] != x.shape[1]:
        raise ValueError(f"x_select: feature dimension {xs.shape[1]} does not match x's {x.shape[1]}")
    if radii is None:
        k = _checks.check_int(k, "k", low=1)
        if k >= x.shape[0]:
            raise ValueError(f"k: needs more points than k; got k={k} with {x.shape[0]} points")
    radii = _radii(x, radii, k=k, norm=density_norm)
    order = _dense_order(radii)
    x_sorted = jnp.asarray(x[order], jnp.result_type(x.dtype, jnp.float32))
    build = functools.partial(_rectangles_at_q, key, x, order, eps=eps, T=T, alpha=alpha, update=update,
                              max_iter=max_iter, x_sorted=x_sorted)
    if q is not None:
        q = _checks.check_scalar(q, "q", low=0.0, high=1.0)
        return build(q=q)
    return _search_q(build, x, None if x_select is None else xs, rule, q_max, resolution)


def _n_rows(x, name) -> int:
    return int(_points(x, name).shape[0])


def _rect_step(reg: Rectangles, x, xs, rule: Rule) -> SearchStep:
    """Measure a candidate region on the fit (and selection) sample and judge it by the rule."""
    mf = measure(reg, x)
    ms = mf if xs is None else measure(reg, xs)
    ok = rule.passes(mf.n_risk, None if xs is None else ms.n_risk)
    return SearchStep(reg.q, reg.n_dense, ms.risk, ms.adv_risk, ok, mf.risk)


def _search_q(build, x, xs, rule: Rule, q_max: float, resolution: float) -> Rectangles:
    """Binary search of ``q`` in ``[0, q_max]`` under ``rule``, falling back to ``q = 0`` (no box)."""
    lo, hi = 0.0, q_max
    steps: list[SearchStep] = []
    regions: list[Rectangles] = []
    while hi - lo >= resolution:
        mid = 0.5 * (lo + hi)
        reg = build(q=mid)
        steps.append(_rect_step(reg, x, xs, rule))
        regions.append(reg)
        if steps[-1].feasible:
            lo = mid
        else:
            hi = mid
    if not any(s.feasible for s in steps):
        reg = build(q=0.0)
        steps.append(_rect_step(reg, x, xs, rule))
        regions.append(reg)
    feas = [i for i, s in enumerate(steps) if s.feasible]
    if feas:
        best = min(feas, key=lambda i: (steps[i].adv_risk, -steps[i].q))
    else:  # only when even q = 0 fails (cannot happen: the whole space holds every point)
        best = min(range(len(steps)), key=lambda i: steps[i].q)
    return dataclasses.replace(regions[best], search=tuple(steps))


# ---------------------------------------------------------------------------
# l2: greedy union of balls (Algorithm 2)
# ---------------------------------------------------------------------------


def _searchsorted_rows(a, v, side):
    return jax.vmap(lambda r, s: jnp.searchsorted(r, s, side=side, method="scan"))(a, v)


@jax.jit
def _row_tables(dist, eps):
    """Per-row tables of a sorted neighbour list that do not change between balls.

    ``S[i, j]`` = entries of row ``i`` with ``d <= d[i, j] + eps`` and ``te[i, j]`` =
    last position of the tie run of ``d[i, j]``.
    """
    L = dist.shape[1]
    S = _searchsorted_rows(dist, dist + jnp.asarray(eps, dist.dtype), "right").astype(jnp.int32)
    is_end = jnp.concatenate([dist[:, 1:] != dist[:, :-1], jnp.ones((dist.shape[0], 1), bool)], axis=1)
    te = lax.cummin(jnp.where(is_end, jnp.arange(L, dtype=jnp.int32), jnp.int32(L)), axis=1, reverse=True)
    return S, te


@functools.partial(jax.jit, static_argnames=("complete",))
def _eval_rows(idx, S, te, covered, expanded, lo, hi, counts=None, *, complete):
    """Greedy objective of candidate centres from their sorted neighbour rows.

    A row lists points in ascending distance from the candidate (ties by
    index) with the tables of :func:`_row_tables`. Every uncovered entry ``j``
    of rank ``m = cu[j]`` among the uncovered entries sets ``r_m = d[j]``;
    ``C = cu[te[j]]`` uncovered entries lie within ``r_m`` and
    ``E = ce[S[j] - 1]`` non-expanded entries within ``r_m + eps``; the
    objective is ``E - C`` for ``lo <= m <= hi``. With ``complete=False`` rows
    are truncated neighbour lists: a value is exact only when the list reaches
    past the radius (``te < L - 1`` and ``S < L``); otherwise ``E >=`` (non-
    expanded entries in the list) gives a lower bound (an unknown ``C`` gives
    ``-BIG``).

    Returns ``(best [b], best_m [b], lower [b])``: the smallest exact objective
    (``BIG`` if none) with its smallest ``m``, and the smallest lower bound over
    inexact ``m`` (``BIG`` if none).
    """
    L = idx.shape[1]
    unc = ~covered[idx]
    cu = jnp.cumsum(unc.astype(jnp.int32), axis=1)
    ce = jnp.cumsum((~expanded[idx]).astype(jnp.int32), axis=1)
    valid = unc & (cu >= lo) & (cu <= hi)
    C = jnp.take_along_axis(cu, te, axis=1)
    E = jnp.where(S > 0, jnp.take_along_axis(ce, jnp.maximum(S - 1, 0), axis=1), 0)
    obj = E - C
    big = jnp.int32(_BIG)
    if complete:
        exact = valid
        lower = jnp.full(obj.shape, big)
    else:
        c_ok = te < L - 1
        exact = valid & c_ok & (S < L)
        beyond = ce[:, -1:] - C
        if counts is not None:  # tighter bound from the counting tables (see _CountBounds)
            beyond = jnp.maximum(beyond, _count_lower(*counts, ce, C))
        lower = jnp.where(c_ok, jnp.where(S < L, obj, beyond), -big)
    val = jnp.where(exact, obj, big)
    best = jnp.min(val, axis=1)
    j = jnp.argmin(val, axis=1)
    best_m = jnp.take_along_axis(cu, j[:, None], axis=1)[:, 0]
    low = jnp.min(jnp.where(valid & ~exact, lower, big), axis=1)
    return best, best_m, low


def ball_objective(
    dist: Any, idx: Any, covered: Any, expanded: Any, *, lo: int, hi: int, eps: float, complete: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy objective of Algorithm 2 for candidate centres given their sorted neighbour rows.

    For a centre ``c`` and ``m`` in ``[lo, hi]`` the candidate radius ``r_m`` is
    the distance to its ``m``-th not-yet-covered neighbour (itself included);
    the objective is (non-expanded points within ``r_m + eps``) minus
    (uncovered points within ``r_m``), closed balls, ties counted.

    Args:
      dist: ``[b, L]`` ascending distances from each centre (ties ordered by index).
      idx: ``[b, L]`` int point indices of those distances.
      covered: ``[N]`` bool, points already in the union of balls.
      expanded: ``[N]`` bool, points already in the union of expanded balls.
      lo, hi: range of ``m``, ``1 <= lo <= hi``.
      eps: budget.
      complete: rows hold every point (all values exact) or are truncated lists.

    Returns:
      ``(best [b], best_m [b], lower [b])`` int arrays: the smallest exact
      objective and its smallest ``m`` (``2**30`` when none), and a lower bound
      on the objectives that the truncated list cannot settle (``2**30`` when
      none).

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
    """
    dist = jnp.asarray(dist)
    idx = jnp.asarray(idx, jnp.int32)
    lo = _checks.check_int(lo, "lo", low=1)
    hi = _checks.check_int(hi, "hi", low=lo)
    eps = _check_eps(eps)
    S, te = _row_tables(dist, eps)
    out = _eval_rows(idx, S, te, jnp.asarray(covered, bool), jnp.asarray(expanded, bool), jnp.int32(lo),
                     jnp.int32(hi), complete=bool(complete))
    return tuple(np.asarray(o) for o in out)


@functools.partial(jax.jit, static_argnames=())
def _sorted_rows(dist):
    ids = jnp.broadcast_to(jnp.arange(dist.shape[1], dtype=jnp.int32), dist.shape)
    return lax.sort((dist, ids), dimension=1, num_keys=2)


_bd_l2 = jax.jit(functools.partial(geometry.block_distances, norm="l2"))


def _full_rows(xj: jax.Array, rows: np.ndarray, chunk: int) -> jax.Array:
    """l2 distances from points ``rows`` to all points, via the geometry kernel over column chunks."""
    q = xj[jnp.asarray(rows)]
    n = xj.shape[0]
    parts = [_bd_l2(q, xj[lo : lo + chunk]) for lo in range(0, n, chunk)]
    return jnp.concatenate(parts, axis=1)


def _bucket_counts(q, refs, refs_sq, g0, inv, *, G):
    """Per-row histogram of squared l2 distances (one GEMM, :func:`geometry.l2_sq_gemm`) on a uniform grid.

    Bucket ``b`` of a value ``v`` is ``ceil((v - g0) * inv)`` clipped to
    ``[0, G]``, so bucket ``<= k`` means ``v <= g0 + k / inv`` up to one bucket
    of rounding (the queries below step one bucket further for safety).
    """
    d2 = geometry.l2_sq_gemm(q, refs, refs_sq)
    b = jnp.clip(jnp.ceil((d2 - g0) * inv), 0, G).astype(jnp.int32)
    return jax.vmap(lambda r: jnp.bincount(r, length=G + 1))(b)[:, :G]


def _cumulative_counts(q, refs, refs_sq, g0, inv, *, G, chunk):
    """Cumulative histogram ``[b, G]`` of one query block against all references, in column chunks."""
    m = refs.shape[0]
    h = sum(_bucket_counts(q, refs[c : c + chunk], refs_sq[c : c + chunk], g0, inv, G=G) for c in range(0, m, chunk))
    return jnp.cumsum(h, axis=1, dtype=jnp.int32)


class _CountBounds:
    """Coarse counting tables that turn truncated neighbour lists into tight objective bounds.

    For large ``eps`` a neighbour list rarely reaches ``r_m + eps``, and the
    list alone only says ``E >=`` (non-expanded entries of the list). These
    tables give, for every candidate centre ``c`` and any radius ``R``, a lower
    bound on ``#{j : d(c, j) <= R}`` (``A``, from one streamed pass over all
    pairs) and an upper bound on ``#{j expanded : d(c, j) <= R}`` (``X``,
    updated with each ball's newly expanded points), hence ``E >= A_lo(R) -
    X_hi(R)``. Both are cumulative histograms of squared distances on a
    uniform grid, streamed over query blocks by the block engine; the GEMM
    rounding band :func:`jaxbound.geometry.gemm_rounding_bound` and one bucket
    of slack on each side make the bounds sound for the exact distances.
    """

    def __init__(self, xj, x_sq, g0, g1, *, grid, chunk, block, progress):
        N, d = xj.shape
        self.G = int(grid)
        self.g0 = float(g0)
        self.inv = float((self.G - 1) / max(g1 - g0, 1e-12))
        self.rel = geometry.gemm_rounding_bound(d, xj.dtype) + 1e-6  # plus rounding of R^2
        self.sq_max = float(jnp.max(x_sq)) if N else 0.0
        self.xj, self.x_sq, self.chunk = xj, x_sq, int(chunk)
        self.x_host = np.asarray(xj)
        self.A = self._table(xj, x_sq, block=block, chunk=self.chunk, progress=progress, desc="count tables")
        self.X = np.zeros((N, self.G), np.int32)
        self.n_exp = 0

    def _table(self, refs, refs_sq, *, block, chunk, progress=False, desc=""):
        """``[N, G]`` cumulative counts of every point against ``refs`` (``chunk`` references per GEMM)."""
        dt = self.xj.dtype
        return _engine.run(
            _cumulative_counts, {"G": self.G, "chunk": max(1, int(chunk))}, [self.x_host],
            [refs, refs_sq, jnp.asarray(self.g0, dt), jnp.asarray(self.inv, dt)],
            block_size=block, progress=progress, desc=desc, unit="pt",
        )

    def add_expanded(self, new_idx: np.ndarray) -> None:
        """Add newly expanded points to the ``X`` table."""
        if new_idx.size == 0:
            return
        idx = jnp.asarray(new_idx)
        self.X += self._table(self.xj[idx], self.x_sq[idx], block=4096, chunk=new_idx.size)
        self.n_exp += int(new_idx.size)


@functools.partial(jax.jit, static_argnames=())
def _count_lower(dist, A, X, c_sq, n_exp, g0, inv, rel, sq_max, eps, ce, C):
    """Lower bound of the objective ``E - C`` for list entries whose expansion leaves the list."""
    G = A.shape[1]
    R2 = jnp.square(dist + eps)
    tol = rel * (c_sq[:, None] + sq_max) + rel * R2
    k_lo = jnp.floor((R2 - tol - g0) * inv).astype(jnp.int32) - 1
    lo_all = jnp.where(k_lo >= 0, jnp.take_along_axis(A, jnp.clip(k_lo, 0, G - 1), axis=1), 0)
    k_hi = jnp.ceil((R2 + tol - g0) * inv).astype(jnp.int32) + 1
    hi_exp = jnp.where(k_hi <= G - 1, jnp.take_along_axis(X, jnp.clip(k_hi, 0, G - 1), axis=1), n_exp)
    E_lo = jnp.maximum(ce[:, -1:], lo_all - hi_exp)
    return E_lo - C


def fit_balls(
    x: Any,
    *,
    alpha: float,
    eps: float,
    n_regions: int,
    delta: float = 0.1,
    list_size: int = 2048,
    neighbours: geometry.KNN | None = None,
    precision: str = "float32",
    block_size: int = 1024,
    exact_block: int = 32,
    chunk: int = 8192,
    count_bounds: bool | None = None,
    count_grid: int = 1024,
    progress: bool = False,
    margin: float = 0.5,
) -> Balls:
    """Greedy union of ``T`` l2 balls (paper §4.2, Algorithm 2), exact and without an ``N x N`` table.

    Target coverage ``n_tot = ceil(N a (1 + delta))`` with the fit target
    ``a = alpha + margin / sqrt(N)`` (:func:`fit_target`; ``margin=0`` is the
    authors' ``ceil(N alpha (1 + delta))``). Ball ``t`` (of
    ``T``) may cover ``m`` new points with ``n_lo = ceil((n_tot - covered) /
    (T - t)) <= m <= n_hi = n_tot - covered``. Every fit point is a candidate
    centre; its candidate radius ``r_m`` is the distance to its ``m``-th
    not-yet-covered neighbour; the chosen ``(centre, m)`` minimises (points
    newly in the expansion ``B(c, r_m + eps)``) minus (points newly covered by
    ``B(c, r_m)``), ties broken by the smaller centre index, then the smaller
    ``m``. Stops when ``covered >= n_tot`` or after ``T`` balls.

    Exactness without a dense table: every point keeps its ``L = list_size``
    nearest neighbours (one streamed :func:`jaxbound.geometry.knn`; ``L >=
    n_tot`` guarantees every ``r_m`` lies in the list). Per ball the objective
    of every candidate is evaluated on its list; a value is exact when the
    list reaches beyond ``r_m + eps``, otherwise the list gives a lower bound.
    Candidates whose best exact value or lower bound is at most the best exact
    value found are re-evaluated on full distance rows
    (:func:`jaxbound.geometry.block_distances` over column chunks, then a
    sort), which decides the ball. The covered/expanded sets are updated from
    the winner's full row, so ``B(c, r + eps)`` is exact.

    Large ``eps`` (e.g. 4.74 on MNIST): lists seldom reach ``r_m + eps`` and
    the list bound ``E >= (non-expanded entries of the list)`` prunes almost
    nothing, so nearly every candidate would need a full row per ball. With
    ``count_bounds`` one streamed pass over all pairs builds per-point
    cumulative histograms of squared distances (``count_grid`` buckets), and
    each ball adds its newly expanded points to a second table; together they
    bound ``E`` from below for any radius (sound for the exact distances; see
    ``_CountBounds``), so only near-optimal candidates get full rows. The
    chosen balls are unchanged: the bounds only prune.

    Args:
      x: ``[N, d]`` fit points.
      alpha: risk threshold in ``(0, 1)``.
      eps: l2 budget ``>= 0``.
      n_regions: ``T >= 1``.
      delta: coverage buffer ``>= 0`` (the authors' code uses 0.01-0.25).
      list_size: neighbours kept per point (raised to ``n_tot`` when smaller,
        capped at ``N - 1``).
      neighbours: a precomputed ``geometry.knn(x, k=L, norm="l2")`` to reuse
        across ``eps`` values (``k >= n_tot``).
      precision: ``"float32"`` or ``"float64"`` for all distances.
      block_size: candidate rows per list-evaluation block.
      exact_block: candidate rows per full-row block.
      chunk: columns per :func:`geometry.block_distances` call.
      count_bounds: build the counting tables (``None``: when more than 5% of
        the lists end before ``r + eps`` at the first ball's smallest ``m``).
      count_grid: histogram buckets per point for ``count_bounds`` (memory
        ``2 N count_grid`` int32).
      progress: show a progress bar over balls.
      margin: ``c >= 0`` of the fit target ``alpha + c / sqrt(N)``.

    Returns:
      :class:`Balls`.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202 (Algorithm 2).
    """
    x = _points(x)
    alpha = _check_alpha(alpha)
    eps = _check_eps(eps)
    T = _check_T(n_regions)
    delta = _checks.check_scalar(delta, "delta", low=0.0)
    list_size = _checks.check_int(list_size, "list_size", low=1)
    block_size = _checks.check_int(block_size, "block_size", low=1)
    exact_block = _checks.check_int(exact_block, "exact_block", low=1)
    chunk = _checks.check_int(chunk, "chunk", low=1)
    count_grid = _checks.check_int(count_grid, "count_grid", low=2)
    if count_bounds not in (None, True, False):
        raise ValueError(f"count_bounds: expected None, True or False, got {count_bounds!r}")
    if neighbours is not None and not isinstance(neighbours, geometry.KNN):
        raise ValueError(f"neighbours: expected a geometry.KNN from geometry.knn(x, k=L, norm='l2') or None, "
                        f"got {type(neighbours).__name__}")
    N = x.shape[0]
    n_tot = int(math.ceil(N * fit_target(alpha, N, margin=margin) * (1.0 + delta) - 1e-9))
    if n_tot >= N:
        raise ValueError(f"alpha: target coverage ceil(N (alpha + margin/sqrt(N)) (1+delta)) = {n_tot} must be "
                         f"below N = {N}")
    from tqdm.auto import tqdm

    with _engine.precision_ctx(_engine.check_precision(precision)) as dt:
        nd, ni = _neighbour_lists(x, neighbours, n_tot=n_tot, list_size=list_size, precision=precision,
                                  progress=progress)
        g = _GreedyBalls(x, nd, ni, dt, eps=eps, block_size=block_size, exact_block=exact_block, chunk=chunk)
        if count_bounds is None:
            lo1 = -(-n_tot // T)
            count_bounds = bool(np.mean(nd[:, -1] < nd[:, lo1 - 1] + eps) > 0.05)
        if count_bounds:
            g.add_count_bounds(grid=count_grid, progress=progress)
        bar = tqdm(total=T, desc=f"balls eps={eps:g}", disable=not progress, leave=False)
        for t in range(T):
            n_cov = int(g.covered.sum())
            if n_cov >= n_tot:
                break
            hi = n_tot - n_cov
            g.step(lo=-(-hi // (T - t)), hi=hi)
            bar.update(1)
        bar.close()
    out = g.out
    ci = np.asarray(out["center"], np.int64)
    return Balls(
        centers=x[ci].astype(np.float64),
        radii=np.asarray(out["radius"], np.float64),
        center_indices=ci,
        m=np.asarray(out["m"], np.int64),
        objective=np.asarray(out["obj"], np.int64),
        covered=np.asarray(out["cov"], np.int64),
        expanded=np.asarray(out["exp"], np.int64),
        eps=float(eps),
        alpha=float(alpha),
        delta=float(delta),
        n_target=n_tot,
        n_regions=T,
        n_exact=np.asarray(out["n_exact"], np.int64),
        count_bounds=g.cb is not None,
    )


def _neighbour_lists(x, neighbours, *, n_tot, list_size, precision, progress):
    """The ``[N, L]`` neighbour distances and indices of every fit point (computed or checked)."""
    N = x.shape[0]
    if neighbours is None:
        L = min(N - 1, max(list_size, n_tot))
        neighbours = geometry.knn(x, k=L, norm="l2", precision=precision, progress=progress)
    nd = np.asarray(neighbours.distances)
    ni = np.asarray(neighbours.indices)
    if nd.ndim != 2 or nd.shape[0] != N or ni.shape != nd.shape:
        raise ValueError(f"neighbours: expected [N={N}, L] distances and indices, got {nd.shape} and {ni.shape}")
    if nd.shape[1] < n_tot:
        raise ValueError(f"neighbours: needs at least n_tot = {n_tot} neighbours per point, got {nd.shape[1]}")
    return nd, ni


class _GreedyBalls:
    """State of the greedy ball search of :func:`fit_balls` (one :meth:`step` per ball)."""

    def __init__(self, x, nd, ni, dt, *, eps, block_size, exact_block, chunk):
        N = x.shape[0]
        self.x, self.nd, self.dt, self.eps, self.N = x, nd, dt, eps, N
        self.block_size, self.exact_block, self.chunk = block_size, exact_block, chunk
        self.xj = jnp.asarray(x, dt)
        self.x_sq = jnp.sum(self.xj * self.xj, axis=1)
        # Tables of every list that stay fixed across balls (per-row S and tie ends).
        self.n_blk = -(-N // block_size)
        self.tables, self.dblks = [], []
        for s in range(0, N, block_size):
            dblk = jnp.asarray(nd[s : s + block_size], dt)
            if dblk.shape[0] < block_size:
                dblk = jnp.pad(dblk, ((0, block_size - dblk.shape[0]), (0, 0)), constant_values=jnp.inf)
            self.tables.append(_row_tables(dblk, eps))
            self.dblks.append(dblk)
        ni_j = jnp.asarray(ni, jnp.int32)
        iblks = [ni_j[s : s + block_size] for s in range(0, N, block_size)]
        self.iblks = [jnp.pad(b_, ((0, block_size - b_.shape[0]), (0, 0))) if b_.shape[0] < block_size else b_
                      for b_ in iblks]
        self.cb = None
        self.covered = np.zeros(N, bool)
        self.expanded = np.zeros(N, bool)
        self.out = {k: [] for k in ("center", "radius", "m", "obj", "cov", "exp", "n_exact")}

    def add_count_bounds(self, *, grid, progress):
        """Build the counting tables (:class:`_CountBounds`) that prune candidates for large ``eps``."""
        x, nd = self.x, self.nd
        g0 = float(nd[:, -1].min()) ** 2 * (1.0 - 1e-3)
        spread = float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).max()))
        self.cb = _CountBounds(self.xj, self.x_sq, g0, (2.0 * spread) ** 2 * (1.0 + 1e-3) + 1e-6, grid=grid,
                               chunk=self.chunk, block=256, progress=progress)

    def _counts_for(self, bi):
        cb, dt, block_size = self.cb, self.dt, self.block_size
        if cb is None:
            return None
        sl = slice(bi * block_size, (bi + 1) * block_size)
        A_, X_, csq = cb.A[sl], cb.X[sl], self.x_sq[sl]
        pad = block_size - A_.shape[0]
        if pad:
            A_ = np.pad(A_, ((0, pad), (0, 0)))
            X_ = np.pad(X_, ((0, pad), (0, 0)))
            csq = jnp.pad(csq, (0, pad))
        return (self.dblks[bi], jnp.asarray(A_), jnp.asarray(X_), csq, jnp.int32(cb.n_exp), jnp.asarray(cb.g0, dt),
                jnp.asarray(cb.inv, dt), jnp.asarray(cb.rel, dt), jnp.asarray(cb.sq_max, dt),
                jnp.asarray(self.eps, dt))

    def _list_values(self, cov_j, exp_j, lo, hi):
        """Per candidate: best exact objective on its list and a lower bound for the rest."""
        bs = self.block_size
        best = np.empty(self.n_blk * bs, np.int64)
        low = np.empty(self.n_blk * bs, np.int64)
        for bi in range(self.n_blk):
            S_, te_ = self.tables[bi]
            b_, _, l_ = _eval_rows(self.iblks[bi], S_, te_, cov_j, exp_j, jnp.int32(lo), jnp.int32(hi),
                                   self._counts_for(bi), complete=False)
            best[bi * bs : (bi + 1) * bs] = np.asarray(b_)
            low[bi * bs : (bi + 1) * bs] = np.asarray(l_)
        return best[: self.N], low[: self.N]

    def _exact_winner(self, cand, bound, cov_j, exp_j, lo, hi):
        """Best-first evaluation of the candidates on full rows: ``((objective, centre, m), n_evaluated)``."""
        winner = None  # (objective, centre, m)
        n_eval = 0
        eb = self.exact_block
        for s in range(0, cand.size, eb):
            if winner is not None and bound[cand[s]] > winner[0]:
                break
            rows = cand[s : s + eb]
            n_eval += rows.size
            pad = eb - rows.size
            rows_p = np.concatenate([rows, np.repeat(rows[:1], pad)]) if pad else rows
            drow, irow = _sorted_rows(_full_rows(self.xj, rows_p, self.chunk))
            S_, te_ = _row_tables(drow, self.eps)
            b_, m_, _ = _eval_rows(irow, S_, te_, cov_j, exp_j, jnp.int32(lo), jnp.int32(hi), complete=True)
            b_ = np.asarray(b_)[: rows.size]
            m_ = np.asarray(m_)[: rows.size]
            for c, v, mm in zip(rows, b_, m_):
                keyv = (int(v), int(c), int(mm))
                if winner is None or keyv < winner:
                    winner = keyv
        return winner, n_eval

    def step(self, *, lo, hi):
        """Choose and add one ball that covers between ``lo`` and ``hi`` new points."""
        cov_j = jnp.asarray(self.covered)
        exp_j = jnp.asarray(self.expanded)
        best, low = self._list_values(cov_j, exp_j, lo, hi)
        bound = np.minimum(best, low)
        cand = np.nonzero(bound <= best.min())[0]
        # Best-first: candidates in increasing order of their bound; stop once the next bound
        # exceeds the best exact value found (ties still evaluated: lower index wins).
        cand = cand[np.lexsort((cand, bound[cand]))]
        (v, c, mm), n_eval = self._exact_winner(cand, bound, cov_j, exp_j, lo, hi)
        self._add(c, mm, v, n_eval)

    def _add(self, c, mm, v, n_eval):
        """Fix the winner's radius and the covered / expanded sets in float64 (the precision of ``measure``)."""
        x, N, chunk, eps = self.x, self.N, self.chunk, self.eps
        # The winner's neighbour order comes from the working precision.
        row = np.asarray(_full_rows(self.xj, np.array([c]), chunk))[0]
        order = np.lexsort((np.arange(N), row))
        j_m = order[~self.covered[order]][mm - 1]
        with jax.enable_x64(True):
            c64 = jnp.asarray(x[c : c + 1], jnp.float64)
            row64 = np.concatenate([np.asarray(_bd_l2(c64, jnp.asarray(x[s : s + chunk], jnp.float64)))[0]
                                    for s in range(0, N, chunk)])
        r = float(row64[j_m])
        in_ball = row64 <= r
        in_exp = row64 <= r + eps
        if self.cb is not None:
            self.cb.add_expanded(np.nonzero(in_exp & ~self.expanded)[0])
        self.covered |= in_ball
        self.expanded |= in_exp
        for k, val in (("center", c), ("radius", r), ("m", mm), ("obj", v), ("cov", int(self.covered.sum())),
                       ("exp", int(self.expanded.sum())), ("n_exact", int(n_eval))):
            self.out[k].append(val)


# ---------------------------------------------------------------------------
# Half-space baseline (Gilmer et al.)
# ---------------------------------------------------------------------------


def fit_halfspace(
    x: Any,
    *,
    alpha: float,
    eps: float,
    norm: Any,
    sign: str = "best",
    margin: float = 0.0,
    x_select: Any = None,
    confidence: float | None = 0.95,
) -> HalfSpace:
    """Half-space error region along the first principal component (Gilmer et al.; paper Table 3).

    ``w`` is the unit first principal component of ``x``; the threshold ``b``
    is the largest value with at least ``k = ceil(N a)`` points having
    ``w.x > b`` (exactly that many without ties), ``a = alpha + margin /
    sqrt(N)`` (:func:`fit_target`; the default ``margin=0`` is Gilmer et
    al.'s ``ceil(N alpha)``). With ``x_select`` the threshold is lowered
    where needed so that at least :func:`select_count` selection points lie
    in ``E`` as well. The expansion of ``{w.x > b}`` by ``eps`` in norm ``p``
    is ``{w.x > b - eps ||w||_*}`` with the dual norm.

    Args:
      x: ``[N, d]`` fit points.
      alpha: risk threshold in ``(0, 1)``.
      eps: budget ``>= 0``.
      norm: perturbation norm (the threat model; required).
      sign: ``"+"`` keeps the component's sign (largest-magnitude coordinate
        positive); ``"best"`` (default) also tries ``-w`` and keeps the side
        with the smaller adversarial risk on ``x``.
      margin: ``c >= 0`` of the fit target ``alpha + c / sqrt(N)``.
      x_select: ``[M, d]`` selection points of the rule (optional).
      confidence: Clopper-Pearson level of the selection rule (``None``: risk ``>= alpha``).

    Returns:
      :class:`HalfSpace`.

    References:
      Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
      "Adversarial spheres." arXiv:1801.02774.
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
    """
    x = _points(x)
    alpha = _check_alpha(alpha)
    eps = _check_eps(eps)
    norm = _checks.canonical_norm(norm)
    if sign not in ("best", "+"):
        raise ValueError(f"sign: must be 'best' or '+', got {sign!r}")
    xs = _select_points(x_select, x)
    rule = _rule(alpha, x.shape[0], None if xs is None else xs.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    xd = x.astype(np.float64)
    w = _principal_components(xd, 1)[:, 0]
    shift = float(eps * np.asarray(lp.lp_norm(jnp.asarray(w), lp.dual_norm(norm))))
    best = None
    for s in ((1.0, -1.0) if sign == "best" else (1.0,)):
        ws = s * w
        proj = xd @ ws
        b = _rule_threshold(proj, None if xs is None else xs.astype(np.float64) @ ws, rule)
        adv = int(np.sum(proj > b - shift))
        if best is None or adv < best[0]:
            best = (adv, ws, b)
    _, w, b = best
    return HalfSpace(w=w, b=b, eps=float(eps), norm=norm, shift=shift, alpha=float(alpha))


def _select_points(x_select, x) -> np.ndarray | None:
    if x_select is None:
        return None
    xs = _points(x_select, "x_select")
    if xs.shape[1] != x.shape[1]:
        raise ValueError(f"x_select: feature dimension {xs.shape[1]} does not match x's {x.shape[1]}")
    return xs


def _principal_components(xd: np.ndarray, k: int) -> np.ndarray:
    """``[d, k]`` top-``k`` unit principal directions (largest variance first), largest-magnitude entry positive.

    SciPy's symmetric eigensolver (LAPACK ``syevr``) on the ``d x d`` scatter
    matrix, asking only for the top ``k`` eigenpairs.
    """
    from scipy.linalg import eigh

    xc = xd - xd.mean(axis=0)
    d = xd.shape[1]
    _, vecs = eigh(xc.T @ xc, subset_by_index=[d - k, d - 1])
    vecs = vecs[:, ::-1]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(k)])
    return vecs * np.where(signs == 0, 1.0, signs)[None, :]


def _threshold(proj: np.ndarray, k: int) -> float:
    """Largest ``b`` among the values with at least ``k`` of ``proj`` strictly above it (``-inf`` if none)."""
    top = np.partition(proj, proj.shape[0] - k)[proj.shape[0] - k]  # the k-th largest value
    below = proj[proj < top]
    return float(below.max()) if below.size else -np.inf


def _rule_threshold(proj_fit: np.ndarray, proj_sel: np.ndarray | None, rule: Rule) -> float:
    """The highest threshold whose half-space ``{proj > b}`` meets ``rule`` on both samples."""
    b = _threshold(proj_fit, max(1, rule.k_fit))
    if proj_sel is not None and rule.k_select is not None:
        b = min(b, _threshold(proj_sel, max(1, rule.k_select)))
    return b


def _np_norm(w: np.ndarray, norm: Any) -> float:
    """Float64 ``||w||_p`` of a vector (``norm`` canonical: ``"l1"``, ``"l2"``, ``"linf"`` or ``p``)."""
    p = {"l1": 1, "l2": 2, "linf": np.inf}.get(norm, norm)
    return float(np.linalg.norm(w, ord=p))


def halfspace_directions(
    x: Any, *, norm: Any, n_components: int | None = None, powers: Sequence[float] = (1.0, 2.0, 4.0, 8.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate directions of the half-space search of Prescott et al. (2021).

    For each of the top ``n_components`` principal directions ``v`` of ``x``
    (SciPy ``eigh`` of the scatter matrix), each power ``p`` and both signs:
    ``w = +-sign(v) |v|^p / ||sign(v) |v|^p||_*`` with the dual norm of
    ``norm``, so that the ``eps``-expansion of ``{w.x > b}`` is exactly
    ``{w.x > b - eps}`` (Hölder). Powers ``p > 1`` concentrate ``w`` on the
    largest-magnitude coordinates, which lowers its l1 norm (the dual of
    l_inf) relative to the spread of ``w.x``.

    Args:
      x: ``[N, d]`` fit points.
      norm: perturbation norm (its dual normalises ``w``).
      n_components: principal directions used, ``1 <= n_components <= d``
        (default ``min(20, d)``).
      powers: element-wise powers ``p > 0`` (``1``: the component itself).

    Returns:
      ``(W [d, m], meta [m, 3])`` with ``m = 2 n_components len(powers)``;
      ``meta`` rows are ``(component, power, sign)``.

    References:
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    x = _points(x)
    norm = _checks.canonical_norm(norm)
    if n_components is None:
        n_components = min(20, x.shape[1])
    n_components = _checks.check_int(n_components, "n_components", low=1, high=x.shape[1])
    pw = _check_powers(powers)
    dual = lp.dual_norm(norm)
    V = _principal_components(x.astype(np.float64), n_components)
    cols, meta = [], []
    for i in range(n_components):
        for p in pw:
            u = np.sign(V[:, i]) * np.abs(V[:, i]) ** p
            u = u / _np_norm(u, dual)
            for s in (1.0, -1.0):
                cols.append(s * u)
                meta.append((i, p, s))
    return np.stack(cols, axis=1), np.asarray(meta, np.float64)


def _check_powers(powers) -> tuple[float, ...]:
    if isinstance(powers, (str, bytes)) or not isinstance(powers, Sequence) or len(powers) == 0:
        raise ValueError(f"powers: expected a non-empty sequence of positive numbers, got {powers!r}")
    return tuple(_checks.check_scalar(p, "powers", low=0.0, low_inclusive=False) for p in powers)


def fit_halfspaces(
    x: Any,
    *,
    alpha: float,
    eps: float,
    norm: Any,
    x_select: Any = None,
    n_components: int | None = None,
    powers: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    margin: float = 0.5,
    confidence: float | None = 0.95,
    block: int = 64,
) -> HalfSpace:
    """The half-space search of Prescott, Zhang & Evans (2021): best of many PCA-based directions.

    Every candidate of :func:`halfspace_directions` (``||w||_* = 1``) gets
    the threshold of the :class:`Rule`: the highest ``b`` with at least
    ``ceil(N (alpha + margin / sqrt(N)))`` fit points in ``{w.x > b}`` (the
    upper tail of the projections; :func:`fit_target`), lowered where needed
    so that at least :func:`select_count` points of ``x_select`` lie in it.
    The direction with the fewest points of ``x_select`` (of ``x`` without
    it) in the expansion ``{w.x > b - eps}`` wins (ties: the earlier
    candidate). Fit on one split, choose on a second, report on a third, as
    the records of :func:`run_halfspaces` do.

    Args:
      x: ``[N, d]`` fit points.
      alpha: risk threshold in ``(0, 1)``.
      eps: budget ``>= 0``.
      norm: perturbation norm (any lp; the paper uses l2 and l_inf).
      x_select: ``[M, d]`` points that choose the direction.
      n_components: principal directions searched (default ``min(20, d)``).
      powers: element-wise powers searched.
      margin: ``c >= 0`` of the fit target (Prescott et al.: 0.5).
      confidence: Clopper-Pearson level of the selection rule (``None``: risk ``>= alpha``).
      block: directions projected per matrix product.

    Returns:
      :class:`HalfSpace` with ``family="pca_powers"``.

    References:
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    x = _points(x)
    alpha = _check_alpha(alpha)
    eps = _check_eps(eps)
    norm = _checks.canonical_norm(norm)
    block = _checks.check_int(block, "block", low=1)
    xs = _select_points(x_select, x)
    rule = _rule(alpha, x.shape[0], None if xs is None else xs.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    W, meta = halfspace_directions(x, norm=norm, n_components=n_components, powers=powers)
    xd = x.astype(np.float64)
    xsd = None if xs is None else xs.astype(np.float64)
    dual = lp.dual_norm(norm)
    shifts = [eps * _np_norm(W[:, j], dual) for j in range(W.shape[1])]  # eps up to rounding
    best = None
    for s0 in range(0, W.shape[1], block):
        Wb = W[:, s0 : s0 + block]
        pf, ps = xd @ Wb, None if xsd is None else xsd @ Wb
        pscore = pf if xsd is None else ps
        for j in range(Wb.shape[1]):
            b = _rule_threshold(pf[:, j], None if ps is None else ps[:, j], rule)
            adv = int(np.sum(pscore[:, j] > b - shifts[s0 + j]))
            if best is None or adv < best[0]:
                best = (adv, s0 + j)
    j = best[1]
    w = W[:, j]
    # The chosen direction's threshold again from matrix-vector products, the arithmetic of measure().
    b = _rule_threshold(xd @ w, None if xsd is None else xsd @ w, rule)
    return HalfSpace(w=w, b=b, eps=float(eps), norm=norm, shift=float(shifts[j]), alpha=float(alpha),
                     family="pca_powers",
                     component=int(meta[j, 0]), power=float(meta[j, 1]), n_candidates=int(W.shape[1]))


def inflate_balls(region: Balls, x: Any, x_select: Any = None, *, margin: float = 0.5,
                  confidence: float | None = 0.95) -> Balls:
    """Grow every radius by the smallest ``s >= 0`` that makes a union of balls meet the :class:`Rule`.

    ``E_s = union B(c_t, r_t + s)`` holds a point iff ``min_t (||x - c_t|| -
    r_t) <= s``, so the smallest ``s`` with at least ``k`` points inside is the
    ``k``-th smallest of these values (float64, checked with :func:`measure`).
    The region stays a union of ``T`` balls (paper Definition 3.9).

    Args:
      region: fitted :class:`Balls`.
      x: ``[N, d]`` its fit points (rule: ``alpha + margin / sqrt(N)`` of them inside).
      x_select: ``[M, d]`` selection points (rule: :func:`select_count` of them inside).
      margin: ``c >= 0`` of the fit target.
      confidence: Clopper-Pearson level of the selection rule (``None``: risk ``>= alpha``).

    Returns:
      :class:`Balls` with ``radii + s`` and ``inflation`` increased by ``s``
      (``region`` itself when ``s = 0``).
    """
    if not isinstance(region, Balls):
        raise ValueError(f"region: expected Balls, got {type(region).__name__}")
    x = _points(x)
    _dim(region.centers, x)
    xs = _select_points(x_select, x)
    rule = _rule(region.alpha, x.shape[0], None if xs is None else xs.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    if region.radii.size == 0:
        raise ValueError("region: has no balls to inflate")
    s = 0.0
    for pts, k in ((x, rule.k_fit), (xs, rule.k_select)):
        if pts is None or k is None:
            continue
        d = geometry.pairwise_distances(pts, region.centers, norm="l2", precision="float64")
        gap = np.min(np.asarray(d) - region.radii[None, :], axis=1)
        s = max(s, float(np.partition(gap, k - 1)[k - 1]))
    if s <= 0.0:
        return region
    out = dataclasses.replace(region, radii=region.radii + s, inflation=region.inflation + s)
    # r + s may round below a distance: step s up until the counts hold in measure()'s arithmetic.
    while not rule.passes(measure(out, x).n_risk, None if xs is None else measure(out, xs).n_risk):
        s = float(np.nextafter(s, np.inf) * (1 + 1e-15))
        out = dataclasses.replace(region, radii=region.radii + s, inflation=region.inflation + s)
    return out


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def measure(region: Any, x: Any, *, eps: float | None = None, confidence: float = 0.95) -> Measurement:
    """Empirical risk ``mu_hat(E)`` and adversarial risk of a region on the sample ``x``.

    * :class:`Rectangles`: ``E`` = points outside every box enlarged by
      ``eps`` (``min_t max_j (|x_j - c_tj| - h_tj) > eps``). The adversarial
      risk is the paper's conservative rule ``1 - mu_hat(union of boxes)``: a
      point inside some box is certainly not in ``E_eps``, but a union of
      boxes may cover a whole eps-ball no single box covers, so this count is
      an upper bound on ``mu_hat(E_eps)`` (``adv_rule="single_box_upper_bound"``).
    * :class:`Balls`: ``E = union B(c_t, r_t)``, ``E_eps = union B(c_t, r_t + eps)``, exact.
    * :class:`HalfSpace`: ``w.x > b`` and ``w.x > b - eps ||w||_*``, exact.

    Membership is decided in float64.

    Args:
      region: a fitted region.
      x: ``[n, d]`` points.
      eps: budget (default: the region's own ``eps``). For rectangles the
        region itself depends on ``eps``.
      confidence: level of the Clopper-Pearson intervals.

    Returns:
      :class:`Measurement`.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Clopper, Pearson. "The use of confidence or fiducial limits illustrated
      in the case of the binomial." Biometrika 26(4), 1934.
    """
    if not isinstance(region, (Rectangles, Balls, HalfSpace)):
        raise ValueError(f"region: expected Rectangles, Balls or HalfSpace, got {type(region).__name__}")
    x = _points(x)
    eps = region.eps if eps is None else _check_eps(eps)
    confidence = _checks.check_probability(confidence, "confidence")
    n = x.shape[0]
    if isinstance(region, Rectangles):
        _dim(region.centers, x)
        mar = _min_box_margin(x, region.centers, region.half_widths)
        n_risk = int(np.sum(mar > eps))
        n_adv = int(np.sum(mar > 0.0))
        return _measurement(n, n_risk, n_adv, confidence, "single_box_upper_bound")
    if isinstance(region, Balls):
        _dim(region.centers, x)
        if region.radii.size == 0:
            return _measurement(n, 0, 0, confidence, "exact")
        d = geometry.pairwise_distances(x, region.centers, norm="l2", precision="float64")
        n_risk = int(np.sum(np.any(d <= region.radii[None, :], axis=1)))
        n_adv = int(np.sum(np.any(d <= region.radii[None, :] + eps, axis=1)))
        return _measurement(n, n_risk, n_adv, confidence, "exact")
    if isinstance(region, HalfSpace):
        if region.w.shape[0] != x.shape[1]:
            raise ValueError(f"x: feature dimension {x.shape[1]} does not match the region's {region.w.shape[0]}")
        proj = x.astype(np.float64) @ region.w
        shift = region.shift if eps == region.eps else float(
            eps * np.asarray(lp.lp_norm(jnp.asarray(region.w), lp.dual_norm(region.norm))))
        n_risk = int(np.sum(proj > region.b))
        n_adv = int(np.sum(proj > region.b - shift))
        return _measurement(n, n_risk, n_adv, confidence, "exact")
    raise ValueError(f"region: expected Rectangles, Balls or HalfSpace, got {type(region).__name__}")


def _dim(centers, x):
    if centers.shape[1] != x.shape[1]:
        raise ValueError(f"x: feature dimension {x.shape[1]} does not match the region's {centers.shape[1]}")


# ---------------------------------------------------------------------------
# Protocols and records
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Splits(_ToDict):
    """Fit / select / report samples of one protocol.

    ``protocol="honest"``: fit on the training set, choose ``q`` and ``T`` on
    ``select_size`` random test points, report on the remaining test points
    (disjoint from both). ``protocol="paper"``: fit on the training set,
    select and report on the whole test set (the authors' protocol; the
    reported number is optimistically biased).
    """

    protocol: str
    fit: np.ndarray
    select: np.ndarray
    report: np.ndarray
    select_indices: np.ndarray
    report_indices: np.ndarray

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "n_fit": int(self.fit.shape[0]), "n_select": int(self.select.shape[0]),
                "n_report": int(self.report.shape[0])}


def make_splits(
    x_train: Any, x_test: Any, *, key: jax.Array, protocol: str = "honest", select_size: int | None = None
) -> Splits:
    """Split data for the honest 3-split protocol or the paper's protocol.

    Args:
      x_train: ``[N, d]`` fit points.
      x_test: ``[M, d]`` held-out points.
      key: ``jax.random`` key permuting the test set (honest protocol).
      protocol: ``"honest"`` or ``"paper"``.
      select_size: test points used for selection (honest; default ``M // 2``),
        ``1 <= select_size < M``.

    Returns:
      :class:`Splits`.
    """
    key = _checks.check_key(key)
    xtr = _points(x_train, "x_train")
    xte = _points(x_test, "x_test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"x_test: feature dimension {xte.shape[1]} does not match x_train's {xtr.shape[1]}")
    M = xte.shape[0]
    if protocol == "paper":
        idx = np.arange(M)
        return Splits("paper", xtr, xte, xte, idx, idx)
    if protocol != "honest":
        raise ValueError(f"protocol: must be 'honest' or 'paper', got {protocol!r}")
    if M < 2:
        raise ValueError(f"x_test: the honest protocol needs at least 2 held-out points, got {M}")
    s = M // 2 if select_size is None else _checks.check_int(select_size, "select_size", low=1, high=M - 1)
    perm = np.asarray(jax.random.permutation(key, M))
    si, ri = np.sort(perm[:s]), np.sort(perm[s:])
    return Splits("honest", xtr, xte[si], xte[ri], si, ri)


@dataclasses.dataclass
class ConcentrationRecord(_ToDict):
    """One JSON-serialisable result row.

    ``risk``/``adv_risk`` are means over repeats (one repeat for balls and
    half-spaces); ``risk_std``/``adv_risk_std`` their standard deviations
    (``ddof=0``); ``risk_ci``/``adv_risk_ci`` the envelope (smallest lower,
    largest upper end) of the per-repeat 95% Clopper-Pearson intervals;
    ``repeats`` the per-repeat measurements with their seeds (and ``q`` and
    ``valid``). ``valid`` says whether every repeat's region holds risk
    ``>= alpha`` on this split (the constraint of ``h(mu, alpha, eps)``; an
    invalid row's adversarial risk may understate ``h``); ``n_valid`` counts
    the repeats that do and ``min_risk`` is the smallest repeat risk.
    ``rule`` is the :class:`Rule` the search obeyed.
    """

    dataset: str
    method: str
    norm: str
    eps: float
    alpha: float
    T: int
    q: float | None
    protocol: str
    split: str
    n: int
    risk: float
    adv_risk: float
    risk_std: float
    adv_risk_std: float
    risk_ci: tuple[float, float]
    adv_risk_ci: tuple[float, float]
    adv_rule: str
    seeds: list
    repeats: list
    seconds: float
    extra: dict = dataclasses.field(default_factory=dict)
    valid: bool = True
    n_valid: int = 1
    min_risk: float = float("nan")
    rule: dict = dataclasses.field(default_factory=dict)


def _record(dataset, method, norm, eps, alpha, T, q, protocol, split, ms: list[Measurement], seeds, seconds,
            extra=None, qs=None, rule: Rule | None = None) -> ConcentrationRecord:
    risks = np.array([m.risk for m in ms])
    advs = np.array([m.adv_risk for m in ms])
    ok = [bool(m.risk >= alpha) for m in ms]
    qs = list(qs) if qs is not None else [q] * len(ms)
    return ConcentrationRecord(
        dataset=dataset, method=method, norm=norm, eps=float(eps), alpha=float(alpha), T=int(T),
        q=None if q is None else float(q), protocol=protocol, split=split, n=int(ms[0].n),
        risk=float(risks.mean()), adv_risk=float(advs.mean()), risk_std=float(risks.std()),
        adv_risk_std=float(advs.std()),
        risk_ci=(min(m.risk_ci[0] for m in ms), max(m.risk_ci[1] for m in ms)),
        adv_risk_ci=(min(m.adv_risk_ci[0] for m in ms), max(m.adv_risk_ci[1] for m in ms)),
        adv_rule=ms[0].adv_rule, seeds=list(seeds),
        repeats=[dict(m.to_dict(), seed=s, q=None if qq is None else float(qq), valid=v)
                 for m, s, qq, v in zip(ms, list(seeds) or [None] * len(ms), qs, ok)],
        seconds=float(seconds), extra=dict(extra or {}), valid=all(ok), n_valid=int(sum(ok)),
        min_risk=float(risks.min()), rule={} if rule is None else rule.to_dict(),
    )


def _split_sets(splits: Splits):
    if splits.protocol == "paper":
        return [("train", splits.fit), ("test", splits.report)]
    return [("fit", splits.fit), ("select", splits.select), ("report", splits.report)]


def _method_of(region) -> tuple[str, str, int, float | None]:
    if isinstance(region, Rectangles):
        return "rectangles", "linf", region.n_regions, region.q
    if isinstance(region, Balls):
        return "balls", "l2", region.n_regions, None
    return ("halfspaces" if region.family == "pca_powers" else "halfspace"), str(region.norm), 1, None


def records(
    regions: Any,
    splits: Splits,
    *,
    dataset: str = "",
    seconds: float = 0.0,
    seeds: Sequence[Any] | None = None,
    extra: dict | None = None,
    rule: Rule | None = None,
) -> list[ConcentrationRecord]:
    """Measure fitted regions on every split of a protocol: one :class:`ConcentrationRecord` per split.

    Use it to report one fit under several protocols (a ball or half-space
    fit does not depend on the protocol once ``T`` is fixed) or to record
    regions fitted outside :func:`run_rectangles` / :func:`run_balls`.
    Every record says whether each region holds risk ``>= alpha`` on its
    split (``valid``, ``n_valid``, ``min_risk``).

    Args:
      regions: one region, or a list of repeats of the same kind (same
        ``eps``, ``alpha``, ``T``) whose measurements are averaged.
      splits: from :func:`make_splits`; the splits are named ``train``/``test``
        (paper protocol) or ``fit``/``select``/``report`` (honest protocol).
      dataset: name stored in the records.
      seconds: fitting time stored in the records.
      seeds: one seed per repeat (key data), stored in the records.
      extra: any JSON-serialisable details stored under ``extra``.
      rule: the :class:`Rule` the search obeyed, stored in the records.

    Returns:
      A list with one record per split.
    """
    regs = list(regions) if isinstance(regions, (list, tuple)) else [regions]
    if not regs:
        raise ValueError("regions: give at least one fitted region")
    kinds = {type(r) for r in regs}
    if len(kinds) != 1 or not isinstance(regs[0], (Rectangles, Balls, HalfSpace)):
        raise ValueError(f"regions: expected Rectangles, Balls or HalfSpace of one kind, got {sorted(k.__name__ for k in kinds)}")
    _check_splits(splits)
    seeds = list(seeds) if seeds is not None else []
    if seeds and len(seeds) != len(regs):
        raise ValueError(f"seeds: expected one per region ({len(regs)}), got {len(seeds)}")
    method, norm, T, q = _method_of(regs[0])
    qs = [r.q for r in regs] if isinstance(regs[0], Rectangles) else None
    return [_record(dataset, method, norm, regs[0].eps, regs[0].alpha, T, q, splits.protocol, name,
                    [measure(r, xs) for r in regs], seeds, seconds, extra, qs, rule)
            for name, xs in _split_sets(splits)]


def run_rectangles(
    splits: Splits,
    *,
    key: jax.Array,
    alpha: float,
    eps: float,
    n_regions: int | Sequence[int],
    radii: Any = None,
    n_repeats: int = 10,
    q: float | None = None,
    dataset: str = "",
    progress: bool = False,
    margin: float = 0.5,
    confidence: float | None = 0.95,
    **fit_kwargs: Any,
) -> tuple[list[ConcentrationRecord], Rectangles]:
    """Algorithm 1 under a protocol: search ``q`` (and ``T``) on the select split, repeat, measure.

    For each ``T`` in ``n_regions`` the binary search over ``q`` runs with the
    first subkey under the :class:`Rule` (fit target ``alpha + margin /
    sqrt(N)`` on ``splits.fit``, Clopper-Pearson count on ``splits.select``;
    see :func:`fit_rectangles`); the ``T`` with the lowest select adversarial
    risk among searches that meet the rule wins. Then ``n_repeats``
    independent keys refit at the chosen ``(q, T)``; a repeat whose region
    misses the rule searches its own ``q`` below the chosen one, so every
    repeat meets it (a fixed ``q`` argument is the upper end likewise). Every
    split is measured and every record says whether its regions hold risk
    ``>= alpha`` there (``valid``). ``progress`` shows the density ranks' bar
    and one bar over the searches and refits.

    Under ``protocol="paper"`` the selection split is the reported test set,
    so the test records are valid by construction; under ``"honest"`` the
    report split is untouched by the search and its ``valid`` flag is a check.

    Returns:
      ``(records, region_of_first_repeat)``; one record per split.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    _check_splits(splits)
    key = _checks.check_key(key)
    n_repeats = _checks.check_int(n_repeats, "n_repeats", low=1)
    Ts = _candidate_Ts(n_regions)
    rule = _rule(_check_alpha(alpha), splits.fit.shape[0], splits.select.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    rkw = dict(margin=rule.margin, confidence=rule.confidence)
    t0 = time.perf_counter()
    k_search, k_rep = jax.random.split(key)
    radii = _radii(splits.fit, radii, k=fit_kwargs.get("k", 50), norm=fit_kwargs.get("density_norm", "l1"),
                   progress=progress)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(Ts) + n_repeats, desc=f"rectangles eps={eps:g}", unit="fit", disable=not progress,
               leave=False)
    searches, steps = {}, {}
    for T in Ts:
        reg = fit_rectangles(splits.fit, key=k_search, alpha=alpha, eps=eps, n_regions=T, q=q,
                             x_select=splits.select, radii=radii, **rkw, **fit_kwargs)
        searches[T] = reg
        steps[T] = _rect_step(reg, splits.fit, splits.select, rule)
        bar.update(1)
    T_best = min(searches, key=lambda T: (not steps[T].feasible, steps[T].adv_risk, T))
    q_best = searches[T_best].q
    keys = jax.random.split(k_rep, n_repeats)
    regions = []
    for k in keys:
        reg = fit_rectangles(splits.fit, key=k, alpha=alpha, eps=eps, n_regions=T_best, q=q_best, radii=radii,
                             **fit_kwargs)
        if not _rect_step(reg, splits.fit, splits.select, rule).feasible:
            reg = fit_rectangles(splits.fit, key=k, alpha=alpha, eps=eps, n_regions=T_best, x_select=splits.select,
                                 radii=radii, q_max=q_best, **rkw, **fit_kwargs)
        regions.append(reg)
        bar.update(1)
    bar.close()
    seeds = [list(_key_data(k)) for k in keys]
    extra = {"search": [st.to_dict() for st in searches[T_best].search],
             "T_candidates": [int(t) for t in Ts], "update": regions[0].update,
             "repeat_q": [r.q for r in regions]}
    recs = records(regions, splits, dataset=dataset, seconds=time.perf_counter() - t0, seeds=seeds, extra=extra,
                   rule=rule)
    for r in recs:
        r.q = float(q_best)
    return recs, regions[0]


def _candidate_Ts(n_regions) -> list[int]:
    Ts = [n_regions] if isinstance(n_regions, (int, np.integer)) else list(n_regions)
    if not Ts:
        raise ValueError("n_regions: give at least one T")
    return [_check_T(t) for t in Ts]


def run_balls(
    splits: Splits,
    *,
    alpha: float,
    eps: float,
    n_regions: int | Sequence[int],
    dataset: str = "",
    margin: float = 0.5,
    confidence: float | None = 0.95,
    **fit_kwargs: Any,
) -> tuple[list[ConcentrationRecord], Balls]:
    """Algorithm 2 under a protocol: fit on ``splits.fit``, choose ``T`` on the select split, measure.

    Each ``T`` is fitted to the target ``alpha + margin / sqrt(N)``
    (:func:`fit_balls`), then its radii grow by the least ``s >= 0`` that puts
    :func:`select_count` selection points inside (:func:`inflate_balls`); the
    ``T`` with the lowest select adversarial risk wins. Records say whether
    the region holds risk ``>= alpha`` on each split (``valid``).

    Returns:
      ``(records, region)``; one record per split.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    _check_splits(splits)
    Ts = _candidate_Ts(n_regions)
    rule = _rule(_check_alpha(alpha), splits.fit.shape[0], splits.select.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    t0 = time.perf_counter()
    fits = {}
    for T in Ts:
        reg = fit_balls(splits.fit, alpha=alpha, eps=eps, n_regions=T, margin=rule.margin, **fit_kwargs)
        fits[T] = inflate_balls(reg, splits.fit, splits.select, margin=rule.margin, confidence=rule.confidence)

    def score(T):
        m = measure(fits[T], splits.select)
        return (m.n_risk < (rule.k_select or 0), m.adv_risk, T)

    T_best = min(fits, key=score)
    reg = fits[T_best]
    seconds = time.perf_counter() - t0
    extra = {"delta": reg.delta, "n_target": reg.n_target, "balls": int(reg.radii.size),
             "n_exact": reg.n_exact.tolist(), "T_candidates": [int(t) for t in Ts], "inflation": reg.inflation}
    return records(reg, splits, dataset=dataset, seconds=seconds, extra=extra, rule=rule), reg


def run_halfspace(
    splits: Splits, *, alpha: float, eps: float, norm: Any, dataset: str = "", margin: float = 0.5,
    confidence: float | None = 0.95,
) -> tuple[list[ConcentrationRecord], HalfSpace]:
    """The half-space baseline (first principal component, fit on ``splits.fit``), measured on every split.

    The threshold obeys the :class:`Rule` (fit target ``alpha + margin /
    sqrt(N)``, lowered where needed to hold :func:`select_count` selection
    points; ``margin=0, confidence=None`` asks for risk ``>= alpha`` on both).

    References:
      Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
      "Adversarial spheres." arXiv:1801.02774.
    """
    _check_splits(splits)
    rule = _rule(_check_alpha(alpha), splits.fit.shape[0], splits.select.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    t0 = time.perf_counter()
    reg = fit_halfspace(splits.fit, alpha=alpha, eps=eps, norm=norm, margin=rule.margin,
                        x_select=splits.select, confidence=rule.confidence)
    seconds = time.perf_counter() - t0
    return records(reg, splits, dataset=dataset, seconds=seconds, rule=rule), reg


def run_halfspaces(
    splits: Splits, *, alpha: float, eps: float, norm: Any, dataset: str = "", margin: float = 0.5,
    confidence: float | None = 0.95, **fit_kwargs: Any,
) -> tuple[list[ConcentrationRecord], HalfSpace]:
    """The half-space search of Prescott et al. (:func:`fit_halfspaces`): fit, choose on select, measure.

    Directions and thresholds come from ``splits.fit``, the direction is
    chosen on ``splits.select`` and every split is measured (``valid`` on
    each). ``fit_kwargs``: ``n_components``, ``powers``, ``block``.

    References:
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    _check_splits(splits)
    rule = _rule(_check_alpha(alpha), splits.fit.shape[0], splits.select.shape[0], _check_margin(margin),
                 _check_confidence(confidence))
    t0 = time.perf_counter()
    reg = fit_halfspaces(splits.fit, alpha=alpha, eps=eps, norm=norm, x_select=splits.select, margin=rule.margin,
                         confidence=rule.confidence, **fit_kwargs)
    seconds = time.perf_counter() - t0
    extra = {"component": reg.component, "power": reg.power, "n_candidates": reg.n_candidates}
    return records(reg, splits, dataset=dataset, seconds=seconds, extra=extra, rule=rule), reg


# ---------------------------------------------------------------------------
# One entry point: method from the norm, honest protocol
# ---------------------------------------------------------------------------

#: Region family of each norm with a convergent method (paper §4.1, §4.2); any other norm uses the half-space.
METHODS = {"linf": "rectangles", "l2": "balls"}

#: Every method of :func:`estimate`.
ALL_METHODS = ("rectangles", "balls", "halfspace", "halfspaces")


def method_for(norm: Any) -> str:
    """The concentration method of a norm: ``"rectangles"`` (ℓ∞), ``"balls"`` (ℓ2), else ``"halfspace"``."""
    return METHODS.get(_checks.canonical_norm(norm), "halfspace")


def methods_for(norm: Any) -> tuple[str, ...]:
    """Methods compared by ``estimate(method="best")``: the norm's region family (if any) and the half-space search."""
    m = METHODS.get(_checks.canonical_norm(norm))
    return (m, "halfspaces") if m else ("halfspaces",)


@dataclasses.dataclass(frozen=True)
class Estimate(_ToDict):
    """The result of :func:`estimate`.

    Attributes:
      method: ``"rectangles"``, ``"balls"``, ``"halfspace"`` or ``"halfspaces"``.
      norm: the canonical threat-model norm.
      eps: the budget.
      alpha: the risk threshold.
      records: one :class:`ConcentrationRecord` per split (``fit``,
        ``select``, ``report`` for the honest protocol; ``train``, ``test``
        for the paper's), the reported split last.
      splits: the :class:`Splits` used.
      region: the fitted region (the first repeat for rectangles).
      seconds: wall time of fitting and measuring (after the split).
      valid: whether the reported record holds risk ``>= alpha`` in every
        repeat (so its adversarial risk estimates ``h(mu, alpha, eps)``
        rather than a smaller quantity). Use :attr:`value`, which is ``None``
        when this fails.
      reason: why the estimate is not valid (empty when it is).
      candidates: for ``method="best"``, every method's own estimate (in
        :func:`methods_for` order); empty otherwise.
    """

    method: str
    norm: Any
    eps: float
    alpha: float
    records: tuple
    splits: Splits
    region: Any
    seconds: float
    valid: bool = True
    reason: str = ""
    candidates: tuple = ()

    @property
    def report(self) -> ConcentrationRecord:
        """The record of the reported split (``report``, or ``test`` under the paper's protocol).

        It is returned even when invalid (``report.valid`` says so); :attr:`value` is not.
        """
        return self.records[-1]

    @property
    def value(self) -> float | None:
        """The estimate of ``h(mu, alpha, eps)``: the reported adversarial risk when :attr:`valid`, else ``None``."""
        return float(self.report.adv_risk) if self.valid else None

    def to_dict(self) -> dict:
        """JSON-ready record (the region is summarised by its records)."""
        return {"method": self.method, "norm": str(self.norm), "eps": float(self.eps), "alpha": float(self.alpha),
                "valid": bool(self.valid), "reason": self.reason, "value": self.value,
                "splits": self.splits.to_dict(), "records": [r.to_dict() for r in self.records],
                "seconds": float(self.seconds),
                "candidates": [{k: v for k, v in c.to_dict().items() if k != "candidates"} for c in self.candidates]}


def _validity(method: str, rep: ConcentrationRecord) -> tuple[bool, str]:
    if rep.valid:
        return True, ""
    k = len(rep.repeats) or 1
    return False, (f"{method}: the region covers less than alpha = {rep.alpha:g} of the {rep.split} split "
                   f"(smallest risk {rep.min_risk:.4g}; {rep.n_valid} of {k} repeats hold), so its adversarial "
                   f"risk may understate h(alpha, eps)")


def _selection_record(est: Estimate) -> ConcentrationRecord:
    """The record of the split that chose ``T``/``q``/the direction (``select``; ``test`` for the paper's protocol)."""
    return next(r for r in est.records if r.split in ("select", "test"))


def estimate(
    x_train: Any,
    x_test: Any,
    *,
    norm: Any,
    eps: float,
    alpha: float,
    n_regions: int | Sequence[int],
    key: jax.Array,
    method: str = "auto",
    protocol: str = "honest",
    select_size: int | None = None,
    n_repeats: int = 10,
    fit_key: jax.Array | None = None,
    dataset: str = "",
    progress: bool = False,
    margin: float = 0.5,
    confidence: float | None = 0.95,
    n_components: int | None = None,
    powers: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    **fit_kwargs: Any,
) -> Estimate:
    """Intrinsic-robustness estimate of one budget: method from the norm, fit/select/report protocol.

    The one place that turns a threat model into a concentration estimate:

    * ``norm="linf"``: complement of ``T`` hyperrectangles (Algorithm 1,
      :func:`run_rectangles`; density rank ``k = min(50, N - 1)`` unless
      given);
    * ``norm="l2"``: union of ``T`` balls (Algorithm 2, :func:`run_balls`;
      neighbour lists of ``min(2048, N - 1)`` unless ``list_size`` is given);
    * any other norm: the half-space baseline (:func:`run_halfspace`);
    * ``method="halfspaces"``: the half-space search of Prescott et al.
      (:func:`run_halfspaces`, any norm);
    * ``method="best"``: every method of :func:`methods_for` (the norm's
      region family and the half-space search), keeping the valid one with
      the lowest adversarial risk on the selection split (see below).

    Validity. ``h(mu, alpha, eps)`` is an infimum over regions of measure
    ``>= alpha``; a region covering less than ``alpha`` of the reported split
    can show an adversarial risk below ``h``. Every search obeys one
    :class:`Rule` -- at least ``alpha + margin / sqrt(N)`` of the fit split in
    the region (Prescott et al.) and at least :func:`select_count` of the
    selection split (Clopper-Pearson lower end ``>= alpha``), in every repeat
    -- and every record says whether it holds risk ``>= alpha`` on its split.
    The result's :attr:`Estimate.valid` is that flag for the reported split;
    when it fails, :attr:`Estimate.value` is ``None`` and ``reason`` says why.
    ``method="best"`` never returns an invalid method when a valid one
    exists; it compares the methods on the selection split (as ``T`` and
    ``q`` are chosen), so the reported number is not the minimum of noisy
    reported numbers. ``margin=0, confidence=None`` is the authors' rule.

    Under ``protocol="honest"`` (default) the regions are fitted on
    ``x_train``, ``q`` and ``T`` are chosen on ``select_size`` random test
    points and the estimate is reported on the other test points, so the
    reported number is not biased by the selection. ``protocol="paper"``
    selects and reports on the whole test set (the authors' protocol; the
    rule then holds on the reported split by construction).

    Args:
      x_train: ``[N, d]`` fit points.
      x_test: ``[M, d]`` held-out points.
      norm: the threat-model norm (required: it picks the method).
      eps: the budget ``>= 0``.
      alpha: the risk threshold in ``(0, 1)``.
      n_regions: ``T`` or candidate ``T`` values chosen on the select split
        (ignored by the half-spaces).
      key: ``jax.random`` key of the split (:func:`make_splits`); the
        rectangle search and repeats use ``fit_key``.
      method: ``"auto"`` (from the norm), ``"rectangles"`` (needs
        ``linf``), ``"balls"`` (needs ``l2``), ``"halfspace"``,
        ``"halfspaces"`` or ``"best"``.
      protocol: ``"honest"`` or ``"paper"``.
      select_size: test points used for selection (honest protocol; default
        ``M // 2``).
      n_repeats: rectangle refits with independent keys (averaged).
      fit_key: key of the rectangle search and repeats (default
        ``jax.random.fold_in(key, 1)``).
      dataset: name stored in the records.
      progress: show progress bars (density ranks, box searches and refits; ball fitting).
      margin: ``c >= 0`` of the fit target ``alpha + c / sqrt(N)`` (:func:`fit_target`).
      confidence: Clopper-Pearson level of the selection rule
        (:func:`select_count`), or ``None`` for risk ``>= alpha``.
      n_components: principal directions of the half-space search (default ``min(20, d)``).
      powers: element-wise powers of the half-space search.
      **fit_kwargs: further settings of :func:`fit_rectangles` or
        :func:`fit_balls`.

    Returns:
      :class:`Estimate`; ``.report`` is the reported record, ``.valid`` and
      ``.value`` the validity and the estimate.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202.
      Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
      "Adversarial spheres." arXiv:1801.02774 (the half-space baseline).
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    norm = _checks.canonical_norm(norm)
    kw = dict(norm=norm, eps=eps, alpha=alpha, n_regions=n_regions, key=key, protocol=protocol,
              select_size=select_size, n_repeats=n_repeats, fit_key=fit_key, dataset=dataset, progress=progress,
              margin=margin, confidence=confidence, n_components=n_components, powers=powers)
    if method == "best":
        return best_estimate(x_train, x_test, **kw, **fit_kwargs)
    chosen = method_for(norm) if method == "auto" else method
    if chosen not in ALL_METHODS:
        raise ValueError(f"method: must be 'auto', 'best', 'rectangles', 'balls', 'halfspace' or 'halfspaces', "
                         f"got {method!r}")
    if chosen in METHODS.values() and METHODS.get(norm) != chosen:
        raise ValueError(f"method: {chosen!r} is a {'linf' if chosen == 'rectangles' else 'l2'} method, "
                         f"but norm is {norm!r}")
    if chosen.startswith("halfspace") and fit_kwargs:
        raise ValueError(f"fit_kwargs: the {chosen} method takes none of {sorted(fit_kwargs)}")
    splits = make_splits(x_train, x_test, key=key, protocol=protocol, select_size=select_size)
    t0 = time.perf_counter()
    recs, region = _run_method(chosen, splits, kw, fit_kwargs)
    ok, why = _validity(chosen, recs[-1])
    return Estimate(method=chosen, norm=norm, eps=float(eps), alpha=float(alpha), records=tuple(recs),
                    splits=splits, region=region, seconds=time.perf_counter() - t0, valid=ok, reason=why)


def _run_method(chosen: str, splits: Splits, kw: dict, fit_kwargs: dict):
    common = dict(alpha=kw["alpha"], eps=kw["eps"], dataset=kw["dataset"], margin=kw["margin"],
                  confidence=kw["confidence"])
    n_fit = splits.fit.shape[0]
    if chosen == "rectangles":
        fit_kwargs.setdefault("k", min(50, n_fit - 1))
        key = kw["key"]
        fk = jax.random.fold_in(key, 1) if kw["fit_key"] is None else kw["fit_key"]
        return run_rectangles(splits, key=fk, n_regions=kw["n_regions"], n_repeats=kw["n_repeats"],
                              progress=kw["progress"], **common, **fit_kwargs)
    if chosen == "balls":
        fit_kwargs.setdefault("list_size", min(2048, n_fit - 1))
        return run_balls(splits, n_regions=kw["n_regions"], progress=kw["progress"], **common, **fit_kwargs)
    if chosen == "halfspaces":
        return run_halfspaces(splits, norm=kw["norm"], n_components=kw["n_components"], powers=kw["powers"],
                              **common)
    return run_halfspace(splits, norm=kw["norm"], **common)


def best_estimate(x_train: Any, x_test: Any, **kwargs: Any) -> Estimate:
    """The lowest valid concentration estimate over the methods of a norm (``estimate(method="best")``).

    Runs :func:`estimate` with every method of :func:`methods_for` on the
    same splits. Among the estimates that are valid on the reported split,
    the one with the lowest adversarial risk on the *selection* split wins
    (ties: the reported adversarial risk, then the order of
    :func:`methods_for`), so the choice of method is made like the choice of
    ``T``. When none is valid the lowest is returned with ``valid=False`` and
    every method's reason. ``candidates`` holds every method's estimate.

    Args:
      x_train: ``[N, d]`` fit points.
      x_test: ``[M, d]`` held-out points.
      **kwargs: the keyword arguments of :func:`estimate` (``method`` excluded;
        region-method settings go to the norm's region family only).

    Returns:
      :class:`Estimate`.

    References:
      Prescott, Zhang, Evans. "Improved estimation of concentration under
      lp-norm distance metrics using half spaces." ICLR 2021, arXiv:2103.12913.
    """
    if "method" in kwargs:
        raise ValueError("method: best_estimate compares every method; do not pass one")
    if "norm" not in kwargs:
        raise ValueError("norm: required (it picks the methods compared)")
    base = {k: kwargs[k] for k in kwargs if k in _ESTIMATE_KEYS}
    extra = {k: kwargs[k] for k in kwargs if k not in _ESTIMATE_KEYS}
    ests = []
    for m in methods_for(kwargs["norm"]):
        ests.append(estimate(x_train, x_test, method=m, **base, **({} if m.startswith("halfspace") else extra)))
    order = {id(e): i for i, e in enumerate(ests)}

    def rank(e):
        return (not e.valid, _selection_record(e).adv_risk, e.report.adv_risk, order[id(e)])

    best = min(ests, key=rank)
    reason = best.reason if best.valid else "; ".join(e.reason for e in ests)
    return dataclasses.replace(best, candidates=tuple(ests), reason=reason)


_ESTIMATE_KEYS = ("norm", "eps", "alpha", "n_regions", "key", "protocol", "select_size", "n_repeats", "fit_key",
                  "dataset", "progress", "margin", "confidence", "n_components", "powers")
