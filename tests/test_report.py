"""The robustness report (jaxbound.report): end to end on digits with tiny settings, and its self-check."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import bounds, data, metrics
from jaxbound import report as R


def _centroid_params(ds):
    x = ds.flat()
    return np.stack([x[ds.labels == k].mean(0) for k in range(ds.num_classes)]).astype(np.float32)


def masked_centroid_model(ds):
    """Nearest-centroid classifier behind a rounding step: zero input gradient, so PGD cannot move."""
    c = jnp.asarray(_centroid_params(ds))

    def fn(x):
        q = jnp.round(x.reshape(x.shape[0], -1) * 16.0) / 16.0
        return -jnp.sum((q[:, None, :] - c[None]) ** 2, axis=-1)

    return fn


def centroid_model(ds):
    c = jnp.asarray(_centroid_params(ds))

    def fn(x):
        f = x.reshape(x.shape[0], -1)
        return -jnp.sum((f[:, None, :] - c[None]) ** 2, axis=-1)

    return fn


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def _interval_pairs(obj):
    """(estimate, interval) for every key X with a sibling X_ci."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.endswith("_ci") and k[:-3] in obj and obj[k[:-3]] is not None:
                yield k[:-3], obj[k[:-3]], v
            yield from _interval_pairs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _interval_pairs(v)


TINY = dict(norm="linf", eps=(0.3, 0.45), limit=400, test_limit=120, n_regions=(3,), n_repeats=1,
            n_per_class=30, check_per_class=20, attack_steps=5, multiclass_per_class=25, evaluation_attack="pgd",
            progress=False)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    tr = data.load("digits")
    out = tmp_path_factory.mktemp("report")
    rep = R.report(key=jax.random.key(0), dataset="digits", out_dir=out, models=("standard",), epochs=1, arch="mlp", widen_factor=None, batch_size=64,
                   model=masked_centroid_model(tr.subset(np.arange(400))), model_name="masked", **TINY)
    return rep, out


def test_report_files_schema_and_numbers(tiny_report):
    rep, out = tiny_report
    for name in ("report.json", "report.md", "robust_error.png", "pair_bounds.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "robust_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "report.json").read_text())
    assert rec == json.loads(json.dumps(rep.to_dict()))
    for key in ("schema", "config", "dataset", "definitions", "norm", "eps", "geometry", "concentration",
                "multiclass", "bounds", "models", "table", "flags", "seconds", "files"):
        assert key in rec
    assert rec["eps"] == [0.3, 0.45] and rec["norm"] == "linf"
    assert [m["name"] for m in rec["models"]] == ["standard", "masked"]
    assert len(rec["table"]) == 2 and len(rec["concentration"]) == 2
    # every number finite (JSON has no NaN/inf: to_jsonable writes None for them) and the key numbers present
    for path, v in _walk(rec):
        if isinstance(v, float):
            assert math.isfinite(v), path
    for row in rec["table"]:
        for k, v in row.items():
            assert v is not None or (k.startswith(("concentration_adv", "intrinsic")) and not
                                     row["concentration_valid"]) or k.startswith("masked_certified"), k
    # the concentration estimate is the lowest valid one over the norm's methods, reported only where valid
    for c in rec["concentration"]:
        assert {m["method"] for m in c["methods"]} == {"rectangles", "halfspaces"}
        assert c["valid"] == (c["adv_risk"] is not None) and c["valid"] <= c["risk_feasible"]
        valid_values = [m["value"] for m in c["methods"] if m["valid"]]
        assert c["valid"] == bool(valid_values)
    for m in rec["models"]:
        assert 0.0 <= m["clean_error"] <= 1.0
        for r in m["robust"]:
            assert r["robust_error"] >= m["clean_error"] - 1e-12  # clean errors count as failures
    # intervals contain their estimates
    pairs = list(_interval_pairs(rec))
    assert len(pairs) >= 10
    for name, est, ci in pairs:
        assert ci[0] - 1e-12 <= est <= ci[1] + 1e-12, (name, est, ci)
    c = rec["concentration"][0]
    assert c["adv_risk"] is None or c["intrinsic_robustness"] == pytest.approx(1 - c["adv_risk"])
    assert rec["geometry"]["lipschitz"]["lipschitz"] > 0
    md = (out / "report.md").read_text()
    assert "## Definitions" in md and "weak attack" in md.lower()


