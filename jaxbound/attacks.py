"""Adversarial attacks as jitted, vmapped, sharded JAX functions.

Every attack takes a plain ``logits_fn(x [n, ...]) -> logits [n, k]`` (any
Flax model through :func:`jaxbound.models.logits_fn`, or any JAX function),
inputs ``x [n, ...]`` inside the declared ``bounds`` (default ``(0, 1)``;
``None`` removes the box), integer labels ``y [n]`` (``None``: the model's own
predictions) and, where random, an explicit keyword-only ``jax.random``
``key``. The gradient attacks (:func:`pgd`, :func:`fgm`, :func:`fgsm`,
:func:`minimal_adversarial_distance`) take their threat model and settings
as one :class:`AttackConfig` (``attack``), with single fields overridable by
keyword (``pgd(f, x, y, key=key, norm="linf", eps=0.3)``); the norm is never
defaulted. Norms, projections, steepest-ascent steps and random starts come
from :mod:`jaxbound.lp`; batching and sharding from the block engine.

Attacks (the papers' evaluation tools):

* :func:`fgm` / :func:`fgsm`: one-step fast gradient attacks (Goodfellow et
  al.; Finlay et al. 2019, eqs. 3.2-3.4) in ``linf``, ``l2`` or ``l1``.
* :func:`pgd`: projected gradient ascent (Madry et al.; the l-inf PGD of
  Ding et al. 2019 §3.2, PGD-l2 of Zhang et al. 2020 and Finlay et al.
  2019 §5) with random start, restarts, targeted mode, ``bounds=None`` (Ding
  et al. Table 7, "w/o bound") and a vector of budgets run vmapped, giving a
  ``[K, n]`` success matrix.
* :func:`carlini_wagner_l2`: the Carlini-Wagner l2 attack with a binary search
  on the constant ``c``; :func:`evasive_carlini_wagner` adds Finlay et al.'s
  (§7) penalty on the squared input-gradient norm to evade gradient-norm
  detection.
* :func:`boundary_attack`: the decision-based Boundary attack (Brendel et al.
  2018), l2.
* :func:`minimal_adversarial_distance`: per-example minimal adversarial
  distance by bisection over ``eps`` with PGD.

Conventions:

* ``success`` means misclassified (``argmax logits != y``; targeted:
  ``== y``). Gradient attacks keep, per example, the first successful iterate
  (over all steps and restarts); otherwise the iterate of highest attack loss.
  The clean point itself counts as an iterate of :func:`pgd` only without a
  random start.
* Randomness of example ``i`` depends only on ``(key, i)`` (``fold_in``), so
  results do not change with the batch size, the number of devices or
  padding.
* Concrete inputs are cut into batches of ``batch_size`` examples, each split
  over all local devices with ``jax.shard_map``; outputs are then NumPy arrays
  on the host. Traced inputs (calling an attack inside ``jax.jit``) run the
  same kernel directly and return JAX arrays.
* Integer settings (``steps``, ``restarts``, ...) are static: changing them
  recompiles. ``logits_fn`` is a static argument hashed by identity: reuse
  the same function object to reuse compiled kernels.
* ``logits_fn`` must treat examples independently (no batch statistics).
* Multi-core CPUs: JAX shows one CPU device by default and XLA spreads one
  device's work poorly over cores. Setting
  ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` before JAX
  starts gives one device per core, and every attack then splits its batches
  over them (``benchmarks/attacks.py`` measures both settings).

References:
  Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial
  examples." ICLR 2015, arXiv:1412.6572.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
  Carlini, Wagner. "Towards evaluating the robustness of neural networks."
  IEEE S&P 2017, arXiv:1608.04644.
  Brendel, Rauber, Bethge. "Decision-based adversarial attacks: reliable
  attacks against black-box machine learning models." ICLR 2018,
  arXiv:1712.04248.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
  networks generalize and are adversarially robust." arXiv:1808.09540.
  Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of image
  distributions using conditional generative models." AISTATS 2020,
  arXiv:2003.00378.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxbound import _checks, _engine, _io, lp
from jaxbound._io import to_jsonable

__all__ = [
    "cross_entropy",
    "AttackConfig",
    "attack_config",
    "AttackResult",
    "MinimalDistance",
    "fgm",
    "fgsm",
    "pgd",
    "carlini_wagner_l2",
    "evasive_carlini_wagner",
    "boundary_attack",
    "minimal_adversarial_distance",
    "predict",
    "perturbation_norms",
    "margin",
    "example_keys",
    "jacobian_norm",
    "dlr_loss",
    "apgd_checkpoints",
    "apgd",
    "fab",
    "square",
    "AUTOATTACK_ATTACKS",
    "AutoAttackResult",
    "autoattack",
]

_LOSSES = ("ce", "margin")
_DEFAULT_BATCH = 512
_TINY = 1e-12


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


class AttackResult(NamedTuple):
    """Outcome of an attack on ``n`` examples (leading ``[K]`` axis for a vector of eps).

    Attributes:
      x_adv: ``[n, ...]`` adversarial inputs (the input itself where nothing
        better was found by minimum-norm attacks).
      success: ``[n]`` bool, misclassified (targeted: classified as the target).
      logits: ``[n, k]`` logits at ``x_adv``.
      l1: ``[n]`` ``||x_adv - x||_1``.
      l2: ``[n]`` ``||x_adv - x||_2``.
      linf: ``[n]`` ``||x_adv - x||_inf``.
    """

    x_adv: Any
    success: Any
    logits: Any
    l1: Any
    l2: Any
    linf: Any

    def norm(self, norm: Any) -> Any:
        """Perturbation norms ``[n]`` in ``"l1" | "l2" | "linf"``."""
        n = _checks.check_attack_norm(norm)
        return {"l1": self.l1, "l2": self.l2, "linf": self.linf}[n]

    @property
    def success_rate(self) -> Any:
        """Fraction of successful examples (``[K]`` for a vector of eps)."""
        s = np.asarray(self.success)
        return s.mean(axis=-1) if s.shape[-1] else np.full(s.shape[:-1], np.nan)

    def to_dict(self, *, include_x_adv: bool = False) -> dict:
        """JSON-ready summary: success, predictions and norms per example."""
        out = {
            "n": int(np.asarray(self.success).shape[-1]),
            "success_rate": to_jsonable(self.success_rate),
            "success": to_jsonable(np.asarray(self.success)),
            "prediction": to_jsonable(np.asarray(self.logits).argmax(-1)),
            "l1": to_jsonable(self.l1),
            "l2": to_jsonable(self.l2),
            "linf": to_jsonable(self.linf),
        }
        if include_x_adv:
            out["x_adv"] = to_jsonable(self.x_adv)
        return out


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The threat model and the settings of a gradient attack (PGD, FGM, the evaluation of every model).

    One frozen, hashable object that :func:`pgd`, :func:`fgm`,
    :func:`minimal_adversarial_distance`, :mod:`jaxbound.metrics`,
    :func:`jaxbound.training.train`, :func:`jaxbound.report.report` and
    :func:`jaxbound.shift.sensitivity_sweep` all take, so that every default
    lives here. Fields are validated in ``__post_init__`` with errors that
    name the field; :meth:`replace` returns a checked copy.

    Attributes:
      norm: threat-model norm, ``"linf" | "l2" | "l1"`` (no default: a
        threat model is always stated).
      eps: budget ``>= 0``: a number, or a tuple of numbers (a vector of
        budgets, run vmapped).
      steps: gradient steps per restart.
      step_size: step length, a number or one per budget; ``None`` takes
        ``2.5 * eps / steps`` (Madry et al.).
      restarts: independent random restarts (the best one is kept).
      random_start: start from a uniform point of the ``eps`` ball.
      bounds: ``(low, high)`` input box, or ``None`` for no box.
      loss: attack objective, ``"ce"`` (cross-entropy) or ``"margin"``
        (Carlini-Wagner margin).
      targeted: move towards the labels given instead of away from them.
      l1_fraction: fraction of coordinates moved by one sparse ℓ1 step.

    References:
      Madry et al. "Towards deep learning models resistant to adversarial
      attacks." ICLR 2018, arXiv:1706.06083.
    """

    norm: Any = dataclasses.field(metadata={"help": "threat-model norm: linf, l2 or l1"})
    eps: Any = dataclasses.field(metadata={"help": "attack budget (pixels in [0, 1])"})
    steps: int = dataclasses.field(default=40, metadata={"help": "gradient steps per restart"})
    step_size: Any = dataclasses.field(default=None, metadata={"help": "step length (default 2.5 eps / steps)"})
    restarts: int = dataclasses.field(default=1, metadata={"help": "random restarts"})
    random_start: bool = dataclasses.field(default=True, metadata={"help": "start from a random point of the ball"})
    bounds: Any = dataclasses.field(default=(0.0, 1.0), metadata={"help": "input box (low, high) or None"})
    loss: str = dataclasses.field(default="ce", metadata={"help": "attack loss: ce or margin"})
    targeted: bool = dataclasses.field(default=False, metadata={"help": "targeted attack"})
    l1_fraction: float = dataclasses.field(default=0.05, metadata={"help": "fraction of coordinates per l1 step"})

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("norm", _checks.check_attack_norm(self.norm))
        eps_k, vector = _checks.check_eps(self.eps)
        put("eps", tuple(float(e) for e in eps_k) if vector else float(eps_k[0]))
        put("steps", _checks.check_int(self.steps, "steps", low=1))
        if self.step_size is not None:
            st = _checks.check_step(self.step_size, eps_k, self.steps)
            vec = np.ndim(self.step_size) == 1
            put("step_size", tuple(float(s) for s in st) if vec else float(st[0]))
        put("restarts", _checks.check_int(self.restarts, "restarts", low=1))
        for name in ("random_start", "targeted"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")
            put(name, bool(getattr(self, name)))
        put("bounds", _check_bounds(self.bounds))
        put("loss", _checks.check_choice(self.loss, "loss", _LOSSES))
        put("l1_fraction", _checks.check_scalar(self.l1_fraction, "l1_fraction", low=0.0, high=1.0,
                                                low_inclusive=False))

    @property
    def eps_array(self) -> np.ndarray:
        """Budgets as a float64 ``[K]`` array (``K = 1`` for a scalar ``eps``)."""
        return np.atleast_1d(np.asarray(self.eps, np.float64))

    @property
    def step_array(self) -> np.ndarray:
        """Step sizes ``[K]``, one per budget (``2.5 eps / steps`` when ``step_size`` is None)."""
        return _checks.check_step(self.step_size, self.eps_array, self.steps)

    def replace(self, **changes: Any) -> "AttackConfig":
        """A validated copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return to_jsonable(dataclasses.asdict(self))


def attack_config(attack: "AttackConfig | None" = None, /, **settings: Any) -> AttackConfig:
    """``attack`` with ``settings`` applied, or a new :class:`AttackConfig` from ``settings``.

    Raises:
      TypeError: ``attack`` is not an :class:`AttackConfig`, or a setting is
        not one of its fields.
    """
    if attack is not None and not isinstance(attack, AttackConfig):
        raise TypeError(f"attack: expected an AttackConfig, got {type(attack).__name__}")
    names = {f.name for f in dataclasses.fields(AttackConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"{unknown[0]}: not a setting of AttackConfig (fields: {', '.join(sorted(names))})")
    if attack is None:
        for name in ("norm", "eps"):
            if name not in settings:
                raise TypeError(f"{name}: required (the threat model is always stated), pass it or an AttackConfig")
        return AttackConfig(**settings)
    return dataclasses.replace(attack, **settings) if settings else attack


class MinimalDistance(NamedTuple):
    """Per-example minimal adversarial distance found by bisection over eps.

    Attributes:
      distance: ``[n]`` norm of the closest adversarial example found (0 for
        misclassified inputs, ``inf`` where the attack failed at ``eps_max``).
        An upper bound on the true minimal distance.
      lower: ``[n]`` largest eps at which PGD failed (not a certificate).
      upper: ``[n]`` smallest eps at which PGD succeeded (``eps_max`` if none).
      attack: :class:`AttackResult` of the closest adversarial examples.
    """

    distance: Any
    lower: Any
    upper: Any
    attack: AttackResult

    def to_dict(self, *, include_x_adv: bool = False) -> dict:
        """JSON-ready summary (``inf`` becomes ``null``)."""
        d = np.asarray(self.distance)
        return {
            "n": int(d.shape[0]),
            "median_distance": to_jsonable(float(np.median(d)) if d.size else None),
            "distance": to_jsonable(d),
            "lower": to_jsonable(self.lower),
            "upper": to_jsonable(self.upper),
            "attack": self.attack.to_dict(include_x_adv=include_x_adv),
        }


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_bounds(bounds: Any) -> tuple[float, float] | None:
    return _checks.check_interval(bounds, "bounds", allow_none=True)


def _prepare(logits_fn, x, y, bounds, *, targeted: bool, y_name: str = "y"):
    """Validate the common arguments; fill ``y`` with predictions when None."""
    _checks.check_logits_fn(logits_fn)
    bounds = _check_bounds(bounds)
    x = _checks.check_model_inputs(x, bounds)
    k = _checks.num_classes_of(logits_fn, x)
    if not isinstance(targeted, (bool, np.bool_)):
        raise ValueError(f"targeted: expected a bool, got {targeted!r}")
    if y is None:
        if targeted:
            raise ValueError(f"{y_name}: target labels are required when targeted=True")
        y = predict(logits_fn, x)
        y = y.astype(np.int32) if isinstance(y, np.ndarray) else y.astype(jnp.int32)
    else:
        y = _checks.check_model_labels(y, x.shape[0], k, y_name)
    return x, y, bounds, k


# ---------------------------------------------------------------------------
# Batching and sharding (through the block engine)
# ---------------------------------------------------------------------------


def _execute(core: Callable, static: dict, batch_args: tuple, rep_args: tuple, *, out_axis: int = 0,
             batch_size: int | None = None, progress: bool = False, checkpoint: Any = None, desc: str = "attack"):
    """``core(*batch_args, *rep_args, **static)`` over blocks and devices via :func:`jaxbound._engine.run`.

    A checkpoint's fingerprint also holds the model's logits on the first
    (up to 4) inputs, so that a checkpoint of another model is never resumed.
    """
    job = ()
    if checkpoint is not None and _engine.concrete(*batch_args):
        x0 = np.asarray(batch_args[0])
        job = (desc, np.asarray(jax.jit(static["logits_fn"])(x0[: min(x0.shape[0], 4)])))
    return _engine.run(core, static, batch_args, rep_args, block_size=batch_size, default_block=_DEFAULT_BATCH,
                       out_axis=out_axis, progress=progress, desc=desc, checkpoint=checkpoint, job=job)


# ---------------------------------------------------------------------------
# Shared kernels
# ---------------------------------------------------------------------------


def _rows(v, x):
    """Per-example values ``[n]`` reshaped to broadcast against ``x [n, ...]``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _result(x, x_adv, success, logits) -> AttackResult:
    l1, l2, linf = lp.per_example_norms(x_adv - x)
    return AttackResult(x_adv, success, logits, l1, l2, linf)


def _is_success(logits, y, targeted: bool):
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y


def margin(logits: Any, y: Any) -> Any:
    """Classification margin ``z_y - max_{j != y} z_j`` per example.

    Args:
      logits: ``[n, k]`` logits.
      y: ``[n]`` integer labels.

    Returns:
      ``[n]`` margins: positive where ``y`` is the unique top class.

    References:
      Carlini, Wagner. "Towards evaluating the robustness of neural
      networks." IEEE S&P 2017, arXiv:1608.04644 (the margin loss).
    """
    zy = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return zy - jnp.max(other, axis=1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``[n]`` of ``logits [n, k]`` at integer labels ``y [n]``.

    optax's ``softmax_cross_entropy`` on one-hot labels: it repeats the
    arithmetic of ``-log_softmax(z)_y`` exactly (products with 0 and 1 are
    exact), so attacks, metrics and training share one loss and keep their
    numbers bit for bit (optax's integer-label form rounds differently).
    """
    return optax.losses.softmax_cross_entropy(logits, jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype))


def _objective(logits, y, *, loss: str, targeted: bool):
    """Per-example attack objective to maximise."""
    if loss == "ce":
        ce = cross_entropy(logits, y)
        return -ce if targeted else ce
    m = margin(logits, y)
    return m if targeted else -m


def example_keys(idx: Any, *, key: Any) -> Any:
    """One key per example: ``fold_in(key, idx_i)`` for ``idx [n]`` (results independent of batching)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def _ascent(g, xa, norm: str, bounds, l1_fraction: float):
    """Steepest-ascent direction of unit ``norm`` (sparse, box-aware ℓ1 step)."""
    return lp.steepest_ascent(g, norm, l1_fraction=l1_fraction, x=xa, bounds=bounds)


# ---------------------------------------------------------------------------
# One-step attacks
# ---------------------------------------------------------------------------


def _fgm_core(x, y, eps, *, logits_fn, norm, targeted, loss, bounds, l1_fraction):
    def total(xa):
        logits = logits_fn(xa)
        return jnp.sum(_objective(logits, y, loss=loss, targeted=targeted)), logits

    g, logits0 = jax.grad(total, has_aux=True)(x)
    step = _rows(eps, x) * _ascent(g, x, norm, bounds, l1_fraction)
    x_adv = lp.project_in_box(x, step, eps, norm, bounds)
    logits = logits_fn(x_adv)
    ok = _finite(logits) & _finite(logits0)  # a NaN model is never "successfully attacked"
    logits = jnp.where(ok[:, None], logits, jnp.nan)
    return _result(x, x_adv, _is_success(logits, y, targeted) & ok, logits)


def _fgm_core_vec(x, y, eps_nk, **kw):
    return jax.vmap(lambda e: _fgm_core(x, y, e, **kw), in_axes=1)(eps_nk)


def fgm(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    attack: AttackConfig | None = None,
    *,
    batch_size: int | None = None,
    **settings: Any,
) -> AttackResult:
    """Fast gradient method: one step of size ``eps`` along the steepest-ascent direction.

    Linearising the loss, ``max_{||d|| <= 1} d . grad`` is attained by the
    signed gradient for ``linf`` (FGSM, Finlay et al. eq. 3.2) and the
    normalised gradient for ``l2`` (eq. 3.4); for ``l1`` the step is spread
    over the ``l1_fraction`` largest gradient coordinates (sparse l1 descent).
    The step is exactly of length ``eps`` before clipping to ``bounds``.
    Of the :class:`AttackConfig` fields, ``norm``, ``eps``, ``targeted``,
    ``bounds``, ``loss`` and ``l1_fraction`` are used.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels (targets when ``targeted``); ``None`` uses the predictions.
      attack: the threat model (``norm`` and ``eps`` are required, here or in
        ``settings``); a 1-D ``eps`` of ``K`` budgets gives results with a
        leading ``[K]`` axis.
      batch_size: examples per device batch group (default 512).
      **settings: :class:`AttackConfig` fields overriding ``attack``
        (e.g. ``eps=0.3, norm="linf"``).

    Returns:
      :class:`AttackResult`.

    References:
      Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial
      examples." ICLR 2015, arXiv:1412.6572.
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    cfg = attack_config(attack, **settings)
    x, y, bounds, _ = _prepare(logits_fn, x, y, cfg.bounds, targeted=cfg.targeted)
    eps_k, vector = cfg.eps_array, isinstance(cfg.eps, tuple)
    n = x.shape[0]
    static = dict(logits_fn=logits_fn, norm=cfg.norm, targeted=cfg.targeted, loss=cfg.loss, bounds=bounds,
                  l1_fraction=cfg.l1_fraction)
    if n == 0:
        return _empty_result(logits_fn, x, len(eps_k) if vector else None)
    if vector:
        eps_nk = np.broadcast_to(eps_k, (n, eps_k.shape[0])).astype(np.float32)
        res = _execute(_fgm_core_vec, static, (x, y, eps_nk), (), out_axis=1, batch_size=batch_size)
    else:
        res = _execute(_fgm_core, static, (x, y, np.full(n, eps_k[0], np.float32)), (), batch_size=batch_size)
    _check_finite_logits(res.logits, "fgm")
    return res


def fgsm(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    attack: AttackConfig | None = None,
    *,
    batch_size: int | None = None,
    **settings: Any,
) -> AttackResult:
    """Fast gradient sign method: :func:`fgm` with ``norm="linf"`` (Finlay et al. eq. 3.2).

    References:
      Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial
      examples." ICLR 2015, arXiv:1412.6572.
    """
    return fgm(logits_fn, x, y, attack, batch_size=batch_size, **{**settings, "norm": "linf"})


def _empty_result(logits_fn, x, k_vec):
    k = _checks.num_classes_of(logits_fn, x)
    lead = () if k_vec is None else (k_vec,)
    z = np.zeros(lead + (0,), np.float32)
    return AttackResult(np.zeros(lead + x.shape, np.float32), np.zeros(lead + (0,), bool),
                        np.zeros(lead + (0, k), np.float32), z, z.copy(), z.copy())


# ---------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------


def _pgd_core(x, y, idx, eps, step, key, *, logits_fn, norm, steps, restarts, random_start, targeted,
              loss, bounds, l1_fraction):
    """PGD on a batch with per-example ``eps [n]`` and ``step [n]``."""
    n = x.shape[0]
    keys = example_keys(idx, key=key)

    def total(xa):
        logits = logits_fn(xa)
        return jnp.sum(_objective(logits, y, loss=loss, targeted=targeted)), logits

    vg = jax.value_and_grad(total, has_aux=True)
    step_b = _rows(step, x)

    def track(state, xa, logits):
        best_x, best_logits, best_obj, found, bad = state
        obj = _objective(logits, y, loss=loss, targeted=targeted)
        ok = _finite(logits)  # non-finite logits never count as a success
        succ = _is_success(logits, y, targeted) & ok
        take = (succ & ~found) | (~found & ~succ & (obj > best_obj))
        best_x = jnp.where(_rows(take, x), xa, best_x)
        best_logits = jnp.where(take[:, None], logits, best_logits)
        best_obj = jnp.where(take, obj, best_obj)
        return best_x, best_logits, best_obj, found | succ, bad | ~ok

    def restart(r, state):
        if random_start:
            rkeys = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
            xa = lp.project_in_box(x, lp.sample_balls(eps, norm, shape=x.shape[1:], keys=rkeys, dtype=x.dtype), eps, norm, bounds)
        else:
            xa = x

        def body(_, carry):
            xa, st = carry
            (_, logits), g = vg(xa)
            st = track(st, xa, logits)
            xa = lp.project_in_box(x, xa + step_b * _ascent(g, xa, norm, bounds, l1_fraction) - x, eps, norm, bounds)
            return xa, st

        xa, state = lax.fori_loop(0, steps, body, (xa, state))
        return track(state, xa, logits_fn(xa))

    k = jax.eval_shape(logits_fn, x).shape[1]
    init = (x, jnp.zeros((n, k), jnp.float32), jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), bool),
            jnp.zeros((n,), bool))
    best_x, best_logits, _, found, bad = lax.fori_loop(0, restarts, restart, init)
    best_logits = jnp.where(bad[:, None], jnp.nan, best_logits.astype(jnp.float32))
    return _result(x, best_x, found & ~bad, best_logits)


def _pgd_core_vec(x, y, idx, eps_nk, step_nk, key, **kw):
    return jax.vmap(lambda e, s: _pgd_core(x, y, idx, e, s, key, **kw), in_axes=(1, 1))(eps_nk, step_nk)


def pgd(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    attack: AttackConfig | None = None,
    *,
    key: Any,
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
    **settings: Any,
) -> AttackResult:
    """Projected gradient ascent on the attack loss within an ``eps`` ball (Madry et al.).

    Each step moves ``x_adv`` by ``step_size`` along the steepest-ascent
    direction of unit ``norm`` (sign of the gradient for ``linf``, normalised
    gradient for ``l2``, sparse top-coordinate step for ``l1``), projects the
    perturbation onto the ``eps`` ball and clips to ``bounds`` (a feasible
    point of the intersection for all three norms). Ding et al.'s MNIST
    setting is ``AttackConfig(norm="linf", eps=0.3, steps=40, step_size=0.01)``.
    ``y=None`` attacks the model's own predictions ("robustness w.r.t.
    predictions", Ding et al. §3.2); ``bounds=None`` removes the box (Ding et
    al. Table 7); per example the first success over restarts is kept.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels (targets when ``targeted``); ``None`` uses the predictions.
      attack: the threat model and attack settings (``norm`` and ``eps`` are
        required, here or in ``settings``). A 1-D ``eps`` of ``K`` budgets is
        run vmapped: every field then gets a leading ``[K]`` axis
        (``success`` is ``[K, n]``). ``steps`` and ``restarts`` are static.
      key: ``jax.random`` key (random starts).
      batch_size: examples per batch group (split over local devices).
      progress: show a progress bar over batches.
      checkpoint: optional folder keeping finished batches (saved every 30 s and on
        interruption) so that a rerun with the same inputs resumes; removed when done.
      **settings: :class:`AttackConfig` fields overriding ``attack``
        (e.g. ``eps=0.3, norm="linf", steps=40``).

    Returns:
      :class:`AttackResult`.

    References:
      Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
      resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    cfg = attack_config(attack, **settings)
    _checks.check_key(key)
    x, y, bounds, _ = _prepare(logits_fn, x, y, cfg.bounds, targeted=cfg.targeted)
    eps_k, vector = cfg.eps_array, isinstance(cfg.eps, tuple)
    step_k = cfg.step_array
    n = x.shape[0]
    if n == 0:
        return _empty_result(logits_fn, x, len(eps_k) if vector else None)
    static = dict(logits_fn=logits_fn, norm=cfg.norm, steps=cfg.steps, restarts=cfg.restarts,
                  random_start=cfg.random_start, targeted=cfg.targeted, loss=cfg.loss, bounds=bounds,
                  l1_fraction=cfg.l1_fraction)
    idx = np.arange(n, dtype=np.int32) if _checks.is_concrete(x) else jnp.arange(n, dtype=jnp.int32)
    opts = dict(batch_size=batch_size, progress=progress, checkpoint=checkpoint, desc="pgd")
    if vector:
        eps_nk = np.broadcast_to(eps_k, (n, eps_k.shape[0])).astype(np.float32)
        step_nk = np.broadcast_to(step_k, (n, step_k.shape[0])).astype(np.float32)
        res = _execute(_pgd_core_vec, static, (x, y, idx, eps_nk, step_nk), (key,), out_axis=1, **opts)
    else:
        eps_n = np.full(n, eps_k[0], np.float32)
        step_n = np.full(n, step_k[0], np.float32)
        res = _execute(_pgd_core, static, (x, y, idx, eps_n, step_n), (key,), **opts)
    _check_finite_logits(res.logits, "pgd")
    return res


# ---------------------------------------------------------------------------
# Minimal adversarial distance by bisection
# ---------------------------------------------------------------------------


def _mindist_core(x, y, idx, key, *, logits_fn, norm, eps_max, search_steps, steps, rel_step, restarts,
                  random_start, targeted, loss, bounds, l1_fraction):
    n = x.shape[0]
    pgd_static = dict(logits_fn=logits_fn, norm=norm, steps=steps, restarts=restarts, random_start=random_start,
                      targeted=targeted, loss=loss, bounds=bounds, l1_fraction=l1_fraction)
    logits0 = logits_fn(x)
    clean = _is_success(logits0, y, targeted)
    hi = jnp.full((n,), eps_max, jnp.float32)
    r = _pgd_core(x, y, idx, hi, rel_step * hi, jax.random.fold_in(key, 0), **pgd_static)
    found = r.success & ~clean
    d0 = lp.per_example_norm(r.x_adv - x, norm)
    best = (jnp.where(_rows(clean, x), x, r.x_adv), jnp.where(clean[:, None], logits0, r.logits))
    best_d = jnp.where(clean, 0.0, jnp.where(found, d0, jnp.inf))
    hi = jnp.where(found, jnp.minimum(hi, d0), hi)
    lo = jnp.zeros((n,), jnp.float32)

    def body(s, carry):
        lo, hi, best_x, best_logits, best_d = carry
        mid = 0.5 * (lo + hi)
        r = _pgd_core(x, y, idx, mid, rel_step * mid, jax.random.fold_in(key, s + 1), **pgd_static)
        d = lp.per_example_norm(r.x_adv - x, norm)
        ok = r.success & found
        better = ok & (d < best_d)
        best_x = jnp.where(_rows(better, x), r.x_adv, best_x)
        best_logits = jnp.where(better[:, None], r.logits, best_logits)
        best_d = jnp.where(better, d, best_d)
        hi = jnp.where(ok, jnp.minimum(mid, d), hi)
        lo = jnp.where(found & ~r.success, mid, lo)
        return lo, hi, best_x, best_logits, best_d

    lo, hi, best_x, best_logits, best_d = lax.fori_loop(0, search_steps, body, (lo, hi, *best, best_d))
    lo = jnp.where(clean, 0.0, lo)
    hi = jnp.where(clean, 0.0, hi)
    res = _result(x, best_x, found | clean, best_logits)
    return MinimalDistance(best_d, lo, hi, res)


def minimal_adversarial_distance(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    attack: AttackConfig | None = None,
    *,
    key: Any,
    eps_max: float | None = None,
    search_steps: int = 12,
    rel_step_size: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
    **settings: Any,
) -> MinimalDistance:
    """Per-example minimal adversarial distance: bisection over eps with PGD.

    PGD first runs at ``eps_max``; where it succeeds, ``search_steps``
    bisection rounds run PGD at the midpoint of ``[lower, upper]`` (all
    examples in parallel, each with its own eps), shrinking ``upper`` to the
    norm of the adversarial example found on success and raising ``lower`` on
    failure. The reported distance is the norm of the closest adversarial
    example found (Finlay et al. 2019, "median adversarial distance", §5).

    Without ``attack`` the PGD settings default to ``steps=50`` and
    ``random_start=False``; the config's ``step_size`` is not used (the step
    is ``rel_step_size`` times the current eps).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels (targets when ``targeted``); ``None`` uses the predictions.
      attack: the PGD settings (``norm`` required, here or in ``settings``;
        its scalar ``eps`` is ``eps_max`` when ``eps_max`` is not given).
      key: ``jax.random`` key.
      eps_max: largest budget searched (> 0).
      search_steps: bisection rounds (static); the bracket shrinks by ``2**search_steps``.
      rel_step_size: PGD step as a fraction of the current eps (default ``2.5 / steps``).
      batch_size, progress, checkpoint: as in :func:`pgd`.
      **settings: :class:`AttackConfig` fields overriding ``attack``
        (``norm``, ``steps``, ``restarts``, ``random_start``, ``targeted``,
        ``bounds``, ``loss``, ``l1_fraction``).

    Returns:
      :class:`MinimalDistance`.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    if attack is None:
        settings = {"steps": 50, "random_start": False, **settings}
        if "eps" not in settings:
            if eps_max is None:
                raise ValueError("eps_max: the largest budget searched is required")
            settings["eps"] = eps_max
    cfg = attack_config(attack, **settings)
    _checks.check_key(key)
    eps_max = _checks.check_scalar(cfg.eps if eps_max is None else eps_max, "eps_max", low=0.0,
                                   low_inclusive=False)
    search_steps = _checks.check_int(search_steps, "search_steps", low=0)
    rel = 2.5 / cfg.steps if rel_step_size is None else _checks.check_scalar(
        rel_step_size, "rel_step_size", low=0.0, low_inclusive=False)
    x, y, bounds, _ = _prepare(logits_fn, x, y, cfg.bounds, targeted=cfg.targeted)
    n = x.shape[0]
    if n == 0:
        e = _empty_result(logits_fn, x, None)
        z = np.zeros(0, np.float32)
        return MinimalDistance(z, z.copy(), z.copy(), e)
    static = dict(logits_fn=logits_fn, norm=cfg.norm, eps_max=float(eps_max), search_steps=search_steps,
                  steps=cfg.steps, rel_step=float(rel), restarts=cfg.restarts, random_start=cfg.random_start,
                  targeted=cfg.targeted, loss=cfg.loss, bounds=bounds, l1_fraction=cfg.l1_fraction)
    idx = np.arange(n, dtype=np.int32) if _checks.is_concrete(x) else jnp.arange(n, dtype=jnp.int32)
    res = _execute(_mindist_core, static, (x, y, idx), (key,), batch_size=batch_size, progress=progress,
                   checkpoint=checkpoint, desc="minimal distance")
    _check_finite_logits(res.attack.logits, "the minimal-distance search")
    return res


# ---------------------------------------------------------------------------
# Carlini-Wagner l2 (and the evasive variant)
# ---------------------------------------------------------------------------


def jacobian_norm(logits_fn: Callable, x: Any, *, norm: Any, output: str = "probs") -> Any:
    """``max_k ||grad_x f_k(x_i)||_norm`` per example: the model Jacobian's norm into ℓ∞ (Finlay et al. eq. 7.1).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs (JAX arrays or tracers; jittable).
      norm: the norm of each input gradient (the dual of the attack norm).
      output: ``"probs"`` (``f`` = softmax of the logits) or ``"logits"``.

    Returns:
      ``[n]`` Jacobian norms.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    out_fn = (lambda z: jax.nn.softmax(logits_fn(z), axis=-1)) if output == "probs" else logits_fn
    out, vjp = jax.vjp(out_fn, x)
    k = out.shape[1]
    basis = jnp.broadcast_to(jnp.eye(k, dtype=out.dtype)[:, None, :], (k, x.shape[0], k))
    jac = jax.vmap(lambda e: vjp(e)[0])(basis)  # [k, n, ...]
    return jnp.max(jax.vmap(lambda g: lp.per_example_norm(g, norm))(jac), axis=0)


def _grad_penalty(logits_fn, xa, *, detector: str, dual: str):
    """Per-example squared dual norm of the detector's input gradient at ``xa``."""
    if detector == "loss":
        logits = logits_fn(xa)
        pred = lax.stop_gradient(jnp.argmax(logits, axis=-1))

        def ce(z):
            return jnp.sum(cross_entropy(logits_fn(z), pred))

        g = jax.grad(ce)(xa)
        v = lp.per_example_norm(g, dual)
    else:
        v = jacobian_norm(logits_fn, xa, norm=dual)
    return v * v


def _cw_core(x, y, *, logits_fn, targeted, confidence, c_init, c_max, steps, search_steps, learning_rate, bounds,
             penalty, detector, dual):
    n = x.shape[0]
    if bounds is not None:
        lo, hi = bounds
        w0 = jnp.arctanh(jnp.clip((x - lo) / (hi - lo) * 2.0 - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))

        def to_x(w):
            return lo + (hi - lo) * (jnp.tanh(w) + 1.0) * 0.5
    else:
        w0 = x

        def to_x(w):
            return w

    def total(mod, c):
        xa = to_x(w0 + mod)
        logits = logits_fn(xa)
        d2 = jnp.sum(((xa - x) ** 2).reshape(n, -1), axis=1)
        m = margin(logits, y)
        f = -m if targeted else m
        obj = d2 + c * jnp.maximum(f + confidence, 0.0)
        if penalty > 0:
            obj = obj + penalty * _grad_penalty(logits_fn, xa, detector=detector, dual=dual)
        return jnp.sum(obj), (xa, logits, d2)

    vg = jax.grad(total, has_aux=True)
    opt = optax.adam(learning_rate)

    def search(s, carry):
        c, c_lo, c_hi, best_x, best_logits, best_d2 = carry
        mod = jnp.zeros_like(x)
        opt_state = opt.init(mod)

        def body(_, st):
            mod, opt_state, best_x, best_logits, best_d2, hit = st
            g, (xa, logits, d2) = vg(mod, c)
            succ = _is_success(logits, y, targeted)
            better = succ & (d2 < best_d2)
            best_x = jnp.where(_rows(better, x), xa, best_x)
            best_logits = jnp.where(better[:, None], logits, best_logits)
            best_d2 = jnp.where(better, d2, best_d2)
            upd, opt_state = opt.update(g, opt_state, mod)
            return optax.apply_updates(mod, upd), opt_state, best_x, best_logits, best_d2, hit | succ

        init = (mod, opt_state, best_x, best_logits, best_d2, jnp.zeros((n,), bool))
        _, _, best_x, best_logits, best_d2, hit = lax.fori_loop(0, steps, body, init)
        c_hi = jnp.where(hit, jnp.minimum(c_hi, c), c_hi)
        c_lo = jnp.where(hit, c_lo, jnp.maximum(c_lo, c))
        bracketed = c_hi < c_max
        c = jnp.where(bracketed, 0.5 * (c_lo + c_hi), jnp.minimum(c * 10.0, c_max))
        return c, c_lo, c_hi, best_x, best_logits, best_d2

    init = (jnp.full((n,), c_init, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.full((n,), c_max, jnp.float32),
            x, logits_fn(x).astype(jnp.float32), jnp.full((n,), jnp.inf, jnp.float32))
    _, _, _, best_x, best_logits, best_d2 = lax.fori_loop(0, search_steps, search, init)
    return _result(x, best_x, jnp.isfinite(best_d2), best_logits)


def carlini_wagner_l2(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    targeted: bool = False,
    confidence: float = 0.0,
    c_init: float = 1e-2,
    search_steps: int = 9,
    steps: int = 200,
    learning_rate: float = 1e-2,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
) -> AttackResult:
    """Carlini-Wagner l2 attack with a per-example binary search on ``c``.

    Minimises ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)``
    (targeted: ``max_{j != t} z_j - z_t``) with Adam, in ``tanh`` space when
    ``bounds`` is given (``x' = low + (high-low)(tanh(w)+1)/2``) and directly
    in input space for ``bounds=None``. After each of ``search_steps`` rounds
    of ``steps`` Adam steps, ``c`` is bisected where a success was seen and
    multiplied by 10 where none was (until bracketed). Returns the smallest-l2
    successful iterate per example; failures return ``x`` with ``success=False``.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: labels (targets when ``targeted``); ``None`` uses the predictions.
      targeted: reach the target class ``y``.
      confidence: margin ``kappa >= 0`` demanded by the hinge.
      c_init: initial constant (> 0).
      search_steps: binary-search rounds on ``c`` (static).
      steps: Adam steps per round (static).
      learning_rate: Adam learning rate.
      bounds: ``(low, high)`` or ``None``.
      batch_size: examples per batch group.

    Returns:
      :class:`AttackResult`.

    References:
      Carlini, Wagner. "Towards evaluating the robustness of neural
      networks." IEEE S&P 2017, arXiv:1608.04644.
    """
    return _cw(logits_fn, x, y, targeted=targeted, confidence=confidence, c_init=c_init, search_steps=search_steps,
               steps=steps, learning_rate=learning_rate, bounds=bounds, batch_size=batch_size, penalty=0.0,
               detector="loss", norm="l2")


def evasive_carlini_wagner(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    penalty: float = 1.0,
    detector: str = "loss",
    norm: Any = "l2",
    targeted: bool = False,
    confidence: float = 0.0,
    c_init: float = 1e-2,
    search_steps: int = 9,
    steps: int = 200,
    learning_rate: float = 1e-2,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
) -> AttackResult:
    """Evasive Carlini-Wagner attack (Finlay et al. 2019, §7).

    The Carlini-Wagner objective plus ``penalty * ||grad||_*^2`` so that the
    adversarial example avoids gradient-norm detection:

    * ``detector="loss"``: ``grad_x l(x')`` of the cross-entropy at the model's
      own (stop-gradient) prediction, the quantity penalised by Finlay et al.;
    * ``detector="model"``: the model Jacobian norm ``||grad f(x')||_{*,inf} =
      max_k ||grad_x softmax_k(x')||_*``, the detection statistic of eq. 7.1.

    ``||.||_*`` is the dual of ``norm``. Needs reverse-over-reverse
    differentiation of ``logits_fn``. Other arguments as in :func:`carlini_wagner_l2`.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
      Carlini, Wagner. "Towards evaluating the robustness of neural
      networks." IEEE S&P 2017, arXiv:1608.04644.
    """
    penalty = _checks.check_scalar(penalty, "penalty", low=0.0)
    detector = _checks.check_choice(detector, "detector", ("loss", "model"))
    return _cw(logits_fn, x, y, targeted=targeted, confidence=confidence, c_init=c_init, search_steps=search_steps,
               steps=steps, learning_rate=learning_rate, bounds=bounds, batch_size=batch_size, penalty=penalty,
               detector=detector, norm=norm)


def _cw(logits_fn, x, y, *, targeted, confidence, c_init, search_steps, steps, learning_rate, bounds, batch_size,
        penalty, detector, norm):
    dual = _checks.dual_norm(_checks.check_attack_norm(norm))
    confidence = _checks.check_scalar(confidence, "confidence", low=0.0)
    c_init = _checks.check_scalar(c_init, "c_init", low=0.0, low_inclusive=False)
    search_steps = _checks.check_int(search_steps, "search_steps", low=1)
    steps = _checks.check_int(steps, "steps", low=1)
    learning_rate = _checks.check_scalar(learning_rate, "learning_rate", low=0.0, low_inclusive=False)
    x, y, bounds, _ = _prepare(logits_fn, x, y, bounds, targeted=targeted)
    if x.shape[0] == 0:
        return _empty_result(logits_fn, x, None)
    static = dict(logits_fn=logits_fn, targeted=bool(targeted), confidence=float(confidence), c_init=float(c_init),
                  c_max=1e10, steps=steps, search_steps=search_steps, learning_rate=float(learning_rate),
                  bounds=bounds, penalty=float(penalty), detector=detector, dual=dual)
    return _execute(_cw_core, static, (x, y), (), batch_size=batch_size, desc="carlini-wagner")


# ---------------------------------------------------------------------------
# Boundary attack (decision-based)
# ---------------------------------------------------------------------------


def _boundary_core(x, y, idx, x_start, has_start, key, *, logits_fn, steps, spherical_step, source_step,
                   step_adaptation, adapt_every, init_attempts, init_scale, bounds, targeted):
    n = x.shape[0]
    shape = x.shape[1:]
    keys = example_keys(idx, key=key)

    def is_adv(z):
        return _is_success(logits_fn(z), y, targeted)

    def clip(z):
        return z if bounds is None else jnp.clip(z, bounds[0], bounds[1])

    clean = is_adv(x)
    # Initial adversarial point: the given start, else random draws.
    start_ok = has_start & is_adv(x_start)

    def draw(t, carry):
        cand_x, ok = carry
        tk = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), t))(keys)
        if bounds is None:
            noise = jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype))(tk)
            z = x + init_scale * noise
        else:
            z = jax.vmap(lambda k: jax.random.uniform(k, shape, x.dtype, bounds[0], bounds[1]))(tk)
        adv = is_adv(z)
        take = adv & ~ok
        return jnp.where(_rows(take, x), z, cand_x), ok | adv

    x0, ok0 = lax.fori_loop(0, init_attempts, draw, (x_start, start_ok))
    found = clean | ok0
    # Bisection on the segment from x to the starting point.

    def bisect(_, carry):
        a_lo, a_hi = carry
        mid = 0.5 * (a_lo + a_hi)
        adv = is_adv(x + _rows(mid, x) * (x0 - x))
        return jnp.where(adv, a_lo, mid), jnp.where(adv, mid, a_hi)

    _, a_hi = lax.fori_loop(0, 25, bisect, (jnp.zeros((n,)), jnp.ones((n,))))
    xa = jnp.where(_rows(clean, x), x, x + _rows(a_hi, x) * (x0 - x))
    active = found & ~clean

    def step_fn(t, carry):
        xa, delta, eps, s1, s2 = carry
        tk = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 2), t))(keys)
        diff = (x - xa).reshape(n, -1)
        dist = jnp.sqrt(jnp.sum(diff * diff, axis=1))
        safe = jnp.maximum(dist, _TINY)
        u = diff / safe[:, None]
        eta = jax.vmap(lambda k: jax.random.normal(k, (diff.shape[1],), x.dtype))(tk)
        eta = eta - jnp.sum(eta * u, axis=1, keepdims=True) * u
        eta = eta / jnp.maximum(jnp.linalg.norm(eta, axis=1, keepdims=True), _TINY) * (delta * dist)[:, None]
        v = -diff + eta  # (xa + eta) - x
        v = v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), _TINY) * dist[:, None]
        c1 = clip(x + v.reshape(x.shape))
        c2 = clip(c1 + _rows(eps, x) * (x - c1))
        adv1 = is_adv(c1)
        adv2 = is_adv(c2)
        d2 = jnp.sqrt(jnp.sum(((c2 - x) ** 2).reshape(n, -1), axis=1))
        accept = active & adv2 & (d2 < dist)
        xa = jnp.where(_rows(accept, x), c2, xa)
        s1 = s1 + adv1.astype(jnp.float32)
        s2 = s2 + adv2.astype(jnp.float32)
        adapt = (t + 1) % adapt_every == 0
        p1 = s1 / adapt_every
        p2 = s2 / adapt_every
        up = step_adaptation
        new_delta = jnp.where(p1 > 0.5, delta * up, jnp.where(p1 < 0.2, delta / up, delta))
        new_eps = jnp.where(p1 > 0.5, eps * up, jnp.where(p1 < 0.2, eps / up, eps))
        new_eps = jnp.where(p2 > 0.5, new_eps * up, jnp.where(p2 < 0.2, new_eps / up, new_eps))
        delta = jnp.where(adapt, jnp.clip(new_delta, 1e-6, 1.0), delta)
        eps = jnp.where(adapt, jnp.clip(new_eps, 1e-7, 0.9), eps)
        s1 = jnp.where(adapt, 0.0, s1)
        s2 = jnp.where(adapt, 0.0, s2)
        return xa, delta, eps, s1, s2

    init = (xa, jnp.full((n,), spherical_step, jnp.float32), jnp.full((n,), source_step, jnp.float32),
            jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
    xa = lax.fori_loop(0, steps, step_fn, init)[0]
    xa = jnp.where(_rows(found, x), xa, x)
    return _result(x, xa, found, logits_fn(xa))


def boundary_attack(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    key: Any,
    steps: int = 1000,
    spherical_step: float = 0.01,
    source_step: float = 0.01,
    step_adaptation: float = 1.5,
    adapt_every: int = 10,
    init_attempts: int = 100,
    init_scale: float = 1.0,
    starting_points: Any = None,
    targeted: bool = False,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
) -> AttackResult:
    """Decision-based Boundary attack (Brendel et al. 2018), l2; uses only predicted labels.

    Starts from an adversarial point (``starting_points`` where given and
    adversarial, else the first of ``init_attempts`` uniform draws in the box
    -- Gaussian draws of scale ``init_scale`` around ``x`` when ``bounds`` is
    None -- that is adversarial), bisects the segment towards ``x``, then
    repeats: a random step orthogonal to ``x - x_adv`` of relative size
    ``spherical_step`` projected back onto the sphere around ``x``, followed
    by a step of relative size ``source_step`` towards ``x``; the candidate
    is kept when it is still adversarial and closer. Every ``adapt_every``
    steps both step sizes are multiplied or divided by ``step_adaptation``
    according to the success rates of the orthogonal step (target 20-50%)
    and of the full step.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]`` (only its argmax is used).
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: labels (targets when ``targeted``); ``None`` uses the predictions.
      key: ``jax.random`` key.
      steps: iterations (static); two model calls each.
      spherical_step, source_step: initial relative step sizes.
      step_adaptation: multiplicative step-size adaptation factor (> 1).
      adapt_every: window (steps) of the success-rate estimates.
      init_attempts: random draws for the starting point (static).
      init_scale: scale of the Gaussian draws when ``bounds`` is None.
      starting_points: optional ``[n, ...]`` adversarial starting points.
      targeted: reach the target class ``y``.
      bounds: ``(low, high)`` or ``None``.
      batch_size: examples per batch group.

    Returns:
      :class:`AttackResult` (``success`` False where no adversarial start was found).

    References:
      Brendel, Rauber, Bethge. "Decision-based adversarial attacks: reliable
      attacks against black-box machine learning models." ICLR 2018,
      arXiv:1712.04248.
    """
    _checks.check_key(key)
    steps = _checks.check_int(steps, "steps", low=1)
    adapt_every = _checks.check_int(adapt_every, "adapt_every", low=1)
    init_attempts = _checks.check_int(init_attempts, "init_attempts", low=0)
    spherical_step = _checks.check_scalar(spherical_step, "spherical_step", low=0.0, low_inclusive=False)
    source_step = _checks.check_scalar(source_step, "source_step", low=0.0, high=1.0, low_inclusive=False,
                                       high_inclusive=False)
    step_adaptation = _checks.check_scalar(step_adaptation, "step_adaptation", low=1.0, low_inclusive=False)
    init_scale = _checks.check_scalar(init_scale, "init_scale", low=0.0, low_inclusive=False)
    x, y, bounds, _ = _prepare(logits_fn, x, y, bounds, targeted=targeted)
    n = x.shape[0]
    if starting_points is None:
        xs = np.zeros_like(x) if isinstance(x, np.ndarray) else jnp.zeros_like(x)
        has = np.zeros(n, bool) if isinstance(x, np.ndarray) else jnp.zeros(n, bool)
    else:
        xs = _checks.check_model_inputs(starting_points, bounds, "starting_points")
        if tuple(xs.shape) != tuple(x.shape):
            raise ValueError(f"starting_points: shape {tuple(xs.shape)} does not match x's {tuple(x.shape)}")
        has = np.ones(n, bool) if isinstance(x, np.ndarray) else jnp.ones(n, bool)
    if n == 0:
        return _empty_result(logits_fn, x, None)
    static = dict(logits_fn=logits_fn, steps=steps, spherical_step=float(spherical_step),
                  source_step=float(source_step), step_adaptation=float(step_adaptation), adapt_every=adapt_every,
                  init_attempts=init_attempts, init_scale=float(init_scale), bounds=bounds, targeted=bool(targeted))
    idx = np.arange(n, dtype=np.int32) if _checks.is_concrete(x) else jnp.arange(n, dtype=jnp.int32)
    return _execute(_boundary_core, static, (x, y, idx, xs, has), (key,), batch_size=batch_size,
                    desc="boundary attack")


# ---------------------------------------------------------------------------
# Small public helpers
# ---------------------------------------------------------------------------


def _predict_core(x, *, logits_fn):
    return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)


