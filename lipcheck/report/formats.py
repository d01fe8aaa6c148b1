"""Output formats: each :class:`OutputFormat` member builds one renderer ``Report -> str``.

- ``table``: the per-layer table and the summary as plain text (Rich box drawing, no colour); the CLI
  prints the same renderables (:func:`table_renderables`) with colour when stdout is a terminal.
- ``json``: exactly one JSON object, ``Report.to_dict()``; NaN and ±Inf become ``null``.
- ``markdown``: a GitHub-flavoured table and summary, for pasting into a pull request.

The per-layer columns are defined once in :mod:`lipcheck.report.columns`; the summary is built once in
:func:`summarize`; every number goes through :func:`format_number` (4 significant digits). Under "Certified
upper bound" (which names the method that gave it) one indented line per composition method in ``report.bounds``:
its certified value, or why it has none, and its time. When a layer
carries a spectral-norm audit, the table and markdown add a "Spectral-norm audit" section after the
layer table (its columns: :class:`AuditColumn`; its sentence: ``Report.spectral_norm_audit``).

Names come from the model and may hold any character: the table and markdown show them escaped
(:mod:`lipcheck.report.text`: control and bidi characters as ``\\x1b``, ``\\u202e``; no Rich markup; no
markdown structure); the JSON keeps them exact (``json.dumps`` escapes them as ``\\u001b``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from lipcheck.report.columns import (
    UNBOUNDED,
    AuditColumn,
    Column,
    Footnotes,
    audit_rows,
    format_number,
    format_percent,
    format_shape,
    layer_rows,
)
from lipcheck.report.model import WEIGHT_NORM, BoundResult, Report
from lipcheck.report.text import markdown_text, safe_text

__all__ = [
    "OutputFormat",
    "print_table",
    "Summary",
    "format_number",
    "format_percent",
    "render_json",
    "render_markdown",
    "render_table",
    "summarize",
    "table_renderables",
]

Renderer = Callable[[Report], str]

UPPER_LABEL = "Certified upper bound"
ESTIMATE_LABEL = "Estimate (power iteration, NOT a certificate)"
LOWER_LABEL = "Empirical lower bound"
RATIO_LABEL = "Ratio upper/lower"
AUDIT_TITLE = "Spectral-norm audit"
# how each composition method (report.bounds) is named under the certified upper bound
METHOD_LABELS = {"product": "product (AutoLip)", "lipsdp": "lipsdp (LipSDP-Neuron, verified)",
                 "blocks": "blocks (per block, verified)",
                 "ranges": "ranges (gates through bounded ranges)"}
BLOCKS_TITLE = "Blocks (the blocks method: each factor and the method that gave it)"


# --------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Fact:
    label: str
    value: str
    warning: bool = False  # printed in red on a terminal
    sub: bool = False  # a detail of the fact above it (one composition method's value): indented


@dataclass(frozen=True)
class Summary:
    """Everything below the per-layer table, format-independent."""

    title: str
    inputs: str
    facts: list[Fact]
    sections: list[tuple[str, list[str]]]  # (title, items); empty sections are omitted
    footnotes: list[str] = field(default_factory=list)
    settings: str = ""
    audit_rows: list[list[str]] = field(default_factory=list)  # AuditColumn cells; empty = no audit section
    audit_lines: list[Fact] = field(default_factory=list)  # the audit's sentences, below its table


def _seconds(value: float) -> str:
    return f"{format_number(value)} s"


def method_seconds(value: float) -> str:
    """A method's time, to the hundredth of a second (timings are not reproducible to more)."""
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _method_fact(bound: BoundResult) -> Fact:
    """One composition method's line under the certified upper bound: its value (or why it has none) and time."""
    if bound.certified and bound.value is not None:
        value = format_number(bound.value)
    else:
        value = f"none ({bound.detail.get('reason', 'not certified')})"
    extra = ""
    solver = bound.detail.get("solver")
    if solver and bound.detail.get("solver_value") is not None:
        used = str(bound.detail.get("multipliers", ""))
        extra = (f"; SDP solver {solver}: {format_number(float(bound.detail['solver_value']))}, not verified"
                 f"{', its multipliers certified this value' if used.startswith('sdp-solver') else ''}")
    return Fact(method_label(bound.method), f"{value} ({method_seconds(bound.seconds)}{extra})", sub=True)


