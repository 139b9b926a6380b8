"""Geometry kernels against SciPy cdist, NumPy brute force and scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from jaxbound import geometry as g

NORMS = [("l1", "cityblock", {}), ("l2", "euclidean", {}), ("linf", "chebyshev", {}), (3.0, "minkowski", {"p": 3.0})]


def ref_dist(x, y, norm):
    for n, metric, kw in NORMS:
        if n == norm:
            return cdist(np.asarray(x, np.float64), np.asarray(y, np.float64), metric, **kw)
    raise AssertionError(norm)


def brute_knn(x, y, k, norm, exclude_self=False):
    """Float64 brute force; ties broken by index (stable sort)."""
    D = ref_dist(x, y, norm)
    if exclude_self:
        np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, 1), idx


def assert_knn_matches(res, D_ref_sorted, idx_ref, D_full, atol):
    """Distances equal; indices equal wherever the neighbour is not tied with another candidate."""
    np.testing.assert_allclose(res.distances, D_ref_sorted, rtol=1e-5, atol=atol)
    k = idx_ref.shape[1]
    for i in range(idx_ref.shape[0]):
        row = np.sort(D_full[i])
        for j in range(k):
            d = D_ref_sorted[i, j]
            n_tied = np.sum(np.abs(row - d) <= atol + 1e-5 * abs(d))
            if n_tied == 1:
                assert res.indices[i, j] == idx_ref[i, j], (i, j)
            else:  # the returned index must be one of the tied candidates
                assert abs(D_full[i, res.indices[i, j]] - d) <= 2 * atol + 1e-5 * abs(d)


@pytest.mark.parametrize("norm", [n for n, _, _ in NORMS])
def test_pairwise_matches_cdist(norm, rng):
    x = rng.normal(size=(37, 11)).astype(np.float32)
    y = rng.normal(size=(23, 11)).astype(np.float32)
    D = g.pairwise_distances(x, y, norm=norm, block_size=5)  # 5 does not divide 37
    np.testing.assert_allclose(D, ref_dist(x, y, norm), rtol=2e-6, atol=2e-6)
    assert D.shape == (37, 23)


def test_pairwise_self_has_zero_diagonal(rng):
    x = rng.random((20, 7)).astype(np.float32)
    D = g.pairwise_distances(x, norm="l2")
    assert np.all(np.diag(D) == 0.0)
    np.testing.assert_allclose(D, D.T, rtol=1e-6)


@pytest.mark.parametrize("norm", [n for n, _, _ in NORMS])
@pytest.mark.parametrize("block", [3, 64])
def test_knn_random_matches_brute_force(norm, block, rng):
    x = rng.random((41, 9)).astype(np.float32)
    y = rng.random((30, 9)).astype(np.float32)
    res = g.knn(x, y, k=7, norm=norm, block_size=block)
    D = ref_dist(x, y, norm)
    dref, iref = brute_knn(x, y, 7, norm)
    assert res.indices.dtype == np.int64 and res.distances.shape == (41, 7)
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    assert_knn_matches(res, dref, iref, D, atol=1e-6)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_knn_matches_sklearn(norm, rng):
    x = rng.normal(size=(60, 5))
    metric = {"l1": "manhattan", "l2": "euclidean", "linf": "chebyshev"}[norm]
    nn = NearestNeighbors(n_neighbors=4, algorithm="brute", metric=metric).fit(x)
    dist, _ = nn.kneighbors(x)
    res = g.knn(x.astype(np.float32), k=4, norm=norm)
    np.testing.assert_allclose(res.distances, dist, rtol=1e-5, atol=1e-5)


def test_knn_self_convention_and_exclude_self(rng):
    x = rng.random((25, 4)).astype(np.float32)
    res = g.knn(x, k=3, norm="l1")
    np.testing.assert_array_equal(res.indices[:, 0], np.arange(25))
    assert np.all(res.distances[:, 0] == 0)
    ex = g.knn(x, k=3, norm="l1", exclude_self=True)
    assert not np.any(ex.indices == np.arange(25)[:, None])
    np.testing.assert_array_equal(ex.indices[:, :2], res.indices[:, 1:])


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_knn_k_equals_n_minus_one(norm, rng):
    x = rng.random((12, 3)).astype(np.float32)
    res = g.knn(x, k=11, norm=norm, exclude_self=True, block_size=5)
    dref, iref = brute_knn(x, x, 11, norm, exclude_self=True)
    D = ref_dist(x, x, norm)
    np.fill_diagonal(D, np.inf)
    assert_knn_matches(res, dref, iref, D, atol=1e-6)
    # every other point appears exactly once
    for i in range(12):
        assert sorted(res.indices[i]) == [j for j in range(12) if j != i]


def test_knn_ties_on_integer_grid():
    # Points on an integer grid: many exact ties, broken by ascending index.
    pts = np.array([[i, j] for i in range(5) for j in range(5)], dtype=np.float32)
    for norm in ("l1", "l2", "linf"):
        res = g.knn(pts, k=5, norm=norm)
        dref, iref = brute_knn(pts, pts, 5, norm)
        np.testing.assert_allclose(res.distances, dref, rtol=1e-7)
        np.testing.assert_array_equal(res.indices, iref)


def test_knn_duplicates_order_by_index():
    x = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    res = g.knn(x, k=3, norm="l2")
    # point 2 is tied at distance 0 with points 0 and 3: lower index first
    np.testing.assert_array_equal(res.indices[2], [0, 2, 3])


def test_knn_single_query_and_single_extra_ref(rng):
    q = rng.random((1, 6)).astype(np.float32)
    r = rng.random((2, 6)).astype(np.float32)
    res = g.knn(q, r, k=1, norm="l2")
    D = ref_dist(q, r, "l2")
    assert res.indices[0, 0] == int(np.argmin(D))
    np.testing.assert_allclose(res.distances[0, 0], D.min(), rtol=1e-6)


def test_knn_float64_option_matches_float64_brute_force(rng):
    x = rng.random((30, 8))
    res = g.knn(x, k=4, norm="l2", precision="float64")
    assert res.distances.dtype == np.float64
    dref, iref = brute_knn(x, x, 4, "l2")
    np.testing.assert_allclose(res.distances, dref, rtol=1e-12, atol=1e-12)
    # x64 was switched on for the call only
    assert jnp.zeros(1).dtype == jnp.float32


def test_knn_real_mnist_subset(mnist_train):
    x = mnist_train.flat()[:400]
    q = mnist_train.flat()[400:460]
    for norm in ("l1", "l2", "linf"):
        res = g.knn(q, x, k=10, norm=norm)
        D = ref_dist(q, x, norm)
        dref, iref = brute_knn(q, x, 10, norm)
        # pixels are multiples of 1/255: float32 rounding stays far below the grid of distances
        assert_knn_matches(res, dref, iref, D, atol=2e-4)


def _job_key(monkeypatch, run):
    """The checkpoint fingerprint the block engine uses for ``run(path)``."""
    from jaxbound import _engine

    keys = []

    class Recording(_engine.BlockCheckpoint):
        def __init__(self, path, key, **kw):
            keys.append(key)
            super().__init__(path, key, **kw)

    with monkeypatch.context() as m:
        m.setattr(_engine, "BlockCheckpoint", Recording)
        run()
    return keys[0]


def test_knn_checkpoint_resume(tmp_path, rng, monkeypatch):
    from jaxbound import _engine

    x = rng.random((50, 5)).astype(np.float32)
    path = tmp_path / "knn.ckpt"
    full = g.knn(x, k=3, norm="l1", block_size=7)
    # Simulate an interrupted run: keep a checkpoint with the first 21 rows, then resume.
    from jaxbound._io import BlockCheckpoint

    key = _job_key(monkeypatch, lambda: g.knn(x, k=3, norm="l1", block_size=7, checkpoint=tmp_path / "probe"))
    ck = BlockCheckpoint(path, key)
    ck.save(0, 14, {"out0": full.distances[:14], "out1": full.indices[:14].astype(np.int32)})
    ck.save(14, 21, {"out0": full.distances[14:21], "out1": full.indices[14:21].astype(np.int32)})
    # a segment that does not continue the prefix is ignored
    ck.save(28, 35, {"out0": full.distances[28:35] * 0, "out1": full.indices[28:35].astype(np.int32) * 0})
    calls = []
    orig = _engine.compiled

    def spy(*a, **k):
        fn = orig(*a, **k)

        def wrapped(xb, *rest):
            calls.append(int(np.asarray(rest[0])[0]))
            return fn(xb, *rest)

        return wrapped

    monkeypatch.setattr(_engine, "compiled", spy)
    res = g.knn(x, k=3, norm="l1", block_size=7, checkpoint=path)
    assert calls[0] == 21  # resumed after the finished rows
    np.testing.assert_array_equal(res.indices, full.indices)
    np.testing.assert_array_equal(res.distances, full.distances)
    assert not path.exists()  # removed once the job finished


def test_knn_interrupted_then_resumed(tmp_path, rng, monkeypatch):
    from jaxbound import _engine

    x = rng.random((60, 5)).astype(np.float32)
    path = tmp_path / "ck"
    full = g.knn(x, k=4, norm="l2", block_size=8)
    monkeypatch.setattr(_engine, "CHECKPOINT_EVERY_S", 0.0)
    orig = _engine.compiled
    starts = []

    def spy(*a, **k):
        fn = orig(*a, **k)

        def wrapped(xb, ids, *rest):
            first = int(np.asarray(ids)[0])
            if first == 32 and "interrupted" not in starts:
                starts.append("interrupted")
                raise KeyboardInterrupt
            starts.append(first)
            return fn(xb, ids, *rest)

        return wrapped

    monkeypatch.setattr(_engine, "compiled", spy)
    with pytest.raises(KeyboardInterrupt):
        g.knn(x, k=4, norm="l2", block_size=8, checkpoint=path)
    assert path.is_dir()
    # blocks 0..3 done; the save after block 3 (rows < 32) is on disk
    starts.clear()
    starts.append("interrupted")
    res = g.knn(x, k=4, norm="l2", block_size=8, checkpoint=path)
    assert starts[1] == 32
    np.testing.assert_array_equal(res.indices, full.indices)
    np.testing.assert_array_equal(res.distances, full.distances)
    assert not path.exists()


def test_knn_large_k_rerank_in_chunks(rng, monkeypatch):
    monkeypatch.setattr(g, "_RERANK_BYTES", 4096)  # forces the chunked re-ranking path
    x = rng.random((23, 6)).astype(np.float32)
    y = rng.random((90, 6)).astype(np.float32)
    res = g.knn(x, y, k=60, norm="l2", block_size=16)
    dref, iref = brute_knn(x, y, 60, "l2")
    assert_knn_matches(res, dref, iref, ref_dist(x, y, "l2"), atol=1e-6)


def test_knn_checkpoint_ignores_other_job(tmp_path, rng):
    x = rng.random((20, 5)).astype(np.float32)
    path = tmp_path / "knn.ckpt"
    from jaxbound._io import BlockCheckpoint

    BlockCheckpoint(path, "another job").save(0, 10, {"out0": np.zeros((10, 3)), "out1": np.zeros((10, 3), np.int32)})
    res = g.knn(x, k=3, norm="l2", checkpoint=path)
    np.testing.assert_array_equal(res.indices, brute_knn(x, x, 3, "l2")[1])


@pytest.mark.parametrize("norm", [n for n, _, _ in NORMS])
def test_radius_pairs_matches_cdist(norm, rng):
    x = rng.random((33, 6)).astype(np.float32)
    y = rng.random((19, 6)).astype(np.float32)
    D = ref_dist(x, y, norm)
    radius = float(np.quantile(D, 0.3))
    rp = g.radius_pairs(x, y, radius=radius, norm=norm, block_size=4)
    rr, cc = np.nonzero(D <= radius)
    np.testing.assert_array_equal(rp.rows, rr)
    np.testing.assert_array_equal(rp.cols, cc)
    np.testing.assert_array_equal(rp.counts, (D <= radius).sum(1))
    assert rp.rows.dtype == np.int64 and rp.cols.dtype == np.int64


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_radius_pairs_exact_at_boundary(norm):
    # Integer grid: many pairs lie exactly at the radius; the ball is closed.
    pts = np.array([[i, j, (i * j) % 3] for i in range(6) for j in range(6)], dtype=np.float32) / 7.0
    D = ref_dist(pts, pts, norm)
    for radius in np.unique(np.round(D, 12))[1:6]:
        rp = g.radius_pairs(pts, radius=float(radius), norm=norm)
        rr, cc = np.nonzero(D <= radius)
        np.testing.assert_array_equal(rp.rows, rr)
        np.testing.assert_array_equal(rp.cols, cc)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_radius_pairs_dense_band_path(norm, monkeypatch):
    # Many pairs exactly at the radius (grid data): the dense float64 recomputation decides them.
    monkeypatch.setattr(g._BandResolver, "dense_above", 0)
    rng = np.random.default_rng(5)
    x = (rng.integers(0, 3, (40, 6)) / 2.0).astype(np.float32)
    y = (rng.integers(0, 3, (35, 6)) / 2.0).astype(np.float32)
    D = ref_dist(x, y, norm)
    radius = float(np.median(D))
    rp = g.radius_pairs(x, y, radius=radius, norm=norm, block_size=8)
    rr, cc = np.nonzero(D <= radius)
    np.testing.assert_array_equal(rp.rows, rr)
    np.testing.assert_array_equal(rp.cols, cc)
    np.testing.assert_array_equal(g.count_within(x, y, radius=radius, norm=norm), (D <= radius).sum(1))


def test_radius_pairs_zero_radius_and_empty_result(rng):
    x = rng.random((10, 3)).astype(np.float32)
    rp = g.radius_pairs(x, radius=0.0, norm="l2")
    np.testing.assert_array_equal(rp.rows, np.arange(10))
    np.testing.assert_array_equal(rp.cols, np.arange(10))
    far = g.radius_pairs(x, x + 10.0, radius=1.0, norm="linf")
    assert far.rows.size == 0 and far.counts.sum() == 0 and far.counts.shape == (10,)


def test_radius_pairs_real_mnist(mnist_train):
    xa = mnist_train.flat()[:300]
    xb = mnist_train.flat()[300:500]
    for norm, radius in (("l2", 7.0), ("linf", 0.8), ("l1", 60.0)):
        D = ref_dist(xa, xb, norm)
        rp = g.radius_pairs(xa, xb, radius=radius, norm=norm)
        rr, cc = np.nonzero(D <= radius)
        assert rr.size > 0
        np.testing.assert_array_equal(rp.rows, rr)
        np.testing.assert_array_equal(rp.cols, cc)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", 3.0])
def test_per_row_radii_and_count_within(norm, rng):
    x = rng.random((26, 5)).astype(np.float32)
    y = rng.random((31, 5)).astype(np.float32)
    D = ref_dist(x, y, norm)
    radii = np.quantile(D, rng.random(26), axis=1).diagonal().copy()  # some radii hit a distance exactly
    radii[0] = D[0, 3]
    rp = g.radius_pairs(x, y, radius=radii, norm=norm, block_size=4)
    rr, cc = np.nonzero(D <= radii[:, None])
    np.testing.assert_array_equal(rp.rows, rr)
    np.testing.assert_array_equal(rp.cols, cc)
    counts = g.count_within(x, y, radius=radii, norm=norm, block_size=7)
    np.testing.assert_array_equal(counts, (D <= radii[:, None]).sum(1))
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(g.count_within(x, radius=0.0, norm=norm), np.ones(26))
    with pytest.raises(ValueError, match="^radius:"):
        g.count_within(x, y, radius=radii[:3], norm=norm)
    with pytest.raises(ValueError, match="^radius:"):
        g.count_within(x, y, radius=-radii, norm=norm)


def test_count_within_boundary_grid():
    pts = np.array([[i, j] for i in range(7) for j in range(7)], dtype=np.float32) / 3.0
    for norm in ("l1", "l2", "linf"):
        D = ref_dist(pts, pts, norm)
        for radius in np.unique(np.round(D, 12))[1:5]:
            np.testing.assert_array_equal(g.count_within(pts, radius=float(radius), norm=norm),
                                          (D <= radius).sum(1))


def test_nearest_other_class(rng):
    x = rng.random((40, 4)).astype(np.float32)
    lab = rng.integers(0, 3, 40)
    res = g.nearest_other_class(x, lab, norm="l2", block_size=6)
    D = ref_dist(x, x, "l2")
    D[lab[:, None] == lab[None, :]] = np.inf
    np.testing.assert_allclose(res.distances, D.min(1), rtol=1e-6)
    np.testing.assert_array_equal(res.indices, D.argmin(1))
    assert np.all(lab[res.indices] != lab)


def test_nearest_other_class_with_refs(rng):
    x = rng.random((15, 4)).astype(np.float32)
    lx = rng.integers(0, 2, 15)
    r = rng.random((30, 4)).astype(np.float32)
    lr = rng.integers(0, 2, 30)
    res = g.nearest_other_class(x, lx, norm="l1", refs=r, ref_labels=lr)
    D = ref_dist(x, r, "l1")
    D[lx[:, None] == lr[None, :]] = np.inf
    np.testing.assert_allclose(res.distances, D.min(1), rtol=1e-6)


def test_block_distances_jit_equals_eager(rng):
    xq = jnp.asarray(rng.random((5, 8)), jnp.float32)
    refs = jnp.asarray(rng.random((9, 8)), jnp.float32)
    for norm in ("l1", "l2", "linf", 3):
        eager = g.block_distances(xq, refs, norm=norm)
        jitted = jax.jit(lambda a, b: g.block_distances(a, b, norm=norm))(xq, refs)
        # equal up to one rounding (XLA may fuse a*b+c into an FMA under jit)
        np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=3e-7, atol=0)
        np.testing.assert_allclose(np.asarray(eager), ref_dist(xq, refs, norm), rtol=2e-6)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", 3])
def test_block_distances_numpy_input_equals_jax_input(rng, norm):
    xq = rng.random((5, 8)).astype(np.float32)
    refs = rng.random((9, 8)).astype(np.float32)
    from_numpy = np.asarray(g.block_distances(xq, refs, norm=norm))
    from_jax = np.asarray(g.block_distances(jnp.asarray(xq), jnp.asarray(refs), norm=norm))
    np.testing.assert_array_equal(from_numpy, from_jax)
    np.testing.assert_allclose(from_numpy, ref_dist(xq, refs, norm), rtol=2e-6)
    ints = np.asarray(g.block_distances(np.array([[0, 0]]), np.array([[3, 4]]), norm="l2"))
    np.testing.assert_array_equal(ints, [[5.0]])  # integers are exact in float32


def test_block_distances_bad_inputs_name_the_argument(rng):
    x = rng.random((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="^xq: expected a 2-D"):
        g.block_distances(x[0], x)
    with pytest.raises(ValueError, match="^refs: expected a 2-D"):
        g.block_distances(x, x[None])
    with pytest.raises(ValueError, match="^refs: feature dimension"):
        g.block_distances(x, x[:, :2])
    with pytest.raises(ValueError, match="^xq: expected a real numeric"):
        g.block_distances(x > 0.5, x)


def test_lp_norm(rng):
    from jaxbound import lp

    v = rng.normal(size=(4, 6))
    np.testing.assert_allclose(lp.lp_norm(jnp.asarray(v), "l1"), np.abs(v).sum(1), rtol=1e-6)
    np.testing.assert_allclose(lp.lp_norm(jnp.asarray(v), np.inf), np.abs(v).max(1), rtol=1e-6)
    np.testing.assert_allclose(lp.lp_norm(jnp.asarray(v), 3), (np.abs(v) ** 3).sum(1) ** (1 / 3), rtol=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda x: g.knn(x, k=3, norm="l7x"), "norm"),
        (lambda x: g.knn(x, k=10, norm="l2"), "k"),
        (lambda x: g.knn(x, k=0, norm="l2"), "k"),
        (lambda x: g.knn(x, k=2.5, norm="l2"), "k"),
        (lambda x: g.knn(x, x[:, :2], k=2), "refs"),
        (lambda x: g.knn(x, x, k=2, exclude_self=True), "exclude_self"),
        (lambda x: g.knn(x, k=2, precision="float16"), "precision"),
        (lambda x: g.knn(np.where(np.arange(30).reshape(10, 3) == 4, np.nan, x), k=2), "queries"),
        (lambda x: g.knn(x, np.full((4, 3), np.inf), k=2), "refs"),
        (lambda x: g.knn(x[:0], k=2), "queries"),
        (lambda x: g.pairwise_distances(x, x[:, :2]), "y"),
        (lambda x: g.radius_pairs(x, x * np.nan, radius=0.1), "y"),
        (lambda x: g.knn(x, x[:0], k=1), "refs"),
        (lambda x: g.knn(x[:, None], k=2), "queries"),
        (lambda x: g.knn(x.astype(bool), k=2), "queries"),
        (lambda x: g.radius_pairs(x, radius=-0.1), "radius"),
        (lambda x: g.radius_pairs(x, radius=float("nan")), "radius"),
        (lambda x: g.radius_pairs(x, radius=np.full(10, np.inf)), "radius"),
        (lambda x: g.pairwise_distances(x, norm=0.5), "norm"),
        (lambda x: g.knn(x, k=2, block_size=0), "block_size"),
        (lambda x: g.nearest_other_class(x, np.zeros(10, int)), "labels"),
        (lambda x: g.nearest_other_class(x, np.arange(9)), "labels"),
        (lambda x: g.nearest_other_class(x, np.arange(10) * 0.5), "labels"),
        (lambda x: g.nearest_other_class(x, np.arange(10), refs=x), "ref_labels"),
    ],
)
def test_bad_input_names_argument(call, arg, rng):
    x = rng.random((10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        call(x)


def test_norm_aliases():
    from jaxbound._checks import canonical_norm, dual_norm

    assert canonical_norm(1) == canonical_norm("L1") == "l1"
    assert canonical_norm(np.inf) == canonical_norm("inf") == canonical_norm(float("inf")) == "linf"
    assert canonical_norm(2.0) == "l2" and canonical_norm(3) == 3.0
    assert dual_norm("l1") == "linf" and dual_norm(np.inf) == "l1" and dual_norm(3) == 1.5


# ----------------------------------------------------------------------------- sharding


SHARD_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import numpy as np
    import jax
    from jaxbound import geometry as g
    assert len(jax.local_devices()) == 8, jax.local_devices()
    rng = np.random.default_rng(1)
    x = rng.random((61, 12)).astype(np.float32)
    y = rng.random((37, 12)).astype(np.float32)
    lab = rng.integers(0, 3, 61)
    out = {}
    for norm in ("l1", "l2", "linf"):
        k = g.knn(x, y, k=5, norm=norm, block_size=3)
        r = g.radius_pairs(x, y, radius=0.9 if norm != "l1" else 4.0, norm=norm, block_size=2)
        c = g.count_within(x, y, radius=np.linspace(0.5, 4.0, 61), norm=norm, block_size=5)
        n = g.nearest_other_class(x, lab, norm=norm, block_size=4)
        d = g.pairwise_distances(x, y, norm=norm, block_size=3)
        out[norm] = [k.distances.tolist(), k.indices.tolist(), r.rows.tolist(), r.cols.tolist(),
                     n.distances.tolist(), n.indices.tolist(), d.tolist(), c.tolist()]
    print(json.dumps(out))
    """
)


