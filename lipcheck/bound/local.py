"""Local Lipschitz bounds on an input region: the same composition as the global bound, with per-op constants that
use the value ranges every tensor can take over the region (:mod:`lipcheck.bound.ranges`).

If every input lies in a box B, every tensor t lies in an interval box R_t (sound interval propagation), and for
x, y ∈ B the segment between them stays in B (a box is convex), so every op only ever sees inputs in its ranges:
‖op(a) − op(b)‖ ≤ L_op(R)·‖a − b‖ with L_op(R) = sup over R of ‖J_op‖. Composing these local constants over the graph
exactly as the walker composes global ones (sums, root of sums of squares, products rounded up) bounds
‖f(x) − f(y)‖ ≤ L_local·‖x − y‖ for x, y ∈ B.

Local constants (each an upper bound on sup ‖J_op‖ over the op's input ranges, rounded up):

- element-wise activations: max over elements of sup |φ'| on [lo, hi] (Relu: 0 where hi ≤ 0; Sigmoid / Tanh / Erf
  at the point of the interval nearest 0; Softplus σ(hi); Exp e^hi; Log 1/lo, Sqrt 1/(2√lo), Reciprocal 1/min|x|²
  only when the range is away from 0, else unbounded with the range named; Pow by a constant; Elu, HardSigmoid,
  Clip, LeakyRelu, PRelu);
- Softmax: ‖diag(p) − ppᵀ‖₂ ≤ max p, from the output's range (≤ 1/2 as globally);
- Mul / Div of two input-dependent tensors: x'y' − xy = y'(x' − x) + x(y' − y), so the gains are max|y| and max|x|
  (Div: max 1/|y| and max |x|/y², the divisor's range away from 0), times √(broadcast copies);
- MatMul of two input-dependent tensors (attention's Q·Kᵀ, A·V): ‖ΔX·Y + X·ΔY‖_F ≤ ‖Y‖₂‖ΔX‖_F + ‖X‖₂‖ΔY‖_F and
  ‖Y‖₂ ≤ σ_max(M_Y) for the entrywise bound M_Y = max(|lo|, |hi|) (a nonnegative matrix dominating |Y|), per batch
  slice;
- every other op: its global constant (the walker's), which holds everywhere.

An op whose local constant is infinite on the region (Log of a range reaching 0, Div by a range containing 0) keeps
the bound unbounded with that reason, never clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipcheck.bound.walker import INF, WalkResult, _combine, mul_up
from lipcheck.ir.graph import Graph, Node
from lipcheck.norms.margin import EPS64
from lipcheck.report.model import Unbounded
from lipcheck.rules.registry import NoGlobalConstant, OpBound, broadcast_copies

UP = 1.0 + 1e-12  # covers the rounding of the closed forms below (a few float64 operations each)


@dataclass
class LocalResult:
    value: float  # certified bound on the region (inf: unbounded there)
    unbounded: list[Unbounded] = field(default_factory=list)
    # node name -> (op, global constant or None, local constant, rule): the ops whose constant the region changed
    changed: list[dict[str, Any]] = field(default_factory=list)


class _Ranges:
    """Access to the propagated intervals: ``lo``/``hi`` of a tensor, or None when it has no finite range."""

    def __init__(self, intervals: Mapping[str, Any]) -> None:
        self.intervals = intervals

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        iv = self.intervals.get(name)
        if iv is None:
            return None
        lo, hi = np.asarray(iv.lo, dtype=np.float64), np.asarray(iv.hi, dtype=np.float64)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return None
        return lo, hi

    def raw(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        iv = self.intervals.get(name)
        if iv is None:
            return None
        return np.asarray(iv.lo, dtype=np.float64), np.asarray(iv.hi, dtype=np.float64)


LocalRule = Callable[[Node, Graph, _Ranges], OpBound | None]
_LOCAL: dict[str, LocalRule] = {}
_CAPTURE: dict[str, np.ndarray] | None = None  # set by element_slopes: _elementwise leaves its slopes there
# element-wise ops whose per-element slope bound can be folded into the next matrix (a secant slope s_i of φ on a
# segment inside the region has |s_i| ≤ sup|φ'| on the element's range)
_FOLDABLE = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Erf", "Softplus", "Elu", "HardSigmoid", "Clip")


def _local(*ops: str) -> Callable[[LocalRule], LocalRule]:
    def deco(fn: LocalRule) -> LocalRule:
        for op in ops:
            _LOCAL[op] = fn
        return fn

    return deco


def _var(node: Node, graph: Graph) -> list[int]:
    return [i for i, name in enumerate(node.inputs) if name and not graph.is_const(name)]


def _elementwise(node: Node, graph: Graph, sup: Callable[[np.ndarray, np.ndarray], np.ndarray], what: str,
                 ranges: _Ranges, *, raw: bool = False) -> OpBound | None:
    """A one-variable-input element-wise op: gain = max over elements of sup |φ'| on [lo, hi]."""
    if _var(node, graph) != [0]:
        return None
    r = ranges.raw(node.inputs[0]) if raw else ranges.get(node.inputs[0])
    if r is None:
        return None
    lo, hi = r
    if lo.size == 0:
        return OpBound(gains={0: 0.0}, rule=f"{what} (local, empty)")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        values = sup(lo, hi)
    if _CAPTURE is not None:
        _CAPTURE["slopes"] = np.asarray(values, dtype=np.float64)
    gain = float(np.max(values))
    if math.isnan(gain):
        raise NoGlobalConstant(f"{node.op_type}: no local constant on its input range")
    if math.isinf(gain):
        raise NoGlobalConstant(f"{node.op_type}: unbounded derivative on its input range "
                               f"[{float(np.min(lo)):.4g}, {float(np.max(hi)):.4g}]")
    return OpBound(gains={0: gain * UP if gain > 0 else 0.0}, rule=f"{what} (local)")


