"""benchmarks/run_all.py: the quick and full profiles, and sandboxed runs that never touch the CPU results.

The quick profile of every benchmark takes far longer than a test may (each is minutes on 2 cores), so the
real benchmarks are checked by a dry run and their quick settings against their own argument parsers'
source; the running machinery (sandbox, copies, summary file, exit status, timeout) is run end to end on
toy benchmarks.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_all():
    spec = importlib.util.spec_from_file_location("run_all_under_test", BENCH / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_settings_are_options_of_their_benchmarks(run_all):
    names = run_all.benchmarks()
    assert "cifar" in names and "run_all" not in names and "readme_tables" not in names
    for name, args in run_all.QUICK_ARGS.items():
        src = (BENCH / f"{name}.py").read_text()
        assert "--quick" not in src, f"{name} has --quick now; drop its QUICK_ARGS"
        for flag in (a for a in args if a.startswith("--")):
            assert re.search(rf'add_argument\("{re.escape(flag)}"', src), f"{name}.py has no option {flag}"
    for name, flag in run_all.SCRATCH_ARGS.items():
        assert re.search(rf'add_argument\("{re.escape(flag)}"', (BENCH / f"{name}.py").read_text())


def test_dry_run_lists_both_profiles(run_all, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "device_info", lambda: {"name": "cpu", "kind": "cpu", "backend": "cpu"})
    monkeypatch.setattr(run_all, "_help", lambda name: "--quick" if name in ("knn", "cifar") else "")
    assert run_all.main(["--dry-run", "--quick", "--only", "knn", "cifar", "concentration_mnist"]) == 0
    out = capsys.readouterr().out
    assert "quick profile" in out and "[knn] python benchmarks/knn.py --quick" in out
    assert "[cifar] python benchmarks/cifar.py --quick" in out
    assert "concentration_mnist.py --only linf" in out
    assert run_all.main(["--dry-run", "--only", "knn"]) == 0
    out = capsys.readouterr().out
    assert "full profile" in out and "[knn] python benchmarks/knn.py\n" in out
    assert run_all.main(["--dry-run", "--only", "nope"]) == 2


TOY = '''
import argparse, json, sys, time
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--fail", action="store_true")
a = ap.parse_args()
out = Path(__file__).resolve().parent / "results" / "toy.json"
old = json.loads(out.read_text()) if out.exists() else []
out.write_text(json.dumps(old + [{"quick": a.quick}]))
print("toy ran", a.quick)
if "{name}" == "slow":
    time.sleep(30)
sys.exit(3 if "{name}" == "bad" else 0)
'''


def _toy_tree(tmp_path: Path) -> Path:
    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    for name in ("toy", "bad", "slow"):
        (bench / f"{name}.py").write_text(TOY.replace("{name}", name))
    (bench / "_common.py").write_text("def find_data_dir(*a, **k):\n    return None\n")
    (bench / "results" / "toy.json").write_text(json.dumps([{"full": "kept"}]))
    return bench


def _point_at(run_all, monkeypatch, bench: Path, device: str):
    monkeypatch.setattr(run_all, "HERE", bench)
    monkeypatch.setattr(run_all, "RESULTS", bench / "results")
    monkeypatch.setattr(run_all, "device_info", lambda: {"name": device, "kind": device, "backend": device})
    monkeypatch.setattr(run_all, "_help", lambda name: "--quick")


def test_quick_profile_runs_sandboxed_and_keeps_cpu_results(run_all, tmp_path, monkeypatch):
    bench = _toy_tree(tmp_path)
    _point_at(run_all, monkeypatch, bench, "cpu")
    assert run_all.main(["--quick", "--only", "toy", "bad"]) == 1  # "bad" exits 3
    assert json.loads((bench / "results" / "toy.json").read_text()) == [{"full": "kept"}]
    assert json.loads((bench / "results" / "quick_cpu" / "toy.json").read_text()) == [{"quick": True}]
    summary = json.loads((bench / "results" / "run_all_quick_cpu.json").read_text())
    assert summary["profile"] == "quick"
    toy, bad = summary["benchmarks"]["toy"], summary["benchmarks"]["bad"]
    assert toy["returncode"] == 0 and toy["command"] == ["toy.py", "--quick"] and "toy ran True" in toy["output_tail"]
    assert toy["results"] == {"toy.json": [{"quick": True}]} and bad["returncode"] == 3
    assert not (bench / "results" / "run_all_cpu.json").exists()
    # --resume skips what succeeded with the same command and reruns what failed.
    assert run_all.main(["--quick", "--resume", "--only", "toy", "bad"]) == 1
    again = json.loads((bench / "results" / "run_all_quick_cpu.json").read_text())
    assert again["benchmarks"]["toy"]["finished"] == toy["finished"]


def test_full_profile_on_cpu_writes_in_place_and_other_devices_are_sandboxed(run_all, tmp_path, monkeypatch):
    bench = _toy_tree(tmp_path)
    _point_at(run_all, monkeypatch, bench, "cpu")
    assert run_all.main(["--only", "toy"]) == 0
    assert json.loads((bench / "results" / "toy.json").read_text()) == [{"full": "kept"}, {"quick": False}]
    assert json.loads((bench / "results" / "run_all_cpu.json").read_text())["profile"] == "full"
    _point_at(run_all, monkeypatch, bench, "gpu_h200")
    assert run_all.main(["--only", "toy"]) == 0
    assert len(json.loads((bench / "results" / "toy.json").read_text())) == 2  # untouched
    assert json.loads((bench / "results" / "gpu_h200" / "toy.json").read_text()) == [{"quick": False}]
    assert (bench / "results" / "run_all_gpu_h200.json").is_file()


def test_quick_profile_skips_a_benchmark_without_quick_settings(run_all, tmp_path, monkeypatch, capsys):
    bench = _toy_tree(tmp_path)
    _point_at(run_all, monkeypatch, bench, "cpu")
    monkeypatch.setattr(run_all, "_help", lambda name: "")  # toy offers no --quick here, and has no QUICK_ARGS
    assert run_all.main(["--quick", "--only", "toy"]) == 0
    assert "skipped" in capsys.readouterr().out
    rec = json.loads((bench / "results" / "run_all_quick_cpu.json").read_text())["benchmarks"]["toy"]
    assert rec["skipped"] and rec["command"] is None
    assert json.loads((bench / "results" / "toy.json").read_text()) == [{"full": "kept"}]
    assert not (bench / "results" / "quick_cpu").exists()


def test_timeout_is_recorded(run_all, tmp_path, monkeypatch):
    bench = _toy_tree(tmp_path)
    _point_at(run_all, monkeypatch, bench, "cpu")
    assert run_all.main(["--quick", "--only", "slow", "--timeout", "2"]) == 1
    rec = json.loads((bench / "results" / "run_all_quick_cpu.json").read_text())["benchmarks"]["slow"]
    assert rec["returncode"] == 124 and "timed out" in rec["output_tail"]
