"""jaxbound.lp: norm names, dual norms, projections, steepest ascent and ball sampling against references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import lp

NORMS = ("linf", "l2", "l1")


# ---------------------------------------------------------------------------
# Names and norms
# ---------------------------------------------------------------------------


def test_canonical_and_dual_names():
    for spelling, name in (("l1", "l1"), (1, "l1"), ("L1", "l1"), ("2", "l2"), (2.0, "l2"), ("l2", "l2"),
                           ("linf", "linf"), ("inf", "linf"), ("l_inf", "linf"), (np.inf, "linf"),
                           (float("inf"), "linf"), ("infinity", "linf")):
        assert lp.canonical_norm(spelling) == name, spelling
    assert lp.canonical_norm(3) == 3.0 and lp.canonical_norm("l3") == 3.0 and lp.canonical_norm("1.5") == 1.5
    for bad in ("l0.5", 0.5, "lfoo", True, None, -np.inf, np.nan):
        with pytest.raises(ValueError, match="^norm"):
            lp.canonical_norm(bad)
    with pytest.raises(ValueError, match="^threat"):
        lp.canonical_norm("bogus", "threat")
    assert [lp.dual_norm(n) for n in NORMS] == ["l1", "l2", "linf"]
    assert lp.dual_norm(3) == pytest.approx(1.5) and lp.dual_norm(1.5) == pytest.approx(3.0)
    assert [lp.norm_exponent(n) for n in NORMS] == [math.inf, 2.0, 1.0]


def test_norms_match_numpy():
    x = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    flat = x.reshape(5, -1)
    ref = {"l1": np.abs(flat).sum(1), "l2": np.linalg.norm(flat, axis=1), "linf": np.abs(flat).max(1),
           3.0: (np.abs(flat) ** 3).sum(1) ** (1 / 3)}
    l1, l2, linf = lp.per_example_norms(x)
    np.testing.assert_allclose(np.stack([l1, l2, linf]), np.stack([ref["l1"], ref["l2"], ref["linf"]]), rtol=1e-5)
    for n, r in ref.items():
        np.testing.assert_allclose(lp.per_example_norm(x, n), r, rtol=1e-5)
        np.testing.assert_allclose(lp.lp_norm(flat, n, axis=1), r, rtol=1e-5)
    # examples of size 0 and 1
    np.testing.assert_array_equal(lp.per_example_norms(np.zeros((2, 0), np.float32))[2], [0.0, 0.0])
    np.testing.assert_allclose(lp.per_example_norm(np.array([[-3.0]], np.float32), "l1"), [3.0])


# ---------------------------------------------------------------------------
# Projections
# ---------------------------------------------------------------------------


def _project_ref(v: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """Float64 reference projection of one vector; l1 by bisection on the soft threshold (no sorting)."""
    v = np.asarray(v, np.float64)
    if eps == 0:
        return np.zeros_like(v)
    if norm == "linf":
        return np.clip(v, -eps, eps)
    if norm == "l2":
        n = np.linalg.norm(v)
        return v if n <= eps else v * (eps / n)
    a = np.abs(v)
    if a.sum() <= eps:
        return v
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(a - mid, 0).sum() > eps else (lo, mid)
    return np.sign(v) * np.maximum(a - 0.5 * (lo + hi), 0.0)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_matches_reference(norm):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(40, 3, 5)).astype(np.float32)
    v[0] = 0.0  # the zero vector
    v[1] = 1.0  # all coordinates tied
    v[2, 0, :2] = 2.0  # a tie at the top
    v[3] *= 1e-3  # inside every ball
    eps = rng.uniform(0.0, 4.0, size=40).astype(np.float32)
    eps[4] = 0.0
    out = np.asarray(lp.project(jnp.asarray(v), jnp.asarray(eps), norm))
    for i in range(40):
        ref = _project_ref(v[i].ravel(), float(eps[i]), norm)
        np.testing.assert_allclose(out[i].ravel(), ref, atol=2e-5, err_msg=f"{norm} example {i}")
        assert lp.per_example_norm(out[i:i + 1], norm)[0] <= eps[i] * (1 + 1e-5) + 1e-6
    np.testing.assert_array_equal(out[4], 0.0)  # eps = 0 projects onto 0
    np.testing.assert_array_equal(out[3], v[3])  # points inside stay
    # a scalar eps broadcasts; the function is jittable
    j = jax.jit(lambda d: lp.project(d, 0.5, norm))(jnp.asarray(v))
    np.testing.assert_allclose(j, lp.project(jnp.asarray(v), jnp.full(40, 0.5), norm), atol=1e-6)


def test_l1_projection_matches_convex_solver():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(2)
    v = rng.normal(size=(6, 7))
    v[5] = [3.0, 3.0, -3.0, 0.5, 0.0, 0.0, 1.0]  # ties
    for i, eps in enumerate((0.5, 1.0, 2.0, 3.0, 0.1, 4.0)):
        z = cp.Variable(7)
        cp.Problem(cp.Minimize(cp.sum_squares(z - v[i])), [cp.norm1(z) <= eps]).solve()
        got = np.asarray(lp.project(jnp.asarray(v[i:i + 1], jnp.float32), eps, "l1"))[0]
        np.testing.assert_allclose(got, z.value, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_size_one(norm):
    one = np.asarray(lp.project(jnp.asarray([[-2.5]]), 1.0, norm))
    np.testing.assert_allclose(one, [[-1.0]])
    with pytest.raises(ValueError, match="^norm"):
        lp.project(jnp.zeros((1, 2)), 1.0, 3)


# ---------------------------------------------------------------------------
# Steepest ascent
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_steepest_ascent_attains_the_dual_norm(norm):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(20, 4, 3)).astype(np.float32)
    g[0] = 0.0
    g[1, 0, :2] = 5.0  # tied largest coordinates
    d = lp.steepest_ascent(jnp.asarray(g), norm)
    inner = np.sum((np.asarray(d) * g).reshape(20, -1), axis=1)
    np.testing.assert_allclose(inner, lp.per_example_norm(g, lp.dual_norm(norm)), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(lp.per_example_norm(d, norm)) <= 1 + 1e-5)
    np.testing.assert_array_equal(np.asarray(d[0]), 0.0)  # zero gradient, zero step
    if norm == "l1":
        assert np.count_nonzero(np.asarray(d[1])) == 1 and np.asarray(d[1]).ravel()[0] == 1.0  # first on ties


def test_sparse_l1_step_and_box():
    g = jnp.asarray([[4.0, -3.0, 2.0, 1.0, 0.0, -0.5, 0.1, 0.2, 0.3, 0.05]])
    d = np.asarray(lp.steepest_ascent(g, "l1", l1_fraction=0.2))  # the two largest |g|
    np.testing.assert_allclose(d, [[0.5, -0.5, 0, 0, 0, 0, 0, 0, 0, 0]])
    # coordinate 0 sits at the upper end of the box with a positive gradient: blocked
    x = jnp.asarray([[1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    d = np.asarray(lp.steepest_ascent(g, "l1", l1_fraction=0.2, x=x, bounds=(0.0, 1.0)))
    np.testing.assert_allclose(d, [[0, -0.5, 0.5, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(lp.steepest_ascent(jnp.asarray([[-2.0]]), "l2"), [[-1.0]])


# ---------------------------------------------------------------------------
# Uniform sampling in a ball
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_sample_ball_inside_and_jit_equals_eager(norm):
    keys = jax.random.split(jax.random.key(0), 500)
    eps = jnp.linspace(0.0, 2.0, 500)
    draw = lambda k, e: lp.sample_ball(e, norm, shape=(3, 2), key=k)  # noqa: E731
    eager = jax.vmap(draw)(keys, eps)
    jitted = jax.jit(jax.vmap(draw))(keys, eps)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-7)
    assert eager.shape == (500, 3, 2) and eager.dtype == jnp.float32
    nrm = np.asarray(lp.per_example_norm(eager, norm))
    assert np.all(nrm <= np.asarray(eps) * (1 + 1e-5) + 1e-7)
    np.testing.assert_array_equal(np.asarray(eager[0]), 0.0)  # radius 0
    # uniform: the radius fraction r/eps has P(r/eps <= t) = t^d (d = 6)
    frac = nrm[1:] / np.asarray(eps[1:])
    assert abs(np.mean(frac <= 0.9) - 0.9 ** 6) < 0.08
    one = lp.sample_ball(1.0, norm, shape=(1,), key=jax.random.key(1))
    assert one.shape == (1,) and abs(float(one[0])) <= 1.0


@pytest.mark.parametrize("fn", ["per_example_norms", "project", "steepest_ascent"])
def test_zero_examples(fn):
    z = jnp.zeros((0, 3))
    out = {"per_example_norms": lambda: lp.per_example_norms(z)[0],
           "project": lambda: lp.project(z, 1.0, "l1"),
           "steepest_ascent": lambda: lp.steepest_ascent(z, "l2")}[fn]()
    assert out.shape[0] == 0


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_project_in_box_stays_in_ball_and_box(norm):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(0, 1, (5, 7)), jnp.float32)
    delta = jnp.asarray(rng.normal(0, 1, (5, 7)), jnp.float32)
    eps = jnp.asarray([0.0, 0.1, 0.5, 1.0, 3.0], jnp.float32)
    out = np.asarray(lp.project_in_box(x, delta, eps, norm, (0.0, 1.0)))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.asarray(lp.per_example_norm(out - x, norm)) <= np.asarray(eps) * (1 + 1e-5) + 1e-6)
    free = np.asarray(lp.project_in_box(x, delta, eps, norm))
    np.testing.assert_array_equal(free, np.asarray(x + lp.project(delta, eps, norm)))


def test_sample_balls_is_one_sample_ball_per_key():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(4))
    eps = jnp.asarray([0.5, 1.0, 0.0, 2.0], jnp.float32)
    out = lp.sample_balls(eps, "l2", shape=(3, 2), keys=keys)
    assert out.shape == (4, 3, 2)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(out[i]),
                                      np.asarray(lp.sample_ball(eps[i], "l2", shape=(3, 2), key=keys[i])))
