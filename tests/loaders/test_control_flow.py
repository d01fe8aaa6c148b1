"""Control flow: subgraphs that read tensors of the enclosing scope are inputs of their node.

The audit's case: an If whose branches read the graph input X from the outer scope was certified 0.0 for a model
whose constant is 5. Every certified value here is checked against ratios onnxruntime exhibits on the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app

F = TensorProto.FLOAT


def _scale_branch(scale: float, name: str, reads: str = "X") -> onnx.GraphProto:
    """A branch computing ``scale · reads`` from the enclosing scope (nothing passed as an input)."""
    c = numpy_helper.from_array(np.array([scale], np.float32), f"{name}_c")
    node = helper.make_node("Mul", [reads, f"{name}_c"], [f"{name}_y"], name=f"{name}_mul")
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", F, [1, 4])], [c])


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], extra_inputs=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    inputs = [helper.make_tensor_value_info("X", F, [1, 4]), *extra_inputs]
    g = helper.make_graph(nodes, "cf", inputs, [helper.make_tensor_value_info("Y", F, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _if(cond: str, then_scale: float, else_scale: float, out: str = "Y", tag: str = "") -> onnx.NodeProto:
    return helper.make_node(
        "If",
        [cond],
        [out],
        name=f"if{tag}",
        then_branch=_scale_branch(then_scale, f"then{tag}"),
        else_branch=_scale_branch(else_scale, f"else{tag}"),
    )


def _ort_ratio(model: onnx.ModelProto, feeds_extra: dict[str, np.ndarray] | None = None, pairs: int = 50) -> float:
    """The largest ‖f(x) − f(y)‖ / ‖x − y‖ onnxruntime exhibits over random pairs, less the part its float32
    outputs' rounding can explain (a few ulps of ‖f‖ over ‖x − y‖): what no certified bound may be below."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(pairs):
        x, y = (rng.standard_normal((1, 4)).astype(np.float32) for _ in range(2))
        fx = sess.run(None, {"X": x, **(feeds_extra or {})})[0].astype(np.float64)
        fy = sess.run(None, {"X": y, **(feeds_extra or {})})[0].astype(np.float64)
        dx = float(np.linalg.norm(x.astype(np.float64) - y))
        slack = 4 * float(np.finfo(np.float32).eps) * (np.linalg.norm(fx) + np.linalg.norm(fy))
        best = max(best, float(np.linalg.norm(fx - fy) - slack) / dx)
    return best


@pytest.mark.parametrize("cond, scale", [(True, 5.0), (False, 2.0)])
def test_constant_condition_selects_the_branch(cond: bool, scale: float) -> None:
    m = _model([_if("cond", 5.0, 2.0)], [numpy_helper.from_array(np.array(cond), "cond")])
    report = lipcheck.analyze(m, lower_bound=False)
    assert report.certified
    assert report.upper_bound == pytest.approx(scale, rel=1e-6)
    assert report.upper_bound >= _ort_ratio(m)
    assert [layer.name for layer in report.layers] == [
        f"if/{'then' if cond else 'else'}/{'then' if cond else 'else'}_mul"
    ]


def test_condition_folded_from_constants_and_shapes() -> None:
    # cond = (Shape(X)[1] == 4): known once the input shape is static
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["dim"], axis=0),
        helper.make_node("Equal", ["dim", "four"], ["cond"]),
        _if("cond", 5.0, 2.0),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array(4, np.int64), "four"),
    ]
    m = _model(nodes, inits)
    report = lipcheck.analyze(m, lower_bound=False)
    assert report.upper_bound == pytest.approx(5.0, rel=1e-6)


