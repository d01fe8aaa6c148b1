"""LipSDP-Neuron for MLP chains without an SDP solver: multipliers by a first-order method, value by a certificate.

For the LMI P(ρ, T) ⪰ 0 of :mod:`lipcheck.bound.methods.lmi`, fix ρ = 1 and eliminate the blocks one after the other
(block LDLᵀ of a block-tridiagonal matrix, as in ECLipsE, Xu & Sivaranjani, NeurIPS 2024). With K̂_1 = W_1W_1ᵀ,

    K_i = (I + a_i K̂_i T_i)⁻¹ K̂_i            (= W_i Z_{i−1}⁻¹ W_iᵀ, Z_{i−1} = Y_{i−1} + a_i W_iᵀT_iW_i, Y_0 = I)
    Y_i = T_i − m_i² T_i K_i T_i              (the Schur complement left in block i)
    K̂_{i+1} = W_{i+1} Y_i⁻¹ W_{i+1}ᵀ,

every leading part of P(1, T) without the −W_kᵀW_k term is ≻ 0 iff every Y_i ≻ 0, and then P(c, cT) ⪰ 0 for
c = λ_max(K̂_k): L ≤ √c. With T_i = s·D (D diagonal ≻ 0, A = D^{1/2}K̂_iD^{1/2}), Y_i = T^{1/2}(I − w_i²sA)(I + a_i sA)⁻¹
T^{1/2} with w_i = (β_i − α_i)/2, so Y_i ≻ 0 exactly when s < 1/(w_i²·λ_max(A)). We therefore parametrize
T_i = γ_i/(w_i²λ_max(A))·diag(exp θ_i) with γ_i ∈ (0.01, 0.99): every parameter value is feasible, γ_i = 1/2 and θ = 0
is ECLipsE-Fast's closed-form step (for α = 0), and log c is minimized over (θ, γ) by L-BFGS (torch autograd, float64).

Whatever the optimizer returns, the reported value is certified by :func:`lmi.certify_psd` on the full matrix at
ρ' = c(1+δ), T' = c(1+δ/2)T (strictly inside the cone: P(ρ', T') ⪰ (δ/2)·c·P̃(1, T) ≻ 0 in exact arithmetic), raising δ
until the floating-point Cholesky test passes, and reported as 2^E·√ρ' rounded up, where the weights were first scaled
by exact powers of two (W_i = 2^{e_i}Ŵ_i, E = Σe_i: the chain with Ŵ_i and the same slope intervals has constant ≤ √ρ',
and the slope argument is unchanged by the scaling).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipcheck.bound.methods.base import MethodResult
from lipcheck.bound.methods.linear import error_norm
from lipcheck.bound.methods.lmi import certify_psd
from lipcheck.bound.methods.slopes import is_valid_interval
from lipcheck.norms.margin import EPS64, as_float64, rounding_margin

METHOD = "lipsdp"
MARGINS = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_ITERATIONS = 300
SMALL_WIDTH = 256  # hidden widths up to this: the optimizer runs torch on one thread


@dataclass(frozen=True)
class Chain:
    """An MLP chain: W_1 … W_k (W_i of shape (d_i, d_{i−1})), and after each of W_1 … W_{k−1} an element-wise
    activation whose slopes lie in slopes[i] = (α, β)."""

    weights: tuple[np.ndarray, ...]
    slopes: tuple[tuple[float, float], ...]
    # entry-wise bounds |W_i,true − weights[i]| for weights that are computed (composed operators), or None: exact
    errors: tuple[np.ndarray | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.errors is not None:
            if len(self.errors) != len(self.weights):
                raise ValueError(f"{len(self.weights)} weights need {len(self.weights)} error bounds")
            for i, (w, e) in enumerate(zip(self.weights, self.errors)):
                if e is not None and (e.shape != w.shape or not np.all(e >= 0)):
                    raise ValueError(f"error bound {i + 1} must be a non-negative matrix of shape {w.shape}")
        if not self.weights:
            raise ValueError("a chain needs at least one weight matrix")
        if len(self.slopes) != len(self.weights) - 1:
            raise ValueError(
                f"{len(self.weights)} weights need {len(self.weights) - 1} activations, got {len(self.slopes)}"
            )
        for i, w in enumerate(self.weights):
            if w.ndim != 2:
                raise ValueError(f"weight {i + 1} is not a matrix (shape {w.shape})")
            if i and w.shape[1] != self.weights[i - 1].shape[0]:
                raise ValueError(f"weight {i + 1} of shape {w.shape} does not follow {self.weights[i - 1].shape}")
        for a, b in self.slopes:
            if not is_valid_interval(a, b):
                raise ValueError(f"invalid slope interval [{a}, {b}]")


def product_bound(chain: Chain) -> float:
    """Certified product (AutoLip) bound of the chain: Π σ_max(W_i)·Π max(|α_i|, |β_i|), by dense SVD with margin."""
    logs = 0.0
    errors = chain.errors or (None,) * len(chain.weights)
    for w, e in zip(chain.weights, errors):
        sigma = _sigma_upper(as_float64(w))
        if e is not None:
            sigma = _add_up(sigma, error_norm(e))
        if sigma == 0.0:
            return 0.0
        logs += math.log(sigma)
    for a, b in chain.slopes:
        s = max(abs(a), abs(b))
        if s == 0.0:
            return 0.0
        logs += math.log(s)
    try:
        value = math.exp(logs) * rounding_margin(4 * len(chain.weights) + 4)
    except OverflowError:
        return math.inf
    # below float64's range: the smallest positive float is still an upper bound
    return value if value > 0 else math.nextafter(0.0, 1.0)


def _sigma_upper(w: np.ndarray) -> float:
    if w.size == 0:
        return 0.0
    k = _scale_exponent(w)
    s = float(np.linalg.norm(np.ldexp(w, -k), 2)) * rounding_margin(max(w.shape))
    return math.ldexp(s, k)


def _add_up(a: float, b: float) -> float:
    return math.nextafter(a + b, math.inf) if b > 0 else a


def _scale_exponent(w: np.ndarray) -> int:
    """e such that 2^−e·w has Frobenius norm in [1/2, 1) (0 for a zero matrix)."""
    hi = float(np.max(np.abs(w))) if w.size else 0.0
    if hi == 0.0:
        return 0
    e0 = math.frexp(hi)[1]
    fro = float(np.linalg.norm(np.ldexp(w, -e0)))
    return e0 + math.frexp(fro)[1]


def lipsdp(chain: Chain, *, iterations: int = DEFAULT_ITERATIONS, time_limit: float = 60.0,
           max_evaluations: int | None = None, solver: bool = False) -> MethodResult:
    """Certified upper bound on the L2 Lipschitz constant of ``chain`` by LipSDP-Neuron multipliers (module docstring).

    The multiplier search stops after ``iterations`` L-BFGS iterations or ``max_evaluations`` objective evaluations
    (both reproducible), or after ``time_limit`` seconds (a safety net: the value then depends on the machine's speed,
    and ``detail["stopped"]`` says so).

    With ``solver`` (and the ``sdp`` extra installed, :mod:`.sdp`), an SDP solver's multipliers are one more candidate;
    every candidate is certified the same way and the least certified value is reported (``detail["multipliers"]``
    names which one; ``detail["solver_value"]`` is the solver's own, unverified number).

    Returns value None / certified False only if no certificate could be established (the caller then uses the
    product bound)."""
    start = time.perf_counter()
    detail: dict[str, object] = {"layers": len(chain.weights)}
    weights = [as_float64(w) for w in chain.weights]
    errors = list(chain.errors) if chain.errors is not None else [None] * len(weights)
    if any(w.size == 0 or (not np.any(w) and (e is None or not np.any(e))) for w, e in zip(weights, errors)):
        # a zero (or empty) layer: the chain is constant
        return MethodResult(METHOD, 0.0, time.perf_counter() - start, True, {**detail, "reason": "a zero layer"})
    exps = [_scale_exponent(w) for w in weights]
    normalized = [np.ldexp(w, -e) for w, e in zip(weights, exps)]
    norm_errors = [None if er is None else np.ldexp(er, -e) for er, e in zip(errors, exps)]
    if not all(np.array_equal(np.ldexp(n, e), w) for n, e, w in zip(normalized, exps, weights)) or not all(
        er is None or np.array_equal(np.ldexp(ne, e), er) for ne, e, er in zip(norm_errors, exps, errors)
    ):
        # the power-of-two scaling was not exact (entries spanning more than float64's range): no certificate
        return MethodResult(METHOD, None, time.perf_counter() - start, False, {**detail, "reason": "weight range"})
    slopes = list(chain.slopes)
    fast_c, fast_ts = _sequence_numpy(normalized, slopes, None)
    detail["eclipse_fast"] = _scaled_sqrt(fast_c, sum(exps))
    c, ts, info = _optimize(normalized, slopes, iterations=iterations, time_limit=time_limit,
                            max_evaluations=max_evaluations)
    detail.update(info)
    candidates = [(c, ts, "optimized"), (fast_c, fast_ts, "eclipse-fast")]
    if solver:
        # the solver and the polish share what is left of the time limit (at least a second each)
        solved = _solver_candidate(normalized, slopes, max(1.0, time_limit - (time.perf_counter() - start)),
                                   (fast_c, fast_ts))
        if solved is not None:
            # the solver's ρ̂ is only approximately feasible: its multipliers are kept, and their own value c is
            # recomputed by the elimination (the least ρ the LMI admits with them, up to the certificate's margin)
            detail.update(solved[2])
            name = solved[2]["solver"]
            candidates.append((_c_of(normalized, slopes, solved[1]), solved[1], f"sdp-solver ({name})"))
            # ... and polished: the first-order search restarted from the solver's multipliers
            z0 = _start_point(normalized, slopes, solved[1])
            if z0 is not None:
                remaining = max(1.0, time_limit - (time.perf_counter() - start))
                c2, ts2, info2 = _optimize(normalized, slopes, iterations=iterations, time_limit=remaining,
                                           max_evaluations=max_evaluations, z0=z0)
                detail["polish_evaluations"] = info2.get("evaluations")
                candidates.append((c2, ts2, f"sdp-solver ({name}), polished"))
    candidates.sort(key=lambda x: x[0] if math.isfinite(x[0]) else math.inf)
    best: tuple[float, float, str] | None = None  # (ρ', margin, origin) of the least certified ρ'
    for value, mults, origin in candidates:
        if not (math.isfinite(value) and value > 0) or (best is not None and value >= best[0]):
            continue
        for margin in MARGINS:
            rho = value * (1.0 + margin)
            if best is not None and rho >= best[0]:
                break
            t_cert = [t * (value * (1.0 + 0.5 * margin)) for t in mults]
            balanced = _balance(normalized, t_cert, rho, norm_errors)
            if balanced is not None and certify_psd(balanced[0], slopes, balanced[2], balanced[1], balanced[3]):
                best = (rho, margin, origin)
                break
    if best is not None:
        rho, margin, origin = best
        detail.update({"margin": margin, "multipliers": origin, "rho_normalized": rho, "exponent": sum(exps)})
        bound = _scaled_sqrt(rho, sum(exps))
        product = product_bound(chain)
        detail["product"] = product
        if product < bound:  # possible with identity-like slopes [1, 1]: the product is certified too
            bound, detail["multipliers"] = product, "product"
        if "solver_value" in detail:  # the solver's own number, unverified: shown at the chain's scale, labelled
            detail["solver_value"] = _scaled_sqrt(float(detail["solver_value"]) ** 2, sum(exps))
        return MethodResult(METHOD, bound, time.perf_counter() - start, True, detail)
    return MethodResult(METHOD, None, time.perf_counter() - start, False, {**detail, "reason": "no certificate"})


def _solver_candidate(
    weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], time_limit: float,
    guess: tuple[float, Sequence[np.ndarray]],
) -> tuple[float, list[np.ndarray], dict[str, object]] | None:
    """The SDP solver's (ρ̂, multipliers T/ρ̂, info) for the normalized chain, or None (extra missing, over its size
    limit, or the solver failed). The solver sees the LMI balanced at ``guess`` = (c, [T_i]) (ECLipsE-Fast's point,
    :func:`_balance`): its blocks are then of order one, which its absolute tolerances need; the congruence is
    undone on the multipliers it returns."""
    from lipcheck.bound.methods import sdp

    c, ts = guess
    if not (math.isfinite(c) and c > 0.0) or len(ts) != len(slopes):
        return None
    exps = _balance_exponents([t * c for t in ts], c)
    balanced = _balance(weights, [t * c for t in ts], c)
    if balanced is None:
        return None
    solved = sdp.solve(balanced[0], slopes, time_limit=time_limit)
    if solved is None:
        return None
    rho, mults, info = solved  # T̃_i/ρ̃ with T̃_i = 2^{2s_i}T_i, ρ̃ = 2^{2s_0}ρ
    if not (math.isfinite(rho) and rho > 0.0) or len(mults) != len(slopes) or not all(
        t.shape == (int(w.shape[0]),) and np.all(np.isfinite(t)) and np.all(t >= 0) and np.any(t > 0)
        for t, w in zip(mults, weights)
    ):
        return None  # garbage from the solver: the candidate is dropped
    back = [np.ldexp(t, 2 * exps[0] - 2 * exps[i + 1]) for i, t in enumerate(mults)]
    info = {**info, "solver_value": math.sqrt(math.ldexp(rho, -2 * exps[0]))}
    return math.ldexp(rho, -2 * exps[0]), back, info


def _balance_exponents(ts: Sequence[np.ndarray], rho: float) -> list[int]:
    """s_0 … s_{k−1} of :func:`_balance`: about −½·log₂ of ρ and of each block's largest multiplier."""

    def half_exponent(x: float) -> int:
        return -round(math.log2(x)) // 2 if x > 0 else 0

    return [half_exponent(rho)] + [half_exponent(float(np.max(t))) for t in ts]


