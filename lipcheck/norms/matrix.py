"""Spectral norm σ_max of dense matrices (Gemm, MatMul, 1×1 convs): estimate, exact and certified values.

- ``sigma_power``: power iteration from a seeded start (:func:`lipcheck.norms.power.power_iteration`), an
  estimate from below.
- ``sigma_exact``: float64 dense SVD when the matrix has at most ``exact_limit`` entries, else Lanczos on
  the Gram matrix of the smaller side (ARPACK, tolerance 1e-10).
- ``sigma_upper``: certified. After a dense SVD: the SVD value times :func:`rounding_margin` (max(m, n)
  terms; LAPACK's bound |σ̂ − σ| <= p(m, n)·ε·σ_max). Otherwise the Gram iteration bound (Delattre, Barthélemy,
  Araujo & Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers by Gram Iteration",
  ICML 2023), which is an upper bound at every iterate, with its own rounding margin.
"""

from __future__ import annotations

import math

import numpy as np

from lipcheck.norms.margin import as_float64, rounding_margin
from lipcheck.norms.power import LanczosError, lanczos_sigma_max, power_iteration
from lipcheck.report.model import NormResult

GRAM_MAX_ITERATIONS = 30
GRAM_MAX_DIM = 8192  # above this smaller side the r×r Gram products are too costly: Frobenius fallback
LANCZOS_TOL = 1e-10
GRAM_STOP_GAP = 1e-6  # stop Gram iteration once within this relative gap of a known lower bound


def sigma_max_svd(ws: np.ndarray) -> np.ndarray:
    """Exact (float64 dense SVD, singular values only) σ_max of each matrix in a ``(B, m, n)`` stack."""
    ws = np.asarray(ws, dtype=np.float64)
    if ws.shape[-1] == 0 or ws.shape[-2] == 0:
        return np.zeros(ws.shape[:-2])
    return np.linalg.svd(ws, compute_uv=False)[..., 0]


def gram_iteration_bound(
    w: np.ndarray,
    *,
    max_iterations: int = GRAM_MAX_ITERATIONS,
    lower: float = 0.0,
    stop_gap: float = GRAM_STOP_GAP,
) -> float:
    """Certified upper bound on σ_max(w) by Gram iteration (Delattre et al., ICML 2023), margin included.

    G₀ = W, G_{t+1} = G_tᵀG_t, each G_t rescaled by its Frobenius norm f_t with the scales accumulated in
    log space (log S_{t+1} = 2(log S_t + log f_t)), so nothing over- or underflows. At every iterate
    σ_max^(2^t) = σ_max(Ĝ_t) <= ‖Ĝ_t‖_F, i.e. σ_max <= (S_t·‖G_t‖_F)^(1/2^t): the Schatten-2^(t+1) norm of W,
    which decreases to σ_max quadratically once the top singular value separates. The first product is
    taken on the smaller side (r = min(m, n)). Stops when the bound stalls, after ``max_iterations``, or
    once within ``stop_gap`` of ``lower`` (a known lower bound such as a Lanczos value).

    Rounding: each r×r product has a relative Frobenius error <= γ_r·√r, and the 2^-t root damps the error
    of step t, so the total stays below ~2·r^1.5·ε; the margin uses that count.
    """
    w = np.asarray(w, dtype=np.float64)
    m, n = w.shape
    r = min(m, n)
    if r == 0:
        return 0.0
    g = w if m >= n else w.T  # gᵀg is r×r
    log_scale = 0.0
    best = math.inf
    for t in range(max_iterations + 1):
        f = float(np.linalg.norm(g))
        if f == 0.0:
            return 0.0
        bound = math.exp((math.log(f) + log_scale) / 2.0**t)
        stalled = bound >= best * (1.0 - 1e-12)
        best = min(best, bound)
        if stalled or (lower > 0.0 and best <= lower * (1.0 + stop_gap)):
            break
        g = g / f
        g = g.T @ g
        g = 0.5 * (g + g.T)  # symmetric PSD in exact arithmetic; keep it so
        log_scale = 2.0 * (log_scale + math.log(f))
    return best * rounding_margin(2.0 * r**1.5)


