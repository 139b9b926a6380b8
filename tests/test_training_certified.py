"""Fast adversarial training (FGSM-RS), IBP and CROWN-IBP training, the ramps, and the chunked training loop.

Independent references: the closed-form input gradient of a linear model
(one FGSM step), interval bound propagation and CROWN-IBP written out in
NumPy for a one-hidden-layer MLP (the margin specification folded into the
last layer, as Gowal et al. and Zhang et al. do), and a plain step-by-step
loop over host-gathered batches (the training loop before steps were
scanned on the device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbound import data, models, training

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


def _tree_maxdiff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _ce(z, y):
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


# ---------------------------------------------------------------------------
# NumPy references: IBP and CROWN-IBP margins of a one-hidden-layer MLP
# ---------------------------------------------------------------------------


def _mlp_weights(params):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    return p["fc1"]["kernel"], p["fc1"]["bias"], p["out"]["kernel"], p["out"]["bias"]


def _box(x, eps):
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    return np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)


def _ibp_margins(params, x, y, eps):
    """IBP lower bounds of z_y - z_j: intervals through fc1 and ReLU, the spec e_y - e_j folded into the last layer."""
    w1, b1, w2, b2 = _mlp_weights(params)
    lo, hi = _box(x, eps)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    l1, u1 = mid @ w1 - rad @ np.abs(w1) + b1, mid @ w1 + rad @ np.abs(w1) + b1
    hl, hu = np.maximum(l1, 0), np.maximum(u1, 0)
    hm, hr = (hu + hl) / 2, (hu - hl) / 2
    a = w2[:, y].T[:, None, :] - w2.T[None, :, :]          # [n, C, H]: rows W2[:, y] - W2[:, j]
    c = b2[y][:, None] - b2[None, :]
    return np.einsum("nch,nh->nc", a, hm) - np.einsum("nch,nh->nc", np.abs(a), hr) + c


def _crown_ibp_margins(params, x, y, eps):
    """CROWN-IBP: IBP bounds of fc1's outputs, the backward linear relaxation of the ReLU (adaptive lower slope)."""
    w1, b1, w2, b2 = _mlp_weights(params)
    lo, hi = _box(x, eps)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    l1, u1 = mid @ w1 - rad @ np.abs(w1) + b1, mid @ w1 + rad @ np.abs(w1) + b1
    unstable = (l1 < 0) & (u1 > 0)
    up_slope = np.where(u1 <= 0, 0.0, np.where(l1 >= 0, 1.0, u1 / np.where(unstable, u1 - l1, 1.0)))
    up_icpt = np.where(unstable, -up_slope * l1, 0.0)
    lo_slope = np.where(u1 <= 0, 0.0, np.where(l1 >= 0, 1.0, (u1 > -l1).astype(np.float64)))
    a = w2[:, y].T[:, None, :] - w2.T[None, :, :]          # [n, C, H]
    c = b2[y][:, None] - b2[None, :]
    lam = np.where(a >= 0, a * lo_slope[:, None, :], a * up_slope[:, None, :])
    const = c + np.einsum("nch,nh->nc", np.where(a >= 0, 0.0, a), up_icpt) + lam @ b1
    coef = np.einsum("nch,dh->ncd", lam, w1)                 # linear in the input
    return np.einsum("ncd,nd->nc", coef, mid) - np.einsum("ncd,nd->nc", np.abs(coef), rad) + const


def _certified_fraction(margins, y):
    m = margins.copy()
    m[np.arange(len(y)), y] = np.inf
    return float((m.min(axis=1) > 0).mean())


def _settings(**kw):
    return training.train_config(**kw)


# ---------------------------------------------------------------------------
# One step against the references
# ---------------------------------------------------------------------------


