"""The one number formatter every format uses (4 significant digits), so that the table, the markdown, the
summary and the report's own summary sentences print the same digits for the same value.

Kept apart from :mod:`lipcheck.report.columns` so that :mod:`lipcheck.report.model` can use it too.
"""

from __future__ import annotations

import math

__all__ = ["DASH", "SIGNIFICANT_DIGITS", "format_number", "format_percent"]

SIGNIFICANT_DIGITS = 4
DASH = "—"  # "not applicable" (e.g. σ reshaped of a non-conv)


def format_number(value: float | None, *, none: str = DASH) -> str:
    """``value`` with 4 significant digits, trailing zeros kept (``2.000``, ``0.2500``, ``1.235e+05``)."""
    if value is None:
        return none
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:#.{SIGNIFICANT_DIGITS}g}"
    return text[:-1] if text.endswith(".") else text  # "1234." -> "1234"


def format_percent(fraction: float | None, *, none: str = DASH) -> str:
    """A fraction as a percentage with 4 significant digits (``0.0123`` -> ``1.230%``)."""
    if fraction is None:
        return none
    return format_number(fraction * 100.0) + "%"
