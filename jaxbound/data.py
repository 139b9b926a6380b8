"""Datasets: the embedded digits, MNIST-style IDX folders, tensorflow-datasets, synthetic laws.

Every loader returns a :class:`Dataset` whose images are float32 in
``[0, 1]`` shaped ``[n, H, W, C]`` with integer labels ``[n]``;
``Dataset.flat()`` gives the ``[n, H*W*C]`` view the geometry kernels take.

Names understood by :func:`load`:

* ``"digits"``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped
  inside scikit-learn, so it works offline). Pixels 0..16 are divided by 16.
  Fixed split in file order: the first 1,438 images (80%) are ``"train"``, the
  remaining 359 are ``"test"`` (``"all"`` gives every image).
* ``"mnist"``, ``"fashion_mnist"``: the original IDX files
  (``train-images-idx3-ubyte.gz`` ... ``t10k-labels-idx1-ubyte.gz``, gzipped
  or not) from ``data_dir`` or ``data_dir/<name>`` (``fashion-mnist`` also
  accepted); splits ``"train"`` (60,000) and ``"test"`` (10,000); pixels x/255.
* ``"tfds:<name>"``: any tensorflow-datasets image-classification dataset
  (``"tfds:cifar10"``, ``"tfds:svhn_cropped"``, ...) with the ``tfds`` extra
  installed; ``split`` is passed to tensorflow-datasets, pixels x/255.

``data_dir`` defaults to the environment variable ``JAXBOUND_DATA_DIR``.

Synthetic distributions from the papers take a keyword-only ``jax.random``
``key``: :func:`gaussian_mixture` (Bhagoji et al. 2021, §5),
:func:`uniform_cube`, :func:`uniform_ball` (Ding et al. 2019, Theorem 2.1) and
:func:`concentric_spheres` (Gilmer et al., used by Mahloujifar et al.).

References:
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness to
  input data distributions." ICLR 2019, arXiv:1902.08336.
  Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
  "Adversarial spheres." arXiv:1801.02774.
  Mahloujifar, Zhang, Mahmoody, Evans. "Empirically measuring concentration:
  fundamental limits on intrinsic robustness." NeurIPS 2019, arXiv:1905.12202.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import _checks

__all__ = [
    "Dataset",
    "load",
    "read_idx",
    "class_pair",
    "random_subset",
    "gaussian_mixture",
    "uniform_cube",
    "uniform_ball",
    "concentric_spheres",
    "DIGITS_TRAIN_SIZE",
]

DIGITS_TRAIN_SIZE = 1438

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IDX_FOLDERS = {"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images and labels.

    Checked on construction (errors name the field): images are finite real
    numbers shaped ``[n, H, W, C]`` with pixels in ``[0, 1]``, or ``[n, d]``
    vectors of synthetic data (any finite values); a batch of grey images
    ``[n, H, W]`` needs its channel axis (``images[..., None]``); labels are
    ``n`` integers in ``[0, num_classes)``.

    Attributes:
      images: ``[n, H, W, C]`` float32 in ``[0, 1]`` (or ``[n, d]`` for
        synthetic vector data).
      labels: ``[n]`` int64 labels in ``[0, num_classes)``.
      name: dataset name.
      split: split name.
      num_classes: number of classes (``0``: ``max(labels) + 1``).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = ""
    split: str = ""
    num_classes: int = 0

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        images = self.images if isinstance(self.images, np.ndarray) else np.asarray(self.images)
        dt = images.dtype
        if dt == np.bool_ or not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
            raise ValueError(f"images: expected real numbers, got dtype {dt}")
        if images.ndim == 3:
            raise ValueError(f"images: expected [n, H, W, C] images or [n, d] vectors, got shape {images.shape}; "
                             "add the channel axis of grey images with images[..., None]")
        if images.ndim not in (2, 4):
            raise ValueError(f"images: expected [n, H, W, C] images or [n, d] vectors, got shape {images.shape}")
        _checks.check_finite(images, "images")
        if images.ndim == 4:
            _checks.check_bounds(images, "images", (0.0, 1.0))
        labels = self.labels if isinstance(self.labels, np.ndarray) else np.asarray(self.labels)
        if labels.size == 0 and labels.ndim == 1 and labels.dtype.kind == "f":
            labels = labels.astype(np.int64)  # np.asarray([]) is float64
        _checks.check_labels(labels, "labels", n=images.shape[0])
        if not isinstance(self.name, str) or not isinstance(self.split, str):
            raise ValueError(f"name: name and split must be strings, got {self.name!r} and {self.split!r}")
        k = _checks.check_int(self.num_classes, "num_classes", low=0)
        if k == 0:
            k = int(labels.max()) + 1 if labels.size else 0
        elif labels.size and int(labels.max()) >= k:
            raise ValueError(f"labels: label {int(labels.max())} is out of range for num_classes={k}")
        put("images", images)
        put("labels", labels)
        put("num_classes", k)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.images.shape[1:])

    def flat(self) -> np.ndarray:
        """The ``[n, d]`` view of the images."""
        return self.images.reshape(self.images.shape[0], -1)

    def subset(self, idx: Any) -> "Dataset":
        """The examples at ``idx`` (indices or a boolean mask)."""
        idx = np.asarray(idx)
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx])

    def class_counts(self) -> np.ndarray:
        """``[num_classes]`` number of examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def to_dict(self) -> dict:
        """Summary (no pixel data) for JSON records."""
        return {"name": self.name, "split": self.split, "n": len(self), "shape": list(self.shape),
                "num_classes": self.num_classes}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load(name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a named dataset (see the module docstring for names and splits).

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` or ``"tfds:<name>"``.
      split: ``"train"`` or ``"test"`` (``"all"`` for digits; any
        tensorflow-datasets split string for ``tfds:`` names).
      data_dir: folder with the IDX files (MNIST-style) or the
        tensorflow-datasets data folder; default ``$JAXBOUND_DATA_DIR``.

    Returns:
      A :class:`Dataset` with float32 images in ``[0, 1]`` shaped ``[n, H, W, C]``.

    Raises:
      ValueError: unknown name or split, missing or corrupt files, or
        tensorflow-datasets not installed for a ``tfds:`` name.
    """
    if not isinstance(name, str):
        raise ValueError(f"name: expected a dataset name string, got {name!r}")
    if not isinstance(split, str):
        raise ValueError(f"split: expected a string, got {split!r}")
    key = name.strip().lower().replace("-", "_")
    if key == "digits":
        return _load_digits(split)
    if key in _IDX_FOLDERS:
        return _load_idx_dataset(key, split, data_dir)
    if name.startswith("tfds:"):
        return _load_tfds(name[len("tfds:"):], split, data_dir)
    raise ValueError(
        f"name: unknown dataset {name!r}; use 'digits', 'mnist', 'fashion_mnist' or 'tfds:<name>'"
    )


def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    labels = bunch.target.astype(np.int64)
    if split == "train":
        sl = slice(0, DIGITS_TRAIN_SIZE)
    elif split == "test":
        sl = slice(DIGITS_TRAIN_SIZE, None)
    elif split == "all":
        sl = slice(None)
    else:
        raise ValueError(f"split: digits has 'train', 'test' and 'all', got {split!r}")
    return Dataset(np.ascontiguousarray(images[sl]), labels[sl], "digits", split, 10)


def _resolve_data_dir(data_dir, what: str) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("JAXBOUND_DATA_DIR")
        if not data_dir:
            raise ValueError(
                f"data_dir: needed to load {what} (a folder with the IDX files); pass data_dir=... "
                "or set JAXBOUND_DATA_DIR"
            )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(f"data_dir: {str(path)!r} is not a folder")
    return path


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")):
        if cand.is_file():
            return cand
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) with full validation.

    The header is two zero bytes, a type code, the number of dimensions and
    one big-endian uint32 size per dimension; the payload must hold exactly
    the product of the sizes.

    Args:
      path: the file.

    Returns:
      The array with the file's shape and dtype.

    Raises:
      ValueError: naming the file when the magic number, the sizes or the
        payload length are wrong, or the file cannot be read.
    """
    path = _checks.check_path(path, "path")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"path: cannot read IDX file {str(path)!r}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path: {str(path)!r} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"path: {str(path)!r} has a truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise ValueError(
            f"path: {str(path)!r} holds {payload} payload bytes but its header {dims} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _load_idx_dataset(key: str, split: str, data_dir) -> Dataset:
    if split not in _IDX_FILES:
        raise ValueError(f"split: {key} has 'train' and 'test', got {split!r}")
    root = _resolve_data_dir(data_dir, key)
    img_stem, lab_stem, count = _IDX_FILES[split]
    folders = [root] + [root / sub for sub in _IDX_FOLDERS[key]]
    for folder in folders:
        img_path = _find_idx(folder, img_stem)
        if img_path is not None:
            break
    else:
        raise ValueError(f"data_dir: no {img_stem}.gz for {key} in {str(root)!r} or its {key} subfolder")
    lab_path = _find_idx(img_path.parent, lab_stem)
    if lab_path is None:
        raise ValueError(f"data_dir: {lab_stem}.gz is missing next to {str(img_path)!r}")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"path: {str(img_path)!r} should hold uint8 images [n, H, W], got {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"path: {str(lab_path)!r} should hold uint8 labels [n], got {labels.shape}")
    if images.shape[0] != count or labels.shape[0] != count:
        raise ValueError(
            f"path: expected {count} {split} examples, found {images.shape[0]} images in {img_path.name} "
            f"and {labels.shape[0]} labels in {lab_path.name}"
        )
    if labels.max() > 9:
        raise ValueError(f"path: {str(lab_path)!r} has label {int(labels.max())} outside 0..9")
    x = (images.astype(np.float32) / 255.0)[..., None]
    return Dataset(x, labels.astype(np.int64), key, split, 10)


def _load_tfds(tfds_name: str, split: str, data_dir) -> Dataset:
    if not tfds_name:
        raise ValueError("name: 'tfds:' must be followed by a tensorflow-datasets name, e.g. 'tfds:cifar10'")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            "name: tensorflow-datasets is not installed; install the extra with "
            "pip install 'jaxbound[tfds]' (tensorflow-datasets and tensorflow)"
        ) from None
    if data_dir is None:
        data_dir = os.environ.get("JAXBOUND_TFDS_DIR")
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as exc:  # unknown name: tfds raises its own DatasetNotFoundError
        raise ValueError(f"name: tensorflow-datasets has no dataset {tfds_name!r} ({exc})") from None
    info = builder.info
    feats = info.features
    if "image" not in feats or "label" not in feats:
        raise ValueError(f"name: {tfds_name!r} is not an image-classification dataset (needs image and label)")
    num_classes = int(feats["label"].num_classes)
    xs, ys = [], []
    try:
        # Batches, not batch_size=-1: TensorFlow aborts the process when it cannot size the whole split.
        ds = tfds.load(tfds_name, split=split, data_dir=data_dir, as_supervised=True, batch_size=1024)
        for xb, yb in tfds.as_numpy(ds):
            xs.append(np.asarray(xb))
            ys.append(np.asarray(yb))
    except Exception as exc:
        raise ValueError(f"split: cannot load {tfds_name!r} split {split!r}: {exc}") from None
    if not xs:
        raise ValueError(f"split: {tfds_name!r} split {split!r} is empty")
    images, labels = np.concatenate(xs), np.concatenate(ys)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"name: {tfds_name!r} images have dtype {images.dtype}, expected uint8 pixels")
    return Dataset(images.astype(np.float32) / 255.0, np.asarray(labels).astype(np.int64),
                   f"tfds:{tfds_name}", split, num_classes)


# ---------------------------------------------------------------------------
# Protocol helpers
# ---------------------------------------------------------------------------


def _check_dataset(ds: Any, name: str = "ds") -> None:
    if not isinstance(ds, Dataset):
        raise TypeError(f"{name}: expected a jaxbound.data.Dataset (data.load(...)), got {type(ds).__name__}")


def class_pair(ds: Dataset, a: int, b: int, *, n_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_per_class`` examples of classes ``a`` and ``b`` in file order.

    Bhagoji et al. (2021, §4.1) build their empirical distributions this way
    (MNIST 3 vs 7, the first n of each class).

    Args:
      ds: the dataset.
      a: first class label.
      b: second class label (different from ``a``).
      n_per_class: how many of each class (default: all of them).

    Returns:
      ``(x_a, x_b)``, images of class ``a`` and of class ``b``.
    """
    _check_dataset(ds)
    a = _checks.check_int(a, "a", low=0, high=ds.num_classes - 1)
    b = _checks.check_int(b, "b", low=0, high=ds.num_classes - 1)
    if a == b:
        raise ValueError(f"b: must differ from a, both are {a}")
    ia, ib = np.flatnonzero(ds.labels == a), np.flatnonzero(ds.labels == b)
    for cls, idx, nm in ((a, ia, "a"), (b, ib, "b")):
        if idx.size == 0:
            raise ValueError(f"{nm}: class {cls} has no examples in {ds.name}/{ds.split}")
    if n_per_class is not None:
        n = _checks.check_int(n_per_class, "n_per_class", low=1)
        if n > min(ia.size, ib.size):
            raise ValueError(
                f"n_per_class: {n} requested but class {a} has {ia.size} and class {b} has {ib.size}"
            )
        ia, ib = ia[:n], ib[:n]
    return ds.images[ia], ds.images[ib]


def random_subset(ds: Dataset, *, n: int, key: jax.Array) -> Dataset:
    """A uniformly random subset of ``n`` examples (without replacement), in random order.

    Args:
      ds: the dataset.
      n: examples kept, ``0 <= n <= len(ds)``.
      key: ``jax.random`` key of the permutation.

    Returns:
      :class:`Dataset` with ``n`` examples.
    """
    _check_dataset(ds)
    _checks.check_key(key)
    n = _checks.check_int(n, "n", low=0, high=len(ds))
    idx = np.asarray(jax.random.permutation(key, len(ds))[:n])
    return ds.subset(idx)


# ---------------------------------------------------------------------------
# Synthetic distributions
# ---------------------------------------------------------------------------


def gaussian_mixture(n: int, *, mu: Any, key: jax.Array, sigma: Any = None, p1: float = 0.5) -> Dataset:
    """Two classes: ``y = 1`` with probability ``p1`` and ``x ~ N(+mu, Sigma)``, else ``N(-mu, Sigma)``.

    The distribution of Bhagoji et al. (2021, §5, Theorem 2).

    Args:
      n: number of samples.
      mu: ``[d]`` mean of class 1.
      key: ``jax.random`` key.
      sigma: ``[d, d]`` positive definite covariance, ``[d]`` diagonal, a
        scalar variance, or ``None`` for the identity.
      p1: prior of class 1 in ``(0, 1)``.

    Returns:
      :class:`Dataset` with ``images [n, d]`` (float32 vectors, not confined
      to [0, 1]) and labels in ``{0, 1}``.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in
      the presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
    """
    _checks.check_key(key)
    n = _checks.check_int(n, "n", low=0)
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0:
        raise ValueError(f"mu: expected a non-empty vector [d], got shape {mu.shape}")
    _checks.check_finite(mu, "mu")
    p1 = _checks.check_probability(p1, "p1")
    d = mu.size
    chol = _sigma_factor(sigma, d)
    k1, k2 = jax.random.split(key)
    y = np.asarray(jax.random.bernoulli(k1, p1, (n,))).astype(np.int64)
    z = np.asarray(jax.random.normal(k2, (n, d), dtype=jnp.float32), dtype=np.float64)
    x = (2 * y[:, None] - 1) * mu[None, :] + z @ chol.T
    return Dataset(x.astype(np.float32), y, "gaussian_mixture", "synthetic", 2)


def _sigma_factor(sigma, d: int) -> np.ndarray:
    if sigma is None:
        return np.eye(d)
    s = np.asarray(sigma, dtype=np.float64)
    _checks.check_finite(s, "sigma")
    if s.ndim == 0:
        if s <= 0:
            raise ValueError(f"sigma: a scalar variance must be > 0, got {float(s)}")
        return np.sqrt(s) * np.eye(d)
    if s.ndim == 1:
        if s.shape != (d,) or (s <= 0).any():
            raise ValueError(f"sigma: a diagonal must have {d} positive entries")
        return np.diag(np.sqrt(s))
    if s.shape != (d, d) or not np.allclose(s, s.T):
        raise ValueError(f"sigma: expected a symmetric [{d}, {d}] matrix, got shape {s.shape}")
    try:
        return np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        raise ValueError("sigma: must be positive definite") from None


def uniform_cube(n: int, *, d: int, key: jax.Array) -> np.ndarray:
    """``[n, d]`` float32 samples uniform on ``[0, 1]^d`` (Ding et al. 2019, Theorem 2.1).

    Args:
      n: number of samples.
      d: dimension.
      key: ``jax.random`` key.

    Returns:
      ``[n, d]`` float32 array.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    _checks.check_key(key)
    n = _checks.check_int(n, "n", low=0)
    d = _checks.check_int(d, "d", low=1)
    return np.asarray(jax.random.uniform(key, (n, d), dtype=jnp.float32))


def _unit_directions(key: jax.Array, n: int, d: int) -> np.ndarray:
    """``[n, d]`` float64 directions uniform on the unit ``l2`` sphere (normalised Gaussians)."""
    g = np.asarray(jax.random.normal(key, (n, d)), dtype=np.float64)
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)


def uniform_ball(n: int, *, d: int, key: jax.Array, radius: float = 1.0) -> np.ndarray:
    """``[n, d]`` float32 samples uniform in the ``l2`` ball of ``radius`` around 0 (Ding et al. 2019, Theorem 2.1).

    A Gaussian direction scaled by ``radius * u^(1/d)`` with ``u`` uniform.

    Args:
      n: number of samples.
      d: dimension.
      key: ``jax.random`` key.
      radius: ball radius ``> 0``.

    Returns:
      ``[n, d]`` float32 array.

    References:
      Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial
      robustness to input data distributions." ICLR 2019, arXiv:1902.08336.
    """
    _checks.check_key(key)
    n = _checks.check_int(n, "n", low=0)
    d = _checks.check_int(d, "d", low=1)
    radius = _checks.check_scalar(radius, "radius", low=0.0, low_inclusive=False)
    k1, k2 = jax.random.split(key)
    g = _unit_directions(k1, n, d)
    u = np.asarray(jax.random.uniform(k2, (n, 1)), dtype=np.float64)
    return (radius * g * u ** (1.0 / d)).astype(np.float32)


def concentric_spheres(
    n: int, *, d: int, key: jax.Array, radii: tuple[float, float] = (1.0, 1.3)
) -> Dataset:
    """Two classes on concentric spheres: class 0 on radius ``radii[0]``, class 1 on ``radii[1]``.

    Each class has probability 1/2; points are uniform on their sphere.

    Args:
      n: number of samples.
      d: dimension ``>= 2``.
      key: ``jax.random`` key.
      radii: the two distinct radii ``> 0``.

    Returns:
      :class:`Dataset` with ``images [n, d]`` float32 and labels in ``{0, 1}``.

    References:
      Gilmer, Metz, Faghri, Schoenholz, Raghu, Wattenberg, Goodfellow.
      "Adversarial spheres." arXiv:1801.02774.
    """
    _checks.check_key(key)
    n = _checks.check_int(n, "n", low=0)
    d = _checks.check_int(d, "d", low=2)
    if not isinstance(radii, (tuple, list, np.ndarray)) or len(radii) != 2:
        raise ValueError(f"radii: expected two radii, got {radii!r}")
    r0 = _checks.check_scalar(radii[0], "radii", low=0.0, low_inclusive=False)
    r1 = _checks.check_scalar(radii[1], "radii", low=0.0, low_inclusive=False)
    if r0 == r1:
        raise ValueError("radii: the two radii must differ")
    k1, k2 = jax.random.split(key)
    y = np.asarray(jax.random.bernoulli(k1, 0.5, (n,))).astype(np.int64)
    x = _unit_directions(k2, n, d) * np.where(y == 1, r1, r0)[:, None]
    return Dataset(x.astype(np.float32), y, "concentric_spheres", "synthetic", 2)
