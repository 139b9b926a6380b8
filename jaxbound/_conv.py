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

Stride-1 gradients call :func:`conv` again, so second derivatives (the
gradient of a CROWN bound, whose backward pass transposes each convolution)
stay on the same path.

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


def _fwd(x, w, strides, padding):
    return _xla(x, w, strides, padding), (x, w)


def _bwd(strides, padding, res, g):
    x, w = res
    kh, kw = w.shape[:2]
    h_in, w_in = x.shape[1:3]
    h_out, w_out = g.shape[1:3]
    (plh, phh), (plw, phw) = padding
    sh, sw = strides
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    # dx: correlate the stride-dilated cotangent (length s (h - 1) + 1) with the flipped kernel; the padding
    # makes the output exactly the input's size (derivation in the module docstring).
    pad_dx = ((kh - 1 - plh, h_in - sh * (h_out - 1) - 1 + plh), (kw - 1 - plw, w_in - sw * (w_out - 1) - 1 + plw))
    if (sh, sw) == (1, 1):
        dx = conv(g, wt, (1, 1), pad_dx)
    else:
        dx = _xla(g, wt, (1, 1), pad_dx, lhs_dilation=(sh, sw))
    # dw: images as features, channels as the batch; the cotangent is the kernel.
    xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0))).transpose(3, 1, 2, 0)  # [C, Hp, Wp, n]
    gk = g.transpose(1, 2, 0, 3)  # [h, w, n, O]
    if (sh, sw) == (1, 1):  # output exactly [C, kh, kw, O]
        dw = conv(xp, gk, (1, 1), ((0, 0), (0, 0)))
    else:
        dw = _xla(xp, gk, (1, 1), "VALID", rhs_dilation=(sh, sw))
    dw = dw[:, :kh, :kw, :].transpose(1, 2, 0, 3)  # [C, kh, kw, O] -> [kh, kw, C, O]
    return dx.astype(x.dtype), dw.astype(w.dtype)


conv.defvjp(_fwd, _bwd)


_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def from_params(x, w, params: dict):
    """:func:`conv` for a ``conv_general_dilated`` equation's ``params`` when it takes them, else ``None``.

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
            or params.get("preferred_element_type") is not None or jnp.result_type(x) != jnp.result_type(w)):
        return None
    strides = tuple(int(s) for s in params["window_strides"])
    padding = explicit_padding(params["padding"], x.shape, w.shape, strides)
    if not supports(x.shape, w.shape, strides, padding):
        return None
    return conv(x, w, strides, padding)
