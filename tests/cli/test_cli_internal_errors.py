"""The audit's hostile inputs through the real CLI: corrupt tensors, absurd dims, unknown element types,
inconsistent Conv groups, float64 overflow, bad --seed / --input-shape / empty paths, unwritable outputs,
hostile baselines, and MemoryError / RecursionError / OverflowError / OSError raised anywhere. Each is one line
on stderr, exit 2, no traceback (``--debug`` shows one), and the input file is never modified."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcheck.cli.app import app
from tests.helpers import make_model, rng_weights

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "sample_models" / "mlp.onnx")
runner = CliRunner()


def _gemm(w: np.ndarray | None = None) -> onnx.ModelProto:
    w = rng_weights(4, 6) if w is None else w
    return make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                      [("x", (1, w.shape[1]))], ["y"], {"w": w})


def _with(edit: Callable[[onnx.ModelProto], None], model: Callable[[], onnx.ModelProto] = _gemm
          ) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        m = model()
        edit(m)
        path = tmp / "model.onnx"
        onnx.save(m, path)
        return path

    make.__name__ = edit.__name__
    return make


def raw_short(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]


def raw_long(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].raw_data += b"\0" * 8


def float_data_short(m: onnx.ModelProto) -> None:
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * 23)


def dims_2_40(m: onnx.ModelProto) -> None:
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([2**40, 6])


def dims_negative(m: onnx.ModelProto) -> None:
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([-4, 6])


def input_dim_2_40(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40


def value_info_dim_2_40(m: onnx.ModelProto) -> None:
    m.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2**40]))


def initializer_type_999(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].data_type = 999


def input_type_999(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = 999


def _conv(weight: tuple[int, ...], channels: int, group: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group)
        return make_model([node], [("x", (1, channels, 8, 8))], ["y"], {"w": rng_weights(*weight)})

    return build


def unchanged(m: onnx.ModelProto) -> None:
    pass


MODEL_CASES: list[tuple[Callable[[Path], Path], list[str], str]] = [
    (_with(raw_short), [], r"model\.onnx: initializer 'w' has 92 bytes of raw_data, but its shape \[4, 6\] of FLOAT "
                           r"needs 96"),
    (_with(raw_long), [], r"initializer 'w' has 104 bytes of raw_data"),
    (_with(float_data_short), [], r"initializer 'w' holds 23 values in float_data, but its shape \[4, 6\]"),
    (_with(dims_2_40), [], r"initializer 'w' has 96 bytes of raw_data, but its shape \[1099511627776, 6\]"),
    (_with(dims_negative), [], r"initializer 'w' has a negative dimension -4"),
    (_with(input_dim_2_40), [], r"input 'x' has a dimension of 1099511627776, more than the 2147483647"),
    (_with(value_info_dim_2_40), [], r"value_info 'y' has a dimension of 1099511627776"),
    (_with(initializer_type_999), [], r"initializer 'w' has an unknown element type 999"),
    (_with(input_type_999), [], r"input 'x' has an unknown element type 999"),
    (_with(unchanged, _conv((4, 2, 3, 3), 6, 3)), [], r"node 'conv' \(Conv\) has group 3, which does not divide"),
    (_with(unchanged, _conv((4, 3, 3, 3), 4, 2)), [], r"input 'x' has 4 channels, but weight 'w' \[4, 3, 3, 3\]"),
    (_with(unchanged), ["--input-shape", "99999999999999999999,6"], r"a dimension is larger than 2147483647"),
    (_with(unchanged), ["--input-shape", "1," + "9" * 5000], r"a dimension is larger than 2147483647"),
    (_with(unchanged), ["--input-shape", "65536,65536,65536"],
     r"281474976710656 elements, more than the 1099511627776 \(2\^40\)"),
]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _assert_one_error_line(result: Any, pattern: str) -> str:
    """A CliRunner result or a CompletedProcess: exit 2, one ``error:`` line matching ``pattern``."""
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stdout, stderr = result.stdout, result.stderr
    assert exit_code == 2, (stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in stderr
    return str(lines[0])


@pytest.mark.parametrize(("make", "args", "pattern"), MODEL_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(MODEL_CASES)])
@pytest.mark.parametrize("command", ["analyze", "normalize", "check"])
def test_a_hostile_model_is_one_line_exit_2(make: Callable[[Path], Path], args: list[str], pattern: str,
                                            command: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    before = _digest(path)
    extra = {"analyze": ["--no-lower-bound"], "normalize": ["--out", str(tmp_path / "out.onnx")],
             "check": ["--max-lipschitz", "10", "--config", str(_empty_config(tmp_path))]}[command]
    result = runner.invoke(app, [command, str(path), "--no-progress", *extra, *args])
    if command == "check" and result.exit_code == 2 and len(result.stderr.splitlines()) > 1:
        # check reports a model it could not analyse among its summary lines: the error line is one of them
        assert "Traceback" not in result.stderr
        assert any(re.search(pattern, line) for line in result.stderr.splitlines()), result.stderr
    else:
        _assert_one_error_line(result, pattern)
    assert result.stdout == ""
    assert _digest(path) == before
    assert not (tmp_path / "out.onnx").exists()


def _empty_config(tmp: Path) -> Path:
    path = tmp / "lipcheck.toml"
    path.write_text("")
    return path


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("command", [["analyze", MLP], ["check", MLP], ["normalize", MLP, "--out", "x.onnx"],
                                     ["diff", MLP, MLP]])
def test_a_negative_seed_is_a_usage_error_not_a_crash(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--seed", "-1", "--no-progress"])
    assert result.exit_code == 2
    assert "--seed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "option"), [
    (["normalize", MLP], "--out"),
    (["check", MLP], "--output"),
    (["check", MLP], "--baseline"),
    (["check", MLP], "--plot"),
    (["check", MLP], "--config"),
    (["check", MLP], "--cache"),
    (["analyze", MLP], "--plot"),
    (["analyze", MLP], "--cache"),
])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_option_is_one_line(command: list[str], option: str, value: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, option, value, "--no-progress"])
    _assert_one_error_line(result, f"{option} is empty: give a file path")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- baselines


def test_baseline_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", MLP, "--baseline", "/dev/zero", "--no-progress"])
    _assert_one_error_line(result, "cannot read baseline /dev/zero: a character device, not a regular file")


def test_a_fifo_baseline_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "baseline.json"
    os.mkfifo(fifo)
    result = _subprocess("check", MLP, "--baseline", str(fifo), "--no-progress", timeout=60)
    _assert_one_error_line(result, "a FIFO \\(named pipe\\), not a regular file")


@pytest.mark.parametrize("command", ["check", "diff"])
def test_deeply_nested_baseline_json_is_one_line(command: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    args = ["check", MLP, "--baseline", str(path)] if command == "check" else ["diff", str(path), MLP]
    result = runner.invoke(app, [*args, "--no-progress"])
    _assert_one_error_line(result, r"deep\.json is not a lipcheck report: its JSON is nested too deeply")


def test_a_huge_baseline_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(1 << 30)  # sparse: no disk used, 1 GiB to read
    result = runner.invoke(app, ["check", MLP, "--baseline", str(path), "--no-progress"])
    _assert_one_error_line(result, r"huge\.json is 1 GiB, more than the 64 MiB lipcheck reads")


# ----------------------------------------------------------------------------------------------- outputs


def _subprocess(*args: str, timeout: float = 300, preexec: Callable[[], None] | None = None
                ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "lipcheck", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT, preexec_fn=preexec)


def _small_files() -> None:
    """In the child: files can grow to 2000 bytes only (EFBIG, as a full disk gives ENOSPC)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


