"""Streaming, shardable distance kernels: pairwise distances, k-NN, radius pairs.

Every method of the papers starts from distances between images: k-NN density
ranks (Mahloujifar et al. 2019, §4.1), ball coverage counts (§4.2), conflict
edges ``||x - x'|| <= 2 eps`` (Bhagoji et al. 2021, §4.1), out-of-class
distances (Finlay et al. 2019, Table 4; Ding et al. 2019, App. D.2).

Design:

* One jittable kernel, :func:`block_distances`, computes a ``[b, m]`` block of
  distances. For ``l1``, ``linf`` and general ``lp`` it loops over the feature
  axis and updates a ``[b, m]`` accumulator (XLA vectorises it over ``m``);
  for ``l2`` candidate selection uses the GEMM identity
  ``||x||^2 + ||y||^2 - 2 x.y`` and the winners are recomputed directly.
* The public functions stream over blocks of query rows through the block
  engine (:mod:`jaxbound._engine`), so memory is ``O(block x m)`` and an
  ``n x m`` matrix is never held (except by :func:`pairwise_distances`, whose
  output is that matrix). Each block is split across all local devices with
  ``jax.shard_map`` (references are replicated), so the same call uses one
  CPU, eight forced host devices or several GPUs unchanged.
* Public primitives for other modules: :func:`l2_sq_gemm` (squared ℓ2
  distances by one GEMM), :func:`gemm_rounding_bound` (its worst-case
  rounding band) and :func:`mean_k_smallest` (streamed mean of the ``k``
  smallest distances per query).
* Outputs are NumPy arrays on the host. Long jobs show a progress bar
  (``progress=True``) and can keep finished blocks in a checkpoint file
  (``checkpoint=folder``) to resume after an interruption.
* Float32 by default; ``precision="float64"`` computes in double precision
  (JAX's x64 mode is switched on for the call only). Boundary decisions of
  :func:`radius_pairs` are exact either way: pairs whose float32 distance is
  within a proven rounding bound of the radius are recomputed in float64.

Norms: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or any real ``p >= 1``.

Self-neighbour convention: when ``refs`` is omitted the query set is its own
reference set. With ``exclude_self=False`` (default) each point is then its
own first neighbour at distance 0 (the convention of Mahloujifar et al., whose
"k = 50" density rank counts the point itself). Exact duplicates of a point
are other points: ties at equal distance are ordered by reference index, so a
lower-index duplicate can come before the point itself.

References:
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural networks
  generalize and are adversarially robust." arXiv:1808.09540.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness to
  input data distributions." ICLR 2019, arXiv:1902.08336.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbound import _checks, _engine, lp

__all__ = [
    "KNN",
    "RadiusPairs",
    "NearestOther",
    "block_distances",
    "pairwise_distances",
    "knn",
    "radius_pairs",
    "count_within",
    "nearest_other_class",
    "l2_sq_gemm",
    "gemm_rounding_bound",
    "mean_k_smallest",
]

# Extra l2 candidates re-ranked beyond k (at least; k extra when k is larger): the rounding band's usual room.
_L2_EXTRA_CANDIDATES = 16
# Reference columns per group whose minimum bounds the l2 k-th distance (see _knn_l2_block).
_L2_GROUP = 32
# A row whose rounding band overflows its candidates re-ranks this many times more before computing everything.
_L2_WIDE = 8
# Unrolling of the loop over features (measured best on a 2-core x86 CPU).
_UNROLL = 16
# Default number of query rows per device and block, by norm.
_DEFAULT_BLOCK = {"l2": 256}
_DEFAULT_BLOCK_OTHER = 128
# Upper bound on the distance block held per device (bytes) when choosing a default.
_BLOCK_BYTES = 256 * 2**20
# Upper bound on the gathered candidates of the l2 re-ranking (bytes).
_RERANK_BYTES = 64 * 2**20
# Bytes of a chunk of distance rows that a multi-pass selection keeps in cache.
_SELECT_BYTES = 4 * 2**20


class KNN(NamedTuple):
    """k nearest neighbours.

    Attributes:
      distances: ``[n, k]`` distances in ascending order.
      indices: ``[n, k]`` int64 indices into the reference set; ties are
        ordered by index.
    """

    distances: np.ndarray
    indices: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready record (nested lists)."""
        return {"distances": np.asarray(self.distances).tolist(), "indices": np.asarray(self.indices).tolist()}


class RadiusPairs(NamedTuple):
    """All pairs within a radius (closed ball).

    Attributes:
      rows: ``[E]`` int64 query indices, sorted.
      cols: ``[E]`` int64 reference indices, sorted within each row.
      counts: ``[n]`` int64 number of pairs of each query row.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready record (lists)."""
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(), "counts": self.counts.tolist()}


