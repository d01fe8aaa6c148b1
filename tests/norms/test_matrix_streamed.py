"""The streamed matrix path (big matrices, never copied to float64 whole) against the in-memory one."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import lipcheck.norms.matrix as M
from lipcheck.errors import InvalidWeightsError
from lipcheck.norms.margin import rounding_margin
from lipcheck.report.model import NormResult


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every matrix above 100 entries is streamed, in blocks of 3 rows of 40 columns (many blocks)."""
    monkeypatch.setattr(M, "STREAM_MIN_ENTRIES", 100)
    monkeypatch.setattr(M, "STREAM_BLOCK_BYTES", 8 * 40 * 3)


def _svd(w: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0])


def _in_memory(w: np.ndarray) -> NormResult:
    # exact_limit 100 (below m·n, above the smaller side): Lanczos, as the streamed path does
    return M.batched_matrix_norms(np.asarray(w, np.float64)[None], exact_limit=100)


@pytest.mark.parametrize("shape", [(90, 40), (60, 60)])
def test_streamed_equals_in_memory_on_tall_c_contiguous(streamed: None, shape: tuple[int, int]) -> None:
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    a = _in_memory(w)
    b = M.matrix_norms(w, exact_limit=100)
    assert M.StreamedMatrix(w).block_rows == 8 * 40 * 3 // (8 * shape[1]) < shape[0]  # several blocks
    assert (b.exact_method, b.upper_method) == (a.exact_method, a.upper_method) == ("lanczos", "gram")
    assert b.power_iterations == a.power_iterations
    assert b.sigma_power == pytest.approx(a.sigma_power, rel=1e-12)  # same start, same iterates
    assert b.sigma_exact == pytest.approx(a.sigma_exact, rel=1e-10)
    assert b.sigma_upper == pytest.approx(a.sigma_upper, rel=1e-10)
    exact = _svd(w)
    assert b.sigma_power <= exact * (1 + 1e-12)
    assert b.sigma_exact == pytest.approx(exact, rel=1e-9)
    assert b.sigma_upper >= exact


@pytest.mark.parametrize("layout", ["wide", "transposed-view", "square-transposed-view"])
def test_streamed_keeps_the_meaning_in_other_layouts(streamed: None, layout: str) -> None:
    rng = np.random.default_rng(2)
    w = {
        "wide": rng.standard_normal((30, 70)),
        "transposed-view": rng.standard_normal((30, 70)).T,  # tall F-contiguous: streamed as its C-contiguous Wᵀ
        "square-transposed-view": rng.standard_normal((50, 50)).T,
    }[layout].astype(np.float32)
    b = M.matrix_norms(w, exact_limit=100)
    exact = _svd(w)
    assert b.sigma_power <= exact * (1 + 1e-12)
    assert b.sigma_power == pytest.approx(exact, rel=0.05)
    assert b.sigma_exact == pytest.approx(exact, rel=1e-9)
    assert b.sigma_upper >= exact
    assert b.sigma_upper == pytest.approx(_in_memory(w).sigma_upper, rel=1e-9)


def test_streamed_frobenius_fallback_above_gram_max_dim(streamed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "GRAM_MAX_DIM", 10)
    w = np.random.default_rng(3).standard_normal((80, 30)).astype(np.float32)
    a, b = _in_memory(w), M.matrix_norms(w)
    assert a.upper_method == b.upper_method == "frobenius"
    assert b.sigma_upper == pytest.approx(M.frobenius_bound(w), rel=1e-13)
    assert b.sigma_upper >= float(np.linalg.norm(w.astype(np.float64))) * rounding_margin(w.size) * (1 - 1e-15)
    assert b.sigma_exact == pytest.approx(_svd(w), rel=1e-9)


@pytest.mark.parametrize("shape", [(500, 2), (1, 300)])
def test_streamed_thin_matrices_use_their_small_gram(streamed: None, shape: tuple[int, int]) -> None:
    w = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    b = M.matrix_norms(w)
    exact = _svd(w)
    assert (b.exact_method, b.upper_method) == ("gram-eigh", "gram-eigh+margin")
    assert b.sigma_exact == pytest.approx(exact, rel=1e-12)
    assert b.sigma_power <= b.sigma_exact * (1 + 1e-12) <= b.sigma_upper
    assert b.sigma_upper >= exact


