"""The LipSDP-Neuron matrix of an MLP chain and its floating-point certificate.

Chain: x_0 = x, z_i = W_i x_{i−1} + b_i, x_i = φ_i(z_i) for i = 1..k−1, y = W_k x_{k−1} + b_k, each φ_i element-wise
with every slope in [α_i, β_i]. For differences Δx_i = S_i Δz_i with S_i diagonal in [α_i, β_i], so for every diagonal
T_i ⪰ 0 the quadratic constraint

    q_i = (Δx_i − α_iΔz_i)ᵀ T_i (β_iΔz_i − Δx_i) = −Δx_iᵀT_iΔx_i + (α_i+β_i)Δx_iᵀT_iW_iΔx_{i−1}
          − α_iβ_i Δx_{i−1}ᵀW_iᵀT_iW_iΔx_{i−1}  ≥ 0

holds (Fazlyab et al., NeurIPS 2019). If the quadratic form v ↦ ρ‖Δx_0‖² − ‖W_kΔx_{k−1}‖² − Σ q_i is ≥ 0 for every
v = (Δx_0, …, Δx_{k−1}), then ‖Δy‖² ≤ ρ‖Δx_0‖² − Σ q_i ≤ ρ‖Δx_0‖², i.e. L ≤ √ρ. That form is vᵀP(ρ, T)v with the
block-tridiagonal (blocks of sizes d_0 … d_{k−1}), with a_i = α_iβ_i and m_i = (α_i+β_i)/2,

    P_00 = ρI + a_1 W_1ᵀT_1W_1,   P_ii = T_i + a_{i+1} W_{i+1}ᵀT_{i+1}W_{i+1}  (0 < i < k−1),
    P_{k−1,k−1} = T_{k−1} − W_kᵀW_k  (k ≥ 2; for k = 1, P = ρI − W_1ᵀW_1),   P_{i,i−1} = −m_i T_iW_i,

and the certificate is P(ρ, T) ⪰ 0. The bound also covers every linear map W_k S_{k−1}…S_1W_1 with S_i diagonal in
[α_i, β_i] (the argument only uses Δx_i = S_iΔz_i), which the tests use as an exact lower reference.

Certificate in floating point (:func:`certify_psd`): F = fl(P) is formed with an entry-wise error |P − F| ≤ γ·|P|abs
(|P|abs: the same sums with absolute values), so ‖P − F‖₂ ≤ γ·max row sum of |P|abs =: e_form. A Cholesky factorization
of G = fl(F − δI) that completes gives R̂ᵀR̂ = G + ΔG with |ΔG| ≤ γ_{n+1}|R̂ᵀ||R̂| (Higham, Accuracy and Stability of
Numerical Algorithms, Thm 10.3, for any order of the inner products), hence λ_min(G) ≥ −γ_{n+1}‖R̂‖_F² ≥
−γ_{n+1}·tr(G)/(1 − γ_{n+1}) with tr(G) ≤ (1+ε)Σ|F_ii|. With δ = 2·(e_form + γ_{n+1}Σ|F_ii| + ε·max|F_ii|) this gives
F ⪰ e_form·I, so P ⪰ 0 exactly. Every γ is the generous :func:`lipcheck.norms.margin.rounding_margin` − 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lipcheck.norms.margin import EPS64, rounding_margin

# above this order P is factored in LAPACK's banded storage (dpbtrf: the same algorithm restricted to the band)
DENSE_MAX_ORDER = 4096


def _gamma(n: float) -> float:
    return rounding_margin(n) - 1.0


def block_sizes(weights: Sequence[np.ndarray]) -> list[int]:
    """d_0 … d_{k−1}: the sizes of the diagonal blocks of P."""
    return [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights[:-1]]


def lmi_blocks(
    weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], rho: float, ts: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(diagonal blocks P_ii, sub-diagonal blocks P_{i,i−1} for i = 1..k−1, row sums of |P|abs per block), float64."""
    k = len(weights)
    sizes = block_sizes(weights)
    diag: list[np.ndarray] = []
    sub: list[np.ndarray] = []
    for i in range(k):
        d = sizes[i]
        if i == 0:
            block = np.eye(d) * rho
        else:
            t = ts[i - 1]
            block = np.diag(t)
            m = 0.5 * (slopes[i - 1][0] + slopes[i - 1][1])
            sub.append(-m * (t[:, None] * weights[i - 1]))
        if i < k - 1:
            # the next layer's α_{i+1}β_{i+1}·W_{i+1}ᵀT_{i+1}W_{i+1} and the transposed sub-diagonal block
            w, t = weights[i], ts[i]
            a = slopes[i][0] * slopes[i][1]
            if a != 0.0:
                block = block + a * (w.T @ (t[:, None] * w))
        else:
            w = weights[k - 1]
            block = block - w.T @ w
        diag.append(0.5 * (block + block.T))  # symmetric in exact arithmetic; the error bound covers this too
    return diag, sub, row_abs_sums([np.abs(w) for w in weights], slopes, rho, ts)


