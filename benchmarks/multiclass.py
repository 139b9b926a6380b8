"""Multi-class optimal 0-1 loss benchmark (Dai et al. 2023): L*(2) and L*(3) on MNIST / Fashion-MNIST.

Points: the first ``n`` training images of each class in file order, classes
ascending, pixels ``x / 255`` in float64, uniform weights ``1 / N`` (the
protocol of the authors' reference values). Each item runs in its own
process, so its peak memory (``resource.getrusage``) is its own.

Items:

* ``speed10k``: target (a). L*(2) on 10,000 MNIST points (1,000 per class),
  l2, eps = 3.0, end to end (pair edges -> flow -> verify), cold (first call,
  compilation included) and warm, against the baseline ``scipy.spatial.
  distance.cdist`` of the same points (float64, all pairs), timed in the
  same process.
* ``full60k``: target (b). L*(2) on all 60,000 MNIST training points, l2,
  eps = 3.0: seconds and peak RSS.
* ``full-<dataset>``: L*(2) on the whole training set of ``<dataset>`` at
  ``--full-eps`` in ``--full-norm`` (Fashion-MNIST's classes overlap at a
  smaller l2 radius than MNIST's: its graph at eps = 3.0 would hold about
  15 million edges), with seconds, edge count and peak RSS.
* ``l3``: target (c). L*(3) on 1,000 MNIST points per class, l2, eps = 3.5:
  pair edges, triangles, hyperedges, LP seconds (constraint generation with
  HiGHS' dual simplex, see :func:`jaxbound.bounds.multiclass_zero_one`).
* ``grid-<dataset>-<norm>``: L*(2) over an eps grid from 0 to above 0.5 on
  ``--grid-n`` points per class: the pair edges are computed once at the
  largest eps (:func:`jaxbound.bounds.conflict_hypergraph`) with their float64
  lengths (the expression of the exact boundary test of ``radius_pairs``), and
  each smaller eps keeps the edges of length ``<= 2 eps``; one grid point is
  recomputed directly and must give the same edges (L*(2) never exceeds 1/2,
  since ``q = 1/2`` is feasible; only L*(3) can go above it). L*(3) on the same grid
  for ``--l3-n`` points per class (the LP), while the triangle count stays
  below ``--max-triangles`` (``--l3-n 0`` leaves it out).
* ``l3-<dataset>-<norm>``: L*(3) beside L*(2) on ``--l3-n`` points per class at
  each eps of ``--grid-eps``, while the triangle count stays below
  ``--max-triangles`` (L*(3) can exceed 1/2 where L*(2) cannot). ``--grid-eps`` replaces the
  default grid of the grid items run.

  l_inf distances between pixel vectors in [0, 1] are multiples of 1/255 and never
  exceed 1, so at l_inf eps = 0.5 every pair of different labels is an edge and
  L*(2) = 1/2 exactly with balanced classes (q = 1/2 everywhere is optimal); grid
  points between the distance steps (eps = 0.491, 0.493, ... sit between k/510)
  avoid boundary ties. MNIST's closest l_inf pairs of different classes are
  249/255 apart, so its l_inf bound stays 0 up to eps = 0.488.

Usage:
  python benchmarks/multiclass.py              # everything
  python benchmarks/multiclass.py --quick      # small sizes (a smoke test)
  python benchmarks/multiclass.py --items speed10k,l3
  python benchmarks/multiclass.py --items l3 --update   # merge into the existing JSON
  python benchmarks/multiclass.py --items grid-fmnist-l2 --grid-eps 0,1,2,3,4 --update
  python benchmarks/multiclass.py --items full-fmnist --full-eps 2.5 --update

Writes ``benchmarks/results/multiclass.json`` (``multiclass_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from _common import require_data_dir  # noqa: E402

FOLDERS = {"mnist": "mnist", "fmnist": "fashion-mnist"}
GRIDS = {
    ("mnist", "l2"): [0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
    ("mnist", "linf"): [0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45],
    ("fmnist", "l2"): [0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
    ("fmnist", "linf"): [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4],
}


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def first_per_class(dataset: str, n_per_class: int | None, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_per_class`` training images of each class in file order, classes ascending.

    Returns ``x [N, 784]`` float64 pixels ``/ 255`` and ``labels [N]`` int64
    (class 0 first); ``n_per_class=None`` takes every image of each class.
    """
    from jaxbound import bounds, data

    root = require_data_dir(data_dir, need=(FOLDERS[dataset],)) / FOLDERS[dataset]
    images = data.read_idx(root / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    idx = bounds.first_per_class(labels, n=n_per_class)
    x = images[idx].reshape(idx.size, -1).astype(np.float64) / 255.0
    return x, labels[idx]


def edge_lengths(x: np.ndarray, edges: np.ndarray, norm: str) -> np.ndarray:
    """``[E]`` float64 lengths, the same expression as the exact boundary test of ``radius_pairs``."""
    out = np.empty(edges.shape[0])
    step = 20000
    for lo in range(0, edges.shape[0], step):
        diff = np.abs(x[edges[lo:lo + step, 0]] - x[edges[lo:lo + step, 1]])
        out[lo:lo + step] = np.sqrt((diff * diff).sum(axis=1)) if norm == "l2" else diff.max(axis=1)
    return out


def solve_l2(x, y, eps, norm) -> dict:
    """Pair edges -> L*(2) by max flow -> verify, timed."""
    from jaxbound import bounds

    t0 = time.perf_counter()
    g = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm)
    t1 = time.perf_counter()
    r = bounds.multiclass_zero_one(g)
    t2 = time.perf_counter()
    v = r.verify(1e-12)
    t3 = time.perf_counter()
    return {"n": int(g.n), "eps": eps, "norm": norm, "edges": g.num_edges, "loss_l2": r.loss,
            "backend": r.backend, "verified": v.passed, "max_violation": v.max_violation,
            "seconds": {"edges": t1 - t0, "flow": t2 - t1, "verify": t3 - t2, "end_to_end": t3 - t0}}


