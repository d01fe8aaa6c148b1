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


def fold_batchnorm(graph: Graph) -> Graph:
    producers = {o: n for n in graph.nodes for o in n.outputs}
    uses: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in graph.outputs}
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
