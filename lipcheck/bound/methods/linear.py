"""Linear segments: consecutive linear ops composed into ONE operator before it is bounded.

A segment is a sub-graph with one entry tensor and one exit tensor whose every node is linear in the tensors that
depend on the entry (Conv, Gemm, BatchNormalization, AveragePool, Flatten, Add of two branches, ...; constant
inputs are weights or shifts). Conv → Conv, Gemm → Gemm, GlobalAveragePool → Flatten → Gemm and the two branches
of a residual block that meet in an Add (x + Wx is the operator I + W) are all one linear map A, and ‖A‖ can be
far below the product of the parts' norms.

:func:`materialize` builds A densely (float64) when it is small enough: column j is the forward-mode derivative
(``torch.func.jvp``) of the segment at 0 in direction e_j, computed by :class:`~lipcheck.bound.torch_eval.
TorchEvaluator` with ONNX semantics. The tangent of a linear op is the op without its shift, so biases play no part.

Certified, not just computed: the same columns of the *absolute* segment (every weight replaced by its absolute
value, Sub by Add, Neg by Identity) give |A|abs ≥ |A| entry-wise. Each tangent is a sum of products, so with K the
total length of the inner products along the segment (Σ over its nodes), |fl(A) − A| ≤ γ_K·|A|abs (Higham,
Accuracy and Stability of Numerical Algorithms, §3.5, for any summation order; composition adds the lengths).
The error bound E = γ·(1+γ)²·fl(|A|abs), γ = :func:`rounding_margin`(K) − 1 (50× the textbook constant), covers
that and the rounding of |A|abs itself. Then σ(A) ≤ σ_upper(fl(A)) + √(‖E‖₁‖E‖_∞).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lipcheck.ir.graph import Graph, Node, TensorInfo
from lipcheck.norms.margin import EPS64, rounding_margin

# ops linear in their variable inputs (the tangent is a sum of products with constants); see linear_reason
_SHAPE_OPS = frozenset({
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Slice", "Split",
    "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Pad",
})
_SUMS = frozenset({"Add", "Sub", "Neg", "Sum"})
_POOLS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"})
LINEAR_OP_TYPES = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Mul", "Div", "BatchNormalization", "Resize", *_SHAPE_OPS, *_SUMS,
    *_POOLS,
})
DEFAULT_MAX_ENTRIES = 2**23  # entries of A (64 MiB in float64, twice with |A|abs)
_CHUNK = 256  # basis vectors per vmap call


@dataclass(frozen=True)
class DenseOperator:
    """A segment's operator: ``matrix`` (n_out × n_in, float64) with entry-wise ``error`` ≥ |A − matrix|."""

    matrix: np.ndarray
    error: np.ndarray
    entry: str
    exit: str
    nodes: tuple[str, ...]
    seconds: float


