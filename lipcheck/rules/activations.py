"""Element-wise activations: exact global Lipschitz constants (max |f'|), see lipschitz.md.

Constants marked "computed" were obtained by maximising |f'| numerically on a fine grid and rounded UP.
"""

from __future__ import annotations

import math

import numpy as np

from lipcheck.ir.graph import Node
from lipcheck.rules.registry import (
    NoGlobalConstant,
    OpBound,
    RuleContext,
    register,
    register_constant,
    single_input,
    unbounded_rule,
)

SILU = 1.09985  # computed: max of sigmoid(x)(1 + x(1 - sigmoid(x))) = 1.099839...
GELU = 1.12900  # computed: erf form 1.128904..., tanh form 1.128993...
MISH = 1.08850  # computed: 1.088498...
ERF = 2.0 / math.sqrt(math.pi) * (1 + 1e-12)

register_constant(
    {
        "Relu": (1.0, "Relu: 1"),
        "Abs": (1.0, "Abs: 1"),
        "Neg": (1.0, "Neg: 1"),
        "Tanh": (1.0, "Tanh: 1"),
        "Softplus": (1.0, "Softplus: 1"),
        "Softsign": (1.0, "Softsign: 1"),
        "Sigmoid": (0.25, "Sigmoid: 1/4"),
        "HardSwish": (1.5, "HardSwish: 3/2"),
        "Mish": (MISH, "Mish: 1.0885 (computed)"),
        "Sin": (1.0, "Sin: 1"),
        "Cos": (1.0, "Cos: 1"),
        "Atan": (1.0, "Atan: 1"),
        "Erf": (ERF, "Erf: 2/sqrt(pi)"),
        "Softmax": (0.5, "Softmax: 1/2 (largest eigenvalue of diag(p) - p p^T)"),
    }
)

for _op, _why in {
    "Exp": "Exp has no global Lipschitz constant (its derivative is unbounded)",
    "Log": "Log has no global Lipschitz constant (unbounded derivative near 0)",
    "Sqrt": "Sqrt has no global Lipschitz constant (unbounded derivative near 0)",
    "Reciprocal": "Reciprocal has no global Lipschitz constant",
    "Pow": "Pow has no global Lipschitz constant",
    "Sign": "Sign is discontinuous: no Lipschitz constant",
    "Floor": "Floor is discontinuous: no Lipschitz constant",
    "Ceil": "Ceil is discontinuous: no Lipschitz constant",
    "Round": "Round is discontinuous: no Lipschitz constant",
    "ThresholdedRelu": "ThresholdedRelu is discontinuous: no Lipschitz constant",
    "Tan": "Tan has no global Lipschitz constant",
    "Asin": "Asin has no global Lipschitz constant",
    "Acos": "Acos has no global Lipschitz constant",
    "Sinh": "Sinh has no global Lipschitz constant",
    "Cosh": "Cosh has no global Lipschitz constant",
    "LpNormalization": "LpNormalization (x/||x||) has no global Lipschitz constant near 0",
}.items():
    register(_op)(unbounded_rule(_why))


@register("LeakyRelu")
def leaky_relu(node: Node, ctx: RuleContext) -> OpBound:
    a = float(node.attr("alpha", np.float32(0.01)))
    return single_input(node, ctx, max(1.0, abs(a)), f"LeakyRelu: max(1, |alpha|), alpha={a:g}")


@register("PRelu")
def prelu(node: Node, ctx: RuleContext) -> OpBound:
    slope = ctx.const(node.inputs[1])
    if slope is None:
        raise NoGlobalConstant("PRelu with an input-dependent slope has no global constant")
    m = float(np.max(np.abs(slope))) if slope.size else 0.0
    bound = single_input(node, ctx, max(1.0, m), f"PRelu: max(1, max|slope|), max|slope|={m:.4g}")
    return bound


@register("Elu", "Celu")
def elu(node: Node, ctx: RuleContext) -> OpBound:
    a = float(node.attr("alpha", 1.0))
    if node.op_type == "Celu":
        # celu(x) = max(0,x) + min(0, a(exp(x/a) - 1)): slope in (0, 1]
        return single_input(node, ctx, 1.0, f"Celu: 1, alpha={a:g}")
    return single_input(node, ctx, max(1.0, abs(a)), f"Elu: max(1, alpha), alpha={a:g}")


@register("Selu")
def selu(node: Node, ctx: RuleContext) -> OpBound:
    a = float(node.attr("alpha", 1.67326319217681884765625))
    g = float(node.attr("gamma", 1.05070102214813232421875))
    k = abs(g) * max(1.0, abs(a))
    return single_input(node, ctx, k * (1 + 1e-12), f"Selu: gamma*max(1, alpha) = {k:.5g}")


@register("HardSigmoid")
def hard_sigmoid(node: Node, ctx: RuleContext) -> OpBound:
    a = float(node.attr("alpha", np.float32(0.2)))
    return single_input(node, ctx, abs(a), f"HardSigmoid: |alpha|, alpha={a:g}")


@register("Gelu")
def gelu(node: Node, ctx: RuleContext) -> OpBound:
    return single_input(node, ctx, GELU, "Gelu: 1.1290 (computed)")


@register("Swish")
def swish(node: Node, ctx: RuleContext) -> OpBound:
    # x*sigmoid(a x): with u = a x the derivative is sigmoid(u) + u sigmoid'(u), whatever a > 0
    a = float(node.attr("alpha", 1.0))
    if a <= 0:
        raise NoGlobalConstant(f"Swish with alpha={a:g} <= 0 is not supported")
    return single_input(node, ctx, SILU, "Swish: 1.0998 (computed)")


@register("LogSoftmax")
def log_softmax(node: Node, ctx: RuleContext) -> OpBound:
    shape = ctx.shape(node.inputs[0])
    axis = int(node.attr("axis", -1))
    n = shape[axis] if shape else 1
    # J = I - 1 p^T, so ||J|| <= 1 + sqrt(n) ||p||_2 <= 1 + sqrt(n)
    return single_input(node, ctx, 1.0 + math.sqrt(n), f"LogSoftmax: 1 + sqrt(n), n={n}", loose=True)


@register("Clip")
def clip(node: Node, ctx: RuleContext) -> OpBound:
    var = ctx.var_inputs(node)
    if any(i != 0 for i in var):
        raise NoGlobalConstant("Clip with input-dependent bounds is not supported")
    return single_input(node, ctx, 1.0, "Clip: 1")