def _run_with_devices(n_dev: int) -> dict:
    import json

    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
    env["JAX_PLATFORMS"] = "cpu"
    script = SHARD_SCRIPT.replace("== 8", f"== {n_dev}")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_over_8_devices_identical_to_one_device():
    one = _run_with_devices(1)
    eight = _run_with_devices(8)
    assert one.keys() == eight.keys()
    for norm in one:
        for a, b in zip(one[norm], eight[norm]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=norm)


# ----------------------------------------------------------------------------- public primitives


def test_l2_sq_gemm_within_rounding_bound(rng):
    x = rng.random((13, 40)).astype(np.float32)
    y = rng.random((17, 40)).astype(np.float32)
    exact = ref_dist(x, y, "l2") ** 2
    got = np.asarray(g.l2_sq_gemm(jnp.asarray(x), jnp.asarray(y)))
    assert got.shape == (13, 17) and (got >= 0).all()
    rel = g.gemm_rounding_bound(40, "float32")
    band = rel * ((x.astype(np.float64) ** 2).sum(1)[:, None] + (y.astype(np.float64) ** 2).sum(1)[None, :])
    assert np.all(np.abs(got - exact) <= band)
    # the precomputed squared norms give the same numbers
    ysq = jnp.sum(jnp.asarray(y) ** 2, axis=1)
    np.testing.assert_array_equal(np.asarray(g.l2_sq_gemm(jnp.asarray(x), jnp.asarray(y), ysq)), got)


