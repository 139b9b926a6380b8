"""AutoAttack benchmark: jaxbound.attacks.autoattack against torchattacks on the same LeNet5 weights.

AutoAttack "standard" (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square,
each attack on the points still robust, per-point worst case) on the first
``--n`` (1,000) MNIST test images, for a standard and a PGD-trained LeNet5
(Ding et al. 2019, App. B.1), l-inf eps = 0.3 and l2 eps = 2.0, side by side
in the same run with the PyPI package ``torchattacks`` on a PyTorch copy of
the same weights (the logits of both frameworks are compared):

* ``torch`` (the baseline, ``torch_robust_accuracy`` / ``torch_images_per_s``):
  the ensemble with the original's settings assembled from torchattacks'
  ``APGD`` (cross-entropy, 100 iterations), ``APGDT`` (100 iterations, 9
  target classes), ``FAB`` (targeted, 9 target classes, 100 iterations) and
  ``Square`` (5,000 queries, ``p_init = 0.8``, the original's un-rescaled
  p-schedule), each attack on the points still robust;
* ``torch_wrapper``: torchattacks' own ``AutoAttack(version="standard")``,
  which runs 10 iterations per gradient attack (and Square's p-schedule
  rescaled to its query budget), recorded beside it with jaxbound's
  ``autoattack`` at the same 10 iterations (``wrapper_*`` keys).

Both frameworks use every core: the jax worker runs one XLA host device per
core (``--xla_force_host_platform_device_count``, as in ``attacks.py``),
torch ``torch.set_num_threads(cores)``. Every framework runs in its own
worker process; the attacks alternate (jax, then torch, per configuration)
so that a shared, noisy machine affects both alike, and the load average is
recorded before and after. A worker's timed figure is the wall time of one
call over the ``--n`` points (clean prediction and, for jax, the compilations
it triggers included; ``images_per_s = n / seconds``); the jax worker
also sums JAX's compile events (tracing, lowering, backend compilation) into
``compile_seconds``, and ``images_per_s_excluding_compile`` leaves them out.
``--warmup-n`` runs an untimed jax call on a few points first.

The two models are trained here with :func:`jaxbound.training.train`
(``standard``: cross-entropy, 100 Adam steps of batch 128; ``pgd``: Madry
et al.'s PGD adversarial training at l-inf eps = 0.3, PGD-10 with step
2.5 eps / 10 from a random start, ``--pgd-epochs`` (2) passes over all
60,000 training images with batch 128, the eps ramped up over the first
``--eps-warmup`` (300) steps; ``--pgd-steps 1`` gives Wong et al.'s fast
adversarial training instead), stated in the JSON with the clean and PGD-20
accuracy on held-out test points 5000-5499, and cached under ``--cache``
(default ``/tmp/jaxbound_autoattack_bench``) so that reruns skip the
training (about 20-30 minutes for the PGD model on a quiet 2-core CPU).
Weights are never written into the repository.

Inside ``autoattack`` Square runs with the original's un-rescaled
p-schedule (``resc_schedule=False``), as the torch baseline here does.

Duration of the full run (``python benchmarks/autoattack.py``) on a quiet
2-core CPU: several hours. The PGD-trained model keeps most points robust
through the whole ensemble, so both frameworks run APGD-T and FAB-T (9
targets x 100 iterations) and Square (5,000 queries) on nearly all 1,000
points: each such configuration takes on the order of one to two hours per
framework. Run it configuration by configuration with ``--models``,
``--norms``, ``--variants`` and ``--update`` (results merge into the JSON).

Usage:
  python benchmarks/autoattack.py            # full profile (hours on 2 shared cores)
  python benchmarks/autoattack.py --quick    # smoke profile: 100 points, 20 iterations, 500 queries,
                                             # PGD model trained on 150 batches
  python benchmarks/autoattack.py --models pgd --n 200 --update   # one model, merged into the JSON
  python benchmarks/autoattack.py --pgd-check --update   # APGD-CE vs PGD, same budget, jax only ("pgd_check")

Writes ``benchmarks/results/autoattack_<device>[_quick].json``.

References:
  Croce, Hein. "Reliable evaluation of adversarial robustness with an
  ensemble of diverse parameter-free attacks." ICML 2020, arXiv:2003.01690.
  Kim. "Torchattacks: A PyTorch repository for adversarial attacks."
  arXiv:2010.01950.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
  Wong, Rice, Kolter. "Fast is better than free: revisiting adversarial
  training." ICLR 2020, arXiv:2001.03994.
"""

