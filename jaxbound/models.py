"""Classifier models used beside the data-dependent limits, and a small registry.

Models are Flax ``linen`` modules that take images ``[n, H, W, C]`` with
pixels in ``[0, 1]`` (the convention of every attack in :mod:`jaxbound.attacks`)
and return logits ``[n, num_classes]``. Any normalisation happens inside the
model, so attacks and bounds always work in pixel space.

Registry: :func:`create` builds a registered model by name,
:func:`available` lists the names and :func:`register` adds one.
:func:`init_params` and :func:`logits_fn` are the two helpers every caller
needs (parameters from a key; the plain ``x -> logits`` function the attacks
take). :func:`build` makes a registered architecture for a dataset (with the
``widen_factor`` rules of :func:`resolve_widen`), :func:`save` writes a trained
model as ``model.json`` + ``model.msgpack`` and :func:`load` reads it back
(:class:`SavedModel`).

Models:

* ``"lenet5"``: :class:`LeNet5`, the MNIST network of Ding et al. (2019,
  App. B.1; the network of Madry et al. 2017): 5x5 conv (32) + ReLU + 2x2 max
  pool, 5x5 conv (64) + ReLU + 2x2 max pool, fully connected 1024 + ReLU,
  fully connected ``num_classes``. ``widen_factor`` multiplies every width
  (Ding et al. §4.3 use 0.125 ... 4).
* ``"mlp"``: :class:`MLP`, fully connected ReLU network on the flattened image.
* ``"smallcnn"``: :class:`SmallCNN`, the seven-layer CNN of Zhang et al.
  (2020, App. B.1; the TRADES MNIST network): 3x3 conv 32, conv 32, 2x2 max
  pool, conv 64, conv 64, max pool, fc 200, fc 200, fc ``num_classes``.
* ``"wong_kolter"``: :class:`WongKolter`, the small network of Wong & Kolter
  (2018) used by Ding et al. (2019, App. B.2): 4x4 conv 16 stride 2, 4x4
  conv 32 stride 2, fc 100, fc ``num_classes``, ReLU, no pooling.
* ``"ibp_small"``, ``"ibp_medium"``: :class:`IBPSmall`, :class:`IBPMedium`,
  the small and medium CNNs of Gowal et al. (2018, Table 1) for interval
  bound propagation training (``VALID`` convolutions, ReLU, no pooling).
* ``"wideresnet"``: :class:`WideResNet`, WRN-``depth``-``widen_factor``
  (Zagoruyko & Komodakis 2016; Ding et al.'s CIFAR-10 model is WRN-28-4)
  with GroupNorm in place of BatchNorm (see the class docstring).

Every model takes ``num_classes`` (default 10) and uses no batch statistics,
so each example is classified independently of the others in its batch (the
attacks and :func:`logits_fn` rely on this).

Convolution lowering (``impl``). XLA's CPU backend runs a plain NHWC forward
convolution at full speed, but the convolutions that automatic
differentiation emits for the input gradient (and the gradient of
``reduce_window`` max pooling) take a much slower path; a straightforward
Flax LeNet5 PGD ran at about 0.2-0.6x a PyTorch CPU loop here. With
``impl="fast"`` (the default on CPU) the model uses two custom-VJP primitives:

* :func:`conv2d_same`: a stride-1 ``SAME`` convolution whose input gradient is
  written as another forward convolution (kernel flipped in space, in/out
  channels swapped) -- or, for inputs with at most 4 channels, as one matrix
  product followed by a 25-tap col2im sum -- and whose kernel gradient is
  one matrix product per kernel tap on a shifted view of the padded input;
* :func:`relu_maxpool2`: ``relu`` fused with 2x2/2 max pooling, whose
  gradient routes each pooled cotangent to the first maximal entry of its
  window (PyTorch's and ``flax.linen.max_pool``'s convention).

The other CNNs (``smallcnn``, ``wong_kolter``, ``wideresnet``, ``ibp_small``,
``ibp_medium``) take the same ``impl``: their convolutions are
:class:`Conv2d` layers whose gradients are forward convolutions too (input
gradient: the stride-dilated cotangent against the flipped kernel; kernel
gradient: the input with batch and channel axes exchanged against the
cotangent). Inside a loop -- a training chunk is a ``lax.scan`` -- XLA's own
kernel gradient took 10-20x longer here (the second ``ibp_small``
convolution: 25.9 ms against 1.5 ms, batch 50), and IBP training of
``ibp_small`` reached 0.13x the PyTorch loop before them, 0.83x with them
(``benchmarks/training.py``, ``results/training_cpu.json``). ``smallcnn`` also fuses
ReLU and its max pooling into :func:`relu_maxpool2` where the sizes are even.

Both are exact (the same function and a valid gradient, equal to autodiff's
wherever the max is unique); ``impl="xla"`` gives the plain
``lax.conv_general_dilated`` + ``reduce_window`` model, XLA's own convolutions,
which are the fast path on GPU and TPU. ``impl="auto"`` (default) resolves
when the model is applied: ``"fast"`` where :func:`jax.default_backend` is
``"cpu"``, ``"xla"`` on any accelerator (:func:`resolve_impl`). Both
primitives can be differentiated again in reverse mode (gradient penalties,
the evasive Carlini-Wagner attack) but not in forward mode (``jax.jvp``).
Parameters have the same layout under either ``impl``.

References:
  Ding, Lui, Jin, Wang, Huang. "On the sensitivity of adversarial robustness
  to input data distributions." ICLR 2019, arXiv:1902.08336 (LeNet5 and
  WRN-28-4 settings, App. B).
  Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models
  resistant to adversarial attacks." ICLR 2018, arXiv:1706.06083 (the MNIST
  network).
  Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan. "Theoretically principled
  trade-off between robustness and accuracy." ICML 2019, arXiv:1901.08573
  (TRADES; its MNIST network is ``smallcnn``).
  Zhang, Chen, Gu, Evans. "Understanding the intrinsic robustness of image
  distributions using conditional generative models." AISTATS 2020,
  arXiv:2003.00378 (App. B.1: ``smallcnn``).
  Wong, Kolter. "Provable defenses against adversarial examples via the
  convex outer adversarial polytope." ICML 2018, arXiv:1711.00851
  (``wong_kolter``).
  Zagoruyko, Komodakis. "Wide residual networks." BMVC 2016,
  arXiv:1605.07146 (``wideresnet``).
  Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann,
  Kohli. "On the effectiveness of interval bound propagation for training
  verifiably robust models." arXiv:1810.12715 (``ibp_small``,
  ``ibp_medium``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbound import _checks, _conv
from jaxbound._io import atomic_write_bytes, atomic_write_json, file_checksum, read_json, to_jsonable

__all__ = [
    "LeNet5",
    "MLP",
    "SmallCNN",
    "WongKolter",
    "WideResNet",
    "IBPSmall",
    "IBPMedium",
    "IMPLS",
    "resolve_impl",
    "Conv2d",
    "conv2d_same",
    "relu_maxpool2",
    "register",
    "create",
    "available",
    "accepts_widen",
    "resolve_widen",
    "build",
    "SavedModel",
    "save",
    "load",
    "init_params",
    "logits_fn",
]

_DN = ("NHWC", "HWIO", "NHWC")
#: Convolution lowerings of :class:`LeNet5` (see the module docstring).
IMPLS = ("auto", "fast", "xla")


def resolve_impl(impl: str) -> str:
    """The concrete lowering of ``impl``: ``"auto"`` -> ``"fast"`` on CPU, ``"xla"`` on GPU/TPU.

    ``"auto"`` is resolved from :func:`jax.default_backend` when the model is
    applied (traced), so one module object follows the platform it runs on.

    Args:
      impl: ``"auto"``, ``"fast"`` or ``"xla"``.

    Returns:
      ``"fast"`` or ``"xla"``.

    Raises:
      ValueError: ``impl`` is not one of :data:`IMPLS`.
    """
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl: must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl != "auto":
        return impl
    return "fast" if jax.default_backend() == "cpu" else "xla"

# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class decorator adding a model constructor to the registry under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")

    def deco(cls):
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"name: a model named {name!r} is already registered")
        _REGISTRY[key] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword settings ``kwargs``."""
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name.lower()](**kwargs)


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape: expected a sequence of positive sizes, got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected positive sizes, got {input_shape!r}")
    return shape


