"""The committed PyTorch sample files (sample_models/torch/): reproducible from sample_models/generate.py,
small, loadable with plain torch the way each is meant to be loaded, and numerically the same network as
the matching ONNX sample (onnxruntime on the committed .onnx, or on a fresh export where none is committed).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch

pytestmark = pytest.mark.slow  # .ci/run runs the slow set too: python -m pytest -q -m slow

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
TORCH_DIR = SAMPLES / "torch"
GENERATOR = SAMPLES / "generate.py"
ARCH_FILE = SAMPLES / "torch_models.py"
MAX_BYTES = 1_000_000
RTOL = 1e-5

# Files whose bytes differ between runs of the generator: only their loading is tested. None at present
# (TorchScript debug records and torch.export stack traces, the machine-specific parts, are stripped).
NOT_REPRODUCIBLE: frozenset[str] = frozenset()


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_models_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
FILES: list[str] = list(GEN.TORCH_FILES)


def _arch_from_file() -> ModuleType:
    """``--arch sample_models/torch_models.py:<factory>``: the file imported under a private name."""
    spec = importlib.util.spec_from_file_location("lipcheck_test_arch_file", ARCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arch_from_import() -> ModuleType:
    """``--arch sample_models.torch_models:<factory>`` with the repo root on sys.path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("sample_models.torch_models")


TM = _arch_from_import()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pinned_torch() -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(r"^torch==(\S+)", text, re.MULTILINE)
    assert match, "constraints.txt pins no torch version"
    return match.group(1)


# -- inputs and references ----------------------------------------------------------------------------


def _inputs(shapes: tuple[tuple[int, ...], ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) for shape in shapes]


