#!/usr/bin/env python
"""Deterministic generator for lipcheck's sample models: ONNX files and their PyTorch counterparts.

Usage::

    python sample_models/generate.py              # (re)write *.onnx and torch/* next to this file
    python sample_models/generate.py --out DIR    # somewhere else (the tests do this): DIR/*.onnx, DIR/torch/*
    python sample_models/generate.py --onnx       # only the committed ONNX models
    python sample_models/generate.py --torch      # only the PyTorch files (torch/*)
    python sample_models/generate.py mlp mlp.ts.pt  # only these (ONNX model names, torch file names)
    python sample_models/generate.py --list       # names and one-line descriptions

Running it twice gives byte-identical files (``sha256sum sample_models/*.onnx sample_models/torch/*``). How
that is kept:

* Every weight, statistic and input comes from ``numpy.random.default_rng(seed)`` *uniform* draws
  (pure arithmetic, identical on every machine), never from torch's RNG (its vectorised ``normal_``
  differs between CPU instruction sets) nor from numpy's Gaussian sampler (libm in its tail).
* The one iterative computation (the spectral-norm power iterations of ``sn_discriminator``) runs in
  float64 and is rounded to float32 afterwards, so BLAS summation order cannot change a stored bit.
* Models are re-serialised with ``SerializeToString(deterministic=True)`` and carry no doc strings or
  file paths from the exporting machine.
* The PyTorch files are saved into memory (zip top folder ``archive/``); the TorchScript archive is
  rewritten without its ``*.debug_pkl`` records and the torch.export program without node stack traces
  (both name source files by absolute path).

The torch-built models are exported with the TorchScript exporter (``dynamo=False``, opset 17); their
bytes depend on the torch version (``producer_version`` says which one made them: 2.13.0, pinned in
constraints.txt), as do the PyTorch files'. The ``onnx.helper``-built ones depend only on this file.

Each torch-built sample is one eval-mode module with fixed weights, ``<name>_module()`` (see MODULES),
built on the ``--arch`` factories of ``sample_models/torch_models.py``; the ONNX builders export it and
the torch writers save it, so both formats hold the same numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what torch's exporter writes for opset 17; loadable by every onnxruntime >= 1.10
HERE = Path(__file__).resolve().parent
MAX_BYTES = 1_000_000


# ----------------------------------------------------------------------------------------------------
# deterministic random numbers
# ----------------------------------------------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> np.ndarray:
    """He-uniform weights U(-b, b), b = gain*sqrt(6/fan_in) (variance 2/fan_in): a trained net's scale."""
    b = gain * math.sqrt(6.0 / fan_in)
    return _uniform(rng, shape, -b, b)


# ----------------------------------------------------------------------------------------------------
# torch helpers (torch is imported lazily so ``--list`` stays fast)
# ----------------------------------------------------------------------------------------------------


