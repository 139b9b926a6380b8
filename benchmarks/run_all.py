"""Run every benchmark on the current device and write one results file for the device.

    python benchmarks/run_all.py            # every benchmark, full size
    python benchmarks/run_all.py --quick    # smoke sizes where a benchmark offers --quick
    python benchmarks/run_all.py --only knn optprob --timeout 3600
    python benchmarks/run_all.py --dry-run  # print the commands

Each ``benchmarks/<name>.py`` (except this file, ``readme_tables.py`` and
files starting with ``_``) runs in its own process, one after the other, on
whatever JAX sees as its default device (CPU, or the GPU of an accelerator
machine). On the CPU the benchmarks write their usual files under
``benchmarks/results/``; on another device a benchmark that takes ``--out``
writes to ``benchmarks/results/<device>/<name>.json`` (with ``--quick``:
``results/quick_<device>/``) so that the full CPU results are never overwritten
(a benchmark without ``--out`` writes its own default file). Afterwards ``benchmarks/results/run_all_<device>.json``
collects, per benchmark, the command, exit status, wall time, the last lines
of its output and the content of every results file it wrote or updated.
The file is rewritten (atomically) after each benchmark, so an interrupted run
keeps what finished; ``--resume`` skips benchmarks that already succeeded
with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKIP = {"run_all", "readme_tables"}


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


def command(name: str, device: dict, quick: bool) -> list[str]:
    """The command line of one benchmark on this device."""
    h = _help(name)
    cmd = [sys.executable, str(HERE / f"{name}.py")]
    if quick and "--quick" in h:
        cmd.append("--quick")
    folder = ("quick_" if quick else "") + device["name"]
    if (quick or device["name"] != "cpu") and "--out" in h:
        cmd += ["--out", str(RESULTS / folder / f"{name}.json")]
    return cmd


def _snapshot() -> dict:
    return {str(p): p.stat().st_mtime for p in RESULTS.rglob("*.json")}


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
    out_path = RESULTS / f"run_all_{device['name']}.json"
    record = {"device": device, "quick": args.quick, "benchmarks": {}}
    if args.resume and out_path.is_file():
        record["benchmarks"] = json.loads(out_path.read_text()).get("benchmarks", {})
    print(f"run_all: device {device['name']} ({device.get('kind')}), benchmarks: {', '.join(names)}")
    for name in names:
        cmd = command(name, device, args.quick)
        prev = record["benchmarks"].get(name)
        if args.resume and prev and prev.get("returncode") == 0 and prev.get("command") == cmd[1:]:
            print(f"[{name}] done before, skipped")
            continue
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        before = _snapshot()
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE.parent)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = 124, (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else ""
        seconds = time.time() - t0
        after = _snapshot()
        written = sorted(p for p, m in after.items() if before.get(p) != m and Path(p) != out_path)
        files = {}
        for p in written:
            try:
                files[str(Path(p).relative_to(HERE))] = json.loads(Path(p).read_text())
            except (OSError, json.JSONDecodeError):
                files[str(Path(p).relative_to(HERE))] = None
        record["benchmarks"][name] = {"command": cmd[1:], "returncode": rc, "seconds": seconds,
                                      "output_tail": out[-4000:], "results": files,
                                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _atomic_json(out_path, record)
        print(f"[{name}] exit {rc} in {seconds:.0f} s; wrote {', '.join(files) or 'nothing'}", flush=True)
    if not args.dry_run:
        _atomic_json(out_path, record)
        print(f"run_all: wrote {out_path}")
    failed = [n for n, r in record["benchmarks"].items() if n in names and r["returncode"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
