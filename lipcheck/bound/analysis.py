"""The analysis pipeline: load → canonicalize → walk (per-layer norms, composition) → lower bound → Report."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import lipcheck
from lipcheck import budget
from lipcheck.bound.walker import walk
from lipcheck.budget import ResourceLimits
from lipcheck.errors import UnsupportedModelError, UsageError
from lipcheck.ir.canonicalize import fold_batchnorm, fold_magnitudes
from lipcheck.ir.graph import Graph
from lipcheck.loaders import TorchOptions, load_model
from lipcheck.progress import NullProgress, Progress
from lipcheck.report.model import InputInfo, LowerBound, Report, Settings


def check_tight_work(value: Any) -> float:
    """``tight_work`` (GFLOP per conv for the zero-padded certificate) as a float >= 0; else a UsageError."""
    try:
        work = float(value)
    except (TypeError, ValueError):
        work = math.nan
    if not (math.isfinite(work) and work >= 0.0):
        raise UsageError(f"tight work must be a finite number of GFLOP >= 0, got {value!r}")
    return work


def analyze(
    model: Any,
    *,
    input_shape: Any = None,
    power_iterations: int = 100,
    tolerance: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
    lower_bound: bool = True,
    lower_bound_seconds: float = 5.0,
    progress: Progress | None = None,
    trust_pickle: bool = False,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    key: str | None = None,
    jobs: int | str = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    limits: ResourceLimits | None = None,
    method: str = "auto",
    domain: Any = None,
    around: Any = None,
    radius: float | None = None,
    norm: str = "2",
    tight_work: float = 50.0,
) -> Report:
    """Analyse a model: per-layer spectral norms, a certified upper bound, an estimate and a lower bound.

    ``model``: a path to an ONNX or PyTorch file, an ``onnx.ModelProto``, a ``torch.nn.Module`` (also a
    ScriptModule or an ExportedProgram) or a loaded :class:`~lipcheck.ir.Graph`. PyTorch files: ``trust_pickle``
    allows unpickling whole modules (runs code from the file); ``arch`` (``package.module:factory``) with
    ``arch_kwargs`` builds the architecture for a state dict; ``key`` picks the state dict in a checkpoint.
    The certified ``upper_bound`` is never below the true L2 Lipschitz constant (``None`` = unbounded);
    ``estimate`` composes power-iteration estimates and is not a certificate; ``lower_bound.value`` is a
    measured ratio, a true lower bound.

    ``jobs``: bound the weighted layers (Conv, ConvTranspose, Gemm, MatMul) in that many processes (``0`` or
    ``"auto"``: one per CPU; ``"size"``, the CLI's default: one per usable CPU when those layers hold over 5e8
    multiply-adds, else 1); the numbers are the same as with 1. ``cache_dir``: a folder (created when
    missing) keeping those layers' results by a hash of their weights, shapes, attributes and settings, so
    that a re-run on unchanged layers computes no norm; the report's notes say how many came from it.

    Resource limits (:mod:`lipcheck.budget`): a float input above 2^31 elements is refused
    (:class:`~lipcheck.budget.ResourceLimitError`); a layer's stage (σ exact, the circular bound, power
    iteration, the operator itself) whose estimated memory exceeds what is available, or whose estimated time exceeds
    the stage limit, is skipped with the reason in the notes (the certified σ then comes from a cheaper certified
    bound); the lower bound is skipped when one step cannot fit. ``force=True`` lifts every limit; ``limits`` sets
    them (default :class:`~lipcheck.budget.ResourceLimits`).

    ``method`` (:mod:`lipcheck.bound.methods.choose`): ``"product"`` composes per-layer constants (AutoLip);
    ``"lipsdp"`` adds the LipSDP-Neuron bound of an MLP chain (a note says why when the graph is not one);
    ``"auto"`` adds it on chains small enough for a few seconds. ``report.bounds`` holds every method's certified
    value and time; ``upper_bound`` is the least of them and ``report.method`` names the method that gave it.

    ``tight_work``: GFLOP a k×k conv's zero-padded certificate may take (:mod:`lipcheck.norms.zeropad`, a banded
    Cholesky that certifies σ within ~1e-6 of σ exact where the circular bound is looser); it runs with σ exact
    (Lanczos) only. 50 by default (about 0.4 s a layer on 2 cores); 0 turns it off; ResNet-50's 7×7 stage takes
    ~2700 a layer.
    """
    from lipcheck.bound.methods.choose import blocks_result, check_method, lipsdp_result, product_result, tightest
    from lipcheck.bound.parallel import resolve_jobs

    method = check_method(method)

    progress = progress or NullProgress()
    n_jobs = resolve_jobs(jobs)
    cache = None
    if cache_dir is not None:
        from lipcheck.bound.cache import open_cache

        cache = open_cache(cache_dir)
    settings = Settings(
        power_iterations=power_iterations, tolerance=tolerance, seed=seed, exact_limit=exact_limit,
        lower_bound=lower_bound, lower_bound_seconds=lower_bound_seconds, method=method,
        tight_work=check_tight_work(tight_work),
    )
    torch_options = TorchOptions(trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs, key=key)
    pins: dict[str, float] = {}
    if domain is not None:
        from lipcheck.bound.local import pinned_inputs

        pins = pinned_inputs(domain)
    graph = fold_magnitudes(fold_batchnorm(load_model(model, input_shape=input_shape, torch_options=torch_options,
                                                      pins=pins or None)))
    pinned = [name for name in pins if name not in {i.name for i in graph.inputs}]
    floats = graph.float_inputs
    if not floats:
        desc = ", ".join(f"'{i.name}' ({i.dtype})" for i in graph.inputs)
        raise UnsupportedModelError(
            f"{graph.source}: every input is an integer tensor ({desc}); integer inputs such as token ids "
            "have no Lipschitz constant: lipcheck bounds models with respect to float inputs"
        )
    notes: list[str] = list(graph.notes)
    ints = [i for i in graph.inputs if not i.is_float]
    if ints:
        notes.append(
            "integer inputs (" + ", ".join(i.name for i in ints) + ") have no Lipschitz constant; the bound is "
            "with respect to the float inputs, the integer ones held fixed"
        )
    if len(floats) > 1:
        notes.append("several float inputs: the bound is with respect to their concatenation")

    box = None
    if domain is not None:
        from lipcheck.bound.local import parse_domain

        box = parse_domain(domain, graph, pinned)  # before any work: a bad region is one line
        if pinned:
            notes.append("pinned by --domain (constants, so what depends on them folds): "
                         + ", ".join(f"{n} = {pins[n]:g}" for n in pinned))
    points = None
    if around is not None or radius is not None:
        points = _points(around, radius, norm, graph)
    limits = ResourceLimits(enabled=False) if force else limits
    with budget.session(limits) as resources:
        budget.check_input_sizes({i.name: tuple(i.shape) for i in floats})
        started = time.perf_counter()
        from lipcheck.bound.parallel import jobs_for

        result = walk(graph, settings, progress, cache=cache, jobs=jobs_for(graph, n_jobs))
        walk_seconds = time.perf_counter() - started
        notes.extend(f"resource limits: {event}" for event in resources.events)
    if cache is not None:
        notes.append(cache.note())
    float_outputs = [o for o in graph.outputs if o.dtype.startswith(("float", "bfloat")) or o.dtype == "unknown"]
    other_outputs = [o for o in graph.outputs if o not in float_outputs and result.upper.get(o.name, 0.0) > 0]
    if other_outputs:
        notes.append("non-float outputs that depend on the input: " + ", ".join(o.name for o in other_outputs))
    upper = result.output_bound(graph, result.upper)
    bounds = [product_result(upper, walk_seconds)]
    if not math.isfinite(upper) and result.unbounded and method != "product":
        extra_ranges, ranges_note = _ranges_result(graph, result, progress)
        if extra_ranges is not None:
            bounds.append(extra_ranges)
        if ranges_note is not None:
            notes.append(ranges_note)
    extra, method_note = lipsdp_result(graph, method, on_start=lambda: progress.start(0, "composing: lipsdp"))
    if extra is not None:
        bounds.append(extra)
    if method_note is not None:
        notes.append(method_note)
    extra, method_note = blocks_result(graph, method, result.bounds,
                                       on_piece=lambda name: progress.start(0, f"composing: blocks ({name})"))
    if extra is not None:
        bounds.append(extra)
    if method_note is not None:
        notes.append(method_note)
    estimate = result.output_bound(graph, result.estimate)
    if len(graph.outputs) > 1:
        notes.append("several outputs: the bound is with respect to their concatenation")
    if any(o.loose for o in result.ops):
        loose = [o.name for o in result.ops if o.loose]
        notes.append("loose factors (finite global constants far above typical local ones): " + ", ".join(loose))
    layers = tuple(result.layers)
    if graph.parametrizations:
        from lipcheck.loaders.parametrizations import attach_audits

        layers, unmatched = attach_audits(layers, graph.parametrizations)
        for audit in unmatched:
            notes.append(f"{audit.kind} on {audit.module or 'the model'} ({audit.stored_key}) matched no analysed "
                         "layer: not audited")
    skipped = [layer.name for layer in layers
               if layer.sigma_exact is None and "--force" not in (layer.exact_skipped or "")]
    if skipped:
        why = "exact values disabled (--no-exact)" if settings.exact_limit <= 0 else "above --exact-limit"
        notes.append(f"exact σ skipped for {len(skipped)} layer(s), {why}: " + ", ".join(skipped[:5]))

    exact_composition = _exact_composition(graph, result, layers)
    lb: LowerBound | None = None
    if lower_bound:
        with budget.session(limits):
            lb = _lower_bound(graph, model, settings, progress)
    local = None
    if box is not None:
        from lipcheck.bound.local import analyze_region

        progress.start(0, "local bound on the region")
        tight = [b for b in bounds if b.certified and b.value is not None]
        best_global = min(tight, key=lambda b: b.value) if tight else None  # type: ignore[arg-type, return-value]
        local = analyze_region(graph, result, box, lower=lower_bound, lower_seconds=lower_bound_seconds,
                               seed=seed, global_bound=best_global.value if best_global else None,
                               global_method=best_global.method if best_global else None)
    around_result = None
    if points is not None:
        from lipcheck.bound.local import analyze_points

        count = points.shape[0]
        progress.start(0, f"local bounds around {count} points")

        def on_point(k: int) -> None:
            progress.start(0, f"local bounds around point {k + 1}/{count}")

        around_result = analyze_points(graph, result, points, float(radius), norm,  # type: ignore[arg-type]
                                       global_bound=tightest(bounds), seed=seed, on_point=on_point)
    progress.finish()
    best = tightest(bounds)
    return Report(
        model=str(model) if isinstance(model, (str, os.PathLike)) else graph.source,
        inputs=tuple(InputInfo(i.name, tuple(i.shape), i.dtype) for i in graph.inputs),
        upper_bound=best,
        certified=best is not None,
        estimate=estimate if math.isfinite(estimate) else None,
        lower_bound=lb,
        unbounded=tuple(result.unbounded),
        layers=layers,
        ops=tuple(result.ops),
        notes=tuple(notes),
        settings=settings,
        lipcheck_version=lipcheck.__version__,
        bounds=tuple(bounds),
        local=local,
        around=around_result,
        exact_composition=exact_composition,
    )


def _exact_composition(graph: Graph, result: Any, layers: Any) -> float | None:
    """The product composition with each weighted layer's exact σ in place of its certified one (the walker's
    gains scaled by exact / certified): None when a layer has no exact value or the bound is unbounded."""
    from lipcheck.bound.walker import compose

    scales: dict[str, float] = {}
    for layer in layers:
        if layer.sigma_exact is None:
            return None
        scales[layer.name] = layer.sigma_exact / layer.sigma_upper if layer.sigma_upper > 0 else 0.0
    if not scales:
        return None
    value = compose(graph, result, scales)
    return value if math.isfinite(value) else None


def _ranges_result(graph: Graph, result: Any, progress: Progress) -> tuple[Any, str | None]:
    """Where the product is unbounded: the same composition with constants from the ranges every tensor takes over
    all inputs (:func:`lipcheck.bound.local.ranges_global_bound`): gates σ(a)·tanh(b) are bounded products."""
    from lipcheck.bound.local import ranges_global_bound
    from lipcheck.report.model import BoundResult

    progress.start(0, "composing: ranges")
    start = time.perf_counter()
    try:
        value, local, why = ranges_global_bound(graph, result)
    except (ArithmeticError, ValueError, RuntimeError, MemoryError, IndexError, KeyError) as exc:
        return None, f"the ranges method failed ({type(exc).__name__}: {exc}); the bound is the product's"
    seconds = time.perf_counter() - start
    if value is None:
        return None, None
    changed = [c["node"] for c in (local.changed if local is not None else [])]
    return (BoundResult("ranges", value, seconds, True, {"changed": changed}),
            f"bounded through the ranges of its tensors over all inputs ({', '.join(changed[:5])}): products of "
            "bounded tensors (gates) have a global constant")


def _points(around: Any, radius: float | None, norm: str, graph: Graph) -> Any:
    """The points of ``around`` (a .npy / .npz path or an array) checked with ``radius`` and ``norm``."""
    import numpy as np

    from lipcheck.errors import UsageError

    if around is None or radius is None:
        raise UsageError("--around POINTS and --radius R go together")
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise UsageError(f"--radius: expected a finite number above 0, got {radius!r}")
    if norm not in ("2", "inf"):
        raise UsageError(f"--norm: expected 2 or inf, got {norm!r}")
    from lipcheck.bound.local import load_points

    if isinstance(around, (str, os.PathLike)):
        return load_points(os.fspath(around), graph)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # one validation path for arrays and files
        path = os.path.join(tmp, "points.npy")
        np.save(path, np.asarray(around, dtype=np.float64))
        return load_points(path, graph)


def _lower_bound(graph: Graph, model: Any, settings: Settings, progress: Progress) -> LowerBound:
    from lipcheck.bound.lower import empirical_lower_bound

    progress.start(0, "lower bound")

    class _Adapter:
        def __call__(self, label: str) -> None:
            progress.advance(label)

    return empirical_lower_bound(
        graph,
        seed=settings.seed,
        time_budget=settings.lower_bound_seconds,
        reference=graph.reference,
        progress=_Adapter(),
    )
