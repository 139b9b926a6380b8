"""The robustness report: limits from the data beside what trained models reach.

:func:`report` answers, for one dataset, one norm and a grid of budgets
``eps``, the question "how robust could any classifier be on these data, and
how far are real models from it?". For each ``eps`` it gathers

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
  lower bounds for *every* two-class classifier of that sample. By default the
  hardest pair (largest 0-1 bound at the largest ``eps``) is reported; all 45
  pairs with ``pairs="all"``.
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

Output (``out_dir``): ``report.json`` (every number, the settings and the
definitions), ``report.md`` (tables and definitions), ``robust_error.png``
(robust error versus ``eps``: the limits beside the achieved errors, with
intervals) and ``pair_bounds.png`` (the 0-1 bound of every class pair that was
computed, at the largest ``eps``). Every stage writes an atomic JSON file under
``out_dir/stages/`` named by a fingerprint of its inputs and settings; a rerun
with the same settings skips finished stages (an interrupted report resumes).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxbound import _checks
from jaxbound._io import atomic_write_bytes, atomic_write_json, fingerprint, to_jsonable

__all__ = [
    "DEFAULT_EPS",
    "Report",
    "report",
    "parse_eps",
    "default_eps",
    "load_callable",
    "load_model",
    "save_model",
    "restrict_to_pair",
    "weak_attack_check",
    "render_markdown",
    "plot_report",
]

#: Default budget grids per norm for data in ``[0, 1]``. On the digits (8x8,
#: 16 grey levels) the smallest distance between two training images of
#: different classes is 0.4375 (l_inf) and 1.22 (l2), so the 0-1 bounds start
#: above zero inside these grids.
DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3, 0.4), "l2": (0.5, 1.0, 1.5, 2.0), "l1": (2.0, 4.0, 6.0, 8.0)}

_SCHEMA_VERSION = 1

DEFINITIONS = {
    "robust_error": "fraction of test points misclassified or moved to a wrong class by the attack within eps "
                    "(1 - robust accuracy; clean errors count as failures)",
    "concentration_adv_risk": "Mahloujifar et al. 2019: adversarial risk mu(E_eps) of the error region E with "
                              "mu(E) >= alpha found by the search, measured on held-out data; estimates the "
                              "concentration function h(mu, alpha, eps), the lowest robust error of any classifier "
                              "whose error is >= alpha (an estimate from above of an infimum, not a certified bound)",
    "intrinsic_robustness": "1 - concentration_adv_risk: estimated highest robust accuracy of any classifier "
                            "with error >= alpha",
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


def save_model(folder: str | Path, *, arch: str, num_classes: int, widen_factor: float | None, input_shape,
               params: Any, record: dict | None = None) -> Path:
    """Write a trained model as ``model.json`` (architecture) + ``model.msgpack`` (parameters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = _build_module(arch, num_classes, widen_factor)
    _params_io(folder / "model.msgpack", module, tuple(input_shape), params=params)
    spec = {"arch": arch, "num_classes": int(num_classes), "widen_factor": widen_factor,
            "input_shape": [int(s) for s in input_shape], "record": record or {}}
    atomic_write_json(folder / "model.json", spec)
    return folder


def load_model(path: str | Path, name: str = "model") -> Callable:
    """A logits function from a folder written by :func:`save_model` (``jaxbound train --out``)
    or from an import path ``"module:function"`` (:func:`load_callable`)."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not (p / "model.json").is_file() or not (p / "model.msgpack").is_file():
            raise ValueError(f"{name}: folder {str(p)!r} has no model.json and model.msgpack "
                             "(written by 'jaxbound train --out')")
        from jaxbound import models

        spec = json.loads((p / "model.json").read_text())
        module = _build_module(spec["arch"], spec["num_classes"], spec.get("widen_factor"))
        params = _params_io(p / "model.msgpack", module, tuple(spec["input_shape"]))
        return models.logits_fn(module, params)
    return load_callable(str(path), name)


def restrict_to_pair(logits_fn: Callable, a: int, b: int) -> Callable:
    """``x -> logits[:, [a, b]]``: the model's prediction restricted to two classes (label 0 = ``a``)."""
    idx = np.array([a, b], dtype=np.int32)

    def fn(x):
        return logits_fn(x)[:, idx]

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


# ---------------------------------------------------------------------------
# Stages (resumable)
# ---------------------------------------------------------------------------


class _Stages:
    """Atomic JSON per stage under ``out_dir/stages/``, named by a fingerprint of the stage's inputs."""

    def __init__(self, out_dir: Path, base: str, resume: bool):
        self.dir = out_dir / "stages"
        self.base = base
        self.resume = resume
        self.skipped: list[str] = []
        self.ran: list[str] = []
        self.seconds: dict[str, float] = {}

    def path(self, name: str, *config: Any, suffix: str = ".json") -> Path:
        fp = fingerprint(self.base, name, *config)[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.dir / f"{safe}-{fp}{suffix}"

    def run(self, name: str, config: Any, fn: Callable[[], Any]) -> Any:
        p = self.path(name, config)
        if self.resume and p.is_file():
            try:
                out = json.loads(p.read_text())
                self.skipped.append(name)
                return out
            except json.JSONDecodeError:  # a foreign or damaged file: recompute
                pass
        t0 = time.perf_counter()
        out = to_jsonable(fn())
        atomic_write_json(p, out)
        self.ran.append(name)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
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


def _load_datasets(dataset, data_dir, test_split, limit, test_limit):
    from jaxbound import data

    if isinstance(dataset, str):
        tr = data.load(dataset, split="train", data_dir=data_dir)
        te = data.load(dataset, split=test_split, data_dir=data_dir)
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2 and all(isinstance(d, data.Dataset) for d in dataset):
        tr, te = dataset
    else:
        raise ValueError("dataset: expected a dataset name or a (train, test) pair of jaxbound.data.Dataset")
    if limit is not None:
        limit = _checks.check_int(limit, "limit", low=2)
        tr = tr.subset(np.arange(min(limit, len(tr))))
    if test_limit is not None:
        test_limit = _checks.check_int(test_limit, "test_limit", low=2)
        te = te.subset(np.arange(min(test_limit, len(te))))
    for nm, ds in (("dataset", tr), ("dataset", te)):
        if len(ds) < 2:
            raise ValueError(f"{nm}: split {ds.split!r} has fewer than 2 examples")
        imgs = ds.images
        if not np.all(np.isfinite(imgs)) or imgs.min() < 0 or imgs.max() > 1:
            raise ValueError(f"{nm}: pixels of {ds.name}/{ds.split} must be finite and in [0, 1]")
    if tr.shape != te.shape:
        raise ValueError(f"dataset: train and test shapes differ ({tr.shape} vs {te.shape})")
    return tr, te


def _geometry_stage(tr, norm, progress):
    from jaxbound import metrics

    out = {}
    lip = metrics.dataset_lipschitz(tr.flat(), tr.labels, norm=norm, progress=progress)
    out["lipschitz"] = lip.to_dict()
    out["separation_eps"] = lip.min_distance / 2.0
    try:
        from jaxbound.shift import inter_class_distance
    except ImportError as exc:  # issue 7 not merged
        out["inter_class_distance"] = {"available": False,
                                       "reason": f"jaxbound.shift.inter_class_distance is not available ({exc})"}
    else:
        icd = inter_class_distance(tr.flat(), tr.labels, norm=norm)
        out["inter_class_distance"] = {"available": True, "value": float(icd.value),
                                       "per_class": np.asarray(icd.per_class, dtype=float).tolist(), "norm": str(norm)}
    return out


def _concentration_stage(key, tr, te, *, norm, eps, alpha, n_regions, n_repeats, protocol, select_size, name):
    import jax

    from jaxbound import concentration as C

    splits = C.make_splits(key, tr.flat(), te.flat(), protocol=protocol, select_size=select_size)
    k_fit = jax.random.fold_in(key, 1)
    t0 = time.perf_counter()
    n_fit = splits.fit.shape[0]
    if norm == "linf":
        kk = min(50, n_fit - 1)
        recs, _ = C.run_rectangles(k_fit, splits, alpha=alpha, eps=eps, n_regions=list(n_regions),
                                   n_repeats=n_repeats, dataset=name, k=kk)
    elif norm == "l2":
        recs, _ = C.run_balls(splits, alpha=alpha, eps=eps, n_regions=list(n_regions), dataset=name,
                              list_size=min(2048, n_fit - 1))
    else:
        recs, _ = C.run_halfspace(splits, alpha=alpha, eps=eps, norm=norm, dataset=name)
    rep = recs[-1]  # the report split (test for the paper protocol)
    lo, hi = (float(v) for v in rep.adv_risk_ci)
    return {
        "eps": float(eps), "method": rep.method, "norm": rep.norm, "alpha": float(alpha), "T": int(rep.T),
        "q": rep.q, "protocol": rep.protocol, "split": rep.split, "n": int(rep.n),
        "risk": float(rep.risk), "risk_ci": [float(v) for v in rep.risk_ci],
        "adv_risk": float(rep.adv_risk), "adv_risk_ci": [lo, hi], "adv_risk_std": float(rep.adv_risk_std),
        "adv_rule": rep.adv_rule,
        "intrinsic_robustness": 1.0 - float(rep.adv_risk), "intrinsic_robustness_ci": [1.0 - hi, 1.0 - lo],
        "risk_feasible": bool(rep.risk >= alpha),
        "splits": splits.to_dict(),
        "all_splits": [{"split": r.split, "n": r.n, "risk": r.risk, "adv_risk": r.adv_risk} for r in recs],
        "seconds": time.perf_counter() - t0,
    }


def _pair_points(tr, a, b, n_per_class):
    from jaxbound import data

    na, nb = int((tr.labels == a).sum()), int((tr.labels == b).sum())
    n = None if n_per_class is None else min(n_per_class, na, nb)
    return data.class_pair(tr, a, b, n_per_class=n)


def _bound_stage(tr, a, b, *, norm, eps, n_per_class):
    from jaxbound import bounds

    xa, xb = _pair_points(tr, a, b, n_per_class)
    t0 = time.perf_counter()
    g = bounds.conflict_graph(xa, xb, eps=eps, norm=norm)
    z = bounds.min_zero_one_loss(g)
    o = bounds.optprob(g)
    ver = o.verify()
    return {"pair": [int(a), int(b)], "eps": float(eps), "n": [int(xa.shape[0]), int(xb.shape[0])],
            "num_edges": g.num_edges, "zero_one": float(z.loss), "cross_entropy": float(o.loss),
            "verified": bool(ver.passed and z.verify().passed), "seconds": time.perf_counter() - t0}


def _accepts_widen(arch) -> bool:
    from jaxbound import models

    cls = models._REGISTRY.get(str(arch).lower())
    return cls is not None and "widen_factor" in getattr(cls, "__dataclass_fields__", {})


def _resolve_widen(arch, widen_factor):
    """``"auto"``: 0.5 for architectures with a widen factor, else their default."""
    if isinstance(widen_factor, str):
        if widen_factor != "auto":
            raise ValueError(f"widen_factor: expected a number, None or 'auto', got {widen_factor!r}")
        return 0.5 if _accepts_widen(arch) else None
    if widen_factor is not None and not _accepts_widen(arch):
        raise ValueError(f"widen_factor: architecture {arch!r} has no widen factor")
    return widen_factor


def _build_module(arch, num_classes, widen_factor):
    from jaxbound import models

    kw = {"num_classes": int(num_classes)}
    if widen_factor is not None:
        kw["widen_factor"] = float(widen_factor)
    return models.create(arch, **kw)


def _params_io(path: Path, module, shape, params=None):
    import jax
    from flax import serialization

    from jaxbound import models

    if params is not None:
        atomic_write_bytes(path, serialization.to_bytes(params))
        return params
    template = models.init_params(module, jax.random.key(0), shape)
    return serialization.from_bytes(template, path.read_bytes())


def _train_model(key, stages, recipe, tr, te, *, arch, widen_factor, epochs, batch_size, learning_rate, train_eps,
                 norm, attack_steps, progress):
    """Train (or reload) one model; returns (logits_fn, train_record)."""
    from jaxbound import models

    module = _build_module(arch, tr.num_classes, widen_factor)
    cfg = {"recipe": recipe, "arch": arch, "widen_factor": widen_factor, "epochs": epochs, "batch_size": batch_size,
           "learning_rate": learning_rate, "eps": train_eps if recipe != "standard" else None,
           "norm": str(norm), "attack_steps": attack_steps, "key": np.asarray(__import__("jax").random.key_data(key))}
    ppath = stages.path(f"model-{recipe}", cfg, suffix=".msgpack")
    rpath = stages.path(f"model-{recipe}", cfg, suffix=".json")
    if stages.resume and ppath.is_file() and rpath.is_file():
        params = _params_io(ppath, module, tr.shape)
        stages.skipped.append(f"train {recipe}")
        return models.logits_fn(module, params), json.loads(rpath.read_text())
    from jaxbound import training

    n_ev = min(200, len(te))
    kw = dict(recipe=recipe, epochs=epochs, batch_size=min(batch_size, len(tr)), learning_rate=learning_rate,
              progress=progress, checkpoint_dir=str(ppath.with_suffix(".ckpt")),
              eval_data=(te.images[:n_ev], te.labels[:n_ev]), eval_steps=max(1, attack_steps))
    if recipe != "standard":
        kw.update(eps=train_eps, norm=norm, attack_steps=attack_steps)
    t0 = time.perf_counter()
    res = training.train(key, module, (tr.images, tr.labels), **kw)
    seconds = time.perf_counter() - t0
    stages.seconds[f"train {recipe}"] = seconds
    rec = {"recipe": recipe, "arch": arch, "widen_factor": widen_factor, "train_seconds": seconds,
           "steps": int(res.steps), "train": _safe_dict(res), "settings": {k: v for k, v in cfg.items() if k != "key"}}
    _params_io(ppath, module, tr.shape, params=res.params)
    atomic_write_json(rpath, rec)
    import shutil

    shutil.rmtree(ppath.with_suffix(".ckpt"), ignore_errors=True)  # the parameters are saved
    stages.ran.append(f"train {recipe}")
    return models.logits_fn(module, res.params), to_jsonable(rec)


def _safe_dict(res) -> dict:
    try:
        d = res.to_dict()
    except Exception as exc:  # a partial TrainResult: keep the report going
        return {"error": f"to_dict failed: {exc}"}
    return to_jsonable(d)


def _evaluate_model(key, logits_fn, te, *, norm, eps, attack_steps, attack_restarts):
    from jaxbound import metrics

    x, y = te.images, te.labels
    n = len(te)
    curve = metrics.robust_error_curve(logits_fn, x, y, key=key, eps=np.asarray(eps, np.float32), norm=norm,
                                       steps=attack_steps, restarts=attack_restarts)
    clean_err = float(curve.clean_error)
    k_clean = int(round(clean_err * n))
    rows = []
    for e, r in zip(eps, curve.robust_error):
        k = int(round(float(r) * n))
        rows.append({"eps": float(e), "robust_error": float(r), "robust_accuracy": 1.0 - float(r),
                     "robust_error_ci": list(_clopper(k, n))})
    return {"n": n, "clean_accuracy": 1.0 - clean_err, "clean_error": clean_err,
            "clean_error_ci": list(_clopper(k_clean, n)), "robust": rows,
            "attack": {"name": "pgd", "norm": str(norm), "steps": int(attack_steps), "restarts": int(attack_restarts),
                       "step_size": "2.5 eps / steps", "random_start": True, "bounds": [0.0, 1.0]}}


def _self_check(key, logits_fn, tr, pair, bound_rows, *, norm, eps, n_per_class, attack_steps, attack_restarts,
                check_per_class=None):
    from jaxbound import bounds, metrics

    a, b = pair
    xa, xb = _pair_points(tr, a, b, n_per_class)
    if check_per_class is not None and max(len(xa), len(xb)) > check_per_class:
        # a smaller sample for the attack: its own optimal 0-1 loss (the bound of the sample attacked)
        xa, xb = xa[:check_per_class], xb[:check_per_class]
        bound_rows = [{"eps": float(e), "zero_one": bounds.min_zero_one_loss(
            bounds.conflict_graph(xa, xb, eps=e, norm=norm)).loss} for e in eps]
    x = np.concatenate([xa, xb])
    y = np.concatenate([np.zeros(len(xa), np.int64), np.ones(len(xb), np.int64)])
    fn = restrict_to_pair(logits_fn, a, b)
    curve = metrics.robust_error_curve(fn, x, y, key=key, eps=np.asarray(eps, np.float32), norm=norm,
                                       steps=attack_steps, restarts=attack_restarts)
    out = []
    for e, r in zip(eps, curve.robust_error):
        zb = next(row for row in bound_rows if abs(row["eps"] - e) < 1e-12)["zero_one"]
        weak = weak_attack_check(float(r), zb, n=len(y))
        out.append({"pair": [int(a), int(b)], "eps": float(e), "n": int(len(y)), "attacked_robust_error": float(r),
                    "zero_one_bound": float(zb), "weak_attack": weak})
    return out


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def report(
    dataset: Any = "digits",
    *,
    norm: Any = "linf",
    eps: Any = None,
    out_dir: str | Path = "jaxbound_report",
    data_dir: str | None = None,
    test_split: str = "test",
    limit: int | None = None,
    test_limit: int | None = None,
    alpha: float = 0.01,
    n_regions: Sequence[int] = (5, 10),
    n_repeats: int = 5,
    protocol: str = "honest",
    select_size: int | None = None,
    pairs: str = "hardest",
    n_per_class: int | None = 1000,
    models: Sequence[str] = ("standard", "pgd"),
    model: Any = None,
    model_name: str = "user",
    arch: str = "lenet5",
    widen_factor: float | None | str = "auto",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    train_eps: float | None = None,
    train_attack_steps: int = 7,
    attack_steps: int = 20,
    attack_restarts: int = 1,
    eval_limit: int | None = 1000,
    self_check: bool = True,
    check_per_class: int | None = 200,
    seed: int = 0,
    figures: bool = True,
    resume: bool = True,
    progress: bool = True,
) -> Report:
    """Limits of robustness on a dataset beside what models reach (see the module docstring).

    Args:
      dataset: ``"digits"`` (embedded), ``"mnist"``, ``"fashion_mnist"``,
        ``"tfds:<name>"``, or a ``(train, test)`` pair of
        :class:`jaxbound.data.Dataset`.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (attacks support these three).
      eps: budgets (a sequence or ``"0.1,0.2"``); default :data:`DEFAULT_EPS`.
      out_dir: output folder (created).
      data_dir: folder of the IDX files / tensorflow-datasets data.
      test_split: held-out split name.
      limit: use only the first ``limit`` training examples.
      test_limit: use only the first ``test_limit`` held-out examples
        (concentration's select/report splits).
      alpha: risk threshold of the concentration search (the paper: 0.01).
      n_regions: candidate numbers of boxes/balls ``T`` (chosen on the select split).
      n_repeats: repeats of the box search (l_inf).
      protocol: ``"honest"`` (fit on train, select on half the held-out points,
        report on the other half) or ``"paper"`` (select and report on all).
      select_size: held-out points used for selection (honest protocol).
      pairs: ``"hardest"`` or ``"all"`` (the 0-1/cross-entropy bounds per class pair).
      n_per_class: first points of each class forming a pair's sample
        (Bhagoji's protocol); ``None`` for all.
      models: recipes of :func:`jaxbound.training.train` to train on the spot
        (``()`` for none).
      model: a user's logits function ``x [n, H, W, C] -> logits [n, K]``, or
        its import path ``"module:function"`` (see :func:`load_callable`).
      model_name: the name the user's model gets in the tables.
      arch, widen_factor: registered architecture of the trained models and
        its widen factor (``"auto"``: 0.5 where the architecture has one;
        ``None``: the architecture's default).
      epochs, batch_size, learning_rate: training settings.
      train_eps: budget of adversarial training (default: the middle budget
        of the grid, ``eps[(len(eps) - 1) // 2]``).
      train_attack_steps: PGD steps inside adversarial training.
      attack_steps, attack_restarts: PGD settings of the evaluation and the
        self-check (step ``2.5 eps / steps``, random start, images kept in [0, 1]).
      eval_limit: models are evaluated on the first ``eval_limit`` held-out
        points (``None``: all).
      self_check: run the weak-attack check on the reported pairs.
      check_per_class: the check attacks the first ``check_per_class`` points
        of each class of the pair (``None``: the whole pair sample), compared
        with the optimal 0-1 loss of exactly that sample.
      seed: seed of every random choice.
      figures: write the PNG figures.
      resume: reuse finished stages under ``out_dir/stages``.
      progress: progress bars.

    Returns:
      :class:`Report`. ``report.json`` holds ``schema``, ``config``,
      ``dataset``, ``definitions``, ``eps``, ``norm``, ``geometry``,
      ``concentration`` (one row per eps), ``bounds`` (``hardest_pair``,
      ``selection``, ``rows``), ``models`` (clean and robust errors with
      intervals, training records, ``self_check`` rows), ``table`` (one row per
      eps), ``flags`` and ``seconds``.
    """
    import jax
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    norm_c = _checks.canonical_norm(norm)
    if norm_c not in ("l1", "l2", "linf"):
        raise ValueError(f"norm: the report supports 'l1', 'l2' and 'linf', got {norm!r}")
    eps_t = default_eps(norm_c) if eps is None else parse_eps(eps)
    alpha = _checks.check_probability(alpha, "alpha")
    n_regions = [_checks.check_int(t, "n_regions", low=1) for t in
                 ([n_regions] if isinstance(n_regions, (int, np.integer)) else list(n_regions))]
    if not n_regions:
        raise ValueError("n_regions: give at least one T")
    n_repeats = _checks.check_int(n_repeats, "n_repeats", low=1)
    if protocol not in ("honest", "paper"):
        raise ValueError(f"protocol: must be 'honest' or 'paper', got {protocol!r}")
    if pairs not in ("hardest", "all"):
        raise ValueError(f"pairs: must be 'hardest' or 'all', got {pairs!r}")
    if n_per_class is not None:
        n_per_class = _checks.check_int(n_per_class, "n_per_class", low=1)
    models = tuple(models or ())
    for r in models:
        if r not in ("standard", "pgd", "trades"):
            raise ValueError(f"models: unknown training recipe {r!r}; use standard, pgd or trades")
    epochs = _checks.check_int(epochs, "epochs", low=1)
    batch_size = _checks.check_int(batch_size, "batch_size", low=1)
    attack_steps = _checks.check_int(attack_steps, "attack_steps", low=1)
    train_attack_steps = _checks.check_int(train_attack_steps, "train_attack_steps", low=1)
    attack_restarts = _checks.check_int(attack_restarts, "attack_restarts", low=1)
    if eval_limit is not None:
        eval_limit = _checks.check_int(eval_limit, "eval_limit", low=1)
    if check_per_class is not None:
        check_per_class = _checks.check_int(check_per_class, "check_per_class", low=1)
    seed = _checks.check_int(seed, "seed", low=0)
    if models and arch.lower() not in __import__("jaxbound.models", fromlist=["available"]).available():
        raise ValueError(f"arch: unknown architecture {arch!r}")
    widen_factor = _resolve_widen(arch, widen_factor)
    if train_eps is None:
        train_eps = eps_t[(len(eps_t) - 1) // 2]
    train_eps = _checks.check_scalar(train_eps, "train_eps", low=0.0)
    user_fn = None
    if model is not None:
        user_fn = load_callable(model) if isinstance(model, str) else model
        if not callable(user_fn):
            raise ValueError(f"model: expected a logits function or 'module:function', got {model!r}")
    tr, te = _load_datasets(dataset, data_dir, test_split, limit, test_limit)
    name = tr.name or "data"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = fingerprint(tr.images, tr.labels, te.images, te.labels, str(norm_c), seed)
    stages = _Stages(out, base, resume)
    key = jax.random.key(seed)
    k_conc, k_train, k_eval, k_check = jax.random.split(key, 4)
    te_eval = te if eval_limit is None else te.subset(np.arange(min(eval_limit, len(te))))

    config = {"dataset": name, "norm": norm_c, "eps": list(eps_t), "alpha": alpha, "n_regions": n_regions,
              "n_repeats": n_repeats, "protocol": protocol, "select_size": select_size, "pairs": pairs,
              "n_per_class": n_per_class, "models": list(models), "user_model": None if model is None else
              (model if isinstance(model, str) else getattr(model, "__name__", "callable")),
              "arch": arch, "widen_factor": widen_factor, "epochs": epochs, "batch_size": batch_size,
              "learning_rate": learning_rate, "train_eps": train_eps, "train_attack_steps": train_attack_steps,
              "attack_steps": attack_steps, "attack_restarts": attack_restarts, "eval_limit": eval_limit,
              "check_per_class": check_per_class,
              "limit": limit, "test_limit": test_limit, "test_split": test_split, "seed": seed}

    pairs_all = [(a, b) for a in range(tr.num_classes) for b in range(a + 1, tr.num_classes)
                 if (tr.labels == a).any() and (tr.labels == b).any()]
    if not pairs_all:
        raise ValueError("dataset: the training split needs at least two classes")
    n_model = len(models) + (user_fn is not None)
    total = 1 + len(eps_t) + (len(pairs_all) + len(eps_t)) + 2 * n_model
    bar = tqdm(total=total, desc="jaxbound report", disable=not progress, leave=False)

    def step(label):
        bar.set_postfix_str(label, refresh=True)

    # 1. geometry
    step("geometry")
    geom = stages.run("geometry", {}, lambda: _geometry_stage(tr, norm_c, False))
    bar.update(1)

    # 2. concentration, one stage per eps
    conc = []
    for e in eps_t:
        step(f"concentration eps={e:g}")
        cfg = {"eps": e, "alpha": alpha, "T": n_regions, "repeats": n_repeats, "protocol": protocol,
               "select_size": select_size}
        conc.append(stages.run("concentration", cfg, lambda e=e: _concentration_stage(
            k_conc, tr, te, norm=norm_c, eps=e, alpha=alpha, n_regions=n_regions, n_repeats=n_repeats,
            protocol=protocol, select_size=select_size, name=name)))
        bar.update(1)

    # 3. optimal bounds: every pair at the largest eps (hardest pair), then the chosen pairs at every eps
    e_max = eps_t[-1]
    selection = []
    for a, b in pairs_all:
        step(f"bounds pair {a}-{b} eps={e_max:g}")
        selection.append(stages.run("bound", {"pair": [a, b], "eps": e_max, "n_per_class": n_per_class},
                                    lambda a=a, b=b: _bound_stage(tr, a, b, norm=norm_c, eps=e_max,
                                                                  n_per_class=n_per_class)))
        bar.update(1)
    hardest = max(selection, key=lambda r: (r["zero_one"], r["cross_entropy"], -r["pair"][0], -r["pair"][1]))
    chosen = pairs_all if pairs == "all" else [tuple(hardest["pair"])]
    bound_rows = []
    for e in eps_t:
        step(f"bounds eps={e:g}")
        for a, b in chosen:
            bound_rows.append(stages.run("bound", {"pair": [a, b], "eps": e, "n_per_class": n_per_class},
                                         lambda a=a, b=b, e=e: _bound_stage(tr, a, b, norm=norm_c, eps=e,
                                                                            n_per_class=n_per_class)))
        bar.update(1)

    # 4. models: train (or load) and evaluate; self-check on the chosen pairs
    model_recs = []
    entries: list[tuple[str, str, Any]] = [(r, "trained", None) for r in models]
    if user_fn is not None:
        entries.append((model_name, "user", user_fn))
    for i, (mname, source, fn) in enumerate(entries):
        step(f"model {mname}")
        train_rec = None
        if source == "trained":
            fn, train_rec = _train_model(jax.random.fold_in(k_train, i), stages, mname, tr, te_eval, arch=arch,
                                         widen_factor=widen_factor, epochs=epochs, batch_size=batch_size,
                                         learning_rate=learning_rate, train_eps=train_eps, norm=norm_c,
                                         attack_steps=train_attack_steps, progress=progress)
            mfp = {"train": train_rec.get("settings"), "recipe": mname}
        else:
            mfp = {"user": config["user_model"], "probe": np.asarray(fn(te.images[:4]), np.float64)}
        bar.update(1)
        step(f"evaluate {mname}")
        ev_cfg = {"model": mfp, "eps": list(eps_t), "steps": attack_steps, "restarts": attack_restarts,
                  "eval_limit": eval_limit}
        ev = stages.run("evaluate", ev_cfg, lambda fn=fn: _evaluate_model(
            k_eval, fn, te_eval, norm=norm_c, eps=eps_t, attack_steps=attack_steps, attack_restarts=attack_restarts))
        checks = []
        if self_check:
            for a, b in chosen:
                rows_ab = [r for r in bound_rows if tuple(r["pair"]) == (a, b)]
                sc_cfg = dict(ev_cfg, pair=[a, b], n_per_class=n_per_class)
                if check_per_class is not None:
                    sc_cfg["check_per_class"] = check_per_class
                checks.extend(stages.run("self_check", sc_cfg,
                                         lambda fn=fn, a=a, b=b, rows_ab=rows_ab: _self_check(
                                             k_check, fn, tr, (a, b), rows_ab, norm=norm_c, eps=eps_t,
                                             n_per_class=n_per_class, attack_steps=attack_steps,
                                             attack_restarts=attack_restarts, check_per_class=check_per_class)))
        bar.update(1)
        model_recs.append({"name": mname, "source": source, "train": train_rec, **ev, "self_check": checks})
    bar.close()

    # 5. assemble
    hp = tuple(hardest["pair"])
    table = []
    for j, e in enumerate(eps_t):
        c = conc[j]
        hb = next(r for r in bound_rows if tuple(r["pair"]) == hp and abs(r["eps"] - e) < 1e-12)
        row = {"eps": e, "concentration_adv_risk": c["adv_risk"], "concentration_adv_risk_ci": c["adv_risk_ci"],
               "intrinsic_robustness": c["intrinsic_robustness"],
               "intrinsic_robustness_ci": c["intrinsic_robustness_ci"],
               "hardest_pair": list(hp), "zero_one_bound": hb["zero_one"], "cross_entropy_bound": hb["cross_entropy"]}
        if pairs == "all":
            row["max_zero_one_bound"] = max(r["zero_one"] for r in bound_rows if abs(r["eps"] - e) < 1e-12)
        for m in model_recs:
            mr = m["robust"][j]
            row[f"{m['name']}_robust_error"] = mr["robust_error"]
            row[f"{m['name']}_robust_error_ci"] = mr["robust_error_ci"]
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
    from jaxbound import __version__

    record = {
        "schema": _SCHEMA_VERSION,
        "jaxbound_version": __version__,
        "config": config,
        "dataset": {"train": tr.to_dict(), "test": te.to_dict(), "eval_n": len(te_eval)},
        "definitions": DEFINITIONS,
        "norm": norm_c,
        "eps": list(eps_t),
        "geometry": geom,
        "concentration": conc,
        "bounds": {"pairs": pairs, "hardest_pair": list(hp), "selection_eps": e_max,
                   "selection": selection, "rows": bound_rows},
        "models": model_recs,
        "table": table,
        "flags": flags,
        "stages": {"ran": stages.ran, "skipped": stages.skipped, "seconds": stages.seconds},
        "seconds": time.perf_counter() - t_start,
    }
    record = to_jsonable(record)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if figures:
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


def _format_table(rec: dict) -> str:
    names = [m["name"] for m in rec["models"]]
    hp = rec["bounds"]["hardest_pair"]
    head = ["eps", "conc. adv risk", "1-adv (intr. rob.)", f"0-1 bound {hp[0]}v{hp[1]}", f"CE bound {hp[0]}v{hp[1]}"]
    head += [f"{n} rob. err" for n in names]
    rows = []
    for r in rec["table"]:
        row = [f"{r['eps']:g}", _fmt(r["concentration_adv_risk"]), _fmt(r["intrinsic_robustness"]),
               _fmt(r["zero_one_bound"]), _fmt(r["cross_entropy_bound"])]
        row += [_fmt(r[f"{n}_robust_error"]) for n in names]
        rows.append(row)
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    return "\n".join(lines)


def render_markdown(rec: dict) -> str:
    """The ``report.md`` text of a report record."""
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
    head = ["eps", "concentration adv. risk [95% CI]", "intrinsic robustness", f"0-1 bound (pair {hp[0]} vs {hp[1]})",
            "cross-entropy bound"] + [f"{n}: robust error [95% CI]" for n in names]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for r in rec["table"]:
        cells = [f"{r['eps']:g}", f"{_fmt(r['concentration_adv_risk'])} {_ci(r['concentration_adv_risk_ci'])}",
                 _fmt(r["intrinsic_robustness"]), _fmt(r["zero_one_bound"]), _fmt(r["cross_entropy_bound"])]
        cells += [f"{_fmt(r[f'{n}_robust_error'])} {_ci(r[f'{n}_robust_error_ci'])}" for n in names]
        L.append("| " + " | ".join(cells) + " |")
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
    L.append("## Concentration (Mahloujifar et al. 2019)")
    L.append("")
    c0 = rec["concentration"][0]
    L.append(f"Method `{c0['method']}`, alpha = {c0['alpha']}, protocol `{c0['protocol']}` (reported on the "
             f"'{c0['split']}' split, n = {c0['n']}).")
    L.append("")
    L.append("| eps | T | q | risk | adv. risk [95% CI] | risk >= alpha on report split |")
    L.append("|---|---|---|---|---|---|")
    for c in rec["concentration"]:
        L.append(f"| {c['eps']:g} | {c['T']} | {_fmt(c['q'])} | {_fmt(c['risk'])} | {_fmt(c['adv_risk'])} "
                 f"{_ci(c['adv_risk_ci'])} | {'yes' if c['risk_feasible'] else 'no'} |")
    L.append("")
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
    if rec["models"]:
        L.append("## Models")
        L.append("")
        for m in rec["models"]:
            a = m["attack"]
            desc = f"{m['source']}"
            if m.get("train"):
                t = m["train"]
                desc += f", {t['arch']} (widen {t['widen_factor']}), recipe `{t['recipe']}`, {t['steps']} steps"
                if t["settings"].get("eps") is not None:
                    desc += f", training eps {t['settings']['eps']:g}"
            L.append(f"- **{m['name']}** ({desc}): clean accuracy {m['clean_accuracy']:.4f} on n = {m['n']}; "
                     f"attack PGD-{a['norm']} {a['steps']} steps x {a['restarts']} restart(s), step 2.5 eps/steps, "
                     f"random start, images kept in [0, 1].")
        L.append("")
    L.append("## Definitions")
    L.append("")
    for k, v in rec["definitions"].items():
        L.append(f"- `{k}`: {v}.")
    L.append("")
    files = rec.get("files", {})
    for k in ("robust_error_png", "pair_bounds_png"):
        if k in files:
            L.append(f"![{k}]({Path(files[k]).name})")
    L.append("")
    L.append(f"Settings: `{json.dumps(cfg)}`")
    L.append("")
    return "\n".join(L)


def plot_report(rec: dict, out_dir: str | Path) -> dict:
    """Write ``robust_error.png`` and ``pair_bounds.png`` for a report record; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    eps = np.asarray(rec["eps"], float)
    files = {}
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=100)
    c = rec["concentration"]
    adv = np.array([r["adv_risk"] for r in c])
    lo = np.array([r["adv_risk_ci"][0] for r in c])
    hi = np.array([r["adv_risk_ci"][1] for r in c])
    ax.plot(eps, adv, "o--", color="tab:purple",
            label=f"concentration estimate h(α={c[0]['alpha']:g}, ε)")
    ax.fill_between(eps, lo, hi, color="tab:purple", alpha=0.15)
    hp = rec["bounds"]["hardest_pair"]
    zb = [r["zero_one_bound"] for r in rec["table"]]
    ax.plot(eps, zb, "s--", color="black", label=f"optimal 0-1 loss, pair {hp[0]} vs {hp[1]} (train)")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown"]
    for i, m in enumerate(rec["models"]):
        re = np.array([r["robust_error"] for r in m["robust"]])
        ci = np.array([r["robust_error_ci"] for r in m["robust"]])
        col = colors[i % len(colors)]
        ax.errorbar(eps, re, yerr=[re - ci[:, 0], ci[:, 1] - re], fmt="o-", color=col, capsize=3,
                    label=f"{m['name']} model: robust error (test)")
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
