"""spectral_norm / weight_norm checkpoints: every torch style is recognised, the rebuilt weight is torch's own
eval-mode weight, σ̂ is what torch divides by, and a plain model loads the folded state dict strictly."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from lipcheck.errors import LoadError
from lipcheck.loaders.parametrizations import (
    LEGACY,
    PARAMETRIZATIONS,
    SPECTRAL_NORM,
    WEIGHT_NORM,
    WHOLE_TENSOR,
    Parametrization,
    attach_audits,
    audit_inputs,
    effective_weight,
    find_parametrizations,
    reshaped_matrix,
    sigma_hat,
    to_plain_state_dict,
)
from lipcheck.report.model import LayerResult

Wrap = Callable[[nn.Module], nn.Module]
Net = TypeVar("Net", bound=nn.Module)
State = dict[str, np.ndarray]
SHAPE = (2, 3, 4, 4)
LAYERS = ("0", "2", "4")  # Conv2d, ConvTranspose2d, Linear in plain_net()


def _legacy(name: str, **kw: object) -> Wrap:
    """torch.nn.utils.spectral_norm / weight_norm, without their deprecation warnings."""

    def wrap(module: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(nn.utils, name)(module, **kw)  # type: ignore[no-any-return]

    return wrap


# name -> (wrap, kind, style, the expected dim of (Conv2d, ConvTranspose2d, Linear))
STYLES: dict[str, tuple[Wrap, str, str, tuple[int, int, int]]] = {
    "sn-parametrizations": (parametrizations.spectral_norm, SPECTRAL_NORM, PARAMETRIZATIONS, (0, 1, 0)),
    "sn-legacy": (_legacy("spectral_norm"), SPECTRAL_NORM, LEGACY, (0, 1, 0)),
    "wn-parametrizations": (parametrizations.weight_norm, WEIGHT_NORM, PARAMETRIZATIONS, (0, 0, 0)),
    "wn-legacy": (_legacy("weight_norm"), WEIGHT_NORM, LEGACY, (0, 0, 0)),
    "wn-parametrizations-dim1": (
        lambda m: parametrizations.weight_norm(m, dim=1), WEIGHT_NORM, PARAMETRIZATIONS, (1, 1, 1)
    ),
    "wn-parametrizations-dim-none": (
        lambda m: parametrizations.weight_norm(m, dim=None),  # type: ignore[arg-type]  # torch allows None
        WEIGHT_NORM, PARAMETRIZATIONS, (-1, -1, -1)
    ),
    "wn-legacy-dim-none": (_legacy("weight_norm", dim=None), WEIGHT_NORM, LEGACY, (-1, -1, -1)),
}


def plain_net(wrap: Wrap | None = None) -> nn.Sequential:
    """Conv2d → LeakyReLU → ConvTranspose2d (stride 2) → Flatten → Linear, each weight optionally wrapped."""
    torch.manual_seed(0)
    w: Wrap = wrap or (lambda m: m)
    return nn.Sequential(
        w(nn.Conv2d(3, 6, 3, padding=1)),
        nn.LeakyReLU(0.2),
        w(nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1)),
        nn.Flatten(),
        w(nn.Linear(5 * 7 * 7, 4)),
    )


def train_then_eval(net: Net, shape: tuple[int, ...] = SHAPE, steps: int = 4, lr: float = 0.05) -> Net:
    """A few train-mode steps (the power iteration moves u, v; SGD moves the weights), then eval mode."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        loss = net(torch.randn(shape)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        net(torch.randn(shape))  # legacy hooks set module.weight in the forward pre-hook
    return net


def numpy_state(net: nn.Module, dtype: type = np.float32) -> State:
    return {key: value.detach().numpy().astype(dtype) for key, value in net.state_dict().items()}


def eval_weight(module: nn.Module) -> np.ndarray:
    """torch's own eval-mode weight: the parametrization's output, or what the legacy hook set."""
    with torch.no_grad():
        return module.weight.detach().numpy().copy()  # type: ignore[operator, union-attr]


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module", params=sorted(STYLES))
def trained(request: pytest.FixtureRequest) -> tuple[str, nn.Sequential, State]:
    wrap = STYLES[request.param][0]
    net = train_then_eval(plain_net(wrap))
    return request.param, net, numpy_state(net)


# ------------------------------------------------------------------------------------------- finding


