"""`lipcheck normalize` end to end: for every sample model and format the written copy provably meets the
target (re-analysed certificate AND an independent empirical ratio measured with onnxruntime or torch),
the input is never modified, and nothing is left behind on failure."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app
from lipcheck.normalize import VerificationError, normalize

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
ARCH = "sample_models/torch_models.py:"
runner = CliRunner()

ONNX_MODELS = ["mlp", "cnn_bn", "resnet_block", "sn_discriminator", "strided_dilated_depthwise", "constant_weights",
               "multi_input", "weight_norm"]
TORCH_FILES: list[tuple[str, dict[str, Any]]] = [
    ("mlp.ts.pt", {"input_shape": (1, 1, 16, 16)}),
    ("mlp.pickled.pt", {"input_shape": (1, 1, 16, 16), "trust_pickle": True}),
    ("cnn_bn.pt2", {}),
    ("resnet_block.state_dict.pt", {"input_shape": (1, 8, 16, 16), "arch": ARCH + "resnet_block"}),
    ("resnet_block.ckpt", {"input_shape": (1, 8, 16, 16), "arch": ARCH + "resnet_block"}),
    ("sn_discriminator.pt", {"input_shape": (1, 3, 32, 32), "arch": ARCH + "sn_discriminator"}),
    ("sn_discriminator_legacy.pt", {"input_shape": (1, 3, 32, 32), "arch": ARCH + "sn_discriminator_legacy"}),
    ("weight_norm.pt", {"input_shape": (1, 3, 16, 16), "arch": ARCH + "weight_norm_net"}),
]


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ratio(f: Any, shapes: list[tuple[int, ...]], seed: int = 0) -> float:
    """Largest ‖f(x) − f(y)‖/‖x − y‖ over random pairs and pairs pushed up by gradient ascent (torch f) or
    random restarts (black-box f): a measured lower bound on the written model's constant."""
    rng = np.random.default_rng(seed)
    best = 0.0
    for scale in (0.1, 1.0, 3.0):
        for _ in range(4):
            xs = [rng.standard_normal(s) * scale for s in shapes]
            ys = [x + rng.standard_normal(x.shape) * 1e-2 * scale for x in xs]
            fx, fy = f(xs), f(ys)
            num = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(fx, fy)))
            den = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(xs, ys)))
            best = max(best, num / den)
    return best


def _onnx_runner(path: Path) -> tuple[Any, list[tuple[int, ...]]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    shapes = [tuple(d if isinstance(d, int) else 1 for d in i.shape) for i in inputs]

    def f(xs: list[np.ndarray]) -> list[np.ndarray]:
        out = sess.run(None, {i.name: x.astype(np.float32) for i, x in zip(inputs, xs)})
        return [np.asarray(o, dtype=np.float64) for o in out]

    return f, shapes


def _ascended_ratio_torch(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    module = module.double().eval()
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(2):
        x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
        y = (x.detach() + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
        opt = torch.optim.Adam([x, y], lr=0.05)
        for _ in range(40):
            opt.zero_grad()
            r = (module(x) - module(y)).norm() / (x - y).norm()
            (-r).backward()
            opt.step()
        with torch.no_grad():
            best = max(best, float((module(x) - module(y)).norm() / (x - y).norm()))
    return best


_HEAVY = ("sn_discriminator", "strided_dilated_depthwise")  # 5-8 s each: in the slow set
# 5-8 s each: in the slow set (the fast set keeps a whole-module .pt, a checkpoint and a state dict; the .pt2
# loader has its own fast test in tests/loaders)
_HEAVY_TORCH = ("sn_discriminator_legacy.pt", "sn_discriminator.pt", "cnn_bn.pt2")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in ONNX_MODELS])
def test_onnx_global_target_is_met_and_measured(name: str, tmp_path: Path) -> None:
    src = SAMPLES / f"{name}.onnx"
    before = _sha(src)
    out = tmp_path / f"{name}.sn.onnx"
    target = 0.5
    result = normalize(src, out, global_target=target)
    assert result.verified and result.bound_after is not None and result.bound_after <= target
    assert _sha(src) == before
    report = lipcheck.analyze(out, lower_bound=False)
    assert report.upper_bound is not None and report.upper_bound <= target
    f, shapes = _onnx_runner(out)
    assert _ratio(f, shapes) <= target * (1 + 1e-4)
    # every planned factor reached the layer it was meant for
    for row in result.plan.layers:
        assert result.sigma_after[row.name] == pytest.approx(row.sigma_after, rel=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", pytest.param("sn_discriminator", marks=pytest.mark.slow),
                                  pytest.param("strided_dilated_depthwise", marks=pytest.mark.slow)])
def test_onnx_per_layer_target(name: str, tmp_path: Path) -> None:
    """Per layer: every weighted layer ends at or below the target; on these chains of ReLU / LeakyReLU /
    pooling (constants ≤ 1) the whole model then is, too."""
    out = tmp_path / "out.onnx"
    result = normalize(SAMPLES / f"{name}.onnx", out, target=1.0, method="product")  # per layer: any method
    report = lipcheck.analyze(out, lower_bound=False, method="product")
    assert all(layer.sigma_upper <= 1.0 for layer in report.layers if layer.param is not None)
    assert report.upper_bound is not None and report.upper_bound <= 1.0 + 1e-12
    f, shapes = _onnx_runner(out)
    assert _ratio(f, shapes) <= 1.0
    assert result.bound_after == pytest.approx(report.upper_bound)


