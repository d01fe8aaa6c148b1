"""``lipcheck check`` without the command line: resolve what to check, analyse each model, decide.

:func:`resolve_targets` merges flags over the configuration (pure); :func:`run_check` analyses every target
with :func:`lipcheck.analyze` and applies :func:`lipcheck.gate.decision.evaluate`. A model that cannot be
analysed (a :class:`~lipcheck.errors.LipcheckError`) is recorded and the others still run, so one run shows
every problem; the CLI then exits 2 and writes no report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lipcheck.errors import LipcheckError, UsageError
from lipcheck.gate.baseline import Snapshot, load_snapshot
from lipcheck.gate.config import Config, ConfigError, InputShapes, ModelOptions
from lipcheck.gate.decision import Thresholds, Verdict, evaluate
from lipcheck.report.model import Report

__all__ = [
    "AnalysisOptions",
    "CheckRun",
    "ModelCheck",
    "Target",
    "check_targets",
    "load_baselines",
    "resolve_targets",
    "run_check",
    "write_artifacts",
]


@dataclass(frozen=True)
class AnalysisOptions:
    """The keyword arguments of :func:`lipcheck.analyze` for one model (``check`` defaults)."""

    power_iterations: int = 100
    tolerance: float = 1e-6
    seed: int = 0
    exact_limit: int = 2_000_000
    tight_work: float = 50.0  # GFLOP per conv for the zero-padded certificate
    lower_bound: bool = False  # check: off unless asked (the gate is on the certified bound)
    lower_bound_seconds: float = 5.0
    trust_pickle: bool = False
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    key: str | None = None
    jobs: int | str = 1  # 0 = one process per CPU; "size": by the model's size
    cache_dir: str | None = None
    force: bool = False  # lift the resource limits (lipcheck.budget)
    method: str = "auto"  # the composition methods (lipcheck.bound.methods.choose)
    domain: str | None = None  # an input region: the report then has a local bound too (lipcheck.bound.local)

    def kwargs(self) -> dict[str, Any]:
        return {
            "power_iterations": self.power_iterations,
            "tolerance": self.tolerance,
            "seed": self.seed,
            "exact_limit": self.exact_limit,
            "tight_work": self.tight_work,
            "lower_bound": self.lower_bound,
            "lower_bound_seconds": self.lower_bound_seconds,
            "trust_pickle": self.trust_pickle,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs) if self.arch_kwargs is not None else None,
            "key": self.key,
            "jobs": self.jobs,
            "cache_dir": self.cache_dir,
            "force": self.force,
            "method": self.method,
            **({"domain": self.domain} if self.domain is not None else {}),
        }


@dataclass(frozen=True)
class Target:
    """One model to check, every setting resolved."""

    path: str  # passed to lipcheck.analyze; the report prints it
    name: str  # display name (config ``name``, else the path)
    input_shape: InputShapes | None
    thresholds: Thresholds
    baseline: str | None
    plot: str | None
    analysis: AnalysisOptions


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _target(path: str, name: str, options: ModelOptions) -> Target:
    defaults = AnalysisOptions()
    analysis = AnalysisOptions(
        power_iterations=_or(options.power_iterations, defaults.power_iterations),
        tolerance=_or(options.tolerance, defaults.tolerance),
        seed=_or(options.seed, defaults.seed),
        exact_limit=0 if options.exact is False else _or(options.exact_limit, defaults.exact_limit),
        tight_work=_or(options.tight_work, defaults.tight_work),
        lower_bound=_or(options.lower_bound, defaults.lower_bound),
        lower_bound_seconds=_or(options.lower_bound_seconds, defaults.lower_bound_seconds),
        trust_pickle=_or(options.trust_pickle, defaults.trust_pickle),
        arch=options.arch,
        arch_kwargs=options.arch_kwargs,
        key=options.key,
        jobs=_or(options.jobs, defaults.jobs),
        cache_dir=options.cache,
        force=bool(options.force),
        method=_or(options.method, defaults.method),
        domain=options.domain,
    )
    thresholds = Thresholds(
        max_lipschitz=options.max_lipschitz,
        max_layer_sigma=options.max_layer_sigma,
        allow_uncertified=bool(options.allow_uncertified),
        max_increase=options.max_increase,
    )
    return Target(path=path, name=name, input_shape=options.input_shape, thresholds=thresholds,
                  baseline=options.baseline, plot=options.plot, analysis=analysis)


def resolve_targets(models: Sequence[str], config: Config, flags: ModelOptions) -> list[Target]:
    """What to check: ``models`` (each with its configured table when it is a configured path, else the
    top-level table), or every configured model when ``models`` is empty; ``flags`` override both.

    Raises :class:`UsageError` when there is nothing to check, or when a per-model flag (``--baseline``,
    ``--plot``) meets several models in a way that cannot be right; :class:`ConfigError` when a model's ``arch``
    comes from the configuration (its code is under review) and neither ``flags.arch`` nor
    ``flags.trust_pickle`` is given.
    """
    if models:
        chosen = []
        for model in models:
            entry = config.entry_for(model)
            chosen.append((model, entry.name if entry else model, entry.options if entry else config.defaults))
    elif config.models:
        chosen = [(entry.path, entry.name, entry.options) for entry in config.models]
    else:
        where = f"{config.file} has no models" if config.file else "no pyproject.toml [tool.lipcheck] or lipcheck.toml"
        raise UsageError(
            f"nothing to check: give MODEL, or list the models in [[tool.lipcheck.models]] ({where})"
        )
    if flags.baseline is not None and len(chosen) > 1:
        raise UsageError(
            f"--baseline {flags.baseline} with {len(chosen)} models: give one MODEL, or set `baseline` per model "
            "in the configuration"
        )
    targets = []
    for path, name, options in chosen:
        if options.arch is not None and flags.arch is None and not flags.trust_pickle:
            raise _untrusted_arch(config, name, options.arch)
        # trust in a model file comes from the command line (or LIPCHECK_TRUST_PICKLE), never from the configuration
        merged = replace(options.merged(flags), trust_pickle=flags.trust_pickle)
        if flags.plot is not None and len(chosen) > 1:
            merged = replace(merged, plot=_plot_name(flags.plot, name))
        targets.append(_target(path, name, merged))
    return targets


def _untrusted_arch(config: Config, name: str, arch: str) -> ConfigError:
    """``arch`` from the configuration imports and runs a Python file or module of the repository under review
    (a pull request could add both the model and the factory): only with trust given where lipcheck is run."""
    where = f"{config.file}: " if config.file else ""
    return ConfigError(
        f"{where}arch = {arch!r} (model {name}): an architecture from the configuration imports and runs code "
        "from the files under review, so lipcheck does not: pass --trust-pickle, or set LIPCHECK_TRUST_PICKLE=1, "
        "where lipcheck is run (the CI job), or give --arch on the command line"
    )


def _plot_name(plot: str, name: str) -> str:
    """``lipcheck.png`` for model ``models/a.onnx`` → ``lipcheck-models_a.png`` (one plot per model)."""
    from pathlib import PurePath

    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in PurePath(name).with_suffix("").as_posix())
    path = PurePath(plot)
    return str(path.with_name(f"{path.stem}-{stem.strip('_')}{path.suffix}"))


def check_targets(targets: Sequence[Target], *, updating_baseline: bool, max_increase_flag: bool) -> None:
    """Options that cannot work with these targets, before anything runs: :class:`UsageError` (exit 2)."""
    if updating_baseline and any(t.baseline is None for t in targets):
        missing = ", ".join(t.name for t in targets if t.baseline is None)
        raise UsageError(f"--update-baseline: no baseline file for {missing} (give --baseline FILE or set "
                         "`baseline` in the configuration)")
    if max_increase_flag and not any(t.baseline for t in targets):
        raise UsageError("--max-increase needs a baseline: --baseline FILE or `baseline` in the configuration")


def load_baselines(targets: Sequence[Target], *, updating: bool) -> dict[str, Snapshot | None]:
    """Every target's baseline, read before any analysis runs (a bad baseline fails fast, exit 2).

    A missing file is an error, except with ``updating`` (it is about to be written).
    """
    out: dict[str, Snapshot | None] = {}
    for target in targets:
        if target.baseline is None:
            continue
        try:
            out[target.path] = load_snapshot(target.baseline, model=target.path)
        except LipcheckError:
            from pathlib import Path

            if updating and not Path(target.baseline).exists():
                out[target.path] = None
                continue
            raise
    return out


@dataclass(frozen=True)
class ModelCheck:
    """One model's result: its report and verdict, or why it could not be analysed."""

    target: Target
    report: Report | None
    verdict: Verdict | None
    seconds: float
    error: str | None = None
    baseline_written: bool = False

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed


