"""The empirical lower bound on a model's L2 Lipschitz constant.

With f(x) = the concatenation of the flattened float outputs and x = the concatenation of the float inputs,
every spectral norm ``||J(x)||_2`` of the Jacobian at a point where f is differentiable, and every ratio
``||f(x) - f(y)|| / ||x - y||``, is a true lower bound on the Lipschitz constant L. The search measures many,
until the time budget is used (:class:`~lipcheck.bound.jacobian.Clock`), as a fixed sequence of tasks:

- a **start**: ``||J(x)||_2`` at a seeded random point (normal, uniform and sparse "data-like" inputs of mixed
  scales; the explicit Jacobian and its SVD when it has at most 64 rows or columns, else power iteration on
  JᵀJ, whose iterates ``||J v||`` never overshoot), or at a perturbation of the best point so far;
- on nets with piecewise-linear activations (at most 4096 units: beyond, regions are tiny and pair ascents do
  better), each start is followed by a **climb** over activation regions (:mod:`lipcheck.bound.regions`: flips
  of the units whose flip raises ``||J||``, steps along the top singular vector across breakpoints), where J is
  constant and gradients cannot help;
- a **pair ascent** (Adam, float64) on ``log ||f(x + d) - f(x)|| - log ||d||``, started at the best
  unused Jacobian point with ``d = small * v_top`` or at a random pair; only the ratio re-measured by a plain
  forward pass at its best pair counts.
- on nets with piecewise-linear activations or max-pools (climbing or not), an **annealed ascent**:
  the same pair ascent on smoothed surrogates of the net (:mod:`lipcheck.bound.smoothing`: softplus for ReLU,
  log-sum-exp over each max-pool window, ...), their temperature lowered stage by stage, from the best point
  so far or a fresh one; then ``||J(x)||_2`` and the ratio **of the real net** where it ended are measured, and
  only those count (the surrogate's values never do).

The value is the max of everything measured: lower <= L <= certified upper bound.

Reproducibility and the budget: every random draw comes from ``numpy.random.default_rng(seed)`` in task order,
and no search decision depends on the clock, so the steps done are a prefix of one sequence fixed by the seed.
A run that does k steps reports the value of ``max_steps=k``; a larger budget (or a faster machine) does more
steps of the same sequence and can only find a larger or equal value. ``jacobian_samples`` / ``ascent_restarts``
cap the starts / pair ascents (None: until the budget); with both capped the search ends when they are done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.bound.jacobian import Clock, Flat, Linearization, spectral_norm_at
from lipcheck.bound.pairs import ascend, measured_ratio, rms
from lipcheck.bound.regions import Point, clear_of_ties, climb, find_kinks, kink_names
from lipcheck.bound.smoothing import smoothable, smoothed
from lipcheck.bound.torch_eval import TorchEvaluator, is_float_info, unsupported_reason
from lipcheck.errors import LipcheckError
from lipcheck.ir.graph import Graph, TensorInfo
from lipcheck.report.model import LowerBound

__all__ = ["empirical_lower_bound", "reference_tolerance"]

Reference = Callable[[list[np.ndarray]], list[np.ndarray]]

# The input distributions of the start points, cycled: (name, scale, kind).
_DISTRIBUTIONS: tuple[tuple[str, float, str], ...] = (
    ("N(0,1)", 1.0, "normal"),
    ("U[0,1]", 1.0, "uniform01"),
    ("0.01*N(0,1)", 0.01, "normal"),
    ("10*N(0,1)", 10.0, "normal"),
    ("U[-1,1]", 1.0, "uniform11"),
    ("0.1*N(0,1)", 0.1, "normal"),
    ("3*N(0,1)", 3.0, "normal"),
    ("sparse U[0,1]", 1.0, "sparse01"),
    ("U[0,1]", 1.0, "uniform01"),
    ("0.3*N(0,1)", 0.3, "normal"),
)
_PERTURBATIONS = (0.03, 0.3, 0.1, 1.0)  # scales (relative to the best point's rms) of the perturbed starts
_PAIR_STEP = 1e-3  # ||y - x|| of a pair started along v_top, relative to ||x|| (or to sqrt(n) near 0)
_STEP_FORWARDS = 3.0  # a search step costs about this many evaluator forward passes (the first step's prediction)
_FIRST_ROUND = 12  # tasks of the first round: a search cut before them reports completed=False
_FIRST_ROUND_KINKED = 4  # the same with annealed ascents (each costs about 4 pair ascents): one cycle
_CLIMB_MOVES = 64  # kept moves of one climb at most
_CLIMB_STEPS = 400  # clock steps of one climb at most (on a conv net a move costs a few hundred)
_CLIMB_UNITS = 4096  # nets with more piecewise-linear units than this are searched like smooth ones
_TOP_POINTS = 4  # best Jacobian points kept as pair-ascent starts
# The tasks, cycled: nets with (up to _CLIMB_UNITS) piecewise-linear units climb from every start, restart
# half of the time near the best point, and anneal (at 5 s: weight_norm 0.93 -> 1.73, mlp 4.76 -> 4.89,
# multi_input 2.61 -> 2.66); other nets alternate Jacobian samples and pair ascents.
_CYCLE_PIECEWISE = ("start", "pair", "perturb", "anneal", "start", "perturb", "pair", "anneal")
_CYCLE_SMOOTH = ("start", "start", "pair")
# nets with too many piecewise-linear units (or max-pools) to climb: annealed ascents on smoothed surrogates
# (lipcheck.bound.smoothing), from the best point and from fresh ones, between Jacobian samples and pair ascents.
# On cnn_bn (24 k units, a max-pool) they reach 0.40 in 5 s where 60 s of starts and pair ascents stop at 0.254.
_CYCLE_KINKED = ("start", "anneal", "pair", "anneal")
# the annealing: τ of each smoothed node, as a factor of the rms of its input, stage by stage
# (two more stages, 0.01 and 0.004, measured worse at the same number of steps on cnn_bn, sn_discriminator and
# resnet_block: the stand-in is then nearly the net, whose gradients do not see the regions nearby)
_ANNEAL_FACTORS = (0.5, 0.2, 0.08, 0.03)
# ops whose output is an affine function of their inputs when every other operand is a constant (Mul, Div,
# MatMul: checked); a graph of only these has a constant Jacobian, so one converged sample is exact
_AFFINE_OPS = frozenset({
    "Add", "Sub", "Neg", "Identity", "Dropout", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Concat", "Gemm", "Conv", "ConvTranspose", "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "ReduceMean", "ReduceSum", "Cast", "Split", "Slice", "Expand", "Mul", "Div", "MatMul",
})


def _margin(budget: float) -> float:
    """The part of the budget kept free for the work after the last step (the final bookkeeping)."""
    return min(0.1 * budget, 0.25)


def _is_affine(graph: Graph) -> bool:
    """Every node is affine in the graph's inputs (its other operands constants): J is the same everywhere."""
    for node in graph.nodes:
        if node.op_type not in _AFFINE_OPS or node.domain not in ("", "ai.onnx"):
            return False
        operands = [i for i in node.inputs if i]
        if node.op_type in ("Mul", "MatMul") and not any(i in graph.constants for i in operands[:2]):
            return False
        if node.op_type in ("Div", "Gemm", "Conv", "ConvTranspose", "BatchNormalization") and \
                not all(i in graph.constants for i in operands[1:]):
            return False
    return True