def test_find_parametrizations_finds_exactly_the_wrapped_layers(trained: tuple[str, nn.Sequential, State]) -> None:
    style_name, _, state = trained
    _, kind, style, dims = STYLES[style_name]
    found = find_parametrizations(state)
    assert [p.module for p in found] == list(LAYERS)
    for p, dim in zip(found, dims):
        assert (p.kind, p.style, p.dim) == (kind, style, dim)
        assert p.weight_key == f"{p.module}.weight"
        assert set(p.keys.values()) <= set(state)
        assert p.stored_key == (p.keys["original"] if kind == SPECTRAL_NORM else p.keys["v"])
        assert p.keys["original" if kind == SPECTRAL_NORM else "g"] != p.keys["v"]


def test_legacy_spectral_and_weight_norm_are_told_apart() -> None:
    """Both legacy styles store ``weight_v``: SN is the one with weight_orig + weight_u, WN has weight_g."""
    net = plain_net()
    net[0] = _legacy("spectral_norm")(net[0])
    net[2] = _legacy("weight_norm")(net[2])
    net[4] = parametrizations.spectral_norm(net[4])
    state = numpy_state(train_then_eval(net))
    found = {p.module: (p.kind, p.style) for p in find_parametrizations(state)}
    assert found == {"0": (SPECTRAL_NORM, LEGACY), "2": (WEIGHT_NORM, LEGACY), "4": (SPECTRAL_NORM, PARAMETRIZATIONS)}


def test_plain_checkpoint_has_no_parametrizations() -> None:
    assert find_parametrizations(numpy_state(plain_net())) == []


@pytest.mark.parametrize("style_name", ["sn-parametrizations", "sn-legacy", "wn-parametrizations", "wn-legacy"])
def test_top_level_module(style_name: str) -> None:
    torch.manual_seed(0)
    net = train_then_eval(STYLES[style_name][0](nn.Linear(6, 4)), shape=(3, 6))
    state = numpy_state(net)
    (p,) = find_parametrizations(state)
    assert p.module == "" and p.weight_key == "weight"
    assert rel_error(effective_weight(p, state), eval_weight(net)) < 1e-6
    plain_state, notes = to_plain_state_dict(state, nn.Linear(6, 4).state_dict().keys())
    assert set(plain_state) == {"weight", "bias"}
    assert notes[0].startswith("(top level): ")


def test_spectral_norm_dim_of_a_square_conv_transpose() -> None:
    """C_in = C_out: u and v fit dim 0 and dim 1; the stored pair tells them apart; ``dims`` overrides."""
    for wrap in (parametrizations.spectral_norm, _legacy("spectral_norm")):
        torch.manual_seed(0)
        net = train_then_eval(nn.Sequential(wrap(nn.ConvTranspose2d(6, 6, 3))), shape=(2, 6, 4, 4))
        state = numpy_state(net)
        (p,) = find_parametrizations(state)
        assert p.dim == 1
        assert rel_error(effective_weight(p, state), eval_weight(net[0])) < 1e-6
        (forced,) = find_parametrizations(state, dims={"0": 0})
        assert forced.dim == 0 and rel_error(effective_weight(forced, state), eval_weight(net[0])) > 1e-3
        assert find_parametrizations(state, dims={"0": -3})[0].dim == 1  # negative dims as torch takes them


# ------------------------------------------------------------------------------------------- weights


def test_effective_weight_is_torchs_eval_weight(trained: tuple[str, nn.Sequential, State]) -> None:
    _, net, state = trained
    for p, index in zip(find_parametrizations(state), LAYERS):
        weight = effective_weight(p, state)
        assert weight.dtype == np.float32
        assert rel_error(weight, eval_weight(net[int(index)])) < 1e-6, p.module


def test_effective_weight_keeps_float64() -> None:
    net = train_then_eval(plain_net(parametrizations.spectral_norm))
    state = numpy_state(net, np.float64)
    for p, index in zip(find_parametrizations(state), LAYERS):
        weight = effective_weight(p, state)
        assert weight.dtype == np.float64
        assert rel_error(weight, eval_weight(net[int(index)])) < 1e-6


def test_sigma_hat_is_what_torch_divides_by() -> None:
    for wrap in (parametrizations.spectral_norm, _legacy("spectral_norm")):
        net = train_then_eval(plain_net(wrap))
        state = numpy_state(net)
        for p, index in zip(find_parametrizations(state), LAYERS):
            original = state[p.keys["original"]].astype(np.float64)
            used = eval_weight(net[int(index)]).astype(np.float64)
            # independent 1: the scalar torch divided by, recovered from its own weight (least squares)
            divided_by = float(np.sum(original * original) / np.sum(original * used))
            # independent 2: uᵀ·W_mat·v with torch's permute + flatten, in float64
            w = torch.from_numpy(original)
            if p.dim != 0:
                w = w.permute(p.dim, *(d for d in range(w.ndim) if d != p.dim))
            u, v = (torch.from_numpy(state[p.keys[r]].astype(np.float64)) for r in ("u", "v"))
            by_torch = float(torch.vdot(u, torch.mv(w.flatten(1), v)))
            assert sigma_hat(p, state) == pytest.approx(by_torch, rel=1e-12)
            assert sigma_hat(p, state) == pytest.approx(divided_by, rel=1e-6)


