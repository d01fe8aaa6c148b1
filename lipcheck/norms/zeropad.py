"""A certified σ for the zero-padded convolution itself, not its circular embedding.

The circular embedding's σ (:func:`lipcheck.norms.conv._circular_bound`) bounds the zero-padded conv from above with
a gap of its own: median 0.24 %, up to 2 % on ResNet-50's 7×7 stage, larger as the spatial size shrinks. No
comparison with a block-diagonalizable operator closes it: the circular Gram has more eigenvalues above the
zero-padded top than the zero-padded operator has near it (measured: 138–205 of them on a 512-channel 7×7 layer), so
interlacing and Lehmann / Temple bounds with a circular ρ never apply. What does close it is a factorization:

    λ_max(M) <= μ  ⟸  μI − M = R̂ᵀR̂ − ΔF, R̂ a completed floating-point Cholesky factor, ‖ΔF‖ bounded,

with M the Gram of the cheaper side (AᵀA on the input, AAᵀ on the output) and μ just above σ exact² (Lanczos).
M is banded in block rows: take the blocks along one spatial axis (a block holds every position of the remaining
axes and every channel, B values, or a few consecutive positions of the block axis when B is small: super-rows);
a 3×3 kernel couples block rows at most 2 apart. So a block-banded Cholesky costs about n₀·B³·(R² + 2R + 1/3)
flops (R the block reach) and never holds more than (R+1)(R+2)/2 blocks at once, where the dense factorization
would cost (n₀B)³/3 and hold all of M.

Rounding, every term an upper bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.):

- M's blocks are built from the tap Grams G[t, t'] = W_tᵀW_t' (input side) or W_t W_t'ᵀ (output side), each entry a
  sum of at most C·k^d products: |M̂ − M| <= γ_q·|A|ᵀ|A| entrywise (q = that count + slack), so
  ‖M̂ − M‖₂ <= γ_q·‖|A|‖₁·‖|A|‖_∞ (‖|A|ᵀ|A|‖₂ <= ‖|A|‖₂² <= ‖|A|‖₁‖|A|‖_∞).
- F̂ = fl(μI − M̂) rounds the diagonal only: |F̂_ii − (μ − M̂_ii)| <= u·|F̂_ii|.
- A completed Cholesky (any order of the inner products, as blocked LAPACK / BLAS do it, conventional
  multiplication) gives R̂ᵀR̂ = F̂ + ΔF with |ΔF| <= γ_{w+1}|R̂ᵀ||R̂| (Thm 10.3; w the band width in scalars), so
  ‖ΔF‖₂ <= γ_{w+1}‖R̂‖_F², and ‖R̂‖_F² is summed from the computed blocks.

Hence λ_max(M) <= μ + ‖M̂ − M‖ + u·max|F̂_ii| + ‖ΔF‖, every γ_n taken as rounding_margin(n) − 1 (50·n·u).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.norms.margin import EPS64, rounding_margin

_UNIT = EPS64 / 2.0
TIGHT_TOL = 1e-6  # μ = λ̂·(1 + this) on the first try: the certificate ends ~1e-6 above the exact value
_RETRY_TOLS = (TIGHT_TOL, 1e-4, 1e-3)  # a failed factorization (λ̂ below the top, e.g. a misconverged Lanczos) retries


@dataclass(frozen=True)
class BandedGram:
    """The Gram of one side of one group's conv, in block rows along the first spatial axis.

    ``pairs[i]`` (size_i, 2·reach_i + 1, k_i, k_i) 0/1, banded: whether positions a and a + δ of axis i are
    coupled through taps (t, t') (input side: one output reads input a with tap t and input a + δ with tap t';
    output side: outputs a and a + δ read one input with taps t and t'). ``taps`` (k..., k..., c, c): the tap
    Grams G[t, t']. The entry of M between (a, x, c) and (b, y, c') (a, b on axis 0, x, y on the others) is
    Σ_{t, t'} ⊗_i pairs_i[·, ·, t_i, t'_i] · G[t, t'][c, c'].

    The factorization works on super-rows of ``group`` consecutive positions of axis 0 (the last one shorter), so
    that a thin block (one channel, a long 1-D kernel) does not cost one Python step per position: super-rows
    are coupled only when at most ``reach`` = ⌈reach_0 / group⌉ apart.
    """

    pairs: tuple[np.ndarray, ...]
    taps: torch.Tensor
    axis_reach: int  # positions a and b of axis 0 are coupled only when |a − b| <= axis_reach
    channels: int
    group: int = 1
    inner: tuple[torch.Tensor, ...] = ()  # the tables of axes 1.. as dense (size, size, k, k) float64

    def __post_init__(self) -> None:
        if not self.inner:
            inner = tuple(torch.from_numpy(_dense_pairs(p).astype(np.float64)) for p in self.pairs[1:])
            object.__setattr__(self, "inner", inner)

    @property
    def positions(self) -> int:
        return int(self.pairs[0].shape[0])

    @property
    def rows(self) -> int:
        return -(-self.positions // self.group)

    @property
    def reach(self) -> int:
        return -(-self.axis_reach // self.group)

    @property
    def width(self) -> int:
        """Values per position of axis 0 (the other axes' positions times the channels)."""
        return self.channels * math.prod(int(p.shape[0]) for p in self.pairs[1:])

    def span(self, row: int) -> range:
        return range(row * self.group, min(self.positions, (row + 1) * self.group))

    def block_at(self, a: int, b: int) -> torch.Tensor:
        """The block of M coupling super-rows a and b, laid out as (axis-0 position, other positions, channel)."""
        ra, rb = self.span(a), self.span(b)
        band = self.pairs[0]
        reach0 = (band.shape[1] - 1) // 2
        table0 = np.zeros((len(ra), len(rb), *band.shape[2:]))
        ia, ib = np.meshgrid(np.arange(len(ra)), np.arange(len(rb)), indexing="ij")
        delta = (ib + rb.start) - (ia + ra.start)
        near = np.abs(delta) <= reach0
        table0[ia[near], ib[near]] = band[ia[near] + ra.start, delta[near] + reach0]
        d = len(self.pairs)
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        name: dict[str, str] = {}

        def lab(key: str) -> str:
            if key not in name:
                name[key] = next(letters)
            return name[key]

        labels = [f"t{i}" for i in range(d)] + [f"T{i}" for i in range(d)] + ["c", "C"]
        h = self.taps
        for i in range(d):
            table = torch.from_numpy(table0) if i == 0 else self.inner[i - 1]
            p_labels = [f"x{i}", f"y{i}", f"t{i}", f"T{i}"]
            result = [x for x in labels if x not in (f"t{i}", f"T{i}")] + p_labels[:2]
            spec = "".join(map(lab, p_labels)) + "," + "".join(map(lab, labels)) + "->" + "".join(map(lab, result))
            h = torch.einsum(spec, table, h)
            labels = result
        order = [f"x{i}" for i in range(d)] + ["c"] + [f"y{i}" for i in range(d)] + ["C"]
        h = h.permute(*[labels.index(x) for x in order])
        return h.reshape(len(ra) * self.width, len(rb) * self.width)


def _axis_reach(n: int, out: int, k: int, s: int, dil: int, side: str) -> int:
    """An upper bound on how far apart two coupled positions of one axis are (exact for the usual geometries)."""
    if side == "input":
        return min((k - 1) * dil, n - 1)
    return min((k - 1) * dil // s, out - 1)


def _axis_pairs(n: int, out: int, k: int, s: int, dil: int, pb: int, side: str) -> tuple[np.ndarray, int]:
    """The banded coupling table of one spatial axis (see :class:`BandedGram`) and its exact reach."""
    reach = _axis_reach(n, out, k, s, dil, side)
    size = n if side == "input" else out
    band = np.zeros((size, 2 * reach + 1, k, k), dtype=bool)
    o = np.arange(out)[:, None]
    t = np.arange(k)[None, :]
    p = o * s + t * dil - pb  # (out, k): the input each (output, tap) reads
    valid = (p >= 0) & (p < n)
    if side == "input":  # inputs p and p' read by one output o with taps t, t'
        for t0 in range(k):
            for t1 in range(k):
                ok = valid[:, t0] & valid[:, t1]
                a, delta = p[ok, t0], p[ok, t1] - p[ok, t0]
                band[a, delta + reach, t0, t1] = True
    else:  # outputs o and o' that read one input p with taps t, t'
        for t0 in range(k):
            for t1 in range(k):
                # o·s + t0·dil = o'·s + t1·dil  ⇒  o' = o + (t0 − t1)·dil / s
                num = (t0 - t1) * dil
                if num % s:
                    continue
                oo = o[:, 0] + num // s
                ok = valid[:, t0] & (oo >= 0) & (oo < out)
                a = o[ok, 0]
                band[a, oo[ok] - a + reach, t0, t1] = True
    used = np.flatnonzero(band.any(axis=(0, 2, 3))) - reach
    exact = int(np.max(np.abs(used), initial=0))
    return np.ascontiguousarray(band[:, reach - exact:reach + exact + 1]), exact


def _dense_pairs(band: np.ndarray) -> np.ndarray:
    """The (size, size, k, k) table of a banded one (for the axes inside a block, whose sizes are small)."""
    size, width = band.shape[:2]
    reach = (width - 1) // 2
    dense = np.zeros((size, size, *band.shape[2:]), dtype=bool)
    for j in range(width):
        a = np.arange(max(0, reach - j), min(size, size + reach - j))
        dense[a, a + j - reach] = band[a, j]
    return dense


def _tap_grams(w: np.ndarray, side: str) -> torch.Tensor:
    """G[t, t'] = W_tᵀW_t' (input side, c_in×c_in) or W_t W_t'ᵀ (output side, c_out×c_out), as
    (k..., k..., c, c) float64, W_t = w[:, :, t] the (c_out, c_in) matrix of tap t."""
    kernel = tuple(int(k) for k in w.shape[2:])
    taps = math.prod(kernel)
    wt = torch.from_numpy(np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1], taps))).permute(2, 0, 1)
    if side == "input":
        g = torch.einsum("toc,uoe->tuce", wt, wt)
    else:
        g = torch.einsum("toc,uec->tuoe", wt, wt)
    c = g.shape[-1]
    return g.reshape(*kernel, *kernel, c, c)


