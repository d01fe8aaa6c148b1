"""Golden tests of the real CLI output (table, JSON and markdown, --no-lower-bound) on the sample models.

Regenerate after an intended change with ``pytest tests/cli/test_cli_models.py --update-golden``. Table and
markdown are compared as text (they print 4 significant digits); JSON is compared structurally with floats
to 1e-9 relative, so that the last bits of a BLAS reduction on another machine do not fail the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lipcheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
MODELS = ROOT / "sample_models"
EXTRA_ARGS = {"dynamic_batch": ["--input-shape", "1,1,8,8"]}
SAMPLE_MODELS = sorted(path.stem for path in MODELS.glob("*.onnx"))
SUFFIX = {"table": "txt", "json": "json", "markdown": "md"}

runner = CliRunner()


def _run(name: str, *args: str) -> tuple[int, str, str]:
    argv = ["analyze", f"sample_models/{name}.onnx", "--no-lower-bound", "--no-progress",
            *EXTRA_ARGS.get(name, []), *args]
    result = runner.invoke(app, argv)
    return result.exit_code, result.stdout, result.stderr


def _close(a: Any, b: Any, where: str = "$") -> None:
    """Structural equality with floats to 1e-9 relative; the assertion names the first differing key."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_model_golden(name: str, fmt: str, update_golden: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the report prints the model path as given: keep it relative
    path = GOLDEN / f"cli_{name}.{SUFFIX[fmt]}"
    if not update_golden and not path.exists():
        pytest.fail(f"no golden output {path.name}: run pytest {__file__} --update-golden")
    code, stdout, stderr = _run(name, "--format", fmt)
    assert code == 0, stderr
    assert stderr == ""
    if update_golden:
        path.write_text(stdout, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    if fmt == "json":
        _close(json.loads(stdout), json.loads(expected))
    else:
        assert stdout == expected, f"{path.name} differs: --update-golden if intended"


def test_table_rows_reproduce_the_printed_cumulative_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a chain (the MLP), the product of the printed per-layer σ upper and the activations' constants
    (all 1 for ReLU) is the printed certified bound, to the 4 printed digits."""
    monkeypatch.chdir(ROOT)
    code, stdout, _ = _run("mlp", "--format", "json")
    report = json.loads(stdout)
    product = math.prod(layer["sigma_upper"] for layer in report["layers"])
    product *= math.prod(op["constant"] for op in report["ops"] if op["constant"] is not None)
    assert product == pytest.approx(report["upper_bound"], rel=1e-12)
    assert report["layers"][-1]["cumulative_upper"] == pytest.approx(report["upper_bound"], rel=1e-12)
