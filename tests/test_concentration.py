"""Tests of jaxbound.concentration (Mahloujifar et al. 2019) against NumPy/SciPy brute force."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import binom, norm as normal

from jaxbound import concentration as C
from jaxbound import data


# ---------------------------------------------------------------------------
# Brute-force references
# ---------------------------------------------------------------------------


def brute_greedy_balls(x, *, alpha, eps, T, delta, margin=0.0):
    """Algorithm 2 as the authors' code runs it, with a dense float64 distance table: the independent reference.

    ``margin`` raises the target to ``ceil(N (alpha + margin / sqrt(N)) (1 + delta))`` (0: the authors' target).
    """
    N = x.shape[0]
    n_tot = math.ceil(N * (alpha + margin / math.sqrt(N)) * (1 + delta) - 1e-9)
    D = cdist(x.astype(np.float64), x.astype(np.float64))
    covered = np.zeros(N, bool)
    expanded = np.zeros(N, bool)
    out = []
    for t in range(T):
        if covered.sum() >= n_tot:
            break
        hi = n_tot - int(covered.sum())
        lo = -(-hi // (T - t))
        best = None
        for c in range(N):
            d = D[c]
            order = np.lexsort((np.arange(N), d))
            unc = order[~covered[order]]
            r = d[unc[lo - 1 : hi]]  # m = lo..hi
            Cn = np.sum((~covered)[None, :] & (d[None, :] <= r[:, None]), axis=1)
            En = np.sum((~expanded)[None, :] & (d[None, :] <= r[:, None] + eps), axis=1)
            obj = En - Cn
            i = int(np.argmin(obj))
            cand = (int(obj[i]), c, lo + i, float(r[i]))
            if best is None or cand[:3] < best[:3]:
                best = cand
        obj, c, m, r = best
        covered |= D[c] <= r
        expanded |= D[c] <= r + eps
        out.append(dict(obj=obj, c=c, m=m, r=r, cov=int(covered.sum()), exp=int(expanded.sum())))
    return out


def brute_box_counts(x, centers, widths, eps):
    x = x.astype(np.float64)
    in_exp = np.zeros(len(x), bool)
    in_box = np.zeros(len(x), bool)
    for c, h in zip(centers, widths):
        for i, xi in enumerate(x):
            marg = max(abs(xi[j] - c[j]) - h[j] for j in range(len(c)))
            in_exp[i] |= marg <= eps
            in_box[i] |= marg <= 0
    return int(np.sum(~in_exp)), int(np.sum(~in_box))


def ding_cube_bound(p, eps):
    """Ding et al. Theorem 2.1: P(A_eps) >= Phi(eps sqrt(2 pi) + Phi^-1(P(A))) on the uniform cube (l2)."""
    return float(normal.cdf(eps * math.sqrt(2 * math.pi) + normal.ppf(p)))


def blobs(seed, n, d, centers, scale=0.05):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(centers), n)
    return (np.asarray(centers)[lab] + scale * rng.standard_normal((n, d))).astype(np.float32)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1), (0, 1), (57, 1000)])
def test_clopper_pearson_matches_binomial_tails(k, n):
    lo, hi = C.clopper_pearson(k, n, confidence=0.95)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k > 0:
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    else:
        assert lo == 0.0
    if k < n:
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, rel=1e-6)
    else:
        assert hi == 1.0
    if k == 0:
        assert hi == pytest.approx(1 - 0.025 ** (1 / n))


def test_clopper_pearson_rejects_bad_input():
    with pytest.raises(ValueError, match="^k"):
        C.clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="^n"):
        C.clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="^confidence"):
        C.clopper_pearson(1, 10, confidence=1.0)


# ---------------------------------------------------------------------------
# l_inf: density, k-means, boxes
# ---------------------------------------------------------------------------


def test_density_ranks_match_bruteforce_with_self_as_first_neighbour():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (60, 3)).astype(np.float32)  # many ties
    for k in (1, 2, 7):
        ref = np.sort(cdist(x, x, "cityblock"), axis=1)[:, k - 1]
        np.testing.assert_allclose(C.density_ranks(x, k=k), ref, rtol=0, atol=1e-6)
    assert np.all(C.density_ranks(x, k=1) == 0)


def test_kmeans_fixed_point_mean_and_median():
    x = blobs(0, 300, 4, [[0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1]], scale=0.1)
    for update in ("mean", "median"):
        c, a, it = C.kmeans_l1(x, key=jax.random.key(3), n_clusters=3, max_iter=100, update=update)
        c, a = np.asarray(c, np.float64), np.asarray(a)
        assert int(it) < 100  # converged: assignments stable
        d = cdist(x, c, "cityblock")
        np.testing.assert_array_equal(a, np.argmin(d, axis=1))
        for t in range(3):
            mem = x[a == t].astype(np.float64)
            ref = mem.mean(0) if update == "mean" else np.median(mem, axis=0)
            np.testing.assert_allclose(c[t], ref, atol=1e-5)


def test_kmeans_empty_clusters_never_nan():
    x = np.concatenate([np.zeros((6, 3)), np.ones((2, 3))]).astype(np.float32)
    for seed in range(6):
        for update in ("mean", "median"):
            c, a, _ = C.kmeans_l1(x, key=jax.random.key(seed), n_clusters=4, max_iter=30, update=update)
            assert np.isfinite(np.asarray(c)).all()
            assert set(np.asarray(a).tolist()) <= {0, 1, 2, 3}
    # identical points: every centre starts equal, all points go to cluster 0, the others stay empty
    c, a, _ = C.kmeans_l1(np.zeros((5, 2), np.float32), key=jax.random.key(0), n_clusters=3)
    assert np.isfinite(np.asarray(c)).all() and np.all(np.asarray(a) == 0)


def test_kmeans_jit_equals_eager_and_keys_reproduce():
    x = blobs(2, 120, 3, [[0, 0, 0], [1, 0, 0], [0, 0, 1]], scale=0.2)
    key = jax.random.key(5)
    c1, a1, i1 = C.kmeans_l1(x, key=key, n_clusters=4, max_iter=30)
    c2, a2, i2 = C.kmeans_l1(x, key=key, n_clusters=4, max_iter=30)
    np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))
    with jax.disable_jit():
        c3, a3, i3 = C.kmeans_l1(x, key=key, n_clusters=4, max_iter=30)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a3))
    np.testing.assert_allclose(np.asarray(c1), np.asarray(c3), atol=1e-6)
    assert int(i1) == int(i3)


def test_box_margin_jit_equals_eager_and_membership_matches_bruteforce():
    rng = np.random.default_rng(4)
    # dyadic values: differences are exact, so points exactly on a face are tested
    x = (rng.integers(0, 16, (80, 3)) / 8).astype(np.float32)
    centers = np.array([[0.5, 0.5, 0.5], [1.25, 1.0, 0.25]])
    widths = np.array([[0.25, 0.5, 0.125], [0.5, 0.25, 0.0]])
    m1 = np.asarray(jax.jit(C.box_margin)(jnp.asarray(x), jnp.asarray(centers, jnp.float32),
                                          jnp.asarray(widths, jnp.float32)))
    with jax.disable_jit():
        m2 = np.asarray(C.box_margin(jnp.asarray(x), jnp.asarray(centers, jnp.float32),
                                     jnp.asarray(widths, jnp.float32)))
    np.testing.assert_array_equal(m1, m2)
    for eps in (0.0, 0.125, 0.3):
        reg = C.Rectangles(centers, widths, eps, 0.1, 0.5, 10, 2, "mean", 1, (0, 0))
        m = C.measure(reg, x)
        n_risk, n_adv = brute_box_counts(x, centers, widths, eps)
        assert (m.n_risk, m.n_adv) == (n_risk, n_adv)
        assert m.adv_risk >= m.risk
    assert np.any(m1 == 0.0)  # some points lie exactly on a face (closed boxes)


@pytest.mark.parametrize("n, T", [(0, 3), (1, 1), (1, 4), (37, 1), (300, 7)])
def test_measure_margins_equal_float64_numpy_bit_for_bit(n, T):
    """measure's streamed box margins against a float64 NumPy brute force, exactly (faces and ties included)."""
    rng = np.random.default_rng(n + T)
    x = rng.random((n, 40)).astype(np.float32)
    centers = rng.random((T, 40))
    widths = rng.random((T, 40)) * 0.4
    if n:
        centers[0] = x[0]  # a box centred on a point and a point exactly on a face of it
        widths[0, 5] = abs(float(x[min(1, n - 1), 5]) - centers[0, 5])
    ref = np.min(np.max(np.abs(x.astype(np.float64)[:, None, :] - centers[None]) - widths[None], axis=-1), axis=1)
    got = C._min_box_margin(x, centers, widths) if n else np.zeros(0)
    np.testing.assert_array_equal(got, ref)
    for eps in (0.0, 0.05):
        reg = C.Rectangles(centers, widths, eps, 0.1, 0.5, n, T, "mean", 1, (0, 0))
        if n == 0:
            with pytest.raises(ValueError):
                C.measure(reg, x)
            continue
        m = C.measure(reg, x)
        assert (m.n_risk, m.n_adv) == (int(np.sum(ref > eps)), int(np.sum(ref > 0.0)))


def test_fit_rectangles_search_trace_and_reproducibility():
    x = blobs(3, 400, 5, [[0] * 5, [1] * 5, [0, 1, 0, 1, 0]], scale=0.15)
    xs = blobs(4, 400, 5, [[0] * 5, [1] * 5, [0, 1, 0, 1, 0]], scale=0.15)
    key = jax.random.key(0)
    r1 = C.fit_rectangles(x, key=key, alpha=0.1, eps=0.1, n_regions=3, x_select=xs, k=10)
    r2 = C.fit_rectangles(x, key=key, alpha=0.1, eps=0.1, n_regions=3, x_select=xs, k=10)
    np.testing.assert_array_equal(r1.centers, r2.centers)
    np.testing.assert_array_equal(r1.half_widths, r2.half_widths)
    assert len(r1.search) == 8  # 2**-8 < 0.005 <= 2**-7
    qs = [s.q for s in r1.search]
    assert qs[0] == 0.5 and all(abs(a - b) > 0 for a, b in zip(qs, qs[1:]))
    m = C.measure(r1, xs)
    assert m.risk >= 0.1
    feas = [s for s in r1.search if s.feasible]
    assert m.adv_risk == pytest.approx(min(s.adv_risk for s in feas))
    # every clustered (dense) point lies inside its box
    radii = C.density_ranks(x, k=10)
    dense = x[np.argsort(radii, kind="stable")[: r1.n_dense]]
    assert C.measure(r1, dense).n_adv == 0
    r3 = C.fit_rectangles(x, key=jax.random.key(1), alpha=0.1, eps=0.1, n_regions=3, q=r1.q, radii=radii)
    assert r3.key_data != r1.key_data
    json.dumps(r1.to_dict())


def test_rectangle_risks_non_increasing_in_q():
    # Paper Fig. 1(a): risk and adversarial risk fall as q grows (one cluster of data, T = 1).
    x = blobs(5, 600, 4, [[0.0] * 4], scale=0.2)
    radii = C.density_ranks(x, k=20)
    risks, advs = [], []
    for q in np.linspace(0.1, 0.95, 12):
        reg = C.fit_rectangles(x, key=jax.random.key(0), alpha=0.05, eps=0.05, n_regions=1, q=float(q), radii=radii)
        m = C.measure(reg, x)
        risks.append(m.risk)
        advs.append(m.adv_risk)
        assert m.adv_risk <= 1 - reg.n_dense / len(x) + 1e-12
        assert m.adv_risk >= m.risk
    assert np.all(np.diff(risks) <= 0) and np.all(np.diff(advs) <= 0)
    assert risks[0] > risks[-1]


def test_kmedians_option_runs_and_boxes_contain_members():
    x = blobs(6, 300, 3, [[0, 0, 0], [1, 1, 1]], scale=0.1)
    reg = C.fit_rectangles(x, key=jax.random.key(0), alpha=0.1, eps=0.05, n_regions=2, update="median", k=5)
    assert reg.update == "median" and np.isfinite(reg.centers).all()
    assert C.measure(reg, x).risk >= 0.1


# ---------------------------------------------------------------------------
# l2: greedy balls
# ---------------------------------------------------------------------------


def _compare_balls(reg, ref):
    assert len(ref) == reg.radii.size
    for t, b in enumerate(ref):
        assert (int(reg.objective[t]), int(reg.center_indices[t]), int(reg.m[t])) == (b["obj"], b["c"], b["m"]), t
        assert reg.radii[t] == pytest.approx(b["r"], rel=1e-12)
        assert (int(reg.covered[t]), int(reg.expanded[t])) == (b["cov"], b["exp"]), t


@pytest.mark.parametrize("list_size", [pytest.param(1, marks=pytest.mark.slow), 64])
def test_greedy_balls_equal_bruteforce_continuous(list_size):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 1, (70, 3)), rng.normal(3, 0.5, (50, 3))]).astype(np.float32)
    kw = dict(alpha=0.15, eps=0.4, T=4, delta=0.1)
    ref = brute_greedy_balls(x, **kw)
    reg = C.fit_balls(x, alpha=0.15, eps=0.4, n_regions=4, delta=0.1, list_size=list_size, precision="float64",
                      block_size=32, exact_block=8, margin=0.0)
    _compare_balls(reg, ref)
    m = C.measure(reg, x)
    assert (m.n_risk, m.n_adv) == (ref[-1]["cov"], ref[-1]["exp"])
    assert m.n_risk >= reg.n_target and m.adv_risk >= m.risk


