"""LRN (LocalResponseNormalization): the global constant of lipcheck.rules.normalization.lrn_constant against exact
Jacobians (torch autograd, float64) of the ONNX formula, which is itself checked against onnxruntime; the interval
rule of lipcheck.bound.ranges against onnxruntime outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import lipcheck
from lipcheck.bound.ranges import propagate
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.rules.normalization import lrn_constant, lrn_window_counts
from tests.helpers import jacobian_ascent


def lrn_torch(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    """The ONNX formula over axis 1: y_c = x_c / (bias + alpha/size · Σ_{i ∈ window(c)} x_i²)^beta, window(c) =
    max(0, c - ⌊(size-1)/2⌋) .. min(C-1, c + ⌈(size-1)/2⌉). Independent of lipcheck's code."""
    channels = x.shape[1]
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    sq = x * x
    outs = []
    for c in range(channels):
        s = sq[:, max(0, c - before):min(channels - 1, c + after) + 1].sum(dim=1)
        outs.append(x[:, c] / (bias + alpha / size * s) ** beta)
    return torch.stack(outs, dim=1)


def lrn_model(shape: tuple[int, ...], **attrs: float):  # type: ignore[no-untyped-def]
    node = helper.make_node("LRN", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def jacobian_norm(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> float:
    """‖J(x)‖₂ of the per-position channel map (x: the C channels at one position), exact in float64."""
    def f(v: torch.Tensor) -> torch.Tensor:
        return lrn_torch(v.reshape(1, -1), size, alpha, beta, bias).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, torch.tensor(x, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac, 2))


def worst_jacobian(size: int, channels: int, alpha: float, beta: float, bias: float, seed: int = 0) -> float:
    """The largest ‖J(x)‖₂ over random points at scales 1e-3..1e3 of the characteristic √(bias·size/alpha),
    spikes (one or two large channels, the rest 0 or small), and a gradient ascent on ‖J‖."""
    rng = np.random.default_rng(seed)
    scale = math.sqrt(bias * size / alpha) if alpha > 0 else 1.0
    best = jacobian_norm(np.zeros(channels), size, alpha, beta, bias)
    for t in range(150):
        s = scale * 10 ** rng.uniform(-3, 3)
        if t % 3 == 0:
            x = np.zeros(channels)
            i = rng.integers(channels)
            x[i] = s
            x[(i + 1) % channels] = -s * rng.uniform(0, 2) if t % 2 else 0.0
        elif t % 3 == 1:
            x = rng.standard_normal(channels) * s
        else:
            x = np.full(channels, s) * rng.choice([-1.0, 1.0], channels)
        best = max(best, jacobian_norm(x, size, alpha, beta, bias))
    def f(u: torch.Tensor) -> torch.Tensor:
        return lrn_torch(u.reshape(1, -1), size, alpha, beta, bias).reshape(-1)

    return max(best, jacobian_ascent(f, rng.standard_normal(channels) * scale, 150, 0.05 * scale))


def test_formula_matches_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    for size, alpha, beta, bias in [(5, 1e-4, 0.75, 1.0), (3, 2.0, 0.75, 1.0), (1, 3.0, 1.5, 0.5), (7, 0.5, 0.3, 2.0)]:
        m = lrn_model((2, 6, 3, 3), size=size, alpha=alpha, beta=beta, bias=bias)
        x = (rng.standard_normal((2, 6, 3, 3)) * 3).astype(np.float32)
        (ours,) = session(m).run(None, {"x": x})
        ref = lrn_torch(torch.tensor(x, dtype=torch.float64), size, float(np.float32(alpha)),
                        float(np.float32(beta)), float(np.float32(bias))).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "channels", "alpha", "beta", "bias"),
    [pytest.param(5, 8, 1e-4, 0.75, 1.0, marks=pytest.mark.slow), (3, 4, 1.0, 0.75, 1.0),
     pytest.param(5, 16, 2.0, 0.75, 2.0, marks=pytest.mark.slow), (1, 1, 1.0, 0.75, 1.0),
     (3, 6, 1.0, 2.0, 0.5), (4, 7, 0.5, 0.3, 1.0), (5, 3, 1.0, 1.0, 1.0), (2, 5, 10.0, 0.5, 0.1)],
)
def test_constant_bounds_the_exact_jacobian(size: int, channels: int, alpha: float, beta: float, bias: float) -> None:
    bound = lrn_constant(alpha, beta, bias, size, channels)
    worst = worst_jacobian(size, channels, alpha, beta, bias)
    assert worst <= bound
    assert bound <= 10 * worst  # not absurdly loose (measured: within 2×, the worst being J(0) = bias^-beta)
    assert worst >= bias ** -beta * (1 - 1e-12)  # J(0) = bias^-beta·I is always reached


