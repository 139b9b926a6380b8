"""Tests of jaxbound.shift (Ding et al. 2019 diagnostics, Theorem 2.1, sensitivity sweeps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxbound import bounds as B
from jaxbound import data
from jaxbound import shift as S
from jaxbound import transforms as T

# ---------------------------------------------------------------------------
# perturbable volume (App. D.1)
# ---------------------------------------------------------------------------


def test_volume_corner_and_interior():
    d, eps = 784, 0.3
    corners = np.random.default_rng(0).integers(0, 2, (5, 28, 28, 1)).astype(np.float32)
    assert S.perturbable_volume(corners, eps=eps) == pytest.approx(d * math.log2(eps), rel=1e-12)
    inside = np.random.default_rng(1).uniform(0.3, 0.7, (4, 784)).astype(np.float32)
    assert S.perturbable_volume(inside, eps=eps) == pytest.approx(d * math.log2(2 * eps), rel=1e-12)
    # Table 6's valid MNIST range at eps = 0.3: -1361 (corner) to -577 (interior)
    assert int(d * math.log2(eps)) == -1361 and int(d * math.log2(2 * eps)) == -577


def test_volume_matches_numpy_brute_force():
    rng = np.random.default_rng(2)
    x = rng.random((7, 3, 4, 2)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 0.0, 1.0
    eps = rng.uniform(0.05, 0.6, (3, 4, 2))
    ref = np.mean([sum(math.log2(min(v + e, 1.0) - max(v - e, 0.0)) for v, e in zip(img.ravel().astype(float),
                                                                                       eps.ravel()))
                   for img in x])
    assert S.perturbable_volume(x, eps=eps) == pytest.approx(ref, rel=1e-12)
    # custom bounds and eps larger than the domain (every interval is the whole domain: log2 of its length)
    assert S.perturbable_volume(x * 2 - 1, eps=5.0, bounds=(-1, 1)) == pytest.approx(x[0].size * 1.0)


def test_volume_kernel_jit_equals_eager():
    x = jnp.asarray(np.random.default_rng(3).random((5, 6, 6, 1)), jnp.float32)
    eager = S.log2_perturbable_volumes(x, 0.2)
    jitted = jax.jit(S.log2_perturbable_volumes)(x, 0.2)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    assert float(eager.mean()) == pytest.approx(S.perturbable_volume(np.asarray(x), eps=0.2), rel=1e-5)


def test_volume_orders_binarised_original_smoothed(digits_train):
    x = digits_train.images[:300]
    vols = [S.perturbable_volume(np.asarray(f(x)), eps=0.3)
            for f in (T.binarize, T.identity, lambda z: T.smooth(z, 3))]
    assert vols[0] < vols[1] < vols[2]  # binarised points sit at corners; smoothing pulls them inside


@pytest.mark.parametrize("kw, arg", [(dict(eps=0.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=np.nan), "eps"),
                                     (dict(eps=np.ones(3)), "eps"), (dict(eps=0.1, bounds=(1, 0)), "bounds")])
def test_volume_bad_input(kw, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        S.perturbable_volume(np.full((2, 4, 4, 1), 0.5, np.float32), **kw)


def test_volume_rejects_points_outside_domain():
    with pytest.raises(ValueError, match="^x:"):
        S.perturbable_volume(np.full((2, 4), 1.5), eps=0.1)
    with pytest.raises(ValueError, match="^x:"):
        S.perturbable_volume(np.zeros((0, 4)), eps=0.1)


# ---------------------------------------------------------------------------
# inter-class distance (App. D.2.1)
# ---------------------------------------------------------------------------


def _brute_force(x, y, fraction=0.1, point_fraction=None, norm=2):
    pf = fraction if point_fraction is None else point_fraction
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    diff = np.abs(x[:, None, :] - x[None, :, :])
    D = diff.max(-1) if norm == np.inf else (diff**norm).sum(-1) ** (1.0 / norm)
    K = y.max() + 1
    margins = np.zeros(len(y))
    per = []
    for c in range(K):
        for i in np.flatnonzero(y == c):
            d = np.sort(D[i, y != c])
            margins[i] = d[: max(1, math.ceil(fraction * d.size - 1e-9))].mean()
        m = np.sort(margins[y == c])
        per.append(m[: max(1, math.ceil(pf * m.size - 1e-9))].mean())
    return margins, np.array(per)


@pytest.mark.parametrize("fraction, point_fraction", [(0.1, None), (0.25, 0.5), (1.0, 1.0), (0.001, None)])
def test_inter_class_distance_matches_brute_force(fraction, point_fraction):
    rng = np.random.default_rng(4)
    x = rng.random((157, 12)).astype(np.float32)
    y = rng.integers(0, 4, 157)
    ref_m, ref_pc = _brute_force(x, y, fraction, point_fraction)
    got = S.inter_class_distance(x, y, fraction=fraction, point_fraction=point_fraction, block_size=16)
    np.testing.assert_allclose(got.per_class, ref_pc, rtol=2e-5)
    assert got.value == pytest.approx(ref_pc.mean(), rel=2e-5)
    np.testing.assert_allclose(S.point_margins(x, y, fraction=fraction, block_size=50), ref_m, rtol=2e-5)


@pytest.mark.parametrize("norm, p", [("l1", 1), ("linf", np.inf)])
def test_inter_class_distance_other_norms_and_ties(norm, p):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (90, 6)).astype(np.float32)  # a small grid: many exact ties and duplicates
    y = rng.integers(0, 3, 90)
    ref_m, ref_pc = _brute_force(x, y, 0.2, norm=p)
    got = S.inter_class_distance(x, y, fraction=0.2, norm=norm, block_size=7)
    np.testing.assert_allclose(got.per_class, ref_pc, rtol=1e-6)
    np.testing.assert_allclose(S.point_margins(x, y, fraction=0.2, norm=norm), ref_m, rtol=1e-6)


def test_inter_class_distance_images_and_small_classes():
    x = np.zeros((3, 2, 2, 1), np.float32)
    x[1] = 1.0
    x[2, 0, 0, 0] = 1.0
    y = np.array([0, 1, 1])
    got = S.inter_class_distance(x, y)  # class 0 has one point, class 1 two
    # class 0: nearest other = x2 at distance 1; class 1: both at distance to x0: 2 and 1 -> smallest 10% = 1
    np.testing.assert_allclose(got.per_class, [1.0, 1.0])
    assert isinstance(got.value, float) and got.to_dict()["per_class"] == [1.0, 1.0]


def test_inter_class_distance_scale_equivariance():
    rng = np.random.default_rng(6)
    x = rng.random((80, 10)).astype(np.float32)
    y = rng.integers(0, 2, 80)
    a = S.inter_class_distance(x, y).value
    b = S.inter_class_distance(0.5 * x + 0.25, y).value  # the scale transform halves every distance
    assert b == pytest.approx(0.5 * a, rel=1e-5)


def test_inter_class_distance_bad_input():
    x = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError, match="^labels:"):
        S.inter_class_distance(x, np.zeros(10, int))  # a single class
    with pytest.raises(ValueError, match="^labels:"):
        S.inter_class_distance(x, np.array([0, 2] * 5))  # class 1 empty
    with pytest.raises(ValueError, match="^labels:"):
        S.inter_class_distance(x, np.array([0, 1] * 4))  # wrong length
    with pytest.raises(ValueError, match="^fraction:"):
        S.inter_class_distance(x, np.array([0, 1] * 5), fraction=0.0)
    with pytest.raises(ValueError, match="^point_fraction:"):
        S.inter_class_distance(x, np.array([0, 1] * 5), point_fraction=1.5)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="^x:"):
        S.inter_class_distance(bad, np.array([0, 1] * 5))
    with pytest.raises(ValueError, match="^norm:"):
        S.inter_class_distance(x, np.array([0, 1] * 5), norm="l0")


def test_inter_class_distance_mnist_binarised_largest(mnist_test):
    # Ding et al. Figure 5: binarised MNIST has a larger inter-class distance than the original,
    # and smoothing decreases it.
    x, y = mnist_test.images[:1500], mnist_test.labels[:1500]
    vals = [S.inter_class_distance(np.asarray(f(x)), y).value
            for f in (T.binarize, T.identity, lambda z: T.smooth(z, 4))]
    assert vals[0] > vals[1] > vals[2]


# ---------------------------------------------------------------------------
# Theorem 2.1 and Examples 1-2
# ---------------------------------------------------------------------------


def test_cube_bound_closed_forms():
    for eps in (0.0, 0.1, 0.5, 1.0):
        b = S.cube_concentration(0.5, eps)
        assert b.bound == pytest.approx(stats.norm.cdf(eps * math.sqrt(2 * math.pi)))
        assert b.simple == pytest.approx(1 - math.exp(-math.pi * eps**2))
        assert b.simple <= b.bound + 1e-12
    assert S.cube_concentration(1.0, 0.3).bound == 1.0
    assert S.cube_concentration(0.7, 0.0).bound == pytest.approx(0.7)


def test_cube_bound_sound_for_half_spaces():
    # A = {x_1 <= a} in [0, 1]^d: P(A) = a and P(A_eps) = min(1, a + eps) exactly (l2 expansion).
    for a in np.linspace(0.5, 0.99, 12):
        for eps in (0.01, 0.1, 0.3, 0.7):
            assert min(1.0, a + eps) >= S.cube_concentration(a, eps).bound - 1e-12
    # a tilted half-space in d = 6 by Monte Carlo: A = {w.x <= median}, A_eps = {w.x < median + eps}
    rng = np.random.default_rng(0)
    x = rng.random((200_000, 6))
    w = np.ones(6) / math.sqrt(6)
    s = x @ w
    b = np.median(s)
    for eps in (0.05, 0.2):
        mc = np.mean(s < b + eps)
        assert mc + 4 * math.sqrt(mc * (1 - mc) / s.size) >= S.cube_concentration(0.5, eps).bound


def test_ball_bound_closed_form_and_monte_carlo():
    d, eps = 20, 0.3
    delta = 1 - math.sqrt(1 - eps**2 / 4)
    b = S.ball_concentration(0.5, eps, d=d)
    assert b.bound == pytest.approx(1 - 2 * (1 - delta) ** (2 * d))
    assert b.simple == pytest.approx(1 - 2 * math.exp(-2 * d * (2 - math.sqrt(3)) / 3 * eps**2))
    assert b.simple <= b.bound
    # B = half ball {x_1 <= 0}: inside the ball, B_eps = {x_1 < eps}
    x = data.uniform_ball(100_000, key=jax.random.key(0), d=d).astype(np.float64)
    mc = np.mean(x[:, 0] < eps)
    assert mc >= b.bound
    with pytest.raises(ValueError, match="^eps:"):
        S.ball_concentration(0.5, 2.5, d=3)


def test_example2_reproduces_paper_numbers():
    cube = S.example2(0.5)  # 10 uniform classes on [0, 1]^d, l2 eps = 0.5: "at least 94 %"
    assert 0.94 <= cube < 0.95
    k = 10
    assert cube == pytest.approx(k * stats.norm.cdf(0.5 * math.sqrt(2 * math.pi) + stats.norm.ppf(0.9)) - (k - 1))
    ball = S.example2(0.09, domain="ball", d=3 * 32 * 32)  # "at least 97 %"
    assert 0.97 <= ball < 0.98
    assert S.example2(0.0) == pytest.approx(0.0, abs=1e-12)
    assert S.example2(0.5, priors=[0.5, 0.25, 0.25]) > 0
    with pytest.raises(ValueError, match="^priors:"):
        S.example2(0.5, priors=[0.8, 0.2])
    with pytest.raises(ValueError, match="^d:"):
        S.example2(0.1, domain="ball")
    with pytest.raises(ValueError, match="^domain:"):
        S.example2(0.1, domain="sphere")


def test_example1_bounds_and_monte_carlo():
    e = S.example1(784, 0.3)
    assert e.axis == pytest.approx(0.6) and e.diagonal_lower == pytest.approx(1 - 1 / (4 * 784 * 0.09))
    assert S.example1(10, 0.7).axis == 1.0
    # the diagonal boundary sum(x) = d/2 is within l_inf eps iff |sum(x) - d/2| < d eps (box ignored, as in A.1)
    rng = np.random.default_rng(1)
    for d, eps in ((50, 0.1), (200, 0.05)):
        s = rng.random((50_000, d)).sum(1)
        assert np.mean(np.abs(s - d / 2) < d * eps) >= S.example1(d, eps).diagonal_lower
    # the axis boundary x_1 = 1/2: the slab |x_1 - 1/2| < eps has mass 2 eps
    u = rng.random(200_000)
    assert np.mean(np.abs(u - 0.5) < 0.1) == pytest.approx(S.example1(3, 0.1).axis, abs=0.005)
    with pytest.raises(ValueError, match="^eps:"):
        S.example1(3, 0.0)


# ---------------------------------------------------------------------------
# sensitivity sweep
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_split():
    return data.load("digits", split="train"), data.load("digits", split="test")


_LEVELS = [("binarize", None), None, 2, 3]


def _sweep(digits_split, out_dir, **kw):
    tr, te = digits_split
    opts = dict(key=jax.random.key(0), test_data=te, eps=0.3, norm="linf", out_dir=out_dir, pair=(3, 7), pair_n=40,
                concentration="rectangles", n_regions=3, alpha=0.05, concentration_n=600, multiclass_n=30,
                progress=False)
    opts.update(kw)
    return S.sensitivity_sweep(tr, "smooth", _LEVELS, **opts)


def test_sweep_table_records_and_figures(digits_split, tmp_path):
    res = _sweep(digits_split, tmp_path)
    labels = [r["label"] for r in res.table]
    assert labels == ["binarize", "original", "smooth-2", "smooth-3"]
    tr, te = digits_split
    # every quantity equals the direct computation on the transformed data
    for row, f in zip(res.table, (T.binarize, T.identity, lambda z: T.smooth(z, 2), lambda z: T.smooth(z, 3))):
        assert row["perturbable_volume"] == pytest.approx(S.perturbable_volume(np.asarray(f(te.images)), eps=0.3))
        assert row["inter_class_distance"] == pytest.approx(
            S.inter_class_distance(np.asarray(f(tr.images)), tr.labels).value)
        assert 0.0 <= row["pair_zero_one_loss"] <= row["pair_cross_entropy"] / math.log(2) + 1e-9
        assert row["concentration_adv_risk"] >= row["concentration_risk"]
        xt = np.asarray(f(tr.images)).reshape(len(tr), -1)
        idx = np.concatenate([np.flatnonzero(tr.labels == c)[:30] for c in range(10)])
        g = B.conflict_hypergraph(xt[idx], tr.labels[idx], eps=0.3, norm="linf", degree=3)
        assert row["multiclass_zero_one_loss"] == pytest.approx(B.multiclass_zero_one(g).loss, abs=1e-12)
        assert row["standard_clean_accuracy"] is None
    vols = [r["perturbable_volume"] for r in res.table]
    assert vols == sorted(vols)
    files = sorted(p.name for p in (tmp_path / "levels").iterdir())
    assert files == ["binarize.json", "original.json", "smooth-2.json", "smooth-3.json"]
    assert json.loads((tmp_path / "table.json").read_text()) == json.loads(json.dumps(res.table))
    assert {Path(f).name for f in res.figures} >= {"perturbable_volume.png", "inter_class_distance.png",
                                                   "pair_zero_one_loss.png", "concentration_adv_risk.png"}
    assert all(Path(f).stat().st_size > 1000 for f in res.figures)
    assert json.loads(json.dumps(res.to_dict()))["out_dir"] == str(tmp_path)


class _Interrupted(Exception):
    pass


def test_sweep_resumes_after_interruption(digits_split, tmp_path, monkeypatch):
    calls = []
    state = {"interrupt_at": 3}
    real = S._pair_step

    def flaky(x, *a, **k):
        calls.append(1)
        if len(calls) == state["interrupt_at"]:
            raise _Interrupted  # interrupted during the third level
        return real(x, *a, **k)

    monkeypatch.setattr(S, "_pair_step", flaky)
    with pytest.raises(_Interrupted):
        _sweep(digits_split, tmp_path, concentration=None)
    partial = json.loads((tmp_path / "levels" / "smooth-2.json").read_text())
    assert "perturbable_volume" in partial["quantities"] and "pair" not in partial["quantities"]
    assert not (tmp_path / "levels" / "smooth-3.json").exists()
    first = json.loads((tmp_path / "levels" / "binarize.json").read_text())

    vol_calls = []
    real_vol = S.perturbable_volume

    def counting_volume(*a, **k):
        vol_calls.append(1)
        return real_vol(*a, **k)

    monkeypatch.setattr(S, "perturbable_volume", counting_volume)
    calls.clear()
    state["interrupt_at"] = -1
    res = _sweep(digits_split, tmp_path, concentration=None)
    assert [r["pair_zero_one_loss"] is not None for r in res.table] == [True] * 4
    assert len(vol_calls) == 1  # only the level that never started (smooth-3)
    assert len(calls) == 2  # pairs only for the interrupted and the unstarted level
    assert json.loads((tmp_path / "levels" / "binarize.json").read_text())["quantities"] == first["quantities"]


@pytest.mark.parametrize("damage", [b'{"label": "binar', b"\xff\xfe\x00 random", b'{"quantities": [1, 2]}'])
def test_sweep_recomputes_a_damaged_record_with_one_warning(digits_split, tmp_path, damage):
    a = _sweep(digits_split, tmp_path, concentration=None, pair=None, inter_class=False)
    rec = tmp_path / "levels" / "binarize.json"
    rec.write_bytes(damage)
    with pytest.warns(RuntimeWarning, match=f"sweep record {rec}") as warned:
        b = _sweep(digits_split, tmp_path, concentration=None, pair=None, inter_class=False)
    assert len([w for w in warned if issubclass(w.category, RuntimeWarning)]) == 1
    assert [r["perturbable_volume"] for r in b.table] == [r["perturbable_volume"] for r in a.table]
    (first,) = [r for r in a.records if r["label"] == "binarize"]
    assert json.loads(rec.read_text())["quantities"] == first["quantities"]


def test_sweep_recomputes_when_settings_change(digits_split, tmp_path):
    a = _sweep(digits_split, tmp_path, concentration=None, pair=None, inter_class=False)
    b = _sweep(digits_split, tmp_path, concentration=None, pair=None, inter_class=False, eps=0.1)
    te = digits_split[1]
    assert a.table[1]["perturbable_volume"] == pytest.approx(S.perturbable_volume(te.images, eps=0.3))
    assert b.table[1]["perturbable_volume"] == pytest.approx(S.perturbable_volume(te.images, eps=0.1))
    assert b.records[1]["settings"]["eps"] == 0.1


@pytest.mark.slow  # ~11 s
def test_sweep_without_out_dir_and_custom_transform(digits_split):
    tr, te = digits_split
    small = (tr.images[:200], tr.labels[:200])
    res = S.sensitivity_sweep(small, lambda x, a: T.scale(x, a), [1.0, 0.5], key=jax.random.key(1), eps=0.3,
                              norm="linf", concentration=None, pair=None, progress=False)
    assert res.out_dir is None and res.figures == []
    assert res.table[1]["inter_class_distance"] == pytest.approx(0.5 * res.table[0]["inter_class_distance"],
                                                                 rel=1e-5)


@pytest.mark.parametrize(
    "kw, arg",
    [
        (dict(transform="blur"), "transform"),
        (dict(levels=[]), "levels"),
        (dict(levels=[2, 2]), "levels"),
        (dict(levels=[0]), "s"),
        (dict(eps=0.0), "eps"),
        (dict(concentration="voronoi"), "concentration"),
        (dict(concentration="balls"), "concentration"),
        (dict(test_data=None), "test_data"),
        (dict(pair=(3, 3)), "pair"),
        (dict(key=0), "key"),
    ],
)
def test_sweep_bad_arguments(digits_split, kw, arg):
    tr, te = digits_split
    opts = dict(transform="smooth", levels=[2], key=jax.random.key(0), test_data=te, eps=0.3, norm="linf",
                concentration="rectangles",
                pair=(3, 7), pair_n=10, inter_class=False, progress=False)
    opts.update(kw)
    transform, levels = opts.pop("transform"), opts.pop("levels")
    with pytest.raises(ValueError, match=f"^{arg}:"):
        S.sensitivity_sweep(tr, transform, levels, **opts)


@pytest.mark.slow
def test_sweep_with_training(digits_split, tmp_path):
    pytest.importorskip("jaxbound.training")
    from jaxbound.attacks import AttackConfig
    from jaxbound.training import TrainConfig

    tr, te = digits_split
    res = S.sensitivity_sweep(
        (tr.images[:256], tr.labels[:256]), "smooth", [None, 2], key=jax.random.key(2), test_data=te,
        eps=0.1, norm="linf", out_dir=tmp_path, volume=False, inter_class=False, concentration=None, pair=None,
        train_models=True, model="mlp",
        train=TrainConfig(epochs=2, batch_size=64, attack=AttackConfig(norm="linf", eps=0.1, steps=3)),
        eval_n=64, steps=5, step_size=0.05, progress=False)
    for row in res.table:
        for col in ("standard_clean_accuracy", "pgd_clean_accuracy", "pgd_robust_accuracy",
                    "pgd_robustness_wrt_predictions"):
            assert 0.0 <= row[col] <= 1.0
        assert row["pgd_robust_accuracy"] <= row["pgd_clean_accuracy"]
        assert row["standard_clean_accuracy"] > 0.3  # far above chance (0.1) even with this tiny budget
    assert (tmp_path / "figures" / "pgd_robust_accuracy.png").is_file()
