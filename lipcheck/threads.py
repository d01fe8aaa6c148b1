"""Thread pools sized for the machine lipcheck shares (a CI runner where other jobs are busy too).

BLAS (OpenBLAS / MKL), torch's OpenMP intra-op pool and onnxruntime's intra-op pool each start one thread
per core and spin while they wait for work. When another process keeps those cores busy the spinning
threads take turns with it and with each other: bench/README.md measured 10-100x slowdowns on a loaded
2-core machine. :func:`choose_threads` picks a count from the CPUs this process may use minus the load
already on them; :func:`limit_threads` applies it: the environment variables the libraries read when they
start (set only when the user has not set them), passive OpenMP waiting, and the pools of libraries that
are already loaded.

Nothing here runs on import: the library API (:func:`lipcheck.analyze`) keeps the libraries' defaults
unless a caller asks (the CLI calls :func:`limit_threads` before numpy, torch or onnxruntime are imported).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from lipcheck.errors import UsageError

__all__ = [
    "BLAS_VARIABLES",
    "ENV_VAR",
    "available_cpus",
    "busy_cpus",
    "choose_threads",
    "configure_torch",
    "limit_threads",
    "onnxruntime_options",
    "thread_limit",
]

ENV_VAR = "LIPCHECK_THREADS"
# read by OpenMP (torch, libgomp), OpenBLAS and MKL when they load
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_log = logging.getLogger(__name__)
_limit: int | None = None  # the count limit_threads chose; None: every library keeps its own default
_interop_set = False


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _runnable_others(samples: int = 3, pause: float = 0.02) -> float | None:
    """Tasks other than this one that are runnable now (Linux ``/proc/loadavg``'s running count minus 1, the
    least of a few reads ``pause`` seconds apart: a steady competitor is in every read, the exit of a process
    that just ended in one); None where it cannot be read."""
    import time

    seen: float | None = None
    for k in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                running = float(fh.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return seen
        seen = max(0.0, running - 1.0) if seen is None else min(seen, max(0.0, running - 1.0))
        if k + 1 < samples:
            time.sleep(pause)
    return seen


def busy_cpus(cpus: int | None = None) -> float:
    """How many of our ``cpus`` other work keeps busy: the 1-minute load average, but at most the tasks runnable
    right now besides this one (where Linux says: a load average still holds the runs that just ended, so a
    script running lipcheck on model after model would otherwise see its own past runs as load and go single-
    threaded), scaled to our share of the machine when the affinity mask holds fewer CPUs than it has (both
    counts are machine-wide). 0 where the load average is unknown."""
    cpus = available_cpus() if cpus is None else cpus
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    now = _runnable_others()
    if now is not None:
        load = min(load, now)
    total = os.cpu_count() or cpus
    return load * cpus / total if total > cpus else load


def _positive(text: str, source: str) -> int:
    value = text.strip()
    if not value.isdecimal() or int(value) < 1:
        raise UsageError(f"{source}={text!r}: expected a number of threads ≥ 1")
    return int(value)


def choose_threads(
    requested: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
    load: float | None = None,
) -> int:
    """The number of threads for lipcheck's pools, first of: ``requested`` (``--threads``), ``LIPCHECK_THREADS``,
    ``OMP_NUM_THREADS`` set by the user (a number), else the CPUs free of other work:
    ``max(1, cpus - round(load))``, at most ``cpus`` (``cpus`` and ``load`` default to :func:`available_cpus`
    and :func:`busy_cpus`). Raises :class:`UsageError` for a ``LIPCHECK_THREADS`` that is not a number ≥ 1."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads {requested}: expected a number of threads ≥ 1")
        return requested
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "").strip():
        return _positive(environ[ENV_VAR], ENV_VAR)
    omp = environ.get("OMP_NUM_THREADS", "").strip().split(",")[0]  # OpenMP allows a list per nesting level
    if omp.isdecimal() and int(omp) >= 1:
        return int(omp)
    cpus = available_cpus() if cpus is None else cpus
    load = busy_cpus(cpus) if load is None else load
    return max(1, min(cpus, cpus - round(load)))


def thread_limit() -> int | None:
    """The count :func:`limit_threads` set in this process, or ``None``."""
    return _limit


def limit_threads(threads: int) -> None:
    """Size the process's thread pools to ``threads``: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` (only where the user has not set them; read when the libraries load, so call this
    before numpy or torch is imported), ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep rather than
    spin, unless set), torch's pools when torch is loaded (:func:`configure_torch`, also called where lipcheck
    imports torch), onnxruntime sessions lipcheck creates (:func:`onnxruntime_options`), and threadpoolctl's
    limits on already-loaded BLAS / OpenMP libraries when threadpoolctl is installed."""
    global _limit
    if threads < 1:
        raise UsageError(f"threads={threads}: expected a number of threads ≥ 1")
    _limit = threads
    for name in BLAS_VARIABLES:
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _log.debug("thread pools: %d thread(s) (%s)", threads,
               ", ".join(f"{name}={os.environ[name]}" for name in (*BLAS_VARIABLES, "OMP_WAIT_POLICY")))
    configure_torch()
    if "numpy" in sys.modules or "torch" in sys.modules:  # loaded before the variables were set
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=threads)


def configure_torch() -> None:
    """When :func:`limit_threads` chose a count and torch is loaded: torch's intra-op pool to that many threads
    and its inter-op pool to one (possible only before torch's first parallel work: later it stays as it is).
    Does nothing otherwise, so modules that import torch may call it unconditionally."""
    global _interop_set
    torch = sys.modules.get("torch")
    if _limit is None or torch is None or not hasattr(torch, "set_num_threads"):  # absent, or half-imported
        return
    if torch.get_num_threads() != _limit:
        torch.set_num_threads(_limit)
    if not _interop_set:
        _interop_set = True
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work already ran (or it was set before): keep what torch has
            pass


def onnxruntime_options(ort: Any) -> Any:
    """``sess_options`` for an ``onnxruntime.InferenceSession``: after :func:`limit_threads`, the intra-op pool
    sized to the chosen count, one inter-op thread, and no spinning between tasks; ``None`` (onnxruntime's
    defaults) otherwise."""
    if _limit is None:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = _limit
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
