"""Multi-process runs (jaxbound.distributed): two local CPU processes on jax.distributed with gloo collectives.

One start-up of two processes (a free port, every wait with a timeout) and
one single-process reference run on the same inputs, side by side
(tests/_distributed_worker.py runs every check in one start-up); the tests
compare their outputs: identical, bit for bit. The single-process functions
of jaxbound.distributed and the CLI flags are tested in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jaxbound import _io, cli, distributed

WORKER = Path(__file__).with_name("_distributed_worker.py")
REPO = Path(__file__).resolve().parents[1]
WAIT_S = 240  # per process; the exchanges inside time out after 60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, pid: int, nproc: int, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)  # one CPU device per process, as in the single-process reference
    if extra:  # the training reference: one process with the mesh shape of the two processes
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(pid), str(nproc), str(port), "60", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out)


def _wait(procs: list[subprocess.Popen]) -> None:
    """Wait for every process (at most WAIT_S each, then kill them all); fail with their output, skip without gloo."""
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=WAIT_S)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a worker did not finish within {WAIT_S} s")
    if any(p.returncode for p in procs):
        text = "\n".join(logs)
        if "gloo" in text.lower() and ("not available" in text.lower() or "unsupported" in text.lower()):
            pytest.skip("gloo CPU collectives are not available in this jaxlib")
        pytest.fail("a worker failed:\n" + "\n----\n".join(log[-3000:] for log in logs))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(dist, single)``: per process ``(outputs, facts)`` of the two-process run, and the reference."""
    root = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    procs = [_launch(root / "dist", p, 2, port) for p in range(2)] + [_launch(root / "single", 0, 1, 0),
                                                                         _launch(root / "train", 0, 1, 0, "train")]
    _wait(procs)
    port = _free_port()  # a restart of all processes resumes the job the first start stopped midway
    _wait([_launch(root / "dist", p, 2, port, "resume") for p in range(2)])

    def load(folder, pid):
        with np.load(folder / f"p{pid}.npz") as z:
            return {k: z[k] for k in z.files}, json.loads((folder / f"p{pid}.json").read_text())

    return [load(root / "dist", p) for p in range(2)], load(root / "single", 0), root


def _same(runs, *names):
    dist, (ref, _), _ = runs
    for name in names:
        for p, (got, _) in enumerate(dist):
            assert got[name].dtype == ref[name].dtype and np.array_equal(got[name], ref[name]), (name, p)


def _points():
    return np.random.default_rng(0).uniform(size=(203, 8)).astype(np.float32)


def test_two_processes_form_one_global_mesh(runs):
    dist, (_, single), _ = runs
    assert [f["devices"] for _, f in dist] == [2, 2] and [f["local_devices"] for _, f in dist] == [1, 1]
    assert single["devices"] == 1


def test_knn_identical_and_right(runs):
    _same(runs, "knn_dist", "knn_idx")
    got = runs[0][0][0]
    d = cdist(_points().astype(np.float64), _points().astype(np.float64))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(got["knn_dist"], np.sort(d, axis=1)[:, :4], rtol=1e-5)


def test_radius_pairs_and_counts_identical_and_right(runs):
    _same(runs, "rp_rows", "rp_cols", "rp_counts", "count")
    got = runs[0][1][0]
    d = cdist(_points().astype(np.float64), _points().astype(np.float64))
    r, c = np.nonzero(d <= 0.8)
    assert np.array_equal(got["rp_rows"], r) and np.array_equal(got["rp_cols"], c)
    assert np.array_equal(got["count"], (d <= 1.0).sum(1))


def test_process_local_rows_give_the_full_result(runs):
    """Each process passes its own 100 query rows; both get the k-NN of all 200 rows, as one process does."""
    _same(runs, "local_dist", "local_idx")


def test_pgd_identical(runs):
    _same(runs, "pgd_x", "pgd_success")


def test_host_side_bounds_identical(runs):
    """OptProb, the 0-1 cover and L*(2)/L*(3) solve on process 0; every process gets the single-process answer."""
    _same(runs, "mc3_q", "mc2_q", "optprob_q", "cover_correct")


def test_checkpoint_resumes_after_a_restart_of_all_processes(runs):
    """An error in round 1 stops both processes; process 0 kept round 0; restarted, they compute only the rest."""
    dist, (ref, single), root = runs
    np.testing.assert_array_equal(ref["ckpt_out"], 2 * np.arange(70, dtype=np.float32).reshape(35, 2))
    assert single["ckpt_segments"] == ["seg_000000000000_000000000004.npz", "seg_000000000004_000000000008.npz"]
    assert single["ckpt_rows_computed"] == 35 - 8
    for p, (_, f) in enumerate(dist):
        assert "stopped on purpose" in f["ckpt_first"]
        assert f["ckpt_segments"] == ["seg_000000000000_000000000008.npz"]  # round 0: blocks 0 and 1
        with np.load(root / "dist" / f"resume{p}.npz") as z:
            assert np.array_equal(z["ckpt_out"], ref["ckpt_out"])
        again = json.loads((root / "dist" / f"resume{p}.json").read_text())
        assert again["ckpt_rows_computed"] == 35 - 8 and not again["ckpt_left"]
    assert not (root / "dist" / "ckpt").exists()


def test_different_inputs_raise_on_every_process(runs):
    for _, f in runs[0]:
        assert f["different_inputs"] is not None and f["different_inputs"].startswith("inputs:")
        assert "different inputs" in f["different_inputs"]


def test_uneven_local_rows_raise_on_every_process(runs):
    for _, f in runs[0]:
        msg = f["uneven_rows"]
        assert msg is not None and msg.startswith("rows:") and "[10, 11]" in msg and "divide" in msg