@pytest.mark.parametrize("precision", [pytest.param("float64", marks=pytest.mark.slow), "float32"])
def test_greedy_balls_count_bounds_prune_without_changing_the_balls(precision):
    # Large eps and short lists: the lists alone prune little; the counting tables must prune
    # more and still give exactly the brute-force greedy balls.
    rng = np.random.default_rng(17)
    x = np.concatenate([rng.normal(0, 1, (110, 4)), rng.normal(2.5, 0.6, (70, 4))]).astype(np.float32)
    ref = brute_greedy_balls(x, alpha=0.1, eps=1.5, T=4, delta=0.1)
    kw = dict(alpha=0.1, eps=1.5, n_regions=4, delta=0.1, list_size=20, precision=precision, block_size=64,
              exact_block=4, margin=0.0)
    plain = C.fit_balls(x, count_bounds=False, **kw)
    tight = C.fit_balls(x, count_bounds=True, count_grid=256, **kw)
    assert tight.count_bounds and not plain.count_bounds
    _compare_balls(tight, ref)
    _compare_balls(plain, ref)
    assert tight.n_exact.sum() < plain.n_exact.sum()


def test_greedy_balls_equal_bruteforce_with_ties_float32():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 4, (90, 3)).astype(np.float32)  # duplicates and equal distances
    ref = brute_greedy_balls(x, alpha=0.2, eps=0.37, T=3, delta=0.05, margin=0.5)  # the default fit target
    reg = C.fit_balls(x, alpha=0.2, eps=0.37, n_regions=3, delta=0.05, list_size=30, block_size=16)
    assert reg.n_target == math.ceil(90 * (0.2 + 0.5 / math.sqrt(90)) * 1.05 - 1e-9)
    _compare_balls(reg, ref)
    json.dumps(reg.to_dict())


