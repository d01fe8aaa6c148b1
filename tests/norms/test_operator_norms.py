"""Per-layer norms of every weighted op against an independent dense reference.

The reference never touches lipcheck's numerics: the operator's explicit matrix is built by pushing the
identity basis through the layer with onnxruntime (as one batch where the op allows it, f(0) subtracted for
affine layers), and its σ_max comes from ``np.linalg.svd`` in float64.

Precision of the reference. onnxruntime runs Gemm, MatMul, BatchNormalization, Mul and Div in float64, so
those models are converted to double. Conv, ConvTranspose, AveragePool and GlobalAveragePool have no float64
kernel in onnxruntime (NOT_IMPLEMENTED), so in the double reference they run in float32 between two Casts;
their dense matrices are nevertheless exact:

- Conv / ConvTranspose on a one-hot input compute w·1 plus exact zeros, so every entry IS a float32
  weight (asserted for every unfused conv case). Where a case has a conv bias, weights and bias are
  multiples of 2⁻⁸ of small magnitude (:func:`quantized`), so w + b and its difference with b are exact
  in float32 too. After a Conv, a BatchNormalization runs in float64 on those exact values.
- AveragePool / GlobalAveragePool: the basis is scaled by L = lcm(1..16) (exact in float32); every output
  is then L/count, an integer, computed exactly (checked below), and the matrix is that divided by L in
  float64.

So every comparison uses rel 1e-6 (the values agree to ~1e-12 in practice), and ``sigma_upper >= dense σ``
is asserted without any slack.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.report.model import LayerResult, Report
from tests.helpers import make_model, rng_weights

Shape = tuple[int, ...]
REL = 1e-6
POOL_SCALE = float(math.lcm(*range(1, 17)))  # 720720 < 2**24: exact in float32, divisible by every count <= 16
# onnxruntime has no float64 kernel for these: the double reference runs them in float32 between Casts
FLOAT32_ONLY = {"Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool"}


# ------------------------------------------------------------------------------------------------------------
# The independent reference


def quantized(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Random weights that are multiples of 2⁻⁸: sums of two of them are exact in float32 (|w| << 2¹⁵)."""
    return (np.round(rng_weights(*shape, seed=seed) * scale * 256) / 256).astype(np.float32)


