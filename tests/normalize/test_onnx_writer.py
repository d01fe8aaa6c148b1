"""The ONNX writer of ``lipcheck normalize``: rescaled weights, everything else kept byte for byte.

Every written model is checked independently: re-analysed (each layer's certified σ is factor × what it was),
compared with the source tensor by tensor (only the rescaled tensors differ, by exactly their factor rounded
once into their dtype), passed through onnx.checker (path form, so external data is checked) and run with
onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.errors import LoadError, UnsupportedModelError, UsageError
from lipcheck.files import atomic_outputs
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.normalize import onnx_writer
from lipcheck.normalize.onnx_writer import WrittenScale, layer_weights, write_scaled_onnx
from lipcheck.report.model import LayerResult
from tests.helpers import make_model, rng_weights

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
# the certified σ of a layer is homogeneous in its weight for every method; these options only keep it quick
ANALYSIS = {"lower_bound": False, "exact_limit": 0, "power_iterations": 30}


# ---------------------------------------------------------------------------------------------------------------
# helpers


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: onnx.ModelProto, path: Path, **kwargs: object) -> Path:
    """Save with the output shapes filled in (tests.helpers leaves them out; onnx.checker wants them)."""
    onnx.save_model(onnx.shape_inference.infer_shapes(model), str(path), **kwargs)  # type: ignore[arg-type]
    return path


def pick_factors(path: Path) -> tuple[dict[str, float], list[LayerResult]]:
    """A different factor for every analysed weight (shared weights: one)."""
    layers = list(lipcheck.analyze(path, **ANALYSIS).layers)
    factors: dict[str, float] = {}
    for layer in layers:
        if layer.param is not None and layer.param not in factors:
            factors[layer.param] = 0.3 + 0.61 * len(factors) / max(1, len(layers))
    return factors, layers


def stored_values(model: onnx.ModelProto) -> dict[str, TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def strip(model: onnx.ModelProto, names: set[str]) -> bytes:
    """The model with the values of ``names`` blanked: what must be identical before and after."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in names:
            t.ClearField("raw_data")
            for repeated in ("float_data", "double_data", "int32_data"):
                del getattr(t, repeated)[:]
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            a = node.attribute[0]
            if a.name == "value":
                a.t.ClearField("raw_data")
                del a.t.float_data[:]
            a.ClearField("f")
            del a.floats[:]
    return m.SerializeToString(deterministic=True)


def expected_scaled(old: np.ndarray, c: float) -> np.ndarray:
    return (old.astype(np.float64) * c).astype(old.dtype)


def run_ort(path: Path, extra_outputs: Sequence[str] = ()) -> list[np.ndarray]:
    """Run the model on a random input; ``extra_outputs``: also return these tensors (e.g. folded weights)."""
    if extra_outputs:
        model = onnx.load(str(path))
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    else:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    rng = np.random.default_rng(0)
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[i.type]
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    outs = sess.run(None, feeds)
    assert all(np.all(np.isfinite(np.asarray(o, np.float64))) for o in outs)
    return [np.asarray(o) for o in outs[len(outs) - len(extra_outputs):]] if extra_outputs else outs


