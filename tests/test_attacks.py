"""Attacks against closed forms on affine classifiers, invariances, and the LeNet5 lowering.

On a binary affine classifier ``logits = [0, w.x + b]`` the minimal
adversarial distance of ``x`` (no box) is ``|w.x + b| / ||w||_*`` with
``||.||_*`` the dual norm: ``||w||_2`` for l2, ``||w||_1`` for linf,
``||w||_inf`` for l1. No attack may succeed below it; PGD must succeed just
above it, and bisection-PGD, Carlini-Wagner and the Boundary attack must
come close to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxbound import _engine, attacks, models
from _affine import DUAL, Affine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aff():
    a = Affine()
    assert a.dist("l2").max() < 0.3 and a.dist("linf").max() < 0.3  # the [0, 1] box stays inactive
    return a


class MLP:
    """Small nonlinear 3-class classifier on 4x4x1 'images'."""

    def __init__(self, seed=1, n=12):
        rng = np.random.default_rng(seed)
        self.W1 = jnp.asarray(rng.normal(size=(16, 24)).astype(np.float32))
        self.W2 = jnp.asarray(rng.normal(size=(24, 3)).astype(np.float32) * 0.5)
        self.x = rng.uniform(0, 1, size=(n, 4, 4, 1)).astype(np.float32)
        self.x[:, 0, 0, 0] = 0.0  # pixels on the box boundary
        self.x[:, 1, 1, 0] = 1.0
        self.y = rng.integers(0, 3, n)
        W1, W2 = self.W1, self.W2

        def f(z):
            return jnp.tanh(z.reshape(z.shape[0], -1) @ W1) @ W2

        self.f = f


@pytest.fixture(scope="module")
def mlp():
    return MLP()


def norms_of(x, x_adv, norm):
    return attacks.perturbation_norms(x, x_adv, norm)


# ---------------------------------------------------------------------------
# Feasibility: within eps and bounds, leaving the box only when asked
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5), ("l1", 2.0)])
def test_pgd_within_eps_and_bounds(mlp, norm, eps):
    r = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(0), eps=eps, norm=norm, steps=5)
    assert r.x_adv.shape == mlp.x.shape and r.success.shape == (12,) and r.logits.shape == (12, 3)
    assert np.all(norms_of(mlp.x, r.x_adv, norm) <= eps * (1 + 1e-5) + 1e-6)
    assert r.x_adv.min() >= 0.0 and r.x_adv.max() <= 1.0
    np.testing.assert_allclose(r.norm(norm), norms_of(mlp.x, r.x_adv, norm), rtol=1e-5, atol=1e-6)
    # success and logits describe x_adv
    np.testing.assert_allclose(r.logits, np.asarray(jax.jit(mlp.f)(r.x_adv)), rtol=1e-5, atol=1e-5)
    assert np.array_equal(r.success, r.logits.argmax(1) != mlp.y)


def test_pgd_without_box_leaves_it(mlp):
    kw = dict(key=jax.random.key(0), eps=0.3, norm="linf", steps=5)
    free = attacks.pgd(mlp.f, mlp.x, mlp.y, bounds=None, **kw)
    boxed = attacks.pgd(mlp.f, mlp.x, mlp.y, **kw)
    assert free.x_adv.min() < 0.0 or free.x_adv.max() > 1.0
    assert np.all(free.linf <= 0.3 + 1e-6)
    assert boxed.x_adv.min() >= 0.0 and boxed.x_adv.max() <= 1.0


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 0.7), ("l1", 3.0)])
def test_fgm_step_has_length_eps_without_box(mlp, norm, eps):
    r = attacks.fgm(mlp.f, mlp.x, mlp.y, eps=eps, norm=norm, bounds=None)
    np.testing.assert_allclose(r.norm(norm), eps, rtol=1e-5)  # the CleverHans-JAX l2 defect: eps ignored
    assert np.array_equal(attacks.fgm(mlp.f, mlp.x, mlp.y, eps=0.0, norm=norm, bounds=None).x_adv, mlp.x)
    if norm == "l2":
        rb = attacks.fgm(mlp.f, mlp.x, mlp.y, eps=eps, norm=norm)
        assert np.all(rb.norm(norm) <= eps * (1 + 1e-5)) and rb.x_adv.min() >= 0 and rb.x_adv.max() <= 1


def test_fgsm_is_signed_gradient_step(aff):
    eps = 0.05
    r = attacks.fgsm(aff.f, aff.x, aff.y, eps=eps, bounds=None)
    expected = aff.x - eps * np.sign(aff.w)[None] * np.where(aff.y == 1, 1, -1)[:, None]
    np.testing.assert_allclose(r.x_adv, expected, atol=1e-6)


# ---------------------------------------------------------------------------
# Invariances: eps = 0, keys, jit, batching, vmap over eps, restarts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,random_start", [("linf", True), ("l2", True), ("l1", True), ("linf", False)])
def test_eps_zero_changes_nothing(mlp, norm, random_start):
    r = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(3), eps=0.0, norm=norm, steps=5, step_size=0.1,
                    random_start=random_start)
    assert np.array_equal(r.x_adv, mlp.x)
    pred = attacks.predict(mlp.f, mlp.x)
    assert np.array_equal(r.success, pred != mlp.y)


def test_keys_reproduce_exactly(mlp):
    kw = dict(eps=0.2, norm="l2", steps=5)
    a = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(7), **kw)
    b = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(7), **kw)
    c = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(8), **kw)
    assert np.array_equal(a.x_adv, b.x_adv) and np.array_equal(a.success, b.success)
    assert not np.array_equal(a.x_adv, c.x_adv)


def test_jit_equals_eager(mlp):
    key = jax.random.key(5)
    kw = dict(eps=0.1, norm="linf", steps=5, step_size=0.03)
    eager = attacks.pgd(mlp.f, mlp.x, mlp.y, key=key, **kw)
    jitted = jax.jit(lambda x, y: attacks.pgd(mlp.f, x, y, key=key, **kw))(jnp.asarray(mlp.x), jnp.asarray(mlp.y))
    assert isinstance(jitted.x_adv, jax.Array)
    np.testing.assert_array_equal(np.asarray(jitted.x_adv), eager.x_adv)
    np.testing.assert_array_equal(np.asarray(jitted.success), eager.success)
    f_e = attacks.fgm(mlp.f, mlp.x, mlp.y, eps=0.3, norm="l2")
    f_j = jax.jit(lambda x: attacks.fgm(mlp.f, x, jnp.asarray(mlp.y), eps=0.3, norm="l2"))(jnp.asarray(mlp.x))
    np.testing.assert_allclose(np.asarray(f_j.x_adv), f_e.x_adv, atol=1e-6)


def test_results_do_not_depend_on_batching(mlp):
    kw = dict(key=jax.random.key(2), eps=0.15, norm="l2", steps=5)
    full = attacks.pgd(mlp.f, mlp.x, mlp.y, **kw)
    chunked = attacks.pgd(mlp.f, mlp.x, mlp.y, batch_size=5, **kw)
    single = attacks.pgd(mlp.f, mlp.x[:1], mlp.y[:1], **kw)  # n = 1
    np.testing.assert_allclose(chunked.x_adv, full.x_adv, atol=1e-6)
    np.testing.assert_allclose(single.x_adv, full.x_adv[:1], atol=1e-6)


def test_checkpoint_resumes_after_interruption(mlp, tmp_path, monkeypatch):
    kw = dict(key=jax.random.key(2), eps=0.15, norm="l2", steps=5, batch_size=5)
    full = attacks.pgd(mlp.f, mlp.x, mlp.y, **kw)
    ckpt = tmp_path / "pgd_ckpt"
    calls = []
    real_pad = _engine.pad_rows

    def interrupt_second_batch(a, size, fill=None):
        calls.append(a.shape[0])
        if len(calls) > 5:  # 5 batch arguments per batch: stop while preparing batch 2
            raise KeyboardInterrupt
        return real_pad(a, size, fill)

    monkeypatch.setattr(_engine, "pad_rows", interrupt_second_batch)
    with pytest.raises(KeyboardInterrupt):
        attacks.pgd(mlp.f, mlp.x, mlp.y, checkpoint=ckpt, **kw)
    assert ckpt.exists()
    calls.clear()
    monkeypatch.setattr(_engine, "pad_rows",
                        lambda a, size, fill=None: (calls.append(a.shape[0]), real_pad(a, size, fill))[1])
    resumed = attacks.pgd(mlp.f, mlp.x, mlp.y, checkpoint=ckpt, **kw)
    assert len(calls) == 2 * 5  # only the two unfinished batches ran
    np.testing.assert_array_equal(resumed.x_adv, full.x_adv)
    np.testing.assert_array_equal(resumed.success, full.success)
    assert not ckpt.exists()  # removed once finished


def test_attack_config_matches_keyword_settings(mlp):
    """One AttackConfig gives the keyword settings' results; keywords override it; the norm is never defaulted."""
    key = jax.random.key(9)
    cfg = attacks.AttackConfig(norm="l2", eps=0.2, steps=4, restarts=2)
    by_cfg = attacks.pgd(mlp.f, mlp.x, mlp.y, cfg, key=key)
    by_kw = attacks.pgd(mlp.f, mlp.x, mlp.y, key=key, norm="l2", eps=0.2, steps=4, restarts=2)
    np.testing.assert_array_equal(by_cfg.x_adv, by_kw.x_adv)
    over = attacks.pgd(mlp.f, mlp.x, mlp.y, cfg, key=key, norm="linf", eps=0.05)
    np.testing.assert_array_equal(over.x_adv, attacks.pgd(mlp.f, mlp.x, mlp.y, cfg.replace(norm="linf", eps=0.05),
                                                         key=key).x_adv)
    np.testing.assert_array_equal(attacks.fgsm(mlp.f, mlp.x, mlp.y, cfg, eps=0.1).x_adv,
                                  attacks.fgm(mlp.f, mlp.x, mlp.y, norm="linf", eps=0.1).x_adv)
    md = attacks.minimal_adversarial_distance(mlp.f, mlp.x, mlp.y, cfg.replace(eps=1.0, random_start=False),
                                              key=key, search_steps=3)
    md_kw = attacks.minimal_adversarial_distance(mlp.f, mlp.x, mlp.y, key=key, eps_max=1.0, norm="l2", steps=4,
                                                 restarts=2, search_steps=3)
    np.testing.assert_array_equal(md.distance, md_kw.distance)
    for fn, kw in ((attacks.pgd, dict(key=key, eps=0.1)), (attacks.fgm, dict(eps=0.1)),
                   (attacks.minimal_adversarial_distance, dict(key=key, eps_max=1.0))):
        with pytest.raises(TypeError, match="^norm"):
            fn(mlp.f, mlp.x, mlp.y, **kw)
    with pytest.raises(TypeError, match="^stepsize"):
        attacks.pgd(mlp.f, mlp.x, mlp.y, cfg, key=key, stepsize=0.1)


