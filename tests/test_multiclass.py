"""Tests for the multi-class optimal 0-1 loss (Dai et al. 2023): conflict hypergraphs and L*(2), L*(3)."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

from jaxbound import bounds

# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def dense_lp_loss(graph):
    """L* by HiGHS' interior point method on the explicit dense constraint matrix (edges and hyperedges)."""
    n = graph.n
    rows = [np.isin(np.arange(n), e).astype(float) for e in list(graph.edges) + list(graph.hyperedges)]
    a = np.array(rows) if rows else np.zeros((0, n))
    p = graph.weights.astype(float) / graph.weights.astype(float).sum()
    if a.shape[0] == 0:
        return 0.0
    res = linprog(-p, A_ub=a, b_ub=np.ones(a.shape[0]), bounds=[(0, 1)] * n, method="highs-ipm")
    assert res.status == 0
    return 1.0 + res.fun


def dual_lp_loss_cvxpy(graph):
    """L* from the dual LP (min sum lam + sum mu s.t. M^T lam + mu >= p) with a conic solver."""
    cp = pytest.importorskip("cvxpy")
    n = graph.n
    cons = list(graph.edges) + list(graph.hyperedges)
    m = np.zeros((len(cons), n))
    for i, e in enumerate(cons):
        m[i, e] = 1.0
    lam = cp.Variable(len(cons), nonneg=True) if cons else None
    mu = cp.Variable(n, nonneg=True)
    load = mu + (m.T @ lam if cons else 0)
    obj = cp.sum(mu) + (cp.sum(lam) if cons else 0)
    prob = cp.Problem(cp.Minimize(obj), [load >= graph.p])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return 1.0 - prob.value


def half_integral_brute(graph):
    """L*(2) by exhaustive search over q in {0, 1/2, 1}^n (the LP optimum is half-integral)."""
    n = graph.n
    grid = np.array(list(itertools.product([0.0, 0.5, 1.0], repeat=n)))
    e = graph.edges
    ok = np.all(grid[:, e[:, 0]] + grid[:, e[:, 1]] <= 1.0, axis=1) if e.size else np.ones(len(grid), bool)
    return 1.0 - float((grid[ok] @ graph.p).max())


def meb_radius(pts):
    """Minimum enclosing ball radius of three points: circumcentre by a linear solve if it lies inside."""
    a, b, c = pts
    sides = [np.linalg.norm(b - c), np.linalg.norm(a - c), np.linalg.norm(a - b)]
    # circumcentre o = a + s (b - a) + t (c - a) with |o - a| = |o - b| = |o - c|
    u, v = b - a, c - a
    gram = np.array([[u @ u, u @ v], [u @ v, v @ v]])
    if abs(np.linalg.det(gram)) < 1e-12 * (u @ u) * (v @ v) + 1e-300:
        return max(sides) / 2
    s, t = np.linalg.solve(gram, 0.5 * np.array([u @ u, v @ v]))
    if s >= 0 and t >= 0 and s + t <= 1:  # inside: acute (right: on the boundary, same radius)
        return float(np.linalg.norm(s * u + t * v))
    return max(sides) / 2


def random_hypergraph(rng, n, k, p_edge, p_hyper, weights=None):
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if y[i] != y[j] and rng.random() < p_edge]
    triples = [t for t in itertools.combinations(range(n), 3) if len(set(y[list(t)])) == 3
               and rng.random() < p_hyper]
    return bounds.hypergraph_from_edges(y, np.array(pairs, np.int64).reshape(-1, 2),
                                        np.array(triples, np.int64).reshape(-1, 3), weights=weights)


# ---------------------------------------------------------------------------
# pair edges and hyperedges
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,metric", [("l2", "euclidean"), ("linf", "chebyshev"), ("l1", "cityblock")])
def test_pair_edges_match_brute_force(norm, metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4))
    y = rng.integers(0, 4, 60)
    eps = 0.6
    g = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm)
    d = cdist(x, x, metric=metric)
    ref = np.argwhere(np.triu((d <= 2 * eps) & (y[:, None] != y[None, :]), 1))
    assert np.array_equal(g.edges, ref)
    assert g.edges.dtype == np.int64 and g.degree == 2 and g.num_hyperedges == 0


