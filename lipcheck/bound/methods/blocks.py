"""The ``blocks`` method: cut the network where all of it passes through one tensor, bound each piece with the
tightest certified method that applies to it, and multiply.

If every path from the input to the output goes through the tensors c_1, …, c_{m−1} (the *cuts*), the model is the
composition f_m∘…∘f_1 of the pieces between them, so L ≤ Π L(f_j) for any certified L(f_j). For each piece:

- ``product``: the AutoLip product of its layers, as the walker composed it (always available);
- ``composed``: a run of linear pieces (Conv → BatchNorm → Conv, GlobalAveragePool → Flatten → Gemm, a residual
  block whose branches are linear, …) is ONE operator, materialized with an error bound
  (:mod:`.linear`) and bounded as a whole;
- ``lipsdp``: a chain of composed linear operators and element-wise slope-restricted activations gets the
  LipSDP-Neuron certificate (:mod:`.lipsdp`, the operators' error bounds enter the certificate);
- ``residual``: a block y = S·x + B(x) whose shortcut S is linear and whose branch B is linear → activation →
  linear gets a LipSDP-Neuron certificate of its own (:mod:`.residual`);
- ``residual-fft`` / ``lipsdp-fft``: the same two certificates for convolutional blocks and chains too large for
  dense LMIs, split by frequency (:mod:`.fourier`, :mod:`.fourier_chain`).

Each piece's factor is the least certified value; the report lists the pieces with the method that gave it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipcheck.bound.methods.base import MethodResult
from lipcheck.bound.methods.linear import DEFAULT_MAX_ENTRIES, DenseOperator, linear_reason, materialize, operator_norm
from lipcheck.bound.methods.slopes import slope_interval
from lipcheck.ir.graph import Graph, Node

METHOD = "blocks"
MIN_EVALUATIONS = 10
INF = math.inf


@dataclass
class Piece:
    """Nodes between two consecutive cuts (``entry`` → ``exit``), or a merged run of linear ones."""

    kind: str  # "linear", "activation", "other"
    nodes: list[Node]
    entry: str
    exit: str
    interval: tuple[float, float] | None = None  # for an activation


@dataclass
class Limits:
    """How far the method may go: entries of a materialized operator, LMI order, seconds of multiplier search."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_order: int = 4096
    search_seconds: float = 5.0
    total_seconds: float = 60.0
    max_evaluations: int | None = None  # of one chain's multiplier search (reproducible, unlike the seconds)
    # ... and at most evaluation_budget / Σ n_i³ of them (n_i the chain's hidden widths: an evaluation costs about
    # three symmetric eigenproblems per layer), at least MIN_EVALUATIONS: a cost cap that does not depend on the clock
    evaluation_budget: float | None = None
    solver: bool = False  # an SDP solver's multipliers as one more lipsdp candidate (the ``sdp`` extra, if installed)
    # residual-fft (:mod:`.fourier`): blocks whose check costs at most this Σ over frequencies of order³ (2 cores:
    # about 1 s per 4e9 and a few seconds of search besides)
    fft_max_work: float = 2e12


@dataclass
class PieceResult:
    first: str
    last: str
    nodes: int
    method: str
    value: float
    product: float
    seconds: float
    note: str = ""
    candidates: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first": self.first, "last": self.last, "nodes": self.nodes, "method": self.method,
                               "value": self.value, "product": self.product, "seconds": round(self.seconds, 4)}
        if self.note:
            out["note"] = self.note
        return out


# ---------------------------------------------------------------------------------------------- decomposition


def _activation_interval(node: Node, graph: Graph) -> tuple[float, float] | None:
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    var = [i for i in node.inputs if i and not graph.is_const(i)]
    if len(var) != 1 or node.inputs[0] != var[0]:
        return None
    if graph.shapes.get(node.outputs[0]) != graph.shapes.get(var[0]):
        return None
    if node.op_type == "PRelu":
        s = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if s is None:
            return None
        return (min(float(np.min(s)), 1.0), max(float(np.max(s)), 1.0))
    attrs: dict[str, float] = {}
    for key, value in node.attrs.items():
        try:
            attrs[key] = float(value)
        except (TypeError, ValueError):
            continue
    if node.op_type in ("Identity", "Dropout"):
        return None
    return slope_interval(node.op_type, attrs)


