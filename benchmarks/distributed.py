"""Multi-process scaling on jax.distributed: 1, 2 and 4 local CPU processes (gloo) on MNIST k-NN and PGD.

Every group of P processes runs the same job: the l2 k-NN (k = 50) of the
60,000 MNIST training images among themselves (``geometry.knn``), then an
l-inf PGD run (eps 0.3, 20 steps) of an untrained LeNet5 on the first 2,000
test images (``attacks.pgd``, blocks of 1/8 of the points). Each process records its wall seconds and its
own CPU seconds per task (``resource.getrusage(RUSAGE_SELF)``); the parent
records the CPU seconds of each group's processes together
(``resource.getrusage(RUSAGE_CHILDREN)``). The baseline is the single process
(P = 1) of the same run. Reported per P:

* ``cpu_ratio``: the largest CPU seconds of one process / the single
  process's CPU seconds (target for the k-NN at P = 2: <= 0.6, the work is
  really split);
* ``speedup`` = t1 / tP and ``efficiency`` = t1 / (P tP) on wall time (on a
  machine with fewer free cores than P x XLA's threads, wall time does not
  scale: the CPU split is the measure there);
* the results of all processes are checked identical to the single process.

With ``--device-scaling`` on a machine with several GPUs the same job also
runs as one process on 1, 2, ... visible GPUs (``CUDA_VISIBLE_DEVICES``).

Usage:
  python benchmarks/distributed.py                 # full: 60k x 60k k-NN, P = 1, 2, 4 (about 15-30 min on 16 cores)
  python benchmarks/distributed.py --quick         # 4,000 points, 200 PGD points, P = 1, 2 (a smoke test)

Writes ``benchmarks/results/distributed_<device>.json`` (``_quick`` appended with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from _common import require_data_dir  # noqa: E402


def worker(args) -> None:
    """One process of a group: run the tasks, print one JSON line with times, CPU seconds and result digests."""
    import jax

    from jaxbound import distributed

    if args.nproc > 1:
        distributed.initialize(f"127.0.0.1:{args.port}", args.nproc, args.pid, timeout=args.timeout)
    from jaxbound import attacks, data, geometry, models
    from jaxbound._io import fingerprint

    root = require_data_dir(args.data_dir)
    x = data.load("mnist", split="train", data_dir=root).flat()[:args.n]
    te = data.load("mnist", split="test", data_dir=root)
    rec = {"pid": args.pid, "nproc": args.nproc, "devices": len(jax.devices()),
           "local_devices": len(jax.local_devices()), "platform": jax.devices()[0].platform}

    def timed(name, fn):
        c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = fn()
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        rec[name] = {"seconds": time.perf_counter() - t0,
                     "cpu_s": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)}
        return out

    knn = timed("knn", lambda: geometry.knn(x, k=50, norm="l2"))
    rec["knn"]["digest"] = fingerprint(knn.distances, knn.indices)
    model = models.create("lenet5", num_classes=10)
    params = models.init_params(model, te.images.shape[1:], key=jax.random.key(0))
    xt, yt = te.images[:args.n_pgd], te.labels[:args.n_pgd]
    adv = timed("pgd", lambda: attacks.pgd(models.logits_fn(model, params), xt, yt, key=jax.random.key(1),
                                           eps=0.3, norm="linf", steps=20, batch_size=args.pgd_batch))
    rec["pgd"]["digest"] = fingerprint(np.asarray(adv.x_adv), np.asarray(adv.success))
    print("RESULT " + json.dumps(rec), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(nproc: int, args, env_extra: dict | None = None) -> dict:
    """Start ``nproc`` processes, wait (with a timeout), return their records and the group's CPU seconds."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", ""), **(env_extra or {}))
    if not env["JAX_PLATFORMS"]:
        env.pop("JAX_PLATFORMS")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--worker", "--n", str(args.n), "--n-pgd", str(args.n_pgd), "--pgd-batch", str(args.pgd_batch),
           "--nproc", str(nproc), "--port", str(port), "--timeout", str(args.timeout)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    procs = [subprocess.Popen(cmd + ["--pid", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for p in range(nproc)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=args.timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            sys.exit(f"a group of {nproc} processes did not finish within {args.timeout} s")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    recs = []
    for p, out in zip(procs, outs):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            sys.exit(f"a process of the group of {nproc} failed:\n{p.stderr.read() if p.stderr else ''}{out[-3000:]}")
        recs.append(json.loads(lines[-1][len("RESULT "):]))
    group_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"nproc": nproc, "wall_s": wall, "children_cpu_s": group_cpu, "processes": recs}


def summarise(groups: list[dict]) -> dict:
    """Per task and P: seconds, CPU per process, CPU ratio, speedup, efficiency, identical results."""
    base = groups[0]["processes"][0]
    out = {}
    for task in ("knn", "pgd"):
        rows = []
        for g in groups:
            ps = g["processes"]
            t = max(p[task]["seconds"] for p in ps)
            cpu = [p[task]["cpu_s"] for p in ps]
            rows.append({"nproc": g["nproc"], "seconds": t, "cpu_s_per_process": cpu,
                         "cpu_ratio": max(cpu) / base[task]["cpu_s"],
                         "speedup": base[task]["seconds"] / t,
                         "efficiency": base[task]["seconds"] / (g["nproc"] * t),
                         "identical": all(p[task]["digest"] == base[task]["digest"] for p in ps)})
        out[task] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4,000 k-NN points, 200 PGD points, P = 1, 2")
    ap.add_argument("--procs", default=None, help="comma-separated process counts (default 1,2,4; quick 1,2)")
    ap.add_argument("--n", type=int, default=None, help="k-NN points (default 60000)")
    ap.add_argument("--n-pgd", type=int, default=None, help="PGD points (default 2000)")
    ap.add_argument("--pgd-batch", type=int, default=None, help="PGD rows per block (default: 1/8 of the points, "
                                                                 "so that the blocks split over the processes)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a group may take")
    ap.add_argument("--device-scaling", action="store_true", help="also one process on 1, 2, ... visible GPUs")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--nproc", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.n = args.n or (4000 if args.quick else 60000)
    args.n_pgd = args.n_pgd or (200 if args.quick else 2000)
    args.pgd_batch = args.pgd_batch or max(1, args.n_pgd // 8)
    if args.worker:
        return worker(args)
    require_data_dir(args.data_dir)
    procs = [int(v) for v in (args.procs or ("1,2" if args.quick else "1,2,4")).split(",")]
    if procs[0] != 1:
        procs = [1] + procs  # the single process is the baseline
    load_start, groups = os.getloadavg(), []
    for p in procs:
        groups.append(run_group(p, args))
        print(f"P={p}: wall {groups[-1]['wall_s']:.1f} s, children CPU {groups[-1]['children_cpu_s']:.1f} s",
              flush=True)
    summary = summarise(groups)
    device = groups[0]["processes"][0]["platform"]
    rec = {"benchmark": "distributed", "quick": args.quick, "n_knn": args.n, "n_pgd": args.n_pgd,
           "baseline": "one process (P = 1) in the same run", "cpu_count": os.cpu_count(),
           "loadavg_start": load_start, "machine": platform.platform(), "groups": groups, "summary": summary}
    if args.device_scaling:
        rec["device_scaling"] = device_scaling(args)
    rec["loadavg"] = os.getloadavg()
    for task, rows in summary.items():
        for r in rows:
            print(f"{task:4s} P={r['nproc']}: {r['seconds']:8.2f} s  CPU/process max {max(r['cpu_s_per_process']):8.2f} s"
                  f"  cpu_ratio {r['cpu_ratio']:.3f}  speedup {r['speedup']:.2f}  efficiency {r['efficiency']:.2f}"
                  f"  identical {r['identical']}")
    out = HERE / "results" / f"distributed_{device}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {out} (load average {rec['loadavg']})")


def device_scaling(args) -> list[dict]:
    """One process on 1, 2, 4, ... of the visible GPUs (nothing on a CPU-only machine)."""
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    rows, k = [], 1
    while k <= len(gpus):
        g = run_group(1, args, {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(k))})
        p = g["processes"][0]
        rows.append({"gpus": k, "knn_s": p["knn"]["seconds"], "pgd_s": p["pgd"]["seconds"]})
        k *= 2
    return rows


if __name__ == "__main__":
    main()
