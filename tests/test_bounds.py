"""Tests for jaxbound.bounds (Bhagoji et al. 2021): conflict graphs, OptProb, 0-1 loss, Gaussian bounds."""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.spatial.distance import cdist

from jaxbound import bounds

# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def cvxpy_optprob(graph):
    """Program (3) with a generic conic solver (tight tolerances)."""
    cp = pytest.importorskip("cvxpy")
    na, nb = graph.sizes
    ev = graph.edge_vertices()
    p = graph.p
    q = cp.Variable(na + nb)
    cons = [q <= 1]
    if ev.size:
        cons.append(q[ev[:, 0]] + q[ev[:, 1]] <= 1)
    m = p > 0
    prob = cp.Problem(cp.Minimize(-cp.sum(cp.multiply(p[m], cp.log(q[m])))), cons)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12,
                   tol_ktratio=1e-10, max_iter=500)
    return prob.value, np.asarray(q.value)


def entropy(*ps):
    ps = np.asarray(ps, float)
    ps = ps[ps > 0]
    return float(-(ps * np.log(ps)).sum())


def random_graph(rng, na, nb, density, weights="int"):
    m = rng.random((na, nb)) < density
    ea, eb = np.nonzero(m)
    if weights == "int":
        wa, wb = rng.integers(0, 6, na), rng.integers(0, 6, nb)
        if wa.sum() + wb.sum() == 0:
            wa[0] = 1
    elif weights == "float":
        wa, wb = rng.random(na), rng.random(nb)
    else:
        wa = wb = None
    return bounds.graph_from_edges(na, nb, ea, eb, weights_a=wa, weights_b=wb)


# ---------------------------------------------------------------------------
# conflict graphs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,metric", [("l1", "cityblock"), ("l2", "euclidean"), ("linf", "chebyshev")])
def test_conflict_graph_matches_brute_force(norm, metric):
    rng = np.random.default_rng(0)
    xa = rng.random((23, 5)).astype(np.float32)
    xb = rng.random((17, 5)).astype(np.float32)
    eps = 0.35
    # a pair exactly at distance 2 eps must be an edge (closed balls)
    xb[0] = xa[0]
    xb[0, 0] = xa[0, 0] + np.float32(0.5)
    g = bounds.conflict_graph(xa, xb, eps=0.25, norm=norm)
    d = cdist(xa.astype(np.float64), xb.astype(np.float64), metric)
    assert d[0, 0] == 0.5 or metric != "chebyshev"
    ref = np.argwhere(d <= 0.5)
    assert np.array_equal(g.edges, ref)
    assert g.eps == 0.25 and g.norm == norm and g.sizes == (23, 17)
    g2 = bounds.conflict_graph(xa, xb, eps=eps, norm=norm)
    assert np.array_equal(g2.edges, np.argwhere(d <= 2 * eps))
    np.testing.assert_allclose(g2.p, 1 / 40)


def test_conflict_graph_flattens_images_and_keeps_weights():
    rng = np.random.default_rng(1)
    xa = rng.random((4, 3, 3, 1))
    xb = rng.random((5, 3, 3, 1))
    g = bounds.conflict_graph(xa, xb, eps=0.6, norm=2, weights_a=[1, 2, 3, 4], weights_b=[0, 0, 1, 1, 1])
    d = cdist(xa.reshape(4, -1), xb.reshape(5, -1))
    assert np.array_equal(g.edges, np.argwhere(d <= 1.2))
    np.testing.assert_allclose(g.p, np.array([1, 2, 3, 4, 0, 0, 1, 1, 1]) / 13)
    assert g.to_dict()["sizes"] == [4, 5]


