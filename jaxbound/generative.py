"""Intrinsic robustness of distributions given by conditional generative models (Zhang et al. 2020).

A *conditional generator* is any callable ``g(z [n, d], y [n]) -> x [n, ...]``
mapping standard Gaussian latents and integer class labels to inputs of the
classifier (pixels in ``[0, 1]`` for images). The distribution it models is
``mu = sum_i p_i (g_i)_* N(0, I_d)`` with ``g_i = g(., i)``.

* :class:`ACGAN`, :func:`train_acgan`, :func:`load_acgan`, :func:`init_acgan`:
  the MNIST ACGAN of the paper (§5.1) in Flax, trained with jitted
  discriminator and generator steps, resumable checkpoints and a progress bar;
  ``ACGAN(z, y)`` returns images in ``[0, 1]``, ``ACGAN.raw`` the ``[-1, 1]``
  tanh output.
* :func:`sample_dataset`: keyed labelled datasets drawn from ``g`` with class
  priors ``p_i`` (§5.3).
* :func:`local_lipschitz`: Algorithm 1 (the ``(1 - delta)``-percentile over
  latents of the largest ratio ``||g(z') - g(z)||_2 / ||z' - z||_2`` over
  neighbours ``z'`` drawn uniformly in the latent ``r``-ball), jitted and
  vmapped over latents and neighbours, plus a stronger estimator that
  maximises the ratio by projected gradient ascent inside the ball, started
  from the best sampled neighbour (never below the sampling estimate).
* :func:`adv_risk_lower_bound` (Theorem 4.3) and
  :func:`intrinsic_robustness_bound` (Theorem 4.4, families ``F_alpha`` and
  the per-class ``F~_alpha``), vectorised over ``eps`` and ``alpha``;
  ``K = 1`` is the unconditional case.
* :func:`in_distribution_attack`: adversarial examples on the generator's
  range (eqs. 5.1/5.2): ``z`` initialised by inverting ``g`` at ``x``, then
  Adam on ``||g(z, y) - x||_2^2 + c * max(Z_y - max_{j != y} Z_j, 0)`` with a
  binary search on ``c``; a point counts as broken only when an iterate
  ``g(z, y)`` is misclassified *and* within ``eps`` of ``x``. Returns the
  in-distribution robust accuracy.

Conventions, and where the authors' code differs: Lipschitz ratios are
measured in the space ``g`` returns, which for :class:`ACGAN` is the
classifier's ``[0, 1]`` pixel space; the authors' code measures on the
``[-1, 1]`` output (pass ``gan.raw``: ratios double) and draws neighbour
directions from normalised ``U[0, 1)^d`` noise, i.e. inside one orthant cone
(``directions="orthant"`` reproduces it); the default ``directions="ball"``
draws them uniformly from the ball. Every random function takes the PRNG
key as the keyword-only ``key``; block loops run through the library's one
block engine.

References:
  Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of image
  distributions using conditional generative models." AISTATS 2020,
  arXiv:2003.00378.
  Odena, Olah, Shlens. "Conditional image synthesis with auxiliary classifier
  GANs." ICML 2017, arXiv:1610.09585.
  Carlini, Wagner. "Towards evaluating the robustness of neural networks."
  IEEE S&P 2017, arXiv:1608.04644.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from scipy.stats import norm as _norm

from jaxbound import _checks, _engine
from jaxbound import attacks as _attacks
from jaxbound._acgan import (
    ACGAN,
    ACGANDiscriminator,
    ACGANGenerator,
    ACGANTrainResult,
    acgan_from_params,
    checkpoint_info,
    conv4x4_s2,
    deconv4x4_s2,
    init_acgan,
    load_acgan,
    train_acgan,
)
from jaxbound._io import to_jsonable

__all__ = [
    "ACGAN",
    "ACGANGenerator",
    "ACGANDiscriminator",
    "ACGANTrainResult",
    "train_acgan",
    "load_acgan",
    "init_acgan",
    "acgan_from_params",
    "checkpoint_info",
    "conv4x4_s2",
    "deconv4x4_s2",
    "GeneratedDataset",
    "sample_dataset",
    "LocalLipschitz",
    "local_lipschitz",
    "adv_risk_lower_bound",
    "IntrinsicRobustnessBound",
    "intrinsic_robustness_bound",
    "InDistributionResult",
    "in_distribution_attack",
]

_TINY = 1e-30
_DIRECTIONS = ("ball", "orthant")


# ---------------------------------------------------------------------------
# Generator helpers
# ---------------------------------------------------------------------------


def _check_generator(g: Any, latent_dim: Any, name: str = "g") -> int:
    """Validate ``g`` and return the latent dimension (argument or ``g.latent_dim``)."""
    if not callable(g):
        raise ValueError(f"{name}: expected a callable g(z, y) -> x, got {type(g).__name__}")
    if latent_dim is None:
        latent_dim = getattr(g, "latent_dim", None)
        if latent_dim is None:
            raise ValueError("latent_dim: needed when g has no latent_dim attribute")
    d = _checks.check_int(latent_dim, "latent_dim", low=1)
    try:
        out = jax.eval_shape(g, jax.ShapeDtypeStruct((2, d), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32))
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument name
        raise ValueError(f"{name}: failed on z shaped [2, {d}] and labels [2]: {exc}") from exc
    if not hasattr(out, "shape") or len(out.shape) < 2 or out.shape[0] != 2:
        raise ValueError(f"{name}: must return a batch shaped [n, ...], got {getattr(out, 'shape', out)}")
    return d


def _num_classes_of(g: Any, num_classes: Any) -> int | None:
    if num_classes is None:
        num_classes = getattr(g, "num_classes", None)
    if num_classes is None:
        return None
    return _checks.check_int(num_classes, "num_classes", low=1)


def _flat(a):
    return a.reshape(a.shape[0], -1)


def _check_priors(p: Any, k: int | None, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of class probabilities, got shape {arr.shape}")
    if k is not None and arr.size != k:
        raise ValueError(f"{name}: has {arr.size} entries for {k} classes")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name}: class probabilities must be finite and >= 0")
    if abs(arr.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name}: class probabilities must sum to 1, got {arr.sum()}")
    return arr


# ---------------------------------------------------------------------------
# Generated datasets
# ---------------------------------------------------------------------------


class GeneratedDataset(NamedTuple):
    """A labelled sample of the generated distribution ``sum_i p_i (g_i)_* N(0, I)``.

    Attributes:
      images: ``[n, ...]`` float32 ``g(z, y)``.
      labels: ``[n]`` int64 classes drawn from ``p``.
      z: ``[n, d]`` float32 latents (``g(z[i], labels[i]) = images[i]``).
      p: ``[K]`` class priors.
    """

    images: np.ndarray
    labels: np.ndarray
    z: np.ndarray
    p: np.ndarray

    def dataset(self, name: str = "generated", split: str = "train"):
        """The images and labels as a :class:`jaxbound.data.Dataset`."""
        from jaxbound.data import Dataset

        return Dataset(self.images, self.labels, name, split, int(self.p.shape[0]))

    def to_dict(self) -> dict:
        """Summary (no pixel data)."""
        counts = np.bincount(self.labels, minlength=self.p.shape[0])
        return {"n": int(self.labels.shape[0]), "shape": list(self.images.shape[1:]),
                "p": to_jsonable(self.p), "class_counts": to_jsonable(counts)}


def _gen_core(z, y, *, g):
    return g(z, y)


def sample_dataset(
    g: Callable,
    *,
    n: int,
    key: Any,
    p: Any = None,
    num_classes: int | None = None,
    latent_dim: int | None = None,
    bounds: Sequence[float] | None = (0.0, 1.0),
    batch_size: int = 1000,
    progress: bool = False,
) -> GeneratedDataset:
    """Draw ``n`` labelled examples ``(g(z, y), y)``, ``y ~ p``, ``z ~ N(0, I_d)`` (Zhang et al. §5.3).

    Example ``i`` depends only on ``(key, i)``, so the sample does not change
    with ``batch_size``, and the first ``m`` examples of a larger draw equal a
    draw of ``m``.

    Args:
      g: conditional generator ``g(z [n, d], y [n]) -> x [n, ...]``.
      n: number of examples (>= 0).
      key: ``jax.random`` key.
      p: ``[K]`` class priors (default uniform over ``num_classes``).
      num_classes: ``K`` (default ``len(p)`` or ``g.num_classes``).
      latent_dim: ``d`` (default ``g.latent_dim``).
      bounds: declared range of the generated inputs; a generator output
        outside it raises (``None``: unchecked).
      batch_size: examples per generator call.
      progress: show a progress bar.

    Returns:
      :class:`GeneratedDataset`.

    References:
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378.
    """
    _checks.check_key(key)
    d = _check_generator(g, latent_dim)
    n = _checks.check_int(n, "n", low=0)
    batch_size = _checks.check_int(batch_size, "batch_size", low=1)
    k = _num_classes_of(g, num_classes)
    if p is None:
        if k is None:
            raise ValueError("num_classes: needed when p is not given and g has no num_classes attribute")
        p = np.full(k, 1.0 / k)
    p = _check_priors(p, num_classes if num_classes is not None else None)
    k = p.shape[0]
    idx = jnp.arange(n, dtype=jnp.uint32)
    kz, ky = jax.random.split(key)
    z = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kz, i), (d,), jnp.float32))(idx))
    logp = jnp.log(jnp.asarray(p, jnp.float32))
    y = np.asarray(jax.vmap(lambda i: jax.random.categorical(jax.random.fold_in(ky, i), logp))(idx)).astype(np.int64)
    parts = []
    if n:
        # Every call gets exactly ``batch_size`` rows (the last block padded), whatever n.
        bs = _engine.block_rows(batch_size, batch_size, n=batch_size)
        _, blocks = _engine.stream(_gen_core, dict(g=g), (z, y.astype(np.int32)), block_size=bs,
                                   progress=progress, desc="sample")
        parts = [np.asarray(b[0]) for b in blocks]
    shape = jax.eval_shape(g, jax.ShapeDtypeStruct((1, d), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32)).shape
    images = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,) + tuple(shape[1:]), np.float32)
    _checks.check_finite(images, "g")
    if bounds is not None:
        _checks.check_bounds(images, "g", bounds)
    return GeneratedDataset(images, y, z, p)


# ---------------------------------------------------------------------------
# Local Lipschitz estimation (Algorithm 1 and a gradient-ascent estimator)
# ---------------------------------------------------------------------------


class LocalLipschitz(NamedTuple):
    """Estimated local Lipschitz constants ``L(r)`` per class (Zhang et al. Condition 4.1, Algorithm 1).

    Attributes:
      L: ``[K, m]`` Algorithm 1: per class, the ``(1 - delta)``-percentile over
        latents of the largest sampled ratio, one column per ``delta``.
      L_grad: ``[K, m]`` the same percentiles of the gradient-ascent estimator
        (``>= L`` entrywise); equal to ``L`` when ``grad_steps == 0``.
      ratios: ``[K, S]`` per latent, the largest sampled ratio.
      ratios_grad: ``[K, S]`` per latent, the largest ratio found by sampling
        and gradient ascent together.
      classes: ``[K]`` the classes ``y``.
      deltas: ``[m]`` the ``delta`` values.
      r: latent radius.
      n_neighbors: neighbours sampled per latent ``N``.
      directions: ``"ball"`` or ``"orthant"``.
      grad_steps: gradient-ascent steps per restart.
      grad_restarts: gradient-ascent restarts per latent.
      seconds: wall time of the estimate.
    """

    L: np.ndarray
    L_grad: np.ndarray
    ratios: np.ndarray
    ratios_grad: np.ndarray
    classes: np.ndarray
    deltas: np.ndarray
    r: float
    n_neighbors: int
    directions: str
    grad_steps: int
    grad_restarts: int
    seconds: float

    def L_max(self, estimator: str = "grad") -> np.ndarray:
        """``[m]`` ``L_max(r) = max_i L_i(r)`` (Theorem 4.4) per ``delta``; ``estimator`` is ``"grad"`` or ``"sample"``."""
        if estimator not in ("grad", "sample"):
            raise ValueError(f"estimator: must be 'grad' or 'sample', got {estimator!r}")
        a = self.L_grad if estimator == "grad" else self.L
        return a.max(axis=0)

    def to_dict(self, *, per_latent: bool = False) -> dict:
        """JSON-ready summary (per-latent ratios on request)."""
        out = {"classes": to_jsonable(self.classes), "deltas": to_jsonable(self.deltas), "r": self.r,
               "n_latents": int(self.ratios.shape[1]), "n_neighbors": self.n_neighbors,
               "directions": self.directions, "grad_steps": self.grad_steps, "grad_restarts": self.grad_restarts,
               "L": to_jsonable(self.L), "L_grad": to_jsonable(self.L_grad),
               "L_max": to_jsonable(self.L_max("sample")), "L_max_grad": to_jsonable(self.L_max("grad")),
               "seconds": self.seconds}
        if per_latent:
            out["ratios"] = to_jsonable(self.ratios)
            out["ratios_grad"] = to_jsonable(self.ratios_grad)
        return out


def _neighbor_offsets(key, m: int, d: int, r: float, directions: str):
    """``m`` offsets ``v [m, d]``: uniform in the r-ball, or the authors' orthant-cone draw."""
    k1, k2 = jax.random.split(key)
    if directions == "ball":
        u = jax.random.normal(k1, (m, d), jnp.float32)
    else:  # the authors' code: normalised U[0, 1)^d noise, all directions in the positive orthant
        u = jax.random.uniform(k1, (m, d), jnp.float32)
    u = u / jnp.maximum(jnp.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    rad = r * jax.random.uniform(k2, (m, 1), jnp.float32, minval=1e-12, maxval=1.0) ** (1.0 / d)
    return u * rad


def _ratio(gz, out, z, z_new):
    """``||g(z') - g(z)|| / ||z' - z||`` with the actually evaluated ``z' - z``."""
    num = jnp.sqrt(jnp.sum((out - gz) ** 2, axis=-1))
    den = jnp.sqrt(jnp.sum((z_new - z) ** 2, axis=-1))
    return num / jnp.maximum(den, _TINY)


def _lip_core(z, keys, y, *, g, r, n_neighbors, chunk, directions, grad_steps, grad_restarts, step_size,
              min_radius):
    """Per-latent largest sampled ratio and gradient-ascent ratio for a block ``z [b, d]``."""
    b, d = z.shape
    gz = _flat(g(z, y))
    n_chunks = -(-n_neighbors // chunk)
    y_rep = jnp.repeat(y, chunk)

    def sample_chunk(c, carry):
        best, best_v = carry
        v = jax.vmap(lambda k: _neighbor_offsets(jax.random.fold_in(k, c), chunk, d, r, directions))(keys)
        zn = z[:, None, :] + v  # [b, chunk, d]
        out = _flat(g(zn.reshape(b * chunk, d), y_rep)).reshape(b, chunk, -1)
        rat = _ratio(gz[:, None, :], out, z[:, None, :], zn)
        valid = (c * chunk + jnp.arange(chunk)) < n_neighbors
        rat = jnp.where(valid[None, :], rat, -jnp.inf)
        j = jnp.argmax(rat, axis=1)
        top = jnp.take_along_axis(rat, j[:, None], axis=1)[:, 0]
        v_top = jnp.take_along_axis(zn - z[:, None, :], j[:, None, None], axis=1)[:, 0]
        take = top > best
        return jnp.where(take, top, best), jnp.where(take[:, None], v_top, best_v)

    init = (jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b, d), jnp.float32))
    best, best_v = lax.fori_loop(0, n_chunks, sample_chunk, init)
    if grad_steps == 0:
        return best, best

    def ratios_at(v):
        zn = z + v
        return _ratio(gz, _flat(g(zn, y)), z, zn)

    def objective(v):
        zn = z + v
        num2 = jnp.sum((_flat(g(zn, y)) - gz) ** 2, axis=-1)
        den2 = jnp.sum((zn - z) ** 2, axis=-1)
        rat = jnp.sqrt(num2) / jnp.sqrt(jnp.maximum(den2, _TINY))
        return jnp.sum(0.5 * jnp.log(num2 + _TINY) - 0.5 * jnp.log(den2 + _TINY)), rat

    vg = jax.value_and_grad(objective, has_aux=True)
    lo_r = min_radius * r

    def project(v):
        nrm = jnp.linalg.norm(v, axis=1, keepdims=True)
        scale = jnp.clip(nrm, lo_r, r) / jnp.maximum(nrm, _TINY)
        return v * scale

    def restart(q, top):
        rk = jax.vmap(lambda k: jax.random.fold_in(k, n_chunks + q))(keys)
        v_rand = jax.vmap(lambda k: _neighbor_offsets(k, 1, d, r, "ball")[0])(rk)
        v = project(jnp.where(q == 0, best_v, v_rand))

        def step(t, carry):
            v, top = carry
            (_, rat), gr = vg(v)
            top = jnp.maximum(top, jnp.where(jnp.isfinite(rat), rat, -jnp.inf))
            gn = gr / jnp.maximum(jnp.linalg.norm(gr, axis=1, keepdims=True), _TINY)
            eta = step_size * r * 0.5 * (1.0 + jnp.cos(jnp.pi * t / grad_steps))
            return project(v + eta * gn), top

        v, top = lax.fori_loop(0, grad_steps, step, (v, top))
        rat = ratios_at(v)
        return jnp.maximum(top, jnp.where(jnp.isfinite(rat), rat, -jnp.inf))

    top = lax.fori_loop(0, grad_restarts, restart, best)
    return best, jnp.maximum(top, best)


