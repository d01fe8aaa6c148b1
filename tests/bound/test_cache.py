"""The per-layer cache (``cache_dir=`` / ``--cache``): hits give the same report and compute no norm; any
change to what a rule reads is a miss; a bad, tampered, unsigned or unreadable entry is recomputed, never a
crash, a hang, or a number taken on faith."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lipcheck
from lipcheck.bound.cache import LayerCache, layer_key, open_cache
from lipcheck.errors import UsageError
from lipcheck.ir.canonicalize import fold_batchnorm
from lipcheck.report.model import Settings
from tests.helpers import untimed

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


@pytest.fixture(autouse=True)
def _own_cache_keys(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test keeps its cache keys in its own config folder (never the real ~/.config), with no key given."""
    config = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("LIPCHECK_CACHE_KEY", raising=False)
    return config


def _numbers(report: Any) -> dict[str, Any]:
    data = untimed(report.to_dict())
    data["notes"] = [n for n in data["notes"] if not n.startswith("layer cache")]
    return data


def _cache_note(report: Any) -> str:
    (note,) = [n for n in report.notes if n.startswith("layer cache")]
    return note


def _analyze(cache: Path | None = None, **options: Any) -> Any:
    return lipcheck.analyze(MODEL, lower_bound=False, method="product", cache_dir=cache, **options)


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
    first = lipcheck.analyze(graph, lower_bound=False, method="product", cache_dir=tmp_path)
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    w = conv.inputs[1]
    other = dataclasses.replace(graph, constants={**graph.constants, w: np.asarray(graph.constants[w]) * 2.0})
    calls = NormCalls(monkeypatch)
    second = lipcheck.analyze(other, lower_bound=False, method="product", cache_dir=tmp_path)
    assert calls.count == 1  # only the changed layer is recomputed
    assert second.layers[0].sigma_upper == pytest.approx(2 * first.layers[0].sigma_upper, rel=1e-9)
    assert [a.sigma_upper for a in first.layers[1:]] == [b.sigma_upper for b in second.layers[1:]]


def test_a_changed_input_shape_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dynamic = str(ROOT / "sample_models" / "dynamic_batch.onnx")
    lipcheck.analyze(dynamic, input_shape=(1, 1, 8, 8), lower_bound=False, method="product", cache_dir=tmp_path)
    bigger = (2, 1, 8, 8)  # only the batch is dynamic here: still a different shape, a miss
    calls = NormCalls(monkeypatch)
    report = lipcheck.analyze(dynamic, input_shape=bigger, lower_bound=False, method="product", cache_dir=tmp_path)
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
    assert f"{len(entries)} cache entries were invalid and recomputed" in _cache_note(second)
    assert _numbers(second) == _numbers(first)
    # and rewritten: the third run is all hits
    calls.count = 0
    _analyze(tmp_path)
    assert calls.count == 0


def test_an_entry_with_wrong_types_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _analyze(tmp_path)
    # a Conv's entry (one conv_norms call to recompute; a Gemm's is two: matrix_norms calls the batched one)
    entry = next(e for e in sorted(tmp_path.rglob("*.json"))
                 if json.loads(e.read_text(encoding="utf-8"))["bound"].get("rule", "").startswith("Conv:"))
    data = json.loads(entry.read_text(encoding="utf-8"))
    data["bound"]["norms"]["sigma_upper"] = "huge"
    entry.write_text(json.dumps(data), encoding="utf-8")
    calls = NormCalls(monkeypatch)
    report = _analyze(tmp_path)
    assert calls.count == 1 and "1 cache entry was invalid and recomputed" in _cache_note(report)


