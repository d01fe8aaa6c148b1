"""``lipsdp-fft``: the LipSDP-Neuron certificate of a chain of convolutions and element-wise activations far too
large for a dense LMI, certified frequency by frequency (the chain form of :mod:`.fourier`).

A run x → W₁ → φ₁ → W₂ → … → φ_{k−1} → W_k of zero-padded convs W_i (one Conv each, BatchNormalization folded or
after it; W₁ or W_k the identity when the run starts or ends with an activation) and activations φ_i with slopes in
[α_i, β_i]. As in :mod:`.fourier`, on a torus large enough that no kept output of any conv reads across the wrap
(every conv's own input torus, the strides dividing it), the real chain is the circular one with every activation's
slope set to 0 outside its tensor's window, so L ≤ sup_D ‖K_k D_{k−1} ⋯ D₁ K₁‖ over diagonal D_i with entries in
[min(α_i, 0), max(β_i, 0)]. LipSDP-Neuron with one multiplier t_i per activation (T_i = t_i·I): if

    P = block-tridiagonal, P₀₀ = ρI + a₁t₁K₁ᴴK₁,  P_ii = t_i I + a_{i+1}t_{i+1}K_{i+1}ᴴK_{i+1} (0 < i < k−1),
        P_{k−1,k−1} = t_{k−1}I − K_kᴴK_k,  P_{i,i−1} = −m_i t_i K_i           (a_i = α_iβ_i, m_i = (α_i + β_i)/2)

is ⪰ 0 then L ≤ √ρ (Fazlyab et al. 2019). The DFT on the output grid (polyphase for strides) splits P into one
matrix per frequency; the multipliers are searched (a common scale, then each t_i in turn, by bounded searches on
log t; ρ(ω, t) by eliminating the blocks from the last one up) on the frequencies that matter, and every
frequency is then checked by a float64 Cholesky with the rounding bound of :mod:`.fourier` (|K̂(ω)| ≤ Σ|w|
entrywise at every ω).

A GlobalAveragePool → Flatten → Gemm head right after the last activation is W_k too: the activation's output is 0
outside its window, so the pool's sum over the window is the sum over the torus, û(0): the head is the symbol
√(M^d)/n·G at ω = 0 and 0 at every other frequency (:func:`_head_symbols`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lipcheck.bound.methods.fourier import (
    CANDIDATES,
    CHUNK_ENTRIES,
    MARGINS,
    MAX_WORK,
    ConvSpec,
    _spec,
    _symbols,
    cholesky_fails,
    half_frequencies,
)
from lipcheck.ir.graph import Graph
from lipcheck.norms.margin import EPS64, rounding_margin

if TYPE_CHECKING:
    from lipcheck.bound.methods.blocks import Piece

METHOD = "lipsdp-fft"


@dataclass(frozen=True)
class HeadSpec:
    """GlobalAveragePool → Flatten → Gemm after the chain's last activation: y = G·(1/n)·Σ_positions u."""

    g: np.ndarray  # (c_out, C) float64: α·B or α·Bᵀ
    rel_error: float
    positions: int  # n: the spatial size the pool averages over

    @property
    def c_out(self) -> int:
        return int(self.g.shape[0])

    @property
    def c_in(self) -> int:
        return int(self.g.shape[1])


def _head_symbols(head: HeadSpec, phases: tuple[int, ...], grid: tuple[int, ...], freqs: np.ndarray,
                  absolute: bool = False) -> np.ndarray:
    """The head as a symbol on the chain's grid: nonzero only at ω = 0, where it is √(M^d)/n · G·[I ⊗ 1ᵀ] (the
    output energy ‖y‖² = |G Σ u|²/n² written as (1/M^d)·|K̂(0)û(0)|², Parseval's weight of every other term)."""
    n_p = math.prod(phases)
    block = np.repeat(head.g, n_p, axis=1) * (math.sqrt(math.prod(grid)) / head.positions)  # columns (C, phase)
    if absolute:
        return np.abs(block)[None]
    out = np.zeros((freqs.shape[0], head.c_out, head.c_in * n_p), dtype=np.complex128)
    out[np.all(freqs == 0, axis=1)] = block
    return out


