"""The analysis result: frozen dataclasses that every output format renders and users assert on.

Every number says what it is: ``sigma_power`` is a power-iteration estimate (never above the truth),
``sigma_exact`` is exact up to floating point (float64 SVD / Lanczos), ``sigma_upper`` is a certified upper
bound (never below the truth). ``None`` means "not computed" (exact skipped) or "unbounded" (bounds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


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
    cumulative_upper: float | None  # certified bound of this layer's output w.r.t. the model input
    cumulative_estimate: float | None  # the same composed from power estimates

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

    def to_dict(self) -> dict[str, Any]:
        """The JSON schema (schema_version 1), documented in the README."""
        lb = self.lower_bound
        return {
            "schema_version": SCHEMA_VERSION,
            "lipcheck_version": self.lipcheck_version,
            "model": self.model,
            "input_shape": self.input_shape,
            "inputs": [asdict(i) | {"shape": list(i.shape)} for i in self.inputs],
            "upper_bound": self.upper_bound,
            "certified": self.certified,
            "estimate": self.estimate,
            "lower_bound": lb.value if lb else None,
            "ratio": self.ratio,
            "lower_bound_details": asdict(lb) if lb else None,
            "unbounded": [asdict(u) for u in self.unbounded],
            "layers": [
                asdict(layer)
                | {
                    "fused_with": list(layer.fused_with),
                    "input_shape": list(layer.input_shape),
                    "output_shape": list(layer.output_shape),
                    "power_gap": layer.power_gap,
                }
                for layer in self.layers
            ],
            "ops": [asdict(o) for o in self.ops],
            "notes": list(self.notes),
            "settings": asdict(self.settings),
        }
