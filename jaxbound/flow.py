"""Host-side max-flow, minimum cuts and the OptProb recursion (Bhagoji et al. 2021, Algorithm 1).

Everything here is combinatorics on NumPy arrays; the public API built on it
lives in :mod:`jaxbound.bounds`.

Network. For a bipartite graph with parts ``A`` (``n_a`` vertices) and ``B``
(``n_b`` vertices) and edges ``(edge_a[e], edge_b[e])`` the flow network is::

    s --cap_a[u]--> u --(infinite)--> v --cap_b[v]--> t      (u in A, v in B)

A finite ``s``-``t`` cut with source side ``{s} + S`` costs
``cap_a(A \\ S) + cap_b(B & S)`` and ``(A \\ S) + (B & S)`` is a vertex cover,
so a minimum cut is a minimum-weight vertex cover and its complement
``(A & S) + (B \\ S)`` a maximum-weight independent set (Konig; the LinOpt
step of Algorithm 1). :func:`bipartite_max_flow` returns the flow and the
*minimal* minimum cut: ``S`` = the vertices reachable from ``s`` in the
residual network, where the middle edges are treated as infinite.

Exact arithmetic. Capacities are integers and stay integers:

* ``backend="ortools"``: OR-Tools' ``SimpleMaxFlow`` (push-relabel in C++,
  int64 capacities, the minimal minimum cut from its own residual search,
  ``get_source_side_min_cut``). Every capacity and the totals ``sum(cap_a)``
  and ``sum(cap_b)`` are checked to fit int64, so no flow or excess can
  overflow; OR-Tools' own ``POSSIBLE_OVERFLOW`` status is an error as well.
  Middle edges get the capacity of their ``A`` end (see below). OptProb
  builds its network once and only changes capacities between rounds
  (``set_arcs_capacity``): settled vertices and dropped edges get capacity 0.
* ``backend="scipy"``: SciPy's C implementation of Dinic's algorithm
  (``scipy.sparse.csgraph.maximum_flow``). SciPy stores capacities and flows
  as int32 and casts wider integers *silently* (a capacity of ``2**40``
  becomes 0), so every capacity is checked to be ``<= 2**31 - 1`` first and a
  ``ValueError`` is raised otherwise. Middle edges get the capacity of their
  ``A`` end, which never binds (the flow through ``u`` is at most
  ``cap_a[u]``), so no artificial "infinity" can overflow. Flows on single
  edges are bounded by capacities and the flow value is summed in int64 by
  SciPy, so the result is exact.
* ``backend="networkx"``: networkx's preflow-push on Python integers
  (arbitrary precision, middle edges truly infinite); slow but exact for any
  capacities, and independent of SciPy (it also computes its own residual
  reachability).
* ``backend="auto"``: OR-Tools when the capacities fit int64, networkx
  otherwise; except that networks of 4 million middle edges or more run on
  SciPy when they fit int32 (measured faster there, see ``_SCIPY_FROM_EDGES``).

A middle edge ``(u, v)`` with capacity ``cap_a[u]`` instead of infinity
changes neither the maximum flow nor the minimal minimum cut: it can only be
saturated by carrying all of ``u``'s inflow, and then ``u`` is reachable in the
residual network only backwards from ``v`` itself.

OptProb. :func:`optprob_parts` runs Algorithm 1 of Bhagoji et al. (2021)
iteratively (no Python recursion, so no stack limit). Because program (3)
separates over connected components and every recursive call of Algorithm 1
works on a vertex-disjoint subgraph, all subproblems alive at the same depth
are solved together with *one* max-flow call on their disjoint union (each
component with its own capacity scaling), and every subproblem is first split
into its connected components. Per component with class weights
``W_A = P(A)``, ``W_B = P(B)`` (integers) the capacities are
``w_u * W_B / g`` and ``w_v * W_A / g`` with ``g = gcd(W_A, W_B)``, i.e. the
LinOpt vector ``r`` of the paper up to a common positive factor. A component
is final when the minimal minimum cut is the trivial one (``S`` empty, the
equality case ``P(A+)P(B+) = P(A-)P(B-)`` of Lemma 4); then ``q = W_A / (W_A +
W_B)`` on its ``A`` side, ``W_B / (W_A + W_B)`` on its ``B`` side and the
flow, rescaled, is the adversary strategy ``z`` of Lemma 2. Otherwise it is
split into ``(A+, B-) = S`` and ``(A-, B+)`` and the edges between ``A-`` and
``B-`` are dropped (lines 3-6 of Algorithm 1). Two kinds of components are
final without a flow: isolated vertices (``q = 1``, ``z_v = p_v``) and
complete bipartite components (single edges, stars, ...), whose every vertex
cover contains a whole side, so the trivial cut is minimum; there
``z_uv = p_u p_v P(A + B) / (P(A) P(B))`` and ``z_v = 0``.

Vertices of weight 0 are outside the support of the distribution: they get
``q = 0`` and ``z = 0`` and their edges are removed (``q_v = 0`` satisfies
every constraint they take part in and leaves the others free).

References:
  Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in the
  presence of test-time adversaries." ICML 2021, arXiv:2104.08382
  (Algorithm 1 OptProb, Lemmas 2-5, Theorem 3).
  Bhagoji, Cullina, Mittal. "Lower bounds on adversarial robustness from
  optimal transport." NeurIPS 2019, arXiv:1909.12272 (the 0-1 loss as a
  minimum vertex cover of the conflict graph).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "BipartiteFlow",
    "VertexCover",
    "OptProbParts",
    "bipartite_max_flow",
    "min_vertex_cover",
    "optprob_parts",
    "sum_int",
]

#: Largest capacity SciPy's max-flow stores without overflow.
INT32_MAX = 2**31 - 1
#: Largest capacity and capacity total OR-Tools' max-flow takes without overflow.
INT64_MAX = 2**63 - 1
_BACKENDS = ("auto", "ortools", "scipy", "networkx")
#: From this many middle edges on, ``"auto"`` runs SciPy's Dinic when the network fits int32: OR-Tools
#: rebuilds its graph at every solve, and on MNIST 3 vs 7 conflict graphs (OptProb, CPU seconds, one run)
#: the two were even from 1 to 3 million edges and SciPy took 6.5 s against OR-Tools' 10.2 s at 13.2 million,
#: while OR-Tools took 0.09 s against 0.12-0.47 s at 30,000.
_SCIPY_FROM_EDGES = 4_000_000


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_count(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name}: expected a non-negative integer, got {n!r}")
    if int(n) < 0:
        raise ValueError(f"{name}: must be >= 0, got {int(n)}")
    return int(n)


def _check_index(idx: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of vertex indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: vertex indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name}: vertex index out of range [0, {n}): found {lo if lo < 0 else hi}")
    return arr


def _check_integer_weights(w: Any, name: str, n: int) -> np.ndarray:
    """Non-negative integer capacities ``[n]``: int64, or object (Python ints) for big values."""
    arr = np.asarray(w)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}], got {arr.shape}")
    if arr.dtype == object:
        vals = arr.tolist()
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name}: integer capacities required, found {v!r}")
            if v < 0:
                raise ValueError(f"{name}: capacities must be non-negative, found {v}")
        out = np.empty(n, dtype=object)
        out[:] = [int(v) for v in vals]
        if n == 0 or max(out) < 2**62:
            return out.astype(np.int64)
        return out
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"{name}: integer capacities required, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.unsignedinteger) and arr.size and int(arr.max()) >= 2**63:
        out = np.empty(n, dtype=object)
        out[:] = [int(v) for v in arr.tolist()]
        return out
    arr = arr.astype(np.int64, copy=False)
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name}: capacities must be non-negative, found {int(arr.min())}")
    return arr


def _check_problem(n_a, n_b, edge_a, edge_b, w_a, w_b, names):
    """Checked part sizes, ``[E]`` edge endpoints and the integer vertex weights named ``names``."""
    n_a, n_b = _check_count(n_a, "n_a"), _check_count(n_b, "n_b")
    ea, eb = _check_index(edge_a, "edge_a", n_a), _check_index(edge_b, "edge_b", n_b)
    if ea.shape != eb.shape:
        raise ValueError(f"edge_b: has {eb.size} entries but edge_a has {ea.size}")
    return n_a, n_b, ea, eb, _check_integer_weights(w_a, names[0], n_a), _check_integer_weights(w_b, names[1], n_b)


def _check_backend(backend: Any) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend: must be one of {_BACKENDS}, got {backend!r}")
    return backend


def _max_int(a: np.ndarray) -> int:
    return int(max(a.tolist())) if a.dtype == object and a.size else (int(a.max()) if a.size else 0)


def sum_int(a: np.ndarray) -> int:
    """Exact sum of an int64 or object array of integers as a Python int.

    Args:
      a: ``[n]`` int64 array, or an object array of Python ints (values beyond int64).

    Returns:
      The sum, computed in int64 when it cannot overflow and in Python
      integers otherwise.
    """
    if a.size == 0:
        return 0
    if a.dtype == object:
        return int(sum(a.tolist()))
    if a.size * max(1, int(a.max())) < 2**62:
        return int(a.sum())
    return int(sum(int(v) for v in a.tolist()))


def _segment_sum(values: np.ndarray, seg: np.ndarray, nseg: int) -> np.ndarray:
    """Exact per-segment sums (int64 when safe, else Python ints in an object array)."""
    if values.dtype != object:
        total = sum_int(values)
        if total < 2**53:  # float64 sums of integers below 2**53 are exact
            return np.bincount(seg, weights=values, minlength=nseg).astype(np.int64)
        if total < 2**62:
            out = np.zeros(nseg, np.int64)
            np.add.at(out, seg, values)
            return out
    out = np.zeros(nseg, dtype=object)
    out[:] = 0
    for s, v in zip(seg.tolist(), values.tolist()):
        out[s] += int(v)
    return out


def _sort_edges(n_b: int, ea: np.ndarray, eb: np.ndarray, name: str = "edge_a"):
    """Order edges by (a, b); returns (ea, eb, perm or None). Duplicates are an error."""
    if ea.size == 0:
        return ea, eb, None
    key = ea * max(n_b, 1) + eb
    if key.size > 1 and np.all(key[1:] > key[:-1]):
        return ea, eb, None
    perm = np.argsort(key, kind="stable")
    ks = key[perm]
    if np.any(ks[1:] == ks[:-1]):
        raise ValueError(f"{name}: duplicate edges are not allowed")
    return ea[perm], eb[perm], perm


# ---------------------------------------------------------------------------
# Max flow
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BipartiteFlow:
    """A maximum flow of ``s -> A -> B -> t`` and its minimal minimum cut.

    Attributes:
      value: the maximum flow value (a Python int) = weight of a minimum
        vertex cover.
      flow_a: ``[n_a]`` flow on ``s -> u``.
      flow_b: ``[n_b]`` flow on ``v -> t``.
      flow_e: ``[E]`` flow on the middle edges, in the caller's edge order.
      source_a: ``[n_a]`` bool, ``u`` on the source side of the minimal
        minimum cut (``A+`` of Algorithm 1).
      source_b: ``[n_b]`` bool, ``v`` on the source side (``B-``).
      backend: the solver that ran (``"ortools"``, ``"scipy"`` or ``"networkx"``).
    """

    value: int
    flow_a: np.ndarray
    flow_b: np.ndarray
    flow_e: np.ndarray
    source_a: np.ndarray
    source_b: np.ndarray
    backend: str


def _fits_scipy(n_a: int, n_b: int, n_e: int, cap_a: np.ndarray, cap_b: np.ndarray) -> bool:
    if cap_a.dtype == object or cap_b.dtype == object:
        return False
    if max(_max_int(cap_a), _max_int(cap_b)) > INT32_MAX:
        return False
    # node ids and the entries of the network with SciPy's reverse edges must fit int32
    return n_a + n_b + 2 <= INT32_MAX and 2 * (n_e + n_a + n_b) <= INT32_MAX


def _fits_ortools(n_a: int, n_b: int, n_e: int, cap_a: np.ndarray, cap_b: np.ndarray) -> bool:
    """Capacities and their totals fit int64; node ids and arcs (with reverse arcs) fit int32."""
    if cap_a.dtype == object or cap_b.dtype == object:
        return False
    if sum_int(cap_a) > INT64_MAX or sum_int(cap_b) > INT64_MAX:
        return False
    return n_a + n_b + 2 <= INT32_MAX and 2 * (n_e + n_a + n_b) <= INT32_MAX


class _OrtoolsNetwork:
    """``s -> A -> B -> t`` as one OR-Tools ``SimpleMaxFlow``, built once and re-solved with new capacities.

    Nodes: ``A`` = ``0 .. n_a - 1``, ``B`` = ``n_a .. n_a + n_b - 1``, then
    ``s`` and ``t``. Arcs: ``s -> u`` (``n_a``), ``v -> t`` (``n_b``), then the
    middle edges in the caller's order. A solve sets every capacity at once
    (``set_arcs_capacity``), so vertices and edges outside the current
    subproblem simply get capacity 0 and no arc is ever rebuilt.
    """

    def __init__(self, n_a: int, n_b: int, ea: np.ndarray, eb: np.ndarray):
        from ortools.graph.python import max_flow

        self.n_a, self.n_b, self.ea = n_a, n_b, ea
        self.s, self.t = n_a + n_b, n_a + n_b + 1
        self.solver = max_flow.SimpleMaxFlow()
        self.status = max_flow.SimpleMaxFlow
        # the last arc, t -> s with capacity 0, only makes both terminals nodes of the graph: OR-Tools
        # answers "optimal" with an empty cut when the sink has no arc at all
        tails = np.concatenate([np.full(n_a, self.s, np.int64), np.arange(n_a, n_a + n_b), ea, [self.t]])
        heads = np.concatenate([np.arange(n_a), np.full(n_b, self.t, np.int64), n_a + eb, [self.s]])
        self.arcs = np.asarray(self.solver.add_arcs_with_capacity(
            tails.astype(np.int32), heads.astype(np.int32), np.zeros(tails.size, np.int64)), np.int32)

    def solve(self, cap_a: np.ndarray, cap_b: np.ndarray, cap_e: np.ndarray | None = None):
        """Max flow for int64 ``cap_a [n_a]``, ``cap_b [n_b]`` (middle: ``cap_e [E]``, default ``cap_a[ea]``).

        Returns ``(flow_a, flow_b, flow_e, source_a, source_b)`` with the
        minimal minimum cut, or ``None`` when OR-Tools reports a possible
        overflow.
        """
        n_a, n_b = self.n_a, self.n_b
        if cap_e is None:
            cap_e = cap_a[self.ea]
        caps = np.concatenate([cap_a, cap_b, cap_e, [0]]).astype(np.int64, copy=False)
        self.solver.set_arcs_capacity(self.arcs, caps)
        status = self.solver.solve(self.s, self.t)
        if status == self.status.POSSIBLE_OVERFLOW:
            return None
        if status != self.status.OPTIMAL:  # pragma: no cover - BAD_INPUT / BAD_RESULT never arise here
            raise RuntimeError(f"OR-Tools max flow failed with status {status}")
        f = np.asarray(self.solver.flows(self.arcs), np.int64)
        seen = np.zeros(n_a + n_b + 2, bool)
        seen[np.asarray(self.solver.get_source_side_min_cut(), np.int64)] = True
        if not seen[self.s] or seen[self.t]:  # pragma: no cover - guards the layout assumptions above
            raise RuntimeError("OR-Tools returned a cut that does not separate s from t")
        return f[:n_a], f[n_a:n_a + n_b], f[n_a + n_b:-1], seen[:n_a], seen[n_a:n_a + n_b]


def _flow_scipy(n_a, n_b, ea, eb, cap_a, cap_b):
    """Dinic (SciPy) on sorted unique edges; returns (flow_a, flow_b, flow_e) as int64."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import maximum_flow

    n_e = ea.size
    n = n_a + n_b + 2
    deg_a = np.bincount(ea, minlength=n_a).astype(np.int64)
    counts = np.concatenate([[n_a, 0], deg_a, np.ones(n_b, np.int64)])
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([
        np.arange(2, 2 + n_a, dtype=np.int64),
        2 + n_a + eb,
        np.ones(n_b, np.int64),
    ]).astype(np.int32)
    mid = np.maximum(cap_a[ea], 1)  # never binds: flow through u is <= cap_a[u]
    data = np.concatenate([cap_a, mid, cap_b]).astype(np.int32)
    graph = csr_array((data, indices, indptr.astype(np.int32)), shape=(n, n))
    res = maximum_flow(graph, 0, 1, method="dinic")
    f = res.flow
    if not f.has_sorted_indices:
        f = f.copy()
        f.sort_indices()
    fptr = np.asarray(f.indptr, np.int64)
    fidx = np.asarray(f.indices)
    fdat = np.asarray(f.data)
    # row 0: s -> every A node, in order
    if fptr[1] - fptr[0] != n_a or not np.array_equal(fidx[fptr[0]:fptr[1]], np.arange(2, 2 + n_a)):
        raise RuntimeError("unexpected layout of SciPy's flow matrix (source row)")
    flow_a = fdat[fptr[0]:fptr[1]].astype(np.int64)
    # rows of A nodes: reverse entry to s (column 0) then the middle edges in column order
    lo, hi = fptr[2], fptr[2 + n_a]
    sl_idx, sl_dat = fidx[lo:hi], fdat[lo:hi]
    mask = sl_idx >= 2 + n_a
    flow_e = sl_dat[mask].astype(np.int64)
    if flow_e.size != n_e or not np.array_equal(sl_idx[mask], 2 + n_a + eb):
        raise RuntimeError("unexpected layout of SciPy's flow matrix (middle edges)")
    # rows of B nodes: the entry in column 1 is v -> t
    lo, hi = fptr[2 + n_a], fptr[n]
    sl_idx, sl_dat = fidx[lo:hi], fdat[lo:hi]
    mask = sl_idx == 1
    flow_b = sl_dat[mask].astype(np.int64)
    if flow_b.size != n_b:
        raise RuntimeError("unexpected layout of SciPy's flow matrix (sink edges)")
    return flow_a, flow_b, flow_e


