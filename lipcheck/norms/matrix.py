"""Spectral norm σ_max of dense matrices (Gemm, MatMul, 1×1 convs): estimate, exact and certified values.

- ``sigma_power``: power iteration from a seeded start (:func:`lipcheck.norms.power.power_iteration`), an
  estimate from below.
- ``sigma_exact``: float64 dense SVD when the matrix has at most ``exact_limit`` entries, else Lanczos on
  the Gram matrix of the smaller side (tolerance 1e-10).
- ``sigma_upper``: certified. After a dense SVD: the SVD value times :func:`rounding_margin` (max(m, n)
  terms; LAPACK's bound |σ̂ − σ| <= p(m, n)·ε·σ_max). Otherwise the Gram iteration bound (Delattre, Barthélemy,
  Araujo & Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers by Gram Iteration",
  ICML 2023), which is an upper bound at every iterate, with its own rounding margin; the chunked Frobenius
  norm when the smaller side exceeds ``GRAM_MAX_DIM``.

Matrices with more than :data:`STREAM_MIN_ENTRIES` entries (a read-only memmap of external data, say) are never
copied to float64 whole: :func:`matrix_norms` streams them block by block of rows, each block converted to
float64 in a reused buffer of about :data:`STREAM_BLOCK_BYTES`, one pass per power / Lanczos step (see
:class:`StreamedMatrix`). Same three values with the same guarantees; the dense SVD is replaced by Lanczos.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from lipcheck.errors import InvalidWeightsError
from lipcheck.norms.margin import as_float64, rounding_margin
from lipcheck.norms.power import (
    LanczosError,
    lanczos_ritz_vector,
    lanczos_sigma_max,
    power_iteration,
    power_iteration_gram,
)
from lipcheck.report.model import NormResult

GRAM_MAX_ITERATIONS = 30
GRAM_MAX_DIM = 8192  # above this smaller side the r×r Gram products are too costly: Frobenius fallback
LANCZOS_TOL = 1e-10
SVD_CERTIFICATE_ENTRIES = 4_000_000  # matrices up to this size are certified by their SVD even when exact is off
GRAM_STOP_GAP = 1e-6  # stop Gram iteration once within this relative gap of a known lower bound
STREAM_MIN_ENTRIES = 64 * 2**20  # matrix_norms streams matrices with more entries (no whole float64 copy)
# float64 bytes of one streamed block of rows: small enough to stay in cache between its conversion and the two
# matrix-vector products that read it (measured: 1 MiB blocks ran a pass over a 11584² float32 memmap in
# 0.12 s, 32 MiB blocks in 0.27 s, the in-memory float64 matrix in 0.15 s)
STREAM_BLOCK_BYTES = 2**20
_TRANSPOSED_BLOCK_BYTES = 2**23  # blocks of a transposed view: 8 MiB (W's rows read in runs of ≥ 1 KiB)
_GRAM_BLOCK_ROWS = 512  # rows per block for the rank-k updates of the streamed Gram matrix (k this large)
_SYMMETRIZE_BLOCK = 512
KRYLOV_STEPS = 30  # Lanczos steps that refine power iteration's start (at most)
KRYLOV_TOL = 1e-8  # ... fewer once the top Ritz pair's relative residual is below this
KRYLOV_MAX_BATCH = 64  # stacks of more matrices keep the Gaussian start


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
    f0 = float(np.linalg.norm(g))

    def first_gram() -> np.ndarray:
        h = g / f0
        h = h.T @ h
        _symmetrize(h)
        return h

    return _gram_iteration(f0, first_gram, r, max_iterations=max_iterations, lower=lower, stop_gap=stop_gap)


def _gram_iteration(
    f0: float, first_gram: Callable[[], np.ndarray], r: int, *, max_iterations: int, lower: float, stop_gap: float
) -> float:
    """The loop of :func:`gram_iteration_bound` given f₀ = ‖W‖_F and G₁ = (W/f₀)ᵀ(W/f₀) (r×r, symmetric)."""
    if f0 == 0.0:
        return 0.0
    best = math.exp(math.log(f0))  # the t = 0 bound, computed as every later one is
    if max_iterations <= 0 or (lower > 0.0 and best <= lower * (1.0 + stop_gap)):
        return best * rounding_margin(2.0 * r**1.5)
    g = first_gram()
    log_scale = 2.0 * math.log(f0)
    for t in range(1, max_iterations + 1):
        f = float(np.linalg.norm(g))
        if f == 0.0:
            return 0.0
        bound = math.exp((math.log(f) + log_scale) / 2.0**t)
        stalled = bound >= best * (1.0 - 1e-12)
        best = min(best, bound)
        if stalled or (lower > 0.0 and best <= lower * (1.0 + stop_gap)) or t == max_iterations:
            break
        g = g / f
        g = g.T @ g
        _symmetrize(g)  # symmetric PSD in exact arithmetic; keep it so
        log_scale = 2.0 * (log_scale + math.log(f))
    return best * rounding_margin(2.0 * r**1.5)


def _symmetrize(g: np.ndarray) -> None:
    """g ← (g + gᵀ)/2 in place, block by block (the same float operations as ``0.5 * (g + g.T)``, without its
    two full-size temporaries)."""
    r = g.shape[0]
    b = _SYMMETRIZE_BLOCK
    for i0 in range(0, r, b):
        for j0 in range(i0, r, b):
            s = 0.5 * (g[i0:i0 + b, j0:j0 + b] + g[j0:j0 + b, i0:i0 + b].T)
            g[i0:i0 + b, j0:j0 + b] = s
            g[j0:j0 + b, i0:i0 + b] = s.T


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
    skip: Mapping[str, str] | None = None,
) -> NormResult:
    """σ_max of the 2-D matrix ``w`` (the map x ↦ w @ x; x ↦ x @ w has the same σ).

    sigma_power: estimate from below; sigma_exact: dense SVD ("svd") when ``w.size <= exact_limit``, else
    Lanczos ("lanczos"); sigma_upper: certified ("svd+margin" or "gram", see module docstring).
    ``skip`` (stage -> reason, from the resource limits): "exact" leaves Lanczos out (σ exact None with the reason),
    "gram" replaces the Gram-iteration bound by the Frobenius norm (certified, loose).
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"matrix_norms expects a 2-D matrix, got shape {w.shape}")
    if w.size > STREAM_MIN_ENTRIES:
        return streamed_matrix_norms(w, iterations=iterations, tol=tol, seed=seed, exact_limit=exact_limit, skip=skip)
    w = as_float64(w, "matrix")
    return batched_matrix_norms(w[None], iterations=iterations, tol=tol, seed=seed, exact_limit=exact_limit,
                                skip=skip)


