"""Write a copy of an ONNX model whose layer weights are multiplied by given factors (``lipcheck normalize``).

The caller names each weight by the analysis row's ``param`` (see :func:`layer_weights`) and gives the factor
f its LAYER must be scaled by. Only weight values change: graph, node names, opsets, metadata, doc strings,
initializer order, dtypes and the set of externally stored tensors are kept; every tensor that is not
rescaled keeps its exact bytes. Three ways a weight is stored:

1. an initializer or a ``Constant`` node read by the layer itself: multiplied by f (by 1/f for a ``Div``'s
   divisor, since x / (c/f) = f · x / c);
2. a constant subgraph the loader folds (an exported spectral norm ``W / (uᵀ·W_mat·v)``, ``DequantizeLinear``
   of int8 weights, weight norm ``g · v / ‖v‖``...): ONE stored float tensor of the subgraph is rescaled by
   f or by 1/f, found by evaluating the subgraph with onnx's reference evaluator and checking that the layer's
   weight then equals f × what it was (the weight is homogeneous of degree +1 or -1 in that tensor: the SN
   vector u: σ̂ = uᵀWv, so u/f turns W/σ̂ into f·W/σ̂), and that nothing else the model computes changes;
3. several layers reading one tensor: it is rescaled once, and only when their factors agree.

Refused, with an error that names the weight and the tensors tried: weights no single stored tensor scales
(e.g. QuantizeLinear → DequantizeLinear of float weights: rounding is not homogeneous), tensors that other
nodes read too (a weight that is also a bias), sparse or string constants, factors that are not positive.

External data: the output stores exactly the tensors the source stored externally, at the same offsets, in
``<out name>.data`` (``<out name>.data.<k>`` for the k-th of several source files) next to the output; a
rescaled tensor whose bytes other tensors share is appended instead. Nothing is written unless every step
succeeds (:mod:`lipcheck.files`); the source and its data files are only ever read.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipcheck.errors import InvalidWeightsError, LoadError, UnsupportedModelError, UsageError
from lipcheck.files import atomic_outputs, check_output_path
from lipcheck.loaders import check_model_file
from lipcheck.loaders.onnx_loader import _NONDETERMINISTIC, _evaluate_constants, constant_slice

__all__ = ["WeightUse", "WrittenScale", "layer_weights", "write_scaled_onnx"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
_PROBE = 0.5  # a power of two: scaling by it is exact in every float format, so the probe sees only the math
_CHUNK = 1 << 20  # elements rescaled at a time (bounds the float64 working copy)
_ALIGN = 4096  # offset alignment of a tensor appended to a data file (what onnx.save uses for large tensors)
_DEFAULT = ("", "ai.onnx")


@dataclass(frozen=True)
class WrittenScale:
    """One weight the writer rescaled."""

    param: str  # the analysis row's param
    tensor: str  # the stored tensor actually rescaled
    factor: float  # what the LAYER's weight is multiplied by (the requested factor)
    tensor_factor: float  # what `tensor` was multiplied by (factor, or 1/factor for an SN `u` or a divisor)
    how: str  # human text, e.g. "initializer", "spectral-norm vector u (×1/f: W/σ̂ scales by f)"


@dataclass(frozen=True)
class WeightUse:
    """A layer input holding a weight: node ``node`` (``op_type``) reads constant ``tensor`` at ``index``."""

    node: str
    op_type: str
    index: int
    tensor: str
    divisor: bool = False  # a Div's divisor: the layer scales by 1 / (the tensor's scale)


# ---------------------------------------------------------------------------------------------------------------
# The model's constant structure (the same folding rules as lipcheck.loaders.onnx_loader.load_onnx)


@dataclass
class _Stored:
    """A stored tensor: an initializer, or the output of a Constant node."""

    name: str
    kind: str  # "initializer", "Constant node", "Constant node (value_floats)", ...
    elem_type: int  # TensorProto data type
    size: int
    tensor: TensorProto | None = None  # the initializer, or the Constant's `value`
    attr: onnx.AttributeProto | None = None  # the Constant's attribute (any form)
    node: onnx.NodeProto | None = None  # the Constant node
    slot: int | None = None  # index in _Source.slots (where external data is tracked)

    @property
    def feedable(self) -> bool:
        """Its value can be fed to the evaluator as an array (sparse and string Constants are evaluated)."""
        return self.attr is None or self.attr.name in ("value", "value_float", "value_floats", "value_int",
                                                        "value_ints")

    @property
    def rescalable(self) -> bool:
        return self.elem_type in _FLOAT_TYPES and (self.attr is None or self.attr.name in
                                                   ("value", "value_float", "value_floats"))


def _rank(s: _Stored) -> int:
    if s.tensor is not None:
        return len(s.tensor.dims)
    return 1 if s.attr is not None and s.attr.name in ("value_floats", "value_ints") else 0


@dataclass
class _ConstGraph:
    stored: dict[str, _Stored]
    const_names: set[str]
    origins: dict[str, frozenset[str]]  # constant tensor -> the stored tensors it is computed from
    fold_nodes: list[onnx.NodeProto]  # constant nodes other than Constant, in graph order
    producer: dict[str, int]  # tensor -> index in fold_nodes
    consumers: dict[str, list[int]]  # tensor -> indices in fold_nodes reading it
    live_nodes: list[tuple[str, onnx.NodeProto]]  # (the loader's node name, node)
    live_reads: dict[str, list[tuple[str, int]]]  # constant -> (reader, input index; -1: output or subgraph)
    sizes: dict[str, int]  # element counts as the loader counts them (see param_of)
    ranks: dict[str, int]  # ranks, counted the same way (the loader's tie-break)
    opsets: list[onnx.OperatorSetIdProto]
    ir_version: int

    def param_of(self, tensor: str) -> str:
        """The ``param`` onnx_loader.load_onnx reports for constant ``tensor``: the stored tensor it is, or the
        largest stored tensor its folded subgraph reads (ties: the higher rank, then first by sorted name). Like
        the loader, a Constant node's output counts as 1 element unless a live node reads it directly. A
        constant computed from no stored tensor (e.g. from shapes) is its own name."""
        anc = self.origins.get(tensor)
        if not anc:
            return tensor
        return max(sorted(anc), key=lambda a: (self.sizes.get(a, 0), self.ranks.get(a, 0)))

    def descendants(self, name: str) -> set[str]:
        """``name`` and every constant computed from it."""
        seen = {name}
        stack = [name]
        while stack:
            for i in self.consumers.get(stack.pop(), []):
                for o in self.fold_nodes[i].output:
                    if o and o not in seen:
                        seen.add(o)
                        stack.append(o)
        return seen


def _constant_stored(node: onnx.NodeProto, name: str) -> _Stored:
    if not node.attribute:
        return _Stored(name, "Constant node", 0, 0, node=node)
    a = node.attribute[0]
    if a.name == "value":
        return _Stored(name, "Constant node", a.t.data_type, math.prod(a.t.dims), tensor=a.t, attr=a, node=node)
    if a.name == "sparse_value":
        return _Stored(name, "Constant node (sparse_value)", a.sparse_tensor.values.data_type,
                       math.prod(a.sparse_tensor.dims), attr=a, node=node)
    sizes = {"value_float": (TensorProto.FLOAT, 1), "value_floats": (TensorProto.FLOAT, len(a.floats)),
             "value_int": (TensorProto.INT64, 1), "value_ints": (TensorProto.INT64, len(a.ints)),
             "value_string": (TensorProto.STRING, 1), "value_strings": (TensorProto.STRING, len(a.strings))}
    elem, size = sizes.get(a.name, (0, 0))
    return _Stored(name, f"Constant node ({a.name})", elem, size, attr=a, node=node)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a subgraph's nodes read (outer-scope names among them)."""
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _subgraph_reads(g)
    return names


