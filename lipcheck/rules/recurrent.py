"""The ONNX LSTM op: a certified Lipschitz constant from the boundedness of its gates, over the sequence length.

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
"""

from __future__ import annotations

import math

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


def lstm_bound(node: Node, ctx: RuleContext, c0_max: float | None) -> OpBound:
    """The rule's OpBound given C_0 (None: the initial cell state is an input without a known range)."""
    acts = node.attr("activations")
    if acts is not None:
        names = tuple(str(s.decode() if isinstance(s, bytes) else s).lower() for s in acts)
        if any(names[k:k + 3] != DEFAULT_ACTIVATIONS for k in range(0, len(names), 3)):
            raise NoGlobalConstant(f"LSTM with activations {list(names)}: lipcheck bounds only Sigmoid/Tanh/Tanh")
    if int(node.attr("input_forget", 0)) != 0:
        raise NoGlobalConstant("LSTM with input_forget=1 is not supported")
    inputs = list(node.inputs) + [""] * (8 - len(node.inputs))
    x, w_name, r_name, _bias, _lens, h0, c0, p_name = inputs[:8]
    w, r = ctx.const(w_name), ctx.const(r_name)
    if w is None or r is None:
        raise NoGlobalConstant("LSTM with input-dependent weights has no global constant")
    for name, what in ((inputs[3], "bias"), (p_name, "peephole weights")):
        if name and ctx.is_var(name):
            raise NoGlobalConstant(f"LSTM with input-dependent {what} has no global constant")
    shape = ctx.shape(x)
    layout = int(node.attr("layout", 0))
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise NoGlobalConstant(f"LSTM input of shape {shape}: the sequence length must be known")
    steps = int(shape[1] if layout == 1 else shape[0])
    h0_var, c0_var = ctx.is_var(h0), ctx.is_var(c0)
    if c0_var and c0_max is None:
        raise NoGlobalConstant(
            f"LSTM initial cell state {c0!r} is an input: the forget gate multiplies it (f(x)·c_0), which has no "
            "global constant; --domain bounds it on a region")
    if c0 and not c0_var:
        const = ctx.const(c0)
        c0_max = float(np.max(np.abs(as_float64(const, "LSTM initial cell state")))) if const is not None \
            and const.size else 0.0
    c0_max = 0.0 if c0_max is None else float(c0_max)
    if not math.isfinite(c0_max):
        raise NoGlobalConstant(f"LSTM initial cell state {c0!r} has no finite range")
    peep = ctx.const(p_name) if p_name else None
    directions = w.shape[0]
    squares = 0.0
    for d in range(directions):
        value = lstm_constant(w[d], r[d], None if peep is None else peep[d], steps, c0_max,
                              h0_var=h0_var, c0_var=c0_var)
        squares += value * value
    total = math.sqrt(squares) * (1 + 4e-16 * directions) if directions > 1 else math.sqrt(squares)
    var = ctx.var_inputs(node)
    gains = {i: total for i in var if i in (0, 5, 6)}
    if any(i not in (0, 4, 5, 6) for i in var):
        raise NoGlobalConstant("LSTM with an input-dependent parameter has no global constant")
    rule = (f"LSTM: gates bounded, unrolled over {steps} step{'s' if steps != 1 else ''} "
            f"({directions} direction{'s' if directions != 1 else ''}, |c_0| ≤ {c0_max:.3g}): {total:.4g}")
    return OpBound(gains=gains, rule=rule, combine="rss")


@register("LSTM")
def lstm(node: Node, ctx: RuleContext) -> OpBound:
    return lstm_bound(node, ctx, None)
