"""OptProb benchmark (Bhagoji et al. 2021): minimum adversarial cross-entropy on MNIST / Fashion-MNIST 3 vs 7.

Sections (each measurement runs in its own process, so its peak memory is its own):

* ``target``: MNIST 3 vs 7, the first 5000 of each class in file order, l2,
  eps = 3.5, end to end (distances -> graph -> OptProb -> verify), cold (first
  call, JIT compilation included) and warm (median of repeats); against the
  *reference*: a re-implementation of the authors' published approach as
  described in ANCHORS.md (dense float64 distance matrix, dense adjacency,
  a dense (N+2) x (N+2) capacity matrix per recursive call, SciPy max-flow,
  Python recursion, uniform weights), timed in the same run.
* ``sweep``: MNIST and Fashion-MNIST 3 vs 7, 5000 per class, l2 eps in
  {2.0, 2.5, ..., 5.0} and linf eps in {0.3, 0.4, 0.5}: edges, cross-entropy
  bound, 0-1 bound and seconds split into distances / graph / OptProb /
  verify / 0-1 (single runs; the distance time includes the kernel's
  compilation for that radius).
* ``cvxpy``: OptProb against program (3) solved by cvxpy with its default
  solver (the log-objective program, as the authors' code states it) on the
  same graphs, built beforehand, for growing n per class (MNIST, l2, eps in
  {3.5, 4.0, 4.5}); OptProb is timed with each max-flow backend (median of 7
  warm calls); cvxpy gets a time limit per solve. Target: OptProb >= 300x
  cvxpy at 1,000 per class, eps = 4.0.
* ``full``: all MNIST 3s and 7s (6131 + 6265) at l2 eps = 5.0 end to end
  (distances -> graph -> OptProb; the verification and the 0-1 bound timed
  apart): time split and peak memory, against ``scipy.spatial.distance.cdist``
  of the same points (float64) timed in the same process. Target: end to end
  <= 0.25x cdist.
* ``backends``: OR-Tools vs SciPy vs networkx max-flow on the same graphs
  (values must be identical to 1e-9).

Usage:
  python benchmarks/optprob.py                         # everything
  python benchmarks/optprob.py --sections target,full  # some sections
  python benchmarks/optprob.py --resume                # skip items already in the JSON
  python benchmarks/optprob.py --update --sections cvxpy,full,backends  # rerun these, keep the rest
  python benchmarks/optprob.py --quick                 # small sizes, a smoke test

Writes ``benchmarks/results/optprob.json`` (``optprob_quick.json`` with
``--quick``) after every finished item.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

DATASETS = {"mnist": "mnist", "fmnist": "fashion_mnist"}
L2_EPS = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
LINF_EPS = [0.3, 0.4, 0.5]


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def load_pair(dataset: str, n_per_class: int | None):
    from jaxbound import data

    ds = data.load(DATASETS[dataset], split="train", data_dir=require_data_dir(need=("mnist", "fashion-mnist")))
    xa, xb = data.class_pair(ds, 3, 7, n_per_class=n_per_class)
    return (np.ascontiguousarray(xa.reshape(xa.shape[0], -1)), np.ascontiguousarray(xb.reshape(xb.shape[0], -1)))


# ----------------------------------------------------------------------------- jaxbound pipeline


def run_pipeline(xa, xb, eps: float, norm: str, *, zero_one: bool = True, backend: str = "auto") -> dict:
    """distances -> graph -> OptProb -> verify (and the 0-1 bound), timed step by step."""
    from jaxbound import bounds, geometry

    t0 = time.perf_counter()
    pairs = geometry.radius_pairs(xa, xb, radius=2.0 * eps, norm=norm)
    t1 = time.perf_counter()
    graph = bounds.graph_from_edges(xa.shape[0], xb.shape[0], pairs.rows, pairs.cols)
    graph = dataclasses.replace(graph, eps=eps, norm=norm)
    del pairs
    t2 = time.perf_counter()
    res = bounds.optprob(graph, backend=backend)
    t3 = time.perf_counter()
    ver = res.verify(1e-9)
    t4 = time.perf_counter()
    t_solve = t3 - t0  # distances -> graph -> OptProb
    out = {
        "n_a": int(xa.shape[0]), "n_b": int(xb.shape[0]), "eps": eps, "norm": norm,
        "edges": graph.num_edges, "cross_entropy": res.loss, "rounds": res.rounds, "parts": res.num_parts,
        "backend": res.backend, "verify_passed": ver.passed, "verify_max_violation": ver.max_violation,
        "seconds": {"distances": t1 - t0, "graph": t2 - t1, "optprob": t3 - t2, "verify": t4 - t3,
                    "end_to_end": t4 - t0, "distances_graph_optprob": t_solve},
    }
    if zero_one:
        z = bounds.min_zero_one_loss(graph, backend=backend)
        t5 = time.perf_counter()
        out["zero_one"] = z.loss
        out["zero_one_verify_passed"] = z.verify(1e-9).passed
        out["seconds"]["zero_one"] = t5 - t4
    out["_q"] = res.q
    return out


# ----------------------------------------------------------------------------- reference (authors' approach)


def reference_pipeline(xa, xb, eps: float) -> dict:
    """Dense re-implementation of the authors' approach (uniform weights, l2), see the module docstring."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow
    from scipy.spatial.distance import cdist

    t0 = time.perf_counter()
    dist = cdist(xa.astype(np.float64), xb.astype(np.float64))  # dense [n_a, n_b]
    t1 = time.perf_counter()
    adj = dist <= 2.0 * eps
    del dist
    t2 = time.perf_counter()
    n_a, n_b = adj.shape
    q = np.empty(n_a + n_b)

    def solve(a_idx: np.ndarray, b_idx: np.ndarray, depth: int = 0) -> None:
        na, nb = a_idx.size, b_idx.size
        if na == 0 or nb == 0:
            q[a_idx] = 1.0
            q[n_a + b_idx] = 1.0
            return
        n = na + nb + 2
        cap = np.zeros((n, n), np.int64)  # dense network: s=0, t=1, A, B
        cap[0, 2:2 + na] = nb
        cap[2 + na:, 1] = na
        cap[2:2 + na, 2 + na:] = adj[np.ix_(a_idx, b_idx)] * (na * nb + 1)
        res = maximum_flow(csr_matrix(cap), 0, 1)
        residual = cap - res.flow.toarray()
        reach = breadth_first_order(csr_matrix(residual > 0), 0, directed=True, return_predecessors=False)
        side = np.zeros(n, bool)
        side[reach] = True
        sa, sb = side[2:2 + na], side[2 + na:]
        if not sa.any() and not sb.any():
            q[a_idx] = na / (na + nb)
            q[n_a + b_idx] = nb / (na + nb)
            return
        solve(a_idx[sa], b_idx[sb], depth + 1)
        solve(a_idx[~sa], b_idx[~sb], depth + 1)

    solve(np.arange(n_a), np.arange(n_b))
    t3 = time.perf_counter()
    loss = float(-np.mean(np.log(q)))
    return {"cross_entropy": loss, "edges": int(adj.sum()),
            "seconds": {"distances": t1 - t0, "graph": t2 - t1, "optprob": t3 - t2, "end_to_end": t3 - t0},
            "_q": q}


