"""The empirical lower bound, old search against new, at several budgets.

    python bench/lower.py [--budgets 1,5,20] [--models mnist,tiny,mlp,cnn_bn] [--old-rev 9db71d4]
                          [--out-dir bench/.models] [--threads 1]

Models: ``mnist`` a 784-50-10 ReLU MLP trained (seeded torch, Adam lr 1e-2, 30 epochs) on 6000 synthetic
28×28 "digits" (10 blocky random prototypes in [0, 1], shifted by up to 3 pixels, heavy noise, clipped; no
sklearn or torchvision needed), the shape of LipSDP's MNIST net; ``tiny`` a random 2-10-30-20-2 bias-free ReLU
net; ``mlp`` and ``cnn_bn`` from ``sample_models/``. For each budget s,
``lipcheck.analyze(path, lower_bound=True, lower_bound_seconds=s)`` runs once with the current search and once
with the search of ``--old-rev`` (its ``lipcheck/bound/lower.py``, read with ``git show`` and swapped in for
the call), and the certified upper bound is printed for context.
Times are the lower-bound stage's own (``lower_bound.seconds``) and the whole ``analyze`` call.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

OLD_REV = "9db71d4"  # the last commit with the fixed schedule (8 samples, 4 x 100 ascent steps)


def mnist_like(path: Path, seed: int = 0, epochs: int = 30) -> None:
    """A 784-50-10 ReLU MLP trained on synthetic digits, exported to ONNX (input 1x784)."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (10, 7, 7)) ** 3
    protos = np.kron(coarse, np.ones((4, 4)))  # 10 blocky 28x28 prototypes
    labels = rng.integers(0, 10, 6000)
    shifts = rng.integers(-3, 4, (6000, 2))
    images = np.stack([np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts, strict=True)])
    images = np.clip(images + 0.8 * rng.standard_normal(images.shape), 0, 1).reshape(6000, 784)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.tensor(images, dtype=torch.float32), torch.tensor(labels)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for k in range(0, len(x), 100):
            idx = perm[k:k + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 784),), str(path), dynamo=False, opset_version=17)


def tiny_bias_free(path: Path, seed: int = 1) -> None:
    """A random 2-10-30-20-2 ReLU net without biases (MatMul), N(0, 1/fan_in) weights."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = (2, 10, 30, 20, 2)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], ["y" if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def region_walk_2d(path: Path) -> float:
    """The exact constant of the ``tiny`` net (2 inputs, bias-free ReLU): its activation regions are sectors;
    walk the unit circle region by region (in a region each unit's input is linear in x, so the next zero
    crossing is exact) and take the max of ||J|| over them."""
    import math

    import onnx
    from onnx import numpy_helper

    ws = [numpy_helper.to_array(i).astype(np.float64).T for i in onnx.load(str(path)).graph.initializer]
    best, theta = 0.0, 1e-7
    while theta < 2 * math.pi + 1e-7:
        g, h, ahead = np.eye(2), np.array([math.cos(theta), math.sin(theta)]), math.inf
        for w in ws[:-1]:
            z, gz = w @ h, w @ g
            for row in gz:
                psi = math.atan2(row[1], row[0])
                for zero in (psi + math.pi / 2, psi - math.pi / 2):
                    t = (zero - theta) % (2 * math.pi)
                    if t > 1e-12:
                        ahead = min(ahead, t)
            on = (z > 0).astype(np.float64)
            h, g = on * z, on[:, None] * gz
        best = max(best, float(np.linalg.svd(ws[-1] @ g, compute_uv=False)[0]))
        theta += ahead + 1e-10
    return best


def old_lower(rev: str) -> ModuleType:
    """``lipcheck/bound/lower.py`` as of ``rev``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:lipcheck/bound/lower.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("_lipcheck_lower_old", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:lipcheck/bound/lower.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def run(path: Path, seconds: float, lower: Any | None) -> dict[str, Any]:
    import lipcheck
    import lipcheck.bound.lower as current

    saved = current.empirical_lower_bound
    if lower is not None:
        current.empirical_lower_bound = lower.empirical_lower_bound  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        report = lipcheck.analyze(str(path), lower_bound=True, lower_bound_seconds=seconds)
        total = time.perf_counter() - t0
    finally:
        current.empirical_lower_bound = saved  # type: ignore[assignment]
    lb = report.lower_bound
    return {"value": lb.value if lb else None, "seconds": lb.seconds if lb else None, "total": total,
            "upper": report.upper_bound, "completed": lb.completed if lb else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1,5,20")
    parser.add_argument("--models", default="mnist,tiny,mlp,cnn_bn")
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--out-dir", type=Path, default=BENCH / ".models")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default). On a shared 2-core machine two threads "
                             "make the small products of the search 10-100x slower, for old and new alike")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in args.models.split(","):
        if name == "mnist":
            paths[name] = args.out_dir / "lower_mnist_784_50_10.onnx"
            if not paths[name].exists():
                mnist_like(paths[name])
        elif name == "tiny":
            paths[name] = args.out_dir / "lower_tiny_2_10_30_20_2.onnx"
            if not paths[name].exists():
                tiny_bias_free(paths[name])
        else:
            paths[name] = ROOT / "sample_models" / f"{name}.onnx"
    old = old_lower(args.old_rev)
    if "tiny" in paths:
        print(f"exact constant of tiny (region walk): {region_walk_2d(paths['tiny']):.6g}")
    print("| model | budget | old lower (s) | new lower (s) | new / old | certified upper | new upper / lower |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, path in paths.items():
        for seconds in budgets:
            a = run(path, seconds, old)
            b = run(path, seconds, None)

            def cell(r: dict[str, Any]) -> str:
                if r["value"] is None:
                    return "none"
                cut = "" if r["completed"] else ", cut"
                return f"{r['value']:.6g} ({r['seconds']:.2f} s{cut})"

            gain = f"{b['value'] / a['value']:.3f}" if a["value"] and b["value"] else "-"
            upper = b["upper"]
            ratio = f"{upper / b['value']:.3f}" if upper and b["value"] else "-"
            print(f"| {name} | {seconds:g} s | {cell(a)} | {cell(b)} | {gain} | "
                  f"{upper:.6g} | {ratio} |" if upper else f"| {name} | {seconds:g} | {cell(a)} | {cell(b)} | "
                  f"{gain} | unbounded | - |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
