"""Norms, dual norms and ℓp-ball geometry: the one public home of jaxbound's threat-model maths.

Every module of jaxbound that needs a norm name, a dual norm, a per-example
norm, a projection onto an ℓp ball, a steepest-ascent direction or a uniform
draw from a ball takes it from here (in the spirit of ``optax.projections``).

Norm names: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` (``np.inf``,
``float("inf")``) and any real ``p >= 1`` for a general ℓp norm;
:func:`canonical_norm` maps every spelling to ``"l1"``, ``"l2"``, ``"linf"``
or the exponent ``p`` as a float.

Per-example functions take a batch ``x [n, ...]`` and treat every example as
one flattened vector of ``d = prod(x.shape[1:])`` coordinates; budgets
``eps`` are scalars or ``[n]``.

References:
  Duchi, Shalev-Shwartz, Singer, Chandra. "Efficient projections onto the
  l1-ball for learning in high dimensions." ICML 2008 (the sort-based ℓ1
  projection).
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083 (steepest
  ascent under an ℓp constraint).
  Barthe, Guédon, Mendelson, Naor. "A probabilistic approach to the geometry
  of the ℓp^n-ball." Annals of Probability 33(2), 2005, arXiv:math/0503650
  (uniform sampling in ℓ1 and ℓ2 balls).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "NORMS",
    "canonical_norm",
    "norm_exponent",
    "dual_norm",
    "lp_norm",
    "per_example_norm",
    "per_example_norms",
    "project",
    "project_in_box",
    "steepest_ascent",
    "sample_ball",
    "sample_balls",
]

#: The three norms with dedicated kernels everywhere (attacks, projections, sampling).
NORMS = ("linf", "l2", "l1")

# Guard against division by zero-norm vectors.
_TINY = 1e-12

_NORM_ALIASES = {
    "l1": "l1",
    "1": "l1",
    "l2": "l2",
    "2": "l2",
    "linf": "linf",
    "inf": "linf",
    "l_inf": "linf",
    "infinity": "linf",
}


def canonical_norm(norm: Any, name: str = "norm") -> str | float:
    """Normalise a norm specifier.

    Args:
      norm: ``"l1" | "l2" | "linf"`` (also ``"inf"``, ``"l_inf"``, ``"lp"``
        with a number), ``1 | 2 | inf`` or any real ``p >= 1``.
      name: the public argument named in errors.

    Returns:
      ``"l1"``, ``"l2"`` or ``"linf"`` for the three common norms, otherwise
      the exponent ``p`` as a Python float.

    Raises:
      ValueError: unknown name, ``p < 1`` or a non-finite, non-infinite value.
    """
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in _NORM_ALIASES:
            return _NORM_ALIASES[key]
        if key.startswith("l"):
            key = key[1:]
        try:
            p = float(key)
        except ValueError:
            raise ValueError(
                f"{name}: unknown norm {norm!r}; use 'l1', 'l2', 'linf', 1, 2, inf "
                "or a number p >= 1"
            ) from None
        return canonical_norm(p, name)
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real):
        raise ValueError(f"{name}: unknown norm {norm!r}; use 'l1', 'l2', 'linf', 1, 2 or inf")
    p = float(norm)
    if math.isinf(p) and p > 0:
        return "linf"
    if not math.isfinite(p) or p < 1:
        raise ValueError(f"{name}: an lp norm needs p >= 1, got {norm!r}")
    if p == 1:
        return "l1"
    if p == 2:
        return "l2"
    return p


def norm_exponent(norm: Any) -> float:
    """The exponent ``p`` of a norm (``inf`` for ``linf``)."""
    n = canonical_norm(norm)
    return {"l1": 1.0, "l2": 2.0, "linf": math.inf}.get(n, n)  # type: ignore[arg-type]


def dual_norm(norm: Any) -> str | float:
    """The dual norm: ``l1 <-> linf``, ``l2 <-> l2``, ``lp <-> lq`` with ``1/p + 1/q = 1``.

    The dual norm bounds a linear change under an ℓp perturbation,
    ``|<g, δ>| <= ||g||_* ||δ||_p`` (Hölder), which is how gradient norms,
    Lipschitz margins and linear classifiers' robust margins use it.
    """
    n = canonical_norm(norm)
    if n == "l1":
        return "linf"
    if n == "linf":
        return "l1"
    if n == "l2":
        return "l2"
    p = float(n)
    return canonical_norm(p / (p - 1.0))


def lp_norm(v: jax.Array, norm: Any, axis: int | Sequence[int] = -1) -> jax.Array:
    """``||v||_p`` along ``axis`` (jittable).

    Args:
      v: any array.
      norm: see :func:`canonical_norm`.
      axis: the reduced axis or axes.

    Returns:
      ``v``'s norm with ``axis`` reduced.
    """
    norm = canonical_norm(norm)
    nd = getattr(v, "ndim", np.ndim(v))
    for ax in (axis,) if isinstance(axis, numbers.Integral) else tuple(axis):
        if not -nd <= int(ax) < max(nd, 1):
            raise ValueError(f"axis: {ax} is out of range for an array with {nd} dimensions")
    a = jnp.abs(v)
    if norm == "l1":
        return jnp.sum(a, axis=axis)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(a * a, axis=axis))
    if norm == "linf":
        return jnp.max(a, axis=axis)
    return jnp.sum(a**norm, axis=axis) ** (1.0 / norm)


def per_example_norms(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(||x_i||_1, ||x_i||_2, ||x_i||_inf)`` per example of ``x [n, ...]``, each ``[n]``.

    An example with no coordinates has norm 0.
    """
    _check_batch(x, "x")
    flat = _flat(x)
    a = jnp.abs(flat)
    return jnp.sum(a, axis=1), jnp.sqrt(jnp.sum(flat * flat, axis=1)), jnp.max(a, axis=1, initial=0.0)


