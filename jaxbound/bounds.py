"""Optimal adversarial cross-entropy and 0-1 loss lower bounds (Bhagoji et al. 2021).

For an empirical two-class distribution and an adversary that moves each point
inside its ``eps``-ball, the smallest adversarial cross-entropy any classifier
can reach is the value of the convex program (3) of the paper over the
*conflict graph* (an edge joins two points of different classes whose balls
intersect). This module builds conflict graphs, solves (3) exactly with the
recursive max-flow algorithm OptProb (Algorithm 1), returns the optimal
correct-classification probabilities ``q*`` together with the adversary
strategy ``z*`` that certifies them (Lemma 2), computes the optimal adversarial
0-1 loss (a minimum vertex cover), the closed-form population bounds for a
Gaussian mixture (Theorem 2, Lemma 3) and the clipped soft labels of §4.3.

Public API:

* :func:`conflict_graph` / :func:`graph_from_edges` -> :class:`ConflictGraph`
* :func:`optprob` -> :class:`OptProbResult` (``q``, ``z``, ``loss``, ``verify()``)
* :func:`min_zero_one_loss` -> :class:`ZeroOneResult`
* :func:`pair_bounds` -> :class:`PairBounds` (class pair -> graph -> 0-1 loss
  and OptProb cross-entropy in one call)
* :func:`gaussian_bounds` -> :class:`GaussianBounds`
* :func:`clipped_soft_labels`
* :func:`conflict_hypergraph` / :func:`hypergraph_from_edges` ->
  :class:`ConflictHypergraph`, :func:`multiclass_zero_one` ->
  :class:`MulticlassResult`: the optimal adversarial 0-1 loss over all
  classes (Dai et al. 2023), ``L*(2)`` by one max flow, ``L*(3)`` by HiGHS;
  :func:`first_per_class`, its class-balanced sample.

Weights and exactness. Vertex weights ``p`` may be any non-negative finite
numbers (uniform by default) and are normalised to sum 1. Internally they are
converted *exactly* to integers (every float is a dyadic rational; the common
denominator is factored out, and so is the gcd), so the max-flow capacities of
OptProb are exact integers: nothing is rounded. Uniform or integer weights
(counts, duplicated points) give small integers and OR-Tools' int64 max-flow;
general float weights can need integers beyond int64 and then run on the exact
(slower) networkx backend. See :mod:`jaxbound.flow`.

Vertex order: every per-vertex array lists class ``a`` first, then class ``b``.

References:
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (program
  (3), Algorithm 1, Theorems 1-3, Lemma 3, §4.3).
  Bhagoji, Cullina, Mittal. "Lower bounds on adversarial robustness from
  optimal transport." NeurIPS 2019, arXiv:1909.12272 (the 0-1 loss of the
  conflict graph; Lemma 1, the optimal Gaussian translation).
  Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
  optimal 0-1 loss for multi-class classification with a test-time
  attacker." NeurIPS 2023, arXiv:2302.10722 (conflict hypergraphs, the
  LP of the optimal multi-class 0-1 loss and its truncations L*(k)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbound import _checks, distributed, flow, lp

__all__ = [
    "ConflictGraph",
    "Verification",
    "OptProbResult",
    "ZeroOneResult",
    "PairBounds",
    "GaussianBounds",
    "conflict_graph",
    "graph_from_edges",
    "optprob",
    "min_zero_one_loss",
    "pair_bounds",
    "gaussian_bounds",
    "clipped_soft_labels",
    "ConflictHypergraph",
    "MulticlassResult",
    "conflict_hypergraph",
    "hypergraph_from_edges",
    "multiclass_zero_one",
    "first_per_class",
]


# ---------------------------------------------------------------------------
# Conflict graphs
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ConflictGraph:
    """A conflict graph with weighted vertices (Bhagoji et al. 2021, §2.2).

    Vertices are the points of each class; global vertex ids are class-major
    (class 0 = ``a`` first, then class 1 = ``b``).

    Attributes:
      sizes: number of points per class, ``(n_a, n_b)``.
      edges: ``[E, 2]`` int64 conflict edges ``(i, j)``: point ``i`` of class
        ``a`` conflicts with point ``j`` of class ``b``. Unique and sorted.
      p: ``[n_a + n_b]`` float64 vertex probabilities (sum 1).
      weights: per class the exact integer vertex weights (int64, or object
        arrays of Python ints) with ``p = w / sum(w)``.
      eps: the adversary's budget the graph was built for (``None`` if given
        as an edge list).
      norm: the norm of the budget (``None`` if given as an edge list).

    The layout is kept open for the multi-class extension of §6: ``sizes``
    has one entry per class and a ``k``-partite hypergraph would store
    ``edges`` as ``[E, k]`` with ``-1`` for classes absent from a hyperedge.
    OptProb itself is defined for two classes.
    """

    sizes: tuple
    edges: np.ndarray
    p: np.ndarray
    weights: tuple = dataclasses.field(repr=False)
    eps: float | None = None
    norm: str | float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.sizes)

    @property
    def num_vertices(self) -> int:
        return int(sum(self.sizes))

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """``[num_classes]`` global id of each class's first vertex."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def class_of(self) -> np.ndarray:
        """``[N]`` class index (0 = ``a``, 1 = ``b``) of each vertex."""
        return np.repeat(np.arange(self.num_classes), self.sizes).astype(np.int64)

    def edge_vertices(self) -> np.ndarray:
        """``[E, 2]`` edges in global vertex ids."""
        return self.edges + self.offsets[None, :]

    def degrees(self) -> np.ndarray:
        """``[N]`` number of conflicts of each vertex."""
        return np.bincount(self.edge_vertices().ravel(), minlength=self.num_vertices).astype(np.int64)

    def to_dict(self) -> dict:
        """JSON summary (no arrays)."""
        deg = self.degrees()
        off = self.offsets
        return {
            "sizes": [int(s) for s in self.sizes],
            "num_edges": self.num_edges,
            "eps": self.eps,
            "norm": None if self.norm is None else str(self.norm),
            "class_mass": [float(self.p[o:o + s].sum()) for o, s in zip(off, self.sizes)],
            "isolated_vertices": int((deg == 0).sum()),
            "max_degree": int(deg.max()) if deg.size else 0,
        }


def _input_weights(w: Any, name: str, n: int) -> np.ndarray:
    """Validated weights: exact integer array if integer-typed, float64 otherwise."""
    if w is None:
        return np.ones(n, np.int64)
    arr = np.asarray(w)
    if arr.dtype == np.bool_:
        raise ValueError(f"{name}: expected numeric weights, got booleans")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{name}: expected shape [{n}], got {arr.shape}")
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"{name}: weights must be non-negative")
        if arr.size and int(arr.max()) >= 2**62:
            out = np.empty(n, dtype=object)
            out[:] = [int(v) for v in arr.tolist()]
            return out
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected real weights, got dtype {arr.dtype}")
    return _checks.check_weights(arr, name, n=n)


