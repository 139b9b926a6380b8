"""Models: registry, parameter counts from the papers' layer lists, a PyTorch reference forward pass,
per-example independence, normalisation inside the model, and rejected configurations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbound import models

SHAPES = {"mlp": (8, 8, 1), "lenet5": (8, 8, 1), "smallcnn": (28, 28, 1), "wong_kolter": (28, 28, 1),
          "wideresnet": (16, 16, 3), "ibp_small": (12, 12, 1), "ibp_medium": (16, 16, 1)}
SMALL = {"mlp": dict(hidden=(32, 16)), "lenet5": dict(widen_factor=0.25), "smallcnn": dict(widen_factor=0.25),
         "wong_kolter": {}, "wideresnet": dict(depth=10, widen_factor=0.5), "ibp_small": dict(widen_factor=0.5),
         "ibp_medium": dict(widen_factor=0.25)}


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _shapes(model, shape):
    return jax.eval_shape(lambda: models.init_params(model, shape, key=jax.random.key(0)))


def test_registry_lists_all_models():
    for name in ("mlp", "lenet5", "smallcnn", "wong_kolter", "wideresnet", "ibp_small", "ibp_medium"):
        assert name in models.available()
    with pytest.raises(ValueError, match="^name"):
        models.create("vgg19")


def test_parameter_counts_match_layer_lists():
    # SmallCNN (Zhang et al. App. B.1 / TRADES): 3x3 convs 1-32-32-64-64, fc 1024-200-200-10.
    convs = [(1, 32), (32, 32), (32, 64), (64, 64)]
    fcs = [(64 * 4 * 4, 200), (200, 200), (200, 10)]
    ref = sum(9 * i * o + o for i, o in convs) + sum(i * o + o for i, o in fcs)
    assert ref == 312202
    assert _count(_shapes(models.create("smallcnn"), (28, 28, 1))) == ref
    # Wong & Kolter (Ding et al. App. B.2): 4x4 stride-2 convs 1-16-32, fc 32*7*7-100-10.
    ref = (16 * 1 * 16 + 16) + (16 * 16 * 32 + 32) + (32 * 7 * 7 * 100 + 100) + (100 * 10 + 10)
    assert _count(_shapes(models.create("wong_kolter"), (28, 28, 1))) == ref
    # Gowal et al. Table 1, small: 4x4/2 conv 16 (28 -> 13), 4x4/1 conv 32 (13 -> 10), fc 3200-100-10.
    ref = (16 * 16 + 16) + (16 * 16 * 32 + 32) + (10 * 10 * 32 * 100 + 100) + (100 * 10 + 10)
    assert _count(_shapes(models.create("ibp_small"), (28, 28, 1))) == ref
    # medium: 3x3/1 conv 32 (26), 4x4/2 conv 32 (12), 3x3/1 conv 64 (10), 4x4/2 conv 64 (4), fc 1024-512-512-10.
    ref = (9 * 32 + 32) + (16 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (16 * 64 * 64 + 64) \
        + (4 * 4 * 64 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    assert _count(_shapes(models.create("ibp_medium"), (28, 28, 1))) == ref
    # MLP
    ref = (64 * 32 + 32) + (32 * 16 + 16) + (16 * 7 + 7)
    assert _count(_shapes(models.create("mlp", hidden=(32, 16), num_classes=7), (8, 8, 1))) == ref
    # WRN-d-k: conv0 + per block (two 3x3 convs, 2 GroupNorms, 1x1 shortcut when the shape changes) + final norm + fc.
    for depth, k in ((10, 1), (16, 2)):
        m = (depth - 4) // 6
        widths = [16 * k, 32 * k, 64 * k]
        total = 27 * 16
        cin = 16
        for w in widths:
            for b in range(m):
                total += 9 * cin * w + 9 * w * w + 2 * cin + 2 * w  # convs (no bias) + norm scale/bias
                if cin != w or b == 0 and w != widths[0]:
                    total += cin * w
                cin = w
        total += 2 * cin + cin * 10 + 10
        assert _count(_shapes(models.create("wideresnet", depth=depth, widen_factor=k), (32, 32, 3))) == total


def _torch_forward(name, params, x):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a, np.float64)), params["params"])
    h = torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2)

    def conv(h, layer, stride=1, pad=0):
        return F.conv2d(h, p[layer]["kernel"].permute(3, 2, 0, 1), p[layer]["bias"], stride=stride, padding=pad)

    def dense(h, layer):
        return h @ p[layer]["kernel"] + p[layer]["bias"]

    def flat(h):  # NCHW -> NHWC order before flattening, like the Flax model
        return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)

    if name == "ibp_small":
        h = F.relu(conv(h, "conv1", 2))
        h = F.relu(conv(h, "conv2", 1))
        h = F.relu(dense(flat(h), "fc1"))
        return dense(h, "fc2").numpy()
    if name == "ibp_medium":
        for i, s in enumerate((1, 2, 1, 2)):
            h = F.relu(conv(h, f"conv{i + 1}", s))
        h = F.relu(dense(flat(h), "fc1"))
        h = F.relu(dense(h, "fc2"))
        return dense(h, "fc3").numpy()
    if name == "smallcnn":
        h = F.relu(conv(h, "conv1"))
        h = F.max_pool2d(F.relu(conv(h, "conv2")), 2)
        h = F.relu(conv(h, "conv3"))
        h = F.max_pool2d(F.relu(conv(h, "conv4")), 2)
        h = F.relu(dense(flat(h), "fc1"))
        h = F.relu(dense(h, "fc2"))
        return dense(h, "fc3").numpy()
    h = F.relu(conv(h, "conv1", 2, 1))
    h = F.relu(conv(h, "conv2", 2, 1))
    h = F.relu(dense(flat(h), "fc1"))
    return dense(h, "fc2").numpy()


@pytest.mark.parametrize("name", ["smallcnn", "wong_kolter", "ibp_small", "ibp_medium"])
def test_forward_matches_pytorch(name, rng):
    model = models.create(name, widen_factor=0.5)
    params = models.init_params(model, (28, 28, 1), key=jax.random.key(1))
    x = rng.uniform(0, 1, size=(3, 28, 28, 1)).astype(np.float32)
    out = np.asarray(jax.jit(model.apply)(params, x))
    ref = _torch_forward(name, params, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_examples_are_independent_and_shapes(name, rng):
    shape = SHAPES[name]
    model = models.create(name, num_classes=7, **SMALL[name])
    params = models.init_params(model, shape, key=jax.random.key(0))
    x = rng.uniform(0, 1, size=(5, *shape)).astype(np.float32)
    f = jax.jit(model.apply)
    full = np.asarray(f(params, x))
    assert full.shape == (5, 7) and np.isfinite(full).all()
    alone = np.concatenate([np.asarray(f(params, np.concatenate([x[i:i + 1]] * 5))[:1]) for i in range(5)])
    np.testing.assert_allclose(full, alone, rtol=1e-5, atol=1e-5)
    # a different batch mate does not change an example's logits
    other = np.asarray(f(params, np.concatenate([x[:1], rng.uniform(0, 1, size=(4, *shape)).astype(np.float32)])))
    np.testing.assert_allclose(other[0], full[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "smallcnn", "wong_kolter"])
def test_normalisation_inside_the_model(name, rng):
    shape = SHAPES[name]
    plain = models.create(name, **SMALL[name])
    norm = models.create(name, mean=0.5, std=0.25, **SMALL[name])
    params = models.init_params(plain, shape, key=jax.random.key(0))
    x = rng.uniform(0, 1, size=(4, *shape)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(norm.apply)(params, x)),
                               np.asarray(jax.jit(plain.apply)(params, (x - 0.5) / 0.25)), rtol=1e-4, atol=1e-4)


def test_wideresnet_per_image_standardisation(rng):
    model = models.create("wideresnet", depth=10, widen_factor=0.5)
    params = models.init_params(model, (16, 16, 3), key=jax.random.key(0))
    x = rng.uniform(0.2, 0.8, size=(3, 16, 16, 3)).astype(np.float32)
    f = jax.jit(models.logits_fn(model, params))
    # invariant to a positive affine change of the pixel values
    np.testing.assert_allclose(np.asarray(f(0.5 * x + 0.1)), np.asarray(f(x)), rtol=1e-3, atol=1e-4)
    # a constant image is not divided by zero
    assert np.isfinite(np.asarray(f(np.full((3, 16, 16, 3), 0.3, np.float32)))).all()


def _check_double_backprop(model, shape, rng):
    params = models.init_params(model, shape, key=jax.random.key(0))
    x = jnp.asarray(rng.uniform(0, 1, size=(2, *shape)).astype(np.float32))

    def penalty(p):
        g = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(model.apply(p, z))[:, 0]))(x)
        return jnp.sum(g * g)

    grads = jax.jit(jax.grad(penalty))(params)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(grads)) > 0


def _primitives(model, shape):
    params = models.init_params(model, shape, key=jax.random.key(0))
    x = jnp.zeros((2, *shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda z: model.apply(params, z))(x)
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}


@pytest.mark.parametrize("backend, expected", [("cpu", "fast"), ("gpu", "xla"), ("tpu", "xla")])
def test_impl_auto_resolves_per_platform(monkeypatch, backend, expected, rng):
    """impl="auto" (the default) takes the custom CPU lowering on CPU and XLA's own convolutions elsewhere."""
    assert models.LeNet5().impl == "auto"
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert models.resolve_impl("auto") == expected
    assert models.resolve_impl("fast") == "fast" and models.resolve_impl("xla") == "xla"
    auto = models.create("lenet5", widen_factor=0.25)
    prims = _primitives(auto, (8, 8, 1))
    assert any("custom_vjp" in p for p in prims) == (expected == "fast"), prims
    assert ("reduce_window_max" in prims) == (expected == "xla"), prims
    # the same function and parameters under every lowering
    params = models.init_params(auto, (8, 8, 1), key=jax.random.key(0))
    x = rng.uniform(0, 1, size=(3, 8, 8, 1)).astype(np.float32)
    ref = models.create("lenet5", widen_factor=0.25, impl=expected).apply(params, x)
    np.testing.assert_array_equal(np.asarray(auto.apply(params, x)), np.asarray(ref))


