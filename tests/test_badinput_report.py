"""Bad inputs of jaxbound.report: each raises ValueError/TypeError naming the public argument."""

import jax
import numpy as np
import pytest

from jaxbound import data
from jaxbound import report as R

KEY = jax.random.key(0)


def _ds(n=6, k=2, nan=False):
    imgs = np.zeros((n, 2, 2, 1), np.float32)
    imgs[:, 0, 0, 0] = np.linspace(0, 1, n)
    if nan:
        imgs[0, 0, 0, 0] = np.nan
    return data.Dataset(images=imgs, labels=np.arange(n) % k, name="toy", split="train", num_classes=k)


def _fn(x):
    return jax.numpy.zeros((x.shape[0], 10))


CASES = [
    # (id, callable, expected exception, argument named in the message)
    ("parse_eps empty", lambda: R.parse_eps(""), ValueError, "eps"),
    ("parse_eps text", lambda: R.parse_eps("a,b"), ValueError, "eps"),
    ("parse_eps negative", lambda: R.parse_eps("-0.1"), ValueError, "eps"),
    ("parse_eps nan", lambda: R.parse_eps([float("nan")]), ValueError, "eps"),
    ("parse_eps inf", lambda: R.parse_eps([float("inf")]), ValueError, "eps"),
    ("default_eps norm", lambda: R.default_eps("nope"), ValueError, "norm"),
    ("load_callable no colon", lambda: R.load_callable("nomodule"), ValueError, "model"),
    ("load_callable missing module", lambda: R.load_callable("no_such_mod_xyz:f"), ValueError, "model"),
    ("load_callable missing attr", lambda: R.load_callable("jaxbound.report:no_such_fn"), ValueError, "model"),
    ("load_model empty folder", lambda: R.load_model("/tmp/bi"), ValueError, "model"),
    ("restrict_to_pair equal", lambda: R.restrict_to_pair(_fn, 3, 3), ValueError, "b"),
    ("restrict_to_pair negative a", lambda: R.restrict_to_pair(_fn, -1, 3), ValueError, "a"),
    ("restrict_to_pair negative b", lambda: R.restrict_to_pair(_fn, 1, -3), ValueError, "b"),
    ("restrict_to_pair out of range", lambda: R.restrict_to_pair(_fn, 1, 12, num_classes=10), ValueError, "b"),
    ("restrict_to_pair out of range late", lambda: R.restrict_to_pair(_fn, 11, 1)(np.zeros((2, 3))), ValueError,
     "a"),
    ("restrict_to_pair not callable", lambda: R.restrict_to_pair("f", 0, 1), TypeError, "logits_fn"),
    ("restrict_to_pair float class", lambda: R.restrict_to_pair(_fn, 0.5, 1), (TypeError, ValueError), "a"),
    ("weak_attack_check n", lambda: R.weak_attack_check(0.1, 0.2, n=0), ValueError, "n"),
    ("weak_attack_check error", lambda: R.weak_attack_check(1.5, 0.2, n=4), ValueError, "attacked_error"),
    ("weak_attack_check bound", lambda: R.weak_attack_check(0.1, float("nan"), n=4), ValueError,
     "zero_one_bound"),
    ("geometry_summary norm", lambda: R.geometry_summary(np.zeros((4, 2)), np.arange(4) % 2, norm="nope"),
     ValueError, "norm"),
    ("geometry_summary labels", lambda: R.geometry_summary(np.zeros((4, 2)), np.arange(3), norm="l2"),
     ValueError, "labels"),
    ("geometry_summary empty", lambda: R.geometry_summary(np.zeros((0, 2)), np.zeros(0, int), norm="l2"),
     ValueError, "x"),
    ("config norm", lambda: R.ReportConfig(norm="l3"), ValueError, "norm"),
    ("config alpha", lambda: R.ReportConfig(alpha=1.5), ValueError, "alpha"),
    ("config alpha nan", lambda: R.ReportConfig(alpha=float("nan")), ValueError, "alpha"),
    ("config eps", lambda: R.ReportConfig(eps=(-1.0,)), ValueError, "eps"),
    ("config regions", lambda: R.ReportConfig(n_regions=()), ValueError, "n_regions"),
    ("config regions zero", lambda: R.ReportConfig(n_regions=(0,)), ValueError, "n_regions"),
    ("config protocol", lambda: R.ReportConfig(protocol="x"), ValueError, "protocol"),
    ("config pairs", lambda: R.ReportConfig(pairs="some"), ValueError, "pairs"),
    ("config models", lambda: R.ReportConfig(models=("magic",)), ValueError, "models"),
    ("config epochs", lambda: R.ReportConfig(epochs=0), ValueError, "epochs"),
    ("config batch", lambda: R.ReportConfig(batch_size=-1), ValueError, "batch_size"),
    ("config limit", lambda: R.ReportConfig(limit=1), ValueError, "limit"),
    ("config arch", lambda: R.ReportConfig(arch="resnet9000"), ValueError, "arch"),
    ("config lr", lambda: R.ReportConfig(learning_rate=0.0), ValueError, "learning_rate"),
    ("config restarts", lambda: R.ReportConfig(attack_restarts=0), ValueError, "attack_restarts"),
    ("config unknown field", lambda: R.report_config(colour="red"), TypeError, "colour"),
    ("render_markdown empty", lambda: R.render_markdown({}), ValueError, "rec"),
    ("render_markdown type", lambda: R.render_markdown([1, 2]), TypeError, "rec"),
    ("render_markdown schema", lambda: R.render_markdown({k: None for k in R._RECORD_KEYS} | {"schema": 99}),
     ValueError, "rec"),
    ("plot_report empty", lambda: R.plot_report({}, "/tmp/bi"), ValueError, "rec"),
    ("report dataset", lambda: R.report(key=KEY, dataset="nope", out_dir="/tmp/bi/r"), ValueError, "dataset"),
    ("report key", lambda: R.report(key=0, out_dir="/tmp/bi/r"), (TypeError, ValueError), "key"),
    ("report data", lambda: R.report(key=KEY, data=(1, 2), out_dir="/tmp/bi/r"), ValueError, "data"),
    ("report model", lambda: R.report(key=KEY, model=3, data=(_ds(), _ds()), out_dir="/tmp/bi/r"), ValueError,
     "model"),
    ("report nan pixels", lambda: R.report(key=KEY, data=(_ds(nan=True), _ds()), out_dir="/tmp/bi/r"), ValueError,
     "images"),  # the Dataset itself refuses NaN pixels
    ("report one class", lambda: R.report(key=KEY, data=(_ds(k=1), _ds(k=1)), out_dir="/tmp/bi/r", models=()),
     ValueError, "dataset"),
    ("report out is a file", lambda: R.report(key=KEY, data=(_ds(), _ds()), out_dir="/etc/passwd", models=()),
     ValueError, "out_dir"),
]


@pytest.mark.parametrize("fn,exc,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(fn, exc, arg):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(f"{arg}:") or f"{arg}" in msg.split(":")[0], msg


def test_enough_cases():
    assert len(CASES) >= 30
