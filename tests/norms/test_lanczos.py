"""The float64 Lanczos behind sigma_exact and the float32 Lanczos that refines power iteration's start, against
dense references (numpy's eigvalsh / SVD of the explicit matrix)."""

from __future__ import annotations

import numpy as np
import pytest

from lipcheck.norms import conv, power
from lipcheck.norms.conv import ConvGeometry, _ConvOperator, _power_iteration_fast, _power_krylov_start
from lipcheck.norms.power import lanczos_sigma_max


def clustered_gram(n: int, seed: int, top_gap: float) -> np.ndarray:
    """A PSD n×n matrix with a cluster of eigenvalues just below the top (top_gap relative), like a conv's."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    vals = np.concatenate([[1.0], 1.0 - top_gap * (1.0 + np.arange(min(20, n - 1))), rng.uniform(0, 0.9, n - 21)])
    return (q * vals[:n]) @ q.T


@pytest.mark.parametrize("n, seed, gap", [(300, 1, 1e-3), (500, 2, 1e-4), (200, 3, 1e-2)])
def test_three_term_lanczos_matches_the_dense_eigenvalue(n: int, seed: int, gap: float) -> None:
    g = clustered_gram(n, seed, gap)
    ref = float(np.sqrt(np.linalg.eigvalsh(g)[-1]))
    got = lanczos_sigma_max(lambda v: v @ g, n, tol=1e-10)
    assert abs(got - ref) <= 1e-9 * ref


@pytest.mark.parametrize("n", [3, 4, 7, 12])
def test_small_and_rank_deficient_operators(n: int) -> None:
    """Tiny sizes end in an invariant subspace (β = 0) within n steps; a rank-1 Gram right away."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n + 2, n))
    g = a.T @ a
    ref = np.linalg.svd(a, compute_uv=False)[0]
    assert abs(lanczos_sigma_max(lambda v: v @ g, n) - ref) <= 1e-9 * ref
    u = rng.standard_normal(n)
    rank1 = np.outer(u, u)
    assert abs(lanczos_sigma_max(lambda v: v @ rank1, n) - np.linalg.norm(u)) <= 1e-9 * np.linalg.norm(u)


def test_arpack_takes_over_when_the_recurrence_does_not_converge(monkeypatch: pytest.MonkeyPatch) -> None:
    g = clustered_gram(300, 4, 1e-3)
    ref = float(np.sqrt(np.linalg.eigvalsh(g)[-1]))
    calls: list[int] = []
    arpack = power._arpack_top
    monkeypatch.setattr(power, "_LANCZOS_MAX_STEPS", 4)
    monkeypatch.setattr(power, "_arpack_top", lambda *a: calls.append(1) or arpack(*a))
    assert abs(lanczos_sigma_max(lambda v: v @ g, 300) - ref) <= 1e-9 * ref
    assert calls == [1]


def conv_ops() -> list[_ConvOperator]:
    rng = np.random.default_rng(11)
    return [
        _ConvOperator(rng.standard_normal((6, 4, 3, 3)), ConvGeometry((7, 7), (1, 1), (1, 1), (1, 1), (1, 1), 1)),
        _ConvOperator(rng.standard_normal((8, 8, 3, 3)), ConvGeometry((6, 5), (1, 1), (1, 1), (1, 1), (1, 1), 2)),
        _ConvOperator(rng.standard_normal((5, 3, 5)), ConvGeometry((19,), (2,), (1,), (2,), (1,), 1)),
    ]


@pytest.mark.parametrize("index", range(3))
def test_refined_start_gives_an_estimate_from_below_close_to_sigma(index: int) -> None:
    op = conv_ops()[index]
    sigma = float(np.linalg.svd(op.dense(), compute_uv=False)[0])
    start = np.random.default_rng(0).standard_normal((1, op.n_in))
    refined = _power_krylov_start(op, start)
    assert refined is not None and refined.shape == (1, op.n_in)
    assert abs(np.linalg.norm(refined) - 1.0) <= 1e-6
    est = _power_iteration_fast(op, iterations=100, tol=1e-6, seed=0, start=refined, noise=conv._REFINED_NOISE)
    assert est.sigma <= sigma * (1 + 1e-12)  # an estimate from below (up to the float64 evaluation's rounding)
    assert est.sigma >= sigma * (1 - 1e-4)


def test_the_two_pass_ritz_vector_equals_the_kept_basis_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without room for the basis the recurrence runs again and sums the Ritz vector: the same direction."""
    op = conv_ops()[0]
    start = np.random.default_rng(1).standard_normal((1, op.n_in))
    kept = _power_krylov_start(op, start, steps=12, tol=0.0)
    monkeypatch.setattr(conv, "_KRYLOV_BYTES", 0)
    again = _power_krylov_start(op, start, steps=12, tol=0.0)
    assert kept is not None and again is not None
    assert abs(abs(float((kept @ again.T)[0, 0])) - 1.0) <= 1e-5


def test_a_start_that_is_zero_or_not_finite_refines_nothing() -> None:
    op = conv_ops()[0]
    assert _power_krylov_start(op, np.zeros((1, op.n_in))) is None
    assert _power_krylov_start(op, np.full((1, op.n_in), np.nan)) is None


def test_matrix_power_iteration_starts_near_the_top(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemm / 1×1 stacks: the Lanczos-refined start gives power iteration a better estimate than the Gaussian
    start, still from below; a stack gets one refined start per matrix."""
    from lipcheck.norms import matrix
    from lipcheck.norms.matrix import batched_matrix_norms

    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    v, _ = np.linalg.qr(rng.standard_normal((90, 90)))
    s = np.concatenate([1.0 - 1e-3 * np.arange(10), rng.uniform(0, 0.9, 80)])  # a clustered top
    clustered = (u[:, :90] * s) @ v.T
    stack = np.stack([clustered, 0.5 * rng.standard_normal((120, 90)), rng.standard_normal((120, 90))])
    for ws in (clustered[None], stack, rng.standard_normal((1, 300, 200))):
        ref = float(np.linalg.svd(ws, compute_uv=False)[:, 0].max())
        refined = batched_matrix_norms(ws, exact_limit=0)
        with monkeypatch.context() as m:
            m.setattr(matrix, "KRYLOV_MAX_BATCH", 0)
            plain = batched_matrix_norms(ws, exact_limit=0)
        assert plain.sigma_power <= refined.sigma_power <= ref * (1 + 1e-12)
        assert refined.sigma_power >= ref * (1 - 1e-3)
