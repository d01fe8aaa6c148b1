"""A PyTorch model file runs none of its own code with effects outside the model unless --trust-pickle (or
LIPCHECK_TRUST_PICKLE=1) says the file is trusted: TorchScript archives (forward, submodules, hooks, helper
functions, script classes, ``__setstate__``) and torch.export programs (pickled payloads, custom ops).

Every malicious file here writes to a file (or prints); each test checks the write did not happen, and the
trusted run shows that it does happen then (the refusal is what stopped it)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pickle
import re
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app
from lipcheck.errors import LipcheckError, LoadError
from lipcheck.loaders import TorchOptions
from lipcheck.loaders.torch_loader import load_torchscript, torchscript_refusal, unsafe_op

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = b"untouched"
runner = CliRunner()

# payloads: (name, statements that change x or have an effect, the op the refusal names)
PAYLOADS = {
    "from_file": ("t = torch.from_file(VICTIM, shared=True, size=9, dtype=torch.uint8)\n"
                  "t.fill_(88)\n"
                  "x = x + t.sum().float() * 0.0", "aten::from_file"),
    "print": ('print("payload")', "prim::Print"),
}

# where the payload sits: module source with {payload} (indented by the template) and the method named
TEMPLATE = '''
import torch
from torch import nn
from typing import Any, Tuple


def helper(x: torch.Tensor) -> torch.Tensor:
{helper}
    return x


@torch.jit.script
class Holder:
    def __init__(self, scale: float):
        self.scale = scale

    def run(self, x: torch.Tensor) -> torch.Tensor:
{klass}
        return x * self.scale


@torch.jit.script
class Guard:
    def __init__(self):
        self.depth = 0

    def __enter__(self):
        x = torch.zeros(1)
{enter}
        self.depth = int(x.sum().item()) + 1

    def __exit__(self, a: Any, b: Any, c: Any):
        self.depth = 0


class Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
{sub}
        return self.lin(x)

    @torch.jit.export
    def unused(self, x: torch.Tensor) -> torch.Tensor:
{exported}
        return x


def pre_hook(module: nn.Module, inputs: Tuple[torch.Tensor]) -> Tuple[torch.Tensor]:
    x = inputs[0]
{hook}
    return (x,)


class Net(nn.Module):
    def __init__(self, hooked: bool):
        super().__init__()
        self.sub = Sub()
        self.guard = Guard()
        if hooked:
            self.register_forward_pre_hook(pre_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
{forward}
        if x.sum() > 1e30:
{branch}
            x = x + 1
        with self.guard:
            x = self.sub(x)
        return Holder(1.0).run(helper(x))
'''
# location -> (template slot, indentation, the method the refusal names)
LOCATIONS = {
    "forward": ("forward", 8, "Net.forward"),
    "if-branch": ("branch", 12, "Net.forward"),
    "submodule-forward": ("sub", 8, "Sub.forward"),
    "exported-method": ("exported", 8, "Sub.unused"),
    "helper-function": ("helper", 4, "helper"),
    "script-class-method": ("klass", 8, "Holder.run"),
    "with-enter": ("enter", 8, "Guard.__enter__"),
    "forward-pre-hook": ("hook", 4, "pre_hook"),
}


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(ORIGINAL)
    return path


def _build(folder: Path, victim: Path, location: str | None, payload: str | None) -> Path:
    """A TorchScript archive of Net with ``payload`` at ``location`` (None: a harmless model)."""
    slots = {slot: "" for slot, _, _ in LOCATIONS.values()}
    if location is not None and payload is not None:
        slot, indent, _ = LOCATIONS[location]
        code = PAYLOADS[payload][0].replace("VICTIM", repr(str(victim)))
        slots[slot] = textwrap.indent(code, " " * indent)
    for slot, (_, indent, _) in zip(slots, LOCATIONS.values()):
        slots[slot] = slots[slot] or " " * indent + "pass"
    name = f"_lipcheck_ts_{location or 'clean'}_{payload or 'none'}".replace("-", "_")
    source = folder / f"{name}.py"
    source.write_text(TEMPLATE.format(**slots), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(module.Net(hooked=location == "forward-pre-hook"))
            out = folder / f"{name}.pt"
            torch.jit.save(scripted, str(out))
    finally:
        del sys.modules[name]
    return out


def _analyze(path: Path, **kw: Any) -> Any:
    return lipcheck.analyze(path, input_shape=(1, 4), lower_bound=False, **kw)


# ------------------------------------------------------------------------------------------- TorchScript


def test_harmless_template_loads(tmp_path: Path, victim: Path) -> None:
    """The template without payload (script class, with-statement, hook-free) passes the inspection."""
    path = _build(tmp_path, victim, None, None)
    load_torchscript(path, TorchOptions())


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("location", sorted(LOCATIONS))
def test_code_with_effects_is_refused_wherever_it_sits(tmp_path: Path, victim: Path, location: str,
                                                       payload: str) -> None:
    path = _build(tmp_path, victim, location, payload)
    with pytest.raises(LoadError) as info:
        load_torchscript(path, TorchOptions())
    message = str(info.value)
    op, method = PAYLOADS[payload][1], LOCATIONS[location][2]
    assert re.search(rf"calls {op} \(.*\) in (\S+\.)?{re.escape(method)}[;,]", message), message
    assert "--trust-pickle" in message
    assert "\n" not in message
    assert victim.read_bytes() == ORIGINAL


def test_from_file_in_forward_cli_and_api(tmp_path: Path, victim: Path) -> None:
    """The audit's case: a forward that maps a file outside the model's folder (shared) and writes to it."""
    model = tmp_path / "models"
    model.mkdir()
    path = _build(model, victim, "forward", "from_file")
    for command in (["analyze", str(path), "--input-shape", "1,4", "--no-lower-bound", "--no-progress"],
                    ["check", str(path), "--input-shape", "1,4", "--max-lipschitz", "100"]):
        result = runner.invoke(app, command, env={"LIPCHECK_TRUST_PICKLE": ""})
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if "aten::from_file" in line]
        assert len(lines) == 1 and ".Net.forward" in lines[0] and "--trust-pickle" in lines[0]
        assert victim.read_bytes() == ORIGINAL
    with pytest.raises(LoadError, match=r"aten::from_file .* in \S*\.Net\.forward"):
        _analyze(path)
    assert victim.read_bytes() == ORIGINAL
    # trusted, the file's code runs: the refusal above is what protected the victim
    runner.invoke(app, ["analyze", str(path), "--input-shape", "1,4", "--no-lower-bound", "--no-progress",
                        "--trust-pickle"])
    assert victim.read_bytes() != ORIGINAL
    victim.write_bytes(ORIGINAL)
    runner.invoke(app, ["analyze", str(path), "--input-shape", "1,4", "--no-lower-bound", "--no-progress"],
                  env={"LIPCHECK_TRUST_PICKLE": "1"})
    assert victim.read_bytes() != ORIGINAL
    victim.write_bytes(ORIGINAL)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the export makes of from_file; it ran
        _analyze(path, trust_pickle=True)
    assert victim.read_bytes() != ORIGINAL


def test_trusted_print_runs(tmp_path: Path, victim: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = _build(tmp_path, victim, "submodule-forward", "print")
    with contextlib.suppress(LipcheckError):  # trusted, it runs (the ONNX capture then trips on its script class)
        _analyze(path, trust_pickle=True)
    assert "payload" in capfd.readouterr().out


SETSTATE_MODULE = '''
import torch
from torch import nn
from typing import Tuple


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.eye(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        t = torch.from_file({victim!r}, shared=True, size=9, dtype=torch.uint8)
        t.fill_(88)
        self.weight = state[0] + t.sum().float() * 0.0
        self.training = state[1]
'''


def test_setstate_is_refused_before_loading(tmp_path: Path, victim: Path) -> None:
    """torch.jit.load runs __setstate__: the archive is refused from its code text, before anything runs."""
    source = tmp_path / "_lipcheck_setstate.py"
    source.write_text(SETSTATE_MODULE.format(victim=str(victim)), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("_lipcheck_setstate", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_lipcheck_setstate"] = module
    try:
        spec.loader.exec_module(module)
        path = tmp_path / "stateful.pt"
        torch.jit.save(torch.jit.script(module.Stateful()), str(path))
    finally:
        del sys.modules["_lipcheck_setstate"]
    victim.write_bytes(ORIGINAL)  # scripting/saving does not run it; make sure of the starting point
    with pytest.raises(LoadError, match=r"__setstate__ .*--trust-pickle"):
        _analyze(path)
    result = runner.invoke(app, ["analyze", str(path), "-s", "1,4", "--no-lower-bound", "--no-progress"])
    assert result.exit_code == 2 and "__setstate__" in result.stderr
    assert victim.read_bytes() == ORIGINAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))  # what lipcheck did not do: loading alone runs the payload
    assert victim.read_bytes() != ORIGINAL


def test_custom_op_in_torchscript_is_refused(tmp_path: Path, victim: Path) -> None:
    touched = tmp_path / "touched"

    @torch.library.custom_op("lipcheck_trust_test::touch_ts", mutates_args=())
    def touch(x: torch.Tensor) -> torch.Tensor:
        touched.write_text("ran")
        return x.clone()

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.lipcheck_trust_test.touch_ts(x)

    path = tmp_path / "custom.pt"
    torch.jit.save(torch.jit.script(Net()), str(path))
    with pytest.raises(LoadError, match=r"lipcheck_trust_test::touch_ts \(an op from outside aten and prim"):
        _analyze(path)
    assert not touched.exists()


def test_op_policy() -> None:
    for kind in ("aten::from_file", "aten::save", "prim::Print", "aten::_print", "prim::PythonOp",
                 "prim::rpc_async", "aten::set_", "quantized::linear", "mylib::anything", "aten::_load_thing",
                 "aten::to_file"):
        assert unsafe_op(kind), kind
    for kind in ("aten::linear", "aten::conv2d", "prim::Constant", "prim::CallMethod", "aten::warn",
                 "aten::storage_offset", "aten::dropout", "prim::If", "aten::manual_seed"):
        assert unsafe_op(kind) is None, kind
    assert torchscript_refusal([]) is None


def test_ordinary_torchscript_models_pass(tmp_path: Path) -> None:
    """Scripted and traced standard layers (attention with its warnings, LSTM, conv/BN/upsample) are allowed."""
    nets: dict[str, tuple[torch.nn.Module, tuple[int, ...]]] = {
        "attention": (torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True), (1, 3, 8)),
        "lstm": (torch.nn.LSTM(4, 4, batch_first=True), (1, 3, 4)),
        "cnn": (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(),
                                    torch.nn.Upsample(scale_factor=2), torch.nn.Flatten()), (1, 3, 6, 6)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (net, shape) in nets.items():
            net.eval()
            for how, scripted in (("script", torch.jit.script(net)),
                                  ("trace", None if name == "attention" else torch.jit.trace(net, torch.randn(shape)))):
                if scripted is None:
                    continue
                path = tmp_path / f"{name}-{how}.pt"
                torch.jit.save(scripted, str(path))
                load_torchscript(path, TorchOptions())
        load_torchscript(ROOT / "sample_models" / "torch" / "mlp.ts.pt", TorchOptions())


# ------------------------------------------------------------------------------------------ torch.export


class _Touch:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.write_bytes, (self.target, b"pwned"))


def _pickled_pt2(tmp_path: Path, victim: Path, where: str) -> Path:
    """The sample .pt2 with one weight or constant stored as a pickle that writes to ``victim``."""
    source = zipfile.ZipFile(ROOT / "sample_models" / "torch" / "cnn_bn.pt2")
    names = source.namelist()
    weights_config = next(n for n in names if n.endswith("model_weights_config.json"))
    config = json.loads(source.read(weights_config))
    payload = pickle.dumps(_Touch(victim))
    replaced: dict[str, bytes] = {}
    if where == "weight":
        config["config"]["fc.bias"]["use_pickle"] = True
        replaced[weights_config] = json.dumps(config).encode()
        replaced[weights_config.rsplit("/", 1)[0] + "/" + config["config"]["fc.bias"]["path_name"]] = payload
    else:  # a torch.save zip the weights-only unpickler refuses (torch.export.load then retries in full)
        sample = next(n for n in names if "/sample_inputs/" in n)
        torch.save({"payload": _Touch(victim)}, tmp_path / "inputs.pt")
        replaced[sample] = (tmp_path / "inputs.pt").read_bytes()
    out = tmp_path / f"pickled-{where}.pt2"
    with zipfile.ZipFile(out, "w") as z:
        for info in source.infolist():
            z.writestr(info, replaced.get(info.filename, source.read(info.filename)))
    return out


@pytest.mark.parametrize("where", ["weight", "sample-inputs"])
def test_pt2_with_pickles_is_refused_before_loading(tmp_path: Path, victim: Path, where: str) -> None:
    path = _pickled_pt2(tmp_path, victim, where)
    with pytest.raises(LoadError, match=r"pickle.*--trust-pickle"):
        lipcheck.analyze(path, lower_bound=False)
    result = runner.invoke(app, ["analyze", str(path), "--no-lower-bound", "--no-progress"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == ORIGINAL
    if where == "weight":  # trusted, torch.export.load unpickles it: the refusal is what protected the victim
        with pytest.raises(LoadError):
            lipcheck.analyze(path, lower_bound=False, trust_pickle=True)
        assert victim.read_bytes() == b"pwned"


def test_pt2_with_a_custom_op_is_refused(tmp_path: Path) -> None:
    touched = tmp_path / "touched"

    @torch.library.custom_op("lipcheck_trust_test::touch_ep", mutates_args=())
    def touch(x: torch.Tensor) -> torch.Tensor:
        touched.write_text("ran")
        return x.clone()

    @touch.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return touch(self.lin(x))

    path = tmp_path / "custom.pt2"
    torch.export.save(torch.export.export(Net(), (torch.zeros(1, 4),)), str(path))
    with pytest.raises(LoadError, match=r"lipcheck_trust_test::touch_ep .*--trust-pickle"):
        lipcheck.analyze(path, lower_bound=False)
    assert not touched.exists()
    with contextlib.suppress(LipcheckError):  # trusted: the op runs (then ONNX may not express it)
        lipcheck.analyze(path, lower_bound=False, trust_pickle=True)
    assert touched.exists()


def test_sample_pt2_passes() -> None:
    assert lipcheck.analyze(ROOT / "sample_models" / "torch" / "cnn_bn.pt2", lower_bound=False).certified