# ----------------------------------------------------------------------------- workers


def worker(args) -> dict:
    kind = args.worker
    if kind == "pipeline":
        xa, xb = load_pair(args.dataset, args.n)
        out = {"dataset": args.dataset, "runs": []}
        reps = max(1, args.repeats)
        for eps in args.eps:
            runs = [run_pipeline(xa, xb, eps, args.norm, zero_one=not args.no_zero_one, backend=args.backend)]
            for _ in range(reps - 1):
                runs.append(run_pipeline(xa, xb, eps, args.norm, zero_one=False, backend=args.backend))
            first = runs[0]
            qs = [r.pop("_q") for r in runs]
            item = dict(first)
            item["cold_seconds"] = first["seconds"]
            if reps > 1:
                warm = runs[1:]
                item["warm_seconds_median"] = {k: float(np.median([r["seconds"][k] for r in warm]))
                                               for k in warm[0]["seconds"]}
                item["warm_seconds_min"] = {k: float(np.min([r["seconds"][k] for r in warm])) for k in warm[0]["seconds"]}
                item["repeat_max_q_diff"] = float(max(np.abs(qq - qs[0]).max() for qq in qs))
            del item["seconds"]
            out["runs"].append(item)
        if args.save_q:
            np.save(args.save_q, qs[0])
        if args.cdist:
            from scipy.spatial.distance import cdist

            t = time.perf_counter()
            d = cdist(xa.astype(np.float64), xb.astype(np.float64))
            out["cdist_seconds"] = time.perf_counter() - t
            del d
            out["baseline"] = "scipy.spatial.distance.cdist(xa, xb), float64, the same points, same process"
            run0 = out["runs"][0]
            secs = run0["cold_seconds"]
            out["ratio_distances_graph_optprob"] = secs["distances_graph_optprob"] / out["cdist_seconds"]
            out["ratio_end_to_end_with_verify"] = secs["end_to_end"] / out["cdist_seconds"]
            if "warm_seconds_min" in run0:
                out["ratio_distances_graph_optprob_warm"] = (run0["warm_seconds_min"]["distances_graph_optprob"]
                                                             / out["cdist_seconds"])
            out["target_ratio"] = 0.25
        out["peak_rss_gb"] = peak_rss_gb()
        out["load_average"] = os.getloadavg()
        return out
    if kind == "reference":
        xa, xb = load_pair(args.dataset, args.n)
        res = reference_pipeline(xa, xb, args.eps[0])
        q = res.pop("_q")
        if args.save_q:
            np.save(args.save_q, q)
        res["peak_rss_gb"] = peak_rss_gb()
        return res
    if kind == "cvxpy":
        return cvxpy_worker(args)
    if kind == "backends":
        return backends_worker(args)
    raise SystemExit(f"unknown worker {kind}")