def test_graph_from_edges_sorts_merges_and_exact_weights():
    g = bounds.graph_from_edges(3, 2, [2, 0, 2, 0], [1, 1, 1, 0], weights_a=[0.25, 0.5, 0.25], weights_b=[0.75, 0.25])
    assert g.edges.tolist() == [[0, 0], [0, 1], [2, 1]]
    assert [w.tolist() for w in g.weights] == [[1, 2, 1], [3, 1]]  # exact, gcd removed
    np.testing.assert_allclose(g.p, np.array([1, 2, 1, 3, 1]) / 8)
    assert g.degrees().tolist() == [2, 0, 1, 1, 2]
    assert g.edge_vertices().tolist() == [[0, 3], [0, 4], [2, 4]]
    # non-dyadic floats are converted exactly (no rounding): p equals w / sum(w) in float64
    w = np.array([0.1, 0.2, 0.3])
    g = bounds.graph_from_edges(3, 1, [0], [0], weights_a=w, weights_b=[0.7])
    from fractions import Fraction

    fr = [Fraction(v) for v in [0.1, 0.2, 0.3, 0.7]]
    assert g.p.tolist() == [float(f / sum(fr)) for f in fr]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x_a=np.zeros((0, 3)), x_b=np.zeros((2, 3))), "^x_a"),
        (dict(x_a=np.zeros((2, 3)), x_b=np.zeros((0, 3))), "^x_b"),
        (dict(x_a=np.array([[np.nan, 0.0]]), x_b=np.zeros((1, 2))), "^x_a"),
        (dict(x_a=np.zeros((1, 2)), x_b=np.array([[np.inf, 0.0]])), "^x_b"),
        (dict(x_a=np.zeros((1, 2)), x_b=np.zeros((1, 3))), "^x_b"),
        (dict(x_a=np.zeros(3), x_b=np.zeros((1, 3))), "^x_a"),
        (dict(eps=-0.1), "^eps"),
        (dict(eps=float("nan")), "^eps"),
        (dict(norm="l0"), "^norm"),
        (dict(weights_a=[0.0, 0.0], weights_b=[0.0]), "^weights_a"),
        (dict(weights_a=[1.0, -1.0]), "^weights_a"),
        (dict(weights_b=[np.nan]), "^weights_b"),
        (dict(weights_b=[np.inf]), "^weights_b"),
        (dict(weights_a=[1.0]), "^weights_a"),
    ],
)
def test_conflict_graph_bad_input(kwargs, match):
    args = dict(x_a=np.zeros((2, 2)), x_b=np.ones((1, 2)), eps=0.5, norm="l2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bounds.conflict_graph(args.pop("x_a"), args.pop("x_b"), **args)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((0, 2, [], []), {}, "^n_a"),
        ((2, 0, [], []), {}, "^n_b"),
        ((2, 2, [0, 2], [0, 0]), {}, "^rows"),
        ((2, 2, [0], [-1]), {}, "^cols"),
        ((2, 2, [0, 1], [0]), {}, "^cols"),
        ((2, 2, [0.0], [1]), {}, "^rows"),
        ((2, 2, [[0]], [[1]]), {}, "^rows"),
        ((2, 2, [0], [1]), dict(weights_b=[0, -1]), "^weights_b"),
        ((2, 2, [0], [1]), dict(weights_a=[True, False]), "^weights_a"),
    ],
)
def test_graph_from_edges_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bounds.graph_from_edges(*args, **kwargs)


# ---------------------------------------------------------------------------
# OptProb: hand-solved graphs
# ---------------------------------------------------------------------------


def test_empty_graph_q_is_one():
    g = bounds.graph_from_edges(3, 2, [], [])
    r = bounds.optprob(g)
    assert np.array_equal(r.q, np.ones(5)) and r.loss == 0.0
    assert r.verify().passed
    np.testing.assert_allclose(r.z_vertex, g.p)  # z_v = p_v on isolated vertices
    assert bounds.min_zero_one_loss(g).loss == 0.0


def test_single_points_per_class():
    g = bounds.graph_from_edges(1, 1, [0], [0], weights_a=[3], weights_b=[1])
    r = bounds.optprob(g)
    np.testing.assert_allclose(r.q, [0.75, 0.25], rtol=0, atol=1e-15)
    assert r.loss == pytest.approx(entropy(0.75, 0.25), abs=1e-15)
    assert bounds.min_zero_one_loss(g).loss == 0.25
    g = bounds.graph_from_edges(1, 1, [], [])
    assert bounds.optprob(g).loss == 0.0


@pytest.mark.parametrize("na,nb", [(1, 4), (3, 3), (5, 2)])
def test_complete_bipartite_q_is_class_frequency(na, nb):
    rng = np.random.default_rng(na * 10 + nb)
    wa, wb = rng.integers(1, 9, na), rng.integers(1, 9, nb)
    ea, eb = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    g = bounds.graph_from_edges(na, nb, ea.ravel(), eb.ravel(), weights_a=wa, weights_b=wb)
    r = bounds.optprob(g)
    pa = wa.sum() / (wa.sum() + wb.sum())
    np.testing.assert_allclose(r.q_a, pa, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.q_b, 1 - pa, rtol=0, atol=1e-15)
    assert r.loss == pytest.approx(entropy(pa, 1 - pa), abs=1e-14)
    assert r.num_parts == 1 and r.verify(1e-14).passed
    z1 = bounds.min_zero_one_loss(g)
    assert z1.loss == pytest.approx(min(pa, 1 - pa), abs=1e-15)


