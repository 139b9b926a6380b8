"""The block engine (jaxbound._engine): blocks, padding, checkpoints, jit, compile cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import _engine


def _kernel(x, labels, w, *, scale):
    """Row-wise outputs as a pytree: a matrix product, a per-row sum and the labels back."""
    return {"proj": (x @ w) * scale, "sums": jnp.sum(x, axis=1), "labels": labels + 1}


def _direct(x, labels, w, scale):
    return jax.tree.map(np.asarray, _kernel(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(w), scale=scale))


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 5)).astype(np.float32)
    labels = rng.integers(0, 7, 13).astype(np.int32)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    return x, labels, w


@pytest.mark.parametrize("n", [0, 1, 12, 13])
@pytest.mark.parametrize("block_size", [1, 4, 5, 64, None])
def test_run_matches_the_direct_call(arrays, n, block_size):
    x, labels, w = arrays
    x, labels = x[:n], labels[:n]
    out = _engine.run(_kernel, {"scale": 2.0}, [x, labels], [jnp.asarray(w)], block_size=block_size, default_block=3)
    ref = _direct(x, labels, w, 2.0)
    assert set(out) == {"proj", "sums", "labels"}
    for k in ref:
        assert out[k].shape == ref[k].shape and out[k].dtype == ref[k].dtype
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, atol=1e-6)


def test_run_out_axis_and_empty_result(arrays):
    x, labels, w = arrays

    def cols(x, w):
        return (x @ w).T  # rows on axis 1

    out = _engine.run(cols, {}, [x], [w], block_size=4, out_axis=1)
    np.testing.assert_allclose(out, (x @ w).T, rtol=1e-6, atol=1e-6)
    sentinel = np.full(3, -5.0)
    assert _engine.run(cols, {}, [x[:0]], [w], out_axis=1, empty=sentinel) is sentinel


def test_stream_pad_fills(arrays):
    x, labels, _ = arrays

    def echo(x, labels):
        return x, labels

    seen = []

    def collect(out, n_valid):
        seen.append((np.asarray(out[0]), np.asarray(out[1]), n_valid))
        return [np.asarray(out[0])[:n_valid], np.asarray(out[1])[:n_valid]]

    _, blocks = _engine.stream(echo, {}, [x, labels], block_size=5, pad=(None, -1), collect=collect)
    assert [s[2] for s in seen] == [5, 5, 3]
    last_x, last_lab, _ = seen[-1]
    np.testing.assert_array_equal(last_x[3:], np.repeat(x[-1:], 2, axis=0))  # None: the last row repeated
    np.testing.assert_array_equal(last_lab[3:], [-1, -1])  # an explicit fill
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), labels)
    zeros = _engine.pad_rows(labels[:2], 4, fill=0)
    np.testing.assert_array_equal(zeros, [labels[0], labels[1], 0, 0])


def _interrupt_at(monkeypatch, row):
    """Make the engine's compiled kernels raise KeyboardInterrupt once, at the block starting at ``row``."""
    orig = _engine.compiled
    starts = []

    def spy(*a, **k):
        fn = orig(*a, **k)

        def wrapped(x, ids, *rest):
            first = int(np.asarray(ids)[0])
            if first == row and "interrupted" not in starts:
                starts.append("interrupted")
                raise KeyboardInterrupt
            starts.append(first)
            return fn(x, ids, *rest)

        return wrapped

    monkeypatch.setattr(_engine, "compiled", spy)
    return starts


def _ids_kernel(x, ids, w):
    return x @ w, ids * 2


def _interrupted_run(arrays, path, monkeypatch):
    """Run the 13-row job in blocks of 3, interrupted at row 9 with a save after every block."""
    x, _, w = arrays
    ids = np.arange(13, dtype=np.int32)
    full = _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3)
    monkeypatch.setattr(_engine, "CHECKPOINT_EVERY_S", 0.0)
    starts = _interrupt_at(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=path)
    assert path.is_dir() and starts[:3] == [0, 3, 6]
    return x, ids, w, starts, full


def test_checkpoint_resume_after_an_interruption(tmp_path, arrays, monkeypatch):
    path = tmp_path / "ck"
    x, ids, w, starts, full = _interrupted_run(arrays, path, monkeypatch)
    starts.clear()
    starts.append("interrupted")
    out = _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=path)
    assert starts[1:] == [9, 12]  # resumed after the saved rows
    for a, b in zip(out, full):
        np.testing.assert_array_equal(a, b)
    assert not path.exists()  # removed once the job finished