@pytest.mark.parametrize(("args", "target"), [
    (["check", MLP, "--output", "{dir}/report.json", "--format", "json"], "report.json"),
    pytest.param(["check", MLP, "--baseline", "{dir}/baseline.json", "--update-baseline"], "baseline.json",
                 marks=pytest.mark.slow),
    (["normalize", MLP, "--out", "{dir}/normalized.onnx"], "normalized.onnx"),
])
def test_a_full_disk_is_one_line_naming_the_file(args: list[str], target: str, tmp_path: Path) -> None:
    result = _subprocess(*[a.format(dir=tmp_path) for a in args], "--no-progress", preexec=_small_files)
    line = _assert_one_error_line(result, re.escape(str(tmp_path / target)))
    assert os.strerror(errno.EFBIG) in line
    assert not (tmp_path / target).exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary file left behind


# ----------------------------------------------------------------------------------- the top-level handler


@pytest.mark.parametrize(("raised", "pattern"), [
    (MemoryError(), r"^error: out of memory while analysing the model; try --no-exact"),
    (RecursionError("maximum recursion depth exceeded"), r"^error: nesting too deep while analysing the model"),
    (OverflowError("Python int too large to convert to C long"),
     r"^error: a number too large for float64 or a C integer while analysing the model \(Python int too large"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/report.json"),
     r"^error: /ro/report\.json: Read-only file system \(while analysing the model\)$"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/a", None, "/full/b"),
     r"^error: /full/a -> /full/b: No space left on device"),
])
@pytest.mark.parametrize("wrapped", [False, True])
def test_resource_errors_anywhere_are_one_line(raised: BaseException, pattern: str, wrapped: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck
    from lipcheck.bound.walker import RuleFailure

    def analyze(*args: object, **kwargs: object) -> None:
        if wrapped:  # as the walker wraps a rule's error
            raise RuleFailure(f"while bounding node fc (Gemm): {type(raised).__name__}: {raised}") from raised
        raise raised

    monkeypatch.setattr(lipcheck, "analyze", analyze)
    result = runner.invoke(app, ["analyze", MLP, "--no-progress", "--no-lower-bound"])
    _assert_one_error_line(result, pattern)
    debug = runner.invoke(app, ["analyze", MLP, "--no-progress", "--no-lower-bound", "--debug"])
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr
    assert re.search(pattern, debug.stderr.rstrip().splitlines()[-1])


def test_a_lipcheck_error_wrapped_by_the_walker_is_an_error_not_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck
    from lipcheck.bound.walker import RuleFailure
    from lipcheck.errors import InvalidModelError

    def analyze(*args: object, **kwargs: object) -> None:
        cause = InvalidModelError("node 'c2' (Conv): input 'h' does not fit weight 'w2'")
        raise RuleFailure(f"while bounding node c2 (Conv): InvalidModelError: {cause}") from cause

    monkeypatch.setattr(lipcheck, "analyze", analyze)
    result = runner.invoke(app, ["analyze", MLP, "--no-progress", "--no-lower-bound"])
    _assert_one_error_line(result, r"^error: node 'c2' \(Conv\): input 'h' does not fit weight 'w2'$")


def test_an_unexpected_error_stays_an_internal_error_with_a_clipped_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck

    def analyze(*args: object, **kwargs: object) -> None:
        raise ValueError("x" * 10_000 + "\nsecond line")

    monkeypatch.setattr(lipcheck, "analyze", analyze)
    result = runner.invoke(app, ["analyze", MLP, "--no-progress", "--no-lower-bound"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: ValueError: xxx")
    assert len(lines[0]) < 600 and "--debug" in lines[0]


# ------------------------------------------------------------------------------------------ float64 overflow


def _overflowing(tmp: Path, scale: float = 1e200, layers: int = 3) -> Path:
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        inits.append(numpy_helper.from_array(np.random.default_rng(i).standard_normal((4, 4)) * scale, f"w{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 4])],
                              [helper.make_tensor_value_info(prev, TensorProto.DOUBLE, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / "overflow.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(("scale", "layers"), [(1e200, 3), (1e300, 2), (1e307, 2)])
def test_a_float64_overflow_is_an_unbounded_report_not_a_crash(scale: float, layers: int, tmp_path: Path) -> None:
    path = _overflowing(tmp_path, scale, layers)
    result = runner.invoke(app, ["analyze", str(path), "--no-progress", "--no-lower-bound", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert '"upper_bound": null' in result.stdout
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    gate = runner.invoke(app, ["check", str(path), "--no-progress", "--max-lipschitz", "10",
                               "--config", str(_empty_config(tmp_path))])
    assert gate.exit_code == 1 and "Traceback" not in gate.stderr
