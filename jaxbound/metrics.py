"""Robustness metrics: robust accuracy, error curves, gradient norms, detection.

What trained models reach, in the papers' terms:

* :func:`robust_accuracy` -- accuracy under attack with clean errors counted
  as failures and the per-point worst case over several attacks (and the
  restarts inside each); :func:`evaluate_robustness` runs Ding et al.'s
  protocol (clean accuracy, robust accuracy, robustness w.r.t. predictions;
  2019, §3.2 and Table 2) and reports ``n``, ``eps``, the norm and the
  attack settings; :func:`robustness_wrt_predictions` for attacks run on the
  model's own predictions.
* :func:`robust_error_curve` (vmapped PGD over a vector of eps) and
  :func:`error_curve` (from minimal distances): the error-versus-distance
  curves of Finlay et al. (2019, Figs. 2-3); :func:`median_adversarial_distance`
  their 50% crossing (Tables 2-3).
* :func:`gradient_norms`: per-example dual norms of the loss gradient
  ``||grad_x l(x)||_*`` and of the model Jacobian ``||grad f(x)||_{*,inf}``;
  their mean is the total variation and their max a Lipschitz estimate
  (Finlay et al. eqs. 2.3, 2.8, Tables 2-3).
* :func:`predicted_minimal_distance`: ``(l0 - l(x)) / ||grad l(x)||_*``
  (Finlay et al. eq. 3.7, ``l0 <= log(num_classes)``, eq. 3.8).
* :func:`dataset_lipschitz`: the Lipschitz constant of a labelled data set,
  ``1 / min ||x_i - x_j||`` over pairs of different classes (Finlay et al.
  Table 4), computed with :func:`jaxbound.geometry.nearest_other_class`.
* :func:`gradient_norm_detection`: reject inputs whose gradient norm exceeds
  the threshold that keeps a chosen false-positive rate on clean data
  (Finlay et al. §7, eq. 7.1, Table 6).

Attacks take one :class:`~jaxbound.attacks.AttackConfig` (``attack``, with
single fields overridable by keyword); every function that measures in a
threat-model norm takes ``norm`` explicitly (no default). Per-example arrays
come back as NumPy arrays; summaries are Python floats. Every result type
has ``to_dict()`` for JSON records.

References:
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
  networks generalize and are adversarially robust." arXiv:1808.09540.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import _checks, _engine, lp
from jaxbound import attacks as _attacks
from jaxbound._io import to_jsonable
from jaxbound.attacks import AttackConfig

__all__ = [
    "RobustAccuracy",
    "RobustnessReport",
    "ErrorCurve",
    "GradientNorms",
    "DatasetLipschitz",
    "Detection",
    "accuracy",
    "robust_accuracy",
    "robustness_wrt_predictions",
    "evaluate_robustness",
    "robust_error_curve",
    "error_curve",
    "median_adversarial_distance",
    "gradient_norms",
    "predicted_minimal_distance",
    "dataset_lipschitz",
    "detection_threshold",
    "gradient_norm_detection",
    "detect_adversarial",
]


#: Rows per call of the checked prediction (the attacks' default batch).
_PREDICT_BLOCK = 512


def _asdict(nt) -> dict:
    return to_jsonable(nt._asdict())


# ---------------------------------------------------------------------------
# Accuracy under attack
# ---------------------------------------------------------------------------


class RobustAccuracy(NamedTuple):
    """Accuracy under attack.

    Attributes:
      clean_accuracy: fraction of correctly classified clean inputs.
      robust_accuracy: fraction correct on clean inputs and not broken by any
        attack (``[K]`` list for attacks run with a vector of eps).
      n: number of examples.
      correct: ``[n]`` bool, clean prediction equals the label.
      robust: ``[n]`` (or ``[K, n]``) bool, correct and never broken.
    """

    clean_accuracy: float
    robust_accuracy: Any
    n: int
    correct: np.ndarray
    robust: np.ndarray

    def to_dict(self, *, per_example: bool = False) -> dict:
        """JSON-ready summary (per-example flags on request)."""
        d = {"n": self.n, "clean_accuracy": self.clean_accuracy, "robust_accuracy": to_jsonable(self.robust_accuracy)}
        if per_example:
            d["correct"] = to_jsonable(self.correct)
            d["robust"] = to_jsonable(self.robust)
        return d


def _labels_for(logits_fn, x, y, name: str = "x"):
    x = _checks.check_model_inputs(x, None, name)
    k = _checks.num_classes_of(logits_fn, x)
    return x, _checks.check_model_labels(y, x.shape[0], k), k


def _predict_finite_core(x, *, logits_fn):
    logits = logits_fn(x)
    finite = jnp.all(jnp.isfinite(logits), axis=tuple(range(1, logits.ndim)))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), finite


def _predict(logits_fn: Callable, x: np.ndarray, *, batch_size: int | None, name: str = "x") -> np.ndarray:
    """Predicted labels ``[n]``; a model with NaN or infinite logits on any row raises naming ``logits_fn``.

    (The argmax of a NaN row is 0, so such a model would otherwise score as
    if it predicted class 0 everywhere.)
    """
    pred, finite = _engine.run(_predict_finite_core, dict(logits_fn=logits_fn), (x,), (), block_size=batch_size,
                               default_block=_PREDICT_BLOCK, desc="predict")
    _checks.check_finite_logits(np.asarray(finite), "logits_fn", inputs=name)
    return np.asarray(pred)


def accuracy(logits_fn: Callable, x: Any, y: Any, *, batch_size: int | None = None) -> float:
    """Clean accuracy of ``logits_fn`` on ``(x [n, ...], y [n])``.

    Raises:
      ValueError: ``x`` is empty (no accuracy to measure), labels out of
        range, or ``logits_fn`` returns NaN or infinite logits.
    """
    _checks.check_logits_fn(logits_fn)
    x, y, _ = _labels_for(logits_fn, x, y)
    _checks.check_nonempty(x, "x")
    pred = _predict(logits_fn, x, batch_size=batch_size)
    return float(np.mean(pred == np.asarray(y)))


def _success_stack(results: Any, n: int) -> np.ndarray:
    if isinstance(results, _attacks.AttackResult):
        results = [results]
    if isinstance(results, (list, tuple)) and results and all(isinstance(r, _attacks.AttackResult) for r in results):
        succ = [np.asarray(r.success, dtype=bool) for r in results]
    else:
        raise ValueError("results: expected an AttackResult or a non-empty sequence of AttackResults")
    shape = succ[0].shape
    if shape[-1] != n or any(s.shape != shape for s in succ):
        raise ValueError(f"results: success arrays must all be shaped like [..., {n}], got "
                         f"{[s.shape for s in succ]}")
    return np.stack(succ)


def robust_accuracy(
    logits_fn: Callable,
    x: Any,
    y: Any,
    results: Any,
    *,
    batch_size: int | None = None,
) -> RobustAccuracy:
    """Robust accuracy with clean errors as failures and the per-point worst case over attacks.

    A point counts as robust when it is correctly classified *and* no attack
    in ``results`` succeeded on it (each attack already takes the worst case
    over its restarts). With attacks run on a vector of ``K`` budgets
    (``success [K, n]``) the result holds one accuracy per budget.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` clean inputs.
      y: ``[n]`` true labels.
      results: an :class:`~jaxbound.attacks.AttackResult` or a sequence of
        them, run on the same ``x`` (untargeted, with the true labels).
      batch_size: batch size of the clean forward pass.

    Returns:
      :class:`RobustAccuracy`; ``robust_accuracy <= clean_accuracy`` always.
    """
    _checks.check_logits_fn(logits_fn)
    x, y, _ = _labels_for(logits_fn, x, y)
    _checks.check_nonempty(x, "x")
    n = x.shape[0]
    succ = _success_stack(results, n)
    correct = _predict(logits_fn, x, batch_size=batch_size) == np.asarray(y)
    robust = correct & ~succ.any(axis=0)
    clean = float(correct.mean())
    rob = robust.mean(axis=-1)
    rob = float(rob) if rob.ndim == 0 else rob.astype(float).tolist()
    return RobustAccuracy(clean, rob, int(n), correct, robust)


def robustness_wrt_predictions(results: Any) -> Any:
    """Fraction of points whose prediction no attack changed (Ding et al. 2019, §3.2).

    Args:
      results: :class:`~jaxbound.attacks.AttackResult` (or a sequence) of
        untargeted attacks run with ``y=None`` (against the model's own clean
        predictions).

    Returns:
      A float (a list for attacks with a vector of eps).

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    if isinstance(results, _attacks.AttackResult):
        results = [results]
    ok = isinstance(results, (list, tuple)) and results and isinstance(results[0], _attacks.AttackResult)
    n = np.asarray(results[0].success).shape[-1] if ok else -1
    succ = _success_stack(results, n)
    if n == 0:
        raise ValueError("results: hold no examples (success arrays of length 0)")
    v = 1.0 - succ.any(axis=0).mean(axis=-1)
    return float(v) if v.ndim == 0 else v.astype(float).tolist()


class RobustnessReport(NamedTuple):
    """Ding et al.'s evaluation of one model (with its settings, for the record).

    Attributes:
      n: number of examples.
      norm: attack norm.
      eps: budget (or list of budgets).
      steps, step_size, restarts, random_start, bounds, loss: PGD settings.
      clean_accuracy: accuracy on clean inputs.
      robust_accuracy: accuracy under PGD against the labels (clean errors are failures).
      robustness_wrt_predictions: fraction of points whose prediction PGD
        against the prediction could not change (``None`` when not run).
    """

    n: int
    norm: str
    eps: Any
    steps: int
    step_size: Any
    restarts: int
    random_start: bool
    bounds: Any
    loss: str
    clean_accuracy: float
    robust_accuracy: Any
    robustness_wrt_predictions: Any

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return _asdict(self)


def evaluate_robustness(
    logits_fn: Callable,
    x: Any,
    y: Any,
    attack: AttackConfig | None = None,
    *,
    key: Any,
    wrt_predictions: bool = True,
    batch_size: int | None = None,
    progress: bool = False,
    **settings: Any,
) -> RobustnessReport:
    """Clean accuracy, robust accuracy and robustness w.r.t. predictions under PGD.

    Ding et al. (2019, §3.2) on MNIST: ``AttackConfig(norm="linf", eps=0.3,
    steps=40, step_size=0.01)``, with (``bounds=(0, 1)``) and without
    (``bounds=None``, Table 7) the box. Both attacks use the same key.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` clean inputs.
      y: ``[n]`` true labels.
      attack: the PGD threat model and settings (``norm`` and ``eps``
        required, here or in ``settings``); a 1-D ``eps`` gives lists of
        accuracies.
      key: ``jax.random`` key.
      wrt_predictions: also attack the model's own predictions.
      batch_size, progress: as in :func:`jaxbound.attacks.pgd`.
      **settings: :class:`~jaxbound.attacks.AttackConfig` fields overriding
        ``attack``.

    Returns:
      :class:`RobustnessReport`.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    cfg = _attacks.attack_config(attack, **settings)
    kw = dict(key=key, batch_size=batch_size, progress=progress)
    res = _attacks.pgd(logits_fn, x, y, cfg, **kw)
    ra = robust_accuracy(logits_fn, x, y, res, batch_size=batch_size)
    wrt = None
    if wrt_predictions:
        wrt = robustness_wrt_predictions(_attacks.pgd(logits_fn, x, None, cfg, **kw))
    vector = isinstance(cfg.eps, tuple)
    as_out = (lambda a: a.astype(float).tolist()) if vector else (lambda a: float(a[0]))
    return RobustnessReport(
        n=ra.n, norm=cfg.norm, eps=as_out(cfg.eps_array), steps=cfg.steps, step_size=as_out(cfg.step_array),
        restarts=cfg.restarts, random_start=cfg.random_start, bounds=None if cfg.bounds is None else list(cfg.bounds),
        loss=cfg.loss, clean_accuracy=ra.clean_accuracy, robust_accuracy=ra.robust_accuracy,
        robustness_wrt_predictions=wrt,
    )


