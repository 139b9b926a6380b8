"""Robustness metrics against closed forms (affine classifiers), brute force and hand-made cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jaxbound import attacks, metrics
from _affine import DUAL, Affine  # noqa: E402


@pytest.fixture(scope="module")
def aff():
    return Affine(n=16, flip=(1, 4, 9))


def fake_result(success):
    success = np.asarray(success, bool)
    z = np.zeros(success.shape, np.float32)
    return attacks.AttackResult(None, success, None, z, z, z)


# ---------------------------------------------------------------------------
# Robust accuracy
# ---------------------------------------------------------------------------


def test_robust_accuracy_counts_clean_errors_and_worst_case(aff):
    n = len(aff.y)
    rng = np.random.default_rng(1)
    s1, s2 = rng.random(n) < 0.3, rng.random(n) < 0.3
    ra = metrics.robust_accuracy(aff.f, aff.x, aff.y, [fake_result(s1), fake_result(s2)])
    correct = aff.pred == aff.y
    assert ra.n == n and np.array_equal(ra.correct, correct)
    assert ra.clean_accuracy == pytest.approx(correct.mean())
    assert np.array_equal(ra.robust, correct & ~s1 & ~s2)
    assert ra.robust_accuracy == pytest.approx((correct & ~s1 & ~s2).mean())
    assert ra.robust_accuracy <= ra.clean_accuracy
    # an attack that "fails" everywhere leaves the clean errors as failures
    none = metrics.robust_accuracy(aff.f, aff.x, aff.y, fake_result(np.zeros(n, bool)))
    assert none.robust_accuracy == none.clean_accuracy == pytest.approx(13 / 16)
    # [K, n] success from a vector of eps
    sk = rng.random((3, n)) < 0.5
    rk = metrics.robust_accuracy(aff.f, aff.x, aff.y, fake_result(sk))
    np.testing.assert_allclose(rk.robust_accuracy, (correct & ~sk).mean(axis=1))
    assert rk.to_dict()["robust_accuracy"] == pytest.approx(list((correct & ~sk).mean(axis=1)))
    # robustness w.r.t. predictions
    assert metrics.robustness_wrt_predictions([fake_result(s1), fake_result(s2)]) == pytest.approx(
        1 - (s1 | s2).mean())
    np.testing.assert_allclose(metrics.robustness_wrt_predictions(fake_result(sk)), 1 - sk.mean(axis=1))
    assert metrics.accuracy(aff.f, aff.x, aff.y) == pytest.approx(13 / 16)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_evaluate_robustness_matches_closed_form(aff, bounds):
    """PGD is exact on a binary affine model: robust iff correct and eps < distance (Ding et al. Table 7 setting)."""
    d = aff.dist("linf")
    eps = np.array([0.0, 0.5 * np.median(d), 1.3 * np.median(d)])
    assert np.min(np.abs(d[:, None] / np.maximum(eps[None, 1:], 1e-12) - 1)) > 0.02
    rep = metrics.evaluate_robustness(aff.f, aff.x, aff.y, key=jax.random.key(0), eps=eps, norm="linf",
                                      steps=20, step_size=eps / 5 + 1e-4, bounds=bounds)
    correct = aff.pred == aff.y
    exp_rob = [(correct & (d > e)).mean() for e in eps]
    exp_wrt = [(d > e).mean() for e in eps]
    np.testing.assert_allclose(rep.robust_accuracy, exp_rob)
    np.testing.assert_allclose(rep.robustness_wrt_predictions, exp_wrt)
    assert rep.clean_accuracy == pytest.approx(correct.mean())
    assert all(r <= rep.clean_accuracy for r in rep.robust_accuracy)
    rec = rep.to_dict()
    assert rec["n"] == len(aff.y) and rec["norm"] == "linf" and rec["eps"] == pytest.approx(list(eps))
    assert rec["bounds"] == (None if bounds is None else [0.0, 1.0])
    curve = metrics.robust_error_curve(aff.f, aff.x, aff.y, key=jax.random.key(0), eps=eps, norm="linf", steps=20,
                                       step_size=eps / 5 + 1e-4, bounds=bounds)
    np.testing.assert_allclose(curve.robust_error, 1 - np.asarray(exp_rob))
    assert curve.clean_error == pytest.approx(1 - correct.mean())
    assert np.all(np.diff(curve.robust_error) >= 0)


def test_attack_config_is_the_same_as_keywords(aff):
    """One AttackConfig gives what the individual keyword settings give; the norm is never defaulted."""
    eps = float(np.median(aff.dist("linf")))
    cfg = attacks.AttackConfig(norm="linf", eps=eps, steps=10)
    by_cfg = metrics.evaluate_robustness(aff.f, aff.x, aff.y, cfg, key=jax.random.key(3))
    by_kw = metrics.evaluate_robustness(aff.f, aff.x, aff.y, key=jax.random.key(3), norm="linf", eps=eps, steps=10)
    assert by_cfg == by_kw
    over = metrics.evaluate_robustness(aff.f, aff.x, aff.y, cfg, key=jax.random.key(3), steps=20)
    assert over.steps == 20 and cfg.steps == 10
    curve = metrics.robust_error_curve(aff.f, aff.x, aff.y, cfg, key=jax.random.key(3))
    assert curve.eps.shape == (1,) and curve.robust_error[0] == pytest.approx(1 - by_cfg.robust_accuracy)
    with pytest.raises(TypeError, match="^norm"):
        metrics.evaluate_robustness(aff.f, aff.x, aff.y, key=jax.random.key(3), eps=eps)
    with pytest.raises(TypeError, match="'norm'"):
        metrics.gradient_norms(aff.f, aff.x, aff.y)


# ---------------------------------------------------------------------------
# Error curves and median distance
# ---------------------------------------------------------------------------


def test_error_curve_and_median_distance():
    d = np.array([0.0, 0.3, np.inf, 0.1, 0.2, 0.0, np.inf])
    c = metrics.error_curve(d, [0.0, 0.1, 0.25, 10.0])
    np.testing.assert_allclose(c.robust_error, [2 / 7, 3 / 7, 4 / 7, 5 / 7])
    assert c.clean_error == pytest.approx(2 / 7) and c.n == 7
    # 50% crossing: the ceil(n/2)-th smallest distance
    assert metrics.median_adversarial_distance(d) == 0.2
    assert metrics.median_adversarial_distance([0.5, 0.1]) == 0.1
    assert metrics.median_adversarial_distance([np.inf, np.inf, 1.0]) == np.inf
    for n in (1, 2, 5, 10):
        r = np.random.default_rng(n).random(n)
        m = metrics.median_adversarial_distance(r)
        assert (r <= m).mean() >= 0.5 and (r < m).mean() < 0.5
    with pytest.raises(ValueError, match="^distances: is empty"):
        metrics.error_curve([], 0.1)


def test_median_distance_of_bisection_pgd_on_affine(aff):
    x, y = aff.x, aff.pred
    md = attacks.minimal_adversarial_distance(aff.f, x, y, key=jax.random.key(0), eps_max=0.5, norm="l2",
                                              search_steps=12, steps=30)
    d = aff.dist("l2")
    exact = np.sort(d)[math.ceil(len(d) / 2) - 1]
    assert metrics.median_adversarial_distance(md.distance) == pytest.approx(exact, rel=3e-3)


# ---------------------------------------------------------------------------
# Gradient norms, predicted distance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_gradient_norms_closed_form(aff, norm):
    gn = metrics.gradient_norms(aff.f, aff.x, aff.y, norm=norm)
    wn = np.linalg.norm(aff.w.astype(np.float64), DUAL[norm])  # dual norm of w
    sig = 1 / (1 + np.exp(-aff.s))
    np.testing.assert_allclose(gn.loss, np.abs(sig - aff.y) * wn, rtol=1e-4)
    np.testing.assert_allclose(gn.model, sig * (1 - sig) * wn, rtol=1e-4)
    ce = np.where(aff.y == 1, -np.log(sig), -np.log(1 - sig))
    np.testing.assert_allclose(gn.loss_value, ce, rtol=1e-4)
    assert gn.loss_total_variation == pytest.approx(gn.loss.mean()) and gn.loss_lipschitz == pytest.approx(
        gn.loss.max())
    assert gn.dual == {"l2": "l2", "linf": "l1"}[norm]
    rec = gn.to_dict()
    assert rec["model_max"] == pytest.approx(gn.model.max()) and rec["model_mean"] == pytest.approx(gn.model.mean())
    if norm == "l2":
        gl = metrics.gradient_norms(aff.f, aff.x, aff.y, norm=norm, output="logits")
        np.testing.assert_allclose(gl.model, wn, rtol=1e-5)


def test_gradient_norms_match_jacobian_brute_force():
    rng = np.random.default_rng(2)
    W1 = jnp.asarray(rng.normal(size=(6, 8)).astype(np.float32))
    W2 = jnp.asarray(rng.normal(size=(8, 4)).astype(np.float32))

    def f(z):
        return jnp.tanh(z @ W1) @ W2

    x = rng.uniform(size=(5, 6)).astype(np.float32)
    y = rng.integers(0, 4, 5)
    gn = metrics.gradient_norms(f, x, y, norm="linf")

    @jax.jit
    def ref(x):
        probs = lambda v: jax.nn.softmax(f(v[None]))[0]  # noqa: E731
        jac = jax.vmap(jax.jacrev(probs))(x)  # [n, k, d]
        ce = lambda v, t: -jax.nn.log_softmax(f(v[None]))[0, t]  # noqa: E731
        g = jax.vmap(jax.grad(ce))(x, jnp.asarray(y))
        return jnp.abs(g).sum(1), jnp.abs(jac).sum(2).max(1)

    lref, mref = ref(x)
    np.testing.assert_allclose(gn.loss, lref, rtol=1e-4)
    np.testing.assert_allclose(gn.model, mref, rtol=1e-4)


def test_predicted_minimal_distance_eq_3_7(aff):
    est = metrics.predicted_minimal_distance(aff.f, aff.x, aff.y, norm="l2")
    sig = 1 / (1 + np.exp(-aff.s))
    ce = np.where(aff.y == 1, -np.log(sig), -np.log(1 - sig))
    g = np.abs(sig - aff.y) * np.linalg.norm(aff.w.astype(np.float64))
    correct = aff.pred == aff.y
    np.testing.assert_allclose(est[correct], ((math.log(2) - ce) / g)[correct], rtol=1e-4)
    assert np.all(est[~correct] == 0)
    # a smaller threshold l0 (below some losses) clips those estimates at 0
    est2 = metrics.predicted_minimal_distance(aff.f, aff.x, aff.y, norm="l2", l0=0.05)
    assert np.all(est2 >= 0) and np.all(est2 <= est + 1e-12)
    assert np.all(est2[correct & (ce > 0.05)] == 0)


# ---------------------------------------------------------------------------
# Dataset Lipschitz constant
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,metric", [("l2", "euclidean"), ("linf", "chebyshev")])
def test_dataset_lipschitz_brute_force(norm, metric):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(40, 3, 3, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    res = metrics.dataset_lipschitz(x, labels, norm=norm)
    D = cdist(x.reshape(40, -1).astype(np.float64), x.reshape(40, -1).astype(np.float64), metric)
    D[labels[:, None] == labels[None, :]] = np.inf
    assert res.min_distance == pytest.approx(D.min(), rel=1e-5)
    assert res.lipschitz == pytest.approx(1 / D.min(), rel=1e-5)
    assert labels[res.index] != labels[res.other_index]
    assert D[res.index, res.other_index] == pytest.approx(D.min(), rel=1e-5)
    assert res.to_dict()["n"] == 40
    # identical images with different labels: infinite Lipschitz constant
    x2 = np.concatenate([x, x[:1]])
    l2 = np.concatenate([labels, [(labels[0] + 1) % 3]])
    assert metrics.dataset_lipschitz(x2, l2, norm=norm).lipschitz == np.inf


@pytest.mark.slow
def test_dataset_lipschitz_mnist_finlay_table4(mnist_train):
    """Finlay et al. Table 4: 0.417 for the MNIST training set (l2)."""
    res = metrics.dataset_lipschitz(mnist_train.images, mnist_train.labels, norm="l2", progress=True)
    assert res.lipschitz == pytest.approx(0.417, abs=0.0015)


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def test_detection_threshold_keeps_false_positive_rate():
    rng = np.random.default_rng(4)
    for n in (1, 7, 20, 101):
        clean = np.round(rng.random(n), 1)  # many ties
        for fpr in (0.0, 0.05, 0.2, 0.5):
            c = metrics.detection_threshold(clean, fpr=fpr)
            assert np.mean(clean > c) <= fpr + 1e-12
            assert c in clean
            # the threshold is the smallest such order statistic
            smaller = clean[clean < c]
            if smaller.size:
                assert np.mean(clean > smaller.max()) > fpr
    adv = np.array([0.1, 5.0, 7.0, 0.0])
    det = metrics.gradient_norm_detection(np.arange(20.0), adv, fpr=0.05)
    assert det.threshold == 18.0 and det.false_positive_rate == pytest.approx(0.05)
    assert det.detection_rate == pytest.approx(0.0)
    det = metrics.gradient_norm_detection(np.arange(20.0), [19.5, 30.0, 1.0], fpr=0.05)
    assert det.detection_rate == pytest.approx(2 / 3) and np.array_equal(det.detected, [True, True, False])
    assert "detected" not in det.to_dict() and det.to_dict(per_example=True)["detected"] == [True, True, False]


def test_detect_adversarial_uses_model_gradient_norms(aff):
    far = aff.x + 0.3 * np.sign(aff.w)[None] * np.where(aff.s > 0, 1, -1)[:, None]  # away from the boundary
    near = aff.x - (aff.s / np.dot(aff.w, aff.w))[:, None].astype(np.float32) * aff.w[None] * 0.9
    det = metrics.detect_adversarial(aff.f, far.astype(np.float32), near.astype(np.float32), norm="l2", fpr=0.0)
    # points near the decision boundary have larger sigma'(s) ||w||: all detected
    assert det.detection_rate == 1.0 and det.false_positive_rate == 0.0


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _raises(name, fn, *a, **kw):
    with pytest.raises(ValueError) as e:
        fn(*a, **kw)
    assert str(e.value).startswith(name), str(e.value)


def test_bad_inputs_are_rejected(aff):
    n = len(aff.y)
    _raises("results", metrics.robust_accuracy, aff.f, aff.x, aff.y, fake_result(np.zeros(n - 1, bool)))
    _raises("results", metrics.robust_accuracy, aff.f, aff.x, aff.y, [])
    _raises("results", metrics.robust_accuracy, aff.f, aff.x, aff.y, "pgd")
    _raises("y", metrics.robust_accuracy, aff.f, aff.x, np.full(n, 2), fake_result(np.zeros(n, bool)))
    _raises("y", metrics.accuracy, aff.f, aff.x, aff.y[:3])
    _raises("x", metrics.accuracy, aff.f, aff.x[0], aff.y)
    _raises("logits_fn", metrics.accuracy, None, aff.x, aff.y)
    _raises("distances", metrics.error_curve, [0.1, -1.0], 0.1)
    _raises("distances", metrics.median_adversarial_distance, [np.nan])
    _raises("distances", metrics.median_adversarial_distance, [])
    _raises("eps", metrics.error_curve, [0.1], -0.1)
    _raises("fpr", metrics.detection_threshold, [1.0, 2.0], fpr=1.0)
    _raises("clean_scores", metrics.detection_threshold, [], fpr=0.1)
    _raises("adv_scores", metrics.gradient_norm_detection, [1.0], [[1.0]])
    _raises("output", metrics.gradient_norms, aff.f, aff.x, aff.y, norm="l2", output="softmax")
    _raises("norm", metrics.gradient_norms, aff.f, aff.x, aff.y, norm="l3")
    _raises("l0", metrics.predicted_minimal_distance, aff.f, aff.x, aff.y, norm="l2", l0=0.0)
    _raises("statistic", metrics.detect_adversarial, aff.f, aff.x, aff.x, norm="l2", statistic="both")
    _raises("labels", metrics.dataset_lipschitz, aff.x, np.zeros(n, int), norm="l2")
    _raises("x", metrics.dataset_lipschitz, aff.x[0], aff.y, norm="l2")


def test_nan_model_raises_instead_of_scoring_class_zero(aff):
    """argmax of a NaN row is 0: a NaN model used to score the share of class-0 labels as its accuracy."""
    n = len(aff.y)

    def nan_f(x):
        return aff.f(x) * jnp.nan

    def one_bad_row(x):
        z = aff.f(x)
        return z.at[3].set(jnp.inf) if z.shape[0] > 3 else z

    for fn in (nan_f, one_bad_row):
        for call in (lambda: metrics.accuracy(fn, aff.x, aff.y),
                     lambda: metrics.robust_accuracy(fn, aff.x, aff.y, fake_result(np.zeros(n, bool))),
                     lambda: metrics.gradient_norms(fn, aff.x, aff.y, norm="l2"),
                     lambda: metrics.gradient_norms(fn, aff.x, None, norm="l2"),
                     lambda: metrics.predicted_minimal_distance(fn, aff.x, aff.y, norm="l2")):
            with pytest.raises(ValueError, match="^logits_fn: returned NaN or infinite outputs") as e:
                call()
            if fn is one_bad_row:
                assert "on 1 of" in str(e.value) and "rows 3)" in str(e.value)


def test_empty_inputs_raise_instead_of_nan(aff):
    none = aff.x[:0], aff.y[:0]
    _raises("x", metrics.accuracy, aff.f, *none)
    _raises("x", metrics.robust_accuracy, aff.f, *none, fake_result(np.zeros(0, bool)))
    _raises("results", metrics.robustness_wrt_predictions, fake_result(np.zeros(0, bool)))
    _raises("x", metrics.gradient_norms, aff.f, *none, norm="l2")
    _raises("x", metrics.predicted_minimal_distance, aff.f, *none, norm="l2")
    _raises("distances", metrics.error_curve, [], [0.1, 0.2])
    _raises("adv_scores", metrics.gradient_norm_detection, [1.0, 2.0], [], fpr=0.5)
    _raises("x_clean", metrics.detect_adversarial, aff.f, aff.x[:0], aff.x, norm="l2")
    _raises("x_adv", metrics.detect_adversarial, aff.f, aff.x, aff.x[:0], norm="l2")


def test_detect_adversarial_names_the_bad_input(aff):
    _raises("x_adv", metrics.detect_adversarial, aff.f, aff.x, aff.x[:, :-1], norm="l2")
    _raises("x_adv", metrics.detect_adversarial, aff.f, aff.x, aff.x * np.nan, norm="l2")
    _raises("x_adv", metrics.detect_adversarial, aff.f, aff.x, aff.x[0], norm="l2")
    _raises("x_clean", metrics.detect_adversarial, aff.f, aff.x * np.inf, aff.x, norm="l2")