def _balance(
    weights: Sequence[np.ndarray], ts: Sequence[np.ndarray], rho: float,
    errors: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], float, list[np.ndarray | None]] | None:
    """The same LMI after the congruence D·P·D with D = diag(2^{s_i} I) per block, so that every diagonal block is of
    order one and the Cholesky margin is relative to each block, not to the largest one.

    D·P(ρ, T; W)·D = P(ρ̃, T̃; W̃) with ρ̃ = 2^{2s_0}ρ, T̃_i = 2^{2s_i}T_i, W̃_i = 2^{s_{i−1}−s_i}W_i (i < k),
    W̃_k = 2^{s_{k−1}}W_k, and congruence keeps P ⪰ 0 either way: certifying the returned (W̃, T̃, ρ̃) certifies L ≤ √ρ
    for W. Powers of two scale exactly (the weights' error bounds scale with them); None if some scaled value under-
    or overflowed."""
    exps = _balance_exponents(ts, rho)
    k = len(weights)
    errors = list(errors) if errors is not None else [None] * k
    new_w: list[np.ndarray] = []
    new_e: list[np.ndarray | None] = []
    for i, w in enumerate(weights):
        e = exps[i] - exps[i + 1] if i < k - 1 else exps[k - 1]
        scaled = np.ldexp(w, e)
        if not np.array_equal(np.ldexp(scaled, -e), w) or not np.all(np.isfinite(scaled)):
            return None
        new_w.append(scaled)
        err = errors[i]
        if err is not None:
            scaled_err = np.ldexp(err, e)
            if not np.array_equal(np.ldexp(scaled_err, -e), err) or not np.all(np.isfinite(scaled_err)):
                return None
            new_e.append(scaled_err)
        else:
            new_e.append(None)
    new_t = [np.ldexp(t, 2 * exps[i + 1]) for i, t in enumerate(ts)]
    new_rho = math.ldexp(rho, 2 * exps[0])
    if math.ldexp(new_rho, -2 * exps[0]) != rho:
        return None
    return new_w, new_t, new_rho, new_e


