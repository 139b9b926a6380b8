"""Certified bounds on a model's logits: interval bound propagation and CROWN on any JAX function.

An attack finds perturbations and so gives a *lower* bound on a model's
robust error; this module gives the matching *upper* bound, the certified
robust error: a point is certified when the lower bound of every logit margin
``f(x')[y] - f(x')[j]`` (``j != y``) over the whole threat region is positive.

The bounds come from interpreting the jaxpr of ``logits_fn`` (``jax.make_jaxpr``;
calls to ``jit``, ``closed_call``, ``custom_jvp_call``, ``custom_vjp_call``
and ``checkpoint`` are inlined, bounding the primal function). The region is
the ε-ball around ``x`` intersected with the input box ``input_bounds``:

- **IBP** (Gowal et al. 2018) propagates a box ``[l, u]`` through every
  operation: monotone operations map ends to ends, an affine map ``W``
  takes the centre ``W c`` and radius ``|W| r``.
- **CROWN** (Zhang et al. 2018) propagates a linear specification ``S``
  backward, ``S f(x) >= A x + b``, through affine operations (by their
  vector-Jacobian product, i.e. the transposed map) and through linear
  relaxations of ReLU (upper chord ``u/(u-l) (z - l)``, adaptive lower slope
  ``1[u > -l]``) and of max pooling, then minimises ``A x`` over the region in
  closed form: ``A x_c - |A| r`` over a box, ``A x - ε ||A||_2`` over an ℓ2
  ball (the dual norm). Intermediate bounds of every ReLU/max-pool input come
  from the same backward pass (at most ``crown_neurons`` units per example;
  wider layers keep IBP bounds) intersected with IBP.
- **CROWN-IBP** (Zhang et al. 2020): IBP intermediate bounds and one CROWN
  backward pass for the final specification.
- **α-CROWN** (Xu et al. 2021): the ReLU lower slopes of the final backward
  pass become variables in ``[0, 1]``, per specification, improved by a few
  projected gradient (Adam) steps; the best bound seen, starting from CROWN's,
  is kept, so it is never looser than CROWN.
- **IBP + CROWN** (``method="ibp+crown"``): CROWN's tightened intermediate
  boxes, then the larger of the IBP and the CROWN bound of the final
  specification, entry by entry (both sound). IBP-trained networks are
  often certified better by IBP than by CROWN (Zhang et al. 2020, §4):
  ``ibp_small`` trained 40 epochs at ε = 0.4, ε = 0.3: 82.0 % by IBP,
  68.8 % by CROWN (``benchmarks/results/certified_training_ibp40_cpu.json``).

Margins fold the specification ``e_y - e_j`` into the last affine layers
before any concretisation, which is tighter than subtracting logit bounds.

Supported primitives: ``dot_general``, ``conv_general_dilated`` (any
padding, stride, dilation, feature groups), ``add``/``sub``, ``mul``/``div``
by constants, ``neg``, ``broadcast_in_dim``, ``reshape``, ``transpose``,
``squeeze``, ``expand_dims``, ``concatenate``, ``slice``, ``pad``, ``rev``,
``convert_element_type``, ``reduce_sum``, ``reduce_window_sum`` (average
pooling), ``max`` with a constant (ReLU), ``reduce_max`` and
``reduce_window_max`` (max pooling); IBP also takes ``min``, ``reduce_min``
and ``max`` of two inputs. Anything computed from constants alone (parameters,
normalisation statistics) is evaluated as is, so inference-time group norm
or standardisation by fixed statistics is affine. Another primitive applied to
an input-dependent value raises ``ValueError`` naming it.

References:
  Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann, Kohli.
  "On the effectiveness of interval bound propagation for training verifiably
  robust models." arXiv:1810.12715, 2018.
  Zhang, Weng, Chen, Hsieh, Daniel. "Efficient neural network robustness
  certification with general activation functions." NeurIPS 2018,
  arXiv:1811.00866 (CROWN).
  Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning, Hsieh. "Towards stable and
  efficient training of verifiably robust neural networks." ICLR 2020,
  arXiv:1906.06316 (CROWN-IBP).
  Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh. "Fast and complete: enabling
  complete neural network verification with rapid and massively parallel
  incomplete verifiers." ICLR 2021, arXiv:2011.13824 (α-CROWN).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from jaxbound import _checks, _conv, _engine, lp

__all__ = [
    "METHODS",
    "LogitBounds",
    "MarginBounds",
    "Certified",
    "propagate_ibp",
    "margin_lower",
    "bounds",
    "margin_bounds",
    "certified_accuracy",
]

#: Bound-propagation methods of :func:`bounds` and :func:`margin_bounds`.
METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown", "ibp+crown")

_NORMS = ("linf", "l2")

# Primitives whose sub-jaxpr is inlined (the primal function is bounded).
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin"})
_SUB_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")

# Affine in their input-dependent arguments and monotone non-decreasing in each.
_MONO_LINEAR = frozenset({"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
                          "concatenate", "convert_element_type", "reduce_sum", "reduce_window_sum", "pad",
                          "copy", "copy_p", "rev", "cumsum", "add", "reduce_precision", "select_n",
                          "dynamic_slice", "gather"})
# Arguments that must be constants (predicates and indices).
_CONST_ARGS = {"select_n": (0,), "dynamic_slice": "tail", "gather": (1,)}
# Monotone but not affine (IBP maps ends to ends; CROWN relaxes the max-type ones).
_MONO_NONLINEAR = frozenset({"max", "min", "reduce_max", "reduce_min", "reduce_window_max", "reduce_window_min"})
_BILINEAR = frozenset({"dot_general", "conv_general_dilated"})
_MAX_POOLS = frozenset({"reduce_max", "reduce_window_max"})

#: Default number of Adam steps of α-CROWN.
ALPHA_STEPS = 20
#: Default widest layer (units per example) whose bounds CROWN computes; wider ones keep IBP bounds.
CROWN_NEURONS = 1024


# ---------------------------------------------------------------------------
# The computation graph: a flat list of operations on input-dependent values
# ---------------------------------------------------------------------------


class _Eqn(NamedTuple):
    prim: Any
    params: dict
    ins: tuple  # per argument: ("v", node id) or ("c", constant array)
    outs: tuple  # node ids


class _Graph:
    """The jaxpr of ``fn`` inlined into input-dependent operations; constants folded."""

    def __init__(self, fn: Callable, x: Any):
        closed = jax.make_jaxpr(fn)(x)
        self.eqns: list[_Eqn] = []
        self.shapes: dict[int, tuple] = {}
        self.producer: dict[int, int] = {}
        self.input = self._new(tuple(x.shape))
        (out,) = self._inline(closed.jaxpr, closed.consts, [("v", self.input)]) if len(closed.jaxpr.outvars) == 1 \
            else (None,)
        if out is None:
            raise ValueError("logits_fn: must return one array of logits [n, num_classes]")
        self.output = out

    def _new(self, shape) -> int:
        i = len(self.shapes)
        self.shapes[i] = tuple(shape)
        return i

    def _inline(self, jaxpr, consts, args):
        env = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = ("c", c)
        for v, a in zip(jaxpr.invars, args):
            env[v] = a

        def read(v):
            return ("c", v.val) if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self._eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, ins):
        prim = eqn.primitive
        if all(k == "c" for k, _ in ins):  # constants only: evaluate
            out = prim.bind(*[v for _, v in ins], **prim.get_bind_params(eqn.params))
            return [("c", o) for o in (out if prim.multiple_results else [out])]
        if prim.name in _CALLS:
            sub = _sub_jaxpr(eqn.params)
            if sub is None:
                raise ValueError(f"logits_fn: primitive {prim.name!r} has no inlinable sub-jaxpr")
            return self._inline(sub[0], sub[1], ins)
        _check_supported(prim.name, ins)
        outs = tuple(self._new(v.aval.shape) for v in eqn.outvars)
        for o in outs:
            self.producer[o] = len(self.eqns)
        self.eqns.append(_Eqn(prim, dict(prim.get_bind_params(eqn.params)), tuple(ins), outs))
        return [("v", o) for o in outs]


def _sub_jaxpr(params):
    for k in _SUB_PARAMS:
        j = params.get(k)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, j.consts
        if isinstance(j, jcore.Jaxpr):
            return j, ()
    return None


def _check_supported(name: str, ins) -> None:
    var = [k == "v" for k, _ in ins]
    if name in _MONO_LINEAR or name in _MONO_NONLINEAR or name in ("sub", "neg"):
        fixed = _CONST_ARGS.get(name, ())
        fixed = range(1, len(ins)) if fixed == "tail" else fixed
        if any(var[i] for i in fixed):
            raise ValueError(f"logits_fn: primitive {name!r} with an input-dependent index or predicate "
                             "is not supported by certify")
        return
    if name in _BILINEAR or name == "mul":
        if sum(var) == 1:
            return
        raise ValueError(f"logits_fn: primitive {name!r} of two input-dependent values is not supported by certify")
    if name == "div":
        if var == [True, False]:
            return
        raise ValueError("logits_fn: primitive 'div' by an input-dependent value is not supported by certify")
    raise ValueError(f"logits_fn: primitive {name!r} is not supported by certify")


def _bind(eqn: _Eqn, args):
    if eqn.prim.name == "conv_general_dilated":
        # the same value; its gradients (certified training, CROWN's transposes) on XLA's fast CPU path
        out = _conv.from_params(args[0], args[1], eqn.params)
        if out is not None:
            return out
    out = eqn.prim.bind(*args, **eqn.params)
    return out[0] if eqn.prim.multiple_results else out


# ---------------------------------------------------------------------------
# Interval bound propagation
# ---------------------------------------------------------------------------


def _ibp_eqn(eqn: _Eqn, args):
    """Output box ``(lo, hi)`` of one operation; ``args`` holds boxes (tuples) and constants."""
    name = eqn.prim.name
    is_box = [isinstance(a, tuple) for a in args]
    if name in _MONO_LINEAR or name in _MONO_NONLINEAR:
        lo = _bind(eqn, [a[0] if b else a for a, b in zip(args, is_box)])
        hi = _bind(eqn, [a[1] if b else a for a, b in zip(args, is_box)])
        return lo, hi
    if name == "neg":
        lo, hi = args[0]
        return -hi, -lo
    if name == "sub":
        (al, ah), (bl, bh) = [a if b else (a, a) for a, b in zip(args, is_box)]
        return _bind(eqn, [al, bh]), _bind(eqn, [ah, bl])
    if name in ("mul", "div"):
        p = _bind(eqn, [a[0] if b else a for a, b in zip(args, is_box)])
        q = _bind(eqn, [a[1] if b else a for a, b in zip(args, is_box)])
        return jnp.minimum(p, q), jnp.maximum(p, q)
    # dot_general / conv_general_dilated with one constant operand: centre and radius.
    mid = _bind(eqn, [(a[0] + a[1]) / 2 if b else a for a, b in zip(args, is_box)])
    rad = _bind(eqn, [(a[1] - a[0]) / 2 if b else jnp.abs(a) for a, b in zip(args, is_box)])
    return mid - rad, mid + rad


def _args(eqn: _Eqn, box: dict):
    return [box[v] if k == "v" else v for k, v in eqn.ins]


def _forward(graph: _Graph, lower, upper, *, refine: Callable | None = None) -> dict:
    """Boxes of every node; ``refine(eqn_index, node, box)`` may tighten inputs of non-affine operations."""
    box = {graph.input: (lower, upper)}
    for i, eqn in enumerate(graph.eqns):
        if refine is not None and eqn.prim.name in _MONO_NONLINEAR:
            for k, v in eqn.ins:
                if k == "v":
                    box[v] = refine(i, v, box)
        box[eqn.outs[0]] = _ibp_eqn(eqn, _args(eqn, box))
    return box


def _output_box(graph: _Graph, box: dict):
    kind, out = graph.output
    if kind == "c":
        return out, out
    return box[out]


def propagate_ibp(fn: Callable, lower: Any, upper: Any) -> tuple[Any, Any]:
    """Interval bound propagation of the box ``[lower, upper]`` through ``fn``.

    Pure and traceable (``jit``, ``grad``; parameters closed over ``fn`` may
    be tracers, as in certified training); no validation.

    ``l_{k+1} = W⁺ l_k + W⁻ u_k + b``, computed as ``W c_k - |W| r_k`` with
    the centre ``c_k`` and radius ``r_k`` of the box (Gowal et al. 2018, eq. 6).

    Args:
      fn: ``x [n, ...] -> out [n, ...]`` built from the supported primitives.
      lower: ``[n, ...]`` lower ends of the input box.
      upper: ``[n, ...]`` upper ends (``>= lower``).

    Returns:
      ``(out_lower, out_upper)`` shaped like ``fn``'s output.

    References:
      Gowal et al. "On the effectiveness of interval bound propagation for
      training verifiably robust models." arXiv:1810.12715, 2018.
    """
    lower = jnp.asarray(lower, jnp.float32)
    upper = jnp.asarray(upper, jnp.float32)
    graph = _Graph(fn, lower)
    return _output_box(graph, _forward(graph, lower, upper))


# ---------------------------------------------------------------------------
# CROWN: backward linear bounds
# ---------------------------------------------------------------------------


def _sum_rows(a):
    """Sum over every axis but the first two (``[m, n, ...] -> [m, n]``)."""
    return jnp.sum(a.reshape(a.shape[0], a.shape[1], -1), axis=2)


def _concretize_box(a, lo, hi):
    """``min over [lo, hi]`` of ``<a, z>`` per row: ``a [m, n, ...] -> [m, n]``."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    return _sum_rows(a * mid) - _sum_rows(jnp.abs(a) * rad)