def _csr_graph(n: int, rows: np.ndarray, cols: np.ndarray):
    """CSR adjacency (float64 ones, int32 indices) from edges already sorted by row."""
    from scipy.sparse import csr_array

    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    idx_dtype = np.int32 if max(n, rows.size) < INT32_MAX else np.int64
    return csr_array((np.ones(rows.size, np.float64), cols.astype(idx_dtype), indptr.astype(idx_dtype)),
                     shape=(n, n))


def _reachable(n_a, n_b, ea, eb, flow_e, start_a):
    """Vertices reachable from ``s`` in the residual network (middle edges infinite).

    From ``s``: the ``A`` vertices with unsaturated source edges; ``u -> v``
    always; ``v -> u`` where the flow on ``(u, v)`` is positive. ``ea`` must
    be sorted (edges ordered by ``(a, b)``).
    """
    from scipy.sparse.csgraph import breadth_first_order

    root = n_a + n_b
    starts = np.flatnonzero(start_a)
    if starts.size == 0:
        return np.zeros(n_a, bool), np.zeros(n_b, bool)
    pos = np.flatnonzero(flow_e > 0)
    order = np.argsort(eb[pos], kind="stable")
    rb, ca = eb[pos][order], ea[pos][order]
    rows = np.concatenate([ea, n_a + rb, np.full(starts.size, root, np.int64)])
    cols = np.concatenate([n_a + eb, ca, starts])
    g = _csr_graph(root + 1, rows, cols)
    reached = breadth_first_order(g, root, directed=True, return_predecessors=False)
    seen = np.zeros(root + 1, bool)
    seen[reached] = True
    return seen[:n_a], seen[n_a:root]


