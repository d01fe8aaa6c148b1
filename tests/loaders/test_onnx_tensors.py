"""Tensor-level validation (lipcheck.loaders.onnx_tensors): every inconsistent tensor is one InvalidModelError
naming the file and the tensor, before numpy or onnx sees it; every consistent tensor passes and loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lipcheck.errors import InvalidModelError, LoadError
from lipcheck.loaders.onnx_loader import load_onnx, read_model
from lipcheck.loaders.onnx_tensors import ELEMENT_BITS, validate_tensors
from lipcheck.readlimits import MAX_DIM
from tests.helpers import make_model, rng_weights


def _gemm(w: np.ndarray | None = None) -> onnx.ModelProto:
    w = rng_weights(4, 6) if w is None else w
    return make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                      [("x", (1, w.shape[1]))], ["y"], {"w": w})


def _saved(model: onnx.ModelProto, tmp_path: Path, name: str = "bad.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _refused(model: onnx.ModelProto, tmp_path: Path) -> str:
    """The one-line message both validate_tensors and read_model (a saved file) give."""
    with pytest.raises(InvalidModelError) as direct:
        validate_tensors(model, "m.onnx")
    path = _saved(model, tmp_path)
    with pytest.raises(LoadError) as loaded:
        read_model(path)
    message = str(loaded.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert str(direct.value).removeprefix("m.onnx: ") == message.removeprefix(f"{path}: ")
    return message


# ----------------------------------------------------------------------------------------- data lengths


@pytest.mark.parametrize("delta", [-4, -1, 1, 8])
def test_raw_data_of_the_wrong_length_is_refused(delta: int, tmp_path: Path) -> None:
    model = _gemm()
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data
    tensor.raw_data = raw[:delta] if delta < 0 else raw + b"\0" * delta
    message = _refused(model, tmp_path)
    assert f"initializer 'w' has {96 + delta} bytes of raw_data, but its shape [4, 6] of FLOAT needs 96" in message


@pytest.mark.parametrize(("field", "data_type", "count"), [
    ("float_data", TensorProto.FLOAT, 23), ("float_data", TensorProto.FLOAT, 25),
    ("double_data", TensorProto.DOUBLE, 0), ("int64_data", TensorProto.INT64, 7),
    ("int32_data", TensorProto.INT32, 30), ("int32_data", TensorProto.FLOAT16, 1),
])
def test_typed_data_of_the_wrong_count_is_refused(field: str, data_type: int, count: int, tmp_path: Path) -> None:
    model = _gemm()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_type = data_type
    getattr(tensor, field).extend([1] * count)
    message = _refused(model, tmp_path)
    assert f"holds {count} values in {field}, but its shape [4, 6]" in message and "needs 24" in message


def test_complex_values_count_two_entries_each() -> None:
    tensor = TensorProto(name="c", data_type=TensorProto.COMPLEX64, dims=[2], float_data=[1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([], "g", [], [], [tensor])
    validate_tensors(helper.make_model(graph), "m.onnx")
    assert numpy_helper.to_array(tensor).tolist() == [1 + 2j, 3 + 4j]
    del tensor.float_data[-1]
    graph = helper.make_graph([], "g", [], [], [tensor])
    with pytest.raises(InvalidModelError, match=r"holds 3 values in float_data.*needs 4"):
        validate_tensors(helper.make_model(graph), "m.onnx")


def test_a_constant_node_tensor_is_checked_too(tmp_path: Path) -> None:
    value = numpy_helper.from_array(rng_weights(4, 6))
    value.raw_data = value.raw_data[:10]
    nodes = [helper.make_node("Constant", [], ["w"], name="c", value=value),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)]
    message = _refused(make_model(nodes, [("x", (1, 6))], ["y"]), tmp_path)
    assert "tensor 'value' of node 'c' (Constant) has 10 bytes of raw_data" in message


def test_a_subgraph_initializer_is_checked_too() -> None:
    bad = numpy_helper.from_array(np.ones(3, np.float32), "k")
    bad.raw_data = bad.raw_data[:5]
    branch = helper.make_graph([helper.make_node("Identity", ["k"], ["o"])], "then", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [3])], [bad])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch, else_branch=branch)
    model = make_model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], ["y"])
    pattern = r"initializer 'k' in subgraph '(then|else)_branch' of node 'branch' \(If\)"
    with pytest.raises(InvalidModelError, match=pattern):
        validate_tensors(model, "m.onnx")


# ------------------------------------------------------------------------------------------ dimensions


@pytest.mark.parametrize("dims", [[2**40, 6], [4, 2**40], [2**62, 2**62]])
def test_absurd_initializer_dims_are_refused_without_allocating(dims: list[int], tmp_path: Path) -> None:
    model = _gemm()
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend(dims)
    message = _refused(model, tmp_path)
    assert f"shape {dims} of FLOAT needs" in message and "truncated or corrupt" in message


@pytest.mark.parametrize("dims", [[-4, 6], [4, -1], [-1, -24]])
def test_negative_initializer_dims_are_refused(dims: list[int], tmp_path: Path) -> None:
    model = _gemm()
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend(dims)
    negative = next(d for d in dims if d < 0)
    assert f"initializer 'w' has a negative dimension {negative} in its shape {dims}" in _refused(model, tmp_path)


@pytest.mark.parametrize("kind", ["input", "output", "value_info"])
@pytest.mark.parametrize("dim", [MAX_DIM + 1, 2**40, 2**63 - 1])
def test_a_declared_dimension_past_2_31_is_refused(kind: str, dim: int, tmp_path: Path) -> None:
    model = _gemm()
    if kind == "input":
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = dim
        name = "x"
    elif kind == "output":
        model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = dim
        name = "y"
    else:
        model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, dim]))
        name = "h"
    message = _refused(model, tmp_path)
    assert f"{kind} '{name}' has a dimension of {dim}, more than the {MAX_DIM} (2^31-1)" in message


def test_an_input_past_2_40_elements_is_refused(tmp_path: Path) -> None:
    model = _gemm()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 2**30
    dims[1].dim_value = 2**11
    assert "input 'x' has 2199023255552 elements" in _refused(model, tmp_path)


def test_negative_input_dims_stay_the_loaders_dynamic_dims() -> None:
    """Some exporters write -1 for "any size": not refused here (the loader asks for --input-shape)."""
    model = _gemm()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    validate_tensors(model, "m.onnx")


# ------------------------------------------------------------------------------------------ element types


@pytest.mark.parametrize("data_type", [999, 0, -3, 2**30])
def test_an_unknown_initializer_element_type_is_refused(data_type: int, tmp_path: Path) -> None:
    model = _gemm()
    model.graph.initializer[0].data_type = data_type
    assert f"initializer 'w' has an unknown element type {data_type}" in _refused(model, tmp_path)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_an_unknown_input_or_output_element_type_is_refused(kind: str, tmp_path: Path) -> None:
    model = _gemm()
    (model.graph.input if kind == "input" else model.graph.output)[0].type.tensor_type.elem_type = 999
    assert f"{kind} '{'x' if kind == 'input' else 'y'}' has an unknown element type 999" in _refused(model, tmp_path)


# ------------------------------------------------------------------------------------------- Conv groups


def _conv(weight_shape: tuple[int, ...], channels: int, group: int, op: str = "Conv") -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], name="conv", group=group)
    return make_model([node], [("x", (1, channels, 8, 8))], ["y"], {"w": rng_weights(*weight_shape)})


@pytest.mark.parametrize(("weight", "channels", "group", "pattern"), [
    ((4, 2, 3, 3), 6, 3, r"group 3, which does not divide the 4 output channels of its weight 'w' \[4, 2, 3, 3\]"),
    ((6, 2, 3, 3), 8, 4, r"group 4, which does not divide the 6 output channels"),
    ((4, 3, 3, 3), 4, 2, r"input 'x' has 4 channels, but weight 'w' \[4, 3, 3, 3\] reads 3 × group 2 = 6"),
    ((4, 4, 3, 3), 4, 2, r"input 'x' has 4 channels, but weight 'w' \[4, 4, 3, 3\] reads 4 × group 2 = 8"),
    ((4, 1, 3, 3), 4, 0, r"group 0; it must be at least 1"),
    ((4, 4), 4, 1, r"weight 'w' of shape \[4, 4\]; a convolution weight has rank 3 or more"),
])
def test_an_inconsistent_conv_group_is_refused(weight: tuple[int, ...], channels: int, group: int, pattern: str,
                                               tmp_path: Path) -> None:
    import re

    message = _refused(_conv(weight, channels, group), tmp_path)
    assert "node 'conv' (Conv)" in message
    assert re.search(pattern, message), message


def test_an_inconsistent_conv_transpose_group_is_refused(tmp_path: Path) -> None:
    message = _refused(_conv((6, 2, 3, 3), 6, 4, "ConvTranspose"), tmp_path)
    assert "group 4, which does not divide the 6 input channels" in message
    message = _refused(_conv((6, 2, 3, 3), 4, 2, "ConvTranspose"), tmp_path)
    assert "input 'x' has 4 channels, but weight 'w' [6, 2, 3, 3] reads 6 input channels" in message


@pytest.mark.parametrize(("weight", "channels", "group"), [((4, 2, 3, 3), 4, 2), ((8, 1, 3, 3), 8, 8),
                                                           ((6, 4, 3, 3), 4, 1)])
def test_consistent_convs_pass(weight: tuple[int, ...], channels: int, group: int) -> None:
    model = _conv(weight, channels, group)
    validate_tensors(model, "m.onnx")
    load_onnx(model)


def test_a_mid_graph_conv_whose_channels_do_not_fit_is_refused_by_its_rule(tmp_path: Path) -> None:
    """No declared shape for the inner tensor: the loader cannot see it, the Conv rule refuses to bound it."""
    import lipcheck
    from lipcheck.bound.walker import RuleFailure

    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="c2", group=2)]
    model = make_model(nodes, [("x", (1, 4, 8, 8))], ["y"], {"w1": rng_weights(4, 4, 3, 3),
                                                             "w2": rng_weights(4, 3, 3, 3)})
    validate_tensors(model, "m.onnx")
    with pytest.raises((InvalidModelError, RuleFailure)) as info:
        lipcheck.analyze(model, lower_bound=False)
    chained = info.value if isinstance(info.value, InvalidModelError) else info.value.__cause__
    assert isinstance(chained, InvalidModelError)
    assert "node 'c2' (Conv): input 'h' of shape [1, 4, 8, 8] does not fit weight 'w2' [4, 3, 3, 3]" in str(chained)


# ---------------------------------------------------------------------------------- generated variants


_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.bool_, np.complex64]


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    delta=st.integers(-9, 9),
    typed=st.booleans(),
)
def test_generated_tensors_are_refused_exactly_when_their_data_does_not_fit(
    dtype: type, shape: list[int], delta: int, typed: bool
) -> None:
    """Every consistent tensor passes and loads with numpy_helper; removing or adding bytes / values is refused."""
    array: np.ndarray = np.zeros(shape, dtype=dtype)
    tensor = numpy_helper.from_array(array, "t")
    if typed and dtype not in (np.float16, np.complex64):
        tensor = helper.make_tensor("t", tensor.data_type, shape, array.flatten().tolist(), raw=False)
    model = helper.make_model(helper.make_graph([], "g", [], [], [tensor]))
    validate_tensors(model, "m.onnx")
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == tuple(shape)
    if delta == 0:
        return
    broken = model.graph.initializer[0]
    if broken.HasField("raw_data"):
        raw = broken.raw_data
        if delta < 0 and len(raw) + delta < 0:
            return
        broken.raw_data = raw[:delta] if delta < 0 else raw + b"\1" * delta
    else:
        field = next(f for f in ("float_data", "double_data", "int64_data", "int32_data", "uint64_data")
                     if len(getattr(broken, f)) or f == helper.tensor_dtype_to_field(broken.data_type))
        values = getattr(broken, field)
        if delta < 0 and len(values) + delta < 0:
            return
        if delta < 0:
            del values[delta:]
        else:
            values.extend([0] * delta)
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        validate_tensors(model, "m.onnx")


def test_every_known_element_type_has_a_size() -> None:
    known = {v for k, v in TensorProto.DataType.items() if k not in ("UNDEFINED", "STRING")}
    assert known <= set(ELEMENT_BITS)


def test_the_sample_models_pass() -> None:
    root = Path(__file__).resolve().parents[2] / "sample_models"
    for path in sorted(root.glob("*.onnx")):
        validate_tensors(onnx.load(str(path), load_external_data=False), path)
