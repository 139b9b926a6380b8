"""Atomic files, JSON for results, and resumable block checkpoints.

Long jobs in jaxbound (k-NN over 60k x 60k points, sweeps, training) write
their finished work as they go so that an interrupted run resumes where it
stopped. Every file is written to a temporary name in the same folder and then
moved into place with ``os.replace``, so a reader never sees half a file.
In a multi-process run (``jax.distributed``) only process 0 writes: the
others skip the write, so that one file never has several writers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["is_writer", "atomic_write_bytes", "atomic_write_json", "to_jsonable", "fingerprint", "BlockCheckpoint", "read_json",
           "read_text_or_none", "load_json_or_none", "file_checksum"]


def is_writer() -> bool:
    """Whether this process writes files: always, except on processes other than 0 of a ``jax.distributed`` run."""
    import sys

    jax = sys.modules.get("jax")  # a run that never imported JAX is not distributed
    if jax is None or not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``); on process 0 only (:func:`is_writer`)."""
    if not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """Convert results (NamedTuples, dataclasses, NumPy/JAX arrays) to JSON types.

    Non-finite floats become ``None`` (JSON has no NaN); arrays become lists.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "_asdict"):
        return {k: to_jsonable(v) for k, v in obj._asdict().items()}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()] if arr.dtype.kind == "f" else arr.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    """Serialise ``obj`` with :func:`to_jsonable` and write it atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=False)
    atomic_write_bytes(path, (text + "\n").encode())


def fingerprint(*parts: Any) -> str:
    """A short hash of arrays and settings, to tell whether a checkpoint fits a job."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray) or hasattr(part, "__array__") and not isinstance(part, (str, bytes)):
            arr = np.ascontiguousarray(np.asarray(part))
            h.update(str((arr.dtype.str, arr.shape)).encode())
            h.update(memoryview(arr).cast("B"))
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


_CHECKSUM = "__checksum__"


def _segment_checksum(key: str, start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> str:
    """Hash of a segment's job key, rows and arrays (names, dtypes, shapes, bytes)."""
    return fingerprint(key, start, stop, *[p for name in sorted(outputs) for p in (name, outputs[name])])


def read_text_or_none(path: str | os.PathLike) -> str | None:
    """The text of ``path``, or ``None`` when it is missing, unreadable or not UTF-8."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_json(path: str | os.PathLike, *, name: str = "path", fresh: str = "") -> Any:
    """Parse the JSON file ``path``; a missing, truncated or undecodable file raises one clear ``ValueError``.

    Args:
      path: the file.
      name: the argument or option named first in the message.
      fresh: how to start afresh (e.g. ``"delete the folder and rerun"``),
        appended to the message.
    """
    text = read_text_or_none(path)
    try:
        if text is None:
            raise ValueError("missing, unreadable or not UTF-8 text")
        return json.loads(text)
    except ValueError as exc:
        tail = f"; {fresh}" if fresh else ""
        raise ValueError(f"{name}: {str(path)!r} is damaged or not a JSON file ({exc}){tail}") from None


def load_json_or_none(path: str | os.PathLike, *, what: str = "file") -> Any:
    """The parsed JSON of ``path``; ``None`` (recompute) when it is missing, and with one warning when damaged."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        return read_json(p)
    except ValueError:
        warnings.warn(f"{what} {p} is damaged (truncated or not JSON); recomputing it", RuntimeWarning,
                      stacklevel=2)
        return None


def file_checksum(data: bytes) -> str:
    """SHA-256 hex digest of ``data`` (stored beside a file to detect damage on reading)."""
    return hashlib.sha256(data).hexdigest()


