"""``lipcheck normalize``: write a copy of a model whose weights are spectrally normalized, verified.

Flow: load → canonicalize → walk (certified σ per layer) → :mod:`plan <lipcheck.normalize.plan>` (pure) →
write the same format (:mod:`onnx_writer <lipcheck.normalize.onnx_writer>`,
:mod:`torch_writer <lipcheck.normalize.torch_writer>`) into a staging folder next to the output
(:func:`lipcheck.files.staged_outputs`) → analyse the staged copy again → if it meets the target, move it into
place (data files first, the model last); otherwise nothing is written and :class:`VerificationError` says which
layer or bound missed. The input file and its data files are never modified (unless ``in_place``, and then only
after the verified copy is complete); a device, FIFO, socket or folder at the output path is never replaced.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcheck.errors import GateFailure, LipcheckError, UsageError
from lipcheck.files import check_output_path, staged_outputs
from lipcheck.normalize.plan import HALF_SAFETY, SAFETY, Plan, PlanError, plan_global, plan_per_layer
from lipcheck.progress import NullProgress, Progress

__all__ = ["NormalizeResult", "PlanError", "VerificationError", "normalize"]

_TOLERANCE = 1e-9  # the re-analysed certificate may exceed the plan's σ·factor by this much (relative)
_AGREEMENT = 1e-4  # ... and must agree with it to this (else the writer did not scale what the plan said)
# lipsdp: a fresh run of its multiplier search lands within ~5e-4 (relative) of another on scaled or re-rounded
# weights (measured), so a global target it meets is aimed this far below, and checked by a run on the scaled weights
LIPSDP_SAFETY = 2e-3
_LIPSDP_REPLANS = 3


class VerificationError(GateFailure):
    """The written model, analysed again, does not meet the target: nothing was written (exit code 1)."""


@dataclass(frozen=True)
class Written:
    """One weight tensor the writer changed (see the writers' ``WrittenScale``)."""

    param: str
    tensor: str
    factor: float
    tensor_factor: float
    how: str


@dataclass(frozen=True)
class NormalizeResult:
    model: str
    out: str | None  # None for a dry run
    plan: Plan
    dry_run: bool
    written: tuple[Written, ...] = ()
    sigma_after: Mapping[str, float] = field(default_factory=dict)  # layer name -> re-analysed σ upper
    bound_after: float | None = None  # the re-analysed certified bound of the written model
    verified: bool = False
    notes: tuple[str, ...] = ()
    method: str = "auto"  # the composition methods of every bound here (lipcheck.bound.methods.choose)

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "schema_version": 1,
            "model": self.model,
            "out": self.out,
            "dry_run": self.dry_run,
            "mode": p.mode,
            "method": self.method,
            "target": p.target,
            "bound_before": p.bound_before,
            "bound_planned": p.bound_after,
            "bound_after": self.bound_after,
            "verified": self.verified,
            "layers": [
                {
                    "name": r.name, "op": r.op, "param": r.param, "fused_with": list(r.fused_with),
                    "sigma_before": r.sigma_before, "factor": r.factor, "sigma_planned": r.sigma_after,
                    "sigma_after": self.sigma_after.get(r.name), "reason": r.reason,
                }
                for r in p.layers
            ],
            "written": [w.__dict__ for w in self.written],
            "notes": list(p.notes) + list(self.notes),
        }


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _is_torch(path: Path) -> bool:
    from lipcheck.loaders import _is_torch_file

    return _is_torch_file(path)


def _external_data_files(path: Path) -> list[Path]:
    """The external data files an ONNX model refers to (they must not be overwritten either)."""
    if _is_torch(path):
        return []
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model fails later with the loader's own message
        return []
    from lipcheck.loaders.onnx_loader import _all_tensors

    return sorted({(path.parent / ExternalDataInfo(t).location) for t in _all_tensors(model) if uses_external_data(t)})


