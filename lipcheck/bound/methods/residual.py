"""A LipSDP-Neuron certificate for one residual block y = S·x + W₂·φ(W₁·x) (+ constant shifts).

S (the shortcut: identity or a linear sub-graph such as a strided 1×1 conv with BatchNorm), W₁ (the branch up to
its activation) and W₂ (after it) are composed linear operators (:mod:`.linear`, with entry-wise error bounds); φ is
element-wise with slopes in [α, β]. With Δu = DΔz, Δz = W₁Δx (D diagonal in [α, β]) and any diagonal T ⪰ 0,
q = (Δu − αΔz)ᵀT(βΔz − Δu) ≥ 0, so if

    P(ρ, T) = [[ρI + aW₁ᵀTW₁ − SᵀS,   −mW₁ᵀT − SᵀW₂],
               [−mTW₁ − W₂ᵀS,          T − W₂ᵀW₂   ]]  ⪰ 0     (a = αβ, m = (α+β)/2)

then ‖SΔx + W₂Δu‖² ≤ ρ‖Δx‖² − q ≤ ρ‖Δx‖²: L ≤ √ρ (the same argument as :mod:`.lmi` with the shortcut term in the
output). Multipliers: T = t·I. With T − W₂ᵀW₂ ≻ 0 (t > ‖W₂‖²) the least ρ for a given t is the largest eigenvalue of
the Schur complement M(t) = SᵀS − a·t·W₁ᵀW₁ + B(t)(tI − W₂ᵀW₂)⁻¹B(t)ᵀ, B(t) = m·t·W₁ᵀ + SᵀW₂; ρ(t) is convex in t
(the LMI is jointly convex), so a bounded scalar search finds it, each value by Lanczos on M(t)'s products
(W₂ᵀW₂ = VΛVᵀ once). The value found is then proven: P(ρ(1+δ), tI), formed in float64 with an explicit bound on its
rounding and on the operators' errors, must pass the Cholesky test of :func:`lmi.dense_psd`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.bound.methods.linear import DenseOperator, materialize
from lipcheck.ir.graph import Graph, Node
from lipcheck.norms.margin import EPS64, rounding_margin

if TYPE_CHECKING:
    from lipcheck.bound.methods.blocks import Limits, Piece

MARGINS = (1e-6, 1e-4, 1e-2, 1e-1)


def _ancestors(target: str, nodes: list[Node], stop: str) -> list[Node]:
    producer = {o: n for n in nodes for o in n.outputs if o}
    seen: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        node = producer.get(name)
        if name == stop or node is None or node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(i for i in node.inputs if i)
    return [n for n in nodes if n.name in seen]


def split_block(graph: Graph, piece: Piece) -> tuple[list[Node], list[Node], Node, list[Node], str, str] | str:
    """(shortcut nodes, W₁ nodes, activation node, W₂ nodes, shortcut tensor, branch tensor) of a residual block, or
    why the piece is not one."""
    from lipcheck.bound.methods.blocks import _activation_interval
    from lipcheck.bound.methods.linear import linear_reason

    nodes, x = piece.nodes, piece.entry
    last = nodes[-1]
    var = [i for i in last.inputs if i and not graph.is_const(i)]
    if last.op_type not in ("Add", "Sum") or len(var) != 2 or len(last.inputs) != 2:
        return "not a residual block (it does not end in the Add of two branches)"
    body = nodes[:-1]
    sides = [_ancestors(v, body, x) for v in var]
    for shortcut, branch, s_out, b_out in ((sides[0], sides[1], var[0], var[1]), (sides[1], sides[0], var[1], var[0])):
        if {n.name for n in shortcut} & {n.name for n in branch}:
            return "the two branches share nodes"
        if len(shortcut) + len(branch) != len(body):
            return "nodes outside the two branches"
        if any(linear_reason(n, graph) is not None for n in shortcut):
            continue
        acts = [n for n in branch if linear_reason(n, graph) is not None]
        if len(acts) != 1 or _activation_interval(acts[0], graph) is None:
            continue
        act = acts[0]
        z, u = act.inputs[0], act.outputs[0]
        first = _ancestors(z, branch, x)
        second = [n for n in branch if n is not act and n not in first]
        inside_first = {o for n in first for o in n.outputs} | {x}
        inside_second = {o for n in second for o in n.outputs} | {u}
        if any(i not in inside_first for n in first for i in n.inputs if i and not graph.is_const(i)):
            continue
        if any(i not in inside_second for n in second for i in n.inputs if i and not graph.is_const(i)):
            continue
        if not first or not second:
            continue
        return shortcut, first, act, second, s_out, b_out
    return "not a residual block with a linear shortcut and a linear → activation → linear branch"


def residual_bound(graph: Graph, piece: Piece, limits: Limits) -> float | str:
    """A certified upper bound on the piece's Lipschitz constant by the residual LMI, or why there is none."""
    from lipcheck.bound.methods.blocks import _activation_interval

    found = split_block(graph, piece)
    if isinstance(found, str):
        return found
    shortcut, first, act, second, s_out, b_out = found
    x = piece.entry
    d_x = int(math.prod(graph.shape(x)))
    z = act.inputs[0]
    d_u = int(math.prod(graph.shape(z)))
    if d_x + d_u > limits.max_order:
        return f"residual LMI of order {d_x + d_u} (limit {limits.max_order})"
    ops: list[DenseOperator | None] = []
    for nodes, entry, exit_ in ((shortcut, x, s_out), (first, x, z), (second, act.outputs[0], b_out)):
        if not nodes:
            if entry != exit_:
                return "internal: empty branch"
            ops.append(None)
            continue
        op = materialize(graph, nodes, entry, exit_, limits.max_entries)
        if isinstance(op, str):
            return op
        ops.append(op)
    interval = _activation_interval(act, graph)
    assert interval is not None
    s_op, w1_op, w2_op = ops
    assert w1_op is not None and w2_op is not None
    s = s_op.matrix if s_op is not None else None  # None: the identity
    e_s = s_op.error if s_op is not None else None
    value = certify_residual(s, w1_op.matrix, w2_op.matrix, interval, (e_s, w1_op.error, w2_op.error))
    return value if value is not None else "the residual LMI could not be certified"