def decompose(graph: Graph) -> list[Piece] | str:
    """The pieces between consecutive cuts, linear runs merged; or why the graph cannot be cut."""
    floats = graph.float_inputs
    if len(floats) != 1 or len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return "the blocks method needs one float input, no other inputs and one output"
    source, sink = floats[0].name, graph.outputs[0].name
    # the nodes on a path to the output
    needed = {sink}
    live: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.outputs if o):
            live.append(node)
            needed.update(i for i in node.inputs if i and not graph.is_const(i))
    live.reverse()
    if not live:
        return "no node computes the output from the input"
    last_use: dict[str, int] = {}
    for i, node in enumerate(live):
        for name in node.inputs:
            if name and not graph.is_const(name):
                last_use[name] = i
    last_use[sink] = len(live)
    open_: set[str] = {source}
    cuts: list[tuple[int, str]] = [(-1, source)]
    for i, node in enumerate(live):
        open_.update(o for o in node.outputs if o)
        open_ = {t for t in open_ if last_use.get(t, -1) > i}
        if len(open_) == 1:
            cuts.append((i, next(iter(open_))))
    if cuts[-1][1] != sink:
        return "the output is not the last cut"
    pieces: list[Piece] = []
    for (i0, entry), (i1, exit_) in zip(cuts, cuts[1:]):
        nodes = live[i0 + 1:i1 + 1]
        if all(linear_reason(n, graph) is None for n in nodes):
            kind, interval = "linear", None
        elif len(nodes) == 1 and (interval := _activation_interval(nodes[0], graph)) is not None:
            kind = "activation"
        else:
            kind, interval = "other", None
        if kind == "linear" and pieces and pieces[-1].kind == "linear":
            pieces[-1].nodes.extend(nodes)
            pieces[-1].exit = exit_
            continue
        pieces.append(Piece(kind, list(nodes), entry, exit_, interval))
    return pieces


# ---------------------------------------------------------------------------------------------- factors


def product_factor(nodes: Sequence[Node], entry: str, bounds: Mapping[str, tuple[Any, tuple[int, ...]]]) -> float:
    """The walker's composition of ``nodes`` from ``entry`` (at 1): their AutoLip product, rounded up."""
    from lipcheck.bound.walker import mul_up, rss_up, sum_up

    env: dict[str, float] = {entry: 1.0}
    value = 0.0
    for node in nodes:
        found = bounds.get(node.name)
        if found is None:
            return INF
        bound, live = found
        factors = [mul_up(bound.gains[i], env.get(node.inputs[i], 0.0)) for i in live]
        value = (rss_up(factors) if bound.combine == "rss" else sum_up(factors)) if factors else 0.0
        for o in node.outputs:
            if o:
                env[o] = value
    return value


def _mul_up(a: float, b: float) -> float:
    from lipcheck.bound.walker import mul_up

    return mul_up(a, b)


