"""The block engine: every O(n)-row or O(n²) job of jaxbound streams through here.

A job is a pure kernel ``kernel(*batch_args, *rep_args, **static)`` whose
``batch_args`` carry examples (or query rows) on axis 0 and whose
``rep_args`` are shared by all rows (reference points, a PRNG key, model
parameters). :func:`run` cuts the rows into blocks of ``block_size``, pads the
last block, splits every block over the local devices with
``jax.shard_map`` (replicating ``rep_args``), copies each block's outputs to
the host, and optionally keeps finished blocks in a checkpoint folder and
shows a progress bar. Traced inputs (a call under ``jax.jit``) run the kernel
directly and return JAX arrays.

There is one compile cache for all modules (:func:`compiled`), keyed by the
kernel, its static settings (callables hashed by identity), the devices, the
argument layout and the output axis; :func:`clear_cache` empties it.

In a multi-process run (:mod:`jaxbound.distributed`) :func:`stream` checks
that every process passed the same job, gives process ``p`` of ``P`` the
blocks ``p, p + P, ...`` (the same blocks, block size and local devices a
single process uses, so the outputs are bit for bit the same), and gathers
each round of ``P`` blocks to every process; process 0 alone keeps the
checkpoint. With :func:`jaxbound.distributed.local_rows` the row arguments
are each process's own rows instead.

Private: modules of jaxbound use it whole (``from jaxbound import _engine``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxbound import _checks, distributed
from jaxbound._io import BlockCheckpoint, fingerprint

__all__ = [
    "run",
    "stream",
    "compiled",
    "clear_cache",
    "freeze",
    "thaw",
    "pad_rows",
    "key_data",
    "block_rows",
    "precision_ctx",
    "check_precision",
    "concrete",
    "check_checkpoint_dir",
]

#: Seconds between checkpoint saves of a streaming job.
CHECKPOINT_EVERY_S = 30.0


class _Static:
    """Hash a callable by identity so that it can be a static jit argument."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _Static) and other.fn is self.fn


def freeze(static: dict) -> tuple:
    """Static settings as a hashable, sorted tuple (callables hashed by identity)."""
    return tuple(sorted((k, _Static(v) if callable(v) else v) for k, v in static.items()))


def thaw(items: tuple) -> dict:
    """Inverse of :func:`freeze`."""
    return {k: (v.fn if isinstance(v, _Static) else v) for k, v in items}


@functools.lru_cache(maxsize=128)
def _compiled(kernel: Callable, static_items: tuple, devices: tuple, n_batch: int, n_rep: int, out_axis: int):
    fn = functools.partial(kernel, **thaw(static_items))
    if len(devices) == 1:
        return jax.jit(fn)
    mesh = Mesh(np.array(devices, dtype=object), ("batch",))
    out_spec = P(*([None] * out_axis), "batch")
    return jax.jit(
        jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(P("batch"),) * n_batch + (P(),) * n_rep,
            out_specs=out_spec,
            check_vma=False,
        )
    )


def compiled(kernel: Callable, static: dict, *, n_batch: int, n_rep: int, out_axis: int = 0,
             devices: Sequence[Any] | None = None) -> Callable:
    """``jit(shard_map(kernel))`` over a 1-D mesh: ``n_batch`` leading arguments split on axis 0, the rest replicated.

    With one device the kernel is only jitted. Outputs carry the batch on
    ``out_axis``.
    """
    devs = tuple(jax.local_devices() if devices is None else devices)
    return _compiled(kernel, freeze(static), devs, int(n_batch), int(n_rep), int(out_axis))


def clear_cache() -> None:
    """Drop every compiled kernel of the engine (frees device memory held by executables)."""
    _compiled.cache_clear()


def concrete(*args: Any) -> bool:
    """True when no argument is a tracer (values can be copied to the host)."""
    return all(_checks.is_concrete(a) for a in jax.tree.leaves(args))


