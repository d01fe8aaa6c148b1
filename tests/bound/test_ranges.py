"""lipcheck.bound.ranges: every value onnxruntime computes (every intermediate tensor, exposed as a graph output)
lies in the propagated interval, on the sample models and on small graphs of the tricky ops; plus the exact
images where they are known (LeakyRelu with any alpha, GELU's minimum, Softmax's vertices, a Gemm)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.bound.ranges import Interval, Ranges, propagate
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.ir.graph import Graph, Node, TensorInfo
from lipcheck.loaders.onnx_loader import load_onnx

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
F32 = np.float32
Box = Mapping[str, tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------------------------------
# helpers


def _session(model: onnx.ModelProto, extra: Sequence[str] = ()) -> ort.InferenceSession:
    """onnxruntime on a copy of ``model`` with the tensors ``extra`` added as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _points(box: Box, shapes: Mapping[str, tuple[int, ...]], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """n uniform points of the box, its two extreme corners, 30 random vertices (every vertex if few)."""
    rng = np.random.default_rng(seed)
    size = sum(int(np.prod(s)) for s in shapes.values())
    out: list[dict[str, np.ndarray]] = []

    def make(pick: object) -> dict[str, np.ndarray]:
        feed = {}
        for name, (lo, hi) in box.items():
            lo_b, hi_b = np.broadcast_to(lo, shapes[name]), np.broadcast_to(hi, shapes[name])
            feed[name] = np.asarray(pick(lo_b, hi_b), dtype=F32)  # type: ignore[operator]
        return feed

    out.append(make(lambda lo, hi: lo))
    out.append(make(lambda lo, hi: hi))
    if size <= 8:
        for k in range(2**size):
            bits = iter((k >> np.arange(size)) & 1)
            out.append(make(lambda lo, hi: np.where(np.array([next(bits) for _ in range(lo.size)]).reshape(lo.shape),
                                                    hi, lo)))
    else:
        for _ in range(30):
            out.append(make(lambda lo, hi: np.where(rng.random(lo.shape) < 0.5, lo, hi)))
    for _ in range(n):
        out.append(make(lambda lo, hi: lo + rng.random(lo.shape) * (hi - lo)))
    return out


def f32_box(lo: np.ndarray | float, hi: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest box of float32 numbers containing [lo, hi]: the model's float32 inputs then stay inside."""
    lo64, hi64 = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    lo32, hi32 = lo64.astype(F32), hi64.astype(F32)
    lo32 = np.where(lo32 > lo64, np.nextafter(lo32, F32(-np.inf)), lo32)
    hi32 = np.where(hi32 < hi64, np.nextafter(hi32, F32(np.inf)), hi32)
    return lo32.astype(np.float64), hi32.astype(np.float64)


def check_sound(model: onnx.ModelProto, graph: Graph, ranges: Ranges, box: Box, n: int = 200, seed: int = 0,
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Runs onnxruntime with every node output exposed at the box's points; asserts each value is in its
    interval. Returns the observed (min, max) of every checked tensor."""
    node_outputs = [o for nd in model.graph.node for o in nd.output if o]
    names = [o for o in node_outputs if o in ranges.intervals]
    sess = _session(model, names)
    shapes = {i.name: tuple(i.shape) for i in graph.inputs}
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bad: list[str] = []
    for feed in _points(box, shapes, n, seed):
        values = sess.run(names, feed)
        for name, v in zip(names, values, strict=True):
            v = np.asarray(v, dtype=np.float64)
            iv = ranges[name]
            if v.shape != iv.shape:
                v = v.reshape(iv.shape)
            if name in seen:
                lo, hi = seen[name]
                seen[name] = (np.minimum(lo, v), np.maximum(hi, v))
            else:
                seen[name] = (v, v)
    for name, (lo, hi) in seen.items():
        iv = ranges[name]
        if not (np.all(iv.lo <= lo) and np.all(hi <= iv.hi)) or np.isnan(lo).any() or np.isnan(hi).any():
            k = int(np.argmax((lo < iv.lo) | (hi > iv.hi) | np.isnan(lo)))
            bad.append(f"{name}: observed [{lo.ravel()[k]!r}, {hi.ravel()[k]!r}] not in "
                       f"[{iv.lo.ravel()[k]!r}, {iv.hi.ravel()[k]!r}] (element {k})")
    assert not bad, "\n".join(bad)
    return seen


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, Sequence[int]], outputs: Sequence[str],
               inits: Mapping[str, np.ndarray] | None = None, opset: int = 17,
               input_types: Mapping[str, int] | None = None) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(k, (input_types or {}).get(k, TensorProto.FLOAT), list(v))
           for k, v in inputs.items()]
    inits = dict(inits or {})
    graph = helper.make_graph(list(nodes), "case", ins, [onnx.ValueInfoProto(name=o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    return model


def run_case(model: onnx.ModelProto, box: Mapping[str, tuple[float | np.ndarray, float | np.ndarray]],
             n: int = 200, seed: int = 0, precision: str | None = None) -> tuple[Graph, Ranges]:
    graph = load_onnx(model)
    full = {k: f32_box(lo, hi) for k, (lo, hi) in box.items()}
    ranges = propagate(graph, full, precision=precision)
    check_sound(model, graph, ranges, full, n=n, seed=seed)
    return graph, ranges


def w(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)


# ----------------------------------------------------------------------------------------------------
# the sample models


def _sample_ids() -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("*.onnx"))


@pytest.mark.parametrize("name", _sample_ids())
def test_sample_models_sound(name: str) -> None:
    path = SAMPLES / f"{name}.onnx"
    graph = lipcheck.load(str(path), input_shape=(1, 1, 8, 8) if name == "dynamic_batch" else None)
    model = onnx.load(str(path))
    if name == "dynamic_batch":
        model = onnx.ModelProto.FromString(model.SerializeToString())
        dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    rng = np.random.default_rng(7)
    for wide in (True, False):
        box: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for info in graph.inputs:
            if wide:
                box[info.name] = (np.full(info.shape, -1.0), np.full(info.shape, 1.0))
            else:
                center = rng.uniform(-1, 1, info.shape)
                radius = rng.uniform(0.0, 0.05, info.shape)
                box[info.name] = f32_box(center - radius, center + radius)
        ranges = propagate(graph, box)
        assert not ranges.unbounded, ranges.unbounded
        assert all(iv.is_finite for iv in ranges.intervals.values())
        check_sound(model, graph, ranges, box, n=200, seed=3)
        # the outputs of the model as onnxruntime optimizes it (fusions on, nothing exposed)
        assert graph.reference is not None
        for feed in _points(box, {i.name: i.shape for i in graph.inputs}, 10, seed=5):
            outs = graph.reference([feed[i.name] for i in graph.float_inputs])
            for info, v in zip(graph.outputs, outs, strict=True):
                assert ranges[info.name].contains(v), info.name


def test_sample_narrow_box_is_tight() -> None:
    """A narrow box gives narrow intervals: the width is interval arithmetic's (as in float64) plus the float32
    rounding margin, which is all that is left for a single point."""
    graph = lipcheck.load(str(SAMPLES / "mlp.onnx"))
    x = np.random.default_rng(0).uniform(-1, 1, graph.inputs[0].shape).astype(F32).astype(np.float64)
    out = graph.outputs[0].name

    def width(radius: float, precision: str = "float32") -> float:
        iv = propagate(graph, {"input": f32_box(x - radius, x + radius)}, precision=precision)[out]
        return float(np.max(iv.hi - iv.lo))

    at_point, at_point64 = width(0.0), width(0.0, "float64")
    assert at_point < 0.02 and at_point64 < 1e-9
    assert width(1e-4) <= 1.01 * width(1e-4, "float64") + at_point
    assert width(1e-4, "float64") < 0.12 * width(1e-3, "float64")  # ~ linear in the radius


def test_folded_batchnorm_sound() -> None:
    path = SAMPLES / "cnn_bn.onnx"
    graph = fold_batchnorm(lipcheck.load(str(path)))
    assert not any(n.op_type == "BatchNormalization" for n in graph.nodes)
    box = {"input": (np.full((1, 3, 32, 32), -1.0), np.full((1, 3, 32, 32), 1.0))}
    ranges = propagate(graph, box)
    assert not ranges.unbounded
    check_sound(onnx.load(str(path)), graph, ranges, box, n=40)


# ----------------------------------------------------------------------------------------------------
# the tricky ops, with their exact images


@pytest.mark.parametrize(("alpha", "box", "expected"), [
    (-0.5, (-1.0, 2.0), (0.0, 2.0)),
    (2.0, (-1.0, 2.0), (-2.0, 2.0)),
    (-0.5, (-3.0, -1.0), (0.5, 1.5)),
    (2.0, (-3.0, -1.0), (-6.0, -2.0)),
    (0.0, (-3.0, 1.0), (0.0, 1.0)),
])
def test_leaky_relu_any_alpha(alpha: float, box: tuple[float, float], expected: tuple[float, float]) -> None:
    model = make_model([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=alpha)], {"x": [1, 8]}, ["y"])
    _, ranges = run_case(model, {"x": box})
    y = ranges["y"]
    np.testing.assert_allclose(y.lo, expected[0], atol=1e-4)
    np.testing.assert_allclose(y.hi, expected[1], atol=1e-4)


def test_prelu_per_channel_slopes() -> None:
    slope = np.array([[-0.5], [2.0], [0.25]], dtype=F32)  # (3, 1): per channel of (1, 3, 4)
    model = make_model([helper.make_node("PRelu", ["x", "s"], ["y"])], {"x": [1, 3, 4]}, ["y"], {"s": slope})
    _, ranges = run_case(model, {"x": (-2.0, 1.0)})
    np.testing.assert_allclose(ranges["y"].lo[0, :, 0], [0.0, -4.0, -0.5], atol=1e-4)
    np.testing.assert_allclose(ranges["y"].hi[0, :, 0], [1.0, 1.0, 1.0], atol=1e-4)


GELU_MIN = -0.16997120747990848  # at x = -0.7517915...
SILU_MIN = -0.27846454276107374  # at x = -1.2784645...
MISH_MIN = -0.30884303

@pytest.mark.parametrize(("nodes", "opset", "fmin"), [
    ([helper.make_node("Gelu", ["x"], ["y"])], 20, GELU_MIN),
    ([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], 20, None),
    ([helper.make_node("Swish", ["x"], ["y"])], 24, SILU_MIN),
    ([helper.make_node("Swish", ["x"], ["y"], alpha=2.0)], 24, SILU_MIN / 2),
    ([helper.make_node("Mish", ["x"], ["y"])], 18, MISH_MIN),
    ([helper.make_node("HardSwish", ["x"], ["y"])], 14, -0.375),
    ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], 17, None),
    ([helper.make_node("Div", ["x", "sq2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
      helper.make_node("Add", ["e", "one"], ["b"]), helper.make_node("Mul", ["x", "b"], ["c"]),
      helper.make_node("Mul", ["c", "half"], ["y"])], 17, None),  # the exported erf-GELU pattern
])
def test_non_monotone_activations_across_their_minimum(nodes: list[onnx.NodeProto], opset: int,
                                                        fmin: float | None) -> None:
    inits = {"sq2": np.array(math.sqrt(2), F32), "one": np.array(1.0, F32), "half": np.array(0.5, F32)}
    model = make_model(nodes, {"x": [1, 6]}, ["y"], inits, opset=opset)
    _, ranges = run_case(model, {"x": (-3.0, 1.0)}, n=400)
    y = ranges["y"]
    if fmin is not None:  # the minimum inside the interval, not an endpoint's value
        np.testing.assert_allclose(y.lo, fmin, atol=1e-4)
    # endpoints inside the same side of the minimum: the image of a monotone piece
    model2 = make_model(nodes, {"x": [1, 6]}, ["y"], inits, opset=opset)
    _, r2 = run_case(model2, {"x": (0.5, 2.0)}, n=50)
    assert float(r2["y"].lo.min()) > 0.2


def test_softmax_bounds_attained_at_vertices() -> None:
    rng = np.random.default_rng(3)
    lo = rng.uniform(-2, 1, (2, 5))
    hi = lo + rng.uniform(0.1, 1.5, (2, 5))
    for op in ("Softmax", "LogSoftmax"):
        model = make_model([helper.make_node(op, ["x"], ["y"], axis=-1)], {"x": [2, 5]}, ["y"], opset=13)
        _, ranges = run_case(model, {"x": (lo, hi)})
        sess = _session(model)
        for i in range(5):  # y_i is smallest at x_i = lo_i, x_j = hi_j; largest at the opposite vertex
            small = np.where(np.arange(5) == i, lo, hi).astype(F32)
            large = np.where(np.arange(5) == i, hi, lo).astype(F32)
            v_small, v_large = sess.run(["y"], {"x": small})[0][:, i], sess.run(["y"], {"x": large})[0][:, i]
            np.testing.assert_allclose(ranges["y"].lo[:, i], v_small, rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(ranges["y"].hi[:, i], v_large, rtol=1e-4, atol=2e-5)


def test_softmax_old_opset_flattens() -> None:
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": [2, 3, 4]}, ["y"], opset=11)
    _, ranges = run_case(model, {"x": (-1.0, 1.0)})
    assert float(ranges["y"].hi.max()) < 1.0  # 12 elements share one softmax


def test_div_by_interval_containing_zero_is_unbounded() -> None:
    model = make_model([helper.make_node("Div", ["x", "y"], ["q"], name="divide"),
                        helper.make_node("Sigmoid", ["q"], ["s"])], {"x": [1, 4], "y": [1, 4]}, ["s"])
    graph = load_onnx(model)
    ranges = propagate(graph, {"x": (1.0, 2.0), "y": (-1.0, 1.0)})
    assert "q" in ranges.unbounded
    assert "divide (Div)" in ranges.unbounded["q"] and "contains 0" in ranges.unbounded["q"]
    assert not np.isfinite(ranges["q"].lo).any()
    s = ranges["s"]  # Sigmoid of anything is in [0, 1] (up to the rounding margin)
    assert s.is_finite and float(s.lo.min()) >= -1e-4 and float(s.hi.max()) <= 1 + 1e-4
    # a divisor interval that excludes 0, partly per element
    lo_y, hi_y = np.array([[0.5, -2.0, 0.5, -1.0]]), np.array([[2.0, -0.5, 2.0, 1.0]])
    ranges = propagate(graph, {"x": (1.0, 2.0), "y": (lo_y, hi_y)})
    q = ranges["q"]
    np.testing.assert_allclose(q.lo[0, :3], [0.5, -4.0, 0.5], rtol=1e-4)
    np.testing.assert_allclose(q.hi[0, :3], [4.0, -0.5, 4.0], rtol=1e-4)
    assert q.lo[0, 3] == -math.inf and q.hi[0, 3] == math.inf and "q" in ranges.unbounded
    _, r2 = run_case(model, {"x": (1.0, 2.0), "y": (0.5, 2.0)})
    assert r2["q"].is_finite


def test_mul_of_two_variables() -> None:
    model = make_model([helper.make_node("Mul", ["a", "b"], ["p"]), helper.make_node("Mul", ["a", "a"], ["sq"])],
                       {"a": [1, 3], "b": [1, 3]}, ["p", "sq"])
    _, ranges = run_case(model, {"a": (-1.0, 2.0), "b": (-3.0, 0.5)})
    np.testing.assert_allclose(ranges["p"].lo, -6.0, rtol=1e-4)
    np.testing.assert_allclose(ranges["p"].hi, 3.0, rtol=1e-4)
    np.testing.assert_allclose(ranges["sq"].lo, 0.0, atol=1e-6)  # x·x is a square, not [-2, 4]
    np.testing.assert_allclose(ranges["sq"].hi, 4.0, rtol=1e-4)


def test_matmul_of_two_variables_attention_style() -> None:
    d, t = 8, 4
    inits = {"wq": w(d, d, seed=1, scale=0.3), "wk": w(d, d, seed=2, scale=0.3), "wv": w(d, d, seed=3, scale=0.3),
             "scale": np.array(1 / math.sqrt(d), F32)}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"), helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    model = make_model(nodes, {"x": [1, t, d]}, ["o"], inits, opset=13)
    _, ranges = run_case(model, {"x": (-1.0, 1.0)})
    assert not ranges.unbounded
    x = np.random.default_rng(0).uniform(-1, 1, (1, t, d))
    _, narrow = run_case(model, {"x": (x - 0.01, x + 0.01)})
    assert float(np.max(narrow["o"].hi - narrow["o"].lo)) < 0.2


def test_interval_matmul_contains_exact_interval_product() -> None:
    """Rump's midpoint-radius product: contains the exact interval product, at most 1.5× its radius."""
    rng = np.random.default_rng(5)
    a_lo = rng.uniform(-1, 1, (3, 4))
    a_hi = a_lo + rng.uniform(0, 1, (3, 4))
    b_lo = rng.uniform(-1, 1, (4, 2))
    b_hi = b_lo + rng.uniform(0, 1, (4, 2))
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["c"])], {"a": [3, 4], "b": [4, 2]}, ["c"])
    _, ranges = run_case(model, {"a": (a_lo, a_hi), "b": (b_lo, b_hi)}, precision="float64")
    ends = [x[:, :, None] * y[None, :, :] for x in (a_lo, a_hi) for y in (b_lo, b_hi)]
    exact_lo = np.minimum.reduce(ends).sum(axis=1)
    exact_hi = np.maximum.reduce(ends).sum(axis=1)
    c = ranges["c"]
    assert np.all(c.lo <= exact_lo + 1e-12) and np.all(c.hi >= exact_hi - 1e-12)
    assert np.all(c.hi - c.lo <= 1.5 * (exact_hi - exact_lo) + 1e-9)


