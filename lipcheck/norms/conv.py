"""Spectral norms of convolutions as the linear operators they are on their actual input.

A Conv layer is the map x ↦ conv(zero_pad(x)) on the whole (C_in, *spatial) input tensor (batch 1), with
stride, dilation, groups and possibly asymmetric pads. Its Lipschitz constant is σ_max of that map, which
depends on all of them and on the input size; the reshaped kernel norm that torch's ``spectral_norm``
normalizes is a different number (:func:`reshaped_kernel_norm`, reported as ``sigma_reshaped``).

For every conv, :func:`conv_norms` returns

- ``sigma_power``: power iteration on the real operator (torch conv and its adjoint, the transposed conv with
  the output_padding that lands back on the exact input shape), iterated in float32 from the circular
  embedding's top singular vector refined by up to 30 float32 Lanczos steps, σ̂ evaluated in float64: an
  estimate from below.
- ``sigma_exact``: exact up to floating point. An explicit float64 matrix and its SVD for small operators
  ("svd"), else Lanczos on the Gram operator of the smaller side ("lanczos", tolerance 1e-10, float64, started
  from the power vector). Skipped (``None``, with the reason) when the
  operator has more than ``exact_limit`` inputs. 1×1 convs: SVD of the C_out×C_in channel matrices (max over
  groups); with one group, the eigenvalues of its Gram that σ reshaped already computed ("gram-eigh").
- ``sigma_upper``: certified, the minimum of several certified bounds (``upper_method`` names the winner):
  "circular-fft" (Sedghi, Gupta & Long, ICLR 2019, with the polyphase split of Senderovich, Bulatova &
  Deng 2022 for strides; every frequency certified by a Cholesky factorization, see :func:`_circular_bound`),
  "reshaped-bound" (Tsuzuku, Sato & Sugiyama, NeurIPS 2018, with the exact overlap count of the geometry),
  "frobenius" (the operator's Frobenius norm) and, when the explicit matrix was SVD'd, "svd+margin". Each
  carries an explicit float64 rounding margin (:mod:`lipcheck.norms.margin`).

ConvTranspose (:func:`conv_transpose_norms`) is the adjoint of the Conv with the same weight from the
transpose's output shape to its input shape, so it has the same singular values; every method above is
applied to that Conv.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lipcheck.norms.margin import EPS64, as_float64, rounding_margin
from lipcheck.norms.matrix import batched_matrix_norms, sigma_max_svd
from lipcheck.norms.power import LanczosError, PowerResult, lanczos_ritz_vector, lanczos_sigma_max
from lipcheck.norms.zeropad import zero_padded_sigma
from lipcheck.report.model import NormResult
from lipcheck.threads import configure_torch

configure_torch()  # the thread count the CLI chose (lipcheck.threads), if any

DENSE_LIMIT = 512  # operators whose smaller side is at most this (and ...)
DENSE_MAX_ENTRIES = 4_000_000  # ... with at most this many entries are SVD'd as explicit matrices
LANCZOS_TOL = 1e-10
_BASIS_CHUNK = 64  # basis vectors pushed through the conv at once when building the explicit matrix
_FREQ_CHUNK_ENTRIES = 4_000_000  # complex Gram entries per frequency chunk in the circular bound (64 MB)
_KEEP_GRAM_ENTRIES = 16_000_000  # Grams kept between passes up to this many complex entries (256 MB), else remade
_SMALL_CHOLESKY = 192  # Grams up to this size are factored one LAPACK call at a time (faster than batched there)
_ESTIMATE_STEPS = 10  # batched power steps per frequency Gram: where the dense eigensolver looks
_ESTIMATE_STEPS_SMALL = 4  # the same for Grams up to _SMALL_CHOLESKY
_EXACT_TOP = 8  # frequencies with the largest estimates whose λ_max is computed accurately to place μ
_TOP_LANCZOS_STEPS = 40  # Lanczos steps for those (Grams up to this size: the dense eigensolver)
_TOP_LANCZOS_RESIDUAL = 1e-8  # a Ritz value with a larger relative residual is recomputed densely
_CERT_TOL = 2e-6  # μ = (largest λ found)·(1 + this): the certificate on σ ends <= ~1e-6 above the circular σ
_CERT_ROUNDS = 3  # raise μ to the failed Grams' dense λ_max this many times before falling back
_GRAM_STEPS = 16  # Gram squarings at most in the fallback certificate
TIGHT_WORK = 50.0  # GFLOP per layer the zero-padded certificate may take by default (about 0.4 s on 2 cores)
TIGHT_WORTH = 1e-5  # ... tried only when the other certificates are more than this above σ exact
CIRCULAR_RETRY_GAP = 1e-3  # a circular bound this far above σ exact is tried again on the smallest valid grid
_CIRCULAR_GRAM_FLOPS = 3.0  # × r³ per frequency Gram: its Cholesky, estimates and forming (for the tight-work cap)
_WARM_NOISE = 1e-2  # weight of the seeded Gaussian added to the circular warm start of power iteration
_REFINED_NOISE = 1e-6  # the same for a start refined by Lanczos (already within ~1e-5 of the top)
_KRYLOV_STEPS = 30  # float32 Lanczos steps that refine power iteration's start
_KRYLOV_TOL = 1e-5  # ... or fewer, once the top Ritz pair's relative residual is below this
_KRYLOV_BYTES = 256 * 2**20  # their float32 basis is kept up to this size, else made again in a second pass


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
    """σ_max of the kernel flattened to a matrix after moving axis ``dim`` to the front (exact up to rounding:
    float64 eigensolver on the smaller Gram, :func:`_gram_sigma`).

    This is what ``torch.nn.utils.spectral_norm`` targets (dim 0 for Conv, dim 1 for ConvTranspose,
    torch's defaults). It is NOT the conv's operator norm (see the module docstring).
    """
    w = as_float64(weight, "conv weight")
    mat = np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)
    return _gram_sigma(mat[None])[0]


def _reshaped_sigma(w: np.ndarray) -> tuple[float, float]:
    """(:func:`reshaped_kernel_norm` of a Conv weight, a certified upper bound on it): one eigensolve for both the
    reported σ reshaped and, when every tap reads the input, the reshaped bound."""
    return _gram_sigma(w.reshape(1, w.shape[0], -1))


def _gram_sigma(mats: np.ndarray) -> tuple[float, float]:
    """(max σ_max, a certified upper bound on it) over a (B, m, n) float64 stack, from the eigenvalues of the
    smaller Gram (faster than an SVD of the wide matrix).

    Rounding: fl(M Mᵀ) = M Mᵀ + E with |E| <= γ_k |M||M|ᵀ, so ‖E‖₂ <= γ_k‖M‖_F² (k the summed dimension); the
    symmetric eigensolver adds <= p(s)·ε·‖G‖ (LAPACK). Upper: λ·(1 + c·s·ε) + γ_k‖M‖_F², via rounding_margin."""
    b, m, n = mats.shape
    if m == 0 or n == 0 or not np.any(mats):
        return 0.0, 0.0
    t = torch.from_numpy(np.ascontiguousarray(mats))
    with torch.no_grad():
        gram = t @ t.mT if m <= n else t.mT @ t
        lam = torch.linalg.eigvalsh(0.5 * (gram + gram.mT))[:, -1].numpy()
    k, s = max(m, n), min(m, n)
    fro2 = np.sum(mats * mats, axis=(1, 2))
    upper = lam * rounding_margin(s) + (rounding_margin(k) - 1.0) * fro2 * (1.0 + 1e-9)
    sigma = float(np.sqrt(np.maximum(lam, 0.0)).max())
    return sigma, float(np.sqrt(np.maximum(upper, 0.0)).max()) * (1.0 + 4.0 * EPS64)


def conv_norms(
    weight: np.ndarray,
    geom: ConvGeometry,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
    skip: Mapping[str, str] | None = None,
    tight_work: float = TIGHT_WORK,
) -> NormResult:
    """Norms of the zero-padded Conv with ``weight`` (C_out, C_in/groups, *k) on its actual input.

    sigma_power: estimate from below; sigma_exact: exact (or skipped when C_in·prod(input_spatial) >
    exact_limit); sigma_upper: certified; sigma_reshaped: :func:`reshaped_kernel_norm`.

    ``skip`` (stage -> reason, from the resource limits of :mod:`lipcheck.budget`): stages not to run.
    "operator": the operator is never built (no tensor of the input's or output's size): σ upper is the smaller
    of the table-free reshaped and Frobenius bounds (:func:`_light_norms`), σ power a single probe ‖A e‖;
    "power": the probe instead of power iteration; "exact": σ exact None with the reason; "circular": no circular
    bound; "reshaped": no σ reshaped (nor its bound). Every value left is what it says (certified, from below).
    """
    w = as_float64(weight, "conv weight")
    skip = skip or {}
    sigma_reshaped, reshaped_upper = (None, None) if "reshaped" in skip else _reshaped_sigma(w)
    if "operator" in skip:
        return _light_norms(w, geom, None, sigma_reshaped, reshaped_upper, skip)
    op = _ConvOperator(w, geom)
    op.reshaped_upper = reshaped_upper
    if sigma_reshaped is not None and reshaped_upper is not None:
        op.reshaped_sigma = (sigma_reshaped, reshaped_upper)
    return _operator_norms(
        op,
        sigma_reshaped=sigma_reshaped,
        exact_size=op.n_in,
        iterations=iterations,
        tol=tol,
        seed=seed,
        exact_limit=exact_limit,
        skip=skip,
        tight_flops=tight_work * 1e9,
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
    skip: Mapping[str, str] | None = None,
    tight_work: float = TIGHT_WORK,
) -> NormResult:
    """Norms of the ConvTranspose with ``weight`` (C_in, C_out/groups, *k) on its actual input.

    ``geom`` describes the transposed conv as ONNX/torch do (input_spatial = its input's spatial size;
    pads crop its output). It is the adjoint of the Conv with the same weight from its output shape to its
    input shape (the first ``input_spatial`` outputs of that Conv), so it has the same singular values.
    Same guarantees as :func:`conv_norms`; exact is skipped when C_in·prod(input_spatial) > exact_limit;
    sigma_reshaped is the kernel reshaped along dim 1 (what torch's spectral_norm uses for ConvTranspose).
    ``skip``: as for :func:`conv_norms`.
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
    skip = skip or {}
    sigma_reshaped = None if "reshaped" in skip else reshaped_kernel_norm(w, dim=1)
    if "operator" in skip:
        # certified: √m·σ of the dim-0 reshape (the adjoint Conv's own); the reported σ reshaped stays torch's dim 1
        reshaped_upper = None if "reshaped" in skip else _reshaped_sigma(w)[1]
        return _light_norms(w, adjoint_geom, tuple(geom.input_spatial), sigma_reshaped, reshaped_upper, skip)
    op = _ConvOperator(w, adjoint_geom, kept_out=tuple(geom.input_spatial))
    return _operator_norms(
        op,
        sigma_reshaped=sigma_reshaped,
        exact_size=op.n_out,  # the ConvTranspose's input = the adjoint Conv's output
        iterations=iterations,
        tol=tol,
        seed=seed,
        exact_limit=exact_limit,
        skip=skip,
        tight_flops=tight_work * 1e9,
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
        self.reshaped_upper: float | None = None  # certified σ of the weight reshaped along dim 0, when known
        self.reshaped_sigma: tuple[float, float] | None = None  # (σ, certified σ) of that reshape, when known
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
        # symmetric pads and every output kept: the conv's own padding (and the transposed conv's cropping) do the
        # zero padding without the separate pad / crop copies
        self._direct = self.pads_begin == self.pads_end and self.out == self.natural_out
        self._direct_output_padding = tuple(
            n - ((o - 1) * s - 2 * p + ke)
            for n, o, s, p, ke in zip(self.n, self.out, self.strides, self.pads_begin, self.eff_kernel)
        )
        if any(not 0 <= op < max(s, dil) for op, s, dil in zip(self._direct_output_padding, self.strides,
                                                               self.dilations)):
            self._direct = False

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
        if self._direct:
            y = self._conv(t, w, stride=self.strides, padding=self.pads_begin, dilation=self.dilations,
                           groups=self.groups)
            return y.reshape(b, -1)
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
        if self._direct:
            x = self._conv_t(
                t, w, stride=self.strides, padding=self.pads_begin, output_padding=self._direct_output_padding,
                groups=self.groups, dilation=self.dilations,
            )
            return x.reshape(b, -1)
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


def _t32(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _power_iteration_fast(
    op: _ConvOperator, *, iterations: int, tol: float, seed: int, start: np.ndarray | None = None,
    noise: float = _WARM_NOISE,
) -> PowerResult:
    """Power iteration on the conv operator, iterated in float32 (several times faster than float64 convs),
    reported in float64: σ̂ = ‖A v‖ for the final unit v, evaluated with the float64 operator, so it is still
    a true lower bound (an estimate from below) whatever float32 rounding did to the iterations. Start: the seeded
    Gaussian of :func:`power_iteration`, or ``start`` plus ``noise`` of it; same stopping rule (relative change
    of σ̂ below ``tol``)."""
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal((1, op.n_in))
    if start is not None:  # warm start, plus a little of the seeded Gaussian so no direction is excluded
        v0 = start / np.linalg.norm(start) + noise * v0 / np.linalg.norm(v0)
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


def _power_krylov_start(op: _ConvOperator, start: np.ndarray, steps: int = _KRYLOV_STEPS,
                        tol: float = _KRYLOV_TOL) -> np.ndarray | None:
    """A better start for power iteration: the top Ritz vector of at most ``steps`` float32 Lanczos steps on AᵀA
    from ``start`` (:func:`lipcheck.norms.power.lanczos_ritz_vector`).

    Power iteration converges slowly on convs, whose top singular values cluster (ResNet-50's 3×3 convs: 100
    iterations from the circular top vector end 1e-4…2e-3 below σ, while 30 Lanczos steps and 2-5 iterations end
    1e-9…7e-5 below it, in about half the time). Only the direction is used: the estimate is still power
    iteration's ‖A v‖ in float64, from below. The basis is kept in float32 up to _KRYLOV_BYTES, else the
    recurrence runs twice. A (1, n_in) float64 unit vector, or None."""
    if op.n_in < 3:
        return None
    q0 = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32).reshape(-1))
    with torch.no_grad():
        vec = lanczos_ritz_vector(lambda q: op.adjoint_t(op.apply_t(q[None]))[0], q0, steps=steps, tol=tol,
                                  keep=(steps + 1) * op.n_in * 4 <= _KRYLOV_BYTES)
    if vec is None:
        return None
    out = vec.to(torch.float64).numpy()
    return out[None] / np.linalg.norm(out)


# --------------------------------------------------------------------------------------------------------
# Certified upper bounds


def _circular_bound(op: _ConvOperator, seed: int = 0, grid: tuple[int, ...] | None = None) -> float:
    """The circular embedding's certified σ (see :func:`_circular_bound_and_top`)."""
    return _circular_bound_and_top(op, seed, grid)[0]


def _default_grid(op: _ConvOperator) -> tuple[int, ...]:
    """The coarse circular grid M_d = ⌈(n_d + p_begin + p_end) / s_d⌉ (the N = M·s grid holds the padded input)."""
    return tuple(math.ceil(p / st) for p, st in zip(op.padded, op.strides))


def _smallest_grid(op: _ConvOperator) -> tuple[int, ...]:
    """The smallest coarse grid whose circular conv still contains the zero-padded one: N_d = M_d·s_d >=
    n_d + max(p_begin, p_end). The input sits at offset p_begin, so N >= n + p_begin; a kept output reads at most
    index n + p_begin + p_end − 1, which wraps to below p_begin (the embedding's zeros before the input) once
    N >= n + p_end. A different sampling of the same kernel symbol: its maximum can be lower or higher than the
    default grid's (ResNet-50's /5/5.3/conv2 at 28×28: 2.4e-3 above σ exact on N = 30, 2.3e-4 on N = 29)."""
    return tuple(math.ceil((n + max(b, e)) / st)
                 for n, b, e, st in zip(op.n, op.pads_begin, op.pads_end, op.strides))


def _circular_flops(op: _ConvOperator, grid: tuple[int, ...]) -> float:
    """About the work of :func:`_circular_bound_and_top` on ``grid``: _CIRCULAR_GRAM_FLOPS·r³ per Gram."""
    g = op.groups
    a, b = op.c_out // g, op.weight.shape[1] * math.prod(op.strides)
    grams = math.prod(grid[:-1]) * (grid[-1] // 2 + 1) * g
    return grams * _CIRCULAR_GRAM_FLOPS * float(min(a, b)) ** 3


@dataclass(frozen=True)
class _CircularTop:
    """Where the circular embedding's σ was found: the Gram number (frequency·g + group) among ``grams``, and
    that Gram's top eigenvector when the certificate computed it (else None)."""

    taps: _Taps
    grams: _CircularGrams
    number: int
    vector: np.ndarray | None = None


def _circular_bound_and_top(op: _ConvOperator, seed: int = 0,
                            grid: tuple[int, ...] | None = None) -> tuple[float, _CircularTop | None]:
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

    How it is computed (:class:`_CircularGrams`, :func:`_certify_grams`): the r×r Gram G(ω) of the smaller
    side is the DFT of the kernel's tap autocorrelation C_δ = Σ_{q_j − q_l = δ} V_j V_lᵀ, so all Grams cost a
    few real matrix products per tap pair plus one small real matmul per frequency chunk, instead of an r×r×c
    complex product per frequency. Then λ_max(G(ω)) <= μ is CERTIFIED for every ω by a floating-point
    Cholesky factorization of μI − G(ω) (Higham, Accuracy and Stability, Thm 10.3: a completed Cholesky has
    backward error <= γ_{r+1}·tr; cf. Rump, BIT 2006), with μ just above the largest λ_max found by batched
    power iteration and a dense eigensolver on the top frequencies. The Grams' own rounding is bounded a
    posteriori by γ·‖Σ_j |V_j|‖²; both go into the value returned (never below the circular σ).
    """
    taps = _polyphase_taps(op, grid)
    if taps is None:
        return 0.0, None
    grams = _CircularGrams(taps)
    lam, best, vector = _certify_grams(grams, seed)
    sigma = math.sqrt(max(lam + grams.shift, 0.0)) * (1.0 + 4.0 * EPS64)
    return sigma, _CircularTop(taps, grams, best, vector)


def _power_start_vector(op: _ConvOperator, top: _CircularTop | None) -> np.ndarray | None:
    """A start vector for power iteration on the zero-padded conv: the circular embedding's top right singular
    vector (a plane wave at the top frequency ω*, polyphase components x̂ = K̂(ω*)ᴴu), restricted to the input.
    Any start is valid for an estimate from below; this one begins close to the top of the spectrum.
    Returns a unit (1, n_in) float64 array, or None when it has no energy on the input (or no ``top``)."""
    if top is None:
        return None
    taps, grams, number = top.taps, top.grams, top.number
    freq_index, group = divmod(int(number), grams.g)
    freq = np.array(np.unravel_index(freq_index, grams.fshape))
    if top.vector is not None:
        u = top.vector
    else:
        with torch.no_grad():
            _, vecs = torch.linalg.eigh(grams.select(np.array([number]))[0])
        u = vecs[:, -1].numpy()
    a_side = op.c_out // op.groups <= op.weight.shape[1] * math.prod(op.strides)
    if a_side:  # G = K̂K̂ᴴ (output side): the input vector is K̂ᴴu
        theta = np.zeros(len(taps.offsets))
        for i, m in enumerate(grams.grid):
            theta += ((freq[i] * taps.offsets[:, i]) % m) / m
        k_hat = np.tensordot(np.exp(-2j * np.pi * theta), taps.v[:, group], axes=1)  # (a, b)
        x_hat = np.conj(k_hat).T @ u
    else:  # the Gram was conj(K̂ᴴK̂): its eigenvector, conjugated, is the input vector
        x_hat = np.conj(u)
    x_hat = x_hat.reshape(op.weight.shape[1], *op.strides)  # (c_in/g, phase_1, ..., phase_d)
    padded = np.meshgrid(*(np.arange(n) + pb for n, pb in zip(op.n, op.pads_begin)), indexing="ij")
    coarse = [p // s for p, s in zip(padded, op.strides)]
    phase_of = tuple(p % s for p, s in zip(padded, op.strides))
    angle = sum(2.0 * np.pi * freq[i] * coarse[i] / m for i, m in enumerate(grams.grid))
    # the zero-padded operator's top vector is close to that plane wave times the lowest Dirichlet mode of the
    # input's extent, ∏ sin(π(i + 1)/(n + 1)) (the finite section of a Toeplitz operator): both are tried
    window = np.ones(tuple(op.n))
    for i, n in enumerate(op.n):
        shape = [1] * len(op.n)
        shape[i] = n
        window = window * np.sin(np.pi * (np.arange(n) + 1.0) / (n + 1.0)).reshape(shape)
    candidates = []
    for sign in (1.0, -1.0):  # which of the conjugate pair the real conv's correlation picks: keep the better
        wave = np.real(x_hat[(slice(None),) + phase_of] * np.exp(sign * 1j * angle))
        for taper in (None, window):
            x = np.zeros((op.c_in, *op.n))
            c0 = group * op.weight.shape[1]
            x[c0:c0 + op.weight.shape[1]] = wave if taper is None else wave * taper
            norm = float(np.linalg.norm(x))
            if norm != 0.0 and np.isfinite(norm):
                candidates.append(x.reshape(-1) / norm)
    if not candidates:
        return None
    # the gains only rank the candidates: one float32 call for all four is accurate enough for that
    stack = np.stack(candidates)
    with torch.no_grad():
        gains = torch.linalg.vector_norm(op.apply_t(_t32(stack)), dim=1).numpy()
    return stack[int(np.argmax(gains))][None]


@dataclass(frozen=True)
class _Taps:
    """The conv as a stride-1 circular conv on the coarse grid: V[t, g] (r×c) per kept tap t, with its offset."""

    v: np.ndarray  # (T, g, r, c) float64: W_t per group, oriented so that r = min(a, b) is the Gram side
    offsets: np.ndarray  # (T, d) integer tap offsets on the coarse grid
    grid: tuple[int, ...]  # coarse grid M_d = ⌈padded_d / s_d⌉


def _polyphase_taps(op: _ConvOperator, grid: tuple[int, ...] | None = None) -> _Taps | None:
    """Dilated, polyphase-split kernel taps (None when the kernel is zero), on ``grid`` (default:
    :func:`_default_grid`; never below :func:`_smallest_grid`, where the embedding stops containing the conv)."""
    d, g, s = op.d, op.groups, op.strides
    a = op.c_out // g
    c_in_g = op.weight.shape[1]
    grid = _default_grid(op) if grid is None else tuple(int(m) for m in grid)
    if any(m < lo for m, lo in zip(grid, _smallest_grid(op))):
        raise ValueError(f"circular grid {grid} is smaller than {_smallest_grid(op)}: it would not contain the conv")
    taps_per_dim = tuple(math.ceil(ke / st) for ke, st in zip(op.eff_kernel, s))
    wd = np.zeros((op.c_out, c_in_g, *(q * st for q, st in zip(taps_per_dim, s))))
    where = tuple(slice(0, ke, dil) for ke, dil in zip(op.eff_kernel, op.dilations))
    wd[(slice(None), slice(None)) + where] = op.weight
    split = (op.c_out, c_in_g, *(v for q, st in zip(taps_per_dim, s) for v in (q, st)))
    perm = (0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)))
    b = c_in_g * math.prod(s)
    n_taps = math.prod(taps_per_dim)
    wp = wd.reshape(split).transpose(perm).reshape(g, a, b, n_taps)  # [g, a, (c_in_g, phase), tap]
    v = np.moveaxis(wp, -1, 0)  # (T, g, a, b)
    if a > b:
        v = np.swapaxes(v, -1, -2)  # Gram KᴴK on the input side: conj of Σ V_j V_lᵀ e^{...}, same eigenvalues
    keep = np.any(v != 0.0, axis=(1, 2, 3))  # drop the holes of dilation
    if not keep.any():
        return None
    offsets = np.indices(taps_per_dim).reshape(d, -1).T[keep]
    return _Taps(v=np.ascontiguousarray(v[keep]), offsets=offsets, grid=grid)


class _CircularGrams:
    """The r×r Grams G(ω) of the smaller side of K̂(ω), for every (frequency, group), made on demand.

    G(ω) = Σ_δ C_δ e^{-iθ_δ(ω)}, θ_δ(ω) = 2π Σ_i ω_i δ_i / M_i, C_δ = Σ_{q_j − q_l = δ} V_j V_lᵀ (real, r×r); with
    C_{−δ} = C_δᵀ only δ > 0 is kept: Re G = C_0 + Σ_{δ>0} cos θ (C_δ + C_δᵀ), Im G = Σ_{δ>0} sin θ (C_δᵀ − C_δ).
    Grams are numbered p = frequency·g + group (frequencies in rfftn order: half of the last axis).

    Rounding (``shift``, absolute, on λ): every entry of G is a sum of products |V_j[x, c]|·|V_l[y, c]| times
    unit phases, so |G_computed − G| <= γ_m·(S Sᵀ) entrywise with S = Σ_j |V_j| and m the longest such sum plus
    the phase and accumulation terms; for the complex entries ‖·‖₂ <= √2·γ_m·‖S‖_F².
    """

    def __init__(self, taps: _Taps):
        v, offsets, grid = taps.v, taps.offsets, taps.grid
        n_taps, g, r, c = v.shape
        d = len(grid)
        zero = (0,) * d
        by_delta: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for j in range(n_taps):
            for k in range(n_taps):
                delta = tuple(int(x) for x in offsets[j] - offsets[k])
                if delta >= zero:  # lexicographic: δ = 0 (j = k) and one of each ±δ pair
                    by_delta.setdefault(delta, []).append((j, k))
        vt = torch.from_numpy(v)
        corr: dict[tuple[int, ...], torch.Tensor] = {}
        longest = 1
        with torch.no_grad():
            for delta, pairs in by_delta.items():
                acc = vt[pairs[0][0]] @ vt[pairs[0][1]].mT  # (g, r, r) = Σ_pairs V_j V_kᵀ
                for j, k in pairs[1:]:
                    acc.baddbmm_(vt[j], vt[k].mT)
                corr[delta] = acc
                longest = max(longest, c * len(pairs))
            c0 = corr.pop(zero)
            deltas = sorted(corr)
            # interleaved (real, imaginary) layout, so that one matmul writes the complex Grams in place:
            # [cos θ | sin θ] @ [[sym, 0], [0, anti]] + [C_0, 0], viewed as complex
            self._c0 = torch.zeros(1, g * r * r, 2, dtype=torch.float64)
            self._c0[0, :, 0] = (0.5 * (c0 + c0.mT)).reshape(-1)
            self._c0 = self._c0.reshape(1, -1)
            self._basis = None
            if deltas:
                basis = torch.zeros(2, len(deltas), g * r * r, 2, dtype=torch.float64)
                for i, k in enumerate(deltas):
                    basis[0, i, :, 0] = (corr[k] + corr[k].mT).reshape(-1)
                    basis[1, i, :, 1] = (corr[k].mT - corr[k]).reshape(-1)
                    del corr[k]
                self._basis = basis.reshape(2 * len(deltas), -1)
        self._deltas = np.array(deltas, dtype=np.int64).reshape(-1, d)
        self.grid = grid
        self.g, self.r = g, r
        self.fshape = (*grid[:-1], grid[-1] // 2 + 1)
        self.n_freq = math.prod(self.fshape)
        self.size = self.n_freq * g
        self.chunk = max(1, _FREQ_CHUNK_ENTRIES // max(1, g * r * r))  # frequencies per chunk
        self._kept: list[tuple[int, torch.Tensor]] | None = None
        s_abs = np.abs(v).sum(axis=0)  # (g, r, c)
        s_fro2 = float(np.max(np.sum(s_abs * s_abs, axis=(1, 2))))
        m = longest + 2 * len(by_delta) + 32
        self.shift = math.sqrt(2.0) * (rounding_margin(m) - 1.0) * s_fro2 * (1.0 + 1e-6)

    def of_frequencies(self, freqs: np.ndarray) -> torch.Tensor:
        """The Grams of these frequencies, every group: (len(freqs)·g, r, r) complex128."""
        r = self.r
        if self._basis is None:
            out = self._c0.expand(len(freqs), -1).contiguous()
        else:
            freq = np.stack(np.unravel_index(freqs, self.fshape), axis=1)
            frac = np.zeros((len(freqs), self._deltas.shape[0]))
            for i, m in enumerate(self.grid):  # exact integer reduction mod M before the division: accurate phases
                frac += ((freq[:, i, None] * self._deltas[None, :, i]) % m) / m
            theta = 2.0 * np.pi * frac
            phases = torch.from_numpy(np.concatenate([np.cos(theta), np.sin(theta)], axis=1))
            out = torch.addmm(self._c0, phases, self._basis)
        return torch.view_as_complex(out.reshape(len(freqs), -1, 2)).reshape(-1, r, r)

    def chunks(self):  # type: ignore[no-untyped-def]
        """(first Gram number, Grams) over every frequency, in chunks of bounded memory; kept for the next
        pass when all of them fit in _KEEP_GRAM_ENTRIES, else made again."""
        keep = self.size * self.r * self.r <= _KEEP_GRAM_ENTRIES
        if self._kept is not None:
            yield from self._kept
            return
        kept = []
        for start in range(0, self.n_freq, self.chunk):
            freqs = np.arange(start, min(self.n_freq, start + self.chunk))
            item = (start * self.g, self.of_frequencies(freqs))
            if keep:
                kept.append(item)
            yield item
        if keep:
            self._kept = kept

    def on_grid(self, grid: tuple[int, ...]) -> _CircularGrams:
        """The same kernel's Grams on another coarse grid: the tap autocorrelations (and the rounding margin) do not
        depend on the grid, only the frequencies do, so they are shared, not made again."""
        other = copy.copy(self)
        other.grid = tuple(int(m) for m in grid)
        other.fshape = (*other.grid[:-1], other.grid[-1] // 2 + 1)
        other.n_freq = math.prod(other.fshape)
        other.size = other.n_freq * self.g
        other._kept = None
        return other

    def release(self) -> None:
        """Drop the Grams kept between passes (the next :meth:`chunks` makes them again)."""
        self._kept = None

    def select(self, numbers: np.ndarray) -> torch.Tensor:
        """The Grams with these numbers, in the order given."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.size == 0:
            return torch.empty((0, self.r, self.r), dtype=torch.complex128)
        freqs, inverse = np.unique(numbers // self.g, return_inverse=True)
        out = []
        for start in range(0, len(freqs), self.chunk):
            out.append(self.of_frequencies(freqs[start:start + self.chunk]))
        stacked = torch.cat(out)
        return stacked[torch.from_numpy(inverse.reshape(-1) * self.g + numbers % self.g)]


def _certify_grams(grams: _CircularGrams, seed: int = 0) -> tuple[float, int, np.ndarray | None]:
    """(A certified upper bound on the largest λ_max over every Gram, not counting ``grams.shift``; the number
    of the Gram with the largest λ_max found; its top eigenvector, when computed).

    1. Estimate from below: batched power iteration on every Gram (Rayleigh quotients), then λ_max of the
       _EXACT_TOP Grams with the largest estimates (:func:`_top_lambda`): λ̂ = the largest value seen.
    2. Certify: μ = λ̂·(1 + _CERT_TOL); for every Gram a floating-point Cholesky of fl(μI − G) (G scaled by an
       exact power of two). If it completes, λ_max(G) <= :func:`_cholesky_certified` (Higham, Accuracy and
       Stability, Thm 10.3: R̂ᴴR̂ = F + ΔF with ‖ΔF‖ <= γ_{r+1}·tr F, and R̂ᴴR̂ ⪰ 0; cf. Rump, BIT 2006).
       Only the Cholesky certifies: step 1 only places μ, and a μ placed too low costs a round, never a bound.
    3. A Gram whose factorization fails has λ_max near or above μ: its λ_max is computed, μ raised to that
       value·(1 + _CERT_TOL) and those Grams checked again; after _CERT_ROUNDS, Gram iteration
       (:func:`_gram_certificate`) certifies what is left.
    """
    r = grams.r
    gen = torch.Generator().manual_seed(seed)
    estimates = np.empty(grams.size)
    starts = None if r == 1 else torch.empty(grams.size, r, dtype=torch.complex64)
    with torch.no_grad():
        for first, gram in grams.chunks():
            if r == 1:
                est = gram[:, 0, 0].real
            else:
                # iterated in complex64 (half the memory traffic), the Rayleigh quotient taken in complex128
                g32 = gram.to(torch.complex64)
                x = torch.randn(gram.shape[0], r, 1, generator=gen, dtype=torch.float32).to(torch.complex64)
                x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
                # small Grams: fewer steps, since a failed Cholesky's dense eigenvalue is cheap there
                for _ in range(_ESTIMATE_STEPS if r > _SMALL_CHOLESKY else _ESTIMATE_STEPS_SMALL):
                    x = g32 @ x
                    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
                starts[first:first + gram.shape[0]] = x[:, :, 0]
                x = x.to(torch.complex128)
                x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)
                est = (x.mH @ (gram @ x)).real.reshape(-1)
            estimates[first:first + gram.shape[0]] = est.numpy()
        best = int(np.argmax(estimates)) if estimates.size else 0
        if r == 1:  # 1×1 Grams are their own λ: the computed maximum, rounded up
            return max(float(estimates.max(initial=0.0)), 0.0) * (1.0 + 4.0 * EPS64), best, None
        assert starts is not None
        top = np.argsort(estimates)[::-1][:_EXACT_TOP]
        lam_hat = float(estimates.max(initial=0.0))
        vector = None
        if top.size:
            found, vecs = _top_lambda(grams.select(top), starts[torch.from_numpy(top.copy())])
            if found.max() >= lam_hat:
                i = int(np.argmax(found))
                best, vector = int(top[i]), vecs[i]
            lam_hat = max(lam_hat, float(found.max()))
        mu = lam_hat * (1.0 + _CERT_TOL) if lam_hat > 0 else 1e-300
        failed = _cholesky_failures(grams, mu)
        for _ in range(_CERT_ROUNDS):
            if failed.size == 0:
                break
            found, vecs = _top_lambda(grams.select(failed), starts[torch.from_numpy(failed.copy())])
            if found.max() * (1.0 + _CERT_TOL) > mu:
                i = int(np.argmax(found))
                mu, best, vector = float(found[i]) * (1.0 + _CERT_TOL), int(failed[i]), vecs[i]
            failed = _cholesky_failures(grams, mu, failed)
        lam = _cholesky_certified(mu, r)
        if failed.size:
            lam = max(lam, _gram_certificate(grams.select(failed), mu) * rounding_margin(2.0 * r**1.5))
    return lam, best, vector


def _top_lambda(gram: torch.Tensor, start: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(λ_max, its unit eigenvector) of each Hermitian matrix of the (k, r, r) stack, accurate enough to place μ
    (used only for that: a value below λ_max makes a Cholesky fail, and that Gram comes back here with the
    dense solver's value). Lanczos with full reorthogonalization, _TOP_LANCZOS_STEPS steps from ``start`` (the
    power estimates' vectors); the dense eigensolver for small matrices and for any Ritz pair whose residual
    is above _TOP_LANCZOS_RESIDUAL·λ."""
    k, r = gram.shape[0], gram.shape[-1]
    if k == 0:
        return np.empty(0), np.empty((0, r), dtype=np.complex128)
    if r <= _TOP_LANCZOS_STEPS:
        vals, vecs = torch.linalg.eigh(gram)
        return vals[:, -1].numpy(), vecs[:, :, -1].numpy()
    m = _TOP_LANCZOS_STEPS
    basis = torch.zeros(k, m, r, dtype=torch.complex128)
    alpha = torch.zeros(k, m, dtype=torch.float64)
    beta = torch.zeros(k, m, dtype=torch.float64)
    q = start.to(torch.complex128)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-300)
    for j in range(m):
        basis[:, j] = q
        w = (gram @ q[:, :, None])[:, :, 0]
        alpha[:, j] = torch.sum(q.conj() * w, dim=1).real
        done = basis[:, :j + 1]
        for _ in range(2):  # full reorthogonalization, twice
            w = w - torch.einsum("kjr,kj->kr", done, torch.einsum("kjr,kr->kj", done.conj(), w))
        beta[:, j] = torch.linalg.vector_norm(w, dim=1)
        q = w / beta[:, j, None].clamp_min(1e-300)
    t = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    theta, s_vecs = torch.linalg.eigh(t)
    lam = theta[:, -1]
    residual = (beta[:, -1] * s_vecs[:, -1, -1]).abs()
    vec = torch.einsum("kjr,kj->kr", basis, s_vecs[:, :, -1].to(torch.complex128))
    # a breakdown (β ≈ 0: an invariant subspace) leaves later basis vectors meaningless: recompute those densely
    broken = (beta[:, :-1] <= 1e-10 * lam.abs().clamp_min(1e-300)[:, None]).any(dim=1)
    redo = torch.nonzero(broken | (residual > _TOP_LANCZOS_RESIDUAL * lam.abs())).flatten()
    if redo.numel():
        vals, vecs = torch.linalg.eigh(gram[redo])
        lam[redo] = vals[:, -1]
        vec[redo] = vecs[:, :, -1]
    vec = vec / torch.linalg.vector_norm(vec, dim=1, keepdim=True).clamp_min(1e-300)
    return lam.numpy(), vec.numpy()


def _cholesky_certified(mu: float, r: int) -> float:
    """What a completed Cholesky of F = fl(μI − G) (r×r) certifies: λ_max(G) <= μ + ε·μ (the rounding of F's
    diagonal, |μ − G_ii| <= μ once F_ii > 0) + γ_{r+1}·tr(F)/(1 − γ_{r+1}) with tr F <= r·μ(1 + ε); generous
    constants (×3 on the ε term, rounding_margin's 50× on γ)."""
    gamma = rounding_margin(r + 1) - 1.0
    return mu * (1.0 + 3.0 * EPS64 + gamma * r * (1.0 + EPS64) / (1.0 - gamma))


def _cholesky_completes(f: torch.Tensor) -> np.ndarray:
    """For each Hermitian matrix of the stack, whether its floating-point Cholesky factorization (LAPACK zpotrf,
    lower triangle) ran to completion. Small matrices: one LAPACK call each through scipy (about twice as fast as
    torch's batched path below ~192); larger: torch's batched factorization."""
    if f.shape[-1] <= _SMALL_CHOLESKY:
        from scipy.linalg.lapack import zpotrf

        arr = f.numpy()
        return np.array([zpotrf(arr[i], lower=1, clean=0)[1] == 0 for i in range(arr.shape[0])], dtype=bool)
    _, info = torch.linalg.cholesky_ex(f)
    return info.numpy() == 0


def _cholesky_failures(grams: _CircularGrams, mu: float, only: np.ndarray | None = None) -> np.ndarray:
    """Numbers of the Grams whose Cholesky of fl(μI − G) did not complete (``only``: check just these)."""
    scale = 2.0 ** -math.frexp(mu)[1]  # an exact power of two: scaling G by it rounds nothing
    failed: list[np.ndarray] = []

    def check(numbers: np.ndarray, gram: torch.Tensor) -> None:
        f = gram.mul_(-scale)  # in place: every Gram here is a fresh or a last-use copy
        f.diagonal(dim1=-2, dim2=-1).real.add_(mu * scale)
        failed.append(numbers[~_cholesky_completes(f)])

    if only is None:
        for first, gram in grams.chunks():
            check(np.arange(first, first + gram.shape[0]), gram)
        grams.release()  # the kept Grams were factored in place: made again on demand from now on
    else:
        per = grams.chunk * grams.g
        for start in range(0, len(only), per):
            part = np.asarray(only[start:start + per], dtype=np.int64)
            check(part, grams.select(part))
    return np.concatenate(failed) if failed else np.empty(0, dtype=np.int64)


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
    input are dropped from W_g. σ_max(W_g) is certified by :func:`_gram_sigma`.
    """
    m = op.max_reads()
    used = [np.flatnonzero(valid.any(axis=0)) for valid in op.read_valid]
    g = op.groups
    if g == 1 and op.reshaped_upper is not None and all(len(u) == k for u, k in zip(used, op.kernel)):
        return math.sqrt(m) * op.reshaped_upper * (1.0 + 2.0 * EPS64)  # the same matrix as σ reshaped's
    w = op.weight[np.ix_(np.arange(op.c_out), np.arange(op.weight.shape[1]), *used)]
    mats = w.reshape(g, op.c_out // g, -1)
    return math.sqrt(m) * _gram_sigma(mats)[1] * (1.0 + 2.0 * EPS64)


def _frobenius_bound(op: _ConvOperator) -> float:
    """Certified (loose): the operator's Frobenius norm, Σ_taps ‖W[:, :, tap]‖_F² · (#outputs whose tap reads
    a real input), exact from the geometry. Margin: one term per weight entry."""
    energy = np.sum(op.weight**2, axis=(0, 1))  # per tap
    for i, valid in enumerate(op.read_valid):
        shape = [1] * op.d
        shape[i] = -1
        energy = energy * valid.sum(axis=0).reshape(shape)
    return math.sqrt(float(energy.sum())) * rounding_margin(op.weight.size)


@dataclass(frozen=True)
class _Reads:
    """The conv's read pattern per spatial dim without tables of the output's size (for geometries too large to
    build :class:`_ConvOperator`, e.g. pads of 1e9): output o reads input o·s + j·dil − pb through tap j."""

    n: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    out: tuple[int, ...]  # the kept outputs

    @staticmethod
    def of(op: _ConvOperator) -> _Reads:
        return _Reads(op.n, op.kernel, op.strides, op.dilations, op.pads_begin, op.out)

    def max_reads_upper(self) -> int:
        """>= the largest number of (output, tap) pairs reading one input element: per dim, a tap reads input p from
        at most one output, and only when j·dil ≡ p + pb (mod s); the product over dims of the largest such count."""
        m = 1
        for k, s, dil in zip(self.kernel, self.strides, self.dilations):
            m *= int(np.bincount((np.arange(k) * dil) % s, minlength=s).max())
        return m

    def taps_reading(self, d: int, p: int) -> np.ndarray:
        """The taps through which some kept output reads input index ``p`` of dim ``d``."""
        j = np.arange(self.kernel[d])
        q = p + self.pads_begin[d] - j * self.dilations[d]
        ok = (q >= 0) & (q % self.strides[d] == 0) & (q // self.strides[d] < self.out[d])
        return j[ok]

    def outputs_per_tap(self, d: int) -> np.ndarray:
        """For each tap j of dim ``d``: how many kept outputs read a real input through it (closed form)."""
        j = np.arange(self.kernel[d])
        s, pb, n = self.strides[d], self.pads_begin[d], self.n[d]
        first = np.maximum(0, -((j * self.dilations[d] - pb) // s))  # ceil((pb − j·dil)/s), at least 0
        last = np.minimum(self.out[d] - 1, (n - 1 + pb - j * self.dilations[d]) // s)
        return np.maximum(0, last - first + 1)


def _probe_sigma(weight: np.ndarray, reads: _Reads, groups: int) -> float:
    """max over input channels c of ‖A e_{c,p}‖ for a unit input element at a position p read by the most taps
    (per dim, among a stride's worth of positions around the middle and the two ends): a true value ‖A e‖ with
    ‖e‖ = 1, so an estimate from below of σ, computed from the weight alone. Stands in for power iteration when
    the resource limits skip it."""
    chosen = []
    for d, n in enumerate(reads.n):
        mid = n // 2
        candidates = {0, n - 1, *(min(n - 1, mid + i) for i in range(reads.strides[d]))}
        best = max((reads.taps_reading(d, p) for p in sorted(candidates)), key=len)
        if best.size == 0:
            return 0.0
        chosen.append(best)
    sub = weight[np.ix_(np.arange(weight.shape[0]), np.arange(weight.shape[1]), *chosen)]
    energy = np.sum(sub * sub, axis=tuple(range(2, weight.ndim)))  # (C_out, C_in/g)
    c_out, c_in_g = energy.shape
    # input channel (group gi, local c) reaches the C_out/g outputs of its group
    per_channel = energy.reshape(groups, c_out // groups, c_in_g).sum(axis=1)
    return float(np.sqrt(per_channel.max(initial=0.0)))


def _light_norms(
    w: np.ndarray,
    geom: ConvGeometry,
    kept_out: tuple[int, ...] | None,
    sigma_reshaped: float | None,
    reshaped_upper: float | None,
    skip: Mapping[str, str],
) -> NormResult:
    """Norms without building the operator (skip "operator"): σ upper = the smaller of √m·σ(W reshaped) (m from
    :meth:`_Reads.max_reads_upper`, certified as in :func:`_reshaped_bound`) and the operator's Frobenius norm in
    closed form (as :func:`_frobenius_bound`); σ power = :func:`_probe_sigma` (0 iterations); σ exact skipped."""
    d = len(geom.input_spatial)
    if w.ndim != d + 2:
        raise ValueError(f"conv weight {w.shape} does not fit the geometry {geom}")
    kernel = tuple(int(k) for k in w.shape[2:])
    padded = tuple(n + b + e for n, b, e in zip(geom.input_spatial, geom.pads_begin, geom.pads_end))
    eff = tuple(dil * (k - 1) + 1 for dil, k in zip(geom.dilations, kernel))
    if any(p < ke for p, ke in zip(padded, eff)):
        raise ValueError(f"the (dilated) kernel {eff} is larger than the padded input")
    natural = tuple((p - ke) // s + 1 for p, ke, s in zip(padded, eff, geom.strides))
    reads = _Reads(tuple(geom.input_spatial), kernel, tuple(geom.strides), tuple(geom.dilations),
                   tuple(geom.pads_begin), natural if kept_out is None else tuple(kept_out))
    reason = skip["operator"]
    if not np.any(w):
        return NormResult(0.0, 0, 0.0, "zero-operator", 0.0, "zero-operator", sigma_reshaped=sigma_reshaped)
    probe = _probe_sigma(w, reads, int(geom.groups))
    energy = np.sum(w * w, axis=(0, 1))  # per tap
    for i in range(d):
        shape = [1] * d
        shape[i] = -1
        energy = energy * reads.outputs_per_tap(i).reshape(shape)
    candidates = {"frobenius": math.sqrt(float(energy.sum())) * rounding_margin(w.size)}
    if reshaped_upper is not None:
        candidates["reshaped-bound"] = math.sqrt(reads.max_reads_upper()) * reshaped_upper * (1.0 + 2.0 * EPS64)
    upper_method = min(candidates, key=lambda k: candidates[k])
    return NormResult(
        sigma_power=probe, power_iterations=0, sigma_exact=None, exact_method="skipped",
        sigma_upper=max(candidates[upper_method], probe), upper_method=upper_method, exact_skipped=reason,
        sigma_reshaped=sigma_reshaped,
    )


# --------------------------------------------------------------------------------------------------------
# Putting it together


def _operator_norms(
    op: _ConvOperator,
    *,
    sigma_reshaped: float | None,
    exact_size: int,
    iterations: int,
    tol: float,
    seed: int,
    exact_limit: int,
    skip: Mapping[str, str] | None = None,
    tight_flops: float = 0.0,
) -> NormResult:
    skip = skip or {}
    if op.max_reads() == 0 or not np.any(op.weight):
        # every kept output reads only padding, or the kernel is zero: the operator is 0
        return NormResult(0.0, 0, 0.0, "zero-operator", 0.0, "zero-operator", sigma_reshaped=sigma_reshaped)

    if op.is_pointwise:
        # 1×1: each kept output position applies W_g to one input position, distinct outputs read distinct
        # inputs, the rest read padding (zero rows): σ = max_g σ_max(W_g), exactly, for any stride and size
        channels = op.weight.reshape(op.groups, op.c_out // op.groups, -1)
        # one group: the channel matrix is the kernel reshaped along dim 0, whose σ (and certified bound) the
        # spectral-norm audit has just computed from its Gram's eigenvalues (op.reshaped_sigma): not again
        known = op.reshaped_sigma if op.groups == 1 else None
        res = batched_matrix_norms(channels, iterations=iterations, tol=tol, seed=seed, exact_limit=exact_limit,
                                   gram_eigh=known)
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

    if "circular" in skip:
        circular, top = math.inf, None
    else:
        circular, top = _circular_bound_and_top(op, seed)
    if "power" in skip:
        probe = _probe_sigma(op.weight, _Reads.of(op), op.groups)
        power = PowerResult(sigma=probe, sigmas=np.array([probe]), iterations=0, right_vectors=np.zeros((1, 0)))
    else:
        start = _power_start_vector(op, top)
        if start is None:
            start = np.random.default_rng(seed).standard_normal((1, op.n_in))
        refined = _power_krylov_start(op, start)
        power = _power_iteration_fast(op, iterations=iterations, tol=tol, seed=seed,
                                      start=start if refined is None else refined,
                                      noise=_WARM_NOISE if refined is None else _REFINED_NOISE)

    candidates: dict[str, float] = {}
    sigma_exact: float | None = None
    exact_method = "skipped"
    skipped: str | None = None
    small, large = sorted((op.n_in, op.n_out))
    if "exact" in skip or "power" in skip:
        skipped = skip.get("exact") or skip["power"]
    elif exact_size > exact_limit:
        skipped = (
            "exact values disabled (--no-exact)" if exact_limit <= 0
            else f"operator has {exact_size:,} inputs > exact_limit {exact_limit:,}"
        )
    elif small <= 2 or (small <= DENSE_LIMIT and small * large <= DENSE_MAX_ENTRIES):
        sigma_exact = float(sigma_max_svd(op.dense()[None])[0])
        exact_method = "svd"
        candidates["svd+margin"] = sigma_exact * rounding_margin(large)
    else:
        try:
            # float64 Lanczos from the power vector, which the float32 Lanczos start has already brought within
            # ~1e-5 of the top (a separate float32 warm-up run, as before, no longer pays for itself)
            if op.n_in <= op.n_out:
                sigma_exact = lanczos_sigma_max(
                    lambda v: op.adjoint(op.forward(v)), op.n_in, v0=power.right_vectors[0], tol=LANCZOS_TOL
                )
            else:
                sigma_exact = lanczos_sigma_max(
                    lambda u: op.forward(op.adjoint(u)), op.n_out, v0=op.forward(power.right_vectors)[0],
                    tol=LANCZOS_TOL,
                )
            exact_method = "lanczos"
        except LanczosError as exc:
            skipped = str(exc)

    if (exact_method == "lanczos" and sigma_exact is not None and tight_flops > 0 and math.isfinite(circular)
            and circular > sigma_exact * (1.0 + CIRCULAR_RETRY_GAP) and "zero-pad" not in skip):
        # the circular embedding on the smallest valid grid samples the kernel's symbol elsewhere: a second
        # certificate, often tighter where the spatial size is small (both are certified: the smaller is kept)
        smallest = _smallest_grid(op)
        if top is not None and smallest != _default_grid(op) and _circular_flops(op, smallest) <= tight_flops:
            grams = top.grams.on_grid(smallest)
            lam, _, _ = _certify_grams(grams, seed)
            circular = min(circular, math.sqrt(max(lam + grams.shift, 0.0)) * (1.0 + 4.0 * EPS64))
    if math.isfinite(circular):
        candidates["circular-fft"] = circular
    if "reshaped" not in skip:
        candidates["reshaped-bound"] = _reshaped_bound(op)
    candidates["frobenius"] = _frobenius_bound(op)
    # the zero-padded operator itself (banded Cholesky of μI − M, lipcheck.norms.zeropad), within its work budget
    if (exact_method == "lanczos" and sigma_exact is not None and tight_flops > 0 and "zero-pad" not in skip
            and min(candidates.values()) > sigma_exact * (1.0 + TIGHT_WORTH)):
        tight = zero_padded_sigma(op.weight, op.n, op.out, op.strides, op.dilations, op.pads_begin, op.groups,
                                  sigma_exact, max_flops=tight_flops)
        if tight is not None:
            candidates["zero-pad-cholesky"] = tight
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