def _median_seconds(fn, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def cvxpy_worker(args) -> dict:
    import warnings

    import cvxpy as cp

    from jaxbound import bounds

    xa, xb = load_pair(args.dataset, args.n)
    eps = args.eps[0]
    g = bounds.conflict_graph(xa, xb, eps=eps, norm="l2")  # built beforehand: not timed
    res = {be: bounds.optprob(g, backend=be) for be in ("ortools", "scipy")}  # warm-up (imports)
    t_be = {be: _median_seconds(lambda be=be: bounds.optprob(g, backend=be)) for be in res}
    res = res["ortools"]
    t_opt = t_be["ortools"]
    ev = g.edge_vertices()
    q = cp.Variable(g.num_vertices)
    cons = [q <= 1] + ([q[ev[:, 0]] + q[ev[:, 1]] <= 1] if ev.size else [])
    prob = cp.Problem(cp.Minimize(-cp.sum(cp.multiply(g.p, cp.log(q)))), cons)
    t = time.perf_counter()
    solver = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prob.solve()  # cvxpy's default solver for this exponential-cone program
            status = prob.status
            solver = prob.solver_stats.solver_name
        except Exception as exc:  # solver failure is a result, not a crash
            status = f"error: {type(exc).__name__}"
    t_cvx = time.perf_counter() - t
    value = prob.value if prob.value is not None and math.isfinite(prob.value) else None
    return {"n_per_class": args.n, "eps": eps, "edges": g.num_edges, "optprob_seconds_median": t_opt,
            "optprob_seconds_median_by_backend": t_be, "optprob_backend": res.backend,
            "optprob_loss": res.loss, "cvxpy_seconds": t_cvx, "cvxpy_solver": solver, "cvxpy_status": status,
            "cvxpy_value": value, "abs_diff": None if value is None else abs(value - res.loss),
            "speedup": t_cvx / t_opt, "speedup_scipy_backend": t_cvx / t_be["scipy"], "rounds": res.rounds,
            "load_average": os.getloadavg()}


def backends_worker(args) -> dict:
    from jaxbound import bounds

    xa, xb = load_pair(args.dataset, args.n)
    eps = args.eps[0]
    g = bounds.conflict_graph(xa, xb, eps=eps, norm=args.norm)
    out = {"dataset": args.dataset, "n_per_class": args.n, "eps": eps, "norm": args.norm, "edges": g.num_edges}
    res = {}
    for be in ("ortools", "scipy", "networkx"):
        t = time.perf_counter()
        r = bounds.optprob(g, backend=be)
        t1 = time.perf_counter()
        z = bounds.min_zero_one_loss(g, backend=be)
        t2 = time.perf_counter()
        res[be] = (r, z)
        out[be] = {"optprob_seconds": t1 - t, "zero_one_seconds": t2 - t1, "cross_entropy": r.loss,
                   "zero_one": z.loss, "verify_max_violation": r.verify().max_violation,
                   "zero_one_verify_max_violation": z.verify().max_violation}
    (rn, zn) = res["networkx"]
    out["max_abs_q_diff"] = max(float(np.abs(res[be][0].q - rn.q).max()) for be in ("ortools", "scipy"))
    out["abs_loss_diff"] = max(abs(res[be][0].loss - rn.loss) for be in ("ortools", "scipy"))
    out["abs_zero_one_diff"] = max(abs(res[be][1].loss - zn.loss) for be in ("ortools", "scipy"))
    out["identical_to_1e-9"] = bool(out["max_abs_q_diff"] <= 1e-9 and out["abs_loss_diff"] <= 1e-9
                                    and out["abs_zero_one_diff"] <= 1e-9)
    return out


def spawn(argv: list[str], timeout: float | None = None) -> dict:
    """Run one worker in a fresh process; returns its JSON (or an error record)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s", "wall_seconds": time.perf_counter() - t}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "wall_seconds": time.perf_counter() - t}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


# ----------------------------------------------------------------------------- orchestration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="target,sweep,cvxpy,full,backends")
    ap.add_argument("--resume", action="store_true", help="skip items already in the output JSON")
    ap.add_argument("--update", action="store_true",
                    help="keep the other items of the output JSON and run the sections given again")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cvxpy-timeout", type=float, default=300.0)
    ap.add_argument("--item-timeout", type=float, default=1800.0, help="time limit per sweep item (s)")
    ap.add_argument("--linf-eps", default=",".join(map(str, LINF_EPS)),
                    help="linf budgets of the sweep (comma separated)")
    # worker arguments
    ap.add_argument("--worker", default=None)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--eps", type=float, nargs="*", default=[3.5])
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-zero-one", action="store_true")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--save-q", default=None)
    ap.add_argument("--cdist", action="store_true", help="time scipy's cdist of the same points (baseline)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args), default=float))
        return

    from tqdm import tqdm

    from jaxbound._io import atomic_write_json

    require_data_dir(need=("mnist", "fashion-mnist"))  # exits with a clear message when the data is absent
    out_path = Path(args.out) if args.out else HERE / "results" / ("optprob_quick.json" if args.quick else "optprob.json")
    results: dict = {}
    if (args.resume or args.update) and out_path.exists():
        results = json.loads(out_path.read_text())
    results.setdefault("meta", {})
    results["meta"].update({"machine": platform.platform(), "cpus": os.cpu_count(),
                            "python": platform.python_version()})
    results["meta"].pop("command", None)
    results["meta"].setdefault("commands", []).append(
        {"command": " ".join(["python", "benchmarks/optprob.py", *sys.argv[1:]]),
         "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load_average": os.getloadavg()})
    items = results.setdefault("items", {})
    n = 500 if args.quick else 5000

    plan: list[tuple[str, list[str], float | None]] = []
    sections = args.sections.split(",")
    if "target" in sections:
        plan.append(("target/jaxbound", ["pipeline", "--dataset", "mnist", "--n", str(n), "--eps", "3.5",
                                         "--repeats", "4", "--save-q", "/tmp/optprob_bench_q_ours.npy"], None))
        plan.append(("target/reference", ["reference", "--dataset", "mnist", "--n", str(n), "--eps", "3.5",
                                          "--save-q", "/tmp/optprob_bench_q_ref.npy"], 900))
    if "sweep" in sections:
        linf_eps = [float(v) for v in args.linf_eps.split(",") if v]
        for ds in DATASETS:
            for norm, grid in (("l2", L2_EPS), ("linf", linf_eps)):
                for eps in grid:
                    plan.append((f"sweep/{ds}/{norm}/{eps}", ["pipeline", "--dataset", ds, "--n", str(n), "--norm",
                                                             norm, "--eps", str(eps)], args.item_timeout))
    if "cvxpy" in sections:
        sizes = [50, 100] if args.quick else [100, 200, 500, 1000]
        for eps in (3.5, 4.0, 4.5):
            for m in sizes:
                plan.append((f"cvxpy/eps{eps}/n{m}", ["cvxpy", "--n", str(m), "--eps", str(eps)], args.cvxpy_timeout))
    if "full" in sections:
        plan.append(("full/mnist_all_3_7_l2_eps5.0", ["pipeline", "--dataset", "mnist", "--eps", "5.0", "--cdist",
                                                      "--repeats", "2"]
                     + (["--n", "1000"] if args.quick else []), None))
    if "backends" in sections:
        plan.append(("backends/mnist_l2_3.5", ["backends", "--dataset", "mnist", "--n", str(n), "--eps", "3.5"], None))
        plan.append(("backends/fmnist_l2_3.5", ["backends", "--dataset", "fmnist", "--n", str(n), "--eps", "3.5"],
                     None))

    for key, argv, timeout in tqdm(plan, desc="optprob benchmark", unit="item"):
        if args.resume and key in items and "error" not in items[key]:
            continue
        t = time.perf_counter()
        rec = spawn(argv, timeout)
        rec.setdefault("wall_seconds", time.perf_counter() - t)
        items[key] = rec
        if key == "target/reference":
            summarise_target(items)
        atomic_write_json(out_path, results)
    summarise_target(items)
    summarise_cvxpy(items, results)
    atomic_write_json(out_path, results)
    print(json.dumps(results.get("summary", {}), indent=2))
    print(f"wrote {out_path}")


def summarise_target(items: dict) -> None:
    ours, ref = items.get("target/jaxbound"), items.get("target/reference")
    if not ours or not ref or "error" in ours or "error" in ref:
        return
    run = ours["runs"][0]
    warm = run.get("warm_seconds_median", run["cold_seconds"])["end_to_end"]
    cold = run["cold_seconds"]["end_to_end"]
    refs = ref["seconds"]["end_to_end"]
    summary = {
        "end_to_end_warm_median_s": warm, "end_to_end_cold_s": cold, "reference_s": refs,
        "speedup_warm": refs / warm, "speedup_cold": refs / cold,
        "abs_loss_diff_vs_reference": abs(run["cross_entropy"] - ref["cross_entropy"]),
        "peak_rss_gb": ours["peak_rss_gb"], "reference_peak_rss_gb": ref["peak_rss_gb"],
    }
    try:
        qa, qb = np.load("/tmp/optprob_bench_q_ours.npy"), np.load("/tmp/optprob_bench_q_ref.npy")
        summary["max_abs_q_diff_vs_reference"] = float(np.abs(qa - qb).max())
    except OSError:
        pass
    items["target/summary"] = summary


def summarise_cvxpy(items: dict, results: dict) -> None:
    rows = {k: v for k, v in items.items() if k.startswith("cvxpy/") and "error" not in v}
    if rows:
        results["summary"] = results.get("summary", {})
        results["summary"]["cvxpy_speedups"] = {k: v["speedup"] for k, v in rows.items()}
        t = rows.get("cvxpy/eps4.0/n1000")
        if t:
            results["summary"]["cvxpy_target"] = {
                "item": "cvxpy/eps4.0/n1000", "optprob_seconds": t["optprob_seconds_median"],
                "cvxpy_seconds": t["cvxpy_seconds"], "cvxpy_solver": t.get("cvxpy_solver"),
                "speedup": t["speedup"], "target_speedup": 300, "met": t["speedup"] >= 300}
    if "target/summary" in items:
        results.setdefault("summary", {})["target"] = items["target/summary"]
    full = items.get("full/mnist_all_3_7_l2_eps5.0")
    if full and "error" not in full:
        run = full["runs"][0]
        results.setdefault("summary", {})["full"] = {
            "n_a": run["n_a"], "n_b": run["n_b"], "edges": run["edges"],
            "end_to_end_s": run["cold_seconds"]["end_to_end"], "peak_rss_gb": full["peak_rss_gb"],
            "seconds": run["cold_seconds"], "cdist_seconds": full.get("cdist_seconds"),
            "ratio_distances_graph_optprob": full.get("ratio_distances_graph_optprob"),
            "ratio_distances_graph_optprob_warm": full.get("ratio_distances_graph_optprob_warm"),
            "warm_seconds": run.get("warm_seconds_min"),
            "target_ratio": 0.25, "load_average": full.get("load_average"),
            "cross_entropy": run["cross_entropy"], "zero_one": run.get("zero_one")}
    sweep = []
    for k, v in items.items():
        if k.startswith("sweep/") and "error" not in v:
            r = v["runs"][0]
            sweep.append({"item": k, "edges": r["edges"], "cross_entropy": r["cross_entropy"],
                          "zero_one": r.get("zero_one"), "seconds": r["cold_seconds"],
                          "verify_passed": r["verify_passed"]})
        elif k.startswith("sweep/"):
            sweep.append({"item": k, "error": v["error"]})
    if sweep:
        results.setdefault("summary", {})["sweep"] = sweep
    bk = {k: v.get("identical_to_1e-9") for k, v in items.items() if k.startswith("backends/") and "error" not in v}
    if bk:
        results.setdefault("summary", {})["backends_identical"] = bk


if __name__ == "__main__":
    main()