def test_layer_normalization() -> None:
    n = 8
    scale, bias = w(n, seed=4), w(n, seed=5, scale=0.1)
    model = make_model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)], {"x": [2, n]},
                       ["y"], {"g": scale, "b": bias})
    _, ranges = run_case(model, {"x": (-1.0, 1.0)}, n=300)
    bound = math.sqrt(n - 1) * np.abs(scale) + np.abs(bias)
    y = ranges["y"]
    assert np.all(y.hi <= bound * (1 + 1e-3) + 1e-3) and np.all(y.lo >= -bound * (1 + 1e-3) - 1e-3)
    # inputs known to be above the others: the normalized sign is known
    lo = np.array([[2.0] + [-1.0] * (n - 1)] * 2)
    hi = np.array([[3.0] + [1.0] * (n - 1)] * 2)
    _, r2 = run_case(make_model([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1)],
                                {"x": [2, n]}, ["y"], {"g": np.ones(n, F32)}), {"x": (lo, hi)})
    assert float(r2["y"].lo[:, 0].min()) > 0.1
    # large inputs: float32 rounding of E[x²] - μ² may cancel epsilon: unbounded in float32, not in float64
    graph = load_onnx(model)
    big = propagate(graph, {"x": (100.0, 101.0)})
    assert "y" in big.unbounded and "epsilon" in big.unbounded["y"]
    assert propagate(graph, {"x": (100.0, 101.0)}, precision="float64")["y"].is_finite