def test_path_and_isolated_vertices():
    # a0 - b0 - a1 plus isolated a2, b1 (uniform): q = 2/3 on a0, a1; 1/3 on b0; 1 on isolated
    g = bounds.graph_from_edges(3, 2, [0, 1], [0, 0])
    r = bounds.optprob(g)
    np.testing.assert_allclose(r.q, [2 / 3, 2 / 3, 1, 1 / 3, 1], rtol=0, atol=1e-15)
    assert r.loss == pytest.approx(-(2 * math.log(2 / 3) + math.log(1 / 3)) / 5, abs=1e-15)
    assert r.verify(1e-15).passed
    # even path a0-b0-a1-b1 (uniform): one part, q = 1/2
    g = bounds.graph_from_edges(2, 2, [0, 1, 1], [0, 0, 1])
    r = bounds.optprob(g)
    np.testing.assert_allclose(r.q, 0.5, rtol=0, atol=1e-15)


def test_two_part_solution_by_hand():
    # a0 - {b0, b1, b2}, a1 - b2 (uniform 1/5). Lemma 5 structure: parts {a0, b0, b1} (q_a = 1/3)
    # and {a1, b2} (q = 1/2); the edge a0-b2 goes from part 0 to part 1 and is slack (1/3 + 1/2 < 1).
    g = bounds.graph_from_edges(2, 3, [0, 0, 0, 1], [0, 1, 2, 2])
    r = bounds.optprob(g)
    np.testing.assert_allclose(r.q, [1 / 3, 1 / 2, 2 / 3, 2 / 3, 1 / 2], rtol=0, atol=1e-15)
    assert r.loss == pytest.approx(-(math.log(1 / 3) + 2 * math.log(2 / 3) + 2 * math.log(1 / 2)) / 5, abs=1e-15)
    assert r.part.tolist() == [0, 1, 0, 0, 1] and r.num_parts == 2
    assert r.z_edge[2] == 0.0  # the dropped edge carries no adversary mass
    val, q = cvxpy_optprob(g)
    assert abs(val - r.loss) < 1e-9 and np.abs(q - r.q).max() < 1e-6


# ---------------------------------------------------------------------------
# OptProb: against a generic solver, certificates, invariances
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["uniform", "int", "float"])
def test_optprob_matches_cvxpy_on_random_graphs(weights):
    rng = np.random.default_rng({"uniform": 0, "int": 1, "float": 2}[weights])
    for _ in range(8):
        na, nb = rng.integers(1, 14, 2)
        g = random_graph(rng, na, nb, rng.uniform(0.05, 0.5), weights)
        r = bounds.optprob(g)
        val, q = cvxpy_optprob(g)
        assert abs(val - r.loss) <= 1e-6
        supp = g.p > 0
        assert np.abs(q[supp] - r.q[supp]).max() <= 1e-6
        v = r.verify(1e-12)
        assert v.passed, v
        ev = g.edge_vertices()
        assert np.all(r.q[ev[:, 0]] + r.q[ev[:, 1]] <= 1 + 1e-15)
        assert np.all((r.q >= 0) & (r.q <= 1))


def test_optprob_backends_identical_and_verified():
    rng = np.random.default_rng(5)
    for _ in range(4):
        g = random_graph(rng, 40, 30, 0.06, "int")
        ro = bounds.optprob(g, backend="ortools")
        rs = bounds.optprob(g, backend="scipy")
        rn = bounds.optprob(g, backend="networkx")
        assert ro.backend == "ortools" and rs.backend == "scipy" and rn.backend == "networkx"
        assert bounds.optprob(g).backend == "ortools"
        for r in (rs, rn):  # parts and q are exact rationals: identical, not merely close
            assert np.array_equal(ro.q, r.q) and ro.loss == r.loss and np.array_equal(ro.part, r.part)
        assert ro.verify(1e-12).passed and rs.verify(1e-12).passed and rn.verify(1e-12).passed


def test_verify_detects_broken_certificates():
    g = bounds.graph_from_edges(2, 3, [0, 0, 0, 1], [0, 1, 2, 2])
    r = bounds.optprob(g)
    import dataclasses

    bad_q = dataclasses.replace(r, q=r.q + np.array([0.2, 0, 0, 0, 0]))
    v = bad_q.verify()
    assert not v.passed and v.violations["edge_feasible"] > 0.1
    bad_z = dataclasses.replace(r, z_edge=r.z_edge * 0.5)
    v = bad_z.verify()
    assert not v.passed and v.violations["complementary"] > 0
    bad_loss = dataclasses.replace(r, loss=r.loss - 0.01)
    assert not bad_loss.verify().passed


def test_weight_scaling_invariance():
    rng = np.random.default_rng(6)
    g = random_graph(rng, 25, 20, 0.12, "int")
    wa, wb = (w.astype(np.int64) for w in g.weights)
    ea, eb = g.edges[:, 0], g.edges[:, 1]
    r = bounds.optprob(g)
    for scale in (2, 1000, 3.7, 1e-3):
        gs = bounds.graph_from_edges(25, 20, ea, eb, weights_a=wa * scale, weights_b=wb * scale)
        rs = bounds.optprob(gs)
        assert np.abs(rs.q - r.q).max() <= 1e-12 and abs(rs.loss - r.loss) <= 1e-12


