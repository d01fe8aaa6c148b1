"""``lipcheck check`` / ``diff`` and analyze's thresholds, in process with a stand-in ``lipcheck.analyze``.

Real models in real subprocesses: test_cli_check_subprocess.py.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import EXIT_ERROR, EXIT_FAILED, EXIT_OK, app
from lipcheck.errors import LoadError
from lipcheck.report.formats import render_json, render_table
from lipcheck.report.model import Report
from tests.gate.reports import layer, report

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No LIPCHECK_* or GitHub variables from the machine running the tests; an empty project as cwd."""
    import os

    for name in list(os.environ):
        if name.startswith("LIPCHECK_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


class Fake:
    """Stands in for lipcheck.analyze: a report per model path (or an exception), and the calls it got."""

    def __init__(self, results: dict[str, Report | BaseException]) -> None:
        self.results = results
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, model: str, input_shape: Any = None, **options: Any) -> Report:
        self.calls.append((model, {"input_shape": input_shape, **options}))
        result = self.results[model]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Fake]:
    def install(**results: Report | BaseException) -> Fake:
        stand_in = Fake({name.replace("_", "."): value for name, value in results.items()})
        monkeypatch.setattr(lipcheck, "analyze", stand_in)
        return stand_in

    return install


def MLP(upper: float = 10.18, sigma: float = 2.31848) -> Report:  # noqa: N802 - reads like a model
    return report(upper, [layer("/1/Gemm", 2.093), layer("/3/Gemm", sigma), layer("/5/Gemm", 2.098)],
                  model="m.onnx", lower=None)


# ------------------------------------------------------------------------------------------ verdicts


def test_pass_exit_0_report_on_stdout_summary_on_stderr(fake: Callable[..., Fake]) -> None:
    analyze = fake(m_onnx=MLP())
    result = runner.invoke(app, ["check", "m.onnx", "--max-lipschitz", "20", "-f", "json"])
    assert result.exit_code == EXIT_OK, result.stderr
    data = json.loads(result.stdout)
    assert data["gate"]["passed"] is True and data["upper_bound"] == 10.18
    assert result.stderr.splitlines() == ["PASS m.onnx: certified upper bound 10.18 ≤ 20",
                                          "lipcheck check: passed (1 model)"]
    [(_, options)] = analyze.calls
    assert options["lower_bound"] is False  # check skips the lower bound unless asked
    assert options["exact_limit"] == 2_000_000 and options["power_iterations"] == 100


def test_fail_exit_1_and_exit_zero(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP())
    result = runner.invoke(app, ["check", "m.onnx", "--max-lipschitz", "10"])
    assert result.exit_code == EXIT_FAILED
    assert "  FAIL max-lipschitz: certified upper bound 10.18 > 10" in result.stderr.splitlines()
    assert result.stdout.endswith("lipcheck check: FAILED (1 of 1 model)\n")
    zero = runner.invoke(app, ["check", "m.onnx", "--max-lipschitz", "10", "--exit-zero"])
    assert zero.exit_code == EXIT_OK
    assert zero.stderr.splitlines()[-1] == "lipcheck check: FAILED (1 of 1 model) (exit code 0: --exit-zero)"


def test_the_printed_number_decides(fake: Callable[..., Fake]) -> None:
    """σ 2.31848 prints 2.318: a limit of 2.318 passes (what the table shows is what is compared)."""
    fake(m_onnx=MLP(sigma=2.31848))
    assert runner.invoke(app, ["check", "m.onnx", "--max-layer-sigma", "2.318"]).exit_code == EXIT_OK
    fake(m_onnx=MLP(sigma=2.31851))
    result = runner.invoke(app, ["check", "m.onnx", "--max-layer-sigma", "2.318", "-q"])
    assert result.exit_code == EXIT_FAILED and result.stderr == ""