def test_edges_closed_at_two_eps():
    # integer coordinates: distances exactly 2 (l2, linf) are edges at eps = 1, not at the next smaller eps
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    y = np.array([0, 1, 2, 0])
    g = bounds.conflict_hypergraph(x, y, eps=1.0, norm="l2")
    assert g.edges.tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]
    g = bounds.conflict_hypergraph(x, y, eps=np.nextafter(1.0, 0.0), norm="l2")
    assert g.num_edges == 0
    g = bounds.conflict_hypergraph(x, y, eps=1.0, norm="linf")
    assert g.edges.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]


def test_l2_triangle_cases():
    # right angle (6-8-10): the enclosing ball is half the hypotenuse, exactly eps = 5
    right = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    y = np.array([0, 1, 2])
    assert bounds.conflict_hypergraph(right, y, eps=5.0, norm="l2", degree=3).hyperedges.tolist() == [[0, 1, 2]]
    # obtuse: half the longest side (5), not the circumradius (13)
    obtuse = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 1.0]])
    assert bounds.conflict_hypergraph(obtuse, y, eps=5.0, norm="l2", degree=3).num_hyperedges == 1
    # acute, circumradius exactly 5 (points on the circle of radius 5): closed threshold decided exactly
    acute = np.array([[5.0, 0.0], [-3.0, 4.0], [-3.0, -4.0]])
    g = bounds.conflict_hypergraph(acute, y, eps=5.0, norm="l2", degree=3)
    assert g.num_hyperedges == 1 and g.num_triangles == 1
    g = bounds.conflict_hypergraph(acute, y, eps=np.nextafter(5.0, 0.0), norm="l2", degree=3)
    assert g.num_edges == 3 and g.num_triangles == 1 and g.num_hyperedges == 0
    # equilateral of side 2: edges from eps = 1, hyperedge only from eps = 2 / sqrt(3)
    eq = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)]])
    g = bounds.conflict_hypergraph(eq, y, eps=1.1, norm="l2", degree=3)
    assert g.num_edges == 3 and g.num_hyperedges == 0
    assert bounds.conflict_hypergraph(eq, y, eps=1.16, norm="l2", degree=3).num_hyperedges == 1
    # linf: the same equilateral triangle is a hyperedge as soon as it is a triangle
    assert bounds.conflict_hypergraph(eq, y, eps=1.0, norm="linf", degree=3).num_hyperedges == 1


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hyperedges_match_brute_force_over_all_triples(norm):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(45, 3))
    y = rng.integers(0, 4, 45)
    eps = 0.75
    g = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm, degree=3)
    d = cdist(x, x, metric="euclidean" if norm == "l2" else "chebyshev")
    ref, n_tri = [], 0
    for t in itertools.combinations(range(45), 3):
        t = list(t)
        if len(set(y[t])) < 3 or not all(d[i, j] <= 2 * eps for i, j in itertools.combinations(t, 2)):
            continue
        n_tri += 1
        if norm == "l2":
            r = meb_radius(x[t])
            assert abs(r - eps) > 1e-9  # no borderline case in this instance
            hit = r <= eps
        else:  # boxes share a point iff max of lower ends <= min of upper ends in every coordinate
            hit = bool(np.all((x[t] - eps).max(axis=0) <= (x[t] + eps).min(axis=0)))
        if hit:
            ref.append(t)
    assert n_tri > 10 and g.num_triangles == n_tri
    assert g.hyperedges.tolist() == ref
    assert 0 < len(ref) and (norm == "linf") == (len(ref) == n_tri)


def test_hyperedges_of_many_triangles_and_flattened_images():
    # a dense cluster: the chunked triangle search against itertools on the same pair graph
    rng = np.random.default_rng(3)
    x = rng.random((80, 2, 2))
    y = rng.integers(0, 5, 80)
    g = bounds.conflict_hypergraph(x, y, eps=0.3, norm="linf", degree=3)
    es = set(map(tuple, g.edges.tolist()))
    tri = [t for t in itertools.combinations(range(80), 3)
           if (t[0], t[1]) in es and (t[1], t[2]) in es and (t[0], t[2]) in es]
    assert g.hyperedges.tolist() == [list(t) for t in tri] and len(tri) > 1000


# ---------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------


