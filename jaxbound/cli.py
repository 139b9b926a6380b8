"""The ``jaxbound`` command line.

Sub-commands:

* ``jaxbound demo``: the geometry of a dataset that every robustness limit
  starts from, on the embedded digits by default: k-NN density ranks
  (Mahloujifar et al. 2019, §4.1: l1 distance to the k-th neighbour, the
  point itself counted), nearest out-of-class distances in l1, l2 and linf,
  and the largest budget eps below which no two differently-labelled points
  can be confused (half the smallest out-of-class distance; Finlay et al.
  2019's dataset Lipschitz constant is its reciprocal over two). Prints a
  table and writes ``demo.json`` into ``--out``.
* ``jaxbound knn``: k nearest neighbours of a dataset's points, written as
  ``.npz`` (resumable with ``--checkpoint FOLDER``).

Errors in the arguments (unknown dataset, missing data folder, bad numbers)
print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="'digits' (embedded, default), 'mnist', 'fashion_mnist' or 'tfds:<name>'")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (MNIST-style) or the tensorflow-datasets folder; "
                        "default $JAXBOUND_DATA_DIR")
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jaxbound",
        description="Fundamental limits of adversarial robustness, measured from data.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="data geometry behind the robustness limits (default dataset: digits)",
                          description=__doc__.split("* ``jaxbound knn``")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_dataset_args(demo)
    demo.add_argument("--k", type=int, default=50, help="neighbour used for the density rank (default 50)")
    demo.add_argument("--out", default="jaxbound_demo", help="output folder (default ./jaxbound_demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    knn = sub.add_parser("knn", help="k nearest neighbours of every point of a dataset")
    _add_dataset_args(knn)
    knn.add_argument("--k", type=int, default=50, help="neighbours per point (default 50)")
    knn.add_argument("--norm", default="l1", help="l1, l2, linf or a number p >= 1 (default l1)")
    knn.add_argument("--exclude-self", action="store_true", help="do not count a point as its own neighbour")
    knn.add_argument("--precision", default="float32", choices=["float32", "float64"])
    knn.add_argument("--block-size", type=int, default=None, help="query rows per device and block")
    knn.add_argument("--checkpoint", default=None, help="folder keeping finished blocks; rerun the same command to resume after an interruption")
    knn.add_argument("--out", default="knn.npz", help="output .npz with distances and indices (default knn.npz)")
    knn.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _load(args):
    from jaxbound import data

    ds = data.load(args.dataset, split=args.split, data_dir=args.data_dir)
    if args.limit is not None:
        if args.limit < 2:
            raise ValueError(f"limit: must be >= 2, got {args.limit}")
        ds = ds.subset(np.arange(min(args.limit, len(ds))))
    return ds


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
    import io

    buf = io.BytesIO()
    np.savez(buf, distances=res.distances, indices=res.indices, labels=ds.labels)
    out = Path(args.out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            rec = run_demo(args)
            _print_demo(rec, args.out)
        elif args.command == "knn":
            out = run_knn(args)
            print(json.dumps({"written": str(out), "k": args.k, "norm": args.norm}))
    except ValueError as exc:
        print(f"jaxbound {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxbound {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