def test_margin_keys_and_jacobian_norm(aff):
    logits = jnp.asarray([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    np.testing.assert_allclose(attacks.margin(logits, jnp.asarray([1, 2])), [1.0, -0.5])
    keys = attacks.example_keys(jnp.arange(3), key=jax.random.key(0))
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), jax.random.key_data(jax.random.fold_in(
        jax.random.key(0), 2)))
    # binary affine logits [0, s]: d softmax_k / dx = +-p0 p1 w, so the norm is p0 p1 ||w||
    x = jnp.asarray(aff.x)
    p1 = jax.nn.sigmoid(jnp.asarray(aff.s))
    for norm in ("l1", "l2", "linf"):
        want = p1 * (1 - p1) * np.linalg.norm(aff.w, {"l1": 1, "l2": 2, "linf": np.inf}[norm])
        np.testing.assert_allclose(attacks.jacobian_norm(aff.f, x, norm=norm), want, rtol=1e-4)
    np.testing.assert_allclose(attacks.jacobian_norm(aff.f, x, norm="l2", output="logits"),
                               np.full(len(aff.y), np.linalg.norm(aff.w)), rtol=1e-5)


def test_empty_batch(mlp):
    r = attacks.pgd(mlp.f, mlp.x[:0], mlp.y[:0], key=jax.random.key(0), eps=0.1, norm="linf")
    assert r.x_adv.shape == (0, 4, 4, 1) and r.success.shape == (0,) and r.logits.shape == (0, 3)
    rv = attacks.pgd(mlp.f, mlp.x[:0], mlp.y[:0], key=jax.random.key(0), eps=[0.1, 0.2], norm="linf")
    assert rv.success.shape == (2, 0)


