"""Graph-level facts about an ONNX model that the loader must get right before it bounds anything.

- :func:`validate_model`: onnx's checker with full checks (single static assignment, topological order, every
  read tensor defined, strict shape inference, so weights whose shapes contradict their use are refused) and the
  opset / IR versions this onnx understands. An invalid graph is refused with one line; it is never bounded as if
  it were valid (onnxruntime refuses it too).
- :func:`outer_scope_reads`: the tensors a node's subgraphs (If branches, Loop / Scan bodies, nested to any depth)
  read from the enclosing scope. They are inputs of that node like any other: a branch that reads the model's
  input makes the node depend on it.
- :func:`inline_constant_ifs`: an ``If`` whose condition is a constant is replaced by the branch it selects, so
  that the branch is bounded like inline nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from lipcheck.errors import LoadError

__all__ = ["inline_constant_ifs", "outer_scope_reads", "subgraphs", "validate_model"]

_CONTROL_FLOW = ("If", "Loop", "Scan")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # onnx prefixes messages with "[ShapeInferenceError] Inference error(s): (op_type:MatMul, node name: x): ..."
    return text[:300]


def validate_model(model: onnx.ModelProto, path: Path | None, label: str) -> None:
    """Refuse (one-line :class:`LoadError`) a model that is not a valid ONNX graph, or whose opset / IR version is
    newer than the installed onnx knows. ``path``: the file it came from (external data is checked relative to it)."""
    import onnx.defs

    max_ir = onnx.IR_VERSION
    if model.ir_version > max_ir:
        raise LoadError(
            f"{label}: IR version {model.ir_version} is newer than the installed onnx supports (≤ {max_ir}); "
            "upgrade onnx or re-export the model with an older IR version"
        )
    max_opset = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > max_opset:
            raise LoadError(
                f"{label}: opset {entry.version} is newer than the installed onnx and onnxruntime support "
                f"(≤ {max_opset}); re-export the model with an older opset"
            )
    _check_structure(model.graph, set(), label)
    try:
        try:
            if path is not None:
                # by path: external data is looked up beside the model, and the proto is read without its data
                onnx.checker.check_model(str(path), full_check=True)
            else:
                onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            # The checker wants a type and a shape on every graph input / output; exporters leave unknown-rank
            # outputs without them and onnxruntime runs such models. They get the structural checks above, the
            # tensor checks (onnx_tensors) and the checker's strict shape inference.
            if not any(
                f"Field '{f}' of '{o}' is required" in str(exc) for f, o in (("shape", "type"), ("type", "value_info"))
            ):
                raise
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise LoadError(f"{label}: invalid ONNX model: {_first_line(exc)}") from exc
    except (ValueError, RuntimeError) as exc:  # e.g. protobuf limits, unreadable external data
        raise LoadError(f"{label}: invalid ONNX model: {_first_line(exc)}") from exc


def _check_structure(graph: onnx.GraphProto, outer: set[str], label: str) -> None:
    """Every tensor defined once, every read defined before it (in this graph or an enclosing one): no duplicate
    definitions, no cycles, no reads of undefined tensors, at any subgraph depth."""
    defined: set[str] = set()

    def define(name: str, what: str) -> None:
        if name in defined or name in outer:
            raise LoadError(f"{label}: invalid ONNX model: tensor '{name}' is defined twice ({what})")
        defined.add(name)

    for t in graph.initializer:
        define(t.name, "initializer")
    for vi in graph.input:
        if vi.name not in defined:  # an input may name an initializer (its default value)
            define(vi.name, "graph input")
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in outer:
                raise LoadError(
                    f"{label}: invalid ONNX model: node '{node.name or node.op_type}' ({node.op_type}) reads "
                    f"'{name}', which is not defined before it (undefined tensor, or a cycle)"
                )
        for sub in subgraphs(node):
            _check_structure(sub, outer | defined, label)
        for name in node.output:
            if name:
                define(name, f"output of node '{node.name or node.op_type}'")
    for vi in graph.output:
        if vi.name not in defined and vi.name not in outer:
            raise LoadError(f"{label}: invalid ONNX model: graph output '{vi.name}' is never computed")


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by a node's attributes (If branches, Loop / Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _free_names(graph: onnx.GraphProto) -> list[str]:
    """The tensors ``graph`` (and the subgraphs inside it, to any depth) reads but does not define, in first-read
    order: what it takes from the scope around it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    free: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                free[name] = None
        for sub in subgraphs(node):
            for name in _free_names(sub):
                if name not in defined:
                    free[name] = None
        defined.update(o for o in node.output if o)
    for out in graph.output:
        if out.name not in defined:
            free[out.name] = None
    return list(free)


