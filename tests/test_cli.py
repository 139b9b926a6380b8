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


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--dataset", "cifar11"], "unknown dataset"),
        (["demo", "--dataset", "mnist", "--data-dir", "/nonexistent/folder"], "is not a folder"),
        (["knn", "--norm", "l0.5", "--limit", "20"], "norm:"),
        (["knn", "--k", "0", "--limit", "20"], "k:"),
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
