"""The committed sample models: reproducible from sample_models/generate.py, valid, runnable, small."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
GENERATOR = SAMPLES / "generate.py"
MAX_BYTES = 1_000_000


def _load_generator():
    spec = importlib.util.spec_from_file_location("sample_models_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAMES: list[str] = list(_load_generator().MODELS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _committed(name: str) -> Path:
    return SAMPLES / f"{name}.onnx"


def _run_generator(out: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The generator run twice, in separate processes, into two fresh directories."""
    first = tmp_path_factory.mktemp("gen_a")
    second = tmp_path_factory.mktemp("gen_b")
    _run_generator(first)
    _run_generator(second)
    return first, second


def _assert_same_up_to_ulps(fresh: onnx.ModelProto, committed: onnx.ModelProto) -> None:
    from onnx import numpy_helper

    a = {t.name: numpy_helper.to_array(t) for t in fresh.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in committed.graph.initializer}
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        if a[key].dtype.kind == "f":
            spacing = np.spacing(np.abs(b[key]).astype(a[key].dtype))
            assert np.all(np.abs(a[key] - b[key]) <= 4 * spacing), key
        else:
            assert np.array_equal(a[key], b[key]), key
    del fresh.graph.initializer[:]
    del committed.graph.initializer[:]
    assert fresh.SerializeToString() == committed.SerializeToString(), "graphs differ beyond weight rounding"


def test_every_model_is_committed() -> None:
    assert len(NAMES) == 10
    on_disk = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
    assert on_disk == sorted(NAMES), "sample_models/*.onnx out of sync with generate.MODELS"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_generator_is_deterministic(name: str, regenerated: tuple[Path, Path]) -> None:
    first, second = regenerated
    assert _sha256(first / f"{name}.onnx") == _sha256(second / f"{name}.onnx")


@pytest.mark.slow  # regenerating the ten models twice: 10 s
@pytest.mark.parametrize("name", NAMES)
def test_committed_file_matches_generator(name: str, regenerated: tuple[Path, Path]) -> None:
    committed = onnx.load(str(_committed(name)), load_external_data=False)
    if committed.producer_name == "pytorch":
        import torch

        running = torch.__version__.split("+")[0]
        if committed.producer_version != running:
            pytest.skip(
                f"{name}.onnx was exported by torch {committed.producer_version}, running {running}: "
                "exporter output is version-specific"
            )
    if committed.producer_name == "pytorch" and _sha256(regenerated[0] / f"{name}.onnx") != _sha256(_committed(name)):
        # the exporter folds BatchNorm into the conv weights in float32 with the CPU's own kernels: machines with
        # other vector units round a few of those products differently (1 ulp). Same graph, weights within 4 ulp.
        _assert_same_up_to_ulps(onnx.load(str(regenerated[0] / f"{name}.onnx")), committed)
        return
    assert _sha256(regenerated[0] / f"{name}.onnx") == _sha256(_committed(name)), (
        f"{name}.onnx differs from what sample_models/generate.py writes; "
        "rerun `python sample_models/generate.py` and commit the result"
    )


@pytest.mark.parametrize("name", NAMES)
def test_size_below_1mb(name: str) -> None:
    assert _committed(name).stat().st_size < MAX_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_passes_full_checker(name: str) -> None:
    model = onnx.load(str(_committed(name)))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _feeds(session, rng: np.random.Generator, batch: int = 1) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in inp.shape]
        feeds[inp.name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_onnxruntime(name: str) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(_committed(name)), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batches = (1, 3) if name == "dynamic_batch" else (1,)
    for batch in batches:
        outputs = session.run(None, _feeds(session, rng, batch))
        assert outputs
        for out, meta in zip(outputs, session.get_outputs(), strict=True):
            assert np.all(np.isfinite(out))
            expected = [batch if not isinstance(d, int) else d for d in meta.shape]
            assert list(out.shape) == expected


# -- what each model is meant to exercise -------------------------------------------------------------


def _model(name: str) -> onnx.ModelProto:
    return onnx.load(str(_committed(name)))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _static_shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_mlp_structure() -> None:
    assert _ops(_model("mlp")) == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]


