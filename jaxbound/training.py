"""Training classifiers in Flax + optax: standard, PGD, TRADES, gradient regularisation, soft labels.

One entry point, :func:`train`, runs one jitted training step per recipe
(recipe settings are static) over shuffled mini-batches:

* ``"standard"``: empirical risk, the mean cross-entropy ``E[l(x, y)]``.
* ``"pgd"``: adversarial training of Madry et al. (Ding et al. 2019 §3.2,
  App. B.1): minimise ``E[l(x', y)]`` where ``x'`` is a PGD attack in the
  ``norm`` ball of radius ``eps`` (random start, ``attack_steps`` steps of
  ``attack_step_size`` along the steepest-ascent direction, projection onto
  the ball and the ``[0, 1]`` box; the last iterate is used). The attack
  kernels (random start, ascent direction, projection) are those of
  :mod:`jaxbound.attacks`.
* ``"trades"``: TRADES (Zhang et al. 2019; Zhang et al. 2020 App. B.1):
  ``E[l(x, y) + beta * KL(p(x) || p(x'))]`` where ``x'`` maximises the KL
  divergence by PGD in the ``eps`` ball, started at ``x + 0.001 N(0, I)``.
* ``"gradient_reg"``: input-gradient regularisation of Finlay et al. (2019,
  eqs. 2.6 and 2.9),
  ``E[l(x)] + tv_weight * E[||grad_x l(x)||_*] + lip_weight * max ||grad_x l(x)||_*``,
  the mean over the batch being the total-variation term (eq. 2.8) and the
  maximum over the batch the Lipschitz term, with ``||.||_*`` the dual of the
  attack ``norm`` (l2 -> l2, linf -> l1). ``gradient_mode="exact"``
  differentiates the input gradient again (double backpropagation);
  ``"fd"`` uses Finlay et al.'s finite difference (§2, after eq. 2.9)
  ``||grad_x l(x)||_* ~ (l(x + h d) - l(x)) / h`` with ``d`` the unit attack
  direction (``d = g / ||g||_2`` for l2, ``sign(g)`` for linf,
  eqs. 3.2 / 3.4; ``g . d = ||g||_*``) computed from the current gradient
  and held fixed, and ``h = fd_step`` (1e-3 in the paper).
* ``"soft_labels"``: cross-entropy against target probabilities (Bhagoji et
  al. 2021, §4.3; build them with
  :func:`jaxbound.bounds.clipped_soft_labels`),
  ``E[-sum_k t_k log p_k(x')]``, with ``x' = x`` when ``eps`` is ``None`` or
  0 and otherwise a PGD attack maximising that same soft cross-entropy
  (soft-label adversarial training).

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
gives one device per core.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbound import _checks, models
from jaxbound import attacks as _attacks
from jaxbound._io import atomic_write_json, fingerprint, to_jsonable

__all__ = [
    "RECIPES",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainResult",
    "train",
    "loss_gradient_norm",
]

RECIPES = ("standard", "pgd", "trades", "gradient_reg", "soft_labels")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "piecewise", "cosine")
_GRADIENT_MODES = ("exact", "fd")
_BOUNDS = (0.0, 1.0)
_EVAL_CHUNK = 500


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
        ``grad_norm_mean`` / ``grad_norm_median`` / ``grad_norm_max`` (dual norm
        of the input gradient of the cross-entropy on the evaluation set: total
        variation and Lipschitz estimate), ``robust_accuracy`` (PGD at
        ``eval_eps``, or ``None``), ``eval_split``, ``lr`` and ``seconds``
        (wall time of the epoch); ``gradient_reg`` adds ``tv`` and ``lip``
        (batch means of the two regularisers).
      steps: number of optimiser steps taken.
      config: the settings of the run (JSON types).
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
# Losses and attack kernels (jittable; x [n, ...], labels or targets per row)
# ---------------------------------------------------------------------------


def _ce(logits, y):
    """Per-example cross-entropy ``[n]`` at integer labels ``y [n]``."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=1)[:, 0]