def batched_matrix_norms(
    ws: np.ndarray,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
    skip: Mapping[str, str] | None = None,
    gram_eigh: tuple[float, float] | None = None,
) -> NormResult:
    """σ = max over b of σ_max(ws[b]) for a ``(B, m, n)`` stack (batched MatMul, grouped 1×1 conv blocks).

    Same guarantees as :func:`matrix_norms` (but the stack is converted to float64 whole, never streamed);
    ``exact_limit`` applies to the entries of ONE matrix (m·n): each SVD costs what its own size says, however
    many there are. Thin matrices (min(m, n) <= 2) always get the SVD. ``skip``: as for :func:`matrix_norms`.
    ``gram_eigh``: (σ, a certified upper bound on it) of a single matrix (B = 1), already computed from the
    eigenvalues of its smaller Gram (a 1×1 conv's weight is its own reshaped kernel, whose σ the spectral-norm
    audit computes anyway): reported as "gram-eigh" / "gram-eigh+margin" instead of a second, dense SVD.
    """
    skip = skip or {}
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
        start=_refined_starts(ws, seed),
    )

    if gram_eigh is not None and b == 1:
        exact, upper = gram_eigh
        # both are σ within rounding; the estimate from below, evaluated in float64, may differ in the last bits
        return NormResult(
            sigma_power=power.sigma,
            power_iterations=power.iterations,
            sigma_exact=max(exact, power.sigma),
            exact_method="gram-eigh",
            sigma_upper=max(upper, power.sigma, exact),
            upper_method="gram-eigh+margin",
        )

    lanczos_allowed = min(m, n) <= exact_limit
    # the dense SVD: up to exact_limit entries, or when it is the cheap certificate of a small matrix whose exact
    # value the limit excludes from Lanczos (then its value is known anyway), or for thin matrices (cheap always)
    if m * n <= exact_limit or min(m, n) <= 2 or (not lanczos_allowed and m * n <= SVD_CERTIFICATE_ENTRIES):
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
        if skipped is None and not lanczos_allowed:
            skipped = _skip_reason(min(m, n), exact_limit)
        if skipped is None and "exact" in skip:
            skipped = skip["exact"]
        if skipped is None:
            try:
                ex = _lanczos_matrix(w, power.right_vectors[k])
                exact_values.append(ex)
                lower = max(lower, ex)
            except LanczosError as exc:
                skipped = str(exc)
        if min(m, n) > GRAM_MAX_DIM or "gram" in skip:
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