def test_gemm_rounding_bound_values():
    assert g.gemm_rounding_bound(784, "float32") == 4 * (784 + 4) * 2.0**-24
    assert g.gemm_rounding_bound(10, np.float64) == 4 * 14 * 2.0**-53
    assert g.gemm_rounding_bound(10, jnp.float32) == 4 * 14 * 2.0**-24


def brute_mean_k(x, y, k, norm):
    D = np.sort(ref_dist(x, y, norm), axis=1)
    return D[:, :k].mean(axis=1)


@pytest.mark.parametrize("norm", [n for n, _, _ in NORMS])
def test_mean_k_smallest_matches_brute_force(norm, rng):
    x = rng.random((37, 9)).astype(np.float32)
    y = rng.random((50, 9)).astype(np.float32)
    y[10] = y[3]  # duplicates: ties are counted with their multiplicity
    for k in (1, 5, 50):
        got = g.mean_k_smallest(x, y, k=k, norm=norm, block_size=8)
        assert got.shape == (37,) and got.dtype == np.float32
        np.testing.assert_allclose(got, brute_mean_k(x, y, k, norm), rtol=2e-5, atol=1e-6)


def test_mean_k_smallest_shapes_fixed_by_block_and_ref_rows(rng):
    x = rng.random((21, 6)).astype(np.float32)
    y = rng.random((40, 6)).astype(np.float32)
    a = g.mean_k_smallest(x, y, k=4, block_size=5, ref_rows=512)
    b = g.mean_k_smallest(x, y[:40], k=4, block_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # one query at a time in a block of 5 gives the same number as a block of 5 queries
    one = np.concatenate([g.mean_k_smallest(x[i:i + 1], y, k=4, block_size=5, ref_rows=512) for i in range(3)])
    np.testing.assert_array_equal(one, a[:3])
    assert g.mean_k_smallest(x[:0], y, k=4).shape == (0,)
    with pytest.raises(ValueError, match="k"):
        g.mean_k_smallest(x, y, k=41)
    with pytest.raises(ValueError, match="ref_rows"):
        g.mean_k_smallest(x, y, k=4, ref_rows=10)


def test_mean_k_smallest_reproduces_point_margins(rng):
    """shift.point_margins' numbers: per class, out-of-class refs padded to one shape, one block size."""
    from jaxbound import shift

    x = rng.random((60, 7)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    ref = shift.point_margins(x, y, fraction=0.1, block_size=16)
    counts = np.bincount(y)
    m_pad = -(-int(60 - counts.min()) // 256) * 256
    b = int(min(16, counts.max()))
    got = np.zeros(60)
    for c in range(3):
        r = np.flatnonzero(y != c)
        k = max(1, int(np.ceil(0.1 * r.size - 1e-9)))
        got[y == c] = g.mean_k_smallest(x[y == c], x[r], k=k, block_size=b, ref_rows=m_pad)
    np.testing.assert_array_equal(got, ref)
