"""Constants with ±inf entries (masks): which tensors carry constant infinite entries, and which nodes cannot be
bounded because of them.

Exporters write masks as constants holding -inf: ``Max(x, c)``, ``Where(mask, x, -inf)``, ``Add(x, mask)`` before a
Softmax. An entry that is a constant ±inf is the same in f(x) and f(y): it contributes nothing to ‖f(x) − f(y)‖, and
the per-op constants hold for the other entries (Add / Sub / Max / Min / Where: element-wise 1-Lipschitz in the
variable operand; Softmax with some inputs at -inf: those outputs are exactly 0 with zero derivative, the rest is a
softmax of fewer entries, whose constant is the same or smaller; LogSoftmax likewise). Everything else is kept
conservative: a node that reads a constant ±inf where lipcheck does not follow it, or a tensor with constant ±inf
entries read by an op not listed below, or an op that would compute NaN from them (a softmax row that is all -inf,
+inf into a Softmax, inf - inf), or a model output with constant ±inf entries, makes the bound unbounded, naming a node.

Which node: the one that reads the ±inf CONSTANT when it is not one that follows them; otherwise the node that
PRODUCED the tensor with ±inf entries (an Add, Where, Max...). That producer is never a weighted layer (whose rule
results may come from the layer cache or a worker process without a rule running) and has no local rule in
:mod:`lipcheck.bound.local` (which could otherwise replace its "unbounded" by a finite local constant), so the
walker, the cached / parallel walk and the local composition all see it.

Weights of linear layers (Conv, ConvTranspose, Gemm, MatMul, Mul, Div, the normalizations, PRelu) never hold ±inf:
the loader refuses those models (``lipcheck.loaders.onnx_loader._INF_REFUSED``), so their constants are not read
again here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from lipcheck.ir.graph import Graph, Node

# the loader refuses ±inf in every constant input of these (lipcheck.loaders.onnx_loader._INF_REFUSED)
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Mul", "Div", "BatchNormalization",
                       "LayerNormalization", "InstanceNormalization", "GroupNormalization", "PRelu"})
# ops whose output may keep constant ±inf entries (none has a local rule; none is a cached layer)
_CARRY = ("Add", "Sub", "Sum", "Max", "Min", "Where", "LogSoftmax", "ReduceMax", "ReduceMin", "Identity",
          "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat")
# ops that follow ±inf entries into a finite output only (an infinite output is refused)
_ABSORB = ("Softmax", "Clip", "Relu", "Exp")
_FOLLOWED = ("Add, Sub, Sum, Max, Min, Where, Clip, Relu, Softmax, LogSoftmax, Exp, ReduceMax, ReduceMin and "
             "reshapes / Transpose / Concat")
# data inputs of each followed op (None: all); the others are parameters and must be constants
_DATA: dict[str, tuple[int, ...] | None] = {
    "Add": None, "Sub": None, "Sum": None, "Max": None, "Min": None, "Concat": None, "Where": (1, 2),
    "Clip": (0,), "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "ReduceMax": (0,), "ReduceMin": (0,),
    "Dropout": (0,),
}


@dataclass(frozen=True)
class InfiniteEntries:
    """``carriers``: tensor -> (an array of its shape, ±inf exactly at its constant infinite entries and finite
    elsewhere; the constant they come from); ``refused``: node name -> why it is unbounded."""

    carriers: Mapping[str, tuple[np.ndarray, str]]
    refused: Mapping[str, str]


_CACHE: dict[int, tuple[weakref.ref[Graph], InfiniteEntries]] = {}


def infinite_entries(graph: Graph) -> InfiniteEntries:
    """The analysis of ``graph`` (computed once per graph object)."""
    key = id(graph)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is graph:
        return hit[1]
    result = _analyse(graph)
    for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[k]
    _CACHE[key] = (weakref.ref(graph), result)
    return result


def refusal(node: Node, graph: Graph) -> str | None:
    """Why ``node`` cannot be bounded because of constant ±inf entries (None: nothing to say)."""
    return infinite_entries(graph).refused.get(node.name)


def _const_mask(name: str, graph: Graph) -> np.ndarray | None:
    """The constant as an array with its non-finite entries kept and the finite ones 0 (None: all finite)."""
    from lipcheck.arrays import nonfinite_kind, release_pages

    value = graph.constants[name]
    arr = np.asarray(value)
    if arr.dtype.kind not in "fc":
        return None
    bad = nonfinite_kind(arr)
    release_pages(value)
    if bad is None:
        return None
    a = arr.real.astype(np.float64) if arr.dtype.kind == "c" else arr.astype(np.float64)
    return np.where(np.isfinite(a), 0.0, a)


def _analyse(graph: Graph) -> InfiniteEntries:
    consts: dict[str, np.ndarray | None] = {}
    for node in graph.nodes:
        if node.op_type in _WEIGHTED and node.domain in ("", "ai.onnx"):
            continue
        for name in node.inputs:
            if name and name in graph.constants and name not in consts:
                consts[name] = _const_mask(name, graph)
    if not any(m is not None for m in consts.values()):
        return InfiniteEntries({}, {})
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    carriers: dict[str, tuple[np.ndarray, str]] = {}
    refused: dict[str, str] = {}
    outputs = {o.name for o in graph.outputs}

    def refuse_producers(node: Node, why: str) -> None:
        for name in node.inputs:
            if name in carriers and name in producers:
                p = producers[name]
                refused.setdefault(p.name, f"its output '{name}' holds constant ±inf entries (from the constant "
                                           f"'{_param(carriers[name][1], graph)}'), {why}")

    for node in graph.nodes:
        inf_consts = [n for n in node.inputs if n and consts.get(n) is not None]
        inf_vars = [n for n in node.inputs if n in carriers]
        if not inf_consts and not inf_vars:
            continue
        source = carriers[inf_vars[0]][1] if inf_vars else inf_consts[0]
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or (op not in _CARRY and op not in _ABSORB):
            why = (f"which node '{node.name}' ({op}) reads: lipcheck follows constant ±inf entries only through "
                   f"{_FOLLOWED}")
            if inf_consts:
                refused[node.name] = (f"reads the constant '{_param(inf_consts[0], graph)}', which holds ±inf values; "
                                      f"lipcheck follows constant ±inf entries (masks) only through {_FOLLOWED}")
            refuse_producers(node, why)
            continue
        try:
            outs = _evaluate(node, graph, carriers, consts)
        except _CannotFollow as exc:
            why = f"which node '{node.name}' ({op}) reads, and {exc}"
            if inf_consts and not inf_vars:
                refused[node.name] = f"reads the constant '{_param(inf_consts[0], graph)}' (±inf values), and {exc}"
            refuse_producers(node, why)
            continue
        for name, out in zip(node.outputs, outs):
            if not name or out is None:
                continue
            what = None
            if np.isnan(out).any():
                what = "computes NaN from them (e.g. inf - inf, or a softmax row with no finite entry)"
            elif np.isinf(out).any():
                if op in _ABSORB:
                    what = "gives an output with ±inf entries, which lipcheck does not follow further"
                elif name in outputs:
                    what = f"passes them to the model output '{name}'"
                else:
                    carriers[name] = (np.where(np.isinf(out), out, 0.0), source)
                    continue
            if what is None:
                continue
            if inf_vars:
                refuse_producers(node, f"and node '{node.name}' ({op}) {what}")
            if inf_consts or op in _CARRY:
                refused.setdefault(node.name, f"{op} with constant ±inf entries (from "
                                              f"'{_param(source, graph)}') {what}")
    return InfiniteEntries(carriers, refused)


def _param(name: str, graph: Graph) -> str:
    return graph.param_names.get(name, name)


class _CannotFollow(Exception):
    """The op's output entries that are ±inf cannot be worked out here (the message says why)."""