def _head(graph: Graph, piece: Piece) -> HeadSpec | str:
    """A linear piece GlobalAveragePool → Flatten → Gemm (B constant) as a :class:`HeadSpec`, or why not."""
    nodes = list(piece.nodes)
    if [n.op_type for n in nodes] != ["GlobalAveragePool", "Flatten", "Gemm"]:
        return "a piece that is neither one Conv nor a GlobalAveragePool → Flatten → Gemm head"
    pool, flat, gemm = nodes
    shape = graph.shape(piece.entry)
    if (pool.inputs[0] != piece.entry or flat.inputs[0] != pool.outputs[0] or gemm.inputs[0] != flat.outputs[0]
            or gemm.outputs[0] != piece.exit or len(shape) < 3 or shape[0] != 1
            or int(flat.attr("axis", 1)) != 1 or int(gemm.attr("transA", 0)) != 0):
        return "a head that is not GlobalAveragePool → Flatten → Gemm on one sample"
    b = graph.constants.get(gemm.inputs[1])
    if b is None:
        return "a Gemm with an input-dependent weight"
    b = np.asarray(b, dtype=np.float64)
    g = float(gemm.attr("alpha", 1.0)) * (b if int(gemm.attr("transB", 0)) else b.T)
    if g.ndim != 2 or g.shape[1] != shape[1] or not np.all(np.isfinite(g)):
        return "a Gemm whose weight does not fit the pooled channels"
    return HeadSpec(g, 8.0 * EPS64, int(math.prod(shape[2:])))


def _chain_symbols(c: ConvSpec | HeadSpec, phases: tuple[int, ...], grid: tuple[int, ...], freqs: np.ndarray,
                   absolute: bool = False) -> np.ndarray:
    if isinstance(c, HeadSpec):
        return _head_symbols(c, phases, grid, freqs, absolute)
    return _symbols(c, phases, grid, freqs, absolute)


def _taps(c: ConvSpec | HeadSpec) -> int:
    return 1 if isinstance(c, HeadSpec) else int(math.prod(c.weight.shape[2:]))


@dataclass
class _Chain:
    convs: list[ConvSpec | HeadSpec | None]  # W_1 … W_k (None: the identity; a head only last)
    slopes: list[tuple[float, float]]  # the k − 1 activations' intervals, widened to contain 0
    grid: tuple[int, ...]
    phases: list[tuple[int, ...]]  # input phases of W_1 … W_k
    dims: list[int]  # d_0 … d_{k−1}: the sizes of Δx, Δu_1 … Δu_{k−1} per frequency

    def frequencies(self) -> np.ndarray:
        return half_frequencies(self.grid)

    def operators(self, idx: np.ndarray) -> list[torch.Tensor | None]:
        freqs = self.frequencies()[np.asarray(idx, dtype=np.int64)]
        return [None if c is None else torch.from_numpy(_chain_symbols(c, p, self.grid, freqs))
                for c, p in zip(self.convs, self.phases)]