def predict(logits_fn: Callable, x: Any, *, batch_size: int | None = None) -> Any:
    """Predicted labels ``[n]`` (argmax of the logits), batched and sharded like the attacks."""
    _checks.check_logits_fn(logits_fn)
    x = _checks.check_model_inputs(x, None)
    if x.shape[0] == 0:
        return np.zeros(0, np.int32)
    return _execute(_predict_core, dict(logits_fn=logits_fn), (x,), (), batch_size=batch_size)


def perturbation_norms(x: Any, x_adv: Any, norm: Any) -> Any:
    """``||x_adv_i - x_i||`` per example in ``norm``, flattening all but the first axis (float64 on the host)."""
    n = _checks.check_attack_norm(norm)
    a = np.asarray(x, np.float64) if _checks.is_concrete(x) else x
    b = np.asarray(x_adv, np.float64) if _checks.is_concrete(x_adv) else x_adv
    if a.shape != b.shape:
        raise ValueError(f"x_adv: shape {tuple(b.shape)} does not match x's {tuple(a.shape)}")
    d = (b - a).reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))
    xp = np if isinstance(d, np.ndarray) else jnp
    if n == "l1":
        return xp.abs(d).sum(axis=1)
    if n == "l2":
        return xp.sqrt((d * d).sum(axis=1))
    return xp.abs(d).max(axis=1, initial=0.0)