def _evaluate(node: Node, graph: Graph, carriers: Mapping[str, tuple[np.ndarray, str]],
              consts: Mapping[str, np.ndarray | None]) -> list[np.ndarray | None]:
    """The node run on stand-ins: variable inputs as their ±inf entries (0 elsewhere), float constants as their ±inf
    entries (0 elsewhere), other constants as they are. For the followed ops a finite input entry never decides
    whether an output entry is ±inf or NaN, so the stand-in's infinite / NaN outputs are exactly the model's."""
    data = _DATA.get(node.op_type, (0,))
    args: list[np.ndarray | None] = []
    for i, name in enumerate(node.inputs):
        if not name:
            args.append(None)
            continue
        is_data = data is None or i in data
        if name in graph.constants:
            stand_in = consts.get(name)
            if stand_in is None:
                value = np.asarray(graph.constants[name])
                stand_in = np.zeros(value.shape) if is_data and value.dtype.kind in "fc" else value
            args.append(stand_in)
        elif not is_data:
            raise _CannotFollow(f"its input '{name}' at position {i} is not a constant")
        elif name in carriers:
            args.append(carriers[name][0])
        else:
            shape = graph.shapes.get(name)
            if shape is None:
                raise _CannotFollow(f"the shape of '{name}' is unknown")
            args.append(np.zeros(tuple(shape)))
    fn = _OPS[node.op_type]
    out_shapes = [tuple(graph.shapes[o]) if o in graph.shapes else None for o in node.outputs]
    with np.errstate(all="ignore"):
        try:
            return fn(node, args, out_shapes, graph.opset)
        except _CannotFollow:
            raise
        except Exception as exc:  # noqa: BLE001 - an attribute combination not handled here: conservative
            why = f"lipcheck cannot follow ±inf entries through it ({type(exc).__name__}: {exc})"
            raise _CannotFollow(why) from exc


