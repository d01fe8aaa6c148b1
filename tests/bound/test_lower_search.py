"""The budget-driven lower-bound search on piecewise-linear nets: against the true constant (brute force over
activation patterns, or an exact walk through the regions of 2-input nets), below the certified bound, within
its deadline, and reproducible step by step."""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import lipcheck
from lipcheck.bound.jacobian import Flat, Linearization, spectral_norm_at
from lipcheck.bound.lower import empirical_lower_bound
from lipcheck.bound.regions import Point, _gains, clear_of_ties, find_kinks, kink_names
from lipcheck.bound.torch_eval import TorchEvaluator
from lipcheck.ir.graph import Graph
from lipcheck.loaders.onnx_loader import load_onnx

pytestmark = pytest.mark.slow  # .ci/run runs the slow set too: python -m pytest -q -m slow

ROOT = Path(__file__).resolve().parents[2]
SLACK = 1 + 1e-9  # a measured value may exceed the truth by float64 rounding only


def random_net(sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Weights (out, in) of a bias-free net, N(0, 1/fan_in), rounded to float32 as the model stores them."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32).astype(np.float64)
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def net_model(ws: Sequence[np.ndarray], act: str = "Relu", attrs: dict[str, float] | None = None
              ) -> onnx.ModelProto:
    nodes, inits, prev = [], [], "x"
    for i, w in enumerate(ws):
        inits.append(numpy_helper.from_array(w.T.astype(np.float32), f"w{i}"))
        last = i == len(ws) - 1
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], ["y" if last else f"z{i}"]))
        if not last:
            node = helper.make_node(act, [f"z{i}"], [f"h{i}"])
            node.attribute.extend(helper.make_attribute(k, v) for k, v in (attrs or {}).items())
            nodes.append(node)
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, ws[0].shape[1]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, ws[-1].shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def sigma(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0])


def brute_force_one_hidden(ws: Sequence[np.ndarray], slopes: tuple[float, float] = (0.0, 1.0)) -> float:
    """max over all slope patterns of ||W2 diag(s) W1||: the constant when every pattern is reachable (bias-free,
    W1 of full row rank: hidden <= inputs)."""
    w1, w2 = ws
    assert w1.shape[0] <= w1.shape[1] and np.linalg.matrix_rank(w1) == w1.shape[0]
    return max(sigma(w2 @ (np.array(s)[:, None] * w1)) for s in itertools.product(slopes, repeat=w1.shape[0]))


def region_walk_2d(ws: Sequence[np.ndarray]) -> tuple[float, int]:
    """The constant of a bias-free ReLU net on R^2: its regions are sectors; walk the unit circle from region to
    region (in a region each unit's input is linear in x, so the next zero crossing is exact) and take the max
    of ||J|| over them. Returns (constant, number of regions)."""
    best, theta, count = 0.0, 1e-7, 0
    while theta < 2 * math.pi + 1e-7:
        x = np.array([math.cos(theta), math.sin(theta)])
        g, h, ahead = np.eye(2), x, math.inf
        for w in ws[:-1]:
            z, gz = w @ h, w @ g
            for row in gz:
                psi = math.atan2(row[1], row[0])
                for zero in (psi + math.pi / 2, psi - math.pi / 2):
                    t = (zero - theta) % (2 * math.pi)
                    if t > 1e-12:
                        ahead = min(ahead, t)
            on = (z > 0).astype(np.float64)
            h, g = on * z, on[:, None] * gz
        best = max(best, sigma(ws[-1] @ g))
        count += 1
        theta += ahead + 1e-10
    return best, count


def sampled_2d(ws: Sequence[np.ndarray], samples: int = 4000) -> float:
    best = 0.0
    for theta in np.linspace(0, 2 * math.pi, samples, endpoint=False):
        g = np.eye(2)
        h = np.array([math.cos(theta), math.sin(theta)])
        for w in ws[:-1]:
            on = (w @ h > 0).astype(np.float64)
            h, g = on * (w @ h), on[:, None] * (w @ g)
        best = max(best, sigma(ws[-1] @ g))
    return best


