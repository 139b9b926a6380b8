"""Dataset loaders: digits, IDX files (valid and corrupt), tensorflow-datasets mock data, synthetic laws."""

from __future__ import annotations

import dataclasses
import gzip
import shutil

import jax
import numpy as np
import pytest

from jaxbound import data


def write_idx(path, arr, *, magic_type=0x08, compress=True):
    arr = np.asarray(arr)
    head = bytes([0, 0, magic_type, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    if compress:
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_idx_folder(tmp_path, n_train=60000, n_test=10000, size=(2, 2)):
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, *size)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return tmp_path


def test_digits_split_is_fixed_and_in_range():
    tr, te, al = data.load("digits"), data.load("digits", split="test"), data.load("digits", split="all")
    assert tr.images.shape == (1438, 8, 8, 1) and te.images.shape == (359, 8, 8, 1)
    assert len(al) == 1797 and tr.images.dtype == np.float32 and tr.labels.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([tr.labels, te.labels]), al.labels)
    assert tr.images.min() == 0.0 and tr.images.max() == 1.0
    assert tr.flat().shape == (1438, 64)
    assert set(np.unique(tr.labels)) == set(range(10)) and tr.num_classes == 10


def test_mnist_real_files(shared_data_dir):
    tr = data.load("mnist", data_dir=shared_data_dir)
    te = data.load("mnist", split="test", data_dir=shared_data_dir / "mnist")
    assert tr.images.shape == (60000, 28, 28, 1) and te.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(tr.class_counts(), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(te.class_counts(), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert tr.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert 0.0 == tr.images.min() and tr.images.max() == 1.0
    # pixels are exactly x/255
    np.testing.assert_array_equal(np.round(tr.images[:10] * 255), tr.images[:10] * 255)


def test_fashion_mnist_real_files(shared_data_dir):
    te = data.load("fashion_mnist", split="test", data_dir=shared_data_dir)
    assert te.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(te.class_counts(), [1000] * 10)
    assert data.load("fashion-mnist", split="test", data_dir=shared_data_dir).labels[:3].tolist() == te.labels[:3].tolist()


def test_idx_loader_on_synthetic_folder(tmp_path):
    (tmp_path / "mnist").mkdir()
    make_idx_folder(tmp_path / "mnist", n_train=60000, n_test=10000)
    ds = data.load("mnist", split="test", data_dir=tmp_path)
    assert ds.images.shape == (10000, 2, 2, 1)


def test_idx_uncompressed_files_are_read(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a-idx3-ubyte"), arr)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: b"\x01\x00" + raw[2:], "bad magic"),
        (lambda raw: raw[:-3], "payload bytes"),
        (lambda raw: raw + b"\x00", "payload bytes"),
        (lambda raw: raw[:6], "truncated"),
    ],
)
def test_idx_corrupt_file_named_in_error(tmp_path, corrupt, message):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((3, 2, 2)), compress=False)
    path.write_bytes(gzip.compress(corrupt(path.read_bytes())))
    with pytest.raises(ValueError, match=rf"^path: .*x-idx3-ubyte.gz.*{message}"):
        data.read_idx(path)


def test_idx_not_gzip_and_not_idx(tmp_path):
    path = tmp_path / "junk.gz"
    path.write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(ValueError, match="^path: cannot read"):
        data.read_idx(path)


def test_mnist_missing_and_wrong_count(tmp_path):
    with pytest.raises(ValueError, match="^data_dir: no train-images"):
        data.load("mnist", data_dir=tmp_path)
    folder = make_idx_folder(tmp_path, n_train=5, n_test=3)
    with pytest.raises(ValueError, match="expected 60000 train examples"):
        data.load("mnist", data_dir=folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="^data_dir: t10k-labels"):
        data.load("mnist", split="test", data_dir=folder)
    with pytest.raises(ValueError, match="^data_dir: .* is not a folder"):
        data.load("mnist", data_dir=tmp_path / "nope")