def frobenius_bound(w: np.ndarray) -> float:
    """Certified (loose) upper bound ‖w‖_F on σ_max, with a rounding margin."""
    w = np.asarray(w, dtype=np.float64)
    return float(np.linalg.norm(w)) * rounding_margin(w.size)


def matrix_norms(
    w: np.ndarray,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
) -> NormResult:
    """σ_max of the 2-D matrix ``w`` (the map x ↦ w @ x; x ↦ x @ w has the same σ).

    sigma_power: estimate from below; sigma_exact: dense SVD ("svd") when ``w.size <= exact_limit``, else
    Lanczos ("lanczos"); sigma_upper: certified ("svd+margin" or "gram", see module docstring).
    """
    w = as_float64(w, "matrix")
    if w.ndim != 2:
        raise ValueError(f"matrix_norms expects a 2-D matrix, got shape {w.shape}")
    return batched_matrix_norms(w[None], iterations=iterations, tol=tol, seed=seed, exact_limit=exact_limit)


def batched_matrix_norms(
    ws: np.ndarray,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
) -> NormResult:
    """σ = max over b of σ_max(ws[b]) for a ``(B, m, n)`` stack (batched MatMul, grouped 1×1 conv blocks).

    Same guarantees as :func:`matrix_norms`; ``exact_limit`` applies to the entries of ONE matrix (m·n):
    each SVD costs what its own size says, however many there are. Thin matrices (min(m, n) <= 2) always
    get the SVD.
    """
    ws = as_float64(ws, "matrix")
    if ws.ndim != 3:
        raise ValueError(f"batched_matrix_norms expects a (B, m, n) stack, got shape {ws.shape}")
    b, m, n = ws.shape
    if ws.size == 0:
        return NormResult(0.0, 0, 0.0, "svd", 0.0, "svd+margin")

    power = power_iteration(
        lambda v: np.matmul(ws, v[:, :, None])[:, :, 0],
        lambda u: np.matmul(u[:, None, :], ws)[:, 0, :],
        n,
        batch=b,
        iterations=iterations,
        tol=tol,
        seed=seed,
    )

    if m * n <= exact_limit or min(m, n) <= 2:  # a thin matrix's SVD is cheap whatever its size
        exact = float(sigma_max_svd(ws).max())
        upper = exact * rounding_margin(max(m, n))
        return NormResult(
            sigma_power=power.sigma,
            power_iterations=power.iterations,
            sigma_exact=exact,
            exact_method="svd",
            sigma_upper=max(upper, power.sigma),
            upper_method="svd+margin",
        )

    exact_values: list[float] = []
    skipped: str | None = None
    uppers: list[float] = []
    upper_method = "gram"
    for k in range(b):
        w = ws[k]
        lower = float(power.sigmas[k])
        if skipped is None:
            try:
                ex = _lanczos_matrix(w, power.right_vectors[k])
                exact_values.append(ex)
                lower = max(lower, ex)
            except LanczosError as exc:
                skipped = str(exc)
        if min(m, n) > GRAM_MAX_DIM:
            uppers.append(frobenius_bound(w))
            upper_method = "frobenius"
        else:
            uppers.append(gram_iteration_bound(w, lower=lower))
    sigma_exact = None if skipped is not None else max(exact_values)
    # max() with values that are <= σ keeps the certificate and the invariant power <= exact <= upper
    sigma_upper = max(max(uppers), power.sigma, sigma_exact or 0.0)
    return NormResult(
        sigma_power=power.sigma,
        power_iterations=power.iterations,
        sigma_exact=sigma_exact,
        exact_method="skipped" if skipped is not None else "lanczos",
        sigma_upper=sigma_upper,
        upper_method=upper_method,
        exact_skipped=skipped,
    )


def _lanczos_matrix(w: np.ndarray, v_right: np.ndarray) -> float:
    """Lanczos on the Gram matrix of the smaller side of ``w``, warm-started from the power vector."""
    m, n = w.shape
    if not np.any(w):
        return 0.0
    if n <= m:
        return lanczos_sigma_max(lambda v: (w.T @ (w @ v[0]))[None], n, v0=v_right, tol=LANCZOS_TOL)
    return lanczos_sigma_max(lambda u: (w @ (w.T @ u[0]))[None], m, v0=w @ v_right, tol=LANCZOS_TOL)
