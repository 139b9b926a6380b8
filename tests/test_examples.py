"""The example notebooks run with their small settings (FULL = False), and stay in sync with their generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

#: notebook -> jaxbound modules it needs beyond the foundation (skipped with a reason when missing)
NOTEBOOKS = {
    "mahloujifar2019_concentration": ["jaxbound.concentration"],
    "bhagoji2021_lower_bounds": ["jaxbound.bounds"],
    "zhang2020_generative": ["jaxbound.generative"],
    "ding2019_input_distribution": ["jaxbound.shift", "jaxbound.transforms"],
    "finlay2019_lipschitz": ["jaxbound.training"],
}


def code_cells(nb: dict) -> list[str]:
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        out.append("\n".join(lines))
    return out


def test_notebooks_are_valid_and_match_the_generator(tmp_path):
    gen = EXAMPLES / "_build_notebooks.py"
    spec = importlib.util.spec_from_file_location("_build_notebooks_i9", gen)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.NOTEBOOKS) == set(NOTEBOOKS)
    for name, cells in mod.NOTEBOOKS.items():
        path = EXAMPLES / f"{name}.ipynb"
        nb = json.loads(path.read_text())
        built = mod.build(name, cells)
        for i, c in enumerate(built["cells"]):
            c["id"] = f"{name[:12]}-{i}"
        assert nb == built, f"{path.name} is out of date: run python examples/_build_notebooks.py"
        assert nb["nbformat"] == 4
        first = "".join(nb["cells"][0]["source"])
        assert "colab-badge.svg" in first and f"examples/{name}.ipynb" in first
        srcs = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        assert srcs[0].splitlines()[-1].startswith("%pip install")
        assert any("FULL = False" in s for s in srcs)
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                assert c["outputs"] == [] and c["execution_count"] is None
        compile("\n\n".join(code_cells(nb)), path.name, "exec")  # every cell is valid Python


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_small(name, monkeypatch, tmp_path):
    for mod in NOTEBOOKS[name]:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{name}: module {mod} is not available yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    nb = json.loads((EXAMPLES / f"{name}.ipynb").read_text())
    ns: dict = {"__name__": f"notebook_{name}"}
    for i, src in enumerate(code_cells(nb)):
        if "FULL = False" in src:
            src = src.replace("FULL = False", "FULL = False  # forced by the test")
        exec(compile(src, f"{name}.ipynb[cell {i}]", "exec"), ns)
        assert ns.get("FULL", False) is False
    plt.close("all")