from __future__ import annotations

import argparse
import hashlib
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

NORMS = {"linf": 0.3, "l2": 2.0}
MODELS = ("standard", "pgd")
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
LAYERS = ("conv1", "conv2", "fc1", "fc2")


# ---------------------------------------------------------------------------
# Models: trained with jaxbound's recipes, cached outside the repository
# ---------------------------------------------------------------------------


def _train_settings(args, recipe: str) -> dict:
    pgd = recipe == "pgd"
    return {"recipe": recipe, "epochs": args.pgd_epochs if pgd else 1,
            "train_n": (args.pgd_train_n if pgd else args.train_n), "batch_size": 128,
            "optimizer": "adam", "learning_rate": 1e-3, "seed": args.seed,
            "attack": {"norm": "linf", "eps": 0.3, "steps": args.pgd_steps,
                       "step_size": 1.25 * 0.3 if args.pgd_steps == 1 else 2.5 * 0.3 / args.pgd_steps,
                       "random_start": True} if pgd else None,
            "eps_warmup": args.eps_warmup if pgd else 0}


def train_model(args, recipe: str, train, test) -> tuple[dict, dict]:
    """``(weights, record)`` of a LeNet5 trained by ``recipe``; cached under ``args.cache``."""
    settings = _train_settings(args, recipe)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(args.cache)
    wpath, rpath = cache / f"lenet5_{recipe}_{tag}.npz", cache / f"lenet5_{recipe}_{tag}.json"
    if wpath.exists() and rpath.exists():
        return dict(np.load(wpath)), dict(json.loads(rpath.read_text()), cached=True)
    import jax

    from jaxbound import attacks, training

    a = settings["attack"]
    attack = None if a is None else training.training_attack(**a)
    evaluation = attacks.AttackConfig(norm="linf", eps=0.3, steps=20)
    cfg = training.train_config(recipe=recipe, epochs=settings["epochs"], batch_size=128, learning_rate=1e-3,
                                attack=attack, eps_warmup=settings["eps_warmup"], eval_attack=evaluation)
    n = min(settings["train_n"], train.images.shape[0])
    t0 = time.perf_counter()
    r = training.train("lenet5", (train.images[:n], train.labels[:n]), cfg, key=jax.random.key(args.seed),
                       eval_data=(test.images[5000:5500], test.labels[5000:5500]), progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    p = r.params["params"]
    weights = {f"{a}_{b}": np.asarray(p[a][b]) for a in LAYERS for b in ("kernel", "bias")}
    last = r.history[-1]
    record = {"recipe": recipe, "settings": settings, "optimizer_steps": r.steps, "train_seconds": seconds,
              "heldout": "MNIST test 5000-5499", "heldout_clean_accuracy": last["clean_accuracy"],
              "heldout_pgd20_linf_0.3_accuracy": last["robust_accuracy"], "history": r.to_dict()["history"]}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(wpath, **weights)
    rpath.write_text(json.dumps(record))
    return weights, dict(record, cached=False)


# ---------------------------------------------------------------------------
# Profiles: the attack settings of each variant
# ---------------------------------------------------------------------------


def profile(args, variant: str) -> dict:
    """Settings of ``variant`` (``"ensemble"``: the original's, ``"wrapper"``: torchattacks' AutoAttack)."""
    steps = 10 if variant == "wrapper" else args.steps
    return {"attacks": list(args.attacks), "steps": steps, "n_targets": 9, "n_queries": args.n_queries,
            "p_init": 0.8, "restarts": 1, "square_schedule_rescaled_in_torch": variant == "wrapper"}


# ---------------------------------------------------------------------------
# Workers (each in its own process)
# ---------------------------------------------------------------------------


def _norm_of(d: np.ndarray, norm: str) -> np.ndarray:
    d = d.reshape(d.shape[0], -1).astype(np.float64)
    return np.abs(d).max(1, initial=0.0) if norm == "linf" else np.sqrt((d * d).sum(1))


def _worker_jax(args, z):
    import jax
    import jax.numpy as jnp

    from jaxbound import attacks, models

    model = models.create("lenet5")
    fns = {m: models.logits_fn(model, {"params": {k: {"kernel": jnp.asarray(z[f"{m}_{k}_kernel"]),
                                                      "bias": jnp.asarray(z[f"{m}_{k}_bias"])} for k in LAYERS}})
           for m in MODELS if f"{m}_fc2_bias" in z}
    compile_s = [0.0]
    events = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def listen(event, duration, **_):
        if event in events:
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)

    def run(job):
        m, norm, n = job["model"], job["norm"], job["n"]
        s = profile(args, job["variant"])
        compile_s[0] = 0.0
        x, y = z["x"][:n], z["y"][:n]
        r = attacks.autoattack(fns[m], x, y, key=jax.random.key(args.seed), eps=NORMS[norm], norm=norm,
                               version="custom", attacks=s["attacks"], steps=s["steps"], n_targets=s["n_targets"],
                               n_queries=s["n_queries"], p_init=s["p_init"], restarts=s["restarts"])
        ra = np.asarray(r.robust_accuracy, np.float64)
        nrm = np.asarray(r.norm(norm), np.float64)
        broken = ~np.asarray(r.robust) & (np.asarray(r.broken_by) > 0)
        return {"robust": np.asarray(r.robust).tolist(), "clean_accuracy": float(ra[0]),
                "robust_accuracy": float(ra[-1]), "robust_accuracy_after": dict(zip(r.attacks, ra[1:].tolist())),
                "max_norm_broken": float(nrm[broken].max(initial=0.0)), "compile_seconds": compile_s[0],
                "warnings": list(r.checks.get("warnings", [])) if r.checks else []}

    logits = {m: np.asarray(jax.jit(fns[m])(jnp.asarray(z["x"]))).tolist() for m in fns}
    info = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "jax": jax.__version__,
            "local_devices": jax.local_device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "logits": logits}
    return run, info


