"""Training throughput: jaxbound.training.train on LeNet5/MNIST against an equivalent PyTorch loop.

Measures optimiser steps per second for four recipes, Adam, batch 50, MNIST
training images:

* ``standard``: cross-entropy on clean batches (Ding et al.'s LeNet5, widen
  factor 1, App. B.1);
* ``pgd``: PGD adversarial training (l-inf eps = 0.3, ``--attack-steps`` steps of
  ``--attack-step-size``, uniform random start, [0, 1] box, last iterate), the
  recipe of Madry et al. / Ding et al. (who use 40 steps of 0.01), LeNet5;
* ``fgsm_rs``: fast adversarial training (Wong, Rice & Kolter 2020): uniform
  start, one FGSM step of 1.25 eps, LeNet5;
* ``ibp``: interval bound propagation training (Gowal et al. 2018) of their
  small CNN (``ibp_small``) at eps 0.3, kappa 0.5 (after the ramps), the
  margin specification folded into the last layer; the PyTorch loop
  propagates the same intervals by hand.

Steps run ``jaxbound.training.STEPS_PER_CALL`` at a time in one compiled
``lax.scan`` over batches gathered on the device (issue 17 item 6: the
per-step dispatch, host gathers and host-to-device copies are gone).

Side by side in the same run:

* ``jax_1dev``: :func:`jaxbound.training.train` (one whole call per round:
  shuffling, the jitted step, host-to-device copies, the per-epoch evaluation
  on 50 images) on JAX's default single CPU device;
* ``jax``: the same with one host device per core
  (``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``): ``train``
  splits every batch over the devices with ``NamedSharding``;
* ``torch``: the equivalent PyTorch CPU loop (same architecture and
  initial weights, ``torch.optim.Adam``, the same PGD), all threads.

Each framework runs in its own worker process, compiled/warmed up before
timing; rounds alternate between the workers and medians are reported, so a
shared, noisy machine affects them alike. CPU time (all threads) is recorded
as well (``steps_per_cpu_s``), and the load average.

Usage:
  nice -n 5 python benchmarks/training.py            # a few minutes on 2 shared cores
  python benchmarks/training.py --quick              # smoke test

Writes ``benchmarks/results/training_<device>.json``.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("standard", "pgd", "fgsm_rs", "ibp")
sys.path.insert(0, str(REPO))
from _common import find_data_dir  # noqa: E402


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


def _jax_worker(args, z):
    import jax

    from jaxbound import models, training

    lenet = models.create("lenet5")
    small = models.create("ibp_small")
    x, y = z["x"], z["y"]
    ev = (x[:50], y[:50])

    def run(recipe, n_steps, i):
        kw = {"pgd": dict(eps=args.eps, attack_steps=args.attack_steps, attack_step_size=args.attack_step_size),
              "fgsm_rs": dict(eps=args.eps), "ibp": dict(eps=args.eps)}.get(recipe, {})
        model = small if recipe == "ibp" else lenet
        n = n_steps * args.batch_size
        r = training.train(model, (x[:n], y[:n]), key=jax.random.key(i), recipe=recipe, epochs=1,
                           batch_size=args.batch_size, learning_rate=1e-4, norm="linf", eval_data=ev,
                           eval_eps=0.0, progress=False, **kw)
        assert r.steps == n_steps
        return r.history[-1]["loss"]

    info = {"jax": jax.__version__, "devices": len(jax.local_devices())}
    return run, info


def _copy_flax_cnn(torch, net, z, prefix, *, convs, fcs, flat):
    """Copy a Flax conv-conv-fc-fc network's weights (``z[prefix + "conv1_kernel"]``, ...) into ``net``."""
    with torch.no_grad():
        for idx, name in zip(convs, ("conv1", "conv2")):
            net[idx].weight.copy_(torch.tensor(z[f"{prefix}{name}_kernel"]).permute(3, 2, 0, 1))
            net[idx].bias.copy_(torch.tensor(z[f"{prefix}{name}_bias"]))
        # Flax flattens NHWC, PyTorch NCHW: permute fc1's input rows accordingly.
        k = z[f"{prefix}fc1_kernel"]
        w = k.reshape(*flat, k.shape[-1]).transpose(2, 0, 1, 3).reshape(-1, k.shape[-1])
        net[fcs[0]].weight.copy_(torch.tensor(w).T)
        net[fcs[0]].bias.copy_(torch.tensor(z[f"{prefix}fc1_bias"]))
        net[fcs[1]].weight.copy_(torch.tensor(z[f"{prefix}fc2_kernel"]).T)
        net[fcs[1]].bias.copy_(torch.tensor(z[f"{prefix}fc2_bias"]))


