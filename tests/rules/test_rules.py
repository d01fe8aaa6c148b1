"""Per-op rules on tiny hand-built graphs with hand-derived constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

import lipcheck
from tests.helpers import make_model, rng_weights


def bound(model, **kw):  # type: ignore[no-untyped-def]
    return lipcheck.analyze(model, lower_bound=False, **kw)


def op_model(op: str, shape=(1, 2, 6, 6), inits=None, extra_inputs=(), **attrs):  # type: ignore[no-untyped-def]
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], **attrs)
    return make_model([node], [("x", shape)], ["y"], {"w_unused": np.ones(1, np.float32), **(inits or {})})


@pytest.mark.parametrize(
    ("op", "attrs", "expected"),
    [
        ("Relu", {}, 1.0),
        ("Sigmoid", {}, 0.25),
        ("Tanh", {}, 1.0),
        ("LeakyRelu", {"alpha": -1.3}, 1.3),
        ("LeakyRelu", {"alpha": 0.2}, 1.0),
        ("Elu", {"alpha": 2.0}, 2.0),
        ("HardSigmoid", {}, 0.2),
        ("HardSwish", {}, 1.5),
        ("Softmax", {"axis": 1}, 0.5),
        ("Selu", {}, 1.0507009873554805 * 1.6732632423543772),
        ("GlobalMaxPool", {}, 1.0),
        ("Flatten", {}, 1.0),
    ],
)
def test_activation_constants(op: str, attrs: dict, expected: float) -> None:
    r = bound(op_model(op, **attrs))
    assert r.upper_bound == pytest.approx(expected, rel=1e-6)
    # attributes are stored as float32: the model's real constant is the float32 value
    assert r.upper_bound >= float(np.float32(expected)) * (1 - 1e-7)


@pytest.mark.parametrize(("k", "s", "p", "expected"), [(3, 2, 1, 2.0), (2, 2, 0, 1.0), (3, 1, 1, 3.0), (3, 3, 0, 1.0)])
def test_maxpool_is_sqrt_of_largest_window_overlap(k: int, s: int, p: int, expected: float) -> None:
    r = bound(op_model("MaxPool", shape=(1, 1, 9, 9), kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
    assert r.upper_bound == pytest.approx(expected)


def test_maxpool_spike_reaches_the_bound() -> None:
    """3×3 stride 2: a single spike at a shared input moves 4 outputs by the same amount: ratio exactly 2."""
    import onnxruntime as ort

    m = op_model("MaxPool", shape=(1, 1, 9, 9), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 9, 9), np.float32)
    y = x.copy()
    y[0, 0, 3, 3] = 1.0  # inside 2 windows per axis
    ratio = np.linalg.norm(sess.run(None, {"x": y})[0] - sess.run(None, {"x": x})[0]) / 1.0
    assert ratio == pytest.approx(bound(m).upper_bound)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_pad_copies(mode: str) -> None:
    pads = np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64)
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)
    m = make_model([node], [("x", (1, 1, 4, 3))], ["y"], {"pads": pads})
    # brute force: count copies of each input element
    idx = np.arange(12).reshape(4, 3)
    padded = np.pad(idx, ((2, 1), (1, 2)), mode="reflect" if mode == "reflect" else "edge")
    copies = np.bincount(padded.ravel()).max()
    assert bound(m).upper_bound == pytest.approx(math.sqrt(copies))


def test_nearest_resize_x2_is_2() -> None:
    scales = np.array([1, 1, 2, 2], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    m = make_model([node], [("x", (1, 2, 4, 4))], ["y"], {"scales": scales})
    assert bound(m).upper_bound == pytest.approx(2.0)


def test_residual_and_concat_composition() -> None:
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], alpha=2.0),  # L = 2
        helper.make_node("Add", ["x", "a"], ["r"]),  # 1 + 2 = 3
        helper.make_node("Sigmoid", ["x"], ["s"]),  # 1/4
        helper.make_node("Concat", ["r", "s"], ["y"], axis=1),  # sqrt(9 + 1/16)
    ]
    m = make_model(nodes, [("x", (1, 3))], ["y"], {"w_unused": np.ones(1, np.float32)})
    assert bound(m).upper_bound == pytest.approx(math.sqrt(9 + 1 / 16))


def test_several_outputs_combine_by_root_sum_of_squares() -> None:
    nodes = [helper.make_node("LeakyRelu", ["x"], ["a"], alpha=3.0), helper.make_node("Relu", ["x"], ["b"])]
    m = make_model(nodes, [("x", (1, 3))], ["a", "b"], {"w_unused": np.ones(1, np.float32)})
    assert bound(m).upper_bound == pytest.approx(math.sqrt(10))


def test_broadcast_add_counts_copies() -> None:
    node = helper.make_node("Add", ["x", "x2"], ["y"])
    expand = helper.make_node("Relu", ["z"], ["x2"])
    m = make_model([expand, node], [("x", (1, 4)), ("z", (3, 4))], ["y"], {"w_unused": np.ones(1, np.float32)})
    # y = x (copied 3 times) + relu(z): L = sqrt(3) * 1 + 1
    assert bound(m).upper_bound == pytest.approx(math.sqrt(3) + 1)


def test_mul_by_constant_with_broadcast_copies() -> None:
    c = np.array([[1.0], [-2.0], [0.5]], np.float32)  # (3, 1) times x (1, 4): each x copied 3 times
    m = make_model([helper.make_node("Mul", ["x", "c"], ["y"])], [("x", (1, 4))], ["y"], {"c": c})
    r = bound(m)
    assert r.upper_bound == pytest.approx(math.sqrt(1 + 4 + 0.25))
    assert r.layers[0].op == "Mul" and r.layers[0].param == "c"


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        ([helper.make_node("MatMul", ["x", "xt"], ["y"]), helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1])],
         "product of two input-dependent tensors"),
        ([helper.make_node("Exp", ["x"], ["y"])], "Exp"),
        ([helper.make_node("Div", ["c", "x"], ["y"])], "division by an input-dependent"),
        ([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], "custom domain"),
        ([helper.make_node("Einsum", ["x"], ["y"], equation="bij->bji")], "not known to lipcheck"),
    ],
)
def test_unbounded_ops_name_the_node(nodes, reason: str) -> None:  # type: ignore[no-untyped-def]
    order = list(reversed(nodes)) if len(nodes) == 2 else nodes
    m = make_model(order, [("x", (1, 3, 3))], ["y"], {"c": np.ones((1, 3, 3), np.float32)})
    if any(n.domain == "com.example" for n in nodes):
        m.opset_import.append(helper.make_opsetid("com.example", 1))
        m.graph.output[0].type.tensor_type.elem_type = 1
        m.graph.value_info.append(helper.make_tensor_value_info("y", 1, [1, 3, 3]))
    r = bound(m)
    assert r.upper_bound is None and not r.certified
    assert any(reason in u.reason for u in r.unbounded), r.unbounded
    assert all(u.node for u in r.unbounded)


def test_layernorm_is_finite_but_flagged_loose() -> None:
    gamma = np.full(8, 0.5, np.float32)
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y"], epsilon=1e-4, axis=-1)
    r = bound(make_model([node], [("x", (1, 4, 8))], ["y"], {"g": gamma}))
    assert r.upper_bound == pytest.approx(0.5 / math.sqrt(1e-4))
    assert any(o.loose for o in r.ops) and any("loose" in n for n in r.notes)


def test_silu_exported_as_mul_sigmoid() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    r = bound(make_model(nodes, [("x", (1, 5))], ["y"], {"w_unused": np.ones(1, np.float32)}))
    assert r.upper_bound == pytest.approx(1.0998, rel=1e-3)
    assert r.upper_bound >= 1.0998393


def test_gemm_alpha_transB_and_matmul_batched() -> None:
    w = rng_weights(4, 6)
    g = helper.make_node("Gemm", ["x", "w"], ["y"], alpha=0.5, transB=1)
    r = bound(make_model([g], [("x", (2, 6))], ["y"], {"w": w}))
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0] * 0.5
    assert r.layers[0].sigma_exact == pytest.approx(s, rel=1e-9)
    assert r.layers[0].sigma_upper >= s and r.layers[0].param == "w"

    wb = rng_weights(3, 6, 2)  # a different matrix per batch element
    mm = helper.make_node("MatMul", ["x", "wb"], ["y"])
    r = bound(make_model([mm], [("x", (3, 4, 6))], ["y"], {"wb": wb}))
    smax = max(np.linalg.svd(wb[i].astype(np.float64), compute_uv=False)[0] for i in range(3))
    assert r.layers[0].sigma_exact == pytest.approx(smax, rel=1e-9)
    # x broadcast against 3 matrices: x meets [W1 | W2 | W3]
    r = bound(make_model([mm], [("x", (1, 4, 6))], ["y"], {"wb": wb}))
    cat = np.concatenate(list(wb.astype(np.float64)), axis=1)
    assert r.layers[0].sigma_exact == pytest.approx(np.linalg.svd(cat, compute_uv=False)[0], rel=1e-9)


def test_batchnorm_folds_into_conv_and_row_shows_it() -> None:
    w = rng_weights(3, 2, 3, 3)
    gamma, beta = rng_weights(3, seed=1), rng_weights(3, seed=2)
    mean, var = rng_weights(3, seed=3), np.abs(rng_weights(3, seed=4)) + 0.5
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    m = make_model(nodes, [("x", (1, 2, 5, 5))], ["y"], {"w": w, "g": gamma, "b": beta, "m": mean, "v": var})
    r = bound(m)
    (layer,) = r.layers
    assert layer.op == "Conv" and layer.fused_with == ("bn",) and layer.param == "w"
    # dense operator of the fused conv, built by applying it to basis vectors with onnxruntime
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    zero = sess.run(None, {"x": np.zeros((1, 2, 5, 5), np.float32)})[0].ravel()
    cols = []
    for i in range(50):
        e = np.zeros(50, np.float32)
        e[i] = 1
        cols.append(sess.run(None, {"x": e.reshape(1, 2, 5, 5)})[0].ravel() - zero)
    dense = np.stack(cols, axis=1).astype(np.float64)
    s = np.linalg.svd(dense, compute_uv=False)[0]
    assert layer.sigma_exact == pytest.approx(s, rel=1e-4)  # float32 ORT reference
    assert layer.sigma_power <= layer.sigma_exact * (1 + 1e-9) <= layer.sigma_upper * (1 + 1e-9)
