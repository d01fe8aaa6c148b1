"""``--jobs N``: the expensive weighted layers bounded in worker processes before the walk.

Each task carries only what its rule reads (:func:`layer_task`): the node, a one-node sub-Graph with the
node's constant inputs and the static shapes of its inputs and outputs, and the settings. The rules of
:data:`~lipcheck.bound.cache.CACHED_OPS` never look at neighbouring nodes, so a worker computes exactly
the :class:`~lipcheck.rules.registry.OpBound` the sequential walk would, with the same seeds; the walker
then reads it from the same in-memory map as a cache hit, and stays the one sequential traversal.

Start method: ``forkserver``. ``fork`` copies a process that may already run threads (torch's intra-op
pool, onnxruntime's pools, OpenMP, or a library caller's own threads): a lock held by one of them at fork
time stays locked forever in the child, and torch documents fork after its thread pool started as
unsupported. ``spawn`` is correct but imports torch once per worker. ``forkserver`` starts one clean
single-threaded server that imports torch and the rules once (the preload), and forks each worker from it:
correct, and only one torch import. Measured on resnet18 (2 cores): see the README's ``--jobs`` section.
As with any multiprocessing start method but fork, a script calling ``lipcheck.analyze(jobs=2)`` must
guard its top level with ``if __name__ == "__main__":``.

Workers ignore SIGINT: Ctrl-C reaches the main process, which terminates the workers and re-raises.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from lipcheck.errors import LipcheckError
from lipcheck.ir.graph import Graph, Node
from lipcheck.report.model import Settings
from lipcheck.rules.registry import NoGlobalConstant, OpBound

__all__ = ["START_METHOD", "LayerTask", "Outcome", "bound_in_workers", "layer_task", "resolve_jobs"]

log = logging.getLogger(__name__)

START_METHOD = "forkserver"
_PRELOAD = ["lipcheck.bound.parallel", "lipcheck.bound.walker", "lipcheck.rules.linear", "lipcheck.norms.conv"]
# a layer whose constants are larger than this is bounded in the main process: sending it to a worker would
# copy it through a pipe (memory-mapped weights included)
POOL_MAX_BYTES = 256 << 20

Outcome = OpBound | NoGlobalConstant | Exception  # the rule's result, or the error it raised


@dataclass(frozen=True)
class LayerTask:
    index: int  # the node's position in the walked graph
    node: Node
    graph: Graph  # a one-node graph: the node's constants and the shapes of its inputs and outputs
    settings: Settings
    limits: Any = None  # the parent's ResourceLimits (lipcheck.budget), applied in the worker too


BY_SIZE = -1  # resolve_jobs("size"): decided per model by :func:`jobs_for`
SIZE_WORK = 5e8  # multiply-adds of the weighted layers (walker.work_estimate) from which "size" uses workers


def jobs_for(graph: Any, jobs: int) -> int:
    """The process count for ``graph``: ``jobs`` itself, or for :data:`BY_SIZE` one per thread lipcheck may use
    (``--threads`` / the load-aware default) when the weighted layers hold at least :data:`SIZE_WORK`
    multiply-adds (ResNet-50: 4e9; every sample model: under 3e7), else 1 (workers cost a second or two to start,
    each importing torch). Measured on 2 cores, side by side: ResNet-50 `analyze --no-exact --no-lower-bound`
    14.4 s with 1, 10.9 s with 2 (2026-12-08)."""
    if jobs != BY_SIZE:
        return jobs
    from lipcheck.bound.walker import work_estimate

    costs = [work_estimate(node, graph) for node in graph.nodes]
    heavy = sum(1 for c in costs if c > 0)
    if sum(costs) < SIZE_WORK or heavy < 2:
        return 1
    from lipcheck.threads import choose_threads, thread_limit

    return max(1, min(thread_limit() or choose_threads(), heavy))


def resolve_jobs(jobs: int | str | None) -> int:
    """``--jobs``: a positive count; ``0`` or ``"auto"`` = the number of CPUs; ``"size"`` = :data:`BY_SIZE`
    (decided per model by :func:`jobs_for`). Raises UsageError."""
    from lipcheck.errors import UsageError

    if jobs is None:
        return 1
    if isinstance(jobs, str):
        text = jobs.strip().lower()
        if text == "size":
            return BY_SIZE
        if text == "auto":
            return os.cpu_count() or 1
        if not text.isdecimal():
            raise UsageError(f"--jobs {jobs!r}: expected a number of processes ≥ 1, 0 / auto for every CPU, or "
                             "size")
        jobs = int(text)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise UsageError(f"--jobs {jobs!r}: expected a number of processes ≥ 1, or 0 / auto for every CPU")
    return jobs if jobs > 0 else (os.cpu_count() or 1)


def layer_task(index: int, node: Node, graph: Graph, settings: Settings) -> LayerTask | None:
    """The task for one node, or ``None`` when its constants are too large to ship (:data:`POOL_MAX_BYTES`)."""
    names = [n for n in node.inputs if n]
    constants = {n: graph.constants[n] for n in names if n in graph.constants}
    if sum(int(getattr(c, "nbytes", 0)) for c in constants.values()) > POOL_MAX_BYTES:
        return None
    tensors = [*names, *(o for o in node.outputs if o)]
    sub = Graph(
        name=node.name,
        inputs=(),
        outputs=(),
        nodes=(node,),
        constants=constants,
        shapes={t: graph.shapes[t] for t in tensors if t in graph.shapes},
        dtypes={t: graph.dtypes[t] for t in tensors if t in graph.dtypes},
        opset=graph.opset,
        source=graph.source,
    )
    from lipcheck import budget

    return LayerTask(index=index, node=node, graph=sub, settings=settings, limits=budget.current()[0])


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import torch

    torch.set_num_threads(1)  # N workers on N cores: one intra-op thread each, not N²


def _run(task: LayerTask) -> tuple[int, str, Any]:
    """In a worker: the node's rule, its errors returned as data (kind, message)."""
    from lipcheck import budget
    from lipcheck.bound.walker import RuleFailure, bound_node
    from lipcheck.rules.registry import RuleContext

    ctx = RuleContext(graph=task.graph, settings=task.settings, producers={})
    try:
        with budget.session(task.limits):
            return task.index, "ok", bound_node(task.node, ctx)
    except NoGlobalConstant as exc:
        return task.index, "unbounded", str(exc)
    except RuleFailure as exc:
        return task.index, "failure", str(exc)
    except LipcheckError as exc:  # a model the rule refuses: the same one line as without --jobs
        return task.index, "error", exc