def test_normalizations_and_their_statistics() -> None:
    c = 4
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "g", "b"], ["inst"]),
        helper.make_node("GroupNormalization", ["x", "g", "b"], ["grp"], num_groups=2),
        helper.make_node("LayerNormalization", ["x", "g3", "b3"], ["ln", "mean", "inv"], axis=1),
        helper.make_node("RMSNormalization", ["x", "g3"], ["rms"], axis=1),
    ]
    inits = {"g": w(c, seed=1), "b": w(c, seed=2), "g3": w(c, 3, 3, seed=3), "b3": w(c, 3, 3, seed=4)}
    model = make_model(nodes, {"x": [2, c, 3, 3]}, ["inst", "grp", "ln", "mean", "inv", "rms"], inits, opset=23)
    _, ranges = run_case(model, {"x": (-0.4, 0.6)})
    assert not ranges.unbounded
    x = np.random.default_rng(1).uniform(-2, 2, (2, c, 3, 3))  # larger values, but a narrow box: var ≥ var_min
    _, ranges = run_case(model, {"x": (x - 0.05, x + 0.05)})
    assert not ranges.unbounded


def test_gemm_is_exactly_the_center_radius_image() -> None:
    rng = np.random.default_rng(11)
    wt, b = w(5, 7, seed=8), w(5, seed=9)
    lo = rng.uniform(-1, 1, (2, 7))
    hi = lo + rng.uniform(0, 0.5, (2, 7))
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": [2, 7]}, ["y"],
                       {"w": wt, "b": b})
    graph = load_onnx(model)
    W, B = wt.astype(np.float64), b.astype(np.float64)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    exact_lo, exact_hi = c @ W.T + B - r @ np.abs(W).T, c @ W.T + B + r @ np.abs(W).T
    y64 = propagate(graph, {"x": (lo, hi)}, precision="float64")["y"]
    scale = np.abs(exact_lo) + np.abs(exact_hi)
    assert np.all(np.abs(y64.lo - exact_lo) <= 1e-9 * scale) and np.all(y64.lo <= exact_lo)
    assert np.all(np.abs(y64.hi - exact_hi) <= 1e-9 * scale) and np.all(y64.hi >= exact_hi)
    # float32: widened by at most the documented margin 2·γ_{n+4}·(|W|·m + |b|) (+ tiny)
    y32 = propagate(graph, {"x": (lo, hi)})["y"]
    u = 2.0**-24
    gamma = (7 + 4) * u / (1 - (7 + 4) * u)
    margin = 2 * gamma * (np.maximum(np.abs(lo), np.abs(hi)) @ np.abs(W).T + np.abs(B))
    assert np.all(exact_lo - y32.lo <= margin * 1.001 + 1e-30) and np.all(y32.lo < exact_lo)
    assert np.all(y32.hi - exact_hi <= margin * 1.001 + 1e-30) and np.all(y32.hi > exact_hi)
    check_sound(model, graph, propagate(graph, {"x": (lo, hi)}), {"x": (lo, hi)})


