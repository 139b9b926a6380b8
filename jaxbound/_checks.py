"""Input validation shared by every public function of jaxbound.

Every check raises ``ValueError`` whose message starts with the name of the
offending argument, so that a user sees at once which input was wrong.
Nothing here clips, casts away or drops data silently.

The policy every public function follows at its boundary:

* a bad argument raises ``ValueError`` (a wrong value or shape) or
  ``TypeError`` (a wrong kind of object) whose message starts with the public
  argument's name;
* empty inputs raise (:func:`check_nonempty`) instead of giving NaN;
* a model whose outputs are NaN or infinite raises, naming ``logits_fn``
  (:func:`check_finite_logits`), instead of being counted as a prediction;
* nothing is silently clipped, cast or dropped.

Value checks (finiteness, ranges) need concrete arrays; when a function is
traced under ``jax.jit`` the shape and dtype checks still run and the value
checks are skipped (see :func:`is_concrete`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound.lp import canonical_norm, dual_norm, norm_exponent  # noqa: F401  (re-exported for checks)

__all__ = [
    "canonical_norm",
    "dual_norm",
    "norm_exponent",
    "is_concrete",
    "check_points",
    "check_same_dim",
    "check_finite",
    "check_scalar",
    "check_int",
    "check_probability",
    "check_labels",
    "check_images",
    "check_key",
    "check_weights",
    "check_nonempty",
    "check_finite_logits",
    "check_module",
    "check_bool",
    "check_path",
    "as_batch",
]

def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def _as_array(x: Any, name: str):
    if isinstance(x, (np.ndarray, jax.Array)) or isinstance(x, jax.core.Tracer):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - ragged lists and exotic inputs
        raise ValueError(f"{name}: cannot be converted to an array ({exc})") from None


def check_finite(x: Any, name: str) -> None:
    """Raise when a concrete array holds NaN or +-Inf."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")


def _check_float_dtype(arr, name: str) -> None:
    dt = np.dtype(arr.dtype)
    if dt == np.bool_ or not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {dt}")


def check_points(x: Any, name: str, *, allow_empty: bool = False):
    """Validate a point set shaped ``[n, d]`` of finite real numbers.

    Integer arrays are accepted (they are exact in floating point up to 2**24).

    Returns:
      The input as an array (NumPy arrays stay NumPy, JAX arrays stay JAX).
    """
    arr = _as_array(x, name)
    _check_float_dtype(arr, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array shaped [n, d], got shape {tuple(arr.shape)}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: points have zero features (shape {tuple(arr.shape)})")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}: is empty (shape {tuple(arr.shape)})")
    check_finite(arr, name)
    return arr


def check_same_dim(x, y, name_x: str, name_y: str) -> None:
    """Both ``[n, d]`` and ``[m, d]`` arrays must share ``d``."""
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{name_y}: feature dimension {y.shape[-1]} does not match {name_x}'s {x.shape[-1]}"
        )


def check_scalar(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A finite real scalar within optional bounds; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        raise ValueError(f"{name}: expected a real number, got {type(value).__name__}")
    if not is_concrete(value):
        raise ValueError(f"{name}: must be a concrete Python or NumPy number, not a traced value")
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"{name}: expected a scalar, got shape {arr.shape}")
    v = float(arr)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {v}")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name}: must be {op} {low}, got {v}")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name}: must be {op} {high}, got {v}")
    return v


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (Python or NumPy, not bool) within optional inclusive bounds."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    v = int(value)
    if low is not None and v < low:
        raise ValueError(f"{name}: must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name}: must be <= {high}, got {v}")
    return v


def check_probability(value: Any, name: str, *, open_low: bool = True, open_high: bool = True) -> float:
    """A probability in (0, 1) (ends included on request)."""
    return check_scalar(
        value, name, low=0.0, high=1.0, low_inclusive=not open_low, high_inclusive=not open_high
    )


def check_labels(y: Any, name: str, *, n: int | None = None, num_classes: int | None = None):
    """Integer labels ``[n]`` in ``[0, num_classes)``."""
    arr = _as_array(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {tuple(arr.shape)}")
    if not np.issubdtype(np.dtype(arr.dtype), np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} labels for {n} inputs")
    if is_concrete(arr) and arr.size:
        a = np.asarray(arr)
        if a.min() < 0:
            raise ValueError(f"{name}: labels must be >= 0, got {int(a.min())}")
        if num_classes is not None and a.max() >= num_classes:
            raise ValueError(f"{name}: label {int(a.max())} is out of range for {num_classes} classes")
    return arr


def check_images(
    x: Any, name: str, *, bounds: Sequence[float] | None = (0.0, 1.0), allow_empty: bool = False
):
    """Images ``[n, H, W, C]`` of finite reals inside ``bounds`` (None: unbounded)."""
    arr = _as_array(x, name)
    _check_float_dtype(arr, name)
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected images shaped [n, H, W, C], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}: is empty")
    check_finite(arr, name)
    check_bounds(arr, name, bounds)
    return arr