def _t(a: np.ndarray):  # -> torch.Tensor (torch is imported lazily)
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _weight(module):  # -> the torch.nn.Parameter that holds a Linear/Conv's weight
    """``module.weight``, or for a spectral_norm-parametrized module the stored ``original`` (the weight
    before normalisation), which is what a fill must write."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return module.weight


def _fill_linear(rng: np.random.Generator, lin, gain: float = 1.0, bias: float = 0.1) -> None:
    import torch

    w = _weight(lin)
    with torch.no_grad():
        w.copy_(_t(_he(rng, tuple(w.shape), lin.in_features, gain)))
        if lin.bias is not None:
            lin.bias.copy_(_t(_uniform(rng, tuple(lin.bias.shape), -bias, bias)))


def _fill_conv(rng: np.random.Generator, conv, gain: float = 1.0, bias: float = 0.1) -> None:
    import torch

    w = _weight(conv)
    fan_in = int(np.prod(w.shape[1:]))
    with torch.no_grad():
        w.copy_(_t(_he(rng, tuple(w.shape), fan_in, gain)))
        if conv.bias is not None:
            conv.bias.copy_(_t(_uniform(rng, tuple(conv.bias.shape), -bias, bias)))


def _fill_bn(rng: np.random.Generator, bn, hot_channel: int | None = 0) -> None:
    """Non-trivial inference statistics. ``hot_channel`` gets a tiny running_var, so that channel's
    scale gamma/sqrt(var+eps) is far above the others (BN's own constant is then large)."""
    import torch

    c = bn.num_features
    gamma = _uniform(rng, (c,), 0.5, 1.5)
    beta = _uniform(rng, (c,), -0.3, 0.3)
    mean = _uniform(rng, (c,), -0.5, 0.5)
    var = _uniform(rng, (c,), 0.3, 2.5)
    if hot_channel is not None:
        gamma[hot_channel] = np.float32(1.25)
        var[hot_channel] = np.float32(0.04)
    with torch.no_grad():
        bn.weight.copy_(_t(gamma))
        bn.bias.copy_(_t(beta))
        bn.running_mean.copy_(_t(mean))
        bn.running_var.copy_(_t(var))


def _export(
    module,
    args: tuple,
    input_names: list[str],
    output_names: list[str],
    *,
    do_constant_folding: bool = True,
    preserve_training_mode: bool = False,
    dynamic_axes: dict | None = None,
) -> onnx.ModelProto:
    """TorchScript export (dynamo=False, opset 17) of an eval-mode module to an in-memory ModelProto."""
    import torch

    module.eval()
    buf = io.BytesIO()
    training = torch.onnx.TrainingMode.PRESERVE if preserve_training_mode else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter DeprecationWarning
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            do_constant_folding=do_constant_folding,
            training=training,
            dynamic_axes=dynamic_axes,
            export_params=True,
            keep_initializers_as_inputs=False,
        )
    return onnx.load_from_string(buf.getvalue())


@contextlib.contextmanager
def _vdot_symbolic() -> Iterator[None]:
    """torch's spectral_norm computes sigma = vdot(u, W_mat @ v); the TorchScript exporter has no symbolic
    for aten::vdot. For real 1-D tensors vdot is exactly ONNX MatMul (1-D x 1-D -> scalar), so register that
    for the duration of one export."""
    import torch

    def vdot(g, a, b):
        return g.op("MatMul", a, b)

    torch.onnx.register_custom_op_symbolic("aten::vdot", vdot, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::vdot", OPSET)


def _seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)  # nothing below draws from torch's RNG, but keep any default init fixed too


def _torch_models():  # -> the sample_models.torch_models module
    """Import ``sample_models/torch_models.py`` as ``sample_models.torch_models`` (never as a top-level
    ``torch_models``, which is what running this file as a script would offer): a pickled module and a
    torch.export program record that qualified class name."""
    import importlib

    root = str(HERE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("sample_models.torch_models")


# ----------------------------------------------------------------------------------------------------
# onnx.helper helpers
# ----------------------------------------------------------------------------------------------------


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _helper_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="lipcheck-sample_models",
        producer_version="1",
    )


# ----------------------------------------------------------------------------------------------------
# the torch modules: eval mode, deterministic weights (the ONNX builders and the torch writer share them)
# ----------------------------------------------------------------------------------------------------

SN_POWER_ITERATIONS = 20  # train-mode forward passes that converge sn_discriminator's u/v
SN_LEGACY_STALE_LAYER = 3  # index among the 6 normalised layers: Conv 32->32 4x4 s2 (the 4th conv)
SN_LEGACY_STALE_ITERATIONS = 2  # that layer's stored u/v in sn_discriminator_legacy.pt: 2 iterations, not 20


def mlp_module():  # -> torch.nn.Module
    """torch_models.mlp() with mlp.onnx's weights, eval mode."""
    _seed_torch(1)
    rng = _rng(1)
    m = _torch_models().mlp()
    for lin in (m[1], m[3], m[5]):
        _fill_linear(rng, lin)
    return m.eval()


