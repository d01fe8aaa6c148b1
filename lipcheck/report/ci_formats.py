"""``lipcheck check`` output formats: each :class:`CheckFormat` member builds one renderer ``CheckRun -> str``.

- ``table``: each model's per-layer table (:func:`~lipcheck.report.formats.render_table`) and its gate
  checks, plain text.
- ``json``: one model: the ``analyze`` JSON object plus a ``gate`` key (verdict, reasons, every check, the
  baseline comparison); several: ``{"schema_version", "lipcheck_version", "gate", "models": [...]}`` whose
  ``gate`` holds the overall verdict. ``.gate.passed`` answers in both shapes.
- ``markdown``: a verdict table, the reasons and each model's report folded in ``<details>``: for
  ``$GITHUB_STEP_SUMMARY`` and pull-request comments.
- ``github``: workflow commands (``::error file=...,title=...::message``), one annotation per failed check
  (GitHub shows at most 10 errors per step: reasons are folded into the message, not one per layer),
  ``::warning`` for an uncertified bound that ``allow-uncertified`` lets through.
- ``junit``: JUnit XML, one ``<testsuite>`` per model and one ``<testcase>`` per model × check (certified,
  max-lipschitz, max-layer-sigma, max-increase), failures with their message; what GitLab, Jenkins and
  Azure Pipelines show as tests.

Renderers are pure; :func:`summary_lines` is the human summary the CLI writes to stderr.

Names and messages come from the model (node names, file names): every format but JSON shows them through
:mod:`lipcheck.report.text` (control and bidi characters as visible escapes, markdown and HTML escaped);
the GitHub commands add GitHub's own ``%``-escaping on top, so an annotation stays one line.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from enum import Enum
from typing import Any

from lipcheck.gate.baseline import Comparison
from lipcheck.gate.decision import CheckKind, CheckResult, Outcome, Verdict, format_limit
from lipcheck.gate.run import CheckRun, ModelCheck
from lipcheck.report.formats import render_markdown, render_table
from lipcheck.report.model import SCHEMA_VERSION, Report
from lipcheck.report.numbers import format_number
from lipcheck.report.text import html_text, markdown_text, safe_text

__all__ = [
    "CheckFormat",
    "comparison_dict",
    "json_safe",
    "escape_data",
    "escape_property",
    "render_check_github",
    "render_check_json",
    "render_check_junit",
    "render_check_markdown",
    "render_check_table",
    "summary_lines",
    "verdict_dict",
]

CheckRenderer = Callable[[CheckRun], str]

_TAG = {Outcome.PASSED: "PASS", Outcome.FAILED: "FAIL", Outcome.SKIPPED: "SKIP"}


def _completed(run: CheckRun) -> list[tuple[ModelCheck, Report, Verdict]]:
    """The analysed models (renderers are only called on complete runs; errors are the CLI's business)."""
    return [(m, m.report, m.verdict) for m in run.models if m.report is not None and m.verdict is not None]


def _verdict_word(run: CheckRun) -> str:
    n = len(run.models)
    if run.errors:
        return f"could not run ({len(run.errors)} of {n} model{'s' if n != 1 else ''})"
    failed = len(run.failed)
    if failed:
        return f"FAILED ({failed} of {n} model{'s' if n != 1 else ''})"
    return f"passed ({n} model{'s' if n != 1 else ''})"


# ------------------------------------------------------------------------------------------ summary


def summary_lines(run: CheckRun, command: str = "check") -> list[str]:
    """The human summary (stderr): one line per model, the checks behind a failure, one verdict line; every
    line escaped (:func:`~lipcheck.report.text.safe_text`): a name cannot add a line or an ANSI sequence."""
    lines = []
    for model in run.models:
        if model.error is not None:
            message = " ".join(model.error.split())
            named = model.target.path in message or model.name in message
            lines.append(f"error: {message}" if named else f"error: {model.name}: {message}")
            continue
        assert model.verdict is not None
        verdict = model.verdict
        if verdict.passed:
            # the bound is in every message: the certified check only says it again, unless it is alone
            shown = [c for c in verdict.checks if c.check is not CheckKind.CERTIFIED] or list(verdict.checks)
            passed = [c.message for c in shown if c.outcome is Outcome.PASSED]
            lines.append(f"PASS {model.name}" + (": " + "; ".join(passed) if passed else ""))
            lines.extend(f"  {_TAG[c.outcome]} {c.check.value}: {c.message}"
                         for c in verdict.checks if c.outcome is Outcome.SKIPPED)
        else:
            lines.append(f"FAIL {model.name}")
            for check in verdict.checks:
                lines.append(f"  {_TAG[check.outcome]} {check.check.value}: {check.message}")
                if check.failed:
                    lines.extend(f"       - {r.message}" for r in check.reasons if r.message != check.message)
        if model.baseline_written:
            lines.append(f"  baseline written: {model.target.baseline}")
    if not (len(run.models) == 1 and run.errors):  # one model that could not run: its error line says it all
        lines.append(f"lipcheck {command}: {_verdict_word(run)}")
    return [safe_text(line) for line in lines]


# -------------------------------------------------------------------------------------------- table


def _check_block(model: ModelCheck, verdict: Verdict) -> list[str]:
    lines = [f"Gate: {'passed' if verdict.passed else 'FAILED'} ({model.name})"]
    width = max(len(c.check.value) for c in verdict.checks)
    for check in verdict.checks:
        lines.append(f"  {_TAG[check.outcome]}  {check.check.value.ljust(width)}  {check.message}")
        lines.extend(f"          - {reason.message}" for reason in check.reasons if reason.message != check.message)
    comparison = verdict.comparison
    if comparison is not None and comparison.layers:
        lines.append(f"  Baseline {comparison.before.label}:")
        lines.extend(f"          {change.describe()}" for change in comparison.layers)
    return lines


def render_check_table(run: CheckRun) -> str:
    """Each model's per-layer table and summary, then its gate checks; a verdict line at the end."""
    parts = []
    for model, report, verdict in _completed(run):
        block = "\n".join(safe_text(line) for line in _check_block(model, verdict))
        parts.append(render_table(report).rstrip("\n") + "\n\n" + block + "\n")
    parts.append(f"lipcheck check: {_verdict_word(run)}\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- json


def json_safe(obj: Any) -> Any:
    """NaN and ±Inf become None, recursively (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    return obj


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    """A baseline comparison as JSON: growth in percent of the printed values, every layer by name."""
    return {
        "baseline": comparison.before.label,
        "upper_bound_before": comparison.before.upper_bound,
        "upper_bound_after": comparison.after.upper_bound,
        "growth_percent": comparison.growth,
        "layers": [
            {"name": c.name, "op": c.op, "sigma_upper_before": c.before, "sigma_upper_after": c.after,
             "growth_percent": c.growth, "change": c.change.value}
            for c in comparison.layers
        ],
    }


def _check_dict(check: CheckResult) -> dict[str, Any]:
    return {
        "check": check.check.value,
        "outcome": check.outcome.value,
        "message": check.message,
        "value": check.value,
        "limit": check.limit,
        "reasons": [
            {"message": r.message, "layer": r.layer, "value": r.value, "limit": r.limit} for r in check.reasons
        ],
    }


def verdict_dict(verdict: Verdict, name: str | None = None) -> dict[str, Any]:
    """The ``gate`` object: ``passed``, ``reasons`` (one line per failed check), ``checks``, ``baseline``."""
    return {
        **({"name": name} if name is not None else {}),
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
        "checks": [_check_dict(check) for check in verdict.checks],
        "baseline": comparison_dict(verdict.comparison) if verdict.comparison is not None else None,
    }


def _model_dict(model: ModelCheck, report: Report, verdict: Verdict) -> dict[str, Any]:
    return report.to_dict() | {"gate": verdict_dict(verdict, model.name)}


def render_check_json(run: CheckRun) -> str:
    """One model: the analyze object plus ``gate``; several: ``{..., "gate": overall, "models": [...]}``."""
    completed = _completed(run)
    if len(completed) == 1:
        data = _model_dict(*completed[0])
    else:
        from lipcheck import __version__

        data = {
            "schema_version": SCHEMA_VERSION,
            "lipcheck_version": __version__,
            "gate": {
                "passed": run.passed,
                "reasons": [f"{m.name}: {reason}" for m, _, v in completed for reason in v.reasons],
                "models": len(completed),
                "failed": len(run.failed),
            },
            "models": [_model_dict(*item) for item in completed],
        }
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------------- markdown


_md = markdown_text


def _code(text: str) -> str:
    """A code span in a table cell: one line, no control characters; a backtick cannot close it early."""
    return "`" + safe_text(text).replace("`", "'").replace("|", "\\|") + "`"


def _cell(check: CheckResult | None, value: str) -> str:
    if check is None:
        return _md(value)
    if check.failed:
        return f"**{_md(value)}** ❌"
    return _md(value)


def _bound_cell(report: Report, verdict: Verdict) -> str:
    check = verdict.check(CheckKind.MAX_LIPSCHITZ)
    if report.upper_bound is None or not report.certified:
        certified = verdict.check(CheckKind.CERTIFIED)
        return _cell(certified, "unbounded") if certified and certified.failed else "unbounded (allowed)"
    text = format_number(report.upper_bound)
    if check is not None and check.limit is not None:
        text += f" {'>' if check.failed else '≤'} {format_limit(check.limit)}"
    if report.method:
        text += f" ({report.method})"
    return _cell(check, text)


def _layer_cell(report: Report, verdict: Verdict) -> str:
    if not report.layers:
        return "—"
    largest = max(report.layers, key=lambda layer: math.inf if math.isnan(layer.sigma_upper) else layer.sigma_upper)
    check = verdict.check(CheckKind.MAX_LAYER_SIGMA)
    text = f"{format_number(largest.sigma_upper)} ({largest.name})"
    if check is not None and check.limit is not None:
        text = f"{format_number(largest.sigma_upper)} {'>' if check.failed else '≤'} {format_limit(check.limit)} " \
               f"({largest.name})"
    return _cell(check, text)


def _baseline_cell(verdict: Verdict) -> str:
    check = verdict.check(CheckKind.MAX_INCREASE)
    comparison = verdict.comparison
    if check is None or comparison is None:
        return "—"
    if comparison.growth is None:
        text = "unbounded" if comparison.after.upper_bound is None else "new bound"
    else:
        text = f"{'+' if comparison.growth > 0 else ''}{format_number(comparison.growth)}%"
        if check.limit is not None and check.outcome is not Outcome.SKIPPED:
            text += f" {'>' if check.failed else '≤'} {format_limit(check.limit)}%"
    if check.outcome is Outcome.SKIPPED:
        text += " (updated)"
    return _cell(check, text)


def _demote_headings(markdown: str) -> str:
    """The analyze markdown's ``###`` title becomes ``####`` inside a model's details."""
    return re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", markdown, flags=re.MULTILINE)


def render_check_markdown(run: CheckRun) -> str:
    """The verdict table, why each failing model failed, and each model's report in a ``<details>`` block."""
    completed = _completed(run)
    icon = "✅" if run.passed else "❌"
    lines = [f"## {icon} lipcheck check: {_verdict_word(run)}", ""]
    lines.append("| Model | Certified upper bound | Largest layer σ (certified) | vs. baseline | Result |")
    lines.append("|:---|---:|---:|---:|:---|")
    for model, report, verdict in completed:
        result = "✅ pass" if verdict.passed else "❌ **fail**"
        lines.append(f"| {_code(model.name)} | {_bound_cell(report, verdict)} | {_layer_cell(report, verdict)} | "
                     f"{_baseline_cell(verdict)} | {result} |")
    lines.append("")
    for model, _report, verdict in completed:
        failures = verdict.failures
        warnings = [c for c in verdict.checks if c.outcome is Outcome.SKIPPED and c.check is CheckKind.CERTIFIED]
        if not failures and not warnings:
            continue
        lines.append(f"**{_code(model.name)}{' failed' if failures else ''}**")
        lines.append("")
        for check in (*failures, *warnings):
            lines.append(f"- {check.check.value}: {_md(check.message)}")
            lines.extend(f"  - {_md(r.message)}" for r in check.reasons[:20] if r.message != check.message)
            if len(check.reasons) > 20:
                lines.append(f"  - … and {len(check.reasons) - 20} more")
        lines.append("")
    for model, report, _verdict in completed:
        lines.extend([f"<details><summary>{html_text(model.name)}: per-layer report</summary>", "",
                      _demote_headings(render_markdown(report)).rstrip("\n"), "", "</details>", ""])
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------- github


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF escaped (GitHub's ``escapeData``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: also ``:`` and ``,`` (GitHub's ``escapeProperty``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(kind: str, properties: dict[str, str], message_lines: list[str]) -> str:
    """One workflow command on one line: each message line and property escaped for display
    (:func:`~lipcheck.report.text.safe_text`: no ANSI sequence reaches the log), then for GitHub."""
    props = ",".join(f"{key}={escape_property(safe_text(value))}" for key, value in properties.items())
    message = "\n".join(safe_text(line) for line in message_lines)
    return f"::{kind} {props}::{escape_data(message)}"


def render_check_github(run: CheckRun) -> str:
    """GitHub Actions workflow commands: ``::error`` per failed check, ``::warning`` per allowed uncertified
    bound. A passing run prints nothing (the summary is on stderr)."""
    out = []
    for model, _report, verdict in _completed(run):
        for check in verdict.checks:
            if check.failed:
                kind = "error"
            elif check.outcome is Outcome.SKIPPED and check.check is CheckKind.CERTIFIED:
                kind = "warning"
            else:
                continue
            details = [r.message for r in check.reasons[:20] if r.message != check.message]
            message = [f"{model.name}: {check.message}", *(f"- {d}" for d in details)]
            title = f"lipcheck {check.check.value}" + (" failed" if kind == "error" else "")
            out.append(_command(kind, {"file": model.target.path, "title": title}, message))
    return "".join(line + "\n" for line in out)


# -------------------------------------------------------------------------------------------- junit

def _classname(name: str) -> str:
    """``models/a.onnx`` → ``lipcheck.models_a_onnx``: Jenkins splits class names at dots."""
    return "lipcheck." + re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _xml(text: str) -> str:
    """An attribute value or a line of text: XML 1.0 has no way to write most C0 characters, not even as
    character references, so they are escaped for display (:func:`~lipcheck.report.text.safe_text`);
    ElementTree escapes ``<``, ``&`` and quotes."""
    return safe_text(text)


def render_check_junit(run: CheckRun) -> str:
    """JUnit XML: ``<testsuites>`` → one ``<testsuite>`` per model → one ``<testcase>`` per check."""
    completed = _completed(run)
    cases = sum(len(v.checks) for _, _, v in completed)
    failures = sum(len(v.failures) for _, _, v in completed)
    skipped = sum(1 for _, _, v in completed for c in v.checks if c.outcome is Outcome.SKIPPED)
    total_time = sum(m.seconds for m, _, _ in completed)
    root = ET.Element("testsuites", {
        "name": "lipcheck", "tests": str(cases), "failures": str(failures), "errors": "0",
        "skipped": str(skipped), "time": _seconds(total_time),
    })
    for model, report, verdict in completed:
        suite = ET.SubElement(root, "testsuite", {
            "name": f"lipcheck: {_xml(model.name)}",
            "tests": str(len(verdict.checks)),
            "failures": str(len(verdict.failures)),
            "errors": "0",
            "skipped": str(sum(1 for c in verdict.checks if c.outcome is Outcome.SKIPPED)),
            "time": _seconds(model.seconds),
            "file": _xml(model.target.path),
        })
        properties = ET.SubElement(suite, "properties")
        for key, value in (
            ("model", report.model),
            ("upper_bound", format_number(report.upper_bound, none="unbounded")),
            ("upper_bound_method", report.method or "none"),
            ("estimate", format_number(report.estimate, none="unbounded")),
            ("lower_bound", format_number(report.lower_bound.value if report.lower_bound else None, none="none")),
            ("lipcheck_version", report.lipcheck_version),
        ):
            ET.SubElement(properties, "property", {"name": key, "value": _xml(value)})
        for i, check in enumerate(verdict.checks):
            case = ET.SubElement(suite, "testcase", {
                "classname": _classname(model.name),
                "name": check.check.value,
                "file": _xml(model.target.path),
                "time": _seconds(model.seconds if i == 0 else 0.0),  # the analysis is timed once per model
            })
            message = _xml(check.message)
            details = "\n".join([message, *(f"- {_xml(r.message)}" for r in check.reasons
                                            if r.message != check.message)])
            if check.failed:
                failure = ET.SubElement(case, "failure", {"message": message, "type": check.check.value})
                failure.text = details
            elif check.outcome is Outcome.SKIPPED:
                ET.SubElement(case, "skipped", {"message": message})
            ET.SubElement(case, "system-out").text = details
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------------ formats


class CheckFormat(str, Enum):
    """``lipcheck check --format``: each member builds its renderer."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"
    JUNIT = "junit"

    def renderer(self) -> CheckRenderer:
        return _RENDERERS[self]

    def render(self, run: CheckRun) -> str:
        return self.renderer()(run)


_RENDERERS: dict[CheckFormat, CheckRenderer] = {
    CheckFormat.TABLE: render_check_table,
    CheckFormat.JSON: render_check_json,
    CheckFormat.MARKDOWN: render_check_markdown,
    CheckFormat.GITHUB: render_check_github,
    CheckFormat.JUNIT: render_check_junit,
}