def _refined_starts(ws: np.ndarray, seed: int) -> np.ndarray | None:
    """Power iteration's starts for a (B, m, n) stack: power iteration's own seeded Gaussian, refined by up to
    KRYLOV_STEPS Lanczos steps on each WᵀW (:func:`lipcheck.norms.power.lanczos_ritz_vector`), so the iteration
    starts near the top singular vector (a 2048×1000 Gemm: 100 iterations ended 0.37 % below σ). None (the plain
    Gaussian start) for stacks of more than KRYLOV_MAX_BATCH matrices or rows shorter than 3."""
    b, _, n = ws.shape
    if n < 3 or b > KRYLOV_MAX_BATCH:
        return None
    starts = np.random.default_rng(seed).standard_normal((b, n))
    for k in range(b):
        w = ws[k]
        vec = lanczos_ritz_vector(lambda v, w=w: w.T @ (w @ v), starts[k], steps=KRYLOV_STEPS, tol=KRYLOV_TOL)
        if vec is not None:
            starts[k] = vec
    return starts


def _skip_reason(size: int, exact_limit: int) -> str:
    if exact_limit <= 0:
        return "exact values disabled (--no-exact)"
    return f"matrix's smaller side {size:,} > exact_limit {exact_limit:,}"


def _lanczos_matrix(w: np.ndarray, v_right: np.ndarray) -> float:
    """Lanczos on the Gram matrix of the smaller side of ``w``, warm-started from the power vector."""
    m, n = w.shape
    if not np.any(w):
        return 0.0
    if n <= m:
        return lanczos_sigma_max(lambda v: (w.T @ (w @ v[0]))[None], n, v0=v_right, tol=LANCZOS_TOL)
    return lanczos_sigma_max(lambda u: (w @ (w.T @ u[0]))[None], m, v0=w @ v_right, tol=LANCZOS_TOL)


