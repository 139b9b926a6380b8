"""Image-folder and CIFAR-10 python-batch loaders: data.load("imagefolder"), data.load("cifar10").

References are independent of the loader: every expected pixel comes from
Pillow opening the file on its own (or, for the CIFAR batches, from indexing
the flat rows by the documented R, G, B plane layout).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxbound import data
from conftest import REPO
from _badinput import check

CLASSES = ("cat", "ant", "dog")  # not in sorted order: labels must follow sorted folder names


def shared_cifar_tar() -> Path | None:
    """The CIFAR-10 (JPEG re-encoding) tarball of ``$JAXBOUND_DATA_DIR`` or ``../shared/data``, if present."""
    env = os.environ.get("JAXBOUND_DATA_DIR")
    cands = ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]
    for c in cands:
        p = c / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="module")
def cifar_tar() -> Path:
    path = shared_cifar_tar()
    if path is None:
        pytest.skip("CIFAR-10 (JPEG re-encoding) not found: place cifar10-jpeg/cifar10-jpeg.tar.gz in "
                    "../shared/data or set JAXBOUND_DATA_DIR")
    return path


def _save(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _tree(root: Path, *, splits=("train", "test"), n=(3, 2), size=(5, 4), rng=None, fmt="png") -> Path:
    """``root/<split>/<class>/NNN.<fmt>`` with random RGB pixels, ``n[i]`` files per class in split ``i``."""
    rng = rng or np.random.default_rng(0)
    for s, count in zip(splits, n):
        for c in CLASSES:
            for i in range(count):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                _save(root / s / c / f"{i:03d}.{fmt}", arr, "JPEG" if fmt == "jpg" else "PNG")
    return root


def _reference(root: Path, split_folder: Path):
    """Pixels and labels read file by file with Pillow, in sorted class and file order."""
    classes = sorted(p.name for p in split_folder.iterdir())
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((split_folder / c).iterdir()):
            xs.append(np.asarray(Image.open(f)))
            ys.append(label)
    return np.stack(xs).astype(np.float32) / 255.0, np.array(ys)


def _tar(src: Path, dest: Path, *, arcname: str = ".") -> Path:
    mode = "w:gz" if dest.name.endswith(".gz") else "w"
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=arcname)
    return dest


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_folder_matches_pillow_file_by_file(tmp_path, fmt):
    root = _tree(tmp_path / "d", fmt=fmt)
    for split in ("train", "test"):
        ds = data.load("imagefolder", data_dir=root, split=split)
        x, y = _reference(root, root / split)
        assert ds.images.dtype == np.float32 and ds.images.shape == x.shape
        np.testing.assert_array_equal(ds.images, x)
        np.testing.assert_array_equal(ds.labels, y)
        assert ds.classes == ("ant", "cat", "dog") and ds.num_classes == 3 and ds.split == split
        assert ds.name == "imagefolder:d"


@pytest.mark.parametrize("name", ["d.tar", "d.tar.gz"])
def test_tar_equals_folder(tmp_path, name):
    root = _tree(tmp_path / "d")
    tar = _tar(root, tmp_path / name)
    for split in ("train", "test"):
        a = data.load("imagefolder", data_dir=root, split=split)
        b = data.load("imagefolder", data_dir=tar, split=split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.classes == b.classes
    assert b.name == "imagefolder:d"


def test_tar_with_enclosing_folder_and_extra_files(tmp_path):
    root = _tree(tmp_path / "d")
    (root / "README.md").write_text("not an image")
    (root / "train" / "cat" / "notes.txt").write_text("skipped")
    _save(root / "train" / "cat" / ".hidden.png", np.zeros((4, 5, 3), np.uint8))
    tar = _tar(root, tmp_path / "wrapped.tar", arcname="cifar-like")
    a = data.load("imagefolder", data_dir=root, split="train")
    b = data.load("imagefolder", data_dir=tar, split="train")
    np.testing.assert_array_equal(a.images, b.images)
    assert len(a) == 9


def test_labels_agree_across_splits_when_a_split_lacks_a_class(tmp_path):
    root = _tree(tmp_path / "d")
    for f in (root / "test" / "ant").iterdir():
        f.unlink()
    (root / "test" / "ant").rmdir()
    te = data.load("imagefolder", data_dir=root, split="test")
    assert te.classes == ("ant", "cat", "dog") and te.num_classes == 3
    assert sorted(set(te.labels.tolist())) == [1, 2]


def test_tree_without_split_folders_is_split_all(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for c in ("b", "a"):
        for i in (2, 10, 1):  # sorted as strings: 1, 10, 2
            _save(root / c / f"{i}.png", rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
    ds = data.load("imagefolder", data_dir=root, split="all")
    x, y = _reference(root, root)
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, y)
    np.testing.assert_array_equal(ds.images[1], np.asarray(Image.open(root / "a" / "10.png")) / np.float32(255))
    with pytest.raises(ValueError, match="^split: .*split='all'"):
        data.load("imagefolder", data_dir=root)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 2), ("RGBA", 4)])
def test_modes_keep_their_channels(tmp_path, mode, channels):
    rng = np.random.default_rng(2)
    shape = (4, 3) if channels == 1 else (4, 3, channels)
    for c in ("x", "y"):
        (tmp_path / "t" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(tmp_path / "t" / c / "0.png")
    ds = data.load("imagefolder", data_dir=tmp_path / "t", split="all")
    assert ds.images.shape == (2, 4, 3, channels)
    ref = np.asarray(Image.open(tmp_path / "t" / "x" / "0.png")).reshape(4, 3, channels)
    np.testing.assert_array_equal(ds.images[0], ref / np.float32(255))


def test_cache_is_used_and_checked(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    tar = _tar(root, tmp_path / "d.tar.gz")
    cache = tmp_path / "cache"
    first = data.load("imagefolder", data_dir=tar, split="train", cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(data, "_decode_all", no_decode)
        again = data.load("imagefolder", data_dir=tar, split="train", cache_dir=cache)
        np.testing.assert_array_equal(first.images, again.images)
        np.testing.assert_array_equal(first.labels, again.labels)
        assert again.classes == first.classes
        with pytest.raises(AssertionError):  # another split is another cache entry
            data.load("imagefolder", data_dir=tar, split="test", cache_dir=cache)
    # Damaged cache: one warning, decoded again, rewritten.
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: len(raw) // 2])
    with pytest.warns(RuntimeWarning, match="damaged"):
        fixed = data.load("imagefolder", data_dir=tar, split="train", cache_dir=cache)
    np.testing.assert_array_equal(fixed.images, first.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load("imagefolder", data_dir=tar, split="train", cache_dir=cache)
    # Environment default.
    monkeypatch.setenv("JAXBOUND_CACHE_DIR", str(tmp_path / "env-cache"))
    data.load("imagefolder", data_dir=root, split="test")
    assert len(list((tmp_path / "env-cache").glob("*.npz"))) == 1


def test_cache_misses_when_a_file_changes(tmp_path):
    root = _tree(tmp_path / "d")
    cache = tmp_path / "cache"
    a = data.load("imagefolder", data_dir=root, split="train", cache_dir=cache)
    target = root / "train" / "ant" / "000.png"
    _save(target, np.zeros((4, 5, 3), np.uint8))
    b = data.load("imagefolder", data_dir=root, split="train", cache_dir=cache)
    assert not np.array_equal(a.images, b.images)
    assert (b.images[0] == 0).all()


def _bad_tree(tmp_path, kind):
    root = _tree(tmp_path / "d")
    if kind == "empty class folder":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif kind == "unreadable image":
        (root / "train" / "cat" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif kind == "truncated jpeg":
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(buf, format="JPEG")
        (root / "train" / "cat" / "001.jpg").write_bytes(buf.getvalue()[:-40])
    elif kind == "mixed sizes":
        _save(root / "train" / "dog" / "001.png", np.zeros((6, 5, 3), np.uint8))
    elif kind == "mixed modes":
        _save(root / "train" / "dog" / "001.png", np.zeros((4, 5), np.uint8))
    elif kind == "unsupported mode":
        for f in sorted(root.rglob("*.png")):
            Image.open(f).convert("P").save(f)
    return root


BAD = [("empty class folder", "train/dog"), ("unreadable image", "train/cat/001.png"),
       ("truncated jpeg", "train/cat/001.jpg"), ("mixed sizes", "train/dog/001.png"),
       ("mixed modes", "train/dog/001.png"), ("unsupported mode", "train/ant/000.png")]


@pytest.mark.parametrize("kind, named", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
def test_bad_trees_raise_naming_the_file_and_cache_nothing(tmp_path, kind, named, as_tar):
    root = _bad_tree(tmp_path, kind)
    src = _tar(root, tmp_path / "d.tar") if as_tar else root
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"^data_dir: .*{named}") as info:
        data.load("imagefolder", data_dir=src, split="train", cache_dir=cache)
    check(lambda: (_ for _ in ()).throw(info.value), ValueError, "data_dir")
    assert not cache.exists() or not any(cache.iterdir())
    if kind not in ("empty class folder", "unsupported mode"):
        data.load("imagefolder", data_dir=src, split="test", cache_dir=cache)  # the other split is intact


def test_bad_sources(tmp_path):
    root = _tree(tmp_path / "d")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "a").mkdir()
    (tmp_path / "cachefile").write_text("x")
    cases = [
        (lambda: data.load("imagefolder", data_dir=tmp_path / "missing"), "data_dir", "does not exist"),
        (lambda: data.load("imagefolder", data_dir=tmp_path / "missing.tar.gz"), "data_dir", "does not exist"),
        (lambda: data.load("imagefolder", data_dir=tmp_path / "file.txt"), "data_dir", "neither"),
        (lambda: data.load("imagefolder", data_dir=tmp_path / "broken.tar.gz"), "data_dir", "tar"),
        (lambda: data.load("imagefolder", data_dir=tmp_path / "noimages", split="all"), "data_dir", "no image"),
        (lambda: data.load("imagefolder", data_dir=root, split="validation"), "split", "train"),
        (lambda: data.load("imagefolder", data_dir=root, split="train", cache_dir=tmp_path / "cachefile"),
         "cache_dir", "not a folder"),
        (lambda: data.load("mnist", data_dir=root, cache_dir=tmp_path), "cache_dir", "imagefolder"),
    ]
    for thunk, arg, text in cases:
        check(thunk, ValueError, arg)
        with pytest.raises(ValueError, match=text):
            thunk()
    check(lambda: data.load("imagefolder", data_dir=3), TypeError, "data_dir")
    _save(root / "train" / "stray.png", np.zeros((4, 5, 3), np.uint8))  # an image outside any class folder
    check(lambda: data.load("imagefolder", data_dir=root), ValueError, "data_dir")


def test_missing_data_dir_uses_environment(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    monkeypatch.delenv("JAXBOUND_DATA_DIR", raising=False)
    monkeypatch.delenv("JAXBOUND_CACHE_DIR", raising=False)
    check(lambda: data.load("imagefolder"), ValueError, "data_dir")
    monkeypatch.setenv("JAXBOUND_DATA_DIR", str(root))
    assert len(data.load("imagefolder", split="test")) == 6


# ---------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------


def _write_batches(folder: Path, n: int = 4, *, protocol: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = (x, np.array(y))
    return out


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10_batches(tmp_path, sub):
    raw = _write_batches(tmp_path / sub if sub else tmp_path)
    tr = data.load("cifar10", data_dir=tmp_path, split="train")
    te = data.load("cifar10", data_dir=tmp_path, split="test")
    assert tr.images.shape == (20, 32, 32, 3) and te.images.shape == (4, 32, 32, 3)
    assert tr.classes[0] == "airplane" and tr.classes[9] == "truck" and tr.num_classes == 10
    xs = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
    ys = np.concatenate([raw[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(tr.labels, ys)
    for i, r, c, ch in [(0, 0, 0, 0), (7, 5, 31, 1), (19, 31, 2, 2), (13, 16, 16, 0)]:
        assert tr.images[i, r, c, ch] == np.float32(xs[i, ch * 1024 + r * 32 + c]) / np.float32(255)
    np.testing.assert_array_equal(te.labels, raw["test_batch"][1])


def test_cifar10_bad_batches(tmp_path):
    _write_batches(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    check(lambda: data.load("cifar10", data_dir=tmp_path), ValueError, "data_dir")
    check(lambda: data.load("cifar10", data_dir=tmp_path, split="valid"), ValueError, "split")
    check(lambda: data.load("cifar10", data_dir=tmp_path / "nowhere"), ValueError, "data_dir")
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="^data_dir: .*data_batch_3.*3072"):
        data.load("cifar10", data_dir=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(ValueError, match="^data_dir: .*data_batch_3.*label"):
        data.load("cifar10", data_dir=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar10_unpickler_runs_no_code(tmp_path):
    _write_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="^data_dir: .*test_batch.*refusing"):
        data.load("cifar10", data_dir=tmp_path, split="test")


# ---------------------------------------------------------------------------
# CIFAR-10 (JPEG re-encoding) from ../shared/data
# ---------------------------------------------------------------------------


def _members(tar: Path, names: set[str]) -> dict[str, np.ndarray]:
    out = {}
    with tarfile.open(tar, "r|gz") as tf:
        for m in tf:
            if m.name in names:
                out[m.name] = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())))
                if len(out) == len(names):
                    break  # stop streaming the archive once every wanted member is read
    return out


def test_cifar_jpeg_test_split(cifar_tar):
    ds = data.load("imagefolder", data_dir=cifar_tar, split="test")
    assert ds.images.shape == (10000, 32, 32, 3) and ds.images.dtype == np.float32
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    np.testing.assert_array_equal(ds.class_counts(), np.full(10, 1000))
    assert (np.diff(ds.labels) >= 0).all()
    picks = {"test/airplane/0000.jpg": 0, "test/cat/0999.jpg": 3999, "test/truck/0500.jpg": 9500}
    ref = _members(cifar_tar, set(picks))
    for name, i in picks.items():
        np.testing.assert_array_equal(ds.images[i], ref[name] / np.float32(255))


@pytest.mark.slow
def test_cifar_jpeg_train_split_and_cache(cifar_tar, tmp_path):
    ds = data.load("imagefolder", data_dir=cifar_tar, split="train", cache_dir=tmp_path)
    assert ds.images.shape == (50000, 32, 32, 3)
    np.testing.assert_array_equal(ds.class_counts(), np.full(10, 5000))
    ref = _members(cifar_tar, {"train/horse/4999.jpg"})
    np.testing.assert_array_equal(ds.images[7 * 5000 + 4999], ref["train/horse/4999.jpg"] / np.float32(255))
    again = data.load("imagefolder", data_dir=cifar_tar, split="train", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, ds.images)


@pytest.mark.parametrize("labels", [[0, 0, 0, 1, 1, 2], [2, 2, 0, 1, 0, 2, 2], [1], []])
def test_interleave_classes_round_robin(labels):
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    ds = data.Dataset(np.arange(n, dtype=np.float32)[:, None] / max(n, 1), labels, num_classes=3)
    out = data.interleave_classes(ds)
    # Reference: repeatedly take the next unused example of each class in class order.
    queues = {c: [i for i in range(n) if labels[i] == c] for c in range(3)}
    expect = []
    while any(queues.values()):
        for c in range(3):
            if queues[c]:
                expect.append(queues[c].pop(0))
    np.testing.assert_array_equal(out.labels, labels[expect])
    np.testing.assert_array_equal(out.images[:, 0], ds.images[expect, 0])
    check(lambda: data.interleave_classes((ds.images, ds.labels)), TypeError, "ds")
