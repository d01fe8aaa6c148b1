"""Reference methods for a conv layer's spectral norm, timed on the same layers lipcheck analyses.

(a) ``reshaped_power``: what ``torch.nn.utils.parametrizations.spectral_norm`` computes: power iteration on the
    kernel reshaped to C_out × (C_in·k·k), float32, here 100 iterations (torch runs one per training forward).
    Fast, but a different quantity: the reshaped kernel's σ, not the conv operator's.
(b) ``circular_svd``: Sedghi, Gupta & Long (ICLR 2019): the circular convolution on an N×N grid, N = n + p_begin +
    p_end per dim, contains the zero-padded one, and its σ is the max over frequencies of σ_max of the C_out×C_in
    matrix of the kernel's 2-D DFT: a CERTIFIED upper bound. Solved literally: DFT of the kernel zero-padded to
    N×N, then ``numpy.linalg.svd(compute_uv=False)`` of every frequency's matrix, in float64. Only half of the
    frequencies (the rfft half: K̂(−ω) = conj K̂(ω) has the same singular values) — half the literal work, so
    ratios against it are conservative. Strided convs are bounded at stride 1 (still an upper bound: the strided
    operator is a row selection of the stride-1 one), which is looser than lipcheck's polyphase split.
(c) ``eigsh``: the EXACT reference: ``scipy.sparse.linalg.eigsh`` (k=1, which="LA", tol=1e-8, seeded random
    start) on the Gram operator of the smaller side of the zero-padded conv (float64 torch conv2d and
    conv_transpose2d, written here independently of lipcheck's operator), σ = √λ_max.

``python bench/references.py MODEL.onnx OUT.json [--layers all|quick|NAME,...] [--refs a,b,c]`` runs them on the
model's Conv layers (weights after lipcheck's BatchNorm folding) and writes one JSON record per layer (rewritten
after every layer, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

SVD_CHUNK_BYTES = 128 << 20  # complex frequency matrices per SVD call in (b)
EIGSH_TOL = 1e-8
RESHAPED_ITERATIONS = 100


@dataclass
class ConvLayer:
    name: str
    weight: np.ndarray  # (C_out, C_in/groups, kh, kw) float64, BN folded
    spatial: tuple[int, int]  # input H, W
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]
    pads_end: tuple[int, int]
    groups: int

    @property
    def out_spatial(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (n + b + e - (d * (k - 1) + 1)) // s + 1
            for n, b, e, d, k, s in zip(self.spatial, self.pads_begin, self.pads_end, self.dilations,
                                        self.weight.shape[2:], self.strides)
        )

    @property
    def n_in(self) -> int:
        return self.weight.shape[1] * self.groups * math.prod(self.spatial)

    @property
    def n_out(self) -> int:
        return self.weight.shape[0] * math.prod(self.out_spatial)

    def describe(self) -> dict[str, Any]:
        co, ci_g, kh, kw = self.weight.shape
        return {
            "name": self.name, "c_out": co, "c_in": ci_g * self.groups, "kernel": [kh, kw],
            "input": list(self.spatial), "output": list(self.out_spatial), "strides": list(self.strides),
            "pads": [*self.pads_begin, *self.pads_end], "dilations": list(self.dilations), "groups": self.groups,
            "n_in": self.n_in, "n_out": self.n_out,
        }


def conv_layers(model_path: str) -> list[ConvLayer]:
    """The model's 2-D Conv layers as lipcheck sees them: loaded, BatchNorm folded, pads resolved."""
    import lipcheck
    from lipcheck.ir.canonicalize import fold_batchnorm
    from lipcheck.rules.geometry import resolve_pads

    graph = fold_batchnorm(lipcheck.load(model_path))
    layers = []
    for node in graph.nodes:
        if node.op_type != "Conv" or node.inputs[1] not in graph.constants:
            continue
        w = np.asarray(graph.constants[node.inputs[1]], dtype=np.float64)
        if w.ndim != 4:
            continue  # the benchmark's references are 2-D
        spatial = tuple(graph.shapes[node.inputs[0]][2:])
        kernel = tuple(w.shape[2:])
        strides = tuple(int(v) for v in node.attr("strides", [1, 1]))
        dilations = tuple(int(v) for v in node.attr("dilations", [1, 1]))
        pb, pe = resolve_pads(node, spatial, kernel, strides, dilations)
        layers.append(ConvLayer(node.name, w, spatial, strides, dilations, pb, pe,  # type: ignore[arg-type]
                                int(node.attr("group", 1))))
    return layers


