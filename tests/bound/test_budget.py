"""Resource limits (lipcheck.budget): cost estimates from shapes, stages skipped with the reason, and what a
skip leaves is still what it claims (certified upper bounds above the dense operator's σ, estimates below)."""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcheck import budget
from lipcheck.budget import ResourceLimits, conv_costs, plan_layer
from lipcheck.norms.conv import ConvGeometry, _ConvOperator, conv_norms, conv_transpose_norms


def _big_conv_costs(**kw: int) -> dict[str, budget.StageCost]:
    n = 256
    return conv_costs(c_out=4096, c_in=4096, groups=1, kernel=(3, 3), input_spatial=(n, n), output_spatial=(n, n),
                      padded=(n + 2, n + 2), strides=(1, 1), iterations=100, exact_size=4096 * n * n,
                      exact_limit=kw.get("exact_limit", 2_000_000))


def test_big_conv_estimates_exceed_the_stage_limit_and_are_skipped() -> None:
    costs = _big_conv_costs(exact_limit=10**12)
    for stage in ("power", "exact", "circular"):
        assert costs[stage].seconds > budget.STAGE_SECONDS, stage
    with budget.session(ResourceLimits(memory_bytes=10**12)) as state:
        plan = plan_layer("conv1", "Conv", costs, 100)
    assert {"power", "exact", "circular"} <= set(plan.skip)
    assert "> limit" in plan.skip["circular"] and "--force" in plan.skip["circular"]
    assert any("circular" in e for e in state.events)
    with budget.session(ResourceLimits(enabled=False)):
        assert plan_layer("conv1", "Conv", costs, 100).skip == {}


def test_small_conv_runs_every_stage() -> None:
    costs = conv_costs(c_out=64, c_in=64, groups=1, kernel=(3, 3), input_spatial=(32, 32), output_spatial=(32, 32),
                       padded=(34, 34), strides=(1, 1), iterations=100, exact_size=64 * 32 * 32,
                       exact_limit=2_000_000)
    with budget.session(ResourceLimits(memory_bytes=10**10)):
        plan = plan_layer("c", "Conv", costs, 100)
    assert plan.skip == {} and plan.iterations == 100


def test_power_iterations_are_lowered_before_power_is_skipped() -> None:
    costs = {"power": budget.StageCost(0.0, 100.0)}  # 1 s an iteration
    with budget.session(ResourceLimits(stage_seconds=20.0, memory_bytes=10**10)):
        plan = plan_layer("c", "Conv", costs, 100)
    assert plan.iterations == 20 and "power" not in plan.skip


def test_memory_above_what_is_available_skips_the_operator() -> None:
    # a Conv with pads 1e9 on a 4×4 input: its output has ~4e18 elements
    costs = conv_costs(c_out=1, c_in=1, groups=1, kernel=(3, 3), input_spatial=(4, 4),
                       output_spatial=(2 * 10**9 + 2,) * 2, padded=(2 * 10**9 + 4,) * 2, strides=(1, 1),
                       iterations=100, exact_size=16, exact_limit=2_000_000)
    with budget.session(ResourceLimits(memory_bytes=4 << 30)):
        plan = plan_layer("c", "Conv", costs, 100)
    assert {"operator", "power", "exact", "circular"} <= set(plan.skip)
    assert "memory" in plan.skip["operator"]


def test_input_above_the_element_limit_is_refused_unless_forced() -> None:
    with budget.session(), pytest.raises(budget.ResourceLimitError, match="--force"):
        budget.check_input_sizes({"x": (200_000_000, 16)})
    with budget.session(ResourceLimits(enabled=False)):
        budget.check_input_sizes({"x": (200_000_000, 16)})


