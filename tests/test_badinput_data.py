"""Bad inputs to jaxbound.data: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import numpy as np

from jaxbound import data
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
IMG = np.linspace(0, 1, 6 * 4, dtype=np.float32).reshape(6, 2, 2, 1)
LAB = np.array([0, 1, 2, 0, 1, 2])


def _ds():
    return data.Dataset(IMG, LAB, "toy", "train", 3)


CASES = [
    ("Dataset length mismatch", lambda: data.Dataset(IMG, LAB[:5]), ValueError, "labels"),
    ("Dataset nan images", lambda: data.Dataset(IMG * np.nan, LAB), ValueError, "images"),
    ("Dataset inf images", lambda: data.Dataset(IMG + np.inf, LAB), ValueError, "images"),
    ("Dataset pixels above 1", lambda: data.Dataset(IMG * 3, LAB), ValueError, "images"),
    ("Dataset negative pixels", lambda: data.Dataset(IMG - 1, LAB), ValueError, "images"),
    ("Dataset label >= num_classes", lambda: data.Dataset(IMG, LAB + 1, num_classes=3), ValueError, "labels"),
    ("Dataset negative label", lambda: data.Dataset(IMG, LAB - 1), ValueError, "labels"),
    ("Dataset float labels", lambda: data.Dataset(IMG, LAB * 1.0), ValueError, "labels"),
    ("Dataset 2-D labels", lambda: data.Dataset(IMG, LAB[:, None]), ValueError, "labels"),
    ("Dataset [n, H, W] images", lambda: data.Dataset(IMG[..., 0], LAB), ValueError, "images"),
    ("Dataset 1-D images", lambda: data.Dataset(IMG.ravel(), LAB), ValueError, "images"),
    ("Dataset 5-D images", lambda: data.Dataset(IMG[None], LAB), ValueError, "images"),
    ("Dataset string images", lambda: data.Dataset(np.array([["a", "b"]]), LAB[:1]), ValueError, "images"),
    ("Dataset bool images", lambda: data.Dataset(IMG > 0.5, LAB), ValueError, "images"),
    ("Dataset negative num_classes", lambda: data.Dataset(IMG, LAB, num_classes=-2), ValueError, "num_classes"),
    ("Dataset float num_classes", lambda: data.Dataset(IMG, LAB, num_classes=3.0), ValueError, "num_classes"),
    ("load unknown name", lambda: data.load("nope"), ValueError, "name"),
    ("load name not str", lambda: data.load(3), ValueError, "name"),
    ("load unknown split", lambda: data.load("digits", split="validation"), ValueError, "split"),
    ("load missing data_dir", lambda: data.load("mnist", data_dir="/nonexistent/folder"), ValueError, "data_dir"),
    ("load imagefolder missing folder", lambda: data.load("imagefolder", data_dir="/nonexistent/folder"), ValueError,
     "data_dir"),
    ("load imagefolder missing tar", lambda: data.load("imagefolder", data_dir="/nonexistent/x.tar.gz"), ValueError,
     "data_dir"),
    ("load imagefolder data_dir not a path", lambda: data.load("imagefolder", data_dir=1.5), TypeError, "data_dir"),
    ("load cifar10 missing folder", lambda: data.load("cifar10", data_dir="/nonexistent/folder"), ValueError,
     "data_dir"),
    ("load cifar10 unknown split", lambda: data.load("cifar10", split="all", data_dir="/tmp"), ValueError, "split"),
    ("load cache_dir for digits", lambda: data.load("digits", cache_dir="/tmp"), ValueError, "cache_dir"),
    ("Dataset classes of wrong length", lambda: data.Dataset(IMG, LAB, num_classes=3, classes=("a", "b")),
     ValueError, "classes"),
    ("Dataset classes not strings", lambda: data.Dataset(IMG, LAB, num_classes=3, classes=(1, 2, 3)), ValueError,
     "classes"),
    ("read_idx missing file", lambda: data.read_idx("/nonexistent/file-idx1-ubyte"), ValueError, "path"),
    ("class_pair equal classes", lambda: data.class_pair(_ds(), 1, 1), ValueError, "b"),
    ("class_pair negative a", lambda: data.class_pair(_ds(), -1, 1), ValueError, "a"),
    ("class_pair b out of range", lambda: data.class_pair(_ds(), 0, 3), ValueError, "b"),
    ("class_pair float a", lambda: data.class_pair(_ds(), 0.5, 1), ValueError, "a"),
    ("class_pair too many per class", lambda: data.class_pair(_ds(), 0, 1, n_per_class=3), ValueError,
     "n_per_class"),
    ("class_pair zero per class", lambda: data.class_pair(_ds(), 0, 1, n_per_class=0), ValueError, "n_per_class"),
    ("class_pair not a dataset", lambda: data.class_pair((IMG, LAB), 0, 1), TypeError, "ds"),
    ("random_subset not a dataset", lambda: data.random_subset(None, n=1, key=KEY), TypeError, "ds"),
    ("read_idx not a path", lambda: data.read_idx(None), TypeError, "path"),
    ("random_subset too many", lambda: data.random_subset(_ds(), n=7, key=KEY), ValueError, "n"),
    ("random_subset negative", lambda: data.random_subset(_ds(), n=-1, key=KEY), ValueError, "n"),
    ("random_subset bad key", lambda: data.random_subset(_ds(), n=2, key=0), ValueError, "key"),
    ("gaussian_mixture negative n", lambda: data.gaussian_mixture(-1, mu=np.ones(2), key=KEY), ValueError, "n"),
    ("gaussian_mixture nan mu", lambda: data.gaussian_mixture(4, mu=np.array([np.nan, 1.0]), key=KEY), ValueError,
     "mu"),
    ("gaussian_mixture p1 above 1", lambda: data.gaussian_mixture(4, mu=np.ones(2), key=KEY, p1=1.5), ValueError,
     "p1"),
    ("gaussian_mixture negative sigma", lambda: data.gaussian_mixture(4, mu=np.ones(2), key=KEY, sigma=-1.0),
     ValueError, "sigma"),
    ("gaussian_mixture bad key", lambda: data.gaussian_mixture(4, mu=np.ones(2), key="k"), ValueError, "key"),
    ("uniform_cube zero d", lambda: data.uniform_cube(4, d=0, key=KEY), ValueError, "d"),
    ("uniform_cube float n", lambda: data.uniform_cube(2.5, d=2, key=KEY), ValueError, "n"),
    ("uniform_ball negative radius", lambda: data.uniform_ball(4, d=2, key=KEY, radius=-1.0), ValueError,
     "radius"),
    ("uniform_ball nan radius", lambda: data.uniform_ball(4, d=2, key=KEY, radius=float("nan")), ValueError,
     "radius"),
    ("concentric_spheres equal radii", lambda: data.concentric_spheres(4, d=2, key=KEY, radii=(1.0, 1.0)),
     ValueError, "radii"),
    ("concentric_spheres scalar radii", lambda: data.concentric_spheres(4, d=2, key=KEY, radii=1.0), ValueError,
     "radii"),
    ("concentric_spheres one radius", lambda: data.concentric_spheres(4, d=2, key=KEY, radii=(1.0,)), ValueError,
     "radii"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
