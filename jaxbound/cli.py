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
* ``jaxbound optprob``: optimal cross-entropy and 0-1 losses of a class pair,
  or (``--classes all``) the optimal 0-1 loss over all classes (Dai et al. 2023).
* ``jaxbound attack``: clean and robust accuracy of a model under AutoAttack
  (default), PGD or FGM.
* ``jaxbound train``: train a model (standard, PGD or TRADES) and save it.
* ``jaxbound lipschitz``: dataset Lipschitz constant and inter-class distance.
* ``jaxbound knn``: k nearest neighbours of a dataset's points (.npz,
  resumable with --checkpoint FOLDER).
* ``jaxbound demo``: the data geometry behind the limits: k-NN density ranks
  (Mahloujifar et al. 2019, §4.1: l1 distance to the k-th neighbour, the
  point itself counted) and nearest out-of-class distances in l1, l2 and
  linf; half the smallest such distance is the largest eps below which no two
  differently-labelled points can be confused. Writes demo.json into --out.

Options come from the fields of the configuration objects
(:class:`jaxbound.report.ReportConfig`, :class:`jaxbound.attacks.AttackConfig`,
:class:`jaxbound.training.TrainConfig`): their help and defaults are read from
the dataclasses. ``--seed N`` gives every command the key
``jax.random.key(N)``.

Every command takes ``--distributed``: run as one process of a
multi-process job on ``jax.distributed`` (see :mod:`jaxbound.distributed`),
with ``--coordinator HOST:PORT``, ``--num-processes N`` and ``--process-id I``,
or, without them, the values JAX finds in the environment on SLURM, Open MPI
and Cloud TPU pods. Every process runs the same command on the same data; the
work is split and every process gets the full result; process 0 writes the
output files.

Errors in the arguments (unknown dataset, missing data folder, bad numbers or
eps lists) print one line on stderr and exit with status 2.

References:
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Finlay, Calder, Abbasi, Oberman. "Lipschitz regularized deep neural networks
  generalize and are adversarially robust." arXiv:1808.09540.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness to
  input data distributions." ICLR 2019, arXiv:1902.08336.
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "build_parser"]


# ---------------------------------------------------------------------------
# Options built from the configuration objects
# ---------------------------------------------------------------------------


def _field_kind(f: dataclasses.Field) -> str:
    """How a configuration field is read from the command line, from its annotation (or default)."""
    t = str(f.type).replace("typing.", "")
    default = None if f.default is dataclasses.MISSING else f.default
    if t == "Any":
        if isinstance(default, bool):
            return "bool"
        if isinstance(default, tuple):
            return "floats?"
        if f.name == "eps":
            return "eps"
        return {int: "int", float: "float", str: "str"}.get(type(default), "float?" if f.default is None else "str")
    kinds = {"bool": "bool", "int": "int", "float": "float", "str": "str", "int | None": "int?",
             "float | None": "float?", "str | None": "str?", "tuple[int, ...]": "ints", "tuple[str, ...]": "strs",
             "tuple[float, ...] | None": "str", "float | str | None": "widen"}
    return kinds.get(t, "str")


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if v else "none"
    return "none" if v is None else str(v)


