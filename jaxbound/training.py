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
* ``"fgsm_rs"``: fast adversarial training of Wong, Rice & Kolter (2020,
  Alg. 3): ``E[l(x', y)]`` with ``x'`` one FGSM step of length
  ``alpha = fgsm_alpha * eps`` (``1.25 eps`` in the paper) from a uniform
  random start in the ``eps`` ball, projected onto the ball and the box. The
  cyclic learning rate of the paper is ``schedule="cyclic"`` (optax's
  ``linear_onecycle_schedule``), its early stopping on the robust accuracy
  ``select="best_robust"``.
* ``"ibp"``: interval bound propagation training of Gowal et al. (2018,
  eq. 7): ``E[kappa l(z(x), y) + (1 - kappa) l(z_hat(x, eps_t), y)]`` where
  ``z_hat_j = -m_j`` are the worst-case logits from the certified lower
  bounds ``m_j`` of the margins ``z_y - z_j`` over the ``eps_t`` ball
  (:func:`jaxbound.certify.margin_lower`, ``method="ibp"``). After
  ``warmup_steps`` clean steps (``eps_t = 0``, ``kappa = kappa_start``),
  ``eps_t`` ramps linearly from 0 to ``attack.eps`` and ``kappa`` from
  ``kappa_start`` (1) to ``kappa_end`` (0.5) over ``ramp_steps`` steps.
  The training ``eps`` may exceed the evaluation one (Gowal et al. train at
  0.4 for 0.3 on MNIST): give ``eval_attack``.
* ``"crown_ibp"``: CROWN-IBP of Zhang et al. (2020, eq. 9): the same loss
  with the margin bound ``beta m_CROWN-IBP + (1 - beta) m_IBP``, ``beta``
  ramping from 1 to 0 with ``eps_t`` (the CROWN-IBP bound is skipped once
  ``beta = 0``).

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

Speed. The training data is placed on the devices once per call; each
compiled call runs up to :data:`STEPS_PER_CALL` optimiser steps as one
``lax.scan`` over batches gathered on the device from the host's
permutation (no per-step dispatch, host gathers or host-to-device copies),
with the parameters and optimiser state donated. The last call of an epoch
skips its padding steps (``lax.cond``) when the chunk length does not divide
the epoch. The numbers are those of one jitted step per batch.

Data parallelism. Each batch is split over the local devices along a 1-D
``jax.sharding.Mesh`` (``NamedSharding``; parameters and optimiser state
replicated), and XLA inserts the gradient all-reduce. Models must treat
examples independently (every model in :mod:`jaxbound.models` does). On a
multi-core CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``
gives one device per core. The per-epoch evaluation streams through the
library's block engine.

Several processes. After ``jax.distributed.initialize`` with
``jax.process_count() > 1`` the mesh spans every process's devices
(``jax.devices()``; ``batch_size`` must be a multiple of their number),
every process passes the same full data, keys and settings and gets the
same result; the per-epoch evaluation runs in every process on the same
replicated parameters, and only process 0 writes checkpoints and the
history file (both atomically).

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
  Wong, Rice, Kolter. "Fast is better than free: revisiting adversarial
  training." ICLR 2020, arXiv:2001.03994 (``fgsm_rs``).
  Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann,
  Kohli. "On the effectiveness of interval bound propagation for training
  verifiably robust models." arXiv:1810.12715 (``ibp``).
  Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning, Hsieh. "Towards stable
  and efficient training of verifiably robust neural networks." ICLR 2020,
  arXiv:1906.06316 (``crown_ibp``).
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
    "CERTIFIED_RECIPES",
    "STEPS_PER_CALL",
    "OPTIMIZERS",
    "SCHEDULES",
    "SELECT",
    "TrainConfig",
    "train_config",
    "TRAIN_ATTACK_STEPS",
    "training_attack",
    "TrainResult",
    "train",
    "loss_gradient_norm",
]

RECIPES = ("standard", "pgd", "trades", "gradient_reg", "soft_labels", "fgsm_rs", "ibp", "crown_ibp")
#: Recipes whose loss uses certified margin bounds (:mod:`jaxbound.certify`).
CERTIFIED_RECIPES = ("ibp", "crown_ibp")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "piecewise", "cosine", "cyclic")
#: Which epoch's parameters :func:`train` returns (:attr:`TrainConfig.select`).
SELECT = ("last", "best_robust")
#: Optimiser steps compiled into one call (a ``lax.scan`` over a stack of batches).
STEPS_PER_CALL = 50
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
      recipe: ``"standard" | "pgd" | "trades" | "gradient_reg" | "soft_labels"
        | "fgsm_rs" | "ibp" | "crown_ibp"``.
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
        of the steps: Ding et al.'s WRN schedule), ``"cosine"``, ``"cyclic"``
        (Wong et al.'s one cycle: linear up to ``learning_rate`` at half of
        the steps and down again, optax's ``linear_onecycle_schedule``), or an
        optax schedule ``step -> lr``.
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
        Not used by ``ibp``/``crown_ibp`` (they ramp with ``warmup_steps``
        and ``ramp_steps``).
      fgsm_alpha: ``fgsm_rs`` step length in units of ``eps`` (> 0; Wong et
        al. use 1.25).
      warmup_steps: ``ibp``/``crown_ibp``: clean steps (``eps_t = 0``) before
        the ramp (Gowal et al.: 2,000 on MNIST).
      ramp_steps: ``ibp``/``crown_ibp``: steps over which ``eps_t`` ramps
        linearly from 0 to ``eps``, ``kappa`` from ``kappa_start`` to
        ``kappa_end`` and CROWN-IBP's ``beta`` from 1 to 0 (Gowal et al.:
        10,000 on MNIST); ``0`` jumps to the targets after the warm-up.
      kappa_start: weight of the clean cross-entropy at the start (in [0, 1]; Gowal et al. 1).
      kappa_end: weight of the clean cross-entropy after the ramp (in [0, 1]; Gowal et al. 0.5).
      select: which epoch's parameters :func:`train` returns: ``"last"``
        (the final epoch's) or ``"best_robust"``: the epoch with the highest
        per-epoch ``robust_accuracy`` (the later epoch on ties), the early
        stopping that Wong et al. (2020) recommend against the catastrophic
        overfitting of ``fgsm_rs``. It needs a robust evaluation
        (``eval_attack``, or a training attack with ``eps > 0``); select on
        a validation split (``eval_data``), not on the data the result is
        reported on.
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
      2018, arXiv:1711.00851; Wong, Rice & Kolter ICLR 2020,
      arXiv:2001.03994; Gowal et al. arXiv:1810.12715; Zhang et al. ICLR
      2020, arXiv:1906.06316.
    """

    recipe: str = _field("standard", "training recipe: standard, pgd, trades, gradient_reg, soft_labels, "
                                     "fgsm_rs, ibp or crown_ibp")
    epochs: int = _field(1, "passes over the training data")
    batch_size: int = _field(128, "examples per optimiser step")
    optimizer: Any = _field("adam", "optimiser: adam, adamw, sgd (or an optax GradientTransformation)")
    learning_rate: float = _field(1e-3, "base learning rate")
    momentum: float = _field(0.9, "SGD momentum in [0, 1)")
    weight_decay: float = _field(0.0, "L2 weight decay (coupled for adam/sgd, decoupled for adamw)")
    schedule: Any = _field("constant", "learning-rate schedule: constant, piecewise, cosine or cyclic")
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
    fgsm_alpha: float = _field(1.25, "fgsm_rs step length in units of eps")
    warmup_steps: int = _field(0, "ibp/crown_ibp: clean steps before the eps ramp")
    ramp_steps: int = _field(0, "ibp/crown_ibp: steps of the linear eps, kappa and beta ramps")
    kappa_start: float = _field(1.0, "ibp/crown_ibp: weight of the clean loss at the start")
    kappa_end: float = _field(0.5, "ibp/crown_ibp: weight of the clean loss after the ramp")
    select: str = _field("last", "parameters returned: last (the final epoch's) or best_robust (the epoch of "
                                 "highest robust accuracy on the evaluation data: early stopping)")

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
        put("fgsm_alpha", _checks.check_scalar(self.fgsm_alpha, "fgsm_alpha", low=0.0, low_inclusive=False))
        for name in ("warmup_steps", "ramp_steps"):
            put(name, _checks.check_int(getattr(self, name), name, low=0))
        for name in ("kappa_start", "kappa_end"):
            put(name, _checks.check_scalar(getattr(self, name), name, low=0.0, high=1.0))
        if self.recipe in ("pgd", "trades", "fgsm_rs") + CERTIFIED_RECIPES and self.attack is None:
            raise ValueError(f"eps: recipe {self.recipe!r} needs a training budget eps >= 0 "
                             "(attack=AttackConfig(norm=..., eps=...))")
        if self.certified:
            if self.attack.norm not in ("linf", "l2"):
                raise ValueError(f"norm: recipe {self.recipe!r} bounds linf or l2 balls, got {self.attack.norm!r}")
            if self.eps_warmup:
                raise ValueError(f"eps_warmup: recipe {self.recipe!r} ramps eps with warmup_steps and ramp_steps; "
                                 f"got eps_warmup={self.eps_warmup}")
        if self.select not in SELECT:
            raise ValueError(f"select: must be one of {', '.join(map(repr, SELECT))}, got {self.select!r}")
        if self.select == "best_robust" and self.evaluation is None:
            raise ValueError("select: 'best_robust' needs a per-epoch robust accuracy: give eval_attack (or a "
                             "training attack with eps > 0)")
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
        return self.recipe in ("pgd", "trades", "fgsm_rs") or (
            self.recipe == "soft_labels" and self.attack is not None and bool(self.attack.eps))

    @property
    def certified(self) -> bool:
        """Whether the loss uses certified margin bounds (``ibp``, ``crown_ibp``)."""
        return self.recipe in CERTIFIED_RECIPES

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
        if values["recipe"] in ("pgd", "trades", "fgsm_rs") + CERTIFIED_RECIPES:
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
      epoch: the epoch (1-based) whose parameters ``params`` holds: the last
        one, or with ``select="best_robust"`` the selected one (a resumed run
        that had finished reports the same epoch as the original run).
    """

    model: nn.Module
    params: Any
    history: list
    steps: int
    config: dict
    cache: dict
    epoch: int = 0

    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """The plain ``x [n, ...] -> logits [n, k]`` function (the same object on every call)."""
        if "logits_fn" not in self.cache:
            self.cache["logits_fn"] = models.logits_fn(self.model, self.params)
        return self.cache["logits_fn"]

    def to_dict(self) -> dict:
        """JSON-ready record: the settings, the step count, the returned epoch and the history (no parameters)."""
        return to_jsonable({"config": self.config, "steps": self.steps, "epoch": self.epoch,
                            "history": self.history})


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
    if recipe == "fgsm_rs":  # Wong et al. 2020, Alg. 3: uniform start, one step of alpha = fgsm_alpha * eps
        kw.update(step_size=cfg.fgsm_alpha * eps_t, attack=attack.replace(steps=1))
        return _pgd_train(f0, x, lambda lg: attacks.cross_entropy(lg, t), key, start="uniform", **kw)
    if recipe == "soft_labels":
        return _pgd_train(f0, x, lambda lg: _soft_ce(lg, t), key, start="uniform", **kw)
    p_clean = lax.stop_gradient(f0(x))  # trades
    return _pgd_train(f0, x, lambda lg: _kl(p_clean, lg), key, start="gaussian", **kw)


def _margin_lower(f, x, t, eps, cfg: TrainConfig, beta):
    """Certified lower bounds ``[b, k]`` of ``f(x')_t - f(x')_j`` over the ``eps`` ball (0 at ``j = t``).

    ``ibp``: interval bound propagation; ``crown_ibp``: ``beta`` CROWN-IBP +
    ``(1 - beta)`` IBP, the CROWN-IBP pass skipped where ``beta = 0``.
    """
    import importlib

    certify = importlib.import_module("jaxbound.certify")
    kw = dict(eps=eps, norm=cfg.attack.norm, input_bounds=cfg.attack.bounds)
    m_ibp = certify.margin_lower(f, x, t, method="ibp", **kw)
    if cfg.recipe == "ibp":
        return m_ibp
    return lax.cond(beta > 0, lambda: beta * certify.margin_lower(f, x, t, method="crown-ibp", **kw)
                    + (1 - beta) * m_ibp, lambda: m_ibp)


def _certified_objective(f, x, t, cfg: TrainConfig, sched):
    """Gowal et al. eq. 7 / Zhang et al. eq. 9: ``kappa CE(z(x)) + (1 - kappa) CE(z_hat)``, ``z_hat = -m``."""
    scale, kappa, beta = sched
    logits = f(x)
    m = _margin_lower(f, x, t, cfg.attack.eps * scale, cfg, beta)
    robust = attacks.cross_entropy(-m, t)
    loss = jnp.mean(kappa * attacks.cross_entropy(logits, t) + (1 - kappa) * robust)
    others = jnp.where(jax.nn.one_hot(t, m.shape[-1], dtype=bool), jnp.inf, m)
    aux = {"robust_loss": jnp.mean(robust), "certified": jnp.mean((jnp.min(others, -1) > 0).astype(jnp.float32))}
    return loss, logits, aux


def _objective(f, x, t, xin, direction, cfg: TrainConfig, sched=None):
    """The recipe's objective at parameters closed over by ``f``: ``(loss, aux)``."""
    recipe, aux = cfg.recipe, {}
    if cfg.certified:
        loss, logits, aux = _certified_objective(f, x, t, cfg, sched)
        correct = jnp.argmax(logits, -1) == t
    elif recipe in ("standard", "pgd", "fgsm_rs"):
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


def _schedules(cfg: TrainConfig, step, xp=jnp):
    """``(scale, kappa, beta)`` of global step ``step`` (0-based), traced (``xp=jnp``) or on the host (``np``).

    ``scale`` multiplies the budget: the ``eps_warmup`` ramp
    ``min(1, (step + 1) / eps_warmup)``, or for ``ibp``/``crown_ibp`` the
    fraction ``r = clip((step + 1 - warmup_steps) / ramp_steps, 0, 1)`` of
    Gowal et al.'s ramp, with ``kappa`` going from ``kappa_start`` to
    ``kappa_end`` and ``beta`` from 1 to 0 along it (``None`` otherwise).
    """
    s = xp.asarray(step).astype(xp.float32)
    if not cfg.certified:
        if not cfg.eps_warmup:
            return 1.0, None, None
        return xp.minimum(xp.float32(1.0), (s + 1) / xp.float32(cfg.eps_warmup)), None, None
    if cfg.ramp_steps:
        r = xp.clip((s + 1 - cfg.warmup_steps) / xp.float32(cfg.ramp_steps), 0.0, 1.0).astype(xp.float32)
    else:
        r = (s >= cfg.warmup_steps).astype(xp.float32)
    kappa = cfg.kappa_start + (cfg.kappa_end - cfg.kappa_start) * r
    return r, kappa, 1.0 - r


def _make_step(apply: Callable, tx: optax.GradientTransformation, cfg: TrainConfig) -> Callable:
    """The training step ``(params, opt_state, x, t, key, scale, kappa, beta) -> (params, opt_state, metrics)``.

    Not jitted. ``scale`` in ``[0, 1]`` multiplies the attack budget and step
    length (the ``eps_warmup`` ramp) or, for ``ibp``/``crown_ibp``, the
    certified budget; ``kappa`` and ``beta`` are their loss weights
    (default: the values after the ramp). See :func:`_schedules`.

    ``t`` holds integer labels ``[b]``, or target probabilities ``[b, k]`` for
    ``soft_labels``. ``metrics`` is a dict of scalars.
    """

    def step(params, opt_state, x, t, key, scale=1.0, kappa=None, beta=None):
        if cfg.certified:
            sched = (scale, cfg.kappa_end if kappa is None else kappa, 0.0 if beta is None else beta)
        else:
            sched = None
        stopped = lax.stop_gradient(params)

        def f0(z):
            return apply(stopped, z)

        xin = _attack_inputs(f0, x, t, key, cfg, scale)
        direction = None
        if cfg.recipe == "gradient_reg" and cfg.gradient_mode == "fd":
            g0, _ = _input_grad(f0, x, t)
            direction = lax.stop_gradient(lp.steepest_ascent(g0, cfg.threat_norm))

        def objective(p):
            return _objective(lambda z: apply(p, z), x, t, xin, direction, cfg, sched)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        aux["loss"] = loss
        return params, opt_state, aux

    return step


class _StepSpec(NamedTuple):
    """Static part of the jitted training chunk (hashable: the module, the settings and the data layout)."""

    model: nn.Module
    cfg: TrainConfig
    total_steps: int | None
    masked: bool = False
    data_sharding: Any = None
    key_impl: Any = None


def _init_opt(spec: _StepSpec, params):
    tx, _ = _make_optimizer(spec.cfg, spec.total_steps)
    return tx.init(params)


def _train_chunk(spec: _StepSpec, params, opt_state, x_all, t_all, idx, valid, k_step, step0):
    """``idx.shape[0]`` training steps in one ``lax.scan``: the batches are gathered on the device.

    Step ``k`` trains on rows ``idx[k]`` of ``x_all``/``t_all`` with the key
    ``fold_in(k_step, step0 + k)`` (``k_step`` is the key's raw data,
    rewrapped with ``spec.key_impl``; legacy ``uint32`` keys have none) and
    the schedules of global step ``step0 + k``; with ``spec.masked``, steps ``k >= valid`` leave the state
    unchanged (the padding of the epoch's last chunk). Returns the new state
    and the per-step metrics ``[K]``.
    """
    tx, _ = _make_optimizer(spec.cfg, spec.total_steps)
    step = _make_step(spec.model.apply, tx, spec.cfg)
    if spec.key_impl is not None:
        k_step = jax.random.wrap_key_data(k_step, impl=spec.key_impl)

    def body(carry, inp):
        k, rows = inp
        s = step0 + k
        xb, tb = x_all[rows], t_all[rows]
        if spec.data_sharding is not None:
            xb = lax.with_sharding_constraint(xb, spec.data_sharding)
            tb = lax.with_sharding_constraint(tb, spec.data_sharding)

        def run(c):
            p, o, m = step(c[0], c[1], xb, tb, jax.random.fold_in(k_step, s), *_schedules(spec.cfg, s))
            return (p, o), m

        if not spec.masked:
            return run(carry)
        shapes = jax.eval_shape(run, carry)[1]
        skip = (carry, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))
        return lax.cond(k < valid, run, lambda c: skip, carry)

    (params, opt_state), metrics = lax.scan(body, (params, opt_state), (jnp.arange(idx.shape[0]), idx))
    return params, opt_state, metrics