def _compose_intervals(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    products = [a * b for a in first for b in second]
    return (min(products), max(products))


def _run_chain(units: Sequence[tuple[str, Any]], n_in: int) -> tuple[list[np.ndarray], list[np.ndarray | None],
                                                                       list[tuple[float, float]]]:
    """Weights, error bounds and slopes of a chain from units ("W", DenseOperator) / ("φ", interval)."""
    weights: list[np.ndarray] = []
    errors: list[np.ndarray | None] = []
    slopes: list[tuple[float, float]] = []
    pending: tuple[float, float] | None = None
    for kind, value in units:
        if kind == "φ":
            pending = value if pending is None else _compose_intervals(pending, value)
            if not weights:
                weights.append(np.eye(n_in))
                errors.append(None)
            continue
        if weights:
            slopes.append(pending if pending is not None else (1.0, 1.0))
        pending = None
        weights.append(value.matrix)
        errors.append(value.error)
    if pending is not None:
        slopes.append(pending)
        weights.append(np.eye(weights[-1].shape[0]))
        errors.append(None)
    return weights, errors, slopes


def blocks_bound(
    graph: Graph,
    bounds: Mapping[str, tuple[Any, tuple[int, ...]]],
    limits: Limits | None = None,
    on_piece: Callable[[str], None] | None = None,
) -> MethodResult:
    """The blocks method's certified bound (module docstring); ``bounds`` is the walker's ``WalkResult.bounds``."""
    from lipcheck.bound.methods.fourier import residual_fft_bound
    from lipcheck.bound.methods.lipsdp import Chain, lipsdp
    from lipcheck.bound.methods.residual import residual_bound

    limits = limits or Limits()
    start = time.perf_counter()
    pieces = decompose(graph)
    if isinstance(pieces, str):
        return MethodResult(METHOD, None, time.perf_counter() - start, False, {"reason": pieces})
    results: list[PieceResult] = []
    i = 0
    while i < len(pieces):
        # a run of linear and activation pieces is one chain
        j = i
        while j < len(pieces) and pieces[j].kind in ("linear", "activation"):
            j += 1
        if j == i:
            piece = pieces[i]
            if on_piece is not None:
                on_piece(piece.nodes[0].name)
            t0 = time.perf_counter()
            product = product_factor(piece.nodes, piece.entry, bounds)
            candidates = {"product": product}
            note = ""
            if time.perf_counter() - start < limits.total_seconds and math.isfinite(product):
                found = residual_bound(graph, piece, limits)
                if isinstance(found, str):
                    note = found
                    fft = residual_fft_bound(graph, piece, limits, start + limits.total_seconds)
                    if isinstance(fft, str):
                        note = found if fft == found else f"{found}; {fft}"
                    else:
                        candidates["residual-fft"] = fft
                else:
                    candidates["residual"] = found
            results.append(_best(piece.nodes, candidates, product, time.perf_counter() - t0, note))
            i += 1
            continue
        results.extend(_chain_run(graph, pieces[i:j], bounds, limits, start, on_piece, Chain, lipsdp))
        i = j
    value = 1.0
    for r in results:
        value = _mul_up(value, r.value)
    product = 1.0
    for r in results:
        product = _mul_up(product, r.product)
    detail = {"blocks": [r.as_dict() for r in results], "product": product}
    if not math.isfinite(value):
        return MethodResult(METHOD, None, time.perf_counter() - start, False, {**detail, "reason": "unbounded"})
    return MethodResult(METHOD, value, time.perf_counter() - start, True, detail)


def _best(nodes: Sequence[Node], candidates: dict[str, float], product: float, seconds: float,
          note: str = "") -> PieceResult:
    method = min(candidates, key=lambda k: (candidates[k], k != "product"))
    return PieceResult(nodes[0].name, nodes[-1].name, len(nodes), method, candidates[method], product, seconds,
                       note if method == "product" else "", dict(candidates))


def _windows(graph: Graph, run: Sequence[Piece], max_order: int) -> list[list[Piece]]:
    """The run cut into consecutive windows whose chain LMI (entry size + activation sizes) has order at most
    ``max_order``, each as long as it can be (a window that cannot fit holds one piece)."""
    windows: list[list[Piece]] = []
    current: list[Piece] = []
    order = 0
    for piece in run:
        size = int(math.prod(graph.shape(piece.entry)))
        if not current:
            current, order = [piece], size + (size if piece.kind == "activation" else 0)
            continue
        extra = size if piece.kind == "activation" else 0
        if order + extra <= max_order:
            current.append(piece)
            order += extra
        else:
            windows.append(current)
            current, order = [piece], size + extra
    if current:
        windows.append(current)
    return windows


def _chain_run(graph: Graph, run: Sequence[Piece], bounds: Mapping[str, tuple[Any, tuple[int, ...]]],
               limits: Limits, start: float, on_piece: Callable[[str], None] | None,
               chain_cls: Any, lipsdp_fn: Any) -> list[PieceResult]:
    """Factors of a run of linear pieces and activations, window by window (:func:`_windows`): a run whose whole LMI
    is over the order limit may still hold sub-chains that fit (a CNN's later, smaller layers)."""
    results: list[PieceResult] = []
    windows = _windows(graph, run, limits.max_order)
    split: list[PieceResult] | None = None
    if len(windows) > 1 and time.perf_counter() - start < limits.total_seconds:
        # a run over the dense limit: the whole of it frequency by frequency first (far cheaper than the windows)
        fft = _fft_chain(graph, run, bounds, limits, start)
        if fft is not None:
            return fft
        split = _fft_segments(graph, run, bounds, limits, start, on_piece, chain_cls, lipsdp_fn)
    for window in windows:
        results.extend(_chain_window(graph, window, bounds, limits, start, on_piece, chain_cls, lipsdp_fn))
    if split is not None and _total(split) < _total(results):
        # the stretches by lipsdp-fft beat the dense windows (under `auto`, whose windows are small; with
        # --method blocks the windows can win: strided_dilated_depthwise 23.0 by windows, 67.7 by stretches)
        return split
    if len(windows) > 1 and any(p.kind == "activation" for p in run) and any(p.kind == "linear" for p in run):
        order = int(math.prod(graph.shape(run[0].entry))) + sum(
            int(math.prod(graph.shape(p.entry))) for p in run if p.kind == "activation")
        note = f"the chain's LMI of order {order} is over the limit {limits.max_order}: {len(windows)} windows"
        results[0].note = f"{results[0].note}; {note}" if results[0].note else note
    return results


def _total(results: Sequence[PieceResult]) -> float:
    total = 1.0
    for r in results:
        total = _mul_up(total, r.value)
    return total


def _conv_segments(graph: Graph, run: Sequence[Piece]) -> list[list[Piece]]:
    """The run cut around its linear pieces that are not one Conv (+ BatchNormalization, a constant Pad before it),
    e.g. a ConvTranspose or a pooling: each of those alone, the stretches between them as they are."""
    from lipcheck.bound.methods.fourier import _spec

    segments: list[list[Piece]] = [[]]
    for piece in run:
        if piece.kind == "linear" and isinstance(_spec(graph, list(piece.nodes), piece.entry, piece.exit), str):
            segments.extend([[piece], []])
        else:
            segments[-1].append(piece)
    return [seg for seg in segments if seg]


def _fft_segments(graph: Graph, run: Sequence[Piece], bounds: Mapping[str, tuple[Any, tuple[int, ...]]],
                  limits: Limits, start: float, on_piece: Callable[[str], None] | None,
                  chain_cls: Any, lipsdp_fn: Any) -> list[PieceResult] | None:
    """A run that is not one lipsdp-fft chain, cut by :func:`_conv_segments`: each stretch of convs and activations
    by lipsdp-fft where it applies, the rest window by window. None when no stretch is a chain (the caller's
    windows then span the whole run)."""
    segments = _conv_segments(graph, run)
    if len(segments) < 2:
        return None
    ffts = [_fft_chain(graph, seg, bounds, limits, start) if len(seg) > 2 else None for seg in segments]
    if all(f is None for f in ffts):
        return None
    results: list[PieceResult] = []
    for seg, fft in zip(segments, ffts, strict=True):
        if fft is not None:
            results.extend(fft)
            continue
        for window in _windows(graph, seg, limits.max_order):
            results.extend(_chain_window(graph, window, bounds, limits, start, on_piece, chain_cls, lipsdp_fn))
    return results


def _fft_chain(graph: Graph, run: Sequence[Piece], bounds: Mapping[str, tuple[Any, tuple[int, ...]]],
               limits: Limits, start: float) -> list[PieceResult] | None:
    """The run's convs and activations as one lipsdp-fft factor (:mod:`.fourier_chain`), a classifier head after
    them (a linear piece that is not one conv) keeping its product; None when it does not apply or is not below
    the run's product."""
    from lipcheck.bound.methods.fourier_chain import build_chain, chain_fft_bound

    t0 = time.perf_counter()
    body, head = list(run), []
    if isinstance(build_chain(graph, body), str) and len(body) > 2 and body[-1].kind == "linear":
        body, head = body[:-1], body[-1:]
    evaluations = limits.max_evaluations if limits.max_evaluations is not None else 80
    deadline = min(start + limits.total_seconds, t0 + limits.search_seconds)
    value = chain_fft_bound(graph, body, deadline, limits.fft_max_work, evaluations)
    if isinstance(value, str):
        return None
    nodes = [n for p in body for n in p.nodes]
    out = [PieceResult(nodes[0].name, nodes[-1].name, len(nodes), "lipsdp-fft", value,
                       product_factor(nodes, body[0].entry, bounds), time.perf_counter() - t0)]
    for piece in head:
        factor = product_factor(piece.nodes, piece.entry, bounds)
        out.append(PieceResult(piece.nodes[0].name, piece.nodes[-1].name, len(piece.nodes), "product", factor,
                               factor, 0.0))
    nodes_all = [n for p in run for n in p.nodes]
    return out if _total(out) < product_factor(nodes_all, run[0].entry, bounds) else None


def _chain_window(graph: Graph, run: Sequence[Piece], bounds: Mapping[str, tuple[Any, tuple[int, ...]]],
                  limits: Limits, start: float, on_piece: Callable[[str], None] | None,
                  chain_cls: Any, lipsdp_fn: Any) -> list[PieceResult]:
    """Factors of a run of linear pieces and activations: one lipsdp factor for the whole run when it is certified
    tighter than the pieces one by one (each linear piece composed into one operator where it can be)."""
    t_run = time.perf_counter()
    per_piece: list[PieceResult] = []
    units: list[tuple[str, Any]] = []
    # the chain's LMI order, known from the shapes: over the limit, only multi-layer linear pieces are materialized
    order = int(math.prod(graph.shape(run[0].entry))) + sum(
        int(math.prod(graph.shape(p.entry))) for p in run if p.kind == "activation")
    chain_fits = order <= limits.max_order
    dense_ok = True
    for piece in run:
        if on_piece is not None:
            on_piece(piece.nodes[0].name)
        t0 = time.perf_counter()
        product = product_factor(piece.nodes, piece.entry, bounds)
        candidates = {"product": product}
        note = ""
        if piece.kind == "activation":
            units.append(("φ", piece.interval))
        elif not chain_fits and len(piece.nodes) == 1:
            dense_ok = False  # the walker's certified σ is this layer's factor; no chain LMI to feed
        elif time.perf_counter() - start < limits.total_seconds:
            op = materialize(graph, piece.nodes, piece.entry, piece.exit, limits.max_entries)
            if isinstance(op, DenseOperator):
                units.append(("W", op))
                if len(piece.nodes) > 1:  # a single layer's certified σ is the walker's already
                    candidates["composed"] = operator_norm(op)[0]
            else:
                dense_ok, note = False, op
        else:
            dense_ok, note = False, "the method's time limit was reached"
        per_piece.append(_best(piece.nodes, candidates, product, time.perf_counter() - t0, note))
    piecewise = 1.0
    for r in per_piece:
        piecewise = _mul_up(piecewise, r.value)
    has_activation = any(kind == "φ" for kind, _ in units)
    has_weight = any(kind == "W" for kind, _ in units)
    if not chain_fits and has_activation and any(p.kind == "linear" for p in run) and per_piece:
        per_piece[0].note = per_piece[0].note or f"lipsdp not run: LMI of order {order} (limit {limits.max_order})"
    if not (chain_fits and dense_ok and has_activation and has_weight) or (
            time.perf_counter() - start >= limits.total_seconds):
        return per_piece
    n_in = int(math.prod(graph.shape(run[0].entry)))
    weights, errors, slopes = _run_chain(units, n_in)
    nodes = [n for p in run for n in p.nodes]
    product = product_factor(nodes, run[0].entry, bounds)
    remaining = max(0.5, min(limits.search_seconds, limits.total_seconds - (time.perf_counter() - start)))
    evaluations = limits.max_evaluations
    if limits.evaluation_budget is not None:
        cube = float(sum(int(w.shape[0]) ** 3 for w in weights[:-1]))
        by_cost = max(MIN_EVALUATIONS, int(limits.evaluation_budget / max(cube, 1.0)))
        evaluations = by_cost if evaluations is None else min(evaluations, by_cost)
    try:
        result = lipsdp_fn(chain_cls(tuple(weights), tuple(slopes), tuple(errors)), time_limit=remaining,
                           max_evaluations=evaluations, solver=limits.solver)
    except (ArithmeticError, ValueError, RuntimeError, MemoryError):
        return per_piece
    if not result.certified or result.value is None or not result.value < piecewise:
        return per_piece
    candidates = {"product": product, "pieces": piecewise, "lipsdp": float(result.value)}
    best = _best(nodes, candidates, product, time.perf_counter() - t_run)
    if "stopped" in result.detail:
        best.note = str(result.detail["stopped"])  # the value depends on the machine's speed
    return [best]