def _flow_networkx(n_a, n_b, ea, eb, cap_a, cap_b):
    """Preflow-push (networkx) on Python ints; returns flows (object arrays) and the cut."""
    import networkx as nx
    from networkx.algorithms.flow import preflow_push

    s, t = n_a + n_b, n_a + n_b + 1
    g = nx.DiGraph()
    g.add_nodes_from(range(n_a + n_b + 2))
    ca, cb = cap_a.tolist(), cap_b.tolist()
    g.add_edges_from((s, u, {"capacity": int(ca[u])}) for u in range(n_a))
    g.add_edges_from((n_a + v, t, {"capacity": int(cb[v])}) for v in range(n_b))
    g.add_edges_from((int(u), n_a + int(v)) for u, v in zip(ea.tolist(), eb.tolist()))  # infinite
    r = preflow_push(g, s, t)

    def f(x, y):  # the residual network omits zero-capacity edges
        attr = r[x].get(y)
        return 0 if attr is None else max(int(attr["flow"]), 0)

    flow_a = np.empty(n_a, dtype=object)
    flow_a[:] = [f(s, u) for u in range(n_a)]
    flow_b = np.empty(n_b, dtype=object)
    flow_b[:] = [f(n_a + v, t) for v in range(n_b)]
    flow_e = np.empty(ea.size, dtype=object)
    flow_e[:] = [f(int(u), n_a + int(v)) for u, v in zip(ea.tolist(), eb.tolist())]
    # networkx's own residual reachability (as in nx.minimum_cut)
    seen = {s}
    stack = [s]
    while stack:
        x = stack.pop()
        for y, attr in r[x].items():
            if y not in seen and attr["flow"] < attr["capacity"]:
                seen.add(y)
                stack.append(y)
    if t in seen:  # pragma: no cover - a maximum flow leaves t unreachable
        raise RuntimeError("networkx returned a flow that is not maximum")
    src = np.zeros(n_a + n_b, bool)
    src[[x for x in seen if x < n_a + n_b]] = True
    return flow_a, flow_b, flow_e, src[:n_a], src[n_a:]


