"""Tensor-level validation of an ONNX ``ModelProto``, before anything reads a tensor's values.

A protobuf that parses can still describe tensors no reader can honour: ``raw_data`` shorter or longer than
``shape × element size``, a ``float_data`` count that does not match the shape, negative or absurd
dimensions, an element type that does not exist, a ``Conv`` whose ``group`` does not divide its channels.
numpy, onnx's shape inference and the rules would fail on those far from the cause (``cannot reshape
array``, ``KeyError: 999``, a 4 TiB allocation) or, for ``group``, bound another operator than the model's.
:func:`validate_tensors` refuses each with one :class:`~lipcheck.errors.InvalidModelError` that names the
file, the tensor (or node) and what is wrong. It reads only sizes and counts, never tensor values, so it
costs nothing next to loading.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import onnx
from onnx import AttributeProto, TensorProto

from lipcheck.errors import InvalidModelError
from lipcheck.readlimits import MAX_DIM, MAX_INPUT_ELEMENTS

__all__ = ["ELEMENT_BITS", "validate_tensors"]

# Bits per element of every ONNX element type (onnx.proto's TensorProto.DataType); STRING has no fixed size.
ELEMENT_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8),
                     ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("FLOAT8E8M0", 8), ("UINT2", 2), ("INT2", 2),
                     ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)):
    if hasattr(TensorProto, _name):  # newer types exist only in newer onnx releases
        ELEMENT_BITS[int(getattr(TensorProto, _name))] = _bits

# The typed field that holds each element type's values when ``raw_data`` is not used, and how many entries
# one element takes there (complex: two floats).
_FIELD: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
}
_CONV_OPS = ("Conv", "ConvTranspose")


def validate_tensors(model: onnx.ModelProto, label: str | os.PathLike[str]) -> None:
    """Refuse, with one :class:`InvalidModelError` naming ``label`` and the tensor, a model whose tensors
    cannot be what they claim (every graph, subgraphs included):

    - an initializer or ``Constant`` tensor with an unknown element type, a negative dimension, or data
      (``raw_data`` or the typed field) whose length does not match its shape; tensors stored as external
      data are checked by the loader against their file instead;
    - a graph input, output or value_info with an unknown element type, a dimension above
      :data:`~lipcheck.readlimits.MAX_DIM`, or (graph inputs) more than
      :data:`~lipcheck.readlimits.MAX_INPUT_ELEMENTS` elements (negative and zero input dimensions are
      left to the loader, which treats them as dynamic: some exporters write -1 for "any");
    - a ``Conv`` / ``ConvTranspose`` whose ``group`` is not positive or does not divide the channels of its
      stored weight, or whose weight's channels disagree with the declared channels of its input.
    """
    where = os.fspath(label)
    for graph, context in _graphs(model.graph, ""):
        for tensor in graph.initializer:
            _check_tensor(tensor, f"initializer '{tensor.name}'{context}", where)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    _check_tensor(attr.t, f"tensor '{attr.name}' of node {_node(node)}{context}", where)
                elif attr.type == AttributeProto.TENSORS:
                    for k, t in enumerate(attr.tensors):
                        _check_tensor(t, f"tensor '{attr.name}[{k}]' of node {_node(node)}{context}", where)
        initializers = {t.name for t in graph.initializer}
        for kind, infos in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
            for vi in infos:
                _check_value_info(vi, f"{kind} '{vi.name}'{context}", where,
                                  is_input=kind == "input" and vi.name not in initializers)
    _check_conv_groups(model.graph, where)


def _graphs(graph: onnx.GraphProto, context: str) -> Iterator[tuple[onnx.GraphProto, str]]:
    """``graph`` and every subgraph in it (If branches, Loop / Scan bodies), with where each one sits."""
    yield graph, context
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g, f" in subgraph '{attr.name}' of node {_node(node)}{context}")
            elif attr.type == AttributeProto.GRAPHS:
                for k, g in enumerate(attr.graphs):
                    yield from _graphs(g, f" in subgraph '{attr.name}[{k}]' of node {_node(node)}{context}")


def _node(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"({node.op_type} -> {', '.join(node.output)})"


def _type_name(data_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(data_type))
    except ValueError:
        return str(data_type)


def _check_tensor(tensor: TensorProto, what: str, where: str) -> None:
    dims = list(tensor.dims)
    if tensor.data_type not in ELEMENT_BITS and tensor.data_type != TensorProto.STRING:
        raise InvalidModelError(f"{where}: {what} has an unknown element type {tensor.data_type}")
    negative = [d for d in dims if d < 0]
    if negative:
        raise InvalidModelError(f"{where}: {what} has a negative dimension {negative[0]} in its shape {dims}")
    if tensor.data_location == TensorProto.EXTERNAL or tensor.HasField("segment"):
        return  # external data: the loader checks its length against the file
    count = math.prod(dims)  # Python ints: no overflow, however absurd the dims
    type_name = _type_name(tensor.data_type)
    if tensor.HasField("raw_data") and tensor.data_type != TensorProto.STRING:
        needed = (count * ELEMENT_BITS[tensor.data_type] + 7) // 8
        have = len(tensor.raw_data)
        if have != needed:
            raise InvalidModelError(
                f"{where}: {what} has {have} bytes of raw_data, but its shape {dims} of {type_name} needs "
                f"{needed}: the tensor is truncated or corrupt"
            )
        return
    field, per_element = _FIELD.get(tensor.data_type, ("int32_data", 1))
    have = len(getattr(tensor, field))
    accepted = {count * per_element}
    bits = ELEMENT_BITS.get(tensor.data_type, 8)
    if field == "int32_data" and bits < 8:
        accepted.add(math.ceil(count * bits / 8))  # 4- and 2-bit types: packed into bytes, or one per entry
    if have not in accepted:
        raise InvalidModelError(
            f"{where}: {what} holds {have} values in {field}, but its shape {dims} of {type_name} needs "
            f"{count * per_element}: the tensor is truncated or corrupt"
        )


def _check_value_info(vi: onnx.ValueInfoProto, what: str, where: str, *, is_input: bool) -> None:
    if not vi.type.HasField("tensor_type"):
        return  # sequences, maps, optionals: not lipcheck's to read here
    tensor_type = vi.type.tensor_type
    elem = tensor_type.elem_type
    if elem != TensorProto.UNDEFINED and elem not in ELEMENT_BITS and elem != TensorProto.STRING:
        raise InvalidModelError(f"{where}: {what} has an unknown element type {elem}")
    if not tensor_type.HasField("shape"):
        return
    dims = [d.dim_value for d in tensor_type.shape.dim if d.HasField("dim_value")]
    huge = [d for d in dims if d > MAX_DIM]
    if huge:
        raise InvalidModelError(
            f"{where}: {what} has a dimension of {huge[0]}, more than the {MAX_DIM} (2^31-1) lipcheck accepts"
        )
    if is_input and dims and all(d > 0 for d in dims):
        count = math.prod(dims)
        if count > MAX_INPUT_ELEMENTS:
            raise InvalidModelError(
                f"{where}: {what} has {count} elements (shape {dims}), more than the {MAX_INPUT_ELEMENTS} "
                "(2^40) any machine could hold"
            )


def _declared_channels(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> dimension 1 (channels), where the model declares it as a fixed value."""
    out: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        shape = vi.type.tensor_type.shape if vi.type.HasField("tensor_type") else None
        if shape is not None and len(shape.dim) >= 2 and shape.dim[1].HasField("dim_value"):
            if shape.dim[1].dim_value > 0:
                out[vi.name] = int(shape.dim[1].dim_value)
    return out


