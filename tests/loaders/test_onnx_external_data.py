"""External data: weights stay in their file (read-only memmaps), the numbers are those of the inline model,
the files are never modified, and a broken data file is one clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

import lipcheck
from lipcheck.arrays import is_file_mapped, release_pages
from lipcheck.cli.app import app
from lipcheck.errors import InvalidWeightsError, LoadError
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.normalize import normalize
from tests.helpers import make_model, rng_weights

runner = CliRunner()


def _model(w1: np.ndarray | None = None) -> onnx.ModelProto:
    """Reshape (int64 shape initializer) → Gemm (transB) → BatchNorm (folded into the Gemm) → Relu → MatMul →
    Mul by a constant → Gemm (alpha -0.5) whose weight is a folded chain W / ‖W‖_F."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("BatchNormalization", ["h1", "gamma", "beta", "mean", "var"], ["h1n"], name="bn"),
        helper.make_node("Relu", ["h1n"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm"),
        helper.make_node("Mul", ["h2", "scale"], ["h3"], name="mul"),
        helper.make_node("ReduceL2", ["w3"], ["n3"], keepdims=0),
        helper.make_node("Div", ["w3", "n3"], ["w3n"]),
        helper.make_node("Gemm", ["h3", "w3n"], ["y"], name="fc3", transB=1, alpha=-0.5),
    ]
    rng = np.random.default_rng(3)
    inits = {
        "shape": np.array([1, 16], np.int64),
        "w1": rng_weights(12, 16, seed=1) if w1 is None else w1,
        "b1": rng_weights(12, seed=2),
        "gamma": rng.uniform(0.5, 1.5, 12).astype(np.float32),
        "beta": rng.normal(0, 0.1, 12).astype(np.float32),
        "mean": rng.normal(0, 0.1, 12).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, 12).astype(np.float32),
        "w2": rng_weights(12, 10, seed=4),
        "scale": rng.uniform(-2, 2, 10).astype(np.float32),
        "w3": rng_weights(5, 10, seed=5),
    }
    return make_model(nodes, [("x", (1, 2, 8))], ["y"], inits)


def _save_external(model: onnx.ModelProto, folder: Path, name: str = "ext.onnx") -> Path:
    path = folder / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=0)
    return path


def _digests(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _rows(report: lipcheck.Report) -> list[tuple[object, ...]]:
    return [(r.name, r.param, r.sigma_power, r.sigma_exact, r.sigma_upper, r.upper_method) for r in report.layers]


def test_external_model_analyses_to_the_inline_numbers(tmp_path: Path) -> None:
    model = _model()
    inline = tmp_path / "inline.onnx"
    onnx.save_model(model, str(inline))
    ext = _save_external(model, tmp_path)
    data = tmp_path / "ext.onnx.data"
    stored = onnx.load(str(ext), load_external_data=False).graph.initializer
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored)  # every tensor is in the data file
    before = _digests(ext, data)
    a = lipcheck.analyze(inline, lower_bound=False)
    b = lipcheck.analyze(ext, lower_bound=False)
    assert [r.name for r in b.layers] == ["fc1", "mm", "mul", "fc3"]
    assert b.layers[0].fused_with == ("bn",)
    assert _rows(b) == _rows(a)
    assert b.upper_bound == a.upper_bound and b.estimate == a.estimate
    # the folded W/‖W‖ weight under alpha -0.5: σ = 0.5·σ(W)/‖W‖_F
    w = rng_weights(5, 10, seed=5).astype(np.float64)
    expected = 0.5 * np.linalg.svd(w, compute_uv=False)[0] / np.linalg.norm(w)
    assert b.layers[3].sigma_exact == pytest.approx(expected, rel=1e-6)  # ReduceL2 and Div run in float32
    assert b.layers[3].sigma_upper >= b.layers[3].sigma_exact
    assert _digests(ext, data) == before


