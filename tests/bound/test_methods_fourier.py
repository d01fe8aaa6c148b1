"""The residual-fft certificate (lipcheck.bound.methods.fourier): its symbols against dense torch convolutions, its
value against ‖S + W₂DW₁‖ of the real zero-padded block for many slope patterns D, and a search that lies."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcheck import load
from lipcheck.bound.methods import fourier
from lipcheck.bound.methods.blocks import Limits, blocks_bound, decompose
from lipcheck.bound.methods.fourier import ConvSpec, _symbols, residual_fft_bound
from lipcheck.bound.methods.linear import materialize
from lipcheck.bound.methods.residual import split_block
from lipcheck.bound.walker import walk
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.ir.graph import Graph
from lipcheck.report.model import Settings


def _dense_conv(w: np.ndarray, n: tuple[int, ...], stride: tuple[int, ...], dil: tuple[int, ...],
                pb: tuple[int, ...], pe: tuple[int, ...], groups: int) -> np.ndarray:
    """The zero-padded conv as an explicit matrix (float64 torch reference)."""
    d = len(n)
    c_in = w.shape[1] * groups
    size = c_in * math.prod(n)
    eye = torch.eye(size, dtype=torch.float64).reshape(size, c_in, *n)
    pad = [p for i in reversed(range(d)) for p in (pb[i], pe[i])]
    conv = (F.conv1d, F.conv2d)[d - 1]
    out = conv(F.pad(eye, pad), torch.from_numpy(w), stride=stride, dilation=dil, groups=groups)
    return out.reshape(size, -1).T.numpy()


def _circular_from_symbols(spec: ConvSpec, phases_in: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    """The circular operator on the fine torus (grid·phases_in per dim) rebuilt from _symbols by the inverse DFT:
    (c_out·Π(grid·P_out), c_in·Π(grid·P_in)) real matrix."""
    d = len(grid)
    p_out = tuple(p // s for p, s in zip(phases_in, spec.strides))
    freqs = np.stack(np.unravel_index(np.arange(math.prod(grid)), grid), axis=1)
    k = _symbols(spec, phases_in, grid, freqs)  # (F, c_out·Po, c_in·Pi)
    n_in = tuple(g * p for g, p in zip(grid, phases_in))
    n_out = tuple(g * p for g, p in zip(grid, p_out))
    cols = []
    for c in range(spec.c_in):
        for pos in itertools.product(*(range(v) for v in n_in)):
            q = tuple(p // ph for p, ph in zip(pos, phases_in))
            r = int(np.ravel_multi_index(tuple(p % ph for p, ph in zip(pos, phases_in)), phases_in))
            # x̂_(c, r)(ω) = e^{−2πi ω·q / M}
            xhat = np.exp(-2j * np.pi * sum(freqs[:, i] * q[i] / grid[i] for i in range(d)))
            yhat = k[:, :, c * math.prod(phases_in) + r] * xhat[:, None]  # (F, c_out·Po)
            y = np.zeros((spec.c_out, *n_out))
            for co in range(spec.c_out):
                for o_r in itertools.product(*(range(p) for p in p_out)):
                    row = co * math.prod(p_out) + int(np.ravel_multi_index(o_r, p_out))
                    for oc in itertools.product(*(range(g) for g in grid)):
                        val = np.sum(yhat[:, row] * np.exp(2j * np.pi * sum(freqs[:, i] * oc[i] / grid[i]
                                                                            for i in range(d))))
                        y[(co, *(oc[i] * p_out[i] + o_r[i] for i in range(d)))] = val.real / math.prod(grid)
            cols.append(y.reshape(-1))
    return np.stack(cols, axis=1)


GEOMETRIES = [
    # (c_out, c_in/g, kernel, n, stride, dilation, pads_begin, pads_end, groups, extra output phases)
    (3, 2, (3, 3), (5, 4), (1, 1), (1, 1), (1, 1), (1, 1), 1, 1),
    (4, 2, (3, 3), (6, 5), (2, 2), (1, 1), (1, 0), (1, 2), 1, 1),
    (4, 1, (3, 2), (5, 6), (1, 2), (2, 1), (2, 0), (1, 1), 2, 1),
    (2, 3, (1, 1), (4, 4), (2, 2), (1, 1), (0, 0), (0, 0), 1, 1),
    (3, 2, (3, 3), (4, 4), (1, 1), (1, 1), (1, 1), (1, 1), 1, 2),  # the first conv of a block with a stride after it
    (2, 2, (5,), (7,), (3,), (1,), (2,), (1,), 1, 1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_symbols_rebuild_the_zero_padded_conv(geometry: tuple) -> None:
    c_out, c_in_g, kernel, n, stride, dil, pb, pe, groups, extra = geometry
    rng = np.random.default_rng(len(n) + c_out)
    w = rng.standard_normal((c_out, c_in_g, *kernel))
    dense = _dense_conv(w, n, stride, dil, pb, pe, groups)
    n_out = tuple((v + b + e - (k - 1) * dl - 1) // s + 1 for v, b, e, k, dl, s in zip(n, pb, pe, kernel, dil, stride))
    full = np.zeros((c_out, c_in_g * groups, *kernel))
    per = c_out // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = w[g * per:(g + 1) * per]
    spec = ConvSpec(full, 0.0, stride, dil, pb, n, n_out)
    phases = tuple(s * extra for s in stride)
    need = spec.torus_needed()
    grid = tuple(-(-v // p) for v, p in zip(need, phases))
    circ = _circular_from_symbols(spec, phases, grid)
    fine_in = tuple(g * p for g, p in zip(grid, phases))
    fine_out = tuple(g * p // s for g, p, s in zip(grid, phases, stride))
    keep_in = [np.ravel_multi_index((c, *pos), (spec.c_in, *fine_in))
               for c in range(spec.c_in) for pos in itertools.product(*(range(v) for v in n))]
    keep_out = [np.ravel_multi_index((c, *pos), (c_out, *fine_out))
                for c in range(c_out) for pos in itertools.product(*(range(v) for v in n_out))]
    restricted = circ[np.ix_(keep_out, keep_in)]
    assert np.max(np.abs(restricted - dense)) <= 1e-12 * np.abs(w).sum()
    # |K̂(ω)| <= Σ|w| entrywise (the bound the certificate's rounding margin uses)
    freqs = np.stack(np.unravel_index(np.arange(math.prod(grid)), grid), axis=1)
    bound = _symbols(spec, phases, grid, freqs[:1], absolute=True)[0]
    assert np.all(np.abs(_symbols(spec, phases, grid, freqs)) <= bound * (1 + 1e-12) + 1e-15)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: type[nn.Module] = nn.ReLU, kernel: int = 3,
                 pad: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, groups=groups)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.b2 = nn.BatchNorm2d(c_out)
        self.act = act()
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
        with torch.no_grad():
            for bn in (self.b1, self.b2):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(self.act(self.b1(self.c1(x)))))
        return y + (x if self.down is None else self.down(x))


def _onnx(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), torch.zeros(shape), buf, input_names=["x"], output_names=["y"], dynamo=False)
    return onnx.load_from_string(buf.getvalue())


BLOCKS = [
    (4, 4, 1, 6, {}, (0.0, 1.0)),
    (4, 8, 2, 6, {}, (0.0, 1.0)),
    (3, 6, 2, 7, {}, (0.0, 1.0)),
    (4, 4, 1, 5, {"kernel": 5, "pad": 2}, (0.0, 1.0)),
    (4, 4, 1, 6, {"pad": 2, "dilation": 2}, (0.0, 1.0)),
    (4, 8, 2, 8, {"groups": 2}, (0.0, 1.0)),
    (4, 4, 1, 6, {"act": nn.Tanh}, (0.0, 1.0)),
    (4, 4, 1, 6, {"act": lambda: nn.LeakyReLU(0.1)}, (0.1, 1.0)),
]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
@pytest.mark.parametrize("c_in,c_out,stride,n,kw,slopes", BLOCKS)
def test_certificate_bounds_every_slope_pattern_of_the_real_block(seed: int, c_in: int, c_out: int, stride: int,
                                                                   n: int, kw: dict, slopes: tuple) -> None:
    torch.manual_seed(seed)
    model = _onnx(_Block(c_in, c_out, stride, **kw), (1, c_in, n, n))
    for graph in (load(model), fold_batchnorm(load(model))):  # BatchNormalization as a node, and folded
        piece = next(p for p in decompose(graph) if p.kind == "other")
        value = residual_fft_bound(graph, piece, Limits())
        assert isinstance(value, float), value
        shortcut, first, act, second, s_out, b_out = split_block(graph, piece)
        w1 = materialize(graph, first, piece.entry, act.inputs[0], 2**30).matrix
        w2 = materialize(graph, second, act.outputs[0], b_out, 2**30).matrix
        s = np.eye(w1.shape[1]) if not shortcut else materialize(graph, shortcut, piece.entry, s_out, 2**30).matrix
        rng = np.random.default_rng(seed)
        lo, hi = slopes
        worst = 0.0
        for i in range(40):
            d = (np.full(w1.shape[0], hi) if i == 0 else np.where(rng.random(w1.shape[0]) < 0.5, lo, hi) if i % 2
                 else rng.uniform(lo, hi, w1.shape[0]))
            worst = max(worst, float(np.linalg.norm(s + w2 @ (d[:, None] * w1), 2)))
        product = float(np.linalg.norm(s, 2) + np.linalg.norm(w2, 2) * hi * np.linalg.norm(w1, 2))
        assert worst <= value < product


def test_a_search_that_lies_is_not_certified(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's values only steer it: a search reporting 1/100 of every λ_max never lowers the certificate."""
    torch.manual_seed(0)
    graph = load(_onnx(_Block(4, 4, 1), (1, 4, 6, 6)))
    piece = next(p for p in decompose(graph) if p.kind == "other")
    honest = residual_fft_bound(graph, piece, Limits())
    assert isinstance(honest, float)
    top, estimate = fourier._Schur.top, fourier._Schur.estimate
    monkeypatch.setattr(fourier._Schur, "top", lambda self, t: top(self, t) / 100.0)
    monkeypatch.setattr(fourier._Schur, "estimate", lambda self, t: estimate(self, t) / 100.0)
    lied = residual_fft_bound(graph, piece, Limits())
    assert isinstance(lied, str) and "could not be certified" in lied


