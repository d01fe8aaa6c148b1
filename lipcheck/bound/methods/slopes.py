"""Slope restrictions φ' ∈ [α, β] of element-wise activations, for the quadratic constraints of LipSDP-type methods.

An interval here must contain every difference quotient (φ(x) − φ(y))/(x − y), i.e. every value of φ' (or, for
piecewise-linear φ, every slope). Smooth extrema were computed by sampling φ' on a fine grid of [−30, 30] and rounded
OUTWARD (GELU erf form [−0.128904, 1.128904], tanh form [−0.128993, 1.128993]; SiLU [−0.099839, 1.099839];
Mish [−0.112526, 1.088498]); tests/bound/test_methods_slopes.py re-checks them.
"""

from __future__ import annotations

import math

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772

# op type -> (α, β), for activations without attributes that change the interval
FIXED_SLOPES: dict[str, tuple[float, float]] = {
    "Relu": (0.0, 1.0),
    "Tanh": (0.0, 1.0),
    "Sigmoid": (0.0, 0.25),
    "Softplus": (0.0, 1.0),
    "Softsign": (0.0, 1.0),
    "Atan": (0.0, 1.0),
    "Gelu": (-0.12900, 1.12900),
    "Swish": (-0.09985, 1.09985),  # SiLU (Swish with alpha = 1 only: see slope_interval)
    "Mish": (-0.11253, 1.08850),
    "HardSwish": (-0.5, 1.5),  # (2x + 3)/6 on [−3, 3], 0 below, 1 above
    "Selu": (0.0, SELU_LAMBDA * SELU_ALPHA * (1.0 + 1e-12)),
    "Identity": (1.0, 1.0),
    "Dropout": (1.0, 1.0),  # inference
    "Abs": (-1.0, 1.0),
    "Neg": (-1.0, -1.0),
}


def slope_interval(op_type: str, attrs: dict[str, float] | None = None) -> tuple[float, float] | None:
    """[α, β] containing every slope of the activation ``op_type`` with ONNX attributes ``attrs``; None if the op is
    not an element-wise slope-restricted activation this module knows."""
    attrs = attrs or {}
    if op_type in FIXED_SLOPES:
        if op_type == "Swish" and float(attrs.get("alpha", 1.0)) != 1.0:
            return None
        return FIXED_SLOPES[op_type]
    if op_type == "LeakyRelu":
        a = float(attrs.get("alpha", 0.01))
        return (min(a, 1.0), max(a, 1.0))
    if op_type in ("Elu", "Celu"):
        # x > 0: 1; x < 0: α·e^x (Elu) or e^(x/α) (Celu), strictly between 0 and α (resp. 1)
        a = float(attrs.get("alpha", 1.0))
        if op_type == "Celu":
            return (0.0, 1.0) if a > 0 else None
        return (min(0.0, a), max(1.0, a))
    if op_type == "HardSigmoid":
        a = float(attrs.get("alpha", 0.2))
        return (min(0.0, a), max(0.0, a))
    if op_type == "Clip":
        return (0.0, 1.0)
    return None


def is_valid_interval(alpha: float, beta: float) -> bool:
    return math.isfinite(alpha) and math.isfinite(beta) and alpha <= beta
