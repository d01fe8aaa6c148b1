"""ONNX → lipcheck graph IR.

What this does, in order:
1. read the file (clear errors for missing / not ONNX / truncated / corrupt) WITHOUT its external data: every
   externally stored tensor becomes a read-only ``np.memmap`` on its data file (only from inside the model's
   folder, offset and length checked against the file), so neither the protobuf nor memory ever holds every
   weight: the proto stays small (no 2 GB protobuf limit for shape inference) and each weight is read when its
   layer is bounded. Small integer tensors (shapes, axes) are read into the proto for shape inference;
2. fix the input shapes (``--input-shape`` for dynamic dims) and run ``onnx.shape_inference``;
3. fold every constant subgraph (initializers, ``Constant`` nodes, W / σ chains of exported spectral norms,
   ``DequantizeLinear``, ``Shape`` of statically shaped tensors...) with onnx's reference evaluator;
4. keep the input-dependent nodes, in topological order, with static shapes for every tensor they touch
   (shape inference first; onnxruntime on a zero input fills what inference could not).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lipcheck.arrays import nonfinite_kind, release_pages
from lipcheck.errors import InputShapeError, InvalidWeightsError, LoadError
from lipcheck.ir.graph import Graph, Node, TensorInfo
from lipcheck.loaders import check_model_file
from lipcheck.loaders.onnx_graph import inline_constant_ifs, outer_scope_reads, subgraphs, validate_model

InputShapes = Sequence[int] | Mapping[str, Sequence[int]] | None

# Ops whose output is not a function of their inputs: never folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
# External integer / bool tensors up to this size are read into the proto: shape inference needs the values of
# shape-like initializers (Reshape's shape, axes...). Everything else stays in its file.
INLINE_MAX_BYTES = 1 << 20
# Element types stored one value per fixed-size element (no packing): these can be memory-mapped as they are.
_PACKED_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, getattr(onnx.TensorProto, "FLOAT4E2M1", -1),
                 onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED}


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown / undefined element type
        return "unknown"


def read_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Read an ONNX file without loading its external data; every failure is a one-line :class:`LoadError`.

    Returns the model and, for each initializer stored as external data, its value as a read-only memmap
    (see :func:`map_external_data`); those initializers keep their external references in the proto.
    """
    p = Path(path)
    check_model_file(p)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise LoadError(f"{p}: not an ONNX model, or the file is truncated or corrupt ({_short(exc)})") from exc
    if not model.graph.node and not model.graph.initializer and not model.graph.input:
        raise LoadError(f"{p}: not an ONNX model (no graph found in the file)")
    from lipcheck.loaders.onnx_tensors import validate_tensors

    validate_tensors(model, p)  # data lengths, dims, element types, Conv groups: one InvalidModelError
    return model, map_external_data(model, p)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def map_external_data(model: onnx.ModelProto, path: Path) -> dict[str, np.ndarray]:
    """Map every externally stored tensor of ``model`` (read from ``path``) without reading it into memory.

    Initializers: name -> read-only ``np.memmap`` (mode ``"r"``: the file can never be modified through it) with
    the tensor's dtype and shape. Read into the proto instead (external reference removed): ``Constant`` node
    values (the constant evaluator needs them), integer / bool initializers up to :data:`INLINE_MAX_BYTES`
    (shape inference reads them), and element types that cannot be mapped (packed 4-bit, strings).
    Refuses, with one-line :class:`LoadError` s: locations outside the model's folder, missing files,
    lengths that do not match the tensor, and data past the end of the file.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    base = path.parent.resolve()
    mapped: dict[str, np.ndarray] = {}
    n_initializers = len(model.graph.initializer)
    for k, tensor in enumerate(_all_tensors(model)):  # initializers first
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
            offset = int(info.offset or 0)
            declared = int(info.length) if info.length is not None and int(info.length) >= 0 else None
        except (ValueError, TypeError) as exc:
            raise LoadError(f"{path}: tensor '{tensor.name}' has an unreadable external data entry ({exc})") from exc
        location = Path(info.location or "")
        target = (base / location).resolve()
        if not info.location or location.is_absolute() or base not in target.parents:
            raise LoadError(
                f"{path}: tensor '{tensor.name}' points to external data '{info.location}' outside the "
                "model's folder; refusing to read it"
            )
        if not target.is_file():
            raise LoadError(f"{path}: external data file '{info.location}' for tensor '{tensor.name}' is missing")
        count = math.prod(int(d) for d in tensor.dims)
        mappable = tensor.data_type not in _PACKED_TYPES
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        except Exception:  # noqa: BLE001 - unknown element type
            raise LoadError(f"{path}: tensor '{tensor.name}' has an unknown data type {tensor.data_type}") from None
        if tensor.data_type == onnx.TensorProto.STRING:
            raise LoadError(f"{path}: string tensor '{tensor.name}' stored as external data is not supported")
        expected = count * dtype.itemsize if mappable else (count + 1) // 2  # the packed types: 4-bit
        if declared is not None and declared != expected:
            raise LoadError(f"{path}: tensor '{tensor.name}' declares {declared} bytes of external data, but its "
                            f"shape {list(tensor.dims)} and type need {expected}")
        size = target.stat().st_size
        if offset < 0 or offset + expected > size:
            raise LoadError(
                f"{path}: external data file '{info.location}' is truncated: tensor '{tensor.name}' needs bytes "
                f"{offset}..{offset + expected} but the file has {size}"
            )
        shape = tuple(int(d) for d in tensor.dims)
        inline = (
            k >= n_initializers
            or not mappable
            or (dtype.kind in "biu" and expected <= INLINE_MAX_BYTES)
        )
        if not inline:
            mapped[tensor.name] = (
                np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=(count,)).reshape(shape)
                if count else np.zeros(shape, dtype=dtype)
            )
            continue
        try:
            with open(target, "rb") as fh:
                fh.seek(offset)
                data = fh.read(expected)
        except OSError as exc:
            raise LoadError(f"{path}: cannot read external data for '{tensor.name}' ({_short(exc)})") from exc
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return mapped


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                out.append(attr.t)
    return out


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _resolve_input_shapes(
    model: onnx.ModelProto, input_shape: InputShapes
) -> dict[str, tuple[int, ...]]:
    init_names = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in init_names]
    names = [vi.name for vi in inputs]
    given: dict[str, tuple[int, ...]] = {}
    if input_shape is not None:
        if isinstance(input_shape, Mapping):
            for name, shape in input_shape.items():
                if name not in names:
                    raise InputShapeError(
                        f"--input-shape names '{name}', but the model's inputs are: {', '.join(names)}"
                    )
                given[name] = tuple(int(d) for d in shape)
        else:
            shape = tuple(int(d) for d in input_shape)
            if len(inputs) != 1:
                raise InputShapeError(
                    f"the model has {len(inputs)} inputs ({', '.join(names)}): "
                    "give each as --input-shape NAME=D0,D1,..."
                )
            given[names[0]] = shape
    result: dict[str, tuple[int, ...]] = {}
    for vi in inputs:
        dims = _dims(vi)
        if vi.name in given:
            shape = given[vi.name]
            if any(d <= 0 for d in shape):
                raise InputShapeError(f"--input-shape for '{vi.name}' has a non-positive dimension: {list(shape)}")
            if dims is not None:
                if len(dims) != len(shape):
                    raise InputShapeError(
                        f"input '{vi.name}' has rank {len(dims)} {dims}, but --input-shape gives {list(shape)}"
                    )
                for i, (d, s) in enumerate(zip(dims, shape)):
                    if isinstance(d, int) and d > 0 and d != s:
                        raise InputShapeError(
                            f"input '{vi.name}' has dimension {i} fixed to {d} in the model, "
                            f"but --input-shape gives {s}"
                        )
            result[vi.name] = shape
            continue
        if dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            shown = "unknown rank" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in (dims or [1]))
            flag = f"--input-shape {example}" if len(inputs) == 1 else f"--input-shape {vi.name}={example}"
            raise InputShapeError(f"input '{vi.name}' has dynamic dimensions {shown}: pass {flag}")
        result[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    return result


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
            out[a.name] = "<subgraph>"
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


_MAX_INLINE_ROUNDS = 64  # If nesting resolved at load time; deeper constant Ifs stay Ifs (bounded as control flow)


def _infer(
    model: onnx.ModelProto, shapes_in: Mapping[str, tuple[int, ...]], label: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Fix the graph inputs' shapes to ``shapes_in`` (in place) and infer every other tensor's shape and type."""
    for vi in model.graph.input:
        if vi.name in shapes_in:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes_in[vi.name]:
                dims.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise LoadError(f"{label}: shape inference failed ({_short(exc)})") from exc
    infos: dict[str, onnx.ValueInfoProto] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        infos[vi.name] = vi
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name, vi in infos.items():
        if vi.type.HasField("tensor_type"):
            dtypes[name] = _dtype_name(vi.type.tensor_type.elem_type)
            dims = _dims(vi)
            if dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
                shapes[name] = tuple(dims)  # type: ignore[arg-type]
    return shapes, dtypes