# ----------------------------------------------------------------------------------------------------
# the other ops: soundness on small graphs


def _unary_nodes(ops: Sequence[str], **attrs: dict[str, object]) -> tuple[list[onnx.NodeProto], list[str]]:
    nodes = [helper.make_node(op, ["x"], [f"y_{k}"], **attrs.get(op, {})) for k, op in enumerate(ops)]
    return nodes, [f"y_{k}" for k in range(len(ops))]


def test_elementwise_functions() -> None:
    ops = ["Relu", "Sigmoid", "Tanh", "Exp", "Softplus", "Softsign", "Elu", "Selu", "Celu", "HardSigmoid", "Erf",
           "Abs", "Neg", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "HardSwish"]
    nodes, outs = _unary_nodes(ops, Elu={"alpha": 0.7}, Celu={"alpha": 2.0},
                               HardSigmoid={"alpha": -0.3, "beta": 0.4})
    nodes += [helper.make_node("Clip", ["x", "cmin", "cmax"], ["clip"]),
              helper.make_node("Clip", ["x", "", "cmax"], ["clip_hi"])]
    model = make_model(nodes, {"x": [1, 7]}, outs + ["clip", "clip_hi"],
                       {"cmin": np.array(-0.5, F32), "cmax": np.array(0.7, F32)}, opset=14)
    x_lo = np.array([[-3.0, -1.0, -0.2, 0.0, 0.3, 1.0, -20.0]])
    x_hi = np.array([[-2.0, 1.0, 0.4, 0.0, 2.5, 9.0, 20.0]])
    _, ranges = run_case(model, {"x": (x_lo, x_hi)}, n=300)
    assert not ranges.unbounded
    np.testing.assert_allclose(ranges["clip"].lo, np.clip(x_lo, -0.5, 0.7), rtol=1e-7)
    np.testing.assert_array_equal(ranges["y_0"].lo, np.maximum(ranges["x"].lo, 0))  # Relu: exact, no margin