def test_ball_objective_jit_equals_eager():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(24, 2))
    D = cdist(x[:6], x)
    order = np.lexsort((np.broadcast_to(np.arange(24), D.shape), D), axis=1)
    dist = np.take_along_axis(D, order, 1)
    covered = rng.random(24) < 0.2
    expanded = covered | (rng.random(24) < 0.2)
    out1 = C.ball_objective(dist, order, covered, expanded, lo=2, hi=9, eps=0.3)
    with jax.disable_jit():
        out2 = C.ball_objective(dist, order, covered, expanded, lo=2, hi=9, eps=0.3)
    for a, b in zip(out1, out2):
        np.testing.assert_array_equal(a, b)
    # brute force of the same objective
    for i in range(6):
        unc = order[i][~covered[order[i]]]
        vals = []
        for m in range(2, 10):
            r = D[i, unc[m - 1]]
            vals.append(np.sum(~expanded & (D[i] <= r + 0.3)) - np.sum(~covered & (D[i] <= r)))
        assert out1[0][i] == min(vals) and out1[1][i] == 2 + int(np.argmin(vals))
    # truncated lists give lower bounds that never exceed the exact values
    b_t, _, l_t = C.ball_objective(dist[:, :12], order[:, :12], covered, expanded, lo=2, hi=9, eps=0.3,
                                   complete=False)
    assert np.all(np.minimum(b_t, l_t) <= out1[0])