def _const_graph(model: onnx.ModelProto, slots: Mapping[str, int]) -> _ConstGraph:
    g = model.graph
    stored: dict[str, _Stored] = {}
    for t in g.initializer:
        stored[t.name] = _Stored(t.name, "initializer", t.data_type, math.prod(t.dims), tensor=t,
                                 slot=slots.get(t.name))
    const = set(stored)
    origins: dict[str, frozenset[str]] = {n: frozenset({n}) for n in stored}
    fold: list[onnx.NodeProto] = []
    live: list[onnx.NodeProto] = []
    for node in g.node:
        ins = [i for i in node.input if i]
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if node.op_type == "Constant" and node.domain in _DEFAULT:
            for o in node.output:
                const.add(o)
                origins[o] = frozenset({o})
                stored[o] = _constant_stored(node, o)
                stored[o].slot = slots.get(o)
            continue
        if (all(i in const for i in ins) and node.op_type not in _NONDETERMINISTIC and not has_subgraph
                and node.domain in _DEFAULT):
            anc = frozenset().union(*(origins.get(i, frozenset()) for i in ins))
            for o in node.output:
                if o:
                    const.add(o)
                    origins[o] = anc
            fold.append(node)
            continue
        live.append(node)
    producer = {o: k for k, n in enumerate(fold) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(fold):
        for i in dict.fromkeys(i for i in n.input if i):
            consumers.setdefault(i, []).append(k)
    named: list[tuple[str, onnx.NodeProto]] = []
    used: set[str] = set()
    reads: dict[str, list[tuple[str, int]]] = {}
    for idx, node in enumerate(live):  # node names as the loader gives them
        label = node.name or f"{node.op_type}_{idx}"
        while label in used:
            label = f"{label}_{idx}"
        used.add(label)
        named.append((label, node))
        for k, i in enumerate(node.input):
            if i in const:
                reads.setdefault(i, []).append((label, k))
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for i in sorted(_subgraph_reads(sub) & const):
                    reads.setdefault(i, []).append((f"{label} (inside its subgraph)", -1))
    needed = {i for _, n in named for i in n.input if i in const}
    for o in g.output:
        if o.name in const:
            reads.setdefault(o.name, []).append(("graph output", -1))
            needed.add(o.name)
    sizes = {n: (s.size if s.kind == "initializer" or n in needed else 1) for n, s in stored.items()}
    ranks = {n: (_rank(s) if s.kind == "initializer" or n in needed else 0) for n, s in stored.items()}
    return _ConstGraph(stored, const, origins, fold, producer, consumers, named, reads, sizes, ranks,
                       list(model.opset_import), model.ir_version)


def layer_weights(model: onnx.ModelProto) -> dict[str, list[WeightUse]]:
    """Every weight an analysed layer of ``model`` reads, grouped by the ``param`` its analysis row shows."""
    return _weight_uses(_const_graph(model, {}))


def _weight_uses(cg: _ConstGraph) -> dict[str, list[WeightUse]]:
    """Every weight an analysed layer reads, grouped by the ``param`` its analysis row shows.

    The weight inputs are the ones lipcheck.rules.linear bounds: input 1 of Conv / ConvTranspose /
    BatchNormalization (γ) when only input 0 depends on the model input; Gemm's constant A or B; MatMul's and
    Mul's constant operand when the other is input-dependent; Div's constant divisor. Their params follow
    :meth:`_ConstGraph.param_of`, so the result agrees with onnx_loader's ``param_names``. (One divergence:
    the loader also folds ``Shape`` of statically shaped live tensors; a weight computed from such a shape
    is not found here.)
    """
    out: dict[str, list[WeightUse]] = {}
    for label, node in cg.live_nodes:
        if node.domain not in _DEFAULT:
            continue
        ins = list(node.input)
        var = [k for k, name in enumerate(ins) if name and name not in cg.const_names]
        op = node.op_type
        picks: list[tuple[int, bool]] = []
        if op in ("Conv", "ConvTranspose", "BatchNormalization") and var == [0] and len(ins) > 1 and ins[1]:
            picks = [(1, False)]
        elif op in ("Gemm", "MatMul", "Mul") and len(ins) >= 2 and len([k for k in var if k < 2]) == 1:
            weight = 1 if var[0] == 0 else 0
            if ins[weight]:
                picks = [(weight, False)]
        elif op == "Div" and var == [0] and len(ins) > 1:
            picks = [(1, True)]
        for k, divisor in picks:
            out.setdefault(cg.param_of(ins[k]), []).append(WeightUse(label, op, k, ins[k], divisor))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading the source (external data stays on disk until a value is needed)


@dataclass
class _ExternalRef:
    file: Path  # resolved
    offset: int
    length: int


@dataclass
class _Source:
    path: Path
    model: onnx.ModelProto
    slots: list[TensorProto]  # every TensorProto of the model, subgraphs included
    slot_of: dict[str, int]  # stored tensor (initializer, Constant output) -> slot
    external: dict[int, _ExternalRef] = field(default_factory=dict)  # slot -> where its bytes are

    @property
    def data_files(self) -> list[Path]:
        """The external data files, in order of first use."""
        return list(dict.fromkeys(ref.file for ref in self.external.values()))


def _all_slots(graph: onnx.GraphProto, out: list[TensorProto], names: dict[str, int] | None) -> None:
    for t in graph.initializer:
        if names is not None:
            names[t.name] = len(out)
        out.append(t)
    for sparse in graph.sparse_initializer:
        out.extend([sparse.values, sparse.indices])
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                if names is not None and node.op_type == "Constant" and node.domain in _DEFAULT and node.output:
                    names[node.output[0]] = len(out)
                out.append(a.t)
            elif a.type == onnx.AttributeProto.TENSORS:
                out.extend(a.tensors)
            elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                out.extend([a.sparse_tensor.values, a.sparse_tensor.indices])
            elif a.type == onnx.AttributeProto.SPARSE_TENSORS:
                for s in a.sparse_tensors:
                    out.extend([s.values, s.indices])
            elif a.type == onnx.AttributeProto.GRAPH:
                _all_slots(a.g, out, None)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _all_slots(g, out, None)


def _nbytes(t: TensorProto) -> int:
    """The bytes of ``t``'s raw data (4-bit types packed two to a byte)."""
    count = math.prod(t.dims)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)):
        return (count + 1) // 2
    try:
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"tensor '{t.name}' has an unknown data type {t.data_type}") from exc


