"""Run every benchmark on the current device and write one results file for the device.

    python benchmarks/run_all.py            # full profile: every benchmark at full size (many hours on 2 cores)
    python benchmarks/run_all.py --quick    # quick profile: smoke sizes of every benchmark
    python benchmarks/run_all.py --only knn optprob --timeout 3600
    python benchmarks/run_all.py --dry-run  # print the commands

Each ``benchmarks/<name>.py`` (except this file, ``readme_tables.py`` and
files starting with ``_``) runs in its own process, one after the other, on
whatever JAX sees as its default device (CPU, or the GPU of an accelerator
machine). Two profiles:

* full (default): every benchmark with its own default sizes. On the CPU the
  benchmarks write their usual files under ``benchmarks/results/``.
* quick (``--quick``): ``--quick`` where a benchmark offers it, otherwise the
  small settings listed in ``QUICK_ARGS``.

A quick run, and any run on a device other than the CPU, runs each benchmark
from a private copy of ``benchmarks/`` with an empty ``results/`` folder (the
package and the data folder are passed on through ``PYTHONPATH`` and
``JAXBOUND_DATA_DIR``), so it can never overwrite or append to the CPU
results; the files it writes are copied to
``benchmarks/results/<device>/`` (``quick_<device>/`` for a quick run).
``benchmarks/results/run_all_<device>.json`` (``run_all_quick_<device>.json``)
collects, per benchmark, the command, exit status, wall time, the last lines
of its output and the content of every results file it wrote or updated. The
file is rewritten (atomically) after each benchmark, so an interrupted run
keeps what finished; ``--resume`` skips benchmarks that already succeeded
with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKIP = {"run_all", "readme_tables"}

# Quick-profile settings of the benchmarks without a --quick option (small sizes, a few minutes each at most).
QUICK_ARGS = {
    "concentration_mnist": ["--only", "linf", "--eps", "0.3", "--protocols", "paper", "--repeats", "1",
                            "--linf-subset", "3000"],
    "shift_mnist": ["--parts", "volumes", "--conc-n", "500", "--pair-n", "100", "--icd-train-n", "1000",
                    "--train-n", "500", "--eval-n", "100"],
    "first_stage": ["--n", "3000"],
    "training_mnist": ["--n-train", "1000", "--n-train-pgd", "500", "--n-train-reg", "500", "--n-eval", "100",
                       "--n-dist", "10", "--dist-search", "2", "--attack-steps", "2"],
}
# Arguments whose value is a scratch folder: pointed into the sandbox so runs never share state.
SCRATCH_ARGS = {"concentration_mnist": "--cache-dir", "shift_mnist": "--work", "training_mnist": "--work"}


def device_info() -> dict:
    """Name and kind of JAX's default device, probed in a subprocess (keeps this process JAX-free)."""
    code = ("import jax, json; d = jax.devices()[0]; "
            "print(json.dumps({'backend': jax.default_backend(), 'kind': d.device_kind, "
            "'count': jax.device_count(), 'jax': jax.__version__}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 -- report, do not crash
        info = {"backend": "unknown", "kind": "unknown", "count": 0, "error": str(exc)}
    kind = "".join(c if c.isalnum() else "_" for c in str(info["kind"]).lower()).strip("_")
    info["name"] = "cpu" if info["backend"] == "cpu" else f"{info['backend']}_{kind}"
    info["platform"] = platform.platform()
    info["cpu_count"] = os.cpu_count()
    return info


def benchmarks() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))


def _help(name: str) -> str:
    try:
        out = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--help"], capture_output=True, text=True,
                             timeout=120)
        return out.stdout + out.stderr
    except Exception:  # noqa: BLE001
        return ""


def command(name: str, quick: bool) -> list[str] | None:
    """The arguments of one benchmark in a profile (the script path first, relative to ``benchmarks/``).

    ``None`` in the quick profile for a benchmark with neither ``--quick`` nor ``QUICK_ARGS`` (it is
    skipped rather than run at full size).
    """
    args = [f"{name}.py"]
    if quick:
        if "--quick" in _help(name):
            args.append("--quick")
        elif name in QUICK_ARGS:
            args += QUICK_ARGS[name]
        else:
            return None
    return args


def sandboxed(quick: bool, device: dict) -> bool:
    """Whether benchmarks run from a private copy (quick runs and devices other than the CPU)."""
    return quick or device["name"] != "cpu"


