"""The analysis result: frozen dataclasses that every output format renders and users assert on.

Every number says what it is: ``sigma_power`` is a power-iteration estimate (never above the truth),
``sigma_exact`` is exact up to floating point (float64 SVD / Lanczos), ``sigma_upper`` is a certified upper
bound (never below the truth). ``None`` means "not computed" (exact skipped) or "unbounded" (bounds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lipcheck.report.numbers import format_number, format_percent

SCHEMA_VERSION = 2  # 2: "method" and "bounds" (one entry per composition method); otherwise as 1
SPECTRAL_NORM = "spectral_norm"
WEIGHT_NORM = "weight_norm"
LIPSCHITZ_TOLERANCE = 1e-6  # a spectrally normalized layer with a constant above 1 + this is "not 1-Lipschitz"
STALE_TOLERANCE = 1e-3  # stored u, v under-estimating σ by more than this fraction are called stale


@dataclass(frozen=True)
class NormResult:
    """The three (or four) spectral norms of one linear operator."""

    sigma_power: float  # estimate, from below
    power_iterations: int
    sigma_exact: float | None  # exact in float64, None when skipped
    exact_method: str  # "svd", "lanczos", "kronecker-svd", "closed-form", ... or "skipped"
    sigma_upper: float  # certified upper bound (rounding margin included)
    upper_method: str  # "svd+margin", "circular-fft", "reshaped-bound", "gram", ...
    exact_skipped: str | None = None  # why sigma_exact is None
    sigma_reshaped: float | None = None  # convs: the reshaped-kernel norm torch's spectral_norm targets


@dataclass(frozen=True)
class SpectralNormAudit:
    """What a checkpoint's spectral_norm / weight_norm parametrization claims, against what the layer is.

    torch's ``spectral_norm`` divides the stored ``original`` weight by σ̂ = uᵀ·W_mat·v, computed from the
    stored power-iteration vectors (W_mat: the weight reshaped to a matrix around ``dim``). That makes
    the *reshaped kernel* of the used weight have norm σ_reshaped_exact / σ̂: 1 when u, v are converged,
    above 1 when they are stale or shrunken. Even at exactly 1 a conv is not 1-Lipschitz: its operator
    norm on its input (``lipschitz``, the analysed row's certified σ upper) is larger.
    """

    kind: str  # "spectral_norm" or "weight_norm"
    style: str  # "parametrizations" (torch.nn.utils.parametrizations) or "legacy" (the older hooks)
    module: str  # the module's state-dict prefix, "" for a top-level module
    stored_key: str  # the checkpoint key the layer's weight is stored under (SN: original; WN: v)
    sigma_hat: float | None  # SN: uᵀ·W_mat·v from the stored vectors (float64), what torch divides by
    sigma_reshaped_exact: float | None  # SN: exact σ_max of the reshaped original (float64 SVD)
    reshaped_after: float | None  # SN: σ of the reshaped used weight = sigma_reshaped_exact / sigma_hat
    stale: float | None  # SN: relative under-estimate 1 − sigma_hat / sigma_reshaped_exact
    claims_1_lipschitz: bool  # True for spectral_norm
    lipschitz: float  # the layer's real certified constant (the row's sigma_upper: the operator norm)
    lipschitz_exact: float | None  # the row's sigma_exact (None when skipped)

    @property
    def is_1_lipschitz(self) -> bool:
        """The certified constant is at most 1 (up to :data:`LIPSCHITZ_TOLERANCE`); NaN is not."""
        return self.lipschitz <= 1.0 + LIPSCHITZ_TOLERANCE


@dataclass(frozen=True)
class SpectralNormAuditSummary:
    """The audit's one-line answer over all spectrally normalized layers (``Report.spectral_norm_audit``)."""

    layers: int  # spectrally normalized layers
    claim: float  # the constant each of them claims: 1.0
    max_lipschitz: float | None  # the largest real certified constant among them
    max_layer: str | None  # the layer it belongs to
    not_1_lipschitz: int  # how many have a certified constant above 1 + LIPSCHITZ_TOLERANCE
    stale_layers: int  # how many have reshaped_after above 1 + STALE_TOLERANCE (stale or shrunken u, v)
    max_reshaped_after: float | None  # the largest reshaped norm of a used weight
    max_reshaped_after_layer: str | None
    summary: str  # the sentence the table and markdown print


@dataclass(frozen=True)
class LayerResult:
    """A weighted linear layer (Gemm, MatMul, Conv, ConvTranspose, BatchNormalization, pools, scaling)."""

    name: str
    op: str
    param: str | None  # the weight tensor's name as stored in the model
    fused_with: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    sigma_power: float
    power_iterations: int
    sigma_exact: float | None
    exact_method: str
    exact_skipped: str | None
    sigma_upper: float
    upper_method: str
    sigma_reshaped: float | None
    lipschitz: float  # the layer's own certified Lipschitz constant (= sigma_upper)
    cumulative_upper: float | None  # certified bound of this layer's output w.r.t. the model input (product method)
    cumulative_estimate: float | None  # the same composed from power estimates
    audit: SpectralNormAudit | None = None  # set when the layer came from a spectral/weight-norm checkpoint

    @property
    def certified_gap(self) -> float | None:
        """certified / exact − 1: how far the certificate sits above the exact norm (None without an exact value)."""
        if self.sigma_exact is None:
            return None
        if self.sigma_exact == 0:
            return 0.0 if self.sigma_upper == 0 else None
        return self.sigma_upper / self.sigma_exact - 1.0

    @property
    def power_gap(self) -> float | None:
        """Relative gap of the power estimate below the exact value (or the certified value)."""
        ref = self.sigma_exact if self.sigma_exact is not None else self.sigma_upper
        if ref == 0:
            return 0.0
        return (ref - self.sigma_power) / ref


@dataclass(frozen=True)
class OpResult:
    """Any other node: its global constant from the rule table."""

    name: str
    op: str
    constant: float | None  # None = no global constant (unbounded)
    rule: str  # what the constant is, e.g. "LeakyRelu: max(1, |alpha|)"
    loose: bool = False  # finite but known to be loose (LayerNormalization)


@dataclass(frozen=True)
class Unbounded:
    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class LowerBound:
    """An empirical lower bound: max of ||J(x)||_2 and ||f(x)-f(y)||/||x-y|| over sampled/ascended inputs."""

    value: float | None
    jacobian_samples: int = 0
    ascent_steps: int = 0
    seconds: float = 0.0
    budget_seconds: float = 0.0
    completed: bool = True  # False when the time budget stopped it early
    evaluator_max_rel_error: float | None = None  # torch evaluator vs onnxruntime on a random input
    note: str | None = None  # why there is no value, or what limited it


@dataclass(frozen=True)
class BoundResult:
    """One composition method's result (:mod:`lipcheck.bound.methods`): ``value`` is a certified upper bound on the
    model's L2 Lipschitz constant when ``certified`` is True, and ``None`` when the method gave none (unbounded, not
    applicable, no certificate: ``detail["reason"]`` says why). ``seconds``: the method's own time (the product's
    includes bounding every layer)."""

    method: str  # "product" (AutoLip), "lipsdp" (LipSDP-Neuron, verified) or "blocks" (per block, verified)
    value: float | None
    seconds: float
    certified: bool
    detail: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LocalBound:
    """The bound on an input region (``--domain``): certified on the region, beside the global one.

    ``region``: each input's box, as given (``lo``, ``hi`` scalars). ``upper_bound``: a certified upper bound on the
    Lipschitz constant of the model restricted to the region (None: unbounded there, ``unbounded`` says where).
    ``lower_bound``: max ‖J(x)‖₂ at ``lower_points`` points strictly inside the region (never outside it).
    ``changed``: the ops whose constant the region lowered: node, op, global constant (None: none), local constant,
    rule."""

    region: Mapping[str, tuple[float, float]]
    upper_bound: float | None
    certified: bool
    lower_bound: float | None
    lower_points: int
    unbounded: tuple[Unbounded, ...] = ()
    changed: tuple[Mapping[str, Any], ...] = ()
    seconds: float = 0.0
    note: str | None = None
    method: str = "local"  # "local" (the composition with local constants) or "global (<method>)" when that is less

    @property
    def ratio(self) -> float | None:
        if self.upper_bound is None or not self.lower_bound:
            return None
        return self.upper_bound / self.lower_bound

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": {k: [float(v[0]), float(v[1])] for k, v in self.region.items()},
            "upper_bound": self.upper_bound,
            "certified": self.certified,
            "method": self.method,
            "lower_bound": self.lower_bound,
            "lower_points": self.lower_points,
            "ratio": self.ratio,
            "unbounded": [asdict(u) for u in self.unbounded],
            "changed": [dict(c) for c in self.changed],
            "seconds": self.seconds,
            "note": self.note,
        }


