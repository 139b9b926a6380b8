"""The convolution with forward-convolution gradients (jaxbound._conv, impl="fast" of the CNNs): the same value,
gradient and second derivatives as lax.conv_general_dilated (the reference) over random shapes, strides and paddings;
jit == eager; batch size 1; every CNN gives the same logits and parameter/input gradients under impl fast and xla;
certify routes its convolutions through it with unchanged bounds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxbound import _conv, certify, models

DN = ("NHWC", "HWIO", "NHWC")


def _cases(rng, count):
    for _ in range(count):
        k = [int(v) for v in rng.integers(1, 5, 2)]
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        pad = tuple((int(rng.integers(0, kk)), int(rng.integers(0, kk))) for kk in k)
        c, o, n = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        h, w = k[0] + int(rng.integers(0, 6)), k[1] + int(rng.integers(0, 6))
        yield (n, h, w, c), (k[0], k[1], c, o), s, pad


def test_value_gradients_and_second_derivatives_equal_lax(rng):
    with jax.enable_x64(True):
        for xs, ws, s, pad in _cases(rng, 8):
            x = jnp.asarray(rng.normal(size=xs))
            w = jnp.asarray(rng.normal(size=ws))
            assert _conv.supports(xs, ws, s, pad)

            def ref(x, w, s=s, pad=pad):
                return lax.conv_general_dilated(x, w, s, pad, dimension_numbers=DN)

            def new(x, w, s=s, pad=pad):
                return _conv.conv(x, w, s, pad)

            y = ref(x, w)
            np.testing.assert_allclose(new(x, w), y, rtol=0, atol=1e-12)
            np.testing.assert_allclose(jax.jit(new)(x, w), y, rtol=0, atol=1e-12)
            ct = jnp.asarray(rng.normal(size=y.shape))
            for a, b in zip(jax.vjp(ref, x, w)[1](ct), jax.vjp(new, x, w)[1](ct)):
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
            v = jnp.asarray(rng.normal(size=xs))

            def second(f):
                # both first-order gradients, differentiated again (the gradient of a CROWN bound)
                return lambda w, ct: (jnp.vdot(jax.vjp(lambda x: f(x, w), x)[1](ct)[0], v)
                                      + jnp.vdot(jax.vjp(lambda w: f(x, w), w)[1](ct)[0], w ** 2))

            for a, b in zip(jax.grad(second(ref), (0, 1))(w, ct), jax.grad(second(new), (0, 1))(w, ct)):
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-11)


def test_third_derivatives_equal_lax(rng):
    """conv, conv_transpose and kernel_grad are each other's gradients: differentiating a second-order
    expression once more (every custom rule, each applied to the others) matches lax's own differentiation."""
    with jax.enable_x64(True):
        for xs, ws, s, pad in _cases(rng, 2):
            x, w = jnp.asarray(rng.normal(size=xs)), jnp.asarray(rng.normal(size=ws))
            ys = lax.conv_general_dilated(x, w, s, pad, dimension_numbers=DN).shape
            ct = jnp.asarray(rng.normal(size=ys))
            v, u = jnp.asarray(rng.normal(size=xs)), jnp.asarray(rng.normal(size=ws))
            p, q, r = (jnp.asarray(rng.normal(size=z)) for z in (xs, ws, ys))

            def third(f):
                def s2(x, w, ct):
                    dx, dw = jax.vjp(f, x, w)[1](ct)
                    return jnp.vdot(dx, v) + jnp.vdot(dw, u) + jnp.vdot(f(x, w), ct) ** 2

                def s3(x, w, ct):
                    gx, gw, gct = jax.grad(s2, (0, 1, 2))(x, w, ct)
                    return jnp.vdot(gx, p) + jnp.vdot(gw, q) + jnp.vdot(gct, r)

                return jax.grad(s3, (0, 1, 2))(x, w, ct)

            ref = third(lambda x, w, s=s, pad=pad: lax.conv_general_dilated(x, w, s, pad, dimension_numbers=DN))
            new = third(lambda x, w, s=s, pad=pad: _conv.conv(x, w, s, pad))
            for a, b in zip(ref, new):
                np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-9)


def test_transpose_from_params_is_the_input_vjp_of_many_rows(rng):
    """certify's CROWN pass transposes a convolution for m specification rows at once: the same as the
    vector-Jacobian product of lax's convolution row by row, at batch 1 and with rows of zeros."""
    for n in (1, 3):
        x = jnp.asarray(rng.normal(size=(n, 9, 8, 2)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 2, 2, 4)), jnp.float32)
        for s, padding in (((1, 1), "VALID"), ((2, 1), ((1, 2), (0, 1)))):
            def ref(z, s=s, padding=padding):
                return lax.conv_general_dilated(z, w, s, padding, dimension_numbers=DN)

            y, pull = jax.vjp(ref, x)
            g = jnp.asarray(rng.normal(size=(5,) + y.shape), jnp.float32).at[2].set(0.0)
            params = jax.make_jaxpr(ref)(x).jaxpr.eqns[0].params
            got = _conv.transpose_from_params(g, w, params, x.shape)
            want = jnp.stack([pull(gi)[0] for gi in g])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(got[2], 0.0)