@dataclass(frozen=True)
class CheckRun:
    models: tuple[ModelCheck, ...]

    @property
    def complete(self) -> bool:
        """Every model was analysed (no errors): only then are reports written."""
        return all(model.error is None for model in self.models)

    @property
    def passed(self) -> bool:
        return self.complete and all(model.passed for model in self.models)

    @property
    def failed(self) -> tuple[ModelCheck, ...]:
        return tuple(m for m in self.models if m.verdict is not None and not m.verdict.passed)

    @property
    def errors(self) -> tuple[ModelCheck, ...]:
        return tuple(m for m in self.models if m.error is not None)


Analyze = Callable[..., Report]
ObserverFactory = Callable[[], Any]


def run_check(
    targets: Sequence[Target],
    baselines: Mapping[str, Snapshot | None],
    *,
    updating_baseline: bool = False,
    analyze: Analyze | None = None,
    observer: ObserverFactory | None = None,
    on_model: Callable[[ModelCheck], None] | None = None,
) -> CheckRun:
    """Analyse each target and evaluate its gate. ``analyze`` defaults to :func:`lipcheck.analyze`;
    ``observer`` makes a progress observer per model; ``on_model`` is told each result as it comes."""
    results = []
    for target in targets:
        start = time.perf_counter()
        progress = observer() if observer is not None else None
        try:
            run = analyze
            if run is None:
                import lipcheck

                run = lipcheck.analyze
            report = run(target.path, input_shape=target.input_shape, progress=progress, **target.analysis.kwargs())
        except LipcheckError as exc:
            result = ModelCheck(target, None, None, time.perf_counter() - start, error=str(exc))
        else:
            verdict = evaluate(report, target.thresholds, baselines.get(target.path),
                               updating_baseline=updating_baseline)
            result = ModelCheck(target, report, verdict, time.perf_counter() - start)
        finally:
            if progress is not None:
                progress.finish()
        results.append(result)
        if on_model is not None:
            on_model(result)
    return CheckRun(tuple(results))


def write_artifacts(run: CheckRun, *, update_baseline: bool) -> CheckRun:
    """For a complete run: every plot, then (with ``update_baseline``) every baseline, so that a plot that
    cannot be written leaves the baselines untouched. Returns the run with ``baseline_written`` set.
    Raises :class:`LipcheckError` when a file cannot be written."""
    from lipcheck.gate.baseline import save_baseline

    reports = []
    for model in run.models:
        if model.report is None:
            raise ValueError(f"{model.name} has no report: artifacts are written only for a complete run")
        reports.append(model.report)
    for model, report in zip(run.models, reports):
        if model.target.plot is not None:
            from lipcheck.report.plot import save_plot

            save_plot(report, model.target.plot, max_lipschitz=model.target.thresholds.max_lipschitz,
                      max_layer_sigma=model.target.thresholds.max_layer_sigma)
    if not update_baseline:
        return run
    written = []
    for model, report in zip(run.models, reports):
        if model.target.baseline is not None:
            save_baseline(report, model.target.baseline)
            model = replace(model, baseline_written=True)
        written.append(model)
    return CheckRun(tuple(written))
