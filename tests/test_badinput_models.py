"""Bad inputs to jaxbound.models: each raises ValueError/TypeError naming the public argument."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxbound import models
from _badinput import check, params, unique_ids

KEY = jax.random.key(0)
MLP = models.build("mlp", num_classes=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "model"
    p = models.init_params(MLP, (4, 4, 1), key=KEY)
    models.save(folder, arch="mlp", num_classes=3, widen_factor=None, input_shape=(4, 4, 1), params=p)
    return folder


def _damaged(saved, tmp, which, content):
    import shutil

    dst = tmp / "copy"
    shutil.copytree(saved, dst)
    (dst / which).write_bytes(content(dst / which))
    return dst


def _mlp_params():
    return models.init_params(MLP, (4, 4, 1), key=KEY)


CASES = [
    ("create unknown", lambda: models.create("nope"), ValueError, "name"),
    ("create not str", lambda: models.create(3), ValueError, "name"),
    ("build unknown arch", lambda: models.build("resnet999", num_classes=10), ValueError, "arch"),
    ("build arch not str", lambda: models.build(None, num_classes=10), ValueError, "arch"),
    ("build one class", lambda: models.build("mlp", num_classes=1), ValueError, "num_classes"),
    ("build float classes", lambda: models.build("mlp", num_classes=2.5), ValueError, "num_classes"),
    ("build bool classes", lambda: models.build("mlp", num_classes=True), ValueError, "num_classes"),
    ("build widen for mlp", lambda: models.build("mlp", num_classes=10, widen_factor=2.0), ValueError,
     "widen_factor"),
    ("build negative widen", lambda: models.build("lenet5", num_classes=10, widen_factor=-1.0), ValueError,
     "widen_factor"),
    ("build nan widen", lambda: models.build("lenet5", num_classes=10, widen_factor=float("nan")), ValueError,
     "widen_factor"),
    ("build widen word", lambda: models.build("lenet5", num_classes=10, widen_factor="wide"), ValueError,
     "widen_factor"),
    ("build too small input", lambda: models.build("lenet5", num_classes=10, input_shape=(2, 2, 1)), ValueError,
     "input_shape"),
    ("build zero input size", lambda: models.build("mlp", num_classes=10, input_shape=(0, 4, 1)), ValueError,
     "input_shape"),
    ("build input_shape text", lambda: models.build("mlp", num_classes=10, input_shape="28x28"), ValueError,
     "input_shape"),
    ("resolve_impl unknown", lambda: models.resolve_impl("gpu"), ValueError, "impl"),
    ("resolve_impl none", lambda: models.resolve_impl(None), ValueError, "impl"),
    ("resolve_widen word", lambda: models.resolve_widen("lenet5", "big"), ValueError, "widen_factor"),
    ("init_params name", lambda: models.init_params("mlp", (4, 4, 1), key=KEY), TypeError, "model"),
    ("init_params none", lambda: models.init_params(None, (4, 4, 1), key=KEY), TypeError, "model"),
    ("init_params int key", lambda: models.init_params(MLP, (4, 4, 1), key=0), ValueError, "key"),
    ("init_params bad shape", lambda: models.init_params(MLP, (-1, 4), key=KEY), ValueError, "input_shape"),
    ("init_params shape none", lambda: models.init_params(MLP, None, key=KEY), ValueError, "input_shape"),
    ("logits_fn name", lambda: models.logits_fn("mlp", {}), TypeError, "model"),
    ("logits_fn params none", lambda: models.logits_fn(MLP, None), TypeError, "params"),
    ("logits_fn params list", lambda: models.logits_fn(MLP, [1, 2]), TypeError, "params"),
    ("logits_fn other architecture", lambda: models.logits_fn(models.build("smallcnn", num_classes=3),
                                                              _mlp_params())(np.zeros((1, 16, 16, 1), np.float32)),
     ValueError, "params"),
    ("logits_fn other input size", lambda: models.logits_fn(MLP, _mlp_params())(np.zeros((1, 5, 5, 1), np.float32)),
     ValueError, "params"),
    ("save unknown arch", lambda: models.save("/tmp/bi/s", arch="nope", num_classes=3, widen_factor=None,
                                              input_shape=(4, 4, 1), params={}), ValueError, "arch"),
    ("save bad input_shape", lambda: models.save("/tmp/bi/s", arch="mlp", num_classes=3, widen_factor=None,
                                                 input_shape=(0,), params={}), ValueError, "input_shape"),
    ("save folder none", lambda: models.save(None, arch="mlp", num_classes=3, widen_factor=None,
                                             input_shape=(4, 4, 1), params={}), TypeError, "folder"),
    ("load missing folder", lambda: models.load("/nonexistent/model"), ValueError, "path"),
    ("load named argument", lambda: models.load("/nonexistent/model", name="model"), ValueError, "model"),
]

DAMAGED = [
    ("load truncated msgpack", "model.msgpack", lambda f: f.read_bytes()[:10]),
    ("load random msgpack", "model.msgpack", lambda f: bytes(range(256)) * 3),
    ("load empty msgpack", "model.msgpack", lambda f: b""),
    ("load truncated json", "model.json", lambda f: f.read_bytes()[:15]),
    ("load empty json object", "model.json", lambda f: b"{}"),
    ("load json list", "model.json", lambda f: b"[1, 2]"),
    ("load undecodable json", "model.json", lambda f: b"\xff\xfe\xfd"),
]


def test_enough_distinct_cases():
    assert len(CASES) + len(DAMAGED) >= 30 and unique_ids(CASES + DAMAGED)


@params(CASES)
def test_bad_input(thunk, exc, arg):
    check(thunk, exc, arg)


@pytest.mark.parametrize("which, content", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_damaged_saved_model(saved, tmp_path, which, content):
    folder = _damaged(saved, tmp_path, which, content)
    check(lambda: models.load(folder), ValueError, "path")