# ---------------------------------------------------------------------------
# AutoAttack: shared pieces (DLR loss, randomised models, non-finite logits)
# ---------------------------------------------------------------------------

_APGD_LOSSES = ("ce", "dlr", "ce-targeted", "dlr-targeted")


def dlr_loss(logits: Any, y: Any, target: Any = None) -> Any:
    """Difference-of-logits-ratio loss per example (Croce & Hein 2020, eqs. 6 and 7), to maximise.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``;
    targeted at ``t``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``,
    where ``z_pi1 >= z_pi2 >= ...`` are the sorted logits. The ratio is
    invariant to shifting and scaling the logits. With fewer classes than
    the denominator needs (``k < 3`` untargeted, ``k < 4`` targeted) the
    denominator falls back to ``z_pi1 - z_pi3`` (``k = 3``) or to 1 (``k = 2``,
    the plain margin).

    Args:
      logits: ``[n, k]`` logits.
      y: ``[n]`` true labels.
      target: ``[n]`` target labels, or ``None`` for the untargeted loss.

    Returns:
      ``[n]`` losses (positive where the point is misclassified, untargeted).

    References:
      Croce, Hein. "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks." ICML 2020,
      arXiv:2003.01690, §4.
    """
    logits = jnp.asarray(logits)
    y = jnp.asarray(y)
    k = logits.shape[1]
    s = jnp.sort(logits, axis=1)
    zy = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    if target is None:
        num = -margin(logits, y)
        den = s[:, -1] - s[:, -3] if k >= 3 else jnp.ones_like(zy)
    else:
        zt = jnp.take_along_axis(logits, jnp.asarray(target)[:, None], axis=1)[:, 0]
        num = zt - zy
        if k >= 4:
            den = s[:, -1] - 0.5 * (s[:, -3] + s[:, -4])
        else:
            den = s[:, -1] - s[:, -3] if k == 3 else jnp.ones_like(zy)
    return num / (den + _TINY)


