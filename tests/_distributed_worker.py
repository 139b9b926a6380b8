"""One process of the multi-process tests (tests/test_distributed.py); also run alone as the reference.

``python tests/_distributed_worker.py OUT PID NPROC PORT TIMEOUT [train|resume]`` runs every
check in one start-up (start-up dominates the cost) and writes
``OUT/p<PID>.npz`` (the outputs) and ``OUT/p<PID>.json`` (messages of the
errors each bad input raised, and facts about checkpoints and files).
With ``NPROC`` 1 it runs without ``jax.distributed``: the single-process
reference on the same inputs; with ``train`` it runs only the two training
steps (the reference for them is one process with two devices: the same mesh
shape, so the same reductions); with ``resume`` only the rerun of the job that
the first start stopped midway (a restart of all processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _double(x):
    return x * 2.0


_CKPT_X = np.arange(70, dtype=np.float32).reshape(35, 2)


def _checkpoint_stop(out: Path, facts: dict) -> None:
    """A job stopped by an error in its third block on each process keeps the finished rows on disk."""
    from jaxbound import _engine

    folder, calls = out / "ckpt", []

    def failing(o, nv):
        calls.append(nv)
        if len(calls) == 3:
            raise RuntimeError("stopped on purpose")
        return [np.asarray(o)[:nv]]

    try:
        _engine.stream(_double, {}, [_CKPT_X], block_size=4, checkpoint=folder, checkpoint_every=0, collect=failing)
        facts["ckpt_first"] = "no error"
    except RuntimeError as exc:
        facts["ckpt_first"] = str(exc)
    facts["ckpt_segments"] = sorted(p.name for p in folder.glob("seg_*.npz"))


def _checkpoint_resume(out: Path, res: dict, facts: dict, distributed) -> None:
    """The rerun of the stopped job (after a restart of all processes) computes only the rows not on disk."""
    from jaxbound import _engine

    folder, calls = out / "ckpt", []
    _, blocks = _engine.stream(_double, {}, [_CKPT_X], block_size=4, checkpoint=folder, checkpoint_every=0,
                               collect=lambda o, nv: calls.append(nv) or [np.asarray(o)[:nv]])
    res["ckpt_out"] = np.concatenate([b[0] for b in blocks])
    facts["ckpt_rows_computed"] = int(sum(calls))
    distributed.exchange(b"", what="after the rerun")  # process 0 has removed the folder
    facts["ckpt_left"] = folder.exists() and any(folder.iterdir())


def _bad_inputs(x: np.ndarray, pid: int, facts: dict, geometry, distributed) -> None:
    try:
        geometry.knn(x + pid, k=3, block_size=32)
        facts["different_inputs"] = None
    except ValueError as exc:
        facts["different_inputs"] = str(exc)
    try:
        with distributed.local_rows():
            geometry.knn(x[:10 + pid], x, k=3, block_size=32)
        facts["uneven_rows"] = None
    except ValueError as exc:
        facts["uneven_rows"] = str(exc)

    def flow_fails():
        raise ValueError("max-flow failed on process 0")

    try:
        with distributed.local_rows():
            geometry.radius_pairs(x[:100 * pid + 100][-100:], x, radius=0.8)
        facts["local_pairs"] = None
    except ValueError as exc:
        facts["local_pairs"] = str(exc)
    facts["zero"] = distributed.on_process_zero(lambda: 10 + distributed.process_index())
    try:
        distributed.on_process_zero(flow_fails)
        facts["zero_error"] = None
    except ValueError as exc:
        facts["zero_error"] = str(exc)
    facts["broadcast"] = distributed.broadcast({"pid": pid})["pid"]
    return distributed.on_process_zero(lambda: geometry.knn(x, k=4, exclude_self=True, block_size=32).indices)


def _train(out: Path, pid: int, res: dict, facts: dict, jax, models, training) -> None:
    """Two data-parallel steps (64 examples, batch 32) over the global mesh."""
    x = np.random.default_rng(0).uniform(size=(64, 2, 4, 1)).astype(np.float32)
    try:
        tr = training.train(models.create("mlp", hidden=(16,), num_classes=3), (x, np.arange(64) % 3),
                            key=jax.random.key(3), epochs=1, batch_size=32, progress=False)
        for i, leaf in enumerate(jax.tree.leaves(tr.params)):
            res[f"train_{i}"] = np.asarray(leaf)
        facts["train"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded for the test to report
        facts["train"] = f"{type(exc).__name__}: {exc}"


def main(argv: list[str]) -> None:
    out, pid, nproc, port, timeout = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    import time

    t0 = time.perf_counter()
    import jax

    from jaxbound import distributed

    if nproc > 1:
        distributed.initialize(f"127.0.0.1:{port}", nproc, pid, timeout=timeout, heartbeat_s=10)
    from jaxbound import _io, attacks, geometry, models, training

    res, facts = {}, {"devices": len(jax.devices()), "local_devices": len(jax.local_devices())}
    if len(argv) > 5 and argv[5] == "resume":  # a fresh start of all processes resumes the stopped job
        _checkpoint_resume(out, res, facts, distributed)
        np.savez(out / f"resume{pid}.npz", **res)
        (out / f"resume{pid}.json").write_text(json.dumps(facts))
        return
    if len(argv) > 5 and argv[5] == "train":  # the reference of the training steps: one process, two devices
        _train(out, pid, res, facts, jax, models, training)
        np.savez(out / "train_ref.npz", **res)
        (out / "train_ref.json").write_text(json.dumps(facts))
        return
    lap = [t0]

    def mark(name):  # seconds per section, to keep the test's start-up cost in view
        facts[f"s_{name}"] = round(time.perf_counter() - lap[0], 2)
        lap[0] = time.perf_counter()

    mark("start")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(203, 8)).astype(np.float32)
    knn = geometry.knn(x, k=4, exclude_self=True, block_size=32)  # 7 blocks: 4 rounds over 2 processes
    res["knn_dist"], res["knn_idx"] = knn.distances, knn.indices
    rp = geometry.radius_pairs(x, radius=0.8, block_size=32)
    res["rp_rows"], res["rp_cols"], res["rp_counts"] = rp.rows, rp.cols, rp.counts
    res["count"] = geometry.count_within(x, radius=1.0, block_size=32)
    with distributed.local_rows():  # each process passes its own 100 query rows
        lo = 100 * pid if nproc > 1 else 0
        local = geometry.knn(x[lo:lo + 100 * (3 - nproc)], x, k=3, block_size=32)
    res["local_dist"], res["local_idx"] = local.distances, local.indices
    mark("geometry")

    from jaxbound import bounds  # host-side solvers: process 0 solves, every process gets the result

    lab = np.arange(203) % 3
    g3 = bounds.conflict_hypergraph(x, lab, eps=0.35, norm="l2", degree=3)
    res["mc3_q"] = bounds.multiclass_zero_one(g3).q
    res["mc2_q"] = bounds.multiclass_zero_one(bounds.conflict_hypergraph(x, lab, eps=0.35, norm="l2")).q
    pair = bounds.conflict_graph(x[lab == 0], x[lab == 1], eps=0.35, norm="l2")
    res["optprob_q"], res["cover_correct"] = bounds.optprob(pair).q, bounds.min_zero_one_loss(pair).correct
    mark("bounds")

    model = models.create("mlp", hidden=(16,), num_classes=3)
    params = models.init_params(model, (8,), key=jax.random.key(1))
    f = models.logits_fn(model, params)
    y = (np.arange(50) % 3).astype(np.int32)
    adv = attacks.pgd(f, x[:50], y, key=jax.random.key(2), eps=0.3, norm="linf", steps=3, batch_size=16)
    res["pgd_x"], res["pgd_success"] = np.asarray(adv.x_adv), np.asarray(adv.success)
    mark("pgd")

    _checkpoint_stop(out, facts)
    if nproc == 1:
        _checkpoint_resume(out, res, facts, distributed)
    if nproc > 1:
        res["zero_knn_idx"] = _bad_inputs(x, pid, facts, geometry, distributed)
    mark("checks")
    _io.atomic_write_json(out / "written.json", {"pid": pid})
    distributed.exchange(b"", what="after writing")
    facts["written_by"] = json.loads((out / "written.json").read_text())["pid"]
    if nproc > 1:
        _train(out, pid, res, facts, jax, models, training)
    mark("train")
    from jaxbound import cli

    flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(nproc),
             "--process-id", str(pid), "--distributed-timeout", str(timeout)] if nproc > 1 else []
    facts["cli_rc"] = cli.main(["knn", "--dataset", "digits", "--limit", "300", "--k", "5", "--norm", "l2",
                                "--block-size", "16", "--quiet", "--out", str(out / "knn_cli.npz"), *flags])
    mark("cli")
    np.savez(out / f"p{pid}.npz", **res)
    (out / f"p{pid}.json").write_text(json.dumps(facts))
    if nproc > 1:  # process 1 takes another code path: process 0 raises TimeoutError instead of waiting for ever
        distributed.set_timeout(3)
        if pid == 0:
            try:
                geometry.knn(x, k=2)
                facts["timeout"] = None
            except TimeoutError as exc:
                facts["timeout"] = str(exc)
            (out / f"p{pid}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1:])
