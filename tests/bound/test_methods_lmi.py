"""The LipSDP LMI matrix and its floating-point Cholesky certificate (lipcheck.bound.methods.lmi)."""

from __future__ import annotations

import numpy as np
import pytest

from lipcheck.bound.methods import lmi
from lipcheck.bound.methods.lipsdp import _c_of, _sequence_numpy


def test_single_layer_threshold() -> None:
    w = np.random.default_rng(0).standard_normal((6, 4))
    sigma2 = float(np.linalg.norm(w, 2)) ** 2
    assert lmi.certify_psd([w], [], sigma2 * (1 + 1e-6), [])
    assert not lmi.certify_psd([w], [], sigma2 * (1 - 1e-6), [])


@pytest.mark.parametrize("slope", [(0.0, 1.0), (0.2, 1.0), (-0.13, 1.13), (0.0, 0.25)])
def test_elimination_matches_dense_eigenvalues(slope: tuple[float, float]) -> None:
    """For fixed multipliers T (ρ normalized to 1) the elimination's c is the threshold of P(ρ, cT):
    P(c(1+η), c(1+η/2)T) is PSD by a dense eigensolver and P(c(1−η), cT) is not (matrix from lmi_blocks)."""
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((5, 4)), rng.standard_normal((6, 5)), rng.standard_normal((3, 6))]
    params = [(rng.uniform(-1, 1, 5), 0.7), (rng.uniform(-1, 1, 6), 0.3)]
    _, ts = _sequence_numpy(ws, [slope, slope], params)  # feasible multipliers with random relative weights
    c = _c_of(ws, [slope, slope], ts)
    assert np.isfinite(c)

    def min_eig(rho: float, scale: float) -> float:
        diag, sub, _ = lmi.lmi_blocks(ws, [slope, slope], rho, [t * scale for t in ts])
        sizes = [d.shape[0] for d in diag]
        st = np.concatenate([[0], np.cumsum(sizes)])
        p = np.zeros((st[-1], st[-1]))
        for i, d in enumerate(diag):
            p[st[i]:st[i + 1], st[i]:st[i + 1]] = d
            if i:
                p[st[i]:st[i + 1], st[i - 1]:st[i]] = sub[i - 1]
                p[st[i - 1]:st[i], st[i]:st[i + 1]] = sub[i - 1].T
        return float(np.linalg.eigvalsh(p)[0])

    assert min_eig(c * (1 + 1e-6), c * (1 + 0.5e-6)) > 0
    assert min_eig(c * (1 - 1e-6), c) < 0
    assert lmi.certify_psd(ws, [slope, slope], c * (1 + 1e-6), [t * c * (1 + 0.5e-6) for t in ts])
    assert not lmi.certify_psd(ws, [slope, slope], c * (1 - 1e-6), [t * c for t in ts])


def test_banded_and_dense_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((7, 3)), rng.standard_normal((4, 7)), rng.standard_normal((5, 4)),
          rng.standard_normal((2, 5))]
    slopes = [(0.0, 1.0)] * 3
    _, ts = _sequence_numpy(ws, slopes, None)
    c = _c_of(ws, slopes, ts)
    assert np.isfinite(c)
    args_ok = (ws, slopes, c * (1 + 1e-6), [t * c * (1 + 0.5e-6) for t in ts])
    args_bad = (ws, slopes, c * (1 - 1e-6), [t * c for t in ts])
    dense = (lmi.certify_psd(*args_ok), lmi.certify_psd(*args_bad))
    monkeypatch.setattr(lmi, "DENSE_MAX_ORDER", 2)
    assert (lmi.certify_psd(*args_ok), lmi.certify_psd(*args_bad)) == dense == (True, False)


def test_rejects_negative_or_nonfinite_multipliers() -> None:
    w = [np.eye(2), np.eye(2)]
    assert not lmi.certify_psd(w, [(0.0, 1.0)], 10.0, [np.array([-1.0, 1.0])])
    assert not lmi.certify_psd(w, [(0.0, 1.0)], float("nan"), [np.array([1.0, 1.0])])