def _scaled_sqrt(rho: float, exponent: int) -> float:
    """An upper bound on 2^exponent·√ρ (√ is correctly rounded: one step up covers it; ldexp is exact unless the
    result is subnormal, where a second step up covers it; overflow gives inf)."""
    if not math.isfinite(rho):
        return math.inf
    root = math.nextafter(math.sqrt(rho), math.inf)
    try:
        out = math.ldexp(root, exponent)
    except OverflowError:
        return math.inf
    return math.nextafter(out, math.inf) if out < 2.0**-1020 else out


def _sequence_numpy(
    weights: Sequence[np.ndarray],
    slopes: Sequence[tuple[float, float]],
    params: Sequence[tuple[np.ndarray, float]] | None,
) -> tuple[float, list[np.ndarray]]:
    """(c, [T_i]) of the elimination for parameters (θ_i, γ_i) (None: θ = 0, γ = 1/2, ECLipsE-Fast); c = inf if a
    Y_i is not numerically positive definite."""
    k_hat = weights[0] @ weights[0].T
    ts: list[np.ndarray] = []
    for i, (alpha, beta) in enumerate(slopes):
        theta, gamma = params[i] if params is not None else (np.zeros(k_hat.shape[0]), 0.5)
        d = np.exp(theta)
        r = np.sqrt(d)
        mu = float(np.linalg.eigvalsh(r[:, None] * k_hat * r[None, :])[-1])
        w2 = (0.5 * (beta - alpha)) ** 2
        if mu <= 0.0:
            return math.inf, ts
        t = (gamma / (mu * (w2 if w2 > 0 else 1.0))) * d
        step = _eliminate(k_hat, t, alpha, beta, weights[i + 1])
        if step is None:
            return math.inf, ts
        k_hat = step
        ts.append(t)
    return float(np.linalg.eigvalsh(k_hat)[-1]), ts


