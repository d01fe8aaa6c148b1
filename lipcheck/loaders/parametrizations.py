"""spectral_norm / weight_norm in PyTorch checkpoints: recognise them, rebuild the weight, audit the claim.

Pure numpy (no torch): a state dict arrives as ``Mapping[str, np.ndarray]`` (float32 or float64).

Key names (``<m>`` is the module's prefix, absent for a top-level module):

- spectral norm, ``torch.nn.utils.parametrizations.spectral_norm``: ``<m>.parametrizations.weight.original``,
  ``<m>.parametrizations.weight.0._u``, ``<m>.parametrizations.weight.0._v``;
  legacy ``torch.nn.utils.spectral_norm``: ``<m>.weight_orig``, ``<m>.weight_u``, ``<m>.weight_v``.
- weight norm, ``torch.nn.utils.parametrizations.weight_norm``: ``<m>.parametrizations.weight.original0``
  (g), ``original1`` (v); legacy ``torch.nn.utils.weight_norm``: ``<m>.weight_g``, ``<m>.weight_v``.

In eval mode torch uses, without any power iteration:

- spectral norm: W = original / σ̂ with σ̂ = uᵀ·W_mat·v from the STORED u, v, where W_mat is the original
  with axis ``dim`` moved to the front and the rest flattened (dim 0; 1 for ConvTranspose by default).
  σ̂ never exceeds σ_max(W_mat) for unit u, v, so stale or shrunken vectors leave the reshaped kernel of the
  used weight with norm σ_max(W_mat) / σ̂ > 1.
- weight norm: W = g · v / ‖v‖, the norm over every axis except ``dim`` (``torch._weight_norm``,
  ``norm_except_dim``; dim=None is stored as -1 and means the norm of the whole tensor).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from lipcheck.errors import LoadError
from lipcheck.norms.matrix import sigma_max_svd
from lipcheck.report.model import SPECTRAL_NORM, WEIGHT_NORM, LayerResult, SpectralNormAudit

__all__ = [
    "LEGACY",
    "PARAMETRIZATIONS",
    "SPECTRAL_NORM",
    "WEIGHT_NORM",
    "WHOLE_TENSOR",
    "Parametrization",
    "SpectralNormAuditInput",
    "attach_audits",
    "audit_inputs",
    "effective_weight",
    "find_parametrizations",
    "reshaped_matrix",
    "sigma_hat",
    "to_plain_state_dict",
]

PARAMETRIZATIONS = "parametrizations"  # torch.nn.utils.parametrizations.spectral_norm / weight_norm
LEGACY = "legacy"  # torch.nn.utils.spectral_norm / weight_norm (forward pre-hooks)
WHOLE_TENSOR = -1  # weight_norm(dim=None): torch stores dim -1 and takes the norm of the whole tensor

# Telling apart candidate spectral-norm dims (a ConvTranspose with C_in = C_out): the right one is where the
# stored u ∥ W_mat·v or v ∥ W_matᵀ·u (what the last power-iteration step left); it must reach this cosine
# and beat every other candidate by this margin, else torch's default 0 is assumed.
ALIGNED_COSINE = 0.9
ALIGNED_MARGIN = 0.01

_NEW_STYLE = re.compile(r"^(?:(?P<module>.+)\.)?parametrizations\.(?P<name>[^.]+)\.(?P<rest>.+)$")
_NEW_SPECTRAL_NORM = {"original": "original", "u": "0._u", "v": "0._v"}
_NEW_WEIGHT_NORM = {"g": "original0", "v": "original1"}
_LEGACY_SPECTRAL_NORM = {"original": "_orig", "u": "_u", "v": "_v"}
_LEGACY_WEIGHT_NORM = {"g": "_g", "v": "_v"}


@dataclass(frozen=True)
class Parametrization:
    """One parametrized weight in a checkpoint.

    ``dim``: spectral norm, the axis torch moves to the front before flattening (0; 1 for ConvTranspose);
    weight norm, the axis the norm keeps (``WHOLE_TENSOR`` = -1 for dim=None).
    ``stored_key``: the key a folded ONNX export names the layer after (SN: the original; WN: v).
    """

    kind: str  # SPECTRAL_NORM or WEIGHT_NORM
    style: str  # PARAMETRIZATIONS or LEGACY
    module: str  # "main.0", or "" for a top-level module
    keys: Mapping[str, str] = field(hash=False)  # role -> state-dict key; SN: original, u, v; WN: g, v
    dim: int
    weight_key: str  # the key of the plain weight: f"{module}.weight", or "weight"
    stored_key: str
    name: str = "weight"  # the parametrized tensor's attribute name


def _join(module: str, leaf: str) -> str:
    return f"{module}.{leaf}" if module else leaf


def _keys_for(kind: str, style: str, module: str, name: str) -> dict[str, str]:
    """The state-dict keys of a parametrization of ``kind`` and ``style`` on ``<module>.<name>``."""
    if style == PARAMETRIZATIONS:
        leaves = _NEW_SPECTRAL_NORM if kind == SPECTRAL_NORM else _NEW_WEIGHT_NORM
        return {role: _join(module, f"parametrizations.{name}.{leaf}") for role, leaf in leaves.items()}
    suffixes = _LEGACY_SPECTRAL_NORM if kind == SPECTRAL_NORM else _LEGACY_WEIGHT_NORM
    return {role: _join(module, name + suffix) for role, suffix in suffixes.items()}


def _float64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def reshaped_matrix(weight: np.ndarray, dim: int) -> np.ndarray:
    """W_mat as torch's spectral_norm builds it: axis ``dim`` to the front (the others keep their order),
    the rest flattened: shape ``(weight.shape[dim], -1)``. A 1-D weight becomes a column."""
    weight = np.asarray(weight)
    return np.moveaxis(weight, dim, 0).reshape(weight.shape[dim], -1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return abs(float(a @ b)) / norms if norms > 0 else 0.0


def _spectral_norm_dim(module: str, original: np.ndarray, u: np.ndarray, v: np.ndarray) -> int:
    """The dim torch flattened around, from the shapes of u and v. When several axes fit (a ConvTranspose
    with C_in = C_out), the one whose stored vectors look like a power-iteration pair (u ∥ W_mat·v or
    v ∥ W_matᵀ·u, nearly true after training); when none clearly does (fresh legacy vectors are random), 0.
    A guess in that case: callers that know the module types should pass ``dims``."""
    shape = original.shape
    candidates = [
        axis for axis in range(original.ndim)
        if shape[axis] == u.size and shape[axis] * v.size == original.size
    ]
    if not candidates:
        raise LoadError(
            f"{module or 'the top-level module'}: spectral_norm vectors u ({u.size}) and v ({v.size}) do not fit "
            f"the weight of shape {tuple(shape)} around any axis"
        )
    if len(candidates) == 1:
        return candidates[0]
    u64, v64 = _float64(u).ravel(), _float64(v).ravel()
    scores = []
    for axis in candidates:
        w = reshaped_matrix(_float64(original), axis)
        scores.append((max(_cosine(u64, w @ v64), _cosine(v64, w.T @ u64)), axis))
    (best, axis), (second, _) = sorted(scores, reverse=True)[:2]
    if best >= ALIGNED_COSINE and best - second >= ALIGNED_MARGIN:
        return axis
    return 0 if 0 in candidates else candidates[0]


def _weight_norm_dim(module: str, g: np.ndarray, v: np.ndarray) -> int:
    """The axis weight_norm kept, from g's shape (g has v's shape with 1 on every other axis)."""
    if g.ndim == 0 or (g.size == 1 and g.ndim != v.ndim):
        return WHOLE_TENSOR
    if g.ndim == v.ndim:
        kept = [axis for axis in range(g.ndim) if g.shape[axis] != 1]
        if len(kept) == 1 and g.shape[kept[0]] == v.shape[kept[0]]:
            return kept[0]
        if not kept:  # every axis of g is 1: the kept axis has size 1, i.e. the norm of the whole tensor
            return next((axis for axis in range(v.ndim) if v.shape[axis] == 1), WHOLE_TENSOR)
    raise LoadError(
        f"{module or 'the top-level module'}: weight_norm g of shape {tuple(g.shape)} does not fit "
        f"v of shape {tuple(v.shape)}"
    )


def _normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def find_parametrizations(
    state: Mapping[str, np.ndarray], dims: Mapping[str, int] | None = None
) -> list[Parametrization]:
    """Every spectral_norm / weight_norm parametrization in ``state``, in state-dict order.

    ``dims``: the spectral-norm dim per module prefix when known (1 for ConvTranspose, as torch's default);
    otherwise it is inferred from the shapes of u and v (see :func:`_spectral_norm_dim`). The weight-norm
    dim is always read off g's shape. New-style groups other than these two (orthogonal, stacked
    parametrizations, a 1-D spectral norm without u, v) are not returned (see :func:`to_plain_state_dict`).
    """
    found: list[Parametrization] = []
    seen: set[tuple[str, str]] = set()
    groups = _new_style_groups(state)
    for key in state:
        match = _NEW_STYLE.match(key)
        if match:
            module, name = match["module"] or "", match["name"]
            if (module, name) in seen:
                continue
            seen.add((module, name))
            rests = groups[(module, name)]
            if rests == set(_NEW_SPECTRAL_NORM.values()):
                found.append(_make(SPECTRAL_NORM, PARAMETRIZATIONS, module, name, state, dims))
            elif rests == set(_NEW_WEIGHT_NORM.values()):
                found.append(_make(WEIGHT_NORM, PARAMETRIZATIONS, module, name, state, dims))
            continue
        base, underscore, suffix = key.rpartition("_")
        if not underscore or base in state:  # legacy hooks remove the plain weight from the state dict
            continue
        module, _, name = base.rpartition(".")
        if suffix == "orig" and f"{base}_u" in state and f"{base}_v" in state:
            found.append(_make(SPECTRAL_NORM, LEGACY, module, name, state, dims))
        elif suffix == "g" and f"{base}_v" in state and f"{base}_orig" not in state:
            found.append(_make(WEIGHT_NORM, LEGACY, module, name, state, dims))
    return found


def _new_style_groups(state: Mapping[str, np.ndarray]) -> dict[tuple[str, str], set[str]]:
    groups: dict[tuple[str, str], set[str]] = {}
    for key in state:
        match = _NEW_STYLE.match(key)
        if match:
            groups.setdefault((match["module"] or "", match["name"]), set()).add(match["rest"])
    return groups


def _make(
    kind: str, style: str, module: str, name: str, state: Mapping[str, np.ndarray], dims: Mapping[str, int] | None
) -> Parametrization:
    keys = _keys_for(kind, style, module, name)
    if kind == SPECTRAL_NORM:
        original = np.asarray(state[keys["original"]])
        if dims is not None and module in dims:
            dim = _normalize_dim(dims[module], original.ndim)
        else:
            dim = _spectral_norm_dim(module, original, np.asarray(state[keys["u"]]), np.asarray(state[keys["v"]]))
        stored_key = keys["original"]
    else:
        dim = _weight_norm_dim(module, np.asarray(state[keys["g"]]), np.asarray(state[keys["v"]]))
        stored_key = keys["v"]
    return Parametrization(
        kind=kind,
        style=style,
        module=module,
        keys=keys,
        dim=dim,
        weight_key=_join(module, name),
        stored_key=stored_key,
        name=name,
    )


def sigma_hat(p: Parametrization, state: Mapping[str, np.ndarray]) -> float:
    """σ̂ = uᵀ·W_mat·v from the STORED u, v, in float64: exactly what torch divides by in eval mode."""
    if p.kind != SPECTRAL_NORM:
        raise ValueError(f"{p.weight_key}: σ̂ is defined for spectral_norm, not {p.kind}")
    w = reshaped_matrix(_float64(state[p.keys["original"]]), p.dim)
    u = _float64(state[p.keys["u"]]).ravel()
    v = _float64(state[p.keys["v"]]).ravel()
    return float(u @ (w @ v))


def effective_weight(p: Parametrization, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The weight the module uses in eval mode, computed in float64 and returned in the stored dtype.

    Spectral norm: original / σ̂. Weight norm: g · v / ‖v‖, the norm over every axis except ``dim``.
    """
    if p.kind == SPECTRAL_NORM:
        original = np.asarray(state[p.keys["original"]])
        with np.errstate(divide="ignore", invalid="ignore"):  # σ̂ = 0 gives inf / nan, as in torch
            return (_float64(original) / sigma_hat(p, state)).astype(original.dtype)
    v = np.asarray(state[p.keys["v"]])
    v64, g64 = _float64(v), _float64(state[p.keys["g"]])
    if p.dim == WHOLE_TENSOR:
        norm = np.sqrt(np.sum(v64 * v64))
    else:
        axes = tuple(axis for axis in range(v.ndim) if axis != p.dim)
        norm = np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (g64 * v64 / norm).astype(v.dtype)


