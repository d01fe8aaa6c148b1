"""Golden tests of the real CLI output (table, JSON and markdown, --no-lower-bound) on the sample models.

Regenerate after an intended change with ``pytest tests/cli/test_cli_models.py --update-golden``. Layout and
words are compared exactly; every number at the precision its method guarantees across CPUs and BLAS builds
(:mod:`tests.golden_compare`), so the goldens pass on Intel and AMD machines alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lipcheck.cli.app import app
from tests.golden_compare import compare_json, compare_text

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
        compare_json(json.loads(stdout), json.loads(expected))
    else:
        compare_text(stdout, expected, path.name)


def test_table_rows_reproduce_the_printed_cumulative_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a chain (the MLP), the product of the printed per-layer σ upper and the activations' constants
    (all 1 for ReLU) is the product method's certified bound (the last cumulative bound); the report's bound is the
    least certified method's, here lipsdp's, below it."""
    monkeypatch.chdir(ROOT)
    code, stdout, _ = _run("mlp", "--format", "json")
    report = json.loads(stdout)
    product = math.prod(layer["sigma_upper"] for layer in report["layers"])
    product *= math.prod(op["constant"] for op in report["ops"] if op["constant"] is not None)
    by_method = {b["method"]: b["value"] for b in report["bounds"]}
    assert product == pytest.approx(by_method["product"], rel=1e-12)
    assert report["layers"][-1]["cumulative_upper"] == pytest.approx(by_method["product"], rel=1e-12)
    assert report["method"] == "lipsdp" and report["upper_bound"] == min(by_method.values()) < product


def test_goldens_accept_another_cpus_last_digits_and_refuse_real_changes() -> None:
    """The AMD EPYC run's differences pass (power gap 0.001823 % vs 0.001922 %, the composed bound
    7.636641531776228 vs 7.636642070569921); a changed certified value, a certified value below exact, a changed
    word or shape do not."""
    text = (GOLDEN / "cli_sn_discriminator.txt").read_text(encoding="utf-8")
    compare_text(text.replace("0.001823%", "0.001922%"), text)
    # a model whose bound is the product's (a searched method's value, lipsdp or blocks, is compared at 1e-3)
    data = json.loads((GOLDEN / "cli_sn_discriminator.json").read_text(encoding="utf-8"))
    assert data["method"] == "product"
    other = json.loads(json.dumps(data))
    other["upper_bound"] = data["upper_bound"] * (7.636641531776228 / 7.636642070569921)  # the AMD difference
    compare_json(other, data)
    for mutate in (
        lambda d: d.__setitem__("upper_bound", d["upper_bound"] * 1.001),
        lambda d: d["layers"][0].__setitem__("sigma_upper", d["layers"][0]["sigma_exact"] * (1 - 1e-6)),
        lambda d: d["layers"][0].__setitem__("sigma_power", d["layers"][0]["sigma_exact"] * 1.01),
        lambda d: d["layers"][0].__setitem__("name", "renamed"),
    ):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        with pytest.raises(AssertionError):
            compare_json(bad, data)
    for old, new in (("2.964", "2.970"), ("1×3×32×32", "1×3×32×31"), ("Certified", "Certifed")):
        with pytest.raises(AssertionError):
            compare_text(text.replace(old, new, 1), text)
