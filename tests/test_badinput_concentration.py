"""Bad input to jaxbound.concentration: every public function raises a clear error naming the argument.

Table-driven: ``(case id, call, expected exception, argument named at the start of the message)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import concentration as C
from jaxbound import geometry

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)).astype(np.float32)
XT = RNG.normal(size=(30, 3)).astype(np.float32)
KEY = jax.random.key(0)
SPLITS = C.make_splits(X, XT, key=KEY, protocol="paper")
BALLS = C.Balls(X[:2].astype(np.float64), np.array([0.5, 0.5]), np.array([0, 1]), np.array([1, 1]),
                np.array([0, 0]), np.array([1, 2]), np.array([2, 3]), 0.1, 0.1, 0.0, 2, 2, np.array([1, 1]))
HALF = C.fit_halfspace(X, alpha=0.1, eps=0.1, norm="l2")
NAN_X = np.full((5, 3), np.nan, np.float32)


def _call(f, *a, **k):
    return lambda: f(*a, **k)


CASES = [
    # clopper_pearson, fit_target, select_count
    ("cp k > n", _call(C.clopper_pearson, 11, 10), ValueError, "k"),
    ("cp n = 0", _call(C.clopper_pearson, 0, 0), ValueError, "n"),
    ("cp confidence 1", _call(C.clopper_pearson, 1, 10, confidence=1.0), ValueError, "confidence"),
    ("fit_target alpha 0", _call(C.fit_target, 0.0, 10), ValueError, "alpha"),
    ("fit_target n = 0", _call(C.fit_target, 0.1, 0), ValueError, "n"),
    ("fit_target margin < 0", _call(C.fit_target, 0.1, 10, margin=-1.0), ValueError, "margin"),
    ("fit_target margin nan", _call(C.fit_target, 0.1, 10, margin=float("nan")), ValueError, "margin"),
    ("select_count alpha 1", _call(C.select_count, 1.0, 10), ValueError, "alpha"),
    ("select_count n float", _call(C.select_count, 0.1, 10.5), ValueError, "n"),
    ("select_count confidence 0", _call(C.select_count, 0.1, 10, confidence=0.0), ValueError, "confidence"),
    # density ranks, k-means, box margins
    ("density k >= N", _call(C.density_ranks, X, k=40), ValueError, "k"),
    ("density x empty", _call(C.density_ranks, np.zeros((0, 3), np.float32), k=1), ValueError, "x"),
    ("density x 1-D", _call(C.density_ranks, np.zeros(5, np.float32), k=1), ValueError, "x"),
    ("density norm", _call(C.density_ranks, X, k=5, norm="cosine"), ValueError, "norm"),
    ("kmeans too many clusters", _call(C.kmeans_l1, X[:3], n_clusters=4, key=KEY), ValueError, "n_clusters"),
    ("kmeans update", _call(C.kmeans_l1, X, n_clusters=2, key=KEY, update="mode"), ValueError, "update"),
    ("kmeans key", _call(C.kmeans_l1, X, n_clusters=2, key=3), ValueError, "key"),
    ("box_margin dims", _call(C.box_margin, jnp.zeros((4, 3)), jnp.zeros((2, 5)), jnp.zeros((2, 5))),
     ValueError, "centers"),
    ("box_margin widths shape", _call(C.box_margin, jnp.zeros((4, 3)), jnp.zeros((2, 3)), jnp.zeros((3, 3))),
     ValueError, "half_widths"),
    ("box_margin x 1-D", _call(C.box_margin, jnp.zeros(3), jnp.zeros((2, 3)), jnp.zeros((2, 3))), ValueError, "x"),
    # rectangles
    ("rect more boxes than points", _call(C.fit_rectangles, X[:3], key=KEY, alpha=0.1, eps=0.1, n_regions=4, k=1),
     ValueError, "n_regions"),
    ("rect negative radii", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2,
                                  radii=-np.ones(40)), ValueError, "radii"),
    ("rect radii shape", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, radii=np.ones(39)),
     ValueError, "radii"),
    ("rect radii nan", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2,
                             radii=np.full(40, np.nan)), ValueError, "radii"),
    ("rect alpha nan", _call(C.fit_rectangles, X, key=KEY, alpha=float("nan"), eps=0.1, n_regions=2, k=5),
     ValueError, "alpha"),
    ("rect eps < 0", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=-0.1, n_regions=2, k=5), ValueError, "eps"),
    ("rect q > 1", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5, q=1.5), ValueError, "q"),
    ("rect q_max < 0", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5, q_max=-0.1),
     ValueError, "q_max"),
    ("rect margin < 0", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5, margin=-0.5),
     ValueError, "margin"),
    ("rect confidence 2", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5, confidence=2.0),
     ValueError, "confidence"),
    ("rect x_select dims", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5,
                                 x_select=np.zeros((4, 2), np.float32)), ValueError, "x_select"),
    ("rect resolution 0", _call(C.fit_rectangles, X, key=KEY, alpha=0.1, eps=0.1, n_regions=2, k=5, resolution=0.0),
     ValueError, "resolution"),
    ("rect_at_q more boxes than points", _call(C.rectangles_at_q, X[:2], key=KEY, q=0.5, eps=0.1, n_regions=3,
                                               k=1), ValueError, "n_regions"),
    # balls
    ("balls neighbours string", _call(C.fit_balls, X, alpha=0.1, eps=0.1, n_regions=2, neighbours="nope"),
     ValueError, "neighbours"),
    ("balls neighbours short", _call(C.fit_balls, X, alpha=0.1, eps=0.1, n_regions=2,
                                     neighbours=geometry.KNN(np.zeros((40, 1)), np.zeros((40, 1), int))),
     ValueError, "neighbours"),
    ("balls x nan", _call(C.fit_balls, NAN_X, alpha=0.1, eps=0.1, n_regions=1), ValueError, "x"),
    ("balls target >= N", _call(C.fit_balls, X, alpha=0.99, eps=0.1, n_regions=1), ValueError, "alpha"),
    ("balls margin < 0", _call(C.fit_balls, X, alpha=0.1, eps=0.1, n_regions=1, margin=-1.0), ValueError, "margin"),
    ("balls count_bounds", _call(C.fit_balls, X, alpha=0.1, eps=0.1, n_regions=1, count_bounds="yes"),
     ValueError, "count_bounds"),
    ("inflate not balls", _call(C.inflate_balls, HALF, X), ValueError, "region"),
    ("inflate dims", _call(C.inflate_balls, BALLS, np.zeros((4, 2), np.float32)), ValueError, "x"),
    ("inflate x_select dims", _call(C.inflate_balls, BALLS, X, np.zeros((4, 2), np.float32)), ValueError, "x_select"),
    # half-spaces
    ("halfspace norm", _call(C.fit_halfspace, X, alpha=0.1, eps=0.1, norm="l0.5"), ValueError, "norm"),
    ("halfspace sign", _call(C.fit_halfspace, X, alpha=0.1, eps=0.1, norm="l2", sign="-"), ValueError, "sign"),
    ("halfspaces n_components > d", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", n_components=4),
     ValueError, "n_components"),
    ("halfspaces powers empty", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", powers=()),
     ValueError, "powers"),
    ("halfspaces powers negative", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", powers=(1.0, -2.0)),
     ValueError, "powers"),
    ("halfspaces powers string", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", powers="12"),
     ValueError, "powers"),
    ("halfspaces block 0", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", block=0), ValueError, "block"),
    ("halfspaces x_select nan", _call(C.fit_halfspaces, X, alpha=0.1, eps=0.1, norm="l2", x_select=NAN_X),
     ValueError, "x_select"),
    ("directions norm", _call(C.halfspace_directions, X, norm="l0"), ValueError, "norm"),
    # measure, splits, records, runs
    ("measure region", _call(C.measure, object(), X), ValueError, "region"),
    ("measure dims", _call(C.measure, HALF, np.zeros((4, 2), np.float32)), ValueError, "x"),
    ("measure confidence", _call(C.measure, HALF, X, confidence=1.5), ValueError, "confidence"),
    ("splits protocol", _call(C.make_splits, X, XT, key=KEY, protocol="best"), ValueError, "protocol"),
    ("splits select_size", _call(C.make_splits, X, XT, key=KEY, select_size=30), ValueError, "select_size"),
    ("splits x_test dims", _call(C.make_splits, X, np.zeros((4, 2), np.float32), key=KEY), ValueError, "x_test"),
    ("records empty", _call(C.records, [], SPLITS), ValueError, "regions"),
    ("records splits tuple", _call(C.records, HALF, (X, XT)), ValueError, "splits"),
    ("run_halfspace None", _call(C.run_halfspace, None, alpha=0.1, eps=0.1, norm="l2"), ValueError, "splits"),
    ("run_halfspaces None", _call(C.run_halfspaces, None, alpha=0.1, eps=0.1, norm="l2"), ValueError, "splits"),
    ("run_balls None", _call(C.run_balls, None, alpha=0.1, eps=0.1, n_regions=2), ValueError, "splits"),
    ("run_rectangles None", _call(C.run_rectangles, None, key=KEY, alpha=0.1, eps=0.1, n_regions=2), ValueError,
     "splits"),
    ("run_rectangles no T", _call(C.run_rectangles, SPLITS, key=KEY, alpha=0.1, eps=0.1, n_regions=[]), ValueError,
     "n_regions"),
    ("run_balls T = 0", _call(C.run_balls, SPLITS, alpha=0.1, eps=0.1, n_regions=[2, 0]), ValueError, "n_regions"),
    ("run_halfspace margin", _call(C.run_halfspace, SPLITS, alpha=0.1, eps=0.1, norm="l2", margin=-1.0),
     ValueError, "margin"),
    # estimate and best_estimate
    ("estimate method", _call(C.estimate, X, XT, norm="l2", eps=0.1, alpha=0.1, n_regions=2, key=KEY,
                              method="voronoi"), ValueError, "method"),
    ("estimate method of other norm", _call(C.estimate, X, XT, norm="l2", eps=0.1, alpha=0.1, n_regions=2, key=KEY,
                                            method="rectangles"), ValueError, "method"),
    ("estimate halfspaces with box settings", _call(C.estimate, X, XT, norm="l2", eps=0.1, alpha=0.1, n_regions=2,
                                                    key=KEY, method="halfspaces", max_iter=3), ValueError,
     "fit_kwargs"),
    ("estimate norm", _call(C.estimate, X, XT, norm="l0", eps=0.1, alpha=0.1, n_regions=2, key=KEY), ValueError,
     "norm"),
    ("best_estimate with method", _call(C.best_estimate, X, XT, norm="l2", eps=0.1, alpha=0.1, n_regions=2, key=KEY,
                                        method="balls"), ValueError, "method"),
    ("best_estimate no norm", _call(C.best_estimate, X, XT, eps=0.1, alpha=0.1, n_regions=2, key=KEY), ValueError,
     "norm"),
    ("methods_for norm", _call(C.methods_for, "l0"), ValueError, "norm"),
]


@pytest.mark.parametrize("case,call,exc,arg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(case, call, exc, arg):
    with pytest.raises(exc, match=rf"^{arg}\b"):
        call()


def test_the_table_is_large():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
