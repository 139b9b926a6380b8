"""A 2-D convolution whose reverse-mode gradients stay on XLA's CPU fast path.

XLA's CPU backend runs a plain ``NHWC``/``HWIO`` forward convolution on its
fast library path, but the convolutions that automatic differentiation emits
for the kernel gradient (and, for some shapes, the input gradient) take a
generic path -- and inside a loop (``lax.scan``/``fori_loop``, e.g. a
training chunk) the layout XLA then picks makes them 10-20x slower than the
same gradient at the top level (a one-off profile of the ``ibp_small`` CNN:
the kernel gradient of its second convolution 25.9 ms against 1.5 ms for
the form below, batch 50; the training benchmark is ``benchmarks/training.py``). :func:`conv` has the same value as
``lax.conv_general_dilated`` and writes both gradients as forward
convolutions in that layout:

* input gradient: the cotangent, dilated by the stride, correlated with the
  kernel flipped in space and its channel axes swapped
  (``dx = g_dil ⋆ rot180(w)ᵀ``);
* kernel gradient: the padded input with batch and channel axes exchanged
  (``[C, H, W, n]``) correlated with the cotangent as the kernel
  (``[h, w, n, O]``, dilated by the stride), cropped to the kernel size:
  ``dw[a, b, c, o] = Σ_{n,i,j} x_pad[n, s·i + a, s·j + b, c] g[n, i, j, o]``.

The two gradients are themselves functions with custom gradients
(:func:`conv_transpose`, :func:`kernel_grad`): the three bilinear maps are
each other's transposes, so derivatives of any order (the gradient of a
CROWN bound, whose backward pass applies the transposed convolutions) take
the same forward-convolution forms instead of XLA's differentiation of the
gradient formulas (for the kernel gradient of the transpose, that
correlated the padded cotangent with a kernel as large as the image: 334 ms
against 118 ms for the form here in a one-off profile of ``ibp_small``'s
second convolution at CROWN-IBP's 900 rows, one core; no benchmark script
times CROWN-IBP training yet).

Private: :mod:`jaxbound.models` and :mod:`jaxbound.certify` use it whole.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


def _xla(x, w, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                    dimension_numbers=_DN)


def supports(x_shape, w_shape, strides, padding) -> bool:
    """Whether :func:`conv` takes the convolution (explicit padding within ``[0, k - 1]`` on each side)."""
    if len(x_shape) != 4 or len(w_shape) != 4 or x_shape[-1] != w_shape[2]:
        return False
    for (lo, hi), k in zip(padding, w_shape[:2]):
        if not (0 <= lo <= k - 1 and 0 <= hi <= k - 1):
            return False
    return all(int(s) >= 1 for s in strides)


def explicit_padding(padding, x_shape, w_shape, strides) -> Padding:
    """``"SAME"``/``"VALID"`` or pairs as explicit ``((lo, hi), (lo, hi))`` integer pairs."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding)
    else:
        pads = padding
    return tuple((int(lo), int(hi)) for lo, hi in pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """``lax.conv_general_dilated(x, w, strides, padding)`` in ``NHWC``/``HWIO`` layout.

    Args:
      x: ``[n, H, W, C]`` input.
      w: ``[kh, kw, C, O]`` kernel.
      strides: ``(sh, sw)`` positive integers (static).
      padding: ``((lo, hi), (lo, hi))`` with ``0 <= lo, hi <= k - 1`` (static;
        see :func:`supports` and :func:`explicit_padding`).

    Returns:
      ``[n, h, w, O]``, ``h = (H + lo + hi - kh) // sh + 1``.
    """
    return _xla(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return _xla(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, res, g):
    x, w = res
    return (conv_transpose(g, w, strides, padding, x.shape[1:3]).astype(x.dtype),
            kernel_grad(x, g, strides, padding, w.shape[:2]).astype(w.dtype))


conv.defvjp(_conv_fwd, _conv_bwd)


def _transpose_value(g, w, strides, padding, in_hw):
    kh, kw = w.shape[:2]
    h_in, w_in = in_hw
    h_out, w_out = g.shape[1:3]
    (plh, _), (plw, _) = padding
    sh, sw = strides
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    # correlate the stride-dilated cotangent (length s (h - 1) + 1) with the flipped kernel; the padding makes
    # the output exactly the input's size (derivation in the module docstring)
    pad_dx = ((kh - 1 - plh, h_in - sh * (h_out - 1) - 1 + plh), (kw - 1 - plw, w_in - sw * (w_out - 1) - 1 + plw))
    return _xla(g, wt, (1, 1), pad_dx, lhs_dilation=(sh, sw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(g: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding,
                   in_hw: tuple[int, int]) -> jax.Array:
    """The input gradient of :func:`conv`: ``g [n, h, w, O] -> [n, H, W, C]`` (``in_hw = (H, W)``, static).

    Linear in ``g``, with ``<conv_transpose(g, w), r> = <g, conv(r, w)>``;
    its own gradients are therefore :func:`conv` (for ``g``) and
    :func:`kernel_grad` at the input ``r`` (for ``w``) -- the gradient of a
    CROWN bound, whose backward pass applies this transpose, takes them.
    """
    return _transpose_value(g, w, strides, padding, in_hw)


def _transpose_fwd(g, w, strides, padding, in_hw):
    return _transpose_value(g, w, strides, padding, in_hw), (g, w)


def _transpose_bwd(strides, padding, in_hw, res, r):
    g, w = res
    return (conv(r, w, strides, padding).astype(g.dtype),
            kernel_grad(r, g, strides, padding, w.shape[:2]).astype(w.dtype))


conv_transpose.defvjp(_transpose_fwd, _transpose_bwd)


def _kernel_value(x, g, strides, padding, k):
    kh, kw = k
    (plh, phh), (plw, phw) = padding
    sh, sw = strides
    # images as features, channels as the batch; the cotangent is the kernel
    xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0))).transpose(3, 1, 2, 0)  # [C, Hp, Wp, n]
    gk = g.transpose(1, 2, 0, 3)  # [h, w, n, O]
    dw = _xla(xp, gk, (1, 1), "VALID", rhs_dilation=(sh, sw))
    return dw[:, :kh, :kw, :].transpose(1, 2, 0, 3)  # [C, kh, kw, O] -> [kh, kw, C, O]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def kernel_grad(x: jax.Array, g: jax.Array, strides: tuple[int, int], padding: Padding,
                k: tuple[int, int]) -> jax.Array:
    """The kernel gradient of :func:`conv`: ``x [n, H, W, C]``, ``g [n, h, w, O] -> [kh, kw, C, O]`` (``k = (kh, kw)``).

    ``dw[a, b, c, o] = sum_{n,i,j} x_pad[n, s i + a, s j + b, c] g[n, i, j, o]``;
    bilinear, with ``<kernel_grad(x, g), R> = <g, conv(x, R)>``, so its
    gradients are :func:`conv_transpose` (for ``x``) and :func:`conv` (for
    ``g``).
    """
    return _kernel_value(x, g, strides, padding, k)