def graph_of(model: onnx.ModelProto) -> Graph:
    return load_onnx(model)


# ---- the truth


def test_region_walk_is_at_least_every_sampled_region() -> None:
    ws = random_net([2, 10, 30, 20, 2], 0)
    walked, regions = region_walk_2d(ws)
    assert regions > 20
    assert sampled_2d(ws) <= walked * SLACK


# The old fixed schedule (8 samples, 4 x 100 ascent steps; bench/lower.py --old-rev) reached 0.83-0.92 of the
# truth on these one-hidden-layer nets and 0.46-0.82 on the deep 2-D ones.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hidden_layer_reaches_the_brute_force_constant(seed: int) -> None:
    ws = random_net([20, 12, 3], seed)
    truth = brute_force_one_hidden(ws)
    model = net_model(ws)
    graph = graph_of(model)
    lb = empirical_lower_bound(graph, seed=seed, time_budget=120.0, reference=graph.reference, max_steps=4000)
    assert lb.value is not None
    assert lb.value <= truth * SLACK
    assert lb.value >= 0.98 * truth, (lb.value / truth)


@pytest.mark.parametrize("sizes, seed", [([2, 10, 30, 20, 2], 0), ([2, 10, 30, 20, 2], 3), ([2, 16, 16, 16, 1], 1)])
def test_deep_two_input_nets_reach_the_region_walk_constant(sizes: list[int], seed: int) -> None:
    ws = random_net(sizes, seed)
    truth, _ = region_walk_2d(ws)
    graph = graph_of(net_model(ws))
    # a step count, not seconds: the same search on every machine (4000 steps take ~1.5 s on 2 idle cores; the
    # 1.5 s budget this test had reached only 0.79 of [2, 16, 16, 16, 1] on a slower machine)
    lb = empirical_lower_bound(graph, seed=seed, time_budget=120.0, reference=graph.reference, max_steps=4000)
    assert lb.value is not None
    assert lb.value <= truth * SLACK
    assert lb.value >= 0.98 * truth, (lb.value / truth)


@pytest.mark.parametrize("act, attrs, slopes", [("LeakyRelu", {"alpha": 0.25}, (0.25, 1.0)), ("Abs", {}, (-1.0, 1.0))])
def test_other_piecewise_linear_activations_reach_the_brute_force_constant(
        act: str, attrs: dict[str, float], slopes: tuple[float, float]) -> None:
    ws = random_net([12, 8, 3], 5)
    truth = brute_force_one_hidden(ws, slopes)
    lb = empirical_lower_bound(graph_of(net_model(ws, act, attrs)), time_budget=120.0, max_steps=4000)
    assert lb.value is not None
    assert 0.98 * truth <= lb.value <= truth * SLACK


def test_flip_gains_are_the_exact_change_of_u_j_v() -> None:
    """Flipping one unit changes uᵀJv by exactly its gain (J is affine in each unit's slope)."""
    ws = random_net([7, 9, 4], 2)
    graph = graph_of(net_model(ws))
    f = Flat(graph, TorchEvaluator(graph))
    kinks = find_kinks(graph)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(7))
    lin = Linearization(f, x, keep=kink_names(kinks))
    from lipcheck.bound.jacobian import Clock

    spec = spectral_norm_at(lin, torch.from_numpy(rng.standard_normal(7)), Clock(60), iterations=50)
    assert spec is not None
    got = _gains(kinks, Point(lin, spec))
    assert got is not None
    gains = got[0]
    on = (ws[0] @ x.numpy() > 0).astype(np.float64)
    u, v = spec.u.numpy(), spec.v.numpy()
    for i in range(9):
        flipped = on.copy()
        flipped[i] = 1 - flipped[i]
        change = u @ ws[1] @ np.diag(flipped) @ ws[0] @ v - u @ ws[1] @ np.diag(on) @ ws[0] @ v
        assert float(gains[0][i]) == pytest.approx(change, rel=1e-9, abs=1e-12)