# ---------------------------------------------------------------------------
# Half-space baseline
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nrm", ["l2", "linf"])
def test_halfspace_matches_pca_and_dual_norm_shift(nrm):
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(500, 6)) * np.array([3, 1, 1, 0.5, 0.5, 0.2])).astype(np.float32)
    reg = C.fit_halfspace(x, alpha=0.05, eps=0.3, norm=nrm)
    xc = x - x.mean(0)
    w_ref = np.linalg.svd(xc, full_matrices=False)[2][0]
    assert abs(abs(float(reg.w @ w_ref)) - 1) < 1e-8
    dual = np.sum(np.abs(reg.w)) if nrm == "linf" else np.linalg.norm(reg.w)
    assert reg.shift == pytest.approx(0.3 * dual)
    proj = x.astype(np.float64) @ reg.w
    m = C.measure(reg, x)
    assert m.n_risk == np.sum(proj > reg.b) == 25
    assert m.n_adv == np.sum(proj > reg.b - 0.3 * dual)
    assert m.adv_risk >= m.risk


# ---------------------------------------------------------------------------
# Soundness: uniform cube (Ding et al. Theorem 2.1)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.15])
def test_estimates_respect_cube_isoperimetry(eps):
    kf, kt = jax.random.split(jax.random.key(12))
    x = data.uniform_cube(800, key=kf, d=2)
    xt = data.uniform_cube(20000, key=kt, d=2)
    regions = [
        C.fit_rectangles(x, key=jax.random.key(0), alpha=0.5, eps=eps, n_regions=3, k=10),
        C.fit_balls(x, alpha=0.5, eps=eps, n_regions=3, delta=0.02),
        C.fit_halfspace(x, alpha=0.5, eps=eps, norm="l2"),
        C.fit_halfspace(x, alpha=0.5, eps=eps, norm="linf"),
    ]
    for reg in regions:
        m = C.measure(reg, xt)
        assert m.risk_ci[0] > 0.3, type(reg).__name__
        # l_inf expansions contain l2 expansions, so the l2 bound applies to every region here
        assert m.adv_risk_ci[1] >= ding_cube_bound(m.risk_ci[0], eps), type(reg).__name__


# ---------------------------------------------------------------------------
# Protocol, records, bad input
# ---------------------------------------------------------------------------


@pytest.mark.slow  # heavy: run with -m slow
def test_protocols_and_records_are_json(digits_train):
    x = digits_train.flat()
    xt = data.load("digits", split="test").flat()
    s_h = C.make_splits(x, xt, key=jax.random.key(0), protocol="honest", select_size=150)
    assert s_h.select.shape[0] == 150 and s_h.report.shape[0] == xt.shape[0] - 150
    assert not set(s_h.select_indices) & set(s_h.report_indices)
    s_p = C.make_splits(x, xt, key=jax.random.key(0), protocol="paper")
    assert s_p.select is s_p.report
    recs, reg = C.run_rectangles(s_h, key=jax.random.key(1), alpha=0.05, eps=0.1, n_regions=[3, 5], n_repeats=2,
                                 dataset="digits", k=10, max_iter=10)
    assert [r.split for r in recs] == ["fit", "select", "report"]
    assert len(recs[0].repeats) == 2 and recs[0].T in (3, 5)
    rb, _ = C.run_balls(s_p, alpha=0.02, eps=1.0, n_regions=2, dataset="digits", list_size=100)
    rh, _ = C.run_halfspace(s_p, alpha=0.05, eps=1.0, norm="l2", dataset="digits")
    for r in recs + rb + rh:
        d = json.loads(json.dumps(r.to_dict()))
        for f in ("norm", "eps", "alpha", "T", "protocol", "split", "risk", "adv_risk", "risk_ci", "adv_risk_ci",
                  "seconds", "n"):
            assert f in d
        assert d["adv_risk"] >= d["risk"]
    assert [r.split for r in rb] == ["train", "test"]


def test_bad_input_raises_named_errors():
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    key = jax.random.key(0)
    for a in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="^alpha"):
            C.fit_rectangles(x, key=key, alpha=a, eps=0.1, n_regions=2, k=5)
        with pytest.raises(ValueError, match="^alpha"):
            C.fit_balls(x, alpha=a, eps=0.1, n_regions=2)
        with pytest.raises(ValueError, match="^alpha"):
            C.fit_halfspace(x, alpha=a, eps=0.1, norm="l2")
    with pytest.raises(ValueError, match="^eps"):
        C.fit_rectangles(x, key=key, alpha=0.1, eps=-0.1, n_regions=2, k=5)
    with pytest.raises(ValueError, match="^eps"):
        C.fit_balls(x, alpha=0.1, eps=-1.0, n_regions=2)
    with pytest.raises(ValueError, match="^n_regions"):
        C.fit_rectangles(x, key=key, alpha=0.1, eps=0.1, n_regions=0, k=5)
    with pytest.raises(ValueError, match="^n_regions"):
        C.fit_balls(x, alpha=0.1, eps=0.1, n_regions=0)
    with pytest.raises(ValueError, match="^k"):
        C.fit_rectangles(x, key=key, alpha=0.1, eps=0.1, n_regions=2, k=30)
    with pytest.raises(ValueError, match="^k"):
        C.density_ranks(x, k=50)
    with pytest.raises(ValueError, match="^norm"):
        C.fit_halfspace(x, alpha=0.1, eps=0.1, norm="l0.5")
    with pytest.raises(ValueError, match="^norm"):
        C.density_ranks(x, k=5, norm="cosine")
    with pytest.raises(ValueError, match="^x"):
        C.fit_balls(np.full((5, 2), np.nan), alpha=0.1, eps=0.1, n_regions=1)
    with pytest.raises(ValueError, match="^alpha"):
        C.fit_balls(x, alpha=0.99, eps=0.1, n_regions=1, delta=0.5)  # target coverage >= N
    with pytest.raises(ValueError, match="^key"):
        C.fit_rectangles(x, key=0, alpha=0.1, eps=0.1, n_regions=2, k=5)
    with pytest.raises(ValueError, match="^protocol"):
        C.make_splits(x, x, key=key, protocol="best")
    with pytest.raises(ValueError, match="^region"):
        C.measure(object(), x)


