"""Normalization layers with input-dependent statistics: finite global constants. LayerNormalization and its kin
(a 1/√eps bound) are flagged as loose; LRN's closed form (:func:`lrn_constant`) is within about 2× of its
measured worst case."""

from __future__ import annotations

import math

import numpy as np

from lipcheck.ir.graph import Node
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, register, single_input


@register("LayerNormalization", "InstanceNormalization", "GroupNormalization")
def layer_norm(node: Node, ctx: RuleContext) -> OpBound:
    # y = γ ⊙ (x - μ)/√(var + eps): the Jacobian of the normalisation is (1/s)(I - 11ᵀ/n - zzᵀ/n) with
    # s = √(var + eps) ≥ √eps, so ‖J‖ ≤ max|γ|/√eps: a global constant, but a loose one (≈316·max|γ| at 1e-5).
    if ctx.var_inputs(node) != [0]:
        raise NoGlobalConstant(f"{node.op_type} with input-dependent scale or bias is not supported")
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    if eps <= 0:
        raise NoGlobalConstant(f"{node.op_type} with epsilon={eps:g} has no global constant")
    scale = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    g = float(np.max(np.abs(scale))) if scale is not None and scale.size else 1.0
    k = g / math.sqrt(eps) * (1 + 1e-12)
    return OpBound(
        gains={0: k}, rule=f"{node.op_type}: max|γ|/√eps = {k:.4g} (eps={eps:g}; loose)", loose=True
    )


def lrn_window_counts(size: int, channels: int) -> tuple[int, int]:
    """(n, m): the most channels one LRN window sums (n) and the most windows one channel is in (m).

    ONNX: the window of channel c is max(0, c - ⌊(size-1)/2⌋) ≤ i ≤ min(C - 1, c + ⌈(size-1)/2⌉); both counts are
    at most min(size, C)."""
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    c = np.arange(channels)
    n = np.minimum(channels - 1, c + after) - np.maximum(0, c - before) + 1  # channels in the window of c
    m = np.minimum(channels - 1, c + before) - np.maximum(0, c - after) + 1  # windows that contain channel c
    return int(n.max(initial=1)), int(m.max(initial=1))


def lrn_constant(alpha: float, beta: float, bias: float, size: int, channels: int) -> float:
    """A certified global L2 Lipschitz constant of ONNX LRN (per spatial position, hence of the whole tensor):

        L = k^(-β) · (1 + 2·ρ(β)·K),  ρ(β) = (β/(β+1))^(β+1),  K = √((1 + √n)/2 · (m + 1)/2)

    (k = bias; n, m from :func:`lrn_window_counts`; L = k^(-β) when α = 0). Needs k > 0, β ≥ 0, α ≥ 0.

    Proof. At one spatial position y_c = x_c·d_c^(-β) with d_c = k + a·S_c, a = α/size, S_c = Σ_{j∈W(c)} x_j² (c ∈
    W(c)). The map is smooth, so its constant is sup_x ‖J(x)‖₂, and J = D - 2aβ·B with D = diag(d_c^(-β)) and
    B_cj = x_c·x_j·d_c^(-β-1) for j ∈ W(c), 0 elsewhere. Different spatial positions use disjoint inputs and
    outputs: the whole map's Jacobian is block-diagonal with these blocks, and its norm is their largest.

    - ‖D‖₂ = max_c d_c^(-β) ≤ k^(-β), as d_c ≥ k and β ≥ 0.
    - g(S) = S·(k + aS)^(-β-1) on S ≥ 0 has g' ∝ k - β·a·S: its maximum is at S = k/(aβ), where
      g* = k^(-β)·ρ(β)/(aβ); so 2aβ·S_c·d_c^(-β-1) ≤ 2aβ·g* = 2·ρ(β)·k^(-β) (= 0 for β = 0).
    - Row sums of |B|: |x_c|·Σ_{j∈W(c)} |x_j| ≤ |x_c|² + |x_c|·√(n_c - 1)·√(S_c - x_c²) ≤ S_c·(1 + √n_c)/2
      (maximise cos²θ + √(n_c - 1)·cosθ·sinθ over θ), times d_c^(-β-1): ≤ g*·(1 + √n)/2.
    - Column sums of |B|: Σ_{c: j∈W(c)} |x_c|·|x_j|·d_c^(-β-1), with both c and j in W(c): the term c = j is
      ≤ S_c·d_c^(-β-1) ≤ g*, the others |x_c||x_j| ≤ (x_c² + x_j²)/2 ≤ S_c/2, so ≤ g*/2 each: ≤ g*·(m + 1)/2.
    - Schur's test: ‖B‖₂ ≤ √(max row sum · max column sum) ≤ g*·K.

    So ‖J‖₂ ≤ ‖D‖₂ + 2aβ·‖B‖₂ ≤ k^(-β) + 2·ρ(β)·k^(-β)·K. Rounded up by a relative 1e-12 (a few float64
    operations). Checked against autograd Jacobians in tests/rules/test_lrn.py."""
    if not bias > 0 or not beta >= 0 or not alpha >= 0 or size < 1:
        raise ValueError(f"LRN needs bias > 0, beta >= 0, alpha >= 0, size >= 1 (bias={bias}, beta={beta}, "
                         f"alpha={alpha}, size={size})")
    base = bias ** (-beta)
    if alpha == 0 or beta == 0:
        return base * (1 + 1e-12)
    n, m = lrn_window_counts(size, channels)
    rho = (beta / (beta + 1.0)) ** (beta + 1.0)
    k_b = math.sqrt((1.0 + math.sqrt(n)) / 2.0 * (m + 1) / 2.0)
    return base * (1.0 + 2.0 * rho * k_b) * (1 + 1e-12)


@register("LRN")
def lrn(node: Node, ctx: RuleContext) -> OpBound:
    # y_c = x_c / (bias + alpha/size · Σ_window x²)^beta: see lrn_constant for the constant and its proof.
    size_attr = node.attr("size")
    if size_attr is None or int(size_attr) < 1:
        raise NoGlobalConstant(f"LRN needs a positive 'size' attribute (got {size_attr!r})")
    size = int(size_attr)
    alpha = float(node.attr("alpha", np.float32(1e-4)))
    beta = float(node.attr("beta", np.float32(0.75)))
    bias = float(node.attr("bias", np.float32(1.0)))
    if not (bias > 0 and beta >= 0 and alpha >= 0):
        raise NoGlobalConstant(
            f"LRN with bias={bias:g}, beta={beta:g}, alpha={alpha:g} has no global constant (lipcheck needs "
            "bias > 0, beta >= 0, alpha >= 0: otherwise the denominator can reach 0 or grow the output faster than x)"
        )
    shape = ctx.graph.shapes.get(node.inputs[0])
    channels = int(shape[1]) if shape is not None and len(shape) > 1 else size  # unknown: the window's bound
    k = lrn_constant(alpha, beta, bias, size, channels)
    rule = f"LRN: bias^-β·(1 + 2ρ(β)·K) = {k:.4g} (size={size}, alpha={alpha:g}, beta={beta:g}, bias={bias:g})"
    return single_input(node, ctx, k, rule)