def _torch_ensemble(torchattacks, net, norm: str, eps: float, s: dict, seed: int) -> list:
    """``[(name, attack)]`` with the original AutoAttack's settings, from torchattacks' attacks."""
    tnorm = {"linf": "Linf", "l2": "L2"}[norm]
    make = {
        "apgd-ce": lambda: torchattacks.APGD(net, norm=tnorm, eps=eps, steps=s["steps"], n_restarts=s["restarts"],
                                             seed=seed, loss="ce", eot_iter=1, rho=0.75),
        "apgd-t": lambda: torchattacks.APGDT(net, norm=tnorm, eps=eps, steps=s["steps"], n_restarts=s["restarts"],
                                             seed=seed, eot_iter=1, rho=0.75, n_classes=s["n_targets"] + 1),
        "fab-t": lambda: torchattacks.FAB(net, norm=tnorm, eps=eps, steps=s["steps"], n_restarts=s["restarts"],
                                          seed=seed, multi_targeted=True, n_classes=s["n_targets"] + 1),
        "square": lambda: torchattacks.Square(net, norm=tnorm, eps=eps, n_queries=s["n_queries"],
                                              n_restarts=1, p_init=s["p_init"], loss="margin",
                                              resc_schedule=False, seed=seed),
    }
    return [(a, make[a]()) for a in s["attacks"]]


