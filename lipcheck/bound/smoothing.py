"""Smoothed surrogates of a net's piecewise-linear ops, for the lower bound's annealed ascent.

The Jacobian of a ReLU / max-pool net is constant on each activation region, so gradients of ``||J(x)||`` are
zero and an ascent on the real net only moves by its step size. With every kink replaced by a smooth
function of temperature τ (softplus for ReLU, log-sum-exp for a max-pool window, ...), the surrogate's
``||f_τ(x + d) - f_τ(x)|| / ||d||`` has gradients that see the regions nearby; lowering τ stage by stage
(annealing) brings the surrogate back to the net. Nothing measured on a surrogate is reported: the search
measures ``||J(x)||`` and the ratio of the real net at the point the annealing ends (lipcheck.bound.lower).

τ of each node is a factor times the rms of the node's input at the stage's start point, so the schedule
means the same on nets of any scale.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lipcheck.bound import torch_eval
from lipcheck.bound.jacobian import Flat
from lipcheck.bound.regions import Kink
from lipcheck.bound.torch_eval import EvalContext, OpFn, TorchEvaluator
from lipcheck.ir.graph import Graph, Node

__all__ = ["Smoothable", "smoothable", "smoothed"]

_SOFTPLUS_THRESHOLD = 20.0  # softplus(z/τ) is z/τ beyond this (torch's default)
_FLOOR = 1e-300  # a max-pool window's sum of exponentials below this: the window's max stands in


@dataclass(frozen=True)
class Smoothable:
    """One node the surrogate replaces: its input ``z``, output ``h`` and the kink (None: a MaxPool)."""

    z: str
    h: str
    kink: Kink | None


def smoothable(graph: Graph, kinks: Sequence[Kink]) -> list[Smoothable]:
    """The kinks, and the MaxPool nodes with one output (no Indices), in graph order."""
    by_output = {k.h: k for k in kinks}
    found: list[Smoothable] = []
    for node in graph.nodes:
        if not node.outputs or not node.inputs:
            continue
        if node.outputs[0] in by_output:
            found.append(Smoothable(node.inputs[0], node.outputs[0], by_output[node.outputs[0]]))
        elif (node.op_type == "MaxPool" and node.domain in ("", "ai.onnx")
              and len([o for o in node.outputs if o]) == 1):
            found.append(Smoothable(node.inputs[0], node.outputs[0], None))
    return found


def _softplus(z: torch.Tensor, tau: float) -> torch.Tensor:
    return F.softplus(z, beta=1.0 / tau, threshold=_SOFTPLUS_THRESHOLD)


def _kink_op(kink: Kink, tau: float) -> OpFn:
    def op(node: Node, x: list[torch.Tensor | None], ctx: EvalContext) -> torch.Tensor:
        z = x[0]
        assert z is not None
        if kink.op == "Relu":
            return _softplus(z, tau)
        if kink.op in ("LeakyRelu", "PRelu"):
            a = torch.as_tensor(kink.alpha, dtype=z.dtype) if kink.op == "LeakyRelu" else x[1]
            assert a is not None
            return a * z + (1 - a) * _softplus(z, tau)
        if kink.op == "Abs":
            return torch.sqrt(z * z + tau * tau)
        # Clip: lo + softplus(z - lo) - softplus(z - hi), one-sided where a bound is missing
        out = z
        if kink.lo is not None:
            out = kink.lo + _softplus(out - kink.lo, tau)
        if kink.hi is not None:
            out = kink.hi - _softplus(kink.hi - out, tau)
        return out

    return op


def _max_pool_op(tau: float) -> OpFn:
    """τ·log Σ exp(u/τ) over each window (its pads hold -inf, as MaxPool's), shifted by the channel's max;
    never below the window's max (where every term underflowed); finite gradients at every τ."""

    def op(node: Node, x: list[torch.Tensor | None], ctx: EvalContext) -> torch.Tensor:
        X = x[0]
        assert X is not None
        hard = torch_eval.max_pool(node, x, ctx)
        k, s, d = torch_eval._pool_params(node, X)
        begins, _, needed = torch_eval._pool_window(node, X.shape[2:], k, s, d)
        shift = X.detach().flatten(2).amax(-1).reshape(*X.shape[:2], *([1] * (X.dim() - 2)))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        E = torch_eval._pad_dims(torch.exp((X - shift) / tau), 2, begins, needed, value=0.0)
        # a window whose every term underflowed is the max itself; its log is taken of a floored sum (clamp_min
        # passes no gradient below the floor), so the log's infinite slope never meets the zero weight the
        # selection gives it, which would make the ascent's gradient NaN
        sums = torch_eval._window_sum(E, k, s, d)
        soft = torch.where(sums > _FLOOR, shift + tau * torch.log(sums.clamp_min(_FLOOR)), hard)
        return torch.maximum(soft, hard)

    return op


def smoothed(f: Flat, graph: Graph, nodes: Sequence[Smoothable], scales: Mapping[str, float], factor: float
             ) -> Flat:
    """f with each node in ``nodes`` replaced by its surrogate at τ = ``factor`` × ``scales[z]`` (the rms of its
    input); shares the evaluator's constants."""
    evaluator: TorchEvaluator = copy.copy(f.evaluator)
    overrides: dict[str, OpFn] = {}
    for item in nodes:
        tau = factor * max(scales.get(item.z, 0.0), 1e-12)
        if not math.isfinite(tau):
            continue
        overrides[item.h] = _kink_op(item.kink, tau) if item.kink is not None else _max_pool_op(tau)
    evaluator.overrides = overrides
    out = copy.copy(f)
    out.evaluator = evaluator
    return out
