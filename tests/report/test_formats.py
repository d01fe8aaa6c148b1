"""Output formats on hand-built reports (no analysis needed), with golden files in tests/golden/.

Regenerate the golden files after an intended change with ``pytest tests/report --update-golden``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lipcheck.report.columns import Column, format_number, format_percent, format_shape
from lipcheck.report.formats import (
    OutputFormat,
    render_json,
    render_markdown,
    render_table,
    summarize,
)
from lipcheck.report.model import (
    BoundResult,
    InputInfo,
    LayerResult,
    LowerBound,
    OpResult,
    Report,
    Settings,
    Unbounded,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _layer(
    name: str,
    op: str,
    shape: tuple[int, ...],
    *,
    power: float,
    exact: float | None,
    upper: float,
    cumulative: float | None,
    fused: tuple[str, ...] = (),
    reshaped: float | None = None,
    skipped: str | None = None,
    out_shape: tuple[int, ...] | None = None,
) -> LayerResult:
    return LayerResult(
        name=name,
        op=op,
        param=f"{name}.weight",
        fused_with=fused,
        input_shape=shape,
        output_shape=out_shape or shape,
        sigma_power=power,
        power_iterations=100,
        sigma_exact=exact,
        exact_method="svd" if exact is not None else "skipped",
        exact_skipped=skipped,
        sigma_upper=upper,
        upper_method="svd+margin",
        sigma_reshaped=reshaped,
        lipschitz=upper,
        cumulative_upper=cumulative,
        cumulative_estimate=cumulative,
    )


def cnn_report() -> Report:
    """A certified CNN: fused BN, a skipped exact norm, reshaped norms, a MaxPool constant."""
    return Report(
        model="sample_models/cnn.onnx",
        inputs=(InputInfo("input", (1, 3, 32, 32), "float32"),),
        upper_bound=24.6913,
        certified=True,
        estimate=20.1,
        lower_bound=LowerBound(
            value=5.4321,
            jacobian_samples=16,
            ascent_steps=40,
            seconds=4.99,
            budget_seconds=5.0,
            completed=False,
            evaluator_max_rel_error=3.2e-7,
        ),
        unbounded=(),
        layers=(
            _layer(
                "conv1",
                "Conv",
                (1, 3, 32, 32),
                power=2.01,
                exact=2.02,
                upper=2.0654,
                cumulative=2.0654,
                fused=("BatchNormalization",),
                reshaped=1.3,
                out_shape=(1, 16, 32, 32),
            ),
            _layer(
                "conv2",
                "Conv",
                (1, 16, 16, 16),
                power=3.0,
                exact=None,
                upper=3.1,
                cumulative=12.80548,
                reshaped=1.9,
                skipped="operator is 4096×4096 = 16777216 entries > exact limit 2000000",
            ),
            _layer(
                "fc",
                "Gemm",
                (1, 1024),
                power=1.9,
                exact=1.9284,
                upper=1.92857,
                cumulative=24.6913,
                out_shape=(1, 10),
            ),
        ),
        ops=(
            OpResult("relu1", "Relu", 1.0, "Relu: 1"),
            OpResult("pool", "MaxPool", 2.0, "MaxPool 3×3 stride 2: √(windows sharing an input) = 2"),
            OpResult("lrelu", "LeakyRelu", 1.3, "LeakyRelu: max(1, |alpha|)"),
            OpResult("act", "LeakyRelu", 1.0, "LeakyRelu: max(1, |alpha|)"),
        ),
        notes=("BatchNormalization bn1 was folded into conv1.",),
        lipcheck_version="0.1.0",
        bounds=(
            BoundResult("product", 24.6913, 0.734, True),
            BoundResult("lipsdp", None, 0.0, False, {"reason": "not an MLP chain: conv1 (Conv): not an activation"}),
        ),
    )


def unbounded_report() -> Report:
    """Attention: no global constant; non-finite floats to check the JSON mapping."""
    return Report(
        model="attention|block.onnx",
        inputs=(InputInfo("tokens", (1, 8, 16), "float32"), InputInfo("mask", (1, 8), "int64")),
        upper_bound=None,
        certified=False,
        estimate=None,
        lower_bound=LowerBound(
            value=3.25, jacobian_samples=8, ascent_steps=0, seconds=0.5, budget_seconds=5.0
        ),
        unbounded=(Unbounded("attn/MatMul_1", "MatMul", "product of two variable tensors (q·kᵀ)"),),
        layers=(
            _layer("q_proj", "MatMul", (1, 8, 16), power=1.5, exact=1.5, upper=1.5, cumulative=1.5),
            _layer("out_proj", "MatMul", (1, 8, 16), power=float("nan"), exact=None, upper=float("inf"),
                   cumulative=None, skipped="input is unbounded"),
        ),
        ops=(
            OpResult("attn/MatMul_1", "MatMul", None, "product of two variable tensors"),
            OpResult("attn/Softmax", "Softmax", 0.5, "Softmax: 1/2 (Nair 2025)"),
            OpResult("ln", "LayerNormalization", 316.2, "max|γ|/√eps", loose=True),
        ),
        notes=("Integer input mask is treated as a constant.",),
        settings=Settings(power_iterations=50, seed=3),
        lipcheck_version="0.1.0",
        bounds=(BoundResult("product", None, 0.02, False, {"reason": "unbounded"}),),
    )


def empty_report() -> Report:
    """No weighted layers, no lower bound (disabled)."""
    return Report(
        model="relu.onnx",
        inputs=(InputInfo("x", (4,), "float32"),),
        upper_bound=1.0,
        certified=True,
        estimate=1.0,
        lower_bound=None,
        unbounded=(),
        layers=(),
        ops=(OpResult("relu", "Relu", 1.0, "Relu: 1"),),
        settings=Settings(lower_bound=False, method="lipsdp"),
        lipcheck_version="0.1.0",
        bounds=(BoundResult("product", 1.0, 0.001, True), BoundResult("lipsdp", 1.0, 0.25, True)),
    )


REPORTS = {"cnn": cnn_report, "unbounded": unbounded_report, "empty": empty_report}
EXTENSIONS = {OutputFormat.TABLE: "txt", OutputFormat.JSON: "json", OutputFormat.MARKDOWN: "md"}


# ------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (2.0, "2.000"),
        (0.25, "0.2500"),
        (24.6913, "24.69"),
        (1234.4, "1234"),
        (123456.0, "1.235e+05"),
        (3.2e-7, "3.200e-07"),
        (0.0, "0.000"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
    ],
)
def test_format_number_four_significant_digits(value: float | None, text: str) -> None:
    assert format_number(value) == text


def test_format_percent_and_shape() -> None:
    assert format_percent(0.0123) == "1.230%"
    assert format_percent(None) == "—"
    assert format_shape((1, 3, 32, 32)) == "1×3×32×32"


# ------------------------------------------------------------------------------------------ formats


def test_every_output_format_has_a_renderer() -> None:
    for fmt in OutputFormat:
        text = fmt.renderer()(cnn_report())
        assert isinstance(text, str) and text.endswith("\n") and text.strip()
        assert fmt.render(cnn_report()) == text
    assert OutputFormat("markdown") is OutputFormat.MARKDOWN


@pytest.mark.parametrize("name", sorted(REPORTS))
@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_golden(name: str, fmt: OutputFormat, update_golden: bool) -> None:
    text = fmt.render(REPORTS[name]())
    path = GOLDEN / f"report_{name}.{EXTENSIONS[fmt]}"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}: run pytest --update-golden"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{path.name} differs: run pytest --update-golden if intended"


# --------------------------------------------------------------------------------------------- json

DOCUMENTED_KEYS = {
    "schema_version",
    "lipcheck_version",
    "model",
    "input_shape",
    "inputs",
    "upper_bound",
    "certified",
    "method",
    "bounds",
    "estimate",
    "lower_bound",
    "ratio",
    "lower_bound_details",
    "exact_composition",
    "unbounded",
    "layers",
    "ops",
    "notes",
    "settings",
}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_json_is_one_object_with_documented_keys(name: str) -> None:
    report = REPORTS[name]()
    text = render_json(report)
    data = json.loads(text)  # raises on trailing data: exactly one JSON document
    assert isinstance(data, dict)
    assert set(data) == DOCUMENTED_KEYS
    assert data["schema_version"] == 2
    assert [set(b) for b in data["bounds"]] == [{"method", "value", "seconds", "certified"}] * len(report.bounds)
    assert len(data["layers"]) == len(report.layers)
    for layer in data["layers"]:
        assert {"name", "op", "sigma_power", "sigma_exact", "sigma_upper", "sigma_reshaped", "power_gap",
                "certified_gap", "fused_with", "cumulative_upper", "exact_skipped"} <= set(layer)


def test_json_round_trips_to_dict() -> None:
    report = cnn_report()
    assert json.loads(render_json(report)) == report.to_dict()


def test_json_never_emits_nan_or_infinity() -> None:
    report = unbounded_report()
    text = render_json(report)
    assert "NaN" not in text and "Infinity" not in text
    out_proj = json.loads(text)["layers"][1]
    assert out_proj["sigma_power"] is None and out_proj["sigma_upper"] is None
    assert out_proj["cumulative_upper"] is None
    assert json.loads(text)["upper_bound"] is None


# ----------------------------------------------------------------------------------------- markdown


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_markdown_table_has_one_row_per_layer(name: str) -> None:
    report = REPORTS[name]()
    rows = _markdown_rows(render_markdown(report))
    if not report.layers:
        assert rows == []
        return
    header, separator, *body = rows
    assert header == [column.header for column in Column]  # the shared column definition
    assert len(body) == len(report.layers)
    assert all(len(row) == len(Column) for row in body)


def test_markdown_escapes_pipes() -> None:
    text = render_markdown(unbounded_report())
    assert "attention\\|block.onnx" in text


# -------------------------------------------------------------------------------------------- table


def _table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in text.splitlines()
            if line.startswith("│")]


def _summary_value(text: str, label: str) -> str:
    for line in text.splitlines():
        if line.startswith(label):
            return line[len(label):].strip()
    raise AssertionError(f"no {label!r} line in:\n{text}")


def test_table_last_cumulative_bound_matches_the_summary() -> None:
    """Re-read the rendered table: the last layer's cumulative bound is the printed product bound (the cumulative
    column is the product's), here also the certified bound, which names its method."""
    report = cnn_report()
    text = render_table(report)
    header, *rows = _table_rows(text)
    assert len(rows) == len(report.layers)
    cumulative = rows[-1][header.index(Column.CUMULATIVE.header)]
    headline = _summary_value(text, "Certified upper bound")
    printed, method = headline.split()
    assert method == "(product)" and cumulative == printed
    assert _summary_value(text, "  product (AutoLip)").split()[0] == printed
    assert math.isclose(float(printed), report.upper_bound, rel_tol=5e-4)  # 4 significant digits
    # and every σ upper printed is the layer's value to 4 digits
    for row, layer in zip(rows, report.layers, strict=True):
        printed_upper = float(row[header.index(Column.SIGMA_UPPER.header)])
        assert math.isclose(printed_upper, layer.sigma_upper, rel_tol=5e-4)