def test_cnn_bn_keeps_batchnorm_with_nontrivial_stats() -> None:
    model = _model("cnn_bn")
    ops = _ops(model)
    assert ops.count("BatchNormalization") == 2 and ops.count("Conv") == 2
    assert {"MaxPool", "GlobalAveragePool", "Flatten", "Gemm"} <= set(ops)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            gamma, _, mean, var = (inits[n] for n in node.input[1:5])
            assert not np.allclose(var, 1.0) and not np.allclose(mean, 0.0) and not np.allclose(gamma, 1.0)


def test_resnet_block_has_residual_adds_and_strided_1x1_shortcut() -> None:
    model = _model("resnet_block")
    assert _ops(model).count("Add") == 2
    shortcut = [
        n for n in model.graph.node
        if n.op_type == "Conv" and _attrs(n)["kernel_shape"] == [1, 1] and _attrs(n)["strides"] == [2, 2]
    ]
    assert len(shortcut) == 1


def _constant_ancestry(model: onnx.ModelProto, tensor: str) -> bool:
    """True if `tensor` is computed only from initializers (through at least one node)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}

    def const(t: str) -> bool:
        if t in inits:
            return True
        if t not in producers:
            return False
        return all(const(i) for i in producers[t].input if i)

    return tensor in producers and const(tensor)


def test_sn_discriminator_weights_are_unfolded_constant_subgraphs() -> None:
    model = _model("sn_discriminator")
    producers = {o: n for n in model.graph.node for o in n.output}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 6
    for node in layers:
        weight = node.input[1]
        assert producers[weight].op_type == "Div", node.name
        assert _constant_ancestry(model, weight)
    strided = [n for n in layers if n.op_type == "Conv" and _attrs(n)["strides"] == [2, 2]]
    assert strided and all(_attrs(n)["kernel_shape"] == [4, 4] for n in strided)
    assert "LeakyRelu" in _ops(model)


def test_strided_dilated_depthwise_features() -> None:
    model = _model("strided_dilated_depthwise")
    convs = [_attrs(n) for n in model.graph.node if n.op_type == "Conv"]
    assert any(a.get("strides") == [2, 2] for a in convs)
    assert any(a.get("dilations") == [2, 2] for a in convs)
    assert any(a.get("group") == 8 for a in convs)  # depthwise: 8 channels, 8 groups
    assert any(a.get("group") == 2 for a in convs)  # grouped
    assert any(a["pads"][:2] != a["pads"][2:] for a in convs)  # asymmetric begin/end
    (tr,) = [_attrs(n) for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert tr["strides"] == [2, 2] and tr["output_padding"] == [1, 1]
    assert {"Pad", "AveragePool"} <= set(_ops(model))


def test_attention_multiplies_two_variable_tensors() -> None:
    model = _model("attention")
    assert {"LayerNormalization", "Softmax", "Transpose"} <= set(_ops(model))
    inits = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    variable_matmuls = [
        n for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in inits or i in constants for i in n.input)
    ]
    assert len(variable_matmuls) == 2  # Q.K^T and softmax(.).V


def test_constant_weights_has_no_initializers() -> None:
    model = _model("constant_weights")
    assert len(model.graph.initializer) == 0
    assert _ops(model).count("Constant") >= 4


def test_multi_input_and_dynamic_batch_inputs() -> None:
    multi = _model("multi_input")
    assert [i.name for i in multi.graph.input] == ["a", "b"]
    assert "Concat" in _ops(multi)
    (inp,) = _model("dynamic_batch").graph.input
    assert _static_shape(inp) == ["N", 1, 8, 8]
    for name in NAMES:
        if name != "dynamic_batch":
            for vi in _model(name).graph.input:
                assert all(isinstance(d, int) and d > 0 for d in _static_shape(vi)), name


def test_readme_lists_every_model() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for name in NAMES:
        assert f"{name}.onnx" in readme
