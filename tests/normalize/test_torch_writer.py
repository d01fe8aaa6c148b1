"""The PyTorch writer: every format comes back in the same format, with each analysed layer's certified σ
scaled by exactly its factor, the eval-mode forward equal to the original's with the weights scaled by hand
(torch itself, parametrizations removed), every other tensor and key untouched, and the source unchanged."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lipcheck
from lipcheck.errors import LoadError, UnsupportedModelError, UsageError
from lipcheck.loaders import TorchOptions
from lipcheck.loaders.torch_loader import build_arch
from lipcheck.normalize.torch_writer import (
    HOW_PLAIN,
    HOW_SPECTRAL_NORM,
    HOW_WEIGHT_NORM,
    write_scaled_torch,
)

ROOT = Path(__file__).resolve().parents[2]
TORCH_DIR = ROOT / "sample_models" / "torch"
ARCH = "sample_models/torch_models.py:"
SELF_ARCH = f"{Path(__file__).resolve()}:small_net"  # the small architectures below, as an --arch factory
SMALL_SHAPE = (1, 3, 8, 8)
# σ_upper is a certificate whatever these settings (they only change the estimate and the exact column)
ANALYSIS: dict[str, Any] = {"lower_bound": False, "power_iterations": 10, "exact_limit": 0,
                            "method": "product"}  # per-layer factors: the composition method plays no part


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------------------- small architectures


def small_net(style: str = "plain") -> nn.Sequential:
    """Conv3x3 (3→4) → ReLU → Conv3x3 s2 (4→6) → ReLU → Flatten → Linear(96→5), input 1×3×8×8, with
    ``style`` on every Conv/Linear: plain, sn / sn_legacy (spectral_norm), wn / wn_legacy (weight_norm)."""
    wrap: Callable[[nn.Module], nn.Module]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        if style == "plain":
            def wrap(m: nn.Module) -> nn.Module:
                return m
        elif style == "sn":
            wrap = nn.utils.parametrizations.spectral_norm
        elif style == "sn_legacy":
            wrap = nn.utils.spectral_norm
        elif style == "wn":
            wrap = nn.utils.parametrizations.weight_norm
        elif style == "wn_legacy":
            wrap = nn.utils.weight_norm
        else:
            raise ValueError(style)
        return nn.Sequential(
            wrap(nn.Conv2d(3, 4, 3, padding=1)), nn.ReLU(), wrap(nn.Conv2d(4, 6, 3, stride=2, padding=1)), nn.ReLU(),
            nn.Flatten(), wrap(nn.Linear(96, 5)),
        )


def _trained(style: str, seed: int = 0) -> nn.Sequential:
    """A small net with random weights whose spectral-norm vectors went through a few training-mode steps
    (as in a real checkpoint: u, v near, not at, the top singular pair); returned in eval mode."""
    torch.manual_seed(seed)
    module = small_net(style)
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(SMALL_SHAPE))
    return module.eval()


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    id: str
    options: dict[str, Any]  # analyze / TorchOptions: input_shape, arch, arch_kwargs, key, trust_pickle
    make: Callable[[Path], Path]  # the source file (a committed sample, or built into the tmp folder)
    load: Callable[[Path], nn.Module]  # the eval-mode module a file holds, read with torch directly
    state_at: tuple[str, ...] | None = None  # state dicts: where it sits in the checkpoint
    prefix: str = ""  # state dicts: the key prefix in the file
    spectral_norm: bool = False  # eval-mode weights are computed by spectral_norm / weight_norm
    extra: Mapping[str, Any] = field(default_factory=dict)  # TorchScript / .pt2 extra files the output keeps
    by_hand: Callable[[Path], nn.Module] | None = None  # the module to scale by hand when not ``load``

    @property
    def torch_options(self) -> TorchOptions:
        o = self.options
        return TorchOptions(trust_pickle=o.get("trust_pickle", False), arch=o.get("arch"),
                            arch_kwargs=o.get("arch_kwargs"), key=o.get("key"))


def _sample(name: str) -> Callable[[Path], Path]:
    return lambda _: TORCH_DIR / name


def _state_of(obj: Any, at: tuple[str, ...] | None, prefix: str) -> dict[str, torch.Tensor]:
    node = obj
    for part in at or ():
        node = node[part]
    return {k.removeprefix(prefix): v for k, v in node.items()}


def _arch_loader(arch: str, kwargs: Mapping[str, Any] | None = None, at: tuple[str, ...] | None = None,
                 prefix: str = "") -> Callable[[Path], nn.Module]:
    """Build ``arch`` and load the file's state dict into it with torch's own load_state_dict (strict)."""

    def load(path: Path) -> nn.Module:
        module = build_arch(arch, kwargs)
        module.load_state_dict(_state_of(torch.load(path, weights_only=True), at, prefix))
        return module.eval()

    return load


def _jit_load(path: Path) -> nn.Module:
    return torch.jit.load(str(path)).eval()


def _pickle_load(path: Path) -> nn.Module:
    return torch.load(path, weights_only=False).eval()


def _export_load(path: Path) -> nn.Module:
    return torch.export.load(str(path)).module()  # specialised to eval mode when exported


def _small_state_dict(style: str, *, legacy_format: bool = False) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"small_{style}.pt"
        torch.save(_trained(style).state_dict(), path, _use_new_zipfile_serialization=not legacy_format)
        return path

    return make


def _small_checkpoint(style: str, wrap: Callable[[dict[str, torch.Tensor]], dict[str, Any]]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        module = _trained(style)
        path = folder / f"checkpoint_{style}.ckpt"
        torch.save(wrap(module.state_dict()), path)
        return path

    return make


def _data_parallel_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What torch.save of a DataParallel model's training state looks like: ``module.`` keys, nested, next to
    the optimizer state (with momentum buffers that are NOT to be scaled) and bookkeeping."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    params = [v for k, v in state.items() if not k.endswith(("_u", "_v"))]
    optimizer = torch.optim.SGD([nn.Parameter(p.clone()) for p in params], lr=0.1, momentum=0.9)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    optimizer.step()
    return {"epoch": 7, "state_dict": prefixed, "optimizer": optimizer.state_dict(), "best_acc": 0.5,
            "history": [1.0, 0.8]}


def _compiled_ema_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """torch.compile ``_orig_mod.`` keys under a dotted --key, next to a different copy of the weights."""
    return {"step": 3, "ema": {"model": {f"_orig_mod.{k}": v for k, v in state.items()}},
            "model": {k: v.clone() + 1 for k, v in state.items()}}


def _pickled_module(style: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"pickled_{style}.pt"
        torch.save(_trained(style), path)
        return path

    return make


def _traced(style: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"traced_{style}.ts.pt"
        traced = torch.jit.trace(_trained(style), torch.zeros(SMALL_SHAPE))
        torch.jit.save(traced, str(path), _extra_files={"notes.txt": "kept"})
        return path

    return make


def _exported(folder: Path) -> Path:
    path = folder / "small.pt2"
    program = torch.export.export(_trained("plain"), (torch.zeros(SMALL_SHAPE),))
    torch.export.save(program, path, extra_files={"notes.txt": "kept"})
    return path


def _small(style: str, **options: Any) -> dict[str, Any]:
    return {"input_shape": SMALL_SHAPE, "arch": SELF_ARCH, "arch_kwargs": {"style": style}, **options}


_R = {"input_shape": (1, 8, 16, 16), "arch": ARCH + "resnet_block"}
CASES = [
    Case("mlp.ts.pt", {"input_shape": (1, 1, 16, 16)}, _sample("mlp.ts.pt"), _jit_load),
    Case("mlp.pickled.pt", {"input_shape": (1, 1, 16, 16), "trust_pickle": True}, _sample("mlp.pickled.pt"),
         _pickle_load),
    Case("cnn_bn.pt2", {}, _sample("cnn_bn.pt2"), _export_load),
    Case("resnet_block.state_dict.pt", _R, _sample("resnet_block.state_dict.pt"),
         _arch_loader(ARCH + "resnet_block"), state_at=()),
    Case("resnet_block.ckpt", _R, _sample("resnet_block.ckpt"),
         _arch_loader(ARCH + "resnet_block", at=("model_state_dict",), prefix="module."),
         state_at=("model_state_dict",), prefix="module."),
    Case("sn_discriminator.pt", {"input_shape": (1, 3, 32, 32), "arch": ARCH + "sn_discriminator"},
         _sample("sn_discriminator.pt"), _arch_loader(ARCH + "sn_discriminator"), state_at=(), spectral_norm=True),
    Case("sn_discriminator_legacy.pt", {"input_shape": (1, 3, 32, 32), "arch": ARCH + "sn_discriminator_legacy"},
         _sample("sn_discriminator_legacy.pt"), _arch_loader(ARCH + "sn_discriminator_legacy"), state_at=(),
         spectral_norm=True),
    Case("weight_norm.pt", {"input_shape": (1, 3, 16, 16), "arch": ARCH + "weight_norm_net"},
         _sample("weight_norm.pt"), _arch_loader(ARCH + "weight_norm_net"), state_at=(), spectral_norm=True),
    # small models built here
    *(Case(f"small-{style}", _small(style), _small_state_dict(style), _arch_loader(SELF_ARCH, {"style": style}),
           state_at=(), spectral_norm=style != "plain")
      for style in ("plain", "sn", "sn_legacy", "wn", "wn_legacy")),
    Case("small-sn-legacy-torch.save-format", _small("sn"), _small_state_dict("sn", legacy_format=True),
         _arch_loader(SELF_ARCH, {"style": "sn"}), state_at=(), spectral_norm=True),
    # a spectral_norm checkpoint analysed with a PLAIN architecture (rows name <module>.weight), and a
    # legacy one with the new-style architecture (the loader renames the keys)
    Case("small-sn-into-plain-arch", _small("plain"), _small_state_dict("sn"),
         _arch_loader(SELF_ARCH, {"style": "sn"}), state_at=(), spectral_norm=True),
    Case("small-sn_legacy-into-plain-arch", _small("plain"), _small_state_dict("sn_legacy"),
         _arch_loader(SELF_ARCH, {"style": "sn_legacy"}), state_at=(), spectral_norm=True),
    Case("small-sn_legacy-into-new-style-arch", _small("sn"), _small_state_dict("sn_legacy"),
         _arch_loader(SELF_ARCH, {"style": "sn_legacy"}), state_at=(), spectral_norm=True),
    Case("small-wn_legacy-into-plain-arch", _small("plain"), _small_state_dict("wn_legacy"),
         _arch_loader(SELF_ARCH, {"style": "wn_legacy"}), state_at=(), spectral_norm=True),
    Case("data-parallel-sn-checkpoint", _small("sn"), _small_checkpoint("sn", _data_parallel_checkpoint),
         _arch_loader(SELF_ARCH, {"style": "sn"}, at=("state_dict",), prefix="module."),
         state_at=("state_dict",), prefix="module.", spectral_norm=True),
    Case("compiled-ema-sn_legacy-checkpoint", _small("sn_legacy", key="ema.model"),
         _small_checkpoint("sn_legacy", _compiled_ema_checkpoint),
         _arch_loader(SELF_ARCH, {"style": "sn_legacy"}, at=("ema", "model"), prefix="_orig_mod."),
         state_at=("ema", "model"), prefix="_orig_mod.", spectral_norm=True),
    Case("data-parallel-wn-checkpoint", _small("wn"), _small_checkpoint("wn", _data_parallel_checkpoint),
         _arch_loader(SELF_ARCH, {"style": "wn"}, at=("state_dict",), prefix="module."),
         state_at=("state_dict",), prefix="module.", spectral_norm=True),
    # whole pickled modules with the hook-based parametrizations (torch refuses to pickle the new-style ones)
    *(Case(f"pickled-{style}", {"input_shape": SMALL_SHAPE, "trust_pickle": True}, _pickled_module(style),
           _pickle_load, spectral_norm=True) for style in ("sn_legacy", "wn_legacy")),
    Case("traced-sn", {"input_shape": SMALL_SHAPE}, _traced("sn"), _jit_load, spectral_norm=True,
         extra={"notes.txt": b"kept"}, by_hand=lambda _: _trained("sn")),
    Case("small.pt2", {"input_shape": SMALL_SHAPE}, _exported, _export_load, extra={"notes.txt": "kept"}),
]


# ---------------------------------------------------------------------------------------------- helpers


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _analyze(path: Path, case: Case) -> Any:
    return lipcheck.analyze(path, **ANALYSIS, **case.options)


def _factors(report: Any) -> dict[str, float]:
    """0.5 and 0.8 alternately, one per weight."""
    params = list(dict.fromkeys(layer.param for layer in report.layers if layer.param is not None))
    return {param: (0.5, 0.8)[i % 2] for i, param in enumerate(params)}


_OWNER = re.compile(r"^(?:(?P<module>.+)\.)?(?:weight|weight_orig|weight_g|weight_v|parametrizations\.weight\..+)$")


def _owner(module: nn.Module, param: str) -> nn.Module:
    match = _OWNER.match(param)
    assert match, param
    return module.get_submodule(match["module"] or "")


def _scaled_by_hand(module: nn.Module, factors: Mapping[str, float]) -> nn.Module:
    """The module with each weight the row names made plain (torch computes the eval-mode weight of a
    parametrization as it removes it) and multiplied by its factor: the independent reference."""
    plain = dict(module.named_parameters())
    with torch.no_grad():
        for param, factor in factors.items():
            if param in plain and not re.search(r"parametrizations|_orig$|_g$|_v$", param):
                plain[param].mul_(factor)
                continue
            owner = _owner(module, param)
            if parametrize.is_parametrized(owner, "weight"):
                parametrize.remove_parametrizations(owner, "weight", leave_parametrized=True)
            else:
                hooks = {type(h).__name__ for h in owner._forward_pre_hooks.values()}
                if "SpectralNorm" in hooks:
                    nn.utils.remove_spectral_norm(owner)
                elif "WeightNorm" in hooks:
                    nn.utils.remove_weight_norm(owner)
            owner.weight.mul_(factor)
    return module


def _eval_weights(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weight each Conv / Linear uses in eval mode (a forward first: legacy hooks set it there)."""
    with torch.no_grad():
        module(x)
        return {name: m.weight.detach().clone() for name, m in module.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))}