def test_runtime_condition_is_unbounded_and_names_the_node() -> None:
    m = _model([_if("cond", 5.0, 2.0)], [], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    report = lipcheck.analyze(m, lower_bound=False)
    assert not report.certified
    assert [u.node for u in report.unbounded] == ["if"]
    assert "'X'" in report.unbounded[0].reason


def test_condition_on_the_float_input_is_unbounded() -> None:
    nodes = [
        helper.make_node("ReduceSum", ["X"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        _if("cond", 5.0, 2.0),
    ]
    m = _model(nodes, [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    report = lipcheck.analyze(m, lower_bound=False)
    assert not report.certified
    assert "if" in [u.node for u in report.unbounded]


def _nested(depth: int, innermost_cond: str, scales: list[float]) -> onnx.ModelProto:
    """``depth`` Ifs nested in their then-branches, each multiplying by its scale; every condition is the
    constant ``true`` except the innermost one's, which is ``innermost_cond``; the innermost reads X."""
    inner: onnx.GraphProto | None = None
    for level in reversed(range(depth)):
        c = numpy_helper.from_array(np.array([scales[level]], np.float32), f"c{level}")
        if inner is None:
            then = _scale_branch(scales[level], f"leaf{level}")
        else:
            node = helper.make_node(
                "If",
                [innermost_cond if level + 1 == depth - 1 else "true"],
                [f"t{level}"],
                then_branch=inner,
                else_branch=_scale_branch(0.0, f"zero{level}"),
                name=f"if{level + 1}",
            )
            mul = helper.make_node("Mul", [f"t{level}", f"c{level}"], [f"y{level}"], name=f"mul{level}")
            then = helper.make_graph(
                [node, mul], f"g{level}", [], [helper.make_tensor_value_info(f"y{level}", F, [1, 4])], [c]
            )
        inner = then
    top = helper.make_node(
        "If",
        ["true" if depth > 1 else innermost_cond],
        ["Y"],
        name="if0",
        then_branch=inner,
        else_branch=_scale_branch(0.0, "zero_top"),
    )
    inits = [numpy_helper.from_array(np.array(True), "true")]
    extra = [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])] if innermost_cond == "flag" else []
    return _model([top], inits, extra)


def test_nested_25_deep_constant_conditions_compose_every_level() -> None:
    scales = [1.1 + 0.01 * k for k in range(25)]
    m = _nested(25, "true", scales)
    onnx.checker.check_model(m, full_check=True)
    report = lipcheck.analyze(m, lower_bound=False)
    assert report.certified
    truth = float(np.prod(scales))
    assert report.upper_bound == pytest.approx(truth, rel=1e-5)
    assert report.upper_bound >= _ort_ratio(m)


def test_nested_25_deep_with_a_runtime_condition_inside_is_unbounded() -> None:
    scales = [1.5] * 25
    m = _nested(25, "flag", scales)
    onnx.checker.check_model(m, full_check=True)
    report = lipcheck.analyze(m, lower_bound=False)
    assert not report.certified
    assert report.unbounded and "X" in report.unbounded[0].reason


def _body_reading_x(kind: str) -> onnx.ModelProto:
    c = numpy_helper.from_array(np.array([5.0], np.float32), "five")
    if kind == "Loop":
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                helper.make_node("Mul", ["X", "five"], ["acc_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("acc_in", F, [1, 4]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("acc_out", F, [1, 4]),
            ],
        )
        node = helper.make_node("Loop", ["trip", "", "zeros"], ["Y"], body=body, name="loop")
        inits = [
            c,
            numpy_helper.from_array(np.array(2, np.int64), "trip"),
            numpy_helper.from_array(np.zeros((1, 4), np.float32), "zeros"),
        ]
    else:
        body = helper.make_graph(
            [helper.make_node("Identity", ["s_in"], ["s_out"]), helper.make_node("Mul", ["X", "five"], ["scan_out"])],
            "body",
            [helper.make_tensor_value_info("s_in", F, [1]), helper.make_tensor_value_info("e", F, [4])],
            [helper.make_tensor_value_info("s_out", F, [1]), helper.make_tensor_value_info("scan_out", F, [1, 4])],
        )
        node = helper.make_node("Scan", ["s0", "seq"], ["s_final", "Ys"], body=body, num_scan_inputs=1, name="scan")
        inits = [
            c,
            numpy_helper.from_array(np.zeros(1, np.float32), "s0"),
            numpy_helper.from_array(np.zeros((1, 4), np.float32), "seq"),
        ]
        return _model(
            [node, helper.make_node("Reshape", ["Ys", "shape"], ["Y"])],
            [*inits, numpy_helper.from_array(np.array([1, 4], np.int64), "shape")],
        )
    return _model([node], inits)


@pytest.mark.parametrize("kind", ["Loop", "Scan"])
def test_loop_and_scan_bodies_reading_the_input_are_unbounded(kind: str) -> None:
    m = _body_reading_x(kind)
    assert _ort_ratio(m) == pytest.approx(5.0, rel=1e-5)  # the model really amplifies by 5
    report = lipcheck.analyze(m, lower_bound=False)
    assert not report.certified
    assert report.unbounded[0].op == kind and "'X'" in report.unbounded[0].reason


def test_gate_and_normalize_do_not_pass_on_a_runtime_branch(tmp_path: Path) -> None:
    m = _model([_if("cond", 5.0, 2.0)], [], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    path = tmp_path / "if.onnx"
    onnx.save(m, path)
    runner = CliRunner()
    gate = runner.invoke(app, ["check", str(path), "--max-lipschitz", "0.001"])
    assert gate.exit_code == 1, gate.output
    out = tmp_path / "out.onnx"
    norm = runner.invoke(app, ["normalize", str(path), "--out", str(out), "--global-target", "0.5"])
    assert norm.exit_code != 0 and not out.exists()


@pytest.mark.parametrize("seed", range(6))
def test_generated_control_flow_never_certifies_below_onnxruntime(seed: int) -> None:
    """Random nesting of Ifs with constant or runtime conditions: certified ≥ every ratio onnxruntime shows, or
    unbounded."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 6))
    scales = [float(rng.uniform(0.5, 3.0)) for _ in range(depth)]
    runtime = bool(rng.integers(0, 2))
    m = _nested(depth, "flag" if runtime else "true", scales)
    report = lipcheck.analyze(m, lower_bound=False)
    feeds = {"flag": np.array(True)} if runtime else None
    measured = _ort_ratio(m, feeds, pairs=10)
    if report.certified:
        assert not runtime
        assert report.upper_bound >= measured
    else:
        assert runtime


def _mlp_branch(name: str, w1: np.ndarray, w2: np.ndarray) -> onnx.GraphProto:
    """A branch computing W2·relu(W1·X) from the enclosing scope's X."""
    nodes = [
        helper.make_node("Gemm", ["X", f"{name}_w1"], [f"{name}_h"], transB=1, name=f"{name}_fc1"),
        helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"], name=f"{name}_relu"),
        helper.make_node("Gemm", [f"{name}_r", f"{name}_w2"], [f"{name}_y"], transB=1, name=f"{name}_fc2"),
    ]
    inits = [numpy_helper.from_array(w1, f"{name}_w1"), numpy_helper.from_array(w2, f"{name}_w2")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [1, 4])], inits)


@pytest.mark.parametrize("runtime", [False, True])
def test_the_chain_method_sees_through_inlined_branches_only(runtime: bool) -> None:
    """lipsdp on an If of MLP branches: with a constant condition the inlined branch is a chain and its certified
    value is above what onnxruntime shows; with a runtime condition nothing is certified, whatever the method."""
    rng = np.random.default_rng(7)
    w = [rng.standard_normal(s).astype(np.float32) for s in ((8, 4), (4, 8), (8, 4), (4, 8))]
    node = helper.make_node("If", ["cond"], ["Y"], name="if", then_branch=_mlp_branch("a", w[0], w[1]),
                            else_branch=_mlp_branch("b", w[2], w[3]))
    if runtime:
        m = _model([node], [], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    else:
        m = _model([node], [numpy_helper.from_array(np.array(True), "cond")])
    report = lipcheck.analyze(m, lower_bound=False, method="lipsdp")
    if runtime:
        assert not report.certified
        assert [u.node for u in report.unbounded] == ["if"]
    else:
        assert report.certified and report.method == "lipsdp"
        assert report.upper_bound >= _ort_ratio(m)
        product = float(np.linalg.svd(w[0], compute_uv=False)[0] * np.linalg.svd(w[1], compute_uv=False)[0])
        assert report.upper_bound <= product * (1 + 1e-6)
