"""One model, the same numbers whichever way it arrives: every PyTorch sample file against its ONNX sample,
and the spectral-norm audit against an independent computation with torch itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lipcheck
from lipcheck.report import Report

pytestmark = pytest.mark.slow  # .ci/run runs the slow set too: python -m pytest -q -m slow

ROOT = Path(__file__).resolve().parents[1]
TORCH_DIR = ROOT / "sample_models" / "torch"
ARCH = "sample_models/torch_models.py:"

# file, options, matching ONNX sample
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("mlp.ts.pt", {"input_shape": (1, 1, 16, 16)}, "mlp"),
    ("mlp.pickled.pt", {"input_shape": (1, 1, 16, 16), "trust_pickle": True}, "mlp"),
    ("cnn_bn.pt2", {}, "cnn_bn"),
    ("resnet_block.state_dict.pt", {"input_shape": (1, 8, 16, 16), "arch": ARCH + "resnet_block"}, "resnet_block"),
    ("resnet_block.ckpt", {"input_shape": (1, 8, 16, 16), "arch": ARCH + "resnet_block"}, "resnet_block"),
    ("sn_discriminator.pt", {"input_shape": (1, 3, 32, 32), "arch": ARCH + "sn_discriminator"}, "sn_discriminator"),
    ("weight_norm.pt", {"input_shape": (1, 3, 16, 16), "arch": ARCH + "weight_norm_net"}, "weight_norm"),
]


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _analyze(path: Path | str, **options: Any) -> Report:
    return lipcheck.analyze(path, lower_bound=False, **options)


# Power estimates are unconverged iterates warm-started at the circular embedding's top frequency; which of two
# near-tied frequencies wins can flip with the exporter's 1-ulp weight differences, moving an estimate by ~1e-6.
ESTIMATE_REL = 1e-4


def _assert_same_numbers(a: Report, b: Report, rel: float = 1e-6) -> None:
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert (la.op, la.input_shape, la.output_shape) == (lb.op, lb.input_shape, lb.output_shape)
        assert la.sigma_exact == pytest.approx(lb.sigma_exact, rel=rel), la.name
        assert la.sigma_upper == pytest.approx(lb.sigma_upper, rel=rel), la.name
        assert la.sigma_power == pytest.approx(lb.sigma_power, rel=max(rel, ESTIMATE_REL)), la.name
        if la.sigma_reshaped is not None:
            assert la.sigma_reshaped == pytest.approx(lb.sigma_reshaped, rel=rel), la.name
    assert a.upper_bound == pytest.approx(b.upper_bound, rel=rel)
    assert a.estimate == pytest.approx(b.estimate, rel=max(rel, ESTIMATE_REL))


@pytest.mark.parametrize(("file", "options", "onnx_name"), CASES, ids=[c[0] for c in CASES])
def test_torch_file_gives_the_onnx_numbers(file: str, options: dict[str, Any], onnx_name: str) -> None:
    from_torch = _analyze(TORCH_DIR / file, **options)
    from_onnx = _analyze(ROOT / "sample_models" / f"{onnx_name}.onnx")
    _assert_same_numbers(from_torch, from_onnx)
    # rows carry torch's parameter names, whatever the ONNX exporter called them
    params = [layer.param for layer in from_torch.layers if layer.op not in ("GlobalAveragePool", "AveragePool")]
    assert params and all(p is not None and not p.startswith("onnx::") for p in params), params


def test_state_dict_rows_are_named_like_the_module() -> None:
    report = _analyze(TORCH_DIR / "resnet_block.ckpt", input_shape=(1, 8, 16, 16), arch=ARCH + "resnet_block")
    from sample_models import torch_models

    names = set(dict(torch_models.resnet_block().named_parameters()))
    assert all(layer.param in names for layer in report.layers if layer.op != "GlobalAveragePool")
    assert [layer.fused_with for layer in report.layers if layer.fused_with] == [
        ("/b1_bn1/BatchNormalization",), ("/b2_bn1/BatchNormalization",), ("/b2_short_bn/BatchNormalization",)]
    assert any("'module.'" in note for note in report.notes)


def test_legacy_spectral_norm_matches_its_own_onnx_export(tmp_path: Path) -> None:
    from sample_models import torch_models

    module = torch_models.sn_discriminator_legacy()
    state = torch.load(TORCH_DIR / "sn_discriminator_legacy.pt", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    path = tmp_path / "legacy.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["input"])
    from_torch = _analyze(TORCH_DIR / "sn_discriminator_legacy.pt", input_shape=(1, 3, 32, 32),
                          arch=ARCH + "sn_discriminator_legacy")
    _assert_same_numbers(from_torch, _analyze(path))


def _eval_weight_and_original(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own eval-mode weight and its stored original, new or legacy spectral_norm."""
    with torch.no_grad():
        if hasattr(module, "parametrizations"):
            return module.weight.detach().double(), module.parametrizations.weight.original.detach().double()
        module.eval()
        module(torch.zeros(1, module.in_channels, 8, 8) if isinstance(module, torch.nn.Conv2d)
               else torch.zeros(1, module.in_features))
        return module.weight.detach().double(), module.weight_orig.detach().double()