def test_vector_eps_matches_scalar_runs(mlp):
    eps = [0.0, 0.05, 0.2]
    key = jax.random.key(11)
    rv = attacks.pgd(mlp.f, mlp.x, mlp.y, key=key, eps=eps, norm="linf", steps=5)
    assert rv.success.shape == (3, 12) and rv.x_adv.shape == (3, 12, 4, 4, 1) and rv.linf.shape == (3, 12)
    for k, e in enumerate(eps):
        rs = attacks.pgd(mlp.f, mlp.x, mlp.y, key=key, eps=e, norm="linf", steps=5)
        np.testing.assert_allclose(rv.x_adv[k], rs.x_adv, atol=1e-6)
        assert np.all(rv.linf[k] <= e + 1e-6)
    d = rv.to_dict()
    assert len(d["success_rate"]) == 3 and d["n"] == 12


def test_restarts_keep_first_success(mlp):
    kw = dict(eps=0.08, norm="linf", steps=5, step_size=0.02)
    one = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(4), restarts=1, **kw)
    many = attacks.pgd(mlp.f, mlp.x, mlp.y, key=jax.random.key(4), restarts=4, **kw)
    assert np.all(many.success >= one.success)  # restart 0 is the same run


def test_y_none_attacks_predictions(mlp):
    pred = np.asarray(jax.jit(mlp.f)(mlp.x)).argmax(1)
    a = attacks.pgd(mlp.f, mlp.x, None, key=jax.random.key(1), eps=0.1, norm="linf", steps=5)
    b = attacks.pgd(mlp.f, mlp.x, pred, key=jax.random.key(1), eps=0.1, norm="linf", steps=5)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(attacks.predict(mlp.f, mlp.x), pred)