def test_radius_pairs_refuse_process_local_rows_on_every_process(runs):
    for _, f in runs[0]:
        assert f["local_pairs"] is not None and f["local_pairs"].startswith("local_rows:")


def test_host_side_steps_run_on_process_zero(runs):
    for _, f in runs[0]:
        assert f["zero"] == 10 and f["broadcast"] == 0  # process 0's values everywhere
        assert f["zero_error"] == "max-flow failed on process 0"  # its error raised everywhere
    ref = runs[1][0]["knn_idx"]
    for got, _ in runs[0]:  # a k-NN inside the host-side step runs on process 0 alone
        assert np.array_equal(got["zero_knn_idx"], ref)


def test_one_writer(runs):
    for _, f in runs[0]:
        assert f["written_by"] == 0


def test_cli_distributed_knn_matches_single_process(runs):
    _, _, root = runs
    assert [f["cli_rc"] for _, f in runs[0]] == [0, 0]
    with np.load(root / "dist" / "knn_cli.npz") as a, np.load(root / "single" / "knn_cli.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in b.files:
            assert np.array_equal(a[k], b[k]), k


def test_a_missing_process_times_out_instead_of_hanging(runs):
    msg = runs[0][0][1]["timeout"]
    assert msg is not None and "did not arrive within 3 s" in msg and "process 1" in msg


def test_two_training_steps_identical(runs):
    """Two data-parallel steps on the 2-device global mesh == one process with two devices (same reductions)."""
    dist, _, root = runs
    for _, f in dist:
        if f["train"] != "ok":
            pytest.xfail(f"training.train in two processes raised ({f['train']}); multi-process training (a mesh "
                         "over jax.devices() when jax.process_count() > 1) is being added to jaxbound/training.py")
    assert json.loads((root / "train" / "train_ref.json").read_text())["train"] == "ok"
    with np.load(root / "train" / "train_ref.npz") as z:
        ref = {k: z[k] for k in z.files}
    assert ref
    for got, _ in dist:
        assert sorted(k for k in got if k.startswith("train_")) == sorted(ref)
        for k in ref:
            assert np.array_equal(got[k], ref[k]), k


# ---------------------------------------------------------------------------
# One process: the helpers fall back to local calls; the bad inputs
# ---------------------------------------------------------------------------


def test_single_process_helpers_are_local_calls():
    assert not distributed.is_active() and distributed.process_index() == 0 and distributed.process_count() == 1
    assert distributed.is_writer() and _io.is_writer()
    obj = {"a": np.arange(3)}
    assert distributed.broadcast(obj) is obj
    assert distributed.on_process_zero(lambda a, b=0: a + b, 2, b=3) == 5
    assert distributed.exchange(b"xy") == [b"xy"]
    with distributed.local_rows():
        assert not distributed.local_rows_active()  # only in a multi-process run
    got = distributed.allgather([np.arange(4, dtype=np.int64), np.ones((2, 3), bool)])
    assert len(got) == 1 and got[0][0].dtype == np.int64 and got[0][1].shape == (2, 3)
    with pytest.raises(RuntimeError, match="process 0 failed: boom"):
        distributed.allgather([], error="boom")


def test_check_same_fingerprint_sees_every_byte():
    a = np.zeros((5, 3), np.float32)
    b = a.copy()
    b[4, 2] = 1e-30
    assert distributed.check_same(a, {"k": 1}) == distributed.check_same(a.copy(), {"k": 1})
    assert distributed.check_same(a) != distributed.check_same(b)


def test_on_process_zero_raises_the_error():
    def fail():
        raise KeyError("x")

    with pytest.raises(KeyError):
        distributed.on_process_zero(fail)


@pytest.mark.parametrize("kwargs, name", [
    (dict(coordinator_address=None), "coordinator_address"),
    (dict(coordinator_address="nohost"), "coordinator_address"),
    (dict(coordinator_address="h:1", num_processes=0), "num_processes"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, timeout=0), "timeout"),
])
def test_initialize_bad_arguments(monkeypatch, kwargs, name):
    for v in distributed.AUTO_DETECT_ENV:
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(ValueError, match=f"^{name}:"):
        distributed.initialize(**kwargs)
    distributed.set_timeout(None)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "x", True])
def test_set_timeout_bad(value):
    with pytest.raises(ValueError, match="^timeout:"):
        distributed.set_timeout(value)


def test_timeout_from_environment(monkeypatch):
    distributed.set_timeout(None)
    monkeypatch.setenv("JAXBOUND_DISTRIBUTED_TIMEOUT_S", "12.5")
    assert distributed.timeout_s() == 12.5
    distributed.set_timeout(7)
    assert distributed.timeout_s() == 7.0
    distributed.set_timeout(None)
    monkeypatch.delenv("JAXBOUND_DISTRIBUTED_TIMEOUT_S")
    assert distributed.timeout_s() == distributed.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize("flags, message", [
    (["--distributed"], "--distributed: no coordinator"),
    (["--coordinator", "127.0.0.1:1"], "--coordinator: only with --distributed"),
    (["--num-processes", "2"], "--num-processes: only with --distributed"),
    (["--distributed", "--coordinator", "127.0.0.1:1"], "--coordinator: also pass --num-processes"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes: must be >= 1"),
    (["--distributed", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id: must be in [0, 2)"),
])
def test_cli_distributed_bad_flags(monkeypatch, capsys, tmp_path, flags, message):
    for v in distributed.AUTO_DETECT_ENV:
        monkeypatch.delenv(v, raising=False)
    rc = cli.main(["knn", "--dataset", "digits", "--out", str(tmp_path / "k.npz"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and f"jaxbound knn: error: {message}" in err
    assert not (tmp_path / "k.npz").exists()
