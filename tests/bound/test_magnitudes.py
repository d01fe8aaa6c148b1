"""√(x_1² + … + x_k²) (an STFT magnitude, an RMS) rewritten as a ReduceL2 (lipcheck.ir.canonicalize.fold_magnitudes):
a global constant where √ and the squares alone have none, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import lipcheck
from lipcheck.ir.canonicalize import fold_magnitudes
from lipcheck.loaders.onnx_loader import load_onnx
from tests.helpers import float_model, rng_weights


def magnitude_model(kind: str, opset: int = 17):  # type: ignore[no-untyped-def]
    """x [1, 6] → re = x·Wrᵀ, im = x·Wiᵀ ([1, 8]) → √(re² + im²) (squares as Pow / Mul) → Gemm [1, 3]."""
    nodes = [helper.make_node("Gemm", ["x", "wr"], ["re"], transB=1, name="gr"),
             helper.make_node("Gemm", ["x", "wi"], ["im"], transB=1, name="gi")]
    if kind == "pow_mul":
        nodes += [helper.make_node("Pow", ["re", "two"], ["re2"], name="p"),
                  helper.make_node("Mul", ["im", "im"], ["im2"], name="m"),
                  helper.make_node("Add", ["re2", "im2"], ["s"], name="add")]
    elif kind == "single":
        nodes += [helper.make_node("Mul", ["re", "re"], ["s"], name="m")]
    else:  # "shared": the square is read twice, so nothing may be rewritten
        nodes += [helper.make_node("Pow", ["re", "two"], ["re2"], name="p"),
                  helper.make_node("Add", ["re2", "re2"], ["s"], name="add")]
    nodes += [helper.make_node("Sqrt", ["s"], ["mag"], name="sqrt"),
              helper.make_node("Gemm", ["mag", "w"], ["y"], transB=1, name="out")]
    inits = {"wr": rng_weights(8, 6, seed=1), "wi": rng_weights(8, 6, seed=2), "w": rng_weights(3, 8, seed=3),
             "two": np.array(2.0)}
    model = float_model(nodes, inits, [1, 6], "y", [1, 3])
    model.opset_import[0].version = opset
    return model


@pytest.mark.parametrize("opset", [pytest.param(13, marks=pytest.mark.slow), 18])
def test_magnitude_gets_a_global_bound_above_onnxruntime_ratios(opset: int) -> None:
    model = magnitude_model("pow_mul", opset)
    graph = fold_magnitudes(load_onnx(model))
    ops = [n.op_type for n in graph.nodes]
    assert "ReduceL2" in ops and "Sqrt" not in ops and "Pow" not in ops
    report = lipcheck.analyze(model, lower_bound_seconds=1.0, method="product")
    assert report.certified and report.upper_bound is not None, report.unbounded
    # the evaluator of the rewritten graph agrees with onnxruntime on the original (else no lower bound)
    assert report.lower_bound is not None and report.lower_bound.value is not None
    assert report.lower_bound.value <= report.upper_bound
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        a = rng.standard_normal((1, 6)).astype(np.float32) * rng.uniform(0.01, 3)
        b = a + rng.standard_normal((1, 6)).astype(np.float32) * rng.uniform(0.001, 1)
        fa, fb = (np.asarray(sess.run(None, {"x": v})[0], np.float64) for v in (a, b))
        worst = max(worst, np.linalg.norm(fa - fb) / np.linalg.norm(b.astype(np.float64) - a))
    assert worst <= report.upper_bound
    # the bound: ‖W‖·√(‖Wr‖² + ‖Wi‖²), the magnitude's joint constant 1
    wr, wi, w = (np.linalg.norm(rng_weights(*s, seed=k).astype(np.float64), 2)
                 for s, k in (((8, 6), 1), ((8, 6), 2), ((3, 8), 3)))
    assert report.upper_bound == pytest.approx(w * np.sqrt(wr**2 + wi**2), rel=1e-5)


def test_square_root_of_one_square_is_abs() -> None:
    model = magnitude_model("single")
    graph = fold_magnitudes(load_onnx(model))
    assert [n.op_type for n in graph.nodes] == ["Gemm", "Gemm", "Abs", "Gemm"]
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert report.certified


def test_a_square_read_twice_is_not_rewritten_and_stays_unbounded() -> None:
    model = magnitude_model("shared")
    graph = fold_magnitudes(load_onnx(model))
    assert "Sqrt" in [n.op_type for n in graph.nodes]
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert not report.certified and {u.op for u in report.unbounded} >= {"Sqrt"}
