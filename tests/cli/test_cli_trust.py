"""``--trust-pickle`` and ``LIPCHECK_TRUST_PICKLE`` reach the analysis; ``trust-pickle = true`` in the checked
repository's configuration stops ``lipcheck check`` (exit 2, one line) before any model is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import EXIT_ERROR, EXIT_OK, app
from tests.gate.reports import report

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("LIPCHECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake(model: str, input_shape: Any = None, **options: Any) -> Any:
        seen.append(options)
        return report(model=model)

    monkeypatch.setattr(lipcheck, "analyze", fake)
    return seen


def test_config_trust_stops_check_before_loading(calls: list[dict[str, Any]]) -> None:
    Path("pyproject.toml").write_text('[tool.lipcheck]\ntrust-pickle = true\nmodels = ["evil.pt"]\n',
                                      encoding="utf-8")
    result = runner.invoke(app, ["check"])
    assert result.exit_code == EXIT_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tool.lipcheck.trust-pickle" in lines[0] and "LIPCHECK_TRUST_PICKLE=1" in lines[0]
    assert calls == []
    # the flag does not make the key acceptable: the key has to go
    assert runner.invoke(app, ["check", "--trust-pickle"]).exit_code == EXIT_ERROR
    assert calls == []


@pytest.mark.parametrize("how", ["flag", "env", "none", "env-off"])
def test_trust_from_flag_or_environment(calls: list[dict[str, Any]], how: str) -> None:
    Path("lipcheck.toml").write_text('models = ["m.pt"]\n', encoding="utf-8")
    args = ["check", "--trust-pickle"] if how == "flag" else ["check"]
    env = {"LIPCHECK_TRUST_PICKLE": "1"} if how == "env" else {"LIPCHECK_TRUST_PICKLE": "0"} if how == "env-off" else {}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == EXIT_OK, result.stderr
    assert [c["trust_pickle"] for c in calls] == [how in ("flag", "env")]
    calls.clear()
    result = runner.invoke(app, ["analyze", "m.pt", "--no-progress"] + (["--trust-pickle"] if how == "flag" else []),
                           env=env)
    assert result.exit_code == EXIT_OK, result.stderr
    assert [c["trust_pickle"] for c in calls] == [how in ("flag", "env")]