def test_blocks_uses_it_where_the_dense_lmi_is_over_the_limit() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _Block(4, 4, 1), nn.ReLU(), _Block(4, 8, 2),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model = _onnx(net, (1, 3, 8, 8))
    graph = fold_batchnorm(load(model))
    walked = walk(graph, Settings(exact_limit=0, power_iterations=30))
    product = walked.output_bound(graph, walked.upper)
    result = blocks_bound(graph, walked.bounds, Limits(max_order=64, search_seconds=2.0))
    assert result.certified and result.value is not None
    methods = [b["method"] for b in result.detail["blocks"]]
    assert methods.count("residual-fft") == 2
    assert result.value < product
    assert _max_jacobian_norm(net, (1, 3, 8, 8), 7) <= result.value


def _max_jacobian_norm(net: nn.Module, shape: tuple[int, ...], seed: int) -> float:
    """The largest ‖J(x)‖₂ of the float64 network at 16 random points."""
    ref = net.double().eval()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(16):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(ref, x)
        worst = max(worst, float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2)))
    return worst


def test_refusals_say_why() -> None:
    # a branch with two convs before its activation is not one Conv (+ BatchNormalization)
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.c(torch.relu(self.b(self.a(x))))

    graph = load(_onnx(Deep(), (1, 2, 5, 5)))
    piece = next(p for p in decompose(graph) if p.kind == "other")
    reason = residual_fft_bound(graph, piece, Limits())
    assert isinstance(reason, str) and "one Conv" in reason


