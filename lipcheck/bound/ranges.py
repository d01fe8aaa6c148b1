"""Sound value ranges (interval arithmetic) of every tensor of a graph over an input box.

:func:`propagate` walks the nodes in topological order and gives every tensor an :class:`Interval` ``[lo, hi]``
(float64 arrays of the tensor's shape) that holds the value the MODEL computes for every input in the box.
Constants are exact points; a node without a rule gives its outputs ``(-inf, inf)`` and a reason in
``Ranges.unbounded``, and later nodes keep working soundly on infinite bounds (Relu of anything is in
``[0, inf]``, Sigmoid in ``[0, 1]``). Bounds are per element: where an op loses some elements (a Div whose
divisor may be 0 there) only those are infinite, and the tensor is listed in ``unbounded`` with the reason.

Rounding: the model runs in floating point of unit roundoff ``u`` (float32, ``u = 2^-24``, by default; see
``precision``) while the bounds are computed in float64. By induction over the nodes: the values the model
computes for a node's inputs lie in the input intervals, so the exact real result of the op on them lies in the
image of those intervals, which each rule encloses in float64; then the interval is widened outward by a bound on
``|model's result - exact result|`` for the same inputs:

- selections and copies (shape ops, Gather, Pad, Concat, Resize nearest...), Max / Min / MaxPool, Relu, Abs,
  Neg, Clip, Where, Sign, Floor / Ceil / Round, comparisons: exact in every precision, and exact in float64 too.
  No widening.
- sums of products (Conv, ConvTranspose, Gemm, MatMul, BatchNormalization, AveragePool, ReduceSum / Mean, Sum):
  for ANY summation order, with or without FMA, ``|fl(Σ w_i x_i) - Σ w_i x_i| ≤ γ_n Σ |w_i||x_i|`` with
  ``γ_n = n·u / (1 - n·u)`` (Higham, Accuracy and Stability of Numerical Algorithms, §3.1 and §3.5), and
  ``|x_i| ≤ m_i = max(|lo_i|, |hi_i|)``. The interval (center-radius form: ``A(c) + b ± |A|(r)``) is widened by
  ``2·γ_{n+4}·(|A|(m) + |b|) + (n+4)·tiny`` with ``n`` the fan-in. The +4 covers the bias add, alpha / beta and
  BatchNormalization's few extra operations; the factor 2 covers float64 rounding in our own computation
  (≤ 2^-50 of ``|A|(m)``), weights the loader folded in float64 that the runtime folds in ``u``, and runtime
  fusions of neighbours (BatchNormalization or a constant Add folded into a Conv). ``tiny`` (the smallest normal
  number) covers gradual underflow and flush-to-zero of each product. With nonnegative weights (pools,
  ReduceSum / ReduceMean, Sum) the floating-point evaluation is itself monotone in each input, so the lower bound
  is widened with the magnitudes of the lower bounds only, and the upper with those of the upper bounds. Where a
  partial sum may overflow (magnitudes beyond half the largest value) the bound is infinite.
- one correctly rounded operation (Add, Sub, Mul, Div, Sqrt, Reciprocal, Pow, Cast to a narrower type): rounding
  is monotone, so ``fl(y) ∈ [fl(lo), fl(hi)] ⊆ [lo - u|lo|, hi + u|hi|]``. Widened by ``δ = 128u`` relative
  (≈ 7.6e-6 for float32) plus ``tiny``.
- transcendental functions (Exp, Log, Sigmoid, Tanh, Erf, Softplus, Gelu, Mish, Elu...): ASSUMED accurate to
  ``|f_model(x) - f(x)| ≤ δ·(|f(x)| + s)`` with ``s = 1`` for functions with O(1) values near their small
  outputs (``s = 0`` for Exp and the power functions). This is an assumption about the runtime, not a theorem:
  its vectorized kernels (MLAS) and fused ones (FastGelu...) are accurate to a few ulps in practice, and
  δ = 128 ulps leaves a wide factor over that; tests/bound/test_ranges.py checks it against onnxruntime.
- Softmax / LogSoftmax and the normalizations (LayerNormalization, InstanceNormalization, GroupNormalization,
  RMSNormalization): see their helpers; the variance's rounding (``E[x²] - μ²`` in one pass, the worst case) is
  bounded a priori, and rows where it could cancel epsilon are reported unbounded.
- overflow: a bound beyond the largest finite value of the precision becomes ±inf (the model computes ±inf).

A model that computes NaN has no interval: the ops that can make NaN from finite values (Sqrt and Log of
negatives, Div by 0, Reciprocal of 0, Pow of negatives) report those elements unbounded instead. Limitation: a
graph rewritten by :func:`lipcheck.ir.canonicalize.fold_batchnorm` is bounded as written; the unfused runtime's
rounding of the folded bias (``s·(b - mean) + β``) is only covered up to the factor 2 above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import special

from lipcheck.bound import torch_eval as te
from lipcheck.ir.graph import Graph, Node

__all__ = ["Interval", "Ranges", "propagate"]

Array = np.ndarray
_INF = math.inf


@dataclass(frozen=True)
class Interval:
    """Element-wise bounds ``lo ≤ value ≤ hi`` (float64 arrays of the tensor's shape; ±inf allowed)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    @property
    def is_finite(self) -> bool:
        return bool(np.isfinite(self.lo).all() and np.isfinite(self.hi).all())

    @property
    def is_point(self) -> bool:
        return bool(np.array_equal(self.lo, self.hi) and np.isfinite(self.lo).all())

    def contains(self, values: np.ndarray) -> bool:
        v = np.asarray(values, dtype=np.float64)
        return bool(np.all((self.lo <= v) & (v <= self.hi)))

    @staticmethod
    def point(value: np.ndarray | float) -> Interval:
        v = np.asarray(value, dtype=np.float64)
        return Interval(v, v)


@dataclass
class Ranges:
    """``intervals``: every input and node output (constants are exact: :meth:`get` gives them as points);
    ``unbounded``: tensor -> why (some of) its bounds are infinite, naming the node."""

    intervals: dict[str, Interval]
    unbounded: dict[str, str]
    graph: Graph = field(repr=False)
    precision: str = "float32"

    def __getitem__(self, name: str) -> Interval:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.intervals or (isinstance(name, str) and self.graph.is_const(name))

    def get(self, name: str) -> Interval:
        if name in self.intervals:
            return self.intervals[name]
        if self.graph.is_const(name):
            return Interval.point(np.asarray(self.graph.constants[name], dtype=np.float64))
        raise KeyError(name)


@dataclass(frozen=True)
class _Precision:
    name: str
    u: float  # unit roundoff
    tiny: float  # smallest normal number: bound on an underflowing result's error
    max: float  # largest finite value

    @property
    def delta(self) -> float:
        return 128.0 * self.u

    def gamma(self, n: float) -> float:
        nu = max(float(n), 1.0) * self.u
        return nu / (1.0 - nu) if nu < 0.5 else _INF


_PRECISIONS = {
    "float64": _Precision("float64", 2.0**-53, float(np.finfo(np.float64).tiny), float(np.finfo(np.float64).max)),
    "float32": _Precision("float32", 2.0**-24, float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)),
    "float16": _Precision("float16", 2.0**-11, float(np.finfo(np.float16).tiny), float(np.finfo(np.float16).max)),
    "bfloat16": _Precision("bfloat16", 2.0**-8, float(np.finfo(np.float32).tiny), 3.3895313892515355e38),
}


class _NoRule(Exception):
    """The node's outputs get (-inf, inf); the message says why."""


# ----------------------------------------------------------------------------------------------------
# interval helpers


def _finish(lo: Array, hi: Array, prec: _Precision | None) -> Interval:
    """NaN bounds (inf - inf) become infinite; with ``prec``, bounds beyond its largest value become ±inf."""
    lo = np.array(lo, dtype=np.float64)
    hi = np.array(hi, dtype=np.float64)
    lo[np.isnan(lo)] = -_INF
    hi[np.isnan(hi)] = _INF
    if prec is not None:
        lo[lo < -prec.max] = -_INF
        hi[hi > prec.max] = _INF
    return Interval(lo, hi)