class _Runner(NamedTuple):
    """The jitted optimiser init and training chunks of one run (jax's cache shares them across runs)."""

    init: Callable
    chunk: Callable  # (masked) -> jitted (params, opt_state, x_all, t_all, idx, valid, k_step, step0)


def _runner(model: nn.Module, cfg: TrainConfig, total_steps: int, mesh: Mesh, key: Any) -> _Runner:
    """The jitted functions; parameters and optimiser state are donated to the chunk (updated in place)."""
    uses_total = isinstance(cfg.optimizer, str) and cfg.schedule in ("piecewise", "cosine", "cyclic")
    data_sh, repl = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    idx_sh = NamedSharding(mesh, P(None, "batch"))
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    base = _StepSpec(model, cfg.replace(epochs=1), total_steps if uses_total else None, False, data_sh,
                     jax.random.key_impl(key) if typed else None)
    shardings = dict(in_shardings=(repl, repl, repl, repl, idx_sh, repl, repl, repl), out_shardings=(repl, repl, repl))
    try:
        hash(base)
    except TypeError:  # unhashable module attributes: fresh functions
        init = jax.jit(functools.partial(_init_opt, base), out_shardings=repl)
        return _Runner(init, lambda masked: jax.jit(functools.partial(_train_chunk, base._replace(masked=masked)),
                                                    donate_argnums=(0, 1), **shardings))
    jitted = jax.jit(_train_chunk, static_argnums=0, donate_argnums=(1, 2), **shardings)
    return _Runner(functools.partial(_jit_init, base),
                   lambda masked: functools.partial(jitted, base._replace(masked=masked)))