def test_lenet5_fast_lowering_differentiable_twice(rng):
    """Double backpropagation (gradient regularisation) through the custom-VJP LeNet5."""
    _check_double_backprop(models.create("lenet5", widen_factor=0.25), (8, 8, 1), rng)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smallcnn", "wong_kolter", "wideresnet", "wideresnet_plain"])
def test_models_differentiable_twice(name, rng):
    if name == "wideresnet_plain":
        model = models.create("wideresnet", depth=10, widen_factor=0.5, norm="none", standardize="none")
        _check_double_backprop(model, SHAPES["wideresnet"], rng)
    else:
        _check_double_backprop(models.create(name, **SMALL[name]), SHAPES[name], rng)


@pytest.mark.parametrize(
    "name, kw, shape, match",
    [
        ("wideresnet", dict(depth=11), (16, 16, 3), "depth"),
        ("wideresnet", dict(depth=10, widen_factor=0.0), (16, 16, 3), "widen_factor"),
        ("wideresnet", dict(depth=10, norm="batch"), (16, 16, 3), "norm"),
        ("wideresnet", dict(depth=10, standardize="zca"), (16, 16, 3), "standardize"),
        ("smallcnn", {}, (8, 8, 1), "x"),
        ("smallcnn", dict(widen_factor=-1.0), (28, 28, 1), "widen_factor"),
        ("wong_kolter", dict(num_classes=1), (28, 28, 1), "num_classes"),
        ("wong_kolter", dict(std=0.0), (28, 28, 1), "std"),
        ("mlp", dict(hidden=(0,)), (8, 8, 1), "hidden"),
        ("lenet5", dict(impl="cuda"), (8, 8, 1), "impl"),
        ("ibp_small", {}, (6, 6, 1), "x"),
        ("ibp_medium", dict(widen_factor=0.0), (28, 28, 1), "widen_factor"),
        ("ibp_medium", dict(std=0.0), (28, 28, 1), "std"),
        ("mlp", dict(std=-1.0), (8, 8, 1), "std"),
    ],
)
def test_bad_configurations_rejected(name, kw, shape, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        models.init_params(models.create(name, **kw), shape, key=jax.random.key(0))


def test_init_params_key_is_keyword_only():
    model = models.create("mlp", hidden=(4,))
    with pytest.raises(TypeError):
        models.init_params(model, jax.random.key(0), (8, 8, 1))  # the old positional order
    with pytest.raises(ValueError, match="^input_shape"):
        models.init_params(model, (8, 0, 1), key=jax.random.key(0))


# ---------------------------------------------------------------------------
# build / save / load
# ---------------------------------------------------------------------------


def test_build_resolves_widen_factor():
    m = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), widen_factor="auto")
    assert m == models.create("lenet5", num_classes=10, widen_factor=0.5)
    assert models.build("lenet5", num_classes=3).widen_factor == 1.0  # the architecture's default
    assert models.build("mlp", num_classes=4, widen_factor="auto") == models.create("mlp", num_classes=4)
    assert models.accepts_widen("smallcnn") and not models.accepts_widen("mlp")
    assert models.resolve_widen("mlp", "auto") is None and models.resolve_widen("lenet5", 0.25) == 0.25