def test_missing_data_dir_message(monkeypatch):
    monkeypatch.delenv("JAXBOUND_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="^data_dir: needed"):
        data.load("mnist")


@pytest.mark.parametrize("name, split, arg", [("cifar11", "train", "name"), ("digits", "valid", "split"),
                                              ("mnist", "dev", "split"), (3, "train", "name")])
def test_unknown_names(name, split, arg, tmp_path):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        data.load(name, split=split, data_dir=tmp_path)


@pytest.mark.slow  # heavy: run with -m slow
def test_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("tfds:cifar10", split="train")
        gray = data.load("tfds:mnist", split="test")
    assert ds.images.shape == (20, 32, 32, 3) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.num_classes == 10 and ds.labels.dtype == np.int64 and ds.labels.max() < 10
    assert ds.name == "tfds:cifar10"
    assert gray.images.shape == (20, 28, 28, 1)


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    with pytest.raises(ValueError, match="^name: tensorflow-datasets has no dataset"):
        data.load("tfds:no_such_dataset_xyz")
    with pytest.raises(ValueError, match="^name: 'tfds:' must be followed"):
        data.load("tfds:")


def test_tfds_missing_extra_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("tensorflow_datasets"):
            raise ImportError("no tfds")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ValueError, match=r"pip install 'jaxbound\[tfds\]'"):
        data.load("tfds:cifar10")


def test_class_pair_first_n_in_file_order(digits_train):
    xa, xb = data.class_pair(digits_train, 3, 7, n_per_class=20)
    ia = np.flatnonzero(digits_train.labels == 3)[:20]
    np.testing.assert_array_equal(xa, digits_train.images[ia])
    assert xb.shape == (20, 8, 8, 1)
    with pytest.raises(ValueError, match="^n_per_class:"):
        data.class_pair(digits_train, 3, 7, n_per_class=10**6)
    with pytest.raises(ValueError, match="^b:"):
        data.class_pair(digits_train, 3, 3)
    with pytest.raises(ValueError, match="^a: class 2 has no examples"):
        data.class_pair(digits_train.subset(digits_train.labels != 2), 2, 3)


def test_random_subset_keyed(digits_train):
    a = data.random_subset(digits_train, key=jax.random.key(3), n=50)
    b = data.random_subset(digits_train, key=jax.random.key(3), n=50)
    c = data.random_subset(digits_train, key=jax.random.key(4), n=50)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.labels, c.labels) or not np.array_equal(a.images, c.images)
    assert len(data.random_subset(digits_train, key=jax.random.key(0), n=0)) == 0
    with pytest.raises(ValueError, match="^n:"):
        data.random_subset(digits_train, key=jax.random.key(0), n=len(digits_train) + 1)
    with pytest.raises(ValueError, match="^key:"):
        data.random_subset(digits_train, key=0, n=1)


def test_gaussian_mixture_moments():
    mu = np.array([1.0, -2.0, 0.5])
    sigma = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.0], [0.0, 0.0, 0.5]])
    ds = data.gaussian_mixture(40000, key=jax.random.key(0), mu=mu, sigma=sigma, p1=0.3)
    x, y = ds.images.astype(np.float64), ds.labels
    assert abs(y.mean() - 0.3) < 0.01
    np.testing.assert_allclose(x[y == 1].mean(0), mu, atol=0.04)
    np.testing.assert_allclose(x[y == 0].mean(0), -mu, atol=0.04)
    np.testing.assert_allclose(np.cov(x[y == 1].T), sigma, atol=0.06)
    with pytest.raises(ValueError, match="^sigma:"):
        data.gaussian_mixture(5, key=jax.random.key(0), mu=mu, sigma=-np.eye(3))
    with pytest.raises(ValueError, match="^p1:"):
        data.gaussian_mixture(5, key=jax.random.key(0), mu=mu, p1=1.0)
    with pytest.raises(ValueError, match="^mu:"):
        data.gaussian_mixture(5, key=jax.random.key(0), mu=[np.nan])