def _check_conv_groups(graph: onnx.GraphProto, where: str) -> None:
    """Conv / ConvTranspose with a stored weight: ``group`` against the weight's channels, and against the
    input's channels where the model declares them. Conv weights are (M, C/group, k...); ConvTranspose
    weights are (C, M/group, k...)."""
    weights: Mapping[str, TensorProto] = {t.name: t for t in graph.initializer}
    channels = _declared_channels(graph)
    for node in graph.node:
        if node.op_type not in _CONV_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        group = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
        if group < 1:
            raise InvalidModelError(f"{where}: node {_node(node)} has group {group}; it must be at least 1")
        weight = weights.get(node.input[1])
        if weight is None:
            continue
        dims = [int(d) for d in weight.dims]
        if len(dims) < 3:
            raise InvalidModelError(
                f"{where}: node {_node(node)} has weight '{weight.name}' of shape {dims}; a convolution weight "
                "has rank 3 or more (channels out, channels in / group, kernel...)"
            )
        transpose = node.op_type == "ConvTranspose"
        grouped = dims[0]  # Conv: output channels; ConvTranspose: input channels
        if grouped % group:
            side = "input" if transpose else "output"
            raise InvalidModelError(
                f"{where}: node {_node(node)} has group {group}, which does not divide the {grouped} {side} "
                f"channels of its weight '{weight.name}' {dims}"
            )
        x_channels = channels.get(node.input[0])
        reads = dims[0] if transpose else dims[1] * group
        if x_channels is not None and x_channels != reads:
            how = f"{dims[0]} input channels" if transpose else f"{dims[1]} × group {group} = {reads} channels"
            raise InvalidModelError(
                f"{where}: node {_node(node)}: input '{node.input[0]}' has {x_channels} channels, but weight "
                f"'{weight.name}' {dims} reads {how}"
            )
