"""APGD, FAB, Square and the AutoAttack ensemble against closed forms, invariances and gradient masking.

On a binary affine classifier ``logits = [0, w.x + b]`` (no box) the minimal
adversarial distance is ``|w.x + b| / ||w||_*`` (dual norm): every point
closer than ``eps`` must be broken and none farther. FAB is a minimum-norm
attack and must land within 1% of that distance. A model whose backward
pass returns noise (``jax.custom_vjp``) defeats the gradient attacks; the
gradient-free Square attack must bring robust accuracy back close to the
true-gradient value.

Compilation dominates the run time here (each kernel is a 100-step loop
compiled per block size): the tests reuse one model object and the same
static settings, and the ensemble runs are marked slow.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import attacks
from _affine import Affine  # noqa: E402

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def aff():
    return Affine(d=12, n=10, flip=[3])


class Net:
    """A fixed random 10-class tanh network on 6x6x1 'images' (one object, so kernels compile once)."""

    def __init__(self, seed=1, n=24):
        rng = np.random.default_rng(seed)
        w1 = jnp.asarray(rng.normal(size=(36, 24)).astype(np.float32) / 3)
        w2 = jnp.asarray(rng.normal(size=(24, 10)).astype(np.float32))
        self.x = rng.uniform(0, 1, size=(n, 6, 6, 1)).astype(np.float32)

        def f(z):
            return jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2

        self.f = f
        self.y = np.array(jnp.argmax(f(self.x), 1)).astype(np.int64)
        self.y[:2] = (self.y[:2] + 1) % 10  # two clean errors


@pytest.fixture(scope="module")
def net():
    return Net()


SMALL = dict(steps=10, n_queries=30, n_targets=2)


# ---------------------------------------------------------------------------
# Closed forms on affine classifiers
# ---------------------------------------------------------------------------


def test_apgd_schedule_matches_paper():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (next 1.05 > 1)
    assert attacks.apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert attacks.apgd_checkpoints(1) == (1,)
    # other budgets: the reference code's integer windows (first int(0.22 N), then shorter by int(0.03 N), at
    # least int(0.06 N), each at least 1), simulated here independently
    for steps in (2, 10, 20, 37, 250):
        k, decr, kmin = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
        ref, counter = [], 0
        for i in range(steps):
            counter += 1
            if counter == k:
                ref.append(i + 1)
                counter, k = 0, max(k - decr, kmin)
        assert attacks.apgd_checkpoints(steps) == tuple(ref), steps


def test_dlr_loss_closed_form():
    z = jnp.asarray([[4.0, 1.0, 3.0, 0.0, 2.0]])
    y = jnp.asarray([0])
    # untargeted: -(z_y - max_{i != y}) / (pi1 - pi3) = -(4 - 3) / (4 - 2)
    np.testing.assert_allclose(attacks.dlr_loss(z, y), [-0.5], rtol=1e-6)
    # targeted at class 1: -(4 - 1) / (4 - (2 + 1) / 2)
    np.testing.assert_allclose(attacks.dlr_loss(z, y, jnp.asarray([1])), [-3 / 2.5], rtol=1e-6)
    # invariant to shift and positive scale
    np.testing.assert_allclose(attacks.dlr_loss(3 * z + 7, y), [-0.5], rtol=1e-6)


@pytest.mark.parametrize("norm", ["linf", pytest.param("l2", marks=pytest.mark.slow),
                                  pytest.param("l1", marks=pytest.mark.slow)])
def test_apgd_breaks_exactly_the_points_closer_than_eps(aff, norm):
    d = aff.dist(norm)
    eps = float(np.median(d[aff.y == aff.pred]))
    r = attacks.apgd(aff.f, aff.x, aff.y, key=KEY, norm=norm, eps=eps, steps=20, bounds=None)
    clean_err = aff.y != aff.pred
    assert np.all(r.success[(d < 0.98 * eps) | clean_err])
    assert not np.any(r.success[(d > eps) & ~clean_err])
    assert np.all(r.norm(norm) <= eps * (1 + 1e-5) + 1e-7)
    np.testing.assert_array_equal(r.success, (np.asarray(aff.f(r.x_adv)).argmax(1) != aff.y))


@pytest.mark.parametrize("norm", [pytest.param("linf", marks=pytest.mark.slow), "l2",
                                  pytest.param("l1", marks=pytest.mark.slow)])
def test_fab_finds_the_exact_minimal_distance(aff, norm):
    d = aff.dist(norm)
    ok = aff.y == aff.pred
    r = attacks.fab(aff.f, aff.x, aff.y, key=KEY, norm=norm, eps=1.0, steps=20, bounds=None)
    assert r.success.all()
    dist = r.norm(norm)
    assert np.all(dist[ok] >= d[ok] * (1 - 1e-5))  # never below the exact distance
    assert np.all(dist[ok] <= d[ok] * 1.01)  # and within 1% of it
    assert dist[~ok].max() == 0.0  # clean errors stay at x


@pytest.mark.slow
def test_fab_untargeted_and_box_projection(aff):
    # with the [0, 1] box inactive at these distances, FAB-T and untargeted FAB agree on a binary model
    a = attacks.fab(aff.f, aff.x, aff.y, key=KEY, norm="l2", eps=1.0, steps=20, targeted=False)
    assert a.success.all() and a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    ok = aff.y == aff.pred
    np.testing.assert_allclose(a.l2[ok], aff.dist("l2")[ok], rtol=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_never_beats_the_exact_distance(aff, norm):
    d = aff.dist(norm)
    ok = aff.y == aff.pred
    eps = float(np.median(d[ok]))
    r = attacks.square(aff.f, aff.x, aff.y, key=KEY, norm=norm, eps=eps, n_queries=300, bounds=None)
    assert not np.any(r.success[(d > eps) & ok])
    assert np.all(r.success[~ok])
    assert np.all(r.norm(norm) <= eps * (1 + 1e-5) + 1e-7)
    if norm == "linf":  # a vertex of the box: the stripes' sign search finds it
        assert np.all(r.success[d < 0.98 * eps])


# ---------------------------------------------------------------------------
# The ensemble: bookkeeping, invariances, sizes 0 and 1, checkpoints
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_autoattack_standard_bookkeeping(net):
    eps = 0.05
    r = attacks.autoattack(net.f, net.x, net.y, key=KEY, norm="linf", eps=eps, **SMALL)
    assert r.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    n = len(net.y)
    clean = np.asarray(net.f(net.x)).argmax(1) == net.y
    assert r.robust_accuracy[0] == clean.mean() and np.all(np.diff(r.robust_accuracy) <= 0)
    assert r.accuracy == r.robust.mean() and r.robust.sum() <= clean.sum()
    np.testing.assert_array_equal(r.broken_by == 0, ~clean)
    np.testing.assert_array_equal(r.broken_by == -1, r.robust)
    for j in range(1, 5):  # accuracy drop after attack j = points it broke
        assert np.isclose(r.robust_accuracy[j - 1] - r.robust_accuracy[j], np.mean(r.broken_by == j))
    # x_adv: in the ball and the box, misclassified where broken by an attack, x elsewhere
    assert np.all(r.linf <= eps * (1 + 1e-5) + 1e-7) and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    pred_adv = np.asarray(net.f(r.x_adv)).argmax(1)
    assert np.all(pred_adv[r.broken_by > 0] != net.y[r.broken_by > 0])
    np.testing.assert_array_equal(r.x_adv[r.broken_by <= 0], net.x[r.broken_by <= 0])
    np.testing.assert_allclose(r.logits, np.asarray(net.f(r.x_adv)), atol=1e-4)
    assert r.checks["warnings"] == [] and r.checks["clean_accuracy_consistent"]
    d = r.to_dict()
    assert d["n"] == n and set(d["robust_accuracy_after"]) == set(r.attacks)
    assert set(d["broken_by"]) <= {"robust", "clean", *r.attacks}
    # the same key: bit-identical, whatever the batch size
    r2 = attacks.autoattack(net.f, net.x, net.y, key=KEY, norm="linf", eps=eps, batch_size=5, **SMALL)
    np.testing.assert_array_equal(r2.x_adv, r.x_adv)
    np.testing.assert_array_equal(r2.broken_by, r.broken_by)


def test_autoattack_sizes_zero_and_one(net):
    r0 = attacks.autoattack(net.f, net.x[:0], net.y[:0], key=KEY, norm="linf", eps=0.05, **SMALL)
    assert r0.x_adv.shape == (0, 6, 6, 1) and r0.robust.shape == (0,) and r0.logits.shape == (0, 10)
    assert r0.robust_accuracy.shape == (5,)
    r1 = attacks.autoattack(net.f, net.x[2:3], net.y[2:3], key=KEY, norm="linf", eps=0.05, attacks=["apgd-ce"],
                            steps=10)
    assert r1.robust.shape == (1,)
    a1 = attacks.apgd(net.f, net.x[2:3], net.y[2:3], key=jax.random.fold_in(KEY, 0), norm="linf", eps=0.05,
                      steps=10)
    assert bool(r1.robust[0]) == (not bool(a1.success[0]))
    e = attacks.apgd(net.f, net.x[:0], net.y[:0], key=KEY, norm="l2", eps=0.5)
    assert e.x_adv.shape == (0, 6, 6, 1) and e.success.shape == (0,)


def test_apgd_jit_equals_eager_and_repeats(net):
    kw = dict(key=KEY, norm="linf", eps=0.05, steps=10)
    eager = attacks.apgd(net.f, net.x, net.y, **kw)
    again = attacks.apgd(net.f, net.x, net.y, **kw)
    jitted = jax.jit(lambda x, y: attacks.apgd(net.f, x, y, **kw))(jnp.asarray(net.x), jnp.asarray(net.y))
    np.testing.assert_array_equal(again.x_adv, eager.x_adv)
    np.testing.assert_array_equal(np.asarray(jitted.x_adv), eager.x_adv)
    np.testing.assert_array_equal(np.asarray(jitted.success), eager.success)
    other = attacks.apgd(net.f, net.x, net.y, **{**kw, "key": jax.random.key(1)})
    assert not np.array_equal(other.x_adv, eager.x_adv)


@pytest.mark.slow
def test_autoattack_checkpoint_resumes_and_survives_damage(net, tmp_path, monkeypatch):
    kw = dict(key=KEY, norm="linf", eps=0.05, attacks=["apgd-ce", "apgd-t"], steps=10, n_targets=2)
    full = attacks.autoattack(net.f, net.x, net.y, **kw)
    ck = tmp_path / "aa"
    real = attacks._run_attack
    calls = []

    def stop_second(*a, **k):
        calls.append(k.get("desc"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(attacks, "_run_attack", stop_second)
    with pytest.raises(KeyboardInterrupt):
        attacks.autoattack(net.f, net.x, net.y, checkpoint=ck, **kw)
    assert (ck / "autoattack_state.npz").exists()
    calls.clear()
    monkeypatch.setattr(attacks, "_run_attack", lambda *a, **k: (calls.append(k.get("desc")), real(*a, **k))[1])
    resumed = attacks.autoattack(net.f, net.x, net.y, checkpoint=ck, **kw)
    assert calls and set(calls) == {"apgd-t"}  # apgd-ce came from the saved state (apgd-t: one call per target)
    np.testing.assert_array_equal(resumed.x_adv, full.x_adv)
    np.testing.assert_array_equal(resumed.broken_by, full.broken_by)
    assert not ck.exists()
    ck.mkdir()
    (ck / "autoattack_state.npz").write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="damaged"):
        again = attacks.autoattack(net.f, net.x, net.y, checkpoint=ck, **kw)
    np.testing.assert_array_equal(again.x_adv, full.x_adv)


# ---------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_self_checks_flag_masking_randomness_and_probabilities(net):
    kw = dict(key=KEY, norm="linf", eps=0.05, attacks=["apgd-ce"], steps=10)

    def frozen(z):  # zero gradients everywhere
        return jax.lax.stop_gradient(net.f(z))

    with pytest.warns(UserWarning, match="gradient"):
        r = attacks.autoattack(frozen, net.x, net.y, **kw)
    assert r.checks["zero_gradient_fraction"] == 1.0

    def probs(z):
        return jax.nn.softmax(net.f(z), axis=-1)

    with pytest.warns(UserWarning, match="probabilities"):
        assert attacks.autoattack(probs, net.x, net.y, **kw).checks["probability_outputs"]
    rng = np.random.default_rng(0)

    def noisy(z):  # host randomness: differs between eager calls
        return net.f(z) + jnp.asarray(rng.normal(size=(1, 10)).astype(np.float32) * 1e-3)

    with pytest.warns(UserWarning, match="rand"):
        assert attacks.autoattack(noisy, net.x, net.y, **kw).checks["randomized_outputs"]


@pytest.mark.slow
def test_rand_version_with_a_keyed_model(net):
    def randomized(z, *, key):
        return net.f(z + 0.01 * jax.random.normal(key, z.shape))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a keyed model under "rand" raises no randomness warning
        r = attacks.autoattack(randomized, net.x, net.y, key=KEY, norm="linf", eps=0.05, version="rand", steps=5,
                               eot=2)
    assert r.attacks == ("apgd-ce", "apgd-dlr") and r.checks["randomized_outputs"]
    r2 = attacks.autoattack(randomized, net.x, net.y, key=KEY, norm="linf", eps=0.05, version="rand", steps=5, eot=2)
    np.testing.assert_array_equal(r.x_adv, r2.x_adv)


# ---------------------------------------------------------------------------
# Gradient masking: noise gradients defeat APGD, Square does not care
# ---------------------------------------------------------------------------


def _masked(f, seed=0):
    """``f`` with its input gradient replaced by fixed-seed noise (a custom VJP)."""

    @jax.custom_vjp
    def g(z):
        return f(z)

    def fwd(z):
        return f(z), z

    def bwd(z, ct):
        noise = jax.random.normal(jax.random.key(seed), z.shape, z.dtype)
        return (noise * jnp.sum(ct),)

    g.defvjp(fwd, bwd)
    return g


@pytest.mark.slow
def test_noise_gradients_fail_and_square_recovers():
    rng = np.random.default_rng(5)
    d, k, n = 16, 3, 48
    w = jnp.asarray(rng.normal(size=(d, k)).astype(np.float32))
    x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)

    def f(z):
        return z @ w

    z = np.asarray(f(x), np.float64)
    y = z.argmax(1)
    wn = np.asarray(w, np.float64)
    # exact linf distance of a linear multi-class model: min_j (z_y - z_j) / ||w_y - w_j||_1
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.min([np.where(y == j, np.inf, (z[np.arange(n), y] - z[:, j]) / np.abs(wn[:, y] - wn[:, [j]]).sum(0))
                       for j in range(k)], axis=0)
    eps = float(np.median(dist))
    kw = dict(key=KEY, norm="linf", eps=eps, steps=20, bounds=None)
    masked = _masked(f)
    true = attacks.autoattack(f, x, y, attacks=["apgd-ce"], self_checks=False, **kw)
    fooled = attacks.autoattack(masked, x, y, attacks=["apgd-ce"], self_checks=False, **kw)
    # the ensemble runs Square with the original's un-rescaled p-schedule (halvings at 10, 50, 200, 500, 1000,
    # 2000, ...): 400 queries stop before its windows shrink; 2,000 queries reach the fine windows
    sq = attacks.autoattack(masked, x, y, attacks=["apgd-ce", "square"], n_queries=2000, **kw)
    assert abs(true.accuracy - np.mean(dist > eps)) <= 0.05  # true gradients: the exact robust accuracy
    assert fooled.accuracy >= true.accuracy + 0.2  # noise gradients leave many points "robust"
    assert abs(sq.accuracy - true.accuracy) <= 0.05  # Square brings it back
    assert sq.checks["square_after_gradient_fraction"] > 0.002 and sq.checks["warnings"]


# ---------------------------------------------------------------------------
# APGD versus PGD on a trained model (slow: training)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_apgd_not_worse_than_pgd_on_trained_digits(digits_train):
    import optax

    x = np.asarray(digits_train.images, np.float32)
    y = np.asarray(digits_train.labels)
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(x[0].size, 64)).astype(np.float32) / 8),
              "w2": jnp.asarray(rng.normal(size=(64, 10)).astype(np.float32) / 8)}

    def apply(p, z):
        return jax.nn.relu(z.reshape(z.shape[0], -1) @ p["w1"]) @ p["w2"]

    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: jnp.mean(attacks.cross_entropy(apply(q, x), y)))(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    for _ in range(300):
        params, state = step(params, state)

    def f(z):
        return apply(params, z)

    xs, ys = x[:300], y[:300]
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        p = attacks.pgd(f, xs, ys, key=KEY, norm=norm, eps=eps, steps=100)
        a = attacks.apgd(f, xs, ys, key=KEY, norm=norm, eps=eps, steps=100)
        acc_p, acc_a = 1 - p.success.mean(), 1 - a.success.mean()
        assert acc_a <= acc_p, (norm, acc_a, acc_p)


def test_square_schedule_is_the_originals_inside_autoattack():
    # the published schedule halves p after iterations 10, 50, 200, ...; rescaled to n_queries by default,
    # at those iterations themselves inside AutoAttack (the original's resc_schedule=False)
    p = lambda i, nq: float(attacks._square_p(0.8, jnp.asarray(i), nq))  # noqa: E731
    np.testing.assert_allclose([p(i, 10000) for i in (10, 11, 50, 51, 201)], [0.8, 0.4, 0.4, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose([p(i, 5000) for i in (5, 6, 26)], [0.8, 0.4, 0.2], rtol=1e-6)  # rescaled: twice as early for 5,000 queries
    with pytest.raises(ValueError, match="^rescale_schedule"):
        attacks.square(lambda x: x.reshape(x.shape[0], -1)[:, :3], np.zeros((2, 3)), np.zeros(2, int), key=KEY,
                       norm="linf", eps=0.1, rescale_schedule="no")


# ---------------------------------------------------------------------------
# APGD against a line-by-line NumPy transcription of the reference loop
# ---------------------------------------------------------------------------


def _reference_apgd(vg, x, y, x0, eps, norm, steps, rho=0.75):
    """The reference code's ``attack_single_run`` (autopgd_base.py, ℓ∞/ℓ2) in NumPy, from the start ``x0``.

    ``vg(z) -> (loss [n], logits [n, k], grad [n, ...])``. Returns ``(x_best, loss_best, step, first_adv, found)``.
    """
    n = x.shape[0]
    axes = tuple(range(1, x.ndim))

    def l2n(v):
        return np.sqrt((v * v).sum(axes, keepdims=True))

    def step_to(z):
        if norm == "linf":
            return np.clip(np.minimum(np.maximum(z, x - eps), x + eps), 0.0, 1.0)
        d = z - x
        return np.clip(x + d / (l2n(d) + 1e-12) * np.minimum(eps, l2n(d)), 0.0, 1.0)

    n_iter_2, n_iter_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    x_adv = x0.copy()
    loss, logits, grad = vg(x_adv)
    x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss.copy()
    found = logits.argmax(1) != y
    first_adv = np.where(found.reshape((n,) + (1,) * (x.ndim - 1)), x_adv, x)
    loss_steps = np.zeros((steps, n), np.float32)
    step_size = np.full((n,) + (1,) * (x.ndim - 1), 2.0 * eps, np.float32)
    x_adv_old = x_adv.copy()
    k, counter3 = n_iter_2, 0
    loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(n, bool)
    for i in range(steps):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        s = np.sign(grad) if norm == "linf" else grad / (l2n(grad) + 1e-12)
        x1 = step_to(x_adv + step_size * s)
        x_adv = step_to(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
        loss, logits, grad = vg(x_adv)
        new = (logits.argmax(1) != y) & ~found
        first_adv[new] = x_adv[new]
        found |= new
        loss_steps[i] = loss
        up = loss > loss_best
        x_best[up], grad_best[up], loss_best[up] = x_adv[up], grad[up], loss[up]
        counter3 += 1
        if counter3 == k:
            t = np.zeros(n)
            for c in range(k):
                t += loss_steps[i - c] > loss_steps[i - c - 1]
            osc = t <= k * rho
            osc |= ~reduced_last_check & (loss_best_last_check >= loss_best)
            reduced_last_check, loss_best_last_check = osc.copy(), loss_best.copy()
            step_size[osc] /= 2.0
            x_adv[osc], grad[osc] = x_best[osc], grad_best[osc]
            counter3, k = 0, max(k - size_decr, n_iter_min)
    return x_best, loss_best, step_size.reshape(n), first_adv, found


@pytest.mark.parametrize("norm,eps,loss", [("linf", 0.04, "ce"), ("l2", 0.3, "dlr")])
def test_apgd_follows_the_reference_loop(net, norm, eps, loss):
    # same start, same model: every iterate, step halving, restart and momentum point of the reference code
    n, steps = net.x.shape[0], 20
    x = net.x
    y = net.y.astype(np.int32)
    keys = attacks.example_keys(np.arange(n, dtype=np.int32), key=KEY)
    x0 = np.asarray(attacks._apgd_start(jnp.asarray(x), keys, jnp.full((n,), eps), norm, (0.0, 1.0)))
    yj = jnp.asarray(y)
    obj = (lambda z: attacks.cross_entropy(net.f(z), yj)) if loss == "ce" else (
        lambda z: attacks.dlr_loss(net.f(z), yj))
    vgj = jax.jit(lambda z: (obj(z), net.f(z), jax.grad(lambda u: jnp.sum(obj(u)))(z)))

    def vg(z):
        return tuple(np.array(v) for v in vgj(jnp.asarray(z)))

    xb, lb, step, first, found = _reference_apgd(vg, x, y, x0, eps, norm, steps)
    model = attacks._model(net.f, False)
    out = jax.jit(lambda: attacks._apgd_run(jnp.asarray(x), yj, yj, keys, jnp.full((n,), eps), jnp.asarray(x0),
                                             model=model, norm=norm, steps=steps, bounds=(0.0, 1.0), loss=loss,
                                             eot=1, rho=0.75, momentum=0.75))()
    xf, _, fa, bad = (np.asarray(v) for v in out)
    assert not bad.any()
    np.testing.assert_array_equal(fa, found)
    assert 0 < found.sum() < n  # both branches exercised
    tol = 1e-5 if norm == "linf" else 1e-4  # l2: rounding of the normalisations only (a different decision moves
    np.testing.assert_allclose(xf[found], first[found], atol=tol)  # a point by a step of order eps)
    np.testing.assert_allclose(xf[~found], xb[~found], atol=tol)
    assert len(np.unique(step)) > 1  # some points halved their step, some did not


def test_apgd_start_is_on_the_ball_surface():
    x = np.full((200, 4, 4, 1), 0.5, np.float32)
    keys = attacks.example_keys(np.arange(200, dtype=np.int32), key=KEY)
    for norm, eps in (("linf", 0.1), ("l2", 0.4)):
        x0 = np.asarray(attacks._apgd_start(jnp.asarray(x), keys, jnp.full((200,), eps), norm, (0.0, 1.0)))
        d = (x0 - x).reshape(200, -1)
        nrm = np.abs(d).max(1) if norm == "linf" else np.sqrt((d * d).sum(1))
        np.testing.assert_allclose(nrm, eps, rtol=1e-5)
        if norm == "linf":  # the other coordinates uniform in [-eps, eps]: mean |d| near eps/2
            assert abs(np.abs(d).mean() / eps - 0.5) < 0.05
    # at the box's edge the start is clipped into the box (never outside it, never longer than eps)
    x0 = np.asarray(attacks._apgd_start(jnp.zeros((50, 16)), keys[:50], jnp.full((50,), 0.3), "l2", (0.0, 1.0)))
    assert x0.min() >= 0.0 and np.sqrt((x0 ** 2).sum(1)).max() <= 0.3 + 1e-6


# ---------------------------------------------------------------------------
# No work on points already broken (Square segments, one target class at a time), one compile per block size
# ---------------------------------------------------------------------------


def _counting(net):
    rows = []

    def f(z):
        jax.debug.callback(lambda m: rows.append(int(m)), z.shape[0])
        return net.f(z)

    return f, rows


@pytest.mark.slow
def test_square_queries_only_unbroken_points_and_equals_one_uninterrupted_run(net):
    f, rows = _counting(net)
    x, y = net.x[2:], net.y[2:]
    n, nq = x.shape[0], 60
    kw = dict(key=KEY, norm="linf", eps=0.2, n_queries=nq)
    host = attacks.square(f, x, y, **kw)
    spent = sum(rows)
    jitted = jax.jit(lambda a, b: attacks.square(f, a, b, **kw))(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_array_equal(np.asarray(jitted.x_adv), host.x_adv)  # the host's segments change nothing
    np.testing.assert_array_equal(np.asarray(jitted.success), host.success)
    broken = int(host.success.sum())
    assert 0 < broken < n
    # one uninterrupted run queries every point nq times (+1 at x); the segments stop querying broken points
    # (the rows of a block are padded to at least 8)
    assert spent < 0.85 * n * (nq + 1), (spent, n * (nq + 1))
    assert spent >= (n - broken) * nq


@pytest.mark.slow
def test_targeted_attacks_run_one_class_at_a_time_with_the_same_result(net):
    ok = np.flatnonzero(np.asarray(jnp.argmax(net.f(net.x), 1)) == net.y)[:16]  # a power of two: no padding
    x, y = net.x[ok], net.y[ok]
    kw = dict(norm="linf", eps=0.1, steps=10, n_targets=3)
    f, rows = _counting(net)
    r = attacks.autoattack(f, x, y, key=KEY, attacks=["apgd-t"], self_checks=False, **kw)
    grouped = sum(rows)
    sub = jax.random.fold_in(KEY, attacks.AUTOATTACK_ATTACKS.index("apgd-t"))
    a = attacks.apgd(net.f, x, y, key=sub, loss="dlr-targeted", **kw)
    np.testing.assert_array_equal(r.robust, ~a.success)  # the same points broken as by one call over all targets
    assert 0 < a.success.sum() < len(ok)
    rows.clear()
    attacks.apgd(f, x, y, key=sub, loss="dlr-targeted", **kw)
    assert grouped < sum(rows)  # fewer rows: the broken points skip the later target classes


def test_ensemble_compiles_once_per_size_class(net, monkeypatch):
    # the remaining points are padded to a quarter step between powers of two (at least 8): 11 and 12 robust
    # points share one compilation, 13 and 14 the next
    seen = []
    real = attacks._run_attack

    def spy(core, st, logits_fn, x, *a, **k):
        seen.append(x.shape[0])
        return real(core, st, logits_fn, x, *a, **k)

    monkeypatch.setattr(attacks, "_run_attack", spy)
    for m in (11, 12, 13, 14):
        attacks.autoattack(net.f, net.x[2:2 + m], net.y[2:2 + m], key=KEY, norm="linf", eps=0.001,
                           attacks=["apgd-ce"], steps=2, self_checks=False)
    assert seen == [12, 12, 14, 14]
    sizes = {m: attacks._bucket(m, None) for m in (0, 1, 8, 9, 100, 300, 425, 850, 1000, 2000)}
    assert sizes == {0: 8, 1: 8, 8: 8, 9: 10, 100: 112, 300: 320, 425: 448, 850: 448, 1000: 512, 2000: 512}
    for m in range(1, 3000):  # never more than 25% padding beyond 8 rows per call, and every point covered
        b = attacks._bucket(m, None)
        calls = -(-m // b)
        assert b <= 512 and calls * b >= m and (m <= 8 or calls * b <= 1.25 * m + 8 * calls), m
    assert attacks._bucket(100, 48) == 40 and attacks._bucket(5, 4) == 4
