"""The circular-embedding bound against an independent reference: the dense matrix of the strided circular conv
on the N = M·s grid (built with torch's circular padding, SVD'd in float64). The bound must never be below it and
may be above it only by the certificate's tolerance (μ = λ̂·(1 + 2e-6), so ~1e-6 on σ)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lipcheck.norms.conv as conv
from lipcheck.norms.conv import ConvGeometry, _circular_bound, _ConvOperator
from tests.helpers import random_conv_ops

TOL = 5e-6


def dense_circular_sigma(op: _ConvOperator) -> float:
    """σ_max of x ↦ subsample_s(circular_conv(x)) on the grid N_d = ⌈padded_d / s_d⌉·s_d: the quantity the
    circular bound certifies, from its explicit matrix."""
    return dense_circular_sigma_on(op, tuple(math.ceil(p / s) for p, s in zip(op.padded, op.strides)))


def dense_circular_sigma_on(op: _ConvOperator, grid: tuple[int, ...]) -> float:
    """The same on a given coarse grid (N_d = grid_d·s_d)."""
    d = op.d
    size = tuple(m * s for m, s in zip(grid, op.strides))
    fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    n_in = op.c_in * math.prod(size)
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, op.c_in, *size)
    pad = [p for i in reversed(range(d)) for p in (0, op.eff_kernel[i] - 1)]
    x = F.pad(basis, pad, mode="circular") if any(pad) else basis
    y = fn(x, torch.from_numpy(op.weight), stride=op.strides, dilation=op.dilations, groups=op.groups)
    y = y[(slice(None), slice(None)) + tuple(slice(0, m) for m in grid)]
    return float(np.linalg.svd(y.reshape(n_in, -1).numpy().T, compute_uv=False)[0])


def random_ops(seed: int, count: int) -> list[_ConvOperator]:
    return random_conv_ops(seed, count)


@pytest.mark.parametrize("seed", range(4))
def test_circular_bound_matches_dense_circular_operator(seed: int) -> None:
    for op in random_ops(seed, 15):
        ref = dense_circular_sigma(op)
        got = _circular_bound(op)
        assert ref <= got <= ref * (1 + TOL), (op.weight.shape, op.n, op.strides, op.dilations, ref, got)


def test_wide_and_tall_channel_blocks() -> None:
    """Gram on the output side (C_out < C_in·s²) and on the input side (C_out > C_in·s²)."""
    rng = np.random.default_rng(7)
    for c_out, c_in, s in ((2, 6, 1), (8, 1, 1), (3, 2, 2), (12, 1, 2)):
        w = rng.standard_normal((c_out, c_in, 3, 3))
        op = _ConvOperator(w, ConvGeometry((5, 6), (s, s), (1, 1), (1, 1), (1, 1), 1))
        ref = dense_circular_sigma(op)
        assert ref <= _circular_bound(op) <= ref * (1 + TOL)


@pytest.fixture
def no_estimates(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No power steps and no dense eigenvalues: μ starts at a random vector's Rayleigh quotient, far too low."""
    monkeypatch.setattr(conv, "_ESTIMATE_STEPS", 0)
    monkeypatch.setattr(conv, "_ESTIMATE_STEPS_SMALL", 0)
    monkeypatch.setattr(conv, "_EXACT_TOP", 0)
    return monkeypatch


def test_certificate_holds_when_the_estimates_are_poor(no_estimates: pytest.MonkeyPatch) -> None:
    """Every failed Cholesky raises μ to that Gram's dense λ_max: still in [ref, ref·(1 + TOL)]."""
    for op in random_ops(11, 8):
        ref = dense_circular_sigma(op)
        assert ref <= _circular_bound(op) <= ref * (1 + TOL)


def test_gram_iteration_fallback_is_still_certified(no_estimates: pytest.MonkeyPatch) -> None:
    """With no rounds of raising μ, the Grams whose Cholesky fails go to Gram iteration: looser, never below."""
    no_estimates.setattr(conv, "_CERT_ROUNDS", 0)
    for op in random_ops(12, 8):
        ref = dense_circular_sigma(op)
        assert _circular_bound(op) >= ref


