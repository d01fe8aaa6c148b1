"""The command line on a model whose names (nodes, tensors, file) hold ANSI escapes, newlines, bidi
overrides, Rich markup, markdown, XML and workflow-command syntax: stdout and stderr stay readable, one line
per item, with the names escaped; JUnit parses, GitHub annotations stay one line each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import EXIT_ERROR, EXIT_FAILED, EXIT_OK, app
from lipcheck.errors import LoadError
from lipcheck.report.text import safe_text
from tests.report.hostile import (
    ANSI,
    LAYER_1,
    LAYER_2,
    LAYER_3,
    PRODUCT,
    RELU,
    assert_github_safe,
    assert_junit_safe,
    assert_markdown_safe,
    assert_no_control,
    save_hostile_model,
)

runner = CliRunner()
GATE = ["--max-lipschitz", "1", "--max-layer-sigma", "0.1"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("LIPCHECK_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_hostile_model(tmp_path_factory.mktemp("hostile")))


def _stderr_lines(stderr: str) -> list[str]:
    assert_no_control(stderr)
    return stderr.splitlines()


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_analyze_every_format(model: str, fmt: str) -> None:
    result = runner.invoke(app, ["analyze", model, "--no-lower-bound", "--no-progress", "-f", fmt])
    assert result.exit_code == EXIT_OK, result.stderr
    assert_no_control(result.stdout)
    assert result.stderr == ""
    if fmt == "table":
        assert safe_text(LAYER_1) in result.stdout
        assert "[bold]x[/bold][link=http://x]y[/link]" in result.stdout  # shown, not interpreted
    elif fmt == "markdown":
        assert_markdown_safe(result.stdout)
    else:
        assert json.loads(result.stdout)["layers"][0]["name"] == LAYER_1


def test_analyze_gate_summary_on_stderr(model: str) -> None:
    result = runner.invoke(app, ["analyze", model, "--no-lower-bound", "--no-progress", "-f", "json", *GATE])
    assert result.exit_code == EXIT_FAILED
    lines = _stderr_lines(result.stderr)
    assert lines[0] == "FAIL " + safe_text(model)
    assert lines[-1] == "lipcheck analyze: FAILED (1 of 1 model)"
    assert any(safe_text(PRODUCT) in line for line in lines)


def test_check_junit_github_markdown_table(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    outputs = {}
    for fmt in ("junit", "github", "markdown", "table", "json"):
        result = runner.invoke(app, ["check", model, "--no-lower-bound", "--no-progress", "-f", fmt, *GATE])
        assert result.exit_code == EXIT_FAILED, result.stderr
        assert _stderr_lines(result.stderr)[-1] == "lipcheck check: FAILED (1 of 1 model)"
        assert_no_control(result.stdout)
        outputs[fmt] = result.stdout
    root = assert_junit_safe(outputs["junit"])
    assert len(list(root.iter("failure"))) == 2  # certified, max-layer-sigma
    assert_github_safe(outputs["github"], annotations=2)
    assert_markdown_safe(outputs["markdown"])
    assert_markdown_safe(summary.read_text(encoding="utf-8"))  # --format github appended the step summary
    assert json.loads(outputs["json"])["gate"]["passed"] is False


def test_normalize_table(model: str) -> None:
    result = runner.invoke(app, ["normalize", model, "--dry-run", "--target", "1", "--no-progress"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert_no_control(result.stdout)
    assert safe_text(LAYER_1) in result.stdout
    assert "W1\\x1b[1m" in result.stdout  # the parameter's name


def test_diff(model: str) -> None:
    for fmt in ("table", "markdown"):
        result = runner.invoke(app, ["diff", model, model, "--no-progress", "-f", fmt, "--max-increase", "0"])
        assert result.exit_code == EXIT_OK, result.stderr
        assert_no_control(result.stdout)
        assert_no_control(result.stderr)


def test_progress_bar_shows_escaped_layer_names(model: str) -> None:
    result = runner.invoke(app, ["analyze", model, "--no-lower-bound", "--progress", "-f", "json"])
    assert result.exit_code == EXIT_OK, result.stderr
    names = (LAYER_1, LAYER_2, LAYER_3, RELU, PRODUCT)
    assert not [name for name in names if name in result.stderr]
    assert any(safe_text(name) in result.stderr for name in names)  # the bar did show a layer
    assert ANSI not in result.stderr and "\u202e" not in result.stderr and "\x1b[2J" not in result.stderr


def test_errors_quoting_names_are_one_escaped_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(path: str, *args: object, **kwargs: object) -> None:
        raise LoadError(f"{path}: node '{ANSI}\nforged line\r\u202e' has no [bold]shape[/bold]")

    monkeypatch.setattr(lipcheck, "analyze", fails)
    Path("m.onnx").write_bytes(b"")
    for command in (["analyze", "m.onnx"], ["check", "m.onnx", "--max-lipschitz", "1"]):
        result = runner.invoke(app, [*command, "--no-progress"])
        assert result.exit_code == EXIT_ERROR
        lines = _stderr_lines(result.stderr)
        assert "error: m.onnx: node '\\x1b[31mRED\\x1b[0m forged line \\u202e' has no [bold]shape[/bold]" in lines