class BlockCheckpoint:
    """Keeps the finished row blocks of a streaming job as segment files in a folder.

    ``path`` is a folder holding ``key.txt`` (the job's fingerprint) and one
    ``seg_<start>_<stop>.npz`` per saved run of rows; each segment is written
    atomically, holds a checksum of its job key, rows and arrays, and only new
    rows are written, so saving stays cheap however large the output grows. A
    folder whose key differs (other data, other settings) is cleared before
    use: it never feeds another job. A segment that cannot be read (truncated,
    random bytes, empty) or does not belong (no or wrong checksum, other
    arrays, wrong row count) is dropped with one warning naming it, with the
    segments after it, and those rows are recomputed.

    Args:
      path: the folder (``None`` disables checkpointing).
      key: the job's fingerprint (see :func:`fingerprint`).
      every_s: :meth:`due` turns true this many seconds after the last save.
    """

    def __init__(self, path: str | os.PathLike | None, key: str, every_s: float = 30.0):
        self.path = None if path is None else Path(path)
        self.key = key
        self.every_s = float(every_s)
        if not (math.isfinite(self.every_s) and self.every_s >= 0):
            raise ValueError(f"checkpoint_every: must be a finite number of seconds >= 0, got {every_s!r}")
        self._last = time.monotonic()

    def _segments(self) -> list[tuple[int, int, Path]]:
        segs = []
        for f in self.path.glob("seg_*_*.npz"):
            try:
                a, b = (int(v) for v in f.stem.split("_")[1:3])
            except ValueError:
                continue
            segs.append((a, b, f))
        return sorted(segs)

    def _key_matches(self) -> bool:
        text = read_text_or_none(self.path / "key.txt")
        return text is not None and text.strip() == self.key

    def _read_segment(self, a: int, b: int, f: Path, names: list[str] | None) -> dict[str, np.ndarray]:
        """The arrays of one segment; ``ValueError`` (or a NumPy/zip error) when it is damaged or foreign."""
        with np.load(f, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        stored = out.pop(_CHECKSUM, None)
        if stored is None or str(stored) != _segment_checksum(self.key, a, b, out):
            raise ValueError("checksum mismatch")
        if names is not None and sorted(out) != names:
            raise ValueError("other arrays than the segments before it")
        if any(v.ndim == 0 or v.shape[0] != b - a for v in out.values()):
            raise ValueError("wrong row count")
        return out

    def load(self) -> tuple[int, dict[str, np.ndarray]]:
        """Rows finished so far (a prefix) and their outputs (0 and ``{}`` when none)."""
        if self.path is None or not self.path.is_dir() or not self._key_matches():
            return 0, {}
        rows, parts = 0, []
        segs = self._segments()
        for i, (a, b, f) in enumerate(segs):
            if a != rows or b <= a:  # keep only the contiguous prefix; later segments are stale
                for _, _, g in segs[i:]:
                    g.unlink(missing_ok=True)
                break
            try:
                parts.append(self._read_segment(a, b, f, sorted(parts[0]) if parts else None))
            except Exception as exc:  # noqa: BLE001 - truncated, random bytes, empty or foreign: recompute
                warnings.warn(f"checkpoint: segment {f} is damaged or foreign ({type(exc).__name__}: {exc}); "
                              f"recomputing rows from {a}", RuntimeWarning, stacklevel=2)
                for _, _, g in segs[i:]:
                    g.unlink(missing_ok=True)
                break
            rows = b
        if not parts:
            return 0, {}
        return rows, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def due(self) -> bool:
        """Whether ``every_s`` seconds have passed since the last save."""
        return time.monotonic() - self._last >= self.every_s

    def save(self, start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        """Write rows ``[start, stop)`` as one segment (with its checksum)."""
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        keyfile = self.path / "key.txt"
        if not self._key_matches():
            for _, _, f in self._segments():
                f.unlink()
            atomic_write_bytes(keyfile, self.key.encode())
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        buf = io.BytesIO()
        np.savez(buf, **outputs, **{_CHECKSUM: np.asarray(_segment_checksum(self.key, start, stop, outputs))})
        atomic_write_bytes(self.path / f"seg_{start:012d}_{stop:012d}.npz", buf.getvalue())
        self._last = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint folder once the job has finished (with temporary files a killed run left)."""
        if self.path is not None and self.path.is_dir():
            for _, _, f in self._segments():
                f.unlink()
            for f in [*self.path.glob(".seg_*.tmp"), *self.path.glob(".key.txt.*.tmp")]:
                f.unlink(missing_ok=True)
            (self.path / "key.txt").unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:  # the user keeps other files there
                pass