def block_lines(report: Report) -> list[str]:
    """One line per piece of the blocks method's composition: its nodes, factor, method and the product's factor."""
    lines = []
    for bound in report.bounds:
        if bound.method != "blocks" or not bound.certified:
            continue
        for piece in bound.detail.get("blocks", ()):
            if piece["method"] == "product" and abs(piece["value"] - 1.0) <= 1e-12:  # an activation's factor 1
                continue
            span = piece["first"] if piece["first"] == piece["last"] else f"{piece['first']} … {piece['last']}"
            line = (f"{span} ({piece['nodes']} node{'s' if piece['nodes'] != 1 else ''}): "
                    f"{format_number(piece['value'])} by {piece['method']}")
            if piece["method"] != "product":
                line += f" (product {format_number(piece['product'])})"
            if piece.get("note"):
                line += f"; {piece['note']}"
            lines.append(line)
    return lines


def _upper_fact(report: Report) -> Fact:
    if report.upper_bound is None:
        n = len(report.unbounded)
        why = f" ({n} node{'s' if n != 1 else ''} without a global Lipschitz constant)" if n else ""
        return Fact(UPPER_LABEL, UNBOUNDED + why, warning=True)
    if not report.certified:
        return Fact(UPPER_LABEL, f"{format_number(report.upper_bound)} (NOT certified)", warning=True)
    method = report.method
    return Fact(UPPER_LABEL, format_number(report.upper_bound) + (f" ({method})" if method else ""))


def _lower_fact(report: Report) -> Fact:
    lb = report.lower_bound
    if lb is None:
        why = "disabled" if not report.settings.lower_bound else "not computed"
        return Fact(LOWER_LABEL, f"none ({why})")
    if lb.value is None:
        return Fact(LOWER_LABEL, f"none ({lb.note or 'no finite measurement'})")
    details = [
        f"{lb.jacobian_samples} Jacobian samples",
        f"{lb.ascent_steps} ascent steps",
        f"{_seconds(lb.seconds)} of a {_seconds(lb.budget_seconds)} budget",
    ]
    if not lb.completed:
        details.append("stopped by the time budget")
    if lb.evaluator_max_rel_error is not None:
        details.append(f"evaluator vs onnxruntime max rel. error {format_number(lb.evaluator_max_rel_error)}")
    if lb.note:
        details.append(lb.note)
    return Fact(LOWER_LABEL, f"{format_number(lb.value)} ({'; '.join(details)})")


def _ratio_fact(report: Report) -> Fact:
    ratio = report.ratio
    if ratio is not None:
        if ratio < 1:
            return Fact(
                RATIO_LABEL,
                f"{format_number(ratio)} (below 1: a measured ratio exceeds the certified bound; "
                "this is a lipcheck bug, please report it)",
                warning=True,
            )
        return Fact(RATIO_LABEL, format_number(ratio))
    if report.upper_bound is None:
        why = "the upper bound is unbounded"
    elif report.lower_bound is None or report.lower_bound.value is None:
        why = "no lower bound"
    else:
        why = "the lower bound is 0"
    return Fact(RATIO_LABEL, f"n/a ({why})")


EXACT_COMPOSITION_LABEL = "If every layer were exact (NOT a certificate)"


def _exact_composition_facts(report: Report) -> list[Fact]:
    """The product recomposed with exact per-layer values: shown when every layer has one and the bound is finite."""
    if report.exact_composition is None:
        return []
    product = next((b.value for b in report.bounds if b.method == "product" and b.value), None)
    share = ""
    if product:
        share = f" (the product with certified layers: {format_number(product)}, " \
                f"{format_percent(product / report.exact_composition - 1.0)} above)"
    return [Fact(EXACT_COMPOSITION_LABEL, format_number(report.exact_composition) + share)]


LOCAL_LABEL = "Local bound on the region"
LOCAL_LOWER_LABEL = "Lower bound inside the region"