class _Region(NamedTuple):
    x: Any  # [n, ...] centre
    lo: Any  # [n, ...] box containing the region
    hi: Any
    eps: Any
    norm: str


def _concretize_input(a, region: _Region):
    """Lower bound of ``<a, x'>`` over the ε-ball around ``x`` within the box ``[lo, hi]``."""
    box = _concretize_box(a, region.lo, region.hi)
    if region.norm == "linf":
        return box
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    ball = _sum_rows(a * region.x) - region.eps * lp.lp_norm(flat, lp.dual_norm(region.norm), axis=2)
    return jnp.maximum(box, ball)


def _affine_back(eqn: _Eqn, a, coef: dict, bias, shapes: dict):
    """Pass ``a [m, *out]`` back through an affine operation by its vector-Jacobian product."""
    pos = [i for i, (k, _) in enumerate(eqn.ins) if k == "v"]
    consts = [v for _, v in eqn.ins]
    if eqn.prim.name == "conv_general_dilated" and pos == [0]:  # linear in x: no bias, the transpose alone
        c = _conv.transpose_from_params(a, jnp.asarray(consts[1]), eqn.params, shapes[eqn.ins[0][1]])
        if c is not None:
            _accumulate(coef, eqn.ins[0][1], c)
            return bias

    def g(*vs):
        args = list(consts)
        for i, v in zip(pos, vs):
            args[i] = v
        return _bind(eqn, args)

    zeros = [jnp.zeros(shapes[eqn.ins[i][1]], a.dtype) for i in pos]
    b, pull = jax.vjp(g, *zeros)
    cots = jax.vmap(pull)(a)
    for i, c in zip(pos, cots):
        _accumulate(coef, eqn.ins[i][1], c)
    return bias + _sum_rows(a * b)


