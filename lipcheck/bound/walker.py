"""The one graph walker: gives every tensor t a constant L_t with ‖t(x) − t(y)‖ ≤ L_t·‖x − y‖.

Float inputs start at 1 (the bound is w.r.t. their concatenation), integer inputs at 0 (held fixed).
A one-input op multiplies by its constant; Add sums; Concat takes the root of the sum of squares (the rule
says which); several outputs combine by root of the sum of squares (AutoLip, Virmaux & Scaman 2018).
Certified gains (σ_upper) and power-iteration gains (σ_power) are composed side by side, never mixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.errors import LipcheckError
from lipcheck.ir.graph import Graph, Node
from lipcheck.progress import NullProgress, Progress, WorkMeter
from lipcheck.report.model import LayerResult, OpResult, Settings, Unbounded
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, rule_for

if TYPE_CHECKING:
    from lipcheck.bound.cache import LayerCache

INF = math.inf


class RuleFailure(RuntimeError):
    """A rule crashed: a bug in lipcheck, reported with the node it was bounding."""


@dataclass
class WalkResult:
    upper: dict[str, float] = field(default_factory=dict)
    estimate: dict[str, float] = field(default_factory=dict)
    layers: list[LayerResult] = field(default_factory=list)
    ops: list[OpResult] = field(default_factory=list)
    unbounded: list[Unbounded] = field(default_factory=list)
    # node name -> (its bound, the indices of its live inputs): what :func:`compose` re-uses
    bounds: dict[str, tuple[OpBound, tuple[int, ...]]] = field(default_factory=dict)
    cached: int = 0  # weighted layers whose rule result came from the layer cache

    def output_bound(self, graph: Graph, env: Mapping[str, float]) -> float:
        return rss_up([env.get(o.name, INF) for o in graph.outputs])


# Composition rounds every certified number UP: a product, sum or root of a sum of squares of positive values is
# never rounded down, and never to 0 (float64 weights of 1e-200 give constants of 1e-400: they become the
# smallest subnormal, not 0). Each operation below is correctly rounded or within 1 ulp (math.hypot, math.fsum),
# so one step to the next float above covers it.
_TINY = math.ulp(0.0)


def _up(value: float) -> float:
    return math.nextafter(value, INF) if 0.0 < value < INF else value


def mul_up(a: float, b: float) -> float:
    """An upper bound on a·b for a, b ≥ 0 (0 only when one of them is 0; inf when either is)."""
    if a == 0.0 or b == 0.0:
        return 0.0
    product = a * b
    return _TINY if product == 0.0 else _up(product)


def rss_up(values: list[float]) -> float:
    """An upper bound on √(Σ v²) for v ≥ 0, without underflow or overflow of the squares."""
    if any(math.isinf(v) or math.isnan(v) for v in values):
        return INF
    return _up(math.hypot(*values))


def sum_up(values: list[float]) -> float:
    if any(math.isinf(v) or math.isnan(v) for v in values):
        return INF
    return _up(math.fsum(values))


def _combine(values: list[float], combine: str) -> float:
    if not values:
        return 0.0
    return rss_up(values) if combine == "rss" else sum_up(values)


def bound_node(node: Node, ctx: RuleContext) -> OpBound:
    """The rule for one node; raises NoGlobalConstant for unbounded or unknown ops."""
    if node.domain not in ("", "ai.onnx"):
        raise NoGlobalConstant(f"op {node.op_type} of custom domain '{node.domain}' is not known to lipcheck")
    rule = rule_for(node.op_type)
    if rule is None:
        raise NoGlobalConstant(f"op {node.op_type} is not known to lipcheck")
    try:
        return rule(node, ctx)
    except (NoGlobalConstant, LipcheckError):  # a model the rule refuses (e.g. InvalidModelError): one line
        raise
    except Exception as exc:
        raise RuleFailure(f"while bounding node {node.name} ({node.op_type}): {type(exc).__name__}: {exc}") from exc


def work_estimate(node: Node, graph: Graph) -> float:
    """A cheap, rough cost of bounding ``node``, for the progress bar's ETA: a Conv applies its kernel at every
    input position (C_out·C_in/groups·prod(kernel)·prod(input spatial), which is the weight's size times the
    input's spatial size); Gemm / MatMul cost their weight's size; everything else about nothing."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0.0
    sizes = [int(np.prod(np.shape(graph.constants[n]))) for n in node.inputs[:2] if n in graph.constants]
    if not sizes:
        return 0.0
    if node.op_type in ("Conv", "ConvTranspose"):
        spatial = graph.shapes.get(node.inputs[0], ())[2:]
        return float(sizes[-1]) * float(np.prod(spatial)) if spatial else float(sizes[-1])
    return float(max(sizes))


def walk(
    graph: Graph,
    settings: Settings,
    progress: Progress | None = None,
    *,
    cache: LayerCache | None = None,
    jobs: int = 1,
) -> WalkResult:
    """Bound every node in topological order. With ``cache``, the weighted layers' rule results are read
    from / written to it; with ``jobs`` > 1 the ones not in the cache are first computed in that many worker
    processes (:mod:`lipcheck.bound.parallel`). Either way the numbers are those of the plain walk."""
    progress = progress or NullProgress()
    producers = {o: n for n in graph.nodes for o in n.outputs}
    ctx = RuleContext(graph=graph, settings=settings, producers=producers)
    res = WalkResult()
    for info in graph.inputs:
        res.upper[info.name] = res.estimate[info.name] = 1.0 if info.is_float else 0.0
    # node index -> its rule's result (or the error it raised), from the cache or a worker
    ready: dict[int, OpBound | Exception] = {}
    keys: dict[int, str] = {}
    if cache is not None:
        from lipcheck.bound.cache import is_cacheable, layer_key

        for i, node in enumerate(graph.nodes):
            if is_cacheable(node):
                key = layer_key(node, graph, settings)
                if key is None:
                    continue
                keys[i] = key
                hit = cache.load(key, node)
                if hit is not None:
                    ready[i] = hit
                    res.cached += 1
    meter = WorkMeter(
        progress,
        "bounding layers",
        [(node.name, 1.0 + (0.0 if i in ready else work_estimate(node, graph))) for i, node in enumerate(graph.nodes)],
    )
    if jobs > 1:
        _bound_in_workers(graph, settings, jobs, ready, keys, cache, meter)

    def bound_of(i: int, node: Node) -> OpBound:
        """``bound_node`` through the cache and the workers' results."""
        outcome = ready.pop(i, None)
        if isinstance(outcome, OpBound):
            return outcome
        if outcome is not None:
            raise outcome
        bound = bound_node(node, ctx)
        if cache is not None and i in keys:
            cache.store(keys[i], node, bound)
        return bound

    for index, node in enumerate(graph.nodes):
        meter.working_on(index)
        var = ctx.var_inputs(node)
        live = [i for i in var if res.upper.get(node.inputs[i], INF) > 0]
        try:
            bound = bound_of(index, node)
        except NoGlobalConstant as exc:
            if not live:
                for o in node.outputs:
                    res.upper[o] = res.estimate[o] = 0.0
                res.ops.append(OpResult(node.name, node.op_type, 0.0, "does not depend on the float inputs"))
                continue
            res.unbounded.append(Unbounded(node.name, node.op_type, str(exc)))
            res.ops.append(OpResult(node.name, node.op_type, None, str(exc)))
            for o in node.outputs:
                res.upper[o] = res.estimate[o] = INF
            continue
        missing = [i for i in live if i not in bound.gains]
        if missing:
            reason = (
                f"the output depends on '{node.inputs[missing[0]]}' in a way lipcheck cannot bound "
                f"({bound.rule})"
            )
            res.unbounded.append(Unbounded(node.name, node.op_type, reason))
            res.ops.append(OpResult(node.name, node.op_type, None, reason))
            for o in node.outputs:
                res.upper[o] = res.estimate[o] = INF
            continue
        res.bounds[node.name] = (bound, tuple(live))
        est_gains = bound.estimate_gains or bound.gains
        factors = [(bound.gains[i], res.upper[node.inputs[i]]) for i in live]
        up = _combine([mul_up(g, u) for g, u in factors], bound.combine)
        if math.isinf(up) and all(math.isfinite(g) and math.isfinite(u) for g, u in factors):
            # finite factors whose composition is past float64's range: no certificate, and this node is why
            reason = "the composed bound overflows float64 here (above 1.8e308)"
            res.unbounded.append(Unbounded(node.name, node.op_type, reason))
        est = _combine([est_gains.get(i, bound.gains[i]) * res.estimate[node.inputs[i]] for i in live], bound.combine)
        for o in node.outputs:
            if o:
                res.upper[o], res.estimate[o] = up, est
        if bound.norms is not None:
            n = bound.norms
            in_name = node.inputs[live[0]] if live else node.inputs[0]
            res.layers.append(
                LayerResult(
                    name=node.name,
                    op=node.op_type,
                    param=graph.param_names.get(bound.weight, bound.weight) if bound.weight else None,
                    fused_with=node.fused_with,
                    input_shape=tuple(graph.shapes.get(in_name, ())),
                    output_shape=tuple(graph.shapes.get(node.outputs[0], ())),
                    sigma_power=n.sigma_power,
                    power_iterations=n.power_iterations,
                    sigma_exact=n.sigma_exact,
                    exact_method=n.exact_method,
                    exact_skipped=n.exact_skipped,
                    sigma_upper=n.sigma_upper,
                    upper_method=n.upper_method,
                    sigma_reshaped=n.sigma_reshaped,
                    lipschitz=n.sigma_upper,
                    cumulative_upper=None if math.isinf(up) else up,
                    cumulative_estimate=None if math.isinf(est) else est,
                )
            )
        else:
            gains = [bound.gains[i] for i in var if i in bound.gains]
            const = max(gains) if gains else 0.0
            res.ops.append(OpResult(node.name, node.op_type, const, bound.rule, bound.loose))
    meter.close()
    progress.finish()
    return res


def _bound_in_workers(
    graph: Graph,
    settings: Settings,
    jobs: int,
    ready: dict[int, OpBound | Exception],
    keys: dict[int, str],
    cache: LayerCache | None,
    meter: WorkMeter,
) -> None:
    """Compute the weighted layers that are not ``ready`` in worker processes, into ``ready`` (and the cache)."""
    from lipcheck.bound.cache import is_cacheable
    from lipcheck.bound.parallel import bound_in_workers, layer_task

    tasks = []
    for i, node in enumerate(graph.nodes):
        if i not in ready and is_cacheable(node):
            task = layer_task(i, node, graph, settings)
            if task is not None:
                tasks.append(task)

    def arrived(i: int, outcome: OpBound | Exception) -> None:
        ready[i] = outcome
        if cache is not None and i in keys and isinstance(outcome, OpBound):
            cache.store(keys[i], graph.nodes[i], outcome)
        meter.done(i)

    bound_in_workers(tasks, jobs, arrived)


def compose(graph: Graph, result: WalkResult, layer_scale: Mapping[str, float]) -> float:
    """The certified bound of the model's outputs after multiplying the weights of some layers (node name ->
    factor >= 0): σ(c·W) = c·σ(W), so each such layer's certified gain scales by its factor and everything
    else is re-composed exactly as :func:`walk` does, without recomputing any norm. inf when unbounded."""
    env: dict[str, float] = {i.name: 1.0 if i.is_float else 0.0 for i in graph.inputs}
    for node in graph.nodes:
        entry = result.bounds.get(node.name)
        if entry is None:  # unbounded, or a node that does not depend on the float inputs
            value = INF if any(u.node == node.name for u in result.unbounded) else 0.0
        else:
            bound, live = entry
            scale = layer_scale.get(node.name, 1.0)
            gains = [mul_up(bound.gains[i], scale if bound.norms is not None else 1.0) for i in live]
            value = _combine([mul_up(g, env.get(node.inputs[i], INF)) for g, i in zip(gains, live)], bound.combine)
        for o in node.outputs:
            if o:
                env[o] = value
    return result.output_bound(graph, env)