def accepts_widen(arch: str) -> bool:
    """Whether the registered architecture ``arch`` has a ``widen_factor`` attribute."""
    cls = _REGISTRY.get(str(arch).lower())
    return cls is not None and "widen_factor" in getattr(cls, "__dataclass_fields__", {})


def resolve_widen(arch: str, widen_factor: Any) -> float | None:
    """The ``widen_factor`` to build ``arch`` with.

    Args:
      arch: a registered architecture name.
      widen_factor: a number, ``None`` (the architecture's own default) or
        ``"auto"`` (0.5 for architectures that have a widen factor, else
        ``None``).

    Returns:
      A float or ``None``.

    Raises:
      ValueError: an unknown string, or a number for an architecture without
        a widen factor.
    """
    if isinstance(widen_factor, str):
        if widen_factor != "auto":
            raise ValueError(f"widen_factor: expected a number, None or 'auto', got {widen_factor!r}")
        return 0.5 if accepts_widen(arch) else None
    if widen_factor is not None and not accepts_widen(arch):
        raise ValueError(f"widen_factor: architecture {arch!r} has no widen factor")
    return widen_factor


def build(arch: str, *, num_classes: int, input_shape: Sequence[int] | None = None,
          widen_factor: Any = None) -> nn.Module:
    """The registered architecture ``arch`` for ``num_classes`` classes.

    Args:
      arch: a registered name (:func:`available`).
      num_classes: number of outputs (>= 2).
      input_shape: shape of one example, e.g. ``(28, 28, 1)``; when given,
        the model is checked to accept it (shapes only, nothing is compiled).
      widen_factor: a number, ``None`` (the architecture's default) or
        ``"auto"`` (see :func:`resolve_widen`).

    Returns:
      The Flax module.

    Raises:
      ValueError: unknown architecture, ``num_classes < 2``, a widen factor
        the architecture does not take, or inputs it cannot process.
    """
    if not isinstance(arch, str) or arch.lower() not in _REGISTRY:
        raise ValueError(f"arch: unknown architecture {arch!r}; available: {', '.join(available())}")
    kw: dict[str, Any] = {"num_classes": _checks.check_int(num_classes, "num_classes", low=2)}
    widen_factor = resolve_widen(arch, widen_factor)
    if widen_factor is not None:
        kw["widen_factor"] = _checks.check_scalar(widen_factor, "widen_factor", low=0.0, low_inclusive=False)
    module = create(arch, **kw)
    if input_shape is not None:
        shape = _check_input_shape(input_shape)
        try:
            jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32)))
        except Exception as exc:  # noqa: BLE001 - reported against the argument (the model names its own 'x')
            raise ValueError(f"input_shape: {arch!r} cannot take inputs shaped {shape}: {exc}") from None
    return module


