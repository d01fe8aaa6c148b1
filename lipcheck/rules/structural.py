"""Structural ops (reshapes, selections, copies) and element-wise arithmetic.

A selection op reads each output element from one input element; its matrix S has one 1 per row, so
SᵀS = diag(copies) and ‖S‖₂ = √(largest number of copies of one input element): 1 for permutations and
crops, √k for k-fold copies (nearest Resize ×s in 2-D gives s).
"""

from __future__ import annotations

import math

import numpy as np

from lipcheck.ir.graph import Node
from lipcheck.rules.registry import (
    NoGlobalConstant,
    OpBound,
    RuleContext,
    broadcast_copies,
    register,
    register_constant,
    single_input,
    unbounded_rule,
)

register_constant(
    {
        "Identity": (1.0, "Identity: 1"),
        "Dropout": (1.0, "Dropout (inference): 1"),
        "Reshape": (1.0, "Reshape: 1 (permutation of elements)"),
        "Flatten": (1.0, "Flatten: 1"),
        "Transpose": (1.0, "Transpose: 1"),
        "Squeeze": (1.0, "Squeeze: 1"),
        "Unsqueeze": (1.0, "Unsqueeze: 1"),
        "Slice": (1.0, "Slice: 1 (a crop, no element repeated)"),
        "Split": (1.0, "Split: 1 per output"),
        "DepthToSpace": (1.0, "DepthToSpace: 1 (permutation)"),
        "SpaceToDepth": (1.0, "SpaceToDepth: 1 (permutation)"),
        "GlobalMaxPool": (1.0, "GlobalMaxPool: 1"),
        "ReduceMax": (1.0, "ReduceMax: 1"),
        "ReduceMin": (1.0, "ReduceMin: 1"),
        "ReduceL2": (1.0, "ReduceL2: 1 (a norm of disjoint groups)"),
    }
)

for _op, _why in {
    "ArgMax": "ArgMax returns integer indices: no Lipschitz constant",
    "ArgMin": "ArgMin returns integer indices: no Lipschitz constant",
    "Equal": "a comparison is discontinuous: no Lipschitz constant",
    "Greater": "a comparison is discontinuous: no Lipschitz constant",
    "GreaterOrEqual": "a comparison is discontinuous: no Lipschitz constant",
    "Less": "a comparison is discontinuous: no Lipschitz constant",
    "LessOrEqual": "a comparison is discontinuous: no Lipschitz constant",
    "NonZero": "NonZero returns indices: no Lipschitz constant",
    "TopK": "TopK is not supported yet",
    "Mod": "Mod is discontinuous: no Lipschitz constant",
}.items():
    register(_op)(unbounded_rule(_why))


@register("If", "Loop", "Scan")
def control_flow(node: Node, ctx: RuleContext) -> OpBound:
    """No constant: an If whose condition is constant was inlined by the loader, so this one's branch is chosen at
    run time; Loop / Scan bodies are not bounded. Inputs include what the subgraphs read from the enclosing scope."""
    var = [node.inputs[i] for i in ctx.var_inputs(node)]
    if not var:
        return OpBound(gains={}, rule="constant")
    shown = ", ".join(f"'{v}'" for v in var[:4]) + (f" and {len(var) - 4} more" if len(var) > 4 else "")
    what = "an If whose condition is not a constant" if node.op_type == "If" else f"a {node.op_type} body"
    raise NoGlobalConstant(f"control flow: {what} reads {shown}; lipcheck cannot bound control flow")


@register("Cast", "CastLike")
def cast(node: Node, ctx: RuleContext) -> OpBound:
    out = ctx.graph.dtypes.get(node.outputs[0], "unknown")
    if not out.startswith(("float", "bfloat")):
        raise NoGlobalConstant(f"Cast to {out} rounds values: no Lipschitz constant")
    return single_input(node, ctx, 1.0, f"Cast to {out}: 1")


def _combine(node: Node, ctx: RuleContext, combine: str, rule: str, scale: float = 1.0) -> OpBound:
    """n-ary element-wise ops with broadcasting: each variable input copied `c` times gains √c."""
    out = ctx.shape(node.outputs[0])
    gains = {i: scale * math.sqrt(broadcast_copies(ctx.shape(node.inputs[i]), out)) for i in ctx.var_inputs(node)}
    return OpBound(gains=gains, rule=rule, combine=combine)


@register("Add", "Sub", "Sum")
def add(node: Node, ctx: RuleContext) -> OpBound:
    return _combine(node, ctx, "sum", f"{node.op_type}: L_a + L_b (√copies for broadcast inputs)")


@register("Mean")
def mean(node: Node, ctx: RuleContext) -> OpBound:
    k = len([i for i in node.inputs if i])
    return _combine(node, ctx, "sum", f"Mean of {k}: (Σ L_i)/{k}", scale=1.0 / k)


@register("Max", "Min")
def max_min(node: Node, ctx: RuleContext) -> OpBound:
    # |max(a,b) - max(a',b')| <= max(|da|, |db|) <= sqrt(da² + db²) element-wise
    return _combine(node, ctx, "rss", f"{node.op_type}: √Σ L_i²")


@register("Concat")
def concat(node: Node, ctx: RuleContext) -> OpBound:
    return OpBound(gains={i: 1.0 for i in ctx.var_inputs(node)}, rule="Concat: √Σ L_i²", combine="rss")