class NearestOther(NamedTuple):
    """Nearest point of another class.

    Attributes:
      distances: ``[n]`` distance from each point to the nearest reference
        with a different label.
      indices: ``[n]`` int64 index of that reference.
    """

    distances: np.ndarray
    indices: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready record (lists)."""
        return {"distances": np.asarray(self.distances).tolist(), "indices": np.asarray(self.indices).tolist()}


# ---------------------------------------------------------------------------
# Jittable kernels
# ---------------------------------------------------------------------------


def _accumulate(xq: jax.Array, refs_t: jax.Array, norm: str | float) -> jax.Array:
    """Loop over features: ``acc[i, j] = reduce_f |xq[i, f] - refs_t[f, j]|``.

    Returns the accumulator in the norm's own space: the sum for ``l1``, the
    maximum for ``linf``, the sum of squares for ``l2`` and the sum of p-th
    powers for general p (take the root with :func:`_finish`).
    """
    xq_t = xq.T  # [d, b]
    b, m = xq.shape[0], refs_t.shape[1]

    def body(f, acc):
        t = jnp.abs(xq_t[f][:, None] - refs_t[f][None, :])
        if norm == "l1":
            return acc + t
        if norm == "linf":
            return jnp.maximum(acc, t)
        if norm == "l2":
            return acc + t * t
        return acc + t**norm

    acc0 = jnp.zeros((b, m), dtype=jnp.result_type(xq.dtype, refs_t.dtype))
    return lax.fori_loop(0, xq.shape[1], body, acc0, unroll=min(_UNROLL, max(1, xq.shape[1])))


def _finish(acc: jax.Array, norm: str | float) -> jax.Array:
    if norm == "l2":
        return jnp.sqrt(acc)
    if norm in ("l1", "linf"):
        return acc
    return acc ** (1.0 / norm)


def l2_sq_gemm(xq: jax.Array, refs: jax.Array, refs_sq: jax.Array | None = None) -> jax.Array:
    """Squared ℓ2 distances by the GEMM identity ``||x||^2 + ||y||^2 - 2 x.y`` (jittable).

    One matrix product at ``HIGHEST`` precision, clamped at 0. Fast, but the
    identity cancels: the error is bounded by
    ``gemm_rounding_bound(d, dtype) * (||x||^2 + ||y||^2)`` (see
    :func:`gemm_rounding_bound`), so equal points need not give exactly 0.
    Use it to rank or bucket candidates; decide boundary cases exactly
    (:func:`radius_pairs` does).

    Args:
      xq: ``[b, d]`` queries.
      refs: ``[m, d]`` references.
      refs_sq: ``[m]`` squared norms ``||refs_j||^2`` when already known
        (e.g. shared by many query blocks); ``None`` computes them.

    Returns:
      ``[b, m]`` squared distances ``>= 0``.
    """
    xq, refs = _as_jax_points(xq, "xq"), _as_jax_points(refs, "refs")
    _checks.check_same_dim(xq, refs, "xq", "refs")
    if refs_sq is None:
        refs_sq = _sq_norms(refs)
    xq_sq = _sq_norms(xq)
    cross = lax.dot_general(
        xq, refs, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST
    )
    return jnp.maximum(xq_sq[:, None] + refs_sq[None, :] - 2.0 * cross, 0.0)


def _sq_norms(a: jax.Array) -> jax.Array:
    """Row norms ``||a_i||^2`` ``[n]``, computed in a loop of 32-row batches.

    On XLA's CPU backend a plain ``sum(a * a, axis=1)`` is fused into the
    YNNPACK fusion of the GEMM it feeds, which then ran at half the speed
    of the GEMM alone (a one-off profile on one core, a ``256 x 784`` by
    ``54,272 x 784`` block: 380-420 ms against 192 ms; the first-stage
    benchmark, ``benchmarks/first_stage.py``, went from 186.6 s to 140.8 s
    with this and the bracketed bisection); a loop is a fusion boundary.
    The same sums (identical distances in that profile).
    """
    if a.shape[0] == 0:
        return jnp.zeros((0,), a.dtype)
    return lax.map(lambda row: jnp.sum(row * row), a, batch_size=min(32, a.shape[0]))


def gemm_rounding_bound(d: int, dtype: Any = "float32") -> float:
    """Worst-case relative rounding band of :func:`l2_sq_gemm` for ``d`` features.

    For any summation order of the squared norms and the dot product in
    ``dtype`` (unit roundoff ``u``: ``2^-24`` for float32, ``2^-53`` for
    float64), the computed squared distance ``s`` of ``x`` and ``y`` obeys

    ``|s - ||x - y||^2| <= rel * (||x||^2 + ||y||^2)`` with
    ``rel = 4 (d + 4) u``

    (the classical ``gamma_n = n u / (1 - n u)`` bound of a length-``n`` dot
    product, with a factor 2 of margin). Comparing with a squared radius
    ``r^2`` rounded to ``dtype`` adds ``rel * r^2``. The one place of this
    band: :func:`radius_pairs`, :func:`count_within` and the count tables of
    :func:`jaxbound.concentration.fit_balls` use it.

    Args:
      d: number of features.
      dtype: the compute dtype (``"float32"``, ``"float64"`` or a dtype).

    Returns:
      ``rel`` as a Python float.

    References:
      Higham. "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
      SIAM 2002, §3.1 (error of inner products).
    """
    d = _checks.check_int(d, "d", low=0)
    return 4 * (d + 4) * _unit_roundoff(dtype)


def _unit_roundoff(dtype: Any, name: str = "dtype") -> float:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name}: expected a floating dtype such as 'float32', got {dtype!r}") from None
    if not np.issubdtype(dt, np.floating):
        raise ValueError(f"{name}: expected a floating dtype such as 'float32', got {dt}")
    return float(np.finfo(dt).eps) / 2.0


def block_distances(xq: jax.Array, refs: jax.Array, *, norm: Any = "l2") -> jax.Array:
    """Distances from a block of queries to references (jittable).

    The shared kernel behind every streaming function; use it inside your own
    jitted code for blocks that fit in memory. Computed directly from
    coordinate differences (no GEMM cancellation), so distances between equal
    points are exactly 0.

    Args:
      xq: ``[b, d]`` queries.
      refs: ``[m, d]`` references.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.

    Returns:
      ``[b, m]`` array with ``d(xq_i, refs_j) = ||xq_i - refs_j||_p``.
    """
    norm = _checks.canonical_norm(norm)
    xq, refs = _as_jax_points(xq, "xq"), _as_jax_points(refs, "refs")
    _checks.check_same_dim(xq, refs, "xq", "refs")
    return _finish(_accumulate(xq, refs.T, norm), norm)


def _as_jax_points(a: Any, name: str) -> jax.Array:
    """``[b, d]`` real numbers as a JAX array (NumPy input is moved to the device, so the loop can index it)."""
    if not isinstance(a, (jax.Array, jax.core.Tracer)):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot be converted to an array ({exc})") from None
    dt = np.dtype(a.dtype)
    if dt == np.bool_ or not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {dt}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array shaped [n, d], got shape {tuple(a.shape)}")
    if not np.issubdtype(dt, np.floating):
        a = jnp.asarray(a, jnp.float32)
    return jnp.asarray(a)


def _exact_rerank(xq, refs, cand, norm):
    """Recompute candidate distances directly and sort by (distance, index).

    The gathered candidates ``[rows, c, d]`` are processed in row chunks of at
    most ``_RERANK_BYTES`` so that large ``k`` does not blow up memory.
    """
    b, c = cand.shape
    d = refs.shape[1]
    rows = int(max(1, min(b, _RERANK_BYTES // max(1, c * d * refs.dtype.itemsize))))
    if rows >= b:
        dist = lp.lp_norm(xq[:, None, :] - refs[cand], norm, axis=-1)
    else:
        pad = (-b) % rows
        xs = jnp.pad(xq, ((0, pad), (0, 0))).reshape(-1, rows, d)
        cs = jnp.pad(cand, ((0, pad), (0, 0))).reshape(-1, rows, c)
        dist = lax.map(lambda a: lp.lp_norm(a[0][:, None, :] - refs[a[1]], norm, axis=-1), (xs, cs))
        dist = dist.reshape(-1, c)[:b]
    dist, cand = lax.sort((dist, cand), dimension=1, num_keys=2)
    return dist, cand


def _knn_block(xq, q_ids, q_lab, q_val, refs, refs_t, refs_sq, r_lab, *, k, norm, exclude_self, exclude_label):
    """k-NN of one query block against all references (runs per device)."""
    if norm == "l2":
        return _knn_l2_block(xq, q_ids, q_lab, refs, refs_sq, r_lab, k=k, exclude_self=exclude_self,
                             exclude_label=exclude_label)
    m = refs.shape[0]
    score = _accumulate(xq, refs_t, norm)
    inf = jnp.asarray(jnp.inf, score.dtype)
    if exclude_self:
        score = jnp.where(q_ids[:, None] == jnp.arange(m)[None, :], inf, score)
    if exclude_label:
        score = jnp.where(q_lab[:, None] == r_lab[None, :], inf, score)
    neg, idx = lax.top_k(-score, k)
    return _finish(-neg, norm), idx.astype(jnp.int32)


def _band_candidates(g_lo, v, lower, cap, g, m):
    """The ``cap`` columns with the smallest lower bounds, from the ``cap`` groups with the smallest minima.

    ``ok [rows]`` is true where every group and every
    column whose lower bound is ``<= v`` was kept, i.e. the candidates hold
    the whole band. ``lower(cols)`` gives the lower bounds at ``cols``
    (``+inf`` outside ``[0, m)`` and for excluded pairs).
    """
    n_g = jnp.sum(g_lo <= v[:, None], axis=1)
    _, gid = lax.top_k(-g_lo, min(cap, g_lo.shape[1]))
    cols = (gid[:, :, None] * g + jnp.arange(g, dtype=jnp.int32)).reshape(gid.shape[0], -1)
    lv = lower(cols)
    _, pos = lax.top_k(-lv, cap)
    cand = jnp.minimum(jnp.take_along_axis(cols, pos, axis=1), m - 1)
    n_c = jnp.sum(lv <= v[:, None], axis=1)
    return cand, (n_g <= cap) & (n_c <= cap)


def _knn_l2_block(xq, q_ids, q_lab, refs, refs_sq, r_lab, *, k, exclude_self, exclude_label):
    """l2 k-NN of one block: GEMM scores, candidates by the proven rounding band, exact re-ranking.

    With ``|s_j - d_j^2| <= e_j`` for the GEMM score ``s_j`` and the direct
    float32 distance ``d_j``: ``e_j = rel (1.5 N_j + s_j)`` with
    ``N_j = ||x||^2 + ||y_j||^2`` and ``rel = gemm_rounding_bound(d)`` (the
    GEMM is within ``rel N_j`` of the exact square, the direct sum within
    ``rel / 4`` of it relatively; the rest covers the rounding of the band
    itself), the ``k``-th smallest of ``s + e`` bounds ``d_(k)^2`` from above, so every
    neighbour has ``s_j - e_j <= V`` for any such bound ``V``. ``V`` is the
    ``k``-th smallest of the minima of ``s + e`` over groups of
    ``_L2_GROUP`` columns (``k`` groups each hold a point within ``V``): one
    pass over the block plus a top-k over the groups. The columns with
    ``s - e <= V`` (usually ``k`` plus a few) are re-ranked by direct
    computation and sorted by (distance, index). A row whose band holds
    more than ``k + max(16, k)`` columns re-ranks 8 times as many (wide
    bands: high dimension, concentrated distances); beyond that (many exact
    ties, duplicates) it is computed directly against every reference, so
    the result is exact either way. Rows are processed in chunks that stay
    in cache.
    """
    b, m = xq.shape[0], refs.shape[0]
    score = l2_sq_gemm(xq, refs, refs_sq)
    xsq = jnp.sum(xq * xq, axis=1)
    rel = gemm_rounding_bound(xq.shape[1], xq.dtype)
    cap = min(m, k + max(_L2_EXTRA_CANDIDATES, k))
    cap2 = min(m, _L2_WIDE * cap)
    g = max(1, min(_L2_GROUP, m // cap2))
    inf = jnp.asarray(jnp.inf, score.dtype)
    cols_all = jnp.arange(m, dtype=jnp.int32)

    def masked(qi, ql, cols):
        bad = jnp.zeros(cols.shape, bool)
        if exclude_self:
            bad |= qi[:, None] == cols
        if exclude_label:
            bad |= ql[:, None] == r_lab[cols]
        return bad

    def group_min(a):
        full = (m // g) * g
        mins = a[:, :full].reshape(a.shape[0], m // g, g).min(axis=2)
        if full < m:
            mins = jnp.concatenate([mins, a[:, full:].min(axis=1, keepdims=True)], axis=1)
        return mins

    def solve(args, cap):
        """Band candidates re-ranked for rows ``args``; ``ok [rows]`` where the band fitted in ``cap``."""
        sc, xs, qi, ql, xc = args
        bad = masked(qi, ql, jnp.broadcast_to(cols_all, sc.shape))
        e = rel * (1.5 * (xs[:, None] + refs_sq[None, :]) + sc)
        v = -lax.top_k(-group_min(jnp.where(bad, inf, sc + e)), k)[0][:, k - 1]
        v = v * (1.0 + 2.0**-20)  # values that round to the same float32 distance as d_(k)
        g_lo = group_min(jnp.where(bad, inf, sc - e))

        def lower(cols):
            inside = cols < m
            cols = jnp.minimum(cols, m - 1)
            sv = jnp.take_along_axis(sc, cols, axis=1)
            lv = sv - rel * (1.5 * (xs[:, None] + refs_sq[cols]) + sv)
            return jnp.where(~inside | masked(qi, ql, cols), inf, lv)

        cand, ok = _band_candidates(g_lo, v, lower, cap, g, m)
        dist, cnd = _exact_rerank(xc, refs, cand, "l2")
        dist = jnp.where(masked(qi, ql, cnd), inf, dist)
        dist, cnd = lax.sort((dist, cnd), dimension=1, num_keys=2)
        return dist[:, :k], cnd[:, :k], ok

    def every(args):
        sc, xs, qi, ql, xc = args
        dist = lax.map(lambda x: lp.lp_norm(x[None, :] - refs, "l2", axis=-1), xc)
        dist = jnp.where(masked(qi, ql, jnp.broadcast_to(cols_all, dist.shape)), inf, dist)
        idx = jnp.broadcast_to(cols_all, dist.shape)
        dist, idx = lax.sort((dist, idx), dimension=1, num_keys=2)
        return dist[:, :k], idx[:, :k]

    def wide_row(args):
        """One row whose band overflowed: 8 times the candidates, else every distance."""
        row = tuple(a[None] for a in args)
        if cap2 == cap:
            return tuple(a[0] for a in every(row))
        dist, idx, ok = solve(row, cap2)
        return lax.cond(ok[0], lambda: (dist[0], idx[0]), lambda: tuple(a[0] for a in every(row)))

    def one(args):
        dist, idx, ok = solve(args, cap)

        def fix():
            return lax.map(lambda a: lax.cond(a[0], lambda: (a[1], a[2]), lambda: wide_row(a[3:])),
                           (ok, dist, idx) + tuple(args))

        return lax.cond(jnp.all(ok), lambda: (dist, idx), fix)

    c = _row_chunks(b, m)
    parts = (score, xsq, q_ids, q_lab, xq)
    dist, idx = lax.map(one, tuple(a.reshape((b // c, c) + a.shape[1:]) for a in parts))
    return dist.reshape(b, k), idx.reshape(b, k)


def _radius_block(xq, q_ids, q_lab, q_val, refs, refs_t, refs_sq, r_lab, *, norm, rel_tol, count_only):
    """Pairs surely within the row's radius ``q_val`` and pairs too close to call.

    Returns the packed masks (or, with ``count_only``, the sure counts and
    the packed mask of undecided pairs).
    """
    radius = q_val[:, None]
    if norm == "l2":
        score = l2_sq_gemm(xq, refs, refs_sq)
        r = radius * radius
        # |computed - exact| <= rel_tol * (||x||^2 + ||y||^2) for the GEMM identity.
        tol = rel_tol * (_sq_norms(xq)[:, None] + refs_sq[None, :]) + rel_tol * r
    else:
        score = _accumulate(xq, refs_t, norm)
        r = radius if norm in ("l1", "linf") else radius**norm
        tol = rel_tol * jnp.maximum(score, r)
    sure = score <= r - tol
    maybe = (score <= r + tol) & ~sure
    if count_only:
        return jnp.sum(sure, axis=1, dtype=jnp.int32), jnp.packbits(maybe, axis=1)
    return jnp.packbits(sure, axis=1), jnp.packbits(maybe, axis=1)


def _nearest_block(xq, q_ids, q_lab, q_val, refs, refs_t, refs_sq, r_lab, *, norm):
    dist, idx = _knn_block(
        xq, q_ids, q_lab, q_val, refs, refs_t, refs_sq, r_lab, k=1, norm=norm, exclude_self=False, exclude_label=True
    )
    return dist[:, 0], idx[:, 0]


def _dist_block(xq, q_ids, q_lab, q_val, refs, refs_t, refs_sq, r_lab, *, norm):
    return (_finish(_accumulate(xq, refs_t, norm), norm),)


def _row_chunks(b: int, m: int) -> int:
    """Rows of a ``[b, m]`` block processed together by a multi-pass selection (a divisor of ``b``).

    A selection reads its rows many times; a chunk of about ``_SELECT_BYTES``
    stays in cache between the passes (over a whole block each pass reads
    main memory: measured 15x slower on MNIST's 256 x 54,000 blocks).
    """
    c = max(1, min(b, _SELECT_BYTES // max(1, 4 * m)))
    while b % c:
        c -= 1
    return c


def _kth_bits(d: jax.Array, k: jax.Array) -> jax.Array:
    """Bit pattern of the ``k``-th smallest value of each row of non-negative float32 ``d`` ``[c, m]``.

    Bisection on the float32 bit pattern (monotone for non-negative floats)
    between the patterns of each row's smallest and largest finite value,
    which bracket the answer (on MNIST's l2 distances about 25 halvings
    instead of the 31 from ``[0, inf]``), until every row of the chunk has
    converged. Counts are float32 sums (measured faster than int32 on CPU),
    exact for ``m < 2^24``, else int32. Rows need ``1 <= k <= #finite``.
    """
    cdt = jnp.float32 if d.shape[1] < 2**24 else jnp.int32
    kf = k.astype(cdt)
    fin = jnp.isfinite(d)
    lo = jnp.maximum(lax.bitcast_convert_type(jnp.min(d, axis=1), jnp.int32), 0)  # -0.0 counts as +0.0
    hi = jnp.maximum(lax.bitcast_convert_type(jnp.max(jnp.where(fin, d, 0.0), axis=1), jnp.int32), lo)

    def body(state):
        lo, hi = state
        mid = lo + (hi - lo) // 2
        t = lax.bitcast_convert_type(mid, jnp.float32)
        ok = jnp.sum((d <= t[:, None]).astype(cdt), axis=1) >= kf
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    lo, _ = lax.while_loop(lambda state: jnp.any(state[0] < state[1]), body, (lo, hi))
    return lo


def _mean_k_block(xq, refs, refs_sq, valid, k, *, norm):
    """Mean of the ``k`` smallest float32 distances from each query row to the valid references.

    The ``k``-th smallest value ``t`` is found by bisection on the float32 bit
    pattern, so ties and duplicates are handled exactly:
    ``sum(d < t) + (k - #(d < t)) t``. The selection runs on chunks of rows
    that stay in cache (:func:`_row_chunks`). References with
    ``valid = False`` count as ``+inf``; ``k`` is traced.
    """
    if norm == "l2":
        score = l2_sq_gemm(xq, refs, refs_sq)
    else:
        score = _accumulate(xq, refs.T, norm)
    b, m = score.shape
    c = _row_chunks(b, m)

    def one(sc):
        d = jnp.sqrt(sc) if norm == "l2" else _finish(sc, norm)
        d = jnp.where(valid[None, :], d.astype(jnp.float32), jnp.inf)
        t = lax.bitcast_convert_type(_kth_bits(d, k), jnp.float32)
        below = d < t[:, None]
        s = jnp.sum(jnp.where(below, d, 0.0), axis=1)
        n_below = jnp.sum(below, axis=1, dtype=jnp.int32)
        return (s + (k - n_below).astype(jnp.float32) * t) / k.astype(jnp.float32)

    return lax.map(one, score.reshape(b // c, c, m)).reshape(b)


# ---------------------------------------------------------------------------
# Host-side streaming driver
# ---------------------------------------------------------------------------


def _block_rows(block_size: int | None, norm, m: int, itemsize: int) -> int:
    """Query rows per device and call: ``block_size``, else the per-norm default capped by memory."""
    if block_size is not None:
        return _checks.check_int(block_size, "block_size", low=1)
    b = _DEFAULT_BLOCK.get(norm, _DEFAULT_BLOCK_OTHER)
    cap = max(8, _BLOCK_BYTES // max(1, m * itemsize))
    return int(min(b, cap))


def _prepare(
    queries: Any,
    refs: Any,
    *,
    norm: Any,
    precision: str,
    names: tuple[str, str] = ("x", "y"),
):
    """Validate inputs (errors name the public arguments ``names``); host arrays, norm, whether refs is queries."""
    norm = _checks.canonical_norm(norm)
    _engine.check_precision(precision)
    xq = np.asarray(_checks.check_points(queries, names[0]))
    same = refs is None
    xr = xq if same else np.asarray(_checks.check_points(refs, names[1]))
    if not same:
        _checks.check_same_dim(xq, xr, names[0], names[1])
    return norm, xq, xr, same


def _stream(
    kernel: Callable,
    xq: np.ndarray,
    xr: np.ndarray,
    *,
    norm,
    precision: str,
    block_size: int | None,
    static: dict,
    q_labels: np.ndarray | None = None,
    r_labels: np.ndarray | None = None,
    q_values: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "",
    checkpoint: Any = None,
    checkpoint_every: float = 30.0,
    collect: Callable[[tuple, int], tuple] | None = None,
) -> list:
    """Run a distance kernel over blocks of query rows through :mod:`jaxbound._engine`.

    The kernel sees ``(xq, q_ids, q_lab, q_val)`` split by rows (padded rows:
    zeros, id and label ``-1``) and ``(refs, refs_t, refs_sq, r_lab)``
    replicated. A block holds ``block_size`` rows per device. Returns the
    per-block host outputs; ``collect(outputs, n_valid)`` post-processes a
    block on the host (default: the first ``n_valid`` rows of every output).
    """
    n = xq.shape[0]
    with _engine.precision_ctx(precision) as dtype:
        rows = _block_rows(block_size, norm, xr.shape[0], np.dtype(dtype).itemsize)
        refs = jnp.asarray(xr, dtype=dtype)
        refs_t = refs.T if norm != "l2" or kernel is _dist_block else jnp.zeros((0,), dtype)
        refs_sq = jnp.sum(refs * refs, axis=1) if norm == "l2" else jnp.zeros((0,), dtype)
        r_lab = jnp.asarray(r_labels if r_labels is not None else np.zeros(0, np.int32), jnp.int32)
        batch = [
            np.asarray(xq, dtype),
            np.arange(n, dtype=np.int32),
            np.asarray(q_labels, np.int32) if q_labels is not None else np.zeros(n, np.int32),
            np.asarray(q_values, dtype) if q_values is not None else np.zeros(n, dtype),
        ]
        _, blocks = _engine.stream(
            kernel, static, batch, (refs, refs_t, refs_sq, r_lab),
            block_size=rows * len(jax.local_devices()), pad=(0, -1, -1, 0), collect=collect,
            progress=progress, desc=desc, unit="pt", checkpoint=checkpoint, job=(norm, precision),
            checkpoint_every=checkpoint_every,
        )
    return blocks


def _concat(results: list, n_out: int, empty: list[np.ndarray]) -> tuple:
    if not results:
        return tuple(empty)
    return tuple(np.concatenate([r[i] for r in results]) for i in range(n_out))


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def pairwise_distances(
    x: Any,
    y: Any = None,
    *,
    norm: Any = "l2",
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> np.ndarray:
    """All distances ``D[i, j] = ||x_i - y_j||_p``.

    The output itself is ``[n, m]``; it is filled block by block, so the
    working memory beyond it stays ``O(block x m)``.

    Args:
      x: ``[n, d]`` points.
      y: ``[m, d]`` points; ``None`` means ``y = x``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      block_size: query rows per device and block (default chosen per norm).
      precision: ``"float32"`` or ``"float64"``.
      progress: show a progress bar.

    Returns:
      ``[n, m]`` NumPy array of distances.
    """
    norm, xq, xr, _ = _prepare(x, y, norm=norm, precision=precision)
    res = _stream(
        _dist_block, xq, xr, norm=norm, precision=precision, block_size=block_size,
        static={"norm": norm}, progress=progress, desc="distances",
    )
    return _concat(res, 1, [np.zeros((0, xr.shape[0]))])[0]


def knn(
    queries: Any,
    refs: Any = None,
    *,
    k: int,
    norm: Any = "l2",
    exclude_self: bool = False,
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
    checkpoint: Any = None,
    checkpoint_every: float = 30.0,
) -> KNN:
    """The ``k`` nearest references of every query.

    ``l2`` computes one GEMM per block, keeps the references whose score is
    within the proven rounding band (:func:`gemm_rounding_bound`) of the
    ``k``-th distance and re-ranks only those by direct computation (more
    candidates when the band is wide; with very many exact ties a row is
    computed directly against every reference); the result equals a direct
    computation of all distances. The other norms compute every distance
    directly. Ties are ordered by reference index.

    Args:
      queries: ``[n, d]`` query points.
      refs: ``[m, d]`` reference points; ``None`` means the queries themselves
        (then with ``exclude_self=False`` each point is its own first
        neighbour, the convention of Mahloujifar et al. §4.1).
      k: neighbours per query, ``1 <= k < m``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      exclude_self: drop each point from its own list (needs ``refs=None``).
      block_size: query rows per device and block.
      precision: ``"float32"`` or ``"float64"``.
      progress: show a progress bar.
      checkpoint: optional folder; finished blocks are saved there (every
        ``checkpoint_every`` seconds, new rows only) and a rerun with the same
        data and settings resumes after the last saved block. A damaged or
        foreign segment file is recomputed with one warning naming it. The
        folder is removed when the job ends.
      checkpoint_every: seconds between checkpoint saves (>= 0; ``0`` saves
        after every block).

    Returns:
      :class:`KNN` with ``distances [n, k]`` (ascending) and ``indices [n, k]``.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202. (§4.1, density ranks)
    """
    norm, xq, xr, same = _prepare(queries, refs, norm=norm, precision=precision, names=("queries", "refs"))
    if not isinstance(exclude_self, bool):
        raise ValueError(f"exclude_self: expected a bool, got {exclude_self!r}")
    checkpoint_every = _checks.check_scalar(checkpoint_every, "checkpoint_every", low=0.0)
    if exclude_self and not same:
        raise ValueError("exclude_self: only meaningful when refs is None (queries are the references)")
    m = xr.shape[0]
    k = _checks.check_int(k, "k", low=1)
    if k >= m:
        raise ValueError(f"k: must be smaller than the number of references ({m}), got {k}")
    res = _stream(
        _knn_block, xq, xr, norm=norm, precision=precision, block_size=block_size,
        static={"k": k, "norm": norm, "exclude_self": exclude_self, "exclude_label": False},
        progress=progress, desc=f"knn {norm}", checkpoint=checkpoint, checkpoint_every=checkpoint_every,
    )
    dist, idx = _concat(res, 2, [np.zeros((0, k)), np.zeros((0, k), np.int64)])
    return KNN(dist, idx.astype(np.int64))


def _exact_norm_rows(a: np.ndarray, b: np.ndarray, norm) -> np.ndarray:
    """Float64 ``||a_i - b_i||`` row by row (host reference for boundary cases)."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if norm == "l1":
        return diff.sum(axis=1)
    if norm == "l2":
        return np.sqrt((diff * diff).sum(axis=1))
    if norm == "linf":
        return diff.max(axis=1)
    return (diff**norm).sum(axis=1) ** (1.0 / norm)


def _radius_setup(x, y, radius, norm, precision):
    """Validate radius queries; per-row radii ``[n]`` and the rounding band of the fast pass."""
    norm, xq, xr, _ = _prepare(x, y, norm=norm, precision=precision)
    try:
        r = np.asarray(radius, dtype=np.float64) if not isinstance(radius, (int, float)) else None
    except (TypeError, ValueError):
        raise ValueError(f"radius: expected a number or one radius per row, got {radius!r}") from None
    if r is None or r.ndim == 0:
        radii = np.full(xq.shape[0], _checks.check_scalar(radius, "radius", low=0.0))
    else:
        if r.shape != (xq.shape[0],):
            raise ValueError(f"radius: expected a scalar or shape [{xq.shape[0]}], got {r.shape}")
        _checks.check_finite(r, "radius")
        if (r < 0).any():
            raise ValueError(f"radius: must be >= 0, got {float(r.min())}")
        radii = r
    d = xq.shape[1]
    unit = _unit_roundoff(precision)
    # Worst-case relative error of the accumulations (any summation order), with margin.
    if norm == "linf":
        rel = 4 * unit
    elif norm == "l2":
        rel = gemm_rounding_bound(d, precision)
    else:
        rel = 4 * (d + 16) * unit
    # radii rounded to the compute dtype could move the boundary: decide those in float64 too
    return norm, xq, xr, radii, rel


class _BandResolver:
    """Decides ``d <= radius`` in float64 for the pairs the fast pass could not call.

    Few undecided pairs are recomputed on the host pair by pair. When a block
    has many (data on a grid, e.g. l-inf on MNIST where most distances are
    exactly 1), its rows are recomputed at once in float64 with
    :func:`block_distances`; for l-inf that is bit-exact for float32 inputs
    (differences of float32 numbers are exact in float64). That dense
    recomputation runs on JAX's CPU backend (the host) whenever the default
    backend is not the CPU, so no float64 is ever needed on an accelerator
    (TPUs have none): the same compiled CPU kernel as on a CPU-only machine,
    hence the same decisions.
    """

    # A block switches to the dense float64 recomputation above this many undecided pairs.
    dense_above = 20000
    # Where the dense recomputation runs: None = the host when the default backend is not the CPU; True = the host.
    dense_on_host: bool | None = None

    def __init__(self, xq: np.ndarray, xr: np.ndarray, radii: np.ndarray, norm):
        self.xq, self.xr, self.radii, self.norm = xq, xr, radii, norm
        self._xr64 = None

    def __call__(self, offset: int, mr: np.ndarray, mc: np.ndarray) -> np.ndarray:
        """``keep[i]`` for the undecided pairs ``(offset + mr[i], mc[i])``."""
        if mr.size > self.dense_above:
            return self._dense(offset, mr, mc)
        rows = mr + offset
        keep = np.zeros(rows.size, bool)
        step = max(1, 2**22 // max(1, self.xq.shape[1]))
        for lo in range(0, rows.size, step):
            r, c = rows[lo: lo + step], mc[lo: lo + step]
            keep[lo: lo + step] = _exact_norm_rows(self.xq[r], self.xr[c], self.norm) <= self.radii[r]
        return keep

    def _dense_device(self):
        """The device of the dense float64 recomputation: the host's CPU device off-CPU (or when forced)."""
        on_host = self.dense_on_host
        if on_host is None:
            on_host = jax.default_backend() != "cpu"
        return jax.devices("cpu")[0] if on_host else jax.local_devices()[0]

    def _dense(self, offset, mr, mc):
        dev = self._dense_device()
        with jax.enable_x64(True):
            if self._xr64 is None:
                self._xr64 = jax.device_put(np.asarray(self.xr, np.float64), dev)
            rows = np.unique(mr)
            xq64 = jax.device_put(np.asarray(self.xq[offset + rows], np.float64), dev)
            dist = np.asarray(_block_distances64(xq64, self._xr64, norm=self.norm))
        pos = np.searchsorted(rows, mr)
        return dist[pos, mc] <= self.radii[offset + mr]


_block_distances64 = jax.jit(block_distances, static_argnames="norm")


def radius_pairs(
    x: Any,
    y: Any = None,
    *,
    radius: Any,
    norm: Any = "l2",
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> RadiusPairs:
    """All pairs ``(i, j)`` with ``||x_i - y_j|| <= radius_i`` (closed balls).

    This is the conflict graph of Bhagoji et al. (2021, §4.1) with
    ``radius = 2 eps``. The fast pass classifies pairs whose distance is
    provably on one side of the radius (a worst-case rounding bound of the
    kernel); the few pairs inside that band are recomputed in float64 on the
    host, so the result equals the exact float64 test ``d <= radius``.

    Args:
      x: ``[n, d]`` points.
      y: ``[m, d]`` points; ``None`` means ``y = x`` (then ``(i, i)`` pairs are
        included).
      radius: a scalar ``>= 0`` or per-row radii ``[n]``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      block_size: query rows per device and block.
      precision: ``"float32"`` or ``"float64"`` for the fast pass.
      progress: show a progress bar.

    Returns:
      :class:`RadiusPairs` with int64 ``rows``, ``cols`` (sorted by row then
      column) and per-row ``counts [n]``.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in
      the presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
    """
    norm, xq, xr, radii, rel = _radius_setup(x, y, radius, norm, precision)
    m = xr.shape[0]
    rows_all, cols_all = [], []
    offset = 0
    resolve = _BandResolver(xq, xr, radii, norm)

    def collect(outs, nv):
        nonlocal offset
        sure = np.unpackbits(np.asarray(outs[0])[:nv], axis=1, count=m).view(bool)
        maybe = np.unpackbits(np.asarray(outs[1])[:nv], axis=1, count=m).view(bool)
        mr, mc = np.nonzero(maybe)
        if mr.size:
            keep = resolve(offset, mr, mc)
            sure[mr[keep], mc[keep]] = True
        r, c = np.nonzero(sure)
        rows_all.append(r.astype(np.int64) + offset)
        cols_all.append(c.astype(np.int64))
        offset += nv
        return ()

    _stream(
        _radius_block, xq, xr, norm=norm, precision=precision, block_size=block_size,
        static={"norm": norm, "rel_tol": rel, "count_only": False}, q_values=radii,
        progress=progress, desc=f"radius pairs {norm}", collect=collect,
    )
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
    cols = np.concatenate(cols_all) if cols_all else np.zeros(0, np.int64)
    counts = np.bincount(rows, minlength=xq.shape[0]).astype(np.int64)
    return RadiusPairs(rows, cols, counts)


def count_within(
    x: Any,
    y: Any = None,
    *,
    radius: Any,
    norm: Any = "l2",
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> np.ndarray:
    """``counts[i] = #{j : ||x_i - y_j|| <= radius_i}`` without listing the pairs.

    Ball coverage counts of Mahloujifar et al. (2019, §4.2): how many points a
    ball ``B(x_i, radius_i)`` holds. Exact at the boundary like
    :func:`radius_pairs`, with memory ``O(block x m)`` and no pair list.

    Args:
      x: ``[n, d]`` centres.
      y: ``[m, d]`` points; ``None`` means ``y = x`` (each centre counts itself).
      radius: a scalar ``>= 0`` or per-centre radii ``[n]``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      block_size: query rows per device and block.
      precision: ``"float32"`` or ``"float64"`` for the fast pass.
      progress: show a progress bar.

    Returns:
      ``[n]`` int64 counts.

    References:
      Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring
      concentration: fundamental limits on intrinsic robustness." NeurIPS
      2019, arXiv:1905.12202. (§4.2)
    """
    norm, xq, xr, radii, rel = _radius_setup(x, y, radius, norm, precision)
    m = xr.shape[0]
    offset = 0
    resolve = _BandResolver(xq, xr, radii, norm)

    def collect(outs, nv):
        nonlocal offset
        counts = np.asarray(outs[0])[:nv].astype(np.int64)
        maybe = np.unpackbits(np.asarray(outs[1])[:nv], axis=1, count=m).view(bool)
        mr, mc = np.nonzero(maybe)
        if mr.size:
            keep = resolve(offset, mr, mc)
            counts += np.bincount(mr[keep], minlength=nv)
        offset += nv
        return (counts,)

    res = _stream(
        _radius_block, xq, xr, norm=norm, precision=precision, block_size=block_size,
        static={"norm": norm, "rel_tol": rel, "count_only": True}, q_values=radii,
        progress=progress, desc=f"counts {norm}", collect=collect,
    )
    return np.concatenate([r[0] for r in res]) if res else np.zeros(0, np.int64)


def nearest_other_class(
    x: Any,
    labels: Any,
    *,
    norm: Any = "l2",
    refs: Any = None,
    ref_labels: Any = None,
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> NearestOther:
    """Distance from each point to the nearest point of another class.

    Used for the dataset Lipschitz constant ``1 / min_i d_i`` (Finlay et al.
    2019, Table 4) and inter-class distances (Ding et al. 2019, App. D.2).

    Args:
      x: ``[n, d]`` points.
      labels: ``[n]`` integer labels of ``x``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      refs: optional ``[m, d]`` reference points (default: ``x`` itself).
      ref_labels: ``[m]`` labels of ``refs`` (required with ``refs``).
      block_size: query rows per device and block.
      precision: ``"float32"`` or ``"float64"``.
      progress: show a progress bar.

    Returns:
      :class:`NearestOther` with ``distances [n]`` and int64 ``indices [n]``.

    Raises:
      ValueError: when a query's class has no point of another class to
        compare with (for example a single class in the data).

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    norm, xq, xr, same = _prepare(x, refs, norm=norm, precision=precision, names=("x", "refs"))
    q_lab = np.asarray(_checks.check_labels(labels, "labels", n=xq.shape[0]))
    if same:
        if ref_labels is not None:
            raise ValueError("ref_labels: given without refs")
        r_lab = q_lab
    else:
        if ref_labels is None:
            raise ValueError("ref_labels: required when refs is given")
        r_lab = np.asarray(_checks.check_labels(ref_labels, "ref_labels", n=xr.shape[0]))
    r_classes = np.unique(r_lab)
    lonely = [int(c) for c in np.unique(q_lab) if np.all(r_classes == c)]
    if lonely:
        raise ValueError(f"labels: class {lonely[0]} has no point of another class among the references")
    if np.any(q_lab > np.iinfo(np.int32).max) or np.any(r_lab > np.iinfo(np.int32).max):
        raise ValueError("labels: values must fit in int32")
    res = _stream(
        _nearest_block, xq, xr, norm=norm, precision=precision, block_size=block_size,
        static={"norm": norm}, q_labels=q_lab.astype(np.int32),
        r_labels=r_lab.astype(np.int32), progress=progress, desc="nearest other class",
    )
    dist, idx = _concat(res, 2, [np.zeros(0), np.zeros(0, np.int64)])
    return NearestOther(dist, idx.astype(np.int64))


def mean_k_smallest(
    queries: Any,
    refs: Any,
    *,
    k: int,
    norm: Any = "l2",
    block_size: int = 256,
    ref_rows: int | None = None,
    progress: bool = False,
    desc: str = "mean of k smallest",
) -> np.ndarray:
    """Mean of the ``k`` smallest distances from every query to ``refs``, streamed.

    The per-point margin of Ding et al. (2019, App. D.2.1) is this mean over
    the out-of-class points (:func:`jaxbound.shift.point_margins`). Computed
    in float32: ``l2`` distances by :func:`l2_sq_gemm` (``HIGHEST``
    precision, relative error about ``1e-6`` on MNIST-scale data), the other
    norms by :func:`block_distances`. The ``k`` smallest are selected exactly
    (ties and duplicates included) by bisection on the float32 bits. Query
    blocks stream through the block engine; memory is
    ``O(block_size x ref_rows)``.

    ``block_size`` and ``ref_rows`` fix the shapes of the compiled kernel
    (``k`` is traced): a loop over several reference sets (one per class)
    that passes the same two values compiles once and gets the same numbers
    for a query whatever its set's size.

    Args:
      queries: ``[n, d]`` query points.
      refs: ``[m, d]`` reference points, ``m >= 1``.
      k: neighbours averaged, ``1 <= k <= m``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      block_size: query rows per call (rounded up to a multiple of the device
        count; not reduced for small ``n``).
      ref_rows: the references are padded to this many rows (padding counts
        as ``+inf``); default: ``m`` rounded up to a multiple of 256.
      progress: show a progress bar.
      desc: the progress bar's label.

    Returns:
      ``[n]`` float32 means.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    norm = lp.canonical_norm(norm)
    xq = np.asarray(_checks.check_points(queries, "queries", allow_empty=True))
    xr = np.asarray(_checks.check_points(refs, "refs"))
    _checks.check_same_dim(xq, xr, "queries", "refs")
    m = xr.shape[0]
    k = _checks.check_int(k, "k", low=1, high=m)
    block_size = _checks.check_int(block_size, "block_size", low=1)
    m_pad = -(-m // 256) * 256 if ref_rows is None else _checks.check_int(ref_rows, "ref_rows", low=m)
    if xq.shape[0] == 0:
        return np.zeros(0, np.float32)
    refs_np = np.zeros((m_pad, xr.shape[1]), np.float32)
    refs_np[:m] = xr
    refs_j = jnp.asarray(refs_np)
    valid = jnp.asarray(np.arange(m_pad) < m)
    refs_sq = jnp.sum(refs_j * refs_j, axis=1) if norm == "l2" else jnp.zeros((0,), jnp.float32)
    nd = len(jax.local_devices())
    _, blocks = _engine.stream(
        _mean_k_block, {"norm": norm}, [np.asarray(xq, np.float32)], (refs_j, refs_sq, valid, jnp.int32(k)),
        block_size=-(-block_size // nd) * nd, progress=progress, desc=desc, unit="pt",
    )
    return np.concatenate([b[0] for b in blocks])