class SavedModel(NamedTuple):
    """A model read by :func:`load`.

    Attributes:
      model: the Flax module.
      params: its parameters (``{"params": ...}``, NumPy leaves).
      arch: the registered architecture name.
      num_classes: number of outputs.
      widen_factor: the widen factor it was built with (``None``: the
        architecture's default).
      input_shape: shape of one example.
      record: the free-form record saved with it (settings, accuracies).
    """

    model: nn.Module
    params: Any
    arch: str
    num_classes: int
    widen_factor: float | None
    input_shape: tuple
    record: dict

    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """The plain ``x [n, ...] -> logits [n, k]`` function."""
        return logits_fn(self.model, self.params)

    def to_dict(self) -> dict:
        """JSON-ready description (no parameters)."""
        return to_jsonable({"arch": self.arch, "num_classes": self.num_classes, "widen_factor": self.widen_factor,
                            "input_shape": list(self.input_shape), "record": self.record})


def save(folder: str | Path, *, arch: str, num_classes: int, widen_factor: float | None, input_shape: Sequence[int],
         params: Any, record: dict | None = None) -> Path:
    """Write a trained model as ``model.json`` (architecture, record) and ``model.msgpack`` (parameters).

    Args:
      folder: created if missing; both files are written atomically.
      arch, num_classes, widen_factor: as for :func:`build`.
      input_shape: shape of one example.
      params: the parameters (``{"params": ...}``).
      record: JSON-ready facts stored beside the architecture.

    Returns:
      ``folder`` as a :class:`pathlib.Path`.
    """
    from flax import serialization

    folder = _checks.check_path(folder, "folder")
    build(arch, num_classes=num_classes, widen_factor=widen_factor)  # validates the architecture
    shape = _check_input_shape(input_shape)
    folder.mkdir(parents=True, exist_ok=True)
    raw = serialization.to_bytes(params)
    atomic_write_bytes(folder / "model.msgpack", raw)
    spec = {"arch": arch, "num_classes": int(num_classes), "widen_factor": widen_factor,
            "input_shape": list(shape), "record": record or {}, "params_sha256": file_checksum(raw)}
    atomic_write_json(folder / "model.json", spec)
    return folder


def load(path: str | Path, *, name: str = "path") -> SavedModel:
    """Read a model written by :func:`save` (or ``jaxbound train --out``).

    ``model.json`` holds the SHA-256 of ``model.msgpack``; a truncated,
    altered or foreign file of either kind raises one ``ValueError`` naming
    the file and how to start afresh (train the model again).

    Args:
      path: the folder holding ``model.json`` and ``model.msgpack``.
      name: the argument named in errors.

    Returns:
      :class:`SavedModel`.

    Raises:
      ValueError: the folder lacks either file, or either file is damaged.
    """
    from flax import serialization

    p = Path(str(path)).expanduser()
    if not (p / "model.json").is_file() or not (p / "model.msgpack").is_file():
        raise ValueError(f"{name}: folder {str(p)!r} has no model.json and model.msgpack "
                         "(written by 'jaxbound train --out')")
    fresh = f"delete {str(p)!r} and train the model again ('jaxbound train --out {p}')"
    spec = read_json(p / "model.json", name=name, fresh=fresh)
    try:
        shape = tuple(int(s) for s in spec["input_shape"])
        module = build(spec["arch"], num_classes=spec["num_classes"], widen_factor=spec.get("widen_factor"))
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{name}: {str(p / 'model.json')!r} is not a jaxbound model description "
                         f"({type(exc).__name__}: {exc}); {fresh}") from None
    raw = (p / "model.msgpack").read_bytes()
    if "params_sha256" in spec and spec["params_sha256"] != file_checksum(raw):
        raise ValueError(f"{name}: {str(p / 'model.msgpack')!r} is damaged (its checksum differs from the one "
                         f"in model.json); {fresh}")
    template = jax.eval_shape(lambda: init_params(module, shape, key=jax.random.key(0)))
    try:
        params = serialization.from_bytes(template, raw)
        if jax.tree.structure(params) != jax.tree.structure(template) or any(
                np.shape(a) != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(template))):
            raise ValueError("parameters of another architecture")
    except Exception as exc:  # noqa: BLE001 - msgpack and flax raise many kinds; one line names the file
        raise ValueError(f"{name}: {str(p / 'model.msgpack')!r} is damaged or not parameters of "
                         f"{spec['arch']!r} ({type(exc).__name__}: {exc}); {fresh}") from None
    return SavedModel(module, params, spec["arch"], int(spec["num_classes"]), spec.get("widen_factor"), shape,
                      spec.get("record") or {})


