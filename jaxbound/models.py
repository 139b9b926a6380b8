"""Classifier models used beside the data-dependent limits, and a small registry.

Models are Flax ``linen`` modules that take images ``[n, H, W, C]`` with
pixels in ``[0, 1]`` (the convention of every attack in :mod:`jaxbound.attacks`)
and return logits ``[n, num_classes]``. Any normalisation happens inside the
model, so attacks and bounds always work in pixel space.

Registry: :func:`create` builds a registered model by name,
:func:`available` lists the names and :func:`register` adds one.
:func:`init_params` and :func:`logits_fn` are the two helpers every caller
needs (parameters from a key; the plain ``x -> logits`` function the attacks
take).

Models:

* ``"lenet5"``: :class:`LeNet5`, the MNIST network of Ding et al. (2019,
  App. B.1; the network of Madry et al. 2017): 5x5 conv (32) + ReLU + 2x2 max
  pool, 5x5 conv (64) + ReLU + 2x2 max pool, fully connected 1024 + ReLU,
  fully connected ``num_classes``. ``widen_factor`` multiplies every width
  (Ding et al. §4.3 use 0.125 ... 4).

Convolution lowering (``impl``). XLA's CPU backend runs a plain NHWC forward
convolution at full speed, but the convolutions that automatic
differentiation emits for the input gradient (and the gradient of
``reduce_window`` max pooling) take a much slower path; a straightforward
Flax LeNet5 PGD ran at about 0.2-0.6x a PyTorch CPU loop here. With
``impl="fast"`` (default) the model uses two custom-VJP primitives:

* :func:`conv2d_same`: a stride-1 ``SAME`` convolution whose input gradient is
  written as another forward convolution (kernel flipped in space, in/out
  channels swapped) -- or, for inputs with at most 4 channels, as one matrix
  product followed by a 25-tap col2im sum -- and whose kernel gradient is
  one matrix product over im2col patches;
* :func:`relu_maxpool2`: ``relu`` fused with 2x2/2 max pooling, whose
  gradient routes each pooled cotangent to the first maximal entry of its
  window (PyTorch's and ``flax.linen.max_pool``'s convention).

Both are exact (the same function and a valid gradient, equal to autodiff's
wherever the max is unique); ``impl="xla"`` gives the plain
``lax.conv_general_dilated`` + ``reduce_window`` model for comparison. Both
primitives can be differentiated again in reverse mode (gradient penalties,
the evasive Carlini-Wagner attack) but not in forward mode (``jax.jvp``).
Parameters have the same layout under either ``impl``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbound import _checks

__all__ = [
    "LeNet5",
    "conv2d_same",
    "relu_maxpool2",
    "register",
    "create",
    "available",
    "init_params",
    "logits_fn",
]

_DN = ("NHWC", "HWIO", "NHWC")

# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class decorator adding a model constructor to the registry under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")

    def deco(cls):
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"name: a model named {name!r} is already registered")
        _REGISTRY[key] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword settings ``kwargs``."""
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name.lower()](**kwargs)


def init_params(model: nn.Module, key: Any, input_shape: Sequence[int]) -> Any:
    """Initial parameters of ``model`` for inputs shaped ``[n, *input_shape]``.

    Args:
      model: a Flax module.
      key: ``jax.random`` key.
      input_shape: shape of one example, e.g. ``(28, 28, 1)``.

    Returns:
      The parameter pytree (``{"params": ...}``) accepted by ``model.apply``.
    """
    _checks.check_key(key)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected positive sizes, got {input_shape!r}")
    return model.init(key, jnp.zeros((1, *shape), jnp.float32))


def logits_fn(model: nn.Module, params: Any) -> Callable[[jax.Array], jax.Array]:
    """The plain function ``x [n, ...] -> logits [n, k]`` the attacks and metrics take."""

    def fn(x):
        return model.apply(params, x)

    return fn


# ---------------------------------------------------------------------------
# Fast CPU lowering: custom-VJP convolution and fused relu + max pool
# ---------------------------------------------------------------------------


def _conv_xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


