"""The optional SDP solver (lipcheck.bound.methods.sdp, the ``sdp`` extra) as a source of lipsdp multipliers.

The solver's number is never reported: its multipliers are certified like any other candidate. References: the
maximum over the slope box's vertices (tests/bound/test_methods_lipsdp.vertex_max), a lower bound on the constant of
every chain with those slopes; and the same chain without the solver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipcheck.bound.methods import sdp
from lipcheck.bound.methods.lipsdp import Chain, lipsdp, product_bound
from tests.bound.test_methods_lipsdp import vertex_max

needs_solver = pytest.mark.skipif(not sdp.available(), reason="the sdp extra (cvxpy, clarabel / scs) is not installed")


def tiny_chain(seed: int, slope: tuple[float, float], dims: tuple[int, ...] = (2, 5, 6, 2)) -> Chain:
    gen = np.random.default_rng(seed)
    ws = tuple(gen.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1))
    return Chain(ws, (slope,) * (len(ws) - 1))


@needs_solver
@pytest.mark.parametrize("slope", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.25), (-1.0, 1.0)])
@pytest.mark.parametrize("seed", range(2))
def test_solver_multipliers_certified_above_the_exact_reference(slope: tuple[float, float], seed: int) -> None:
    chain = tiny_chain(seed, slope)
    with_solver = lipsdp(chain, iterations=60, solver=True)
    without = lipsdp(chain, iterations=60)
    lower = vertex_max(list(chain.weights), list(chain.slopes))
    assert with_solver.certified and with_solver.value is not None and without.value is not None
    assert with_solver.value >= lower
    assert with_solver.value <= product_bound(chain) * (1 + 1e-9)
    # one more candidate can only help: the least certified value is reported
    assert with_solver.value <= without.value
    detail = with_solver.detail
    assert detail["solver"] in ("clarabel", "scs") and detail["solver_value"] > 0
    # an accurate solver's multipliers certify within a hair of its own (unverified) value
    assert with_solver.value == pytest.approx(detail["solver_value"], rel=1e-3)


@needs_solver
def test_solver_tightens_a_chain_the_first_order_search_leaves_loose() -> None:
    """2-10-30-20-2 ReLU (random, seed 0): the first-order search stops 0.4 % above LipSDP-Neuron's optimum, which
    Clarabel's multipliers certify (measured 2.8033 → 2.7913)."""
    gen = np.random.default_rng(0)
    dims = (2, 10, 30, 20, 2)
    ws = tuple(gen.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(len(dims) - 1))
    chain = Chain(ws, ((0.0, 1.0),) * 3)
    with_solver = lipsdp(chain, solver=True)
    without = lipsdp(chain)
    assert with_solver.value is not None and without.value is not None
    assert with_solver.value < without.value * (1 - 1e-3)
    assert str(with_solver.detail["multipliers"]).startswith("sdp-solver")


def test_without_the_extra_the_result_is_the_first_order_one(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = tiny_chain(0, (0.0, 1.0))
    monkeypatch.setattr(sdp, "available", lambda: False)
    assert sdp.solve(list(chain.weights), list(chain.slopes)) is None
    a = lipsdp(chain, iterations=60, solver=True)
    b = lipsdp(chain, iterations=60)
    assert a.value == b.value and "solver" not in a.detail


@pytest.mark.parametrize("kind", ["too_small", "random", "zeros", "nan"])
def test_a_wrong_solver_answer_never_lowers_the_certificate(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A solver that claims a ρ far below the truth, or returns garbage multipliers, only loses its candidate: the
    reported value stays certified (≥ the exact vertex maximum)."""
    chain = tiny_chain(1, (0.0, 1.0))
    gen = np.random.default_rng(5)

    def fake(weights, slopes, *, time_limit=60.0):  # type: ignore[no-untyped-def]
        sizes = [int(w.shape[0]) for w in weights[:-1]]
        if kind == "zeros":
            mults = [np.zeros(n) for n in sizes]
        elif kind == "nan":
            mults = [np.full(n, np.nan) for n in sizes]
        else:
            mults = [gen.uniform(0.0, 2.0, n) for n in sizes]
        return 1e-6, mults, {"solver": "fake", "solver_status": "optimal", "solver_value": 1e-3}

    monkeypatch.setattr(sdp, "available", lambda: True)
    monkeypatch.setattr(sdp, "solve", fake)
    result = lipsdp(chain, iterations=60, solver=True)
    assert result.certified and result.value is not None
    assert result.value >= vertex_max(list(chain.weights), list(chain.slopes))


@needs_solver
def test_cli_lipsdp_with_the_solver_labels_its_value_unverified(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import onnx
    from onnx import helper
    from typer.testing import CliRunner

    from lipcheck.cli.app import app
    from tests.helpers import float_model, rng_weights

    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    path = tmp_path / "chain.onnx"
    onnx.save(float_model(nodes, {"w1": rng_weights(12, 6), "w2": rng_weights(3, 12, seed=1)}, [1, 6], "y", [1, 3]),
              path)
    args = ["analyze", str(path), "--method", "lipsdp", "--no-lower-bound", "--no-progress"]
    out = CliRunner().invoke(app, [*args, "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    entry = next(b for b in data["bounds"] if b["method"] == "lipsdp")
    assert entry["certified"] and entry["solver"]["name"] in ("clarabel", "scs")
    assert entry["solver"]["value"] > 0
    assert data["upper_bound"] == min(b["value"] for b in data["bounds"] if b["value"] is not None)
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "not verified" in text.output
