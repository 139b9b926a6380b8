"""Bad inputs to jaxbound.certify: each raises ValueError naming the public argument (or the primitive)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import certify
from _badinput import check, params, unique_ids

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
X = RNG.uniform(0.1, 0.9, (5, 4)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1])


def f(x):
    return jax.nn.relu(x) @ W


def nan_f(x):
    return f(x) * jnp.nan


def tanh_f(x):
    return jnp.tanh(x) @ W


def square_f(x):
    return (x * x) @ W


def min_f(x):
    return jnp.minimum(x, 0.5) @ W


B, M, A = certify.bounds, certify.margin_bounds, certify.certified_accuracy

CASES = [
    ("bounds negative eps", lambda: B(f, X, eps=-0.1), ValueError, "eps"),
    ("bounds nan eps", lambda: B(f, X, eps=np.nan), ValueError, "eps"),
    ("bounds vector eps", lambda: B(f, X, eps=[0.1, 0.2]), ValueError, "eps"),
    ("bounds l1 norm", lambda: B(f, X, eps=0.1, norm="l1"), ValueError, "norm"),
    ("bounds unknown norm", lambda: B(f, X, eps=0.1, norm="l3x"), ValueError, "norm"),
    ("bounds norm None", lambda: B(f, X, eps=0.1, norm=None), ValueError, "norm"),
    ("bounds x outside input box", lambda: B(f, X + 1.0, eps=0.1), ValueError, "input_bounds"),
    ("bounds x below input box", lambda: B(f, X, eps=0.1, input_bounds=(0.5, 1.0)), ValueError, "input_bounds"),
    ("bounds reversed box", lambda: B(f, X, eps=0.1, input_bounds=(1.0, 0.0)), ValueError, "input_bounds"),
    ("bounds nan model", lambda: B(nan_f, X, eps=0.1, method="ibp"), ValueError, "logits_fn"),
    ("bounds tanh model", lambda: B(tanh_f, X, eps=0.1), ValueError, "logits_fn"),
    ("bounds product of inputs", lambda: B(square_f, X, eps=0.1), ValueError, "logits_fn"),
    ("bounds min only in IBP", lambda: B(min_f, X, eps=0.1, method="crown"), ValueError, "logits_fn"),
    ("bounds crown-ibp not for logits", lambda: B(f, X, eps=0.1, method="crown-ibp"), ValueError, "method"),
    ("bounds unknown method", lambda: B(f, X, eps=0.1, method="lp"), ValueError, "method"),
    ("bounds empty", lambda: B(f, X[:0], eps=0.1), ValueError, "x"),
    ("bounds nan x", lambda: B(f, X * np.nan, eps=0.1), ValueError, "x"),
    ("bounds 1-D x", lambda: B(f, X[0], eps=0.1), ValueError, "x"),
    ("bounds not callable", lambda: B("model", X, eps=0.1), ValueError, "logits_fn"),
    ("bounds zero block", lambda: B(f, X, eps=0.1, block_size=0), ValueError, "block_size"),
    ("bounds negative steps", lambda: B(f, X, eps=0.1, method="alpha-crown", steps=-1), ValueError, "steps"),
    ("bounds float steps", lambda: B(f, X, eps=0.1, method="alpha-crown", steps=2.5), ValueError, "steps"),
    ("bounds progress text", lambda: B(f, X, eps=0.1, progress="yes"), ValueError, "progress"),
    ("margin_bounds short labels", lambda: M(f, X, Y[:2], eps=0.1), ValueError, "y"),
    ("margin_bounds label out of range", lambda: M(f, X, Y + 3, eps=0.1), ValueError, "y"),
    ("margin_bounds negative eps", lambda: M(f, X, Y, eps=-1.0), ValueError, "eps"),
    ("margin_bounds nan model", lambda: M(nan_f, X, Y, eps=0.1), ValueError, "logits_fn"),
    ("margin_bounds empty", lambda: M(f, X[:0], Y[:0], eps=0.1), ValueError, "x"),
    ("certified_accuracy linf spelled wrong", lambda: A(f, X, Y, eps=0.1, norm="max"), ValueError, "norm"),
    ("certified_accuracy x outside box", lambda: A(f, -X, Y, eps=0.1), ValueError, "input_bounds"),
    ("certified_accuracy nan model", lambda: A(nan_f, X, Y, eps=0.1), ValueError, "logits_fn"),
    ("certified_accuracy empty", lambda: A(f, X[:0], Y[:0], eps=0.1), ValueError, "x"),
]


def test_unique_ids():
    assert unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)


@pytest.mark.parametrize("fn, prim", [(tanh_f, "tanh"), (square_f, "mul")])
def test_unsupported_primitive_named(fn, prim):
    with pytest.raises(ValueError, match=f"'{prim}'"):
        certify.bounds(fn, X, eps=0.1, method="ibp")
    with pytest.raises(ValueError, match=f"'{prim}'"):
        certify.margin_lower(fn, jnp.asarray(X), jnp.asarray(Y), eps=0.1)