def _data_dir() -> str | None:
    sys.path.insert(0, str(HERE))
    from _common import find_data_dir

    path = find_data_dir(need=("mnist", "fashion-mnist", "cifar10-jpeg"))
    return None if path is None else str(path.resolve())


def _snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*.json")} if folder.is_dir() else {}


def run_one(name: str, args: list[str], *, sandbox: bool, dest: Path, timeout: float) -> dict:
    """Run one benchmark; returns its exit status, wall time, output tail and the results files it wrote."""
    tmp = Path(tempfile.mkdtemp(prefix=f"jaxbound_bench_{name}_")) if sandbox else None
    try:
        if sandbox:
            bench = tmp / "benchmarks"
            bench.mkdir()
            for p in HERE.glob("*.py"):
                shutil.copy2(p, bench / p.name)
            (bench / "results").mkdir()
            if name in SCRATCH_ARGS:
                args = [*args, SCRATCH_ARGS[name], str(tmp / "scratch")]
        else:
            bench = HERE
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent),
                                                                         os.environ.get("PYTHONPATH")])))
        data_dir = os.environ.get("JAXBOUND_DATA_DIR") or _data_dir()
        if data_dir:
            env["JAXBOUND_DATA_DIR"] = data_dir
        before = _snapshot(bench / "results")
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, str(bench / args[0]), *args[1:]], capture_output=True, text=True,
                                  timeout=timeout, cwd=bench.parent, env=env)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = 124
            out = "".join(x if isinstance(x, str) else (x or b"").decode(errors="replace")
                          for x in (exc.stdout, exc.stderr)) + f"\n(timed out after {timeout:.0f} s)"
        seconds = time.time() - t0
        after = _snapshot(bench / "results")
        files = {}
        for p in sorted(q for q, m in after.items() if before.get(q) != m):
            rel = Path(p).relative_to(bench / "results")
            if rel.name.startswith("run_all_"):
                continue
            try:
                files[str(rel)] = json.loads(Path(p).read_text())
            except (OSError, json.JSONDecodeError):
                files[str(rel)] = None
            if sandbox:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest / rel)
        return {"returncode": rc, "seconds": seconds, "output_tail": out[-4000:], "results": files,
                "results_folder": str((dest if sandbox else RESULTS).relative_to(HERE))}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all)")
    ap.add_argument("--skip", nargs="*", default=[], help="benchmark names to leave out")
    ap.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that offer it")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark (default 4 h)")
    ap.add_argument("--resume", action="store_true", help="skip benchmarks that already succeeded with these settings")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = ap.parse_args(argv)

    names = benchmarks()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"run_all: unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    names = [n for n in names if n not in set(args.skip)]
    device = device_info()
    profile = "quick" if args.quick else "full"
    out_path = RESULTS / f"run_all_{'quick_' if args.quick else ''}{device['name']}.json"
    dest = RESULTS / f"{'quick_' if args.quick else ''}{device['name']}"
    sandbox = sandboxed(args.quick, device)
    record = {"device": device, "profile": profile, "quick": args.quick, "benchmarks": {}}
    if args.resume and out_path.is_file():
        record["benchmarks"] = json.loads(out_path.read_text()).get("benchmarks", {})
    print(f"run_all: device {device['name']} ({device.get('kind')}), {profile} profile, benchmarks: {', '.join(names)}"
          + (f"; results copied to {dest}" if sandbox else ""))
    for name in names:
        cmd = command(name, args.quick)
        if cmd is None:
            print(f"[{name}] no quick settings (no --quick option, not in QUICK_ARGS): skipped", flush=True)
            record["benchmarks"][name] = {"command": None, "returncode": None, "skipped": "no quick settings"}
            continue
        prev = record["benchmarks"].get(name)
        if args.resume and prev and prev.get("returncode") == 0 and prev.get("command") == cmd:
            print(f"[{name}] done before, skipped")
            continue
        print(f"[{name}] python benchmarks/{' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        rec = run_one(name, cmd, sandbox=sandbox, dest=dest, timeout=args.timeout)
        record["benchmarks"][name] = {"command": cmd, **rec, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "loadavg": list(os.getloadavg())}
        _atomic_json(out_path, record)
        print(f"[{name}] exit {rec['returncode']} in {rec['seconds']:.0f} s; wrote "
              f"{', '.join(rec['results']) or 'nothing'}", flush=True)
    if not args.dry_run:
        _atomic_json(out_path, record)
        print(f"run_all: wrote {out_path}")
    failed = [n for n, r in record["benchmarks"].items() if n in names and r["returncode"] not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