def _classify(
    g: onnx.GraphProto, stored: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[set[str], dict[str, set[str]], list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(constant tensor names, each constant's stored ancestors, the nodes that fold to constants, the nodes that
    depend on a model input). A node with subgraphs is never folded: its subgraphs may read any tensor around it."""
    const_names = set(stored)
    origins: dict[str, set[str]] = {n: {n} for n in stored}
    fold_nodes: list[onnx.NodeProto] = []
    live_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        ins = [i for i in node.input if i]
        has_subgraph = any(True for _ in subgraphs(node))
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            fold_nodes.append(node)
            for o in node.output:
                const_names.add(o)
                origins[o] = {o}
            continue
        if (
            node.op_type in ("Shape", "Size")
            and node.domain in ("", "ai.onnx")
            and ins
            and ins[0] in shapes
            and ins[0] not in const_names
        ):
            fold_nodes.append(_shape_as_constant(node, shapes[ins[0]]))
            const_names.add(node.output[0])
            origins[node.output[0]] = set()
            continue
        if (
            all(i in const_names for i in ins)
            and node.op_type not in _NONDETERMINISTIC
            and not has_subgraph
            and node.domain in ("", "ai.onnx")
        ):
            fold_nodes.append(node)
            anc: set[str] = set().union(*(origins.get(i, set()) for i in ins)) if ins else set()
            for o in node.output:
                if o:
                    const_names.add(o)
                    origins[o] = anc
            continue
        live_nodes.append(node)
    return const_names, origins, fold_nodes, live_nodes


def _materialize_shape_parameters(
    model: onnx.ModelProto,
    live_nodes: Sequence[onnx.NodeProto],
    const_names: set[str],
    fold_nodes: list[onnx.NodeProto],
    stored: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    label: str,
) -> bool:
    """Where onnx's shape inference left a live tensor's shape unknown although the integer parameters its node
    reads (a Reshape's target, a Slice's bounds, an Expand's shape) fold to constants that its data propagation did
    not compute (Shape → Gather → Concat chains): store those constants as initializers, drop the nodes that
    computed them, and let the caller infer again. The shapes then inferred are static facts of the graph (from
    constants and the fixed input shapes), never one run's values, so a Shape node that reads them folds soundly.
    True when anything was stored."""
    wanted: set[str] = set()
    for node in live_nodes:
        if all(not o or o in shapes for o in node.output):
            continue
        wanted.update(i for i in node.input[1:] if i and i in const_names and i not in stored)
    if not wanted:
        return False
    values = _evaluate_constants(model, fold_nodes, sorted(wanted), label, values=stored)
    ints = {n: v for n, v in values.items()
            if np.asarray(v).dtype.kind in "iu" and np.asarray(v).size <= 64}  # shape-like parameters only
    g = model.graph
    producers = [n for n in g.node if any(o in ints for o in n.output)]
    # a producer is dropped only when every output it has is stored in its place
    producers = [n for n in producers if all(not o or o in ints for o in n.output)]
    if not producers:
        return False
    for node in producers:
        g.node.remove(node)
    stored_now = {o for n in producers for o in n.output if o}
    g.initializer.extend(numpy_helper.from_array(np.asarray(ints[n]), n) for n in sorted(stored_now))
    return True


def _inline_ifs(
    model: onnx.ModelProto,
    live_nodes: Sequence[onnx.NodeProto],
    const_names: set[str],
    fold_nodes: list[onnx.NodeProto],
    stored: Mapping[str, np.ndarray],
    label: str,
) -> int:
    """Inline every If whose condition folds to a constant (see :func:`inline_constant_ifs`); how many."""
    conds = sorted({n.input[0] for n in live_nodes if n.op_type == "If" and n.input and n.input[0] in const_names})
    if not conds:
        return 0
    values = {n: stored[n] for n in conds if n in stored}
    missing = [n for n in conds if n not in values]
    if missing:
        values.update(_evaluate_constants(model, fold_nodes, missing, label, values=stored))
    return inline_constant_ifs(model, values.get)


def _pin_inputs(g: onnx.GraphProto, pins: Mapping[str, float], label: str) -> dict[str, np.ndarray]:
    """Give each pinned integer input an initializer of its value (an input with an initializer is a constant to
    lipcheck). Only integer inputs with static shapes; anything else is one line."""
    from lipcheck.errors import UsageError

    inputs = {vi.name: vi for vi in g.input}
    fixed: dict[str, np.ndarray] = {}
    for name, value in pins.items():
        vi = inputs.get(name)
        if vi is None:
            raise UsageError(f"--domain {name}=...: {label} has no input '{name}'")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        if not np.issubdtype(dtype, np.integer) and dtype != np.bool_:
            raise UsageError(f"--domain {name}={value:g},{value:g}: only integer inputs can be pinned to one value")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if any(d is None for d in dims):
            raise UsageError(f"--domain {name}={value:g},{value:g}: the input has dynamic dimensions")
        if float(value) != int(value):
            raise UsageError(f"--domain {name}={value:g},{value:g}: an integer input needs an integer value")
        array = np.full(tuple(int(d) for d in dims), int(value), dtype=dtype)  # type: ignore[arg-type]
        g.initializer.append(numpy_helper.from_array(array, name))
        fixed[name] = array
    return fixed


def load_onnx(source: str | os.PathLike[str] | onnx.ModelProto, input_shape: InputShapes = None,
              pins: Mapping[str, float] | None = None) -> Graph:
    """Load an ONNX model (path or ModelProto) into the IR with static shapes and folded constants. ``pins``: integer
    inputs fixed to one value (``--domain sr=16000,16000``): they become constants, so the comparisons, Ifs and
    shapes that depend on them fold like any constant."""
    external: dict[str, np.ndarray] = {}
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        label = model.graph.name or "<model>"
    else:
        model, external = read_model(source)
        label = str(source)
    g = model.graph
    fixed = _pin_inputs(g, pins, label) if pins else {}
    if not g.node:
        raise LoadError(f"{label}: the graph is empty (no nodes)")
    validate_model(model, None if isinstance(source, onnx.ModelProto) else Path(source), label)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    shapes_in = _resolve_input_shapes(model, input_shape)

    # 2. fix input shapes, infer the rest; 3. find the constant subgraphs. An If whose condition is constant is
    # replaced by its branch, and this is redone (a nested If is top-level after its parent's inlining).
    for _round in range(_MAX_INLINE_ROUNDS + 1):
        shapes, dtypes = _infer(model, shapes_in, label)
        stored: dict[str, np.ndarray] = {
            t.name: external[t.name] if t.name in external else numpy_helper.to_array(t) for t in g.initializer
        }
        const_names, origins, fold_nodes, live_nodes = _classify(g, stored, shapes)
        if _round == _MAX_INLINE_ROUNDS:
            break
        if _inline_ifs(model, live_nodes, const_names, fold_nodes, stored, label):
            continue
        if not _materialize_shape_parameters(model, live_nodes, const_names, fold_nodes, stored, shapes, label):
            break

    graph_inputs = [vi for vi in g.input if vi.name not in stored]
    reads = {id(n): tuple(n.input) + outer_scope_reads(n) for n in live_nodes}
    needed = {i for n in live_nodes for i in reads[id(n)] if i and i in const_names}
    needed |= {o.name for o in g.output if o.name in const_names}
    constants: dict[str, np.ndarray] = {n: stored[n] for n in needed if n in stored}
    to_eval = sorted(n for n in needed if n not in stored)
    if to_eval:
        constants.update(_evaluate_constants(model, fold_nodes, to_eval, label, values=stored))
    sizes: dict[str, int] = {n: int(np.asarray(v).size) for n, v in stored.items()}
    ranks: dict[str, int] = {n: int(np.asarray(v).ndim) for n, v in stored.items()}
    for node in fold_nodes:
        if node.op_type == "Constant":
            for o in node.output:
                sizes[o] = int(np.asarray(constants.get(o, 0)).size) if o in constants else 1
                ranks[o] = int(np.asarray(constants.get(o, 0)).ndim) if o in constants else 0
    param_names: dict[str, str] = {}
    for n in needed:
        anc = origins.get(n, set())
        if anc:
            # the largest stored tensor; ties by rank (a spectral norm's W over its equally long vector v), then name
            param_names[n] = max(sorted(anc), key=lambda a: (sizes.get(a, 0), ranks.get(a, 0)))

    # 4. live nodes
    nodes: list[Node] = []
    used: set[str] = set()
    for idx, node in enumerate(live_nodes):
        name = node.name or f"{node.op_type}_{idx}"
        while name in used:
            name = f"{name}_{idx}"
        used.add(name)
        nodes.append(
            Node(name=name, op_type=node.op_type, inputs=reads[id(node)], outputs=tuple(node.output),
                 attrs=_attrs(node), domain="" if node.domain == "ai.onnx" else node.domain)
        )
    for vi in graph_inputs:
        shapes[vi.name] = shapes_in[vi.name]
        dtypes[vi.name] = _dtype_name(vi.type.tensor_type.elem_type)
    live_tensors = {t for n in live_nodes for t in reads[id(n)] + tuple(n.output) if t and t not in const_names}
    live_tensors |= {o.name for o in g.output if o.name not in const_names}
    missing = sorted(t for t in live_tensors if t not in shapes or t not in dtypes or dtypes[t] == "unknown")
    if missing:
        _shapes_from_onnxruntime(model, shapes_in, missing, shapes, dtypes, label, external)
    for n in needed:
        arr = np.asarray(constants[n])
        shapes[n] = tuple(arr.shape)
        dtypes[n] = arr.dtype.name
    _check_finite(constants, param_names, nodes, label)

    inputs = tuple(TensorInfo(vi.name, shapes[vi.name], dtypes[vi.name]) for vi in graph_inputs)
    outputs = tuple(TensorInfo(o.name, shapes.get(o.name, ()), dtypes.get(o.name, "unknown")) for o in g.output)
    original: str | onnx.ModelProto = source if isinstance(source, onnx.ModelProto) else str(source)
    return Graph(
        name=g.name or Path(label).stem,
        inputs=inputs,
        outputs=outputs,
        nodes=tuple(nodes),
        constants=constants,
        shapes=shapes,
        dtypes=dtypes,
        param_names=param_names,
        opset=opset,
        source=label,
        reference=onnxruntime_runner(original, inputs, outputs, fixed),
    )


def onnxruntime_runner(
    model: str | onnx.ModelProto, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
    fixed: Mapping[str, np.ndarray] | None = None,
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Runs the original model with onnxruntime: float inputs in order, integer inputs held at zero, ``fixed``
    (pinned) inputs at their values. The session is created on the first call (it costs time and memory that
    ``--no-lower-bound`` never needs)."""
    session: list[Any] = []

    def run(float_inputs: list[np.ndarray]) -> list[np.ndarray]:
        if not session:
            import onnxruntime as ort

            data = model if isinstance(model, str) else model.SerializeToString()
            from lipcheck.threads import onnxruntime_options

            session.append(ort.InferenceSession(data, sess_options=onnxruntime_options(ort),
                                                providers=["CPUExecutionProvider"]))
        feeds: dict[str, np.ndarray] = {}
        it = iter(float_inputs)
        for i in inputs:
            dt = np.dtype(i.dtype)
            feeds[i.name] = np.asarray(next(it), dtype=dt) if i.is_float else np.zeros(i.shape, dtype=dt)
        feeds.update(fixed or {})
        return [np.asarray(v) for v in session[0].run([o.name for o in outputs], feeds)]

    return run


def _shape_as_constant(node: onnx.NodeProto, shape: tuple[int, ...]) -> onnx.NodeProto:
    """Shape/Size of a statically shaped tensor, as a Constant node with the same output."""
    if node.op_type == "Size":
        value = np.array(int(np.prod(shape)), dtype=np.int64)
    else:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(shape)
        start = attrs.get("start", 0)
        end = attrs.get("end", rank)
        value = np.array(shape, dtype=np.int64)[slice(start, end)]
    return helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(value))


def _evaluate_constants(
    model: onnx.ModelProto,
    fold_nodes: list[onnx.NodeProto],
    names: list[str],
    label: str,
    values: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate the constant subgraph with onnx's reference evaluator (no hand-written folding).

    With ``values`` (stored tensor name -> value, memmaps included), only the fold nodes that ``names`` depend
    on are evaluated, on only the stored tensors they read, materialized; without it, on every fold node and
    ``model``'s initializers as they are (which must then hold their data).
    """
    from onnx.reference import ReferenceEvaluator

    if values is None:
        initializers = list(model.graph.initializer)
    else:
        kept, leaves = constant_slice(fold_nodes, names, lambda t: t in values)  # type: ignore[operator]
        fold_nodes = [fold_nodes[k] for k in kept]
        initializers = [numpy_helper.from_array(np.asarray(values[n]), n) for n in sorted(leaves)]
    graph = helper.make_graph(
        fold_nodes, "constants", [], [onnx.ValueInfoProto(name=n) for n in names], initializers
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        results = ReferenceEvaluator(sub).run(None, {})
    except Exception as exc:
        # the reference evaluator lacks some older op versions (e.g. DequantizeLinear < 19): onnxruntime
        try:
            import onnxruntime as ort

            from lipcheck.threads import onnxruntime_options

            sess = ort.InferenceSession(sub.SerializeToString(), sess_options=onnxruntime_options(ort),
                                        providers=["CPUExecutionProvider"])
            results = sess.run(names, {})
        except Exception as exc2:  # noqa: BLE001
            raise LoadError(
                f"{label}: could not evaluate the model's constant subgraphs ({_short(exc)}; {_short(exc2)})"
            ) from exc
    return {n: np.asarray(v) for n, v in zip(names, results)}


def constant_slice(
    fold_nodes: Sequence[onnx.NodeProto], names: Sequence[str], is_leaf: Callable[[str], bool],
    producer: Mapping[str, int] | None = None,
) -> tuple[list[int], set[str]]:
    """(indices of the fold nodes that ``names`` depend on, sorted; the leaf tensors they read): the walk back
    from ``names`` stops at tensors for which ``is_leaf`` holds, else goes through their producing fold node."""
    if producer is None:
        producer = {o: k for k, n in enumerate(fold_nodes) for o in n.output if o}
    keep: set[int] = set()
    leaves: set[str] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if is_leaf(t):
            leaves.add(t)
        elif t in producer and producer[t] not in keep:
            keep.add(producer[t])
            stack.extend(i for i in fold_nodes[producer[t]].input if i)
    return sorted(keep), leaves


def _shapes_from_onnxruntime(
    model: onnx.ModelProto,
    shapes_in: dict[str, tuple[int, ...]],
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str],
    label: str,
    external: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Fill shapes shape inference left open by running onnxruntime once on a zero input. Initializers kept in
    their files (``external``) are fed as inputs, straight from their memmaps."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    feeds: dict[str, np.ndarray] = {}
    if external:
        declared = {vi.name for vi in m.graph.input}
        for k in reversed(range(len(m.graph.initializer))):
            t = m.graph.initializer[k]
            if t.name in external:
                if t.name not in declared:
                    m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
                feeds[t.name] = np.asarray(external[t.name])
                del m.graph.initializer[k]
    for vi in m.graph.input:
        if vi.name in shapes_in:
            dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = np.zeros(shapes_in[vi.name], dtype=dt)
    try:
        from lipcheck.threads import onnxruntime_options

        sess = ort.InferenceSession(m.SerializeToString(), sess_options=onnxruntime_options(ort),
                                    providers=["CPUExecutionProvider"])
        outs = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - e.g. a custom op: its shapes stay unknown, its rule says so
        return
    for n, v in zip(names, outs):
        arr = np.asarray(v)
        shapes[n] = tuple(arr.shape)
        dtypes[n] = arr.dtype.name


# Ops whose constant inputs are weights: Inf there is a broken model, refused. Elsewhere a constant may hold ±inf
# (a mask: Max(x, c), Where(m, x, -inf), Add(x, mask) before a Softmax); lipcheck.rules.masks follows those
# entries and makes the bound unbounded, naming the node, where it cannot (it skips these ops' constants).
_INF_REFUSED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Mul", "Div", "BatchNormalization",
                          "LayerNormalization", "InstanceNormalization", "GroupNormalization", "PRelu"})


def _check_finite(
    constants: Mapping[str, np.ndarray], param_names: Mapping[str, str], nodes: list[Node], label: str
) -> None:
    """Refuse NaN in any constant a node reads, and Inf in the weights of the ops in :data:`_INF_REFUSED`, chunk by
    chunk (a mapped weight's pages are handed back)."""
    readers: dict[str, Node] = {}  # constant -> the node named in a refusal: a weighted op if one reads it
    for node in nodes:
        for i in node.inputs:
            if i in constants and (i not in readers or (node.op_type in _INF_REFUSED
                                                        and readers[i].op_type not in _INF_REFUSED)):
                readers[i] = node
    for i, node in readers.items():
        arr = constants[i]
        bad = nonfinite_kind(arr) if np.asarray(arr).dtype.kind == "f" else None
        release_pages(arr)
        if bad == "NaN" or (bad == "Inf" and node.op_type in _INF_REFUSED and node.domain in ("", "ai.onnx")):
            raise InvalidWeightsError(
                f"{label}: weight '{param_names.get(i, i)}' used by node '{node.name}' ({node.op_type}) "
                f"contains {bad} values"
            )