def pad_rows(a: np.ndarray, size: int, fill: Any = None) -> np.ndarray:
    """Pad ``a`` on axis 0 to ``size`` rows: repeat the last row (``fill=None``) or use ``fill``."""
    n = a.shape[0]
    if n == size:
        return a
    if fill is None:
        return np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)], axis=0)
    out = np.full((size,) + a.shape[1:], fill, dtype=a.dtype)
    out[:n] = a
    return out


def key_data(key: Any) -> np.ndarray:
    """Raw data of a PRNG key (typed or legacy ``uint32[2]``) as a host array."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key))
    return np.asarray(key)


def block_rows(block_size: int | None, default: int, *, n: int, n_devices: int | None = None) -> int:
    """Rows per call: ``block_size`` (or ``default``), at most ``n``, rounded up to a multiple of the device count."""
    nd = len(jax.local_devices()) if n_devices is None else int(n_devices)
    bs = default if block_size is None else _checks.check_int(block_size, "batch_size", low=1)
    bs = max(1, min(bs, max(n, 1)))
    return -(-bs // nd) * nd


@contextlib.contextmanager
def precision_ctx(precision: str):
    """Yield the dtype of ``precision``; ``"float64"`` switches JAX's x64 mode on for the block only."""
    if precision == "float64":
        with jax.enable_x64(True):
            yield jnp.float64
    else:
        yield jnp.float32


def check_precision(precision: Any) -> str:
    """``"float32"`` or ``"float64"``, else a ``ValueError`` naming ``precision``."""
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision: must be 'float32' or 'float64', got {precision!r}")
    return precision