def _describe(p: Parametrization, state: Mapping[str, np.ndarray]) -> str:
    head = f"{p.module or '(top level)'}: {p.kind} ({p.style}) folded into {p.weight_key}"
    if p.kind == SPECTRAL_NORM:
        return f"{head} = original / σ̂ (σ̂ = {sigma_hat(p, state):.4g} from the stored u, v)"
    over = "the whole tensor" if p.dim == WHOLE_TENSOR else f"every axis except {p.dim}"
    return f"{head} = g·v/‖v‖ (norm over {over})"


def to_plain_state_dict(
    state: Mapping[str, np.ndarray], wanted_keys: Collection[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Adapt a checkpoint with parametrizations to a model whose state-dict keys are ``wanted_keys``.

    Each parametrization whose keys the model does not have is replaced by ``weight_key`` ->
    :func:`effective_weight` (exactly the eval-mode weight); when the model has the same kind in the other
    style (e.g. a legacy checkpoint for a model built with ``parametrizations.spectral_norm``), the keys
    are renamed instead. Keys not involved pass through unchanged. Returns the new dict and one note per
    change. Raises :class:`LoadError` for a new-style parametrization lipcheck cannot reproduce whose
    keys the model does not have.
    """
    wanted = set(wanted_keys)
    out = dict(state)
    notes: list[str] = []
    for p in find_parametrizations(state):
        if set(p.keys.values()) <= wanted:
            continue
        other_style = LEGACY if p.style == PARAMETRIZATIONS else PARAMETRIZATIONS
        other = _keys_for(p.kind, other_style, p.module, p.name)
        for key in p.keys.values():
            del out[key]
        if set(other.values()) <= wanted:
            for role, key in p.keys.items():
                out[other[role]] = state[key]
            notes.append(
                f"{p.module or '(top level)'}: {p.kind} keys renamed from the {p.style} to the {other_style} style"
            )
            continue
        out[p.weight_key] = effective_weight(p, state)
        notes.append(_describe(p, state))
    unknown = _unknown_parametrizations(state, wanted)
    if unknown:
        raise LoadError(
            "the checkpoint has parametrizations lipcheck cannot fold into a plain weight (only spectral_norm "
            "and weight_norm): " + "; ".join(unknown)
        )
    return out, notes


def _unknown_parametrizations(state: Mapping[str, np.ndarray], wanted: set[str]) -> list[str]:
    known = (set(_NEW_SPECTRAL_NORM.values()), set(_NEW_WEIGHT_NORM.values()))
    unknown = []
    for (module, name), rests in _new_style_groups(state).items():
        keys = {_join(module, f"parametrizations.{name}.{rest}") for rest in rests}
        if rests not in known and not keys <= wanted:
            unknown.append(f"{_join(module, name)} ({', '.join(sorted(keys))})")
    return unknown


# ------------------------------------------------------------------------------------------------ audit


@dataclass(frozen=True)
class SpectralNormAuditInput:
    """The checkpoint side of a :class:`SpectralNormAudit`: everything but the analysed layer's constants.

    SN: ``sigma_hat`` from the stored vectors, ``sigma_reshaped_exact`` = σ_max(W_mat) of the original by
    float64 SVD, ``reshaped_after`` = their ratio (σ of the reshaped weight the model uses: 1 when u, v are
    converged, above 1 when stale or shrunken), ``stale`` = 1 − σ̂ / σ_reshaped_exact. WN: all None.
    """

    kind: str
    style: str
    module: str
    stored_key: str
    weight_key: str
    sigma_hat: float | None
    sigma_reshaped_exact: float | None
    reshaped_after: float | None
    stale: float | None
    param_keys: tuple[str, ...]  # every key an analysed layer's ``param`` may carry for this weight

    def to_audit(self, layer: LayerResult) -> SpectralNormAudit:
        """The audit of ``layer`` (the analysed row of this weight): its real constants are the row's."""
        return SpectralNormAudit(
            kind=self.kind,
            style=self.style,
            module=self.module,
            stored_key=self.stored_key,
            sigma_hat=self.sigma_hat,
            sigma_reshaped_exact=self.sigma_reshaped_exact,
            reshaped_after=self.reshaped_after,
            stale=self.stale,
            claims_1_lipschitz=self.kind == SPECTRAL_NORM,
            lipschitz=layer.sigma_upper,
            lipschitz_exact=layer.sigma_exact,
        )


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else float("inf")
    return numerator / denominator


def audit_inputs(p: Parametrization, state: Mapping[str, np.ndarray]) -> SpectralNormAuditInput:
    """σ̂, the exact reshaped σ of the original, and what they imply, for one parametrization."""
    sigma: float | None = None
    exact: float | None = None
    after: float | None = None
    stale: float | None = None
    if p.kind == SPECTRAL_NORM:
        sigma = sigma_hat(p, state)
        w = reshaped_matrix(_float64(state[p.keys["original"]]), p.dim)
        exact = float(sigma_max_svd(w[np.newaxis])[0])
        after = _ratio(exact, sigma)
        stale = 1.0 - _ratio(sigma, exact)
    return SpectralNormAuditInput(
        kind=p.kind,
        style=p.style,
        module=p.module,
        stored_key=p.stored_key,
        weight_key=p.weight_key,
        sigma_hat=sigma,
        sigma_reshaped_exact=exact,
        reshaped_after=after,
        stale=stale,
        param_keys=(p.stored_key, p.weight_key, *(k for k in p.keys.values() if k != p.stored_key)),
    )


def attach_audits(
    layers: Sequence[LayerResult], audits: Iterable[SpectralNormAuditInput]
) -> tuple[tuple[LayerResult, ...], list[SpectralNormAuditInput]]:
    """Give each analysed layer whose ``param`` is one of an audit's ``param_keys`` its audit.

    Returns the new layers and the audits no layer matched (e.g. the weight was renamed by the export).
    """
    by_key: dict[str, SpectralNormAuditInput] = {}
    pending = list(audits)
    for audit in pending:
        for key in audit.param_keys:
            by_key.setdefault(key, audit)
    used: set[int] = set()
    out = []
    for layer in layers:
        match = by_key.get(layer.param) if layer.param is not None else None
        if match is None:
            out.append(layer)
            continue
        used.add(id(match))
        out.append(replace(layer, audit=match.to_audit(layer)))
    return tuple(out), [audit for audit in pending if id(audit) not in used]
