"""Normalization layers with input-dependent statistics: finite global constants, flagged as loose."""

from __future__ import annotations

import math

import numpy as np

from lipcheck.ir.graph import Node
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, register


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
