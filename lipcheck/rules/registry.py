"""The rule registry: one rule per ONNX op, filled by a decorator that refuses duplicates.

A rule reads one node (never walks the graph) and says how the Lipschitz constants of the node's variable
inputs combine into the constant of its outputs: ``L_out = Σ_i gain_i · L_i`` (``combine="sum"``) or
``L_out = √Σ_i (gain_i · L_i)²`` (``combine="rss"``). A rule that finds no global constant raises
:class:`NoGlobalConstant` with the reason; the walker records the node as unbounded. Before any rule runs,
:mod:`lipcheck.rules.masks` refuses the nodes that constant ±inf entries (masks) leave unbounded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lipcheck.ir.graph import Graph, Node
from lipcheck.report.model import NormResult, Settings


class NoGlobalConstant(Exception):
    """The op has no global Lipschitz constant (or lipcheck cannot bound it); the message says why."""


@dataclass(frozen=True)
class OpBound:
    gains: Mapping[int, float]  # input index -> certified gain
    rule: str  # what the constant is, shown in reports
    combine: str = "sum"  # "sum" or "rss"
    estimate_gains: Mapping[int, float] | None = None  # power-iteration gains (default: = gains)
    norms: NormResult | None = None  # set for weighted linear layers: a row in the layer table
    weight: str | None = None  # the constant input holding the weight (for `param`)
    loose: bool = False


@dataclass(frozen=True)
class RuleContext:
    graph: Graph
    settings: Settings = field(default_factory=Settings)
    producers: Mapping[str, Node] = field(default_factory=dict)  # tensor name -> the node writing it

    def is_var(self, name: str) -> bool:
        return bool(name) and name not in self.graph.constants

    def const(self, name: str) -> np.ndarray | None:
        if not name or name not in self.graph.constants:
            return None
        return np.asarray(self.graph.constants[name])

    def shape(self, name: str) -> tuple[int, ...]:
        try:
            return tuple(self.graph.shapes[name])
        except KeyError as exc:
            raise NoGlobalConstant(f"the shape of tensor '{name}' is unknown") from exc

    def producer(self, name: str) -> Node | None:
        return self.producers.get(name)

    def var_inputs(self, node: Node) -> list[int]:
        return [i for i, name in enumerate(node.inputs) if self.is_var(name)]

    def norm_options(self) -> dict[str, float | int]:
        s = self.settings
        return {"iterations": s.power_iterations, "tol": s.tolerance, "seed": s.seed, "exact_limit": s.exact_limit}


Rule = Callable[[Node, RuleContext], OpBound]
_RULES: dict[str, Rule] = {}


def register(*ops: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the rule of ``ops``; :func:`rule_for` hands it out behind the ±inf-mask check."""

    def deco(fn: Rule) -> Rule:
        checked = _behind_mask_check(fn)
        for op in ops:
            if op in _RULES:
                raise RuntimeError(f"a rule for {op} is already registered ({_RULES[op].__name__})")
            _RULES[op] = checked
        return fn

    return deco


def _behind_mask_check(fn: Rule) -> Rule:
    """``fn``, first refusing (NoGlobalConstant) a node that constant ±inf entries leave unbounded
    (:mod:`lipcheck.rules.masks`): every rule the walker runs goes through this one check."""

    @functools.wraps(fn)
    def rule(node: Node, ctx: RuleContext) -> OpBound:
        from lipcheck.rules.masks import refusal

        why = refusal(node, ctx.graph)
        if why is not None:
            raise NoGlobalConstant(why)
        return fn(node, ctx)

    return rule


def rule_for(op_type: str) -> Rule | None:
    _load_families()
    return _RULES.get(op_type)


def supported_ops() -> list[str]:
    _load_families()
    return sorted(_RULES)


_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # The one list of rule families; every supported op is registered by one of these modules.
    from lipcheck.rules import activations, linear, normalization, pooling, recurrent, structural  # noqa: F401


def single_input(node: Node, ctx: RuleContext, gain: float, rule: str, *, loose: bool = False) -> OpBound:
    """A one-variable-input op with a global constant ``gain``; other variable inputs are refused."""
    var = ctx.var_inputs(node)
    if not var:
        return OpBound(gains={}, rule=rule)
    if len(var) > 1 or var[0] != 0:
        extra = ", ".join(node.inputs[i] for i in var if i != 0)
        raise NoGlobalConstant(f"{node.op_type} with input-dependent parameters ({extra}) has no global constant")
    return OpBound(gains={0: gain}, rule=rule, loose=loose)


def constant_rule(gain: float, description: str) -> Rule:
    """A factory for ops whose constant does not depend on the node (Relu: 1, Sigmoid: 1/4...)."""

    def rule(node: Node, ctx: RuleContext) -> OpBound:
        return single_input(node, ctx, gain, description)

    rule.__name__ = f"constant_{gain:g}"
    return rule


def unbounded_rule(reason: str) -> Rule:
    def rule(node: Node, ctx: RuleContext) -> OpBound:
        if not ctx.var_inputs(node):
            return OpBound(gains={}, rule="constant")
        raise NoGlobalConstant(reason)

    rule.__name__ = "unbounded"
    return rule


def broadcast_copies(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """How many times numpy broadcasting copies each element of ``in_shape`` into ``out_shape``."""
    n_in = int(np.prod(in_shape)) if in_shape else 1
    n_out = int(np.prod(out_shape)) if out_shape else 1
    if n_in == 0:
        return 1
    return max(1, n_out // n_in)


def register_constant(ops: Mapping[str, tuple[float, str]]) -> None:
    for op, (gain, text) in ops.items():
        register(op)(constant_rule(gain, text))
