"""Bad input to every public function of jaxbound.bounds: the error type and the argument it names.

Each row is (call, exception type, argument name); the message must start with the argument's name.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxbound import bounds

_XA = np.array([[0.0, 0.0], [1.0, 0.0]])
_XB = np.array([[0.5, 0.0], [3.0, 0.0]])
_X = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [3.0, 0.0]])
_Y = np.array([0, 1, 2, 0])
_G = bounds.graph_from_edges(2, 2, [0, 1], [0, 0])
_H = bounds.hypergraph_from_edges([0, 1, 2], [[0, 1], [1, 2]])
_NAN = float("nan")


def _cg(**kw):
    args = dict(eps=0.5, norm="l2")
    args.update(kw)
    xa, xb = args.pop("x_a", _XA), args.pop("x_b", _XB)
    return lambda: bounds.conflict_graph(xa, xb, **args)


def _ch(**kw):
    args = dict(eps=0.5, norm="l2")
    args.update(kw)
    x, y = args.pop("x", _X), args.pop("labels", _Y)
    return lambda: bounds.conflict_hypergraph(x, y, **args)


def _gb(**kw):
    args = dict(mu=np.ones(2), sigma=None, eps=0.5, norm="l2")
    args.update(kw)
    mu, sigma = args.pop("mu"), args.pop("sigma")
    return lambda: bounds.gaussian_bounds(mu, sigma, **args)


CASES = [
    # conflict_graph
    ("cg x_a 1-D", _cg(x_a=np.zeros(3)), ValueError, "x_a"),
    ("cg x_a NaN", _cg(x_a=np.array([[0.0, _NAN]])), ValueError, "x_a"),
    ("cg x_b dim", _cg(x_b=np.zeros((2, 3))), ValueError, "x_b"),
    ("cg eps < 0", _cg(eps=-1.0), ValueError, "eps"),
    ("cg eps NaN", _cg(eps=_NAN), ValueError, "eps"),
    ("cg norm", _cg(norm="cosine"), ValueError, "norm"),
    ("cg weights_a negative", _cg(weights_a=[1.0, -1.0]), ValueError, "weights_a"),
    ("cg weights_b length", _cg(weights_b=[1.0]), ValueError, "weights_b"),
    ("cg weights all zero", _cg(weights_a=[0, 0], weights_b=[0, 0]), ValueError, "weights_a"),
    ("cg block_size", _cg(block_size=0), ValueError, "block_size"),
    ("cg precision", _cg(precision="float16"), ValueError, "precision"),
    ("cg norm None", _cg(norm=None), ValueError, "norm"),
    # graph_from_edges
    ("gfe n_a zero", lambda: bounds.graph_from_edges(0, 1, [], []), ValueError, "n_a"),
    ("gfe rows range", lambda: bounds.graph_from_edges(1, 1, [1], [0]), ValueError, "rows"),
    ("gfe cols float", lambda: bounds.graph_from_edges(1, 1, [0], [0.5]), ValueError, "cols"),
    ("gfe n_b float", lambda: bounds.graph_from_edges(2, 2.0, [0], [0]), ValueError, "n_b"),
    ("gfe lengths", lambda: bounds.graph_from_edges(2, 2, [0, 1], [0]), ValueError, "cols"),
    ("gfe weights bool", lambda: bounds.graph_from_edges(1, 1, [0], [0], weights_a=[True]), ValueError,
     "weights_a"),
    # optprob, min_zero_one_loss
    ("optprob graph", lambda: bounds.optprob("graph"), ValueError, "graph"),
    ("optprob backend", lambda: bounds.optprob(_G, backend="cplex"), ValueError, "backend"),
    ("optprob hypergraph", lambda: bounds.optprob(_H), ValueError, "graph"),
    ("zero-one graph", lambda: bounds.min_zero_one_loss(None), ValueError, "graph"),
    ("zero-one backend", lambda: bounds.min_zero_one_loss(_G, backend="x"), ValueError, "backend"),
    ("verify tol", lambda: bounds.optprob(_G).verify(-1.0), ValueError, "tol"),
    # pair_bounds
    ("pb eps", lambda: bounds.pair_bounds(_XA, _XB, eps=-0.1, norm="l2"), ValueError, "eps"),
    ("pb norm", lambda: bounds.pair_bounds(_XA, _XB, eps=0.1, norm="cosine"), ValueError, "norm"),
    ("pb x_b NaN", lambda: bounds.pair_bounds(_XA, np.full((1, 2), _NAN), eps=0.1, norm="l2"), ValueError, "x_b"),
    ("pb verify not a bool", lambda: bounds.pair_bounds(_XA, _XB, eps=0.1, norm="l2", verify="yes"), ValueError,
     "verify"),
    ("pb backend", lambda: bounds.pair_bounds(_XA, _XB, eps=0.1, norm="l2", backend="x"), ValueError, "backend"),
    # gaussian_bounds
    ("gb mu empty", _gb(mu=np.zeros(0)), ValueError, "mu"),
    ("gb mu NaN", _gb(mu=np.array([1.0, _NAN])), ValueError, "mu"),
    ("gb sigma not PD", _gb(sigma=np.array([[1.0, 2.0], [2.0, 1.0]])), ValueError, "sigma"),
    ("gb sigma shape", _gb(sigma=np.eye(3)), ValueError, "sigma"),
    ("gb eps < 0", _gb(eps=[-0.1, 0.2]), ValueError, "eps"),
    ("gb eps NaN", _gb(eps=_NAN), ValueError, "eps"),
    ("gb norm", _gb(norm="l3"), ValueError, "norm"),
    ("gb p1", _gb(p1=1.0), ValueError, "p1"),
    ("gb tol", _gb(tol=-1.0), ValueError, "tol"),
    ("gb max_iter", _gb(max_iter=0), ValueError, "max_iter"),
    # clipped_soft_labels
    ("csl result shape", lambda: bounds.clipped_soft_labels(np.zeros((2, 2)), [0, 1]), ValueError, "result"),
    ("csl result range", lambda: bounds.clipped_soft_labels(np.array([0.5, 1.5]), [0, 1]), ValueError, "result"),
    ("csl labels length", lambda: bounds.clipped_soft_labels(np.array([0.5, 0.5]), [0, 1, 1]), ValueError,
     "labels"),
    ("csl one label", lambda: bounds.clipped_soft_labels(np.array([0.5, 0.5]), [1, 1]), ValueError, "labels"),
    ("csl labels float", lambda: bounds.clipped_soft_labels(np.array([0.5, 0.5]), [0.0, 1.0]), ValueError,
     "labels"),
    ("csl clip", lambda: bounds.clipped_soft_labels(np.array([0.5, 0.5]), [0, 1], clip=0.4), ValueError, "clip"),
    ("csl num_classes", lambda: bounds.clipped_soft_labels(np.array([0.5, 0.5]), [0, 3], num_classes=2),
     ValueError, "num_classes"),
    # conflict_hypergraph
    ("ch one class", _ch(labels=np.zeros(4, int)), ValueError, "labels"),
    ("ch labels length", _ch(labels=np.array([0, 1, 2])), ValueError, "labels"),
    ("ch eps < 0", _ch(eps=-0.5), ValueError, "eps"),
    ("ch eps NaN", _ch(eps=_NAN), ValueError, "eps"),
    ("ch weights negative", _ch(weights=[1, 1, 1, -1]), ValueError, "weights"),
    ("ch labels float", _ch(labels=_Y.astype(float)), ValueError, "labels"),
    ("ch labels negative", _ch(labels=np.array([0, 1, 2, -1])), ValueError, "labels"),
    ("ch block_size", _ch(block_size=0), ValueError, "block_size"),
    ("ch degree 4", _ch(degree=4), ValueError, "degree"),
    ("ch degree 3 l1", _ch(degree=3, norm="l1"), ValueError, "degree"),
    ("ch x NaN", _ch(x=np.full((4, 2), _NAN)), ValueError, "x"),
    ("ch empty x", _ch(x=np.zeros((0, 2)), labels=np.zeros(0, int)), ValueError, "x"),
    # hypergraph_from_edges, multiclass_zero_one
    ("hfe same labels", lambda: bounds.hypergraph_from_edges([0, 0, 1], [[0, 1]]), ValueError, "edges"),
    ("hfe hyperedge shape", lambda: bounds.hypergraph_from_edges([0, 1, 2], [], [[0, 1]]), ValueError,
     "hyperedges"),
    ("hfe edges float", lambda: bounds.hypergraph_from_edges([0, 1], [[0.0, 1.0]]), ValueError, "edges"),
    ("mc graph", lambda: bounds.multiclass_zero_one(_G), ValueError, "graph"),
    ("mc backend", lambda: bounds.multiclass_zero_one(_H, backend="mosek"), ValueError, "backend"),
    ("mc backend None", lambda: bounds.multiclass_zero_one(_H, backend=None), ValueError, "backend"),
    ("mc flow_backend", lambda: bounds.multiclass_zero_one(_H, flow_backend="glop"), ValueError, "flow_backend"),
    ("fpc labels float", lambda: bounds.first_per_class(np.array([0.0, 1.0]), n=1), ValueError, "labels"),
    ("fpc labels 2-D", lambda: bounds.first_per_class(np.zeros((2, 2), int), n=1), ValueError, "labels"),
    ("fpc labels empty", lambda: bounds.first_per_class(np.zeros(0, int), n=1), ValueError, "labels"),
    ("fpc labels negative", lambda: bounds.first_per_class(np.array([0, -1]), n=1), ValueError, "labels"),
    ("fpc n 0", lambda: bounds.first_per_class(_Y, n=0), ValueError, "n"),
    ("fpc n float", lambda: bounds.first_per_class(_Y, n=2.0), ValueError, "n"),
    ("mc verify tol", lambda: bounds.multiclass_zero_one(_H).verify(_NAN), ValueError, "tol"),
]


@pytest.mark.parametrize("name,call,exc,arg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(name, call, exc, arg):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(f"{arg}:"), f"{name}: message {str(info.value)!r} does not start with {arg!r}"


def test_table_covers_every_public_function():
    covered = {"conflict_graph": "cg", "graph_from_edges": "gfe", "optprob": "optprob",
               "min_zero_one_loss": "zero-one", "pair_bounds": "pb", "gaussian_bounds": "gb",
               "clipped_soft_labels": "csl", "conflict_hypergraph": "ch", "hypergraph_from_edges": "hfe",
               "multiclass_zero_one": "mc", "first_per_class": "fpc"}
    prefixes = {c[0].split()[0] for c in CASES}
    assert set(covered.values()) <= prefixes
    functions = {name for name in bounds.__all__ if callable(getattr(bounds, name))
                 and not isinstance(getattr(bounds, name), type)}
    assert functions == set(covered)
    assert len(CASES) >= 30