def _example_input(case: Case, path: Path) -> torch.Tensor:
    shape = case.options.get("input_shape")
    if shape is None:  # a .pt2 program carries it
        (example,), _ = torch.export.load(str(path)).example_inputs
        shape = tuple(example.shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _assert_same_structure(a: Any, b: Any, changed: Mapping[int, float], where: str = "") -> None:
    """Same types, same keys in the same order, same nesting; tensors identical except the ``changed`` ones
    (by id in ``a``), which must be exactly the float64-rescaled original rounded to its dtype."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        if id(a) in changed:
            expected = (a.double() * changed[id(a)]).to(a.dtype)
            assert torch.equal(b, expected), where
            assert not torch.equal(a, b) or changed[id(a)] == 1.0, where
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert list(a) == list(b), where
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where  # state-dict versions
        for k in a:
            _assert_same_structure(a[k], b[k], changed, f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_structure(x, y, changed, f"{where}[{i}]")
    else:
        assert a == b, where


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_written_copy_scales_each_layer_by_its_factor(case: Case, tmp_path: Path) -> None:
    source = case.make(tmp_path)
    digest = _sha(source)
    before = _analyze(source, case)
    factors = _factors(before)
    assert factors
    out = tmp_path / f"out{''.join(source.suffixes)}"

    written = write_scaled_torch(source, out, factors, case.torch_options)

    assert _sha(source) == digest
    assert not [name for name in os.listdir(tmp_path) if ".lipcheck-" in name]  # no temporary file left behind
    assert [w.param for w in written] == list(factors)
    for w in written:
        assert w.factor == factors[w.param]
        if w.how == HOW_SPECTRAL_NORM:
            assert w.tensor_factor == pytest.approx(1 / w.factor, rel=1e-15)
            assert w.tensor.endswith(("weight_u", "._u")), w
        else:
            assert w.how in (HOW_PLAIN, HOW_WEIGHT_NORM) and w.tensor_factor == w.factor
        if w.how == HOW_WEIGHT_NORM:
            assert w.tensor.endswith(("weight_g", ".original0")), w
    assert all(w.tensor.startswith(case.prefix) for w in written)
    assert {w.how for w in written} != {HOW_PLAIN} or not case.spectral_norm

    # the certificate of every layer scales by its factor
    after = _analyze(out, case)
    assert [(layer.name, layer.param) for layer in after.layers] == [(layer.name, layer.param)
                                                                     for layer in before.layers]
    for a, b in zip(before.layers, after.layers):
        f = factors.get(a.param, 1.0) if a.param is not None else 1.0
        assert b.sigma_upper == pytest.approx(f * a.sigma_upper, rel=1e-6), a.name

    # same format, and torch's own forward is that of the original with its weights scaled by hand
    assert zipfile.is_zipfile(out) == zipfile.is_zipfile(source)
    x = _example_input(case, source)
    with torch.no_grad():
        expected = _scaled_by_hand((case.by_hand or case.load)(source), factors)(x)
        got = case.load(out)(x)
        unscaled = case.load(source)(x)
    assert not torch.allclose(got, unscaled, rtol=1e-3, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    # nothing else changed: the whole checkpoint, or the module's state
    if case.state_at is not None:
        src_obj = torch.load(source, weights_only=True)
        src_state = _state_of(src_obj, case.state_at, "")
        changed = {id(src_state[w.tensor]): w.tensor_factor for w in written}
        _assert_same_structure(src_obj, torch.load(out, weights_only=True), changed)
    else:
        src_state, out_state = _module_state(case.load(source)), _module_state(case.load(out))
        _assert_same_structure(src_state, out_state, {id(src_state[w.tensor]): w.tensor_factor for w in written})
    if case.extra:
        names = dict.fromkeys(case.extra, "")
        if out.suffix == ".pt2":
            torch.export.load(str(out), extra_files=names)
        else:
            torch.jit.load(str(out), _extra_files=names)
        assert names == case.extra


@pytest.mark.parametrize("case", [c for c in CASES if c.spectral_norm and c.state_at is not None],
                         ids=[c.id for c in CASES if c.spectral_norm and c.state_at is not None])
def test_eval_mode_weight_of_a_parametrized_checkpoint_is_scaled(case: Case, tmp_path: Path) -> None:
    """Loaded into the parametrized module, the output's eval-mode weight is f × the source's."""
    source = case.make(tmp_path)
    factors = _factors(_analyze(source, case))
    out = tmp_path / "out.pt"
    write_scaled_torch(source, out, factors, case.torch_options)
    x = _example_input(case, source)
    before, after = _eval_weights(case.load(source), x), _eval_weights(case.load(out), x)
    by_module = {_OWNER.match(p)["module"] or "": f for p, f in factors.items()}  # type: ignore[index]
    assert set(by_module) == set(before)
    for name, weight in before.items():
        torch.testing.assert_close(after[name], by_module[name] * weight, rtol=1e-6, atol=0)


def test_a_training_step_undoes_the_spectral_norm_scaling(tmp_path: Path) -> None:
    """What the ``how`` says: the stored u carries the factor; power iteration re-normalizes it."""
    case = next(c for c in CASES if c.id == "small-sn")
    source = case.make(tmp_path)
    out = tmp_path / "out.pt"
    write_scaled_torch(source, out, {"0.parametrizations.weight.original": 0.5}, case.torch_options)
    weights = []
    for path in (source, out):
        module = case.load(path)
        with torch.no_grad():
            eval_weight = module[0].weight.clone()
            module.train()(torch.zeros(SMALL_SHAPE))  # one power-iteration step
            weights.append((eval_weight, module.eval()[0].weight.clone()))
    (source_eval, source_trained), (out_eval, out_trained) = weights
    torch.testing.assert_close(out_eval, 0.5 * source_eval, rtol=1e-6, atol=0)
    torch.testing.assert_close(out_trained, source_trained, rtol=1e-5, atol=1e-7)


def test_pickled_module_needs_trust_pickle(tmp_path: Path) -> None:
    out = tmp_path / "out.pt"
    with pytest.raises(LoadError, match="--trust-pickle"):
        write_scaled_torch(TORCH_DIR / "mlp.pickled.pt", out, {"1.weight": 0.5}, TorchOptions())
    assert list(tmp_path.iterdir()) == []


def test_unknown_param_is_an_error_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    source = _small_checkpoint("sn", _data_parallel_checkpoint)(tmp_path)
    out = tmp_path / "out.ckpt"
    options = TorchOptions(arch=SELF_ARCH, arch_kwargs={"style": "sn"})
    with pytest.raises(LoadError, match=r"'3\.weight'.*module\.0\.parametrizations"):
        write_scaled_torch(source, out, {"0.weight": 0.5, "3.weight": 0.5}, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
    for sample, options, param in [("mlp.ts.pt", TorchOptions(), "9.weight"), ("cnn_bn.pt2", TorchOptions(), "x"),
                                   ("mlp.pickled.pt", TorchOptions(trust_pickle=True), "1.bias_orig")]:
        with pytest.raises(LoadError, match=re.escape(repr(param))):
            write_scaled_torch(TORCH_DIR / sample, out, {param: 0.5}, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_two_params_of_one_weight_are_refused(tmp_path: Path) -> None:
    source = _small_state_dict("sn_legacy")(tmp_path)
    with pytest.raises(UnsupportedModelError, match="same tensor"):
        write_scaled_torch(source, tmp_path / "out.pt", {"0.weight_orig": 0.5, "0.weight": 0.8}, TorchOptions())


def test_tied_weights_are_scaled_together_and_stay_tied(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    source = tmp_path / "tied.pt"
    torch.save({"encoder.weight": shared, "decoder.weight": shared, "bias": torch.randn(4)}, source)
    written = write_scaled_torch(source, tmp_path / "out.pt", {"encoder.weight": 0.5}, TorchOptions())
    assert [w.tensor for w in written] == ["encoder.weight"]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["encoder.weight"].data_ptr() == out["decoder.weight"].data_ptr()
    assert torch.equal(out["encoder.weight"], (shared.double() * 0.5).float())


def test_a_weight_partly_sharing_memory_is_refused(tmp_path: Path) -> None:
    flat = torch.randn(40)
    source = tmp_path / "views.pt"
    torch.save({"a.weight": flat[:20].view(4, 5), "b.weight": flat[10:30].view(4, 5)}, source)
    with pytest.raises(UnsupportedModelError, match="shares memory"):
        write_scaled_torch(source, tmp_path / "out.pt", {"a.weight": 0.5}, TorchOptions())
    assert not (tmp_path / "out.pt").exists()


def test_other_parametrizations_are_not_scaled(tmp_path: Path) -> None:
    module = nn.utils.parametrizations.orthogonal(nn.Linear(4, 4))
    source = tmp_path / "orthogonal.pt"
    torch.save(module.state_dict(), source)
    with pytest.raises(UnsupportedModelError, match="only spectral_norm and weight_norm"):
        write_scaled_torch(source, tmp_path / "out.pt", {"parametrizations.weight.original": 0.5}, TorchOptions())


def test_bad_factors_and_writing_over_the_source_are_refused(tmp_path: Path) -> None:
    source = _small_state_dict("plain")(tmp_path)
    for factor in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="finite positive"):
            write_scaled_torch(source, tmp_path / "out.pt", {"0.weight": factor}, TorchOptions())
    digest = _sha(source)
    with pytest.raises(UsageError, match="source"):
        write_scaled_torch(source, source, {"0.weight": 0.5}, TorchOptions())
    assert _sha(source) == digest

