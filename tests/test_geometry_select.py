"""Selection kernels of geometry: the l2 k-NN band selection, chunked k-th value, host float64 rechecks.

References are NumPy/SciPy float64 brute force with ties broken by index.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jaxbound import geometry as g


def brute(x, y, k, exclude=None):
    """Float64 l2 brute force; ``exclude`` marks pairs set to +inf; ties by index (stable sort)."""
    D = cdist(np.asarray(x, np.float64), np.asarray(y, np.float64))
    if exclude is not None:
        D = np.where(exclude, np.inf, D)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, 1), idx


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_l2_groups_match_float64_brute_force(k, rng):
    # 2,000 references: groups of 32 columns and a tail group of 16; no near-ties in random data.
    x = rng.normal(size=(45, 20)).astype(np.float32)
    y = rng.normal(size=(2000, 20)).astype(np.float32)
    res = g.knn(x, y, k=k, norm="l2", block_size=16)
    D, idx = brute(x, y, k)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.distances, D, rtol=1e-6)
    self_res = g.knn(y[:300], k=k, norm="l2", exclude_self=True)
    D, idx = brute(y[:300], y[:300], k, exclude=np.eye(300, dtype=bool))
    np.testing.assert_array_equal(self_res.indices, idx)
    np.testing.assert_allclose(self_res.distances, D, rtol=1e-6)


def tied_points(rng, n_tied=60, d=12):
    """A query and ``n_tied`` references at exactly the same float32 distance, in shuffled coordinates.

    The query's coordinates are multiples of 2^-20 in [1, 2) and the offsets multiples of 1/2, so the
    references, the differences, squares and sums are exact in float32: the direct distances tie exactly
    while the GEMM scores differ by rounding (the band holds all of them).
    """
    q = (1.0 + rng.integers(0, 2**20, (1, d)) * 2.0**-20).astype(np.float32)
    v = np.array([0.5, -1.0, 1.0, 0.5, -0.5, 0.0] * (d // 6), np.float32)
    tied = q + np.stack([rng.permutation(v) for _ in range(n_tied)])
    far = q + 3.0 + rng.random((200, d)).astype(np.float32)
    refs = np.concatenate([far[:100], tied, far[100:]]).astype(np.float32)
    return q, refs


@pytest.mark.parametrize("n_tied", [60, 200])
def test_knn_l2_band_overflow_is_exact_with_ties_by_index(n_tied, rng):
    # 60 exact ties > k + 16 candidates: the wide re-ranking (8 (k + 16) = 168 candidates);
    # 200 ties: the row is computed against every reference. Ties by index either way.
    q, refs = tied_points(rng, n_tied=n_tied)
    others = rng.normal(size=(7, q.shape[1])).astype(np.float32)  # fast-path rows in the same blocks
    queries = np.concatenate([others[:3], q, others[3:]])
    D, idx = brute(queries, refs, 5)
    for block in (1, 4, 64):
        res = g.knn(queries, refs, k=5, norm="l2", block_size=block)
        np.testing.assert_array_equal(res.indices, idx)
        np.testing.assert_allclose(res.distances, D, rtol=1e-6)
    np.testing.assert_array_equal(res.indices[3], np.arange(100, 105))


def test_nearest_other_class_ties_by_index(rng):
    q, refs = tied_points(rng, n_tied=40)
    x = np.concatenate([q, refs])
    labels = np.concatenate([[0], np.ones(refs.shape[0], int)])
    res = g.nearest_other_class(x, labels, norm="l2")
    assert res.indices[0] == 101  # the lowest index of the tied points (x holds the query first)
    np.testing.assert_allclose(res.distances[0], np.sqrt(np.sum((refs[100] - q[0]) ** 2.0)), rtol=1e-7)
    D = cdist(x.astype(np.float64), x.astype(np.float64))
    D[labels[:, None] == labels[None, :]] = np.inf
    np.testing.assert_array_equal(res.indices, np.argmin(D, axis=1))
    np.testing.assert_allclose(res.distances, D.min(axis=1), rtol=1e-6)


def test_knn_l2_fewer_candidates_than_k_plus_16(rng):
    # m = 20 references, k = 19: the candidate cap is m, groups of one column.
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.normal(size=(20, 5)).astype(np.float32)
    D, idx = brute(x, y, 19)
    res = g.knn(x, y, k=19, norm="l2")
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.distances, D, rtol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_mean_k_smallest_chunked_selection(norm, rng, monkeypatch):
    # A tiny cache budget: the selection runs on chunks of 1-2 rows of each block; same numbers.
    x = rng.random((19, 6)).astype(np.float32)
    y = rng.random((300, 6)).astype(np.float32)
    y[7] = y[11] = y[250]  # ties counted with their multiplicity
    whole = g.mean_k_smallest(x, y, k=31, norm=norm, block_size=8)
    monkeypatch.setattr(g, "_SELECT_BYTES", 8 * 4 * 320)
    chunked = g.mean_k_smallest(x, y, k=31, norm=norm, block_size=8)
    ref = np.sort(cdist(x.astype(np.float64), y.astype(np.float64), "euclidean" if norm == "l2" else "cityblock"),
                  axis=1)[:, :31].mean(axis=1)
    np.testing.assert_allclose(chunked, ref, rtol=2e-5)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_kth_bits_brackets_exact_on_ties_zeros_and_padding(rng):
    """The k-th smallest value by bisection between each row's min and max finite value: equal to np.sort for
    every k, on rows with ties, -0.0 and +0.0, a constant row, one finite value, +inf padding; jit == eager."""
    import jax.numpy as jnp
    from jax import lax

    rows = [rng.random(40).astype(np.float32) * 9, np.full(40, 3.5, np.float32),
            np.round(rng.random(40) * 4).astype(np.float32), np.r_[np.float32(-0.0), np.zeros(39, np.float32)],
            np.r_[np.float32(2.25), np.full(39, np.inf, np.float32)],
            np.r_[rng.random(30).astype(np.float32), np.full(10, np.inf, np.float32)]]
    d = np.stack(rows)
    for k in (1, 2, 17, 30):
        kk = np.minimum(k, np.isfinite(d).sum(axis=1))  # k within each row's finite values
        for row, kr in zip(d, kk):
            want = np.sort(row)[kr - 1]
            for fn in (g._kth_bits, jax.jit(g._kth_bits)):
                got = lax.bitcast_convert_type(fn(jnp.asarray(row[None]), jnp.int32(kr)), jnp.float32)
                assert float(got[0]) == float(want) and not np.signbit(got[0]), (k, row, got, want)


def test_row_chunks_divide_the_block():
    for b in (1, 7, 8, 256):
        for m in (1, 300, 60000, 10**7):
            c = g._row_chunks(b, m)
            assert 1 <= c <= b and b % c == 0


# --------------------------------------------------------------------------- float64 rechecks on the host


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_dense_band_recheck_on_host_gives_identical_results(norm, monkeypatch):
    """The dense float64 recheck forced onto the host CPU backend (as on a GPU/TPU) decides the same pairs."""
    rng = np.random.default_rng(5)
    x = (rng.integers(0, 3, (40, 6)) / 2.0).astype(np.float32)
    y = (rng.integers(0, 3, (35, 6)) / 2.0).astype(np.float32)
    D = cdist(x.astype(np.float64), y.astype(np.float64),
              {"l1": "cityblock", "l2": "euclidean", "linf": "chebyshev"}[norm])
    radius = float(np.median(D))
    monkeypatch.setattr(g._BandResolver, "dense_above", 0)
    default = g.radius_pairs(x, y, radius=radius, norm=norm, block_size=8)
    platforms = []
    real = g._block_distances64

    def spy(xq, xr, *, norm):
        platforms.append({d.platform for d in xq.devices()} | {d.platform for d in xr.devices()})
        assert xq.dtype == np.float64 and xr.dtype == np.float64
        return real(xq, xr, norm=norm)

    monkeypatch.setattr(g, "_block_distances64", spy)
    monkeypatch.setattr(g._BandResolver, "dense_on_host", True)
    host = g.radius_pairs(x, y, radius=radius, norm=norm, block_size=8)
    counts = g.count_within(x, y, radius=radius, norm=norm, block_size=8)
    assert platforms and all(p == {"cpu"} for p in platforms)
    rr, cc = np.nonzero(D <= radius)
    for res in (default, host):
        np.testing.assert_array_equal(res.rows, rr)
        np.testing.assert_array_equal(res.cols, cc)
    np.testing.assert_array_equal(counts, (D <= radius).sum(1))


def test_dense_band_recheck_goes_to_host_off_cpu(monkeypatch):
    """Automatic choice: the host CPU device when the default backend is an accelerator."""
    r = g._BandResolver(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), np.zeros(1), "l2")
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert r._dense_device().platform == "cpu"
    monkeypatch.setattr(g._BandResolver, "dense_on_host", False)
    assert r._dense_device() == jax.local_devices()[0]
