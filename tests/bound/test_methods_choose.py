"""``method``: auto / product / lipsdp in lipcheck.analyze, the report's bounds, and their soundness on random MLPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.bound.methods.choose import (
    AUTO_MAX_HIDDEN,
    check_method,
    lipsdp_result,
    scale_graph,
    scaled_lipsdp,
    tightest,
)
from lipcheck.errors import UsageError
from lipcheck.report.model import BoundResult

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "sample_models" / "mlp.onnx")
RESNET = str(ROOT / "sample_models" / "resnet_block.onnx")
MLP_PRODUCT = 10.178116704281  # the sample MLP's product bound (tests/golden/cli_mlp.json), as before lipsdp


def _mlp_model(widths: list[int], act: str, seed: int, alpha: float = 0.1) -> onnx.ModelProto:
    """x (1, widths[0]) → [Gemm + bias → act] × (len − 2) → Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i in range(len(widths) - 1):
        w = (rng.standard_normal((widths[i + 1], widths[i])) / np.sqrt(widths[i])).astype(np.float32)
        b = rng.standard_normal(widths[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        current = f"z{i}"
        if i < len(widths) - 2:
            attrs = {"alpha": alpha} if act == "LeakyRelu" else {}
            nodes.append(helper.make_node(act, [current], [f"a{i}"], **attrs))
            current = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, widths[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _measured_ratio(model: onnx.ModelProto, dim: int, seed: int) -> float:
    """The largest ‖f(x) − f(y)‖/‖x − y‖ onnxruntime gives over random pairs, near and far: a true lower bound."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((400, dim)) * 2
    y = x + rng.standard_normal((400, dim)) * np.repeat([1e-2, 1e-1, 1.0, 3.0], 100)[:, None]
    best = 0.0
    for a, b in zip(x, y):
        fa, fb = (session.run(None, {"x": v[None].astype(np.float32)})[0].astype(np.float64) for v in (a, b))
        a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
        best = max(best, float(np.linalg.norm(fa - fb) / np.linalg.norm(a32 - b32)))
    return best


# ---------------------------------------------------------------------------------------------- choice


def test_method_names() -> None:
    assert check_method(" LipSDP ") == "lipsdp"
    with pytest.raises(UsageError, match="unknown method 'sdp': choose one of auto, product, lipsdp"):
        check_method("sdp")
    with pytest.raises(UsageError):
        lipcheck.analyze(MLP, lower_bound=False, method="fast")


def test_tightest_is_the_least_certified_value() -> None:
    bounds = [BoundResult("product", 10.0, 0.1, True), BoundResult("lipsdp", None, 0.2, False),
              BoundResult("other", 3.0, 0.1, False)]
    assert tightest(bounds) == 10.0
    assert tightest([*bounds, BoundResult("lipsdp", 4.0, 0.2, True)]) == 4.0
    assert tightest([BoundResult("product", None, 0.1, False)]) is None


def test_auto_on_the_sample_mlp_reports_both_methods_and_takes_the_least() -> None:
    report = lipcheck.analyze(MLP, lower_bound=True, lower_bound_seconds=2.0)
    by_method = {b.method: b for b in report.bounds}
    assert list(by_method) == ["product", "lipsdp"]
    assert all(b.certified and b.value is not None and b.seconds >= 0 for b in report.bounds)
    values = [b.value for b in report.bounds if b.value is not None]
    assert report.upper_bound == min(values) and report.certified and report.method == "lipsdp"
    assert by_method["product"].value == pytest.approx(MLP_PRODUCT, rel=1e-9)
    # lipsdp: 5.31, against the product 10.18 and a measured 3.5
    assert report.lower_bound is not None and report.lower_bound.value is not None
    assert report.lower_bound.value <= report.upper_bound < 0.6 * MLP_PRODUCT
    assert report.layers[-1].cumulative_upper == pytest.approx(MLP_PRODUCT, rel=1e-9)  # the column is the product's
    data = report.to_dict()
    assert data["schema_version"] == 2 and data["method"] == "lipsdp"
    assert [set(b) for b in data["bounds"]] == [{"method", "value", "seconds", "certified"}] * 2
    assert data["upper_bound"] == min(b["value"] for b in data["bounds"] if b["certified"])


def test_product_reproduces_the_product_numbers() -> None:
    report = lipcheck.analyze(MLP, lower_bound=False, method="product")
    assert [b.method for b in report.bounds] == ["product"]
    assert report.upper_bound == pytest.approx(MLP_PRODUCT, rel=1e-9) and report.method == "product"
    assert report.settings.method == "product" and report.notes == ()


def test_lipsdp_on_a_graph_that_is_not_a_chain_gives_the_product_and_says_why() -> None:
    report = lipcheck.analyze(RESNET, lower_bound=False, method="lipsdp")
    product, sdp = report.bounds
    assert product.method == "product" and product.certified and report.upper_bound == product.value
    assert sdp.method == "lipsdp" and sdp.value is None and not sdp.certified
    assert sdp.detail["reason"].startswith("not an MLP chain: /b1_conv1/Conv (Conv)")
    assert any(note.startswith("lipsdp does not apply (not an MLP chain: ")
               and note.endswith("the product's; --method blocks bounds the model block by block")
               for note in report.notes)
    # auto leaves lipsdp out on such a graph; its blocks run stays within small limits: the sample's residual LMIs
    # (order 4096) are over them, and the two blocks are certified frequency by frequency instead (residual-fft)
    auto = lipcheck.analyze(RESNET, lower_bound=False)
    assert [b.method for b in auto.bounds] == ["product", "blocks"]
    blocks = auto.bounds[1]
    assert blocks.certified and blocks.value is not None and auto.upper_bound == blocks.value
    assert blocks.value < 0.5 * product.value
    assert [b["method"] for b in blocks.detail["blocks"]].count("residual-fft") == 2


def test_auto_leaves_large_chains_to_an_explicit_lipsdp() -> None:
    graph = lipcheck.load(_mlp_model([8, AUTO_MAX_HIDDEN + 1, 3], "Relu", seed=0))
    result, note = lipsdp_result(graph, "auto")
    assert result is None and note is not None and f"{AUTO_MAX_HIDDEN + 1} hidden neurons" in note
    assert "--method lipsdp runs it" in note
    assert lipsdp_result(graph, "product") == (None, None)


# ------------------------------------------------------------------------------------------- soundness


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(2, 12), min_size=3, max_size=5),
    act=st.sampled_from(["Relu", "LeakyRelu", "Tanh", "Sigmoid"]),
    seed=st.integers(0, 10_000),
)
def test_every_certified_method_is_above_every_measured_ratio(widths: list[int], act: str, seed: int) -> None:
    """Random small MLPs: each certified value ≥ lipcheck's own lower bound and ≥ ratios measured with
    onnxruntime, and lipsdp ≤ the product (up to rounding)."""
    model = _mlp_model(widths, act, seed)
    report = lipcheck.analyze(model, lower_bound=True, lower_bound_seconds=1.0, method="lipsdp")
    by_method = {b.method: b for b in report.bounds}
    assert set(by_method) == {"product", "lipsdp"} and all(b.certified for b in report.bounds)
    product, sdp = by_method["product"].value, by_method["lipsdp"].value
    assert product is not None and sdp is not None
    measured = _measured_ratio(model, widths[0], seed)
    lower = report.lower_bound.value if report.lower_bound and report.lower_bound.value else 0.0
    for value in (product, sdp):
        assert value >= lower * (1 - 1e-6), (value, lower)  # float64 evaluator: no float32 slack needed
        assert value >= measured * (1 - 1e-5), (value, measured)  # float32 inference on the measured side
    assert sdp <= product * (1 + 1e-9)
    assert report.upper_bound == min(product, sdp)


def test_lipsdp_scales_with_the_weights_as_predicted() -> None:
    """LipSDP's LMI is homogeneous in each layer's weight: a fresh run on scaled weights lands at the predicted
    value up to the multiplier search's own spread (measured ≤ 5e-4 relative)."""
    graph = lipcheck.load(_mlp_model([6, 10, 8, 3], "LeakyRelu", seed=4))
    base, _ = lipsdp_result(graph, "lipsdp")
    assert base is not None and base.value is not None
    names = [n.name for n in graph.nodes if n.op_type == "Gemm"]
    scales = {names[0]: 0.5, names[1]: 3.0, names[2]: 0.7}
    predicted = scaled_lipsdp(base.value, graph, scales)
    assert predicted == pytest.approx(base.value * 0.5 * 3.0 * 0.7, rel=1e-12)
    fresh, _ = lipsdp_result(scale_graph(graph, scales), "lipsdp")
    assert fresh is not None and fresh.value == pytest.approx(predicted, rel=2e-3)
