"""The zero-padded certificate (banded Cholesky of μI − M, lipcheck.norms.zeropad) against independent references:
the dense matrix of the operator (built by lipcheck's conv on basis vectors, SVD'd in float64) and torch's own conv.

It must never be below the SVD value (a certificate), be within its tolerance above it (μ = λ̂·(1 + 1e-6), so
~5e-7 on σ, plus rounding terms far smaller), and refuse (None) when μ is below the top eigenvalue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipcheck.norms.conv import ConvGeometry, _ConvOperator, conv_norms, conv_transpose_norms
from lipcheck.norms.zeropad import banded_grams, plan_zero_pad, zero_padded_sigma
from tests.helpers import random_conv_ops

TOL = 2e-6  # relative, on σ: μ's 1e-6 on λ plus the rounding terms (1e-10 here)


def _sigma(op: _ConvOperator, sigma_hat: float, max_flops: float = 1e12) -> float | None:
    return zero_padded_sigma(op.weight, op.n, op.out, op.strides, op.dilations, op.pads_begin, op.groups,
                             sigma_hat, max_flops=max_flops)


def random_ops(seed: int, count: int) -> list[_ConvOperator]:
    return random_conv_ops(seed, count, dims=(1, 2, 2, 2, 3), max_kernel=4, max_spatial=7)


@pytest.mark.parametrize("op", random_ops(0, 24), ids=lambda op: f"{op.d}d-k{op.kernel}-s{op.strides}-g{op.groups}")
def test_certificate_against_dense_svd(op: _ConvOperator) -> None:
    dense = op.dense()
    exact = float(np.linalg.svd(dense, compute_uv=False)[0]) if dense.size else 0.0
    if exact == 0.0:
        pytest.skip("operator is zero (every kept output reads padding)")
    value = _sigma(op, exact)
    assert value is not None
    assert value >= exact  # never below: a certificate
    assert value <= exact * (1.0 + TOL)
    # μ below the top: the factorization of μI − M cannot complete, whatever the retries
    assert _sigma(op, exact * (1.0 - 2e-3)) is None


def test_operator_layout_matches_torch() -> None:
    """The banded blocks, assembled, are AᵀA (or AAᵀ) of torch's conv: every entry, to rounding."""
    rng = np.random.default_rng(3)
    for geom, w in [
        (ConvGeometry((5, 6), (1, 1), (1, 1), (1, 1), (1, 1), 1), rng.standard_normal((3, 2, 3, 3))),
        (ConvGeometry((7, 5), (2, 1), (1, 2), (1, 0), (2, 1), 2), rng.standard_normal((4, 1, 3, 2))),
        (ConvGeometry((8,), (3,), (1,), (2,), (0,), 1), rng.standard_normal((5, 2, 4))),
    ]:
        op = _ConvOperator(w, geom)
        a = op.dense()
        c_out_g = w.shape[0] // geom.groups
        plan = plan_zero_pad(op.kernel, op.n, op.out, op.strides, op.dilations, op.pads_begin, w.shape[1], c_out_g,
                             geom.groups)
        grams = banded_grams(w, op.n, op.out, op.strides, op.dilations, op.pads_begin, geom.groups, plan)
        full = a.T @ a if plan.side == "input" else a @ a.T
        chans = full.shape[0] // math.prod(op.n if plan.side == "input" else op.out)
        sizes = op.n if plan.side == "input" else op.out
        # lipcheck's flat layout is (channel, *positions); the blocks are (first axis | other axes, channel)
        order = plan.order
        cube = full.reshape(chans, *sizes, chans, *sizes)
        for g, gram in enumerate(grams):
            sel = slice(g * gram.channels, (g + 1) * gram.channels)
            part = cube[(sel,) + (slice(None),) * len(sizes) + (sel,)]
            d = len(sizes)
            # to (axis order..., channel) on both sides
            perm = [1 + i for i in order] + [0] + [d + 2 + i for i in order] + [d + 1]
            part = part.transpose(perm)
            for i in range(gram.rows):
                for j in range(gram.rows):
                    si, sj = gram.span(i), gram.span(j)
                    expect = part[(slice(si.start, si.stop),) + (slice(None),) * d + (slice(sj.start, sj.stop),)]
                    expect = expect.reshape(len(si) * gram.width, len(sj) * gram.width)
                    if abs(i - j) > gram.reach:
                        assert not np.any(expect)
                        continue
                    got = gram.block_at(i, j).numpy()
                    assert np.allclose(got, expect, rtol=1e-12, atol=1e-12 * np.abs(full).max())