def check_checkpoint_dir(checkpoint: Any, name: str = "checkpoint"):
    """A checkpoint folder path (created on the first save): an existing file, or a path under one, raises."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a folder path, got {type(checkpoint).__name__}")
    p = Path(checkpoint).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ValueError(f"{name}: {str(q)!r} is a file, not a folder")
            if not os.access(q, os.W_OK | os.X_OK):
                raise ValueError(f"{name}: folder {str(q)!r} is not writable")
            break
    return p


def _host(arg: Any) -> Any:
    return key_data(arg) if hasattr(arg, "dtype") and jnp.issubdtype(arg.dtype, jax.dtypes.prng_key) else arg


def _default_collect(out: Any, n_valid: int, out_axis: int) -> list[np.ndarray]:
    return [np.moveaxis(np.asarray(leaf), out_axis, 0)[:n_valid] for leaf in jax.tree.leaves(out)]


def stream(
    kernel: Callable,
    static: dict,
    batch_args: Sequence[Any],
    rep_args: Sequence[Any] = (),
    *,
    block_size: int,
    out_axis: int = 0,
    pad: Sequence[Any] | None = None,
    collect: Callable[[Any, int], Sequence[np.ndarray]] | None = None,
    progress: bool = False,
    desc: str = "",
    unit: str = "ex",
    checkpoint: Any = None,
    job: Sequence[Any] = (),
    devices: Sequence[Any] | None = None,
    checkpoint_every: float | None = None,
) -> tuple[Any, list[list[np.ndarray]]]:
    """Run ``kernel`` over blocks of rows; returns ``(treedef, blocks)`` with each block's host leaves.

    Args:
      kernel: pure function ``kernel(*batch_args, *rep_args, **static)``.
      static: hashable settings (callables are hashed by identity).
      batch_args: host arrays sharing the row count on axis 0.
      rep_args: arrays shared by all rows.
      block_size: rows per call (see :func:`block_rows`).
      out_axis: the axis of the kernel's outputs that carries the rows.
      pad: per batch argument, the fill of padded rows (``None``: repeat
        the last row); default: repeat for every argument.
      collect: ``collect(outputs, n_valid)`` -> host leaves of one block
        (rows on axis 0); default: every leaf, first ``n_valid`` rows.
      progress: show a progress bar.
      desc, unit: the bar's label and unit.
      checkpoint: folder keeping finished blocks (``None``: none); a run
        killed midway resumes from the saved prefix with identical outputs.
      job: extra parts of the checkpoint's fingerprint (things the kernel
        depends on that the arrays and settings do not show, e.g. a probe of
        a model's outputs).
      devices: the devices a block is split over (default: all local
        devices). One device keeps a whole block in one call, for kernels
        whose randomness depends on the block rather than on the row.
      checkpoint_every: seconds between checkpoint saves (default
        :data:`CHECKPOINT_EVERY_S`; ``0`` saves after every block).
    """
    batch_args = [np.asarray(a) for a in batch_args]
    n = int(batch_args[0].shape[0])
    pad = [None] * len(batch_args) if pad is None else list(pad)
    if distributed.is_active():
        return _stream_multi(kernel, static, batch_args, rep_args, block_size=block_size, out_axis=out_axis, pad=pad,
                             collect=collect, progress=progress, desc=desc, unit=unit, checkpoint=checkpoint, job=job,
                             devices=devices, checkpoint_every=checkpoint_every)
    fn = compiled(kernel, static, n_batch=len(batch_args), n_rep=len(rep_args), out_axis=out_axis, devices=devices)
    collect = collect or (lambda out, nv: _default_collect(out, nv, out_axis))
    ckpt, start, blocks, treedef = None, 0, [], None
    if checkpoint is not None:
        settings = repr([(k, v) for k, v in sorted(static.items()) if not callable(v)])
        parts = [getattr(kernel, "__qualname__", repr(kernel)), settings, *job, *batch_args, *map(_host, rep_args)]
        every = CHECKPOINT_EVERY_S if checkpoint_every is None else checkpoint_every
        ckpt = BlockCheckpoint(check_checkpoint_dir(checkpoint), fingerprint(*parts), every_s=every)
        start, saved = ckpt.load()
        if start:
            blocks.append([saved[f"out{i}"] for i in range(len(saved))])
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=start, desc=desc, unit=unit, disable=not progress, leave=False)
    pending: list[list[np.ndarray]] = []
    saved_to = done = start

    def flush(stop):
        nonlocal pending, saved_to
        if ckpt is not None and pending:
            seg = [np.concatenate(p) for p in zip(*pending)]
            ckpt.save(saved_to, stop, {f"out{i}": a for i, a in enumerate(seg)})
            saved_to, pending = stop, []

    try:
        for lo in range(start, n, block_size):
            hi = min(n, lo + block_size)
            chunk = [pad_rows(a[lo:hi], block_size, f) for a, f in zip(batch_args, pad)]
            out = fn(*chunk, *rep_args)
            treedef = jax.tree.structure(out)
            leaves = list(collect(out, hi - lo))
            blocks.append(leaves)
            pending.append(leaves)
            done = hi
            bar.update(hi - lo)
            if ckpt is not None and ckpt.due() and hi < n:
                flush(hi)
    except BaseException:
        flush(done)  # keep finished blocks when interrupted
        raise
    finally:
        bar.close()
    if treedef is None and blocks and start:  # everything came from the checkpoint
        shapes = [jax.ShapeDtypeStruct((block_size,) + a.shape[1:], a.dtype) for a in batch_args]
        treedef = jax.tree.structure(jax.eval_shape(functools.partial(kernel, **static), *shapes, *rep_args))
    if ckpt is not None:
        ckpt.remove()
    return treedef, blocks


def run(
    kernel: Callable,
    static: dict,
    batch_args: Sequence[Any],
    rep_args: Sequence[Any] = (),
    *,
    block_size: int | None = None,
    default_block: int = 512,
    out_axis: int = 0,
    pad: Sequence[Any] | None = None,
    progress: bool = False,
    desc: str = "",
    unit: str = "ex",
    checkpoint: Any = None,
    job: Sequence[Any] = (),
    empty: Any = None,
    devices: Sequence[Any] | None = None,
    checkpoint_every: float | None = None,
) -> Any:
    """Run ``kernel`` over all rows and return its output pytree with the rows concatenated on ``out_axis``.

    Traced arguments call ``kernel`` directly (one block, JAX arrays out).
    ``block_size=None`` takes ``default_block`` rows per call. With no rows
    the outputs have 0 rows (shapes from ``jax.eval_shape``), unless
    ``empty`` gives the result. See :func:`stream` for the other arguments.
    """
    if not concrete(*batch_args, *rep_args):
        return kernel(*batch_args, *rep_args, **static)
    n = int(np.shape(batch_args[0])[0])
    if n == 0 and distributed.local_rows_active():
        _check_local_rows(n)  # the processes must agree before any returns early
    if n == 0:
        if empty is not None:
            return empty
        shapes = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in batch_args]
        out = jax.eval_shape(functools.partial(kernel, **static), *shapes, *rep_args)
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), out)
    bs = block_rows(block_size, default_block, n=n, n_devices=None if devices is None else len(devices))
    treedef, blocks = stream(kernel, static, batch_args, rep_args, block_size=bs, out_axis=out_axis, pad=pad,
                             progress=progress, desc=desc, unit=unit, checkpoint=checkpoint, job=job,
                             devices=devices, checkpoint_every=checkpoint_every)
    leaves = [np.moveaxis(np.concatenate(p), 0, out_axis) for p in zip(*blocks)]
    return jax.tree.unflatten(treedef, leaves)


# ---------------------------------------------------------------------------
# Multi-process runs (jax.distributed): rounds of one block per process
# ---------------------------------------------------------------------------


def _check_local_rows(n: int) -> None:
    """With process-local rows every process must hold the same number of rows; else ``ValueError`` everywhere."""
    counts = [int(b) for b in distributed.exchange(str(int(n)).encode(), what="process-local rows")]
    if len(set(counts)) > 1:
        raise ValueError(f"rows: with process-local rows every process must hold the same number of rows, got "
                         f"{counts} over {len(counts)} processes; the process count must divide the work (split "
                         "the rows evenly, padding the last share)")


def _job_parts(kernel, static, batch_args, rep_args, job, *, local: bool) -> list:
    settings = repr([(k, v) for k, v in sorted(static.items()) if not callable(v)])
    rows = [(a.dtype.str, a.shape[1:]) for a in batch_args] if local else list(batch_args)
    return [getattr(kernel, "__qualname__", repr(kernel)), settings, *job, *rows,
            *[_host(leaf) for leaf in jax.tree.leaves(list(rep_args))]]


def _multi_start(ckpt_args: tuple | None, kernel, static, batch_args, rep_args, job):
    """(checkpoint on process 0 or None, first row, saved leaves) with process 0's view broadcast to all."""
    ckpt, start, saved = None, 0, []
    if ckpt_args is not None and distributed.is_writer():
        path, every = ckpt_args
        parts = _job_parts(kernel, static, batch_args, rep_args, job, local=False)
        ckpt = BlockCheckpoint(path, fingerprint(*parts), every_s=every)
        start, got = ckpt.load()
        saved = [got[f"out{i}"] for i in range(len(got))]
    start, saved = distributed.on_process_zero(lambda: (start, saved))
    return ckpt, start, saved