def item_speed10k(args) -> dict:
    from scipy.spatial.distance import cdist

    x, y = first_per_class("mnist", args.speed_n, args.data_dir)
    cold = solve_l2(x, y, 3.0, "l2")
    warm = solve_l2(x, y, 3.0, "l2")
    t0 = time.perf_counter()
    d = cdist(x, x)
    t_cdist = time.perf_counter() - t0
    del d
    out = {"n": int(x.shape[0]), "eps": 3.0, "norm": "l2", "cold": cold, "warm": warm,
           "baseline": "scipy.spatial.distance.cdist(x, x), float64, same points", "cdist_seconds": t_cdist,
           "ratio_cold": cold["seconds"]["end_to_end"] / t_cdist,
           "ratio_warm": warm["seconds"]["end_to_end"] / t_cdist, "target_ratio": 0.25}
    print(f"speed10k: L*(2) {cold['loss_l2']:.6f}, {cold['edges']} edges; jaxbound cold "
          f"{cold['seconds']['end_to_end']:.1f} s, warm {warm['seconds']['end_to_end']:.1f} s; cdist {t_cdist:.1f} s; "
          f"ratio cold {out['ratio_cold']:.3f}, warm {out['ratio_warm']:.3f} (target <= 0.25)", file=sys.stderr)
    return out


def item_full60k(args, dataset: str = "mnist", eps: float = 3.0, norm: str = "l2") -> dict:
    x, y = first_per_class(dataset, args.full_n, args.data_dir)
    out = solve_l2(x, y, eps, norm)
    out["dataset"] = dataset
    out["peak_rss_gb"] = peak_rss_gb()
    out["targets"] = {"seconds": 600, "peak_rss_gb": 8}
    print(f"full {dataset}: n {out['n']}, {norm} eps {eps}, L*(2) {out['loss_l2']:.6f}, {out['edges']} edges, "
          f"{out['seconds']['end_to_end']:.1f} s, peak RSS {out['peak_rss_gb']:.2f} GB", file=sys.stderr)
    return out


def solve_l3(x, y, eps, norm) -> dict:
    from jaxbound import bounds

    t0 = time.perf_counter()
    g = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm, degree=3)
    t1 = time.perf_counter()
    r3 = bounds.multiclass_zero_one(g)
    t2 = time.perf_counter()
    v = r3.verify(1e-7)
    r2 = bounds.multiclass_zero_one(bounds.hypergraph_from_edges(y, g.edges))
    return {"n": int(g.n), "eps": eps, "norm": norm, "edges": g.num_edges, "triangles": g.num_triangles,
            "hyperedges": g.num_hyperedges, "loss_l3": r3.loss, "loss_l2": r2.loss, "verified": v.passed,
            "max_violation": v.max_violation,
            "seconds": {"hypergraph": t1 - t0, "lp": t2 - t1, "end_to_end": t2 - t0}}