def cnn_bn_module():  # -> torch.nn.Module
    """torch_models.cnn_bn() with cnn_bn.onnx's weights and BN statistics, eval mode."""
    import torch

    _seed_torch(2)
    rng = _rng(2)
    m = _torch_models().cnn_bn()
    _fill_conv(rng, m.conv1)
    _fill_conv(rng, m.conv2)
    _fill_linear(rng, m.fc)
    _fill_bn(rng, m.bn1)
    _fill_bn(rng, m.bn2)
    with torch.no_grad():
        m.conv1.weight[0] *= 0.1
        m.conv2.weight[0] *= 0.1
    return m.eval()


def resnet_block_module():  # -> torch.nn.Module
    """torch_models.resnet_block() with resnet_block.onnx's weights (BN not folded), eval mode."""
    import torch

    _seed_torch(3)
    rng = _rng(3)
    m = _torch_models().resnet_block()
    for conv in (m.b1_conv1, m.b1_conv2, m.b2_conv1, m.b2_conv2, m.b2_short):
        _fill_conv(rng, conv)
    with torch.no_grad():  # residual branches are typically initialised/trained small
        m.b1_conv2.weight *= 0.5
        m.b2_conv2.weight *= 0.5
    for bn in (m.b1_bn1, m.b2_bn1, m.b2_short_bn):
        _fill_bn(rng, bn, hot_channel=None)
    _fill_linear(rng, m.fc)
    return m.eval()


def _sn_discriminator_converged(power_iterations: int):  # -> (torch.nn.Module, example input)
    """torch_models.sn_discriminator() with the sample weights, u/v restarted from reproducible uniform
    vectors and run through ``power_iterations`` train-mode forward passes in float64, then float32, eval."""
    import torch

    _seed_torch(4)
    rng = _rng(4)
    m = _torch_models().sn_discriminator()
    for layer in m:
        if isinstance(layer, torch.nn.Conv2d):
            _fill_conv(rng, layer)
    _fill_linear(rng, m[-1])
    # Restart u and v from reproducible uniform vectors (spectral_norm drew them with torch's RNG at
    # registration), then iterate in float64.
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("._u") or name.endswith("._v"):
                vec = rng.uniform(-1.0, 1.0, size=tuple(buf.shape))
                buf.copy_(_t((vec / np.linalg.norm(vec)).astype(np.float32)))
    m.double().train()
    x = _t(rng.uniform(-1.0, 1.0, size=(1, 3, 32, 32))).double()
    with torch.no_grad():
        for _ in range(power_iterations):
            m(x)
    m.float().eval()
    return m, x.float()


def sn_discriminator_module():  # -> torch.nn.Module
    """torch_models.sn_discriminator() (parametrizations.spectral_norm) with sn_discriminator.onnx's
    weights, u and v, eval mode (no power iteration in the forward pass)."""
    return _sn_discriminator_converged(SN_POWER_ITERATIONS)[0]


def sn_discriminator_legacy_module():  # -> torch.nn.Module
    """torch_models.sn_discriminator_legacy() (old hook-based torch.nn.utils.spectral_norm: weight_orig,
    weight_u, weight_v) with sn_discriminator.onnx's weights, u and v -- except layer
    SN_LEGACY_STALE_LAYER, whose u/v are deliberately stale (SN_LEGACY_STALE_ITERATIONS power iteration
    from the same start), so its stored sigma = u^T W v is well below the true one. Eval mode."""
    import torch

    converged = [layer for layer in sn_discriminator_module() if hasattr(layer, "parametrizations")]
    stale, _ = _sn_discriminator_converged(SN_LEGACY_STALE_ITERATIONS)
    stale_layers = [layer for layer in stale if hasattr(layer, "parametrizations")]
    _seed_torch(4)
    m = _torch_models().sn_discriminator_legacy()
    legacy = [layer for layer in m if hasattr(layer, "weight_orig")]
    assert len(legacy) == len(converged) == len(stale_layers) == 6
    with torch.no_grad():
        for i, (src, dst) in enumerate(zip(converged, legacy)):
            uv = (stale_layers if i == SN_LEGACY_STALE_LAYER else converged)[i].parametrizations.weight[0]
            dst.weight_orig.copy_(src.parametrizations.weight.original)
            dst.bias.copy_(src.bias)
            dst.weight_u.copy_(uv._u)
            dst.weight_v.copy_(uv._v)
    return m.eval()