def reference_tolerance(graph: Graph) -> float:
    """Largest relative error accepted between the float64 evaluator and the reference (onnxruntime): 1e-4 for
    float32 / float64 models, looser for the float16 (1e-2) and bfloat16 (5e-2) ones."""
    names = {i.dtype for i in (*graph.inputs, *graph.outputs)} | set(graph.dtypes.values()) | {
        str(np.asarray(v).dtype) for v in graph.constants.values()
    }
    if "bfloat16" in names:
        return 5e-2
    if "float16" in names:
        return 1e-2
    return 1e-4


def _is_float(info: TensorInfo) -> bool:
    return is_float_info(info)


def _sample(rng: np.random.Generator, kind: str, scale: float, n: int) -> np.ndarray:
    if kind == "uniform01":
        return rng.uniform(0.0, 1.0, n)
    if kind == "uniform11":
        return rng.uniform(-1.0, 1.0, n)
    if kind == "sparse01":
        return rng.uniform(0.0, 1.0, n) * (rng.uniform(0.0, 1.0, n) < 0.3)
    return scale * rng.standard_normal(n)


def _unit(a: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 0 else a


def _check_reference(f: Flat, x: np.ndarray, reference: Reference) -> float:
    """Max over float outputs of max|ours - ref| / max|ref| on one input. Non-finite values must match
    exactly (NaN where the reference has NaN, same infinities); otherwise the error is inf."""
    parts = np.split(x, np.cumsum(f.sizes)[:-1])
    feeds = [part.reshape(info.shape).astype(_np_dtype(info.dtype))
             for part, info in zip(parts, f.evaluator.float_inputs, strict=True)]
    expected = reference(feeds)
    t0 = time.perf_counter()
    with torch.no_grad():
        got = f.evaluator(*[torch.from_numpy(a.astype(np.float64)) for a in feeds])
    f.forward_seconds = time.perf_counter() - t0
    worst = 0.0
    for k in f.out_index:
        ours = got[k].detach().to(torch.float64).numpy()
        ref = np.asarray(expected[k], dtype=np.float64)
        if ours.shape != ref.shape:
            return math.inf
        finite = np.isfinite(ref)
        if not np.array_equal(np.isfinite(ours), finite) or not np.array_equal(ours[~finite], ref[~finite],
                                                                               equal_nan=True):
            return math.inf
        scale = float(np.abs(ref[finite]).max(initial=0.0))
        diff = float(np.abs(ours[finite] - ref[finite]).max(initial=0.0))
        if diff > 0:
            worst = max(worst, diff / scale if scale > 0 else math.inf)
    return worst


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(np.float32)


def _forward_flops(graph: Graph) -> float:
    """Rough flops of one forward pass: 2·(weight size / output channels) per output element of a Conv / Gemm /
    MatMul with a constant weight, ~10 per output element of anything else."""
    total = 0.0
    for node in graph.nodes:
        out = graph.shapes.get(node.outputs[0]) if node.outputs else None
        elements = float(math.prod(int(d) for d in out)) if out else 1.0
        weights = [np.shape(graph.constants[i]) for i in node.inputs[:2] if i in graph.constants]
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and weights:
            shape = max(weights, key=lambda s: math.prod(s))
            size = float(math.prod(shape))
            if node.op_type == "ConvTranspose":
                fan = size / max(1, shape[1]) if len(shape) > 1 else size
            elif node.op_type == "Conv":
                fan = size / max(1, shape[0])
            else:
                fan = size / max(1, out[-1] if out else 1)
            total += 2.0 * elements * fan
        else:
            total += 10.0 * elements
    return total


def _too_costly(graph: Graph, n: int, time_budget: float) -> str | None:
    """Why the search cannot start within the limits, or None. Memory (unless --force): the activations of a
    Jacobian step in float64 (double backward: :data:`~lipcheck.budget.LOWER_BOUND_ACTIVATION_COPIES`
    copies), the vectors of the input's size it holds and the float64 weights. Time (always, it is the user's
    budget): the set-up before the first deadline check (the first point's draws, the reference check: two
    forward passes, estimated from flops and tensor sizes) must fit in ``time_budget``."""
    from lipcheck import budget

    elements, seconds = budget.forward_cost(graph.shapes, _forward_flops(graph))
    weights = sum(float(np.size(c)) for c in graph.constants.values())
    need = 8.0 * (budget.LOWER_BOUND_ACTIVATION_COPIES * elements + budget.LOWER_BOUND_INPUT_COPIES * n + weights)
    limits, memory = budget.current()
    if limits.enabled and need > memory:
        return (f"no lower bound: a step at this input size needs ~{budget.format_bytes(need)} of memory, "
                f"{budget.format_bytes(memory)} available (resource limits; --force to try)")
    # the first point's draws, then the reference runtime's pass and ours (the first step is then predicted from
    # the measured pass, see the caller)
    first = 2.0 * n * budget.DRAW_SECONDS + 2.0 * (seconds + elements * budget.ELEMENT_SECONDS)
    if first > time_budget:
        return (f"no lower bound: its set-up at this input size (random draws, the reference check) is estimated at "
                f"~{budget.format_seconds(first)}, more than the budget of {time_budget:g} s "
                f"(--lower-bound-seconds {math.ceil(2 * first + 1)} or more measures something)")
    return None


@dataclass
class _Found:
    """A measured Jacobian point: the best ones seed pair ascents and perturbed starts."""

    sigma: float
    x: torch.Tensor
    v: torch.Tensor
    label: str
    paired: bool = False


class _Search:
    """The task sequence of :func:`empirical_lower_bound` (see the module docstring), its draws and its best
    value."""

    def __init__(self, f: Flat, graph: Graph, rng: np.random.Generator, clock: Clock, say: Callable[[str], None],
                 *, power_iterations: int, ascent_steps: int) -> None:
        self.f, self.rng, self.clock, self.say = f, rng, clock, say
        self.kinks = find_kinks(graph)
        units = sum(math.prod(graph.shapes.get(k.z, (_CLIMB_UNITS + 1,))) for k in self.kinks)
        # with many units the regions are tiny and a move costs hundreds of products: gradient ascent on
        # ratios does better there (on cnn_bn, 24 k units: 0.252 against 0.242 in 1 s)
        self.climbing = bool(self.kinks) and units <= _CLIMB_UNITS
        self.smoothable = smoothable(graph, self.kinks)
        self.graph = graph
        self.first_round = _FIRST_ROUND_KINKED if self.smoothable and not self.climbing else _FIRST_ROUND
        self.affine = _is_affine(graph)
        self.power_iterations = power_iterations if not self.affine else max(power_iterations, 10_000)
        self.ascent_steps = ascent_steps
        self.best = math.nan
        self.samples = 0  # points where ||J|| was measured
        self.steps = 0  # pair-ascent steps and region moves tried
        self.starts = 0
        self.fresh_starts = 0
        self.perturbed_starts = 0
        self.pairs = 0
        self.anneals = 0
        self.tasks = 0
        self.top: list[_Found] = []
        self.first: tuple[str, np.ndarray, np.ndarray] | None = None  # the first point, drawn up front

    def record(self, value: float, label: str) -> None:
        if math.isfinite(value) and not self.best >= value:
            if self.tasks >= self.first_round:
                self.say(f"lower bound: {value:.6g} ({label}, task {self.tasks + 1})")
            self.best = value

    def fresh(self) -> tuple[str, np.ndarray, np.ndarray]:
        if self.first is not None:
            item, self.first = self.first, None
            return item
        label, scale, kind = _DISTRIBUTIONS[self.fresh_starts % len(_DISTRIBUTIONS)]
        self.fresh_starts += 1
        return label, _sample(self.rng, kind, scale, self.f.n), _unit(self.rng.standard_normal(self.f.n))

    def start(self, perturb: bool) -> None:
        best = max(self.top, key=lambda p: p.sigma) if self.top else None
        if perturb and best is not None:
            scale = _PERTURBATIONS[self.perturbed_starts % len(_PERTURBATIONS)] * max(rms(best.x), 1e-2)
            self.perturbed_starts += 1
            x = best.x + torch.from_numpy(scale * self.rng.standard_normal(self.f.n))
            v0, label = best.v, f"best point + {scale:.3g}*N(0,1)"
        else:
            label, x_np, v_np = self.fresh()
            x, v0 = torch.from_numpy(x_np), torch.from_numpy(v_np)
        self.starts += 1
        lin = Linearization(self.f, x, keep=kink_names(self.kinks))
        spec = spectral_norm_at(lin, v0, self.clock, iterations=self.power_iterations)
        if spec is None:
            return
        self.samples += 1
        clear = clear_of_ties(self.kinks, lin.kept)
        if clear:
            self.record(spec.sigma, label)
            self._keep(_Found(spec.sigma, lin.x.detach(), spec.v, label))
        message = f"lower bound: start {self.starts} ({label}): ||J||_2 >= {spec.sigma:.6g}"
        if self.climbing and clear and not self.clock.hit:
            end, tried = climb(self.f, self.kinks, Point(lin, spec), self.clock,
                               power_iterations=self.power_iterations, max_moves=_CLIMB_MOVES, max_steps=_CLIMB_STEPS,
                               record=self.record)
            self.steps += tried
            if end is not None and end.lin is not lin:
                self.samples += 1
                self._keep(_Found(end.spec.sigma, end.lin.x.detach(), end.spec.v, label + ", climbed"))
                message += f", climbed to {end.spec.sigma:.6g} ({tried} moves tried)"
        if self.tasks < self.first_round:
            self.say(message)

    def _keep(self, found: _Found) -> None:
        self.top = sorted([*self.top, found], key=lambda p: -p.sigma)[:_TOP_POINTS]  # stable: ties keep order

    def pair(self) -> None:
        unused = [p for p in self.top if not p.paired]
        self.pairs += 1
        if unused and self.pairs % 2 == 1:
            p = unused[0]
            p.paired = True
            step = _PAIR_STEP * max(float(torch.linalg.vector_norm(p.x)), math.sqrt(self.f.n) * 1e-2)
            x0, d0, label = p.x, step * p.v, f"Jacobian point {p.label}"
        else:
            _, scale, kind = _DISTRIBUTIONS[self.pairs % 2]
            x_np, y_np = _sample(self.rng, kind, scale, self.f.n), _sample(self.rng, kind, scale, self.f.n)
            x0, d0, label = torch.from_numpy(x_np), torch.from_numpy(y_np - x_np), "random pair"
        _, bx, bd, done = ascend(self.f, x0, d0, self.ascent_steps, self.clock)
        self.steps += done
        if done == 0:
            return
        ratio = measured_ratio(self.f, bx, bd)
        self.record(ratio, "pair ascent")
        if self.tasks < self.first_round:
            self.say(f"lower bound: ascent {self.pairs} from {label}: ratio {ratio:.6g}")

    def anneal(self) -> None:
        """An annealed pair ascent on smoothed surrogates (every other one from the best point so far), then
        ``||J||`` and the ratio of the real net where it ended: only those are recorded."""
        self.anneals += 1
        best = self.top[0] if self.top else None
        if best is not None and self.anneals % 2 == 1:
            x, v, label = best.x, best.v, f"annealed from {best.label}"
        else:
            label, x_np, v_np = self.fresh()
            x, v = torch.from_numpy(x_np), torch.from_numpy(v_np)
            label = f"annealed from {label}"
        d = _PAIR_STEP * max(float(torch.linalg.vector_norm(x)), math.sqrt(self.f.n) * 1e-2) * v
        names = [item.z for item in self.smoothable]
        per_stage = max(1, self.ascent_steps // 2)
        for factor in _ANNEAL_FACTORS:
            if self.clock.expired():
                break
            with torch.no_grad():
                _, kept = self.f.run(x, keep=names)
            scales = {name: rms(t) for name, t in kept.items()}
            surrogate = smoothed(self.f, self.graph, self.smoothable, scales, factor)
            _, x, d, done = ascend(surrogate, x, d, per_stage, self.clock)
            self.steps += done
        x, d = x.detach(), d.detach()
        self.record(measured_ratio(self.f, x, d), label + ", ratio")
        if self.clock.expired():
            return
        lin = Linearization(self.f, x, keep=kink_names(self.kinks))
        d_norm = float(torch.linalg.vector_norm(d))
        v0 = d / d_norm if d_norm > 0 else v
        spec = spectral_norm_at(lin, v0, self.clock, iterations=self.power_iterations)
        if spec is None:
            return
        self.samples += 1
        if clear_of_ties(self.kinks, lin.kept):
            self.record(spec.sigma, label)
            self._keep(_Found(spec.sigma, lin.x.detach(), spec.v, label))
        if self.tasks < self.first_round:
            self.say(f"lower bound: anneal {self.anneals} ({label}): ||J||_2 >= {spec.sigma:.6g}")

    def run(self, max_starts: int | None, max_pairs: int | None) -> bool:
        """Runs tasks until the budget or the caps end the search; True when it ended by the caps."""
        if self.affine:  # J is constant: one (converged) sample is the constant
            max_starts, max_pairs = 1, 0
        cycle = (_CYCLE_PIECEWISE if self.climbing else _CYCLE_KINKED if self.smoothable and not self.affine
                 else _CYCLE_SMOOTH)
        while True:
            starts_left = max_starts is None or self.starts < max_starts
            pairs_left = max_pairs is None or self.pairs + self.anneals < max_pairs  # an anneal is a pair ascent
            if not (starts_left or pairs_left) or self.clock.hit:
                break
            kind = cycle[self.tasks % len(cycle)]
            pairing = kind in ("pair", "anneal")
            if ((pairing and pairs_left) or (not pairing and starts_left)) and self.clock.expired():
                break
            if kind == "pair" and pairs_left:
                self.pair()
            elif kind == "anneal" and pairs_left:
                self.anneal()
            elif not pairing and starts_left:
                self.start(perturb=kind == "perturb")
            self.tasks += 1
        return not self.clock.hit


def empirical_lower_bound(
    graph: Graph,
    *,
    seed: int = 0,
    time_budget: float = 5.0,
    reference: Reference | None = None,
    progress: Callable[[str], None] | None = None,
    jacobian_samples: int | None = None,
    power_iterations: int = 50,
    ascent_restarts: int | None = None,
    ascent_steps: int = 100,
    max_steps: int | None = None,
) -> LowerBound:
    """A true lower bound on the L2 Lipschitz constant of ``graph`` (float outputs w.r.t. float inputs).

    ``value`` is None when there is nothing sound to report: the evaluator cannot run a node, disagrees
    with ``reference`` (relative error above :func:`reference_tolerance`), or measured nothing before the
    budget ran out. ``reference(float_inputs) -> outputs`` runs the real model (onnxruntime) on the float
    inputs (in ``graph.inputs`` order, each in its own dtype; integer inputs are the runner's to fill, with
    zeros like the evaluator) and returns all graph outputs in ``graph.outputs`` order.

    The search runs until the wall-clock ``time_budget`` (less a small margin) is used, unless both
    ``jacobian_samples`` (starts) and ``ascent_restarts`` (pair ascents) are capped, or the graph is affine
    (one sample is exact). Every step is granted by :class:`~lipcheck.bound.jacobian.Clock`, which predicts its
    cost (the first from the measured forward pass), so the budget is kept; the set-up (the reference check,
    the evaluator) is estimated before it starts. ``max_steps`` caps the steps (the run is then the same on any
    machine, see the module docstring). ``completed`` is False when the budget ended the search before its first
    round of tasks (or before the caps were reached).
    """
    clock = Clock(time_budget, margin=_margin(time_budget), max_steps=max_steps)
    say = progress or (lambda _msg: None)

    def result(value: float | None, note: str | None, *, samples: int = 0, steps: int = 0,
               completed: bool = True, rel_error: float | None = None) -> LowerBound:
        return LowerBound(value=value, jacobian_samples=samples, ascent_steps=steps, seconds=clock.elapsed,
                          budget_seconds=time_budget, completed=completed, evaluator_max_rel_error=rel_error,
                          note=note)

    bad = [(n, r) for n in graph.nodes if (r := unsupported_reason(n, graph)) is not None]
    if bad:
        shown = "; ".join(f"{n.label}: {r}" for n, r in bad[:5])
        shown += f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        return result(None, f"no lower bound: the torch evaluator cannot run {len(bad)} node(s): {shown}")
    if not any(_is_float(i) for i in graph.inputs):
        return result(None, "no lower bound: the model has no float input")
    evaluator = TorchEvaluator(graph, dtype=torch.float64)
    f = Flat(graph, evaluator)
    if not f.out_index:
        return result(None, "no lower bound: the model has no float output")
    notes: list[str] = []
    if any(not _is_float(i) for i in graph.inputs):
        fixed = ", ".join(i.name for i in graph.inputs if not _is_float(i))
        notes.append(f"integer inputs ({fixed}) held at zero")

    n = f.n
    too_costly = _too_costly(graph, n, time_budget)
    if too_costly is not None:
        return result(None, too_costly)

    # every random draw in one fixed order (task order), each made when first needed: where the budget stops
    # cannot change what is drawn, and only the vectors in use are held (a few of the input's size)
    search = _Search(f, graph, np.random.default_rng(seed), clock, say, power_iterations=power_iterations,
                     ascent_steps=ascent_steps)
    rel_error: float | None = None
    if reference is not None:
        say("lower bound: checking the torch evaluator against the reference runtime")
        tol = reference_tolerance(graph)
        try:
            search.first = search.fresh()  # checked here, then the first start
            rel_error = _check_reference(f, search.first[1], reference)
        except LipcheckError as exc:
            return result(None, f"no lower bound: the torch evaluator failed ({exc})")
        except Exception as exc:  # noqa: BLE001 - the reference runtime's own errors
            return result(None, f"no lower bound: the reference runtime failed ({type(exc).__name__}: {exc})")
        # a Jacobian step (jvp + vjp) costs about three forward passes: the first step's expected cost, so that
        # a budget the set-up has nearly used is not overrun by a step on a large model
        clock.first_step = _STEP_FORWARDS * f.forward_seconds
        if not rel_error <= tol:  # also NaN / inf
            return result(
                None,
                f"no lower bound: the torch evaluator disagrees with the reference runtime (max relative "
                f"error {rel_error:.3g} > {tol:g} on a random input); a lower bound from it would not be "
                "about this model",
                rel_error=rel_error,
            )

    # autograd's first backward with a given gradient imports torch.fx's symbolic shapes (~0.3-0.5 s, once per
    # process): paid here, in the set-up, it does not make the clock predict every later step that slow
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.autograd.grad(probe * 1.0, probe, torch.ones(1, dtype=torch.float64))
    capped = False
    try:
        capped = search.run(jacobian_samples, ascent_restarts)
    except Exception as exc:  # noqa: BLE001 - keep what was measured; say why it stopped
        notes.append(f"stopped during task {search.tasks + 1}: {type(exc).__name__}: {exc}")
    best = search.best
    completed = capped or search.tasks >= search.first_round
    if not completed:
        notes.append(
            f"time budget of {time_budget:g} s ran out after {search.samples} Jacobian samples and "
            f"{search.steps} ascent steps, within the search's first {search.first_round} tasks (the value is that "
            "of the seeded search's first steps: a larger budget can only raise it)"
        )
    value = best if math.isfinite(best) else None
    if value is None:
        hint = ""
        if clock.hit and clock.step_seconds > 0:
            need = math.ceil(clock.elapsed + 2 * clock.step_seconds + _margin(time_budget) + 1)
            hint = (f" (the set-up took {clock.elapsed:.1f} s and one step of this model takes about "
                    f"{clock.step_seconds:.1f} s: --lower-bound-seconds {need} or more measures something)")
        notes.insert(0, "no lower bound: nothing was measured within the budget" + hint)
    say(f"lower bound: {value if value is not None else 'none'} in {clock.elapsed:.2f} s "
        f"({clock.steps} search steps, {search.tasks} tasks)")
    return result(value, "; ".join(notes) or None, samples=search.samples, steps=search.steps,
                  completed=completed, rel_error=rel_error)
