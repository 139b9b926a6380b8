"""Training recipes: learning, robustness, reductions between recipes, gradient norms, resume, jit, sharding.

Independent references: a linear model whose cross-entropy input gradient
has the closed form ``W (softmax - onehot)`` (exact and finite-difference
gradient norms, the TV / Lipschitz terms of one step), recipes that reduce
to standard training (TRADES with beta = 0, gradient regularisation with zero
weights, soft labels equal to one-hot labels), and attacks from
:mod:`jaxbound.attacks` for the robust accuracy of the trained models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbound import attacks, bounds, data, metrics, models, training

REPO = Path(__file__).resolve().parents[1]
EPS = 0.1  # linf budget on 8x8 digits


def _tree_maxdiff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", split="train"), data.load("digits", split="test")


def _mlp():
    return models.create("mlp", hidden=(64,))


COMMON = dict(epochs=5, batch_size=32, norm="linf", eval_eps=EPS, eval_steps=10, progress=False)


@pytest.fixture(scope="module")
def runs(digits):
    """One small MLP per recipe on the 8x8 digits (5 epochs, batch 32)."""
    tr, te = digits
    key = jax.random.key(0)
    out = {}
    out["standard"] = training.train(_mlp(), tr, key=key, recipe="standard", eval_data=te, **COMMON)
    out["pgd"] = training.train(_mlp(), tr, key=key, recipe="pgd", eps=EPS, attack_steps=5, eval_data=te, **COMMON)
    out["trades"] = training.train(_mlp(), tr, key=key, recipe="trades", eps=EPS, attack_steps=5, beta=1.0,
                                   eval_data=te, **COMMON)
    out["gradient_reg"] = training.train(_mlp(), tr, key=key, recipe="gradient_reg", tv_weight=0.05,
                                         lip_weight=0.005, gradient_mode="fd", eval_data=te, **COMMON)
    return out


# ---------------------------------------------------------------------------
# Learning and robustness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["standard", "pgd", "trades", "gradient_reg"])
def test_recipe_learns(runs, digits, recipe):
    r = runs[recipe]
    _, te = digits
    h = r.history
    assert len(h) == 5 and r.steps == 5 * (len(digits[0]) // 32)
    assert h[-1]["clean_accuracy"] > 0.7  # chance is 0.1
    assert h[-1]["loss"] < h[0]["loss"]
    # The history's clean accuracy is the model's accuracy on the evaluation set.
    assert h[-1]["clean_accuracy"] == pytest.approx(metrics.accuracy(r.logits_fn(), te.images, te.labels), abs=1e-9)
    assert h[-1]["robust_accuracy"] <= h[-1]["clean_accuracy"]
    json.dumps(r.to_dict())
    assert r.logits_fn() is r.logits_fn()


def test_pgd_training_is_more_robust(runs, digits):
    _, te = digits
    rob = {}
    for name in ("standard", "pgd"):
        f = runs[name].logits_fn()
        res = attacks.pgd(f, te.images, te.labels, key=jax.random.key(5), eps=EPS, norm="linf", steps=20,
                          step_size=EPS / 8)
        rob[name] = metrics.robust_accuracy(f, te.images, te.labels, res).robust_accuracy
        # the in-training evaluation (PGD-10, any iterate) is an upper estimate close to PGD-20
        assert runs[name].history[-1]["robust_accuracy"] >= rob[name] - 0.05
    assert rob["pgd"] > rob["standard"] + 0.05, rob


def test_gradient_regularisation_lowers_gradient_norms(runs):
    std, reg = runs["standard"].history[-1], runs["gradient_reg"].history[-1]
    assert reg["grad_norm_mean"] < 0.8 * std["grad_norm_mean"]
    assert reg["grad_norm_max"] < std["grad_norm_max"]
    assert reg["grad_norm_mean"] <= reg["grad_norm_max"]
    assert "tv" in reg and "lip" in reg and reg["tv"] <= reg["lip"]


def test_soft_labels_from_optimal_probabilities(digits):
    """Bhagoji §4.3 pipeline: conflict graph -> OptProb -> clipped soft labels -> training."""
    tr, te = digits
    a, b = 3, 7
    xa, xb = data.class_pair(tr, a, b)
    x = np.concatenate([xa, xb])
    y = np.concatenate([np.full(len(xa), a), np.full(len(xb), b)])
    g = bounds.conflict_graph(xa, xb, eps=0.9, norm="l2")
    q = bounds.optprob(g)
    t = bounds.clipped_soft_labels(q, y, num_classes=10)
    assert np.all(t[np.arange(len(y)), y] >= 0.5)
    r = training.train(_mlp(), (x, y), key=jax.random.key(1), recipe="soft_labels", soft_labels=t, epochs=8,
                       batch_size=32, progress=False)
    mask = (te.labels == a) | (te.labels == b)
    acc = metrics.accuracy(r.logits_fn(), te.images[mask], te.labels[mask])
    assert acc > 0.9
    # the loss is the soft cross-entropy, bounded below by the targets' entropy
    ent = float(np.mean(-np.sum(np.where(t > 0, t * np.log(np.maximum(t, 1e-30)), 0.0), axis=1)))
    assert r.history[-1]["loss"] >= ent - 1e-3


# ---------------------------------------------------------------------------
# Reductions: recipes that must coincide with standard training
# ---------------------------------------------------------------------------


def _one_step(model, params, x, t, s, tx):
    step = jax.jit(training._make_step(model.apply, tx, s))
    return step(params, tx.init(params), x, t, jax.random.key(4))


def test_recipes_reduce_to_standard(digits):
    """One step of TRADES (beta=0), PGD (eps=0), gradient_reg (zero weights), soft labels (one-hot) = standard."""
    tr, _ = digits
    model = _mlp()
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:32], tr.labels[:32].astype(np.int32)
    tx = optax.sgd(0.1)
    p_std, _, m_std = _one_step(model, params, x, y, _settings(), tx)
    onehot = np.eye(10, dtype=np.float32)[y]
    others = [
        _one_step(model, params, x, onehot, _settings(recipe="soft_labels"), tx),
        _one_step(model, params, x, y, _settings(recipe="trades", eps=EPS, beta=0.0, attack_steps=2), tx),
        _one_step(model, params, x, y, _settings(recipe="gradient_reg"), tx),
    ]
    for p, _, m in others:
        assert _tree_maxdiff(p_std, p) < 1e-6
        assert float(m["loss"]) == pytest.approx(float(m_std["loss"]), rel=1e-6)
    assert _tree_maxdiff(p_std, params) > 1e-4  # the step did move


# ---------------------------------------------------------------------------
# Gradient norms: exact, finite difference, and the training terms
# ---------------------------------------------------------------------------


def _linear_model(seed=0, d=64, k=10):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    model = models.create("mlp", hidden=(), num_classes=k)
    params = {"params": {"out": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}}
    return model, params, w.astype(np.float64), b.astype(np.float64)


def _closed_form_grad(x, y, w, b):
    """``grad_x CE(W^T x + b, y) = W (softmax - onehot)`` for a linear model, float64."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    z = xf @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p @ w.T