def test_external_weights_are_read_only_memmaps(tmp_path: Path) -> None:
    ext = _save_external(_model(), tmp_path)
    g = load_onnx(ext)
    for name in ("w1", "w2", "scale"):
        assert is_file_mapped(g.constants[name]), name
        assert isinstance(g.constants[name], np.memmap) and g.constants[name].mode == "r"
    assert not g.constants["w1"].flags.writeable
    assert g.shapes["f"] == (1, 16)  # the int64 shape initializer was read for shape inference
    assert "w3n" in g.constants and not is_file_mapped(g.constants["w3n"])  # folded: materialized
    w1 = np.array(g.constants["w1"])
    release_pages(g.constants["w1"])  # only drops resident pages: the values stay
    np.testing.assert_array_equal(np.asarray(g.constants["w1"]), w1)
    np.testing.assert_array_equal(w1, rng_weights(12, 16, seed=1))


def test_normalize_reads_memmapped_weights_and_never_writes_the_input(tmp_path: Path) -> None:
    ext = _save_external(_model(), tmp_path)
    data = tmp_path / "ext.onnx.data"
    before = _digests(ext, data)
    out = tmp_path / "out" / "norm.onnx"
    out.parent.mkdir()
    result = normalize(ext, out, target=1.0)
    assert _digests(ext, data) == before
    assert out.is_file()
    assert result.bound_after is not None and result.bound_after <= 1.0 + 1e-6
    assert lipcheck.analyze(out, lower_bound=False).upper_bound == pytest.approx(result.bound_after)


def _truncate(tmp_path: Path) -> tuple[Path, Path]:
    ext = _save_external(_model(), tmp_path)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:-64])
    return ext, data


def test_truncated_external_data_is_one_clear_load_error(tmp_path: Path) -> None:
    ext, _ = _truncate(tmp_path)
    with pytest.raises(LoadError, match=r"external data file 'ext.onnx.data' is truncated: tensor 'w3' needs") as e:
        load_onnx(ext)
    assert "\n" not in str(e.value)


def test_truncated_external_data_through_the_cli_exits_2(tmp_path: Path) -> None:
    ext, data = _truncate(tmp_path)
    before = _digests(ext, data)
    result = runner.invoke(app, ["analyze", str(ext), "--no-lower-bound", "--no-progress"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is truncated" in lines[0], result.stderr
    assert _digests(ext, data) == before


def test_wrong_declared_length_and_missing_file(tmp_path: Path) -> None:
    ext = _save_external(_model(), tmp_path)
    m = onnx.load(str(ext), load_external_data=False)
    for kv in m.graph.initializer[1].external_data:
        if kv.key == "length":
            kv.value = str(int(kv.value) - 4)
    onnx.save_model(m, str(tmp_path / "badlen.onnx"))
    with pytest.raises(LoadError, match=r"tensor 'w1' declares 764 bytes of external data, but .* need 768"):
        load_onnx(tmp_path / "badlen.onnx")
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(LoadError, match=r"external data file 'ext.onnx.data' for tensor '\w+' is missing"):
        load_onnx(ext)


def test_nan_in_a_mapped_weight_names_the_node(tmp_path: Path) -> None:
    w1 = rng_weights(12, 16, seed=1)
    w1[7, 3] = np.nan
    ext = _save_external(_model(w1), tmp_path)
    with pytest.raises(InvalidWeightsError, match=r"weight 'w1' used by node 'fc1' \(Gemm\) contains NaN"):
        load_onnx(ext)


def test_shapes_from_onnxruntime_feed_the_mapped_weights(tmp_path: Path) -> None:
    """A shape only onnxruntime can give (a custom-free op shape inference leaves open) still resolves when the
    weights stay in their file: they are fed to onnxruntime as inputs."""
    w = rng_weights(4, 6)
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
        helper.make_node("NonZero", ["h"], ["nz"], name="nz"),  # data-dependent output shape
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    m = make_model(nodes, [("x", (1, 6))], ["y", "nz"], {"w": w})
    m.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    ext = _save_external(m, tmp_path)
    g = load_onnx(ext)
    assert is_file_mapped(g.constants["w"])
    assert g.shapes["nz"][0] == 2