def weight_norm_module():  # -> torch.nn.Module
    """torch_models.weight_norm_net() with deterministic weights: v He-uniform, g ~ U(0.5, 1.5) per output
    channel (so W = g v / ||v|| has row norms g), biases U(-0.1, 0.1). Eval mode."""
    import torch

    _seed_torch(10)
    rng = _rng(10)
    m = _torch_models().weight_norm_net()
    with torch.no_grad():
        for layer in (m[0], m[2], m[5]):
            g = layer.parametrizations.weight.original0
            v = layer.parametrizations.weight.original1
            v.copy_(_t(_he(rng, tuple(v.shape), int(np.prod(v.shape[1:])))))
            g.copy_(_t(_uniform(rng, tuple(g.shape), 0.5, 1.5)))
            layer.bias.copy_(_t(_uniform(rng, tuple(layer.bias.shape), -0.1, 0.1)))
    return m.eval()


def attention_module():  # -> torch.nn.Module
    """torch_models.attention() with attention.onnx's weights, eval mode."""
    import torch

    _seed_torch(6)
    rng = _rng(6)
    m = _torch_models().attention()
    for lin in (m.q, m.k, m.v, m.o):
        _fill_linear(rng, lin)
    with torch.no_grad():
        m.ln.weight.copy_(_t(_uniform(rng, (16,), 0.8, 1.2)))
        m.ln.bias.copy_(_t(_uniform(rng, (16,), -0.1, 0.1)))
    return m.eval()


def multi_input_module():  # -> torch.nn.Module
    """torch_models.multi_input() with multi_input.onnx's weights, eval mode."""
    _seed_torch(8)
    rng = _rng(8)
    m = _torch_models().multi_input()
    for lin in (m.fa, m.fb, m.head):
        _fill_linear(rng, lin)
    return m.eval()


def dynamic_batch_module():  # -> torch.nn.Module
    """torch_models.dynamic_batch() with dynamic_batch.onnx's weights, eval mode."""
    _seed_torch(9)
    rng = _rng(9)
    m = _torch_models().dynamic_batch()
    _fill_linear(rng, m[1])
    _fill_linear(rng, m[3])
    return m.eval()


MODULES: dict[str, Callable] = {
    "mlp": mlp_module,
    "cnn_bn": cnn_bn_module,
    "resnet_block": resnet_block_module,
    "sn_discriminator": sn_discriminator_module,
    "sn_discriminator_legacy": sn_discriminator_legacy_module,
    "weight_norm": weight_norm_module,
    "attention": attention_module,
    "multi_input": multi_input_module,
    "dynamic_batch": dynamic_batch_module,
}
"""Every torch-built sample as an eval-mode module with its deterministic weights."""


# ----------------------------------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------------------------------


def build_mlp() -> onnx.ModelProto:
    """Flatten -> Gemm(256->64) -> Relu -> Gemm(64->32) -> Relu -> Gemm(32->10); input 1x1x16x16."""
    import torch

    return _export(mlp_module(), (torch.zeros(1, 1, 16, 16),), ["input"], ["logits"])