def check_bounds(arr: Any, name: str, bounds: Sequence[float] | None) -> None:
    """Values of a concrete array must lie within ``bounds = (low, high)``."""
    if bounds is None or not is_concrete(arr):
        return
    lo, hi = bounds
    a = np.asarray(arr)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(
            f"{name}: values must lie in [{lo}, {hi}], found range [{float(a.min())}, {float(a.max())}]"
        )


def check_interval(bounds: Any, name: str = "bounds", *, allow_none: bool = False) -> tuple[float, float] | None:
    """A pair ``(low, high)`` of finite numbers with ``low < high`` (``None`` passes when ``allow_none``)."""
    if bounds is None and allow_none:
        return None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        want = "None or a pair (low, high)" if allow_none else "a pair (low, high)"
        raise ValueError(f"{name}: expected {want}, got {bounds!r}") from None
    lo = check_scalar(lo, name)
    hi = check_scalar(hi, name)
    if not lo < hi:
        raise ValueError(f"{name}: need low < high, got ({lo}, {hi})")
    return (lo, hi)


def check_key(key: Any, name: str = "key"):
    """A ``jax.random`` key: new-style typed key or legacy uint32 ``[2]``."""
    if isinstance(key, jax.Array) or isinstance(key, jax.core.Tracer):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"{name}: expected a single key, got a key array of shape {key.shape}")
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(
        f"{name}: expected a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
        f"got {type(key).__name__}"
    )


def check_weights(w: Any, name: str, *, n: int) -> np.ndarray:
    """Non-negative finite weights ``[n]`` as float64 NumPy (``None``: all ones)."""
    arr = np.asarray(w, dtype=np.float64) if w is not None else np.ones(n, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite weights")
    if (arr < 0).any():
        raise ValueError(f"{name}: weights must be non-negative")
    return arr


# ---------------------------------------------------------------------------
# Model and attack arguments (shared by attacks, metrics, generative, training)
# ---------------------------------------------------------------------------

_ATTACK_NORMS = ("linf", "l2", "l1")


def check_attack_norm(norm: Any, name: str = "norm") -> str:
    """A threat-model norm supported by the attacks: ``"linf" | "l2" | "l1"`` (canonical name)."""
    n = canonical_norm(norm, name)
    if n not in _ATTACK_NORMS:
        raise ValueError(f"{name}: attacks support 'linf', 'l2' and 'l1', got {norm!r}")
    return n


def check_logits_fn(logits_fn: Any) -> None:
    """``logits_fn`` must be callable (``x [n, ...] -> logits [n, k]``)."""
    if not callable(logits_fn):
        raise ValueError(f"logits_fn: expected a callable x -> logits, got {type(logits_fn).__name__}")


def check_model_inputs(x: Any, bounds: Sequence[float] | None, name: str = "x"):
    """A batch ``[n, ...]`` (at least 2-D) of finite reals inside ``bounds``, as float32.

    Concrete inputs come back as NumPy float32, traced ones as JAX float32.
    """
    if isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{name}: cannot be converted to an array ({exc})") from None
    if not hasattr(arr, "ndim") or arr.ndim < 2:
        raise ValueError(f"{name}: expected a batch shaped [n, ...] with at least 2 dimensions, "
                         f"got shape {tuple(getattr(arr, 'shape', ()))}")
    dt = np.dtype(arr.dtype)
    if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)) or dt == np.bool_:
        raise ValueError(f"{name}: expected real numbers, got dtype {dt}")
    check_finite(arr, name)
    check_bounds(arr, name, bounds)
    if is_concrete(arr):
        return np.asarray(arr, dtype=np.float32)
    return arr.astype(jnp.float32)


def num_classes_of(logits_fn: Any, x: Any) -> int:
    """Number of classes ``k`` of ``logits_fn`` on inputs shaped like ``x`` (checked by ``eval_shape``)."""
    try:
        out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((max(1, x.shape[0]),) + tuple(x.shape[1:]), jnp.float32))
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument name
        raise ValueError(f"logits_fn: failed on inputs shaped {tuple(x.shape)}: {exc}") from exc
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != max(1, x.shape[0]):
        raise ValueError(f"logits_fn: must return logits shaped [n, num_classes], got {getattr(out, 'shape', out)}")
    if out.shape[1] < 2:
        raise ValueError(f"logits_fn: needs at least 2 classes, got {out.shape[1]}")
    return int(out.shape[1])


