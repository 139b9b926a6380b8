"""Fault injection for the report: SIGKILL a running ``jaxbound report`` at random points, damage its stage
files between the runs, then finish it; every number must equal an uninterrupted run's.

Each run is a subprocess with a hard timeout, so nothing here can hang.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ARGS = ["report", "--limit", "200", "--test-limit", "60", "--eval-limit", "30", "--eps", "0.3,0.45",
        "--regions", "2", "--repeats", "1", "--n-per-class", "15", "--check-per-class", "10",
        "--multiclass-per-class", "15", "--models", "standard", "--arch", "mlp", "--widen", "none", "--epochs", "1",
        "--attack-steps", "3", "--no-figures", "--quiet"]
TIMEOUT = 300
_NUMBERS = ("multiclass", "concentration", "bounds", "geometry", "table", "flags")


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "jaxbound", *ARGS, "--out", str(out)]


def _env() -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _strip_seconds(obj):
    if isinstance(obj, dict):
        return {k: _strip_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_strip_seconds(v) for v in obj]
    return obj


def _numbers(out: Path) -> dict:
    rec = _strip_seconds(json.loads((out / "report.json").read_text()))
    nums = {k: rec[k] for k in _NUMBERS}
    nums["models"] = [{k: v for k, v in m.items() if k != "train"} | {"train_history": (m["train"] or {}).get(
        "train", {}).get("history")} for m in rec["models"]]
    return nums


def _damage(path: Path, how: str, rng) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: max(1, len(data) // 3)])
    elif how == "random":
        path.write_bytes(bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    else:
        path.write_text("{}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    t0 = time.perf_counter()
    subprocess.run(_cmd(out), check=True, timeout=TIMEOUT, env=_env(), capture_output=True)
    return out, time.perf_counter() - t0


def test_killed_and_damaged_report_finishes_with_identical_numbers(reference, tmp_path):
    ref, seconds = reference
    rng = np.random.default_rng(7)
    out = tmp_path / "faulted"
    kills = 0
    for how in ("truncate", "random"):
        proc = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=float(rng.uniform(0.3, 0.9)) * seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            kills += 1
        stage_files = sorted((out / "stages").glob("*.json")) if (out / "stages").is_dir() else []
        if stage_files:
            _damage(stage_files[int(rng.integers(len(stage_files)))], how, rng)
    done = subprocess.run(_cmd(out), timeout=TIMEOUT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1
    assert _numbers(out) == _numbers(ref)


def test_damaged_model_and_foreign_stage_files_are_recomputed(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(ref), str(out)], check=True)
    msgpack = next((out / "stages").rglob("model.msgpack"))
    msgpack.write_bytes(msgpack.read_bytes()[:50])  # a truncated model
    stage = sorted((out / "stages").glob("multiclass-*.json"))[0]
    stage.write_text(json.dumps({"foreign": True}))
    conc = sorted((out / "stages").glob("concentration-*.json"))[0]
    conc.write_text("{}")
    done = subprocess.run(_cmd(out), timeout=TIMEOUT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training it again" in done.stderr and stage.name in done.stderr and conc.name in done.stderr
    assert _numbers(out) == _numbers(ref)