def row_abs_sums(
    absw: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], rho: float, ts: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Row sums of |P|abs per block: P's sums with every term replaced by its absolute value, for the entry-wise
    non-negative matrices ``absw`` in place of |W_i|. Monotone in each of them (all coefficients are ≥ 0)."""
    k = len(absw)
    sizes = block_sizes(absw)
    rowabs: list[np.ndarray] = []
    for i in range(k):
        if i == 0:
            rows = np.full(sizes[0], abs(rho))
        else:
            t = ts[i - 1]
            m = 0.5 * (slopes[i - 1][0] + slopes[i - 1][1])
            rows = np.abs(t) + abs(m) * np.abs(t) * absw[i - 1].sum(axis=1)  # |P_ii| diagonal, |P_{i,i−1}| 1
        if i < k - 1:
            t = ts[i]
            a = slopes[i][0] * slopes[i][1]
            m = 0.5 * (slopes[i][0] + slopes[i][1])
            if a != 0.0:
                rows = rows + abs(a) * (absw[i].T @ (np.abs(t) * absw[i].sum(axis=1)))
            rows = rows + abs(m) * (absw[i].T @ np.abs(t))
        else:
            rows = rows + absw[k - 1].T @ absw[k - 1].sum(axis=1)
        rowabs.append(rows)
    return rowabs


def certify_psd(
    weights: Sequence[np.ndarray],
    slopes: Sequence[tuple[float, float]],
    rho: float,
    ts: Sequence[np.ndarray],
    errors: Sequence[np.ndarray | None] | None = None,
) -> bool:
    """True only if P(ρ, T) ⪰ 0 holds in exact arithmetic for these float64 values (see the module docstring).

    ``weights`` must be finite float64 of moderate magnitude (normalize them first), ``ts`` ≥ 0. ``errors`` (for
    weights that are themselves computed, e.g. a composed operator): entry-wise bounds E_i ≥ |W_i,true − W_i|; then
    the certificate holds for every chain within them. P is a polynomial with non-negative coefficients in the
    |entries|, so |P(W_true) − P(W)| ≤ |P|abs(|W| + E) − |P|abs(|W|) entry-wise, whose largest row sum joins e_form."""
    if any(np.any(t < 0) or not np.all(np.isfinite(t)) for t in ts) or not np.isfinite(rho):
        return False
    diag, sub, rowabs = lmi_blocks(weights, slopes, rho, ts)
    sizes = [b.shape[0] for b in diag]
    n = sum(sizes)
    inner = max([int(w.shape[0]) for w in weights] + [int(w.shape[1]) for w in weights]) + 6
    g = _gamma(inner)
    perturbation = 0.0
    if errors is not None and any(e is not None for e in errors):
        widened = [np.abs(w) + (e if e is not None else 0.0) for w, e in zip(weights, errors, strict=True)]
        if not all(np.all(np.isfinite(x)) for x in widened):
            return False
        big = row_abs_sums(widened, slopes, rho, ts)
        perturbation = max(float(np.max(b * (1.0 + g) - r * (1.0 - g), initial=0.0)) for b, r in zip(big, rowabs))
        rowabs = big
    row_max = max(float(r.max(initial=0.0)) for r in rowabs) * (1.0 + g)
    e_form = g * row_max * (1.0 + g) + perturbation * (1.0 + g)
    diag_abs = np.concatenate([np.abs(np.diagonal(b)) for b in diag])
    if not np.all(np.isfinite(diag_abs)) or not np.isfinite(e_form):
        return False
    trace = float(diag_abs.sum())
    delta = 2.0 * (e_form + _gamma(n + 1) * trace + EPS64 * float(diag_abs.max(initial=0.0)))
    if n <= DENSE_MAX_ORDER:
        return _dense_completes(diag, sub, delta)
    return _banded_completes(diag, sub, delta)


def dense_psd(p: np.ndarray, e_form: float) -> bool:
    """True only if every symmetric matrix within spectral distance ``e_form`` of the float64 matrix ``p`` (its lower
    triangle is read) is ⪰ 0: the Cholesky test of :func:`certify_psd` on a full matrix. ``p`` is overwritten."""
    n = int(p.shape[0])
    diag_abs = np.abs(np.diagonal(p))
    if not np.all(np.isfinite(diag_abs)) or not math.isfinite(e_form):
        return False
    delta = 2.0 * (e_form + _gamma(n + 1) * float(diag_abs.sum()) + EPS64 * float(diag_abs.max(initial=0.0)))
    from scipy.linalg.lapack import dpotrf

    p[np.diag_indices(n)] -= delta
    _, info = dpotrf(np.asfortranarray(p), lower=1, clean=0, overwrite_a=1)
    return bool(info == 0)


def _dense_completes(diag: list[np.ndarray], sub: list[np.ndarray], delta: float) -> bool:
    from scipy.linalg.lapack import dpotrf

    sizes = [b.shape[0] for b in diag]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    g = np.zeros((n, n), order="F")
    for i, b in enumerate(diag):
        s, e = starts[i], starts[i + 1]
        g[s:e, s:e] = b
        if i > 0:
            g[s:e, starts[i - 1]:s] = sub[i - 1]  # lower triangle only is read
    g[np.diag_indices(n)] -= delta
    _, info = dpotrf(g, lower=1, clean=0, overwrite_a=1)
    return bool(info == 0)


def _banded_completes(diag: list[np.ndarray], sub: list[np.ndarray], delta: float) -> bool:
    from scipy.linalg.lapack import dpbtrf

    sizes = [b.shape[0] for b in diag]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    band = max([sizes[i] + sizes[i - 1] - 1 for i in range(1, len(sizes))] + [sizes[0] - 1])
    ab = np.zeros((band + 1, n), order="F")  # lower storage: ab[r − c, c] = A[r, c] for r ≥ c

    def put(block: np.ndarray, r0: int, c0: int) -> None:
        rr, cc = np.indices(block.shape)
        rows, cols = rr + r0, cc + c0
        keep = rows >= cols
        ab[(rows - cols)[keep], cols[keep]] = block[keep]

    for i, b in enumerate(diag):
        put(b, int(starts[i]), int(starts[i]))
        if i > 0:
            put(sub[i - 1], int(starts[i]), int(starts[i - 1]))
    ab[0] -= delta
    _, info = dpbtrf(ab, lower=1, overwrite_ab=1)
    return bool(info == 0)