def _region_text(region: Any) -> str:
    return ", ".join(f"{name} ∈ [{lo:g}, {hi:g}]" for name, (lo, hi) in region.items())


def _local_facts(report: Report) -> list[Fact]:
    """The bound on the input region (``--domain``), when one was given."""
    local = report.local
    if local is None:
        return []
    region = _region_text(local.region)
    if local.upper_bound is None:
        n = len(local.unbounded)
        first = f"; {local.unbounded[0].node}: {local.unbounded[0].reason}" if n else ""
        upper = Fact(LOCAL_LABEL, f"{UNBOUNDED} on {region} ({n} node{'s' if n != 1 else ''}{first})", warning=True)
    else:
        how = "certified" if local.method == "local" else f"certified: the {local.method} bound is lower"
        upper = Fact(LOCAL_LABEL, f"{format_number(local.upper_bound)} on {region} ({how})")
    if local.lower_bound is None:
        lower = Fact(LOCAL_LOWER_LABEL, f"none ({local.note or 'disabled'})")
    else:
        ratio = local.ratio
        lower = Fact(LOCAL_LOWER_LABEL, f"{format_number(local.lower_bound)} ({local.lower_points} points"
                     + (f"; ratio {format_number(ratio)}" if ratio is not None else "") + ")")
    return [upper, lower]


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    return f"{format_number(v[0])} – {format_number(v[len(v) // 2])} – {format_number(v[-1])}"


def around_lines(report: Report) -> list[str]:
    """``--around``: the per-point results in a few lines (min – median – max), and the gradient-penalty view."""
    around = report.around
    if around is None:
        return []
    pts = around.points
    bounded = [p.upper_bound for p in pts if p.upper_bound is not None]
    norms = [p.jacobian_norm for p in pts if p.jacobian_norm is not None]
    radii = [p.certified_radius for p in pts if p.certified_radius is not None]
    ball = "L2 ball" if around.norm == "2" else "L∞ box"
    lines = [f"{len(pts)} points, {ball} of radius {around.radius:g} around each (min – median – max)",
             f"certified local bound: {_spread(bounded)}"
             + (f"; unbounded at {len(pts) - len(bounded)} point(s)" if len(bounded) < len(pts) else ""),
             f"‖J(x)‖₂ at the points: {_spread(norms)}"]
    if around.interpolate_norms:
        lines.append(f"‖J‖₂ at {len(around.interpolate_norms)} random interpolates between pairs (what WGAN-GP "
                     f"penalizes): {_spread(list(around.interpolate_norms))}")
    if radii:
        lines.append(f"certified radius (top-two margin / (√2·L), at most {around.radius:g}): {_spread(radii)}")
    every = norms + list(around.interpolate_norms)
    if every and bounded:
        glob = "unbounded" if report.upper_bound is None else f"≤ {format_number(report.upper_bound)}"
        lines.append(f"gradient norm {format_number(min(every))}–{format_number(max(every))} where the data is; "
                     f"certified ≤ {format_number(max(bounded))} on the balls; global {glob}")
    return lines


def local_lines(report: Report) -> list[str]:
    """The ops whose constant the region lowered."""
    if report.local is None:
        return []
    out = []
    for c in report.local.changed:
        before = "unbounded" if c["global"] is None else format_number(c["global"])
        out.append(f"{c['node']} ({c['op']}): {before} → {format_number(c['local'])} — {c['rule']}")
    return out


def _audit_lines(report: Report) -> list[Fact]:
    """The audit's verdict (``Report.spectral_norm_audit``) and a line for weight-normalized layers."""
    lines = []
    verdict = report.spectral_norm_audit
    if verdict is not None:
        lines.append(Fact(AUDIT_TITLE, verdict.summary, warning=verdict.not_1_lipschitz > 0))
    weight_norm = [layer.name for layer in report.layers if layer.audit and layer.audit.kind == WEIGHT_NORM]
    if weight_norm:
        n = len(weight_norm)
        lines.append(
            Fact(
                AUDIT_TITLE,
                f"{n} weight-normalized layer{'s' if n != 1 else ''} ({', '.join(weight_norm)}): the weight was "
                "reconstructed as g·v/‖v‖ (weight_norm makes no Lipschitz claim)",
            )
        )
    return lines


