"""A positive constant is never rounded to 0, nor down: float64 weights of 1e-200 (squares and products underflow).

The audit's case: float64 weights of ~1e-200 were certified 0.0 (the true constant 6.8e-199).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.bound.walker import mul_up, rss_up, sum_up
from lipcheck.norms.matrix import ldexp_norms, normalizing_exponent
from lipcheck.report.model import NormResult

D = TensorProto.DOUBLE


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape: list[int]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "uf",
        [helper.make_tensor_value_info("X", D, shape)],
        [helper.make_tensor_value_info("Y", D, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e-300, 1e200, 1e150])
def test_extreme_float64_gemm_is_certified_at_its_true_size(scale: float) -> None:
    w = np.random.default_rng(1).standard_normal((6, 5)) * scale
    m = _model([helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1)], {"W": w}, [1, 5])
    report = lipcheck.analyze(m, lower_bound=False)
    truth = float(np.linalg.svd(w / scale, compute_uv=False)[0]) * scale
    assert report.certified
    assert truth <= report.upper_bound <= truth * (1 + 1e-6)
    layer = report.layers[0]
    assert layer.sigma_power <= layer.sigma_exact * (1 + 1e-12)
    assert layer.sigma_exact == pytest.approx(truth, rel=1e-10)


def test_extreme_float64_conv_is_certified_above_its_dense_operator() -> None:
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 2, 3, 3)) * 1e-200
    m = _model([helper.make_node("Conv", ["X", "K"], ["Y"], pads=[1, 1, 1, 1])], {"K": k}, [1, 2, 4, 4])
    report = lipcheck.analyze(m, lower_bound=False)
    # the dense matrix of the conv, on the kernel scaled back to 1 (the operator is linear in the kernel)
    unit = k / 1e-200
    dense = np.zeros((3 * 16, 2 * 16))
    for c in range(2):
        for i in range(4):
            for j in range(4):
                x = np.zeros((2, 4, 4))
                x[c, i, j] = 1.0
                xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
                y = np.einsum(
                    "ocij,cpqij->opq", unit, np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
                )
                dense[:, c * 16 + i * 4 + j] = y.ravel()
    truth = float(np.linalg.svd(dense, compute_uv=False)[0]) * 1e-200
    assert report.certified
    assert truth <= report.upper_bound <= truth * 1.05
    assert report.layers[0].sigma_power > 0


def test_a_chain_whose_constant_underflows_float64_stays_positive() -> None:
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((8, 4)) * 1e-200, rng.standard_normal((3, 8)) * 1e-200
    nodes = [
        helper.make_node("Gemm", ["X", "W1"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "W2"], ["Y"], transB=1),
    ]
    report = lipcheck.analyze(_model(nodes, {"W1": w1, "W2": w2}, [1, 4]), lower_bound=False)
    # the true constant is ~1e-400: below every float64; the certificate is the smallest float above it, not 0
    assert report.certified and report.upper_bound > 0.0


def test_several_outputs_combine_without_underflow() -> None:
    w = np.random.default_rng(4).standard_normal((4, 4)) * 1e-200
    nodes = [
        helper.make_node("Gemm", ["X", "W"], ["a"], transB=1),
        helper.make_node("Gemm", ["X", "W"], ["b"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("X", D, [1, 4])],
        [helper.make_tensor_value_info("a", D, None), helper.make_tensor_value_info("b", D, None)],
        [numpy_helper.from_array(w, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    report = lipcheck.analyze(m, lower_bound=False)
    sigma = float(np.linalg.svd(w / 1e-200, compute_uv=False)[0]) * 1e-200
    assert report.upper_bound >= math.sqrt(2) * sigma


@pytest.mark.parametrize("seed", range(20))
def test_rounding_helpers_never_round_down(seed: int) -> None:
    """Against exact rational arithmetic (fractions) on random magnitudes, tiny and huge included."""
    from fractions import Fraction

    rng = np.random.default_rng(seed)
    values = [float(v) * 10.0 ** int(e) for v, e in zip(rng.uniform(0.1, 10, 4), rng.integers(-320, 300, 4))]
    a, b = values[0], values[1]
    exact_product = Fraction(a) * Fraction(b)
    up = mul_up(a, b)
    assert math.isinf(up) or Fraction(up) >= exact_product
    assert up > 0
    s = sum_up(values)
    assert math.isinf(s) or Fraction(s) >= sum(Fraction(v) for v in values)
    r = rss_up(values)
    exact_sq = sum(Fraction(v) ** 2 for v in values)
    assert math.isinf(r) or Fraction(r) ** 2 >= exact_sq


def test_power_of_two_normalization_is_exact_or_rounded_up() -> None:
    w = np.full((2, 2), 3e-310)  # subnormal float64 entries
    k = normalizing_exponent(w)
    assert k < 0 and 0.5 <= np.max(np.abs(np.ldexp(w, -k))) < 1.0
    assert normalizing_exponent(np.ones((2, 2), np.float32) * np.float32(1e-38)) == 0  # float32 squares fit float64
    norms = NormResult(
        sigma_power=0.7, power_iterations=3, sigma_exact=0.75, exact_method="svd", sigma_upper=0.75, upper_method="svd"
    )
    scaled = ldexp_norms(norms, -1074)
    assert scaled.sigma_upper > 0 and scaled.sigma_upper >= 0.75 * 2.0**-1074


def test_a_chain_whose_bound_overflows_float64_is_uncertified_and_names_the_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The other end: finite factors of 1e200 whose product passes 1.8e308. No certificate, the node named, the
    estimates finite per layer (no NaN from the power iteration), and the plot still drawn."""
    rng = np.random.default_rng(5)
    inits = {f"W{i}": rng.standard_normal((4, 4)) * 1e200 for i in range(3)}
    nodes = [
        helper.make_node(
            "Gemm", ["X" if i == 0 else f"h{i}", f"W{i}"], [f"h{i + 1}" if i < 2 else "Y"], transB=1, name=f"fc{i}"
        )
        for i in range(3)
    ]
    m = _model(nodes, inits, [1, 4])
    report = lipcheck.analyze(m, lower_bound=False)
    assert not report.certified
    assert [(u.node, "overflows" in u.reason) for u in report.unbounded] == [("fc1", True)]
    for layer in report.layers:
        assert math.isfinite(layer.sigma_power) and layer.sigma_power <= layer.sigma_exact * (1 + 1e-9)
    pytest.importorskip("matplotlib")
    from lipcheck.report.plot import save_plot

    save_plot(report, tmp_path / "overflow.png")
    assert (tmp_path / "overflow.png").stat().st_size > 0