# ---------------------------------------------------------------------------
# Error curves and median distance
# ---------------------------------------------------------------------------


class ErrorCurve(NamedTuple):
    """Robust error as a function of the budget.

    Attributes:
      eps: ``[K]`` budgets.
      robust_error: ``[K]`` fraction misclassified or broken within ``eps``.
      clean_error: fraction misclassified without attack.
      n: number of examples.
    """

    eps: np.ndarray
    robust_error: np.ndarray
    clean_error: float
    n: int

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return _asdict(self)


def robust_error_curve(
    logits_fn: Callable,
    x: Any,
    y: Any,
    attack: AttackConfig | None = None,
    *,
    key: Any,
    batch_size: int | None = None,
    progress: bool = False,
    **settings: Any,
) -> ErrorCurve:
    """Robust error ``1 - robust accuracy`` at each budget of ``eps [K]`` (PGD vmapped over eps).

    A scalar ``eps`` counts as one budget. ``step_size=None`` scales the
    step with each budget (``2.5 eps / steps``). ``attack`` and ``settings``
    as in :func:`evaluate_robustness`; the other arguments as in
    :func:`jaxbound.attacks.pgd`.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540
      (Figs. 2-3).
    """
    cfg = _attacks.attack_config(attack, **settings)
    eps_k = cfg.eps_array
    if not isinstance(cfg.eps, tuple):
        cfg = cfg.replace(eps=tuple(float(e) for e in eps_k))
    res = _attacks.pgd(logits_fn, x, y, cfg, key=key, batch_size=batch_size, progress=progress)
    ra = robust_accuracy(logits_fn, x, y, res, batch_size=batch_size)
    rob = np.asarray(ra.robust_accuracy, dtype=float)
    return ErrorCurve(eps_k.astype(float), 1.0 - rob, 1.0 - ra.clean_accuracy, ra.n)