def _accumulate(coef: dict, node: int, c) -> None:
    coef[node] = c if node not in coef else coef[node] + c


def _relu_relax(lo, hi, c, alpha):
    """Linear bounds ``sl z + tl <= max(z, c) <= su z + tu`` on ``[lo, hi]`` (``alpha``: lower slope)."""
    zl, zu = lo - c, hi - c
    active, inactive = zl >= 0, zu <= 0
    unstable = ~(active | inactive)
    den = jnp.where(unstable, zu - zl, 1.0)
    su = jnp.where(unstable, zu / den, active.astype(lo.dtype))
    tu = jnp.where(unstable, c - su * (c + zl), jnp.where(active, 0.0, c))
    sl = jnp.where(unstable, alpha, active.astype(lo.dtype))
    tl = jnp.where(active, 0.0, c - sl * c)
    return sl, tl, su, tu


def _adaptive_alpha(lo, hi, c):
    return ((hi - c) >= -(lo - c)).astype(lo.dtype)


def _relu_back(eqn: _Eqn, a, coef: dict, bias, box: dict, alpha):
    (vi,) = [i for i, (k, _) in enumerate(eqn.ins) if k == "v"]
    node, c = eqn.ins[vi][1], jnp.asarray(eqn.ins[1 - vi][1])
    lo, hi = box[node]
    if alpha is None:
        alpha = _adaptive_alpha(lo, hi, c)
    sl, tl, su, tu = _relu_relax(lo, hi, c, jnp.clip(alpha, 0.0, 1.0))
    ap, an = jnp.maximum(a, 0), jnp.minimum(a, 0)
    _accumulate(coef, node, ap * sl + an * su)
    return bias + _sum_rows(ap * tl + an * tu)