def summarize(report: Report, footnotes: Footnotes | None = None) -> Summary:
    """The summary shared by the table and markdown formats."""
    unbounded_names = {u.node for u in report.unbounded}
    unbounded = [f"{u.node} ({u.op}): {u.reason}" for u in report.unbounded]
    constants = []
    for op in report.ops:
        if op.constant is None:
            if op.name in unbounded_names:
                continue
            value = UNBOUNDED
        elif op.constant == 1:
            continue
        else:
            value = format_number(op.constant)
        loose = " (finite but loose)" if op.loose else ""
        constants.append(f"{op.name} ({op.op}): {value}{loose} — {op.rule}")
    s = report.settings
    settings = (
        f"power iterations {s.power_iterations}, tolerance {s.tolerance:g}, seed {s.seed}, "
        f"exact limit {s.exact_limit}, tight work {s.tight_work:g} GFLOP, lower bound "
        + (f"{_seconds(s.lower_bound_seconds)} budget" if s.lower_bound else "off")
        + f", method {s.method}"
    )
    inputs = ", ".join(f"{i.name} {format_shape(i.shape)} {i.dtype}" for i in report.inputs) or "none"
    version = f"lipcheck {report.lipcheck_version}".rstrip()
    return Summary(
        title=f"{version}: {report.model}",
        inputs=inputs,
        facts=[
            _upper_fact(report),
            *(_method_fact(bound) for bound in report.bounds),
            Fact(ESTIMATE_LABEL, format_number(report.estimate, none=UNBOUNDED)),
            *_exact_composition_facts(report),
            _lower_fact(report),
            _ratio_fact(report),
            *_local_facts(report),
        ],
        sections=[
            (title, items)
            for title, items in (
                ("Unbounded nodes", unbounded),
                ("Other ops with a constant other than 1", constants),
                (BLOCKS_TITLE, block_lines(report)),
                ("Ops the region tightened (global → local constant)", local_lines(report)),
                ("Around the given points", around_lines(report)),
                ("Notes", list(report.notes)),
            )
            if items
        ],
        footnotes=footnotes.lines() if footnotes else [],
        settings=settings,
        audit_rows=audit_rows(report.layers),
        audit_lines=_audit_lines(report),
    )


# ----------------------------------------------------------------------------------------------- table


def _text(text: str, style: str = "") -> Text:
    """One line of the table format: a Text (never parsed as Rich markup or emoji codes) whose model-derived
    characters are escaped (:func:`~lipcheck.report.text.safe_text`)."""
    return Text(safe_text(text), style=style)


def table_renderables(report: Report) -> list[RenderableType]:
    """The table format as Rich renderables (styled); :func:`render_table` captures them as text."""
    footnotes = Footnotes()
    rows = layer_rows(report.layers, footnotes)
    summary = summarize(report, footnotes)

    out: list[RenderableType] = [_text(summary.title, style="bold"), _text(f"Input: {summary.inputs}")]
    if rows:
        table = Table(box=box.SQUARE, header_style="bold", show_edge=True)
        for column in Column:
            table.add_column(column.header, justify=column.justify, no_wrap=column.justify == "right")
        for row in rows:
            table.add_row(*(_text(cell) for cell in row))
        out.append(table)
    else:
        out.append(Text("No weighted (linear) layers."))
    out.extend(_text(line, style="dim") for line in summary.footnotes)
    if summary.audit_rows:
        out.append(Text(f"\n{AUDIT_TITLE}:", style="bold"))
        audit = Table(box=box.SQUARE, header_style="bold", show_edge=True)
        for audit_column in AuditColumn:
            audit.add_column(audit_column.header, justify=audit_column.justify,
                             no_wrap=audit_column.justify == "right")
        for row in summary.audit_rows:
            audit.add_row(*(_text(cell) for cell in row))
        out.append(audit)
        out.extend(_text(line.value, style="bold red" if line.warning else "") for line in summary.audit_lines)

    out.append(Text(""))
    label_width = max(len(fact.label) + (2 if fact.sub else 0) for fact in summary.facts) + 2
    for fact in summary.facts:
        out.append(
            Text.assemble(
                (("  " + fact.label).ljust(label_width), "") if fact.sub else (fact.label.ljust(label_width), "bold"),
                (safe_text(fact.value), "bold red" if fact.warning else ""),
            )
        )
    for title, items in summary.sections:
        out.append(Text(f"\n{title}:", style="bold"))
        out.extend(_text(f"  - {item}") for item in items)
    out.append(Text("\nSettings: " + safe_text(summary.settings), style="dim"))
    return out


