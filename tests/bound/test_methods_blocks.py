"""The blocks method (lipcheck.bound.methods.blocks / linear / residual): composed linear operators against
independent references (onnxruntime, dense torch convolutions), residual-block certificates against the exact
maximum over every activation pattern, and the decomposition of real sample models."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from lipcheck import load
from lipcheck.bound.methods.blocks import Limits, blocks_bound, decompose
from lipcheck.bound.methods.linear import DenseOperator, materialize, operator_norm
from lipcheck.bound.methods.lipsdp import Chain, lipsdp
from lipcheck.bound.methods.residual import certify_residual
from lipcheck.bound.walker import walk
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.report.model import Settings
from tests.helpers import float_model

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def _linear_cnn(seed: int = 0) -> tuple[onnx.ModelProto, list[int]]:
    """x → Conv(stride 2, pads, groups 2) → BN → AveragePool → [I + Conv(dilation 2)] → Sub const → Flatten → Gemm:
    every op linear up to a shift, so the whole model is one affine map."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((6, 2, 3, 3)), "b1": rng.standard_normal(6),
        "g": rng.uniform(0.5, 1.5, 6), "beta": rng.standard_normal(6), "mu": rng.standard_normal(6) * 0.1,
        "var": rng.uniform(0.5, 2.0, 6),
        "w2": rng.standard_normal((6, 6, 3, 3)) * 0.3, "c": rng.standard_normal((1, 6, 3, 3)),
        "w3": rng.standard_normal((5, 54)), "b3": rng.standard_normal(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 0, 1, 1], group=2),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["n1"]),
        helper.make_node("AveragePool", ["n1"], ["p1"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Add", ["p1", "c2"], ["r"]),
        helper.make_node("Sub", ["r", "c"], ["s"]),
        helper.make_node("Flatten", ["s"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    return float_model(nodes, inits, [1, 4, 6, 6], "y", [1, 5]), [1, 4, 6, 6]


def test_composed_operator_matches_onnxruntime() -> None:
    model, shape = _linear_cnn()
    graph = fold_batchnorm(load(model))
    op = materialize(graph, list(graph.nodes), "x", "y")
    assert isinstance(op, DenseOperator), op
    assert op.matrix.shape == (5, math.prod(shape))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    zero = sess.run(None, {"x": np.zeros(shape, np.float32)})[0].astype(np.float64).ravel()
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal(shape).astype(np.float32)
        measured = sess.run(None, {"x": x})[0].astype(np.float64).ravel() - zero
        predicted = op.matrix @ x.astype(np.float64).ravel()
        assert np.linalg.norm(measured - predicted) <= 1e-4 * np.linalg.norm(predicted)  # float32 inference
    # the error bound is tiny but not zero, and the certified norm is at least the exact one
    assert 0 < op.error.max() < 1e-10 * np.abs(op.matrix).max()
    upper, estimate = operator_norm(op)
    exact = np.linalg.norm(op.matrix, 2)
    assert exact * (1 - 1e-4) <= estimate <= upper and exact <= upper <= exact * (1 + 1e-8)  # power: from below


def test_composed_convolutions_equal_dense_torch_reference() -> None:
    """Conv → Conv (zero padding between them) against the product of the two dense conv matrices built with
    torch's conv2d in float64, independently of lipcheck's evaluator; the error bound covers the difference."""
    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((2, 3, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = load(float_model(nodes, {"w1": w1, "w2": w2}, [1, 2, 5, 5], "y", [1, 2, 3, 3]))
    op = materialize(graph, list(graph.nodes), "x", "y")
    assert isinstance(op, DenseOperator), op

    def dense(w: np.ndarray, shape: tuple[int, ...], **kw: object) -> np.ndarray:
        n = math.prod(shape)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        t = torch.from_numpy(w.astype(np.float32).astype(np.float64))
        return torch.nn.functional.conv2d(basis, t, **kw).reshape(n, -1).T.numpy()  # type: ignore[arg-type]

    a1 = dense(w1, (2, 5, 5), padding=1)
    a2 = dense(w2, (3, 5, 5), padding=1, stride=2)
    reference = a2 @ a1
    assert np.all(np.abs(op.matrix - reference) <= op.error + 1e-300)
    assert np.abs(op.matrix - reference).max() < 1e-12
    # the composed operator's norm is below the product of the parts (the point of composing)
    upper, _ = operator_norm(op)
    assert upper < np.linalg.norm(a1, 2) * np.linalg.norm(a2, 2)


def test_materialize_refuses_nonlinear_and_large() -> None:
    model, _ = _linear_cnn()
    graph = fold_batchnorm(load(model))
    assert isinstance(materialize(graph, list(graph.nodes), "x", "y", max_entries=100), str)
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = load(float_model(nodes, {"w": rng.standard_normal((3, 3))}, [1, 3], "y", [1, 3]))
    reason = materialize(graph, list(graph.nodes), "x", "y")
    assert isinstance(reason, str) and "Relu" in reason


def _all_patterns_max(s: np.ndarray, w1: np.ndarray, w2: np.ndarray, corners: tuple[float, float]) -> float:
    """max over every diagonal D with entries in {α, β} of ‖S + W₂DW₁‖: the exact constant of the family the
    certificate covers is attained at a corner (the norm is convex in each entry of D)."""
    best = 0.0
    for pattern in itertools.product(corners, repeat=w1.shape[0]):
        best = max(best, float(np.linalg.norm(s + w2 @ np.diag(pattern) @ w1, 2)))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.25)])
def test_residual_certificate_is_sound(seed: int, interval: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    d, h = 4, 6
    w1, w2 = rng.standard_normal((h, d)), rng.standard_normal((d, h)) * 0.5
    s = np.eye(d) if seed % 2 == 0 else rng.standard_normal((d, d))
    value = certify_residual(s, w1, w2, interval, (None, None, None))
    assert value is not None
    exact = _all_patterns_max(s, w1, w2, interval)
    assert value >= exact * (1 - 1e-12)
    product = np.linalg.norm(s, 2) + np.linalg.norm(w2, 2) * np.linalg.norm(w1, 2) * max(map(abs, interval))
    assert value <= product * 1.01  # scalar multipliers: never much above the product (the method keeps the min)


def test_residual_certificate_accounts_for_operator_errors() -> None:
    """An error bound as large as the weights themselves must raise the certified value above the exact constant
    of any chain within it: W₂ + E with E = |W₂| can double W₂."""
    rng = np.random.default_rng(7)
    w1, w2 = rng.standard_normal((5, 3)), rng.standard_normal((3, 5))
    s = np.eye(3)
    tight = certify_residual(s, w1, w2, (0.0, 1.0), (None, None, None))
    loose = certify_residual(s, w1, w2, (0.0, 1.0), (None, None, np.abs(w2)))
    assert tight is not None
    assert loose is None or loose >= _all_patterns_max(s, w1, 2 * w2, (0.0, 1.0))


def test_lipsdp_certificate_accounts_for_weight_errors() -> None:
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((6, 4)), rng.standard_normal((2, 6))
    exact = lipsdp(Chain((w1, w2), ((0.0, 1.0),)), iterations=30)
    widened = lipsdp(Chain((w1, w2), ((0.0, 1.0),), (None, 1e-3 * np.abs(w2))), iterations=30)
    assert exact.value is not None and widened.value is not None
    # every chain W₂' with |W₂' − W₂| ≤ |W₂|/1000 is covered, e.g. 1.001·W₂
    worst = max(float(np.linalg.norm(1.001 * w2 @ np.diag(p) @ w1, 2)) for p in itertools.product((0, 1), repeat=6))
    assert widened.value >= worst * (1 - 1e-12) and widened.value > exact.value


@pytest.mark.slow
def test_resnet_block_sample_decomposition_and_soundness() -> None:
    graph = fold_batchnorm(load(str(SAMPLES / "resnet_block.onnx")))
    pieces = decompose(graph)
    assert not isinstance(pieces, str)
    kinds = [p.kind for p in pieces]
    assert kinds == ["other", "activation", "other", "activation", "linear"]
    walked = walk(graph, Settings(exact_limit=0, power_iterations=30))
    product = walked.output_bound(graph, walked.upper)
    result = blocks_bound(graph, walked.bounds, Limits(search_seconds=2.0))
    assert result.certified and result.value is not None
    methods = [b["method"] for b in result.detail["blocks"]]
    assert methods.count("residual") == 2
    assert result.value < 0.5 * product
    # every piece's factor is at most its product; every residual factor at least its ratio on random pairs
    for block in result.detail["blocks"]:
        assert block["value"] <= block["product"] * (1 + 1e-12)
    sess = ort.InferenceSession(str(SAMPLES / "resnet_block.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
        y = x + 1e-2 * rng.standard_normal(x.shape).astype(np.float32)
        fx, fy = (sess.run(None, {"input": v})[0].astype(np.float64) for v in (x, y))
        ratio = np.linalg.norm(fx - fy) / np.linalg.norm(x.astype(np.float64) - y)
        assert ratio <= result.value


def test_not_applicable_graphs_say_why() -> None:
    graph = load(str(SAMPLES / "multi_input.onnx"))
    walked = walk(graph, Settings(exact_limit=0, power_iterations=10))
    result = blocks_bound(graph, walked.bounds)
    assert not result.certified and "one float input" in result.detail["reason"]


# ------------------------------------------------------------------------------ property: random small conv nets


class _RandomNet(torch.nn.Module):
    """conv → φ → residual block (x + conv(φ(conv x)), identity or 1×1-conv shortcut) → φ → strided conv → φ →
    flatten → linear: every piece kind of the blocks method on a 2×6×6 input."""

    def __init__(self, seed: int, act: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c = 2 + seed % 2
        self.act = {"relu": torch.nn.ReLU(), "leaky": torch.nn.LeakyReLU(0.1), "tanh": torch.nn.Tanh()}[act]
        self.c0 = torch.nn.Conv2d(2, c, 3, padding=1)
        self.b1 = torch.nn.Conv2d(c, c + 1, 3, padding=1)
        self.b2 = torch.nn.Conv2d(c + 1, c, 3, padding=1)
        self.shortcut = torch.nn.Conv2d(c, c, 1) if seed % 3 == 0 else torch.nn.Identity()
        self.c1 = torch.nn.Conv2d(c, 2, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(2 * 3 * 3, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c0(x))
        h = self.act(self.shortcut(h) + self.b2(self.act(self.b1(h))))
        return self.fc(torch.flatten(self.act(self.c1(h)), 1))


@pytest.mark.parametrize("seed,act", [(0, "relu"), pytest.param(2, "tanh", marks=pytest.mark.slow),
                                      pytest.param(1, "leaky", marks=pytest.mark.slow),
                                      pytest.param(3, "relu", marks=pytest.mark.slow),
                                      pytest.param(4, "leaky", marks=pytest.mark.slow)])
def test_blocks_bound_is_sound_and_at_most_the_product_on_random_nets(seed: int, act: str) -> None:
    import lipcheck

    net = _RandomNet(seed, act).eval()
    report = lipcheck.analyze(net, input_shape=(1, 2, 6, 6), method="blocks", lower_bound=True,
                              lower_bound_seconds=1.0)
    product, blocks = report.bounds
    assert blocks.method == "blocks" and blocks.certified and blocks.value is not None
    assert blocks.value <= product.value * (1 + 1e-12) and report.upper_bound == blocks.value
    assert report.lower_bound is not None and report.lower_bound.value is not None
    assert report.lower_bound.value <= blocks.value
    # ‖J(x)‖₂ of the float64 network at random points and near ReLU kinks never exceeds the certificate
    ref = _RandomNet(seed, act).double().eval()
    gen = torch.Generator().manual_seed(100 + seed)
    xs = torch.randn((64, 1, 2, 6, 6), generator=gen, dtype=torch.float64)
    worst = max(float(torch.linalg.matrix_norm(
        torch.autograd.functional.jacobian(ref, x).reshape(3, 72), ord=2)) for x in xs)
    assert worst <= blocks.value
    kinds = [b["method"] for b in blocks.detail["blocks"]]
    assert set(kinds) <= {"product", "composed", "lipsdp", "residual", "pieces"}
