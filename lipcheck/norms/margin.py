"""Explicit floating-point margins that turn float64 results into certified upper bounds.

Every value lipcheck calls *certified* is computed in float64 and then multiplied by
``rounding_margin(n_terms) = 1 + MARGIN_C · n_terms · eps64`` where ``n_terms`` is a generous count of the
floating-point operations that feed one result (matrix dimension for an SVD, number of summed terms for an
FFT or a Gram product, ...). Standard a-priori error analysis (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2002; LAPACK Users' Guide §4.9 for the SVD: |σ̂ᵢ − σᵢ| ≤ p(m, n)·ε·σ_max with p a modest
function of the dimensions) bounds the relative error of each such value by a small multiple of
``n_terms · eps64``; ``MARGIN_C = 50`` leaves a wide safety factor on top. The margins are tiny (1e-12 to
1e-8 for realistic layers), so they never matter for the reported numbers, but they keep "certified" honest
about rounding. This is a margin at the level of standard error analysis, not interval arithmetic.
"""

from __future__ import annotations

import numpy as np

EPS64: float = float(np.finfo(np.float64).eps)
MARGIN_C: float = 50.0


def rounding_margin(n_terms: float) -> float:
    """The relative factor ``1 + MARGIN_C · max(n_terms, 1) · eps64`` (>= 1) that covers float64 rounding."""
    return 1.0 + MARGIN_C * max(float(n_terms), 1.0) * EPS64


def as_float64(array: np.ndarray, what: str = "weight") -> np.ndarray:
    """``array`` as a float64 ndarray (float32 -> float64 is exact); refuses NaN and Inf."""
    from lipcheck.errors import InvalidWeightsError

    out = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise InvalidWeightsError(f"{what} holds NaN or Inf values")
    return out