def _takes_key(logits_fn: Callable) -> bool:
    """True for a randomised model ``logits_fn(x, *, key)`` (a parameter named ``key``)."""
    import inspect

    try:
        return "key" in inspect.signature(logits_fn).parameters
    except (TypeError, ValueError):
        return False


def _model(logits_fn: Callable, randomized: bool) -> Callable:
    """``model(x [n, ...], keys [n]) -> logits``: per-example keys for a randomised model (batch-invariant)."""
    if not randomized:
        return lambda z, keys: logits_fn(z)
    return lambda z, keys: jax.vmap(lambda zi, ki: logits_fn(zi[None], key=ki)[0])(z, keys)


def _finite(logits):
    return jnp.all(jnp.isfinite(logits), axis=-1)


def _check_finite_logits(logits: Any, what: str) -> None:
    """Raise a ``ValueError`` naming ``logits_fn`` when concrete result logits hold NaN/inf (never a 'success')."""
    if not _checks.is_concrete(logits):
        return
    a = np.asarray(logits)
    if a.size and not np.isfinite(a).all():
        bad = int((~np.isfinite(a).reshape(-1, a.shape[-1]).all(axis=-1)).sum())
        raise ValueError(f"logits_fn: returned NaN or infinite logits for {bad} example(s) during {what}; "
                         "a model with non-finite outputs cannot be attacked (fix the model or its inputs)")


def _targets(logits, y, j):
    """The ``j``-th most likely class other than ``y`` (``j = 0``: the runner-up) per example ``[n]``."""
    masked = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    order = jnp.argsort(-masked, axis=1, stable=True)
    return jnp.take_along_axis(order, jnp.broadcast_to(j, y.shape)[:, None].astype(jnp.int32), axis=1)[:, 0]


def _project_l1_box(x, z, eps, bounds, iters: int = 40):
    """Euclidean projection of ``z`` onto ``{||v - x||_1 <= eps} ∩ box`` (exact up to bisection on the threshold).

    Per coordinate the projection is ``clip(soft(z - x, lam), low - x, high - x)``
    (separable KKT conditions); ``lam >= 0`` is found by bisection on the
    monotone ℓ1 norm, keeping the feasible end of the bracket.
    """
    if bounds is None:
        return x + lp.project(z - x, eps, "l1")
    n = x.shape[0]
    v = (z - x).reshape(n, -1)
    lo = (bounds[0] - x).reshape(n, -1)
    hi = (bounds[1] - x).reshape(n, -1)
    a = jnp.abs(v)

    def delta(lam):
        return jnp.clip(jnp.sign(v) * jnp.maximum(a - lam[:, None], 0.0), lo, hi)

    def size(lam):
        return jnp.sum(jnp.abs(delta(lam)), axis=1)

    def body(_, c):
        l_lo, l_hi = c
        mid = 0.5 * (l_lo + l_hi)
        over = size(mid) > eps
        return jnp.where(over, mid, l_lo), jnp.where(over, l_hi, mid)

    l_lo, l_hi = lax.fori_loop(0, iters, body, (jnp.zeros((n,), v.dtype), jnp.max(a, axis=1)))
    lam = jnp.where(size(jnp.zeros((n,), v.dtype)) <= eps, 0.0, l_hi)
    return x + delta(lam).reshape(x.shape)


def _sparse_l1_direction(g, xa, kfrac, bounds):
    """Sparse ℓ1 ascent direction with a per-example sparsity ``kfrac [n]``: ``sign(g)/m`` on the top-``m`` coordinates.

    Coordinates that the box blocks at ``xa`` are left out (Croce & Hein
    2021, APGD-ℓ1); ``m = ceil(kfrac d)`` (ties included).
    """
    n = g.shape[0]
    flat = g.reshape(n, -1)
    a = jnp.abs(flat)
    if bounds is not None:
        xf = xa.reshape(n, -1)
        a = jnp.where(((xf <= bounds[0]) & (flat < 0)) | ((xf >= bounds[1]) & (flat > 0)), 0.0, a)
    d = flat.shape[1]
    m = jnp.clip(jnp.floor(kfrac * d + 1e-6), 1, d).astype(jnp.int32)
    thr = jnp.take_along_axis(-jnp.sort(-a, axis=1), (m - 1)[:, None], axis=1)
    mask = (a >= thr) & (a > 0)
    cnt = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(flat.dtype)
    return (jnp.where(mask, jnp.sign(flat), 0.0) / cnt).reshape(g.shape)


# ---------------------------------------------------------------------------
# APGD (Auto-PGD)
# ---------------------------------------------------------------------------


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """APGD's checkpoints ``w_j``: the reference implementation's integer form of ``w_j = ceil(p_j N)``.

    The paper's ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} -
    0.03, 0.06)`` is run as window lengths: the first ``max(floor(0.22 N),
    1)`` iterations, then each window ``max(floor(0.03 N), 1)`` shorter than
    the last but at least ``max(floor(0.06 N), 1)``; a checkpoint ends each
    window. For ``N = 100`` both give ``22, 41, 57, 70, 80, 87, 93, 99``; for
    other ``N`` this is what the reference code (and torchattacks) runs.

    Args:
      steps: the iteration budget ``N >= 1``.

    Returns:
      The checkpoints in ``(0, N]``, increasing.

    References:
      Croce, Hein. ICML 2020, arXiv:2003.01690, §3.2; the reference code
      github.com/fra31/auto-attack, ``autopgd_base.py`` (``n_iter_2``,
      ``size_decr``, ``n_iter_min``).
    """
    steps = _checks.check_int(steps, "steps", low=1)
    k, decr, k_min = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, w = [], k
    while w <= steps:
        out.append(w)
        k = max(k - decr, k_min)
        w += k
    return tuple(out)


def _apgd_objective(logits, y, target, loss):
    if loss == "ce":
        return cross_entropy(logits, y)
    if loss == "ce-targeted":
        return -cross_entropy(logits, target)
    return dlr_loss(logits, y, target if loss == "dlr-targeted" else None)


def _apgd_value_grad(model, y, target, keys, *, loss, eot):
    """``(f [n], logits [n, k], grad)`` at a point, the gradient averaged over ``eot`` model draws (EOT)."""

    def total(xa, ks):
        logits = model(xa, ks)
        return jnp.sum(_apgd_objective(logits, y, target, loss)), logits

    vg = jax.value_and_grad(total, has_aux=True)

    def at(xa, step):
        def draw(e, c):
            fs, ls, gs = c
            ks = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, step), e))(keys)
            (_, logits), g = vg(xa, ks)
            return fs + _apgd_objective(logits, y, target, loss), ls + logits, gs + g

        n, k = y.shape[0], jax.eval_shape(model, xa, keys).shape[1]
        if eot == 1:
            return draw(0, (jnp.zeros((n,)), jnp.zeros((n, k)), jnp.zeros_like(xa)))
        fs, ls, gs = lax.fori_loop(0, eot, draw, (jnp.zeros((n,)), jnp.zeros((n, k)), jnp.zeros_like(xa)))
        return fs / eot, ls / eot, gs / eot

    return at


def _apgd_run(x, y, target, keys, eps, x0, *, model, norm, steps, bounds, loss, eot, rho, momentum):
    """One APGD run from ``x0`` (Croce & Hein 2020, Algorithm 1): ``(x_found, logits_found, found, bad)``.

    ``found`` marks examples misclassified at some iterate (the first such
    iterate is kept), else ``x_found`` is the iterate of highest loss.
    ``bad`` marks examples where the model returned non-finite logits.

    The checkpoint rule is the reference implementation's: the step halves
    when at most ``rho h`` of the ``h`` steps of the window increased the
    loss over the previous iterate (``<=``; the first step of the first
    window is compared with 0, as the reference code's zero-initialised loss
    history does), or when the step was not halved at the previous
    checkpoint and the best loss has not improved since (never at the first
    checkpoint). A halving restarts from the best point and its gradient
    while the momentum point stays the iterate before the step.
    """
    n = x.shape[0]
    at = _apgd_value_grad(model, y, target, keys, loss=loss, eot=eot)
    ck = jnp.asarray(apgd_checkpoints(steps), jnp.int32)
    l1 = norm == "l1"

    def proj(z):
        if l1:
            return _project_l1_box(x, z, eps, bounds)
        return lp.project_in_box(x, z - x, eps, norm, bounds)

    def direction(g, xa, kfrac):
        return _sparse_l1_direction(g, xa, kfrac, bounds) if l1 else lp.steepest_ascent(g, norm)

    def track(st, xa, logits):
        adv_x, adv_logits, found, bad = st
        ok = _finite(logits)
        succ = (jnp.argmax(logits, axis=-1) != y) & ok
        take = succ & ~found
        return (jnp.where(_rows(take, x), xa, adv_x), jnp.where(take[:, None], logits, adv_logits),
                found | succ, bad | ~ok)

    f0, logits0, g0 = at(x0, 0)
    adv = track((x0, logits0, jnp.zeros((n,), bool), jnp.zeros((n,), bool)), x0, logits0)
    eta0 = (1.0 if l1 else 2.0) * eps
    kfrac0 = jnp.full((n,), 0.2 if l1 else 1.0, x.dtype)

    def body(i, c):
        xk, xprev, gk, f_prev, eta, best, cnt, last, adv, kfrac = c
        x_best, g_best, f_best = best
        f_last, reduced_last, ck_last = last
        z = proj(xk + _rows(eta, x) * direction(gk, xk, kfrac))
        a = jnp.where(i == 0, 1.0, momentum)
        xn = proj(xk + a * (z - xk) + (1.0 - a) * (xk - xprev))
        fn, logits_n, gn = at(xn, i + 1)
        adv = track(adv, xn, logits_n)
        fn = jnp.where(jnp.isfinite(fn), fn, -jnp.inf)
        cnt = cnt + (fn > f_prev)
        up = fn > f_best
        x_best, g_best, f_best = (jnp.where(_rows(up, x), xn, x_best), jnp.where(_rows(up, x), gn, g_best),
                                  jnp.where(up, fn, f_best))
        is_ck = jnp.any(ck == i + 1)
        h = (i + 1 - ck_last).astype(x.dtype)
        reduce = is_ck & ((cnt <= rho * h) | (~reduced_last & (f_last >= f_best)))
        rb = _rows(reduce, x)
        if l1:  # sparsity adapted to the best point's support at each reduction (Croce & Hein 2021)
            sp = jnp.sum((x_best - x).reshape(n, -1) != 0, axis=1) / x[0].size
            kfrac = jnp.where(reduce, jnp.clip(sp / 1.5, 1.0 / x[0].size, 1.0), kfrac)
        last = (jnp.where(is_ck, f_best, f_last), jnp.where(is_ck, reduce, reduced_last),
                jnp.where(is_ck, i + 1, ck_last))
        eta = jnp.where(reduce, eta / 2.0, eta)
        cnt = jnp.where(is_ck, 0.0, cnt)
        xn, gn = jnp.where(rb, x_best, xn), jnp.where(rb, g_best, gn)
        return xn, xk, gn, fn, eta, (x_best, g_best, f_best), cnt, last, adv, kfrac

    f0 = jnp.where(jnp.isfinite(f0), f0, -jnp.inf)
    init = (x0, x0, g0, jnp.zeros_like(f0), eta0, (x0, g0, f0), jnp.zeros((n,), x.dtype),
            (f0, jnp.ones((n,), bool), jnp.int32(0)), adv, kfrac0)
    out = lax.fori_loop(0, steps, body, init)
    (x_best, _, _), (adv_x, adv_logits, found, bad) = out[5], out[8]
    best_logits = model(x_best, keys)
    bad = bad | ~_finite(best_logits)
    return (jnp.where(_rows(found, x), adv_x, x_best), jnp.where(found[:, None], adv_logits, best_logits),
            found, bad)