DUALORD = {"l2": 2, "linf": 1, "l1": np.inf}


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_loss_gradient_norm_exact_and_fd(norm, rng):
    model, params, w, b = _linear_model()
    x = rng.uniform(0, 1, size=(40, 8, 8, 1)).astype(np.float32) * 0.3
    y = rng.integers(0, 10, size=40)
    f = models.logits_fn(model, params)
    ref = np.linalg.norm(_closed_form_grad(x, y, w, b), ord=DUALORD[norm], axis=1)
    exact = training.loss_gradient_norm(f, x, y, norm=norm)
    np.testing.assert_allclose(exact, ref, rtol=2e-4)
    fd = training.loss_gradient_norm(f, x, y, norm=norm, mode="fd", fd_step=1e-3)
    assert np.median(np.abs(fd - ref) / ref) < 0.02
    assert abs(fd.mean() - ref.mean()) / ref.mean() < 0.03
    with pytest.raises(ValueError, match="^x: is empty"):
        training.loss_gradient_norm(f, x[:0], y[:0], norm=norm)
    with pytest.raises(ValueError, match="^logits_fn: returned NaN"):
        training.loss_gradient_norm(lambda z: f(z) * jnp.nan, x, y, norm=norm)


def test_fd_matches_exact_on_trained_network(runs, digits):
    _, te = digits
    f = runs["standard"].logits_fn()
    x, y = te.images[:200], te.labels[:200]
    for norm in ("l2", "linf"):
        e = training.loss_gradient_norm(f, x, y, norm=norm)
        d = training.loss_gradient_norm(f, x, y, norm=norm, mode="fd")
        big = e > 1e-2  # float32 differences lose accuracy where the gradient is tiny
        assert big.sum() > 50
        assert np.median(np.abs(d[big] - e[big]) / e[big]) < 0.02
        assert abs(d.mean() - e.mean()) / e.mean() < 0.03