def test_duplicated_points_equal_doubled_weights():
    rng = np.random.default_rng(7)
    xa = rng.random((12, 4))
    xb = rng.random((10, 4))
    dup = np.concatenate([xa, xa[[3, 7]]])
    eps = 0.3
    g_dup = bounds.conflict_graph(dup, xb, eps=eps, norm="l2")
    w = np.ones(12)
    w[[3, 7]] = 2
    g_w = bounds.conflict_graph(xa, xb, eps=eps, norm="l2", weights_a=w)
    assert g_dup.num_edges > 0
    r_dup, r_w = bounds.optprob(g_dup), bounds.optprob(g_w)
    assert abs(r_dup.loss - r_w.loss) <= 1e-12
    np.testing.assert_allclose(r_dup.q[:12], r_w.q[:12], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r_dup.q[12:14], r_w.q[[3, 7]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r_dup.q[14:], r_w.q[12:], rtol=0, atol=1e-12)


def test_zero_weight_vertices_leave_the_support():
    rng = np.random.default_rng(8)
    g = random_graph(rng, 15, 12, 0.2, "uniform")
    wa = np.ones(15)
    wa[[0, 5]] = 0
    gz = bounds.graph_from_edges(15, 12, g.edges[:, 0], g.edges[:, 1], weights_a=wa)
    keep = np.setdiff1d(np.arange(15), [0, 5])
    remap = -np.ones(15, int)
    remap[keep] = np.arange(13)
    m = np.isin(g.edges[:, 0], keep)
    gr = bounds.graph_from_edges(13, 12, remap[g.edges[m, 0]], g.edges[m, 1])
    rz, rr = bounds.optprob(gz), bounds.optprob(gr)
    assert rz.q[0] == 0 and rz.q[5] == 0 and rz.part[0] == -1
    np.testing.assert_allclose(rz.q[keep], rr.q[:13], atol=1e-15)
    assert abs(rz.loss - rr.loss) <= 1e-15 and rz.verify(1e-12).passed


def test_big_and_non_dyadic_weights_are_exact():
    # weights spanning 2**45: capacities exceed int32 (SciPy refuses), 'auto' runs OR-Tools in int64 while
    # the capacities and their totals fit, and the exact networkx backend otherwise
    rng = np.random.default_rng(9)
    na, nb = 8, 7
    m = rng.random((na, nb)) < 0.35
    ea, eb = np.nonzero(m)
    wa = 2.0 ** rng.integers(0, 45, na)
    wb = 2.0 ** rng.integers(0, 45, nb)
    g = bounds.graph_from_edges(na, nb, ea, eb, weights_a=wa, weights_b=wb)
    r = bounds.optprob(g)
    assert set(r.backend.split("+")) <= {"ortools", "networkx"}
    rn = bounds.optprob(g, backend="networkx")
    assert np.array_equal(r.q, rn.q) and r.loss == rn.loss
    with pytest.raises(ValueError, match="^backend: 'scipy'"):
        bounds.optprob(g, backend="scipy")
    val, q = cvxpy_optprob(g)
    assert abs(val - r.loss) <= 1e-6 and r.verify(1e-12).passed


def test_staircase_needs_several_rounds():
    # a_i ~ b_j for j >= i with geometric weights: a nested chain of parts (Lemma 5 ordering)
    n = 10
    i, j = np.triu_indices(n)
    g = bounds.graph_from_edges(n, n, i, j, weights_a=2 ** np.arange(n), weights_b=np.ones(n, np.int64))
    r = bounds.optprob(g)
    assert r.rounds >= 3 and r.num_parts == n
    val, q = cvxpy_optprob(g)
    assert abs(val - r.loss) <= 1e-6 and r.verify(1e-12).passed


def test_optprob_bad_input():
    with pytest.raises(ValueError, match="^graph"):
        bounds.optprob("not a graph")
    g = bounds.graph_from_edges(1, 1, [0], [0])
    with pytest.raises(ValueError, match="^backend"):
        bounds.optprob(g, backend="gurobi")
    with pytest.raises(ValueError, match="^tol"):
        bounds.optprob(g).verify(-1.0)


# ---------------------------------------------------------------------------
# 0-1 loss
# ---------------------------------------------------------------------------


def brute_force_zero_one(g):
    na, nb = g.sizes
    ev = g.edge_vertices()
    best = math.inf
    for mask in itertools.product([False, True], repeat=na + nb):
        correct = np.array(mask)
        if ev.size and np.any(correct[ev[:, 0]] & correct[ev[:, 1]]):
            continue
        best = min(best, float(g.p[~correct].sum()))
    return best


def test_zero_one_loss_brute_force_and_certificate():
    rng = np.random.default_rng(10)
    for _ in range(20):
        na, nb = rng.integers(1, 6, 2)
        g = random_graph(rng, na, nb, rng.uniform(0.1, 0.7), "int")
        z = bounds.min_zero_one_loss(g)
        assert z.loss == pytest.approx(brute_force_zero_one(g), abs=1e-12)
        assert z.verify(1e-12).passed
        assert z.to_dict()["loss"] == z.loss


def test_zero_one_uniform_is_maximum_matching():
    rng = np.random.default_rng(11)
    g = random_graph(rng, 60, 50, 0.04, "uniform")
    nxg = nx.Graph()
    nxg.add_nodes_from(range(110))
    nxg.add_edges_from(g.edge_vertices().tolist())
    matching = nx.bipartite.maximum_matching(nxg, top_nodes=range(60))
    assert bounds.min_zero_one_loss(g).loss == pytest.approx(len(matching) / 2 / 110, abs=1e-15)
    zs = bounds.min_zero_one_loss(g, backend="scipy")
    zn = bounds.min_zero_one_loss(g, backend="networkx")
    zo = bounds.min_zero_one_loss(g, backend="ortools")
    assert zs.loss == zn.loss == zo.loss and zn.verify(1e-12).passed and zo.verify(1e-12).passed


def test_cross_entropy_bound_dominates_zero_one_bound():
    # {v: q*_v > 1/2} is independent, so CE* >= log(2) * (optimal 0-1 loss)
    rng = np.random.default_rng(12)
    for _ in range(10):
        g = random_graph(rng, 30, 25, rng.uniform(0.02, 0.3), "int")
        assert bounds.optprob(g).loss >= math.log(2) * bounds.min_zero_one_loss(g).loss - 1e-15


# ---------------------------------------------------------------------------
# clipped soft labels
# ---------------------------------------------------------------------------


def test_clipped_soft_labels():
    g = bounds.graph_from_edges(2, 3, [0, 0, 0, 1], [0, 1, 2, 2])
    r = bounds.optprob(g)  # q = [1/3, 1/2, 2/3, 2/3, 1/2]
    y = np.array([3, 3, 7, 7, 7])
    t = bounds.clipped_soft_labels(r, y)
    assert t.shape == (5, 8) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-7)
    np.testing.assert_allclose(t[:, [3, 7]], [[0.6, 0.4], [0.6, 0.4], [1 / 3, 2 / 3], [1 / 3, 2 / 3], [0.4, 0.6]],
                               atol=1e-7)
    t2 = bounds.clipped_soft_labels(r.q, np.array([0, 0, 1, 1, 1]), clip=0.9, num_classes=2)
    np.testing.assert_allclose(t2[0], [0.9, 0.1], atol=1e-7)
    with pytest.raises(ValueError, match="^labels"):
        bounds.clipped_soft_labels(r, np.array([3, 7, 7, 7, 7]))
    with pytest.raises(ValueError, match="^labels"):
        bounds.clipped_soft_labels(r, np.array([3, 3, 3, 3, 3]))
    with pytest.raises(ValueError, match="^clip"):
        bounds.clipped_soft_labels(r, y, clip=0.3)
    with pytest.raises(ValueError, match="^num_classes"):
        bounds.clipped_soft_labels(r, y, num_classes=5)
    with pytest.raises(ValueError, match="^result"):
        bounds.clipped_soft_labels(np.array([0.5, 1.5]), np.array([0, 1]))