def test_the_cache_folder_is_created_and_a_file_is_refused(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    assert isinstance(open_cache(nested), LayerCache) and nested.is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        _analyze(a_file)


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.bound.cache as cache_module

    def refuse(*_: Any, **__: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module, "_write_entry", refuse)
    report = _analyze(tmp_path)
    assert "could not be written" in _cache_note(report)
    assert _numbers(report) == _numbers(_analyze(None))


# ------------------------------------------------------------------ never trusted blindly: tampering, I/O

MLP = str(ROOT / "sample_models" / "mlp.onnx")  # three Gemm layers, bound 10.18, fast
CONV_MODEL = str(ROOT / "sample_models" / "weight_norm.onnx")  # Conv, Conv, Gemm


def _run(model: str, cache: Path | None) -> Any:
    return lipcheck.analyze(model, lower_bound=False, method="product", cache_dir=cache)


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    """The reports without a cache: what every run over a tampered cache must reproduce, bit for bit."""
    return {model: _run(model, None) for model in (MLP, CONV_MODEL)}


def _same_as_fresh(report: Any, fresh_report: Any) -> None:
    assert report.upper_bound is not None and report.upper_bound == fresh_report.upper_bound
    assert report.certified == fresh_report.certified
    assert _numbers(report) == _numbers(fresh_report)


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.json"))


def _layer_index(bound: dict[str, Any]) -> int:
    return 1 - int(bound["weight"])


def _set_sigma(value: Any) -> Any:
    """Set σ power / exact / upper, the layer's gain and its estimate to ``value``: consistent, but unsigned."""

    def change(data: dict[str, Any]) -> None:
        bound = data["bound"]
        layer = _layer_index(bound)
        for name in ("sigma_power", "sigma_exact", "sigma_upper"):
            if bound["norms"][name] is not None:
                bound["norms"][name] = value
        for gains in ("gains", "estimate_gains"):
            bound[gains] = [[i, value if i == layer else g] for i, g in bound[gains]]

    return change


def _gain_below_sigma_upper(data: dict[str, Any]) -> None:
    bound = data["bound"]
    layer = _layer_index(bound)
    bound["gains"] = [[i, g / 1000 if i == layer else g] for i, g in bound["gains"]]


def _edit_entries(cache: Path, change: Any, *, text: Any = None, sign_with: bytes | None = None) -> int:
    """Apply ``change`` (edits the parsed entry in place) to every entry; re-sign it with ``sign_with``; then
    ``text`` (str -> str) on the JSON text. Returns the number of entries."""
    from lipcheck.bound.cache import entry_mac

    entries = _entries(cache)
    assert entries
    for path in entries:
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        if sign_with is not None:
            data["hmac"] = entry_mac(sign_with, data)
        out = json.dumps(data)
        path.write_text(text(out) if text is not None else out, encoding="utf-8")
    return len(entries)


def _with_a_marker(marker_text: str) -> tuple[Any, Any]:
    """A change that puts a marker number where σ is, and a text edit that swaps it for ``marker_text``
    (``NaN``, ``Infinity``, ``1e999``: what json.dumps would not write)."""
    return _set_sigma(123456.75), lambda out: out.replace("123456.75", marker_text)


UNSIGNED_EDITS: dict[str, tuple[Any, Any]] = {
    "sigma-0.001": (_set_sigma(0.001), None),
    "sigma-1e-6": (_set_sigma(1e-6), None),
    "sigma-0": (_set_sigma(0.0), None),
    "sigma-minus-1": (_set_sigma(-1.0), None),
    "sigma-NaN": _with_a_marker("NaN"),
    "sigma-Infinity": _with_a_marker("Infinity"),
    "sigma-minus-Infinity": _with_a_marker("-Infinity"),
    "sigma-1e999": _with_a_marker("1e999"),
    "sigma-string-Infinity": (_set_sigma("Infinity"), None),
    "sigma-huge-int": _with_a_marker("9" * 400),
    "gain-below-sigma-upper": (_gain_below_sigma_upper, None),
    "no-hmac": (lambda data: data.pop("hmac"), None),
    "zero-hmac": (lambda data: data.update(hmac="0" * 64), None),
    "hmac-not-hex": (lambda data: data.update(hmac="é" * 64), None),
    "non-object": (lambda data: None, lambda out: "[1.0, 2.0]"),
    "a-number": (lambda data: None, lambda out: "1e-6"),
    "null": (lambda data: None, lambda out: "null"),
    "nested": (lambda data: None, lambda out: "[" * 200_000 + "]" * 200_000),
    "nested-objects": (lambda data: None, lambda out: '{"a":' * 100_000 + "1" + "}" * 100_000),
}


@pytest.mark.parametrize("edit", list(UNSIGNED_EDITS), ids=list(UNSIGNED_EDITS))
def test_an_edited_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: dict[str, Any],
                                       edit: str) -> None:
    _same_as_fresh(_run(MLP, tmp_path), fresh[MLP])
    change, text = UNSIGNED_EDITS[edit]
    n = _edit_entries(tmp_path, change, text=text)
    calls = NormCalls(monkeypatch)
    report = _run(MLP, tmp_path)
    _same_as_fresh(report, fresh[MLP])
    assert calls.count > 0
    assert f"0 of {n} layers" in _cache_note(report)
    assert f"{n} cache entries were invalid and recomputed" in _cache_note(report)
    # recomputed and re-signed: the next run reads them all
    calls.count = 0
    again = _run(MLP, tmp_path)
    assert calls.count == 0 and f"{n} of {n} layers" in _cache_note(again)
    _same_as_fresh(again, fresh[MLP])