def test_flow_equals_lp_equals_half_integral_brute_force():
    rng = np.random.default_rng(4)
    for trial in range(12):
        n = int(rng.integers(3, 10))
        w = None if trial % 3 == 0 else (rng.integers(0, 5, n) + (np.arange(n) == 0) if trial % 3 == 1
                                         else rng.random(n))
        g = random_hypergraph(rng, n, 3, 0.5, 0.0, weights=w)
        g2 = bounds.hypergraph_from_edges(g.labels, g.edges, weights=w)
        rf = bounds.multiclass_zero_one(g2)
        rl = bounds.multiclass_zero_one(g2, backend="lp")
        ref = half_integral_brute(g2)
        assert rf.backend.startswith("flow") and rl.backend == "lp:highs"
        assert abs(rf.loss - ref) <= 1e-12 and abs(rl.loss - ref) <= 1e-9
        assert abs(dense_lp_loss(g2) - ref) <= 1e-7
        assert rf.verify(1e-12).passed and rl.verify(1e-9).passed
        assert set(np.unique(rf.q).tolist()) <= {0.0, 0.5, 1.0}
        assert rf.flow_value is not None and rl.flow_value is None


def test_double_cover_flow_backends_identical():
    """L*(2) by OR-Tools, SciPy and networkx on the double cover: the same exact flow value and q."""
    rng = np.random.default_rng(14)
    for trial in range(8):
        n = int(rng.integers(4, 40))
        g = random_hypergraph(rng, n, 4, 0.3 if trial else 0.0, 0.0, weights=rng.integers(1, 9, n))
        res = {be: bounds.multiclass_zero_one(g, flow_backend=be) for be in ("ortools", "scipy", "networkx")}
        assert res["ortools"].backend == "flow:ortools" and bounds.multiclass_zero_one(g).backend == "flow:ortools"
        for be, r in res.items():
            assert r.flow_value == res["networkx"].flow_value and r.loss == res["networkx"].loss
            assert np.array_equal(r.q, res["networkx"].q), be  # the minimal cut: the same half-integral q
            assert r.verify(1e-12).passed
        assert abs(res["ortools"].loss - dense_lp_loss(g)) <= 1e-7


def test_degree3_matches_dense_lp_and_dual_formulation():
    rng = np.random.default_rng(5)
    for _ in range(10):
        n = int(rng.integers(4, 12))
        g = random_hypergraph(rng, n, 4, 0.6, 0.5, weights=rng.random(n))
        r = bounds.multiclass_zero_one(g)
        assert r.backend == "lp:highs" and r.degree == 3
        assert abs(r.loss - dense_lp_loss(g)) <= 1e-7
        assert abs(r.loss - dual_lp_loss_cvxpy(g)) <= 1e-7
        assert r.verify(1e-9).passed
        with pytest.raises(ValueError, match="^backend"):
            if g.num_hyperedges:
                bounds.multiclass_zero_one(g, backend="flow")
            else:
                raise ValueError("backend: no hyperedges in this draw")


def test_degree3_brute_force_on_a_grid_is_never_better():
    # any feasible q gives an upper bound on L*: the LP must be at least as good as every grid point,
    # and on the triangle with its three edges the optimum (1/3, 1/3, 1/3 is not better than 1, 0, 0) is exact
    rng = np.random.default_rng(6)
    grid_vals = np.array([0.0, 1 / 3, 0.5, 2 / 3, 1.0])
    for _ in range(5):
        g = random_hypergraph(rng, 6, 3, 0.7, 0.7, weights=rng.random(6))
        grid = np.array(list(itertools.product(grid_vals, repeat=6)))
        ok = np.ones(len(grid), bool)
        for e in list(g.edges) + list(g.hyperedges):
            ok &= grid[:, e].sum(axis=1) <= 1 + 1e-12
        best = 1.0 - float((grid[ok] @ g.p).max())
        assert bounds.multiclass_zero_one(g).loss <= best + 1e-12
    tri = bounds.hypergraph_from_edges([0, 1, 2], [[0, 1], [1, 2], [0, 2]], [[0, 1, 2]])
    assert abs(bounds.multiclass_zero_one(tri).loss - 2 / 3) <= 1e-12
    pair_only = bounds.hypergraph_from_edges([0, 1, 2], [[0, 1], [1, 2], [0, 2]])
    assert abs(bounds.multiclass_zero_one(pair_only).loss - 0.5) <= 1e-15  # q = 1/2 each


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_l2_at_most_l3_and_monotone_in_eps(norm):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(90, 3))
    y = rng.integers(0, 3, 90)
    prev = -1.0
    for eps in (0.0, 0.2, 0.4, 0.7, 1.2):
        l2 = bounds.multiclass_zero_one(bounds.conflict_hypergraph(x, y, eps=eps, norm=norm)).loss
        g3 = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm, degree=3)
        l3 = bounds.multiclass_zero_one(g3).loss
        assert l2 <= l3 + 1e-9 and l2 >= prev - 1e-12
        prev = l2
    assert g3.num_hyperedges > 0 and l3 > l2 + 1e-3