@pytest.mark.parametrize("kw, match", [
    (dict(arch="vgg19"), "^arch"),
    (dict(arch="mlp", widen_factor=0.5), "^widen_factor"),
    (dict(arch="lenet5", widen_factor="wide"), "^widen_factor"),
    (dict(arch="lenet5", widen_factor=-1.0), "^widen_factor"),
    (dict(arch="lenet5", num_classes=1), "^num_classes"),
    (dict(arch="lenet5", input_shape=(30, 30, 1)), "^(input_shape|x)"),
    (dict(arch="lenet5", input_shape=(0, 28, 1)), "^input_shape"),
])
def test_build_rejects_bad_settings(kw, match):
    args = {"num_classes": 10, **kw}
    arch = args.pop("arch")
    with pytest.raises(ValueError, match=match):
        models.build(arch, **args)


@pytest.mark.parametrize("arch, widen", [("lenet5", 0.25), ("mlp", None)])
def test_save_load_roundtrip(tmp_path, rng, arch, widen):
    shape = (8, 8, 1)
    model = models.build(arch, num_classes=5, input_shape=shape, widen_factor=widen)
    params = models.init_params(model, shape, key=jax.random.key(3))
    out = models.save(tmp_path / "m", arch=arch, num_classes=5, widen_factor=widen, input_shape=shape,
                      params=params, record={"accuracy": 0.5})
    assert (out / "model.json").is_file() and (out / "model.msgpack").is_file()
    got = models.load(out)
    assert isinstance(got, models.SavedModel)
    assert got.model == model and got.input_shape == shape and got.widen_factor == widen
    assert got.record == {"accuracy": 0.5} and got.to_dict()["arch"] == arch
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = rng.uniform(0, 1, size=(3, *shape)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(got.logits_fn()(x)), np.asarray(model.apply(params, x)))


