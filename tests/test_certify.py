"""jaxbound.certify: soundness against sampled points, corners and PGD; exactness on affine models; CROWN vs
IBP vs α-CROWN; equality with the independent NumPy implementation (tests/_certify_ref.py); jit == eager."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxbound import attacks, certify, models
import _certify_ref as ref

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------
# Small networks shared by JAX and the NumPy reference
# ---------------------------------------------------------------------------


def mlp_layers(rng, d=6, hidden=(8, 7), k=4, scale=1.0):
    layers, prev = [], d
    for h in hidden:
        layers += [("dense", scale * rng.normal(size=(prev, h)) / np.sqrt(prev), 0.1 * rng.normal(size=h)), ("relu",)]
        prev = h
    layers.append(("dense", rng.normal(size=(prev, k)) / np.sqrt(prev), 0.1 * rng.normal(size=k)))
    return layers


def cnn_layers(rng, hwc=(6, 6, 2), k=3):
    """conv 3x3 stride 2 pad 1 -> relu -> conv 2x2 dilation 2 groups 2 -> relu -> dense -> relu -> dense."""
    w1 = rng.normal(size=(3, 3, 2, 4)) / 4
    h1 = (3, 3, 4)
    w2 = rng.normal(size=(2, 2, 2, 4)) / 3
    h2 = (1, 1, 4)
    return [("conv", w1, 0.1 * rng.normal(size=4), hwc, 2, ((1, 1), (1, 1)), 1, 1), ("relu",),
            ("conv", w2, 0.1 * rng.normal(size=4), h1, 1, ((0, 0), (0, 0)), 2, 2), ("relu",),
            ("dense", rng.normal(size=(int(np.prod(h2)), 5)) / 2, 0.1 * rng.normal(size=5)), ("relu",),
            ("dense", rng.normal(size=(5, k)) / 2, 0.1 * rng.normal(size=k))]


def jax_fn(layers, in_shape):
    """The same network as a JAX function of ``x [n, *in_shape]`` (float32 weights)."""
    layers = [tuple(jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v for v in layer)
              for layer in layers]

    def f(x):
        z = x.reshape((x.shape[0],) + tuple(in_shape))
        for layer in layers:
            if layer[0] == "relu":
                z = jax.nn.relu(z)
            elif layer[0] == "dense":
                z = z.reshape(z.shape[0], -1) @ layer[1] + layer[2]
            else:
                _, w, b, hwc, stride, pad, dil, groups = layer
                z = lax.conv_general_dilated(z.reshape((z.shape[0],) + tuple(hwc)), w, (stride, stride), pad,
                                             rhs_dilation=(dil, dil), feature_group_count=groups,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
        return z

    return f


def flax_model(name, rng_seed=0):
    if name == "mlp":
        m, shape = models.MLP(num_classes=4, hidden=(12, 10)), (3, 3, 1)
    elif name.startswith("lenet"):
        m, shape = models.LeNet5(num_classes=3, widen_factor=0.0625, impl=name.split("-")[1]), (8, 8, 1)
    else:
        m, shape = models.SmallCNN(num_classes=3, widen_factor=0.125), (16, 16, 1)
    params = models.init_params(m, shape, key=jax.random.key(rng_seed))
    return m, params, shape


def briefly_trained(m, params, shape, steps=15):
    """A few Adam steps on a random labelling, so weights are not at their initialisation."""
    x = jnp.asarray(RNG.uniform(0, 1, (32,) + shape), jnp.float32)
    y = jnp.asarray(RNG.integers(0, 3, 32))
    tx = optax.adam(1e-2)
    state = tx.init(params)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(m.apply(p, x), y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params


def perturbations(x, eps, norm, *, n_draws, lo=0.0, hi=1.0):
    """Random points and random corners of the ε-ball (ℓ∞) or random points on/inside the ℓ2 ball, clipped."""
    if norm == "linf":
        u = RNG.uniform(-eps, eps, (n_draws,) + x.shape)
        corners = RNG.choice([-eps, eps], (n_draws,) + x.shape)
        d = np.concatenate([u, corners])
    else:
        g = RNG.normal(size=(2 * n_draws,) + x.shape)
        nrm = np.sqrt((g.reshape(2 * n_draws, x.shape[0], -1) ** 2).sum(-1))
        d = eps * g / nrm.reshape(nrm.shape + (1,) * (x.ndim - 1))
        d[:n_draws] *= RNG.uniform(0, 1, (n_draws, x.shape[0]) + (1,) * (x.ndim - 1))
    pts = np.clip(x[None] + d, lo, hi)
    if norm == "l2":  # clipping to the box keeps points inside the ball
        assert np.all(np.sqrt(((pts - x[None]) ** 2).reshape(pts.shape[0], x.shape[0], -1).sum(-1)) <= eps + 1e-6)
    return pts.astype(np.float32)


def eval_many(f, pts):
    return np.stack([np.asarray(f(p)) for p in pts])


# ---------------------------------------------------------------------------
# Equality with the NumPy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("net, norm", [("mlp", "linf"), ("mlp", "l2"), ("cnn", "linf"),
                                       pytest.param("cnn", "l2", marks=pytest.mark.slow)])
def test_reference_equality(net, norm):
    rng = np.random.default_rng(1)
    if net == "mlp":
        layers, shape = mlp_layers(rng), (6,)
    else:
        layers, shape = cnn_layers(rng), (6, 6, 2)
    f = jax_fn(layers, shape)
    x = rng.uniform(0, 1, (3,) + shape).astype(np.float32)
    y = np.array([0, 1, 2])
    eps = 0.1 if norm == "linf" else 0.5
    np.testing.assert_allclose(np.asarray(f(x)), ref.forward(layers, x), atol=1e-5)
    for method in ("ibp", "crown", "crown-ibp"):
        got = certify.margin_bounds(f, x, y, eps=eps, norm=norm, method=method).lower
        want = ref.margin_lower(layers, x, y, eps=eps, norm=norm, method=method)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=method)
        assert np.all(got[np.arange(3), y] == 0)
    for method in ("ibp", "crown"):
        got = certify.bounds(f, x, eps=eps, norm=norm, method=method)
        lo, hi = ref.logit_bounds(layers, x, eps=eps, norm=norm, method=method)
        np.testing.assert_allclose(got.lower, lo, atol=1e-4)
        np.testing.assert_allclose(got.upper, hi, atol=1e-4)
    # The reference is not trivially loose: some unstable ReLUs, so CROWN differs from IBP.
    assert not np.allclose(ref.margin_lower(layers, x, y, eps=eps, norm=norm, method="crown"),
                           ref.margin_lower(layers, x, y, eps=eps, norm=norm, method="ibp"))


def test_reference_conv_matches_lax():
    """The reference's loop convolution equals lax's on the strided, padded, dilated, grouped layers."""
    rng = np.random.default_rng(2)
    for layer in cnn_layers(rng)[::2][:2]:
        _, w, b, hwc, stride, pad, dil, groups = layer
        x = rng.normal(size=(2,) + hwc)
        want = lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(w), (stride, stride), pad, rhs_dilation=(dil, dil),
                                        feature_group_count=groups, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(ref.conv_np(x, w, stride=stride, padding=pad, dilation=dil, groups=groups),
                                   np.asarray(want), atol=1e-4)


# ---------------------------------------------------------------------------
# Soundness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, trained", [
    pytest.param("mlp", False, marks=pytest.mark.slow), ("mlp", True),
    pytest.param("lenet-fast", False, marks=pytest.mark.slow), pytest.param("lenet-fast", True, marks=pytest.mark.slow),
    pytest.param("lenet-xla", True, marks=pytest.mark.slow), pytest.param("smallcnn", False, marks=pytest.mark.slow)])
def test_soundness_sampled_corners_pgd(name, trained):
    m, params, shape = flax_model(name)
    if trained:
        params = briefly_trained(m, params, shape)
    f = models.logits_fn(m, params)
    x = RNG.uniform(0, 1, (4,) + shape).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), axis=1))
    eps = 0.03
    pts = perturbations(x, eps, "linf", n_draws=40)
    logits = eval_many(f, pts)  # [draws, n, C]
    adv = attacks.pgd(f, x, y, norm="linf", eps=eps, steps=20, key=jax.random.key(0)).x_adv
    logits = np.concatenate([logits, np.asarray(f(adv))[None]])
    marg = np.take_along_axis(logits, np.broadcast_to(y[None, :, None], logits.shape[:2] + (1,)), axis=2) - logits
    methods = ("ibp", "crown") if name in ("lenet-fast", "smallcnn") else ("ibp", "crown", "crown-ibp")
    for method in methods:
        b = certify.bounds(f, x, eps=eps, method=method if method != "crown-ibp" else "crown")
        assert np.all(logits >= b.lower - 1e-5) and np.all(logits <= b.upper + 1e-5), method
        mb = certify.margin_bounds(f, x, y, eps=eps, method=method)
        assert np.all(marg >= mb.lower - 1e-5), method
        cert = certify.certified_accuracy(f, x, y, eps=eps, method=method).certified
        assert not np.any(cert & (np.asarray(f(adv)).argmax(1) != y)), method


def test_soundness_l2_and_no_box():
    m, params, shape = flax_model("mlp", 3)
    f = models.logits_fn(m, params)
    x = RNG.uniform(0, 1, (5,) + shape).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), axis=1))
    for ib, eps in (((0.0, 1.0), 0.4), (None, 0.3)):
        pts = perturbations(x, eps, "l2", n_draws=60, lo=-np.inf, hi=np.inf) if ib is None \
            else perturbations(x, eps, "l2", n_draws=60)
        logits = eval_many(f, pts)
        for method in ("ibp", "crown"):
            b = certify.bounds(f, x, eps=eps, norm="l2", method=method, input_bounds=ib)
            assert np.all(logits >= b.lower - 1e-5) and np.all(logits <= b.upper + 1e-5), (ib, method)


def test_pooling_and_normalisation_models_sound():
    """Average pooling (reduce_window_sum / div), overlapping max pooling, fixed standardisation, reduce_mean."""
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    mean, std = jnp.float32(0.3), jnp.float32(0.2)

    def f(x):
        h = (x - mean) / std
        h = lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h)
        a = lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
        mx = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
        return jnp.mean(a, axis=(1, 2)) @ v + jnp.max(mx, axis=(1, 2)) @ v

    x = rng.uniform(0, 1, (3, 6, 6, 1)).astype(np.float32)
    pts = perturbations(x, 0.05, "linf", n_draws=40)
    logits = eval_many(f, pts)
    for method in ("ibp", "crown"):
        b = certify.bounds(f, x, eps=0.05, method=method)
        assert np.all(logits >= b.lower - 1e-5) and np.all(logits <= b.upper + 1e-5), method


# ---------------------------------------------------------------------------
# Exactness, ordering of the methods, jit == eager, sizes
# ---------------------------------------------------------------------------


def test_exact_on_affine_models():
    rng = np.random.default_rng(3)
    wmat = rng.normal(size=(5, 3)).astype(np.float32)
    bvec = rng.normal(size=3).astype(np.float32)

    def f(x):
        return (2.0 * x - 0.5) @ wmat + bvec

    x = rng.uniform(0.2, 0.8, (4, 5)).astype(np.float32)
    for method in ("ibp", "crown"):
        b = certify.bounds(f, x, eps=0.1, method=method)
        # attained at the corner picked by the signs of each logit's weights
        for j in range(3):
            lo_pt = np.where(wmat[:, j] > 0, x - 0.1, x + 0.1)
            hi_pt = np.where(wmat[:, j] > 0, x + 0.1, x - 0.1)
            np.testing.assert_allclose(b.lower[:, j], np.asarray(f(lo_pt))[:, j], atol=1e-5)
            np.testing.assert_allclose(b.upper[:, j], np.asarray(f(hi_pt))[:, j], atol=1e-5)
    # l2 without a box: attained at x -+ eps w / ||w||
    b = certify.bounds(f, x, eps=0.3, norm="l2", method="crown", input_bounds=None)
    for j in range(3):
        u = wmat[:, j] / np.linalg.norm(wmat[:, j])
        np.testing.assert_allclose(b.lower[:, j], np.asarray(f(x - 0.3 * u))[:, j], atol=1e-5)
    # margins of an affine model are exact too (the specification folded into the weights)
    y = np.array([0, 1, 2, 0])
    mb = certify.margin_bounds(f, x, y, eps=0.1, method="ibp").lower
    for j in range(3):
        dw = wmat[:, y] - wmat[:, [j]]  # [5, n]
        pt = np.where(dw.T > 0, x - 0.1, x + 0.1)
        z = np.asarray(f(pt))
        np.testing.assert_allclose(mb[:, j], z[np.arange(4), y] - z[:, j], atol=1e-5)


def test_crown_tighter_than_ibp_and_alpha_tighter_than_crown():
    m, params, shape = flax_model("mlp", 4)
    f = models.logits_fn(m, params)
    x = RNG.uniform(0, 1, (6,) + shape).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), axis=1))
    widths = {}
    for method in ("ibp", "crown"):
        b = certify.bounds(f, x, eps=0.05, method=method)
        widths[method] = b.upper - b.lower
    assert widths["crown"].mean() < widths["ibp"].mean()
    lb = {mt: certify.margin_bounds(f, x, y, eps=0.05, method=mt, steps=5).lower
          for mt in ("ibp", "crown-ibp", "crown", "alpha-crown")}
    assert lb["crown"].mean() > lb["ibp"].mean()
    assert np.all(lb["alpha-crown"] >= lb["crown"] - 1e-5)
    assert lb["alpha-crown"].mean() > lb["crown"].mean()


@pytest.mark.parametrize("arch, eps, eager", [("mlp", 0.05, False),
                                              pytest.param("mlp", 0.05, True, marks=pytest.mark.slow),
                                              pytest.param("cnn", 0.1, False, marks=pytest.mark.slow)])
def test_ibp_plus_crown_is_the_tighter_of_both_and_sound(arch, eps, eager):
    """method='ibp+crown': never looser than IBP or CROWN, entry by entry (on an MLP, where CROWN wins, and a CNN
    with a large budget, where IBP often wins on some margins), and below every margin reached by random points and
    corners of the ball; the pure function jitted (and, slow, eager) gives the same bounds."""
    m, params, shape = flax_model(arch, 4)
    f = models.logits_fn(m, params)
    x = RNG.uniform(0, 1, (5,) + shape).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), axis=1))
    lb = {mt: certify.margin_bounds(f, x, y, eps=eps, method=mt).lower for mt in ("ibp", "crown", "ibp+crown")}
    assert np.all(lb["ibp+crown"] >= lb["ibp"] - 1e-5) and np.all(lb["ibp+crown"] >= lb["crown"] - 1e-5)
    logits = eval_many(f, perturbations(x, eps, "linf", n_draws=30))  # [draws, n, C]
    reached = np.take_along_axis(logits, y[None, :, None], axis=2) - logits
    assert np.all(reached >= lb["ibp+crown"][None] - 1e-4)
    pure = lambda z: certify.margin_lower(f, z, y, eps=eps, method="ibp+crown")  # noqa: E731
    np.testing.assert_allclose(jax.jit(pure)(x), lb["ibp+crown"], rtol=1e-5, atol=1e-5)
    if eager:  # op by op: slow
        np.testing.assert_allclose(pure(x), lb["ibp+crown"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_alpha_crown_logit_bounds_tighter_and_sound():
    m, params, shape = flax_model("mlp", 4)
    f = models.logits_fn(m, params)
    x = RNG.uniform(0, 1, (6,) + shape).astype(np.float32)
    crown = certify.bounds(f, x, eps=0.05, method="crown")
    alpha = certify.bounds(f, x, eps=0.05, method="alpha-crown", steps=5)
    assert np.all(alpha.upper - alpha.lower <= crown.upper - crown.lower + 1e-5)
    assert (alpha.upper - alpha.lower).mean() < (crown.upper - crown.lower).mean()
    logits = eval_many(f, perturbations(x, 0.05, "linf", n_draws=40))
    assert np.all(logits >= alpha.lower - 1e-5) and np.all(logits <= alpha.upper + 1e-5)


def test_jit_equals_eager_and_grad():
    rng = np.random.default_rng(6)
    layers = mlp_layers(rng, hidden=(5,))
    f = jax_fn(layers, (6,))
    x = jnp.asarray(rng.uniform(0, 1, (3, 6)), jnp.float32)
    y = jnp.array([0, 3, 1])
    for method in ("ibp", "crown", "crown-ibp"):
        eager = certify.margin_lower(f, x, y, eps=0.1, method=method)
        jitted = jax.jit(lambda x: certify.margin_lower(f, x, y, eps=0.1, method=method))(x)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)
        np.testing.assert_allclose(np.asarray(eager), certify.margin_bounds(f, x, y, eps=0.1, method=method).lower,
                                   atol=1e-5)
    lo, hi = certify.propagate_ibp(f, x - 0.1, x + 0.1)
    lo2, hi2 = jax.jit(lambda a, b: certify.propagate_ibp(f, a, b))(x - 0.1, x + 0.1)
    np.testing.assert_allclose(np.asarray(lo), np.asarray(lo2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(hi), np.asarray(hi2), atol=1e-5)


def test_gradient_through_bounds_with_closed_over_parameters():
    """Certified training differentiates the bounds w.r.t. parameters closed over the model (finite differences)."""
    rng = np.random.default_rng(7)
    w1 = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    x = jnp.asarray(rng.uniform(0, 1, (2, 4)), jnp.float32)
    y = jnp.array([0, 2])

    def loss(w1, method):
        lb = certify.margin_lower(lambda z: jax.nn.relu(z @ w1) @ w2, x, y, eps=0.1, method=method)
        return jnp.sum(lb)

    for method in ("ibp", "crown-ibp"):
        g = jax.jit(jax.grad(loss), static_argnums=1)(w1, method)
        d = jnp.asarray(rng.normal(size=w1.shape), jnp.float32)
        h = 1e-3
        fd = (loss(w1 + h * d, method) - loss(w1 - h * d, method)) / (2 * h)
        np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=2e-2, atol=2e-3)


def test_single_point_and_block_size():
    rng = np.random.default_rng(8)
    f = jax_fn(mlp_layers(rng), (6,))
    x = rng.uniform(0, 1, (5, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0])
    full = certify.margin_bounds(f, x, y, eps=0.05, method="crown", block_size=2).lower
    one = certify.margin_bounds(f, x[:1], y[:1], eps=0.05, method="crown").lower
    np.testing.assert_allclose(one, full[:1], atol=1e-5)
    np.testing.assert_allclose(full, certify.margin_bounds(f, x, y, eps=0.05, method="crown").lower, atol=1e-5)
    c = certify.certified_accuracy(f, x[:1], y[:1], eps=0.0, method="ibp")
    assert c.n == 1 and c.certified.shape == (1,)
    # eps = 0: certified exactly when correct with a positive margin
    z = np.asarray(f(x[:1]))
    assert bool(c.certified[0]) == bool(z.argmax() == 0 and np.all(np.delete(z[0, 0] - z[0], 0) > 0))
    mb = certify.MarginBounds(np.array([[0.0, 1.0, 2.0], [0.0, -1.0, 2.0], [3.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(mb.verified(), [True, False, True])