def test_refuses_above_its_work_budget() -> None:
    rng = np.random.default_rng(1)
    op = _ConvOperator(rng.standard_normal((8, 8, 3, 3)), ConvGeometry((6, 6), (1, 1), (1, 1), (1, 1), (1, 1), 1))
    exact = float(np.linalg.svd(op.dense(), compute_uv=False)[0])
    plan = plan_zero_pad(op.kernel, op.n, op.out, op.strides, op.dilations, op.pads_begin, 8, 8, 1)
    assert _sigma(op, exact, max_flops=plan.flops * 0.99) is None
    assert _sigma(op, exact, max_flops=plan.flops) is not None


def test_conv_norms_use_it_where_the_circular_bound_is_loose() -> None:
    """Lanczos exact (above the dense limit), a padded 3×3 conv on a small grid: the circular embedding is a few
    per cent above; the layer's certified σ is now within 2e-6 of σ exact, labelled zero-pad-cholesky, and the
    budget 0 turns it off."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((24, 24, 3, 3))
    geom = ConvGeometry((6, 6), (1, 1), (1, 1), (1, 1), (1, 1), 1)
    res = conv_norms(w, geom)
    assert res.exact_method == "lanczos" and res.sigma_exact is not None
    dense = float(np.linalg.svd(_ConvOperator(w, geom).dense(), compute_uv=False)[0])
    assert res.upper_method == "zero-pad-cholesky"
    assert dense <= res.sigma_upper <= dense * (1.0 + TOL)
    off = conv_norms(w, geom, tight_work=0.0)
    assert off.upper_method != "zero-pad-cholesky"
    assert off.sigma_upper > res.sigma_upper * (1.0 + 1e-4)


def test_conv_transpose_uses_the_adjoint() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 12, 3, 3))  # ConvTranspose: (C_in, C_out, k, k); 864 inputs: Lanczos
    geom = ConvGeometry((6, 6), (2, 2), (1, 1), (1, 1), (1, 1), 1)
    res = conv_transpose_norms(w, geom, (1, 1))
    x = torch.eye(24 * 36, dtype=torch.float64).reshape(-1, 24, 6, 6)
    y = torch.nn.functional.conv_transpose2d(x, torch.from_numpy(w), stride=2, padding=1, output_padding=1)
    dense = float(np.linalg.svd(y.reshape(24 * 36, -1).numpy(), compute_uv=False)[0])
    assert res.exact_method == "lanczos"
    assert res.upper_method == "zero-pad-cholesky"
    assert dense <= res.sigma_upper <= dense * (1.0 + TOL)


@pytest.mark.parametrize("group", [1, 2, 3])
def test_every_super_row_size_certifies_and_refuses(group: int) -> None:
    """The banded factorization with one, two or three positions per super-row (block reach 2, 1, 1, last super-row
    shorter): completes just above λ_max with the same bound, never just below."""
    from dataclasses import replace

    from lipcheck.norms.zeropad import _abs_norm_product, certify_banded

    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 4, 3, 3))
    geom = ConvGeometry((7, 4), (1, 1), (1, 1), (1, 1), (1, 1), 1)
    op = _ConvOperator(w, geom)
    lam = float(np.linalg.svd(op.dense(), compute_uv=False)[0]) ** 2
    plan = plan_zero_pad(op.kernel, op.n, op.out, op.strides, op.dilations, op.pads_begin, 4, 3, 1)
    plan = replace(plan, group=group, order=(0, 1))
    [gram] = banded_grams(w, op.n, op.out, op.strides, op.dilations, op.pads_begin, 1, plan)
    assert gram.rows == -(-7 // group) and gram.reach == -(-2 // group)
    done = certify_banded(gram, lam * (1 + 1e-6), _abs_norm_product(w), 200)
    assert done.completed and lam <= done.bound <= lam * (1 + 2e-6)
    assert not certify_banded(gram, lam * (1 - 1e-6), _abs_norm_product(w), 200).completed
