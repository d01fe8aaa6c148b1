"""Tighter value ranges on a region by affine forms (a zonotope domain, as DeepZ / CROWN-style linear relaxations).

Interval arithmetic (:mod:`lipcheck.bound.ranges`) forgets that neighbouring values depend on the same inputs: the
first layer of an MLP on an L2 ball of radius r gets ``W x ± r·‖W_i‖₁`` per row where the truth is ``± r·‖W_i‖₂``,
and every later layer compounds it. Here every float tensor is also carried as an affine form of the region's
noise symbols, elementwise:

    value ∈ c + Σ_j B_j·ε_j + Σ_j X_j·η_j ± s        ‖ε‖₂ ≤ 1,  η ∈ [−1, 1]^m

``B`` (the ball generators) exist for an L2-ball region (x = x₀ + r·ε), ``X`` (the box generators) for box regions
and for the error terms the nonlinear ops add; ``s ≥ 0`` is a per-element slack, independent per element, that
collects every rounding error. The concretization ``c ± (‖B_i‖₂ + ‖X_i‖₁ + s_i)`` is a sound interval, and every
tensor keeps the INTERSECTION of it and the interval rule's own range (both hold, so both together hold).

Linear ops map the forms exactly (their generators through the op's linear part, the bias into the center).
Relu / LeakyRelu / PRelu (constant slopes) on an element with range [l, u], l < 0 < u, use the chord relaxation:
for any λ ∈ [0, 1], Relu(x) − λx ∈ [0, max(−λl, (1 − λ)u)] on [l, u], so Relu(x) = λx + h/2 + (h/2)·η_new with
one new box symbol (or, when the form has no room for more symbols, ± h/2 in the slack); stable elements are
exact (identity or 0). MaxPool: each window's element i of largest lower bound, plus δ ∈ [0, max(0, max_{j≠i} hi_j
− lo_i)] on one new symbol (exact where i dominates its window). Every other op gets its outputs' intervals from the
interval rules (on the tightened inputs) and, when small enough, a fresh form with one new box symbol per element.

Rounding (the model runs in precision u, we compute in float64 of unit roundoff u₆₄):
- the model's own error at a sum of products is the interval rule's bound, ``2γ_{n+4}(|L|(m) + |b|) + (n+4)·tiny``
  with m the input's magnitude (Higham §3.1; see :mod:`.ranges`), added to the slack; one correctly rounded
  operation (Add, Mul by a constant) adds ``u·(magnitude)``; copies and Relu are exact.
- our float64 evaluation of c and of the generators through the op: every entry within γ₆₄_{n+4} of |L| applied to
  the magnitudes, so the slack also gets ``2γ₆₄_{n+4}·(|L|(|c| + Σ|B| + Σ|X| + s) + |b|)`` (Σ over the symbols,
  per element, which bounds the ℓ2 part too).
- the concretization's norms and sums are rounded up by a relative ``(k + 8)·u₆₄`` and the bounds outward by one ulp.

Memory: a form costs (symbols × elements) float64 numbers; one that would exceed ``max_entries`` is not built and
its tensor keeps the interval only (sound, just not tighter), and so do the tensors that depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.bound import ranges as rg
from lipcheck.bound import torch_eval as te
from lipcheck.ir.graph import Graph, Node

__all__ = ["Form", "symbolic_ranges"]

Array = np.ndarray
_Map = Callable[[Array], Array]  # a (k, *in) stack of generators -> (k, *out)
U64 = 2.0**-53
MAX_ENTRIES = 2**24  # float64 numbers in one form (128 MiB)
FRESH_LIMIT = 4096  # elements of an op without a relaxation that still get a fresh form


@dataclass
class Form:
    """``c + Σ B_j ε_j + Σ X_j η_j ± s`` (module docstring); ``ball`` and ``box`` are (symbols, *shape) arrays,
    ``box``'s symbol j is the region's j-th box symbol (forms made earlier have fewer: missing ones are 0)."""

    c: Array
    ball: Array | None
    box: Array | None
    s: Array

    @property
    def entries(self) -> int:
        k = (0 if self.ball is None else self.ball.shape[0]) + (0 if self.box is None else self.box.shape[0])
        return k * self.c.size

    def magnitude(self) -> Array:
        """|c| + Σ|B| + Σ|X| + s per element (≥ every |value| and every generator sum)."""
        m = np.abs(self.c) + self.s
        for g in (self.ball, self.box):
            if g is not None and g.shape[0]:
                m = m + np.abs(g).sum(axis=0)
        return m

    def radius(self) -> Array:
        k = 8.0
        r = self.s.copy()
        if self.ball is not None and self.ball.shape[0]:
            r = r + np.sqrt(np.einsum("k...,k...->...", self.ball, self.ball))
            k += self.ball.shape[0]
        if self.box is not None and self.box.shape[0]:
            r = r + np.abs(self.box).sum(axis=0)
            k += self.box.shape[0]
        return r * (1.0 + 2.0 * k * U64)

    def interval(self) -> tuple[Array, Array]:
        r = self.radius()
        with np.errstate(invalid="ignore", over="ignore"):
            lo = np.nextafter(self.c - r, -np.inf)
            hi = np.nextafter(self.c + r, np.inf)
        return lo, hi


def _gamma64(n: float) -> float:
    nu = (max(n, 1.0) + 4.0) * U64
    return 2.0 * nu / (1.0 - nu)


def _t(a: Array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _np(t: torch.Tensor) -> Array:
    return t.detach().to(torch.float64).numpy()


def _pad_box(box: Array | None, k: int, shape: tuple[int, ...]) -> Array:
    """``box`` with k symbols (zeros for the ones it does not have)."""
    if box is None:
        return np.zeros((k,) + shape)
    if box.shape[0] == k:
        return box
    return np.concatenate([box, np.zeros((k - box.shape[0],) + box.shape[1:])], axis=0)


class _Pass:
    def __init__(self, graph: Graph, prec: rg._Precision, env: dict[str, rg.Interval], max_entries: int) -> None:
        self.graph = graph
        self.prec = prec
        self.env = env
        self.ctx = rg._Ctx(graph, prec, env)
        self.ectx = te.EvalContext(graph, torch.float64)
        self.forms: dict[str, Form] = {}
        self.max_entries = max_entries
        self.box_symbols = 0  # symbols of the box part made so far

    # ---------------------------------------------------------------------------------------- helpers

    def form(self, name: str) -> Form | None:
        return self.forms.get(name)

    def const(self, name: str) -> Array | None:
        if self.graph.is_const(name):
            return np.asarray(self.graph.constants[name], dtype=np.float64)
        iv = self.env.get(name)
        if iv is not None and iv.is_point and name not in self.forms:
            return iv.lo
        return None

    def mag(self, name: str) -> Array:
        iv = self.ctx.iv(name)
        return np.maximum(np.abs(iv.lo), np.abs(iv.hi))

    def fits(self, symbols: int, size: int) -> bool:
        return symbols * size <= self.max_entries

    def fresh(self, lo: Array, hi: Array) -> Form | None:
        """A new form with one new box symbol per element of finite width."""
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or lo.size > FRESH_LIMIT:
            return None
        c = 0.5 * lo + 0.5 * hi
        r = np.maximum(hi - c, c - lo)
        r = np.nextafter(r, np.inf) * (1.0 + 4.0 * U64)  # c ± r ⊇ [lo, hi] despite c's rounding
        idx = np.flatnonzero(r.reshape(-1) > 0)
        k = self.box_symbols + idx.size
        if not self.fits(k, lo.size):
            return None
        box = np.zeros((k, lo.size))
        box[self.box_symbols + np.arange(idx.size), idx] = r.reshape(-1)[idx]
        self.box_symbols = k
        return Form(c, None, box.reshape((k,) + lo.shape), np.zeros_like(c))

    # ------------------------------------------------------------------------------ linear maps of forms

    def linear(self, f: Form, apply: _Map, apply_abs: _Map | None, bias: Array | None, n: int,
               model_rounding: bool) -> Form | None:
        """The form of L(x) + bias for x in ``f``: ``apply`` maps a (k, *in) stack to (k, *out) (L, exact in real
        arithmetic), ``apply_abs`` the same with |L| (None: L has nonnegative entries, or is a selection)."""
        absl = apply_abs or apply
        c = apply(f.c[None])[0]
        if bias is not None:
            c = c + bias
        if not self.fits((0 if f.ball is None else f.ball.shape[0]) + (0 if f.box is None else f.box.shape[0]),
                         c.size):
            return None
        ball = apply(f.ball) if f.ball is not None and f.ball.shape[0] else f.ball
        box = apply(f.box) if f.box is not None and f.box.shape[0] else f.box
        if ball is not None and not ball.shape[0]:
            ball = np.zeros((0,) + c.shape)
        if box is not None and not box.shape[0]:
            box = np.zeros((0,) + c.shape)
        own = _gamma64(n) * (absl(f.magnitude()[None])[0] + (np.abs(bias) if bias is not None else 0.0))
        s = absl(f.s[None])[0] + own
        if model_rounding:
            # the model's sum-of-products error for inputs of magnitude m (the interval rule's own bound)
            m = absl(self._input_mag[None])[0] + (np.abs(bias) if bias is not None else 0.0)
            s = s + 2.0 * self.prec.gamma(n + 4) * m + (n + 4) * self.prec.tiny
        s = s + 4.0 * self.prec.tiny
        return Form(c, ball, box, s)

    _input_mag: Array

    def _ops_stack(self, node: Node, var: int, params: list[torch.Tensor | None]) -> _Map:
        """A (k, *in) -> (k, *out) map running the op with its batch axis merged with k (ops that act per sample:
        conv, pools)."""

        def apply(stack: Array) -> Array:
            k = stack.shape[0]
            x = _t(stack.reshape((k * stack.shape[1],) + stack.shape[2:]))
            args = list(params)
            args[var] = x
            out = te.OPS[node.op_type](node, args, self.ectx)
            out = out[0] if isinstance(out, tuple) else out
            y = _np(out)
            return y.reshape((k, stack.shape[1]) + y.shape[1:])

        return apply

    def _vmapped(self, node: Node, var: int, params: list[torch.Tensor | None], output: int = 0) -> _Map:
        def one(x: torch.Tensor) -> torch.Tensor:
            args = list(params)
            args[var] = x
            out = te.OPS[node.op_type](node, args, self.ectx)
            return out[output] if isinstance(out, tuple) else out

        def apply(stack: Array) -> Array:
            return _np(torch.func.vmap(one)(_t(stack)))

        return apply

    # ------------------------------------------------------------------------------------------ rules

    def step(self, node: Node) -> list[Form | None]:
        op = node.op_type
        var = [i for i, n in enumerate(node.inputs) if n and n in self.forms]
        if not var or node.domain not in ("", "ai.onnx"):
            return []
        if te.unsupported_reason(node, self.graph):
            return []
        f = self.forms[node.inputs[var[0]]]
        self._input_mag = self.mag(node.inputs[var[0]])
        if op in ("Relu", "LeakyRelu", "PRelu") and var == [0]:
            return [self.relu(node, f)]
        if op == "MaxPool" and var == [0]:
            return [self.maxpool(node, f)]
        if len(var) == 1:
            return self.affine_unary(node, var[0], f)
        if op in ("Add", "Sub") and len(var) == 2:
            return [self.add(node)]
        if op == "Concat":
            return [self.concat(node)]
        return []

    def concat(self, node: Node) -> Form | None:
        """Concat of forms and constants: the pieces' centers and generators side by side (exact)."""
        parts: list[tuple[Array, Form | None]] = []
        for name in node.inputs:
            f = self.forms.get(name)
            v = f.c if f is not None else self.const(name)
            if v is None:
                return None
            parts.append((v, f))
        rank = parts[0][0].ndim
        axis = int(node.attr("axis", 0))
        axis = axis + rank if axis < 0 else axis
        forms = [f for _, f in parts if f is not None]
        k = max((0 if f.box is None else f.box.shape[0]) for f in forms)
        kb = max((0 if f.ball is None else f.ball.shape[0]) for f in forms)
        size = sum(v.size for v, _ in parts)
        if not self.fits(k + kb, size):
            return None
        c = np.concatenate([v for v, _ in parts], axis=axis)
        box = np.concatenate([_pad_box(None if f is None else f.box, k, v.shape) for v, f in parts], axis=axis + 1) \
            if k else None
        ball = np.concatenate([f.ball if f is not None and f.ball is not None else np.zeros((kb,) + v.shape)
                               for v, f in parts], axis=axis + 1) if kb else None
        s = np.concatenate([f.s if f is not None else np.zeros_like(v) for v, f in parts], axis=axis)
        return Form(c, ball, box, s)

    def params(self, node: Node) -> list[torch.Tensor | None] | None:
        out: list[torch.Tensor | None] = []
        for name in node.inputs:
            if not name:
                out.append(None)
                continue
            if name in self.forms:
                out.append(None)
                continue
            v = self.ctx.exact(name)
            if v is None:
                return None
            out.append(rg._param_tensor(v))
        return out

    def affine_unary(self, node: Node, i: int, f: Form) -> list[Form | None]:
        op = node.op_type
        params = self.params(node)
        if params is None:
            return []
        if op in ("Conv", "ConvTranspose") and i == 0:
            w = params[1]
            bias = _np(params[2]).reshape([-1] + [1] * (f.c.ndim - 2)) if len(params) > 2 and params[2] is not None \
                else None
            p = params[:2]
            apply = self._ops_stack(node, 0, p)
            apply_abs = self._ops_stack(node, 0, [None, w.abs()])
            group = int(node.attr("group", 1))
            k = int(np.prod(tuple(w.shape[2:])))
            n = (w.shape[1] if op == "Conv" else w.shape[0] // group) * k
            return [self.linear(f, apply, apply_abs, bias, n, True)]
        if op == "Gemm" and i == 0 and not int(node.attr("transA", 0)):
            b = _np(params[1])
            b = b.T if int(node.attr("transB", 0)) else b
            alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
            bmat, babs = _t(alpha * b), _t(abs(alpha) * np.abs(b))
            bias = beta * _np(params[2]) if len(params) > 2 and params[2] is not None and beta != 0.0 else None
            if bias is not None:
                bias = np.broadcast_to(bias, f.c.shape[:-1] + (b.shape[1],))
            return [self.linear(f, lambda s: _np(torch.matmul(_t(s), bmat)),
                                lambda s: _np(torch.matmul(_t(s), babs)), bias, b.shape[0], True)]
        if op == "MatMul":
            w = _np(params[1 - i])
            if w.ndim < 2 or f.c.ndim < 2:
                return []
            wt, wa = _t(w), _t(np.abs(w))
            if i == 0:
                return [self.linear(f, lambda s: _np(torch.matmul(_t(s), wt)),
                                    lambda s: _np(torch.matmul(_t(s), wa)), None, w.shape[-2], True)]
            return [self.linear(f, lambda s: _np(torch.matmul(wt, _t(s))),
                                lambda s: _np(torch.matmul(wa, _t(s))), None, w.shape[-1], True)]
        if op == "BatchNormalization" and i == 0:
            scale, b, mean, var = (_np(params[j]) for j in range(1, 5))
            eps = float(node.attr("epsilon", np.float32(1e-5)))
            shape = [-1] + [1] * (f.c.ndim - 2)
            sc = (scale / np.sqrt(var + eps)).reshape(shape)
            t = b.reshape(shape) - mean.reshape(shape) * sc
            sa = np.abs(sc)
            out = self.linear(f, lambda s: s * sc, lambda s: s * sa, np.broadcast_to(t, f.c.shape), 4, False)
            if out is not None:  # the model's few operations: the interval rule's magnitude-based bound
                m = (self._input_mag + np.abs(mean.reshape(shape))) * sa + np.abs(b.reshape(shape))
                out.s = out.s + 2.0 * self.prec.gamma(8) * m + 8 * self.prec.tiny
            return [out]
        if op in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2:
            other = _np(params[1 - i])
            out_shape = tuple(self.graph.shapes.get(node.outputs[0]) or ())
            if np.broadcast_shapes(f.c.shape, other.shape) != f.c.shape or out_shape != f.c.shape:
                return []
            if op == "Div":
                if i != 0 or np.any(other == 0):
                    return []
                scale = 1.0 / other  # L(x) = x / k: rounding of 1/k is covered by the model's u-bound below
                res = self.linear(f, lambda s: s / other, lambda s: s / np.abs(other), None, 2, False)
            elif op == "Mul":
                res = self.linear(f, lambda s: s * other, lambda s: s * np.abs(other), None, 2, False)
                scale = other
            else:
                sign = -1.0 if (op == "Sub" and i == 1) else 1.0
                shift = other if op == "Add" else (-other if i == 0 else other)
                res = self.linear(f, lambda s: sign * s, lambda s: s, np.broadcast_to(shift, f.c.shape), 2, False)
                scale = None
            if res is not None:  # one correctly rounded operation of the model: u·|result| ≤ u·(|x|·|k| + |k'|)
                if scale is None:
                    m = self._input_mag + np.abs(other)
                else:
                    m = self._input_mag * np.abs(scale) * (1.0 + 4.0 * U64)
                res.s = res.s + 2.0 * self.prec.u * m + 2.0 * self.prec.tiny
            return [res]
        if op == "Neg":
            return [self.linear(f, lambda s: -s, lambda s: s, None, 1, False)]
        if op in _PER_SAMPLE_NONNEG and i == 0:
            apply = self._ops_stack(node, 0, params)
            k = int(np.prod(node.attr("kernel_shape") or [1])) if op == "AveragePool" else int(np.prod(f.c.shape[2:]))
            return [self.linear(f, apply, None, None, k, True)]
        if op in _SELECTIONS and i == _SELECTIONS[op]:
            if op == "Pad" and len(params) > 2 and params[2] is not None:
                cval = _np(params[2])
                zero = list(params)
                zero[2] = _t(np.zeros_like(cval))
            else:
                zero = list(params)
            if op == "Pad" and str(node.attr("mode", "constant")) != "constant":
                return []
            outs: list[Form | None] = []
            for j, name in enumerate(node.outputs):
                if not name:
                    outs.append(None)
                    continue
                gen = self._vmapped(node, i, zero, j)
                cen = self._vmapped(node, i, params, j)
                try:
                    c = cen(f.c[None])[0]
                    form = self.linear(f, gen, None, None, 1, False)
                except Exception:  # noqa: BLE001 - an op vmap cannot batch: the interval only (sound)
                    return []
                if form is not None:
                    form.c = c
                outs.append(form)
            return outs
        return []

    def add(self, node: Node) -> Form | None:
        a, b = self.forms[node.inputs[0]], self.forms[node.inputs[1]]
        if a.c.shape != b.c.shape:
            return None
        sign = -1.0 if node.op_type == "Sub" else 1.0
        k = max(0 if a.box is None else a.box.shape[0], 0 if b.box is None else b.box.shape[0])
        if not self.fits(k + max(0 if a.ball is None else a.ball.shape[0], 0 if b.ball is None else b.ball.shape[0]),
                         a.c.size):
            return None
        box = None
        if k:
            box = _pad_box(a.box, k, a.c.shape) + sign * _pad_box(b.box, k, b.c.shape)
        ball = None
        if a.ball is not None or b.ball is not None:
            ball = (a.ball if a.ball is not None else 0.0) + sign * (b.ball if b.ball is not None else 0.0)
        c = a.c + sign * b.c
        m = self.mag(node.inputs[0]) + self.mag(node.inputs[1])
        s = a.s + b.s + 2.0 * U64 * (a.magnitude() + b.magnitude()) + 2.0 * self.prec.u * m + 2.0 * self.prec.tiny
        return Form(c, ball, box, s)

    def relu(self, node: Node, f: Form) -> Form | None:
        iv = self.ctx.iv(node.inputs[0])
        lo, hi = iv.lo, iv.hi
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            return None
        if node.op_type == "Relu":
            alpha = np.zeros_like(lo)
        elif node.op_type == "LeakyRelu":
            alpha = np.full_like(lo, float(node.attr("alpha", 0.01)))
        else:
            slope = self.const(node.inputs[1])
            if slope is None:
                return None
            alpha = np.broadcast_to(slope, lo.shape).astype(np.float64)
        if np.any(alpha > 1.0) or np.any(alpha < 0.0):
            return None
        # φ(x) = αx + (1 − α)·Relu(x); Relu(x) − λx ∈ [0, h] on [l, u] (module docstring)
        pos, neg = lo >= 0, hi <= 0
        unstable = ~pos & ~neg
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(unstable, hi / (hi - lo), 0.0)
        lam = np.clip(np.where(pos, 1.0, lam), 0.0, 1.0)
        h = np.where(unstable, np.maximum(-lam * lo, (1.0 - lam) * hi), 0.0) * (1.0 + 8.0 * U64)
        slope = alpha + (1.0 - alpha) * lam  # the total linear coefficient
        half = (1.0 - alpha) * h * 0.5 * (1.0 + 8.0 * U64)
        idx = np.flatnonzero(unstable.reshape(-1) & (half.reshape(-1) > 0))
        k_old = 0 if f.box is None else f.box.shape[0]
        k = max(self.box_symbols, k_old) + idx.size
        kb = 0 if f.ball is None else f.ball.shape[0]
        consolidate = False
        if not self.fits(k + kb, lo.size):
            # no room for one symbol per unstable element: their ±h/2 go into the slack instead (independent per
            # element, as sound, only without the cancellations later layers could find)
            if not self.fits(k_old + kb, lo.size):
                return None
            consolidate, k, idx = True, k_old, idx[:0]
        c = slope * f.c + half
        ball = None if f.ball is None else f.ball * slope
        box = _pad_box(None if f.box is None else f.box * slope, k, lo.shape) if k else None
        if idx.size:
            flat = box.reshape(k, -1)
            flat[k - idx.size + np.arange(idx.size), idx] = half.reshape(-1)[idx]
            self.box_symbols = k
        s = slope * f.s + 4.0 * U64 * (np.abs(c) + slope * f.magnitude()) + 2.0 * self.prec.tiny
        if consolidate:
            s = s + half * (1.0 + 4.0 * U64)
        if node.op_type != "Relu":  # α·x rounds once in the model (Relu itself is exact)
            s = s + 2.0 * self.prec.u * alpha * self._input_mag
        return Form(c, ball, box, s)


    def maxpool(self, node: Node, f: Form) -> Form | None:
        """MaxPool(x)_o = x_i + δ with i the window's element of largest lower bound and δ = max(0, max_{j≠i}
        x_j − x_i) ∈ [0, U], U = max(0, max_{j≠i} hi_j − lo_i): x_i's form, plus U/2 ± U/2 on one new symbol
        (exact where i dominates its window, U = 0). Windows are cut out of the −inf-padded input as the
        evaluator pads it (pads, strides, dilations, ceil_mode)."""
        iv = self.ctx.iv(node.inputs[0])
        lo, hi = iv.lo, iv.hi
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or lo.ndim < 3:
            return None
        spatial = tuple(lo.shape[2:])
        nd = len(spatial)
        x = torch.from_numpy(np.ascontiguousarray(lo))
        k, st, dil = te._pool_params(node, x)
        begins, _, needed = te._pool_window(node, spatial, k, st, dil)
        if any(b < 0 for b in begins) or len(k) != nd:
            return None
        positions = np.arange(int(np.prod(spatial)), dtype=np.float64).reshape((1, 1) + spatial)

        def windows(a: Array, fill: float) -> np.ndarray:
            """(N, C, *out, K): each window's elements (fill where it reads padding)."""
            t = te._pad_dims(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)), 2, begins, needed,
                             value=fill)
            for i in range(nd):
                eff = (k[i] - 1) * dil[i] + 1
                t = t.unfold(2 + i, eff, st[i])
            t = t[(Ellipsis,) + tuple(slice(None, None, dd) for dd in dil)]
            arr = t.numpy()
            return arr.reshape(arr.shape[: 2 + nd] + (-1,))

        lo_w, hi_w = windows(lo, -np.inf), windows(hi, -np.inf)
        pos_w = windows(positions, -1.0)
        out_shape = lo_w.shape[:-1]
        if pos_w.shape[0] != 1:
            pos_w = np.broadcast_to(pos_w, out_shape + (pos_w.shape[-1],))
        pick = np.argmax(lo_w, axis=-1)[..., None]  # the element of largest lower bound (never padding)
        chosen = np.take_along_axis(np.broadcast_to(pos_w, lo_w.shape), pick, axis=-1)[..., 0]
        if np.any(chosen < 0):
            return None
        lo_sel = np.take_along_axis(lo_w, pick, axis=-1)[..., 0]
        others = hi_w.copy()
        np.put_along_axis(others, pick, -np.inf, axis=-1)
        rival = np.max(others, axis=-1)
        with np.errstate(invalid="ignore"):
            u = np.where(np.isfinite(rival), np.maximum(0.0, rival - lo_sel), 0.0)
        half = u * 0.5 * (1.0 + 8.0 * U64)
        flat = chosen.astype(np.int64)
        size_in = int(np.prod(spatial))
        size_out = int(np.prod(out_shape[2:]))
        index = np.broadcast_to(flat.reshape(out_shape[0], out_shape[1], size_out), lo.shape[:2] + (size_out,))

        def gather(a: Array, lead: int) -> Array:
            src = a.reshape(a.shape[:lead] + lo.shape[:2] + (size_in,))
            idx = np.broadcast_to(index.reshape((1,) * lead + index.shape), src.shape[:lead] + index.shape)
            return np.take_along_axis(src, idx, axis=-1).reshape(a.shape[:lead] + out_shape)

        sel = np.flatnonzero(half.reshape(-1) > 0)
        k_old = 0 if f.box is None else f.box.shape[0]
        kb = 0 if f.ball is None else f.ball.shape[0]
        kk = max(self.box_symbols, k_old) + sel.size
        consolidate = not self.fits(kk + kb, int(np.prod(out_shape)))
        if consolidate:
            kk, sel = k_old, sel[:0]
        c = gather(f.c, 0) + half
        ball = gather(f.ball, 1) if f.ball is not None else None
        box = None
        if kk:
            box = _pad_box(gather(f.box, 1) if f.box is not None and k_old else None, kk, out_shape)
            if sel.size:
                flatbox = box.reshape(kk, -1)
                flatbox[kk - sel.size + np.arange(sel.size), sel] = half.reshape(-1)[sel]
                self.box_symbols = kk
        s_out = gather(f.s, 0) + 4.0 * U64 * np.abs(c) + 2.0 * self.prec.tiny
        if consolidate:
            s_out = s_out + half * (1.0 + 4.0 * U64)
        return Form(c, ball, box, s_out)