def normalize(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    target: float = 1.0,
    exact: bool = False,
    global_target: float | None = None,
    layers: Iterable[str] | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    input_shape: Any = None,
    power_iterations: int = 100,
    tolerance: float = 1e-6,
    seed: int = 0,
    exact_limit: int = 2_000_000,
    progress: Progress | None = None,
    trust_pickle: bool = False,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    key: str | None = None,
    method: str = "auto",
) -> NormalizeResult:
    """Plan, write and verify a spectrally normalized copy of ``model`` (an ONNX or PyTorch file) at ``out``.

    Per layer (default) every weighted layer's certified σ ends ≤ ``target``; ``exact`` scales every layer to
    ``target``; ``global_target`` scales the (selected, ``layers``) layers by one common factor so that the
    model's certified bound ends ≤ it. Raises :class:`VerificationError` (nothing written) when the written
    copy, analysed again, misses; :class:`PlanError` when no scaling can meet the target.

    ``method`` composes every bound (before, planned, verified) as :func:`lipcheck.analyze` does: the least of the
    product's and, where it applies, lipsdp's. lipsdp's value after scaling is predicted by its homogeneity
    (:func:`~lipcheck.bound.methods.choose.scaled_lipsdp`); with ``global_target`` the plan is then checked by a
    lipsdp run on the scaled weights (and re-planned below what it gives), and the written copy is re-analysed with
    the same method. The blocks method is not homogeneous in the weights (x + W₂φ(W₁x)), so it plans nothing: the
    plan is the product's (or lipsdp's), and the re-analysis with blocks can only find the copy's bound lower."""
    from lipcheck.bound.methods.choose import check_method, lipsdp_result, scaled_lipsdp
    from lipcheck.bound.walker import compose, walk
    from lipcheck.ir.canonicalize import fold_batchnorm
    from lipcheck.loaders import TorchOptions, load_model
    from lipcheck.report.model import Settings

    progress = progress or NullProgress()
    method = check_method(method)
    source = Path(model)
    if exact and global_target is not None:
        raise UsageError("--exact and --global-target are two different policies: choose one")
    if layers is not None and global_target is None:
        raise UsageError("--layers restricts --global-target; per-layer targets apply to every layer")
    dest: Path | None = None  # the file replaced or created (symlinks resolved)
    if not dry_run:
        if in_place:
            if out is not None and not _same_file(Path(out), source):
                raise UsageError("--in-place writes over MODEL itself: drop --out, or drop --in-place")
            dest = check_output_path(source, "MODEL")
        elif out is None:
            raise UsageError("normalize needs --out OUT (or --dry-run to only print the plan, or --in-place)")
        else:
            dest = check_output_path(out, "--out")
            _check_out(Path(out), source, dest)

    options = TorchOptions(trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs, key=key)
    settings = Settings(power_iterations=power_iterations, tolerance=tolerance, seed=seed, exact_limit=exact_limit,
                        lower_bound=False, lower_bound_seconds=0.0)
    graph = fold_batchnorm(load_model(str(source), input_shape=input_shape, torch_options=options))
    walked = walk(graph, settings, progress)
    sdp, sdp_note = lipsdp_result(graph, method)
    sdp_value = sdp.value if sdp is not None and sdp.certified and sdp.value is not None else None
    correction = 1.0  # measured / predicted lipsdp value on the scaled weights (≥ 1 once measured)

    def bound(scales: dict[str, float]) -> float:
        product = compose(graph, walked, scales)
        if sdp_value is None:
            return product
        return min(product, scaled_lipsdp(sdp_value * correction, graph, scales))

    before = bound({})
    dtypes = {str(getattr(v, "dtype", "")) for v in graph.constants.values()}
    safety = max([SAFETY, *(HALF_SAFETY[d] for d in dtypes if d in HALF_SAFETY)])
    method_notes = [sdp_note] if sdp_note else []
    if global_target is not None:
        if sdp_value is not None:
            safety = max(safety, LIPSDP_SAFETY)
        plan = plan_global(walked.layers, global_target, bound, only=layers, safety=safety)
        for _ in range(_LIPSDP_REPLANS if sdp_value is not None else 0):
            measured = _lipsdp_after(graph, plan, method)
            predicted = scaled_lipsdp(sdp_value * correction, graph, _node_factors(plan))  # type: ignore[operator]
            if measured is None or plan.bound_after is None or plan.bound_after < predicted:
                break  # lipsdp is not what meets the target (the product is lower)
            method_notes.append(f"lipsdp re-run on the planned weights: {measured:.6g} (predicted {predicted:.6g})")
            if measured <= global_target * (1 - 0.5 * LIPSDP_SAFETY):  # room for the re-analysis' own run
                break
            correction *= measured / predicted
            plan = plan_global(walked.layers, global_target, bound, only=layers, safety=safety)
    else:
        plan = plan_per_layer(walked.layers, target, exact=exact, bound=bound,
                              bound_before=None if math.isinf(before) else before, safety=safety)
    if dry_run or dest is None:
        progress.finish()
        return NormalizeResult(model=str(model), out=None, plan=plan, dry_run=True, notes=tuple(method_notes),
                               method=method)
    notes: tuple[str, ...] = tuple(method_notes)
    if not plan.factors:
        notes += ("every layer already meets the target: the output is a copy with unchanged weights",)

    shown = str(model) if out is None else os.fspath(out)
    try:
        with staged_outputs(dest) as staging:  # published (data files first) only when the with-block ends normally
            staged = staging / dest.name
            progress.start(0, "writing")
            written = _write(source, staged, plan.factors, options)
            progress.start(0, "verifying the written model")
            result = _verify(staged, plan, settings, input_shape, options, global_target, target, method)
            progress.start(0, "moving the written model into place")
    except OSError as exc:  # a full or read-only disk, no permission, a FIFO created meanwhile...
        raise _write_error(shown, exc, dest) from exc
    finally:
        progress.finish()
    sigma_after, bound_after = result
    return NormalizeResult(
        model=str(model), out=shown, plan=plan, dry_run=False, written=tuple(written),
        sigma_after=sigma_after, bound_after=bound_after, verified=True, notes=notes, method=method,
    )


