"""Renderers of a :class:`~lipcheck.normalize.NormalizeResult`: a plain-text table and one JSON object.

Layer, parameter and file names come from the model: the table shows them escaped (:func:`safe_text`,
printed as :class:`rich.text.Text`, never parsed as Rich markup); the JSON keeps them exact.
"""

from __future__ import annotations

import io
import json

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lipcheck.normalize import NormalizeResult
from lipcheck.report.formats import _finite
from lipcheck.report.numbers import format_number
from lipcheck.report.text import safe_text


def _factor(value: float) -> str:
    return "1 (unchanged)" if value == 1.0 else f"{value:.6g}"


def _text(text: str) -> Text:
    """A line or a cell: model-derived characters escaped, no Rich markup or emoji codes."""
    return Text(safe_text(text))


def render_normalize_table(result: NormalizeResult) -> str:
    p = result.plan
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None, highlight=False, soft_wrap=False, emoji=False)
    title = "plan (dry run: nothing written)" if result.dry_run else f"written to {result.out}"
    policy = {
        "per-layer": f"every layer's certified σ ≤ {p.target:g}",
        "exact": f"every layer scaled to σ = {p.target:g}",
        "global": f"certified bound ≤ {p.target:g}, one common factor",
    }[p.mode]
    console.print(_text(f"lipcheck normalize: {result.model} — {title}"))
    console.print(_text(f"Policy: {p.mode} ({policy})"))
    table = Table(box=box.SQUARE, show_lines=False)
    for header, justify in (("Layer", "left"), ("Op", "left"), ("Param", "left"), ("σ before", "right"),
                            ("Factor", "right"), ("σ after (planned)", "right"), ("σ after (verified)", "right")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for r in p.layers:
        verified = result.sigma_after.get(r.name)
        cells = (r.name, r.op + ("+" + "+".join(r.fused_with) if r.fused_with else ""), r.param or "—",
                 format_number(r.sigma_before), _factor(r.factor), format_number(r.sigma_after),
                 "—" if verified is None else format_number(verified))
        table.add_row(*(_text(cell) for cell in cells))
    console.print(table)
    before = "unbounded" if p.bound_before is None else format_number(p.bound_before)
    planned = "unbounded" if p.bound_after is None else format_number(p.bound_after)
    console.print(_text(f"Certified bound before                         {before}"))
    console.print(_text(f"Certified bound after (planned)                {planned}"))
    if not result.dry_run:
        after = "unbounded" if result.bound_after is None else format_number(result.bound_after)
        console.print(_text(f"Certified bound after (verified, re-analysed)  {after}"))
    hows = [w for w in result.written if w.tensor != w.param or w.tensor_factor != w.factor]
    notes = [*p.notes, *result.notes, *(f"{w.param}: {w.how} ({w.tensor} × {w.tensor_factor:.6g})" for w in hows)]
    if result.written and not result.dry_run:
        notes.append("biases are left as they are: outputs change by more than a common factor (see README)")
    if notes:
        console.print("\nNotes:")
        for note in notes:
            console.print(_text(f"  - {note}"))
    return buf.getvalue()


def render_normalize_json(result: NormalizeResult) -> str:
    return json.dumps(_finite(result.to_dict()), indent=2, allow_nan=False) + "\n"
