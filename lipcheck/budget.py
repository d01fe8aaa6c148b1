"""Resource limits: estimate a stage's memory and time BEFORE running it, and refuse or skip instead of allocating.

A hostile or huge model (a 300-byte Conv with pads 1e9, a 4096-channel conv on a 256² input, an input shape of
1.6e9 elements) must not take the machine's memory or hours of CPU. This module holds

- the limits (:class:`ResourceLimits`: largest input tensor, seconds per stage, share of the available memory),
  switched off as a whole by ``--force`` (``enabled=False``: everything is computed, as before);
- cost models from shapes alone (:func:`conv_costs`, :func:`matrix_costs`, :func:`forward_cost`): bytes held and
  seconds, with throughputs measured on this project's kind of machine (2 cores; see the constants). They are
  rough (a factor of 2-3 either way): enough to tell 5 s from 5 hours, not to schedule;
- the session (:func:`session`) that the analysis opens around the walk: the rules ask it which stages of a layer
  to skip (:func:`plan_layer`), it logs a warning up front for long stages and keeps the skips for the notes.

A skipped stage never makes a number look better than it is: a skipped exact value is ``None`` with the reason, a
skipped certified method leaves another certified one (the reshaped-kernel bound or the Frobenius norm, always
cheap), and a skipped power iteration is replaced by a single probe ``‖A e‖`` (still an estimate from below).
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lipcheck.errors import LipcheckError

__all__ = [
    "LayerPlan",
    "ResourceLimitError",
    "ResourceLimits",
    "StageCost",
    "available_memory",
    "check_input_sizes",
    "conv_costs",
    "format_bytes",
    "format_seconds",
    "forward_cost",
    "matrix_costs",
    "plan_layer",
    "session",
]

log = logging.getLogger("lipcheck")

MAX_INPUT_ELEMENTS = 2**31  # a float input with more elements is refused (unless --force)
STAGE_SECONDS = 300.0  # a stage estimated longer than this is skipped (unless --force)
WARN_SECONDS = 60.0  # a stage estimated longer than this is announced on stderr before it runs
MEMORY_FRACTION = 0.8  # a stage may hold at most this share of the memory available when the run starts

# Throughputs (flop/s) measured on this project's kind of machine (2 shared cores): torch conv float32 9-18 GFLOP/s,
# float64 12-15 GFLOP/s; a float64 matmul 20-55 GFLOP/s. The lower ends, so that estimates err on the long side.
CONV_FLOPS_F32 = 1.0e10
CONV_FLOPS_F64 = 5.0e9
MATMUL_FLOPS_F64 = 2.0e10
ZERO_PAD_FLOPS = 1.0e11  # the banded Cholesky's blocks are large: 1.5e11 measured on 2 cores (3584² blocks)
LANCZOS_PRODUCTS = 400  # float64 Gram products of a Lanczos run (three-term recurrence): 50-380 on ResNet-50's convs
KRYLOV_STEPS = 30  # float32 Lanczos steps that refine power iteration's start (lipcheck.norms.conv._KRYLOV_STEPS)
KRYLOV_BYTES = 256 * 2**20  # their basis, kept up to this size (lipcheck.norms.conv._KRYLOV_BYTES)
GRAM_STEPS = 8  # Gram-iteration squarings a matrix typically takes
CIRCULAR_GRAM_SECONDS = 2e-3  # per frequency Gram, fixed: passes of batched power, Cholesky, bookkeeping
CIRCULAR_CUBE_SECONDS = 3.5e-9  # per frequency Gram, times r³ (r = its size); 256-channel 3×3 at 28²: 27 s
FORWARD_FLOPS_F64 = 1.0e10  # the lower bound's float64 evaluator (VGG-16: ~2 s a pass)
ELEMENT_SECONDS = 3e-8  # per tensor element of a forward pass, besides the flops (MLP at 1e6×16: 26 ns measured)
DRAW_SECONDS = 7e-8  # per random number drawn (numpy normal: 70 ns measured on 2 shared cores)
LOWER_BOUND_ACTIVATION_COPIES = 6  # a Jacobian step (double backward) holds about this many copies of activations
LOWER_BOUND_INPUT_COPIES = 8  # vectors of the input's size the search holds at once


class ResourceLimitError(LipcheckError):
    """A model or setting would need more memory or time than the limits allow; the message says which and how to
    force it."""


@dataclass(frozen=True)
class ResourceLimits:
    """Limits on what one analysis may take. ``enabled=False`` (``--force``) computes everything whatever it costs.

    ``memory_bytes``: the memory a stage may hold (``None``: :data:`MEMORY_FRACTION` of :func:`available_memory`
    when the session opens)."""

    enabled: bool = True
    max_input_elements: int | None = None  # None: MAX_INPUT_ELEMENTS
    stage_seconds: float | None = None  # None: STAGE_SECONDS
    warn_seconds: float | None = None  # None: WARN_SECONDS
    memory_bytes: int | None = None

    def resolved(self) -> ResourceLimits:
        """These limits with every ``None`` replaced by the module's current default."""
        return ResourceLimits(
            enabled=self.enabled,
            max_input_elements=MAX_INPUT_ELEMENTS if self.max_input_elements is None else self.max_input_elements,
            stage_seconds=STAGE_SECONDS if self.stage_seconds is None else self.stage_seconds,
            warn_seconds=WARN_SECONDS if self.warn_seconds is None else self.warn_seconds,
            memory_bytes=self.memory_bytes,
        )