def check_model_labels(y: Any, n: int, k: int, name: str = "y"):
    """Integer labels ``[n]`` in ``[0, k)`` as int32 (NumPy when concrete)."""
    arr = check_labels(y, name, n=n, num_classes=k)
    if is_concrete(arr):
        return np.asarray(arr).astype(np.int32)
    return arr.astype(jnp.int32)


def check_eps(eps: Any, name: str = "eps") -> tuple[np.ndarray, bool]:
    """Scalar or 1-D vector of non-negative finite budgets -> (float64 ``[K]``, is_vector)."""
    if not is_concrete(eps):
        raise ValueError(f"{name}: must be concrete numbers, not traced values")
    arr = np.asarray(eps, dtype=np.float64) if not isinstance(eps, (bool, np.bool_)) else None
    if arr is None or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a number or a 1-D array of numbers, got {eps!r}")
    if arr.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array, got shape {arr.shape}")
    if arr.ndim == 1 and arr.size == 0:
        raise ValueError(f"{name}: is an empty array")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite, got {eps!r}")
    if np.any(arr < 0):
        raise ValueError(f"{name}: must be >= 0, got {arr.min()}")
    return np.atleast_1d(arr).astype(np.float64), arr.ndim == 1


def check_step(step_size: Any, eps: np.ndarray, steps: int, name: str = "step_size") -> np.ndarray:
    """Step sizes ``[K]`` for budgets ``eps [K]``: ``2.5 eps / steps`` when None, else positive, one or per eps."""
    if step_size is None:
        return 2.5 * eps / steps
    arr = np.asarray(step_size, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != eps.shape[0]):
        raise ValueError(f"{name}: expected a scalar or one value per eps ({eps.shape[0]}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: must be positive and finite, got {step_size!r}")
    return np.broadcast_to(arr, eps.shape).astype(np.float64)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_nonempty(x: Any, name: str, *, what: str = "examples") -> None:
    """Raise ``ValueError`` naming ``name`` when ``x`` has no rows (0 on axis 0)."""
    shape = tuple(getattr(x, "shape", None) or np.shape(x))
    if shape and shape[0] == 0:
        raise ValueError(f"{name}: is empty (shape {shape}); at least one of the {what} is needed")


def check_finite_logits(logits: Any, name: str = "logits_fn", *, inputs: str = "x") -> None:
    """Raise when a model's concrete outputs hold NaN or +-Inf.

    ``logits`` is the model output ``[n, k]`` or a per-row flag ``[n]`` of
    finite rows (bool). The message names the model argument and the first
    bad rows of ``inputs`` so the caller can find them.
    """
    if not is_concrete(logits):
        return
    arr = np.asarray(logits)
    ok = arr if arr.dtype == np.bool_ else np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1) \
        if arr.ndim else np.isfinite(arr)
    ok = np.atleast_1d(ok)
    if not ok.all():
        rows = np.flatnonzero(~ok)
        shown = ", ".join(str(int(i)) for i in rows[:5]) + (", ..." if rows.size > 5 else "")
        raise ValueError(f"{name}: returned NaN or infinite outputs on {rows.size} of {ok.size} rows of "
                         f"{inputs} (rows {shown}); a non-finite model has no prediction to measure")


def check_module(model: Any, name: str = "model"):
    """A Flax ``linen`` module; a registered name or another object raises ``TypeError`` naming ``name``."""
    from flax import linen as nn

    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        raise TypeError(f"{name}: expected a Flax module, got the name {model!r}; build the module first, e.g. "
                        f"jaxbound.models.build({model!r}, num_classes=10)")
    raise TypeError(f"{name}: expected a Flax module, got {type(model).__name__}")


def check_path(path: Any, name: str = "path"):
    """A file-system path (``str`` or ``os.PathLike``) as a :class:`pathlib.Path`; other objects raise ``TypeError``."""
    import os
    from pathlib import Path

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file or folder path, got {type(path).__name__}")
    return Path(path).expanduser()


def as_batch(x: Any, name: str = "x") -> np.ndarray:
    """A concrete batch ``[n, ...]`` (at least 2-D) as a NumPy array; ragged or 0-/1-D input raises naming ``name``."""
    arr = _as_array(x, name)
    if not is_concrete(arr):
        raise ValueError(f"{name}: must be a concrete array, not a traced value")
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected a batch shaped [n, ...] with at least 2 dimensions, got shape {arr.shape}")
    return arr


def check_bool(value: Any, name: str) -> bool:
    """A Python or NumPy bool (not an int or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