def _apgd_start(x, keys, eps, norm, bounds):
    """The reference implementation's random start ``x^(0)`` per example (keys ``[n]``).

    ℓ∞: ``x + eps t / ||t||_inf`` with ``t`` uniform in ``[-1, 1]^d`` (a point
    on the surface of the cube); ℓ2: ``x + eps t / ||t||_2`` with ``t``
    standard normal (uniform on the sphere); both clipped to the box (which
    never leaves the ball). ℓ1: a standard normal step projected onto the
    ℓ1 ball intersected with the box.
    """
    n = x.shape[0]
    if norm == "linf":
        t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))(keys)
        s = jnp.max(jnp.abs(t.reshape(n, -1)), axis=1)
    else:
        t = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
        if norm == "l1":
            return _project_l1_box(x, x + t, eps, bounds)
        s = jnp.sqrt(jnp.sum(t.reshape(n, -1) ** 2, axis=1)) + _TINY
    x0 = x + _rows(eps / jnp.maximum(s, _TINY), x) * t
    return x0 if bounds is None else jnp.clip(x0, bounds[0], bounds[1])


def _apgd_core(x, y, idx, eps, key, r0=None, r1=None, *, logits_fn, randomized, norm, steps, restarts, n_targets,
               loss, bounds, eot, rho, momentum):
    """APGD over ``restarts`` random starts (and ``n_targets`` target classes for targeted losses).

    Run ``r`` is target ``r // restarts``, restart ``r % restarts``; ``r0 <= r
    < r1`` (default: all) selects a range, so that the host can drop the
    examples already broken between target classes.
    """
    n = x.shape[0]
    keys = example_keys(idx, key=key)
    model = _model(logits_fn, randomized)
    clean_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**20))(keys)
    logits_c = model(x, clean_keys)
    n_runs = n_targets if loss.endswith("targeted") else 1
    kw = dict(model=model, norm=norm, steps=steps, bounds=bounds, loss=loss, eot=eot, rho=rho, momentum=momentum)

    def run(r, st):
        best_x, best_logits, found, bad = st
        target = _targets(logits_c, y, r // restarts)
        rk = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
        x0 = _apgd_start(x, rk, eps, norm, bounds)
        xa, la, fa, ba = _apgd_run(x, y, target, jax.vmap(lambda k: jax.random.fold_in(k, r + 1))(rk), eps, x0,
                                   **kw)
        take = fa & ~found
        first = (r == r_lo) & ~found
        keep = take | first
        return (jnp.where(_rows(keep, x), xa, best_x), jnp.where(keep[:, None], la, best_logits), found | fa,
                bad | ba)

    init = (x, logits_c.astype(jnp.float32), jnp.zeros((n,), bool), ~_finite(logits_c))
    r_lo = 0 if r0 is None else r0
    best_x, best_logits, found, bad = lax.fori_loop(r_lo, n_runs * restarts if r1 is None else r1, run, init)
    best_logits = jnp.where(bad[:, None], jnp.nan, best_logits.astype(jnp.float32))
    return _result(x, best_x, found & ~bad, best_logits)


def apgd(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    key: Any,
    norm: Any,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    n_targets: int = 9,
    eot: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
) -> AttackResult:
    """Auto-PGD (APGD, Croce & Hein 2020): PGD with momentum and a step size that adapts itself.

    From the reference implementation's random start ``x^(0)`` (ℓ∞: a
    uniform direction scaled to the surface of the ``eps`` cube; ℓ2: a
    Gaussian direction scaled to the ``eps`` sphere; clipped to ``bounds``),
    with ``eta^(0) = 2 eps`` (ℓ∞, ℓ2; ``eps`` for ℓ1) and ``alpha = momentum``::

        z^(k+1) = P(x^(k) + eta^(k) s(grad f(x^(k))))
        x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))

    (no momentum in the first step), ``P`` the projection onto the ball
    clipped to ``bounds``, ``s`` the steepest-ascent direction (sign for ℓ∞,
    normalised gradient for ℓ2). At each checkpoint ``w_j``
    (:func:`apgd_checkpoints`) the step is halved and the iterate restarts
    from the best point (and its gradient; the momentum point ``x^(k-1)``
    stays the iterate before the step, as in the reference code) when at
    most ``rho (w_j - w_{j-1})`` steps increased the loss since ``w_{j-1}``,
    or when the step was not halved at ``w_{j-1}`` and the best loss has not
    improved since (§3.2, conditions 1 and 2; condition 2 is not tested at
    the first checkpoint). ℓ1 follows
    APGD-ℓ1 (Croce & Hein 2021): the step moves the top ``20%`` coordinates
    of the gradient that the box does not block, the projection is onto the
    ℓ1 ball intersected with the box, and the sparsity adapts to the best
    point's support whenever the step is reduced.

    Losses: ``"ce"`` (cross-entropy), ``"dlr"`` (:func:`dlr_loss`),
    ``"dlr-targeted"`` and ``"ce-targeted"``; the targeted losses run once
    per target class, the ``n_targets`` most likely classes other than
    ``y`` at ``x`` (APGD-T). Success always means misclassified
    (``argmax != y``); per example the first successful iterate over all
    runs is kept, else the point of highest loss of the first run.

    A randomised model takes a keyword ``key`` (``logits_fn(x, *, key)``):
    every example then gets its own draws, and ``eot`` draws average the
    gradient (expectation over transformation, the "rand" version).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]`` (or ``logits_fn(x, *, key)``).
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels; ``None`` uses the predictions.
      key: ``jax.random`` key.
      norm: ``"linf" | "l2" | "l1"`` (never defaulted).
      eps: budget ``> 0``.
      steps: iterations ``N`` per run (static); ``N + 1`` gradients each.
      restarts: random restarts per run (static).
      loss: see above.
      n_targets: target classes of the targeted losses (at most ``k - 1``).
      eot: gradient draws per step for randomised models (static).
      rho: the checkpoint's success-fraction threshold in ``(0, 1)``.
      momentum: ``alpha`` in ``(0, 1]``.
      bounds: ``(low, high)`` or ``None``.
      batch_size, progress, checkpoint: as in :func:`pgd`.

    Returns:
      :class:`AttackResult`.

    Raises:
      ValueError: a bad argument (named), or ``logits_fn`` returned
        non-finite logits (a NaN model is never "successfully attacked").

    References:
      Croce, Hein. "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks." ICML 2020,
      arXiv:2003.01690, Algorithm 1.
      Croce, Hein. "Mind the box: l1-APGD for sparse adversarial attacks on
      image classifiers." ICML 2021, arXiv:2103.01208.
    """
    prep = _prepare_auto(logits_fn, x, y, key=key, norm=norm, eps=eps, bounds=bounds)
    x, y, bounds, k, norm, eps = prep
    static = _apgd_static(logits_fn, k, norm=norm, steps=steps, restarts=restarts, loss=loss, n_targets=n_targets,
                          eot=eot, rho=rho, momentum=momentum, bounds=bounds)
    return _run_attack(_apgd_core, static, logits_fn, x, y, eps, key, batch_size=batch_size, progress=progress,
                       checkpoint=checkpoint, desc=f"apgd-{loss}")


def _apgd_static(logits_fn, k, *, norm, steps, restarts, loss, n_targets, eot, rho, momentum, bounds):
    loss = _checks.check_choice(loss, "loss", _APGD_LOSSES)
    n_targets = _checks.check_int(n_targets, "n_targets", low=1)
    return dict(logits_fn=logits_fn, randomized=_takes_key(logits_fn), norm=norm,
                steps=_checks.check_int(steps, "steps", low=1),
                restarts=_checks.check_int(restarts, "restarts", low=1), n_targets=min(n_targets, k - 1),
                loss=loss, bounds=bounds, eot=_checks.check_int(eot, "eot", low=1),
                rho=_checks.check_scalar(rho, "rho", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False),
                momentum=_checks.check_scalar(momentum, "momentum", low=0.0, high=1.0, low_inclusive=False))


def _prepare_auto(logits_fn, x, y, *, key, norm, eps, bounds):
    """Validate the arguments shared by apgd, fab, square and autoattack."""
    _checks.check_key(key)
    norm = _checks.check_attack_norm(norm)
    eps = _checks.check_scalar(eps, "eps", low=0.0, low_inclusive=False)
    _checks.check_logits_fn(logits_fn)
    randomized = _takes_key(logits_fn)
    f = (lambda z: logits_fn(z, key=jax.random.key(0))) if randomized else logits_fn
    bounds = _check_bounds(bounds)
    x = _checks.check_model_inputs(x, bounds)
    k = _checks.num_classes_of(f, x)
    if y is None:
        y = np.asarray(predict(f, x)) if _checks.is_concrete(x) else jnp.argmax(f(x), axis=-1).astype(jnp.int32)
    y = _checks.check_model_labels(y, x.shape[0], k, "y")
    return x, y, bounds, k, norm, eps


def _run_attack(core, static, logits_fn, x, y, eps, key, *, batch_size, progress, checkpoint, desc, idx=None,
                runs=()):
    """Run an AutoAttack kernel ``core(x, y, idx, eps [n], key, *runs)`` through the engine; raise on non-finite logits."""
    n = x.shape[0]
    if n == 0:
        f = (lambda z: logits_fn(z, key=jax.random.key(0))) if static.get("randomized") else logits_fn
        return _empty_result(f, x, None)
    concrete = _checks.is_concrete(x)
    if idx is None:
        idx = np.arange(n, dtype=np.int32) if concrete else jnp.arange(n, dtype=jnp.int32)
    eps_n = np.full(n, eps, np.float32) if concrete else jnp.full((n,), eps, jnp.float32)
    call_static = {k: v for k, v in static.items()}
    if static.get("randomized"):
        call_static["logits_fn"] = logits_fn
    if core is _square_core and concrete and _checks.is_concrete(y):
        res = _square_host(call_static, x, y, idx, eps_n, key, batch_size=batch_size, progress=progress,
                           checkpoint=checkpoint, desc=desc)
        _check_finite_logits(res.logits, desc)
        return res
    res = _execute_auto(core, call_static, (x, y, idx, eps_n), (key, *runs), batch_size=batch_size, progress=progress,
                        checkpoint=checkpoint, desc=desc)
    _check_finite_logits(res.logits, desc)
    return res


def _execute_auto(core, static, batch_args, rep_args, *, batch_size, progress, checkpoint, desc):
    """:func:`_execute` with the checkpoint probe run through a randomised model's fixed key."""
    if static.get("randomized") and checkpoint is not None:
        f = static["logits_fn"]
        job = (desc, np.asarray(f(np.asarray(batch_args[0])[:4], key=jax.random.key(0))))
        return _engine.run(core, static, batch_args, rep_args, block_size=batch_size, default_block=_DEFAULT_BATCH,
                           progress=progress, desc=desc, checkpoint=checkpoint, job=job)
    return _execute(core, static, batch_args, rep_args, batch_size=batch_size, progress=progress,
                    checkpoint=checkpoint, desc=desc)


# ---------------------------------------------------------------------------
# AutoAttack: the ensemble
# ---------------------------------------------------------------------------

#: Every attack name ``autoattack`` knows, in a fixed order (each attack's key is ``fold_in(key, position)``).
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_VERSIONS = ("standard", "rand", "custom")


class AutoAttackResult(NamedTuple):
    """Outcome of :func:`autoattack` on ``n`` examples: the per-point worst case over the ensemble.

    Attributes:
      x_adv: ``[n, ...]`` the adversarial example of each broken point, ``x``
        itself where the point is robust or misclassified already.
      robust: ``[n]`` bool, correctly classified and no attack found an
        adversarial example within ``eps``.
      broken_by: ``[n]`` int: ``-1`` robust, ``0`` misclassified without
        attack, ``j >= 1`` broken by ``attacks[j - 1]``.
      logits: ``[n, k]`` logits at ``x_adv``.
      attacks: the attack names, in the order they ran.
      robust_accuracy: ``[len(attacks) + 1]``: the clean accuracy, then the
        robust accuracy after each attack (never increasing).
      checks: the self-checks (see :func:`autoattack`), with ``"warnings"``,
        the list of messages of the checks that failed.
      l1, l2, linf: ``[n]`` norms of ``x_adv - x``.
    """

    x_adv: Any
    robust: Any
    broken_by: Any
    logits: Any
    attacks: tuple
    robust_accuracy: Any
    checks: dict
    l1: Any
    l2: Any
    linf: Any

    @property
    def clean_accuracy(self) -> float:
        """Fraction of points classified correctly without attack."""
        return float(self.robust_accuracy[0])

    @property
    def accuracy(self) -> float:
        """The final robust accuracy (after every attack)."""
        return float(self.robust_accuracy[-1])

    def broken_by_name(self) -> list[str]:
        """Per point ``"robust"``, ``"clean"`` (misclassified without attack) or the breaking attack's name."""
        names = ("clean",) + tuple(self.attacks)
        return ["robust" if b < 0 else names[b] for b in np.asarray(self.broken_by).tolist()]

    def norm(self, norm: Any) -> Any:
        """Perturbation norms ``[n]`` in ``"l1" | "l2" | "linf"``."""
        return {"l1": self.l1, "l2": self.l2, "linf": self.linf}[_checks.check_attack_norm(norm)]

    def to_dict(self, *, include_x_adv: bool = False) -> dict:
        """JSON-ready summary: accuracies per attack, per point robustness and breaking attack, the self-checks."""
        ra = np.asarray(self.robust_accuracy, np.float64)
        out = {
            "n": int(np.asarray(self.robust).shape[0]),
            "attacks": list(self.attacks),
            "clean_accuracy": to_jsonable(ra[0]),
            "robust_accuracy": to_jsonable(ra[-1]),
            "robust_accuracy_after": {name: to_jsonable(v) for name, v in zip(self.attacks, ra[1:])},
            "robust": to_jsonable(np.asarray(self.robust)),
            "broken_by": self.broken_by_name(),
            "l1": to_jsonable(self.l1),
            "l2": to_jsonable(self.l2),
            "linf": to_jsonable(self.linf),
            "checks": to_jsonable(self.checks),
        }
        if include_x_adv:
            out["x_adv"] = to_jsonable(self.x_adv)
        return out


def _auto_plan(version, attack_names, norm, k, bounds, *, steps, n_targets, n_queries, restarts, eot, p_init,
               fab_steps):
    """``[(name, core, static-without-logits_fn)]`` for the ensemble."""
    if attack_names is None:
        if version == "custom":
            raise ValueError("attacks: version='custom' needs the list of attacks")
        if version == "rand":
            attack_names = ("apgd-ce", "apgd-dlr")
        elif norm == "l1":
            attack_names = ("apgd-ce", "apgd-t", "fab-t")
        else:
            attack_names = ("apgd-ce", "apgd-t", "fab-t", "square")
    elif isinstance(attack_names, str) or not all(isinstance(a, str) for a in attack_names):
        raise ValueError(f"attacks: expected a sequence of attack names, got {attack_names!r}")
    names = tuple(attack_names)
    if not names:
        raise ValueError("attacks: is empty")
    for a in names:
        if a not in AUTOATTACK_ATTACKS:
            raise ValueError(f"attacks: unknown attack {a!r}; known: {', '.join(AUTOATTACK_ATTACKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"attacks: lists an attack twice: {list(names)}")
    if "square" in names and norm == "l1":
        raise ValueError("attacks: 'square' supports norm 'linf' and 'l2' only")
    eot = eot if version == "rand" else 1
    plan = []
    for a in names:
        if a.startswith("apgd"):
            loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[a]
            st = _apgd_static(None, k, norm=norm, steps=steps, restarts=restarts, loss=loss, n_targets=n_targets,
                              eot=eot, rho=0.75, momentum=0.75, bounds=bounds)
            plan.append((a, _apgd_core, st))
        elif a.startswith("fab"):
            plan.append((a, _fab_core, _fab_static(None, k, norm=norm, steps=fab_steps, restarts=restarts,
                                                   targeted=a == "fab-t", n_targets=n_targets, bounds=bounds)))
        else:
            # the original's ensemble: p_init 0.8 for both norms, the schedule at its own iterations (not rescaled)
            plan.append((a, _square_core, _square_static(None, norm=norm, n_queries=n_queries,
                                                         p_init=0.8 if p_init is None else p_init, bounds=bounds,
                                                         rescale_schedule=False)))
    return plan


def _fixed_key_model(logits_fn: Callable) -> Callable:
    """A deterministic view of the model (a randomised one with a fixed key) for predictions and checks."""
    if _takes_key(logits_fn):
        return functools.partial(logits_fn, key=jax.random.key(0))
    return logits_fn


def _logits_core(x, *, logits_fn):
    return logits_fn(x).astype(jnp.float32)


def _auto_state(checkpoint, fp):
    """Saved ensemble state ``(done, arrays)`` from ``checkpoint/autoattack_state.npz`` when its fingerprint matches."""
    if checkpoint is None:
        return 0, None
    path = Path(checkpoint) / "autoattack_state.npz"
    if not path.exists():
        return 0, None
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = {name: z[name] for name in z.files}
        if str(saved["fingerprint"]) != fp:
            return 0, None
        return int(saved["done"]), saved
    except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed
        warnings.warn(f"checkpoint: {path} is damaged ({type(exc).__name__}); recomputing the ensemble", stacklevel=3)
        return 0, None


def _save_auto_state(checkpoint, fp, done, **arrays):
    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.asarray(fp), done=np.asarray(done), **arrays)
    _io.atomic_write_bytes(Path(checkpoint) / "autoattack_state.npz", buf.getvalue())


def _bucket(n: int, batch_size: int | None) -> int:
    """Rows per call for ``n`` remaining points: a size class of at least 8, at most ``batch_size`` (default 512).

    The points are split into ``ceil(n / batch_size)`` equal calls, each
    rounded up to a quarter step between powers of two (``2^k``, ``1.25 *
    2^k``, ``1.5 * 2^k``, ``1.75 * 2^k``: 8, 10, 12, 14, 16, 20, ..., 448,
    512), and the remaining points are padded up to the block
    (:func:`_padded`). Each attack thus compiles at most four times per
    power of two, whatever the number of points still robust (the kernels are
    reused across the budgets of a sweep), and computes at most 25% padded
    rows (850 points: two calls of 448 rows, not 1,024).
    """
    cap = _DEFAULT_BATCH if batch_size is None else _checks.check_int(batch_size, "batch_size", low=1)
    calls = -(-max(n, 1) // cap)
    per = -(-max(n, 1) // calls)
    if per <= 8:
        return max(1, min(cap, 8))
    step = (1 << (per - 1).bit_length()) // 8
    return max(1, min(cap, -(-per // step) * step))


def _padded(rest: np.ndarray, block: int) -> np.ndarray:
    """``rest`` padded to ``block`` rows by repeating its last index (the padded rows' results are dropped)."""
    if rest.size >= block:
        return rest
    return np.concatenate([rest, np.repeat(rest[-1:], block - rest.size)])


def _run_groups(st, name):
    """The run ranges that the host runs one after the other: per target class for APGD-T and FAB-T, else all at once."""
    targeted = st.get("targeted", False) or str(st.get("loss", "")).endswith("targeted")
    if not targeted:
        return [()]
    r = st["restarts"]
    return [(np.int32(t * r), np.int32((t + 1) * r)) for t in range(st["n_targets"])]


def _ensemble_attack(logits_fn, x, y, eps, norm, bounds, name, core, st, j, key, state, *, batch_size, progress,
                     checkpoint):
    """One attack of the ensemble on the points still robust (each target class on the points left by the last)."""
    robust, broken_by, x_adv, logits = state
    sub = jax.random.fold_in(key, AUTOATTACK_ATTACKS.index(name))
    if "randomized" in st:  # APGD draws a randomised model's keys per example
        st = {**st, "logits_fn": logits_fn, "randomized": _takes_key(logits_fn)}
    else:
        st = {**st, "logits_fn": _fixed_key_model(logits_fn)}
    groups = _run_groups(st, name)
    for g, runs in enumerate(groups):
        rest = np.flatnonzero(robust)
        if not rest.size:
            break
        ck = None if checkpoint is None else Path(checkpoint) / (name if len(groups) == 1 else f"{name}_{g}")
        block = _bucket(rest.size, batch_size)
        run = _padded(rest, block)
        r = _run_attack(core, st, logits_fn, x[run], y[run], eps, sub, idx=run.astype(np.int32),
                        batch_size=block, progress=progress, checkpoint=ck, desc=name, runs=runs)
        xr = np.asarray(r.x_adv, np.float32)[: rest.size]
        inside = perturbation_norms(x[rest], xr, norm) <= eps * (1 + 1e-5) + 1e-7
        if bounds is not None:
            inside &= (xr.reshape(rest.size, -1).min(1, initial=bounds[0]) >= bounds[0]) & (
                xr.reshape(rest.size, -1).max(1, initial=bounds[1]) <= bounds[1])
        hit = rest[np.asarray(r.success)[: rest.size] & inside]
        sel = np.isin(rest, hit)
        x_adv[hit], logits[hit] = xr[sel], np.asarray(r.logits, np.float32)[: rest.size][sel]
        robust[hit], broken_by[hit] = False, j + 1


def _run_ensemble(logits_fn, x, y, eps, norm, bounds, plan, key, state, *, batch_size, progress, checkpoint, fp):
    """Run the attacks of ``plan`` in turn, each on the points still robust; returns the updated state.

    As in the original, APGD-T and FAB-T run one target class after the
    other, each on the points that the previous classes left robust, and
    Square drops the broken points between segments of its iterations: no
    work is spent on points already broken.
    """
    robust, broken_by, x_adv, logits, acc, done = state
    for j, (name, core, st) in enumerate(plan):
        if j < done:
            continue
        _ensemble_attack(logits_fn, x, y, eps, norm, bounds, name, core, st, j, key, (robust, broken_by, x_adv, logits),
                         batch_size=batch_size, progress=progress, checkpoint=checkpoint)
        acc.append(float(robust.mean()))
        if checkpoint is not None:
            _save_auto_state(checkpoint, fp, j + 1, robust=robust, broken_by=broken_by, x_adv=x_adv, logits=logits,
                             acc=np.asarray(acc))
    return robust, broken_by, x_adv, logits, acc


def _self_checks(logits_fn, x, y, pred, logits0, acc, broken_by, names, version, *, batch_size):
    """The ensemble's self-checks (the original's warnings), as a dict; failed ones are listed under "warnings"."""
    f = _fixed_key_model(logits_fn)
    n, msgs = x.shape[0], []
    m = min(n, 64)
    pred2 = np.asarray(predict(f, x[:m], batch_size=max(1, (m + 2) // 3)))
    consistent = bool(np.array_equal(pred2, pred[:m]))
    if not consistent:
        msgs.append("clean predictions change with the batch split: the model does not treat examples independently "
             "(batch statistics?), so robust accuracy is not well defined")
    xs = jnp.asarray(x[: min(n, 16)])
    if _takes_key(logits_fn):
        o1, o2 = logits_fn(xs, key=jax.random.key(1)), logits_fn(xs, key=jax.random.key(2))
    else:
        o1, o2 = logits_fn(xs), logits_fn(xs)
    randomized = not np.array_equal(np.asarray(o1), np.asarray(o2))
    if randomized and version != "rand":
        msgs.append("the model's outputs differ between two calls on the same inputs: it is randomised; use "
             "version='rand' (EOT over the randomness)")
    probs = bool(np.all(logits0 >= 0) and np.all(logits0 <= 1) and np.allclose(logits0.sum(1), 1.0, atol=1e-5))
    if probs:
        msgs.append("the model seems to return probabilities (rows in [0, 1] summing to 1); the DLR losses and FAB need "
             "logits")
    sel = np.flatnonzero(pred == y)[:64]
    zero = nonfinite = 0.0
    if sel.size:
        g = np.asarray(jax.jit(jax.grad(lambda z, t: jnp.sum(cross_entropy(f(z), t))))(x[sel], y[sel]))
        g = g.reshape(sel.size, -1)
        nonfinite = float((~np.isfinite(g)).any(1).mean())
        zero = float((g == 0).all(1).mean())
    if zero > 0 or nonfinite > 0:
        msgs.append(f"the loss gradient is zero at {zero:.1%} and non-finite at {nonfinite:.1%} of the checked points: "
             "gradient masking is likely, so the gradient-free Square result matters")
    sq = 0.0
    if "square" in names and names.index("square") > 0:
        sq = float(np.mean(np.asarray(broken_by) == names.index("square") + 1))
        if sq > 0.002:
            msgs.append(f"Square broke {sq:.1%} of all points after the gradient attacks had left them robust: a sign "
                        "of gradient masking")
    nonincreasing = bool(np.all(np.diff(np.asarray(acc)) <= 0))
    if not nonincreasing:
        msgs.append("robust accuracy increased when an attack was added (a bug or a randomised model)")
    return {"clean_accuracy": float(acc[0]), "clean_accuracy_consistent": consistent,
            "randomized_outputs": randomized, "probability_outputs": probs, "zero_gradient_fraction": zero,
            "nonfinite_gradient_fraction": nonfinite, "square_after_gradient_fraction": sq,
            "robust_accuracy_nonincreasing": nonincreasing, "warnings": msgs}


def autoattack(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    key: Any,
    eps: float,
    norm: Any,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    bounds: Sequence[float] | None = (0.0, 1.0),
    steps: int = 100,
    n_targets: int = 9,
    n_queries: int = 5000,
    restarts: int = 1,
    eot: int = 20,
    p_init: float | None = None,
    self_checks: bool = True,
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
) -> AutoAttackResult:
    """AutoAttack (Croce & Hein 2020): the ensemble APGD-CE, APGD-T, FAB-T and Square, the per-point worst case.

    The clean points misclassified count as broken; then each attack runs
    only on the points still robust (as in the original), and a point is
    broken by the first attack that finds a misclassified point within
    ``eps`` (checked again on the host: norm and box). Versions:

    * ``"standard"``: ``apgd-ce`` (no restarts), ``apgd-t`` (``n_targets``
      target classes), ``fab-t`` (``n_targets`` targets) and ``square``
      (``n_queries`` queries), each with ``steps`` iterations; for ``l1``:
      ``apgd-ce``, ``apgd-t`` (APGD-ℓ1) and ``fab-t``.
    * ``"rand"``: ``apgd-ce`` and ``apgd-dlr`` with EOT over ``eot`` draws,
      for randomised models (``logits_fn(x, *, key)``).
    * ``"custom"``: the ``attacks`` given (names of
      :data:`AUTOATTACK_ATTACKS`), which also override the other versions'
      lists.

    Self-checks (the original's warnings, kept in ``checks``; every failed
    one is also issued as a ``UserWarning``): clean predictions do not change
    with the batch split (``clean_accuracy_consistent``); two calls on the
    same inputs agree (``randomized_outputs``, else use ``"rand"``); the
    outputs are not probabilities; the fraction of points with a zero or
    non-finite loss gradient (gradient masking); the fraction Square broke
    after the gradient attacks (> 0.2% flags masking); robust accuracy never
    increases along the ensemble.

    Randomness of example ``i`` depends only on ``(key, i)`` and the attack,
    so the same key gives bit-identical results whatever the batch size, the
    device count or a resumed ``checkpoint``. ``autoattack`` selects points
    on the host and needs concrete arrays; the attacks :func:`apgd`,
    :func:`fab` and :func:`square` also run under ``jax.jit``.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]`` (a randomised model takes
        a keyword ``key``).
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels; ``None`` uses the predictions.
      key: ``jax.random`` key.
      eps: budget ``> 0``.
      norm: ``"linf" | "l2" | "l1"``.
      version: ``"standard" | "rand" | "custom"``.
      attacks: attack names run in this order (``None``: the version's).
      bounds: ``(low, high)`` or ``None``.
      steps: iterations of APGD and FAB.
      n_targets: target classes of ``apgd-t`` and ``fab-t``.
      n_queries: Square's queries (``>= 1``).
      restarts: random restarts of APGD and FAB.
      eot: gradient draws per step in the ``"rand"`` version.
      p_init: Square's initial fraction of pixels (default 0.8, the
        original's for both norms; Square's schedule is not rescaled to
        ``n_queries``, as in the original).
      self_checks: run the self-checks.
      batch_size: examples per batch group (the remaining points of each
        attack run in power-of-two blocks up to it).
      progress: progress bars per attack.
      checkpoint: folder keeping finished attacks and batches; a rerun with
        the same inputs resumes (removed when done).

    Returns:
      :class:`AutoAttackResult`.

    Raises:
      ValueError: a bad argument (named), or ``logits_fn`` returned
        non-finite logits (such a model is never reported as attacked).

    References:
      Croce, Hein. "Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks." ICML 2020, arXiv:2003.01690.
      Croce, Hein. "Minimally distorted adversarial examples with a fast
      adaptive boundary attack." ICML 2020, arXiv:1907.02044.
      Andriushchenko, Croce, Flammarion, Hein. "Square attack: a
      query-efficient black-box adversarial attack via random search."
      ECCV 2020, arXiv:1912.00049.
    """
    version = _checks.check_choice(version, "version", _VERSIONS)
    if not isinstance(self_checks, (bool, np.bool_)):
        raise ValueError(f"self_checks: expected a bool, got {self_checks!r}")
    x, y, bounds, k, norm, eps = _prepare_auto(logits_fn, x, y, key=key, norm=norm, eps=eps, bounds=bounds)
    if not _checks.is_concrete(x) or not _checks.is_concrete(y):
        raise ValueError("x: autoattack selects the points still robust on the host and needs concrete arrays; "
                         "call apgd, fab or square under jax.jit instead")
    plan = _auto_plan(version, attacks, norm, k, bounds, steps=steps, n_targets=n_targets, n_queries=n_queries,
                      restarts=restarts, eot=_checks.check_int(eot, "eot", low=1), p_init=p_init, fab_steps=steps)
    names = tuple(p[0] for p in plan)
    f = _fixed_key_model(logits_fn)
    n = x.shape[0]
    logits0 = np.asarray(_execute(_logits_core, dict(logits_fn=f), (x,), (), batch_size=batch_size), np.float32) \
        if n else np.zeros((0, k), np.float32)
    _check_finite_logits(logits0, "the clean evaluation")
    pred = logits0.argmax(1).astype(np.int32)
    robust = pred == y
    state = (robust, np.where(robust, -1, 0).astype(np.int32), x.copy(), logits0.copy(),
             [float(robust.mean()) if n else float("nan")], 0)
    fp = None
    if checkpoint is not None and n:
        settings = repr([(nm, sorted((a, b) for a, b in st.items() if not callable(b) and a != "logits_fn"))
                         for nm, _, st in plan])
        fp = _io.fingerprint("autoattack", settings, norm, eps, bounds, x, y, _engine.key_data(key), logits0[:4])
        done, saved = _auto_state(checkpoint, fp)
        if saved is not None:
            state = (saved["robust"], saved["broken_by"], saved["x_adv"], saved["logits"], list(saved["acc"]), done)
    if n:
        robust, broken_by, x_adv, logits, acc = _run_ensemble(
            logits_fn, x, y, eps, norm, bounds, plan, key, state, batch_size=batch_size, progress=progress,
            checkpoint=checkpoint, fp=fp)
    else:
        robust, broken_by, x_adv, logits, acc = state[:4] + ([float("nan")] * (len(plan) + 1),)
    checks = {}
    if self_checks and n:
        checks = _self_checks(logits_fn, x, y, pred, logits0, acc, broken_by, names, version, batch_size=batch_size)
        for msg in checks["warnings"]:
            warnings.warn(f"autoattack: {msg}", UserWarning, stacklevel=2)
    if checkpoint is not None and n:
        import shutil

        shutil.rmtree(checkpoint, ignore_errors=True)
    l1, l2, linf = (perturbation_norms(x, x_adv, nm).astype(np.float32) for nm in ("l1", "l2", "linf"))
    return AutoAttackResult(x_adv, robust, broken_by, logits, names, np.asarray(acc, np.float64), checks, l1, l2, linf)


# ---------------------------------------------------------------------------
# Square attack (score-based)
# ---------------------------------------------------------------------------

_SQUARE_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _square_p(p_init, i, n_queries):
    """Square's schedule: ``p_init`` halved after iterations 10, 50, 200, ..., 8000 of 10,000 (rescaled to ``n_queries``)."""
    ip = (i * 10000) // max(n_queries, 1)
    halvings = sum((ip > t).astype(jnp.int32) for t in _SQUARE_STEPS)
    return p_init / (2.0 ** halvings)


def _image_shape(shape):
    """``(H, W, C)`` of one example: images ``[H, W, C]``; ``[H, W]``; a flat ``[d]`` as a ``1 x d`` strip."""
    if len(shape) == 3:
        return tuple(int(s) for s in shape)
    if len(shape) == 2:
        return int(shape[0]), int(shape[1]), 1
    return 1, int(np.prod(shape)), 1


def _window_sides(p, hwc, *, minimum, odd):
    """Side lengths ``(sh, sw)`` of a square covering a fraction ``p`` of the pixels (a strip segment when H = 1)."""
    h, w, _ = hwc
    if h == 1:
        sw = jnp.clip(jnp.round(p * w), 1, max(w - 1, 1)).astype(jnp.int32)
        return jnp.int32(1), sw
    s = jnp.maximum(jnp.round(jnp.sqrt(p * h * w)), minimum)
    if odd:
        s = jnp.where(s % 2 == 0, s + 1, s)
    s = jnp.clip(s, 1, max(min(h, w) - 1, 1)).astype(jnp.int32)
    return s, s


def _window(keys, sh, sw, hwc):
    """A random ``sh x sw`` window per example: ``(mask [n, H, W, 1], top [n], left [n])``."""
    h, w, _ = hwc
    kr, kc = jax.vmap(jax.random.split)(keys).transpose(1, 0)
    top = jax.vmap(lambda k: jax.random.randint(k, (), 0, h - sh + 1))(kr)
    left = jax.vmap(lambda k: jax.random.randint(k, (), 0, w - sw + 1))(kc)
    r = jnp.arange(h)[None, :, None, None] - top[:, None, None, None]
    c = jnp.arange(w)[None, None, :, None] - left[:, None, None, None]
    return (r >= 0) & (r < sh) & (c >= 0) & (c < sw), top, left


def _square_linf_step(i, xi, delta, keys, eps, *, p, hwc, lo, hi):
    """Candidate of one ℓ∞ Square iteration: a window set to ``±eps`` per channel (a change guaranteed)."""
    sh, sw = _window_sides(p, hwc, minimum=1, odd=False)
    k1, k2 = jax.vmap(jax.random.split)(jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)).transpose(1, 0)
    mask, _, _ = _window(k1, sh, sw, hwc)
    sgn = jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, hwc[2]), xi.dtype))(k2)
    e = eps[:, None, None, None]
    cand = jnp.clip(xi + sgn * e, lo, hi) - xi
    same = jnp.all(jnp.where(mask, jnp.abs(cand - delta) < 1e-7, True), axis=(1, 2, 3))
    cand = jnp.where(same[:, None, None, None], jnp.clip(xi - sgn * e, lo, hi) - xi, cand)
    return jnp.where(mask, cand, delta)


def _pseudo_gaussian(u, v, sh, sw, table):
    """The centred pseudo-Gaussian pattern of an ``sh x sw`` rectangle at relative pixel ``(u, v)`` (0 outside)."""
    m = jnp.maximum(sh, sw) // 2
    level = jnp.maximum(jnp.abs(u - sh // 2), jnp.abs(v - sw // 2))
    inside = (u >= 0) & (u < sh) & (v >= 0) & (v < sw)
    return jnp.where(inside, table[m + 1] - table[jnp.clip(level, 0, m + 1)], 0.0)


def _meta_pattern(top, left, sh, sw, flip, hwc, table):
    """Unit-ℓ2 two-halves pattern ``[+eta, -eta]`` in a window (halves side by side, or stacked when ``flip``)."""
    h, w, _ = hwc
    u = jnp.arange(h)[None, :, None, None] - top[:, None, None, None]
    v = jnp.arange(w)[None, None, :, None] - left[:, None, None, None]
    fl = flip[:, None, None, None]
    a, b = jnp.where(fl, v, u), jnp.where(fl, u, v)
    half = jnp.maximum(sw // 2, 1)
    pat = _pseudo_gaussian(a, b, sh, half, table) - _pseudo_gaussian(a, b - half, sh, sw - half, table)
    nrm = jnp.sqrt(jnp.sum(pat * pat, axis=(1, 2, 3), keepdims=True))
    return pat / jnp.maximum(nrm, _TINY)


def _square_l2_step(i, xi, delta, keys, eps, *, p, hwc, lo, hi, table):
    """Candidate of one ℓ2 Square iteration: mass of window 2 and the unused budget moved into window 1."""
    sh, sw = _window_sides(p, hwc, minimum=3, odd=True)
    ks = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i), 4))(keys)
    m1, top, left = _window(ks[:, 0], sh, sw, hwc)
    m2, _, _ = _window(ks[:, 1], sh, sw, hwc)
    sgn = jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, hwc[2]), xi.dtype))(ks[:, 2])
    flip = jax.vmap(lambda k: jax.random.bernoulli(k))(ks[:, 3]) & (hwc[0] > 1)
    pat = _meta_pattern(top, left, sh, sw, flip, hwc, table) * sgn
    e2 = (eps * eps)[:, None, None, None]
    total = jnp.sum(delta * delta, axis=(1, 2, 3), keepdims=True)
    spare = jnp.maximum(e2 - total, 0.0) / hwc[2]
    union = jnp.sum(jnp.where(m1 | m2, delta * delta, 0.0), axis=(1, 2), keepdims=True)  # per channel
    old = jnp.where(m1, delta, 0.0)
    old = old / (jnp.sqrt(jnp.sum(old * old, axis=(1, 2), keepdims=True)) + 1e-10)
    new = pat + old
    new = new / jnp.maximum(jnp.sqrt(jnp.sum(new * new, axis=(1, 2), keepdims=True)), _TINY)
    new = new * jnp.sqrt(union + spare)
    d = jnp.where(m1, new, jnp.where(m2, 0.0, delta))
    nrm = jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3), keepdims=True))
    d = d * jnp.minimum(1.0, jnp.sqrt(e2) / jnp.maximum(nrm, _TINY))
    return jnp.clip(xi + d, lo, hi) - xi