def quick_subset(layers: list[ConvLayer]) -> list[ConvLayer]:
    """One layer per kind: the first conv of each (input size, kernel, stride) combination."""
    seen: set[tuple] = set()
    out = []
    for layer in layers:
        key = (layer.spatial, layer.weight.shape[2:], layer.strides)
        if key not in seen:
            seen.add(key)
            out.append(layer)
    return out


# --------------------------------------------------------------------------------------------------------
# (a) reshaped-kernel power iteration, as torch's spectral_norm


def reshaped_power(layer: ConvLayer, iterations: int = RESHAPED_ITERATIONS, seed: int = 0) -> float:
    """torch's spectral_norm power method (parametrizations._SpectralNorm._power_method) on W.reshape(C_out, -1),
    in float32 like the module's weight, ``iterations`` steps from a seeded normal u; σ = uᵀ W v."""
    import torch
    import torch.nn.functional as F

    w = torch.from_numpy(layer.weight.astype(np.float32)).reshape(layer.weight.shape[0], -1)
    gen = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(w.shape[0], generator=gen), dim=0, eps=1e-12)
    v = F.normalize(torch.randn(w.shape[1], generator=gen), dim=0, eps=1e-12)
    with torch.no_grad():
        for _ in range(iterations):
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=1e-12)
            u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
        return float(torch.vdot(u, torch.mv(w, v)))


# --------------------------------------------------------------------------------------------------------
# (b) circular embedding, DFT + full SVD per frequency (Sedghi et al. 2019)


