"""Independent NumPy (float64) IBP and CROWN for sequential ReLU networks, the reference of tests/test_certify.py.

A network is a list of layers acting on one flattened example:
``("dense", W [d_in, d_out], b [d_out])``, ``("conv", W [kh, kw, c_in/groups, c_out], b, in_hwc, stride,
padding, dilation, groups)`` (NHWC/HWIO cross-correlation, written here with explicit loops and turned into
a dense matrix) and ``("relu",)``. Everything is an explicit matrix, so CROWN is the textbook algorithm of
Zhang et al. (2018): for every ReLU input, back-substitute the identity through the earlier layers with the
chord upper relaxation and the adaptive lower slope (1 when ``u >= -l``), concretise over the input box
(ℓ∞: ``A c - |A| r``) or also over the ℓ2 ball (``A x - eps ||A||_2``, keep the larger), and intersect with
IBP. The margin specification ``e_y - e_j`` is multiplied into the trailing affine layers before
concretisation (for IBP at the last ReLU's output box).
"""

from __future__ import annotations

import numpy as np


def conv_np(x, w, *, stride=1, padding=((0, 0), (0, 0)), dilation=1, groups=1):
    """``x [n, H, W, C] * w [kh, kw, C/groups, O]`` by explicit loops over the kernel taps."""
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    xp = np.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho = (xp.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    wo = (xp.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, ho, wo, o))
    og = o // groups
    for g in range(groups):
        xs = xp[..., g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation, j * dilation
                patch = xs[:, r0:r0 + stride * (ho - 1) + 1:stride, c0:c0 + stride * (wo - 1) + 1:stride, :]
                out[..., g * og:(g + 1) * og] += patch @ w[i, j, :, g * og:(g + 1) * og]
    return out


def as_affine(layer):
    """``(M [d_out, d_in], b [d_out])`` of a dense or conv layer on flattened (row-major NHWC) examples."""
    if layer[0] == "dense":
        return np.asarray(layer[1], np.float64).T, np.asarray(layer[2], np.float64)
    _, w, b, hwc, stride, padding, dilation, groups = layer
    d = int(np.prod(hwc))
    basis = np.eye(d).reshape((d,) + tuple(hwc))
    cols = conv_np(basis, np.asarray(w, np.float64), stride=stride, padding=padding, dilation=dilation,
                   groups=groups)
    m = cols.reshape(d, -1).T
    bias = np.broadcast_to(np.asarray(b, np.float64), cols.shape[1:]).reshape(-1)
    return m, bias


def to_matrices(layers):
    """The layers as ``("affine", M, b)`` / ``("relu",)`` (convert once, reuse for every example; idempotent)."""
    return [layer if layer[0] in ("relu", "affine") else ("affine",) + as_affine(layer) for layer in layers]


def _ibp_affine(m, b, lo, hi):
    c, r = (lo + hi) / 2, (hi - lo) / 2
    return m @ c + b - np.abs(m) @ r, m @ c + b + np.abs(m) @ r


def _concretize(a, x, lo, hi, eps, norm):
    """Lower bound of ``a @ x'`` per row of ``a [m, d]`` over the region."""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    box = a @ c - np.abs(a) @ r
    if norm == "linf":
        return box
    return np.maximum(box, a @ x - eps * np.linalg.norm(a, axis=1))


def _relax(lo, hi):
    act, ina = lo >= 0, hi <= 0
    uns = ~(act | ina)
    den = np.where(uns, hi - lo, 1.0)
    su = np.where(uns, hi / den, act * 1.0)
    tu = np.where(uns, -su * lo, 0.0)
    sl = np.where(uns, (hi >= -lo) * 1.0, act * 1.0)
    return sl, su, tu


def _back(net, upto, spec, pre, x, lo, hi, eps, norm):
    """Lower bound of ``spec @ z_upto`` (``z_upto``: the value after layer ``upto - 1``)."""
    a, bias = spec.copy(), np.zeros(spec.shape[0])
    for k in range(upto - 1, -1, -1):
        layer = net[k]
        if layer[0] == "affine":
            bias += a @ layer[2]
            a = a @ layer[1]
        else:
            sl, su, tu = _relax(*pre[k])
            ap, an = np.maximum(a, 0), np.minimum(a, 0)
            bias += an @ tu
            a = ap * sl + an * su
    return bias + _concretize(a, x, lo, hi, eps, norm)


def _boxes(net, x, lo, hi, eps, norm, crown, crown_neurons):
    """Boxes of every layer's input (``pre[k]``) and of the output."""
    pre, box = {}, (lo, hi)
    for k, layer in enumerate(net):
        if layer[0] == "affine":
            box = _ibp_affine(layer[1], layer[2], *box)
            continue
        d = box[0].shape[0]
        if crown and d <= crown_neurons:
            low = _back(net, k, np.eye(d), pre, x, lo, hi, eps, norm)
            up = -_back(net, k, -np.eye(d), pre, x, lo, hi, eps, norm)
            nlo = np.maximum(box[0], low)
            box = (nlo, np.maximum(np.minimum(box[1], up), nlo))
        pre[k] = box
        box = (np.maximum(box[0], 0), np.maximum(box[1], 0))
    return pre, box


def spec_lower(layers, x, spec, *, eps, norm="linf", method="crown", input_bounds=(0.0, 1.0),
               crown_neurons=1024):
    """Lower bounds of ``spec [m, C] @ f(x')`` for one flattened example ``x [d]``.

    ReLU inputs wider than ``crown_neurons`` keep their IBP box (as in jaxbound.certify).
    """
    net = to_matrices(layers)
    x = np.asarray(x, np.float64).reshape(-1)
    lo, hi = x - eps, x + eps
    if input_bounds is not None:
        lo, hi = np.maximum(lo, input_bounds[0]), np.minimum(hi, input_bounds[1])
    pre, _ = _boxes(net, x, lo, hi, eps, norm, method == "crown", crown_neurons)
    if method != "ibp":
        return _back(net, len(net), np.asarray(spec, np.float64), pre, x, lo, hi, eps, norm)
    last = max([k for k, layer in enumerate(net) if layer[0] == "relu"], default=-1)
    a, bias = np.asarray(spec, np.float64), 0.0
    for k in range(len(net) - 1, last, -1):
        bias = bias + a @ net[k][2]
        a = a @ net[k][1]
    if last < 0:
        return bias + _concretize(a, x, lo, hi, eps, norm)
    zl, zu = np.maximum(pre[last][0], 0), np.maximum(pre[last][1], 0)
    c, r = (zl + zu) / 2, (zu - zl) / 2
    return bias + a @ c - np.abs(a) @ r


def margin_lower(layers, x, y, *, eps, norm="linf", method="crown", input_bounds=(0.0, 1.0), crown_neurons=1024):
    """``[n, C]`` margin lower bounds, one example at a time."""
    k = _n_out(layers)
    layers = to_matrices(layers)
    out = []
    for xi, yi in zip(x, y):
        spec = np.eye(k)[yi][None, :] - np.eye(k)
        out.append(spec_lower(layers, xi, spec, eps=eps, norm=norm, method=method, input_bounds=input_bounds,
                              crown_neurons=crown_neurons))
    return np.asarray(out)


def logit_bounds(layers, x, *, eps, norm="linf", method="crown", input_bounds=(0.0, 1.0)):
    """``([n, C], [n, C])`` logit bounds, one example at a time."""
    k = _n_out(layers)
    layers = to_matrices(layers)
    spec = np.concatenate([np.eye(k), -np.eye(k)])
    lbs = np.asarray([spec_lower(layers, xi, spec, eps=eps, norm=norm, method=method, input_bounds=input_bounds)
                      for xi in x])
    return lbs[:, :k], -lbs[:, k:]


def _n_out(layers):
    last = [layer for layer in layers if layer[0] != "relu"][-1]
    return np.asarray(last[2]).shape[-1]


def forward(layers, x):
    """Plain forward pass on flattened examples ``x [n, d]``."""
    z = np.asarray(x, np.float64).reshape(len(x), -1)
    for layer in to_matrices(layers):
        z = np.maximum(z, 0) if layer[0] == "relu" else z @ layer[1].T + layer[2]
    return z
