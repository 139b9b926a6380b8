"""Multi-process runs on JAX's multi-controller runtime (``jax.distributed``).

After :func:`initialize` (or ``jax.distributed.initialize(...)``) every
process runs the same program. The block engine behind ``geometry.knn``,
``radius_pairs``, ``count_within``, ``nearest_other_class``, the
concentration count tables and density ranks, ``attacks.pgd``/``autoattack``
and the metrics then splits the row blocks over the processes: process ``p``
of ``P`` computes blocks ``p, p + P, p + 2P, ...`` on its own devices, exactly
as a single process would compute them, and the finished blocks are gathered
with :func:`jax.experimental.multihost_utils.process_allgather`, so every
process returns the full result, bit for bit the single-process one.

Two ways to pass data:

* Simple mode (default): every process passes the same full inputs. A cheap
  fingerprint of the inputs (BLAKE2b of the arrays and settings) is compared
  across processes first; different inputs raise ``ValueError`` on every
  process.
* Process-local rows (:func:`local_rows`): inside ``with local_rows():`` the
  row arguments of a call (``queries`` of ``geometry.knn``, the examples of an
  attack or a metric) are this process's own rows; the shared arguments
  (reference points, model parameters, the key) are still the same on every
  process. Every process must hold the same number of rows (the process count
  must divide the work) and gets the full result: process 0's rows first, then
  process 1's, and so on. For data that does not fit one host. Checkpoints are
  not kept in this mode, and calls that keep their results outside the row
  blocks (``geometry.radius_pairs``) raise ``ValueError`` in it.

Host-side steps (max-flow, linear programs) run on process 0 only and their
result reaches every process through :func:`on_process_zero` (or
:func:`broadcast`). Result files written through jaxbound's atomic writers are
written by process 0 only.

Every exchange first meets at the runtime's coordination service with a
timeout (:func:`set_timeout`, default :data:`DEFAULT_TIMEOUT_S` seconds, or the
``JAXBOUND_DISTRIBUTED_TIMEOUT_S`` environment variable): a process that
stopped with an error, or takes another code path, makes the others raise
``TimeoutError`` instead of waiting for ever. All processes must therefore
make the same jaxbound calls in the same order.

On CPU the collectives run over gloo (:func:`initialize` selects it before
starting the runtime).

References:
  JAX documentation, "Multi-process environments" (jax.distributed,
  multihost_utils): https://docs.jax.dev/en/latest/multi_process.html
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import os
import pickle
from typing import Any, Callable, Sequence

import numpy as np

from jaxbound._io import fingerprint

__all__ = [
    "initialize",
    "is_active",
    "process_index",
    "process_count",
    "is_writer",
    "set_timeout",
    "timeout_s",
    "exchange",
    "check_same",
    "allgather",
    "broadcast",
    "on_process_zero",
    "local_rows",
    "local_rows_active",
    "DEFAULT_TIMEOUT_S",
    "AUTO_DETECT_ENV",
]

#: Seconds a process waits for the others at an exchange before raising ``TimeoutError``.
DEFAULT_TIMEOUT_S = 600.0

#: Environment variables from which ``jax.distributed.initialize()`` finds the coordinator by itself
#: (its own variable, SLURM, Open MPI, Cloud TPU).
AUTO_DETECT_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
                   "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE")

_timeout: list[float | None] = [None]
_seq = itertools.count()
_local_rows = contextvars.ContextVar("jaxbound_local_rows", default=False)
_solo = contextvars.ContextVar("jaxbound_solo", default=False)  # inside on_process_zero: one process alone


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: float | None = None,
               heartbeat_s: int = 100) -> None:
    """Start JAX's multi-controller runtime (gloo collectives on CPU).

    Args:
      coordinator_address: ``host:port`` of process 0's coordination service;
        ``None``: from the environment (``JAX_COORDINATOR_ADDRESS``, SLURM,
        Open MPI, Cloud TPU), else ``ValueError``.
      num_processes: number of processes (``None``: from the environment).
      process_id: this process's index in ``[0, num_processes)``.
      timeout: seconds to wait for all processes to join, also the exchange
        timeout (see :func:`set_timeout`); default :data:`DEFAULT_TIMEOUT_S`.
      heartbeat_s: seconds without a heartbeat after which the runtime treats
        a process as dead.
    """
    import jax

    if coordinator_address is None and not any(v in os.environ for v in AUTO_DETECT_ENV):
        raise ValueError("coordinator_address: no coordinator given and none found in the environment "
                         f"({', '.join(AUTO_DETECT_ENV)}); pass host:port of process 0")
    if coordinator_address is not None and (not isinstance(coordinator_address, str)
                                            or ":" not in coordinator_address):
        raise ValueError(f"coordinator_address: expected 'host:port', got {coordinator_address!r}")
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(f"num_processes: expected an integer >= 1, got {num_processes!r}")
    if process_id is not None and (not isinstance(process_id, int) or process_id < 0
                                   or (num_processes is not None and process_id >= num_processes)):
        raise ValueError(f"process_id: expected an integer in [0, num_processes), got {process_id!r}")
    if timeout is not None:
        set_timeout(timeout)
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives; accelerators keep theirs
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s()), heartbeat_timeout_seconds=int(heartbeat_s))


def is_active() -> bool:
    """True when the multi-controller runtime is running with more than one process (and not in :func:`on_process_zero`)."""
    import jax

    return bool(jax.distributed.is_initialized()) and jax.process_count() > 1 and not _solo.get()


def process_index() -> int:
    """This process's index (0 when not distributed)."""
    import jax

    return int(jax.process_index()) if jax.distributed.is_initialized() else 0