def _non_overlapping(eqn: _Eqn) -> bool:
    if eqn.prim.name == "reduce_max":
        return True
    p = eqn.params
    return (all(s >= d for s, d in zip(p["window_strides"], p["window_dimensions"]))
            and all(v == 1 for v in p["base_dilation"]) and all(v == 1 for v in p["window_dilation"]))


def _maxpool_back(eqn: _Eqn, a, coef: dict, bias, box: dict):
    """Max pooling: ``y >= x_j`` (``j``: argmax of the lower bounds), ``y <= x_j`` when ``j`` dominates, else ``max u``."""
    node = eqn.ins[0][1]
    lo, hi = box[node]

    def pool(t):
        return _bind(eqn, [t])

    pl, pull = jax.vjp(pool, lo)
    pu = pool(hi)
    if _non_overlapping(eqn):
        w = pull(jnp.ones_like(pl))[0]
        others = pool(jnp.where(w == 1, -jnp.inf, hi))
        dom = (others <= pl).astype(a.dtype)
    else:
        dom = jnp.zeros_like(pl)
    ap, an = jnp.maximum(a, 0), jnp.minimum(a, 0)
    (cot,) = jax.vmap(pull)(ap + an * dom)
    _accumulate(coef, node, cot)
    return bias + _sum_rows(an * (1 - dom) * pu)


def _backward(graph: _Graph, box: dict, target: int, spec, region: _Region, *, relax: bool, alphas=None):
    """Lower bound ``[m, n]`` of ``<spec[k], v_target>`` over the region (``spec [m, *shape(target)]``).

    ``relax=False`` stops at the output of the first non-affine operation met
    and concretises there with its box (the specification folded into the
    affine tail, as IBP does); ``relax=True`` is CROWN.
    """
    coef = {target: spec}
    bias = jnp.zeros(spec.shape[:2], spec.dtype)
    for i in range(graph.producer.get(target, -1), -1, -1):
        eqn = graph.eqns[i]
        out = eqn.outs[0]
        if out not in coef:
            continue
        a = coef.pop(out)
        name = eqn.prim.name
        if name in _MONO_NONLINEAR and not relax:
            bias = bias + _concretize_box(a, *box[out])
        elif name == "max" and any(k == "c" for k, _ in eqn.ins):
            bias = _relu_back(eqn, a, coef, bias, box, None if alphas is None else alphas.get(i))
        elif name in _MAX_POOLS:
            bias = _maxpool_back(eqn, a, coef, bias, box)
        elif name in _MONO_NONLINEAR:
            raise ValueError(f"logits_fn: primitive {name!r} is supported by IBP only, not by CROWN")
        else:
            bias = _affine_back(eqn, a, coef, bias, graph.shapes)
    a_in = coef.pop(graph.input, None)
    if a_in is not None:
        bias = bias + _concretize_input(a_in, region)
    return bias


def _identity_spec(shape, dtype):
    """``[2s, *shape]``: ``+e_k`` then ``-e_k`` for each of the ``s`` units of one example (same for every row)."""
    s = int(np.prod(shape[1:], dtype=np.int64))
    eye = jnp.eye(s, dtype=dtype).reshape((s, 1) + tuple(shape[1:]))
    eye = jnp.broadcast_to(eye, (s,) + tuple(shape))
    return jnp.concatenate([eye, -eye], axis=0), s


