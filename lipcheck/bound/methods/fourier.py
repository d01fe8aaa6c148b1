"""``residual-fft``: the residual-block LMI of :mod:`.residual` for convolutional blocks far too large for a dense LMI,
certified frequency by frequency.

A block y = S·x + W₂·φ(W₁·x) (+ constant shifts) whose shortcut S is the identity or one Conv, and whose W₁ and W₂
are one Conv each, any of them followed by an inference-mode BatchNormalization (a per-channel scale), with φ
element-wise of slopes in [α, β]: ResNet's BasicBlock, with or without its downsampling shortcut.

Why a circular LMI bounds the zero-padded block. Put the input on a torus Z_N^d with N (per spatial dim) so large that
no kept output of any of the three convs reads across the wrap (N ≥ n + the pads it reads past either edge), and a
multiple of the strides. Each zero-padded conv is then the circular conv on the torus, restricted to its kept outputs
(:mod:`lipcheck.norms.conv`). Inside the block, the circular W₁'s outputs outside the hidden tensor's window are what
the network never computes; the real W₂ reads zeros there, which is the circular block with the activation's slope
set to 0 at those positions. So every difference quotient of the real block is ‖R(S + K₂DK₁)Δx‖ / ‖Δx‖ with K₁, K₂,
S the circular operators, D diagonal with entries in [min(α, 0), max(β, 0)] and R a restriction (norm ≤ 1), and
L ≤ sup_D ‖S + K₂DK₁‖. The LipSDP-Neuron LMI of :mod:`.residual` for the circular operators,

    P(ρ, tI) = [[ρI + a·t·K₁ᴴK₁ − SᴴS,  −m·t·K₁ᴴ − SᴴK₂],
                [−m·t·K₁ − K₂ᴴS,         tI − K₂ᴴK₂     ]]  ⪰ 0   (a = αβ, m = (α + β)/2),

proves sup_D ≤ √ρ. Its multiplier t·I is the same at every position, so the unitary DFT on the output grid (the
polyphase split of Senderovich, Bulatova & Deng 2022 for strides: an input of stride s is s^d channels per channel)
block-diagonalizes it: P ⪰ 0 iff P(ω) ⪰ 0 for every frequency ω, a matrix of order C_in·s^d + C_hidden. Real weights
make P(−ω) = conj P(ω): half of the frequencies are checked.

How the value is found and proven. t is searched on a few frequencies (those whose ρ(ω, t) is largest), ρ(ω, t) being
λ_max of the Schur complement (:mod:`.residual`); every frequency is then checked by a float64 Cholesky factorization
of P(ω) − δI with δ covering the symbols' rounding (every entry of K̂(ω) is a sum of taps times unit phases, so its
error is bounded by γ·Σ|w| entrywise, the same bound at every ω), the products, the BatchNormalization folding and
the factorization's own backward error (Higham, Accuracy and Stability, Thm 10.3). Frequencies that fail join the
search and the check is repeated; ρ is raised by a margin only as a last resort.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lipcheck.ir.graph import Graph, Node
from lipcheck.norms.margin import EPS64, rounding_margin

if TYPE_CHECKING:
    from lipcheck.bound.methods.blocks import Limits, Piece

METHOD = "residual-fft"
MARGINS = (1e-6, 1e-4, 1e-2)
CANDIDATES = 6  # frequencies the multiplier search looks at first
ROUNDS = 2  # searches: the second one after a pass over every frequency added those the first one missed
CHUNK_ENTRIES = 2_000_000  # complex entries of P(ω) per frequency chunk (32 MB)
CACHE_BYTES = 512 * 2**20  # symbols (and the search's per-frequency factors) kept between passes up to this size
MAX_WORK = 2e12  # Σ over frequencies of order³: the cost of one full check (about a minute on 2 cores)


@dataclass(frozen=True)
class ConvSpec:
    """One Conv (+ per-channel scale) as the map it is on its actual input."""

    weight: np.ndarray  # (c_out, c_in, *k): groups expanded to a full (block-diagonal) weight, the scale folded in
    rel_error: float  # |weight − the true folded weight| <= rel_error·|weight|, entrywise
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    n_in: tuple[int, ...]
    n_out: tuple[int, ...]

    @property
    def c_out(self) -> int:
        return int(self.weight.shape[0])

    @property
    def c_in(self) -> int:
        return int(self.weight.shape[1])

    def torus_needed(self) -> tuple[int, ...]:
        """The least torus size per dim on which no kept output reads across the wrap."""
        out = []
        for n, o, s, k, dil, pb in zip(self.n_in, self.n_out, self.strides, self.weight.shape[2:], self.dilations,
                                       self.pads_begin):
            last_read = (o - 1) * s + (k - 1) * dil - pb
            out.append(n + max(pb, last_read - (n - 1), 0))
        return tuple(out)


def _spatial_pads(node: Node, graph: Graph) -> tuple[list[int], list[int]] | None:
    """A constant-mode Pad that pads only the spatial dims (by amounts ≥ 0) of a 3-D+ tensor: (begins, ends) per
    spatial dim; None for anything else. Its value only adds a constant: the linear part is zero padding."""
    if node.op_type != "Pad" or str(node.attr("mode", "constant")) != "constant" or not node.inputs:
        return None
    shape = graph.shape(node.inputs[0])
    if shape is None or len(shape) < 3:
        return None
    rank = len(shape)
    if len(node.inputs) > 1 and node.inputs[1]:
        if node.inputs[1] not in graph.constants:
            return None
        pads = [int(v) for v in np.asarray(graph.constants[node.inputs[1]]).reshape(-1)]
    else:
        pads = [int(v) for v in node.attr("pads", [])]
    if any(name and name not in graph.constants for name in node.inputs[2:3]):
        return None  # a pad value computed at run time
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        if node.inputs[3] not in graph.constants:
            return None
        axes = [int(a) % rank for a in np.asarray(graph.constants[node.inputs[3]]).reshape(-1)]
    if len(pads) != 2 * len(axes):
        return None
    begins, ends = [0] * rank, [0] * rank
    for a, b, e in zip(axes, pads[:len(axes)], pads[len(axes):]):
        begins[a], ends[a] = b, e
    if begins[:2] != [0, 0] or ends[:2] != [0, 0] or min(begins + ends) < 0:
        return None
    return begins[2:], ends[2:]


def _spec(graph: Graph, nodes: list[Node], entry: str, exit_: str) -> ConvSpec | str:
    """``nodes`` (a Conv reading ``entry``, optionally then a BatchNormalization, ending in ``exit_``) as a ConvSpec.
    A constant Pad of the spatial dims before the Conv is taken in as more zero padding (its value, a constant,
    does not change the map's linear part)."""
    from lipcheck.bound.methods.linear import linear_reason
    from lipcheck.rules.linear import _conv_geometry, batchnorm_scale
    from lipcheck.rules.registry import NoGlobalConstant, RuleContext

    extra: tuple[list[int], list[int]] | None = None
    if nodes and nodes[0].op_type == "Pad" and len(nodes) > 1:
        extra = _spatial_pads(nodes[0], graph)
        if (extra is None or nodes[0].inputs[0] != entry or nodes[1].inputs[0] != nodes[0].outputs[0]
                or linear_reason(nodes[0], graph)):
            return "a Pad before the conv that is not a constant padding of the spatial dims"
        entry, nodes = nodes[0].outputs[0], nodes[1:]
    if not nodes or nodes[0].op_type != "Conv" or len(nodes) > 2 or (
            len(nodes) == 2 and nodes[1].op_type != "BatchNormalization"):
        return "a branch is not one Conv (+ BatchNormalization)"
    conv = nodes[0]
    if conv.inputs[0] != entry or nodes[-1].outputs[0] != exit_ or any(linear_reason(n, graph) for n in nodes):
        return "a branch is not one Conv (+ BatchNormalization)"
    if len(nodes) == 2 and nodes[1].inputs[0] != conv.outputs[0]:
        return "a branch is not one Conv (+ BatchNormalization)"
    ctx = RuleContext(graph)
    try:
        w, geom, _ = _conv_geometry(conv, ctx, transpose=False)
        scale = batchnorm_scale(nodes[1], ctx) if len(nodes) == 2 else None
    except NoGlobalConstant as exc:
        return str(exc)
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)) or w.ndim < 3:
        return "a conv weight is not finite"
    groups = int(geom.groups)
    c_out, c_in_g = int(w.shape[0]), int(w.shape[1])
    full = np.zeros((c_out, c_in_g * groups, *w.shape[2:]))
    per = c_out // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = w[g * per:(g + 1) * per]
    rel = 8.0 * EPS64  # a weight folded from a BatchNormalization before it came here (canonicalize) is this close
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if scale.shape[0] not in (1, c_out) or not np.all(np.isfinite(scale)):
            return "a BatchNormalization scale does not fit its conv"
        full = full * scale.reshape(-1, *([1] * (full.ndim - 1)))
        rel += 8.0 * EPS64  # γ/√(var + eps): a sum, a square root, a division; then one product
    out_spatial = tuple(int(v) for v in graph.shape(conv.outputs[0])[2:])
    pads_begin, n_in = tuple(geom.pads_begin), tuple(geom.input_spatial)
    if extra is not None:
        begins, ends = extra
        if len(begins) != len(n_in):
            return "a Pad before the conv that is not a constant padding of the spatial dims"
        pads_begin = tuple(p + b for p, b in zip(pads_begin, begins))
        n_in = tuple(n - b - e for n, b, e in zip(n_in, begins, ends))
    return ConvSpec(full, rel, tuple(geom.strides), tuple(geom.dilations), pads_begin, n_in, out_spatial)


