"""Golden comparisons that pass on every x86 CPU and BLAS build: text and layout exact, each number at the
precision its method guarantees.

Across CPUs (Intel / AMD) and BLAS builds the last bits of a reduction differ, and an iteration that stops at a
relative change of 1e-6 (power iteration) may stop one step earlier or later. So:

- σ exact / σ reshaped (SVD, Lanczos to 1e-10): 1e-8 relative;
- certified values (σ upper, the composed bound, cumulative bounds): 1e-5 relative (the circular-embedding
  certificate is placed within 5e-6 of its reference, :mod:`tests.norms.test_circular_bound`), and never below σ
  exact;
- estimates (σ power, the composed estimate): 1e-4 relative (the parity tolerance of estimates), never above σ
  exact;
- the power gap (exact − power) / exact: 1e-4 absolute, the certified gap certified / exact − 1: 1e-5 absolute (each
  a difference of the values above); the exact composition: 1e-5 relative;
- a value found by a search (``value`` / ``upper_bound`` in an object whose ``method`` is lipsdp, blocks, or one of
  a blocks piece's searched methods: residual, pieces): 1e-3 relative. lipsdp's L-BFGS multiplier search follows the
  BLAS's last bits: 1 and 2 threads gave 5.30827 and 5.30902 on the sample MLP (1.4e-4), and either is certified;
- timings (``seconds``; ``<number> s`` in text): any non-negative value;
- settings, names, shapes, integers: exact.

Text formats print 4 significant digits: numbers are compared to ±2 units of the 4th digit (a value on a rounding
boundary may print either way), percentages to 0.01 percentage points, integers exactly; everything that is not a
number must match to the letter, with runs of spaces and rule characters (─, -) folded, because a number's printed
width sets a table column's width.
"""

from __future__ import annotations

import math
import re
from typing import Any

REL = {
    "sigma_exact": 1e-8,
    "sigma_reshaped": 1e-8,
    "sigma_upper": 1e-5,
    "lipschitz": 1e-5,
    "upper_bound": 1e-5,
    "cumulative_upper": 1e-5,
    "exact_composition": 1e-5,  # composed exact values and closed-form constants
    "value": 1e-5,  # a certified bound of a method or a blocks piece
    "product": 1e-5,  # a blocks piece's product factor (certified)
    "sigma_power": 1e-4,
    "estimate": 1e-4,
    "cumulative_estimate": 1e-4,
}
ABS = {"power_gap": 1e-4, "certified_gap": 1e-5}  # differences of values known to 1e-4 / 1e-5 relative
LIPSDP_REL = 1e-3
_LIPSDP_KEYS = ("upper_bound", "value")  # in an object whose "method" is one of SEARCHED
SEARCHED = ("lipsdp", "blocks", "residual", "pieces")
_TIMING = re.compile(r"(?<![\w.])<?\d+(?:\.\d+)?(?:e[-+]?\d+)? s\b")
DEFAULT_REL = 1e-9  # anything else (closed-form constants, settings): exact up to its own rounding


def _check_number(key: str, a: float, b: float, where: str, lipsdp: bool = False) -> None:
    if key == "seconds":
        assert a >= 0 and b >= 0, f"{where}: negative time {a!r} / {b!r}"
        return
    if lipsdp and key in _LIPSDP_KEYS:
        assert math.isclose(a, b, rel_tol=LIPSDP_REL), f"{where}: {a!r} != {b!r} (rel {LIPSDP_REL}, lipsdp)"
        return
    if key in ABS:
        assert abs(a - b) <= ABS[key], f"{where}: {a!r} != {b!r} (±{ABS[key]})"
        return
    rel = REL.get(key, DEFAULT_REL)
    assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-300), f"{where}: {a!r} != {b!r} (rel {rel})"


def _check_layer_order(layer: dict[str, Any], where: str) -> None:
    """power ≤ exact ≤ upper, whatever machine computed them."""
    exact, power, upper = layer.get("sigma_exact"), layer.get("sigma_power"), layer.get("sigma_upper")
    if isinstance(exact, float) and isinstance(upper, float):
        assert upper >= exact * (1 - 1e-12), f"{where}: certified {upper!r} below exact {exact!r}"
    if isinstance(exact, float) and isinstance(power, float):
        assert power <= exact * (1 + 1e-9), f"{where}: estimate {power!r} above exact {exact!r}"


def compare_json(actual: Any, expected: Any, where: str = "$", key: str = "", lipsdp: bool = False) -> None:
    """Structural equality; floats at their method's precision; the assertion names the first differing path."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(actual, float) or isinstance(expected, float):
        assert isinstance(actual, (int, float)) and isinstance(expected, (int, float)), (
            f"{where}: {actual!r} != {expected!r}"
        )
        _check_number(key, float(actual), float(expected), where, lipsdp)
    elif isinstance(actual, dict):
        assert isinstance(expected, dict) and actual.keys() == expected.keys(), (
            f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        )
        if "sigma_upper" in actual:
            _check_layer_order(actual, where)
        by_lipsdp = actual.get("method") in SEARCHED
        for k in actual:
            compare_json(actual[k], expected[k], f"{where}.{k}", k, by_lipsdp)
    elif isinstance(actual, list):
        assert isinstance(expected, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(actual, expected)):
            compare_json(x, y, f"{where}[{i}]", key)
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e[-+]?\d+)?)(%?)")
_FOLD = re.compile(r"[ ─\-]+")


def _skeleton(text: str) -> tuple[str, list[tuple[str, str]]]:
    numbers: list[tuple[str, str]] = []

    def keep(match: re.Match[str]) -> str:
        numbers.append((match.group(1), match.group(2)))
        return "#" + match.group(2)

    masked = _NUMBER.sub(keep, _TIMING.sub("<time>", text))
    return "\n".join(_FOLD.sub(" ", line).rstrip() for line in masked.splitlines()), numbers


def _printed_close(a: str, b: str, percent: bool) -> bool:
    if a == b:
        return True
    if re.fullmatch(r"\d+", a) and re.fullmatch(r"\d+", b):
        return False  # counts, shapes, iterations: exact
    x, y = float(a), float(b)
    if percent:
        return abs(x - y) <= 0.01
    # ±2 units of the last printed digit of the coarser of the two
    digits = max(len(s.split("e")[0].split(".")[1]) if "." in s.split("e")[0] else 0 for s in (a, b))
    exponent = max(int(s.split("e")[1]) if "e" in s else 0 for s in (a, b))
    return abs(x - y) <= 2 * 10.0 ** (exponent - digits) + 1e-12 * max(abs(x), abs(y))


def compare_text(actual: str, expected: str, name: str = "output") -> None:
    """Layout and words exact; printed numbers to the precision of their 4 printed digits (see the module doc)."""
    skel_a, nums_a = _skeleton(actual)
    skel_b, nums_b = _skeleton(expected)
    if skel_a != skel_b:
        for k, (la, lb) in enumerate(zip(skel_a.splitlines(), skel_b.splitlines())):
            assert la == lb, f"{name} line {k + 1} differs:\n  got:      {la}\n  expected: {lb}"
        raise AssertionError(f"{name}: {len(skel_a.splitlines())} lines, expected {len(skel_b.splitlines())}")
    for (a, pa), (b, pb) in zip(nums_a, nums_b):
        assert pa == pb and _printed_close(a, b, bool(pa)), f"{name}: printed {a}{pa}, expected {b}{pb}"