def _patches(x, k):
    """im2col: ``[n, H, W, C] -> [n, H, W, k*k*C]`` (tap-major, channel-minor)."""
    n, h, w, c = x.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return jnp.concatenate([xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=-1)


def _col2im(cols, k, c):
    """Adjoint of :func:`_patches`: ``[n, H, W, k*k*C] -> [n, H, W, C]``."""
    n, h, w, _ = cols.shape
    p = k // 2
    out = jnp.zeros((n, h + 2 * p, w + 2 * p, c), cols.dtype)
    t = 0
    for i in range(k):
        for j in range(k):
            out = out.at[:, i : i + h, j : j + w, :].add(cols[..., t * c : (t + 1) * c])
            t += 1
    return out[:, p : p + h, p : p + w, :]


@jax.custom_vjp
def conv2d_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 ``SAME`` cross-correlation ``[n,H,W,C] * [k,k,C,O] -> [n,H,W,O]``.

    Same values as ``lax.conv_general_dilated(x, w, (1, 1), "SAME")`` in NHWC /
    HWIO layout (odd square kernels only), with a custom reverse-mode rule
    that keeps every gradient on XLA's fast forward-convolution and GEMM paths
    (see the module docstring).
    """
    return _conv_xla(x, w)


def _conv_fwd(x, w):
    return _conv_xla(x, w), (x, w)


def _conv_bwd(res, g):
    x, w = res
    k, c, o = w.shape[0], w.shape[2], w.shape[3]
    if c <= 4:
        # Few input channels: one [n*H*W, O] x [O, k*k*C] product, then col2im.
        dx = _col2im(g @ w.reshape(k * k * c, o).T, k, c)
    else:
        # The adjoint of a SAME conv with an odd kernel is a SAME conv with the
        # kernel flipped in space and its channel axes swapped.
        dx = _conv_xla(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    dw = jnp.einsum("nhwk,nhwo->ko", _patches(x, k), g).reshape(w.shape)
    return dx, dw


conv2d_same.defvjp(_conv_fwd, _conv_bwd)


def _pool_max(z):
    n, h, w, c = z.shape
    return z.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def relu_maxpool2(z: jax.Array) -> jax.Array:
    """``maxpool_2x2(relu(z))`` for ``z [n, H, W, C]`` with even ``H, W``.

    The gradient goes to the first maximal entry of each 2x2 window (row-major
    order) when the pooled value is positive, and is zero otherwise (ReLU's
    derivative at 0 is taken as 0, as in ``jax.nn.relu``).
    """
    return jax.nn.relu(_pool_max(z))


def _pool_fwd(z):
    p = jax.nn.relu(_pool_max(z))
    return p, (z, p)


def _pool_bwd(res, g):
    z, p = res
    n, h, w, c = z.shape
    z6 = z.reshape(n, h // 2, 2, w // 2, 2, c)
    g = jnp.where(p > 0, g, jnp.zeros_like(g))
    eq = z6 == p[:, :, None, :, None, :]
    e00 = eq[:, :, 0, :, 0]
    e01 = eq[:, :, 0, :, 1] & ~e00
    taken = e00 | eq[:, :, 0, :, 1]
    e10 = eq[:, :, 1, :, 0] & ~taken
    taken = taken | eq[:, :, 1, :, 0]
    e11 = eq[:, :, 1, :, 1] & ~taken
    mask = jnp.stack([jnp.stack([e00, e01], axis=3), jnp.stack([e10, e11], axis=3)], axis=2)
    dz = jnp.where(mask, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    return (dz.reshape(z.shape),)


relu_maxpool2.defvjp(_pool_fwd, _pool_bwd)


def _relu_maxpool_xla(z):
    return nn.max_pool(jax.nn.relu(z), (2, 2), strides=(2, 2), padding="VALID")


# ---------------------------------------------------------------------------
# Layers and models
# ---------------------------------------------------------------------------


class ConvSame(nn.Module):
    """Stride-1 ``SAME`` convolution with bias; parameters laid out like ``nn.Conv``.

    Attributes:
      features: output channels.
      kernel_size: odd square kernel size.
      impl: ``"fast"`` (:func:`conv2d_same`) or ``"xla"`` (plain ``lax`` conv).
    """

    features: int
    kernel_size: int = 5
    impl: str = "fast"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        conv = conv2d_same if self.impl == "fast" else _conv_xla
        return conv(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


def _width(base: int, factor: float) -> int:
    return max(1, int(round(base * factor)))


@register("lenet5")
class LeNet5(nn.Module):
    """LeNet5 of Ding et al. (2019, App. B.1) with a widen factor.

    ``conv5x5(32w) - ReLU - maxpool2 - conv5x5(64w) - ReLU - maxpool2 -
    fc(1024w) - ReLU - fc(num_classes)``, ``SAME`` padding, where ``w`` is
    ``widen_factor`` (widths rounded, at least 1).

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies the channels and hidden units (> 0).
      mean: per-channel (or scalar) mean subtracted inside the model.
      std: per-channel (or scalar) standard deviation divided inside the model.
        Ding et al. feed MNIST pixels unchanged: the defaults ``0`` and ``1``.
      impl: ``"fast"`` (custom-VJP CPU lowering, see the module docstring) or
        ``"xla"`` (plain ``lax`` convolution and ``reduce_window`` pooling).

    Input: images ``[n, H, W, C]`` (pixels in ``[0, 1]`` by convention) with
    ``H`` and ``W`` divisible by 4. Output: logits ``[n, num_classes]``.
    """

    num_classes: int = 10
    widen_factor: float = 1.0
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "fast"

    def _validate(self, x):
        _checks.check_int(self.num_classes, "num_classes", low=2)
        _checks.check_scalar(self.widen_factor, "widen_factor", low=0.0, low_inclusive=False)
        if self.impl not in ("fast", "xla"):
            raise ValueError(f"impl: must be 'fast' or 'xla', got {self.impl!r}")
        if x.ndim != 4:
            raise ValueError(f"x: expected images shaped [n, H, W, C], got shape {tuple(x.shape)}")
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(f"x: height and width must be divisible by 4, got {tuple(x.shape[1:3])}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x: expected floating-point images, got dtype {x.dtype}")
        std = np.asarray(self.std, dtype=np.float64)
        if not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise ValueError(f"std: must be positive and finite, got {self.std!r}")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        self._validate(x)
        w = float(self.widen_factor)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        h = (x - mean) / std
        pool = relu_maxpool2 if self.impl == "fast" else _relu_maxpool_xla
        h = pool(ConvSame(_width(32, w), 5, self.impl, name="conv1")(h))
        h = pool(ConvSame(_width(64, w), 5, self.impl, name="conv2")(h))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(nn.Dense(_width(1024, w), name="fc1")(h))
        return nn.Dense(self.num_classes, name="fc2")(h)
