"""Bad input through the real CLI: one line naming the problem on stderr, exit 2, no traceback (``--debug``
shows one), and the input file is never modified."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from lipcheck.cli.app import app
from tests.helpers import make_model, rng_weights

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _gemm(w: np.ndarray) -> onnx.ModelProto:
    return make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                      [("x", (1, w.shape[1]))], ["y"], {"w": w})


def _missing(tmp: Path) -> Path:
    return tmp / "missing.onnx"


def _not_onnx(tmp: Path) -> Path:
    p = tmp / "notes.onnx"
    p.write_text("this is a text file, not a model\n" * 20)
    return p


def _truncated(tmp: Path) -> Path:
    data = (ROOT / "sample_models" / "mlp.onnx").read_bytes()
    p = tmp / "truncated.onnx"
    p.write_bytes(data[: len(data) // 3])
    return p


def _empty_file(tmp: Path) -> Path:
    p = tmp / "empty.onnx"
    p.write_bytes(b"")
    return p


def _directory(tmp: Path) -> Path:
    p = tmp / "folder.onnx"
    p.mkdir()
    return p


def _empty_graph(tmp: Path) -> Path:
    p = tmp / "nodes.onnx"
    onnx.save(make_model([], [("x", (1, 3))], ["x"], {"w": np.ones(1, np.float32)}), p)
    return p


def _nan_weights(tmp: Path) -> Path:
    w = rng_weights(4, 6)
    w[2, 3] = np.inf
    p = tmp / "nan.onnx"
    onnx.save(_gemm(w), p)
    return p


def _dynamic(tmp: Path) -> Path:
    p = tmp / "dynamic.onnx"
    m = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                   [("x", ("batch", 6))], ["y"], {"w": rng_weights(4, 6)})
    onnx.save(m, p)
    return p


def _integer_only(tmp: Path) -> Path:
    p = tmp / "tokens.onnx"
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])
    m = make_model([helper.make_node("Gather", ["emb", "ids"], ["y"], name="embed")], [x], ["y"],
                   {"emb": rng_weights(10, 4)})
    onnx.save(m, p)
    return p


CASES: list[tuple[Callable[[Path], Path], list[str], str]] = [
    (_missing, [], r"missing\.onnx: no such file"),
    (_not_onnx, [], r"not an ONNX model"),
    (_truncated, [], r"truncated or corrupt"),
    (_empty_file, [], r"file is empty"),
    (_directory, [], r"is a directory"),
    (_empty_graph, [], r"empty"),
    (_nan_weights, [], r"'w' used by node 'fc' \(Gemm\) contains (NaN|Inf)"),
    (_dynamic, [], r"input 'x' has dynamic dimensions \[batch, 6\]: pass --input-shape"),
    (_dynamic, ["--input-shape", "1,7"], r"--input-shape"),
    (_dynamic, ["--input-shape", "1,x"], r"invalid --input-shape '1,x'"),
    (_dynamic, ["--input-shape", "nosuch=1,6"], r"nosuch"),
    (_integer_only, [], r"integer .*no Lipschitz constant"),
]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.mark.parametrize(("make", "args", "pattern"), CASES, ids=[f"{c[0].__name__}{'+' if c[1] else ''}"
                                                                   for c in CASES])
def test_bad_input_is_one_line_exit_2(make: Callable[[Path], Path], args: list[str], pattern: str,
                                      tmp_path: Path) -> None:
    path = make(tmp_path)
    before = _digest(path)
    result = runner.invoke(app, ["analyze", str(path), "--no-lower-bound", "--no-progress", *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")


    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert _digest(path) == before  # the input is never modified


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lipcheck", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_real_process_bad_file_has_no_traceback_and_debug_shows_one(tmp_path: Path) -> None:
    bad = _truncated(tmp_path)
    plain = _subprocess("analyze", str(bad))
    assert plain.returncode == 2
    assert plain.stdout == ""
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = _subprocess("analyze", str(bad), "--debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_unknown_option_is_a_usage_error_exit_2() -> None:
    result = runner.invoke(app, ["analyze", "sample_models/mlp.onnx", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_unbounded_model_is_a_report_exit_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["analyze", "sample_models/attention.onnx", "--no-lower-bound", "--no-progress",
                                 "--format", "json"])
    assert result.exit_code == 0
    assert '"upper_bound": null' in result.stdout
