"""Local bounds around points (``--around``): this tree against an older revision, per model.

    python bench/local.py [--models mnist,mlp,weight_norm] [--points 100] [--radius 0.1] [--old-rev e60de06~1]
                          [--out-dir bench/.models]

For each model, ``lipcheck.analyze(path, around=points, radius=r, lower_bound=False, exact_limit=0)`` runs in a
subprocess of this tree and of a git worktree of ``--old-rev`` (made under ``bench/.worktrees``), and the table gives
the global certified bound, the median / max per-point certified local bound, the median ‖J(x)‖₂ at the points
(measured, a lower bound on every local constant), the median certified radius and the time of the around stage.

Models: ``mnist`` (bench/lower.py's 784-50-10 ReLU MLP trained on synthetic digits; its points are digits of the
same generator: data where the model works), ``mlp`` and ``weight_norm`` from ``sample_models/`` (uniform points
in [0, 1]).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

RUN = """
import json, sys, time
import numpy as np
import lipcheck
path, points, radius = sys.argv[1], np.load(sys.argv[2]), float(sys.argv[3])
t = time.perf_counter()
r = lipcheck.analyze(path, around=points, radius=radius, lower_bound=False, exact_limit=0)
a = r.around
ups = [p.upper_bound for p in a.points if p.upper_bound is not None]
print(json.dumps({"global": r.upper_bound, "local": ups, "jnorm": [p.jacobian_norm for p in a.points],
                  "radius": [p.certified_radius for p in a.points if p.certified_radius is not None],
                  "seconds": a.seconds, "total": time.perf_counter() - t}))
"""


def digits(n: int, seed: int = 1) -> np.ndarray:
    """n synthetic digits from bench/lower.py's generator (a different seed than its training set)."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 1, (10, 7, 7)) ** 3  # the same prototypes as the training data (seed 0)
    protos = np.kron(coarse, np.ones((4, 4)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-3, 4, (n, 2))
    images = np.stack([np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts, strict=True)])
    return np.clip(images + 0.8 * rng.standard_normal(images.shape), 0, 1).reshape(n, 1, 784)


def run(tree: Path, model: Path, points: Path, radius: float) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, str(model), str(points), str(radius)], cwd=tree,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mnist,mlp,weight_norm")
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--radius", type=float, default=0.1)
    ap.add_argument("--old-rev", default="e60de06~1")
    ap.add_argument("--out-dir", default=str(BENCH / ".models"))
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_tree = BENCH / ".worktrees" / args.old_rev.replace("~", "_")
    if not old_tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old_rev], cwd=ROOT, check=True,
                       capture_output=True)
    rng = np.random.default_rng(0)
    print(f"{args.points} points, L2 radius {args.radius}; medians (max) over the points")
    print("| model | global | old local | new local | ‖J(x)‖ | old radius | new radius | old s | new s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        if name == "mnist":
            model = out_dir / "lower_mnist.onnx"
            if not model.exists():
                from bench.lower import mnist_like

                mnist_like(model)
            pts = digits(args.points)
        else:
            import lipcheck

            model = ROOT / "sample_models" / f"{name}.onnx"
            shape = lipcheck.load(str(model)).inputs[0].shape
            pts = rng.random((args.points,) + tuple(shape[1:]))
        path = out_dir / f"points_{name}.npy"
        np.save(path, pts)
        old, new = run(old_tree, model, path, args.radius), run(ROOT, model, path, args.radius)

        def med(v: list) -> str:
            return f"{np.median(v):.4g} ({np.max(v):.4g})" if v else "—"

        print(f"| {name} | {new['global']:.4g} | {med(old['local'])} | {med(new['local'])} | "
              f"{np.median(new['jnorm']):.4g} | {np.median(old['radius']):.3g} | {np.median(new['radius']):.3g} | "
              f"{old['seconds']:.1f} | {new['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