_Fn = Callable[[Node, list, list, int], list]


def _reshaped(node: Node, args: list, shapes: list, opset: int) -> list:
    if shapes[0] is None:
        raise _CannotFollow("its output shape is unknown")
    return [np.reshape(args[0], shapes[0])] + [None] * (len(node.outputs) - 1)


def _axis(node: Node, rank: int, default: int) -> int:
    a = int(node.attr("axis", default))
    return a + rank if a < 0 else a


def _softmax(log: bool) -> _Fn:
    def fn(node: Node, args: list, shapes: list, opset: int) -> list:
        x = args[0]
        rank = x.ndim
        if 0 < opset < 13:  # the input flattened to 2-D at axis, the softmax over the second dimension
            axis = _axis(node, rank, 1)
            lead = int(np.prod(x.shape[:axis], dtype=np.int64))
            v, ax = x.reshape(lead, -1), 1
        else:
            v, ax = x, _axis(node, rank, -1)
        m = np.max(v, axis=ax, keepdims=True)
        e = np.exp(v - m)
        s = np.sum(e, axis=ax, keepdims=True)
        out = (v - m - np.log(s)) if log else e / s
        return [out.reshape(x.shape)]

    return fn


def _reduce(fn_np: Callable[..., np.ndarray]) -> _Fn:
    def fn(node: Node, args: list, shapes: list, opset: int) -> list:
        x = args[0]
        if len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in np.asarray(args[1]).reshape(-1)]
        else:
            axes = [int(a) for a in (node.attr("axes") or [])]
        keep = bool(int(node.attr("keepdims", 1)))
        if not axes:
            if int(node.attr("noop_with_empty_axes", 0)):
                return [x]
            axes = list(range(x.ndim))
        return [fn_np(x, axis=tuple(a + x.ndim if a < 0 else a for a in axes), keepdims=keep)]

    return fn


def _nary(fn_np: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> _Fn:
    def fn(node: Node, args: list, shapes: list, opset: int) -> list:
        present = [a for a in args if a is not None]
        out = present[0]
        for a in present[1:]:
            out = fn_np(out, a)
        return [np.asarray(out, dtype=np.float64)]

    return fn


def _clip(node: Node, args: list, shapes: list, opset: int) -> list:
    out = args[0]
    low = args[1] if len(args) > 1 and args[1] is not None else node.attr("min")
    high = args[2] if len(args) > 2 and args[2] is not None else node.attr("max")
    if low is not None:
        out = np.maximum(out, np.asarray(low, dtype=np.float64))
    if high is not None:
        out = np.minimum(out, np.asarray(high, dtype=np.float64))
    return [out]


def _where(node: Node, args: list, shapes: list, opset: int) -> list:
    return [np.where(np.asarray(args[0]).astype(bool), args[1], args[2]).astype(np.float64)]


def _transpose(node: Node, args: list, shapes: list, opset: int) -> list:
    perm = node.attr("perm")
    return [np.transpose(args[0], None if perm is None else [int(p) for p in perm])]


def _concat(node: Node, args: list, shapes: list, opset: int) -> list:
    present = [a for a in args if a is not None]
    return [np.concatenate(present, axis=_axis(node, present[0].ndim, 0))]


def _dropout(node: Node, args: list, shapes: list, opset: int) -> list:
    mode = args[2] if len(args) > 2 and args[2] is not None else None
    if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
        raise _CannotFollow("Dropout in training mode")
    return [args[0]] + [None] * (len(node.outputs) - 1)


_OPS: dict[str, _Fn] = {
    "Add": _nary(np.add), "Sub": _nary(np.subtract), "Sum": _nary(np.add), "Max": _nary(np.maximum),
    "Min": _nary(np.minimum), "Where": _where, "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "ReduceMax": _reduce(np.max), "ReduceMin": _reduce(np.min), "Clip": _clip,
    "Relu": lambda node, args, shapes, opset: [np.maximum(args[0], 0.0)],
    "Exp": lambda node, args, shapes, opset: [np.exp(args[0])],
    "Identity": _reshaped, "Reshape": _reshaped, "Flatten": _reshaped, "Squeeze": _reshaped,
    "Unsqueeze": _reshaped, "Transpose": _transpose, "Concat": _concat, "Dropout": _dropout,
}
