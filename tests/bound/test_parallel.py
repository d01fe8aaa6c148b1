"""``jobs=N``: the weighted layers in worker processes give the report of ``jobs=1``, errors included; the
progress observer gets weighted work (and old observers one unit per layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lipcheck
from lipcheck.bound.parallel import resolve_jobs
from lipcheck.bound.walker import RuleFailure, walk
from lipcheck.errors import UsageError
from lipcheck.ir.graph import Graph, Node, TensorInfo
from lipcheck.progress import WorkMeter
from lipcheck.report.model import Settings
from tests.helpers import untimed

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["resnet_block", "cnn_bn", "attention"])
def test_two_jobs_give_the_report_of_one(name: str, tmp_path: Path) -> None:
    model = str(ROOT / "sample_models" / f"{name}.onnx")
    one = untimed(lipcheck.analyze(model, lower_bound=False, jobs=1).to_dict())
    two = untimed(lipcheck.analyze(model, lower_bound=False, jobs=2).to_dict())
    assert two == one  # bit for bit, the unbounded nodes of attention included
    if name == "attention":
        assert one["unbounded"]
    # jobs and the cache together: the workers' results are stored, the next run reads them
    cached = lipcheck.analyze(model, lower_bound=False, jobs=2, cache_dir=tmp_path)
    again = lipcheck.analyze(model, lower_bound=False, jobs=1, cache_dir=tmp_path)
    for report in (cached, again):
        data = untimed(report.to_dict())
        data["notes"] = [n for n in data["notes"] if not n.startswith("layer cache")]
        assert data == one
    assert any(" stored" in n for n in cached.notes) and not any(" stored" in n for n in again.notes)


def _broken_gemm() -> Graph:
    """A Gemm whose constant operand is 3-D: its rule crashes (a RuleFailure naming the node)."""
    node = Node("fc_broken", "Gemm", ("x", "w"), ("y",))
    return Graph(
        name="g", inputs=(TensorInfo("x", (1, 4), "float32"),), outputs=(TensorInfo("y", (1, 3), "float32"),),
        nodes=(node,), constants={"w": np.ones((2, 4, 3))}, shapes={"x": (1, 4), "w": (2, 4, 3), "y": (1, 3)},
        dtypes={"x": "float32", "y": "float32", "w": "float64"},
    )


def test_a_crash_in_a_worker_is_the_same_rule_failure() -> None:
    graph = _broken_gemm()
    with pytest.raises(RuleFailure) as sequential:
        walk(graph, Settings())
    with pytest.raises(RuleFailure) as parallel:
        walk(graph, Settings(), jobs=2)
    assert "fc_broken (Gemm)" in str(sequential.value) and str(parallel.value) == str(sequential.value)


@pytest.mark.parametrize(("value", "expected"), [(1, 1), ("3", 3), ("auto", -1), (0, -1)])
def test_resolve_jobs(value: Any, expected: int) -> None:
    import os

    assert resolve_jobs(value) == (expected if expected > 0 else (os.cpu_count() or 1))


def test_jobs_by_size_use_workers_for_large_models_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--jobs size`` (the CLI default): 1 for every sample model; one per usable thread (at most the number of
    weighted layers) once the weighted layers hold 5e8 multiply-adds; 1 when lipcheck may use one thread."""
    import lipcheck.threads
    from lipcheck.bound.parallel import BY_SIZE, jobs_for

    assert resolve_jobs("size") == BY_SIZE
    for path in sorted(SAMPLES.glob("*.onnx")):
        graph = lipcheck.load(str(path), input_shape=(1, 1, 8, 8) if path.stem == "dynamic_batch" else None)
        assert jobs_for(graph, BY_SIZE) == 1, path.stem
        assert jobs_for(graph, 3) == 3
    big = _conv_stack(channels=256, size=56, layers=3)
    monkeypatch.setattr(lipcheck.threads, "thread_limit", lambda: 4)
    assert jobs_for(big, BY_SIZE) == 3  # 3 weighted layers: no fourth worker
    monkeypatch.setattr(lipcheck.threads, "thread_limit", lambda: 1)
    assert jobs_for(big, BY_SIZE) == 1


def _conv_stack(channels: int, size: int, layers: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for k in range(layers):
        w = np.zeros((channels, channels, 3, 3), dtype=np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("Conv", [f"x{k}", f"w{k}"], [f"x{k + 1}"], pads=[1, 1, 1, 1]))
    shape = [1, channels, size, size]
    g = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return lipcheck.load(model)


@pytest.mark.parametrize("value", [-1, "-1", "two", 1.5])
def test_bad_jobs(value: Any) -> None:
    with pytest.raises(UsageError, match="--jobs"):
        resolve_jobs(value)


class Weighted:
    def __init__(self) -> None:
        self.total = 0.0
        self.done = 0.0
        self.labels: list[str] = []

    def start(self, total: float, description: str) -> None:
        self.total = total

    def advance(self, label: str, work: float = 1.0) -> None:
        self.done += work
        self.labels.append(label)

    def finish(self) -> None:
        pass


class Legacy:
    """An observer written before work weights: advance(label) only."""

    def __init__(self) -> None:
        self.total = 0
        self.calls: list[str] = []

    def start(self, total: int, description: str) -> None:
        self.total = total

    def advance(self, label: str) -> None:
        self.calls.append(label)

    def finish(self) -> None:
        pass


def test_work_meter_reports_every_item_once() -> None:
    weighted, legacy = Weighted(), Legacy()
    for progress in (weighted, legacy):
        meter = WorkMeter(progress, "bounding layers", [("conv", 100.0), ("relu", 1.0), ("fc", 10.0)])
        meter.done(2)  # a worker finished fc first
        for i in range(3):
            meter.working_on(i)
        meter.close()
    assert weighted.total == 111.0 and weighted.done == 111.0 and "conv" in weighted.labels
    assert legacy.total == 3 and sorted(legacy.calls) == ["conv", "fc", "relu"]


def test_the_walk_weights_layers_by_cost() -> None:
    progress = Weighted()
    lipcheck.analyze(str(ROOT / "sample_models" / "resnet_block.onnx"), lower_bound=False, progress=progress,
                     method="product")  # the walk's progress only (a composition method starts a stage of its own)
    assert progress.done == pytest.approx(progress.total) and progress.total > 1000  # convs dominate
    legacy = Legacy()
    report = lipcheck.analyze(str(ROOT / "sample_models" / "resnet_block.onnx"), lower_bound=False,
                              progress=legacy, method="product")
    assert legacy.total == len(legacy.calls) == len(report.layers) + len(report.ops)