# ---------------------------------------------------------------------------------------------- chains (lipsdp-fft)


class _ConvChain(nn.Module):
    """conv → act → conv (stride 2, BatchNorm) → act → conv (dilation 2), optionally a trailing act / head."""

    def __init__(self, act: type[nn.Module] | object = nn.ReLU, end_act: bool = False, head: bool = False):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, 1, 1)
        self.c2 = nn.Conv2d(4, 4, 3, 2, 1)
        self.bn = nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 3, 3, 1, 2, dilation=2)
        self.a1, self.a2, self.a3 = act(), act(), act()  # type: ignore[operator]
        self.end_act, self.head = end_act, nn.Linear(3 * 4 * 4, 2) if head else None
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c3(self.a2(self.bn(self.c2(self.a1(self.c1(x))))))
        if self.end_act:
            y = self.a3(y)
        return y if self.head is None else self.head(torch.flatten(y, 1))


@pytest.mark.parametrize("act,slopes,end_act", [(nn.ReLU, (0.0, 1.0), False),
                                                (lambda: nn.LeakyReLU(0.2), (0.2, 1.0), True),
                                                pytest.param(nn.Tanh, (0.0, 1.0), False, marks=pytest.mark.slow)])
def test_chain_certificate_bounds_every_slope_pattern_of_the_real_chain(act: object, slopes: tuple,
                                                                         end_act: bool) -> None:
    from lipcheck.bound.methods.fourier_chain import build_chain, certify_chain

    torch.manual_seed(1)
    graph = fold_batchnorm(load(_onnx(_ConvChain(act, end_act), (1, 2, 8, 8))))
    pieces = decompose(graph)
    chain = build_chain(graph, pieces)
    assert not isinstance(chain, str), chain
    result = certify_chain(chain)
    assert not isinstance(result, str), result
    value = result[0]
    linear = [p for p in pieces if p.kind == "linear"]
    mats = [materialize(graph, p.nodes, p.entry, p.exit, 2**30).matrix for p in linear]
    rng = np.random.default_rng(0)
    lo, hi = slopes
    worst = 0.0
    for i in range(40):
        op = mats[0]
        for w in mats[1:]:
            d = (np.full(op.shape[0], hi) if i == 0 else np.where(rng.random(op.shape[0]) < 0.5, lo, hi) if i % 2
                 else rng.uniform(lo, hi, op.shape[0]))
            op = w @ (d[:, None] * op)
        worst = max(worst, float(np.linalg.norm(op, 2)))
    product = math.prod(float(np.linalg.norm(w, 2)) for w in mats) * hi ** (len(mats) - 1)
    assert worst <= value < product