def per_example_norm(x: jax.Array, norm: Any) -> jax.Array:
    """``||x_i||_p`` per example of ``x [n, ...]`` -> ``[n]``."""
    n = canonical_norm(norm)
    _check_batch(x, "x")
    if n in NORMS:
        l1, l2, linf = per_example_norms(x)
        return {"l1": l1, "l2": l2, "linf": linf}[n]
    return lp_norm(_flat(x), n, axis=1)


def _flat(x):
    """``x [n, ...]`` as ``[n, d]`` (also for ``n = 0``, where ``reshape(0, -1)`` is ambiguous)."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def _bcast(v, x):
    """Per-example values ``[n]`` broadcast against ``x [n, ...]``."""
    v = jnp.asarray(v, x.dtype)
    v = jnp.broadcast_to(v, (x.shape[0],)) if v.ndim == 0 else v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_batch(x: Any, name: str) -> None:
    """``x`` must be an array with a leading example axis (``[n, ...]``)."""
    if getattr(x, "ndim", np.ndim(x)) < 1:
        raise ValueError(f"{name}: expected a batch shaped [n, ...], got shape {tuple(np.shape(x))}")


def _check_radii(eps: Any, n: int, name: str = "eps") -> None:
    """Radii: a scalar or one per example (``[n]``), finite and ``>= 0`` when concrete."""
    shape = tuple(np.shape(eps))
    if shape not in ((), (1,), (n,)):
        raise ValueError(f"{name}: expected a scalar or one radius per example ([{n}]), got shape {shape}")
    if _concrete(eps):
        try:
            e = np.asarray(eps, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {eps!r}") from None
        if not np.isfinite(e).all() or (e < 0).any():
            raise ValueError(f"{name}: radii must be finite and >= 0, got {eps!r}")


def _check_bounds(bounds: Any) -> None:
    if bounds is None:
        return
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected None or a pair (low, high), got {bounds!r}") from None
    if _concrete(lo) and _concrete(hi) and not float(lo) < float(hi):
        raise ValueError(f"bounds: need low < high, got ({lo}, {hi})")


def project(delta: jax.Array, eps: Any, norm: Any) -> jax.Array:
    """Euclidean projection of every example of ``delta [n, ...]`` onto the ``norm`` ball of radius ``eps``.

    ``linf`` clips, ``l2`` rescales, ``l1`` uses the exact sort-based
    projection of Duchi et al. (2008), ``O(d log d)`` per example. A radius
    of 0 projects onto 0.

    Args:
      delta: ``[n, ...]`` perturbations.
      eps: scalar or ``[n]`` radii, ``>= 0``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
      ``[n, ...]`` the projected perturbations.

    References:
      Duchi et al. "Efficient projections onto the l1-ball for learning in
      high dimensions." ICML 2008, Fig. 1.
    """
    norm = _check_kernel_norm(norm)
    _check_batch(delta, "delta")
    _check_radii(eps, delta.shape[0])
    e = jnp.broadcast_to(jnp.asarray(eps, delta.dtype), (delta.shape[0],))
    if norm == "linf":
        eb = _bcast(e, delta)
        return jnp.clip(delta, -eb, eb)
    flat = _flat(delta)
    if norm == "l2":
        nrm = jnp.sqrt(jnp.sum(flat * flat, axis=1))
        factor = jnp.where(nrm > e, e / jnp.maximum(nrm, _TINY), 1.0)
        return delta * _bcast(factor, delta)
    a = jnp.abs(flat)
    inside = jnp.sum(a, axis=1) <= e
    u = -jnp.sort(-a, axis=1)
    css = jnp.cumsum(u, axis=1)
    j = jnp.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    cond = u - (css - e[:, None]) / j > 0
    rho = jnp.maximum(jnp.sum(cond, axis=1), 1)
    theta = (jnp.take_along_axis(css, (rho - 1)[:, None], axis=1)[:, 0] - e) / rho.astype(flat.dtype)
    proj = jnp.sign(flat) * jnp.maximum(a - theta[:, None], 0.0)
    out = jnp.where(inside[:, None], flat, proj)
    out = jnp.where((e > 0)[:, None], out, jnp.zeros_like(out))
    return out.reshape(delta.shape)


def project_in_box(x: jax.Array, delta: jax.Array, eps: Any, norm: Any,
                   bounds: tuple[float, float] | None = None) -> jax.Array:
    """``x + project(delta, eps, norm)`` clipped to the box ``bounds`` (``None``: no box) -> ``[n, ...]``.

    The update of every projected-gradient attack: the result is within
    ``eps`` of ``x`` in ``norm`` whenever ``x`` is inside the box (clipping
    toward a box that contains ``x`` never lengthens the perturbation).
    """
    if np.shape(x) != np.shape(delta):
        raise ValueError(f"delta: shape {tuple(np.shape(delta))} does not match x's {tuple(np.shape(x))}")
    _check_bounds(bounds)
    x_new = x + project(delta, eps, norm)
    return x_new if bounds is None else jnp.clip(x_new, bounds[0], bounds[1])


def steepest_ascent(
    g: jax.Array,
    norm: Any,
    *,
    l1_fraction: float | None = None,
    x: jax.Array | None = None,
    bounds: tuple[float, float] | None = None,
) -> jax.Array:
    """Unit-``norm`` steepest-ascent direction ``d`` of the gradient ``g [n, ...]``: ``argmax_{||d|| <= 1} <g, d>``.

    ``linf``: ``sign(g)``; ``l2``: ``g / ||g||_2``. ``l1``: with
    ``l1_fraction=None`` the exact maximiser, all mass on one largest
    coordinate (the first one on ties), so ``<g, d> = ||g||_inf``; with
    ``l1_fraction`` the sparse direction of ℓ1 attacks: equal mass
    ``sign(g_j)/m`` on the ``m`` coordinates whose ``|g_j|`` reach the
    ``round(l1_fraction * d)``-th largest, leaving out coordinates that the
    box ``bounds`` blocks at ``x`` (Tramèr & Boneh 2019).

    Args:
      g: ``[n, ...]`` gradients.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      l1_fraction: fraction of coordinates moved by the sparse ℓ1 step.
      x: ``[n, ...]`` current points, for the box test of the sparse ℓ1 step.
      bounds: ``(low, high)`` box or ``None``.

    Returns:
      ``[n, ...]`` directions, ``0`` where ``g`` is 0.

    References:
      Madry et al. "Towards deep learning models resistant to adversarial
      attacks." ICLR 2018, arXiv:1706.06083.
      Tramèr, Boneh. "Adversarial training and robustness for multiple
      perturbations." NeurIPS 2019, arXiv:1904.13000 (sparse ℓ1 steps).
    """
    norm = _check_kernel_norm(norm)
    _check_batch(g, "g")
    if l1_fraction is not None and (isinstance(l1_fraction, bool) or not isinstance(l1_fraction, numbers.Real)
                                    or not 0.0 < float(l1_fraction) <= 1.0):
        raise ValueError(f"l1_fraction: must be a number in (0, 1], got {l1_fraction!r}")
    if x is not None and np.shape(x) != np.shape(g):
        raise ValueError(f"x: shape {tuple(np.shape(x))} does not match g's {tuple(np.shape(g))}")
    _check_bounds(bounds)
    if norm == "linf":
        return jnp.sign(g)
    flat = _flat(g)
    if norm == "l2":
        nrm = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
        return (flat / jnp.maximum(nrm, _TINY)).reshape(g.shape)
    if l1_fraction is None:
        i = jnp.argmax(jnp.abs(flat), axis=1)
        onehot = jax.nn.one_hot(i, flat.shape[1], dtype=flat.dtype)
        return (onehot * jnp.sign(flat)).reshape(g.shape)
    a = jnp.abs(flat)
    if bounds is not None and x is not None:
        xf = _flat(x)
        blocked = ((xf <= bounds[0]) & (flat < 0)) | ((xf >= bounds[1]) & (flat > 0))
        a = jnp.where(blocked, 0.0, a)
    kk = max(1, int(round(l1_fraction * flat.shape[1])))
    thr = lax.top_k(a, kk)[0][:, -1:]
    mask = (a >= thr) & (a > 0)
    cnt = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(flat.dtype)
    return (jnp.where(mask, jnp.sign(flat), 0.0) / cnt).reshape(g.shape)


def sample_ball(eps: Any, norm: Any, *, shape: Sequence[int], key: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """One draw, uniform in the ``norm`` ball of radius ``eps`` around 0, shaped ``shape``.

    ``linf``: independent uniforms on ``[-eps, eps]``. ``l2``: a Gaussian
    direction times ``U^(1/d)``. ``l1``: exponential spacings ``E_j / sum E``
    (``d + 1`` of them) with random signs (Barthe et al. 2005). ``vmap`` it
    over keys and radii for a batch.

    Args:
      eps: scalar radius ``>= 0``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      shape: the shape of one draw (``d = prod(shape)``).
      key: a ``jax.random`` key.
      dtype: floating dtype of the draw.

    Returns:
      ``shape`` array inside the ball.

    References:
      Barthe et al. "A probabilistic approach to the geometry of the
      ℓp^n-ball." Ann. Probab. 2005, arXiv:math/0503650, Thm. 1.
    """
    norm = _check_kernel_norm(norm)
    shape = _check_shape(shape)
    _check_key(key)
    _check_radii(eps, 1)
    d = int(np.prod(shape))
    if norm == "linf":
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps
    k1, k2 = jax.random.split(key)
    if norm == "l2":
        g = jax.random.normal(k1, (d,), dtype)
        r = jax.random.uniform(k2, (), dtype) ** (1.0 / d)
        v = g / jnp.maximum(jnp.linalg.norm(g), _TINY) * r
    else:
        ex = jax.random.exponential(k1, (d + 1,), dtype)
        s = jnp.where(jax.random.bernoulli(k2, 0.5, (d,)), 1.0, -1.0).astype(dtype)
        v = s * ex[:d] / jnp.sum(ex)
    return (v * eps).reshape(shape)


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected a sequence of sizes, got {shape!r}") from None
    if isinstance(shape, str) or any(v < 0 for v in out):
        raise ValueError(f"shape: expected non-negative sizes, got {shape!r}")
    return out


def _check_key(key: Any, name: str = "key") -> None:
    dt = getattr(key, "dtype", None)
    if dt is None or not (jnp.issubdtype(dt, jax.dtypes.prng_key) or (dt == jnp.uint32 and key.shape[-1:] == (2,))):
        raise ValueError(f"{name}: expected a jax.random key (jax.random.key(seed)), got {type(key).__name__}")


def _check_kernel_norm(norm: Any) -> str:
    n = canonical_norm(norm)
    if n not in NORMS:
        raise ValueError(f"norm: supports 'linf', 'l2' and 'l1', got {norm!r}")
    return n  # type: ignore[return-value]


def sample_balls(eps: jax.Array, norm: Any, *, shape: Sequence[int], keys: jax.Array,
                 dtype: Any = jnp.float32) -> jax.Array:
    """One :func:`sample_ball` draw per example: ``keys [n]`` and radii ``eps [n]`` -> ``[n, *shape]``."""
    _check_key(keys, "keys")
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if keys.ndim != (1 if typed else 2):
        raise ValueError(f"keys: expected one key per example (jax.random.split(key, n)), got shape {keys.shape}")
    n_keys = keys.shape[0]
    if np.shape(eps) != (n_keys,):
        raise ValueError(f"eps: expected one radius per key ([{n_keys}]), got shape {tuple(np.shape(eps))}")
    return jax.vmap(lambda k, e: sample_ball(e, norm, shape=shape, key=k, dtype=dtype))(keys, eps)
