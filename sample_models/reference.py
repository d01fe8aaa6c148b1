#!/usr/bin/env python
"""Independent reference numbers for the sample models (a cross-check for lipcheck, not part of it).

    python sample_models/reference.py [--points 4]

For each model it prints:

* ``lower``: a measured lower bound on the L2 Lipschitz constant: the largest sigma_max of a
  finite-difference Jacobian (central differences through onnxruntime, float32 model) over a few random
  inputs in [-1, 1], confirmed by the ratio ||f(x + e v) - f(x)|| / e along the top right singular vector
  (the ratio is what is reported; it is a true lower bound up to float32 evaluation error ~1e-4 relative).
  lipcheck's certified upper bound must never be below it.
* ``per-op``: the AutoLip composition (design doc, "Composition") using, for every linear operator, its
  operator norm on the actual input shape (float64 power iteration with the adjoint via autograd, 2000
  steps: accurate to a few digits but from BELOW, so this is a reference, not a certificate), 1 for
  Relu/LeakyRelu(0.1)/Tanh/MaxPool 2x2 s2, and the exact constants of the design doc elsewhere.
* ``tighter``: the same with one known refinement (BN folded into its Conv; max instead of root-sum-square
  over branches on disjoint inputs), where one applies.

The numbers in README.md come from this script (torch 2.13.0, onnxruntime 1.32).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent


# -- helpers ------------------------------------------------------------------------------------------


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(HERE / f"{name}.onnx"))


def _values(model: onnx.ModelProto, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Initializers, Constant-node values and (evaluated with onnxruntime) the given computed tensors."""
    out = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    if names:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for n in names:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
            for i in sess.get_inputs()
        }
        out.update({n: v.astype(np.float64) for n, v in zip(names, sess.run(names, feeds), strict=True)})
    return out


def _sigma(w: np.ndarray) -> float:
    return float(np.linalg.svd(w, compute_uv=False)[0])