def print_table(report: Report, console: Console) -> None:
    """Print the table format on ``console``, widened if needed so that no column is squeezed."""
    renderables = table_renderables(report)
    tables = [r for r in renderables if isinstance(r, Table)]
    needed = max((console.measure(t, options=console.options.update_width(10_000)).maximum for t in tables),
                 default=0)
    console.width = max(console.width, needed)
    for renderable in renderables:  # text lines are not wrapped: one fact per line, greppable
        console.print(renderable, soft_wrap=isinstance(renderable, Text))


def render_table(report: Report) -> str:
    """Plain text (no colour), as wide as the table needs (at least 100 columns)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=100,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
    )
    print_table(report, console)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines()) + "\n"


# ------------------------------------------------------------------------------------------------ json


def _finite(obj: Any) -> Any:
    """Replace NaN and ±Inf by None, recursively (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def render_json(report: Report) -> str:
    """Exactly one JSON object: ``Report.to_dict()`` (schema_version 2) with NaN/Inf as null."""
    return json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False) + "\n"


# -------------------------------------------------------------------------------------------- markdown


_md = markdown_text  # a GitHub table cell or list item: one line, no control characters, HTML or links


def render_markdown(report: Report) -> str:
    """A GitHub-flavoured markdown table and summary."""
    footnotes = Footnotes()
    rows = layer_rows(report.layers, footnotes)
    summary = summarize(report, footnotes)

    lines = [f"### {_md(summary.title)}", "", f"Input: {_md(summary.inputs)}", ""]
    if rows:
        lines.append("| " + " | ".join(column.header for column in Column) + " |")
        lines.append("|" + "|".join(":---" if c.justify == "left" else "---:" for c in Column) + "|")
        lines.extend("| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows)
    else:
        lines.append("No weighted (linear) layers.")
    lines.append("")
    if summary.footnotes:
        lines.extend(f"{_md(line)}  " for line in summary.footnotes)
        lines.append("")
    if summary.audit_rows:
        lines.extend([f"**{AUDIT_TITLE}**", ""])
        lines.append("| " + " | ".join(column.header for column in AuditColumn) + " |")
        lines.append("|" + "|".join(":---" if c.justify == "left" else "---:" for c in AuditColumn) + "|")
        lines.extend("| " + " | ".join(_md(cell) for cell in row) + " |" for row in summary.audit_rows)
        lines.append("")
        for line in summary.audit_lines:
            lines.extend([f"**{_md(line.value)}**" if line.warning else _md(line.value), ""])
    for fact in summary.facts:
        value = f"**{_md(fact.value)}**" if fact.label == UPPER_LABEL else _md(fact.value)
        lines.append(f"{'  ' if fact.sub else ''}- {_md(fact.label)}: {value}")
    for title, items in summary.sections:
        lines.extend(["", f"**{title}**", ""])
        lines.extend(f"- {_md(item)}" for item in items)
    lines.extend(["", f"<sub>Settings: {_md(summary.settings)}</sub>"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- formats


class OutputFormat(str, Enum):
    """``--format``: each member builds its renderer."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"

    def renderer(self) -> Renderer:
        return _RENDERERS[self]

    def render(self, report: Report) -> str:
        return self.renderer()(report)


_RENDERERS: dict[OutputFormat, Renderer] = {
    OutputFormat.TABLE: render_table,
    OutputFormat.JSON: render_json,
    OutputFormat.MARKDOWN: render_markdown,
}