def test_single_point_and_tiny_sets():
    x1 = np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="^k"):
        C.density_ranks(x1, k=1)
    x2 = np.array([[0, 0], [1, 1]], np.float32)
    with pytest.raises(ValueError, match="^n_regions"):  # more boxes than points
        C.fit_rectangles(x2, key=jax.random.key(0), alpha=0.5, eps=0.1, n_regions=3, k=1, q=0.5)
    x3 = np.array([[0, 0], [1, 1], [3, 3]], np.float32)
    reg = C.fit_rectangles(x3, key=jax.random.key(0), alpha=0.5, eps=0.1, n_regions=3, k=1, q=0.5)
    assert reg.centers.shape == (1, 2)  # fewer dense points than T: one box
    m = C.measure(reg, x3)
    assert (m.n_risk, m.n_adv) == (2, 2)
    reg0 = C.fit_rectangles(x2, key=jax.random.key(0), alpha=0.5, eps=0.1, n_regions=1, k=1, q=0.0)
    assert C.measure(reg0, x2).risk == 1.0  # no box: everything is in the error region


@pytest.mark.slow  # heavy: run with -m slow
def test_real_mnist_subset_sanity(mnist_train, mnist_test):
    x = mnist_train.flat()[:1500]
    xt = mnist_test.flat()[:1000]
    reg = C.fit_rectangles(x, key=jax.random.key(0), alpha=0.05, eps=0.3, n_regions=5, k=10)
    m = C.measure(reg, x)
    assert m.risk >= 0.05 and m.adv_risk >= m.risk
    balls = C.fit_balls(x, alpha=0.05, eps=1.58, n_regions=3, list_size=256)
    mb = C.measure(balls, x)
    assert mb.n_risk == balls.covered[-1] and mb.n_adv == balls.expanded[-1]
    assert C.measure(balls, xt).adv_risk >= C.measure(balls, xt).risk


@pytest.mark.slow
def test_greedy_balls_equal_bruteforce_larger():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.normal(0, 1, (200, 5)), rng.normal(2, 0.3, (150, 5))]).astype(np.float32)
    ref = brute_greedy_balls(x, alpha=0.1, eps=0.5, T=6, delta=0.2)
    reg = C.fit_balls(x, alpha=0.1, eps=0.5, n_regions=6, delta=0.2, list_size=45, precision="float64", margin=0.0)
    _compare_balls(reg, ref)


def test_records_measure_one_fit_under_both_protocols():
    rng = np.random.default_rng(21)
    train = rng.normal(size=(300, 3)).astype(np.float32)
    test = rng.normal(size=(200, 3)).astype(np.float32)
    reg = C.fit_halfspace(train, alpha=0.1, eps=0.2, norm="l2")
    for protocol, names in (("paper", ["train", "test"]), ("honest", ["fit", "select", "report"])):
        splits = C.make_splits(train, test, key=jax.random.key(0), protocol=protocol)
        recs = C.records(reg, splits, dataset="toy", seconds=1.5, extra={"a": 1})
        assert [r.split for r in recs] == names
        for r, xs in zip(recs, [splits.fit, splits.select, splits.report] if protocol == "honest"
                         else [splits.fit, splits.report]):
            m = C.measure(reg, xs)
            assert (r.risk, r.adv_risk, r.n) == (m.risk, m.adv_risk, xs.shape[0])
            assert r.method == "halfspace" and r.extra == {"a": 1} and r.seconds == 1.5
        json.dumps([r.to_dict() for r in recs])
    with pytest.raises(ValueError, match="regions"):
        C.records([], splits)
    with pytest.raises(ValueError, match="splits"):
        C.records(reg, (train, test))


# ---------------------------------------------------------------------------
# estimate: method from the norm under the protocol
# ---------------------------------------------------------------------------


