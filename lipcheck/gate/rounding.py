"""Numbers as the report prints them: what the gate compares (see :mod:`lipcheck.gate.decision`)."""

from __future__ import annotations

import math

from lipcheck.report.numbers import format_number

__all__ = ["growth_percent", "printed"]


def printed(value: float) -> float:
    """``value`` rounded to the digits the report prints (4 significant), read back: ``2.64149 -> 2.641``.

    NaN and ±Inf come back unchanged.
    """
    if not math.isfinite(value):
        return value
    return float(format_number(value))


def growth_percent(before: float, after: float) -> float:
    """Relative change ``after`` over ``before`` in percent, from the printed values, rounded as printed.

    ``2.641 -> 2.909`` is ``10.15``. From 0: 0 when still 0, +inf otherwise. NaN in, NaN out.
    """
    old, new = printed(before), printed(after)
    if math.isnan(old) or math.isnan(new):
        return math.nan
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    if math.isinf(old):
        return 0.0 if new == old else -100.0
    return printed((new - old) / abs(old) * 100.0)
