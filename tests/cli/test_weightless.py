"""Models without weights (Sigmoid alone, Relu → Tanh, Identity; an empty PyTorch state dict) are analysed like
any other: a normal report, the product of the op constants as certified bound, a lower bound below it, the usual
exit codes; normalize writes an unchanged copy (per-layer target) or says in one line that there is nothing to
scale (--global-target), as it does for weighted models that need no change."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from lipcheck.cli.app import EXIT_ERROR, EXIT_OK, app

runner = CliRunner()

CASES = {  # name -> (ops in order, certified bound)
    "sigmoid": (["Sigmoid"], 0.25),
    "relu_tanh": (["Relu", "Tanh"], 1.0),
    "identity": (["Identity"], 1.0),
}


def weightless(tmp_path: Path, name: str) -> Path:
    ops, _ = CASES[name]
    names = ["x", *(f"t{i}" for i in range(len(ops) - 1)), "y"]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]]) for i, op in enumerate(ops)]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])  # no initializers
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_analyze_reports_the_product_of_the_op_constants(tmp_path: Path, name: str) -> None:
    path = weightless(tmp_path, name)
    expected = CASES[name][1]
    result = runner.invoke(app, ["analyze", str(path), "--format", "json", "--no-progress",
                                 "--lower-bound-seconds", "1"])
    assert result.exit_code == EXIT_OK, result.stderr
    report = json.loads(result.stdout)
    assert report["certified"] is True
    assert report["upper_bound"] == pytest.approx(expected, rel=1e-9)
    assert report["upper_bound"] >= expected
    assert report["unbounded"] == [] and report["layers"] == []
    lower = report["lower_bound"]
    assert lower is not None and 0 < lower <= report["upper_bound"]
    assert lower >= 0.9 * expected  # these maps reach their constant (Sigmoid at 0, the others everywhere)


def test_analyze_table_is_a_normal_report(tmp_path: Path) -> None:
    path = weightless(tmp_path, "sigmoid")
    result = runner.invoke(app, ["analyze", str(path), "--no-progress", "--no-lower-bound"])
    assert result.exit_code == EXIT_OK, result.stderr
    out = result.stdout
    assert "No weighted (linear) layers." in out
    assert "Certified upper bound" in out and "0.2500" in out
    assert "Sigmoid" in out
    assert "nothing to analy" not in out.lower() and "nothing to analy" not in result.stderr.lower()


def test_check_gates_a_weightless_model_like_any_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configuration file around
    path = weightless(tmp_path, "sigmoid")
    passed = runner.invoke(app, ["check", str(path), "--max-lipschitz", "0.3", "--no-progress"])
    assert passed.exit_code == EXIT_OK, passed.stderr
    failed = runner.invoke(app, ["check", str(path), "--max-lipschitz", "0.2", "--no-progress"])
    assert failed.exit_code == 1, failed.stderr


def test_normalize_writes_an_unchanged_copy_or_says_there_is_nothing_to_scale(tmp_path: Path) -> None:
    path = weightless(tmp_path, "relu_tanh")
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["normalize", str(path), "-o", str(out), "--no-progress"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert "unchanged" in result.stdout
    assert onnx.load(out).graph.node[0].op_type == "Relu"
    # a global target: there is no weight to scale, one line and exit 2 (as for any model without weighted layers)
    other = tmp_path / "other.onnx"
    result = runner.invoke(app, ["normalize", str(path), "-o", str(other), "--global-target", "0.5", "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.strip().splitlines() == ["error: no weighted layer to scale"]
    assert not other.exists()


def test_empty_pytorch_state_dict_with_arch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    arch = tmp_path / "weightless_arch.py"
    arch.write_text("import torch\n\n\ndef make():\n"
                    "    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Sigmoid())\n")
    bare = tmp_path / "state.pt"
    torch.save(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Sigmoid()).state_dict(), bare)  # an empty dict
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": {}, "epoch": 3}, checkpoint)
    for path in (bare, checkpoint):
        result = runner.invoke(app, ["analyze", str(path), "--arch", f"{arch}:make", "--input-shape", "1,8",
                                     "--format", "json", "--no-progress", "--no-lower-bound"])
        assert result.exit_code == EXIT_OK, result.stderr
        report = json.loads(result.stdout)
        assert report["upper_bound"] == pytest.approx(0.25)
        assert any("without weights" in note for note in report["notes"])
    # without --arch: one line that says what is missing
    result = runner.invoke(app, ["analyze", str(bare), "--input-shape", "1,8", "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    assert "empty state dict" in result.stderr and "--arch" in result.stderr