def _exact_integer_weights(wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale weights to coprime non-negative integers exactly (no rounding).

    Integer inputs are taken as they are; floats are dyadic rationals, so
    ``Fraction(v)`` is exact and the least common denominator turns them
    into integers. The common gcd is divided out.
    """

    def exact(arr: np.ndarray) -> list:
        if arr.dtype != np.float64:
            return [int(v) for v in arr.tolist()]
        if arr.size == 0 or (np.all(arr == np.floor(arr)) and arr.max() < 2.0**53):
            return [int(v) for v in arr.astype(np.int64).tolist()]
        return [Fraction(v) for v in arr.tolist()]

    vals = exact(wa) + exact(wb)
    den = 1
    for v in vals:
        if isinstance(v, Fraction) and v.denominator != 1:
            den = den * v.denominator // math.gcd(den, v.denominator)
    ints = [int(v * den) if isinstance(v, Fraction) else v * den for v in vals]
    g = math.gcd(*ints) if ints else 0
    if g > 1:
        ints = [v // g for v in ints]
    big = bool(ints) and max(ints) >= 2**62

    def pack(part: list) -> np.ndarray:
        if big:
            out = np.empty(len(part), dtype=object)
            out[:] = part
            return out
        return np.asarray(part, dtype=np.int64).reshape(len(part))

    return pack(ints[: wa.size]), pack(ints[wa.size:])


def _normalised(w_int: np.ndarray, total: int) -> np.ndarray:
    if w_int.dtype != object and total < 2**53:
        return w_int.astype(np.float64) / float(total)  # both exact: correctly rounded
    return np.array([int(v) / total for v in w_int.tolist()], np.float64)


def graph_from_edges(
    n_a: int,
    n_b: int,
    rows: Any,
    cols: Any,
    *,
    weights_a: Any = None,
    weights_b: Any = None,
) -> ConflictGraph:
    """A conflict graph from any user-defined edge list.

    Args:
      n_a: number of points of class ``a`` (>= 1).
      n_b: number of points of class ``b`` (>= 1).
      rows: ``[E]`` integer indices into class ``a``.
      cols: ``[E]`` integer indices into class ``b``; ``(rows[e], cols[e])``
        is a conflict. Repeated pairs are merged (a graph has no multi-edges).
      weights_a: ``[n_a]`` non-negative finite weights (default 1 each).
      weights_b: ``[n_b]`` non-negative finite weights (default 1 each).
        Weights of both classes share one scale and are normalised together
        to sum 1, so their totals set the class priors.

    Returns:
      :class:`ConflictGraph` with ``eps = norm = None``.

    Raises:
      ValueError: empty class, indices out of range or non-integer, shapes
        that disagree, negative / non-finite / all-zero weights.
    """
    n_a = _checks.check_int(n_a, "n_a", low=1)
    n_b = _checks.check_int(n_b, "n_b", low=1)
    r = np.asarray(rows)
    c = np.asarray(cols)
    for arr, nm, n in ((r, "rows", n_a), (c, "cols", n_b)):
        if arr.ndim != 1:
            raise ValueError(f"{nm}: expected a 1-D array of indices, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{nm}: indices must be integers, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
            raise ValueError(f"{nm}: index out of range [0, {n}): found range [{int(arr.min())}, {int(arr.max())}]")
    if r.shape != c.shape:
        raise ValueError(f"cols: has {c.size} entries but rows has {r.size}")
    if n_a * n_b >= 2**62:
        raise ValueError(f"n_b: n_a * n_b = {n_a * n_b} is too large for an edge list")
    r = r.astype(np.int64, copy=False)
    c = c.astype(np.int64, copy=False)
    if r.size:
        key = r * n_b + c
        if r.size > 1 and not np.all(key[1:] > key[:-1]):
            key = np.unique(key)
            r, c = key // n_b, key % n_b
    edges = np.stack([r, c], axis=1) if r.size else np.zeros((0, 2), np.int64)
    wa = _input_weights(weights_a, "weights_a", n_a)
    wb = _input_weights(weights_b, "weights_b", n_b)
    wa_i, wb_i = _exact_integer_weights(wa, wb)
    total = flow.sum_int(wa_i) + flow.sum_int(wb_i)
    if total == 0:
        raise ValueError("weights_a: all vertex weights (weights_a and weights_b) are zero")
    p = np.concatenate([_normalised(wa_i, total), _normalised(wb_i, total)])
    return ConflictGraph((n_a, n_b), np.ascontiguousarray(edges), p, (wa_i, wb_i))


def _flat_points(x: Any, name: str) -> np.ndarray:
    if isinstance(x, jax.Array):
        x = np.asarray(x)
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected points shaped [n, d] or [n, ...], got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))
    return np.asarray(_checks.check_points(arr, name))


def conflict_graph(
    x_a: Any,
    x_b: Any,
    *,
    eps: float,
    norm: Any,
    weights_a: Any = None,
    weights_b: Any = None,
    block_size: int | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> ConflictGraph:
    """The conflict graph of two classes under an ``eps``-ball adversary (§2.2, §4.1).

    ``x_i`` (class ``a``) and ``x'_j`` (class ``b``) conflict when their
    ``eps``-balls intersect, i.e. ``||x_i - x'_j|| <= 2 eps`` (closed; no
    domain restriction such as ``[0, 1]``). Edges come from
    :func:`jaxbound.geometry.radius_pairs`, which streams over blocks and
    decides boundary pairs exactly in float64.

    Args:
      x_a: ``[n_a, d]`` (or ``[n_a, ...]``, flattened) points of class ``a``.
      x_b: ``[n_b, d]`` points of class ``b``.
      eps: budget ``eps >= 0``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``.
      weights_a: ``[n_a]`` non-negative weights (default uniform).
      weights_b: ``[n_b]`` non-negative weights (default uniform).
      block_size: query rows per block for the distance kernel.
      precision: ``"float32"`` or ``"float64"`` for the fast distance pass.
      progress: show a progress bar.

    Returns:
      :class:`ConflictGraph`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (§2.2, §4.1).
    """
    from jaxbound import geometry

    xa = _flat_points(x_a, "x_a")
    xb = _flat_points(x_b, "x_b")
    _checks.check_same_dim(xa, xb, "x_a", "x_b")
    eps = _checks.check_scalar(eps, "eps", low=0.0)
    norm = _checks.canonical_norm(norm)
    # validate the weights before the (long) distance pass
    wa = _input_weights(weights_a, "weights_a", xa.shape[0])
    wb = _input_weights(weights_b, "weights_b", xb.shape[0])
    if not (np.any(wa != 0) or np.any(wb != 0)):
        raise ValueError("weights_a: all vertex weights (weights_a and weights_b) are zero")
    pairs = geometry.radius_pairs(xa, xb, radius=2.0 * eps, norm=norm, block_size=block_size,
                                  precision=precision, progress=progress)
    g = graph_from_edges(xa.shape[0], xb.shape[0], pairs.rows, pairs.cols,
                         weights_a=weights_a, weights_b=weights_b)
    return dataclasses.replace(g, eps=eps, norm=norm)


def _check_graph(graph: Any) -> ConflictGraph:
    if not isinstance(graph, ConflictGraph):
        raise ValueError(f"graph: expected a ConflictGraph, got {type(graph).__name__}")
    if graph.num_classes != 2 or graph.edges.ndim != 2 or graph.edges.shape[1] != 2:
        raise ValueError("graph: OptProb and the vertex-cover bound need a bipartite (two-class) graph")
    return graph


# ---------------------------------------------------------------------------
# OptProb
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verification:
    """Outcome of a certificate check.

    Attributes:
      passed: every violation is ``<= tol``.
      max_violation: the worst violation.
      tol: the tolerance used.
      violations: violation per condition (0 when satisfied).
    """

    passed: bool
    max_violation: float
    tol: float
    violations: dict

    def to_dict(self) -> dict:
        return {"passed": bool(self.passed), "max_violation": float(self.max_violation),
                "tol": float(self.tol), "violations": {k: float(v) for k, v in self.violations.items()}}


def _mt_z(graph: ConflictGraph, z_edge: np.ndarray, z_vertex: np.ndarray) -> np.ndarray:
    """``M^T z`` per vertex: vertex rows plus the edges at that vertex."""
    ev = graph.edge_vertices()
    n = graph.num_vertices
    return (z_vertex + np.bincount(ev[:, 0], weights=z_edge, minlength=n)
            + np.bincount(ev[:, 1], weights=z_edge, minlength=n))


@dataclasses.dataclass(frozen=True, eq=False)
class OptProbResult:
    """Minimum adversarial cross-entropy of an empirical distribution (Theorem 1).

    Attributes:
      graph: the conflict graph solved.
      q: ``[N]`` optimal correct-classification probabilities ``q*`` (class
        ``a`` then ``b``); zero-weight vertices (outside the support) get 0.
      z_edge: ``[E]`` adversary strategy on the edge rows of ``M`` (Lemma 2).
      z_vertex: ``[N]`` adversary strategy on the vertex rows of ``M``.
      loss: ``-sum_v p_v log q*_v`` (natural log), the lower bound.
      part: ``[N]`` int64 index of each vertex's final part (``-1`` off the
        support); parts are numbered by increasing ``q`` of their ``a`` side
        (the functions ``a(.)``, ``b(.)`` of Lemma 5).
      num_parts: number of parts.
      rounds: max-flow rounds (recursion depth of Algorithm 1).
      backend: max-flow backend(s) that ran.
    """

    graph: ConflictGraph
    q: np.ndarray
    z_edge: np.ndarray
    z_vertex: np.ndarray
    loss: float
    part: np.ndarray
    num_parts: int
    rounds: int
    backend: str

    def verify(self, tol: float = 1e-9) -> Verification:
        """Check Lemma 2's optimality conditions (4)-(8) numerically.

        (4) ``q >= 0``; (5) ``M q <= 1`` (``q_u + q_v <= 1`` on edges,
        ``q_v <= 1``); (6) ``z >= 0``; (7) ``diag(q) M^T z >= p``;
        (8) ``1^T z <= 1^T p`` (the paper writes ``<``; its proof shows
        equality is attained). Also reports ``objective``: the gap between
        ``loss`` and ``-sum p log q`` recomputed from ``q``.

        Args:
          tol: tolerance on every violation.

        Returns:
          :class:`Verification` with the worst violation.
        """
        tol = _checks.check_scalar(tol, "tol", low=0.0)
        g, q, p = self.graph, self.q, self.graph.p
        ev = g.edge_vertices()
        viol = {}
        viol["q_nonnegative"] = max(0.0, float(-q.min())) if q.size else 0.0
        mq = q[ev[:, 0]] + q[ev[:, 1]] - 1.0 if ev.size else np.zeros(0)
        viol["edge_feasible"] = max(0.0, float(mq.max())) if mq.size else 0.0
        viol["vertex_feasible"] = max(0.0, float((q - 1.0).max())) if q.size else 0.0
        zmin = min(float(self.z_edge.min()) if self.z_edge.size else 0.0,
                   float(self.z_vertex.min()) if self.z_vertex.size else 0.0)
        viol["z_nonnegative"] = max(0.0, -zmin)
        mtz = _mt_z(g, self.z_edge, self.z_vertex)
        viol["complementary"] = max(0.0, float((p - q * mtz).max())) if q.size else 0.0
        ztot = float(np.sum(self.z_edge)) + float(np.sum(self.z_vertex))  # pairwise summation
        viol["z_total"] = max(0.0, ztot - float(np.sum(p)))
        supp = p > 0
        with np.errstate(divide="ignore"):
            obj = -math.fsum((p[supp] * np.log(q[supp])).tolist())
        viol["objective"] = abs(obj - self.loss) if math.isfinite(obj) else math.inf
        worst = max(viol.values())
        return Verification(bool(worst <= tol), float(worst), float(tol), viol)

    @property
    def q_a(self) -> np.ndarray:
        return self.q[: self.graph.sizes[0]]

    @property
    def q_b(self) -> np.ndarray:
        return self.q[self.graph.sizes[0]:]

    def to_dict(self, arrays: bool = False) -> dict:
        """JSON-ready summary; ``arrays=True`` adds ``q``, ``z_edge``, ``z_vertex``, ``part``."""
        n_a = self.graph.sizes[0]
        out = {
            "loss": float(self.loss),
            "num_parts": int(self.num_parts),
            "rounds": int(self.rounds),
            "backend": self.backend,
            "graph": self.graph.to_dict(),
            "q_mean": [float(self.q[:n_a].mean()), float(self.q[n_a:].mean())],
            "q_min": float(self.q.min()),
            "frac_q_below_half": float((self.q < 0.5).mean()),
        }
        if arrays:
            out.update(q=self.q.tolist(), z_edge=self.z_edge.tolist(), z_vertex=self.z_vertex.tolist(),
                       part=self.part.tolist())
        return out


def optprob(graph: ConflictGraph, *, backend: str = "auto", progress: bool = False) -> OptProbResult:
    """Solve program (3) exactly with OptProb (Algorithm 1, Theorem 3).

    Minimises ``-sum_v p_v log q_v`` subject to ``q >= 0``, ``q_u + q_v <= 1``
    on conflict edges and ``q_v <= 1``; returns ``q*`` and the adversary
    strategy ``z*`` (Lemma 2). Runs on the host; see :mod:`jaxbound.flow` for
    the iterative recursion and exact integer capacities.

    Args:
      graph: a two-class :class:`ConflictGraph`.
      backend: max-flow backend ``"auto"`` (OR-Tools when capacities fit
        int64, else networkx; SciPy for rounds of 4 million edges or more;
        see :mod:`jaxbound.flow`), ``"ortools"``, ``"scipy"`` or ``"networkx"``.
      progress: progress bar over the recursion.

    Returns:
      :class:`OptProbResult`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (program (3), Algorithm 1, Lemma 2, Theorem 3).
    """
    graph = _check_graph(graph)
    n_a, n_b = graph.sizes
    wa, wb = graph.weights
    # host-side max-flow rounds: under jax.distributed process 0 solves and every process gets its result
    parts = distributed.on_process_zero(flow.optprob_parts, n_a, n_b, graph.edges[:, 0], graph.edges[:, 1], wa, wb,
                                        backend=backend, progress=progress)
    qa, qb = parts.q()
    q = np.concatenate([qa, qb])
    used = sorted(set(parts.backends)) or ["none"]
    return OptProbResult(
        graph=graph,
        q=q,
        z_edge=parts.z_edge,
        z_vertex=np.concatenate([parts.z_a, parts.z_b]),
        loss=parts.loss(),
        part=np.concatenate([parts.part_a, parts.part_b]),
        num_parts=len(parts.weight_a),
        rounds=parts.rounds,
        backend="+".join(used),
    )


# ---------------------------------------------------------------------------
# 0-1 loss
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroOneResult:
    """Minimum adversarial 0-1 loss of an empirical distribution.

    Any classifier errs on at least one end of every conflict edge, and every
    independent set is achievable (Lemma 1 with ``q`` in ``{0, 1}``), so the
    optimum is the weight of a minimum vertex cover (Konig: a max flow).

    Attributes:
      graph: the conflict graph.
      loss: optimal adversarial 0-1 loss (weight of a minimum vertex cover).
      correct: ``[N]`` bool, points the optimal classifier gets right under
        attack (a maximum-weight independent set).
      z_edge: ``[E]`` a maximum fractional matching (normalised flow) whose
        total equals ``loss``: the dual certificate.
      backend: max-flow backend that ran.
    """

    graph: ConflictGraph
    loss: float
    correct: np.ndarray
    z_edge: np.ndarray
    backend: str

    def verify(self, tol: float = 1e-9) -> Verification:
        """Check the cover and its certificate.

        ``independent``: edges with both ends correct (must be 0); ``loss``:
        ``|loss - p(not correct)|``; ``z_nonnegative``; ``z_capacity``:
        ``sum_{e at v} z_e <= p_v``; ``duality``: ``loss - sum(z)`` (weak
        duality makes ``sum(z) <= any cover``, so equality proves optimality).
        """
        tol = _checks.check_scalar(tol, "tol", low=0.0)
        g, p = self.graph, self.graph.p
        ev = g.edge_vertices()
        viol = {}
        viol["independent"] = float(np.count_nonzero(self.correct[ev[:, 0]] & self.correct[ev[:, 1]])) if ev.size else 0.0
        viol["loss"] = abs(float(np.sum(p[~self.correct])) - self.loss)
        viol["z_nonnegative"] = max(0.0, float(-self.z_edge.min())) if self.z_edge.size else 0.0
        load = _mt_z(g, self.z_edge, np.zeros(g.num_vertices))
        viol["z_capacity"] = max(0.0, float((load - p).max())) if p.size else 0.0
        viol["duality"] = abs(self.loss - float(np.sum(self.z_edge)))
        worst = max(viol.values())
        return Verification(bool(worst <= tol), float(worst), float(tol), viol)

    def to_dict(self, arrays: bool = False) -> dict:
        out = {"loss": float(self.loss), "backend": self.backend, "graph": self.graph.to_dict(),
               "num_correct": int(self.correct.sum())}
        if arrays:
            out.update(correct=self.correct.tolist(), z_edge=self.z_edge.tolist())
        return out


def min_zero_one_loss(graph: ConflictGraph, *, backend: str = "auto") -> ZeroOneResult:
    """Optimal adversarial 0-1 loss: a minimum-weight vertex cover of the conflict graph.

    (Bhagoji et al. 2021, remark after Theorem 1; Bhagoji et al. 2019.) With
    uniform weights this is ``maximum matching / (n_a + n_b)``.

    Args:
      graph: a two-class :class:`ConflictGraph`.
      backend: ``"auto"`` (OR-Tools when the capacities fit int64), ``"ortools"``, ``"scipy"`` or ``"networkx"``.

    Returns:
      :class:`ZeroOneResult`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (remark after Theorem 1).
      Bhagoji, Cullina, Mittal. "Lower bounds on adversarial robustness from
      optimal transport." NeurIPS 2019, arXiv:1909.12272.
    """
    graph = _check_graph(graph)
    n_a, n_b = graph.sizes
    wa, wb = graph.weights
    cov = distributed.on_process_zero(flow.min_vertex_cover, n_a, n_b, graph.edges[:, 0], graph.edges[:, 1], wa, wb,
                                      backend=backend)
    total = flow.sum_int(wa) + flow.sum_int(wb)
    loss = cov.weight / total
    fe = cov.flow_e
    if fe.dtype != object and total < 2**53:
        z = fe.astype(np.float64) / float(total)
    else:
        z = np.array([int(v) / total for v in fe.tolist()], np.float64)
    correct = np.concatenate([~cov.cover_a, ~cov.cover_b])
    return ZeroOneResult(graph, float(loss), correct, z, cov.backend)


# ---------------------------------------------------------------------------
# A class pair's bounds in one call
# ---------------------------------------------------------------------------


class PairBounds(NamedTuple):
    """The optimal adversarial 0-1 and cross-entropy losses of one class pair at one budget.

    Attributes:
      eps: the budget.
      norm: the canonical norm name of the budget.
      n: ``(n_a, n_b)`` points per class.
      num_edges: edges of the conflict graph.
      zero_one: optimal adversarial 0-1 loss (:func:`min_zero_one_loss`).
      cross_entropy: optimal adversarial cross-entropy, natural log (:func:`optprob`).
      verified: both certificates pass their checks (``None`` when not checked).
      rounds: max-flow rounds of OptProb.
      seconds: wall time of graph, 0-1 loss, OptProb and checks.
    """

    eps: float
    norm: str
    n: tuple
    num_edges: int
    zero_one: float
    cross_entropy: float
    verified: bool | None
    rounds: int
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {"eps": float(self.eps), "norm": str(self.norm), "n": [int(v) for v in self.n],
                "num_edges": int(self.num_edges), "zero_one": float(self.zero_one),
                "cross_entropy": float(self.cross_entropy),
                "verified": None if self.verified is None else bool(self.verified), "rounds": int(self.rounds),
                "seconds": float(self.seconds)}


def pair_bounds(
    x_a: Any,
    x_b: Any,
    *,
    eps: float,
    norm: Any,
    weights_a: Any = None,
    weights_b: Any = None,
    backend: str = "auto",
    verify: bool = True,
    progress: bool = False,
) -> PairBounds:
    """Class pair -> conflict graph -> optimal 0-1 loss and OptProb cross-entropy, in one call.

    The pipeline piece of the report, the sensitivity sweep and ``jaxbound
    optprob``: :func:`conflict_graph` at ``eps``, :func:`min_zero_one_loss`
    (a minimum vertex cover) and :func:`optprob` (Algorithm 1) on it, and the
    certificate checks of both (Lemma 2 for OptProb, the dual matching for the
    0-1 loss) when ``verify``.

    Args:
      x_a: ``[n_a, d]`` (or ``[n_a, ...]``) points of class ``a``.
      x_b: ``[n_b, d]`` points of class ``b``.
      eps: budget ``>= 0``.
      norm: the adversary's norm (``"l1" | "l2" | "linf"`` or ``p >= 1``); no default.
      weights_a: ``[n_a]`` non-negative weights (default uniform).
      weights_b: ``[n_b]`` non-negative weights (default uniform).
      backend: max-flow backend, ``"auto"``, ``"ortools"``, ``"scipy"`` or ``"networkx"``.
      verify: check both certificates (``verified`` is ``None`` otherwise).
      progress: progress bars of the distance pass and the OptProb recursion.

    Returns:
      :class:`PairBounds`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382.
      Bhagoji, Cullina, Mittal. "Lower bounds on adversarial robustness from
      optimal transport." NeurIPS 2019, arXiv:1909.12272.
    """
    if not isinstance(verify, (bool, np.bool_)):
        raise ValueError(f"verify: expected True or False, got {verify!r}")
    t0 = time.perf_counter()
    g = conflict_graph(x_a, x_b, eps=eps, norm=norm, weights_a=weights_a, weights_b=weights_b,
                       progress=progress)
    z = min_zero_one_loss(g, backend=backend)
    o = optprob(g, backend=backend, progress=progress)
    verified = bool(o.verify().passed and z.verify().passed) if verify else None
    return PairBounds(float(g.eps), str(g.norm), tuple(int(s) for s in g.sizes), g.num_edges, float(z.loss),
                      float(o.loss), verified, int(o.rounds), time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# Clipped soft labels (§4.3)
# ---------------------------------------------------------------------------


def clipped_soft_labels(result: Any, labels: Any, clip: float = 0.6, *, num_classes: int | None = None) -> np.ndarray:
    """Training targets from the optimal probabilities (Bhagoji et al. 2021, §4.3).

    For vertex ``v`` with true label ``y_v`` and optimal probability ``q_v``
    of its own class, the target puts ``q_v`` on ``y_v`` and ``1 - q_v`` on
    the other class when ``q_v > 1/2`` (the optimal output favours the true
    class), and otherwise ``clip`` on ``y_v`` and ``1 - clip`` on the other
    class (the authors' choice, ``clip = 0.6``), so that no target favours a
    wrong label.

    Args:
      result: an :class:`OptProbResult` (or a ``[N]`` array of ``q``).
      labels: ``[N]`` integer labels of the vertices in the model's label
        space, class ``a`` first; exactly two distinct values, one per class.
      clip: probability of the true label where ``q_v <= 1/2``, in ``[0.5, 1]``.
      num_classes: width of the targets (default ``max(labels) + 1``).

    Returns:
      ``[N, num_classes]`` float32 rows summing to 1.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (§4.3).
    """
    if isinstance(result, OptProbResult):
        q = result.q
        sizes = result.graph.sizes
    else:
        q = np.asarray(result, dtype=np.float64)
        if q.ndim != 1:
            raise ValueError(f"result: expected an OptProbResult or a [N] array of q, got shape {q.shape}")
        _checks.check_finite(q, "result")
        if q.size and (q.min() < 0 or q.max() > 1):
            raise ValueError("result: q values must lie in [0, 1]")
        sizes = None
    y = np.asarray(_checks.check_labels(labels, "labels", n=q.shape[0])).astype(np.int64)
    clip = _checks.check_scalar(clip, "clip", low=0.5, high=1.0)
    uniq = np.unique(y)
    if uniq.size != 2:
        raise ValueError(f"labels: expected exactly two distinct labels, got {uniq.tolist()}")
    if sizes is not None:
        ya, yb = y[: sizes[0]], y[sizes[0]:]
        if not (np.all(ya == ya[0]) and np.all(yb == yb[0]) and ya[0] != yb[0]):
            raise ValueError("labels: class a vertices must share one label and class b vertices another")
    k = int(y.max()) + 1 if num_classes is None else _checks.check_int(num_classes, "num_classes", low=1)
    if int(y.max()) >= k:
        raise ValueError(f"num_classes: {k} is too small for label {int(y.max())}")
    other = np.where(y == uniq[0], uniq[1], uniq[0])
    own = np.where(q > 0.5, q, clip)
    out = np.zeros((q.shape[0], k), np.float64)
    rows = np.arange(q.shape[0])
    out[rows, y] = own
    out[rows, other] = 1.0 - own
    return out.astype(np.float32)


# ---------------------------------------------------------------------------
# Gaussian mixture (Theorem 2, Lemma 3)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianBounds:
    """Population bounds for ``p1 N(mu, Sigma) + (1 - p1) N(-mu, Sigma)`` (Theorem 2).

    Shapes: ``[K]`` per budget (scalars when ``eps`` was a scalar), ``[K, d]``
    for vectors.

    Attributes:
      eps: budgets.
      norm: the adversary's norm.
      p1: prior of the class with mean ``+mu``.
      z: optimal adversary translation ``z*`` (``||z*|| <= eps``): class
        ``+1`` is moved by ``-z*``, class ``-1`` by ``+z*``.
      w: optimal linear classifier ``w* = 2 Sigma^{-1} (mu - z*)`` (Lemma 3).
      b: its bias ``log(p1 / (1 - p1))`` (0 for equal priors); the optimal
        soft classifier is ``P(y = +1 | x) = sigmoid(w*.x + b)``.
      delta: ``sqrt((mu - z*)^T Sigma^{-1} (mu - z*))``, the Mahalanobis
        half-distance left after the attack.
      zero_one: minimum adversarial 0-1 loss.
      cross_entropy: minimum adversarial cross-entropy (natural log), eq. (9).
      gap: duality gap ``eps ||w*||_* - w*.z*`` of the translation problem
        (0 at the optimum; the bounds are valid lower bounds for any feasible
        ``z``, the gap measures how tight).
    """

    eps: np.ndarray
    norm: str
    p1: float
    z: np.ndarray
    w: np.ndarray
    b: float
    delta: np.ndarray
    zero_one: np.ndarray
    cross_entropy: np.ndarray
    gap: np.ndarray

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(self).items()}


def _sigma_matrix(sigma: Any, d: int) -> tuple[np.ndarray, bool]:
    if sigma is None:
        return np.eye(d), True
    s = np.asarray(sigma, dtype=np.float64)
    _checks.check_finite(s, "sigma")
    if s.ndim == 0:
        if s <= 0:
            raise ValueError(f"sigma: a scalar variance must be > 0, got {float(s)}")
        return float(s) * np.eye(d), True
    if s.ndim == 1:
        if s.shape != (d,) or (s <= 0).any():
            raise ValueError(f"sigma: a diagonal covariance needs {d} positive entries, got shape {s.shape}")
        return np.diag(s), True
    if s.shape != (d, d):
        raise ValueError(f"sigma: expected shape [{d}, {d}], got {s.shape}")
    if not np.allclose(s, s.T, rtol=1e-12, atol=1e-12 * np.abs(s).max()):
        raise ValueError("sigma: covariance must be symmetric")
    s = 0.5 * (s + s.T)
    if np.linalg.eigvalsh(s).min() <= 0:
        raise ValueError("sigma: covariance must be positive definite")
    return s, bool(np.all(s == np.diag(np.diag(s))))


def _solve_translation(mu, prec, eps, lip, *, norm: str, tol: float, max_iter: int):
    """Accelerated projected gradient for ``min_{||z|| <= eps} (mu - z)^T P (mu - z)``.

    FISTA with gradient restart; stops when the duality gap
    ``eps ||w||_* - w.z`` (``w = 2 P (mu - z)``) is ``<= tol * f(z)``.
    Returns ``(z, iterations)``. Jittable; ``mu [d]``, ``prec [d, d]``, ``eps []``.
    """

    def gap_of(z):
        w = 2.0 * prec @ (mu - z)
        f = 0.5 * jnp.dot(w, mu - z)
        return eps * lp.lp_norm(w, lp.dual_norm(norm), axis=-1) - jnp.dot(w, z), f

    def cond(state):
        k, z, _, _, gap, f = state
        return (k < max_iter) & (gap > tol * f + 1e-300)

    def body(state):
        k, z, y, t, _, _ = state
        grad = -2.0 * prec @ (mu - y)
        z_new = lp.project((y - grad / lip)[None], eps, norm)[0]
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = jnp.dot(y - z_new, z_new - z) > 0
        t_new = jnp.where(restart, 1.0, t_new)
        y_new = jnp.where(restart, z_new, z_new + ((t - 1.0) / t_new) * (z_new - z))
        gap, f = gap_of(z_new)
        return k + 1, z_new, y_new, t_new, gap, f

    z0 = lp.project(mu[None], eps, norm)[0]
    gap0, f0 = gap_of(z0)
    state = (jnp.asarray(0), z0, z0, jnp.asarray(1.0, mu.dtype), gap0, f0)
    k, z, *_ = jax.lax.while_loop(cond, body, state)
    return z, k


def _solve_l2(mu_t, lam, eps, *, iters: int = 200):
    """Closed form for l2 in the eigenbasis: ``z~ = t mu~ / (lam + t)`` with ``||z|| = eps``.

    ``t = 2 delta`` of the form ``w = 2 (Sigma + 2 delta I)^{-1} mu`` used by the authors' code;
    ``t`` is bracketed in ``[lam_min, lam_max] * eps / (||mu|| - eps)`` and
    found by bisection in ``log t``; the lower end is kept so ``||z|| <= eps``.
    """
    nmu = jnp.sqrt(jnp.sum(mu_t * mu_t))
    inside = eps < nmu
    denom = jnp.where(inside, nmu - eps, 1.0)
    lo = jnp.log(jnp.maximum(lam.min() * eps / denom, 1e-300))
    hi = jnp.log(jnp.maximum(lam.max() * eps / denom, 1e-300))

    def norm_at(logt):
        t = jnp.exp(logt)
        return jnp.sqrt(jnp.sum((t * mu_t / (lam + t)) ** 2))

    def body(_, lohi):
        lo_, hi_ = lohi
        mid = 0.5 * (lo_ + hi_)
        big = norm_at(mid) > eps
        return jnp.where(big, lo_, mid), jnp.where(big, mid, hi_)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    t = jnp.exp(lo)
    z_t = jnp.where(inside, jnp.where(eps > 0, t * mu_t / (lam + t), 0.0), mu_t)
    return z_t


_GH_NODES = 128
_TRAP_NODES = 4097
_GH_MAX_SD = 2.0


def _expected_softplus(a, s):
    """``E[log(1 + exp(-T))]`` for ``T ~ N(a, s^2)`` (elementwise, float64).

    Gauss-Hermite (128 nodes) while ``s <= 2``; beyond that its error grows
    (the integrand's complex singularities at ``+-i pi`` come within ``pi /
    (sqrt(2) s)`` of the real axis: relative error 1e-4 at ``s = 8`` measured
    against adaptive quadrature), so larger ``s`` use the identity
    ``E softplus(-T) = int sigmoid(-u) Phi((u - a) / s) du`` with the
    trapezoidal rule on 4097 nodes over ``[a - 14 s, max(a + 14 s, 40)]``,
    which converges geometrically for this analytic integrand (relative error
    < 1e-14 for ``1 <= s <= 16`` measured).
    """
    x, wts = np.polynomial.hermite.hermgauss(_GH_NODES)
    x = jnp.asarray(x, a.dtype)
    wts = jnp.asarray(wts / np.sqrt(np.pi), a.dtype)
    s_gh = jnp.minimum(s, _GH_MAX_SD)
    t = a[..., None] + jnp.sqrt(2.0) * s_gh[..., None] * x
    gh = jnp.sum(wts * jnp.logaddexp(0.0, -t), axis=-1)
    s_tr = jnp.maximum(s, _GH_MAX_SD)
    lo = a - 14.0 * s_tr
    hi = jnp.maximum(a + 14.0 * s_tr, 40.0)
    frac = jnp.linspace(0.0, 1.0, _TRAP_NODES, dtype=a.dtype)
    u = lo[..., None] + (hi - lo)[..., None] * frac
    h = (hi - lo) / (_TRAP_NODES - 1)
    integrand = jax.nn.sigmoid(-u) * jax.scipy.special.ndtr((u - a[..., None]) / s_tr[..., None])
    tr = h * jnp.sum(integrand, axis=-1)
    return jnp.where(s <= _GH_MAX_SD, gh, tr)


def _losses(delta, b, p1):
    """Bayes 0-1 loss and cross-entropy of ``N(+-m, Sigma)`` with Mahalanobis half-distance ``delta``."""
    pos = delta > 0
    d_safe = jnp.where(pos, delta, 1.0)
    shift = b / (2.0 * d_safe)
    zo = p1 * jax.scipy.special.ndtr(-delta - shift) + (1 - p1) * jax.scipy.special.ndtr(-delta + shift)
    zo = jnp.where(pos, zo, jnp.minimum(p1, 1 - p1))
    s = 2.0 * delta
    ce = (p1 * _expected_softplus(2.0 * delta**2 + b, s)
          + (1 - p1) * _expected_softplus(2.0 * delta**2 - b, s))
    return zo, ce


_solve_l2_batch = jax.jit(jax.vmap(_solve_l2, in_axes=(None, None, 0)))
_losses_jit = jax.jit(_losses)


@functools.partial(jax.jit, static_argnames=("norm", "max_iter"))
def _solve_translation_batch(mu, prec, eps, lip, tol, *, norm: str, max_iter: int):
    """:func:`_solve_translation` vectorised over ``eps [K]``."""
    return jax.vmap(lambda e: _solve_translation(mu, prec, e, lip, norm=norm, tol=tol, max_iter=max_iter))(eps)


def gaussian_bounds(
    mu: Any,
    sigma: Any,
    *,
    eps: Any,
    norm: Any,
    p1: float = 0.5,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> GaussianBounds:
    """Adversarial 0-1 and cross-entropy lower bounds for a Gaussian mixture (Theorem 2, Lemma 3).

    The optimal adversary translates the classes towards each other by the
    solution of ``min_{||z|| <= eps} (mu - z)^T Sigma^{-1} (mu - z)``
    (Bhagoji et al. 2019, Lemma 1); the optimal classifier is then the Bayes
    classifier of ``N(+-(mu - z*), Sigma)``: ``sigmoid(w*.x + b)`` with
    ``w* = 2 Sigma^{-1} (mu - z*)`` and ``b = log(p1 / (1 - p1))`` (the paper
    states ``p1 = 1/2``, ``b = 0``; the prior term is the exact extension).
    Its worst-case perturbation is the same translation (``w*.z* = eps
    ||w*||_*``), which makes ``(w*, z*)`` a saddle point.

    ``l2``: closed form ``w* = 2 (Sigma + t I)^{-1} mu``, ``||z*||_2 = eps``
    solved for ``t`` by bisection in the eigenbasis of ``Sigma``. ``linf``
    with diagonal ``Sigma``: ``z* = clip(mu, -eps, eps)``. Otherwise (``linf``
    with full ``Sigma``, ``l1``): accelerated projected gradient in JAX.
    Everything is float64 and vectorised over ``eps``; the 0-1 loss uses
    ``Phi`` and the cross-entropy (9) one-dimensional Gaussian integrals
    (Gauss-Hermite; see :func:`_expected_softplus`).

    Args:
      mu: ``[d]`` mean of class ``+1`` (class ``-1`` has mean ``-mu``).
      sigma: ``[d, d]`` positive definite covariance, ``[d]`` diagonal, a
        scalar variance, or ``None`` for the identity.
      eps: budget(s) ``>= 0``, scalar or ``[K]``.
      norm: ``"l2"``, ``"linf"`` or ``"l1"`` (the adversary's ball).
      p1: prior of class ``+1`` in ``(0, 1)``.
      tol: relative duality-gap tolerance of the iterative solver.
      max_iter: iteration cap of the iterative solver.

    Returns:
      :class:`GaussianBounds`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss
      in the presence of test-time adversaries." ICML 2021, arXiv:2104.08382 (Theorem 2, Lemma 3, eq. (9)).
      Bhagoji, Cullina, Mittal. "Lower bounds on adversarial robustness from
      optimal transport." NeurIPS 2019, arXiv:1909.12272 (Lemma 1).
    """
    mu = np.asarray(mu, dtype=np.float64) if not isinstance(mu, jax.Array) else np.asarray(mu, np.float64)
    if mu.ndim != 1 or mu.size == 0:
        raise ValueError(f"mu: expected a non-empty vector [d], got shape {mu.shape}")
    _checks.check_finite(mu, "mu")
    d = mu.size
    sig, diagonal = _sigma_matrix(sigma, d)
    eps_arr = np.asarray(eps, dtype=np.float64)
    if eps_arr.ndim > 1:
        raise ValueError(f"eps: expected a scalar or a 1-D array, got shape {eps_arr.shape}")
    _checks.check_finite(eps_arr, "eps")
    if eps_arr.size and eps_arr.min() < 0:
        raise ValueError(f"eps: budgets must be >= 0, got {float(eps_arr.min())}")
    norm = _checks.canonical_norm(norm)
    if norm not in ("l1", "l2", "linf"):
        raise ValueError(f"norm: gaussian_bounds supports 'l1', 'l2' and 'linf', got {norm!r}")
    p1 = _checks.check_probability(p1, "p1")
    tol = _checks.check_scalar(tol, "tol", low=0.0)
    max_iter = _checks.check_int(max_iter, "max_iter", low=1)
    eps_flat = np.atleast_1d(eps_arr)
    b = math.log(p1 / (1.0 - p1))

    lam, vec = np.linalg.eigh(sig)
    n_eps = eps_flat.size
    # pad the budgets to a power of two (>= 8) so that repeated calls reuse compiled code
    padded = np.zeros(max(8, 1 << max(0, n_eps - 1).bit_length()), np.float64)
    padded[:n_eps] = eps_flat
    with jax.enable_x64(True):
        mu_j = jnp.asarray(mu)
        eps_j = jnp.asarray(padded)
        if norm == "l2":
            mu_t = jnp.asarray(vec.T @ mu)
            z_t = _solve_l2_batch(mu_t, jnp.asarray(lam), eps_j)
            z = z_t @ jnp.asarray(vec).T
            r_t = mu_t[None, :] - z_t  # exactly 0 when the budget swallows the mean
        elif norm == "linf" and diagonal:
            z = jnp.clip(mu_j[None, :], -eps_j[:, None], eps_j[:, None])
        else:
            prec = jnp.asarray((vec / lam) @ vec.T)
            lip = jnp.asarray(2.0 / float(lam.min()))
            z, _ = _solve_translation_batch(mu_j, prec, eps_j, lip, jnp.asarray(tol), norm=norm,
                                            max_iter=max_iter)
        if norm != "l2":
            r_t = (mu_j[None, :] - z) @ jnp.asarray(vec)
        w = 2.0 * (r_t / jnp.asarray(lam)) @ jnp.asarray(vec).T  # 2 Sigma^{-1} (mu - z)
        delta2 = jnp.maximum(jnp.sum(r_t * r_t / jnp.asarray(lam), axis=-1), 0.0)
        delta = jnp.sqrt(delta2)
        gap = eps_j * lp.lp_norm(w, lp.dual_norm(norm), axis=-1) - jnp.sum(w * z, axis=-1)
        zo, ce = _losses_jit(delta, jnp.asarray(b), jnp.asarray(p1))
        out = [np.asarray(v, np.float64)[:n_eps] for v in (z, w, delta, zo, ce, gap)]
    z, w, delta, zo, ce, gap = out
    shape = eps_arr.shape
    return GaussianBounds(
        eps=eps_arr.copy(),
        norm=str(norm),
        p1=float(p1),
        z=z.reshape(shape + (d,)),
        w=w.reshape(shape + (d,)),
        b=float(b),
        delta=delta.reshape(shape),
        zero_one=zo.reshape(shape),
        cross_entropy=ce.reshape(shape),
        gap=gap.reshape(shape),
    )


# ---------------------------------------------------------------------------
# Multi-class optimal 0-1 loss (Dai et al. 2023)
# ---------------------------------------------------------------------------

_HYPER_NORMS = ("l2", "linf")
_MC_BACKENDS = ("auto", "flow", "lp")
_FLOW_BACKENDS = ("auto", "ortools", "scipy", "networkx")
# float64 decisions of the l2 enclosing-ball test closer than this (relative) are redone exactly
_MEB_BAND = 1e-9
# candidate (edge, third vertex) pairs per vectorised chunk of the triangle search
_TRIANGLE_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class ConflictHypergraph:
    """The conflict hypergraph of a multi-class sample (Dai et al. 2023, §3).

    Vertices are the ``n`` points in the caller's order. A pair edge joins two
    points of different labels whose ``eps``-balls intersect; a degree-3
    hyperedge joins three points of three labels whose three balls share a
    point.

    Attributes:
      labels: ``[n]`` int64 label of each vertex.
      classes: the distinct labels, ascending.
      p: ``[n]`` float64 vertex probabilities (sum 1).
      weights: ``[n]`` exact integer weights (int64, or an object array of
        Python ints) with ``p = weights / sum(weights)``.
      edges: ``[E, 2]`` int64 pair edges ``(u, v)``, ``u < v``, sorted.
      hyperedges: ``[H, 3]`` int64 hyperedges ``(u, v, w)``, ``u < v < w``,
        sorted (``[0, 3]`` for degree 2).
      degree: the largest hyperedge size kept, 2 or 3.
      eps: the budget (``None`` for a graph given by its edges).
      norm: the budget's norm (``None`` for a graph given by its edges).
      num_triangles: triangles of the pair graph that were tested for a
        common point (``None`` for degree 2).
    """

    labels: np.ndarray
    classes: tuple
    p: np.ndarray
    weights: np.ndarray = dataclasses.field(repr=False)
    edges: np.ndarray
    hyperedges: np.ndarray
    degree: int
    eps: float | None = None
    norm: str | float | None = None
    num_triangles: int | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def num_hyperedges(self) -> int:
        return int(self.hyperedges.shape[0])

    def to_dict(self) -> dict:
        """JSON summary (no arrays)."""
        deg = np.bincount(self.edges.ravel(), minlength=self.n) if self.n else np.zeros(0, np.int64)
        return {"n": self.n, "classes": [int(c) for c in self.classes], "degree": int(self.degree),
                "num_edges": self.num_edges, "num_hyperedges": self.num_hyperedges,
                "num_triangles": None if self.num_triangles is None else int(self.num_triangles),
                "eps": self.eps, "norm": None if self.norm is None else str(self.norm),
                "isolated_vertices": int((deg == 0).sum())}


def _mc_labels(labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(_checks.check_labels(labels, "labels", n=n)).astype(np.int64)
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"labels: the multi-class bound needs at least two classes, got {classes.tolist()}")
    return y, classes


def _mc_weights(weights: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer weights ``[n]`` and their normalised float64 probabilities."""
    w = _input_weights(weights, "weights", n)
    w_int, _ = _exact_integer_weights(w, np.zeros(0, np.int64))
    total = flow.sum_int(w_int)
    if total == 0:
        raise ValueError("weights: all vertex weights are zero")
    return w_int, _normalised(w_int, total)


def _sorted_unique_rows(a: np.ndarray, n: int) -> np.ndarray:
    """Rows of an ``[m, k]`` int64 array (entries in ``[0, n)``) sorted lexicographically, duplicates merged."""
    if a.shape[0] == 0:
        return a.reshape(0, a.shape[1]).astype(np.int64)
    key = np.zeros(a.shape[0], np.int64)
    for j in range(a.shape[1]):
        key = key * n + a[:, j]
    key = np.unique(key)
    out = np.empty((key.size, a.shape[1]), np.int64)
    for j in reversed(range(a.shape[1])):
        out[:, j] = key % n
        key = key // n
    return out


def _pair_edges(x, y, classes, eps, norm, block_size, progress) -> np.ndarray:
    """``[E, 2]`` edges between different labels: class ``c`` against every larger label.

    One :func:`jaxbound.geometry.radius_pairs` call per class (radius ``2 eps``,
    exact float64 boundary), so same-label pairs are never computed: half the
    distance work of all-against-all for balanced classes, with indices kept
    as int32 between calls.
    """
    from jaxbound import geometry

    idx_dtype = np.int32 if y.size < 2**31 else np.int64
    parts = []
    for c in classes[:-1].tolist():
        ia = np.flatnonzero(y == c)
        ib = np.flatnonzero(y > c)
        pr = geometry.radius_pairs(x[ia], x[ib], radius=2.0 * eps, norm=norm, block_size=block_size,
                                   progress=progress)
        u, v = ia[pr.rows].astype(idx_dtype), ib[pr.cols].astype(idx_dtype)
        parts.append(np.stack([np.minimum(u, v), np.maximum(u, v)], axis=1))
        del pr
    e = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
    return _sorted_unique_rows(e, y.size)


def _triangles(n: int, edges: np.ndarray) -> np.ndarray:
    """All triangles of a sorted edge list as ``[T, 3]`` edge indices ``(uv, vw, uw)``, ``u < v < w``.

    CSR of the forward adjacency; for every edge ``(u, v)`` each forward
    neighbour ``w`` of ``v`` is a candidate, and ``(u, w)`` is looked up in the
    sorted edge keys ``u n + w`` (vectorised in chunks).
    """
    ne = edges.shape[0]
    if ne == 0:
        return np.zeros((0, 3), np.int64)
    u_all, v_all = edges[:, 0], edges[:, 1]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(u_all, minlength=n), out=indptr[1:])
    keys = u_all * n + v_all  # sorted, since the edges are
    outdeg = indptr[v_all + 1] - indptr[v_all]
    cum = np.cumsum(outdeg)
    found = []
    lo = 0
    while lo < ne:
        hi = int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + _TRIANGLE_CHUNK, side="right"))
        hi = max(hi, lo + 1)
        deg = outdeg[lo:hi]
        total = int(deg.sum())
        if total:
            e_uv = np.repeat(np.arange(lo, hi, dtype=np.int64), deg)
            first = np.cumsum(deg) - deg
            e_vw = np.repeat(indptr[v_all[lo:hi]] - first, deg) + np.arange(total, dtype=np.int64)
            k = u_all[e_uv] * n + v_all[e_vw]
            e_uw = np.minimum(np.searchsorted(keys, k), ne - 1)
            ok = keys[e_uw] == k
            found.append(np.stack([e_uv[ok], e_vw[ok], e_uw[ok]], axis=1))
        lo = hi
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def _edge_sq_dists(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[E]`` float64 squared l2 lengths of the edges, ``sum_i (x_ui - x_vi)^2``."""
    out = np.empty(edges.shape[0], np.float64)
    step = max(1, 2**22 // max(1, x.shape[1]))
    for lo in range(0, edges.shape[0], step):
        d = x[edges[lo:lo + step, 0]] - x[edges[lo:lo + step, 1]]
        out[lo:lo + step] = np.einsum("ij,ij->i", d, d)
    return out


def _exact_sq(a: np.ndarray, b: np.ndarray) -> Fraction:
    return sum((Fraction(float(s)) - Fraction(float(t))) ** 2 for s, t in zip(a.tolist(), b.tolist()))


def _meb_within(sa, sb, sc, eps2):
    """Minimum enclosing ball radius of a triangle ``<= eps`` from squared sides (any number type).

    Right or obtuse (``s_max >= s_1 + s_2``, degenerate triangles included):
    the radius is half the longest side, ``<= eps`` for any triangle of pair
    edges. Acute: the circumradius ``R``, ``R^2 = sa sb sc / (16 A^2)`` with
    ``16 A^2 = 2 (sa sb + sb sc + sc sa) - sa^2 - sb^2 - sc^2`` (Heron), so
    ``R <= eps`` iff ``sa sb sc <= eps^2 16 A^2``.
    """
    smax = max(sa, sb, sc)
    if smax >= sa + sb + sc - smax:
        return True
    area16 = 2 * (sa * sb + sb * sc + sc * sa) - sa * sa - sb * sb - sc * sc
    return sa * sb * sc <= eps2 * area16


def _l2_hyperedges(x, edges, tri, eps) -> np.ndarray:
    """Mask ``[T]`` of the triangles whose l2 ``eps``-balls share a point.

    Vectorised float64 test of :func:`_meb_within` on the squared edge
    lengths; decisions within a relative ``_MEB_BAND`` of either threshold
    (right angle, circumradius) are redone in exact rational arithmetic on the
    float64 coordinates.
    """
    if tri.shape[0] == 0:
        return np.zeros(0, bool)
    d2 = _edge_sq_dists(x, edges)
    s = np.sort(np.stack([d2[tri[:, 0]], d2[tri[:, 1]], d2[tri[:, 2]]], axis=1), axis=1)
    sa, sb, sc = s[:, 0], s[:, 1], s[:, 2]  # sc is the longest
    e2 = eps * eps
    right = sc - (sa + sb)
    area16 = 2 * (sa * sb + sb * sc + sc * sa) - sa * sa - sb * sb - sc * sc
    slack = e2 * area16 - sa * sb * sc
    keep = (right >= 0) | (slack >= 0)
    near_right = np.abs(right) <= _MEB_BAND * sc
    near_circle = (right < 0) & (np.abs(slack) <= _MEB_BAND * (e2 * (sa + sb + sc) ** 2 + sa * sb * sc))
    unsure = near_right | near_circle
    for t in np.flatnonzero(unsure).tolist():
        u, v = edges[tri[t, 0]]
        w = edges[tri[t, 1], 1]
        ex = [_exact_sq(x[i], x[j]) for i, j in ((u, v), (v, w), (u, w))]
        keep[t] = _meb_within(*ex, Fraction(eps) ** 2)
    return keep


def _hyperedges(x, edges, n, eps, norm) -> tuple[np.ndarray, int]:
    """``[H, 3]`` sorted hyperedges and the number of triangles tested."""
    tri = _triangles(n, edges)
    if norm == "l2":
        hit = tri[_l2_hyperedges(x, edges, tri, eps)]
    else:  # linf: every triangle
        hit = tri
    hyper = np.stack([edges[hit[:, 0], 0], edges[hit[:, 0], 1], edges[hit[:, 1], 1]], axis=1)
    return _sorted_unique_rows(hyper, max(n, 1)), int(tri.shape[0])


def conflict_hypergraph(
    x: Any,
    labels: Any,
    *,
    eps: float,
    norm: Any,
    degree: int = 2,
    weights: Any = None,
    block_size: int | None = None,
    progress: bool = False,
) -> ConflictHypergraph:
    """The conflict hypergraph of a multi-class sample under an ``eps``-ball adversary (Dai et al. 2023).

    Pair edges: ``{u, v}`` with ``labels[u] != labels[v]`` and ``||x_u - x_v||
    <= 2 eps`` (closed), from :func:`jaxbound.geometry.radius_pairs` (streamed,
    the boundary decided exactly in float64), one call per class against the
    larger labels. Degree-3 hyperedges: triangles ``{u, v, w}`` of the pair
    graph (three distinct labels, since edges join different labels) whose
    three ``eps``-balls share a point:

    * ``l2``: the minimum enclosing ball of the three points has radius
      ``<= eps``: half the longest side for a right or obtuse triangle (true
      for every triangle of edges), the circumradius
      ``R = abc / (4 A)`` for an acute one, tested as
      ``a^2 b^2 c^2 <= eps^2 (2 a^2 b^2 + 2 b^2 c^2 + 2 c^2 a^2 - a^4 - b^4 - c^4)``
      in float64 on exact float64 squared distances, and in exact rational
      arithmetic within a relative ``1e-9`` of either threshold.
    * ``linf``: boxes intersect iff they intersect pairwise (Helly in one
      dimension, coordinate by coordinate), so every triangle is a hyperedge.

    Triangles are listed on the host from the sorted pair graph (forward
    adjacency and a vectorised edge-key lookup).

    Args:
      x: ``[n, d]`` (or ``[n, ...]``, flattened) points; float64 input is used
        as it is.
      labels: ``[n]`` non-negative integer labels, at least two distinct.
      eps: budget ``eps >= 0``.
      norm: ``"l1" | "l2" | "linf"``, ``1 | 2 | inf`` or a real ``p >= 1``
        (degree 3: ``"l2"`` or ``"linf"``).
      degree: 2 (pair edges) or 3 (pair edges and three-way hyperedges).
      weights: ``[n]`` non-negative weights (default uniform), normalised to
        sum 1 and kept exactly as integers.
      block_size: query rows per block for the distance kernel.
      progress: progress bars of the distance passes.

    Returns:
      :class:`ConflictHypergraph`.

    Raises:
      ValueError: fewer than two classes, ``labels`` and ``x`` of different
        lengths, ``eps`` negative or not finite, negative weights, ``degree``
        not 2 or 3, ``degree=3`` with a norm other than ``l2`` / ``linf``.

    References:
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722 (§3, conflict hypergraphs;
      §5, the l2 and l-infinity hyperedge tests).
    """
    xs = _flat_points(x, "x")
    n = xs.shape[0]
    y, classes = _mc_labels(labels, n)
    eps = _checks.check_scalar(eps, "eps", low=0.0)
    norm = _checks.canonical_norm(norm)
    degree = _checks.check_int(degree, "degree", low=2, high=3)
    if degree == 3 and norm not in _HYPER_NORMS:
        raise ValueError(f"degree: three-way hyperedges are implemented for norm 'l2' and 'linf', got norm {norm!r}; "
                         "use degree=2")
    w_int, p = _mc_weights(weights, n)
    edges = _pair_edges(xs, y, classes, eps, norm, block_size, progress)
    hyper, n_tri = np.zeros((0, 3), np.int64), None
    if degree == 3:
        hyper, n_tri = _hyperedges(xs.astype(np.float64, copy=False), edges, n, eps, norm)
    return ConflictHypergraph(y, tuple(int(c) for c in classes), p, w_int, edges, hyper, degree, eps, norm, n_tri)


def _edge_array(a: Any, name: str, k: int, n: int) -> np.ndarray:
    arr = np.asarray(a) if a is not None else np.zeros((0, k), np.int64)
    if arr.size == 0:
        return np.zeros((0, k), np.int64)
    if arr.ndim != 2 or arr.shape[1] != k:
        raise ValueError(f"{name}: expected shape [m, {k}], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: vertex indices must be integers, got dtype {arr.dtype}")
    arr = np.sort(arr.astype(np.int64), axis=1)
    if int(arr.min()) < 0 or int(arr.max()) >= n:
        raise ValueError(f"{name}: vertex index out of range [0, {n})")
    if np.any(arr[:, 1:] == arr[:, :-1]):
        raise ValueError(f"{name}: a (hyper)edge repeats a vertex")
    return _sorted_unique_rows(arr, n)


def hypergraph_from_edges(labels: Any, edges: Any, hyperedges: Any = None, *, weights: Any = None) -> ConflictHypergraph:
    """A conflict hypergraph from user-defined edges and hyperedges.

    Args:
      labels: ``[n]`` non-negative integer labels, at least two distinct.
      edges: ``[E, 2]`` integer vertex pairs (any order; merged when repeated).
      hyperedges: ``[H, 3]`` integer vertex triples (``None``: degree 2).
      weights: ``[n]`` non-negative weights (default uniform).

    Returns:
      :class:`ConflictHypergraph` with ``eps = norm = None`` and degree 3 when
      ``hyperedges`` is given.

    Raises:
      ValueError: fewer than two classes, indices out of range or repeated
        within a (hyper)edge, an edge or hyperedge joining equal labels, bad weights.

    References:
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722 (§3).
    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array of labels, got shape {lab.shape}")
    n = lab.shape[0]
    y, classes = _mc_labels(labels, n)
    e = _edge_array(edges, "edges", 2, n)
    h = _edge_array(hyperedges, "hyperedges", 3, n)
    for arr, nm in ((e, "edges"), (h, "hyperedges")):
        ly = y[arr]
        if arr.size and np.any(np.sort(ly, axis=1)[:, 1:] == np.sort(ly, axis=1)[:, :-1]):
            raise ValueError(f"{nm}: every (hyper)edge must join distinct labels")
    w_int, p = _mc_weights(weights, n)
    return ConflictHypergraph(y, tuple(int(c) for c in classes), p, w_int, e, h, 3 if hyperedges is not None else 2)


def first_per_class(labels: Any, *, n: int | None) -> np.ndarray:
    """Indices of the first ``n`` points of each class, in file order, classes ascending.

    The class-balanced sample of the multi-class bound (the protocol of the
    reference values of Dai et al.: the first ``n`` training images of each
    class, classes in ascending order). A class with fewer than ``n`` points
    contributes all of them.

    Args:
      labels: ``[N]`` non-negative integer labels.
      n: points per class (``>= 1``), or ``None`` for every point (grouped by class).

    Returns:
      ``[m]`` int64 indices into ``labels``: class ``c0`` first (its points in
      increasing index order), then ``c1``, ... for the distinct labels
      ``c0 < c1 < ...``.

    Raises:
      ValueError: ``labels`` not a 1-D array of non-negative integers or
        empty, ``n`` not ``None`` or an integer ``>= 1``.

    References:
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722 (§6, the class-balanced
      training subsets).
    """
    y = np.asarray(_checks.check_labels(labels, "labels")).astype(np.int64)
    _checks.check_nonempty(y, "labels", what="labels")
    if n is not None:
        n = _checks.check_int(n, "n", low=1)
    order = np.argsort(y, kind="stable")  # by class, file order within a class
    if n is None:
        return order
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")  # first position of each point's class
    return order[np.arange(ys.size) - starts < n]


@dataclasses.dataclass(frozen=True, eq=False)
class MulticlassResult:
    """The optimal adversarial 0-1 loss of a conflict hypergraph and its LP certificate.

    The primal is ``max sum_v p_v q_v`` subject to ``sum_{v in e} q_v <= 1`` for
    every edge and hyperedge ``e`` and ``0 <= q <= 1`` (``sum p = 1``); the
    loss is ``1 - max``. The dual is ``min sum_e lam_e + sum_v mu_v`` subject
    to ``sum_{e ni v} lam_e + mu_v >= p_v`` and ``lam, mu >= 0``.

    Attributes:
      graph: the hypergraph solved.
      loss: ``L*(degree)``, the optimal adversarial 0-1 loss of the truncation.
      q: ``[n]`` optimal primal (probability of a correct answer under attack).
      edge_dual: ``[E]`` dual values ``lam`` of the pair-edge constraints.
      hyperedge_dual: ``[H]`` dual values of the hyperedge constraints.
      vertex_dual: ``[n]`` dual values ``mu`` of ``q_v <= 1``.
      flow_value: for the max-flow solver, the exact integer flow value ``F``
        of the bipartite double cover (``loss = F / (2 sum w)`` in the integer
        weights); ``None`` for the LP.
      degree: the hyperedge degree of the graph.
      n_edges: number of pair edges.
      n_hyperedges: number of hyperedges.
      backend: ``"flow"`` (plus the max-flow solver) or ``"lp"`` (HiGHS).
    """

    graph: ConflictHypergraph
    loss: float
    q: np.ndarray
    edge_dual: np.ndarray
    hyperedge_dual: np.ndarray
    vertex_dual: np.ndarray
    flow_value: int | None
    degree: int
    n_edges: int
    n_hyperedges: int
    backend: str

    def verify(self, tol: float = 1e-9) -> Verification:
        """Check primal feasibility, dual feasibility and the duality gap.

        Violations: ``q_bounds`` (``0 <= q <= 1``), ``edge_feasible`` and
        ``hyperedge_feasible`` (``sum_{v in e} q_v - 1``), ``dual_nonnegative``,
        ``dual_feasible`` (``p_v - sum_{e ni v} lam_e - mu_v``), ``gap``
        (dual objective minus ``sum p q``) and ``loss`` (``|loss - (1 - sum p q)|``).

        Args:
          tol: tolerance on every violation.

        Returns:
          :class:`Verification`.
        """
        tol = _checks.check_scalar(tol, "tol", low=0.0)
        g, q, p = self.graph, self.q, self.graph.p
        viol = {"q_bounds": max(0.0, float(-q.min()), float(q.max() - 1.0)) if q.size else 0.0}
        for name, arr in (("edge_feasible", g.edges), ("hyperedge_feasible", g.hyperedges)):
            viol[name] = max(0.0, float((q[arr].sum(axis=1) - 1.0).max())) if arr.size else 0.0
        lam = np.concatenate([self.edge_dual, self.hyperedge_dual, self.vertex_dual])
        viol["dual_nonnegative"] = max(0.0, float(-lam.min())) if lam.size else 0.0
        load = self.vertex_dual.copy()
        for arr, dual in ((g.edges, self.edge_dual), (g.hyperedges, self.hyperedge_dual)):
            for j in range(arr.shape[1]):
                load += np.bincount(arr[:, j], weights=dual, minlength=g.n)
        viol["dual_feasible"] = max(0.0, float((p - load).max())) if p.size else 0.0
        primal = math.fsum((p * q).tolist())
        viol["gap"] = abs(math.fsum(lam.tolist()) - primal)
        viol["loss"] = abs(self.loss - (1.0 - primal))
        worst = max(viol.values())
        return Verification(bool(worst <= tol), float(worst), float(tol), viol)

    def to_dict(self, arrays: bool = False) -> dict:
        """JSON-ready summary; ``arrays=True`` adds ``q`` and the dual values."""
        out = {"loss": float(self.loss), "degree": int(self.degree), "n_edges": int(self.n_edges),
               "n_hyperedges": int(self.n_hyperedges), "backend": self.backend,
               "flow_value": None if self.flow_value is None else int(self.flow_value),
               "graph": self.graph.to_dict(), "frac_q_one": float((self.q == 1.0).mean()) if self.q.size else 0.0}
        if arrays:
            out.update(q=self.q.tolist(), edge_dual=self.edge_dual.tolist(),
                       hyperedge_dual=self.hyperedge_dual.tolist(), vertex_dual=self.vertex_dual.tolist())
        return out


def _mc_flow(g: ConflictHypergraph, flow_backend: str) -> MulticlassResult:
    """``L*(2)`` by max flow on the bipartite double cover (exact integers).

    Network: ``s -> v'`` and ``v'' -> t`` with capacity ``w_v``; ``u' -> v''``
    and ``v' -> u''`` unbounded for every edge ``{u, v}``. A minimum cut with
    source side ``S`` gives the vertex cover ``C = {v' not in S} + {v'' in S}``
    of the double cover, and ``y_v = ([v' in C] + [v'' in C]) / 2`` is a
    minimum fractional vertex cover of the graph (``y_u + y_v >= 1`` on every
    edge, weight ``F / 2``), so ``q = 1 - y`` is optimal and ``L*(2) = F / (2 sum w)``.
    The flow is the certificate: ``lam_uv = (f(u' v'') + f(v' u'')) / (2 sum w)``
    and ``mu_v = (2 w_v - f(s v') - f(v'' t)) / (2 sum w) >= 0``.
    """
    n, e, w = g.n, g.edges, g.weights
    ne = e.shape[0]
    res = flow.bipartite_max_flow(n, n, np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]),
                                  w, w, backend=flow_backend)
    total = flow.sum_int(w)
    q = 0.5 * (res.source_a.astype(np.float64) + (~res.source_b).astype(np.float64))
    fe = res.flow_e
    lam_int = fe[:ne] + fe[ne:]
    mu_int = 2 * w - res.flow_a - res.flow_b
    den = 2 * total
    lam = _ratio(lam_int, den)
    mu = _ratio(mu_int, den)
    return MulticlassResult(g, res.value / den, q, lam, np.zeros(0), mu, int(res.value), g.degree, g.num_edges,
                            g.num_hyperedges, f"flow:{res.backend}")