def _double_reference(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The model in float64 with batch dim ``batch``; float32-only ops run between Cast nodes."""
    ref = copy.deepcopy(model)
    g = ref.graph
    float32_inits = {i for n in g.node if n.op_type in FLOAT32_ONLY for i in n.input[1:]}
    double_inits = {i for n in g.node if n.op_type not in FLOAT32_ONLY for i in n.input}
    assert not float32_inits & double_inits, "an initializer feeds both a float32-only and a double op"
    inits = []
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype == np.float32 and t.name not in float32_inits:
            arr = arr.astype(np.float64)
        inits.append(numpy_helper.from_array(arr, t.name))
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = []
    for n in g.node:
        if n.op_type not in FLOAT32_ONLY:
            nodes.append(n)
            continue
        x32, y32 = f"{n.input[0]}__f32_{n.name}", f"{n.output[0]}__f32"
        nodes.append(helper.make_node("Cast", [n.input[0]], [x32], to=TensorProto.FLOAT))
        n2 = copy.deepcopy(n)
        n2.input[0] = x32
        n2.output[0] = y32
        nodes.append(n2)
        nodes.append(helper.make_node("Cast", [y32], [n.output[0]], to=TensorProto.DOUBLE))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for vi in list(g.input) + list(g.output):
        vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    g.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    return ref


def dense_operator(model: onnx.ModelProto, *, batched: bool = True, scale: float = 1.0) -> np.ndarray:
    """The explicit (n_out, n_in) float64 matrix of the model's (affine) map, from onnxruntime.

    ``batched``: feed the identity basis as one batch (the input's dim 0 set to n); else one basis vector
    per run (ops whose dim 0 is not a batch dim, e.g. Gemm's second operand). ``scale``: the basis is
    multiplied by it and the matrix divided by it (exact pools, see the module docstring).
    """
    import onnxruntime as ort

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    n = math.prod(shape[1:]) if batched else math.prod(shape)
    ref = _double_reference(model, n if batched else shape[0])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusions in the reference
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # no spinning pool threads competing with lipcheck's torch afterwards
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(ref.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = ref.graph.input[0].name
    eye = np.eye(n) * scale
    if batched:
        zero = sess.run(None, {name: np.zeros((n, *shape[1:]))})[0]
        out = sess.run(None, {name: eye.reshape(n, *shape[1:])})[0]
        cols = (out - zero).reshape(n, -1)
    else:
        zero = sess.run(None, {name: np.zeros(shape)})[0]
        cols = np.stack([(sess.run(None, {name: e.reshape(shape)})[0] - zero).ravel() for e in eye])
    if scale != 1.0:
        # every output is scale/count: an integer, exact in float32 when onnxruntime divides exactly
        assert np.array_equal(cols, np.round(cols)), "pool outputs are not exact: the reference is not exact"
    return np.asarray(cols, dtype=np.float64).T / scale


def sigma_max(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.linalg.svd(a, compute_uv=False)[0]) if a.size else 0.0


# ------------------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    model: onnx.ModelProto  # batch 1, float32: what lipcheck analyzes
    op: str  # the layer row's op
    batched: bool = True
    scale: float = 1.0
    reshaped: np.ndarray | None = None  # the matrix whose σ is sigma_reshaped (convs)
    fused_with: tuple[str, ...] = ()
    exact_method: str | None = None  # asserted when set
    options: dict[str, Any] | None = None


def single(op: str, x_shape: Shape, inits: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
           opset: int = 17) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", *inits.keys()], ["y"], name=f"{op.lower()}0", **(attrs or {}))
    return make_model([node], [("x", x_shape)], ["y"], inits, opset=opset)


def conv_case(
    id: str,
    x_shape: Shape,
    w_shape: Shape,
    seed: int = 0,
    bias: bool = False,
    exact_method: str | None = None,
    **attrs: Any,
) -> Case:
    w = quantized(*w_shape, seed=seed) if bias else rng_weights(*w_shape, seed=seed)
    inits = {"w": w}
    if bias:
        inits["b"] = quantized(w_shape[0], seed=seed + 100)
    return Case(id, single("Conv", x_shape, inits, attrs), "Conv", reshaped=w.reshape(w.shape[0], -1),
                exact_method=exact_method)


def conv_t_case(id: str, x_shape: Shape, w_shape: Shape, seed: int = 0, **attrs: Any) -> Case:
    w = rng_weights(*w_shape, seed=seed)
    return Case(id, single("ConvTranspose", x_shape, {"w": w}, attrs), "ConvTranspose",
                reshaped=np.moveaxis(w, 1, 0).reshape(w.shape[1], -1))


def bn_params(c: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "gamma": rng.uniform(-2.0, 2.0, c).astype(np.float32),
        "beta": rng.uniform(-0.5, 0.5, c).astype(np.float32),
        "mean": rng.uniform(-0.5, 0.5, c).astype(np.float32),
        "var": rng.uniform(0.2, 3.0, c).astype(np.float32),
    }


def bn_scale(p: dict[str, np.ndarray], eps: float) -> np.ndarray:
    return p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + float(np.float32(eps)))


def conv_bn_case() -> Case:
    w, b = quantized(4, 3, 3, 3, seed=11), quantized(4, seed=12)
    p = bn_params(4, seed=13)
    eps = 1e-3
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 0, 1, 2], strides=[1, 2]),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], name="bn", epsilon=eps),
    ]
    model = make_model(nodes, [("x", (1, 3, 6, 7))], ["y"], {"w": w, "b": b, **p})
    fused = w.astype(np.float64) * bn_scale(p, eps)[:, None, None, None]
    return Case("conv2d+bn_folded", model, "Conv", reshaped=fused.reshape(4, -1), fused_with=("bn",))


def conv_t_bn_case() -> Case:
    w, b = quantized(4, 3, 3, 2, seed=21), quantized(6, seed=22)  # groups 2: C_out = 6
    p = bn_params(6, seed=23)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["h"], name="convt", group=2, strides=[2, 1],
                         pads=[1, 0, 0, 1]),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
    ]
    model = make_model(nodes, [("x", (1, 4, 3, 4))], ["y"], {"w": w, "b": b, **p})
    s = bn_scale(p, 1e-5).reshape(2, 1, 3, 1, 1)
    fused = (w.astype(np.float64).reshape(2, 2, 3, 3, 2) * s).reshape(w.shape)
    return Case("convtranspose2d+bn_folded", model, "ConvTranspose",
                reshaped=np.moveaxis(fused, 1, 0).reshape(3, -1), fused_with=("bn",))


def gemm_bn_case(trans_b: int) -> Case:
    w = rng_weights(*((5, 6) if trans_b else (6, 5)), seed=31)
    c = rng_weights(5, seed=32)
    p = bn_params(5, seed=33)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["h"], name="gemm", alpha=0.75, transB=trans_b),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
    ]
    model = make_model(nodes, [("x", (1, 6))], ["y"], {"w": w, "c": c, **p})
    return Case(f"gemm_transB{trans_b}+bn_folded", model, "Gemm", fused_with=("bn",))


def matmul_bn_case() -> Case:
    p = bn_params(4, seed=43)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
    ]
    model = make_model(nodes, [("x", (1, 7))], ["y"], {"w": rng_weights(7, 4, seed=41), **p})
    return Case("matmul+bn_folded", model, "Gemm", fused_with=("bn",))


def bn_dead_channel_cases() -> list[Case]:
    """No epsilon attribute and a channel with var = 0: its scale is γ/√eps, so the default epsilon decides
    the norm. ONNX stores it as float32(1e-5) = 9.99999974738e-06; reading it as the double 1e-5 gives a
    value 1.26e-8 (relative) below the truth, far outside the rounding margins."""
    p = {"gamma": np.array([1.0, -0.5, 2.0, 0.25], np.float32), "beta": np.full(4, 0.25, np.float32),
         "mean": np.zeros(4, np.float32), "var": np.array([0.0, 1.0, 0.5, 2.0], np.float32)}
    standalone = single("BatchNormalization", (1, 4, 2, 2), p)
    w = rng_weights(4, 2, 3, 3, seed=81)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
    ]
    fused = make_model(nodes, [("x", (1, 2, 5, 5))], ["y"], {"w": w, **p})
    w_fused = w.astype(np.float64) * bn_scale(p, 1e-5)[:, None, None, None]
    return [
        Case("batchnorm_standalone_default_eps_var0", standalone, "BatchNormalization"),
        Case("conv2d+bn_folded_default_eps_var0", fused, "Conv", reshaped=w_fused.reshape(4, -1),
             fused_with=("bn",)),
    ]


def pool_case(id: str, x_shape: Shape, opset: int = 17, op: str = "AveragePool", **attrs: Any) -> Case:
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)
    # lipcheck refuses a model without any initializer: an unused one, as in tests/rules
    model = make_model([node], [("x", x_shape)], ["y"], {"w_unused": np.ones(1, np.float32)}, opset=opset)
    return Case(id, model, op, scale=POOL_SCALE)


CASES: list[Case] = [
    # --- Gemm / MatMul -------------------------------------------------------------------------------------
    Case("gemm_alpha_transB0", single("Gemm", (1, 6), {"w": rng_weights(6, 4, seed=1), "c": rng_weights(4, seed=2)},
                                      {"alpha": -1.5, "transA": 0, "transB": 0}), "Gemm"),
    Case("gemm_alpha_transB1", single("Gemm", (1, 6), {"w": rng_weights(4, 6, seed=3)},
                                      {"alpha": 0.3, "transA": 0, "transB": 1}), "Gemm"),
    Case("gemm_const_A_transA1", make_model(
        [helper.make_node("Gemm", ["a", "x"], ["y"], name="gemm", alpha=2.0, transA=1)],
        [("x", (4, 3))], ["y"], {"a": rng_weights(4, 5, seed=4)}), "Gemm", batched=False),
    Case("gemm_lanczos_gram", single("Gemm", (1, 9), {"w": rng_weights(9, 7, seed=5)}, {"alpha": 1.25}), "Gemm",
         exact_method="lanczos", options={"exact_limit": 10}),
    Case("matmul_const_right", single("MatMul", (1, 3, 6), {"w": rng_weights(6, 5, seed=6)}), "MatMul"),
    Case("matmul_const_left", make_model(
        [helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")],
        [("x", (1, 6, 3))], ["y"], {"w": rng_weights(4, 6, seed=7)}), "MatMul"),
    Case("matmul_batched_3d", single("MatMul", (1, 3, 2, 5), {"w": rng_weights(3, 5, 4, seed=8)}), "MatMul"),
    Case("matmul_batched_3d_broadcast_x", single("MatMul", (1, 1, 2, 5), {"w": rng_weights(3, 5, 4, seed=9)}),
         "MatMul"),
    Case("matmul_batched_3d_left", make_model(
        [helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")],
        [("x", (1, 2, 5, 3))], ["y"], {"w": rng_weights(2, 4, 5, seed=10)}), "MatMul"),
    # --- Conv ----------------------------------------------------------------------------------------------
    conv_case("conv1d_pads_stride", (1, 2, 9), (3, 2, 3), seed=1, pads=[1, 1], strides=[2]),
    conv_case("conv1d_asym_pads_dilation", (1, 2, 8), (2, 2, 3), seed=2, pads=[2, 0], dilations=[2]),
    conv_case("conv2d_sym_pads", (1, 2, 6, 6), (3, 2, 3, 3), seed=3, pads=[1, 1, 1, 1]),
    conv_case("conv2d_asym_pads", (1, 2, 6, 5), (3, 2, 3, 3), seed=4, pads=[0, 2, 1, 0]),
    conv_case("conv2d_bias", (1, 2, 5, 5), (3, 2, 3, 3), seed=5, bias=True, pads=[1, 1, 1, 1]),
    conv_case("conv2d_same_upper_stride2", (1, 2, 7, 6), (3, 2, 4, 3), seed=6, auto_pad="SAME_UPPER", strides=[2, 2]),
    conv_case("conv2d_same_lower_stride2", (1, 2, 7, 6), (3, 2, 4, 3), seed=6, auto_pad="SAME_LOWER", strides=[2, 2]),
    # (onnxruntime refuses dilation with SAME_*: stride 1 with even kernels, where the split is uneven)
    conv_case("conv2d_same_lower_even_kernel", (1, 2, 6, 5), (2, 2, 2, 4), seed=7, auto_pad="SAME_LOWER"),
    conv_case("conv2d_same_upper_even_kernel", (1, 2, 6, 5), (2, 2, 2, 4), seed=7, auto_pad="SAME_UPPER"),
    conv_case("conv2d_valid", (1, 2, 6, 7), (3, 2, 3, 2), seed=8, auto_pad="VALID"),
    conv_case("conv2d_stride3_not_dividing", (1, 2, 8, 7), (2, 2, 3, 3), seed=9, strides=[3, 3]),
    conv_case("conv2d_stride_dilation_pads", (1, 2, 9, 8), (3, 2, 3, 2), seed=10, strides=[2, 3], dilations=[2, 2],
              pads=[1, 2, 2, 0]),
    conv_case("conv2d_groups2", (1, 4, 5, 5), (6, 2, 3, 3), seed=11, group=2, pads=[1, 1, 1, 1]),
    conv_case("conv2d_depthwise", (1, 3, 6, 6), (3, 1, 3, 3), seed=12, group=3, pads=[1, 1, 1, 1]),
    conv_case("conv2d_depthwise_multiplier2_stride2", (1, 2, 7, 7), (4, 1, 3, 3), seed=13, group=2, strides=[2, 2],
              pads=[1, 0, 0, 1]),
    conv_case("conv2d_1x1_stride2", (1, 3, 7, 6), (4, 3, 1, 1), seed=14, strides=[2, 2]),
    conv_case("conv2d_1x1_groups_stride2", (1, 4, 5, 5), (6, 2, 1, 1), seed=15, strides=[2, 2], group=2),
    conv_case("conv2d_kernel_equals_padded_input", (1, 2, 5, 4), (3, 2, 7, 5), seed=16, pads=[1, 0, 1, 1]),
    conv_case("conv2d_kernel_equals_input", (1, 2, 4, 4), (3, 2, 4, 4), seed=17),
    conv_case("conv3d_pads", (1, 2, 4, 4, 3), (2, 2, 3, 3, 2), seed=18, pads=[1, 1, 0, 1, 0, 1]),
    conv_case("conv3d_stride_dilation", (1, 2, 5, 4, 5), (3, 2, 2, 2, 2), seed=19, strides=[2, 1, 2],
              dilations=[1, 2, 2], pads=[0, 1, 1, 1, 0, 0]),
    # smaller side > DENSE_LIMIT (512): Lanczos, on the Gram operator of the input side then the output side
    conv_case("conv2d_lanczos_input_side", (1, 3, 16, 16), (4, 3, 3, 3), seed=20, pads=[1, 1, 1, 1],
              exact_method="lanczos"),
    conv_case("conv2d_lanczos_output_side", (1, 4, 16, 16), (3, 4, 3, 3), seed=21, exact_method="lanczos"),
    # --- ConvTranspose -------------------------------------------------------------------------------------
    conv_t_case("convtranspose1d_stride_pads_outpad", (1, 2, 5), (2, 3, 3), seed=1, strides=[2], pads=[1, 0],
                output_padding=[1]),
    # (onnxruntime refuses output_padding >= stride, even when it is < dilation)
    conv_t_case("convtranspose1d_dilation_outpad", (1, 2, 6), (2, 2, 3), seed=2, strides=[2], dilations=[2],
                output_padding=[1]),
    conv_t_case("convtranspose2d_stride_pads", (1, 2, 4, 3), (2, 3, 3, 3), seed=3, strides=[2, 2],
                pads=[1, 1, 1, 1]),
    conv_t_case("convtranspose2d_groups_dilation_outpad", (1, 4, 4, 3), (4, 3, 3, 2), seed=4, group=2,
                strides=[2, 3], dilations=[1, 2], pads=[1, 0, 0, 1], output_padding=[1, 2]),
    conv_t_case("convtranspose2d_depthwise", (1, 3, 4, 4), (3, 1, 3, 3), seed=5, group=3, strides=[2, 2],
                pads=[0, 1, 1, 0], output_padding=[1, 1]),
    conv_t_case("convtranspose2d_output_shape", (1, 2, 3, 4), (2, 2, 3, 3), seed=6, strides=[2, 2],
                output_shape=[6, 7]),
    conv_t_case("convtranspose2d_same_upper", (1, 2, 3, 4), (2, 2, 3, 2), seed=7, strides=[2, 2],
                auto_pad="SAME_UPPER"),
    conv_t_case("convtranspose2d_same_lower", (1, 2, 3, 4), (2, 2, 3, 2), seed=7, strides=[2, 2],
                auto_pad="SAME_LOWER"),
    # --- BatchNormalization --------------------------------------------------------------------------------
    conv_bn_case(),
    conv_t_bn_case(),
    gemm_bn_case(0),
    gemm_bn_case(1),
    matmul_bn_case(),
    Case("batchnorm_standalone", single("BatchNormalization", (1, 4, 3, 3), bn_params(4, seed=51),
                                        {"epsilon": 1e-2}), "BatchNormalization"),
    *bn_dead_channel_cases(),
    # --- pools ---------------------------------------------------------------------------------------------
    pool_case("avgpool_overlap_exclude_pad", (1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              count_include_pad=0),
    pool_case("avgpool_overlap_include_pad", (1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              count_include_pad=1),
    pool_case("avgpool_asym_pads_ceil_exclude", (1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 0, 2, 1], ceil_mode=1, count_include_pad=0),
    pool_case("avgpool_asym_pads_ceil_include", (1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 0, 2, 1], ceil_mode=1, count_include_pad=1),
    pool_case("avgpool_ceil_no_pads", (1, 1, 8, 7), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
    pool_case("avgpool_1d", (1, 2, 9), kernel_shape=[4], strides=[3], pads=[2, 1], count_include_pad=1),
    pool_case("avgpool_3d", (1, 1, 5, 4, 4), kernel_shape=[2, 3, 2], strides=[1, 2, 1], pads=[1, 1, 0, 0, 1, 1]),
    pool_case("avgpool_same_upper", (1, 1, 7, 7), kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    pool_case("avgpool_dilation_opset19", (1, 1, 9, 8), opset=19, kernel_shape=[3, 2], dilations=[2, 1],
              strides=[1, 2], pads=[2, 1, 1, 0]),
    pool_case("global_avgpool", (1, 3, 5, 7), op="GlobalAveragePool"),
    # --- scaling by constants ------------------------------------------------------------------------------
    Case("mul_const_channel_broadcast", single("Mul", (1, 3, 2, 2), {"c": rng_weights(3, 1, 1, seed=61)}), "Mul"),
    Case("mul_const_first_operand", make_model(
        [helper.make_node("Mul", ["c", "x"], ["y"], name="mul")],
        [("x", (1, 2, 3))], ["y"], {"c": rng_weights(2, 3, seed=62)}), "Mul"),
    Case("mul_const_expands_input", single("Mul", (1, 1, 3, 2), {"c": rng_weights(4, 1, 2, seed=63)}), "Mul"),
    Case("div_const", single("Div", (1, 3, 4), {"c": rng_weights(3, 1, seed=64) + 3.0}), "Div"),
    Case("div_const_expands_input", single("Div", (1, 1, 4), {"c": rng_weights(3, 1, seed=65) - 2.5}), "Div"),
]


def the_layer(report: Report, case: Case) -> LayerResult:
    assert not report.unbounded, report.unbounded
    assert len(report.layers) == 1, [(layer.name, layer.op) for layer in report.layers]
    layer = report.layers[0]
    assert layer.op == case.op
    assert layer.fused_with == case.fused_with
    return layer


def check_invariants(layer: LayerResult, dense_sigma: float) -> None:
    assert layer.sigma_exact is not None, layer.exact_skipped
    assert layer.sigma_power <= layer.sigma_exact * (1 + 1e-9)
    assert layer.sigma_exact <= layer.sigma_upper
    assert layer.sigma_upper >= dense_sigma, "certified value below the truth"
    assert layer.lipschitz == layer.sigma_upper


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_layer_norms_match_dense_reference(case: Case) -> None:
    report = lipcheck.analyze(case.model, lower_bound=False, **(case.options or {}))
    layer = the_layer(report, case)
    dense = dense_operator(case.model, batched=case.batched, scale=case.scale)
    truth = sigma_max(dense)
    assert truth > 0
    assert layer.sigma_exact == pytest.approx(truth, rel=REL), (layer.exact_method, layer.sigma_exact, truth)
    check_invariants(layer, truth)
    if case.exact_method is not None:
        assert layer.exact_method == case.exact_method
    if case.op in ("Conv", "ConvTranspose"):
        assert case.reshaped is not None
        if not case.fused_with:  # the float32 reference is exact: every entry is a weight of the kernel, or 0
            assert np.isin(dense, np.append(case.reshaped, 0.0)).all()
        assert layer.sigma_reshaped == pytest.approx(sigma_max(case.reshaped), rel=REL)
    else:
        assert layer.sigma_reshaped is None


@pytest.mark.parametrize(
    ("op", "w_shape"),
    [("Conv", (3, 2, 3, 3)), ("ConvTranspose", (2, 3, 3, 3))],
)
def test_exact_skipped_above_exact_limit(op: str, w_shape: tuple[int, ...]) -> None:
    w = rng_weights(*w_shape, seed=71)
    model = single(op, (1, 2, 6, 5), {"w": w}, {"pads": [1, 1, 1, 1]})
    report = lipcheck.analyze(model, lower_bound=False, exact_limit=10)
    layer = report.layers[0]
    assert layer.sigma_exact is None
    assert layer.exact_method == "skipped"
    assert layer.exact_skipped is not None and "exact_limit" in layer.exact_skipped
    assert any("exact σ skipped" in note for note in report.notes)
    truth = sigma_max(dense_operator(model))
    assert layer.sigma_upper >= truth
    assert layer.sigma_power <= truth * (1 + 1e-9)
    assert layer.upper_method != "svd+margin"


def test_reshaped_kernel_norm_is_not_the_operator_norm() -> None:
    """A smooth all-positive 3×3 kernel: the operator norm is far above the reshaped-kernel norm."""
    k1 = np.array([1.0, 2.0, 1.0], np.float32)
    w = np.outer(k1, k1)[None, None].astype(np.float32)  # (1, 1, 3, 3), sum 16, Frobenius 6
    model = single("Conv", (1, 1, 16, 16), {"w": w}, {"pads": [1, 1, 1, 1]})
    layer = lipcheck.analyze(model, lower_bound=False).layers[0]
    truth = sigma_max(dense_operator(model))
    assert layer.sigma_exact == pytest.approx(truth, rel=REL)
    assert layer.sigma_exact is not None and layer.sigma_reshaped is not None
    assert layer.sigma_reshaped == pytest.approx(6.0, rel=REL)
    assert layer.sigma_exact / layer.sigma_reshaped > 2.0
    check_invariants(layer, truth)


# ------------------------------------------------------------------------------------------------------------
# Random 2-D conv geometries


@st.composite
def conv_geometries(draw: st.DrawFn) -> tuple[Any, ...]:
    groups = draw(st.integers(1, 4))
    c_in = groups * draw(st.integers(1, 4 // groups))
    c_out = groups * draw(st.integers(1, 4 // groups))
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    strides = [draw(st.integers(1, 3)) for _ in range(2)]
    dilations = [draw(st.integers(1, 2)) for _ in range(2)]
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    spatial = [draw(st.integers(3, 9)) for _ in range(2)]
    seed = draw(st.integers(0, 2**16))
    return c_in, c_out, groups, kernel, strides, dilations, pads, spatial, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(conv_geometries())
def test_random_conv_geometries(geom: tuple[Any, ...]) -> None:
    c_in, c_out, groups, kernel, strides, dilations, pads, spatial, seed = geom
    for i in range(2):
        assume(spatial[i] + pads[i] + pads[i + 2] >= dilations[i] * (kernel[i] - 1) + 1)
    w = rng_weights(c_out, c_in // groups, *kernel, seed=seed)
    model = single("Conv", (1, c_in, *spatial), {"w": w},
                   {"group": groups, "strides": strides, "dilations": dilations, "pads": pads})
    layer = lipcheck.analyze(model, lower_bound=False).layers[0]
    truth = sigma_max(dense_operator(model))
    assert layer.sigma_exact == pytest.approx(truth, rel=REL, abs=1e-12)
    check_invariants(layer, truth)
    assert layer.sigma_reshaped == pytest.approx(sigma_max(w.reshape(c_out, -1)), rel=REL)
