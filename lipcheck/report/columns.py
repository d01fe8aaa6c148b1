"""The per-layer columns, defined once and shared by the table and markdown formats (torchinfo style).

Also the columns of the spectral-norm audit section (:class:`AuditColumn`), and, re-exported from
:mod:`lipcheck.report.numbers`, the one number formatter every format uses (4 significant digits), so
that the table, the markdown and the summary print the same digits for the same value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from lipcheck.report.model import LayerResult, SpectralNormAudit
from lipcheck.report.numbers import format_number, format_percent

__all__ = [
    "AuditColumn",
    "Column",
    "Footnotes",
    "audit_rows",
    "format_number",
    "format_percent",
    "format_shape",
    "layer_rows",
    "op_label",
]

UNBOUNDED = "unbounded"


def format_shape(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def op_label(layer: LayerResult) -> str:
    """The op, with what was folded into it: ``Conv+BatchNormalization``."""
    return "+".join((layer.op, *layer.fused_with))


@dataclass
class Footnotes:
    """Numbered footnotes, one per distinct text, in order of first use."""

    texts: list[str] = field(default_factory=list)

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {text}" for i, text in enumerate(self.texts, start=1)]


def _sigma_exact(layer: LayerResult, notes: Footnotes) -> str:
    if layer.sigma_exact is None:
        reason = layer.exact_skipped or "exact computation skipped"
        return f"skipped {notes.mark(f'σ exact skipped: {reason}')}"
    return format_number(layer.sigma_exact)


ROUNDING_NOISE = 1e-10  # relative power gaps this small are float64 rounding, printed as 0


def _power_gap(layer: LayerResult, notes: Footnotes) -> str:
    gap = layer.power_gap
    if gap is not None and abs(gap) < ROUNDING_NOISE:
        gap = 0.0
    return format_percent(gap)


def _certified_gap(layer: LayerResult, notes: Footnotes) -> str:
    gap = layer.certified_gap
    if gap is not None and abs(gap) < ROUNDING_NOISE:
        gap = 0.0
    return format_percent(gap)


def _cumulative(layer: LayerResult, notes: Footnotes) -> str:
    """The product (AutoLip) method's certified bound of this layer's output, whatever method gives the model's
    bound: the other methods (lipsdp) bound the whole model only."""
    return format_number(layer.cumulative_upper, none=UNBOUNDED)


@dataclass(frozen=True)
class ColumnSpec:
    header: str
    justify: Literal["left", "right"]
    cell: Callable[[LayerResult, Footnotes], str]


class Column(Enum):
    """The columns of the per-layer table, in display order."""

    NAME = ColumnSpec("Layer", "left", lambda layer, _: layer.name)
    OP = ColumnSpec("Op", "left", lambda layer, _: op_label(layer))
    INPUT_SHAPE = ColumnSpec("Input shape", "left", lambda layer, _: format_shape(layer.input_shape))
    SIGMA_POWER = ColumnSpec("σ power", "right", lambda layer, _: format_number(layer.sigma_power))
    SIGMA_EXACT = ColumnSpec("σ exact", "right", _sigma_exact)
    SIGMA_RESHAPED = ColumnSpec("σ reshaped", "right", lambda layer, _: format_number(layer.sigma_reshaped))
    SIGMA_UPPER = ColumnSpec(
        "σ upper (certified)", "right", lambda layer, _: format_number(layer.sigma_upper)
    )
    CERTIFIED_GAP = ColumnSpec("Certified gap", "right", _certified_gap)
    POWER_GAP = ColumnSpec("Power gap", "right", _power_gap)
    CUMULATIVE = ColumnSpec("Cumulative bound", "right", _cumulative)  # the product's (see _cumulative)

    @property
    def header(self) -> str:
        return self.value.header

    @property
    def justify(self) -> Literal["left", "right"]:
        return self.value.justify


def layer_rows(layers: Sequence[LayerResult], footnotes: Footnotes) -> list[list[str]]:
    """One row of cells per layer, in :class:`Column` order; skipped reasons go into ``footnotes``."""
    return [[column.value.cell(layer, footnotes) for column in Column] for layer in layers]


# ------------------------------------------------------------------------------- spectral-norm audit


def _audit(layer: LayerResult) -> SpectralNormAudit:
    if layer.audit is None:
        raise ValueError(f"layer {layer.name} has no spectral-norm audit")
    return layer.audit


FLOAT32_NOISE = 1e-6  # |stale| this small is the rounding of float32 u, v (‖u‖·‖v‖ = 1 ± ε), printed as 0


def _stale(layer: LayerResult, _: Footnotes) -> str:
    stale = _audit(layer).stale
    if stale is not None and abs(stale) < FLOAT32_NOISE:
        stale = 0.0
    return format_percent(stale)


def _parametrization(layer: LayerResult, _: Footnotes) -> str:
    audit = _audit(layer)
    return f"{audit.kind} ({audit.style})"


class AuditColumn(Enum):
    """The columns of the spectral-norm audit section (one row per layer that carries an audit)."""

    NAME = ColumnSpec("Layer", "left", lambda layer, _: layer.name)
    STORED_KEY = ColumnSpec("Stored key", "left", lambda layer, _: _audit(layer).stored_key)
    PARAMETRIZATION = ColumnSpec("Parametrization", "left", _parametrization)
    SIGMA_HAT = ColumnSpec("σ̂ (stored u, v)", "right", lambda layer, _: format_number(_audit(layer).sigma_hat))
    SIGMA_RESHAPED_EXACT = ColumnSpec(
        "σ reshaped exact (original)", "right", lambda layer, _: format_number(_audit(layer).sigma_reshaped_exact)
    )
    RESHAPED_AFTER = ColumnSpec(
        "σ reshaped (used weight)", "right", lambda layer, _: format_number(_audit(layer).reshaped_after)
    )
    STALE = ColumnSpec("Stale", "right", _stale)
    LIPSCHITZ = ColumnSpec(
        "Lipschitz (certified)", "right", lambda layer, _: format_number(_audit(layer).lipschitz)
    )
    LIPSCHITZ_EXACT = ColumnSpec(
        "Lipschitz exact", "right", lambda layer, _: format_number(_audit(layer).lipschitz_exact)
    )

    @property
    def header(self) -> str:
        return self.value.header

    @property
    def justify(self) -> Literal["left", "right"]:
        return self.value.justify


def audit_rows(layers: Sequence[LayerResult]) -> list[list[str]]:
    """One row of cells per layer that carries an audit, in :class:`AuditColumn` order."""
    footnotes = Footnotes()  # audit cells make no footnotes
    return [[column.value.cell(layer, footnotes) for column in AuditColumn] for layer in layers if layer.audit]
