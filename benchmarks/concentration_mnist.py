"""Concentration of measure on MNIST (Mahloujifar et al. 2019, Tables 1-3): fidelity and speed.

Runs, on real MNIST (and optionally Fashion-MNIST) from ``$JAXBOUND_DATA_DIR`` (or ``shared/data``
beside the repository):

* Table 1 (l_inf, alpha = 0.01, eps in {0.1, 0.2, 0.3, 0.4}, the paper's T),
* Table 2's MNIST row (l_inf, alpha = 0.012, T = 10, eps = 0.3),
* Table 3's MNIST rows (l2, alpha = 0.01, eps in {1.58, 3.16, 4.74}, T = 20) with
  the half-space baseline of Gilmer et al.,

* the half-space search of Prescott, Zhang & Evans (ICLR 2021) at every l_inf and
  l2 budget above (``halfspaces``),

under the paper's protocol (fit on train, select q / report on test) and the
honest protocol (fit on train, select on half of test, report on the other
half). Every search obeys the validity rule of ``jaxbound.concentration``
(fit target alpha + margin/sqrt(N), Clopper-Pearson lower end >= alpha on the
selection split; ``--margin 0 --confidence none`` is the authors' rule) and
every record says whether its regions hold risk >= alpha on its split
(``valid``). Rows written before the rule existed are kept, marked
``"rule": "authors"`` with ``valid`` computed from their stored risks.
Prints paper versus ours and appends records to
``benchmarks/results/concentration_mnist.json`` atomically, one job at a time;
a rerun skips finished jobs, so the run can be interrupted and resumed
(``--time-limit`` stops starting new jobs after that many seconds).

Shared, expensive inputs are cached outside the repository (``--cache-dir``):
the l1 density radii (k = 50) and the l2 neighbour lists of the training set,
together with the seconds they took, which are added to the timing of the
"full run at one eps" lines.

Speed targets (2-core CPU): full l_inf run at one eps (density on all 60k,
binary search, 10 repeats) <= 15 min; full l2 run at one eps with T = 20 <= 30
min. Named baseline measured in the same run (``--baseline``): the dense
NumPy greedy-ball step (a full N x N table, as in the authors' code) on a
subset, against ours on the same subset.

Usage::

    python benchmarks/concentration_mnist.py                       # everything, resumable
    python benchmarks/concentration_mnist.py --only linf --eps 0.3 --time-limit 600
    python benchmarks/concentration_mnist.py --dataset fashion_mnist --only linf
    python benchmarks/concentration_mnist.py --only halfspaces --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _common import find_data_dir  # noqa: E402

import jax  # noqa: E402

from jaxbound import concentration as C  # noqa: E402
from jaxbound import data, geometry  # noqa: E402
from jaxbound._io import atomic_write_json, to_jsonable  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "concentration_mnist.json"

# Paper numbers (percent). Table 1: (T, q, train risk, test risk, train adv, test adv).
TABLE1 = {0.1: (5, 0.662, 1.22, 1.23, 3.65, 3.64), 0.2: (10, 0.660, 1.12, 1.11, 5.76, 5.89),
          0.3: (10, 0.629, 1.12, 1.15, 7.34, 7.24), 0.4: (10, 0.598, 1.15, 1.21, 9.89, 9.92)}
TABLE2 = {0.3: (10, 1.35, 8.28)}  # alpha = 0.012
# Table 3: eps -> (Gilmer risk, Gilmer adv, T, ours risk, ours adv), test set.
TABLE3 = {1.58: (1.18, 3.92, 20, 1.07, 2.19), 3.16: (1.18, 9.73, 20, 1.02, 4.15),
          4.74: (1.18, 23.40, 20, 1.07, 10.09)}


def load_results(path: Path) -> list:
    if path.exists():
        return json.loads(path.read_text())
    return []


def mark_old_rows(path: Path) -> list:
    """Rows written before the validity rule: mark them ``rule="authors"`` and add ``valid`` from their risks."""
    rows = load_results(path)
    changed = False
    for r in rows:
        if "split" not in r or "valid" in r:
            continue
        risks = [rep["risk"] for rep in r.get("repeats") or []] or [r["risk"]]
        r["valid"] = bool(min(risks) >= r["alpha"])
        r["n_valid"] = int(sum(x >= r["alpha"] for x in risks))
        r["min_risk"] = float(min(risks))
        r["rule"] = "authors"
        changed = True
    if changed:
        atomic_write_json(path, rows)
    return rows


def job_id(**kw) -> str:
    return "|".join(f"{k}={kw[k]}" for k in sorted(kw))


def cached(path: Path, compute):
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    t = time.perf_counter()
    out = compute()
    out["seconds"] = np.asarray(time.perf_counter() - t)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def paper_numbers(method, eps, alpha, split):
    """(paper_risk, paper_adv_risk) in [0, 1] for the test split (train too for Table 1)."""
    if method == "rectangles" and alpha == 0.01 and eps in TABLE1:
        _, _, rtr, rte, atr, ate = TABLE1[eps]
        return (rtr / 100, atr / 100) if split in ("train", "fit") else (rte / 100, ate / 100)
    if method == "rectangles" and alpha == 0.012 and eps in TABLE2:
        return (TABLE2[eps][1] / 100, TABLE2[eps][2] / 100) if split not in ("train", "fit") else (None, None)
    if method == "balls" and eps in TABLE3 and split not in ("train", "fit"):
        return TABLE3[eps][3] / 100, TABLE3[eps][4] / 100
    if method == "halfspace" and eps in TABLE3 and split not in ("train", "fit"):
        return TABLE3[eps][0] / 100, TABLE3[eps][1] / 100
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "jaxbound" / "concentration"))
    ap.add_argument("--only", nargs="*", default=["halfspaces", "halfspace", "linf", "l2", "table2"],
                    choices=["linf", "table2", "l2", "halfspace", "halfspaces"])
    ap.add_argument("--margin", type=float, default=0.5, help="fit target alpha + margin/sqrt(N)")
    ap.add_argument("--confidence", default="0.95", help="Clopper-Pearson level of the selection rule, or 'none'")
    ap.add_argument("--eps", nargs="*", type=float, default=None, help="restrict to these eps values")
    ap.add_argument("--protocols", nargs="*", default=["paper", "honest"], choices=["paper", "honest"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--list-size", type=int, default=2048)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--time-limit", type=float, default=float("inf"), help="start no new job after this many s")
    ap.add_argument("--baseline", action="store_true", help="time the dense NumPy greedy step on a subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--linf-subset", type=int, default=None,
                    help="fit the l_inf boxes on the first N training points only (recorded as a subset run)")
    ap.add_argument("--l2-subset", type=int, default=None,
                    help="fit the l2 balls on the first N training points only (recorded as a subset run)")
    args = ap.parse_args()

    conf = None if str(args.confidence).lower() == "none" else float(args.confidence)
    rule = {"margin": args.margin, "confidence": conf}
    rtag = f"m{args.margin:g}c{args.confidence}"
    t_start = time.perf_counter()
    folder = find_data_dir(args.data_dir, need=("mnist", "fashion-mnist"))
    if folder is None:
        print("SKIP: MNIST / Fashion-MNIST IDX files not found (pass --data-dir or set JAXBOUND_DATA_DIR)")
        return
    train = data.load(args.dataset, split="train", data_dir=folder).flat()
    test = data.load(args.dataset, split="test", data_dir=folder).flat()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    results = mark_old_rows(out_path)
    done = {r.get("job") for r in results}
    ds = args.dataset
    key = jax.random.key(args.seed)
    splits = {p: C.make_splits(train, test, key=jax.random.fold_in(key, 1), protocol=p) for p in args.protocols}

    def keep(eps):
        return args.eps is None or any(abs(eps - e) < 1e-9 for e in args.eps)

    def out_of_time():
        if time.perf_counter() - t_start > args.time_limit:
            print(f"time limit {args.time_limit:.0f}s reached: stopping (rerun to resume)")
            return True
        return False

    def save(job, recs, extra_fields):
        nonlocal results
        rows = []
        for r in recs:
            d = r.to_dict()
            d.update(extra_fields)
            pr, pa = paper_numbers(r.method, r.eps, r.alpha, r.split) if ds == "mnist" else (None, None)
            d.update(job=job, paper_risk=pr, paper_adv_risk=pa, loadavg=list(os.getloadavg()))
            rows.append(d)
        results = load_results(out_path) + rows  # re-read: another process may have appended
        atomic_write_json(out_path, results)
        for d in rows:
            show(d)

    # ---------------- the half-space search of Prescott et al. (every l_inf and l2 budget) ----------------
    if "halfspaces" in args.only:
        hs_jobs = [("linf", e) for e in TABLE1] + [("l2", e) for e in TABLE3]
        for nrm, eps in [j for j in hs_jobs if keep(j[1])]:
            for p in args.protocols:
                job = job_id(dataset=ds, method="halfspaces", norm=nrm, eps=eps, alpha=0.01, protocol=p, rule=rtag)
                if job in done:
                    continue
                if out_of_time():
                    return summary(out_path)
                recs, _ = C.run_halfspaces(splits[p], alpha=0.01, eps=eps, norm=nrm, dataset=ds, **rule)
                save(job, recs, {})

    # ---------------- l_inf (Tables 1 and 2) ----------------
    linf_jobs = []
    if "linf" in args.only:
        for eps, row in TABLE1.items():
            linf_jobs.append((eps, 0.01, row[0]))
    if "table2" in args.only:
        linf_jobs.append((0.3, 0.012, 10))
    linf_jobs = [j for j in linf_jobs if keep(j[0])]
    if linf_jobs:
        lx = train if args.linf_subset is None else train[: args.linf_subset]
        sub = "" if args.linf_subset is None else f"_first{len(lx)}"
        dens = cached(cache / f"{ds}{sub}_density_l1_k50.npz",
                      lambda: {"radii": C.density_ranks(lx, k=50, norm="l1", progress=True)})
        print(f"density ranks (l1, k=50, N={len(lx)}): {float(dens['seconds']):.0f}s (cached run)")
        for eps, alpha, T in linf_jobs:
            for p in args.protocols:
                job = job_id(dataset=ds, method="rectangles", eps=eps, alpha=alpha, T=T, protocol=p,
                             repeats=args.repeats, rule=rtag, n_fit=len(lx))
                if job in done:
                    continue
                if out_of_time():
                    return summary(out_path)
                sp = splits[p] if args.linf_subset is None else C.Splits(
                    p, lx, splits[p].select, splits[p].report, splits[p].select_indices, splits[p].report_indices)
                recs, _ = C.run_rectangles(sp, key=jax.random.fold_in(key, 2), alpha=alpha, eps=eps,
                                           n_regions=T, radii=dens["radii"], n_repeats=args.repeats, dataset=ds,
                                           **rule)
                full = float(dens["seconds"]) + recs[0].seconds
                save(job, recs, {"density_seconds": float(dens["seconds"]), "full_run_seconds": full,
                                 "target_seconds": 900.0, "n_fit": len(lx), "subset": args.linf_subset is not None})
                print(f"  full l_inf run at eps={eps} ({p}): {full:.0f}s = density {float(dens['seconds']):.0f}s"
                      f" + search/repeats {recs[0].seconds:.0f}s; ratio to 15-min target {full / 900:.2f}")

    # ---------------- l2 (Table 3) and the half-space baseline ----------------
    l2_eps = [e for e in TABLE3 if keep(e)] if ("l2" in args.only or "halfspace" in args.only) else []
    if "halfspace" in args.only:
        for eps in l2_eps:
            for p in args.protocols:
                job = job_id(dataset=ds, method="halfspace", eps=eps, alpha=0.01, protocol=p, rule=rtag)
                if job in done:
                    continue
                recs, _ = C.run_halfspace(splits[p], alpha=0.01, eps=eps, norm="l2", dataset=ds, **rule)
                save(job, recs, {})
    if "l2" in args.only and l2_eps:
        fit_x = train if args.l2_subset is None else train[: args.l2_subset]
        N = len(fit_x)
        n_tot = math.ceil(N * 0.01 * (1 + args.delta))
        L = max(args.list_size, n_tot)
        nb = None
        for eps in l2_eps:
            T = TABLE3[eps][2]
            jobs = {p: job_id(dataset=ds, method="balls", eps=eps, alpha=0.01, T=T, protocol=p, delta=args.delta,
                              n_fit=N, rule=rtag) for p in args.protocols}
            if all(j in done for j in jobs.values()):
                continue
            if out_of_time():
                return summary(out_path)
            if nb is None:
                sub = "" if args.l2_subset is None else f"_first{N}"
                nb = cached(cache / f"{ds}{sub}_knn_l2_k{L}.npz", lambda: _l2_lists(fit_x, L))
                print(f"l2 neighbour lists (k={L}, N={N}): {float(nb['seconds']):.0f}s (cached run)")
            t0 = time.perf_counter()
            reg0 = C.fit_balls(fit_x, alpha=0.01, eps=eps, n_regions=T, delta=args.delta, margin=args.margin,
                               neighbours=geometry.KNN(nb["distances"], nb["indices"]), progress=True)
            fit_s = time.perf_counter() - t0
            full = float(nb["seconds"]) + fit_s
            for p, job in jobs.items():
                if job in done:
                    continue
                sp = splits[p] if args.l2_subset is None else C.Splits(
                    p, fit_x, splits[p].select, splits[p].report, splits[p].select_indices, splits[p].report_indices)
                # the greedy fit does not depend on the protocol; the radii grow until the selection split passes
                reg = C.inflate_balls(reg0, sp.fit, sp.select, **rule)
                recs = C.records(reg, sp, dataset=ds, seconds=fit_s,
                                 extra={"delta": reg.delta, "n_target": reg.n_target, "balls": int(reg.radii.size),
                                        "inflation": reg.inflation, "rule": rule,
                                        "n_exact": reg.n_exact.tolist(), "objective": reg.objective.tolist(),
                                        "radii": reg.radii.tolist(), "center_indices": reg.center_indices.tolist(),
                                        "count_bounds": reg.count_bounds})
                save(job, recs, {"lists_seconds": float(nb["seconds"]), "full_run_seconds": full,
                                 "target_seconds": 1800.0, "n_fit": N, "subset": args.l2_subset is not None})
            print(f"  full l2 run at eps={eps}: {full:.0f}s = lists {float(nb['seconds']):.0f}s + greedy "
                  f"{fit_s:.0f}s; ratio to 30-min target {full / 1800:.2f}")

    if args.baseline:
        baseline(train, results, out_path)
    summary(out_path)


def _l2_lists(x, L):
    r = geometry.knn(x, k=L, norm="l2", progress=True)
    return {"distances": r.distances.astype(np.float32), "indices": r.indices.astype(np.int32)}


def baseline(train, results, out_path, n=3000, T=3, eps=1.58):
    """Dense NumPy greedy step (full N x N table, the authors' approach) vs ours on the same subset."""
    from scipy.spatial.distance import cdist

    x = train[:n]
    alpha, delta = 0.01, 0.1
    t0 = time.perf_counter()
    D = cdist(x.astype(np.float64), x.astype(np.float64))
    N = len(x)
    n_tot = math.ceil(N * alpha * (1 + delta))
    covered = np.zeros(N, bool)
    expanded = np.zeros(N, bool)
    picks = []
    srt = np.argsort(D, axis=1, kind="stable")
    Ds = np.take_along_axis(D, srt, 1)
    for t in range(T):
        if covered.sum() >= n_tot:
            break
        hi = n_tot - int(covered.sum())
        lo = -(-hi // (T - t))
        best = None
        for c in range(N):
            unc = srt[c][~covered[srt[c]]]
            r = D[c, unc[lo - 1: hi]]
            cu = np.cumsum(~covered[srt[c]])
            ce = np.cumsum(~expanded[srt[c]])
            Cn = cu[np.searchsorted(Ds[c], r, side="right") - 1]
            En = ce[np.searchsorted(Ds[c], r + eps, side="right") - 1]
            obj = En - Cn
            i = int(np.argmin(obj))
            cand = (int(obj[i]), c, lo + i, float(r[i]))
            if best is None or cand[:3] < best[:3]:
                best = cand
        covered |= D[best[1]] <= best[3]
        expanded |= D[best[1]] <= best[3] + eps
        picks.append(best[1])
    dense_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg = C.fit_balls(x, alpha=alpha, eps=eps, n_regions=T, delta=delta, list_size=256)
    ours_s = time.perf_counter() - t0
    same = reg.center_indices.tolist() == picks
    print(f"baseline (dense NumPy N x N greedy, N={n}, T={T}): {dense_s:.1f}s; ours {ours_s:.1f}s; "
          f"speed-up {dense_s / ours_s:.1f}x; same balls: {same}")
    rows = load_results(out_path)
    rows.append({"job": f"baseline|n={n}|T={T}|eps={eps}", "method": "baseline_dense_greedy", "n": n, "T": T,
                 "eps": eps, "dense_seconds": dense_s, "ours_seconds": ours_s, "same_balls": same})
    atomic_write_json(out_path, rows)


def show(d):
    pr, pa = d.get("paper_risk"), d.get("paper_adv_risk")
    paper = f"paper {100 * pr:5.2f}/{100 * pa:5.2f}" if pr is not None and pa is not None else "paper   -  /  -  "
    std = f" (+-{100 * d['adv_risk_std']:.2f})" if d.get("adv_risk_std") else ""
    q = f" q={d['q']:.3f}" if d.get("q") is not None else ""
    rule = "authors" if d.get("rule") == "authors" else "rule"
    valid = "valid" if d.get("valid") else "INVALID"
    print(f"{d['dataset']:>6} {d['method']:>10} {d['norm']:>4} eps={d['eps']:<5} a={d['alpha']:<6} T={d['T']:<3}{q} "
          f"{d['protocol']:>6}/{d['split']:<6} n={d['n']:<6} ours risk/adv {100 * d['risk']:5.2f}/"
          f"{100 * d['adv_risk']:5.2f}{std} {rule:>7} {valid:>7}  {paper}  [{d['seconds']:.0f}s]")


def summary(out_path):
    rows = [r for r in load_results(out_path) if "split" in r]
    print(f"\n{len(rows)} records in {out_path}")
    for d in rows:
        if d["split"] in ("test", "report"):
            show(d)


if __name__ == "__main__":
    main()
