"""Tests of jaxbound.generative (Zhang et al. 2020): ACGAN, local Lipschitz, bounds, in-distribution attack."""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from scipy.stats import norm as _norm

from jaxbound import generative as G

# ---------------------------------------------------------------------------
# Affine and toy generators
# ---------------------------------------------------------------------------


def _affine(seed: int, d: int, dim: int, k: int = 3, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    a = (scale * rng.normal(size=(dim, d))).astype(np.float32)
    b = rng.normal(size=(k, dim)).astype(np.float32)
    aj, bj = jnp.asarray(a), jnp.asarray(b)

    def g(z, y):
        return z @ aj.T + bj[y]

    return g, a, b


def _isometric(seed: int, d: int, dim: int, sigma: float, k: int):
    """``g_i(z) = sigma Q z + b_i`` with ``Q`` orthonormal columns: exactly sigma-Lipschitz everywhere."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, d)))
    b = 3.0 * rng.normal(size=(k, dim))
    qj, bj = jnp.asarray(sigma * q, jnp.float32), jnp.asarray(b, jnp.float32)

    def g(z, y):
        return z @ qj.T + bj[y]

    return g, sigma * q, b


# ---------------------------------------------------------------------------
# ACGAN layers and training
# ---------------------------------------------------------------------------


def test_conv_layers_match_bruteforce_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 3))
    w = rng.normal(size=(4, 4, 3, 5))
    n, h, wd, _ = x.shape
    out = np.zeros((n, 2 * h + 2, 2 * wd + 2, 5))
    for i in range(h):  # transposed conv scatters every input pixel through the kernel
        for j in range(wd):
            for kh in range(4):
                for kw in range(4):
                    out[:, 2 * i + kh, 2 * j + kw, :] += x[:, i, j, :] @ w[kh, kw]
    ref = out[:, 1:-1, 1:-1]
    got = np.asarray(G.deconv4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # Narrow layers (few output channels) take lax's transposed convolution: same definition.
    for cout in (1, 8, 9):
        w1 = rng.normal(size=(4, 4, 3, cout))
        ref1 = np.zeros((n, 2 * h + 2, 2 * wd + 2, cout))
        for i in range(h):
            for j in range(wd):
                for kh in range(4):
                    for kw in range(4):
                        ref1[:, 2 * i + kh, 2 * j + kw, :] += x[:, i, j, :] @ w1[kh, kw]
        got1 = G.deconv4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(w1, jnp.float32))
        np.testing.assert_allclose(np.asarray(got1), ref1[:, 1:-1, 1:-1], atol=1e-4)
        # and its gradient matches the adjoint: <deconv(x), u> = <x, deconv^T(u)>, checked through jax.vjp
        u = rng.normal(size=got1.shape).astype(np.float32)
        _, vjp = jax.vjp(lambda a: G.deconv4x4_s2(a, jnp.asarray(w1, jnp.float32)), jnp.asarray(x, jnp.float32))
        gx = np.asarray(vjp(jnp.asarray(u))[0])
        ref_gx = np.zeros_like(x)
        up = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)))
        for i in range(h):
            for j in range(wd):
                for kh in range(4):
                    for kw in range(4):
                        ref_gx[:, i, j, :] += up[:, 2 * i + kh, 2 * j + kw, :] @ w1[kh, kw].T
        np.testing.assert_allclose(gx, ref_gx, atol=1e-3)

    x2 = rng.normal(size=(2, 6, 4, 3))
    xp = np.pad(x2, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref2 = np.zeros((2, 3, 2, 5))
    for i in range(3):
        for j in range(2):
            for kh in range(4):
                for kw in range(4):
                    ref2[:, i, j] += xp[:, 2 * i + kh, 2 * j + kw] @ w[kh, kw]
    got2 = np.asarray(G.conv4x4_s2(jnp.asarray(x2, jnp.float32), jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(got2, ref2, atol=1e-4)
    # Agrees with lax's own strided convolution too.
    lax_ref = jax.lax.conv_general_dilated(jnp.asarray(x2, jnp.float32), jnp.asarray(w, jnp.float32), (2, 2),
                                           ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(got2, np.asarray(lax_ref), atol=1e-4)


@pytest.mark.slow  # heavy: run with -m slow
def test_acgan_generator_ranges_and_jit():
    gan = G.init_acgan(key=jax.random.key(0), latent_dim=5, num_classes=3, image_shape=(8, 8, 1))
    z = jax.random.normal(jax.random.key(1), (4, 5))
    y = jnp.array([0, 1, 2, 0])
    x = np.asarray(gan(z, y))
    raw = np.asarray(gan.raw(z, y))
    assert x.shape == (4, 8, 8, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x, (raw + 1) / 2, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda z, y: gan(z, y))(z, y)), x, atol=1e-6)
    # Running-average batch norm: an example does not depend on the rest of the batch.
    np.testing.assert_allclose(np.asarray(gan(z[:1], y[:1])), x[:1], atol=1e-6)
    # The class condition changes the output.
    assert np.abs(np.asarray(gan(z[:1], jnp.array([1]))) - x[:1]).max() > 0


@pytest.mark.slow  # heavy: run with -m slow
def test_train_acgan_tiny_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    kw = dict(epochs=2, batch_size=8, latent_dim=4, num_classes=3, progress=False)
    full = G.train_acgan((x, y), key=jax.random.key(3), **kw)
    assert full.steps == 6 and len(full.history) == 2
    assert all(np.isfinite(h["d_loss"]) and np.isfinite(h["g_loss"]) for h in full.history)
    # Stop after 4 steps (mid-epoch), then resume from the checkpoint.
    ck = tmp_path / "gan"
    part = G.train_acgan((x, y), key=jax.random.key(3), max_steps=4, checkpoint_dir=ck, checkpoint_every=1, **kw)
    assert part.steps == 4 and G.checkpoint_info(ck)["step"] == 4
    resumed = G.train_acgan((x, y), key=jax.random.key(3), checkpoint_dir=ck, **kw)
    assert resumed.steps == 6
    for a, b in zip(jax.tree.leaves(full.gan.variables), jax.tree.leaves(resumed.gan.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["d_loss"] for h in resumed.history] == pytest.approx([h["d_loss"] for h in full.history], rel=1e-6)
    loaded = G.load_acgan(ck)
    z = jax.random.normal(jax.random.key(0), (3, 4))
    np.testing.assert_array_equal(np.asarray(loaded(z, jnp.arange(3))), np.asarray(resumed.gan(z, jnp.arange(3))))
    with pytest.raises(ValueError, match="^data"):
        G.train_acgan((x * 2, y), key=jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="^batch_size"):
        G.train_acgan((x, y), key=jax.random.key(0), epochs=1, batch_size=100, progress=False)
    with pytest.raises(ValueError, match="^checkpoint_dir"):
        G.load_acgan(tmp_path / "nothing")


def _foreign_checkpoint(raw: bytes) -> bytes:
    """The same checkpoint with one generator array of another shape (another model's file)."""
    from flax import serialization

    tree = serialization.msgpack_restore(raw)
    leaf_path = []
    node = tree["state"]["g_params"]
    while isinstance(node, dict):
        k = sorted(node)[0]
        leaf_path.append(k)
        parent, node = node, node[k]
    parent[leaf_path[-1]] = np.zeros(np.asarray(node).shape + (2,), np.float32)
    return serialization.msgpack_serialize(tree)


def test_damaged_acgan_checkpoint_file_is_dropped_with_one_warning(tmp_path):
    from jaxbound import _acgan

    state = {"g_params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(2)}
    meta = {"fingerprint": "f", "step": 2, "history": [], "acc": [0.0]}
    f = tmp_path / "ck.msgpack"
    _acgan._save_checkpoint(f, state, meta)
    raw = f.read_bytes()
    got, got_meta = _acgan._load_checkpoint(f, state)
    np.testing.assert_array_equal(got["g_params"]["w"], state["g_params"]["w"])
    assert got_meta == meta
    assert _acgan._load_checkpoint(tmp_path / "absent", state) is None
    wrong = {"g_params": {"w": np.zeros((3, 2), np.float32)}, "step": np.int32(0)}
    for content, target in [(raw[: len(raw) // 2], state), (b"", state), (bytes(range(256)) * 4, state),
                            (raw, wrong)]:
        f.write_bytes(content)
        with pytest.warns(RuntimeWarning, match=f"checkpoint {f} is damaged or foreign") as rec:
            assert _acgan._load_checkpoint(f, target) is None
        assert len(rec) == 1


@pytest.mark.slow
def test_damaged_acgan_checkpoint_trains_from_the_start_with_one_warning(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    kw = dict(epochs=1, batch_size=8, latent_dim=4, num_classes=2, progress=False)
    full = G.train_acgan((x, y), key=jax.random.key(3), **kw)
    ck = tmp_path / "gan"
    G.train_acgan((x, y), key=jax.random.key(3), max_steps=1, checkpoint_dir=ck, checkpoint_every=1, **kw)
    (f,) = [p for p in ck.iterdir() if p.is_file()]
    raw = f.read_bytes()
    damaged = {"truncated": raw[: len(raw) // 2], "random_bytes": rng.integers(0, 256, len(raw), np.uint8).tobytes(),
               "empty": b"", "foreign": _foreign_checkpoint(raw)}
    for how, content in damaged.items():
        f.write_bytes(content)
        with pytest.warns(RuntimeWarning, match=f"checkpoint {f}") as rec:
            again = G.train_acgan((x, y), key=jax.random.key(3), checkpoint_dir=ck, **kw)
        assert len([r for r in rec if issubclass(r.category, RuntimeWarning)]) == 1, how
        for a, b in zip(jax.tree.leaves(full.gan.variables), jax.tree.leaves(again.gan.variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        f.write_bytes(content)
        with pytest.raises(ValueError, match="^checkpoint_dir: .* is damaged or not a train_acgan checkpoint"):
            G.load_acgan(ck)


# ---------------------------------------------------------------------------
# Generated datasets
# ---------------------------------------------------------------------------


class _SigmoidGen:
    """A conditional generator into [0, 1]^(4x4x1) with latent_dim / num_classes attributes."""

    latent_dim = 3
    num_classes = 4

    def __init__(self):
        rng = np.random.default_rng(0)
        self.a = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
        self.b = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)

    def __call__(self, z, y):
        return jax.nn.sigmoid(z @ self.a.T + self.b[y]).reshape(-1, 4, 4, 1)


@pytest.mark.slow  # heavy: run with -m slow
def test_sample_dataset_priors_and_determinism():
    gan = _SigmoidGen()
    p = np.array([0.1, 0.2, 0.3, 0.4])
    s = G.sample_dataset(gan, key=jax.random.key(5), n=2000, p=p, batch_size=512)
    assert s.images.shape == (2000, 4, 4, 1) and s.z.shape == (2000, 3)
    freq = np.bincount(s.labels, minlength=4) / 2000
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 2000))
    np.testing.assert_allclose(s.images[:7], np.asarray(gan(s.z[:7], s.labels[:7])), atol=1e-6)
    small = G.sample_dataset(gan, key=jax.random.key(5), n=10, p=p, batch_size=3)
    np.testing.assert_array_equal(small.labels, s.labels[:10])
    np.testing.assert_allclose(small.images, s.images[:10], atol=1e-6)
    ds = s.dataset("acgan", "test")
    assert ds.num_classes == 4 and len(ds) == 2000
    empty = G.sample_dataset(gan, key=jax.random.key(5), n=0)
    assert empty.images.shape == (0, 4, 4, 1) and empty.labels.shape == (0,)
    g, _, _ = _affine(0, 3, 5)
    with pytest.raises(ValueError, match="^g"):  # affine outputs leave [0, 1]
        G.sample_dataset(g, key=jax.random.key(0), n=50, num_classes=3, latent_dim=3)
    with pytest.raises(ValueError, match="^p"):
        G.sample_dataset(gan, key=jax.random.key(0), n=5, p=[0.5, 0.6, 0.0, 0.0])
    with pytest.raises(ValueError, match="^latent_dim"):
        G.sample_dataset(g, key=jax.random.key(0), n=5, num_classes=3)


# ---------------------------------------------------------------------------
# Local Lipschitz estimation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed,d,dim", [(0, 6, 10), (2, 12, 20)])
def test_local_lipschitz_affine_reaches_largest_singular_value(seed, d, dim):
    g, a, _ = _affine(seed, d, dim)
    smax = np.linalg.svd(a, compute_uv=False)[0]
    res = G.local_lipschitz(g, [0, 2], key=jax.random.key(seed), r=0.5, n_latents=6, n_neighbors=32,
                            deltas=(0.0, 0.1, 0.5), latent_dim=d, grad_steps=60, latent_batch=6)
    assert res.L.shape == (2, 3) and res.ratios.shape == (2, 6)
    # Sampling never exceeds the true constant; the gradient estimator reaches it within 1 %.
    assert res.ratios.max() <= smax * (1 + 1e-5)
    assert np.all(res.ratios_grad >= res.ratios)
    assert np.all(res.L_grad >= res.L)
    assert np.all(np.abs(res.ratios_grad - smax) <= 0.01 * smax)
    assert res.ratios_grad.max() <= smax * (1 + 1e-5)
    # Percentiles are the inverted-CDF order statistics of the per-latent ratios.
    for j, dl in enumerate((0.0, 0.1, 0.5)):
        srt = np.sort(res.ratios, axis=1)
        np.testing.assert_allclose(res.L[:, j], srt[:, int(np.ceil((1 - dl) * 6)) - 1])
    assert res.L_max("sample").shape == (3,)


def test_local_lipschitz_nonlinear_matches_bruteforce_grid():
    # g(z) = sin(3 z) in d = 1: the local constant at z is max |sin 3z' - sin 3z| / |z' - z| over |z' - z| <= r.
    def g(z, y):
        return jnp.sin(3.0 * z)

    r = 0.4
    res = G.local_lipschitz(g, 0, key=jax.random.key(0), r=r, n_latents=12, n_neighbors=200, deltas=0.0, latent_dim=1,
                            grad_steps=80, grad_restarts=2)
    kz, _ = jax.random.split(jax.random.fold_in(jax.random.key(0), 0))
    zs = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kz, i), (1,)))(
        jnp.arange(12, dtype=jnp.uint32)))[:, 0].astype(np.float64)
    t = np.concatenate([np.linspace(-r, -1e-4, 20000), np.linspace(1e-4, r, 20000)])
    true = np.array([np.max(np.abs(np.sin(3 * (z + t)) - np.sin(3 * z)) / np.abs(t)) for z in zs])
    assert np.all(res.ratios[0] <= true * (1 + 1e-4))
    np.testing.assert_allclose(res.ratios_grad[0], true, rtol=2e-3)


def test_local_lipschitz_batching_matches_one_latent_loop():
    g, a, _ = _affine(3, 5, 7)
    kw = dict(r=0.5, n_latents=5, n_neighbors=37, deltas=(0.001,), latent_dim=5, grad_steps=5, neighbor_chunk=16)
    res = G.local_lipschitz(g, [1], key=jax.random.key(1), latent_batch=4, **kw)
    one = G.local_lipschitz(g, [1], key=jax.random.key(1), latent_batch=1, **kw)  # one latent at a time
    np.testing.assert_allclose(res.ratios, one.ratios, rtol=1e-5)
    np.testing.assert_allclose(res.ratios_grad, one.ratios_grad, rtol=1e-5)
    assert res.to_dict()["n_latents"] == 5


@pytest.mark.slow
def test_local_lipschitz_scaling_orthant_and_sampling_only():
    g, a, _ = _affine(3, 5, 7)
    kw = dict(r=0.5, n_latents=5, n_neighbors=37, deltas=(0.001,), latent_dim=5, grad_steps=5, neighbor_chunk=16)
    res = G.local_lipschitz(g, [1], key=jax.random.key(1), latent_batch=4, **kw)
    # Measuring on 2 g - 1 (the authors' [-1, 1] output) doubles every ratio.
    two = G.local_lipschitz(lambda z, y: 2.0 * g(z, y) - 1.0, [1], key=jax.random.key(1), latent_batch=4, **kw)
    np.testing.assert_allclose(two.ratios, 2 * res.ratios, rtol=1e-4)
    # Orthant-cone neighbours (the authors' draw) are a different, valid sample.
    orth = G.local_lipschitz(g, [1], key=jax.random.key(1), directions="orthant", **kw)
    assert orth.ratios.max() <= np.linalg.svd(a, compute_uv=False)[0] * (1 + 1e-5)
    # Sampling only: both estimates coincide. One latent works.
    s = G.local_lipschitz(g, 0, key=jax.random.key(1), r=0.5, n_latents=1, n_neighbors=3, latent_dim=5, grad_steps=0)
    np.testing.assert_array_equal(s.L, s.L_grad)
    assert s.to_dict()["n_latents"] == 1


@pytest.mark.slow  # heavy: run with -m slow
def test_lipschitz_kernel_jit_equals_eager():
    g, _, _ = _affine(4, 3, 4)
    z = jax.random.normal(jax.random.key(0), (2, 3))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(2))
    y = jnp.array([0, 1])
    kw = dict(g=g, r=0.5, n_neighbors=3, chunk=2, directions="ball", grad_steps=2, grad_restarts=1, step_size=0.5,
              min_radius=1e-3)
    jit_out = jax.jit(lambda z, k, y: G._lip_core(z, k, y, **kw))(z, keys, y)
    with jax.disable_jit():
        eager = G._lip_core(z, keys, y, **kw)
    for a, b in zip(jit_out, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_local_lipschitz_rejects_bad_input():
    g, _, _ = _affine(0, 3, 4)
    kw = dict(n_latents=2, n_neighbors=2, latent_dim=3)
    for r in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="^r"):
            G.local_lipschitz(g, 0, key=jax.random.key(0), r=r, **kw)
    for dl in (1.0, -0.1, (0.1, 1.5)):
        with pytest.raises(ValueError, match="^deltas"):
            G.local_lipschitz(g, 0, key=jax.random.key(0), r=0.5, deltas=dl, **kw)
    with pytest.raises(ValueError, match="^n_latents"):
        G.local_lipschitz(g, 0, key=jax.random.key(0), r=0.5, n_latents=0, n_neighbors=2, latent_dim=3)
    with pytest.raises(ValueError, match="^y"):
        G.local_lipschitz(g, [0.5], key=jax.random.key(0), r=0.5, **kw)
    with pytest.raises(ValueError, match="^directions"):
        G.local_lipschitz(g, 0, key=jax.random.key(0), r=0.5, directions="cone", **kw)
    with pytest.raises(ValueError, match="^key"):
        G.local_lipschitz(g, 0, key=0, r=0.5, **kw)
    with pytest.raises(ValueError, match="^g"):
        G.local_lipschitz(lambda z, y: z[0], 0, key=jax.random.key(0), r=0.5, **kw)
    with pytest.raises(ValueError, match="^g"):  # non-finite generator outputs
        G.local_lipschitz(lambda z, y: jnp.log(z - 100.0), 0, key=jax.random.key(0), r=0.5, **kw)


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------


def test_theorem_4_4_reproduces_table_3_and_remark_4_5():
    b = G.intrinsic_robustness_bound(eps=[1.0, 2.0, 3.0], alpha=0.015, L=[7.9, 8.6, 8.3, 7.8, 10.3, 11.0, 9.5, 7.8,
                                                                           9.3, 10.9],
                                     p=np.full(10, 0.1), delta=0.001, family="per_class")
    np.testing.assert_allclose(np.round(100 * b.rob[:, 0], 1), [98.2, 97.8, 97.2])
    assert b.L_max == 11.0
    rem = G.intrinsic_robustness_bound(eps=1.0, alpha=0.05, L=1.0, family="per_class")
    assert abs(rem.rob[0, 0] - 0.75) < 0.015  # "no classifier with risk >= 5 % exceeds 75 %"


def test_theorem_4_4_closed_forms_and_families():
    eps = np.array([0.0, 0.5, 2.0])
    alpha = np.array([0.01, 0.05, 0.2])
    p = np.array([0.2, 0.3, 0.5])
    fa = G.intrinsic_robustness_bound(eps=eps, alpha=alpha, L=[1.5, 2.0], p=p, delta=0.01)
    pc = G.intrinsic_robustness_bound(eps=eps, alpha=alpha, L=2.0, p=p, delta=0.01, family="per_class")
    ref = np.array([[1.01 - min(pi * _norm.cdf(_norm.ppf(a / pi) + e / 2.0) for pi in p) for a in alpha] for e in eps])
    np.testing.assert_allclose(fa.rob, ref, rtol=1e-12)
    np.testing.assert_allclose(pc.rob, 1.01 - _norm.cdf(_norm.ppf(alpha)[None, :] + eps[:, None] / 2.0))
    assert np.all(fa.rob >= pc.rob - 1e-12)  # F~_alpha is a subfamily: its bound is never larger
    # eps = 0: the bound is 1 + delta - alpha (risk itself).
    np.testing.assert_allclose(fa.rob[0], 1.01 - alpha, atol=1e-12)
    # K = 1: both families agree.
    one = G.intrinsic_robustness_bound(eps=eps, alpha=alpha, L=2.0)
    one_pc = G.intrinsic_robustness_bound(eps=eps, alpha=alpha, L=2.0, family="per_class")
    np.testing.assert_allclose(one.rob, one_pc.rob)
    assert set(one.to_dict()) >= {"rob", "eps", "alpha", "family"}


def test_theorem_4_4_F_alpha_is_the_minimum_of_problem_A4():
    # Brute force over (alpha_1, alpha_2) with p_1 alpha_1 + p_2 alpha_2 = alpha (App. A.2, eq. A.5).
    p = np.array([0.35, 0.65])
    for alpha, s in [(0.1, 0.4), (0.3, 1.3), (0.02, 2.5)]:
        a1 = np.linspace(0, min(1.0, alpha / p[0]), 200001)
        a2 = (alpha - p[0] * a1) / p[1]
        ok = (a2 >= 0) & (a2 <= 1)
        h = lambda a: _norm.cdf(_norm.ppf(np.clip(a, 0, 1)) + s)  # noqa: E731
        brute = np.min(p[0] * h(a1[ok]) + p[1] * h(a2[ok]))
        got = G.intrinsic_robustness_bound(eps=s, alpha=alpha, L=1.0, p=p).rob[0, 0]
        assert abs((1 - got) - brute) < 1e-6


def test_bounds_monotone_in_eps_and_alpha():
    eps = np.linspace(0, 4, 9)
    alpha = np.linspace(0.01, 0.1, 7)
    for fam in ("F_alpha", "per_class"):
        b = G.intrinsic_robustness_bound(eps=eps, alpha=alpha, L=[3.0, 4.0], p=np.full(10, 0.1), delta=1e-3,
                                         family=fam)
        assert np.all(np.diff(b.rob, axis=0) <= 1e-12)  # more eps -> less robustness
        assert np.all(np.diff(b.rob, axis=1) <= 1e-12)  # larger risk floor -> less robustness
    lb = G.adv_risk_lower_bound([0.01, 0.05, 0.0], eps=eps, L=[2.0, 3.0, 4.0], p=[0.3, 0.3, 0.4])
    assert np.all(np.diff(lb) >= 0)
    lb2 = G.adv_risk_lower_bound([0.02, 0.06, 0.01], eps=eps, L=[2.0, 3.0, 4.0], p=[0.3, 0.3, 0.4])
    assert np.all(lb2 >= lb)


@pytest.mark.parametrize("seed", [0])
def test_theorem_4_3_holds_with_equality_for_affine_generators_and_halfspaces(seed):
    """g_i(z) = sigma Q z + b_i is exactly sigma-Lipschitz; half-space errors are extremal (Lemma 4.2)."""
    d, dim, k, sigma = 4, 7, 3, 1.7
    g, a, b = _isometric(seed, d, dim, sigma, k)
    rng = np.random.default_rng(seed + 10)
    p = np.array([0.2, 0.5, 0.3])
    # Classifier errs on class i exactly on the half-space {x : w_i . x > t_i}, w_i in range(A).
    w = a @ rng.normal(size=(d, k))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    risk_target = np.array([0.05, 0.2, 0.01])
    # t_i so that P_z(w_i.(A z + b_i) > t_i) = risk_i: w_i.A z ~ N(0, sigma^2).
    t = np.array([w[:, i] @ b[i] + sigma * _norm.ppf(1 - risk_target[i]) for i in range(k)])
    n = 400_000
    z = rng.normal(size=(n, d))
    lab = rng.choice(k, size=n, p=p)
    x = z @ a.T + b[lab]
    dist = (t[lab] - np.einsum("nd,dn->n", x, w[:, lab]))  # signed l2 distance to the error half-space
    eps = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    risk_mc = np.array([np.mean(dist[lab == i] < 0) for i in range(k)])
    mc = np.array([np.mean(dist <= e) for e in eps])
    lip = G.local_lipschitz(g, list(range(k)), key=jax.random.key(seed), r=10.0, n_latents=4, n_neighbors=16,
                            deltas=0.0, latent_dim=d, grad_steps=30)
    np.testing.assert_allclose(lip.L_grad[:, 0], sigma, rtol=1e-3)
    bound = G.adv_risk_lower_bound(risk_mc, eps=eps, L=lip.L_grad[:, 0], p=p, r=10.0)
    se = np.sqrt(mc * (1 - mc) / n)
    assert np.all(np.abs(mc - bound) <= 5 * se + 2e-3)
    exact = G.adv_risk_lower_bound(risk_target, eps=eps, L=sigma, p=p)
    assert np.all(np.abs(mc - exact) <= 5 * se + 1e-3)


def test_bounds_reject_bad_input():
    p = np.full(10, 0.1)
    with pytest.raises(ValueError, match="^alpha"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.15, L=2.0, p=p)  # alpha / p_i > 1
    G.intrinsic_robustness_bound(eps=1.0, alpha=0.15, L=2.0, p=p, family="per_class")  # fine for F~_alpha
    with pytest.raises(ValueError, match="^alpha"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.0, L=2.0)
    with pytest.raises(ValueError, match="^delta"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.01, L=2.0, delta=1.0)
    with pytest.raises(ValueError, match="^delta"):
        G.adv_risk_lower_bound([0.1], eps=1.0, L=2.0, p=[1.0], delta=-0.1)
    with pytest.raises(ValueError, match="^eps"):
        G.intrinsic_robustness_bound(eps=[1.0, -1.0], alpha=0.01, L=2.0)
    with pytest.raises(ValueError, match="^L"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.01, L=0.0)
    with pytest.raises(ValueError, match="^p"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.01, L=1.0, p=[0.5, 0.4])
    with pytest.raises(ValueError, match="^family"):
        G.intrinsic_robustness_bound(eps=1.0, alpha=0.01, L=1.0, family="all")
    with pytest.raises(ValueError, match="^risk"):
        G.adv_risk_lower_bound([0.1, 1.2], eps=1.0, L=2.0, p=[0.5, 0.5])
    with pytest.raises(ValueError, match="^L"):
        G.adv_risk_lower_bound([0.1, 0.2], eps=1.0, L=[2.0, 1.0, 3.0], p=[0.5, 0.5])
    with pytest.raises(ValueError, match="^eps"):  # r * L_i < eps violates Theorem 4.3's condition
        G.adv_risk_lower_bound([0.1], eps=3.0, L=4.0, p=[1.0], r=0.5)
    with pytest.raises(ValueError, match="^eps"):
        G.intrinsic_robustness_bound(eps=3.0, alpha=0.01, L=4.0, r=0.5)
    assert isinstance(G.adv_risk_lower_bound([0.1], eps=1.0, L=4.0, p=[1.0], r=0.5), float)


# ---------------------------------------------------------------------------
# In-distribution attack
# ---------------------------------------------------------------------------


def _linear_classifier(w, c):
    wj, cj = jnp.asarray(w, jnp.float32), jnp.asarray(c, jnp.float32)

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ wj + cj

    return logits_fn


def test_in_distribution_attack_stays_within_eps_and_on_the_range():
    d, dim, k = 3, 6, 3
    g, a, b = _affine(7, d, dim, k=k, scale=0.5)
    rng = np.random.default_rng(1)
    f = _linear_classifier(rng.normal(size=(dim, k)), np.zeros(k))
    z = rng.normal(size=(24, d)).astype(np.float32)
    y = rng.integers(0, k, 24)
    x = np.asarray(g(jnp.asarray(z), jnp.asarray(y)))
    eps = np.array([0.1, 0.5, 1.0, 3.0])
    res = G.in_distribution_attack(f, g, x, y, key=jax.random.key(0), eps=eps, latent_dim=d, init_restarts=2,
                                   init_steps=300, init_learning_rate=0.05, search_steps=3, steps=60,
                                   learning_rate=0.05, batch_size=16)
    assert res.success.shape == (4, 24)
    # Never outside eps, never off the generator's range.
    for e, s in zip(eps, res.success):
        assert np.all(res.distance[s] <= e)
    np.testing.assert_allclose(res.x_adv, np.asarray(g(jnp.asarray(res.z_adv), jnp.asarray(y))), atol=1e-5)
    np.testing.assert_allclose(res.distance, np.linalg.norm((res.x_adv - x).reshape(24, -1), axis=1), rtol=1e-4,
                               atol=1e-5)
    assert np.all(res.success <= res.misclassified[None, :])
    assert np.all(np.diff(res.success.astype(int), axis=0) >= 0)  # larger eps breaks a superset
    np.testing.assert_array_equal(res.misclassified, np.asarray(f(jnp.asarray(res.x_adv))).argmax(-1) != y)
    ra = np.asarray(res.robust_accuracy)
    assert np.all(np.diff(ra) <= 0) and np.all(ra <= res.correct.mean())
    assert np.median(res.init_distance) < 1e-2  # inversion of an affine generator is exact
    assert res.success[-1].mean() > 0  # the attack finds something at a large budget
    # Scalar eps gives the matching row; the given-latent initialisation skips the inversion.
    res1 = G.in_distribution_attack(f, g, x, y, key=jax.random.key(0), eps=3.0, latent_dim=d, z_init=z,
                                    search_steps=3, steps=60, learning_rate=0.05)
    assert res1.success.shape == (24,) and np.all(res1.distance[res1.success] <= 3.0)
    np.testing.assert_allclose(res1.init_distance, 0.0, atol=1e-5)


def test_in_distribution_attack_near_optimal_on_isometric_generator():
    """Two classes, linear classifier with normal w in range(A): the optimum is the hyperplane distance."""
    d, dim, sigma = 3, 5, 1.0
    g, a, b = _isometric(2, d, dim, sigma, 2)
    rng = np.random.default_rng(4)
    u = a @ rng.normal(size=d)
    u /= np.linalg.norm(u)
    c0 = -u @ (b[0] + b[1]) / 2
    wmat = np.stack([-u, u], axis=1)  # class 1 iff u.x + c0 > 0
    f = _linear_classifier(wmat, np.array([-c0, c0]))
    z = rng.normal(size=(20, d)).astype(np.float32)
    y = rng.integers(0, 2, 20)
    x = np.asarray(g(jnp.asarray(z), jnp.asarray(y)))
    margin = (x @ u + c0) * np.where(y == 1, 1, -1)  # > 0: correctly classified, distance to boundary
    res = G.in_distribution_attack(f, g, x, y, key=jax.random.key(0), eps=10.0, latent_dim=d, z_init=z,
                                   search_steps=6, steps=150, learning_rate=0.05)
    ok = margin > 0.05
    assert np.all(res.distance[ok & res.misclassified] >= margin[ok & res.misclassified] - 1e-3)
    found = ok & res.misclassified
    assert found.mean() > 0.6 * ok.mean()
    assert np.median(res.distance[found] / margin[found]) < 1.1


def test_in_distribution_attack_edge_cases_and_errors():
    g, _, _ = _affine(0, 2, 4, k=2)
    f = _linear_classifier(np.ones((4, 2)), np.zeros(2))
    x = np.zeros((0, 4), np.float32)
    res = G.in_distribution_attack(f, g, x, np.zeros(0, np.int64), key=jax.random.key(0), eps=[1.0, 2.0], latent_dim=2)
    assert res.success.shape == (2, 0)
    one = np.asarray(g(jnp.zeros((1, 2)), jnp.array([1])))
    r1 = G.in_distribution_attack(f, g, one, [1], key=jax.random.key(0), eps=1.0, latent_dim=2, init_steps=10,
                                  init_restarts=1, steps=5, search_steps=1)
    assert r1.distance.shape == (1,)
    with pytest.raises(ValueError, match="^eps"):
        G.in_distribution_attack(f, g, one, [1], key=jax.random.key(0), eps=-1.0, latent_dim=2)
    with pytest.raises(ValueError, match="^x"):
        G.in_distribution_attack(f, g, np.zeros((1, 5), np.float32), [1], key=jax.random.key(0), eps=1.0, latent_dim=2)
    with pytest.raises(ValueError, match="^y"):
        G.in_distribution_attack(f, g, one, [3], key=jax.random.key(0), eps=1.0, latent_dim=2)
    with pytest.raises(ValueError, match="^z_init"):
        G.in_distribution_attack(f, g, one, [1], key=jax.random.key(0), eps=1.0, latent_dim=2, z_init=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="^x"):
        G.in_distribution_attack(f, g, np.full((1, 4), np.nan, np.float32), [1], key=jax.random.key(0), eps=1.0,
                                 latent_dim=2)
