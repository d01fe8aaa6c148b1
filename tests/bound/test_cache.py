"""The per-layer cache (``cache_dir=`` / ``--cache``): hits give the same report and compute no norm; any
change to what a rule reads is a miss; a bad entry is recomputed, never a crash."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lipcheck
from lipcheck.bound.cache import LayerCache, layer_key, open_cache
from lipcheck.errors import UsageError
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.report.model import Settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "sample_models" / "resnet_block.onnx")


class NormCalls:
    """Counts the norm kernels' calls (the expensive part a hit must skip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import lipcheck.norms.conv as conv
        import lipcheck.norms.matrix as matrix

        self.count = 0
        for module, name in ((conv, "conv_norms"), (conv, "conv_transpose_norms"), (matrix, "matrix_norms"),
                             (matrix, "batched_matrix_norms")):
            monkeypatch.setattr(module, name, self._counting(getattr(module, name)))

    def _counting(self, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return fn(*args, **kwargs)

        return wrapped


def _numbers(report: Any) -> dict[str, Any]:
    data = report.to_dict()
    data["notes"] = [n for n in data["notes"] if not n.startswith("layer cache")]
    return data


def _cache_note(report: Any) -> str:
    (note,) = [n for n in report.notes if n.startswith("layer cache")]
    return note


def _analyze(cache: Path | None = None, **options: Any) -> Any:
    return lipcheck.analyze(MODEL, lower_bound=False, cache_dir=cache, **options)


def test_second_run_is_all_hits_same_numbers_no_norms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    calls = NormCalls(monkeypatch)
    first = _analyze(cache)
    assert calls.count > 0
    layers = sum(1 for layer in first.layers if layer.op in ("Conv", "Gemm"))
    assert f"0 of {layers} layers" in _cache_note(first) and f"{layers} stored" in _cache_note(first)
    calls.count = 0
    second = _analyze(cache)
    assert calls.count == 0
    assert f"{layers} of {layers} layers" in _cache_note(second) and "read from the cache" in _cache_note(second)
    assert _numbers(second) == _numbers(first) == _numbers(_analyze(None))
    assert len(list(cache.rglob("*.json"))) == layers


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"power_iterations": 7}, {"tolerance": 1e-3}, {"exact_limit": 0}],
    ids=["seed", "iterations", "tolerance", "exact-limit"],
)
def test_a_changed_setting_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]) -> None:
    _analyze(tmp_path)
    calls = NormCalls(monkeypatch)
    report = _analyze(tmp_path, **change)
    assert calls.count > 0 and "0 of" in _cache_note(report)


def _graph(input_shape: Any = None) -> Any:
    return fold_batchnorm(lipcheck.load(MODEL, input_shape=input_shape))


def test_key_follows_weights_shapes_and_settings_not_names() -> None:
    graph = _graph()
    settings = Settings()
    node = next(n for n in graph.nodes if n.op_type == "Conv")
    key = layer_key(node, graph, settings)
    assert key is not None and key == layer_key(node, graph, settings)
    # a renamed node (and renamed tensors) is the same layer
    assert layer_key(dataclasses.replace(node, name="renamed"), graph, settings) == key
    # one changed weight element misses
    w = node.inputs[1]
    changed = np.array(graph.constants[w], copy=True)
    changed.flat[0] = np.nextafter(changed.flat[0], np.inf)
    other = dataclasses.replace(graph, constants={**graph.constants, w: changed})
    assert layer_key(node, other, settings) != key
    # a non-contiguous view of the same values hashes like the values
    transposed = np.ascontiguousarray(np.asarray(graph.constants[w]).T).T
    same = dataclasses.replace(graph, constants={**graph.constants, w: transposed})
    assert not transposed.flags.c_contiguous and layer_key(node, same, settings) == key
    # the input's shape
    shapes = dict(graph.shapes)
    shapes[node.inputs[0]] = tuple(d + 1 if i >= 2 else d for i, d in enumerate(shapes[node.inputs[0]]))
    assert layer_key(node, dataclasses.replace(graph, shapes=shapes), settings) != key
    # an attribute, and the settings
    assert layer_key(dataclasses.replace(node, attrs={**node.attrs, "group": 1}), graph, settings) != key or \
        node.attrs.get("group") == 1
    assert layer_key(node, graph, dataclasses.replace(settings, seed=5)) != key


def test_a_changed_weight_misses_and_renamed_graph_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _graph()
    first = lipcheck.analyze(graph, lower_bound=False, cache_dir=tmp_path)
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    w = conv.inputs[1]
    other = dataclasses.replace(graph, constants={**graph.constants, w: np.asarray(graph.constants[w]) * 2.0})
    calls = NormCalls(monkeypatch)
    second = lipcheck.analyze(other, lower_bound=False, cache_dir=tmp_path)
    assert calls.count == 1  # only the changed layer is recomputed
    assert second.layers[0].sigma_upper == pytest.approx(2 * first.layers[0].sigma_upper, rel=1e-9)
    assert [a.sigma_upper for a in first.layers[1:]] == [b.sigma_upper for b in second.layers[1:]]


def test_a_changed_input_shape_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dynamic = str(ROOT / "sample_models" / "dynamic_batch.onnx")
    lipcheck.analyze(dynamic, input_shape=(1, 1, 8, 8), lower_bound=False, cache_dir=tmp_path)
    bigger = (2, 1, 8, 8)  # only the batch is dynamic here: still a different shape, a miss
    calls = NormCalls(monkeypatch)
    report = lipcheck.analyze(dynamic, input_shape=bigger, lower_bound=False, cache_dir=tmp_path)
    assert calls.count > 0 and "0 of" in _cache_note(report)


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"format": 1, "key": "x", "bound": {}}', "\udcff"],
                         ids=["truncated", "list", "wrong-key", "undecodable"])
def test_a_corrupt_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, garbage: str) -> None:
    first = _analyze(tmp_path)
    entries = list(tmp_path.rglob("*.json"))
    for entry in entries:
        if garbage == "\udcff":
            entry.write_bytes(b"\xff\xfe\x00garbage")
        else:
            entry.write_text(garbage, encoding="utf-8")
    calls = NormCalls(monkeypatch)
    second = _analyze(tmp_path)
    assert calls.count > 0
    assert f"{len(entries)} unreadable entries recomputed" in _cache_note(second)
    assert _numbers(second) == _numbers(first)
    # and rewritten: the third run is all hits
    calls.count = 0
    _analyze(tmp_path)
    assert calls.count == 0


def test_an_entry_with_wrong_types_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _analyze(tmp_path)
    entry = next(tmp_path.rglob("*.json"))
    data = json.loads(entry.read_text(encoding="utf-8"))
    data["bound"]["norms"]["sigma_upper"] = "huge"
    entry.write_text(json.dumps(data), encoding="utf-8")
    calls = NormCalls(monkeypatch)
    report = _analyze(tmp_path)
    assert calls.count == 1 and "1 unreadable entry recomputed" in _cache_note(report)


def test_the_cache_folder_is_created_and_a_file_is_refused(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    assert isinstance(open_cache(nested), LayerCache) and nested.is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        _analyze(a_file)


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.files

    def refuse(*_: Any, **__: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(lipcheck.files, "atomic_outputs", refuse)
    report = _analyze(tmp_path)
    assert "could not be written" in _cache_note(report)
    assert _numbers(report) == _numbers(_analyze(None))