def test_lower_bound_exact_and_analysis_flags_are_forwarded(fake: Callable[..., Fake]) -> None:
    analyze = fake(m_onnx=MLP())
    result = runner.invoke(app, ["check", "m.onnx", "--lower-bound", "--lower-bound-seconds", "1", "--no-exact",
                                 "--seed", "4", "--power-iterations", "7", "--tolerance", "0.01", "-s", "1,4",
                                 "--arch", "a.py:f", "--arch-kwargs", '{"w": 2}', "--key", "k", "--trust-pickle",
                                 "--force", "--method", "product", "--tight-work", "3"])
    assert result.exit_code == EXIT_OK, result.stderr
    [(model, options)] = analyze.calls
    assert model == "m.onnx" and options["progress"] is not None
    del options["progress"]
    assert options == {"input_shape": (1, 4), "power_iterations": 7, "tolerance": 0.01, "seed": 4, "exact_limit": 0,
                       "lower_bound": True, "lower_bound_seconds": 1.0, "trust_pickle": True, "arch": "a.py:f",
                       "arch_kwargs": {"w": 2}, "key": "k", "jobs": 1, "cache_dir": None, "force": True,
                       "method": "product", "tight_work": 3.0}


# ------------------------------------------------------------------------------- config and env vars


def _config(text: str) -> None:
    Path("pyproject.toml").write_text("[project]\nname = 'demo'\n\n" + text, encoding="utf-8")


def test_config_models_and_flags_override(fake: Callable[..., Fake]) -> None:
    _config("[tool.lipcheck]\nmax-lipschitz = 5\n[[tool.lipcheck.models]]\npath = 'm.onnx'\n"
            "[[tool.lipcheck.models]]\npath = 'n.onnx'\nmax-lipschitz = 50\ninput-shape = [1, 8]\n")
    analyze = fake(m_onnx=MLP(), n_onnx=MLP(upper=40.0))
    result = runner.invoke(app, ["check"])
    assert result.exit_code == EXIT_FAILED
    assert [m for m, _ in analyze.calls] == ["m.onnx", "n.onnx"] and analyze.calls[1][1]["input_shape"] == (1, 8)
    assert result.stderr.splitlines()[0] == "FAIL m.onnx"
    assert "PASS n.onnx: certified upper bound 40.00 ≤ 50" in result.stderr
    override = runner.invoke(app, ["check", "--max-lipschitz", "100"])
    assert override.exit_code == EXIT_OK, override.stderr
    assert override.stderr.splitlines()[-1] == "lipcheck check: passed (2 models)"


def test_environment_variables(fake: Callable[..., Fake], tmp_path: Path) -> None:
    fake(m_onnx=MLP())
    env = {"LIPCHECK_FORMAT": "junit", "LIPCHECK_MAX_LIPSCHITZ": "3", "LIPCHECK_EXIT_ZERO": "1",
           "LIPCHECK_OUTPUT": str(tmp_path / "junit.xml")}
    result = runner.invoke(app, ["check", "m.onnx"], env=env)
    assert result.exit_code == EXIT_OK and result.stdout == ""
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("failures") == "1"
    assert f"report (junit) written to {tmp_path / 'junit.xml'}" in result.stderr
    bad = runner.invoke(app, ["check", "m.onnx"], env={"LIPCHECK_FORMAT": "xml"})
    assert bad.exit_code == EXIT_ERROR and "LIPCHECK_FORMAT" in bad.stderr


def test_bad_config_exit_2_names_file_and_key_even_with_exit_zero(fake: Callable[..., Fake]) -> None:
    analyze = fake(m_onnx=MLP())
    _config("[[tool.lipcheck.models]]\npath = 'm.onnx'\nmax-lipschitz = 'ten'\n")
    result = runner.invoke(app, ["check", "--exit-zero", "-o", "out.json"])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr == ("error: pyproject.toml: tool.lipcheck.models[0].max-lipschitz: expected a number, "
                             "got a string ('ten')\n")
    assert analyze.calls == [] and not Path("out.json").exists()


def test_nothing_to_check_is_a_usage_error() -> None:
    result = runner.invoke(app, ["check"])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("error: nothing to check: give MODEL, or list the models")


# ---------------------------------------------------------------------------------- outputs, errors


def test_output_written_when_the_run_completes_even_if_the_gate_fails(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP())
    result = runner.invoke(app, ["check", "m.onnx", "--max-lipschitz", "1", "-f", "json", "-o", "r/out.json"])
    assert result.exit_code == EXIT_FAILED and result.stdout == ""
    assert json.loads(Path("r/out.json").read_text())["gate"]["passed"] is False


