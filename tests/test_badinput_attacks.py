"""Bad inputs to the attacks: every one a ``ValueError`` whose message starts with the public argument's name.

Table-driven: ``(function, overrides of the valid call, argument named)``.
Models whose logits are NaN or infinite must raise (naming ``logits_fn``)
instead of being reported as "successfully attacked".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import attacks

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(16, 4)).astype(np.float32))
X = RNG.uniform(0.2, 0.8, size=(6, 4, 4, 1)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 0, 1])
KEY = jax.random.key(0)


def f(z):
    return z.reshape(z.shape[0], -1) @ W


def nan_model(z):
    return f(z) * jnp.nan


def inf_model(z):
    return f(z) + jnp.inf


def nan_away_from_x(z):  # finite at the clean points, NaN once a pixel moves above 0.85
    out = f(z)
    return jnp.where(jnp.any(z.reshape(z.shape[0], -1) > 0.85, axis=1, keepdims=True), jnp.nan, out)


BASE = {
    "apgd": dict(logits_fn=f, x=X, y=Y, key=KEY, norm="linf", eps=0.1, steps=2),
    "square": dict(logits_fn=f, x=X, y=Y, key=KEY, norm="linf", eps=0.1, n_queries=2),
    "fab": dict(logits_fn=f, x=X, y=Y, key=KEY, norm="linf", eps=0.1, steps=2),
    "autoattack": dict(logits_fn=f, x=X, y=Y, key=KEY, norm="linf", eps=0.1, steps=2, n_queries=2,
                       self_checks=False),
    "pgd": dict(logits_fn=f, x=X, y=Y, key=KEY, norm="linf", eps=0.1, steps=2),
    "fgm": dict(logits_fn=f, x=X, y=Y, norm="linf", eps=0.1),
}

CASES = [
    # apgd
    ("apgd", dict(norm="l7"), "norm"),
    ("apgd", dict(norm=3), "norm"),
    ("apgd", dict(eps=0.0), "eps"),
    ("apgd", dict(eps=-0.1), "eps"),
    ("apgd", dict(eps=float("nan")), "eps"),
    ("apgd", dict(eps=[0.1, 0.2]), "eps"),
    ("apgd", dict(steps=0), "steps"),
    ("apgd", dict(steps=2.5), "steps"),
    ("apgd", dict(restarts=0), "restarts"),
    ("apgd", dict(loss="hinge"), "loss"),
    ("apgd", dict(n_targets=0), "n_targets"),
    ("apgd", dict(eot=0), "eot"),
    ("apgd", dict(rho=1.0), "rho"),
    ("apgd", dict(momentum=0.0), "momentum"),
    ("apgd", dict(key=0), "key"),
    ("apgd", dict(y=np.array([0, 1, 2, 3, 4, 1])), "y"),
    ("apgd", dict(y=np.array([0, 1, 2, 3, -1, 1])), "y"),
    ("apgd", dict(y=Y[:3]), "y"),
    ("apgd", dict(y=Y.astype(float)), "y"),
    ("apgd", dict(x=np.where(X > 0.5, np.nan, X)), "x"),
    ("apgd", dict(x=X + 0.5), "x"),
    ("apgd", dict(x=X[0, 0, 0]), "x"),
    ("apgd", dict(bounds=(1.0, 0.0)), "bounds"),
    ("apgd", dict(logits_fn="model"), "logits_fn"),
    ("apgd", dict(logits_fn=lambda z: z.sum()), "logits_fn"),
    ("apgd", dict(batch_size=0), "batch_size"),
    ("apgd", dict(logits_fn=nan_model), "logits_fn"),
    # square
    ("square", dict(n_queries=0), "n_queries"),
    ("square", dict(n_queries=-5), "n_queries"),
    ("square", dict(norm="l1"), "norm"),
    ("square", dict(p_init=0.0), "p_init"),
    ("square", dict(p_init=1.5), "p_init"),
    ("square", dict(eps=float("inf")), "eps"),
    ("square", dict(logits_fn=inf_model), "logits_fn"),
    # fab
    ("fab", dict(targeted="yes"), "targeted"),
    ("fab", dict(steps=0), "steps"),
    ("fab", dict(beta=1.0), "beta"),
    ("fab", dict(eta=0.5), "eta"),
    ("fab", dict(alpha_max=2.0), "alpha_max"),
    ("fab", dict(eps=0.0), "eps"),
    ("fab", dict(logits_fn=nan_model), "logits_fn"),
    # autoattack
    ("autoattack", dict(attacks=["pgd"]), "attacks"),
    ("autoattack", dict(attacks="apgd-ce"), "attacks"),
    ("autoattack", dict(attacks=[]), "attacks"),
    ("autoattack", dict(attacks=["apgd-ce", "apgd-ce"]), "attacks"),
    ("autoattack", dict(attacks=["apgd-ce", 3]), "attacks"),
    ("autoattack", dict(version="plus"), "version"),
    ("autoattack", dict(version="custom"), "attacks"),
    ("autoattack", dict(norm="l1", attacks=["square"]), "attacks"),
    ("autoattack", dict(n_queries=0), "n_queries"),
    ("autoattack", dict(eps=0.0), "eps"),
    ("autoattack", dict(eps=float("nan")), "eps"),
    ("autoattack", dict(y=np.array([0, 1, 2, 3, 9, 1])), "y"),
    ("autoattack", dict(self_checks="yes"), "self_checks"),
    ("autoattack", dict(eot=0), "eot"),
    ("autoattack", dict(steps=0), "steps"),
    ("autoattack", dict(n_targets=0), "n_targets"),
    ("autoattack", dict(key=jax.random.split(KEY, 2)), "key"),
    ("autoattack", dict(logits_fn=nan_model), "logits_fn"),
    ("autoattack", dict(logits_fn=inf_model), "logits_fn"),
    # a NaN model is never "successfully attacked" by fgm or pgd (issue: silent success)
    ("pgd", dict(logits_fn=nan_model), "logits_fn"),
    ("pgd", dict(logits_fn=nan_away_from_x, eps=0.3), "logits_fn"),
    ("fgm", dict(logits_fn=nan_model), "logits_fn"),
    ("fgm", dict(logits_fn=nan_away_from_x, eps=0.3), "logits_fn"),
]


@pytest.mark.parametrize("fn,over,name", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_the_argument(fn, over, name):
    kw = {**BASE[fn], **over}
    func = getattr(attacks, fn)
    args = [kw.pop(a) for a in ("logits_fn", "x", "y")]
    with pytest.raises(ValueError) as err:
        func(*args, **kw)
    assert str(err.value).startswith(name), str(err.value)


def test_table_is_large_enough():
    assert len(CASES) >= 30


def test_autoattack_needs_concrete_inputs():
    with pytest.raises(ValueError, match="^x"):
        jax.jit(lambda x: attacks.autoattack(f, x, jnp.asarray(Y), key=KEY, norm="linf", eps=0.1).robust)(
            jnp.asarray(X))


def test_nan_model_under_jit_is_not_a_success():
    """Traced calls cannot raise on values: the result marks no success and carries NaN logits."""
    r = jax.jit(lambda x: attacks.pgd(nan_model, x, jnp.asarray(Y), key=KEY, norm="linf", eps=0.1, steps=2))(
        jnp.asarray(X))
    assert not np.asarray(r.success).any() and np.isnan(np.asarray(r.logits)).all()
    a = jax.jit(lambda x: attacks.apgd(nan_model, x, jnp.asarray(Y), key=KEY, norm="linf", eps=0.1, steps=2))(
        jnp.asarray(X))
    assert not np.asarray(a.success).any() and np.isnan(np.asarray(a.logits)).all()