def _settings(**kw):
    base = dict(recipe="standard", epochs=1, batch_size=8, optimizer="sgd", learning_rate=0.1, momentum=0.0,
                weight_decay=0.0, schedule="constant", eps=None, norm="linf", attack_steps=3,
                attack_step_size=None, beta=6.0, tv_weight=0.0, lip_weight=0.0, gradient_mode="exact",
                fd_step=1e-3, eval_eps=None, eval_steps=5)
    base.update(kw)
    return training.train_config(**base)


@pytest.mark.parametrize("mode", ["exact", "fd"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_gradient_reg_terms_and_update(mode, norm, rng):
    """TV = batch mean, Lipschitz = batch max of the dual gradient norm; update = -lr * grad of eq. 2.9."""
    model, params, w, b = _linear_model(seed=1)
    x = (rng.uniform(0, 1, size=(8, 8, 8, 1)) * 0.3).astype(np.float32)
    y = rng.integers(0, 10, size=8).astype(np.int32)
    tv_w, lip_w, lr = 0.3, 0.2, 0.1
    s = _settings(recipe="gradient_reg", norm=norm, tv_weight=tv_w, lip_weight=lip_w, gradient_mode=mode,
                  learning_rate=lr)
    tx = optax.sgd(lr)
    step = training._make_step(model.apply, tx, s)
    new, _, m = jax.jit(step)(params, tx.init(params), x, y, jax.random.key(0))
    gn = np.linalg.norm(_closed_form_grad(x, y, w, b), ord=DUALORD[norm], axis=1)
    tol = 1e-4 if mode == "exact" else 2e-2
    assert float(m["tv"]) == pytest.approx(gn.mean(), rel=tol)
    assert float(m["lip"]) == pytest.approx(gn.max(), rel=tol)

    # Parameter gradient of the exact objective by central differences in float64 on one weight.
    def objective(w64):
        g = _closed_form_grad(x, y, w64, b)
        z = x.reshape(8, -1) @ w64 + b
        ce = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(8), y]
        n = np.linalg.norm(g, ord=DUALORD[norm], axis=1)
        return ce.mean() + tv_w * n.mean() + lip_w * n.max()

    i, j, h = 5, 3, 1e-6
    wp, wm = w.copy(), w.copy()
    wp[i, j] += h
    wm[i, j] -= h
    dnum = (objective(wp) - objective(wm)) / (2 * h)
    dstep = (w[i, j] - float(new["params"]["out"]["kernel"][i, j])) / lr
    assert dstep == pytest.approx(dnum, rel=0.05 if mode == "fd" else 1e-3, abs=1e-4)


@pytest.mark.parametrize("recipe, mode", [("gradient_reg", "exact"),
                                          pytest.param("pgd", "exact", marks=pytest.mark.slow),
                                          pytest.param("trades", "exact", marks=pytest.mark.slow),
                                          pytest.param("gradient_reg", "fd", marks=pytest.mark.slow)])
def test_jit_equals_eager_one_step(recipe, mode, digits):
    tr, _ = digits
    model = models.create("mlp", hidden=(16,))
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:8], tr.labels[:8].astype(np.int32)
    s = _settings(recipe=recipe, eps=EPS, norm="linf", attack_steps=2, tv_weight=0.1, lip_weight=0.05, beta=2.0,
                  gradient_mode=mode)
    tx = optax.adam(1e-3)
    step = training._make_step(model.apply, tx, s)
    state = tx.init(params)
    key = jax.random.key(7)
    p1, _, m1 = jax.jit(step)(params, state, x, y, key)
    with jax.disable_jit():
        p2, _, m2 = step(params, state, x, y, key)
    assert _tree_maxdiff(p1, p2) < 1e-5
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-4)


# ---------------------------------------------------------------------------
# Determinism, checkpoints and resume
# ---------------------------------------------------------------------------