def test_results_are_json_serialisable():
    import json

    g = bounds.graph_from_edges(2, 3, [0, 0, 0, 1], [0, 1, 2, 2])
    r = bounds.optprob(g)
    json.dumps(r.to_dict(arrays=True))
    json.dumps(r.verify().to_dict())
    json.dumps(bounds.min_zero_one_loss(g).to_dict(arrays=True))
    json.dumps(bounds.gaussian_bounds(np.ones(2), None, eps=[0.0, 0.5], norm="l2").to_dict())


# ---------------------------------------------------------------------------
# Gaussian mixture
# ---------------------------------------------------------------------------


def softplus_expectation_quad(a, s):
    f = lambda t: np.logaddexp(0.0, -t) * stats.norm.pdf(t, a, s)
    cuts = sorted({a - 40 * s, min(max(0.0, a - 40 * s), a + 40 * s), a, a + 40 * s})
    return sum(integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-13, limit=500)[0] for lo, hi in zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("a,s", [(0.0, 0.0), (0.3, 0.1), (1.0, 1.0), (2.0, 2.0), (2.1, 2.0001), (8.0, 4.0),
                                 (-3.0, 5.0), (50.0, 10.0)])
def test_expected_softplus_quadrature(a, s):
    with jax.enable_x64(True):
        got = float(bounds._expected_softplus(jnp.asarray([a]), jnp.asarray([s]))[0])
    ref = float(np.logaddexp(0, -a)) if s == 0 else softplus_expectation_quad(a, s)
    assert got == pytest.approx(ref, rel=1e-11, abs=1e-300)


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.3 * np.eye(d)