def check_written(src: Path, out: Path, factors: Mapping[str, float], rows: list[WrittenScale],
                  layers_before: list[LayerResult] | None = None, analyse: bool = True) -> None:
    """Everything the writer promises, checked independently of it."""
    assert [r.param for r in rows] == list(factors)
    for r in rows:
        assert r.factor == factors[r.param]
    before = onnx.load(str(src))
    after = onnx.load(str(out))
    rescaled = {r.tensor: r.tensor_factor for r in rows if r.tensor_factor != 1.0}
    assert strip(before, set(rescaled)) == strip(after, set(rescaled))
    old, new = stored_values(before), stored_values(after)
    for name, c in rescaled.items():
        if name in old:
            a, b = numpy_helper.to_array(old[name]), numpy_helper.to_array(new[name])
            assert b.dtype == a.dtype and b.shape == a.shape
            np.testing.assert_array_equal(b, expected_scaled(a, c))
    onnx.checker.check_model(str(out))
    run_ort(out)
    # the weights every layer uses, as onnxruntime computes them: factor × before (1/factor for a divisor)
    ratios = {u.tensor: (1 / f if u.divisor else f) for p, f in factors.items() for u in layer_weights(before)[p]}
    for t, w_before, w_after in zip(ratios, run_ort(src, list(ratios)), run_ort(out, list(ratios))):
        np.testing.assert_allclose(w_after, ratios[t] * w_before.astype(np.float64), rtol=2e-6, atol=0, err_msg=t)
    if analyse:
        layers_before = layers_before or list(lipcheck.analyze(src, **ANALYSIS).layers)
        layers_after = list(lipcheck.analyze(out, **ANALYSIS).layers)
        assert [la.name for la in layers_after] == [lb.name for lb in layers_before]
        for lb, la in zip(layers_before, layers_after):
            f = factors.get(lb.param, 1.0) if lb.param else 1.0
            assert la.sigma_upper == pytest.approx(f * lb.sigma_upper, rel=1e-6), lb.name


# ---------------------------------------------------------------------------------------------------------------
# sample models: initializers, Constant nodes, BatchNorm folded into Conv, spectral norm, weight norm


SAMPLE_HOW = {
    "mlp": {"initializer"},
    "cnn_bn": {"initializer"},
    "constant_weights": {"Constant node"},
    "sn_discriminator": {"spectral-norm vector u (×1/f: W/σ̂ scales by f)"},
    "weight_norm": {"weight-norm magnitude g (×f: g·v/‖v‖ scales by f)"},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "sn_discriminator" else n
                                  for n in sorted(SAMPLE_HOW)])  # sn_discriminator: 6 s, in the slow set
def test_sample_models(name: str, tmp_path: Path) -> None:
    src = SAMPLES / f"{name}.onnx"
    digest = sha(src)
    factors, layers = pick_factors(src)
    out = tmp_path / "out.onnx"
    rows = write_scaled_onnx(src, out, factors)
    assert {r.how for r in rows} == SAMPLE_HOW[name]
    check_written(src, out, factors, rows, layers)
    assert sha(src) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_spectral_norm_rescales_u_by_the_inverse(tmp_path: Path) -> None:
    src = SAMPLES / "sn_discriminator.onnx"
    rows = write_scaled_onnx(src, tmp_path / "o.onnx", {"0.parametrizations.weight.original": 0.5,
                                                       "11.parametrizations.weight.original": 0.25})
    assert rows[0] == WrittenScale("0.parametrizations.weight.original", "0.parametrizations.weight.0._u", 0.5, 2.0,
                                   "spectral-norm vector u (×1/f: W/σ̂ scales by f)")
    # the Gemm's v is as large as its W (1×512): the param is still W (higher rank), and its u is rescaled by 1/f
    assert rows[1].tensor == "11.parametrizations.weight.0._u" and rows[1].tensor_factor == 4.0


def test_batchnorm_folded_into_conv_scales_the_fused_layer(tmp_path: Path) -> None:
    src = SAMPLES / "cnn_bn.onnx"
    layers = list(lipcheck.analyze(src, **ANALYSIS).layers)
    conv = next(la for la in layers if la.fused_with)
    assert conv.param == "conv1.weight" and conv.fused_with == ("/bn1/BatchNormalization",)
    rows = write_scaled_onnx(src, tmp_path / "o.onnx", {"conv1.weight": 0.25})
    assert rows == [WrittenScale("conv1.weight", "conv1.weight", 0.25, 0.25, "initializer")]
    check_written(src, tmp_path / "o.onnx", {"conv1.weight": 0.25}, rows, layers)


# ---------------------------------------------------------------------------------------------------------------
# hand-made graphs


