"""lipcheck.bound.symbolic (affine-form ranges) and the region-restricted chain: every value onnxruntime computes at
points of the region lies in the tightened ranges; they are never wider than interval arithmetic's and much tighter
on an L2 ball; the restricted chain's certificate is above every Jacobian and ratio measured inside the ball."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import lipcheck
from lipcheck.bound.local import local_chain_bound
from lipcheck.bound.ranges import Ranges, propagate
from lipcheck.bound.symbolic import symbolic_ranges
from lipcheck.ir.graph import Graph
from lipcheck.loaders.onnx_loader import load_onnx
from tests.bound.test_ranges import _session, check_sound, f32_box, make_model, w

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
F32 = np.float32


def _inside(base: Ranges, tight: Ranges) -> None:
    for name, iv in base.intervals.items():
        t = tight.intervals[name]
        assert np.all(t.lo >= iv.lo) and np.all(t.hi <= iv.hi), name


def _ball_points(center: np.ndarray, radius: float, n: int, seed: int) -> list[np.ndarray]:
    """Points of the L2 ball, as float32, pulled strictly inside (float32 rounding must not leave the ball):
    on the sphere (×0.999), uniform inside, and along ± each of a few coordinate axes."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        d = rng.standard_normal(center.shape)
        d /= np.linalg.norm(d)
        scale = 0.999 if k % 3 == 0 else rng.random() ** (1.0 / d.size) * 0.999
        out.append(center + radius * scale * d)
    for j in rng.choice(center.size, size=min(8, center.size), replace=False):
        for sign in (-1.0, 1.0):
            d = np.zeros(center.size)
            d[j] = sign * radius * 0.999
            out.append(center + d.reshape(center.shape))
    return out


def _check_ball(model: onnx.ModelProto, graph: Graph, ranges: Ranges, name: str, center: np.ndarray, radius: float,
                n: int = 150, seed: int = 0) -> None:
    names = [o for nd in model.graph.node for o in nd.output if o and o in ranges.intervals]
    sess = _session(model, names)
    bad = []
    for x in _ball_points(center, radius, n, seed):
        x32 = x.astype(F32)
        assert np.linalg.norm(x32.astype(np.float64) - center) <= radius
        for tensor, v in zip(names, sess.run(names, {name: x32}), strict=True):
            iv = ranges[tensor]
            v = np.asarray(v, dtype=np.float64).reshape(iv.shape)
            if not iv.contains(v):
                bad.append(tensor)
    assert not bad, sorted(set(bad))