def _same_records(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        da, db = ra.to_dict(), rb.to_dict()
        da.pop("seconds"), db.pop("seconds")
        assert da == db


def test_estimate_is_the_composition_it_replaces():
    rng = np.random.default_rng(4)
    x = rng.random((160, 6)).astype(np.float32)
    xt = rng.random((80, 6)).astype(np.float32)
    key = jax.random.key(7)
    assert [C.method_for(n) for n in ("linf", "l2", "l1", 3)] == ["rectangles", "balls", "halfspace", "halfspace"]
    splits = C.make_splits(x, xt, key=key, protocol="honest")
    # l_inf: rectangles with the fit key fold_in(key, 1) and k = min(50, N - 1)
    est = C.estimate(x, xt, norm="linf", eps=0.1, alpha=0.1, n_regions=[2, 3], key=key, n_repeats=2, max_iter=10)
    ref, _ = C.run_rectangles(splits, key=jax.random.fold_in(key, 1), alpha=0.1, eps=0.1, n_regions=[2, 3],
                              n_repeats=2, k=50, max_iter=10)
    _same_records(est.records, ref)
    assert est.method == "rectangles" and est.report.split == "report" and est.report is est.records[-1]
    np.testing.assert_array_equal(est.splits.report_indices, splits.report_indices)
    # an explicit fit key
    k3 = jax.random.key(11)
    est3 = C.estimate(x, xt, norm="linf", eps=0.1, alpha=0.1, n_regions=2, key=key, fit_key=k3, n_repeats=1,
                      max_iter=10)
    ref3, _ = C.run_rectangles(splits, key=k3, alpha=0.1, eps=0.1, n_regions=2, n_repeats=1, k=50, max_iter=10)
    _same_records(est3.records, ref3)
    # l2: balls; other norms: the half-space
    est = C.estimate(x, xt, norm=2, eps=0.2, alpha=0.1, n_regions=2, key=key)
    ref, _ = C.run_balls(splits, alpha=0.1, eps=0.2, n_regions=2, list_size=159)
    _same_records(est.records, ref)
    assert est.method == "balls" and isinstance(est.region, C.Balls)
    est = C.estimate(x, xt, norm="l1", eps=0.2, alpha=0.1, n_regions=2, key=key, protocol="paper")
    ref, _ = C.run_halfspace(C.make_splits(x, xt, key=key, protocol="paper"), alpha=0.1, eps=0.2, norm="l1")
    _same_records(est.records, ref)
    assert est.report.split == "test"
    d = json.loads(json.dumps(est.to_dict()))
    assert d["method"] == "halfspace" and d["norm"] == "l1" and len(d["records"]) == 2


def test_estimate_rejects_a_method_of_another_norm():
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="method"):
        C.estimate(x, x, norm="l2", eps=0.1, alpha=0.1, n_regions=2, key=jax.random.key(0), method="rectangles")
    with pytest.raises(ValueError, match="method"):
        C.estimate(x, x, norm="l2", eps=0.1, alpha=0.1, n_regions=2, key=jax.random.key(0), method="voronoi")
    with pytest.raises(TypeError):
        C.estimate(x, x, jax.random.key(0), norm="l2", eps=0.1, alpha=0.1, n_regions=2)


# ---------------------------------------------------------------------------
# The validity rule (Prescott et al. margin, Clopper-Pearson selection count)
# ---------------------------------------------------------------------------


def brute_select_count(alpha, n, confidence):
    """Smallest k whose Clopper-Pearson lower end is >= alpha, by scanning every k (the independent reference)."""
    from scipy.stats import beta

    if confidence is None:
        return max(1, math.ceil(n * alpha - 1e-9))
    for k in range(1, n + 1):
        if beta.ppf((1 - confidence) / 2, k, n - k + 1) >= alpha:
            return k
    return n + 1


@pytest.mark.parametrize("n", [1, 2, 10, 137, 5000])
@pytest.mark.parametrize("confidence", [None, 0.9, 0.95])
def test_fit_target_and_select_count_match_closed_form_and_scan(n, confidence):
    for alpha in (0.01, 0.3):
        assert C.fit_target(alpha, n) == pytest.approx(alpha + 0.5 / math.sqrt(n))
        assert C.fit_target(alpha, n, margin=0.0) == alpha
        k = C.select_count(alpha, n, confidence=confidence)
        assert k == brute_select_count(alpha, n, confidence)
        if confidence is not None and k <= n:
            assert C.clopper_pearson(k, n, confidence=confidence)[0] >= alpha
            if k > 1:
                assert C.clopper_pearson(k - 1, n, confidence=confidence)[0] < alpha


def _shrunk(x, f):
    """Points pulled towards their mean: the upper tails of every projection get thinner."""
    return (x.mean(0) + f * (x - x.mean(0))).astype(np.float32)


def test_naive_target_fails_where_the_rule_holds():
    # The held-out sample is the fit sample pulled 3% towards its mean: a region fitted to exactly alpha
    # of the fit sample (the authors' rule) covers less than alpha of it; the rule lowers the threshold /
    # grows the radii until the selection split passes, so the reported (= selection, paper protocol) split
    # keeps risk >= alpha.
    rng = np.random.default_rng(30)
    x = (rng.normal(size=(600, 4)) * np.array([2.0, 1.0, 0.5, 0.3])).astype(np.float32)
    xt = _shrunk(x, 0.97)
    alpha = 0.05
    splits = C.make_splits(x, xt, key=jax.random.key(0), protocol="paper")
    naive = C.fit_halfspace(x, alpha=alpha, eps=0.2, norm="l2")
    assert C.measure(naive, xt).risk < alpha
    for run in (C.run_halfspace, C.run_halfspaces):
        recs, reg = run(splits, alpha=alpha, eps=0.2, norm="l2")
        test = recs[-1]
        assert test.split == "test" and test.valid and test.risk >= alpha
        k = C.select_count(alpha, len(xt))
        assert C.measure(reg, xt).n_risk >= k
        assert recs[0].risk >= C.fit_target(alpha, len(x))
        assert test.rule["k_select"] == k
    recs_naive, _ = C.run_halfspace(splits, alpha=alpha, eps=0.2, norm="l2", margin=0.0, confidence=None)
    assert recs_naive[-1].risk >= alpha  # the authors' rule still asks for risk >= alpha on the selection split
    balls = C.fit_balls(x, alpha=alpha, eps=0.2, n_regions=3, delta=0.0, margin=0.0, precision="float64")
    xb = (x + 0.2 * np.random.default_rng(39).normal(size=x.shape)).astype(np.float32)
    assert C.measure(balls, xb).risk < alpha  # jittered held-out points leave the tight balls
    recs, reg = C.run_balls(C.make_splits(x, xb, key=jax.random.key(0), protocol="paper"),
                            alpha=alpha, eps=0.2, n_regions=3, delta=0.0, precision="float64")
    assert reg.inflation > 0 and recs[-1].valid and recs[-1].risk >= alpha