def test_a_point_at_a_tie_does_not_count() -> None:
    """x - relu(x) + relu(-x) is 0 everywhere, but autograd gives J = 1 where x = 0: such points are refused."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["nx"]),
             helper.make_node("Relu", ["nx"], ["b"]), helper.make_node("Sub", ["x", "a"], ["c"]),
             helper.make_node("Add", ["c", "b"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "zero", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    graph = graph_of(model)
    f = Flat(graph, TorchEvaluator(graph))
    kinks = find_kinks(graph)
    at_tie = Linearization(f, torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), keep=kink_names(kinks))
    assert float(torch.linalg.vector_norm(at_tie.jvp(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)))) == 1.0
    assert not clear_of_ties(kinks, at_tie.kept)
    away = Linearization(f, torch.tensor([0.5, 1.0, -2.0], dtype=torch.float64), keep=kink_names(kinks))
    assert clear_of_ties(kinks, away.kept)
    lb = empirical_lower_bound(graph, time_budget=0.5)
    assert lb.value is not None and lb.value <= 1e-12


# ---- never above the certified bound


@pytest.mark.parametrize("path", ["sample_models/mlp.onnx", "tiny"])
def test_never_above_the_certified_upper_bound(path: str, tmp_path: Path) -> None:
    if path == "tiny":
        path = str(tmp_path / "tiny.onnx")
        onnx.save(net_model(random_net([2, 10, 30, 20, 2], 1)), path)
    else:
        path = str(ROOT / path)
    report = lipcheck.analyze(path, lower_bound=True, lower_bound_seconds=1.0)
    assert report.lower_bound is not None and report.lower_bound.value is not None
    assert report.upper_bound is not None and report.certified
    assert 0 < report.lower_bound.value <= report.upper_bound


# ---- the budget


@pytest.mark.parametrize("name", ["cnn_bn", "resnet_block"])
def test_a_one_second_budget_is_kept_on_a_mid_size_model(name: str) -> None:
    graph = load_onnx(onnx.load(str(ROOT / "sample_models" / f"{name}.onnx")))
    start = time.perf_counter()
    lb = empirical_lower_bound(graph, time_budget=1.0, reference=graph.reference)
    elapsed = time.perf_counter() - start
    assert lb.value is not None and lb.value > 0
    assert elapsed < 1.3, elapsed


def test_a_small_net_uses_its_budget() -> None:
    graph = graph_of(net_model(random_net([20, 12, 3], 0)))
    lb = empirical_lower_bound(graph, time_budget=1.0)
    assert 0.75 <= lb.seconds <= 1.0 and lb.completed and lb.note is None


# ---- reproducibility


def _steps(messages: list[str]) -> int:
    match = re.search(r"\((\d+) search steps", messages[-1])
    assert match is not None, messages[-1]
    return int(match.group(1))


def test_same_seed_and_steps_same_value_and_more_steps_never_lower() -> None:
    graph = graph_of(net_model(random_net([2, 10, 30, 20, 2], 2)))
    values = []
    for steps in (50, 200, 800, 3200):
        a = empirical_lower_bound(graph, seed=4, time_budget=60, max_steps=steps)
        b = empirical_lower_bound(graph, seed=4, time_budget=60, max_steps=steps)
        assert (a.value, a.jacobian_samples, a.ascent_steps) == (b.value, b.jacobian_samples, b.ascent_steps)
        assert a.value is not None
        values.append(a.value)
    assert values == sorted(values) and values[-1] > values[0]


def test_a_budget_cut_run_is_the_step_capped_run() -> None:
    """Where the budget stops the search changes how far it got, never what it did on the way."""
    graph = graph_of(net_model(random_net([20, 12, 3], 1)))
    messages: list[str] = []
    timed = empirical_lower_bound(graph, seed=2, time_budget=0.6, progress=messages.append)
    capped = empirical_lower_bound(graph, seed=2, time_budget=60, max_steps=_steps(messages))
    assert timed.value == capped.value
    assert (timed.jacobian_samples, timed.ascent_steps) == (capped.jacobian_samples, capped.ascent_steps)