def _symbols(spec: ConvSpec, phases_in: tuple[int, ...], grid: tuple[int, ...], freqs: np.ndarray,
             absolute: bool = False) -> np.ndarray:
    """K̂(ω) for the frequencies ``freqs`` (F, d) on the coarse ``grid``, the input split into ``phases_in`` phases
    per dim and the output into phases_in / strides: (F, c_out·Π P_out, c_in·Π P_in) complex128, rows (channel,
    phase) and columns likewise. ``absolute``: instead, Σ_taps |w| at the same positions (F = 1, float64), which
    bounds |K̂(ω)| entrywise at every ω.

    Output phase o_r and tap j read input position (o_c·P_out + o_r)·s + j·dil − pad = (o_c + Q)·P_in + R on the
    fine grid: the tap adds w_j·e^{2πi ω·Q/M} to the block (o_r, R)."""
    d = len(grid)
    p_out = tuple(p // s for p, s in zip(phases_in, spec.strides))
    n_po, n_pi = math.prod(p_out), math.prod(phases_in)
    c_out, c_in = spec.c_out, spec.c_in
    n_f = 1 if absolute else freqs.shape[0]
    out = np.zeros((n_f, c_out, n_po, c_in, n_pi), dtype=np.float64 if absolute else np.complex128)
    taps = list(itertools.product(*(range(k) for k in spec.weight.shape[2:])))
    w_taps = np.stack([spec.weight[(slice(None), slice(None), *tap)] for tap in taps])  # (T, c_out, c_in)
    for o_r in itertools.product(*(range(p) for p in p_out)):
        groups: dict[int, list[tuple[int, list[int]]]] = {}
        for j, tap in enumerate(taps):
            total = [o_r[i] * spec.strides[i] + tap[i] * spec.dilations[i] - spec.pads_begin[i] for i in range(d)]
            q = [t // p for t, p in zip(total, phases_in)]
            r = int(np.ravel_multi_index([t % p for t, p in zip(total, phases_in)], phases_in))
            groups.setdefault(r, []).append((j, q))
        o = int(np.ravel_multi_index(o_r, p_out))
        for r, members in groups.items():
            idx = [j for j, _ in members]
            w = w_taps[idx].reshape(len(idx), -1)
            if absolute:
                out[0, :, o, :, r] = np.abs(w).sum(axis=0).reshape(c_out, c_in)
                continue
            frac = np.zeros((n_f, len(idx)))
            qs = np.array([q for _, q in members], dtype=np.int64).reshape(len(idx), d)
            for i, m in enumerate(grid):  # exact integer reduction mod M before the division: accurate phases
                frac += ((freqs[:, i, None] * qs[None, :, i]) % m) / m
            phase = np.exp(2j * np.pi * frac)  # (F, taps)
            out[:, :, o, :, r] = (phase @ w).reshape(n_f, c_out, c_in)
    return out.reshape(n_f, c_out * n_po, c_in * n_pi)


def half_frequencies(grid: tuple[int, ...]) -> np.ndarray:
    """Half of the grid's frequencies (real weights: P(−ω) = conj P(ω)), as (F, d) integer rows."""
    shape = (*grid[:-1], grid[-1] // 2 + 1)
    return np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), axis=1)


@dataclass
class _Block:
    shortcut: ConvSpec | None  # None: the identity
    first: ConvSpec
    second: ConvSpec
    interval: tuple[float, float]
    grid: tuple[int, ...]  # the coarse (output) torus
    phases_x: tuple[int, ...]
    phases_h: tuple[int, ...]
    _kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    @property
    def nx(self) -> int:
        return self.first.c_in * math.prod(self.phases_x)

    @property
    def nu(self) -> int:
        return self.first.c_out * math.prod(self.phases_h)

    def frequencies(self) -> np.ndarray:
        return half_frequencies(self.grid)

    def symbol_bytes(self) -> int:
        ny = self.second.c_out
        return 16 * len(self.frequencies()) * (self.nu * self.nx + ny * self.nu + (0 if self.shortcut is None
                                                                                    else ny * self.nx))

    def operators(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """K̂₁, K̂₂ and Ŝ (None: the identity) at the frequencies numbered ``idx`` (rows of :meth:`frequencies`);
        all of them are made once and kept when they fit in CACHE_BYTES."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if self._kept is None and self.symbol_bytes() <= CACHE_BYTES:
            self._kept = self._make(np.arange(len(self.frequencies())))
        if self._kept is not None:
            k1, k2, s = self._kept
            i = torch.from_numpy(idx)
            return k1[i], k2[i], None if s is None else s[i]
        return self._make(idx)

    def _make(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        freqs = self.frequencies()[idx]
        k1 = torch.from_numpy(_symbols(self.first, self.phases_x, self.grid, freqs))
        k2 = torch.from_numpy(_symbols(self.second, self.phases_h, self.grid, freqs))
        s = None if self.shortcut is None else torch.from_numpy(_symbols(self.shortcut, self.phases_x, self.grid,
                                                                         freqs))
        return k1, k2, s


def _block(shortcut: ConvSpec | None, first: ConvSpec, second: ConvSpec,
           interval: tuple[float, float]) -> _Block | str:
    d = len(first.n_in)
    if len(second.n_in) != d or (shortcut is not None and len(shortcut.n_in) != d):
        return "the block's convs have different spatial ranks"
    if second.n_in != first.n_out or second.c_in != first.c_out:
        return "the branch's second conv does not read the first one's output"
    s_total = tuple(a * b for a, b in zip(first.strides, second.strides))
    if shortcut is None:
        if any(v != 1 for v in s_total) or second.n_out != first.n_in or second.c_out != first.c_in:
            return "an identity shortcut around a branch that changes the shape"
    elif (shortcut.n_in != first.n_in or shortcut.n_out != second.n_out or shortcut.c_in != first.c_in
          or shortcut.c_out != second.c_out or shortcut.strides != s_total):
        return "the shortcut and the branch do not map the same grids"
    need_x = [max(a, b) for a, b in zip(first.torus_needed(), (shortcut or first).torus_needed())]
    need_h = second.torus_needed()
    sizes = []
    for i in range(d):
        n = max(need_x[i], need_h[i] * first.strides[i])
        sizes.append(-(-n // s_total[i]) * s_total[i])
    grid = tuple(n // s for n, s in zip(sizes, s_total))
    alpha, beta = interval
    return _Block(shortcut, first, second, (min(alpha, 0.0), max(beta, 0.0)), grid, s_total, tuple(second.strides))


# ---------------------------------------------------------------------------------------------- the LMI


def _lanczos_top(apply, v0: torch.Tensor,  # type: ignore[no-untyped-def]
                 steps: int = 24) -> tuple[np.ndarray, torch.Tensor]:
    """λ_max estimates (from below: Ritz values) of a batch of Hermitian operators, and their Ritz vectors, by
    ``steps`` Lanczos steps with full reorthogonalization from ``v0`` (F, n, 1)."""
    f, n, _ = v0.shape
    k = max(1, min(steps, n))
    basis = torch.zeros((f, n, k), dtype=v0.dtype)
    real = torch.float32 if v0.dtype == torch.complex64 else torch.float64
    alpha = torch.zeros((f, k), dtype=real)
    beta = torch.zeros((f, k), dtype=real)
    q = v0 / torch.linalg.vector_norm(v0, dim=1, keepdim=True).clamp_min(1e-300)
    for j in range(k):
        basis[:, :, j:j + 1] = q
        w = apply(q)
        alpha[:, j] = (q.mH @ w).real.reshape(f)
        for _ in range(2):
            w = w - basis[:, :, :j + 1] @ (basis[:, :, :j + 1].mH @ w)
        b = torch.linalg.vector_norm(w, dim=1).reshape(f)
        if j + 1 < k:
            beta[:, j] = b
            q = torch.where(b[:, None, None] > 0, w / b.clamp_min(1e-300)[:, None, None], torch.zeros_like(w))
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :k - 1], offset=-1) + torch.diag_embed(
        beta[:, :k - 1], offset=1)
    vals, vecs = torch.linalg.eigh(tri.to(torch.float64))
    ritz = basis @ vecs[:, :, -1:].to(v0.dtype)
    return vals[:, -1].numpy().copy(), ritz


class _Schur:
    """M(ω, t) = SᴴS − a·t·K₁ᴴK₁ + B(tI − K₂ᴴK₂)⁻¹Bᴴ, B = m·t·K₁ᴴ + SᴴK₂, at a fixed set of frequencies, for any t:
    K₂ᴴK₂ = VΛVᴴ is decomposed once; each t then costs a few Lanczos steps (:meth:`estimate`) or one dense
    eigensolver (:meth:`top`) per frequency."""

    def __init__(self, k1: torch.Tensor, k2: torch.Tensor, s: torch.Tensor | None, a: float, m: float):
        self.lam, vec = torch.linalg.eigh(k2.mH @ k2)
        self.x1 = m * (k1.mH @ vec)
        self.x2 = (k2 @ vec) if s is None else s.mH @ (k2 @ vec)
        self.s, self.k1, self.a = s, k1, a
        # the estimates (which only steer the search) run in single precision: half the memory traffic
        self._single_s = None if s is None else s.to(torch.complex64)
        self.start: torch.Tensor | None = None

    def _infeasible(self, t: float) -> np.ndarray:
        return (self.lam[:, -1] >= t).numpy()

    def matrix(self, t: float) -> torch.Tensor:
        b = t * self.x1 + self.x2
        mat = (b * (1.0 / (t - self.lam))[:, None, :]) @ b.mH
        if self.s is None:
            mat.diagonal(dim1=-2, dim2=-1).add_(1.0)
        else:
            mat += self.s.mH @ self.s
        if self.a != 0.0:
            mat -= (self.a * t) * (self.k1.mH @ self.k1)
        return 0.5 * (mat + mat.mH)

    def top(self, t: float) -> np.ndarray:
        """λ_max(M(ω, t)) per frequency, dense (+inf where tI − K₂ᴴK₂ is not positive definite)."""
        top = torch.linalg.eigvalsh(self.matrix(t))[:, -1].numpy().copy()
        top[self._infeasible(t)] = np.inf
        return top

    def estimate(self, t: float) -> np.ndarray:
        """λ_max(M(ω, t)) per frequency, approximately (single precision Lanczos warm-started at the last call's
        Ritz vectors): it steers the search only; every value that is certified is recomputed densely."""
        s = self._single_s
        # B = t·X₁ + X₂ and (t − Λ)⁻¹ formed in double precision, then brought to single precision's range by a
        # power of two (t can be far outside it); the a-term likewise as ±(√(|a|t)K₁)ᴴ(√(|a|t)K₁)
        b64 = t * self.x1 + self.x2
        peak = float(b64.abs().max()) if b64.numel() else 0.0
        scale = 2.0 ** -math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else 1.0
        b = (b64 * scale).to(torch.complex64)
        inv = ((1.0 / (t - self.lam)) / (scale * scale)).to(torch.float32)[:, :, None]
        a = self.a
        k1 = (self.k1 * math.sqrt(abs(a) * t)).to(torch.complex64) if a != 0.0 else None
        sign = 1.0 if a > 0 else -1.0

        def apply(v: torch.Tensor) -> torch.Tensor:
            out = b @ (inv * (b.mH @ v))
            out = out + (v if s is None else s.mH @ (s @ v))
            if k1 is not None:
                out = out - sign * (k1.mH @ (k1 @ v))
            return out

        steps = 12
        if self.start is None:
            gen = torch.Generator().manual_seed(0)
            self.start = torch.randn(self.x1.shape[0], self.x1.shape[1], 1, generator=gen).to(torch.complex64)
            steps = 24
        top, self.start = _lanczos_top(apply, self.start, steps=steps)
        top[self._infeasible(t)] = np.inf
        return top


def _u_scale(t: float) -> float:
    """The power of two nearest 1/√t: the congruence diag(I, sI) that brings P's Δu block (t·I − K₂ᴴK₂) to the
    scale of its Δx block before the Cholesky test (exact in floating point, and P ⪰ 0 iff its congruent is)."""
    if not (t > 0 and math.isfinite(t)):
        return 1.0
    return 2.0 ** -round(0.5 * math.log2(t))


def _abs_rows(blk: _Block, rho: float, t: float, a: float, m: float, g: float) -> float:
    """A bound on ‖P_computed(ω) − P(ω)‖₂ valid at every ω: g times the largest row sum of |P|abs, the matrix of the
    same products in absolute values, from the frequency-free entrywise bounds Σ|w| of the symbols (each inflated
    by its weights' folding error)."""
    none = np.zeros((1, 0))
    a1 = _symbols(blk.first, blk.phases_x, blk.grid, none, absolute=True)[0] * (1.0 + blk.first.rel_error)
    a2 = _symbols(blk.second, blk.phases_h, blk.grid, none, absolute=True)[0] * (1.0 + blk.second.rel_error)
    one_x, one_u = np.ones(a1.shape[1]), np.ones(a1.shape[0])
    if blk.shortcut is None:
        s_s, s_2, two_s = one_x, a2 @ one_u, a2.T @ np.ones(a2.shape[0])
    else:
        as_ = _symbols(blk.shortcut, blk.phases_x, blk.grid, none, absolute=True)[0] * (1.0 + blk.shortcut.rel_error)
        s_s = as_.T @ (as_ @ one_x)
        s_2 = as_.T @ (a2 @ one_u)
        two_s = a2.T @ (as_ @ one_x)
    u = _u_scale(t)  # the rows and columns of the Δu block are scaled by u (see _failures)
    top = abs(rho) + abs(a) * t * (a1.T @ (a1 @ one_x)) + s_s + u * (abs(m) * t * (a1.T @ one_u) + s_2)
    bottom = u * u * (t + a2.T @ (a2 @ one_u)) + u * (abs(m) * t * (a1 @ one_x) + two_s)
    return g * float(max(top.max(), bottom.max()))


def _failures(blk: _Block, rho: float, t: float, a: float, m: float) -> np.ndarray | None:
    """Indices (into :meth:`_Block.frequencies`) of the frequencies whose P(ω) − δI fails its Cholesky test (δ: every
    rounding, module docstring); None when the bound on the rounding is not finite."""
    nx, nu = blk.nx, blk.nu
    n = nx + nu
    taps = max(int(math.prod(c.weight.shape[2:])) for c in (blk.first, blk.second, blk.shortcut) if c is not None)
    inner = max(nx, nu, blk.second.c_out) + 2 * taps + 16
    g = rounding_margin(inner) - 1.0
    e_form = _abs_rows(blk, rho, t, a, m, g)
    freqs = blk.frequencies()
    chunk = max(1, CHUNK_ENTRIES // (n * n))
    failed: list[np.ndarray] = []
    for start in range(0, len(freqs), chunk):
        part = np.arange(start, min(len(freqs), start + chunk))
        k1, k2, s = blk.operators(part)
        p = torch.empty((len(part), n, n), dtype=torch.complex128)
        top = (a * t) * (k1.mH @ k1) if a != 0.0 else torch.zeros((len(part), nx, nx), dtype=torch.complex128)
        if s is None:
            top.diagonal(dim1=-2, dim2=-1).add_(rho - 1.0)
            cross = -(m * t) * k1 - k2.mH
        else:
            top = top - s.mH @ s
            top.diagonal(dim1=-2, dim2=-1).add_(rho)
            cross = -(m * t) * k1 - k2.mH @ s
        bottom = -(k2.mH @ k2)
        bottom.diagonal(dim1=-2, dim2=-1).add_(t)
        p[:, :nx, :nx] = top
        p[:, nx:, :nx] = cross
        p[:, :nx, nx:] = cross.mH
        p[:, nx:, nx:] = bottom
        u = _u_scale(t)  # diag(I, uI)·P·diag(I, uI): a power of two, so the scaled matrix is the exact congruent
        p[:, nx:, :] *= u
        p[:, :, nx:] *= u
        bad = cholesky_fails(p, e_form)
        if bad is None:
            return None
        failed.append(start + bad)
    return np.concatenate(failed) if failed else np.empty(0, dtype=np.int64)


def cholesky_fails(p: torch.Tensor, e_form: float) -> np.ndarray | None:
    """Which Hermitian matrices of the stack ``p`` (overwritten) are NOT proven ⪰ 0: those whose float64 Cholesky
    factorization of P − δI fails, δ = 2·(e_form + γ·Σ|P_ii| + ε·max|P_ii|), where ``e_form`` bounds the spectral
    norm of P's own rounding error and γ covers the factorization's backward error (Higham, Thm 10.3, with room for
    complex arithmetic). None when a diagonal or ``e_form`` is not finite."""
    n = int(p.shape[-1])
    gamma = rounding_margin(4 * (n + 1)) - 1.0
    diag_abs = p.diagonal(dim1=-2, dim2=-1).real.abs()
    if not bool(torch.isfinite(diag_abs).all()) or not math.isfinite(e_form):
        return None
    delta = 2.0 * (e_form + gamma * diag_abs.sum(dim=-1) + EPS64 * diag_abs.amax(dim=-1))
    p.diagonal(dim1=-2, dim2=-1).sub_(delta[:, None].to(p.dtype))
    _, info = torch.linalg.cholesky_ex(p)
    return np.nonzero(info.numpy() != 0)[0]


def _scores(blk: _Block, freqs: np.ndarray, m: float, chunk: int) -> tuple[np.ndarray, float]:
    """(an estimate of ‖S + m·K₂K₁‖ per frequency: where the search looks first; ‖K₂‖² over every frequency)."""
    gen = torch.Generator().manual_seed(0)
    scores = np.empty(len(freqs))
    top2 = 0.0
    for start in range(0, len(freqs), chunk):
        k1, k2, s = blk.operators(np.arange(start, min(len(freqs), start + chunk)))
        top2 = max(top2, float(torch.linalg.eigvalsh(k2.mH @ k2)[:, -1].max()))
        v = torch.randn(k1.shape[0], k1.shape[2], 1, generator=gen, dtype=torch.float64).to(torch.complex128)
        gain = torch.zeros(k1.shape[0], dtype=torch.float64)
        for _ in range(8):
            v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-300)
            y = m * (k2 @ (k1 @ v)) + (v if s is None else s @ v)
            gain = torch.linalg.vector_norm(y, dim=(1, 2))
            v = m * (k1.mH @ (k2.mH @ y)) + (y if s is None else s.mH @ y)
        scores[start:start + chunk] = gain.numpy()
    return scores, max(top2, 1e-300)


def certify_block(blk: _Block, deadline: float | None = None,
                  max_work: float = MAX_WORK) -> tuple[float, dict] | str:
    """(√ρ of a certified P(ρ, tI) ⪰ 0 for the block, details) or why there is none. ``max_work``: the largest
    Σ over frequencies of order³ (the cost of one check) to take on."""
    from scipy.optimize import minimize_scalar

    alpha, beta = blk.interval
    a, m = alpha * beta, 0.5 * (alpha + beta)
    freqs = blk.frequencies()
    n = blk.nx + blk.nu
    work = len(freqs) * float(n) ** 3
    if work > max_work:
        return f"residual-fft: {len(freqs)} frequencies of order {n}, work {work:.1e} over the limit {max_work:.0e}"
    chunk = max(1, CHUNK_ENTRIES // (n * n))
    scores, top2 = _scores(blk, freqs, m, chunk)
    chosen = [int(f) for f in np.argsort(scores)[::-1][:CANDIDATES]]
    schurs: list[_Schur] = []
    done = 0
    t = math.inf
    values = np.full(len(freqs), np.inf)
    passes: list[_Schur] = []  # the search's factors of every frequency, kept between rounds when they fit
    keep_passes = 2 * blk.symbol_bytes() <= CACHE_BYTES
    for round_ in range(ROUNDS):
        if done < len(chosen):
            schurs.append(_Schur(*blk.operators(np.array(chosen[done:])), a, m))
            done = len(chosen)

        def objective(log_gap: float) -> float:
            t = top2 * (1.0 + math.exp(log_gap))
            value = float(max(np.max(sch.estimate(t)) for sch in schurs))
            return math.log(value) if value > 0 and math.isfinite(value) else 1e300

        found = minimize_scalar(objective, bounds=(-14.0, 10.0), method="bounded", options={"xatol": 0.05})
        t = top2 * (1.0 + math.exp(float(found.x)))
        if round_ == ROUNDS - 1 or (deadline is not None and time.perf_counter() > deadline):
            break
        # every frequency at this t: those above the chosen ones' maximum join the search
        for i, start in enumerate(range(0, len(freqs), chunk)):
            if i >= len(passes):
                sch = _Schur(*blk.operators(np.arange(start, min(len(freqs), start + chunk))), a, m)
                if keep_passes:
                    passes.append(sch)
            else:
                sch = passes[i]
            values[start:start + chunk] = sch.estimate(t)
        level = float(np.max(values[chosen]))
        new = [int(f) for f in np.argsort(values)[::-1] if values[f] > level * (1.0 - 1e-3) and int(f) not in chosen]
        if not new:
            break
        chosen.extend(new[:CANDIDATES])
    # ρ: the dense λ_max at t of the frequencies searched and of those whose last estimates were highest
    top = np.unique(np.concatenate([np.array(chosen, dtype=np.int64),
                                    np.argsort(values)[::-1][:2 * CANDIDATES]]))
    rho = max(float(np.max(_Schur(*blk.operators(top[i:i + chunk]), a, m).top(t))) for i in range(0, len(top), chunk))
    if not (math.isfinite(rho) and rho > 0):
        return "residual-fft: the multiplier search found no finite value"
    for margin in MARGINS:
        rho_c = rho * (1.0 + margin)
        failed = _failures(blk, rho_c, t, a, m)
        if failed is None:
            return "residual-fft: the rounding bound is not finite"
        if failed.size == 0:
            return math.nextafter(math.sqrt(rho_c), math.inf), {"t": t, "frequencies": len(freqs), "order": n}
        # a frequency whose estimate was too low: its dense value raises ρ
        exact = np.concatenate([_Schur(*blk.operators(failed[i:i + chunk]), a, m).top(t)
                                for i in range(0, len(failed), chunk)])
        rho = max(rho, float(np.max(exact)))
        if not math.isfinite(rho) or (deadline is not None and time.perf_counter() > deadline):
            break
    return "residual-fft: the LMI could not be certified"


def residual_fft_bound(graph: Graph, piece: Piece, limits: Limits, deadline: float | None = None) -> float | str:
    """A certified upper bound on the residual block ``piece``'s Lipschitz constant, or why there is none."""
    from lipcheck.bound.methods.blocks import _activation_interval
    from lipcheck.bound.methods.residual import split_block

    found = split_block(graph, piece)
    if isinstance(found, str):
        return found
    shortcut_nodes, first_nodes, act, second_nodes, s_out, b_out = found
    x = piece.entry
    specs: list[ConvSpec | None] = []
    for nodes, entry, exit_ in ((shortcut_nodes, x, s_out), (first_nodes, x, act.inputs[0]),
                                (second_nodes, act.outputs[0], b_out)):
        if not nodes and entry == exit_:
            specs.append(None)
            continue
        spec = _spec(graph, list(nodes), entry, exit_)
        if isinstance(spec, str):
            return spec
        specs.append(spec)
    shortcut, first, second = specs
    if first is None or second is None:
        return "a branch is empty"
    interval = _activation_interval(act, graph)
    if interval is None:
        return "the activation has no slope interval"
    blk = _block(shortcut, first, second, interval)
    if isinstance(blk, str):
        return blk
    try:
        result = certify_block(blk, deadline, limits.fft_max_work)
    except (ArithmeticError, ValueError, RuntimeError) as exc:  # an eigensolver that did not converge, say
        return f"residual-fft: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return result if isinstance(result, str) else result[0]