@dataclass(frozen=True)
class StageCost:
    """What a stage is expected to hold (bytes) and take (seconds)."""

    bytes: float
    seconds: float


@dataclass(frozen=True)
class LayerPlan:
    """What a rule should run for one layer: ``skip`` maps a stage to the reason it is skipped; ``iterations`` is
    the power-iteration count (possibly lowered to fit the time limit)."""

    skip: Mapping[str, str] = field(default_factory=dict)
    iterations: int = 100


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


def format_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "unbounded memory"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable (/proc/meminfo, else the free physical pages), capped by
    an address-space limit (RLIMIT_AS, minus what the process already maps)."""
    avail: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            avail = 1 << 62  # unknown: no memory limit
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            avail = min(avail, max(0, soft - _mapped_bytes()))
    except (ImportError, OSError, ValueError):
        pass
    return avail


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# ------------------------------------------------------------------------------------------------ cost models


def conv_costs(
    *,
    c_out: int,
    c_in: int,
    groups: int,
    kernel: tuple[int, ...],
    input_spatial: tuple[int, ...],
    output_spatial: tuple[int, ...],
    padded: tuple[int, ...],
    strides: tuple[int, ...],
    iterations: int,
    exact_size: int,
    exact_limit: int,
) -> dict[str, StageCost]:
    """Costs of the stages of :func:`lipcheck.norms.conv.conv_norms` on one Conv (or the Conv a ConvTranspose is the
    adjoint of): "operator" (building it: read tables and one application's tensors), "power", "exact", "circular",
    "reshaped". From shapes only; nothing is allocated."""
    k = math.prod(kernel)
    if all(kk == 1 for kk in kernel):
        # 1×1 (any stride): conv_norms bounds the groups' C_out×C_in channel matrices, never the operator
        g = max(groups, 1)
        matrix = matrix_costs(batch=g, m=c_out // g, n=c_in // g, iterations=iterations, exact_limit=exact_limit)
        lo, hi = sorted((c_out // g, c_in // g))
        return {"operator": StageCost(0.0, 0.0), "power": matrix["power"], "exact": matrix["exact"],
                "circular": StageCost(0.0, 0.0),
                "reshaped": StageCost(8.0 * (lo * hi + 3 * lo * lo),
                                      (2.0 * lo * lo * hi + 10.0 * lo**3) / MATMUL_FLOPS_F64)}
    n_in = c_in * math.prod(input_spatial)
    n_out = c_out * math.prod(output_spatial)
    n_pad = c_in * math.prod(padded)
    apply_flops = 2.0 * c_out * (c_in / max(groups, 1)) * k * math.prod(output_spatial)
    # one application in float64 holds the input, its padded copy and the output; the tables are (out × k) per dim
    tables = sum(o * kk * 9.0 for o, kk in zip(output_spatial, kernel)) + sum(8.0 * n for n in padded)
    one_pass = 8.0 * (2 * n_in + n_pad + 2 * n_out)
    costs = {"operator": StageCost(tables + one_pass, apply_flops / CONV_FLOPS_F64)}
    krylov_basis = min(4.0 * (KRYLOV_STEPS + 1) * n_in, KRYLOV_BYTES)
    costs["power"] = StageCost(one_pass + 4.0 * (n_in + n_out) + krylov_basis,
                               (iterations + KRYLOV_STEPS) * 2 * apply_flops / CONV_FLOPS_F32)
    small, large = sorted((n_in, n_out))
    if exact_size > exact_limit:
        costs["exact"] = StageCost(0.0, 0.0)  # skipped by --exact-limit anyway
    elif small <= 2 or (small <= 512 and small * large <= 4_000_000):
        costs["exact"] = StageCost(16.0 * small * large, small / 64 * 2 * apply_flops / CONV_FLOPS_F64
                                   + 10.0 * small * small * large / MATMUL_FLOPS_F64)
    else:
        costs["exact"] = StageCost(8.0 * 28 * small + one_pass,
                                   LANCZOS_PRODUCTS * 2 * apply_flops / CONV_FLOPS_F64)
    # circular: one r×r complex Gram per (frequency, group) on the coarse grid, r the smaller polyphase side
    s = math.prod(strides)
    a, b = c_out // max(groups, 1), c_in // max(groups, 1) * s
    r = min(a, b)
    grid = [math.ceil(p / st) for p, st in zip(padded, strides)]
    n_freq = math.prod(grid[:-1]) * (grid[-1] // 2 + 1) if grid else 1
    grams = float(n_freq) * groups
    taps = math.prod(math.ceil(kk / st) for kk, st in zip(kernel, strides))
    costs["circular"] = StageCost(
        16.0 * max(4_000_000, r * r) * 5 + 8.0 * grams + 16.0 * taps * taps * groups * r * r,
        grams * (CIRCULAR_GRAM_SECONDS + CIRCULAR_CUBE_SECONDS * float(r) ** 3),
    )
    m, n = c_out, c_in // max(groups, 1) * k
    lo, hi = sorted((m, n))
    costs["reshaped"] = StageCost(8.0 * (m * n + 3 * lo * lo),
                                  (2.0 * lo * lo * hi + 10.0 * lo**3) / MATMUL_FLOPS_F64)
    return costs


def zero_pad_cost(w: Any, geom: Any, out_spatial: tuple[int, ...], tight_work: float, exact_size: int,
                  exact_limit: int) -> StageCost:
    """The zero-padded certificate of a Conv (:mod:`lipcheck.norms.zeropad`): zero when it will not run (off, σ exact
    not computed, a 1×1 kernel, or more than ``tight_work`` GFLOP), else its memory and time."""
    kernel = tuple(int(k) for k in w.shape[2:])
    if tight_work <= 0 or exact_size > exact_limit or all(k == 1 for k in kernel):
        return StageCost(0.0, 0.0)
    from lipcheck.norms.zeropad import plan_zero_pad

    groups = int(geom.groups)
    plan = plan_zero_pad(kernel, tuple(geom.input_spatial), tuple(out_spatial), tuple(geom.strides),
                         tuple(geom.dilations), tuple(geom.pads_begin), int(w.shape[1]), int(w.shape[0]) // groups,
                         groups)
    if plan.flops > tight_work * 1e9:
        return StageCost(0.0, 0.0)
    return StageCost(plan.bytes, plan.flops / ZERO_PAD_FLOPS)


def matrix_costs(*, batch: int, m: int, n: int, iterations: int, exact_limit: int) -> dict[str, StageCost]:
    """Costs of the stages of :func:`lipcheck.norms.matrix.batched_matrix_norms` on ``batch`` m×n matrices: "power",
    "exact" (Lanczos; the dense SVD of matrices within ``exact_limit`` entries is cheap and never skipped), "gram"."""
    lo, hi = sorted((m, n))
    mv = 2.0 * batch * m * n
    costs = {"power": StageCost(8.0 * batch * (m + n) * 2, iterations * 2 * mv / MATMUL_FLOPS_F64 * 10)}
    if m * n <= exact_limit or lo <= 2 or lo > exact_limit:
        costs["exact"] = StageCost(0.0, 0.0)
    else:
        costs["exact"] = StageCost(8.0 * 28 * lo, batch * LANCZOS_PRODUCTS * 2 * mv / batch / MATMUL_FLOPS_F64 * 10)
    costs["gram"] = StageCost(8.0 * 3 * lo * lo,
                              batch * (2.0 * lo * lo * hi + GRAM_STEPS * 2.0 * lo**3) / MATMUL_FLOPS_F64)
    return costs


def forward_cost(shapes: Mapping[str, tuple[int, ...]], flops: float) -> tuple[float, float]:
    """(elements of every tensor of a forward pass, seconds of one float64 forward pass of ``flops``)."""
    elements = 0.0
    for shape in shapes.values():
        elements += float(math.prod(int(d) for d in shape)) if shape else 1.0
    return elements, flops / FORWARD_FLOPS_F64


# ----------------------------------------------------------------------------------------------------- session


@dataclass
class _Session:
    limits: ResourceLimits
    memory: float
    events: list[str] = field(default_factory=list)


_ACTIVE: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("lipcheck_budget", default=None)


@contextmanager
def session(limits: ResourceLimits | None = None) -> Iterator[_Session]:
    """The limits of one analysis, for the rules it runs (:func:`plan_layer`); ``.events`` lists what was skipped."""
    limits = (limits or ResourceLimits()).resolved()
    memory = float(limits.memory_bytes) if limits.memory_bytes is not None else MEMORY_FRACTION * available_memory()
    state = _Session(limits, memory)
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def current() -> tuple[ResourceLimits, float]:
    """The active limits and the memory a stage may hold (defaults, measured now, outside a session)."""
    state = _ACTIVE.get()
    if state is not None:
        return state.limits, state.memory
    limits = ResourceLimits().resolved()
    return limits, MEMORY_FRACTION * available_memory()


# stages whose skip another stage implies, and what a skip of each means for the report
_IMPLIES = {"operator": ("power", "exact", "circular", "zero-pad"), "power": ("exact", "zero-pad"),
            "exact": ("zero-pad",)}
_WHAT = {
    "operator": "the operator (power iteration, σ exact, circular bound)",
    "power": "power iteration",
    "exact": "σ exact",
    "circular": "the circular (FFT) bound",
    "reshaped": "σ reshaped",
    "gram": "the Gram-iteration bound",
    "zero-pad": "the zero-padded certificate",
}
_HOW_TO_SKIP = {"exact": "--no-exact skips it", "zero-pad": "--tight-work 0 skips it"}


def plan_layer(node: str, op: str, costs: Mapping[str, StageCost], iterations: int) -> LayerPlan:
    """Which stages of the layer ``node`` to run under the active limits. A stage is skipped when it would hold
    more memory than allowed or take longer than ``stage_seconds``; power iteration first gets fewer iterations
    (at least 10) before it is skipped. Long stages that do run are announced (a warning on the ``lipcheck``
    logger, which prints to stderr by default)."""
    limits, memory = current()
    if not limits.enabled:
        return LayerPlan({}, iterations)
    assert limits.stage_seconds is not None and limits.warn_seconds is not None
    skip: dict[str, str] = {}
    per_iteration = costs["power"].seconds / max(iterations, 1) if "power" in costs else 0.0
    for stage, cost in costs.items():
        if stage in skip:
            continue
        reason = None
        if cost.bytes > memory:
            reason = f"needs ~{format_bytes(cost.bytes)} > {format_bytes(memory)} of memory available"
        elif cost.seconds > limits.stage_seconds:
            if stage == "power" and per_iteration > 0 and limits.stage_seconds / per_iteration >= 10:
                iterations = int(limits.stage_seconds / per_iteration)
                _event(f"{node} ({op}): power iteration limited to {iterations} iterations (estimated "
                       f"{format_seconds(cost.seconds)} for all; --force to run them)")
                continue
            reason = f"estimated {format_seconds(cost.seconds)} > limit {format_seconds(limits.stage_seconds)}"
        if reason is None:
            if cost.seconds > limits.warn_seconds:
                hint = f"; {_HOW_TO_SKIP[stage]}" if stage in _HOW_TO_SKIP else ""
                log.warning("layer %s: %s estimated ~%s%s", node, _WHAT.get(stage, stage),
                            format_seconds(cost.seconds), hint)
            continue
        skip[stage] = f"{_WHAT.get(stage, stage)} skipped: {reason}; --force to compute"
        _event(f"{node} ({op}): {skip[stage]}")
        for implied in _IMPLIES.get(stage, ()):
            skip.setdefault(implied, skip[stage])
    return LayerPlan(skip, iterations)


def _event(text: str) -> None:
    state = _ACTIVE.get()
    if state is not None and text not in state.events:
        state.events.append(text)
    log.warning("layer %s", text)


def check_input_sizes(inputs: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse (:class:`ResourceLimitError`) a float input with more than ``max_input_elements`` elements."""
    limits, _ = current()
    if not limits.enabled:
        return
    assert limits.max_input_elements is not None
    for name, shape in inputs.items():
        count = math.prod(int(d) for d in shape) if shape else 1
        if count > limits.max_input_elements:
            raise ResourceLimitError(
                f"input '{name}' of shape {list(shape)} has {count:.3g} elements, more than the limit "
                f"{limits.max_input_elements:.3g} (2^{math.log2(limits.max_input_elements):.0f}); give a smaller "
                "--input-shape, or --force to analyse it anyway"
            )