def test_report_multiclass_headline_matches_direct_computation(tiny_report):
    rep, out = tiny_report
    rec = rep.record
    tr = data.load("digits").subset(np.arange(400))
    mc = rec["multiclass"]
    assert mc["per_class"] == 25 and mc["degree"] == 3
    idx = np.concatenate([np.flatnonzero(tr.labels == c)[:25] for c in range(10)])
    assert mc["n"] == idx.size == 250
    for row, trow in zip(mc["rows"], rec["table"]):
        g3 = bounds.conflict_hypergraph(tr.flat()[idx], tr.labels[idx], eps=row["eps"], norm="linf", degree=3)
        g2 = bounds.conflict_hypergraph(tr.flat()[idx], tr.labels[idx], eps=row["eps"], norm="linf", degree=2)
        assert row["zero_one"] == pytest.approx(bounds.multiclass_zero_one(g3).loss, abs=1e-9)
        assert row["zero_one_degree2"] == pytest.approx(bounds.multiclass_zero_one(g2).loss, abs=1e-9)
        assert row["zero_one_degree2"] <= row["zero_one"] + 1e-9 and row["verified"]
        assert (row["n_edges"], row["n_hyperedges"]) == (g3.num_edges, g3.hyperedges.shape[0])
        assert trow["multiclass_zero_one_bound"] == row["zero_one"] and trow["multiclass_degree"] == 3
    assert mc["rows"][-1]["zero_one"] > 0 and mc["rows"][-1]["n_hyperedges"] > 0  # the grid reaches triples
    assert "all classes" in (out / "report.md").read_text()


def test_report_bounds_match_direct_computation(tiny_report):
    rep, _ = tiny_report
    rec = rep.record
    tr = data.load("digits").subset(np.arange(400))
    sel = rec["bounds"]["selection"]
    assert len(sel) == 45
    hp = rec["bounds"]["hardest_pair"]
    best = max(r["zero_one"] for r in sel)
    assert next(r for r in sel if r["pair"] == hp)["zero_one"] == best
    for row in rec["bounds"]["rows"]:
        a, b = row["pair"]
        xa, xb = data.class_pair(tr, a, b, n_per_class=30)
        g = bounds.conflict_graph(xa, xb, eps=row["eps"], norm="linf")
        assert row["zero_one"] == pytest.approx(bounds.min_zero_one_loss(g).loss, abs=1e-12)
        assert row["cross_entropy"] == pytest.approx(bounds.optprob(g).loss, abs=1e-9)
        assert row["cross_entropy"] >= math.log(2) * row["zero_one"] - 1e-9
    # the geometry stage is metrics.dataset_lipschitz on the training split
    lip = metrics.dataset_lipschitz(tr.flat(), tr.labels, norm="linf")
    assert rec["geometry"]["lipschitz"]["min_distance"] == pytest.approx(lip.min_distance)


def test_report_flags_gradient_masked_model_as_weak_attack(tiny_report):
    rep, _ = tiny_report
    masked = next(m for m in rep.record["models"] if m["name"] == "masked")
    assert masked["self_check"], "the self-check ran"
    tr = data.load("digits").subset(np.arange(400))
    for c in masked["self_check"]:
        assert c["weak_attack"] == (c["attacked_robust_error"] < c["zero_one_bound"] - 0.5 / c["n"])
        # the check attacks the first 20 points per class and compares with the optimal loss of exactly those
        a, b = c["pair"]
        xa, xb = data.class_pair(tr, a, b, n_per_class=20)
        assert c["n"] == 40
        g = bounds.conflict_graph(xa, xb, eps=c["eps"], norm="linf")
        assert c["zero_one_bound"] == pytest.approx(bounds.min_zero_one_loss(g).loss, abs=1e-12)
    flagged = [f for f in rep.flags if f["model"] == "masked"]
    assert flagged, "PGD cannot move a zero-gradient model: its attacked error must fall below the 0-1 bound"
    assert all(f["kind"] == "weak_attack" and "weak attack" in f["message"] for f in flagged)
    assert "weak attack" in rep.format_table() or rep.flags  # the CLI prints flags separately


def test_report_resumes_from_stages(tiny_report):
    rep, out = tiny_report
    tr = data.load("digits")
    rep2 = R.report(key=jax.random.key(0), dataset="digits", out_dir=out, models=("standard",), epochs=1, arch="mlp", widen_factor=None, batch_size=64,
                    model=masked_centroid_model(tr.subset(np.arange(400))), model_name="masked", **TINY)
    assert rep2.record["stages"]["ran"] == []
    assert "train standard" in rep2.record["stages"]["skipped"]
    assert rep2.table == rep.table


