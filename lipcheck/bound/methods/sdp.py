"""LipSDP-Neuron solved by an SDP solver (the optional ``sdp`` extra: cvxpy with Clarabel, interior point, or SCS).

The solver minimizes ρ subject to P(ρ, T) ⪰ 0 (the block-tridiagonal matrix of :mod:`lipcheck.bound.methods.lmi`,
one non-negative multiplier per neuron) and returns an approximate point. Its ρ is NOT reported: the multipliers go
to :func:`lipcheck.bound.methods.lipsdp.lipsdp` as one more candidate, and only the float64 Cholesky certificate there
(ρ raised by a margin until it passes) produces a value. A solver that fails, is missing, or returns garbage only
loses that candidate.

Without the extra, :func:`available` is False and lipsdp uses its own first-order search alone.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np

INSTALL_HINT = "pip install 'lipcheck[sdp]'"
SOLVERS = ("CLARABEL", "SCS")
# Clarabel (interior point, accurate) forms a Newton system over the PSD cone's order²/2 slack entries: fine for
# small LMIs, out of memory and time beyond a few hundred; SCS (first-order, a few digits) takes over above
# CLARABEL_MAX_ORDER (one eigendecomposition of the order per iteration). Measured on 2 cores: Clarabel, order 62
# (2-10-30-20-2) 1-3 s; SCS at 1e-4, order 192 (64-64-64-10) 5 s, order 352 (sample_models/mlp.onnx) 20 s.
CLARABEL_MAX_ORDER = 150
# the largest order lipsdp hands to a solver by default (seconds, like the rest of --method lipsdp); solve() takes
# a larger max_order, or MAX_ORDER is set, by callers that accept tens of seconds (bench/methods.py)
MAX_ORDER = CLARABEL_MAX_ORDER
# SCS's tolerance: a few digits are enough, since lipsdp restarts its own search from the solver's multipliers
SCS_EPS = 1e-4


def available() -> bool:
    """True when cvxpy and one of :data:`SOLVERS` can be imported (checked without importing them)."""
    try:
        return importlib.util.find_spec("cvxpy") is not None and any(
            importlib.util.find_spec(m) is not None for m in ("clarabel", "scs")
        )
    except (ImportError, ValueError):  # a broken installation
        return False


def solve(
    weights: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], *, time_limit: float = 60.0,
    max_order: int | None = None,
) -> tuple[float, list[np.ndarray], dict[str, object]] | None:
    """(ρ̂, [T_i / ρ̂], info) at the solver's approximate optimum of LipSDP-Neuron for the chain, or None when the
    solver is missing, fails, or the LMI's order is over ``max_order`` (default :data:`MAX_ORDER`, read at the call).
    Nothing here is certified: the multipliers are normalized as lipsdp's candidates are (P(c, c·T) is the matrix
    to certify for c = ρ̂).

    Solvers stop at absolute tolerances near 1e-8: give them a balanced problem (every diagonal block of P of order
    one at a good point, as :func:`lipcheck.bound.methods.lipsdp._balance` makes it), not raw weights."""
    sizes = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights[:-1]]
    order = sum(sizes)
    if not slopes or order > (MAX_ORDER if max_order is None else max_order) or not available():
        return None
    try:
        import cvxpy as cp
    except Exception:  # noqa: BLE001 - a broken optional dependency only loses this candidate
        return None
    start = time.perf_counter()
    k = len(weights)
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(int(w.shape[0]), nonneg=True) for w in weights[:-1]]
    blocks: list[list[object]] = [[None] * k for _ in range(k)]
    for i in range(k):
        d = sizes[i]
        terms = []
        if i == 0:
            terms.append(rho * np.eye(d))
        else:
            terms.append(cp.diag(ts[i - 1]))
        if i < k - 1:
            alpha, beta = slopes[i]
            a = alpha * beta
            if a != 0.0:
                w = weights[i]
                terms.append(a * (w.T @ cp.diag(ts[i]) @ w))
        else:
            terms.append(-(weights[k - 1].T @ weights[k - 1]))
        blocks[i][i] = sum(terms[1:], terms[0])
        if i > 0:
            alpha, beta = slopes[i - 1]
            m = 0.5 * (alpha + beta)
            lower = -m * (cp.diag(ts[i - 1]) @ weights[i - 1])
            blocks[i][i - 1] = lower
            blocks[i - 1][i] = lower.T
    for i in range(k):
        for j in range(k):
            if blocks[i][j] is None:
                blocks[i][j] = np.zeros((sizes[i], sizes[j]))
    matrix = cp.bmat(blocks)
    problem = cp.Problem(cp.Minimize(rho), [0.5 * (matrix + matrix.T) >> 0])
    installed = set(cp.installed_solvers())
    for name in SOLVERS if order <= CLARABEL_MAX_ORDER else SOLVERS[1:]:
        if name not in installed:
            continue
        options: dict[str, object] = {"time_limit": time_limit} if name == "CLARABEL" else {
            "time_limit_secs": time_limit, "eps_abs": SCS_EPS, "eps_rel": SCS_EPS}
        try:
            with warnings.catch_warnings():  # "solution may be inaccurate": the certificate decides, not the solver
                warnings.simplefilter("ignore")
                problem.solve(solver=name, **options)
        except Exception:  # noqa: BLE001 - solver errors (numerical, license, interface) lose this candidate
            continue
        value = rho.value
        if value is None or not math.isfinite(float(value)) or float(value) <= 0.0:
            continue
        value = float(value)
        mults = [np.maximum(np.asarray(t.value, dtype=np.float64), 0.0) / value for t in ts]
        if not all(np.all(np.isfinite(t)) for t in mults):
            continue
        info = {"solver": name.lower(), "solver_status": str(problem.status), "solver_value": math.sqrt(value),
                "solver_seconds": time.perf_counter() - start}
        return value, mults, info
    return None
