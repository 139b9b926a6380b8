"""Sensitivity to the input distribution on MNIST (Ding et al. 2019): fidelity and speed.

Parts (``--parts``, all resumable; each finished part is merged atomically into
``benchmarks/results/shift_mnist.json``):

* ``volumes``: average log2 perturbable volume at ``eps = 0.3`` on the MNIST
  test set for binarized, original and smooth-2..5 with the paper's stated
  ``s x s`` window (paper Table 6: -1361, -1297, -1265 (3), -1234 (5)).
* ``vertical``: volumes and inter-class distances of smooth-2..5 with an
  ``s x 1`` vertical window, which reproduces Table 6 and Table 1.
* ``icd``: inter-class distance (App. D.2.1) of the same variants on the full
  test set (10k) and on a random training subset (``--icd-train-n``, default
  20k; ``0`` = all 60k); paper Table 1: 7.12, 7.01, 6.85 for smooth 3, 4, 5.
* ``limits``: :func:`jaxbound.shift.sensitivity_sweep` on binarized,
  original and vertical smooth-2..5: the
  l_inf concentration estimate (rectangles, eps 0.3, alpha 0.01, T 10, fitted on
  ``--conc-n`` training points, honest protocol on the test set) and the
  optimal adversarial 0-1 / cross-entropy losses of 3 vs 7 (first
  ``--pair-n`` of each class) at l2 eps 3.0 (at l_inf 0.3 the 3-7 conflict
  graph has no edge at all on every variant, so those bounds are all 0).
* ``train``: standard and PGD-trained LeNet5 per variant with a reduced budget
  (``--train-n`` training points, ``--epochs``, ``--widen``), evaluated on
  ``--eval-n`` test points with PGD eps 0.3, 40 steps of 0.01 (paper Table 2
  used 100k steps of batch 50 on all 60k).
* ``icd_full``: the inter-class distance of vertical smooth levels
  (``--icd-full-levels``) on all 60k training images.
* ``speed``: jaxbound Canny (batched, jitted) against scikit-image's
  ``canny`` looped over images (the named baseline) on Fashion-MNIST test
  images, with their pixel agreement; and the streamed inter-class distance
  against a float64 NumPy brute force on a subset.

Usage::

    nice -n 5 python benchmarks/shift_mnist.py --parts volumes icd speed
    nice -n 5 python benchmarks/shift_mnist.py --parts limits --conc-n 10000
    nice -n 5 python benchmarks/shift_mnist.py --parts train --train-n 10000 --epochs 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _common import require_data_dir  # noqa: E402

import jax  # noqa: E402

from jaxbound import data, shift, transforms  # noqa: E402
from jaxbound.attacks import AttackConfig  # noqa: E402
from jaxbound.training import TrainConfig  # noqa: E402
from jaxbound._io import atomic_write_json  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "shift_mnist.json"
TABLE6 = {"binarize": -1361, "original": -1297, "smooth-3": -1265, "smooth-5": -1234}
TABLE1 = {"smooth-3": 7.12, "smooth-4": 7.01, "smooth-5": 6.85}
# Table 2: standard test acc, PGD test acc, PGD robust acc, robustness w.r.t. predictions (eps 0.3)
TABLE2 = {"binarize": (98.5, 98.9, 98.1, 98.5), "original": (99.3, 99.2, 95.1, 95.1),
          "smooth-2": (99.3, 98.9, 93.0, 93.1), "smooth-3": (99.2, 99.0, 91.3, 91.4),
          "smooth-4": (99.1, 98.8, 90.3, 90.4), "smooth-5": (99.0, 98.7, 89.6, 89.7)}
LEVELS = [("binarize", "binarize", None), ("original", "identity", None), ("smooth-2", "smooth", 2),
          ("smooth-3", "smooth", 3), ("smooth-4", "smooth", 4), ("smooth-5", "smooth", 5)]
# s x 1 vertical windows: the smoothing that reproduces the paper's Table 1 and Table 6 numbers
LEVELS_V = [("smooth-2", "smooth_vertical", 2), ("smooth-3", "smooth_vertical", 3),
            ("smooth-4", "smooth_vertical", 4), ("smooth-5", "smooth_vertical", 5)]


def load_results() -> dict:
    import json

    if OUT.is_file():
        return json.loads(OUT.read_text())
    return {}


def save_part(name: str, value) -> None:
    res = load_results()
    res.setdefault("machine", {"platform": platform.platform(), "cpus": os.cpu_count(),
                               "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]})
    res[name] = value
    # a finished part supersedes the partial record written while it ran
    for partial in {"inter_class_distance": ["inter_class_distance_partial"],
                    "smooth_vertical": ["vertical_partial"]}.get(name, []) + (
            ["inter_class_distance_partial"] if "inter_class_distance" in res else []) + (
            ["vertical_partial"] if "smooth_vertical" in res else []):
        res.pop(partial, None)
    atomic_write_json(OUT, res)


def variant(x, t, lev):
    return np.asarray(transforms.apply(t, x, lev))


def part_volumes(test, levels=LEVELS):
    rows = []
    for label, t, lev in levels:
        t0 = time.perf_counter()
        v = shift.perturbable_volume(variant(test.images, t, lev), eps=0.3)
        rows.append({"variant": label, "log2_volume": v, "paper": TABLE6.get(label),
                     "seconds": time.perf_counter() - t0})
        print(f"volume {label:9s} ours {v:9.1f}  paper {TABLE6.get(label)}")
    return {"eps": 0.3, "split": "test", "n": len(test), "rows": rows,
            "valid_range": [784 * math.log2(0.3), 784 * math.log2(0.6)]}


def part_icd(train, test, n_train, levels=LEVELS, partial="inter_class_distance_partial"):
    out = {"fraction": 0.1, "norm": "l2", "rows": []}
    sub = train
    if n_train and n_train < len(train):
        sub = data.random_subset(train, key=jax.random.key(7), n=n_train)
    out["train_n"] = len(sub)
    for label, t, lev in levels:
        row = {"variant": label, "paper": TABLE1.get(label)}
        for split, ds in (("test", test), ("train", sub)):
            t0 = time.perf_counter()
            r = shift.inter_class_distance(variant(ds.images, t, lev), ds.labels, progress=True)
            row[split] = r.value
            row[f"{split}_per_class"] = r.per_class.tolist()
            row[f"{split}_seconds"] = time.perf_counter() - t0
            print(f"icd {label:9s} {split:5s} n={len(ds)} ours {r.value:.3f} paper {TABLE1.get(label)} "
                  f"({row[f'{split}_seconds']:.0f}s)", flush=True)
        out["rows"].append(row)
        save_part(partial, out)
    return out


def sweep_levels():
    """binarized, original and the vertical (paper-matching) smooth-2..5."""
    return LEVELS[:2] + LEVELS_V


def part_limits(train, test, args):
    t0 = time.perf_counter()
    res = shift.sensitivity_sweep(
        train, "identity", sweep_levels(), key=jax.random.key(0), test_data=test, eps=0.3, norm="linf",
        out_dir=args.work / "limits", volume=True, inter_class=False, concentration="rectangles", alpha=0.01,
        n_regions=10, concentration_n=args.conc_n, concentration_repeats=1, pair=(3, 7), pair_n=args.pair_n,
        pair_attack=AttackConfig(norm="l2", eps=3.0), progress=True)
    for row in res.table:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if v is not None})
    return {"settings": res.records[0]["settings"], "table": res.table,
            "concentration": {r["label"]: r["quantities"]["concentration"] | {"records": None} for r in res.records},
            "pair": {r["label"]: r["quantities"]["pair"] for r in res.records},
            "seconds": {r["label"]: r["seconds"] for r in res.records}, "wall_seconds": time.perf_counter() - t0,
            "figures_dir": str(args.work / "limits" / "figures")}


def part_train(train, test, args):
    from jaxbound import models

    sub = data.random_subset(train, key=jax.random.key(11), n=args.train_n) if args.train_n < len(train) else train
    model = models.create("lenet5", num_classes=10, widen_factor=args.widen)
    levels = [lv for lv in sweep_levels() if lv[0] in args.train_levels] if args.train_levels else sweep_levels()
    cfg = TrainConfig(epochs=args.epochs, batch_size=50, learning_rate=args.lr,
                      attack=AttackConfig(norm="linf", eps=0.3, steps=args.attack_steps,
                                          step_size=args.attack_step_size))
    t0 = time.perf_counter()
    res = shift.sensitivity_sweep(
        sub, "identity", levels, key=jax.random.key(1), test_data=test, eps=0.3, norm="linf",
        out_dir=args.work / f"train_n{len(sub)}_e{args.epochs}_w{args.widen}", volume=False, inter_class=False,
        concentration=None, pair=None, train_models=True, model=model, train=cfg, eval_n=args.eval_n,
        steps=40, step_size=0.01, progress=True)
    rows = []
    for row in res.table:
        p = TABLE2.get(row["label"])
        rows.append(dict(row, paper_standard_acc=p[0] / 100, paper_pgd_acc=p[1] / 100, paper_pgd_robust=p[2] / 100,
                         paper_wrt_predictions=p[3] / 100))
        print(row["label"], {k: row[k] for k in ("standard_clean_accuracy", "pgd_clean_accuracy",
                                                  "pgd_robust_accuracy", "pgd_robustness_wrt_predictions")},
              "paper", p, flush=True)
    return {"budget": {"train_n": len(sub), "epochs": args.epochs, "batch_size": 50, "optimizer": "adam",
                       "learning_rate": args.lr, "widen_factor": args.widen, "train_attack_steps": args.attack_steps,
                       "train_attack_step_size": args.attack_step_size, "eval_n": args.eval_n,
                       "eval": "PGD linf eps 0.3, 40 steps of 0.01, 1 random start",
                       "paper": "LeNet5 widen 1, Adam 1e-4, 100000 steps of batch 50 on 60k, PGD 40x0.01"},
            "rows": rows, "seconds": {r["label"]: r["seconds"] for r in res.records},
            "wall_seconds": time.perf_counter() - t0}


def part_speed(train, dd, n_icd=10000):
    from skimage.feature import canny as sk_canny

    fm = data.load("fashion_mnist", split="test", data_dir=dd)
    x = fm.images[:5000]
    t0 = time.perf_counter()
    np.asarray(transforms.canny(x))
    t_first = time.perf_counter() - t0  # includes compilation
    t0 = time.perf_counter()
    ours = np.asarray(transforms.canny(x)).astype(bool)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.stack([sk_canny(im[..., 0], sigma=1.0) for im in x])[..., None]
    t_ref = time.perf_counter() - t0
    agree = float((ours == ref).mean())
    print(f"canny {len(x)} fashion images: ours {t_ours:.2f}s skimage {t_ref:.2f}s ratio {t_ref / t_ours:.1f}x "
          f"agreement {agree:.6f}")
    sub = data.random_subset(train, key=jax.random.key(3), n=n_icd)
    xf = sub.flat().astype(np.float64)
    y = sub.labels
    t0 = time.perf_counter()
    shift.inter_class_distance(xf, y)
    t_icd_first = time.perf_counter() - t0  # includes compilation
    t0 = time.perf_counter()
    r = shift.inter_class_distance(xf, y)
    t_icd = time.perf_counter() - t0
    t0 = time.perf_counter()
    sq = (xf * xf).sum(1)
    per = []
    for c in range(10):
        q, o = xf[y == c], xf[y != c]
        d = np.sqrt(np.maximum(sq[y == c][:, None] + sq[y != c][None] - 2 * q @ o.T, 0))
        k = math.ceil(0.1 * o.shape[0])
        m = np.sort(np.partition(d, k - 1, axis=1)[:, :k].mean(1))
        per.append(m[: math.ceil(0.1 * m.size)].mean())
    t_np = time.perf_counter() - t0
    print(f"inter-class distance n={n_icd}: ours {t_icd:.2f}s numpy float64 {t_np:.2f}s ratio {t_np / t_icd:.2f}x "
          f"|diff| {abs(r.value - np.mean(per)):.2e}")
    return {"canny": {"n": len(x), "dataset": "fashion_mnist test", "ours_seconds": t_ours,
                      "ours_first_call_seconds": t_first,
                      "skimage_seconds": t_ref, "speedup": t_ref / t_ours, "pixel_agreement": agree,
                      "images_identical": float((ours == ref).reshape(len(x), -1).all(1).mean())},
            "inter_class_distance": {"n": n_icd, "ours_seconds": t_icd, "ours_first_call_seconds": t_icd_first,
                                     "numpy_float64_seconds": t_np,
                                     "speedup": t_np / t_icd, "ours": r.value, "numpy": float(np.mean(per))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["volumes", "icd", "speed", "limits"],
                    choices=["volumes", "icd", "vertical", "icd_full", "speed", "limits", "train"])
    ap.add_argument("--icd-full-levels", nargs="*", default=["smooth-4"],
                    help="vertical smooth levels whose inter-class distance runs on all 60k training images")
    ap.add_argument("--icd-train-n", type=int, default=20000)
    ap.add_argument("--conc-n", type=int, default=5000)
    ap.add_argument("--pair-n", type=int, default=1000)
    ap.add_argument("--train-n", type=int, default=10000)
    ap.add_argument("--train-levels", nargs="*", default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--widen", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--attack-step-size", type=float, default=0.075)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/i7_bench"))
    args = ap.parse_args()
    dd = require_data_dir()
    train = data.load("mnist", split="train", data_dir=dd)
    test = data.load("mnist", split="test", data_dir=dd)
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "volumes":
            val = part_volumes(test)
        elif part == "icd":
            val = part_icd(train, test, args.icd_train_n)
        elif part == "vertical":
            val = {"kernel": "s x 1 (vertical)", "volumes": part_volumes(test, LEVELS_V),
                   "inter_class_distance": part_icd(train, test, args.icd_train_n, LEVELS_V,
                                                    "vertical_partial")}
        elif part == "icd_full":
            rows = []
            for label, t, lev in [lv for lv in LEVELS_V if lv[0] in args.icd_full_levels]:
                t0 = time.perf_counter()
                r = shift.inter_class_distance(variant(train.images, t, lev), train.labels, progress=True)
                rows.append({"variant": label, "kernel": "vertical", "train_n": len(train), "value": r.value,
                             "per_class": r.per_class.tolist(), "paper": TABLE1.get(label),
                             "seconds": time.perf_counter() - t0})
                print(f"icd full train {label}: {r.value:.3f} paper {TABLE1.get(label)} "
                      f"({rows[-1]['seconds']:.0f}s)", flush=True)
            val = {"rows": rows}
        elif part == "limits":
            val = part_limits(train, test, args)
        elif part == "train":
            val = part_train(train, test, args)
        else:
            val = part_speed(train, dd)
        val["command"] = "python benchmarks/shift_mnist.py " + " ".join(sys.argv[1:])
        val["part_seconds"] = time.perf_counter() - t0
        name = {"volumes": "perturbable_volume", "icd": "inter_class_distance", "limits": "limits",
                "train": "training", "speed": "speed", "vertical": "smooth_vertical",
                "icd_full": "inter_class_distance_full_train"}[part]
        save_part(name, val)
        print(f"== {part} done in {val['part_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
