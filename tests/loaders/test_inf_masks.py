"""Constants holding ±inf used as masks (Max(x, c), Where(m, x, -inf), Add(x, mask) before a Softmax): loaded, and
bounded where lipcheck can follow the infinite entries (checked against ratios measured with onnxruntime); kept
unbounded, naming a node, where it cannot; Inf in a linear layer's weight still refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.errors import InvalidWeightsError
from lipcheck.loaders.onnx_loader import load_onnx
from tests.helpers import rng_weights

INF = np.inf


def model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[int], out_shape: list[int],
          opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "masks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def measured_ratio(m: onnx.ModelProto, shape: list[int], seed: int = 0, pairs: int = 300) -> float:
    """The largest ‖f(x) − f(y)‖/‖x − y‖ over random pairs (near and far), computed with onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    best = 0.0
    for k in range(pairs):
        x = (rng.standard_normal(shape) * 10 ** rng.uniform(-1, 1)).astype(np.float32)
        step = 1e-2 if k % 2 else 1.0
        y = (x + rng.standard_normal(shape) * step).astype(np.float32)
        (fx,) = sess.run(None, {"x": x})
        (fy,) = sess.run(None, {"x": y})
        assert np.isfinite(fx).all() and np.isfinite(fy).all()
        best = max(best, float(np.linalg.norm(fx - fy) / np.linalg.norm(x - y)))
    return best


def certified(m: onnx.ModelProto) -> float:
    r = lipcheck.analyze(m, lower_bound=False)
    assert r.certified and not r.unbounded, r.unbounded
    assert r.upper_bound is not None and np.isfinite(r.upper_bound)
    return r.upper_bound


def test_max_with_minus_inf_constant_then_gemm() -> None:
    c = np.zeros((1, 8), np.float32)
    c[0, ::3] = -INF
    c[0, 1] = 0.5
    w = rng_weights(8, 4)
    m = model([helper.make_node("Max", ["x", "c"], ["h"]), helper.make_node("Gemm", ["h", "w"], ["y"])],
              {"c": c, "w": w}, [1, 8], [1, 4])
    bound = certified(m)
    sigma = float(np.linalg.svd(w.astype(np.float64), compute_uv=False)[0])
    assert bound == pytest.approx(sigma, rel=1e-6)  # Max with a constant: 1
    assert bound >= sigma
    assert measured_ratio(m, [1, 8]) <= bound


def test_min_with_plus_inf_constant() -> None:
    c = np.full((1, 6), INF, np.float32)
    c[0, 2] = 0.0
    m = model([helper.make_node("Min", ["x", "c"], ["y"])], {"c": c}, [1, 6], [1, 6])
    bound = certified(m)
    assert bound == pytest.approx(1.0)
    assert measured_ratio(m, [1, 6]) <= bound