@pytest.mark.slow  # ~21 s; the default evaluation (AutoAttack) also runs in the report tests above
def test_report_autoattack_breaks_the_masked_model(tiny_report, tmp_path):
    """The default evaluation, AutoAttack: its gradient-free Square moves the zero-gradient model PGD cannot."""
    rep, _ = tiny_report
    tr = data.load("digits").subset(np.arange(400))
    kw = dict(TINY, evaluation_attack="autoattack", autoattack_steps=5, n_queries=300, eps=(0.45,), test_limit=60,
              check_per_class=10)
    rep2 = R.report(key=jax.random.key(0), dataset="digits", out_dir=tmp_path, models=(),
                    model=masked_centroid_model(tr), model_name="masked", **kw)
    m = rep2.record["models"][0]
    a = m["attack"]
    assert a["name"] == "autoattack" and a["steps"] == 5 and a["n_queries"] == 300
    assert a["per_eps"][0]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    after = a["per_eps"][0]["robust_accuracy_after"]
    assert all(x >= y for x, y in zip(after, after[1:]))  # robust accuracy never increases along the ensemble
    assert after[-1] == pytest.approx(1 - m["robust"][0]["robust_error"])
    assert after[-1] < after[2]  # Square (after the gradient attacks) breaks points the gradients could not
    pgd_masked = next(x for x in rep.record["models"] if x["name"] == "masked")["robust"][1]["robust_error"]
    assert m["robust"][0]["robust_error"] > pgd_masked
    assert "AutoAttack standard" in rep2.markdown()


def test_weak_attack_check_and_restriction():
    assert R.weak_attack_check(0.1, 0.2, n=100)
    assert not R.weak_attack_check(0.2, 0.2, n=100)
    assert not R.weak_attack_check(0.199, 0.2, n=100)  # within half a point: rounding
    with pytest.raises(ValueError, match="^attacked_error"):
        R.weak_attack_check(1.5, 0.2, n=10)
    with pytest.raises(ValueError, match="^n"):
        R.weak_attack_check(0.1, 0.2, n=0)
    f = R.restrict_to_pair(lambda x: jnp.arange(10.0)[None].repeat(x.shape[0], 0) * x[:, :1], 3, 7)
    out = np.asarray(f(jnp.ones((2, 1))))
    np.testing.assert_array_equal(out, [[3.0, 7.0], [3.0, 7.0]])


def test_self_check_is_sound_for_an_exact_model():
    """For a model on which attacks are exact (a 1-D threshold), the attacked error never falls below the bound."""
    rng = np.random.default_rng(0)
    xa = rng.uniform(0.0, 0.5, size=(40, 1, 1, 1)).astype(np.float32)
    xb = rng.uniform(0.4, 1.0, size=(40, 1, 1, 1)).astype(np.float32)
    x = np.concatenate([xa, xb])
    y = np.r_[np.zeros(40, int), np.ones(40, int)]

    def fn(z):
        t = z.reshape(z.shape[0], 1) - 0.45
        return jnp.concatenate([-t, t], axis=1) * 50.0

    import jax

    for eps in (0.02, 0.05, 0.1):
        g = bounds.conflict_graph(xa, xb, eps=eps, norm="linf")
        zb = bounds.min_zero_one_loss(g).loss
        res = metrics.robust_error_curve(fn, x, y, key=jax.random.key(0), eps=np.array([eps], np.float32),
                                         norm="linf", steps=20)
        assert not R.weak_attack_check(float(res.robust_error[0]), zb, n=80)


def test_parse_eps():
    assert R.parse_eps("0.2, 0.1") == (0.1, 0.2)
    assert R.parse_eps([1, 2]) == (1.0, 2.0)
    assert R.parse_eps(0.5) == (0.5,)
    for bad, msg in (("", "at least one"), ("0.1,abc", "not a number"), ("-0.1", ">= 0"), ("nan", "finite"),
                     ("0.1,0.1", "repeated")):
        with pytest.raises(ValueError, match=f"^eps: .*{msg}"):
            R.parse_eps(bad)
    assert R.default_eps("inf") == R.DEFAULT_EPS["linf"]