def _nearest_zero(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip(0.0, lo, hi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@_local("Relu")
def _relu(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: (hi > 0).astype(float), "Relu: 0 where the input is ≤ 0",
                        ranges, raw=True)


@_local("LeakyRelu")
def _leaky(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    a = abs(float(node.attr("alpha", np.float32(0.01))))
    return _elementwise(node, graph, lambda lo, hi: np.maximum((hi > 0) * 1.0, (lo < 0) * a),
                        f"LeakyRelu: 1 / |alpha| by sign, alpha={a:g}", ranges, raw=True)


@_local("PRelu")
def _prelu(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    slope = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    r = ranges.raw(node.inputs[0])
    if slope is None or r is None:
        return None
    try:
        s = np.broadcast_to(np.abs(np.asarray(slope, dtype=np.float64)), r[0].shape)
    except ValueError:
        return None
    return _elementwise(node, graph, lambda lo, hi: np.maximum((hi > 0) * 1.0, (lo < 0) * s),
                        "PRelu: 1 / |slope| by sign", ranges, raw=True)


@_local("Sigmoid")
def _sig(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    def sup(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        s = _sigmoid(_nearest_zero(lo, hi))
        return s * (1.0 - s)

    return _elementwise(node, graph, sup, "Sigmoid: σ' at the point nearest 0", ranges, raw=True)


@_local("Tanh")
def _tanh(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: 1.0 - np.tanh(_nearest_zero(lo, hi)) ** 2,
                        "Tanh: 1 − tanh² at the point nearest 0", ranges, raw=True)


@_local("Erf")
def _erf(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: 2.0 / math.sqrt(math.pi) * np.exp(-_nearest_zero(lo, hi) ** 2),
                        "Erf: 2/√π·exp(−x²) at the point nearest 0", ranges, raw=True)


@_local("Softplus")
def _softplus(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: _sigmoid(hi), "Softplus: σ(hi)", ranges, raw=True)


@_local("Exp")
def _exp(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: np.exp(hi), "Exp: e^hi", ranges, raw=True)


@_local("Log")
def _log(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: np.where(lo > 0, 1.0 / lo, np.inf), "Log: 1/lo", ranges,
                        raw=True)


@_local("Sqrt")
def _sqrt(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    return _elementwise(node, graph, lambda lo, hi: np.where(lo > 0, 0.5 / np.sqrt(lo), np.inf), "Sqrt: 1/(2√lo)",
                        ranges, raw=True)


@_local("Reciprocal")
def _reciprocal(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    def sup(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        away = (lo > 0) | (hi < 0)
        m = np.minimum(np.abs(lo), np.abs(hi))
        return np.where(away, 1.0 / (m * m), np.inf)

    return _elementwise(node, graph, sup, "Reciprocal: 1/min|x|²", ranges, raw=True)


@_local("Elu")
def _elu(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    a = float(node.attr("alpha", 1.0))
    if a < 0:
        return None
    return _elementwise(node, graph, lambda lo, hi: np.maximum((hi > 0) * 1.0, (lo < 0) * a * np.exp(np.minimum(hi, 0))),
                        f"Elu: 1 / alpha·e^x, alpha={a:g}", ranges, raw=True)


@_local("HardSigmoid")
def _hard_sigmoid(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    a, b = float(node.attr("alpha", np.float32(0.2))), float(node.attr("beta", np.float32(0.5)))
    if a == 0:
        return None
    x0, x1 = sorted(((0.0 - b) / a, (1.0 - b) / a))
    return _elementwise(node, graph, lambda lo, hi: ((hi > x0) & (lo < x1)) * abs(a),
                        f"HardSigmoid: |alpha| on its linear part, alpha={a:g}", ranges, raw=True)


@_local("Clip")
def _clip(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    bounds = []
    for k in (1, 2):
        name = node.inputs[k] if len(node.inputs) > k else ""
        if name and not graph.is_const(name):
            return None
        c = graph.constants.get(name) if name else None
        bounds.append(None if c is None else float(np.asarray(c)))
    low = -np.inf if bounds[0] is None else bounds[0]
    high = np.inf if bounds[1] is None else bounds[1]
    return _elementwise(node, graph, lambda lo, hi: ((hi > low) & (lo < high)) * 1.0, "Clip: 1 on (min, max)",
                        ranges, raw=True)


@_local("Pow")
def _pow(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    if _var(node, graph) != [0]:
        return None
    e = graph.constants.get(node.inputs[1])
    if e is None or np.size(e) != 1:
        return None
    p = float(np.asarray(e).reshape(()))

    def sup(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        m = np.maximum(np.abs(lo), np.abs(hi))
        if p == 0:
            return np.zeros_like(lo)
        if p >= 1:
            return abs(p) * m ** (p - 1)
        # p < 1: |p|·x^(p−1) is decreasing in x > 0: its sup is at lo, finite only when lo > 0
        return np.where(lo > 0, abs(p) * np.where(lo > 0, lo, 1.0) ** (p - 1), np.inf)

    if p >= 1 and not float(p).is_integer():
        # a fractional power above 1 of a negative number is NaN: only for nonnegative ranges
        r = ranges.raw(node.inputs[0])
        if r is None or np.any(r[0] < 0):
            return None
    return _elementwise(node, graph, sup, f"Pow: |p|·|x|^(p−1), p={p:g}", ranges, raw=True)


@_local("Softmax")
def _softmax(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    if _var(node, graph) != [0]:
        return None
    out = ranges.raw(node.outputs[0])
    if out is None:
        return None
    top = float(np.max(out[1])) if out[1].size else 0.0
    if not math.isfinite(top):
        return None
    gain = min(0.5, top * UP)
    return OpBound(gains={0: gain}, rule=f"Softmax: max p ≤ {gain:.4g} on the region (local)")


@_local("LSTM")
def _lstm(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    """The LSTM rule of :mod:`lipcheck.rules.recurrent` with C_0 = max|c_0| over the initial cell state's range
    (the forget gate multiplies c_0: only its range makes the product Lipschitz). Unchanged when c_0 is not an
    input (the global rule already applies)."""
    from lipcheck.rules.recurrent import lstm_bound

    return _recurrent_local(node, graph, ranges, 6, "cell state", lstm_bound)


@_local("GRU")
def _gru(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    """The GRU rule of :mod:`lipcheck.rules.recurrent` with max|h_0| over the initial hidden state's range."""
    from lipcheck.rules.recurrent import gru_bound

    return _recurrent_local(node, graph, ranges, 5, "hidden state", gru_bound)


def _recurrent_local(node: Node, graph: Graph, ranges: _Ranges, index: int, what: str,
                     rule: Callable[..., OpBound]) -> OpBound | None:
    """A recurrent op's rule with max|s_0| of the initial state at input ``index`` taken over its range (None when
    that state is not an input: the global rule applies)."""
    from lipcheck.rules.registry import RuleContext

    state = node.inputs[index] if len(node.inputs) > index else ""
    if not state or graph.is_const(state):
        return None
    r = ranges.get(state)
    if r is None:
        raise NoGlobalConstant(f"{node.op_type} initial {what} {state!r} has no finite range on the region")
    bound = rule(node, RuleContext(graph), float(max(np.max(np.abs(r[0])), np.max(np.abs(r[1])))) if r[0].size
                 else 0.0)
    return OpBound(gains=bound.gains, rule=bound.rule + " (local)", combine=bound.combine)


@_local("LayerNormalization")
def _layer_norm(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    """y = γ(x − μ)/√(var + eps) + β over the last axes: J = (γ/σ)(I − 11ᵀ/n − ŷŷᵀ/n) with ŷ ⊥ 1, ‖ŷ‖² ≤ n, so
    ‖J‖ ≤ max|γ|/√(var + eps); var is bounded below over the region by interval arithmetic on x − μ (every point
    of a segment between two points of the box is in the box)."""
    from lipcheck.bound.ranges import _PRECISIONS, _normalized

    if _var(node, graph) != [0]:
        return None
    r = ranges.get(node.inputs[0])
    scale = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    if r is None or scale is None or r[0].ndim == 0:
        return None
    shape = r[0].shape
    axis = int(node.attr("axis", -1)) % len(shape)
    lead = int(np.prod(shape[:axis], dtype=np.int64))
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    # the exact function's variance: float64 rounding of our own sums only
    *_, low, _ = _normalized(r[0].reshape(lead, -1), r[1].reshape(lead, -1), eps, _PRECISIONS["float64"])
    if lead == 0:
        return None
    least = float(np.min(low))
    if not least > 0:
        return None
    gamma = float(np.max(np.abs(np.asarray(scale, dtype=np.float64)))) if np.size(scale) else 0.0
    gain = gamma / math.sqrt(least) * UP
    return OpBound(gains={0: gain}, rule=f"LayerNormalization: max|γ|/√(var_min + eps) = {gain:.4g} (local)")


def _copies(graph: Graph, name: str, out: str) -> float:
    return math.sqrt(broadcast_copies(tuple(graph.shapes.get(name, ())), tuple(graph.shapes.get(out, ()))))


@_local("Mul", "Div")
def _mul_div(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    var = _var(node, graph)
    if var != [0, 1]:
        return None  # a product with a constant: the global rule is exact
    rx, ry = ranges.get(node.inputs[0]), ranges.get(node.inputs[1])
    if rx is None or ry is None:
        return None
    out = node.outputs[0]
    mx = float(np.max(np.maximum(np.abs(rx[0]), np.abs(rx[1])))) if rx[0].size else 0.0
    my = float(np.max(np.maximum(np.abs(ry[0]), np.abs(ry[1])))) if ry[0].size else 0.0
    cx, cy = _copies(graph, node.inputs[0], out), _copies(graph, node.inputs[1], out)
    if node.op_type == "Mul":
        gains = {0: my * cx * UP, 1: mx * cy * UP}
        return OpBound(gains=gains, combine="sum", rule="Mul of two tensors: max|y|, max|x| (local)")
    lo, hi = ry
    if not (np.all(lo > 0) or np.all(hi < 0)) or lo.size == 0:
        raise NoGlobalConstant(f"Div: the divisor's range [{float(np.min(lo)):.4g}, {float(np.max(hi)):.4g}] "
                               "reaches 0 on the region")
    inv = float(np.max(1.0 / np.minimum(np.abs(lo), np.abs(hi))))
    gains = {0: inv * cx * UP, 1: mx * inv * inv * cy * UP}
    return OpBound(gains=gains, combine="sum", rule="Div by a tensor: max 1/|y|, max|x|/y² (local)")


def _sigma_upper(m: np.ndarray) -> float:
    """An upper bound on σ_max of the nonnegative matrix ``m`` (SVD plus its backward-error bound)."""
    if m.size == 0:
        return 0.0
    s = float(np.linalg.norm(m, 2))
    return (s + 4.0 * max(m.shape) * EPS64 * float(np.linalg.norm(m))) * UP


@_local("MatMul")
def _matmul(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    if _var(node, graph) != [0, 1]:
        return None
    ra, rb = ranges.get(node.inputs[0]), ranges.get(node.inputs[1])
    if ra is None or rb is None or ra[0].ndim < 2 or rb[0].ndim < 2:
        return None
    ma = np.maximum(np.abs(ra[0]), np.abs(ra[1]))
    mb = np.maximum(np.abs(rb[0]), np.abs(rb[1]))
    out = node.outputs[0]

    def batch_sigma(m: np.ndarray) -> float:
        flat = m.reshape((-1,) + m.shape[-2:])
        return max((_sigma_upper(s) for s in flat), default=0.0)

    # a batch slice of one operand broadcast over the other's batch is used several times: √copies
    ca = math.sqrt(broadcast_copies(ma.shape[:-2], np.broadcast_shapes(ma.shape[:-2], mb.shape[:-2])))
    cb = math.sqrt(broadcast_copies(mb.shape[:-2], np.broadcast_shapes(ma.shape[:-2], mb.shape[:-2])))
    del out
    gains = {0: batch_sigma(mb) * ca * UP, 1: batch_sigma(ma) * cb * UP}
    return OpBound(gains=gains, combine="sum", rule="MatMul of two tensors: σ(max|Y|), σ(max|X|) (local)")


def element_slopes(node: Node, graph: Graph, ranges: _Ranges) -> np.ndarray | None:
    """Per-element bounds on |φ'| over the node's input range (the array its local rule maxes), or None."""
    global _CAPTURE
    if node.op_type not in _FOLDABLE:
        return None
    _CAPTURE = {}
    try:
        try:
            local_rule(node, graph, ranges)
        except NoGlobalConstant:
            return None
        return _CAPTURE.get("slopes")
    finally:
        _CAPTURE = None


def _folded_matrix(node: Node, graph: Graph) -> np.ndarray | None:
    """The k×m matrix B with output = x·B (+ bias) for a Gemm (no transA) or a MatMul with a constant 2-D right
    operand; None for anything else."""
    if node.op_type == "Gemm":
        if node.attr("transA", 0) or not graph.is_const(node.inputs[1]):
            return None
        b = np.asarray(graph.constants[node.inputs[1]], dtype=np.float64)
        if b.ndim != 2:
            return None
        b = b.T if node.attr("transB", 0) else b
        return float(node.attr("alpha", 1.0)) * b
    if node.op_type == "MatMul" and not graph.is_const(node.inputs[0]) and graph.is_const(node.inputs[1]):
        b = np.asarray(graph.constants[node.inputs[1]], dtype=np.float64)
        return b if b.ndim == 2 else None
    return None


DENSE_FOLD_ENTRIES = 2**21  # a conv is folded with its activation's slopes when its dense matrix is at most this


def _conv_fold(act: Node, conv: Node, graph: Graph, ranges: _Ranges, walked: WalkResult,
               dense: dict[str, Any]) -> tuple[str, float, str] | None:
    """σ(A·diag(d)) for a conv A small enough to materialize (with its entrywise error bound E: ‖(A − Â)·diag(d)‖ ≤
    ‖E·diag(d)‖ ≤ √(‖·‖₁‖·‖∞)), d the activation's per-element slope bounds; None when it does not pay."""
    from lipcheck.bound.methods.linear import DenseOperator, error_norm, materialize

    if conv.name not in dense:
        dense[conv.name] = materialize(graph, [conv], conv.inputs[0], conv.outputs[0], DENSE_FOLD_ENTRIES)
    op = dense[conv.name]
    if not isinstance(op, DenseOperator):
        return None
    d = element_slopes(act, graph, ranges)
    if d is None or d.size != op.matrix.shape[1]:
        return None
    d_flat = d.reshape(-1)
    gain = _sigma_upper(op.matrix * d_flat[None, :])
    gain = gain + error_norm(op.error * d_flat[None, :]) if np.any(op.error) else gain
    gain *= UP
    entry = walked.bounds.get(conv.name)
    unfolded = float(np.max(d_flat)) * (entry[0].gains.get(0, INF) if entry is not None else INF)
    if not gain < unfolded:
        return None
    return conv.name, gain, f"{act.op_type} folded into {conv.name}: σ(A·diag(sup|φ'|)) of the dense conv (local)"


def _folds(graph: Graph, ranges: _Ranges, walked: WalkResult,
           dense: dict[str, Any] | None = None) -> dict[str, tuple[str, float, str]]:
    """activation node -> (its linear consumer, σ(diag(d)·B) rounded up, rule): where an element-wise activation's
    only consumer is a matrix layer, ‖B(φ(a) − φ(b))‖ = ‖diag(s)B‖-weighted with |s| ≤ d, so the pair's constant is
    σ(diag(d)·B) ≤ σ(B)·max d (the restricted weight matrix: stable inactive ReLUs drop their rows)."""
    consumers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.outputs}
    folds: dict[str, tuple[str, float, str]] = {}
    dense = {} if dense is None else dense
    for node in graph.nodes:
        if node.op_type not in _FOLDABLE or len(node.outputs) != 1 or node.outputs[0] in outputs:
            continue
        users = consumers.get(node.outputs[0], [])
        if len(users) != 1:
            continue
        nxt = users[0]
        if nxt.op_type in ("Conv", "ConvTranspose") and nxt.inputs[0] == node.outputs[0]:
            fold = _conv_fold(node, nxt, graph, ranges, walked, dense)
            if fold is not None:
                folds[node.name] = fold
            continue
        b = _folded_matrix(nxt, graph)
        if b is None or nxt.inputs[0] != node.outputs[0]:
            continue
        d = element_slopes(node, graph, ranges)
        if d is None or d.ndim == 0 or d.shape[-1] != b.shape[0]:
            continue
        d_vec = np.max(d.reshape(-1, d.shape[-1]), axis=0)  # every row of a batch meets the same B
        gain = _sigma_upper(d_vec[:, None] * b)
        entry = walked.bounds.get(nxt.name)
        unfolded = float(np.max(d_vec)) * (entry[0].gains.get(0, INF) if entry is not None else INF)
        if gain < unfolded:  # only where the restriction pays
            folds[node.name] = (nxt.name, gain, f"{node.op_type} folded into {nxt.name}: σ(diag(sup|φ'|)·W) (local)")
    return folds


def local_rule(node: Node, graph: Graph, ranges: _Ranges) -> OpBound | None:
    """The local bound of ``node`` on the ranges, None when the global one is used (raises NoGlobalConstant when
    the op is unbounded on the region)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    rule = _LOCAL.get(node.op_type)
    return None if rule is None else rule(node, graph, ranges)


def _unbounded_range(node: Node, var: Sequence[int], ranges: _Ranges) -> str | None:
    """Which input of ``node`` has no finite range on the region (interval arithmetic overflowed or reached a
    singular point upstream), e.g. "input 'h' has range [-inf, 3.9e+30] on the region"; None when all are finite."""
    for i in var:
        name = node.inputs[i]
        raw = ranges.raw(name)
        if raw is None:
            return f"input {name!r} has no range on the region"
        lo, hi = raw
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return (f"input {name!r} has range [{float(np.min(lo)):.3g}, {float(np.max(hi)):.3g}] on the region "
                    "(its interval is not finite)")
    return None


def local_bound(graph: Graph, walked: WalkResult, intervals: Mapping[str, Any],
                dense: dict[str, Any] | None = None) -> LocalResult:
    """Compose the local constants (module docstring) over the graph, reusing the walker's global bounds for every
    other op (weighted layers are not recomputed)."""
    ranges = _Ranges(intervals)
    env: dict[str, float] = {i.name: 1.0 if i.is_float else 0.0 for i in graph.inputs}
    globally_unbounded = {u.node: u for u in walked.unbounded}
    folds = _folds(graph, ranges, walked, dense)
    folded_into = {target: (act, gain, rule) for act, (target, gain, rule) in folds.items()}
    result = LocalResult(INF)
    for node in graph.nodes:
        var = _var(node, graph)
        live = [i for i in var if env.get(node.inputs[i], INF) > 0]
        if not live:
            value = 0.0
        else:
            reason = None
            bound = None
            try:
                if node.name in folds:  # its slopes are in the next layer's constant
                    bound = OpBound(gains={live[0]: 1.0}, rule=f"folded into {folds[node.name][0]} (local)")
                elif node.name in folded_into:
                    _, gain, rule = folded_into[node.name]
                    bound = OpBound(gains={i: gain for i in live}, rule=rule)
                else:
                    bound = local_rule(node, graph, ranges)
            except NoGlobalConstant as exc:
                bound, reason = None, str(exc)
            except Exception:  # noqa: BLE001 - a local rule that fails: the global constant (sound) is used
                if node.name in folds or node.name in folded_into:
                    raise
                bound, reason = None, None
            entry = walked.bounds.get(node.name)
            folded = node.name in folds or node.name in folded_into  # their gains hold only as a pair
            if bound is not None and entry is not None and not folded:
                # keep the smaller of the local and the global gain per input (both hold on the region)
                g_bound, _ = entry
                gains = {i: min(bound.gains.get(i, INF), g_bound.gains.get(i, INF)) for i in live}
                if bound.combine != g_bound.combine:
                    gains = dict(bound.gains)
                bound = OpBound(gains=gains, rule=bound.rule, combine=bound.combine)
            if bound is None and entry is not None:
                bound = entry[0]  # the global constant holds everywhere, the region included
            if bound is None or any(i not in bound.gains for i in live):
                why = reason or (globally_unbounded[node.name].reason if node.name in globally_unbounded
                                 else "no constant")
                if reason is None and node.op_type in _LOCAL:
                    # a local rule exists but found no finite input range to work with: say so first
                    wide = _unbounded_range(node, var, ranges)
                    if wide is not None:
                        why = f"{wide}; without a finite range, the global reason: {why}"
                result.unbounded.append(Unbounded(node.name, node.op_type, why))
                value = INF
            else:
                value = _combine([mul_up(bound.gains[i], env.get(node.inputs[i], INF)) for i in live], bound.combine)
                old = entry[0] if entry is not None else None
                if old is None or any(bound.gains.get(i) != old.gains.get(i) for i in live):
                    local_gain = max(bound.gains[i] for i in live)
                    global_gain = max(old.gains[i] for i in live) if old is not None else None
                    if global_gain is None or local_gain < global_gain:
                        result.changed.append({"node": node.name, "op": node.op_type, "global": global_gain,
                                               "local": local_gain, "rule": bound.rule})
        for o in node.outputs:
            if o:
                env[o] = value
    result.value = walked.output_bound(graph, env)
    return result


# the restricted chain's multiplier search (L-BFGS iterations; reproducible): one region is worth a long search, each
# of many points a short one (weight_norm.onnx, a 768-input CNN: 3 iterations 2.3 s a point, 1.36; 30: 12 s, 1.12)
LOCAL_CHAIN_ITERATIONS = 100
POINT_CHAIN_ITERATIONS = 3


def local_chain_bound(graph: Graph, intervals: Mapping[str, Any], *, iterations: int = 0,
                      time_limit: float = 60.0, dense: dict[str, Any] | None = None) -> float | None:
    """The lipsdp method on the model's chain restricted to the region: the MLP chain of :func:`find_chain`, or a
    chain of materialized linear pieces (convolutions included) and activations (:func:`_dense_chain`), with the
    activations that are constant on the region dropped and the slope intervals shrunk to the region's slopes
    (:func:`restrict_chain`). Certified like the global method, valid on the region only. None when the model is
    no such chain or nothing is certified. ``iterations`` 0 is ECLipsE-Fast's closed-form multipliers, certified
    (milliseconds on small MLPs); ``dense`` caches the materialized pieces between calls."""
    from lipcheck.bound.methods.chain import find_chain
    from lipcheck.bound.methods.lipsdp import Chain, lipsdp, product_bound

    ranges = _Ranges(intervals)
    found = find_chain(graph, restrict=lambda node: element_slopes(node, graph, ranges))
    if isinstance(found, str):
        chain = _dense_chain(graph, ranges, {} if dense is None else dense)
        if chain is None:
            return None
        factor = 1.0
    else:
        chain, factor = found
    if any(w.size == 0 for w in chain.weights):
        return 0.0  # every path crosses an activation that is constant on the region
    if chain.weights[0].shape[1] + sum(w.shape[0] for w in chain.weights[:-1]) > LOCAL_CHAIN_MAX_ORDER:
        return None
    # a cost cap that does not depend on the clock (an evaluation costs about three eigenproblems per hidden layer)
    cube = float(sum(int(w.shape[0]) ** 3 for w in chain.weights[:-1]))
    evaluations = max(4, int(LOCAL_CHAIN_WORK / max(cube, 1.0)))
    try:
        result = lipsdp(Chain(chain.weights, chain.slopes, chain.errors), iterations=iterations,
                        time_limit=time_limit, max_evaluations=evaluations)
    except (ArithmeticError, ValueError, RuntimeError, MemoryError):
        return None
    # a certified lipsdp value is already ≤ the chain's product (lipsdp compares them)
    value = result.value if result.value is not None else product_bound(chain)
    if not math.isfinite(value):
        return None
    return value * factor * (1.0 + 4.0 * EPS64) if factor != 1.0 and value > 0 else value


LOCAL_CHAIN_MAX_ORDER = 4096  # the restricted chain's LMI order (input size + kept activations)
LOCAL_CHAIN_WORK = 1e10  # Σ over evaluations of Σ (hidden width)³: the multiplier search's cost cap


def _dense_chain(graph: Graph, ranges: _Ranges, cache: dict[str, Any]) -> Any:
    """The model as a chain of materialized linear pieces and activations (the blocks method's decomposition with
    no other kind of piece), restricted to the region; None when it is not one or a piece is too large."""
    from lipcheck.bound.methods.blocks import decompose
    from lipcheck.bound.methods.chain import restrict_chain
    from lipcheck.bound.methods.linear import DenseOperator, materialize
    from lipcheck.bound.methods.lipsdp import Chain

    pieces = decompose(graph)
    if isinstance(pieces, str) or not pieces or any(p.kind not in ("linear", "activation") for p in pieces):
        return None
    weights: list[np.ndarray] = []
    errors: list[np.ndarray | None] = []
    slopes: list[tuple[float, float]] = []
    acts: list[list[Node]] = []
    pending: tuple[float, float] | None = None
    pending_nodes: list[Node] = []
    for piece in pieces:
        if piece.kind == "activation":
            if piece.interval is None:
                return None
            if pending is not None:
                products = [a * b for a in pending for b in piece.interval]
                pending = (min(products), max(products))
            else:
                pending = piece.interval
            pending_nodes.extend(piece.nodes)
            if not weights:
                weights.append(np.eye(int(math.prod(graph.shape(piece.entry)))))
                errors.append(None)
            continue
        key = f"{piece.entry}->{piece.exit}"
        if key not in cache:
            cache[key] = materialize(graph, piece.nodes, piece.entry, piece.exit)
        op = cache[key]
        if not isinstance(op, DenseOperator):
            return None
        if weights:
            slopes.append(pending if pending is not None else (1.0, 1.0))
            acts.append(pending_nodes)
        pending, pending_nodes = None, []
        weights.append(op.matrix)
        errors.append(op.error if np.any(op.error) else None)
    if pending is not None:
        slopes.append(pending)
        acts.append(pending_nodes)
        weights.append(np.eye(weights[-1].shape[0]))
        errors.append(None)
    restrict_chain(weights, errors, slopes, acts, lambda node: element_slopes(node, graph, ranges), rows=False)
    try:
        return Chain(tuple(weights), tuple(slopes), tuple(errors))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------- the lower bound inside


@dataclass(frozen=True)
class RegionLower:
    value: float | None  # max ‖J(x)‖₂ at points inside the region where f is differentiable
    points: int  # points where ‖J(x)‖ was measured
    seconds: float
    note: str | None = None


def region_lower_bound(graph: Graph, box: Mapping[str, tuple[np.ndarray, np.ndarray]], *, seconds: float,
                       seed: int = 0, power_iterations: int = 50, max_steps: int | None = None) -> RegionLower:
    """A true lower bound on the Lipschitz constant of the model restricted to the box: ‖J(x)‖₂ at points strictly
    inside it (a point inside has a neighbourhood in the box, so ‖J(x)‖ is a limit of ratios of pairs in the
    region), drawn uniformly and then around the best point so far (kept inside), for ``seconds``. On nets with
    piecewise-linear activations only points clear of every breakpoint count (J is defined there). ``max_steps``
    caps the steps (the same run on any machine)."""
    import time

    import torch

    from lipcheck.bound.jacobian import Clock, Flat, Linearization, spectral_norm_at
    from lipcheck.bound.regions import clear_of_ties, find_kinks, kink_names
    from lipcheck.bound.torch_eval import TorchEvaluator, unsupported_reason

    start = time.perf_counter()
    bad = [n for n in graph.nodes if unsupported_reason(n, graph) is not None]
    if bad:
        return RegionLower(None, 0, 0.0, f"no lower bound in the region: the torch evaluator cannot run {bad[0].label}")
    evaluator = TorchEvaluator(graph, dtype=torch.float64)
    f = Flat(graph, evaluator)
    if not f.out_index:
        return RegionLower(None, 0, 0.0, "no lower bound in the region: the model has no float output")
    los, his = [], []
    for info, shape in zip(evaluator.float_inputs, f.shapes):
        lo, hi = box[info.name]
        los.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), shape).reshape(-1))
        his.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), shape).reshape(-1))
    lo_all, hi_all = np.concatenate(los), np.concatenate(his)
    width = hi_all - lo_all
    inner_lo, inner_hi = lo_all + 1e-6 * width, hi_all - 1e-6 * width
    kinks = find_kinks(graph)
    keep = kink_names(kinks)
    rng = np.random.default_rng(seed)
    clock = Clock(seconds, margin=min(0.2, 0.05 * seconds), max_steps=max_steps)
    best: float | None = None
    best_x: np.ndarray | None = None
    points = 0
    k = 0
    while not clock.expired():
        if best_x is None or k % 3 == 0:
            x = inner_lo + (inner_hi - inner_lo) * rng.random(f.n)
        else:
            x = np.clip(best_x + 0.05 * width * rng.standard_normal(f.n), inner_lo, inner_hi)
        v0 = rng.standard_normal(f.n)
        if k % 3 == 2:  # an annealed pair ascent from there, kept in the box (the point measured is the real net's)
            x = _box_ascent(f, graph, kinks, x, v0, inner_lo, inner_hi, clock)
        k += 1
        lin = Linearization(f, torch.from_numpy(x), keep=keep)
        spec = spectral_norm_at(lin, torch.from_numpy(v0 / np.linalg.norm(v0)), clock, iterations=power_iterations)
        if spec is None:
            break
        if kinks and not clear_of_ties(kinks, lin.kept):
            continue
        points += 1
        if best is None or spec.sigma > best:
            best, best_x = float(spec.sigma), x
    note = None if points else "no lower bound in the region: the budget ended before a point was measured"
    return RegionLower(best, points, time.perf_counter() - start, note)


def _box_ascent(f: Any, graph: Graph, kinks: Any, x0: np.ndarray, v0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                clock: Any, steps: int = 50) -> np.ndarray:
    """Where a pair ascent on ``log‖f(x + d) − f(x)‖ − log‖d‖`` started at ``x0`` (``d`` along ``v0``) ends, both
    points kept in [lo, hi]: annealed on smoothed stand-ins of the net when it has kinks or max-pools (as the
    global search does, :mod:`lipcheck.bound.smoothing`), plain otherwise. Only a point comes back: the caller
    measures the real net there."""
    import torch

    from lipcheck.bound.lower import _ANNEAL_FACTORS
    from lipcheck.bound.pairs import ascend, rms
    from lipcheck.bound.smoothing import smoothable, smoothed

    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)

    def project(x: torch.Tensor, d: torch.Tensor) -> None:
        torch.clamp(x, lo_t, hi_t, out=x)
        d.copy_(torch.clamp(x + d, lo_t, hi_t) - x)

    nodes = smoothable(graph, kinks)
    x = torch.from_numpy(x0.copy())
    d = torch.from_numpy(1e-3 * float(np.sqrt(np.mean((hi - lo) ** 2))) * v0 / max(np.linalg.norm(v0), 1e-300))
    project(x, d)
    for factor in _ANNEAL_FACTORS if nodes else (None,):
        if clock.expired():
            break
        target = f
        if factor is not None:
            with torch.no_grad():
                _, kept = f.run(x, keep=[item.z for item in nodes])
            target = smoothed(f, graph, nodes, {name: rms(t) for name, t in kept.items()}, factor)
        _, x, d, _ = ascend(target, x, d, steps, clock, project=project)
    return x.detach().numpy().clip(lo, hi)


# ------------------------------------------------------------------------------------------------ the region


def pinned_inputs(domain: Any) -> dict[str, float]:
    """The inputs ``domain`` gives one value (NAME=V,V): integer inputs to bind as constants when the model is
    loaded (:func:`lipcheck.loaders.onnx_loader.load_onnx`), so that Ifs and shapes depending on them fold."""
    entries: dict[str, Any] = {}
    if isinstance(domain, str):
        for item in (x.strip() for x in domain.split(";") if "=" in x):
            name, _, value = item.partition("=")
            entries[name.strip()] = value.split(",")
    elif isinstance(domain, Mapping):
        entries = {k: v for k, v in domain.items() if isinstance(v, (list, tuple, str))}
    pins: dict[str, float] = {}
    for name, value in entries.items():
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            lo, hi = (float(p) for p in parts)
        except (TypeError, ValueError):
            continue  # parse_domain says what is wrong with it
        if lo == hi and math.isfinite(lo):
            pins[name] = lo
    return pins


def parse_domain(domain: Any, graph: Graph, pinned: Any = ()) -> dict[str, tuple[Any, Any]]:
    """Each input's box from ``domain``: a pair (lo, hi) for every float input, a mapping input name -> (lo, hi), or a
    string "LO,HI" / "NAME=LO,HI" (several separated by ";"), as ``--domain`` gives them. From Python, lo and hi may
    also be arrays broadcastable to the input's shape. Integer inputs need their own entry (their values are part
    of the region). Raises UsageError with one line for anything else."""
    from lipcheck.errors import UsageError

    def pair(value: Any, where: str, shape: tuple[int, ...], integer: bool = False) -> tuple[Any, Any]:
        parts = value.split(",") if isinstance(value, str) else (
            list(value) if isinstance(value, (list, tuple)) else [value])
        if len(parts) != 2:
            raise UsageError(f"--domain {where}: expected LO,HI, got {value!r}")
        try:
            lo, hi = (np.asarray(p, dtype=np.float64) if not isinstance(p, str) else np.float64(p) for p in parts)
            lo, hi = np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)
        except (TypeError, ValueError):
            raise UsageError(f"--domain {where}: expected two numbers LO,HI (or arrays of the input's shape {shape}), "
                             f"got {value!r}") from None
        ordered = np.all(lo <= hi) if integer else np.all(lo < hi)  # an integer input may be one value
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or not ordered:
            raise UsageError(f"--domain {where}: expected finite LO < HI, got {float(np.min(lo)):g},"
                             f"{float(np.max(hi)):g}")
        scalar = lo.size > 0 and np.all(lo == lo.flat[0]) and np.all(hi == hi.flat[0])
        return (float(lo.flat[0]), float(hi.flat[0])) if scalar else (np.array(lo), np.array(hi))

    names = [i.name for i in graph.inputs]
    entries: dict[str, Any] = {}
    default: Any = None
    if isinstance(domain, str):
        for item in (x.strip() for x in domain.split(";") if x.strip()):
            if "=" in item:
                name, _, value = item.partition("=")
                entries[name.strip()] = value
            else:
                default = item
    elif isinstance(domain, Mapping):
        entries = dict(domain)
    else:
        default = domain
    entries = {k: v for k, v in entries.items() if k not in pinned}  # constants now
    for name in entries:
        if name not in names:
            raise UsageError(f"--domain {name}=...: the model has no input '{name}' (inputs: {', '.join(names)})")
    box: dict[str, tuple[Any, Any]] = {}
    for info in graph.inputs:
        shape = tuple(info.shape)
        if info.name in entries:
            box[info.name] = pair(entries[info.name], info.name, shape, integer=not info.is_float)
        elif default is not None and info.is_float:
            box[info.name] = pair(default, "", shape)
        elif info.is_float:
            raise UsageError(f"--domain: no range for the float input '{info.name}' (give LO,HI or {info.name}=LO,HI)")
        else:
            raise UsageError(f"--domain: the integer input '{info.name}' needs its own range ({info.name}=LO,HI)")
    return box


def analyze_region(graph: Graph, walked: WalkResult, box: Mapping[str, tuple[Any, Any]], *, lower: bool,
                   lower_seconds: float, seed: int, global_bound: float | None = None,
                   global_method: str | None = None) -> Any:
    """The report's :class:`~lipcheck.report.model.LocalBound` for the box."""
    import time

    from lipcheck.bound.symbolic import symbolic_ranges
    from lipcheck.report.model import LocalBound

    start = time.perf_counter()
    ranges = symbolic_ranges(graph, {k: (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
                                     for k, (lo, hi) in box.items()})
    local = local_bound(graph, walked, ranges.intervals)
    # the global bound (any method's) holds on the region too
    method = "local"
    value = local.value
    chained = local_chain_bound(graph, ranges.intervals, iterations=LOCAL_CHAIN_ITERATIONS)
    if chained is not None and chained < value:
        value, method = chained, "local lipsdp"
    if global_bound is not None and global_bound < value:
        value, method = global_bound, f"global ({global_method or 'product'})"
    value = value if math.isfinite(value) else None
    lb = None
    if lower:
        floats = {i.name for i in graph.float_inputs}
        lb = region_lower_bound(graph, {k: v for k, v in box.items() if k in floats}, seconds=lower_seconds, seed=seed)
    unbounded = tuple(local.unbounded)
    if value is None and not unbounded:
        unbounded = tuple(walked.unbounded)
    return LocalBound(
        region={k: (float(np.min(lo)), float(np.max(hi))) for k, (lo, hi) in box.items()}, upper_bound=value, certified=value is not None,
        lower_bound=lb.value if lb is not None else None, lower_points=lb.points if lb is not None else 0,
        unbounded=unbounded, changed=tuple(local.changed), seconds=time.perf_counter() - start,
        note=lb.note if lb is not None else None, method=method,
    )


# ------------------------------------------------------------------------------------- around given points


def load_points(path: str, graph: Graph) -> np.ndarray:
    """(N, *input shape) float64 points from a .npy / .npz file (.npz: the array named like the input, else the only
    one); a single point may omit the leading N. One float input only. UsageError for anything else."""
    import os

    from lipcheck.errors import UsageError

    floats = graph.float_inputs
    if len(floats) != 1 or len(graph.inputs) != 1:
        raise UsageError("--around needs a model with exactly one input (a float one)")
    shape = tuple(floats[0].shape)
    if not os.path.isfile(path):
        raise UsageError(f"--around {path}: no such file")
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                names = list(data.files)
                pick = floats[0].name if floats[0].name in names else (names[0] if len(names) == 1 else None)
                if pick is None:
                    raise UsageError(f"--around {path}: an .npz with several arrays ({', '.join(names)}) and none "
                                     f"named '{floats[0].name}'")
                array = np.asarray(data[pick])
            else:
                array = np.asarray(data)
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"--around {path}: not a readable .npy / .npz file ({exc})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"--around {path}: expected numbers, got {array.dtype}")
    size = int(np.prod(shape))
    if array.size == size:
        array = array.reshape((1,) + shape)
    elif array.ndim >= 1 and array[0].size == size:
        array = array.reshape((array.shape[0],) + shape)
    else:
        raise UsageError(f"--around {path}: arrays of shape {array.shape} do not hold points of the input's shape "
                         f"{shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise UsageError(f"--around {path}: the points contain NaN or infinity")
    if array.shape[0] == 0:
        raise UsageError(f"--around {path}: no points")
    return array


def analyze_points(graph: Graph, walked: WalkResult, points: np.ndarray, radius: float, norm: str, *,
                   global_bound: float | None, seed: int = 0, interpolates: int = 32,
                   on_point: Callable[[int], None] | None = None) -> Any:
    """Per point x: the certified local bound on the ball of ``radius`` around x (norm "2": the L2 ball, which the
    affine forms carry exactly while they fit, else the box [x − r, x + r] around it; "inf": that box itself; the
    restricted chain's lipsdp value where the model is a chain), ‖J(x)‖₂, and for a classifier (one output of ≥ 2
    values) the margin between its top two outputs and the radius certified robust, min(margin / (√2·L), r) (L2;
    for "inf": margin / (√2·L·√n)). Also ‖J‖ at random interpolates between pairs of points (what WGAN-GP penalizes)."""
    import time

    import torch

    from lipcheck.bound.jacobian import Clock, Flat, Linearization, spectral_norm_at
    from lipcheck.bound.symbolic import symbolic_ranges
    from lipcheck.bound.torch_eval import TorchEvaluator
    from lipcheck.report.model import AroundResult, PointResult

    start = time.perf_counter()
    name = graph.float_inputs[0].name
    evaluator = TorchEvaluator(graph, dtype=torch.float64)
    f = Flat(graph, evaluator)
    rng = np.random.default_rng(seed)
    n = int(np.prod(points.shape[1:]))

    def jacobian_norm(x: np.ndarray) -> tuple[float | None, np.ndarray]:
        lin = Linearization(f, torch.from_numpy(x.reshape(-1).copy()))
        v0 = rng.standard_normal(f.n)
        spec = spectral_norm_at(lin, torch.from_numpy(v0 / np.linalg.norm(v0)), Clock(60.0), iterations=100)
        return (None if spec is None else float(spec.sigma)), lin.y.detach().numpy()

    results = []
    dense: dict[str, Any] = {}  # materialized convs, shared by every point
    for k, x in enumerate(points):
        if on_point is not None:
            on_point(k)
        ball = (name, x, radius) if norm == "2" else None
        ranges = symbolic_ranges(graph, {name: (x - radius, x + radius)}, ball=ball)
        local = local_bound(graph, walked, ranges.intervals, dense)
        value, method = local.value, "local"
        chained = local_chain_bound(graph, ranges.intervals, dense=dense, iterations=POINT_CHAIN_ITERATIONS)
        if chained is not None and chained < value:
            value, method = chained, "local lipsdp"
        if global_bound is not None and global_bound < value:
            value, method = global_bound, "global"
        upper = value if math.isfinite(value) else None
        jnorm, y = jacobian_norm(x)
        margin = certified = None
        if y.size >= 2:
            top2 = np.sort(y)[-2:]
            margin = float(top2[1] - top2[0])
            if upper is not None and upper > 0:
                scale = math.sqrt(2.0) * upper * (math.sqrt(n) if norm == "inf" else 1.0)
                certified = min(margin / scale, radius)
            elif upper == 0:
                certified = radius
        results.append(PointResult(k, upper, jnorm, margin, certified,
                                   local.unbounded[0].node if upper is None and local.unbounded else None, method))
    inter: list[float] = []
    if points.shape[0] >= 2:
        for _ in range(interpolates):
            i, j = rng.choice(points.shape[0], size=2, replace=False)
            t = rng.random()
            value, _ = jacobian_norm(t * points[i] + (1 - t) * points[j])
            if value is not None:
                inter.append(value)
    return AroundResult(radius=radius, norm=norm, points=tuple(results), interpolate_norms=tuple(inter),
                        seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------- global constants from ranges


def ranges_global_bound(graph: Graph, walked: WalkResult) -> tuple[float | None, LocalResult | None, str | None]:
    """The global bound again, with local constants on the ranges tensors take over ALL inputs (every input in
    (−∞, ∞)): bounded functions make products of tensors finite where the product rule cannot (an LSTM / GRU gate
    σ(a)·tanh(b), a mask σ(a)·σ(b)). (value or None, the composition, why there is none)."""
    from lipcheck.bound.ranges import propagate

    box = {i.name: (np.float64(-np.inf), np.float64(np.inf)) for i in graph.inputs}
    try:
        ranges = propagate(graph, box)
    except ValueError as exc:
        return None, None, f"no ranges: {exc}"
    result = local_bound(graph, walked, ranges.intervals)
    if not math.isfinite(result.value):
        first = result.unbounded[0] if result.unbounded else None
        return None, result, (f"{first.node} ({first.op}): {first.reason}" if first else "unbounded")
    return result.value, result, None