def test_reshaped_matrix_is_torchs() -> None:
    weight = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    for dim in range(4):
        t = torch.from_numpy(weight)
        t = t.permute(dim, *(d for d in range(4) if d != dim)).flatten(1)
        np.testing.assert_array_equal(reshaped_matrix(weight, dim), t.numpy())


def test_weight_norm_dims_read_off_g() -> None:
    v = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    for dim in range(4):
        g_shape = [1] * 4
        g_shape[dim] = v.shape[dim]
        state = {"w.weight_g": np.ones(g_shape), "w.weight_v": v}
        (p,) = find_parametrizations(state)
        assert p.dim == dim
        axes = tuple(a for a in range(4) if a != dim)
        expected = v / np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
        np.testing.assert_allclose(effective_weight(p, state), expected, rtol=1e-12)
    (p,) = find_parametrizations({"w.weight_g": np.array(2.0), "w.weight_v": v})
    assert p.dim == WHOLE_TENSOR
    np.testing.assert_allclose(effective_weight(p, {"w.weight_g": np.array(2.0), "w.weight_v": v}),
                               2.0 * v / np.linalg.norm(v), rtol=1e-12)


# ----------------------------------------------------------------------------------- plain state dict


def test_plain_model_loads_the_folded_checkpoint_strictly(trained: tuple[str, nn.Sequential, State]) -> None:
    style_name, net, state = trained
    plain = plain_net()
    plain_state, notes = to_plain_state_dict(state, plain.state_dict().keys())
    assert set(plain_state) == set(plain.state_dict())
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in plain_state.items()}, strict=True)
    plain.eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-6)
    assert len(notes) == len(LAYERS)
    kind, style = STYLES[style_name][1:3]
    assert notes[0].startswith(f"0: {kind} ({style}) folded into 0.weight = ")
    if kind == SPECTRAL_NORM:
        p = find_parametrizations(state)[0]
        assert notes[0].endswith(f"original / σ̂ (σ̂ = {sigma_hat(p, state):.4g} from the stored u, v)")
    else:
        assert "g·v/‖v‖" in notes[0]
    assert state[f"{LAYERS[0]}.bias"] is plain_state[f"{LAYERS[0]}.bias"]  # other keys pass through


def test_parametrized_model_keeps_its_keys(trained: tuple[str, nn.Sequential, State]) -> None:
    _, _, state = trained
    same, notes = to_plain_state_dict(state, state.keys())
    assert same == state and notes == []


def test_legacy_checkpoint_renamed_for_a_parametrizations_model() -> None:
    legacy = train_then_eval(plain_net(_legacy("spectral_norm")))
    modern = plain_net(parametrizations.spectral_norm).eval()
    state, notes = to_plain_state_dict(numpy_state(legacy), modern.state_dict().keys())
    assert notes == [f"{m}: spectral_norm keys renamed from the legacy to the parametrizations style" for m in LAYERS]
    modern.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(modern(x), legacy(x), rtol=1e-5, atol=1e-6)


def test_unknown_parametrization_is_one_clear_error() -> None:
    torch.manual_seed(0)
    state = numpy_state(nn.Sequential(parametrizations.orthogonal(nn.Linear(4, 4))))
    assert find_parametrizations(state) == []
    with pytest.raises(LoadError, match=r"0\.weight \(0\.parametrizations\.weight\.0\.base, "):
        to_plain_state_dict(state, ["0.weight", "0.bias"])
    assert to_plain_state_dict(state, state.keys()) == (state, [])  # the model has it: nothing to fold


# ----------------------------------------------------------------------------------------------- audit


def converged_linear() -> tuple[nn.Sequential, State, Parametrization]:
    torch.manual_seed(0)
    net = nn.Sequential(parametrizations.spectral_norm(nn.Linear(8, 6), n_power_iterations=500))
    with torch.no_grad():
        net.train()(torch.randn(1, 8))  # 500 power iterations on a fixed weight: u, v converged
    net.eval()
    state = numpy_state(net)
    return net, state, find_parametrizations(state)[0]