def test_weight_scaling_invariance_and_duplicates():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 2))
    y = rng.integers(0, 3, 40)
    w = rng.integers(1, 4, 40)
    for degree in (2, 3):
        ref = bounds.multiclass_zero_one(bounds.conflict_hypergraph(x, y, eps=0.4, norm="l2", degree=degree,
                                                                    weights=w))
        for scale in (3, 0.25, 7.5):
            r = bounds.multiclass_zero_one(bounds.conflict_hypergraph(x, y, eps=0.4, norm="l2", degree=degree,
                                                                      weights=w * scale))
            assert abs(r.loss - ref.loss) <= 1e-12
        # integer weights equal duplicated points
        xd, yd = np.repeat(x, w, axis=0), np.repeat(y, w)
        rd = bounds.multiclass_zero_one(bounds.conflict_hypergraph(xd, yd, eps=0.4, norm="l2", degree=degree))
        assert abs(rd.loss - ref.loss) <= 1e-9


def test_empty_graph_and_sizes():
    x = np.array([[0.0], [10.0], [20.0]])
    for degree in (2, 3):
        g = bounds.conflict_hypergraph(x, [0, 1, 2], eps=1.0, norm="l2", degree=degree)
        for backend in ("auto", "lp"):
            r = bounds.multiclass_zero_one(g, backend=backend)
            assert r.loss == 0.0 and np.all(r.q == 1.0) and r.verify(0.0).passed
    # two points of two classes in one place: eps = 0 is already a conflict, the loss is 1/2
    g = bounds.conflict_hypergraph(np.zeros((2, 3)), [4, 7], eps=0.0, norm="linf")
    assert g.edges.tolist() == [[0, 1]] and bounds.multiclass_zero_one(g).loss == 0.5
    # three coincident points of three classes: degenerate triangle, a hyperedge (radius 0)
    g = bounds.conflict_hypergraph(np.zeros((3, 2)), [0, 1, 2], eps=0.0, norm="l2", degree=3)
    assert g.num_hyperedges == 1 and abs(bounds.multiclass_zero_one(g).loss - 2 / 3) <= 1e-12


def test_zero_weight_vertices_and_big_weights():
    g = bounds.hypergraph_from_edges([0, 1, 2, 1], [[0, 1], [0, 3], [2, 3]], weights=[1, 0, 2**45, 1])
    r = bounds.multiclass_zero_one(g)
    rl = bounds.multiclass_zero_one(g, backend="lp")
    ref = half_integral_brute(g)
    assert abs(r.loss - ref) <= 1e-15 and abs(rl.loss - ref) <= 1e-9 and r.verify(1e-15).passed


def test_sound_against_the_robust_error_of_one_nearest_neighbour():
    # 1-D: the 1-NN classifier's robust error is exact (each point's interval against the decision cells);
    # every classifier's robust error on the sample is >= L*(3) >= L*(2)
    rng = np.random.default_rng(9)
    for _ in range(12):
        n = 14
        x = np.sort(rng.random(n) * 4)
        y = rng.permutation(np.repeat([0, 1, 2], [5, 5, 4]))  # same class sizes: compiled kernels are reused
        eps = float(rng.uniform(0.02, 0.4))
        mids = 0.5 * (x[1:] + x[:-1])
        errors = 0
        for v in range(n):
            lo, hi = x[v] - eps, x[v] + eps
            # 1-NN label is y[i] on [mids[i-1], mids[i]]; robust if every cell met by [lo, hi] has label y[v]
            cells = [i for i in range(n) if (i == 0 or mids[i - 1] <= hi) and (i == n - 1 or mids[i] >= lo)]
            errors += any(y[i] != y[v] for i in cells)
        knn_err = errors / n
        xx = x[:, None]
        l2 = bounds.multiclass_zero_one(bounds.conflict_hypergraph(xx, y, eps=eps, norm="l2")).loss
        l3 = bounds.multiclass_zero_one(bounds.conflict_hypergraph(xx, y, eps=eps, norm="l2", degree=3)).loss
        assert l2 <= l3 + 1e-12 <= knn_err + 1e-9


