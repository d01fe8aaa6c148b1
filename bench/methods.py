"""Bench of the composition methods on MLP chains: product bound, LipSDP-Neuron (certified), time, lower bound.

    python bench/methods.py [--seed 0] [--quick]
    python bench/methods.py --solver [--solver-order 1000]   # the sdp extra's multipliers, certified

Models (fixed seeds):
  mnist-like  ReLU MLP 784-50-10 (mnist-like-4: 784-500-200-50-10, with a LipSDP-Layer reference) trained with
              torch (Adam, 8 epochs) on a synthetic 10-class 28×28 data set
              (scikit-learn's digits are not installed here; the classes are smooth blob prototypes with random
              intensity, shifts and noise).
  deep-10/20  random ReLU MLPs of 10 / 20 weight layers, widths drawn from 64..128, He-normal weights, input 64,
              output 10.
Lower bounds are true ‖J(x)‖₂ at real input points (never above the Lipschitz constant):
  - 1 hidden layer, W_1 of full row rank: every activation pattern is reached by some x, so a local search over
    patterns (single flips, random restarts) followed by x = W_1⁺(z − b_1) for a z of that sign pattern gives a point
    whose Jacobian norm we then compute from the model itself;
  - otherwise: gradient ascent on ‖J_β(x)‖₂ of the network with ReLU replaced by softplus_β (β raised along the way),
    measuring the true ReLU Jacobian at every iterate.
"""

from __future__ import annotations

import argparse
import math
import os
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before numpy / torch load: small matrices, a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lipcheck.bound.methods.lipsdp import Chain, _sequence_numpy, lipsdp, product_bound  # noqa: E402


def mnist_like_net(
    seed: int = 0, epochs: int = 8, hidden: tuple[int, ...] = (50,)
) -> list[tuple[np.ndarray, np.ndarray]]:
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    protos = []
    for _ in range(10):
        img = np.zeros((28, 28))
        for _ in range(4):
            cy, cx, s = gen.uniform(0.2, 0.8), gen.uniform(0.2, 0.8), gen.uniform(0.05, 0.15)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        protos.append(img / img.max())
    n = 12000
    labels = gen.integers(0, 10, n)
    data = np.empty((n, 28, 28))
    for i, c in enumerate(labels):
        img = np.roll(protos[c], tuple(gen.integers(-2, 3, 2)), axis=(0, 1)) * gen.uniform(0.6, 1.0)
        data[i] = np.clip(img + 0.15 * gen.standard_normal((28, 28)), 0, 1)
    torch.manual_seed(seed)
    widths = (784, *hidden, 10)
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [torch.nn.Linear(widths[i], widths[i + 1]), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    x = torch.tensor(data.reshape(n, 784), dtype=torch.float32)
    y = torch.tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, 128):
            idx = perm[s:s + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    print(f"mnist-like {'-'.join(map(str, widths))}: training accuracy {acc:.3f}")
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in model if isinstance(m, torch.nn.Linear)]