def test_load_callable(tmp_path, monkeypatch):
    (tmp_path / "mymodels_i9.py").write_text(
        "def logits(x):\n    return x.reshape(x.shape[0], -1)[:, :10]\n"
        "def factory():\n    return logits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    f = R.load_callable("mymodels_i9:logits")
    assert f(np.ones((2, 4, 4, 1))).shape == (2, 10)
    assert R.load_callable("mymodels_i9:factory") is f
    assert R.load_callable("mymodels_i9.logits") is f
    with pytest.raises(ValueError, match="^model: cannot import"):
        R.load_callable("no_such_module_i9:f")
    with pytest.raises(ValueError, match="^model: .*no attribute"):
        R.load_callable("mymodels_i9:nothing")
    with pytest.raises(ValueError, match="^model: folder"):
        R.load_model(tmp_path)


@pytest.mark.parametrize("kw, msg", [
    (dict(norm="l3"), "^norm"),
    (dict(eps="x"), "^eps"),
    (dict(pairs="some"), "^pairs"),
    (dict(models=("magic",)), "^models"),
    (dict(protocol="other"), "^protocol"),
    (dict(alpha=1.5), "^alpha"),
    (dict(dataset="cifar11"), "^dataset: unknown dataset"),
    (dict(arch="mlp", widen_factor=0.5), "^widen_factor"),
    (dict(arch="no_such_net"), "^arch"),
])
def test_report_rejects_bad_settings(kw, msg, tmp_path):
    kw = dict(kw)
    ds = kw.pop("dataset", "digits")
    with pytest.raises(ValueError, match=msg):
        R.report(key=jax.random.key(0), dataset=ds, out_dir=tmp_path, progress=False, **kw)


def test_stage_cache_resumes_and_recomputes_a_damaged_stage(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"value": np.float32(1.5), "rows": [1, 2]}

    c = R.StageCache(tmp_path / "stages", base="b")
    assert c.run("geometry", {"eps": 0.1}, fn) == {"value": 1.5, "rows": [1, 2]}
    p = c.path("geometry", {"eps": 0.1})
    assert p.is_file() and p.name.startswith("geometry-") and json.loads(p.read_text())["result"]["rows"] == [1, 2]
    c2 = R.StageCache(tmp_path / "stages", base="b")
    assert c2.run("geometry", {"eps": 0.1}, fn) == {"value": 1.5, "rows": [1, 2]} and len(calls) == 1
    assert c2.skipped == ["geometry"] and c2.ran == []
    p.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="recomputing"):
        c2.run("geometry", {"eps": 0.1}, fn)
    assert len(calls) == 2 and json.loads(p.read_text())["result"]["value"] == 1.5
    # damaged in every other way a resume file can be: recomputed, one warning naming the file, same result
    good = p.read_text()
    env = json.loads(good)
    damaged = {
        "empty object": "{}",
        "foreign JSON": json.dumps({"value": 1.5, "rows": [1, 2]}),
        "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8)),
        "truncated": good[: len(good) // 2],
        "wrong checksum": json.dumps(dict(env, result={"value": 2.5, "rows": [1, 2]})),
        "other stage": json.dumps(dict(env, stage="bound")),
        "empty file": "",
    }
    for what, content in damaged.items():
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        n0 = len(calls)
        with pytest.warns(RuntimeWarning, match=str(p.name)) as rec:
            assert c2.run("geometry", {"eps": 0.1}, fn) == {"value": 1.5, "rows": [1, 2]}, what
        assert len(calls) == n0 + 1 and len(rec) == 1, what
        assert p.read_text() == good, what
    assert R.StageCache(tmp_path / "stages", base="other").path("geometry", {"eps": 0.1}) != p
    R.StageCache(tmp_path / "stages", base="b", resume=False).run("geometry", {"eps": 0.1}, fn)
    assert len(calls) == 3 + len(damaged)


def test_report_config_defaults_overrides_and_errors():
    c = R.ReportConfig()
    assert c.eps_grid == R.DEFAULT_EPS["linf"] and c.widen == 0.5 and c.adversarial_eps == 0.2
    assert hash(c) == hash(R.ReportConfig())
    a = c.attack()
    assert (a.norm, a.eps, a.steps, a.restarts) == ("linf", (0.1, 0.2, 0.3, 0.4), 20, 1)
    t = c.train_config("pgd", n_train=50)
    assert t.recipe == "pgd" and t.batch_size == 50 and t.attack.eps == 0.2 and t.attack.steps == 7
    assert c.train_config("standard").attack is None
    d = R.report_config(c, norm="l2", eps="1,0.5", models="none", eval_limit=0)
    assert d.eps == (0.5, 1.0) and d.models == () and d.eval_limit is None and d.norm == "l2"
    with pytest.raises(TypeError, match="seed"):
        R.report_config(seed=0)
    with pytest.raises(ValueError, match="^n_regions"):
        R.ReportConfig(n_regions=())


def test_report_certified_error_is_an_upper_edge_and_matches_certify(tiny_report):
    """Per model and budget: the CROWN certified robust error, never below the attacked one, as certify computes it."""
    from jaxbound import certify

    rep, out = tiny_report
    rec = rep.record
    std = next(m for m in rec["models"] if m["name"] == "standard")
    assert std["certification"]["available"] and std["certification"]["method"] == "ibp+crown"
    from jaxbound import models

    te = data.load("digits", split="test").subset(np.arange(120))
    saved = [p.parent for p in out.rglob("model.json") if "model-standard" in str(p.parent)]
    assert len(saved) == 1
    fn = models.load(saved[0]).logits_fn()
    for j, row in enumerate(std["robust"]):
        # an independent call on the same points (the certified points are a subset of the attacked-robust ones)
        c = certify.certified_accuracy(fn, te.images, te.labels, eps=row["eps"], norm="linf", method="ibp+crown")
        assert row["certified_error"] == pytest.approx(1.0 - c.accuracy)
        for single in ("ibp", "crown"):  # the default certifies every point either method certifies
            s = certify.certified_accuracy(fn, te.images, te.labels, eps=row["eps"], norm="linf", method=single)
            assert np.all(c.certified >= s.certified)
        assert row["certified_error"] >= row["robust_error"] - 1e-12
        assert rec["table"][j]["standard_certified_error"] == row["certified_error"]
    masked = next(m for m in rec["models"] if m["name"] == "masked")  # jnp.round: bound propagation says no
    assert not masked["certification"]["available"] and "not available" in masked["certification"]["reason"]
    assert all(r["certified_error"] is None for r in masked["robust"])
    md = (out / "report.md").read_text()
    assert "certified robust error" in md and "Certified robust error of masked: not available" in md
    assert "standard cert. err" in R._format_table(rec)


def test_report_certify_setting_and_l1(tmp_path):
    with pytest.raises(ValueError, match="^certify"):
        R.ReportConfig(certify="lp")
    assert R.ReportConfig().certify == "ibp+crown" and R.ReportConfig(certify="none").certify == "none"
    te = data.load("digits", split="test").subset(np.arange(8))
    cfg = R.ReportConfig(norm="l1", eps=(1.0,))
    c = R._certify_model(lambda x: x.reshape(x.shape[0], -1)[:, :10], te, cfg)
    assert not c["available"] and c["reason"].startswith("not available") and c["rows"] == [None]


@pytest.mark.slow
def test_report_trains_a_certified_model_on_the_spot(tmp_path):
    """--models ibp: an IBP-trained model, its certified robust error never below the attacked one."""
    kw = dict(TINY, eps=(0.1,), test_limit=60, check_per_class=10)
    rep = R.report(key=jax.random.key(1), dataset="digits", out_dir=tmp_path, models=("ibp", "fgsm_rs"), epochs=2,
                   arch="mlp", widen_factor=None, batch_size=64, **kw)
    ms = {m["name"]: m for m in rep.record["models"]}
    assert ms["ibp"]["train"]["recipe"] == "ibp" and ms["fgsm_rs"]["train"]["recipe"] == "fgsm_rs"
    for m in ms.values():
        assert m["certification"]["available"]
        r = m["robust"][0]
        assert r["robust_error"] - 1e-12 <= r["certified_error"] <= 1.0


def test_class_sorted_split_is_taken_round_robin_before_limits():
    """A split stored class by class (an image folder) keeps every class in its first N examples; others keep order."""
    from jaxbound import data

    rng = np.random.default_rng(0)
    img = rng.uniform(size=(12, 2, 2, 1)).astype(np.float32)
    sorted_ds = data.Dataset(img, np.repeat(np.arange(3), 4), "toy", "train")
    tr, te = R._load_datasets(R.ReportConfig(limit=6, test_limit=3), (sorted_ds, sorted_ds))
    assert tr.labels.tolist() == [0, 1, 2, 0, 1, 2] and te.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(tr.images[:3], img[[0, 4, 8]])
    mixed = data.Dataset(img, np.array([1, 0, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]), "toy", "train")
    tr, _ = R._load_datasets(R.ReportConfig(limit=5), (mixed, mixed))
    assert tr.labels.tolist() == [1, 0, 2, 0, 1]