def circular_svd(layer: ConvLayer) -> tuple[float, dict[str, Any]]:
    """max over frequencies of σ_max(K̂(ω)) on the N = n + p_begin + p_end grid, stride taken as 1."""
    co, ci_g, kh, kw = layer.weight.shape
    g = layer.groups
    n1, n2 = (n + b + e for n, b, e in zip(layer.spatial, layer.pads_begin, layer.pads_end))
    dh, dw = layer.dilations
    wd = np.zeros((co, ci_g, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    wd[:, :, ::dh, ::dw] = layer.weight
    t0 = time.perf_counter()
    a = np.fft.rfft(wd, n=n2, axis=-1)  # (co, ci_g, kh_eff, n2//2 + 1): the FFT along the width
    v = a.shape[-1]
    # along the height: the DFT of kh_eff taps to all n1 frequencies, a chunk of rows at a time
    rows_per_chunk = max(1, SVD_CHUNK_BYTES // (16 * v * co * ci_g))
    best = 0.0
    fft_seconds = svd_seconds = 0.0
    fft_seconds += time.perf_counter() - t0
    taps = np.arange(wd.shape[2])
    a_c = co // g
    for u0 in range(0, n1, rows_per_chunk):
        t1 = time.perf_counter()
        u = np.arange(u0, min(n1, u0 + rows_per_chunk))
        phase = np.exp(-2j * np.pi * ((u[:, None] * taps[None, :]) % n1) / n1)  # (U, kh_eff)
        khat = np.tensordot(phase, a, axes=([1], [2]))  # (U, co, ci_g, V)
        khat = np.ascontiguousarray(khat.transpose(0, 3, 1, 2)).reshape(-1, co, ci_g)
        t2 = time.perf_counter()
        fft_seconds += t2 - t1
        for gi in range(g):  # block-diagonal over groups: max over the groups' blocks
            blocks = khat[:, gi * a_c:(gi + 1) * a_c, :]
            s = np.linalg.svd(blocks, compute_uv=False)[:, 0]
            best = max(best, float(s.max()))
        svd_seconds += time.perf_counter() - t2
    info = {"N": [n1, n2], "frequencies": n1 * v, "svd_shape": [a_c, ci_g], "dft_seconds": fft_seconds,
            "svd_seconds": svd_seconds, "stride_as_1": layer.strides != (1, 1)}
    return best, info


# --------------------------------------------------------------------------------------------------------
# (c) exact: eigsh on the Gram operator


class TorchConv:
    """x ↦ conv2d(zero_pad(x)) on flattened (C_in, H, W) float64 vectors, and its adjoint."""

    def __init__(self, layer: ConvLayer):
        import torch

        self.layer = layer
        self.w = torch.from_numpy(np.ascontiguousarray(layer.weight, dtype=np.float64))
        self.c_in = layer.weight.shape[1] * layer.groups
        self.c_out = layer.weight.shape[0]
        h, w = layer.spatial
        (pt, pl), (pbm, pr) = layer.pads_begin, layer.pads_end
        self.pad = (pl, pr, pt, pbm)
        self.padded = (h + pt + pbm, w + pl + pr)
        self.out = layer.out_spatial
        ke = [d * (k - 1) + 1 for d, k in zip(layer.dilations, layer.weight.shape[2:])]
        self.output_padding = tuple(p - ((o - 1) * s + k) for p, o, s, k in zip(self.padded, self.out,
                                                                                   layer.strides, ke))

    def forward(self, x: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            t = torch.from_numpy(x).reshape(1, self.c_in, *self.layer.spatial)
            t = F.pad(t, self.pad)
            y = F.conv2d(t, self.w, stride=self.layer.strides, dilation=self.layer.dilations,
                         groups=self.layer.groups)
            return y.reshape(-1).numpy()

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            t = torch.from_numpy(y).reshape(1, self.c_out, *self.out)
            x = F.conv_transpose2d(t, self.w, stride=self.layer.strides, dilation=self.layer.dilations,
                                   groups=self.layer.groups, output_padding=self.output_padding)
            (pt, pl), h, w = self.layer.pads_begin, *self.layer.spatial
            return np.ascontiguousarray(x[0, :, pt:pt + h, pl:pl + w].numpy()).reshape(-1)


def eigsh_exact(layer: ConvLayer, tol: float = EIGSH_TOL, seed: int = 0) -> tuple[float, dict[str, Any]]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    op = TorchConv(layer)
    count = [0]
    if layer.n_in <= layer.n_out:
        n, side = layer.n_in, "AᵀA"

        def matvec(v: np.ndarray) -> np.ndarray:
            count[0] += 1
            return op.adjoint(op.forward(np.ascontiguousarray(v, dtype=np.float64).ravel()))
    else:
        n, side = layer.n_out, "AAᵀ"

        def matvec(v: np.ndarray) -> np.ndarray:
            count[0] += 1
            return op.forward(op.adjoint(np.ascontiguousarray(v, dtype=np.float64).ravel()))

    v0 = np.random.default_rng(seed).standard_normal(n)
    lam = eigsh(LinearOperator((n, n), matvec=matvec, dtype=np.float64), k=1, which="LA", tol=tol, v0=v0,
                return_eigenvectors=False)
    return math.sqrt(max(float(lam[-1]), 0.0)), {"matvecs": count[0], "side": side, "dim": n}


# --------------------------------------------------------------------------------------------------------
# worker


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run(model_path: str, out_path: str, layers_spec: str = "all", refs: str = "a,b,c") -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    layers = conv_layers(model_path)
    load_seconds = time.perf_counter() - t0
    total = len(layers)
    if layers_spec == "quick":
        layers = quick_subset(layers)
    elif layers_spec != "all":
        wanted = set(layers_spec.split(","))
        layers = [layer for layer in layers if layer.name in wanted]
    chosen = {r.strip() for r in refs.split(",") if r.strip()}
    records: list[dict[str, Any]] = []
    doc = {"model": model_path, "conv_layers": total, "subset": layers_spec, "load_seconds": load_seconds,
           "records": records}
    for layer in layers:
        rec: dict[str, Any] = layer.describe()
        if "a" in chosen:
            value, secs = _timed(reshaped_power, layer)
            rec["a"] = {"value": value, "seconds": secs, "iterations": RESHAPED_ITERATIONS}
        if "b" in chosen:
            (value, info), secs = _timed(circular_svd, layer)
            rec["b"] = {"value": value, "seconds": secs, **info}
        if "c" in chosen:
            (value, info), secs = _timed(eigsh_exact, layer)
            rec["c"] = {"value": value, "seconds": secs, "tol": EIGSH_TOL, **info}
        records.append(rec)
        with open(out_path, "w") as f:
            json.dump(doc, f)
        print(f"  ref {layer.name}: " + ", ".join(
            f"({k}) {rec[k]['value']:.6g} in {rec[k]['seconds']:.2f}s" for k in ("a", "b", "c") if k in rec),
            file=sys.stderr, flush=True)
    with open(out_path, "w") as f:
        json.dump(doc, f)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--layers", default="all", help="all, quick (one per kind) or comma-separated node names")
    ap.add_argument("--refs", default="a,b,c")
    args = ap.parse_args(argv)
    run(args.model, args.out, args.layers, args.refs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

