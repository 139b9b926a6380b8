"""Bad inputs to jaxbound.generative: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import generative as G
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
XI = np.linspace(0, 1, 8 * 16, dtype=np.float32).reshape(8, 4, 4, 1)
YI = np.arange(8) % 2


def gen(z, y):
    """A tiny conditional generator: latent 3 -> 4x4x1 images in [0, 1]."""
    return jax.nn.sigmoid(jnp.tile(z[:, :1], (1, 16)) + y[:, None]).reshape(-1, 4, 4, 1)


def nan_gen(z, y):
    return gen(z, y) * jnp.nan


def clf(x):
    return jnp.stack([x.reshape(x.shape[0], -1).mean(1), 1 - x.reshape(x.shape[0], -1).mean(1)], 1)


def sample(**kw):
    base = dict(n=4, key=KEY, num_classes=2, latent_dim=3)
    base.update(kw)
    return G.sample_dataset(base.pop("g", gen), **base)


def lipschitz(**kw):
    base = dict(key=KEY, r=1.0, n_latents=2, n_neighbors=2, latent_dim=3, grad_steps=1)
    base.update(kw)
    y = base.pop("y", np.array([0, 1]))
    return G.local_lipschitz(base.pop("g", gen), y, **base)


CASES = [
    ("train_acgan bad key", lambda: G.train_acgan((XI, YI), key=0, epochs=1, batch_size=4), ValueError, "key"),
    ("train_acgan pixels outside", lambda: G.train_acgan((XI * 2, YI), key=KEY, epochs=1, batch_size=4),
     ValueError, "data"),
    ("train_acgan nan pixels", lambda: G.train_acgan((XI * np.nan, YI), key=KEY, epochs=1, batch_size=4),
     ValueError, "data"),
    ("train_acgan short labels", lambda: G.train_acgan((XI, YI[:3]), key=KEY, epochs=1, batch_size=4),
     ValueError, "data"),
    ("train_acgan batch too big", lambda: G.train_acgan((XI, YI), key=KEY, epochs=1, batch_size=100), ValueError,
     "batch_size"),
    ("train_acgan epochs 0", lambda: G.train_acgan((XI, YI), key=KEY, epochs=0, batch_size=4), ValueError,
     "epochs"),
    ("train_acgan lr 0", lambda: G.train_acgan((XI, YI), key=KEY, epochs=1, batch_size=4, learning_rate=0.0),
     ValueError, "learning_rate"),
    ("train_acgan checkpoint_every 0", lambda: G.train_acgan((XI, YI), key=KEY, epochs=1, batch_size=4,
                                                             checkpoint_every=0), ValueError, "checkpoint_every"),
    ("train_acgan data text", lambda: G.train_acgan("mnist", key=KEY, epochs=1, batch_size=4), ValueError, "data"),
    ("load_acgan missing", lambda: G.load_acgan("/nonexistent/gan"), ValueError, "checkpoint_dir"),
    ("load_acgan not a path", lambda: G.load_acgan(None), TypeError, "checkpoint_dir"),
    ("checkpoint_info not a path", lambda: G.checkpoint_info(3.0), TypeError, "checkpoint_dir"),
    ("conv4x4_s2 3-D x", lambda: G.conv4x4_s2(jnp.zeros((4, 4, 1)), jnp.zeros((4, 4, 1, 2))), ValueError, "x"),
    ("deconv4x4_s2 kernel size", lambda: G.deconv4x4_s2(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 2))),
     ValueError, "w"),
    ("init_acgan bad key", lambda: G.init_acgan(key=1), ValueError, "key"),
    ("init_acgan latent 0", lambda: G.init_acgan(key=KEY, latent_dim=0), ValueError, "latent_dim"),
    ("init_acgan classes 0", lambda: G.init_acgan(key=KEY, num_classes=0), ValueError, "num_classes"),
    ("init_acgan image_shape odd", lambda: G.init_acgan(key=KEY, image_shape=(27, 27, 1)), ValueError,
     "image_shape"),
    ("init_acgan image_shape text", lambda: G.init_acgan(key=KEY, image_shape="28x28"), ValueError,
     "image_shape"),
    ("sample_dataset n negative", lambda: sample(n=-1), ValueError, "n"),
    ("sample_dataset bad key", lambda: sample(key=3), ValueError, "key"),
    ("sample_dataset priors not summing", lambda: sample(p=[0.3, 0.3]), ValueError, "p"),
    ("sample_dataset negative prior", lambda: sample(p=[1.5, -0.5]), ValueError, "p"),
    ("sample_dataset priors wrong length", lambda: sample(p=[1.0]), ValueError, "p"),
    ("sample_dataset nan generator", lambda: sample(g=nan_gen), ValueError, "g"),
    ("sample_dataset not callable", lambda: sample(g="acgan"), ValueError, "g"),
    ("sample_dataset batch 0", lambda: sample(batch_size=0), ValueError, "batch_size"),
    ("local_lipschitz r 0", lambda: lipschitz(r=0.0), ValueError, "r"),
    ("local_lipschitz n_latents 0", lambda: lipschitz(n_latents=0), ValueError, "n_latents"),
    ("local_lipschitz directions", lambda: lipschitz(directions="cube"), ValueError, "directions"),
    ("local_lipschitz deltas above 1", lambda: lipschitz(deltas=(1.5,)), ValueError, "deltas"),
    ("local_lipschitz float labels", lambda: lipschitz(y=np.array([0.5])), ValueError, "y"),
    ("adv_risk risk above 1", lambda: G.adv_risk_lower_bound([1.5], eps=0.1, L=1.0, p=[1.0]), ValueError, "risk"),
    ("adv_risk negative eps", lambda: G.adv_risk_lower_bound([0.1], eps=-0.1, L=1.0, p=[1.0]), ValueError, "eps"),
    ("adv_risk L zero", lambda: G.adv_risk_lower_bound([0.1], eps=0.1, L=0.0, p=[1.0]), ValueError, "L"),
    ("adv_risk p not summing", lambda: G.adv_risk_lower_bound([0.1, 0.1], eps=0.1, L=1.0, p=[0.2, 0.2]),
     ValueError, "p"),
    ("adv_risk delta 1", lambda: G.adv_risk_lower_bound([0.1], eps=0.1, L=1.0, p=[1.0], delta=1.0), ValueError,
     "delta"),
    ("intrinsic alpha above 1", lambda: G.intrinsic_robustness_bound(eps=0.1, alpha=1.5, L=1.0), ValueError,
     "alpha"),
    ("intrinsic family", lambda: G.intrinsic_robustness_bound(eps=0.1, alpha=0.1, L=1.0, family="F_beta"),
     ValueError, "family"),
    ("in_distribution eps negative", lambda: G.in_distribution_attack(clf, gen, XI[:2], YI[:2], key=KEY, eps=-1.0,
                                                                      latent_dim=3), ValueError, "eps"),
    ("in_distribution nan x", lambda: G.in_distribution_attack(clf, gen, XI[:2] * np.nan, YI[:2], key=KEY, eps=0.1,
                                                               latent_dim=3), ValueError, "x"),
    ("in_distribution steps 0", lambda: G.in_distribution_attack(clf, gen, XI[:2], YI[:2], key=KEY, eps=0.1,
                                                                 latent_dim=3, steps=0), ValueError, "steps"),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
