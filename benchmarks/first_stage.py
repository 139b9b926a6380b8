"""The report's first stage on MNIST: dataset Lipschitz constant + inter-class distance.

``metrics.dataset_lipschitz`` (nearest point of another class, Finlay et al.
2019, Table 4) and ``shift.inter_class_distance`` (mean distance to the 10%
nearest out-of-class points, about k = 5,400 per point on the full training
set; Ding et al. 2019, App. D.2.1), both l2, timed cold (compilation
included, as in a report run) on the first ``--n`` training images.

Baseline, same run: NumPy's float32 GEMM of the same pairs (``n^2`` for the
Lipschitz constant, ``sum_c n_c (n - n_c)`` for the margins), timed on a
slice of ``--gemm-rows`` query rows against all references and scaled by the
pair count (the ``extrapolated`` field says so). Target (issue 18): the two
stages on all 60,000 points in <= 180 s.

Usage:
  python benchmarks/first_stage.py             # full MNIST, about 3-5 minutes on 2 quiet cores
  python benchmarks/first_stage.py --n 6000    # a quick check (about 10-20 s)

Writes ``benchmarks/results/first_stage_<device>.json`` (``_n<N>`` when ``--n`` is not 60000).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from _common import require_data_dir  # noqa: E402

TARGET_SECONDS = 180.0


def gemm_baseline(x: np.ndarray, labels: np.ndarray, rows: int) -> dict:
    """NumPy GEMM seconds of a ``rows``-row slice against all points, scaled to both stages' pair counts."""
    rows = min(rows, x.shape[0])
    x = np.ascontiguousarray(x, np.float32)
    t = time.perf_counter()
    _ = x[:rows] @ x.T
    sec = time.perf_counter() - t
    n = x.shape[0]
    counts = np.bincount(labels)
    pairs = n * n + int(np.sum(counts * (n - counts)))
    return {"gemm_rows": rows, "gemm_slice_seconds": sec, "pairs": pairs,
            "seconds": sec * pairs / (rows * n), "extrapolated": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60000, help="first n MNIST training images")
    ap.add_argument("--gemm-rows", type=int, default=2048)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import jax

    from jaxbound import data, metrics, shift
    from jaxbound._io import atomic_write_json

    device = jax.devices()[0].platform
    load_start = list(os.getloadavg())
    ds = data.load("mnist", split="train", data_dir=require_data_dir())
    x, y = ds.flat()[: args.n], np.asarray(ds.labels)[: args.n]
    print(f"first stage on MNIST: n={x.shape[0]}, device={device}, {os.cpu_count()} CPU cores, "
          f"load average {load_start}", flush=True)
    t = time.perf_counter()
    lip = metrics.dataset_lipschitz(x, y, norm="l2")
    t_lip = time.perf_counter() - t
    print(f"  dataset_lipschitz    {t_lip:8.1f} s  L = {lip.lipschitz:.4f} (min distance {lip.min_distance:.4f})",
          flush=True)
    t = time.perf_counter()
    icd = shift.inter_class_distance(x, y, norm="l2")
    t_icd = time.perf_counter() - t
    print(f"  inter_class_distance {t_icd:8.1f} s  value = {icd.value:.4f}", flush=True)
    base = gemm_baseline(x, y, args.gemm_rows)
    total = t_lip + t_icd
    print(f"  total {total:.1f} s (target {TARGET_SECONDS:.0f} s on 60,000 points); NumPy GEMM of the same pairs "
          f"{base['seconds']:.1f} s (extrapolated): {total / base['seconds']:.2f}x the GEMM alone", flush=True)
    result = {
        "benchmark": "first_stage", "dataset": "MNIST train", "n": int(x.shape[0]), "norm": "l2",
        "seconds": {"dataset_lipschitz": t_lip, "inter_class_distance": t_icd, "total": total},
        "values": {"lipschitz": lip.lipschitz, "min_distance": lip.min_distance, "inter_class_distance": icd.value},
        "baseline_numpy_gemm": base, "ratio_to_gemm": total / base["seconds"],
        "target_seconds": TARGET_SECONDS if x.shape[0] == 60000 else None,
        "meets_target": (total <= TARGET_SECONDS) if x.shape[0] == 60000 else None,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": device,
                    "jax": jax.__version__, "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    suffix = "" if x.shape[0] == 60000 else f"_n{x.shape[0]}"
    out = Path(args.out) if args.out else HERE / "results" / f"first_stage_{device}{suffix}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