def test_add_minus_inf_mask_then_softmax() -> None:
    mask = np.zeros((2, 8), np.float32)
    mask[0, [2, 5]] = -INF
    mask[1, 7] = -INF
    m = model([helper.make_node("Add", ["x", "mask"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
              {"mask": mask}, [2, 8], [2, 8])
    bound = certified(m)
    assert bound == pytest.approx(0.5)
    ratio = measured_ratio(m, [2, 8])
    assert ratio <= bound


def test_where_minus_inf_softmax_then_gemm_and_the_old_opset_softmax() -> None:
    cond = np.ones((1, 8), bool)
    cond[0, [1, 4]] = False
    w = rng_weights(8, 3, seed=1)
    m = model([helper.make_node("Where", ["cond", "x", "ninf"], ["h"]),
               helper.make_node("Softmax", ["h"], ["s"], axis=1), helper.make_node("Gemm", ["s", "w"], ["y"])],
              {"cond": cond, "ninf": np.array(-INF, np.float32), "w": w}, [1, 8], [1, 3])
    bound = certified(m)
    assert measured_ratio(m, [1, 8]) <= bound
    # opset 11: the softmax runs over the input flattened at axis 1 (each [2, 4] slice is one row)
    mask = np.array([[0, -INF, 0, 0], [0, 0, 0, -INF]], np.float32)
    m11 = model([helper.make_node("Add", ["x", "mask"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=1)],
                {"mask": mask}, [2, 2, 4], [2, 2, 4], opset=11)
    assert measured_ratio(m11, [2, 2, 4]) <= certified(m11)


def test_masked_entries_through_reduce_max_log_softmax_and_relu() -> None:
    mask = np.zeros((1, 8), np.float32)
    mask[0, [0, 6]] = -INF
    nodes = [helper.make_node("Add", ["x", "mask"], ["h"]),
             helper.make_node("ReduceMax", ["h"], ["r"], axes=[1], keepdims=1),
             helper.make_node("LogSoftmax", ["h"], ["ls"], axis=1), helper.make_node("Relu", ["ls"], ["rl"]),
             helper.make_node("Concat", ["r", "rl"], ["y"], axis=1)]
    m = model(nodes, {"mask": mask}, [1, 8], [1, 9])
    assert measured_ratio(m, [1, 8]) <= certified(m)


@pytest.mark.parametrize(
    ("case", "node_name", "words"),
    [
        ("into_gemm", "add", "which node 'fc' (Gemm) reads"),
        ("to_output", "add", "model output 'y'"),
        ("all_masked", "add", "NaN"),
        ("plus_inf_into_gemm", "max", "which node 'fc' (Gemm) reads"),
        ("pow", "pow", "holds ±inf values"),
    ],
)
def test_infinite_entries_lipcheck_cannot_follow_are_unbounded_with_the_node_named(
    case: str, node_name: str, words: str
) -> None:
    w = rng_weights(8, 4)
    mask = np.zeros((1, 8), np.float32)
    mask[0, 3] = -INF
    if case == "into_gemm":  # -inf · w: the output is -inf or NaN
        nodes = [helper.make_node("Add", ["x", "mask"], ["h"], name="add"),
                 helper.make_node("Gemm", ["h", "w"], ["y"], name="fc")]
        m = model(nodes, {"mask": mask, "w": w}, [1, 8], [1, 4])
    elif case == "to_output":
        m = model([helper.make_node("Add", ["x", "mask"], ["y"], name="add")], {"mask": mask}, [1, 8], [1, 8])
    elif case == "all_masked":  # every entry of the softmax row is -inf: NaN
        nodes = [helper.make_node("Add", ["x", "mask"], ["h"], name="add"),
                 helper.make_node("Softmax", ["h"], ["y"], axis=-1, name="sm")]
        m = model(nodes, {"mask": np.full((1, 8), -INF, np.float32)}, [1, 8], [1, 8])
    elif case == "plus_inf_into_gemm":
        nodes = [helper.make_node("Max", ["x", "c"], ["h"], name="max"),
                 helper.make_node("Gemm", ["h", "w"], ["y"], name="fc")]
        m = model(nodes, {"c": -mask, "w": w}, [1, 8], [1, 4])
    else:
        m = model([helper.make_node("Pow", ["x", "p"], ["y"], name="pow")], {"p": np.array(INF, np.float32)},
                  [1, 8], [1, 8])
    r = lipcheck.analyze(m, lower_bound=False, method="product")
    assert r.upper_bound is None and not r.certified
    assert [u.node for u in r.unbounded] == [node_name]
    assert words in r.unbounded[0].reason


def test_inf_constant_unbounded_with_the_cache_and_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The refused node is the mask's producer, never the (cacheable) Gemm: a cached or parallel walk agrees."""
    from lipcheck.bound.cache import LayerCache
    from lipcheck.bound.walker import walk
    from lipcheck.report.model import Settings

    mask = np.zeros((1, 8), np.float32)
    mask[0, 3] = -INF
    nodes = [helper.make_node("Add", ["x", "mask"], ["h"], name="add"),
             helper.make_node("Gemm", ["h", "w"], ["y"], name="fc")]
    graph = load_onnx(model(nodes, {"mask": mask, "w": rng_weights(8, 4)}, [1, 8], [1, 4]))
    cache = LayerCache(tmp_path / "cache")
    for round_ in range(2):  # the second walk reads the Gemm from the cache
        result = walk(graph, Settings(), cache=cache)
        assert result.cached == round_
        assert [u.node for u in result.unbounded] == ["add"]
        assert result.output_bound(graph, result.upper) == np.inf


def test_inf_in_linear_weights_is_still_refused() -> None:
    w = rng_weights(8, 4)
    w[2, 1] = INF
    m = model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], {"w": w}, [1, 8], [1, 4])
    with pytest.raises(InvalidWeightsError, match=r"weight 'w' used by node 'fc' \(Gemm\) contains Inf values"):
        load_onnx(m)
    # a BatchNormalization parameter, and a constant read by both a mask op and a Conv: the weight wins
    scale = np.ones(2, np.float32)
    scale[1] = -INF
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y"], name="bn")
    zeros = np.zeros(2, np.float32)
    m = model([bn], {"s": scale, "b": zeros, "mean": zeros, "var": np.ones(2, np.float32)}, [1, 2, 3, 3], [1, 2, 3, 3])
    with pytest.raises(InvalidWeightsError, match=r"used by node 'bn' \(BatchNormalization\) contains Inf"):
        load_onnx(m)
    k = np.ones((1, 1, 1, 1), np.float32)
    k[0, 0, 0, 0] = INF
    nodes = [helper.make_node("Max", ["x", "k"], ["h"], name="max"),
             helper.make_node("Conv", ["h", "k"], ["y"], name="conv")]
    m = model(nodes, {"k": k}, [1, 1, 3, 3], [1, 1, 3, 3])
    with pytest.raises(InvalidWeightsError, match=r"used by node 'conv' \(Conv\) contains Inf"):
        load_onnx(m)


def test_nan_is_still_refused_everywhere() -> None:
    c = np.zeros((1, 8), np.float32)
    c[0, 0] = np.nan
    m = model([helper.make_node("Max", ["x", "c"], ["y"], name="max")], {"c": c}, [1, 8], [1, 8])
    with pytest.raises(InvalidWeightsError, match=r"used by node 'max' \(Max\) contains NaN"):
        load_onnx(m)


def test_local_and_ranges_compositions_keep_the_mask_producer_unbounded() -> None:
    """The local composition replaces global constants by local ones where it has a rule: the refused producer (an
    Add) has none, so the bound on a region and the ranges method stay unbounded too."""
    from lipcheck.bound.local import local_bound, ranges_global_bound
    from lipcheck.bound.ranges import propagate
    from lipcheck.bound.walker import walk
    from lipcheck.report.model import Settings

    mask = np.zeros((1, 8), np.float32)
    mask[0, 3] = -INF
    nodes = [helper.make_node("Add", ["x", "mask"], ["h"], name="add"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Clip", ["h", "lo", "hi"], ["c"]),  # -inf -> -1: finite
             helper.make_node("Sum", ["h", "r", "c"], ["s"], name="sum"),  # -inf + 0 - 1: still -inf
             helper.make_node("Gemm", ["s", "w"], ["y"], name="fc")]
    inits = {"mask": mask, "w": rng_weights(8, 4), "lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}
    graph = load_onnx(model(nodes, inits, [1, 8], [1, 4]))
    walked = walk(graph, Settings())
    assert [u.node for u in walked.unbounded] == ["sum"]
    assert "which node 'fc' (Gemm) reads" in walked.unbounded[0].reason
    value, composed, why = ranges_global_bound(graph, walked)
    assert value is None and composed is not None and not np.isfinite(composed.value)
    box = {"x": (np.full((1, 8), -1.0), np.full((1, 8), 1.0))}
    local = local_bound(graph, walked, propagate(graph, box).intervals)
    assert not np.isfinite(local.value)


@pytest.mark.parametrize("method", ["auto", "lipsdp", "blocks"])
def test_tighter_methods_do_not_certify_past_a_mask_the_rules_refuse(method: str) -> None:
    """lipsdp and blocks read a constant Add as a shift whatever its values: where the per-op rules refuse a mask
    (-inf into a Gemm), they must not run, and the model stays unbounded."""
    w = rng_weights(8, 4)
    mask = np.zeros((1, 8), np.float32)
    mask[0, 3] = -INF
    nodes = [helper.make_node("Add", ["x", "mask"], ["h"], name="add"),
             helper.make_node("Gemm", ["h", "w"], ["y"], name="fc")]
    m = model(nodes, {"mask": mask, "w": w}, [1, 8], [1, 4])
    r = lipcheck.analyze(m, lower_bound=False, method=method)
    assert r.upper_bound is None and not r.certified
    assert all(b.value is None for b in r.bounds), r.bounds
    assert [u.node for u in r.unbounded] == ["add"]