def test_domain_functions() -> None:
    nodes, outs = _unary_nodes(["Log", "Sqrt", "Reciprocal"])
    nodes += [helper.make_node("Pow", ["x", "e2"], ["p2"]), helper.make_node("Pow", ["x", "eh"], ["ph"]),
              helper.make_node("Pow", ["x", "em"], ["pm"]), helper.make_node("Pow", ["z", "e2"], ["pz2"]),
              helper.make_node("Pow", ["z", "e3"], ["pz3"])]
    inits = {"e2": np.array(2.0, F32), "eh": np.array(0.5, F32), "em": np.array(-1.0, F32),
             "e3": np.array(3.0, F32)}
    model = make_model(nodes, {"x": [1, 4], "z": [1, 4]}, outs + ["p2", "ph", "pm", "pz2", "pz3"], inits)
    _, ranges = run_case(model, {"x": (np.array([[0.5, 1.0, 0.01, 2.0]]), np.array([[3.0, 1.0, 0.02, 100.0]])),
                                 "z": (-2.0, 1.5)})
    assert not ranges.unbounded
    np.testing.assert_allclose(ranges["pz2"].lo, 0.0, atol=1e-12)
    np.testing.assert_allclose(ranges["pz3"].lo, -8.0, rtol=1e-4)
    graph = load_onnx(model)
    neg = propagate(graph, {"x": (-1.0, 1.0), "z": (-1.0, 1.0)})
    for name, op in (("y_0", "Log"), ("y_1", "Sqrt"), ("y_2", "Reciprocal"), ("ph", "Pow"), ("pm", "Pow")):
        assert name in neg.unbounded and f"({op})" in neg.unbounded[name], (name, neg.unbounded)
    assert "p2" not in neg.unbounded


def test_arithmetic_and_variadic() -> None:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["add"]), helper.make_node("Sub", ["a", "b"], ["sub"]),
        helper.make_node("Mul", ["a", "c"], ["mulc"]), helper.make_node("Div", ["a", "c"], ["divc"]),
        helper.make_node("Div", ["c", "b"], ["cdivb"]), helper.make_node("Sum", ["a", "b", "a"], ["sum"]),
        helper.make_node("Mean", ["a", "b", "c"], ["mean"]), helper.make_node("Max", ["a", "b", "c"], ["max"]),
        helper.make_node("Min", ["a", "b"], ["min"]),
    ]
    model = make_model(nodes, {"a": [2, 3], "b": [1, 3]}, ["add", "sub", "mulc", "divc", "cdivb", "sum", "mean",
                                                           "max", "min"], {"c": w(2, 1, seed=3)})
    _, ranges = run_case(model, {"a": (-1.0, 2.0), "b": (0.5, 1.5)})
    assert not ranges.unbounded