def test_table_shows_what_users_must_see() -> None:
    text = render_table(cnn_report())
    header, conv1, conv2, fc = _table_rows(text)
    col = {name: i for i, name in enumerate(header)}
    assert conv1[col["Op"]] == "Conv+BatchNormalization"
    assert conv1[col["σ reshaped"]] == "1.300" and conv1[col["σ exact"]] == "2.020"  # they differ
    assert fc[col["σ reshaped"]] == "—"
    assert conv2[col["σ exact"]] == "skipped [1]"
    assert "[1] σ exact skipped: operator is 4096×4096 = 16777216 entries > exact limit 2000000" in text
    assert _summary_value(text, "Estimate (power iteration, NOT a certificate)") == "20.10"
    assert _summary_value(text, "Ratio upper/lower") == format_number(24.6913 / 5.4321)
    assert "stopped by the time budget" in _summary_value(text, "Empirical lower bound")
    assert "pool (MaxPool): 2.000" in text and "lrelu (LeakyRelu): 1.300" in text
    assert "act (LeakyRelu)" not in text and "relu1" not in text  # constant 1: not listed
    assert "BatchNormalization bn1 was folded into conv1." in text


def test_table_unbounded_report() -> None:
    text = render_table(unbounded_report())
    assert _summary_value(text, "Certified upper bound").startswith("unbounded")
    assert _summary_value(text, "Ratio upper/lower") == "n/a (the upper bound is unbounded)"
    assert "attn/MatMul_1 (MatMul): product of two variable tensors (q·kᵀ)" in text
    assert text.count("attn/MatMul_1") == 1  # not repeated among the op constants
    assert "ln (LayerNormalization): 316.2 (finite but loose)" in text
    assert "unbounded" in _table_rows(text)[-1][-1]


