"""The console script and the README's set-up commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxbound import cli, geometry

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    text = (REPO / "README.md").read_text()
    cmds = readme_commands()
    assert len(cmds[:2]) == 2
    # the two commands come first, before any prose section
    assert text.index("```bash") < text.index("\n## ")
    install_run, install_test = cmds[0], cmds[1]
    assert "jaxbound demo" in install_run or "jaxbound report" in install_run
    assert "pytest" in install_test
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == install_test.strip()


def test_demo_on_digits(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet", "--limit", "300"]) == 0
    rec = json.loads((tmp_path / "demo.json").read_text())
    assert rec["dataset"]["name"] == "digits" and rec["dataset"]["n"] == 300
    from jaxbound import data

    ds = data.load("digits")
    x, y = ds.flat()[:300], ds.labels[:300]
    for norm in ("l1", "l2", "linf"):
        near = geometry.nearest_other_class(x, y, norm=norm)
        assert rec["nearest_other_class"][norm]["min_distance"] == pytest.approx(float(near.distances.min()))
        assert rec["nearest_other_class"][norm]["separation_eps"] == pytest.approx(float(near.distances.min()) / 2)
    kth = geometry.knn(x, k=50, norm="l1").distances[:, -1]
    assert rec["density_rank"]["radius_quantiles"]["q50"] == pytest.approx(float(np.quantile(kth, 0.5)))
    assert "wrote" in capsys.readouterr().out


def test_knn_command_writes_npz(tmp_path):
    out = tmp_path / "k.npz"
    assert cli.main(["knn", "--limit", "100", "--k", "5", "--norm", "l2", "--out", str(out), "--quiet"]) == 0
    z = np.load(out)
    assert z["indices"].shape == (100, 5) and np.all(z["indices"][:, 0] == np.arange(100))
    # a settable checkpoint interval (resume after a kill: tests/test_faults.py)
    ck, out2 = tmp_path / "ck", tmp_path / "k2.npz"
    argv = ["knn", "--limit", "100", "--k", "5", "--norm", "l2", "--block-size", "16", "--checkpoint", str(ck),
            "--checkpoint-every", "0", "--quiet"]
    assert cli.main(argv + ["--out", str(out2)]) == 0
    assert np.array_equal(np.load(out)["indices"], np.load(out2)["indices"])
    assert cli.main(argv[:-3] + ["--checkpoint-every", "-1", "--out", str(out2), "--quiet"]) == 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--dataset", "cifar11"], "unknown dataset"),
        (["demo", "--dataset", "mnist", "--data-dir", "/nonexistent/folder"], "is not a folder"),
        (["knn", "--norm", "l0.5", "--limit", "20"], "norm:"),
        (["knn", "--k", "0", "--limit", "20"], "k:"),
        (["report", "--dataset", "cifar11"], "unknown dataset"),
        (["report", "--dataset", "mnist", "--data-dir", "/nonexistent/folder"], "is not a folder"),
        (["report", "--eps", "0.1,abc"], "eps: 'abc' is not a number"),
        (["report", "--eps", ","], "eps: give at least one budget"),
        (["report", "--eps=-0.1,0.2"], "eps: budgets must be finite and >= 0"),
        (["report", "--eps", "0.1,0.1"], "eps: repeated budget"),
        (["report", "--norm", "l7"], "norm:"),
        (["report", "--models", "magic"], "models: unknown training recipe"),
        (["report", "--model", "no_such_module_xyz:f", "--models", "none"], "model: cannot import"),
        (["concentration", "--eps", "x"], "eps:"),
        (["optprob", "--classes", "3"], "classes:"),
        (["attack", "--model", "/nonexistent/model/folder", "--norm", "linf", "--eps", "0.1"], "model:"),
        (["lipschitz", "--dataset", "tfds_nothing"], "unknown dataset"),
    ],
)
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    for opt in ("--dataset", "--split", "--data-dir", "--limit", "--k", "--out", "--quiet"):
        assert opt in text


def _subparsers():
    import argparse

    ap = cli.build_parser()
    act = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return act.choices


@pytest.mark.parametrize("command", ["report", "concentration", "optprob", "attack", "train", "lipschitz", "demo",
                                     "knn"])
def test_every_subcommand_documents_every_option(command, capsys):
    sub = _subparsers()[command]
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert f"jaxbound {command}" in text
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in text, (command, opt)
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 5, (command, action.option_strings)


def test_report_command_with_a_user_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_model_i9.py").write_text(
        "import jax.numpy as jnp\n"
        "from jaxbound import data\n"
        "_tr = data.load('digits')\n"
        "_c = jnp.asarray([_tr.flat()[_tr.labels == k].mean(0) for k in range(10)])\n"
        "def logits(x):\n"
        "    f = x.reshape(x.shape[0], -1)\n"
        "    return -jnp.sum((f[:, None, :] - _c[None]) ** 2, axis=-1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "rep"
    argv = ["report", "--limit", "300", "--test-limit", "100", "--eps", "0.3,0.45", "--n-per-class", "20",
            "--repeats", "1", "--regions", "3", "--attack", "pgd", "--attack-steps", "3", "--models", "none",
            "--model", "cli_model_i9:logits", "--model-name", "centroid", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "centroid rob. err" in text and "wrote" in text
    rec = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rec["models"]] == ["centroid"]
    assert rec["eps"] == [0.3, 0.45] and (out / "robust_error.png").is_file() and (out / "report.md").is_file()
    # rerunning the same command resumes: nothing is recomputed
    assert cli.main(argv) == 0
    rec2 = json.loads((out / "report.json").read_text())
    assert rec2["stages"]["ran"] == [] and rec2["table"] == rec["table"]


def test_method_subcommands_write_json(tmp_path, capsys):
    from jaxbound import bounds, data, metrics

    o = tmp_path / "o.json"
    assert cli.main(["optprob", "--limit", "400", "--eps", "1.0,1.5", "--out", str(o), "--quiet"]) == 0
    rec = json.loads(o.read_text())
    ds = data.load("digits").subset(np.arange(400))
    xa, xb = data.class_pair(ds, 3, 7)
    g = bounds.conflict_graph(xa, xb, eps=1.5, norm="l2")
    assert rec["rows"][1]["cross_entropy"] == pytest.approx(bounds.optprob(g).loss)
    assert rec["rows"][1]["zero_one"] == pytest.approx(bounds.min_zero_one_loss(g).loss)
    # --classes all: the multi-class bound of the first N points of each class
    assert cli.main(["optprob", "--limit", "400", "--classes", "all", "--n-per-class", "20", "--norm", "linf",
                     "--eps", "0.45", "--out", str(o), "--quiet"]) == 0
    rec = json.loads(o.read_text())
    idx = np.concatenate([np.flatnonzero(ds.labels == c)[:20] for c in range(10)])
    g3 = bounds.conflict_hypergraph(ds.flat()[idx], ds.labels[idx], eps=0.45, norm="linf", degree=3)
    assert rec["classes"] == "all" and rec["n"] == 200 and rec["degree"] == 3
    assert rec["rows"][0]["zero_one"] == pytest.approx(bounds.multiclass_zero_one(g3).loss)
    lp = tmp_path / "l.json"
    assert cli.main(["lipschitz", "--limit", "400", "--out", str(lp), "--quiet"]) == 0
    rec = json.loads(lp.read_text())
    assert rec["lipschitz"]["lipschitz"] == pytest.approx(metrics.dataset_lipschitz(ds.flat(), ds.labels, norm="l2").lipschitz)
    c = tmp_path / "c.json"
    assert cli.main(["concentration", "--limit", "400", "--test-limit", "100", "--eps", "0.3", "--regions", "3",
                     "--repeats", "1", "--out", str(c), "--quiet"]) == 0
    rec = json.loads(c.read_text())
    assert rec["method"] == "rectangles" and {r["split"] for r in rec["records"]} == {"fit", "select", "report"}
    for r in rec["records"]:
        assert r["adv_risk"] >= r["risk"] - 1e-12
    assert rec["estimates"][0]["valid"] == (rec["estimates"][0]["value"] is not None)
    # the lowest valid estimate over methods, as the report uses
    assert cli.main(["concentration", "--limit", "400", "--test-limit", "100", "--eps", "0.3", "--regions", "3",
                     "--repeats", "1", "--method", "best", "--out", str(c), "--quiet"]) == 0
    est = json.loads(c.read_text())["estimates"][0]
    assert est["method"] in ("rectangles", "halfspaces") and (est["value"] is None) == (not est["valid"])


def test_train_then_attack(tmp_path, capsys):
    m = tmp_path / "model"
    assert cli.main(["train", "--limit", "300", "--arch", "mlp", "--epochs", "2",
                     "--out", str(m), "--quiet"]) == 0
    assert (m / "model.json").is_file() and (m / "model.msgpack").is_file()
    rec = json.loads((m / "train.json").read_text())
    assert 0.5 < rec["test_accuracy"] <= 1.0
    a = tmp_path / "a.json"
    capsys.readouterr()
    assert cli.main(["attack", "--model", str(m), "--limit", "50", "--norm", "linf", "--eps", "0,0.1,0.3", "--steps", "5",
                     "--attack", "pgd", "--out", str(a), "--quiet"]) == 0
    rec = json.loads(a.read_text())
    ra = rec["robust_accuracy"]
    assert ra[0] == pytest.approx(rec["clean_accuracy"]) and ra[0] >= ra[1] >= ra[2]
    # the default attack is AutoAttack: never weaker than PGD on the same points
    assert cli.main(["attack", "--model", str(m), "--limit", "50", "--norm", "linf", "--eps", "0,0.1,0.3", "--steps", "5",
                     "--n-queries", "50", "--out", str(a), "--quiet"]) == 0
    aa = json.loads(a.read_text())
    assert aa["attack"] == "autoattack" and aa["clean_accuracy"] == pytest.approx(rec["clean_accuracy"])
    assert aa["robust_accuracy"][0] == pytest.approx(aa["clean_accuracy"])
    assert all(x <= y + 1e-12 for x, y in zip(aa["robust_accuracy"][1:], ra[1:]))
    assert aa["per_eps"][2]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_train_fast_recipe_with_early_stopping(tmp_path, capsys):
    m = tmp_path / "model"
    assert cli.main(["train", "--limit", "300", "--arch", "mlp", "--epochs", "3", "--recipe", "fgsm_rs", "--norm", "linf",
                     "--eps", "0.1", "--select", "best_robust", "--out", str(m), "--quiet"]) == 0
    rec = json.loads((m / "train.json").read_text())
    hist = rec["train"]["history"]
    assert rec["config"]["select"] == "best_robust" and len(hist) == 3
    ra = [h["robust_accuracy"] for h in hist]
    assert rec["train"]["epoch"] == max(i + 1 for i, v in enumerate(ra) if v == max(ra))
    capsys.readouterr()
    assert cli.main(["train", "--limit", "300", "--arch", "mlp", "--select", "best_robust", "--out", str(m),
                     "--quiet"]) == 2
    assert "error: select: 'best_robust' needs a per-epoch robust accuracy" in capsys.readouterr().err
    assert cli.main(["train", "--limit", "300", "--arch", "mlp", "--recipe", "pgd", "--eps", "0.1", "--out", str(m),
                     "--quiet"]) == 2
    assert "error: --norm and --eps" in capsys.readouterr().err