def _read_source(path: Path) -> _Source:
    """The model without its external data, with every external reference checked (inside the model's folder,
    file present), as onnx_loader.read_model checks them."""
    check_model_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise LoadError(f"{path}: not an ONNX model, or the file is truncated or corrupt ({exc})") from exc
    if not model.graph.node:
        raise LoadError(f"{path}: the graph is empty (no nodes)")
    slots: list[TensorProto] = []
    slot_of: dict[str, int] = {}
    _all_slots(model.graph, slots, slot_of)
    src = _Source(path, model, slots, slot_of)
    base = path.parent.resolve()
    for k, t in enumerate(slots):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = Path(info.get("location", ""))
        target = (base / location).resolve()
        if not info.get("location") or location.is_absolute() or base not in target.parents:
            raise LoadError(f"{path}: tensor '{t.name}' points to external data '{location}' outside the model's "
                            "folder; refusing to read it")
        if not target.is_file():
            raise LoadError(f"{path}: external data file '{location}' for tensor '{t.name}' is missing")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else _nbytes(t)
        except (ValueError, TypeError) as exc:
            raise LoadError(f"{path}: tensor '{t.name}' has an unreadable external data entry ({exc})") from exc
        src.external[k] = _ExternalRef(target, offset, length)
    return src


class _Values:
    """Stored tensor values, read on demand (external bytes straight from the source's data file)."""

    def __init__(self, cg: _ConstGraph, src: _Source) -> None:
        self.cg, self.src = cg, src
        self._cache: dict[str, np.ndarray] = {}

    def get(self, name: str, scale: float | None = None) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._load(self.cg.stored[name])
        value = self._cache[name]
        return value if scale is None else _scaled(value, scale, name)

    def clear(self) -> None:
        self._cache.clear()

    def _load(self, st: _Stored) -> np.ndarray:
        if st.tensor is not None:
            if st.slot is not None and st.slot in self.src.external:
                return _read_external(st.tensor, self.src.external[st.slot])
            return numpy_helper.to_array(st.tensor)
        a = st.attr
        if a is None:
            raise UnsupportedModelError(f"{self.src.path}: Constant node '{st.name}' has no value")
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        return np.array(list(a.ints), dtype=np.int64)