def _add_fields(p: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None, *, prefix: str = "",
                aliases: dict | None = None) -> None:
    """One option per field of the configuration class ``cls``; help and default come from the field.

    ``prefix`` goes before the option and destination names (``attack_`` ->
    ``--attack-steps``); ``aliases`` maps field names to a second spelling.
    """
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        flags = ["--" + (prefix + f.name).replace("_", "-")]
        flags += [a for a in ([f.metadata.get("flag")] + [(aliases or {}).get(f.name)]) if a]
        help_ = f.metadata.get("help", f.name)
        if f.default is dataclasses.MISSING:
            help_ += " (required)" if not prefix else " (required with any other --" + prefix.replace("_", "-") + "* option)"
        if _field_kind(f) == "bool":
            p.add_argument(*flags, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{help_} (default {'on' if f.default else 'off'})")
        else:
            given = f.default is dataclasses.MISSING or "default" in help_
            shown = "" if given else f" (default {_show(f.default)})"
            p.add_argument(*flags, dest=prefix + f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                           help=help_ + shown)


def _convert(f: dataclasses.Field, text: Any) -> Any:
    kind = _field_kind(f)
    if kind == "bool" or not isinstance(text, str):
        return text
    low = text.strip().lower()
    if kind.endswith("?") or kind == "widen":
        if low in ("none", "all"):
            return None
        kind = kind.rstrip("?")
    if kind == "widen":
        return "auto" if low == "auto" else _number(text, f.name, float)
    if kind in ("int", "float"):
        return _number(text, f.name, int if kind == "int" else float)
    if kind == "ints":
        return tuple(_ints(text, f.name))
    if kind == "strs":
        return tuple(v.strip() for v in text.split(",") if v.strip())
    if kind in ("floats", "eps"):
        from jaxbound import report as R

        return R.parse_eps(text, f.name) if kind == "eps" else tuple(_floats(text, f.name))
    return text


def _settings(args: argparse.Namespace, cls: type, prefix: str = "") -> dict:
    """The options of ``args`` that name fields of ``cls``, converted (the others keep their dataclass defaults)."""
    return {f.name: _convert(f, getattr(args, prefix + f.name)) for f in dataclasses.fields(cls)
            if hasattr(args, prefix + f.name)}


def _add_dataset_args(p: argparse.ArgumentParser, split: str = "train") -> None:
    from jaxbound import report as R

    _add_fields(p, R.ReportConfig, ("dataset", "data_dir", "limit"))
    p.add_argument("--split", default=split, help=f"dataset split (default: {split})")


def _add_common(p: argparse.ArgumentParser, out_default: str, what: str = "output JSON file") -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice: key = jax.random.key(seed) "
                                                       "(default 0)")
    p.add_argument("--out", default=out_default, help=f"{what} (default {out_default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _desc(name: str) -> str:
    for part in __doc__.split("* ``"):
        if part.startswith(f"jaxbound {name}``"):
            body = part[len(f"jaxbound {name}``"):].split("\n\n")[0]
            return "jaxbound " + name + " ".join(body.split())
    return ""


def _report_parser(sub) -> None:
    from jaxbound import report as R

    rp = sub.add_parser("report", help="limits of robustness beside trained models' robust error (main job)",
                        description=_desc("report"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_fields(rp, R.ReportConfig)
    rp.add_argument("--all-pairs", dest="pairs", action="store_const", const="all", default=argparse.SUPPRESS,
                    help="optimal bounds for all class pairs (same as --pairs all)")
    rp.add_argument("--model", default=None,
                    help="your model: 'module:function' returning logits for images [n, H, W, C] in [0, 1] "
                         "(or a folder written by 'jaxbound train --out')")
    rp.add_argument("--fresh", action="store_true", help="recompute every stage (ignore out/stages)")
    _add_common(rp, "jaxbound_report", "output folder")


def _method_parsers(sub) -> None:
    from jaxbound import attacks
    from jaxbound import report as R

    raw = argparse.RawDescriptionHelpFormatter
    cp = sub.add_parser("concentration", help="intrinsic-robustness estimate (Mahloujifar et al. 2019)",
                        description=_desc("concentration"), formatter_class=raw)
    _add_dataset_args(cp)
    _add_fields(cp, R.ReportConfig, ("test_split", "test_limit", "norm", "eps", "alpha", "n_regions", "n_repeats",
                                     "protocol"))
    cp.add_argument("--method", default="auto", choices=["auto", "rectangles", "balls", "halfspace", "halfspaces",
                                                         "best"],
                    help="error-region family (auto: by norm; halfspaces: Prescott et al.'s search; best: the lowest "
                         "valid estimate over the norm's family and the half-space search)")
    _add_common(cp, "concentration.json")

    op = sub.add_parser("optprob", help="optimal cross-entropy and 0-1 losses of a class pair (Bhagoji et al. 2021)",
                        description=_desc("optprob"), formatter_class=raw)
    _add_dataset_args(op)
    op.add_argument("--classes", default="3,7", help="the class pair, e.g. 3,7 (default), or 'all': the optimal "
                                                      "0-1 loss over all classes (Dai et al. 2023)")
    op.add_argument("--degree", type=int, default=3, choices=[2, 3],
                    help="with --classes all: 2 (pair conflicts, max-flow) or 3 (also triples, LP; default)")
    op.add_argument("--n-per-class", type=int, default=None, help="first N points of each class (default all)")
    op.add_argument("--norm", default="l2", help="l1, l2 (default) or linf")
    op.add_argument("--eps", default="1.0,2.0", help="comma-separated budgets (default 1.0,2.0)")
    _add_common(op, "optprob.json")

    at = sub.add_parser("attack", help="clean and robust accuracy of a model under attack",
                        description=_desc("attack"), formatter_class=raw)
    _add_dataset_args(at, split="test")
    at.add_argument("--model", required=True,
                    help="'module:function' returning logits, or a folder written by 'jaxbound train --out'")
    at.add_argument("--attack", default="autoattack", choices=["autoattack", "pgd", "fgm"],
                    help="autoattack (default: APGD-CE, APGD-T, FAB-T, Square, Croce & Hein 2020), pgd or fgm")
    at.add_argument("--n-queries", type=int, default=5000, help="autoattack: Square's queries (default 5000)")
    _add_fields(at, attacks.AttackConfig, ("norm", "eps", "steps", "step_size", "restarts", "random_start",
                                           "bounds", "loss"))
    _add_common(at, "attack.json")


def _train_parser(sub) -> None:
    from jaxbound import attacks, training
    from jaxbound import report as R

    tp = sub.add_parser("train", help="train a model (standard, PGD or TRADES) and save it",
                        description=_desc("train"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_dataset_args(tp)
    _add_fields(tp, R.ReportConfig, ("arch", "widen_factor", "test_split"))
    _add_fields(tp, training.TrainConfig, ("recipe", "epochs", "batch_size", "optimizer", "learning_rate",
                                           "momentum", "weight_decay", "schedule", "eps_warmup", "beta", "select"),
                aliases={"learning_rate": "--lr"})
    _add_fields(tp, attacks.AttackConfig, ("norm", "eps", "steps", "step_size"), prefix="attack_",
                aliases={"norm": "--norm", "eps": "--eps"})
    _add_common(tp, "jaxbound_model", "output folder (model.json, model.msgpack, train.json)")


def _geometry_parsers(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    lp = sub.add_parser("lipschitz", help="dataset Lipschitz constant and inter-class distance",
                        description=_desc("lipschitz"), formatter_class=raw)
    _add_dataset_args(lp)
    lp.add_argument("--norm", default="l2", help="distance norm (default l2, Finlay et al.'s)")
    _add_common(lp, "lipschitz.json")

    demo = sub.add_parser("demo", help="data geometry behind the robustness limits (default dataset: digits)",
                          description=_desc("demo"), formatter_class=raw)
    _add_dataset_args(demo)
    demo.add_argument("--k", type=int, default=50, help="neighbour used for the density rank (default 50)")
    demo.add_argument("--out", default="jaxbound_demo", help="output folder (default ./jaxbound_demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    knn = sub.add_parser("knn", help="k nearest neighbours of every point of a dataset",
                         description=_desc("knn"), formatter_class=raw)
    _add_dataset_args(knn)
    knn.add_argument("--k", type=int, default=50, help="neighbours per point (default 50)")
    knn.add_argument("--norm", default="l1", help="l1, l2, linf or a number p >= 1 (default l1)")
    knn.add_argument("--exclude-self", action="store_true", help="do not count a point as its own neighbour")
    knn.add_argument("--precision", default="float32", choices=["float32", "float64"], help="distance precision")
    knn.add_argument("--block-size", type=int, default=None, help="query rows per device and block")
    knn.add_argument("--checkpoint", default=None,
                     help="folder keeping finished blocks; rerun the same command to resume after an interruption")
    knn.add_argument("--checkpoint-every", type=float, default=30.0,
                     help="with --checkpoint: seconds between saves (default 30; 0 saves every block)")
    knn.add_argument("--out", default="knn.npz", help="output .npz with distances and indices (default knn.npz)")
    knn.add_argument("--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), like the commands' own."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxbound`` argument parser: one subcommand per job (see the module docstring)."""
    ap = _Parser(
        prog="jaxbound",
        description="Fundamental limits of adversarial robustness, measured from data, beside what models reach.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Main job: jaxbound report (see jaxbound report --help).",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _report_parser(sub)
    _method_parsers(sub)
    _train_parser(sub)
    _geometry_parsers(sub)
    for p in sub.choices.values():
        _add_distributed(p)
    return ap


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process runs (jax.distributed)")
    g.add_argument("--distributed", action="store_true",
                   help="run as one process of a multi-process job: every process runs the same command, the work "
                        "is split over all processes' devices, process 0 writes the outputs")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordination service (default: from the environment on SLURM, "
                        "Open MPI, Cloud TPU, or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (default: from the "
                                                                        "environment)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index in [0, num-processes) "
                                                                  "(default: from the environment)")
    g.add_argument("--distributed-timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds to wait for the other processes at start-up and at every exchange before "
                        "failing (default 600)")


def _start_distributed(args) -> None:
    """Join the multi-process job of ``--distributed`` (gloo collectives on CPU); a missing coordinator raises."""
    given = [f"--{n.replace('_', '-')}" for n in ("coordinator", "num_processes", "process_id",
                                                  "distributed_timeout") if getattr(args, n, None) is not None]
    if not args.distributed:
        if given:
            raise ValueError(f"{', '.join(given)}: only with --distributed")
        return
    from jaxbound import distributed

    if args.coordinator is None and not any(v in os.environ for v in distributed.AUTO_DETECT_ENV):
        raise ValueError("--distributed: no coordinator: pass --coordinator HOST:PORT with --num-processes and "
                         "--process-id, or run where JAX finds them in the environment (SLURM, Open MPI, Cloud "
                         "TPU, JAX_COORDINATOR_ADDRESS)")
    if args.coordinator is not None and (args.num_processes is None or args.process_id is None):
        raise ValueError("--coordinator: also pass --num-processes and --process-id")
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(f"--num-processes: must be >= 1, got {args.num_processes}")
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or 1 << 30):
        raise ValueError(f"--process-id: must be in [0, {args.num_processes}), got {args.process_id}")
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               timeout=args.distributed_timeout)
    except ValueError as exc:
        raise ValueError(f"--distributed: {exc}") from None


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _report_settings(args) -> dict:
    """Every :class:`jaxbound.report.ReportConfig` field: the options given, else the field defaults."""
    from jaxbound import report as R

    out = {f.name: f.default for f in dataclasses.fields(R.ReportConfig)}
    out.update(_settings(args, R.ReportConfig))
    return out


def _load(args, split=None):
    from jaxbound import data

    s = _report_settings(args)
    ds = data.load(s["dataset"], split=split or args.split, data_dir=s["data_dir"])
    limit = s["limit"]
    if limit is not None:
        if limit < 2:
            raise ValueError(f"limit: must be >= 2, got {limit}")
        ds = ds.subset(np.arange(min(limit, len(ds))))
    return ds


def _number(text: str, name: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {text!r}") from None


def _ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name}: give at least one integer")
    return vals


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated numbers, got {text!r}") from None


def _check_out(path: Any, *, folder: bool, name: str = "out") -> Path:
    """Check an output path before any work starts; returns it as a ``Path``.

    Args:
      path: the ``--out`` value.
      folder: the command writes a folder (``True``) or one file.
      name: the option named in errors.

    Raises:
      ValueError: the path (or a parent) is a file where a folder is needed,
        a folder where a file is needed, or its nearest existing folder is
        not writable.
    """
    p = Path(str(path)).expanduser()
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a file; give a folder")
    if not folder and p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a folder; give a file name")
    parent = p if folder else p.parent
    parent = parent if str(parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}: cannot create {str(p)!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write to {str(existing)!r} (permission denied)")
    return p


def _write_json(path: str, rec: dict) -> None:
    from jaxbound._io import atomic_write_json

    atomic_write_json(Path(path), rec)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def run_report(args):
    import jax

    from jaxbound import report as R

    cfg = R.ReportConfig(**_settings(args, R.ReportConfig))
    return R.report(cfg, key=jax.random.key(args.seed), model=args.model, out_dir=args.out, resume=not args.fresh,
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

    from jaxbound import concentration as C
    from jaxbound import report as R

    s = _report_settings(args)
    cfg = R.ReportConfig(**{k: s[k] for k in ("norm", "eps", "alpha", "n_regions", "n_repeats", "protocol")})
    tr = _load(args)
    te = _load(args, split=s["test_split"])
    if s["test_limit"] is not None:
        te = te.subset(np.arange(min(s["test_limit"], len(te))))
    key = jax.random.key(args.seed)
    rows, estimates, method = [], [], args.method
    for e in cfg.eps_grid:
        est = C.estimate(tr.flat(), te.flat(), norm=cfg.norm, eps=e, alpha=cfg.alpha, n_regions=list(cfg.n_regions),
                         key=key, method=method, protocol=cfg.protocol, n_repeats=cfg.n_repeats, dataset=tr.name,
                         progress=not args.quiet)
        rows.extend(r.to_dict() for r in est.records)
        estimates.append({"eps": float(e), "method": est.method, "valid": bool(est.valid), "reason": est.reason,
                          "value": est.value})
    method = C.method_for(cfg.norm) if method == "auto" else method
    norm = cfg.norm
    rec = {"command": "concentration", "dataset": tr.to_dict(), "method": method, "norm": str(norm),
           "eps": list(cfg.eps_grid), "alpha": cfg.alpha, "protocol": cfg.protocol, "estimates": estimates,
           "records": rows}
    _write_json(args.out, rec)
    return {"written": args.out, "method": method, "estimates": estimates,
            "report": [{"eps": r["eps"], "method": r["method"], "split": r["split"], "risk": r["risk"],
                        "adv_risk": r["adv_risk"], "adv_risk_ci": r["adv_risk_ci"], "valid": r.get("valid")}
                       for r in rows if r["split"] in ("report", "test")]}


def _multiclass_rows(ds, eps, args) -> dict:
    from jaxbound import report as R

    rows = [R.multiclass_bound(ds, norm=args.norm, eps=e, per_class=args.n_per_class, degree=args.degree,
                                progress=not args.quiet) for e in eps]
    return {"classes": "all", "n": rows[0]["n"] if rows else 0, "degree": rows[0]["degree"] if rows else None,
            "rows": rows}


def run_optprob(args) -> dict:
    from jaxbound import bounds, data
    from jaxbound import report as R

    ds = _load(args)
    eps = R.parse_eps(args.eps)
    if str(args.classes).strip().lower() == "all":
        rec = {"command": "optprob", "dataset": ds.to_dict(), "norm": str(args.norm), "n_per_class": args.n_per_class,
               **_multiclass_rows(ds, eps, args)}
        _write_json(args.out, rec)
        return {"written": args.out, "classes": "all", "n": rec["n"], "degree": rec["degree"],
                "rows": [{k: r[k] for k in ("eps", "zero_one", "zero_one_degree2", "n_edges", "n_hyperedges")}
                         for r in rec["rows"]]}
    cls = _ints(args.classes, "classes")
    if len(cls) != 2:
        raise ValueError(f"classes: give two classes like 3,7 or 'all', got {args.classes!r}")
    xa, xb = data.class_pair(ds, cls[0], cls[1], n_per_class=args.n_per_class)
    rows = []
    for e in eps:
        r = bounds.pair_bounds(xa, xb, eps=e, norm=args.norm, progress=not args.quiet)
        rows.append({"eps": e, "num_edges": r.num_edges, "cross_entropy": r.cross_entropy, "zero_one": r.zero_one,
                     "verified": r.verified, "rounds": r.rounds, "seconds": r.seconds})
    rec = {"command": "optprob", "dataset": ds.to_dict(), "classes": cls, "n": [len(xa), len(xb)],
           "norm": str(args.norm), "rows": rows}
    _write_json(args.out, rec)
    return {"written": args.out, "classes": cls, "rows": [{k: r[k] for k in ("eps", "cross_entropy", "zero_one")}
                                                         for r in rows]}


def run_attack(args) -> dict:
    import jax

    from jaxbound import attacks, metrics
    from jaxbound import report as R

    settings = _settings(args, attacks.AttackConfig)
    for name in ("norm", "eps"):
        if name not in settings:
            raise ValueError(f"{name}: give --{name} (the threat model is never defaulted)")
    cfg = attacks.AttackConfig(**settings)  # the settings are checked before anything is loaded
    ds = _load(args)
    fn = R.load_model(args.model)
    eps32 = np.asarray(cfg.eps_array, np.float32).astype(float).tolist()
    if args.attack == "autoattack":
        steps = 100 if "steps" not in settings else cfg.steps
        per_eps = []
        clean = metrics.accuracy(fn, ds.images, ds.labels)
        for j, e in enumerate(eps32):
            if e == 0.0:  # no attack at a zero budget: the clean accuracy
                per_eps.append({"eps": e, "attacks": [], "robust_accuracy": clean, "robust_accuracy_after": [clean],
                                "warnings": []})
                continue
            res = attacks.autoattack(fn, ds.images, ds.labels, key=jax.random.fold_in(jax.random.key(args.seed), j),
                                     eps=e, norm=cfg.norm, bounds=cfg.bounds, steps=steps, n_queries=args.n_queries,
                                     restarts=cfg.restarts, progress=not args.quiet)
            per_eps.append({"eps": e, "attacks": list(res.attacks), "robust_accuracy": res.accuracy,
                            "robust_accuracy_after": np.asarray(res.robust_accuracy, float).tolist(),
                            "warnings": list(res.checks.get("warnings", []))})
        n, robust = len(ds), [r["robust_accuracy"] for r in per_eps]
        extra = {"steps": steps, "n_queries": args.n_queries, "per_eps": per_eps}
    else:
        if args.attack == "pgd":
            res = attacks.pgd(fn, ds.images, ds.labels, cfg, key=jax.random.key(args.seed), progress=not args.quiet)
        else:
            res = attacks.fgm(fn, ds.images, ds.labels, cfg)
        ra = metrics.robust_accuracy(fn, ds.images, ds.labels, res)
        n, clean, robust, extra = ra.n, ra.clean_accuracy, ra.robust_accuracy, {"steps": cfg.steps}
    rec = {"command": "attack", "dataset": ds.to_dict(), "model": args.model, "attack": args.attack,
           "norm": str(cfg.norm), "eps": eps32, "restarts": cfg.restarts, "bounds": cfg.bounds, "n": n,
           "clean_accuracy": clean, "robust_accuracy": robust, **extra}
    _write_json(args.out, rec)
    return {k: rec[k] for k in ("n", "eps", "clean_accuracy", "robust_accuracy")} | {"written": args.out}


def run_train(args) -> dict:
    import jax

    from jaxbound import attacks, metrics, models, training

    rs = _report_settings(args)
    tr = _load(args)
    te = _load(args, split=rs["test_split"])
    attack = _settings(args, attacks.AttackConfig, prefix="attack_")
    if len(attack.get("eps", ())) == 1:
        attack["eps"] = attack["eps"][0]  # training attacks take one budget
    if attack and not {"norm", "eps"} <= set(attack):
        raise ValueError("--norm and --eps: a training attack needs both (the threat model is always stated)")
    config = training.TrainConfig(**_settings(args, training.TrainConfig),
                                  attack=training.training_attack(**attack) if attack else None)
    widen = models.resolve_widen(rs["arch"], rs["widen_factor"])
    module = models.build(rs["arch"], num_classes=tr.num_classes, widen_factor=widen)
    t0 = time.perf_counter()
    res = training.train(module, (tr.images, tr.labels), config, key=jax.random.key(args.seed),
                         progress=not args.quiet, checkpoint_dir=str(Path(args.out) / "checkpoint"))
    seconds = time.perf_counter() - t0
    acc = metrics.accuracy(models.logits_fn(module, res.params), te.images, te.labels)
    rec = {"command": "train", "dataset": tr.to_dict(), "recipe": config.recipe, "arch": rs["arch"],
           "widen_factor": widen, "config": config.to_dict(), "seconds": seconds, "test_split": rs["test_split"],
           "test_accuracy": acc, "train": res.to_dict()}
    models.save(args.out, arch=rs["arch"], num_classes=tr.num_classes, widen_factor=widen,
                input_shape=tr.shape, params=res.params, record={k: v for k, v in rec.items() if k != "train"})
    _write_json(str(Path(args.out) / "train.json"), rec)
    return {"written": args.out, "test_accuracy": acc, "seconds": seconds, "steps": int(res.steps)}


def run_lipschitz(args) -> dict:
    from jaxbound import report as R

    ds = _load(args)
    g = R.geometry_summary(ds.flat(), ds.labels, norm=args.norm, progress=not args.quiet)
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
                       progress=not args.quiet, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
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


_FOLDER_OUTPUTS = ("report", "demo", "train")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    _use_all_cores()  # before anything imports jax (building the parser imports the configs)
    args = build_parser().parse_args(argv)
    try:
        _start_distributed(args)
        if getattr(args, "out", None) is not None:
            _check_out(args.out, folder=args.command in _FOLDER_OUTPUTS)
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
    except OSError as exc:
        print(f"jaxbound {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
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
