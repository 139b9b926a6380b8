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
* ``"imagefolder"``: any class-per-folder image tree, or a ``.tar`` /
  ``.tar.gz`` of one, given as ``data_dir``. Images sit at
  ``<split>/<class>/<file>`` (``split`` picks the top-level folder, e.g.
  ``"train"`` or ``"test"``) or, for a tree without split folders, at
  ``<class>/<file>`` (then ``split="all"``); enclosing folders around the
  split layout (``name/train/<class>/<file>``) are looked through (a single
  folder holding class folders is read as one split of that name). Classes are the class-folder names in
  sorted order over every split (so train and test labels agree), files are
  read in sorted path order, every file whose suffix Pillow knows is an image
  (hidden files and other files are skipped). Pixels are exactly what Pillow
  decodes (modes L, LA, RGB, RGBA; one size and one mode per split), x/255.
  ``cache_dir`` (default ``$JAXBOUND_CACHE_DIR``) keeps the decoded pixels of
  a split in a checksummed ``.npz`` written atomically once the whole split
  has decoded; a changed source (path, sizes, modification times) misses it.
  ``Dataset.classes`` holds the class names.
* ``"cifar10"``: the original CIFAR-10 python batches (``data_batch_1`` ...
  ``data_batch_5``, ``test_batch``) in ``data_dir`` or
  ``data_dir/cifar-10-batches-py``; splits ``"train"`` and ``"test"``, pixels
  x/255, labels 0..9 in CIFAR-10's order (airplane ... truck). The pickles
  are read by an unpickler that admits NumPy arrays and plain containers only.
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
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import _checks, _io

