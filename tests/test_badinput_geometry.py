"""Bad inputs to jaxbound.geometry: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import numpy as np

from jaxbound import geometry as g
from _badinput import check, params, unique_ids

X = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2)
LAB = np.array([0, 1, 0, 1, 0, 1])
NAN = np.where(X > 0.5, np.nan, X)

CASES = [
    ("block_distances 1-D xq", lambda: g.block_distances(X[0], X), ValueError, "xq"),
    ("block_distances 3-D refs", lambda: g.block_distances(X, X[None]), ValueError, "refs"),
    ("block_distances dims differ", lambda: g.block_distances(X, X[:, :1]), ValueError, "refs"),
    ("block_distances bool xq", lambda: g.block_distances(X > 0, X), ValueError, "xq"),
    ("block_distances bad norm", lambda: g.block_distances(X, X, norm="lfoo"), ValueError, "norm"),
    ("block_distances p below 1", lambda: g.block_distances(X, X, norm=0.5), ValueError, "norm"),
    ("pairwise_distances nan", lambda: g.pairwise_distances(NAN), ValueError, "x"),
    ("pairwise_distances 1-D", lambda: g.pairwise_distances(X[0]), ValueError, "x"),
    ("pairwise_distances zero features", lambda: g.pairwise_distances(np.zeros((3, 0))), ValueError, "x"),
    ("pairwise_distances dims differ", lambda: g.pairwise_distances(X, X[:, :1]), ValueError, "y"),
    ("knn 1-D queries", lambda: g.knn(X[0], k=1), ValueError, "queries"),
    ("knn ragged queries", lambda: g.knn([[0.0, 1.0], [2.0]], k=1), ValueError, "queries"),
    ("count_within nan y", lambda: g.count_within(X, NAN, radius=0.1), ValueError, "y"),
    ("pairwise_distances precision", lambda: g.pairwise_distances(X, precision="float16"), ValueError,
     "precision"),
    ("pairwise_distances block_size 0", lambda: g.pairwise_distances(X, block_size=0), ValueError, "block_size"),
    ("knn k too large", lambda: g.knn(X, k=6), ValueError, "k"),
    ("knn k zero", lambda: g.knn(X, k=0), ValueError, "k"),
    ("knn k float", lambda: g.knn(X, k=1.5), ValueError, "k"),
    ("knn empty queries", lambda: g.knn(X[:0], X, k=1), ValueError, "queries"),
    ("knn nan refs", lambda: g.knn(X, NAN, k=1), ValueError, "refs"),
    ("knn exclude_self with refs", lambda: g.knn(X, X, k=1, exclude_self=True), ValueError, "exclude_self"),
    ("knn exclude_self not bool", lambda: g.knn(X, k=1, exclude_self="yes"), ValueError, "exclude_self"),
    ("knn negative checkpoint_every", lambda: g.knn(X, k=1, checkpoint="/tmp/bi/ck", checkpoint_every=-1),
     ValueError, "checkpoint_every"),
    ("knn checkpoint is a file", lambda: g.knn(X, k=1, checkpoint="/etc/passwd"), ValueError, "checkpoint"),
    ("knn checkpoint not a path", lambda: g.knn(X, k=1, checkpoint=3), TypeError, "checkpoint"),
    ("knn string norm", lambda: g.knn(X, k=1, norm="euclid"), ValueError, "norm"),
    ("radius_pairs negative radius", lambda: g.radius_pairs(X, radius=-0.1), ValueError, "radius"),
    ("radius_pairs nan radius", lambda: g.radius_pairs(X, radius=float("nan")), ValueError, "radius"),
    ("radius_pairs string radius", lambda: g.radius_pairs(X, radius="big"), ValueError, "radius"),
    ("count_within nan x", lambda: g.count_within(NAN, radius=0.1), ValueError, "x"),
    ("count_within negative radius", lambda: g.count_within(X, radius=-1.0), ValueError, "radius"),
    ("nearest_other_class one class", lambda: g.nearest_other_class(X, np.zeros(6, int)), ValueError, "labels"),
    ("nearest_other_class short labels", lambda: g.nearest_other_class(X, LAB[:5]), ValueError, "labels"),
    ("nearest_other_class float labels", lambda: g.nearest_other_class(X, LAB * 1.0), ValueError, "labels"),
    ("nearest_other_class refs without labels", lambda: g.nearest_other_class(X, LAB, refs=X), ValueError,
     "ref_labels"),
    ("mean_k_smallest k too large", lambda: g.mean_k_smallest(X, X, k=7), ValueError, "k"),
    ("mean_k_smallest nan queries", lambda: g.mean_k_smallest(NAN, X, k=1), ValueError, "queries"),
    ("mean_k_smallest dims differ", lambda: g.mean_k_smallest(X, X[:, :1], k=1), ValueError, "refs"),
    ("gemm_rounding_bound bad dtype", lambda: g.gemm_rounding_bound(3, "int8"), ValueError, "dtype"),
    ("gemm_rounding_bound negative d", lambda: g.gemm_rounding_bound(-1), ValueError, "d"),
    ("l2_sq_gemm dims differ", lambda: g.l2_sq_gemm(X, X[:, :1]), ValueError, "refs"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