def _node_factors(plan: Plan) -> dict[str, float]:
    """layer (node) name -> the factor its weight gets."""
    return {r.name: r.factor for r in plan.layers if r.param is not None}


def _lipsdp_after(graph: Any, plan: Plan, method: str) -> float | None:
    """lipsdp's certified value on the graph with the plan's factors applied in memory (None: none)."""
    from lipcheck.bound.methods.choose import lipsdp_result, scale_graph

    result, _ = lipsdp_result(scale_graph(graph, _node_factors(plan)), method)
    return result.value if result is not None and result.certified else None


def _check_out(out: Path, source: Path, dest: Path) -> None:
    """Refuse an ``--out`` that is (or whose data files are) the input model or one of its data files, a
    folder, a device, FIFO or socket, or in a folder that does not exist: before any work, one line each."""
    protected = [source, *_external_data_files(source)] if source.exists() else [source]
    # the output's own external data goes to <OUT>.data (.data.<k>): never onto the source's files
    outputs = [dest, dest.with_name(dest.name + ".data")]
    outputs += [dest.with_name(f"{dest.name}.data.{k}") for k in range(len(protected) + 1)]
    if any(_same_file(w, p) for w in [out, *outputs] for p in protected):
        raise UsageError(f"--out {out} is the input model (or one of its data files): lipcheck never modifies "
                         "its input; choose another output path, or pass --in-place to replace the input")
    if not dest.parent.is_dir():
        raise UsageError(f"--out {out}: folder {dest.parent} does not exist")
    for data in outputs[1:]:
        check_output_path(data, f"--out {out}: its data file")


def _write_error(out: str, exc: OSError, dest: Path) -> LipcheckError:
    """One line naming the output and the problem (and the file, when it is neither the output nor staged)."""
    problem = exc.strerror or str(exc)
    other = exc.filename
    if other is not None:
        other_path = Path(os.fsdecode(other))
        if other_path == dest or ".lipcheck-" in other_path.name:
            other = None
    return LipcheckError(f"cannot write {out}: {problem}" + (f" ({os.fsdecode(other)})" if other else ""))


def _write(source: Path, staged: Path, factors: Mapping[str, float], options: Any) -> list[Written]:
    if _is_torch(source):
        from lipcheck.normalize.torch_writer import write_scaled_torch

        raw: Sequence[Any] = write_scaled_torch(source, staged, factors, options)
    else:
        from lipcheck.normalize.onnx_writer import write_scaled_onnx

        raw = write_scaled_onnx(source, staged, factors)
    return [Written(w.param, w.tensor, w.factor, w.tensor_factor, w.how) for w in raw]


def _verify(
    staged: Path,
    plan: Plan,
    settings: Any,
    input_shape: Any,
    options: Any,
    global_target: float | None,
    target: float,
    method: str = "auto",
) -> tuple[dict[str, float], float | None]:
    """Analyse the written copy: every layer as planned, and the target met; else VerificationError."""
    from lipcheck.bound.analysis import analyze

    report = analyze(
        staged, input_shape=input_shape, power_iterations=settings.power_iterations, tolerance=settings.tolerance,
        seed=settings.seed, exact_limit=settings.exact_limit, lower_bound=False, trust_pickle=options.trust_pickle,
        arch=options.arch, arch_kwargs=dict(options.arch_kwargs) if options.arch_kwargs else None, key=options.key,
        method=method,
    )
    after = {layer.name: layer.sigma_upper for layer in report.layers}
    problems = []
    for row in plan.layers:
        got = after.get(row.name)
        if got is None:
            problems.append(f"layer {row.name} is missing from the written model")
            continue
        if abs(got - row.sigma_after) > _AGREEMENT * max(row.sigma_after, 1e-300):
            problems.append(f"{row.name}: certified σ {got:.6g} after writing, {row.sigma_after:.6g} planned")
        if global_target is None and row.param is not None and got > target * (1 + _TOLERANCE):
            problems.append(f"{row.name}: certified σ {got:.6g} is above the target {target:g}")
    if global_target is not None and (report.upper_bound is None or report.upper_bound > global_target):
        shown = "unbounded" if report.upper_bound is None else f"{report.upper_bound:.6g}"
        problems.append(f"the certified bound {shown} is above the global target {global_target:g}")
    if problems:
        raise VerificationError("the written model does not meet the target, nothing was written: "
                                + "; ".join(problems[:3]) + (f"; ... ({len(problems)} in all)" if len(problems) > 3
                                                             else ""))
    return after, report.upper_bound