def test_targeted_pgd_reaches_target(mlp):
    pred = attacks.predict(mlp.f, mlp.x)
    target = (pred + 1) % 3
    r = attacks.pgd(mlp.f, mlp.x, target, key=jax.random.key(0), eps=2.0, norm="l2", steps=30, targeted=True,
                    bounds=None, loss="margin")
    assert r.success.mean() > 0.5
    assert np.array_equal(r.success, r.logits.argmax(1) == target)


def test_zero_gradient_does_not_move_or_nan():
    def f(z):
        return jnp.zeros((z.shape[0], 3), z.dtype)

    x = np.full((3, 5), 0.5, np.float32)
    for norm in ("l2", "l1"):
        r = attacks.pgd(f, x, np.array([1, 1, 1]), key=jax.random.key(0), eps=0.1, norm=norm, steps=2,
                        random_start=False)
        assert np.array_equal(r.x_adv, x)
        assert np.all(r.success)  # all-zero logits predict class 0 (first of the tie)


# ---------------------------------------------------------------------------
# Closed forms on affine classifiers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,bounds", [("linf", None), ("linf", (0.0, 1.0)), ("l2", None), ("l2", (0.0, 1.0)),
                                         ("l1", None)])  # (the l1 optimum of these points leaves the box)
def test_pgd_succeeds_just_above_and_fails_just_below(aff, norm, bounds):
    d = aff.dist(norm)
    kw = dict(key=jax.random.key(0), norm=norm, steps=40, bounds=bounds, l1_fraction=1e-3,
              random_start=norm != "l1")
    for i in range(len(d)):
        xi, yi = aff.x[i : i + 1], aff.y[i : i + 1]
        above = attacks.pgd(aff.f, xi, yi, eps=d[i] * 1.01, step_size=d[i] / 8, **kw)
        below = attacks.pgd(aff.f, xi, yi, eps=d[i] * 0.999, step_size=d[i] / 8, **kw)
        assert above.success[0], (norm, i)
        assert not below.success[0], (norm, i)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bisection_pgd_reaches_exact_distance(aff, norm):
    d = aff.dist(norm)
    md = attacks.minimal_adversarial_distance(aff.f, aff.x, aff.y, key=jax.random.key(0), eps_max=2 * d.max(),
                                              norm=norm, search_steps=14, steps=40)
    assert np.all(md.attack.success)
    assert np.all(md.distance >= d * (1 - 1e-5))  # soundness
    np.testing.assert_allclose(md.distance, d, rtol=2e-3)
    assert np.all(md.lower <= d * (1 + 1e-5)) and np.all(md.upper >= d * (1 - 1e-5))
    np.testing.assert_allclose(md.attack.norm(norm), md.distance, rtol=1e-6)


