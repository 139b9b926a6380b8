"""Training classifiers in Flax + optax: standard, PGD, TRADES, gradient regularisation, soft labels.

One entry point, :func:`train`, runs one jitted training step per recipe
(the :class:`TrainConfig` is static) over shuffled mini-batches:

* ``"standard"``: empirical risk, the mean cross-entropy ``E[l(x, y)]``.
* ``"pgd"``: adversarial training of Madry et al. (Ding et al. 2019 §3.2,
  App. B.1): minimise ``E[l(x', y)]`` where ``x'`` is a PGD attack described
  by ``config.attack`` (an :class:`jaxbound.attacks.AttackConfig`: random
  start in the ``norm`` ball of radius ``eps``, ``steps`` steps of
  ``step_size`` along the steepest-ascent direction, projection onto the ball
  and the ``bounds`` box; the last iterate is used). Projections, ascent
  directions and random starts come from :mod:`jaxbound.lp`.
* ``"trades"``: TRADES (Zhang et al. 2019; Zhang et al. 2020 App. B.1):
  ``E[l(x, y) + beta * KL(p(x) || p(x'))]`` where ``x'`` maximises the KL
  divergence by PGD in the ``eps`` ball, started at ``x + 0.001 N(0, I)``.
* ``"gradient_reg"``: input-gradient regularisation of Finlay et al. (2019,
  eqs. 2.6 and 2.9),
  ``E[l(x)] + tv_weight * E[||grad_x l(x)||_*] + lip_weight * max ||grad_x l(x)||_*``,
  the mean over the batch being the total-variation term (eq. 2.8) and the
  maximum over the batch the Lipschitz term, with ``||.||_*`` the dual of the
  threat-model norm (``attack.norm``; l2 -> l2, linf -> l1).
  ``gradient_mode="exact"`` differentiates the input gradient again (double
  backpropagation); ``"fd"`` uses Finlay et al.'s finite difference (§2,
  after eq. 2.9) ``||grad_x l(x)||_* ~ (l(x + h d) - l(x)) / h`` with ``d``
  the unit steepest-ascent direction (``d = g / ||g||_2`` for l2,
  ``sign(g)`` for linf, eqs. 3.2 / 3.4; ``g . d = ||g||_*``) computed from
  the current gradient and held fixed, and ``h = fd_step`` (1e-3 in the
  paper).
* ``"soft_labels"``: cross-entropy against target probabilities (Bhagoji et
  al. 2021, §4.3; build them with
  :func:`jaxbound.bounds.clipped_soft_labels`),
  ``E[-sum_k t_k log p_k(x')]``, with ``x' = x`` without an attack or with
  ``attack.eps == 0`` and otherwise a PGD attack maximising that same soft
  cross-entropy (soft-label adversarial training).

The losses are optax's: :func:`jaxbound.attacks.cross_entropy` (optax's
``softmax_cross_entropy`` on one-hot labels), ``softmax_cross_entropy`` and
``kl_divergence_with_log_targets``.

Reproducibility. Every random draw derives from ``key``: the initial
parameters from ``fold_in(key, 0)``, the order of epoch ``e`` from
``fold_in(fold_in(key, 1), e)``, the attack noise of global step ``s`` from
``fold_in(fold_in(key, 2), s)`` and the evaluation of epoch ``e`` from
``fold_in(fold_in(key, 3), e)``. An interrupted run that resumes from its
last per-epoch checkpoint (``checkpoint_dir``, Orbax) therefore ends with
exactly the parameters of an uninterrupted run.

Data parallelism. Each batch is split over the local devices along a 1-D
``jax.sharding.Mesh`` (``NamedSharding``; parameters and optimiser state
replicated), and XLA inserts the gradient all-reduce. Models must treat
examples independently (every model in :mod:`jaxbound.models` does). On a
multi-core CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``
gives one device per core. The per-epoch evaluation streams through the
library's block engine.

References:
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
  Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan. "Theoretically principled
  trade-off between robustness and accuracy." ICML 2019, arXiv:1901.08573
  (TRADES).
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
  networks generalize and are adversarially robust." arXiv:1808.09540.
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in
  the presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of image
  distributions using conditional generative models." AISTATS 2020,
  arXiv:2003.00378.
  Wong, Kolter. "Provable defenses against adversarial examples via the
  convex outer adversarial polytope." ICML 2018, arXiv:1711.00851 (the
  epsilon warm-up).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbound import _checks, _engine, attacks, lp, models
from jaxbound._io import atomic_write_json, fingerprint, load_json_or_none, to_jsonable

__all__ = [
    "RECIPES",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "train_config",
    "TRAIN_ATTACK_STEPS",
    "training_attack",
    "TrainResult",
    "train",
    "loss_gradient_norm",
]

RECIPES = ("standard", "pgd", "trades", "gradient_reg", "soft_labels")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "piecewise", "cosine")
_GRADIENT_MODES = ("exact", "fd")
_EVAL_CHUNK = 500
#: PGD steps of the per-epoch evaluation derived from the training attack.
_EVAL_STEPS = 20
#: PGD steps of a training attack whose steps are not stated (:func:`training_attack`).
TRAIN_ATTACK_STEPS = 10
_LEGACY_ATTACK = ("eps", "norm", "attack_steps", "attack_step_size")
_LEGACY_EVAL = ("eval_eps", "eval_steps")

_soft_ce = optax.losses.softmax_cross_entropy


def _kl(logits_p, logits_q):
    """Per-example ``KL(p || q)`` from logits (optax's KL of log-probabilities)."""
    return optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(logits_q, axis=-1),
                                                       jax.nn.log_softmax(logits_p, axis=-1))


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