def test_gaussian_eps_zero_is_bayes():
    rng = np.random.default_rng(13)
    d = 5
    mu, sig = rng.normal(size=d) * 0.4, random_spd(rng, d)
    res = bounds.gaussian_bounds(mu, sig, eps=0.0, norm="l2")
    delta = math.sqrt(mu @ np.linalg.solve(sig, mu))
    np.testing.assert_allclose(res.z, 0, atol=1e-15)
    np.testing.assert_allclose(res.w, 2 * np.linalg.solve(sig, mu), rtol=1e-12)
    assert float(res.zero_one) == pytest.approx(stats.norm.cdf(-delta), rel=1e-12)
    assert float(res.cross_entropy) == pytest.approx(softplus_expectation_quad(2 * delta**2, 2 * delta), rel=1e-10)
    # the same for linf and l1 at eps = 0
    for norm in ("linf", "l1"):
        r = bounds.gaussian_bounds(mu, sig, eps=[0.0], norm=norm)
        assert float(r.zero_one[0]) == pytest.approx(float(res.zero_one), rel=1e-9)


def test_gaussian_l2_closed_form_and_generic_solver_agree():
    rng = np.random.default_rng(14)
    d = 6
    mu, sig = rng.normal(size=d), random_spd(rng, d)
    eps = np.array([0.0, 0.1, 0.5, 1.0, 1.7, 10.0])
    res = bounds.gaussian_bounds(mu, sig, eps=eps, norm="l2")
    nmu = np.linalg.norm(mu)
    for k, e in enumerate(eps):
        z = res.z[k]
        if e >= nmu:
            np.testing.assert_allclose(z, mu, atol=1e-14)
            assert res.zero_one[k] == 0.5 and res.cross_entropy[k] == pytest.approx(math.log(2), abs=1e-15)
            continue
        assert np.linalg.norm(z) == pytest.approx(e, rel=1e-12, abs=1e-15)
        if e > 0:  # ANCHORS form: z = delta w, w = 2 (Sigma + 2 delta I)^{-1} mu
            dl = e / np.linalg.norm(res.w[k])
            np.testing.assert_allclose(res.w[k], 2 * np.linalg.solve(sig + 2 * dl * np.eye(d), mu), rtol=1e-9)
            np.testing.assert_allclose(z, dl * res.w[k], rtol=1e-9, atol=1e-14)
        assert abs(res.gap[k]) <= 1e-12 * max(1.0, float(res.delta[k]) ** 2)
    # the generic projected-gradient solver reaches the same translation
    lam, vec = np.linalg.eigh(sig)
    with jax.enable_x64(True):
        prec = jnp.asarray((vec / lam) @ vec.T)
        for k, e in enumerate(eps[:5]):
            z, _ = bounds._solve_translation(jnp.asarray(mu), prec, jnp.asarray(e), 2 / lam.min(), norm="l2",
                                            tol=1e-13, max_iter=200_000)
            r = mu - np.asarray(z)
            assert r @ np.linalg.solve(sig, r) == pytest.approx(float(res.delta[k]) ** 2, rel=1e-10)
            np.testing.assert_allclose(np.asarray(z), res.z[k], atol=1e-5)
    # monotone in eps
    assert np.all(np.diff(res.zero_one) >= 0) and np.all(np.diff(res.cross_entropy) >= 0)


def test_gaussian_linf_and_l1_match_cvxpy():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(15)
    d = 5
    mu, sig = rng.normal(size=d), random_spd(rng, d)
    p = np.linalg.inv(sig)
    p = 0.5 * (p + p.T)
    eps = np.array([0.1, 0.4, 0.8])
    for norm, pn in (("linf", "inf"), ("l1", 1)):
        res = bounds.gaussian_bounds(mu, sig, eps=eps, norm=norm)
        for k, e in enumerate(eps):
            z = cp.Variable(d)
            prob = cp.Problem(cp.Minimize(cp.quad_form(mu - z, p)), [cp.norm(z, np.inf if pn == "inf" else 1) <= e])
            prob.solve(solver="CLARABEL")
            assert float(res.delta[k]) ** 2 == pytest.approx(prob.value, rel=1e-6)
            np.testing.assert_allclose(res.z[k], z.value, atol=1e-4)
            assert res.gap[k] <= 1e-8 * max(prob.value, 1e-12) + 1e-12
    # diagonal covariance + linf: the closed form z = clip(mu, -eps, eps)
    diag = rng.uniform(0.2, 1.0, d)
    res = bounds.gaussian_bounds(mu, diag, eps=eps, norm="linf")
    np.testing.assert_allclose(res.z, np.clip(mu[None], -eps[:, None], eps[:, None]))
    full = bounds.gaussian_bounds(mu, np.diag(diag) + 0.0, eps=eps, norm="linf")
    np.testing.assert_allclose(full.z, res.z)