def init_params(model: nn.Module, input_shape: Sequence[int], *, key: Any) -> Any:
    """Initial parameters of ``model`` for inputs shaped ``[n, *input_shape]``.

    Args:
      model: a Flax module (a registered name is not accepted: build the
        module first with :func:`build`, which needs ``num_classes``).
      input_shape: shape of one example, e.g. ``(28, 28, 1)``.
      key: ``jax.random`` key.

    Returns:
      The parameter pytree (``{"params": ...}``) accepted by ``model.apply``.
      With a concrete key the init is jitted (compiled without backend
      optimisation: it runs once) and jax's own cache reuses it for equal
      modules and shapes.

    Raises:
      TypeError: ``model`` is not a Flax module (e.g. the name ``"mlp"``).
      ValueError: a bad ``input_shape`` or ``key``.
    """
    _checks.check_module(model, "model")
    _checks.check_key(key)
    shape = _check_input_shape(input_shape)
    dummy = jnp.zeros((1, *shape), jnp.float32)
    if not _checks.is_concrete(key):
        return model.init(key, dummy)
    try:
        hash(model)
    except TypeError:  # unhashable module attributes: a one-off function
        fast, plain = jax.jit(model.init, compiler_options=_FAST_COMPILE), jax.jit(model.init)
    else:
        fast, plain = functools.partial(_fast_init, model), functools.partial(_plain_init, model)
    try:
        return fast(key, dummy)
    except Exception:  # noqa: BLE001 - backends without these options (a model error is raised again below)
        return plain(key, dummy)


def _init(model: nn.Module, key: Any, dummy: jax.Array) -> Any:
    return model.init(key, dummy)


# XLA's CPU backend spends seconds optimising the unrolled threefry hash of
# every initializer; an init runs once, so it is compiled without backend
# optimisation (same values up to float rounding of the initializers' math).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_fast_init = jax.jit(_init, static_argnums=0, compiler_options=_FAST_COMPILE)
_plain_init = jax.jit(_init, static_argnums=0)


def logits_fn(model: nn.Module, params: Any) -> Callable[[jax.Array], jax.Array]:
    """The plain function ``x [n, ...] -> logits [n, k]`` the attacks and metrics take.

    Args:
      model: a Flax module (not a registered name: see :func:`build`).
      params: its parameters (``{"params": ...}``, e.g. from :func:`init_params`).

    Returns:
      ``fn(x)``; parameters of another architecture raise ``ValueError``
      naming ``params`` on the first call (their shapes depend on the input).

    Raises:
      TypeError: ``model`` is not a Flax module; ``params`` is not a mapping.
    """
    _checks.check_module(model, "model")
    if not isinstance(params, Mapping) and not hasattr(params, "keys"):
        raise TypeError(f"params: expected the parameter mapping of model.init ({{'params': ...}}), "
                        f"got {type(params).__name__}")

    def fn(x):
        try:
            return model.apply(params, x)
        except flax.errors.FlaxError as exc:
            raise ValueError(f"params: do not fit {type(model).__name__} on inputs shaped {tuple(np.shape(x))} "
                             f"(parameters of another architecture or input shape?): {exc}") from None

    return fn


# ---------------------------------------------------------------------------
# Fast CPU lowering: custom-VJP convolution and fused relu + max pool
# ---------------------------------------------------------------------------


def _conv_xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


def _col2im_planes(cols, k):
    """Adjoint of im2col (tap-major patches) from planes: ``[k*k, C, n, H, W] -> [n, H, W, C]``.

    Input pixel ``(i, j)`` collects tap ``(a, b)`` of output pixel
    ``(i - a + p, j - b + p)``: one sum of ``k*k`` shifted, contiguous planes
    (XLA's CPU backend fuses it into a single pass, where per-tap updates of
    a channel-minor array were ``k*k`` strided passes).
    """
    _, c, n, h, w = cols.shape
    p = k // 2
    cp = jnp.pad(cols, ((0, 0), (0, 0), (0, 0), (p, p), (p, p)))
    out = None
    for a in range(k):
        for b in range(k):
            t = cp[a * k + b, :, :, 2 * p - a : 2 * p - a + h, 2 * p - b : 2 * p - b + w]
            out = t if out is None else out + t
    return jnp.transpose(out, (1, 2, 3, 0))


def _kernel_grad_taps(x, g, k):
    """Kernel gradient of :func:`conv2d_same`: ``dw[a, b] = sum_{n,i,j} x_pad[n, i + a, j + b, :]^T g[n, i, j, :]``.

    One ``[C, n*H*W] x [n*H*W, O]`` product per tap on a shifted view of the
    padded input, stacked to ``[k, k, C, O]``: no ``[n*H*W, k*k*C]`` im2col
    matrix is written and transposed. One-off A/B in one process (LeNet5's
    standard training step in a ``lax.scan`` of 20 steps, batch 50, 2 cores
    beside another job): 83-86 ms against 75-80 ms per step; in
    ``benchmarks/training.py`` the effect is within the run-to-run noise of
    the PyTorch baseline.
    """
    _, h, wd, c = x.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    taps = [jnp.einsum("nhwc,nhwo->co", xp[:, a : a + h, b : b + wd, :], g) for a in range(k) for b in range(k)]
    return jnp.stack(taps).reshape(k, k, c, g.shape[-1])


