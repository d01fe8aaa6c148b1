"""``lipcheck check`` as CI runs it: real subprocesses (``python -m lipcheck``) in a temporary project with a
``[tool.lipcheck]`` config and copies of the sample models. Also: the README's ``--help`` block is the real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_COMMAND = re.compile(r"^::(error|warning) file=[^,:]*,title=[^,:]*::\S.*$")

PYPROJECT = """\
[project]
name = "demo"

[tool.lipcheck]
max-layer-sigma = 3.0

[[tool.lipcheck.models]]
path = "models/mlp.onnx"                # bound 10.18, layers up to 2.318: passes
max-lipschitz = 20
method = "product"                      # the product's bound is reproducible to the last digit (lipsdp's 5.309 not)

[[tool.lipcheck.models]]
path = "models/constant_weights.onnx"   # layer matmul2 has σ 2.197: fails on the layer
max-layer-sigma = 2.15

[[tool.lipcheck.models]]
path = "models/attention.onnx"          # Q·Kᵀ of two inputs: unbounded, fails (not allowed)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPCHECK_") and k != "GITHUB_STEP_SUMMARY"}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="100", NO_COLOR="1", TERM="dumb")
    env.pop("FORCE_COLOR", None)
    return env


def lipcheck(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lipcheck", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    (folder / "models").mkdir()
    for name in ("mlp", "constant_weights", "attention"):
        shutil.copy(ROOT / "sample_models" / f"{name}.onnx", folder / "models")
    (folder / "models" / "garbage.onnx").write_bytes(b"\x00\x01 this is not a model \xff" * 10)
    (folder / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    return folder


@pytest.mark.slow  # a subprocess over three configured models
def test_configured_models_one_verdict_as_junit(project: Path) -> None:
    proc = lipcheck(project, "check", "--format", "junit", "--output", "reports/junit.xml")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    root = ET.parse(project / "reports" / "junit.xml").getroot()
    failures = {(case.get("classname"), case.get("name")) for case in root.iter("testcase")
                if case.find("failure") is not None}
    assert failures == {("lipcheck.models_constant_weights_onnx", "max-layer-sigma"),
                        ("lipcheck.models_attention_onnx", "certified")}
    assert root.get("tests") == "7" and root.get("failures") == "2"  # 3 + 2 + 2 checks
    [layer_failure] = [c.find("failure") for c in root.iter("testcase")
                       if c.get("name") == "max-layer-sigma" and c.find("failure") is not None]
    assert layer_failure is not None
    assert layer_failure.get("message") == "1 layer has certified σ above 2.15: matmul2 2.197"
    lines = proc.stderr.splitlines()
    assert lines[0] == ("PASS models/mlp.onnx: certified upper bound 10.18 (product) ≤ 20; "
                        "largest layer σ upper 2.318 (/3/Gemm) ≤ 3")
    assert "FAIL models/constant_weights.onnx" in lines and "FAIL models/attention.onnx" in lines
    assert lines[-2:] == ["report (junit) written to reports/junit.xml", "lipcheck check: FAILED (2 of 3 models)"]


def test_github_annotations_are_workflow_commands(project: Path) -> None:
    proc = lipcheck(project, "check", "--format", "github", "--quiet")
    assert proc.returncode == 1 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(WORKFLOW_COMMAND.match(line) for line in lines), proc.stdout
    assert lines[0].startswith("::error file=models/constant_weights.onnx,title=lipcheck max-layer-sigma failed::")
    assert lines[1].startswith("::error file=models/attention.onnx,title=lipcheck certified failed::"
                               "models/attention.onnx: unbounded: no global Lipschitz constant for /MatMul (MatMul)")


def test_pass_and_fail_on_the_bound_with_clean_json(project: Path) -> None:
    passed = lipcheck(project, "check", "models/mlp.onnx", "--format", "json")
    assert passed.returncode == 0, passed.stderr
    data = json.loads(passed.stdout)  # stdout is exactly the report
    assert data["model"] == "models/mlp.onnx" and data["gate"]["passed"] is True
    assert [c["check"] for c in data["gate"]["checks"]] == ["certified", "max-lipschitz", "max-layer-sigma"]
    failed = lipcheck(project, "check", "models/mlp.onnx", "--max-lipschitz", "10", "--format", "json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["gate"]["reasons"] == ["certified upper bound 10.18 (product) > 10"]
    assert "  FAIL max-lipschitz: certified upper bound 10.18 (product) > 10" in failed.stderr.splitlines()
    zero = lipcheck(project, "check", "models/mlp.onnx", "--max-lipschitz", "10", "--exit-zero", "-q")
    assert zero.returncode == 0 and zero.stderr == ""


@pytest.mark.slow
def test_uncertified_model_allowed(project: Path) -> None:
    proc = lipcheck(project, "check", "models/attention.onnx", "--allow-uncertified")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:2] == [
        "PASS models/attention.onnx: largest layer σ upper 2.584 (/k/MatMul) ≤ 3",
        "  SKIP certified: unbounded: no global Lipschitz constant for /MatMul (MatMul), /MatMul_1 (MatMul) "
        "(allowed by allow-uncertified)",
    ]


def test_fail_on_growth_against_a_baseline(project: Path) -> None:
    baseline = project / "baselines" / "mlp.json"
    written = lipcheck(project, "check", "models/mlp.onnx", "--baseline", "baselines/mlp.json", "--update-baseline")
    assert written.returncode == 0, written.stderr
    data = json.loads(baseline.read_text())
    assert data["schema_version"] == 2 and "gate" not in data  # a plain analyze report
    data["upper_bound"] /= 1.1  # as if the model had been 10% less sensitive when the baseline was saved
    data["layers"][1]["sigma_upper"] /= 1.1
    baseline.write_text(json.dumps(data))
    grown = lipcheck(project, "check", "models/mlp.onnx", "--baseline", "baselines/mlp.json", "--max-increase", "5")
    assert grown.returncode == 1
    lines = grown.stderr.splitlines()
    # growth from the printed values: (10.18 - 9.253) / 9.253 and (2.318 - 2.108) / 2.108
    assert ("  FAIL max-increase: certified upper bound 9.253 → 10.18 (+10.02%) > max-increase 5%; 1 layer grew "
            "(most: /3/Gemm +9.962%)") in lines
    assert "       - /3/Gemm (Gemm): σ upper 2.108 → 2.318 (+9.962%)" in lines


def test_bad_config_exit_2_even_with_exit_zero(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.lipcheck]\nmax-lipschitz = 'ten'\nmodels = ['m.onnx']\n")
    proc = lipcheck(tmp_path, "check", "--exit-zero", "--output", "out.json")
    assert proc.returncode == 2
    assert proc.stderr == ("error: pyproject.toml: tool.lipcheck.max-lipschitz: expected a number, got a string "
                           "('ten')\n")
    assert proc.stdout == "" and not (tmp_path / "out.json").exists()


def test_unreadable_model_exit_2_and_no_output(project: Path) -> None:
    proc = lipcheck(project, "check", "models/garbage.onnx", "--format", "json", "--output", "garbage.json",
                    "--exit-zero")
    assert proc.returncode == 2
    assert proc.stdout == "" and not (project / "garbage.json").exists()
    (error,) = proc.stderr.splitlines()  # one line: the error says it all for a single model
    assert error.startswith("error: ") and "models/garbage.onnx" in error and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------- README

README_MARKER = "<!-- lipcheck check --help, COLUMNS=100 (tests/cli/test_cli_check_subprocess.py) -->"


def _readme_help_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert README_MARKER in text, "the README has lost its `lipcheck check --help` block"
    block = text.split(README_MARKER, 1)[1]
    match = re.match(r"\s*```text\n(.*?)\n```", block, flags=re.DOTALL)
    assert match, "the marker must be followed by a ```text block"
    return match.group(1)


def _normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def test_readme_help_block_matches_the_real_help(tmp_path: Path) -> None:
    proc = lipcheck(tmp_path, "check", "--help")
    assert proc.returncode == 0, proc.stderr
    assert _normalized(_readme_help_block()) == _normalized(proc.stdout), (
        "README.md's `lipcheck check --help` block is stale; regenerate it with\n"
        "COLUMNS=100 NO_COLOR=1 TERM=dumb lipcheck check --help | sed 's/[[:space:]]*$//'"
    )