def outer_scope_reads(node: onnx.NodeProto) -> tuple[str, ...]:
    """The tensors the node's subgraphs read from the enclosing scope and that are not already its inputs."""
    explicit = set(node.input)
    reads: dict[str, None] = {}
    for sub in subgraphs(node):
        for name in _free_names(sub):
            if name not in explicit:
                reads[name] = None
    return tuple(reads)


def _all_names(graph: onnx.GraphProto, into: set[str]) -> set[str]:
    into.update(i.name for i in graph.input)
    into.update(o.name for o in graph.output)
    into.update(t.name for t in graph.initializer)
    for node in graph.node:
        into.update(node.input)
        into.update(node.output)
        for sub in subgraphs(node):
            _all_names(sub, into)
    return into


def _rename_reads(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename, in a nested subgraph, the reads of tensors that its enclosing (inlined) branch defined. The
    subgraph's own names are left alone: ONNX forbids a subgraph to redefine a name of an enclosing scope."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in mapping:
                node.input[k] = mapping[name]
        for sub in subgraphs(node):
            _rename_reads(sub, mapping)
    for out in graph.output:
        if out.name in mapping:
            out.name = mapping[out.name]


def _uses_external_data(graph: onnx.GraphProto) -> bool:
    from onnx.external_data_helper import uses_external_data

    if any(uses_external_data(t) for t in graph.initializer) or len(graph.sparse_initializer):
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and uses_external_data(attr.t):
                return True
        if any(_uses_external_data(sub) for sub in subgraphs(node)):
            return True
    return False


def _branch_nodes(
    node: onnx.NodeProto, branch: onnx.GraphProto, taken: set[str], prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that replace ``node`` (an If) by ``branch``: every tensor the branch defines is
    renamed to a fresh name (``taken`` holds every name in use and is updated), and each branch output feeds the
    If's output through an Identity."""
    mapping: dict[str, str] = {}
    counter = itertools.count()

    def fresh(name: str) -> str:
        new = f"{prefix}/{name}"
        while new in taken:
            new = f"{prefix}/{name}_{next(counter)}"
        taken.add(new)
        mapping[name] = new
        return new

    initializers: list[onnx.TensorProto] = []
    for t in branch.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = fresh(t.name)
        initializers.append(copy)
    nodes: list[onnx.NodeProto] = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        for k, name in enumerate(copy.input):
            if name in mapping:
                copy.input[k] = mapping[name]
        for sub in subgraphs(copy):
            _rename_reads(sub, mapping)
        for k, name in enumerate(copy.output):
            if name:
                copy.output[k] = fresh(name)
        copy.name = f"{prefix}/{copy.name or f'{copy.op_type}_{len(nodes)}'}"
        nodes.append(copy)
    for k, (out, target) in enumerate(zip(branch.output, node.output)):
        if target:
            nodes.append(
                helper.make_node("Identity", [mapping.get(out.name, out.name)], [target], name=f"{prefix}/output_{k}")
            )
    return nodes, initializers


def inline_constant_ifs(model: onnx.ModelProto, constant_condition: Callable[[str], np.ndarray | None]) -> int:
    """Replace, in place, every top-level ``If`` whose condition ``constant_condition`` can evaluate (it returns
    ``None`` for a condition that depends on an input) by the branch that condition selects. Returns how many were
    replaced; nested Ifs become top-level ones, for the caller's next round. An If whose branch holds external
    data or sparse initializers is left as it is (bounded as an If: unbounded when it reads a variable tensor)."""
    graph = model.graph
    taken = _all_names(graph, set())
    new_nodes: list[onnx.NodeProto] = []
    replaced = 0
    for index, node in enumerate(graph.node):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
            new_nodes.append(node)
            continue
        value = constant_condition(node.input[0])
        branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        if value is None or np.asarray(value).size != 1 or set(branches) != {"then_branch", "else_branch"}:
            new_nodes.append(node)
            continue
        which = "then_branch" if bool(np.asarray(value).reshape(())) else "else_branch"
        branch = branches[which]
        if _uses_external_data(branch) or len(branch.output) != len(node.output):
            new_nodes.append(node)
            continue
        prefix = f"{node.name or f'If_{index}'}/{which.split('_')[0]}"
        nodes, initializers = _branch_nodes(node, branch, taken, prefix)
        new_nodes.extend(nodes)
        graph.initializer.extend(initializers)
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return replaced
