"""``--jobs`` and ``--cache`` on ``analyze`` and ``check`` (flags, LIPCHECK_* variables, configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipcheck.cli.app import EXIT_ERROR, EXIT_OK, app
from tests.helpers import untimed

ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "sample_models" / "cnn_bn.onnx")
runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LIPCHECK_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("command", ["analyze", "check"])
@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_jobs_is_one_line_exit_2(command: str, value: str) -> None:
    result = runner.invoke(app, [command, MODEL, "--jobs", value, "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr).startswith(f"error: --jobs '{value}'") and result.stdout == ""


@pytest.mark.parametrize("command", ["analyze", "check"])
def test_a_cache_path_that_is_a_file_is_one_line_exit_2(command: str, tmp_path: Path) -> None:
    (tmp_path / "c").write_text("x")
    result = runner.invoke(app, [command, MODEL, "--cache", "c", "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr) == "error: --cache c is not a folder"


def test_analyze_with_cache_and_jobs(tmp_path: Path) -> None:
    args = ["analyze", MODEL, "--no-lower-bound", "--no-progress", "-f", "json", "--cache", "c/d"]
    first = runner.invoke(app, [*args, "--jobs", "2"])
    assert first.exit_code == EXIT_OK, first.stderr
    assert (tmp_path / "c" / "d").is_dir()
    second = runner.invoke(app, args, env={"LIPCHECK_JOBS": "1"})
    assert second.exit_code == EXIT_OK, second.stderr
    a, b = untimed(json.loads(first.stdout)), untimed(json.loads(second.stdout))
    note_a, note_b = (next(n for n in r["notes"] if n.startswith("layer cache")) for r in (a, b))
    a["notes"].remove(note_a)
    b["notes"].remove(note_b)
    assert " stored" in note_a and "0 of" in note_a
    assert note_b.startswith("layer cache c/d: ") and "read from the cache" in note_b and " stored" not in note_b
    assert a == b


def test_cache_from_the_environment(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", MODEL, "--no-lower-bound", "--no-progress", "-f", "json"],
                           env={"LIPCHECK_CACHE": str(tmp_path / "env-cache")})
    assert result.exit_code == EXIT_OK, result.stderr
    assert list((tmp_path / "env-cache").rglob("*.json"))


def test_check_takes_jobs_and_cache_from_flags_and_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.lipcheck]\nmax-lipschitz = 1e9\njobs = "auto"\ncache = "ci-cache"\nmodels = ["{MODEL}"]\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["check", "--no-progress", "-f", "json", "-q"])
    assert result.exit_code == EXIT_OK, result.stderr
    assert list((tmp_path / "ci-cache").rglob("*.json"))
    flagged = runner.invoke(app, ["check", "--no-progress", "-f", "json", "-q", "--jobs", "1", "--cache", "other"])
    assert flagged.exit_code == EXIT_OK, flagged.stderr
    assert list((tmp_path / "other").rglob("*.json"))
    same = untimed(json.loads(flagged.stdout.replace("other", "ci-cache")))
    assert same == untimed(json.loads(result.stdout))  # same report, other cache folder


def test_config_jobs_must_be_a_count(tmp_path: Path) -> None:
    (tmp_path / "lipcheck.toml").write_text(f'jobs = -2\nmodels = ["{MODEL}"]\n', encoding="utf-8")
    result = runner.invoke(app, ["check", "--no-progress"])
    assert result.exit_code == EXIT_ERROR
    assert _one_line(result.stderr).startswith("error: lipcheck.toml: jobs: expected a number of processes")
