"""Auxiliary-classifier GAN (Odena et al. 2017) for 28x28 images, in Flax.

Private part of :mod:`jaxbound.generative` (the public names are re-exported
there). The architecture is the MNIST ACGAN of Zhang et al. (2020, §5.1):

* generator: ``concat(z in R^latent_dim, one_hot(y))`` -> Dense 1024, BN, ReLU
  -> Dense ``128 * (H/4) * (W/4)``, BN, ReLU -> ConvTranspose 64 (4x4, stride 2,
  padding 1), BN, ReLU -> ConvTranspose ``C`` (4x4, stride 2, padding 1) ->
  ``tanh`` (pixels in ``[-1, 1]``);
* discriminator: Conv 64 (4x4, stride 2, padding 1), LeakyReLU 0.2 -> Conv 128
  (same), BN, LeakyReLU -> Dense 1024, BN, LeakyReLU -> a real/fake logit and
  ``num_classes`` class logits.

Weights start from ``N(0, 0.02)`` (BN scales from ``N(1, 0.02)``), biases at 0.
Training minimises, per step, the discriminator loss ``BCE(real) + CE(real) +
BCE(fake) + CE(fake)`` and then the generator loss ``BCE(fake -> real) +
CE(fake)`` with Adam (``2e-4``, ``b1 = 0.5``, ``b2 = 0.999``), batch 64, images
scaled to ``[-1, 1]``. Batch norm uses batch statistics while training and
running averages (momentum 0.9) when sampling, so the trained generator treats
examples independently.

References:
  Odena, Olah, Shlens. "Conditional image synthesis with auxiliary classifier
  GANs." ICML 2017, arXiv:1610.09585.
  Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of image
  distributions using conditional generative models." AISTATS 2020,
  arXiv:2003.00378.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxbound import _checks, _engine
from jaxbound._io import atomic_write_bytes, fingerprint, to_jsonable

_INIT = nn.initializers.normal(0.02)
_CKPT_NAME = "acgan.msgpack"


# ---------------------------------------------------------------------------
# 4x4 / stride-2 / padding-1 convolutions as im2col matrix products
# ---------------------------------------------------------------------------
#
# XLA's CPU backend differentiates strided and transposed convolutions on a
# slow path (a Flax ACGAN step with nn.Conv / nn.ConvTranspose took ~2 s
# here). Both layers are written exactly as gathers of shifted slices followed
# by one matrix product (whose gradients are again slices, pads and matrix
# products):
#
# * strided conv, out[i] = sum_k in[2i - 1 + k] w[k]: im2col over the 16 taps;
# * transposed conv, out[2i + a] = sum_j in[j] w[2i + a + 1 - 2j]: output
#   phase a in {0, 1} reads the inputs i + di through tap k = a + 1 - 2 di,
#   i.e. (di, k) in {(0, 1), (-1, 3)} for a = 0 and {(0, 2), (1, 0)} for
#   a = 1; each of the four output phases is one matrix product over its four
#   taps.
#
# With few output channels (the generator's last layer, 64 -> 1) the phase
# products are matrix-vector products over a 4x-replicated input, which XLA
# runs far below its GEMM rate (53 ms forward for a batch of 64 here, against
# 1.5 ms for lax's own transposed convolution, whose gradient is also fast at
# this width: 9 ms against 61 ms). Layers with at most ``_LAX_MAX_COUT``
# output channels therefore use ``lax.conv_general_dilated``.

_PHASE_TAPS = {0: ((0, 1), (-1, 3)), 1: ((0, 2), (1, 0))}
_LAX_MAX_COUT = 8


def _check_conv_args(x, w) -> None:
    """``x [n, H, W, Cin]`` and ``w [4, 4, Cin, Cout]`` arrays (errors name the argument)."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x: expected an array shaped [n, H, W, Cin], got {getattr(x, 'shape', type(x).__name__)}")
    if getattr(w, "ndim", None) != 4 or tuple(w.shape[:2]) != (4, 4) or w.shape[2] != x.shape[3]:
        raise ValueError(f"w: expected a kernel shaped [4, 4, {x.shape[3]}, Cout], "
                         f"got {getattr(w, 'shape', type(w).__name__)}")


