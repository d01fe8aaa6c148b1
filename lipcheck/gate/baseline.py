"""Baselines: a saved JSON report, and the layer-by-layer comparison of two reports.

A baseline file is what ``lipcheck analyze --format json`` prints (schema_version 2, or 1 from before the
methods); ``lipcheck check
--format json`` output is accepted too (one model, or several: the entry whose ``model`` matches is used).
Only what a comparison needs is read (:class:`Snapshot`): the certified bound and each layer's certified σ,
keyed by layer name. Growth is computed from the printed (4 significant digit) values, see
:func:`lipcheck.gate.rounding.growth_percent`.

:func:`compare` is pure; :func:`load_snapshot` and :func:`save_baseline` do the file I/O.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lipcheck.errors import LipcheckError
from lipcheck.files import write_text_atomically
from lipcheck.gate.rounding import growth_percent, printed
from lipcheck.readlimits import MAX_BASELINE_BYTES, FileLimitError, read_limited_text
from lipcheck.report.model import SCHEMA_VERSION, Report
from lipcheck.report.numbers import format_number

# 1 (before report.bounds) and 2 (now) hold the same keys a baseline reads
READABLE_SCHEMA_VERSIONS = (1, SCHEMA_VERSION)

__all__ = [
    "BaselineError",
    "Change",
    "Comparison",
    "LayerChange",
    "LayerSnapshot",
    "Snapshot",
    "compare",
    "load_snapshot",
    "printed",
    "save_baseline",
    "snapshot_from_json",
]


class BaselineError(LipcheckError):
    """A baseline or report file is missing, not JSON, or not a lipcheck report."""


@dataclass(frozen=True)
class LayerSnapshot:
    name: str
    op: str
    sigma_upper: float | None  # certified σ; None when the JSON held null (NaN)


@dataclass(frozen=True)
class Snapshot:
    """What a comparison reads from a report: the certified bound and each layer's certified σ."""

    model: str
    upper_bound: float | None  # None: unbounded
    estimate: float | None
    lower_bound: float | None
    layers: tuple[LayerSnapshot, ...]
    source: str = ""  # the JSON file it was read from ("" for a live report)

    @classmethod
    def from_report(cls, report: Report) -> Snapshot:
        return cls(
            model=report.model,
            upper_bound=report.upper_bound if report.certified else None,
            estimate=report.estimate,
            lower_bound=report.lower_bound.value if report.lower_bound else None,
            layers=tuple(LayerSnapshot(layer.name, layer.op, layer.sigma_upper) for layer in report.layers),
        )

    @property
    def label(self) -> str:
        return self.source or self.model


class Change(str, Enum):
    GREW = "grew"
    SHRANK = "shrank"
    SAME = "same"
    ADDED = "added"  # only in the new report
    REMOVED = "removed"  # only in the baseline


@dataclass(frozen=True)
class LayerChange:
    """One layer's certified σ in the baseline and now; ``growth`` in percent of the printed values."""

    name: str
    op: str
    before: float | None
    after: float | None
    growth: float | None  # None when the layer is only on one side or a σ is missing
    change: Change

    def short(self) -> str:
        """``/fc/Gemm +25.00%`` or ``/fc/Gemm (new)``."""
        if self.change is Change.ADDED:
            return f"{self.name} (new, σ {format_number(self.after)})"
        if self.change is Change.REMOVED:
            return f"{self.name} (removed)"
        return f"{self.name} {_signed_percent(self.growth)}"

    def describe(self) -> str:
        """``/fc/Gemm (Gemm): σ upper 1.000 → 1.250 (+25.00%)``."""
        if self.change is Change.ADDED:
            return f"{self.name} ({self.op}): new layer, σ upper {format_number(self.after)}"
        if self.change is Change.REMOVED:
            return f"{self.name} ({self.op}): removed (σ upper was {format_number(self.before)})"
        return (f"{self.name} ({self.op}): σ upper {format_number(self.before)} → {format_number(self.after)} "
                f"({_signed_percent(self.growth)})")


def _signed_percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    return ("+" if value > 0 else "") + format_number(value) + "%"


@dataclass(frozen=True)
class Comparison:
    """Two reports side by side: the bound's growth and every layer matched by name."""

    before: Snapshot
    after: Snapshot
    growth: float | None  # percent change of the certified bound, None when either side is unbounded
    layers: tuple[LayerChange, ...]  # the new report's order, then layers only in the baseline

    @property
    def grown_layers(self) -> tuple[LayerChange, ...]:
        """Layers whose printed σ grew, or that are new, largest growth first."""
        grown = [c for c in self.layers if c.change in (Change.GREW, Change.ADDED)]
        return tuple(sorted(grown, key=lambda c: -(c.growth if c.growth is not None else math.inf)))


def _keyed(layers: Sequence[LayerSnapshot]) -> dict[str, LayerSnapshot]:
    """Layers by name; a repeated name gets ``#2``, ``#3``... so that nothing is silently dropped."""
    out: dict[str, LayerSnapshot] = {}
    for layer in layers:
        key, n = layer.name, 1
        while key in out:
            n += 1
            key = f"{layer.name}#{n}"
        out[key] = layer
    return out


