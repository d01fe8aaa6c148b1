"""Invalid graphs are refused with one line naming the problem, never bounded as if they were valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcheck.cli.app import app
from lipcheck.errors import LoadError
from lipcheck.loaders.onnx_loader import load_onnx

F = TensorProto.FLOAT


def _model(nodes, inits, x_shape=(1, 4), opset=17, outputs=("Y",)):  # type: ignore[no-untyped-def]
    g = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("X", F, list(x_shape))],
        [helper.make_tensor_value_info(o, F, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


EYE = {"W": np.eye(4, dtype=np.float32)}


def _duplicate() -> onnx.ModelProto:
    return _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="a"), helper.make_node("Relu", ["X"], ["Y"], name="b")], EYE
    )


def _undefined() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["Z", "W"], ["Y"], name="mm")], EYE)


def _cycle() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["X", "B"], ["A"], name="add"),
        helper.make_node("Relu", ["A"], ["B"], name="relu"),
        helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm"),
    ]
    return _model(nodes, EYE)


def _empty_weight() -> onnx.ModelProto:
    return _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], {"W": np.zeros((16, 0), np.float32)}, (1, 32)
    )


def _wrong_rows() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["X", "W"], ["Y"], name="fc")], {"W": np.ones((3, 5), np.float32)}, (1, 4))


def _opset_9999() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"])], EYE, opset=9999)


def _ir_9999() -> onnx.ModelProto:
    m = _model([helper.make_node("MatMul", ["X", "W"], ["Y"])], EYE)
    m.ir_version = 9999
    return m


def _unknown_output() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"])], EYE, outputs=("Y", "nowhere"))


def _subgraph_reads_undefined() -> onnx.ModelProto:
    branch = helper.make_graph(
        [helper.make_node("Mul", ["ghost", "W"], ["t"])], "b", [], [helper.make_tensor_value_info("t", F, [1, 4])]
    )
    node = helper.make_node("If", ["c"], ["Y"], then_branch=branch, else_branch=branch, name="if")
    return _model([node], {**EYE, "c": np.array(True)})


CASES = {
    "duplicate definition": (_duplicate, r"'Y'.*(twice|SSA|multiple)"),
    "undefined tensor": (_undefined, r"'Z'"),
    "cycle": (_cycle, r"'B'"),
    "16x0 weight where 32 rows are needed": (_empty_weight, r"[Ii]ncompatible|invalid"),
    "weight with the wrong rows": (_wrong_rows, r"invalid"),
    "opset 9999": (_opset_9999, r"opset 9999"),
    "IR version 9999": (_ir_9999, r"IR version 9999"),
    "output never computed": (_unknown_output, r"'nowhere'"),
    "subgraph reads an undefined tensor": (_subgraph_reads_undefined, r"'ghost'"),
}


@pytest.mark.parametrize("case", CASES)
def test_invalid_graph_is_refused(case: str) -> None:
    build, pattern = CASES[case]
    with pytest.raises(LoadError, match=pattern):
        load_onnx(build())


@pytest.mark.parametrize("case", ["duplicate definition", "cycle", "opset 9999"])
def test_onnxruntime_refuses_them_too(case: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any refusal
        ort.InferenceSession(CASES[case][0]().SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("case", CASES)
def test_cli_gives_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(CASES[case][0](), path)
    before = path.read_bytes()
    result = CliRunner().invoke(app, ["analyze", str(path), "--no-lower-bound"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert path.read_bytes() == before


@pytest.mark.parametrize("seed", range(8))
def test_generated_duplicate_definitions_anywhere_in_a_chain(seed: int) -> None:
    """A chain of MatMul/Relu nodes where one random node redefines an earlier tensor."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    nodes, prev = [], "X"
    for k in range(n):
        out = "Y" if k == n - 1 else f"t{k}"
        nodes.append(
            helper.make_node(
                "MatMul" if k % 2 == 0 else "Relu", [prev, "W"] if k % 2 == 0 else [prev], [out], name=f"n{k}"
            )
        )
        prev = out
    victim = int(rng.integers(0, n - 1))
    clash = helper.make_node("Relu", ["X"], [f"t{victim}"], name="clash")
    nodes.insert(int(rng.integers(victim + 1, n + 1)), clash)
    with pytest.raises(LoadError, match=f"'t{victim}'"):
        load_onnx(_model(nodes, EYE))