def _square_init(xi, keys, eps, *, norm, hwc, lo, hi, table):
    """ℓ∞: vertical stripes of ``±eps``; ℓ2: a grid of pseudo-Gaussian squares of random signs, scaled to ``eps``."""
    h, w, c = hwc
    if norm == "linf":
        sgn = jax.vmap(lambda k: jax.random.rademacher(k, (1, w, c), xi.dtype))(keys)
        return jnp.clip(xi + sgn * eps[:, None, None, None], lo, hi) - xi
    sb = max(h // 5, 1) if h > 1 else max(w // 5, 1)
    d = jnp.zeros_like(xi)
    ks = jax.vmap(lambda k: jax.random.split(k, (h // max(sb, 1) + 1) * (w // sb + 1)))(keys)
    j = 0
    for r in range(0, h - sb + 1 if h > 1 else 1, sb if h > 1 else 1):
        for cc in range(0, w - sb + 1, sb):
            top, left = jnp.full((xi.shape[0],), r), jnp.full((xi.shape[0],), cc)
            sh = sb if h > 1 else 1
            pat = _meta_pattern(top, left, sh, sb, jnp.zeros((xi.shape[0],), bool), hwc, table)
            d = d + pat * jax.vmap(lambda k: jax.random.rademacher(k, (1, 1, c), xi.dtype))(ks[:, j])
            j += 1
    nrm = jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3), keepdims=True))
    return jnp.clip(xi + d * eps[:, None, None, None] / jnp.maximum(nrm, _TINY), lo, hi) - xi


def _square_setup(x, idx, key, *, norm, bounds):
    hwc = _image_shape(x.shape[1:])
    lo, hi = (-jnp.inf, jnp.inf) if bounds is None else bounds
    table = jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max(hwc) + 3) ** 2)]), x.dtype)
    return hwc, lo, hi, example_keys(idx, key=key), table