__all__ = [
    "Dataset",
    "load",
    "read_idx",
    "class_pair",
    "random_subset",
    "interleave_classes",
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
      classes: class names in label order (``()`` when unknown; otherwise
        ``num_classes`` strings).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = ""
    split: str = ""
    num_classes: int = 0
    classes: tuple[str, ...] = ()

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
        classes = tuple(self.classes) if isinstance(self.classes, (tuple, list)) else None
        if classes is None or not all(isinstance(c, str) for c in classes) or (classes and len(classes) != k):
            raise ValueError(f"classes: expected () or {k} class-name strings, got {self.classes!r}")
        put("images", images)
        put("labels", labels)
        put("num_classes", k)
        put("classes", classes)

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
        out = {"name": self.name, "split": self.split, "n": len(self), "shape": list(self.shape),
               "num_classes": self.num_classes}
        if self.classes:
            out["classes"] = list(self.classes)
        return out


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load(name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None,
         cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a named dataset (see the module docstring for names and splits).

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ``"imagefolder"``,
        ``"cifar10"`` or ``"tfds:<name>"``.
      split: ``"train"`` or ``"test"`` (``"all"`` for digits and for an image
        folder without split folders; an image folder's top-level folder
        name; any tensorflow-datasets split string for ``tfds:`` names).
      data_dir: folder with the IDX files (MNIST-style) or the CIFAR-10
        batches, the image folder or its ``.tar``/``.tar.gz``, or the
        tensorflow-datasets data folder; default ``$JAXBOUND_DATA_DIR``.
      cache_dir: ``"imagefolder"`` only: folder for the cache of decoded
        pixels; default ``$JAXBOUND_CACHE_DIR`` (unset: no cache).

    Returns:
      A :class:`Dataset` with float32 images in ``[0, 1]`` shaped ``[n, H, W, C]``.

    Raises:
      ValueError: unknown name or split, missing or corrupt files (an image
        that does not decode is named), an image folder with an empty class
        folder or with mixed image sizes or modes, ``cache_dir`` given for a
        dataset that is not an image folder, or tensorflow-datasets not
        installed for a ``tfds:`` name. Nothing is cached unless the whole
        split decoded.
    """
    if not isinstance(name, str):
        raise ValueError(f"name: expected a dataset name string, got {name!r}")
    if not isinstance(split, str):
        raise ValueError(f"split: expected a string, got {split!r}")
    key = name.strip().lower().replace("-", "_")
    if cache_dir is not None and key not in ("imagefolder", "image_folder"):
        raise ValueError(f"cache_dir: only 'imagefolder' datasets are cached, not {name!r}")
    if key == "digits":
        return _load_digits(split)
    if key in _IDX_FOLDERS:
        return _load_idx_dataset(key, split, data_dir)
    if key in ("imagefolder", "image_folder"):
        if cache_dir is None:
            cache_dir = os.environ.get("JAXBOUND_CACHE_DIR") or None
        return _load_imagefolder(split, data_dir, cache_dir)
    if key == "cifar10":
        return _load_cifar10(split, data_dir)
    if name.startswith("tfds:"):
        return _load_tfds(name[len("tfds:"):], split, data_dir)
    raise ValueError(
        f"name: unknown dataset {name!r}; use 'digits', 'mnist', 'fashion_mnist', 'imagefolder', 'cifar10' "
        "or 'tfds:<name>'"
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
# Image folders (a class-per-folder tree, or a .tar / .tar.gz of one)
# ---------------------------------------------------------------------------

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_IMAGE_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_CACHE_VERSION = 1


@dataclasses.dataclass
class _Tree:
    """Image files of an image-folder source: relative path parts -> bytes or a file path."""

    files: dict[tuple[str, ...], Any]
    folders: set[tuple[str, ...]]
    source: str


def _image_suffixes() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_TAR_SUFFIXES)


def _walk_folder(root: Path, suffixes) -> _Tree:
    files, folders = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        dirnames[:] = [d for d in dirnames if not _ignored((d,))]
        if rel:
            folders.add(tuple(rel))
        for fn in filenames:
            parts = (*rel, fn)
            if not _ignored(parts) and os.path.splitext(fn)[1].lower() in suffixes:
                files[parts] = Path(dirpath) / fn
    return _Tree(files, folders, str(root))


def _read_tar(path: Path, suffixes) -> _Tree:
    import tarfile

    files, folders = {}, set()
    try:
        # Stream mode ("r|*"): members in archive order without the seeks that make "r:gz" slow.
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
                if not parts or _ignored(parts):
                    continue
                if m.isdir():
                    folders.add(parts)
                elif m.isfile() and os.path.splitext(parts[-1])[1].lower() in suffixes:
                    files[parts] = tf.extractfile(m).read()
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise ValueError(f"data_dir: cannot read the tar file {str(path)!r}: {exc}") from None
    for parts in files:
        folders.update(parts[:i] for i in range(1, len(parts)))
    return _Tree(files, folders, str(path))


def _layout(tree: _Tree, split: str) -> tuple[list[str], list[tuple[str, ...]], tuple[str, ...]]:
    """The class names, their folders and the split prefix of ``split`` in ``tree``.

    Images sit at one depth below the root: ``class/file`` (no split folders;
    the whole tree is split ``"all"``) or ``split/class/file``; one enclosing
    folder around the split layout (``name/train/class/file``) is looked through.
    """
    if not tree.files:
        raise ValueError(f"data_dir: no image files in {tree.source!r}")
    prefix: tuple[str, ...] = ()
    while True:
        depths = {len(p) - len(prefix) for p in tree.files}
        firsts = {p[len(prefix)] for p in tree.files}
        if min(depths) >= 4 and len(firsts) == 1:
            prefix = (*prefix, firsts.pop())
            continue
        break
    if len(depths) > 1 or depths.pop() not in (2, 3):
        some = sorted(tree.files)[0]
        raise ValueError(
            f"data_dir: expected images at <class>/<file> or <split>/<class>/<file> in {tree.source!r}, all at one "
            f"depth; found {'/'.join(some)!r} among images at depths {sorted({len(p) for p in tree.files})}")
    depth = len(next(iter(tree.files))) - len(prefix)
    n = len(prefix)
    if depth == 2:
        if split != "all":
            raise ValueError(f"split: {tree.source!r} has no split folders (its folders are the classes); "
                             f"pass split='all', got {split!r}")
        split_prefix = prefix
        class_folders = sorted({f for f in tree.folders if len(f) == n + 1 and f[:n] == prefix})
    else:
        splits = sorted({p[n] for p in tree.files})
        if split not in splits:
            raise ValueError(f"split: {tree.source!r} has split folders {splits}, got {split!r}")
        split_prefix = (*prefix, split)
        # One label per class name over every split, so that train and test labels agree.
        class_folders = sorted({f for f in tree.folders if len(f) == n + 2 and f[:n] == prefix})
    classes = sorted({f[-1] for f in class_folders})
    have = {p[len(split_prefix)] for p in tree.files if p[:len(split_prefix)] == split_prefix}
    for f in class_folders:
        if f[:len(split_prefix)] == split_prefix and f[-1] not in have:
            raise ValueError(f"data_dir: class folder {'/'.join(f)!r} in {tree.source!r} holds no images")
    return classes, class_folders, split_prefix


def _decode_one(name: str, src: Any) -> tuple[str, np.ndarray]:
    from PIL import Image

    try:
        raw = src if isinstance(src, bytes) else Path(src).read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            mode = im.mode
            if mode not in _IMAGE_MODES:
                raise ValueError(f"image mode {mode!r} is not one of {sorted(_IMAGE_MODES)}")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"data_dir: cannot decode image {name!r}: {exc}") from None
    return mode, arr


def _decode_all(names: list[str], srcs: list[Any], workers: int) -> np.ndarray:
    """``[n, H, W, C]`` uint8 pixels of every image; one size and one mode or ``ValueError`` naming the file."""
    from concurrent.futures import ThreadPoolExecutor

    mode0, first = _decode_one(names[0], srcs[0])
    out = np.empty((len(names), *first.shape[:2], _IMAGE_MODES[mode0]), np.uint8)

    def chunk(lo: int) -> None:
        for i in range(lo, min(lo + 512, len(names))):
            mode, arr = _decode_one(names[i], srcs[i])
            if mode != mode0 or arr.shape[:2] != first.shape[:2]:
                raise ValueError(
                    f"data_dir: image {names[i]!r} is {arr.shape[1]}x{arr.shape[0]} {mode} but "
                    f"{names[0]!r} is {first.shape[1]}x{first.shape[0]} {mode0}; all images must share size and mode")
            out[i] = arr.reshape(out.shape[1:])

    with ThreadPoolExecutor(max_workers=workers) as ex:
        futures = [ex.submit(chunk, lo) for lo in range(0, len(names), 512)]
        try:
            for fut in futures:  # in file order: the first bad file is the one named
                fut.result()
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise
    return out


def _source_path(data_dir) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("JAXBOUND_DATA_DIR")
        if not data_dir:
            raise ValueError("data_dir: needed to load an image folder (a folder or a .tar/.tar.gz of one); pass "
                             "data_dir=... or set JAXBOUND_DATA_DIR")
    root = _checks.check_path(data_dir, "data_dir")
    if _is_tar(root) or root.is_dir():
        return root
    if root.exists():
        raise ValueError(f"data_dir: {str(root)!r} is neither a folder nor a .tar/.tar.gz file")
    raise ValueError(f"data_dir: {str(root)!r} does not exist")


def _cache_identity(root: Path, tree: _Tree | None, split: str) -> str:
    """Fingerprint of the source (a tar's path, size and mtime; every image file's for a folder) and split."""
    if tree is None:
        st = root.stat()
        ident: tuple = (str(root.resolve()), st.st_size, st.st_mtime_ns)
    else:
        stats = []
        for parts, p in sorted(tree.files.items()):
            st = p.stat()
            stats.append(("/".join(parts), st.st_size, st.st_mtime_ns))
        ident = (str(root.resolve()), tuple(stats))
    return _io.fingerprint("imagefolder", _CACHE_VERSION, ident, split)


def _cache_read(path: Path):
    """``(pixels, labels, classes)`` from a cache file, or ``None`` (with a warning when it is damaged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            pixels, labels, classes, stored = z["pixels"], z["labels"], z["classes"], str(z["checksum"])
        if _io.fingerprint(pixels, labels, classes) == stored:
            return pixels, labels, tuple(str(c) for c in classes)
    except Exception:  # truncated or foreign file: decoded again below
        pass
    warnings.warn(f"cache_dir: the cached images {str(path)!r} are damaged; decoding again", RuntimeWarning,
                  stacklevel=4)
    return None


def _cache_write(path: Path, pixels: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    cls = np.asarray(classes, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, pixels=pixels, labels=labels, classes=cls, checksum=np.asarray(_io.fingerprint(pixels, labels, cls)))
    try:
        _io.atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise ValueError(f"cache_dir: cannot write {str(path)!r}: {exc}") from None


def _load_imagefolder(split: str, data_dir, cache_dir) -> Dataset:
    root = _source_path(data_dir)
    suffixes = _image_suffixes()
    tree = None if _is_tar(root) else _walk_folder(root, suffixes)
    cache_path = None
    if cache_dir is not None:
        folder = _checks.check_path(cache_dir, "cache_dir")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"cache_dir: {str(folder)!r} is not a folder")
        cache_path = folder / f"imagefolder-{_cache_identity(root, tree, split)}.npz"
        hit = _cache_read(cache_path)
        if hit is not None:
            return _imagefolder_dataset(*hit, root, split)
    if tree is None:
        tree = _read_tar(root, suffixes)
    classes, _, split_prefix = _layout(tree, split)
    k = len(split_prefix)
    chosen = sorted(p for p in tree.files if p[:k] == split_prefix)
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([label_of[p[k]] for p in chosen], dtype=np.int64)
    pixels = _decode_all(["/".join(p) for p in chosen], [tree.files[p] for p in chosen], min(8, os.cpu_count() or 1))
    if cache_path is not None:
        _cache_write(cache_path, pixels, labels, tuple(classes))
    return _imagefolder_dataset(pixels, labels, tuple(classes), root, split)


def _imagefolder_dataset(pixels, labels, classes, root: Path, split: str) -> Dataset:
    images = pixels.astype(np.float32)
    images /= np.float32(255.0)
    stem = root.name
    for suffix in _TAR_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return Dataset(images, labels, f"imagefolder:{stem}", split, len(classes), classes=classes)

# ---------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------

_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of lists, bytes and NumPy arrays) and nothing that could run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy") and module.endswith("multiarray"):
            from numpy._core import multiarray  # numpy.core is numpy._core's deprecated alias

            return getattr(multiarray, name)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # OSError, UnpicklingError, EOFError, ...
        raise ValueError(f"data_dir: cannot read CIFAR-10 batch {str(path)!r}: {exc}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"data_dir: {str(path)!r} is not a CIFAR-10 batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"data_dir: {str(path)!r} is not a CIFAR-10 batch (needs 'data' and 'labels')")
    x, y = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"data_dir: {str(path)!r} data should be uint8 [n, 3072], got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise ValueError(f"data_dir: {str(path)!r} should hold {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"data_dir: {str(path)!r} has a label outside 0..9")
    return x, y.astype(np.int64)


def _load_cifar10(split: str, data_dir) -> Dataset:
    if split not in _CIFAR_FILES:
        raise ValueError(f"split: cifar10 has 'train' and 'test', got {split!r}")
    root = _resolve_data_dir(data_dir, "cifar10 (the cifar-10-batches-py folder)")
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / _CIFAR_FILES[split][0]).is_file():
            break
    else:
        raise ValueError(f"data_dir: no {_CIFAR_FILES[split][0]} in {str(root)!r} or its cifar-10-batches-py folder")
    xs, ys = [], []
    for fn in _CIFAR_FILES[split]:
        if not (folder / fn).is_file():
            raise ValueError(f"data_dir: {fn} is missing from {str(folder)!r}")
        x, y = _read_cifar_batch(folder / fn)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes
    images = x.astype(np.float32) / 255.0
    return Dataset(images, np.concatenate(ys), "cifar10", split, 10, classes=_CIFAR_CLASSES)


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


def interleave_classes(ds: Dataset) -> Dataset:
    """The examples reordered round-robin over classes: the first of every class, then the second, ...

    Image folders list each class's files together, so "the first N examples"
    of such a split is one class. After this reordering every prefix is as
    balanced as the class sizes allow, and the order within each class is
    kept (deterministic, no key).

    Args:
      ds: the dataset.

    Returns:
      :class:`Dataset` with the same examples in round-robin class order.
    """
    _check_dataset(ds)
    labels = ds.labels
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(ds), np.int64)
    counts = np.bincount(labels, minlength=ds.num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(ds)) - np.repeat(starts, counts)
    return ds.subset(np.lexsort((labels, rank)))


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
