"""Bench of the zero-padded certificate (lipcheck.norms.zeropad) on a model's k×k convs.

    python bench/zeropad.py [--model bench/.models/resnet50.onnx] [--max-gflop 20000] [--only 7.1,7.2]

For every Conv / ConvTranspose with a kernel larger than 1×1 (BatchNorm folded, as `analyze` sees it): σ exact
(Lanczos, as `analyze` computes it), the circular embedding's certified σ and its gap to exact (on the default grid
and on the smallest valid one, which `analyze` tries within `--tight-work`), then the banded
Cholesky certificate of the zero-padded operator itself, its gap, its work (GFLOP, from the plan), its time and
rate. Layers whose plan is above --max-gflop are listed with their cost and left out. Prints a table, the
largest gaps before and after, the total time and the peak RSS. Build the model first with
`python bench/models.py resnet50 --out-dir bench/.models`.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcheck.ir.canonicalize import fold_batchnorm, fold_magnitudes  # noqa: E402
from lipcheck.loaders import load_model  # noqa: E402
from lipcheck.norms.conv import (  # noqa: E402
    ConvGeometry,
    _circular_bound,
    _ConvOperator,
    _default_grid,
    _smallest_grid,
    conv_norms,
)
from lipcheck.norms.zeropad import plan_zero_pad, zero_padded_sigma  # noqa: E402
from lipcheck.rules.geometry import resolve_pads  # noqa: E402


def conv_layers(path: str) -> list[tuple[str, np.ndarray, ConvGeometry]]:
    graph = fold_magnitudes(fold_batchnorm(load_model(path)))
    out = []
    for node in graph.nodes:
        if node.op_type != "Conv":
            continue
        w = np.asarray(graph.constants[node.inputs[1]], dtype=np.float64)
        if max(w.shape[2:]) == 1:
            continue
        spatial = tuple(graph.shapes[node.inputs[0]][2:])
        r = len(spatial)
        kernel = tuple(int(k) for k in w.shape[2:])
        strides = tuple(int(v) for v in node.attr("strides", [1] * r))
        dil = tuple(int(v) for v in node.attr("dilations", [1] * r))
        pb, pe = resolve_pads(node, spatial, kernel, strides, dil)
        out.append((node.name, w, ConvGeometry(spatial, strides, dil, pb, pe, int(node.attr("group", 1)))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench/.models/resnet50.onnx")
    parser.add_argument("--max-gflop", type=float, default=20000.0)
    parser.add_argument("--only", default="", help="comma-separated substrings of the layer names to keep")
    args = parser.parse_args()
    keep = [s for s in args.only.split(",") if s]
    layers = [x for x in conv_layers(args.model) if not keep or any(s in x[0] for s in keep)]
    print(f"{args.model}: {len(layers)} k×k convs; certificate budget {args.max_gflop:g} GFLOP per layer")
    print(f"{'layer':28} {'input':>14} {'circular gap':>12} {'smallest grid':>13} {'zero-pad gap':>12} {'GFLOP':>8} "
          f"{'seconds':>8} {'GFLOP/s':>8}")
    worst_before = worst_after = 0.0
    total = 0.0
    for name, w, geom in layers:
        res = conv_norms(w, geom, tight_work=0.0)
        op = _ConvOperator(w, geom)
        exact = res.sigma_exact
        shape = "×".join(str(v) for v in (op.c_in, *op.n))
        if exact is None:
            print(f"{name[:28]:28} {shape:>14}  no exact value ({res.exact_skipped})")
            continue
        circular = _circular_bound(op)
        smallest = circular if _smallest_grid(op) == _default_grid(op) else _circular_bound(op, grid=_smallest_grid(op))
        small_gap = f"{smallest / exact - 1.0:13.2e}"
        plan = plan_zero_pad(op.kernel, op.n, op.out, op.strides, op.dilations, op.pads_begin, int(w.shape[1]),
                             op.c_out // op.groups, op.groups)
        gflop = plan.flops / 1e9
        before = res.sigma_upper / exact - 1.0
        worst_before = max(worst_before, before)
        if gflop > args.max_gflop:
            worst_after = max(worst_after, min(res.sigma_upper, smallest) / exact - 1.0)
            print(f"{name[:28]:28} {shape:>14} {before:12.2e} {small_gap} {'(skipped)':>12} {gflop:8.0f}")
            continue
        t0 = time.perf_counter()
        tight = zero_padded_sigma(w, op.n, op.out, op.strides, op.dilations, op.pads_begin, op.groups, exact,
                                  max_flops=math.inf)
        seconds = time.perf_counter() - t0
        total += seconds
        after = min(res.sigma_upper, smallest, tight if tight is not None else math.inf) / exact - 1.0
        worst_after = max(worst_after, after)
        gap = f"{tight / exact - 1.0:12.2e}" if tight is not None else f"{'failed':>12}"
        print(f"{name[:28]:28} {shape:>14} {circular / exact - 1.0:12.2e} {small_gap} {gap} {gflop:8.0f} "
              f"{seconds:8.1f} "
              f"{gflop / seconds:8.0f}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"largest certified gap: {worst_before:.2e} before, {worst_after:.2e} with the smallest grid and the "
          f"zero-padded certificate; "
          f"certificates {total:.1f} s; peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
