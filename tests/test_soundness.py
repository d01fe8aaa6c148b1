"""Soundness over random architectures: the certified bound is >= every measured ratio.

Random torch modules (convs with strides/dilations/groups/padding, BN, pools, residuals, concat, pads,
upsampling, activations) are exported to ONNX; lipcheck bounds the ONNX file; pairs (x, y) are sampled and
pushed up by gradient ascent on ||f(x)-f(y)||/||x-y|| in torch, and the final ratio is measured with
onnxruntime. A certified bound below any measured ratio is a bug.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lipcheck

pytestmark = pytest.mark.slow  # .ci/run runs the slow set too: python -m pytest -q -m slow


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Branches(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), lambda: nn.LeakyReLU(-1.3), nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU,
        nn.GELU, nn.Softplus, nn.Hardswish]


@st.composite
def architectures(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    c = draw(st.integers(1, 4))
    h = draw(st.integers(6, 12))
    w = draw(st.integers(6, 12))
    shape = (1, c, h, w)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "act", "bn", "maxpool", "avgpool", "residual", "concat",
                                     "pad", "convT", "upsample"]))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            d = draw(st.integers(1, 2))
            p = draw(st.integers(0, 2))
            if (k - 1) * d + 1 > min(h, w) + 2 * p:
                continue
            out = draw(st.integers(1, 6))
            g = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0 and out % g == 0] or [1]))
            if out % g:
                g = 1
            layers.append(nn.Conv2d(c, out, k, stride=s, padding=p, dilation=d, groups=g))
            c = out
            h = (h + 2 * p - (k - 1) * d - 1) // s + 1
            w = (w + 2 * p - (k - 1) * d - 1) // s + 1
        elif kind == "convT":
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, (k - 1) // 1 if k > 1 else 0))
            op = draw(st.integers(0, s - 1))
            out = draw(st.integers(1, 4))
            nh, nw = (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op
            if nh < 1 or nw < 1 or nh > 24 or nw > 24 or p >= k:
                continue
            layers.append(nn.ConvTranspose2d(c, out, k, stride=s, padding=p, output_padding=op))
            c, h, w = out, nh, nw
        elif kind == "act":
            layers.append(draw(st.sampled_from(ACTS))())
        elif kind == "bn":
            bn = nn.BatchNorm2d(c)
            layers.append(bn)
        elif kind == "maxpool":
            k = draw(st.integers(2, 3))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            if k > min(h, w) + 2 * p:
                continue
            layers.append(nn.MaxPool2d(k, s, p))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind == "avgpool":
            k = draw(st.integers(2, 3))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            cip = draw(st.booleans())
            if k > min(h, w) + 2 * p:
                continue
            layers.append(nn.AvgPool2d(k, s, p, count_include_pad=cip))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind == "residual":
            body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), draw(st.sampled_from(ACTS))(),
                                 nn.Conv2d(c, c, 1))
            layers.append(Residual(body))
        elif kind == "concat":
            a = nn.Conv2d(c, 2, 3, padding=1)
            b = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU())
            layers.append(Branches(a, b))
            c = 4
        elif kind == "pad":
            p = draw(st.integers(1, 2))
            mode = draw(st.sampled_from(["reflect", "replicate", "constant"]))
            if mode == "reflect" and p >= min(h, w):
                continue
            layers.append(nn.ReflectionPad2d(p) if mode == "reflect" else
                          nn.ReplicationPad2d(p) if mode == "replicate" else nn.ZeroPad2d(p))
            h, w = h + 2 * p, w + 2 * p
        elif kind == "upsample":
            if h * w > 100:
                continue
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            h, w = 2 * h, 2 * w
    layers += [nn.Flatten(), nn.Linear(c * h * w, draw(st.integers(1, 5)))]
    model = nn.Sequential(*layers)
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.5)
                if draw(st.booleans()):  # smooth kernels: far above their reshaped norm
                    m.weight.copy_(m.weight.abs())
    return model.eval(), shape


def export(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(shape), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def max_ratio(model: nn.Module, shape: tuple[int, ...], sess: ort.InferenceSession, seed: int) -> float:
    """Random pairs and gradient-ascended pairs; every ratio is measured with onnxruntime."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()

    def ort_ratio(x: torch.Tensor, y: torch.Tensor) -> float:
        fx = sess.run(None, {"x": x.float().numpy()})[0].astype(np.float64)
        fy = sess.run(None, {"x": y.float().numpy()})[0].astype(np.float64)
        dx = (x.float().double() - y.float().double()).norm().item()
        return float(np.linalg.norm(fx - fy) / dx) if dx > 0 else 0.0

    best = 0.0
    for restart in range(3):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + restart)).requires_grad_()
        y = (x.detach() + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
        best = max(best, ort_ratio(x.detach(), y.detach()))
        opt = torch.optim.Adam([x, y], lr=0.05)
        for _ in range(60):
            opt.zero_grad()
            r = (model(x) - model(y)).norm() / (x - y).norm()
            (-r).backward()
            opt.step()
        best = max(best, ort_ratio(x.detach(), y.detach()))
    return best


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arch=architectures())
def test_certified_bound_is_above_every_measured_ratio(arch: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = arch
    proto = export(model, shape)
    report = lipcheck.analyze(proto, lower_bound=False, power_iterations=30)
    assert report.certified and report.upper_bound is not None, report.unbounded
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ratio = max_ratio(model, shape, sess, seed=0)
    assert ratio <= report.upper_bound * (1 + 1e-4) + 1e-6, (ratio, report.upper_bound)
    for layer in report.layers:
        assert layer.sigma_power <= layer.sigma_upper * (1 + 1e-9)
        if layer.sigma_exact is not None:
            assert layer.sigma_power <= layer.sigma_exact * (1 + 1e-6)
            assert layer.sigma_exact <= layer.sigma_upper


@pytest.mark.parametrize("seed", [0, 1])
def test_lower_bound_never_above_certified_bound(seed: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    report = lipcheck.analyze(export(model, (1, 2, 6, 6)), lower_bound=True, lower_bound_seconds=3)
    assert report.lower_bound is not None and report.lower_bound.value is not None
    assert report.upper_bound is not None
    assert 0 < report.lower_bound.value <= report.upper_bound