def _torch_worker(args, z):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10),
    )
    _copy_flax_cnn(torch, net, z, "", convs=(0, 3), fcs=(7, 9), flat=(7, 7, 64))
    small = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 4, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(10 * 10 * 32, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10),
    )
    _copy_flax_cnn(torch, small, z, "s_", convs=(0, 2), fcs=(5, 7), flat=(10, 10, 32))
    state0 = {k: v.clone() for k, v in net.state_dict().items()}
    small0 = {k: v.clone() for k, v in small.state_dict().items()}
    x_all = torch.tensor(z["x"]).permute(0, 3, 1, 2).contiguous()
    y_all = torch.tensor(z["y"]).long()

    def attack(x, y, gen):
        eps, step = args.eps, args.attack_step_size
        xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
        for _ in range(args.attack_steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(net(xa), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = torch.min(torch.max(xa + step * g.sign(), x - eps), x + eps).clamp(0, 1)
        return xa.detach()

    def fgsm_rs(x, y, gen):
        eps = args.eps
        xa = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xa), y, reduction="sum"), xa)
        with torch.no_grad():
            return torch.min(torch.max(xa + 1.25 * eps * g.sign(), x - eps), x + eps).clamp(0, 1)

    def ibp_loss(x, y, kappa=0.5):
        """Gowal et al. eq. 7: intervals through every layer but the last, the margin spec folded into it."""
        lo, hi = (x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1)
        layers = list(small)
        for layer in layers[:-1]:
            if isinstance(layer, torch.nn.Conv2d):
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                mid = layer(mid)
                rad = F.conv2d(rad, layer.weight.abs(), stride=layer.stride)
                lo, hi = mid - rad, mid + rad
            elif isinstance(layer, torch.nn.Linear):
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                mid, rad = layer(mid), rad @ layer.weight.abs().T
                lo, hi = mid - rad, mid + rad
            elif isinstance(layer, torch.nn.Flatten):  # NCHW -> NHWC order, as the Flax model flattens
                lo, hi = lo.permute(0, 2, 3, 1).flatten(1), hi.permute(0, 2, 3, 1).flatten(1)
            else:
                lo, hi = layer(lo), layer(hi)
        last = layers[-1]
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        a = last.weight[y][:, None, :] - last.weight[None, :, :]
        c = last.bias[y][:, None] - last.bias[None, :]
        m = (a @ mid[:, :, None])[..., 0] - (a.abs() @ rad[:, :, None])[..., 0] + c
        return kappa * F.cross_entropy(small(x), y) + (1 - kappa) * F.cross_entropy(-m, y)

    def run(recipe, n_steps, i):
        net.load_state_dict(state0)
        small.load_state_dict(small0)
        model = small if recipe == "ibp" else net
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(i)
        n = n_steps * args.batch_size
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(n_steps):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if recipe == "pgd":
                xb = attack(xb, yb, gen)
            elif recipe == "fgsm_rs":
                xb = fgsm_rs(xb, yb, gen)
            opt.zero_grad()
            if recipe == "ibp":
                loss = ibp_loss(xb, yb)
            else:
                loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item()
        return total / n_steps

    return run, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def worker_main(args):
    z = dict(np.load(args.data))
    run, info = (_torch_worker if args.worker == "torch" else _jax_worker)(args, z)
    plan = tuple((r, getattr(args, f"steps_{r}")) for r in RECIPES)
    for recipe, n in plan:  # warm-up: compiles the jitted chunks of the timed runs' sizes
        run(recipe, n, 10_000)
    print(json.dumps({"ready": True, **info}), flush=True)
    for i, line in enumerate(sys.stdin):
        if line.strip() != "go":
            break
        out = {}
        for recipe, n in plan:
            c0, t0 = time.process_time(), time.perf_counter()
            loss = run(recipe, n, i)
            out[recipe] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                           "steps": n, "loss": loss}
        print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-standard", type=int, default=60)
    ap.add_argument("--steps-pgd", type=int, default=6)
    ap.add_argument("--steps-fgsm_rs", dest="steps_fgsm_rs", type=int, default=60)
    ap.add_argument("--steps-ibp", dest="steps_ibp", type=int, default=60)
    ap.add_argument("--attack-steps", type=int, default=40)
    ap.add_argument("--attack-step-size", type=float, default=0.01)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", choices=["jax", "torch"], default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps_standard, args.steps_pgd, args.attack_steps, args.rounds = 5, 2, 3, 1
        args.steps_fgsm_rs = args.steps_ibp = 5
    if args.worker:
        return worker_main(args)

    root = find_data_dir()
    if root is None:
        print("MNIST IDX files not found (set JAXBOUND_DATA_DIR or place them in ../shared/data); skipping")
        return 0
    import jax

    from jaxbound import data, models
    from jaxbound._io import atomic_write_json

    tr = data.load("mnist", split="train", data_dir=root)
    n = max(getattr(args, f"steps_{r}") for r in RECIPES) * args.batch_size
    params = models.init_params(models.create("lenet5"), (28, 28, 1), key=jax.random.key(0))["params"]
    flat = {f"{layer}_{k}": np.asarray(v) for layer, d in params.items() for k, v in d.items()}
    params = models.init_params(models.create("ibp_small"), (28, 28, 1), key=jax.random.key(0))["params"]
    flat.update({f"s_{layer}_{k}": np.asarray(v) for layer, d in params.items() for k, v in d.items()})
    tmp = tempfile.mkdtemp(prefix="issue6_bench_")
    path = os.path.join(tmp, "data.npz")
    np.savez(path, x=tr.images[:n], y=tr.labels[:n].astype(np.int32), **flat)

    cores = os.cpu_count() or 1
    common = [sys.executable, __file__, "--data", path, "--steps-standard", str(args.steps_standard),
              "--steps-pgd", str(args.steps_pgd), "--steps-fgsm_rs", str(args.steps_fgsm_rs),
              "--steps-ibp", str(args.steps_ibp), "--attack-steps", str(args.attack_steps),
              "--attack-step-size", str(args.attack_step_size), "--eps", str(args.eps),
              "--batch-size", str(args.batch_size)]
    specs = {
        "jax": (["--worker", "jax"], {"XLA_FLAGS": f"--xla_force_host_platform_device_count={cores}"}),
        "jax_1dev": (["--worker", "jax"], {"XLA_FLAGS": ""}),
        "torch": (["--worker", "torch"], {}),
    }
    procs, infos = {}, {}
    for name, (extra, env_extra) in specs.items():
        env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
        p = subprocess.Popen(common + extra, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                             cwd=REPO)
        procs[name] = p
    for name, p in procs.items():
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {name} failed to start")
        infos[name] = json.loads(line)
        print(name, "ready", infos[name], flush=True)
    times: dict = {name: {r: [] for r in RECIPES} for name in procs}
    for r in range(args.rounds):
        for name, p in procs.items():
            p.stdin.write("go\n")
            p.stdin.flush()
            out = json.loads(p.stdout.readline())
            for recipe, v in out.items():
                times[name][recipe].append(v)
            print(f"round {r + 1} {name}", {k: round(v['steps'] / v['seconds'], 3) for k, v in out.items()},
                  flush=True)
    for p in procs.values():
        p.stdin.write("stop\n")
        p.stdin.flush()
        p.wait(timeout=60)

    def med(name, recipe, key):
        return float(np.median([v["steps"] / v[key] for v in times[name][recipe]]))

    device = jax.devices()[0].platform
    result = {
        "benchmark": "training steps per second on MNIST, Adam, batch "
                     f"{args.batch_size}: LeNet5 (Ding et al. 2019) standard, PGD (linf eps {args.eps}, "
                     f"{args.attack_steps} x {args.attack_step_size}) and FGSM-RS (1.25 eps) training, "
                     f"Gowal et al.'s small CNN IBP training (eps {args.eps}, kappa 0.5); "
                     "jaxbound.training.train vs a PyTorch loop",
        "device": device,
        "machine": {"platform": platform.platform(), "cpus": cores, "loadavg": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "data", "out")},
        "workers": infos,
        "raw": times,
    }
    for recipe in RECIPES:
        row = {name: med(name, recipe, "seconds") for name in procs}
        row_cpu = {name: med(name, recipe, "cpu_seconds") for name in procs}
        result[recipe] = {
            "steps_per_s": row,
            "steps_per_cpu_s": row_cpu,
            "ratio_jax_vs_torch": row["jax"] / row["torch"],
            "ratio_jax_1dev_vs_torch": row["jax_1dev"] / row["torch"],
            "ratio_cpu_jax_1dev_vs_torch": row_cpu["jax_1dev"] / row_cpu["torch"],
        }
        print(recipe, json.dumps(result[recipe]), flush=True)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"training_{device}.json"
    if args.quick and not args.out:
        out = Path(tmp) / "training_quick.json"
    atomic_write_json(out, result)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
