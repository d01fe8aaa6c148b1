"""The gate decision: the rounding rule (printed value vs limit), every check, and the baseline check."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lipcheck.gate.baseline import Snapshot
from lipcheck.gate.decision import (
    CheckKind,
    Outcome,
    Thresholds,
    check_growth,
    evaluate,
    format_limit,
    should_fail,
)
from lipcheck.gate.rounding import growth_percent, printed
from lipcheck.report.numbers import format_number
from tests.gate.reports import layer, report

# ------------------------------------------------------------------------------------------ rounding


@pytest.mark.parametrize(
    ("value", "limit", "fails"),
    [
        (2.64149, 2.641, False),  # prints 2.641: passes a limit of 2.641 although 2.64149 > 2.641
        (2.64151, 2.641, True),  # prints 2.642
        (2.641, 2.641, False),
        (2.31848, 2.318, False),  # the MLP's /3/Gemm: printed 2.318
        (10.18, 10.0, True),
        (0.0, 0.0, False),
        (1.0e5, 99_990.0, True),  # prints 1.000e+05
        (None, 10.0, True),  # unbounded
        (math.nan, 10.0, True),
        (math.inf, 1e308, True),
    ],
)
def test_should_fail_compares_the_printed_value(value: float | None, limit: float, fails: bool) -> None:
    assert should_fail(value, limit) is fails


@given(st.floats(min_value=1e-12, max_value=1e12, allow_nan=False), st.floats(min_value=0, max_value=1e12))
def test_verdict_agrees_with_the_printed_number(value: float, limit: float) -> None:
    """Whatever the value: the gate fails exactly when the number the report prints is above the limit."""
    assert should_fail(value, limit) == (float(format_number(value)) > limit)
    assert not should_fail(value, float(format_number(value)))  # the printed number itself always passes


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False))
def test_printed_is_idempotent_and_close(value: float) -> None:
    assert printed(printed(value)) == printed(value)
    assert abs(printed(value) - value) <= 5e-4 * value  # half a unit in the 4th significant digit


def test_growth_is_computed_from_printed_values() -> None:
    assert growth_percent(2.641, 2.909) == pytest.approx(10.15)  # (2.909 - 2.641) / 2.641 = 10.148%
    assert growth_percent(2.64149, 2.64101) == 0.0  # both print 2.641: last-bit noise is no growth
    assert growth_percent(2.0, 1.0) == -50.0
    assert growth_percent(0.0, 0.0) == 0.0
    assert growth_percent(0.0, 1.0) == math.inf
    assert math.isnan(growth_percent(math.nan, 1.0))


def test_format_limit_is_the_number_as_written() -> None:
    assert [format_limit(x) for x in (10.0, 2.5, 0.001, 1e-7)] == ["10", "2.5", "0.001", "1e-07"]


# --------------------------------------------------------------------------------------------- checks


def test_certified_only_by_default() -> None:
    verdict = evaluate(report(2.5), Thresholds())
    assert verdict.passed
    assert [c.check for c in verdict.checks] == [CheckKind.CERTIFIED]
    assert verdict.checks[0].message == "certified upper bound 2.500"


def test_unbounded_fails_and_names_the_node() -> None:
    verdict = evaluate(report(None), Thresholds(max_lipschitz=10.0))
    assert not verdict.passed
    certified, bound = verdict.checks
    assert certified.outcome is Outcome.FAILED and "/MatMul (MatMul)" in certified.message
    assert bound.outcome is Outcome.SKIPPED  # nothing to compare: the failure is the certificate's
    assert verdict.reasons == (certified.message,)


def test_allow_uncertified_lets_an_unbounded_model_through() -> None:
    verdict = evaluate(report(None), Thresholds(max_lipschitz=10.0, allow_uncertified=True))
    assert verdict.passed
    assert [c.outcome for c in verdict.checks] == [Outcome.SKIPPED, Outcome.SKIPPED]
    assert "allowed by allow-uncertified" in verdict.checks[0].message


def test_max_lipschitz() -> None:
    failed = evaluate(report(20.4199), Thresholds(max_lipschitz=10.0))
    check = failed.check(CheckKind.MAX_LIPSCHITZ)
    assert check is not None and check.failed
    assert check.message == "certified upper bound 20.42 > 10"
    assert check.value == 20.42 and check.limit == 10.0
    passed = evaluate(report(20.4199), Thresholds(max_lipschitz=20.42))
    assert passed.passed and passed.checks[1].message == "certified upper bound 20.42 ≤ 20.42"


def test_max_layer_sigma_names_every_layer_above() -> None:
    layers = [layer("a", 1.0), layer("b", 4.509), layer("c", 4.52949), layer("d", math.nan)]
    verdict = evaluate(report(3.0, layers), Thresholds(max_layer_sigma=4.5))
    check = verdict.check(CheckKind.MAX_LAYER_SIGMA)
    assert check is not None and check.failed
    assert [r.layer for r in check.reasons] == ["b", "c", "d"]  # NaN fails too
    assert check.reasons[1].message == "c (Gemm): σ upper 4.529 > 4.5"
    assert check.message.startswith("3 layers have certified σ above 4.5: b 4.509, c 4.529, d nan")
    assert math.isnan(check.value or 0.0)  # the largest (NaN counts as the largest)


def test_max_layer_sigma_passes_with_the_largest_named() -> None:
    verdict = evaluate(report(3.0, [layer("a", 1.0), layer("b", 2.31848)]), Thresholds(max_layer_sigma=2.318))
    assert verdict.passed
    assert verdict.checks[1].message == "largest layer σ upper 2.318 (b) ≤ 2.318"


def test_no_layers_passes_the_layer_check() -> None:
    verdict = evaluate(report(1.0, layers=[]), Thresholds(max_layer_sigma=1.0))
    assert verdict.passed


# ------------------------------------------------------------------------------------------- baseline


def _baseline(upper: float | None, sigmas: dict[str, float]) -> Snapshot:
    base = report(upper, [layer(name, sigma) for name, sigma in sigmas.items()])
    return Snapshot.from_report(base)


def test_growth_over_the_limit_fails_and_lists_the_layers_that_grew() -> None:
    baseline = _baseline(2.641, {"fc1": 1.0, "fc2": 2.0, "gone": 1.0})
    now = report(2.909, [layer("fc1", 1.0), layer("fc2", 2.5), layer("new", 3.0)])
    verdict = evaluate(now, Thresholds(max_increase=5.0), baseline)
    check = verdict.check(CheckKind.MAX_INCREASE)
    assert check is not None and check.failed
    assert check.value == pytest.approx(10.15)
    assert check.message.startswith("certified upper bound 2.641 → 2.909 (+10.15%) > max-increase 5%")
    assert "2 layers grew" in check.message
    assert [r.layer for r in check.reasons] == ["new", "fc2"]  # new layers first, then by growth
    assert check.reasons[1].message == "fc2 (Gemm): σ upper 2.000 → 2.500 (+25.00%)"
    assert verdict.comparison is not None
    assert {c.name: c.change.value for c in verdict.comparison.layers} == {
        "fc1": "same", "fc2": "grew", "new": "added", "gone": "removed",
    }


def test_growth_within_the_limit_passes() -> None:
    verdict = evaluate(report(2.7), Thresholds(max_increase=5.0), _baseline(2.641, {}))
    assert verdict.passed
    assert verdict.checks[-1].message == "certified upper bound 2.641 → 2.700 (+2.234%) ≤ max-increase 5%"


def test_default_max_increase_is_zero_on_printed_values() -> None:
    assert evaluate(report(2.64101), Thresholds(), _baseline(2.64149, {})).passed  # both print 2.641
    assert not evaluate(report(2.642), Thresholds(), _baseline(2.641, {})).passed


def test_losing_the_certificate_fails_the_baseline_check_even_when_allowed() -> None:
    verdict = evaluate(report(None), Thresholds(allow_uncertified=True), _baseline(2.0, {}))
    check = verdict.check(CheckKind.MAX_INCREASE)
    assert check is not None and check.failed
    assert check.message.startswith("certified bound lost: baseline 2.000, now unbounded")


def test_unbounded_on_both_sides_and_gaining_a_certificate_pass() -> None:
    both = evaluate(report(None), Thresholds(allow_uncertified=True), _baseline(None, {}))
    assert both.passed
    gained = evaluate(report(3.0), Thresholds(), _baseline(None, {}))
    assert gained.passed and "baseline: unbounded" in gained.checks[-1].message


def test_growth_without_a_layer_growing_says_so() -> None:
    baseline = _baseline(2.0, {"fc1": 1.25, "fc2": 2.0})
    check = check_growth(evaluate(report(3.0), Thresholds(), baseline).comparison, 1.0)  # type: ignore[arg-type]
    assert check.failed and check.message.endswith("no layer's σ grew (an op's constant or the graph changed)")


def test_updating_the_baseline_shows_the_growth_without_gating() -> None:
    verdict = evaluate(report(3.0), Thresholds(), _baseline(2.0, {}), updating_baseline=True)
    assert verdict.passed
    check = verdict.checks[-1]
    assert check.outcome is Outcome.SKIPPED and check.message.startswith("baseline updated: ")


def test_evaluate_is_pure() -> None:
    args = (report(None), Thresholds(max_lipschitz=1.0, max_layer_sigma=1.0), _baseline(2.0, {"fc1": 1.0}))
    assert evaluate(*args) == evaluate(*args)
