"""Run the lipcheck CLI unchanged, with timers around its stages: ``python bench/_cli_timer.py OUT.json ARGS...``.

``ARGS`` are what ``lipcheck`` would get (``analyze MODEL --format json ...``); stdout, stderr and the exit code
are the CLI's. At exit, OUT.json receives wall-clock stamps (``time.time()``) of the stages, the peak RSS after
loading, after the walk and at the end, and per-node times of the walk, each split into the (self) time spent in
the norm functions of ``lipcheck.norms.conv`` / ``.matrix``, found by name (``*power*`` → power, ``*lanczos*`` → exact,
``*_bound`` / ``*_certificate`` / ``*circular*`` → certified upper, ``reshaped_kernel_norm``). The timers are
attribute wrappers installed before the CLI runs: lipcheck's code is not modified; time in functions that match
no pattern stays in the node's total ("other").
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import resource
import sys
import time

T_START = time.time()

MODULES = ("lipcheck.norms.conv", "lipcheck.norms.matrix")
# entry points and helpers whose time is not one stage: never wrapped (their parts are)
NOT_TIMED = {"conv_norms", "conv_transpose_norms", "matrix_norms", "batched_matrix_norms", "_operator_norms",
             "sigma_max_svd", "as_float64", "rounding_margin"}


def stage_of(name: str) -> str | None:
    """The stage a module-level norm function belongs to, from its name (power, exact, upper, reshaped)."""
    low = name.lower()
    if name in NOT_TIMED:
        return None
    if "power" in low:
        return "power"
    if "lanczos" in low:
        return "exact"
    if low in ("reshaped_kernel_norm", "_reshaped_sigma"):
        return "reshaped"
    if low.endswith(("_bound", "_certificate")) or "circular" in low:
        return "upper"
    return None


state: dict = {"nodes": [], "stages": {}, "events": {}, "timed": []}
_stack: list[list] = []  # [stage, start, child_seconds]
_current: dict = {}


def _rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _timed(fn, stage: str):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        frame = [stage, time.perf_counter(), 0.0]
        _stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            _stack.pop()
            elapsed = time.perf_counter() - frame[1]
            own = elapsed - frame[2]
            if _stack:
                _stack[-1][2] += elapsed
            state["stages"][stage] = state["stages"].get(stage, 0.0) + own
            if _current:
                parts = _current.setdefault("parts", {})
                parts[stage] = parts.get(stage, 0.0) + own

    return wrapper


def _install() -> None:
    import importlib

    import lipcheck.bound.analysis as analysis
    import lipcheck.bound.walker as walker

    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for attr, fn in list(vars(mod).items()):
            stage = stage_of(attr)
            if stage is not None and inspect.isfunction(fn):
                setattr(mod, attr, _timed(fn, stage))
                state["timed"].append(f"{mod_name}.{attr}: {stage}")

    real_bound_node = walker.bound_node

    def bound_node(node, ctx):  # type: ignore[no-untyped-def]
        _current.clear()
        _current.update(name=node.name, op=node.op_type)
        t0 = time.perf_counter()
        try:
            return real_bound_node(node, ctx)
        finally:
            rec = dict(_current, seconds=time.perf_counter() - t0)
            _current.clear()
            state["nodes"].append(rec)

    walker.bound_node = bound_node

    real_walk = analysis.walk

    def walk(*args, **kwargs):  # type: ignore[no-untyped-def]
        state["events"]["walk_start"] = time.time()
        state["rss_after_load_kb"] = _rss_kb()
        try:
            return real_walk(*args, **kwargs)
        finally:
            state["events"]["walk_end"] = time.time()
            state["rss_after_walk_kb"] = _rss_kb()

    analysis.walk = walk

    real_lower = getattr(analysis, "_lower_bound", None)
    if callable(real_lower):
        def lower(*args, **kwargs):  # type: ignore[no-untyped-def]
            state["events"]["lower_start"] = time.time()
            try:
                return real_lower(*args, **kwargs)
            finally:
                state["events"]["lower_end"] = time.time()

        analysis._lower_bound = lower


def _dump(path: str) -> None:
    state["events"]["start"] = T_START
    state["events"]["exit"] = time.time()
    state["rss_peak_kb"] = _rss_kb()
    with open(path, "w") as f:
        json.dump(state, f)


def main() -> None:
    out = sys.argv[1]
    atexit.register(_dump, out)
    _install()
    state["events"]["imported"] = time.time()
    from lipcheck.cli.app import main as cli_main

    cli_main(sys.argv[2:])


if __name__ == "__main__":
    main()
