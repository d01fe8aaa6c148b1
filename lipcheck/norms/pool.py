"""Spectral norms of average pooling, a linear operator (the same one on every channel).

ONNX AveragePool's window for output o in one spatial dim reads input positions o·s + j·dil − pads_begin
(j < k) and divides by a count that factorizes over dims (the number of real inputs in the window with
count_include_pad=0, or of positions inside the padded range with count_include_pad=1). So per channel the
operator is the Kronecker product A_1 ⊗ … ⊗ A_D of 1-D averaging matrices, and σ_max = Π_d σ_max(A_d)
(the singular values of a Kronecker product are the products of the factors' singular values).
Semantics checked against onnxruntime in tests/norms/test_operator_norms.py, including ceil_mode (a last window that
would start in the end padding is dropped) and asymmetric pads.
"""

from __future__ import annotations

import math

import numpy as np

from lipcheck.norms.margin import rounding_margin
from lipcheck.norms.matrix import sigma_max_svd
from lipcheck.norms.power import power_iteration
from lipcheck.report.model import NormResult


def average_pool_output_size(
    n: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int, ceil_mode: bool
) -> int:
    """Number of windows in one dim, as onnxruntime computes it (ceil_mode drops a window that would start
    in the end padding)."""
    span = n + pad_begin + pad_end - (dilation * (kernel - 1) + 1)
    if span < 0:
        raise ValueError(f"AveragePool kernel {kernel} (dilation {dilation}) exceeds the padded input {n}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + pad_begin:
        out -= 1
    return out


def average_pool_matrix(
    n: int,
    kernel: int,
    stride: int,
    pad_begin: int,
    pad_end: int,
    dilation: int,
    count_include_pad: bool,
    ceil_mode: bool,
) -> np.ndarray:
    """The exact 1-D AveragePool operator as a dense (n_out, n) float64 matrix (ONNX semantics)."""
    out = average_pool_output_size(n, kernel, stride, pad_begin, pad_end, dilation, ceil_mode)
    pos = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pad_begin
    real = (pos >= 0) & (pos < n)
    if count_include_pad:
        divisor = ((pos >= -pad_begin) & (pos < n + pad_end)).sum(axis=1)
    else:
        divisor = real.sum(axis=1)
    a = np.zeros((out, n))
    rows = np.broadcast_to(np.arange(out)[:, None], pos.shape)
    weight = np.broadcast_to((1.0 / np.maximum(divisor, 1))[:, None], pos.shape)
    np.add.at(a, (rows[real], pos[real]), weight[real])
    return a


def average_pool_norms(
    input_spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads_begin: tuple[int, ...],
    pads_end: tuple[int, ...],
    dilations: tuple[int, ...],
    count_include_pad: bool,
    ceil_mode: bool,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
) -> NormResult:
    """Norms of ONNX AveragePool on one channel (every channel is the same operator).

    sigma_exact: Π_d σ_max(A_d) by SVD of each 1-D matrix ("kronecker-svd", exact); sigma_upper: that times a
    rounding margin (certified); sigma_power: power iteration on the Kronecker operator (estimate from below).
    """
    d = len(input_spatial)
    fields = (kernel, strides, pads_begin, pads_end, dilations)
    if d == 0 or any(len(f) != d for f in fields):
        raise ValueError(f"AveragePool attributes {fields} do not fit spatial size {input_spatial}")
    mats = [
        average_pool_matrix(int(n), int(k), int(s), int(pb), int(pe), int(dil), count_include_pad, ceil_mode)
        for n, k, s, pb, pe, dil in zip(input_spatial, kernel, strides, pads_begin, pads_end, dilations)
    ]
    exact = math.prod(float(sigma_max_svd(a[None])[0]) for a in mats)
    margin = rounding_margin(sum(max(a.shape) for a in mats) + d)
    in_shape = tuple(a.shape[1] for a in mats)
    out_shape = tuple(a.shape[0] for a in mats)

    def apply(x: np.ndarray, transpose: bool = False) -> np.ndarray:
        b = x.shape[0]
        t = x.reshape(b, *(out_shape if transpose else in_shape))
        for i, a in enumerate(mats):
            t = np.moveaxis(np.tensordot(a.T if transpose else a, t, axes=([1], [i + 1])), 0, i + 1)
        return t.reshape(b, -1)

    power = power_iteration(
        apply,
        lambda y: apply(y, transpose=True),
        math.prod(in_shape),
        iterations=iterations,
        tol=tol,
        seed=seed,
    )
    return NormResult(
        sigma_power=power.sigma,
        power_iterations=power.iterations,
        sigma_exact=exact,
        exact_method="kronecker-svd",
        sigma_upper=max(exact * margin, power.sigma),
        upper_method="kronecker-svd+margin",
    )


def global_average_pool_norm(spatial: tuple[int, ...]) -> NormResult:
    """GlobalAveragePool over ``spatial``: the row (1/n)·1ᵀ has σ = 1/√n, n = prod(spatial) (closed form)."""
    n = math.prod(int(v) for v in spatial)
    if n < 1:
        raise ValueError(f"GlobalAveragePool over an empty spatial size {spatial}")
    value = 1.0 / math.sqrt(n)
    return NormResult(
        sigma_power=value,
        power_iterations=0,
        sigma_exact=value,
        exact_method="closed-form",
        sigma_upper=value * rounding_margin(2),
        upper_method="closed-form+margin",
    )
