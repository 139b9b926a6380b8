"""Bad inputs to jaxbound.transforms: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import numpy as np

from jaxbound import transforms as T
from _badinput import check, params, unique_ids

X = np.linspace(0, 1, 2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6, 1)
NAN = np.where(X > 0.5, np.nan, X)

CASES = [
    ("binarize nan", lambda: T.binarize(NAN), ValueError, "x"),
    ("binarize outside [0, 1]", lambda: T.binarize(X * 2), ValueError, "x"),
    ("binarize 3-D", lambda: T.binarize(X[..., 0]), ValueError, "x"),
    ("binarize threshold 2", lambda: T.binarize(X, threshold=2.0), ValueError, "threshold"),
    ("binarize threshold nan", lambda: T.binarize(X, threshold=float("nan")), ValueError, "threshold"),
    ("binarize threshold text", lambda: T.binarize(X, threshold="half"), ValueError, "threshold"),
    ("smooth s 0", lambda: T.smooth(X, 0), ValueError, "s"),
    ("smooth s float", lambda: T.smooth(X, 1.5), ValueError, "s"),
    ("smooth kernel", lambda: T.smooth(X, 2, kernel="round"), ValueError, "kernel"),
    ("smooth nan", lambda: T.smooth(NAN, 2), ValueError, "x"),
    ("saturate p 0", lambda: T.saturate(X, 0.0), ValueError, "p"),
    ("saturate p negative", lambda: T.saturate(X, -2.0), ValueError, "p"),
    ("saturate nan", lambda: T.saturate(NAN, 2.0), ValueError, "x"),
    ("gamma g 0", lambda: T.gamma(X, 0.0), ValueError, "g"),
    ("gamma g nan", lambda: T.gamma(X, float("nan")), ValueError, "g"),
    ("gamma outside box", lambda: T.gamma(X - 1, 2.0), ValueError, "x"),
    ("scale a 0", lambda: T.scale(X, 0.0), ValueError, "a"),
    ("scale a above 1", lambda: T.scale(X, 1.5), ValueError, "a"),
    ("scale a text", lambda: T.scale(X, "x"), ValueError, "a"),
    ("canny sigma negative", lambda: T.canny(X, -1.0), ValueError, "sigma"),
    ("canny thresholds reversed", lambda: T.canny(X, 1.0, low_threshold=0.3, high_threshold=0.1), ValueError,
     "high_threshold"),
    ("canny nan", lambda: T.canny(NAN, 1.0), ValueError, "x"),
    ("identity nan", lambda: T.identity(NAN), ValueError, "x"),
    ("identity list of text", lambda: T.identity([["a"]]), ValueError, "x"),
    ("binarize bool images", lambda: T.binarize(X > 0.5), ValueError, "x"),
    ("gamma g text", lambda: T.gamma(X, "bright"), ValueError, "g"),
    ("saturate p text", lambda: T.saturate(X, "2"), ValueError, "p"),
    ("saturate p nan", lambda: T.saturate(X, float("nan")), ValueError, "p"),
    ("scale a nan", lambda: T.scale(X, float("nan")), ValueError, "a"),
    ("canny sigma 0", lambda: T.canny(X, 0.0), ValueError, "sigma"),
    ("canny tiny images", lambda: T.canny(X[:, :2, :2], 1.0), ValueError, "x"),
    ("apply smooth_vertical no level", lambda: T.apply("smooth_vertical", X), ValueError, "level"),
    ("apply unknown", lambda: T.apply("blur", X, 2), ValueError, "name"),
    ("apply name not str", lambda: T.apply(3, X, 2), ValueError, "name"),
    ("apply missing level", lambda: T.apply("smooth", X), ValueError, "level"),
    ("apply bad level", lambda: T.apply("gamma", X, -1.0), ValueError, "g"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
