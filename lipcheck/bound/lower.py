"""The empirical lower bound on a model's L2 Lipschitz constant.

With f(x) = the concatenation of the flattened float outputs and x = the concatenation of the float inputs,
every spectral norm ``||J(x)||_2`` of the Jacobian at a point where f is differentiable, and every ratio
``||f(x) - f(y)|| / ||x - y||``, is a true lower bound on the Lipschitz constant L. We measure many:

(a) ``||J(x)||_2`` by power iteration on JᵀJ (Jacobian-vector products by autograd, float64) at seeded
    random inputs of mixed scales. Each iterate's ``||J v||`` with ``||v|| = 1`` is itself a lower bound on
    ``||J(x)||_2`` (power iteration converges from below), so no iterate can overshoot.
(b) gradient ascent (Adam, float64) on ``log ||f(x + d) - f(x)|| - log ||d||`` over pairs, started at the
    best Jacobian points with ``d = small * v_top`` and at random pairs; the best pair of each restart is
    re-measured with a plain forward pass, and only that measured ratio counts.

The value is the max of everything measured: lower <= L <= certified upper bound.

Reproducibility: every random draw comes from ``numpy.random.default_rng(seed)``, drawn up front; each phase
runs a fixed number of steps (power iterations stop early only on a deterministic convergence test). The same
seed gives the same value unless the wall-clock ``time_budget`` cuts a phase short, in which case
``completed=False`` and the value may differ from run to run (it is still a true lower bound).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.bound.torch_eval import TorchEvaluator, is_float_info, unsupported_reason
from lipcheck.errors import LipcheckError
from lipcheck.ir.graph import Graph, TensorInfo
from lipcheck.report.model import LowerBound

__all__ = ["empirical_lower_bound", "reference_tolerance"]

Reference = Callable[[list[np.ndarray]], list[np.ndarray]]

# The input distributions of the Jacobian samples, cycled: (name, scale, kind).
_DISTRIBUTIONS: tuple[tuple[str, float, str], ...] = (
    ("N(0,1)", 1.0, "normal"),
    ("U[0,1]", 1.0, "uniform01"),
    ("0.01*N(0,1)", 0.01, "normal"),
    ("10*N(0,1)", 10.0, "normal"),
    ("U[-1,1]", 1.0, "uniform11"),
    ("0.1*N(0,1)", 0.1, "normal"),
    ("3*N(0,1)", 3.0, "normal"),
    ("U[0,1]", 1.0, "uniform01"),
)

_POWER_TOL = 1e-10  # relative change of ||Jv|| that ends a power iteration early (deterministic)
_PAIR_STEP = 1e-3  # ||y - x|| of a pair started along v_top, relative to ||x|| (or to sqrt(n) near 0)
# The ascent never lets ||y - x|| fall below this times max(||x||, sqrt(n)): float64 rounding in f(y) - f(x)
# (~1e-16 of the intermediate magnitudes) then adds at most ~1e-10 relative to the measured ratio.
_MIN_PAIR_DISTANCE = 1e-6


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


_STEP_FORWARDS = 3.0  # a search step costs about this many evaluator forward passes


@dataclass
class _Clock:
    deadline: float
    start: float
    hit: bool = False
    step: float = 0.0  # the duration of the last step of the search, the cost expected of the next

    def expired(self, upcoming: float = 0.0) -> bool:
        """True once the deadline has passed, or would pass during a step expected to take ``upcoming`` seconds
        (the last step's duration): the budget is kept instead of overrun by one slow step."""
        if time.perf_counter() + max(upcoming, 0.0) >= self.deadline:
            self.hit = True
        return self.hit

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _Flat:
    """f as a map R^n -> R^m on flat float64 vectors (float inputs concatenated, float outputs too)."""

    def __init__(self, graph: Graph, evaluator: TorchEvaluator) -> None:
        self.evaluator = evaluator
        self.shapes = [tuple(i.shape) for i in evaluator.float_inputs]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.n = sum(self.sizes)
        self.out_index = [k for k, o in enumerate(graph.outputs) if _is_float(o)]
        self.forward_seconds = 0.0  # one forward pass, measured by the reference check

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [p.reshape(s) for p, s in zip(torch.split(z, self.sizes), self.shapes, strict=True)]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        outs = self.evaluator(*self.split(z))
        parts = [outs[k].reshape(-1) for k in self.out_index]
        return torch.cat([p if p.is_floating_point() else p.to(torch.float64) for p in parts])


class _Linearization:
    """J(x) as two linear maps from ONE recorded forward pass: ``Jᵀu`` by backward, ``Jv`` by the
    double-backward trick (``g(w) = Jᵀw`` is recorded with create_graph, and ``Jv`` is the gradient of
    ``<g(w), v>`` in w). On CPU this is ~10x faster than forward-mode AD; ``torch.func.jvp`` is the fallback
    when an op has no double backward."""

    def __init__(self, f: _Flat, x: torch.Tensor) -> None:
        self.f = f
        self.x = x.detach().clone().requires_grad_(True)
        self.y = f(self.x)
        self._w: torch.Tensor | None = None
        self._g: torch.Tensor | None = None
        self._double_backward = self.y.requires_grad

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        if not self.y.requires_grad:
            return torch.zeros_like(self.x)
        (g,) = torch.autograd.grad(self.y, self.x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.x) if g is None else g.detach()

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        if not self.y.requires_grad:
            return torch.zeros_like(self.y.detach())
        if self._double_backward:
            try:
                if self._g is None:
                    self._w = torch.zeros_like(self.y, requires_grad=True)
                    (self._g,) = torch.autograd.grad(self.y, self.x, self._w, create_graph=True,
                                                     allow_unused=True)
                if self._g is None or not self._g.requires_grad:
                    return torch.zeros_like(self.y.detach())
                assert self._w is not None
                (jv,) = torch.autograd.grad(self._g, self._w, v, retain_graph=True, allow_unused=True)
                return torch.zeros_like(self.y.detach()) if jv is None else jv.detach()
            except RuntimeError:
                self._double_backward = False
        return torch.func.jvp(self.f, (self.x.detach(),), (v,))[1].detach()


def _sample(rng: np.random.Generator, kind: str, scale: float, n: int) -> np.ndarray:
    if kind == "uniform01":
        return rng.uniform(0.0, 1.0, n)
    if kind == "uniform11":
        return rng.uniform(-1.0, 1.0, n)
    return scale * rng.standard_normal(n)


def _unit(a: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 0 else a


@dataclass
class _JacobianPoint:
    x: torch.Tensor
    sigma: float  # the largest measured ||J v||, ||v|| = 1
    v_top: torch.Tensor
    label: str


def _jacobian_norm(f: _Flat, x: torch.Tensor, v0: torch.Tensor, iterations: int, clock: _Clock
                   ) -> tuple[float, torch.Tensor, int]:
    """Power iteration on J(x)ᵀJ(x); returns (max ||J v|| seen, its v, iterations done). NaN when none."""
    lin = _Linearization(f, x)
    v = v0
    best, best_v, prev = math.nan, v0, -1.0
    done = 0
    for _ in range(iterations):
        if clock.expired(clock.step):
            break
        t0 = time.perf_counter()
        u = lin.jvp(v)
        sigma = float(torch.linalg.vector_norm(u))
        done += 1
        if not math.isfinite(sigma):
            break
        if not best >= sigma:  # also replaces the initial NaN
            best, best_v = sigma, v
        w = lin.vjp(u)
        w_norm = float(torch.linalg.vector_norm(w))
        if not math.isfinite(w_norm) or w_norm == 0.0 or abs(sigma - prev) <= _POWER_TOL * sigma:
            break
        prev = sigma
        v = w / w_norm
        clock.step = time.perf_counter() - t0
    return best, best_v, done


def _measured_ratio(f: _Flat, x: torch.Tensor, d: torch.Tensor) -> float:
    """||f(x) - f(y)|| / ||x - y|| with y = x + d, from plain forward passes."""
    with torch.no_grad():
        y = x + d
        den = float(torch.linalg.vector_norm(y - x))
        if den == 0.0:
            return math.nan
        return float(torch.linalg.vector_norm(f(y) - f(x))) / den


class _Adam:
    """Plain Adam (Kingma & Ba 2015) on a list of tensors, maximizing. Hand-written: torch.optim's first step
    imports torch._dynamo (~1.5 s), more than a whole ascent on a small model."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12) -> None:
        self.params, self.lrs, self.betas, self.eps = params, lrs, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def ascend(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        with torch.no_grad():
            for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs, strict=True):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1**self.t)
                v_hat = v / (1 - b2**self.t)
                p.add_(lr * m_hat / (v_hat.sqrt() + self.eps))


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t)) / math.sqrt(max(t.numel(), 1))


def _ascend(f: _Flat, x0: torch.Tensor, d0: torch.Tensor, steps: int, clock: _Clock
            ) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """Adam ascent on log ||f(x + d) - f(x)|| - log ||d|| over (x, d), step sizes 1% of the starting rms of x
    and of d; returns the best (ratio, x, d) seen and the number of steps done."""
    x, d = x0.detach().clone(), d0.detach().clone()
    adam = _Adam([x, d], [1e-2 * max(_rms(x0), 1e-2), 1e-2 * max(_rms(d0), 1e-12)])
    best, best_x, best_d = math.nan, x0, d0
    done = 0
    for _ in range(steps):
        if clock.expired(clock.step):
            break
        t0 = time.perf_counter()
        xg, dg = x.clone().requires_grad_(True), d.clone().requires_grad_(True)
        num = torch.linalg.vector_norm(f(xg + dg) - f(xg))
        den = torch.linalg.vector_norm(dg)
        n_val, d_val = float(num.detach()), float(den.detach())
        ratio = n_val / d_val if d_val > 0 else math.nan
        done += 1
        if not math.isfinite(ratio) or ratio == 0.0 or not num.requires_grad:
            break
        if not best >= ratio:
            best, best_x, best_d = ratio, x.clone(), d.clone()
        gx, gd = torch.autograd.grad(torch.log(num) - torch.log(den), (xg, dg), allow_unused=True)
        grads = [torch.zeros_like(x) if gx is None else gx, gd]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            break
        adam.ascend(grads)
        with torch.no_grad():  # keep ||d|| far above float64 rounding of f (see _MIN_PAIR_DISTANCE)
            floor = _MIN_PAIR_DISTANCE * max(float(torch.linalg.vector_norm(x)), math.sqrt(x.numel()))
            d_norm = float(torch.linalg.vector_norm(d))
            if 0 < d_norm < floor:
                d.mul_(floor / d_norm)
        clock.step = time.perf_counter() - t0
    return best, best_x, best_d, done


def _check_reference(f: _Flat, x: np.ndarray, reference: Reference) -> float:
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


def empirical_lower_bound(
    graph: Graph,
    *,
    seed: int = 0,
    time_budget: float = 5.0,
    reference: Reference | None = None,
    progress: Callable[[str], None] | None = None,
    jacobian_samples: int = 8,
    power_iterations: int = 50,
    ascent_restarts: int = 4,
    ascent_steps: int = 100,
) -> LowerBound:
    """A true lower bound on the L2 Lipschitz constant of ``graph`` (float outputs w.r.t. float inputs).

    ``value`` is None when there is nothing sound to report: the evaluator cannot run a node, disagrees
    with ``reference`` (relative error above :func:`reference_tolerance`), or measured nothing before the
    budget ran out. ``reference(float_inputs) -> outputs`` runs the real model (onnxruntime) on the float
    inputs (in ``graph.inputs`` order, each in its own dtype; integer inputs are the runner's to fill, with
    zeros like the evaluator) and returns all graph outputs in ``graph.outputs`` order.
    The wall-clock ``time_budget`` is checked before every power iteration and ascent step, so it can be
    overshot by one step (plus the reference check and one evaluator construction).
    """
    clock = _Clock(deadline=time.perf_counter() + time_budget, start=time.perf_counter())
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
    f = _Flat(graph, evaluator)
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

    # every random draw in one fixed order (the points, then the pairs), each made when first needed: where the
    # budget stops cannot change what is drawn, and only the vectors in use are held (a few of the input's size)
    rng = np.random.default_rng(seed)
    n_points = max(jacobian_samples, 1)
    drawn: list[tuple[str, np.ndarray, np.ndarray] | None] = []

    def point(k: int) -> tuple[str, np.ndarray, np.ndarray]:
        while len(drawn) <= k:
            label, scale, kind = _DISTRIBUTIONS[len(drawn) % len(_DISTRIBUTIONS)]
            drawn.append((label, _sample(rng, kind, scale, n), _unit(rng.standard_normal(n))))
        item = drawn[k]
        assert item is not None
        drawn[k] = None  # the caller holds it now
        return item

    def random_pair(k: int) -> tuple[np.ndarray, np.ndarray]:
        while len(drawn) < n_points:  # the points come first in the stream
            point(len(drawn))
        _, scale, kind = _DISTRIBUTIONS[k % 2]
        return _sample(rng, kind, scale, n), _sample(rng, kind, scale, n)

    rel_error: float | None = None
    if reference is not None:
        say("lower bound: checking the torch evaluator against the reference runtime")
        tol = reference_tolerance(graph)
        try:
            first = point(0)
            drawn[0] = first  # still to be used by the first Jacobian sample
            rel_error = _check_reference(f, first[1], reference)
        except LipcheckError as exc:
            return result(None, f"no lower bound: the torch evaluator failed ({exc})")
        except Exception as exc:  # noqa: BLE001 - the reference runtime's own errors
            return result(None, f"no lower bound: the reference runtime failed ({type(exc).__name__}: {exc})")
        # a Jacobian step (jvp + vjp) costs about three forward passes: the first step's expected cost, so that
        # a budget the set-up has nearly used is not overrun by a step on a large model
        clock.step = max(clock.step, _STEP_FORWARDS * f.forward_seconds)
        if not rel_error <= tol:  # also NaN / inf
            return result(
                None,
                f"no lower bound: the torch evaluator disagrees with the reference runtime (max relative "
                f"error {rel_error:.3g} > {tol:g} on a random input); a lower bound from it would not be "
                "about this model",
                rel_error=rel_error,
            )

    best = math.nan
    samples_done = 0
    steps_done = 0
    stage = "the Jacobian sampling"
    jac_points: list[_JacobianPoint] = []
    try:
        # (a) Jacobian norms at random points
        for k in range(jacobian_samples):
            if clock.expired(clock.step):
                break
            label, x_np, v_np = point(k)
            x, v0 = torch.from_numpy(x_np), torch.from_numpy(v_np)
            sigma, v_top, _ = _jacobian_norm(f, x, v0, power_iterations, clock)
            samples_done += 1
            if math.isfinite(sigma):
                jac_points.append(_JacobianPoint(x, sigma, v_top, label))
                jac_points = sorted(jac_points, key=lambda p: -p.sigma)[:2]  # stable: the same two as at the end
                best = sigma if not best >= sigma else best
            say(f"lower bound: Jacobian sample {k + 1}/{jacobian_samples} ({label}): ||J||_2 >= {sigma:.6g}")

        # (b) ascent on the ratio over pairs
        stage = "the gradient ascent"
        starts: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        for p in sorted(jac_points, key=lambda p: -p.sigma)[:2]:
            step = _PAIR_STEP * max(float(torch.linalg.vector_norm(p.x)), math.sqrt(n) * 1e-2)
            starts.append((p.x, step * p.v_top, f"Jacobian point {p.label}"))
        total = min(ascent_restarts, len(starts) + max(ascent_restarts, 1))
        for k in range(total):
            if clock.expired(clock.step):
                break
            if k < len(starts):
                x0, d0, label = starts[k]
            else:
                x_np, y_np = random_pair(k - len(starts))
                x0, d0, label = torch.from_numpy(x_np), torch.from_numpy(y_np - x_np), "random pair"
            _, bx, bd, done = _ascend(f, x0, d0, ascent_steps, clock)
            steps_done += done
            ratio = _measured_ratio(f, bx, bd)
            if math.isfinite(ratio):
                best = ratio if not best >= ratio else best
            say(f"lower bound: ascent {k + 1}/{total} from {label}: ratio {ratio:.6g}")
    except Exception as exc:  # noqa: BLE001 - keep what was measured; say why it stopped
        notes.append(f"stopped during {stage}: {type(exc).__name__}: {exc}")
    completed = not clock.hit
    if not completed:
        notes.append(
            f"time budget of {time_budget:g} s ran out after {samples_done}/{jacobian_samples} "
            f"Jacobian samples and {steps_done}/{ascent_restarts * ascent_steps} ascent steps (a larger "
            "budget can raise the value, and a run cut short by the budget may not reproduce exactly)"
        )
    value = best if math.isfinite(best) else None
    if value is None:
        hint = ""
        if clock.hit and clock.step > 0:
            need = math.ceil(clock.elapsed + 2 * clock.step)
            hint = (f" (the set-up took {clock.elapsed:.1f} s and one step of this model takes about "
                    f"{clock.step:.1f} s: --lower-bound-seconds {need} or more measures something)")
        notes.insert(0, "no lower bound: nothing was measured within the budget" + hint)
    say(f"lower bound: {value if value is not None else 'none'} in {clock.elapsed:.2f} s")
    return result(value, "; ".join(notes) or None, samples=samples_done, steps=steps_done,
                  completed=completed, rel_error=rel_error)