def test_streamed_zero_matrix_and_non_finite_entries(streamed: None) -> None:
    z = M.matrix_norms(np.zeros((40, 30), np.float32))
    assert (z.sigma_power, z.sigma_exact, z.sigma_upper) == (0.0, 0.0, 0.0)
    w = np.ones((40, 30), np.float32)
    w[17, 5] = np.inf
    with pytest.raises(InvalidWeightsError, match="NaN or Inf"):
        M.matrix_norms(w)


def test_streamed_memmap_is_never_copied_to_float64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "STREAM_MIN_ENTRIES", 10_000)
    monkeypatch.setattr(M, "STREAM_BLOCK_BYTES", 64 * 1024)
    data = np.random.default_rng(5).standard_normal((2000, 100)).astype(np.float32)
    path = tmp_path / "w.bin"
    data.tofile(path)
    w = np.memmap(path, dtype=np.float32, mode="r", shape=(2000, 100))
    tracemalloc.start()
    try:
        b = M.matrix_norms(w, iterations=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < w.size * 8 / 2  # half of one float64 copy (1.6 MB): blocks, vectors, the 100² Gram matrix
    assert b.sigma_exact == pytest.approx(_svd(data), rel=1e-9)
    assert b.sigma_upper >= _svd(data)


def test_gram_iteration_refactor_is_bitwise_the_former_loop() -> None:
    def former(w: np.ndarray, max_iterations: int = 30, lower: float = 0.0, stop_gap: float = 1e-6) -> float:
        w = np.asarray(w, dtype=np.float64)
        m, n = w.shape
        r = min(m, n)
        g = w if m >= n else w.T
        log_scale, best = 0.0, math.inf
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
            g = 0.5 * (g + g.T)
            log_scale = 2.0 * (log_scale + math.log(f))
        return best * rounding_margin(2.0 * r**1.5)

    rng = np.random.default_rng(6)
    for shape in [(7, 5), (5, 7), (1100, 600)]:  # 600 > the symmetrization block: several blocks
        w = rng.standard_normal(shape)
        for kw in ({}, {"max_iterations": 0}, {"max_iterations": 3}, {"lower": _svd(w) * 0.999}):
            assert M.gram_iteration_bound(w, **kw) == former(w, **kw), (shape, kw)  # type: ignore[arg-type]


def test_scale_norms() -> None:
    n = NormResult(2.0, 7, 2.5, "lanczos", 3.0, "gram", sigma_reshaped=1.0)
    assert M.scale_norms(n, 1.0) is n
    s = M.scale_norms(n, -0.5)
    assert (s.sigma_power, s.sigma_exact, s.sigma_reshaped, s.power_iterations) == (1.0, 1.25, 0.5, 7)
    assert 1.5 < s.sigma_upper <= 1.5 * (1 + 1e-15)


def test_no_exact_skips_lanczos_but_keeps_a_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    """exact_limit=0 (--no-exact): no Lanczos; small matrices keep their cheap SVD certificate (and its value),
    bigger ones get the Gram bound, never below the SVD value."""
    rng = np.random.default_rng(4)
    small = rng.standard_normal((60, 40))
    res = M.matrix_norms(small, exact_limit=0)
    svd = float(np.linalg.svd(small, compute_uv=False)[0])
    assert res.exact_method == "svd" and res.sigma_exact == pytest.approx(svd, rel=1e-12)
    monkeypatch.setattr(M, "SVD_CERTIFICATE_ENTRIES", 1000)
    res = M.matrix_norms(small, exact_limit=0)
    assert res.sigma_exact is None and res.exact_method == "skipped" and "--no-exact" in (res.exact_skipped or "")
    assert res.sigma_power <= svd * (1 + 1e-12) and svd <= res.sigma_upper <= svd * 1.01


def test_no_exact_on_the_streamed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.norms.matrix as matrix

    monkeypatch.setattr(matrix, "STREAM_MIN_ENTRIES", 100)
    w = np.random.default_rng(5).standard_normal((50, 30)).astype(np.float32)
    res = matrix.matrix_norms(w, exact_limit=0)
    svd = float(np.linalg.svd(w.astype(np.float64), compute_uv=False)[0])
    assert res.sigma_exact is None and res.exact_method == "skipped"
    assert svd <= res.sigma_upper