def test_bisection_reports_zero_for_errors_and_inf_for_failures(aff):
    y_wrong = 1 - aff.y
    md = attacks.minimal_adversarial_distance(aff.f, aff.x[:3], y_wrong[:3], key=jax.random.key(0), eps_max=0.5,
                                              norm="l2", search_steps=2, steps=5)
    assert np.all(md.distance == 0) and np.array_equal(md.attack.x_adv, aff.x[:3])
    d = aff.dist("l2")
    md = attacks.minimal_adversarial_distance(aff.f, aff.x[:3], aff.y[:3], key=jax.random.key(0),
                                              eps_max=0.5 * d[:3].min(), norm="l2", search_steps=2, steps=5)
    assert np.all(np.isinf(md.distance)) and not md.attack.success.any()
    assert md.to_dict()["distance"] == [None, None, None]


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_carlini_wagner_reaches_exact_l2_distance(aff, bounds):
    d = aff.dist("l2")
    r = attacks.carlini_wagner_l2(aff.f, aff.x, aff.y, bounds=bounds, steps=300, search_steps=8,
                                   learning_rate=1e-3)
    assert np.all(r.success)
    assert np.all(r.l2 >= d * (1 - 1e-5))
    np.testing.assert_allclose(r.l2, d, rtol=1e-2)


def test_boundary_attack_approaches_exact_distance(aff):
    d = aff.dist("l2")
    r = attacks.boundary_attack(aff.f, aff.x, aff.y, key=jax.random.key(1), steps=800)
    assert np.all(r.success)
    assert np.all(r.l2 >= d * (1 - 1e-5))
    assert np.all(r.l2 <= 1.1 * d)
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert np.array_equal(r.success, r.logits.argmax(1) != aff.y)


def test_boundary_attack_starting_points_and_failure(aff):
    # Start from the opposite class' points: always adversarial.
    other = np.array([np.flatnonzero(aff.y != aff.y[i])[0] for i in range(len(aff.y))])
    r = attacks.boundary_attack(aff.f, aff.x, aff.y, key=jax.random.key(0), steps=50, init_attempts=0,
                                starting_points=aff.x[other])
    assert np.all(r.success)
    assert np.all(r.l2 <= np.linalg.norm(aff.x - aff.x[other], axis=1) + 1e-6)
    # No start at all: every example fails and is returned unchanged.
    r = attacks.boundary_attack(aff.f, aff.x, aff.y, key=jax.random.key(0), steps=50, init_attempts=0)
    assert not r.success.any() and np.array_equal(r.x_adv, aff.x)


def test_multiclass_soundness_no_attack_beats_exact_distance():
    rng = np.random.default_rng(3)
    d, k = 10, 4
    W = rng.normal(size=(d, k)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32) * 0.1
    x = rng.uniform(0.3, 0.7, size=(8, d)).astype(np.float32)

    def f(z):
        return z @ jnp.asarray(W) + jnp.asarray(b)

    z = x.astype(np.float64) @ W + b
    y = z.argmax(1)
    exact = {}
    for norm, p in (("l2", 2), ("linf", 1)):
        dist = np.full(len(x), np.inf)
        for j in range(k):
            dw = W[:, y] - W[:, [j]]  # [d, n]
            gap = z[np.arange(len(x)), y] - z[:, j]
            with np.errstate(divide="ignore", invalid="ignore"):
                dj = np.where(y == j, np.inf, gap / np.linalg.norm(dw, p, axis=0))
            dist = np.minimum(dist, dj)
        exact[norm] = dist
    below = attacks.pgd(f, x, y, key=jax.random.key(0), eps=exact["linf"].min() * 0.999, norm="linf", steps=20,
                        bounds=None)
    assert not below.success.any()
    md = attacks.minimal_adversarial_distance(f, x, y, key=jax.random.key(0), eps_max=2 * exact["l2"].max(),
                                              norm="l2", bounds=None, search_steps=6, steps=20, loss="margin")
    assert md.attack.success.all()
    assert np.all(md.distance >= exact["l2"] * (1 - 1e-5))
    cw = attacks.carlini_wagner_l2(f, x, y, bounds=None, steps=60, search_steps=5)
    assert cw.success.all()
    assert np.all(cw.l2 >= exact["l2"] * (1 - 1e-5))  # (the margin may lead CW to a farther facet)