def _worker_torch(args, z):
    import torch
    import torchattacks

    torch.set_num_threads(os.cpu_count() or 1)
    nets = {m: torch_lenet5({k[len(m) + 1:]: v for k, v in z.items() if k.startswith(m + "_")})
            for m in MODELS if f"{m}_fc2_bias" in z}
    xall = torch.tensor(z["x"]).permute(0, 3, 1, 2).contiguous()
    yall = torch.tensor(z["y"]).long()

    def predict(net, x):
        with torch.no_grad():
            return torch.cat([net(x[i:i + 500]) for i in range(0, x.shape[0], 500)]).argmax(1)

    def run(job):
        m, norm, n = job["model"], job["norm"], job["n"]
        net, eps, s = nets[m], NORMS[norm], profile(args, job["variant"])
        x, y = xall[:n], yall[:n]
        robust = (predict(net, x) == y).numpy()
        clean = float(robust.mean())
        after, outside, max_norm = {}, 0, 0.0
        if job["variant"] == "wrapper":
            aa = torchattacks.AutoAttack(net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                                         n_classes=10, seed=args.seed)
            for a in aa._autoattack.attacks:
                if isinstance(a, torchattacks.Square):
                    a.n_queries = s["n_queries"]
            plan = [("torchattacks.AutoAttack", aa)]
        else:
            plan = _torch_ensemble(torchattacks, net, norm, eps, s, args.seed)
        for name, atk in plan:
            idx = np.flatnonzero(robust)
            if idx.size:
                adv = atk(x[idx], y[idx]).detach()
                nrm = _norm_of((adv - x[idx]).numpy(), norm)
                ok = (nrm <= eps * (1 + 1e-5) + 1e-7) & (adv.reshape(idx.size, -1).min(1).values >= 0).numpy() & (
                    adv.reshape(idx.size, -1).max(1).values <= 1).numpy()
                hit = (predict(net, adv) != y[idx]).numpy()
                outside += int((hit & ~ok).sum())
                robust[idx[hit & ok]] = False
                max_norm = max(max_norm, float(nrm[hit & ok].max(initial=0.0)))
            after[name] = float(robust.mean())
        return {"robust": robust.tolist(), "clean_accuracy": clean, "robust_accuracy": float(robust.mean()),
                "robust_accuracy_after": after, "max_norm_broken": max_norm, "adversarials_outside_ball": outside}

    logits = {}
    with torch.no_grad():
        for m in nets:
            logits[m] = torch.cat([nets[m](xall[i:i + 500]) for i in range(0, xall.shape[0], 500)]).numpy().tolist()
    return run, {"torch": torch.__version__, "torchattacks": torchattacks.__version__,
                 "threads": torch.get_num_threads(), "logits": logits}


def worker_main(args):
    z = dict(np.load(args.worker_data))
    run, info = (_worker_torch if args.worker == "torch" else _worker_jax)(args, z)
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job.get("quit"):
            break
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        out = run(job)
        dt = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        out.update(seconds=dt, cpu_seconds=(u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime))
        print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def spawn(name: str, args, data_path: str):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-data", data_path,
           "--seed", str(args.seed), "--steps", str(args.steps), "--n-queries", str(args.n_queries),
           "--attacks", ",".join(args.attacks)]
    env = dict(os.environ)
    if name == "jax" and args.host_devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"the {name} worker exited before it was ready (exit code {p.wait()})")
    return p, json.loads(line)


def ask(p, job: dict) -> dict:
    p.stdin.write(json.dumps(job) + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"a worker exited during {job} (exit code {p.wait()})")
    return json.loads(line)


def compare(jr: dict, tr: dict, n: int) -> dict:
    """Same-run figures of one configuration: jax / torch speed, robust accuracy difference, per-point agreement."""
    rj, rt = np.asarray(jr["robust"]), np.asarray(tr["robust"])
    out = {"robust_accuracy": jr["robust_accuracy"], "torch_robust_accuracy": tr["robust_accuracy"],
           "robust_accuracy_diff_points": 100.0 * (jr["robust_accuracy"] - tr["robust_accuracy"]),
           "images_per_s": n / jr["seconds"], "torch_images_per_s": n / tr["seconds"],
           "ratio": tr["seconds"] / jr["seconds"],
           "images_per_s_excluding_compile": n / max(jr["seconds"] - jr["compile_seconds"], 1e-9),
           "ratio_excluding_compile": tr["seconds"] / max(jr["seconds"] - jr["compile_seconds"], 1e-9),
           "ratio_cpu": tr["cpu_seconds"] / jr["cpu_seconds"],
           "seconds": jr["seconds"], "torch_seconds": tr["seconds"], "compile_seconds": jr["compile_seconds"],
           "cpu_seconds": jr["cpu_seconds"], "torch_cpu_seconds": tr["cpu_seconds"],
           "clean_accuracy": jr["clean_accuracy"], "torch_clean_accuracy": tr["clean_accuracy"],
           "robust_accuracy_after": jr["robust_accuracy_after"],
           "torch_robust_accuracy_after": tr["robust_accuracy_after"],
           "robust_only_jax": int(np.sum(rj & ~rt)), "robust_only_torch": int(np.sum(rt & ~rj)),
           "max_norm_broken": jr["max_norm_broken"], "torch_max_norm_broken": tr["max_norm_broken"],
           "torch_adversarials_outside_ball": tr.get("adversarials_outside_ball", 0),
           "jax_warnings": jr.get("warnings", [])}
    return out


