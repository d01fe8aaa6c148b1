"""Slope intervals of activations (lipcheck.bound.methods.slopes) against sampled derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from lipcheck.bound.methods.slopes import slope_interval

X = np.linspace(-30, 30, 2_000_001)
SIG = 1 / (1 + np.exp(-X))
PHI = np.exp(-X * X / 2) / np.sqrt(2 * np.pi)
C = np.sqrt(2 / np.pi)
TH = np.tanh(C * (X + 0.044715 * X**3))
SP_T = np.tanh(np.log1p(np.exp(X)))

DERIVATIVES = {
    "Relu": (X > 0).astype(float),
    "Tanh": 1 - np.tanh(X) ** 2,
    "Sigmoid": SIG * (1 - SIG),
    "Softplus": SIG,
    "Softsign": 1 / (1 + np.abs(X)) ** 2,
    "Gelu": np.concatenate([0.5 * (1 + erf(X / np.sqrt(2))) + X * PHI,
                            0.5 * (1 + TH) + 0.5 * X * (1 - TH * TH) * C * (1 + 3 * 0.044715 * X * X)]),
    "Swish": SIG * (1 + X * (1 - SIG)),
    "Mish": SP_T + X * (1 - SP_T * SP_T) * SIG,
    "HardSwish": np.where(X < -3, 0.0, np.where(X > 3, 1.0, (2 * X + 3) / 6)),
    "Selu": np.where(X > 0, 1.0507009873554805, 1.0507009873554805 * 1.6732632423543772 * np.exp(np.minimum(X, 0))),
}


@pytest.mark.parametrize("op", sorted(DERIVATIVES))
def test_interval_contains_sampled_derivative(op: str) -> None:
    interval = slope_interval(op)
    assert interval is not None
    d = DERIVATIVES[op]
    assert interval[0] <= d.min() and d.max() <= interval[1]


@pytest.mark.parametrize("op, attrs, expected", [
    ("LeakyRelu", {"alpha": 0.2}, (0.2, 1.0)),
    ("LeakyRelu", {"alpha": 1.5}, (1.0, 1.5)),
    ("Elu", {"alpha": 2.0}, (0.0, 2.0)),
    ("HardSigmoid", {"alpha": 0.2}, (0.0, 0.2)),
    ("Swish", {"alpha": 2.0}, None),
    ("Exp", {}, None),
])
def test_attribute_intervals(op: str, attrs: dict[str, float], expected: tuple[float, float] | None) -> None:
    assert slope_interval(op, attrs) == expected