def test_an_entry_signed_with_another_secret_is_recomputed(tmp_path: Path, fresh: dict[str, Any]) -> None:
    _run(MLP, tmp_path)
    n = _edit_entries(tmp_path, _set_sigma(1e-6), sign_with=b"somebody else's secret, not ours")
    report = _run(MLP, tmp_path)
    _same_as_fresh(report, fresh[MLP])
    assert f"{n} cache entries were invalid and recomputed ({n} not signed with this cache's key" in \
        _cache_note(report)


def _signed_with_the_real_key(cache: Path) -> bytes:
    from lipcheck.bound.cache import cache_secret

    return cache_secret(cache)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _below_the_estimate(data: dict[str, Any]) -> None:
    """σ_upper (and its gain) lowered below σ_power: consistent with each other, not with the estimate."""
    bound = data["bound"]
    low = bound["norms"]["sigma_power"] / 2
    bound["norms"]["sigma_upper"] = low
    layer = _layer_index(bound)
    bound["gains"] = [[i, low if i == layer else g] for i, g in bound["gains"]]


def _estimate_above_the_gain(data: dict[str, Any]) -> None:
    bound = data["bound"]
    bound["estimate_gains"] = [[i, 2 * g] for i, g in bound["gains"]]


def _exact_above_upper(data: dict[str, Any]) -> None:
    norms = data["bound"]["norms"]
    norms["sigma_exact"] = 2 * norms["sigma_upper"]


def _no_norms(data: dict[str, Any]) -> None:
    data["bound"]["norms"] = None
    data["bound"]["weight"] = None


def _other_key(data: dict[str, Any]) -> None:
    data["key"] = "0" * 64


# valid MACs (signed with the cache's own secret, as someone who can read it would): the content checks alone
# must refuse these (a secret-holder can still forge a *consistent* entry: see the module docstring)
SIGNED_EDITS: dict[str, Any] = {
    "sigma-0": _set_sigma(0.0),
    "sigma-minus-1": _set_sigma(-1.0),
    "sigma-string": _set_sigma("Infinity"),
    "gain-below-sigma-upper": _gain_below_sigma_upper,
    "upper-below-power": _below_the_estimate,
    "estimate-above-gain": _estimate_above_the_gain,
    "exact-above-upper": _exact_above_upper,
    "no-norms": _no_norms,
    "combine-rss": _set(("bound", "combine"), "rss"),
    "weight-moved": _set(("bound", "weight"), 0),
    "gains-dropped": _set(("bound", "gains"), []),
    "format-1": _set(("format",), 1),
    "another-op": _set(("op",), "Conv"),
    "another-key": _other_key,
    "extra-field": _set(("bound", "extra"), 1),
    "long-rule": _set(("bound", "rule"), "x" * 100_000),
    "negative-iterations": _set(("bound", "norms", "power_iterations"), -1),
    "loose-not-bool": _set(("bound", "loose"), 0),
}


@pytest.mark.parametrize("edit", list(SIGNED_EDITS), ids=list(SIGNED_EDITS))
def test_an_inconsistent_signed_entry_is_recomputed(tmp_path: Path, fresh: dict[str, Any], edit: str) -> None:
    _run(MLP, tmp_path)
    n = _edit_entries(tmp_path, SIGNED_EDITS[edit], sign_with=_signed_with_the_real_key(tmp_path))
    report = _run(MLP, tmp_path)
    _same_as_fresh(report, fresh[MLP])
    note = _cache_note(report)
    assert f"{n} cache entries were invalid and recomputed" in note and "not signed" not in note