def test_verify_detects_broken_certificates():
    rng = np.random.default_rng(10)
    g = random_hypergraph(rng, 9, 3, 0.6, 0.6)
    r = bounds.multiclass_zero_one(g)
    assert r.verify().passed
    import dataclasses

    bad_q = r.q.copy()
    bad_q[g.edges[0]] = 1.0
    v = dataclasses.replace(r, q=bad_q).verify()
    assert not v.passed and v.violations["edge_feasible"] > 0.5
    v = dataclasses.replace(r, vertex_dual=np.zeros(g.n), edge_dual=0 * r.edge_dual,
                            hyperedge_dual=0 * r.hyperedge_dual).verify()
    assert not v.passed and v.violations["dual_feasible"] > 0
    v = dataclasses.replace(r, loss=r.loss + 1e-3).verify()
    assert not v.passed and v.violations["loss"] > 0
    with pytest.raises(ValueError, match="^tol"):
        r.verify(-1.0)


def test_results_are_json_serialisable():
    g = bounds.conflict_hypergraph(np.arange(6.0)[:, None], [0, 1, 2, 0, 1, 2], eps=0.6, norm="l2", degree=3)
    r = bounds.multiclass_zero_one(g)
    out = json.loads(json.dumps(r.to_dict(arrays=True)))
    assert out["n_edges"] == 5 and out["n_hyperedges"] == 0 and out["graph"]["norm"] == "l2"
    assert json.loads(json.dumps(g.to_dict()))["num_triangles"] == 0


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


_X = np.random.default_rng(11).normal(size=(6, 2))
_Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("kwargs,match", [
    (dict(labels=np.zeros(6, int)), "^labels: .*two classes"),
    (dict(labels=np.array([0, 1, 2, 0, 1])), "^labels"),
    (dict(labels=np.array([0, 1, 2, 0, 1, -2])), "^labels"),
    (dict(labels=_Y.astype(float)), "^labels"),
    (dict(eps=-0.1), "^eps"),
    (dict(eps=float("nan")), "^eps"),
    (dict(eps=float("inf")), "^eps"),
    (dict(weights=np.array([1, 1, 1, 1, 1, -1.0])), "^weights"),
    (dict(weights=np.array([1, 1, 1, 1, 1, -1])), "^weights"),
    (dict(weights=np.zeros(6)), "^weights"),
    (dict(weights=np.ones(5)), "^weights"),
    (dict(weights=np.array([1, 1, 1, 1, 1, np.nan])), "^weights"),
    (dict(degree=1), "^degree"),
    (dict(degree=4), "^degree"),
    (dict(degree=2.0), "^degree"),
    (dict(degree=3, norm="l1"), "^degree: .*norm"),
    (dict(degree=3, norm=3), "^degree: .*norm"),
    (dict(norm="cosine"), "^norm"),
    (dict(norm=0.5), "^norm"),
    (dict(x=np.array([[0.0, np.nan]] * 6)), "^x"),
    (dict(x=np.zeros(6)), "^x"),
])
def test_conflict_hypergraph_bad_input(kwargs, match):
    args = dict(x=_X, labels=_Y, eps=0.5, norm="l2")
    args.update(kwargs)
    x, labels = args.pop("x"), args.pop("labels")
    with pytest.raises(ValueError, match=match):
        bounds.conflict_hypergraph(x, labels, **args)


