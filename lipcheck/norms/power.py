"""Matrix-free spectral-norm methods on a linear operator given by ``apply`` and ``apply_adjoint``.

- :func:`power_iteration`: an ESTIMATE of σ_max from below (every value it returns is ‖A x‖ for a unit x);
  :func:`power_iteration_gram` the same iteration for operators streamed in one pass per step.
- :func:`lanczos_sigma_max`: σ_max to a tight tolerance (Lanczos on the Gram operator, the three-term recurrence;
  ARPACK via ``scipy.sparse.linalg.eigsh`` as the fallback). Exact up to floating point, but NOT a certificate:
  Ritz values approach λ_max from below.

Vectors are float64 arrays of shape ``(batch, n)``: a batch of independent operators (or one, batch 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Apply = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PowerResult:
    """Result of :func:`power_iteration`. ``sigma`` = max over the batch of ``sigmas``."""

    sigma: float
    sigmas: np.ndarray  # (batch,) per-operator estimates, each <= that operator's σ_max
    iterations: int  # (A, Aᵀ) pairs applied
    right_vectors: np.ndarray  # (batch, n_in) the last unit right-vector estimates


class LanczosError(ArithmeticError):
    """Lanczos did not converge (the caller reports sigma_exact as skipped, never a silent approximation)."""


def power_iteration(
    apply: Apply,
    apply_adjoint: Apply,
    n_in: int,
    *,
    batch: int = 1,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    start: np.ndarray | None = None,
) -> PowerResult:
    """Power iteration u = Av/‖Av‖, v = Aᵀu/‖Aᵀu‖ from a seeded Gaussian start (or ``start``, ``(batch, n_in)``):
    an estimate from BELOW.

    ``apply`` maps ``(batch, n_in) -> (batch, n_out)``, ``apply_adjoint`` the reverse. The estimate is
    σ̂ = ‖Aᵀu‖ with ‖u‖ = 1, which satisfies ‖Av‖ <= σ̂ <= σ_max (Cauchy–Schwarz: ‖AᵀAv‖ >= vᵀAᵀAv), so it is
    a true lower bound up to rounding. Stops after ``iterations`` pairs or when every σ̂ changes by less
    than ``tol`` (relative) between two iterations.
    """

    def both(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = apply(v)
        return u, apply_adjoint(u)

    return power_iteration_gram(both, n_in, batch=batch, iterations=iterations, tol=tol, seed=seed, start=start)


def power_iteration_gram(
    apply_gram: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    n_in: int,
    *,
    batch: int = 1,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    start: np.ndarray | None = None,
) -> PowerResult:
    """:func:`power_iteration` for an operator whose ``A v`` and ``AᵀA v`` come out of one pass over it (a matrix
    streamed block by block of rows): ``apply_gram(v)`` returns ``(A v, AᵀA v)`` for ``v`` of shape
    ``(batch, n_in)``. Same start, same iterates in exact arithmetic (Aᵀu with u = Av/‖Av‖ is AᵀAv/‖Av‖), same
    stopping rule, same guarantee: an estimate from BELOW."""
    if start is not None:
        v = np.array(start, dtype=np.float64).reshape(batch, n_in)
    else:
        v = np.random.default_rng(seed).standard_normal((batch, n_in))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sig = np.zeros(batch)
    prev: np.ndarray | None = None
    done = 0
    for done in range(1, max(1, int(iterations)) + 1):  # noqa: B007 - `done` is reported
        u, g = apply_gram(v)
        nu = np.linalg.norm(u, axis=1)
        w = g / np.where(nu > 0, nu, 1.0)[:, None]  # Av = 0 gives AᵀAv = 0: w = 0, as power_iteration has it
        nw = np.linalg.norm(w, axis=1)
        sig = np.maximum(nw, nu)
        live = nw > 0
        v = np.where(live[:, None], w / np.where(live, nw, 1.0)[:, None], v)
        if prev is not None and np.all(np.abs(sig - prev) <= tol * np.maximum(sig, 1e-300)):
            break
        prev = sig
    return PowerResult(sigma=float(sig.max(initial=0.0)), sigmas=sig, iterations=done, right_vectors=v)


def lanczos_ritz_vector(gram_apply: Callable[[Any], Any], start: Any, *, steps: int, tol: float,
                        keep: bool = True) -> Any | None:
    """The top Ritz vector (unit) of at most ``steps`` Lanczos steps on the symmetric PSD ``gram_apply`` from
    ``start``: a start for power iteration far closer to the top than ``start`` (convs, whose top singular values
    cluster: 30 steps do what 100 power iterations do not). Three-term recurrence, stopped once the top Ritz
    pair's relative residual is below ``tol``. Vectors are 1-D numpy arrays or torch tensors, in their own
    precision (float32 steps are fine: only the direction is used, never a value). ``keep=False``: the basis is
    not stored; the recurrence runs a second time to sum the Ritz vector. None when ``start`` is zero or a step
    is not finite."""
    from scipy.linalg import eigh_tridiagonal

    norm0 = math.sqrt(float((start * start).sum()))
    if not math.isfinite(norm0) or norm0 == 0.0:
        return None

    def run(coefficients: np.ndarray | None) -> tuple[list[float], list[float], list[Any] | Any] | None:
        """(alphas, betas, the basis, or Σ_k c_k q_k when ``coefficients`` are given)."""
        q, q_prev, beta_prev = start / norm0, start * 0.0, 0.0
        alphas: list[float] = []
        betas: list[float] = []
        basis: list[Any] = []
        total = start * 0.0
        for k in range(steps if coefficients is None else len(coefficients)):
            if coefficients is not None:
                total += float(coefficients[k]) * q
                if k == len(coefficients) - 1:
                    return alphas, betas, total
            elif keep:
                basis.append(q)
            w = gram_apply(q)
            alpha = float((w * q).sum())
            w = w - alpha * q - beta_prev * q_prev
            beta = math.sqrt(float((w * w).sum()))
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                return None
            alphas.append(alpha)
            betas.append(beta)
            if coefficients is None and ((k + 1) % 5 == 0 or k + 1 == steps or beta <= 1e-6 * abs(alpha)):
                vals, vecs = eigh_tridiagonal(np.array(alphas), np.array(betas[:-1]), select="i", select_range=(k, k))
                if beta <= 1e-6 * abs(alpha) or beta * abs(float(vecs[-1, 0])) <= tol * abs(float(vals[0])):
                    break
            q_prev, q, beta_prev = q, w / beta, beta
        return alphas, betas, basis

    first = run(None)
    if first is None or not first[0]:
        return None
    alphas, betas, basis = first
    k = len(alphas)
    _, vecs = eigh_tridiagonal(np.array(alphas), np.array(betas[:-1]), select="i", select_range=(k - 1, k - 1))
    if keep:
        vec = start * 0.0
        for c, q in zip(vecs[:, 0], basis):
            vec += float(c) * q
    else:
        second = run(vecs[:, 0])
        if second is None:
            return None
        vec = second[2]
    norm = math.sqrt(float((vec * vec).sum()))
    return vec / norm if math.isfinite(norm) and norm > 0.0 else None


def lanczos_sigma_max(
    gram_apply: Apply,
    n: int,
    *,
    v0: np.ndarray | None = None,
    tol: float = 1e-10,
) -> float:
    """σ_max = √λ_max of the symmetric PSD Gram operator ``gram_apply`` (AᵀA or AAᵀ) on vectors of size ``n``.

    Lanczos to relative tolerance ``tol`` on λ (so ~tol/2 on σ): the three-term recurrence without
    reorthogonalization, one product and O(n) work per step. In floating point the extreme Ritz values still
    converge; lost orthogonality only makes converged ones reappear as copies (Paige 1980; Golub & Van Loan §10.3).
    It stops when the top Ritz pair of the tridiagonal T_k has residual β_k·|s_k| <= tol·θ (checked every
    _LANCZOS_CHECK steps), which bounds the distance from θ to an eigenvalue. On conv Grams it takes 25-45 % fewer
    products than implicitly restarted Lanczos with 20 vectors (ARPACK), each without the restarts' passes over
    those vectors (ResNet-50's 64-channel 3×3 conv at 56×56: 285 products in 2.5 s against 372 in 5.7 s).
    Should it not converge in _LANCZOS_MAX_STEPS, ARPACK (scipy ``eigsh``, k=1, which="LA") takes over from the
    same start. ``v0`` warm-starts it (e.g. with the power-iteration vector); without it a seeded Gaussian.
    Exact up to floating point, approached from below; raises :class:`LanczosError` if neither converges.
    Needs ``n >= 3``.
    """
    if n < 3:
        raise ValueError(f"Lanczos needs an operator of size >= 3, got {n}")

    def matvec(x: np.ndarray) -> np.ndarray:
        return np.asarray(gram_apply(np.asarray(x, dtype=np.float64).reshape(1, n)), dtype=np.float64).ravel()

    start = None
    if v0 is not None:
        start = np.asarray(v0, dtype=np.float64).ravel()
        if not np.any(start) or not np.all(np.isfinite(start)):
            start = None
    lam = _lanczos_top(matvec, n, np.random.default_rng(0).standard_normal(n) if start is None else start, tol)
    if lam is None:
        lam = _arpack_top(matvec, n, start, tol)
    return math.sqrt(max(lam, 0.0))


_LANCZOS_CHECK = 5  # steps between convergence checks of the three-term Lanczos
_LANCZOS_MAX_STEPS = 4000  # then ARPACK takes over


def _lanczos_top(matvec: Callable[[np.ndarray], np.ndarray], n: int, start: np.ndarray, tol: float) -> float | None:
    """λ_max by the three-term Lanczos recurrence (see :func:`lanczos_sigma_max`), or None when not converged."""
    from scipy.linalg import eigh_tridiagonal

    q = start / np.linalg.norm(start)
    q_prev = np.zeros(n)
    beta_prev = 0.0
    alphas: list[float] = []
    betas: list[float] = []
    for k in range(1, _LANCZOS_MAX_STEPS + 1):
        w = matvec(q)
        if not np.all(np.isfinite(w)):
            return None
        alpha = float(q @ w)
        w -= alpha * q
        w -= beta_prev * q_prev
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        if k % _LANCZOS_CHECK and k < n and beta > 0.0:
            q_prev, q, beta_prev = q, w / beta, beta
            continue
        theta, s = eigh_tridiagonal(np.array(alphas), np.array(betas[:-1]), select="i", select_range=(k - 1, k - 1))
        lam = float(theta[0])
        scale = max(abs(lam), max(abs(a) for a in alphas))
        if beta <= 1e-14 * scale:  # an invariant subspace: T's eigenvalues are the operator's
            return lam
        if beta * abs(float(s[-1, 0])) <= tol * abs(lam):
            return lam
        q_prev, q, beta_prev = q, w / beta, beta
    return None


def _arpack_top(matvec: Callable[[np.ndarray], np.ndarray], n: int, start: np.ndarray | None, tol: float) -> float:
    """λ_max by implicitly restarted Lanczos (ARPACK), the fallback of :func:`lanczos_sigma_max`."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    try:
        vals = eigsh(op, k=1, which="LA", tol=tol, v0=start, return_eigenvectors=False)
    except (ArpackNoConvergence, ArpackError) as exc:
        raise LanczosError(f"Lanczos (ARPACK) did not converge: {exc}") from exc
    return float(vals[-1])