def build_cnn_bn() -> onnx.ModelProto:
    """Conv3x3 -> BN -> Relu -> MaxPool2 -> Conv3x3 -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm.

    BatchNormalization nodes are kept (exported with TrainingMode.PRESERVE on an eval-mode module, so the
    exporter's Conv+BN folding pass does not run). In each BN, channel 0 has a tiny running_var (scale ~6)
    while the preceding conv's filter 0 is scaled down x0.1: BN's own constant is large, but the folded
    Conv+BN operator is not -- a per-op product is loose here, folding is tight."""
    import torch

    x = torch.zeros(1, 3, 32, 32)
    return _export(
        cnn_bn_module(), (x,), ["input"], ["logits"], preserve_training_mode=True, do_constant_folding=False
    )


def build_resnet_block() -> onnx.ModelProto:
    """Identity residual block, then a downsampling block with a 1x1 stride-2 projection shortcut, then
    GlobalAveragePool -> Flatten -> Gemm. Exported the usual way (EVAL, constant folding): the exporter
    folds every BatchNorm into its Conv, as in real exported ResNets. Input 1x8x16x16."""
    import torch

    return _export(resnet_block_module(), (torch.zeros(1, 8, 16, 16),), ["input"], ["logits"])


def build_sn_discriminator() -> onnx.ModelProto:
    """SN-GAN style discriminator: torch.nn.utils.parametrizations.spectral_norm on every Conv/Linear,
    LeakyRelu(0.1), 4x4 stride-2 downsampling convs. Input 1x3x32x32 -> 1x1.

    u/v are converged by 20 train-mode forward passes (one power iteration each, on top of the 15 that
    spectral_norm runs at registration), in float64 so the result is bit-reproducible, then the model is
    cast to float32 and put in eval mode. Exported with do_constant_folding=False, so every weight reaches
    its Conv/Gemm through a constant subgraph on initializers:
    Flatten(original) -> MatMul(., v) -> MatMul(u, .) = sigma -> Div(original, sigma)."""
    m, x = _sn_discriminator_converged(SN_POWER_ITERATIONS)
    with _vdot_symbolic():
        return _export(m, (x,), ["input"], ["score"], do_constant_folding=False)