def _check_train_attack(attack: Any, name: str) -> None:
    if attack is None:
        return
    if not isinstance(attack, attacks.AttackConfig):
        raise ValueError(f"{name}: expected a jaxbound.attacks.AttackConfig or None, got {type(attack).__name__}")
    if isinstance(attack.eps, tuple):
        raise ValueError(f"{name}: training takes one budget eps, got {attack.eps}")
    if name == "attack":
        if attack.restarts != 1:
            raise ValueError(f"attack: the training attack runs one restart, got restarts={attack.restarts}")
        if attack.loss != "ce" or attack.targeted:
            raise ValueError("attack: the training attack maximises the recipe's own loss, untargeted "
                             f"(loss='ce', targeted=False), got loss={attack.loss!r}, targeted={attack.targeted}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of :func:`train` (frozen, hashable, validated on construction).

    Errors name the field. :meth:`replace` returns a checked copy;
    :func:`train_config` also accepts the old keyword names (``eps``,
    ``norm``, ``attack_steps``, ``attack_step_size``, ``eval_eps``,
    ``eval_steps``).

    Attributes:
      recipe: ``"standard" | "pgd" | "trades" | "gradient_reg" | "soft_labels"``.
      epochs: passes over the data (>= 1; an untrained model is
        :func:`jaxbound.models.init_params`).
      batch_size: examples per step (>= 1, at most the number of examples).
      optimizer: ``"adam"``, ``"adamw"`` (decoupled decay), ``"sgd"`` (with
        ``momentum``), or any ``optax.GradientTransformation`` (then
        ``learning_rate``, ``momentum``, ``weight_decay`` and ``schedule`` are
        not used and the history's ``lr`` is ``None``).
      learning_rate: base learning rate (> 0).
      momentum: SGD momentum in ``[0, 1)``.
      weight_decay: L2 weight decay (>= 0): added to the gradient for
        ``adam``/``sgd`` (coupled, as in PyTorch), decoupled for ``adamw``.
      schedule: ``"constant"``, ``"piecewise"`` (x0.1 at 50 % and again at 75 %
        of the steps: Ding et al.'s WRN schedule), ``"cosine"``, or an optax
        schedule ``step -> lr``.
      attack: the training attack (:class:`jaxbound.attacks.AttackConfig`,
        one budget, one restart, loss ``"ce"``, untargeted); required by
        ``pgd`` and ``trades``; for ``soft_labels`` a positive ``eps`` turns
        on adversarial training; its ``norm`` is the threat model whose dual
        measures input gradients (``gradient_reg`` and the history).
        ``random_start=False`` starts the attack at the clean point.
      eps_warmup: optimiser steps over which the training budget (and the
        attack step length) ramps linearly from ``eps / eps_warmup`` up to
        ``eps`` (the epsilon schedule of Wong & Kolter 2018, used by Ding et
        al. 2019, App. B.2); ``0`` trains at ``eps`` from the first step.
      beta: TRADES trade-off (>= 0).
      tv_weight: ``gradient_reg`` total-variation weight (Finlay's epsilon, >= 0).
      lip_weight: ``gradient_reg`` Lipschitz weight (Finlay's lambda, >= 0).
      gradient_mode: ``"exact"`` (double backpropagation) or ``"fd"`` (finite difference).
      fd_step: finite-difference step ``h`` (> 0; Finlay et al. use 1e-3).
      eval_attack: PGD of the per-epoch robust accuracy; ``None`` takes the
        training attack with 20 steps (step ``2.5 eps / 20``) when its
        ``eps > 0``, otherwise no robust evaluation; ``eps = 0``: robust
        accuracy equals clean accuracy, no attack is run.

    References:
      Madry et al. ICLR 2018, arXiv:1706.06083; Zhang et al. ICML 2019,
      arXiv:1901.08573; Finlay et al. arXiv:1808.09540; Wong & Kolter ICML
      2018, arXiv:1711.00851.
    """

    recipe: str = _field("standard", "training recipe: standard, pgd, trades, gradient_reg or soft_labels")
    epochs: int = _field(1, "passes over the training data")
    batch_size: int = _field(128, "examples per optimiser step")
    optimizer: Any = _field("adam", "optimiser: adam, adamw, sgd (or an optax GradientTransformation)")
    learning_rate: float = _field(1e-3, "base learning rate")
    momentum: float = _field(0.9, "SGD momentum in [0, 1)")
    weight_decay: float = _field(0.0, "L2 weight decay (coupled for adam/sgd, decoupled for adamw)")
    schedule: Any = _field("constant", "learning-rate schedule: constant, piecewise or cosine")
    attack: Any = _field(None, "training attack (AttackConfig) of pgd, trades and adversarial soft_labels; "
                               "its norm is the threat model of gradient_reg")
    eps_warmup: int = _field(0, "optimiser steps over which the training budget ramps up linearly (0: none)")
    beta: float = _field(6.0, "TRADES trade-off beta")
    tv_weight: float = _field(0.0, "gradient_reg total-variation weight")
    lip_weight: float = _field(0.0, "gradient_reg Lipschitz weight")
    gradient_mode: str = _field("exact", "gradient_reg gradient norms: exact (double backprop) or fd")
    fd_step: float = _field(1e-3, "finite-difference step h of gradient_mode fd")
    eval_attack: Any = _field(None, "PGD (AttackConfig) of the per-epoch robust accuracy "
                                    "(default: the training attack with 20 steps)")

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        if not isinstance(self.recipe, str) or self.recipe not in RECIPES:
            raise ValueError(f"recipe: must be one of {', '.join(map(repr, RECIPES))}, got {self.recipe!r}")
        put("epochs", _checks.check_int(self.epochs, "epochs", low=1))
        put("batch_size", _checks.check_int(self.batch_size, "batch_size", low=1))
        if not isinstance(self.optimizer, optax.GradientTransformation) and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: must be one of {', '.join(map(repr, OPTIMIZERS))} or an optax "
                             f"GradientTransformation, got {self.optimizer!r}")
        put("learning_rate", _checks.check_scalar(self.learning_rate, "learning_rate", low=0.0, low_inclusive=False))
        put("momentum", _checks.check_scalar(self.momentum, "momentum", low=0.0, high=1.0, high_inclusive=False))
        put("weight_decay", _checks.check_scalar(self.weight_decay, "weight_decay", low=0.0))
        if not callable(self.schedule) and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(map(repr, SCHEDULES))} or a callable, "
                             f"got {self.schedule!r}")
        _check_train_attack(self.attack, "attack")
        put("eps_warmup", _checks.check_int(self.eps_warmup, "eps_warmup", low=0))
        for name in ("beta", "tv_weight", "lip_weight"):
            put(name, _checks.check_scalar(getattr(self, name), name, low=0.0))
        if self.gradient_mode not in _GRADIENT_MODES:
            raise ValueError(f"gradient_mode: must be 'exact' or 'fd', got {self.gradient_mode!r}")
        put("fd_step", _checks.check_scalar(self.fd_step, "fd_step", low=0.0, low_inclusive=False))
        _check_train_attack(self.eval_attack, "eval_attack")
        if self.recipe in ("pgd", "trades") and self.attack is None:
            raise ValueError(f"eps: recipe {self.recipe!r} needs a training budget eps >= 0 "
                             "(attack=AttackConfig(norm=..., eps=...))")
        if self.recipe == "gradient_reg" and self.threat_norm is None:
            raise ValueError("norm: recipe 'gradient_reg' measures input gradients in the dual of the threat-model "
                             "norm; give attack=AttackConfig(norm=..., eps=0.0) (or norm=...)")

    @property
    def threat_norm(self) -> str | None:
        """The threat-model norm: the training attack's, else the evaluation attack's, else ``None``."""
        for a in (self.attack, self.eval_attack):
            if a is not None:
                return a.norm
        return None

    @property
    def adversarial(self) -> bool:
        """Whether the training step runs an attack."""
        return self.recipe in ("pgd", "trades") or (self.recipe == "soft_labels" and self.attack is not None
                                                    and bool(self.attack.eps))

    @property
    def evaluation(self) -> "attacks.AttackConfig | None":
        """The attack of the per-epoch robust accuracy (``eval_attack`` or the one derived from ``attack``)."""
        if self.eval_attack is not None:
            return self.eval_attack
        if self.attack is not None and self.attack.eps:
            return self.attack.replace(steps=_EVAL_STEPS, step_size=None)
        return None

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields (an optax optimiser or schedule object appears as its ``repr``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, attacks.AttackConfig):
                v = v.to_dict()
            elif f.name in ("optimizer", "schedule") and not isinstance(v, str):
                v = repr(v)
            out[f.name] = v
        return to_jsonable(out)


def _legacy_attack(values: dict, legacy: dict):
    """The training attack from the old ``eps``/``norm``/``attack_steps``/``attack_step_size`` keywords."""
    base = values["attack"]
    if not any(k in legacy for k in _LEGACY_ATTACK):
        return base
    eps = legacy["eps"] if "eps" in legacy else (base.eps if base is not None else None)
    if eps is not None:
        eps = _checks.check_scalar(eps, "eps", low=0.0)
    norm = legacy["norm"] if "norm" in legacy else (base.norm if base is not None else None)
    if norm is not None:
        norm = _checks.check_attack_norm(norm)
    if "attack_steps" in legacy:
        steps = _checks.check_int(legacy["attack_steps"], "attack_steps", low=1)
    else:
        steps = base.steps if base is not None else TRAIN_ATTACK_STEPS
    step_size = legacy["attack_step_size"] if "attack_step_size" in legacy else (
        base.step_size if base is not None else None)
    if step_size is not None:
        step_size = _checks.check_scalar(step_size, "attack_step_size", low=0.0, low_inclusive=False)
    if eps is None:
        if values["recipe"] in ("pgd", "trades"):
            raise ValueError(f"eps: recipe {values['recipe']!r} needs a training budget eps >= 0")
        if norm is None:
            return None
        eps = 0.0  # a threat model without a training budget (gradient_reg, the history's gradient norms)
    if norm is None:
        raise ValueError("norm: a training budget eps needs its threat-model norm ('linf', 'l2' or 'l1')")
    kw = dict(norm=norm, eps=eps, steps=steps, step_size=step_size)
    return base.replace(**kw) if base is not None else attacks.AttackConfig(**kw)


def _legacy_eval(values: dict, legacy: dict):
    """The evaluation attack from the old ``eval_eps``/``eval_steps`` keywords."""
    base, attack = values["eval_attack"], values["attack"]
    if not any(k in legacy for k in _LEGACY_EVAL):
        return base
    eval_eps = legacy["eval_eps"] if "eval_eps" in legacy else (base.eps if base is not None else None)
    if eval_eps is not None:
        eval_eps = _checks.check_scalar(eval_eps, "eval_eps", low=0.0)
    if "eval_steps" in legacy:
        steps = _checks.check_int(legacy["eval_steps"], "eval_steps", low=1)
    else:
        steps = base.steps if base is not None else _EVAL_STEPS
    if eval_eps is None:  # the old default: the training budget, when there is one
        if attack is None or not attack.eps:
            return None
        return attack.replace(steps=steps, step_size=None)
    if base is not None:
        return base.replace(eps=eval_eps, steps=steps)
    if attack is None:
        raise ValueError("norm: eval_eps needs its threat-model norm ('linf', 'l2' or 'l1')")
    return attack.replace(eps=eval_eps, steps=steps, step_size=None)


def training_attack(attack: "attacks.AttackConfig | None" = None, /, **settings: Any) -> "attacks.AttackConfig":
    """The attack inside adversarial training: :func:`jaxbound.attacks.attack_config` with training's step count.

    A new attack takes :data:`TRAIN_ATTACK_STEPS` (10) PGD steps unless
    ``steps`` is given (an evaluation attack, :class:`AttackConfig`'s own
    default, takes 40); the step size defaults to ``2.5 eps / steps``. The
    command line, the report and the sensitivity sweep build their training
    attacks here, so the default lives in one place.

    References:
      Madry et al. "Towards deep learning models resistant to adversarial
      attacks." ICLR 2018, arXiv:1706.06083.
    """
    if attack is None:
        settings.setdefault("steps", TRAIN_ATTACK_STEPS)
    return attacks.attack_config(attack, **settings)


def train_config(config: TrainConfig | None = None, /, **settings: Any) -> TrainConfig:
    """``config`` with ``settings`` applied, or a new :class:`TrainConfig` from ``settings``.

    ``settings`` are :class:`TrainConfig` fields, or the old keywords of
    :func:`train`, mapped onto the attack configurations:

    * ``eps``, ``norm``, ``attack_steps``, ``attack_step_size`` -> the fields
      ``eps``, ``norm``, ``steps``, ``step_size`` of ``attack`` (a new
      :class:`jaxbound.attacks.AttackConfig` takes 10 steps, the old default;
      ``norm`` without ``eps`` gives ``eps = 0``: a threat model without a
      training budget; ``eps`` without a norm raises).
    * ``eval_eps``, ``eval_steps`` -> ``eps`` and ``steps`` of
      ``eval_attack`` (in the norm of ``attack``; 20 steps by default;
      ``eval_eps=None`` evaluates at the training budget).

    Raises:
      TypeError: ``config`` is not a :class:`TrainConfig`, or a setting is
        neither a field nor an old keyword.
      ValueError: an invalid value (the message starts with the field or keyword).
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - names - set(_LEGACY_ATTACK) - set(_LEGACY_EVAL))
    if unknown:
        raise TypeError(f"{unknown[0]}: not a setting of TrainConfig (fields: {', '.join(sorted(names))}; "
                        f"old keywords: {', '.join(_LEGACY_ATTACK + _LEGACY_EVAL)})")
    legacy = {k: settings.pop(k) for k in _LEGACY_ATTACK + _LEGACY_EVAL if k in settings}
    if not legacy:
        if config is None:
            return TrainConfig(**settings)
        return dataclasses.replace(config, **settings) if settings else config
    values = {f.name: (getattr(config, f.name) if config is not None else f.default)
              for f in dataclasses.fields(TrainConfig)}
    values.update(settings)
    values["attack"] = _legacy_attack(values, legacy)
    values["eval_attack"] = _legacy_eval(values, legacy)
    return TrainConfig(**values)


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------


class TrainResult(NamedTuple):
    """Outcome of :func:`train`.

    Attributes:
      model: the Flax module.
      params: trained parameters (``{"params": ...}``, for ``model.apply``).
      history: one dict per epoch: ``epoch``, ``step``, ``loss`` (mean
        training objective), ``train_accuracy`` (on the inputs trained on:
        adversarial ones for ``pgd``), ``clean_accuracy``, ``eval_loss``,
        ``grad_norm_mean`` / ``grad_norm_median`` / ``grad_norm_max`` (dual
        norm, for the threat-model norm or, without one, the l1 norm (dual of
        linf), of the input gradient of the cross-entropy on the evaluation
        set: total variation and Lipschitz estimate), ``robust_accuracy``
        (PGD of the evaluation attack at ``eval_eps``, or ``None``),
        ``eval_split``, ``lr`` and ``seconds`` (wall time of the epoch);
        ``gradient_reg`` adds ``tv`` and ``lip`` (batch means of the two
        regularisers), ``trades`` adds ``kl``.
      steps: number of optimiser steps taken.
      config: the settings of the run (:meth:`TrainConfig.to_dict` with the
        evaluation attack resolved, plus the model, data sizes and devices).
      cache: internal; holds the function returned by :meth:`logits_fn`.
    """

    model: nn.Module
    params: Any
    history: list
    steps: int
    config: dict
    cache: dict

    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """The plain ``x [n, ...] -> logits [n, k]`` function (the same object on every call)."""
        if "logits_fn" not in self.cache:
            self.cache["logits_fn"] = models.logits_fn(self.model, self.params)
        return self.cache["logits_fn"]

    def to_dict(self) -> dict:
        """JSON-ready record: the settings, the step count and the history (no parameters)."""
        return to_jsonable({"config": self.config, "steps": self.steps, "history": self.history})


# ---------------------------------------------------------------------------
# Training step and evaluation kernels (jittable; x [n, ...], labels or targets per row)
# ---------------------------------------------------------------------------


def _input_grad(f, x, y):
    """``grad_x`` of the summed cross-entropy (per-example gradients) and the losses."""

    def total(z):
        v = attacks.cross_entropy(f(z), y)
        return jnp.sum(v), v

    return jax.grad(total, has_aux=True)(x)


def _dual_norms(g, norm: str):
    """Per-example dual norm ``[n]`` of ``g [n, ...]`` for the threat-model ``norm``."""
    return lp.per_example_norm(g, lp.dual_norm(norm))


def _pgd_train(f, x, objective, key, *, eps, step_size, attack, start):
    """PGD maximising ``objective(logits) [n]`` in the ``attack.norm`` ball around ``x``; returns the last iterate.

    ``start="uniform"``: uniform random start in the ball (Madry et al.);
    ``"gaussian"``: ``x + 0.001 N(0, I)`` (TRADES); ``attack.random_start``
    false: the clean point. Every iterate is projected onto the ball and
    clipped to ``attack.bounds``.
    """
    n = x.shape[0]
    norm, bounds = attack.norm, attack.bounds
    eps_v = jnp.full((n,), eps, x.dtype)
    keys = attacks.example_keys(jnp.arange(n), key=key)
    if not attack.random_start:
        delta = jnp.zeros_like(x)
    elif start == "uniform":
        delta = lp.sample_balls(eps_v, norm, shape=x.shape[1:], keys=keys, dtype=x.dtype)
    else:
        delta = 0.001 * jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
    xa = lp.project_in_box(x, delta, eps_v, norm, bounds)

    def body(_, xa):
        g = jax.grad(lambda z: jnp.sum(objective(f(z))))(xa)
        d = lp.steepest_ascent(g, norm, l1_fraction=attack.l1_fraction, x=xa, bounds=bounds)
        return lp.project_in_box(x, xa + step_size * d - x, eps_v, norm, bounds)

    xa = lax.fori_loop(0, attack.steps, body, xa)
    return lax.stop_gradient(xa)


def _attack_inputs(f0, x, t, key, cfg: TrainConfig, scale):
    """The inputs the objective is evaluated at (no gradient to the parameters)."""
    recipe, attack = cfg.recipe, cfg.attack
    if not cfg.adversarial:
        return x
    eps_t = attack.eps * scale
    step_t = float(attack.step_array[0]) * scale
    kw = dict(eps=eps_t, step_size=step_t, attack=attack)
    if recipe == "pgd":
        return _pgd_train(f0, x, lambda lg: attacks.cross_entropy(lg, t), key, start="uniform", **kw)
    if recipe == "soft_labels":
        return _pgd_train(f0, x, lambda lg: _soft_ce(lg, t), key, start="uniform", **kw)
    p_clean = lax.stop_gradient(f0(x))  # trades
    return _pgd_train(f0, x, lambda lg: _kl(p_clean, lg), key, start="gaussian", **kw)


def _objective(f, x, t, xin, direction, cfg: TrainConfig):
    """The recipe's objective at parameters closed over by ``f``: ``(loss, aux)``."""
    recipe, aux = cfg.recipe, {}
    if recipe in ("standard", "pgd"):
        logits = f(xin)
        loss = jnp.mean(attacks.cross_entropy(logits, t))
        correct = jnp.argmax(logits, -1) == t
    elif recipe == "soft_labels":
        logits = f(xin)
        loss = jnp.mean(_soft_ce(logits, t))
        correct = jnp.argmax(logits, -1) == jnp.argmax(t, -1)
    elif recipe == "trades":
        logits = f(x)
        kl = _kl(logits, f(xin))
        loss = jnp.mean(attacks.cross_entropy(logits, t)) + cfg.beta * jnp.mean(kl)
        correct = jnp.argmax(logits, -1) == t
        aux["kl"] = jnp.mean(kl)
    else:  # gradient_reg, Finlay et al. eqs. 2.6 / 2.9
        if cfg.gradient_mode == "exact":
            g, v = _input_grad(f, x, t)  # differentiated again: double backpropagation
            gn = _dual_norms(g, cfg.threat_norm)
            logits = None
        else:
            logits = f(x)
            v = attacks.cross_entropy(logits, t)
            gn = (attacks.cross_entropy(f(x + cfg.fd_step * direction), t) - v) / cfg.fd_step
        tv = jnp.mean(gn)
        lip = jnp.max(gn)
        loss = jnp.mean(v) + cfg.tv_weight * tv + cfg.lip_weight * lip
        if logits is None:
            logits = f(x)
        correct = jnp.argmax(logits, -1) == t
        aux["tv"] = tv
        aux["lip"] = lip
    aux["accuracy"] = jnp.mean(correct.astype(jnp.float32))
    return loss, aux


def _make_step(apply: Callable, tx: optax.GradientTransformation, cfg: TrainConfig) -> Callable:
    """The training step ``(params, opt_state, x, t, key, scale) -> (params, opt_state, metrics)`` (not jitted).

    ``scale`` in ``(0, 1]`` multiplies the attack budget and step length (the ``eps_warmup`` ramp).

    ``t`` holds integer labels ``[b]``, or target probabilities ``[b, k]`` for
    ``soft_labels``. ``metrics`` is a dict of scalars.
    """

    def step(params, opt_state, x, t, key, scale=1.0):
        stopped = lax.stop_gradient(params)

        def f0(z):
            return apply(stopped, z)

        xin = _attack_inputs(f0, x, t, key, cfg, scale)
        direction = None
        if cfg.recipe == "gradient_reg" and cfg.gradient_mode == "fd":
            g0, _ = _input_grad(f0, x, t)
            direction = lax.stop_gradient(lp.steepest_ascent(g0, cfg.threat_norm))

        def objective(p):
            return _objective(lambda z: apply(p, z), x, t, xin, direction, cfg)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        aux["loss"] = loss
        return params, opt_state, aux

    return step


class _StepSpec(NamedTuple):
    """Static part of the jitted training step (hashable: the module and the settings)."""

    model: nn.Module
    cfg: TrainConfig
    total_steps: int | None


def _train_step(spec: _StepSpec, params, opt_state, x, t, key, scale):
    tx, _ = _make_optimizer(spec.cfg, spec.total_steps)
    return _make_step(spec.model.apply, tx, spec.cfg)(params, opt_state, x, t, key, scale)


def _step_function(model: nn.Module, cfg: TrainConfig, total_steps: int, data_sh, repl) -> Callable:
    """The jitted step; jax's own cache reuses it across :func:`train` calls with equal settings."""
    uses_total = isinstance(cfg.optimizer, str) and cfg.schedule in ("piecewise", "cosine")
    spec = _StepSpec(model, cfg.replace(epochs=1), total_steps if uses_total else None)
    shardings = dict(in_shardings=(repl, repl, data_sh, data_sh, repl, repl), out_shardings=(repl, repl, repl))
    try:
        hash(spec)
    except TypeError:  # unhashable module attributes: a fresh function
        return jax.jit(functools.partial(_train_step, spec), **shardings)
    return functools.partial(jax.jit(_train_step, static_argnums=0, **shardings), spec)


def _eval_kernel(x, y, rows, params, key, *, model, norm, attack):
    """One block of the evaluation: correct, robust (PGD), cross-entropy and dual gradient norms, each ``[b]``.

    ``rows`` holds the row numbers; the PGD key of a block is
    ``fold_in(key, first row)`` (blocks run on one device, so the key does
    not depend on the device count).
    """
    module = model[0] if isinstance(model, tuple) else model

    def f(z):
        return module.apply(params, z)

    g, v = _input_grad(f, x, y)
    correct = jnp.argmax(f(x), -1) == y
    gn = _dual_norms(g, norm)
    if attack is None or not attack.eps:
        robust = correct
    else:  # the attacks module's PGD, run traced inside this block
        res = attacks.pgd(f, x, y, key=jax.random.fold_in(key, rows[0]), eps=attack.eps, norm=attack.norm,
                          steps=attack.steps, step_size=attack.step_size, random_start=attack.random_start,
                          bounds=attack.bounds, l1_fraction=attack.l1_fraction)
        robust = correct & ~res.success
    return correct, robust, v, gn


# ---------------------------------------------------------------------------
# Validation and optimiser
# ---------------------------------------------------------------------------


def _split_data(data: Any, name: str):
    if data is None:
        return None
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
        k = int(getattr(data, "num_classes", 0) or 0)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        k = 0
    else:
        raise ValueError(f"{name}: expected a jaxbound.data.Dataset or a tuple (x [n, H, W, C], y [n])")
    x = _checks.check_images(x, f"{name}[0]" if k == 0 else f"{name}.images")
    y = _checks.check_labels(y, f"{name}[1]" if k == 0 else f"{name}.labels", n=x.shape[0])
    return np.asarray(x, np.float32), np.asarray(y).astype(np.int32), k


def _check_model(model: Any, num_classes: int):
    if isinstance(model, str):
        if model.lower() not in models.available():
            raise ValueError(f"model: unknown model {model!r}; available: {', '.join(models.available())}")
        return models.create(model, num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a flax Module or a registered name, got {type(model).__name__}")
    return model


def _make_schedule(schedule: Any, lr: float, total: int):
    if callable(schedule):
        return schedule
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "piecewise":
        # Ding et al. App. B.1 (WRN): lr, lr/10 from 50% of the steps, lr/100 from 75%.
        return optax.piecewise_constant_schedule(lr, {int(0.5 * total): 0.1, int(0.75 * total): 0.1})
    return optax.cosine_decay_schedule(lr, max(1, total))


def _make_optimizer(cfg: TrainConfig, total: int | None):
    """``(tx, schedule)``; ``schedule`` is ``None`` for a user's optax transformation."""
    if not isinstance(cfg.optimizer, str):
        return cfg.optimizer, None
    sched = _make_schedule(cfg.schedule, cfg.learning_rate, total)
    if cfg.optimizer == "sgd":
        opt = optax.sgd(sched, momentum=cfg.momentum or None)
    elif cfg.optimizer == "adam":
        opt = optax.adam(sched)
    else:
        return optax.adamw(sched, weight_decay=cfg.weight_decay), sched
    if cfg.weight_decay:
        # Coupled L2 (PyTorch / TensorFlow "weight decay" for SGD and Adam).
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    return opt, sched


# ---------------------------------------------------------------------------
# Checkpoints (Orbax)
# ---------------------------------------------------------------------------


def _ckpt_meta(path: Path) -> dict | None:
    """The checkpoint's ``meta.json``; ``None`` when absent, or (with one warning) when damaged."""
    f = path / "meta.json"
    if not f.exists():
        return None
    meta = load_json_or_none(f, what="training checkpoint")
    if meta is not None and not (isinstance(meta, dict) and {"fingerprint", "checkpoint", "epoch", "step",
                                                              "history"} <= set(meta)):
        warnings.warn(f"training checkpoint {f} is not a jaxbound checkpoint description; training from the "
                      "start", RuntimeWarning, stacklevel=2)
        return None
    return meta


def _save_checkpoint(path: Path, state: dict, meta: dict) -> None:
    import orbax.checkpoint as ocp

    path.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{int(meta['epoch']):05d}"
    target = (path / name).resolve()
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(target, jax.device_get(state), force=True)
    ckptr.wait_until_finished()
    ckptr.close()
    meta = dict(meta, checkpoint=name)
    atomic_write_json(path / "meta.json", meta)
    for old in path.glob("epoch_*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _restore_checkpoint(path: Path, meta: dict, like: dict) -> dict:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), jax.device_get(like))
    ckptr = ocp.StandardCheckpointer()
    try:
        return ckptr.restore((path / meta["checkpoint"]).resolve(), abstract)
    finally:
        ckptr.close()


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def _permutation(key, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` drawn on the host from the bits of ``key``."""
    return np.random.default_rng([int(b) for b in _engine.key_data(key).ravel()]).permutation(n)


@dataclasses.dataclass
class _Data:
    """Checked training inputs: the module, the arrays and the evaluation split."""

    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    targets: np.ndarray
    ev: tuple | None
    k_model: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def _soft_targets(soft_labels: Any, cfg: TrainConfig, n: int) -> np.ndarray | None:
    if soft_labels is None:
        if cfg.recipe == "soft_labels":
            raise ValueError("soft_labels: recipe 'soft_labels' needs target probabilities [n, num_classes]")
        return None
    if cfg.recipe != "soft_labels":
        raise ValueError(f"soft_labels: only used by recipe 'soft_labels', got recipe {cfg.recipe!r}")
    t = np.asarray(soft_labels, dtype=np.float32)
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"soft_labels: expected shape [{n}, num_classes], got {t.shape}")
    _checks.check_finite(t, "soft_labels")
    if t.min() < 0 or np.abs(t.sum(axis=1) - 1).max() > 1e-4:
        raise ValueError("soft_labels: rows must be non-negative and sum to 1")
    return t


def _prepare(model: Any, train_data: Any, cfg: TrainConfig, eval_data: Any, soft_labels: Any) -> _Data:
    """Check the data, the soft labels and the model against each other."""
    x, y, k_data = _split_data(train_data, "train_data")
    n = x.shape[0]
    if cfg.batch_size > n:
        raise ValueError(f"batch_size: {cfg.batch_size} exceeds the {n} training examples")
    num_classes = k_data or int(y.max()) + 1
    t = _soft_targets(soft_labels, cfg, n)
    if t is not None and not k_data:
        num_classes = max(num_classes, t.shape[1])
    model = _check_model(model, max(num_classes, 2))
    try:
        out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), jnp.zeros((1, *x.shape[1:]))),
                                                 jnp.zeros((1, *x.shape[1:]))))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported against the argument
        raise ValueError(f"model: fails on inputs shaped {(1, *x.shape[1:])}: {exc}") from exc
    k_model = int(out.shape[-1])
    if int(y.max()) >= k_model:
        raise ValueError(f"train_data: label {int(y.max())} is out of range for a model with {k_model} outputs")
    if t is not None and t.shape[1] != k_model:
        raise ValueError(f"soft_labels: {t.shape[1]} columns for a model with {k_model} outputs")
    ev = _split_data(eval_data, "eval_data")
    if ev is not None and int(ev[1].max(initial=0)) >= k_model:
        raise ValueError(f"eval_data: label {int(ev[1].max())} is out of range for {k_model} outputs")
    return _Data(model, x, y, y if t is None else t, ev, k_model)


@dataclasses.dataclass
class _State:
    """The mutable state of a run: parameters, optimiser state, step count and history."""

    params: Any
    opt_state: Any
    step: int = 0
    epoch: int = 0
    history: list = dataclasses.field(default_factory=list)


def _run_fingerprint(config: dict, key: Any, d: _Data, cfg: TrainConfig) -> str:
    return fingerprint(repr(sorted((k, v) for k, v in config.items() if k != "devices")), _engine.key_data(key),
                       d.x, d.y, d.targets if cfg.recipe == "soft_labels" else 0,
                       *(d.ev[:2] if d.ev is not None else (0,)))


def _resume(ckdir: Path, fp: str, st: _State) -> None:
    """Load the last checkpoint of this run into ``st`` (another run's checkpoint raises).

    A damaged checkpoint (unreadable ``meta.json``, or an Orbax folder that
    does not restore) is ignored with one warning naming it: the run starts
    from the beginning, which gives the same result as an uninterrupted run.
    """
    meta = _ckpt_meta(ckdir)
    if meta is None:
        return
    if meta.get("fingerprint") != fp:
        raise ValueError(f"checkpoint_dir: {ckdir} holds a checkpoint of a different run "
                         "(other data, model, key or settings); use another folder or remove it")
    try:
        state = _restore_checkpoint(ckdir, meta, {"params": st.params, "opt_state": st.opt_state})
        params = jax.tree.map(jnp.asarray, state["params"])
        opt_state = jax.tree.map(jnp.asarray, state["opt_state"])
        step, epoch, history = int(meta["step"]), int(meta["epoch"]), list(meta["history"])
    except Exception as exc:  # noqa: BLE001 - Orbax and tensorstore raise many kinds; recompute instead
        warnings.warn(f"training checkpoint {ckdir / str(meta.get('checkpoint'))} is damaged "
                      f"({type(exc).__name__}); training from the start", RuntimeWarning, stacklevel=2)
        return
    st.params, st.opt_state, st.step, st.epoch, st.history = params, opt_state, step, epoch, history


def _train_epoch(step_fn: Callable, st: _State, d: _Data, cfg: TrainConfig, k_perm, k_step, epoch: int, data_sh,
                 progress: bool) -> dict:
    """One pass over a fresh permutation; returns the batch means of the step metrics."""
    from tqdm.auto import tqdm

    bs = cfg.batch_size
    steps_per_epoch = d.n // bs
    perm = _permutation(jax.random.fold_in(k_perm, epoch), d.n)
    bar = tqdm(range(steps_per_epoch), desc=f"{cfg.recipe} epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False)
    pending = []
    for i in bar:
        idx = perm[i * bs:(i + 1) * bs]
        xb = jax.device_put(d.x[idx], data_sh)
        tb = jax.device_put(d.targets[idx], data_sh)
        scale = min(1.0, (st.step + 1) / cfg.eps_warmup) if cfg.eps_warmup else 1.0
        st.params, st.opt_state, m = step_fn(st.params, st.opt_state, xb, tb, jax.random.fold_in(k_step, st.step),
                                             jnp.asarray(scale, jnp.float32))
        st.step += 1
        pending.append(m)
        if progress and (i % 10 == 9 or i == steps_per_epoch - 1):
            bar.set_postfix(loss=f"{float(m['loss']):.4f}")
    bar.close()
    sums: dict[str, float] = {}
    for m in jax.device_get(pending):
        for name, v in m.items():
            sums[name] = sums.get(name, 0.0) + float(v)
    return {name: v / max(1, len(pending)) for name, v in sums.items()}


def _static_model(model: nn.Module) -> Any:
    """The module as a static engine setting: hashed by value when it can be, else by identity."""
    try:
        hash(model)
    except TypeError:
        return model
    return (model,)


def _evaluate(d: _Data, cfg: TrainConfig, params, ekey) -> dict:
    """Clean and robust accuracy, loss and gradient norms on the evaluation split, streamed in blocks."""
    ex, ey, split = (d.ev[0], d.ev[1], "eval") if d.ev is not None else (d.x, d.y, "train")
    attack = cfg.evaluation
    rows = np.arange(ex.shape[0], dtype=np.int32)
    static = dict(model=_static_model(d.model), norm=cfg.threat_norm or "linf", attack=attack)
    # one device per block: the PGD key of a block is fold_in(key, first row), so splitting a block over
    # devices would change the random starts with the device count; a block holds _EVAL_CHUNK rows rounded
    # up to a multiple of the device count (the block boundaries, hence the keys, of earlier releases)
    ndev = len(jax.local_devices())
    block = -(-min(_EVAL_CHUNK, max(1, ex.shape[0])) // ndev) * ndev
    cor, rob, lv, gn = _engine.run(_eval_kernel, static, (ex, ey, rows), (params, ekey), block_size=block,
                                   devices=jax.local_devices()[:1])
    return {
        "clean_accuracy": float(cor.mean()),
        "robust_accuracy": float(rob.mean()) if attack is not None else None,
        "eval_eps": attack.eps if attack is not None else None,
        "eval_loss": float(lv.mean()),
        "grad_norm_mean": float(gn.mean()),
        "grad_norm_median": float(np.median(gn)),
        "grad_norm_max": float(gn.max()),
        "eval_split": split,
    }


def _mesh(devices: Sequence[Any] | None, batch_size: int):
    """``(ndev, data sharding, replicated sharding)``: the largest device prefix dividing ``batch_size``."""
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices: empty")
    ndev = max(g for g in range(1, len(devs) + 1) if batch_size % g == 0)
    mesh = Mesh(np.array(devs[:ndev], dtype=object), ("batch",))
    return ndev, NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())


def train(
    model: Any,
    train_data: Any,
    config: TrainConfig | None = None,
    *,
    key: Any,
    eval_data: Any = None,
    soft_labels: Any = None,
    checkpoint_dir: Any = None,
    history_path: Any = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    **settings: Any,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with one of the robust-training recipes.

    See the module docstring for the objectives (Madry et al. PGD training,
    TRADES, Finlay et al. eqs. 2.6/2.9, Bhagoji et al. §4.3 soft labels).
    Each epoch visits ``n // batch_size`` batches of a fresh permutation (the
    remainder of the permutation is dropped), then evaluates on
    ``eval_data`` (or, without it, on the training data: ``eval_split`` in
    the history says which).

    Args:
      model: a Flax module, or a registered name (:func:`jaxbound.models.create`
        with ``num_classes`` from the data).
      train_data: :class:`jaxbound.data.Dataset` or ``(x [n, H, W, C], y [n])``,
        pixels in ``[0, 1]``.
      config: the settings (:class:`TrainConfig`; default: its defaults).
      key: ``jax.random`` key; the whole run is a deterministic function of it.
      eval_data: held-out data evaluated after every epoch.
      soft_labels: ``[n, k]`` target probabilities aligned with ``train_data``
        (recipe ``soft_labels`` only).
      checkpoint_dir: folder for per-epoch Orbax checkpoints; an existing
        checkpoint of the same run is resumed, one of another run raises.
      history_path: JSON file rewritten after every epoch with :meth:`TrainResult.to_dict`.
      progress: show a tqdm bar per epoch.
      devices: devices the batch is split over (default all local devices; the
        largest prefix whose count divides ``batch_size`` is used).
      **settings: overrides of ``config``'s fields, or the old keywords
        ``eps``, ``norm``, ``attack_steps``, ``attack_step_size``, ``eval_eps``,
        ``eval_steps`` (see :func:`train_config`).

    Returns:
      :class:`TrainResult`.

    Raises:
      TypeError: a setting that is neither a field of :class:`TrainConfig` nor an old keyword.
      ValueError: an invalid setting (see :class:`TrainConfig`); ``batch_size``
        larger than the data; images outside ``[0, 1]``; labels out of range;
        soft labels that are not probability rows; unknown model; a
        checkpoint of a different run.

    References:
      Madry et al. ICLR 2018, arXiv:1706.06083; Zhang et al. ICML 2019,
      arXiv:1901.08573; Finlay et al. arXiv:1808.09540; Bhagoji et al. ICML
      2021, arXiv:2104.08382; Ding et al. ICLR 2019, arXiv:1902.08336.
    """
    _checks.check_key(key)
    cfg = train_config(config, **settings)
    if not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress: expected a bool, got {progress!r}")
    d = _prepare(model, train_data, cfg, eval_data, soft_labels)
    steps_per_epoch = d.n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    tx, sched = _make_optimizer(cfg, total_steps)
    evaluation = cfg.evaluation
    config = dict(cfg.to_dict(), eval_attack=None if evaluation is None else evaluation.to_dict(),
                  model=repr(d.model), n=d.n, input_shape=list(d.x.shape[1:]), num_classes=d.k_model,
                  steps_per_epoch=steps_per_epoch, eval_n=None if d.ev is None else int(d.ev[0].shape[0]))
    ndev, data_sh, repl = _mesh(devices, cfg.batch_size)
    config["devices"] = ndev

    k_init, k_perm, k_step, k_eval = (jax.random.fold_in(key, i) for i in range(4))
    params = models.init_params(d.model, d.x.shape[1:], key=k_init)
    st = _State(params, tx.init(params))
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    fp = None if ckdir is None else _run_fingerprint(config, key, d, cfg)
    if ckdir is not None:
        _resume(ckdir, fp, st)
    step_fn = _step_function(d.model, cfg, total_steps, data_sh, repl)
    st.params = jax.device_put(st.params, repl)
    st.opt_state = jax.device_put(st.opt_state, repl)

    def result():
        return TrainResult(d.model, st.params, st.history, st.step, to_jsonable(config), {})

    for epoch in range(st.epoch, cfg.epochs):
        t0 = time.perf_counter()
        means = _train_epoch(step_fn, st, d, cfg, k_perm, k_step, epoch, data_sh, progress)
        entry = {"epoch": epoch + 1, "step": st.step, "loss": means.get("loss"),
                 "train_accuracy": means.get("accuracy")}
        entry.update(_evaluate(d, cfg, st.params, jax.random.fold_in(k_eval, epoch)))
        entry["lr"] = None if sched is None else float(sched(max(st.step - 1, 0)))
        entry.update({extra: means[extra] for extra in ("tv", "lip", "kl") if extra in means})
        entry["seconds"] = time.perf_counter() - t0
        st.history.append(entry)
        if ckdir is not None:
            _save_checkpoint(ckdir, {"params": st.params, "opt_state": st.opt_state},
                             {"fingerprint": fp, "epoch": epoch + 1, "step": st.step,
                              "history": to_jsonable(st.history)})
        if history_path is not None:
            atomic_write_json(history_path, result().to_dict())
    if history_path is not None and not st.history:
        atomic_write_json(history_path, result().to_dict())
    st.params = jax.device_get(st.params)
    return result()


# ---------------------------------------------------------------------------
# Gradient norms (exact and finite difference)
# ---------------------------------------------------------------------------


def loss_gradient_norm(
    logits_fn: Callable,
    x: Any,
    y: Any,
    *,
    norm: Any,
    mode: str = "exact",
    fd_step: float = 1e-3,
) -> np.ndarray:
    """Per-example ``||grad_x l(x, y)||_*``, exact or by Finlay et al.'s finite difference.

    ``mode="exact"``: the dual norm of the input gradient of the
    cross-entropy. ``mode="fd"``: ``(l(x + h d) - l(x)) / h`` with ``d`` the
    unit steepest-ascent direction of the exact gradient (``g / ||g||_2`` for
    l2, ``sign(g)`` for linf, one signed largest coordinate for l1; Finlay et
    al. 2019, §2 after eq. 2.9, h = 1e-3), which equals the dual norm to first
    order in ``h``; the step is not clipped to the pixel box. The regulariser
    of recipe ``gradient_reg`` uses exactly these quantities. In float32 the
    difference loses accuracy where the gradient is tiny (confidently
    classified points).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs.
      y: ``[n]`` labels.
      norm: threat-model norm ``"linf" | "l2" | "l1"`` (the gradient is measured in its dual).
      mode: ``"exact"`` or ``"fd"``.
      fd_step: ``h`` (> 0).

    Returns:
      ``[n]`` float64 NumPy array.

    References:
      Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural
      networks generalize and are adversarially robust." arXiv:1808.09540.
    """
    _checks.check_logits_fn(logits_fn)
    norm = _checks.check_attack_norm(norm)
    if mode not in _GRADIENT_MODES:
        raise ValueError(f"mode: must be 'exact' or 'fd', got {mode!r}")
    fd_step = _checks.check_scalar(fd_step, "fd_step", low=0.0, low_inclusive=False)
    x = _checks.check_model_inputs(x, None, "x")
    k = _checks.num_classes_of(logits_fn, x)
    y = _checks.check_model_labels(y, x.shape[0], k, "y")
    _checks.check_nonempty(x, "x")

    @jax.jit
    def run(x, y):
        g, v = _input_grad(logits_fn, x, y)
        finite = jnp.all(jnp.isfinite(logits_fn(x)), axis=-1)
        if mode == "exact":
            return _dual_norms(g, norm), finite
        d = lp.steepest_ascent(g, norm)
        return (attacks.cross_entropy(logits_fn(x + fd_step * d), y) - v) / fd_step, finite

    out, finite = run(jnp.asarray(x), jnp.asarray(y))
    _checks.check_finite_logits(np.asarray(finite), "logits_fn", inputs="x")
    return np.asarray(out, np.float64)