def test_table_without_layers_or_lower_bound() -> None:
    text = render_table(empty_report())
    assert "No weighted (linear) layers." in text
    assert _summary_value(text, "Empirical lower bound") == "none (disabled)"
    assert _summary_value(text, "Ratio upper/lower") == "n/a (no lower bound)"


def test_ratio_below_one_is_flagged_as_a_bug() -> None:
    report = cnn_report()
    bad = Report(**{**report.__dict__, "lower_bound": LowerBound(value=100.0)})
    summary = summarize(bad)
    ratio = next(f for f in summary.facts if f.label == "Ratio upper/lower")
    assert ratio.warning and "bug" in ratio.value


def test_names_are_not_read_as_rich_markup() -> None:
    report = cnn_report()
    layer = report.layers[0]
    renamed = LayerResult(**{**layer.__dict__, "name": "[bold]x[/bold]"})
    odd = Report(**{**report.__dict__, "layers": (renamed,)})
    assert "[bold]x[/bold]" in render_table(odd)


def test_power_gap_rounding_noise_prints_as_zero() -> None:
    report = cnn_report()
    layer = report.layers[2]
    noisy = LayerResult(
        **{**layer.__dict__, "sigma_power": 1.0, "sigma_exact": 1.0 - 1e-14, "sigma_upper": 1.0}
    )
    odd = Report(**{**report.__dict__, "layers": (noisy,)})
    header, row = _table_rows(render_table(odd))
    assert row[header.index(Column.POWER_GAP.header)] == "0.000%"