_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _context() -> Any:
    """The forkserver context, its server started once with the rules preloaded and one BLAS / OpenMP thread
    per worker (read by those libraries only at start-up, so set in the server's environment; measured on
    resnet18 with 2 workers on 2 cores: 71 s with the default 2 BLAS threads each, 37 s with 1)."""
    ctx = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        from multiprocessing import forkserver

        server = forkserver._forkserver  # type: ignore[attr-defined]
        if getattr(server, "_forkserver_pid", None) is None:  # not started yet: choose what it imports once
            ctx.set_forkserver_preload(_PRELOAD)
            saved = {k: os.environ.get(k) for k in _ONE_THREAD}
            os.environ.update(_ONE_THREAD)
            try:
                forkserver.ensure_running()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    return ctx


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop every worker now (Ctrl-C, or the caller gave up): there is no public API before Python 3.14."""
    terminate = getattr(executor, "terminate_workers", None)
    if callable(terminate):
        terminate()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        try:
            process.terminate()
        except (OSError, AttributeError, ValueError):
            pass
    for process in processes:
        try:
            process.join(timeout=5)
        except (OSError, AttributeError, ValueError, AssertionError):
            pass


def bound_in_workers(
    tasks: Sequence[LayerTask], jobs: int, on_result: Callable[[int, Outcome], None]
) -> None:
    """Run the tasks in ``jobs`` processes, telling ``on_result(index, outcome)`` as each one arrives (in
    completion order). A task that cannot be run there (e.g. its node does not pickle) is left out: the
    walker computes it. A worker that dies is a RuntimeError; Ctrl-C terminates the workers."""
    from lipcheck.bound.walker import RuleFailure

    if not tasks:
        return
    # the largest first: the last task to finish is a small one (longest-processing-time scheduling)
    order = sorted(tasks, key=lambda t: -_size(t))
    executor = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=_context(),
                                   initializer=_init_worker)
    finished = False
    try:
        pending: set[Future[tuple[int, str, Any]]] = {executor.submit(_run, task) for task in order}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    index, kind, value = future.result()
                except BrokenProcessPool as exc:
                    raise RuntimeError(
                        "a --jobs worker process died while bounding layers (out of memory?); "
                        "run with --jobs 1"
                    ) from exc
                except Exception as exc:  # noqa: BLE001 - e.g. pickling: the walker computes it itself
                    log.debug("--jobs: a task could not run in a worker (%s: %s)", type(exc).__name__, exc)
                    continue
                outcome: Outcome
                if kind == "ok":
                    outcome = value
                elif kind == "unbounded":
                    outcome = NoGlobalConstant(value)
                elif kind == "error":
                    outcome = value
                else:
                    outcome = RuleFailure(value)
                on_result(index, outcome)
        finished = True
    finally:
        if not finished:
            _terminate(executor)
        executor.shutdown(wait=True, cancel_futures=True)


def _size(task: LayerTask) -> float:
    from lipcheck.bound.walker import work_estimate

    return work_estimate(task.node, task.graph)
