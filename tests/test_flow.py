"""Tests for jaxbound.flow: max-flow / min-cut backends and the iterative OptProb core."""

from __future__ import annotations

import itertools
import warnings

import networkx as nx
import numpy as np
import pytest

from jaxbound import flow


def _random_bipartite(rng, na, nb, density):
    m = rng.random((na, nb)) < density
    ea, eb = np.nonzero(m)
    return ea.astype(np.int64), eb.astype(np.int64)


def _brute_cover(na, nb, ea, eb, wa, wb):
    """Minimum-weight vertex cover by enumeration (tiny graphs)."""
    w = np.concatenate([wa, wb])
    best = None
    for mask in itertools.product([False, True], repeat=na + nb):
        m = np.array(mask, bool)
        if np.all(m[ea] | m[na + eb]):
            val = int(w[m].sum())
            best = val if best is None else min(best, val)
    return best


BACKENDS = ["ortools", "scipy", "networkx"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_flow_matches_networkx_value_and_is_a_valid_flow(backend):
    rng = np.random.default_rng(0)
    for _ in range(15):
        na, nb = rng.integers(0, 12, 2)
        ea, eb = _random_bipartite(rng, na, nb, rng.uniform(0, 0.6))
        ca, cb = rng.integers(0, 20, na), rng.integers(0, 20, nb)
        res = flow.bipartite_max_flow(na, nb, ea, eb, ca, cb, backend=backend)
        # independent value: networkx's Edmonds-Karp on the same network
        g = nx.DiGraph()
        g.add_nodes_from(["s", "t"])
        for u in range(na):
            g.add_edge("s", ("a", u), capacity=int(ca[u]))
        for v in range(nb):
            g.add_edge(("b", v), "t", capacity=int(cb[v]))
        for u, v in zip(ea, eb):
            g.add_edge(("a", int(u)), ("b", int(v)))
        ref = nx.maximum_flow_value(g, "s", "t", flow_func=nx.algorithms.flow.edmonds_karp)
        assert res.value == ref
        # capacity and conservation, exact integers
        fa, fb, fe = res.flow_a.astype(np.int64), res.flow_b.astype(np.int64), res.flow_e.astype(np.int64)
        assert np.all(fa >= 0) and np.all(fa <= ca) and np.all(fb >= 0) and np.all(fb <= cb) and np.all(fe >= 0)
        assert np.array_equal(np.bincount(ea, weights=fe, minlength=na).astype(np.int64), fa)
        assert np.array_equal(np.bincount(eb, weights=fe, minlength=nb).astype(np.int64), fb)
        # the cut is a vertex cover whose weight is the flow value (max-flow = min-cut)
        cover_a, cover_b = ~res.source_a, res.source_b
        assert np.all(cover_a[ea] | cover_b[eb])
        assert int(ca[cover_a].sum() + cb[cover_b].sum()) == res.value
        assert res.backend == backend


def test_min_vertex_cover_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(25):
        na, nb = rng.integers(1, 6, 2)
        ea, eb = _random_bipartite(rng, na, nb, rng.uniform(0, 0.8))
        wa, wb = rng.integers(0, 7, na), rng.integers(0, 7, nb)
        cov = flow.min_vertex_cover(na, nb, ea, eb, wa, wb)
        assert cov.weight == _brute_cover(na, nb, ea, eb, wa, wb)
        assert np.all(cov.cover_a[ea] | cov.cover_b[eb])


def test_minimal_cut_is_the_smallest_source_side():
    # two symmetric min cuts: {a0} on the source side or not; minimal keeps S empty
    res = flow.bipartite_max_flow(1, 1, [0], [0], [3], [3])
    assert res.value == 3 and not res.source_a.any() and not res.source_b.any()


def test_edge_order_is_preserved_and_duplicates_rejected():
    ea = np.array([2, 0, 1, 0])
    eb = np.array([0, 1, 1, 0])
    res = flow.bipartite_max_flow(3, 2, ea, eb, [1, 1, 1], [5, 5])
    fe = res.flow_e.astype(np.int64)
    # reference in sorted order, mapped back
    res_sorted = flow.bipartite_max_flow(3, 2, ea[np.lexsort((eb, ea))], eb[np.lexsort((eb, ea))], [1, 1, 1], [5, 5])
    assert res.value == res_sorted.value == 3
    assert np.array_equal(np.bincount(ea, weights=fe, minlength=3), [1, 1, 1])
    with pytest.raises(ValueError, match="^edge_a"):
        flow.bipartite_max_flow(2, 2, [0, 0], [1, 1], [1, 1], [1, 1])


def test_scipy_int32_guard_and_big_integer_backend():
    big = 2**40
    with pytest.raises(ValueError, match="^backend: 'scipy'"):
        flow.bipartite_max_flow(1, 1, [0], [0], [big], [big + 1], backend="scipy")
    res = flow.bipartite_max_flow(1, 1, [0], [0], [big], [big + 1], backend="auto")
    assert res.backend == "ortools" and res.value == big
    # beyond int64: Python integers stay exact
    huge = 2**80 + 1
    ca = np.array([huge, 3], dtype=object)
    res = flow.bipartite_max_flow(2, 1, [0, 1], [0, 0], ca, np.array([2**81], dtype=object))
    assert res.value == huge + 3 and res.backend == "networkx"
    with pytest.raises(ValueError, match="^backend: 'ortools'"):
        flow.bipartite_max_flow(2, 1, [0, 1], [0, 0], ca, np.array([2**81], dtype=object), backend="ortools")


def test_ortools_int64_large_capacities_and_totals():
    """Capacities near int64's limit: OR-Tools exact while the totals fit, networkx (auto) beyond."""
    rng = np.random.default_rng(7)
    top = flow.INT64_MAX
    for _ in range(6):
        na, nb = rng.integers(1, 7, 2)
        ea, eb = _random_bipartite(rng, na, nb, 0.5)
        ca = rng.integers(top // (4 * na), top // na, na)
        cb = rng.integers(top // (4 * nb), top // nb, nb)
        ro = flow.bipartite_max_flow(na, nb, ea, eb, ca, cb, backend="ortools")
        rn = flow.bipartite_max_flow(na, nb, ea, eb, ca, cb, backend="networkx")
        assert ro.value == rn.value == _brute_cover(na, nb, ea, eb, ca.astype(object), cb.astype(object))
        assert np.array_equal(ro.source_a, rn.source_a) and np.array_equal(ro.source_b, rn.source_b)
    # totals beyond int64 (each capacity fits): auto runs networkx, exactly; 'ortools' refuses
    ca, cb = np.array([top, top]), np.array([top, top])
    ea, eb = np.array([0, 1]), np.array([0, 1])
    res = flow.bipartite_max_flow(2, 2, ea, eb, ca, cb)
    assert res.backend == "networkx" and res.value == 2 * top
    with pytest.raises(ValueError, match="^backend: 'ortools'"):
        flow.bipartite_max_flow(2, 2, ea, eb, ca, cb, backend="ortools")


@pytest.mark.parametrize("na,nb", [(0, 0), (0, 3), (3, 0), (1, 1)])
def test_sizes_zero_and_one_all_backends(na, nb):
    ea = eb = np.zeros(0, np.int64)
    if na and nb:
        ea, eb = np.array([0]), np.array([0])
    for be in BACKENDS:
        res = flow.bipartite_max_flow(na, nb, ea, eb, np.full(na, 4), np.full(nb, 2), backend=be)
        assert res.value == (2 if na and nb else 0)
        assert res.flow_a.shape == (na,) and res.flow_b.shape == (nb,) and res.flow_e.shape == (ea.size,)
        # minimal minimum cut: the A vertex whose source edge is not saturated stays on the source side
        assert res.source_a.tolist() == [True] * na and res.source_b.tolist() == [bool(na)] * nb


def test_backends_agree_on_values_and_minimal_cuts_with_ties():
    """Random graphs with many equal capacities (many minimum cuts): all backends give the minimal one."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        na, nb = rng.integers(1, 25, 2)
        ea, eb = _random_bipartite(rng, na, nb, rng.uniform(0.02, 0.4))
        ca, cb = rng.integers(0, 3, na), rng.integers(0, 3, nb)  # ties everywhere
        res = [flow.bipartite_max_flow(na, nb, ea, eb, ca, cb, backend=be) for be in BACKENDS]
        assert len({r.value for r in res}) == 1
        for r in res[1:]:
            assert np.array_equal(r.source_a, res[0].source_a) and np.array_equal(r.source_b, res[0].source_b)
        # minimality: the source side is exactly what the residual network of each flow reaches
        g = nx.DiGraph()
        g.add_nodes_from(["s", "t"])
        r = res[0]
        for u in range(na):
            if r.flow_a[u] < ca[u]:
                g.add_edge("s", ("a", u))
        for e, (u, v) in enumerate(zip(ea.tolist(), eb.tolist())):
            g.add_edge(("a", u), ("b", v))
            if r.flow_e[e] > 0:
                g.add_edge(("b", v), ("a", u))
        for v in range(nb):
            if r.flow_b[v] < cb[v]:
                g.add_edge(("b", v), "t")
        reach = nx.descendants(g, "s")
        assert "t" not in reach
        assert r.source_a.tolist() == [("a", u) in reach for u in range(na)]
        assert r.source_b.tolist() == [("b", v) in reach for v in range(nb)]


def test_bad_inputs():
    with pytest.raises(ValueError, match="^edge_b"):
        flow.bipartite_max_flow(2, 2, [0], [2], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="^edge_a"):
        flow.bipartite_max_flow(2, 2, [0.5], [1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="^cap_a"):
        flow.bipartite_max_flow(2, 2, [0], [1], [1, -1], [1, 1])
    with pytest.raises(ValueError, match="^cap_b"):
        flow.bipartite_max_flow(2, 2, [0], [1], [1, 1], [1.5, 1.0])
    with pytest.raises(ValueError, match="^backend"):
        flow.bipartite_max_flow(1, 1, [0], [0], [1], [1], backend="cplex")
    with pytest.raises(ValueError, match="^w_a"):
        flow.optprob_parts(1, 1, [0], [0], [0], [0])
    with pytest.raises(ValueError, match="^n_a"):
        flow.optprob_parts(-1, 1, [], [], [], [1])


def test_optprob_parts_structure_lemma5():
    """Parts numbered by q_a; every edge goes from part i to part j >= i (Lemma 5.1)."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        na, nb = rng.integers(2, 40, 2)
        ea, eb = _random_bipartite(rng, na, nb, 0.08)
        wa, wb = rng.integers(1, 9, na), rng.integers(1, 9, nb)
        parts = flow.optprob_parts(na, nb, ea, eb, wa, wb)
        assert np.all(parts.part_a[ea] <= parts.part_b[eb])
        qa, qb = parts.q()
        ratios = [a / (a + b) for a, b in zip(parts.weight_a, parts.weight_b)]
        assert ratios == sorted(ratios)
        # part weights are the sums of their members
        for i, (wa_i, wb_i) in enumerate(zip(parts.weight_a, parts.weight_b)):
            assert wa_i == int(wa[parts.part_a == i].sum()) and wb_i == int(wb[parts.part_b == i].sum())


def test_optprob_parts_backends_identical():
    rng = np.random.default_rng(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            na, nb = rng.integers(5, 30, 2)
            ea, eb = _random_bipartite(rng, na, nb, 0.1)
            wa, wb = rng.integers(0, 5, na), rng.integers(1, 5, nb)
            ps = [flow.optprob_parts(na, nb, ea, eb, wa, wb, backend=be) for be in BACKENDS]
            for p in ps[1:]:
                assert np.array_equal(np.concatenate(p.q()), np.concatenate(ps[0].q()))
                assert np.array_equal(p.part_a, ps[0].part_a) and np.array_equal(p.part_b, ps[0].part_b)
                assert p.loss() == ps[0].loss() and p.rounds == ps[0].rounds
                for z, z0 in ((p.z_edge, ps[0].z_edge), (p.z_a, ps[0].z_a), (p.z_b, ps[0].z_b)):
                    # the strategy z may differ between maximum flows; its totals may not
                    assert abs(z.sum() - z0.sum()) <= 1e-12
            assert set(ps[0].backends) <= {"ortools"} and set(ps[1].backends) <= {"scipy"}


def test_errors_name_the_public_argument_of_each_function():
    # min_vertex_cover takes weights w_a / w_b: its errors name them, not the internal capacities
    with pytest.raises(ValueError, match="^w_a"):
        flow.min_vertex_cover(2, 1, [0], [0], [1, -1], [1])
    with pytest.raises(ValueError, match="^w_b"):
        flow.min_vertex_cover(1, 1, [0], [0], [1], [0.5])
    with pytest.raises(ValueError, match="^backend: 'scipy'"):
        flow.min_vertex_cover(1, 1, [0], [0], [2**40], [1], backend="scipy")
    with pytest.raises(ValueError, match="^backend: 'scipy'"):
        # a path (not complete bipartite), so OptProb needs a max flow
        flow.optprob_parts(2, 2, [0, 1, 1], [0, 0, 1], [2**40, 1], [1, 1], backend="scipy")
    with pytest.raises(ValueError, match="^edge_b"):
        flow.min_vertex_cover(1, 1, [0], [1], [1], [1])


def test_auto_takes_scipy_for_large_networks(monkeypatch):
    """'auto': SciPy from _SCIPY_FROM_EDGES middle edges on (when int32 holds them), OR-Tools below; same results."""
    rng = np.random.default_rng(13)
    na, nb = 30, 25
    ea, eb = _random_bipartite(rng, na, nb, 0.15)
    wa, wb = rng.integers(1, 6, na), rng.integers(1, 6, nb)
    ref = flow.optprob_parts(na, nb, ea, eb, wa, wb, backend="networkx")
    monkeypatch.setattr(flow, "_SCIPY_FROM_EDGES", 20)
    res = flow.bipartite_max_flow(na, nb, ea, eb, wa, wb)
    assert ea.size >= 20 and res.backend == "scipy"
    assert flow.bipartite_max_flow(na, nb, ea[:19], eb[:19], wa, wb).backend == "ortools"
    # too big for int32: OR-Tools even above the size threshold
    assert flow.bipartite_max_flow(na, nb, ea, eb, wa * 2**32, wb).backend == "ortools"
    mixed = flow.optprob_parts(na, nb, ea, eb, wa, wb)
    assert mixed.backends[0] == "scipy" and np.array_equal(np.concatenate(mixed.q()), np.concatenate(ref.q()))
    assert np.array_equal(mixed.part_a, ref.part_a) and np.array_equal(mixed.part_b, ref.part_b)