def _as_int64_if_small(a: np.ndarray) -> np.ndarray:
    if a.dtype == object and (a.size == 0 or max(abs(int(v)) for v in a.tolist()) < 2**62):
        return a.astype(np.int64)
    return a


def _resolve_backend(n_a, n_b, n_e, cap_a, cap_b, backend) -> str:
    """The solver ``backend`` runs on this network; a ValueError when a named one cannot hold it."""
    if backend == "auto":
        if n_e >= _SCIPY_FROM_EDGES and _fits_scipy(n_a, n_b, n_e, cap_a, cap_b):
            return "scipy"
        return "ortools" if _fits_ortools(n_a, n_b, n_e, cap_a, cap_b) else "networkx"
    if backend == "ortools" and not _fits_ortools(n_a, n_b, n_e, cap_a, cap_b):
        raise ValueError(
            "backend: 'ortools' stores capacities as int64, but this network needs more (largest capacity "
            f"{max(_max_int(cap_a), _max_int(cap_b))}, totals {sum_int(cap_a)} and {sum_int(cap_b)}, limit "
            f"{INT64_MAX}); use backend='networkx' or 'auto' for exact big-integer flows"
        )
    if backend == "scipy" and not _fits_scipy(n_a, n_b, n_e, cap_a, cap_b):
        raise ValueError(
            "backend: 'scipy' stores capacities and node ids as int32, but this network needs more "
            f"(largest capacity {max(_max_int(cap_a), _max_int(cap_b))}, limit {INT32_MAX}); "
            "use backend='networkx' or 'auto' for exact big-integer flows"
        )
    return backend


def _overflow(backend):
    if backend == "ortools":
        raise ValueError("backend: OR-Tools reported a possible int64 overflow on this network; "
                         "use backend='networkx' or 'auto' for exact big-integer flows")