def test_certify_margins_match_numpy_reference(digits, rng):
    """The bounds the recipes use equal the NumPy IBP / CROWN-IBP on a random and a trained MLP."""
    from jaxbound import certify

    tr, _ = digits
    model = models.create("mlp", hidden=(16,))
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:12], tr.labels[:12].astype(np.int32)
    f = models.logits_fn(model, params)
    for method, ref in (("ibp", _ibp_margins), ("crown-ibp", _crown_ibp_margins)):
        got = np.asarray(certify.margin_lower(f, x, y, eps=EPS, norm="linf", method=method))
        np.testing.assert_allclose(got, ref(params, x, y, EPS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recipe, beta", [("ibp", None), pytest.param("crown_ibp", 0.0, marks=pytest.mark.slow),
                                          ("crown_ibp", 1.0), pytest.param("crown_ibp", 0.3, marks=pytest.mark.slow)])
def test_certified_loss_matches_reference(digits, recipe, beta):
    """loss = kappa CE(z(x)) + (1 - kappa) CE(-m), m = beta CROWN-IBP + (1 - beta) IBP (Gowal eq. 7, Zhang eq. 9)."""
    tr, _ = digits
    model = models.create("mlp", hidden=(16,))
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:16], tr.labels[:16].astype(np.int32)
    cfg = _settings(recipe=recipe, eps=0.2, norm="linf")
    tx = optax.sgd(0.1)
    scale, kappa = 0.5, 0.7
    _, _, m = jax.jit(training._make_step(model.apply, tx, cfg))(params, tx.init(params), x, y, jax.random.key(0),
                                                                 jnp.float32(scale), jnp.float32(kappa),
                                                                 None if beta is None else jnp.float32(beta))
    eps = 0.2 * scale
    margins = _ibp_margins(params, x, y, eps)
    if beta:
        margins = beta * _crown_ibp_margins(params, x, y, eps) + (1 - beta) * margins
    z = np.asarray(model.apply(params, x), np.float64)
    ref = np.mean(kappa * _ce(z, y) + (1 - kappa) * _ce(-margins, y))
    assert float(m["loss"]) == pytest.approx(ref, rel=1e-4)
    assert float(m["certified"]) == pytest.approx(_certified_fraction(margins, y))


def test_fgsm_rs_step_is_one_fgsm_step_from_the_start(digits):
    """Without the random start, fgsm_rs attacks with x' = clip(x + alpha sign(W (p - e_y))) (linear model)."""
    tr, _ = digits
    model = models.create("mlp", hidden=())
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:16], tr.labels[:16].astype(np.int32)
    alpha = 1.25
    cfg = _settings(recipe="fgsm_rs", attack=training.training_attack(norm="linf", eps=EPS, random_start=False),
                    fgsm_alpha=alpha)
    tx = optax.sgd(0.1)
    _, _, m = jax.jit(training._make_step(model.apply, tx, cfg))(params, tx.init(params), x, y, jax.random.key(0))
    w = np.asarray(params["params"]["out"]["kernel"], np.float64)
    b = np.asarray(params["params"]["out"]["bias"], np.float64)
    xf = x.reshape(16, -1).astype(np.float64)
    z = xf @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(10)[y]) @ w.T
    xa = np.clip(np.clip(xf + alpha * EPS * np.sign(g), xf - EPS, xf + EPS), 0, 1)
    assert float(m["loss"]) == pytest.approx(np.mean(_ce(xa @ w + b, y)), rel=1e-5)


@pytest.mark.parametrize("recipe", [pytest.param("fgsm_rs", marks=pytest.mark.slow), "ibp",
                                    pytest.param("crown_ibp", marks=pytest.mark.slow)])
