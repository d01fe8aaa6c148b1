"""Recognize an MLP chain in a lipcheck Graph and bound it with :func:`lipcheck.bound.methods.lipsdp.lipsdp`.

A chain is one path from the single float input to the single output through: Gemm (constant B, transA = 0) and
MatMul (constant 2-D right operand), constant Add/Sub (biases: shifts do not change a Lipschitz constant),
Flatten / Reshape that keep the leading (batch) axis, and element-wise activations with a known slope interval
(:mod:`.slopes`). The map acts row by row, so the constant of one row is the constant of the whole tensor.
Consecutive linear layers get an identity "activation" [1, 1]; two activations in a row compose into the product of
their intervals; an activation before the first or after the last linear layer gets an identity matrix beside it.
Gemm's alpha factors out of the chain (scalars commute with the diagonal slope matrices), exactly or rounded up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lipcheck.bound.methods.base import MethodResult
from lipcheck.bound.methods.lipsdp import Chain, lipsdp
from lipcheck.bound.methods.slopes import slope_interval
from lipcheck.ir.graph import Graph, Node
from lipcheck.norms.margin import EPS64

_SHIFTS = ("Add", "Sub")
_SHAPE_OPS = ("Flatten", "Reshape", "Identity", "Dropout")


def masked_node(graph: Graph) -> str | None:
    """Why the graph cannot be bounded because of constant ±inf entries (:mod:`lipcheck.rules.masks`: a mask that
    reaches an op that does not follow it), naming the node; None when there is none. The tighter methods see a
    constant Add as a shift whatever its values, so they must not run where the per-op rules refuse."""
    from lipcheck.rules.masks import refusal

    for node in graph.nodes:
        reason = refusal(node, graph)
        if reason is not None:
            return f"{node.label}: {reason}"
    return None


def find_chain(graph: Graph, restrict: Callable[[Node], np.ndarray | None] | None = None
               ) -> tuple[Chain, float] | str:
    """(chain, factor) with L(model) ≤ factor·L(chain), or the reason the graph is not such a chain.

    ``restrict`` (local bounds on a region): activation node -> per-element bounds d on |φ'| over the region (the
    node's output shape; None: no restriction). Where one activation alone sits between W_i and W_{i+1}, its
    elements with d = 0 in every row are constant on the region and are dropped (rows of W_i, columns of W_{i+1}:
    the restricted weight matrices of Local-Lip), and a slope interval [α, β] with α ≥ 0 becomes [α, min(β, max d)].
    The chain then bounds the model on the region only."""
    float_inputs = graph.float_inputs
    if len(float_inputs) != 1 or len(graph.outputs) != 1:
        return "the chain method needs one float input and one output"
    current = float_inputs[0].name
    items: list[tuple[str, Any, Node]] = []  # ("W", matrix) or ("φ", (α, β)), and the node
    factor = 1.0
    masked = masked_node(graph)
    if masked is not None:
        return masked
    for node in graph.nodes:
        var = [i for i in node.inputs if i and not graph.is_const(i)]
        if var != [current] or len(node.outputs) != 1:
            return f"{node.label} does not continue a single path"
        if len(graph.consumers(current)) != 1 and current != float_inputs[0].name:
            return f"the output of the node before {node.label} is read more than once"
        step = _step(node, graph, current)
        if isinstance(step, str):
            return step
        kind, value, scale = step
        factor *= scale
        if kind != "shape":
            items.append((kind, value, node))
        current = node.outputs[0]
    if current != graph.outputs[0].name:
        return "the path does not end at the model output"
    weights: list[np.ndarray] = []
    slopes: list[tuple[float, float]] = []
    acts: list[list[Node]] = []  # the activation nodes behind each slope interval
    pending: tuple[float, float] | None = None
    pending_nodes: list[Node] = []
    dim = _row_size(graph, float_inputs[0].name)
    for kind, value, node in items:
        if kind == "φ":
            pending = value if pending is None else _compose(pending, value)
            pending_nodes.append(node)
            if not weights:
                weights.append(np.eye(dim))
            continue
        if weights:
            slopes.append(pending if pending is not None else (1.0, 1.0))
            acts.append(pending_nodes)
        elif pending is not None:
            return "internal: activation bookkeeping"
        pending, pending_nodes = None, []
        if weights and value.shape[1] != weights[-1].shape[0]:
            return "layer sizes do not match"
        weights.append(value)
    if pending is not None:
        slopes.append(pending)
        acts.append(pending_nodes)
        weights.append(np.eye(weights[-1].shape[0]))
    if not weights:
        return "no linear layer"
    if restrict is not None:
        restrict_chain(weights, None, slopes, acts, restrict, rows=True)
    try:
        return Chain(tuple(weights), tuple(slopes)), factor
    except ValueError as exc:
        return str(exc)


def restrict_chain(weights: list[np.ndarray], errors: list[np.ndarray | None] | None,
                   slopes: list[tuple[float, float]], acts: Sequence[Sequence[Node]],
                   restrict: Callable[[Node], np.ndarray | None], rows: bool) -> None:
    """Restrict a chain to a region in place (:func:`find_chain`'s ``restrict``): ``acts[i]`` are the activation
    nodes between weights[i] and weights[i + 1]; ``rows``: the activation acts on the last axis of each row of a
    batch (an MLP chain; an element is dropped only where it is constant in every row), else on the whole tensor
    flattened (a chain of materialized operators). Error bounds are cut like their matrices."""
    for i, nodes in enumerate(acts):
        d = restrict(nodes[0]) if len(nodes) == 1 else None
        if d is None or d.ndim == 0:
            continue
        d_vec = np.max(d.reshape(-1, d.shape[-1]), axis=0) if rows else d.reshape(-1)
        if d_vec.size != weights[i].shape[0]:
            continue
        keep = d_vec > 0
        weights[i], weights[i + 1] = weights[i][keep], weights[i + 1][:, keep]
        if errors is not None:
            errors[i] = None if errors[i] is None else errors[i][keep]
            errors[i + 1] = None if errors[i + 1] is None else errors[i + 1][:, keep]
        a, b = slopes[i]
        if a >= 0.0 and keep.any():
            slopes[i] = (a, max(a, min(b, float(np.max(d_vec[keep])))))


def chain_bound(graph: Graph, **options: Any) -> MethodResult | None:
    """The lipsdp method's certified value for ``graph`` if it is a chain (None otherwise); ``options`` go to
    :func:`lipsdp`. The reason a graph is not a chain is in :func:`find_chain`."""
    found = find_chain(graph)
    if isinstance(found, str):
        return None
    chain, factor = found
    result = lipsdp(chain, **options)
    if result.value is None or factor == 1.0:
        return result
    value = result.value * factor * (1.0 + 2.0 * EPS64) if result.value > 0 else 0.0
    return MethodResult(result.method, value, result.seconds, result.certified, {**result.detail, "factor": factor})


def _row_size(graph: Graph, name: str) -> int:
    shape = graph.shape(name)
    return int(shape[-1]) if shape else 1


def _compose(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    """Slopes of φ2∘φ1: products s2·s1 of slopes in the two intervals (interval multiplication)."""
    products = [a * b for a in first for b in second]
    return (min(products), max(products))


def _step(node: Node, graph: Graph, current: str) -> tuple[str, Any, float] | str:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"{node.label}: custom domain"
    if op == "Gemm":
        if node.attr("transA", 0):
            return f"{node.label}: transA on the variable input"
        if node.inputs[0] != current:
            return f"{node.label}: the variable is not the first input"
        b = np.asarray(graph.constants[node.inputs[1]], dtype=np.float64)
        w = b if node.attr("transB", 0) else b.T  # y = α·x·B' => W = α·B'ᵀ
        return "W", np.ascontiguousarray(w), _scale(float(node.attr("alpha", 1.0)))
    if op == "MatMul":
        if node.inputs[0] != current or np.ndim(graph.constants[node.inputs[1]]) != 2:
            return f"{node.label}: only x @ (constant matrix) is a chain layer"
        if len(graph.shape(current)) < 1:
            return f"{node.label}: scalar input"
        return "W", np.ascontiguousarray(np.asarray(graph.constants[node.inputs[1]], dtype=np.float64).T), 1.0
    if op in _SHIFTS:
        other = [i for i in node.inputs if i != current]
        if len(other) != 1 or not graph.is_const(other[0]):
            return f"{node.label}: not a constant shift"
        if graph.shape(node.outputs[0]) != graph.shape(current):
            return f"{node.label}: the constant broadcasts the tensor to a larger shape"
        if op == "Sub" and node.inputs[0] != current:
            return "φ", (-1.0, -1.0), 1.0  # c − x: a negation
        return "shape", None, 1.0
    if op in _SHAPE_OPS:
        before, after = graph.shape(current), graph.shape(node.outputs[0])
        if op in ("Identity", "Dropout") or (before and after and len(after) == 2 and before[0] == after[0]
                                               and math.prod(before) == math.prod(after)):
            return "shape", None, 1.0
        return f"{node.label}: a reshape that does not flatten rows"
    if op == "PRelu":
        s = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if s is None:
            return f"{node.label}: input-dependent slope"
        lo, hi = float(np.min(s)), float(np.max(s))
        return "φ", (min(lo, 1.0), max(hi, 1.0)), 1.0
    interval = slope_interval(op, _float_attrs(node.attrs))
    if interval is None:
        return f"{node.label}: not a slope-restricted element-wise activation"
    return "φ", interval, 1.0


def _float_attrs(attrs: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in attrs.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _scale(alpha: float) -> float:
    """|α| as an upper bound (exact: a float's absolute value)."""
    return abs(alpha)