def test_checkpoint_of_another_job_is_not_used(tmp_path, arrays, monkeypatch):
    path = tmp_path / "ck"
    x, ids, w, _, _ = _interrupted_run(arrays, path, monkeypatch)
    monkeypatch.undo()
    w2 = w + 1.0  # other replicated data: another job
    out = _engine.run(_ids_kernel, {}, [x, ids], [w2], block_size=3, checkpoint=path)
    np.testing.assert_allclose(out[0], x @ w2, rtol=1e-6, atol=1e-6)


def test_damaged_checkpoint_segment_is_recomputed(tmp_path, arrays, monkeypatch):
    path = tmp_path / "ck"
    x, ids, w, _, full = _interrupted_run(arrays, path, monkeypatch)
    monkeypatch.undo()
    segs = sorted(path.glob("seg_*.npz"))
    assert len(segs) >= 2
    segs[1].write_bytes(segs[1].read_bytes()[:20])  # a truncated write
    with pytest.warns(RuntimeWarning, match="damaged"):
        out = _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=path)
    for a, b in zip(out, full):
        np.testing.assert_array_equal(a, b)


def test_traced_inputs_call_the_kernel_directly(arrays):
    x, labels, w = arrays
    eager = _engine.run(_kernel, {"scale": 0.5}, [x, labels], [w], block_size=4)

    @jax.jit
    def f(x, labels, w):
        return _engine.run(_kernel, {"scale": 0.5}, [x, labels], [w], block_size=4)

    jitted = f(x, labels, w)
    assert isinstance(jitted["proj"], jax.Array)
    for k in eager:
        np.testing.assert_allclose(np.asarray(jitted[k]), eager[k], rtol=1e-6, atol=1e-6)


def test_compile_cache_is_shared_and_clearable(arrays):
    x, labels, w = arrays
    _engine.clear_cache()
    assert _engine._compiled.cache_info().currsize == 0
    a = _engine.compiled(_kernel, {"scale": 1.0}, n_batch=2, n_rep=1)
    b = _engine.compiled(_kernel, {"scale": 1.0}, n_batch=2, n_rep=1)
    assert a is b and _engine._compiled.cache_info().currsize == 1
    assert _engine.compiled(_kernel, {"scale": 3.0}, n_batch=2, n_rep=1) is not a
    _engine.clear_cache()
    assert _engine._compiled.cache_info().currsize == 0


def test_static_callables_hash_by_identity():
    def f(v):
        return v

    frozen = _engine.freeze({"fn": f, "k": 3})
    assert hash(frozen) == hash(_engine.freeze({"k": 3, "fn": f}))
    assert _engine.thaw(frozen) == {"fn": f, "k": 3}


def test_block_rows_and_precision():
    assert _engine.block_rows(None, 512, n=10, n_devices=1) == 10
    assert _engine.block_rows(7, 512, n=100, n_devices=4) == 8
    assert _engine.block_rows(None, 512, n=0, n_devices=1) == 1
    with pytest.raises(ValueError, match="batch_size"):
        _engine.block_rows(0, 512, n=5)
    with pytest.raises(ValueError, match="precision"):
        _engine.check_precision("float16")
    with _engine.precision_ctx("float64") as dt:
        assert dt == jnp.float64 and jnp.asarray(1.0).dtype == jnp.float64
    with _engine.precision_ctx("float32") as dt:
        assert dt == jnp.float32
    key = jax.random.key(0)
    np.testing.assert_array_equal(_engine.key_data(key), np.asarray(jax.random.key_data(key)))


def _damage(f, how, rng):
    """Damage one checkpoint segment the ways a crash, a disk or a user can."""
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "random_bytes":
        f.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "flipped_byte":  # a valid zip whose array bytes changed: only the checksum sees it
        with np.load(f) as z:
            arrays = {k: z[k].copy() for k in z.files}
        arrays["out0"].reshape(-1)[0] += 1.0
        np.savez(f.with_suffix(".tmp.npz"), **arrays)
        f.with_suffix(".tmp.npz").replace(f)
    elif how == "foreign_keys":
        np.savez(f.with_suffix(".tmp.npz"), a=np.zeros(3), b=np.zeros(3))
        f.with_suffix(".tmp.npz").replace(f)
    elif how == "wrong_shape":  # the right names, no checksum, too few rows
        np.savez(f.with_suffix(".tmp.npz"), out0=np.zeros((1, 2), np.float32), out1=np.zeros(1, np.int32))
        f.with_suffix(".tmp.npz").replace(f)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "random_bytes", "empty", "flipped_byte", "foreign_keys",
                                 "wrong_shape"])
