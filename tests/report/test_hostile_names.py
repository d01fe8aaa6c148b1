"""Names from a model (node, tensor, parameter, file names) holding ANSI escapes, control characters,
newlines, bidi overrides, Rich markup, markdown, XML and workflow-command syntax: every format shows them
escaped and keeps its structure; the JSON keeps them exact.

A real ONNX model with such names is analysed once; a generated variant (Hypothesis) renders hand-built
reports whose names are drawn from hostile fragments and arbitrary characters.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import lipcheck
from lipcheck.cli.progress import RichProgress
from lipcheck.gate.baseline import Snapshot, compare
from lipcheck.gate.decision import Thresholds, evaluate
from lipcheck.gate.run import AnalysisOptions, CheckRun, ModelCheck, Target
from lipcheck.report.ci_formats import CheckFormat, summary_lines
from lipcheck.report.diff_formats import DiffFormat
from lipcheck.report.formats import OutputFormat
from lipcheck.report.model import InputInfo, OpResult, Report, Unbounded
from lipcheck.report.text import html_text, markdown_text, needs_escape, safe_text
from tests.gate.reports import layer, report
from tests.report.hostile import (
    ANSI,
    FILE_NAME,
    HOSTILE,
    LAYER_1,
    LAYER_2,
    LAYER_3,
    PRODUCT,
    assert_github_safe,
    assert_junit_safe,
    assert_markdown_safe,
    assert_no_control,
    save_hostile_model,
)

# ------------------------------------------------------------------------------------------ safe_text


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[31mRED\x1b[0m", "\\x1b[31mRED\\x1b[0m"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x00\x07\x7f", "\\x00\\x07\\x7f"),
    ("\x9b2J", "\\x9b2J"),  # C1 CSI
    ("\u202eabc\u2066\u200f", "\\u202eabc\\u2066\\u200f"),  # bidi override, isolate, mark
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("\ud800", "\\ud800"),  # a lone surrogate cannot be written as UTF-8
    ("\ufffe\U0010ffff", "\\ufffe\\U0010ffff"),  # noncharacters: not XML 1.0
])
def test_safe_text_escapes_control_bidi_and_invisible_characters(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


@pytest.mark.parametrize("plain", [
    "/encoder/layers.11/attention/output/dense/MatMul", "C:\\models\\net.onnx", "σ × ≤ — … é 中文 🙂",
    "[bold]x[/bold]", "a b", "",
])
def test_safe_text_keeps_printable_text(plain: str) -> None:
    assert safe_text(plain) == plain


@given(st.text())
def test_safe_text_is_printable_one_line_and_idempotent(text: str) -> None:
    shown = safe_text(text)
    assert not any(needs_escape(c) for c in shown)
    assert "\n" not in shown and "\r" not in shown
    assert safe_text(shown) == shown
    shown.encode("utf-8")  # no lone surrogate left


def test_markdown_text_cannot_break_a_table_or_inject_html_links_or_math() -> None:
    shown = markdown_text("a|b\nc`d`<img src=x>&amp;[t](http://x)$\\alpha$\\")
    assert shown == "a\\|b\\\\nc\\`d\\`&lt;img src=x>&amp;amp;[t\\](http://x)\\$\\\\alpha\\$\\\\"
    assert html_text("</summary><b>&") == "&lt;/summary&gt;&lt;b&gt;&amp;"


# ----------------------------------------------------------------------------- a real model, every format


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    path = save_hostile_model(tmp_path_factory.mktemp("hostile"))
    result = lipcheck.analyze(str(path), lower_bound=False)
    assert [lay.name for lay in result.layers] == [LAYER_1, LAYER_2, LAYER_3]  # the loader kept them
    assert [u.node for u in result.unbounded] == [PRODUCT]
    return result


def _check_run(rep: Report) -> CheckRun:
    """Every check fails, with a baseline whose layers were renamed (added/removed rows)."""
    before = dataclasses.replace(
        Snapshot.from_report(rep), upper_bound=1.0,
        layers=tuple(dataclasses.replace(s, name=s.name + "\x1b[7m", sigma_upper=0.5)
                     for s in Snapshot.from_report(rep).layers))
    thresholds = Thresholds(max_lipschitz=1.0, max_layer_sigma=0.1, max_increase=0.0)
    target = Target(path=rep.model, name=rep.model, input_shape=None, thresholds=thresholds, baseline=None,
                    plot=None, analysis=AnalysisOptions())
    return CheckRun((ModelCheck(target, rep, evaluate(rep, thresholds, before), 0.5),))


def test_table_shows_escaped_names_literally(hostile_report: Report) -> None:
    text = OutputFormat.TABLE.render(hostile_report)
    assert_no_control(text)
    for shown in ("fc\\x1b[31mRED\\x1b[0ma\\nbc\\rd\\u202eevil\\t", "[bold]x[/bold][link=http://x]y[/link]",
                  "\\x1b]8;;http://x\\x1b\\", "mul\\x1b[31m|x\\n::warning::%", "Input: in\\x1b[2Jput",
                  safe_text(FILE_NAME)):
        assert shown in text, shown


def test_markdown_keeps_its_structure(hostile_report: Report) -> None:
    text = OutputFormat.MARKDOWN.render(hostile_report)
    assert_markdown_safe(text)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # the header and one row per layer: no name added a line


def test_json_keeps_the_exact_names(hostile_report: Report) -> None:
    text = OutputFormat.JSON.render(hostile_report)
    assert_no_control(text)
    data = json.loads(text)
    assert [lay["name"] for lay in data["layers"]] == [LAYER_1, LAYER_2, LAYER_3]
    assert data["model"].endswith(FILE_NAME)


def test_check_formats(hostile_report: Report) -> None:
    run = _check_run(hostile_report)
    for fmt in CheckFormat:
        assert_no_control(fmt.render(run))
    assert_markdown_safe(CheckFormat.MARKDOWN.render(run))
    failed = len(run.models[0].verdict.failures)  # type: ignore[union-attr]
    assert failed >= 3
    assert_github_safe(CheckFormat.GITHUB.render(run), annotations=failed)
    root = assert_junit_safe(CheckFormat.JUNIT.render(run))
    messages = [f.get("message", "") for f in root.iter("failure")]
    assert any(safe_text(LAYER_1) in m for m in messages)
    assert all(f.get("file") == safe_text(hostile_report.model) for f in root.iter("testcase"))
    assert json.loads(CheckFormat.JSON.render(run))["gate"]["passed"] is False


def test_stderr_summary_is_one_line_per_item(hostile_report: Report) -> None:
    run = _check_run(hostile_report)
    lines = summary_lines(run)
    for line in lines:
        assert_no_control(line, layout="")
    assert lines[0] == "FAIL " + safe_text(hostile_report.model)
    assert lines[-1] == "lipcheck check: FAILED (1 of 1 model)"


def test_diff_formats(hostile_report: Report) -> None:
    run = _check_run(hostile_report)
    comparison = run.models[0].verdict.comparison  # type: ignore[union-attr]
    assert comparison is not None
    for fmt in DiffFormat:
        assert_no_control(fmt.render(comparison))
    assert_markdown_safe(DiffFormat.MARKDOWN.render(comparison))
    assert "\\x1b[7m" in DiffFormat.TABLE.render(comparison)


def test_plot_labels_are_plain_text(hostile_report: Report, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lipcheck.report.plot import build_figure, layer_labels, save_plot

    for label in layer_labels([LAYER_1, LAYER_2, LAYER_3]):
        assert_no_control(label, layout="")
        assert label.count("$") == label.count("\\$")  # no mathtext
    assert_no_control(build_figure(hostile_report).get_suptitle(), layout="")
    save_plot(hostile_report, tmp_path / "plot.png")  # "$\alpha$" and "\x1b" draw as text, without error


def test_progress_label_is_escaped() -> None:
    buffer = io.StringIO()
    progress = RichProgress(Console(file=buffer, force_terminal=True, width=200), force=True)
    progress.start(2, "bounding layers")
    progress.advance(ANSI + "[bold]x[/bold]\u202e")
    progress.finish()
    out = buffer.getvalue()
    assert ANSI not in out and "\u202e" not in out
    assert "\\x1b[31mRED\\x1b[0m[bold]x[/bold]\\u202e" in out


# ------------------------------------------------------------------------------------ generated names

_FRAGMENTS = st.sampled_from(HOSTILE + ("|", "`", "\\", "<", "&", "]", "(", "$", "%", ":", ",", "\n", "\x1b"))
_NAMES = st.lists(
    st.one_of(_FRAGMENTS, st.text(max_size=4), st.characters(codec="utf-8").map(str)), min_size=1, max_size=5
).map("".join)


def _generated_report(names: list[str], model: str) -> Report:
    layers = [layer(name, 1.5 + i) for i, name in enumerate(names)]
    rep = report(None, layers, model=model)
    return dataclasses.replace(
        rep,
        inputs=(InputInfo(names[0], (1, 4), "float32"),),
        unbounded=(Unbounded(names[-1], names[0], f"product of {names[-1]} and {names[0]}"),),
        ops=(OpResult(names[0], names[-1], 2.0, f"rule of {names[0]}"),),
        notes=(f"note about {names[-1]}",),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_NAMES, min_size=1, max_size=3, unique=True), model=_NAMES)
def test_generated_names_in_every_format(names: list[str], model: str) -> None:
    rep = _generated_report(names, model)
    assert_no_control(OutputFormat.TABLE.render(rep))
    assert_markdown_safe(OutputFormat.MARKDOWN.render(rep))
    assert [lay["name"] for lay in json.loads(OutputFormat.JSON.render(rep))["layers"]] == names

    thresholds = Thresholds(max_lipschitz=1.0, max_layer_sigma=1.0)
    target = Target(path=model, name=model, input_shape=None, thresholds=thresholds, baseline=None, plot=None,
                    analysis=AnalysisOptions())
    run = CheckRun((ModelCheck(target, rep, evaluate(rep, thresholds), 0.1),))
    for fmt in CheckFormat:
        assert_no_control(fmt.render(run))
    assert_markdown_safe(CheckFormat.MARKDOWN.render(run))
    assert_github_safe(CheckFormat.GITHUB.render(run), annotations=2)  # certified, max-layer-sigma
    assert_junit_safe(CheckFormat.JUNIT.render(run))
    for line in summary_lines(run):
        assert_no_control(line, layout="")

    comparison = compare(Snapshot.from_report(rep), Snapshot.from_report(report(2.0, model=model)))
    for diff_format in DiffFormat:
        assert_no_control(diff_format.render(comparison))
    assert_markdown_safe(DiffFormat.MARKDOWN.render(comparison))
