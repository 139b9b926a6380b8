"""The ``jaxbound`` command line.

Main job:

* ``jaxbound report``: for a dataset (default: the embedded 8x8 digits), a
  norm and a grid of budgets eps, the limits of robustness beside what models
  reach: the concentration estimate of intrinsic robustness (Mahloujifar et
  al. 2019) with its interval, the optimal 0-1 and cross-entropy losses of the
  hardest class pair (Bhagoji et al. 2021), the dataset Lipschitz constant
  (Finlay et al. 2019) and inter-class distance (Ding et al. 2019), and the
  clean and robust accuracy of a standard and a PGD-trained model trained on
  the spot (or of your model). Prints a table and writes report.json,
  report.md and PNG figures into --out; rerunning the same command resumes.
  See jaxbound.report for the definitions.

One method each (same conventions; JSON on stdout and in --out):

* ``jaxbound concentration``: intrinsic-robustness estimate per eps.
* ``jaxbound optprob``: optimal cross-entropy and 0-1 losses of a class pair.
* ``jaxbound attack``: clean and robust accuracy of a model under PGD or FGM.
* ``jaxbound train``: train a model (standard, PGD or TRADES) and save it.
* ``jaxbound lipschitz``: dataset Lipschitz constant and inter-class distance.
* ``jaxbound knn``: k nearest neighbours of a dataset's points (.npz,
  resumable with --checkpoint FOLDER).
* ``jaxbound demo``: the data geometry behind the limits: k-NN density ranks
  (Mahloujifar et al. 2019, §4.1: l1 distance to the k-th neighbour, the
  point itself counted) and nearest out-of-class distances in l1, l2 and
  linf; half the smallest such distance is the largest eps below which no two
  differently-labelled points can be confused. Writes demo.json into --out.

Errors in the arguments (unknown dataset, missing data folder, bad numbers or
eps lists) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]


def _add_dataset_args(p: argparse.ArgumentParser, split: str = "train") -> None:
    p.add_argument("--dataset", default="digits",
                   help="'digits' (embedded, default), 'mnist', 'fashion_mnist' or 'tfds:<name>'")
    p.add_argument("--split", default=split, help=f"dataset split (default: {split})")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (MNIST-style) or the tensorflow-datasets folder; "
                        "default $JAXBOUND_DATA_DIR")
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples")


def _add_common(p: argparse.ArgumentParser, out_default: str, what: str = "output JSON file") -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--out", default=out_default, help=f"{what} (default {out_default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")




def _desc(name: str) -> str:
    for part in __doc__.split("* ``"):
        if part.startswith(f"jaxbound {name}``"):
            body = part[len(f"jaxbound {name}``"):].split("\n\n")[0]
            return "jaxbound " + name + " ".join(body.split())
    return ""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jaxbound",
        description="Fundamental limits of adversarial robustness, measured from data, beside what models reach.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Main job: jaxbound report (see jaxbound report --help).",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    # -- report ---------------------------------------------------------------
    rp = sub.add_parser("report", help="limits of robustness beside trained models' robust error (main job)",
                        description=_desc("report"), formatter_class=raw)
    rp.add_argument("--dataset", default="digits",
                    help="'digits' (embedded, default), 'mnist', 'fashion_mnist' or 'tfds:<name>'")
    rp.add_argument("--data-dir", default=None, help="folder with the IDX files or the tensorflow-datasets "
                                                     "folder; default $JAXBOUND_DATA_DIR")
    rp.add_argument("--test-split", default="test", help="held-out split (default: test)")
    rp.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    rp.add_argument("--test-limit", type=int, default=None, help="use only the first N held-out examples")
    rp.add_argument("--norm", default="linf", help="threat model: linf (default), l2 or l1")
    rp.add_argument("--eps", default=None,
                    help="comma-separated budgets, e.g. 0.1,0.2,0.3 (default linf 0.1,0.2,0.3,0.4; "
                         "l2 0.5,1,1.5,2; l1 2,4,6,8; pixels are in [0, 1])")
    rp.add_argument("--alpha", type=float, default=0.01,
                    help="concentration: risk threshold alpha of the error region (default 0.01, the paper's)")
    rp.add_argument("--regions", default="5,10",
                    help="concentration: candidate numbers T of boxes/balls, chosen on the select split (default 5,10)")
    rp.add_argument("--repeats", type=int, default=5, help="concentration: repeats of the box search (default 5)")
    rp.add_argument("--protocol", default="honest", choices=["honest", "paper"],
                    help="concentration: 'honest' (select on half of the held-out split, report on the other) "
                         "or 'paper' (select and report on all of it)")
    rp.add_argument("--all-pairs", action="store_true",
                    help="optimal bounds for all class pairs (default: the hardest pair only)")
    rp.add_argument("--n-per-class", type=int, default=1000,
                    help="optimal bounds: first N training points of each class of a pair (default 1000)")
    rp.add_argument("--models", default="standard,pgd",
                    help="recipes to train on the spot: comma-separated from standard, pgd, trades; "
                         "'none' for no training (default standard,pgd)")
    rp.add_argument("--model", default=None,
                    help="your model: 'module:function' returning logits for images [n, H, W, C] in [0, 1] "
                         "(or a folder written by 'jaxbound train --out')")
    rp.add_argument("--model-name", default="user", help="name of --model in the tables (default user)")
    rp.add_argument("--arch", default="lenet5", help="architecture of the trained models (default lenet5)")
    rp.add_argument("--widen", type=float, default=None,
                    help="widen factor of the trained models (default 0.5 for architectures that have one; "
                         "0 for the architecture's default)")
    rp.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    rp.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    rp.add_argument("--lr", type=float, default=1e-3, help="training learning rate, Adam (default 1e-3)")
    rp.add_argument("--train-eps", type=float, default=None,
                    help="budget of adversarial training (default: the middle budget of --eps)")
    rp.add_argument("--train-attack-steps", type=int, default=7, help="PGD steps inside adversarial training (default 7)")
    rp.add_argument("--attack-steps", type=int, default=20, help="PGD steps of the evaluation (default 20)")
    rp.add_argument("--restarts", type=int, default=1, help="PGD restarts of the evaluation (default 1)")
    rp.add_argument("--eval-limit", type=int, default=1000,
                    help="evaluate models on the first N held-out examples (default 1000; 0 for all)")
    rp.add_argument("--no-self-check", action="store_true",
                    help="skip the weak-attack check against the optimal 0-1 loss")
    rp.add_argument("--check-per-class", type=int, default=200,
                    help="the self-check attacks the first N training points of each class of the pair and compares "
                         "with the optimal 0-1 loss of that sample (default 200; 0 for the whole pair sample)")
    rp.add_argument("--no-figures", action="store_true", help="do not write the PNG figures")
    rp.add_argument("--fresh", action="store_true", help="recompute every stage (ignore out/stages)")
    _add_common(rp, "jaxbound_report", "output folder")

    # -- concentration ----------------------------------------------------------
    cp = sub.add_parser("concentration", help="intrinsic-robustness estimate (Mahloujifar et al. 2019)",
                        description=_desc("concentration"), formatter_class=raw)
    _add_dataset_args(cp)
    cp.add_argument("--test-split", default="test", help="held-out split for selection and report (default test)")
    cp.add_argument("--test-limit", type=int, default=None, help="use only the first N held-out examples")
    cp.add_argument("--norm", default="linf", help="linf (union of boxes), l2 (union of balls) or l1 (half-space)")
    cp.add_argument("--method", default="auto", choices=["auto", "rectangles", "balls", "halfspace"],
                    help="error-region family (auto: by norm)")
    cp.add_argument("--eps", default="0.1,0.2,0.3", help="comma-separated budgets (default 0.1,0.2,0.3)")
    cp.add_argument("--alpha", type=float, default=0.01, help="risk threshold (default 0.01)")
    cp.add_argument("--regions", default="5,10", help="candidate T (default 5,10)")
    cp.add_argument("--repeats", type=int, default=5, help="repeats of the box search (default 5)")
    cp.add_argument("--protocol", default="honest", choices=["honest", "paper"], help="selection protocol")
    _add_common(cp, "concentration.json")

    # -- optprob ------------------------------------------------------------------
    op = sub.add_parser("optprob", help="optimal cross-entropy and 0-1 losses of a class pair (Bhagoji et al. 2021)",
                        description=_desc("optprob"), formatter_class=raw)
    _add_dataset_args(op)
    op.add_argument("--classes", default="3,7", help="the class pair, e.g. 3,7 (default)")
    op.add_argument("--n-per-class", type=int, default=None, help="first N points of each class (default all)")
    op.add_argument("--norm", default="l2", help="l1, l2 (default) or linf")
    op.add_argument("--eps", default="1.0,2.0", help="comma-separated budgets (default 1.0,2.0)")
    _add_common(op, "optprob.json")

    # -- attack -----------------------------------------------------------------------
    at = sub.add_parser("attack", help="clean and robust accuracy of a model under attack",
                        description=_desc("attack"), formatter_class=raw)
    _add_dataset_args(at, split="test")
    at.add_argument("--model", required=True,
                    help="'module:function' returning logits, or a folder written by 'jaxbound train --out'")
    at.add_argument("--attack", default="pgd", choices=["pgd", "fgm"], help="pgd (default) or fgm")
    at.add_argument("--norm", default="linf", help="linf (default), l2 or l1")
    at.add_argument("--eps", default="0.1,0.2", help="comma-separated budgets (default 0.1,0.2)")
    at.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    at.add_argument("--step-size", type=float, default=None, help="PGD step (default 2.5 eps / steps)")
    at.add_argument("--restarts", type=int, default=1, help="PGD restarts (default 1)")
    at.add_argument("--no-bounds", action="store_true", help="do not keep images in [0, 1]")
    _add_common(at, "attack.json")

    # -- train --------------------------------------------------------------------------
    tp = sub.add_parser("train", help="train a model (standard, PGD or TRADES) and save it",
                        description=_desc("train"), formatter_class=raw)
    _add_dataset_args(tp)
    tp.add_argument("--recipe", default="standard", choices=["standard", "pgd", "trades"], help="training recipe")
    tp.add_argument("--arch", default="lenet5", help="registered architecture (default lenet5)")
    tp.add_argument("--widen", type=float, default=None,
                    help="widen factor (default 0.5 for architectures that have one; 0 for the architecture's default)")
    tp.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    tp.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    tp.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    tp.add_argument("--eps", type=float, default=None, help="budget of adversarial training (pgd, trades)")
    tp.add_argument("--norm", default="linf", help="norm of adversarial training (default linf)")
    tp.add_argument("--attack-steps", type=int, default=10, help="PGD steps inside training (default 10)")
    tp.add_argument("--eps-warmup", type=int, default=0,
                    help="optimiser steps over which the training budget ramps up to --eps (default 0: no ramp)")
    tp.add_argument("--test-split", default="test", help="split for the final clean accuracy (default test)")
    _add_common(tp, "jaxbound_model", "output folder (model.json, model.msgpack, train.json)")

    # -- lipschitz ------------------------------------------------------------------------
    lp = sub.add_parser("lipschitz", help="dataset Lipschitz constant and inter-class distance",
                        description=_desc("lipschitz"), formatter_class=raw)
    _add_dataset_args(lp)
    lp.add_argument("--norm", default="l2", help="distance norm (default l2, Finlay et al.'s)")
    _add_common(lp, "lipschitz.json")

    # -- demo ---------------------------------------------------------------------------------
    demo = sub.add_parser("demo", help="data geometry behind the robustness limits (default dataset: digits)",
                          description=_desc("demo"), formatter_class=raw)
    _add_dataset_args(demo)
    demo.add_argument("--k", type=int, default=50, help="neighbour used for the density rank (default 50)")
    demo.add_argument("--out", default="jaxbound_demo", help="output folder (default ./jaxbound_demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    # -- knn --------------------------------------------------------------------------------------
    knn = sub.add_parser("knn", help="k nearest neighbours of every point of a dataset",
                         description=_desc("knn"), formatter_class=raw)
    _add_dataset_args(knn)
    knn.add_argument("--k", type=int, default=50, help="neighbours per point (default 50)")
    knn.add_argument("--norm", default="l1", help="l1, l2, linf or a number p >= 1 (default l1)")
    knn.add_argument("--exclude-self", action="store_true", help="do not count a point as its own neighbour")
    knn.add_argument("--precision", default="float32", choices=["float32", "float64"], help="distance precision")
    knn.add_argument("--block-size", type=int, default=None, help="query rows per device and block")
    knn.add_argument("--checkpoint", default=None, help="folder keeping finished blocks; rerun the same command to resume after an interruption")
    knn.add_argument("--out", default="knn.npz", help="output .npz with distances and indices (default knn.npz)")
    knn.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _load(args, split=None):
    from jaxbound import data

    ds = data.load(args.dataset, split=split or args.split, data_dir=args.data_dir)
    limit = getattr(args, "limit", None)
    if limit is not None:
        if limit < 2:
            raise ValueError(f"limit: must be >= 2, got {limit}")
        ds = ds.subset(np.arange(min(limit, len(ds))))
    return ds


def _ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name}: give at least one integer")
    return vals


def _write_json(path: str, rec: dict) -> None:
    from jaxbound._io import atomic_write_json

    atomic_write_json(Path(path), rec)


def _widen(w):
    return None if w is None or w == 0 else float(w)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def run_report(args):
    from jaxbound import report as R

    models = [] if args.models.strip().lower() in ("", "none") else [m.strip() for m in args.models.split(",") if m.strip()]
    eps = None if args.eps is None else R.parse_eps(args.eps)
    return R.report(
        args.dataset, norm=args.norm, eps=eps, out_dir=args.out, data_dir=args.data_dir, test_split=args.test_split,
        limit=args.limit, test_limit=args.test_limit, alpha=args.alpha, n_regions=_ints(args.regions, "regions"),
        n_repeats=args.repeats, protocol=args.protocol, pairs="all" if args.all_pairs else "hardest",
        n_per_class=args.n_per_class, models=models, model=args.model, model_name=args.model_name, arch=args.arch,
        widen_factor="auto" if args.widen is None else _widen(args.widen), epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        train_eps=args.train_eps, train_attack_steps=args.train_attack_steps, attack_steps=args.attack_steps,
        attack_restarts=args.restarts, eval_limit=None if args.eval_limit == 0 else args.eval_limit,
        self_check=not args.no_self_check,
        check_per_class=None if args.check_per_class == 0 else args.check_per_class, seed=args.seed, figures=not args.no_figures, resume=not args.fresh,
        progress=not args.quiet)


def _print_report(rep) -> None:
    rec = rep.record
    ds = rec["dataset"]["train"]
    print(f"jaxbound report: {ds['name']} (n={ds['n']}), norm {rec['norm']}, eps {rec['eps']}")
    print(rep.format_table())
    g = rec["geometry"]
    icd = g["inter_class_distance"]
    print(f"dataset Lipschitz constant ({g['lipschitz']['norm']}): {g['lipschitz']['lipschitz']:.4f}; "
          f"inter-class distance: " + (f"{icd['value']:.4f}" if icd.get("available") else "n/a"))
    for m in rec["models"]:
        print(f"{m['name']}: clean accuracy {m['clean_accuracy']:.4f} (n={m['n']})")
    for f in rec["flags"]:
        print(f"WARNING {f['message']}")
    print(f"wrote {', '.join(rep.files.values())} ({rec['seconds']:.1f} s)")


def run_concentration(args) -> dict:
    import jax

    from jaxbound import _checks, concentration as C
    from jaxbound import report as R

    tr = _load(args)
    te = _load(args, split=args.test_split)
    if args.test_limit is not None:
        te = te.subset(np.arange(min(args.test_limit, len(te))))
    eps = R.parse_eps(args.eps)
    norm = _checks.canonical_norm(args.norm)
    method = args.method
    if method == "auto":
        method = {"linf": "rectangles", "l2": "balls"}.get(norm, "halfspace")
    key = jax.random.key(args.seed)
    splits = C.make_splits(key, tr.flat(), te.flat(), protocol=args.protocol)
    Ts = _ints(args.regions, "regions")
    rows = []
    for e in eps:
        if method == "rectangles":
            recs, _ = C.run_rectangles(jax.random.fold_in(key, 1), splits, alpha=args.alpha, eps=e, n_regions=Ts,
                                       n_repeats=args.repeats, dataset=tr.name, k=min(50, len(tr) - 1))
        elif method == "balls":
            recs, _ = C.run_balls(splits, alpha=args.alpha, eps=e, n_regions=Ts, dataset=tr.name,
                                  list_size=min(2048, len(tr) - 1))
        else:
            recs, _ = C.run_halfspace(splits, alpha=args.alpha, eps=e, norm=norm, dataset=tr.name)
        rows.extend(r.to_dict() for r in recs)
    rec = {"command": "concentration", "dataset": tr.to_dict(), "method": method, "norm": str(norm),
           "eps": list(eps), "alpha": args.alpha, "protocol": args.protocol, "records": rows}
    _write_json(args.out, rec)
    return {"written": args.out, "method": method,
            "report": [{"eps": r["eps"], "split": r["split"], "risk": r["risk"], "adv_risk": r["adv_risk"],
                        "adv_risk_ci": r["adv_risk_ci"]} for r in rows if r["split"] in ("report", "test")]}


def run_optprob(args) -> dict:
    from jaxbound import bounds
    from jaxbound import report as R

    ds = _load(args)
    cls = _ints(args.classes, "classes")
    if len(cls) != 2:
        raise ValueError(f"classes: give two classes like 3,7, got {args.classes!r}")
    eps = R.parse_eps(args.eps)
    from jaxbound import data

    xa, xb = data.class_pair(ds, cls[0], cls[1], n_per_class=args.n_per_class)
    rows = []
    for e in eps:
        t0 = time.perf_counter()
        g = bounds.conflict_graph(xa, xb, eps=e, norm=args.norm, progress=not args.quiet)
        o = bounds.optprob(g)
        z = bounds.min_zero_one_loss(g)
        rows.append({"eps": e, "num_edges": g.num_edges, "cross_entropy": o.loss, "zero_one": z.loss,
                     "verified": bool(o.verify().passed and z.verify().passed), "rounds": o.rounds,
                     "seconds": time.perf_counter() - t0})
    rec = {"command": "optprob", "dataset": ds.to_dict(), "classes": cls, "n": [len(xa), len(xb)],
           "norm": str(args.norm), "rows": rows}
    _write_json(args.out, rec)
    return {"written": args.out, "classes": cls, "rows": [{k: r[k] for k in ("eps", "cross_entropy", "zero_one")}
                                                         for r in rows]}


def run_attack(args) -> dict:
    import jax

    from jaxbound import attacks, metrics
    from jaxbound import report as R

    ds = _load(args)
    fn = R.load_model(args.model)
    eps = np.asarray(R.parse_eps(args.eps), np.float32)
    bnds = None if args.no_bounds else (0.0, 1.0)
    key = jax.random.key(args.seed)
    if args.attack == "pgd":
        res = attacks.pgd(fn, ds.images, ds.labels, key=key, eps=eps, norm=args.norm, steps=args.steps,
                          step_size=args.step_size, restarts=args.restarts, bounds=bnds, progress=not args.quiet)
    else:
        res = attacks.fgm(fn, ds.images, ds.labels, eps=eps, norm=args.norm, bounds=bnds)
    ra = metrics.robust_accuracy(fn, ds.images, ds.labels, res)
    rec = {"command": "attack", "dataset": ds.to_dict(), "model": args.model, "attack": args.attack,
           "norm": str(args.norm), "eps": eps.astype(float).tolist(), "steps": args.steps, "restarts": args.restarts,
           "bounds": bnds, "n": ra.n, "clean_accuracy": ra.clean_accuracy, "robust_accuracy": ra.robust_accuracy}
    _write_json(args.out, rec)
    return {k: rec[k] for k in ("n", "eps", "clean_accuracy", "robust_accuracy")} | {"written": args.out}


def run_train(args) -> dict:
    import jax

    from jaxbound import metrics, models
    from jaxbound import report as R

    tr = _load(args)
    te = _load(args, split=args.test_split)
    if args.recipe != "standard" and args.eps is None:
        raise ValueError(f"eps: recipe {args.recipe!r} needs --eps")
    from jaxbound import training

    widen = R._resolve_widen(args.arch, "auto" if args.widen is None else _widen(args.widen))
    module = R._build_module(args.arch, tr.num_classes, widen)
    kw = dict(recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
              progress=not args.quiet, checkpoint_dir=str(Path(args.out) / "checkpoint"))
    if args.recipe != "standard":
        kw.update(eps=args.eps, norm=args.norm, attack_steps=args.attack_steps, eps_warmup=args.eps_warmup)
    t0 = time.perf_counter()
    res = training.train(jax.random.key(args.seed), module, (tr.images, tr.labels), **kw)
    seconds = time.perf_counter() - t0
    fn = models.logits_fn(module, res.params)
    acc = metrics.accuracy(fn, te.images, te.labels)
    rec = {"command": "train", "dataset": tr.to_dict(), "recipe": args.recipe, "arch": args.arch,
           "widen_factor": widen, "epochs": args.epochs, "eps": args.eps, "norm": args.norm,
           "seconds": seconds, "test_split": args.test_split, "test_accuracy": acc, "train": R._safe_dict(res)}
    R.save_model(args.out, arch=args.arch, num_classes=tr.num_classes, widen_factor=widen,
                 input_shape=tr.shape, params=res.params, record={k: v for k, v in rec.items() if k != "train"})
    _write_json(str(Path(args.out) / "train.json"), rec)
    return {"written": args.out, "test_accuracy": acc, "seconds": seconds, "steps": int(res.steps)}


def run_lipschitz(args) -> dict:
    from jaxbound import report as R

    ds = _load(args)
    from jaxbound import _checks

    g = R._geometry_stage(ds, _checks.canonical_norm(args.norm), not args.quiet)
    rec = {"command": "lipschitz", "dataset": ds.to_dict(), **g}
    _write_json(args.out, rec)
    out = {"written": args.out, "lipschitz": g["lipschitz"]["lipschitz"], "min_distance": g["lipschitz"]["min_distance"]}
    icd = g["inter_class_distance"]
    out["inter_class_distance"] = icd.get("value") if icd.get("available") else None
    return out


def run_demo(args) -> dict:
    """Compute the demo's numbers; returns the JSON record."""
    from jaxbound import geometry
    from jaxbound._io import atomic_write_json

    ds = _load(args)
    x, y = ds.flat(), ds.labels
    t0 = time.perf_counter()
    progress = not args.quiet
    k = min(args.k, len(ds) - 1)
    dens = geometry.knn(x, k=k, norm="l1", progress=progress)
    rank_radius = dens.distances[:, -1]
    per_norm = {}
    for norm in ("l1", "l2", "linf"):
        near = geometry.nearest_other_class(x, y, norm=norm, progress=progress)
        dmin = float(near.distances.min())
        i = int(near.distances.argmin())
        per_norm[norm] = {
            "min_distance": dmin,
            "median_distance": float(np.median(near.distances)),
            "closest_pair": [i, int(near.indices[i])],
            "closest_pair_labels": [int(y[i]), int(y[near.indices[i]])],
            "separation_eps": dmin / 2.0,
            "lipschitz_constant": (1.0 / dmin) if dmin > 0 else None,
        }
    order = np.argsort(rank_radius, kind="stable")
    record = {
        "dataset": ds.to_dict(),
        "k": k,
        "density_rank": {
            "norm": "l1",
            "convention": "distance to the k-th neighbour, the point itself counted first",
            "radius_quantiles": {f"q{int(p * 100)}": float(np.quantile(rank_radius, p)) for p in (0.0, 0.1, 0.5, 0.9, 1.0)},
            "densest_half_class_counts": np.bincount(y[order[: max(1, len(y) // 2)]], minlength=ds.num_classes).tolist(),
        },
        "nearest_other_class": per_norm,
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    atomic_write_json(out / "demo.json", record)
    return record


def _print_demo(rec: dict, out: str) -> None:
    ds = rec["dataset"]
    print(f"jaxbound demo: {ds['name']}/{ds['split']}, n={ds['n']}, shape={tuple(ds['shape'])}")
    q = rec["density_rank"]["radius_quantiles"]
    print(f"density rank (l1 distance to neighbour k={rec['k']}): min {q['q0']:.3f}, "
          f"median {q['q50']:.3f}, max {q['q100']:.3f}")
    print(f"{'norm':6s} {'min out-of-class d':>19s} {'median':>9s} {'eps* = d/2':>11s} {'closest labels':>15s}")
    for norm, r in rec["nearest_other_class"].items():
        print(f"{norm:6s} {r['min_distance']:19.4f} {r['median_distance']:9.4f} {r['separation_eps']:11.4f} "
              f"{str(tuple(r['closest_pair_labels'])):>15s}")
    print("Below eps* no two training points of different classes can be moved onto each other, "
          "so a perfectly robust classifier of the sample exists.")
    print(f"wrote {Path(out) / 'demo.json'} ({rec['seconds']:.1f} s)")


def run_knn(args) -> Path:
    from jaxbound import geometry
    from jaxbound._io import atomic_write_bytes

    ds = _load(args)
    res = geometry.knn(ds.flat(), k=args.k, norm=args.norm, exclude_self=args.exclude_self,
                       precision=args.precision, block_size=args.block_size,
                       progress=not args.quiet, checkpoint=args.checkpoint)
    buf = io.BytesIO()
    np.savez(buf, distances=res.distances, indices=res.indices, labels=ds.labels)
    out = Path(args.out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _use_all_cores() -> None:
    """One XLA host device per core (attacks shard their batches over devices), unless JAX is already up."""
    if "jax" in sys.modules or "XLA_FLAGS" in os.environ and "host_platform_device_count" in os.environ["XLA_FLAGS"]:
        return
    n = os.cpu_count() or 1
    if n > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n}").strip()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    _use_all_cores()
    try:
        if args.command == "demo":
            rec = run_demo(args)
            _print_demo(rec, args.out)
        elif args.command == "knn":
            out = run_knn(args)
            print(json.dumps({"written": str(out), "k": args.k, "norm": args.norm}))
        elif args.command == "report":
            _print_report(run_report(args))
        else:
            fn = {"concentration": run_concentration, "optprob": run_optprob, "attack": run_attack,
                  "train": run_train, "lipschitz": run_lipschitz}[args.command]
            from jaxbound._io import to_jsonable

            print(json.dumps(to_jsonable(fn(args)), indent=1))
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        print(f"jaxbound {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"jaxbound {args.command}: error: a module is missing: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxbound {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
