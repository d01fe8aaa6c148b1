"""``--method``: which composition methods run on a graph, and their results as the report's ``BoundResult``.

- ``product``: the AutoLip product composed by :mod:`lipcheck.bound.walker` (always computed: it also gives the
  per-layer cumulative bounds and the estimate).
- ``lipsdp``: the product, plus the LipSDP-Neuron bound (:mod:`.lipsdp`) when the graph is an MLP chain
  (:func:`.chain.find_chain`); otherwise a result without a value whose reason says why the graph is not a chain.
  With the ``sdp`` extra installed (:mod:`.sdp`), an SDP solver's multipliers are one more candidate, certified the
  same way (also under ``blocks``; never under ``auto``, whose time it would exceed).
- ``blocks``: the product, plus :mod:`.blocks`: the model cut where all of it passes through one tensor, each piece
  bounded by the tightest of its product, its composed linear operator, lipsdp on a chain of composed operators and
  activations, and the residual-block LMI; the pieces' factors multiplied.
- ``auto`` (the default): the product, plus lipsdp on chains small enough to take a few seconds: at most
  :data:`AUTO_MAX_HIDDEN` hidden neurons and an LMI of order (input + hidden neurons) at most :data:`AUTO_MAX_ORDER`,
  with the multiplier search stopped after :data:`AUTO_TIME_LIMIT` seconds (what it found is still certified); on
  graphs that are not chains, ``blocks`` within :data:`AUTO_BLOCKS` limits.

The report's ``upper_bound`` is the least certified value of them (:func:`tightest`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from lipcheck.errors import UsageError
from lipcheck.ir.graph import Graph
from lipcheck.report.model import BoundResult

METHODS = ("auto", "product", "lipsdp", "blocks")
PRODUCT = "product"
LIPSDP = "lipsdp"
BLOCKS = "blocks"
# auto's size rule, measured on 2 cores (one thread): 784-50-10 0.5 s, 256-64-32-10 0.7 s, 784-256-256-10 5 s
# (the search stopped by the time limit), 784-1024-1024-10 8 s, 3072-1024-512-10 15 s (LMI of order 4608)
AUTO_MAX_HIDDEN = 1024
AUTO_MAX_ORDER = 4096
AUTO_TIME_LIMIT = 5.0  # seconds of multiplier search under auto
EXPLICIT_TIME_LIMIT = 60.0  # ... and under --method lipsdp
# blocks under auto: operators up to 2^21 entries (16 MiB), LMIs up to order 1024, each chain's multiplier search
# at most 100 evaluations and 5e8 / Σ n_i³ of them (n_i its hidden widths; reproducible, unlike a time limit; 15 s as
# a safety net), 20 s in all; under --method blocks: 2^25 entries, order 8192, 300 L-BFGS iterations or 60 s per
# chain, 600 s in all. Measured on 2 cores, auto: tests/torch_arch.SmallNet (hidden widths 256, 64) 1.9 s, the same
# at width 6 (384, 96) 1.7 s; --method blocks: the sample ResNet block (two residual LMIs of order 4096) 14 s.
# residual-fft (a conv block's LMI frequency by frequency) on blocks whose check costs at most 2e9 (Σ over
# frequencies of order³) under auto: the sample ResNet block 1.8 s; 2e12 under --method blocks: ResNet-18 at 224²
# 175 s for its eight blocks.
AUTO_BLOCKS = {"max_entries": 2**21, "max_order": 1024, "search_seconds": 15.0, "total_seconds": 20.0,
               "max_evaluations": 100, "evaluation_budget": 5e8, "fft_max_work": 2e9}
EXPLICIT_BLOCKS = {"max_entries": 2**25, "max_order": 8192, "search_seconds": 60.0, "total_seconds": 600.0,
                   "solver": True}
LINEAR_OPS = ("Gemm", "MatMul")  # the chain's weighted layers (chain.find_chain accepts no other)


def check_method(method: str) -> str:
    """``method`` lower-cased if it is one of :data:`METHODS`; else a :class:`UsageError`."""
    name = str(method).strip().lower()
    if name not in METHODS:
        raise UsageError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return name


def product_result(upper: float, seconds: float) -> BoundResult:
    """The walker's composed bound as a method result (``upper`` = inf: unbounded, no value)."""
    finite = math.isfinite(upper)
    return BoundResult(PRODUCT, upper if finite else None, seconds, finite,
                       {} if finite else {"reason": "unbounded"})


