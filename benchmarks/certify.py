"""Certified vs attacked robust accuracy on MNIST (l-inf eps 0.1, 0.2, 0.3) for differently trained models.

For each training recipe of :func:`jaxbound.training.train` ("standard", "pgd", "fgsm_rs", "ibp",
"crown_ibp"; a recipe that this version of jaxbound does not have is skipped and recorded as such), the
script trains one model (default the Wong & Kolter small CNN, ``--arch``) and measures on the first
``--n-eval`` MNIST test images, per eps:

- the certified robust accuracy by IBP and by CROWN (:func:`jaxbound.certify.certified_accuracy`) and
  the seconds per 1,000 points of each (compiled once on a first block, then timed);
- the attacked robust accuracy (PGD-40 with step 0.01 by default, or AutoAttack standard, ``--attack``),
  an upper bound on the true robust accuracy, so ``certified <= true <= attacked``;
- on the first ``--n-ref`` points, the same IBP and CROWN margin bounds from the independent NumPy
  implementation of ``tests/_certify_ref.py`` on the same weights (explicit float64 matrices; the
  baseline of the comparison: its largest absolute difference and its seconds per 1,000 points).

auto_LiRPA, the PyTorch verifier, is not the comparison here: its only release on the package index
(0.3) needs torch < 1.13, which has no build for this Python (3.11); the JSON says so.

Usage:
  python benchmarks/certify.py --quick        # minutes: 2,000 training images, 1 epoch, 50 points, PGD-10
  nice -n 5 python benchmarks/certify.py      # the full run (see the final report for its duration)

References:
  Gowal et al. "On the effectiveness of interval bound propagation for training verifiably robust
  models." arXiv:1810.12715, 2018. Zhang et al. "Towards stable and efficient training of verifiably
  robust neural networks." ICLR 2020, arXiv:1906.06316. Wong, Rice, Kolter. "Fast is better than
  free: revisiting adversarial training." ICLR 2020, arXiv:2001.03994. Ding et al. ICLR 2019,
  arXiv:1902.08336 (Table 2: 95.1 % PGD robust accuracy at eps 0.3 on MNIST).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from _common import load_mnist_or_none  # noqa: E402

from jaxbound import attacks, certify, data, metrics, models, training  # noqa: E402

RECIPES = ("standard", "pgd", "fgsm_rs", "ibp", "crown_ibp")
AUTO_LIRPA = ("not run: auto_LiRPA's only release on PyPI (auto-lirpa 0.3) needs torch < 1.13, which has no "
              "Python 3.11 build; the independent NumPy implementation (tests/_certify_ref.py) is the reference")


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small check run (minutes)")
    ap.add_argument("--arch", default="wong_kolter", help="registered architecture (jaxbound.models)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--eps", default="0.1,0.2,0.3")
    ap.add_argument("--train-eps", type=float, default=0.3, help="training budget of the robust recipes")
    ap.add_argument("--n-train", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--n-ref", type=int, default=20, help="points compared with the NumPy reference")
    ap.add_argument("--attack", choices=["autoattack", "pgd"], default="pgd",
                    help="pgd: PGD-40 step 0.01 (Ding et al.); autoattack: the standard ensemble (hours on a CPU)")
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--work", default="/tmp/jaxbound_certify_work")
    ap.add_argument("--out", default=None, help="default benchmarks/results/certify_<device>.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.epochs, args.n_eval, args.n_ref = 2000, 1, 50, 2
        args.attack, args.pgd_steps = "pgd", 10
        args.work = args.work + "_quick"
    return args


def _train(recipe, args, tr, te):
    kw = dict(recipe=recipe, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
              eval_data=te.subset(np.arange(200)), norm="linf", progress=False)
    if recipe != "standard":
        kw["eps"] = args.train_eps
    if recipe in ("ibp", "crown_ibp"):  # Gowal et al.: clean warm-up, then eps (and kappa) ramped over half the run
        total = args.epochs * (min(args.n_train, len(tr)) // args.batch_size)
        kw.update(warmup_steps=total // 20, ramp_steps=total // 2)
    sub = data.random_subset(tr, key=jax.random.key(1), n=args.n_train) if args.n_train < len(tr) else tr
    model = models.create(args.arch)
    t0 = time.perf_counter()
    r = training.train(model, sub, key=jax.random.key(0), checkpoint_dir=Path(args.work) / recipe, **kw)
    return r, time.perf_counter() - t0


def _timed_certify(f, x, y, eps, method):
    block = 32
    certify.certified_accuracy(f, x[:block], y[:block], eps=eps, method=method, block_size=block)  # compile
    t0 = time.perf_counter()
    c = certify.certified_accuracy(f, x, y, eps=eps, method=method, block_size=block)
    dt = time.perf_counter() - t0
    return c.accuracy, 1000.0 * dt / len(y)


def _attacked(f, x, y, eps, args):
    t0 = time.perf_counter()
    if args.attack == "autoattack":
        res = attacks.autoattack(f, x, y, key=jax.random.key(2), norm="linf", eps=eps)
        acc = float(res.robust_accuracy)
        name = "autoattack standard"
    else:
        res = attacks.pgd(f, x, y, key=jax.random.key(2), norm="linf", eps=eps, steps=args.pgd_steps,
                          step_size=0.01 if args.pgd_steps >= 40 else 2.5 * eps / args.pgd_steps)
        acc = metrics.robust_accuracy(f, x, y, res).robust_accuracy
        name = f"pgd-{args.pgd_steps}"
    return float(acc), name, 1000.0 * (time.perf_counter() - t0) / len(y)


def _ref_layers(model, params):
    """The model as NumPy reference layers, when it is a plain conv/dense ReLU stack (Wong & Kolter, MLP)."""
    p = params["params"]
    if isinstance(model, models.WongKolter):
        hw = [(28, 28, 1), (14, 14, p["conv1"]["kernel"].shape[-1])]
        layers = []
        for i, name in enumerate(("conv1", "conv2")):
            w, b = np.asarray(p[name]["kernel"]), np.asarray(p[name]["bias"])
            layers += [("conv", w, b, hw[i], 2, ((1, 1), (1, 1)), 1, 1), ("relu",)]
        return layers + [("dense", np.asarray(p["fc1"]["kernel"]), np.asarray(p["fc1"]["bias"])), ("relu",),
                         ("dense", np.asarray(p["fc2"]["kernel"]), np.asarray(p["fc2"]["bias"]))]
    return None


def _reference(model, params, f, x, y, eps, n_ref):
    import _certify_ref as ref

    layers = _ref_layers(model, params)
    if layers is None or n_ref == 0:
        return {"skipped": f"no NumPy reference for {type(model).__name__} (max pooling)"}
    out = {}
    layers = ref.to_matrices(layers)  # conv layers as explicit matrices, built once (not timed)
    for method in ("ibp", "crown"):
        t0 = time.perf_counter()
        want = ref.margin_lower(layers, x[:n_ref], y[:n_ref], eps=eps, method=method)
        dt = time.perf_counter() - t0
        got = certify.margin_bounds(f, x[:n_ref], y[:n_ref], eps=eps, method=method).lower
        out[method] = {"max_abs_diff": float(np.max(np.abs(got - want))),
                       "max_rel_diff": float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))),
                       "n": int(n_ref),
                       "numpy_seconds_per_1000": 1000.0 * dt / n_ref}
    return out


def _evaluate(r, te, args, eps_list):
    f = r.logits_fn()
    x, y = te.images[: args.n_eval], te.labels[: args.n_eval]
    row = {"clean_accuracy": metrics.accuracy(f, x, y), "per_eps": {}}
    for eps in eps_list:
        e = {}
        for method in ("ibp", "crown"):
            acc, spk = _timed_certify(f, x, y, eps, method)
            e[f"certified_{method}"] = acc
            e[f"seconds_per_1000_{method}"] = spk
        e["attacked"], e["attack"], e["seconds_per_1000_attack"] = _attacked(f, x, y, eps, args)
        e["reference"] = _reference(r.model, r.params, f, x, y, eps, args.n_ref)
        row["per_eps"][str(eps)] = e
        print(f"  eps {eps}: " + json.dumps({k: v for k, v in e.items() if k != "reference"}), flush=True)
    return row


def main(argv=None):
    args = _args(argv)
    splits = load_mnist_or_none()
    if splits is None:
        return 0
    tr, te = splits
    eps_list = [float(e) for e in args.eps.split(",")]
    out = Path(args.out or REPO / "benchmarks" / "results" / f"certify_{jax.default_backend()}"
               f"{'_quick' if args.quick else ''}.json")
    record = {"benchmark": "MNIST linf: certified (IBP, CROWN) vs attacked robust accuracy per training recipe",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                          "devices": [str(d) for d in jax.local_devices()], "loadavg_start": os.getloadavg()},
              "settings": vars(args), "auto_lirpa": AUTO_LIRPA, "results": {}, "skipped": {}}

    def save():
        record["machine"]["loadavg_end"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str))

    available = getattr(training, "RECIPES", ())
    for recipe in args.recipes.split(","):
        if recipe not in available:
            record["skipped"][recipe] = f"recipe {recipe!r} is not in jaxbound.training.RECIPES {available}"
            print(f"skipping {recipe}: not a recipe of this jaxbound version", flush=True)
            continue
        try:
            r, secs = _train(recipe, args, tr, te)
        except (TypeError, ValueError) as exc:
            record["skipped"][recipe] = f"training failed: {exc}"
            print(f"skipping {recipe}: {exc}", flush=True)
            continue
        print(f"{recipe}: trained in {secs:.0f} s", flush=True)
        row = _evaluate(r, te, args, eps_list)
        row.update(train_seconds=secs, train_steps=r.steps)
        record["results"][recipe] = row
        save()
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