def test_shape_ops() -> None:
    inits = {
        "shape": np.array([1, 4, 6], np.int64), "perm_axes": np.array([0], np.int64),
        "starts": np.array([5, 0], np.int64), "ends": np.array([0, 3], np.int64), "axes": np.array([2, 1], np.int64),
        "steps": np.array([-2, 1], np.int64), "idx": np.array([[2, 0], [1, 1]], np.int64),
        "exp_shape": np.array([2, 1, 4, 6], np.int64), "reps": np.array([1, 2, 1], np.int64),
        "pads": np.array([0, 1, 2, 0, 1, 1], np.int64), "split": np.array([1, 3], np.int64),
        "cst": np.array([[[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]]], F32), "scales": np.array([1, 1, 2, 2], F32),
        "cval": np.array(7.0, F32),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["r", "perm_axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "perm_axes"], ["sq"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=2),
        helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Gather", ["r", "idx"], ["g"], axis=2),
        helper.make_node("Expand", ["r", "exp_shape"], ["e"]),
        helper.make_node("Tile", ["r", "reps"], ["ti"]),
        helper.make_node("Pad", ["r", "pads", "cval"], ["pc"], mode="constant"),
        helper.make_node("Pad", ["r", "pads"], ["pr"], mode="reflect"),
        helper.make_node("Pad", ["r", "pads"], ["pe"], mode="edge"),
        helper.make_node("Split", ["r", "split"], ["s1", "s2"], axis=1),
        helper.make_node("Concat", ["r", "cst"], ["cat"], axis=1),
        helper.make_node("Identity", ["r"], ["id"]),
        helper.make_node("Dropout", ["r"], ["dr"]),
        helper.make_node("Reshape", ["x", "exp_shape4"], ["r4"]),
        helper.make_node("DepthToSpace", ["r4"], ["d2s"], blocksize=2),
        helper.make_node("Reshape", ["x", "s2d_shape"], ["r6"]),
        helper.make_node("SpaceToDepth", ["r6"], ["s2d"], blocksize=2),
        helper.make_node("Resize", ["r4", "", "scales"], ["rn"], mode="nearest"),
        helper.make_node("Resize", ["r4", "", "scales"], ["rl"], mode="linear"),
        helper.make_node("GatherElements", ["r", "gidx"], ["ge"], axis=2),
    ]
    inits["exp_shape4"] = np.array([1, 4, 2, 3], np.int64)
    inits["s2d_shape"] = np.array([1, 6, 2, 2], np.int64)
    inits["gidx"] = np.array([[[5, 0, 1], [2, 2, 3], [0, 4, 4], [1, 1, 1]]], np.int64)
    outs = ["t", "sq", "f", "sl", "g", "e", "ti", "pc", "pr", "pe", "s1", "s2", "cat", "id", "dr", "d2s", "s2d",
            "rn", "rl", "ge"]
    model = make_model(nodes, {"x": [24]}, outs, inits, opset=13)
    lo = np.linspace(-2, 1, 24)
    _, ranges = run_case(model, {"x": (lo, lo + np.linspace(0.5, 0.0, 24))}, n=100)
    assert not ranges.unbounded
    np.testing.assert_array_equal(ranges["pc"].lo[0, 0], 7.0)  # the pad value
    np.testing.assert_array_equal(ranges["t"].lo, np.transpose(ranges["x"].lo.reshape(1, 4, 6), (0, 2, 1)))


def test_linear_layers_pools_reductions() -> None:
    inits = {
        "wc": w(4, 3, 3, 3, seed=1, scale=0.4), "bc": w(4, seed=2), "wt": w(4, 2, 3, 3, seed=3, scale=0.4),
        "bn_s": np.abs(w(4, seed=4)) + 0.5, "bn_b": w(4, seed=5), "bn_m": w(4, seed=6),
        "bn_v": np.abs(w(4, seed=7)) + 0.1, "in_s": w(3, seed=8), "in_b": w(3, seed=9),
        "axes": np.array([1, 3], np.int64), "ax": np.array(2, np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["conv"], pads=[1, 0, 1, 2], strides=[1, 2]),
        helper.make_node("BatchNormalization", ["conv", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("ConvTranspose", ["bn", "wt"], ["convt"], strides=[2, 2], pads=[1, 1, 1, 1],
                         output_padding=[1, 1]),
        helper.make_node("MaxPool", ["bn"], ["maxp"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1),
        helper.make_node("AveragePool", ["bn"], ["avgp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["bn"], ["gap"]), helper.make_node("GlobalMaxPool", ["bn"], ["gmp"]),
        helper.make_node("ReduceMean", ["bn"], ["rmean"], axes=[2, 3]),
        helper.make_node("ReduceSum", ["bn", "axes"], ["rsum"], keepdims=0),
        helper.make_node("ReduceMax", ["bn"], ["rmax"], axes=[1]), helper.make_node("ReduceMin", ["bn"], ["rmin"]),
        helper.make_node("ReduceL1", ["bn"], ["rl1"], axes=[1]), helper.make_node("ReduceL2", ["bn"], ["rl2"]),
        helper.make_node("ReduceSumSquare", ["bn"], ["rss"], axes=[2]),
        helper.make_node("ReduceLogSumExp", ["bn"], ["rlse"], axes=[3]),
        helper.make_node("CumSum", ["bn", "ax"], ["cums"]),
        helper.make_node("InstanceNormalization", ["x", "in_s", "in_b"], ["inorm"]),
    ]
    outs = ["convt", "maxp", "avgp", "gap", "gmp", "rmean", "rsum", "rmax", "rmin", "rl1", "rl2", "rss", "rlse",
            "cums", "inorm"]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, outs, inits, opset=13)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 6, 6))
    _, ranges = run_case(model, {"x": (x - 0.3, x + 0.3)}, n=100)
    assert not ranges.unbounded


def test_comparisons_casts_where() -> None:
    inits = {"t": np.array(0.3, F32), "cond": np.array([[True, False, True, False]]), "ten": np.array(10.0, F32)}
    nodes = [
        helper.make_node("Less", ["x", "t"], ["lt"]), helper.make_node("Greater", ["x", "t"], ["gt"]),
        helper.make_node("LessOrEqual", ["x", "t"], ["le"]), helper.make_node("Equal", ["x", "t"], ["eq"]),
        helper.make_node("Not", ["lt"], ["nlt"]), helper.make_node("And", ["lt", "cond"], ["and"]),
        helper.make_node("Or", ["gt", "cond"], ["or"]),
        helper.make_node("Cast", ["lt"], ["ltf"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["cond", "x", "ten"], ["wc"]), helper.make_node("Where", ["lt", "x", "ten"], ["wv"]),
        helper.make_node("Mul", ["x", "ten"], ["x10"]), helper.make_node("Cast", ["x10"], ["xi"], to=TensorProto.INT32),
        helper.make_node("Cast", ["x10"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["x10"], ["xb"], to=TensorProto.BOOL),
        helper.make_node("ArgMax", ["x"], ["am"], axis=1),
    ]
    outs = ["nlt", "and", "or", "ltf", "le", "eq", "wc", "wv", "xi", "xh", "xb", "am"]
    model = make_model(nodes, {"x": [1, 4]}, outs, inits, opset=13)
    lo, hi = np.array([[-1.0, 0.5, -0.2, 0.31]]), np.array([[0.2, 1.0, 0.4, 0.9]])
    _, ranges = run_case(model, {"x": (lo, hi)})
    assert not ranges.unbounded
    np.testing.assert_array_equal(ranges["lt"].lo, [[1, 0, 0, 0]])  # decided where the intervals are apart
    np.testing.assert_array_equal(ranges["lt"].hi, [[1, 0, 1, 0]])
    np.testing.assert_array_equal(ranges["wc"].hi[0, 1], 10.0)


# ----------------------------------------------------------------------------------------------------
# unknown ops, infinite intervals, the box


def _graph(nodes: Sequence[Node], shapes: Mapping[str, tuple[int, ...]], inputs: Mapping[str, str],
           outputs: Sequence[str]) -> Graph:
    dtypes = {k: inputs.get(k, "float32") for k in shapes}
    return Graph(name="g", inputs=tuple(TensorInfo(k, shapes[k], v) for k, v in inputs.items()),
                 outputs=tuple(TensorInfo(o, shapes[o], "float32") for o in outputs), nodes=tuple(nodes),
                 constants={}, shapes=dict(shapes), dtypes=dtypes, opset=17)


def test_unknown_op_gives_infinite_bounds_that_later_ops_handle() -> None:
    nodes = [Node("mystery", "Mystery", ("x",), ("y",)), Node("relu", "Relu", ("y",), ("z",)),
             Node("sig", "Sigmoid", ("y",), ("s",)), Node("tanh", "Tanh", ("z",), ("t",)),
             Node("add", "Add", ("z", "x"), ("a",)), Node("custom", "Relu", ("x",), ("c",), domain="com.example")]
    shapes = {k: (1, 3) for k in "xyzstac"}
    graph = _graph(nodes, shapes, {"x": "float32"}, ["s", "t", "a", "c"])
    ranges = propagate(graph, {"x": (-1.0, 1.0)})
    assert ranges.unbounded["y"] == "mystery (Mystery): op Mystery: no range rule"
    assert "com.example" in ranges.unbounded["c"]
    assert np.all(ranges["y"].lo == -math.inf) and np.all(ranges["y"].hi == math.inf)
    z = ranges["z"]
    assert np.all(z.lo == 0.0) and np.all(z.hi == math.inf)
    assert "'y' is unbounded" in ranges.unbounded["z"]
    for name in ("s", "t"):  # bounded again
        iv = ranges[name]
        assert iv.is_finite and name not in ranges.unbounded
        assert float(iv.lo.min()) >= -1e-4 and float(iv.hi.max()) <= 1 + 1e-4
    assert np.all(ranges["a"].lo >= -1.0 - 1e-4) and np.all(ranges["a"].hi == math.inf)


def test_infinite_intervals_through_linear_ops() -> None:
    """Only the outputs that read an unbounded element (with a nonzero weight) become unbounded."""
    wt = np.array([[1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]])  # output 0 reads x only, output 1 reads y only
    nodes = [Node("mystery", "Mystery", ("x",), ("y",)), Node("cat", "Concat", ("x", "y"), ("c",), {"axis": 1}),
             Node("gemm", "Gemm", ("c", "w", "b"), ("g",), {"transB": 1}),
             Node("mm", "MatMul", ("c", "wt"), ("m",)), Node("sm", "Softmax", ("c",), ("s",), {"axis": -1}),
             Node("ln", "LayerNormalization", ("c", "one"), ("l",), {"axis": -1}),
             Node("relu", "Relu", ("c",), ("r",)), Node("pool", "ReduceMean", ("r",), ("p",), {"axes": [1]})]
    shapes = {"x": (1, 2), "y": (1, 2), "c": (1, 4), "g": (1, 2), "m": (1, 2), "s": (1, 4), "l": (1, 4),
              "r": (1, 4), "p": (1, 1), "w": (2, 4), "b": (2,), "wt": (4, 2), "one": (4,)}
    graph = _graph(nodes, shapes, {"x": "float32"}, ["g", "m", "s", "l", "p"])
    graph = Graph(**{**graph.__dict__, "constants": {"w": wt, "b": np.array([0.5, 0.5]), "wt": wt.T,
                                                     "one": np.ones(4)}})
    ranges = propagate(graph, {"x": (-1.0, 1.0)})
    for name in ("g", "m"):
        iv = ranges[name]
        assert np.isfinite(iv.lo[0, 0]) and np.isfinite(iv.hi[0, 0]), name
        assert iv.lo[0, 1] == -math.inf and iv.hi[0, 1] == math.inf, name
        assert "'c' is unbounded" in ranges.unbounded[name]
    np.testing.assert_allclose([ranges["g"].lo[0, 0], ranges["g"].hi[0, 0]], [-2.5, 3.5], atol=1e-5)
    s = ranges["s"]
    assert float(s.lo.min()) >= 0.0 and float(s.hi.max()) <= 1 + 1e-4
    assert np.all(s.lo[0, :2] == 0.0)  # an unbounded competitor can take all the mass
    assert not np.isfinite(ranges["l"].lo).any()
    assert ranges["p"].lo[0, 0] >= -1e-12 and ranges["p"].hi[0, 0] == math.inf


def test_more_linear_forms() -> None:
    nodes = [
        helper.make_node("Gemm", ["a", "wa", "c"], ["g"], transA=1, alpha=0.5, beta=-2.0),
        helper.make_node("MatMul", ["v", "wm"], ["mv"]), helper.make_node("MatMul", ["wm2", "v"], ["vm"]),
        helper.make_node("Conv", ["x", "wc", "cb"], ["conv"], group=2, pads=[1, 1], dilations=[2]),
        helper.make_node("ConvTranspose", ["x", "wt"], ["convt"], group=2, strides=[3]),
        helper.make_node("Clip", ["v"], ["clip6"], min=-0.25, max=0.5),
    ]
    inits = {"wa": w(3, 2, seed=1), "wm": w(4, 3, seed=2), "wm2": w(5, 4, seed=3), "wc": w(4, 2, 3, seed=4),
             "wt": w(4, 1, 2, seed=5)}
    model = make_model(nodes[:5], {"a": [3, 4], "c": [4, 2], "v": [4], "x": [1, 4, 5], "cb": [4]},
                       ["g", "mv", "vm", "conv", "convt"], inits, opset=13)
    _, ranges = run_case(model, {"a": (-1.0, 1.0), "c": (0.0, 0.5), "v": (-1.0, 2.0), "x": (-0.5, 0.5),
                                 "cb": (-0.1, 0.1)})
    assert not ranges.unbounded
    clip = make_model(nodes[5:], {"v": [4]}, ["clip6"], opset=6)
    _, ranges = run_case(clip, {"v": (-1.0, 2.0)})
    np.testing.assert_allclose([ranges["clip6"].lo.min(), ranges["clip6"].hi.max()], [-0.25, 0.5], rtol=1e-6)


def test_box_validation() -> None:
    graph = _graph([Node("r", "Relu", ("x",), ("y",)), Node("g", "Gather", ("y", "i"), ("z",), {"axis": 1})],
                   {"x": (1, 3), "y": (1, 3), "i": (2,), "z": (1, 2)}, {"x": "float32", "i": "int64"}, ["z"])
    with pytest.raises(ValueError, match="'?i'?"):
        propagate(graph, {"x": (-1.0, 1.0)})
    with pytest.raises(ValueError, match="x"):
        propagate(graph, {"i": (0, 1)})
    with pytest.raises(ValueError, match="lo > hi"):
        propagate(graph, {"x": (1.0, -1.0), "i": (0, 1)})
    with pytest.raises(ValueError, match="nope"):
        propagate(graph, {"x": (-1.0, 1.0), "i": (0, 1), "nope": (0, 1)})
    ranges = propagate(graph, {"x": (np.array([-1.0, 0.0, 1.0]), 2.0), "i": (0, 0)})
    assert ranges["x"].shape == (1, 3)
    np.testing.assert_array_equal(ranges["z"].lo, [[0.0, 0.0]])  # index 0, exact: a point interval
    np.testing.assert_array_equal(ranges["z"].hi, [[2.0, 2.0]])
    ranges = propagate(graph, {"x": (-1.0, 1.0), "i": (0, 2)})
    assert "z" in ranges.unbounded and "not constant" in ranges.unbounded["z"]


def test_constants_are_points() -> None:
    model = make_model([helper.make_node("Add", ["x", "c"], ["y"])], {"x": [1, 2]}, ["y"], {"c": w(1, 2)})
    graph = load_onnx(model)
    ranges = propagate(graph, {"x": (0.0, 1.0)})
    assert "c" in ranges and ranges["c"].is_point
    assert isinstance(ranges["x"], Interval)
    assert ranges.precision == "float32"


def test_sums_of_squares_stay_nonnegative_so_a_magnitude_sqrt_has_a_range() -> None:
    """√(re² + im²) as exported (Mul(x, x), Pow(x, 2), Add): the float32 rounding margin must not push the sum's
    lower end below 0 (a float square or sum of non-negative floats is never negative), else Sqrt's range is
    refused as "reaches below 0 (NaN)" and everything after it has no range."""
    from tests.helpers import float_model

    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("Add", ["sq", "p"], ["s"]), helper.make_node("Sqrt", ["s"], ["m"]),
             helper.make_node("Add", ["m", "one"], ["one_plus"]), helper.make_node("Log", ["one_plus"], ["y"])]
    model = float_model(nodes, {"two": np.array(2.0), "one": np.array(1.0)}, [1, 6], "y", [1, 6])
    _, ranges = run_case(model, {"x": (-1.0, 1.0)})  # also: onnxruntime's outputs lie in the ranges
    for name in ("sq", "p", "s", "m"):
        iv = ranges.intervals[name]
        assert np.all(iv.lo >= 0) and np.all(np.isfinite(iv.hi)), name
    assert np.all(ranges.intervals["one_plus"].lo >= 0.999)  # 1 less a float32 rounding margin
    assert np.all(np.isfinite(ranges.intervals["y"].lo)) and not ranges.unbounded