def _square_start_core(x, y, idx, eps, key, *, logits_fn, norm, n_queries, p_init, bounds, rescale_schedule=True):
    """Square's first query per example: ``(delta [n, ...], margin [n], logits [n, k], bad [n])``."""
    n = x.shape[0]
    hwc, lo, hi, keys, table = _square_setup(x, idx, key, norm=norm, bounds=bounds)
    xi = x.reshape((n,) + hwc)
    d0 = _square_init(xi, jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), eps, norm=norm, hwc=hwc, lo=lo,
                      hi=hi, table=table)
    logits_x = logits_fn(x)
    m_x = margin(logits_x, y)
    l0 = logits_fn((xi + d0).reshape(x.shape))
    ok0 = _finite(l0)
    m0 = jnp.where(ok0, margin(l0, y), jnp.inf)
    # points misclassified at x stay at x; otherwise start from the initial perturbation
    keep_x = m_x <= 0
    d0 = jnp.where(keep_x[:, None, None, None], 0.0, d0)
    m0, l0 = jnp.where(keep_x, m_x, m0), jnp.where(keep_x[:, None], logits_x, l0)
    bad0 = ~_finite(logits_x) | ~ok0
    return d0.reshape(x.shape), m0, l0.astype(jnp.float32), bad0


def _square_iterate_core(x, y, idx, eps, d, m, logits, bad, key, i0, i1, *, logits_fn, norm, n_queries, p_init,
                         bounds, rescale_schedule=True):
    """Square's iterations ``i0 <= i < i1`` (one query each); stops once every example is broken (or bad)."""
    n = x.shape[0]
    hwc, lo, hi, keys, table = _square_setup(x, idx, key, norm=norm, bounds=bounds)
    xi = x.reshape((n,) + hwc)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    def body(c):
        i, d, m, logits, bad = c
        p = _square_p(p_init, i, n_queries if rescale_schedule else 10000)
        if norm == "linf":
            cand = _square_linf_step(i, xi, d, step_keys, eps, p=p, hwc=hwc, lo=lo, hi=hi)
        else:
            cand = _square_l2_step(i, xi, d, step_keys, eps, p=p, hwc=hwc, lo=lo, hi=hi, table=table)
        lc = logits_fn((xi + cand).reshape(x.shape))
        ok = _finite(lc)
        mc = jnp.where(ok, margin(lc, y), jnp.inf)
        take = (m > 0) & (mc < m)
        return (i + 1, jnp.where(take[:, None, None, None], cand, d), jnp.where(take, mc, m),
                jnp.where(take[:, None], lc.astype(logits.dtype), logits), bad | ~ok)

    def cond(c):
        i, _, m, _, bad = c
        return (i < i1) & jnp.any((m > 0) & ~bad)

    _, d, m, logits, bad = lax.while_loop(cond, body, (jnp.asarray(i0, jnp.int32), d.reshape((n,) + hwc), m, logits,
                                                        bad))
    return d.reshape(x.shape), m, logits, bad


def _square_finish(x, y, d, m, logits, bad) -> AttackResult:
    logits = jnp.where(jnp.asarray(bad)[:, None], jnp.nan, jnp.asarray(logits, jnp.float32))
    return _result(x, x + d, (jnp.asarray(m) < 0) & ~jnp.asarray(bad) & (jnp.argmax(logits, -1) != y), logits)


def _square_core(x, y, idx, eps, key, **st):
    """Square attack on a batch (Andriushchenko et al. 2020, Algorithm 1 with the margin loss), in one call."""
    d, m, logits, bad = _square_start_core(x, y, idx, eps, key, **st)
    d, m, logits, bad = _square_iterate_core(x, y, idx, eps, d, m, logits, bad, key, 0, st["n_queries"] - 1, **st)
    return _square_finish(x, y, d, m, logits, bad)


def _square_segments(n_queries: int) -> list[tuple[int, int]]:
    """Iteration ranges between which the host drops the broken examples: the schedule's early halvings, then every 1,000."""
    last = n_queries - 1
    marks = [b for b in (10, 50, 200, 500, 1000) if b < last] + list(range(2000, last, 1000))
    edges = [0] + marks + [last]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _square_host(static, x, y, idx, eps_n, key, *, batch_size, progress, checkpoint, desc) -> AttackResult:
    """Square on concrete arrays: between segments of iterations, only the examples still unbroken are queried.

    Each segment runs on the remaining examples padded to the block, which
    starts at the caller's and shrinks to the size class of
    :func:`_bucket` as examples break; the iteration range is an argument,
    so that each block size compiles once. Randomness depends only on the example and the
    iteration, so the result equals one uninterrupted run.
    """
    def ck(name):
        return None if checkpoint is None else Path(checkpoint) / name

    x, y, idx, eps_n = np.asarray(x), np.asarray(y), np.asarray(idx), np.asarray(eps_n)
    d, m, logits, bad = (np.array(a) for a in _execute(_square_start_core, static, (x, y, idx, eps_n), (key,),
                                                          batch_size=batch_size, checkpoint=ck("start"), desc=desc))
    block = _engine.block_rows(batch_size, _DEFAULT_BATCH, n=x.shape[0])
    for j, (i0, i1) in enumerate(_square_segments(static["n_queries"])):
        act = np.flatnonzero((m > 0) & ~bad)
        if not act.size:
            break
        b = _bucket(act.size, batch_size)
        block = min(b, block)
        run = _padded(act, block)
        out = _execute(_square_iterate_core, static, (x[run], y[run], idx[run], eps_n[run], d[run], m[run],
                                                      logits[run], bad[run]), (key, np.int32(i0), np.int32(i1)),
                       batch_size=block, progress=progress, checkpoint=ck(f"iterations_{i0}"), desc=desc)
        for a, o in zip((d, m, logits, bad), out):
            a[act] = np.asarray(o)[: act.size]
    return _square_finish(x, y, d, m, logits, bad)


def _square_static(logits_fn, *, norm, n_queries, p_init, bounds, rescale_schedule=True):
    norm = _checks.check_attack_norm(norm)
    if norm == "l1":
        raise ValueError("norm: the Square attack supports 'linf' and 'l2'")
    n_queries = _checks.check_int(n_queries, "n_queries", low=1)
    p_init = (0.8 if norm == "linf" else 0.1) if p_init is None else _checks.check_scalar(
        p_init, "p_init", low=0.0, high=1.0, low_inclusive=False)
    if not isinstance(rescale_schedule, (bool, np.bool_)):
        raise ValueError(f"rescale_schedule: expected a bool, got {rescale_schedule!r}")
    return dict(logits_fn=logits_fn, norm=norm, n_queries=n_queries, p_init=float(p_init), bounds=bounds,
                rescale_schedule=bool(rescale_schedule))