def test_uniform_cube_ball_spheres():
    k = jax.random.key(1)
    cube = data.uniform_cube(5000, key=k, d=4)
    assert cube.shape == (5000, 4) and cube.min() >= 0 and cube.max() <= 1
    assert abs(cube.mean() - 0.5) < 0.01
    ball = data.uniform_ball(20000, key=k, d=3)
    r = np.linalg.norm(ball, axis=1)
    assert r.max() <= 1.0 + 1e-6
    # uniform in the ball: P(r <= 1/2) = 1/8 in 3-D
    assert abs((r <= 0.5).mean() - 0.125) < 0.01
    sp = data.concentric_spheres(1000, key=k, d=5, radii=(1.0, 1.3))
    rr = np.linalg.norm(sp.images, axis=1)
    np.testing.assert_allclose(rr, np.where(sp.labels == 1, 1.3, 1.0), rtol=1e-5)
    assert len(data.uniform_cube(0, key=k, d=2)) == 0
    with pytest.raises(ValueError, match="^d:"):
        data.uniform_cube(3, key=k, d=0)
    with pytest.raises(ValueError, match="^radii:"):
        data.concentric_spheres(3, key=k, d=3, radii=(1.0, 1.0))


def _imgs(n=4):
    return np.linspace(0, 1, n * 4, dtype=np.float32).reshape(n, 2, 2, 1)


@pytest.mark.parametrize("images, labels, kw, field, match", [
    (_imgs(4), np.arange(3), {}, "labels", "has 3 labels for 4 inputs"),
    (np.where(_imgs(4) > 0.5, np.nan, _imgs(4)), np.arange(4), {}, "images", "NaN"),
    (_imgs(4) + np.inf, np.arange(4), {}, "images", "NaN or infinite"),
    (_imgs(4) * 2.0, np.arange(4), {}, "images", r"values must lie in \[0.0, 1.0\]"),
    (_imgs(4), np.array([0, 1, 2, 10]), {"num_classes": 10}, "labels", "label 10 is out of range"),
    (_imgs(4), np.array([0, 1, 2, -1]), {"num_classes": 10}, "labels", "must be >= 0"),
    (_imgs(4), np.array([0.0, 1.0, 2.0, 3.0]), {}, "labels", "must be integers"),
    (_imgs(4)[..., 0], np.arange(4), {}, "images", r"images\[\.\.\., None\]"),
    (_imgs(4)[:, 0, 0, 0], np.arange(4), {}, "images", "expected"),
    (_imgs(4)[None], np.arange(4), {}, "images", "expected"),
    (np.array([["a"]]), np.arange(1), {}, "images", "real numbers"),
    (_imgs(4) > 0.5, np.arange(4), {}, "images", "real numbers"),
    (_imgs(4), np.arange(4), {"num_classes": -1}, "num_classes", ">= 0"),
    (_imgs(4), np.arange(4), {"num_classes": 2.5}, "num_classes", "integer"),
    (_imgs(4), np.arange(4), {"name": 3}, "name", "strings"),
])
def test_dataset_rejects_inconsistent_fields(images, labels, kw, field, match):
    with pytest.raises(ValueError, match=f"^{field}: .*{match}"):
        data.Dataset(images, labels, **kw)


def test_dataset_accepts_vectors_empty_sets_and_infers_classes():
    v = data.Dataset(np.array([[-3.0, 5.0], [0.5, 1e3]], np.float32), np.array([0, 2]))
    assert v.num_classes == 3 and v.shape == (2,)  # synthetic vectors: any finite values
    e = data.Dataset(np.zeros((0, 2, 2, 1), np.float32), np.zeros(0, np.int64), num_classes=10)
    assert len(e) == 0 and e.class_counts().tolist() == [0] * 10
    full = data.Dataset(_imgs(4), np.arange(4), num_classes=10)
    assert full.subset([1, 3]).labels.tolist() == [1, 3]
    with pytest.raises(ValueError, match="^labels"):
        dataclasses.replace(full, labels=np.arange(3))