def deconv4x4_s2(x, w):
    """Transposed convolution, kernel 4, stride 2, padding 1 (PyTorch ``ConvTranspose2d(k=4, s=2, p=1)``).

    Args:
      x: ``[n, H, W, Cin]``.
      w: ``[4, 4, Cin, Cout]``; ``out[2i+a, 2j+b] = sum in[i', j'] w[2i+a+1-2i', 2j+b+1-2j']``.

    Returns:
      ``[n, 2H, 2W, Cout]``.
    """
    _check_conv_args(x, w)
    n, h, wd, _ = x.shape
    cout = w.shape[3]
    if cout <= _LAX_MAX_COUT:  # transposed conv = input dilated by 2, padded by 4 - 1 - 1, flipped kernel
        return jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for a in range(2):
        cols = []
        for b in range(2):
            taps = [(di, ki, dj, kj) for di, ki in _PHASE_TAPS[a] for dj, kj in _PHASE_TAPS[b]]
            patch = jnp.concatenate([xp[:, 1 + di:1 + di + h, 1 + dj:1 + dj + wd, :] for di, _, dj, _ in taps], -1)
            kernel = jnp.concatenate([w[ki, kj] for _, ki, _, kj in taps], 0)
            cols.append(patch @ kernel)
        rows.append(jnp.stack(cols, 3))  # [n, h, w, 2 (b), cout]
    return jnp.stack(rows, 2).reshape(n, 2 * h, 2 * wd, cout)  # [n, h, 2 (a), w, 2 (b), cout]


def conv4x4_s2(x, w):
    """Convolution, kernel 4, stride 2, padding 1 (PyTorch ``Conv2d(k=4, s=2, p=1)``, cross-correlation).

    Args:
      x: ``[n, H, W, Cin]`` with even ``H, W``.
      w: ``[4, 4, Cin, Cout]``; ``out[i, j] = sum w[kh, kw] in[2i-1+kh, 2j-1+kw]``.

    Returns:
      ``[n, H/2, W/2, Cout]``.
    """
    _check_conv_args(x, w)
    n, h, wd, cin = x.shape
    ho, wo = h // 2, wd // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, kh:kh + 2 * ho:2, kw:kw + 2 * wo:2, :] for kh in range(4) for kw in range(4)], -1)
    return cols @ w.reshape(16 * cin, w.shape[3])


class _Conv4S2(nn.Module):
    features: int
    transpose: bool = False

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", _INIT, (4, 4, x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        f = deconv4x4_s2 if self.transpose else conv4x4_s2
        return f(x, w.astype(x.dtype)) + b.astype(x.dtype)


def _bn_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _bn(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init,
                        name=name)


