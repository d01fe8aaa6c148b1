"""The empirical lower bound: exact on linear maps, below certified bounds, seeded, budgeted, and refusing
to report when the evaluator disagrees with onnxruntime."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from lipcheck.bound.jacobian import Flat as _Flat
from lipcheck.bound.jacobian import Linearization as _Linearization
from lipcheck.bound.lower import empirical_lower_bound, reference_tolerance
from lipcheck.bound.torch_eval import TorchEvaluator
from lipcheck.ir.graph import Graph
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.report.model import LowerBound

F32 = np.float32
# fewer, shorter phases for the tests that only need a value
FAST: dict[str, Any] = {"jacobian_samples": 3, "power_iterations": 60, "ascent_restarts": 2,
                        "ascent_steps": 30}


def model_of(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Sequence[int]], inits: dict[str, np.ndarray],
             outputs: Sequence[str], opset: int = 18, int_inputs: Sequence[str] = ()) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(
        k, onnx.TensorProto.INT64 if k in int_inputs else onnx.TensorProto.FLOAT, list(v))
        for k, v in inputs.items()]
    graph = helper.make_graph(list(nodes), "m", ins, [onnx.ValueInfoProto(name=o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_reference(model: onnx.ModelProto) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Like the CLI's runner: float inputs in order, integer inputs at zero."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(float_inputs: list[np.ndarray]) -> list[np.ndarray]:
        it = iter(float_inputs)
        feeds = {i.name: next(it) if i.type == "tensor(float)" else np.zeros(i.shape, np.int64)
                 for i in sess.get_inputs()}
        return sess.run(None, feeds)

    return run


def sigma_max(a: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)[0])


def gemm_model(w: np.ndarray, batch: int = 1) -> onnx.ModelProto:
    return model_of([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": (batch, w.shape[1])},
                    {"w": w, "b": np.ones(w.shape[0], F32)}, ["y"])


def mlp_model(sizes: Sequence[int], seed: int = 0,
              act: str = "Relu") -> tuple[onnx.ModelProto, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    nodes, inits, ws = [], {}, []
    prev = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(F32)
        ws.append(w)
        inits[f"w{i}"], inits[f"b{i}"] = w, rng.standard_normal(b).astype(F32) * 0.1
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out + "_lin" if out != "y" else out],
                                      transB=1))
        if out != "y":
            nodes.append(helper.make_node(act, [out + "_lin"], [out]))
        prev = out
    return model_of(nodes, {"x": (1, sizes[0])}, inits, ["y"]), ws


# ---- values


def test_linear_model_gives_sigma_max_exactly() -> None:
    w = np.random.default_rng(3).standard_normal((5, 9)).astype(F32)
    model = gemm_model(w, batch=2)  # batch 2: the map is block-diagonal, same sigma
    start = time.perf_counter()
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=60)
    assert lb.completed and lb.value is not None
    assert lb.value == pytest.approx(sigma_max(w), rel=1e-6)
    assert lb.value <= sigma_max(w) * (1 + 1e-9)
    assert lb.evaluator_max_rel_error is not None and lb.evaluator_max_rel_error < 1e-5
    # an affine graph has one Jacobian: one sample is exact, and the search ends there, far within the budget
    assert lb.jacobian_samples == 1 and lb.note is None
    assert time.perf_counter() - start < 10


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_linear_lower_bound_never_exceeds_sigma_max(rows: int, cols: int, seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(F32)
    lb = empirical_lower_bound(load_onnx(gemm_model(w)), seed=seed, time_budget=60, **FAST)
    assert lb.value is not None
    assert lb.value <= sigma_max(w) * (1 + 1e-9)
    assert lb.value >= sigma_max(w) * (1 - 1e-6)


def test_relu_mlp_between_zero_and_product_of_norms() -> None:
    model, ws = mlp_model([6, 16, 16, 3])
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=1.5)
    upper = float(np.prod([sigma_max(w) for w in ws]))
    assert lb.value is not None and 0 < lb.value <= upper
    assert lb.completed


def test_sigmoid_layer_below_its_certified_constant() -> None:
    model, ws = mlp_model([5, 8, 4], seed=2, act="Sigmoid")
    lb = empirical_lower_bound(load_onnx(model), time_budget=60, **FAST)
    assert lb.value is not None and 0 < lb.value <= 0.25 * sigma_max(ws[0]) * sigma_max(ws[1])


def test_several_inputs_and_outputs_are_concatenated() -> None:
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((4, 3)).astype(F32), rng.standard_normal((4, 2)).astype(F32)
    v = rng.standard_normal((2, 4)).astype(F32)
    nodes = [helper.make_node("MatMul", ["x1", "w1t"], ["a"]),
             helper.make_node("MatMul", ["x2", "w2t"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y1"]), helper.make_node("MatMul", ["y1", "vt"], ["y2"])]
    model = model_of(nodes, {"x1": (1, 3), "x2": (1, 2)}, {"w1t": w1.T, "w2t": w2.T, "vt": v.T}, ["y1", "y2"])
    # f(x1, x2) = (M z, V M z) with z = (x1, x2), M = [w1 w2]: its Lipschitz constant is sigma_max([M; V M])
    m = np.hstack([w1, w2]).astype(np.float64)
    expected = sigma_max(np.vstack([m, v.astype(np.float64) @ m]))
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=60, **FAST)
    assert lb.value == pytest.approx(expected, rel=1e-6)


def test_integer_outputs_are_skipped_and_integer_inputs_held_at_zero() -> None:
    w = np.random.default_rng(1).standard_normal((3, 4)).astype(F32)
    table = np.random.default_rng(2).standard_normal((5, 4)).astype(F32)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["e"]), helper.make_node("Add", ["x", "e"], ["h"]),
             helper.make_node("Gemm", ["h", "w"], ["y"], transB=1),
             helper.make_node("ArgMax", ["y"], ["label"], axis=1)]
    model = model_of(nodes, {"idx": (1,), "x": (1, 4)}, {"w": w, "table": table}, ["y", "label"],
                     int_inputs=["idx"])
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=60, **FAST)
    assert lb.value == pytest.approx(sigma_max(w), rel=1e-6)
    assert lb.note is not None and "idx" in lb.note and "held at zero" in lb.note


def test_only_integer_outputs_gives_no_value() -> None:
    w = np.ones((3, 4), F32)
    model = model_of([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1),
                      helper.make_node("ArgMax", ["y"], ["label"], axis=1)],
                     {"x": (1, 4)}, {"w": w}, ["label"])
    lb = empirical_lower_bound(load_onnx(model), time_budget=60, **FAST)
    assert lb.value is None and lb.note is not None and "float output" in lb.note


def test_jacobian_products_match_the_explicit_jacobian() -> None:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 0, 0, 1], strides=[2, 1]),
             helper.make_node("Tanh", ["c"], ["t"]),
             helper.make_node("MaxPool", ["t"], ["p"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Flatten", ["p"], ["fl"]), helper.make_node("Softmax", ["fl"], ["y"])]
    model = model_of(nodes, {"x": (1, 2, 5, 4)}, {"w": rng.standard_normal((3, 2, 3, 2)).astype(F32)}, ["y"])
    graph = load_onnx(model)
    f = _Flat(graph, TorchEvaluator(graph))
    x = torch.from_numpy(rng.standard_normal(f.n))
    jac = torch.autograd.functional.jacobian(f, x)
    lin = _Linearization(f, x)
    v, u = torch.from_numpy(rng.standard_normal(f.n)), torch.from_numpy(rng.standard_normal(jac.shape[0]))
    torch.testing.assert_close(lin.jvp(v), jac @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lin.vjp(u), jac.T @ u, rtol=1e-10, atol=1e-12)


def test_linear_conv_gives_its_dense_operator_norm() -> None:
    rng = np.random.default_rng(8)
    w = rng.standard_normal((3, 2, 3, 3)).astype(F32)
    model = model_of([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[1, 2])],
                     {"x": (1, 2, 5, 6)}, {"w": w}, ["y"])
    # the dense matrix of the same operator, built independently with torch's conv on basis vectors
    basis = torch.eye(60, dtype=torch.float64).reshape(60, 2, 5, 6)
    cols = torch.nn.functional.conv2d(torch.nn.functional.pad(basis, [0, 1, 1, 2]),
                                      torch.from_numpy(w).double(), stride=(1, 2))
    dense = cols.reshape(60, -1).T.numpy()
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=60,
                               jacobian_samples=2, power_iterations=300, ascent_restarts=1, ascent_steps=20)
    assert lb.value is not None
    assert lb.value == pytest.approx(sigma_max(dense), rel=1e-6)
    assert lb.value <= sigma_max(dense) * (1 + 1e-9)


# ---- reproducibility and budget


def test_same_seed_same_value_and_seed_matters() -> None:
    model, _ = mlp_model([4, 12, 12, 2], seed=7, act="Tanh")
    graph = load_onnx(model)
    a = empirical_lower_bound(graph, seed=11, time_budget=60, **FAST)
    b = empirical_lower_bound(graph, seed=11, time_budget=60, **FAST)
    c = empirical_lower_bound(graph, seed=12, time_budget=60, **FAST)
    assert a.completed and b.completed
    assert a.value == b.value and (a.jacobian_samples, a.ascent_steps) == (b.jacobian_samples, b.ascent_steps)
    assert a.value != c.value


def test_tiny_budget_stops_early() -> None:
    model, _ = mlp_model([8, 32, 32, 4])
    graph = load_onnx(model)
    start = time.perf_counter()
    lb = empirical_lower_bound(graph, time_budget=1e-4)
    assert time.perf_counter() - start < 5.0
    assert not lb.completed
    assert lb.budget_seconds == 1e-4
    assert lb.note is not None and "time budget" in lb.note
    assert lb.jacobian_samples < 8 and lb.ascent_steps < 400


def test_budget_cut_value_is_still_a_lower_bound() -> None:
    w = np.random.default_rng(9).standard_normal((6, 6)).astype(F32)
    lb = empirical_lower_bound(load_onnx(gemm_model(w)), time_budget=0.05)
    if lb.value is not None:
        assert lb.value <= sigma_max(w) * (1 + 1e-9)


def test_progress_is_reported() -> None:
    messages: list[str] = []
    graph = load_onnx(mlp_model([3, 5, 2], act="Tanh")[0])
    empirical_lower_bound(graph, progress=messages.append, time_budget=60, **FAST)
    assert any("start 1 (N(0,1))" in m for m in messages)
    assert any("ascent" in m for m in messages)


# ---- refusing to report


def test_mismatched_reference_gives_no_value() -> None:
    model = gemm_model(np.random.default_rng(0).standard_normal((3, 4)).astype(F32))
    good = ort_reference(model)
    lb = empirical_lower_bound(load_onnx(model), reference=lambda xs: [o * 1.01 for o in good(xs)], **FAST)
    assert lb.value is None
    assert lb.evaluator_max_rel_error == pytest.approx(0.0099, rel=0.05)
    assert lb.note is not None and "disagrees" in lb.note


def test_reference_with_wrong_shape_or_failure_gives_no_value() -> None:
    model = gemm_model(np.eye(3, dtype=F32))
    wrong = empirical_lower_bound(load_onnx(model), reference=lambda xs: [np.zeros((7,), F32)], **FAST)
    assert wrong.value is None and wrong.note is not None and "disagrees" in wrong.note

    def boom(xs: list[np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("session exploded")

    failed = empirical_lower_bound(load_onnx(model), reference=boom, **FAST)
    assert failed.value is None and failed.note is not None and "session exploded" in failed.note


def test_nan_outputs_matching_the_reference_are_accepted() -> None:
    # sqrt of a N(0,1) input is NaN where x < 0 in both runtimes: not a disagreement
    model = model_of([helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Mul", ["s", "c"], ["y"])],
                     {"x": (1, 6)}, {"c": np.full(6, 2.0, F32)}, ["y"])
    lb = empirical_lower_bound(load_onnx(model), reference=ort_reference(model), time_budget=60, **FAST)
    assert lb.evaluator_max_rel_error is not None and lb.evaluator_max_rel_error < 1e-6
    assert lb.value is not None and lb.value > 0  # from the U[0,1] samples: sqrt is not Lipschitz near 0


def test_unsupported_nodes_give_no_value_and_are_named() -> None:
    model = model_of([helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
                      helper.make_node("FancyNorm", ["h"], ["y"], domain="com.example")],
                     {"x": (1, 3)}, {"w": np.eye(3, dtype=F32)}, ["y"])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    graph = load_onnx_without_ort(model)
    lb = empirical_lower_bound(graph, **FAST)
    assert lb.value is None
    assert lb.note is not None and "FancyNorm" in lb.note


def load_onnx_without_ort(model: onnx.ModelProto) -> Graph:
    """onnxruntime cannot run a custom-domain op, so give the unknown tensor its shape by hand."""
    model.graph.value_info.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3]))
    return load_onnx(model)


def test_reference_tolerance_depends_on_precision() -> None:
    graph = load_onnx(gemm_model(np.eye(2, dtype=F32)))
    assert reference_tolerance(graph) == 1e-4
    half = model_of([helper.make_node("Cast", ["x"], ["h"], to=onnx.TensorProto.FLOAT16),
                     helper.make_node("Mul", ["h", "c"], ["y"])], {"x": (1, 2)},
                    {"c": np.ones(2, np.float16)}, ["y"])
    assert reference_tolerance(load_onnx(half)) == 1e-2


def test_result_is_a_lowerbound_dataclass() -> None:
    lb = empirical_lower_bound(load_onnx(gemm_model(np.eye(2, dtype=F32))), **FAST)
    assert isinstance(lb, LowerBound)
    assert lb.value == pytest.approx(1.0, rel=1e-9)
    assert lb.seconds > 0 and lb.budget_seconds == 5.0