def random_deep_net(layers: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    gen = np.random.default_rng(seed)
    widths = [64] + [int(gen.integers(64, 129)) for _ in range(layers - 1)] + [10]
    return [(gen.standard_normal((widths[i + 1], widths[i])) * math.sqrt(2.0 / widths[i]),
             0.1 * gen.standard_normal(widths[i + 1])) for i in range(layers)]


def jacobians(net: list[tuple[np.ndarray, np.ndarray]], xs: np.ndarray) -> np.ndarray:
    """True Jacobians (B, d_out, d_in) of the ReLU net at the rows of ``xs`` (derivative 0 at exactly 0)."""
    pre = []
    h = xs
    for w, b in net[:-1]:
        z = h @ w.T + b
        pre.append(z)
        h = np.maximum(z, 0)
    g = np.broadcast_to(net[-1][0], (len(xs),) + net[-1][0].shape).copy()
    for (w, _), z in zip(reversed(net[:-1]), reversed(pre)):
        g = (g * (z > 0)[:, None, :]) @ w
    return g


def lower_one_hidden(net: list[tuple[np.ndarray, np.ndarray]], seconds: float, seed: int = 0) -> float:
    (w1, b1), (w2, _) = net
    if np.linalg.matrix_rank(w1) < w1.shape[0]:
        return 0.0
    gen = np.random.default_rng(seed)
    h = w1 @ w1.T
    n = w1.shape[0]

    def value(d: np.ndarray) -> float:
        m = (w2 * d) @ h @ (w2 * d).T
        return float(np.linalg.eigvalsh(m)[-1])

    best_d, best = np.ones(n), -1.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        d = np.asarray(gen.random(n) < 0.5, dtype=float)
        v = value(d)
        improved = True
        while improved:
            improved = False
            for j in gen.permutation(n):
                d[j] = 1 - d[j]
                nv = value(d)
                if nv > v + 1e-15:
                    v, improved = nv, True
                else:
                    d[j] = 1 - d[j]
        if v > best:
            best, best_d = v, d.copy()
    z = np.where(best_d > 0, 1.0, -1.0)
    x = np.linalg.lstsq(w1, z - b1, rcond=None)[0]
    j = jacobians(net, x[None])[0]
    return float(np.linalg.norm(j, 2))


def lower_ascent(net: list[tuple[np.ndarray, np.ndarray]], seconds: float, seed: int = 0, batch: int = 64) -> float:
    torch.manual_seed(seed)
    ws = [(torch.tensor(w), torch.tensor(b)) for w, b in net]
    d_in = net[0][0].shape[1]
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = torch.randn(batch, d_in, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.05)
        for step in range(100):
            beta = 2.0 * 1.05**step
            h, g_parts = x, []
            for w, b in ws[:-1]:
                z = h @ w.T + b
                g_parts.append(torch.sigmoid(beta * z))
                h = torch.nn.functional.softplus(z, beta=beta)
            g = ws[-1][0].expand(batch, -1, -1)
            for (w, _), s in zip(reversed(ws[:-1]), reversed(g_parts)):
                g = (g * s[:, None, :]) @ w
            loss = -torch.linalg.matrix_norm(g, ord=2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 9:
                jt = jacobians(net, x.detach().numpy())
                best = max(best, float(np.linalg.norm(jt, 2, axis=(1, 2)).max()))
            if time.perf_counter() > end:
                break
    return best


def lipsdp_layer(chain: Chain, starts: int = 4, seed: int = 0) -> tuple[float, float]:
    """(value, seconds) of LipSDP-Layer: the same LMI with one scalar multiplier per layer (T_i = t_i·I), the t_i
    searched by Nelder-Mead over the feasible parametrization of lipsdp's elimination (θ = 0, γ_i free), best of a few
    starts. A reference computed here (no SDP solver installed), not a certificate: a local optimum of a convex
    problem's reparametrization, so its value can only be at or above LipSDP-Layer's true optimum."""
    from scipy.optimize import minimize

    start = time.perf_counter()
    weights = list(chain.weights)
    scale = [2.0 ** -round(math.log2(np.linalg.norm(w))) for w in weights]  # well-scaled, exactly undone below
    normalized = [w * s for w, s in zip(weights, scale)]
    slopes = list(chain.slopes)
    zeros = [np.zeros(w.shape[0]) for w in normalized[:-1]]

    def objective(z: np.ndarray) -> float:
        gammas = 0.01 + 0.98 / (1.0 + np.exp(-z))
        c, _ = _sequence_numpy(normalized, slopes, [(th, float(g)) for th, g in zip(zeros, gammas)])
        return math.log(c) if math.isfinite(c) and c > 0 else 1e9

    gen = np.random.default_rng(seed)
    best = math.inf
    for k in range(starts):
        z0 = np.zeros(len(zeros)) if k == 0 else gen.normal(0.0, 1.0, len(zeros))
        res = minimize(objective, z0, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 2000})
        best = min(best, float(res.fun))
    value = math.exp(0.5 * best) / math.prod(scale)
    return value, time.perf_counter() - start


def run(name: str, net: list[tuple[np.ndarray, np.ndarray]], lower_seconds: float, iterations: int,
        time_limit: float = 60.0, layer_reference: bool = False) -> dict[str, float]:
    chain = Chain(tuple(w for w, _ in net), tuple((0.0, 1.0) for _ in net[:-1]))
    product = product_bound(chain)
    result = lipsdp(chain, iterations=iterations, time_limit=time_limit)
    if layer_reference:
        layer, layer_seconds = lipsdp_layer(chain)
        print(f"{name:12s} LipSDP-Layer reference (scalar multipliers, Nelder-Mead) {layer:.6g} in {layer_seconds:.1f} s"
              f"; lipsdp / LipSDP-Layer {(result.value or math.nan) / layer:.4f}")
    if len(net) == 2:
        lower = max(lower_one_hidden(net, lower_seconds / 2), lower_ascent(net, lower_seconds / 2))
    else:
        lower = lower_ascent(net, lower_seconds)
    row = {"product": product, "lipsdp": result.value or math.nan, "seconds": result.seconds, "lower": lower,
           "eclipse_fast": float(result.detail.get("eclipse_fast", math.nan))}  # type: ignore[arg-type]
    print(f"{name:12s} product {product:12.5g}  eclipse-fast {row['eclipse_fast']:12.5g}  lipsdp {row['lipsdp']:12.5g}"
          f" ({result.seconds:6.2f} s, certified={result.certified}, evals={result.detail.get('evaluations')})"
          f"  lower {lower:12.5g}  lipsdp/lower {row['lipsdp'] / lower if lower else math.nan:9.6f}"
          f"  lipsdp/product {row['lipsdp'] / product:6.3f}")
    return row


def solver_runs(seed: int, max_order: int) -> None:
    """--solver: lipsdp with and without the SDP solver's multipliers (the ``sdp`` extra), on small random chains and
    sample_models/mlp.onnx; the solver's own (unverified) value beside the certified ones."""
    from lipcheck.bound.methods import sdp

    if not sdp.available():
        print(f"--solver: the sdp extra is not installed ({sdp.INSTALL_HINT})")
        return
    sdp.MAX_ORDER = max_order
    gen = np.random.default_rng(seed)
    chains = {}
    for dims in ((2, 10, 30, 20, 2), (64, 64, 64, 10)):
        ws = tuple(gen.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1))
        chains["-".join(map(str, dims))] = Chain(ws, ((0.0, 1.0),) * (len(dims) - 2))
    try:
        import onnx
        from onnx import numpy_helper

        here = os.path.dirname(os.path.abspath(__file__))
        model = onnx.load(os.path.join(here, "..", "sample_models", "mlp.onnx"))
        inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
        ws = tuple(inits[k] for k in ("1.weight", "3.weight", "5.weight"))
        chains["sample mlp"] = Chain(ws, ((0.0, 1.0),) * 2)
    except (OSError, KeyError):
        pass
    for name, chain in chains.items():
        plain = lipsdp(chain)
        solved = lipsdp(chain, solver=True)
        print(f"{name:12s} lipsdp {plain.value:.6g} ({plain.seconds:.1f} s)  with solver {solved.value:.6g} "
              f"({solved.seconds:.1f} s; {solved.detail.get('solver')} {solved.detail.get('solver_status')}, its own "
              f"value {solved.detail.get('solver_value', math.nan):.6g} not verified; certified by "
              f"{solved.detail.get('multipliers')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer optimizer iterations and lower-bound seconds")
    parser.add_argument("--lower-seconds", type=float, default=20.0)
    parser.add_argument("--solver", action="store_true", help="only: lipsdp with and without the SDP solver extra")
    parser.add_argument("--solver-order", type=int, default=1000, help="largest LMI order given to the solver")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.solver:
        solver_runs(args.seed, args.solver_order)
        return
    iterations = 100 if args.quick else 300
    lower_seconds = 5.0 if args.quick else args.lower_seconds
    run("mnist-like", mnist_like_net(args.seed), lower_seconds, iterations)
    run("mnist-like-4", mnist_like_net(args.seed, hidden=(500, 200, 50)), lower_seconds, iterations,
        time_limit=50.0, layer_reference=True)
    for layers in (10, 20):
        run(f"deep-{layers}", random_deep_net(layers, args.seed), lower_seconds, iterations)


if __name__ == "__main__":
    main()