class ACGANGenerator(nn.Module):
    """ACGAN generator ``(z [n, latent_dim], y [n]) -> images [n, H, W, C]`` in ``[-1, 1]`` (tanh).

    Attributes:
      latent_dim: dimension ``d`` of the Gaussian latent (100 in the paper).
      num_classes: number of classes ``K``.
      image_shape: ``(H, W, C)`` with ``H`` and ``W`` divisible by 4.
    """

    latent_dim: int = 100
    num_classes: int = 10
    image_shape: tuple = (28, 28, 1)

    @nn.compact
    def __call__(self, z, y, train: bool = False):
        h_img, w_img, c_img = self.image_shape
        onehot = jax.nn.one_hot(y, self.num_classes, dtype=z.dtype)
        h = jnp.concatenate([z, onehot], axis=-1)
        h = nn.relu(_bn(train, "bn1")(nn.Dense(1024, kernel_init=_INIT, name="fc1")(h)))
        h = nn.Dense(128 * (h_img // 4) * (w_img // 4), kernel_init=_INIT, name="fc2")(h)
        h = nn.relu(_bn(train, "bn2")(h))
        h = h.reshape(h.shape[0], h_img // 4, w_img // 4, 128)
        h = _Conv4S2(64, transpose=True, name="deconv1")(h)
        h = nn.relu(_bn(train, "bn3")(h))
        h = _Conv4S2(c_img, transpose=True, name="deconv2")(h)
        return jnp.tanh(h)


class ACGANDiscriminator(nn.Module):
    """ACGAN discriminator ``images [n, H, W, C] in [-1, 1] -> (real/fake logit [n], class logits [n, K])``."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.leaky_relu(_Conv4S2(64, name="conv1")(x), 0.2)
        h = _Conv4S2(128, name="conv2")(h)
        h = nn.leaky_relu(_bn(train, "bn2")(h), 0.2)
        h = h.reshape(h.shape[0], -1)
        h = nn.leaky_relu(_bn(train, "bn3")(nn.Dense(1024, kernel_init=_INIT, name="fc1")(h)), 0.2)
        d = nn.Dense(1, kernel_init=_INIT, name="dc")(h)[:, 0]
        c = nn.Dense(self.num_classes, kernel_init=_INIT, name="cl")(h)
        return d, c


def _generator_raw(v, z, y, *, latent_dim: int, num_classes: int, image_shape: tuple):
    """Sampling-mode generator output in ``[-1, 1]`` for one generator configuration."""
    return ACGANGenerator(latent_dim, num_classes, image_shape).apply(v, z, y, train=False)


def _generator_apply(latent_dim: int, num_classes: int, image_shape: tuple):
    """One jitted sampling-mode apply per generator configuration (the engine's compile cache), shared by every
    :class:`ACGAN`."""
    static = dict(latent_dim=latent_dim, num_classes=num_classes, image_shape=image_shape)
    return _engine.compiled(_generator_raw, static, n_batch=3, n_rep=0, devices=jax.local_devices()[:1])


@dataclasses.dataclass(frozen=True, eq=False)
class ACGAN:
    """A trained ACGAN generator as the conditional generator ``g(z, y) -> x`` of Zhang et al.

    Calling the object maps ``z [n, latent_dim]`` and labels ``y [n]`` to images
    ``[n, H, W, C]`` in ``[0, 1]`` (``(tanh + 1) / 2``, the classifier's pixel
    space); :meth:`raw` gives the ``[-1, 1]`` tanh output the authors measured
    on. Batch norm runs on its running averages, so examples are independent.
    Works on concrete and traced inputs (inside ``jax.jit``, ``jax.grad``).

    Attributes:
      generator: the :class:`ACGANGenerator` module.
      variables: ``{"params": ..., "batch_stats": ...}``.
      latent_dim: ``d``.
      num_classes: ``K``.
      image_shape: ``(H, W, C)``.
    """

    generator: ACGANGenerator
    variables: Any
    latent_dim: int
    num_classes: int
    image_shape: tuple

    def raw(self, z, y):
        """Generator output in ``[-1, 1]``: ``[n, H, W, C]``."""
        g = self.generator
        fn = _generator_apply(int(g.latent_dim), int(g.num_classes), tuple(int(v) for v in g.image_shape))
        return fn(self.variables, jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.int32))

    def __call__(self, z, y):
        """Images ``[n, H, W, C]`` in ``[0, 1]``."""
        return (self.raw(z, y) + 1.0) * 0.5

    def __hash__(self):
        return id(self)

    def to_dict(self) -> dict:
        """JSON summary (no weights)."""
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self.variables["params"]))
        return {"model": "acgan", "latent_dim": self.latent_dim, "num_classes": self.num_classes,
                "image_shape": list(self.image_shape), "generator_parameters": n_params}


class ACGANTrainResult(NamedTuple):
    """Outcome of :func:`train_acgan`.

    Attributes:
      gan: the trained :class:`ACGAN` (generator ``g(z, y)``).
      discriminator: the discriminator module.
      d_variables: discriminator ``{"params", "batch_stats"}``.
      history: per-epoch dicts (epoch, step, d_loss, g_loss, real_class_accuracy,
        fake_class_accuracy, d_real, d_fake, seconds); a partial last epoch when
        training stopped at ``max_steps``.
      steps: optimisation steps done.
      config: the training settings.
    """

    gan: ACGAN
    discriminator: ACGANDiscriminator
    d_variables: Any
    history: list
    steps: int
    config: dict

    def to_dict(self) -> dict:
        """JSON summary: config, history, model summary (no weights)."""
        return {"config": to_jsonable(self.config), "history": to_jsonable(self.history), "steps": self.steps,
                "gan": self.gan.to_dict()}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _bce_logits(logit, target: float):
    """Mean sigmoid cross-entropy of real/fake logits against a constant target (optax's loss)."""
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logit, jnp.full_like(logit, target)))


def _ce(logits, y):
    """Mean integer-label softmax cross-entropy (optax's loss)."""
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))


def _acgan_step(state, x_real, y, key, *, latent_dim: int, num_classes: int, image_shape: tuple,
                learning_rate: float, b1: float, b2: float, batch: int):
    """One discriminator-then-generator Adam step; returns the new state and the step's statistics."""
    gen = ACGANGenerator(latent_dim, num_classes, image_shape)
    disc = ACGANDiscriminator(num_classes)
    opt_g = optax.adam(learning_rate, b1=b1, b2=b2)
    opt_d = optax.adam(learning_rate, b1=b1, b2=b2)

    def d_apply(dp, ds, x):
        (d, c), upd = disc.apply({"params": dp, "batch_stats": ds}, x, train=True, mutable=["batch_stats"])
        return d, c, upd["batch_stats"]

    def g_apply(gp, gs, z, y):
        x, upd = gen.apply({"params": gp, "batch_stats": gs}, z, y, train=True, mutable=["batch_stats"])
        return x, upd["batch_stats"]

    z = jax.random.normal(key, (batch, latent_dim), jnp.float32)

    # Discriminator update (real and fake batches through separate BN calls).
    def d_loss_fn(dp):
        d_real, c_real, ds = d_apply(dp, state["d_stats"], x_real)
        x_fake, gs = g_apply(state["g_params"], state["g_stats"], z, y)
        d_fake, c_fake, ds = d_apply(dp, ds, jax.lax.stop_gradient(x_fake))
        loss = _bce_logits(d_real, 1.0) + _ce(c_real, y) + _bce_logits(d_fake, 0.0) + _ce(c_fake, y)
        aux = dict(ds=ds, gs=gs, acc_real=jnp.mean(jnp.argmax(c_real, -1) == y),
                   d_real=jnp.mean(jax.nn.sigmoid(d_real)), d_fake=jnp.mean(jax.nn.sigmoid(d_fake)))
        return loss, aux

    (d_loss, aux), gd = jax.value_and_grad(d_loss_fn, has_aux=True)(state["d_params"])
    upd, d_opt = opt_d.update(gd, state["d_opt"], state["d_params"])
    d_params = optax.apply_updates(state["d_params"], upd)

    # Generator update against the updated discriminator.
    def g_loss_fn(gp):
        x_fake, gs = g_apply(gp, aux["gs"], z, y)
        d_fake, c_fake, ds = d_apply(d_params, aux["ds"], x_fake)
        loss = _bce_logits(d_fake, 1.0) + _ce(c_fake, y)
        return loss, dict(gs=gs, ds=ds, acc_fake=jnp.mean(jnp.argmax(c_fake, -1) == y))

    (g_loss, gaux), gg = jax.value_and_grad(g_loss_fn, has_aux=True)(state["g_params"])
    upd, g_opt = opt_g.update(gg, state["g_opt"], state["g_params"])
    g_params = optax.apply_updates(state["g_params"], upd)
    new = dict(g_params=g_params, g_stats=gaux["gs"], d_params=d_params, d_stats=gaux["ds"], g_opt=g_opt,
               d_opt=d_opt)
    stats = jnp.stack([d_loss, g_loss, aux["acc_real"], gaux["acc_fake"], aux["d_real"], aux["d_fake"]])
    return new, stats


def _make_step(latent_dim: int, num_classes: int, image_shape: tuple, learning_rate: float, b1: float, b2: float,
               batch: int):
    """The jitted step for one configuration, from the engine's compile cache (reruns and resumes compile once)."""
    static = dict(latent_dim=latent_dim, num_classes=num_classes, image_shape=image_shape,
                  learning_rate=learning_rate, b1=b1, b2=b2, batch=batch)
    return _engine.compiled(_acgan_step, static, n_batch=4, n_rep=0, devices=jax.local_devices()[:1])


_STAT_NAMES = ("d_loss", "g_loss", "real_class_accuracy", "fake_class_accuracy", "d_real", "d_fake")


def _as_xy(data: Any):
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise ValueError("data: expected a jaxbound.data.Dataset or a tuple (x [n, H, W, C], y [n])")
    x = _checks.check_images(x, "data")
    y = _checks.check_labels(y, "data", n=x.shape[0])
    return np.asarray(x, np.float32), np.asarray(y, np.int64)


def _check_train_settings(data, *, epochs, batch_size, latent_dim, num_classes, learning_rate, b1, b2, max_steps,
                          checkpoint_every, progress):
    """Validated training data ``(x [n, H, W, C], y [n])`` and settings (errors name the argument)."""
    x, y = _as_xy(data)
    n, h, w, _ = x.shape
    if h % 4 or w % 4:
        raise ValueError(f"data: image height and width must be divisible by 4, got {(h, w)}")
    epochs = _checks.check_int(epochs, "epochs", low=1)
    batch_size = _checks.check_int(batch_size, "batch_size", low=2)
    if batch_size > n:
        raise ValueError(f"batch_size: {batch_size} exceeds the {n} training examples")
    latent_dim = _checks.check_int(latent_dim, "latent_dim", low=1)
    if num_classes is None:
        num_classes = int(getattr(data, "num_classes", 0) or int(y.max()) + 1)
    num_classes = _checks.check_int(num_classes, "num_classes", low=2)
    if y.max() >= num_classes:
        raise ValueError(f"data: label {int(y.max())} is out of range for {num_classes} classes")
    learning_rate = _checks.check_scalar(learning_rate, "learning_rate", low=0.0, low_inclusive=False)
    b1 = _checks.check_scalar(b1, "b1", low=0.0, high=1.0, high_inclusive=False)
    b2 = _checks.check_scalar(b2, "b2", low=0.0, high=1.0, high_inclusive=False)
    if max_steps is not None:
        max_steps = _checks.check_int(max_steps, "max_steps", low=0)
    checkpoint_every = _checks.check_int(checkpoint_every, "checkpoint_every", low=1)
    if not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress: expected a bool, got {progress!r}")
    settings = dict(epochs=epochs, batch_size=batch_size, latent_dim=latent_dim, num_classes=num_classes,
                    learning_rate=learning_rate, b1=b1, b2=b2, max_steps=max_steps,
                    checkpoint_every=checkpoint_every)
    return x, y, settings


def _initial_state(key, gen, disc, *, latent_dim, image_shape, learning_rate, b1, b2):
    """Fresh weights, batch statistics and Adam states, and the permutation and step keys."""
    k_init_g, k_init_d, k_perm, k_step = jax.random.split(key, 4)
    gv = gen.init(k_init_g, jnp.zeros((2, latent_dim)), jnp.zeros((2,), jnp.int32), train=False)
    dv = disc.init(k_init_d, jnp.zeros((2,) + tuple(image_shape)), train=False)
    opt_g = optax.adam(learning_rate, b1=b1, b2=b2)
    opt_d = optax.adam(learning_rate, b1=b1, b2=b2)
    state = dict(g_params=gv["params"], g_stats=gv["batch_stats"], d_params=dv["params"],
                 d_stats=dv["batch_stats"], g_opt=opt_g.init(gv["params"]), d_opt=opt_d.init(dv["params"]))
    return state, k_perm, k_step


class _Run:
    """Mutable progress of one training run: state, step, history, running epoch sums and wall time."""

    def __init__(self, state, step, history, acc, seconds_done, ckpt_path, meta):
        self.state, self.step, self.history, self.acc = state, step, history, acc
        self.prev_seconds, self.t0 = float(seconds_done), time.perf_counter()
        self.ckpt_path, self.meta = ckpt_path, meta

    def seconds(self) -> float:
        return self.prev_seconds + time.perf_counter() - self.t0

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        meta = dict(step=self.step, history=self.history, acc=self.acc.tolist(), **self.meta, seconds=self.seconds())
        _save_checkpoint(self.ckpt_path, self.state, meta)

    def record(self, epoch: int, end_epoch: bool) -> None:
        """Write (or replace the partial record of) this epoch's averages into the history."""
        rec = {"epoch": epoch + 1, "step": self.step, "complete": bool(end_epoch)}
        rec.update({k: float(self.acc[i] / max(self.acc[-1], 1)) for i, k in enumerate(_STAT_NAMES)})
        rec["seconds"] = self.seconds()
        if self.history and not self.history[-1].get("complete", True):
            self.history[-1] = rec
        else:
            self.history.append(rec)
        if end_epoch:
            self.acc = np.zeros_like(self.acc)


def _train_steps(run: _Run, step_fn, x_scaled, yi, *, k_perm, k_step, total, spe, batch_size, checkpoint_every,
                 progress):
    """Run steps ``run.step .. total - 1`` (keyed permutation per epoch, latents from ``fold_in(k_step, s)``)."""
    from tqdm.auto import tqdm

    n = x_scaled.shape[0]
    bar = tqdm(total=total, initial=min(run.step, total), desc="acgan", unit="step", disable=not progress)
    perm_epoch, perm = -1, None
    try:
        while run.step < total:
            epoch, it = divmod(run.step, spe)
            if epoch != perm_epoch:
                perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_perm, epoch), n))
                perm_epoch = epoch
            idx = perm[it * batch_size:(it + 1) * batch_size]
            run.state, stats = step_fn(run.state, jnp.asarray(x_scaled[idx]), jnp.asarray(yi[idx]),
                                       jax.random.fold_in(k_step, run.step))
            stats = np.asarray(stats, np.float64)
            run.acc[:-1] += stats
            run.acc[-1] += 1
            run.step += 1
            s = run.step
            bar.update(1)
            if s % 50 == 0:
                bar.set_postfix(d_loss=f"{stats[0]:.3f}", g_loss=f"{stats[1]:.3f}")
            end_epoch = s % spe == 0
            if end_epoch or s == total:
                run.record(epoch, end_epoch)
            if end_epoch or s % checkpoint_every == 0 or s == total:
                run.save()
    except BaseException:
        run.save()
        raise
    finally:
        bar.close()


