"""The normalization plan, pure: factors from certified σ, per-layer / exact / global policies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import lipcheck
from lipcheck.bound.walker import compose, walk
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.normalize.plan import SAFETY, PlanError, plan_global, plan_per_layer
from lipcheck.report.model import LayerResult, Settings


def _layer(name: str, sigma: float, param: str | None = None) -> LayerResult:
    return LayerResult(
        name=name, op="Gemm", param=param if param is not None else f"{name}.weight", fused_with=(),
        input_shape=(1, 4), output_shape=(1, 4), sigma_power=sigma, power_iterations=1, sigma_exact=sigma,
        exact_method="svd", exact_skipped=None, sigma_upper=sigma, upper_method="svd+margin", sigma_reshaped=None,
        lipschitz=sigma, cumulative_upper=None, cumulative_estimate=None,
    )


def test_per_layer_scales_only_layers_above_the_target() -> None:
    plan = plan_per_layer([_layer("a", 3.0), _layer("b", 0.5), _layer("c", 1.0)], 1.0)
    f = {r.name: r.factor for r in plan.layers}
    assert f["a"] == pytest.approx((1 - SAFETY) / 3.0)
    assert f["b"] == 1.0
    assert f["c"] == pytest.approx(1 - SAFETY)  # exactly at the target: nudged below it, for float32 rounding
    assert all(r.sigma_after <= 1.0 for r in plan.layers)
    assert set(plan.factors) == {"a.weight", "c.weight"}


def test_exact_scales_every_layer_to_the_target() -> None:
    plan = plan_per_layer([_layer("a", 3.0), _layer("b", 0.5)], 2.0, exact=True)
    assert [r.sigma_after for r in plan.layers] == pytest.approx([2.0 * (1 - SAFETY)] * 2)
    assert plan.layers[1].factor > 1  # a layer below the target grows to it


def test_layers_without_weight_are_left_alone() -> None:
    plan = plan_per_layer([LayerResult(**{**_layer("pool", 3.0).__dict__, "param": None, "op": "AveragePool"})], 1.0)
    assert plan.layers[0].factor == 1.0 and not plan.factors


def test_shared_weight_gets_the_smallest_factor() -> None:
    plan = plan_per_layer([_layer("a", 4.0, "w"), _layer("b", 2.0, "w")], 1.0)
    assert plan.factors == {"w": pytest.approx((1 - SAFETY) / 4.0)}
    assert any("shared" in n for n in plan.notes)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_targets(bad: float) -> None:
    with pytest.raises(PlanError):
        plan_per_layer([_layer("a", 2.0)], bad)


def _chain_bound(layers: list[LayerResult]):  # type: ignore[no-untyped-def]
    def bound(scales: dict[str, float]) -> float:
        return math.prod(layer.sigma_upper * scales.get(layer.name, 1.0) for layer in layers)

    return bound


def test_global_on_a_chain_is_the_even_log_space_split() -> None:
    layers = [_layer("a", 4.0), _layer("b", 2.0), _layer("c", 0.5)]
    plan = plan_global(layers, 1.0, _chain_bound(layers))
    c = ((1 - SAFETY) / 4.0) ** (1 / 3)
    assert [r.factor for r in plan.layers] == pytest.approx([c, c, c])
    assert plan.bound_before == pytest.approx(4.0)
    assert plan.bound_after == pytest.approx(1 - SAFETY)


def test_global_with_a_residual_bisects_and_meets_the_target() -> None:
    layers = [_layer("f", 3.0), _layer("g", 2.0)]

    def bound(scales: dict[str, float]) -> float:  # (1 + L_f) · L_g: x + f(x), then g
        return (1 + 3.0 * scales.get("f", 1.0)) * 2.0 * scales.get("g", 1.0)

    plan = plan_global(layers, 1.5, bound)
    c = plan.layers[0].factor
    assert bound({"f": c, "g": c}) <= 1.5
    assert bound({"f": c * (1 + 1e-6), "g": c * (1 + 1e-6)}) > 1.5 * (1 - SAFETY)  # the largest such c


def test_global_target_that_no_scaling_reaches() -> None:
    layers = [_layer("f", 3.0)]

    def bound(scales: dict[str, float]) -> float:  # x + f(x): at least 1 whatever f's weight
        return 1 + 3.0 * scales.get("f", 1.0)

    with pytest.raises(PlanError, match="still 1"):
        plan_global(layers, 0.5, bound)


def test_global_restricted_to_some_layers_and_unknown_names() -> None:
    layers = [_layer("a", 4.0), _layer("b", 2.0)]
    plan = plan_global(layers, 2.0, _chain_bound(layers), only=["b.weight"])
    assert plan.layers[0].factor == 1.0 and plan.layers[1].factor == pytest.approx((1 - SAFETY) / 4.0)
    with pytest.raises(PlanError, match="nope"):
        plan_global(layers, 2.0, _chain_bound(layers), only=["nope"])


def test_global_on_an_unbounded_model_is_refused() -> None:
    with pytest.raises(PlanError, match="unbounded"):
        plan_global([_layer("a", 2.0)], 1.0, lambda scales: math.inf)


def test_compose_reproduces_the_walk_and_scales_layers() -> None:
    """compose() with no scaling is the walker's own bound; scaling a chain's layers by c multiplies it by c^k."""
    graph = fold_batchnorm(lipcheck.load(Path(__file__).resolve().parents[2] / "sample_models" / "mlp.onnx"))
    result = walk(graph, Settings())
    assert compose(graph, result, {}) == pytest.approx(result.output_bound(graph, result.upper), rel=1e-15)
    k = len(result.layers)
    assert compose(graph, result, {layer.name: 0.5 for layer in result.layers}) == pytest.approx(
        compose(graph, result, {}) * 0.5**k, rel=1e-12)
