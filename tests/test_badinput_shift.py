"""Bad inputs to jaxbound.shift: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import numpy as np

from jaxbound import data, shift
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
X = np.linspace(0, 1, 10 * 4, dtype=np.float32).reshape(10, 4)
LAB = np.arange(10) % 2
IMG = np.linspace(0, 1, 8 * 4, dtype=np.float32).reshape(8, 2, 2, 1)
DS = data.Dataset(IMG, np.arange(8) % 2, "toy", "train", 2)


def sweep(**kw):
    base = dict(key=KEY, norm="linf", eps=0.1, volume=False, inter_class=False, concentration=None, pair=None, figures=False,
                progress=False)
    base.update(kw)
    levels = base.pop("levels", [0.5])
    transform = base.pop("transform", "binarize")
    dataset = base.pop("dataset", DS)
    return shift.sensitivity_sweep(dataset, transform, levels, **base)


CASES = [
    ("log2 volumes negative eps", lambda: shift.log2_perturbable_volumes(X, -0.1), ValueError, "eps"),
    ("log2 volumes nan x", lambda: shift.log2_perturbable_volumes(X * np.nan, 0.1), ValueError, "x"),
    ("log2 volumes low >= high", lambda: shift.log2_perturbable_volumes(X, 0.1, low=1.0, high=0.0), ValueError,
     "bounds"),
    ("perturbable_volume outside box", lambda: shift.perturbable_volume(X * 3, eps=0.1), ValueError, "x"),
    ("perturbable_volume nan eps", lambda: shift.perturbable_volume(X, eps=float("nan")), ValueError, "eps"),
    ("perturbable_volume empty", lambda: shift.perturbable_volume(X[:0], eps=0.1), ValueError, "x"),
    ("perturbable_volume bad bounds", lambda: shift.perturbable_volume(X, eps=0.1, bounds=(1.0,)), ValueError,
     "bounds"),
    ("point_margins empty", lambda: shift.point_margins(X[:0], LAB[:0]), ValueError, "x"),
    ("point_margins ragged", lambda: shift.point_margins([[0.0, 1.0], [2.0]], LAB[:2]), ValueError, "x"),
    ("perturbable_volume ragged", lambda: shift.perturbable_volume([[0.0, 1.0], [0.5]], eps=0.1), ValueError, "x"),
    ("point_margins short labels", lambda: shift.point_margins(X, LAB[:5]), ValueError, "labels"),
    ("point_margins fraction 0", lambda: shift.point_margins(X, LAB, fraction=0.0), ValueError, "fraction"),
    ("point_margins fraction 2", lambda: shift.point_margins(X, LAB, fraction=2.0), ValueError, "fraction"),
    ("point_margins one class", lambda: shift.point_margins(X, np.zeros(10, int)), ValueError, "labels"),
    ("point_margins nan x", lambda: shift.point_margins(X * np.nan, LAB), ValueError, "x"),
    ("point_margins block 0", lambda: shift.point_margins(X, LAB, block_size=0), ValueError, "block_size"),
    ("inter_class_distance bad norm", lambda: shift.inter_class_distance(X, LAB, norm="lq"), ValueError, "norm"),
    ("inter_class_distance point_fraction", lambda: shift.inter_class_distance(X, LAB, point_fraction=-1.0),
     ValueError, "point_fraction"),
    ("inter_class_distance num_classes", lambda: shift.inter_class_distance(X, LAB, num_classes=1), ValueError,
     "num_classes"),
    ("cube_concentration p_a 0", lambda: shift.cube_concentration(0.0, 0.1), ValueError, "p_a"),
    ("cube_concentration p_a 2", lambda: shift.cube_concentration(2.0, 0.1), ValueError, "p_a"),
    ("cube_concentration eps neg", lambda: shift.cube_concentration(0.5, -0.1), ValueError, "eps"),
    ("ball_concentration d 0", lambda: shift.ball_concentration(0.5, 0.1, d=0), ValueError, "d"),
    ("ball_concentration p_b nan", lambda: shift.ball_concentration(float("nan"), 0.1, d=3), ValueError, "p_b"),
    ("example1 d 0", lambda: shift.example1(0, 0.1), ValueError, "d"),
    ("example1 eps text", lambda: shift.example1(3, "big"), ValueError, "eps"),
    ("example2 domain", lambda: shift.example2(0.1, domain="torus"), ValueError, "domain"),
    ("example2 priors", lambda: shift.example2(0.1, priors=[0.5, 0.6]), ValueError, "priors"),
    ("example2 num_classes", lambda: shift.example2(0.1, num_classes=1), ValueError, "num_classes"),
    ("sweep unknown transform", lambda: sweep(transform="blur9"), ValueError, "transform"),
    ("sweep no levels", lambda: sweep(levels=[]), ValueError, "levels"),
    ("sweep bad key", lambda: sweep(key=0), ValueError, "key"),
    ("sweep bad dataset", lambda: sweep(dataset=3), ValueError, "dataset"),
    ("sweep concentration", lambda: sweep(concentration="magic"), ValueError, "concentration"),
    ("sweep alpha", lambda: sweep(alpha=2.0), ValueError, "alpha"),
    ("sweep out_dir file", lambda: sweep(out_dir="/etc/passwd"), ValueError, "out_dir"),
    ("sweep pair equal", lambda: sweep(pair=(1, 1)), ValueError, "pair"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
