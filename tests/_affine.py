"""A binary affine classifier with closed-form distances to its decision boundary (shared by tests)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DUAL = {"l2": 2, "linf": 1, "l1": np.inf}


class Affine:
    """``logits = [0, w.x + b]`` on points kept at least 0.05 from the boundary.

    ``pred`` are the classifier's labels; ``y`` equals them except at ``flip``
    (label flips create clean errors). ``dist(norm)`` is the exact distance of
    each point to the boundary, ``|w.x + b| / ||w||_*``.
    """

    def __init__(self, d=12, n=10, seed=0, flip=()):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=d).astype(np.float32)
        x = rng.uniform(0.35, 0.65, size=(4 * n, d)).astype(np.float32)
        s0 = x.astype(np.float64) @ self.w
        self.b = np.float32(-np.median(s0))
        s = s0 + self.b
        keep = np.abs(s) > 0.05
        self.x, self.s = x[keep][:n], s[keep][:n]
        self.pred = (self.s > 0).astype(np.int64)
        self.y = self.pred.copy()
        flip = list(flip)
        self.y[flip] = 1 - self.y[flip]
        w, b = jnp.asarray(self.w), jnp.asarray(self.b)

        def f(z):
            t = z.reshape(z.shape[0], -1) @ w + b
            return jnp.stack([jnp.zeros_like(t), t], axis=1)

        self.f = f

    def dist(self, norm):
        return np.abs(self.s) / np.linalg.norm(self.w.astype(np.float64), DUAL[norm])
