"""PGD benchmark: jaxbound.attacks.pgd on Ding et al.'s LeNet5 against a PyTorch loop.

40-step l-inf PGD (eps = 0.3, step 0.01, uniform random start, [0, 1] box;
Ding et al. 2019 §3.2) on a batch of 256 MNIST test images, attacking Ding
et al.'s LeNet5 (App. B.1), side by side in the same run with:

* ``torch``: the equivalent PyTorch CPU loop (same weights, same random-start
  law, same step/projection/clipping, ``torch.autograd.grad`` w.r.t. the input);
* ``jax_xla``: the same jaxbound attack on the straightforward lowering
  (``LeNet5(impl="xla")``: plain ``lax`` convolutions and ``reduce_window``
  pooling, differentiated by JAX), one CPU device -- the ~0.2x baseline of
  the issue;
* ``jax_1dev``: jaxbound's default ``LeNet5(impl="fast")`` (custom-VJP
  lowering) on JAX's default single CPU device;
* ``jax``: the same with one host device per core
  (``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``, set for that
  worker only): :func:`jaxbound.attacks.pgd` then splits the batch over the
  devices with ``shard_map``, and the devices run in parallel. XLA's CPU
  runtime parallelises one device's ops poorly over 2 cores (measured here:
  about 1.1x from 1 to 2 threads, against about 1.7x for PyTorch), so this is
  how the library uses every core. ``images_per_s`` is this worker's figure.

The model is first trained briefly (``--train-steps`` Adam steps on MNIST
train, batch 50, lr 1e-3) so that success rates mean something, then its
weights are copied into the PyTorch model; the logits of both frameworks are
compared. Every measurement runs in its own worker process (thread pools of
one framework never compete with the other's); rounds alternate between the
workers (one timed attack each per round) and the medians are reported, so
that a shared, noisy machine affects all of them alike. The machine's load
average is recorded.

Each round also records the worker's CPU time (user + system, all threads):
``images_per_cpu_s`` and ``ratio_cpu`` compare work per image, which other jobs
on a shared machine disturb less than wall time. ``--single-thread`` runs both
frameworks on one thread each, pinned to the same core (``xla_cpu_multi_thread_eigen=false``,
``torch.set_num_threads(1)``).

Usage:
  python benchmarks/attacks.py                 # about 5-10 minutes on 2 shared cores
  python benchmarks/attacks.py --single-thread # one thread each -> attacks_<device>_threads1.json
  python benchmarks/attacks.py --quick         # small smoke test (batch 32, 5 steps)

Writes ``benchmarks/results/attacks_<device>.json`` with ``images_per_s``,
``torch_images_per_s``, ``ratio`` (jax / torch), ``batch`` and ``steps``.

References:
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from _common import require_data_dir, torch_lenet5  # noqa: E402


# ---------------------------------------------------------------------------
# Workers (each in its own process)
# ---------------------------------------------------------------------------


def _worker_jax(args, z, impl: str):
    import jax
    import jax.numpy as jnp

    from jaxbound import attacks, models

    model = models.create("lenet5", impl=impl)
    params = {"params": {k: {"kernel": jnp.asarray(z[f"{k}_kernel"]), "bias": jnp.asarray(z[f"{k}_bias"])}
                         for k in ("conv1", "conv2", "fc1", "fc2")}}
    f = models.logits_fn(model, params)
    x, y = z["x"], z["y"]
    key = jax.random.key(args.seed)

    cfg = attacks.AttackConfig(norm="linf", eps=args.eps, steps=args.steps, step_size=args.step_size,
                               random_start=True)

    def run(i):
        return attacks.pgd(f, x, y, cfg, key=jax.random.fold_in(key, i))

    r = run(0)  # compile
    logits = np.asarray(jax.jit(f)(jnp.asarray(x)))
    info = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "jax": jax.__version__,
            "local_devices": jax.local_device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "logits": logits.tolist(), "linf_max": float(np.max(r.linf))}
    return run, info


def _worker_torch(args, z):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1 if args.single_thread else (os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    net = torch_lenet5(z)  # same weights, PyTorch layout
    x = torch.tensor(z["x"]).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(z["y"]).long()
    eps, step = args.eps, args.step_size

    def run(i):
        gen = torch.Generator().manual_seed(args.seed + i)
        xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
        for _ in range(args.steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(net(xa), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = torch.min(torch.max(xa + step * g.sign(), x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            succ = (net(xa).argmax(1) != y).numpy()
        return succ, float((xa - x).abs().max())

    run(0)  # warm-up
    with torch.no_grad():
        logits = net(x).numpy()
    return run, {"torch": torch.__version__, "threads": torch.get_num_threads(), "logits": logits.tolist()}


def worker_main(args):
    if args.single_thread and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, before any thread pool starts
    z = dict(np.load(args.worker_data))
    if args.worker == "torch":
        run, info = _worker_torch(args, z)
    else:
        run, info = _worker_jax(args, z, "xla" if args.worker == "jax_xla" else "fast")
    print(json.dumps({"ready": True, **info}), flush=True)
    i = 0
    for line in sys.stdin:
        if line.strip() != "go":
            break
        i += 1
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        r = run(i)
        dt = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
        if args.worker == "torch":
            succ, linf = r
        else:
            succ, linf = np.asarray(r.success), float(np.max(r.linf))
        print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "success_rate": float(np.mean(succ)),
                          "linf_max": linf}), flush=True)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def train_lenet(x, y, steps: int, seed: int):
    """A short Adam run (batch 50, lr 1e-3) so that attack success rates are meaningful."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxbound import models

    model = models.create("lenet5")
    params = models.init_params(model, x.shape[1:], key=jax.random.key(seed))
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        lv, g = jax.value_and_grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, lv

    rng = np.random.default_rng(seed)
    lv = float("nan")
    for _ in range(steps):
        idx = rng.integers(0, x.shape[0], 50)
        params, state, lv = step(params, state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    p = params["params"]
    return {f"{a}_{b}": np.asarray(p[a][b]) for a in p for b in p[a]}, float(lv)


def spawn(name: str, args, data_path: str):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-data", data_path,
           "--eps", str(args.eps), "--step-size", str(args.step_size), "--steps", str(args.steps),
           "--seed", str(args.seed)] + (["--single-thread"] if args.single_thread else [])
    env = dict(os.environ)
    if name == "jax" and args.host_devices > 1 and not args.single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    if args.single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        env["OMP_NUM_THREADS"] = "1"
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    info = json.loads(p.stdout.readline())
    return p, info