def _kernel_fwd(x, g, strides, padding, k):
    return _kernel_value(x, g, strides, padding, k), (x, g)


def _kernel_bwd(strides, padding, k, res, r):
    x, g = res
    return (conv_transpose(g, r, strides, padding, x.shape[1:3]).astype(x.dtype),
            conv(x, r, strides, padding).astype(g.dtype))


kernel_grad.defvjp(_kernel_fwd, _kernel_bwd)


_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _plain(x_shape, w, params: dict, dtype):
    """``(strides, padding)`` when :func:`conv` takes a ``conv_general_dilated`` equation's ``params``, else ``None``.

    Taken on the CPU backend only (accelerators keep XLA's own convolutions,
    as ``impl="auto"`` of the models): ``NHWC``/``HWIO`` layout, no
    dilation, one feature and batch group, default precision and output
    type, padding within :func:`supports`.
    """
    if jax.default_backend() != "cpu":
        return None
    if (params.get("dimension_numbers") != _NHWC_HWIO or tuple(params.get("lhs_dilation", ())) != (1, 1)
            or tuple(params.get("rhs_dilation", ())) != (1, 1) or params.get("feature_group_count") != 1
            or params.get("batch_group_count") != 1 or params.get("precision") is not None
            or params.get("preferred_element_type") is not None or dtype != jnp.result_type(w)):
        return None
    strides = tuple(int(s) for s in params["window_strides"])
    padding = explicit_padding(params["padding"], x_shape, w.shape, strides)
    if not supports(x_shape, w.shape, strides, padding):
        return None
    return strides, padding


def from_params(x, w, params: dict):
    """:func:`conv` for a ``conv_general_dilated`` equation's ``params`` when it takes them, else ``None``.

    See :func:`_plain` for the conditions.
    """
    plain = _plain(x.shape, w, params, jnp.result_type(x))
    return None if plain is None else conv(x, w, *plain)


def transpose_from_params(g, w, params: dict, x_shape):
    """:func:`conv_transpose` of ``g [m, *out]`` for an equation with input shape ``x_shape``, or ``None``.

    ``m`` rows of cotangents at once (CROWN's specifications): only the
    input gradient is formed, where the vector-Jacobian product of
    :func:`conv` would also form (and, under differentiation, carry) the
    kernel gradient of every row.
    """
    plain = _plain(tuple(x_shape), w, params, jnp.result_type(g))
    if plain is None or g.shape[0] * x_shape[0] == 0:
        return None
    m, out_shape = g.shape[0], g.shape[1:]
    dx = conv_transpose(g.reshape((m * out_shape[0],) + tuple(out_shape[1:])), w, *plain, tuple(x_shape[1:3]))
    return dx.reshape((m,) + tuple(x_shape))