def test_a_conv_entry_too(tmp_path: Path, fresh: dict[str, Any]) -> None:
    _same_as_fresh(_run(CONV_MODEL, tmp_path), fresh[CONV_MODEL])
    n = _edit_entries(tmp_path, _set_sigma(0.001))
    _same_as_fresh(_run(CONV_MODEL, tmp_path), fresh[CONV_MODEL])
    _edit_entries(tmp_path, _gain_below_sigma_upper, sign_with=_signed_with_the_real_key(tmp_path))
    report = _run(CONV_MODEL, tmp_path)
    _same_as_fresh(report, fresh[CONV_MODEL])
    assert f"{n} cache entries were invalid" in _cache_note(report)


def test_an_entry_copied_under_another_key_is_recomputed(tmp_path: Path, fresh: dict[str, Any]) -> None:
    _run(MLP, tmp_path)
    entries = _entries(tmp_path)
    sigmas = [json.loads(e.read_text(encoding="utf-8"))["bound"]["norms"]["sigma_upper"] for e in entries]
    smallest = entries[sigmas.index(min(sigmas))].read_bytes()  # genuine, correctly signed, for another layer
    for entry in entries:
        entry.write_bytes(smallest)
    report = _run(MLP, tmp_path)
    _same_as_fresh(report, fresh[MLP])
    assert f"{len(entries) - 1} cache entries were invalid" in _cache_note(report)
    assert f"1 of {len(entries)} layers" in _cache_note(report)  # the one it belongs to is still good


