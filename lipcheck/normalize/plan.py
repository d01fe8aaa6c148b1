"""The normalization plan (pure): which weights to multiply by what, so the written model meets a target.

Every factor is computed from the layer's CERTIFIED σ (``sigma_upper``, the operator norm on the layer's real
input, a conv's included), never from the reshaped kernel or a power estimate, so a normalized layer really
is ≤ its target. Factors aim ``SAFETY`` below the target (``HALF_SAFETY`` for float16 / bfloat16 weights), so
that rounding the rescaled weights back to their dtype cannot lift the re-analysed certificate above it.

Policies:

- per layer (default): W ← W · min(1, target / σ_upper(W)): only layers above the target change.
- exact (``--exact``): W ← W · target / σ_upper(W) for every layer, the seed formula W / σ(W) at target 1.
- global (``--global-target L``): one common factor c for the selected layers (all weighted layers, or
  ``--layers``), i.e. the reduction spread evenly in log space, chosen as the largest c with certified
  bound(c) ≤ L. The bound is re-composed with each selected layer's certified gain times c (σ(cW) = cσ(W));
  on a chain of k layers c = (L / bound)^(1/k) exactly, with residual or unscaled paths bisection finds it.
  A target no c reaches (identity skips, unselected layers, unbounded nodes) is an error that says so.

A weight shared by several layers gets the smallest of their factors. Biases are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lipcheck.errors import LipcheckError
from lipcheck.report.model import LayerResult

SAFETY = 1e-5  # factors aim this far (relative) below the target: float32 rounding of the written weights
# half-precision weights round far more coarsely (relative steps of 2^-11 and 2^-8): aim further below
HALF_SAFETY = {"float16": 2e-3, "bfloat16": 1.6e-2}
_BISECTION_STEPS = 200


class PlanError(LipcheckError):
    """The target cannot be met by scaling weights (or the model gives nothing to scale)."""


@dataclass(frozen=True)
class LayerPlan:
    name: str
    op: str
    param: str | None  # the weight tensor to multiply (None: nothing to scale, e.g. a pooling layer)
    fused_with: tuple[str, ...]
    sigma_before: float  # certified σ of the layer as it is
    factor: float  # what its weight is multiplied by (1 = unchanged)
    sigma_after: float  # certified σ after scaling: factor · sigma_before
    reason: str  # why this factor

    @property
    def changed(self) -> bool:
        return self.param is not None and self.factor != 1.0


@dataclass(frozen=True)
class Plan:
    mode: str  # "per-layer", "exact" or "global"
    target: float  # the per-layer target (per-layer / exact) or the global one
    layers: tuple[LayerPlan, ...]
    bound_before: float | None  # the certified bound of the model as it is (None: unbounded)
    bound_after: float | None  # the certified bound the plan predicts (None: unbounded)
    notes: tuple[str, ...] = ()

    @property
    def factors(self) -> dict[str, float]:
        """param -> factor for every weight the plan changes."""
        return {layer.param: layer.factor for layer in self.layers if layer.changed and layer.param}


def _row(layer: LayerResult, factor: float, reason: str) -> LayerPlan:
    if layer.param is None:
        factor, reason = 1.0, "no weight to scale (e.g. a pooling layer): unchanged"
    return LayerPlan(
        name=layer.name, op=layer.op, param=layer.param, fused_with=layer.fused_with,
        sigma_before=layer.sigma_upper, factor=factor, sigma_after=layer.sigma_upper * factor, reason=reason,
    )


def _share(rows: list[LayerPlan]) -> tuple[list[LayerPlan], list[str]]:
    """One factor per weight tensor: the smallest of the layers that use it."""
    smallest: dict[str, float] = {}
    for r in rows:
        if r.param is not None:
            smallest[r.param] = min(smallest.get(r.param, 1.0e300), r.factor)
    notes = []
    out = []
    for r in rows:
        if r.param is not None and smallest[r.param] < r.factor:
            notes.append(f"{r.param} is shared by several layers: {r.name} gets the smallest factor of them")
            r = LayerPlan(r.name, r.op, r.param, r.fused_with, r.sigma_before, smallest[r.param],
                          r.sigma_before * smallest[r.param], r.reason + " (shared weight: smallest factor)")
        out.append(r)
    return out, notes


def plan_per_layer(
    layers: Sequence[LayerResult],
    target: float,
    *,
    exact: bool = False,
    bound: Callable[[dict[str, float]], float] | None = None,
    bound_before: float | None = None,
    safety: float = SAFETY,
) -> Plan:
    """Per-layer targets: every weighted layer's certified σ ends ≤ ``target`` (``exact``: = target).
    ``bound(layer name -> factor)`` re-composes the model's bound for the report's prediction."""
    if not target > 0 or not math.isfinite(target):
        raise PlanError(f"--target must be a positive number, got {target}")
    aim = target * (1 - safety)
    rows = []
    for layer in layers:
        s = layer.sigma_upper
        if s <= 0:
            rows.append(_row(layer, 1.0, "σ is 0: unchanged"))
        elif exact:
            rows.append(_row(layer, aim / s, f"--exact: scaled to {target:g}"))
        elif s > aim:
            rows.append(_row(layer, aim / s, f"σ above {target:g}: scaled to it"))
        else:
            rows.append(_row(layer, 1.0, f"σ at most {target:g}: unchanged"))
    rows, notes = _share(rows)
    after = _predict(bound, rows)
    return Plan("exact" if exact else "per-layer", target, tuple(rows), bound_before, after, tuple(notes))


def plan_global(
    layers: Sequence[LayerResult],
    target: float,
    bound: Callable[[dict[str, float]], float],
    *,
    only: Iterable[str] | None = None,
    safety: float = SAFETY,
) -> Plan:
    """One common factor c for the selected layers (names or params in ``only``; default every weighted
    layer), the largest with bound(c) ≤ target."""
    if not target > 0 or not math.isfinite(target):
        raise PlanError(f"--global-target must be a positive number, got {target}")
    before = bound({})
    if math.isinf(before):
        raise PlanError("the model's certified bound is unbounded (see `lipcheck analyze`): no scaling of weights "
                        "meets a global target")
    wanted = set(only) if only is not None else None
    selected = [layer for layer in layers if layer.param is not None and layer.sigma_upper > 0
                and (wanted is None or layer.name in wanted or layer.param in wanted)]
    if wanted is not None:
        unknown = wanted - {layer.name for layer in layers} - {layer.param for layer in layers if layer.param}
        if unknown:
            raise PlanError(f"--layers names no analysed layer: {', '.join(sorted(unknown))}")
    if not selected:
        raise PlanError("no weighted layer to scale")
    aim = target * (1 - safety)
    names = [layer.name for layer in selected]

    def at(c: float) -> float:
        return bound({n: c for n in names})

    if before <= aim:
        c = 1.0
    else:
        floor = at(0.0)
        if floor > aim:
            raise PlanError(
                f"--global-target {target:g} cannot be met by scaling these layers: with their weights at zero the "
                f"certified bound is still {floor:.4g} (identity skips or layers that are not scaled)"
            )
        c = (aim / before) ** (1.0 / len(names))  # exact on a chain; a start otherwise
        if at(c) > aim:
            lo, hi = 0.0, c  # bound(lo) <= aim < bound(hi): the largest c with bound(c) <= aim
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                if at(mid) <= aim:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-15 * hi:
                    break
            c = lo
    rows = [
        _row(layer, c if layer.name in names else 1.0,
             f"global target {target:g}: common factor" if layer.name in names else "not selected: unchanged")
        for layer in layers
    ]
    rows, notes = _share(rows)
    return Plan("global", target, tuple(rows), before, _predict(bound, rows), tuple(notes))


def _predict(bound: Callable[[dict[str, float]], float] | None, rows: Sequence[LayerPlan]) -> float | None:
    if bound is None:
        return None
    value = bound({r.name: r.factor for r in rows if r.param is not None})
    return None if math.isinf(value) else value