def _max_flow_sorted(n_a, n_b, ea, eb, cap_a, cap_b, backend, network=None, alive=None, use=None):
    """One max flow on sorted unique edges: ``(flow_a, flow_b, flow_e, source_a, source_b, solver)``.

    ``network``: an :class:`_OrtoolsNetwork` over a larger graph to reuse,
    with ``alive = (ia, ib, eidx)`` mapping this subproblem's vertices and
    edges into it; ``use``: the solver already chosen by :func:`_resolve_backend`.
    """
    if use is None:
        use = _resolve_backend(n_a, n_b, ea.size, cap_a, cap_b, backend)
    if use == "ortools":
        out = _flow_ortools(n_a, n_b, ea, eb, cap_a, cap_b, network, alive)
        if out is not None:
            return (*out, use)
        _overflow(backend)
        use = "networkx"
    if use == "scipy":
        fa, fb, fe = _flow_scipy(n_a, n_b, ea, eb, cap_a, cap_b)
        sa, sb = _reachable(n_a, n_b, ea, eb, fe, fa < cap_a)
    else:
        fa, fb, fe, sa, sb = _flow_networkx(n_a, n_b, ea, eb, cap_a, cap_b)
        fa, fb, fe = _as_int64_if_small(fa), _as_int64_if_small(fb), _as_int64_if_small(fe)
    return fa, fb, fe, sa, sb, use


def _flow_ortools(n_a, n_b, ea, eb, cap_a, cap_b, network, alive):
    """OR-Tools max flow, on a fresh network or on the shared ``network`` (capacities 0 outside ``alive``)."""
    if network is None:
        return _OrtoolsNetwork(n_a, n_b, ea, eb).solve(cap_a, cap_b)
    ia, ib, eidx = alive
    full_a = np.zeros(network.n_a, np.int64)
    full_a[ia] = cap_a
    full_b = np.zeros(network.n_b, np.int64)
    full_b[ib] = cap_b
    full_e = np.zeros(network.ea.size, np.int64)
    full_e[eidx] = full_a[network.ea[eidx]]
    out = network.solve(full_a, full_b, full_e)
    if out is None:
        return None
    fa, fb, fe, sa, sb = out
    return fa[ia], fb[ib], fe[eidx], sa[ia], sb[ib]


def bipartite_max_flow(
    n_a: int,
    n_b: int,
    edge_a: Any,
    edge_b: Any,
    cap_a: Any,
    cap_b: Any,
    *,
    backend: str = "auto",
) -> BipartiteFlow:
    """Maximum flow and minimal minimum cut of ``s -> A -> B -> t`` with infinite middle edges.

    Args:
      n_a: number of vertices of ``A``.
      n_b: number of vertices of ``B``.
      edge_a: ``[E]`` integer endpoints in ``A``.
      edge_b: ``[E]`` integer endpoints in ``B`` (edges must be unique).
      cap_a: ``[n_a]`` non-negative integer capacities of ``s -> u`` (int64,
        or an object array of Python ints for values beyond int64).
      cap_b: ``[n_b]`` non-negative integer capacities of ``v -> t``.
      backend: ``"auto"`` (OR-Tools when the capacities fit int64, else
        networkx; SciPy from 4 million edges on when it can hold the
        network), ``"ortools"`` (int64 capacities and totals, checked),
        ``"scipy"`` (int32 capacities, checked) or ``"networkx"`` (exact for
        any size).

    Returns:
      :class:`BipartiteFlow`.
    """
    n_a, n_b, ea, eb, cap_a, cap_b = _check_problem(n_a, n_b, edge_a, edge_b, cap_a, cap_b, ("cap_a", "cap_b"))
    backend = _check_backend(backend)
    ea_s, eb_s, perm = _sort_edges(n_b, ea, eb)
    fa, fb, fe, sa, sb, used = _max_flow_sorted(n_a, n_b, ea_s, eb_s, cap_a, cap_b, backend)
    if perm is not None:
        out = np.empty_like(fe)
        out[perm] = fe
        fe = out
    return BipartiteFlow(sum_int(fa), fa, fb, fe, sa, sb, used)


# ---------------------------------------------------------------------------
# Minimum vertex cover (0-1 loss)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VertexCover:
    """A minimum-weight vertex cover of a bipartite graph (Konig, via max flow).

    Attributes:
      weight: total weight of the cover (Python int) = the max-flow value.
      cover_a: ``[n_a]`` bool, ``u`` in the cover.
      cover_b: ``[n_b]`` bool.
      flow_e: ``[E]`` a maximum fractional matching (the flow), whose total
        equals ``weight``: the dual certificate of optimality.
      backend: solver used.
    """

    weight: int
    cover_a: np.ndarray
    cover_b: np.ndarray
    flow_e: np.ndarray
    backend: str


def min_vertex_cover(
    n_a: int, n_b: int, edge_a: Any, edge_b: Any, w_a: Any, w_b: Any, *, backend: str = "auto"
) -> VertexCover:
    """Minimum-weight vertex cover ``(A \\ S) + (B & S)`` of the minimal minimum cut.

    Args:
      n_a, n_b: part sizes.
      edge_a, edge_b: ``[E]`` unique edges.
      w_a, w_b: non-negative integer vertex weights.
      backend: see :func:`bipartite_max_flow`.

    Returns:
      :class:`VertexCover`.
    """
    # checked under this function's own argument names (w_a, w_b), then solved
    n_a, n_b, ea, eb, w_a, w_b = _check_problem(n_a, n_b, edge_a, edge_b, w_a, w_b, ("w_a", "w_b"))
    res = bipartite_max_flow(n_a, n_b, ea, eb, w_a, w_b, backend=backend)
    return VertexCover(res.value, ~res.source_a, res.source_b.copy(), res.flow_e, res.backend)