def test_hypergraph_from_edges_and_solver_bad_input():
    with pytest.raises(ValueError, match="^edges: .*distinct labels"):
        bounds.hypergraph_from_edges([0, 0, 1], [[0, 1]])
    with pytest.raises(ValueError, match="^hyperedges: .*distinct labels"):
        bounds.hypergraph_from_edges([0, 1, 1], [[0, 1]], [[0, 1, 2]])
    with pytest.raises(ValueError, match="^edges: .*out of range"):
        bounds.hypergraph_from_edges([0, 1], [[0, 2]])
    with pytest.raises(ValueError, match="^edges: .*repeats"):
        bounds.hypergraph_from_edges([0, 1], [[1, 1]])
    with pytest.raises(ValueError, match="^hyperedges: expected shape"):
        bounds.hypergraph_from_edges([0, 1, 2], [[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="^labels"):
        bounds.hypergraph_from_edges([1, 1], [])
    g = bounds.hypergraph_from_edges([0, 1], [[1, 0], [0, 1]])
    assert g.edges.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="^graph"):
        bounds.multiclass_zero_one("not a graph")
    with pytest.raises(ValueError, match="^backend"):
        bounds.multiclass_zero_one(g, backend="mosek")


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mnist_small_flow_lp_and_degree3(mnist_train):
    x, y = mnist_train.flat(), mnist_train.labels
    idx = np.concatenate([np.flatnonzero(y == c)[:40] for c in range(10)])
    xs, ys = x[idx].astype(np.float64), y[idx]
    g2 = bounds.conflict_hypergraph(xs, ys, eps=3.0, norm="l2")
    d = cdist(xs, xs)
    ref = np.argwhere(np.triu((d <= 6.0) & (ys[:, None] != ys[None, :]), 1))
    assert np.array_equal(g2.edges, ref) and g2.num_edges > 10
    rf = bounds.multiclass_zero_one(g2)
    rl = bounds.multiclass_zero_one(g2, backend="lp")
    assert abs(rf.loss - rl.loss) <= 1e-9 and rf.verify(1e-12).passed
    g3 = bounds.conflict_hypergraph(xs, ys, eps=3.0, norm="l2", degree=3)
    r3 = bounds.multiclass_zero_one(g3)
    assert r3.verify(1e-9).passed and rf.loss <= r3.loss + 1e-9
    assert abs(r3.loss - dense_lp_loss(g3)) <= 1e-7


def test_first_per_class_matches_a_plain_loop():
    rng = np.random.default_rng(21)
    for trial in range(20):
        y = rng.integers(0, 1 + trial % 6, int(rng.integers(1, 60)))
        for n in (None, 1, 2, 5, 100):
            ref = [i for c in sorted(set(y.tolist())) for i in [j for j in range(y.size) if y[j] == c][:n]]
            got = bounds.first_per_class(y, n=n)
            assert got.dtype == np.int64 and got.tolist() == ref
    # classes need not be contiguous; ties in order are resolved by file position
    assert bounds.first_per_class(np.array([7, 2, 7, 2, 2]), n=2).tolist() == [1, 3, 0, 2]


def test_constraint_generation_matches_the_full_lp():
    """L*(3) by constraint generation (working set from the L*(2) flow) equals HiGHS on every constraint at once."""
    rng = np.random.default_rng(23)
    for trial in range(6):
        n = int(rng.integers(20, 45))
        w = None if trial % 2 else rng.random(n)
        g = random_hypergraph(rng, n, 4, 0.5, 0.2, weights=w)
        r = bounds.multiclass_zero_one(g)
        assert r.backend == "lp:highs"
        assert abs(r.loss - dense_lp_loss(g)) <= 1e-8
        v = r.verify(1e-9)
        assert v.passed, v.violations
        r2 = bounds.multiclass_zero_one(bounds.hypergraph_from_edges(g.labels, g.edges, weights=w))
        assert r.loss >= r2.loss - 1e-12
    # hyperedges without their pair edges: the first working set is empty, every row comes from the passes
    y = np.array([0, 1, 2, 0, 1, 2])
    g = bounds.hypergraph_from_edges(y, np.zeros((0, 2), int), [[0, 1, 2], [3, 4, 5], [0, 4, 5]])
    r = bounds.multiclass_zero_one(g)
    assert abs(r.loss - dense_lp_loss(g)) <= 1e-9 and r.verify(1e-12).passed
    assert abs(r.loss - 2 / 3) <= 1e-12  # two disjoint triangles cover the six points: at most two correct