def _rho_of(t: float, ctx: dict) -> float:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    s, w1, lam, b0, b1, a = ctx["s"], ctx["w1"], ctx["lam"], ctx["b0"], ctx["b1"], ctx["a"]
    b = t * b1 + b0
    inv = 1.0 / (t - lam)
    n = w1.shape[1]

    def mv(v: np.ndarray) -> np.ndarray:
        v = np.ravel(v)
        out = (v if s is None else s.T @ (s @ v)) + b @ (inv * (b.T @ v))
        if a != 0.0:
            out -= a * t * (w1.T @ (w1 @ v))
        return out

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    try:
        vals = eigsh(op, k=1, which="LA", tol=1e-10, maxiter=5000, v0=ctx["v0"], return_eigenvectors=False)
    except ArpackNoConvergence:
        return math.inf
    return float(vals[0])


def certify_residual(s: np.ndarray | None, w1: np.ndarray, w2: np.ndarray, interval: tuple[float, float],
                     errors: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]) -> float | None:
    """√ρ of a certified P(ρ, tI) ⪰ 0 (module docstring) for y = S x + W₂ φ(W₁ x) (S None: the identity), or
    None."""
    from scipy.optimize import minimize_scalar

    alpha, beta = interval
    a, m = alpha * beta, 0.5 * (alpha + beta)
    g2 = w2.T @ w2
    lam, vec = np.linalg.eigh(0.5 * (g2 + g2.T))
    top = max(float(lam[-1]), 1e-300)
    w2v = w2 @ vec
    ctx = {"s": s, "w1": w1, "lam": lam, "b0": w2v if s is None else s.T @ w2v, "b1": m * (w1.T @ vec), "a": a,
           "v0": np.random.default_rng(0).standard_normal(w1.shape[1])}

    def objective(log_gap: float) -> float:
        rho = _rho_of(top * (1.0 + math.exp(log_gap)), ctx)
        return math.log(rho) if rho > 0 and math.isfinite(rho) else 1e300

    found = minimize_scalar(objective, bounds=(-14.0, 10.0), method="bounded", options={"xatol": 1e-2})
    t = top * (1.0 + math.exp(float(found.x)))
    rho = _rho_of(t, ctx)
    if not (math.isfinite(rho) and rho > 0):
        return None
    for margin in MARGINS:
        rho_c = rho * (1.0 + margin)
        if _certify(s, w1, w2, a, m, rho_c, t, errors):
            return math.nextafter(math.sqrt(rho_c), math.inf)
    return None