def test_resume_equals_uninterrupted_run(digits, tmp_path, monkeypatch):
    tr, _ = digits
    x, y = tr.images[:320], tr.labels[:320]
    kw = dict(recipe="pgd", eps=EPS, norm="linf", attack_steps=2, epochs=3, batch_size=64, progress=False,
              optimizer="sgd", momentum=0.9, learning_rate=0.05, schedule="piecewise")
    full = training.train(_mlp(), (x, y), key=jax.random.key(1), history_path=tmp_path / "h.json", **kw)
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved["steps"] == full.steps == 15 and len(saved["history"]) == 3
    assert saved["history"][1]["lr"] == pytest.approx(0.005)  # x0.1 after 50 % of the steps

    ck = tmp_path / "ck"
    orig = training._permutation
    calls = []

    def interrupt(key, n):
        calls.append(n)
        if len(calls) == 3:  # start of the third epoch
            raise KeyboardInterrupt
        return orig(key, n)

    monkeypatch.setattr(training, "_permutation", interrupt)
    with pytest.raises(KeyboardInterrupt):
        training.train(_mlp(), (x, y), key=jax.random.key(1), checkpoint_dir=ck, **kw)
    monkeypatch.setattr(training, "_permutation", orig)
    assert json.loads((ck / "meta.json").read_text())["epoch"] == 2
    resumed = training.train(_mlp(), (x, y), key=jax.random.key(1), checkpoint_dir=ck, **kw)
    assert _tree_maxdiff(full.params, resumed.params) == 0.0
    assert resumed.steps == full.steps
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(to_json(resumed.history)) == strip(to_json(full.history))
    # A finished checkpoint returns at once; another key (another run) is refused.
    again = training.train(_mlp(), (x, y), key=jax.random.key(1), checkpoint_dir=ck, **kw)
    assert _tree_maxdiff(again.params, full.params) == 0.0
    with pytest.raises(ValueError, match="checkpoint_dir"):
        training.train(_mlp(), (x, y), key=jax.random.key(2), checkpoint_dir=ck, **kw)


def to_json(obj):
    return json.loads(json.dumps(obj))


def _scripted_robust_accuracy(monkeypatch, values):
    """Make epoch ``e``'s recorded robust accuracy ``values[e - 1]`` (the real evaluation still runs)."""
    orig = training._evaluate

    def evaluate(d, cfg, params, key):
        out = orig(d, cfg, params, key)
        out["robust_accuracy"] = values[len(seen)]
        seen.append(out["robust_accuracy"])
        return out

    seen = []
    monkeypatch.setattr(training, "_evaluate", evaluate)
    return seen


@pytest.mark.parametrize("values, chosen", [((0.5, 0.9, 0.1), 2), ((0.6, 0.6, 0.2), 2), ((0.1, 0.2, 0.3), 3)])
def test_select_best_robust_returns_the_selected_epochs_parameters(digits, monkeypatch, values, chosen):
    """Early stopping: the parameters are those of a run stopped after the selected epoch (later epoch on ties)."""
    tr, te = digits
    x, y = tr.images[:256], tr.labels[:256]
    kw = dict(recipe="fgsm_rs", eps=EPS, norm="linf", batch_size=64, progress=False, eval_data=(te.images[:64],
              te.labels[:64]), eval_steps=2)  # constant learning rate: the first epochs do not depend on `epochs`
    with monkeypatch.context() as m:
        _scripted_robust_accuracy(m, values)
        best = training.train(_mlp(), (x, y), key=jax.random.key(3), epochs=3, select="best_robust", **kw)
    assert best.epoch == chosen and best.to_dict()["epoch"] == chosen
    assert [h["robust_accuracy"] for h in best.history] == list(values) and best.steps == 12
    stopped = training.train(_mlp(), (x, y), key=jax.random.key(3), epochs=chosen, **kw)
    assert _tree_maxdiff(best.params, stopped.params) == 0.0
    last = training.train(_mlp(), (x, y), key=jax.random.key(3), epochs=3, **kw)
    assert last.epoch == 3
    assert (_tree_maxdiff(best.params, last.params) == 0.0) == (chosen == 3)
    acc = metrics.accuracy(best.logits_fn(), te.images[:64], te.labels[:64])
    assert acc == pytest.approx(best.history[chosen - 1]["clean_accuracy"])