def direct_ops_model() -> onnx.ModelProto:
    """Every weighted op with an initializer weight; the BN follows a Relu, so it stays a layer of its own."""
    nodes = [
        helper.make_node("Conv", ["x", "w_conv", "b_conv"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("ConvTranspose", ["bn", "w_tr"], ["t"], strides=[2, 2]),
        helper.make_node("Flatten", ["t"], ["fl"]),
        helper.make_node("Gemm", ["fl", "w_gemm", "b_gemm"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w_mm"], ["m"]),
        helper.make_node("Mul", ["scale", "m"], ["s"]),
        helper.make_node("Div", ["s", "divisor"], ["y"]),
    ]
    rng = np.random.default_rng(1)
    inits = {
        "w_conv": rng_weights(3, 2, 3, 3, seed=1), "b_conv": rng_weights(3, seed=2),
        "gamma": rng.uniform(0.5, 2, 3).astype(np.float32), "beta": rng_weights(3, seed=3),
        "mean": rng_weights(3, seed=4), "var": rng.uniform(0.5, 2, 3).astype(np.float32),
        "w_tr": rng_weights(3, 2, 2, 2, seed=5), "w_gemm": rng_weights(5, 2 * 8 * 8, seed=6),
        "b_gemm": rng_weights(5, seed=7), "w_mm": rng_weights(5, 4, seed=8),
        "scale": rng.uniform(0.5, 2, 4).astype(np.float32), "divisor": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    model = make_model(nodes, [("x", (1, 2, 4, 4))], ["y"], inits)
    model.producer_name, model.producer_version, model.doc_string = "hand-made", "0.1", "every weighted op"
    model.graph.node[0].doc_string = "the first conv"
    onnx.helper.set_model_props(model, {"author": "tests", "license": "MIT"})
    return model


def test_every_weighted_op_with_initializers(tmp_path: Path) -> None:
    src = save(direct_ops_model(), tmp_path / "src.onnx")
    factors, layers = pick_factors(src)
    assert set(factors) == {"w_conv", "gamma", "w_tr", "w_gemm", "w_mm", "scale", "divisor"}
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    by = {r.param: r for r in rows}
    assert by["divisor"].tensor_factor == pytest.approx(1 / factors["divisor"])
    assert by["divisor"].how.startswith("initializer, the divisor of Div")
    assert all(r.how == "initializer" and r.tensor_factor == r.factor for r in rows if r.param != "divisor")
    check_written(src, tmp_path / "out.onnx", factors, rows, layers)


def test_factor_one_keeps_the_tensor(tmp_path: Path) -> None:
    src = save(direct_ops_model(), tmp_path / "src.onnx")
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", {"w_mm": 1.0, "w_gemm": 0.5})
    assert rows[0] == WrittenScale("w_mm", "w_mm", 1.0, 1.0, "unchanged (factor 1)")
    check_written(src, tmp_path / "out.onnx", {"w_mm": 1.0, "w_gemm": 0.5}, rows)


def test_constant_node_forms(tmp_path: Path) -> None:
    w = rng_weights(3, 4)
    value_in_float_data = helper.make_tensor("wv", TensorProto.FLOAT, [3, 4], w.ravel().tolist())
    nodes = [
        helper.make_node("Constant", [], ["w"], value=value_in_float_data),
        helper.make_node("Constant", [], ["k"], value_float=3.0),
        helper.make_node("Constant", [], ["ks"], value_floats=[0.5, -2.0, 1.5, 4.0]),
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Mul", ["m", "k"], ["m2"]),
        helper.make_node("Mul", ["m2", "ks"], ["y"]),
    ]
    src = save(make_model(nodes, [("x", (1, 3))], ["y"]), tmp_path / "src.onnx")
    factors = {"w": 0.5, "k": 0.3, "ks": 0.7}
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    assert [r.how for r in rows] == ["Constant node", "Constant node (value_float)", "Constant node (value_floats)"]
    check_written(src, tmp_path / "out.onnx", factors, rows)
    out = onnx.load(str(tmp_path / "out.onnx"))
    t = out.graph.node[0].attribute[0].t
    assert not t.HasField("raw_data")  # kept in float_data, as the source had it
    np.testing.assert_array_equal(numpy_helper.to_array(t), expected_scaled(w, 0.5))
    assert out.graph.node[1].attribute[0].f == np.float32(3.0 * 0.3)
    np.testing.assert_array_equal(np.array(out.graph.node[2].attribute[0].floats, np.float32),
                                  expected_scaled(np.array([0.5, -2.0, 1.5, 4.0], np.float32), 0.7))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
def test_dtypes_are_kept(dtype: type, tmp_path: Path) -> None:
    w: np.ndarray = rng_weights(4, 3).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=elem), helper.make_node("MatMul", ["xc", "w"], ["m"]),
             helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [("x", (1, 4))], ["y"], {"w": w})
    src = save(model, tmp_path / "src.onnx")
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", {"w": 0.3})
    assert rows == [WrittenScale("w", "w", 0.3, 0.3, "initializer")]
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert out.graph.initializer[0].data_type == elem
    np.testing.assert_array_equal(numpy_helper.to_array(out.graph.initializer[0]), expected_scaled(w, 0.3))
    onnx.checker.check_model(str(tmp_path / "out.onnx"))
    if dtype is not ml_dtypes.bfloat16:  # onnxruntime's CPU MatMul has no bfloat16 kernel
        run_ort(tmp_path / "out.onnx")


@pytest.mark.parametrize("opset", [13, 19])
def test_dequantize_linear_is_rescaled_through_its_scale(opset: int, tmp_path: Path) -> None:
    q = np.random.default_rng(0).integers(-100, 100, size=(6, 4)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zp"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits: dict[str, np.ndarray] = {"q": q, "q_scale": np.array(0.02, np.float32), "q_zp": np.array(3, np.int8)}
    src = save(make_model(nodes, [("x", (1, 6))], ["y"], inits, opset=opset), tmp_path / "src.onnx")
    factors, layers = pick_factors(src)
    assert list(factors) == ["q"]  # the int8 tensor is the largest the subgraph reads
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    f = factors["q"]
    assert rows == [WrittenScale("q", "q_scale", f, f, "subgraph input scale of DequantizeLinear")]
    check_written(src, tmp_path / "out.onnx", factors, rows, layers)


def test_shared_weight_is_rescaled_once(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    src = save(make_model(nodes, [("x", (1, 4))], ["y"], {"w": rng_weights(4, 4)}), tmp_path / "src.onnx")
    factors, layers = pick_factors(src)
    assert list(factors) == ["w"] and [la.param for la in layers] == ["w", "w"]
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    check_written(src, tmp_path / "out.onnx", factors, rows, layers)


def test_a_weight_read_directly_and_transposed_is_rescaled_once(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Transpose", ["w"], ["wt"]),
             helper.make_node("MatMul", ["a", "wt"], ["y"])]
    src = save(make_model(nodes, [("x", (1, 4))], ["y"], {"w": rng_weights(4, 3)}), tmp_path / "src.onnx")
    factors, layers = pick_factors(src)
    assert list(factors) == ["w"] and [la.param for la in layers] == ["w", "w"]
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    assert rows[0].tensor == "w" and rows[0].tensor_factor == factors["w"]
    check_written(src, tmp_path / "out.onnx", factors, rows, layers)


def shared_scale_model() -> onnx.ModelProto:
    nodes = [helper.make_node("DequantizeLinear", ["qa", "s", "zp"], ["wa"]),
             helper.make_node("DequantizeLinear", ["qb", "s", "zp"], ["wb"]),
             helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["a", "wb"], ["y"])]
    rng = np.random.default_rng(0)
    inits: dict[str, np.ndarray] = {"qa": rng.integers(-100, 100, (4, 5)).astype(np.int8),
             "qb": rng.integers(-100, 100, (5, 3)).astype(np.int8),
             "s": np.array(0.05, np.float32), "zp": np.array(0, np.int8)}
    return make_model(nodes, [("x", (1, 4))], ["y"], inits, opset=19)


def test_a_scale_shared_by_weights_with_one_factor_is_rescaled_once(tmp_path: Path) -> None:
    src = save(shared_scale_model(), tmp_path / "src.onnx")
    factors = {"qa": 0.5, "qb": 0.5}
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    assert [(r.tensor, r.tensor_factor) for r in rows] == [("s", 0.5), ("s", 0.5)]
    assert "one rescaling for qa, qb" in rows[0].how
    check_written(src, tmp_path / "out.onnx", factors, rows)


def test_a_scale_shared_by_weights_with_different_factors_is_refused(tmp_path: Path) -> None:
    src = save(shared_scale_model(), tmp_path / "src.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        write_scaled_onnx(src, tmp_path / "out.onnx", {"qa": 0.5, "qb": 0.25})
    msg = str(err.value)
    assert "cannot rescale the weight 'qa'" in msg
    assert "'qa' (initializer, int8: not a float tensor to rescale)" in msg
    assert "'s' (it would also change 'wb', the weight of MatMul_1 (MatMul) (param 'qb', factor 0.25, not 0.5))" in msg
    assert not (tmp_path / "out.onnx").exists()


def test_a_weight_invariant_in_every_stored_tensor_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("ReduceL2", ["w_orig"], ["n"], keepdims=0),
             helper.make_node("Div", ["w_orig", "n"], ["w_sn"]),
             helper.make_node("Gemm", ["x", "w_sn"], ["y"], transB=1)]
    src = save(make_model(nodes, [("x", (1, 6))], ["y"], {"w_orig": rng_weights(4, 6)}), tmp_path / "src.onnx")
    with pytest.raises(UnsupportedModelError, match=r"tried 'w_orig' \(halving it scales the weight by 1,"):
        write_scaled_onnx(src, tmp_path / "out.onnx", {"w_orig": 0.5})


def test_a_weight_that_is_also_read_otherwise_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "w"], ["y"])]
    src = save(make_model(nodes, [("x", (4, 4))], ["y"], {"w": rng_weights(4, 4)}), tmp_path / "src.onnx")
    with pytest.raises(UnsupportedModelError, match="'w', the weight of MatMul_0 .MatMul. is read in ways no single"):
        write_scaled_onnx(src, tmp_path / "out.onnx", {"w": 0.5})


def test_unknown_params_and_bad_factors_are_refused(tmp_path: Path) -> None:
    src = save(direct_ops_model(), tmp_path / "src.onnx")
    with pytest.raises(UsageError, match=r"has no layer weight named 'nope'; its layer weights are: divisor, gamma"):
        write_scaled_onnx(src, tmp_path / "out.onnx", {"nope": 0.5})
    with pytest.raises(UsageError, match="'b_conv' is stored in .* but no weighted layer .* reads it as its weight"):
        write_scaled_onnx(src, tmp_path / "out.onnx", {"b_conv": 0.5})
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="must be a positive finite number"):
            write_scaled_onnx(src, tmp_path / "out.onnx", {"w_mm": bad})
    with pytest.raises(LoadError, match="no such file"):
        write_scaled_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]


