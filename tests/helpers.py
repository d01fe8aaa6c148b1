"""Small builders for hand-made ONNX graphs used across the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str]]] | Sequence[onnx.ValueInfoProto],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    ins = [
        i if isinstance(i, onnx.ValueInfoProto) else helper.make_tensor_value_info(i[0], TensorProto.FLOAT, list(i[1]))
        for i in inputs
    ]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "test", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def float_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], in_shape: list[int], out: str,
                out_shape: list[int]) -> onnx.ModelProto:
    """One float32 input ``x`` of ``in_shape``, one output of ``out_shape``, float32 initializers, opset 17."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def rng_weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def untimed(report: dict[str, Any]) -> dict[str, Any]:
    """A JSON report (``to_dict()``, or a check report with ``models``) with every composition method's time
    (``bounds[].seconds``, and its blocks' ``bounds[].blocks[].seconds``) set to 0: timings are the one thing two
    runs of the same analysis do not share."""
    for bound in report.get("bounds", []):
        bound["seconds"] = 0.0
        for block in bound.get("blocks", []):
            block["seconds"] = 0.0
    for model in report.get("models", []):
        untimed(model)
    return report


def jacobian_ascent(fn: Any, v0: np.ndarray, steps: int, lr: float) -> float:
    """The largest ‖J(v)‖₂ of ``fn`` (a float64 torch function of a vector) seen along Adam ascent on ‖J‖ from v0:
    a lower reference for a Lipschitz constant (every value is a real Jacobian norm)."""
    import torch

    v = torch.tensor(v0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    best = 0.0
    for _ in range(steps):
        jac = torch.autograd.functional.jacobian(fn, v, create_graph=True)
        norm = torch.linalg.matrix_norm(jac, 2)
        best = max(best, float(norm.detach()))
        opt.zero_grad()
        (-norm).backward()
        opt.step()
    return best


def random_conv_ops(seed: int, count: int, *, dims: Sequence[int] = (1, 2, 2, 3), max_kernel: int = 3,
                    max_spatial: int = 6) -> list[Any]:
    """Random small convolution operators (lipcheck.norms.conv._ConvOperator): 1-3 spatial dims, groups 1-3,
    strides and dilations 1-2, pads 0-2 on each side, 30 % of them with non-negative (smooth) kernels; geometries
    whose kernel exceeds the padded input are drawn again."""
    from lipcheck.norms.conv import ConvGeometry, _ConvOperator

    rng = np.random.default_rng(seed)
    ops: list[Any] = []
    while len(ops) < count:
        d = int(rng.choice(list(dims)))
        g = int(rng.choice([1, 1, 2, 3]))
        c_in, c_out = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
        k = tuple(int(rng.integers(1, max_kernel + 1)) for _ in range(d))
        if all(v == 1 for v in k):
            continue
        w = rng.standard_normal((c_out, c_in // g, *k))
        if rng.random() < 0.3:
            w = np.abs(w)  # smooth kernels: the circular embedding's maximum sits at frequency 0
        geom = ConvGeometry(
            input_spatial=tuple(int(rng.integers(3, max_spatial + 1 if d < 3 else 5)) for _ in range(d)),
            strides=tuple(int(rng.integers(1, 3)) for _ in range(d)),
            dilations=tuple(int(rng.integers(1, 3)) for _ in range(d)),
            pads_begin=tuple(int(rng.integers(0, 3)) for _ in range(d)),
            pads_end=tuple(int(rng.integers(0, 3)) for _ in range(d)),
            groups=g,
        )
        try:
            ops.append(_ConvOperator(w, geom))
        except ValueError:
            continue
    return ops
