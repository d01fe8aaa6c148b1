"""The PyTorch loader: every way people save models gives the same IR and the same numbers, bad input is one
clear error, and nothing is unpickled without --trust-pickle."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app
from lipcheck.errors import InputShapeError, LoadError
from lipcheck.report import Report
from tests.torch_arch import SmallNet, small_net

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 8, 8)
ARCH_FILE = "tests/torch_arch.py:small_net"
ARCH_IMPORT = "tests.torch_arch:small_net"
runner = CliRunner()


def _analyze(model: Any, **kw: Any) -> Report:
    kw.setdefault("input_shape", SHAPE)
    return lipcheck.analyze(model, lower_bound=False, **kw)


def _values(report: Report) -> list[tuple[str | None, float, float | None, float]]:
    return [(layer.param, layer.sigma_power, layer.sigma_exact, layer.sigma_upper) for layer in report.layers]


def _same(a: Report, b: Report, rel: float = 1e-6) -> None:
    va, vb = _values(a), _values(b)
    assert [v[0] for v in va] == [v[0] for v in vb]
    for (_, pa, ea, ua), (_, pb, eb, ub) in zip(va, vb):
        assert pa == pytest.approx(pb, rel=rel)
        assert ea == pytest.approx(eb, rel=rel)
        assert ua == pytest.approx(ub, rel=rel)
    assert a.upper_bound == pytest.approx(b.upper_bound, rel=rel)


@pytest.fixture(scope="module")
def reference() -> Report:
    return _analyze(small_net())


@pytest.fixture
def chdir_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_live_module_rows_carry_torch_names(reference: Report) -> None:
    params = [layer.param for layer in reference.layers]
    assert params == ["features.0.weight", "features.3.weight", "head.weight"]
    assert reference.layers[0].fused_with  # the BatchNorm is folded into the conv before it
    assert reference.certified


def test_conv_row_matches_the_dense_jacobian_of_the_real_module(reference: Report) -> None:
    """Independent reference: the Jacobian of the module's own Conv+BN (eval) at the analysed input size."""
    net = small_net().double()
    f = nn.Sequential(net.features[0], net.features[1]).eval()
    jac = torch.autograd.functional.jacobian(f, torch.zeros(SHAPE, dtype=torch.float64))
    dense = jac.reshape(int(np.prod(jac.shape[:4])), -1).numpy()
    sigma = np.linalg.svd(dense, compute_uv=False)[0]
    row = reference.layers[0]
    assert row.sigma_exact == pytest.approx(sigma, rel=1e-6)
    assert row.sigma_upper >= sigma * (1 - 1e-12)


def test_torchscript_scripted_and_traced(tmp_path: Path, reference: Report) -> None:
    for how in ("script", "trace"):
        net = small_net()
        ts = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(SHAPE))
        path = tmp_path / f"net_{how}.pt"
        torch.jit.save(ts, str(path))
        report = _analyze(path)
        _same(report, reference)
        assert any("TorchScript" in n for n in report.notes)


def test_torch_export_program_carries_its_input_shape(tmp_path: Path, reference: Report) -> None:
    path = tmp_path / "net.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(small_net(), (torch.zeros(SHAPE),)), str(path))
    report = lipcheck.analyze(path, lower_bound=False)  # no input_shape: the program has one
    assert report.inputs[0].shape == SHAPE
    _same(report, reference)


def test_state_dict_with_arch_file_and_import_forms(tmp_path: Path, reference: Report, chdir_root: None) -> None:
    path = tmp_path / "weights.pth"
    torch.save(small_net().state_dict(), path)
    _same(_analyze(path, arch=ARCH_FILE), reference)
    _same(_analyze(path, arch=ARCH_IMPORT), reference)


def test_checkpoint_nested_with_dataparallel_prefix_and_key(tmp_path: Path, reference: Report,
                                                            chdir_root: None) -> None:
    state = {f"module.{k}": v for k, v in small_net().state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "model_state_dict": state, "optimizer": {"lr": 0.1}}, path)
    report = _analyze(path, arch=ARCH_IMPORT)
    _same(report, reference)
    assert any("'module.'" in n for n in report.notes)
    # two candidate state dicts: --key picks one
    two = tmp_path / "two.pt"
    torch.save({"generator": state, "discriminator": state}, two)
    with pytest.raises(LoadError, match="--key"):
        _analyze(two, arch=ARCH_IMPORT)
    _same(_analyze(two, arch=ARCH_IMPORT, key="discriminator"), reference)
    with pytest.raises(LoadError, match=r"--key 'nope' not found"):
        _analyze(two, arch=ARCH_IMPORT, key="nope")


def test_arch_kwargs_reach_the_factory(tmp_path: Path, chdir_root: None) -> None:
    path = tmp_path / "wide.pth"
    torch.save(small_net(width=6, classes=2).state_dict(), path)
    report = _analyze(path, arch=ARCH_IMPORT, arch_kwargs={"width": 6, "classes": 2})
    assert report.layers[-1].output_shape == (1, 2)


def test_pickled_module_needs_trust(tmp_path: Path, reference: Report, chdir_root: None) -> None:
    path = tmp_path / "whole.pt"
    torch.save(small_net(), path)
    with pytest.raises(LoadError, match=r"pickled Python object .*tests\.torch_arch\.SmallNet.*--trust-pickle"):
        _analyze(path)
    _same(_analyze(path, trust_pickle=True), reference)