def build_chain(graph: Graph, run: list[Piece]) -> _Chain | str:
    """The run (linear pieces that are one Conv each, and single activations, alternating) as a :class:`_Chain`."""
    convs: list[ConvSpec | None] = []
    slopes: list[tuple[float, float]] = []
    expect = "either"
    for piece in run:
        if piece.kind == "activation":
            if expect == "linear" or piece.interval is None:
                return "two activations in a row"
            if not convs:
                convs.append(None)  # the run starts with an activation: W_1 = I
            lo, hi = piece.interval
            slopes.append((min(lo, 0.0), max(hi, 0.0)))
            expect = "linear"
        elif piece.kind == "linear":
            if expect == "activation":
                return "two linear pieces in a row"
            spec: ConvSpec | HeadSpec | str = _spec(graph, list(piece.nodes), piece.entry, piece.exit)
            if isinstance(spec, str) and expect == "linear" and piece is run[-1]:
                # a classifier head right after the last activation (whose slope is 0 outside the window, so the
                # pool's sum over the torus is its sum over the window)
                spec = _head(graph, piece)
            if isinstance(spec, str):
                return spec
            convs.append(spec)
            expect = "activation"
        else:
            return "a piece that is neither one Conv nor an activation"
    if not slopes or not any(c is not None for c in convs):
        return "no activation between convolutions"
    if expect == "linear":
        convs.append(None)  # the run ends with an activation: W_k = I
    head = convs[-1] if isinstance(convs[-1], HeadSpec) else None
    real = [c for c in convs if isinstance(c, ConvSpec)]
    if not real:
        return "no convolution in the chain"
    if head is not None and head.c_in != real[-1].c_out:
        return "a head whose Gemm does not read the last conv's channels"
    for a, b in zip(real, real[1:]):
        if b.n_in != a.n_out or b.c_in != a.c_out:
            return "consecutive convs whose shapes do not meet"
    d = len(real[0].n_in)
    if any(len(c.n_in) != d for c in real):
        return "convs of different spatial ranks"
    s_total = tuple(math.prod(c.strides[i] for c in real) for i in range(d))
    sizes = []
    for i in range(d):
        before, need = 1, 0
        for c in real:
            need = max(need, c.torus_needed()[i] * before)
            before *= c.strides[i]
        sizes.append(-(-need // s_total[i]) * s_total[i])
    grid = tuple(n // s for n, s in zip(sizes, s_total))
    phases: list[tuple[int, ...]] = []
    dims: list[int] = []
    left = s_total
    channels = real[0].c_in
    for c in convs:
        phases.append(left)
        dims.append(channels * math.prod(left))
        if isinstance(c, ConvSpec):
            left = tuple(p // s for p, s in zip(left, c.strides))
            channels = c.c_out
    return _Chain(convs, slopes, grid, phases, dims)


def _gram(k: torch.Tensor | None, n: int, f: int) -> torch.Tensor:
    if k is None:
        return torch.eye(n, dtype=torch.complex128).expand(f, n, n).clone()
    return k.mH @ k


def _rho(chain: _Chain, ks: list[torch.Tensor | None], t: np.ndarray) -> np.ndarray:
    """ρ(ω, t) per frequency: the least ρ with P ⪰ 0, by eliminating Δu_{k−1} … Δu_1 (+inf where a pivot block is
    not positive definite)."""
    k = len(ks)
    f = next(x.shape[0] for x in ks if x is not None)
    ab = [(lo * hi, 0.5 * (lo + hi)) for lo, hi in chain.slopes]
    bad = torch.zeros(f, dtype=torch.bool)
    x = -_gram(ks[k - 1], chain.dims[k - 1], f)
    x.diagonal(dim1=-2, dim2=-1).add_(float(t[k - 2]))
    for i in range(k - 1, 0, -1):  # eliminate Δu_i (block i) into block i − 1
        chol, info = torch.linalg.cholesky_ex(x)
        failed = info != 0
        bad |= failed
        if bool(failed.any()):  # an infeasible pivot: carry on with the identity there (its ρ is +inf anyway)
            chol[failed] = torch.eye(chol.shape[-1], dtype=chol.dtype)
        a_i, m_i = ab[i - 1]
        w = ks[i - 1]
        n_prev = chain.dims[i - 1]
        b = (-(m_i * t[i - 1])) * (w if w is not None else torch.eye(n_prev, dtype=torch.complex128).expand(f, -1, -1))
        y = torch.cholesky_solve(b, chol)
        s = b.mH @ y
        gram = _gram(w, n_prev, f)
        nxt = (a_i * t[i - 1]) * gram - s
        if i > 1:
            nxt.diagonal(dim1=-2, dim2=-1).add_(float(t[i - 2]))
            x = nxt
        else:
            sym = torch.nan_to_num(-0.5 * (nxt + nxt.mH))
            sym[bad] = 0.0
            top = torch.linalg.eigvalsh(sym)[:, -1].numpy().copy()
    top[bad.numpy()] = np.inf
    return top


def _last_gram_top(chain: _Chain, ks: list[torch.Tensor | None]) -> np.ndarray:
    """λ_max(K_kᴴK_k) per frequency (1 where W_k is the identity)."""
    f = next(x.shape[0] for x in ks if x is not None)
    if ks[-1] is None:
        return np.ones(f)
    return torch.linalg.eigvalsh(ks[-1] @ ks[-1].mH)[:, -1].numpy()


def _start(chain: _Chain, ks: list[torch.Tensor | None]) -> np.ndarray:
    """Feasible multipliers, chosen from the last block up: each t_i twice what keeps its pivot positive definite."""
    k = len(ks)
    f = next(x.shape[0] for x in ks if x is not None)
    t = np.zeros(k - 1)
    gram = _gram(ks[k - 1], chain.dims[k - 1], f)
    t[k - 2] = 2.0 * max(float(torch.linalg.eigvalsh(gram)[:, -1].max()), 1e-12)
    ab = [(lo * hi, 0.5 * (lo + hi)) for lo, hi in chain.slopes]
    x = -gram
    x.diagonal(dim1=-2, dim2=-1).add_(float(t[k - 2]))
    for i in range(k - 1, 1, -1):
        a_i, m_i = ab[i - 1]
        w = ks[i - 1]
        n_prev = chain.dims[i - 1]
        b = (-(m_i * t[i - 1])) * (w if w is not None else torch.eye(n_prev, dtype=torch.complex128).expand(f, -1, -1))
        s = b.mH @ torch.linalg.solve(x, b)
        need = s - (a_i * t[i - 1]) * _gram(w, n_prev, f)
        t[i - 2] = 2.0 * max(float(torch.linalg.eigvalsh(0.5 * (need + need.mH))[:, -1].max()), 1e-12)
        x = -need
        x.diagonal(dim1=-2, dim2=-1).add_(float(t[i - 2]))
    return t


def _abs_bound(chain: _Chain, rho: float, t: np.ndarray, g: float) -> float:
    """g times the largest row sum of |P|abs (the frequency-free entrywise bounds of :mod:`.fourier`)."""
    none = np.zeros((1, 0))
    k = len(chain.convs)
    absk: list[np.ndarray] = []
    for c, p, n in zip(chain.convs, chain.phases, chain.dims):
        if c is None:
            absk.append(np.eye(n))
        else:
            absk.append(_chain_symbols(c, p, chain.grid, none, absolute=True)[0] * (1.0 + c.rel_error))
    ab = [(abs(lo * hi), abs(0.5 * (lo + hi))) for lo, hi in chain.slopes]
    u = _scales(t)  # the blocks' congruence scales (see _failures)
    worst = 0.0
    for i in range(k):  # row block i (Δx for i = 0, else Δu_i)
        n = chain.dims[i]
        rows = np.full(n, abs(rho) if i == 0 else abs(float(t[i - 1]))) * u[i] ** 2
        if i < k - 1:  # a_{i+1} t_{i+1} K_{i+1}ᴴK_{i+1} and the block below: m_{i+1} t_{i+1} K_{i+1}ᴴ
            a_n, m_n = ab[i]
            w = absk[i]
            rows = rows + u[i] ** 2 * a_n * t[i] * (w.T @ (w @ np.ones(n)))
            rows = rows + u[i] * u[i + 1] * m_n * t[i] * (w.T @ np.ones(w.shape[0]))
        else:  # − K_kᴴK_k
            w = absk[k - 1]
            rows = rows + u[i] ** 2 * (w.T @ (w @ np.ones(n)))
        if i > 0:  # the block left of the diagonal: m_i t_i K_i
            a_i, m_i = ab[i - 1]
            w = absk[i - 1]
            rows = rows + u[i] * u[i - 1] * m_i * t[i - 1] * (w @ np.ones(w.shape[1]))
        worst = max(worst, float(rows.max()))
    return g * worst


def _scales(t: np.ndarray) -> list[float]:
    """Per block, the power of two that :func:`_failures` scales its rows and columns by: 1 for Δx, about 1/√t_i
    for Δu_i (:func:`lipcheck.bound.methods.fourier._u_scale`)."""
    from lipcheck.bound.methods.fourier import _u_scale

    return [1.0] + [_u_scale(float(v)) for v in t]


def _failures(chain: _Chain, rho: float, t: np.ndarray) -> np.ndarray | None:
    """Frequencies whose P(ω) − δI fails its Cholesky test (δ: every rounding); None if the bound is not finite."""
    k = len(chain.convs)
    n = sum(chain.dims)
    offs = np.concatenate([[0], np.cumsum(chain.dims)])
    taps = max(_taps(c) for c in chain.convs if c is not None)
    g = rounding_margin(max(chain.dims) + max(c.c_out for c in chain.convs if c is not None) + 2 * taps + 16) - 1.0
    e_form = _abs_bound(chain, rho, t, g)
    if not math.isfinite(e_form):
        return None
    freqs = chain.frequencies()
    chunk = max(1, CHUNK_ENTRIES // (n * n))
    ab = [(lo * hi, 0.5 * (lo + hi)) for lo, hi in chain.slopes]
    failed: list[np.ndarray] = []
    for start in range(0, len(freqs), chunk):
        idx = np.arange(start, min(len(freqs), start + chunk))
        ks = chain.operators(idx)
        f = len(idx)
        p = torch.zeros((f, n, n), dtype=torch.complex128)
        for i in range(k):
            sl = slice(int(offs[i]), int(offs[i + 1]))
            blk = p[:, sl, sl]
            blk.diagonal(dim1=-2, dim2=-1).add_(rho if i == 0 else float(t[i - 1]))
            if i < k - 1:
                a_n, m_n = ab[i]
                if a_n != 0.0:
                    blk += (a_n * float(t[i])) * _gram(ks[i], chain.dims[i], f)
                nxt = slice(int(offs[i + 1]), int(offs[i + 2]))
                w = ks[i] if ks[i] is not None else torch.eye(chain.dims[i], dtype=torch.complex128).expand(f, -1, -1)
                cross = (-(m_n * float(t[i]))) * w
                p[:, nxt, sl] = cross
                p[:, sl, nxt] = cross.mH
            else:
                blk -= _gram(ks[k - 1], chain.dims[k - 1], f)
        for i, u in enumerate(_scales(t)):  # the congruent D·P·D, D = diag(u_i I): powers of two, exact
            if u != 1.0:
                sl = slice(int(offs[i]), int(offs[i + 1]))
                p[:, sl, :] *= u
                p[:, :, sl] *= u
        bad = cholesky_fails(p, e_form)
        if bad is None:
            return None
        failed.append(start + bad)
    return np.concatenate(failed) if failed else np.empty(0, dtype=np.int64)


def _search(chain: _Chain, ks: list[torch.Tensor | None], t: np.ndarray, deadline: float | None,
            evaluations: int) -> np.ndarray:
    """Multipliers that lower max_ω ρ(ω, t) on the frequencies of ``ks``: first one common scale of ``t``, then
    each t_i in turn (bounded one-dimensional searches on log t), within ``evaluations`` evaluations."""
    from scipy.optimize import minimize_scalar

    count = [0]

    def value(tt: np.ndarray) -> float:
        count[0] += 1
        v = float(np.max(_rho(chain, ks, tt)))
        return math.log(v) if v > 0 and math.isfinite(v) else 1e300

    def out_of_time() -> bool:
        return count[0] >= evaluations or (deadline is not None and time.perf_counter() > deadline)

    best = value(t)
    found = minimize_scalar(lambda c: value(t * math.exp(c)) if not out_of_time() else 1e300,
                            bounds=(-3.0, 1.0), method="bounded", options={"xatol": 0.02})
    trial = t * math.exp(float(found.x))
    if (v := value(trial)) < best:
        t, best = trial, v
    for _ in range(2):
        for i in range(len(t)):
            if out_of_time():
                return t

            def along(c: float, i: int = i, base: np.ndarray = t) -> float:
                if out_of_time():
                    return 1e300
                tt = base.copy()
                tt[i] *= math.exp(c)
                return value(tt)

            found = minimize_scalar(along, bounds=(-2.0, 2.0), method="bounded", options={"xatol": 0.02})
            trial = t.copy()
            trial[i] *= math.exp(float(found.x))
            if (v := value(trial)) < best:
                t, best = trial, v
    return t


def certify_chain(chain: _Chain, deadline: float | None = None, max_work: float = MAX_WORK,
                  evaluations: int = 80) -> tuple[float, dict] | str:
    """(√ρ of a certified P ⪰ 0 for the chain, details) or why there is none."""
    freqs = chain.frequencies()
    n = sum(chain.dims)
    work = len(freqs) * float(n) ** 3
    if work > max_work:
        return f"lipsdp-fft: {len(freqs)} frequencies of order {n}, work {work:.1e} over the limit {max_work:.0e}"
    chunk = max(1, CHUNK_ENTRIES // (max(chain.dims) ** 2))
    every = [np.arange(s, min(len(freqs), s + chunk)) for s in range(0, len(freqs), chunk)]
    t = np.max([_start(chain, chain.operators(i)) for i in every], axis=0)  # feasible at every frequency
    values = np.concatenate([_rho(chain, chain.operators(i), t) for i in every])
    chosen = [int(f) for f in np.argsort(values)[::-1][:CANDIDATES]]
    # and the frequency where the last block needs the largest t_{k−1} (‖K_k(ω)‖²), so that the search on these
    # few cannot leave the others infeasible there (a head lives at ω = 0 only)
    last = np.concatenate([_last_gram_top(chain, chain.operators(i)) for i in every])
    if int(np.argmax(last)) not in chosen:
        chosen.append(int(np.argmax(last)))
    for round_ in range(2):
        t = _search(chain, chain.operators(np.array(chosen)), t, deadline, evaluations // 2)
        values = np.concatenate([_rho(chain, chain.operators(i), t) for i in every])
        level = float(np.max(values[chosen]))
        new = [int(f) for f in np.argsort(values)[::-1] if values[f] > level * (1.0 - 1e-3) and int(f) not in chosen]
        if not new or round_ == 1 or (deadline is not None and time.perf_counter() > deadline):
            break
        chosen.extend(new[:CANDIDATES])
    rho = float(np.max(values))
    if not (math.isfinite(rho) and rho > 0):
        return "lipsdp-fft: the multiplier search found no finite value"
    for margin in MARGINS:
        rho_c = rho * (1.0 + margin)
        failed = _failures(chain, rho_c, t)
        if failed is None:
            return "lipsdp-fft: the rounding bound is not finite"
        if failed.size == 0:
            return math.nextafter(math.sqrt(rho_c), math.inf), {"t": t.tolist(), "frequencies": len(freqs),
                                                                 "order": n}
    return "lipsdp-fft: the LMI could not be certified"


def chain_fft_bound(graph: Graph, run: list[Piece], deadline: float | None = None,
                    max_work: float = MAX_WORK, evaluations: int = 80) -> float | str:
    """A certified upper bound on the Lipschitz constant of the run of pieces, or why there is none."""
    chain = build_chain(graph, run)
    if isinstance(chain, str):
        return chain
    try:
        result = certify_chain(chain, deadline, max_work, evaluations)
    except (ArithmeticError, ValueError, RuntimeError) as exc:  # an eigensolver that did not converge, say
        return f"lipsdp-fft: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return result if isinstance(result, str) else result[0]