def _multi_rounds(n: int, start: int, block_size: int, local: bool) -> list[list[tuple[int, int] | None]]:
    """``rounds[r][p]``: the rows process ``p`` computes in round ``r`` (``None``: none)."""
    n_proc = distributed.process_count()
    if local:
        spans = [(lo, min(n, lo + block_size)) for lo in range(0, n, block_size)]
        return [[s] * n_proc for s in spans]
    spans = [(lo, min(n, lo + block_size)) for lo in range(start, n, block_size)]
    return [[spans[i] if i < len(spans) else None for i in range(r, r + n_proc)]
            for r in range(0, len(spans), n_proc)]


def _multi_block(fn, batch_args, rep_args, pad, span, block_size, collect):
    """One process's block of a round: (treedef or the exception, host leaves, error message).

    ``collect=None`` keeps the kernel's raw outputs (collected later on every
    process, in row order); else the collected leaves.
    """
    if span is None:
        return None, [], None
    lo, hi = span
    try:
        chunk = [pad_rows(a[lo:hi], block_size, f) for a, f in zip(batch_args, pad)]
        out = fn(*chunk, *rep_args)
        leaves = jax.tree.leaves(out) if collect is None else collect(out, hi - lo)
        return jax.tree.structure(out), [np.asarray(v) for v in leaves], None
    except Exception as exc:  # noqa: BLE001 - reported to every process, raised here as itself
        return exc, [], f"{type(exc).__name__}: {exc}"