def run_jobs(args, workers: dict, n: int, save=None) -> dict:
    """Every configuration, jax then torch, alternating; returns the per-configuration comparisons.

    ``save(results)`` is called after each configuration (the JSON is kept up to date during a long run).
    """
    results = {}
    for m in args.models:
        for norm in args.norms:
            for variant in args.variants:
                job = {"model": m, "norm": norm, "variant": variant}
                t0 = time.perf_counter()
                warm = ask(workers["jax"], dict(job, n=min(args.warmup_n, n))) if args.warmup_n else None
                jr = ask(workers["jax"], dict(job, n=n))
                tr = ask(workers["torch"], dict(job, n=n))
                c = compare(jr, tr, n)
                c["jax_warmup_seconds"] = None if warm is None else warm["seconds"]
                c["wall_seconds"] = time.perf_counter() - t0
                c["loadavg_after"] = list(os.getloadavg())
                c["n"] = n
                results[f"{m}/{norm}/{variant}"] = c
                if save is not None:
                    save(results)
                print(f"{m:8s} {norm:4s} {variant:8s} robust jax {c['robust_accuracy']:.3f} torch "
                      f"{c['torch_robust_accuracy']:.3f} (diff {c['robust_accuracy_diff_points']:+.1f} points) | "
                      f"images/s jax {c['images_per_s']:.2f} torch {c['torch_images_per_s']:.2f} ratio "
                      f"{c['ratio']:.2f}x (excluding compile {c['ratio_excluding_compile']:.2f}x) | after "
                      f"{c['robust_accuracy_after']} vs {c['torch_robust_accuracy_after']}", flush=True)
    return results


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit() -> str | None:
    """The repository's commit, when the benchmark runs from a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="MNIST test points attacked (the first n)")
    ap.add_argument("--steps", type=int, default=100, help="APGD and FAB iterations of the ensemble")
    ap.add_argument("--n-queries", type=int, default=5000, help="Square's queries")
    ap.add_argument("--attacks", type=lambda s: tuple(s.split(",")), default=ATTACKS,
                    help="comma-separated ensemble (default: apgd-ce,apgd-t,fab-t,square)")
    ap.add_argument("--models", type=lambda s: tuple(s.split(",")), default=MODELS)
    ap.add_argument("--norms", type=lambda s: tuple(s.split(",")), default=tuple(NORMS))
    ap.add_argument("--variants", type=lambda s: tuple(s.split(",")), default=("ensemble", "wrapper"),
                    help="ensemble (the original's settings) and/or wrapper (10 iterations)")
    ap.add_argument("--warmup-n", type=int, default=0, help="points of an untimed jax call before each timed one")
    ap.add_argument("--train-n", type=int, default=128 * 100, help="training images of the standard model")
    ap.add_argument("--pgd-train-n", type=int, default=60000, help="training images of the PGD model")
    ap.add_argument("--pgd-epochs", type=int, default=2, help="passes over them (PGD model)")
    ap.add_argument("--pgd-steps", type=int, default=10,
                    help="PGD steps of adversarial training (step 2.5 eps / steps; 1: one step of 1.25 eps from a "
                         "random start, Wong et al.'s fast adversarial training)")
    ap.add_argument("--eps-warmup", type=int, default=300, help="optimiser steps of the eps ramp (PGD model)")
    ap.add_argument("--cache", type=str, default=str(Path(tempfile.gettempdir()) / "jaxbound_autoattack_bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke profile: 100 points, 20 iterations, 500 queries")
    ap.add_argument("--host-devices", type=int, default=os.cpu_count() or 1,
                    help="CPU host devices of the jax worker (default: one per core)")
    ap.add_argument("--pgd-check", action="store_true",
                    help="jax only: APGD-CE against PGD with the same budget on the trained models (the 'pgd_check' "
                         "entry of the JSON; no torch run)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--update", action="store_true",
                    help="merge into an existing output file (configurations run here replace the same ones)")
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-data", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:  # also a short PGD training (150 steps of batch 128), so that a smoke run stays short
        args.n, args.steps, args.n_queries = min(args.n, 100), min(args.steps, 20), min(args.n_queries, 500)
        args.pgd_train_n, args.pgd_epochs = min(args.pgd_train_n, 128 * 150), 1
    for name, vals, known in (("attacks", args.attacks, ATTACKS), ("models", args.models, MODELS),
                              ("norms", args.norms, tuple(NORMS)), ("variants", args.variants,
                                                                     ("ensemble", "wrapper"))):
        bad = [v for v in vals if v not in known]
        if bad or not vals:
            ap.error(f"--{name}: unknown {bad} (known: {', '.join(known)})")
    return args


def main():
    args = parse_args()
    if args.worker:
        return worker_main(args)
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.host_devices}")
    from jaxbound import data

    ddir = require_data_dir()
    train = data.load("mnist", split="train", data_dir=ddir)
    test = data.load("mnist", split="test", data_dir=ddir)
    weights, records = {}, {}
    for m in args.models:
        w, records[m] = train_model(args, m, train, test)
        weights.update({f"{m}_{k}": v for k, v in w.items()})
    n = min(args.n, test.images.shape[0])
    x = np.ascontiguousarray(test.images[:n])
    y = test.labels[:n].astype(np.int32)
    if args.pgd_check:
        return pgd_check(args, weights, x, y)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.npz")
        np.savez(path, x=x, y=y, **weights)
        workers, infos = {}, {}
        try:
            for name in ("jax", "torch"):
                workers[name], infos[name] = spawn(name, args, path)
            results = run_jobs(args, workers, n, save=lambda r: write_results(
                args, infos, r, records, n, load_start, t_start))
        finally:
            for p in workers.values():
                try:
                    p.stdin.write(json.dumps({"quit": True}) + "\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
                p.wait(timeout=120)
    write_results(args, infos, results, records, n, load_start, t_start, final=True)


def pgd_check(args, weights: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """APGD-CE against ``attacks.pgd`` with the same budget (steps, one restart) on each trained model and norm.

    Croce & Hein (2020, §3) show APGD at least as strong as PGD with the
    same number of iterations; here both run ``--steps`` gradient steps from
    one random start on the same points. PGD runs with Madry et al.'s step
    ``2.5 eps / steps`` and with a fixed step ``eps / 10``. Robust accuracy
    counts misclassified clean points as broken. The result is merged into
    the JSON under ``pgd_check``.
    """
    import jax
    import jax.numpy as jnp

    from jaxbound import attacks, models
    from jaxbound._io import atomic_write_json

    net = models.create("lenet5")
    out = {"n": int(x.shape[0]), "steps": args.steps, "restarts": 1, "device": jax.default_backend(),
           "command": " ".join([Path(sys.executable).name] + sys.argv), "loadavg_start": list(os.getloadavg()),
           "jaxbound_commit": git_commit(), "results": {}}
    for m in args.models:
        f = models.logits_fn(net, {"params": {k: {"kernel": jnp.asarray(weights[f"{m}_{k}_kernel"]),
                                                  "bias": jnp.asarray(weights[f"{m}_{k}_bias"])} for k in LAYERS}})
        clean = np.asarray(attacks.predict(f, x)) == y
        for norm in args.norms:
            eps, key = NORMS[norm], jax.random.key(args.seed)
            row, broken = {"clean_accuracy": float(clean.mean())}, {}
            runs = {"apgd_ce": lambda: attacks.apgd(f, x, y, key=key, norm=norm, eps=eps, steps=args.steps,
                                                    loss="ce", restarts=1),
                    "pgd_madry_step": lambda: attacks.pgd(f, x, y, key=key, norm=norm, eps=eps, steps=args.steps,
                                                          restarts=1),
                    "pgd_step_eps_over_10": lambda: attacks.pgd(f, x, y, key=key, norm=norm, eps=eps,
                                                                steps=args.steps, restarts=1, step_size=eps / 10)}
            for name, run in runs.items():
                t0 = time.perf_counter()
                r = run()
                broken[name] = ~clean | np.asarray(r.success)
                row[f"{name}_robust_accuracy"] = float(1.0 - broken[name].mean())
                row[f"{name}_seconds"] = time.perf_counter() - t0
            for name in ("pgd_madry_step", "pgd_step_eps_over_10"):
                row[f"broken_by_{name}_not_apgd"] = int(np.sum(broken[name] & ~broken["apgd_ce"]))
            row["apgd_not_worse"] = all(row["apgd_ce_robust_accuracy"] <= row[f"{p}_robust_accuracy"]
                                        for p in ("pgd_madry_step", "pgd_step_eps_over_10"))
            out["results"][f"{m}/{norm}"] = row
            print(f"{m:8s} {norm:4s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                  if k.endswith("robust_accuracy")), flush=True)
    out["loadavg_end"] = list(os.getloadavg())
    path = Path(args.out) if args.out else HERE / "results" / f"autoattack_{out['device']}.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    old = res.get("pgd_check", {}).get("results", {}) if args.update else {}
    out["results"] = {**old, **out["results"]}
    res["pgd_check"] = out
    atomic_write_json(path, res)
    print(f"wrote {path}")
    return out


def write_results(args, infos, results, records, n, load_start, t_start, *, final=False):
    """Assemble the JSON (merged into an existing file with ``--update``), write it and print the ratios."""
    from jaxbound._io import atomic_write_json

    load_end = os.getloadavg()
    lj, lt = infos["jax"]["logits"], infos["torch"]["logits"]
    logit_diff = {m: float(np.max(np.abs(np.asarray(lj[m]) - np.asarray(lt[m])))) for m in args.models}
    seconds = time.perf_counter() - t_start
    command = " ".join([Path(sys.executable).name] + sys.argv)
    res = {
        "benchmark": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) on LeNet5 (Ding et al. 2019), first n "
                     "MNIST test points: jaxbound.attacks.autoattack vs the torchattacks ensemble with the "
                     "original's settings, same weights, same run",
        "device": infos["jax"]["platform"],
        "device_kind": infos["jax"]["device"],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "n": n,
        "eps": {k: NORMS[k] for k in args.norms},
        "ensemble": profile(args, "ensemble"),
        "wrapper": dict(profile(args, "wrapper"),
                        torch="torchattacks.AutoAttack(version='standard'): 10 iterations per gradient attack, "
                              "Square with its p-schedule rescaled to the query budget",
                        jax="jaxbound.attacks.autoattack with steps=10 (Square's schedule rescaled too)"),
        "results": dict(results),
        "models": records,
        "logits_max_abs_diff_jax_torch": logit_diff,
        "threads": {"jax": f"{infos['jax']['local_devices']} XLA host devices (one per core), default intra-op "
                           "threads", "torch": infos["torch"]["threads"]},
        "loadavg_start": list(load_start),
        "loadavg_end": list(load_end),
        "total_seconds": seconds,
        "runs": [{"command": command, "configurations": list(results), "loadavg_start": list(load_start),
                  "loadavg_end": list(load_end), "seconds": seconds, "finished": final}],
        "jaxbound_commit": git_commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "workers": {k: {a: b for a, b in v.items() if a != "logits"} for k, v in infos.items()},
        "quick": bool(args.quick),
        "command": command,
    }
    suffix = "_quick" if args.quick else ""
    out = Path(args.out) if args.out else HERE / "results" / f"autoattack_{res['device']}{suffix}.json"
    if args.update and out.exists():  # keep the configurations of earlier runs that this one did not repeat
        old = json.loads(out.read_text())
        res["results"] = {**old.get("results", {}), **res["results"]}
        res["models"] = {**old.get("models", {}), **records}
        res["logits_max_abs_diff_jax_torch"] = {**old.get("logits_max_abs_diff_jax_torch", {}), **logit_diff}
        res["eps"] = {**old.get("eps", {}), **res["eps"]}
        if "pgd_check" in old:
            res["pgd_check"] = old["pgd_check"]
        runs = [r for r in old.get("runs", []) if r.get("command") != command or r.get("finished")]
        res["runs"] = runs + res["runs"]
    merged = res["results"]
    for k in ("robust_accuracy", "torch_robust_accuracy", "images_per_s", "torch_images_per_s"):
        res[k] = {c: merged[c][k] for c in merged if c.endswith("/ensemble")}
        res[f"wrapper_{k}"] = {c: merged[c][k] for c in merged if c.endswith("/wrapper")}
    res["ratio"] = {c: merged[c]["ratio"] for c in merged}
    res["robust_accuracy_diff_points"] = {c: merged[c]["robust_accuracy_diff_points"] for c in merged}
    atomic_write_json(out, res)
    if final:
        print(json.dumps({k: res[k] for k in ("ratio", "robust_accuracy_diff_points",
                                              "logits_max_abs_diff_jax_torch", "loadavg_start", "loadavg_end")},
                         indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