def _layer_change(name: str, before: LayerSnapshot | None, after: LayerSnapshot | None) -> LayerChange:
    if before is None and after is not None:
        return LayerChange(name, after.op, None, after.sigma_upper, None, Change.ADDED)
    if after is None and before is not None:
        return LayerChange(name, before.op, before.sigma_upper, None, None, Change.REMOVED)
    assert before is not None and after is not None
    if before.sigma_upper is None or after.sigma_upper is None:
        change = Change.SAME if before.sigma_upper == after.sigma_upper else Change.GREW
        return LayerChange(name, after.op, before.sigma_upper, after.sigma_upper, None, change)
    growth = growth_percent(before.sigma_upper, after.sigma_upper)
    change = Change.GREW if not growth <= 0 else Change.SHRANK if growth < 0 else Change.SAME
    return LayerChange(name, after.op, before.sigma_upper, after.sigma_upper, growth, change)


def compare(before: Snapshot, after: Snapshot) -> Comparison:
    """Layer-by-layer comparison keyed by layer name (pure). ``growth`` values are percentages."""
    old, new = _keyed(before.layers), _keyed(after.layers)
    changes = [_layer_change(name, old.get(name), layer) for name, layer in new.items()]
    changes += [_layer_change(name, layer, None) for name, layer in old.items() if name not in new]
    growth = None
    if before.upper_bound is not None and after.upper_bound is not None:
        growth = growth_percent(before.upper_bound, after.upper_bound)
    return Comparison(before=before, after=after, growth=growth, layers=tuple(changes))


# ------------------------------------------------------------------------------------------------ files


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BaselineError(f"{where}: expected a number or null, got {_clipped(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer past float64's range
        raise BaselineError(f"{where}: the number {_clipped(value)} is out of float64's range") from None


def _clipped(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 4000 else "a huge integer"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def snapshot_from_json(data: Any, source: str, model: str | None = None) -> Snapshot:
    """A :class:`Snapshot` from a parsed JSON report (``analyze`` or ``check`` output).

    ``model``: with a ``check`` report of several models, the model path to pick (the path as given).
    Raises :class:`BaselineError` naming ``source`` and the offending key.
    """
    if not isinstance(data, Mapping):
        raise BaselineError(f"{source}: not a lipcheck JSON report (expected an object)")
    if "models" in data and "layers" not in data:  # `lipcheck check --format json` with several models
        entries = data["models"]
        if not isinstance(entries, list) or not entries:
            raise BaselineError(f"{source}: key 'models' must be a non-empty list of reports")
        if len(entries) == 1:
            return snapshot_from_json(entries[0], source)
        models = [entry.get("model") for entry in entries if isinstance(entry, Mapping)]
        matches = [e for e in entries if isinstance(e, Mapping) and model is not None and _same_model(e, model)]
        if len(matches) != 1:
            raise BaselineError(
                f"{source} holds {len(entries)} reports ({', '.join(map(str, models))}); "
                + (f"none is for {model}" if model else "give a file with one report")
            )
        return snapshot_from_json(matches[0], source)
    version = data.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise BaselineError(f"{source}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    missing = [key for key in ("model", "upper_bound", "certified", "layers") if key not in data]
    if missing:
        raise BaselineError(f"{source}: not a lipcheck report: missing key {missing[0]!r}")
    layers_data = data["layers"]
    if not isinstance(layers_data, list):
        raise BaselineError(f"{source}: key 'layers' must be a list")
    layers = []
    for i, layer in enumerate(layers_data):
        if not isinstance(layer, Mapping) or not isinstance(layer.get("name"), str):
            raise BaselineError(f"{source}: layers[{i}] must be an object with a string 'name'")
        layers.append(
            LayerSnapshot(str(layer["name"]), str(layer.get("op", "")),
                          _number(layer.get("sigma_upper"), f"{source}: layers[{i}].sigma_upper"))
        )
    upper = _number(data["upper_bound"], f"{source}: upper_bound")
    return Snapshot(
        model=str(data["model"]),
        upper_bound=upper if data["certified"] is True else None,
        estimate=_number(data.get("estimate"), f"{source}: estimate"),
        lower_bound=_number(data.get("lower_bound"), f"{source}: lower_bound"),
        layers=tuple(layers),
        source=source,
    )


def _same_model(entry: Mapping[str, Any], model: str) -> bool:
    given = entry.get("model")
    if not isinstance(given, str):
        return False
    return given == model or os.path.abspath(given) == os.path.abspath(model)


def load_snapshot(path: str | os.PathLike[str], model: str | None = None, *, what: str = "baseline") -> Snapshot:
    """Read a baseline / report JSON file. Raises :class:`BaselineError` (missing, unreadable, not a report).
    ``what`` names the file in messages ("baseline", "report")."""
    source = os.fspath(path)
    if not source:
        raise BaselineError(f"the {what} path is empty")
    try:
        text = read_limited_text(source, MAX_BASELINE_BYTES, what=what)
    except FileNotFoundError:
        hint = " (write it with --update-baseline)" if what == "baseline" else ""
        raise BaselineError(f"{what} {source} not found{hint}") from None
    except FileLimitError as exc:
        raise BaselineError(str(exc)) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{source} is not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from exc
    except RecursionError:  # e.g. 100000 nested lists: no report nests deeper than a few levels
        raise BaselineError(f"{source} is not a lipcheck report: its JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BaselineError(f"{source} is not a lipcheck report: {exc}") from exc
    return snapshot_from_json(data, source, model)


def save_baseline(report: Report, path: str | os.PathLike[str]) -> None:
    """Write ``report`` as a baseline (the ``analyze --format json`` object), atomically."""
    from lipcheck.report.formats import render_json

    write_atomically(path, render_json(report))


write_atomically = write_text_atomically  # the name the CLI uses