def item_l3(args) -> dict:
    x, y = first_per_class("mnist", args.l3_target_n, args.data_dir)
    out = solve_l3(x, y, 3.5, "l2")
    out["peak_rss_gb"] = peak_rss_gb()
    out["target_seconds"] = 600
    print(f"l3: n {out['n']}, L*(3) {out['loss_l3']:.6f} (L*(2) {out['loss_l2']:.6f}), {out['edges']} edges, "
          f"{out['hyperedges']} hyperedges of {out['triangles']} triangles, {out['seconds']['end_to_end']:.1f} s",
          file=sys.stderr)
    return out


def grid_l2(x, y, norm, grid) -> list:
    """L*(2) over the grid from one pair-edge pass at the largest eps."""
    from jaxbound import bounds

    t0 = time.perf_counter()
    g = bounds.conflict_hypergraph(x, y, eps=max(grid), norm=norm)
    t_edges = time.perf_counter() - t0
    lengths = edge_lengths(x, g.edges, norm)
    rows = []
    for eps in grid:
        t1 = time.perf_counter()
        sub = bounds.hypergraph_from_edges(y, g.edges[lengths <= 2.0 * eps])
        r = bounds.multiclass_zero_one(sub)
        ok = r.verify(1e-12).passed
        rows.append({"eps": eps, "edges": sub.num_edges, "loss_l2": r.loss, "verified": ok,
                     "seconds_flow": time.perf_counter() - t1})
    rows[0]["seconds_edges_at_max_eps"] = t_edges
    return rows


