"""The gate decision: one pure function from a report (and a baseline) to a verdict.

The rounding rule (coverage.py's ``should_fail_under``): every number the gate compares is first rounded
the way the report prints it, :func:`~lipcheck.report.numbers.format_number`'s 4 significant digits, and
read back. A check passes when that printed value is at most the limit the user wrote, so the printed number
and the verdict never disagree: a bound printed ``2.641`` passes ``max-lipschitz = 2.641`` and fails
``2.640``. The price is at most half a unit in the 4th digit (0.05% relative): a true bound of 2.64149 passes a
limit of 2.6412. A limit that must hold for the unrounded certificate should be set 0.05% lower.

Growth against a baseline is computed from the two printed bounds, ``(new − old) / old``, and rounded the
same way: ``2.641 → 2.909`` is ``+10.15%``, which anyone can redo from the two printed numbers, and noise
in the last bits of a float (another BLAS, another CPU) never fails a ``max-increase = 0`` gate.

No value (unbounded, ``None``) and NaN fail every comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from lipcheck.gate.baseline import Comparison, Snapshot, compare
from lipcheck.gate.rounding import printed
from lipcheck.report.model import Report
from lipcheck.report.numbers import format_number

__all__ = [
    "CheckKind",
    "CheckResult",
    "Outcome",
    "Reason",
    "Thresholds",
    "Verdict",
    "check_growth",
    "evaluate",
    "format_limit",
    "printed",
    "should_fail",
]


class CheckKind(str, Enum):
    """One requirement on one model: a JUnit test case, a line of the verdict."""

    CERTIFIED = "certified"  # the bound is a finite certificate (unless allow-uncertified)
    MAX_LIPSCHITZ = "max-lipschitz"  # certified upper bound ≤ limit
    MAX_LAYER_SIGMA = "max-layer-sigma"  # every layer's certified σ ≤ limit
    MAX_INCREASE = "max-increase"  # growth of the certified bound over the baseline ≤ limit (percent)


class Outcome(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not evaluated: allowed (uncertified), nothing to compare, baseline being updated


@dataclass(frozen=True)
class Thresholds:
    """What the gate requires. ``None``: the check is not run. ``max_increase`` is a percentage and applies
    only with a baseline (``None`` with a baseline means 0: any growth of the printed bound fails)."""

    max_lipschitz: float | None = None
    max_layer_sigma: float | None = None
    allow_uncertified: bool = False
    max_increase: float | None = None

    @property
    def any(self) -> bool:
        """Some threshold is set (``lipcheck analyze`` gates only then)."""
        return self.max_lipschitz is not None or self.max_layer_sigma is not None or self.allow_uncertified


@dataclass(frozen=True)
class Reason:
    """One item behind a check's outcome: the bound above its limit, a layer above its limit, a layer that grew.

    ``value`` is the number as printed (rounded), ``limit`` the limit as given.
    """

    check: CheckKind
    message: str
    layer: str | None = None
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class CheckResult:
    """One check on one model. ``message`` is one line whatever the outcome; ``reasons`` the details."""

    check: CheckKind
    outcome: Outcome
    message: str
    value: float | None = None  # the compared value, rounded as printed (None: unbounded / not applicable)
    limit: float | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED


@dataclass(frozen=True)
class Verdict:
    """Every check run on one model, in a fixed order (certified, max-lipschitz, max-layer-sigma, max-increase)."""

    checks: tuple[CheckResult, ...]
    comparison: Comparison | None = None  # against the baseline, when there is one

    @property
    def passed(self) -> bool:
        return not any(check.failed for check in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.failed)

    @property
    def reasons(self) -> tuple[str, ...]:
        """One line per failed check (its message), in check order."""
        return tuple(check.message for check in self.failures)

    def check(self, kind: CheckKind) -> CheckResult | None:
        return next((check for check in self.checks if check.check is kind), None)


# --------------------------------------------------------------------------------------------- rounding


def should_fail(value: float | None, limit: float) -> bool:
    """True when ``value``, rounded as the report prints it, is above ``limit``. ``None`` and NaN fail."""
    if value is None:
        return True
    return not printed(value) <= limit


def format_limit(limit: float) -> str:
    """A limit as the user wrote it: ``10``, ``2.5``, ``0.001`` (shortest repr, no trailing ``.0``)."""
    text = repr(float(limit))
    return text[:-2] if text.endswith(".0") else text


def _percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    sign = "+" if value > 0 else ""
    return f"{sign}{format_number(value)}%"


# --------------------------------------------------------------------------------------------- checks


def _shown_bound(report: Report) -> str:
    """The certified bound as printed, with the method that gave it when the report records one: ``5.308 (lipsdp)``."""
    method = report.method
    return format_number(report.upper_bound) + (f" ({method})" if method else "")


def _certified(report: Report, thresholds: Thresholds) -> CheckResult:
    if report.certified and report.upper_bound is not None:
        value = printed(report.upper_bound)
        return CheckResult(CheckKind.CERTIFIED, Outcome.PASSED,
                           f"certified upper bound {_shown_bound(report)}", value=value)
    if report.unbounded:
        nodes = ", ".join(f"{u.node} ({u.op})" for u in report.unbounded[:5])
        more = f" and {len(report.unbounded) - 5} more" if len(report.unbounded) > 5 else ""
        why = f"unbounded: no global Lipschitz constant for {nodes}{more}"
    else:
        why = "no certified upper bound"
    reasons = tuple(
        Reason(CheckKind.CERTIFIED, f"{u.node} ({u.op}): {u.reason}", layer=u.node) for u in report.unbounded
    )
    if thresholds.allow_uncertified:
        return CheckResult(CheckKind.CERTIFIED, Outcome.SKIPPED, f"{why} (allowed by allow-uncertified)",
                           reasons=reasons)
    return CheckResult(CheckKind.CERTIFIED, Outcome.FAILED, why, reasons=reasons)


def _max_lipschitz(report: Report, limit: float) -> CheckResult:
    text_limit = format_limit(limit)
    if report.upper_bound is None or not report.certified:
        return CheckResult(CheckKind.MAX_LIPSCHITZ, Outcome.SKIPPED,
                           f"no certified upper bound to compare with {text_limit}", limit=limit)
    value = printed(report.upper_bound)
    shown = _shown_bound(report)
    if should_fail(report.upper_bound, limit):
        message = f"certified upper bound {shown} > {text_limit}"
        return CheckResult(CheckKind.MAX_LIPSCHITZ, Outcome.FAILED, message, value=value, limit=limit,
                           reasons=(Reason(CheckKind.MAX_LIPSCHITZ, message, value=value, limit=limit),))
    return CheckResult(CheckKind.MAX_LIPSCHITZ, Outcome.PASSED, f"certified upper bound {shown} ≤ {text_limit}",
                       value=value, limit=limit)


def _max_layer_sigma(report: Report, limit: float) -> CheckResult:
    text_limit = format_limit(limit)
    if not report.layers:
        return CheckResult(CheckKind.MAX_LAYER_SIGMA, Outcome.PASSED,
                           f"no weighted layers (every layer σ ≤ {text_limit})", limit=limit)
    above = [layer for layer in report.layers if should_fail(layer.sigma_upper, limit)]
    reasons = tuple(
        Reason(
            CheckKind.MAX_LAYER_SIGMA,
            f"{layer.name} ({layer.op}): σ upper {format_number(layer.sigma_upper)} > {text_limit}",
            layer=layer.name,
            value=printed(layer.sigma_upper),
            limit=limit,
        )
        for layer in above
    )
    # NaN counts as the largest: it fails, and it is what the message should name
    largest = max(report.layers, key=lambda layer: math.inf if math.isnan(layer.sigma_upper) else layer.sigma_upper)
    value = printed(largest.sigma_upper)
    if above:
        n = len(above)
        names = ", ".join(f"{layer.name} {format_number(layer.sigma_upper)}" for layer in above[:5])
        more = f" and {n - 5} more" if n > 5 else ""
        message = (f"{n} layer{'s have' if n != 1 else ' has'} certified σ above {text_limit}: {names}{more}")
        return CheckResult(CheckKind.MAX_LAYER_SIGMA, Outcome.FAILED, message, value=value, limit=limit,
                           reasons=reasons)
    return CheckResult(
        CheckKind.MAX_LAYER_SIGMA, Outcome.PASSED,
        f"largest layer σ upper {format_number(largest.sigma_upper)} ({largest.name}) ≤ {text_limit}",
        value=value, limit=limit,
    )


def check_growth(comparison: Comparison, limit: float, *, updating: bool = False) -> CheckResult:
    """The max-increase check on a comparison: the certified bound's growth (percent, printed values) ≤ limit.

    Layers that grew are the reasons' details. With ``updating`` the outcome is SKIPPED (shown, not gating).
    """
    text_limit = format_limit(limit)
    before, after = comparison.before.upper_bound, comparison.after.upper_bound
    grown = tuple(
        Reason(CheckKind.MAX_INCREASE, change.describe(), layer=change.name, value=change.growth)
        for change in comparison.grown_layers
    )
    if before is None and after is None:
        outcome, message = Outcome.PASSED, "unbounded, as in the baseline"
    elif before is None:
        outcome, message = Outcome.PASSED, f"certified upper bound {format_number(after)} (baseline: unbounded)"
    elif after is None:
        outcome = Outcome.FAILED
        message = f"certified bound lost: baseline {format_number(before)}, now unbounded"
    else:
        growth = comparison.growth
        outcome = Outcome.FAILED if growth is None or not growth <= limit else Outcome.PASSED
        sign = ">" if outcome is Outcome.FAILED else "≤"
        message = (f"certified upper bound {format_number(before)} → {format_number(after)} "
                   f"({_percent(growth)}) {sign} max-increase {text_limit}%")
    if updating:
        return CheckResult(CheckKind.MAX_INCREASE, Outcome.SKIPPED, f"baseline updated: {message}",
                           value=comparison.growth, limit=limit, reasons=grown)
    reasons: tuple[Reason, ...] = ()
    if outcome is Outcome.FAILED:
        reasons = grown
        if grown:
            n = len(grown)
            message += f"; {n} layer{'s' if n != 1 else ''} grew (most: {comparison.grown_layers[0].short()})"
        elif after is not None:
            message += "; no layer's σ grew (an op's constant or the graph changed)"
    return CheckResult(CheckKind.MAX_INCREASE, outcome, message, value=comparison.growth, limit=limit,
                       reasons=reasons)


def evaluate(
    report: Report,
    thresholds: Thresholds,
    baseline: Snapshot | None = None,
    *,
    updating_baseline: bool = False,
) -> Verdict:
    """The gate: every check ``thresholds`` asks for, on ``report`` (and against ``baseline``).

    Pure: same inputs, same verdict. The certificate is always checked; a limit that is ``None`` is not.
    With ``updating_baseline`` the comparison is made and shown but does not gate (the report becomes the
    new baseline).
    """
    checks = [_certified(report, thresholds)]
    if thresholds.max_lipschitz is not None:
        checks.append(_max_lipschitz(report, thresholds.max_lipschitz))
    if thresholds.max_layer_sigma is not None:
        checks.append(_max_layer_sigma(report, thresholds.max_layer_sigma))
    comparison = None
    if baseline is not None:
        comparison = compare(baseline, Snapshot.from_report(report))
        limit = thresholds.max_increase if thresholds.max_increase is not None else 0.0
        checks.append(check_growth(comparison, limit, updating=updating_baseline))
    return Verdict(checks=tuple(checks), comparison=comparison)