def ask(p) -> dict:
    p.stdin.write("go\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--step-size", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of jax and torch")
    ap.add_argument("--xla-rounds", type=int, default=2, help="timed rounds of the impl='xla' baseline")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--host-devices", type=int, default=os.cpu_count() or 1,
                    help="CPU host devices of the 'jax' worker (default: one per core)")
    ap.add_argument("--single-thread", action="store_true",
                    help="one thread per framework (less sensitive to other jobs on a shared machine)")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-data", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)
    if args.quick:
        args.batch, args.steps, args.rounds, args.xla_rounds, args.train_steps = 32, 5, 2, 1, 20

    from jaxbound import data
    from jaxbound._io import atomic_write_json

    ddir = require_data_dir()
    train = data.load("mnist", split="train", data_dir=ddir)
    test = data.load("mnist", split="test", data_dir=ddir)
    t0 = time.perf_counter()
    weights, last_loss = train_lenet(train.images, train.labels, args.train_steps, args.seed)
    train_s = time.perf_counter() - t0
    x = np.ascontiguousarray(test.images[: args.batch])
    y = test.labels[: args.batch].astype(np.int32)
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.npz")
        np.savez(path, x=x, y=y, **weights)
        workers = {}
        infos = {}
        names = ["jax", "torch", "jax_xla"]
        if args.host_devices > 1 and not args.single_thread:
            names.insert(1, "jax_1dev")
        for name in names:
            if name == "jax_xla" and args.xla_rounds == 0:
                continue
            workers[name], infos[name] = spawn(name, args, path)
        times = {k: [] for k in workers}
        cpu = {k: [] for k in workers}
        succ = {k: [] for k in workers}
        linf = {k: [] for k in workers}
        try:
            for r in range(args.rounds):
                for name, p in workers.items():
                    if name == "jax_xla" and r >= args.xla_rounds:
                        continue
                    out = ask(p)
                    times[name].append(out["seconds"])
                    cpu[name].append(out["cpu_seconds"])
                    succ[name].append(out["success_rate"])
                    linf[name].append(out["linf_max"])
                    print(f"round {r} {name:8s} {args.batch / out['seconds']:8.2f} images/s "
                          f"success {out['success_rate']:.3f}", flush=True)
        finally:
            for p in workers.values():
                try:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
                p.wait(timeout=60)
    load_end = os.getloadavg()

    def ips(name):
        return args.batch / float(np.median(times[name]))

    def ipcs(name):
        return args.batch / float(np.median(cpu[name]))

    lj = np.asarray(infos["jax"].pop("logits"))
    lt = np.asarray(infos["torch"].pop("logits"))
    for k in ("jax_xla", "jax_1dev"):
        if k in infos:
            infos[k].pop("logits")
    # Per-round ratios pair each jax round with the torch round right after it.
    per_round = [t / j for j, t in zip(times["jax"], times["torch"])]
    res = {
        "benchmark": "40-step linf PGD on LeNet5 (Ding et al. 2019), MNIST test batch",
        "device": infos["jax"]["platform"],
        "device_kind": infos["jax"]["device"],
        "batch": args.batch,
        "steps": args.steps,
        "eps": args.eps,
        "step_size": args.step_size,
        "random_start": True,
        "images_per_s": ips("jax"),
        "torch_images_per_s": ips("torch"),
        "ratio": ips("jax") / ips("torch"),
        "ratio_per_round": per_round,
        "host_devices": infos["jax"].get("local_devices"),
        "images_per_s_one_device": ips("jax_1dev") if "jax_1dev" in times else ips("jax"),
        "ratio_one_device": (ips("jax_1dev") if "jax_1dev" in times else ips("jax")) / ips("torch"),
        "xla_images_per_s": ips("jax_xla") if "jax_xla" in times else None,
        "ratio_xla_vs_torch": ips("jax_xla") / ips("torch") if "jax_xla" in times else None,
        "speedup_fast_vs_xla": ips("jax") / ips("jax_xla") if "jax_xla" in times else None,
        "seconds": times,
        "cpu_seconds": cpu,
        "images_per_cpu_s": ipcs("jax"),
        "torch_images_per_cpu_s": ipcs("torch"),
        "ratio_cpu": ipcs("jax") / ipcs("torch"),
        "threads": 1 if args.single_thread else os.cpu_count(),
        "success_rate": {k: float(np.mean(v)) for k, v in succ.items()},
        "linf_max": {k: float(np.max(v)) for k, v in linf.items()},
        "logits_max_abs_diff_jax_torch": float(np.max(np.abs(lj - lt))),
        "clean_accuracy": float(np.mean(lj.argmax(1) == y)),
        "train_steps": args.train_steps,
        "train_last_loss": last_loss,
        "train_seconds": train_s,
        "loadavg_start": list(load_start),
        "loadavg_end": list(load_end),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "workers": infos,
        "quick": bool(args.quick),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    suffix = ("_quick" if args.quick else "") + ("_threads1" if args.single_thread else "")
    out = Path(args.out) if args.out else HERE / "results" / f"attacks_{res['device']}{suffix}.json"
    atomic_write_json(out, res)
    print(json.dumps({k: res[k] for k in ("images_per_s", "torch_images_per_s", "ratio", "ratio_cpu",
                                          "host_devices", "images_per_s_one_device", "ratio_one_device",
                                          "xla_images_per_s",
                                          "ratio_xla_vs_torch", "speedup_fast_vs_xla", "success_rate",
                                          "logits_max_abs_diff_jax_torch", "clean_accuracy", "loadavg_start",
                                          "loadavg_end")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