class StreamedMatrix:
    """A big matrix W read block by block of rows into one reused float64 buffer (W itself is never copied).

    Works on T = W or Wᵀ, whichever is tall (for a square W, whichever is C-contiguous: its rows are
    contiguous in memory); σ(T) = σ(W). One pass over T gives both T v and TᵀT v = Σ_b B_bᵀ(B_b v), so power
    iteration and Lanczos on the small side's Gram operator cost one pass per step.
    """

    def __init__(self, w: np.ndarray, block_bytes: int | None = None) -> None:
        block_bytes = STREAM_BLOCK_BYTES if block_bytes is None else block_bytes
        m, n = w.shape
        tall = m > n or (m == n and (w.flags.c_contiguous or not w.T.flags.c_contiguous))
        self.t = w if tall else w.T
        self.rows, self.cols = self.t.shape
        self._transposed = not self.t.flags.c_contiguous and self.t.T.flags.c_contiguous
        if self._transposed:
            block_bytes = max(block_bytes, _TRANSPOSED_BLOCK_BYTES)  # longer contiguous runs per row of W
        self.block_rows = max(1, min(self.rows, block_bytes // (8 * max(1, self.cols))))
        self._buffer = np.empty((0 if self._transposed else self.block_rows, self.cols), dtype=np.float64)

    def blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float64 block) pairs; each block is a shared buffer, valid until the next one."""
        step = self.block_rows if block_rows is None else max(1, min(self.rows, block_rows))
        if self._transposed:
            # T = Wᵀ of a C-contiguous wide W: a block of T's rows is a block of W's columns. Copying it as W's
            # (cols × k) slab, whose rows are contiguous runs, and using the slab's transpose is ~10× faster than
            # a cast from the transposed view (4096 × 25088 float32: 0.86 s a pass before).
            for r0 in range(0, self.rows, step):
                r1 = min(self.rows, r0 + step)
                slab = np.empty((self.cols, r1 - r0), dtype=np.float64)
                np.copyto(slab, self.t.T[:, r0:r1], casting="unsafe")  # float32 -> float64 is exact
                yield r0, slab.T
            return
        buffer = self._buffer if step == self.block_rows else np.empty((step, self.cols), dtype=np.float64)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            block = buffer[: r1 - r0]
            np.copyto(block, self.t[r0:r1], casting="unsafe")  # float32 -> float64 is exact
            yield r0, block

    def frobenius(self) -> float:
        """‖W‖_F in float64 (no margin); raises :class:`InvalidWeightsError`, as :func:`as_float64` does, when an
        entry is NaN or Inf."""
        total = 0.0
        for _, block in self.blocks():
            if not np.isfinite(block).all():
                raise InvalidWeightsError("matrix holds NaN or Inf values")
            flat = block.reshape(-1)
            total += float(flat @ flat)
        return math.sqrt(total)

    def gram_pass(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T v, TᵀT v) for ``v`` of shape ``(batch, cols)``."""
        u = np.empty((v.shape[0], self.rows))
        g = np.zeros_like(v, dtype=np.float64)
        for r0, block in self.blocks():
            ub = v @ block.T
            u[:, r0:r0 + block.shape[0]] = ub
            g += ub @ block
        return u, g

    def first_gram(self, f0: float) -> np.ndarray:
        """G₁ = (T/f₀)ᵀ(T/f₀), cols × cols, accumulated block by block (symmetric: one triangle, mirrored)."""
        from scipy.linalg.blas import dsyrk

        h = np.zeros((self.cols, self.cols), dtype=np.float64, order="F")
        alpha = 1.0 / (f0 * f0)
        for _, block in self.blocks(max(self.block_rows, _GRAM_BLOCK_ROWS)):
            # block.T is F-contiguous (cols × rows): syrk with trans=0 adds alpha·blockᵀ·block to the upper triangle
            h = dsyrk(alpha, block.T, beta=1.0, c=h, trans=0, lower=0, overwrite_c=1)
        upper = np.triu(h, 1)
        h += upper.T
        return np.ascontiguousarray(h)


def streamed_matrix_norms(
    w: np.ndarray, *, iterations: int = 100, tol: float = 1e-6, seed: int = 0, exact_limit: int = 2_000_000,
    skip: Mapping[str, str] | None = None,
) -> NormResult:
    """:func:`matrix_norms` for a matrix too big to copy to float64: the same three values, streamed.

    sigma_power: power iteration on T (see :class:`StreamedMatrix`; the start vector lives on T's input side),
    an estimate from below. sigma_exact: Lanczos on TᵀT ("lanczos"), or for a matrix with a side <= 2 the
    eigenvalues of its r×r Gram matrix ("gram-eigh"); never the dense SVD (it needs the whole float64 copy).
    sigma_upper: certified, the Gram iteration bound started from the streamed G₁ when the smaller side is at
    most ``GRAM_MAX_DIM`` ("gram"), else the streamed Frobenius norm with its margin ("frobenius"); after
    "gram-eigh" that value times :func:`rounding_margin` of the long side ("gram-eigh+margin").
    ``skip``: as for :func:`matrix_norms`.
    """
    skip = skip or {}
    stream = StreamedMatrix(np.asarray(w))
    r, long_side = stream.cols, stream.rows
    if r == 0 or long_side == 0:
        return NormResult(0.0, 0, 0.0, "svd", 0.0, "svd+margin")
    f0 = stream.frobenius()  # first: it refuses NaN / Inf
    # the start refined as in memory (:func:`_refined_starts`): 30 passes at most, where power iteration alone
    # often takes 100
    start = np.random.default_rng(seed).standard_normal(r)
    refined = None if r < 3 else lanczos_ritz_vector(lambda q: stream.gram_pass(q[None])[1][0], start,
                                                      steps=KRYLOV_STEPS, tol=KRYLOV_TOL)
    power = power_iteration_gram(stream.gram_pass, r, iterations=iterations, tol=tol, seed=seed,
                                 start=None if refined is None else refined[None])
    if r <= 2:
        # Gram entries are sums of `long_side` products: |δG| <= γ_N·‖W‖_F² <= r·γ_N·σ², covered by the margin
        if f0 == 0.0:
            exact = 0.0
        else:
            exact = f0 * math.sqrt(max(float(np.linalg.eigvalsh(stream.first_gram(f0))[-1]), 0.0))
        return NormResult(
            sigma_power=power.sigma, power_iterations=power.iterations, sigma_exact=exact,
            exact_method="gram-eigh", sigma_upper=max(exact * rounding_margin(2.0 * long_side), power.sigma),
            upper_method="gram-eigh+margin",
        )
    lower = power.sigma
    sigma_exact: float | None = None
    skipped: str | None = None
    if r > exact_limit:
        skipped = _skip_reason(r, exact_limit)
    elif "exact" in skip:
        skipped = skip["exact"]
    else:
        try:
            sigma_exact = (
                0.0 if f0 == 0.0
                else lanczos_sigma_max(lambda x: stream.gram_pass(x)[1], r, v0=power.right_vectors[0], tol=LANCZOS_TOL)
            )
            lower = max(lower, sigma_exact)
        except LanczosError as exc:
            skipped = str(exc)
    if r > GRAM_MAX_DIM or "gram" in skip:
        upper = f0 * rounding_margin(float(r) * long_side)
        upper_method = "frobenius"
    else:
        upper = _gram_iteration(f0, lambda: stream.first_gram(f0), r, max_iterations=GRAM_MAX_ITERATIONS,
                                lower=lower, stop_gap=GRAM_STOP_GAP)
        upper_method = "gram"
    return NormResult(
        sigma_power=power.sigma,
        power_iterations=power.iterations,
        sigma_exact=sigma_exact,
        exact_method="skipped" if skipped is not None else "lanczos",
        sigma_upper=max(upper, power.sigma, sigma_exact or 0.0),
        upper_method=upper_method,
        exact_skipped=skipped,
    )


def scale_norms(norms: NormResult, factor: float) -> NormResult:
    """The norms of c·W from those of W: σ(cW) = |c|·σ(W). The certified value gets a 4ε margin for the one
    rounded product (estimates and exact values are scaled as they are: they are not certificates)."""
    c = abs(float(factor))
    if c == 1.0:
        return norms
    return NormResult(
        sigma_power=norms.sigma_power * c,
        power_iterations=norms.power_iterations,
        sigma_exact=None if norms.sigma_exact is None else norms.sigma_exact * c,
        exact_method=norms.exact_method,
        sigma_upper=norms.sigma_upper * c * (1.0 + 4.0 * float(np.finfo(np.float64).eps)),
        upper_method=norms.upper_method,
        exact_skipped=norms.exact_skipped,
        sigma_reshaped=None if norms.sigma_reshaped is None else norms.sigma_reshaped * c,
    )


def ldexp_norms(norms: NormResult, exponent: int) -> NormResult:
    """The norms of 2^exponent·W from those of W. A power of two scales float64 values exactly unless the result
    leaves the normal range: there it is rounded, so the certified value moves one float up (a subnormal result of
    float64 weights of 1e-200 composed is never rounded down, nor to 0)."""
    if exponent == 0:
        return norms

    def scaled(value: float | None) -> float | None:
        return None if value is None else math.ldexp(value, exponent)

    upper = math.ldexp(norms.sigma_upper, exponent)
    if norms.sigma_upper > 0 and upper < sys.float_info.min:
        upper = math.nextafter(upper, math.inf)
    return NormResult(
        sigma_power=math.ldexp(norms.sigma_power, exponent),
        power_iterations=norms.power_iterations,
        sigma_exact=scaled(norms.sigma_exact),
        exact_method=norms.exact_method,
        sigma_upper=upper,
        upper_method=norms.upper_method,
        exact_skipped=norms.exact_skipped,
        sigma_reshaped=scaled(norms.sigma_reshaped),
    )


def normalizing_exponent(w: np.ndarray) -> int:
    """k such that 2^-k·w has its largest magnitude in [1/2, 1), for float64 weights whose magnitudes would
    underflow or overflow when squared (Grams, Cholesky); 0 for every other weight (float32 squares always fit
    in float64), so nothing is read or copied for them."""
    arr = np.asarray(w)
    if arr.dtype.itemsize <= 4 or arr.size == 0:
        return 0
    hi = max(abs(float(np.max(arr))), abs(float(np.min(arr))))
    if hi == 0.0 or not math.isfinite(hi) or 2.0**-250 <= hi <= 2.0**250:
        return 0
    return math.frexp(hi)[1]