def linear_reason(node: Node, graph: Graph) -> str | None:
    """None if ``node`` is linear in its non-constant inputs (up to a constant shift), else why not."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"{node.label}: custom domain"
    if op not in LINEAR_OP_TYPES:
        return f"{node.label}: not a linear op"
    var = [i for i, name in enumerate(node.inputs) if name and not graph.is_const(name)]
    if not var:
        return f"{node.label}: no variable input"
    if op in ("Conv", "ConvTranspose", "BatchNormalization"):
        return None if var == [0] else f"{node.label}: a weight that is not constant"
    if op == "Gemm":
        if var != [0] or node.attr("transA", 0):
            return f"{node.label}: only x·B (constant B, no transA) is composed"
        return None
    if op in ("MatMul", "Mul"):
        return None if len(var) == 1 else f"{node.label}: a product of two variable tensors"
    if op == "Div":
        return None if var == [0] else f"{node.label}: a variable divisor"
    if op == "Resize":
        mode = node.attr("mode", "nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if var != [0] or mode not in ("nearest", "linear"):
            return f"{node.label}: only nearest / linear Resize of a variable input is composed"
        return None
    if op in _SHAPE_OPS or op in _POOLS:
        return None if var == [0] or op == "Concat" else f"{node.label}: a variable shape or index input"
    return None  # Add, Sub, Neg, Sum


def inner_length(node: Node, graph: Graph) -> int:
    """A generous count of the terms in one output's sum of products for ``node``'s tangent (+ a few roundings)."""
    op = node.op_type
    shapes = [graph.shapes.get(i, ()) for i in node.inputs]
    if op in ("Conv", "ConvTranspose"):
        w = np.shape(graph.constants[node.inputs[1]])
        return int(np.prod(w[1:])) * (int(np.prod(w[:2])) if op == "ConvTranspose" else 1) + 4
    if op == "Gemm":
        return int(shapes[0][-1]) + 4 if shapes[0] else 4
    if op == "MatMul":
        return max(int(s[-1]) if s else 1 for s in shapes) + 4
    if op in _POOLS:
        return int(np.prod(shapes[0])) + 4 if shapes[0] else 4
    if op == "Resize":
        return 64
    if op in ("BatchNormalization", "Div", "Mul"):
        return 8
    if op in _SUMS:
        return len(node.inputs) + 2
    return 1


def _absolute(nodes: Sequence[Node], graph: Graph) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The segment with every weight replaced by its absolute value, Sub by Add and Neg by Identity: its tangent
    map is |A_m|⋯|A_1| ≥ |A| entry-wise."""
    constants: dict[str, np.ndarray] = {}
    out: list[Node] = []

    def abs_input(node: Node, index: int) -> Node:
        name = node.inputs[index]
        if not name or not graph.is_const(name):
            return node
        value = np.asarray(graph.constants[name])
        if value.dtype.kind != "f":
            return node
        new = f"{name}::abs::{node.name}"
        constants[new] = np.abs(value)
        inputs = list(node.inputs)
        inputs[index] = new
        return replace(node, inputs=tuple(inputs))

    for node in nodes:
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "BatchNormalization"):
            node = abs_input(node, 1)
        elif op == "Gemm":
            node = abs_input(node, 1)
            attrs = dict(node.attrs)
            attrs["alpha"] = abs(float(attrs.get("alpha", 1.0)))
            node = replace(node, attrs=attrs)
        elif op in ("MatMul", "Mul", "Div"):
            for i, name in enumerate(node.inputs):
                if name and graph.is_const(name):
                    node = abs_input(node, i)
        elif op == "Sub":
            node = replace(node, op_type="Add")
        elif op == "Neg":
            node = replace(node, op_type="Identity")
        out.append(node)
    return out, constants


def _subgraph(graph: Graph, nodes: Sequence[Node], entry: str, exit_: str,
              extra_constants: dict[str, np.ndarray] | None = None) -> Graph:
    info = TensorInfo(entry, tuple(graph.shape(entry)), "float64")
    out = TensorInfo(exit_, tuple(graph.shape(exit_)), "float64")
    constants = dict(graph.constants)
    constants.update(extra_constants or {})
    return replace(graph, inputs=(info,), outputs=(out,), nodes=tuple(nodes), constants=constants, reference=None)