def test_evasive_cw(aff):
    # on an affine model it still finds adversarial examples no closer than the exact distance
    for det in ("loss", "model"):
        r = attacks.evasive_carlini_wagner(aff.f, aff.x, aff.y, penalty=0.1, detector=det, steps=60,
                                           search_steps=5)
        assert r.success.all()
        assert np.all(r.l2 >= aff.dist("l2") * (1 - 1e-5))


# ---------------------------------------------------------------------------
# Sharding over local devices
# ---------------------------------------------------------------------------


_SHARD_CODE = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from jaxbound import attacks

    def run(path):
        rng = np.random.default_rng(0)
        W1 = rng.normal(size=(16, 20)).astype(np.float32)
        W2 = rng.normal(size=(20, 3)).astype(np.float32)
        f = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ W1) @ W2
        x = rng.uniform(0, 1, size=(10, 16)).astype(np.float32)
        y = rng.integers(0, 3, 10)
        out = {"ndev": np.array(jax.local_device_count())}
        r = attacks.pgd(f, x, y, key=jax.random.key(0), eps=[0.05, 0.1], norm="linf", steps=6, batch_size=8)
        out["pgd"], out["pgd_s"] = r.x_adv, r.success
        out["ba"] = attacks.boundary_attack(f, x, y, key=jax.random.key(1), steps=20).x_adv
        out["md"] = attacks.minimal_adversarial_distance(f, x, y, key=jax.random.key(2), eps_max=1.0, norm="l2",
                                                         steps=5, search_steps=3).distance
        np.savez(path, **out)
    """
)


def test_sharded_over_four_devices_identical(tmp_path):
    """The same attacks on 4 forced host devices (padded shards of 3 rows) and in this process."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    path = tmp_path / "r4.npz"
    code = _SHARD_CODE + "\nimport sys\nrun(sys.argv[1])\n"
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ns: dict = {}
    exec(compile(_SHARD_CODE, "<shard>", "exec"), ns)
    ns["run"](tmp_path / "here.npz")
    a, b = np.load(tmp_path / "here.npz"), np.load(path)
    assert int(b["ndev"]) == 4 and int(a["ndev"]) != 4
    for k in ("pgd", "pgd_s", "ba", "md"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _raises(name, fn, *a, **kw):
    with pytest.raises(ValueError) as e:
        fn(*a, **kw)
    assert str(e.value).startswith(name), str(e.value)


def test_bad_inputs_are_rejected(mlp):
    f, x, y, key = mlp.f, mlp.x, mlp.y, jax.random.key(0)
    _raises("eps", attacks.pgd, f, x, y, key=key, norm="linf", eps=-0.1)
    _raises("eps", attacks.pgd, f, x, y, key=key, norm="linf", eps=[0.1, np.nan])
    _raises("eps", attacks.pgd, f, x, y, key=key, norm="linf", eps=np.zeros((2, 2)))
    _raises("steps", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, steps=0)
    _raises("restarts", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, restarts=0)
    _raises("step_size", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, step_size=-1.0)
    _raises("norm", attacks.pgd, f, x, y, key=key, eps=0.1, norm="l7x")
    _raises("norm", attacks.pgd, f, x, y, key=key, eps=0.1, norm=3)
    _raises("loss", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, loss="hinge")
    _raises("y", attacks.pgd, f, x, np.full(12, 3), key=key, norm="linf", eps=0.1)
    _raises("y", attacks.pgd, f, x, y[:5], key=key, norm="linf", eps=0.1)
    _raises("y", attacks.pgd, f, x, y.astype(float), key=key, norm="linf", eps=0.1)
    _raises("y", attacks.pgd, f, x, None, key=key, norm="linf", eps=0.1, targeted=True)
    _raises("x", attacks.pgd, f, x + 0.5, y, key=key, norm="linf", eps=0.1)
    _raises("x", attacks.pgd, f, np.where(x > 0.5, np.nan, x), y, key=key, norm="linf", eps=0.1)
    _raises("x", attacks.pgd, f, x[0, 0, 0], y, key=key, norm="linf", eps=0.1)
    _raises("bounds", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, bounds=(1.0, 0.0))
    _raises("bounds", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, bounds=(0.0,))
    _raises("key", attacks.pgd, f, x, y, key=0, norm="linf", eps=0.1)
    _raises("logits_fn", attacks.pgd, "model", x, y, key=key, norm="linf", eps=0.1)
    _raises("logits_fn", attacks.pgd, lambda z: z.sum(), x, y, key=key, norm="linf", eps=0.1)
    _raises("eps_max", attacks.minimal_adversarial_distance, f, x, y, key=key, norm="l2", eps_max=0.0)
    _raises("search_steps", attacks.carlini_wagner_l2, f, x, y, search_steps=0)
    _raises("c_init", attacks.carlini_wagner_l2, f, x, y, c_init=-1.0)
    _raises("starting_points", attacks.boundary_attack, f, x, y, key=key, starting_points=x[:3])
    _raises("source_step", attacks.boundary_attack, f, x, y, key=key, source_step=1.0)
    _raises("detector", attacks.evasive_carlini_wagner, f, x, y, detector="jacobian")
    _raises("batch_size", attacks.pgd, f, x, y, key=key, norm="linf", eps=0.1, batch_size=0)
    # unbounded inputs are fine without a box
    attacks.fgsm(f, x + 0.5, y, eps=0.1, bounds=None)


# ---------------------------------------------------------------------------
# LeNet5 and its CPU lowering
# ---------------------------------------------------------------------------


def random_params(model, shape, seed=0):
    """LeCun-normal parameters drawn with NumPy (no compilation), shaped by ``init_params``."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: models.init_params(model, shape, key=jax.random.key(0)))

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.normal(size=s.shape).astype(np.float32) / np.sqrt(fan_in) * (len(s.shape) > 1))

    return jax.tree.map(draw, shapes)


@pytest.fixture(scope="module")
def lenet():
    fast = models.create("lenet5", widen_factor=0.25)
    ref = models.create("lenet5", widen_factor=0.25, impl="xla")
    params = random_params(fast, (8, 8, 1), seed=0)
    # positive biases create exact ties in the pooling windows of blank regions
    params = jax.tree.map(lambda a: a + 0.05 if a.ndim == 1 else a, params)
    x = np.random.default_rng(1).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    x[:2, :4] = 0.0
    return fast, ref, params, x


def test_lenet5_fast_lowering_matches_xla(lenet):
    fast, ref, params, x = lenet
    xj = jnp.asarray(x)

    def loss(model):
        return lambda z, p: jnp.sum(jax.nn.log_softmax(model.apply(p, z))[:, 1] * jnp.arange(6))

    @jax.jit
    def everything(p, z):
        out = {}
        for name, m in (("fast", fast), ("ref", ref)):
            out[name] = (
                m.apply(p, z),
                jax.grad(loss(m))(z, p),
                jax.grad(loss(m), argnums=1)(z, p),
                # reverse over reverse (gradient penalties, evasive CW)
                jax.grad(lambda v, m=m: jnp.sum(jax.grad(loss(m))(v, p) ** 2))(z),
            )
        return out

    out = everything(params, xj)
    a, b = out["fast"], out["ref"]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), a[2], b[2])
    # second order differs only at exact pooling ties (rows 0-1), where the function is not differentiable
    np.testing.assert_allclose(a[3][2:], b[3][2:], rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(a[1])).max() > 0


def test_conv2d_same_gradients():
    """Both backward paths (<= 4 input channels: GEMM + planar col2im; more: flipped-kernel conv) against lax."""

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")

    @jax.jit
    def both(*xwg):
        out = []
        for x, w, g in zip(xwg[::3], xwg[1::3], xwg[2::3]):
            out.append((models.conv2d_same(x, w), ref(x, w), jax.vjp(models.conv2d_same, x, w)[1](g),
                        jax.vjp(ref, x, w)[1](g)))
        return out

    rng = np.random.default_rng(0)
    args = []
    for cin, k in ((1, 5), (3, 3), (3, 5), (6, 5)):
        args += [rng.normal(size=s).astype(np.float32) for s in ((2, 6, 5, cin), (k, k, cin, 7), (2, 6, 5, 7))]
    for y, y_ref, got, want in both(*args):
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_relu_maxpool_tie_convention_matches_flax():
    z = jnp.array([[1.0, 1.0, 2.0, 0.5], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, -1.0, -1.0], [0.0, 0.0, -1.0, -2.0]])
    z = z.reshape(1, 4, 4, 1)
    wts = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    g1 = jax.grad(lambda v: jnp.sum(models.relu_maxpool2(v) * wts))(z)
    g2 = jax.grad(lambda v: jnp.sum(nn.max_pool(jax.nn.relu(v), (2, 2), (2, 2)) * wts))(z)
    np.testing.assert_array_equal(g1, g2)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2] = 1.0, 2.0  # first maximum of each window; relu(0) and negatives get 0
    np.testing.assert_array_equal(np.asarray(g1)[0, :, :, 0], expected)


def test_lenet5_widths_registry_and_bad_input():
    assert "lenet5" in models.available()
    m = models.create("lenet5", widen_factor=0.5, num_classes=7)
    p = jax.eval_shape(lambda: models.init_params(m, (28, 28, 1), key=jax.random.key(0)))["params"]
    assert p["conv1"]["kernel"].shape == (5, 5, 1, 16)
    assert p["conv2"]["kernel"].shape == (5, 5, 16, 32)
    assert p["fc1"]["kernel"].shape == (7 * 7 * 32, 512)
    assert p["fc2"]["kernel"].shape == (512, 7)
    full = jax.eval_shape(lambda: models.init_params(models.create("lenet5"), (28, 28, 1), key=jax.random.key(0)))
    full = full["params"]
    assert full["fc1"]["kernel"].shape == (3136, 1024)
    # normalisation inside the model
    mn = models.create("lenet5", mean=0.5, std=0.25, impl="xla", widen_factor=0.125)
    plain = models.create("lenet5", impl="xla", widen_factor=0.125)
    mp = random_params(mn, (8, 8, 1))
    xs = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    both = jax.jit(lambda p, v: (mn.apply(p, v), plain.apply(p, (v - 0.5) / 0.25)))(mp, xs)
    np.testing.assert_allclose(both[0], both[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="^name"):
        models.create("resnet999")
    for bad, kw, shape in (("x", {}, (10, 10, 1)), ("widen_factor", {"widen_factor": 0.0}, (8, 8, 1)),
                           ("impl", {"impl": "cuda"}, (8, 8, 1)), ("std", {"std": 0.0}, (8, 8, 1))):
        with pytest.raises(ValueError, match=f"^{bad}"):
            jax.eval_shape(lambda: models.init_params(models.create("lenet5", **kw), shape, key=jax.random.key(0)))


@pytest.mark.slow
def test_ding_protocol_on_mnist(mnist_train, mnist_test):
    """Briefly trained LeNet5 on MNIST: PGD (eps 0.3, 40 x 0.01) with and without the box."""
    import optax

    from jaxbound import metrics

    model = models.create("lenet5")
    params = models.init_params(model, (28, 28, 1), key=jax.random.key(0))
    opt = optax.adam(1e-3)
    st = opt.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(model.apply(q, xb), yb).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    for _ in range(300):
        i = rng.integers(0, len(mnist_train), 50)
        params, st = step(params, st, mnist_train.images[i], mnist_train.labels[i])
    f = models.logits_fn(model, params)
    x, y = mnist_test.images[:256], mnist_test.labels[:256]
    for bounds in ((0.0, 1.0), None):
        rep = metrics.evaluate_robustness(f, x, y, key=jax.random.key(1), norm="linf", eps=0.3, steps=40,
                                          step_size=0.01, bounds=bounds)
        assert rep.clean_accuracy > 0.9
        assert rep.robust_accuracy <= rep.clean_accuracy
        assert rep.robustness_wrt_predictions >= rep.robust_accuracy - 1e-12
        assert rep.robust_accuracy < 0.5  # an undefended model is broken at eps = 0.3