_jit_init = jax.jit(_init_opt, static_argnums=0)


def _eval_kernel(x, y, rows, params, key, *, model, norm, attack, certified=None):
    """One block of the evaluation: correct, robust (PGD), cross-entropy, dual gradient norms, certified; ``[b]`` each.

    ``certified``: ``None``, or the training settings of ``ibp``/``crown_ibp``
    whose margin bound (at the evaluation ``eps``, ``beta = 0``: IBP for
    ``ibp``, CROWN-IBP for ``crown_ibp``) certifies a point when every
    margin is positive.

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
    cert = correct
    if certified is not None:
        eps = attack.eps if attack is not None else 0.0
        m = _margin_lower(f, x, y, eps, certified, 1.0)
        others = jnp.where(jax.nn.one_hot(y, m.shape[-1], dtype=bool), jnp.inf, m)
        cert = correct & (jnp.min(others, -1) > 0)
    return correct, robust, v, gn, cert


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
    if schedule == "cyclic":
        # Wong et al. 2020 (§5.1): linear from 0 up to lr at half of the steps, then linearly down to 0.
        half = max(1, total // 2)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, half),
                                     optax.linear_schedule(lr, 0.0, max(1, total - half))], [half])
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
    best_params: Any = None  # select="best_robust": host copy of the selected epoch's parameters


def _selected_epoch(history: list) -> int:
    """The epoch (1-based) of the highest ``robust_accuracy`` in ``history``, the later one on ties (0: none)."""
    best, epoch = None, 0
    for h in history:
        ra = h.get("robust_accuracy")
        if ra is not None and (best is None or ra >= best):
            best, epoch = ra, int(h["epoch"])
    return epoch


def _run_fingerprint(config: dict, key: Any, d: _Data, cfg: TrainConfig) -> str:
    return fingerprint(repr(sorted((k, v) for k, v in config.items() if k != "devices")), _engine.key_data(key),
                       d.x, d.y, d.targets if cfg.recipe == "soft_labels" else 0,
                       *(d.ev[:2] if d.ev is not None else (0,)))


def _resume(ckdir: Path, fp: str, st: _State, best: bool = False) -> None:
    """Load the last checkpoint of this run into ``st`` (another run's checkpoint raises).

    ``best``: the checkpoint also holds the selected epoch's parameters
    (``select="best_robust"``), restored into ``st.best_params``.

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
        like = {"params": st.params, "opt_state": st.opt_state}
        if best:
            like["best_params"] = st.params
        state = _restore_checkpoint(ckdir, meta, like)
        best_params = jax.device_get(state["best_params"]) if best else None
        params = jax.tree.map(jnp.asarray, state["params"])
        opt_state = jax.tree.map(jnp.asarray, state["opt_state"])
        step, epoch, history = int(meta["step"]), int(meta["epoch"]), list(meta["history"])
    except Exception as exc:  # noqa: BLE001 - Orbax and tensorstore raise many kinds; recompute instead
        warnings.warn(f"training checkpoint {ckdir / str(meta.get('checkpoint'))} is damaged "
                      f"({type(exc).__name__}); training from the start", RuntimeWarning, stacklevel=2)
        return
    st.params, st.opt_state, st.step, st.epoch, st.history = params, opt_state, step, epoch, history
    st.best_params = best_params


def _chunking(steps_per_epoch: int) -> tuple[int, int]:
    """``(steps per call K, calls per epoch)``: as few calls of at most :data:`STEPS_PER_CALL` steps as possible."""
    calls = -(-steps_per_epoch // STEPS_PER_CALL)
    return -(-steps_per_epoch // calls), calls


def _train_epoch(run: _Runner, st: _State, d: _Data, cfg: TrainConfig, k_perm, k_step, epoch: int, dev,
                 progress: bool) -> dict:
    """One pass over a fresh permutation; returns the batch means of the step metrics.

    The permutation is drawn on the host; the batches are gathered on the
    device inside :func:`_train_chunk`, ``K`` steps per call (the last call
    of an epoch padded with skipped steps when ``K`` does not divide it).
    """
    from tqdm.auto import tqdm

    bs = cfg.batch_size
    steps_per_epoch = d.n // bs
    k_chunk, calls = _chunking(steps_per_epoch)
    perm = _permutation(jax.random.fold_in(k_perm, epoch), d.n)[:steps_per_epoch * bs].astype(np.int32)
    idx = np.zeros((calls * k_chunk, bs), np.int32)
    idx[:steps_per_epoch] = perm.reshape(steps_per_epoch, bs)
    chunk = run.chunk(calls * k_chunk != steps_per_epoch)
    bar = tqdm(total=steps_per_epoch, desc=f"{cfg.recipe} epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False)
    pending = []
    for c in range(calls):
        valid = min(k_chunk, steps_per_epoch - c * k_chunk)
        rows = _put(idx[c * k_chunk:(c + 1) * k_chunk], dev.idx)
        st.params, st.opt_state, m = chunk(st.params, st.opt_state, dev.x, dev.t, rows, np.int32(valid), k_step,
                                           np.int32(st.step))
        st.step += valid
        pending.append((valid, m))
        if progress:
            bar.update(valid)
            bar.set_postfix(loss=f"{float(m['loss'][valid - 1]):.4f}")
    bar.close()
    sums: dict[str, float] = {}
    for valid, m in jax.device_get(pending):
        for name, v in m.items():
            for i in range(valid):
                sums[name] = sums.get(name, 0.0) + float(v[i])
    return {name: v / max(1, steps_per_epoch) for name, v in sums.items()}


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
    static = dict(model=_static_model(d.model), norm=cfg.threat_norm or "linf", attack=attack,
                  certified=cfg.replace(epochs=1) if cfg.certified else None)
    # one device per block: the PGD key of a block is fold_in(key, first row), so splitting a block over
    # devices would change the random starts with the device count; a block holds _EVAL_CHUNK rows rounded
    # up to a multiple of the device count (the block boundaries, hence the keys, of earlier releases)
    ndev = len(jax.local_devices())
    block = -(-min(_EVAL_CHUNK, max(1, ex.shape[0])) // ndev) * ndev
    cor, rob, lv, gn, cert = _engine.run(_eval_kernel, static, (ex, ey, rows), (params, ekey), block_size=block,
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
        **({"certified_accuracy": float(cert.mean())} if cfg.certified else {}),
    }


def _mesh(devices: Sequence[Any] | None, batch_size: int) -> Mesh:
    """The 1-D ``batch`` mesh: the largest device prefix dividing ``batch_size``.

    With several processes (``jax.process_count() > 1``) and ``devices``
    unset, the mesh spans every process's devices (``jax.devices()``) and
    ``batch_size`` must be a multiple of their number.
    """
    if devices is None and jax.process_count() > 1:
        devs = list(jax.devices())
        if batch_size % len(devs):
            raise ValueError(f"batch_size: {batch_size} is not a multiple of the {len(devs)} devices of the "
                             f"{jax.process_count()} processes")
        return Mesh(np.array(devs, dtype=object), ("batch",))
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices: empty")
    ndev = max(g for g in range(1, len(devs) + 1) if batch_size % g == 0)
    return Mesh(np.array(devs[:ndev], dtype=object), ("batch",))


class _DeviceData(NamedTuple):
    """The training arrays placed once on the mesh (replicated) and the sharding of the batch indices."""

    x: Any
    t: Any
    idx: Any


def _multi_process() -> bool:
    return jax.process_count() > 1


def _put(tree, sharding):
    """Host arrays onto ``sharding``; with several processes (every one holding the same values) via callbacks."""
    if not _multi_process():
        return jax.device_put(tree, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    return jax.tree.map(one, tree)


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
      devices: devices the batch is split over (default all local devices, or
        with several processes every process's devices; the largest prefix
        whose count divides ``batch_size`` is used).
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
    mesh = _mesh(devices, cfg.batch_size)
    repl = NamedSharding(mesh, P())
    config["devices"] = int(mesh.devices.size)

    k_init, k_perm, k_step, k_eval = (jax.random.fold_in(key, i) for i in range(4))
    run = _runner(d.model, cfg, total_steps, mesh, key)
    params = models.init_params(d.model, d.x.shape[1:], key=k_init)
    st = _State(params, run.init(params))
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    fp = None if ckdir is None else _run_fingerprint(config, key, d, cfg)
    best = cfg.select == "best_robust"
    if ckdir is not None:
        _resume(ckdir, fp, st, best)
    # fresh device copies (the chunks donate them); every process holds the same values
    st.params = _put(jax.device_get(st.params), repl)
    st.opt_state = _put(jax.device_get(st.opt_state), repl)
    dev = _DeviceData(_put(d.x, repl), _put(d.targets, repl), NamedSharding(mesh, P(None, "batch")))
    k_step = _put(_engine.key_data(k_step), repl)
    writer = not _multi_process() or jax.process_index() == 0

    def result():
        chosen = _selected_epoch(st.history) if best and st.best_params is not None else 0
        params = st.best_params if chosen else st.params
        epoch = chosen or (int(st.history[-1]["epoch"]) if st.history else 0)
        return TrainResult(d.model, params, st.history, st.step, to_jsonable(config), {}, epoch)

    for epoch in range(st.epoch, cfg.epochs):
        t0 = time.perf_counter()
        means = _train_epoch(run, st, d, cfg, k_perm, k_step, epoch, dev, progress and writer)
        st.history.append(_history_entry(d, cfg, st, means, sched, jax.random.fold_in(k_eval, epoch), epoch, t0))
        # a host copy (the next chunk donates the device buffers); the first epoch's always, so that every
        # checkpoint holds a tree of the same structure
        if best and (st.best_params is None or _selected_epoch(st.history) == epoch + 1):
            st.best_params = jax.device_get(st.params)
        if ckdir is not None:
            state = jax.device_get({"params": st.params, "opt_state": st.opt_state})
            if best:
                state["best_params"] = st.best_params
            if writer:
                _save_checkpoint(ckdir, state, {"fingerprint": fp, "epoch": epoch + 1, "step": st.step,
                                                "history": to_jsonable(st.history)})
        if history_path is not None and writer:
            atomic_write_json(history_path, result().to_dict())
    if history_path is not None and not st.history and writer:
        atomic_write_json(history_path, result().to_dict())
    st.params = jax.device_get(st.params)
    return result()


def _history_entry(d: _Data, cfg: TrainConfig, st: _State, means: dict, sched, ekey, epoch: int, t0: float) -> dict:
    """The history record of one epoch: training means, the evaluation, the schedules and the wall time."""
    entry = {"epoch": epoch + 1, "step": st.step, "loss": means.get("loss"), "train_accuracy": means.get("accuracy")}
    params = jax.device_get(st.params) if _multi_process() else st.params
    entry.update(_evaluate(d, cfg, params, ekey))
    entry["lr"] = None if sched is None else float(sched(max(st.step - 1, 0)))
    entry.update({extra: means[extra] for extra in ("tv", "lip", "kl", "robust_loss") if extra in means})
    if cfg.certified:
        scale, kappa, beta = _schedules(cfg, max(st.step - 1, 0), np)
        entry.update(train_certified=means.get("certified"), train_eps=float(cfg.attack.eps * scale),
                     kappa=float(kappa), beta=float(beta) if cfg.recipe == "crown_ibp" else None)
    entry["seconds"] = time.perf_counter() - t0
    return entry


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
