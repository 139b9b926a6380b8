"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_data_dir(arg=None, *, need=("mnist",)) -> Path | None:
    """The folder that holds the IDX datasets, or ``None``.

    Candidates in order: ``arg`` (a ``--data-dir`` option), ``$JAXBOUND_DATA_DIR``,
    then ``../shared/data`` beside the repository; the first one with any of the
    sub-folders in ``need`` (``"mnist"``, ``"fashion-mnist"``) wins.
    """
    cands = [Path(arg)] if arg else []
    if os.environ.get("JAXBOUND_DATA_DIR"):
        cands.append(Path(os.environ["JAXBOUND_DATA_DIR"]))
    cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        if any((c / n).is_dir() for n in need):
            return c
    return None


def require_data_dir(arg=None, *, need=("mnist",)) -> Path:
    """:func:`find_data_dir`, or exit with a clear message (the benchmark is skipped)."""
    path = find_data_dir(arg, need=need)
    if path is None:
        sys.exit(f"{' / '.join(need)} IDX files not found: set JAXBOUND_DATA_DIR, or place them in ../shared/data "
                 "(skipping the benchmark)")
    return path
