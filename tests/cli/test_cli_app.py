"""The CLI: options forwarded to lipcheck.analyze, output on stdout, errors as one line, exit codes.

``lipcheck.analyze`` is replaced by a fake here; real models are tested in test_cli_models.py.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

import lipcheck
from lipcheck import errors
from lipcheck.cli.app import EXIT_ERROR, EXIT_INTERRUPTED, app
from lipcheck.report.formats import render_markdown, render_table
from lipcheck.report.model import InputInfo, LayerResult, LowerBound, Report

runner = CliRunner()


def small_report(upper: float | None = 2.5) -> Report:
    layer = LayerResult(
        name="fc", op="Gemm", param="fc.weight", fused_with=(), input_shape=(1, 4), output_shape=(1, 2),
        sigma_power=2.4, power_iterations=100, sigma_exact=2.5, exact_method="svd", exact_skipped=None,
        sigma_upper=2.5, upper_method="svd+margin", sigma_reshaped=None, lipschitz=2.5,
        cumulative_upper=upper, cumulative_estimate=2.4,
    )
    return Report(
        model="m.onnx", inputs=(InputInfo("x", (1, 4), "float32"),), upper_bound=upper,
        certified=upper is not None, estimate=2.4, lower_bound=LowerBound(value=2.0), unbounded=(),
        layers=(layer,), ops=(), lipcheck_version=lipcheck.__version__,
    )


class FakeAnalyze:
    def __init__(self, result: Report | BaseException | Callable[..., Report]) -> None:
        self.result = result
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, model: Any, input_shape: Any = None, **options: Any) -> Report:
        self.calls.append((model, {"input_shape": input_shape, **options}))
        if isinstance(self.result, BaseException):
            raise self.result
        if callable(self.result):
            return self.result(**options)
        return self.result


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], FakeAnalyze]:
    def install(result: Any) -> FakeAnalyze:
        analyze = FakeAnalyze(result)
        monkeypatch.setattr(lipcheck, "analyze", analyze)
        return analyze

    return install


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{text}"
    return lines[0]


# --------------------------------------------------------------------------------------------- basic


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lipcheck {lipcheck.__version__}"


def test_options_are_forwarded(fake: Callable[[Any], FakeAnalyze]) -> None:
    analyze = fake(small_report())
    result = runner.invoke(
        app,
        ["analyze", "m.onnx", "--input-shape", "1,4", "--power-iterations", "7", "--tolerance", "1e-4",
         "--seed", "3", "--exact-limit", "99", "--no-lower-bound", "--lower-bound-seconds", "0.5",
         "--no-progress", "--arch", "pkg.mod:make", "--arch-kwargs", '{"width": 2}', "--key", "ema",
         "--trust-pickle", "--method", "LipSDP", "--domain", "0,1", "--domain", "x=-1,1", "--around", "p.npy",
         "--radius", "0.25", "--norm", "inf", "--tight-work", "7.5"],
    )
    assert result.exit_code == 0, result.stderr
    [(model, options)] = analyze.calls
    assert model == "m.onnx"
    assert options == {
        "input_shape": (1, 4), "power_iterations": 7, "tolerance": 1e-4, "seed": 3, "exact_limit": 99,
        "lower_bound": False, "lower_bound_seconds": 0.5, "progress": None, "trust_pickle": True,
        "arch": "pkg.mod:make", "arch_kwargs": {"width": 2}, "key": "ema", "jobs": "size", "cache_dir": None,
        "force": False, "method": "lipsdp", "domain": "0,1;x=-1,1", "around": "p.npy", "radius": 0.25,
        "norm": "inf", "tight_work": 7.5,
    }


def test_defaults_and_no_exact(fake: Callable[[Any], FakeAnalyze]) -> None:
    analyze = fake(small_report())
    result = runner.invoke(app, ["analyze", "m.onnx", "-s", "x=1,4", "-s", "y=2", "--no-exact"])
    assert result.exit_code == 0, result.stderr
    options = analyze.calls[0][1]
    assert options["input_shape"] == {"x": (1, 4), "y": (2,)}
    assert options["exact_limit"] == 0
    assert options["power_iterations"] == 100 and options["seed"] == 0 and options["lower_bound"] is True
    assert options["progress"] is not None and not options["progress"].enabled  # stderr is not a TTY


# -------------------------------------------------------------------------------------------- output


def test_json_is_exactly_one_object_on_stdout(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(small_report())
    result = runner.invoke(app, ["analyze", "m.onnx", "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == small_report().to_dict()
    assert result.stderr == ""


def test_table_and_markdown_on_stdout(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(small_report())
    table = runner.invoke(app, ["analyze", "m.onnx"])
    assert table.exit_code == 0 and table.stdout == render_table(small_report()) and table.stderr == ""
    markdown = runner.invoke(app, ["analyze", "m.onnx", "-f", "markdown"])
    assert markdown.exit_code == 0 and markdown.stdout == render_markdown(small_report())


def test_unbounded_report_exits_zero(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(small_report(upper=None))
    result = runner.invoke(app, ["analyze", "m.onnx"])
    assert result.exit_code == 0
    assert "unbounded" in result.stdout


def test_forced_progress_goes_to_stderr_only(fake: Callable[[Any], FakeAnalyze]) -> None:
    def run(progress: Any, **_: Any) -> Report:
        progress.start(2, "bounding layers")
        progress.advance("fc")
        progress.advance("relu")
        progress.finish()
        return small_report()

    fake(run)
    result = runner.invoke(app, ["analyze", "m.onnx", "--format", "json", "--progress"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == small_report().to_dict()
    assert "bounding layers" in result.stderr


# -------------------------------------------------------------------------------------------- errors


def test_bad_input_shape_is_one_line_exit_2(fake: Callable[[Any], FakeAnalyze]) -> None:
    analyze = fake(small_report())
    result = runner.invoke(app, ["analyze", "m.onnx", "--input-shape", "1,three"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr).startswith("error: invalid --input-shape '1,three'")
    assert result.stdout == "" and analyze.calls == []


def test_lipcheck_error_is_one_line_exit_2(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(errors.LoadError("cannot read m.onnx: no such file"))
    result = runner.invoke(app, ["analyze", "m.onnx"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr) == "error: cannot read m.onnx: no such file"
    assert "Traceback" not in result.output and result.stdout == ""


def test_multiline_message_is_still_one_line(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(errors.UnsupportedModelError("only integer inputs:\n  ids [1, 8] int64"))
    result = runner.invoke(app, ["analyze", "m.onnx"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr) == "error: only integer inputs: ids [1, 8] int64"


def test_unexpected_error_is_one_line_exit_2(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(RuntimeError("boom"))
    result = runner.invoke(app, ["analyze", "m.onnx"])
    assert result.exit_code == EXIT_ERROR
    line = _one_line(result.stderr)
    assert line == "internal error: RuntimeError: boom (run with --debug for the traceback)"
    assert "Traceback" not in result.output


def test_debug_prints_the_traceback(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(RuntimeError("boom"))
    result = runner.invoke(app, ["analyze", "m.onnx", "--debug"])
    assert result.exit_code == EXIT_ERROR
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == "internal error: RuntimeError: boom"


def test_ctrl_c_exits_130_with_one_line(fake: Callable[[Any], FakeAnalyze]) -> None:
    fake(KeyboardInterrupt())
    result = runner.invoke(app, ["analyze", "m.onnx"])
    assert result.exit_code == EXIT_INTERRUPTED
    assert _one_line(result.stderr) == "interrupted"


def test_bad_format_is_a_usage_error() -> None:
    result = runner.invoke(app, ["analyze", "m.onnx", "--format", "xml"])
    assert result.exit_code == 2


# ------------------------------------------------------------------------ with the real loader (lead)

_HAS_ANALYSIS = importlib.util.find_spec("lipcheck.bound.analysis") is not None


@pytest.mark.skipif(not _HAS_ANALYSIS, reason="TODO: needs lipcheck.bound.analysis / lipcheck.loaders (lead)")
def test_missing_model_file_is_one_line_exit_2(tmp_path: Any) -> None:
    missing = tmp_path / "missing.onnx"
    result = runner.invoke(app, ["analyze", str(missing), "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    line = _one_line(result.stderr)
    assert line.startswith("error: ") and "missing.onnx" in line
    assert "Traceback" not in result.output and result.stdout == ""