# ---------------------------------------------------------------------------
# OptProb (Algorithm 1), iterative
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptProbParts:
    """The solution structure of program (3) found by OptProb (Lemma 5).

    Attributes:
      part_a: ``[n_a]`` int64 final part of each ``A`` vertex (``-1`` for
        zero-weight vertices, which are outside the support).
      part_b: ``[n_b]`` int64 final part of each ``B`` vertex.
      weight_a: per part the exact weight ``P(A_i)`` (Python ints, same units
        as the input weights).
      weight_b: per part ``P(B_i)``.
      z_edge: ``[E]`` float64 adversary strategy on the edges (edge rows of
        ``M``), normalised so that ``sum(z) = 1``.
      z_a: ``[n_a]`` float64 strategy on the vertex rows of ``M`` for ``A``.
      z_b: ``[n_b]`` float64 for ``B``.
      rounds: number of max-flow rounds (depth of the recursion).
      backends: solvers used, in round order.

    Parts are numbered by increasing ``P(A_i) / P(A_i + B_i)`` (the index
    ``a(u)`` of Lemma 5: an edge ``(u, v)`` has ``part_a[u] <= part_b[v]``).
    """

    part_a: np.ndarray
    part_b: np.ndarray
    weight_a: list
    weight_b: list
    z_edge: np.ndarray
    z_a: np.ndarray
    z_b: np.ndarray
    rounds: int
    backends: tuple

    def q(self) -> tuple[np.ndarray, np.ndarray]:
        """``(q_a [n_a], q_b [n_b])``: ``P(A_i)/P(A_i+B_i)`` and ``P(B_i)/P(A_i+B_i)`` (0 off-support)."""
        qa_part = np.array([wa / (wa + wb) for wa, wb in zip(self.weight_a, self.weight_b)], np.float64)
        qb_part = np.array([wb / (wa + wb) for wa, wb in zip(self.weight_a, self.weight_b)], np.float64)
        qa = np.where(self.part_a >= 0, qa_part[np.maximum(self.part_a, 0)] if qa_part.size else 0.0, 0.0)
        qb = np.where(self.part_b >= 0, qb_part[np.maximum(self.part_b, 0)] if qb_part.size else 0.0, 0.0)
        return qa, qb

    def loss(self) -> float:
        """``-sum_v p_v log q_v`` (natural log) with ``p`` normalised to sum 1."""
        total = sum(self.weight_a) + sum(self.weight_b)
        terms = []
        for wa, wb in zip(self.weight_a, self.weight_b):
            s = wa + wb
            if wa:
                terms.append(-(wa / total) * math.log(wa / s))
            if wb:
                terms.append(-(wb / total) * math.log(wb / s))
        return math.fsum(terms)


def _components(n_a, n_b, ea, eb, alive_e):
    """Connected components of the graph of alive edges (``ea`` sorted)."""
    from scipy.sparse.csgraph import connected_components

    g = _csr_graph(n_a + n_b, ea[alive_e], n_a + eb[alive_e])
    _, lab = connected_components(g, directed=True, connection="weak")
    return lab[:n_a].astype(np.int64), lab[n_a:].astype(np.int64)


def _fraction_float(num: int, den: int) -> float:
    return num / den  # Python int true division is correctly rounded


def _ratio_to_float(w: np.ndarray, total: int) -> np.ndarray:
    """Correctly rounded ``w / total`` for integer ``w``."""
    if w.dtype != object and total < 2**53:
        return w.astype(np.float64) / float(total)  # exact operands: one rounding
    return np.array([int(v) / total for v in w.tolist()], np.float64)


