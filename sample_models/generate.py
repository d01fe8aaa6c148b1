#!/usr/bin/env python
"""Deterministic generator for lipcheck's sample ONNX models.

Usage::

    python sample_models/generate.py              # (re)write the models next to this file
    python sample_models/generate.py --out DIR    # write them somewhere else (the tests do this)
    python sample_models/generate.py --list       # names and one-line descriptions

Running it twice gives byte-identical files (``sha256sum sample_models/*.onnx``). How that is kept:

* Every weight, statistic and input comes from ``numpy.random.default_rng(seed)`` *uniform* draws
  (pure arithmetic, identical on every machine), never from torch's RNG (its vectorised ``normal_``
  differs between CPU instruction sets) nor from numpy's Gaussian sampler (libm in its tail).
* The one iterative computation (the spectral-norm power iterations of ``sn_discriminator``) runs in
  float64 and is rounded to float32 afterwards, so BLAS summation order cannot change a stored bit.
* Models are re-serialised with ``SerializeToString(deterministic=True)`` and carry no doc strings or
  file paths from the exporting machine.

The torch-built models are exported with the TorchScript exporter (``dynamo=False``, opset 17); their
bytes depend on the torch version (``producer_version`` says which one made them: 2.13.0, pinned in
constraints.txt). The ``onnx.helper``-built ones depend only on this file.
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


def _fill_linear(rng: np.random.Generator, lin, gain: float = 1.0, bias: float = 0.1) -> None:
    import torch

    with torch.no_grad():
        lin.weight.copy_(_t(_he(rng, tuple(lin.weight.shape), lin.in_features, gain)))
        if lin.bias is not None:
            lin.bias.copy_(_t(_uniform(rng, tuple(lin.bias.shape), -bias, bias)))


def _fill_conv(rng: np.random.Generator, conv, gain: float = 1.0, bias: float = 0.1) -> None:
    import torch

    w = conv.weight
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
# the models
# ----------------------------------------------------------------------------------------------------


def build_mlp() -> onnx.ModelProto:
    """Flatten -> Gemm(256->64) -> Relu -> Gemm(64->32) -> Relu -> Gemm(32->10); input 1x1x16x16."""
    import torch
    from torch import nn

    _seed_torch(1)
    rng = _rng(1)
    m = nn.Sequential(
        nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    for lin in (m[1], m[3], m[5]):
        _fill_linear(rng, lin)
    x = torch.zeros(1, 1, 16, 16)
    return _export(m, (x,), ["input"], ["logits"])


def build_cnn_bn() -> onnx.ModelProto:
    """Conv3x3 -> BN -> Relu -> MaxPool2 -> Conv3x3 -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm.

    BatchNormalization nodes are kept (exported with TrainingMode.PRESERVE on an eval-mode module, so the
    exporter's Conv+BN folding pass does not run). In each BN, channel 0 has a tiny running_var (scale ~6)
    while the preceding conv's filter 0 is scaled down x0.1: BN's own constant is large, but the folded
    Conv+BN operator is not -- a per-op product is loose here, folding is tight."""
    import torch
    from torch import nn

    class CnnBn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(torch.flatten(self.gap(x), 1))

    _seed_torch(2)
    rng = _rng(2)
    m = CnnBn()
    _fill_conv(rng, m.conv1)
    _fill_conv(rng, m.conv2)
    _fill_linear(rng, m.fc)
    _fill_bn(rng, m.bn1)
    _fill_bn(rng, m.bn2)
    with torch.no_grad():
        m.conv1.weight[0] *= 0.1
        m.conv2.weight[0] *= 0.1
    m.eval()
    x = torch.zeros(1, 3, 32, 32)
    return _export(m, (x,), ["input"], ["logits"], preserve_training_mode=True, do_constant_folding=False)


def build_resnet_block() -> onnx.ModelProto:
    """Identity residual block, then a downsampling block with a 1x1 stride-2 projection shortcut, then
    GlobalAveragePool -> Flatten -> Gemm. Exported the usual way (EVAL, constant folding): the exporter
    folds every BatchNorm into its Conv, as in real exported ResNets. Input 1x8x16x16."""
    import torch
    from torch import nn

    class ResNetTiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # block 1: out = relu(x + conv2(relu(bn1(conv1(x)))))
            self.b1_conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.b1_bn1 = nn.BatchNorm2d(8)
            self.b1_conv2 = nn.Conv2d(8, 8, 3, padding=1)
            # block 2 (downsampling): out = relu(bn_s(conv_s(x)) + conv2(relu(bn1(conv1_stride2(x)))))
            self.b2_conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
            self.b2_bn1 = nn.BatchNorm2d(16)
            self.b2_conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.b2_short = nn.Conv2d(8, 16, 1, stride=2, bias=False)
            self.b2_short_bn = nn.BatchNorm2d(16)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.b1_conv2(torch.relu(self.b1_bn1(self.b1_conv1(x))))
            x = torch.relu(x + h)
            h = self.b2_conv2(torch.relu(self.b2_bn1(self.b2_conv1(x))))
            x = torch.relu(self.b2_short_bn(self.b2_short(x)) + h)
            return self.fc(torch.flatten(self.gap(x), 1))

    _seed_torch(3)
    rng = _rng(3)
    m = ResNetTiny()
    for conv in (m.b1_conv1, m.b1_conv2, m.b2_conv1, m.b2_conv2, m.b2_short):
        _fill_conv(rng, conv)
    with torch.no_grad():  # residual branches are typically initialised/trained small
        m.b1_conv2.weight *= 0.5
        m.b2_conv2.weight *= 0.5
    for bn in (m.b1_bn1, m.b2_bn1, m.b2_short_bn):
        _fill_bn(rng, bn, hot_channel=None)
    _fill_linear(rng, m.fc)
    x = torch.zeros(1, 8, 16, 16)
    return _export(m, (x,), ["input"], ["logits"])


def build_sn_discriminator() -> onnx.ModelProto:
    """SN-GAN style discriminator: torch.nn.utils.parametrizations.spectral_norm on every Conv/Linear,
    LeakyRelu(0.1), 4x4 stride-2 downsampling convs. Input 1x3x32x32 -> 1x1.

    u/v are converged by 20 train-mode forward passes (one power iteration each, on top of the 15 that
    spectral_norm runs at registration), in float64 so the result is bit-reproducible, then the model is
    cast to float32 and put in eval mode. Exported with do_constant_folding=False, so every weight reaches
    its Conv/Gemm through a constant subgraph on initializers:
    Flatten(original) -> MatMul(., v) -> MatMul(u, .) = sigma -> Div(original, sigma)."""
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm

    _seed_torch(4)
    rng = _rng(4)
    layers = [
        nn.Conv2d(3, 16, 3, 1, 1),  # 32x32
        nn.Conv2d(16, 16, 4, 2, 1),  # -> 16x16
        nn.Conv2d(16, 32, 3, 1, 1),
        nn.Conv2d(32, 32, 4, 2, 1),  # -> 8x8
        nn.Conv2d(32, 32, 4, 2, 1),  # -> 4x4
    ]
    for conv in layers:
        _fill_conv(rng, conv)
    head = nn.Linear(32 * 4 * 4, 1)
    _fill_linear(rng, head)
    mods: list[nn.Module] = []
    for conv in layers:
        mods += [spectral_norm(conv), nn.LeakyReLU(0.1)]
    mods += [nn.Flatten(), spectral_norm(head)]
    m = nn.Sequential(*mods)

    # Restart u and v from reproducible uniform vectors, then iterate in float64.
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("._u") or name.endswith("._v"):
                vec = rng.uniform(-1.0, 1.0, size=tuple(buf.shape))
                buf.copy_(_t((vec / np.linalg.norm(vec)).astype(np.float32)))
    m.double().train()
    x = _t(rng.uniform(-1.0, 1.0, size=(1, 3, 32, 32))).double()
    with torch.no_grad():
        for _ in range(20):
            m(x)
    m.float().eval()
    with _vdot_symbolic():
        return _export(m, (x.float(),), ["input"], ["score"], do_constant_folding=False)


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
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, d: int = 16) -> None:
            super().__init__()
            self.scale = 1.0 / math.sqrt(d)
            self.ln = nn.LayerNorm(d)
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, d)
            self.v = nn.Linear(d, d)
            self.o = nn.Linear(d, d)

        def forward(self, x):
            h = self.ln(x)
            q, k, v = self.q(h), self.k(h), self.v(h)
            a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
            return x + self.o(torch.matmul(a, v))

    _seed_torch(6)
    rng = _rng(6)
    m = Attention()
    for lin in (m.q, m.k, m.v, m.o):
        _fill_linear(rng, lin)
    with torch.no_grad():
        m.ln.weight.copy_(_t(_uniform(rng, (16,), 0.8, 1.2)))
        m.ln.bias.copy_(_t(_uniform(rng, (16,), -0.1, 0.1)))
    x = torch.zeros(1, 8, 16)
    return _export(m, (x,), ["input"], ["output"])


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
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fa = nn.Linear(16, 12)
            self.fb = nn.Linear(8, 12)
            self.head = nn.Linear(24, 4)

        def forward(self, a, b):
            return self.head(torch.cat([torch.relu(self.fa(a)), torch.tanh(self.fb(b))], dim=1))

    _seed_torch(8)
    rng = _rng(8)
    m = TwoInputs()
    for lin in (m.fa, m.fb, m.head):
        _fill_linear(rng, lin)
    return _export(m, (torch.zeros(1, 16), torch.zeros(1, 8)), ["a", "b"], ["output"])


def build_dynamic_batch() -> onnx.ModelProto:
    """MLP with a symbolic batch dimension: input N x 1 x 8 x 8 -> Flatten -> Gemm(64->32) -> Relu
    -> Gemm(32->10).
    lipcheck needs --input-shape 1,1,8,8 (or infers batch 1, if it chooses to)."""
    import torch
    from torch import nn

    _seed_torch(9)
    rng = _rng(9)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    _fill_linear(rng, m[1])
    _fill_linear(rng, m[3])
    return _export(
        m,
        (torch.zeros(2, 1, 8, 8),),
        ["input"],
        ["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
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
}


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------


def _finalize(name: str, model: onnx.ModelProto) -> bytes:
    """Strip anything machine-specific, describe the model, check it, serialise deterministically."""
    model.doc_string = " ".join((MODELS[name].__doc__ or "").split())
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
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names or list(MODELS):
        data = _finalize(name, MODELS[name]())
        path = out_dir / f"{name}.onnx"
        path.write_bytes(data)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: this folder)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("names", nargs="*", help=f"only these models (default: all): {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    if args.list:
        for name, fn in MODELS.items():
            print(f"{name}.onnx: {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    import hashlib

    for path in generate(args.out, args.names or None).values():
        data = path.read_bytes()
        print(f"{hashlib.sha256(data).hexdigest()}  {len(data):>8d}  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