def test_inflate_balls_is_the_smallest_growth():
    rng = np.random.default_rng(31)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    xs = (1.3 * rng.normal(size=(200, 3))).astype(np.float32)
    reg = C.fit_balls(x, alpha=0.05, eps=0.1, n_regions=2, margin=0.0, precision="float64")
    out = C.inflate_balls(reg, x, xs)
    k = C.select_count(0.05, 200)
    assert out.inflation > 0
    np.testing.assert_allclose(out.radii - reg.radii, out.inflation)
    assert C.measure(out, xs).n_risk >= k
    smaller = dataclasses.replace(reg, radii=reg.radii + out.inflation * (1 - 1e-9))
    assert C.measure(smaller, xs).n_risk < k
    # brute force: the k-th smallest gap to the union of balls
    gap = np.min(cdist(xs.astype(np.float64), reg.centers) - reg.radii[None, :], axis=1)
    assert out.inflation == pytest.approx(np.sort(gap)[k - 1], rel=1e-9)
    assert C.inflate_balls(out, x, xs) is out  # already passes: unchanged


def test_every_repeat_meets_the_rule_and_records_mark_validity():
    x = blobs(32, 500, 4, [[0] * 4, [1] * 4, [0, 1, 0, 1]], scale=0.2)
    xt = blobs(33, 400, 4, [[0] * 4, [1] * 4, [0, 1, 0, 1]], scale=0.2)
    alpha = 0.05
    for protocol in ("paper", "honest"):
        splits = C.make_splits(x, xt, key=jax.random.key(1), protocol=protocol)
        recs, _ = C.run_rectangles(splits, key=jax.random.key(2), alpha=alpha, eps=0.1, n_regions=3, n_repeats=3,
                                   k=10, max_iter=10)
        rule = recs[0].rule
        assert rule["k_fit"] == math.ceil(len(x) * C.fit_target(alpha, len(x)) - 1e-9)
        sel = next(r for r in recs if r.split in ("select", "test"))
        for rep in recs[0].repeats:
            assert rep["n_risk"] >= rule["k_fit"] and rep["q"] <= recs[0].q
        for rep in sel.repeats:
            assert rep["n_risk"] >= rule["k_select"]
        for r in recs:
            risks = [rep["risk"] for rep in r.repeats]
            assert r.valid == (min(risks) >= alpha) and r.n_valid == sum(v >= alpha for v in risks)
            assert [rep["valid"] for rep in r.repeats] == [v >= alpha for v in risks]
            assert r.min_risk == min(risks)
        assert sel.valid  # the selection split passes by construction


def test_estimate_never_reports_an_invalid_record_as_the_estimate():
    rng = np.random.default_rng(34)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    xt = rng.normal(size=(400, 3)).astype(np.float32)
    seen = set()
    for seed in range(8):
        # the authors' rule (no margin): the report split holds less than alpha about half the time
        est = C.estimate(x, xt, norm="l2", eps=0.2, alpha=0.1, n_regions=1, key=jax.random.key(seed),
                         method="halfspace", margin=0.0, confidence=None)
        rep = est.report
        assert est.valid == rep.valid == (rep.risk >= 0.1)
        assert (est.value is None) == (not est.valid)
        assert (est.reason == "") == est.valid
        if est.valid:
            assert est.value == rep.adv_risk
        else:
            assert "alpha" in est.reason and est.to_dict()["value"] is None
        seen.add(est.valid)
    assert seen == {True, False}  # both cases occurred


def test_best_estimate_is_the_lowest_valid_method_on_the_selection_split():
    rng = np.random.default_rng(35)
    x = (rng.normal(size=(400, 5)) * np.array([2.0, 1.0, 1.0, 0.5, 0.2])).astype(np.float32)
    xt = (rng.normal(size=(300, 5)) * np.array([2.0, 1.0, 1.0, 0.5, 0.2])).astype(np.float32)
    key = jax.random.key(3)
    best = C.estimate(x, xt, norm="l2", eps=0.3, alpha=0.05, n_regions=[2, 3], key=key, method="best")
    assert C.methods_for("l2") == ("balls", "halfspaces") and C.methods_for("l1") == ("halfspaces",)
    cands = best.candidates
    assert [c.method for c in cands] == ["balls", "halfspaces"]
    for c, m in zip(cands, ["balls", "halfspaces"]):
        ref = C.estimate(x, xt, norm="l2", eps=0.3, alpha=0.05, n_regions=[2, 3], key=key, method=m)
        _same_records(c.records, ref.records)
    valid = [c for c in cands if c.valid]
    assert valid and best.valid
    sel = {c.method: next(r for r in c.records if r.split == "select").adv_risk for c in valid}
    assert best.method == min(sel, key=lambda m: (sel[m], m != "balls"))
    assert best.value == best.report.adv_risk
    json.dumps(best.to_dict())


# ---------------------------------------------------------------------------
# The half-space search of Prescott et al. (2021)
# ---------------------------------------------------------------------------