@jax.custom_vjp
def conv2d_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 ``SAME`` cross-correlation ``[n,H,W,C] * [k,k,C,O] -> [n,H,W,O]``.

    Same values as ``lax.conv_general_dilated(x, w, (1, 1), "SAME")`` in NHWC /
    HWIO layout (odd square kernels only), with a custom reverse-mode rule
    that keeps every gradient on XLA's fast forward-convolution and GEMM paths
    (see the module docstring).
    """
    return _conv_xla(x, w)


def _conv_fwd(x, w):
    return _conv_xla(x, w), (x, w)


def _conv_bwd(res, g):
    x, w = res
    k, c, o = w.shape[0], w.shape[2], w.shape[3]
    if c <= 4:
        # Few input channels: one [k*k*C, O] x [O, n*H*W] product, then col2im over contiguous planes.
        n, h, wd = g.shape[:3]
        cols = (w.reshape(k * k * c, o) @ g.reshape(-1, o).T).reshape(k * k, c, n, h, wd)
        dx = _col2im_planes(cols, k)
    else:
        # The adjoint of a SAME conv with an odd kernel is a SAME conv with the
        # kernel flipped in space and its channel axes swapped.
        dx = _conv_xla(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    dw = _kernel_grad_taps(x, g, k)
    return dx, dw


conv2d_same.defvjp(_conv_fwd, _conv_bwd)


def _pool_max(z):
    # reduce_window: XLA fuses it with the convolution before it; a reshape-and-max of the same values made
    # LeNet5's forward pass about 2x slower on CPU (one-off profile, batch 1000: conv2 and its pooling 1,090-1,209
    # against 2,439-3,008 images/s; same-run effect in benchmarks/results/autoattack_cpu.json)
    return lax.reduce_window(z, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")  # reduce_window_max


@jax.custom_vjp
def relu_maxpool2(z: jax.Array) -> jax.Array:
    """``maxpool_2x2(relu(z))`` for ``z [n, H, W, C]`` with even ``H, W``.

    The gradient goes to the first maximal entry of each 2x2 window (row-major
    order) when the pooled value is positive, and is zero otherwise (ReLU's
    derivative at 0 is taken as 0, as in ``jax.nn.relu``).
    """
    return jax.nn.relu(_pool_max(z))


def _pool_fwd(z):
    p = jax.nn.relu(_pool_max(z))
    return p, (z, p)


def _pool_bwd(res, g):
    z, p = res
    n, h, w, c = z.shape
    z6 = z.reshape(n, h // 2, 2, w // 2, 2, c)
    g = jnp.where(p > 0, g, jnp.zeros_like(g))
    eq = z6 == p[:, :, None, :, None, :]
    e00 = eq[:, :, 0, :, 0]
    e01 = eq[:, :, 0, :, 1] & ~e00
    taken = e00 | eq[:, :, 0, :, 1]
    e10 = eq[:, :, 1, :, 0] & ~taken
    taken = taken | eq[:, :, 1, :, 0]
    e11 = eq[:, :, 1, :, 1] & ~taken
    mask = jnp.stack([jnp.stack([e00, e01], axis=3), jnp.stack([e10, e11], axis=3)], axis=2)
    dz = jnp.where(mask, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    return (dz.reshape(z.shape),)


relu_maxpool2.defvjp(_pool_fwd, _pool_bwd)


def _relu_maxpool_xla(z):
    return nn.max_pool(jax.nn.relu(z), (2, 2), strides=(2, 2), padding="VALID")


# ---------------------------------------------------------------------------
# Layers and models
# ---------------------------------------------------------------------------


class ConvSame(nn.Module):
    """Stride-1 ``SAME`` convolution with bias; parameters laid out like ``nn.Conv``.

    Attributes:
      features: output channels.
      kernel_size: odd square kernel size.
      impl: ``"auto"`` (:func:`resolve_impl`), ``"fast"`` (:func:`conv2d_same`)
        or ``"xla"`` (plain ``lax`` conv).
    """

    features: int
    kernel_size: int = 5
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        conv = conv2d_same if resolve_impl(self.impl) == "fast" else _conv_xla
        return conv(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


def _width(base: int, factor: float) -> int:
    return max(1, int(round(base * factor)))


@register("lenet5")
class LeNet5(nn.Module):
    """LeNet5 of Ding et al. (2019, App. B.1) with a widen factor.

    ``conv5x5(32w) - ReLU - maxpool2 - conv5x5(64w) - ReLU - maxpool2 -
    fc(1024w) - ReLU - fc(num_classes)``, ``SAME`` padding, where ``w`` is
    ``widen_factor`` (widths rounded, at least 1).

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies the channels and hidden units (> 0).
      mean: per-channel (or scalar) mean subtracted inside the model.
      std: per-channel (or scalar) standard deviation divided inside the model.
        Ding et al. feed MNIST pixels unchanged: the defaults ``0`` and ``1``.
      impl: ``"auto"`` (default: ``"fast"`` on CPU, ``"xla"`` on GPU/TPU,
        :func:`resolve_impl`), ``"fast"`` (custom-VJP CPU lowering, see the
        module docstring) or ``"xla"`` (plain ``lax`` convolution and
        ``reduce_window`` pooling).

    Input: images ``[n, H, W, C]`` (pixels in ``[0, 1]`` by convention) with
    ``H`` and ``W`` divisible by 4. Output: logits ``[n, num_classes]``.
    """

    num_classes: int = 10
    widen_factor: float = 1.0
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "auto"

    def _validate(self, x):
        _checks.check_int(self.num_classes, "num_classes", low=2)
        _checks.check_scalar(self.widen_factor, "widen_factor", low=0.0, low_inclusive=False)
        resolve_impl(self.impl)
        if x.ndim != 4:
            raise ValueError(f"x: expected images shaped [n, H, W, C], got shape {tuple(x.shape)}")
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(f"x: height and width must be divisible by 4, got {tuple(x.shape[1:3])}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x: expected floating-point images, got dtype {x.dtype}")
        std = np.asarray(self.std, dtype=np.float64)
        if not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise ValueError(f"std: must be positive and finite, got {self.std!r}")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        self._validate(x)
        w = float(self.widen_factor)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        h = (x - mean) / std
        impl = resolve_impl(self.impl)
        pool = relu_maxpool2 if impl == "fast" else _relu_maxpool_xla
        h = pool(ConvSame(_width(32, w), 5, impl, name="conv1")(h))
        h = pool(ConvSame(_width(64, w), 5, impl, name="conv2")(h))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(nn.Dense(_width(1024, w), name="fc1")(h))
        return nn.Dense(self.num_classes, name="fc2")(h)


# ---------------------------------------------------------------------------
# Further models (issue 6)
# ---------------------------------------------------------------------------


def _validate_common(x, num_classes, std, *, min_hw: int = 1):
    _checks.check_int(num_classes, "num_classes", low=2)
    if x.ndim != 4:
        raise ValueError(f"x: expected images shaped [n, H, W, C], got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x: expected floating-point images, got dtype {x.dtype}")
    if x.shape[1] < min_hw or x.shape[2] < min_hw:
        raise ValueError(f"x: height and width must be at least {min_hw}, got {tuple(x.shape[1:3])}")
    s = np.asarray(std, dtype=np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"std: must be positive and finite, got {std!r}")


def _standardise(x, mean, std):
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


@register("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network on the flattened image.

    ``flatten - [fc(h) - ReLU] for h in hidden - fc(num_classes)``.

    Attributes:
      num_classes: number of outputs.
      hidden: widths of the hidden layers (may be empty: a linear model).
      mean: per-channel (or scalar) mean subtracted inside the model.
      std: per-channel (or scalar) standard deviation divided inside the model.

    Input: ``[n, H, W, C]`` (or any ``[n, ...]``). Output: ``[n, num_classes]``.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    mean: Any = 0.0
    std: Any = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _checks.check_int(self.num_classes, "num_classes", low=2)
        if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x: expected floating-point inputs shaped [n, ...], got {x.dtype} {tuple(x.shape)}")
        for i, h in enumerate(self.hidden):
            _checks.check_int(h, f"hidden[{i}]", low=1)
        s = np.asarray(self.std, dtype=np.float64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"std: must be positive and finite, got {self.std!r}")
        h = _standardise(x, self.mean, self.std).reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = jax.nn.relu(nn.Dense(int(width), name=f"fc{i + 1}")(h))
        return nn.Dense(self.num_classes, name="out")(h)


@register("smallcnn")
class SmallCNN(nn.Module):
    """The seven-layer CNN of Zhang et al. (2020, App. B.1), TRADES' MNIST network.

    ``conv3x3(32) - ReLU - conv3x3(32) - ReLU - maxpool2 - conv3x3(64) - ReLU -
    conv3x3(64) - ReLU - maxpool2 - fc(200) - ReLU - fc(200) - ReLU -
    fc(num_classes)`` with ``VALID`` convolutions (28x28 -> 4x4x64 features on
    MNIST). TRADES' reference network also has dropout (0.5) between the
    fully connected layers; it is left out here so that the model stays
    deterministic (``widen_factor`` scales every width).

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies every width (> 0).
      mean, std: normalisation inside the model (default none).
      impl: ``"auto"``, ``"fast"`` or ``"xla"``; see :class:`Conv2d`.

    Input: ``[n, H, W, C]`` with ``H, W >= 16``.
    """

    num_classes: int = 10
    widen_factor: float = 1.0
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _validate_common(x, self.num_classes, self.std, min_hw=16)
        w = _checks.check_scalar(self.widen_factor, "widen_factor", low=0.0, low_inclusive=False)
        impl = resolve_impl(self.impl)
        h = _standardise(x, self.mean, self.std)
        for i, (c, pool) in enumerate(((32, False), (32, True), (64, False), (64, True))):
            h = Conv2d(_width(c, w), 3, impl=impl, name=f"conv{i + 1}")(h)
            if pool and impl == "fast" and h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0:
                h = relu_maxpool2(h)
            elif pool:
                h = nn.max_pool(jax.nn.relu(h), (2, 2), strides=(2, 2), padding="VALID")
            else:
                h = jax.nn.relu(h)
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(nn.Dense(_width(200, w), name="fc1")(h))
        h = jax.nn.relu(nn.Dense(_width(200, w), name="fc2")(h))
        return nn.Dense(self.num_classes, name="fc3")(h)


@register("wong_kolter")
class WongKolter(nn.Module):
    """The small convolutional network of Wong & Kolter (2018) (Ding et al. 2019, App. B.2).

    ``conv4x4(16, stride 2, pad 1) - ReLU - conv4x4(32, stride 2, pad 1) - ReLU
    - fc(100) - ReLU - fc(num_classes)``, no pooling (28x28 -> 7x7x32 on MNIST).

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies every width (> 0).
      mean, std: normalisation inside the model (default none).
      impl: ``"auto"``, ``"fast"`` or ``"xla"``; see :class:`Conv2d`.

    Input: ``[n, H, W, C]`` with ``H, W >= 4``.
    """

    num_classes: int = 10
    widen_factor: float = 1.0
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _validate_common(x, self.num_classes, self.std, min_hw=4)
        w = _checks.check_scalar(self.widen_factor, "widen_factor", low=0.0, low_inclusive=False)
        h = _standardise(x, self.mean, self.std)
        impl = resolve_impl(self.impl)
        h = jax.nn.relu(Conv2d(_width(16, w), 4, 2, ((1, 1), (1, 1)), impl=impl, name="conv1")(h))
        h = jax.nn.relu(Conv2d(_width(32, w), 4, 2, ((1, 1), (1, 1)), impl=impl, name="conv2")(h))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(nn.Dense(_width(100, w), name="fc1")(h))
        return nn.Dense(self.num_classes, name="fc2")(h)


class Conv2d(nn.Module):
    """Strided convolution with explicit padding and optional bias; parameters laid out like ``nn.Conv``.

    Attributes:
      features: output channels.
      kernel_size: square kernel size ``k``.
      stride: stride in both spatial axes.
      padding: ``((lo, hi), (lo, hi))`` zero padding, each in ``[0, k - 1]``
        (default none: ``VALID``).
      use_bias: add a bias per output channel.
      impl: ``"auto"`` (:func:`resolve_impl`), ``"fast"`` (the same value,
        with both gradients written as forward convolutions: XLA's CPU
        backend differentiates a plain convolution inside a loop, such as a
        training chunk, 10-20x slower) or ``"xla"`` (plain ``lax`` conv).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: tuple = ((0, 0), (0, 0))
    use_bias: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = _checks.check_int(self.kernel_size, "kernel_size", low=1)
        s = _checks.check_int(self.stride, "stride", low=1)
        _checks.check_int(self.features, "features", low=1)
        try:
            pad = tuple((int(lo), int(hi)) for lo, hi in self.padding)
        except (TypeError, ValueError):
            pad = None
        if pad is None or len(pad) != 2 or any(not 0 <= v <= k - 1 for pair in pad for v in pair):
            raise ValueError(f"padding: expected ((lo, hi), (lo, hi)) with each in [0, kernel_size - 1] = "
                             f"[0, {k - 1}], got {self.padding!r}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        kernel = kernel.astype(x.dtype)
        if resolve_impl(self.impl) == "fast":
            y = _conv.conv(x, kernel, (s, s), pad)
        else:
            y = lax.conv_general_dilated(x, kernel, (s, s), pad, dimension_numbers=_DN)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(x.dtype)
        return y


def _ibp_cnn(x, layers, dense, num_classes, widen_factor, mean, std, impl):
    """Gowal et al.'s CNNs: ``VALID`` convs ``(features, kernel, stride)`` + ReLU, dense + ReLU, linear output."""
    w = _checks.check_scalar(widen_factor, "widen_factor", low=0.0, low_inclusive=False)
    impl = resolve_impl(impl)
    h = _standardise(x, mean, std)
    for i, (c, k, s) in enumerate(layers):
        h = jax.nn.relu(Conv2d(_width(c, w), k, s, impl=impl, name=f"conv{i + 1}")(h))
    h = h.reshape(h.shape[0], -1)
    for i, c in enumerate(dense):
        h = jax.nn.relu(nn.Dense(_width(c, w), name=f"fc{i + 1}")(h))
    return nn.Dense(num_classes, name=f"fc{len(dense) + 1}")(h)


@register("ibp_small")
class IBPSmall(nn.Module):
    """The "small" CNN of Gowal et al. (2018, Table 1) for interval bound propagation training.

    ``conv4x4(16, stride 2) - ReLU - conv4x4(32, stride 1) - ReLU - fc(100) -
    ReLU - fc(num_classes)``, ``VALID`` padding (28x28 -> 13x13x16 ->
    10x10x32 on MNIST). Only convolutions, ReLU and affine layers: the
    primitives every bound-propagation method handles tightly.

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies every width (> 0).
      mean, std: normalisation inside the model (default none).
      impl: ``"auto"`` (default: ``"fast"`` on CPU, ``"xla"`` on GPU/TPU),
        ``"fast"`` or ``"xla"``; see :class:`Conv2d`.

    Input: ``[n, H, W, C]`` with ``H, W >= 7``. Output: ``[n, num_classes]``.

    References:
      Gowal et al. "On the effectiveness of interval bound propagation for
      training verifiably robust models." arXiv:1810.12715, Table 1.
    """

    num_classes: int = 10
    widen_factor: float = 1.0
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "auto"
    _convs = ((16, 4, 2), (32, 4, 1))  # (width, kernel, stride) per convolution
    _dense = (100,)
    _min_hw = 7

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _validate_common(x, self.num_classes, self.std, min_hw=self._min_hw)
        return _ibp_cnn(x, self._convs, self._dense, self.num_classes, self.widen_factor, self.mean, self.std,
                        self.impl)


@register("ibp_medium")
class IBPMedium(IBPSmall):
    """The "medium" CNN of Gowal et al. (2018, Table 1) for interval bound propagation training.

    ``conv3x3(32, /1) - conv4x4(32, /2) - conv3x3(64, /1) - conv4x4(64, /2) -
    fc(512) - fc(512) - fc(num_classes)``, ReLU after every hidden layer,
    ``VALID`` padding (28x28 -> 4x4x64 on MNIST).

    Attributes:
      num_classes: number of outputs.
      widen_factor: multiplies every width (> 0).
      mean, std: normalisation inside the model (default none).
      impl: ``"auto"``, ``"fast"`` or ``"xla"``; see :class:`Conv2d`.

    Input: ``[n, H, W, C]`` with ``H, W >= 16``. Output: ``[n, num_classes]``.

    References:
      Gowal et al. "On the effectiveness of interval bound propagation for
      training verifiably robust models." arXiv:1810.12715, Table 1.
    """

    _convs = ((32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2))
    _dense = (512, 512)
    _min_hw = 16


def _group_norm(channels: int, name: str) -> nn.Module:
    groups = 1
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2 or g == 1:
            groups = g
            break
    return nn.GroupNorm(num_groups=groups, name=name)


class _WideBlock(nn.Module):
    """Pre-activation wide basic block: norm-ReLU-conv3x3-norm-ReLU-conv3x3 + shortcut."""

    features: int
    stride: int
    norm: str
    impl: str

    @nn.compact
    def __call__(self, x):
        def act(h, name):
            if self.norm == "group":
                h = _group_norm(h.shape[-1], name)(h)
            return jax.nn.relu(h)

        o = act(x, "norm1")
        shortcut = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = Conv2d(self.features, 1, self.stride, use_bias=False, impl=self.impl, name="shortcut")(o)
        h = Conv2d(self.features, 3, self.stride, ((1, 1), (1, 1)), use_bias=False, impl=self.impl, name="conv1")(o)
        h = act(h, "norm2")
        h = Conv2d(self.features, 3, 1, ((1, 1), (1, 1)), use_bias=False, impl=self.impl, name="conv2")(h)
        return h + shortcut


@register("wideresnet")
class WideResNet(nn.Module):
    """Wide residual network WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016).

    Ding et al. (2019, App. B.1) train WRN-28-4 on CIFAR-10 with per-image
    standardisation. Structure: conv3x3(16), three groups of ``(depth - 4) / 6``
    pre-activation basic blocks with widths ``16k, 32k, 64k`` (strides 1, 2,
    2), norm - ReLU - global average pool - fc(num_classes).

    Deviation: BatchNorm is replaced by GroupNorm (``norm="group"``, default;
    or ``"none"``). BatchNorm in training mode mixes the examples of a batch,
    which the attacks and the training recipes here must not see; GroupNorm
    normalises each example on its own.

    Attributes:
      num_classes: number of outputs.
      depth: total depth, ``6 m + 4`` for ``m >= 1`` blocks per group (28 in Ding et al.).
      widen_factor: width multiplier ``k`` (4 in Ding et al.; 0.25 and 1 in §4.3).
      norm: ``"group"`` or ``"none"``.
      standardize: ``"per_image"`` (subtract each image's mean, divide by
        ``max(std, 1/sqrt(H W C))``, as ``tf.image.per_image_standardization``)
        or ``"none"`` (then ``mean``/``std`` apply).
      mean, std: normalisation inside the model when ``standardize="none"``.
      impl: ``"auto"``, ``"fast"`` or ``"xla"``; see :class:`Conv2d`.

    Input: ``[n, H, W, C]`` with ``H, W >= 4``.
    """

    num_classes: int = 10
    depth: int = 28
    widen_factor: float = 4.0
    norm: str = "group"
    standardize: str = "per_image"
    mean: Any = 0.0
    std: Any = 1.0
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _validate_common(x, self.num_classes, self.std, min_hw=4)
        depth = _checks.check_int(self.depth, "depth", low=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth: must be 6 m + 4 (10, 16, 22, 28, ...), got {depth}")
        k = _checks.check_scalar(self.widen_factor, "widen_factor", low=0.0, low_inclusive=False)
        if self.norm not in ("group", "none"):
            raise ValueError(f"norm: must be 'group' or 'none', got {self.norm!r}")
        if self.standardize == "per_image":
            d = x.shape[1] * x.shape[2] * x.shape[3]
            m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
            s = jnp.std(x, axis=(1, 2, 3), keepdims=True)
            h = (x - m) / jnp.maximum(s, 1.0 / np.sqrt(d))
        elif self.standardize == "none":
            h = _standardise(x, self.mean, self.std)
        else:
            raise ValueError(f"standardize: must be 'per_image' or 'none', got {self.standardize!r}")
        m_blocks = (depth - 4) // 6
        impl = resolve_impl(self.impl)
        h = Conv2d(16, 3, 1, ((1, 1), (1, 1)), use_bias=False, impl=impl, name="conv0")(h)
        for g, (base, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            for b in range(m_blocks):
                h = _WideBlock(_width(base, k), stride if b == 0 else 1, self.norm, impl,
                               name=f"group{g + 1}_block{b + 1}")(h)
        if self.norm == "group":
            h = _group_norm(h.shape[-1], "norm_final")(h)
        h = jax.nn.relu(h)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(h)