def square(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    key: Any,
    norm: Any,
    eps: float,
    n_queries: int = 5000,
    p_init: float | None = None,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
    rescale_schedule: bool = True,
) -> AttackResult:
    """The Square attack (Andriushchenko et al. 2020): random search on the margin loss, no gradients.

    Only the model's scores are used (``n_queries`` forward passes per
    example). ℓ∞: starts from vertical stripes of ``±eps`` and, at every
    iteration, sets a random square window (side ``sqrt(p h w)`` pixels, each
    channel one random ``±eps``) and keeps the candidate when the margin
    ``z_y - max_{j != y} z_j`` decreases. ℓ2: starts from a grid of
    pseudo-Gaussian squares and moves the mass of a second window plus the
    unused budget into the first window, with a centred two-halves
    pseudo-Gaussian pattern of random sign (§3.2), staying on the ``eps``
    sphere before clipping to the box. ``p`` starts at ``p_init`` (0.8 for
    ℓ∞, 0.1 for ℓ2) and halves after iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 of 10,000, rescaled to ``n_queries``
    (``rescale_schedule=False``: at those iterations themselves, as the
    original AutoAttack runs it). An
    example stops changing once misclassified. Images are ``[n, H, W, C]``
    (``[n, H, W]`` or flat ``[n, d]`` inputs are ``1 x d`` strips).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels; ``None`` uses the predictions.
      key: ``jax.random`` key.
      norm: ``"linf" | "l2"``.
      eps: budget ``> 0``.
      n_queries: model queries per example (``>= 1``, static).
      p_init: initial fraction of pixels in a window (in ``(0, 1]``).
      bounds: ``(low, high)`` or ``None``.
      batch_size, progress, checkpoint: as in :func:`pgd`.
      rescale_schedule: rescale the halving iterations to ``n_queries``.

    Returns:
      :class:`AttackResult` (``success``: misclassified at ``x_adv``).

    Raises:
      ValueError: a bad argument (named), or non-finite logits (naming ``logits_fn``).

    References:
      Andriushchenko, Croce, Flammarion, Hein. "Square attack: a
      query-efficient black-box adversarial attack via random search."
      ECCV 2020, arXiv:1912.00049, Algorithms 1-3.
    """
    static = _square_static(logits_fn, norm=norm, n_queries=n_queries, p_init=p_init, bounds=None,
                            rescale_schedule=rescale_schedule)
    x, y, bounds, _, norm, eps = _prepare_auto(logits_fn, x, y, key=key, norm=norm, eps=eps, bounds=bounds)
    if _takes_key(logits_fn):
        raise ValueError("logits_fn: the Square attack needs a deterministic model (no key parameter)")
    static["bounds"] = bounds
    return _run_attack(_square_core, static, logits_fn, x, y, eps, key, batch_size=batch_size, progress=progress,
                       checkpoint=checkpoint, desc="square")


# ---------------------------------------------------------------------------
# FAB (fast adaptive boundary attack)
# ---------------------------------------------------------------------------


def _hyperplane_box_step(w, b, lo, hi, norm):
    """Minimal-``norm`` ``delta [n, d]`` with ``<w, delta> = b`` and ``lo <= delta <= hi`` (FAB's projection).

    ``lo <= 0 <= hi``. Flipping signs makes ``b >= 0``; coordinate ``i``
    moves ``sign(w_i) min(lambda r_i, c_i)`` with capacity ``c_i`` (the box in
    the useful direction) and rate ``r_i = |w_i|`` (ℓ2) or 1 (ℓ∞), so that
    ``<w, delta>`` is piecewise linear and increasing in ``lambda``; the
    breakpoints ``c_i / r_i`` are sorted and ``lambda`` solved exactly on
    its segment. ℓ1 fills coordinates in decreasing ``|w_i|`` (greedy, exact
    for a linear objective). When even the whole box cannot reach the
    hyperplane, every coordinate moves to its capacity.
    """
    s = jnp.where(b < 0, -1.0, 1.0)[:, None]
    w, b = w * s, jnp.abs(b)
    a = jnp.abs(w)
    cap = jnp.where(w > 0, hi, -lo)
    cap = jnp.where(a > 0, cap, 0.0)
    big = jnp.asarray(1e30, w.dtype)
    if norm == "l1":
        order = jnp.argsort(-a, axis=1)
        a_s, c_s = jnp.take_along_axis(a, order, 1), jnp.take_along_axis(cap, order, 1)
        full = jnp.cumsum(a_s * c_s, axis=1)
        before = full - a_s * c_s
        part = jnp.clip((b[:, None] - before) / jnp.maximum(a_s, _TINY), 0.0, c_s)
        amt_s = jnp.where(full <= b[:, None], c_s, jnp.where(before < b[:, None], part, 0.0))
        amt = jnp.zeros_like(amt_s).at[jnp.arange(a.shape[0])[:, None], order].set(amt_s)
        return jnp.sign(w) * amt * s
    r = a if norm == "l2" else (a > 0).astype(w.dtype)
    t = jnp.where(r > 0, cap / jnp.maximum(r, _TINY), big)
    order = jnp.argsort(t, axis=1)
    t_s, a_s, r_s, c_s = (jnp.take_along_axis(v, order, 1) for v in (t, a, r, cap))
    sat = jnp.cumsum(a_s * c_s, axis=1)  # contribution of coordinates saturated at t_(j)
    slope = jnp.sum(a_s * r_s, axis=1, keepdims=True) - jnp.cumsum(a_s * r_s, axis=1)
    g = sat + jnp.where(slope > 0, t_s * slope, 0.0)
    j = jnp.argmax(g >= b[:, None], axis=1)  # first breakpoint reaching b
    feasible = jnp.any(g >= b[:, None], axis=1)
    sat_prev = jnp.where(j > 0, jnp.take_along_axis(sat, jnp.maximum(j - 1, 0)[:, None], 1)[:, 0], 0.0)
    slope_prev = jnp.where(j > 0, jnp.take_along_axis(slope, jnp.maximum(j - 1, 0)[:, None], 1)[:, 0],
                           jnp.sum(a_s * r_s, axis=1))
    lam = jnp.where(feasible, (b - sat_prev) / jnp.maximum(slope_prev, _TINY), big)
    return jnp.sign(w) * jnp.minimum(lam[:, None] * r, cap) * s


def _fab_run(x, y, target, x0, eps, *, model, norm, steps, bounds, targeted, alpha_max, eta, beta):
    """One FAB run from ``x0``: ``(x_best, best_norm, logits_best, bad)`` (``best_norm = inf``: nothing found)."""
    n = x.shape[0]
    shape = x.shape
    xf = x.reshape(n, -1)
    lo_b, hi_b = (-1e30, 1e30) if bounds is None else bounds
    dual = {"linf": "l1", "l2": "l2", "l1": "linf"}[norm]

    def pnorm(v):
        return lp.per_example_norm(v, norm)

    def boundary(xk):
        logits, vjp = jax.vjp(model, xk)
        oh_y = jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)
        if targeted:  # one backward pass: the gradient of f_t - f_y
            cls = target
        else:  # the full Jacobian: the closest linearised boundary over all classes
            eye = jnp.eye(logits.shape[1], dtype=logits.dtype)
            jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape) - oh_y)[0].reshape(n, -1))(eye)
            df = logits - jnp.take_along_axis(logits, y[:, None], 1)
            dist = jnp.abs(df) / (jnp.moveaxis(jax.vmap(lambda g: lp.per_example_norm(g, dual))(jac), 0, 1) + _TINY)
            cls = jnp.argmin(jnp.where(oh_y > 0, jnp.inf, dist), axis=1)
        w = vjp(jax.nn.one_hot(cls, logits.shape[1], dtype=logits.dtype) - oh_y)[0].reshape(n, -1)
        f = jnp.take_along_axis(logits, cls[:, None], 1)[:, 0] - jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
        return f, w, logits

    def body(_, c):
        xk, best_x, best_n, best_logits, bad = c
        f, w, logits = boundary(xk.reshape(shape))
        bad = bad | ~_finite(logits)
        d1 = _hyperplane_box_step(w, -f, lo_b - xk, hi_b - xk, norm)
        d2 = _hyperplane_box_step(w, -f - jnp.sum(w * (xf - xk), 1), lo_b - xf, hi_b - xf, norm)
        n1, n2 = pnorm(d1), pnorm(d2)
        a = jnp.clip(n1 / (n1 + n2 + _TINY), 0.0, alpha_max)[:, None]
        xn = jnp.clip((1 - a) * (xk + eta * d1) + a * (xf + eta * d2), lo_b, hi_b)
        ln = model(xn.reshape(shape))
        ok = _finite(ln)
        adv = (jnp.argmax(ln, -1) != y) & ok
        dn = pnorm(xn - xf)
        better = adv & (dn < best_n)
        best_x = jnp.where(better[:, None], xn, best_x)
        best_n = jnp.where(better, dn, best_n)
        best_logits = jnp.where(better[:, None], ln, best_logits)
        xn = jnp.where(adv[:, None], (1 - beta) * xf + beta * xn, xn)
        return xn, best_x, best_n, best_logits, bad | ~ok

    k = jax.eval_shape(model, x).shape[1]
    init = (x0.reshape(n, -1), xf, jnp.full((n,), jnp.inf, x.dtype), jnp.zeros((n, k), jnp.float32),
            jnp.zeros((n,), bool))
    xk, best_x, best_n, best_logits, bad = lax.fori_loop(0, steps, body, init)
    return best_x.reshape(shape), best_n, best_logits, bad


def _fab_core(x, y, idx, eps, key, r0=None, r1=None, *, logits_fn, norm, steps, restarts, targeted, n_targets, bounds,
              alpha_max, eta, beta):
    """FAB over restarts (and target classes for FAB-T); an example succeeds when its closest point is within eps.

    ``r0 <= r < r1`` selects a range of the runs (as in :func:`_apgd_core`).
    """
    keys = example_keys(idx, key=key)
    logits_c = logits_fn(x)
    runs = n_targets if targeted else 1
    kw = dict(model=logits_fn, norm=norm, steps=steps, bounds=bounds, targeted=targeted,
              alpha_max=alpha_max, eta=eta, beta=beta)

    def run(r, st):
        best_x, best_n, best_logits, bad = st
        t, rr = r // restarts, r % restarts
        target = _targets(logits_c, y, t)
        rk = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
        radius = jnp.minimum(best_n, eps) / 2.0
        start = lp.project_in_box(x, lp.sample_balls(jnp.where(jnp.isfinite(radius), radius, eps / 2.0), norm,
                                                     shape=x.shape[1:], keys=rk, dtype=x.dtype), eps, norm, bounds)
        x0 = jnp.where(rr == 0, x, start)
        bx, bn, bl, bb = _fab_run(x, y, target, x0, eps, **kw)
        better = bn < best_n
        return (jnp.where(_rows(better, x), bx, best_x), jnp.where(better, bn, best_n),
                jnp.where(better[:, None], bl, best_logits), bad | bb)

    clean_bad = ~_finite(logits_c)
    mis = jnp.argmax(logits_c, -1) != y
    init = (x, jnp.where(mis, 0.0, jnp.inf).astype(x.dtype), logits_c.astype(jnp.float32), clean_bad)
    best_x, best_n, best_logits, bad = lax.fori_loop(0 if r0 is None else r0, runs * restarts if r1 is None else r1,
                                                     run, init)
    within = best_n <= eps * (1 + 1e-5)
    x_adv = jnp.where(_rows(within, x), best_x, x)
    logits = jnp.where(within[:, None], best_logits, logits_c.astype(jnp.float32))
    logits = jnp.where(bad[:, None], jnp.nan, logits)
    return _result(x, x_adv, within & ~bad, logits)


def _fab_static(logits_fn, k, *, norm, steps, restarts, targeted, n_targets, bounds, alpha_max=0.1, eta=1.05,
                beta=0.9):
    return dict(logits_fn=logits_fn, norm=_checks.check_attack_norm(norm),
                steps=_checks.check_int(steps, "steps", low=1),
                restarts=_checks.check_int(restarts, "restarts", low=1), targeted=bool(targeted),
                n_targets=min(_checks.check_int(n_targets, "n_targets", low=1), k - 1), bounds=bounds,
                alpha_max=_checks.check_scalar(alpha_max, "alpha_max", low=0.0, high=1.0),
                eta=_checks.check_scalar(eta, "eta", low=1.0),
                beta=_checks.check_scalar(beta, "beta", low=0.0, high=1.0, low_inclusive=False,
                                          high_inclusive=False))


def fab(
    logits_fn: Callable,
    x: Any,
    y: Any = None,
    *,
    key: Any,
    norm: Any,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = True,
    n_targets: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: Any = None,
) -> AttackResult:
    """FAB, the fast adaptive boundary attack (Croce & Hein 2020): minimal perturbations by linearised projections.

    At ``x^(i)`` the decision boundary between ``y`` and a class ``t`` is
    linearised, ``pi: f_t(x^(i)) - f_y(x^(i)) + <grad(f_t - f_y), z - x^(i)> = 0``;
    ``delta^(i)`` and ``delta_orig`` are the minimal-``norm`` steps that bring
    ``x^(i)`` and the original ``x`` onto ``pi`` within the box (an exact
    projection onto the hyperplane intersected with the box). Then::

        alpha = min(||delta^(i)|| / (||delta^(i)|| + ||delta_orig||), alpha_max)
        x^(i+1) = clip((1 - alpha)(x^(i) + eta delta^(i)) + alpha (x + eta delta_orig))

    and, when ``x^(i+1)`` is misclassified, it is kept if it is the closest so
    far and pulled back, ``x^(i+1) = (1 - beta) x + beta x^(i+1)``. FAB-T
    (``targeted=True``, the AutoAttack version) runs once for each of the
    ``n_targets`` most likely classes other than ``y``; untargeted FAB
    picks at every step the class of the closest linearised boundary
    (``|f_t - f_y| / ||grad(f_t - f_y)||_*``, the dual norm). Restarts after the
    first start from a random point of the ball of radius
    ``min(best, eps) / 2``. An example succeeds when the closest
    misclassified point found is within ``eps``; its ``x_adv`` is then that
    point, else ``x``.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs inside ``bounds``.
      y: ``[n]`` labels; ``None`` uses the predictions.
      key: ``jax.random`` key (restarts).
      norm: ``"linf" | "l2" | "l1"``.
      eps: budget ``> 0`` deciding success.
      steps: iterations per run (static).
      restarts: runs per target (static).
      targeted: FAB-T over ``n_targets`` classes, else untargeted FAB.
      n_targets: target classes (at most ``k - 1``).
      alpha_max, eta, beta: the paper's bias limit, extrapolation and
        backward-step factors.
      bounds: ``(low, high)`` or ``None``.
      batch_size, progress, checkpoint: as in :func:`pgd`.

    Returns:
      :class:`AttackResult`.

    Raises:
      ValueError: a bad argument (named), or non-finite logits (naming ``logits_fn``).

    References:
      Croce, Hein. "Minimally distorted adversarial examples with a fast
      adaptive boundary attack." ICML 2020, arXiv:1907.02044, §3.
      Croce, Hein. ICML 2020, arXiv:2003.01690 (FAB-T).
    """
    if not isinstance(targeted, (bool, np.bool_)):
        raise ValueError(f"targeted: expected a bool, got {targeted!r}")
    x, y, bounds, k, norm, eps = _prepare_auto(logits_fn, x, y, key=key, norm=norm, eps=eps, bounds=bounds)
    if _takes_key(logits_fn):
        raise ValueError("logits_fn: FAB needs a deterministic model (no key parameter)")
    static = _fab_static(logits_fn, k, norm=norm, steps=steps, restarts=restarts, targeted=targeted,
                         n_targets=n_targets, bounds=bounds, alpha_max=alpha_max, eta=eta, beta=beta)
    return _run_attack(_fab_core, static, logits_fn, x, y, eps, key, batch_size=batch_size, progress=progress,
                       checkpoint=checkpoint, desc="fab-t" if targeted else "fab")