def test_chunked_grams_equal_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frequency chunks of one Gram each, not kept between passes: the same value."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3))
    op = _ConvOperator(w, ConvGeometry((6, 6), (1, 1), (1, 1), (1, 1), (1, 1), 1))
    whole = _circular_bound(op)
    monkeypatch.setattr(conv, "_FREQ_CHUNK_ENTRIES", 1)
    monkeypatch.setattr(conv, "_KEEP_GRAM_ENTRIES", 0)
    assert _circular_bound(op) == pytest.approx(whole, rel=1e-12)


def test_cholesky_certificate_on_random_psd_matrices() -> None:
    """Where fl(μI − G) factors, λ_max(G) is at most the certified value; where λ_max > μ it must not factor."""
    rng = np.random.default_rng(5)
    for r in (2, 5, 40):
        k = rng.standard_normal((20, r, r)) + 1j * rng.standard_normal((20, r, r))
        gram = torch.from_numpy(k @ np.conj(np.swapaxes(k, -1, -2)))
        lam = torch.linalg.eigvalsh(gram)[:, -1].numpy()
        for mu in (float(lam.max()) * (1 + 1e-9), float(np.median(lam))):
            scale = 2.0 ** -math.frexp(mu)[1]
            f = gram * (-scale)
            f.diagonal(dim1=-2, dim2=-1).real.add_(mu * scale)
            _, info = torch.linalg.cholesky_ex(f)
            ok = info.numpy() == 0
            assert np.all(lam[ok] <= conv._cholesky_certified(mu, r))
            assert not np.any(ok & (lam > mu * (1 + 1e-12)))


def test_reshaped_gram_sigma_matches_svd() -> None:
    rng = np.random.default_rng(9)
    for shape in ((1, 5, 40), (3, 40, 5), (2, 16, 16)):
        mats = rng.standard_normal(shape)
        svd = float(np.linalg.svd(mats, compute_uv=False)[..., 0].max())
        sigma, upper = conv._gram_sigma(mats)
        assert sigma == pytest.approx(svd, rel=1e-12)
        assert svd <= upper <= svd * (1 + 1e-9)



@pytest.mark.parametrize("seed", range(3))
def test_the_smallest_grid_still_contains_the_zero_padded_conv(seed: int) -> None:
    """N = n + max(p_begin, p_end): the certificate matches that grid's dense circular σ and is never below the
    zero-padded operator's σ (its dense SVD), whatever the pads, strides, dilations and groups."""
    for op in random_ops(40 + seed, 12):
        grid = conv._smallest_grid(op)
        ref = dense_circular_sigma_on(op, grid)
        got = _circular_bound(op, grid=grid)
        sigma = float(np.linalg.svd(op.dense(), compute_uv=False)[0])
        assert ref <= got <= ref * (1 + TOL)
        assert got >= sigma * (1 - 1e-12), (op.weight.shape, op.n, op.strides, op.pads_begin, op.pads_end)


def test_a_grid_below_the_smallest_is_refused() -> None:
    op = _ConvOperator(np.ones((2, 2, 3, 3)), ConvGeometry((6, 6), (1, 1), (1, 1), (2, 0), (0, 1), 1))
    assert conv._smallest_grid(op) == (8, 7)
    with pytest.raises(ValueError, match="would not contain"):
        _circular_bound(op, grid=(7, 7))


def test_conv_norms_keeps_the_tighter_of_the_two_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    """With σ exact known and the default grid's bound over 1e-3 above it, the smallest grid is tried within
    --tight-work (the zero-padded certificate is switched off here to see it); tight_work=0 skips it."""
    w = np.random.default_rng(3).standard_normal((8, 8, 3, 3))
    geom = ConvGeometry((10, 10), (1, 1), (1, 1), (1, 1), (1, 1), 1)
    op = _ConvOperator(w, geom)
    default, smallest = _circular_bound(op), _circular_bound(op, grid=conv._smallest_grid(op))
    assert smallest < default / 1.005  # this kernel: 4.1e-3 against 1.3e-2 above σ
    monkeypatch.setattr(conv, "zero_padded_sigma", lambda *a, **k: None)
    res = conv.conv_norms(w, geom)
    assert res.exact_method == "lanczos" and res.upper_method == "circular-fft"
    assert res.sigma_upper == pytest.approx(smallest, rel=1e-12)
    assert conv.conv_norms(w, geom, tight_work=0).sigma_upper == pytest.approx(default, rel=1e-12)
