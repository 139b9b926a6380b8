"""Bad command lines: every error is one line on stderr naming the option, exit status 2, no traceback.

Run in-process through ``jaxbound.cli.main`` (the console script's entry point) so the table stays fast.
"""

import pytest

from jaxbound import cli

_PASSWD = "/etc/passwd"  # an existing file, where a folder is needed

CASES = [
    # (id, argv, text that must appear in the one error line)
    ("no command", [], "COMMAND"),
    ("unknown command", ["fly"], "COMMAND"),
    ("unknown option", ["knn", "--colour", "red"], "--colour"),
    ("knn k text", ["knn", "--k", "x"], "--k"),
    ("knn k zero", ["knn", "--k", "0", "--out", "/tmp/jb_bi/knn.npz"], "k"),
    ("knn norm", ["knn", "--norm", "l0.5", "--out", "/tmp/jb_bi/knn.npz"], "norm"),
    ("knn precision", ["knn", "--precision", "float16"], "--precision"),
    ("knn out folder", ["knn", "--out", "/tmp"], "out"),
    ("knn out below a file", ["knn", "--out", f"{_PASSWD}/knn.npz"], "out"),
    ("knn block size", ["knn", "--block-size", "0", "--out", "/tmp/jb_bi/knn.npz"], "block_size"),
    ("dataset unknown", ["knn", "--dataset", "imagenet9", "--out", "/tmp/jb_bi/knn.npz"], "dataset"),
    ("limit one", ["knn", "--limit", "1", "--out", "/tmp/jb_bi/knn.npz"], "limit"),
    ("split unknown", ["knn", "--split", "validation", "--out", "/tmp/jb_bi/knn.npz"], "split"),
    ("optprob classes one", ["optprob", "--classes", "3", "--out", "/tmp/jb_bi/o.json"], "classes"),
    ("optprob classes text", ["optprob", "--classes", "a,b", "--out", "/tmp/jb_bi/o.json"], "classes"),
    ("optprob eps negative", ["optprob", "--eps", "-1", "--out", "/tmp/jb_bi/o.json"], "eps"),
    ("optprob eps text", ["optprob", "--eps", "big", "--out", "/tmp/jb_bi/o.json"], "eps"),
    ("optprob norm", ["optprob", "--norm", "l0", "--out", "/tmp/jb_bi/o.json"], "norm"),
    ("optprob out folder", ["optprob", "--out", "/tmp"], "out"),
    ("attack no model", ["attack", "--norm", "linf", "--eps", "0.1"], "--model"),
    ("attack no norm", ["attack", "--model", "m:f", "--eps", "0.1", "--out", "/tmp/jb_bi/a.json"], "norm"),
    ("attack bad model", ["attack", "--model", "no_such_mod_xyz:f", "--norm", "linf", "--eps", "0.1",
                          "--out", "/tmp/jb_bi/a.json"], "model"),
    ("attack kind", ["attack", "--model", "m:f", "--attack", "magic"], "--attack"),
    ("attack steps", ["attack", "--model", "m:f", "--norm", "linf", "--eps", "0.1", "--steps", "0",
                      "--out", "/tmp/jb_bi/a.json"], "steps"),
    ("report out is a file", ["report", "--out", _PASSWD], "out"),
    ("report norm", ["report", "--norm", "l3", "--out", "/tmp/jb_bi/r"], "norm"),
    ("report alpha", ["report", "--alpha", "2", "--out", "/tmp/jb_bi/r"], "alpha"),
    ("report regions", ["report", "--regions", "0", "--out", "/tmp/jb_bi/r"], "n_regions"),
    ("report protocol", ["report", "--protocol", "cheat", "--out", "/tmp/jb_bi/r"], "protocol"),
    ("report pairs", ["report", "--pairs", "some", "--out", "/tmp/jb_bi/r"], "pairs"),
    ("report models", ["report", "--models", "magic", "--out", "/tmp/jb_bi/r"], "models"),
    ("report epochs", ["report", "--epochs", "0", "--out", "/tmp/jb_bi/r"], "epochs"),
    ("report eps", ["report", "--eps", "0.1,x", "--out", "/tmp/jb_bi/r"], "eps"),
    ("report seed", ["report", "--seed", "one"], "--seed"),
    ("report model missing", ["report", "--model", "/tmp/jb_bi/no_model", "--out", "/tmp/jb_bi/r"], "model"),
    ("train epochs zero", ["train", "--epochs", "0", "--out", "/tmp/jb_bi/t"], "epochs"),
    ("train out is a file", ["train", "--out", _PASSWD], "out"),
    ("train arch", ["train", "--arch", "resnet9000", "--out", "/tmp/jb_bi/t"], "arch"),
    ("train recipe", ["train", "--recipe", "magic", "--out", "/tmp/jb_bi/t"], "recipe"),
    ("train lr", ["train", "--lr", "-1", "--out", "/tmp/jb_bi/t"], "learning_rate"),
    ("concentration alpha", ["concentration", "--alpha", "0", "--out", "/tmp/jb_bi/c.json"], "alpha"),
    ("concentration method", ["concentration", "--method", "magic"], "--method"),
    ("lipschitz norm", ["lipschitz", "--norm", "nope", "--out", "/tmp/jb_bi/l.json"], "norm"),
    ("demo out is a file", ["demo", "--out", _PASSWD], "out"),
    ("demo k", ["demo", "--k", "0", "--out", "/tmp/jb_bi/d"], "k"),
]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line(argv, needle, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0], err
    assert needle in lines[0], lines[0]


def test_enough_cases():
    assert len(CASES) >= 30