def test_layer_weights_agree_with_the_loader(tmp_path: Path) -> None:
    """The writer's param of every weight input is the loader's, including its Constant-size convention."""
    quirk = make_model(  # a Constant read only inside a folded subgraph counts as 1 element in the loader
        [helper.make_node("Constant", [], ["big"], value=numpy_helper.from_array(rng_weights(4, 4))),
         helper.make_node("Mul", ["big", "small"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", (1, 4))], ["y"], {"small": rng_weights(4, 1)})
    models = {name: onnx.load(str(SAMPLES / f"{name}.onnx")) for name in
              ("sn_discriminator", "weight_norm", "constant_weights", "cnn_bn", "attention", "resnet_block")}
    models |= {"direct": direct_ops_model(), "shared_scale": shared_scale_model(), "quirk": quirk}
    for name, model in models.items():
        graph = load_onnx(model)
        uses = layer_weights(model)
        found = {u.tensor: param for param, group in uses.items() for u in group}
        assert found, name
        for tensor, param in found.items():
            assert graph.param_names.get(tensor, tensor) == param, (name, tensor)
    assert found == {"w": "small"}


# ---------------------------------------------------------------------------------------------------------------
# external data


def external_tensors(path: Path) -> dict[str, dict[str, str]]:
    m = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in m.graph.initializer
            if t.data_location == TensorProto.EXTERNAL}


@pytest.mark.parametrize("threshold", [0, 1024])
def test_external_data_stays_external_under_the_output_name(threshold: int, tmp_path: Path) -> None:
    src = save(direct_ops_model(), tmp_path / "src.onnx", save_as_external_data=True,
               all_tensors_to_one_file=True, location="src.onnx.data", size_threshold=threshold)
    data = tmp_path / "src.onnx.data"
    digests = (sha(src), sha(data))
    ext_before = external_tensors(src)
    assert ext_before and (threshold == 0) == (len(ext_before) == len(onnx.load(str(src)).graph.initializer))
    factors, layers = pick_factors(src)
    out = tmp_path / "out.onnx"  # same folder as the source
    rows = write_scaled_onnx(src, out, factors)
    ext_after = external_tensors(out)
    assert set(ext_after) == set(ext_before)
    assert {e["location"] for e in ext_after.values()} == {"out.onnx.data"}
    assert all(ext_after[n]["offset"] == ext_before[n]["offset"] for n in ext_before)
    assert (sha(src), sha(data)) == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data", "src.onnx", "src.onnx.data"]
    check_written(src, out, factors, rows, layers)


def test_external_constant_node_tensors(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    save(onnx.load(str(SAMPLES / "constant_weights.onnx")), src, save_as_external_data=True, location="src.data",
         size_threshold=0, convert_attribute=True)
    assert onnx.load(str(src), load_external_data=False).graph.node[0].attribute[0].t.data_location == \
        TensorProto.EXTERNAL
    factors, layers = pick_factors(src)
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", factors)
    out = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    locations = {e.value for n in out.graph.node if n.op_type == "Constant" for e in n.attribute[0].t.external_data
                 if e.key == "location"}
    assert locations == {"out.onnx.data"}
    check_written(src, tmp_path / "out.onnx", factors, rows, layers)


def then_branch(model: onnx.ModelProto) -> onnx.GraphProto:
    return next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")


def test_external_tensors_inside_subgraphs_point_to_the_new_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # onnxruntime 1.32 resolves a subgraph's external data against the working folder
    branch = helper.make_graph([helper.make_node("Add", ["m", "bias"], ["z"])], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])],
                               [numpy_helper.from_array(rng_weights(1, 3, seed=3), "bias")])
    other = helper.make_graph([helper.make_node("Identity", ["m"], ["z2"])], "else", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, [1, 3])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    model = make_model(nodes, [("x", (1, 4))], ["y"], {"w": rng_weights(4, 3), "cond": np.array(True)})
    src = save(model, tmp_path / "src.onnx", save_as_external_data=True, location="src.data", size_threshold=0)
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", {"w": 0.5})
    out = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    nested = then_branch(out).initializer[0]
    assert nested.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in nested.external_data}["location"] == "out.onnx.data"
    check_written(src, tmp_path / "out.onnx", {"w": 0.5}, rows, analyse=False)
    x = np.ones((1, 4), np.float32)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for p in (src, tmp_path / "out.onnx")]
    bias = numpy_helper.to_array(then_branch(onnx.load(str(src))).initializer[0])
    np.testing.assert_allclose(runs[1] - bias, 0.5 * (runs[0] - bias), rtol=1e-6)