def _rows(abs_s: np.ndarray | None, abs_w1: np.ndarray, abs_w2: np.ndarray, a: float, m: float, rho: float,
          t: float) -> tuple[np.ndarray, np.ndarray]:
    """Row sums of |P|abs (every term of P's sums in absolute value) for the given |S| (None: I), |W₁|, |W₂|."""
    one_u, one_x = np.ones(abs_w1.shape[0]), np.ones(abs_w1.shape[1])
    s_rows = one_x if abs_s is None else abs_s.T @ (abs_s @ one_x)  # |S|ᵀ|S|1
    s_w2 = abs_w2 @ one_u if abs_s is None else abs_s.T @ (abs_w2 @ one_u)  # |S|ᵀ|W₂|1
    w2_s = abs_w2.T @ (one_x if abs_s is None else abs_s @ one_x)  # |W₂|ᵀ|S|1
    top = abs(rho) + abs(a) * t * (abs_w1.T @ (abs_w1 @ one_x)) + s_rows + abs(m) * t * (abs_w1.T @ one_u) + s_w2
    bottom = t + abs_w2.T @ (abs_w2 @ one_u) + abs(m) * t * (abs_w1 @ one_x) + w2_s
    return top, bottom


def _certify(s: np.ndarray | None, w1: np.ndarray, w2: np.ndarray, a: float, m: float, rho: float, t: float,
             errors: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]) -> bool:
    from lipcheck.bound.methods.lmi import dense_psd

    d_x, d_u = w1.shape[1], w1.shape[0]
    n = d_x + d_u
    p = np.zeros((n, n), order="F")
    top = p[:d_x, :d_x]
    if a != 0.0:
        top += (a * t) * (w1.T @ w1)
    if s is None:
        top[np.diag_indices(d_x)] += rho - 1.0
    else:
        top -= s.T @ s
        top[np.diag_indices(d_x)] += rho
    p[d_x:, :d_x] = -(m * t) * w1 - (w2.T if s is None else w2.T @ s)
    bottom = p[d_x:, d_x:]
    bottom -= w2.T @ w2
    bottom[np.diag_indices(d_u)] += t
    inner = max(w2.shape[0], w1.shape[0], d_x) + 8
    g = rounding_margin(inner) - 1.0
    abs_s, abs_w1, abs_w2 = (None if s is None else np.abs(s)), np.abs(w1), np.abs(w2)
    small = np.concatenate(_rows(abs_s, abs_w1, abs_w2, a, m, rho, t))
    perturbation = 0.0
    if any(e is not None for e in errors):
        es, e1, e2 = ((e if e is not None else 0.0) for e in errors)
        if abs_s is None and errors[0] is not None:
            return False  # an identity shortcut has no error
        big = np.concatenate(_rows(None if abs_s is None else abs_s + es, abs_w1 + e1, abs_w2 + e2, a, m, rho, t))
        if not np.all(np.isfinite(big)):
            return False
        perturbation = float(np.max(big * (1.0 + g) - small * (1.0 - g)))
        small = big
    e_form = g * float(small.max()) * (1.0 + g) ** 2 + perturbation * (1.0 + g) + EPS64 * float(small.max())
    return dense_psd(p, e_form)
