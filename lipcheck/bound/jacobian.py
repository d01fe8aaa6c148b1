"""The model as a map of flat float64 vectors, its Jacobian products, and ``||J(x)||_2`` at a point, for the
empirical lower bound (:mod:`lipcheck.bound.lower`), under one step gate that keeps the time budget.

Every value returned here is measured: ``||J(x) v||`` for a unit ``v`` at an evaluated point ``x``, which is at
most ``||J(x)||_2`` (up to float64 rounding), hence at most the Lipschitz constant.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.bound.torch_eval import TorchEvaluator, is_float_info
from lipcheck.ir.graph import Graph

__all__ = ["Clock", "Flat", "Linearization", "Spectral", "spectral_norm_at"]

POWER_TOL = 1e-10  # relative change of ||Jv|| that ends a power iteration early (deterministic)
EXPLICIT_LIMIT = 64  # the Jacobian is formed explicitly (and its SVD taken) when min(inputs, outputs) <= this
EXPLICIT_ELEMENTS = 1 << 23  # ... and it has at most this many entries (64 MB in float64)
_RECENT = 32  # the next step is predicted to cost as much as the slowest of the last this many
_PREDICTION_SLACK = 1.25


class Clock:
    """The budget of the search. :meth:`expired` is called before every step (a power iteration, a Jacobian row,
    an ascent step, a move of the region search): it says stop once ``now + predicted cost of the step`` passes
    the deadline (the budget minus a safety margin), or once ``max_steps`` steps were granted. The prediction is
    the slowest of the recent intervals between two calls (times a slack), and before any, ``first_step`` (from
    the measured forward pass): the budget is kept instead of overrun by one slow step.

    Every search decision depends only on what was measured, never on the time, so the steps granted are a
    prefix of one fixed sequence: a run cut after k steps measures exactly what a run with ``max_steps=k``
    measures (and ``steps`` says how many that was).
    """

    def __init__(self, budget: float, *, margin: float = 0.0, max_steps: int | None = None) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + budget - margin
        self.max_steps = max_steps
        self.steps = 0
        self.hit = False  # the budget (or max_steps) stopped the search
        self.first_step = 0.0
        self._last: float | None = None
        self._recent: deque[float] = deque(maxlen=_RECENT)

    @property
    def step_seconds(self) -> float:
        """The predicted cost of the next step."""
        return max(self._recent, default=self.first_step)

    def expired(self) -> bool:
        if self.hit:
            return True
        now = time.perf_counter()
        if self._last is not None:
            self._recent.append(now - self._last)
        if (self.max_steps is not None and self.steps >= self.max_steps) or \
                now + _PREDICTION_SLACK * self.step_seconds >= self.deadline:
            self.hit = True
            return True
        self.steps += 1
        self._last = now
        return False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Flat:
    """f as a map R^n -> R^m on flat float64 vectors (float inputs concatenated, float outputs too)."""

    def __init__(self, graph: Graph, evaluator: TorchEvaluator) -> None:
        self.evaluator = evaluator
        self.shapes = [tuple(i.shape) for i in evaluator.float_inputs]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.n = sum(self.sizes)
        self.out_index = [k for k, o in enumerate(graph.outputs) if is_float_info(o)]
        self.forward_seconds = 0.0  # one forward pass, measured by the reference check

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [p.reshape(s) for p, s in zip(torch.split(z, self.sizes), self.shapes, strict=True)]

    def run(self, z: torch.Tensor, keep: Collection[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """f(z) and the intermediate tensors named in ``keep``."""
        outs, kept = self.evaluator.run(*self.split(z), keep=keep)
        parts = [outs[k].reshape(-1) for k in self.out_index]
        return torch.cat([p if p.is_floating_point() else p.to(torch.float64) for p in parts]), kept

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.run(z)[0]


class Linearization:
    """J(x) as two linear maps from ONE recorded forward pass: ``Jᵀu`` by backward, ``Jv`` by the
    double-backward trick (``g(w) = Jᵀw`` is recorded with create_graph, and ``Jv`` is the gradient of
    ``<g(w), v>`` in w). On CPU this is ~10x faster than forward-mode AD; ``torch.func.jvp`` is the fallback
    when an op has no double backward. ``kept`` holds the intermediate tensors named in ``keep``."""

    def __init__(self, f: Flat, x: torch.Tensor, keep: Collection[str] = ()) -> None:
        self.f = f
        self.x = x.detach().clone().requires_grad_(True)
        self.y, self.kept = f.run(self.x, keep)
        self._w: torch.Tensor | None = None
        self._g: torch.Tensor | None = None
        self._double_backward = self.y.requires_grad

    @property
    def m(self) -> int:
        return int(self.y.numel())

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


@dataclass
class Spectral:
    """A measured ``sigma = ||J(x) v||`` (``||v|| = 1``), ``u = J v / sigma``: a lower bound on ``||J(x)||_2``,
    equal to it up to rounding when the Jacobian was formed explicitly or the power iteration converged."""

    sigma: float
    v: torch.Tensor
    u: torch.Tensor
    evaluations: int  # Jacobian products done


def spectral_norm_at(lin: Linearization, v0: torch.Tensor, clock: Clock, *, iterations: int,
                     explicit: bool = True) -> Spectral | None:
    """The top singular pair of J at ``lin.x``: from the explicit Jacobian (min(m, n) products, then an SVD)
    when ``explicit``, min(m, n) <= :data:`EXPLICIT_LIMIT` and m·n <= :data:`EXPLICIT_ELEMENTS`, else by power
    iteration on JᵀJ started at ``v0`` (at most ``iterations``; each iterate's ``||J v||`` is itself a lower
    bound). None when the budget
    stopped it before any value (a partial explicit Jacobian is discarded)."""
    n, m = int(lin.x.numel()), lin.m
    if explicit and min(n, m) <= EXPLICIT_LIMIT and n * m <= EXPLICIT_ELEMENTS:
        return _explicit(lin, clock)
    v = v0
    best: Spectral | None = None
    prev = -1.0
    done = 0
    for _ in range(iterations):
        if clock.expired():
            break
        u = lin.jvp(v)
        sigma = float(torch.linalg.vector_norm(u))
        done += 1
        if not math.isfinite(sigma):
            break
        if best is None or sigma > best.sigma:
            best = Spectral(sigma, v, u / sigma if sigma > 0 else u, done)
        w = lin.vjp(u)
        w_norm = float(torch.linalg.vector_norm(w))
        if not math.isfinite(w_norm) or w_norm == 0.0 or abs(sigma - prev) <= POWER_TOL * sigma:
            break
        prev = sigma
        v = w / w_norm
    if best is not None:
        best.evaluations = 2 * done
    return best


def _explicit(lin: Linearization, clock: Clock) -> Spectral | None:
    n, m = int(lin.x.numel()), lin.m
    by_rows = m <= n
    vectors = []
    for k in range(m if by_rows else n):
        if clock.expired():
            return None
        e = torch.zeros(m if by_rows else n, dtype=torch.float64)
        e[k] = 1.0
        vectors.append(lin.vjp(e) if by_rows else lin.jvp(e))
    if not vectors:
        return None
    jac = torch.stack(vectors) if by_rows else torch.stack(vectors, dim=1)  # (m, n)
    if not bool(torch.isfinite(jac).all()):
        return None
    _, _, vh = np.linalg.svd(jac.numpy(), full_matrices=False)
    v = torch.from_numpy(np.ascontiguousarray(vh[0]))
    v = v / torch.linalg.vector_norm(v)
    u = jac @ v  # the measured J v (the matrix's columns / rows are measured products)
    sigma = float(torch.linalg.vector_norm(u))
    if not math.isfinite(sigma):
        return None
    return Spectral(sigma, v, u / sigma if sigma > 0 else u, len(vectors))