def _onnx_run(model: Path | onnx.ModelProto, xs: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    feeds = {inp.name: x for inp, x in zip(session.get_inputs(), xs, strict=True)}
    (out,) = session.run(None, feeds)
    return out


def _torch_run(module: Callable, xs: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = module(*(torch.from_numpy(x) for x in xs))
    assert out.dtype == torch.float32
    return out.numpy()


def _assert_same(module: Callable, reference: Path | onnx.ModelProto, shapes: tuple[tuple[int, ...], ...]) -> None:
    xs = _inputs(shapes)
    expected = _onnx_run(reference, xs)
    actual = _torch_run(module, xs)
    assert actual.shape == expected.shape
    # rtol element-wise, and the same rtol relative to the output's scale for entries near 0 (ONNX folds BN
    # and sums in another order: float32 noise is relative to the largest terms, not to each entry)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * float(np.max(np.abs(expected))))


def _committed_onnx(name: str) -> Path:
    return SAMPLES / f"{name}.onnx"


def _fresh_onnx(module: torch.nn.Module, shape: tuple[int, ...], **kw) -> onnx.ModelProto:
    return GEN._export(module, (torch.zeros(shape),), ["input"], ["output"], do_constant_folding=False, **kw)


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _from_state(factory: str, state: dict) -> torch.nn.Module:
    module = getattr(TM, factory)()
    module.load_state_dict(state, strict=True)
    return module.eval()


# -- the files themselves -----------------------------------------------------------------------------


def test_every_file_is_committed() -> None:
    assert len(FILES) == 8
    on_disk = sorted(p.name for p in TORCH_DIR.iterdir() if p.is_file())
    assert on_disk == sorted(FILES), "sample_models/torch/ out of sync with generate.TORCH_FILES"


@pytest.mark.parametrize("name", FILES)
def test_size_below_1mb(name: str) -> None:
    assert (TORCH_DIR / name).stat().st_size < MAX_BYTES


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The torch files written twice, by separate generator processes, into two fresh directories."""
    dirs = []
    for label in ("torch_a", "torch_b"):
        out = tmp_path_factory.mktemp(label)
        subprocess.run(
            [sys.executable, str(GENERATOR), "--torch", "--out", str(out)], check=True, capture_output=True, text=True
        )
        dirs.append(out / "torch")
    return dirs[0], dirs[1]


@pytest.mark.parametrize("name", sorted(set(FILES) - NOT_REPRODUCIBLE))
def test_generator_is_deterministic(name: str, regenerated: tuple[Path, Path]) -> None:
    first, second = regenerated
    assert _sha256(first / name) == _sha256(second / name)


@pytest.mark.parametrize("name", sorted(set(FILES) - NOT_REPRODUCIBLE))
def test_committed_file_matches_generator(name: str, regenerated: tuple[Path, Path]) -> None:
    pinned, running = _pinned_torch(), torch.__version__.split("+")[0]
    if running != pinned:
        pytest.skip(f"the torch files were written by torch {pinned}, running {running}: serialisation differs")
    assert _sha256(regenerated[0] / name) == _sha256(TORCH_DIR / name), (
        f"torch/{name} differs from what sample_models/generate.py writes; "
        "rerun `python sample_models/generate.py --torch` and commit the result"
    )


def test_readme_lists_every_file() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for name in FILES:
        assert f"torch/{name}" in readme, name
    for factory in ("resnet_block", "sn_discriminator", "sn_discriminator_legacy", "weight_norm_net"):
        assert f"--arch sample_models/torch_models.py:{factory} " in readme, factory


# -- each file, loaded as meant, against the ONNX sample ---------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_mlp() -> None:
    module = torch.jit.load(str(TORCH_DIR / "mlp.ts.pt"), map_location="cpu")
    assert isinstance(module, torch.jit.ScriptModule)
    module.eval()
    _assert_same(module, _committed_onnx("mlp"), TM.INPUT_SHAPES["mlp"])


def test_export_program_cnn_bn() -> None:
    program = torch.export.load(str(TORCH_DIR / "cnn_bn.pt2"))
    assert isinstance(program, torch.export.ExportedProgram)
    args, kwargs = program.example_inputs  # a .pt2 carries its input shape
    assert [tuple(a.shape) for a in args] == [(1, 3, 32, 32)] and not kwargs
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.conv2d.default", "aten.batch_norm.default", "aten.linear.default"} <= targets
    _assert_same(program.module(), _committed_onnx("cnn_bn"), TM.INPUT_SHAPES["cnn_bn"])


def test_pickled_mlp_needs_trusted_pickle() -> None:
    path = TORCH_DIR / "mlp.pickled.pt"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    module = torch.load(path, map_location="cpu", weights_only=False)
    assert type(module) is TM.MLP
    assert type(module).__module__ == "sample_models.torch_models"
    assert not module.training
    _assert_same(module, _committed_onnx("mlp"), TM.INPUT_SHAPES["mlp"])


@pytest.mark.parametrize("arch", [_arch_from_file, _arch_from_import], ids=["file_path", "import_path"])
def test_resnet_block_state_dict(arch: Callable[[], ModuleType]) -> None:
    state = _load_state(TORCH_DIR / "resnet_block.state_dict.pt")
    module = arch().resnet_block()
    module.load_state_dict(state, strict=True)
    module.eval()
    _assert_same(module, _committed_onnx("resnet_block"), TM.INPUT_SHAPES["resnet_block"])


def test_resnet_block_checkpoint() -> None:
    checkpoint = _load_state(TORCH_DIR / "resnet_block.ckpt")
    assert set(checkpoint) == {"epoch", "model_state_dict", "optimizer"} and checkpoint["epoch"] == 3
    assert set(checkpoint["optimizer"]) == {"state", "param_groups"}
    nested = checkpoint["model_state_dict"]
    assert all(k.startswith("module.") for k in nested)
    state = {k.removeprefix("module."): v for k, v in nested.items()}
    plain = _load_state(TORCH_DIR / "resnet_block.state_dict.pt")
    assert state.keys() == plain.keys() and all(torch.equal(state[k], plain[k]) for k in plain)
    _assert_same(_from_state("resnet_block", state), _committed_onnx("resnet_block"), TM.INPUT_SHAPES["resnet_block"])


def _sn_layers(state: dict, suffixes: tuple[str, str, str]) -> dict[str, tuple[torch.Tensor, ...]]:
    weight, u, v = suffixes
    prefixes = sorted({k[: -len(weight)] for k in state if k.endswith(weight)}, key=int)  # Sequential indices
    return {p: (state[p + weight], state[p + u], state[p + v]) for p in prefixes}


NEW_SN = (".parametrizations.weight.original", ".parametrizations.weight.0._u", ".parametrizations.weight.0._v")
OLD_SN = (".weight_orig", ".weight_u", ".weight_v")


def _sigma_ratio(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """true reshaped spectral norm / stored estimate u^T W v (>= 1 up to rounding; 1 = converged)."""
    mat = w.double().reshape(w.shape[0], -1)
    return float(torch.linalg.matrix_norm(mat, ord=2) / (u.double() @ mat @ v.double()))


def test_sn_discriminator_new_style() -> None:
    state = _load_state(TORCH_DIR / "sn_discriminator.pt")
    layers = _sn_layers(state, NEW_SN)
    assert len(layers) == 6
    assert all(_sigma_ratio(*t) < 1.03 for t in layers.values())  # converged u/v, as in sn_discriminator.onnx
    module = _from_state("sn_discriminator", state)
    _assert_same(module, _committed_onnx("sn_discriminator"), TM.INPUT_SHAPES["sn_discriminator"])
    for name, buf in module.named_buffers():  # eval mode: the forward pass ran no power iteration
        assert torch.equal(buf, state[name])


def test_sn_discriminator_legacy_style() -> None:
    state = _load_state(TORCH_DIR / "sn_discriminator_legacy.pt")
    assert not any("parametrizations" in k for k in state)
    new_state = _load_state(TORCH_DIR / "sn_discriminator.pt")
    old, new = _sn_layers(state, OLD_SN), _sn_layers(new_state, NEW_SN)
    assert list(old) == list(new) and len(old) == 6
    stale = list(old)[GEN.SN_LEGACY_STALE_LAYER]
    for prefix in old:
        (w_old, u_old, v_old), (w_new, u_new, v_new) = old[prefix], new[prefix]
        assert torch.equal(w_old, w_new) and torch.equal(state[prefix + ".bias"], new_state[prefix + ".bias"])
        same_uv = torch.equal(u_old, u_new) and torch.equal(v_old, v_new)
        assert same_uv == (prefix != stale), prefix
    assert _sigma_ratio(*old[stale]) > 1.10  # the stale estimate: sigma 12% too small, W/sigma-hat too big
    assert _sigma_ratio(*new[stale]) < 1.01

    module = _from_state("sn_discriminator_legacy", state)
    reference = _fresh_onnx(module, (1, 3, 32, 32))
    _assert_same(module, reference, TM.INPUT_SHAPES["sn_discriminator_legacy"])
    for name, buf in module.named_buffers():
        assert torch.equal(buf, state[name])


def test_weight_norm() -> None:
    state = _load_state(TORCH_DIR / "weight_norm.pt")
    assert sum(k.endswith(".parametrizations.weight.original0") for k in state) == 3
    assert sum(k.endswith(".parametrizations.weight.original1") for k in state) == 3
    module = _from_state("weight_norm_net", state)
    reference = onnx.load_from_string(GEN._finalize("weight_norm", GEN.build_weight_norm()))
    assert {"ReduceL2", "Div", "Mul"} <= {n.op_type for n in reference.graph.node}
    _assert_same(module, reference, TM.INPUT_SHAPES["weight_norm_net"])


def test_weight_norm_onnx_export_is_deterministic(tmp_path: Path) -> None:
    """Not committed yet (it would need golden CLI outputs), but ready: two processes, identical bytes."""
    digests = []
    for label in ("a", "b"):
        out = tmp_path / label
        subprocess.run(
            [sys.executable, str(GENERATOR), "--out", str(out), "weight_norm"], check=True, capture_output=True
        )
        assert sorted(p.name for p in out.iterdir()) == ["weight_norm.onnx"]
        digests.append(_sha256(out / "weight_norm.onnx"))
        assert (out / "weight_norm.onnx").stat().st_size < MAX_BYTES
    assert digests[0] == digests[1]


# -- the architectures and the generator's modules ----------------------------------------------------


@pytest.mark.parametrize("factory", list(TM.INPUT_SHAPES))
@pytest.mark.parametrize("arch", [_arch_from_file, _arch_from_import], ids=["file_path", "import_path"])
def test_factories_build_and_run(factory: str, arch: Callable[[], ModuleType]) -> None:
    module = getattr(arch(), factory)()
    assert isinstance(module, torch.nn.Module)
    out = _torch_run(module.eval(), _inputs(TM.INPUT_SHAPES[factory]))
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet_block", "sn_discriminator", "attention", "multi_input",
                                  "dynamic_batch"])
def test_generator_modules_match_committed_onnx(name: str) -> None:
    module = GEN.MODULES[name]()
    assert not module.training
    _assert_same(module, _committed_onnx(name), TM.INPUT_SHAPES[name])


def test_torch_models_imports_nothing_heavy() -> None:
    """--arch files are imported by lipcheck: torch_models.py needs only torch (no numpy/onnx/generator)."""
    source = ARCH_FILE.read_text()
    imported = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, re.MULTILINE))
    assert {m.split(".")[0] for m in imported} <= {"__future__", "math", "torch"}