@dataclass(frozen=True)
class PointResult:
    """One point of ``--around``: the certified local bound on its ball (None: unbounded there, ``unbounded_at``
    names the first node), ‖J(x)‖₂ at the point, and for a classifier the top-two margin and the certified radius."""

    index: int
    upper_bound: float | None
    jacobian_norm: float | None
    margin: float | None = None
    certified_radius: float | None = None
    unbounded_at: str | None = None
    method: str = "local"  # what gave upper_bound: "local", "local lipsdp" (the restricted chain) or "global"


@dataclass(frozen=True)
class AroundResult:
    """``--around POINTS --radius R``: per-point results, and ‖J‖ at random interpolates between pairs of points
    (the gradient norms WGAN-GP penalizes)."""

    radius: float
    norm: str
    points: tuple[PointResult, ...]
    interpolate_norms: tuple[float, ...] = ()
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"radius": self.radius, "norm": self.norm, "points": [asdict(p) for p in self.points],
                "interpolate_jacobian_norms": list(self.interpolate_norms), "seconds": self.seconds}


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Settings:
    power_iterations: int = 100
    tolerance: float = 1e-6
    seed: int = 0
    exact_limit: int = 2_000_000
    lower_bound: bool = True
    lower_bound_seconds: float = 5.0
    method: str = "auto"  # the composition methods asked for: auto, product, lipsdp or blocks (bound.methods)
    tight_work: float = 50.0  # GFLOP per conv for the zero-padded certificate (lipcheck.norms.zeropad); 0 = off


