"""Bad inputs to jaxbound.training: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import attacks, models, training
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
X = np.linspace(0, 1, 8 * 16, dtype=np.float32).reshape(8, 4, 4, 1)
Y = np.arange(8) % 2
MLP = models.create("mlp", num_classes=2, hidden=(4,))
LIN = jnp.linspace(-1, 1, 16 * 2, dtype=jnp.float32).reshape(16, 2)


def f(x):
    return x.reshape(x.shape[0], -1) @ LIN


def nan_f(x):
    return f(x) * jnp.nan


def train(**kw):
    base = dict(key=KEY, epochs=1, batch_size=4, progress=False)
    base.update(kw)
    model = base.pop("model", MLP)
    data = base.pop("data", (X, Y))
    return training.train(model, data, **base)


CASES = [
    ("TrainConfig fgsm_alpha 0", lambda: training.TrainConfig(fgsm_alpha=0.0), ValueError, "fgsm_alpha"),
    ("TrainConfig warmup_steps negative", lambda: training.TrainConfig(warmup_steps=-1), ValueError,
     "warmup_steps"),
    ("TrainConfig ramp_steps float", lambda: training.TrainConfig(ramp_steps=2.5), ValueError, "ramp_steps"),
    ("TrainConfig kappa_end above 1", lambda: training.TrainConfig(kappa_end=1.5), ValueError, "kappa_end"),
    ("TrainConfig kappa_start nan", lambda: training.TrainConfig(kappa_start=float("nan")), ValueError,
     "kappa_start"),
    ("TrainConfig ibp without eps", lambda: training.TrainConfig(recipe="ibp"), ValueError, "eps"),
    ("TrainConfig fgsm_rs without eps", lambda: training.TrainConfig(recipe="fgsm_rs"), ValueError, "eps"),
    ("TrainConfig ibp l1", lambda: training.train_config(recipe="ibp", eps=0.1, norm="l1"), ValueError, "norm"),
    ("TrainConfig crown_ibp eps_warmup", lambda: training.train_config(recipe="crown_ibp", eps=0.1, norm="linf",
                                                                        eps_warmup=5), ValueError, "eps_warmup"),
    ("TrainConfig schedule unknown", lambda: training.TrainConfig(schedule="triangle"), ValueError, "schedule"),
    ("TrainConfig epochs 0", lambda: training.TrainConfig(epochs=0), ValueError, "epochs"),
    ("TrainConfig epochs float", lambda: training.TrainConfig(epochs=1.5), ValueError, "epochs"),
    ("TrainConfig recipe", lambda: training.TrainConfig(recipe="adversarial"), ValueError, "recipe"),
    ("TrainConfig batch 0", lambda: training.TrainConfig(batch_size=0), ValueError, "batch_size"),
    ("TrainConfig optimizer", lambda: training.TrainConfig(optimizer="rmsprop"), ValueError, "optimizer"),
    ("TrainConfig lr 0", lambda: training.TrainConfig(learning_rate=0.0), ValueError, "learning_rate"),
    ("TrainConfig lr nan", lambda: training.TrainConfig(learning_rate=float("nan")), ValueError, "learning_rate"),
    ("TrainConfig momentum 1", lambda: training.TrainConfig(momentum=1.0), ValueError, "momentum"),
    ("TrainConfig weight_decay negative", lambda: training.TrainConfig(weight_decay=-1.0), ValueError,
     "weight_decay"),
    ("TrainConfig schedule", lambda: training.TrainConfig(schedule="linear"), ValueError, "schedule"),
    ("TrainConfig pgd without attack", lambda: training.TrainConfig(recipe="pgd"), ValueError, "eps"),
    ("TrainConfig attack restarts", lambda: training.TrainConfig(
        recipe="pgd", attack=attacks.AttackConfig(norm="linf", eps=0.1, restarts=2)), ValueError, "attack"),
    ("TrainConfig eps_warmup negative", lambda: training.TrainConfig(eps_warmup=-1), ValueError, "eps_warmup"),
    ("TrainConfig beta negative", lambda: training.TrainConfig(beta=-1.0), ValueError, "beta"),
    ("TrainConfig gradient_mode", lambda: training.TrainConfig(gradient_mode="auto"), ValueError, "gradient_mode"),
    ("TrainConfig fd_step 0", lambda: training.TrainConfig(fd_step=0.0), ValueError, "fd_step"),
    ("TrainConfig unknown field", lambda: training.train_config(epoch=3), TypeError, "epoch"),
    ("train epochs 0", lambda: train(epochs=0), ValueError, "epochs"),
    ("train bad key", lambda: train(key=0), ValueError, "key"),
    ("train unknown model name", lambda: train(model="resnet999"), ValueError, "model"),
    ("train model not a module", lambda: train(model=3), ValueError, "model"),
    ("train pixels outside", lambda: train(data=(X * 2, Y)), ValueError, "train_data"),
    ("train nan pixels", lambda: train(data=(X * np.nan, Y)), ValueError, "train_data"),
    ("train short labels", lambda: train(data=(X, Y[:3])), ValueError, "train_data"),
    ("train data text", lambda: train(data="digits"), ValueError, "train_data"),
    ("train batch above n", lambda: train(batch_size=9), ValueError, "batch_size"),
    ("train progress text", lambda: train(progress="yes"), ValueError, "progress"),
    ("train soft_labels wrong recipe", lambda: train(soft_labels=np.full((8, 2), 0.5)), ValueError, "soft_labels"),
    ("train soft_labels not rows", lambda: train(recipe="soft_labels", soft_labels=np.full((8, 2), 0.7)),
     ValueError, "soft_labels"),
    ("train eval labels out of range", lambda: train(eval_data=(X, Y + 5)), ValueError, "eval_data"),
    ("train checkpoint_dir of another run", lambda: _other_run_checkpoint(), ValueError, "checkpoint_dir"),
    ("loss_gradient_norm mode", lambda: training.loss_gradient_norm(f, X, Y, norm="l2", mode="auto"), ValueError,
     "mode"),
    ("loss_gradient_norm fd_step 0", lambda: training.loss_gradient_norm(f, X, Y, norm="l2", mode="fd",
                                                                         fd_step=0.0), ValueError, "fd_step"),
    ("loss_gradient_norm norm", lambda: training.loss_gradient_norm(f, X, Y, norm="l5"), ValueError, "norm"),
    ("loss_gradient_norm labels", lambda: training.loss_gradient_norm(f, X, Y + 2, norm="l2"), ValueError, "y"),
    ("loss_gradient_norm not callable", lambda: training.loss_gradient_norm(None, X, Y, norm="l2"), ValueError,
     "logits_fn"),
    ("loss_gradient_norm nan model", lambda: training.loss_gradient_norm(nan_f, X, Y, norm="l2"), ValueError,
     "logits_fn"),
    ("loss_gradient_norm empty", lambda: training.loss_gradient_norm(f, X[:0], Y[:0], norm="l2"), ValueError, "x"),
]


def _other_run_checkpoint():
    import tempfile

    ck = tempfile.mkdtemp(prefix="jaxbound-bi-")
    train(checkpoint_dir=ck, key=jax.random.key(1))
    train(checkpoint_dir=ck, key=jax.random.key(2))


def test_enough_distinct_cases():
    assert len(CASES) >= 30 and unique_ids(CASES)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)