class _Touch:
    """Unpickling this creates a file: the proof that lipcheck does not unpickle without --trust-pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_not_executed_without_trust(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _Touch(target)}, path)
    for args in (["analyze", str(path)], ["analyze", str(path), "--arch", ARCH_IMPORT, "--input-shape", "1,3,8,8"]):
        result = runner.invoke(app, [*args, "--no-lower-bound", "--no-progress"])
        assert result.exit_code == 2
        assert "--trust-pickle" in result.stderr
        assert "pathlib.Path.touch" in result.stderr or "pickled Python object" in result.stderr
        assert not target.exists()
    # the same file with --trust-pickle does run the payload: the test above is meaningful
    result = runner.invoke(app, ["analyze", str(path), "--trust-pickle", "--no-lower-bound", "--no-progress"])
    assert target.exists()
    assert result.exit_code == 2  # and then it is not a model either


def test_training_mode_is_analysed_in_eval_and_restored() -> None:
    net = small_net().train()
    net.features[2].eval()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    report = _analyze(net)
    assert [m.training for m in net.modules()] == before
    assert any("training mode" in n for n in report.notes)
    _same(report, _analyze(small_net()))


def test_several_inputs_by_name() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    report = _analyze(Two(), input_shape={"x": (1, 4), "y": (1, 2)})
    assert [i.name for i in report.inputs] == ["x", "y"]
    assert [layer.param for layer in report.layers] == ["a.weight", "b.weight"]


# ------------------------------------------------------------------------------------------ bad input


def test_state_dict_without_arch_says_so(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(small_net().state_dict(), path)
    with pytest.raises(LoadError, match=r"state dict \(\d+ tensors, e\.g\. 'features\.0\.weight'.*--arch"):
        _analyze(path)


def test_wrong_arch_lists_missing_and_unexpected_keys(tmp_path: Path, chdir_root: None) -> None:
    path = tmp_path / "sd.pt"
    state = small_net().state_dict()
    state["extra.weight"] = torch.ones(1)
    del state["head.bias"]
    torch.save(state, path)
    with pytest.raises(LoadError, match=r"missing keys 'head\.bias'; unexpected keys 'extra\.weight'"):
        _analyze(path, arch=ARCH_IMPORT)
    torch.save(small_net(width=5).state_dict(), path)
    with pytest.raises(LoadError, match="size mismatch"):
        _analyze(path, arch=ARCH_IMPORT)


@pytest.mark.parametrize(("arch", "pattern"), [
    ("nope", "expected package.module:factory"),
    ("no_such_package_xyz:f", "importing no_such_package_xyz failed"),
    ("tests.torch_arch:missing", "has no attribute 'missing'"),
    ("tests.torch_arch:not_a_module", "returned a int, not a torch.nn.Module"),
    ("tests/none.py:f", "no such file"),
])
def test_bad_arch(arch: str, pattern: str, tmp_path: Path, chdir_root: None) -> None:
    path = tmp_path / "sd.pt"
    torch.save(small_net().state_dict(), path)
    with pytest.raises(LoadError, match=pattern):
        _analyze(path, arch=arch)


def test_forward_failure_names_the_shape(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"forward failed on an input of shape 1×5×8×8.*check --input-shape"):
        _analyze(small_net(), input_shape=(1, 5, 8, 8))


def test_missing_input_shape_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(small_net()), str(path))
    with pytest.raises(InputShapeError, match="does not record its input shape: pass --input-shape"):
        lipcheck.analyze(path, lower_bound=False)


def test_torch_files_of_unknown_kind(tmp_path: Path) -> None:
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(LoadError, match="neither a module nor a state dict"):
        _analyze(other)
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(LoadError, match="a plain Python pickle, not a torch.save checkpoint"):
        _analyze(legacy)
    trunc = tmp_path / "trunc.pt"
    torch.save(small_net().state_dict(), tmp_path / "full.pt")
    trunc.write_bytes((tmp_path / "full.pt").read_bytes()[:300])
    with pytest.raises(LoadError):
        _analyze(trunc)


def test_cli_torch_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(small_net().state_dict(), path)
    for extra in ([], ["--arch", "nope"], ["--arch", ARCH_IMPORT, "--arch-kwargs", "[1]"],
                  ["--arch", ARCH_IMPORT, "--arch-kwargs", "{bad json"]):
        result = runner.invoke(app, ["analyze", str(path), "--input-shape", "1,3,8,8", "--no-lower-bound",
                                     "--no-progress", *extra])
        assert result.exit_code == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
        assert "Traceback" not in result.stderr


def test_cli_state_dict_end_to_end(tmp_path: Path, chdir_root: None) -> None:
    path = tmp_path / "sd.pt"
    torch.save(small_net().state_dict(), path)
    result = runner.invoke(app, ["analyze", str(path), "--arch", ARCH_FILE, "--input-shape", "1,3,8,8",
                                 "--format", "json", "--no-progress", "--lower-bound-seconds", "1"])
    assert result.exit_code == 0, result.stderr
    import json

    data = json.loads(result.stdout)
    assert [layer["param"] for layer in data["layers"]] == ["features.0.weight", "features.3.weight", "head.weight"]
    assert data["lower_bound"] is not None and data["lower_bound"] <= data["upper_bound"]
    # the evaluator was checked against the torch module itself
    assert data["lower_bound_details"]["evaluator_max_rel_error"] < 1e-4


def test_sequential_class_is_importable_for_pickles() -> None:
    assert isinstance(SmallNet(), nn.Module)