#: Specifications per backward pass when CROWN bounds a layer (memory: chunk x block x layer size).
SPEC_CHUNK = 256


def _chunked(backward: Callable, spec):
    """``backward(spec)`` over chunks of :data:`SPEC_CHUNK` rows of ``spec [m, ...]`` (``lax.map``), ``[m, n]``."""
    m = spec.shape[0]
    if m <= SPEC_CHUNK:
        return backward(spec)
    n_chunks = -(-m // SPEC_CHUNK)
    pad = n_chunks * SPEC_CHUNK - m
    spec = jnp.concatenate([spec, jnp.zeros((pad,) + spec.shape[1:], spec.dtype)]) if pad else spec
    out = jax.lax.map(backward, spec.reshape((n_chunks, SPEC_CHUNK) + spec.shape[1:]))
    return out.reshape((n_chunks * SPEC_CHUNK,) + out.shape[2:])[:m]


def _crown_refiner(graph: _Graph, region: _Region, crown_neurons: int):
    """Tighten the box of a non-affine operation's input by CROWN (layers up to ``crown_neurons`` units)."""
    done = set()

    def refine(i, node, box):
        lo, hi = box[node]
        if node in done or node == graph.input or node not in graph.producer:
            return box[node]
        done.add(node)
        shape = graph.shapes[node]
        if int(np.prod(shape[1:], dtype=np.int64)) > crown_neurons:
            return lo, hi
        spec, s = _identity_spec(shape, lo.dtype)
        lb = _chunked(lambda sp: _backward(graph, box, node, sp, region, relax=True), spec)
        cl = lb[:s].T.reshape(shape)
        cu = (-lb[s:]).T.reshape(shape)
        new_lo = jnp.maximum(lo, cl)
        return new_lo, jnp.maximum(jnp.minimum(hi, cu), new_lo)

    return refine


# ---------------------------------------------------------------------------
# The region and the pure entry points
# ---------------------------------------------------------------------------


def _region(x, eps, norm: str, input_bounds) -> _Region:
    x = jnp.asarray(x, jnp.float32)
    lo, hi = x - eps, x + eps
    if input_bounds is not None:
        lo = jnp.maximum(lo, input_bounds[0])
        hi = jnp.minimum(hi, input_bounds[1])
        lo = jnp.minimum(lo, x)  # x outside the box (unvalidated calls) keeps a non-empty region
        hi = jnp.maximum(hi, x)
    return _Region(x, lo, hi, eps, norm)


def _boxes(graph: _Graph, region: _Region, method: str, crown_neurons: int) -> dict:
    crown_boxes = method in ("crown", "alpha-crown", "ibp+crown")
    refine = _crown_refiner(graph, region, crown_neurons) if crown_boxes else None
    return _forward(graph, region.lo, region.hi, refine=refine)


def _spec_lower(fn, x, spec_fn, *, eps, norm, method, input_bounds, steps=ALPHA_STEPS,
                crown_neurons=CROWN_NEURONS, lr=0.1):
    """Lower bounds ``[m, n]`` of the specification ``spec_fn(num_classes) -> [m, n, C]`` applied to ``fn``."""
    region = _region(x, eps, norm, input_bounds)
    graph = _Graph(fn, region.x)
    box = _boxes(graph, region, method, crown_neurons)
    kind, out = graph.output
    if kind == "c":
        spec = spec_fn(out.shape)
        return jnp.sum(spec * out, axis=2)
    spec = spec_fn(graph.shapes[out])
    if method == "ibp":
        return _backward(graph, box, out, spec, region, relax=False)
    if method == "ibp+crown":  # both sound: their maximum is, entry by entry
        return jnp.maximum(_backward(graph, box, out, spec, region, relax=False),
                           _backward(graph, box, out, spec, region, relax=True))
    if method in ("crown", "crown-ibp") or steps == 0:
        return _backward(graph, box, out, spec, region, relax=True)
    return _alpha_crown(graph, box, out, spec, region, steps=steps, lr=lr)


def _alpha_crown(graph, box, out, spec, region, *, steps: int, lr: float):
    import optax

    m = spec.shape[0]
    alphas = {}
    for i, eqn in enumerate(graph.eqns):
        if eqn.prim.name == "max" and any(k == "c" for k, _ in eqn.ins):
            (vi,) = [j for j, (k, _) in enumerate(eqn.ins) if k == "v"]
            lo, hi = box[eqn.ins[vi][1]]
            a0 = _adaptive_alpha(lo, hi, jnp.asarray(eqn.ins[1 - vi][1]))
            alphas[i] = jnp.broadcast_to(a0, (m,) + a0.shape)

    def bound(al):
        return _backward(graph, box, out, spec, region, relax=True, alphas=al)

    best = bound(alphas)
    if not alphas:
        return best
    tx = optax.adam(lr)

    def step(carry, _):
        al, state, best = carry
        val, g = jax.value_and_grad(lambda p: -jnp.sum(bound(p)))(al)
        upd, state = tx.update(g, state, al)
        al = jax.tree.map(lambda p, u: jnp.clip(p + u, 0.0, 1.0), al, upd)
        return (al, state, jnp.maximum(best, bound(al))), None

    (_, _, best), _ = jax.lax.scan(step, (alphas, tx.init(alphas), best), None, length=steps)
    return best


def _margin_spec(y, n, k, dtype):
    """``[k, n, k]``: row ``j`` is ``e_y - e_j`` (zero for ``j = y``)."""
    ey = jax.nn.one_hot(y, k, dtype=dtype)  # [n, k]
    ej = jnp.eye(k, dtype=dtype)[:, None, :]  # [k, 1, k]
    return ey[None] - ej


def _other_classes(y, k):
    """``[k - 1, n]``: row ``r`` holds the ``r``-th class other than ``y`` (``r`` or ``r + 1``)."""
    r = jnp.arange(k - 1, dtype=jnp.int32)[:, None]
    return r + (r >= y[None, :])


def margin_lower(fn: Callable, x: Any, y: Any, *, eps: Any, norm: str = "linf", method: str = "ibp",
                 input_bounds: Any = (0.0, 1.0), steps: int = ALPHA_STEPS,
                 crown_neurons: int = CROWN_NEURONS) -> Any:
    """Lower bounds of the margins ``fn(x')[y] - fn(x')[j]`` over the threat region.

    Pure and traceable (``jit``, ``grad``: certified training differentiates
    through it with parameters closed over ``fn``); no validation. The
    region is ``{x' : ||x' - x|| <= eps} ∩ [input_bounds]``. The margin
    specification ``e_y - e_j`` is folded into the last affine layers before
    concretisation.

    Args:
      fn: ``x [n, ...] -> logits [n, C]``.
      x: ``[n, ...]`` centres.
      y: ``[n]`` integer labels.
      eps: the budget (a scalar, may be traced).
      norm: ``"linf" | "l2"``.
      method: ``"ibp" | "crown" | "crown-ibp" | "alpha-crown" | "ibp+crown"``
        (the larger of the IBP and CROWN bounds, entry by entry, both on
        CROWN's tightened intermediate boxes: never looser than either;
        the tighter one differs by model, IBP for IBP-trained networks).
      input_bounds: ``(low, high)`` of valid inputs, or ``None``.
      steps: α-CROWN's gradient steps.
      crown_neurons: the widest layer (units per example) whose intermediate
        bounds CROWN computes (wider ones keep IBP bounds).

    Returns:
      ``[n, C]`` lower bounds; the entry ``j = y`` is 0. All entries ``j != y``
      positive certify the point.

    References:
      Zhang et al. "Towards stable and efficient training of verifiably
      robust neural networks." ICLR 2020, arXiv:1906.06316 (eq. 5: the
      specification folded into the last layer; CROWN-IBP).
    """
    y = jnp.asarray(y, jnp.int32)
    classes = {}  # the number of classes, known once the graph is traced

    def spec_fn(shape):
        n, k = shape
        classes["k"] = k
        if k < 2:
            return _margin_spec(y, n, k, jnp.float32)
        # the k - 1 rows e_y - e_j, j != y (the zero row j = y would cost a backward pass of its own)
        return (jax.nn.one_hot(y, k, dtype=jnp.float32)[None]
                - jax.nn.one_hot(_other_classes(y, k), k, dtype=jnp.float32))

    lb = _spec_lower(fn, x, spec_fn, eps=eps, norm=norm, method=method, input_bounds=input_bounds, steps=steps,
                     crown_neurons=crown_neurons)
    k = classes["k"]
    if k < 2:
        return lb.T
    n = lb.shape[1]
    return jnp.zeros((n, k), lb.dtype).at[jnp.arange(n)[:, None], _other_classes(y, k).T].set(lb.T)


def _logit_spec(shape):
    n, k = shape
    eye = jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32)[:, None, :], (k, n, k))
    return jnp.concatenate([eye, -eye], axis=0)