def _ratio(a: np.ndarray, den: int) -> np.ndarray:
    if a.dtype != object and den < 2**53 and (a.size == 0 or int(np.abs(a).max()) < 2**53):
        return a.astype(np.float64) / float(den)
    return np.array([int(v) / den for v in a.tolist()], np.float64)


def _lp_pool(g: ConflictHypergraph) -> tuple[np.ndarray, np.ndarray]:
    """The constraints of the LP as ``[m, 3]`` rows (pair edges padded with the dummy vertex ``n``) and ``[E]`` keep.

    Pair edges inside a hyperedge are implied by it (``q >= 0``) and left
    out; ``keep`` marks the pair edges that stay.
    """
    n, e, h = g.n, g.edges, g.hyperedges
    keep = np.ones(e.shape[0], bool)
    if h.size:
        inside = _sorted_unique_rows(np.concatenate([h[:, [0, 1]], h[:, [1, 2]], h[:, [0, 2]]]), n)
        keep = ~np.isin(e[:, 0] * n + e[:, 1], inside[:, 0] * n + inside[:, 1])
    pairs = np.concatenate([e[keep], np.full((int(keep.sum()), 1), n, np.int64)], axis=1)
    return np.concatenate([pairs, h]), keep


def _lp_initial_rows(g: ConflictHypergraph, pool: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pool rows of the pair edges that carry flow in the ``L*(2)`` certificate (the first working set)."""
    e = g.edges
    if e.shape[0] == 0 or not keep.any():
        return np.zeros(0, np.int64)
    g2 = dataclasses.replace(g, hyperedges=np.zeros((0, 3), np.int64), degree=2, num_triangles=None)
    lam = _mc_flow(g2, "auto").edge_dual
    return np.flatnonzero(lam[keep] > 0)  # the kept pair edges come first in the pool, in edge order


def _lp_most_violated(pool: np.ndarray, viol: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """For every vertex the most violated constraint of ``rows`` that contains it (ties: pool order)."""
    order = rows[np.argsort(-viol[rows], kind="stable")]
    members = pool[order].ravel()
    owner = np.repeat(order, 3)
    real = members < n
    _, first = np.unique(members[real], return_index=True)
    return np.unique(owner[real][first])


def _lp_rows(pool: np.ndarray, rows: np.ndarray, n: int):
    """CSR pieces ``(starts [m], indices [nnz])`` of the pool rows ``rows`` (padding dropped)."""
    members = pool[rows]
    real = members < n
    starts = np.concatenate([[0], np.cumsum(real.sum(axis=1))[:-1]]).astype(np.int64)
    return starts, members[real]


class _ScipyWorkingLP:
    """The working LP through SciPy's HiGHS wrapper: each solve starts from scratch.

    ``rows``: the pool rows of the model, in the order they were added (the
    order of the row duals returned by ``solve``).
    """

    def __init__(self, pool: np.ndarray, c: np.ndarray, n: int):
        self.pool, self.c, self.n = pool, c, n
        self.rows = np.zeros(0, np.int64)

    def add(self, rows: np.ndarray) -> None:
        self.rows = np.concatenate([self.rows, rows])

    def solve(self):
        """``(q [n], row duals [m] in the order rows were added, upper-bound duals [n])``, scaled objective."""
        from scipy import sparse
        from scipy.optimize import linprog

        starts, idx = _lp_rows(self.pool, self.rows, self.n)
        indptr = np.append(starts, idx.size)
        a = sparse.csr_array((np.ones(idx.size), idx, indptr), shape=(self.rows.size, self.n))
        res = linprog(self.c, A_ub=a, b_ub=np.ones(self.rows.size), bounds=(0.0, 1.0), method="highs-ds",
                      options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        if res.status != 0:  # pragma: no cover - the LP is feasible (q = 0) and bounded
            raise RuntimeError(f"HiGHS did not solve the multi-class LP: {res.message}")
        return res.x, -res.ineqlin.marginals, -res.upper.marginals


def _mc_lp(g: ConflictHypergraph) -> MulticlassResult:
    """``L*(k)`` as a sparse LP solved by HiGHS, with its dual values, by constraint generation.

    The optimum of a relaxation that keeps only some constraints and
    satisfies all the others is optimal for the whole LP, and its dual
    values, with 0 on the constraints left out, are dual feasible: so HiGHS'
    dual simplex solves a small working set, starting from the pair edges
    that carry flow in the ``L*(2)`` certificate, and each pass adds, for
    every vertex, the most violated constraint that contains it, until no
    constraint is violated by more than ``1e-10`` (SciPy's wrapper of HiGHS
    solves each pass from scratch). A basic optimum has at
    most ``n`` tight constraints, so the working set stays a small part of
    the hyperedges (MNIST, 1,000 per class, l2 eps 3.5: 17,825 of 619,228
    rows in 13 passes). Pair edges inside a hyperedge are implied by it
    (``q >= 0``) and left out (their dual value is 0); the objective is
    scaled by ``1 / max p``.
    """
    n = g.n
    pool, keep = _lp_pool(g)
    scale = float(g.p.max())
    c = -g.p / scale
    q, lam_pool, mu = np.ones(n), np.zeros(pool.shape[0]), g.p.copy()
    if pool.shape[0]:
        lp_model = _ScipyWorkingLP(pool, c, n)
        in_work = np.zeros(pool.shape[0], bool)
        added = _lp_initial_rows(g, pool, keep)
        qpad = np.zeros(n + 1)
        while True:
            if added.size:
                lp_model.add(added)
                in_work[added] = True
            q, lam_w, mu_s = lp_model.solve() if in_work.any() else (np.ones(n), np.zeros(0), -c)
            qpad[:n] = q
            viol = qpad[pool].sum(axis=1) - 1.0
            out = np.flatnonzero((viol > 1e-10) & ~in_work)
            if out.size == 0:
                break
            added = _lp_most_violated(pool, viol, out, n)
        q = np.clip(q, 0.0, 1.0)  # HiGHS may return -1e-17 for a bound it holds exactly
        lam_pool[lp_model.rows] = np.maximum(lam_w, 0.0) * scale
        mu = np.maximum(mu_s, 0.0) * scale
    m_e = int(keep.sum())
    edge_dual = np.zeros(g.edges.shape[0])
    edge_dual[keep] = lam_pool[:m_e]
    loss = 1.0 - math.fsum((g.p * q).tolist())
    return MulticlassResult(g, loss, q, edge_dual, lam_pool[m_e:], mu, None, g.degree, g.num_edges,
                            g.num_hyperedges, "lp:highs")


def multiclass_zero_one(graph: ConflictHypergraph, *, backend: str = "auto",
                        flow_backend: str = "auto") -> MulticlassResult:
    """The optimal adversarial 0-1 loss ``L*(k)`` of a multi-class sample (Dai et al. 2023).

    ``L*(k) = 1 - max sum_v p_v q_v`` subject to ``sum_{v in e} q_v <= 1`` for
    every (hyper)edge of degree ``<= k`` and ``0 <= q <= 1``, with ``sum p = 1``.
    ``L*(2) <= L*(3) <= ...`` are lower bounds on the adversarial 0-1 loss of
    every classifier on the sample. ``L*(2) <= 1/2`` always (``q = 1/2`` is
    feasible) and ``L*(3) <= 2/3``. ``L*(2)`` is solved exactly by one max flow
    on the bipartite double cover (``L*(2) = F / (2 sum p)``; see
    :func:`_mc_flow`), ``L*(3)`` as a sparse LP by HiGHS.

    Args:
      graph: a :class:`ConflictHypergraph`.
      backend: ``"auto"`` (max flow without hyperedges, else LP), ``"flow"``
        (only without hyperedges) or ``"lp"``.
      flow_backend: the max-flow solver of the double cover, ``"auto"``
        (OR-Tools when the capacities fit int64, else networkx),
        ``"ortools"``, ``"scipy"`` or ``"networkx"`` (see
        :func:`jaxbound.flow.bipartite_max_flow`).

    Returns:
      :class:`MulticlassResult` (``loss``, ``q``, dual certificate, ``verify()``).

    References:
      Dai, Ding, Bhagoji, Cullina, Zhao, Zheng, Mittal. "Characterizing the
      optimal 0-1 loss for multi-class classification with a test-time
      attacker." NeurIPS 2023, arXiv:2302.10722 (the LP of §3, the degree-2
      truncation and its flow formulation).
    """
    if not isinstance(graph, ConflictHypergraph):
        raise ValueError(f"graph: expected a ConflictHypergraph, got {type(graph).__name__}")
    backend = _checks.check_choice(backend, "backend", _MC_BACKENDS)
    flow_backend = _checks.check_choice(flow_backend, "flow_backend", _FLOW_BACKENDS)
    if backend == "flow" and graph.num_hyperedges:
        raise ValueError(f"backend: 'flow' solves pair edges only; this graph has {graph.num_hyperedges} "
                         "hyperedges, use 'lp' or 'auto'")
    # host-side solvers: under jax.distributed process 0 solves and broadcasts the result
    if backend == "lp" or (backend == "auto" and graph.num_hyperedges):
        return distributed.on_process_zero(_mc_lp, graph)
    return distributed.on_process_zero(_mc_flow, graph, flow_backend)
