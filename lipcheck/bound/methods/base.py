"""The small interface every composition method returns: one certified (or not) value with its provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodResult:
    """What a composition method found.

    ``value`` is a certified upper bound on the model's L2 Lipschitz constant when ``certified`` is True; when it is
    False the method could not verify anything and ``value`` is ``None`` (no unverified number is ever reported).
    ``detail`` holds method-specific figures for reports and benches (starting value, iterations, margins, ...).
    """

    method: str
    value: float | None
    seconds: float
    certified: bool
    detail: Mapping[str, Any] = field(default_factory=dict)