@dataclass(frozen=True)
class Report:
    model: str
    inputs: tuple[InputInfo, ...]
    upper_bound: float | None  # certified; None = unbounded
    certified: bool
    estimate: float | None  # composition of power estimates (not a certificate)
    lower_bound: LowerBound | None
    unbounded: tuple[Unbounded, ...]
    layers: tuple[LayerResult, ...]
    ops: tuple[OpResult, ...]
    notes: tuple[str, ...] = ()
    settings: Settings = field(default_factory=Settings)
    lipcheck_version: str = ""
    bounds: tuple[BoundResult, ...] = ()  # every composition method's result; upper_bound is the least certified
    # the product composition with every layer's exact σ instead of its certified one: what per-layer tightness is
    # worth against the composition's own looseness (NOT a certificate; None when some layer has no exact value)
    exact_composition: float | None = None
    local: LocalBound | None = None  # the bound on the input region, when one was given (--domain)
    around: AroundResult | None = None  # per-point bounds around given points (--around, --radius)

    @property
    def method(self) -> str | None:
        """The method whose certified value is ``upper_bound`` (None when unbounded, or when no method is recorded)."""
        if self.upper_bound is None:
            return None
        tight = [b for b in self.bounds if b.certified and b.value is not None and b.value == self.upper_bound]
        return tight[0].method if tight else None

    @property
    def input_shape(self) -> list[Any]:
        """The float input's shape; a list of shapes when the model has several float inputs."""
        shapes = [list(i.shape) for i in self.inputs if i.dtype.startswith(("float", "bfloat"))]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def ratio(self) -> float | None:
        """upper / lower: how far the certified bound can be from the truth (>= 1)."""
        lb = self.lower_bound.value if self.lower_bound else None
        if self.upper_bound is None or not lb:
            return None
        return self.upper_bound / lb

    @property
    def has_audit(self) -> bool:
        """Some layer came from a spectral_norm / weight_norm parametrization and carries an audit."""
        return any(layer.audit is not None for layer in self.layers)

    @property
    def spectral_norm_audit(self) -> SpectralNormAuditSummary | None:
        """Are the spectrally normalized layers 1-Lipschitz? ``None`` when no layer carries an SN audit."""
        audited = [
            (layer.name, layer.audit)
            for layer in self.layers
            if layer.audit is not None and layer.audit.kind == SPECTRAL_NORM
        ]
        if not audited:
            return None
        max_name, max_audit = max(audited, key=lambda item: _sort_key(item[1].lipschitz))
        with_after = [(name, a.reshaped_after) for name, a in audited if a.reshaped_after is not None]
        after_name, after = max(with_after, key=lambda item: _sort_key(item[1]), default=(None, None))
        n = len(audited)
        not_1 = sum(not audit.is_1_lipschitz for _, audit in audited)
        stale = sum(
            not (a.reshaped_after <= 1.0 + STALE_TOLERANCE) for _, a in audited if a.reshaped_after is not None
        )
        one = n == 1
        text = f"{n} spectrally normalized layer{' claims' if one else 's claim'} to be 1-Lipschitz; "
        if not_1:
            text += "it is not" if one else f"{not_1} {'is' if not_1 == 1 else 'are'} not"
        else:
            text += "it is" if one else "all are"
        text += f": real constant{'' if one else 's up to'} {format_number(max_audit.lipschitz)} ({max_name})"
        if stale and after is not None:
            worst = max((a.stale for _, a in audited if a.stale is not None), key=_sort_key, default=None)
            if one:
                text += f"; its stored u, v are stale (σ̂ {format_percent(worst)} low): reshaped norm "
            else:
                have = "has" if stale == 1 else "have"
                text += f"; {stale} {have} stale u, v (σ̂ up to {format_percent(worst)} low): reshaped norms up to "
            text += f"{format_number(after)} instead of 1 ({after_name})"
        return SpectralNormAuditSummary(
            layers=n,
            claim=1.0,
            max_lipschitz=max_audit.lipschitz,
            max_layer=max_name,
            not_1_lipschitz=not_1,
            stale_layers=stale,
            max_reshaped_after=after,
            max_reshaped_after_layer=after_name,
            summary=text,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON schema (schema_version 2), documented in the README.

        The per-layer ``audit`` and the top-level ``spectral_norm_audit`` keys are present only when some
        layer carries an audit (the model came from a spectral_norm / weight_norm checkpoint), so that the
        JSON of every other model is unchanged.
        """
        lb = self.lower_bound
        audited = self.has_audit
        audit_summary = self.spectral_norm_audit
        return {
            "schema_version": SCHEMA_VERSION,
            "lipcheck_version": self.lipcheck_version,
            "model": self.model,
            "input_shape": self.input_shape,
            "inputs": [asdict(i) | {"shape": list(i.shape)} for i in self.inputs],
            "upper_bound": self.upper_bound,
            "certified": self.certified,
            "method": self.method,
            "bounds": [
                {"method": b.method, "value": b.value, "seconds": b.seconds, "certified": b.certified}
                | ({"blocks": list(b.detail["blocks"])} if b.method == "blocks" and "blocks" in b.detail else {})
                | ({"solver": {"name": b.detail["solver"], "status": b.detail.get("solver_status"),
                               "value": b.detail.get("solver_value"), "used": b.detail.get("multipliers")}}
                   if b.method == "lipsdp" and "solver" in b.detail else {})
                for b in self.bounds
            ],
            "estimate": self.estimate,
            "exact_composition": self.exact_composition,
            "lower_bound": lb.value if lb else None,
            "ratio": self.ratio,
            "lower_bound_details": asdict(lb) if lb else None,
            "unbounded": [asdict(u) for u in self.unbounded],
            "layers": [
                {key: value for key, value in asdict(layer).items() if key != "audit"}
                | {
                    "fused_with": list(layer.fused_with),
                    "input_shape": list(layer.input_shape),
                    "output_shape": list(layer.output_shape),
                    "power_gap": layer.power_gap,
                    "certified_gap": layer.certified_gap,
                }
                | ({"audit": asdict(layer.audit) if layer.audit else None} if audited else {})
                for layer in self.layers
            ],
            **({"spectral_norm_audit": asdict(audit_summary) if audit_summary else None} if audited else {}),
            "ops": [asdict(o) for o in self.ops],
            "notes": list(self.notes),
            "settings": asdict(self.settings),
            **({"local": self.local.to_dict()} if self.local is not None else {}),
            **({"around": self.around.to_dict()} if self.around is not None else {}),
        }


def _sort_key(value: float | None) -> float:
    """Order for max(): NaN counts as the largest (a NaN constant is the worst), None as the smallest."""
    if value is None:
        return -math.inf
    return math.inf if math.isnan(value) else value
