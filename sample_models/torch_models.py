"""The torch architectures behind lipcheck's torch-built sample models, as ``--arch`` factories.

Each factory takes no arguments and returns a fresh module with torch's default (random) initialisation;
the sample weights come from a state dict. The deterministic weights themselves are filled in by
``sample_models/generate.py`` (``mlp_module()``, ``resnet_block_module()``, ...), which builds on these
factories. Usable both ways lipcheck accepts an ``--arch``::

    --arch sample_models/torch_models.py:resnet_block      # file path
    --arch sample_models.torch_models:resnet_block         # import path (repo root on sys.path)

Classes of a whole pickled module (``torch/mlp.pickled.pt`` pickles :class:`MLP`) must be importable as
``sample_models.torch_models.<Class>``: keep them here and do not rename them.

| factory | input shape | ONNX sample |
|---|---|---|
| ``mlp`` | 1x1x16x16 | mlp.onnx |
| ``cnn_bn`` | 1x3x32x32 | cnn_bn.onnx |
| ``resnet_block`` | 1x8x16x16 | resnet_block.onnx |
| ``sn_discriminator`` | 1x3x32x32 | sn_discriminator.onnx |
| ``sn_discriminator_legacy`` | 1x3x32x32 | (sn_discriminator.onnx, one layer's u/v differ) |
| ``weight_norm_net`` | 1x3x16x16 | (exported on the fly: generate.build_weight_norm) |
| ``attention`` | 1x8x16 | attention.onnx |
| ``multi_input`` | 1x16 and 1x8 | multi_input.onnx |
| ``dynamic_batch`` | Nx1x8x8 | dynamic_batch.onnx |
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "INPUT_SHAPES",
    "MLP",
    "Attention",
    "CnnBn",
    "ResNetTiny",
    "TwoInputs",
    "attention",
    "cnn_bn",
    "dynamic_batch",
    "mlp",
    "multi_input",
    "resnet_block",
    "sn_discriminator",
    "sn_discriminator_legacy",
    "weight_norm_net",
]


class MLP(nn.Sequential):
    """Flatten -> Linear(256->64) -> ReLU -> Linear(64->32) -> ReLU -> Linear(32->10); input 1x1x16x16."""

    def __init__(self) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
        )


class CnnBn(nn.Module):
    """Conv3x3 -> BN -> ReLU -> MaxPool2 -> Conv3x3 -> BN -> ReLU -> AdaptiveAvgPool(1) -> Flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


class ResNetTiny(nn.Module):
    """An identity residual block, a downsampling block with a 1x1 stride-2 projection shortcut, then
    AdaptiveAvgPool(1) -> Flatten -> Linear(16->10)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b1_conv2(torch.relu(self.b1_bn1(self.b1_conv1(x))))
        x = torch.relu(x + h)
        h = self.b2_conv2(torch.relu(self.b2_bn1(self.b2_conv1(x))))
        x = torch.relu(self.b2_short_bn(self.b2_short(x)) + h)
        return self.fc(torch.flatten(self.gap(x), 1))


class Attention(nn.Module):
    """Pre-LN single-head self-attention with a residual: y = x + O(softmax(Q K^T / sqrt(d)) V)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(d)
        self.ln = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        return x + self.o(torch.matmul(a, v))


class TwoInputs(nn.Module):
    """Two inputs a (1x16), b (1x8): Linear->ReLU and Linear->Tanh branches, concatenated, Linear -> 1x4."""

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(16, 12)
        self.fb = nn.Linear(8, 12)
        self.head = nn.Linear(24, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.fa(a)), torch.tanh(self.fb(b))], dim=1))


# ----------------------------------------------------------------------------------------------------
# factories (the --arch entry points)
# ----------------------------------------------------------------------------------------------------


def mlp() -> MLP:
    return MLP()


def cnn_bn() -> CnnBn:
    return CnnBn()


def resnet_block() -> ResNetTiny:
    return ResNetTiny()


def attention() -> Attention:
    return Attention()


def multi_input() -> TwoInputs:
    return TwoInputs()


def dynamic_batch() -> nn.Sequential:
    """Flatten -> Linear(64->32) -> ReLU -> Linear(32->10); input Nx1x8x8."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _discriminator_layers() -> tuple[list[nn.Conv2d], nn.Linear]:
    convs = [
        nn.Conv2d(3, 16, 3, 1, 1),  # 32x32
        nn.Conv2d(16, 16, 4, 2, 1),  # -> 16x16
        nn.Conv2d(16, 32, 3, 1, 1),
        nn.Conv2d(32, 32, 4, 2, 1),  # -> 8x8
        nn.Conv2d(32, 32, 4, 2, 1),  # -> 4x4
    ]
    return convs, nn.Linear(32 * 4 * 4, 1)


def _discriminator(sn) -> nn.Sequential:
    convs, head = _discriminator_layers()
    mods: list[nn.Module] = []
    for conv in convs:
        mods += [sn(conv), nn.LeakyReLU(0.1)]
    mods += [nn.Flatten(), sn(head)]
    return nn.Sequential(*mods)


def sn_discriminator() -> nn.Sequential:
    """SN-GAN style discriminator, ``torch.nn.utils.parametrizations.spectral_norm`` (new style) on every
    Conv/Linear; LeakyReLU(0.1); input 1x3x32x32 -> 1x1. State-dict keys per layer:
    ``parametrizations.weight.original``, ``parametrizations.weight.0._u``, ``parametrizations.weight.0._v``."""
    from torch.nn.utils.parametrizations import spectral_norm

    return _discriminator(spectral_norm)


def sn_discriminator_legacy() -> nn.Sequential:
    """The same discriminator with the old hook-based ``torch.nn.utils.spectral_norm``: state-dict keys per
    layer ``weight_orig``, ``weight_u``, ``weight_v``."""
    from torch.nn.utils import spectral_norm

    return _discriminator(spectral_norm)


def weight_norm_net() -> nn.Sequential:
    """``torch.nn.utils.parametrizations.weight_norm`` (dim 0) on every Conv/Linear: Conv3x3 (3->8)
    -> ReLU -> Conv3x3 stride 2 (8->16) -> ReLU -> Flatten -> Linear(1024->10); input 1x3x16x16.
    State-dict keys per layer: ``parametrizations.weight.original0`` (g), ``parametrizations.weight.original1`` (v)."""
    from torch.nn.utils.parametrizations import weight_norm

    return nn.Sequential(
        weight_norm(nn.Conv2d(3, 8, 3, padding=1)),
        nn.ReLU(),
        weight_norm(nn.Conv2d(8, 16, 3, stride=2, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        weight_norm(nn.Linear(16 * 8 * 8, 10)),
    )


INPUT_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "mlp": ((1, 1, 16, 16),),
    "cnn_bn": ((1, 3, 32, 32),),
    "resnet_block": ((1, 8, 16, 16),),
    "sn_discriminator": ((1, 3, 32, 32),),
    "sn_discriminator_legacy": ((1, 3, 32, 32),),
    "weight_norm_net": ((1, 3, 16, 16),),
    "attention": ((1, 8, 16),),
    "multi_input": ((1, 16), (1, 8)),
    "dynamic_batch": ((1, 1, 8, 8),),
}
"""The input shape(s) each factory's module is analysed with (batch 1)."""