@pytest.mark.parametrize("norm,p1", [("l2", 0.5), ("linf", 0.5), ("l2", 0.7), ("l1", 0.3)])
def test_gaussian_bounds_monte_carlo(norm, p1):
    """Loss of the stated classifier under the stated perturbation, by sampling."""
    rng = np.random.default_rng(16)
    d = 4
    mu, sig = rng.normal(size=d) * 0.8, random_spd(rng, d)
    eps = 0.3
    res = bounds.gaussian_bounds(mu, sig, eps=eps, norm=norm, p1=p1)
    w, b, z = res.w, res.b, res.z
    # z* is a worst-case perturbation for the linear classifier: w.z* = eps ||w||_* >= w.delta for feasible delta
    dual = {"l2": np.linalg.norm(w), "linf": np.abs(w).sum(), "l1": np.abs(w).max()}[norm]
    assert w @ z == pytest.approx(eps * dual, rel=1e-8)
    deltas = rng.normal(size=(2000, d))
    pn = {"l2": 2, "linf": np.inf, "l1": 1}[norm]
    deltas *= eps / np.linalg.norm(deltas, ord=pn, axis=1, keepdims=True)
    assert np.all(deltas @ w <= w @ z + 1e-12)
    n = 400_000
    y = np.where(rng.random(n) < p1, 1.0, -1.0)
    x = y[:, None] * (mu - z)[None, :] + rng.multivariate_normal(np.zeros(d), sig, size=n)
    margin = y * (x @ w + b)
    ce = np.logaddexp(0, -margin)
    err = (margin < 0).astype(float)
    tol_ce = 5 * ce.std() / math.sqrt(n)
    tol_01 = 5 * err.std() / math.sqrt(n)
    assert abs(ce.mean() - float(res.cross_entropy)) <= tol_ce
    assert abs(err.mean() - float(res.zero_one)) <= tol_01
    # at eps = 0 the bound is the Bayes risk of the mixture (Monte Carlo of the Bayes classifier)
    r0 = bounds.gaussian_bounds(mu, sig, eps=0.0, norm=norm, p1=p1)
    x0 = y[:, None] * mu[None, :] + (x - y[:, None] * (mu - z)[None, :])
    m0 = y * (x0 @ r0.w + r0.b)
    assert abs((m0 < 0).mean() - float(r0.zero_one)) <= tol_01 * 1.5
    assert abs(np.logaddexp(0, -m0).mean() - float(r0.cross_entropy)) <= 5 * np.logaddexp(0, -m0).std() / math.sqrt(n)
    assert float(r0.cross_entropy) <= float(res.cross_entropy)


def test_gaussian_priors_at_full_budget():
    mu = np.array([0.3, -0.4])
    res = bounds.gaussian_bounds(mu, None, eps=[0.5, 1.0], norm="l2", p1=0.8)
    np.testing.assert_allclose(res.w, 0, atol=1e-15)
    np.testing.assert_allclose(res.zero_one, 0.2, atol=1e-15)
    np.testing.assert_allclose(res.cross_entropy, entropy(0.8, 0.2), rtol=1e-13)


def test_gaussian_vectorised_equals_single_and_jit_equals_eager():
    rng = np.random.default_rng(17)
    mu, sig = rng.normal(size=3), random_spd(rng, 3)
    eps = np.array([0.05, 0.2, 0.6])
    for norm in ("l2", "linf"):
        vec = bounds.gaussian_bounds(mu, sig, eps=eps, norm=norm)
        for k, e in enumerate(eps):
            one = bounds.gaussian_bounds(mu, sig, eps=float(e), norm=norm)
            assert one.cross_entropy.shape == () and one.z.shape == (3,)
            assert float(one.cross_entropy) == pytest.approx(vec.cross_entropy[k], rel=1e-12)
            np.testing.assert_allclose(one.z, vec.z[k], atol=1e-12)
    with jax.enable_x64(True):
        delta = jnp.asarray([0.0, 0.4, 1.5, 3.0])
        jitted = jax.jit(bounds._losses)(delta, jnp.asarray(0.3), jnp.asarray(0.6))
        eager = bounds._losses(delta, jnp.asarray(0.3), jnp.asarray(0.6))  # op-by-op
        for a, b in zip(jitted, eager):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)
        lam = jnp.asarray([0.5, 1.0, 2.0])
        mu_t = jnp.asarray([0.3, -0.7, 0.2])
        zj = jax.jit(functools.partial(bounds._solve_l2, iters=60))(mu_t, lam, jnp.asarray(0.4))
        with jax.disable_jit():
            ze = bounds._solve_l2(mu_t, lam, jnp.asarray(0.4), iters=60)
        np.testing.assert_allclose(np.asarray(zj), np.asarray(ze), rtol=1e-13)