def _lip_kernel(z, key_data, y, *, impl, **kw):
    """:func:`_lip_core` on per-latent key data (typed keys rebuilt with ``impl``; ``None``: raw uint32 keys)."""
    keys = key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl)
    return _lip_core(z, keys, y, **kw)


def _quantiles(a: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """``(1 - delta)``-percentiles along the last axis: the smallest value whose empirical CDF is ``>= 1 - delta``."""
    return np.stack([np.quantile(a, 1.0 - dl, axis=-1, method="inverted_cdf") for dl in deltas], axis=-1)


def local_lipschitz(
    g: Callable,
    y: Any,
    *,
    key: Any,
    r: float,
    n_latents: int,
    n_neighbors: int,
    deltas: Any = (0.001,),
    latent_dim: int | None = None,
    directions: str = "ball",
    grad_steps: int = 50,
    grad_restarts: int = 1,
    step_size: float = 0.5,
    min_radius: float = 1e-3,
    latent_batch: int = 16,
    neighbor_chunk: int = 64,
    progress: bool = False,
) -> LocalLipschitz:
    """Local Lipschitz constants ``L_i(r)`` of a conditional generator (Zhang et al. Algorithm 1).

    For each class ``i`` in ``y`` and each of ``S = n_latents`` latents
    ``z ~ N(0, I_d)``, Algorithm 1 samples ``N = n_neighbors`` neighbours ``z'``
    uniformly in the ball ``B(z, r)`` and keeps ``L(z) = max ||g(z', i) -
    g(z, i)||_2 / ||z' - z||_2``; the estimate is the ``(1 - delta)``-percentile
    of ``{L(z)}`` (the smallest sample value whose empirical CDF reaches
    ``1 - delta``). Latents are processed in jitted blocks of ``latent_batch``,
    neighbours in vmapped chunks of ``neighbor_chunk``.

    The gradient estimator then maximises the log-ratio over ``z' in B(z, r)``
    by projected normalised gradient ascent (``grad_steps`` steps of length
    ``step_size * r`` with a cosine decay, projected onto ``min_radius * r <=
    ||z' - z|| <= r``), restart 0 starting from the best sampled neighbour and
    further restarts from random points of the ball. Each latent keeps the
    largest ratio evaluated at any point, so it is never below the sampling
    estimate and, like it, is a lower estimate of the true local constant.

    Randomness of latent ``j`` of class ``i`` depends only on ``(key, i, j)``:
    results do not change with ``latent_batch`` up to floating-point rounding
    (the one-latent-at-a-time loop with ``latent_batch=1`` draws the same
    latents and neighbours).

    Args:
      g: conditional generator ``g(z [n, d], y [n]) -> x [n, ...]``; ratios are
        measured in the space ``g`` returns.
      y: a class label or a 1-D sequence of classes.
      key: ``jax.random`` key.
      r: latent radius (> 0; the paper: 0.5).
      n_latents: ``S`` latents per class (the paper: 1000).
      n_neighbors: ``N`` neighbours per latent (the paper: 2000).
      deltas: one or more ``delta`` in ``[0, 1)`` (the paper: 0.001).
      latent_dim: ``d`` (default ``g.latent_dim``).
      directions: ``"ball"`` (uniform in the ball) or ``"orthant"`` (the
        authors' draw: normalised ``U[0, 1)^d`` directions, a narrow cone).
      grad_steps: gradient-ascent steps per restart (0: sampling only).
      grad_restarts: gradient-ascent restarts per latent (>= 1).
      step_size: initial step length as a fraction of ``r``.
      min_radius: smallest ``||z' - z|| / r`` the ascent may reach (keeps the
        ratio away from the 0/0 limit).
      latent_batch: latents per jitted block.
      neighbor_chunk: neighbours evaluated together per latent (``latent_batch *
        neighbor_chunk`` generator rows per call; on a CPU the rate is flat from
        about 256 rows, and one call on all 2000 of a latent's neighbours is
        slower).
      progress: show a progress bar.

    Returns:
      :class:`LocalLipschitz`.

    References:
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378 (Algorithm 1).
    """
    _checks.check_key(key)
    d = _check_generator(g, latent_dim)
    r = _checks.check_scalar(r, "r", low=0.0, low_inclusive=False)
    n_latents = _checks.check_int(n_latents, "n_latents", low=1)
    n_neighbors = _checks.check_int(n_neighbors, "n_neighbors", low=1)
    dl = np.atleast_1d(np.asarray(deltas, dtype=np.float64))
    if dl.ndim != 1 or dl.size == 0 or not np.all(np.isfinite(dl)) or np.any(dl < 0) or np.any(dl >= 1):
        raise ValueError(f"deltas: each delta must lie in [0, 1), got {deltas!r}")
    if directions not in _DIRECTIONS:
        raise ValueError(f"directions: must be 'ball' or 'orthant', got {directions!r}")
    grad_steps = _checks.check_int(grad_steps, "grad_steps", low=0)
    grad_restarts = _checks.check_int(grad_restarts, "grad_restarts", low=1)
    step_size = _checks.check_scalar(step_size, "step_size", low=0.0, low_inclusive=False)
    min_radius = _checks.check_scalar(min_radius, "min_radius", low=0.0, high=1.0, low_inclusive=False)
    latent_batch = _checks.check_int(latent_batch, "latent_batch", low=1)
    neighbor_chunk = _checks.check_int(neighbor_chunk, "neighbor_chunk", low=1)
    classes = np.atleast_1d(np.asarray(y))
    if classes.ndim != 1 or classes.size == 0 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"y: expected a class label or a non-empty 1-D sequence of integer labels, got {y!r}")
    k = _num_classes_of(g, None)
    _checks.check_labels(classes, "y", num_classes=k)
    chunk = min(neighbor_chunk, n_neighbors)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    static = dict(g=g, r=float(r), n_neighbors=n_neighbors, chunk=chunk, directions=directions,
                  grad_steps=grad_steps, grad_restarts=grad_restarts, step_size=float(step_size),
                  min_radius=float(min_radius), impl=jax.random.key_impl(key) if typed else None)
    t0 = time.perf_counter()
    ratios = np.zeros((classes.size, n_latents), np.float64)
    ratios_g = np.zeros_like(ratios)
    for ci, cls in enumerate(classes):
        kc = jax.random.fold_in(key, int(cls))
        kz, kn = jax.random.split(kc)
        idx = jnp.arange(n_latents, dtype=jnp.uint32)
        z_all = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kz, i), (d,), jnp.float32))(idx))
        keys_all = _engine.key_data(jax.vmap(lambda i: jax.random.fold_in(kn, i))(idx))
        y_all = np.full((n_latents,), int(cls), np.int32)
        a, b_ = _engine.run(_lip_kernel, static, (z_all, keys_all, y_all), block_size=latent_batch,
                            default_block=16, progress=progress, desc=f"local lipschitz (class {int(cls)})", unit="z")
        ratios[ci] = np.asarray(a, np.float64)
        ratios_g[ci] = np.asarray(b_, np.float64)
    if not (np.all(np.isfinite(ratios)) and np.all(np.isfinite(ratios_g))):
        raise ValueError("g: produced non-finite outputs or ratios in the latent ball")
    return LocalLipschitz(_quantiles(ratios, dl), _quantiles(ratios_g, dl), ratios, ratios_g,
                          classes.astype(np.int64), dl, float(r), n_neighbors, directions, grad_steps, grad_restarts,
                          time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# Bounds (Theorems 4.3 and 4.4)
# ---------------------------------------------------------------------------


def _check_vec(v: Any, name: str, *, low: float | None = None, low_inclusive: bool = True,
               high: float | None = None, high_inclusive: bool = True) -> tuple[np.ndarray, bool]:
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected a number or a 1-D array of numbers, got {v!r}")
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or a 1-D array of numbers, got {v!r}") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size == 0):
        raise ValueError(f"{name}: expected a scalar or a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    if low is not None and (np.any(arr < low) or (not low_inclusive and np.any(arr == low))):
        raise ValueError(f"{name}: must be {'>=' if low_inclusive else '>'} {low}, got {v!r}")
    if high is not None and (np.any(arr > high) or (not high_inclusive and np.any(arr == high))):
        raise ValueError(f"{name}: must be {'<=' if high_inclusive else '<'} {high}, got {v!r}")
    return np.atleast_1d(arr), arr.ndim == 1


def _check_delta(delta: Any) -> float:
    return _checks.check_scalar(delta, "delta", low=0.0, high=1.0, high_inclusive=False)


def _check_radius_condition(r: Any, eps: np.ndarray, L: np.ndarray) -> None:
    if r is None:
        return
    r = _checks.check_scalar(r, "r", low=0.0, low_inclusive=False)
    bad = eps.max() > r * L.min() * (1.0 + 1e-12)
    if bad:
        raise ValueError(f"eps: Theorem 4.3 needs r * L_i(r) >= eps for every class; eps = {eps.max()} exceeds "
                         f"r * min L_i = {r * L.min()} (estimate L at a larger radius r)")


def adv_risk_lower_bound(
    risk: Any,
    *,
    eps: Any,
    L: Any,
    p: Any,
    delta: float = 0.0,
    r: float | None = None,
) -> Any:
    """Lower bound on the (in-distribution) adversarial risk of one classifier (Zhang et al. Theorem 4.3).

    ``AdvRisk_mu^eps(f) >= In-AdvRisk_mu^eps(f) >= sum_i p_i Phi(Phi^-1(Risk_mu_i(f)) + eps / L_i(r)) - delta``
    for ``mu = sum_i p_i (g_i)_* N(0, I)`` when every ``g_i`` is ``L_i(r)``-locally
    Lipschitz with probability ``>= 1 - delta`` and ``r L_i(r) >= eps``. The
    bound is returned as is (it can be negative for ``delta > 0``).

    Args:
      risk: ``[K]`` per-class risks ``Risk_mu_i(f)`` in ``[0, 1]`` (``K = 1``: the
        unconditional case).
      eps: perturbation budget(s) ``>= 0``, scalar or ``[E]``.
      L: ``[K]`` local Lipschitz constants (> 0), or one scalar for all classes.
      p: ``[K]`` class priors (sum to 1).
      delta: failure probability of the Lipschitz condition, in ``[0, 1)``.
      r: the latent radius of ``L``; when given, ``r * L_i >= eps`` is enforced.

    Returns:
      A float for scalar ``eps``, else an ``[E]`` NumPy array.

    References:
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378 (Theorem 4.3).
    """
    risk_k, _ = _check_vec(risk, "risk", low=0.0, high=1.0)
    p_k = _check_priors(p, risk_k.size)
    L_k, _ = _check_vec(L, "L", low=0.0, low_inclusive=False)
    if L_k.size == 1:
        L_k = np.full(risk_k.size, L_k[0])
    if L_k.size != risk_k.size:
        raise ValueError(f"L: has {L_k.size} entries for {risk_k.size} classes")
    eps_e, vector = _check_vec(eps, "eps", low=0.0)
    delta = _check_delta(delta)
    _check_radius_condition(r, eps_e, L_k)
    out = (p_k * _norm.cdf(_norm.ppf(risk_k)[None, :] + eps_e[:, None] / L_k[None, :])).sum(axis=1) - delta
    return out if vector else float(out[0])


class IntrinsicRobustnessBound(NamedTuple):
    """Upper bound on the intrinsic robustness ``Rob_mu^eps`` (Zhang et al. Theorem 4.4).

    Attributes:
      rob: ``[E, A]`` the bound per ``eps`` (rows) and ``alpha`` (columns); not
        clipped to 1 (with ``delta > 0`` it may exceed 1, a vacuous bound).
      eps: ``[E]``.
      alpha: ``[A]``.
      family: ``"F_alpha"`` (``Risk_mu(f) >= alpha``) or ``"per_class"``
        (``F~_alpha``: ``Risk_mu_i(f) >= alpha`` for every class).
      L_max: ``max_i L_i(r)`` used.
      delta: the Lipschitz failure probability added.
      p: ``[K]`` class priors.
      worst_class: ``[E, A]`` the class ``i`` attaining the minimum (``F_alpha``;
        ``-1`` for ``per_class``).
    """

    rob: np.ndarray
    eps: np.ndarray
    alpha: np.ndarray
    family: str
    L_max: float
    delta: float
    p: np.ndarray
    worst_class: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {k: to_jsonable(v) for k, v in self._asdict().items()}


def intrinsic_robustness_bound(
    *,
    eps: Any,
    alpha: Any,
    L: Any,
    p: Any = (1.0,),
    delta: float = 0.0,
    family: str = "F_alpha",
    r: float | None = None,
) -> IntrinsicRobustnessBound:
    """Upper bound on the intrinsic robustness of imperfect classifiers (Zhang et al. Theorem 4.4).

    With ``L_max = max_i L_i(r)`` and ``Phi`` the standard normal CDF:

    * ``family="F_alpha"`` (``Risk_mu(f) >= alpha``):
      ``Rob <= 1 + delta - min_i p_i Phi(Phi^-1(alpha / p_i) + eps / L_max)``,
      valid when ``alpha / p_i <= 1`` for every class;
    * ``family="per_class"`` (``F~_alpha``, ``Risk_mu_i(f) >= alpha`` for all i):
      ``Rob <= 1 + delta - Phi(Phi^-1(alpha) + eps / L_max)``.

    ``p=(1.0,)`` is the unconditional case ``K = 1`` (both families agree).
    Table 3 of the paper (98.2 / 97.8 / 97.2 % at eps = 1, 2, 3) is the
    ``per_class`` bound with ``alpha = 0.015``, ``L_max = 11.0``, ``delta = 0.001``.

    Args:
      eps: budget(s) ``>= 0``, scalar or ``[E]``.
      alpha: risk threshold(s) in ``(0, 1]``, scalar or ``[A]``.
      L: ``L_max`` (> 0), or ``[K]`` per-class constants whose maximum is used.
      p: ``[K]`` class priors (sum to 1).
      delta: Lipschitz failure probability in ``[0, 1)``.
      family: ``"F_alpha"`` or ``"per_class"``.
      r: latent radius of ``L``; when given, ``r * L_max >= eps`` is enforced
        (the condition of Theorem 4.3 for the class attaining ``L_max``; the
        other classes' conditions are the caller's when ``L`` is per class).

    Returns:
      :class:`IntrinsicRobustnessBound` (``rob`` shaped ``[E, A]``).

    References:
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378 (Theorem 4.4, Table 3).
    """
    if family not in ("F_alpha", "per_class"):
        raise ValueError(f"family: must be 'F_alpha' or 'per_class', got {family!r}")
    eps_e, _ = _check_vec(eps, "eps", low=0.0)
    alpha_a, _ = _check_vec(alpha, "alpha", low=0.0, low_inclusive=False, high=1.0)
    L_k, _ = _check_vec(L, "L", low=0.0, low_inclusive=False)
    p_k = _check_priors(p, None)
    delta = _check_delta(delta)
    L_max = float(L_k.max())
    _check_radius_condition(r, eps_e, np.array([L_max]))
    shift = eps_e[:, None] / L_max  # [E, 1]
    if family == "per_class":
        rob = 1.0 + delta - _norm.cdf(_norm.ppf(alpha_a)[None, :] + shift)
        worst = np.full(rob.shape, -1, np.int64)
    else:
        ratio = alpha_a[:, None] / np.where(p_k > 0, p_k, 0.0)[None, :]  # [A, K]
        with np.errstate(divide="ignore"):
            ratio = np.where(p_k[None, :] > 0, ratio, np.inf)
        if np.any(ratio > 1.0 + 1e-12):
            a_bad = float(alpha_a[np.any(ratio > 1.0 + 1e-12, axis=1)].max())
            raise ValueError(f"alpha: Theorem 4.4 needs alpha / p_i <= 1 for every class; alpha = {a_bad} exceeds "
                             f"min p_i = {float(p_k.min())}")
        terms = p_k[None, None, :] * _norm.cdf(_norm.ppf(np.minimum(ratio, 1.0))[None, :, :] + shift[:, :, None])
        worst = np.argmin(terms, axis=-1).astype(np.int64)
        rob = 1.0 + delta - terms.min(axis=-1)
    return IntrinsicRobustnessBound(rob, eps_e, alpha_a, family, L_max, delta, p_k, worst)


# ---------------------------------------------------------------------------
# In-distribution adversarial examples (eqs. 5.1 / 5.2)
# ---------------------------------------------------------------------------


class InDistributionResult(NamedTuple):
    """In-distribution attack outcome on ``n`` examples (Zhang et al. §5.4, Definition 3.3).

    Attributes:
      z_adv: ``[n, d]`` latent of the returned point (the closest misclassified
        iterate found; the initial latent where none was found).
      x_adv: ``[n, ...]`` ``g(z_adv, y)``, always on the generator's range.
      logits: ``[n, k]`` classifier logits at ``x_adv``.
      distance: ``[n]`` ``||x_adv - x||_2``.
      init_distance: ``[n]`` ``||g(z_init, y) - x||_2`` of the initial latent.
      misclassified: ``[n]`` bool, ``argmax logits(x_adv) != y``.
      success: ``[n]`` (or ``[E, n]`` for a vector of eps) bool: ``x_adv`` is
        misclassified and ``distance <= eps``.
      correct: ``[n]`` bool, the classifier is right on the clean ``x``.
      robust_accuracy: fraction correct on ``x`` and not broken (``[E]`` list
        for a vector of eps); clean errors count as failures.
      eps: ``[E]`` budgets.
    """

    z_adv: np.ndarray
    x_adv: np.ndarray
    logits: np.ndarray
    distance: np.ndarray
    init_distance: np.ndarray
    misclassified: np.ndarray
    success: np.ndarray
    correct: np.ndarray
    robust_accuracy: Any
    eps: np.ndarray

    def to_dict(self, *, per_example: bool = False) -> dict:
        """JSON-ready summary."""
        n = int(self.distance.shape[0])
        out = {"n": n, "eps": to_jsonable(self.eps),
               "clean_accuracy": float(self.correct.mean()) if n else None,
               "robust_accuracy": to_jsonable(self.robust_accuracy),
               "success_rate": to_jsonable(np.asarray(self.success).mean(axis=-1) if n else None),
               "median_init_distance": float(np.median(self.init_distance)) if n else None,
               "median_distance_misclassified": (float(np.median(self.distance[self.misclassified]))
                                                 if self.misclassified.any() else None)}
        if per_example:
            out.update(distance=to_jsonable(self.distance), init_distance=to_jsonable(self.init_distance),
                       success=to_jsonable(self.success), correct=to_jsonable(self.correct))
        return out


def _indist_core(x, y, idx, z0, key, *, logits_fn, g, latent_dim, invert, init_restarts, init_steps, init_lr,
                 search_steps, steps, learning_rate, c_init, c_max, confidence):
    n = x.shape[0]
    xf = _flat(x)
    keys = _attacks.example_keys(idx, key=key)
    d2_of = lambda out: jnp.sum((_flat(out) - xf) ** 2, axis=1)  # noqa: E731

    if invert:
        opt0 = optax.adam(init_lr)
        grad_d2 = jax.grad(lambda z: jnp.sum(d2_of(g(z, y))))

        def init_run(q, carry):
            best_z, best_d2 = carry
            z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, q), (latent_dim,), jnp.float32))(keys)

            def body(_, st):
                z, os = st
                upd, os = opt0.update(grad_d2(z), os, z)
                return optax.apply_updates(z, upd), os

            z, _ = lax.fori_loop(0, init_steps, body, (z, opt0.init(z)))
            d2 = d2_of(g(z, y))
            take = d2 < best_d2
            return jnp.where(take[:, None], z, best_z), jnp.where(take, d2, best_d2)

        z_init, _ = lax.fori_loop(0, init_restarts, init_run,
                                  (jnp.zeros((n, latent_dim), jnp.float32), jnp.full((n,), jnp.inf, jnp.float32)))
    else:
        z_init = z0
    init_d2 = d2_of(g(z_init, y))

    def total(z, c):
        out = g(z, y)
        d2 = d2_of(out)
        logits = logits_fn(out)
        m = _attacks.margin(logits, y)
        return jnp.sum(d2 + c * jnp.maximum(m + confidence, 0.0)), (d2, logits)

    vg = jax.value_and_grad(total, has_aux=True)
    opt = optax.adam(learning_rate)

    def track(st, z, d2, logits):
        best_z, best_d2 = st
        better = (jnp.argmax(logits, axis=-1) != y) & (d2 < best_d2)
        return jnp.where(better[:, None], z, best_z), jnp.where(better, d2, best_d2)

    def search(s, carry):
        c, c_lo, c_hi, best = carry

        def body(_, st):
            z, os, best, hit = st
            (_, (d2, logits)), gz = vg(z, c)
            best = track(best, z, d2, logits)
            upd, os = opt.update(gz, os, z)
            return optax.apply_updates(z, upd), os, best, hit | (jnp.argmax(logits, -1) != y)

        z, _, best, hit = lax.fori_loop(0, steps, body, (z_init, opt.init(z_init), best, jnp.zeros((n,), bool)))
        _, (d2, logits) = total(z, c)
        best = track(best, z, d2, logits)
        hit = hit | (jnp.argmax(logits, -1) != y)
        c_hi = jnp.where(hit, jnp.minimum(c_hi, c), c_hi)
        c_lo = jnp.where(hit, c_lo, jnp.maximum(c_lo, c))
        c = jnp.where(c_hi < c_max, 0.5 * (c_lo + c_hi), jnp.minimum(c * 10.0, c_max))
        return c, c_lo, c_hi, best

    init = (jnp.full((n,), c_init, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.full((n,), c_max, jnp.float32),
            (z_init, jnp.full((n,), jnp.inf, jnp.float32)))
    _, _, _, (best_z, _) = lax.fori_loop(0, search_steps, search, init)
    x_adv = g(best_z, y)
    logits = logits_fn(x_adv)
    dist = jnp.sqrt(d2_of(x_adv))
    return best_z, x_adv, logits.astype(jnp.float32), dist, jnp.sqrt(init_d2)


def in_distribution_attack(
    logits_fn: Callable,
    g: Callable,
    x: Any,
    y: Any,
    *,
    key: Any,
    eps: Any,
    latent_dim: int | None = None,
    z_init: Any = None,
    init_restarts: int = 3,
    init_steps: int = 1000,
    init_learning_rate: float = 0.01,
    search_steps: int = 4,
    steps: int = 100,
    learning_rate: float = 0.01,
    c_init: float = 1.0,
    confidence: float = 0.0,
    batch_size: int | None = None,
    progress: bool = False,
) -> InDistributionResult:
    """In-distribution adversarial examples and robust accuracy (Zhang et al. eqs. 5.1/5.2, App. B.2).

    Searches ``z`` with ``g(z, y)`` misclassified and within ``eps`` of ``x``
    (eq. 5.1) through the Lagrangian (5.2), with the authors' squared distance
    and the Carlini-Wagner margin:

    1. initialisation by inversion: ``z_init = argmin_z ||g(z, y) - x||_2^2``
       by Adam (``init_steps`` steps from ``init_restarts`` keyed ``N(0, I)``
       starts, best kept), unless ``z_init`` is given (the paper's ImageNet
       strategy: the latent that generated ``x``);
    2. ``search_steps`` rounds of ``steps`` Adam steps on
       ``||g(z, y) - x||_2^2 + c * max(Z_y - max_{j != y} Z_j + kappa, 0)`` from
       ``z_init``, with ``c`` starting at ``c_init`` and bisected (lowered after a
       round that found a misclassified iterate, raised tenfold until bracketed
       otherwise), per example;
    3. the closest misclassified iterate ``g(z, y)`` over all rounds is kept;
       ``x_adv = g(z_adv, y)`` is recomputed and counts as a success only when
       misclassified and ``||x_adv - x||_2 <= eps``.

    Args:
      logits_fn: classifier ``x [n, ...] -> logits [n, k]`` on ``g``'s output space.
      g: conditional generator ``g(z [n, d], y [n]) -> x [n, ...]``.
      x: ``[n, ...]`` points to attack, shaped like ``g``'s output.
      y: ``[n]`` their classes (the generator's condition and the true label).
      key: ``jax.random`` key (inversion starts; example ``i`` uses ``(key, i)``).
      eps: budget ``>= 0`` (l2), or ``[E]`` budgets (``success`` gets a leading axis).
      latent_dim: ``d`` (default ``g.latent_dim``).
      z_init: optional ``[n, d]`` initial latents (skips the inversion).
      init_restarts, init_steps, init_learning_rate: the inversion (the authors' code: 3, 1000, 0.01).
      search_steps: binary-search rounds on ``c`` (the authors' code: 4).
      steps: Adam steps per round (the authors' code: 100).
      learning_rate: Adam learning rate on ``z`` (the paper: 0.01).
      c_init: initial constant (the paper: 1).
      confidence: margin ``kappa >= 0`` demanded by the hinge.
      batch_size: examples per jitted batch.
      progress: progress bar over batches.

    Returns:
      :class:`InDistributionResult`.

    References:
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378 (eqs. 5.1/5.2, App. B.2).
      Carlini, Wagner. "Towards evaluating the robustness of neural
      networks." IEEE S&P 2017, arXiv:1608.04644.
    """
    _checks.check_key(key)
    _checks.check_logits_fn(logits_fn)
    d = _check_generator(g, latent_dim)
    init_restarts = _checks.check_int(init_restarts, "init_restarts", low=1)
    init_steps = _checks.check_int(init_steps, "init_steps", low=0)
    init_learning_rate = _checks.check_scalar(init_learning_rate, "init_learning_rate", low=0.0,
                                              low_inclusive=False)
    search_steps = _checks.check_int(search_steps, "search_steps", low=1)
    steps = _checks.check_int(steps, "steps", low=1)
    learning_rate = _checks.check_scalar(learning_rate, "learning_rate", low=0.0, low_inclusive=False)
    c_init = _checks.check_scalar(c_init, "c_init", low=0.0, low_inclusive=False)
    confidence = _checks.check_scalar(confidence, "confidence", low=0.0)
    x = _checks.check_model_inputs(x, None)
    out_shape = jax.eval_shape(g, jax.ShapeDtypeStruct((1, d), jnp.float32),
                               jax.ShapeDtypeStruct((1,), jnp.int32)).shape
    if tuple(x.shape[1:]) != tuple(out_shape[1:]):
        raise ValueError(f"x: examples shaped {tuple(x.shape[1:])} do not match g's outputs {tuple(out_shape[1:])}")
    k = _checks.num_classes_of(logits_fn, x)
    y = _checks.check_model_labels(y, x.shape[0], k)
    kg = _num_classes_of(g, None)
    if kg is not None:
        _checks.check_labels(y, "y", num_classes=kg)
    eps_e, vector = _checks.check_eps(eps)
    n = x.shape[0]
    if z_init is not None:
        z0 = _checks.check_points(z_init, "z_init", allow_empty=True)
        if z0.shape != (n, d):
            raise ValueError(f"z_init: expected shape [{n}, {d}], got {tuple(z0.shape)}")
        z0 = np.asarray(z0, np.float32)
    else:
        z0 = np.zeros((n, d), np.float32)
    if n == 0:
        e = eps_e.shape[0]
        succ = np.zeros((e, 0) if vector else (0,), bool)
        ra = [float("nan")] * e if vector else float("nan")
        return InDistributionResult(np.zeros((0, d), np.float32), np.zeros((0,) + tuple(x.shape[1:]), np.float32),
                                    np.zeros((0, k), np.float32), np.zeros(0), np.zeros(0), np.zeros(0, bool), succ,
                                    np.zeros(0, bool), ra, eps_e)
    static = dict(logits_fn=logits_fn, g=g, latent_dim=d, invert=z_init is None, init_restarts=init_restarts,
                  init_steps=init_steps, init_lr=float(init_learning_rate), search_steps=search_steps, steps=steps,
                  learning_rate=float(learning_rate), c_init=float(c_init), c_max=1e10, confidence=float(confidence))
    idx = np.arange(n, dtype=np.int32)
    z_adv, x_adv, logits, dist, init_dist = _engine.run(
        _indist_core, static, (x, np.asarray(y), idx, z0), (key,), block_size=batch_size, default_block=256,
        progress=progress, desc="in-distribution attack")
    z_adv, x_adv, logits = np.asarray(z_adv), np.asarray(x_adv), np.asarray(logits)
    dist = np.asarray(dist, np.float64)
    y_np = np.asarray(y)
    mis = logits.argmax(-1) != y_np
    success = mis[None, :] & (dist[None, :] <= eps_e[:, None])
    clean_pred = np.asarray(_attacks.predict(logits_fn, x, batch_size=batch_size))
    correct = clean_pred == y_np
    robust = correct[None, :] & ~success
    rob = robust.mean(axis=1)
    return InDistributionResult(z_adv, x_adv, logits, dist, np.asarray(init_dist, np.float64), mis,
                                success if vector else success[0], correct,
                                rob.tolist() if vector else float(rob[0]), eps_e)