def test_closed_form_pieces() -> None:
    assert lrn_window_counts(5, 16) == (5, 5)
    assert lrn_window_counts(5, 3) == (3, 3)
    assert lrn_window_counts(4, 7) == (4, 4)
    assert lrn_window_counts(1, 9) == (1, 1)
    # alpha = 0 (or beta = 0): y = x·bias^-beta, a scaling
    assert lrn_constant(0.0, 0.75, 2.0, 5, 8) == pytest.approx(2.0 ** -0.75)
    assert lrn_constant(1.0, 0.0, 2.0, 5, 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lrn_constant(1.0, 0.75, 0.0, 5, 8)


def test_rule_through_analyze_uses_onnx_defaults() -> None:
    # defaults alpha = 1e-4, beta = 0.75, bias = 1 (float32 attributes); size is required
    r = lipcheck.analyze(lrn_model((1, 8, 4, 4), size=5), lower_bound=False)
    expected = lrn_constant(float(np.float32(1e-4)), float(np.float32(0.75)), 1.0, 5, 8)
    assert r.upper_bound == pytest.approx(expected, rel=1e-12)
    assert r.upper_bound >= expected
    assert r.certified and not r.unbounded
    (op,) = [o for o in r.ops if o.op == "LRN"]
    assert "LRN" in op.rule and op.constant == pytest.approx(expected)


def test_rule_composes_with_a_scale_and_reaches_measured_ratios() -> None:
    rng = np.random.default_rng(1)
    m = lrn_model((1, 6, 2, 2), size=3, alpha=2.0, beta=0.75, bias=1.5)
    r = lipcheck.analyze(m, lower_bound=False)
    sess = session(m)
    best = 0.0
    for _ in range(200):
        x = rng.standard_normal((1, 6, 2, 2)).astype(np.float32) * 10 ** rng.uniform(-2, 1)
        d = rng.standard_normal((1, 6, 2, 2)).astype(np.float32) * 1e-2
        (a,) = sess.run(None, {"x": x})
        (b,) = sess.run(None, {"x": x + d})
        best = max(best, float(np.linalg.norm(a - b) / np.linalg.norm(d)))
    assert best <= r.upper_bound
    assert r.upper_bound <= 10 * max(best, 1.5 ** -0.75)


def test_bad_attributes_are_unbounded_with_the_node_named() -> None:
    r = lipcheck.analyze(lrn_model((1, 4, 2, 2), size=3, bias=0.0), lower_bound=False)
    assert r.upper_bound is None
    (u,) = r.unbounded
    assert u.op == "LRN" and "bias" in u.reason


def test_ranges_hold_onnxruntime_outputs_and_refuse_cancellation() -> None:
    """onnxruntime keeps a running window sum (add the head, subtract the tail): with a huge channel beside small
    ones it cancels (NaN, inf or wrong values); the interval rule leaves those positions unbounded."""
    rng = np.random.default_rng(2)
    for size, alpha, beta, bias in [(5, 1e-4, 0.75, 1.0), (3, 1.0, 0.75, 1.0), (3, 2.0, 1.5, 0.5)]:
        m = lrn_model((2, 7, 3, 3), size=size, alpha=alpha, beta=beta, bias=bias)
        graph, sess = load_onnx(m), session(m)
        for _ in range(4):
            c = rng.standard_normal((2, 7, 3, 3)) * 10 ** rng.uniform(-1, 1.5)
            r = np.abs(rng.standard_normal((2, 7, 3, 3))) * 10 ** rng.uniform(-2, 0.5)
            ranges = propagate(graph, {"x": (c - r, c + r)})
            iv = ranges["y"]
            assert iv.is_finite
            for _ in range(30):
                x = (c - r + 2 * r * rng.uniform(size=c.shape)).astype(np.float32)
                x = np.clip(x, (c - r).astype(np.float32), (c + r).astype(np.float32))
                assert iv.contains(sess.run(None, {"x": x})[0])
    m = lrn_model((1, 4, 1, 1), size=1, alpha=3.0, beta=0.75, bias=1.0)
    x = np.array([1e4, 0, 0, 0.5], np.float32).reshape(1, 4, 1, 1)
    ranges = propagate(load_onnx(m), {"x": (x.astype(np.float64), x.astype(np.float64))})
    assert "y" in ranges.unbounded and "LRN" in ranges.unbounded["y"]
    assert not np.isfinite(ranges["y"].hi).all()