@pytest.mark.parametrize(("file", "options"), [
    pytest.param(f, o, marks=pytest.mark.slow) if f in _HEAVY_TORCH else (f, o) for f, o in TORCH_FILES
], ids=[t[0] for t in TORCH_FILES])
def test_torch_formats_global_target(file: str, options: dict[str, Any], tmp_path: Path) -> None:
    src = SAMPLES / "torch" / file
    before = _sha(src)
    out = tmp_path / file
    target = 0.5
    # the formats are what this tests: the product (test_onnx_global_target_is_met_and_measured runs auto)
    result = normalize(src, out, global_target=target, method="product", **options)
    assert result.verified and _sha(src) == before
    report = lipcheck.analyze(out, lower_bound=False, method="product", **options)
    assert report.upper_bound is not None and report.upper_bound <= target
    # an independent measurement on the written model, through torch itself (eval mode)
    graph = lipcheck.load(out, options.get("input_shape"),
                          **{k: v for k, v in options.items() if k in ("arch", "trust_pickle")})
    shapes = [i.shape for i in graph.float_inputs]
    assert graph.reference is not None
    assert _ratio(graph.reference, shapes) <= target * (1 + 1e-4)


def test_torch_state_dict_ascended_ratio(tmp_path: Path) -> None:
    """Gradient-ascended pairs on the written resnet state dict, loaded into its architecture by hand."""
    from sample_models import torch_models

    out = tmp_path / "r.pt"
    normalize(SAMPLES / "torch" / "resnet_block.state_dict.pt", out, global_target=2.0,
              input_shape=(1, 8, 16, 16), arch=ARCH + "resnet_block")
    module = torch_models.resnet_block()
    module.load_state_dict(torch.load(out, weights_only=True))
    assert _ascended_ratio_torch(module, (1, 8, 16, 16)) <= 2.0


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    result = runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--out", str(out), "--dry-run",
                                 "--format", "json", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] and data["bound_after"] is None and data["bound_planned"] <= data["bound_before"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_equal_to_input_is_refused_and_in_place_works(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(SAMPLES / "mlp.onnx", model)
    before = _sha(model)
    result = runner.invoke(app, ["normalize", str(model), "--out", str(model), "--no-progress"])
    assert result.exit_code == 2 and "--in-place" in result.stderr
    assert _sha(model) == before
    result = runner.invoke(app, ["normalize", str(model), "--in-place", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert _sha(model) != before
    assert all(layer.sigma_upper <= 1.0 for layer in lipcheck.analyze(model, lower_bound=False).layers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no staging folder left


def test_verification_failure_writes_nothing_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.normalize as nz

    def bad_verify(*args: Any, **kwargs: Any) -> Any:
        raise VerificationError("the written model does not meet the target, nothing was written: test")

    monkeypatch.setattr(nz, "_verify", bad_verify)
    out = tmp_path / "o.onnx"
    result = runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--out", str(out), "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the written model does not meet the target")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.normalize as nz

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(nz, "_verify", interrupted)
    out = tmp_path / "o.onnx"
    result = runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--out", str(out), "--no-progress"])
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_replaced_only_on_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous output")
    import lipcheck.normalize as nz

    monkeypatch.setattr(nz, "_verify", lambda *a, **k: (_ for _ in ()).throw(VerificationError("no")))
    assert runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--out", str(out)]).exit_code == 1
    assert out.read_bytes() == b"previous output"


@pytest.mark.parametrize(("args", "pattern"), [
    ([], "needs --out"),
    (["--out", "x.onnx", "--exact", "--global-target", "1"], "choose one"),
    (["--out", "x.onnx", "--layers", "a"], "--layers restricts --global-target"),
    (["--out", "x.onnx", "--target", "0"], "positive"),
    (["--out", "/no/such/folder/x.onnx"], "does not exist"),
    (["--out", "x.onnx", "--global-target", "0.5", "--layers", "nope"], "names no analysed layer"),
])
def test_bad_usage_is_one_line_exit_2(args: list[str], pattern: str) -> None:
    result = runner.invoke(app, ["normalize", "sample_models/mlp.onnx", "--no-progress", *args])
    assert result.exit_code == 2, result.stdout
    assert len(result.stderr.splitlines()) == 1 and pattern in result.stderr
    assert not Path("x.onnx").exists()


def test_unreachable_global_target_on_a_residual_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["normalize", "sample_models/resnet_block.onnx", "--out", str(tmp_path / "o.onnx"),
                                 "--global-target", "0.5", "--layers", "/fc/Gemm", "--no-progress"])
    assert result.exit_code == 0, result.stderr  # scaling the last layer alone can reach it
    result = runner.invoke(app, ["normalize", "sample_models/attention.onnx", "--out", str(tmp_path / "a.onnx"),
                                 "--global-target", "1", "--no-progress"])
    assert result.exit_code == 2 and "unbounded" in result.stderr