def test_select_best_robust_resumes_with_the_selected_parameters(digits, tmp_path, monkeypatch):
    tr, te = digits
    x, y = tr.images[:256], tr.labels[:256]
    kw = dict(recipe="fgsm_rs", eps=EPS, norm="linf", batch_size=64, epochs=3, progress=False, select="best_robust",
              eval_data=(te.images[:64], te.labels[:64]), eval_steps=2, schedule="cyclic", learning_rate=0.01)
    with monkeypatch.context() as m:
        _scripted_robust_accuracy(m, (0.2, 0.8, 0.5))
        full = training.train(_mlp(), (x, y), key=jax.random.key(4), **kw)
    ck = tmp_path / "ck"
    orig = training._permutation
    calls = []

    def interrupt(key, n):
        calls.append(n)
        if len(calls) == 3:  # start of the third epoch: the selected epoch 2 is in the checkpoint
            raise KeyboardInterrupt
        return orig(key, n)

    with monkeypatch.context() as m:
        seen = _scripted_robust_accuracy(m, (0.2, 0.8, 0.5))
        m.setattr(training, "_permutation", interrupt)
        with pytest.raises(KeyboardInterrupt):
            training.train(_mlp(), (x, y), key=jax.random.key(4), checkpoint_dir=ck, **kw)
    assert json.loads((ck / "meta.json").read_text())["epoch"] == 2 and len(seen) == 2
    with monkeypatch.context() as m:
        _scripted_robust_accuracy(m, (0.5,))  # only the third epoch is evaluated again
        resumed = training.train(_mlp(), (x, y), key=jax.random.key(4), checkpoint_dir=ck, **kw)
    assert resumed.epoch == full.epoch == 2
    assert _tree_maxdiff(resumed.params, full.params) == 0.0


def test_select_needs_a_robust_evaluation():
    with pytest.raises(ValueError, match="^select"):
        training.TrainConfig(select="best")
    with pytest.raises(ValueError, match="^select: 'best_robust' needs"):
        training.TrainConfig(select="best_robust")
    cfg = training.TrainConfig(select="best_robust", eval_attack=attacks.AttackConfig(norm="linf", eps=0.1))
    assert cfg.to_dict()["select"] == "best_robust"


def test_other_key_gives_other_model(digits):
    tr, _ = digits
    x, y = tr.images[:128], tr.labels[:128]
    kw = dict(epochs=1, batch_size=64, progress=False)
    a = training.train(_mlp(), (x, y), key=jax.random.key(1), **kw)
    b = training.train(_mlp(), (x, y), key=jax.random.key(1), **kw)
    c = training.train(_mlp(), (x, y), key=jax.random.key(2), **kw)
    assert _tree_maxdiff(a.params, b.params) == 0.0
    assert _tree_maxdiff(a.params, c.params) > 1e-3


# ---------------------------------------------------------------------------
# Data parallel over (forced) host devices
# ---------------------------------------------------------------------------


DP_RUNS = {"standard": dict(recipe="standard", epochs=1, batch_size=64, optimizer="sgd", learning_rate=0.05,
                            progress=False),
           "pgd": dict(recipe="pgd", norm="l2", eps=0.5, attack_steps=2, epochs=1, batch_size=64, optimizer="sgd",
                       learning_rate=0.05, eval_eps=0.0, progress=False)}