@register("Where")
def where(node: Node, ctx: RuleContext) -> OpBound:
    if ctx.is_var(node.inputs[0]):
        raise NoGlobalConstant("Where with an input-dependent condition is discontinuous")
    out = ctx.shape(node.outputs[0])
    gains = {i: math.sqrt(broadcast_copies(ctx.shape(node.inputs[i]), out)) for i in ctx.var_inputs(node)}
    return OpBound(gains=gains, rule="Where (constant condition): √Σ L_i²", combine="rss")


@register("Expand")
def expand(node: Node, ctx: RuleContext) -> OpBound:
    c = broadcast_copies(ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]))
    return single_input(node, ctx, math.sqrt(c), f"Expand: √copies = √{c}")


@register("Tile")
def tile(node: Node, ctx: RuleContext) -> OpBound:
    c = broadcast_copies(ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]))
    return single_input(node, ctx, math.sqrt(c), f"Tile: √copies = √{c}")


@register("ReduceMean", "ReduceSum", "ReduceL1")
def reduce_linear(node: Node, ctx: RuleContext) -> OpBound:
    n_in = int(np.prod(ctx.shape(node.inputs[0])))
    n_out = max(1, int(np.prod(ctx.shape(node.outputs[0]))))
    r = max(1, n_in // n_out)  # elements per reduced group
    if node.op_type == "ReduceMean":
        return single_input(node, ctx, 1.0 / math.sqrt(r), f"ReduceMean over {r}: 1/√{r}")
    return single_input(node, ctx, math.sqrt(r), f"{node.op_type} over {r}: √{r}")


def selection_copies(node: Node, ctx: RuleContext, var_index: int = 0) -> int:
    """Run the node on an index tensor (1..N in the variable input) and count copies of each index.

    Uses onnx's reference evaluator on a one-node model; fails (NoGlobalConstant) if the output is not a
    pure selection of input elements.
    """
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    x_name = node.inputs[var_index]
    shape = ctx.shape(x_name)
    n = int(np.prod(shape))
    if n > 50_000_000:
        raise NoGlobalConstant(f"{node.op_type} on {n} elements is too large to count copies")
    index = np.arange(1, n + 1, dtype=np.float64).reshape(shape)
    inits = []
    for i, name in enumerate(node.inputs):
        if name and i != var_index:
            value = ctx.const(name)
            if value is None:
                raise NoGlobalConstant(f"{node.op_type} with input-dependent '{name}' is not supported")
            if node.op_type == "Pad" and i == 2:
                value = np.zeros_like(value, dtype=np.float64)  # the pad value: an offset, not a copy
            elif value.dtype.kind == "f":
                value = value.astype(np.float64)
            inits.append(numpy_helper.from_array(value, name))
    attrs = {k: v for k, v in node.attrs.items() if v != "<subgraph>"}
    one = helper.make_node(node.op_type, list(node.inputs), list(node.outputs[:1]), domain=node.domain, **attrs)
    g = helper.make_graph(
        [one],
        "selection",
        [helper.make_tensor_value_info(x_name, onnx.TensorProto.DOUBLE, list(shape))],
        [onnx.ValueInfoProto(name=node.outputs[0])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(ctx.graph.opset, 13))])
    try:
        (out,) = ReferenceEvaluator(model).run(None, {x_name: index})
    except Exception as exc:  # noqa: BLE001
        raise NoGlobalConstant(f"could not evaluate {node.op_type} to count copies ({exc})") from exc
    out = np.asarray(out, dtype=np.float64).ravel()
    if not np.all(out == np.round(out)) or out.min(initial=0) < 0 or out.max(initial=0) > n:
        raise NoGlobalConstant(f"{node.op_type} here is not a pure selection of input elements")
    counts = np.bincount(out.astype(np.int64), minlength=n + 1)[1:]
    return int(counts.max(initial=0))


@register("Pad")
def pad(node: Node, ctx: RuleContext) -> OpBound:
    mode = str(node.attr("mode", "constant"))
    if ctx.var_inputs(node) not in ([0], []):
        raise NoGlobalConstant("Pad with input-dependent pads or value is not supported")
    if mode == "constant":
        return single_input(node, ctx, 1.0, "Pad (constant): 1")
    c = selection_copies(node, ctx)
    return single_input(node, ctx, math.sqrt(c), f"Pad ({mode}): √copies = √{c}")


@register("Gather", "GatherElements", "GatherND")
def gather(node: Node, ctx: RuleContext) -> OpBound:
    var = ctx.var_inputs(node)
    if not var:
        return OpBound(gains={}, rule="constant")
    if var != [0]:
        # indices vary with the input: the data is still only selected, but each element can be picked by
        # every index position; bound the copies by the number of indices.
        if 0 in var:
            raise NoGlobalConstant(f"{node.op_type} with input-dependent indices is not supported")
        return OpBound(gains={}, rule="constant data")
    c = selection_copies(node, ctx)
    return single_input(node, ctx, math.sqrt(c), f"{node.op_type}: √copies = √{c}")


@register("Resize", "Upsample")
def resize(node: Node, ctx: RuleContext) -> OpBound:
    mode = str(node.attr("mode", "nearest"))
    if mode != "nearest":
        raise NoGlobalConstant(f"{node.op_type} with mode '{mode}' is not supported yet (only 'nearest')")
    c = selection_copies(node, ctx)
    return single_input(node, ctx, math.sqrt(c), f"{node.op_type} (nearest): √copies = √{c}")