def brute_halfspaces(x, xs, *, alpha, eps, norm, n_components, powers, margin, confidence):
    """Every candidate direction scored with explicit loops (SVD for the principal directions)."""
    n, ns = len(x), len(xs)
    xd, xsd = x.astype(np.float64), xs.astype(np.float64)
    V = np.linalg.svd(xd - xd.mean(0), full_matrices=False)[2][:n_components]
    dual = {"l2": 2, "linf": 1}[norm]
    k_fit = min(math.ceil(n * (alpha + margin / math.sqrt(n)) - 1e-9), n)
    k_sel = min(brute_select_count(alpha, ns, confidence), ns)

    def thresh(proj, k):
        top = sorted(proj, reverse=True)[k - 1]
        below = [v for v in proj if v < top]
        return max(below) if below else -np.inf

    out = []
    for i, v in enumerate(V):
        for p in powers:
            u = np.sign(v) * np.abs(v) ** p
            u = u / np.linalg.norm(u, ord=dual)
            for s in (1.0, -1.0):  # SVD signs are arbitrary: both signs are candidates either way
                w = s * u
                b = min(thresh(xd @ w, k_fit), thresh(xsd @ w, k_sel))
                adv = sum(1 for xi in xsd if xi @ w > b - eps)
                out.append((adv, i, p, w, b))
    return out


@pytest.mark.parametrize("nrm", ["l2", "linf"])
def test_halfspaces_match_bruteforce_and_expansion(nrm):
    rng = np.random.default_rng(36)
    scale = np.array([3.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    x = (rng.normal(size=(250, 6)) * scale).astype(np.float32)
    xs = (rng.normal(size=(150, 6)) * scale).astype(np.float32)
    kw = dict(alpha=0.08, eps=0.4, norm=nrm)
    reg = C.fit_halfspaces(x, x_select=xs, n_components=3, powers=(1.0, 2.0, 3.0), **kw)
    ref = brute_halfspaces(x, xs, n_components=3, powers=(1.0, 2.0, 3.0), margin=0.5, confidence=0.95, **kw)
    best_adv = min(r[0] for r in ref)
    m = C.measure(reg, xs)
    assert m.n_adv == best_adv and reg.n_candidates == 18
    # the chosen direction is a brute-force candidate with the same score, threshold and counts
    match = [r for r in ref if r[0] == best_adv and np.allclose(r[3], reg.w, atol=1e-10)]
    assert match, "chosen direction is not a best brute-force candidate"
    assert (match[0][1], match[0][2]) == (reg.component, reg.power) and reg.b == pytest.approx(match[0][4])
    dual = np.sum(np.abs(reg.w)) if nrm == "linf" else np.linalg.norm(reg.w)
    assert dual == pytest.approx(1.0) and reg.shift == pytest.approx(0.4)
    # expansion by explicit perturbations: x + delta with ||delta|| = eps enters E iff w.x > b - eps (Hoelder)
    step = 0.4 * (np.sign(reg.w) if nrm == "linf" else reg.w / np.linalg.norm(reg.w))
    assert np.linalg.norm(step, ord=np.inf if nrm == "linf" else 2) == pytest.approx(0.4)
    xsd = xs.astype(np.float64)
    reach = (xsd + step) @ reg.w > reg.b
    np.testing.assert_array_equal(reach, xsd @ reg.w > reg.b - reg.shift + 1e-12 * 0)
    assert int(reach.sum()) == m.n_adv
    # the rule: fit target on x, Clopper-Pearson count on x_select
    assert C.measure(reg, x).n_risk >= math.ceil(250 * C.fit_target(0.08, 250) - 1e-9)
    assert m.n_risk >= C.select_count(0.08, 150)


def test_halfspace_directions_are_signed_powers_with_unit_dual_norm():
    rng = np.random.default_rng(37)
    x = (rng.normal(size=(120, 4)) * np.array([2.0, 1.0, 0.5, 0.2])).astype(np.float32)
    W, meta = C.halfspace_directions(x, norm="linf", n_components=2, powers=(1.0, 3.0))
    V = np.linalg.svd(x.astype(np.float64) - x.mean(0), full_matrices=False)[2][:2]
    assert W.shape == (4, 8) and meta.shape == (8, 3)
    np.testing.assert_allclose(np.sum(np.abs(W), axis=0), 1.0)  # dual of linf is l1
    for j, (i, p, s) in enumerate(meta):
        u = np.sign(V[int(i)]) * np.abs(V[int(i)]) ** p
        u = u / np.sum(np.abs(u))
        assert np.allclose(W[:, j], u) or np.allclose(W[:, j], -u)
        if j % 2:
            np.testing.assert_array_equal(W[:, j], -W[:, j - 1])  # both signs
    # one point: no spread, still finite directions and the whole space at k = 1
    one = C.fit_halfspaces(x[:1], alpha=0.5, eps=0.1, norm="l2", n_components=1)
    assert np.isfinite(one.w).all() and C.measure(one, x[:1]).n_risk == 1


def test_halfspaces_estimate_is_run_halfspaces():
    rng = np.random.default_rng(38)
    x = rng.random((200, 5)).astype(np.float32)
    xt = rng.random((120, 5)).astype(np.float32)
    key = jax.random.key(5)
    est = C.estimate(x, xt, norm="linf", eps=0.05, alpha=0.05, n_regions=1, key=key, method="halfspaces",
                     n_components=3, powers=(1.0, 2.0))
    ref, reg = C.run_halfspaces(C.make_splits(x, xt, key=key), alpha=0.05, eps=0.05, norm="linf", n_components=3,
                                powers=(1.0, 2.0))
    _same_records(est.records, ref)
    assert est.method == "halfspaces" and [r.method for r in est.records] == ["halfspaces"] * 3
    np.testing.assert_array_equal(est.region.w, reg.w)