@pytest.mark.parametrize("recipe", ["standard", pytest.param("pgd", marks=pytest.mark.slow)])
def test_data_parallel_matches_single_device(tmp_path, digits, recipe):
    """The same run with the batch split over 2 forced host devices (subprocess) equals the 1-device run."""
    DP_RUN = DP_RUNS[recipe]
    script = textwrap.dedent(
        f"""
        import sys, jax, numpy as np
        from jaxbound import data, models, training
        ds = data.load("digits")
        r = training.train(models.create("mlp", hidden=(32,)),
                           (ds.images[:256], ds.labels[:256]), key=jax.random.key(1), **{DP_RUN!r})
        np.savez(sys.argv[1], ndev=r.config["devices"], *[np.asarray(a) for a in jax.tree.leaves(r.params)])
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    path = tmp_path / "p2.npz"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, cwd=REPO, timeout=300)
    two = np.load(path)
    assert int(two["ndev"]) == 2
    tr, _ = digits
    one = training.train(models.create("mlp", hidden=(32,)), (tr.images[:256], tr.labels[:256]),
                         key=jax.random.key(1), **DP_RUN)
    assert one.config["devices"] == len(jax.local_devices()) == 1
    for i, leaf in enumerate(jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(leaf), two[f"arr_{i}"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(recipe="magic"), "recipe"),
        (dict(recipe="pgd", eps=-0.1), "eps"),
        (dict(recipe="pgd"), "eps"),
        (dict(recipe="trades", eps=0.1, beta=-1.0), "beta"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=10_000), "batch_size"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(schedule="weird"), "schedule"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(recipe="gradient_reg", tv_weight=-1.0), "tv_weight"),
        (dict(recipe="gradient_reg", gradient_mode="spectral"), "gradient_mode"),
        (dict(recipe="gradient_reg", fd_step=0.0), "fd_step"),
        (dict(norm="l7x"), "norm"),
        (dict(recipe="soft_labels"), "soft_labels"),
        (dict(recipe="standard", soft_labels=np.full((64, 10), 0.1, np.float32)), "soft_labels"),
        (dict(recipe="soft_labels", soft_labels=np.full((64, 10), 0.2, np.float32)), "soft_labels"),
        (dict(recipe="soft_labels", soft_labels=np.full((64, 9), 1 / 9, np.float32)), "soft_labels"),
        (dict(epochs=-1), "epochs"),
        (dict(eval_eps=-1.0), "eval_eps"),
    ],
)
def test_bad_configurations_rejected(digits, kw, match):
    tr, _ = digits
    with pytest.raises(ValueError, match=f"^{match}"):
        training.train(_mlp(), (tr.images[:64], tr.labels[:64]), key=jax.random.key(0), progress=False,
                       **{"batch_size": 32, "norm": "linf", **kw})


def test_bad_model_and_data_rejected(digits):
    tr, _ = digits
    x, y = tr.images[:128], tr.labels[:128]
    with pytest.raises(ValueError, match="^model"):
        training.train("resnet9000", (x, y), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^model"):
        training.train(object(), (x, y), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^train_data"):
        training.train(_mlp(), (x * 2.0, y), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^train_data"):
        training.train(_mlp(), (np.where(x > 0.5, np.nan, x), y), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^train_data"):
        training.train(_mlp(), (x, y[:10]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^train_data"):
        training.train(models.create("mlp", num_classes=5), (x, y), key=jax.random.key(0))
    with pytest.raises(ValueError, match="^key"):
        training.train(_mlp(), (x, y), key=0)


def test_epochs_zero_raises_instead_of_returning_an_untrained_model(digits):
    tr, _ = digits
    with pytest.raises(ValueError, match="^epochs: must be >= 1, got 0"):
        training.train("mlp", tr, key=jax.random.key(0), epochs=0, progress=False)
    with pytest.raises(ValueError, match="^epochs"):
        training.TrainConfig(epochs=0)


def _damage_checkpoint(ck, how):
    """Damage a training checkpoint folder the ways a crash, a disk or a user can."""
    meta = ck / "meta.json"
    if how == "meta_truncated":
        meta.write_bytes(meta.read_bytes()[:25])
    elif how == "meta_random":
        meta.write_bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes())
    elif how == "meta_empty_object":
        meta.write_text("{}")
    elif how in ("orbax_truncated", "orbax_random"):
        files = sorted(f for f in ck.rglob("*") if f.is_file() and f.stat().st_size > 0 and f.name != "meta.json")
        for f in files:
            b = f.read_bytes()
            f.write_bytes(b[: len(b) // 3] if how == "orbax_truncated"
                          else np.random.default_rng(1).integers(0, 256, len(b), np.uint8).tobytes())
    elif how == "orbax_missing":
        import shutil

        shutil.rmtree(next(ck.glob("epoch_*")))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["meta_truncated", "meta_random", "meta_empty_object", "orbax_truncated",
                                 "orbax_random", "orbax_missing"])
def test_damaged_checkpoint_trains_from_the_start_with_one_warning(digits, tmp_path, monkeypatch, how):
    tr, _ = digits
    x, y = tr.images[:128], tr.labels[:128]
    kw = dict(epochs=2, batch_size=64, progress=False)
    full = training.train(_mlp(), (x, y), key=jax.random.key(1), **kw)
    ck = tmp_path / "ck"
    orig, calls = training._permutation, []

    def interrupt(key, n):
        calls.append(n)
        if len(calls) == 2:  # start of the second epoch: the first is checkpointed
            raise KeyboardInterrupt
        return orig(key, n)

    with monkeypatch.context() as m:
        m.setattr(training, "_permutation", interrupt)
        with pytest.raises(KeyboardInterrupt):
            training.train(_mlp(), (x, y), key=jax.random.key(1), checkpoint_dir=ck, **kw)
    _damage_checkpoint(ck, how)
    with pytest.warns(RuntimeWarning, match="training checkpoint .*(meta.json|epoch_)") as rec:
        again = training.train(_mlp(), (x, y), key=jax.random.key(1), checkpoint_dir=ck, **kw)
    assert len([r for r in rec if issubclass(r.category, RuntimeWarning)]) == 1
    assert again.steps == full.steps == 4 and _tree_maxdiff(again.params, full.params) == 0.0


# ---------------------------------------------------------------------------
# Real MNIST (slow)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mnist_lenet5_pgd_vs_standard(mnist_train, mnist_test):
    sub = data.random_subset(mnist_train, key=jax.random.key(0), n=2000)
    te = mnist_test.subset(np.arange(500))
    kw = dict(epochs=4, batch_size=50, eval_data=te, norm="linf", eval_eps=0.1, eval_steps=10, progress=False)
    m = models.create("lenet5", widen_factor=0.25)
    std = training.train(m, sub, key=jax.random.key(0), recipe="standard", **kw)
    adv = training.train(m, sub, key=jax.random.key(0), recipe="pgd", eps=0.1, attack_steps=7, **kw)
    assert std.history[-1]["clean_accuracy"] > 0.9
    assert adv.history[-1]["clean_accuracy"] > 0.85
    assert adv.history[-1]["robust_accuracy"] > std.history[-1]["robust_accuracy"] + 0.1


def test_eps_warmup_scales_the_training_attack(digits):
    """A step at ramp scale 0.5 equals a full-scale step with half the budget and half the step length."""
    tr, _ = digits
    model = _mlp()
    params = models.init_params(model, (8, 8, 1), key=jax.random.key(0))
    x, y = tr.images[:16], tr.labels[:16].astype(np.int32)
    tx = optax.sgd(0.1)
    full = _settings(recipe="pgd", eps=0.2, norm="linf", attack_steps=3, attack_step_size=0.08)
    half = _settings(recipe="pgd", eps=0.1, norm="linf", attack_steps=3, attack_step_size=0.04)
    key = jax.random.key(3)
    a, _, ma = jax.jit(training._make_step(model.apply, tx, full))(params, tx.init(params), x, y, key,
                                                                   jnp.float32(0.5))
    b, _, mb = jax.jit(training._make_step(model.apply, tx, half))(params, tx.init(params), x, y, key)
    c, _, _ = jax.jit(training._make_step(model.apply, tx, full))(params, tx.init(params), x, y, key)
    assert _tree_maxdiff(a, b) < 1e-6
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    assert _tree_maxdiff(a, c) > 1e-6  # the ramp changes the step
    r = training.train(model, (x, y), key=jax.random.key(1), recipe="pgd", eps=0.2, norm="linf", attack_steps=2,
                       epochs=1,
                       batch_size=8, eps_warmup=10, eval_eps=0, progress=False)
    assert r.to_dict()["config"]["eps_warmup"] == 10 and r.steps == 2
    with pytest.raises(ValueError, match="eps_warmup"):
        training.train(model, (x, y), key=jax.random.key(1), recipe="pgd", eps=0.2, norm="linf", eps_warmup=-1,
                       progress=False)


# ---------------------------------------------------------------------------
# TrainConfig
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(recipe="magic"), "recipe"),
        (dict(epochs=-1), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(schedule="weird"), "schedule"),
        (dict(attack="linf"), "attack"),
        (dict(recipe="pgd", attack=attacks.AttackConfig(norm="linf", eps=(0.1, 0.2))), "attack"),
        (dict(recipe="pgd", attack=attacks.AttackConfig(norm="linf", eps=0.1, restarts=2)), "attack"),
        (dict(recipe="pgd", attack=attacks.AttackConfig(norm="linf", eps=0.1, loss="margin")), "attack"),
        (dict(eps_warmup=-1), "eps_warmup"),
        (dict(beta=-1.0), "beta"),
        (dict(tv_weight=-1.0), "tv_weight"),
        (dict(lip_weight=-1.0), "lip_weight"),
        (dict(gradient_mode="spectral"), "gradient_mode"),
        (dict(fd_step=0.0), "fd_step"),
        (dict(eval_attack=3), "eval_attack"),
        (dict(recipe="pgd"), "eps"),
        (dict(recipe="trades"), "eps"),
        (dict(recipe="gradient_reg"), "norm"),
    ],
)
def test_train_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        training.TrainConfig(**kw)


def test_train_config_fields_settings_and_old_keywords():
    fields = {f.name: f for f in __import__("dataclasses").fields(training.TrainConfig)}
    assert all(f.metadata.get("help") for f in fields.values())
    cfg = training.TrainConfig(recipe="pgd", attack=attacks.AttackConfig(norm="l2", eps=0.5, steps=3))
    assert hash(cfg) == hash(training.TrainConfig(recipe="pgd", attack=attacks.AttackConfig(norm="l2", eps=0.5,
                                                                                             steps=3)))
    json.dumps(cfg.to_dict())
    assert cfg.to_dict()["attack"]["eps"] == 0.5 and cfg.threat_norm == "l2"
    assert cfg.evaluation == attacks.AttackConfig(norm="l2", eps=0.5, steps=20)
    # the old keywords build the same configuration
    old = training.train_config(recipe="pgd", eps=0.5, norm="l2", attack_steps=3)
    assert old == cfg
    assert training.train_config(cfg, eval_eps=0.25, eval_steps=7).eval_attack == \
        attacks.AttackConfig(norm="l2", eps=0.25, steps=7)
    assert training.train_config(recipe="pgd", eps=0.1, norm="linf").attack.steps == 10  # the old default
    assert training.train_config(recipe="gradient_reg", norm="l1").attack == attacks.AttackConfig(norm="l1", eps=0.0,
                                                                                                  steps=10)
    assert training.train_config(cfg, epochs=3).epochs == 3 and training.train_config(cfg) is cfg
    with pytest.raises(TypeError, match="^attack_stepz"):
        training.train_config(attack_stepz=3)
    with pytest.raises(TypeError, match="^config"):
        training.train_config({"recipe": "pgd"})
    with pytest.raises(ValueError, match="^norm"):
        training.train_config(recipe="pgd", eps=0.1)  # the threat model is never defaulted
    with pytest.raises(ValueError, match="^norm"):
        training.train_config(eval_eps=0.1)


def test_config_equals_keywords_and_optax_optimizer(digits):
    tr, te = digits
    x, y = tr.images[:128], tr.labels[:128]
    ev = (te.images[:64], te.labels[:64])
    kw = dict(recipe="pgd", eps=0.1, norm="linf", attack_steps=2, epochs=1, batch_size=32, optimizer="sgd",
              momentum=0.0, learning_rate=0.05, eval_eps=0.05, eval_steps=3)
    a = training.train(_mlp(), (x, y), key=jax.random.key(4), eval_data=ev, progress=False, **kw)
    cfg = training.TrainConfig(recipe="pgd", epochs=1, batch_size=32, optimizer="sgd", momentum=0.0,
                               learning_rate=0.05, attack=attacks.AttackConfig(norm="linf", eps=0.1, steps=2),
                               eval_attack=attacks.AttackConfig(norm="linf", eps=0.05, steps=3))
    b = training.train(_mlp(), (x, y), cfg, key=jax.random.key(4), eval_data=ev, progress=False)
    assert _tree_maxdiff(a.params, b.params) == 0.0
    assert a.history[0]["robust_accuracy"] == b.history[0]["robust_accuracy"]
    assert a.config == b.config
    # any optax GradientTransformation: plain SGD gives the same parameters as optimizer="sgd"
    c = training.train(_mlp(), (x, y), cfg.replace(optimizer=optax.sgd(0.05)), key=jax.random.key(4), eval_data=ev,
                       progress=False)
    assert _tree_maxdiff(a.params, c.params) < 1e-6
    assert c.history[0]["lr"] is None and a.history[0]["lr"] == pytest.approx(0.05)
    json.dumps(c.to_dict())
    with pytest.raises(TypeError, match="^recipes"):
        training.train(_mlp(), (x, y), cfg, key=jax.random.key(4), recipes="pgd")


def test_training_attack_takes_training_steps_unless_given():
    from jaxbound import attacks

    a = training.training_attack(norm="linf", eps=0.3)
    assert a.steps == training.TRAIN_ATTACK_STEPS == 10
    assert a == attacks.AttackConfig(norm="linf", eps=0.3, steps=10)
    assert training.training_attack(norm="l2", eps=1.0, steps=7).steps == 7
    base = attacks.AttackConfig(norm="l2", eps=1.0, steps=3)
    assert training.training_attack(base, eps=0.5) == base.replace(eps=0.5)
    # the old keyword path builds the same attack
    assert training.train_config(recipe="pgd", eps=0.3, norm="linf").attack == a
    with pytest.raises(TypeError, match="foo"):
        training.training_attack(norm="linf", eps=0.3, foo=1)