def _geometries(count: int) -> list[tuple[np.ndarray, ConvGeometry]]:
    rng = np.random.default_rng(3)
    out = []
    while len(out) < count:
        g = int(rng.choice([1, 2]))
        ci, co = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        k = tuple(int(x) for x in rng.integers(1, 4, 2))
        geom = ConvGeometry(tuple(int(x) for x in rng.integers(3, 7, 2)), tuple(int(x) for x in rng.integers(1, 3, 2)),
                            tuple(int(x) for x in rng.integers(1, 3, 2)), tuple(int(x) for x in rng.integers(0, 3, 2)),
                            tuple(int(x) for x in rng.integers(0, 3, 2)), g)
        w = rng.standard_normal((co, ci // g, *k))
        try:
            _ConvOperator(w, geom)
        except ValueError:
            continue
        out.append((w, geom))
    return out


@pytest.mark.parametrize("skip", [{"operator": "limits"}, {"circular": "limits", "power": "limits"},
                                  {"circular": "limits", "reshaped": "limits", "exact": "limits"}])
def test_what_a_skip_leaves_is_still_certified(skip: dict[str, str]) -> None:
    """Against the dense operator's σ: the certified value stays above, the estimate below, exact is None."""
    for w, geom in _geometries(25):
        sigma = float(np.linalg.svd(_ConvOperator(w, geom).dense(), compute_uv=False)[0])
        res = conv_norms(w, geom, skip=skip)
        assert res.sigma_upper >= sigma * (1 - 1e-12), (geom, res)
        assert res.sigma_power <= sigma * (1 + 1e-9), (geom, res)
        if any(k > 1 for k in w.shape[2:]):  # 1×1 convs are matrices: always exact
            assert res.sigma_exact is None and res.exact_skipped == "limits"


def test_conv_transpose_without_its_operator_is_certified() -> None:
    for w, geom in _geometries(15):
        full = conv_transpose_norms(w, geom, (0, 0))
        light = conv_transpose_norms(w, geom, (0, 0), skip={"operator": "limits"})
        assert full.sigma_exact is not None
        assert light.sigma_upper >= full.sigma_exact * (1 - 1e-12)
        assert light.sigma_power <= full.sigma_exact * (1 + 1e-9)


def test_huge_padding_without_the_operator_is_quick_and_certified() -> None:
    """pads 1e9: nothing of the output's size is built; √9·σ(W) = 9 for the all-ones 3×3 kernel."""
    w = np.ones((1, 1, 3, 3))
    geom = ConvGeometry((4, 4), (1, 1), (1, 1), (10**9, 10**9), (10**9, 10**9))
    t0 = time.perf_counter()
    res = conv_norms(w, geom, skip={"operator": "limits"})
    assert time.perf_counter() - t0 < 2.0
    # the same operator as pads 2 (full convolution: every other output reads only padding)
    small = ConvGeometry((4, 4), (1, 1), (1, 1), (2, 2), (2, 2))
    sigma = float(np.linalg.svd(_ConvOperator(w, small).dense(), compute_uv=False)[0])
    assert sigma <= res.sigma_upper <= 9.0 * (1 + 1e-9)
    assert res.sigma_power <= sigma and res.power_iterations == 0


def _mlp(batch: int) -> onnx.ModelProto:
    r = np.random.default_rng(0)
    w1 = numpy_helper.from_array(r.standard_normal((16, 8)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(r.standard_normal((8, 4)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch, why", [(100_000_000, "memory"), (1_000_000, "estimated")])
def test_lower_bound_on_a_huge_input_keeps_a_one_second_budget(batch: int, why: str) -> None:
    import resource

    from lipcheck.bound.lower import empirical_lower_bound
    from lipcheck.loaders import load_model

    graph = load_model(_mlp(batch))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with budget.session(ResourceLimits(memory_bytes=8 << 30)):
        lb = empirical_lower_bound(graph, time_budget=1.0, reference=graph.reference)
    assert time.perf_counter() - t0 < 1.5
    assert lb.value is None and lb.note is not None and why in lb.note
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing of the input's size


def test_lower_bound_values_do_not_depend_on_the_draw_order() -> None:
    """The draws are made when first needed, in the order they were made up front: same seed, same value."""
    from lipcheck.bound.lower import empirical_lower_bound
    from lipcheck.loaders import load_model

    graph = load_model(_mlp(2))
    a = empirical_lower_bound(graph, time_budget=60.0, jacobian_samples=3, ascent_restarts=3, ascent_steps=5)
    b = empirical_lower_bound(graph, time_budget=60.0, jacobian_samples=3, ascent_restarts=3, ascent_steps=5)
    assert a.value == b.value and a.value is not None and math.isfinite(a.value)


def test_pointwise_strided_convs_cost_their_channel_matrices_only() -> None:
    """A 1×1 conv (any stride) is bounded through its C_out×C_in matrices: no circular-bound estimate, so no
    "resource limits" note on ResNet-50's downsample convs (it said "7 min > limit" for a 2 ms computation)."""
    costs = conv_costs(c_out=2048, c_in=1024, groups=1, kernel=(1, 1), input_spatial=(14, 14), output_spatial=(7, 7),
                       padded=(14, 14), strides=(2, 2), iterations=100, exact_size=1024 * 196, exact_limit=2_000_000)
    assert costs["circular"].seconds == 0.0 and costs["operator"].seconds == 0.0
    assert sum(c.seconds for c in costs.values()) < 5.0