def _out_treedef(kernel, static, batch_args, rep_args, block_size):
    shapes = [jax.ShapeDtypeStruct((block_size,) + a.shape[1:], a.dtype) for a in batch_args]
    return jax.tree.structure(jax.eval_shape(functools.partial(kernel, **static), *shapes, *rep_args))


def _stream_multi(kernel, static, batch_args, rep_args, *, block_size, out_axis, pad, collect, progress, desc, unit,
                  checkpoint, job, devices, checkpoint_every):
    """:func:`stream` over all processes: same job checked, rounds of one block per process, gathered to all."""
    local = distributed.local_rows_active()
    n = int(batch_args[0].shape[0])
    if local:
        _check_local_rows(n)
        if checkpoint is not None:
            raise ValueError("checkpoint: not kept with process-local rows (jaxbound.distributed.local_rows); "
                             "pass checkpoint=None")
    distributed.check_same(*_job_parts(kernel, static, batch_args, rep_args, job, local=local),
                           block_size, out_axis, local, checkpoint is not None, name="inputs")
    ckpt_args = None
    if checkpoint is not None:
        ckpt_args = (check_checkpoint_dir(checkpoint), CHECKPOINT_EVERY_S if checkpoint_every is None
                     else checkpoint_every)
    ckpt, start, saved = _multi_start(ckpt_args, kernel, static, batch_args, rep_args, job)
    fn = compiled(kernel, static, n_batch=len(batch_args), n_rep=len(rep_args), out_axis=out_axis, devices=devices)
    collect = collect or (lambda out, nv: _default_collect(out, nv, out_axis))
    me, treedef = distributed.process_index(), None
    blocks: list[list[np.ndarray]] = [saved] if start else []
    per_proc: list[list[list[np.ndarray]]] = [[] for _ in range(distributed.process_count())]
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=start, desc=desc, unit=unit, disable=not (progress and me == 0), leave=False)
    pending, saved_to, done = [], start, start

    def flush(stop):
        nonlocal pending, saved_to
        if ckpt is not None and pending:
            ckpt.save(saved_to, stop, {f"out{i}": np.concatenate(p) for i, p in enumerate(zip(*pending))})
            saved_to, pending = stop, []

    try:
        for spans in _multi_rounds(n, start, block_size, local):
            tdef, leaves, err = _multi_block(fn, batch_args, rep_args, pad, spans[me], block_size,
                                             collect if local else None)
            if local and err is None and tdef is not None and not leaves:
                raise ValueError("local_rows: this call keeps its results outside the blocks (e.g. "
                                 "geometry.radius_pairs), so they cannot be gathered from process-local rows; pass "
                                 "the same full inputs on every process instead")
            try:
                got = distributed.allgather(leaves, error=err)
            except RuntimeError:
                if err is not None:
                    raise tdef from None
                raise
            treedef = treedef if err is not None or tdef is None else tdef
            for p, span in enumerate(spans):
                if span is not None and not local:  # every process collects every block, in row order
                    if treedef is None:
                        treedef = _out_treedef(kernel, static, batch_args, rep_args, block_size)
                    got[p] = list(collect(jax.tree.unflatten(treedef, got[p]), span[1] - span[0]))
                if span is not None:
                    (per_proc[p] if local else blocks).append(got[p])
                    if ckpt is not None:
                        pending.append(got[p])
                    bar.update(span[1] - span[0])
                    done = span[1]
            if ckpt is not None and ckpt.due() and done < n:
                flush(done)
    except BaseException:
        if not local:
            flush(done)  # keep finished rounds when interrupted
        raise
    finally:
        bar.close()
    if local:
        blocks = [b for proc in per_proc for b in proc]
    if treedef is None and blocks:  # this process computed no block (few rows, or all from the checkpoint)
        treedef = _out_treedef(kernel, static, batch_args, rep_args, block_size)
    if ckpt is not None:
        ckpt.remove()
    return treedef, blocks
