"""The robustness report: limits from the data beside what trained models reach.

:func:`report` answers, for one dataset, one norm and a grid of budgets
``eps``, the question "how robust could any classifier be on these data, and
how far are real models from it?". For each ``eps`` it gathers

* the headline limit, the **optimal adversarial 0-1 loss over all classes**
  of Dai et al. (2023): ``L*(3)`` (``L*(2)`` for l1) of the empirical
  distribution of the first ``multiclass_per_class`` training points of each
  class, a certified lower bound on the robust error of *every* classifier of
  that sample (:func:`multiclass_bound`, with ``L*(2)`` beside it);
* the **concentration estimate** of Mahloujifar et al. (2019): an error region
  ``E`` of measure ``mu(E) >= alpha`` with the smallest adversarial risk
  ``mu(E_eps)`` found by Algorithm 1 (l_inf, unions of boxes), Algorithm 2
  (l2, unions of balls) or the half-space baseline (other norms), measured on
  held-out data with a Clopper-Pearson interval. ``adv_risk`` estimates the
  concentration function ``h(mu, alpha, eps)``, the smallest robust error of
  any classifier whose error is at least ``alpha``; ``1 - adv_risk`` estimates
  the intrinsic robustness. (The search approximates the infimum from above,
  so ``adv_risk`` is an estimate, not a certified lower bound.)
* the **optimal adversarial 0-1 and cross-entropy losses** of Bhagoji et al.
  (2021) on the empirical distribution of a class pair (the first
  ``n_per_class`` training points of each class, in file order): certified
  lower bounds for *every* two-class classifier of that sample
  (:func:`jaxbound.bounds.pair_bounds`). By default the hardest pair (largest
  0-1 bound at the largest ``eps``) is reported; all 45 pairs with
  ``pairs="all"``.
* the **dataset Lipschitz constant** (Finlay et al. 2019, Table 4:
  ``1 / min ||x_i - x_j||`` over pairs of different classes) and the
  **inter-class distance** (Ding et al. 2019, App. D.2.1) of the training set.
* the **clean and robust accuracy** (PGD, clean errors count as failures) of
  models trained on the spot with :func:`jaxbound.training.train` (recipes
  ``"standard"`` and ``"pgd"`` by default) or of a user's model given as a
  logits function, each with a Clopper-Pearson interval.

The report checks itself. On the training sample of a class pair, the
optimal adversarial 0-1 loss is a lower bound for every classifier of the two
classes, so a model whose *attacked* robust error on that sample (its
prediction restricted to the two classes, ``argmax`` over their two logits) is
below the bound has been attacked too weakly: an exact attack could not find
fewer errors. Such rows are flagged ``weak_attack`` (never printed silently).
The bound allows any perturbation in the ``eps`` ball; PGD also keeps images in
``[0, 1]``, which does not weaken the comparison because two points conflict
exactly when the midpoint between them, itself inside ``[0, 1]``, is within
``eps`` of both.

Settings live in one frozen :class:`ReportConfig` (every default once; the
command line builds its options from its fields). Every stage is cached by a
:class:`StageCache` under ``out_dir/stages/`` (an interrupted report resumes)
and reports its own progress: a log line when it starts and ends, and the
progress bars of the library functions it runs (distances, pairs, OptProb,
training, attacks), whose counts and ETA come from work done inside the stage.

Output (``out_dir``): ``report.json`` (every number, the settings and the
definitions), ``report.md`` (tables and definitions), ``robust_error.png``
(robust error versus ``eps``: the limits beside the achieved errors, with
intervals) and ``pair_bounds.png`` (the 0-1 bound of every class pair that was
computed, at the largest ``eps``).

References:
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural networks
  generalize and are adversarially robust." arXiv:1808.09540.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083 (PGD).
  Clopper, Pearson. "The use of confidence or fiducial limits illustrated in
  the case of the binomial." Biometrika 26(4), 1934.
  Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
  optimal 0-1 loss for multi-class classification with a test-time
  attacker." NeurIPS 2023, arXiv:2302.10722.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxbound import _checks, _engine
from jaxbound._io import atomic_write_bytes, atomic_write_json, fingerprint, to_jsonable

__all__ = [
    "DEFAULT_EPS",
    "DEFINITIONS",
    "ReportConfig",
    "report_config",
    "StageCache",
    "Report",
    "report",
    "parse_eps",
    "default_eps",
    "load_callable",
    "load_model",
    "restrict_to_pair",
    "weak_attack_check",
    "geometry_summary",
    "render_markdown",
    "plot_report",
]

#: Default budget grids per norm for data in ``[0, 1]``. On the digits (8x8,
#: 16 grey levels) the smallest distance between two training images of
#: different classes is 0.4375 (l_inf) and 1.22 (l2), so the 0-1 bounds start
#: above zero inside these grids.
DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3, 0.4), "l2": (0.5, 1.0, 1.5, 2.0), "l1": (2.0, 4.0, 6.0, 8.0)}

_SCHEMA_VERSION = 1
_RECIPES = ("standard", "pgd", "trades", "fgsm_rs", "ibp", "crown_ibp")
_CERTIFY = ("ibp+crown", "crown", "ibp", "alpha-crown", "none")

DEFINITIONS = {
    "robust_error": "fraction of test points misclassified or moved to a wrong class by the attack within eps "
                    "(1 - robust accuracy; clean errors count as failures)",
    "certified_error": "fraction of the same test points not certified by bound propagation (by default the "
                       "tighter of the IBP and CROWN bounds of each margin; "
                       "jaxbound.certify.certified_accuracy): an upper bound on the model's true robust error, "
                       "while robust_error is a lower bound on it (not available for l1)",
    "concentration_adv_risk": "Mahloujifar et al. 2019: adversarial risk mu(E_eps) of the error region E with "
                              "mu(E) >= alpha found by the search, measured on held-out data; estimates the "
                              "concentration function h(mu, alpha, eps), the lowest robust error of any classifier "
                              "whose error is >= alpha (an estimate from above of an infimum, not a certified bound)",
    "intrinsic_robustness": "1 - concentration_adv_risk: estimated highest robust accuracy of any classifier "
                            "with error >= alpha",
    "multiclass_zero_one_bound": "Dai et al. 2023: optimal adversarial 0-1 loss L*(k) over all classifiers of the "
                                 "empirical multi-class distribution of the training sample (the first N points "
                                 "of each class, uniform weights): 1 - max sum_v p_v q_v subject to "
                                 "sum_{v in e} q_v <= 1 for every conflict (hyper)edge e of degree <= k (pairs "
                                 "of different labels with ||x-x'|| <= 2 eps; for k = 3 also triples of labels "
                                 "whose three eps-balls share a point) and 0 <= q <= 1; a certified lower bound "
                                 "on the robust error of every classifier on that sample (k = 2 exact by "
                                 "max-flow, k = 3 by HiGHS)",
    "zero_one_bound": "Bhagoji et al. 2021: optimal adversarial 0-1 loss over all classifiers of the empirical "
                      "two-class distribution (minimum vertex cover of the conflict graph, edges ||x-x'|| <= 2 eps); "
                      "a certified lower bound on the robust error on that training sample",
    "cross_entropy_bound": "Bhagoji et al. 2021: optimal adversarial cross-entropy (nats) over all soft classifiers "
                           "of the same sample (OptProb)",
    "lipschitz": "Finlay et al. 2019: 1 / min ||x_i - x_j|| over training pairs of different classes",
    "inter_class_distance": "Ding et al. 2019, App. D.2.1: inter-class distance of the training set",
    "weak_attack": "a model's attacked robust error on a pair's training sample (prediction restricted to the "
                   "two classes) below the optimal 0-1 loss of that sample: impossible for an exact attack",
    "intervals": "95% Clopper-Pearson intervals (concentration: the envelope over repeats)",
    "concentration_valid": "the reported error region keeps risk >= alpha on the split where it is reported (in "
                           "every repeat); otherwise concentration_adv_risk is null (never reported)",
}


# ---------------------------------------------------------------------------
# Small helpers (also used by the command line)
# ---------------------------------------------------------------------------


def parse_eps(text: Any, name: str = "eps") -> tuple[float, ...]:
    """A budget grid from ``"0.1,0.2"`` (or a sequence of numbers).

    Returns:
      Strictly increasing, finite, non-negative budgets.

    Raises:
      ValueError: empty list, a value that is not a number, negative, not
        finite, or repeated.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
        vals = []
        for p in parts:
            try:
                vals.append(float(p))
            except ValueError:
                raise ValueError(f"{name}: {p!r} is not a number (give a comma-separated list like 0.1,0.2)") from None
    elif isinstance(text, (int, float, np.integer, np.floating)):
        vals = [float(text)]
    else:
        try:
            vals = [float(v) for v in text]
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name}: give at least one budget")
    for v in vals:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: budgets must be finite and >= 0, got {v}")
    vals = sorted(vals)
    if len(set(vals)) != len(vals):
        raise ValueError(f"{name}: repeated budget in {vals}")
    return tuple(vals)


def default_eps(norm: Any) -> tuple[float, ...]:
    """The default grid for ``norm`` (:data:`DEFAULT_EPS`; ``l2``'s for other ``p``)."""
    n = _checks.canonical_norm(norm)
    return DEFAULT_EPS.get(n if isinstance(n, str) else "l2", DEFAULT_EPS["l2"])


