"""``--method auto|product|lipsdp`` on analyze, check (flag and config key) and normalize, on the sample models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
MLP_PRODUCT = 10.178116704281  # the sample MLP's product bound

runner = CliRunner()


def _analyze(model: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analyze", f"sample_models/{model}.onnx", "--no-lower-bound", "--no-progress", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_product_gives_the_product_bound_only() -> None:
    code, stdout, stderr = _analyze("mlp", "--method", "product", "--format", "json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert [b["method"] for b in data["bounds"]] == ["product"] and data["method"] == "product"
    assert data["upper_bound"] == pytest.approx(MLP_PRODUCT, rel=1e-9) == data["bounds"][0]["value"]
    assert data["settings"]["method"] == "product"


def test_auto_table_has_a_line_per_method_and_names_the_tightest() -> None:
    code, stdout, stderr = _analyze("mlp")
    assert code == 0, stderr
    lines = stdout.splitlines()
    headline = next(line for line in lines if line.startswith("Certified upper bound"))
    assert headline.endswith("(lipsdp)")
    at = lines.index(headline)
    assert lines[at + 1].split()[:3] == ["product", "(AutoLip)", "10.18"]
    assert lines[at + 2].startswith("  lipsdp (LipSDP-Neuron, verified)")
    assert float(headline.split()[3]) == float(lines[at + 2].split()[3]) < 10.18
    assert lines[at + 3].startswith("Estimate (power iteration, NOT a certificate)  10.18")  # the product's estimate


def test_lipsdp_on_a_model_that_is_not_a_chain() -> None:
    code, stdout, stderr = _analyze("resnet_block", "--method", "lipsdp")
    assert code == 0, stderr
    assert "Certified upper bound                          12.44 (product)" in stdout
    assert "  lipsdp (LipSDP-Neuron, verified)             none (not an MLP chain: /b1_conv1/Conv (Conv)" in stdout
    assert "lipsdp does not apply (not an MLP chain: /b1_conv1/Conv (Conv)" in stdout  # the note


def test_check_gates_on_the_tighter_bound_and_reads_the_method_from_the_config(tmp_path: Path) -> None:
    model = str(ROOT / "sample_models" / "mlp.onnx")
    passed = runner.invoke(app, ["check", model, "--max-lipschitz", "6", "--no-progress"])
    assert passed.exit_code == 0, passed.stderr
    assert "certified upper bound 5.3" in passed.stderr and "(lipsdp) ≤ 6" in passed.stderr
    failed = runner.invoke(app, ["check", model, "--max-lipschitz", "6", "--method", "product", "--no-progress"])
    assert failed.exit_code == 1
    assert "  FAIL max-lipschitz: certified upper bound 10.18 (product) > 6" in failed.stderr.splitlines()
    config = tmp_path / "lipcheck.toml"
    config.write_text(f'method = "product"\nmax-lipschitz = 6\n[[models]]\npath = "{model}"\n', encoding="utf-8")
    configured = runner.invoke(app, ["check", "--config", str(config), "--no-progress", "--format", "markdown"])
    assert configured.exit_code == 1 and "10.18 > 6 (product)" in configured.stdout
    flag_wins = runner.invoke(app, ["check", "--config", str(config), "--no-progress", "--method", "auto"])
    assert flag_wins.exit_code == 0, flag_wins.stderr


def test_normalize_global_target_with_lipsdp_meets_it_when_re_analysed(tmp_path: Path) -> None:
    out = tmp_path / "mlp_2.onnx"
    result = runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--global-target", "2", "--method", "lipsdp",
                                 "--out", str(out), "--format", "json", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["method"] == "lipsdp" and data["verified"]
    assert data["bound_before"] < 5.4 and data["bound_after"] <= 2.0
    # one common factor, far milder than the product's (2 / 10.18)^(1/3) = 0.58
    factors = {layer["factor"] for layer in data["layers"]}
    assert len(factors) == 1 and 0.70 < factors.pop() < 0.73
    again = lipcheck.analyze(out, lower_bound=True, lower_bound_seconds=1.0, method="lipsdp")
    assert again.method == "lipsdp" and again.upper_bound is not None and again.upper_bound <= 2.0
    assert again.lower_bound is not None and (again.lower_bound.value or 0.0) <= again.upper_bound
    product = lipcheck.analyze(out, lower_bound=False, method="product")
    assert product.upper_bound is not None and product.upper_bound > 2.0  # only lipsdp certifies the target


@pytest.mark.parametrize("method, expected", [("product", "10.18 → 10.18"), ("lipsdp", "5.30")])
def test_diff_composes_both_sides_with_the_method(method: str, expected: str) -> None:
    result = runner.invoke(app, ["diff", "sample_models/mlp.onnx", "sample_models/mlp.onnx", "--method", method,
                                 "--no-progress"])
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("Certified upper bound"))
    assert expected in line