def process_count() -> int:
    """Number of processes (1 when not distributed)."""
    import jax

    return int(jax.process_count()) if jax.distributed.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes result files and checkpoints (process 0, or no distributed run)."""
    return process_index() == 0


def set_timeout(seconds: float | None) -> None:
    """Seconds each exchange waits for the other processes (``None``: the default)."""
    if seconds is not None:
        try:
            ok = float(seconds) > 0 and np.isfinite(float(seconds))
        except (TypeError, ValueError):
            ok = False
        if isinstance(seconds, bool) or not ok:
            raise ValueError(f"timeout: expected a finite number of seconds > 0, got {seconds!r}")
        seconds = float(seconds)
    _timeout[0] = seconds


def timeout_s() -> float:
    """The exchange timeout in seconds (:func:`set_timeout`, ``JAXBOUND_DISTRIBUTED_TIMEOUT_S``, or the default)."""
    if _timeout[0] is not None:
        return _timeout[0]
    env = os.environ.get("JAXBOUND_DISTRIBUTED_TIMEOUT_S")
    return float(env) if env else DEFAULT_TIMEOUT_S


def _client():
    """The coordination-service client of ``jax.distributed`` (key-value store and barriers)."""
    from jax._src import distributed as jd

    if jd.global_state.client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return jd.global_state.client


def exchange(data: bytes, *, what: str = "exchange") -> list[bytes]:
    """Every process's ``data``, in process order, through the coordination service's key-value store.

    Each process publishes its bytes and reads the others' with the timeout of
    :func:`timeout_s`; a process that does not arrive makes the waiting ones
    raise ``TimeoutError`` naming ``what``. Without a distributed run returns
    ``[data]``.
    """
    if not is_active():
        return [bytes(data)]
    client, me, n, seq = _client(), process_index(), process_count(), next(_seq)
    client.key_value_set_bytes(f"jaxbound/x/{seq}/{me}", bytes(data))
    out, ms = [], max(1, int(timeout_s() * 1000))
    for p in range(n):
        try:
            out.append(bytes(client.blocking_key_value_get_bytes(f"jaxbound/x/{seq}/{p}", ms)))
        except Exception as exc:  # noqa: BLE001 - the runtime raises its own error type on a deadline
            raise TimeoutError(f"{what}: process {p} of {n} did not arrive within {timeout_s():g} s (it probably "
                               f"stopped with an error, or made other calls); {type(exc).__name__}: {exc}") from None
    if seq >= 2:  # every process has read the keys of seq - 2 before publishing those of seq - 1
        with contextlib.suppress(Exception):
            client.key_value_delete(f"jaxbound/x/{seq - 2}/{me}")
    return out


def check_same(*parts: Any, name: str = "inputs") -> str:
    """Raise ``ValueError`` on every process unless all processes pass the same ``parts``; returns the fingerprint.

    ``parts`` are arrays, pytrees of arrays or settings; they are hashed
    (:func:`jaxbound._io.fingerprint`) and the hashes compared.
    """
    import jax

    leaves = []
    for part in parts:
        for leaf in jax.tree.leaves(part):
            if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            leaves.append(np.asarray(leaf) if hasattr(leaf, "__array__") else leaf)
    fp = fingerprint(*leaves)
    got = [b.decode() for b in exchange(fp.encode(), what=f"{name} check")]
    if len(set(got)) > 1:
        groups = {h: [p for p, g in enumerate(got) if g == h] for h in dict.fromkeys(got)}
        raise ValueError(f"{name}: the processes passed different inputs (processes grouped by input "
                         f"fingerprint: {list(groups.values())}); in the simple mode every process passes the "
                         "same full inputs (use jaxbound.distributed.local_rows() for process-local rows)")
    return fp


def _meta_and_bytes(arrays: Sequence[np.ndarray]) -> tuple[list, bytes]:
    meta, chunks = [], []
    for a in arrays:
        a = np.ascontiguousarray(a)
        meta.append([a.dtype.str, list(a.shape), a.nbytes])
        chunks.append(a.tobytes())
    return meta, b"".join(chunks)


def allgather(arrays: Sequence[np.ndarray], *, error: str | None = None) -> list[list[np.ndarray]]:
    """Every process's ``arrays`` (any shapes and dtypes, bit-exact), as ``out[process][i]``.

    The shapes (and ``error``, a message from a process whose work failed) go
    through :func:`exchange`; if any process reports an error, every process
    raises ``RuntimeError`` with it. The bytes then travel in one
    :func:`jax.experimental.multihost_utils.process_allgather`.
    """
    meta, blob = _meta_and_bytes(arrays)
    infos = [json.loads(b) for b in exchange(json.dumps({"meta": meta, "error": error}).encode(), what="gather")]
    failed = [(p, i["error"]) for p, i in enumerate(infos) if i["error"] is not None]
    if failed:
        raise RuntimeError("; ".join(f"process {p} failed: {msg}" for p, msg in failed))
    if not is_active():
        return [list(arrays)]
    from jax.experimental import multihost_utils

    sizes = [sum(m[2] for m in i["meta"]) for i in infos]
    buf = np.zeros(max(max(sizes), 1), np.uint8)
    buf[:len(blob)] = np.frombuffer(blob, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(buf))
    out = []
    for p, info in enumerate(infos):
        raw, off, got = everyone[p].tobytes(), 0, []
        for dt, shape, nb in info["meta"]:
            got.append(np.frombuffer(raw[off:off + nb], np.dtype(dt)).reshape(shape).copy())
            off += nb
        out.append(got)
    return out


def broadcast(obj: Any) -> Any:
    """Process 0's ``obj`` on every process (pickled; any Python object). Without a distributed run returns ``obj``."""
    if not is_active():
        return obj
    from jax.experimental import multihost_utils

    blob = pickle.dumps(obj) if process_index() == 0 else b""
    size = int(exchange(str(len(blob)).encode(), what="broadcast")[0])
    buf = np.zeros(max(size, 1), np.uint8)
    buf[:len(blob)] = np.frombuffer(blob, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return pickle.loads(got[:size].tobytes()) if process_index() else obj


def on_process_zero(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` computed on process 0 only; every process returns its result or raises its error.

    For host-side steps (max-flow, linear programs) whose result every process
    needs. An exception on process 0 is raised on every process (the same type
    and message). Without a distributed run calls ``fn`` directly.
    """
    if not is_active():
        return fn(*args, **kwargs)
    result, error = None, None
    if process_index() == 0:
        token = _solo.set(True)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised on every process below
            error = exc
        finally:
            _solo.reset(token)
    payload = ("err", error) if error is not None else ("ok", result)
    if process_index() == 0:
        try:
            pickle.dumps(payload)
        except Exception:  # noqa: BLE001 - an unpicklable error or result travels as its message
            payload = ("err", RuntimeError(f"on process 0: {error!r}" if error is not None
                                           else "on_process_zero: the result cannot be pickled"))
    kind, value = broadcast(payload)
    if error is not None:
        raise error
    if kind == "err":
        raise value
    return value


@contextlib.contextmanager
def local_rows():
    """Within the block, the row arguments of jaxbound calls are this process's own rows (see the module doc)."""
    token = _local_rows.set(True)
    try:
        yield
    finally:
        _local_rows.reset(token)


def local_rows_active() -> bool:
    """Whether :func:`local_rows` is in effect in a distributed run."""
    return bool(_local_rows.get()) and is_active()