def test_check_gate_is_not_passed_by_a_tampered_cache(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lipcheck.cli.app import app

    runner = CliRunner()
    args = ["check", MLP, "--max-lipschitz", "1", "--cache", str(tmp_path / "c"), "--no-progress",
            "--method", "product"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.stderr
    _edit_entries(tmp_path / "c", _set_sigma(1e-6))
    second = runner.invoke(app, args)
    assert second.exit_code == 1, second.stderr
    assert "certified upper bound 10.18 (product) > 1" in second.stderr


# ------------------------------------------------------------------------------- reading never hangs


def _finishes(fn: Any, seconds: float = 30.0) -> Any:
    """``fn()`` in a daemon thread; fails the test when it is still running after ``seconds``."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_place_of_an_entry_does_not_hang(tmp_path: Path, fresh: dict[str, Any]) -> None:
    _run(MLP, tmp_path)
    entries = _entries(tmp_path)
    for entry in entries:
        entry.unlink()
        os.mkfifo(entry)
    report = _finishes(lambda: _run(MLP, tmp_path))
    _same_as_fresh(report, fresh[MLP])
    assert f"{len(entries)} unreadable entries recomputed" in _cache_note(report)
    # the FIFOs were replaced by entries
    assert all(e.is_file() for e in entries)
    assert f"{len(entries)} of {len(entries)}" in _cache_note(_finishes(lambda: _run(MLP, tmp_path)))


def test_a_planted_symlink_is_not_followed(tmp_path: Path, fresh: dict[str, Any]) -> None:
    cache = tmp_path / "cache"
    _run(MLP, cache)
    entries = _entries(cache)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    good = tmp_path / "good.json"  # a genuine entry, reached through a symlink: not read either
    good.write_bytes(entries[1].read_bytes())
    entries[0].unlink()
    entries[0].symlink_to(victim)
    entries[1].unlink()
    entries[1].symlink_to(good)
    report = _run(MLP, cache)
    _same_as_fresh(report, fresh[MLP])
    assert "2 unreadable entries recomputed" in _cache_note(report)
    assert victim.read_text(encoding="utf-8") == "precious"
    assert not entries[0].is_symlink() and not entries[1].is_symlink()
    assert json.loads(entries[0].read_text(encoding="utf-8"))["format"] >= 2


def test_a_folder_or_a_huge_file_in_place_of_an_entry(tmp_path: Path, fresh: dict[str, Any]) -> None:
    from lipcheck.bound.cache import MAX_ENTRY_BYTES

    _run(MLP, tmp_path)
    entries = _entries(tmp_path)
    entries[0].unlink()
    entries[0].mkdir()
    entries[1].write_text('{"a": "' + "x" * MAX_ENTRY_BYTES + '"}', encoding="utf-8")
    report = _finishes(lambda: _run(MLP, tmp_path))
    _same_as_fresh(report, fresh[MLP])
    note = _cache_note(report)
    assert "2 unreadable entries recomputed" in note and "1 could not be written" in note


def test_an_unreadable_entry_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       fresh: dict[str, Any]) -> None:
    import lipcheck.bound.cache as cache_module

    _run(MLP, tmp_path)
    real_open = os.open

    def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).endswith(".json") and not flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(cache_module.os, "open", refuse)
    report = _run(MLP, tmp_path)
    _same_as_fresh(report, fresh[MLP])
    assert "3 unreadable entries recomputed" in _cache_note(report)


# ------------------------------------------------------------------------------------------ the secret


def test_the_secret_is_kept_outside_the_cache_mode_0600(tmp_path: Path, _own_cache_keys: Path) -> None:
    import stat

    from lipcheck.bound.cache import cache_secret, key_file

    cache = tmp_path / "cache"
    _run(MLP, cache)
    path = key_file(cache)
    assert path.is_file() and path.is_relative_to(_own_cache_keys / "lipcheck" / "cache-keys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert all(p.suffix == ".json" for p in cache.rglob("*") if p.is_file())
    secret = cache_secret(cache)
    assert len(secret) == 32 and path.read_text(encoding="ascii").strip() == secret.hex()
    assert cache_secret(cache) == secret  # read back, not made anew
    other = tmp_path / "other"
    other.mkdir()
    assert cache_secret(other) != secret  # one secret per folder
    # an existing key file is used as it is, never overwritten
    third = tmp_path / "third"
    third.mkdir()
    key_file(third).write_text("ab" * 32 + "\n", encoding="ascii")
    assert cache_secret(third) == bytes.fromhex("ab" * 32)


def test_a_shared_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              fresh: dict[str, Any], _own_cache_keys: Path) -> None:
    import shutil

    monkeypatch.setenv("LIPCHECK_CACHE_KEY", "a CI secret, the same on every runner")
    _run(MLP, tmp_path / "one")
    assert not (_own_cache_keys / "lipcheck").exists()  # no key file with a given secret
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # another machine restoring the cache
    report = _run(MLP, tmp_path / "two")
    assert "3 of 3 layers" in _cache_note(report)
    _same_as_fresh(report, fresh[MLP])
    monkeypatch.setenv("LIPCHECK_CACHE_KEY", "another secret, not the one it was signed with")
    report = _run(MLP, tmp_path / "two")
    _same_as_fresh(report, fresh[MLP])
    assert "3 cache entries were invalid and recomputed (3 not signed with this cache's key" in \
        _cache_note(report)


@pytest.mark.parametrize("problem", ["short-key", "no-config-folder", "bad-key-file"])
def test_without_a_secret_the_cache_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                fresh: dict[str, Any], problem: str) -> None:
    from lipcheck.bound.cache import key_file

    cache = tmp_path / "cache"
    cache.mkdir()
    if problem == "short-key":
        monkeypatch.setenv("LIPCHECK_CACHE_KEY", "short")
    elif problem == "no-config-folder":
        (tmp_path / "a-file").write_text("x")
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "a-file"))
    else:
        key_file(cache).parent.mkdir(parents=True)
        key_file(cache).write_text("not a key", encoding="ascii")
    report = _run(MLP, cache)
    _same_as_fresh(report, fresh[MLP])
    note = _cache_note(report)
    assert note.startswith(f"layer cache {cache}: not used: ") and "LIPCHECK_CACHE_KEY" in note
    assert not _entries(cache)
    if problem == "bad-key-file":
        assert key_file(cache).read_text(encoding="ascii") == "not a key"  # never overwritten


# -------------------------------------------------------------------- generated: any change is refused

SECRET = b"a secret for the generated tests"
_MISS = (ValueError, TypeError, RecursionError, OverflowError)  # what LayerCache.load turns into a miss


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, str, Any, dict[str, Any]]]:
    """(node, key, its rule's bound, the stored entry) for a Gemm and a Conv, stored and read back once."""
    from lipcheck.bound.walker import bound_node
    from lipcheck.rules.registry import RuleContext

    out = []
    folder = tmp_path_factory.mktemp("stored")
    for model, op in ((MLP, "Gemm"), (CONV_MODEL, "Conv")):
        graph = fold_batchnorm(lipcheck.load(model))
        settings = Settings()
        ctx = RuleContext(graph=graph, settings=settings, producers={o: n for n in graph.nodes for o in n.outputs})
        node = next(n for n in graph.nodes if n.op_type == op)
        key = layer_key(node, graph, settings)
        assert key is not None
        bound = bound_node(node, ctx)
        cache = LayerCache(folder, secret=SECRET)
        cache.store(key, node, bound)
        assert cache.stats.stored == 1 and cache.load(key, node) == bound
        out.append((node, key, bound, json.loads(cache.path(key).read_text(encoding="utf-8"))))
    return out


def _locations(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (dict keys, list indices), the value itself excluded."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        out.append(path + (k,))
        out.extend(_locations(v, path + (k,)))
    return out



def _mutate(data: dict[str, Any], where: tuple[Any, ...], action: str, value: Any) -> None:
    parent: Any = data
    for step in where[:-1]:
        parent = parent[step]
    last = where[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "scale" and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        parent[last] = parent[last] * value if isinstance(value, float) else parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last]["extra"] = value
    elif action == "add" and isinstance(parent[last], list):
        parent[last].append(value)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e308, 5e-324, 1.0]),
    st.text(max_size=8), st.just([]), st.just({}), st.lists(st.floats(allow_nan=False), max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.integers(min_value=0, max_value=1), resign=st.booleans())
def test_generated_corruption_is_refused_or_harmless(stored: list[Any], data: Any, which: int,
                                                     resign: bool) -> None:
    """Any change to a stored entry: unsigned, it is a miss; re-signed with the secret, it is a miss or it
    changes no certified gain downwards (a missing gain is an unbounded node)."""
    import copy

    from lipcheck.bound.cache import check_entry, entry_mac

    node, key, bound, original = stored[which]
    entry = copy.deepcopy(original)
    where = data.draw(st.sampled_from(_locations(entry)))
    action = data.draw(st.sampled_from(["set", "set", "delete", "scale", "add"]))
    value = data.draw(st.floats(min_value=0.0, max_value=2.0) if action == "scale" else _VALUES)
    _mutate(entry, where, action, value)
    signed = False
    if resign:
        try:
            entry["hmac"] = entry_mac(SECRET, entry)
            signed = True
        except _MISS:  # NaN / inf cannot be signed (nor written by lipcheck): the text stays unsigned
            pass
    raw = json.dumps(entry).encode("utf-8")
    try:
        loaded = check_entry(raw, key, node, SECRET)
    except _MISS:
        return
    if entry == original:
        assert loaded == bound
        return
    assert signed, f"an edited entry passed without a valid MAC: {where} {action} {value!r}"
    for index, gain in bound.gains.items():
        assert loaded.gains.get(index, math.inf) >= gain, (where, action, value)


def test_seeded_field_corruption_of_the_files(tmp_path: Path, fresh: dict[str, Any]) -> None:
    """The same through the files and a whole analysis: each leaf of an entry in turn, changed and unsigned."""
    import random

    rng = random.Random(20240607)
    _run(MLP, tmp_path)
    entry = _entries(tmp_path)[0]
    original = json.loads(entry.read_text(encoding="utf-8"))
    leaves = [w for w in _locations(original) if not isinstance(_get(original, w), (dict, list))]
    for where in leaves:
        data = json.loads(json.dumps(original))
        old = _get(data, where)
        new = rng.choice([0, -1, 1e-6, None, "x", True, [], {}])
        if isinstance(old, float):
            new = old * rng.choice([0.0, 1e-3, 0.5, -1.0])
        _mutate(data, where, "set", new)
        if data == original:
            continue
        entry.write_text(json.dumps(data), encoding="utf-8")
        report = _run(MLP, tmp_path)
        _same_as_fresh(report, fresh[MLP])
        assert "1 cache entry was invalid" in _cache_note(report), where


def _get(data: Any, where: tuple[Any, ...]) -> Any:
    for step in where:
        data = data[step]
    return data