def test_several_source_data_files(tmp_path: Path) -> None:
    model = direct_ops_model()
    onnx.external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0)
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    save(model, src)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "n.onnx"
    factors = {"w_gemm": 0.5, "w_conv": 0.25}
    rows = write_scaled_onnx(src, out, factors)
    files = sorted(p.name for p in out.parent.iterdir())
    k = len(model.graph.initializer)
    assert files == sorted(["n.onnx"] + [f"n.onnx.data.{i}" for i in range(1, k + 1)])
    assert len({e["location"] for e in external_tensors(out).values()}) == k
    check_written(src, out, factors, rows)


def test_shared_external_bytes_are_not_patched_in_place(tmp_path: Path) -> None:
    """Two initializers pointing at the same bytes: the rescaled one moves to the end of the data file."""
    w = rng_weights(4, 4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["y"])]
    model = make_model(nodes, [("x", (1, 4))], ["y"], {"w1": w, "w2": w})
    (tmp_path / "src.data").write_bytes(w.tobytes())
    for t in model.graph.initializer:
        onnx.external_data_helper.set_external_data(t, "src.data", offset=0, length=w.nbytes)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
    src = save(model, tmp_path / "src.onnx")
    rows = write_scaled_onnx(src, tmp_path / "out.onnx", {"w1": 0.5})
    ext = external_tensors(tmp_path / "out.onnx")
    assert ext["w2"]["offset"] == "0" and int(ext["w1"]["offset"]) >= w.nbytes
    check_written(src, tmp_path / "out.onnx", {"w1": 0.5}, rows)