def load_callable(path: str, name: str = "model") -> Callable:
    """Import ``"package.module:attribute"`` (or ``"package.module.attribute"``).

    When the attribute is a function with no required parameter it is called
    once and must return the logits function (a factory); otherwise it is the
    logits function itself, ``x [n, H, W, C] in [0, 1] -> logits [n, K]``.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{name}: expected 'module:function', got {path!r}")
    mod_name, sep, attr = path.partition(":")
    if not sep:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"{name}: expected 'module:function', got {path!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"{name}: cannot import module {mod_name!r} ({exc})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{name}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{name}: {path!r} is not callable")
    try:
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = [None]
    if not params and not inspect.isclass(obj):
        obj = obj()
        if not callable(obj):
            raise ValueError(f"{name}: the factory {path!r} did not return a callable")
    return obj


def load_model(path: str | Path, name: str = "model") -> Callable:
    """A logits function from a folder written by :func:`jaxbound.models.save` (``jaxbound train --out``)
    or from an import path ``"module:function"`` (:func:`load_callable`)."""
    from jaxbound import models

    p = Path(str(path)).expanduser()
    if p.is_dir():
        return models.load(p, name=name).logits_fn()
    return load_callable(str(path), name)


def restrict_to_pair(logits_fn: Callable, a: int, b: int, *, num_classes: int | None = None) -> Callable:
    """``x -> logits[:, [a, b]]``: the model's prediction restricted to two classes (label 0 = ``a``).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, K]``.
      a, b: two distinct class indices ``>= 0``.
      num_classes: ``K`` when known (then ``a, b < K`` is checked now; else
        when the returned function first sees the logits).

    Raises:
      ValueError: ``a``/``b`` negative, equal or out of range; ``logits_fn``
        not callable (``TypeError``).
    """
    if not callable(logits_fn):
        raise TypeError(f"logits_fn: expected a callable, got {type(logits_fn).__name__}")
    if num_classes is not None:
        num_classes = _checks.check_int(num_classes, "num_classes", low=2)
    a = _checks.check_int(a, "a", low=0, high=None if num_classes is None else num_classes - 1)
    b = _checks.check_int(b, "b", low=0, high=None if num_classes is None else num_classes - 1)
    if a == b:
        raise ValueError(f"b: the two classes must differ, got a = b = {a}")
    idx = np.array([a, b], dtype=np.int32)

    def fn(x):
        logits = logits_fn(x)
        k = logits.shape[-1]
        if max(a, b) >= k:
            raise ValueError(f"{'a' if a >= k else 'b'}: class {max(a, b)} is out of range for a model with "
                             f"{k} classes")
        return logits[:, idx]

    return fn


def weak_attack_check(attacked_error: float, zero_one_bound: float, *, n: int) -> bool:
    """Whether an attacked robust error is impossibly low for an exact attack.

    Args:
      attacked_error: fraction of the pair's training sample misclassified
        under attack (prediction restricted to the two classes).
      zero_one_bound: optimal adversarial 0-1 loss of the same sample.
      n: sample size (errors are multiples of ``1 / n``; half a point of
        slack absorbs float rounding).

    Returns:
      ``True`` when ``attacked_error < zero_one_bound`` (a "weak attack").
    """
    n = _checks.check_int(n, "n", low=1)
    a = _checks.check_scalar(attacked_error, "attacked_error", low=0.0, high=1.0)
    z = _checks.check_scalar(zero_one_bound, "zero_one_bound", low=0.0, high=1.0)
    return bool(a < z - 0.5 / n)


def _clopper(k: int, n: int) -> tuple[float, float]:
    from jaxbound.concentration import clopper_pearson

    if n == 0:
        return (0.0, 1.0)
    return tuple(float(v) for v in clopper_pearson(int(k), int(n)))


def geometry_summary(x: Any, labels: Any, *, norm: Any, progress: bool = False) -> dict:
    """The data-geometry stage: dataset Lipschitz constant and inter-class distance of ``x [n, d]``.

    Args:
      x: ``[n, d]`` points.
      labels: ``[n]`` integer labels.
      norm: the distance (``l2`` is Finlay et al.'s); no default.
      progress: progress bars of both distance passes.

    Returns:
      ``{"lipschitz": ..., "separation_eps": min_distance / 2,
      "inter_class_distance": {"available", "value", "per_class", "norm"}}``.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540
      (Table 4).
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336
      (App. D.2.1).
    """
    from jaxbound import metrics, shift

    norm = _checks.canonical_norm(norm)
    lip = metrics.dataset_lipschitz(x, labels, norm=norm, progress=progress)
    icd = shift.inter_class_distance(x, labels, norm=norm, progress=progress)
    return {"lipschitz": lip.to_dict(), "separation_eps": lip.min_distance / 2.0,
            "inter_class_distance": {"available": True, "value": float(icd.value),
                                     "per_class": np.asarray(icd.per_class, dtype=float).tolist(),
                                     "norm": str(norm)}}


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its default and the command-line help (``metadata["help"]``)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _none_if_zero(v):
    return None if v is not None and not isinstance(v, bool) and v == 0 else v


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Every setting of :func:`report`, each default in one place.

    Frozen and hashable; checked in ``__post_init__`` (errors name the field).
    Sequences are stored as tuples; ``eval_limit=0`` and
    ``check_per_class=0`` mean ``None`` (all points). The command line builds
    ``jaxbound report``'s options from these fields (``metadata["help"]``;
    ``metadata["flag"]`` is a second, older spelling of the option).

    The evaluation attack is :meth:`attack` (an
    :class:`jaxbound.attacks.AttackConfig` at the report's norm and budgets);
    the training settings of the models trained on the spot are
    :meth:`train_config` (a :class:`jaxbound.training.TrainConfig`).
    """

    dataset: str = _f("digits", "'digits' (embedded), 'mnist', 'fashion_mnist' or 'tfds:<name>'")
    data_dir: str | None = _f(None, "folder with the IDX files or the tensorflow-datasets folder "
                                    "(default $JAXBOUND_DATA_DIR)")
    test_split: str = _f("test", "held-out split")
    limit: int | None = _f(None, "use only the first N training examples (a split stored class by class is first "
                                   "taken round-robin over classes)")
    test_limit: int | None = _f(None, "use only the first N held-out examples")
    norm: str = _f("linf", "threat model: linf, l2 or l1")
    eps: tuple[float, ...] | None = _f(None, "budgets, e.g. 0.1,0.2,0.3 (default linf 0.1,0.2,0.3,0.4; "
                                             "l2 0.5,1,1.5,2; l1 2,4,6,8; pixels are in [0, 1])")
    alpha: float = _f(0.01, "concentration: risk threshold alpha of the error region (the paper's 0.01)")
    n_regions: tuple[int, ...] = _f((5, 10), "concentration: candidate numbers T of boxes/balls, chosen on "
                                             "the select split", flag="--regions")
    n_repeats: int = _f(5, "concentration: repeats of the box search", flag="--repeats")
    protocol: str = _f("honest", "concentration: 'honest' (select on half of the held-out split, report on "
                                 "the other) or 'paper' (select and report on all of it)")
    select_size: int | None = _f(None, "concentration: held-out points used for selection (honest protocol; "
                                       "default half)")
    multiclass_per_class: int | None = _f(1000, "multi-class bound (the headline limit): first N training points "
                                                "of each class (0 or none: the whole training split)")
    multiclass_degree: int = _f(3, "multi-class bound: 2 (pair conflicts, exact max-flow) or 3 (also triples of "
                                   "classes, a sparse LP; l1 stays at 2)")
    pairs: str = _f("hardest", "optimal bounds for the 'hardest' class pair or for 'all' pairs")
    n_per_class: int | None = _f(1000, "optimal bounds: first N training points of each class of a pair")
    models: tuple[str, ...] = _f(("standard", "pgd"), "recipes to train on the spot, from standard, pgd, "
                                                      "trades, fgsm_rs, ibp, crown_ibp; 'none' for no training")
    model_name: str = _f("user", "name of --model in the tables")
    arch: str = _f("lenet5", "architecture of the trained models")
    widen_factor: float | str | None = _f("auto", "widen factor of the trained models ('auto': 0.5 for "
                                                  "architectures that have one; none: the architecture's "
                                                  "default)", flag="--widen")
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(64, "training batch size")
    learning_rate: float | None = _f(None, "training learning rate, Adam (default: TrainConfig's)", flag="--lr")
    train_eps: float | None = _f(None, "budget of adversarial training (default: the middle budget of eps)")
    train_attack_steps: int = _f(7, "PGD steps inside adversarial training")
    evaluation_attack: str = _f("autoattack", "attack of the evaluation and the self-check: 'autoattack' (the "
                                              "standard ensemble APGD-CE, APGD-T, FAB-T, Square; Croce & Hein "
                                              "2020) or 'pgd'", flag="--attack")
    autoattack_steps: int = _f(100, "AutoAttack: iterations of APGD and FAB (the original's 100)")
    n_queries: int = _f(5000, "AutoAttack: queries of the Square attack (the original's 5,000)")
    attack_steps: int = _f(20, "PGD steps of the evaluation and the self-check with --attack pgd (step "
                               "2.5 eps / steps, random start, images kept in [0, 1])")
    attack_restarts: int | None = _f(None, "PGD restarts of the evaluation and the self-check (default: "
                                           "AttackConfig's)", flag="--restarts")
    eval_limit: int | None = _f(1000, "evaluate models on the first N held-out examples (0 or none: all)")
    self_check: bool = _f(True, "run the weak-attack check against the optimal 0-1 loss")
    check_per_class: int | None = _f(200, "the self-check attacks the first N training points of each class "
                                          "of the pair (0 or none: the whole pair sample)")
    figures: bool = _f(True, "write the PNG figures")
    certify: str = _f("ibp+crown", "certified robust error of every model on the evaluation points: ibp+crown "
                                   "(the tighter of the two bounds per margin), crown, ibp, alpha-crown or none "
                                   "(linf and l2 only)")

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        norm = _checks.canonical_norm(self.norm)
        if norm not in ("l1", "l2", "linf"):
            raise ValueError(f"norm: the report supports 'l1', 'l2' and 'linf', got {self.norm!r}")
        put("norm", norm)
        if self.eps is not None:
            put("eps", parse_eps(self.eps))
        put("alpha", _checks.check_probability(self.alpha, "alpha"))
        nr = [self.n_regions] if isinstance(self.n_regions, (int, np.integer)) else list(self.n_regions)
        if not nr:
            raise ValueError("n_regions: give at least one T")
        put("n_regions", tuple(_checks.check_int(t, "n_regions", low=1) for t in nr))
        if self.multiclass_degree not in (2, 3) or isinstance(self.multiclass_degree, bool):
            raise ValueError(f"multiclass_degree: must be 2 or 3, got {self.multiclass_degree!r}")
        put("multiclass_degree", int(self.multiclass_degree))
        if self.protocol not in ("honest", "paper"):
            raise ValueError(f"protocol: must be 'honest' or 'paper', got {self.protocol!r}")
        if self.pairs not in ("hardest", "all"):
            raise ValueError(f"pairs: must be 'hardest' or 'all', got {self.pairs!r}")
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models or ())
        models = () if models in (("none",), ("",)) else models
        for r in models:
            if r not in _RECIPES:
                raise ValueError(f"models: unknown training recipe {r!r}; use one of {', '.join(_RECIPES)}")
        put("models", models)
        if self.certify not in _CERTIFY:
            raise ValueError(f"certify: must be one of {', '.join(_CERTIFY)}, got {self.certify!r}")
        if self.evaluation_attack not in ("autoattack", "pgd"):
            raise ValueError(f"evaluation_attack: must be 'autoattack' or 'pgd', got {self.evaluation_attack!r}")
        for k, low in (("n_repeats", 1), ("epochs", 1), ("batch_size", 1), ("attack_steps", 1),
                       ("train_attack_steps", 1), ("autoattack_steps", 1), ("n_queries", 1)):
            put(k, _checks.check_int(getattr(self, k), k, low=low))
        for k, low in (("limit", 2), ("test_limit", 2), ("select_size", 1), ("n_per_class", 1),
                       ("eval_limit", 1), ("check_per_class", 1), ("multiclass_per_class", 1)):
            v = (_none_if_zero(getattr(self, k)) if k in ("eval_limit", "check_per_class", "multiclass_per_class")
                 else getattr(self, k))
            put(k, None if v is None else _checks.check_int(v, k, low=low))
        if self.attack_restarts is not None:
            put("attack_restarts", _checks.check_int(self.attack_restarts, "attack_restarts", low=1))
        if self.learning_rate is not None:
            put("learning_rate", _checks.check_scalar(self.learning_rate, "learning_rate", low=0.0,
                                                      low_inclusive=False))
        if self.train_eps is not None:
            put("train_eps", _checks.check_scalar(self.train_eps, "train_eps", low=0.0))
        wf = self.widen_factor
        put("widen_factor", None if isinstance(wf, str) and wf.lower() == "none" else _none_if_zero(wf))
        from jaxbound import models as M

        if models and (not isinstance(self.arch, str) or self.arch.lower() not in M.available()):
            raise ValueError(f"arch: unknown architecture {self.arch!r}")
        M.resolve_widen(self.arch, self.widen_factor)
        put("self_check", bool(self.self_check))
        put("figures", bool(self.figures))

    @property
    def eps_grid(self) -> tuple[float, ...]:
        """The budgets: ``eps`` or the norm's default grid (:data:`DEFAULT_EPS`)."""
        return default_eps(self.norm) if self.eps is None else self.eps

    @property
    def widen(self) -> float | None:
        """The resolved widen factor of the trained models (``"auto"`` resolved for ``arch``)."""
        from jaxbound import models as M

        return M.resolve_widen(self.arch, self.widen_factor)

    @property
    def adversarial_eps(self) -> float:
        """The budget of adversarial training: ``train_eps`` or the middle budget of the grid."""
        g = self.eps_grid
        return g[(len(g) - 1) // 2] if self.train_eps is None else self.train_eps

    @property
    def evaluation_steps(self) -> int:
        """Iterations of the evaluation attack: ``autoattack_steps`` or ``attack_steps`` (PGD)."""
        return self.autoattack_steps if self.evaluation_attack == "autoattack" else self.attack_steps

    def attack(self) -> Any:
        """The PGD evaluation and self-check attack (``evaluation_attack="pgd"``) at the report's norm and budgets."""
        from jaxbound import attacks

        extra = {} if self.attack_restarts is None else {"restarts": self.attack_restarts}
        return attacks.AttackConfig(norm=self.norm, eps=self.eps_grid, steps=self.attack_steps, **extra)

    def train_config(self, recipe: str, *, n_train: int | None = None) -> Any:
        """The :class:`jaxbound.training.TrainConfig` of a model trained on the spot with ``recipe``.

        Adversarial recipes attack at :attr:`adversarial_eps` in the report's
        norm with ``train_attack_steps`` PGD steps; the per-epoch robust
        accuracy of the training history uses that same attack (the
        report's own evaluation, with ``attack_steps``, comes after
        training). ``n_train`` caps the batch size at the number of training
        examples.
        """
        from jaxbound import attacks, training

        attack = None if recipe == "standard" else attacks.AttackConfig(
            norm=self.norm, eps=self.adversarial_eps, steps=self.train_attack_steps)
        bs = self.batch_size if n_train is None else min(self.batch_size, n_train)
        extra = {} if self.learning_rate is None else {"learning_rate": self.learning_rate}
        if recipe in ("ibp", "crown_ibp") and n_train:
            # Gowal et al.'s shape, scaled to the run: clean warm-up on the first 10% of the steps, eps and
            # kappa ramps over the next 50%
            total = self.epochs * -(-n_train // bs)
            extra.update(warmup_steps=total // 10, ramp_steps=total // 2)
        return training.TrainConfig(recipe=recipe, epochs=self.epochs, batch_size=bs, **extra, attack=attack,
                                    eval_attack=attack)

    def replace(self, **changes: Any) -> "ReportConfig":
        """A checked copy with ``changes`` (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return to_jsonable(dataclasses.asdict(self))


def report_config(config: ReportConfig | None = None, /, **settings: Any) -> ReportConfig:
    """``config`` (default :class:`ReportConfig()`) with ``settings`` overridden.

    Raises:
      TypeError: a setting that is not a field of :class:`ReportConfig`.
    """
    names = {f.name for f in dataclasses.fields(ReportConfig)}
    for k in settings:
        if k not in names:
            raise TypeError(f"{k}: not a setting of ReportConfig (see ReportConfig's fields)")
    if config is None:
        return ReportConfig(**settings)
    if not isinstance(config, ReportConfig):
        raise TypeError(f"config: expected a ReportConfig, got {type(config).__name__}")
    return config.replace(**settings) if settings else config


# ---------------------------------------------------------------------------
# The stage cache
# ---------------------------------------------------------------------------


def _checksum(result: Any) -> str:
    import hashlib

    text = json.dumps(result, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _envelope_problem(env: Any, name: str) -> str | None:
    """Why a stage file's content is not a sound result of stage ``name`` (``None``: it is)."""
    if not isinstance(env, dict) or set(env) != {"stage", "checksum", "result"}:
        return "is not a jaxbound stage file"
    if env["stage"] != name:
        return f"holds stage {env['stage']!r}"
    if env["checksum"] != _checksum(env["result"]):
        return "fails its checksum (damaged)"
    return None


class StageCache:
    """A resumable cache of pipeline stages, one JSON file per stage.

    On-disk format: ``folder/<name>-<fp>.json`` holds ``{"stage": name,
    "checksum": ..., "result": ...}`` as JSON (written atomically: a
    temporary file renamed into place; ``checksum`` is the BLAKE2b hash of
    the result's canonical JSON text), where
    ``<name>`` is the stage name with characters other than letters, digits,
    ``-``, ``_`` and ``.`` replaced by ``_`` and ``<fp>`` the first 16 hex
    digits of :func:`jaxbound._io.fingerprint` of ``(base, name, config)``:
    ``base`` fingerprints the inputs shared by every stage (data, norm,
    key) and ``config`` the stage's own settings. Other artefacts of a stage
    (a trained model's folder) live at :meth:`path` with another ``suffix``.
    A rerun with the same inputs finds the file and skips the stage; a file
    that cannot be read as JSON, lacks the envelope or fails its checksum
    (damaged, truncated, foreign, or written by a jaxbound before 0.3) is
    recomputed with one ``RuntimeWarning`` naming the file.

    Args:
      folder: the cache folder (created on the first write).
      base: fingerprint of the inputs every stage shares.
      resume: reuse finished stages (``False``: recompute and overwrite).
      progress: print a line on stderr when a stage starts and ends.

    Attributes:
      ran, skipped: stage names computed and reused, in order.
      seconds: wall time per computed stage name (summed over repeats).
    """

    def __init__(self, folder: str | Path, *, base: str, resume: bool = True, progress: bool = False):
        self.dir = Path(folder)
        self.base = base
        self.resume = bool(resume)
        self.progress = bool(progress)
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}

    def path(self, name: str, config: Any, suffix: str = ".json") -> Path:
        """Where stage ``name`` with settings ``config`` is stored (``suffix`` for other artefacts)."""
        fp = fingerprint(self.base, name, config)[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.dir / f"{safe}-{fp}{suffix}"

    def load(self, name: str, config: Any) -> Any:
        """The stored result, or ``None`` (missing, ``resume=False``, or damaged: then a warning)."""
        p = self.path(name, config)
        if not (self.resume and p.is_file()):
            return None
        try:
            env = json.loads(p.read_text())
            problem = _envelope_problem(env, name)
        except (OSError, ValueError) as exc:
            problem = f"cannot be read ({' '.join(str(exc).split())})"
        if problem is not None:
            warnings.warn(f"stage {name!r}: {p} {problem}; recomputing it", RuntimeWarning, stacklevel=2)
            return None
        return env["result"]

    def log(self, message: str) -> None:
        """One progress line on stderr (when ``progress``)."""
        if self.progress:
            print(f"[jaxbound] {message}", file=sys.stderr, flush=True)

    def run(self, name: str, config: Any, fn: Callable[[], Any], *, label: str | None = None,
            log: bool = True) -> Any:
        """The result of stage ``name``: read from the cache, or ``fn()`` computed, stored and returned.

        Args:
          name: stage name (part of the file name).
          config: the stage's settings (JSON-like; part of the fingerprint).
          fn: computes the result (anything :func:`jaxbound._io.to_jsonable` accepts).
          label: the text of the progress lines (default ``name``).
          log: print the progress lines (``False`` for many small stages under one progress bar).
        """
        out = self.load(name, config)
        if out is not None:
            self.skipped.append(name)
            return out
        if log:
            self.log(f"{label or name}: running")
        t0 = time.perf_counter()
        out = to_jsonable(fn())
        atomic_write_json(self.path(name, config), {"stage": name, "checksum": _checksum(out), "result": out})
        dt = time.perf_counter() - t0
        self.ran.append(name)
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        if log:
            self.log(f"{label or name}: done in {dt:.1f} s")
        return out


# ---------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """The result of :func:`report`.

    Attributes:
      record: the JSON record written to ``report.json`` (see :func:`report`).
      out_dir: the output folder.
      files: paths of the files written (``json``, ``markdown``, figures).
    """

    record: dict
    out_dir: Path
    files: dict

    @property
    def table(self) -> list[dict]:
        """One row per ``eps``: the limits and every model's robust error."""
        return self.record["table"]

    @property
    def flags(self) -> list[dict]:
        """Self-check findings (``weak_attack`` rows)."""
        return self.record["flags"]

    def to_dict(self) -> dict:
        """The JSON record."""
        return self.record

    def markdown(self) -> str:
        """The text of ``report.md``."""
        return render_markdown(self.record)

    def format_table(self) -> str:
        """The plain-text table the command line prints."""
        return _format_table(self.record)


# ---------------------------------------------------------------------------
# Stage implementations
# ---------------------------------------------------------------------------


def _load_datasets(cfg: ReportConfig, data_pair):
    from jaxbound import data

    if data_pair is None:
        try:
            tr = data.load(cfg.dataset, split="train", data_dir=cfg.data_dir)
            te = data.load(cfg.dataset, split=cfg.test_split, data_dir=cfg.data_dir)
        except ValueError as exc:  # data.load names its own arguments; the report's are these fields
            msg = str(exc)
            for own, field in (("name:", "dataset:"), ("split:", "test_split:")):
                if msg.startswith(own):
                    raise ValueError(field + msg[len(own):]) from None
            raise
    elif isinstance(data_pair, (tuple, list)) and len(data_pair) == 2 and all(
            isinstance(d, data.Dataset) for d in data_pair):
        tr, te = data_pair
    else:
        raise ValueError("data: expected a (train, test) pair of jaxbound.data.Dataset")
    # a split stored class by class (image folders list each class's files together) is taken round-robin over
    # classes, so that the first N examples (limit, test_limit, eval_limit) hold every class
    tr, te = (data.interleave_classes(d) if len(d) > 1 and np.all(np.diff(d.labels) >= 0) else d for d in (tr, te))
    if cfg.limit is not None:
        tr = tr.subset(np.arange(min(cfg.limit, len(tr))))
    if cfg.test_limit is not None:
        te = te.subset(np.arange(min(cfg.test_limit, len(te))))
    for ds in (tr, te):
        if len(ds) < 2:
            raise ValueError(f"dataset: split {ds.split!r} has fewer than 2 examples")
        imgs = ds.images
        if not np.all(np.isfinite(imgs)) or imgs.min() < 0 or imgs.max() > 1:
            raise ValueError(f"dataset: pixels of {ds.name}/{ds.split} must be finite and in [0, 1]")
    if tr.shape != te.shape:
        raise ValueError(f"dataset: train and test shapes differ ({tr.shape} vs {te.shape})")
    return tr, te


def _concentration_stage(key, tr, te, cfg: ReportConfig, eps: float, *, progress: bool):
    """The lowest valid concentration estimate over the norm's methods (``None`` values when none is valid)."""
    from jaxbound import concentration as C

    est = C.estimate(tr.flat(), te.flat(), norm=cfg.norm, eps=eps, alpha=cfg.alpha, n_regions=list(cfg.n_regions),
                     key=key, method="best", protocol=cfg.protocol, select_size=cfg.select_size,
                     n_repeats=cfg.n_repeats, dataset=tr.name or "data", progress=progress)
    rep = est.report  # the report split (test for the paper protocol)
    valid = bool(est.valid)
    lo, hi = (float(v) for v in rep.adv_risk_ci)
    adv = est.value  # None when the reported region does not keep risk >= alpha: never used as the estimate
    return {
        "eps": float(eps), "method": rep.method, "norm": rep.norm, "alpha": float(cfg.alpha), "T": int(rep.T),
        "q": rep.q, "protocol": rep.protocol, "split": rep.split, "n": int(rep.n),
        "valid": valid, "reason": est.reason,
        "risk": float(rep.risk), "risk_ci": [float(v) for v in rep.risk_ci],
        "adv_risk": adv, "adv_risk_ci": [lo, hi] if valid else None,
        "adv_risk_std": float(rep.adv_risk_std) if valid else None,
        "adv_rule": rep.adv_rule, "region_adv_risk": float(rep.adv_risk),
        "intrinsic_robustness": None if adv is None else 1.0 - adv,
        "intrinsic_robustness_ci": [1.0 - hi, 1.0 - lo] if valid else None,
        "risk_feasible": bool(rep.risk >= cfg.alpha),
        "methods": [{"method": c.method, "valid": bool(c.valid), "reason": c.reason, "value": c.value}
                    for c in est.candidates],
        "splits": est.splits.to_dict(),
        "all_splits": [{"split": r.split, "n": r.n, "risk": r.risk, "adv_risk": r.adv_risk} for r in est.records],
        "seconds": est.seconds,
    }


def multiclass_points(ds: Any, per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` points of each class in file order, classes ascending: ``(x [n, d], labels [n])``.

    The sample of the report's multi-class bound (``None``: every point),
    :func:`jaxbound.bounds.first_per_class`.
    """
    from jaxbound import bounds

    idx = bounds.first_per_class(ds.labels, n=per_class)
    return ds.flat()[idx], ds.labels[idx]


def multiclass_bound(tr: Any, *, norm: Any, eps: float, per_class: int | None, degree: int = 3,
                     progress: bool = False) -> dict:
    """The report's multi-class limit at one budget: ``L*(degree)`` and ``L*(2)`` of a class-balanced sample.

    Args:
      tr: a :class:`jaxbound.data.Dataset` (the training split).
      norm: ``"l1" | "l2" | "linf"`` (``l1`` stays at degree 2).
      eps: the budget.
      per_class: first N points of each class (:func:`multiclass_points`; ``None``: all).
      degree: 2 or 3.
      progress: progress bars of the distance pass.

    Returns:
      ``{"eps", "n", "degree", "zero_one", "zero_one_degree2", "n_edges",
      "n_hyperedges", "backend", "verified", "seconds"}`` (``zero_one`` is
      ``L*(degree)``, a lower bound on every classifier's robust error on the
      sample; ``verified``: both certificates pass ``verify(1e-6)``).

    References:
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722.
    """
    from jaxbound import bounds

    x, y = multiclass_points(tr, per_class)
    t0 = time.perf_counter()
    used = 2 if str(norm) == "l1" else degree  # degree-3 hyperedges are defined for l2 and linf
    g = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm, degree=used, progress=progress)
    r = bounds.multiclass_zero_one(g)
    out = {"eps": float(eps), "n": int(len(y)), "degree": int(used), "zero_one": float(r.loss),
           "n_edges": int(r.n_edges), "n_hyperedges": int(r.n_hyperedges), "backend": r.backend,
           "verified": bool(r.verify(1e-6).passed)}
    if used == 3:
        r2 = bounds.multiclass_zero_one(dataclasses.replace(g, hyperedges=np.zeros((0, 3), np.int64), degree=2,
                                                            num_triangles=None))
        out["zero_one_degree2"] = float(r2.loss)
        out["verified"] = out["verified"] and bool(r2.verify(1e-6).passed)
    else:
        out["zero_one_degree2"] = float(r.loss)
    out["seconds"] = time.perf_counter() - t0
    return out


def _pair_points(tr, a, b, n_per_class):
    from jaxbound import data

    na, nb = int((tr.labels == a).sum()), int((tr.labels == b).sum())
    n = None if n_per_class is None else min(n_per_class, na, nb)
    return data.class_pair(tr, a, b, n_per_class=n)


def _bound_stage(tr, a, b, *, norm, eps, n_per_class, progress=False):
    from jaxbound import bounds

    xa, xb = _pair_points(tr, a, b, n_per_class)
    r = bounds.pair_bounds(xa, xb, eps=eps, norm=norm, progress=progress)
    return {"pair": [int(a), int(b)], "eps": float(eps), "n": list(r.n), "num_edges": r.num_edges,
            "zero_one": r.zero_one, "cross_entropy": r.cross_entropy, "verified": r.verified,
            "seconds": r.seconds}


def _bounds_stages(stages: StageCache, tr, cfg: ReportConfig, pairs_all, *, progress):
    """Every pair at the largest eps (the hardest pair), then the chosen pairs at every eps."""
    from tqdm.auto import tqdm

    e_max = cfg.eps_grid[-1]
    npc = cfg.n_per_class

    def one(a, b, e):
        return stages.run("bound", {"pair": [a, b], "eps": e, "n_per_class": npc},
                          lambda: _bound_stage(tr, a, b, norm=cfg.norm, eps=e, n_per_class=npc), log=False)

    stages.log(f"bounds: {len(pairs_all)} class pairs at eps={e_max:g}")
    selection = [one(a, b, e_max) for a, b in tqdm(pairs_all, desc="pair bounds", unit="pair",
                                                   disable=not progress, leave=False)]
    hardest = max(selection, key=lambda r: (r["zero_one"], r["cross_entropy"], -r["pair"][0], -r["pair"][1]))
    chosen = pairs_all if cfg.pairs == "all" else [tuple(hardest["pair"])]
    jobs = [(a, b, e) for e in cfg.eps_grid for a, b in chosen]
    stages.log(f"bounds: {len(chosen)} pair(s) at {len(cfg.eps_grid)} budgets")
    rows = [one(a, b, e) for a, b, e in tqdm(jobs, desc="pair bounds per eps", unit="bound",
                                             disable=not progress, leave=False)]
    return selection, hardest, chosen, rows


def _safe_dict(res) -> dict:
    try:
        d = res.to_dict()
    except Exception as exc:  # noqa: BLE001 - a partial TrainResult: keep the report going
        return {"error": f"to_dict failed: {exc}"}
    return to_jsonable(d)


def _train_model(key, stages: StageCache, recipe, tr, te, cfg: ReportConfig, *, progress):
    """Train (or reload) one model; returns (logits_fn, train_record)."""
    from jaxbound import models, training

    widen = cfg.widen
    settings = {"recipe": recipe, "arch": cfg.arch, "widen_factor": widen, "epochs": cfg.epochs,
                "batch_size": cfg.batch_size, "learning_rate": cfg.train_config(recipe).learning_rate,
                "eps": cfg.adversarial_eps if recipe != "standard" else None, "norm": str(cfg.norm),
                "attack_steps": cfg.train_attack_steps}
    folder = stages.path(f"model-{recipe}", dict(settings, key=_engine.key_data(key)), suffix="")
    if stages.resume and (folder / "model.json").is_file() and (folder / "model.msgpack").is_file():
        try:
            saved = models.load(folder)
        except Exception as exc:  # noqa: BLE001 - any damage to the saved model: train it again
            warnings.warn(f"train {recipe}: the saved model {folder} cannot be read "
                          f"({' '.join(str(exc).split())[:200]}); training it again", RuntimeWarning, stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            stages.skipped.append(f"train {recipe}")
            return saved.logits_fn(), to_jsonable(saved.record)
    module = models.build(cfg.arch, num_classes=tr.num_classes, widen_factor=widen)
    n_ev = min(200, len(te))
    stages.log(f"train {recipe}: {cfg.epochs} epoch(s) of {len(tr)} images")
    t0 = time.perf_counter()
    res = training.train(module, (tr.images, tr.labels), cfg.train_config(recipe, n_train=len(tr)), key=key,
                         eval_data=(te.images[:n_ev], te.labels[:n_ev]),
                         checkpoint_dir=str(folder.with_suffix(".ckpt")), progress=progress)
    seconds = time.perf_counter() - t0
    stages.seconds[f"train {recipe}"] = seconds
    rec = to_jsonable({"recipe": recipe, "arch": cfg.arch, "widen_factor": widen, "train_seconds": seconds,
                       "steps": int(res.steps), "train": _safe_dict(res), "settings": settings})
    models.save(folder, arch=cfg.arch, num_classes=tr.num_classes, widen_factor=widen, input_shape=tr.shape,
                params=res.params, record=rec)
    shutil.rmtree(folder.with_suffix(".ckpt"), ignore_errors=True)  # the parameters are saved
    stages.ran.append(f"train {recipe}")
    stages.log(f"train {recipe}: done in {seconds:.1f} s")
    return models.logits_fn(module, res.params), rec


def _autoattack_curve(key, logits_fn, x, y, cfg: "ReportConfig", *, progress):
    """AutoAttack at every budget: ``(robust_error [K], clean_error, details [K])``."""
    import jax

    from jaxbound import attacks

    errs, details, clean = [], [], None
    eps32 = np.asarray(cfg.eps_grid, np.float32).astype(float)  # the budgets as float32 values, as PGD attacks
    for j, e in enumerate(eps32):
        if e == 0.0:
            pred = np.asarray(attacks.predict(logits_fn, x)).argmax(-1) if len(x) else np.zeros(0, int)
            acc = float(np.mean(pred == np.asarray(y))) if len(x) else 0.0
            errs.append(1.0 - acc)
            details.append({"eps": float(cfg.eps_grid[j]), "attacks": [], "robust_accuracy_after": [acc],
                            "warnings": []})
            continue
        res = attacks.autoattack(logits_fn, x, y, key=jax.random.fold_in(key, j), eps=float(e), norm=cfg.norm,
                                 steps=cfg.evaluation_steps, n_queries=cfg.n_queries, progress=progress)
        clean = 1.0 - res.clean_accuracy
        errs.append(1.0 - res.accuracy)
        details.append({"eps": float(cfg.eps_grid[j]), "attacks": list(res.attacks),
                        "robust_accuracy_after": np.asarray(res.robust_accuracy, float).tolist(),
                        "warnings": list(res.checks.get("warnings", []))})
    if clean is None:
        clean = errs[0] if errs else 0.0
    return np.asarray(errs, float), clean, details


def _attack_curve(key, logits_fn, x, y, cfg: "ReportConfig", *, progress):
    """``(robust_error [K], clean_error, details)`` of ``logits_fn`` under the report's evaluation attack."""
    from jaxbound import metrics

    if cfg.evaluation_attack == "autoattack":
        return _autoattack_curve(key, logits_fn, x, y, cfg, progress=progress)
    attack = cfg.attack()
    # the budgets as float32 values, as the report has always attacked (keeps the numbers of earlier reports)
    att = attack.replace(eps=tuple(float(e) for e in np.asarray(attack.eps_array, np.float32)))
    rep = metrics.evaluate_robustness(logits_fn, x, y, att, key=key, wrt_predictions=False, progress=progress)
    rob = np.asarray(rep.robust_accuracy, dtype=float)
    return 1.0 - rob, 1.0 - rep.clean_accuracy, None


def _attack_record(cfg: "ReportConfig", details) -> dict:
    if cfg.evaluation_attack == "autoattack":
        return {"name": "autoattack", "version": "standard", "norm": str(cfg.norm), "steps": cfg.evaluation_steps,
                "n_queries": cfg.n_queries, "bounds": [0.0, 1.0], "per_eps": details}
    attack = cfg.attack()
    return {"name": "pgd", "norm": str(cfg.norm), "steps": int(attack.steps), "restarts": int(attack.restarts),
            "step_size": "2.5 eps / steps", "random_start": True, "bounds": [0.0, 1.0]}


def _certify_model(logits_fn, te, cfg: ReportConfig, *, progress=False) -> dict:
    """The certified robust error per budget on the evaluation points (``cfg.certify``), or why it is not available.

    ``1 - certified accuracy`` (:func:`jaxbound.certify.certified_accuracy`)
    bounds the model's true robust error from above, as the attacked robust
    error bounds it from below.
    """
    from jaxbound import certify

    out = {"method": cfg.certify, "available": False, "reason": None, "rows": [None] * len(cfg.eps_grid)}
    if cfg.norm not in ("linf", "l2"):
        out["reason"] = f"not available: certification supports linf and l2, not {cfg.norm}"
        return out
    t0, rows = time.perf_counter(), []
    for e in cfg.eps_grid:
        try:
            c = certify.certified_accuracy(logits_fn, te.images, te.labels, eps=float(e), norm=cfg.norm,
                                           method=cfg.certify, input_bounds=(0.0, 1.0), progress=progress)
        except ValueError as exc:  # e.g. a primitive that bound propagation does not support: say so, go on
            out["reason"] = f"not available: {' '.join(str(exc).split())[:300]}"
            return out
        k = int(c.n - np.sum(np.asarray(c.certified)))
        rows.append({"eps": float(e), "certified_error": 1.0 - float(c.accuracy),
                     "certified_error_ci": list(_clopper(k, int(c.n)))})
    return dict(out, available=True, rows=rows, seconds=time.perf_counter() - t0)


def _with_certification(ev: dict, cert: dict | None) -> dict:
    """The evaluation record with ``certified_error`` (and its CI) in each budget's row; ``None`` where not available."""
    rows = []
    for j, r in enumerate(ev["robust"]):
        c = (cert or {}).get("rows", [None] * (j + 1))[j] if cert else None
        rows.append(dict(r, certified_error=None if c is None else c["certified_error"],
                         certified_error_ci=None if c is None else c["certified_error_ci"]))
    info = None if cert is None else {k: v for k, v in cert.items() if k != "rows"}
    return dict(ev, robust=rows, certification=info)


def _evaluate_model(key, logits_fn, te, cfg: ReportConfig, *, progress=False):
    x, y = te.images, te.labels
    n = len(te)
    robust_error, clean_err, details = _attack_curve(key, logits_fn, x, y, cfg, progress=progress)
    clean_err = float(clean_err)
    k_clean = int(round(clean_err * n))
    rows = []
    for e, r in zip(cfg.eps_grid, robust_error):
        k = int(round(float(r) * n))
        rows.append({"eps": float(e), "robust_error": float(r), "robust_accuracy": 1.0 - float(r),
                     "robust_error_ci": list(_clopper(k, n))})
    return {"n": n, "clean_accuracy": 1.0 - clean_err, "clean_error": clean_err,
            "clean_error_ci": list(_clopper(k_clean, n)), "robust": rows, "attack": _attack_record(cfg, details)}


def _self_check(key, logits_fn, tr, pair, bound_rows, cfg: ReportConfig, *, progress=False):
    from jaxbound import bounds

    a, b = pair
    xa, xb = _pair_points(tr, a, b, cfg.n_per_class)
    cpc = cfg.check_per_class
    if cpc is not None and max(len(xa), len(xb)) > cpc:
        # a smaller sample for the attack: its own optimal 0-1 loss (the bound of the sample attacked)
        xa, xb = xa[:cpc], xb[:cpc]
        bound_rows = [{"eps": float(e), "zero_one": bounds.min_zero_one_loss(
            bounds.conflict_graph(xa, xb, eps=e, norm=cfg.norm)).loss} for e in cfg.eps_grid]
    x = np.concatenate([xa, xb])
    y = np.concatenate([np.zeros(len(xa), np.int64), np.ones(len(xb), np.int64)])
    robust_error, _, _ = _attack_curve(key, restrict_to_pair(logits_fn, a, b), x, y, cfg, progress=progress)
    out = []
    for e, r in zip(cfg.eps_grid, robust_error):
        zb = next(row for row in bound_rows if abs(row["eps"] - e) < 1e-12)["zero_one"]
        weak = weak_attack_check(float(r), zb, n=len(y))
        out.append({"pair": [int(a), int(b)], "eps": float(e), "n": int(len(y)), "attacked_robust_error": float(r),
                    "zero_one_bound": float(zb), "weak_attack": weak})
    return out


def _model_stages(keys, stages: StageCache, entries, tr, te, te_eval, cfg, chosen, bound_rows, user_name, *,
                  progress):
    """Train (or take) every model, evaluate it, and run the self-check on the chosen pairs."""
    k_train, k_eval, k_check = keys
    recs = []
    for i, (mname, source, fn) in enumerate(entries):
        train_rec = None
        if source == "trained":
            import jax

            fn, train_rec = _train_model(jax.random.fold_in(k_train, i), stages, mname, tr, te_eval, cfg,
                                         progress=progress)
            mfp = {"train": train_rec.get("settings"), "recipe": mname}
        else:
            mfp = {"user": user_name, "probe": np.asarray(fn(te.images[:4]), np.float64)}
        ev_cfg = {"model": mfp, "eps": list(cfg.eps_grid), "steps": cfg.evaluation_steps,
                  "restarts": cfg.attack().restarts, "eval_limit": cfg.eval_limit}
        if cfg.evaluation_attack != "pgd":
            ev_cfg.update(attack=cfg.evaluation_attack, n_queries=cfg.n_queries)
        ev = stages.run("evaluate", ev_cfg, lambda fn=fn: _evaluate_model(k_eval, fn, te_eval, cfg,
                                                                          progress=progress),
                        label=f"evaluate {mname} on {len(te_eval)} images")
        cert = None
        if cfg.certify != "none":
            ce_cfg = {"model": mfp, "eps": list(cfg.eps_grid), "norm": cfg.norm, "method": cfg.certify,
                      "eval_limit": cfg.eval_limit}
            cert = stages.run("certify", ce_cfg, lambda fn=fn: _certify_model(fn, te_eval, cfg, progress=progress),
                              label=f"certify {mname} ({cfg.certify}) on {len(te_eval)} images")
        ev = _with_certification(ev, cert)
        checks = []
        for a, b in (chosen if cfg.self_check else []):
            rows_ab = [r for r in bound_rows if tuple(r["pair"]) == (a, b)]
            sc_cfg = dict(ev_cfg, pair=[a, b], n_per_class=cfg.n_per_class)
            if cfg.check_per_class is not None:
                sc_cfg["check_per_class"] = cfg.check_per_class
            checks.extend(stages.run("self_check", sc_cfg, lambda fn=fn, a=a, b=b, rows_ab=rows_ab: _self_check(
                k_check, fn, tr, (a, b), rows_ab, cfg, progress=progress), label=f"self-check {mname} {a}-{b}"))
        recs.append({"name": mname, "source": source, "train": train_rec, **ev, "self_check": checks})
    return recs


def _table_and_flags(cfg: ReportConfig, conc, mc_rows, hardest, bound_rows, model_recs):
    hp = tuple(hardest["pair"])
    table = []
    for j, e in enumerate(cfg.eps_grid):
        c = conc[j]
        hb = next(r for r in bound_rows if tuple(r["pair"]) == hp and abs(r["eps"] - e) < 1e-12)
        row = {"eps": e, "multiclass_zero_one_bound": mc_rows[j]["zero_one"],
               "multiclass_degree": mc_rows[j]["degree"], "concentration_adv_risk": c["adv_risk"],
               "concentration_adv_risk_ci": c["adv_risk_ci"], "concentration_valid": c.get("valid", True),
               "intrinsic_robustness": c["intrinsic_robustness"],
               "intrinsic_robustness_ci": c["intrinsic_robustness_ci"],
               "hardest_pair": list(hp), "zero_one_bound": hb["zero_one"], "cross_entropy_bound": hb["cross_entropy"]}
        if cfg.pairs == "all":
            row["max_zero_one_bound"] = max(r["zero_one"] for r in bound_rows if abs(r["eps"] - e) < 1e-12)
        for m in model_recs:
            mr = m["robust"][j]
            row[f"{m['name']}_robust_error"] = mr["robust_error"]
            row[f"{m['name']}_robust_error_ci"] = mr["robust_error_ci"]
            row[f"{m['name']}_certified_error"] = mr.get("certified_error")
            row[f"{m['name']}_certified_error_ci"] = mr.get("certified_error_ci")
        table.append(row)
    flags = []
    for m in model_recs:
        for c in m["self_check"]:
            if c["weak_attack"]:
                flags.append({"kind": "weak_attack", "model": m["name"], "pair": c["pair"], "eps": c["eps"],
                              "attacked_robust_error": c["attacked_robust_error"],
                              "zero_one_bound": c["zero_one_bound"],
                              "message": (f"weak attack: {m['name']} on pair {c['pair'][0]}-{c['pair'][1]} at "
                                          f"eps={c['eps']:g} has attacked robust error "
                                          f"{c['attacked_robust_error']:.4f} on the training sample, below the "
                                          f"optimal 0-1 loss {c['zero_one_bound']:.4f}; use a stronger attack "
                                          f"(more steps or restarts)")})
    return table, flags


def _config_record(cfg: ReportConfig, name: str, user_model: Any, key) -> dict:
    return {"dataset": name, "norm": cfg.norm, "eps": list(cfg.eps_grid), "alpha": cfg.alpha,
            "n_regions": list(cfg.n_regions), "n_repeats": cfg.n_repeats, "protocol": cfg.protocol,
            "select_size": cfg.select_size, "multiclass_per_class": cfg.multiclass_per_class,
            "multiclass_degree": cfg.multiclass_degree, "pairs": cfg.pairs, "n_per_class": cfg.n_per_class,
            "models": list(cfg.models), "user_model": user_model, "arch": cfg.arch, "widen_factor": cfg.widen,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "learning_rate": cfg.train_config("standard").learning_rate,
            "train_eps": cfg.adversarial_eps, "train_attack_steps": cfg.train_attack_steps,
            "evaluation_attack": cfg.evaluation_attack, "autoattack_steps": cfg.autoattack_steps,
            "n_queries": cfg.n_queries, "attack_steps": cfg.attack_steps, "attack_restarts": cfg.attack().restarts,
            "eval_limit": cfg.eval_limit, "check_per_class": cfg.check_per_class, "limit": cfg.limit,
            "test_limit": cfg.test_limit, "test_split": cfg.test_split,
            "key": _engine.key_data(key).astype(np.int64).tolist()}


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def report(
    config: ReportConfig | None = None,
    *,
    key: Any,
    model: Any = None,
    data: Any = None,
    out_dir: str | Path = "jaxbound_report",
    resume: bool = True,
    progress: bool = True,
    **settings: Any,
) -> Report:
    """Limits of robustness on a dataset beside what models reach (see the module docstring).

    Args:
      config: a :class:`ReportConfig` (default ``ReportConfig()``).
      key: ``jax.random`` key of every random choice (split four ways:
        concentration, training, evaluation, self-check).
      model: a user's logits function ``x [n, H, W, C] -> logits [n, K]``, its
        import path ``"module:function"`` or a saved model's folder
        (:func:`load_model`); named ``config.model_name`` in the tables.
      data: a ``(train, test)`` pair of :class:`jaxbound.data.Dataset` instead
        of loading ``config.dataset``.
      out_dir: output folder (created).
      resume: reuse finished stages under ``out_dir/stages``.
      progress: progress lines and bars of every stage.
      **settings: fields of :class:`ReportConfig` overriding ``config``.

    Returns:
      :class:`Report`. ``report.json`` holds ``schema``, ``config``,
      ``dataset``, ``definitions``, ``eps``, ``norm``, ``geometry``,
      ``concentration`` (one row per eps), ``bounds`` (``hardest_pair``,
      ``selection``, ``rows``), ``models`` (clean and robust errors with
      intervals, training records, ``self_check`` rows), ``table`` (one row per
      eps), ``flags`` and ``seconds``.

    References:
      Mahloujifar et al. NeurIPS 2019, arXiv:1905.12202; Bhagoji et al. ICML
      2021, arXiv:2104.08382; Finlay et al. arXiv:1808.09540; Ding et al.
      ICLR 2019, arXiv:1902.08336 (full entries in the module docstring).
    """
    import jax

    t_start = time.perf_counter()
    cfg = report_config(config, **settings)
    key = _checks.check_key(key)
    user_fn = None
    if model is not None:
        user_fn = load_model(model) if isinstance(model, (str, Path)) else model
        if not callable(user_fn):
            raise ValueError(f"model: expected a logits function or 'module:function', got {model!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: {str(out)!r} is a file, not a folder")
    tr, te = _load_datasets(cfg, data)
    out.mkdir(parents=True, exist_ok=True)
    stages = StageCache(out / "stages", base=fingerprint(tr.images, tr.labels, te.images, te.labels, str(cfg.norm),
                                                         _engine.key_data(key)), resume=resume, progress=progress)
    k_conc, k_train, k_eval, k_check = jax.random.split(key, 4)
    te_eval = te if cfg.eval_limit is None else te.subset(np.arange(min(cfg.eval_limit, len(te))))
    user_name = None if model is None else (str(model) if isinstance(model, (str, Path))
                                            else getattr(model, "__name__", "callable"))
    pairs_all = [(a, b) for a in range(tr.num_classes) for b in range(a + 1, tr.num_classes)
                 if (tr.labels == a).any() and (tr.labels == b).any()]
    if not pairs_all:
        raise ValueError("dataset: the training split needs at least two classes")

    geom = stages.run("geometry", {}, lambda: geometry_summary(tr.flat(), tr.labels, norm=cfg.norm,
                                                               progress=progress),
                      label=f"geometry of {len(tr)} training images")
    mc_per_class = cfg.multiclass_per_class
    mc_rows = [stages.run("multiclass", {"eps": e, "per_class": mc_per_class, "degree": cfg.multiclass_degree},
                          lambda e=e: multiclass_bound(tr, norm=cfg.norm, eps=e, per_class=mc_per_class,
                                                        degree=cfg.multiclass_degree, progress=progress),
                          label=f"multi-class bound eps={e:g} ({j + 1}/{len(cfg.eps_grid)})")
               for j, e in enumerate(cfg.eps_grid)]
    conc = [stages.run("concentration", {"eps": e, "alpha": cfg.alpha, "T": list(cfg.n_regions),
                                         "repeats": cfg.n_repeats, "protocol": cfg.protocol,
                                         "select_size": cfg.select_size},
                       lambda e=e: _concentration_stage(k_conc, tr, te, cfg, e, progress=progress),
                       label=f"concentration eps={e:g} ({j + 1}/{len(cfg.eps_grid)})")
            for j, e in enumerate(cfg.eps_grid)]
    selection, hardest, chosen, bound_rows = _bounds_stages(stages, tr, cfg, pairs_all, progress=progress)
    entries = [(r, "trained", None) for r in cfg.models]
    if user_fn is not None:
        entries.append((cfg.model_name, "user", user_fn))
    model_recs = _model_stages((k_train, k_eval, k_check), stages, entries, tr, te, te_eval, cfg, chosen,
                               bound_rows, user_name, progress=progress)
    table, flags = _table_and_flags(cfg, conc, mc_rows, hardest, bound_rows, model_recs)
    from jaxbound import __version__

    record = to_jsonable({
        "schema": _SCHEMA_VERSION, "jaxbound_version": __version__,
        "config": _config_record(cfg, tr.name or "data", user_name, key),
        "dataset": {"train": tr.to_dict(), "test": te.to_dict(), "eval_n": len(te_eval)},
        "definitions": DEFINITIONS, "norm": cfg.norm, "eps": list(cfg.eps_grid), "geometry": geom,
        "concentration": conc,
        "multiclass": {"per_class": mc_per_class, "n": mc_rows[0]["n"], "degree": mc_rows[0]["degree"],
                       "sample": "the first per_class training points of each class, uniform weights",
                       "rows": mc_rows},
        "bounds": {"pairs": cfg.pairs, "hardest_pair": list(hardest["pair"]), "selection_eps": cfg.eps_grid[-1],
                   "selection": selection, "rows": bound_rows},
        "models": model_recs, "table": table, "flags": flags,
        "stages": {"ran": stages.ran, "skipped": stages.skipped, "seconds": stages.seconds},
        "seconds": time.perf_counter() - t_start,
    })
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if cfg.figures:
        files.update(plot_report(record, out))
    record["files"] = files
    atomic_write_json(out / "report.json", record)
    atomic_write_bytes(out / "report.md", render_markdown(record).encode())
    return Report(record, out, files)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _fmt(v, nd=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ci(v):
    return "n/a" if v is None else f"[{v[0]:.3f}, {v[1]:.3f}]"


def _certified_names(rec: dict) -> list[str]:
    """Models of the record that carry a certification record (available or not)."""
    return [m["name"] for m in rec["models"] if m.get("certification")]


def _format_table(rec: dict) -> str:
    names = [m["name"] for m in rec["models"]]
    hp = rec["bounds"]["hardest_pair"]
    head = ["eps", "0-1 bound all", "conc. adv risk", "1-adv (intr. rob.)", f"0-1 bound {hp[0]}v{hp[1]}",
            f"CE bound {hp[0]}v{hp[1]}"]
    head += [f"{n} rob. err" for n in names]
    cert = _certified_names(rec)
    head += [f"{n} cert. err" for n in cert]
    rows = []
    for r in rec["table"]:
        row = [f"{r['eps']:g}", _fmt(r.get("multiclass_zero_one_bound")), _fmt(r["concentration_adv_risk"]), _fmt(r["intrinsic_robustness"]),
               _fmt(r["zero_one_bound"]), _fmt(r["cross_entropy_bound"])]
        row += [_fmt(r[f"{n}_robust_error"]) for n in names]
        row += [_fmt(r.get(f"{n}_certified_error")) for n in cert]
        rows.append(row)
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    return "\n".join(lines)


_RECORD_KEYS = ("config", "dataset", "norm", "eps", "geometry", "concentration", "bounds", "models", "table",
                "flags", "definitions")


def _check_record(rec: Any, name: str = "rec") -> dict:
    """``rec`` if it looks like a :func:`report` record, else a ``ValueError`` naming ``name``."""
    if not isinstance(rec, dict):
        raise TypeError(f"{name}: expected a report record (dict, report.json), got {type(rec).__name__}")
    missing = [k for k in _RECORD_KEYS if k not in rec]
    if missing:
        raise ValueError(f"{name}: not a jaxbound report record (missing {', '.join(map(repr, missing))}); "
                         "pass Report.record or the content of report.json")
    if rec.get("schema") not in (None, _SCHEMA_VERSION):
        raise ValueError(f"{name}: report schema {rec.get('schema')!r} is not {_SCHEMA_VERSION}")
    return rec


def _attack_text(a: dict) -> str:
    if a.get("name") == "autoattack":
        atts = sorted({n for r in a.get("per_eps", []) for n in r.get("attacks", [])},
                      key=lambda n: ["apgd-ce", "apgd-t", "fab-t", "square"].index(n) if n in
                      ("apgd-ce", "apgd-t", "fab-t", "square") else 9)
        warn = sorted({w for r in a.get("per_eps", []) for w in r.get("warnings", [])})
        text = (f"AutoAttack standard ({', '.join(atts) or 'no attack'}; {a['steps']} iterations, Square "
                f"{a['n_queries']} queries), {a['norm']}, images kept in [0, 1]")
        return text + (f"; self-check warnings: {'; '.join(warn)}" if warn else "")
    return (f"PGD-{a['norm']} {a['steps']} steps x {a['restarts']} restart(s), step 2.5 eps/steps, random start, "
            "images kept in [0, 1]")


def _md_models(rec: dict) -> list[str]:
    if not rec["models"]:
        return []
    L = ["## Models", ""]
    for m in rec["models"]:
        desc = f"{m['source']}"
        if m.get("train"):
            t = m["train"]
            desc += f", {t['arch']} (widen {t['widen_factor']}), recipe `{t['recipe']}`, {t['steps']} steps"
            if t["settings"].get("eps") is not None:
                desc += f", training eps {t['settings']['eps']:g}"
        L.append(f"- **{m['name']}** ({desc}): clean accuracy {m['clean_accuracy']:.4f} on n = {m['n']}; "
                 f"attack {_attack_text(m['attack'])}.")
    L.append("")
    return L


def _md_definitions(rec: dict) -> list[str]:
    L = ["## Definitions", ""]
    for k, v in rec["definitions"].items():
        L.append(f"- `{k}`: {v}.")
    L.append("")
    files = rec.get("files", {})
    for k in ("robust_error_png", "pair_bounds_png"):
        if k in files:
            L.append(f"![{k}]({Path(files[k]).name})")
    L.append("")
    return L


def _md_multiclass(rec: dict) -> list[str]:
    mc = rec.get("multiclass")
    if not mc:
        return []
    L = ["## Optimal 0-1 loss over all classes (Dai et al. 2023)", "",
         f"The first {mc['per_class']} training points of each class (n = {mc['n']}, uniform weights); "
         f"L*({mc['degree']}) is the headline limit, L*(2) beside it (every certificate checked).", "",
         "| eps | L*(2) | L*(3) | pair edges | hyperedges | verified |", "|---|---|---|---|---|---|"]
    for r in mc["rows"]:
        l3 = _fmt(r["zero_one"], 4) if r["degree"] == 3 else "n/a"
        L.append(f"| {r['eps']:g} | {_fmt(r['zero_one_degree2'], 4)} | {l3} | {r['n_edges']} | "
                 f"{r['n_hyperedges']} | {'yes' if r['verified'] else 'no'} |")
    L.append("")
    return L


def _md_concentration(rec: dict) -> list[str]:
    """The concentration section of ``report.md``."""
    L = []
    L.append("## Concentration (Mahloujifar et al. 2019)")
    L.append("")
    c0 = rec["concentration"][0]
    L.append(f"Method `{c0['method']}`, alpha = {c0['alpha']}, protocol `{c0['protocol']}` (reported on the "
             f"'{c0['split']}' split, n = {c0['n']}).")
    L.append("")
    L.append("The estimate is the lowest valid one over the norm's region family and the half-space search of "
             "Prescott et al. (2021), compared on the selection split; a region whose risk on the reported split "
             "is below alpha is never used (`n/a`, with the reason).")
    L.append("")
    L.append("| eps | method | T | q | risk | adv. risk [95% CI] | valid (risk >= alpha on report split) |")
    L.append("|---|---|---|---|---|---|---|")
    for c in rec["concentration"]:
        valid = c.get("valid", c["risk_feasible"])
        ci = _ci(c["adv_risk_ci"]) if c.get("adv_risk_ci") else ""
        L.append(f"| {c['eps']:g} | {c['method']} | {c['T']} | {_fmt(c['q'])} | {_fmt(c['risk'])} | "
                 f"{_fmt(c['adv_risk'])} {ci} | {'yes' if valid else 'no: ' + c.get('reason', '')} |")
    L.append("")
    return L


def render_markdown(rec: dict) -> str:
    """The ``report.md`` text of a report record.

    Raises:
      ValueError: ``rec`` is not a report record.
    """
    rec = _check_record(rec)
    cfg, ds = rec["config"], rec["dataset"]
    g = rec["geometry"]
    hp = rec["bounds"]["hardest_pair"]
    names = [m["name"] for m in rec["models"]]
    L = [f"# jaxbound report: {ds['train']['name']} ({rec['norm']})", ""]
    L.append(f"Training split: n = {ds['train']['n']}, images {tuple(ds['train']['shape'])}, "
             f"{ds['train']['num_classes']} classes; held-out split '{ds['test']['split']}': n = {ds['test']['n']} "
             f"(models evaluated on the first {ds['eval_n']}).")
    L.append("")
    L.append("## Limits beside achieved robust error")
    L.append("")
    mc = rec.get("multiclass") or {}
    head = ["eps", f"0-1 bound, all classes (L*({mc.get('degree', '?')}), n = {mc.get('n', '?')})",
            "concentration adv. risk [95% CI]", "intrinsic robustness", f"0-1 bound (pair {hp[0]} vs {hp[1]})",
            "cross-entropy bound"] + [f"{n}: robust error [95% CI]" for n in names]
    cert = _certified_names(rec)
    head += [f"{n}: certified robust error [95% CI]" for n in cert]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for r in rec["table"]:
        cells = [f"{r['eps']:g}", _fmt(r.get("multiclass_zero_one_bound")),
                 f"{_fmt(r['concentration_adv_risk'])} {_ci(r['concentration_adv_risk_ci'])}",
                 _fmt(r["intrinsic_robustness"]), _fmt(r["zero_one_bound"]), _fmt(r["cross_entropy_bound"])]
        cells += [f"{_fmt(r[f'{n}_robust_error'])} {_ci(r[f'{n}_robust_error_ci'])}" for n in names]
        cells += ["not available" if r.get(f"{n}_certified_error") is None else
                  f"{_fmt(r[f'{n}_certified_error'])} {_ci(r.get(f'{n}_certified_error_ci'))}" for n in cert]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    for m in rec["models"]:
        c = m.get("certification")
        if c and not c.get("available"):
            L.append(f"Certified robust error of {m['name']}: {c.get('reason') or 'not available'}.")
            L.append("")
    if any((m.get("certification") or {}).get("available") for m in rec["models"]):
        meth = sorted({m["certification"]["method"] for m in rec["models"] if m.get("certification")})
        L.append(f"Certified robust error: 1 - certified accuracy by bound propagation ({', '.join(meth)}) on the "
                 "same points, an upper bound on the true robust error; the attacked robust error is a lower "
                 "bound on it (limit <= attacked <= true <= certified).")
        L.append("")
    if rec["models"]:
        L.append("Clean error: " + "; ".join(f"{m['name']} {m['clean_error']:.3f} {_ci(m['clean_error_ci'])}"
                                             for m in rec["models"]) + ".")
        L.append("")
    L.append("## Self-check")
    L.append("")
    if rec["flags"]:
        for f in rec["flags"]:
            L.append(f"- **{f['message']}**")
    elif any(m["self_check"] for m in rec["models"]):
        L.append("No weak attack: on every checked pair's training sample, each model's attacked robust error "
                 "(prediction restricted to the two classes) is at least the optimal 0-1 loss.")
    else:
        L.append("Not run (no model or self_check=False).")
    L.append("")
    L.append("## Data geometry")
    L.append("")
    lip = g["lipschitz"]
    L.append(f"- Dataset Lipschitz constant ({lip['norm']}): {_fmt(lip['lipschitz'], 4)} "
             f"(closest pair of different classes at distance {_fmt(lip['min_distance'], 4)}; below "
             f"eps = {_fmt(g['separation_eps'], 4)} no two training points of different classes conflict).")
    icd = g["inter_class_distance"]
    if icd.get("available"):
        L.append(f"- Inter-class distance ({icd['norm']}): {_fmt(icd['value'], 4)}.")
    else:
        L.append(f"- Inter-class distance: not computed ({icd['reason']}).")
    L.append("")
    L += _md_multiclass(rec)
    L += _md_concentration(rec)
    L.append("## Optimal losses per class pair (Bhagoji et al. 2021)")
    L.append("")
    L.append(f"Hardest pair: {hp[0]} vs {hp[1]} (largest 0-1 bound at eps = {rec['bounds']['selection_eps']:g}; "
             f"first {cfg['n_per_class']} training points per class).")
    L.append("")
    L.append("| pair | eps | points | edges | 0-1 bound | cross-entropy bound |")
    L.append("|---|---|---|---|---|---|")
    for r in rec["bounds"]["rows"]:
        L.append(f"| {r['pair'][0]}-{r['pair'][1]} | {r['eps']:g} | {r['n'][0]}+{r['n'][1]} | {r['num_edges']} | "
                 f"{_fmt(r['zero_one'], 4)} | {_fmt(r['cross_entropy'], 4)} |")
    L.append("")
    L += _md_models(rec)
    L += _md_definitions(rec)
    L.append(f"Settings: `{json.dumps(cfg)}`")
    L.append("")
    return "\n".join(L)


def plot_report(rec: dict, out_dir: str | Path) -> dict:
    """Write ``robust_error.png`` and ``pair_bounds.png`` for a report record; returns their paths.

    Raises:
      ValueError: ``rec`` is not a report record; ``out_dir`` is a file.
    """
    rec = _check_record(rec)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir: {str(out_dir)!r} is a file, not a folder")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    eps = np.asarray(rec["eps"], float)
    files = {}
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=100)
    c = rec["concentration"]
    nan2 = (float("nan"), float("nan"))
    adv = np.array([np.nan if r["adv_risk"] is None else r["adv_risk"] for r in c], float)  # invalid: not drawn
    lo = np.array([(r["adv_risk_ci"] or nan2)[0] for r in c], float)
    hi = np.array([(r["adv_risk_ci"] or nan2)[1] for r in c], float)
    ax.plot(eps, adv, "o--", color="tab:purple",
            label=f"concentration estimate h(α={c[0]['alpha']:g}, ε)")
    ax.fill_between(eps, lo, hi, color="tab:purple", alpha=0.15)
    mc = rec.get("multiclass")
    if mc:
        ax.plot(eps, [r["zero_one"] for r in mc["rows"]], "D-", color="black", lw=2,
                label=f"optimal 0-1 loss, all classes L*({mc['degree']}) (train, n = {mc['n']})")
    hp = rec["bounds"]["hardest_pair"]
    zb = [r["zero_one_bound"] for r in rec["table"]]
    ax.plot(eps, zb, "s--", color="gray", label=f"optimal 0-1 loss, pair {hp[0]} vs {hp[1]} (train)")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown"]
    for i, m in enumerate(rec["models"]):
        re = np.array([r["robust_error"] for r in m["robust"]])
        ci = np.array([r["robust_error_ci"] for r in m["robust"]])
        col = colors[i % len(colors)]
        ax.errorbar(eps, re, yerr=[re - ci[:, 0], ci[:, 1] - re], fmt="o-", color=col, capsize=3,
                    label=f"{m['name']} model: robust error (test)")
        ce = np.array([np.nan if r.get("certified_error") is None else r["certified_error"] for r in m["robust"]])
        if np.isfinite(ce).any():  # the band: attacked (lower edge) to certified (upper edge) robust error
            ax.fill_between(eps, re, ce, color=col, alpha=0.15)
            ax.plot(eps, ce, "v:", color=col, label=f"{m['name']} model: certified robust error "
                                                    f"({m['certification']['method']})")
    for f in rec["flags"]:
        ax.annotate("weak attack", (f["eps"], f["zero_one_bound"]), color="red", fontsize=8)
    ax.set_xlabel(f"ε ({rec['norm']})")
    ax.set_ylabel("robust error")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{rec['dataset']['train']['name']}: limits (dashed) beside achieved (solid)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    p = out / "robust_error.png"
    fig.savefig(p)
    plt.close(fig)
    files["robust_error_png"] = str(p)

    sel = rec["bounds"]["selection"]
    K = rec["dataset"]["train"]["num_classes"]
    M = np.full((K, K), np.nan)
    for r in sel:
        a, b = r["pair"]
        M[a, b] = M[b, a] = r["zero_one"]
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=100)
    im = ax.imshow(M, cmap="viridis", vmin=0.0)
    fig.colorbar(im, ax=ax, label="optimal 0-1 loss")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_title(f"optimal 0-1 loss per pair, ε = {rec['bounds']['selection_eps']:g}", fontsize=9)
    fig.tight_layout()
    p = out / "pair_bounds.png"
    fig.savefig(p)
    plt.close(fig)
    files["pair_bounds_png"] = str(p)
    return files
