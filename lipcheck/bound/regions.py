"""The activation-region search of the lower bound, for nets with piecewise-linear activations.

With Relu / LeakyRelu / PRelu / Abs / Clip activations ("kinks"), f is affine on each activation region and J
is constant there, so ``||J(x)||_2`` has no gradient in x: the search moves between regions instead.

At x with top singular pair (sigma, u, v) of J(x), J is affine in the slope ``s_i`` of each activation unit
(no path from a unit's output back to its own input), so changing only ``s_i`` to the slope ``s'_i`` across its
breakpoint gives ``uᵀJ'v = sigma + (s'_i - s_i)·a_i·b_i`` with ``a = ∂(uᵀf)/∂h`` (the unit's output) and
``b = ∂z/∂x · v`` (its input along v); within one activation tensor these gains add up. ``uᵀJ'v <= ||J'||_2``,
so flipping units of positive gain raises the norm when the target pattern is reached. A move flips a set S
of units of one tensor: the least-norm step d with ``z_S(x + d) = targets just across the breakpoints``, from
the rows ``∂z_S/∂x`` (one correction re-solves with the units it flipped by accident held in place). When no
flip helps, steps along ±v to just past the 1st, 4th and 16th breakpoint crossing ahead are tried. A move is
kept only if ``||J(x') v|| > sigma`` is measured at x'; the climb stops at a local maximum.

Soundness: a value counts only at a point where every tracked unit is clear of its breakpoints (relative
margin :data:`TIE_MARGIN`): there, autograd's Jacobian is the derivative of f (at an exact tie it need not be:
``x - relu(x) + relu(-x)`` is 0 everywhere but autograd gives 1 at 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.bound.jacobian import EXPLICIT_ELEMENTS, Clock, Flat, Linearization, Spectral, spectral_norm_at
from lipcheck.ir.graph import Graph, Node

__all__ = ["KINK_OPS", "Kink", "climb", "find_kinks", "kink_names", "clear_of_ties"]

KINK_OPS = ("Relu", "LeakyRelu", "PRelu", "Abs", "Clip")
TIE_MARGIN = 1e-9  # a unit closer to a breakpoint than this times its tensor's scale is a tie
_CROSS = 0.1  # a flipped unit lands this fraction of its distance beyond the breakpoint
_MAX_FLIP = 32  # units flipped by one move at most (each needs a row of ∂z/∂x)
_MAX_ROWS = 96  # rows of one least-norm solve at most (flips plus held units), and at most EXPLICIT_ELEMENTS
_IMPROVE = 1e-12  # a move is kept when it raises ||J v|| by more than this, relatively
_STALL_MOVES, _STALL_GAIN = 8, 2e-3  # a climb whose last 8 kept moves gained less than 0.2 % in all stops


@dataclass(frozen=True)
class Kink:
    """One elementwise piecewise-linear activation ``h = phi(z)`` with its breakpoints."""

    label: str
    z: str  # input tensor
    h: str  # output tensor
    op: str
    alpha: np.ndarray | float = 0.0  # LeakyRelu / PRelu slope below 0
    lo: float | None = None  # Clip
    hi: float | None = None

    def slopes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slope at z, slope across the nearest breakpoint), elementwise, as autograd sees them."""
        one = torch.ones_like(z)
        if self.op == "Relu":
            now = (z > 0).to(z.dtype)
            return now, one - now
        if self.op in ("LeakyRelu", "PRelu"):
            a = torch.as_tensor(np.broadcast_to(np.asarray(self.alpha, np.float64), tuple(z.shape)).copy())
            pos = z > 0 if self.op == "LeakyRelu" else z >= 0
            return torch.where(pos, one, a), torch.where(pos, a, one)
        if self.op == "Abs":
            return torch.sign(z), -torch.sign(z)
        inside = self.side(z) == 1
        now = inside.to(z.dtype)
        return now, one - now

    def side(self, z: torch.Tensor) -> torch.Tensor:
        """Which linear piece each unit is on (an integer tensor)."""
        if self.op == "Clip":
            lo = -math.inf if self.lo is None else self.lo
            hi = math.inf if self.hi is None else self.hi
            return (z > lo).to(torch.int64) + (z >= hi).to(torch.int64)
        return (z > 0).to(torch.int64)

    def breakpoint(self, z: torch.Tensor) -> torch.Tensor:
        """The breakpoint nearest to each unit."""
        if self.op != "Clip":
            return torch.zeros_like(z)
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        near_lo = (z - lo).abs() <= (z - hi).abs()
        return torch.where(near_lo, torch.full_like(z, lo), torch.full_like(z, hi))