def _basis_batches(n: int, shape: tuple[int, ...], apply: object) -> np.ndarray:
    """``apply`` (a map of one basis tensor of ``shape`` to a flat vector) on every basis vector of R^n, vmapped in
    chunks of :data:`_CHUNK` (one at a time where an op cannot be batched); the results as rows."""
    import torch

    fn = apply  # type: ignore[assignment]
    blocks = []
    with torch.no_grad():
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            basis = torch.zeros((stop - start, n), dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            basis = basis.reshape(stop - start, *shape)
            try:
                out = torch.func.vmap(fn)(basis)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - an op vmap cannot batch: one vector at a time
                out = torch.stack([fn(e) for e in basis])  # type: ignore[operator]
            blocks.append(out.numpy())
    return np.concatenate(blocks, axis=0)


def _segment_function(sub: Graph) -> tuple[object, object]:
    """(f: the segment on its input tensor, flattened output; x0 = zeros of the input's shape), float64 torch."""
    import torch

    from lipcheck.bound.torch_eval import TorchEvaluator

    evaluator = TorchEvaluator(sub)
    x0 = torch.zeros(tuple(sub.inputs[0].shape), dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return evaluator(x)[0].reshape(-1)

    return f, x0


def _columns(sub: Graph, n_in: int) -> np.ndarray:
    """The matrix of the segment's tangent map at 0 (n_out × n_in), column by column (forward mode)."""
    import torch

    f, x0 = _segment_function(sub)
    cols = _basis_batches(n_in, tuple(sub.inputs[0].shape),
                          lambda t: torch.func.jvp(f, (x0,), (t,))[1])  # type: ignore[arg-type]
    return np.ascontiguousarray(cols.T)


def _rows(sub: Graph, n_out: int) -> np.ndarray:
    """The same matrix row by row (reverse mode): far fewer products when the segment narrows (GAP → Gemm)."""
    import torch

    f, x0 = _segment_function(sub)
    _, pullback = torch.func.vjp(f, x0)  # type: ignore[arg-type]
    return np.ascontiguousarray(_basis_batches(n_out, (n_out,), lambda u: pullback(u)[0].reshape(-1)))


def materialize(graph: Graph, nodes: Sequence[Node], entry: str, exit_: str,
                max_entries: int = DEFAULT_MAX_ENTRIES) -> DenseOperator | str:
    """The segment's operator with its error bound (module docstring), or the reason it is not built."""
    start = time.perf_counter()
    for node in nodes:
        reason = linear_reason(node, graph)
        if reason is not None:
            return reason
    try:
        n_in = math.prod(graph.shape(entry))
        n_out = math.prod(graph.shape(exit_))
    except KeyError as exc:
        return f"no static shape for {exc.args[0]!r}"
    if n_in * n_out > max_entries:
        return f"the composed operator would have {n_in}×{n_out} entries (limit {max_entries})"
    # a narrowing segment is built row by row (reverse mode): its sums run over a node's outputs instead of its
    # inputs, so the rounding bound below counts both
    by_rows = n_out < n_in
    try:
        abs_nodes, abs_consts = _absolute(nodes, graph)
        if by_rows:
            matrix = _rows(_subgraph(graph, nodes, entry, exit_), n_out)
            absolute = _rows(_subgraph(graph, abs_nodes, entry, exit_, abs_consts), n_out)
        else:
            matrix = _columns(_subgraph(graph, nodes, entry, exit_), n_in)
            absolute = _columns(_subgraph(graph, abs_nodes, entry, exit_, abs_consts), n_in)
    except Exception as exc:  # noqa: BLE001 - an op the evaluator refuses: not composed (the product stays)
        return f"the segment could not be evaluated ({type(exc).__name__}: {exc})"
    if matrix.shape != (n_out, n_in) or not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(absolute))):
        return "the composed operator is not finite"
    if np.any(absolute < 0):
        return "internal: the absolute segment is not non-negative"
    k = sum(max(inner_length(n, graph), math.prod(graph.shape(n.outputs[0])) if by_rows else 0) for n in nodes) + 2
    g = rounding_margin(2 * k) - 1.0
    error = absolute * (g * (1.0 + g) ** 2 * (1.0 + 8.0 * EPS64))
    return DenseOperator(matrix, error, entry, exit_, tuple(n.name for n in nodes), time.perf_counter() - start)


def error_norm(error: np.ndarray) -> float:
    """An upper bound on σ_max of the non-negative ``error``: √(‖E‖₁·‖E‖_∞), rounded up."""
    if error.size == 0:
        return 0.0
    one = float(error.sum(axis=0).max()) * rounding_margin(error.shape[0])
    inf = float(error.sum(axis=1).max()) * rounding_margin(error.shape[1])
    return math.nextafter(math.sqrt(one * inf), math.inf) if one > 0 and inf > 0 else 0.0


def operator_norm(op: DenseOperator, seed: int = 0) -> tuple[float, float]:
    """(certified upper bound on ‖A‖, power-iteration estimate) of a materialized segment."""
    from lipcheck.norms.matrix import matrix_norms

    norms = matrix_norms(op.matrix, seed=seed, skip={"exact": "not needed for a composed operator"})
    upper = norms.sigma_upper
    extra = error_norm(op.error)
    value = math.nextafter(upper + extra, math.inf) if extra > 0 else upper
    return value, float(norms.sigma_power)
