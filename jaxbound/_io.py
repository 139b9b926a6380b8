"""Atomic files, JSON for results, and resumable block checkpoints.

Long jobs in jaxbound (k-NN over 60k x 60k points, sweeps, training) write
their finished work as they go so that an interrupted run resumes where it
stopped. Every file is written to a temporary name in the same folder and then
moved into place with ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "to_jsonable", "fingerprint", "BlockCheckpoint"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
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


class BlockCheckpoint:
    """Keeps the finished row blocks of a streaming job in one ``.npz`` file.

    The file holds, for each output name, the rows finished so far
    (``rows_done`` of them, in order) and the job's fingerprint. A job whose
    fingerprint differs (other data, other settings) never reuses the file.

    Args:
      path: where to keep the checkpoint (``None`` disables it).
      key: the job's fingerprint (see :func:`fingerprint`).
      every_s: write at most this often (seconds); :meth:`flush` forces it.
    """

    def __init__(self, path: str | os.PathLike | None, key: str, every_s: float = 30.0):
        self.path = None if path is None else Path(path)
        self.key = key
        self.every_s = float(every_s)
        self._last = None

    def load(self) -> tuple[int, dict[str, np.ndarray]]:
        """Rows already finished and their outputs (0 and ``{}`` when none)."""
        if self.path is None or not self.path.exists():
            return 0, {}
        with np.load(self.path, allow_pickle=False) as z:
            if str(z["__key__"]) != self.key:
                return 0, {}
            rows = int(z["__rows__"])
            return rows, {k: z[k] for k in z.files if not k.startswith("__")}

    def due(self) -> bool:
        """Whether ``every_s`` seconds have passed since the last write."""
        import time

        return self._last is None or time.monotonic() - self._last >= self.every_s

    def save(self, rows_done: int, outputs: Mapping[str, np.ndarray], *, force: bool = False) -> None:
        """Write the finished rows, at most every ``every_s`` seconds unless forced."""
        import time

        if self.path is None:
            return
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        import io

        buf = io.BytesIO()
        np.savez(buf, __key__=np.asarray(self.key), __rows__=np.asarray(rows_done), **dict(outputs))
        atomic_write_bytes(self.path, buf.getvalue())

    def remove(self) -> None:
        """Delete the checkpoint once the job has finished."""
        if self.path is not None and self.path.exists():
            self.path.unlink()
