"""The ONNX recurrent ops (LSTM, GRU, RNN): certified Lipschitz constants from the boundedness of their gates,
unrolled over the sequence length. LSTM first; GRU and RNN at the end of this docstring.

Per direction, batch element and step t (ONNX gate order i, o, f, c; default activations σ, tanh, tanh):

    i = σ(W_i x_t + R_i h_{t−1} + P_i⊙c_{t−1} + b_i)   f = σ(… P_f⊙c_{t−1} …)   g = tanh(W_c x_t + R_c h_{t−1} + b_c)
    c_t = f⊙c_{t−1} + i⊙g                              o = σ(W_o x_t + R_o h_{t−1} + P_o⊙c_t + b_o)
    h_t = o⊙tanh(c_t)

Between two runs (δ = difference), with the exact splits f c − f′c′ = f(c − c′) + (f − f′)c′ and the bounds
|σ| < 1, |tanh| < 1, σ′ ≤ 1/4, tanh′ ≤ 1, |c_t| ≤ C_t := C_0 + t (|c_t| ≤ |f||c_{t−1}| + |i||g|), C_0 = max|c_0|:

    ‖δz_k‖ ≤ ‖W_k‖‖δx_t‖ + ‖R_k‖‖δh_{t−1}‖ (+ max|P_k|·‖δc‖),  ‖δi‖, ‖δf‖, ‖δo‖ ≤ ‖δz‖/4,  ‖δg‖ ≤ ‖δz_c‖
    ‖δc_t‖ ≤ ‖δc_{t−1}‖ + C_{t−1}‖δf‖ + ‖δg‖ + ‖δi‖,    ‖δh_t‖ ≤ ‖δc_t‖ + ‖δo‖.

Unrolled, every ‖δh_t‖ and ‖δc_t‖ is at most a non-negative combination M_t·v of v = (‖δx_1‖, …, ‖δx_T‖,
‖δh_0‖, ‖δc_0‖), and ‖v‖ = ‖δ(X, h_0, c_0)‖. So ‖δY‖² = Σ_t ‖δh_t‖² ≤ ‖M_h v‖², ‖δY_h‖ ≤ ‖M_{h,T}‖‖v‖,
‖δY_c‖ ≤ ‖M_{c,T}‖‖v‖: each output's constant is at most L = max(σ_max(M_h), ‖M_{c,T}‖). Batch elements are
independent (the same L), and a bidirectional LSTM's two directions read the same X: L = √(L_fwd² + L_rev²).
``clip`` only shrinks differences of the pre-activations. The weights' norms are certified σ (SVD + margin), the
recurrence is evaluated in float64 and raised by a rounding margin.

C_0 is 0 without an initial cell state, max|c_0| for a constant one; an initial cell state that is an input has no
global bound (the forget gate multiplies it: f(x)·c_0 has no global constant), so the op is unbounded globally and
bounded on a region (:mod:`lipcheck.bound.local`) from the range of c_0.

GRU (gates z, r, h; default σ, tanh): z, r = σ(…), h̃ = tanh(W_h x_t + R_h(r⊙h_{t−1}) + b) (linear_before_reset = 0)
or tanh(W_h x_t + r⊙(R_h h_{t−1} + Rb_h) + Wb_h) (= 1), h_t = (1 − z)⊙h̃ + z⊙h_{t−1}. A convex combination of
|h̃| < 1 and |h_{t−1}| keeps |h_t| ≤ B := max(1, max|h_0|), and

    ‖δh̃‖ ≤ ‖W_h‖‖δx_t‖ + ‖R_h‖(‖δh_{t−1}‖ + B‖δr‖)      (linear_before_reset = 0)
    ‖δh̃‖ ≤ ‖W_h‖‖δx_t‖ + ‖R_h‖‖δh_{t−1}‖ + Q‖δr‖,  Q = B·max_j Σ_k |R_h,jk| + max|Rb_h|   (= 1)
    ‖δh_t‖ ≤ ‖δh̃‖ + ‖δh_{t−1}‖ + (B + 1)‖δz‖              (|1 − z|, |z| ≤ 1; |h_{t−1} − h̃| ≤ B + 1)

L = σ_max of the rows of the ‖δh_t‖ coefficients (Y and Y_h). An initial hidden state that is an input has no
global B (r⊙h_0, z⊙h_0): unbounded globally, bounded on a region from its range.

RNN (default tanh; Relu and Sigmoid too, slopes 1 and 1/4): ‖δh_t‖ ≤ s(‖W‖‖δx_t‖ + ‖R‖‖δh_{t−1}‖), global whatever
h_0 is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lipcheck.ir.graph import Node
from lipcheck.norms.margin import as_float64, rounding_margin
from lipcheck.norms.matrix import sigma_max_svd
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, register

DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
_SIGMA_MARGIN = 1e-12  # relative margin on each dense SVD σ (float64 SVD is backward stable: far below this)


def lstm_constant(weights: np.ndarray, recurrence: np.ndarray, peepholes: np.ndarray | None, steps: int,
                  c0_max: float, *, h0_var: bool, c0_var: bool) -> float:
    """The certified constant L of one LSTM direction (module docstring) for W [4H, I], R [4H, H], P [3H] or None,
    ``steps`` = T and C_0 = ``c0_max``."""
    hidden = recurrence.shape[1]
    w = [as_float64(weights[k * hidden:(k + 1) * hidden], "LSTM weight") for k in range(4)]
    r = [as_float64(recurrence[k * hidden:(k + 1) * hidden], "LSTM recurrence weight") for k in range(4)]
    a = [float(sigma_max_svd(m[None])[0]) * (1 + _SIGMA_MARGIN) for m in w]  # i, o, f, c
    b = [float(sigma_max_svd(m[None])[0]) * (1 + _SIGMA_MARGIN) for m in r]
    p = [0.0, 0.0, 0.0]  # i, o, f
    if peepholes is not None:
        pp = as_float64(peepholes, "LSTM peephole weight").reshape(-1)
        p = [float(np.max(np.abs(pp[k * hidden:(k + 1) * hidden]))) if pp.size else 0.0 for k in range(3)]
    n = steps + 2  # coefficients over (δx_1 … δx_T, δh_0, δc_0)
    h = np.zeros(n)
    c = np.zeros(n)
    if h0_var:
        h[steps] = 1.0
    if c0_var:
        c[steps + 1] = 1.0
    rows = []
    bound_c = c0_max
    for t in range(steps):
        x = np.zeros(n)
        x[t] = 1.0
        z = [a[k] * x + b[k] * h for k in range(4)]
        di = 0.25 * (z[0] + p[0] * c)
        df = 0.25 * (z[2] + p[2] * c)
        dg = z[3]
        c = c + bound_c * df + dg + di
        do = 0.25 * (z[1] + p[1] * c)
        h = c + do
        rows.append(h)
        bound_c = bound_c + 1.0
    m = np.array(rows)
    value = max(float(sigma_max_svd(m[None])[0]), float(np.linalg.norm(c)))
    # every coefficient is a sum of ≤ 8T non-negative products; the final SVD / norm is backward stable
    return value * rounding_margin(16 * steps + 8) * (1 + _SIGMA_MARGIN)


def gru_constant(weights: np.ndarray, recurrence: np.ndarray, bias: np.ndarray | None, steps: int, h0_max: float,
                 *, h0_var: bool, linear_before_reset: bool) -> float:
    """The certified constant of one GRU direction (module docstring): W [3H, I], R [3H, H], B [6H] or None."""
    hidden = recurrence.shape[1]
    a = [_sigma(weights[k * hidden:(k + 1) * hidden], "GRU weight") for k in range(3)]  # z, r, h
    b = [_sigma(recurrence[k * hidden:(k + 1) * hidden], "GRU recurrence weight") for k in range(3)]
    big = max(1.0, h0_max)
    rb_h = 0.0
    if bias is not None and bias.size:
        rb_h = float(np.max(np.abs(as_float64(bias, "GRU bias").reshape(-1)[5 * hidden:6 * hidden])))
    r_h = as_float64(recurrence[2 * hidden:3 * hidden], "GRU recurrence weight")
    q = big * float(np.max(np.sum(np.abs(r_h), axis=1))) + rb_h if r_h.size else rb_h

    def step(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        dz = 0.25 * (a[0] * x + b[0] * h)
        dr = 0.25 * (a[1] * x + b[1] * h)
        dh = a[2] * x + (b[2] * (h + big * dr) if not linear_before_reset else b[2] * h + q * dr)
        return dh + h + (big + 1.0) * dz

    return _unrolled(steps, h0_var, step, 16)


def rnn_constant(weights: np.ndarray, recurrence: np.ndarray, steps: int, slope: float, *, h0_var: bool) -> float:
    """The certified constant of one RNN direction: ‖δh_t‖ ≤ s(‖W‖‖δx_t‖ + ‖R‖‖δh_{t−1}‖), unrolled."""
    a, b = _sigma(weights, "RNN weight"), _sigma(recurrence, "RNN recurrence weight")
    return _unrolled(steps, h0_var, lambda x, h: slope * (a * x + b * h), 8)


def _unrolled(steps: int, h0_var: bool, step: Callable[[np.ndarray, np.ndarray], np.ndarray], flops: int) -> float:
    """σ_max of the rows M_t of ‖δh_t‖ ≤ M_t·(‖δx_1‖, …, ‖δx_T‖, ‖δh_0‖), h_t's coefficients given by ``step``
    (x: the unit coefficient of δx_t; h: those of δh_{t−1}), raised by a rounding margin for ``flops`` operations
    per coefficient and step (all coefficients are sums of non-negative products)."""
    n = steps + 1  # coefficients over (δx_1 … δx_T, δh_0)
    h = np.zeros(n)
    if h0_var:
        h[steps] = 1.0
    rows = []
    for t in range(steps):
        x = np.zeros(n)
        x[t] = 1.0
        h = step(x, h)
        rows.append(h)
    value = float(sigma_max_svd(np.array(rows)[None])[0])
    return value * rounding_margin(flops * steps + 8) * (1 + _SIGMA_MARGIN)


def _sigma(matrix: np.ndarray, what: str) -> float:
    m = as_float64(matrix, what)
    return float(sigma_max_svd(m[None])[0]) * (1 + _SIGMA_MARGIN) if m.size else 0.0


def _activations(node: Node, default: tuple[str, ...]) -> tuple[str, ...]:
    """The node's activation names per direction (lower-case), the op's defaults when absent."""
    acts = node.attr("activations")
    if acts is None:
        return default
    return tuple(str(s.decode() if isinstance(s, bytes) else s).lower() for s in acts)


def _steps(node: Node, ctx: RuleContext) -> int:
    shape = ctx.shape(node.inputs[0])
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise NoGlobalConstant(f"{node.op_type} input of shape {shape}: the sequence length must be known")
    return int(shape[1] if int(node.attr("layout", 0)) == 1 else shape[0])


def _state_max(node: Node, ctx: RuleContext, index: int, given: float | None, what: str) -> float:
    """max|s_0| of the initial state at input ``index``: 0 when absent, from the constant, or ``given`` (a region's
    range) when it is an input; NoGlobalConstant when it is an input without a range."""
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        return 0.0
    if ctx.is_var(name):
        if given is None:
            raise NoGlobalConstant(
                f"{node.op_type} initial {what} {name!r} is an input: a gate multiplies it, which has no global "
                "constant; --domain bounds it on a region")
        if not math.isfinite(given):
            raise NoGlobalConstant(f"{node.op_type} initial {what} {name!r} has no finite range")
        return float(given)
    const = ctx.const(name)
    return float(np.max(np.abs(as_float64(const, f"{node.op_type} initial {what}")))) if const is not None \
        and const.size else 0.0


def _recurrent_gains(node: Node, ctx: RuleContext, total: float, state_inputs: tuple[int, ...], rule: str) -> OpBound:
    var = ctx.var_inputs(node)
    if any(i not in (0, 4, *state_inputs) for i in var):
        raise NoGlobalConstant(f"{node.op_type} with an input-dependent parameter has no global constant")
    return OpBound(gains={i: total for i in var if i in (0, *state_inputs)}, rule=rule, combine="rss")


def gru_bound(node: Node, ctx: RuleContext, h0_max: float | None) -> OpBound:
    """The GRU rule's OpBound given max|h_0| over a region (None: none known)."""
    acts = _activations(node, ("sigmoid", "tanh"))
    if any(acts[k:k + 2] != ("sigmoid", "tanh") for k in range(0, len(acts), 2)):
        raise NoGlobalConstant(f"GRU with activations {list(acts)}: lipcheck bounds only Sigmoid/Tanh")
    w, r = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    if w is None or r is None:
        raise NoGlobalConstant("GRU with input-dependent weights has no global constant")
    bias_name = node.inputs[3] if len(node.inputs) > 3 else ""
    bias = ctx.const(bias_name) if bias_name else None
    if bias_name and bias is None:
        raise NoGlobalConstant("GRU with an input-dependent bias has no global constant")
    steps = _steps(node, ctx)
    h0_var = len(node.inputs) > 5 and ctx.is_var(node.inputs[5])
    h0 = _state_max(node, ctx, 5, h0_max, "hidden state")
    lbr = bool(int(node.attr("linear_before_reset", 0)))
    squares = 0.0
    for d in range(w.shape[0]):
        value = gru_constant(w[d], r[d], None if bias is None else bias[d], steps, h0, h0_var=h0_var,
                             linear_before_reset=lbr)
        squares += value * value
    total = math.sqrt(squares) * (1 + 4e-16 * w.shape[0])
    rule = f"GRU: gates bounded, unrolled over {steps} step{'s' if steps != 1 else ''} (|h_0| ≤ {h0:.3g}): {total:.4g}"
    return _recurrent_gains(node, ctx, total, (5,), rule)