class _OptProbState:
    """The mutable state of the iterative OptProb recursion (one instance per :func:`optprob_parts` call).

    ``alive_*`` mark the vertices and edges not yet assigned to a final part;
    ``part_*`` hold the (creation-order) part of each settled vertex and
    ``parts_wa`` / ``parts_wb`` the exact class weights of each part.
    """

    def __init__(self, n_a, n_b, ea, eb, w_a, w_b, total):
        self.n_a, self.n_b, self.ea, self.eb = n_a, n_b, ea, eb
        self.w_a, self.w_b, self.total = w_a, w_b, total
        big = w_a.dtype == object or w_b.dtype == object
        self.pos_a = (w_a > 0) if not big else np.array([int(v) > 0 for v in w_a.tolist()], bool)
        self.pos_b = (w_b > 0) if not big else np.array([int(v) > 0 for v in w_b.tolist()], bool)
        self.part_a = np.full(n_a, -1, np.int64)
        self.part_b = np.full(n_b, -1, np.int64)
        self.alive_a, self.alive_b = self.pos_a.copy(), self.pos_b.copy()
        self.alive_e = self.alive_a[ea] & self.alive_b[eb]
        self.z_edge = np.zeros(ea.size, np.float64)
        self.z_a = np.zeros(n_a, np.float64)
        self.z_b = np.zeros(n_b, np.float64)
        self.parts_wa: list[int] = []
        self.parts_wb: list[int] = []
        self.backends: list[str] = []
        self.rounds = 0
        self.network = None  # the OR-Tools network of the whole graph, built at the first OR-Tools round

    def network_positions(self, ia, ib, eidx, la, lb):
        """Positions of this round's vertices and edges in the shared OR-Tools network.

        The network is built at the first OR-Tools round on the vertices and
        edges alive then; later rounds only ever remove some, so every later
        subproblem maps into it (the others get capacity 0) until fewer than
        half of its edges are alive, when it is built again on those.
        """
        if self.network is None or 2 * eidx.size < self.network.ea.size:
            # OR-Tools rebuilds its internal graph at every solve: a network twice the size of what is
            # left is rebuilt on the alive part (total work at most twice the sum of the round sizes)
            self.network = _OrtoolsNetwork(ia.size, ib.size, la, lb)
            self.network_ids = (ia, ib, eidx)
            return np.arange(ia.size), np.arange(ib.size), np.arange(eidx.size)
        out = []
        for have, now in zip(self.network_ids, (ia, ib, eidx)):
            # a subset of the network's sorted ids: of the same size it is the same set
            out.append(np.arange(now.size) if now.size == have.size else np.searchsorted(have, now))
        return tuple(out)

    def new_part(self, wa: int, wb: int) -> int:
        self.parts_wa.append(int(wa))
        self.parts_wb.append(int(wb))
        return len(self.parts_wa) - 1

    def alive(self):
        return np.flatnonzero(self.alive_a), np.flatnonzero(self.alive_b)

    def settle_isolated(self, lab_a, lab_b, ncomp) -> int:
        """One-sided components are isolated vertices: ``q = 1``, ``z_v = p_v`` (final). Returns the count."""
        ia, ib = self.alive()
        has_a = np.zeros(ncomp, bool)
        has_a[lab_a[ia]] = True
        has_b = np.zeros(ncomp, bool)
        has_b[lab_b[ib]] = True
        lone_a = ia[~has_b[lab_a[ia]]]
        lone_b = ib[~has_a[lab_b[ib]]]
        done = 0
        for lone, part, zv, w, alive in ((lone_a, self.part_a, self.z_a, self.w_a, self.alive_a),
                                         (lone_b, self.part_b, self.z_b, self.w_b, self.alive_b)):
            if lone.size:
                ws = w[lone]
                wsum = sum_int(ws)
                pid = self.new_part(wsum, 0) if part is self.part_a else self.new_part(0, wsum)
                part[lone] = pid
                zv[lone] = _ratio_to_float(ws, self.total)
                alive[lone] = False
                done += lone.size
        return done

    def settle_complete(self, lab_a, lab_b, ncomp) -> int:
        """Complete bipartite components are final without a flow (the trivial cut is minimum).

        ``q`` = class frequencies, ``z_uv = p_u p_v P(A+B) / (P(A) P(B))`` and
        ``z_v = 0`` (Lemma 4.2). Returns the number of vertices settled.
        """
        ea, eb, w_a, w_b = self.ea, self.eb, self.w_a, self.w_b
        ia, ib = self.alive()
        na_c = np.bincount(lab_a[ia], minlength=ncomp)
        nb_c = np.bincount(lab_b[ib], minlength=ncomp)
        e_alive = np.flatnonzero(self.alive_e)
        ne_c = np.bincount(lab_a[ea[e_alive]], minlength=ncomp)
        complete = (na_c > 0) & (nb_c > 0) & (ne_c == na_c * nb_c)
        if not complete.any():
            return 0
        ua = ia[complete[lab_a[ia]]]
        ub = ib[complete[lab_b[ib]]]
        cids = np.flatnonzero(complete)
        cmap = np.full(ncomp, -1, np.int64)
        cmap[cids] = np.arange(cids.size)
        WA_c = _segment_sum(w_a[ua], cmap[lab_a[ua]], cids.size).tolist()
        WB_c = _segment_sum(w_b[ub], cmap[lab_b[ub]], cids.size).tolist()
        pid = np.empty(cids.size, np.int64)
        factor = np.empty(cids.size, np.float64)
        for i, (wa_c, wb_c) in enumerate(zip(WA_c, WB_c)):
            wa_c, wb_c = int(wa_c), int(wb_c)
            pid[i] = self.new_part(wa_c, wb_c)
            factor[i] = _fraction_float(wa_c + wb_c, wa_c * wb_c * self.total)
        self.part_a[ua] = pid[cmap[lab_a[ua]]]
        self.part_b[ub] = pid[cmap[lab_b[ub]]]
        ec = e_alive[complete[lab_a[ea[e_alive]]]]
        self.z_edge[ec] = (_to_float(w_a[ea[ec]]) * _to_float(w_b[eb[ec]])) * factor[cmap[lab_a[ea[ec]]]]
        self.alive_a[ua] = False
        self.alive_b[ub] = False
        self.alive_e[ec] = False
        return ua.size + ub.size

    def linopt_round(self, lab_a, lab_b, ncomp, backend) -> int:
        """One LinOpt round (one max flow) on the disjoint union of the remaining components.

        Components whose minimal minimum cut is trivial become final parts (q
        from the class weights, z from the flow, Lemma 4.2); the others are
        split by dropping the edges between ``A-`` (sink side) and ``B-``
        (source side). Returns the number of vertices settled.
        """
        ia, ib = self.alive()
        self.rounds += 1
        comps = np.unique(np.concatenate([lab_a[ia], lab_b[ib]]))
        cid = np.full(ncomp, -1, np.int64)
        cid[comps] = np.arange(comps.size)
        ca, cb = cid[lab_a[ia]], cid[lab_b[ib]]
        k = comps.size
        wa_sub, wb_sub = self.w_a[ia], self.w_b[ib]
        WA = _segment_sum(wa_sub, ca, k)
        WB = _segment_sum(wb_sub, cb, k)
        if WA.dtype != object and WB.dtype != object:
            g = np.gcd(WA, WB)
            mult_a, mult_b = WB // g, WA // g
        else:
            g = np.array([math.gcd(int(x), int(y)) for x, y in zip(WA.tolist(), WB.tolist())], dtype=object)
            mult_a = np.array([int(y) // int(d) for y, d in zip(WB.tolist(), g.tolist())], dtype=object)
            mult_b = np.array([int(x) // int(d) for x, d in zip(WA.tolist(), g.tolist())], dtype=object)
        cap_a = _scaled(wa_sub, mult_a[ca])
        cap_b = _scaled(wb_sub, mult_b[cb])
        # local edge list (edges of alive vertices stay sorted under the monotone relabelling)
        loc_a = np.full(self.n_a, -1, np.int64)
        loc_a[ia] = np.arange(ia.size)
        loc_b = np.full(self.n_b, -1, np.int64)
        loc_b[ib] = np.arange(ib.size)
        eidx = np.flatnonzero(self.alive_e)
        la, lb = loc_a[self.ea[eidx]], loc_b[self.eb[eidx]]
        use = _resolve_backend(ia.size, ib.size, la.size, cap_a, cap_b, backend)
        where = None
        if use == "ortools":
            where = self.network_positions(ia, ib, eidx, la, lb)
        fa, fb, fe, sa, sb, used = _max_flow_sorted(ia.size, ib.size, la, lb, cap_a, cap_b, backend,
                                                    self.network, where, use)
        self.backends.append(used)
        comp_split = np.zeros(k, bool)
        comp_split[ca[sa]] = True
        comp_split[cb[sb]] = True
        done = 0
        fin = np.flatnonzero(~comp_split)
        if fin.size:
            fin_pid = np.full(k, -1, np.int64)
            factor = np.zeros(k, np.float64)
            WAl, WBl, gl = WA.tolist(), WB.tolist(), g.tolist()
            for c in fin.tolist():
                wa_c, wb_c, g_c = int(WAl[c]), int(WBl[c]), int(gl[c])
                fin_pid[c] = self.new_part(wa_c, wb_c)
                # r / cap = g (W_A + W_B) / (W_A W_B W_total)
                factor[c] = _fraction_float(g_c * (wa_c + wb_c), wa_c * wb_c * self.total)
            fa_mask = ~comp_split[ca]
            fb_mask = ~comp_split[cb]
            ua, ub = ia[fa_mask], ib[fb_mask]
            self.part_a[ua] = fin_pid[ca[fa_mask]]
            self.part_b[ub] = fin_pid[cb[fb_mask]]
            self.z_a[ua] = _to_float(_sub(cap_a[fa_mask], fa[fa_mask])) * factor[ca[fa_mask]]
            self.z_b[ub] = _to_float(_sub(cap_b[fb_mask], fb[fb_mask])) * factor[cb[fb_mask]]
            e_fin = ~comp_split[ca[la]]
            self.z_edge[eidx[e_fin]] = _to_float(fe[e_fin]) * factor[ca[la[e_fin]]]
            self.alive_a[ua] = False
            self.alive_b[ub] = False
            self.alive_e[eidx[e_fin]] = False
            done += ua.size + ub.size
        drop = comp_split[ca[la]] & ~sa[la] & sb[lb]
        self.alive_e[eidx[drop]] = False
        return done

    def result(self, perm) -> OptProbParts:
        """Parts numbered by increasing ``q_a = W_A / (W_A + W_B)`` (exact comparison), ties by creation."""
        from fractions import Fraction

        pwa, pwb = self.parts_wa, self.parts_wb
        # the float key is monotone in the exact ratio; the Fraction only breaks float ties exactly
        order = sorted(range(len(pwa)), key=lambda i: (pwa[i] / (pwa[i] + pwb[i]),
                                                       Fraction(pwa[i], pwa[i] + pwb[i]), i))
        rank = np.empty(len(order), np.int64)
        rank[np.asarray(order, np.int64)] = np.arange(len(order))
        part_a = np.where(self.part_a >= 0, rank[np.maximum(self.part_a, 0)] if rank.size else -1, -1)
        part_b = np.where(self.part_b >= 0, rank[np.maximum(self.part_b, 0)] if rank.size else -1, -1)
        weight_a = [pwa[i] for i in order]
        weight_b = [pwb[i] for i in order]
        z_edge = self.z_edge
        if perm is not None:
            out = np.empty_like(z_edge)
            out[perm] = z_edge
            z_edge = out
        return OptProbParts(part_a.astype(np.int64), part_b.astype(np.int64), weight_a, weight_b,
                            z_edge, self.z_a, self.z_b, self.rounds, tuple(self.backends))


def optprob_parts(
    n_a: int,
    n_b: int,
    edge_a: Any,
    edge_b: Any,
    w_a: Any,
    w_b: Any,
    *,
    backend: str = "auto",
    progress: bool = False,
) -> OptProbParts:
    """Algorithm 1 (OptProb) of Bhagoji et al. (2021) on integer vertex weights.

    Each pass splits the alive vertices into connected components, settles
    isolated vertices and complete bipartite components without a flow, and
    runs one max flow (a LinOpt round) on the rest; see the module docstring.

    Args:
      n_a, n_b: part sizes (class ``a`` = ``A``, class ``b`` = ``B``).
      edge_a, edge_b: ``[E]`` unique conflict edges.
      w_a, w_b: non-negative integer vertex weights (int64 or object arrays
        of Python ints), not all zero; the distribution is ``p = w / sum(w)``.
      backend: max-flow backend, see :func:`bipartite_max_flow`. With
        ``"auto"`` each round uses OR-Tools when its capacities fit int64
        (one network for all rounds, re-solved with new capacities), SciPy
        for rounds of 4 million edges or more that fit int32, and networkx
        otherwise.
      progress: show a progress bar over the settled vertices.

    Returns:
      :class:`OptProbParts`.

    References:
      Bhagoji, Cullina, Sehwag, Mittal. "Lower bounds on cross-entropy loss in
      the presence of test-time adversaries." ICML 2021, arXiv:2104.08382
      (Algorithm 1, Lemmas 2-5).
    """
    from tqdm.auto import tqdm

    n_a, n_b, ea, eb, w_a, w_b = _check_problem(n_a, n_b, edge_a, edge_b, w_a, w_b, ("w_a", "w_b"))
    backend = _check_backend(backend)
    total = sum_int(w_a) + sum_int(w_b)
    if total == 0:
        raise ValueError("w_a: all vertex weights are zero")
    ea, eb, perm = _sort_edges(n_b, ea, eb)
    st = _OptProbState(n_a, n_b, ea, eb, w_a, w_b, total)
    bar = tqdm(total=int(st.pos_a.sum() + st.pos_b.sum()), desc="OptProb", unit="vertex",
               disable=not progress, leave=False)
    try:
        while st.alive_a.any() or st.alive_b.any():
            lab_a, lab_b = _components(n_a, n_b, ea, eb, st.alive_e)
            ncomp = int(max(lab_a.max(initial=-1), lab_b.max(initial=-1))) + 1
            done = st.settle_isolated(lab_a, lab_b, ncomp)
            done += st.settle_complete(lab_a, lab_b, ncomp)
            if not (st.alive_a.any() or st.alive_b.any()):
                bar.update(done)
                break
            done += st.linopt_round(lab_a, lab_b, ncomp, backend)
            bar.update(done)
    finally:
        bar.close()
    return st.result(perm)


def _scaled(w: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """Exact ``w * mult`` as int64 when it cannot overflow, else Python ints."""
    if w.dtype != object and mult.dtype != object:
        if w.size == 0 or (int(w.max()) < 2**31 and int(mult.max()) < 2**31):
            return w * mult
    out = np.empty(w.size, dtype=object)
    out[:] = [int(a) * int(b) for a, b in zip(w.tolist(), mult.tolist())]
    return _as_int64_if_small(out)


def _sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype != object and b.dtype != object:
        return a - b
    out = np.empty(a.size, dtype=object)
    out[:] = [int(x) - int(y) for x, y in zip(a.tolist(), b.tolist())]
    return out


def _to_float(a: np.ndarray) -> np.ndarray:
    if a.dtype != object:
        return a.astype(np.float64)
    return np.array([float(int(v)) for v in a.tolist()], np.float64)