def _read_external(t: TensorProto, ref: _ExternalRef) -> np.ndarray:
    with open(ref.file, "rb") as fh:
        fh.seek(ref.offset)
        data = fh.read(ref.length)
    if len(data) != ref.length or ref.length != _nbytes(t):
        raise LoadError(f"{ref.file}: external data of tensor '{t.name}' is truncated or has the wrong length "
                        f"({len(data)} bytes read, {_nbytes(t)} expected)")
    tmp = TensorProto()
    tmp.data_type = t.data_type
    tmp.dims.extend(t.dims)
    tmp.raw_data = data
    return numpy_helper.to_array(tmp)


def _scaled(value: np.ndarray, c: float, name: str) -> np.ndarray:
    """``value · c`` computed in float64 and rounded once back to ``value``'s dtype (chunked)."""
    flat = np.ascontiguousarray(value).reshape(-1)
    out = np.empty_like(flat)
    with np.errstate(over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            out[start:start + _CHUNK] = flat[start:start + _CHUNK].astype(np.float64) * c
    check = out.astype(np.float64)
    if not np.all(np.isfinite(check)) and np.all(np.isfinite(flat.astype(np.float64))):
        raise InvalidWeightsError(f"rescaling '{name}' by {c:.6g} overflows {value.dtype.name}")
    return out.reshape(value.shape)


def _evaluate(cg: _ConstGraph, values: _Values, names: Sequence[str], scale: Mapping[str, float],
              label: str) -> dict[str, np.ndarray]:
    """The constants ``names`` with the stored tensors in ``scale`` multiplied by their factor (the loader's
    evaluator: onnx's reference implementation, onnxruntime as fallback)."""
    out: dict[str, np.ndarray] = {}
    todo = []
    for n in names:
        if n in cg.stored and cg.stored[n].feedable:
            out[n] = values.get(n, scale.get(n))
        else:
            todo.append(n)
    if not todo:
        return out
    marked, leaves = constant_slice(cg.fold_nodes, todo, lambda t: t in cg.stored, cg.producer)
    sub = onnx.ModelProto()
    sub.ir_version = cg.ir_version
    sub.opset_import.extend(cg.opsets)
    nodes: list[onnx.NodeProto] = []
    for leaf in sorted(leaves):
        st = cg.stored[leaf]
        if st.feedable:
            sub.graph.initializer.append(numpy_helper.from_array(values.get(leaf, scale.get(leaf)), leaf))
        elif st.node is not None:
            nodes.append(st.node)
    nodes += [cg.fold_nodes[k] for k in marked]
    out.update(_evaluate_constants(sub, nodes, todo, label))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Choosing the stored tensor to rescale for each param

_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def _tolerance(*arrays: np.ndarray) -> float:
    """Relative agreement asked of a rescaled weight: 1e-6, looser where a half-precision format rounds more."""
    return max([1e-6] + [8 * _EPS[a.dtype.name] for a in arrays if a.dtype.name in _EPS])


def _close(new: np.ndarray, old: np.ndarray, ratio: float, tol: float) -> bool:
    """``new`` equals ``ratio · old``: bit for bit when not float, else to ``tol`` relative (Frobenius norm;
    non-finite entries, e.g. -inf masks, must stay where and what they are)."""
    if new.shape != old.shape or new.dtype != old.dtype:
        return False
    if old.dtype.name not in _EPS:
        return ratio == 1.0 and bool(np.array_equal(new, old))
    n = new.astype(np.float64)
    o = old.astype(np.float64) * ratio
    finite = np.isfinite(o)
    if not np.array_equal(np.isfinite(n), finite) or not np.array_equal(n[~finite], o[~finite], equal_nan=True):
        return False
    ref = float(np.linalg.norm(o[finite]))
    return float(np.linalg.norm(n[finite] - o[finite])) <= tol * ref


def _ratio(new: np.ndarray, old: np.ndarray) -> float:
    o = old.astype(np.float64).ravel()
    denom = float(o @ o)
    return float(new.astype(np.float64).ravel() @ o) / denom if denom else float("nan")


class _Chooser:
    """Decides, param by param, which stored tensor to multiply by what (nothing is written here)."""

    def __init__(self, cg: _ConstGraph, uses: Mapping[str, list[WeightUse]], values: _Values,
                 factors: Mapping[str, float], label: str) -> None:
        self.cg, self.uses, self.values, self.label = cg, uses, values, label
        self.factors = {p: float(f) for p, f in factors.items()}
        self.weight_reads: dict[str, list[WeightUse]] = {}
        for group in uses.values():
            for u in group:
                self.weight_reads.setdefault(u.tensor, []).append(u)
        self.decided: dict[str, WrittenScale] = {}
        self.chosen: dict[str, float] = {}  # stored tensor -> its factor
        self.folded: list[str] = []  # chosen tensors found by evaluation

    def run(self) -> tuple[list[WrittenScale], dict[str, float]]:
        for param, f in self.factors.items():
            if param in self.decided:
                continue
            if f == 1.0:
                self.decided[param] = WrittenScale(param, param, 1.0, 1.0, "unchanged (factor 1)")
                continue
            row = self._direct(param, f) or self._search(param, f)
            self.decided[param] = row
        self._verify()
        return [self.decided[p] for p in self.factors], dict(self.chosen)

    def _layers(self, param: str) -> str:
        return ", ".join(dict.fromkeys(f"{u.node} ({u.op_type})" for u in self.uses[param]))

    def _direct(self, param: str, f: float) -> WrittenScale | None:
        """The layers read the stored tensor ``param`` itself and nothing else reads it: multiply it."""
        st = self.cg.stored.get(param)
        group = self.uses[param]
        if st is None or not st.rescalable or param in self.cg.consumers or any(u.tensor != param for u in group):
            return None
        if set(self.cg.live_reads.get(param, [])) != {(u.node, u.index) for u in group}:
            return None
        divisor = {u.divisor for u in group}
        if len(divisor) > 1:
            raise UnsupportedModelError(
                f"{self.label}: '{param}' multiplies one layer and divides another ({self._layers(param)}): no "
                "rescaling of it scales both by the same factor")
        c = 1.0 / f if True in divisor else f
        self.chosen[param] = c
        how = st.kind + (", the divisor of Div (×1/f: x / (c/f) = f · x / c)" if True in divisor else "")
        return WrittenScale(param, param, f, c, how)

    def _expected(self, a: str, lam: float, param: str, f: float) -> float | None:
        """The factor constant ``a`` must show when the layers of ``param`` (and of the undecided params with
        the same factor) scale by ``lam``: 1 for everything else; None when no single factor fits."""
        reads = self.weight_reads.get(a, [])
        q = self.cg.param_of(a) if reads else None
        if q is None or not (q == param or (q not in self.decided and self.factors.get(q) == f)):
            return 1.0
        wanted = {1.0 / lam if u.divisor else lam for u in reads}
        if set(self.cg.live_reads.get(a, [])) - {(u.node, u.index) for u in reads}:
            wanted.add(1.0)  # also read as something that is not a weight (a bias, a shape...)
        return wanted.pop() if len(wanted) == 1 else None

    def _describe(self, a: str, f: float | None = None) -> str:
        """Who reads constant ``a``; with ``f``, why a weight of another param may not change with this one."""
        reads = self.weight_reads.get(a, [])
        if reads:
            q = self.cg.param_of(a)
            why = ""
            if f is not None and q in self.decided:
                why = f" (param '{q}', rescaled through '{self.decided[q].tensor}')"
            elif f is not None and q in self.factors and self.factors[q] != f:
                why = f" (param '{q}', factor {self.factors[q]:g}, not {f:g})"
            elif f is not None and q not in self.factors:
                why = f" (param '{q}', not to be rescaled)"
            return f"'{a}', the weight of {self._layers(q)}{why}"
        who = ", ".join(r for r, _ in self.cg.live_reads.get(a, [])[:3])
        return f"'{a}', read by {who}"

    def _search(self, param: str, f: float) -> WrittenScale:
        cg = self.cg
        group = self.uses[param]
        targets = {u.tensor for u in group}
        ancestors: set[str] = set().union(*(cg.origins.get(t, frozenset()) for t in targets))
        candidates = ([param] if param in ancestors else []) + sorted(ancestors - {param})
        if not candidates:
            raise UnsupportedModelError(
                f"{self.label}: the weight '{param}' of {self._layers(param)} is computed from no stored tensor "
                "(only from shapes): there is nothing to rescale")
        tried: list[str] = []
        try:
            for s in candidates:
                verdict = self._probe(param, f, s, targets)
                if isinstance(verdict, str):
                    tried.append(f"'{s}' ({verdict})")
                    continue
                degree, served = verdict
                c = f if degree == 1 else 1.0 / f
                self.chosen[s] = c
                self.folded.append(s)
                how = self._how(param, s, degree)
                if served:
                    how += f"; one rescaling for {', '.join(sorted({param, *served}))}, which share factor {f:g}"
                    for q in served:
                        self.decided[q] = WrittenScale(q, s, f, c, how)
                return WrittenScale(param, s, f, c, how)
        finally:
            self.values.clear()
        raise UnsupportedModelError(
            f"{self.label}: cannot rescale the weight '{param}' of {self._layers(param)} by {f:g}: no stored tensor "
            f"of its constant subgraph scales it by exactly that; tried {'; '.join(tried)}")

    def _probe(self, param: str, f: float, s: str, targets: set[str]) -> tuple[int, set[str]] | str:
        """Halve ``s`` and watch what changes: (degree, other params served) when the weight of ``param``
        halves (degree 1) or doubles (-1) and nothing else changes but same-factor weights; else why not."""
        cg = self.cg
        st = cg.stored[s]
        if not st.rescalable:
            dtype = helper.tensor_dtype_to_string(st.elem_type) if st.elem_type else "no value"
            return f"{st.kind}, {dtype.replace('TensorProto.', '').lower()}: not a float tensor to rescale"
        if s in self.chosen:
            owner = next(w.param for w in self.decided.values() if w.tensor == s)
            return f"already rescaled by {self.chosen[s]:g} for '{owner}'"
        affected = sorted(cg.descendants(s) & set(cg.live_reads))
        if not targets <= set(affected):
            return "it does not feed every layer that reads this weight"
        before = _evaluate(cg, self.values, affected, {}, self.label)
        probed = _evaluate(cg, self.values, affected, {s: _PROBE}, self.label)
        first = sorted(targets)[0]
        reasons: dict[int, str] = {}
        for degree in (1, -1):
            lam = _PROBE**degree
            served: set[str] = set()
            reason = ""
            for a in affected:
                want = self._expected(a, lam, param, f)
                tol = _tolerance(before[a], probed[a], self.values.get(s))
                if want is None:
                    reason = f"{self._describe(a)} is read in ways no single factor scales alike"
                elif not _close(probed[a], before[a], want, tol):
                    reason = f"it would also change {self._describe(a, f)}"
                elif want != 1.0 and cg.param_of(a) != param:
                    served.add(cg.param_of(a))
                if reason:
                    break
            missing = sorted(t for q in served for u in self.uses[q] if (t := u.tensor) not in affected)
            if not reason and missing:
                reason = f"it would change only some of the weights of {self.cg.param_of(missing[0])}"
            if not reason:
                return degree, served
            reasons[degree] = reason
        r = _ratio(probed[first], before[first])
        for degree in (1, -1):
            if math.isclose(r, _PROBE**degree, rel_tol=1e-3):
                return reasons[degree]
        return f"halving it scales the weight by {r:.4g}, not by 1/2 or 2"

    def _how(self, param: str, s: str, degree: int) -> str:
        """What ``s`` is to the weight, in words (recognises the exported patterns; generic text otherwise)."""
        cg = self.cg
        st = cg.stored[s]
        readers = [cg.fold_nodes[k] for k in cg.consumers.get(s, [])]
        targets = [u.tensor for u in self.uses[param]]
        if degree == 1:
            if all(t == s for t in targets):
                return st.kind
            if any(n.op_type == "DequantizeLinear" and n.input[1:2] == [s] for n in readers):
                return "subgraph input scale of DequantizeLinear"
            if any(n.op_type == "Mul" and self._is_direction(n, s) for n in readers):
                return "weight-norm magnitude g (×f: g·v/‖v‖ scales by f)"
            return f"{st.kind} in the weight's folded subgraph (×f: the weight is proportional to it)"
        divided = [cg.fold_nodes[cg.producer[t]] for t in targets if t in cg.producer]
        if any(p.op_type == "Div" and s in cg.origins.get(p.input[1], frozenset()) for p in divided):
            for n in readers:
                if n.op_type == "MatMul":  # σ̂ = uᵀ·(W_mat·v): u is MatMul's left operand, v a right one
                    return f"spectral-norm vector {'u' if n.input[0] == s else 'v'} (×1/f: W/σ̂ scales by f)"
        return f"{st.kind} in the weight's folded subgraph (×1/f: the weight is inversely proportional to it)"

    def _is_direction(self, mul: onnx.NodeProto, g: str) -> bool:
        """``mul`` multiplies ``g`` by a Div of one stored tensor by a function of itself (v / ‖v‖)."""
        cg = self.cg
        other = [i for i in mul.input if i and i != g]
        if len(other) != 1 or other[0] not in cg.producer:
            return False
        div = cg.fold_nodes[cg.producer[other[0]]]
        return div.op_type == "Div" and len(div.input) > 1 and cg.origins.get(div.input[0]) == \
            cg.origins.get(div.input[1]) and g not in cg.origins.get(div.input[0], frozenset())

    def _verify(self) -> None:
        """With every choice applied at once, each folded weight scales by its factor and nothing else moves."""
        cg = self.cg
        scale = dict(self.chosen)
        for s in self.folded:
            affected = sorted(cg.descendants(s) & set(cg.live_reads))
            try:
                before = _evaluate(cg, self.values, affected, {}, self.label)
                after = _evaluate(cg, self.values, affected, scale, self.label)
            finally:
                self.values.clear()
            for a in affected:
                reads = self.weight_reads.get(a, [])
                row = self.decided.get(cg.param_of(a)) if reads else None
                lam = row.factor if row is not None else 1.0
                wanted = {1.0 / lam if u.divisor else lam for u in reads} or {1.0}
                want = wanted.pop()
                if wanted or not _close(after[a], before[a], want, _tolerance(before[a], after[a])):
                    raise UnsupportedModelError(
                        f"{self.label}: rescaling '{s}' by {scale[s]:.6g} changes {self._describe(a)} by "
                        f"×{_ratio(after[a], before[a]):.6g}, not by ×{want:.6g} (rounding in its dtype?)")


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_scaled_onnx(source: Path, out: Path, factors: Mapping[str, float]) -> list[WrittenScale]:
    """Write ``source`` to ``out`` with the weight of every ``param`` in ``factors`` scaled so that its layers
    are multiplied by the factor; return what was rescaled, in the order of ``factors``.

    Raises :class:`UsageError` for an unknown param, a factor that is not positive and finite, or an output
    that would overwrite the source or its data files; :class:`UnsupportedModelError` when no stored tensor
    scales a weight exactly; :class:`LoadError` for an unreadable source. Nothing is written on error.
    """
    source, out = Path(source), Path(out)
    label = str(source)
    src = _read_source(source)
    cg = _const_graph(src.model, src.slot_of)
    uses = _weight_uses(cg)
    _check_factors(factors, uses, cg, label)
    data_map = _output_paths(src, out)
    rows, chosen = _Chooser(cg, uses, _Values(cg, src), factors, label).run()
    _write(src, cg, chosen, data_map, check_output_path(out))
    return rows


def _check_factors(factors: Mapping[str, float], uses: Mapping[str, list[WeightUse]], cg: _ConstGraph,
                   label: str) -> None:
    for param, f in factors.items():
        try:
            value = float(f)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"the factor for '{param}' must be a positive finite number, got {f!r}")
        if param not in uses:
            known = sorted(uses)
            shown = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
            what = (f"'{param}' is stored in {label}, but no weighted layer (Conv, ConvTranspose, Gemm, MatMul, Mul, "
                    "Div, BatchNormalization) reads it as its weight" if param in cg.stored
                    else f"{label} has no layer weight named '{param}'")
            raise UsageError(f"{what}; its layer weights are: {shown or 'none'}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _output_paths(src: _Source, out: Path) -> dict[Path, Path]:
    """Source data file -> the output's data file; refuses outputs that would overwrite any source file."""
    out = check_output_path(out)  # never a folder, device, FIFO or socket; a symlink: the file it points to
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist")
    files = src.data_files
    names = [f"{out.name}.data"] if len(files) == 1 else [f"{out.name}.data.{k}" for k in range(1, len(files) + 1)]
    data_map = {f: out.parent / n for f, n in zip(files, names)}
    for path in data_map.values():
        check_output_path(path)  # as a path: a symlink stays, the model refers to the link's name
    for p in [*data_map.values(), out]:
        for q in [src.path, *files]:
            if _same_file(p, q):
                what = "model" if q == src.path else "external data file"
                raise UsageError(f"writing {p} would overwrite the input {what} {q}: choose another output name")
    return data_map


def _write(src: _Source, cg: _ConstGraph, chosen: Mapping[str, float], data_map: Mapping[Path, Path],
           out: Path) -> None:
    external: dict[int, float] = {}
    for name, c in chosen.items():
        st = cg.stored[name]
        if st.slot is not None and st.slot in src.external:
            external[st.slot] = c
        else:
            _rescale_embedded(st, c)
    finals = [*data_map.values(), out]  # the data files renamed into place before the model that refers to them
    with atomic_outputs(finals) as temps:
        temp_of = dict(zip(data_map, temps))
        for file, temp in temp_of.items():
            shutil.copyfile(file, temp)  # same offsets: every tensor not rescaled keeps its bytes
        for slot, c in external.items():
            _rescale_external(src, slot, c, temp_of)
        for slot, ref in src.external.items():
            _set_external(src.slots[slot], location=data_map[ref.file].name)
        _write_model(src.model, temps[-1])


def _write_model(model: onnx.ModelProto, path: Path) -> None:
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())