_RNN_SLOPES = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}


@register("GRU")
def gru(node: Node, ctx: RuleContext) -> OpBound:
    return gru_bound(node, ctx, None)


@register("RNN")
def rnn(node: Node, ctx: RuleContext) -> OpBound:
    acts = _activations(node, ("tanh",))
    if any(a not in _RNN_SLOPES for a in acts):
        raise NoGlobalConstant(f"RNN with activations {list(acts)}: lipcheck bounds Tanh, Relu and Sigmoid")
    w, r = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    if w is None or r is None:
        raise NoGlobalConstant("RNN with input-dependent weights has no global constant")
    if len(node.inputs) > 3 and node.inputs[3] and ctx.is_var(node.inputs[3]):
        raise NoGlobalConstant("RNN with an input-dependent bias has no global constant")
    steps = _steps(node, ctx)
    h0_var = len(node.inputs) > 5 and ctx.is_var(node.inputs[5])
    squares = 0.0
    for d in range(w.shape[0]):
        slope = _RNN_SLOPES[acts[d] if d < len(acts) else acts[0]]
        value = rnn_constant(w[d], r[d], steps, slope, h0_var=h0_var)
        squares += value * value
    total = math.sqrt(squares) * (1 + 4e-16 * w.shape[0])
    rule = f"RNN: unrolled over {steps} step{'s' if steps != 1 else ''}: {total:.4g}"
    return _recurrent_gains(node, ctx, total, (5,), rule)