def _operator_norm(conv: torch.nn.Conv2d, shape: tuple[int, ...]) -> float:
    """σ of the conv (no bias) on its input, by float64 power iteration with autograd's vjp: 3000 steps, an
    independent estimate from below."""
    weight = conv.weight.detach().double()

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(shape, dtype=torch.float64, generator=gen)
    sigma = 0.0
    for _ in range(3000):
        v = v / v.norm()
        x = v.requires_grad_()
        y = f(x)
        (g,) = torch.autograd.grad(y, x, y.detach())
        sigma = math.sqrt(float((g * v).sum()))
        v = g.detach()
    return sigma


@pytest.mark.parametrize(("file", "factory"), [("sn_discriminator.pt", "sn_discriminator"),
                                               ("sn_discriminator_legacy.pt", "sn_discriminator_legacy")])
def test_spectral_norm_audit_against_torch(file: str, factory: str) -> None:
    from sample_models import torch_models

    report = _analyze(TORCH_DIR / file, input_shape=(1, 3, 32, 32), arch=ARCH + factory)
    module = getattr(torch_models, factory)()
    module.load_state_dict(torch.load(TORCH_DIR / file, weights_only=True))
    module.eval()
    sn_layers = [m for m in module if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    audited = [layer for layer in report.layers if layer.audit is not None]
    assert len(audited) == len(sn_layers) == 6
    shape: tuple[int, ...] = (1, 3, 32, 32)
    for layer, m in zip(audited, sn_layers):
        audit = layer.audit
        assert audit is not None and audit.claims_1_lipschitz
        used, original = _eval_weight_and_original(m)
        # σ of the reshaped weight torch really uses, and of the reshaped original
        used_mat, orig_mat = used.reshape(used.shape[0], -1), original.reshape(original.shape[0], -1)
        assert audit.reshaped_after == pytest.approx(float(torch.linalg.matrix_norm(used_mat, 2)), rel=1e-6)
        assert audit.sigma_reshaped_exact == pytest.approx(float(torch.linalg.matrix_norm(orig_mat, 2)), rel=1e-9)
        # σ̂ from the stored vectors: original / used, as torch divides
        assert audit.sigma_hat == pytest.approx(float(original.flatten()[0] / used.flatten()[0]), rel=1e-6)
        assert audit.lipschitz == layer.sigma_upper and audit.lipschitz_exact == layer.sigma_exact
        if isinstance(m, torch.nn.Conv2d):
            # the real constant is the operator norm on the input, not the reshaped norm
            independent = _operator_norm(m, shape) if m.in_channels * shape[2] * shape[3] <= 8192 else None
            if independent is not None:
                assert layer.sigma_exact == pytest.approx(independent, rel=1e-5)
            assert layer.sigma_reshaped == pytest.approx(audit.reshaped_after, rel=1e-6)
            with torch.no_grad():
                shape = tuple(m(torch.zeros(shape)).shape)
            shape = (1, shape[1], shape[2], shape[3])
        else:
            shape = (1, m.out_features)
    summary = report.spectral_norm_audit
    assert summary is not None
    worst = max(audited, key=lambda layer: layer.sigma_upper)
    assert summary.max_lipschitz == pytest.approx(worst.sigma_upper)
    assert summary.not_1_lipschitz == sum(layer.sigma_upper > 1 + 1e-6 for layer in audited) >= 4
    assert "claim to be 1-Lipschitz" in summary.summary


def test_legacy_file_shows_its_stale_layer() -> None:
    report = _analyze(TORCH_DIR / "sn_discriminator_legacy.pt", input_shape=(1, 3, 32, 32),
                      arch=ARCH + "sn_discriminator_legacy")
    stale = {layer.param: layer.audit.stale for layer in report.layers if layer.audit and layer.audit.stale}
    worst = max(stale, key=lambda k: stale[k])
    assert worst.startswith("6.") and stale[worst] == pytest.approx(0.122, abs=0.01)
    assert np.isfinite(report.upper_bound or math.inf)
