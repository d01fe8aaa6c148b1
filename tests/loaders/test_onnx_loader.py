"""ONNX loading: constants from initializers, Constant nodes and folded subgraphs; shapes; bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.errors import InputShapeError, InvalidWeightsError, LoadError, UnsupportedModelError
from lipcheck.loaders.onnx_loader import load_onnx
from tests.helpers import make_model, rng_weights


def gemm_model(w: np.ndarray, shape=(1, 6)) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    return make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [("x", shape)], ["y"], {"w": w})


def sigma(w: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0])


def test_weights_from_constant_nodes() -> None:
    w = rng_weights(4, 6)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Gemm", ["x", "w"], ["y"], transB=1),
    ]
    m = make_model(nodes, [("x", (1, 6))], ["y"])
    r = lipcheck.analyze(m, lower_bound=False)
    assert r.layers[0].param == "w"
    assert r.layers[0].sigma_exact == pytest.approx(sigma(w), rel=1e-6)


def test_spectral_norm_subgraph_is_folded_and_named_after_the_stored_weight() -> None:
    w = rng_weights(4, 6)
    nodes = [
        helper.make_node("ReduceL2", ["w_orig"], ["n"], keepdims=0),  # any constant chain: W / ||W||_F
        helper.make_node("Div", ["w_orig", "n"], ["w_sn"]),
        helper.make_node("Gemm", ["x", "w_sn"], ["y"], transB=1),
    ]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"w_orig": w})
    g = load_onnx(m)
    assert [n.op_type for n in g.nodes] == ["Gemm"]
    assert g.param_names["w_sn"] == "w_orig"
    r = lipcheck.analyze(m, lower_bound=False)
    expected = sigma(w) / np.linalg.norm(w.astype(np.float64))
    assert r.layers[0].sigma_exact == pytest.approx(expected, rel=1e-6)
    assert r.layers[0].param == "w_orig"


def test_dequantize_linear_weights() -> None:
    q = np.array([[10, -20, 30], [5, 0, -7]], np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    m = make_model(nodes, [("x", (1, 2))], ["y"],
                   {"q": q, "scale": np.array(0.1, np.float32), "zp": np.array(0, np.int8)})
    r = lipcheck.analyze(m, lower_bound=False)
    assert r.layers[0].sigma_exact == pytest.approx(sigma(q * 0.1), rel=1e-6)


def test_shape_subgraph_is_folded_with_static_shapes() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    m = make_model(nodes, [("x", (1, 2, 3))], ["y"], {
        "zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
        "w": rng_weights(4, 6)})
    g = load_onnx(m)
    assert [n.op_type for n in g.nodes] == ["Reshape", "Gemm"]
    assert g.shapes["f"] == (1, 6)


def test_shape_chains_that_onnx_data_propagation_misses_still_fold() -> None:
    """PP-OCRv4's pattern (opset 12): Slice(Shape(h)) with bounds from Constant nodes, Concat [-1], Reshape. onnx's data
    propagation leaves the Reshape's output shape unknown, so a Shape of it could not fold: the loader stores the
    folded target as a constant and infers again, and the second Shape folds too."""
    def const(name: str, value: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.int64)))

    def flatten_from(src: str, keep: int, out: str) -> list[onnx.NodeProto]:
        return [
            const(f"{out}_s", [0]), const(f"{out}_e", [keep]), const(f"{out}_a", [0]), const(f"{out}_m", [-1]),
            helper.make_node("Shape", [src], [f"{out}_shape"]),
            helper.make_node("Slice", [f"{out}_shape", f"{out}_s", f"{out}_e", f"{out}_a"], [f"{out}_head"]),
            helper.make_node("Concat", [f"{out}_head", f"{out}_m"], [f"{out}_target"], axis=0),
            helper.make_node("Reshape", [src, f"{out}_target"], [out]),
        ]

    nodes = [helper.make_node("Relu", ["x"], ["h"]), *flatten_from("h", 2, "r"), *flatten_from("r", 1, "f"),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    w = rng_weights(4, 60)
    m = make_model(nodes, [("x", (1, 3, 4, 5))], ["y"], {"w": w}, opset=12)  # opset 12, as PP-OCRv4
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    known = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.shape.dim
             and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)}
    assert "r" not in known  # what onnx alone leaves open (if a later onnx infers it, this test still checks the rest)
    g = load_onnx(m)
    assert [n.op_type for n in g.nodes] == ["Relu", "Reshape", "Reshape", "Gemm"]
    assert g.shapes["r"] == (1, 3, 20) and g.shapes["f"] == (1, 60)
    r = lipcheck.analyze(m, lower_bound=False)
    assert r.certified and r.upper_bound == pytest.approx(sigma(w), rel=1e-6)


def test_dynamic_dims_need_input_shape() -> None:
    m = gemm_model(rng_weights(4, 6), shape=("N", 6))
    with pytest.raises(InputShapeError, match=r"input 'x' has dynamic dimensions \[N, 6\].*--input-shape 1,6"):
        load_onnx(m)
    g = load_onnx(m, input_shape=(3, 6))
    assert g.shapes["x"] == (3, 6) and g.shapes["y"] == (3, 4)
    with pytest.raises(InputShapeError, match="fixed to 6"):
        load_onnx(m, input_shape=(3, 7))
    with pytest.raises(InputShapeError, match="inputs are: x"):
        load_onnx(m, input_shape={"z": (1, 6)})


def test_several_float_inputs_and_named_shapes() -> None:
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Gemm", ["c", "w"], ["y"], transB=1),
    ]
    m = make_model(nodes, [("a", ("N", 2)), ("b", ("N", 4))], ["y"], {"w": rng_weights(3, 6)})
    with pytest.raises(InputShapeError, match="NAME="):
        load_onnx(m, input_shape=(1, 2))
    r = lipcheck.analyze(m, input_shape={"a": (1, 2), "b": (1, 4)}, lower_bound=False)
    assert any("concatenation" in n for n in r.notes)
    assert r.input_shape == [[1, 2], [1, 4]]


def test_integer_only_inputs_are_refused_clearly() -> None:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["y"], axis=0)]
    m = make_model(nodes, [ids], ["y"], {"emb": rng_weights(10, 4)})
    with pytest.raises(UnsupportedModelError, match="integer inputs such as token ids have no Lipschitz constant"):
        lipcheck.analyze(m, lower_bound=False)


def test_nan_weights_name_the_node() -> None:
    w = rng_weights(4, 6)
    w[1, 2] = np.nan
    with pytest.raises(InvalidWeightsError, match=r"weight 'w' used by node .* \(Gemm\) contains NaN"):
        load_onnx(gemm_model(w))


def test_bad_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LoadError, match="no such file"):
        lipcheck.load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    with pytest.raises(LoadError, match="not an ONNX model"):
        lipcheck.load(junk)
    good = tmp_path / "good.onnx"
    onnx.save(gemm_model(rng_weights(4, 6)), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError):
        lipcheck.load(trunc)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        lipcheck.load(empty)
    noweights = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", (1, 3))], ["y"])
    assert [n.op_type for n in load_onnx(noweights).nodes] == ["Relu"]  # analysed like any other model
    nonodes = make_model([], [("x", (1, 3))], ["x"], {"w": np.ones(1, np.float32)})
    with pytest.raises(LoadError, match="empty"):
        load_onnx(nonodes)


def test_external_data_loads_and_outside_locations_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = rng_weights(64, 64)
    m = gemm_model(w, shape=(1, 64))
    path = tmp_path / "ext.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    r = lipcheck.analyze(path, lower_bound=False)
    assert r.layers[0].sigma_exact == pytest.approx(sigma(w), rel=1e-6)
    # rewrite the location to point outside the model's folder
    bad = onnx.load(path, load_external_data=False)
    for t in bad.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = "../outside.data"
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "outside.data").write_bytes((tmp_path / "ext.data").read_bytes())
    onnx.save(bad, sub / "bad.onnx")
    with pytest.raises(LoadError, match="outside the model's folder"):
        lipcheck.load(sub / "bad.onnx")
