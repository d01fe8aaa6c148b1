"""``lipcheck diff`` output formats: each :class:`DiffFormat` member builds one renderer ``Comparison -> str``.

The comparison is :func:`lipcheck.gate.baseline.compare`: the certified bound and every layer's certified σ,
matched by layer name, growth in percent of the printed (4 significant digit) values. Layer names and labels
come from the models: the table and markdown escape them (:mod:`lipcheck.report.text`), the JSON keeps them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from enum import Enum

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lipcheck.gate.baseline import Change, Comparison, LayerChange
from lipcheck.report.ci_formats import comparison_dict, json_safe
from lipcheck.report.model import SCHEMA_VERSION
from lipcheck.report.numbers import format_number
from lipcheck.report.text import markdown_text, safe_text

__all__ = ["DiffFormat", "diff_summary", "render_diff_json", "render_diff_markdown", "render_diff_table"]

DiffRenderer = Callable[[Comparison], str]

_HEADERS = ("Layer", "Op", "σ upper (A)", "σ upper (B)", "Change")


def _percent(value: float | None) -> str:
    if value is None:
        return "—"
    return ("+" if value > 0 else "") + format_number(value) + "%"


def _row(change: LayerChange) -> tuple[str, str, str, str, str]:
    if change.change is Change.ADDED:
        what = "only in B"
    elif change.change is Change.REMOVED:
        what = "only in A"
    else:
        what = _percent(change.growth)
    return (change.name, change.op, format_number(change.before), format_number(change.after), what)


def diff_summary(comparison: Comparison) -> list[str]:
    """The lines under the table: A and B, the bound's change, how many layers changed which way."""
    a, b = comparison.before, comparison.after
    bound_a = format_number(a.upper_bound, none="unbounded")
    bound_b = format_number(b.upper_bound, none="unbounded")
    counts = {kind: sum(1 for c in comparison.layers if c.change is kind) for kind in Change}
    layers = ", ".join(f"{n} {kind.value}" for kind, n in counts.items() if n) or "no layers"
    return [
        f"A: {a.label}",
        f"B: {b.label}",
        f"Certified upper bound: {bound_a} → {bound_b} ({_percent(comparison.growth)})",
        f"Layers: {layers}",
    ]


def render_diff_table(comparison: Comparison) -> str:
    table = Table(box=box.SQUARE, header_style="bold")
    for i, header in enumerate(_HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right", no_wrap=i >= 2)
    for change in comparison.layers:
        table.add_row(*(Text(safe_text(cell)) for cell in _row(change)))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, force_terminal=False, emoji=False, highlight=False)
    console.width = max(100, console.measure(table, options=console.options.update_width(10_000)).maximum)
    if comparison.layers:
        console.print(table)
    else:
        console.print(Text("No weighted (linear) layers in either report."))
    for line in diff_summary(comparison):
        console.print(Text(safe_text(line)), soft_wrap=True)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines()) + "\n"


def render_diff_json(comparison: Comparison) -> str:
    data = {
        "schema_version": SCHEMA_VERSION,
        "a": comparison.before.label,
        "b": comparison.after.label,
        **{key: value for key, value in comparison_dict(comparison).items() if key != "baseline"},
    }
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


_md = markdown_text


def render_diff_markdown(comparison: Comparison) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|:---|:---|---:|---:|---:|"]
    lines.extend("| " + " | ".join(_md(cell) for cell in _row(change)) + " |" for change in comparison.layers)
    lines.append("")
    lines.extend(f"- {_md(line)}" for line in diff_summary(comparison))
    return "\n".join(lines) + "\n"


class DiffFormat(str, Enum):
    """``lipcheck diff --format``: each member builds its renderer."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"

    def renderer(self) -> DiffRenderer:
        return _RENDERERS[self]

    def render(self, comparison: Comparison) -> str:
        return self.renderer()(comparison)


_RENDERERS: dict[DiffFormat, DiffRenderer] = {
    DiffFormat.TABLE: render_diff_table,
    DiffFormat.JSON: render_diff_json,
    DiffFormat.MARKDOWN: render_diff_markdown,
}
