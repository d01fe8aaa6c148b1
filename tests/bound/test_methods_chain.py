"""Chain recognition in a Graph (lipcheck.bound.methods.chain), on tiny hand-built ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from lipcheck import load
from lipcheck.bound.methods.chain import chain_bound, find_chain
from tests.helpers import float_model


def _mlp(act: str = "Relu", alpha: float = 1.0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((6, 8)), "b1": rng.standard_normal(6), "w2": rng.standard_normal((6, 5)),
             "b2": rng.standard_normal(5), "w3": rng.standard_normal((3, 5))}
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h1"], transB=1, alpha=alpha),
        helper.make_node(act, ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["h3"]),
        helper.make_node(act, ["h3"], ["a2"]),
        helper.make_node("Gemm", ["a2", "w3"], ["y"], transB=1),
    ]
    return float_model(nodes, inits, [1, 2, 4], "y", [1, 3]), inits


@pytest.mark.parametrize("act, alpha", [("Relu", 1.0), ("Tanh", 0.5), ("Sigmoid", -3.0)])
def test_mlp_chain_bound_is_sound(act: str, alpha: float) -> None:
    model, inits = _mlp(act, alpha)
    graph = load(model)
    found = find_chain(graph)
    assert not isinstance(found, str), found
    chain, factor = found
    assert [w.shape for w in chain.weights] == [(6, 8), (5, 6), (3, 5)] and factor == abs(alpha)
    result = chain_bound(graph, iterations=40)
    assert result is not None and result.certified and result.value is not None
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    best = 0.0
    for _ in range(300):
        x = rng.standard_normal((1, 2, 4)).astype(np.float32) * 2
        y = x + rng.standard_normal((1, 2, 4)).astype(np.float32) * 0.1
        fx, fy = (sess.run(None, {"x": v})[0].astype(np.float64) for v in (x, y))
        best = max(best, float(np.linalg.norm(fx - fy) / np.linalg.norm(x.astype(np.float64) - y)))
    assert result.value >= best * (1 - 1e-5)  # float32 inference rounding on the measured side
    product = np.prod([np.linalg.norm(w, 2) for w in chain.weights]) * factor * (0.25 if act == "Sigmoid" else 1) ** 2
    assert result.value <= product * (1 + 1e-9)


def test_residual_is_not_a_chain() -> None:
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((4, 4))}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["y"])]
    graph = load(float_model(nodes, inits, [1, 4], "y", [1, 4]))
    assert isinstance(find_chain(graph), str)
    assert chain_bound(graph) is None


def test_consecutive_linears_and_trailing_activation() -> None:
    rng = np.random.default_rng(3)
    inits = {"w1": rng.standard_normal((4, 3)), "w2": rng.standard_normal((3, 2))}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z"]),
             helper.make_node("LeakyRelu", ["z"], ["y"], alpha=0.1)]
    graph = load(float_model(nodes, inits, [1, 4], "y", [1, 2]))
    found = find_chain(graph)
    assert not isinstance(found, str), found
    chain, _ = found
    assert chain.slopes[0] == (1.0, 1.0) and chain.slopes[1] == pytest.approx((0.1, 1.0))
    result = chain_bound(graph, iterations=20)
    sigma = np.linalg.norm(inits["w1"] @ inits["w2"], 2)
    assert result is not None and result.value is not None and result.value >= sigma * (1 - 1e-6)