def test_audit_of_converged_vectors() -> None:
    _, state, p = converged_linear()
    audit = audit_inputs(p, state)
    exact = float(np.linalg.svd(state[p.keys["original"]].astype(np.float64), compute_uv=False)[0])
    assert audit.sigma_reshaped_exact == pytest.approx(exact, rel=1e-12)
    assert audit.sigma_hat == pytest.approx(exact, rel=1e-6)
    assert audit.reshaped_after == pytest.approx(1.0, abs=1e-6)
    assert audit.stale == pytest.approx(0.0, abs=1e-6)
    used = effective_weight(p, state).astype(np.float64)
    assert np.linalg.svd(used, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-6)


def test_audit_of_shrunken_vectors() -> None:
    """u scaled by 0.9 (as an averaged buffer would be): σ̂ 10% low, the used weight's reshaped norm 1/0.9."""
    net, state, p = converged_linear()
    state[p.keys["u"]] = state[p.keys["u"]] * np.float32(0.9)
    audit = audit_inputs(p, state)
    assert audit.sigma_hat == pytest.approx(0.9 * audit.sigma_reshaped_exact, rel=1e-6)  # type: ignore[operator]
    assert audit.reshaped_after == pytest.approx(1 / 0.9, rel=1e-6)
    assert audit.stale == pytest.approx(0.1, rel=1e-5)
    used = effective_weight(p, state).astype(np.float64)
    assert np.linalg.svd(used, compute_uv=False)[0] == pytest.approx(1 / 0.9, rel=1e-6)
    # and torch, given the same shrunken u, uses that same weight
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    assert rel_error(effective_weight(p, state), eval_weight(net[0])) < 1e-6


def test_audit_of_a_conv_uses_the_reshaped_original() -> None:
    net = train_then_eval(plain_net(parametrizations.spectral_norm))
    state = numpy_state(net)
    for p in find_parametrizations(state):
        audit = audit_inputs(p, state)
        w = reshaped_matrix(state[p.keys["original"]].astype(np.float64), p.dim)
        assert audit.sigma_reshaped_exact == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-12)
        assert audit.reshaped_after == pytest.approx(audit.sigma_reshaped_exact / audit.sigma_hat)  # type: ignore[operator]
        used = reshaped_matrix(effective_weight(p, state).astype(np.float64), p.dim)
        assert audit.reshaped_after == pytest.approx(np.linalg.svd(used, compute_uv=False)[0], rel=1e-6)
        assert audit.stale == pytest.approx(1 - audit.sigma_hat / audit.sigma_reshaped_exact)  # type: ignore[operator]


def test_weight_norm_audit_has_no_sigma() -> None:
    net = train_then_eval(plain_net(parametrizations.weight_norm))
    state = numpy_state(net)
    audit = audit_inputs(find_parametrizations(state)[0], state)
    assert (audit.kind, audit.sigma_hat, audit.sigma_reshaped_exact, audit.reshaped_after, audit.stale) == (
        WEIGHT_NORM, None, None, None, None
    )
    assert audit.stored_key == "0.parametrizations.weight.original1"
    with pytest.raises(ValueError, match="spectral_norm"):
        sigma_hat(find_parametrizations(state)[0], state)


def _row(param: str | None, upper: float, exact: float | None) -> LayerResult:
    return LayerResult(
        name=f"/{param}/Conv", op="Conv", param=param, fused_with=(), input_shape=(1, 3, 4, 4),
        output_shape=(1, 6, 4, 4), sigma_power=upper, power_iterations=10, sigma_exact=exact, exact_method="svd",
        exact_skipped=None, sigma_upper=upper, upper_method="circular-fft", sigma_reshaped=1.0, lipschitz=upper,
        cumulative_upper=upper, cumulative_estimate=upper,
    )


def test_attach_audits_by_stored_or_plain_key() -> None:
    _, state, p = converged_linear()
    audit = audit_inputs(p, state)
    layers = (_row(p.stored_key, 2.5, 2.4), _row("other.weight", 1.0, 1.0), _row(None, 1.0, None))
    attached, unmatched = attach_audits(layers, [audit])
    assert unmatched == []
    assert attached[0].audit is not None and attached[1].audit is None and attached[2].audit is None
    assert (attached[0].audit.lipschitz, attached[0].audit.lipschitz_exact) == (2.5, 2.4)
    assert attached[0].audit.claims_1_lipschitz and attached[0].audit.sigma_hat == audit.sigma_hat
    attached, _ = attach_audits((_row(p.weight_key, 1.5, 1.5),), [audit])  # the folded plain weight's name
    assert attached[0].audit is not None
    _, unmatched = attach_audits((_row("other.weight", 1.0, 1.0),), [audit])
    assert unmatched == [audit]