def test_every_kind_of_damaged_segment_is_recomputed_with_one_warning(tmp_path, arrays, monkeypatch, how):
    path = tmp_path / "ck"
    x, ids, w, _, full = _interrupted_run(arrays, path, monkeypatch)
    monkeypatch.undo()
    segs = sorted(path.glob("seg_*.npz"))
    _damage(segs[1], how, np.random.default_rng(0))
    starts = _interrupt_at(monkeypatch, -1)
    with pytest.warns(RuntimeWarning) as rec:
        out = _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=path)
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 1 and segs[1].name in msgs[0] and "recomputing rows from 3" in msgs[0]
    assert starts == [3, 6, 9, 12]  # the first segment is kept, the damaged one and later recomputed
    for a, b in zip(out, full):
        np.testing.assert_array_equal(a, b)


def test_damaged_key_file_starts_afresh(tmp_path, arrays, monkeypatch):
    path = tmp_path / "ck"
    x, ids, w, _, full = _interrupted_run(arrays, path, monkeypatch)
    monkeypatch.undo()
    (path / "key.txt").write_bytes(b"\xff\xfe\x00garbage")
    out = _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=path)
    for a, b in zip(out, full):
        np.testing.assert_array_equal(a, b)
    assert not path.exists()


def test_checkpoint_every_sets_the_save_interval(tmp_path, arrays, monkeypatch):
    x, _, w = arrays
    ids = np.arange(13, dtype=np.int32)
    saves = []
    orig = _engine.BlockCheckpoint.save

    def spy(self, start, stop, outputs):
        saves.append((start, stop))
        return orig(self, start, stop, outputs)

    monkeypatch.setattr(_engine.BlockCheckpoint, "save", spy)
    _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=tmp_path / "a", checkpoint_every=0.0)
    assert saves == [(0, 3), (3, 6), (6, 9), (9, 12)]  # after every block but the last
    saves.clear()
    _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=tmp_path / "b", checkpoint_every=1e9)
    assert saves == []  # the default 30 s interval is not reached either
    with pytest.raises(ValueError, match="^checkpoint_every"):
        _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=tmp_path / "c", checkpoint_every=-1.0)


def test_checkpoint_path_that_is_a_file_raises_before_any_work(tmp_path, arrays, monkeypatch):
    x, _, w = arrays
    ids = np.arange(13, dtype=np.int32)
    f = tmp_path / "a_file"
    f.write_text("x")
    starts = _interrupt_at(monkeypatch, -1)
    for bad in (f, f / "below"):
        with pytest.raises(ValueError, match="^checkpoint: .* is a file"):
            _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=bad)
    with pytest.raises(TypeError, match="^checkpoint"):
        _engine.run(_ids_kernel, {}, [x, ids], [w], block_size=3, checkpoint=3)
    assert starts == []


@pytest.mark.parametrize("n, start, bs, n_proc", [(35, 0, 4, 2), (35, 8, 4, 2), (7, 0, 4, 3), (12, 0, 4, 4),
                                                   (1, 0, 4, 2), (30, 12, 5, 3)])
def test_multi_process_rounds_cover_every_block_once_in_order(monkeypatch, n, start, bs, n_proc):
    """Process p computes the blocks p, p + P, ... of the single-process blocks (same boundaries), one per round."""
    from jaxbound import distributed

    monkeypatch.setattr(distributed, "process_count", lambda: n_proc)
    rounds = _engine._multi_rounds(n, start, bs, False)
    flat = [s for r in rounds for s in r if s is not None]
    assert flat == [(lo, min(n, lo + bs)) for lo in range(start, n, bs)]
    assert all(len(r) == n_proc for r in rounds)
    assert all(r[0] is not None for r in rounds)  # a round never leaves process 0 idle while others work
    local = _engine._multi_rounds(10, 0, 4, True)  # process-local rows: every process its own block r
    assert local == [[(0, 4)] * n_proc, [(4, 8)] * n_proc, [(8, 10)] * n_proc]


def test_single_process_stream_makes_no_exchange(monkeypatch, arrays):
    """Without jax.distributed the engine never enters the multi-process path (numbers unchanged)."""
    from jaxbound import distributed

    def boom(*a, **k):
        raise AssertionError("exchange in a single-process run")

    monkeypatch.setattr(distributed, "exchange", boom)
    x, _, w = arrays
    out = _engine.run(_ids_kernel, {}, [x, np.arange(13, dtype=np.int32)], [w], block_size=3)
    assert jax.tree.leaves(out)[0].shape[0] == 13