def lstm_bound(node: Node, ctx: RuleContext, c0_max: float | None) -> OpBound:
    """The rule's OpBound given C_0 (None: the initial cell state is an input without a known range)."""
    acts = _activations(node, DEFAULT_ACTIVATIONS)
    if any(acts[k:k + 3] != DEFAULT_ACTIVATIONS for k in range(0, len(acts), 3)):
        raise NoGlobalConstant(f"LSTM with activations {list(acts)}: lipcheck bounds only Sigmoid/Tanh/Tanh")
    if int(node.attr("input_forget", 0)) != 0:
        raise NoGlobalConstant("LSTM with input_forget=1 is not supported")
    inputs = list(node.inputs) + [""] * (8 - len(node.inputs))
    w, r = ctx.const(inputs[1]), ctx.const(inputs[2])
    if w is None or r is None:
        raise NoGlobalConstant("LSTM with input-dependent weights has no global constant")
    steps = _steps(node, ctx)
    h0_var, c0_var = ctx.is_var(inputs[5]), ctx.is_var(inputs[6])
    c0 = _state_max(node, ctx, 6, c0_max, "cell state")
    peep = ctx.const(inputs[7]) if inputs[7] and not ctx.is_var(inputs[7]) else None
    directions = w.shape[0]
    squares = 0.0
    for d in range(directions):
        value = lstm_constant(w[d], r[d], None if peep is None else peep[d], steps, c0, h0_var=h0_var,
                              c0_var=c0_var)
        squares += value * value
    total = math.sqrt(squares) * (1 + 4e-16 * directions)
    rule = (f"LSTM: gates bounded, unrolled over {steps} step{'s' if steps != 1 else ''} "
            f"({directions} direction{'s' if directions != 1 else ''}, |c_0| ≤ {c0:.3g}): {total:.4g}")
    return _recurrent_gains(node, ctx, total, (5, 6), rule)


@register("LSTM")
def lstm(node: Node, ctx: RuleContext) -> OpBound:
    return lstm_bound(node, ctx, None)
