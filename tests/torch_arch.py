"""Small architectures for the PyTorch loader tests (importable as ``tests.torch_arch`` from the repo root, or
as the file ``tests/torch_arch.py``)."""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """Conv → BN → ReLU → Conv (stride 2) → ReLU → Flatten → Linear; input 1×3×8×8."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def small_net(width: int = 4, classes: int = 3) -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet(width, classes)
    with torch.no_grad():
        bn = net.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return net.eval()


def not_a_module() -> int:
    return 3