# ops applied per sample with nonnegative weights (the model rounds like a sum of that many products)
_PER_SAMPLE_NONNEG = ("AveragePool", "GlobalAveragePool")
# copies: op -> the position of the data input (exact in every precision)
_SELECTIONS = {"Reshape": 0, "Flatten": 0, "Transpose": 0, "Squeeze": 0, "Unsqueeze": 0, "Identity": 0,
               "Dropout": 0, "Slice": 0, "Pad": 0, "Gather": 0, "Expand": 0, "Tile": 0, "DepthToSpace": 0,
               "SpaceToDepth": 0, "Split": 0}


def symbolic_ranges(graph: Graph, box: Mapping[str, tuple[Array, Array]], *, ball: tuple[str, Array, float] | None
                    = None, precision: str | None = None, max_entries: int = MAX_ENTRIES) -> rg.Ranges:
    """:func:`lipcheck.bound.ranges.propagate` tightened by affine forms (module docstring). ``box``: input name ->
    (lo, hi) as for ``propagate``; ``ball``: (input name, center, radius) for an L2 ball around one input (its box
    entry must be the box around that ball). Every interval is ⊆ the plain propagation's, and equally sound."""
    base = rg.propagate(graph, box, precision=precision)
    prec = rg._precision_of(graph, precision)
    env: dict[str, rg.Interval] = {}
    p = _Pass(graph, prec, env, max_entries)
    for info in graph.inputs:
        iv = base.intervals[info.name]
        env[info.name] = iv
        if not te.is_float_info(info):
            continue
        if ball is not None and ball[0] == info.name:
            center = np.asarray(ball[1], dtype=np.float64).reshape(iv.shape)
            n = center.size
            if not p.fits(n, n):
                continue
            gens = (float(ball[2]) * np.eye(n)).reshape((n,) + iv.shape)
            p.forms[info.name] = Form(center.copy(), gens, None, np.zeros_like(center))
            continue
        form = p.fresh(iv.lo, iv.hi) if iv.lo.size <= max(FRESH_LIMIT, int(math.isqrt(max_entries))) else None
        if form is not None:
            p.forms[info.name] = form
    if not p.forms:
        return base
    last_use: dict[str, int] = {}
    for k, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name:
                last_use[name] = k
    keep = {o.name for o in graph.outputs}
    for k, node in enumerate(graph.nodes):
        p.ctx.partial = None
        try:
            rule = rg._RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            outs = rule(node, p.ctx) if rule is not None else []
        except Exception:  # noqa: BLE001 - the plain propagation's value stands
            outs = []
        try:
            forms = p.step(node)
        except Exception:  # noqa: BLE001 - no form: the interval (sound) only
            forms = []
        for j, name in enumerate(node.outputs):
            if not name:
                continue
            old = base.intervals.get(name)
            iv = outs[j] if j < len(outs) and outs[j] is not None else None
            lo, hi = (old.lo, old.hi) if old is not None else (None, None)
            if iv is not None and lo is not None and iv.shape == lo.shape:
                lo, hi = np.maximum(lo, iv.lo), np.minimum(hi, iv.hi)
            form = forms[j] if j < len(forms) else None
            is_float = te.is_float_info(_Info(graph, name))
            if form is not None and not is_float:
                form = None
            if form is not None and lo is not None and form.c.shape == lo.shape and np.all(np.isfinite(form.s)) \
                    and np.all(np.isfinite(form.c)):
                flo, fhi = form.interval()
                if np.all(np.isfinite(flo)) and np.all(np.isfinite(fhi)):  # no NaN / inf from an overflow
                    lo, hi = np.maximum(lo, flo), np.minimum(hi, fhi)
                    p.forms[name] = form
            elif lo is not None and name not in base.unbounded and is_float:
                fresh = p.fresh(lo, hi) if any(i in p.forms for i in node.inputs if i) else None
                if fresh is not None:
                    p.forms[name] = fresh
            if lo is not None:
                if np.any(lo > hi):  # cannot happen for sound inputs; keep the plain range rather than guess
                    lo, hi = old.lo, old.hi
                env[name] = rg.Interval(lo, hi)
        for name in node.inputs:
            if name and last_use.get(name) == k and name not in keep:
                p.forms.pop(name, None)
    for name, iv in base.intervals.items():
        env.setdefault(name, iv)
    unbounded = {k: v for k, v in base.unbounded.items() if not env[k].is_finite}
    return rg.Ranges(intervals=env, unbounded=unbounded, graph=graph, precision=base.precision)


@dataclass
class _Info:
    graph: Graph
    name: str

    @property
    def dtype(self) -> str:
        return str(self.graph.dtypes.get(self.name, "unknown"))

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float16", "float32", "float64", "bfloat16")
