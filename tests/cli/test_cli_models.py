"""Golden tests of the real CLI output (table format, --no-lower-bound) on the sample models.

Regenerate after an intended change with ``pytest tests/cli/test_cli_models.py --update-golden``. A model
without a golden file is skipped (the update writes one only when the CLI succeeds on it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipcheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
MODELS = ROOT / "sample_models"
EXTRA_ARGS = {"dynamic_batch": ["--input-shape", "1,1,8,8"]}
SAMPLE_MODELS = sorted(path.stem for path in MODELS.glob("*.onnx"))

runner = CliRunner()


def _run(name: str, *args: str) -> tuple[int, str, str]:
    argv = ["analyze", f"sample_models/{name}.onnx", "--no-lower-bound", "--no-progress",
            *EXTRA_ARGS.get(name, []), *args]
    result = runner.invoke(app, argv)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_model_table_golden(name: str, update_golden: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the report prints the model path as given: keep it relative
    path = GOLDEN / f"cli_{name}.txt"
    if not update_golden and not path.exists():
        pytest.skip(f"no golden output for {name} yet (run with --update-golden once it is supported)")
    code, stdout, stderr = _run(name)
    assert code == 0, stderr
    assert stderr == ""
    if update_golden:
        path.write_text(stdout, encoding="utf-8")
    assert stdout == path.read_text(encoding="utf-8"), f"{path.name} differs: --update-golden if intended"
