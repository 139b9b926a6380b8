"""Fault injection: k-NN and training runs killed with SIGKILL at seeded random points, their files damaged,
then rerun; the rerun's numbers must equal an uninterrupted run's exactly.

Each victim runs in a subprocess (``python -c``) on the embedded 8x8 digits, with small sizes; every wait has
a timeout so nothing hangs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxbound import data, geometry, models, training

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240.0  # a victim that neither reaches its kill point nor finishes fails the test

KNN_KW = dict(k=5, norm="l2", block_size=8)
TRAIN_KW = dict(epochs=3, batch_size=64, progress=False)

KNN_JOB = """
import sys
import numpy as np
from jaxbound import data, geometry
x = data.load("digits", split="train").flat()[:600]
geometry.knn(x, k=5, norm="l2", block_size=8, checkpoint=sys.argv[1], checkpoint_every=0.0)
"""

TRAIN_JOB = """
import sys
import jax
from jaxbound import data, models, training
tr = data.load("digits", split="train")
training.train(models.create("mlp", hidden=(32,)), (tr.images[:256], tr.labels[:256]), key=jax.random.key(7),
               epochs=3, batch_size=64, progress=False, checkpoint_dir=sys.argv[1])
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _run_and_kill(job: str, folder: Path, ready) -> bool:
    """Start ``job`` on ``folder`` and SIGKILL it once ``ready(folder)`` holds; True when it was killed midway."""
    proc = subprocess.Popen([sys.executable, "-c", job, str(folder)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                assert proc.returncode == 0, err[-2000:]
                return False
            if ready(folder):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return True
            time.sleep(0.02)
        raise AssertionError(f"the victim neither reached its kill point nor finished within {TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("seg_*.npz")) if folder.is_dir() else []


def _damage(files: list[Path], rng: np.random.Generator) -> None:
    """Truncate one file and fill another with random bytes (the first two of ``files``, in a seeded order)."""
    order = rng.permutation(len(files))
    if len(files) >= 1:
        f = files[order[0]]
        f.write_bytes(f.read_bytes()[: max(0, f.stat().st_size // 3)])
    if len(files) >= 2:
        f = files[order[1]]
        f.write_bytes(rng.integers(0, 256, max(1, f.stat().st_size), np.uint8).tobytes())


def test_knn_killed_twice_and_damaged_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(20)
    x = data.load("digits", split="train").flat()[:600]
    full = geometry.knn(x, **KNN_KW)
    ck = tmp_path / "knn"
    killed = 0
    for _ in range(2):  # two kills at seeded random points, each after a seeded number of saved segments
        at = len(_segments(ck)) + int(rng.integers(3, 25))
        killed += _run_and_kill(KNN_JOB, ck, lambda f, at=at: len(_segments(f)) >= at)
        segs = _segments(ck)
        _damage(segs[len(segs) // 2:], rng)  # a truncated and a random segment among the later ones
    assert killed >= 1, "the k-NN finished before any kill point; make the job longer"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        resumed = geometry.knn(x, **KNN_KW, checkpoint=ck, checkpoint_every=0.0)
    damaged = [w for w in rec if issubclass(w.category, RuntimeWarning) and "damaged" in str(w.message)]
    assert len(damaged) <= 1  # one warning names the first damaged segment; it and later ones are recomputed
    np.testing.assert_array_equal(resumed.indices, full.indices)
    np.testing.assert_array_equal(resumed.distances, full.distances)
    assert not ck.exists()  # removed once finished, temporary files of the killed runs included


def _meta_epoch(folder: Path) -> int:
    import json

    try:
        return int(json.loads((folder / "meta.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _orbax_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "meta.json" and f.stat().st_size)


def test_training_killed_and_damaged_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(21)
    tr = data.load("digits", split="train")
    xy = (tr.images[:256], tr.labels[:256])
    model = models.create("mlp", hidden=(32,))
    full = training.train(model, xy, key=jax.random.key(7), **TRAIN_KW)
    ck = tmp_path / "train"
    at = int(rng.integers(1, 3))  # kill after epoch 1 or 2 is checkpointed
    killed = _run_and_kill(TRAIN_JOB, ck, lambda f: _meta_epoch(f) >= at)
    damaged = tmp_path / "train_damaged"
    shutil.copytree(ck, damaged)
    # resume from the intact checkpoint: identical parameters and history
    resumed = training.train(model, xy, key=jax.random.key(7), checkpoint_dir=ck, **TRAIN_KW)
    _assert_same_run(resumed, full)
    # a damaged Orbax folder (a random file among them, the others truncated, so whichever the restore reads is
    # damaged, however many steps the killed run kept): one warning, trained from the start
    files = _orbax_files(damaged)
    _damage(files, rng)
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.warns(RuntimeWarning, match="training checkpoint .* is damaged"):
        again = training.train(model, xy, key=jax.random.key(7), checkpoint_dir=damaged, **TRAIN_KW)
    _assert_same_run(again, full)
    assert killed or _meta_epoch(ck) == 3


def _assert_same_run(a, b):
    assert a.steps == b.steps
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
