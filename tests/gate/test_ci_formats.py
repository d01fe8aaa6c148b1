"""The check formats (table, json, markdown, github, junit), the diff formats and the stderr summary."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from lipcheck.gate.baseline import Snapshot, compare
from lipcheck.gate.decision import Thresholds, evaluate
from lipcheck.gate.run import AnalysisOptions, CheckRun, ModelCheck, Target
from lipcheck.report.ci_formats import (
    CheckFormat,
    escape_data,
    escape_property,
    render_check_github,
    render_check_json,
    render_check_junit,
    render_check_markdown,
    render_check_table,
    summary_lines,
)
from lipcheck.report.diff_formats import DiffFormat
from lipcheck.report.formats import render_table
from lipcheck.report.model import Report
from tests.gate.reports import layer, report

WORKFLOW_COMMAND = re.compile(r"^::(error|warning) file=[^,:]*,title=[^,:]*::\S.*$")


def _model(rep: Report, thresholds: Thresholds, name: str | None = None, baseline: Snapshot | None = None,
           seconds: float = 1.5) -> ModelCheck:
    target = Target(path=rep.model, name=name or rep.model, input_shape=None, thresholds=thresholds,
                    baseline=None, plot=None, analysis=AnalysisOptions())
    return ModelCheck(target, rep, evaluate(rep, thresholds, baseline), seconds)


def _run() -> CheckRun:
    """Three models: one passes, one fails on the bound and a layer, one is unbounded (and not allowed)."""
    ok = _model(report(2.5, model="models/ok.onnx"), Thresholds(max_lipschitz=10.0, max_layer_sigma=3.0))
    big = _model(report(20.42, [layer("conv, 1", 4.509), layer("fc:2", 2.0)], model="models/big.onnx"),
                 Thresholds(max_lipschitz=10.0, max_layer_sigma=3.0))
    attention = _model(report(None, model="models/attention.onnx"), Thresholds(max_lipschitz=10.0))
    return CheckRun((ok, big, attention))


def test_every_format_has_a_renderer() -> None:
    for member in CheckFormat:
        assert isinstance(member.render(_run()), str)
    comparison = compare(Snapshot.from_report(report(2.0)), Snapshot.from_report(report(2.5)))
    for diff_member in DiffFormat:
        assert isinstance(diff_member.render(comparison), str)


# -------------------------------------------------------------------------------------------- json


def test_json_of_one_model_is_the_analyze_schema_plus_the_gate() -> None:
    model = _run().models[1]
    data = json.loads(render_check_json(CheckRun((model,))))
    gate = data.pop("gate")
    assert data == json.loads(json.dumps(model.report.to_dict()))  # type: ignore[union-attr]
    assert gate["passed"] is False and gate["name"] == "models/big.onnx"
    assert gate["reasons"] == ["certified upper bound 20.42 > 10",
                               "1 layer has certified σ above 3: conv, 1 4.509"]
    assert [(c["check"], c["outcome"]) for c in gate["checks"]] == [
        ("certified", "passed"), ("max-lipschitz", "failed"), ("max-layer-sigma", "failed")]
    assert gate["checks"][2]["reasons"] == [
        {"message": "conv, 1 (Gemm): σ upper 4.509 > 3", "layer": "conv, 1", "value": 4.509, "limit": 3.0}]
    assert gate["baseline"] is None


def test_json_of_several_models_has_the_overall_gate() -> None:
    data = json.loads(render_check_json(_run()))
    assert data["gate"]["passed"] is False and data["gate"]["failed"] == 2 and data["gate"]["models"] == 3
    assert [m["model"] for m in data["models"]] == ["models/ok.onnx", "models/big.onnx", "models/attention.onnx"]
    assert data["models"][2]["upper_bound"] is None and data["models"][2]["gate"]["passed"] is False
    assert data["gate"]["reasons"][0] == "models/big.onnx: certified upper bound 20.42 > 10"


def test_json_carries_the_baseline_comparison() -> None:
    baseline = Snapshot.from_report(report(2.0, [layer("fc1", 1.0), layer("fc2", 2.0)]))
    model = _model(report(2.5), Thresholds(max_increase=10.0), baseline=baseline)
    gate = json.loads(render_check_json(CheckRun((model,))))["gate"]
    assert gate["baseline"]["growth_percent"] == 25.0
    assert gate["baseline"]["layers"][0] == {"name": "fc1", "op": "Gemm", "sigma_upper_before": 1.0,
                                             "sigma_upper_after": 1.25, "growth_percent": 25.0, "change": "grew"}


# ------------------------------------------------------------------------------------------- github


def test_escaping_follows_the_workflow_command_rules() -> None:
    assert escape_data("50% a\r\nb: c, d") == "50%25 a%0D%0Ab: c, d"
    assert escape_property("50% a\r\nb: c, d") == "50%25 a%0D%0Ab%3A c%2C d"


def test_github_annotations_one_per_failed_check() -> None:
    text = render_check_github(_run())
    lines = text.splitlines()
    assert all(WORKFLOW_COMMAND.match(line) for line in lines), text
    assert len(lines) == 3  # big: bound + layer; attention: certificate
    assert lines[0] == ("::error file=models/big.onnx,title=lipcheck max-lipschitz failed::"
                        "models/big.onnx: certified upper bound 20.42 > 10")
    assert lines[1].endswith("%0A- conv, 1 (Gemm): σ upper 4.509 > 3")  # details joined, one annotation
    assert lines[2].startswith("::error file=models/attention.onnx,title=lipcheck certified failed::")


def test_github_warns_for_an_allowed_uncertified_model_and_is_silent_on_success() -> None:
    allowed = _model(report(None), Thresholds(allow_uncertified=True))
    [line] = render_check_github(CheckRun((allowed,))).splitlines()
    assert line.startswith("::warning file=m.onnx,title=lipcheck certified::m.onnx: unbounded")
    assert render_check_github(CheckRun((_run().models[0],))) == ""


def test_github_escapes_properties_of_odd_paths() -> None:
    odd = _model(report(20.0, model="dir,1/a:b.onnx"), Thresholds(max_lipschitz=1.0))
    [line] = render_check_github(CheckRun((odd,))).splitlines()
    assert line.startswith("::error file=dir%2C1/a%3Ab.onnx,title=lipcheck max-lipschitz failed::dir,1/a:b.onnx:")


# -------------------------------------------------------------------------------------------- junit


def test_junit_one_testcase_per_model_and_check() -> None:
    root = ET.fromstring(render_check_junit(_run()))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("8", "3", "0", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["lipcheck: models/ok.onnx", "lipcheck: models/big.onnx",
                                               "lipcheck: models/attention.onnx"]
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {
        ("lipcheck.models_ok_onnx", "certified"), ("lipcheck.models_ok_onnx", "max-lipschitz"),
        ("lipcheck.models_ok_onnx", "max-layer-sigma"),
        ("lipcheck.models_big_onnx", "certified"), ("lipcheck.models_big_onnx", "max-lipschitz"),
        ("lipcheck.models_big_onnx", "max-layer-sigma"),
        ("lipcheck.models_attention_onnx", "certified"), ("lipcheck.models_attention_onnx", "max-lipschitz"),
    }
    failure = cases[("lipcheck.models_big_onnx", "max-layer-sigma")].find("failure")
    assert failure is not None and failure.get("type") == "max-layer-sigma"
    assert failure.get("message") == "1 layer has certified σ above 3: conv, 1 4.509"
    assert "- conv, 1 (Gemm): σ upper 4.509 > 3" in (failure.text or "")
    assert cases[("lipcheck.models_ok_onnx", "certified")].find("failure") is None
    assert cases[("lipcheck.models_attention_onnx", "max-lipschitz")].find("skipped") is not None
    assert cases[("lipcheck.models_ok_onnx", "certified")].get("time") == "1.500"
    props = {p.get("name"): p.get("value") for p in suites[1].iter("property")}
    assert props["upper_bound"] == "20.42" and props["model"] == "models/big.onnx"


# ----------------------------------------------------------------------------------- markdown, table


def test_markdown_verdict_table_reasons_and_details() -> None:
    text = render_check_markdown(_run())
    assert text.startswith("## ❌ lipcheck check: FAILED (2 of 3 models)\n")
    assert "| `models/ok.onnx` | 2.500 ≤ 10 | 2.000 ≤ 3 (fc2) | — | ✅ pass |" in text
    assert "| `models/big.onnx` | **20.42 > 10** ❌ | **4.509 > 3 (conv, 1)** ❌ | — | ❌ **fail** |" in text
    assert "- max-lipschitz: certified upper bound 20.42 > 10" in text
    assert text.count("<details>") == 3 and "#### lipcheck" in text


def test_table_holds_each_report_and_its_checks() -> None:
    run = _run()
    text = render_check_table(run)
    assert render_table(run.models[0].report).rstrip("\n") in text  # type: ignore[arg-type]
    assert "Gate: FAILED (models/big.onnx)" in text
    assert "  FAIL  max-lipschitz    certified upper bound 20.42 > 10" in text
    assert text.endswith("lipcheck check: FAILED (2 of 3 models)\n")


def test_summary_lines() -> None:
    lines = summary_lines(_run())
    assert lines[0] == "PASS models/ok.onnx: certified upper bound 2.500 ≤ 10; largest layer σ upper 2.000 (fc2) ≤ 3"
    assert lines[1] == "FAIL models/big.onnx"
    assert "  FAIL max-layer-sigma: 1 layer has certified σ above 3: conv, 1 4.509" in lines
    assert "       - conv, 1 (Gemm): σ upper 4.509 > 3" in lines
    assert lines[-1] == "lipcheck check: FAILED (2 of 3 models)"


@pytest.mark.parametrize("fmt", list(DiffFormat))
def test_diff_formats_show_every_layer(fmt: DiffFormat) -> None:
    before = Snapshot.from_report(report(2.0, [layer("fc1", 1.0), layer("gone", 2.0)]))
    comparison = compare(before, Snapshot.from_report(report(2.5, [layer("fc1", 1.25), layer("new", 3.0)])))
    text = fmt.render(comparison)
    if fmt is DiffFormat.JSON:
        data = json.loads(text)
        assert data["growth_percent"] == 25.0
        assert [layer["change"] for layer in data["layers"]] == ["grew", "added", "removed"]
    else:
        assert "+25.00%" in text and "only in B" in text and "only in A" in text
        assert "Certified upper bound: 2.000 → 2.500 (+25.00%)" in text