def test_jit_equals_eager_one_step(digits, recipe):
    tr, _ = digits
    model = models.create("mlp", hidden=(16,))
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:8], tr.labels[:8].astype(np.int32)
    tx = optax.adam(1e-3)
    step = training._make_step(model.apply, tx, _settings(recipe=recipe, eps=EPS, norm="linf"))
    args = (params, tx.init(params), x, y, jax.random.key(7), jnp.float32(0.5), jnp.float32(0.8), jnp.float32(0.5))
    if recipe == "fgsm_rs":
        args = args[:6]
    p1, _, m1 = jax.jit(step)(*args)
    with jax.disable_jit():
        p2, _, m2 = step(*args)
    assert _tree_maxdiff(p1, p2) < 1e-5
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-4)


def test_ramps_follow_gowal_schedule():
    """eps_t = 0 and kappa = 1 during the warm-up, then linear ramps; beta goes from 1 to 0 with eps_t."""
    cfg = _settings(recipe="crown_ibp", eps=0.4, norm="linf", warmup_steps=2, ramp_steps=4, kappa_end=0.5)
    got = [tuple(float(v) for v in training._schedules(cfg, s, np)) for s in range(8)]
    want = [(0, 1, 1), (0, 1, 1), (0.25, 0.875, 0.75), (0.5, 0.75, 0.5), (0.75, 0.625, 0.25), (1, 0.5, 0),
            (1, 0.5, 0), (1, 0.5, 0)]
    np.testing.assert_allclose(got, want, atol=1e-7)
    traced = jax.jit(lambda s: training._schedules(cfg, s))(jnp.int32(3))
    np.testing.assert_allclose([float(v) for v in traced], want[3], atol=1e-7)
    jump = _settings(recipe="ibp", eps=0.4, norm="linf", warmup_steps=3)
    assert [float(training._schedules(jump, s, np)[0]) for s in range(5)] == [0, 0, 0, 1, 1]


# ---------------------------------------------------------------------------
# Learning on digits
# ---------------------------------------------------------------------------

COMMON = dict(epochs=6, batch_size=32, norm="linf", progress=False)


@pytest.fixture(scope="module")
def certified_runs(digits):
    tr, te = digits
    key = jax.random.key(0)
    ev = training.training_attack(norm="linf", eps=EPS, steps=10)
    out = {"standard": training.train(models.create("mlp", hidden=(64,)), tr, key=key, recipe="standard",
                                      eval_data=te, eval_attack=ev, **COMMON)}
    for recipe in ("ibp", "crown_ibp"):
        out[recipe] = training.train(models.create("mlp", hidden=(64,)), tr, key=key, recipe=recipe, eps=0.15,
                                     warmup_steps=20, ramp_steps=80, learning_rate=3e-3, eval_data=te,
                                     eval_attack=ev, **COMMON)
    return out


@pytest.mark.parametrize("recipe", ["ibp", "crown_ibp"])
def test_certified_training_learns_and_certifies(certified_runs, digits, recipe):
    """IBP / CROWN-IBP training: accurate, certified far above the standard model, and the bound loss decreases."""
    _, te = digits
    r, std = certified_runs[recipe], certified_runs["standard"]
    h = r.history
    assert h[-1]["clean_accuracy"] > 0.7
    assert h[-1]["train_eps"] == pytest.approx(0.15) and h[0]["kappa"] > h[-1]["kappa"] == pytest.approx(0.5)
    x, y = te.images, te.labels.astype(np.int32)
    cert = _certified_fraction(_ibp_margins(r.params, x, y, EPS), y)
    cert_std = _certified_fraction(_ibp_margins(std.params, x, y, EPS), y)
    assert cert > cert_std + 0.3
    # the history's certified accuracy: the recipe's own bound (IBP, or CROWN-IBP with beta = 1) at the eval eps
    own = cert if recipe == "ibp" else _certified_fraction(_crown_ibp_margins(r.params, x, y, EPS), y)
    assert h[-1]["certified_accuracy"] == pytest.approx(own, abs=2 / len(y))
    assert h[-1]["certified_accuracy"] <= h[-1]["robust_accuracy"]  # certified points are never broken
    # the IBP loss at the target eps falls from the initial to the trained parameters
    init = models.init_params(r.model, (8, 8, 1), key=jax.random.fold_in(jax.random.key(0), 0))
    loss = [np.mean(_ce(-_ibp_margins(p, x, y, 0.15), y)) for p in (init, r.params)]
    assert loss[1] < loss[0]