def _check_distances(distances: Any, name: str = "distances") -> np.ndarray:
    try:
        d = np.asarray(distances, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D array of real distances, got {type(distances).__name__}") from None
    if d.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError(f"{name}: contains NaN")
    if (d < 0).any():
        raise ValueError(f"{name}: must be >= 0 (use inf for failed attacks)")
    return d


def error_curve(distances: Any, eps: Any) -> ErrorCurve:
    """Error curve from minimal adversarial distances: the fraction with ``distance <= eps``.

    Args:
      distances: ``[n]`` per-example adversarial distances (0 for misclassified
        inputs, ``inf`` where the attack failed), e.g.
        :attr:`jaxbound.attacks.MinimalDistance.distance`.
      eps: budget or 1-D array of budgets.

    Returns:
      :class:`ErrorCurve` (``clean_error`` is the fraction at distance 0).

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540 (Figs. 2-3).
    """
    d = _check_distances(distances)
    _checks.check_nonempty(d, "distances", what="distances")
    eps_k, _ = _checks.check_eps(eps)
    e = eps_k.astype(np.float64)
    err = (d[None, :] <= e[:, None]).mean(axis=1)
    return ErrorCurve(e, err, float((d == 0).mean()), int(d.size))


def median_adversarial_distance(distances: Any) -> float:
    """The distance at which the error curve reaches 50% (Finlay et al. 2019, §5).

    With misclassified inputs at distance 0 and failed attacks at ``inf``,
    this is the smallest ``d`` with ``#{i : d_i <= d} >= n / 2`` -- the
    ``ceil(n/2)``-th smallest distance (the lower median); ``inf`` when more
    than half the attacks failed.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540 (§5, Tables 2-3).
    """
    d = _check_distances(distances)
    _checks.check_nonempty(d, "distances", what="distances")
    return float(np.sort(d)[math.ceil(d.size / 2) - 1])


# ---------------------------------------------------------------------------
# Gradient norms
# ---------------------------------------------------------------------------


class GradientNorms(NamedTuple):
    """Per-example input-gradient norms in the dual of the attack norm.

    Attributes:
      loss: ``[n]`` ``||grad_x l(x)||_*`` of the cross-entropy at the labels.
      model: ``[n]`` ``||grad f(x)||_{*,inf} = max_k ||grad_x f_k(x)||_*`` with
        ``f`` the softmax probabilities (or the logits).
      loss_value: ``[n]`` the cross-entropy ``l(x)``.
      norm: the attack norm; the gradients are measured in its dual.
      dual: the dual norm.
      output: ``"probs"`` or ``"logits"`` (what ``f`` is).
    """

    loss: np.ndarray
    model: np.ndarray
    loss_value: np.ndarray
    norm: str
    dual: str
    output: str

    @property
    def loss_total_variation(self) -> float:
        """Mean loss-gradient norm: the total variation term of eq. 2.8."""
        return float(np.mean(self.loss)) if self.loss.size else float("nan")

    @property
    def loss_lipschitz(self) -> float:
        """Max loss-gradient norm: the Lipschitz estimate of eq. 2.3 on these points."""
        return float(np.max(self.loss)) if self.loss.size else float("nan")

    @property
    def model_total_variation(self) -> float:
        """Mean model-Jacobian norm."""
        return float(np.mean(self.model)) if self.model.size else float("nan")

    @property
    def model_lipschitz(self) -> float:
        """Max model-Jacobian norm (a lower estimate of the model's Lipschitz constant)."""
        return float(np.max(self.model)) if self.model.size else float("nan")

    def to_dict(self, *, per_example: bool = False) -> dict:
        """Summary (mean = total variation, max = Lipschitz estimate)."""
        d = {"n": int(self.loss.size), "norm": self.norm, "dual": self.dual, "output": self.output,
             "loss_mean": self.loss_total_variation, "loss_max": self.loss_lipschitz,
             "model_mean": self.model_total_variation, "model_max": self.model_lipschitz}
        if per_example:
            d.update(loss=to_jsonable(self.loss), model=to_jsonable(self.model),
                     loss_value=to_jsonable(self.loss_value))
        return d


def _gradnorm_core(x, y, *, logits_fn, dual, output):
    def ce(z):
        logits = logits_fn(z)
        v = _attacks.cross_entropy(logits, y)
        return jnp.sum(v), v

    g, lv = jax.grad(ce, has_aux=True)(x)
    model = _attacks.jacobian_norm(logits_fn, x, norm=dual, output=output)
    finite = jnp.all(jnp.isfinite(logits_fn(x)), axis=-1)
    return lp.per_example_norm(g, dual), model, lv, finite


def gradient_norms(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    norm: Any,
    output: str = "probs",
    batch_size: int | None = None,
    name: str = "x",
) -> GradientNorms:
    """Loss and model input-gradient norms in the dual of ``norm`` (Finlay et al. 2019, §6).

    ``loss``: ``||grad_x l(x)||_*`` with ``l`` the cross-entropy at ``y``
    (eq. 3.6: the first-order gain of an attack of size eps is eps times
    this). ``model``: ``||grad f(x)||_{*,inf} = max_k ||grad_x f_k(x)||_*``,
    the norm of the Jacobian from the attack norm to l-inf (eq. 7.1 with
    ``norm="l2"``). Means are total variations, maxima Lipschitz estimates
    (eq. 2.3 evaluated on the given points, a lower estimate).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs.
      y: ``[n]`` labels; ``None`` uses the predictions (the loss at the predicted
        class, available at inference time).
      norm: attack norm ``"linf" | "l2" | "l1"`` (required); gradients use its dual.
      output: ``"probs"`` (softmax, default) or ``"logits"`` for the model Jacobian.
      batch_size: examples per batch group.
      name: the argument named in errors about ``x`` (callers that pass
        their own inputs, e.g. :func:`detect_adversarial`'s ``x_adv``).

    Returns:
      :class:`GradientNorms`.

    Raises:
      ValueError: ``x`` empty or not finite; ``logits_fn`` returns NaN or
        infinite logits.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    _checks.check_logits_fn(logits_fn)
    norm = _checks.check_attack_norm(norm)
    dual = lp.dual_norm(norm)
    output = _checks.check_choice(output, "output", ("probs", "logits"))
    x = _checks.check_model_inputs(x, None, name)
    _checks.check_nonempty(x, name)
    k = _checks.num_classes_of(logits_fn, x)
    if y is None:
        y = _predict(logits_fn, x, batch_size=batch_size, name=name)
    else:
        y = _checks.check_model_labels(y, x.shape[0], k)
    ln, mn, lv, finite = _engine.run(_gradnorm_core, dict(logits_fn=logits_fn, dual=dual, output=output), (x, y),
                                     (), block_size=batch_size, desc="gradient norms")
    _checks.check_finite_logits(np.asarray(finite), "logits_fn", inputs=name)
    return GradientNorms(np.asarray(ln), np.asarray(mn), np.asarray(lv), norm, dual, output)


def predicted_minimal_distance(
    logits_fn: Callable,
    x: Any,
    y: Any,
    *,
    norm: Any,
    l0: float | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Finlay et al.'s first-order estimate of the minimal adversarial distance (eq. 3.7).

    ``eps(x) = (l0 - l(x)) / ||grad_x l(x)||_*`` for correctly classified
    points with ``l(x) <= l0`` and ``0`` otherwise (misclassified points, or
    a chosen ``l0`` below the point's loss); ``inf`` where the gradient
    vanishes. ``l`` is the cross-entropy and ``l0`` the smallest loss at
    which the point is misclassified, bounded above by ``log(num_classes)``
    (eq. 3.8, the default); for cross-entropy ``l0 >= log 2``.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs.
      y: ``[n]`` labels.
      norm: attack norm (required); the gradient is measured in its dual.
      l0: loss threshold (> 0); default ``log(num_classes)``.
      batch_size: examples per batch group.

    Returns:
      ``[n]`` predicted distances.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    _checks.check_logits_fn(logits_fn)
    x, y, k = _labels_for(logits_fn, x, y)
    l0 = math.log(k) if l0 is None else _checks.check_scalar(l0, "l0", low=0.0, low_inclusive=False)
    gn = gradient_norms(logits_fn, x, y, norm=norm, batch_size=batch_size)
    correct = _predict(logits_fn, x, batch_size=batch_size) == np.asarray(y)
    gap = l0 - gn.loss_value.astype(np.float64)
    g = gn.loss.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(g > 0, gap / np.where(g > 0, g, 1.0), np.inf)
    return np.where(correct & (gap > 0), est, 0.0)


# ---------------------------------------------------------------------------
# Dataset Lipschitz constant
# ---------------------------------------------------------------------------


class DatasetLipschitz(NamedTuple):
    """Lipschitz constant of a labelled data set (Finlay et al. 2019, Table 4).

    Attributes:
      lipschitz: ``1 / min_distance`` (``inf`` for identical points of different classes).
      min_distance: smallest distance between points of different classes.
      index: a point of the closest pair.
      other_index: its nearest point of another class.
      norm: the distance norm.
      n: number of points.
    """

    lipschitz: float
    min_distance: float
    index: int
    other_index: int
    norm: str
    n: int

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return _asdict(self)


def dataset_lipschitz(
    x: Any,
    labels: Any,
    *,
    norm: Any,
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> DatasetLipschitz:
    """``1 / min_{y_i != y_j} ||x_i - x_j||`` via :func:`jaxbound.geometry.nearest_other_class`.

    Finlay et al. report 0.417 for the MNIST training set in l2 (Table 4).

    Args:
      x: ``[n, ...]`` points (flattened to ``[n, d]``).
      labels: ``[n]`` integer labels (at least two classes).
      norm: distance norm (required; ``"l2"`` in the paper).
      block_size, precision, progress: passed to the geometry kernel.

    Returns:
      :class:`DatasetLipschitz`.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    from jaxbound import geometry

    arr = _checks.as_batch(x, "x")
    _checks.check_nonempty(arr, "x")
    flat = arr.reshape(arr.shape[0], -1)
    norm_c = lp.canonical_norm(norm)
    res = geometry.nearest_other_class(flat, labels, norm=norm_c, block_size=block_size, precision=precision,
                                       progress=progress)
    i = int(np.argmin(res.distances))
    dmin = float(res.distances[i])
    lip = math.inf if dmin == 0 else 1.0 / dmin
    return DatasetLipschitz(lip, dmin, i, int(res.indices[i]), str(norm_c), int(flat.shape[0]))


# ---------------------------------------------------------------------------
# Gradient-norm detection
# ---------------------------------------------------------------------------


class Detection(NamedTuple):
    """Gradient-norm detection of adversarial inputs (Finlay et al. 2019, §7).

    Attributes:
      threshold: inputs with score ``> threshold`` are rejected.
      fpr: the requested false-positive rate.
      false_positive_rate: fraction of clean inputs rejected (``<= fpr``).
      detection_rate: fraction of adversarial inputs rejected.
      n_clean: number of clean scores.
      n_adv: number of adversarial scores.
      detected: ``[n_adv]`` bool, which adversarial inputs were rejected.
    """

    threshold: float
    fpr: float
    false_positive_rate: float
    detection_rate: float
    n_clean: int
    n_adv: int
    detected: np.ndarray

    def to_dict(self, *, per_example: bool = False) -> dict:
        """JSON-ready record."""
        d = _asdict(self)
        if not per_example:
            d.pop("detected")
        return d


def _check_scores(s: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(s, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D array of real scores, got {type(s).__name__}") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name}: contains NaN")
    return a


def detection_threshold(clean_scores: Any, *, fpr: float = 0.05) -> float:
    """Smallest threshold ``c`` with ``#{clean > c} <= fpr * n``.

    ``c`` is the ``ceil((1 - fpr) n)``-th smallest clean score, so rejecting
    ``score > c`` keeps the false-positive rate on these clean scores at or
    below ``fpr`` (ties never push it above).
    """
    s = _check_scores(clean_scores, "clean_scores")
    _checks.check_nonempty(s, "clean_scores", what="scores")
    fpr = _checks.check_probability(fpr, "fpr", open_low=False, open_high=True)
    k = max(1, math.ceil((1.0 - fpr) * s.size - 1e-9))
    return float(np.sort(s)[k - 1])


def gradient_norm_detection(clean_scores: Any, adv_scores: Any, *, fpr: float = 0.05) -> Detection:
    """Detect adversarial inputs by a gradient-norm threshold set at a false-positive rate.

    Finlay et al. (eq. 7.1) reject ``x`` when ``||grad f(x)||_{2,inf}`` is
    large, with the threshold chosen so that 5% of clean test images are
    rejected (Table 6).

    Args:
      clean_scores: ``[m]`` scores of clean inputs (calibration).
      adv_scores: ``[k]`` scores of adversarial inputs.
      fpr: false-positive rate in ``[0, 1)``.

    Returns:
      :class:`Detection`.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    c = _check_scores(clean_scores, "clean_scores")
    a = _check_scores(adv_scores, "adv_scores")
    _checks.check_nonempty(a, "adv_scores", what="scores")
    thr = detection_threshold(c, fpr=fpr)
    det = a > thr
    return Detection(thr, float(fpr), float(np.mean(c > thr)), float(det.mean()), int(c.size), int(a.size), det)


def detect_adversarial(
    logits_fn: Callable,
    x_clean: Any,
    x_adv: Any,
    *,
    norm: Any,
    fpr: float = 0.05,
    statistic: str = "model",
    output: str = "probs",
    batch_size: int | None = None,
) -> Detection:
    """:func:`gradient_norm_detection` with scores from :func:`gradient_norms`.

    ``statistic="model"`` uses ``||grad f(x)||_{*,inf}`` (eq. 7.1);
    ``"loss"`` the loss gradient at the predicted class; ``norm`` is the
    attack norm (gradients in its dual).

    Raises:
      ValueError: ``x_clean`` or ``x_adv`` empty, not finite or shaped
        differently (the error names the input); ``logits_fn`` failing or
        returning non-finite logits.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    statistic = _checks.check_choice(statistic, "statistic", ("model", "loss"))
    xc = _checks.check_model_inputs(x_clean, None, "x_clean")
    xa = _checks.check_model_inputs(x_adv, None, "x_adv")
    if xa.shape[1:] != xc.shape[1:]:
        raise ValueError(f"x_adv: examples shaped {tuple(xa.shape[1:])} do not match x_clean's "
                         f"{tuple(xc.shape[1:])}")
    sc = gradient_norms(logits_fn, x_clean, None, norm=norm, output=output, batch_size=batch_size, name="x_clean")
    sa = gradient_norms(logits_fn, x_adv, None, norm=norm, output=output, batch_size=batch_size, name="x_adv")
    return gradient_norm_detection(getattr(sc, statistic), getattr(sa, statistic), fpr=fpr)
