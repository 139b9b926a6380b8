"""Bad inputs to jaxbound.lp: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import lp
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
D = jnp.ones((3, 4), jnp.float32) * 0.1
X = jnp.full((3, 4), 0.5, jnp.float32)

CASES = [
    ("canonical_norm unknown", lambda: lp.canonical_norm("euclid"), ValueError, "norm"),
    ("canonical_norm p below 1", lambda: lp.canonical_norm(0.5), ValueError, "norm"),
    ("canonical_norm nan", lambda: lp.canonical_norm(float("nan")), ValueError, "norm"),
    ("canonical_norm -inf", lambda: lp.canonical_norm(-np.inf), ValueError, "norm"),
    ("canonical_norm bool", lambda: lp.canonical_norm(True), ValueError, "norm"),
    ("canonical_norm none", lambda: lp.canonical_norm(None), ValueError, "norm"),
    ("canonical_norm own name", lambda: lp.canonical_norm("lq", "threat"), ValueError, "threat"),
    ("norm_exponent unknown", lambda: lp.norm_exponent("lq"), ValueError, "norm"),
    ("dual_norm unknown", lambda: lp.dual_norm("lq"), ValueError, "norm"),
    ("lp_norm unknown", lambda: lp.lp_norm(D, "lq"), ValueError, "norm"),
    ("lp_norm bad axis", lambda: lp.lp_norm(D, "l2", axis=5), ValueError, "axis"),
    ("per_example_norm unknown", lambda: lp.per_example_norm(D, "lq"), ValueError, "norm"),
    ("per_example_norm scalar", lambda: lp.per_example_norm(jnp.float32(1.0), "l2"), ValueError, "x"),
    ("per_example_norms scalar", lambda: lp.per_example_norms(jnp.float32(1.0)), ValueError, "x"),
    ("project p=3", lambda: lp.project(D, 0.1, 3), ValueError, "norm"),
    ("project negative eps", lambda: lp.project(D, -0.1, "l2"), ValueError, "eps"),
    ("project nan eps", lambda: lp.project(D, float("nan"), "l2"), ValueError, "eps"),
    ("project eps per row wrong length", lambda: lp.project(D, jnp.ones(2), "l2"), ValueError, "eps"),
    ("project scalar delta", lambda: lp.project(jnp.float32(1.0), 0.1, "l2"), ValueError, "delta"),
    ("project_in_box shapes differ", lambda: lp.project_in_box(X, D[:2], 0.1, "linf"), ValueError, "delta"),
    ("project_in_box bad bounds", lambda: lp.project_in_box(X, D, 0.1, "linf", (1.0, 0.0)), ValueError, "bounds"),
    ("project_in_box unknown norm", lambda: lp.project_in_box(X, D, 0.1, "lq"), ValueError, "norm"),
    ("steepest_ascent p=3", lambda: lp.steepest_ascent(D, 3), ValueError, "norm"),
    ("steepest_ascent l1_fraction 0", lambda: lp.steepest_ascent(D, "l1", l1_fraction=0.0), ValueError,
     "l1_fraction"),
    ("steepest_ascent l1_fraction 2", lambda: lp.steepest_ascent(D, "l1", l1_fraction=2.0), ValueError,
     "l1_fraction"),
    ("steepest_ascent x shape", lambda: lp.steepest_ascent(D, "l1", x=X[:1], bounds=(0.0, 1.0)), ValueError,
     "x"),
    ("sample_ball bad key", lambda: lp.sample_ball(0.1, "l2", shape=(3, 4), key=0), ValueError, "key"),
    ("sample_ball negative eps", lambda: lp.sample_ball(-0.1, "l2", shape=(3, 4), key=KEY), ValueError, "eps"),
    ("sample_ball p=3", lambda: lp.sample_ball(0.1, 3, shape=(3, 4), key=KEY), ValueError, "norm"),
    ("sample_ball bad shape", lambda: lp.sample_ball(0.1, "l2", shape=(-1, 4), key=KEY), ValueError, "shape"),
    ("sample_ball shape text", lambda: lp.sample_ball(0.1, "l2", shape="3x4", key=KEY), ValueError, "shape"),
    ("sample_balls single key", lambda: lp.sample_balls(jnp.full(3, 0.1), "l2", shape=(3, 4), keys=KEY),
     ValueError, "keys"),
    ("sample_balls int keys", lambda: lp.sample_balls(jnp.full(3, 0.1), "l2", shape=(3, 4), keys=np.arange(3)),
     ValueError, "keys"),
    ("sample_balls eps wrong count", lambda: lp.sample_balls(jnp.full(2, 0.1), "l2", shape=(3, 4),
                                                             keys=jax.random.split(KEY, 3)), ValueError, "eps"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