def _rescale_embedded(st: _Stored, c: float) -> None:
    a = st.attr
    if a is not None and a.name == "value_float":
        a.f = float(_scaled(np.array(a.f, dtype=np.float32), c, st.name))
    elif a is not None and a.name == "value_floats":
        new = _scaled(np.array(list(a.floats), dtype=np.float32), c, st.name)
        del a.floats[:]
        a.floats.extend(new.tolist())
    elif st.tensor is not None:
        _set_values(st.tensor, _scaled(numpy_helper.to_array(st.tensor), c, st.name))
    else:  # never chosen: _Stored.rescalable
        raise UnsupportedModelError(f"'{st.name}' ({st.kind}) cannot be rescaled")


def _set_values(t: TensorProto, value: np.ndarray) -> None:
    """New values into ``t``, in the field it stored them in (raw_data, float_data, double_data, int32_data)."""
    if t.HasField("raw_data"):
        t.raw_data = numpy_helper.from_array(value).raw_data
    elif t.data_type == TensorProto.FLOAT:
        del t.float_data[:]
        t.float_data.extend(value.ravel().tolist())
    elif t.data_type == TensorProto.DOUBLE:
        del t.double_data[:]
        t.double_data.extend(value.ravel().tolist())
    else:  # float16 / bfloat16: bit patterns in int32_data
        del t.int32_data[:]
        t.int32_data.extend(value.view(np.uint16).ravel().astype(np.int32).tolist())


