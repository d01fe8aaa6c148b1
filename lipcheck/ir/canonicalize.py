"""Graph rewrites that keep the function and tighten the bound: BatchNormalization folded into the
preceding Conv / ConvTranspose / Gemm / MatMul, where that is exact (the producer's output feeds only the BN).

σ(diag(s)·W) ≤ max|s|·σ(W): bounding the fused operator is tighter than bounding the two apart.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lipcheck.arrays import release_pages
from lipcheck.ir.graph import Graph, Node

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _wiring(graph: Graph) -> tuple[dict[str, Node], dict[str, int], set[str]]:
    """(tensor -> the node writing it, tensor -> how many node inputs read it, the model's output names)."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    uses: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            uses[i] = uses.get(i, 0) + 1
    return producers, uses, {o.name for o in graph.outputs}


def fold_batchnorm(graph: Graph) -> Graph:
    producers, uses, outputs = _wiring(graph)
    constants = dict(graph.constants)
    shapes = dict(graph.shapes)
    dtypes = dict(graph.dtypes)
    params = dict(graph.param_names)
    replace: dict[str, Node] = {}  # producer name -> fused node
    drop: set[str] = set()
    for bn in graph.nodes:
        if bn.op_type != "BatchNormalization" or bn.attr("training_mode", 0) or len(bn.outputs) != 1:
            continue
        x = bn.inputs[0]
        p = producers.get(x)
        if p is None or p.op_type not in _FOLDABLE or uses.get(x, 0) != 1 or x in outputs or p.name in replace:
            continue
        if any(name not in constants for name in bn.inputs[1:5]):
            continue
        fused = _fuse(p, bn, graph, constants)
        release_pages(constants.get(p.inputs[1]))  # a mapped weight was read: hand its pages back
        if fused is None:
            continue
        node, new_consts = fused
        for name, value in new_consts.items():
            constants[name] = value
            shapes[name] = tuple(value.shape)
            dtypes[name] = value.dtype.name
        params[node.inputs[1]] = graph.param_names.get(p.inputs[1], p.inputs[1])
        replace[p.name] = node
        drop.add(bn.name)
    if not replace:
        return graph
    nodes = tuple(replace.get(n.name, n) for n in graph.nodes if n.name not in drop)
    used = {i for n in nodes for i in n.inputs} | outputs
    constants = {k: v for k, v in constants.items() if k in used}
    return dataclasses.replace(graph, nodes=nodes, constants=constants, shapes=shapes, dtypes=dtypes,
                               param_names={k: v for k, v in params.items() if k in constants})


def _fuse(
    p: Node, bn: Node, graph: Graph, constants: dict[str, np.ndarray]
) -> tuple[Node, dict[str, np.ndarray]] | None:
    gamma, beta, mean, var = (np.asarray(constants[n], dtype=np.float64) for n in bn.inputs[1:5])
    # default epsilon: float32(1e-5), the float attribute's stored value (see rules.linear.batchnorm_scale)
    s = gamma / np.sqrt(var + float(bn.attr("epsilon", np.float32(1e-5))))
    shift = beta - s * mean
    c_out = s.shape[0]
    w_name = p.inputs[1]
    if w_name not in constants or (p.inputs[0] in constants):
        return None
    w = np.asarray(constants[w_name])  # a view (a memmap stays one): each product below is the one float64 copy
    base = f"{p.name}::bn_folded"
    if p.op_type == "Conv":
        if w.shape[0] != c_out:
            return None
        b = np.asarray(constants[p.inputs[2]], dtype=np.float64) if len(p.inputs) > 2 and p.inputs[2] else 0.0
        w2 = np.multiply(w, s.reshape((-1,) + (1,) * (w.ndim - 1)), dtype=np.float64)
        b2 = s * b + shift
        inputs = (p.inputs[0], f"{base}_weight", f"{base}_bias")
        attrs = dict(p.attrs)
    elif p.op_type == "ConvTranspose":
        g = int(p.attr("group", 1))
        if w.shape[1] * g != c_out:
            return None
        b = np.asarray(constants[p.inputs[2]], dtype=np.float64) if len(p.inputs) > 2 and p.inputs[2] else 0.0
        cin_g = w.shape[0] // g
        w2 = np.multiply(w.reshape((g, cin_g, w.shape[1]) + w.shape[2:]),
                         s.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2)), dtype=np.float64).reshape(w.shape)
        b2 = s * b + shift
        inputs = (p.inputs[0], f"{base}_weight", f"{base}_bias")
        attrs = dict(p.attrs)
    else:
        # Gemm (A variable, B constant) or rank-2 MatMul x @ W: scale the output columns.
        out_shape = graph.shapes.get(p.outputs[0], ())
        if len(out_shape) != 2 or out_shape[1] != c_out:
            return None
        if p.op_type == "Gemm":
            alpha, beta_g = float(p.attr("alpha", 1.0)), float(p.attr("beta", 1.0))
            trans_b = bool(p.attr("transB", 0))
            w2 = np.multiply(w, s[:, None] if trans_b else s[None, :], dtype=np.float64)
            c = p.inputs[2] if len(p.inputs) > 2 else ""
            if c and c not in constants:
                return None
            cval = beta_g * np.asarray(constants[c], dtype=np.float64) if c else 0.0
            b2 = np.broadcast_to(s * cval + shift, (c_out,)) if np.ndim(cval) <= 1 else s * cval + shift
            attrs = dict(p.attrs) | {"beta": 1.0, "alpha": alpha}
        else:
            if w.ndim != 2 or len(graph.shapes.get(p.inputs[0], ())) != 2:
                return None
            w2 = np.multiply(w, s[None, :], dtype=np.float64)
            b2 = shift
            attrs = {}
        inputs = (p.inputs[0], f"{base}_weight", f"{base}_bias")
        node = Node(name=p.name, op_type="Gemm", inputs=inputs, outputs=bn.outputs, attrs=attrs,
                    domain=p.domain, fused_with=p.fused_with + (bn.name,))
        return node, {inputs[1]: w2, inputs[2]: np.ascontiguousarray(b2, dtype=np.float64)}
    node = Node(name=p.name, op_type=p.op_type, inputs=inputs, outputs=bn.outputs, attrs=attrs,
                domain=p.domain, fused_with=p.fused_with + (bn.name,))
    return node, {inputs[1]: w2, inputs[2]: np.asarray(b2, dtype=np.float64).reshape(-1)}