def grid_l3(x, y, norm, grid, max_triangles) -> list:
    from jaxbound import bounds

    rows = []
    for eps in grid:
        t0 = time.perf_counter()
        g2 = bounds.conflict_hypergraph(x, y, eps=eps, norm=norm)
        # sum of deg^2 / 2 bounds the triangle search: skip the LP when it would not fit
        deg = np.bincount(g2.edges.ravel(), minlength=y.size).astype(np.int64)
        bound = int((deg**2).sum() // 2)
        if bound > max_triangles * 50:
            rows.append({"eps": eps, "edges": g2.num_edges, "skipped": f"{bound} candidate triangles"})
            break
        r = solve_l3(x, y, eps, norm)
        if r["triangles"] > max_triangles:
            r["note"] = "above --max-triangles; larger eps skipped"
        rows.append(r)
        rows[-1]["seconds_total"] = time.perf_counter() - t0
        if r["triangles"] > max_triangles:
            break
    return rows


def item_grid(args, dataset: str, norm: str) -> dict:
    grid = args.grid_eps or GRIDS[(dataset, norm)]
    x, y = first_per_class(dataset, args.grid_n, args.data_dir)
    out = {"dataset": dataset, "norm": norm, "n": int(x.shape[0]), "n_per_class": args.grid_n,
           "l2": grid_l2(x, y, norm, grid)}
    # one grid point recomputed directly must give the same edge count
    mid = grid[len(grid) // 2]
    direct = solve_l2(x, y, mid, norm)
    row = next(r for r in out["l2"] if r["eps"] == mid)
    out["direct_check"] = {"eps": mid, "edges": direct["edges"], "loss_l2": direct["loss_l2"],
                           "same": direct["edges"] == row["edges"] and direct["loss_l2"] == row["loss_l2"]}
    if not args.l3_n:
        out["l3"] = None
        out["peak_rss_gb"] = peak_rss_gb()
        print(f"grid {dataset} {norm}: " + ", ".join(f"{r['eps']}: {r['loss_l2']:.4f}" for r in out["l2"]),
              file=sys.stderr)
        return out
    xs, ys = first_per_class(dataset, args.l3_n, args.data_dir)
    out["l3"] = {"n": int(xs.shape[0]), "n_per_class": args.l3_n,
                 "rows": grid_l3(xs, ys, norm, [e for e in grid if e > 0], args.max_triangles)}
    out["peak_rss_gb"] = peak_rss_gb()
    print(f"grid {dataset} {norm}: " + ", ".join(f"{r['eps']}: {r['loss_l2']:.4f}" for r in out["l2"]),
          file=sys.stderr)
    return out


def run_item(args, name: str) -> dict:
    if name == "speed10k":
        return item_speed10k(args)
    if name == "full60k":
        return item_full60k(args)
    if name == "l3":
        return item_l3(args)
    if name.startswith("l3-"):
        _, dataset, norm = name.split("-")
        xs, ys = first_per_class(dataset, args.l3_n, args.data_dir)
        return {"dataset": dataset, "norm": norm, "n": int(xs.shape[0]), "n_per_class": args.l3_n,
                "rows": grid_l3(xs, ys, norm, args.grid_eps or [e for e in GRIDS[(dataset, norm)] if e > 0],
                                args.max_triangles), "peak_rss_gb": peak_rss_gb()}
    if name.startswith("full-"):
        return item_full60k(args, name.split("-", 1)[1], args.full_eps, args.full_norm)
    _, dataset, norm = name.split("-")
    return item_grid(args, dataset, norm)


ITEMS = ["speed10k", "full60k", "l3", "grid-mnist-l2", "grid-mnist-linf", "grid-fmnist-l2", "grid-fmnist-linf"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default=",".join(ITEMS))
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per item")
    ap.add_argument("--grid-n", type=int, default=None, help="points per class of the L*(2) grids (default 1000)")
    ap.add_argument("--l3-n", type=int, default=None,
                    help="points per class of the L*(3) grids (default 200; 0 leaves them out)")
    ap.add_argument("--grid-eps", default=None, help="comma-separated eps grid replacing the default one")
    ap.add_argument("--full-eps", type=float, default=2.5, help="eps of the full-<dataset> items")
    ap.add_argument("--full-norm", default="l2", choices=["l2", "linf"], help="norm of the full-<dataset> items")
    ap.add_argument("--max-triangles", type=int, default=None, help="largest triangle count of an L*(3) grid point")
    ap.add_argument("--update", action="store_true", help="merge the items run into the existing JSON")
    args = ap.parse_args()
    quick = args.quick
    args.speed_n = 100 if quick else 1000
    args.full_n = 300 if quick else None
    args.l3_target_n = 100 if quick else 1000
    args.grid_n = args.grid_n or (100 if quick else 1000)
    args.l3_n = (50 if quick else 200) if args.l3_n is None else args.l3_n
    args.grid_eps = [float(e) for e in args.grid_eps.split(",")] if args.grid_eps else None
    args.max_triangles = args.max_triangles or (200_000 if quick else 2_000_000)
    if args.worker:
        print(json.dumps(run_item(args, args.worker), default=float))
        return
    out_path = HERE / "results" / ("multiclass_quick.json" if quick else "multiclass.json")
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
               "quick": quick, "items": {}}
    if args.update and out_path.exists():
        results = json.loads(out_path.read_text())
        results.setdefault("items", {})
    for name in args.items.split(","):
        load_before = os.getloadavg()
        cmd = [sys.executable, __file__, "--worker", name, "--grid-n", str(args.grid_n), "--l3-n", str(args.l3_n),
               "--max-triangles", str(args.max_triangles), "--full-eps", str(args.full_eps),
               "--full-norm", args.full_norm] + (["--quick"] if quick else [])
        if args.grid_eps:
            cmd += ["--grid-eps", ",".join(str(e) for e in args.grid_eps)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            rec = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
                "error": proc.stderr.strip().splitlines()[-3:]}
            sys.stderr.write("".join(ln + "\n" for ln in proc.stderr.splitlines()
                                     if not ln.lstrip().startswith(("Warning", "warnings"))))
        except subprocess.TimeoutExpired:
            rec = {"error": f"timed out after {args.timeout} s"}
        rec["wall_seconds"] = time.perf_counter() - t0
        rec["command"] = " ".join(["python", "benchmarks/multiclass.py"] + sys.argv[1:])
        rec["loadavg_before"] = list(load_before)
        rec["loadavg_after"] = list(os.getloadavg())
        results["items"][name] = rec
        out_path.write_text(json.dumps(results, indent=1, default=float))
        print(f"{name}: done in {rec['wall_seconds']:.0f} s" + (f" ERROR {rec['error']}" if "error" in rec else ""))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