def test_chain_search_that_lies_is_not_certified(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.bound.methods import fourier_chain

    torch.manual_seed(1)
    graph = fold_batchnorm(load(_onnx(_ConvChain(), (1, 2, 8, 8))))
    chain = fourier_chain.build_chain(graph, decompose(graph))
    rho = fourier_chain._rho
    monkeypatch.setattr(fourier_chain, "_rho", lambda c, ks, t: rho(c, ks, t) / 100.0)
    result = fourier_chain.certify_chain(chain)
    assert isinstance(result, str) and "could not be certified" in result


def test_blocks_uses_the_chain_where_the_dense_lmi_needs_windows() -> None:
    torch.manual_seed(2)
    net = _ConvChain(lambda: nn.LeakyReLU(0.1), end_act=True, head=True).eval()
    graph = fold_batchnorm(load(_onnx(net, (1, 2, 8, 8))))
    walked = walk(graph, Settings(exact_limit=0, power_iterations=30))
    product = walked.output_bound(graph, walked.upper)
    result = blocks_bound(graph, walked.bounds, Limits(max_order=200, search_seconds=10.0))
    assert result.certified and result.value is not None and result.value < product
    methods = [b["method"] for b in result.detail["blocks"]]
    assert methods[0] == "lipsdp-fft"
    assert _max_jacobian_norm(net, (1, 2, 8, 8), 9) <= result.value


@pytest.mark.parametrize("exponent", [-100, 100, -500, 500, -1000])
def test_hostile_scales_never_certify_too_low(exponent: int) -> None:
    """W₁·2^e and W₂·2^−e leave the block x + W₂φ(W₁x) (ReLU) unchanged: moderate scales give the same certificate
    (the search and the Cholesky test are scaled to them), scales near under- and overflow the same, a larger one,
    or none, never a lower one."""
    torch.manual_seed(0)
    model = _onnx(_Block(4, 4, 1), (1, 4, 6, 6))
    graph = fold_batchnorm(load(model))
    piece = next(p for p in decompose(graph) if p.kind == "other")
    honest = residual_fft_bound(graph, piece, Limits())
    assert isinstance(honest, float)
    shortcut, first, act, second, s_out, b_out = split_block(graph, piece)
    w1 = materialize(graph, first, piece.entry, act.inputs[0], 2**30).matrix
    w2 = materialize(graph, second, act.outputs[0], b_out, 2**30).matrix
    worst = max(float(np.linalg.norm(np.eye(w1.shape[1]) + w2 @ (d[:, None] * w1), 2))
                for d in (np.ones(w1.shape[0]), *(np.random.default_rng(i).integers(0, 2, w1.shape[0])
                                                  for i in range(20))))
    scaled = dict(graph.constants)
    for nodes, e in ((first, exponent), (second, -exponent)):
        conv = nodes[0]
        scaled[conv.inputs[1]] = np.ldexp(np.asarray(scaled[conv.inputs[1]], dtype=np.float64), e)
        if len(conv.inputs) > 2 and conv.inputs[2]:
            scaled[conv.inputs[2]] = np.ldexp(np.asarray(scaled[conv.inputs[2]], dtype=np.float64), e)
    import dataclasses

    hostile = dataclasses.replace(graph, constants=scaled)
    value = residual_fft_bound(hostile, piece, Limits())
    assert isinstance(value, str) or value >= worst
    if abs(exponent) <= 100:
        assert value == pytest.approx(honest, rel=1e-6)


def test_chain_with_a_pooling_head_bounds_every_slope_pattern() -> None:
    """conv → ReLU → conv (stride 2) → ReLU → GlobalAveragePool → Flatten → Gemm: the head is a symbol at ω = 0 only;
    the certificate is ≥ ‖G·pool·D₂W₂D₁W₁‖ of the real operators for many patterns, and below the product."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    graph = fold_batchnorm(load(_onnx(net, (1, 2, 7, 7))))
    assert [p.kind for p in decompose(graph)][-1] == "linear"
    certified, worst, product = _chain_against_relu_patterns(graph, 60, seed=0)
    assert worst <= certified < product
    assert _max_jacobian_norm(net, (1, 2, 7, 7), 3) <= certified


def _chain_against_relu_patterns(graph: Graph, patterns: int, seed: int) -> tuple[float, float, float]:
    """(lipsdp-fft's certificate of the whole graph as one chain, max ‖W_k D … D W_1‖ of the real pieces' dense
    operators over ``patterns`` 0/1 slope patterns D (the first all ones), the product of their norms)."""
    from lipcheck.bound.methods.fourier_chain import build_chain, certify_chain

    pieces = decompose(graph)
    chain = build_chain(graph, pieces)
    assert not isinstance(chain, str), chain
    result = certify_chain(chain)
    assert not isinstance(result, str), result
    mats = [materialize(graph, p.nodes, p.entry, p.exit, 2**30).matrix for p in pieces if p.kind == "linear"]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for i in range(patterns):
        op = mats[0]
        for w in mats[1:]:
            d = np.ones(op.shape[0]) if i == 0 else (rng.random(op.shape[0]) < 0.5).astype(np.float64)
            op = w @ (d[:, None] * op)
        worst = max(worst, float(np.linalg.norm(op, 2)))
    return result[0], worst, math.prod(float(np.linalg.norm(w, 2)) for w in mats)


class _PadChain(nn.Module):
    """conv → ReLU → an explicit constant Pad (asymmetric, value 0.5) → conv (stride 2, no pads) → ReLU → conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(2, 4, 3, 1, 1), nn.Conv2d(4, 3, 3, 2, 0), nn.Conv2d(3, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.pad(torch.relu(self.c1(x)), (0, 1, 2, 0), value=0.5)
        return self.c3(torch.relu(self.c2(h)))


def test_a_constant_pad_before_a_conv_is_taken_in_as_its_zero_padding() -> None:
    torch.manual_seed(3)
    net = _PadChain().eval()
    graph = load(_onnx(net, (1, 2, 7, 7)))
    assert any(n.op_type == "Pad" for p in decompose(graph) for n in p.nodes)
    # against the dense operators of the real pieces (the Pad's zero padding and the conv's, together)
    certified, worst, product = _chain_against_relu_patterns(graph, 40, seed=1)
    assert worst <= certified < product
    assert _max_jacobian_norm(net, (1, 2, 7, 7), 4) <= certified


def test_a_pad_that_is_not_zero_padding_of_the_spatial_dims_is_refused() -> None:
    from lipcheck.bound.methods.fourier import _spatial_pads

    for mode, pads, ok in [("constant", (0, 1, 2, 0), True), ("reflect", (1, 1, 1, 1), False),
                           ("constant", (0, 0, 0, 0, 1, 0), False), ("constant", (-1, 0, 0, 0), False)]:
        class P(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return nn.functional.pad(x, pads, mode=mode)  # noqa: B023 - used at once

        graph = load(_onnx(P(), (1, 2, 5, 5)))
        node = next(n for n in graph.nodes if n.op_type == "Pad")
        assert (_spatial_pads(node, graph) is not None) is ok, (mode, pads)


class _ChainThroughTranspose(nn.Module):
    """conv → ReLU → conv → ReLU → ConvTranspose (no chain symbol) → ReLU → conv → ReLU → conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 2, 1)
        self.t = nn.ConvTranspose2d(4, 3, 3, 2, 1)
        self.c, self.d = nn.Conv2d(3, 3, 3, 1, 1), nn.Conv2d(3, 2, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.t(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.d(torch.relu(self.c(h)))


def test_a_run_cut_at_a_piece_with_no_symbol_gets_lipsdp_fft_on_both_sides() -> None:
    torch.manual_seed(5)
    net = _ChainThroughTranspose().eval()
    graph = load(_onnx(net, (1, 2, 8, 8)))
    walked = walk(graph, Settings(exact_limit=0, power_iterations=30))
    product = walked.output_bound(graph, walked.upper)
    result = blocks_bound(graph, walked.bounds, Limits(max_order=100, search_seconds=10.0))
    assert result.certified and result.value is not None and result.value < product
    methods = [(b["first"], b["method"]) for b in result.detail["blocks"]]
    assert [m for _, m in methods].count("lipsdp-fft") == 2, methods
    assert any(m == "product" and "ConvTranspose" in first for first, m in methods), methods
    assert _max_jacobian_norm(net, (1, 2, 8, 8), 11) <= result.value
