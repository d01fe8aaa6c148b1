"""Spectral norms of convolutions as the linear operators they are on their actual input.

A Conv layer is the map x ↦ conv(zero_pad(x)) on the whole (C_in, *spatial) input tensor (batch 1), with
stride, dilation, groups and possibly asymmetric pads. Its Lipschitz constant is σ_max of that map, which
depends on all of them and on the input size; the reshaped kernel norm that torch's ``spectral_norm``
normalizes is a different number (:func:`reshaped_kernel_norm`, reported as ``sigma_reshaped``).

For every conv, :func:`conv_norms` returns

- ``sigma_power``: power iteration on the real operator (float64 torch conv and its adjoint, the transposed
  conv with the output_padding that lands back on the exact input shape): an estimate from below.
- ``sigma_exact``: exact up to floating point. An explicit float64 matrix and its SVD for small operators
  ("svd"), else Lanczos on the Gram operator of the smaller side ("lanczos", tolerance 1e-10, warm-started
  from the power vector). Skipped (``None``, with the reason) when the operator has more than
  ``exact_limit`` inputs. 1×1 convs: SVD of the C_out×C_in channel matrices (max over groups).
- ``sigma_upper``: certified, the minimum of several certified bounds (``upper_method`` names the winner):
  "circular-fft" (Sedghi, Gupta & Long, ICLR 2019, with the polyphase split of Senderovich, Bulatova &
  Deng 2022 for strides), "reshaped-bound" (Tsuzuku, Sato & Sugiyama, NeurIPS 2018, with the exact overlap
  count of the geometry), "frobenius" (the operator's Frobenius norm) and, when the explicit matrix was
  SVD'd, "svd+margin". Each carries an explicit float64 rounding margin (:mod:`lipcheck.norms.margin`).

ConvTranspose (:func:`conv_transpose_norms`) is the adjoint of the Conv with the same weight from the
transpose's output shape to its input shape, so it has the same singular values; every method above is
applied to that Conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lipcheck.norms.margin import as_float64, rounding_margin
from lipcheck.norms.matrix import batched_matrix_norms, sigma_max_svd
from lipcheck.norms.power import LanczosError, PowerResult, lanczos_sigma_max
from lipcheck.report.model import NormResult

DENSE_LIMIT = 512  # operators whose smaller side is at most this (and ...)
DENSE_MAX_ENTRIES = 4_000_000  # ... with at most this many entries are SVD'd as explicit matrices
LANCZOS_TOL = 1e-10
_BASIS_CHUNK = 64  # basis vectors pushed through the conv at once when building the explicit matrix
_FREQ_CHUNK_ENTRIES = 2_000_000  # complex entries per frequency chunk in the circular bound
_GRAM_CHUNK_ENTRIES = 8_000_000  # complex entries of the Gram matrices squared at once (128 MB)
_ESTIMATE_STEPS = 12  # power steps per frequency for the estimate that decides where to certify tightly
_REFINE_STEPS = 40  # power steps on each Gram that needs a certificate, to sharpen the estimate
_GRAM_TOL = 1e-4  # a frequency's certificate on σ² may end this far above the estimate (5e-5 on σ)
_GRAM_STEPS = 16  # Gram squarings at most: (rank)^(1/2^16) <= 1.0001 even for a flat spectrum


@dataclass(frozen=True)
class ConvGeometry:
    """How a Conv reads its input. ``input_spatial`` is the size the conv receives (1, 2 or 3 dims);
    pads are resolved (no auto_pad), possibly asymmetric."""

    input_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    groups: int = 1


def reshaped_kernel_norm(weight: np.ndarray, dim: int = 0) -> float:
    """σ_max of the kernel flattened to a matrix after moving axis ``dim`` to the front: exact (SVD).

    This is what ``torch.nn.utils.spectral_norm`` targets (dim 0 for Conv, dim 1 for ConvTranspose,
    torch's defaults). It is NOT the conv's operator norm (see the module docstring).
    """
    w = as_float64(weight, "conv weight")
    mat = np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)
    return float(sigma_max_svd(mat[None])[0])


def conv_norms(
    weight: np.ndarray,
    geom: ConvGeometry,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
) -> NormResult:
    """Norms of the zero-padded Conv with ``weight`` (C_out, C_in/groups, *k) on its actual input.

    sigma_power: estimate from below; sigma_exact: exact (or skipped when C_in·prod(input_spatial) >
    exact_limit); sigma_upper: certified; sigma_reshaped: :func:`reshaped_kernel_norm`.
    """
    w = as_float64(weight, "conv weight")
    op = _ConvOperator(w, geom)
    return _operator_norms(
        op,
        sigma_reshaped=reshaped_kernel_norm(w),
        exact_size=op.n_in,
        iterations=iterations,
        tol=tol,
        seed=seed,
        exact_limit=exact_limit,
    )


def conv_transpose_norms(
    weight: np.ndarray,
    geom: ConvGeometry,
    output_padding: tuple[int, ...],
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
) -> NormResult:
    """Norms of the ConvTranspose with ``weight`` (C_in, C_out/groups, *k) on its actual input.

    ``geom`` describes the transposed conv as ONNX/torch do (input_spatial = its input's spatial size;
    pads crop its output). It is the adjoint of the Conv with the same weight from its output shape to its
    input shape (the first ``input_spatial`` outputs of that Conv), so it has the same singular values.
    Same guarantees as :func:`conv_norms`; exact is skipped when C_in·prod(input_spatial) > exact_limit;
    sigma_reshaped is the kernel reshaped along dim 1 (what torch's spectral_norm uses for ConvTranspose).
    """
    w = as_float64(weight, "conv weight")
    d = len(geom.input_spatial)
    output_padding = tuple(int(p) for p in output_padding)
    if w.ndim != d + 2 or len(output_padding) != d:
        raise ValueError(
            f"ConvTranspose weight {w.shape} and output_padding {output_padding} do not fit {d} spatial dims"
        )
    if any(p < 0 for p in output_padding):
        raise ValueError(f"ConvTranspose output_padding must be >= 0, got {output_padding}")
    out_spatial = tuple(
        (n - 1) * s + dil * (k - 1) + 1 + op - pb - pe
        for n, s, dil, k, op, pb, pe in zip(
            geom.input_spatial, geom.strides, geom.dilations, w.shape[2:], output_padding,
            geom.pads_begin, geom.pads_end,
        )
    )
    if any(o < 1 for o in out_spatial):
        raise ValueError(f"ConvTranspose output size {out_spatial} is empty for {geom}")
    adjoint_geom = ConvGeometry(
        input_spatial=out_spatial,
        strides=geom.strides,
        dilations=geom.dilations,
        pads_begin=geom.pads_begin,
        pads_end=geom.pads_end,
        groups=geom.groups,
    )
    op = _ConvOperator(w, adjoint_geom, kept_out=tuple(geom.input_spatial))
    return _operator_norms(
        op,
        sigma_reshaped=reshaped_kernel_norm(w, dim=1),
        exact_size=op.n_out,  # the ConvTranspose's input = the adjoint Conv's output
        iterations=iterations,
        tol=tol,
        seed=seed,
        exact_limit=exact_limit,
    )


# --------------------------------------------------------------------------------------------------------
# The operator


class _ConvOperator:
    """x ↦ keep_first(conv_stride(zero_pad(x))) on flattened (C_in, *n) tensors, in float64.

    ``kept_out`` (default: all) keeps the first outputs per spatial dim; ConvTranspose needs it when
    output_padding >= stride. Vectors are ``(batch, n_in)`` / ``(batch, n_out)`` float64 arrays.
    """

    def __init__(self, weight: np.ndarray, geom: ConvGeometry, kept_out: tuple[int, ...] | None = None):
        d = len(geom.input_spatial)
        if d not in (1, 2, 3):
            raise ValueError(f"convolutions with {d} spatial dims are not supported (1, 2 or 3)")
        fields = (geom.strides, geom.dilations, geom.pads_begin, geom.pads_end)
        if weight.ndim != d + 2 or any(len(f) != d for f in fields):
            raise ValueError(f"conv weight {weight.shape} does not fit the geometry {geom}")
        self.n = tuple(int(v) for v in geom.input_spatial)
        self.strides = tuple(int(v) for v in geom.strides)
        self.dilations = tuple(int(v) for v in geom.dilations)
        self.pads_begin = tuple(int(v) for v in geom.pads_begin)
        self.pads_end = tuple(int(v) for v in geom.pads_end)
        self.groups = int(geom.groups)
        self.kernel = tuple(int(k) for k in weight.shape[2:])
        self.c_out = int(weight.shape[0])
        self.c_in = int(weight.shape[1]) * self.groups
        if (
            min(self.n) < 1
            or min(self.strides) < 1
            or min(self.dilations) < 1
            or min(self.pads_begin + self.pads_end) < 0
            or min(self.kernel) < 1
            or self.groups < 1
            or self.c_out % self.groups
        ):
            raise ValueError(f"invalid conv geometry {geom} for weight {weight.shape}")
        self.d = d
        self.weight = weight
        self.padded = tuple(n + b + e for n, b, e in zip(self.n, self.pads_begin, self.pads_end))
        self.eff_kernel = tuple(dil * (k - 1) + 1 for dil, k in zip(self.dilations, self.kernel))
        if any(p < ke for p, ke in zip(self.padded, self.eff_kernel)):
            raise ValueError(f"the (dilated) kernel {self.eff_kernel} is larger than the padded input")
        self.natural_out = tuple((p - ke) // s + 1 for p, ke, s in zip(self.padded, self.eff_kernel, self.strides))
        self.out = self.natural_out if kept_out is None else tuple(int(v) for v in kept_out)
        if len(self.out) != d or any(not 1 <= o <= no for o, no in zip(self.out, self.natural_out)):
            raise ValueError(f"kept outputs {self.out} not within the conv's outputs {self.natural_out}")
        self.n_in = self.c_in * math.prod(self.n)
        self.n_out = self.c_out * math.prod(self.out)

        # per-dim read tables: input index read by (output o, tap j), and whether it is a real input
        self.read_index: list[np.ndarray] = []
        self.read_valid: list[np.ndarray] = []
        for n, k, s, dil, pb, o in zip(self.n, self.kernel, self.strides, self.dilations, self.pads_begin, self.out):
            idx = np.arange(o)[:, None] * s + np.arange(k)[None, :] * dil - pb
            self.read_index.append(idx)
            self.read_valid.append((idx >= 0) & (idx < n))

        self._w = torch.from_numpy(weight)
        self._cast: dict[torch.dtype, torch.Tensor] = {}
        self._conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
        self._conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
        self._pad = [p for i in reversed(range(d)) for p in (self.pads_begin[i], self.pads_end[i])]
        self._extend = [p for i in reversed(range(d)) for p in (0, self.natural_out[i] - self.out[i])]
        # the transposed conv of a natural-size output has size (o-1)s + ke + op: op makes it the padded size
        self._output_padding = tuple((p - ke) % s for p, ke, s in zip(self.padded, self.eff_kernel, self.strides))

    # -- structure -----------------------------------------------------------------------------------
    def max_reads(self) -> int:
        """The largest number of (output position, kernel tap) pairs that read one input element."""
        m = 1
        for idx, valid, n in zip(self.read_index, self.read_valid, self.n):
            counts = np.bincount(idx[valid], minlength=n)
            m *= int(counts.max(initial=0))
        return m

    @property
    def is_pointwise(self) -> bool:
        return all(k == 1 for k in self.kernel)

    # -- application ---------------------------------------------------------------------------------
    def apply_t(self, t: torch.Tensor) -> torch.Tensor:
        """The operator on a (batch, n_in) torch tensor of any float dtype (the weight is cast to match)."""
        b = t.shape[0]
        w = self._w if t.dtype == torch.float64 else self._weight_as(t.dtype)
        t = t.reshape(b, self.c_in, *self.n)
        if any(self._pad):
            t = F.pad(t, self._pad)
        y = self._conv(t, w, stride=self.strides, dilation=self.dilations, groups=self.groups)
        if self.out != self.natural_out:
            y = y[(slice(None), slice(None)) + tuple(slice(0, o) for o in self.out)]
        return y.reshape(b, -1)

    def adjoint_t(self, t: torch.Tensor) -> torch.Tensor:
        """The adjoint on a (batch, n_out) torch tensor (the transposed conv with matching output_padding)."""
        b = t.shape[0]
        w = self._w if t.dtype == torch.float64 else self._weight_as(t.dtype)
        t = t.reshape(b, self.c_out, *self.out)
        if any(self._extend):
            t = F.pad(t, self._extend)
        x = self._conv_t(
            t, w, stride=self.strides, output_padding=self._output_padding, groups=self.groups,
            dilation=self.dilations,
        )
        x = x[(slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(self.pads_begin, self.n))]
        return x.reshape(b, -1)

    def _weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        cached = self._cast.get(dtype)
        if cached is None:
            cached = self._cast[dtype] = self._w.to(dtype)
        return cached

    def forward(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.apply_t(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.adjoint_t(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))).numpy()

    def dense(self) -> np.ndarray:
        """The explicit (n_out, n_in) matrix, built from the basis of the smaller side (entries exact)."""
        small, apply = (self.n_in, self.forward) if self.n_in <= self.n_out else (self.n_out, self.adjoint)
        rows = []
        for start in range(0, small, _BASIS_CHUNK):
            stop = min(small, start + _BASIS_CHUNK)
            basis = np.zeros((stop - start, small))
            basis[np.arange(stop - start), np.arange(start, stop)] = 1.0
            rows.append(apply(basis))
        stacked = np.concatenate(rows, axis=0)  # (small, other): rows are A e_i or Aᵀ e_j
        return stacked.T if self.n_in <= self.n_out else stacked


def _power_iteration_fast(op: _ConvOperator, *, iterations: int, tol: float, seed: int) -> PowerResult:
    """Power iteration on the conv operator, iterated in float32 (several times faster than float64 convs),
    reported in float64: σ̂ = ‖A v‖ for the final unit v, evaluated with the float64 operator, so it is still
    a true lower bound (an estimate from below) whatever float32 rounding did to the iterations. Same start
    (seeded Gaussian) and stopping rule (relative change of σ̂ below ``tol``) as :func:`power_iteration`."""
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal((1, op.n_in))
    with torch.no_grad():
        v = torch.from_numpy(v0 / np.linalg.norm(v0)).to(torch.float32)
        prev = None
        done = 0
        for done in range(1, max(1, int(iterations)) + 1):  # noqa: B007 - `done` is reported
            u = op.apply_t(v)
            nu = float(torch.linalg.vector_norm(u))
            if nu == 0.0:
                break
            w = op.adjoint_t(u / nu)
            nw = float(torch.linalg.vector_norm(w))
            if nw == 0.0:
                break
            v = w / nw
            if prev is not None and abs(nw - prev) <= tol * nw:
                break
            prev = nw
        v64 = v.to(torch.float64)
        v64 = v64 / torch.linalg.vector_norm(v64)
        sigma = float(torch.linalg.vector_norm(op.apply_t(v64)))
    right = v64.numpy()
    return PowerResult(sigma=sigma, sigmas=np.array([sigma]), iterations=done, right_vectors=right)


# --------------------------------------------------------------------------------------------------------
# Certified upper bounds


def _circular_bound(op: _ConvOperator) -> float:
    """Certified upper bound from the circular convolution that contains the zero-padded one.

    Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019: a multi-channel circular
    convolution on an N-grid is block-diagonalized by the DFT, σ = max over frequencies ω of σ_max(K̂(ω)),
    K̂(ω) the C_out×C_in matrix of the kernel's DFT. The zero-padded conv on n is a restriction of the
    circular one on any N >= n + pads (no wrap-around reaches a kept output): embed x at offset pads_begin,
    convolve circularly, select outputs (an isometry, then a selection of norm <= 1), so the circular σ
    bounds it. Strides: with N a multiple of s, the strided circular conv is a stride-1 circular conv on
    the N/s grid from C_in·s^D polyphase channels (input phase r, kernel taps j = q·s + r; Senderovich,
    Bulatova & Deng 2022), which is tighter than the stride-1 value. Dilation inserts zero taps. Groups:
    block-diagonal, the max over groups. Real kernels: K̂(−ω) = conj K̂(ω), so half of the last frequency
    axis suffices (as rfftn does).

    The DFT is evaluated directly as (phases @ taps) over frequency chunks (memory stays bounded for large
    grids). σ² per frequency: eigvalsh of the smaller Gram K̂K̂ᴴ or K̂ᴴK̂ in float64. Rounding margin:
    the entries of K̂ carry errors <= ~2·T·ε·(ℓ1 of the taps), and max_ω ‖K̂_g(ω)‖_F >= ‖W_g‖_F (Parseval),
    so σ_max(E) <= 2·T^1.5·√r·ε·σ; the Gram product and the Hermitian eigensolver add <= ~a·b·ε. Hence
    ``n_terms = 2·T^1.5·√r + 2·a·b`` (T taps, a×b blocks, r = min(a, b)).
    """
    d, g = op.d, op.groups
    s = op.strides
    a = op.c_out // g
    c_in_g = op.weight.shape[1]
    grid = tuple(math.ceil(p / st) for p, st in zip(op.padded, s))  # M_d = N_d / s_d, N_d >= padded_d
    taps_per_dim = tuple(math.ceil(ke / st) for ke, st in zip(op.eff_kernel, s))

    wd = np.zeros((op.c_out, c_in_g, *(q * st for q, st in zip(taps_per_dim, s))))
    taps = tuple(slice(0, ke, dil) for ke, dil in zip(op.eff_kernel, op.dilations))
    wd[(slice(None), slice(None)) + taps] = op.weight
    split = (op.c_out, c_in_g, *(v for q, st in zip(taps_per_dim, s) for v in (q, st)))
    perm = (0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)))
    b = c_in_g * math.prod(s)
    n_taps = math.prod(taps_per_dim)
    wp = wd.reshape(split).transpose(perm).reshape(g, a, b, n_taps)  # [g, a, (c_in_g, phase), tap]
    wt = np.moveaxis(wp, -1, 0).reshape(n_taps, g * a * b)
    keep = np.any(wt != 0.0, axis=1)  # drop the holes of dilation
    if not keep.any():
        return 0.0
    wt = wt[keep]
    q = np.indices(taps_per_dim).reshape(d, -1).T[keep]  # (T, d) tap offsets on the coarse grid
    n_keep = int(keep.sum())

    fshape = (*grid[:-1], grid[-1] // 2 + 1)
    n_freq = math.prod(fshape)
    r = min(a, b)
    chunk = max(1, _FREQ_CHUNK_ENTRIES // (g * (a * b + r * r)))

    def khat(indices: np.ndarray) -> torch.Tensor:
        """K̂_g(ω) for the given flat frequency indices: (len(indices)·g, a, b) complex128."""
        freq = np.stack(np.unravel_index(indices, fshape), axis=1)
        frac = np.zeros((freq.shape[0], n_keep))
        for i in range(d):  # exact integer reduction mod M before the division keeps the phases accurate
            frac += ((freq[:, i, None] * q[None, :, i]) % grid[i]) / grid[i]
        return torch.from_numpy((np.exp(-2j * np.pi * frac) @ wt).reshape(-1, a, b))

    # Pass 1, every frequency: ‖K̂‖_F² (a certified bound on σ²) and a cheap estimate of σ² from below
    # (batched power iteration; used only to decide where a tight certificate is needed, never as one).
    frob2 = np.empty(n_freq * g)
    low = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, n_freq, chunk):
            k = khat(np.arange(start, min(n_freq, start + chunk)))
            frob2[start * g:start * g + k.shape[0]] = (k.real**2 + k.imag**2).sum(dim=(1, 2)).numpy()
            if r > 1:
                x = torch.randn(k.shape[0], b, 1, generator=gen, dtype=torch.float64).to(torch.complex128)
                for _ in range(_ESTIMATE_STEPS):
                    x = k.mH @ (k @ x)
                    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)
                low = max(low, float(torch.linalg.vector_norm(k @ x, dim=1).max()) ** 2)
        if r == 1:  # 1-row (or 1-column) blocks: ‖K̂‖_F = σ exactly
            best = float(frob2.max())
            return math.sqrt(max(best, 0.0)) * rounding_margin(2.0 * n_keep**1.5 + 2.0 * a * b)
        # Pass 2, only where ‖K̂‖_F² could exceed the estimate: Gram iteration (Delattre et al., ICML 2023) on the
        # r×r Gram G of the smaller side, λ_max(G) <= ‖G^(2^t)‖_F^(1/2^t) at every t, each frequency until its
        # certificate is within _GRAM_TOL of the estimate (or _GRAM_STEPS squarings): a certified σ² per
        # frequency at the cost of a few batched matrix products, far cheaper than an eigensolver per frequency.
        hot = np.flatnonzero(frob2 > low * (1 + _GRAM_TOL))
        best = float(frob2[np.setdiff1d(np.arange(frob2.size), hot)].max(initial=0.0))
        hot_freq = np.unique(hot // g)
        per = max(1, _GRAM_CHUNK_ENTRIES // (g * r * r))
        grams = []
        for start in range(0, hot_freq.size, per):
            k = khat(hot_freq[start:start + per])
            gram = k @ k.mH if a <= b else k.mH @ k
            # a sharper estimate from below on these Grams (matrix-vector products only), so that the
            # certificates below can stop as soon as they are within _GRAM_TOL of the largest σ²
            x = torch.randn(gram.shape[0], gram.shape[1], 1, generator=gen, dtype=torch.float64).to(gram.dtype)
            for _ in range(_REFINE_STEPS):
                x = gram @ x
                x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)
            low = max(low, float((x.mH @ (gram @ x)).real.max()))
            grams.append(gram)
        threshold = low * (1 + _GRAM_TOL)
        for gram in grams:
            best = max(best, _gram_certificate(gram, threshold))
    return math.sqrt(max(best, 0.0)) * rounding_margin(2.0 * n_keep**1.5 * math.sqrt(r) + 2.0 * a * b + 2.0 * r**1.5)


def _gram_certificate(gram: torch.Tensor, threshold: float) -> float:
    """max over the stack of certified upper bounds on λ_max of Hermitian PSD matrices, by Gram iteration:
    G_{t+1} = G_t·G_t (= G_tᴴG_t), λ_max(G) <= (‖G_t‖_F·S_t)^(1/2^t) with the scales S_t kept in log space.
    A matrix stops once its bound is at most ``threshold`` (it cannot be the maximum by more than that) or
    after _GRAM_STEPS squarings; the bound returned is the smallest one met for each matrix."""
    bound = torch.linalg.matrix_norm(gram).to(torch.float64)  # t = 0: ‖G‖_F >= λ_max
    log_scale = torch.zeros_like(bound)
    active = torch.nonzero(bound > threshold).flatten()
    g = gram
    for t in range(1, _GRAM_STEPS + 1):
        if active.numel() == 0:
            break
        sub = g[active]
        f = torch.linalg.matrix_norm(sub).to(torch.float64)
        f = torch.where(f > 0, f, torch.ones_like(f))
        ls = 2.0 * (log_scale[active] + torch.log(f))
        sub = sub / f[:, None, None]
        sub = sub @ sub
        sub = 0.5 * (sub + sub.mH)  # Hermitian in exact arithmetic: keep it so
        fro = torch.linalg.matrix_norm(sub).to(torch.float64)
        value = torch.exp((torch.log(fro.clamp_min(1e-300)) + ls) / 2.0**t)
        value = torch.where(fro > 0, value, torch.zeros_like(value))
        bound[active] = torch.minimum(bound[active], value)
        log_scale[active] = ls
        g = g.clone() if t == 1 else g
        g[active] = sub
        active = active[bound[active] > threshold]
    return float(bound.max())


def _reshaped_bound(op: _ConvOperator) -> float:
    """Certified: σ <= √m · max_g σ_max(W_g reshaped) (Tsuzuku, Sato & Sugiyama, NeurIPS 2018).

    Each output position o computes W_g·patch_o(x) (im2col, zeros for padding), so
    ‖y‖² = Σ_o ‖W_g patch_o‖² <= max_g ‖W_g‖² · Σ_o ‖patch_o‖² = max_g ‖W_g‖² · Σ_i count_i·x_i² <= ... · m‖x‖²,
    m = the largest number of (output position, tap) pairs that read one input element, counted exactly
    from the geometry (per dim, multiplied; ⌈k/s⌉ per dim in the interior). Taps that never read a real
    input are dropped from W_g. Margin: the SVD's max(a, b·T) terms.
    """
    m = op.max_reads()
    used = [np.flatnonzero(valid.any(axis=0)) for valid in op.read_valid]
    w = op.weight[np.ix_(np.arange(op.c_out), np.arange(op.weight.shape[1]), *used)]
    g = op.groups
    mats = w.reshape(g, op.c_out // g, -1)
    sigma = float(sigma_max_svd(mats).max())
    return math.sqrt(m) * sigma * rounding_margin(max(mats.shape[1:]) + 2)


def _frobenius_bound(op: _ConvOperator) -> float:
    """Certified (loose): the operator's Frobenius norm, Σ_taps ‖W[:, :, tap]‖_F² · (#outputs whose tap reads
    a real input), exact from the geometry. Margin: one term per weight entry."""
    energy = np.sum(op.weight**2, axis=(0, 1))  # per tap
    for i, valid in enumerate(op.read_valid):
        shape = [1] * op.d
        shape[i] = -1
        energy = energy * valid.sum(axis=0).reshape(shape)
    return math.sqrt(float(energy.sum())) * rounding_margin(op.weight.size)


# --------------------------------------------------------------------------------------------------------
# Putting it together


def _operator_norms(
    op: _ConvOperator,
    *,
    sigma_reshaped: float,
    exact_size: int,
    iterations: int,
    tol: float,
    seed: int,
    exact_limit: int,
) -> NormResult:
    if op.max_reads() == 0 or not np.any(op.weight):
        # every kept output reads only padding, or the kernel is zero: the operator is 0
        return NormResult(0.0, 0, 0.0, "zero-operator", 0.0, "zero-operator", sigma_reshaped=sigma_reshaped)

    if op.is_pointwise:
        # 1×1: each kept output position applies W_g to one input position, distinct outputs read distinct
        # inputs, the rest read padding (zero rows): σ = max_g σ_max(W_g), exactly, for any stride and size
        channels = op.weight.reshape(op.groups, op.c_out // op.groups, -1)
        res = batched_matrix_norms(channels, iterations=iterations, tol=tol, seed=seed, exact_limit=exact_limit)
        return NormResult(
            sigma_power=res.sigma_power,
            power_iterations=res.power_iterations,
            sigma_exact=res.sigma_exact,
            exact_method=res.exact_method,
            sigma_upper=res.sigma_upper,
            upper_method=res.upper_method,
            exact_skipped=res.exact_skipped,
            sigma_reshaped=sigma_reshaped,
        )

    power = _power_iteration_fast(op, iterations=iterations, tol=tol, seed=seed)

    candidates: dict[str, float] = {}
    sigma_exact: float | None = None
    exact_method = "skipped"
    skipped: str | None = None
    small, large = sorted((op.n_in, op.n_out))
    if exact_size > exact_limit:
        skipped = f"operator has {exact_size:,} inputs > exact_limit {exact_limit:,}"
    elif small <= 2 or (small <= DENSE_LIMIT and small * large <= DENSE_MAX_ENTRIES):
        sigma_exact = float(sigma_max_svd(op.dense()[None])[0])
        exact_method = "svd"
        candidates["svd+margin"] = sigma_exact * rounding_margin(large)
    else:
        try:
            if op.n_in <= op.n_out:
                sigma_exact = lanczos_sigma_max(
                    lambda v: op.adjoint(op.forward(v)), op.n_in, v0=power.right_vectors[0], tol=LANCZOS_TOL
                )
            else:
                sigma_exact = lanczos_sigma_max(
                    lambda u: op.forward(op.adjoint(u)),
                    op.n_out,
                    v0=op.forward(power.right_vectors)[0],
                    tol=LANCZOS_TOL,
                )
            exact_method = "lanczos"
        except LanczosError as exc:
            skipped = str(exc)

    candidates["circular-fft"] = _circular_bound(op)
    candidates["reshaped-bound"] = _reshaped_bound(op)
    candidates["frobenius"] = _frobenius_bound(op)
    upper_method = min(candidates, key=lambda k: candidates[k])
    # max() with values that are <= σ keeps the certificate and the invariant power <= exact <= upper
    sigma_upper = max(candidates[upper_method], power.sigma, sigma_exact or 0.0)
    return NormResult(
        sigma_power=power.sigma,
        power_iterations=power.iterations,
        sigma_exact=sigma_exact,
        exact_method=exact_method,
        sigma_upper=sigma_upper,
        upper_method=upper_method,
        exact_skipped=skipped,
        sigma_reshaped=sigma_reshaped,
    )