def test_outputs_that_would_overwrite_the_source_are_refused(tmp_path: Path) -> None:
    src = save(direct_ops_model(), tmp_path / "m.onnx", save_as_external_data=True, location="n.onnx.data",
               size_threshold=0)
    digests = (sha(src), sha(tmp_path / "n.onnx.data"))
    with pytest.raises(UsageError, match="would overwrite the input model"):
        write_scaled_onnx(src, src, {"w_mm": 0.5})
    with pytest.raises(UsageError, match="would overwrite the input external data file"):
        write_scaled_onnx(src, tmp_path / "n.onnx", {"w_mm": 0.5})  # its data file would be n.onnx.data
    with pytest.raises(UsageError, match="does not exist"):
        write_scaled_onnx(src, tmp_path / "nowhere" / "o.onnx", {"w_mm": 0.5})
    assert (sha(src), sha(tmp_path / "n.onnx.data")) == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "n.onnx.data"]


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    src = save(direct_ops_model(), tmp_path / "sub" / "m.onnx", save_as_external_data=True, location="m.data",
               size_threshold=0)
    model = onnx.load(str(src), load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../elsewhere.data"
    save(model, src)
    with pytest.raises(LoadError, match="outside the model's folder"):
        write_scaled_onnx(src, tmp_path / "o.onnx", {"w_mm": 0.5})


# ---------------------------------------------------------------------------------------------------------------
# all or nothing


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_nothing(exc: BaseException, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(direct_ops_model(), tmp_path / "src.onnx", save_as_external_data=True, location="src.data",
               size_threshold=0)
    (tmp_path / "out.onnx").write_bytes(b"previous output")
    listing = sorted(p.name for p in tmp_path.iterdir())

    def fail(model: onnx.ModelProto, path: Path) -> None:  # the data file copy is written by now
        assert any(p.name.startswith(".out.onnx.data.lipcheck-tmp-") and p.stat().st_size > 0
                   for p in tmp_path.iterdir())
        raise exc

    monkeypatch.setattr(onnx_writer, "_write_model", fail)
    with pytest.raises(type(exc)):
        write_scaled_onnx(src, tmp_path / "out.onnx", {"w_mm": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert (tmp_path / "out.onnx").read_bytes() == b"previous output"


def test_atomic_outputs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    b.write_bytes(b"old")
    with atomic_outputs([a, b]) as temps:
        assert [t.parent for t in temps] == [tmp_path, tmp_path]
        assert [t.name.split(".lipcheck-tmp-")[0] for t in temps] == [".a.bin", ".b.bin"]
        for t, text in zip(temps, (b"A", b"B")):
            t.write_bytes(text)
        assert b.read_bytes() == b"old"
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
    mode = os.stat(a).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    with pytest.raises(ValueError, match="listed twice"):
        with atomic_outputs([a, tmp_path / "." / "a.bin"]):
            pass
    with pytest.raises(FileNotFoundError):
        with atomic_outputs([tmp_path / "missing" / "c.bin"]):
            pass
    with pytest.raises(ZeroDivisionError):
        with atomic_outputs([a, tmp_path / "c.bin"]) as temps:
            temps[0].write_bytes(b"new")
            1 / 0  # noqa: B018
    assert a.read_bytes() == b"A" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
