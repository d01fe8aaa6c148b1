"""Resolving what to check (flags over config) and running the checks with a stand-in analysis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lipcheck.errors import LipcheckError, LoadError, UsageError
from lipcheck.gate.config import Config, ModelEntry, ModelOptions
from lipcheck.gate.decision import Thresholds
from lipcheck.gate.run import AnalysisOptions, load_baselines, resolve_targets, run_check, write_artifacts
from lipcheck.report.model import Report
from tests.gate.reports import report

CONFIG = Config(
    file="pyproject.toml",
    defaults=ModelOptions(max_lipschitz=10.0, seed=1),
    models=(
        ModelEntry("a.onnx", "a.onnx", ModelOptions(max_lipschitz=10.0, seed=1, max_layer_sigma=3.0)),
        ModelEntry("b.onnx", "bee", ModelOptions(max_lipschitz=20.0, seed=1, exact=False, baseline="b.json")),
    ),
)


def test_no_models_runs_every_configured_model() -> None:
    a, b = resolve_targets([], CONFIG, ModelOptions())
    assert (a.path, a.thresholds) == ("a.onnx", Thresholds(max_lipschitz=10.0, max_layer_sigma=3.0))
    assert (b.name, b.thresholds.max_lipschitz, b.baseline) == ("bee", 20.0, "b.json")
    assert a.analysis == AnalysisOptions(seed=1)  # check's defaults: no lower bound
    assert b.analysis.exact_limit == 0  # exact = false
    assert a.analysis.tight_work == 50.0 and a.analysis.kwargs()["tight_work"] == 50.0  # the default, forwarded


def test_flags_override_the_config_and_unconfigured_models_get_the_defaults() -> None:
    flags = ModelOptions(max_lipschitz=5.0, lower_bound=True, input_shape=(1, 4))
    a, other = resolve_targets(["a.onnx", "other.onnx"], CONFIG, flags)
    assert a.thresholds == Thresholds(max_lipschitz=5.0, max_layer_sigma=3.0)
    assert a.analysis.lower_bound is True and a.input_shape == (1, 4)
    assert (other.name, other.thresholds, other.analysis.seed) == ("other.onnx", Thresholds(max_lipschitz=5.0), 1)


def test_one_plot_per_model_when_several() -> None:
    targets = resolve_targets([], CONFIG, ModelOptions(plot="out/lip.png"))
    assert [t.plot for t in targets] == ["out/lip-a.png", "out/lip-bee.png"]
    [single] = resolve_targets(["a.onnx"], CONFIG, ModelOptions(plot="lip.png"))
    assert single.plot == "lip.png"


def test_nothing_to_check_and_one_baseline_for_several_models_are_usage_errors() -> None:
    with pytest.raises(UsageError, match=r"nothing to check: give MODEL, or list the models in \[\[tool.lipcheck"):
        resolve_targets([], Config(file=None, defaults=ModelOptions()), ModelOptions())
    with pytest.raises(UsageError, match="--baseline x.json with 2 models"):
        resolve_targets([], CONFIG, ModelOptions(baseline="x.json"))


def test_baselines_are_read_before_the_analysis(tmp_path: Path) -> None:
    [target] = resolve_targets(["m.onnx"], CONFIG, ModelOptions(baseline=str(tmp_path / "none.json")))
    with pytest.raises(LipcheckError, match="not found"):  # exit 2
        load_baselines([target], updating=False)
    assert load_baselines([target], updating=True) == {"m.onnx": None}  # about to be written


def test_a_model_that_cannot_be_read_is_recorded_and_the_others_still_run() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def analyze(path: str, **options: Any) -> Report:
        calls.append((path, options))
        if path == "b.onnx":
            raise LoadError("b.onnx: no such file")
        return report(12.0, model=path)

    targets = resolve_targets(["b.onnx", "a.onnx"], CONFIG, ModelOptions())
    seen: list[str] = []
    run = run_check(targets, {}, analyze=analyze, on_model=lambda m: seen.append(m.name))
    assert [path for path, _ in calls] == ["b.onnx", "a.onnx"] and seen == ["bee", "a.onnx"]
    assert calls[1][1] == {"input_shape": None, "progress": None, **AnalysisOptions(seed=1).kwargs()}
    assert not run.complete and not run.passed
    assert [m.error for m in run.errors] == ["b.onnx: no such file"]
    assert [m.name for m in run.failed] == ["a.onnx"]  # 12 > 10


def test_artifacts_plots_first_so_a_failed_plot_leaves_the_baseline_alone(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("not a folder")
    flags = ModelOptions(baseline=str(tmp_path / "b.json"), plot=str(tmp_path / "file" / "p.png"))
    [target] = resolve_targets(["m.onnx"], CONFIG, flags)
    run = run_check([target], {}, analyze=lambda path, **_: report(1.0, model=path))
    with pytest.raises(LipcheckError, match="cannot write plot"):
        write_artifacts(run, update_baseline=True)
    assert not (tmp_path / "b.json").exists()
    target = replace(target, plot=str(tmp_path / "p.png"))
    run = run_check([target], {}, analyze=lambda path, **_: report(1.0, model=path))
    done = write_artifacts(run, update_baseline=True)
    assert done.models[0].baseline_written and (tmp_path / "b.json").exists() and (tmp_path / "p.png").exists()