_STEP_FLOPS = 2e6  # the cost of one block operation's Python and dispatch overhead, in flops (~20 µs)


def _cost(positions: int, width: int, reach0: int, groups: int, table_work: float) -> tuple[float, int]:
    """(estimated flop-equivalents, super-row size) of the banded factorization at its best super-row size;
    ``table_work``: multiply-adds of :meth:`BandedGram.block_at` per pair of axis-0 positions (k₀² times the
    rest of the taps' and positions' contraction)."""
    best: tuple[float, int] | None = None
    sizes = {1, max(1, reach0), max(1, reach0 // 2), positions}
    g = 1
    while g < positions:
        sizes.add(g)
        g *= 2
    for g in sorted(sizes):
        rows, reach = -(-positions // g), -(-reach0 // g)
        block = float(g * width)
        flops = rows * block**3 * (reach * reach + 2 * reach + 1.0 / 3.0)
        steps = rows * ((reach + 1) * (reach + 2) / 2 + 2 * reach + 2)
        assemble = rows * (reach + 1) * float(g * g) * table_work
        cost = groups * (flops + _STEP_FLOPS * steps + assemble)
        if best is None or cost < best[0]:
            best = (cost, g)
    assert best is not None
    return best


_MAX_TABLE = 20_000_000  # coupling-table entries (positions × band × k²) above which the plan is not built


def _table_work(kernel: tuple[int, ...], sizes: tuple[int, ...], order: tuple[int, ...], channels: int) -> float:
    """Multiply-adds of assembling one pair of axis-0 positions' block: the taps contracted axis by axis."""
    k0 = float(kernel[order[0]]) ** 2
    rest_taps = math.prod(float(kernel[i]) ** 2 for i in order[1:])
    rest_positions = math.prod(float(sizes[i]) ** 2 for i in order[1:])
    return k0 * rest_taps * channels * channels + rest_positions * rest_taps * channels * channels


@dataclass(frozen=True)
class ZeroPadPlan:
    """How :func:`zero_padded_sigma` would factor a conv: the side, the block axis first, the super-row size, and
    its cost."""

    side: str  # "input" (AᵀA) or "output" (AAᵀ)
    order: tuple[int, ...]  # spatial axes, the block-row axis first
    tables: tuple[tuple[np.ndarray, int], ...]  # per axis (in the model's order): banded coupling table and reach
    channels: int
    group: int  # positions of the block axis per super-row
    flops: float  # all groups, one try, in flop-equivalents (block overheads included)
    bytes: float  # the blocks held at once, the tap Grams and the temporaries


def plan_zero_pad(kernel: tuple[int, ...], n: tuple[int, ...], out: tuple[int, ...], strides: tuple[int, ...],
                  dilations: tuple[int, ...], pads_begin: tuple[int, ...], c_in_g: int, c_out_g: int,
                  groups: int) -> ZeroPadPlan:
    """The cheaper side, block axis and super-row size of the banded factorization (from shapes only)."""
    d = len(kernel)
    best: tuple[float, str, tuple[int, ...]] | None = None
    for side in ("input", "output"):
        sizes = n if side == "input" else out
        channels = c_in_g if side == "input" else c_out_g
        for first in range(d):
            order = (first, *(i for i in range(d) if i != first))
            reach = _axis_reach(n[first], out[first], kernel[first], strides[first], dilations[first], side)
            width = channels * math.prod(sizes[i] for i in order[1:])
            cost, _ = _cost(sizes[first], width, reach, groups, _table_work(kernel, sizes, order, channels))
            if best is None or cost < best[0]:
                best = (cost, side, order)
    assert best is not None
    cost, side, order = best
    sizes = n if side == "input" else out
    table_entries = sum(
        sizes[i] * (2 * _axis_reach(n[i], out[i], kernel[i], strides[i], dilations[i], side) + 1) * kernel[i] ** 2
        for i in range(d))
    if table_entries > _MAX_TABLE or not math.isfinite(cost):
        return ZeroPadPlan(side, order, (), 0, 1, math.inf, math.inf)  # never run (its tables alone are too large)
    tables = tuple(_axis_pairs(n[i], out[i], kernel[i], strides[i], dilations[i], pads_begin[i], side)
                   for i in range(d))
    channels = c_in_g if side == "input" else c_out_g
    reach0 = tables[order[0]][1]
    width = channels * math.prod(int(tables[i][0].shape[0]) for i in order[1:])
    cost, group = _cost(int(tables[order[0]][0].shape[0]), width, reach0, groups,
                        _table_work(kernel, sizes, order, channels))
    reach = -(-reach0 // group)
    block = float(group * width)
    held = (reach + 1) * (reach + 2) / 2 + reach + 3  # window, solved blocks, block_at's temporaries
    memory = 8.0 * (held * block**2 + math.prod(kernel) ** 2 * channels * channels)
    return ZeroPadPlan(side, order, tables, channels, group, cost, memory)


def banded_grams(weight: np.ndarray, n: tuple[int, ...], out: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...], pads_begin: tuple[int, ...], groups: int,
                 plan: ZeroPadPlan | None = None) -> list[BandedGram]:
    """One :class:`BandedGram` per group, on the side, block axis and super-rows of ``plan`` (default: the
    cheapest)."""
    c_out_g = weight.shape[0] // groups
    kernel = tuple(int(k) for k in weight.shape[2:])
    d = len(kernel)
    if plan is None:
        plan = plan_zero_pad(kernel, n, out, strides, dilations, pads_begin, int(weight.shape[1]), c_out_g, groups)
    order = list(plan.order)
    perm = order + [d + i for i in order] + [2 * d, 2 * d + 1]
    grams = []
    for g in range(groups):
        taps = _tap_grams(weight[g * c_out_g:(g + 1) * c_out_g], plan.side).permute(*perm).contiguous()
        grams.append(BandedGram(pairs=tuple(plan.tables[i][0] for i in order), taps=taps,
                                axis_reach=plan.tables[order[0]][1], channels=plan.channels, group=plan.group))
    return grams


def _abs_norm_product(w: np.ndarray) -> float:
    """An upper bound on ‖|A|‖₁·‖|A|‖_∞ for the conv of one group's weight (c_out, c_in, *k): a column of |A| (one
    input value) holds at most every |W[:, c, t]|, a row (one output value) at most every |W[o, :, t]|."""
    a = np.abs(w).reshape(w.shape[0], w.shape[1], -1)
    col = float(a.sum(axis=(0, 2)).max(initial=0.0))
    row = float(a.sum(axis=(1, 2)).max(initial=0.0))
    return col * row * (1.0 + 1e-10)


@dataclass(frozen=True)
class Factored:
    completed: bool
    bound: float  # certified λ_max(M) <= bound when completed (else inf)


def certify_banded(gram: BandedGram, mu: float, abs_product: float, terms: int) -> Factored:
    """Cholesky of fl(μI − M̂) in block rows; when it completes, a certified upper bound on λ_max(M) (module doc).
    ``abs_product`` bounds ‖|A|‖₁‖|A|‖_∞ and ``terms`` the products summed into one entry of M̂."""
    n0, reach = gram.rows, gram.reach
    blocks: dict[tuple[int, int], torch.Tensor] = {}
    max_diag = 0.0

    def add_row(j: int) -> None:
        nonlocal max_diag
        for col in range(max(0, j - reach), j + 1):
            blk = -gram.block_at(j, col)
            if col == j:
                blk.diagonal().add_(mu)
                max_diag = max(max_diag, float(blk.diagonal().abs().max()))
            blocks[(j, col)] = blk

    fro2 = 0.0
    with torch.no_grad():
        for j in range(min(n0, reach + 1)):
            add_row(j)
        for i in range(n0):
            factor, info = torch.linalg.cholesky_ex(blocks.pop((i, i)))
            if int(info) != 0 or not bool(torch.isfinite(factor).all()):
                return Factored(False, math.inf)
            fro2 += float(torch.sum(factor * factor))
            below = list(range(i + 1, min(n0, i + reach + 1)))
            solved = {}
            for j in below:
                solved[j] = torch.linalg.solve_triangular(factor.mT, blocks.pop((j, i)), upper=True, left=False)
                fro2 += float(torch.sum(solved[j] * solved[j]))
            for j in below:
                for col in below:
                    if col <= j:  # (BLAS dsyrk through scipy would halve the diagonal ones, but its OpenBLAS
                        # threads then spin against torch's: 4-6× slower on small blocks, measured)
                        blocks[(j, col)].addmm_(solved[j], solved[col].mT, alpha=-1.0)
            del solved, factor
            if i + reach + 1 < n0:
                add_row(i + reach + 1)
    if not math.isfinite(fro2):
        return Factored(False, math.inf)
    width = (reach + 1) * gram.group * gram.width + 1
    gamma_w = rounding_margin(width) - 1.0
    gamma_q = rounding_margin(terms) - 1.0
    factor_error = gamma_w * fro2 * (1.0 + 1e-6) / (1.0 - gamma_w)
    gram_error = gamma_q * abs_product
    bound = (mu + gram_error + 2.0 * _UNIT * max_diag + factor_error) * (1.0 + 4.0 * EPS64)
    return Factored(True, bound)


def zero_padded_sigma(weight: np.ndarray, n: tuple[int, ...], out: tuple[int, ...], strides: tuple[int, ...],
                      dilations: tuple[int, ...], pads_begin: tuple[int, ...], groups: int, sigma_hat: float, *,
                      max_flops: float) -> float | None:
    """A certified upper bound on σ_max of the zero-padded conv (kept outputs ``out``) from a banded Cholesky of
    μI − M per group, μ = σ̂²·(1 + tol) for tol in _RETRY_TOLS until one completes; None when one try would cost
    more than ``max_flops`` or none completes (σ̂ below the top by more than the last tol)."""
    c_out_g = weight.shape[0] // groups
    kernel = tuple(int(k) for k in weight.shape[2:])
    plan = plan_zero_pad(kernel, n, out, strides, dilations, pads_begin, int(weight.shape[1]), c_out_g, groups)
    if plan.flops > max_flops or not sigma_hat > 0.0 or not math.isfinite(sigma_hat):
        return None
    grams = banded_grams(weight, n, out, strides, dilations, pads_begin, groups, plan)
    taps = math.prod(kernel)
    terms = max(int(weight.shape[0]), int(weight.shape[1])) * taps + 2 * taps + 8
    lam = 0.0
    for g, gram in enumerate(grams):
        abs_product = _abs_norm_product(weight[g * c_out_g:(g + 1) * c_out_g])
        for tol in _RETRY_TOLS:
            res = certify_banded(gram, sigma_hat * sigma_hat * (1.0 + tol), abs_product, terms)
            if res.completed:
                lam = max(lam, res.bound)
                break
        else:
            return None
    return math.sqrt(lam) * (1.0 + 4.0 * EPS64)
