"""LipSDP-Neuron on MLP chains (lipcheck.bound.methods): every value certified, checked against exact references.

References: for a chain with slope intervals [α_i, β_i], the LMI certificate bounds every linear map
W_k S_{k−1}…S_1W_1 with S_i diagonal in [α_i, β_i]; the norm is convex in each S_i, so its maximum over the box is
the maximum over the vertices S_i ∈ {α_i, β_i}^{d_i}: enumerated for tiny nets, an exact lower reference for the
certificate. Measured Jacobian norms and difference quotients of real nets are lower references too.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcheck.bound.methods import MethodResult
from lipcheck.bound.methods.lipsdp import Chain, lipsdp, product_bound

ITER = 60


def vertex_max(weights: list[np.ndarray], slopes: list[tuple[float, float]]) -> float:
    """max over S_i ∈ {α_i, β_i}^{d_i} of ‖W_k S_{k−1}…S_1W_1‖₂ (exact maximum over the slope box)."""
    dims = [w.shape[0] for w in weights[:-1]]
    best = 0.0
    for bits in itertools.product((0, 1), repeat=sum(dims)):
        m, pos = weights[0], 0
        for i, (a, b) in enumerate(slopes):
            d = np.array([b if x else a for x in bits[pos:pos + dims[i]]], dtype=float)
            pos += dims[i]
            m = weights[i + 1] @ (d[:, None] * m)
        best = max(best, float(np.linalg.norm(m, 2)))
    return best


def forward(weights: list[np.ndarray], biases: list[np.ndarray], act, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    h = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = act(h @ w.T + b)
    return h @ weights[-1].T + biases[-1]


def check(result: MethodResult, lower: float, product: float) -> None:
    assert result.certified and result.value is not None
    assert result.value >= lower, (result.value, lower)
    assert result.value <= product * (1 + 1e-9), (result.value, product)


SLOPES = [(0.0, 1.0), (0.01, 1.0), (-0.129, 1.129), (0.0, 0.25), (-1.0, 1.0), (1.0, 1.0), (0.0, 1.7581)]


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("seed", range(3))
def test_certified_above_vertex_maximum_and_below_product(slope: tuple[float, float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal((2, 5))]
    chain = Chain(tuple(ws), (slope, slope))
    result = lipsdp(chain, iterations=ITER)
    exact = vertex_max(ws, [slope, slope])
    check(result, exact, product_bound(chain))
    fast = min(float(result.detail["eclipse_fast"]), product_bound(chain))  # type: ignore[arg-type]
    assert result.value <= fast * (1 + 1e-9)  # type: ignore[operator]


@pytest.mark.parametrize("seed", range(4))
def test_relu_bias_free_exact_constant_bracketed(seed: int) -> None:
    """Bias-free ReLU nets: exact L = max over reachable activation patterns; sampled ‖J(x)‖ (reachable patterns)
    ≤ L ≤ all-pattern maximum ≤ certified; and the certificate stays within 25% of the all-pattern maximum."""
    rng = np.random.default_rng(100 + seed)
    ws = [rng.standard_normal((5, 3)), rng.standard_normal((4, 5)), rng.standard_normal((2, 4))]
    xs = rng.standard_normal((4000, 3))
    sampled = 0.0
    for x in xs:
        z1 = ws[0] @ x
        z2 = ws[1] @ np.maximum(z1, 0)
        jac = ws[2] @ ((z2 > 0)[:, None] * ws[1]) @ ((z1 > 0)[:, None] * ws[0])
        sampled = max(sampled, float(np.linalg.norm(jac, 2)))
    all_patterns = vertex_max(ws, [(0.0, 1.0), (0.0, 1.0)])
    chain = Chain(tuple(ws), ((0.0, 1.0), (0.0, 1.0)))
    result = lipsdp(chain, iterations=ITER)
    assert sampled <= all_patterns * (1 + 1e-12)
    check(result, all_patterns, product_bound(chain))
    assert result.value <= 1.25 * all_patterns  # type: ignore[operator]


@pytest.mark.parametrize("name, act, dact, slope", [
    ("tanh", np.tanh, lambda z: 1 - np.tanh(z) ** 2, (0.0, 1.0)),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2, (0.0, 0.25)),
])
def test_smooth_nets_above_dense_jacobians(name: str, act, dact, slope: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    ws = [rng.standard_normal((6, 4)), 2 * rng.standard_normal((6, 6)), rng.standard_normal((3, 6))]
    bs = [rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(3)]
    best = 0.0
    for x in rng.standard_normal((3000, 4)) * 2:
        z1 = ws[0] @ x + bs[0]
        z2 = ws[1] @ act(z1) + bs[1]
        jac = ws[2] @ (dact(z2)[:, None] * ws[1]) @ (dact(z1)[:, None] * ws[0])
        best = max(best, float(np.linalg.norm(jac, 2)))
    chain = Chain(tuple(ws), (slope, slope))
    result = lipsdp(chain, iterations=ITER)
    check(result, best, product_bound(chain))


ACTS = {
    (0.0, 1.0): lambda z: np.maximum(z, 0),
    (0.1, 1.0): lambda z: np.where(z > 0, z, 0.1 * z),
    (0.0, 0.25): lambda z: 1 / (1 + np.exp(-z)),
    (-1.0, 1.0): np.abs,
    (0.0, 1.1): np.tanh,  # a looser interval than needed is still sound
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 5), slope=st.sampled_from(sorted(ACTS)))
def test_property_certified_above_measured_ratios(seed: int, depth: int, slope: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in rng.integers(1, 7, depth + 1)]
    ws = [rng.standard_normal((dims[i + 1], dims[i])) * rng.uniform(0.2, 3) for i in range(depth)]
    bs = [rng.standard_normal(d) for d in dims[1:]]
    chain = Chain(tuple(ws), tuple(slope for _ in ws[:-1]))
    result = lipsdp(chain, iterations=30)
    x = rng.standard_normal((500, dims[0])) * 3
    y = x + rng.standard_normal((500, dims[0])) * rng.choice([1e-3, 1.0], (500, 1))
    fx, fy = forward(ws, bs, ACTS[slope], x), forward(ws, bs, ACTS[slope], y)
    ratios = np.linalg.norm(fx - fy, axis=1) / np.linalg.norm(x - y, axis=1)
    # the measured side rounds too: f(x) − f(y) for y − x of 1e-3 cancels ~4 digits (seen: 4e-11 relative above
    # σ_max on a single layer, whose certificate is σ_max·(1 + 1e-9))
    check(result, float(ratios.max()) * (1 - 1e-8), product_bound(chain))


def test_single_layer_is_the_spectral_norm() -> None:
    w = np.random.default_rng(1).standard_normal((7, 5))
    result = lipsdp(Chain((w,), ()))
    sigma = float(np.linalg.norm(w, 2))
    assert result.certified and sigma <= result.value <= sigma * (1 + 1e-6)  # type: ignore[operator]


@pytest.mark.parametrize("scale_exp", [-500, -498, 497, 499])
def test_hostile_scales(scale_exp: int) -> None:
    """Weights of 1e-150 and 1e150 magnitudes (products leave float64): powers of two scale out exactly."""
    rng = np.random.default_rng(3)
    base = [rng.standard_normal((4, 3)), rng.standard_normal((1, 4)), rng.standard_normal((3, 1)),
            rng.standard_normal((2, 3))]
    slopes = ((0.0, 1.0),) * 3
    reference = lipsdp(Chain(tuple(base), slopes), iterations=ITER)
    exact = vertex_max(base, list(slopes))
    split = [scale_exp // 4] * 3 + [scale_exp - 3 * (scale_exp // 4)]
    ws = [np.ldexp(w, e) for w, e in zip(base, split)]
    result = lipsdp(Chain(tuple(ws), slopes), iterations=ITER)
    assert result.certified and result.value is not None and math.isfinite(result.value) and result.value > 0
    assert math.log2(result.value) - scale_exp >= math.log2(exact) - 1e-12
    assert abs(math.log2(result.value) - scale_exp - math.log2(reference.value)) < 1e-6  # type: ignore[arg-type]


def test_hostile_decimal_scales_and_one_neuron() -> None:
    rng = np.random.default_rng(4)
    base = [rng.standard_normal((3, 2)), rng.standard_normal((1, 3)), rng.standard_normal((2, 1))]
    ws = [base[0] * 1e-150, base[1] * 1e150, base[2]]
    slopes = ((0.0, 1.0), (0.0, 1.0))
    result = lipsdp(Chain(tuple(ws), slopes), iterations=ITER)
    exact = vertex_max(base, list(slopes))  # 1e-150·1e150 = 1 up to a rounding
    product = product_bound(Chain(tuple(ws), slopes))
    assert result.certified and exact * (1 - 1e-12) <= result.value <= product * (1 + 1e-9)  # type: ignore[operator]


def test_zero_layer_gives_zero() -> None:
    rng = np.random.default_rng(5)
    ws = (rng.standard_normal((3, 2)), np.zeros((4, 3)), rng.standard_normal((2, 4)))
    result = lipsdp(Chain(ws, ((0.0, 1.0), (0.0, 1.0))))
    assert result.certified and result.value == 0.0


def test_huge_weight_gives_inf_not_a_wrong_number() -> None:
    ws = (np.full((2, 2), 1e300), np.full((2, 2), 1e300))
    result = lipsdp(Chain(ws, ((0.0, 1.0),)))
    assert result.certified and result.value == math.inf


def test_chain_validation() -> None:
    with pytest.raises(ValueError):
        Chain((np.ones((2, 3)), np.ones((2, 3))), ((0.0, 1.0),))
    with pytest.raises(ValueError):
        Chain((np.ones((2, 3)),), ((0.0, 1.0),))
    with pytest.raises(ValueError):
        Chain((np.ones((2, 3)), np.ones((1, 2))), ((1.0, 0.0),))
