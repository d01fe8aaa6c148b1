"""Window geometry shared by convs and pools: ONNX auto_pad / pads / ceil_mode resolved to explicit pads."""

from __future__ import annotations

import math

import numpy as np

from lipcheck.ir.graph import Node


def resolve_pads(
    node: Node, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Explicit (pads_begin, pads_end) for Conv/pools, following the ONNX auto_pad rules."""
    r = len(spatial)
    auto = str(node.attr("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            out = math.ceil(n / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return tuple(begin), tuple(end)
    if auto == "VALID":
        return (0,) * r, (0,) * r
    pads = list(node.attr("pads", [0] * (2 * r)))
    return tuple(int(p) for p in pads[:r]), tuple(int(p) for p in pads[r:])


def spatial_attrs(node: Node, rank: int, kernel: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    k = tuple(int(v) for v in (node.attr("kernel_shape") or kernel or ()))
    return {
        "kernel": k,
        "strides": tuple(int(v) for v in node.attr("strides", [1] * rank)),
        "dilations": tuple(int(v) for v in node.attr("dilations", [1] * rank)),
    }


def max_window_overlap_1d(n: int, k: int, s: int, d: int, pb: int, n_out: int) -> int:
    """The largest number of windows (output positions × taps) that read one input position."""
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n_out):
        for j in range(k):
            x = i * s + j * d - pb
            if 0 <= x < n:
                counts[x] += 1
    return int(counts.max(initial=0))