def _opnorm(fwd: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], iters: int = 2000) -> float:
    """sigma_max of a linear map by power iteration on A^T A (A^T via autograd), float64."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    x /= x.norm()
    for _ in range(iters):
        x.requires_grad_(True)
        y = fwd(x)
        (g,) = torch.autograd.grad(y, x, y)
        x = (g / g.norm()).detach()
    with torch.no_grad():
        return float(fwd(x).norm())


def _conv(w: np.ndarray, **kw) -> Callable[[torch.Tensor], torch.Tensor]:
    wt = torch.from_numpy(w)
    return lambda x: F.conv2d(x, wt, **kw)


def _bn_scale(v: dict[str, np.ndarray], node: onnx.NodeProto) -> np.ndarray:
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    gamma, _, _, var = (v[n] for n in node.input[1:5])
    return gamma / np.sqrt(var + eps)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# -- measured lower bounds ----------------------------------------------------------------------------


def lower_bound(name: str, points: int = 4, h: float = 1e-3, seed: int = 0) -> float:
    model = _load(name)
    for vi in list(model.graph.input) + list(model.graph.output):  # batch the finite differences
        vi.type.tensor_type.shape.dim[0].dim_param = "B"
    del model.graph.value_info[:]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [(i.name, list(i.shape[1:])) for i in sess.get_inputs()]
    sizes = [int(np.prod(s)) for _, s in inputs]
    n = sum(sizes)

    def f(xs: np.ndarray) -> np.ndarray:
        feeds, o = {}, 0
        for (nm, s), k in zip(inputs, sizes, strict=True):
            feeds[nm] = xs[:, o : o + k].reshape([xs.shape[0], *s]).astype(np.float32)
            o += k
        outs = sess.run(None, feeds)
        return np.concatenate([y.reshape(xs.shape[0], -1).astype(np.float64) for y in outs], axis=1)

    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(points):
        x = rng.uniform(-1.0, 1.0, size=(1, n))
        cols = []
        for c in range(0, n, 512):
            e = np.eye(n)[c : c + 512] * h
            cols.append((f(x + e) - f(x - e)) / (2 * h))
        jac = np.concatenate(cols, axis=0).T
        v = np.linalg.svd(jac, full_matrices=False)[2][0]
        for eps in (1e-2, 1e-3):
            best = max(best, float(np.linalg.norm(f(x + eps * v) - f(x)) / eps))
    return best


# -- per-op compositions ------------------------------------------------------------------------------


def ref_mlp(name: str = "mlp") -> tuple[float, float | None]:
    model = _load(name)
    v = _values(model)
    return math.prod(_sigma(v[n.input[1]]) for n in model.graph.node if n.op_type == "Gemm"), None


def ref_cnn_bn() -> tuple[float, float | None]:
    model = _load("cnn_bn")
    v = _values(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    shapes = [(1, 3, 32, 32), (1, 16, 16, 16)]
    per_op, folded = 1.0, 1.0
    for conv, bn, shp in zip(convs, bns, shapes, strict=True):
        w = v[conv.input[1]]
        s = _bn_scale(v, bn)
        per_op *= _opnorm(_conv(w, padding=1), shp) * float(np.abs(s).max())
        folded *= _opnorm(_conv(w * s[:, None, None, None], padding=1), shp)
    tail = (1 / math.sqrt(16 * 16)) * _sigma(v[gemm.input[1]])  # GlobalAveragePool over 16x16, then fc
    return per_op * tail, folded * tail


def ref_resnet_block() -> tuple[float, float | None]:
    model = _load("resnet_block")
    v = _values(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    shapes = [(1, 8, 16, 16), (1, 8, 16, 16), (1, 8, 16, 16), (1, 16, 8, 8), (1, 8, 16, 16)]
    norms = []
    for conv, shp in zip(convs, shapes, strict=True):
        a = _attrs(conv)
        norms.append(_opnorm(_conv(v[conv.input[1]], stride=a["strides"], padding=a["pads"][:2]), shp))
    b1c1, b1c2, b2c1, b2c2, short = norms
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    return (1 + b1c2 * b1c1) * (short + b2c2 * b2c1) / 8 * _sigma(v[gemm.input[1]]), None


def ref_sn_discriminator() -> tuple[float, float | None]:
    model = _load("sn_discriminator")
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    v = _values(model, [n.input[1] for n in layers])
    shapes = [(1, 3, 32, 32), (1, 16, 32, 32), (1, 16, 16, 16), (1, 32, 16, 16), (1, 32, 8, 8)]
    total = 1.0
    for conv, shp in zip(layers[:-1], shapes, strict=True):
        a = _attrs(conv)
        total *= _opnorm(_conv(v[conv.input[1]], stride=a["strides"], padding=a["pads"][:2]), shp)
    return total * _sigma(v[layers[-1].input[1]]), None  # LeakyRelu(0.1): 1


def ref_strided_dilated_depthwise() -> tuple[float, float | None]:
    v = _values(_load("strided_dilated_depthwise"))
    t = {k: torch.from_numpy(a) for k, a in v.items()}
    norms = [
        _opnorm(_conv(v["w_s2"], stride=2, padding=1), (1, 4, 16, 16)),
        _opnorm(_conv(v["w_dil"], dilation=2, padding=2), (1, 8, 8, 8)),
        _opnorm(lambda x: F.conv2d(F.pad(x, (0, 2, 1, 1)), t["w_dw"], groups=8), (1, 8, 8, 8)),
        _opnorm(lambda x: F.conv2d(F.pad(x, (0, 1, 0, 1)), t["w_grp"], groups=2), (1, 8, 8, 8)),
        _opnorm(
            lambda x: F.conv_transpose2d(x, t["w_tr"], stride=2, padding=1, output_padding=1), (1, 16, 8, 8)
        ),
        0.5,  # AveragePool 2x2 stride 2: exactly 1/2
    ]
    return math.prod(norms), None


def ref_constant_weights() -> tuple[float, float | None]:
    v = _values(_load("constant_weights"))
    return _sigma(v["W1"]) * _sigma(v["W2"]) * 0.5, None  # Tanh: 1, Mul by 0.5


def ref_multi_input() -> tuple[float, float | None]:
    v = _values(_load("multi_input"))
    a, b, head = _sigma(v["fa.weight"]), _sigma(v["fb.weight"]), _sigma(v["head.weight"])
    return math.hypot(a, b) * head, max(a, b) * head  # the branches read disjoint inputs


REFERENCES: dict[str, Callable[[], tuple[float, float | None]]] = {
    "mlp": ref_mlp,
    "cnn_bn": ref_cnn_bn,
    "resnet_block": ref_resnet_block,
    "sn_discriminator": ref_sn_discriminator,
    "strided_dilated_depthwise": ref_strided_dilated_depthwise,
    "attention": lambda: (math.inf, None),  # Q.K^T: product of two variable tensors
    "constant_weights": ref_constant_weights,
    "multi_input": ref_multi_input,
    "dynamic_batch": lambda: ref_mlp("dynamic_batch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    print("| model | lower (measured) | per-op (reference) | tighter variant |")
    print("|---|---:|---:|---:|")
    for name in args.names or REFERENCES:
        per_op, tighter = REFERENCES[name]()
        low = lower_bound(name, args.points)
        tight = f"{tighter:.4g}" if tighter is not None else ""
        print(f"| {name}.onnx | {low:.4g} | {per_op:.4g} | {tight} |", flush=True)


if __name__ == "__main__":
    main()
