"""The graph IR every loader produces and every later stage reads.

ONNX op names are the vocabulary (``Conv``, ``Gemm``, ``Relu``...). Constants (weights, folded constant
subgraphs, static shapes) live in ``Graph.constants``; ``Graph.nodes`` holds only the nodes that depend on a
model input, in topological order. Every tensor that a node reads or writes has a static shape in
``Graph.shapes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int64", ...

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    domain: str = ""  # "" is the default ONNX domain
    fused_with: tuple[str, ...] = ()  # names of nodes folded into this one (e.g. a BatchNormalization)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.op_type})"


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    nodes: tuple[Node, ...]
    constants: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    # constant tensor name -> the name of the stored tensor it comes from (initializer, Constant node
    # output, or the largest stored tensor a folded constant subgraph reads), for reports and write-back.
    param_names: Mapping[str, str] = field(default_factory=dict)
    opset: int = 0
    source: str = ""  # the file it was read from, or a description
    # what the loader wants the report to say (e.g. "state dict nested under 'model_state_dict'")
    notes: tuple[str, ...] = ()
    # spectral_norm / weight_norm parametrizations found in a PyTorch model, with the numbers their audit
    # needs (lipcheck.loaders.parametrizations.AuditInput): the analysis matches them to layers by ``param``
    parametrizations: tuple[Any, ...] = ()
    # runs the ORIGINAL model (onnxruntime on the ONNX file, or the PyTorch module in eval mode) on the float
    # inputs in order: the reference the lower bound's torch evaluator is checked against
    reference: Callable[[list[np.ndarray]], list[np.ndarray]] | None = field(default=None, compare=False, repr=False)

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    @property
    def float_inputs(self) -> tuple[TensorInfo, ...]:
        return tuple(i for i in self.inputs if i.is_float)