def _rescale_external(src: _Source, slot: int, c: float, temp_of: Mapping[Path, Path]) -> None:
    """Rescale an external tensor in the output's copy of its data file: in place, or appended (aligned) when
    other tensors share its bytes."""
    t = src.slots[slot]
    ref = src.external[slot]
    data = numpy_helper.from_array(_scaled(_read_external(t, ref), c, t.name)).raw_data
    shared = any(k != slot and o.file == ref.file and o.offset < ref.offset + ref.length
                 and ref.offset < o.offset + o.length for k, o in src.external.items())
    with open(temp_of[ref.file], "r+b") as fh:
        if shared:
            end = fh.seek(0, os.SEEK_END)
            offset = -(-end // _ALIGN) * _ALIGN
            _set_external(t, offset=str(offset), length=str(len(data)))
        else:
            offset = ref.offset
        fh.seek(offset)
        fh.write(data)


def _set_external(t: TensorProto, **entries: str) -> None:
    """Set external-data entries (location, offset, length); a ``checksum`` no longer holds and is dropped."""
    kept = [(e.key, e.value) for e in t.external_data if e.key not in entries and e.key != "checksum"]
    order = [e.key for e in t.external_data]
    del t.external_data[:]
    values = dict(kept) | entries
    for key in [k for k in order if k in values] + [k for k in entries if k not in order]:
        entry = t.external_data.add()
        entry.key, entry.value = key, values[key]