def _conv_net() -> onnx.ModelProto:
    """Every op with an affine-form rule, and a few without (MaxPool, Sigmoid: fresh forms), on a 1×2×6×6 input."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "t", "mu", "var"], ["bn"]),
        helper.make_node("LeakyRelu", ["bn"], ["a1"], alpha=0.1),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1, 0, 1, 2], strides=[2, 1], group=2),
        helper.make_node("PRelu", ["c2", "slope"], ["a2"]),
        helper.make_node("AveragePool", ["a2"], ["p1"], kernel_shape=[2, 3], strides=[2, 3], pads=[0, 0, 1, 1],
                         count_include_pad=0),
        helper.make_node("Pad", ["a1", "pads", "pval"], ["padded"]),
        helper.make_node("MaxPool", ["padded"], ["mp"], kernel_shape=[3, 3], strides=[3, 3]),
        helper.make_node("Sigmoid", ["mp"], ["sg"]),
        helper.make_node("Mul", ["sg", "k"], ["sk"]),
        helper.make_node("Concat", ["p1", "sk"], ["cat"], axis=1),
        helper.make_node("Relu", ["cat"], ["r"]),
        helper.make_node("Div", ["r", "dv"], ["rd"]),
        helper.make_node("Sub", ["sub_c", "rd"], ["neg"]),
        helper.make_node("Flatten", ["neg"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["h"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Add", ["hr", "h"], ["res"]),
        helper.make_node("Reshape", ["res", "shape"], ["rs"]),
        helper.make_node("Transpose", ["rs"], ["tr"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tr", "mm"], ["y"]),
    ]
    inits = {
        "w1": w(4, 2, 3, 3, seed=1, scale=0.5), "b1": w(4, seed=2),
        "s": np.abs(w(4, seed=3)) + 0.5, "t": w(4, seed=4), "mu": w(4, seed=5) * 0.1, "var": np.abs(w(4, seed=6)) + 0.2,
        "w2": w(6, 2, 3, 2, seed=7, scale=0.5), "slope": (np.abs(w(6, 1, 1, seed=8)) * 0.3).astype(F32),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pval": np.array(0.25, dtype=F32),
        "k": w(1, 4, 1, 1, seed=9), "dv": np.array(1.5, dtype=F32), "sub_c": w(1, 10, 2, 2, seed=10),
        "fc": w(12, 40, seed=11, scale=0.4), "fb": w(12, seed=12), "shape": np.array([1, 3, 4], dtype=np.int64),
        "mm": w(3, 5, seed=13),
    }
    return make_model(nodes, {"x": (1, 2, 6, 6)}, ["y"], inits)


@pytest.mark.parametrize("radius", [0.02, 0.3])
def test_affine_forms_hold_every_value_onnxruntime_computes_on_a_box(radius: float) -> None:
    model = _conv_net()
    graph = load_onnx(model)
    center = np.random.default_rng(1).uniform(-1, 1, (1, 2, 6, 6))
    box = {"x": f32_box(center - radius, center + radius)}
    base = propagate(graph, box)
    tight = symbolic_ranges(graph, box)
    _inside(base, tight)
    check_sound(model, graph, tight, box, n=300, seed=2)
    # the forms paid somewhere (the residual Add sees through its shared input)
    width = {k: float(np.mean(tight[k].hi - tight[k].lo) / np.mean(base[k].hi - base[k].lo)) for k in ("res", "y")}
    assert min(width.values()) < 0.95, width


def test_affine_forms_hold_on_an_l2_ball_and_are_far_tighter_there() -> None:
    model = onnx.load(str(SAMPLES / "mlp.onnx"))
    graph = lipcheck.load(str(SAMPLES / "mlp.onnx"))
    name = graph.inputs[0].name
    rng = np.random.default_rng(4)
    for k in range(3):
        center = rng.random(graph.inputs[0].shape)
        radius = 0.1
        box = {name: (center - radius, center + radius)}
        base = propagate(graph, box)
        tight = symbolic_ranges(graph, box, ball=(name, center, radius))
        _inside(base, tight)
        _check_ball(model, graph, tight, name, center, radius, seed=k)
        out = graph.outputs[0].name
        # interval arithmetic pays ‖W_i‖₁ where the ball costs ‖W_i‖₂, and compounds it (measured ratio ≈ 0.005)
        assert np.mean(tight[out].hi - tight[out].lo) < 0.05 * np.mean(base[out].hi - base[out].lo)


def test_affine_forms_on_a_ball_through_convolutions() -> None:
    model = _conv_net()
    graph = load_onnx(model)
    center = np.random.default_rng(2).uniform(-1, 1, (1, 2, 6, 6))
    radius = 0.25
    box = {"x": (center - radius, center + radius)}
    tight = symbolic_ranges(graph, box, ball=("x", center, radius))
    _inside(propagate(graph, box), tight)
    _check_ball(model, graph, tight, "x", center, radius, n=200, seed=3)


def test_sample_models_stay_sound_with_affine_forms() -> None:
    rng = np.random.default_rng(9)
    for path in sorted(SAMPLES.glob("*.onnx")):
        if path.stem == "dynamic_batch":
            continue
        graph = lipcheck.load(str(path))
        model = onnx.load(str(path))
        box = {}
        for info in graph.inputs:
            center = rng.uniform(-1, 1, info.shape)
            box[info.name] = f32_box(center - 0.05, center + 0.05)
        tight = symbolic_ranges(graph, box)
        _inside(propagate(graph, box), tight)
        check_sound(model, graph, tight, box, n=60, seed=4)


def test_a_form_that_does_not_fit_leaves_the_interval() -> None:
    graph = lipcheck.load(str(SAMPLES / "mlp.onnx"))
    name = graph.inputs[0].name
    center = np.full(graph.inputs[0].shape, 0.5)
    box = {name: (center - 0.1, center + 0.1)}
    base = propagate(graph, box)
    capped = symbolic_ranges(graph, box, ball=(name, center, 0.1), max_entries=100)
    for k, iv in base.intervals.items():
        assert np.array_equal(iv.lo, capped[k].lo) and np.array_equal(iv.hi, capped[k].hi), k


# ---------------------------------------------------------------------------------------- the restricted chain


class _Relu(torch.nn.Module):
    def __init__(self, widths: Sequence[int], seed: int, shift: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / layer.weight.shape[1] ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.3 + shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def test_the_restricted_chain_is_above_every_measured_ratio_in_the_ball_and_below_the_global_bound() -> None:
    net = _Relu((20, 40, 30, 5), seed=3).eval()
    rng = np.random.default_rng(5)
    points = rng.standard_normal((10, 20))
    radius = 0.1
    report = lipcheck.analyze(net, input_shape=(1, 20), around=points, radius=radius, lower_bound=False)
    ref = _Relu((20, 40, 30, 5), seed=3).double().eval()
    assert report.upper_bound is not None
    for p in report.around.points:
        assert p.upper_bound is not None and p.upper_bound < 0.9 * report.upper_bound  # the global lipsdp bound
        assert p.method == "local lipsdp"
        assert p.jacobian_norm is not None and p.jacobian_norm <= p.upper_bound
        x = torch.from_numpy(points[p.index][None])
        for _ in range(40):
            d1, d2 = (torch.from_numpy(q[None] - points[p.index])
                      for q in _ball_points(points[p.index], radius, 2, int(rng.integers(1 << 30)))[:2])
            j = torch.autograd.functional.jacobian(ref, x + d1).reshape(5, 20)
            assert float(torch.linalg.matrix_norm(j, ord=2)) <= p.upper_bound
            with torch.no_grad():
                diff = float(torch.linalg.vector_norm(ref(x + d1) - ref(x + d2)))
            assert diff <= p.upper_bound * float(torch.linalg.vector_norm(d1 - d2)) * (1 + 1e-9)


def test_a_layer_that_is_off_on_the_whole_region_makes_the_local_constant_zero() -> None:
    net = _Relu((6, 8, 3), seed=1, shift=-50.0).eval()  # every hidden pre-activation ≤ −40 near 0
    graph = lipcheck.load(net, input_shape=(1, 6))
    name = graph.inputs[0].name
    box = {name: (np.full((1, 6), -0.5), np.full((1, 6), 0.5))}
    assert local_chain_bound(graph, symbolic_ranges(graph, box).intervals) == 0.0
    report = lipcheck.analyze(net, input_shape=(1, 6), domain=(-0.5, 0.5), lower_bound=False)
    assert report.local is not None and report.local.upper_bound == 0.0


def test_a_cnn_becomes_a_restricted_dense_chain_above_every_jacobian_in_the_ball() -> None:
    from tests.bound.test_local import _Cnn

    net = _Cnn(3, relu=True).eval()
    graph = lipcheck.load(net, input_shape=(1, 1, 6, 6))
    name = graph.inputs[0].name
    ref = _Cnn(3, relu=True).double().eval()
    rng = np.random.default_rng(8)
    report = lipcheck.analyze(net, input_shape=(1, 1, 6, 6), lower_bound=False, exact_limit=0)
    assert report.upper_bound is not None
    below = 0
    for k in range(5):
        center = rng.standard_normal((1, 1, 6, 6))
        radius = 0.2
        ranges = symbolic_ranges(graph, {name: (center - radius, center + radius)}, ball=(name, center, radius))
        value = local_chain_bound(graph, ranges.intervals, iterations=3)
        assert value is not None  # conv pieces materialized: a chain of dense operators
        for q in _ball_points(center, radius, 60, seed=k):
            j = torch.autograd.functional.jacobian(ref, torch.from_numpy(q)).reshape(-1, 36)
            assert float(torch.linalg.matrix_norm(j, ord=2)) <= value
        below += value < report.upper_bound
    assert below == 5


def test_relaxation_errors_go_to_the_slack_when_symbols_do_not_fit(tmp_path: Path) -> None:
    """A budget with room for the ball's symbols but not one per unstable ReLU: the forms survive (tighter than
    intervals), sound, and no tighter than with the symbols."""
    import lipcheck.bound.symbolic as symbolic

    net = _Relu((20, 40, 30, 5), seed=2).eval()
    path = tmp_path / "relu.onnx"
    torch.onnx.export(net, (torch.zeros(1, 20),), str(path), dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    graph = lipcheck.load(str(path))
    name = graph.inputs[0].name
    center = np.random.default_rng(3).standard_normal((1, 20))
    radius = 0.5
    box = {name: (center - radius, center + radius)}
    full = symbolic_ranges(graph, box, ball=(name, center, radius))
    calls = []
    relu = symbolic._Pass.relu

    def spy(self: object, node: object, f: symbolic.Form) -> symbolic.Form | None:
        out = relu(self, node, f)
        before = 0 if f.box is None else f.box.shape[0]
        calls.append(out is not None and (out.box is None or out.box.shape[0] == before))
        return out

    symbolic._Pass.relu = spy  # type: ignore[method-assign]
    try:
        tight = symbolic_ranges(graph, box, ball=(name, center, radius), max_entries=40 * 20 + 10)
    finally:
        symbolic._Pass.relu = relu  # type: ignore[method-assign]
    assert calls and all(calls)  # every Relu kept a form, with no new symbol
    base = propagate(graph, box)
    _inside(base, tight)
    _check_ball(model, graph, tight, name, center, radius, seed=5)
    out = graph.outputs[0].name
    assert np.all(tight[out].hi - tight[out].lo >= full[out].hi - full[out].lo - 1e-12)
    assert np.mean(tight[out].hi - tight[out].lo) < 0.8 * np.mean(base[out].hi - base[out].lo)


def _pool_net() -> onnx.ModelProto:
    """Conv → MaxPool (3×3, stride 2, padded, ceil_mode: overlapping windows) → Relu → MaxPool (2×2, stride 2:
    disjoint windows, one of them cut by the edge) → Flatten → Gemm, on a 1×2×9×9 input."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         ceil_mode=1),
        helper.make_node("Relu", ["p1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Flatten", ["p2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["y"], transB=1),
    ]
    inits = {"w1": w(3, 2, 3, 3, seed=21, scale=0.6), "b1": w(3, seed=22), "fc": w(4, 27, seed=23, scale=0.5),
             "fb": w(4, seed=24)}
    return make_model(nodes, {"x": (1, 2, 9, 9)}, ["y"], inits)


def test_max_pool_forms_hold_on_boxes_and_balls_and_pay() -> None:
    import lipcheck.bound.symbolic as symbolic

    model = _pool_net()
    graph = load_onnx(model)
    made: list[bool] = []
    pool = symbolic._Pass.maxpool

    def spy(self: object, node: object, f: symbolic.Form) -> symbolic.Form | None:
        out = pool(self, node, f)
        made.append(out is not None)
        return out

    symbolic._Pass.maxpool = spy  # type: ignore[method-assign]
    try:
        rng = np.random.default_rng(6)
        for radius in (0.01, 0.2):
            center = rng.uniform(-1, 1, (1, 2, 9, 9))
            box = {"x": f32_box(center - radius, center + radius)}
            base = propagate(graph, box)
            tight = symbolic_ranges(graph, box)
            _inside(base, tight)
            check_sound(model, graph, tight, box, n=300, seed=7)
            ball = symbolic_ranges(graph, {"x": (center - radius, center + radius)}, ball=("x", center, radius))
            _check_ball(model, graph, ball, "x", center, radius, n=150, seed=8)
            if radius == 0.01:  # small region: the windows' winners are mostly decided (measured 0.59×)
                assert np.mean(tight["y"].hi - tight["y"].lo) < 0.8 * np.mean(base["y"].hi - base["y"].lo)
    finally:
        symbolic._Pass.maxpool = pool  # type: ignore[method-assign]
    assert made and all(made)


def test_dilated_one_dimensional_max_pool_forms_hold() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[3], strides=[2], dilations=[2], pads=[2, 1]),
        helper.make_node("Flatten", ["p1"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
    ]
    model = make_model(nodes, {"x": (1, 2, 12)}, ["y"], {"w1": w(3, 2, 3, seed=31), "fc": w(3, 18, seed=32)})
    graph = load_onnx(model)
    assert graph.shapes["p1"] == (1, 3, 6)
    center = np.random.default_rng(9).uniform(-1, 1, (1, 2, 12))
    for radius in (0.01, 0.3):
        box = {"x": f32_box(center - radius, center + radius)}
        tight = symbolic_ranges(graph, box)
        _inside(propagate(graph, box), tight)
        check_sound(model, graph, tight, box, n=300, seed=10)
