"""Baseline files (analyze / check JSON) and the layer-by-layer comparison."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from lipcheck.gate.baseline import (
    BaselineError,
    Change,
    LayerSnapshot,
    Snapshot,
    compare,
    load_snapshot,
    save_baseline,
    snapshot_from_json,
    write_atomically,
)
from lipcheck.report.formats import render_json
from tests.gate.reports import layer, report

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_reads_the_analyze_json_of_a_sample_model() -> None:
    snapshot = load_snapshot(GOLDEN / "cli_mlp.json")
    data = json.loads((GOLDEN / "cli_mlp.json").read_text())
    assert snapshot.upper_bound == data["upper_bound"]
    assert [(s.name, s.sigma_upper) for s in snapshot.layers] == [
        (layer["name"], layer["sigma_upper"]) for layer in data["layers"]
    ]
    unbounded = load_snapshot(GOLDEN / "cli_attention.json")
    assert unbounded.upper_bound is None and len(unbounded.layers) == 5


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    original = report(3.25, [layer("a", 1.5), layer("b", 2.0)])
    path = tmp_path / "nested" / "base.json"
    save_baseline(original, path)
    assert path.read_text() == render_json(original)
    assert load_snapshot(path) == dataclasses.replace(Snapshot.from_report(original), source=str(path))


def test_written_file_has_the_usual_mode_and_no_temporary_left(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_atomically(path, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["out.txt"]


def test_check_json_with_several_models_picks_the_matching_entry(tmp_path: Path) -> None:
    entries = [report(1.0, model="a.onnx").to_dict(), report(2.0, model="b.onnx").to_dict()]
    path = tmp_path / "all.json"
    path.write_text(json.dumps({"schema_version": 1, "gate": {"passed": True}, "models": entries}))
    assert load_snapshot(path, model="b.onnx").upper_bound == 2.0
    with pytest.raises(BaselineError, match="holds 2 reports .*none is for c.onnx"):
        load_snapshot(path, model="c.onnx")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON (Expecting value, line 1 column 1)"),
        ("[1, 2]", "not a lipcheck JSON report"),
        ('{"schema_version": 7}', "schema_version 7 is not supported"),
        ('{"schema_version": 1, "model": "m"}', "missing key 'upper_bound'"),
        ('{"schema_version": 1, "model": "m", "upper_bound": "x", "certified": true, "layers": []}',
         "upper_bound: expected a number or null"),
        ('{"schema_version": 1, "model": "m", "upper_bound": 1, "certified": true, "layers": [{"op": "Gemm"}]}',
         "layers[0] must be an object with a string 'name'"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(BaselineError) as info:
        load_snapshot(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_baseline_says_how_to_write_it(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"baseline .*missing.json not found \(write it with --update-baseline\)"):
        load_snapshot(tmp_path / "missing.json")


def test_compare_matches_layers_by_name_and_keeps_repeated_names() -> None:
    before = Snapshot("m", 2.0, None, None, (LayerSnapshot("a", "Gemm", 1.0), LayerSnapshot("a", "Gemm", 2.0),
                                           LayerSnapshot("old", "Conv", 1.0)))
    after = Snapshot("m", 2.2, None, None, (LayerSnapshot("a", "Gemm", 1.0), LayerSnapshot("a", "Gemm", 2.2),
                                          LayerSnapshot("b", "Gemm", 0.5), LayerSnapshot("nan", "Gemm", None)))
    comparison = compare(before, after)
    changes = {c.name: (c.change, c.growth) for c in comparison.layers}
    assert changes == {
        "a": (Change.SAME, 0.0), "a#2": (Change.GREW, 10.0), "b": (Change.ADDED, None),
        "nan": (Change.ADDED, None), "old": (Change.REMOVED, None),
    }
    assert comparison.growth == 10.0
    assert [c.name for c in comparison.grown_layers] == ["b", "nan", "a#2"]


def test_an_unbounded_side_has_no_growth() -> None:
    before = snapshot_from_json(report(None).to_dict(), "b.json")
    after = Snapshot.from_report(report(2.0))
    assert compare(before, after).growth is None