def logit_bounds(fn: Callable, x: Any, *, eps: Any, norm: str = "linf", method: str = "ibp",
                 input_bounds: Any = (0.0, 1.0), steps: int = ALPHA_STEPS,
                 crown_neurons: int = CROWN_NEURONS) -> tuple[Any, Any]:
    """Pure, traceable ``(lower [n, C], upper [n, C])`` of ``fn``'s logits over the region (see :func:`margin_lower`)."""
    lb = _spec_lower(fn, x, _logit_spec, eps=eps, norm=norm, method=method, input_bounds=input_bounds,
                     steps=steps, crown_neurons=crown_neurons)
    k = lb.shape[0] // 2
    return lb[:k].T, -lb[k:].T


# ---------------------------------------------------------------------------
# Validated, batched entry points
# ---------------------------------------------------------------------------


class LogitBounds(NamedTuple):
    """Certified bounds of every logit over the threat region.

    Attributes:
      lower: ``[n, C]`` lower bounds, NumPy float32.
      upper: ``[n, C]`` upper bounds.
    """

    lower: np.ndarray
    upper: np.ndarray


class MarginBounds(NamedTuple):
    """Certified lower bounds of the margins ``f(x')[y] - f(x')[j]``.

    Attributes:
      lower: ``[n, C]`` lower bounds (the entry ``j = y`` is exactly 0).
    """

    lower: np.ndarray

    def verified(self) -> np.ndarray:
        """``[n]`` bool: every margin ``j != y`` has a positive lower bound (no perturbation changes the label)."""
        lower = np.asarray(self.lower)
        return np.sum(lower > 0, axis=1) == lower.shape[1] - 1