def test_supports_and_explicit_padding():
    assert _conv.explicit_padding("VALID", (1, 9, 9, 1), (3, 3, 1, 1), (2, 2)) == ((0, 0), (0, 0))
    assert _conv.explicit_padding("SAME", (1, 8, 8, 1), (3, 3, 1, 1), (1, 1)) == ((1, 1), (1, 1))
    assert not _conv.supports((1, 8, 8, 1), (3, 3, 1, 1), (1, 1), ((3, 0), (0, 0)))  # padding beyond k - 1
    assert not _conv.supports((1, 8, 8, 2), (3, 3, 1, 1), (1, 1), ((0, 0), (0, 0)))  # channel mismatch
    x, w = jnp.ones((1, 5, 5, 1)), jnp.ones((2, 2, 1, 1))
    dilated = {"window_strides": (1, 1), "padding": ((0, 0), (0, 0)), "lhs_dilation": (1, 1), "rhs_dilation": (2, 2),
               "dimension_numbers": lax.conv_dimension_numbers(x.shape, w.shape, DN), "feature_group_count": 1,
               "batch_group_count": 1, "precision": None, "preferred_element_type": None}
    assert _conv.from_params(x, w, dilated) is None
    plain = dict(dilated, rhs_dilation=(1, 1))
    np.testing.assert_array_equal(_conv.from_params(x, w, plain), lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                                                           dimension_numbers=DN))


@pytest.mark.parametrize("kw, match", [(dict(padding=((4, 0), (0, 0))), "padding"),
                                       (dict(padding=((0, 0),)), "padding"), (dict(padding="SAME"), "padding"),
                                       (dict(stride=0), "stride"), (dict(kernel_size=0), "kernel_size"),
                                       (dict(features=0), "features")])
def test_conv2d_bad_settings_name_the_argument(kw, match):
    layer = models.Conv2d(**{**dict(features=2, kernel_size=3), **kw})
    with pytest.raises(ValueError, match=f"^{match}"):
        layer.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))


def test_certify_keeps_xla_convolutions_off_cpu(monkeypatch):
    x, w = jnp.ones((1, 5, 5, 1)), jnp.ones((2, 2, 1, 1))
    params = {"window_strides": (1, 1), "padding": ((0, 0), (0, 0)), "lhs_dilation": (1, 1), "rhs_dilation": (1, 1),
              "dimension_numbers": lax.conv_dimension_numbers(x.shape, w.shape, DN), "feature_group_count": 1,
              "batch_group_count": 1, "precision": None, "preferred_element_type": None}
    assert _conv.from_params(x, w, params) is not None
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _conv.from_params(x, w, params) is None


CNNS = {"smallcnn": (dict(widen_factor=0.25), (20, 20, 1)), "wong_kolter": ({}, (12, 12, 1)),
        "wideresnet": (dict(depth=10, widen_factor=0.5), (8, 8, 3)), "ibp_small": (dict(widen_factor=0.5), (12, 12, 1)),
        "ibp_medium": (dict(widen_factor=0.25), (17, 17, 2))}


@pytest.mark.parametrize("name, n", [pytest.param(name, 1 if name == "wideresnet" else 2, marks=pytest.mark.slow)
                                     for name in ("wideresnet", "ibp_medium", "smallcnn")]
                         + [(name, 2) for name in sorted(CNNS) if name not in ("wideresnet", "ibp_medium", "smallcnn")])
def test_models_fast_equals_xla(name, n, rng):
    kw, shape = CNNS[name]
    fast, plain = models.create(name, impl="fast", **kw), models.create(name, impl="xla", **kw)
    params = models.init_params(plain, shape, key=jax.random.key(1))
    assert jax.tree.structure(params) == jax.tree.structure(models.init_params(fast, shape, key=jax.random.key(1)))
    x = jnp.asarray(rng.uniform(0, 1, size=(n, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, n))

    def loss(m):
        return lambda p, x: -jnp.mean(jax.nn.log_softmax(m.apply(p, x))[jnp.arange(n), y])

    np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
    gf = jax.grad(loss(fast), (0, 1))(params, x)
    gp = jax.grad(loss(plain), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gp)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # inside a loop (a training chunk) and jitted: the same gradient
    looped = jax.jit(lambda p, x: lax.fori_loop(0, 2, lambda i, g: jax.grad(loss(fast))(p, x), gf[0]))(params, x)
    for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(gp)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_certify_bounds_and_their_gradients_unchanged(rng, monkeypatch):
    """IBP and CROWN bounds (and the parameter gradient of a CROWN-IBP margin) with the routed convolution
    equal those of the plain primitive."""
    plain = models.create("ibp_small", widen_factor=0.5, impl="xla")
    params = models.init_params(plain, (12, 12, 1), key=jax.random.key(2))
    x = jnp.asarray(rng.uniform(0, 1, size=(2, 12, 12, 1)).astype(np.float32))
    y = jnp.asarray([1, 4])

    routed = _conv.from_params

    def margin(p, method, route):
        # route=False: the conv primitive bound as is (the reference)
        monkeypatch.setattr(_conv, "from_params", routed if route else (lambda *a: None))
        return certify.margin_lower(lambda z: plain.apply(p, z), x, y, eps=0.05, method=method)

    for method in ("ibp", "crown-ibp"):  # crown runs the same backward pass as crown-ibp
        np.testing.assert_allclose(margin(params, method, True), margin(params, method, False), rtol=1e-5, atol=1e-5)
    g1 = jax.grad(lambda p: margin(p, "crown-ibp", True).sum())(params)
    g0 = jax.grad(lambda p: margin(p, "crown-ibp", False).sum())(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