def _constant_scalar(graph: Graph, name: str) -> float | None:
    if not name or name not in graph.constants:
        return None
    value = np.asarray(graph.constants[name], dtype=np.float64)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _kink_of(node: Node, graph: Graph) -> Kink | None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in KINK_OPS or not node.inputs or not node.outputs:
        return None
    z, h, op = node.inputs[0], node.outputs[0], node.op_type
    if op == "LeakyRelu":
        return Kink(node.label, z, h, op, alpha=float(node.attr("alpha", np.float32(0.01))))
    if op == "PRelu":
        slope = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
        return None if slope is None else Kink(node.label, z, h, op, alpha=np.asarray(slope, np.float64))
    if op == "Clip":
        if any(name and name not in graph.constants for name in node.inputs[1:3]):
            return None  # bounds computed at run time: not tracked
        lo = _constant_scalar(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        hi = _constant_scalar(graph, node.inputs[2]) if len(node.inputs) > 2 else None
        lo = lo if lo is not None or len(node.inputs) > 1 else node.attr("min")
        hi = hi if hi is not None or len(node.inputs) > 2 else node.attr("max")
        if lo is None and hi is None:
            return None
        return Kink(node.label, z, h, op, lo=None if lo is None else float(lo), hi=None if hi is None else float(hi))
    return Kink(node.label, z, h, op)


def find_kinks(graph: Graph) -> list[Kink]:
    """The piecewise-linear activations the search tracks, in graph order."""
    return [k for n in graph.nodes if (k := _kink_of(n, graph)) is not None]


def kink_names(kinks: Sequence[Kink]) -> list[str]:
    return [name for k in kinks for name in (k.z, k.h)]


def clear_of_ties(kinks: Sequence[Kink], kept: dict[str, torch.Tensor]) -> bool:
    """Every tracked unit at least :data:`TIE_MARGIN` (relative to its tensor's scale) from its breakpoint."""
    for k in kinks:
        z = kept.get(k.z)
        if z is None or not z.is_floating_point():  # integer units carry no derivative
            continue
        z = z.detach()
        c = k.breakpoint(z)
        scale = float(z.abs().max()) + float(c.abs().max()) if z.numel() else 0.0
        if z.numel() and float((z - c).abs().min()) <= TIE_MARGIN * scale:
            return False
    return True


# ---- the climb


@dataclass
class Point:
    """An evaluated point of the climb: its linearization (with the kinks' tensors) and its top singular pair."""

    lin: Linearization
    spec: Spectral


Record = Callable[[float, str], None]


def climb(f: Flat, kinks: Sequence[Kink], start: Point, clock: Clock, *, power_iterations: int,
          max_moves: int, max_steps: int, record: Record) -> tuple[Point, int]:
    """Hill-climb ``||J||`` over activation regions from ``start`` (whose value the caller recorded), for at most
    ``max_moves`` kept moves and about ``max_steps`` clock steps (checked between candidates); every kept point's
    ``||J(x)||`` goes to ``record``. Returns the last point and the number of moves tried."""
    point, tried = start, 0
    history = [start.spec.sigma]
    first_step = clock.steps
    for _ in range(max_moves):
        if clock.steps - first_step >= max_steps:
            break
        if len(history) > _STALL_MOVES and history[-1] < history[-1 - _STALL_MOVES] * (1 + _STALL_GAIN):
            break  # creeping: a fresh start is a better use of the budget
        found = None
        for move in _moves(f, kinks, point, clock):
            tried += 1
            if move is None or clock.steps - first_step >= max_steps:  # the budget or the climb's share ran out
                return point, tried
            found = _try(f, kinks, point, move, clock)
            if found is not None:
                break
        if found is None:
            break
        lin, q, jv = found
        record(q, "region move")  # measured at a point clear of ties: a value already
        moved = Point(lin, Spectral(q, point.spec.v, jv / q, 1))
        spec = spectral_norm_at(lin, point.spec.v, clock, iterations=power_iterations)
        if spec is not None and spec.sigma > q:
            moved = Point(lin, spec)
            record(spec.sigma, "region move")
        point = moved
        history.append(point.spec.sigma)
        if clock.hit:
            break
    return point, tried


def _try(f: Flat, kinks: Sequence[Kink], point: Point, d: torch.Tensor, clock: Clock
         ) -> tuple[Linearization, float, torch.Tensor] | None:
    """The point ``x + d`` with its measured ``q = ||J v||`` and ``J v``, if q beats the current value and no unit
    is at a tie; else None."""
    if clock.expired():
        return None
    lin = Linearization(f, point.lin.x.detach() + d, keep=kink_names(kinks))
    if not clear_of_ties(kinks, lin.kept):
        return None
    if clock.expired():
        return None
    jv = lin.jvp(point.spec.v)
    q = float(torch.linalg.vector_norm(jv))
    if math.isfinite(q) and q > point.spec.sigma * (1 + _IMPROVE):
        return lin, q, jv
    return None


def _gains(kinks: Sequence[Kink], point: Point, clock: Clock | None = None
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Per kink: the gain of flipping each unit (flattened), and ``b = ∂z/∂x · v`` (two steps of ``clock``;
    None when it ran out)."""
    lin, spec = point.lin, point.spec
    zs = [lin.kept[k.z] for k in kinks]
    hs = [lin.kept[k.h] for k in kinks]
    live = [i for i, (z, h) in enumerate(zip(zs, hs, strict=True))
            if z.is_floating_point() and z.requires_grad and h.requires_grad]
    a: list[torch.Tensor | None] = [None] * len(zs)
    b: list[torch.Tensor | None] = [None] * len(zs)
    if live and lin.y.requires_grad:
        got_a = torch.autograd.grad(lin.y, [hs[i] for i in live], spec.u, retain_graph=True, allow_unused=True)
        if clock is not None and clock.expired():
            return None
        ws = [torch.zeros_like(zs[i], requires_grad=True) for i in live]
        (g,) = torch.autograd.grad([zs[i] for i in live], lin.x, ws, create_graph=True, allow_unused=True,
                                   retain_graph=True)
        got_b: Sequence[torch.Tensor | None] = [None] * len(live)
        if g is not None and g.requires_grad:
            got_b = torch.autograd.grad(g, ws, spec.v, allow_unused=True, retain_graph=True)
        for j, i in enumerate(live):
            a[i], b[i] = got_a[j], got_b[j]
    gains, slopes_b = [], []
    for k, z, ak, bk in zip(kinks, zs, a, b, strict=True):
        zd = z.detach()
        if ak is None or bk is None:
            gains.append(torch.zeros(zd.numel(), dtype=torch.float64))
            slopes_b.append(torch.zeros(zd.numel(), dtype=torch.float64))
            continue
        now, other = k.slopes(zd)
        gains.append(((other - now) * ak * bk).reshape(-1).detach())
        slopes_b.append(bk.reshape(-1).detach())
    return gains, slopes_b


def _moves(f: Flat, kinks: Sequence[Kink], point: Point, clock: Clock):  # type: ignore[no-untyped-def]
    """The candidate steps d in order (steps along ±v, cheap; then flip sets); None when the budget ran out."""
    if clock.expired():
        yield None
        return
    got = _gains(kinks, point, clock)
    if got is None:
        yield None
        return
    gains, b = got
    yield from _line_steps(kinks, point, b)
    cache: dict[int, dict[int, torch.Tensor]] = {}  # kink -> unit -> its row ∂z/∂x at this point
    order = sorted(range(len(kinks)), key=lambda i: -float(gains[i].clamp(min=0).sum()))
    for i in order[:2]:
        positive = int((gains[i] > 0).sum())
        if positive == 0:
            break
        ranked = torch.argsort(gains[i], descending=True, stable=True)[:min(positive, _MAX_FLIP)]
        sizes = sorted({min(positive, _MAX_FLIP), min(positive, 8), min(positive, 2), 1}, reverse=True)
        for size in sizes:
            d = _flip_step(f, kinks, i, ranked[:size], point, clock, cache.setdefault(i, {}))
            if clock.hit:
                yield None
                return
            if d is not None:
                yield d


def _rows(lin: Linearization, z: torch.Tensor, index: torch.Tensor, clock: Clock, cache: dict[int, torch.Tensor]
          ) -> torch.Tensor | None:
    """The rows ``∂z_i/∂x`` for the flat indices ``index`` of ``z``, one backward pass (one step) for each row
    not in ``cache``; None when the budget ran out. (A batched backward, ``is_grads_batched``, imports torch.fx
    on first use, ~0.5 s, and is no faster on convolutions.)"""
    for i in index.tolist():
        if i in cache:
            continue
        if clock.expired():
            return None
        e = torch.zeros(z.numel(), dtype=torch.float64)
        e[i] = 1.0
        (row,) = torch.autograd.grad(z, lin.x, e.reshape(z.shape), retain_graph=True)
        cache[i] = row.detach()
    return torch.stack([cache[i] for i in index.tolist()])


def _least_norm(rows: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """The least-norm d with ``rows @ d = rhs`` (least squares when inconsistent): ``d = rowsᵀ (rows rowsᵀ)⁺ rhs``,
    with the pseudo-inverse of the small Gram matrix."""
    gram = rows @ rows.T
    return rows.T @ (torch.linalg.pinv(gram, hermitian=True) @ rhs)


def _flip_step(f: Flat, kinks: Sequence[Kink], i: int, flip: torch.Tensor, point: Point, clock: Clock,
               cache: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """The least-norm d that moves the units ``flip`` of kink i just across their breakpoints; one correction
    holds the units of that kink it flipped by accident. None when impossible or out of budget."""
    kink, lin = kinks[i], point.lin
    z_t = lin.kept[kink.z]
    max_rows = min(_MAX_ROWS, EXPLICIT_ELEMENTS // max(int(lin.x.numel()), 1))
    if not z_t.requires_grad or len(flip) > max_rows:
        return None
    z = z_t.detach().reshape(-1)
    c = kink.breakpoint(z)
    scale = float(z.abs().max()) + float(c.abs().max())
    dist = z[flip] - c[flip]
    target = c[flip] - torch.sign(dist) * torch.clamp(_CROSS * dist.abs(), min=1e-6 * scale)
    index, rhs = flip, target - z[flip]
    side = kink.side(z)
    d = None
    for _ in range(2):
        rows = _rows(lin, z_t, index, clock, cache)
        if rows is None:
            return None
        d = _least_norm(rows, rhs)
        if not bool(torch.isfinite(d).all()) or len(index) >= max_rows:
            break
        if clock.expired():
            return None
        with torch.no_grad():
            _, kept = f.run(lin.x.detach() + d, keep=[kink.z])
        moved = kink.side(kept[kink.z].reshape(-1)) != side
        moved[index] = False
        extra = torch.nonzero(moved).reshape(-1)[: max_rows - len(index)]
        if len(extra) == 0:
            break
        index = torch.cat([index, extra])
        rhs = torch.cat([rhs, torch.zeros(len(extra), dtype=torch.float64)])  # held where they were
    return d if d is not None and bool(torch.isfinite(d).all()) else None


def _line_steps(kinks: Sequence[Kink], point: Point, b: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    """Steps t·v to just past the 1st, 4th and 16th breakpoint crossing ahead along +v and -v (from the
    linear model of each unit's input along v)."""
    lin, v = point.lin, point.spec.v
    ts = []
    for k, bk in zip(kinks, b, strict=True):
        z = lin.kept[k.z].detach().reshape(-1)
        c = k.breakpoint(z)
        ok = bk != 0
        ts.append((c - z)[ok] / bk[ok])
    if not ts:
        return
    t = torch.cat(ts)
    t = t[torch.isfinite(t) & (t != 0)]
    for sign in (1.0, -1.0):
        ahead = torch.sort((sign * t)[sign * t > 0]).values
        for j in (1, 4, 16):
            if len(ahead) < j:
                break
            step = float(ahead[j - 1]) if len(ahead) == j else 0.5 * float(ahead[j - 1] + ahead[j])
            if len(ahead) == j:
                step *= 1.0 + _CROSS
            yield sign * step * v