class Certified(NamedTuple):
    """Certified robust accuracy.

    Attributes:
      certified: ``[n]`` bool: the model is correct on ``x`` and every margin
        lower bound ``j != y`` is positive.
      accuracy: the certified fraction (``1 -`` the certified robust error).
      n: number of points.
    """

    certified: np.ndarray
    accuracy: float
    n: int


def _check_common(logits_fn, x, *, eps, norm, method, input_bounds, block_size, progress, steps, methods):
    _checks.check_logits_fn(logits_fn)
    x = _checks.check_model_inputs(x, None, "x")
    if not _checks.is_concrete(x):
        raise ValueError("x: must be concrete (the validated entry points batch on the host; "
                         "use margin_lower or logit_bounds inside jit)")
    _checks.check_nonempty(x, "x")
    eps = _checks.check_scalar(eps, "eps", low=0.0)
    if not isinstance(norm, (str, int, float)) or isinstance(norm, bool):
        raise ValueError(f"norm: must be 'linf' or 'l2', got {norm!r}")
    canon = lp.canonical_norm(norm, "norm")
    if canon not in _NORMS:
        raise ValueError(f"norm: certify supports 'linf' and 'l2', got {norm!r}")
    _checks.check_choice(method, "method", methods)
    ib = _checks.check_interval(input_bounds, "input_bounds", allow_none=True)
    if ib is not None and (x.min() < ib[0] or x.max() > ib[1]):
        raise ValueError(f"input_bounds: ({ib[0]}, {ib[1]}) must contain x, whose values range over "
                         f"[{float(x.min())}, {float(x.max())}]")
    if block_size is not None:
        _checks.check_int(block_size, "block_size", low=1)
    _checks.check_bool(progress, "progress")
    steps = _checks.check_int(steps, "steps", low=0)
    k = _checks.num_classes_of(logits_fn, x)
    return x, eps, canon, ib, steps, k


def _check_outputs(logits, *bounds_) -> None:
    _checks.check_finite_logits(logits, "logits_fn")
    for b in bounds_:
        bad = ~np.isfinite(np.asarray(b)).all(axis=1)
        if bad.any():
            raise ValueError(f"logits_fn: the bounds are not finite on {int(bad.sum())} rows of x "
                             f"(first row {int(np.flatnonzero(bad)[0])}); the model overflows on the region")


def _default_block(method: str) -> int:
    return 256 if method == "ibp" else 32


def _logit_core(x, *, logits_fn, eps, norm, method, input_bounds, steps, crown_neurons):
    lo, hi = logit_bounds(logits_fn, x, eps=eps, norm=norm, method=method, input_bounds=input_bounds, steps=steps,
                          crown_neurons=crown_neurons)
    return logits_fn(x), lo, hi


def _margin_core(x, y, *, logits_fn, eps, norm, method, input_bounds, steps, crown_neurons):
    lb = margin_lower(logits_fn, x, y, eps=eps, norm=norm, method=method, input_bounds=input_bounds, steps=steps,
                      crown_neurons=crown_neurons)
    return logits_fn(x), lb


def _run(core, batch_args, static, *, method, block_size, progress, desc):
    return _engine.run(core, static, batch_args, (), block_size=block_size, default_block=_default_block(method),
                       progress=progress, desc=desc)


def bounds(logits_fn: Callable, x: Any, *, eps: float, norm: str = "linf", method: str = "crown",
           input_bounds: Any = (0.0, 1.0), block_size: int | None = None, progress: bool = False,
           steps: int = ALPHA_STEPS, crown_neurons: int = CROWN_NEURONS) -> LogitBounds:
    """Certified lower and upper bounds of every logit over the ε-ball around each point.

    For all ``x'`` with ``||x' - x||_p <= eps`` and ``x'`` inside
    ``input_bounds``: ``lower <= logits_fn(x') <= upper``. Batched through the
    block engine (jitted, split over the local devices).

    Args:
      logits_fn: ``x [n, ...] -> logits [n, C]``, a JAX function of the
        supported primitives (see the module docstring).
      x: ``[n, ...]`` points inside ``input_bounds``.
      eps: the budget ``>= 0``.
      norm: ``"linf" | "l2"``.
      method: ``"ibp" | "crown" | "alpha-crown" | "ibp+crown"`` (see
        :func:`margin_lower`).
      input_bounds: ``(low, high)`` of valid inputs, or ``None``.
      block_size: points per compiled call (default 256 for IBP, 32 otherwise).
      progress: show a progress bar.
      steps: α-CROWN's projected gradient steps on the ReLU lower slopes.
      crown_neurons: the widest layer (units per example) whose intermediate
        bounds CROWN computes; wider layers keep IBP bounds.

    Returns:
      :class:`LogitBounds` with ``lower`` and ``upper`` ``[n, C]``.

    Raises:
      ValueError: an unsupported primitive (named), ``eps < 0``, ``x``
        outside ``input_bounds``, a non-finite model, ``norm`` other than
        linf/l2, empty ``x``.

    References:
      Gowal et al. 2018 (IBP); Zhang et al. "Efficient neural network
      robustness certification with general activation functions." NeurIPS
      2018 (CROWN); Xu et al. ICLR 2021 (α-CROWN).
    """
    x, eps, norm, ib, steps, _ = _check_common(logits_fn, x, eps=eps, norm=norm, method=method,
                                               input_bounds=input_bounds, block_size=block_size, progress=progress,
                                               steps=steps, methods=("ibp", "crown", "alpha-crown", "ibp+crown"))
    crown_neurons = _checks.check_int(crown_neurons, "crown_neurons", low=0)
    static = dict(logits_fn=logits_fn, eps=eps, norm=norm, method=method, input_bounds=ib, steps=steps,
                  crown_neurons=crown_neurons)
    logits, lo, hi = _run(_logit_core, (x,), static, method=method, block_size=block_size, progress=progress,
                          desc="certify")
    _check_outputs(logits, lo, hi)
    return LogitBounds(np.asarray(lo), np.asarray(hi))