def train_acgan(
    data: Any,
    *,
    key: Any,
    epochs: int = 25,
    batch_size: int = 64,
    latent_dim: int = 100,
    num_classes: int | None = None,
    learning_rate: float = 2e-4,
    b1: float = 0.5,
    b2: float = 0.999,
    max_steps: int | None = None,
    checkpoint_dir: Any = None,
    checkpoint_every: int = 200,
    progress: bool = True,
) -> ACGANTrainResult:
    """Train the ACGAN of Zhang et al. (2020, §5.1) on labelled images in ``[0, 1]``.

    Each epoch visits ``n // batch_size`` batches of a fresh keyed permutation
    (the last incomplete batch is dropped); step ``s`` draws its latents from
    ``fold_in(key, s)``. With ``checkpoint_dir`` the whole state (weights,
    batch-norm statistics, both Adam states, step, history) is written
    atomically every ``checkpoint_every`` steps and at each epoch end; a rerun
    with the same key, data and settings resumes from it and gives exactly the
    same result as an uninterrupted run (a checkpoint of other settings is
    ignored and overwritten). Raising ``epochs`` or ``max_steps`` on a rerun
    continues training; a checkpoint already past ``max_steps`` is returned
    as it is (``steps`` reports its step count).

    Args:
      data: :class:`jaxbound.data.Dataset` or ``(x [n, H, W, C], y [n])``, pixels
        in ``[0, 1]`` (scaled to ``[-1, 1]`` inside), ``H, W`` divisible by 4.
      key: ``jax.random`` key.
      epochs: passes over the data (the paper: 25).
      batch_size: examples per step (the paper: 64).
      latent_dim: latent dimension (the paper: 100).
      num_classes: classes (default: ``data.num_classes`` or ``max(y) + 1``).
      learning_rate, b1, b2: Adam settings of both networks.
      max_steps: stop after this many steps in total (a reduced budget).
      checkpoint_dir: folder for the resumable checkpoint (``None``: none).
      checkpoint_every: steps between checkpoints.
      progress: show a tqdm bar.

    Returns:
      :class:`ACGANTrainResult`.

    References:
      Odena, Olah, Shlens. "Conditional image synthesis with auxiliary
      classifier GANs." ICML 2017, arXiv:1610.09585.
      Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of
      image distributions using conditional generative models." AISTATS
      2020, arXiv:2003.00378.
    """
    _checks.check_key(key)
    x, y, st = _check_train_settings(data, epochs=epochs, batch_size=batch_size, latent_dim=latent_dim,
                                     num_classes=num_classes, learning_rate=learning_rate, b1=b1, b2=b2,
                                     max_steps=max_steps, checkpoint_every=checkpoint_every, progress=progress)
    n, h, w, c = x.shape
    spe = n // st["batch_size"]
    total = st["epochs"] * spe if st["max_steps"] is None else min(st["epochs"] * spe, st["max_steps"])
    gen = ACGANGenerator(st["latent_dim"], st["num_classes"], (h, w, c))
    disc = ACGANDiscriminator(st["num_classes"])
    state, k_perm, k_step = _initial_state(key, gen, disc, latent_dim=st["latent_dim"], image_shape=(h, w, c),
                                           learning_rate=st["learning_rate"], b1=st["b1"], b2=st["b2"])
    config = dict(model="acgan", n=n, image_shape=[h, w, c], latent_dim=st["latent_dim"],
                  num_classes=st["num_classes"], batch_size=st["batch_size"], learning_rate=st["learning_rate"],
                  b1=st["b1"], b2=st["b2"], steps_per_epoch=spe)
    key_fp = fingerprint(np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                    else key), x[:: max(1, n // 256)], y, n, repr(sorted(config.items())))

    step0, history, acc, seconds_done = 0, [], np.zeros(len(_STAT_NAMES) + 1), 0.0
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / _CKPT_NAME
    if ckpt_path is not None and ckpt_path.is_file():
        loaded = _load_checkpoint(ckpt_path, state)
        if loaded is not None and loaded[1].get("fingerprint") == key_fp:
            state, meta = loaded
            step0, history, acc = int(meta["step"]), list(meta["history"]), np.asarray(meta["acc"], np.float64)
            seconds_done = float(meta.get("seconds", 0.0))

    step_fn = _make_step(st["latent_dim"], st["num_classes"], (h, w, c), st["learning_rate"], st["b1"], st["b2"],
                         st["batch_size"])
    run = _Run(state, step0, history, acc, seconds_done, ckpt_path, dict(fingerprint=key_fp, config=config))
    _train_steps(run, step_fn, x * 2.0 - 1.0, y.astype(np.int32), k_perm=k_perm, k_step=k_step, total=total,
                 spe=spe, batch_size=st["batch_size"], checkpoint_every=st["checkpoint_every"], progress=progress)
    state = run.state
    gan = ACGAN(gen, {"params": state["g_params"], "batch_stats": state["g_stats"]}, st["latent_dim"],
                st["num_classes"], (h, w, c))
    cfg = dict(config, epochs=st["epochs"], max_steps=st["max_steps"])
    return ACGANTrainResult(gan, disc, {"params": state["d_params"], "batch_stats": state["d_stats"]}, run.history,
                            int(run.step), cfg)


def _save_checkpoint(path: Path, state: dict, meta: dict) -> None:
    blob = {"state": jax.device_get(state),
            "meta": np.frombuffer(json.dumps(to_jsonable(meta)).encode(), dtype=np.uint8)}
    atomic_write_bytes(path, serialization.msgpack_serialize(serialization.to_state_dict(blob)))


def _same_layout(a: Any, b: Any) -> bool:
    """Whether two pytrees have the same structure and leaf shapes."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(np.shape(x) == np.shape(y) for x, y in zip(la, lb))


def _load_checkpoint(path: Path, target: dict):
    """``(state, meta)`` of the checkpoint; ``None`` when absent, or (one warning) when damaged or foreign."""
    if not path.exists():
        return None
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        meta = json.loads(bytes(np.asarray(raw["meta"], np.uint8)).decode())
        state = serialization.from_state_dict(target, raw["state"])
        if not isinstance(meta, dict) or not {"fingerprint", "step", "history", "acc"} <= set(meta):
            raise ValueError("no training metadata")
        if not _same_layout(state, target):
            raise ValueError("arrays of another model")
    except Exception as exc:  # noqa: BLE001 - truncated, random or foreign: train from the start, overwrite it
        warnings.warn(f"checkpoint {path} is damaged or foreign ({type(exc).__name__}); training from the start",
                      RuntimeWarning, stacklevel=2)
        return None
    return state, meta


def load_acgan(checkpoint_dir: Any) -> ACGAN:
    """Rebuild the trained :class:`ACGAN` generator from a :func:`train_acgan` checkpoint folder.

    Raises:
      ValueError: ``checkpoint_dir`` holds no readable checkpoint.
    """
    path = _checks.check_path(checkpoint_dir, "checkpoint_dir") / _CKPT_NAME
    if not path.is_file():
        raise ValueError(f"checkpoint_dir: no {_CKPT_NAME} in {str(checkpoint_dir)!r}")
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        meta = json.loads(bytes(np.asarray(raw["meta"], np.uint8)).decode())
        cfg = meta["config"]
        h, w, c = cfg["image_shape"]
        gen = ACGANGenerator(int(cfg["latent_dim"]), int(cfg["num_classes"]), (h, w, c))
        gv = gen.init(jax.random.key(0), jnp.zeros((2, cfg["latent_dim"])), jnp.zeros((2,), jnp.int32), train=False)
        st = raw["state"]
        variables = {"params": serialization.from_state_dict(gv["params"], st["g_params"]),
                     "batch_stats": serialization.from_state_dict(gv["batch_stats"], st["g_stats"])}
        if not _same_layout(variables, {"params": gv["params"], "batch_stats": gv["batch_stats"]}):
            raise ValueError("arrays of another generator")
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"checkpoint_dir: {str(path)!r} is damaged or not a train_acgan checkpoint "
                         f"({type(exc).__name__}: {exc}); delete it and train again") from None
    return ACGAN(gen, variables, int(cfg["latent_dim"]), int(cfg["num_classes"]), (h, w, c))


def checkpoint_info(checkpoint_dir: Any) -> dict | None:
    """The metadata (step, history, config) of a :func:`train_acgan` checkpoint, or ``None``."""
    path = _checks.check_path(checkpoint_dir, "checkpoint_dir") / _CKPT_NAME
    if not path.is_file():
        return None
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        return json.loads(bytes(np.asarray(raw["meta"], np.uint8)).decode())
    except Exception:  # noqa: BLE001
        return None


def acgan_from_params(variables: Any, *, latent_dim: int = 100, num_classes: int = 10,
                      image_shape: Sequence[int] = (28, 28, 1)) -> ACGAN:
    """Wrap generator variables ``{"params", "batch_stats"}`` as an :class:`ACGAN`."""
    shape = tuple(int(v) for v in image_shape)
    return ACGAN(ACGANGenerator(latent_dim, num_classes, shape), variables, latent_dim, num_classes, shape)


def init_acgan(*, key: Any, latent_dim: int = 100, num_classes: int = 10,
               image_shape: Sequence[int] = (28, 28, 1)) -> ACGAN:
    """An untrained :class:`ACGAN` generator (random ``N(0, 0.02)`` weights), for tests and smoke runs.

    References:
      Odena, Olah, Shlens. "Conditional image synthesis with auxiliary
      classifier GANs." ICML 2017, arXiv:1610.09585.
    """
    _checks.check_key(key)
    latent_dim = _checks.check_int(latent_dim, "latent_dim", low=1)
    num_classes = _checks.check_int(num_classes, "num_classes", low=1)
    try:
        shape = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape: expected (H, W, C), got {image_shape!r}") from None
    if len(shape) != 3 or shape[0] % 4 or shape[1] % 4 or min(shape) < 1:
        raise ValueError(f"image_shape: expected (H, W, C) with H, W divisible by 4, got {image_shape!r}")
    gen = ACGANGenerator(latent_dim, num_classes, shape)
    v = gen.init(key, jnp.zeros((2, latent_dim)), jnp.zeros((2,), jnp.int32), train=False)
    return ACGAN(gen, v, latent_dim, num_classes, shape)