def tightest(bounds: tuple[BoundResult, ...] | list[BoundResult]) -> float | None:
    """The least certified value (None when no method certified one)."""
    values = [b.value for b in bounds if b.certified and b.value is not None and math.isfinite(b.value)]
    return min(values) if values else None


def chain_sizes(weights: Sequence[np.ndarray]) -> tuple[int, int]:
    """(hidden neurons, LMI order = input size + hidden neurons) of a chain's weight matrices."""
    shapes = [w.shape for w in weights]
    hidden = sum(int(s[0]) for s in shapes[:-1])
    return hidden, int(shapes[0][1]) + hidden


def lipsdp_result(
    graph: Graph, method: str, on_start: Callable[[], None] | None = None
) -> tuple[BoundResult | None, str | None]:
    """(lipsdp's result or None when it does not run, a note for the report or None) for ``method``; ``on_start`` is
    called just before the (seconds-long) search starts, e.g. to show it in a progress bar."""
    from lipcheck.bound.methods.chain import chain_bound, find_chain

    method = check_method(method)
    if method in (PRODUCT, BLOCKS):
        return None, None
    found = find_chain(graph)
    if isinstance(found, str):
        if method == LIPSDP:
            reason = f"not an MLP chain: {found}"
            return (BoundResult(LIPSDP, None, 0.0, False, {"reason": reason}),
                    f"lipsdp does not apply ({reason}): the bound is the product's; --method blocks bounds the "
                    "model block by block")
        return None, None
    chain, _ = found
    hidden, order = chain_sizes(chain.weights)
    if method == "auto" and (hidden > AUTO_MAX_HIDDEN or order > AUTO_MAX_ORDER):
        return None, (f"lipsdp not run by --method auto: the chain has {hidden} hidden neurons and an LMI of order "
                      f"{order} (auto's limits: {AUTO_MAX_HIDDEN} and {AUTO_MAX_ORDER}); --method lipsdp runs it")
    limit = AUTO_TIME_LIMIT if method == "auto" else EXPLICIT_TIME_LIMIT
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    try:
        result = chain_bound(graph, time_limit=limit, solver=method == LIPSDP)
    except (ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:  # numerics that refuse these weights
        reason = f"{type(exc).__name__}: {exc}"
        return (BoundResult(LIPSDP, None, time.perf_counter() - start, False, {"reason": reason}),
                f"lipsdp failed ({reason}): the bound is the product's")
    if result is None:  # pragma: no cover - find_chain said it is a chain
        return None, None
    detail = dict(result.detail)
    if result.value is not None and not math.isfinite(result.value):
        result = replace(result, value=None, certified=False)
        detail["reason"] = "the bound overflows float64 (above 1.8e308)"
    if not result.certified or result.value is None:
        reason = str(detail.get("reason", "no certificate"))
        detail["reason"] = reason
        return (BoundResult(LIPSDP, None, result.seconds, False, detail),
                f"lipsdp certified nothing ({reason}): the bound is the product's")
    return BoundResult(LIPSDP, result.value, result.seconds, True, detail), None


def blocks_result(
    graph: Graph, method: str, walk_bounds: Mapping[str, object], on_piece: Callable[[str], None] | None = None
) -> tuple[BoundResult | None, str | None]:
    """(the blocks method's result or None when it does not run, a note or None): under ``blocks``, and under
    ``auto`` for graphs that are not MLP chains (lipsdp covers those whole)."""
    from lipcheck.bound.methods.blocks import Limits, blocks_bound
    from lipcheck.bound.methods.chain import find_chain, masked_node

    method = check_method(method)
    if method in (PRODUCT, LIPSDP):
        return None, None
    if method == "auto" and not isinstance(find_chain(graph), str):
        return None, None
    masked = masked_node(graph)
    if masked is not None:
        return (BoundResult(BLOCKS, None, 0.0, False, {"reason": masked}),
                f"blocks does not apply ({masked}): the bound is the product's")
    limits = Limits(**(AUTO_BLOCKS if method == "auto" else EXPLICIT_BLOCKS))  # type: ignore[arg-type]
    start = time.perf_counter()
    try:
        result = blocks_bound(graph, walk_bounds, limits, on_piece=on_piece)  # type: ignore[arg-type]
    except (ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return (BoundResult(BLOCKS, None, time.perf_counter() - start, False, {"reason": reason}),
                f"blocks failed ({reason}): the bound is the product's")
    detail = dict(result.detail)
    if method == "auto" and (not result.certified or result.value is None
                             or not result.value < float(detail.get("product", math.inf))):
        # auto shows blocks only where it gained something; it says when larger limits might
        limited = [b for b in detail.get("blocks", []) if "limit" in str(b.get("note", ""))]
        if not limited:
            return None, None
        return None, (f"blocks under auto gained nothing within its limits ({limited[0]['first']}: "
                      f"{limited[0]['note']}); --method blocks tries larger ones")
    if not result.certified or result.value is None:
        reason = str(detail.get("reason", "no certificate"))
        detail["reason"] = reason
        return (BoundResult(BLOCKS, None, result.seconds, False, detail),
                f"blocks certified nothing ({reason}): the bound is the product's")
    return BoundResult(BLOCKS, result.value, result.seconds, True, detail), None


# ------------------------------------------------------------------------------------ normalize support


def chain_layers(graph: Graph) -> list[str]:
    """The names of a chain's weighted nodes (the matrices lipsdp sees, in order)."""
    return [node.name for node in graph.nodes if node.op_type in LINEAR_OPS]


def scaled_lipsdp(value: float, graph: Graph, layer_scale: Mapping[str, float]) -> float:
    """lipsdp's certified ``value`` for ``graph`` after multiplying the weights of some chain layers by factors ≥ 0,
    predicted as value·Πc_i (rounded up). LipSDP's LMI is exactly homogeneous in each layer's weight, biases play no
    part: with W_i → c_iW_i and C_i = c_1⋯c_i, the congruence Δx_i → C_iΔx_i maps a certificate (ρ, T_i) of the
    original chain to (C_k²ρ, C_k²T_i/C_i²) of the scaled one, whatever the slope intervals. The optimizer's own
    path is not homogeneous, so a fresh run can land a little above (or below) the prediction: normalize checks
    its plan with :func:`scale_graph` and a new run."""
    factor = 1.0
    for name in chain_layers(graph):
        factor *= layer_scale.get(name, 1.0)
    if factor == 0.0:
        return 0.0
    return math.nextafter(math.nextafter(value * factor, math.inf), math.inf)


def scale_graph(graph: Graph, layer_scale: Mapping[str, float]) -> Graph:
    """``graph`` with the constant weight (second input) of each chain layer named in ``layer_scale`` multiplied by
    its factor (each scaled node gets its own copy, so that a shared weight can take two factors)."""
    constants = dict(graph.constants)
    nodes = []
    for node in graph.nodes:
        c = layer_scale.get(node.name)
        if c is None or c == 1.0 or node.op_type not in LINEAR_OPS or len(node.inputs) < 2 \
                or node.inputs[1] not in constants:
            nodes.append(node)
            continue
        name = f"{node.inputs[1]}::scaled::{node.name}"
        constants[name] = constants[node.inputs[1]] * c
        nodes.append(replace(node, inputs=(node.inputs[0], name, *node.inputs[2:])))
    return replace(graph, nodes=tuple(nodes), constants=constants)
