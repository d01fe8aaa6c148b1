"""Gradient ascent on the ratio ``||f(x + d) - f(x)|| / ||d||`` over pairs, for the empirical lower bound: only
the ratio re-measured by plain forward passes at the best pair counts, a true lower bound on the Lipschitz
constant."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lipcheck.bound.jacobian import Clock, Flat

__all__ = ["ascend", "measured_ratio", "rms"]

# The ascent never lets ||y - x|| fall below this times max(||x||, sqrt(n)): float64 rounding in f(y) - f(x)
# (~1e-16 of the intermediate magnitudes) then adds at most ~1e-10 relative to the measured ratio.
_MIN_PAIR_DISTANCE = 1e-6


def measured_ratio(f: Flat, x: torch.Tensor, d: torch.Tensor) -> float:
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


def rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t)) / math.sqrt(max(t.numel(), 1))


def ascend(f: Flat, x0: torch.Tensor, d0: torch.Tensor, steps: int, clock: Clock,
           project: Callable[[torch.Tensor, torch.Tensor], None] | None = None
           ) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """Adam ascent on log ||f(x + d) - f(x)|| - log ||d|| over (x, d), step sizes 1% of the starting rms of x
    and of d; returns the best (ratio, x, d) seen and the number of steps done. ``project(x, d)`` (in place) keeps
    the pair where it must stay (a region's box) after every step."""
    x, d = x0.detach().clone(), d0.detach().clone()
    adam = _Adam([x, d], [1e-2 * max(rms(x0), 1e-2), 1e-2 * max(rms(d0), 1e-12)])
    best, best_x, best_d = math.nan, x0, d0
    done = 0
    for _ in range(steps):
        if clock.expired():
            break
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
            if project is not None:
                project(x, d)
    return best, best_x, best_d, done