def fold_magnitudes(graph: Graph) -> Graph:
    """Sqrt(x_1² + … + x_k²) (each square a Pow(x, 2) or Mul(x, x), summed by Add / Sum, none of the intermediate
    tensors read elsewhere or a model output, all x_i of the output's shape) rewritten as
    ReduceL2(Concat(Reshape(x_1, [1, …]), …), axis 0): the same values (an STFT magnitude √(re² + im²), an RMS),
    and a form whose constant is known. √(Σ x_i²) is element-wise the Euclidean norm of (x_1, …, x_k), so
    ‖δ out‖² ≤ Σ_i ‖δx_i‖² (triangle inequality), whereas √ alone has no global constant at 0 and the squares none
    anywhere. k = 1 (√(x²) = |x|) is rewritten too."""
    producers, uses, outputs = _wiring(graph)

    def private(name: str) -> bool:
        return uses.get(name, 0) == 1 and name not in outputs and name not in graph.constants

    def squared(name: str) -> tuple[str, str] | None:
        """(x, the square's node name) when ``name`` is x² by Pow(x, 2) or Mul(x, x)."""
        p = producers.get(name)
        if p is None or not private(name) or p.domain not in ("", "ai.onnx"):
            return None
        if p.op_type == "Mul" and len(p.inputs) == 2 and p.inputs[0] == p.inputs[1]:
            return p.inputs[0], p.name
        if p.op_type == "Pow" and len(p.inputs) == 2:
            e = graph.constants.get(p.inputs[1])
            if e is not None and np.asarray(e).size == 1 and float(np.asarray(e).reshape(-1)[0]) == 2.0:
                return p.inputs[0], p.name
        return None

    constants = dict(graph.constants)
    shapes = dict(graph.shapes)
    dtypes = dict(graph.dtypes)
    replace: dict[str, list[Node]] = {}
    drop: set[str] = set()
    for sq in graph.nodes:
        if sq.op_type != "Sqrt" or sq.domain not in ("", "ai.onnx") or len(sq.outputs) != 1:
            continue
        out = sq.outputs[0]
        shape = graph.shapes.get(out)
        s = sq.inputs[0]
        p = producers.get(s)
        if shape is None or p is None or not private(s):
            continue
        if p.op_type in ("Add", "Sum") and p.domain in ("", "ai.onnx"):
            terms = [squared(t) for t in p.inputs]
            absorbed = [p.name]
        else:
            terms = [squared(s)]
            absorbed = []
        if not terms or any(t is None for t in terms) or any(n in replace or n in drop for n in absorbed):
            continue
        xs = [t[0] for t in terms]  # type: ignore[index]
        if any(graph.shapes.get(x) != shape or x in graph.constants for x in xs):
            continue
        new: list[Node] = []
        if len(xs) == 1:
            new.append(Node(f"{sq.name}/abs", "Abs", (xs[0],), (out,), fused_with=(*absorbed, *[t[1] for t in terms])))
        else:
            target = f"{sq.name}/lipcheck_magnitude_shape"
            constants[target] = np.asarray((1, *shape), dtype=np.int64)
            shapes[target] = (len(shape) + 1,)
            dtypes[target] = "int64"
            parts = []
            for k, x in enumerate(xs):
                part = f"{sq.name}/lipcheck_magnitude_{k}"
                new.append(Node(f"{part}/reshape", "Reshape", (x, target), (part,)))
                shapes[part], dtypes[part] = (1, *shape), dtypes.get(x, "float32")
                parts.append(part)
            stacked = f"{sq.name}/lipcheck_magnitude_stack"
            new.append(Node(f"{stacked}/concat", "Concat", tuple(parts), (stacked,), {"axis": 0}))
            shapes[stacked], dtypes[stacked] = (len(xs), *shape), dtypes.get(xs[0], "float32")
            reduce_inputs: tuple[str, ...] = (stacked,)
            attrs: dict[str, object] = {"keepdims": 0}
            if graph.opset >= 18:
                axes = f"{sq.name}/lipcheck_magnitude_axes"
                constants[axes], shapes[axes], dtypes[axes] = np.asarray([0], dtype=np.int64), (1,), "int64"
                reduce_inputs = (stacked, axes)
            else:
                attrs["axes"] = [0]
            new.append(Node(sq.name, "ReduceL2", reduce_inputs, (out,), attrs,
                            fused_with=(*absorbed, *[t[1] for t in terms])))  # type: ignore[index]
        replace[sq.name] = new
        drop.update(absorbed)
        drop.update(t[1] for t in terms)  # type: ignore[index]
    if not replace:
        return graph
    nodes: list[Node] = []
    for n in graph.nodes:
        if n.name in drop:
            continue
        nodes.extend(replace.get(n.name, [n]))
    used = {i for n in nodes for i in n.inputs} | outputs
    constants = {k: v for k, v in constants.items() if k in used}
    return dataclasses.replace(graph, nodes=tuple(nodes), constants=constants, shapes=shapes, dtypes=dtypes)