@pytest.mark.parametrize(
    "mu,sigma,kwargs,match",
    [
        ([np.nan, 1.0], None, {}, "^mu"),
        ([], None, {}, "^mu"),
        ([1.0, 1.0], [[1.0, 2.0], [2.0, 1.0]], {}, "^sigma"),
        ([1.0, 1.0], [[1.0, 0.5], [0.0, 1.0]], {}, "^sigma"),
        ([1.0, 1.0], [1.0, -1.0], {}, "^sigma"),
        ([1.0, 1.0], None, dict(eps=-1.0), "^eps"),
        ([1.0, 1.0], None, dict(eps=[[0.1]]), "^eps"),
        ([1.0, 1.0], None, dict(norm=3), "^norm"),
        ([1.0, 1.0], None, dict(p1=1.0), "^p1"),
        ([1.0, 1.0], None, dict(p1=0.0), "^p1"),
    ],
)
def test_gaussian_bad_input(mu, sigma, kwargs, match):
    args = dict(eps=0.1, norm="l2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bounds.gaussian_bounds(np.asarray(mu, float), sigma, **args)


# ---------------------------------------------------------------------------
# real data (skips without the shared MNIST folder)
# ---------------------------------------------------------------------------


def test_mnist_small_graph_brute_force_and_backends(mnist_train):
    from jaxbound import data

    xa, xb = data.class_pair(mnist_train, 3, 7, n_per_class=150)
    xa, xb = xa.reshape(150, -1), xb.reshape(150, -1)
    eps = 3.0
    g = bounds.conflict_graph(xa, xb, eps=eps, norm="l2")
    d = cdist(xa.astype(np.float64), xb.astype(np.float64))
    assert np.array_equal(g.edges, np.argwhere(d <= 2 * eps))
    rs = bounds.optprob(g, backend="scipy")
    rn = bounds.optprob(g, backend="networkx")
    ro = bounds.optprob(g, backend="ortools")
    assert abs(rs.loss - rn.loss) <= 1e-12 and np.abs(rs.q - rn.q).max() <= 1e-12
    assert np.array_equal(ro.q, rs.q) and ro.loss == rs.loss
    assert rs.verify(1e-12).passed and ro.verify(1e-12).passed
    assert rs.loss >= math.log(2) * bounds.min_zero_one_loss(g).loss


@pytest.mark.slow
def test_mnist_5000_per_class_backends_agree(mnist_train):
    from jaxbound import data

    xa, xb = data.class_pair(mnist_train, 3, 7, n_per_class=5000)
    g = bounds.conflict_graph(xa, xb, eps=3.5, norm="l2")
    rs = bounds.optprob(g, backend="scipy")
    rn = bounds.optprob(g, backend="networkx")
    ro = bounds.optprob(g, backend="ortools")
    assert abs(rs.loss - rn.loss) <= 1e-9 and np.abs(rs.q - rn.q).max() <= 1e-9
    assert np.array_equal(ro.q, rs.q) and ro.loss == rs.loss
    assert rs.verify(1e-12).passed and rn.verify(1e-12).passed and ro.verify(1e-12).passed
    zs = bounds.min_zero_one_loss(g, backend="scipy")
    zn = bounds.min_zero_one_loss(g, backend="networkx")
    zo = bounds.min_zero_one_loss(g, backend="ortools")
    assert zs.loss == zn.loss == zo.loss and zs.verify(1e-12).passed


def test_pair_bounds_is_graph_zero_one_and_optprob():
    rng = np.random.default_rng(3)
    xa, xb = rng.uniform(size=(40, 7)), rng.uniform(size=(30, 7))
    for norm in ("l2", "linf"):
        r = bounds.pair_bounds(xa, xb, eps=0.35, norm=norm)
        g = bounds.conflict_graph(xa, xb, eps=0.35, norm=norm)
        assert r.zero_one == bounds.min_zero_one_loss(g).loss
        assert r.cross_entropy == bounds.optprob(g).loss
        assert r.num_edges == g.num_edges and r.n == (40, 30) and r.norm == norm and r.verified is True
        d = r.to_dict()
        assert d["zero_one"] == r.zero_one and d["n"] == [40, 30]
    assert bounds.pair_bounds(xa, xb, eps=0.35, norm="l2", verify=False).verified is None
    with pytest.raises(ValueError, match="eps"):
        bounds.pair_bounds(xa, xb, eps=-1.0, norm="l2")