def _eliminate(
    k_hat: np.ndarray, t: np.ndarray, alpha: float, beta: float, w_next: np.ndarray
) -> np.ndarray | None:
    """One step of the elimination: the next K̂ from this one and the layer's multipliers ``t`` (None when
    Y = T − m²·T·K_z·T is not numerically positive definite)."""
    a, m = alpha * beta, 0.5 * (alpha + beta)
    kz = k_hat if a == 0.0 else np.linalg.solve(np.eye(len(t)) + a * k_hat * t[None, :], k_hat)
    kz = 0.5 * (kz + kz.T)
    y = np.diag(t) - m * m * (t[:, None] * kz * t[None, :])
    try:
        low = np.linalg.cholesky(y)
    except np.linalg.LinAlgError:
        return None
    x = _solve_lower(low, w_next.T)
    return np.asarray(x.T @ x)


def _solve_lower(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return np.asarray(solve_triangular(low, b, lower=True))


def _optimize(
    weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], *, iterations: int, time_limit: float,
    max_evaluations: int | None = None, z0: np.ndarray | None = None,
) -> tuple[float, list[np.ndarray], dict[str, object]]:
    """Minimize log c over (θ, γ) with L-BFGS from ECLipsE-Fast's point (or from ``z0``); returns (c, [T_i], info) at the best point
    seen (all evaluated in float64 by torch; the certificate re-checks everything)."""
    import torch

    if not slopes:
        c, ts = _sequence_numpy(weights, slopes, None)
        return c, ts, {"iterations": 0}
    from scipy.optimize import minimize

    start = time.perf_counter()
    ws = [torch.from_numpy(np.ascontiguousarray(w)) for w in weights]
    h1 = ws[0] @ ws[0].T
    sizes = [int(w.shape[0]) for w in ws[:-1]]
    n_theta = sum(sizes)
    best: dict[str, object] = {"c": math.inf, "ts": None}
    evaluations = 0

    def evaluate(thetas: Sequence[torch.Tensor], etas: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        k_hat = h1
        ts: list[torch.Tensor] = []
        for i, (alpha, beta) in enumerate(slopes):
            d = torch.exp(thetas[i])
            r = torch.sqrt(d)
            mu = torch.linalg.eigvalsh(r[:, None] * k_hat * r[None, :])[-1]
            w2 = (0.5 * (beta - alpha)) ** 2
            gamma = 0.01 + 0.98 * torch.sigmoid(etas[i])
            t = gamma / (mu * (w2 if w2 > 0 else 1.0)) * d
            a, m = alpha * beta, 0.5 * (alpha + beta)
            if a != 0.0:
                eye = torch.eye(len(t), dtype=torch.float64)
                kz = torch.linalg.solve(eye + a * k_hat * t[None, :], k_hat)
                kz = 0.5 * (kz + kz.T)
            else:
                kz = k_hat
            y = torch.diag(t) - m * m * (t[:, None] * kz * t[None, :])
            low, info = torch.linalg.cholesky_ex(y)
            if int(info) != 0:
                return torch.tensor(math.inf, dtype=torch.float64), ts
            x = torch.linalg.solve_triangular(low, ws[i + 1].T, upper=False)
            k_hat = x.T @ x
            ts.append(t)
        return torch.log(torch.linalg.eigvalsh(k_hat)[-1]), ts

    class _OutOfTime(Exception):
        pass

    stopped: list[str] = []

    infeasible = (1e300, np.zeros(n_theta + len(sizes)))

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        """log c and its gradient (torch autograd, float64) at the parameters z = (θ_1, …, θ_{k−1}, η)."""
        nonlocal evaluations
        if time.perf_counter() - start > time_limit:
            stopped.append("time limit")
            raise _OutOfTime
        if max_evaluations is not None and evaluations >= max_evaluations:
            raise _OutOfTime
        evaluations += 1
        params = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        try:
            loss, ts = evaluate(torch.split(params[:n_theta], sizes), params[n_theta:])
        except torch.linalg.LinAlgError:  # eigh can fail to converge far out on a line search: infeasible
            return infeasible
        if not torch.isfinite(loss):
            return infeasible
        c = math.exp(float(loss.detach()))
        if c < best["c"]:  # type: ignore[operator]
            best["c"] = c
            best["ts"] = [t.detach().numpy().copy() for t in ts]
        loss.backward()
        assert params.grad is not None
        return float(loss.detach()), params.grad.numpy().copy()

    threads = torch.get_num_threads()
    if max(w.shape[0] for w in weights) <= SMALL_WIDTH:
        # small matrices: the intra-op pool only spins (measured 10x slower with 2 threads on a loaded machine)
        torch.set_num_threads(1)
    try:
        # scipy's L-BFGS-B, not torch.optim's: importing torch.optim loads torch._dynamo (1.5 s)
        minimize(objective, np.zeros(n_theta + len(sizes)) if z0 is None else z0, jac=True, method="L-BFGS-B",
                 options={"maxiter": iterations, "maxcor": 20, "gtol": 1e-9, "ftol": 1e-9})
    except _OutOfTime:
        pass
    finally:
        torch.set_num_threads(threads)
    info: dict[str, object] = {"evaluations": evaluations, "optimize_seconds": time.perf_counter() - start}
    if stopped:
        info["stopped"] = f"the multiplier search was stopped by its time limit ({time_limit:g} s)"
    if best["ts"] is None:
        return math.inf, [], info
    # re-evaluate the best multipliers' c with the numpy elimination (what gets certified is c·T)
    ts_best: list[np.ndarray] = best["ts"]  # type: ignore[assignment]
    c_check = _c_of(weights, slopes, ts_best)
    return c_check, ts_best, info


def _start_point(
    weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], ts: Sequence[np.ndarray]
) -> np.ndarray | None:
    """The parameters z = (θ, η) of :func:`_optimize` closest to given multipliers T_i (θ_i = log T_i, γ_i from the
    layer's scale, clipped into (0.01, 0.99)), or None when they do not give a feasible elimination."""
    k_hat = weights[0] @ weights[0].T
    thetas: list[np.ndarray] = []
    etas: list[float] = []
    for i, (alpha, beta) in enumerate(slopes):
        t = np.asarray(ts[i], dtype=np.float64)
        top = float(np.max(t)) if t.size else 0.0
        if not (math.isfinite(top) and top > 0.0):
            return None
        t = np.maximum(t, top * 1e-9)
        mu = float(np.linalg.eigvalsh(np.sqrt(t)[:, None] * k_hat * np.sqrt(t)[None, :])[-1])
        w2 = (0.5 * (beta - alpha)) ** 2
        gamma = min(max(mu * (w2 if w2 > 0 else 1.0), 0.0105), 0.9895)
        frac = (gamma - 0.01) / 0.98
        thetas.append(np.log(t))
        etas.append(math.log(frac / (1.0 - frac)))
        t_used = gamma / (mu * (w2 if w2 > 0 else 1.0)) * t
        step = _eliminate(k_hat, t_used, alpha, beta, weights[i + 1])
        if step is None:
            return None
        k_hat = step
    return np.concatenate(thetas + [np.asarray(etas)])


def _c_of(weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], ts: Sequence[np.ndarray]) -> float:
    """c = λ_max(K̂_k) of the elimination for given multipliers T_i (inf if some Y_i is not positive definite)."""
    k_hat = weights[0] @ weights[0].T
    for i, (alpha, beta) in enumerate(slopes):
        step = _eliminate(k_hat, ts[i], alpha, beta, weights[i + 1])
        if step is None:
            return math.inf
        k_hat = step
    return float(np.linalg.eigvalsh(k_hat)[-1]) * (1.0 + 8.0 * EPS64)
