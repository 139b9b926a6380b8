"""Bad inputs to jaxbound.metrics: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import attacks, metrics
from _affine import Affine
from _badinput import check, params, unique_ids

AFF = Affine(d=6, n=8)
F, X, Y = AFF.f, AFF.x, AFF.y
N = len(Y)
KEY = jax.random.key(0)


def nan_f(x):
    return F(x) * jnp.nan


def inf_row_f(x):
    z = F(x)
    return z.at[0].set(jnp.inf)


def res(success):
    s = np.asarray(success, bool)
    z = np.zeros(s.shape, np.float32)
    return attacks.AttackResult(None, s, None, z, z, z)


OK = res(np.zeros(N, bool))

CASES = [
    ("accuracy nan model", lambda: metrics.accuracy(nan_f, X, Y), ValueError, "logits_fn"),
    ("accuracy one inf row", lambda: metrics.accuracy(inf_row_f, X, Y), ValueError, "logits_fn"),
    ("accuracy empty", lambda: metrics.accuracy(F, X[:0], Y[:0]), ValueError, "x"),
    ("accuracy not callable", lambda: metrics.accuracy("model", X, Y), ValueError, "logits_fn"),
    ("accuracy short labels", lambda: metrics.accuracy(F, X, Y[:3]), ValueError, "y"),
    ("accuracy label out of range", lambda: metrics.accuracy(F, X, np.full(N, 5)), ValueError, "y"),
    ("accuracy float labels", lambda: metrics.accuracy(F, X, Y * 1.0), ValueError, "y"),
    ("accuracy nan x", lambda: metrics.accuracy(F, X * np.nan, Y), ValueError, "x"),
    ("accuracy 1-D x", lambda: metrics.accuracy(F, X[0], Y), ValueError, "x"),
    ("accuracy zero batch", lambda: metrics.accuracy(F, X, Y, batch_size=0), ValueError, "batch_size"),
    ("robust_accuracy nan model", lambda: metrics.robust_accuracy(nan_f, X, Y, OK), ValueError, "logits_fn"),
    ("robust_accuracy empty", lambda: metrics.robust_accuracy(F, X[:0], Y[:0], res(np.zeros(0, bool))),
     ValueError, "x"),
    ("robust_accuracy wrong length", lambda: metrics.robust_accuracy(F, X, Y, res(np.zeros(N - 1, bool))),
     ValueError, "results"),
    ("robust_accuracy no results", lambda: metrics.robust_accuracy(F, X, Y, []), ValueError, "results"),
    ("robustness_wrt_predictions empty", lambda: metrics.robustness_wrt_predictions(res(np.zeros(0, bool))),
     ValueError, "results"),
    ("robustness_wrt_predictions numbers", lambda: metrics.robustness_wrt_predictions([1, 2]), ValueError,
     "results"),
    ("dataset_lipschitz empty", lambda: metrics.dataset_lipschitz(X[:0], Y[:0], norm="l2"), ValueError, "x"),
    ("dataset_lipschitz ragged", lambda: metrics.dataset_lipschitz([[0.0, 1.0], [2.0]], Y[:2], norm="l2"),
     ValueError, "x"),
    ("robustness_wrt_predictions text", lambda: metrics.robustness_wrt_predictions("pgd"), ValueError, "results"),
    ("error_curve empty", lambda: metrics.error_curve([], 0.1), ValueError, "distances"),
    ("error_curve negative", lambda: metrics.error_curve([0.1, -1.0], 0.1), ValueError, "distances"),
    ("error_curve nan", lambda: metrics.error_curve([np.nan], 0.1), ValueError, "distances"),
    ("error_curve 2-D", lambda: metrics.error_curve([[0.1]], 0.1), ValueError, "distances"),
    ("error_curve text", lambda: metrics.error_curve(["a"], 0.1), ValueError, "distances"),
    ("error_curve negative eps", lambda: metrics.error_curve([0.1], -0.1), ValueError, "eps"),
    ("error_curve empty eps", lambda: metrics.error_curve([0.1], []), ValueError, "eps"),
    ("median distance empty", lambda: metrics.median_adversarial_distance([]), ValueError, "distances"),
    ("gradient_norms nan model", lambda: metrics.gradient_norms(nan_f, X, Y, norm="l2"), ValueError, "logits_fn"),
    ("gradient_norms empty", lambda: metrics.gradient_norms(F, X[:0], Y[:0], norm="l2"), ValueError, "x"),
    ("gradient_norms no norm", lambda: metrics.gradient_norms(F, X, Y, norm=None), ValueError, "norm"),
    ("gradient_norms output", lambda: metrics.gradient_norms(F, X, Y, norm="l2", output="softmax"), ValueError,
     "output"),
    ("predicted distance l0 zero", lambda: metrics.predicted_minimal_distance(F, X, Y, norm="l2", l0=0.0),
     ValueError, "l0"),
    ("predicted distance nan model", lambda: metrics.predicted_minimal_distance(nan_f, X, Y, norm="l2"),
     ValueError, "logits_fn"),
    ("dataset_lipschitz one class", lambda: metrics.dataset_lipschitz(X, np.zeros(N, int), norm="l2"), ValueError,
     "labels"),
    ("dataset_lipschitz 1-D x", lambda: metrics.dataset_lipschitz(X[0], Y, norm="l2"), ValueError, "x"),
    ("dataset_lipschitz bad norm", lambda: metrics.dataset_lipschitz(X, Y, norm="lx"), ValueError, "norm"),
    ("detection_threshold empty", lambda: metrics.detection_threshold([], fpr=0.1), ValueError, "clean_scores"),
    ("detection_threshold fpr 1", lambda: metrics.detection_threshold([1.0], fpr=1.0), ValueError, "fpr"),
    ("detection_threshold nan", lambda: metrics.detection_threshold([np.nan], fpr=0.1), ValueError,
     "clean_scores"),
    ("gradient_norm_detection empty adv", lambda: metrics.gradient_norm_detection([1.0], []), ValueError,
     "adv_scores"),
    ("gradient_norm_detection 2-D adv", lambda: metrics.gradient_norm_detection([1.0], [[1.0]]), ValueError,
     "adv_scores"),
    ("detect_adversarial x_adv shape", lambda: metrics.detect_adversarial(F, X, X[:, :3], norm="l2"), ValueError,
     "x_adv"),
    ("detect_adversarial x_adv nan", lambda: metrics.detect_adversarial(F, X, X * np.nan, norm="l2"), ValueError,
     "x_adv"),
    ("detect_adversarial x_adv empty", lambda: metrics.detect_adversarial(F, X, X[:0], norm="l2"), ValueError,
     "x_adv"),
    ("detect_adversarial x_clean empty", lambda: metrics.detect_adversarial(F, X[:0], X, norm="l2"), ValueError,
     "x_clean"),
    ("detect_adversarial statistic", lambda: metrics.detect_adversarial(F, X, X, norm="l2", statistic="both"),
     ValueError, "statistic"),
    ("detect_adversarial nan model", lambda: metrics.detect_adversarial(nan_f, X, X, norm="l2"), ValueError,
     "logits_fn"),
    ("evaluate_robustness bad key", lambda: metrics.evaluate_robustness(F, X, Y, key=0, norm="linf", eps=0.1),
     ValueError, "key"),
    ("evaluate_robustness negative eps", lambda: metrics.evaluate_robustness(F, X, Y, key=KEY, norm="linf",
                                                                             eps=-0.1), ValueError, "eps"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