def test_output_not_written_when_a_model_cannot_be_read(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP(), bad_onnx=LoadError("bad.onnx: not an ONNX or PyTorch file"))
    Path("out.xml").write_text("stale")
    result = runner.invoke(app, ["check", "m.onnx", "bad.onnx", "-f", "junit", "-o", "out.xml", "--exit-zero"])
    assert result.exit_code == EXIT_ERROR
    assert result.stdout == "" and Path("out.xml").read_text() == "stale"
    assert result.stderr.splitlines()[-2:] == ["error: bad.onnx: not an ONNX or PyTorch file",
                                               "lipcheck check: could not run (1 of 2 models)"]


def test_github_format_appends_the_step_summary(fake: Callable[..., Fake], tmp_path: Path) -> None:
    fake(m_onnx=MLP())
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    result = runner.invoke(app, ["check", "m.onnx", "--max-lipschitz", "5", "-f", "github"],
                           env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == EXIT_FAILED
    assert result.stdout.startswith("::error file=m.onnx,title=lipcheck max-lipschitz failed::")
    text = summary.read_text()
    assert text.startswith("earlier step\n## ❌ lipcheck check: FAILED (1 of 1 model)")
    runner.invoke(app, ["check", "m.onnx", "-f", "github", "--no-step-summary"],
                  env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert summary.read_text() == text


def test_plot_without_matplotlib_fails_before_the_analysis(fake: Callable[..., Fake],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    analyze = fake(m_onnx=MLP())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["check", "m.onnx", "--plot", "p.png"])
    assert result.exit_code == EXIT_ERROR and analyze.calls == []
    assert result.stderr == "error: --plot needs matplotlib, which is not installed: pip install 'lipcheck[plot]'\n"


def test_plot_is_written(fake: Callable[..., Fake]) -> None:
    pytest.importorskip("matplotlib")
    fake(m_onnx=MLP())
    result = runner.invoke(app, ["check", "m.onnx", "--plot", "plots/m.png", "-q"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert Path("plots/m.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------- baselines


def test_update_then_gate_on_growth(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP(upper=10.0, sigma=2.0))
    written = runner.invoke(app, ["check", "m.onnx", "--baseline", "b/m.json", "--update-baseline"])
    assert written.exit_code == EXIT_OK, written.stderr
    assert "  baseline written: b/m.json" in written.stderr.splitlines()
    assert Path("b/m.json").read_text() == render_json(MLP(upper=10.0, sigma=2.0))
    fake(m_onnx=MLP(upper=10.4, sigma=2.2))
    grown = runner.invoke(app, ["check", "m.onnx", "--baseline", "b/m.json", "--max-increase", "3"])
    assert grown.exit_code == EXIT_FAILED
    lines = grown.stderr.splitlines()
    assert ("  FAIL max-increase: certified upper bound 10.00 → 10.40 (+4.000%) > max-increase 3%; 1 layer grew "
            "(most: /3/Gemm +10.00%)") in lines
    assert "       - /3/Gemm (Gemm): σ upper 2.000 → 2.200 (+10.00%)" in lines
    within = runner.invoke(app, ["check", "m.onnx"], env={"LIPCHECK_BASELINE": "b/m.json",
                                                         "LIPCHECK_MAX_INCREASE": "5"})
    assert within.exit_code == EXIT_OK, within.stderr


def test_baseline_usage_errors(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP())
    missing = runner.invoke(app, ["check", "m.onnx", "--baseline", "none.json"])
    assert missing.exit_code == EXIT_ERROR
    assert missing.stderr == "error: baseline none.json not found (write it with --update-baseline)\n"
    no_file = runner.invoke(app, ["check", "m.onnx", "--update-baseline"])
    assert no_file.exit_code == EXIT_ERROR and "--update-baseline: no baseline file for m.onnx" in no_file.stderr
    no_base = runner.invoke(app, ["check", "m.onnx", "--max-increase", "2"])
    assert no_base.exit_code == EXIT_ERROR and "--max-increase needs a baseline" in no_base.stderr


# --------------------------------------------------------------------------------- analyze's gate


def test_analyze_with_thresholds_gates_and_keeps_its_output(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=MLP())
    result = runner.invoke(app, ["analyze", "m.onnx", "--max-lipschitz", "10", "--max-layer-sigma", "3"])
    assert result.exit_code == EXIT_FAILED
    assert result.stdout == render_table(MLP())
    assert result.stderr.splitlines()[0] == "FAIL m.onnx"
    assert result.stderr.splitlines()[-1] == "lipcheck analyze: FAILED (1 of 1 model)"
    zero = runner.invoke(app, ["analyze", "m.onnx", "--max-lipschitz", "10", "--exit-zero"])
    assert zero.exit_code == EXIT_OK
    passed = runner.invoke(app, ["analyze", "m.onnx", "--max-lipschitz", "20", "-f", "json"])
    assert passed.exit_code == EXIT_OK and json.loads(passed.stdout) == json.loads(render_json(MLP()))


def test_analyze_unbounded_fails_only_when_gating(fake: Callable[..., Fake]) -> None:
    fake(m_onnx=report(None))
    assert runner.invoke(app, ["analyze", "m.onnx"]).exit_code == EXIT_OK
    gated = runner.invoke(app, ["analyze", "m.onnx", "--max-lipschitz", "10"])
    assert gated.exit_code == EXIT_FAILED and "FAIL certified: unbounded" in gated.stderr
    allowed = runner.invoke(app, ["analyze", "m.onnx", "--max-lipschitz", "10", "--allow-uncertified"])
    assert allowed.exit_code == EXIT_OK


# ---------------------------------------------------------------------------------------------- diff


def test_diff_of_two_reports(fake: Callable[..., Fake]) -> None:
    analyze = fake()
    Path("a.json").write_text(render_json(MLP(upper=10.0, sigma=2.0)))
    Path("b.json").write_text(render_json(MLP(upper=11.0, sigma=2.5)))
    result = runner.invoke(app, ["diff", "a.json", "b.json"])
    assert result.exit_code == EXIT_OK and analyze.calls == []
    assert "│ /3/Gemm │ Gemm │       2.000 │       2.500 │ +25.00% │" in result.stdout
    assert "Certified upper bound: 10.00 → 11.00 (+10.00%)" in result.stdout
    gated = runner.invoke(app, ["diff", "a.json", "b.json", "--max-increase", "5", "-f", "json"])
    assert gated.exit_code == EXIT_FAILED and json.loads(gated.stdout)["growth_percent"] == 10.0
    assert gated.stderr.startswith("FAIL max-increase: certified upper bound 10.00 → 11.00 (+10.00%) > ")


def test_diff_of_a_report_and_a_model(fake: Callable[..., Fake]) -> None:
    analyze = fake(m_onnx=MLP(upper=9.0))
    Path("a.json").write_text(render_json(MLP(upper=10.0)))
    result = runner.invoke(app, ["diff", "a.json", "m.onnx", "--max-increase", "0", "-f", "markdown", "--no-exact"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert analyze.calls[0][1]["lower_bound"] is False and analyze.calls[0][1]["exact_limit"] == 0
    assert "- Certified upper bound: 10.00 → 9.000 (-10.00%)" in result.stdout
    missing = runner.invoke(app, ["diff", "nope.json", "m.onnx"])
    assert missing.exit_code == EXIT_ERROR and missing.stderr == "error: report nope.json not found\n"


# ------------------------------------------------------------------------------------------- imports

_IMPORTS = """
import json, sys
from lipcheck.cli.app import main
sys.argv = ["lipcheck", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx", "onnxruntime", "scipy", "numpy",
                                                          "matplotlib"})
sys.stderr.write("\\nHEAVY " + json.dumps(heavy) + "\\n")
"""


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["diff", "--help"], ["analyze", "--help"],
                                  ["check", "--format", "xml"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _IMPORTS, json.dumps(args)], capture_output=True, text=True,
                          timeout=120)
    assert json.loads(proc.stderr.rsplit("HEAVY ", 1)[1]) == [], proc.stderr