def build_strided_dilated_depthwise() -> onnx.ModelProto:
    """onnx.helper graph, input 1x4x16x16 -> 1x8x8x8:
    Conv s2 -> Relu -> Conv dil2 -> Relu -> depthwise Conv (group 8, asymmetric pads [1,0,1,2]) -> Relu
    -> zero Pad (asymmetric, end-only) -> grouped Conv (group 2, 2x2) -> Relu
    -> ConvTranspose (3x3, stride 2, pads 1, output_padding 1) -> Relu -> AveragePool 2x2 s2."""
    rng = _rng(5)
    inits = [
        numpy_helper.from_array(_he(rng, (8, 4, 3, 3), 4 * 9), "w_s2"),
        numpy_helper.from_array(_uniform(rng, (8,), -0.1, 0.1), "b_s2"),
        numpy_helper.from_array(_he(rng, (8, 8, 3, 3), 8 * 9), "w_dil"),
        numpy_helper.from_array(_uniform(rng, (8,), -0.1, 0.1), "b_dil"),
        numpy_helper.from_array(_he(rng, (8, 1, 3, 3), 9), "w_dw"),
        numpy_helper.from_array(_uniform(rng, (8,), -0.1, 0.1), "b_dw"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64), "pad_amounts"),
        numpy_helper.from_array(_he(rng, (16, 4, 2, 2), 4 * 4), "w_grp"),
        numpy_helper.from_array(_uniform(rng, (16,), -0.1, 0.1), "b_grp"),
        # ConvTranspose weight layout: (C_in, C_out/group, kH, kW)
        numpy_helper.from_array(_he(rng, (16, 8, 3, 3), 16 * 9 // 4), "w_tr"),
        numpy_helper.from_array(_uniform(rng, (8,), -0.1, 0.1), "b_tr"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "w_s2", "b_s2"], ["c1"], name="conv_stride2",
            kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w_dil", "b_dil"], ["c2"], name="conv_dilation2",
            kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node(
            "Conv", ["r2", "w_dw", "b_dw"], ["c3"], name="conv_depthwise_asym_pads",
            kernel_shape=[3, 3], group=8, pads=[1, 0, 1, 2],  # [top, left, bottom, right]
        ),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Pad", ["r3", "pad_amounts"], ["p4"], name="pad_end_zero", mode="constant"),
        helper.make_node(
            "Conv", ["p4", "w_grp", "b_grp"], ["c4"], name="conv_grouped",
            kernel_shape=[2, 2], group=2, pads=[0, 0, 0, 0],
        ),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node(
            "ConvTranspose", ["r4", "w_tr", "b_tr"], ["c5"], name="convtranspose_stride2",
            kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
        ),
        helper.make_node("Relu", ["c5"], ["r5"], name="relu5"),
        helper.make_node(
            "AveragePool", ["r5"], ["output"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "strided_dilated_depthwise",
        [_vi("input", [1, 4, 16, 16])],
        [_vi("output", [1, 8, 8, 8])],
        inits,
    )
    return _helper_model(graph)


def build_attention() -> onnx.ModelProto:
    """Pre-LN single-head self-attention with a residual: y = x + O(softmax(Q K^T / 4) V), Q/K/V = LN(x) W.
    Input 1x8x16 (batch, tokens, dim). Q.K^T multiplies two variable tensors: no global Lipschitz constant."""
    import torch

    return _export(attention_module(), (torch.zeros(1, 8, 16),), ["input"], ["output"])


def build_constant_weights() -> onnx.ModelProto:
    """onnx.helper MLP whose weights are Constant nodes (no initializers): input 1x32
    -> Gemm(transB=1, W1 16x32, b1) -> Relu -> MatMul(W2 16x10) -> Add(b2) -> Tanh -> Mul(0.5)
    -> output 1x10."""
    rng = _rng(7)

    def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(arr, name)
        )

    nodes = [
        const("W1", _he(rng, (16, 32), 32)),
        const("b1", _uniform(rng, (16,), -0.1, 0.1)),
        const("W2", _he(rng, (16, 10), 16)),
        const("b2", _uniform(rng, (10,), -0.1, 0.1)),
        const("half", np.array(0.5, dtype=np.float32)),
        helper.make_node("Gemm", ["input", "W1", "b1"], ["g1"], name="gemm1", transB=1),
        helper.make_node("Relu", ["g1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="matmul2"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="add_bias2"),
        helper.make_node("Tanh", ["a2"], ["t2"], name="tanh"),
        helper.make_node("Mul", ["t2", "half"], ["output"], name="mul_half"),
    ]
    graph = helper.make_graph(nodes, "constant_weights", [_vi("input", [1, 32])], [_vi("output", [1, 10])])
    return _helper_model(graph)


def build_multi_input() -> onnx.ModelProto:
    """Two float inputs a (1x16) and b (1x8): Gemm->Relu and Gemm->Tanh branches, Concat, Gemm -> 1x4."""
    import torch

    return _export(multi_input_module(), (torch.zeros(1, 16), torch.zeros(1, 8)), ["a", "b"], ["output"])


def build_dynamic_batch() -> onnx.ModelProto:
    """MLP with a symbolic batch dimension: input N x 1 x 8 x 8 -> Flatten -> Gemm(64->32) -> Relu
    -> Gemm(32->10).
    lipcheck needs --input-shape 1,1,8,8 (or infers batch 1, if it chooses to)."""
    import torch

    return _export(
        dynamic_batch_module(),
        (torch.zeros(2, 1, 8, 8),),
        ["input"],
        ["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )


def build_weight_norm() -> onnx.ModelProto:
    """Conv3x3 (3->8) -> Relu -> Conv3x3 stride 2 (8->16) -> Relu -> Flatten -> Gemm(1024->10), each with
    torch.nn.utils.parametrizations.weight_norm (dim 0). Input 1x3x16x16. Exported with
    do_constant_folding=False: every weight is a constant subgraph g * v / ReduceL2(v) on initializers."""
    import torch

    return _export(
        weight_norm_module(), (torch.zeros(1, 3, 16, 16),), ["input"], ["logits"], do_constant_folding=False
    )


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": build_mlp,
    "cnn_bn": build_cnn_bn,
    "resnet_block": build_resnet_block,
    "sn_discriminator": build_sn_discriminator,
    "strided_dilated_depthwise": build_strided_dilated_depthwise,
    "attention": build_attention,
    "constant_weights": build_constant_weights,
    "multi_input": build_multi_input,
    "dynamic_batch": build_dynamic_batch,
    "weight_norm": build_weight_norm,
}
"""The committed sample_models/*.onnx (each one has golden CLI outputs in tests/golden)."""

EXTRA_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {}
"""Deterministic ONNX exports that are NOT committed (no golden CLI outputs yet): written only when named
(``generate.py --out DIR weight_norm``); tests/test_torch_sample_models.py exports them in memory."""


# ----------------------------------------------------------------------------------------------------
# the PyTorch files (sample_models/torch/)
# ----------------------------------------------------------------------------------------------------


def _torch_save(obj) -> bytes:
    """torch.save into memory: the zip's top folder is then "archive/" whatever the file is called."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _strip_torchscript_debug_info(data: bytes) -> bytes:
    """Rewrite a torch.jit.save archive without its ``code/*.debug_pkl`` records. Those map the generated
    code back to Python source lines and name each source file by absolute path (torch's site-packages,
    this checkout), so they differ between machines; torch.jit.load does not need them. Records are copied
    with torch's own zip writer (same alignment, zeroed timestamps, content-derived serialization_id)."""
    import torch

    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    writer.set_min_version(int(bytes(reader.get_record("version")).decode().strip()))
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name in ("version", ".data/serialization_id"):
            continue
        record = bytes(reader.get_record(name))
        writer.write_record(name, record, len(record))
    writer.write_end_of_file()
    del writer
    return out.getvalue()


def torch_mlp_torchscript() -> bytes:
    """TorchScript (torch.jit.trace, torch.jit.save) of the MLP; no stored example input."""
    import torch

    traced = torch.jit.trace(mlp_module(), (torch.zeros(1, 1, 16, 16),), _store_inputs=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return _strip_torchscript_debug_info(buf.getvalue())


def torch_mlp_pickled() -> bytes:
    """Whole pickled module, torch.save(model): class sample_models.torch_models.MLP."""
    m = mlp_module()
    if type(m).__module__ != "sample_models.torch_models":
        raise RuntimeError(f"{type(m).__qualname__} comes from {type(m).__module__}, not sample_models.torch_models")
    return _torch_save(m)


def torch_cnn_bn_export() -> bytes:
    """torch.export.export(model, (zeros(1, 3, 32, 32),)) saved with torch.export.save; carries its input."""
    import torch

    program = torch.export.export(cnn_bn_module(), (torch.zeros(1, 3, 32, 32),))
    for node in program.graph.nodes:  # absolute source paths of this machine: drop them
        node.meta.pop("stack_trace", None)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def torch_resnet_block_state_dict() -> bytes:
    """State dict, torch.save(model.state_dict()); arch torch_models:resnet_block."""
    return _torch_save(resnet_block_module().state_dict())


def torch_resnet_block_checkpoint() -> bytes:
    """Training checkpoint {"epoch", "model_state_dict" (DataParallel "module." keys), "optimizer"}."""
    from collections import OrderedDict

    import torch

    m = resnet_block_module()
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    state = OrderedDict(("module." + k, v) for k, v in m.state_dict().items())
    return _torch_save({"epoch": 3, "model_state_dict": state, "optimizer": optimizer.state_dict()})


def torch_sn_discriminator() -> bytes:
    """State dict with parametrizations.spectral_norm (new style); arch torch_models:sn_discriminator."""
    return _torch_save(sn_discriminator_module().state_dict())


def torch_sn_discriminator_legacy() -> bytes:
    """State dict with the old torch.nn.utils.spectral_norm hooks, one layer's u/v stale; arch
    torch_models:sn_discriminator_legacy."""
    return _torch_save(sn_discriminator_legacy_module().state_dict())


def torch_weight_norm() -> bytes:
    """State dict with parametrizations.weight_norm; arch torch_models:weight_norm_net."""
    return _torch_save(weight_norm_module().state_dict())


TORCH_FILES: dict[str, Callable[[], bytes]] = {
    "mlp.ts.pt": torch_mlp_torchscript,
    "mlp.pickled.pt": torch_mlp_pickled,
    "cnn_bn.pt2": torch_cnn_bn_export,
    "resnet_block.state_dict.pt": torch_resnet_block_state_dict,
    "resnet_block.ckpt": torch_resnet_block_checkpoint,
    "sn_discriminator.pt": torch_sn_discriminator,
    "sn_discriminator_legacy.pt": torch_sn_discriminator_legacy,
    "weight_norm.pt": torch_weight_norm,
}
"""sample_models/torch/<file name> -> its bytes."""


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------


def _finalize(name: str, model: onnx.ModelProto) -> bytes:
    """Strip anything machine-specific, describe the model, check it, serialise deterministically."""
    model.doc_string = " ".join(({**MODELS, **EXTRA_MODELS}[name].__doc__ or "").split())
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    del model.metadata_props[:]
    helper.set_model_props(model, {"lipcheck.sample_model": name, "generator": "sample_models/generate.py"})
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    if len(data) >= MAX_BYTES:
        raise RuntimeError(f"{name}.onnx is {len(data)} bytes, the limit is {MAX_BYTES}")
    return data


def generate(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the ONNX models (default: every committed one, MODELS) into out_dir."""
    builders = {**MODELS, **EXTRA_MODELS}
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names or list(MODELS):
        data = _finalize(name, builders[name]())
        path = out_dir / f"{name}.onnx"
        path.write_bytes(data)
        written[name] = path
    return written


def generate_torch(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the PyTorch files (default: all of TORCH_FILES) into out_dir (normally <samples>/torch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names or list(TORCH_FILES):
        data = TORCH_FILES[name]()
        if len(data) >= MAX_BYTES:
            raise RuntimeError(f"{name} is {len(data)} bytes, the limit is {MAX_BYTES}")
        path = out_dir / name
        path.write_bytes(data)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: this folder); "
                        "the PyTorch files go to its torch/ subfolder")
    parser.add_argument("--list", action="store_true", help="list the models and files, and exit")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--onnx", action="store_true", help="only the committed ONNX models")
    only.add_argument("--torch", action="store_true", help="only the PyTorch files")
    parser.add_argument(
        "names", nargs="*",
        help=f"only these (default: all committed ones): {', '.join([*MODELS, *EXTRA_MODELS, *TORCH_FILES])}",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MODELS) - set(EXTRA_MODELS) - set(TORCH_FILES))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    if args.list:
        for name, fn in {**MODELS, **EXTRA_MODELS}.items():
            extra = " (not committed)" if name in EXTRA_MODELS else ""
            print(f"{name}.onnx{extra}: {(fn.__doc__ or '').strip().splitlines()[0]}")
        for name, writer in TORCH_FILES.items():
            print(f"torch/{name}: {(writer.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.names:
        onnx_names = [n for n in args.names if n not in TORCH_FILES]
        torch_names = [n for n in args.names if n in TORCH_FILES]
    else:
        onnx_names = [] if args.torch else list(MODELS)
        torch_names = [] if args.onnx else list(TORCH_FILES)
    import hashlib

    written = []
    if onnx_names:
        written += list(generate(args.out, onnx_names).values())
    if torch_names:
        written += list(generate_torch(args.out / "torch", torch_names).values())
    for path in written:
        data = path.read_bytes()
        print(f"{hashlib.sha256(data).hexdigest()}  {len(data):>8d}  {path.relative_to(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