def test_load_missing_files(tmp_path):
    with pytest.raises(ValueError, match="^path: folder"):
        models.load(tmp_path)
    with pytest.raises(ValueError, match="^model: folder"):
        models.load(tmp_path, name="model")


def _saved_mlp(tmp_path):
    shape = (8, 8, 1)
    model = models.build("mlp", num_classes=5, input_shape=shape)
    params = models.init_params(model, shape, key=jax.random.key(3))
    return models.save(tmp_path / "m", arch="mlp", num_classes=5, widen_factor=None, input_shape=shape,
                       params=params), params


def _without_checksum(folder):
    import json

    spec = json.loads((folder / "model.json").read_text())
    spec.pop("params_sha256")
    (folder / "model.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("damage, match", [
    ("truncate_params", "model.msgpack' is damaged"),
    ("flip_params", "model.msgpack' is damaged"),
    ("truncate_params_old", "model.msgpack' is damaged or not parameters"),  # no checksum: the parse fails
    ("random_params_old", "model.msgpack' is damaged or not parameters"),
    ("foreign_params_old", "model.msgpack' is damaged or not parameters"),
    ("truncate_json", "model.json' is damaged or not a JSON file"),
    ("random_json", "model.json' is damaged or not a JSON file"),
    ("empty_json_object", "model.json' is not a jaxbound model description"),
])
def test_damaged_model_files_raise_one_line_naming_the_file(tmp_path, damage, match):
    folder, _ = _saved_mlp(tmp_path)
    raw, spec = (folder / "model.msgpack").read_bytes(), (folder / "model.json").read_bytes()
    if damage.endswith("_old"):
        _without_checksum(folder)
    if damage.startswith("truncate_params"):
        (folder / "model.msgpack").write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_params":  # same length, one byte changed: only the checksum sees it
        (folder / "model.msgpack").write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    elif damage == "random_params_old":
        (folder / "model.msgpack").write_bytes(np.random.default_rng(0).integers(0, 256, len(raw), np.uint8).tobytes())
    elif damage == "foreign_params_old":
        from flax import serialization

        other = models.init_params(models.build("mlp", num_classes=3), (8, 8, 1), key=jax.random.key(0))
        (folder / "model.msgpack").write_bytes(serialization.to_bytes(other))
    elif damage == "truncate_json":
        (folder / "model.json").write_bytes(spec[: len(spec) // 2])
    elif damage == "random_json":
        (folder / "model.json").write_bytes(b"\xff\xfe\x00\x81" * 8)
    elif damage == "empty_json_object":
        (folder / "model.json").write_text("{}")
    with pytest.raises(ValueError, match="^model: ") as err:
        models.load(folder, name="model")
    msg = str(err.value)
    assert match in msg and "\n" not in msg and "train the model again" in msg


def test_model_saved_without_checksum_still_loads(tmp_path):
    folder, params = _saved_mlp(tmp_path)
    _without_checksum(folder)
    got = models.load(folder)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_name_is_not_a_module():
    params = models.init_params(models.build("mlp", num_classes=3), (8, 8, 1), key=jax.random.key(0))
    with pytest.raises(TypeError, match="^model: expected a Flax module, got the name 'mlp'.*models.build"):
        models.init_params("mlp", (8, 8, 1), key=jax.random.key(0))
    with pytest.raises(TypeError, match="^model: expected a Flax module, got the name 'mlp'"):
        models.logits_fn("mlp", params)
    with pytest.raises(TypeError, match="^model: expected a Flax module, got int"):
        models.logits_fn(3, params)
    with pytest.raises(TypeError, match="^params: expected the parameter mapping"):
        models.logits_fn(models.build("mlp", num_classes=3), None)


@pytest.mark.parametrize("jit", [False, True])
def test_parameters_of_another_architecture_name_params(jit):
    x = np.zeros((2, 28, 28, 1), np.float32)
    lenet = models.build("lenet5", num_classes=10, widen_factor=0.125)
    mlp_params = models.init_params(models.build("mlp", num_classes=10), (28, 28, 1), key=jax.random.key(0))
    fn = models.logits_fn(lenet, mlp_params)
    fn = jax.jit(fn) if jit else fn
    with pytest.raises(ValueError, match="^params: do not fit LeNet5"):
        fn(x)
    wide = models.init_params(models.build("lenet5", num_classes=10, widen_factor=0.25), (28, 28, 1),
                              key=jax.random.key(0))
    with pytest.raises(ValueError, match="^params: do not fit LeNet5"):
        models.logits_fn(lenet, wide)(x)  # same tree, other widths