def _soft_ce(logits, t):
    """Per-example cross-entropy ``-sum_k t_k log p_k`` against targets ``t [n, k]``."""
    return -jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _kl(logits_p, logits_q):
    """Per-example ``KL(p || q)`` from logits."""
    lp = jax.nn.log_softmax(logits_p, axis=-1)
    lq = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def _dual_norms(g, norm: str):
    """Per-example dual norm of ``g [n, ...]`` for the attack ``norm``."""
    flat = g.reshape(g.shape[0], -1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    if norm == "linf":
        return jnp.sum(jnp.abs(flat), axis=1)
    return jnp.max(jnp.abs(flat), axis=1)  # l1 -> linf


def _unit_direction(g, norm: str):
    """Unit-``norm`` direction ``d`` with ``g . d = ||g||_*`` (Finlay et al. eqs. 3.2, 3.4)."""
    if norm in ("linf", "l2"):
        return _attacks._ascent_direction(g, g, norm, None, 1.0)  # sign(g) / g / ||g||_2, no box
    # l1: all mass on one largest coordinate.
    flat = g.reshape(g.shape[0], -1)
    i = jnp.argmax(jnp.abs(flat), axis=1)
    onehot = jax.nn.one_hot(i, flat.shape[1], dtype=flat.dtype)
    return (onehot * jnp.sign(flat)).reshape(g.shape)


def _input_grad(f, x, y):
    """``grad_x`` of the summed cross-entropy (per-example gradients) and the losses."""

    def total(z):
        v = _ce(f(z), y)
        return jnp.sum(v), v

    return jax.grad(total, has_aux=True)(x)


def _pgd_train(f, x, objective, key, *, eps, step_size, steps, norm, start):
    """PGD maximising ``objective(logits) [n]`` in the ``norm`` ball around ``x``; returns the last iterate.

    ``start="uniform"``: uniform random start in the ball (Madry et al.);
    ``"gaussian"``: ``x + 0.001 N(0, I)`` (TRADES). Every iterate is
    projected onto the ball and clipped to the ``[0, 1]`` box.
    """
    n = x.shape[0]
    eps_v = jnp.full((n,), eps, x.dtype)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    if start == "uniform":
        xa = _attacks._to_box(x, _attacks._random_start(keys, x, eps_v, norm), eps_v, norm, _BOUNDS)
    else:
        noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
        xa = _attacks._to_box(x, 0.001 * noise, eps_v, norm, _BOUNDS)

    def body(_, xa):
        g = jax.grad(lambda z: jnp.sum(objective(f(z))))(xa)
        d = _attacks._ascent_direction(g, xa, norm, _BOUNDS, 0.05)
        return _attacks._to_box(x, xa + step_size * d - x, eps_v, norm, _BOUNDS)

    xa = lax.fori_loop(0, steps, body, xa)
    return lax.stop_gradient(xa)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    recipe: str
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: Any
    eps: float | None
    norm: str
    attack_steps: int
    attack_step_size: float | None
    beta: float
    tv_weight: float
    lip_weight: float
    gradient_mode: str
    fd_step: float
    eval_eps: float | None
    eval_steps: int
    eps_warmup: int = 0

    @property
    def step_size(self) -> float:
        if self.attack_step_size is not None:
            return self.attack_step_size
        return 2.5 * (self.eps or 0.0) / self.attack_steps

    @property
    def adversarial(self) -> bool:
        return self.recipe in ("pgd", "trades") or (self.recipe == "soft_labels" and bool(self.eps))


def _make_step(apply: Callable, tx: optax.GradientTransformation, s: _Settings) -> Callable:
    """The training step ``(params, opt_state, x, t, key, scale) -> (params, opt_state, metrics)`` (not jitted).

    ``scale`` in ``(0, 1]`` multiplies the attack budget and step length (the ``eps_warmup`` ramp).

    ``t`` holds integer labels ``[b]``, or target probabilities ``[b, k]`` for
    ``soft_labels``. ``metrics`` is a dict of scalars.
    """
    recipe, norm = s.recipe, s.norm

    def step(params, opt_state, x, t, key, scale=1.0):
        stopped = lax.stop_gradient(params)
        eps_t = s.eps * scale if s.eps is not None else None
        step_t = s.step_size * scale

        def f0(z):
            return apply(stopped, z)

        # 1) Inputs the objective is evaluated at (no gradient to the parameters).
        if recipe == "pgd":
            xin = _pgd_train(f0, x, lambda lg: _ce(lg, t), key, eps=eps_t, step_size=step_t,
                             steps=s.attack_steps, norm=norm, start="uniform")
        elif recipe == "soft_labels" and s.adversarial:
            xin = _pgd_train(f0, x, lambda lg: _soft_ce(lg, t), key, eps=eps_t, step_size=step_t,
                             steps=s.attack_steps, norm=norm, start="uniform")
        elif recipe == "trades":
            p_clean = lax.stop_gradient(f0(x))
            xin = _pgd_train(f0, x, lambda lg: _kl(p_clean, lg), key, eps=eps_t, step_size=step_t,
                             steps=s.attack_steps, norm=norm, start="gaussian")
        else:
            xin = x
        if recipe == "gradient_reg" and s.gradient_mode == "fd":
            g0, _ = _input_grad(f0, x, t)
            direction = lax.stop_gradient(_unit_direction(g0, norm))

        # 2) The objective and its parameter gradient.
        def objective(p):
            def f(z):
                return apply(p, z)

            aux = {}
            if recipe in ("standard", "pgd"):
                logits = f(xin)
                loss = jnp.mean(_ce(logits, t))
                correct = jnp.argmax(logits, -1) == t
            elif recipe == "soft_labels":
                logits = f(xin)
                loss = jnp.mean(_soft_ce(logits, t))
                correct = jnp.argmax(logits, -1) == jnp.argmax(t, -1)
            elif recipe == "trades":
                logits = f(x)
                logits_adv = f(xin)
                kl = _kl(logits, logits_adv)
                loss = jnp.mean(_ce(logits, t)) + s.beta * jnp.mean(kl)
                correct = jnp.argmax(logits, -1) == t
                aux["kl"] = jnp.mean(kl)
            else:  # gradient_reg, Finlay et al. eqs. 2.6 / 2.9
                if s.gradient_mode == "exact":
                    g, v = _input_grad(f, x, t)  # differentiated again: double backpropagation
                    gn = _dual_norms(g, norm)
                    logits = None
                else:
                    logits = f(x)
                    v = _ce(logits, t)
                    gn = (_ce(f(x + s.fd_step * direction), t) - v) / s.fd_step
                tv = jnp.mean(gn)
                lip = jnp.max(gn)
                loss = jnp.mean(v) + s.tv_weight * tv + s.lip_weight * lip
                if logits is None:
                    logits = f(x)
                correct = jnp.argmax(logits, -1) == t
                aux["tv"] = tv
                aux["lip"] = lip
            aux["accuracy"] = jnp.mean(correct.astype(jnp.float32))
            return loss, aux

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        aux["loss"] = loss
        return params, opt_state, aux

    return step


def _make_eval(apply: Callable, norm: str, eps: float | None, steps: int) -> Callable:
    """Jittable evaluation of one chunk: correct, robust (PGD), cross-entropy and dual gradient norms."""

    def evaluate(params, x, y, key):
        def f(z):
            return apply(params, z)

        g, v = _input_grad(f, x, y)
        logits = f(x)
        correct = jnp.argmax(logits, -1) == y
        gn = _dual_norms(g, norm)
        if not eps:
            robust = correct
        else:  # the attacks module's PGD, run traced inside this jitted evaluation
            res = _attacks.pgd(f, x, y, key=key, eps=eps, norm=norm, steps=steps)
            robust = correct & ~res.success
        return correct, robust, v, gn

    return evaluate


# ---------------------------------------------------------------------------
# Validation
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


def _optional_eps(value, name):
    if value is None:
        return None
    return _checks.check_scalar(value, name, low=0.0)


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


def _make_optimizer(s: _Settings, total: int):
    sched = _make_schedule(s.schedule, s.learning_rate, total)
    if s.optimizer == "sgd":
        opt = optax.sgd(sched, momentum=s.momentum or None)
    elif s.optimizer == "adam":
        opt = optax.adam(sched)
    else:
        return optax.adamw(sched, weight_decay=s.weight_decay), sched
    if s.weight_decay:
        # Coupled L2 (PyTorch / TensorFlow "weight decay" for SGD and Adam).
        opt = optax.chain(optax.add_decayed_weights(s.weight_decay), opt)
    return opt, sched


# ---------------------------------------------------------------------------
# Checkpoints (Orbax)
# ---------------------------------------------------------------------------


def _ckpt_meta(path: Path) -> dict | None:
    f = path / "meta.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text())


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
    bits = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return np.random.default_rng([int(b) for b in bits.ravel()]).permutation(n)


_JIT_CACHE: dict = {}
_JIT_CACHE_SIZE = 16


def _cached(key: tuple, build: Callable) -> Callable:
    """Reuse jitted functions across :func:`train` calls with the same model and settings.

    Keys hold the Flax module (hashed by its attributes); an unhashable one
    (e.g. list attributes) simply builds a fresh function.
    """
    try:
        hash(key)
    except Exception:  # noqa: BLE001 - unhashable module attributes
        return build()
    fn = _JIT_CACHE.get(key)
    if fn is None:
        if len(_JIT_CACHE) >= _JIT_CACHE_SIZE:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        fn = _JIT_CACHE[key] = build()
    return fn


def _padded_chunks(n: int, chunk: int):
    for lo in range(0, n, chunk):
        yield lo, min(n, lo + chunk)


def train(
    key: Any,
    model: Any,
    train_data: Any,
    *,
    recipe: str = "standard",
    epochs: int = 1,
    batch_size: int = 128,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: Any = "constant",
    eps: float | None = None,
    norm: Any = "linf",
    attack_steps: int = 10,
    attack_step_size: float | None = None,
    eps_warmup: int = 0,
    beta: float = 6.0,
    tv_weight: float = 0.0,
    lip_weight: float = 0.0,
    gradient_mode: str = "exact",
    fd_step: float = 1e-3,
    soft_labels: Any = None,
    eval_data: Any = None,
    eval_eps: float | None = None,
    eval_steps: int = 20,
    checkpoint_dir: Any = None,
    history_path: Any = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with one of the robust-training recipes.

    See the module docstring for the objectives (Madry et al. PGD training,
    TRADES, Finlay et al. eqs. 2.6/2.9, Bhagoji et al. §4.3 soft labels).
    Each epoch visits ``n // batch_size`` batches of a fresh permutation (the
    remainder of the permutation is dropped), then evaluates on
    ``eval_data`` (or, without it, on the training data: ``eval_split`` in
    the history says which).

    Args:
      key: ``jax.random`` key; the whole run is a deterministic function of it.
      model: a Flax module, or a registered name (:func:`jaxbound.models.create`
        with ``num_classes`` from the data).
      train_data: :class:`jaxbound.data.Dataset` or ``(x [n, H, W, C], y [n])``,
        pixels in ``[0, 1]``.
      recipe: ``"standard" | "pgd" | "trades" | "gradient_reg" | "soft_labels"``.
      epochs: passes over the data (>= 0).
      batch_size: examples per step (1 <= batch_size <= n).
      optimizer: ``"adam"``, ``"adamw"`` (decoupled decay) or ``"sgd"`` (with ``momentum``).
      learning_rate: base learning rate (> 0).
      momentum: SGD momentum in ``[0, 1)``.
      weight_decay: L2 weight decay (>= 0): added to the gradient for
        ``adam``/``sgd`` (coupled, as in PyTorch), decoupled for ``adamw``.
      schedule: ``"constant"``, ``"piecewise"`` (x0.1 at 50 % and again at 75 % of
        the steps: Ding et al.'s WRN schedule), ``"cosine"``, or an optax
        schedule ``step -> lr``.
      eps: training budget (>= 0); required by ``pgd`` and ``trades``; for
        ``soft_labels`` a positive value turns on adversarial training.
      norm: attack norm ``"linf" | "l2" | "l1"``; gradient norms use its dual.
      attack_steps: PGD steps of the training attack (>= 1).
      attack_step_size: PGD step length (default ``2.5 * eps / attack_steps``).
      eps_warmup: optimiser steps over which the training budget (and the
        attack step length) ramps linearly from ``eps / eps_warmup`` up to
        ``eps`` (the epsilon schedule of Wong & Kolter 2018, used by Ding et
        al. 2019, App. B.2); ``0`` trains at ``eps`` from the first step.
        PGD training from scratch at a large budget (MNIST at 0.3) can sit
        at the chance-level loss ``ln K`` for a long time without it.
      beta: TRADES trade-off (>= 0).
      tv_weight: ``gradient_reg`` total-variation weight (Finlay's epsilon, >= 0).
      lip_weight: ``gradient_reg`` Lipschitz weight (Finlay's lambda, >= 0).
      gradient_mode: ``"exact"`` (double backpropagation) or ``"fd"`` (finite difference).
      fd_step: finite-difference step ``h`` (> 0; Finlay et al. use 1e-3).
      soft_labels: ``[n, k]`` target probabilities aligned with ``train_data``
        (recipe ``soft_labels`` only).
      eval_data: held-out data evaluated after every epoch.
      eval_eps: PGD budget for the robust accuracy in the history (default:
        ``eps``; ``None`` without ``eps``: no robust evaluation; 0: robust
        accuracy equals clean accuracy, no attack is run).
      eval_steps: PGD steps of that evaluation (step ``2.5 * eval_eps / eval_steps``).
      checkpoint_dir: folder for per-epoch Orbax checkpoints; an existing
        checkpoint of the same run is resumed, one of another run raises.
      history_path: JSON file rewritten after every epoch with :meth:`TrainResult.to_dict`.
      progress: show a tqdm bar per epoch.
      devices: devices the batch is split over (default all local devices; the
        largest prefix whose count divides ``batch_size`` is used).

    Returns:
      :class:`TrainResult`.

    Raises:
      ValueError: unknown recipe, model, optimizer, schedule or norm; negative
        ``eps``, ``beta`` or weights; ``batch_size < 1`` or larger than the data;
        images outside ``[0, 1]``; labels out of range; soft labels that are not
        probability rows; a checkpoint of a different run.
    """
    _checks.check_key(key)
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise ValueError(f"recipe: must be one of {', '.join(map(repr, RECIPES))}, got {recipe!r}")
    epochs = _checks.check_int(epochs, "epochs", low=0)
    batch_size = _checks.check_int(batch_size, "batch_size", low=1)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: must be one of {', '.join(map(repr, OPTIMIZERS))}, got {optimizer!r}")
    learning_rate = _checks.check_scalar(learning_rate, "learning_rate", low=0.0, low_inclusive=False)
    momentum = _checks.check_scalar(momentum, "momentum", low=0.0, high=1.0, high_inclusive=False)
    weight_decay = _checks.check_scalar(weight_decay, "weight_decay", low=0.0)
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"schedule: must be one of {', '.join(map(repr, SCHEDULES))} or a callable, got {schedule!r}")
    eps = _optional_eps(eps, "eps")
    norm = _attacks._check_attack_norm(norm)
    attack_steps = _checks.check_int(attack_steps, "attack_steps", low=1)
    eps_warmup = _checks.check_int(eps_warmup, "eps_warmup", low=0)
    if attack_step_size is not None:
        attack_step_size = _checks.check_scalar(attack_step_size, "attack_step_size", low=0.0, low_inclusive=False)
    beta = _checks.check_scalar(beta, "beta", low=0.0)
    tv_weight = _checks.check_scalar(tv_weight, "tv_weight", low=0.0)
    lip_weight = _checks.check_scalar(lip_weight, "lip_weight", low=0.0)
    if gradient_mode not in _GRADIENT_MODES:
        raise ValueError(f"gradient_mode: must be 'exact' or 'fd', got {gradient_mode!r}")
    fd_step = _checks.check_scalar(fd_step, "fd_step", low=0.0, low_inclusive=False)
    eval_eps = _optional_eps(eval_eps, "eval_eps")
    eval_steps = _checks.check_int(eval_steps, "eval_steps", low=1)
    if recipe in ("pgd", "trades") and eps is None:
        raise ValueError(f"eps: recipe {recipe!r} needs a training budget eps >= 0")
    if not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress: expected a bool, got {progress!r}")

    x, y, k_data = _split_data(train_data, "train_data")
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size: {batch_size} exceeds the {n} training examples")
    num_classes = k_data or int(y.max()) + 1
    if soft_labels is not None:
        if recipe != "soft_labels":
            raise ValueError(f"soft_labels: only used by recipe 'soft_labels', got recipe {recipe!r}")
        t = np.asarray(soft_labels, dtype=np.float32)
        if t.ndim != 2 or t.shape[0] != n:
            raise ValueError(f"soft_labels: expected shape [{n}, num_classes], got {t.shape}")
        _checks.check_finite(t, "soft_labels")
        if t.min() < 0 or np.abs(t.sum(axis=1) - 1).max() > 1e-4:
            raise ValueError("soft_labels: rows must be non-negative and sum to 1")
        num_classes = max(num_classes, t.shape[1]) if not k_data else num_classes
    elif recipe == "soft_labels":
        raise ValueError("soft_labels: recipe 'soft_labels' needs target probabilities [n, num_classes]")
    num_classes = max(num_classes, 2)
    model = _check_model(model, num_classes)
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
    targets = y
    if recipe == "soft_labels":
        if t.shape[1] != k_model:
            raise ValueError(f"soft_labels: {t.shape[1]} columns for a model with {k_model} outputs")
        targets = t
    ev = _split_data(eval_data, "eval_data")
    if ev is not None and int(ev[1].max(initial=0)) >= k_model:
        raise ValueError(f"eval_data: label {int(ev[1].max())} is out of range for {k_model} outputs")
    if eval_eps is None and eps:
        eval_eps = eps

    settings = _Settings(recipe, epochs, batch_size, optimizer, learning_rate, momentum, weight_decay,
                         schedule if not callable(schedule) else repr(schedule), eps, norm, attack_steps,
                         attack_step_size, beta, tv_weight, lip_weight, gradient_mode, fd_step, eval_eps,
                         eval_steps, eps_warmup=eps_warmup)
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * epochs
    tx, sched = _make_optimizer(dataclasses.replace(settings, schedule=schedule), total_steps)
    config = dict(dataclasses.asdict(settings), model=repr(model), n=n, input_shape=list(x.shape[1:]),
                  num_classes=k_model, steps_per_epoch=steps_per_epoch,
                  eval_n=None if ev is None else int(ev[0].shape[0]))

    # Devices and shardings.
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices: empty")
    ndev = max(g for g in range(1, len(devs) + 1) if batch_size % g == 0)
    mesh = Mesh(np.array(devs[:ndev], dtype=object), ("batch",))
    data_sh = NamedSharding(mesh, P("batch"))
    repl = NamedSharding(mesh, P())
    config["devices"] = ndev

    k_init, k_perm, k_step, k_eval = (jax.random.fold_in(key, i) for i in range(4))
    params = models.init_params(model, k_init, x.shape[1:])
    opt_state = tx.init(params)
    step_count, epoch0, history = 0, 0, []

    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    fp = None
    if ckdir is not None:
        key_data = np.asarray(jax.random.key_data(key)) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) \
            else np.asarray(key)
        fp = fingerprint(repr(sorted((k, v) for k, v in config.items() if k != "devices")), key_data, x, y,
                         targets if recipe == "soft_labels" else 0,
                         *(ev[:2] if ev is not None else (0,)))
        meta = _ckpt_meta(ckdir)
        if meta is not None:
            if meta.get("fingerprint") != fp:
                raise ValueError(f"checkpoint_dir: {ckdir} holds a checkpoint of a different run "
                                 "(other data, model, key or settings); use another folder or remove it")
            state = _restore_checkpoint(ckdir, meta, {"params": params, "opt_state": opt_state})
            params = jax.tree.map(jnp.asarray, state["params"])
            opt_state = jax.tree.map(jnp.asarray, state["opt_state"])
            step_count, epoch0, history = int(meta["step"]), int(meta["epoch"]), list(meta["history"])

    dev_key = tuple(devs[:ndev])
    sched_steps = None if schedule == "constant" else total_steps  # the optimiser depends on it otherwise
    step_fn = _cached(("step", model, dataclasses.replace(settings, schedule=schedule, epochs=0), sched_steps,
                       dev_key),
                      lambda: jax.jit(_make_step(model.apply, tx, settings),
                                      in_shardings=(repl, repl, data_sh, data_sh, repl, repl),
                                      out_shardings=(repl, repl, repl)))
    eval_fn = _cached(("eval", model, norm, eval_eps, eval_steps),
                      lambda: jax.jit(_make_eval(model.apply, norm, eval_eps, eval_steps)))
    params = jax.device_put(params, repl)
    opt_state = jax.device_put(opt_state, repl)

    ex, ey, split = (ev[0], ev[1], "eval") if ev is not None else (x, y, "train")
    chunk = -(-min(_EVAL_CHUNK, ex.shape[0]) // ndev) * ndev

    from tqdm.auto import tqdm

    def result():
        return TrainResult(model, params, history, step_count, to_jsonable(config), {})

    for epoch in range(epoch0, epochs):
        t0 = time.perf_counter()
        perm = _permutation(jax.random.fold_in(k_perm, epoch), n)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"{recipe} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        pending = []
        for i in bar:
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = jax.device_put(x[idx], data_sh)
            tb = jax.device_put(targets[idx], data_sh)
            scale = min(1.0, (step_count + 1) / eps_warmup) if eps_warmup else 1.0
            params, opt_state, m = step_fn(params, opt_state, xb, tb, jax.random.fold_in(k_step, step_count),
                                           jnp.asarray(scale, jnp.float32))
            step_count += 1
            pending.append(m)
            if progress and (i % 10 == 9 or i == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{float(m['loss']):.4f}")
        bar.close()
        for m in jax.device_get(pending):
            for name, v in m.items():
                sums[name] = sums.get(name, 0.0) + float(v)
        means = {name: v / max(1, len(pending)) for name, v in sums.items()}

        # Evaluation.
        ekey = jax.random.fold_in(k_eval, epoch)
        cor, rob, lv, gn = [], [], [], []
        for lo, hi in _padded_chunks(ex.shape[0], chunk):
            xb, yb = _attacks._pad_rows(ex[lo:hi], chunk), _attacks._pad_rows(ey[lo:hi], chunk)
            out = jax.device_get(eval_fn(params, xb, yb, jax.random.fold_in(ekey, lo)))
            for acc, o in zip((cor, rob, lv, gn), out):
                acc.append(np.asarray(o)[: hi - lo])
        cor, rob, lv, gn = (np.concatenate(a) for a in (cor, rob, lv, gn))
        entry = {
            "epoch": epoch + 1,
            "step": step_count,
            "loss": means.get("loss"),
            "train_accuracy": means.get("accuracy"),
            "clean_accuracy": float(cor.mean()),
            "robust_accuracy": float(rob.mean()) if eval_eps is not None else None,
            "eval_eps": eval_eps,
            "eval_loss": float(lv.mean()),
            "grad_norm_mean": float(gn.mean()),
            "grad_norm_median": float(np.median(gn)),
            "grad_norm_max": float(gn.max()),
            "eval_split": split,
            "lr": float(sched(step_count - 1)) if step_count else float(sched(0)),
        }
        for extra in ("tv", "lip", "kl"):
            if extra in means:
                entry[extra] = means[extra]
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if ckdir is not None:
            _save_checkpoint(ckdir, {"params": params, "opt_state": opt_state},
                             {"fingerprint": fp, "epoch": epoch + 1, "step": step_count,
                              "history": to_jsonable(history)})
        if history_path is not None:
            atomic_write_json(history_path, result().to_dict())
    if history_path is not None and not history:
        atomic_write_json(history_path, result().to_dict())
    params = jax.device_get(params)
    return result()


# ---------------------------------------------------------------------------
# Gradient norms (exact and finite difference)
# ---------------------------------------------------------------------------


def loss_gradient_norm(
    logits_fn: Callable,
    x: Any,
    y: Any,
    *,
    norm: Any = "l2",
    mode: str = "exact",
    fd_step: float = 1e-3,
) -> np.ndarray:
    """Per-example ``||grad_x l(x, y)||_*``, exact or by Finlay et al.'s finite difference.

    ``mode="exact"``: the dual norm of the input gradient of the
    cross-entropy. ``mode="fd"``: ``(l(x + h d) - l(x)) / h`` with ``d`` the
    unit attack direction of the exact gradient (``g / ||g||_2`` for l2,
    ``sign(g)`` for linf; Finlay et al. 2019, §2 after eq. 2.9, h = 1e-3),
    which equals the dual norm to first order in ``h``; the step is not clipped
    to the pixel box. The regulariser of recipe ``gradient_reg`` uses exactly
    these quantities. In float32 the difference loses accuracy where the
    gradient is tiny (confidently classified points).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, k]``.
      x: ``[n, ...]`` inputs.
      y: ``[n]`` labels.
      norm: attack norm ``"linf" | "l2" | "l1"`` (the gradient is measured in its dual).
      mode: ``"exact"`` or ``"fd"``.
      fd_step: ``h`` (> 0).

    Returns:
      ``[n]`` float64 NumPy array.
    """
    _attacks._check_logits_fn(logits_fn)
    norm = _attacks._check_attack_norm(norm)
    if mode not in _GRADIENT_MODES:
        raise ValueError(f"mode: must be 'exact' or 'fd', got {mode!r}")
    fd_step = _checks.check_scalar(fd_step, "fd_step", low=0.0, low_inclusive=False)
    x = _attacks._check_x(x, None)
    k = _attacks._num_classes(logits_fn, x)
    y = _attacks._check_y(y, x.shape[0], k)
    if x.shape[0] == 0:
        return np.zeros(0, np.float64)

    @jax.jit
    def run(x, y):
        g, v = _input_grad(logits_fn, x, y)
        if mode == "exact":
            return _dual_norms(g, norm)
        d = _unit_direction(g, norm)
        return (_ce(logits_fn(x + fd_step * d), y) - v) / fd_step

    return np.asarray(run(jnp.asarray(x), jnp.asarray(y)), np.float64)
