"""Pooling: MaxPool (√ of the largest number of windows sharing an input), AveragePool, GlobalAveragePool."""

from __future__ import annotations

import math

from lipcheck.ir.graph import Node
from lipcheck.rules.geometry import max_window_overlap_1d, resolve_pads, spatial_attrs
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, register, single_input


@register("MaxPool")
def max_pool(node: Node, ctx: RuleContext) -> OpBound:
    # ‖Δy‖² = Σ_w (max_{i∈w} Δ_i)² ≤ Σ_w Σ_{i∈w} Δ_i² = Σ_i count_i Δ_i² ≤ max count · ‖Δ‖²,
    # and a single spike under the most-shared input reaches it: the constant is exactly √(max count).
    shape = ctx.shape(node.inputs[0])
    spatial = shape[2:]
    a = spatial_attrs(node, len(spatial))
    pb, pe = resolve_pads(node, spatial, a["kernel"], a["strides"], a["dilations"])
    # the number of windows per axis is read from the model's output shape (covers ceil_mode)
    out_spatial = ctx.shape(node.outputs[0])[2:]
    count = 1
    for dim, (n, k, s, d) in enumerate(zip(spatial, a["kernel"], a["strides"], a["dilations"])):
        count *= max_window_overlap_1d(n, k, s, d, pb[dim], out_spatial[dim])
    if len(node.outputs) > 1 and node.outputs[1]:
        raise NoGlobalConstant("MaxPool's indices output is integer-valued")
    return single_input(node, ctx, math.sqrt(count), f"MaxPool: √(max windows per input) = √{count}")


@register("AveragePool")
def average_pool(node: Node, ctx: RuleContext) -> OpBound:
    from lipcheck.norms.pool import average_pool_norms

    shape = ctx.shape(node.inputs[0])
    spatial = shape[2:]
    a = spatial_attrs(node, len(spatial))
    pb, pe = resolve_pads(node, spatial, a["kernel"], a["strides"], a["dilations"])
    o = ctx.norm_options()
    norms = average_pool_norms(
        tuple(spatial), a["kernel"], a["strides"], pb, pe, a["dilations"],
        bool(node.attr("count_include_pad", 0)), bool(node.attr("ceil_mode", 0)),
        iterations=int(o["iterations"]), tol=float(o["tol"]), seed=int(o["seed"]),
    )
    return _layer(node, ctx, norms, "AveragePool: linear operator (Kronecker of 1-D averages)")


@register("GlobalAveragePool")
def global_average_pool(node: Node, ctx: RuleContext) -> OpBound:
    from lipcheck.norms.pool import global_average_pool_norm

    spatial = ctx.shape(node.inputs[0])[2:]
    norms = global_average_pool_norm(tuple(spatial))
    return _layer(node, ctx, norms, "GlobalAveragePool: 1/√(H·W)")


def _layer(node: Node, ctx: RuleContext, norms: object, rule: str) -> OpBound:
    from lipcheck.report.model import NormResult

    assert isinstance(norms, NormResult)
    bound = single_input(node, ctx, norms.sigma_upper, rule)
    return OpBound(gains=bound.gains, rule=rule, norms=norms, estimate_gains={0: norms.sigma_power})
