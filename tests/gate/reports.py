"""Hand-built reports for the gate tests (no analysis runs: every number is chosen)."""

from __future__ import annotations

from collections.abc import Sequence

import lipcheck
from lipcheck.report.model import InputInfo, LayerResult, LowerBound, Report, Unbounded


def layer(name: str, sigma: float, op: str = "Gemm", cumulative: float | None = None,
          reshaped: float | None = None, exact: float | None = None) -> LayerResult:
    return LayerResult(
        name=name, op=op, param=f"{name}.weight", fused_with=(), input_shape=(1, 4), output_shape=(1, 4),
        sigma_power=sigma * 0.999, power_iterations=100, sigma_exact=sigma if exact is None else exact,
        exact_method="svd", exact_skipped=None, sigma_upper=sigma, upper_method="svd+margin",
        sigma_reshaped=reshaped, lipschitz=sigma, cumulative_upper=cumulative if cumulative is not None else sigma,
        cumulative_estimate=cumulative if cumulative is not None else sigma,
    )


def report(
    upper: float | None = 2.5,
    layers: Sequence[LayerResult] | None = None,
    model: str = "m.onnx",
    lower: float | None = 2.0,
) -> Report:
    """A report with the given certified bound (``None``: unbounded, with one unbounded node)."""
    if layers is None:
        layers = (layer("fc1", 1.25), layer("fc2", 2.0, cumulative=upper))
    return Report(
        model=model,
        inputs=(InputInfo("x", (1, 4), "float32"),),
        upper_bound=upper,
        certified=upper is not None,
        estimate=upper * 0.99 if upper is not None else None,
        lower_bound=LowerBound(value=lower) if lower is not None else None,
        unbounded=() if upper is not None else (Unbounded("/MatMul", "MatMul", "product of two inputs"),),
        layers=tuple(layers),
        ops=(),
        lipcheck_version=lipcheck.__version__,
    )
