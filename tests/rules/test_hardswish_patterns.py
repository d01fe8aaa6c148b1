"""x·g(x) patterns exporters write for HardSwish: x·HardSigmoid(x) and x·relu6(x + 3)/6 (Clip forms). Each gets
the exact constant of the element-wise map (the largest |slope| of a continuous, piecewise smooth function),
checked on a fine grid and against onnxruntime difference quotients."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import lipcheck
from tests.helpers import float_model

SIX, THREE = np.array(6.0), np.array(3.0)


def graph(form: str):  # type: ignore[no-untyped-def]
    """y = h(x) element-wise on [1, 16], h the HardSwish form named, plus the expected function in numpy."""
    if form == "hardsigmoid":
        nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
                 helper.make_node("Mul", ["x", "g"], ["y"])]
        return nodes, {}, lambda v: v * np.clip(v / 6 + 0.5, 0, 1), 1.5
    if form == "hardsigmoid_default":  # α = 0.2, β = 0.5 (ONNX defaults): max(1, 0.5, 1.5)
        nodes = [helper.make_node("HardSigmoid", ["x"], ["g"]), helper.make_node("Mul", ["g", "x"], ["y"])]
        return nodes, {}, lambda v: v * np.clip(0.2 * v + 0.5, 0, 1), 1.5
    if form == "clip_div":
        nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Div", ["c", "six"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"])]
        return nodes, {"three": THREE, "zero": np.array(0.0), "six": SIX}, \
            lambda v: v * np.clip(v + 3, 0, 6) / 6, 1.5
    if form == "clip_then_div":  # x·relu6(3 + x), then /6 after the product: 9, then the Div's 1/6
        nodes = [helper.make_node("Add", ["three", "x"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                 helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
        return nodes, {"three": THREE, "zero": np.array(0.0), "six": SIX}, \
            lambda v: v * np.clip(v + 3, 0, 6) / 6, 1.5
    # an asymmetric clip with a scale: x·0.5·clip(x − 1, −2, 4): slopes 0.5·max(2, 4, |−4+1|, |8+1|) = 4.5
    nodes = [helper.make_node("Sub", ["x", "one"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["c"]),
             helper.make_node("Mul", ["c", "half"], ["g"]), helper.make_node("Mul", ["g", "x"], ["y"])]
    return nodes, {"one": np.array(1.0), "lo": np.array(-2.0), "hi": np.array(4.0), "half": np.array(0.5)}, \
        lambda v: v * 0.5 * np.clip(v - 1, -2, 4), 4.5


@pytest.mark.parametrize("form", ["hardsigmoid", "hardsigmoid_default", "clip_div", "clip_then_div", "general"])
def test_hardswish_forms_get_their_exact_constant(form: str) -> None:
    nodes, inits, fn, expected = graph(form)
    model = float_model(nodes, inits, [1, 16], "y", [1, 16])
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert report.certified and report.upper_bound is not None, report.unbounded
    assert report.upper_bound == pytest.approx(expected, rel=1e-9)
    grid = np.linspace(-20, 20, 400001)
    slopes = np.abs(np.diff(fn(grid)) / np.diff(grid))
    assert slopes.max() <= report.upper_bound
    assert slopes.max() >= 0.999 * report.upper_bound  # the constant is reached: exact, not just a bound
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.uniform(-10, 10, (1, 16)).astype(np.float32)
        b = a + rng.standard_normal((1, 16)).astype(np.float32) * 0.1
        fa, fb = (np.asarray(sess.run(None, {"x": v})[0], np.float64) for v in (a, b))
        np.testing.assert_allclose(fa, fn(a.astype(np.float64)), rtol=1e-5, atol=1e-5)
        assert np.linalg.norm(fa - fb) / np.linalg.norm(b.astype(np.float64) - a) <= report.upper_bound * (1 + 1e-5)


def test_a_product_with_a_clip_of_another_tensor_stays_unbounded() -> None:
    """x·relu6(z + 3)/6 with z ≠ x is a product of two tensors: no pattern, no global constant."""
    nodes = [helper.make_node("Neg", ["x"], ["z"]), helper.make_node("Add", ["z", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"]), helper.make_node("Mul", ["x", "c"], ["y"])]
    model = float_model(nodes, {"three": THREE, "zero": np.array(0.0), "six": SIX}, [1, 16], "y", [1, 16])
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert not report.certified and [u.op for u in report.unbounded] == ["Mul"]