def _widen(lo: Array, hi: Array, prec: _Precision, rel: float | Array = 0.0, absolute: float | Array = 0.0,
           ) -> Interval:
    """[lo - rel·|lo| - absolute - tiny, hi + rel·|hi| + absolute + tiny]."""
    with np.errstate(invalid="ignore", over="ignore"):
        lo2 = lo - (rel * np.abs(lo) + absolute + prec.tiny)
        hi2 = hi + (rel * np.abs(hi) + absolute + prec.tiny)
    return _finish(lo2, hi2, prec)


def _widen_sides(lo: Array, hi: Array, prec: _Precision, n: int, mag_lo: Array, mag_hi: Array) -> Interval:
    """The sum-of-products margin of a MONOTONE op (nonnegative weights), per side: [lo - 2γ_{n+4}·mag_lo,
    hi + 2γ_{n+4}·mag_hi] (+ tiny); infinite where a partial sum may overflow."""
    g, tiny = 2.0 * prec.gamma(n + 4), (n + 4) * prec.tiny
    with np.errstate(invalid="ignore", over="ignore"):
        lo2, hi2 = lo - g * mag_lo - tiny, hi + g * mag_hi + tiny
    lo2 = np.where(mag_lo > 0.5 * prec.max, -_INF, lo2)
    hi2 = np.where(mag_hi > 0.5 * prec.max, _INF, hi2)
    return _finish(lo2, hi2, prec)


