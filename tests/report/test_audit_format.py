"""The spectral-norm audit in the report: JSON keys and values, the table / markdown section and its sentence.

Golden files: tests/golden/report_audit.{txt,json,md} (``pytest tests/report --update-golden``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lipcheck.report.columns import AuditColumn, audit_rows
from lipcheck.report.formats import OutputFormat, render_json, render_markdown, render_table
from lipcheck.report.model import (
    InputInfo,
    LayerResult,
    OpResult,
    Report,
    SpectralNormAudit,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EXTENSIONS = {OutputFormat.TABLE: "txt", OutputFormat.JSON: "json", OutputFormat.MARKDOWN: "md"}
AUDIT_KEYS = {
    "kind", "style", "module", "stored_key", "sigma_hat", "sigma_reshaped_exact", "reshaped_after", "stale",
    "claims_1_lipschitz", "lipschitz", "lipschitz_exact",
}
SUMMARY_KEYS = {
    "layers", "claim", "max_lipschitz", "max_layer", "not_1_lipschitz", "stale_layers", "max_reshaped_after",
    "max_reshaped_after_layer", "summary",
}


def sn_audit(
    module: str, *, sigma_hat: float, exact: float, upper: float, lipschitz_exact: float | None, style: str = "legacy"
) -> SpectralNormAudit:
    return SpectralNormAudit(
        kind="spectral_norm",
        style=style,
        module=module,
        stored_key=f"{module}.weight_orig" if style == "legacy" else f"{module}.parametrizations.weight.original",
        sigma_hat=sigma_hat,
        sigma_reshaped_exact=exact,
        reshaped_after=exact / sigma_hat,
        stale=1 - sigma_hat / exact,
        claims_1_lipschitz=True,
        lipschitz=upper,
        lipschitz_exact=lipschitz_exact,
    )


def wn_audit(module: str, upper: float) -> SpectralNormAudit:
    return SpectralNormAudit(
        kind="weight_norm", style="parametrizations", module=module,
        stored_key=f"{module}.parametrizations.weight.original1", sigma_hat=None, sigma_reshaped_exact=None,
        reshaped_after=None, stale=None, claims_1_lipschitz=False, lipschitz=upper, lipschitz_exact=upper,
    )


def layer(name: str, op: str, upper: float, exact: float | None, audit: SpectralNormAudit | None) -> LayerResult:
    return LayerResult(
        name=name, op=op, param=audit.stored_key if audit else f"{name}.weight", fused_with=(),
        input_shape=(1, 3, 32, 32), output_shape=(1, 64, 16, 16), sigma_power=upper * 0.99, power_iterations=100,
        sigma_exact=exact, exact_method="lanczos" if exact is not None else "skipped",
        exact_skipped=None if exact is not None else "operator too large", sigma_upper=upper,
        upper_method="circular-fft", sigma_reshaped=1.0, lipschitz=upper, cumulative_upper=upper,
        cumulative_estimate=upper, audit=audit,
    )


def audited_report() -> Report:
    """An SN discriminator: converged, stale and shrunken vectors, a skipped exact value, a plain head."""
    return Report(
        model="discriminator.pt",
        inputs=(InputInfo("input", (1, 3, 32, 32), "float32"),),
        upper_bound=12.0,
        certified=True,
        estimate=11.5,
        lower_bound=None,
        unbounded=(),
        layers=(
            layer("/0/Conv", "Conv", 2.356, 2.35,
                  sn_audit("main.0", sigma_hat=1.3, exact=1.3, upper=2.356, lipschitz_exact=2.35)),
            layer("/2/Conv", "Conv", 1.9, None,
                  sn_audit("main.2", sigma_hat=0.94, exact=1.0, upper=1.9, lipschitz_exact=None)),
            layer("/4/Gemm", "Gemm", 1 / 0.9, 1 / 0.9,
                  sn_audit("main.4", sigma_hat=0.9, exact=1.0, upper=1 / 0.9, lipschitz_exact=1 / 0.9,
                           style="parametrizations")),
            layer("/6/Gemm", "Gemm", 0.5, 0.5, None),
        ),
        ops=(OpResult("/1/LeakyRelu", "LeakyRelu", 1.0, "LeakyRelu: max(1, |alpha|)"),),
        lipcheck_version="0.1.0",
    )


def test_json_has_audit_per_layer_and_a_summary() -> None:
    data = json.loads(render_json(audited_report()))
    assert [layer["audit"] is not None for layer in data["layers"]] == [True, True, True, False]
    first = data["layers"][0]["audit"]
    assert set(first) == AUDIT_KEYS
    assert first["stored_key"] == "main.0.weight_orig" and first["lipschitz"] == 2.356
    assert data["layers"][1]["audit"]["lipschitz_exact"] is None
    assert data["layers"][2]["audit"]["reshaped_after"] == pytest.approx(1 / 0.9)
    summary = data["spectral_norm_audit"]
    assert set(summary) == SUMMARY_KEYS
    assert summary["layers"] == 3 and summary["claim"] == 1.0
    assert summary["max_lipschitz"] == 2.356 and summary["max_layer"] == "/0/Conv"
    assert summary["not_1_lipschitz"] == 3
    assert summary["stale_layers"] == 2
    assert summary["max_reshaped_after"] == pytest.approx(1 / 0.9)
    assert summary["max_reshaped_after_layer"] == "/4/Gemm"
    assert summary["summary"] == (
        "3 spectrally normalized layers claim to be 1-Lipschitz; 3 are not: real constants up to 2.356 (/0/Conv); "
        "2 have stale u, v (σ̂ up to 10.00% low): reshaped norms up to 1.111 instead of 1 (/4/Gemm)"
    )
    assert json.loads(render_json(audited_report())) == audited_report().to_dict()


def test_no_audit_no_keys() -> None:
    """A model without parametrizations keeps the JSON it always had (the golden files check the rest)."""
    report = audited_report()
    plain = replace(report, layers=tuple(replace(layer, audit=None) for layer in report.layers))
    data = plain.to_dict()
    assert "spectral_norm_audit" not in data and all("audit" not in layer for layer in data["layers"])
    assert plain.spectral_norm_audit is None
    assert "Spectral-norm audit" not in render_table(plain) + render_markdown(plain)


def test_weight_norm_only_has_layer_audits_and_a_null_summary() -> None:
    report = replace(
        audited_report(),
        layers=(layer("/0/Conv", "Conv", 1.7, 1.7, wn_audit("main.0", 1.7)), layer("/2/Gemm", "Gemm", 0.5, 0.5, None)),
    )
    data = json.loads(render_json(report))
    assert data["spectral_norm_audit"] is None
    assert data["layers"][0]["audit"]["kind"] == "weight_norm" and data["layers"][1]["audit"] is None
    line = "1 weight-normalized layer (/0/Conv): the weight was reconstructed as g·v/‖v‖ (weight_norm makes no " \
           "Lipschitz claim)"
    assert line in render_table(report) and line in render_markdown(report)


@pytest.mark.parametrize(
    ("lipschitz", "after", "text"),
    [
        ((0.9, 1.0), (1.0, 1.0),
         "2 spectrally normalized layers claim to be 1-Lipschitz; all are: real constants up to 1.000 (b)"),
        ((2.0, 0.5), (1.0, 1.0),
         "2 spectrally normalized layers claim to be 1-Lipschitz; 1 is not: real constants up to 2.000 (a)"),
        ((0.5,), (1.0,), "1 spectrally normalized layer claims to be 1-Lipschitz; it is: real constant 0.5000 (a)"),
        ((1.5,), (1 / 0.8,),
         "1 spectrally normalized layer claims to be 1-Lipschitz; it is not: real constant 1.500 (a); its stored "
         "u, v are stale (σ̂ 20.00% low): reshaped norm 1.250 instead of 1 (a)"),
        ((1.0 + 1e-7, 1.0), (1.0005, 1.0),  # within the tolerances: 1-Lipschitz, not stale
         "2 spectrally normalized layers claim to be 1-Lipschitz; all are: real constants up to 1.000 (a)"),
    ],
)
def test_summary_sentence(lipschitz: tuple[float, ...], after: tuple[float, ...], text: str) -> None:
    layers = tuple(
        layer(name, "Gemm", lip, lip, sn_audit(name, sigma_hat=1.0 / a, exact=1.0, upper=lip, lipschitz_exact=lip))
        for name, lip, a in zip("ab", lipschitz, after)
    )
    summary = replace(audited_report(), layers=layers).spectral_norm_audit
    assert summary is not None and summary.summary == text


def test_table_and_markdown_have_the_audit_section() -> None:
    report = audited_report()
    summary = report.spectral_norm_audit
    assert summary is not None
    table, markdown = render_table(report), render_markdown(report)
    assert "Spectral-norm audit:" in table and summary.summary in table
    assert "**Spectral-norm audit**" in markdown and f"**{summary.summary}**" in markdown
    header = "| " + " | ".join(column.header for column in AuditColumn) + " |"
    assert header in markdown
    audit_lines = markdown[markdown.index(header):].splitlines()[2:5]
    assert [line.split(" | ")[0] for line in audit_lines] == ["| /0/Conv", "| /2/Conv", "| /4/Gemm"]
    # the section sits between the layer table and the certified bound
    assert table.index("Spectral-norm audit:") < table.index("Certified upper bound")
    assert markdown.index("**Spectral-norm audit**") < markdown.index("- Certified upper bound")


def test_audit_rows_print_the_numbers() -> None:
    rows = {row[0]: dict(zip((c.name for c in AuditColumn), row)) for row in audit_rows(audited_report().layers)}
    assert set(rows) == {"/0/Conv", "/2/Conv", "/4/Gemm"}
    assert rows["/2/Conv"] == {
        "NAME": "/2/Conv", "STORED_KEY": "main.2.weight_orig", "PARAMETRIZATION": "spectral_norm (legacy)",
        "SIGMA_HAT": "0.9400", "SIGMA_RESHAPED_EXACT": "1.000", "RESHAPED_AFTER": "1.064", "STALE": "6.000%",
        "LIPSCHITZ": "1.900", "LIPSCHITZ_EXACT": "—",
    }
    assert rows["/4/Gemm"]["PARAMETRIZATION"] == "spectral_norm (parametrizations)"


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_golden(fmt: OutputFormat, update_golden: bool) -> None:
    text = fmt.render(audited_report())
    path = GOLDEN / f"report_audit.{EXTENSIONS[fmt]}"
    if update_golden:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}: run pytest --update-golden"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs: run pytest --update-golden if intended"