def _margins(logits_fn, x, y, *, eps, norm, method, input_bounds, block_size, progress, steps, crown_neurons):
    x, eps, norm, ib, steps, k = _check_common(logits_fn, x, eps=eps, norm=norm, method=method,
                                               input_bounds=input_bounds, block_size=block_size, progress=progress,
                                               steps=steps, methods=METHODS)
    y = _checks.check_model_labels(y, x.shape[0], k, "y")
    crown_neurons = _checks.check_int(crown_neurons, "crown_neurons", low=0)
    static = dict(logits_fn=logits_fn, eps=eps, norm=norm, method=method, input_bounds=ib, steps=steps,
                  crown_neurons=crown_neurons)
    logits, lb = _run(_margin_core, (x, y), static, method=method, block_size=block_size, progress=progress,
                      desc="certify")
    _check_outputs(logits, lb)
    return np.asarray(logits), y, np.asarray(lb)


def margin_bounds(logits_fn: Callable, x: Any, y: Any, *, eps: float, norm: str = "linf", method: str = "crown",
                  input_bounds: Any = (0.0, 1.0), block_size: int | None = None, progress: bool = False,
                  steps: int = ALPHA_STEPS, crown_neurons: int = CROWN_NEURONS) -> MarginBounds:
    """Certified lower bounds of the margins ``logits_fn(x')[y] - logits_fn(x')[j]`` over the ε-ball.

    The specification ``e_y - e_j`` is folded into the network's last affine
    layers before concretisation, which is tighter than
    ``lower[y] - upper[j]`` from :func:`bounds`.

    Args:
      logits_fn: ``x [n, ...] -> logits [n, C]``.
      x: ``[n, ...]`` points inside ``input_bounds``.
      y: ``[n]`` integer labels.
      eps, norm, input_bounds, block_size, progress, steps, crown_neurons:
        see :func:`bounds`.
      method: ``"ibp" | "crown" | "crown-ibp" | "alpha-crown" | "ibp+crown"``
        (the larger of the IBP and CROWN bounds, entry by entry, both on
        CROWN's tightened intermediate boxes: never looser than either;
        the tighter one differs by model, IBP for IBP-trained networks).

    Returns:
      :class:`MarginBounds` (``lower [n, C]``; ``verified()`` per point).

    References:
      Zhang et al. "Towards stable and efficient training of verifiably
      robust neural networks." ICLR 2020, arXiv:1906.06316.
    """
    _, _, lb = _margins(logits_fn, x, y, eps=eps, norm=norm, method=method, input_bounds=input_bounds,
                        block_size=block_size, progress=progress, steps=steps, crown_neurons=crown_neurons)
    return MarginBounds(lb)


def certified_accuracy(logits_fn: Callable, x: Any, y: Any, *, eps: float, norm: str = "linf",
                       method: str = "crown", input_bounds: Any = (0.0, 1.0), block_size: int | None = None,
                       progress: bool = False, steps: int = ALPHA_STEPS,
                       crown_neurons: int = CROWN_NEURONS) -> Certified:
    """Certified robust accuracy: the fraction of points provably classified correctly on the whole ε-ball.

    ``certified_i = [argmax f(x_i) = y_i] ∧ min_{j != y_i} lower_ij > 0``,
    with the margin lower bounds of :func:`margin_bounds`. One minus it is
    an upper bound on the model's true robust error.

    Args:
      logits_fn, x, y, eps, norm, method, input_bounds, block_size, progress,
        steps, crown_neurons: see :func:`margin_bounds`.

    Returns:
      :class:`Certified`.
    """
    logits, y, lb = _margins(logits_fn, x, y, eps=eps, norm=norm, method=method, input_bounds=input_bounds,
                             block_size=block_size, progress=progress, steps=steps, crown_neurons=crown_neurons)
    correct = np.argmax(logits, axis=1) == y
    cert = correct & MarginBounds(lb).verified()
    return Certified(cert, float(cert.mean()), int(cert.shape[0]))