def _smul(a: Array, b: Array) -> Array:
    """a·b with 0·inf = 0 (the true values are finite: 0 times anything is 0)."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.multiply(a, b)
    return np.where((np.asarray(a) == 0) | (np.asarray(b) == 0), 0.0, p)


def _mul(a: Interval, b: Interval) -> tuple[Array, Array]:
    ps = [_smul(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    return functools.reduce(np.minimum, ps), functools.reduce(np.maximum, ps)


def _square(a: Interval) -> tuple[Array, Array]:
    l2, h2 = a.lo * a.lo, a.hi * a.hi
    straddle = (a.lo < 0) & (a.hi > 0)
    return np.where(straddle, 0.0, np.minimum(l2, h2)), np.maximum(l2, h2)


def _parts(iv: Interval) -> tuple[Array, Array, Array, Array | None]:
    """(center, radius, magnitude max(|lo|, |hi|), mask of the non-finite elements or None); the non-finite
    elements are zero in the first three."""
    lo, hi = iv.lo, iv.hi
    fin = np.isfinite(lo) & np.isfinite(hi)
    inf: Array | None = None
    if not fin.all():
        lo, hi, inf = np.where(fin, lo, 0.0), np.where(fin, hi, 0.0), ~fin
    return 0.5 * lo + 0.5 * hi, 0.5 * hi - 0.5 * lo, np.maximum(np.abs(lo), np.abs(hi)), inf


def _assemble(center: Array, rad: Array, mag: Array, inf: Array | None, n: int, prec: _Precision) -> Interval:
    """center ± (radius + the sum-of-products rounding margin); infinite where ``inf``."""
    margin = 2.0 * prec.gamma(n + 4) * mag + (n + 4) * prec.tiny
    with np.errstate(invalid="ignore", over="ignore"):
        lo, hi = center - rad - margin, center + rad + margin
    big = mag > 0.5 * prec.max  # a partial sum may overflow
    inf = big if inf is None else (inf | big)
    lo, hi = np.where(inf, -_INF, lo), np.where(inf, _INF, hi)
    return _finish(lo, hi, prec)


def _image(f: Callable[[Array], Array], x: Interval, crit: Sequence[tuple[float, float]] = ()
           ) -> tuple[Array, Array]:
    """Image of [lo, hi] under a continuous f that is monotone between the critical points ``(p, f(p))``."""
    with np.errstate(all="ignore"):
        a, b = f(x.lo), f(x.hi)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    for p, fp in crit:
        inside = (x.lo < p + 1e-6) & (x.hi > p - 1e-6)  # a margin: p is known to ~1e-9
        lo, hi = np.where(inside, np.minimum(lo, fp), lo), np.where(inside, np.maximum(hi, fp), hi)
    return lo, hi


def _t(a: Array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _param_tensor(v: Array) -> torch.Tensor:
    arr = np.asarray(v)
    if arr.dtype.kind == "b":
        return torch.from_numpy(arr.copy())
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.astype(np.int64))
    return _t(arr)


def _np(t: torch.Tensor) -> Array:
    return t.detach().to(torch.float64).numpy() if t.dtype != torch.float64 else t.detach().numpy()


# ----------------------------------------------------------------------------------------------------
# the walk


class _Ctx:
    def __init__(self, graph: Graph, prec: _Precision, env: dict[str, Interval]) -> None:
        self.graph = graph
        self.prec = prec
        self.env = env
        self.ectx = te.EvalContext(graph, torch.float64)
        self.partial: str | None = None  # set by a rule that bounds some elements only

    def iv(self, name: str) -> Interval:
        if name in self.env:
            return self.env[name]
        if self.graph.is_const(name):
            return Interval.point(np.asarray(self.graph.constants[name], dtype=np.float64))
        raise _NoRule(f"input {name!r} has no range")

    def exact(self, name: str) -> Array | None:
        """The value of a constant, or of a tensor whose interval is a point (in its own dtype)."""
        if self.graph.is_const(name):
            return np.asarray(self.graph.constants[name])
        iv = self.env.get(name)
        if iv is None or not iv.is_point:
            return None
        try:
            kind = np.dtype(self.graph.dtypes.get(name, "float64")).kind
        except TypeError:  # "bfloat16", "unknown"
            kind = "f"
        return iv.lo.astype(np.int64) if kind in "iu" else (iv.lo != 0) if kind == "b" else iv.lo

    def need_exact(self, node: Node, i: int, what: str = "input") -> Array:
        v = self.exact(node.inputs[i]) if i < len(node.inputs) and node.inputs[i] else None
        if v is None:
            raise _NoRule(f"{what} #{i} ({node.inputs[i] if i < len(node.inputs) else ''!r}) is not constant")
        return v

    def opt(self, node: Node, i: int) -> Interval | None:
        return self.iv(node.inputs[i]) if i < len(node.inputs) and node.inputs[i] else None

    def widen(self, lo: Array, hi: Array, scale: float = 0.0) -> Interval:
        """The one-operation / transcendental widening: δ·(|bound| + scale) + tiny."""
        d = self.prec.delta
        return _widen(lo, hi, self.prec, d, d * scale)


Rule = Callable[[Node, _Ctx], list[Interval | None]]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return deco


def _precision_of(graph: Graph, precision: str | None) -> _Precision:
    if precision is not None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, not {precision!r}")
        return _PRECISIONS[precision]
    names = set(graph.dtypes.values())
    for name in ("bfloat16", "float16", "float32"):
        if name in names:
            return _PRECISIONS[name]
    return _PRECISIONS["float64"] if "float64" in names else _PRECISIONS["float32"]


def propagate(graph: Graph, box: Mapping[str, tuple[np.ndarray | float, np.ndarray | float]], *,
              precision: str | None = None) -> Ranges:
    """Interval bounds of every tensor of ``graph`` for inputs in ``box`` (input name -> (lo, hi), scalars or
    arrays broadcast to the input's shape). Every float input needs a box; integer inputs are refused unless
    the box gives theirs. ``precision``: the dtype the model is evaluated in (``float32``, ``float64``,
    ``float16``, ``bfloat16``; default: the least precise float dtype of the graph)."""
    prec = _precision_of(graph, precision)
    known = {i.name for i in graph.inputs}
    extra = sorted(set(box) - known)
    if extra:
        raise ValueError(f"box names tensors that are not graph inputs: {', '.join(extra)}")
    missing = [i.name for i in graph.inputs if i.name not in box and te.is_float_info(i)]
    if missing:
        raise ValueError(f"no box for the float input(s) {', '.join(missing)}")
    ints = [i.name for i in graph.inputs if i.name not in box and not te.is_float_info(i)]
    if ints:
        raise ValueError(f"integer input(s) {', '.join(ints)} need a range in the box (not supported yet)")
    env: dict[str, Interval] = {}
    for info in graph.inputs:
        lo_v, hi_v = box[info.name]
        lo = np.array(np.broadcast_to(np.asarray(lo_v, dtype=np.float64), info.shape))
        hi = np.array(np.broadcast_to(np.asarray(hi_v, dtype=np.float64), info.shape))
        if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
            raise ValueError(f"box of input {info.name!r}: NaN, or lo > hi")
        env[info.name] = Interval(lo, hi)
    unbounded: dict[str, str] = {}
    ctx = _Ctx(graph, prec, env)
    for node in graph.nodes:
        ctx.partial = None
        outs: list[Interval | None]
        reason = ""
        try:
            if node.domain not in ("", "ai.onnx"):
                raise _NoRule(f"op {node.op_type} of domain {node.domain!r}: no range rule")
            rule = _RULES.get(node.op_type)
            if rule is None:
                raise _NoRule(f"op {node.op_type}: no range rule")
            outs = rule(node, ctx)
        except _NoRule as exc:
            outs, reason = [], f"{node.label}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a rule that fails leaves its outputs unbounded (sound)
            outs, reason = [], f"{node.label}: range rule failed ({type(exc).__name__}: {exc})"
        for i, name in enumerate(node.outputs):
            if not name:
                continue
            iv = outs[i] if i < len(outs) else None
            shape = graph.shapes.get(name)
            if iv is not None and shape is not None and iv.shape != tuple(shape):
                iv, reason = None, f"{node.label}: range rule gave shape {iv.shape}, expected {tuple(shape)}"
            if iv is None:
                full = np.full(tuple(shape) if shape is not None else (), _INF)
                env[name] = Interval(-full, full)
                unbounded[name] = reason or f"{node.label}: output #{i} has no range rule"
                continue
            env[name] = iv
            if not iv.is_finite:
                if ctx.partial:
                    unbounded[name] = f"{node.label}: {ctx.partial}"
                else:
                    src = next((n for n in node.inputs if n and n in env and not env[n].is_finite), None)
                    unbounded[name] = (f"{node.label}: input {src!r} is unbounded" if src
                                       else f"{node.label}: infinite bounds (a pole, or beyond {prec.name})")
    return Ranges(intervals=env, unbounded=unbounded, graph=graph, precision=prec.name)


# ----------------------------------------------------------------------------------------------------
# sums of products: center-radius form


def _conv_rule_fn(node: Node, ctx: _Ctx) -> list[Interval | None]:
    reason = te.unsupported_reason(node, ctx.graph)
    if reason:
        raise _NoRule(reason)
    w = ctx.need_exact(node, 1, "weight")
    x = ctx.iv(node.inputs[0])
    fn = te.conv if node.op_type == "Conv" else te.conv_transpose
    c, r, m, inf = _parts(x)
    W = _t(w)
    Wa = W.abs()
    batch = c.shape[0]
    stacked = [r, m] + ([inf.astype(np.float64)] if inf is not None else [])
    center = _np(fn(node, [_t(c), W], ctx.ectx))
    absed = _np(fn(node, [_t(np.concatenate(stacked, axis=0)), Wa], ctx.ectx))
    rad, mag = absed[:batch], absed[batch: 2 * batch]
    infm = absed[2 * batch:] > 0 if inf is not None else None
    b = ctx.opt(node, 2)
    if b is not None:
        bc, br, bm, binf = _parts(b)
        shape = [1, -1] + [1] * (center.ndim - 2)
        center, rad, mag = center + bc.reshape(shape), rad + br.reshape(shape), mag + bm.reshape(shape)
        if binf is not None:
            infm = np.broadcast_to(binf.reshape(shape), center.shape) | (infm if infm is not None else False)
    group = int(node.attr("group", 1))
    k = int(np.prod(w.shape[2:], dtype=np.int64))
    n = (w.shape[1] if node.op_type == "Conv" else w.shape[0] // group) * k
    return [_assemble(center, rad, mag, infm, n, ctx.prec)]


_rule("Conv", "ConvTranspose")(_conv_rule_fn)


def _matmul_parts(a: Interval, b: Interval) -> tuple[Array, Array, Array, Array | None]:
    """A·B in midpoint-radius form (Rump): center Ac·Bc, radius |Ac|·Br + Ar·|Bc| + Ar·Br, magnitude Am·Bm."""
    ca, ra, ma, ia = _parts(a)
    cb, rb, mb, ib = _parts(b)

    def mm(x: Array, y: Array) -> Array:
        return _np(torch.matmul(_t(x), _t(y)))

    center = mm(ca, cb)
    a_point, b_point = not ra.any(), not rb.any()
    if a_point and b_point:
        rad = np.zeros_like(center)
    elif a_point:
        rad = mm(np.abs(ca), rb)
    elif b_point:
        rad = mm(ra, np.abs(cb))
    else:
        rad = mm(np.abs(ca), rb) + mm(ra, np.abs(cb)) + mm(ra, rb)
    mag = mm(ma, mb)
    inf = None
    if ia is not None or ib is not None:
        fa = ia.astype(np.float64) if ia is not None else np.zeros_like(ma)
        fb = ib.astype(np.float64) if ib is not None else np.zeros_like(mb)
        nza = ((ma > 0) | (fa > 0)).astype(np.float64)
        nzb = ((mb > 0) | (fb > 0)).astype(np.float64)
        inf = (mm(fa, nzb) + mm(nza, fb)) > 0
    return center, rad, mag, inf


def _inner(a: Interval, b: Interval) -> int:
    return int(a.shape[-1]) if a.shape else 1


@_rule("MatMul")
def _matmul_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    a, b = ctx.iv(node.inputs[0]), ctx.iv(node.inputs[1])
    center, rad, mag, inf = _matmul_parts(a, b)
    return [_assemble(center, rad, mag, inf, _inner(a, b), ctx.prec)]


def _transpose(iv: Interval) -> Interval:
    return Interval(iv.lo.T, iv.hi.T)


@_rule("Gemm")
def _gemm_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    a, b = ctx.iv(node.inputs[0]), ctx.iv(node.inputs[1])
    if int(node.attr("transA", 0)):
        a = _transpose(a)
    if int(node.attr("transB", 0)):
        b = _transpose(b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    center, rad, mag, inf = _matmul_parts(a, b)
    center, rad, mag = alpha * center, abs(alpha) * rad, abs(alpha) * mag
    cvec = ctx.opt(node, 2)
    if cvec is not None and beta != 0.0:
        cc, cr, cm, cinf = _parts(cvec)
        center, rad, mag = center + beta * cc, rad + abs(beta) * cr, mag + abs(beta) * cm
        if cinf is not None:
            inf = np.broadcast_to(cinf, center.shape) | (inf if inf is not None else False)
    return [_assemble(center, rad, mag, inf, _inner(a, b), ctx.prec)]


@_rule("BatchNormalization")
def _batchnorm_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    reason = te.unsupported_reason(node, ctx.graph)
    if reason:
        raise _NoRule(reason)
    scale, bias, mean, var = (np.asarray(ctx.need_exact(node, i), dtype=np.float64) for i in range(1, 5))
    x = ctx.iv(node.inputs[0])
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    shape = [1, -1] + [1] * (len(x.shape) - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (scale / np.sqrt(var + eps)).reshape(shape)
    t = bias.reshape(shape) - mean.reshape(shape) * s
    c, r, m, inf = _parts(x)
    center, rad = c * s + t, r * np.abs(s)
    mag = (m + np.abs(mean).reshape(shape)) * np.abs(s) + np.abs(bias).reshape(shape)
    return [_assemble(center, rad, mag, inf, 4, ctx.prec)]


# ----------------------------------------------------------------------------------------------------
# ops run on lo and on hi: monotone non-decreasing in each data input (selections, max, nonnegative linear)

_ALL = None
# op -> data input positions (None: all); the other inputs are parameters and must be constant
_SELECT: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Flatten": (0,), "Transpose": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Slice": (0,),
    "Split": (0,), "Concat": _ALL, "Gather": (0,), "GatherElements": (0,), "Expand": (0,), "Tile": (0,),
    "Pad": (0,), "Identity": (0,), "Dropout": (0,), "DepthToSpace": (0,), "SpaceToDepth": (0,),
    "MaxPool": (0,), "GlobalMaxPool": (0,), "ReduceMax": (0,), "ReduceMin": (0,), "Max": _ALL, "Min": _ALL,
    "Resize": (0,), "Upsample": (0,),
    # nonnegative linear: margin from the same op on the magnitudes
    "AveragePool": (0,), "GlobalAveragePool": (0,), "ReduceMean": (0,), "ReduceSum": (0,), "CumSum": (0,),
}
_NONNEG = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "CumSum"}


def _run_op(node: Node, ctx: _Ctx, data: dict[int, Array]) -> list[Array]:
    args: list[torch.Tensor | None] = []
    for i, name in enumerate(node.inputs):
        if not name:
            args.append(None)
        elif i in data:
            args.append(_t(data[i]))
        else:
            args.append(_param_tensor(ctx.need_exact(node, i, "parameter")))
    out = te.OPS[node.op_type](node, args, ctx.ectx)
    return [_np(o) for o in (out if isinstance(out, tuple) else (out,))]


def _select_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    op = node.op_type
    reason = te.unsupported_reason(node, ctx.graph)
    if reason:
        raise _NoRule(reason)
    linear = op in _NONNEG
    if op in ("Resize", "Upsample"):
        mode = str(node.attr("mode", "nearest"))
        if mode not in ("nearest", "linear", "bilinear"):
            raise _NoRule(f"Resize mode={mode!r}: no range rule (negative weights)")
        linear = mode != "nearest"
    if op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
        tm = ctx.exact(node.inputs[2])
        if tm is None or bool(np.asarray(tm).reshape(-1)[0]):
            raise _NoRule("training_mode may be true")
    pos = _SELECT[op]
    idx = range(len(node.inputs)) if pos is None else pos
    ivs = {i: ctx.iv(node.inputs[i]) for i in idx if i < len(node.inputs) and node.inputs[i]}
    los = _run_op(node, ctx, {i: v.lo for i, v in ivs.items()})
    his = _run_op(node, ctx, {i: v.hi for i, v in ivs.items()})
    if not linear:
        return [_finish(lo, hi, None) for lo, hi in zip(los, his, strict=True)]
    # A sum of nonnegative multiples is non-decreasing in each term also in floating point (rounding is
    # monotone), so the model's value is ≥ its value at lo, ≥ op(lo) - γ·op(|lo|): each side needs its own
    # magnitudes only (a finite lower bound survives an infinite upper one).
    mags_lo = _run_op(node, ctx, {i: np.abs(v.lo) for i, v in ivs.items()})
    mags_hi = _run_op(node, ctx, {i: np.abs(v.hi) for i, v in ivs.items()})
    x_shape = ivs[0].shape
    outs = []
    for lo, hi, mag_lo, mag_hi in zip(los, his, mags_lo, mags_hi, strict=True):
        if op in ("Resize", "Upsample"):  # x0 + w·(x1 - x0) per axis (not monotone): the global magnitude
            n = 4 * len(x_shape) + 4
            mag_lo = mag_hi = np.full_like(lo, max(np.max(mag_lo), np.max(mag_hi)) if lo.size else 0.0)
        elif op == "AveragePool":
            n = int(np.prod(node.attr("kernel_shape") or [1]))
        elif op == "CumSum":
            n = max(x_shape) if x_shape else 1
        else:
            n = max(1, int(np.prod(x_shape)) // max(1, lo.size))
        outs.append(_widen_sides(lo, hi, ctx.prec, n, mag_lo, mag_hi))
    return outs  # type: ignore[return-value]


for _op in _SELECT:
    _rule(_op)(_select_rule)


# ----------------------------------------------------------------------------------------------------
# element-wise functions


def _unary(f: Callable[[Array], Array], crit: Sequence[tuple[float, float]] = (), scale: float | None = 0.0,
           floor: float | None = None) -> Rule:
    """f applied element-wise; ``scale`` None: exact (no widening); ``floor``: a lower bound of f's values that
    every implementation keeps (Exp ≥ 0)."""

    def rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
        lo, hi = _image(f, ctx.iv(node.inputs[0]), crit)
        out = _finish(lo, hi, None) if scale is None else ctx.widen(lo, hi, scale)
        if floor is not None:
            out = Interval(np.maximum(out.lo, floor), np.maximum(out.hi, floor))
        return [out]

    return rule


def _argmin(f: Callable[[Array], Array], a: float, b: float) -> tuple[float, float]:
    """(p, f(p)) for the minimum of a unimodal f on [a, b] (golden section), f(p) lowered by 1e-15."""
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if float(f(np.array(c))) < float(f(np.array(d))):
            b = d
        else:
            a = c
        if b - a < 1e-12:
            break
    p = 0.5 * (a + b)
    return p, float(f(np.array(p))) - 1e-15


def _nan_to(v: Array, x: Array, neg: float, pos: float) -> Array:
    """Limits at ±inf for functions that numpy evaluates as inf·0 there."""
    return np.where(np.isneginf(x), neg, np.where(np.isposinf(x), pos, v))


def _gelu_erf(x: Array) -> Array:
    return _nan_to(0.5 * x * special.erfc(-x / math.sqrt(2.0)), x, 0.0, _INF)


def _gelu_tanh(x: Array) -> Array:
    return _nan_to(x * special.expit(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)), x, 0.0, _INF)


def _swish(alpha: float) -> Callable[[Array], Array]:
    return lambda x: _nan_to(x * special.expit(alpha * x), x, 0.0 if alpha > 0 else -_INF, _INF)


def _mish(x: Array) -> Array:
    return _nan_to(x * np.tanh(np.logaddexp(0.0, x)), x, 0.0, _INF)


def _hardswish(x: Array) -> Array:
    return np.where(x <= -3.0, 0.0, np.where(x >= 3.0, x, x * (x + 3.0) / 6.0))


def _softsign(x: Array) -> Array:
    return _nan_to(x / (1.0 + np.abs(x)), x, -1.0, 1.0)


@functools.cache
def _critical(name: str, alpha: float = 1.0) -> tuple[tuple[float, float], ...]:
    if name == "gelu":
        return (_argmin(_gelu_erf, -3.0, 0.0),)
    if name == "gelu_tanh":
        return (_argmin(_gelu_tanh, -3.0, 0.0),)
    if name == "mish":
        return (_argmin(_mish, -3.0, 0.0),)
    if name == "swish":  # x·σ(αx): the minimum of SiLU scaled by 1/α (α > 0)
        p, fp = _argmin(_swish(1.0), -3.0, 0.0)
        return ((p / alpha, fp / alpha),)
    raise KeyError(name)


_FIXED: dict[str, Rule] = {
    "Relu": _unary(lambda x: np.maximum(x, 0.0), scale=None),
    "Abs": _unary(np.abs, crit=((0.0, 0.0),), scale=None),
    "Neg": _unary(np.negative, scale=None),
    "Sign": _unary(np.sign, scale=None),
    "Floor": _unary(np.floor, scale=None), "Ceil": _unary(np.ceil, scale=None),
    "Round": _unary(np.round, scale=None),  # half to even, like ONNX
    "Sigmoid": _unary(special.expit, scale=1.0), "Tanh": _unary(np.tanh, scale=1.0),
    "Erf": _unary(special.erf, scale=1.0), "Softsign": _unary(_softsign, scale=1.0),
    "Softplus": _unary(lambda x: np.logaddexp(0.0, x), scale=1.0, floor=0.0),
    "Exp": _unary(np.exp, scale=0.0, floor=0.0),
    "Mish": lambda node, ctx: _unary(_mish, _critical("mish"), 1.0)(node, ctx),
}
for _op, _fn in _FIXED.items():
    _rule(_op)(_fn)


@_rule("Sin", "Cos")
def _trig_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    shape = ctx.iv(node.inputs[0]).shape
    return [Interval(np.full(shape, -1.0), np.full(shape, 1.0))]


@_rule("Gelu")
def _gelu_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    approx = str(node.attr("approximate", "none"))
    name, f = ("gelu_tanh", _gelu_tanh) if approx == "tanh" else ("gelu", _gelu_erf)
    return _unary(f, _critical(name), 1.0)(node, ctx)


@_rule("Swish")
def _swish_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    alpha = float(node.attr("alpha", 1.0))
    if alpha <= 0:
        raise _NoRule(f"Swish alpha={alpha:g}: no range rule")
    return _unary(_swish(alpha), _critical("swish", alpha), 1.0)(node, ctx)


@_rule("HardSwish")
def _hardswish_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    return _unary(_hardswish, ((-1.5, -0.375),), 1.0)(node, ctx)


@_rule("HardSigmoid")
def _hardsigmoid_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    alpha, beta = float(node.attr("alpha", np.float32(0.2))), float(node.attr("beta", np.float32(0.5)))
    return _unary(lambda x: np.clip(_smul(alpha, x) + beta, 0.0, 1.0), (), 1.0)(node, ctx)


@_rule("LeakyRelu", "PRelu")
def _leaky_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """x ≥ 0: x, else α·x (any α, also negative or > 1): the extremes are at the endpoints or at 0."""
    if node.op_type == "PRelu":
        alpha: Array | float = np.asarray(ctx.need_exact(node, 1, "slope"), dtype=np.float64)
    else:
        alpha = float(node.attr("alpha", np.float32(0.01)))
    x = ctx.iv(node.inputs[0])
    a, b = (np.where(v >= 0, v, _smul(alpha, v)) for v in (x.lo, x.hi))
    straddle = (x.lo < 0) & (x.hi > 0)
    lo = np.where(straddle, np.minimum(np.minimum(a, b), 0.0), np.minimum(a, b))
    hi = np.where(straddle, np.maximum(np.maximum(a, b), 0.0), np.maximum(a, b))
    return [ctx.widen(lo, hi)]


@_rule("Elu", "Celu", "Selu")
def _elu_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    op = node.op_type
    alpha = float(node.attr("alpha", 1.67326319217681884765625 if op == "Selu" else 1.0))
    gamma = float(node.attr("gamma", 1.05070102214813232421875)) if op == "Selu" else 1.0
    if op == "Celu":
        if alpha == 0:
            raise _NoRule("Celu alpha=0")

        def f(x: Array) -> Array:
            return np.maximum(x, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(x, 0.0) / alpha))
    else:
        def f(x: Array) -> Array:
            return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))
    return _unary(f, ((0.0, 0.0),), max(1.0, abs(alpha * gamma)))(node, ctx)


def _domain_rule(f: Callable[[Array], Array], bad: Callable[[Interval], Array], why: str,
                 floor: float | None = None, scale: float = 0.0) -> Rule:
    """A monotone (or piecewise monotone, extremes at the endpoints) f with a domain: the elements where
    ``bad`` holds (NaN or inf / 0 possible) are unbounded."""

    def rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
        x = ctx.iv(node.inputs[0])
        mask = bad(x)
        safe = Interval(np.where(mask, 1.0, x.lo), np.where(mask, 1.0, x.hi))
        lo, hi = _image(f, safe)
        out = ctx.widen(lo, hi, scale)
        lo, hi = np.where(mask, -_INF, out.lo), np.where(mask, _INF, out.hi)
        if floor is not None:
            lo = np.where(mask, lo, np.maximum(lo, floor))
        if mask.any():
            ctx.partial = f"op {node.op_type}: {why}"
        return [Interval(lo, hi)]

    return rule


_rule("Sqrt")(_domain_rule(np.sqrt, lambda x: x.lo < 0, "the input interval reaches below 0 (NaN)", floor=0.0))
_rule("Log")(_domain_rule(np.log, lambda x: x.lo < 0, "the input interval reaches below 0 (NaN)", scale=1.0))
_rule("Reciprocal")(_domain_rule(np.reciprocal, lambda x: (x.lo <= 0) & (x.hi >= 0),
                                 "the input interval contains 0"))


@_rule("Pow")
def _pow_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    e = ctx.exact(node.inputs[1])
    if e is None:
        raise _NoRule("the exponent is not constant")
    x = ctx.iv(node.inputs[0])
    e = np.broadcast_to(np.asarray(e, dtype=np.float64), np.broadcast_shapes(np.shape(e), x.shape))
    lo_x, hi_x = np.broadcast_to(x.lo, e.shape), np.broadcast_to(x.hi, e.shape)
    is_int = e == np.round(e)
    straddle = (lo_x <= 0) & (hi_x >= 0)
    bad = (~is_int & (lo_x < 0)) | ((e < 0) & straddle)
    with np.errstate(all="ignore"):
        a = np.power(np.where(bad, 1.0, lo_x), e)
        b = np.power(np.where(bad, 1.0, hi_x), e)
        z = np.power(0.0, np.where(e < 0, 1.0, e))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    inner = straddle & (lo_x < 0) & (hi_x > 0) & ~bad
    lo, hi = np.where(inner, np.minimum(lo, z), lo), np.where(inner, np.maximum(hi, z), hi)
    out = _floor_nonnegative(ctx.widen(lo, hi), (lo_x >= 0) | (is_int & (np.mod(e, 2) == 0)))
    if bad.any():
        ctx.partial = "op Pow: a negative base with a fractional exponent, or 0 with a negative one"
    return [Interval(np.where(bad, -_INF, out.lo), np.where(bad, _INF, out.hi))]


@_rule("LSTM")
def _lstm_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """Y, Y_h = o⊙tanh(c) ∈ [−1, 1]; Y_c: |c_t| ≤ |f||c_{t−1}| + |i||g| ≤ max|c_0| + t (lipcheck.rules.recurrent),
    whatever the input; each widened by the rounding margin (T additions for the cell state)."""
    x_shape = ctx.graph.shapes.get(node.inputs[0])
    if x_shape is None or len(x_shape) != 3 or not all(isinstance(d, int) for d in x_shape):
        raise _NoRule("LSTM: the input's shape is unknown")
    steps = int(x_shape[1] if int(node.attr("layout", 0)) == 1 else x_shape[0])
    c0 = node.inputs[6] if len(node.inputs) > 6 else ""
    c0_max = 0.0
    if c0:
        iv = ctx.iv(c0)
        c0_max = float(max(np.max(np.abs(iv.lo)), np.max(np.abs(iv.hi)))) if iv.lo.size else 0.0
    out: list[Interval | None] = []
    for k, name in enumerate(node.outputs):
        shape = ctx.graph.shapes.get(name) if name else None
        if shape is None or not all(isinstance(d, int) for d in shape):
            out.append(None)
            continue
        m = 1.0 if k < 2 else c0_max + steps
        rel = ctx.prec.delta if k < 2 else 2.0 * ctx.prec.gamma(2 * steps + 4) + ctx.prec.delta
        out.append(_widen(np.full(shape, -m), np.full(shape, m), ctx.prec, rel))
    return out


@_rule("GRU", "RNN")
def _gru_rnn_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """GRU: h_t = (1 − z)⊙h̃ + z⊙h_{t−1} with |h̃| < 1 stays within max(1, max|h_0|); RNN: its activation's range
    (tanh (−1, 1), sigmoid (0, 1); Relu has none). Both outputs (Y, Y_h), widened by the rounding margin."""
    if node.op_type == "RNN":
        acts = node.attr("activations")
        names = {str(a.decode() if isinstance(a, bytes) else a).lower() for a in acts} if acts else {"tanh"}
        if not names <= {"tanh", "sigmoid"}:
            raise _NoRule(f"RNN activations {sorted(names)}: no bounded range")
        m = 1.0
    else:
        h0 = node.inputs[5] if len(node.inputs) > 5 else ""
        m = 1.0
        if h0:
            iv = ctx.iv(h0)
            m = max(1.0, float(max(np.max(np.abs(iv.lo)), np.max(np.abs(iv.hi)))) if iv.lo.size else 1.0)
    out: list[Interval | None] = []
    for name in node.outputs:
        shape = ctx.graph.shapes.get(name) if name else None
        if shape is None or not all(isinstance(d, int) for d in shape):
            out.append(None)
            continue
        out.append(_widen(np.full(shape, -m), np.full(shape, m), ctx.prec, 4.0 * ctx.prec.delta))
    return out


@_rule("Clip")
def _clip_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """min(max(x, a), b): non-decreasing in x, a and b (ONNX: b wins when a > b)."""
    x = ctx.iv(node.inputs[0])
    lo, hi = x.lo, x.hi
    a, b = ctx.opt(node, 1), ctx.opt(node, 2)
    if a is None and node.attr("min") is not None:
        a = Interval.point(float(node.attr("min")))
    if b is None and node.attr("max") is not None:
        b = Interval.point(float(node.attr("max")))
    if a is not None:
        lo, hi = np.maximum(lo, a.lo), np.maximum(hi, a.hi)
    if b is not None:
        lo, hi = np.minimum(lo, b.lo), np.minimum(hi, b.hi)
    return [_finish(lo, hi, None)]


# ----------------------------------------------------------------------------------------------------
# arithmetic


@_rule("Add", "Sub", "Mul", "Div")
def _arith_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    op = node.op_type
    a, b = ctx.iv(node.inputs[0]), ctx.iv(node.inputs[1])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if op == "Add":
            lo, hi = a.lo + b.lo, a.hi + b.hi
        elif op == "Sub":
            lo, hi = a.lo - b.hi, a.hi - b.lo
        elif op == "Mul" and node.inputs[0] == node.inputs[1]:
            lo, hi = _square(a)
        elif op == "Mul":
            lo, hi = _mul(a, b)
        else:
            if ctx.graph.dtypes.get(node.outputs[0], "float32") in ("int8", "int16", "int32", "int64", "uint8",
                                                                   "uint16", "uint32", "uint64"):
                raise _NoRule("integer Div: no range rule")
            zero = (b.lo <= 0) & (b.hi >= 0)
            inv = Interval(np.where(zero, 1.0, 1.0 / np.where(zero, 1.0, b.hi)),
                           np.where(zero, 1.0, 1.0 / np.where(zero, 1.0, b.lo)))
            lo, hi = _mul(a, inv)
            if zero.any():
                zb = np.broadcast_to(zero, lo.shape)
                lo, hi = np.where(zb, -_INF, lo), np.where(zb, _INF, hi)
                ctx.partial = f"op Div: the divisor's interval contains 0 (input {node.inputs[1]!r})"
    out = ctx.widen(lo, hi)
    if op in ("Add", "Mul", "Div"):
        if op == "Mul" and node.inputs[0] == node.inputs[1]:
            nonneg: Array | bool = True
        else:
            nonneg = (a.lo >= 0) & ((b.lo > 0) if op == "Div" else (b.lo >= 0))
        out = _floor_nonnegative(out, nonneg)
    return [out]


def _floor_nonnegative(out: Interval, nonneg: Array | bool) -> Interval:
    """``out`` with its lower end raised to 0 where the op's exact result is ≥ 0 for every input in the ranges
    (``nonneg``): rounding is monotone and 0 is representable, so a floating-point result of such an op is ≥ 0
    too (x·x, sums and products of non-negative numbers, non-negative powers); the rounding margin that widening
    added below 0 there cannot be reached. Keeps a sum of squares (an STFT magnitude's √(re² + im²)) off the
    negative numbers where Sqrt would give NaN."""
    mask = np.broadcast_to(np.asarray(nonneg, dtype=bool), np.shape(out.lo))
    if not mask.any():
        return out
    return Interval(np.where(mask, np.maximum(out.lo, 0.0), out.lo), out.hi)


@_rule("Sum", "Mean")
def _sum_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    ivs = [ctx.iv(n) for n in node.inputs if n]
    k = len(ivs)
    with np.errstate(invalid="ignore", over="ignore"):
        lo = functools.reduce(np.add, [v.lo for v in ivs])
        hi = functools.reduce(np.add, [v.hi for v in ivs])
        mag_lo = functools.reduce(np.add, [np.abs(v.lo) for v in ivs])  # monotone: see _select_rule
        mag_hi = functools.reduce(np.add, [np.abs(v.hi) for v in ivs])
        if node.op_type == "Mean":
            lo, hi, mag_lo, mag_hi = lo / k, hi / k, mag_lo / k, mag_hi / k
    out = ctx.widen(lo, hi)
    nonneg = functools.reduce(np.logical_and, [v.lo >= 0 for v in ivs])
    return [_floor_nonnegative(_widen_sides(out.lo, out.hi, ctx.prec, k, mag_lo, mag_hi), nonneg)]


@_rule("Where")
def _where_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    c, x, y = (ctx.iv(node.inputs[i]) for i in range(3))
    true, false = c.lo > 0, c.hi <= 0  # booleans as 0 / 1
    lo = np.where(true, x.lo, np.where(false, y.lo, np.minimum(x.lo, y.lo)))
    hi = np.where(true, x.hi, np.where(false, y.hi, np.maximum(x.hi, y.hi)))
    return [_finish(lo, hi, None)]


# ----------------------------------------------------------------------------------------------------
# softmax


def _excl_lse(v: Array) -> Array:
    """log Σ_{j≠i} exp(v_j) along the last axis (prefix / suffix log-sum-exp: no cancellation)."""
    with np.errstate(invalid="ignore", over="ignore"):
        pre = np.logaddexp.accumulate(v, axis=-1)
        suf = np.flip(np.logaddexp.accumulate(np.flip(v, -1), axis=-1), -1)
    pad = np.full(v.shape[:-1] + (1,), -_INF)
    left = np.concatenate([pad, pre[..., :-1]], axis=-1)
    right = np.concatenate([suf[..., 1:], pad], axis=-1)
    return np.logaddexp(left, right)


@_rule("Softmax", "LogSoftmax")
def _softmax_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """softmax_i ∈ [σ(lo_i - LSE_{j≠i} hi_j), σ(hi_i - LSE_{j≠i} lo_j)] (σ the logistic function), the bounds
    attained at the box's vertices; LogSoftmax: their logs. Float32 evaluation (exp of x - max, a sum of n
    positive terms, a division) is within a relative γ_{n+8} and an absolute δ of the exact value."""
    x = ctx.iv(node.inputs[0])
    shape = x.shape
    if 0 < ctx.graph.opset < 13:
        axis = te._axis(int(node.attr("axis", 1)), len(shape))
        lead = int(np.prod(shape[:axis], dtype=np.int64))
        lo_x, hi_x = x.lo.reshape(lead, -1), x.hi.reshape(lead, -1)
        axis = 1
    else:
        axis = te._axis(int(node.attr("axis", -1)), len(shape))
        lo_x, hi_x = x.lo, x.hi
    lo_m, hi_m = np.moveaxis(lo_x, axis, -1), np.moveaxis(hi_x, axis, -1)
    n = lo_m.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        z_lo = lo_m - _excl_lse(hi_m)
        z_hi = hi_m - _excl_lse(lo_m)
    z_lo, z_hi = np.where(np.isnan(z_lo), -_INF, z_lo), np.where(np.isnan(z_hi), _INF, z_hi)
    d, g = ctx.prec.delta, 2.0 * ctx.prec.gamma(n + 8)
    if node.op_type == "Softmax":
        lo, hi = special.expit(z_lo), special.expit(z_hi)
        rel, absolute = d + g, d
    else:
        lo, hi = -np.logaddexp(0.0, -z_lo), -np.logaddexp(0.0, -z_hi)
        mag = np.maximum(np.abs(lo_m), np.abs(hi_m))
        big = np.max(np.where(np.isfinite(mag), mag, _INF), axis=-1, keepdims=True) if n else 0.0
        rel, absolute = d, d * (1.0 + math.log(max(n, 1))) + g * (2.0 * big + 1.0)
    out = _widen(lo, hi, ctx.prec, rel, absolute)
    lo, hi = np.moveaxis(out.lo, -1, axis).reshape(shape), np.moveaxis(out.hi, -1, axis).reshape(shape)
    if node.op_type == "Softmax":
        lo = np.maximum(lo, 0.0)
    return [Interval(lo, hi)]


# ----------------------------------------------------------------------------------------------------
# normalizations


def _normalized(lo: Array, hi: Array, eps: float, prec: _Precision, centered: bool = True
                ) -> tuple[Array, Array, str | None, Array, Array]:
    """Bounds of y_i = (x_i - μ)/√(var + eps) (``centered``; else x_i/√(mean x² + eps)) over the LAST axis
    of (rows, n) arrays, as the model computes them.

    Exact math: x_i - μ ∈ [dlo_i, dhi_i] (interval arithmetic with x_i's own share of μ), so
    var ∈ [mean dist(0, [dlo, dhi])², mean max(dlo², dhi²)]; and Σ_j (x_j - μ) = 0 gives
    (x_i - μ)² ≤ (n-1)·var, so |y_i| ≤ √(n-1)·√(var/(var + eps)) (RMS: x_i² ≤ n·mean x², √n).
    Rounding, for the one-pass formula var = E[x²] - μ² (the worst case; two passes do better):
    |fl(E[x²]) - E[x²]| ≤ γ_{n+1}E2, |fl(μ) - μ| ≤ a = γ_{n+1}·mean|x|, |fl(μ)² - μ²| ≤ (2γ_n + u + ...)E2, so
    |fl(var) - var| ≤ e = 3.5·γ_{n+2}·E2 with E2 ≥ mean x² (Jensen: μ² ≤ E2). The model's denominator² is
    then in [(var_min + eps - e)(1-8u), (var_max + eps + e)(1+8u)]; rows where its lower end is not positive
    (e ≥ eps + var_min, or infinite inputs) are unbounded: the model may divide by 0 or take √ of a negative.
    Also returns those denominator² bounds (rows, 1), for LayerNormalization's InvStdDev."""
    n = lo.shape[-1]
    u, t64 = prec.u, 2.0**-53
    fin = np.isfinite(lo).all(axis=-1, keepdims=True) & np.isfinite(hi).all(axis=-1, keepdims=True)
    lo_f, hi_f = np.where(fin, lo, 0.0), np.where(fin, hi, 0.0)
    m = np.maximum(np.abs(lo_f), np.abs(hi_f))
    mean_m = np.mean(m, axis=-1, keepdims=True)
    e2max = np.mean(m * m, axis=-1, keepdims=True) * (1 + 1e-12)
    fin = fin & (e2max * n < 0.5 * prec.max)  # the model's sum of squares may overflow
    if centered:
        s64 = 4.0 * n * t64 * mean_m + 4.0 * t64 * m  # our float64 rounding of the sums
        s_lo, s_hi = np.sum(lo_f, axis=-1, keepdims=True), np.sum(hi_f, axis=-1, keepdims=True)
        d0lo = lo_f * (1.0 - 1.0 / n) - (s_hi - hi_f) / n - s64
        d0hi = hi_f * (1.0 - 1.0 / n) - (s_lo - lo_f) / n + s64
        vmin = np.mean(np.maximum(np.maximum(d0lo, -d0hi), 0.0) ** 2, axis=-1, keepdims=True) * (1 - 1e-12)
        vmax = np.minimum(e2max, np.mean(np.maximum(d0lo**2, d0hi**2), axis=-1, keepdims=True) * (1 + 1e-12))
        e = 3.5 * prec.gamma(n + 2) * e2max
        a = prec.gamma(n + 1) * mean_m * (1 + 1e-12)
        dlo, dhi = d0lo - a, d0hi + a
        low = (vmin + eps - e) * (1.0 - 8.0 * u)
        high = (vmax + eps + e) * (1.0 + 8.0 * u)
        c = eps - e
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(c >= 0, np.where(vmax + c > 0, vmax / (vmax + c), 1.0), vmin / (vmin + c))
        ok = fin & (low > 0)
        bound = np.sqrt((n - 1) * np.where(ok, ratio, 1.0) / (1.0 - 8.0 * u)) + a / np.sqrt(np.where(ok, low, 1.0))
    else:  # mean x² is a sum of nonnegative terms: relative error γ_{n+2}, no cancellation
        g = prec.gamma(n + 2)
        e2min = np.mean(np.maximum(np.maximum(lo_f, -hi_f), 0.0) ** 2, axis=-1, keepdims=True) * (1 - 1e-12)
        low = (e2min * (1.0 - g) + eps) * (1.0 - 8.0 * u)
        high = (e2max * (1.0 + g) + eps) * (1.0 + 8.0 * u)
        dlo, dhi = lo_f, hi_f
        ok = fin & (low > 0)
        bound = np.full_like(lo_f, math.sqrt(n / max((1.0 - g) * (1.0 - 8.0 * u), 1e-300)))
    sl, sh = np.sqrt(np.where(ok, low, 1.0)), np.sqrt(high)
    y_lo = np.maximum(-bound, np.where(dlo >= 0, dlo / sh, dlo / sl))
    y_hi = np.minimum(bound, np.where(dhi <= 0, dhi / sh, dhi / sl))
    y_lo, y_hi = np.where(ok, y_lo, -_INF), np.where(ok, y_hi, _INF)
    reason = None
    if not ok.all():
        worst = float(np.max(np.where(fin, e2max, 0.0)))
        reason = (f"the {prec.name} rounding of the variance (E[x²] up to {worst:.3g}, over {n} elements) may "
                  f"cancel epsilon {eps:g}, or an input is unbounded")
    return y_lo, y_hi, reason, np.where(ok, low, 0.0), np.where(fin, high, _INF)


def _affine(ctx: _Ctx, y: Interval, scale: Interval | None, bias: Interval | None) -> Interval:
    out = ctx.widen(y.lo, y.hi)  # the division by the model's denominator (and its square root) rounds
    if scale is not None:
        out = ctx.widen(*_mul(out, scale))
    if bias is not None:
        with np.errstate(invalid="ignore"):
            out = ctx.widen(out.lo + bias.lo, out.hi + bias.hi)
    return out


@_rule("LayerNormalization", "RMSNormalization")
def _layernorm_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    x = ctx.iv(node.inputs[0])
    shape = x.shape
    axis = te._axis(int(node.attr("axis", -1)), len(shape))
    lead = int(np.prod(shape[:axis], dtype=np.int64))
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    centered = node.op_type == "LayerNormalization"
    lo, hi, why, low, high = _normalized(x.lo.reshape(lead, -1), x.hi.reshape(lead, -1), eps, ctx.prec, centered)
    y = Interval(lo.reshape(shape), hi.reshape(shape))
    out = _affine(ctx, y, ctx.opt(node, 1), ctx.opt(node, 2) if centered else None)
    if why:
        ctx.partial = f"op {node.op_type}: {why}"
    outs: list[Interval | None] = [out]
    if centered and len(node.outputs) > 1:  # Mean, InvStdDev (statistics shape: axis.. kept as 1)
        n = lo.shape[-1]
        stat = shape[:axis] + (1,) * (len(shape) - axis)
        mean = _assemble(np.mean(0.5 * x.lo + 0.5 * x.hi, axis=tuple(range(axis, len(shape))), keepdims=True),
                         np.mean(0.5 * x.hi - 0.5 * x.lo, axis=tuple(range(axis, len(shape))), keepdims=True),
                         np.mean(np.maximum(np.abs(x.lo), np.abs(x.hi)), axis=tuple(range(axis, len(shape))),
                                 keepdims=True), None, n, ctx.prec)
        with np.errstate(divide="ignore"):
            inv_lo, inv_hi = 1.0 / np.sqrt(high), np.where(low > 0, 1.0 / np.sqrt(low), _INF)
        inv = ctx.widen(inv_lo.reshape(stat), inv_hi.reshape(stat))
        outs += [mean, inv]
    return outs


@_rule("InstanceNormalization", "GroupNormalization")
def _instancenorm_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    x = ctx.iv(node.inputs[0])
    shape = x.shape
    N, C = shape[0], shape[1]
    groups = C if node.op_type == "InstanceNormalization" else int(node.attr("num_groups"))
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    lo, hi, why, _, _ = _normalized(x.lo.reshape(N * groups, -1), x.hi.reshape(N * groups, -1), eps, ctx.prec)
    y = Interval(lo.reshape(shape), hi.reshape(shape))
    scale, bias = ctx.iv(node.inputs[1]), ctx.iv(node.inputs[2])
    if scale.lo.size != C:  # GroupNormalization-18: per group
        scale = Interval(np.repeat(scale.lo, C // groups), np.repeat(scale.hi, C // groups))
        bias = Interval(np.repeat(bias.lo, C // groups), np.repeat(bias.hi, C // groups))
    cshape = [1, C] + [1] * (len(shape) - 2)
    scale = Interval(scale.lo.reshape(cshape), scale.hi.reshape(cshape))
    bias = Interval(bias.lo.reshape(cshape), bias.hi.reshape(cshape))
    if why:
        ctx.partial = f"op {node.op_type}: {why}"
    return [_affine(ctx, y, scale, bias)]


@_rule("LRN")
def _lrn_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """y_c = x_c·g with g = d_c^(-β) ∈ [d_max^(-β), k^(-β)] (d_c = k + a·S_c ≥ k, a = alpha/size, S_c the window's
    Σ x² ≤ Σ max(lo², hi²)), and y_c has the sign of x_c. Rounding: onnxruntime keeps a running window sum (adds the
    head channel, subtracts the tail, Caffe's scheme), so d's error is absolute, up to γ_{2C+size+8}·(k + a·Σ_all
    max(lo², hi²)) (doubled); positions where that could reach k, or x² could overflow, are unbounded. pow and
    the division are widened by (β + 2)·δ relative."""
    x = ctx.iv(node.inputs[0])
    size_attr = node.attr("size")
    if size_attr is None or int(size_attr) < 1 or len(x.shape) < 2:
        raise _NoRule("LRN needs a positive 'size' and an N×C×... input")
    size = int(size_attr)
    alpha = float(node.attr("alpha", np.float32(1e-4)))
    beta = float(node.attr("beta", np.float32(0.75)))
    k = float(node.attr("bias", np.float32(1.0)))
    if not (k > 0 and beta >= 0 and alpha >= 0):
        raise _NoRule(f"LRN with bias={k:g}, beta={beta:g}, alpha={alpha:g}: no range rule")
    a = alpha / size
    channels = x.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        m2 = np.maximum(x.lo * x.lo, x.hi * x.hi)
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        window = np.zeros_like(m2)
        for off in range(-before, after + 1):  # the window of c is c - before .. c + after (clipped)
            lo_c, hi_c = max(0, -off), min(channels, channels - off)
            if hi_c > lo_c:
                window[:, lo_c:hi_c] += m2[:, lo_c + off:hi_c + off]
        total = np.sum(m2, axis=1, keepdims=True)
        err = 2.0 * ctx.prec.gamma(2 * channels + size + 8) * (k + a * total)
        d_low = k - err
        bad = ~(d_low > 0) | ~(total <= 0.5 * ctx.prec.max)
        g_max = np.where(bad, 1.0, d_low) ** -beta
        g_min = (k + a * window + err) ** -beta
        g_min = np.where(np.isfinite(g_min), g_min, 0.0)
        lo = np.where(x.lo >= 0, x.lo * g_min, x.lo * g_max)
        hi = np.where(x.hi <= 0, x.hi * g_min, x.hi * g_max)
    out = _widen(lo, hi, ctx.prec, (beta + 2.0) * ctx.prec.delta)
    if bad.any():
        ctx.partial = ("op LRN: the running window sum's rounding could reach the bias, or x² overflow "
                       f"({ctx.prec.name})")
        full = np.broadcast_to(bad, out.lo.shape)
        out = Interval(np.where(full, -_INF, out.lo), np.where(full, _INF, out.hi))
    return [out]


# ----------------------------------------------------------------------------------------------------
# types, comparisons, shapes

_INT_RANGES = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767), 6: (-(2**31), 2**31 - 1),
               7: (-(2**63), 2**63 - 1), 12: (0, 2**32 - 1), 13: (0, 2**64 - 1)}
_FLOAT_TO = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
_ONNX_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
               "float16": 10, "float64": 11, "uint32": 12, "uint64": 13, "bfloat16": 16}


def _to_bool(x: Interval) -> Interval:
    true = (x.lo > 0) | (x.hi < 0)
    false = (x.lo == 0) & (x.hi == 0)
    return Interval(np.where(true, 1.0, 0.0), np.where(false, 0.0, 1.0))


@_rule("Cast", "CastLike")
def _cast_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    x = ctx.iv(node.inputs[0])
    if node.op_type == "CastLike":
        to = _ONNX_TYPES.get(ctx.graph.dtypes.get(node.inputs[1], ""), 0)
    else:
        to = int(node.attr("to", 0))
    src = ctx.graph.dtypes.get(node.inputs[0], "float32")
    if to == 9:
        return [_to_bool(x)]
    if to in _FLOAT_TO:
        target = _PRECISIONS[_FLOAT_TO[to]]
        if to == 11 or src == _FLOAT_TO[to] or src in ("bool", "uint8", "int8"):  # exact in every float type
            return [_finish(x.lo, x.hi, target)]
        return [_widen(x.lo, x.hi, target, 2.0 * target.u)]  # one rounding to the target type
    if to in _INT_RANGES:
        lo, hi = np.trunc(x.lo), np.trunc(x.hi)  # toward zero, like the runtime (monotone)
        low, high = _INT_RANGES[to]
        out_of_range = (lo < low) | (hi > high) | ~np.isfinite(lo) | ~np.isfinite(hi)
        if out_of_range.any():
            ctx.partial = "op Cast: values outside the integer type's range"
        return [Interval(np.where(out_of_range, -_INF, lo), np.where(out_of_range, _INF, hi))]
    raise _NoRule(f"Cast to type {to}: no range rule")


@_rule("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
def _compare_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    a, b = ctx.iv(node.inputs[0]), ctx.iv(node.inputs[1])
    op = node.op_type
    if op in ("Greater", "GreaterOrEqual"):
        a, b, op = b, a, op.replace("Greater", "Less")
    if op == "Less":
        true, false = a.hi < b.lo, a.lo >= b.hi
    elif op == "LessOrEqual":
        true, false = a.hi <= b.lo, a.lo > b.hi
    else:
        true = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
        false = (a.hi < b.lo) | (b.hi < a.lo)
    return [Interval(np.where(true, 1.0, 0.0), np.where(false, 0.0, 1.0))]


@_rule("Not", "And", "Or", "Xor")
def _logic_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    ivs = [_to_bool(ctx.iv(n)) for n in node.inputs if n]
    if node.op_type == "Not":
        return [Interval(1.0 - ivs[0].hi, 1.0 - ivs[0].lo)]
    a, b = ivs
    if node.op_type == "And":
        return [Interval(np.minimum(a.lo, b.lo), np.minimum(a.hi, b.hi))]
    if node.op_type == "Or":
        return [Interval(np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi))]
    exact = (a.lo == a.hi) & (b.lo == b.hi)
    v = np.abs(a.lo - b.lo)
    return [Interval(np.where(exact, v, 0.0), np.where(exact, v, 1.0))]


@_rule("ArgMax", "ArgMin")
def _arg_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    x = ctx.iv(node.inputs[0])
    axis = te._axis(int(node.attr("axis", 0)), len(x.shape))
    out_shape = ctx.graph.shapes[node.outputs[0]]
    return [Interval(np.zeros(out_shape), np.full(out_shape, float(x.shape[axis] - 1)))]


@_rule("Shape", "Size")
def _shape_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    shape = ctx.graph.shapes.get(node.inputs[0])
    if shape is None:
        raise _NoRule("the input's shape is unknown")
    if node.op_type == "Size":
        return [Interval.point(float(np.prod(shape)))]
    start, end = int(node.attr("start", 0)), node.attr("end")
    return [Interval.point(np.array(list(shape)[slice(start, None if end is None else int(end))], dtype=float))]


@_rule("ConstantOfShape")
def _constant_of_shape_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    shape = [int(v) for v in np.asarray(ctx.need_exact(node, 0, "shape")).reshape(-1)]
    value = np.asarray(node.attr("value", np.zeros(1, dtype=np.float32))).reshape(-1)
    return [Interval.point(np.full(shape, float(value[0]) if value.size else 0.0))]


@_rule("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")
def _reduce_composed_rule(node: Node, ctx: _Ctx) -> list[Interval | None]:
    """Monotone in |x| (L1, L2, sum of squares: a sum of nonnegative terms, relative error γ_n) or in x
    (log-sum-exp): the reduction run on the bounds."""
    x = ctx.iv(node.inputs[0])
    op = node.op_type
    if op == "ReduceLogSumExp":
        lo_in, hi_in, base = x.lo, x.hi, op
    else:
        lo_in, hi_in = _square(x) if op != "ReduceL1" else _image(np.abs, x, ((0.0, 0.0),))
        base = "ReduceSum"
    red = Node(node.name, base, node.inputs, node.outputs, node.attrs, node.domain)
    lo, hi = _run_op(red, ctx, {0: lo_in})[0], _run_op(red, ctx, {0: hi_in})[0]
    n = max(1, int(np.prod(x.shape)) // max(1, lo.size))
    g = 2.0 * ctx.prec.gamma(n + 4)
    if op == "ReduceLogSumExp":
        return [ctx.widen(lo, hi, 1.0 + math.log(n) + g)]
    out = _widen(lo, hi, ctx.prec, ctx.prec.delta + g)
    if op == "ReduceL2":
        with np.errstate(invalid="ignore"):
            out = ctx.widen(np.sqrt(np.maximum(out.lo, 0.0)), np.sqrt(out.hi))
    return [Interval(np.maximum(out.lo, 0.0), out.hi)]