def test_fgsm_rs_learns_and_is_robust(digits, certified_runs):
    tr, te = digits
    ev = training.training_attack(norm="linf", eps=EPS, steps=10)
    r = training.train(models.create("mlp", hidden=(64,)), tr, key=jax.random.key(0), recipe="fgsm_rs", eps=EPS,
                       eval_data=te, eval_attack=ev, schedule="cyclic", learning_rate=3e-3, **COMMON)
    std = certified_runs["standard"]
    h = r.history
    assert h[-1]["clean_accuracy"] > 0.8 and h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["robust_accuracy"] > std.history[-1]["robust_accuracy"] + 0.05
    lrs = [e["lr"] for e in h]
    assert max(lrs) == pytest.approx(3e-3, rel=0.1) and lrs[-1] < 1e-4  # the cyclic schedule comes back down


# ---------------------------------------------------------------------------
# The chunked loop (lax.scan over device-side batches) equals the per-step loop
# ---------------------------------------------------------------------------


def _reference_loop(model, x, y, cfg, key):
    """The per-step training loop: host-gathered batches, one jitted step each, the same keys and order."""
    steps_per_epoch = len(x) // cfg.batch_size
    tx, _ = training._make_optimizer(cfg, steps_per_epoch * cfg.epochs)
    k_init, k_perm, k_step = (jax.random.fold_in(key, i) for i in range(3))
    params = models.init_params(model, x.shape[1:], key=k_init)
    state = tx.init(params)
    step = jax.jit(training._make_step(model.apply, tx, cfg))
    s = 0
    for epoch in range(cfg.epochs):
        perm = training._permutation(jax.random.fold_in(k_perm, epoch), len(x))
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            sched = training._schedules(cfg, s, np)
            args = [jnp.float32(v) for v in sched if v is not None] if cfg.certified or cfg.eps_warmup else []
            params, state, _ = step(params, state, x[idx], y[idx], jax.random.fold_in(k_step, s), *args)
            s += 1
    return params


@pytest.mark.parametrize("recipe, per_call", [("standard", 50), ("pgd", 3), ("ibp", 2)])
def test_chunked_loop_equals_per_step_loop(digits, monkeypatch, recipe, per_call):
    """Scanned chunks (the last one padded with skipped steps when K does not divide the epoch) = per-step loop."""
    tr, _ = digits
    x, y = tr.images[:7 * 16], tr.labels[:7 * 16].astype(np.int32)
    kw = dict(recipe=recipe, epochs=2, batch_size=16, optimizer="sgd", momentum=0.9, learning_rate=0.05,
              schedule="cosine", eps=EPS, norm="linf", attack_steps=2, eval_eps=0.0)
    if recipe == "pgd":
        kw["eps_warmup"] = 5
    if recipe == "ibp":
        kw.update(warmup_steps=2, ramp_steps=6)
    monkeypatch.setattr(training, "STEPS_PER_CALL", per_call)
    model = models.create("mlp", hidden=(16,))
    r = training.train(model, (x, y), key=jax.random.key(3), progress=False, **kw)
    assert r.steps == 14
    ref = _reference_loop(model, x, y, training.train_config(**kw), jax.random.key(3))
    assert _tree_maxdiff(r.params, ref) < 1e-6


def test_chunking_covers_every_step():
    for s in (1, 7, 49, 50, 51, 99, 100, 101, 1200):
        k, calls = training._chunking(s)
        assert k <= training.STEPS_PER_CALL and calls * k >= s and (calls - 1) * k < s
        assert calls == -(-s // training.STEPS_PER_CALL)
