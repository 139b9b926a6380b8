"""k-NN benchmark on real MNIST and CIFAR-10: jaxbound.geometry.knn against faiss and scikit-learn.

k = 50 neighbours of the 10,000 test images among the training images
(MNIST: 60,000 x 784; CIFAR-10 (JPEG re-encoding): 50,000 x 3,072, read with
``data.load("imagefolder")`` from the ``.tar.gz``; ``--dataset random3072``:
uniform random points of CIFAR's size, for a check without the archive),
for l1, l2 and linf, side by side in the same run with faiss-cpu's
``IndexFlat`` of the same metric and scikit-learn's brute-force
``NearestNeighbors``. Throughput is reported as G element-ops/s
(n * m * d / seconds). Slow baselines run on a subset of the queries (their
throughput does not depend on the number of queries); the subset sizes are
recorded. Each measurement runs in its own process so that its peak memory
(max RSS) is its own.

Also measured: the full 60k x 60k l1 k-NN (k = 50, the point itself counted,
Mahloujifar et al.'s density ranks) and the agreement of jaxbound's neighbours
with a float64 NumPy brute force (mismatches other than exact ties).

Targets (same run): l2 >= 1.2x faiss (MNIST and CIFAR), l1 >= 3x, linf >= 15x.

Usage:
  python benchmarks/knn.py                      # MNIST, everything (about 15-25 minutes on 2 quiet cores)
  python benchmarks/knn.py --dataset cifar10 --skip-full   # CIFAR-10 (JPEG), about 30-45 minutes
  python benchmarks/knn.py --quick              # small sizes, a smoke test
  python benchmarks/knn.py --quick --dataset random3072 --norms l2 --skip-full
  python benchmarks/knn.py --skip-full --norms l2

Writes ``benchmarks/results/knn_<device>.json`` (MNIST) or
``knn_<dataset>_<device>.json``, with the load average at start and end.
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

# Targets of issue 18: jaxbound's throughput over faiss's in the same run.
TARGETS = {"l1": 3.0, "l2": 1.2, "linf": 15.0}
FAISS_METRIC = {"l1": "METRIC_L1", "l2": "METRIC_L2", "linf": "METRIC_Linf"}
SKLEARN_METRIC = {"l1": "manhattan", "l2": "euclidean", "linf": "chebyshev"}


CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
DATASET_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10 (JPEG re-encoding)", "random3072": "uniform random, 3072-d"}


def load(nq: int, nr: int, dataset: str = "mnist"):
    """Test queries and training references, flattened float32 (cached decoding for the image folder)."""
    from jaxbound import data

    if dataset == "mnist":
        tr = data.load("mnist", split="train", data_dir=require_data_dir()).flat()[:nr]
        te = data.load("mnist", split="test", data_dir=require_data_dir()).flat()[:nq]
    elif dataset == "cifar10":
        path = Path(os.environ.get("JAXBOUND_CIFAR10_JPEG", CIFAR_TAR))
        if not path.exists():
            sys.exit(f"CIFAR-10 (JPEG) archive not found at {path}: set JAXBOUND_CIFAR10_JPEG")
        cache = os.environ.get("JAXBOUND_CACHE_DIR") or str(Path.home() / ".cache" / "jaxbound")  # outside the repo
        tr = data.load("imagefolder", split="train", data_dir=path, cache_dir=cache).flat()[:nr]
        te = data.load("imagefolder", split="test", data_dir=path, cache_dir=cache).flat()[:nq]
    elif dataset == "random3072":
        rng = np.random.default_rng(0)
        tr = rng.random((nr, 3072), dtype=np.float32)
        te = rng.random((nq, 3072), dtype=np.float32)
    else:
        raise SystemExit(f"unknown dataset {dataset}")
    return np.ascontiguousarray(te, np.float32), np.ascontiguousarray(tr, np.float32)


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


# ----------------------------------------------------------------------------- workers


def worker(args) -> dict:
    q, r = load(args.nq, args.nr, args.dataset)
    if args.self_knn:
        q = r
    k = args.k
    if args.impl == "jax":
        import jax

        from jaxbound import geometry

        # compile once on the same block shapes, outside the timing
        geometry.knn(q[:8], r, k=k, norm=args.norm)
        t = time.perf_counter()
        res = geometry.knn(q, None if args.self_knn else r, k=k, norm=args.norm, progress=args.progress)
        seconds = time.perf_counter() - t
        dist, idx = res.distances, res.indices
        extra = {"device": jax.devices()[0].platform, "jax": jax.__version__}
    elif args.impl == "faiss":
        import faiss

        index = faiss.IndexFlat(r.shape[1], getattr(faiss, FAISS_METRIC[args.norm]))
        index.add(r)
        t = time.perf_counter()
        dist, idx = index.search(q, k)
        seconds = time.perf_counter() - t
        if args.norm == "l2":
            dist = np.sqrt(np.maximum(dist, 0))
        extra = {"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    elif args.impl == "sklearn":
        import sklearn
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=SKLEARN_METRIC[args.norm], n_jobs=-1).fit(r)
        t = time.perf_counter()
        dist, idx = nn.kneighbors(q)
        seconds = time.perf_counter() - t
        extra = {"sklearn": sklearn.__version__}
    else:
        raise SystemExit(f"unknown impl {args.impl}")
    if args.save:
        np.savez(args.save, distances=dist, indices=idx)
    n, m, d = q.shape[0], r.shape[0], r.shape[1]
    return {"impl": args.impl, "norm": args.norm, "n_queries": n, "n_refs": m, "d": d, "k": k,
            "seconds": seconds, "gops": n * m * d / seconds / 1e9, "peak_rss_gb": peak_rss_gb(), **extra}


def run_worker(impl: str, norm: str, nq: int, nr: int, k: int, *, self_knn=False, save=None, progress=False,
               dataset="mnist") -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--norm", norm, "--nq", str(nq), "--nr", str(nr), "--k", str(k),
           "--dataset", dataset]
    if self_knn:
        cmd.append("--self-knn")
    if save:
        cmd += ["--save", str(save)]
    if progress:
        cmd.append("--progress")
    out = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {norm} failed:\n{out.stderr}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {impl:8s} {norm:5s} n={rec['n_queries']:6d} m={rec['n_refs']:6d}: {rec['seconds']:8.2f} s "
          f"{rec['gops']:7.2f} Gop/s  peak {rec['peak_rss_gb']:.2f} GiB", flush=True)
    return rec


def brute_force_check(norm: str, saved: Path, nq_check: int, nq: int, nr: int, dataset: str = "mnist") -> dict:
    """Mismatches of jaxbound's neighbours against float64 brute force, other than exact ties."""
    from scipy.spatial.distance import cdist

    q, r = load(nq, nr, dataset)
    got = np.load(saved)
    metric = {"l1": "cityblock", "l2": "euclidean", "linf": "chebyshev"}[norm]
    rows = np.linspace(0, q.shape[0] - 1, nq_check).astype(int)
    D = cdist(q[rows].astype(np.float64), r.astype(np.float64), metric)
    k = got["indices"].shape[1]
    mismatches = ties = 0
    max_dist_err = 0.0
    for t, i in enumerate(rows):
        ref_idx = np.argsort(D[t], kind="stable")[:k]
        mine = got["indices"][i]
        ref_d = D[t, ref_idx]
        # "exact ties": equal distances up to the rounding of float32 pixels (1e-6 relative)
        tol = 1e-6 * max(1.0, float(ref_d[-1]))
        max_dist_err = max(max_dist_err, float(np.abs(got["distances"][i] - ref_d).max()))
        if np.array_equal(mine, ref_idx):
            continue
        if np.all(np.abs(D[t, mine] - ref_d) <= tol) and len(set(mine.tolist())) == k:
            ties += 1
        else:
            mismatches += 1
    return {"checked_queries": len(rows), "mismatching_queries": mismatches,
            "queries_differing_only_in_ties": ties, "max_abs_distance_error": max_dist_err}


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["jax", "faiss", "sklearn"])
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--dataset", default="mnist", choices=sorted(DATASET_LABEL))
    ap.add_argument("--norms", default="l1,l2,linf")
    ap.add_argument("--nq", type=int, default=10000)
    ap.add_argument("--nr", type=int, default=60000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--self-knn", action="store_true")
    ap.add_argument("--save")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    ap.add_argument("--skip-full", action="store_true", help="skip the 60k x 60k l1 run")
    ap.add_argument("--faiss-queries", type=int, default=None, help="queries for faiss (default: all, 500 for linf)")
    ap.add_argument("--sklearn-queries", type=int, default=1000)
    ap.add_argument("--check-queries", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.worker:
        args.impl = args.worker
        print(json.dumps(worker(args)))
        return

    import jax

    device = jax.devices()[0].platform
    load_start = list(os.getloadavg())
    ds = args.dataset
    nr_default = 50000 if ds != "mnist" and args.nr == 60000 else args.nr
    nq, nr = (1000, 6000) if args.quick else (args.nq, nr_default)
    print(f"k-NN benchmark on {DATASET_LABEL[ds]}: {nq} test queries x {nr} training refs, k={args.k}, "
          f"device={device}, {os.cpu_count()} CPU cores, load average {load_start}", flush=True)
    records = []
    tmp = HERE / "results" / ".knn_tmp.npz"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for norm in args.norms.split(","):
        print(f"[{norm}]", flush=True)
        mine = run_worker("jax", norm, nq, nr, args.k, save=tmp, dataset=ds)
        check = brute_force_check(norm, tmp, min(args.check_queries, nq), nq, nr, ds)
        fq = args.faiss_queries or (min(nq, 500) if norm == "linf" else nq)
        fa = run_worker("faiss", norm, fq, nr, args.k, dataset=ds)
        sk = run_worker("sklearn", norm, min(args.sklearn_queries, nq), nr, args.k, dataset=ds)
        rec = {
            "norm": norm, "device": device, "n_queries": nq, "n_refs": nr, "d": mine["d"], "k": args.k,
            "seconds": mine["seconds"], "gops": mine["gops"], "peak_rss_gb": mine["peak_rss_gb"],
            "faiss_gops": fa["gops"], "faiss_queries": fa["n_queries"], "faiss_peak_rss_gb": fa["peak_rss_gb"],
            "sklearn_gops": sk["gops"], "sklearn_queries": sk["n_queries"],
            "ratio_vs_faiss": mine["gops"] / fa["gops"], "ratio_vs_sklearn": mine["gops"] / sk["gops"],
            "brute_force_check": check, "jax": mine.get("jax"), "faiss": fa.get("faiss"),
            "target_ratio_vs_faiss": TARGETS[norm],
        }
        rec["meets_target"] = rec["ratio_vs_faiss"] >= TARGETS[norm]
        print(f"  -> jaxbound {rec['gops']:.2f} Gop/s = {rec['ratio_vs_faiss']:.2f}x faiss, "
              f"{rec['ratio_vs_sklearn']:.2f}x scikit-learn; brute-force check {check}", flush=True)
        records.append(rec)
    tmp.unlink(missing_ok=True)
    full = None
    if not args.skip_full:
        n_full = 6000 if args.quick else 60000
        print(f"[full l1 self k-NN {n_full} x {n_full}, k={args.k}]", flush=True)
        f = run_worker("jax", "l1", n_full, n_full, args.k, self_knn=True, dataset=ds)
        full = {"norm": "l1", "n": n_full, "k": args.k, "seconds": f["seconds"], "gops": f["gops"],
                "peak_rss_gb": f["peak_rss_gb"], "target_seconds": 600, "target_peak_gb": 3}
        print(f"  -> {f['seconds']:.1f} s, peak {f['peak_rss_gb']:.2f} GiB", flush=True)
    result = {
        "benchmark": "knn", "dataset": DATASET_LABEL[ds], "quick": args.quick,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "records": records, "full_l1_self_knn": full,
        "targets": {"l2": ">= 1.2x faiss", "l1": ">= 3x faiss", "linf": ">= 15x faiss",
                    "full_l1": "<= 600 s and <= 3 GB"},
    }
    from jaxbound._io import atomic_write_json

    stem = "knn" if ds == "mnist" else f"knn_{ds}"
    out = Path(args.out) if args.out else HERE / "results" / (f"{stem}_{device}{'_quick' if args.quick else ''}.json")
    if full is None and out.exists():  # --skip-full keeps the earlier full run's record, marked as such
        try:
            prev = json.loads(out.read_text()).get("full_l1_self_knn")
        except (OSError, ValueError):
            prev = None
        if prev:
            when = prev.get("measured", "an earlier run (kept by --skip-full)")
            result["full_l1_self_knn"] = dict(prev, measured=when)
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
