"""A cache of per-layer rule results on disk, so that a re-run on unchanged layers computes no norm.

Only the expensive weighted rules are cached (:data:`CACHED_OPS`: Conv, ConvTranspose, Gemm, MatMul). Their
rules read the node, its constant inputs and the static shapes of its inputs and outputs, never a
neighbouring node (``lipcheck/rules/linear.py``), so their :class:`~lipcheck.rules.registry.OpBound` is a
function of exactly what :func:`layer_key` hashes:

- the cache format, ``lipcheck.__version__`` and a fingerprint of the source of the code that computes
  the numbers (the rules and norm kernels: a fixed kernel invalidates the cache without a version bump),
  and the numpy / scipy / torch versions;
- op type, domain, opset, the node's attributes (canonical form), the static shapes of its inputs and
  outputs, which inputs are variable, and for each constant input its dtype, shape and bytes;
- the settings that change numbers: power iterations, tolerance, seed, exact limit.

Node and tensor names are not part of the key: the walker puts the current node's name on the row, and
the stored weight is the *index* of the input that holds it. Values are JSON (never pickle: a cache folder
may be shared, and reading it must never run code), one file per key, written atomically
(:func:`lipcheck.files.atomic_outputs`). An unreadable or malformed entry is a miss (recomputed, debug log),
never an error. Anyone who can write to the folder can change the numbers lipcheck reports: share a cache
only between people and jobs that trust each other.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import UsageError
from lipcheck.ir.graph import Graph, Node
from lipcheck.report.model import NormResult, Settings
from lipcheck.rules.registry import OpBound

__all__ = ["CACHED_OPS", "CacheStats", "LayerCache", "is_cacheable", "layer_key", "open_cache"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_CHUNK = 1 << 24  # bytes hashed per update: big arrays are hashed in place, never copied whole
# the code whose output is cached: a change to any of these files is a different key
_CODE_FILES = (
    "bound/cache.py",
    "rules/registry.py",
    "rules/linear.py",
    "rules/geometry.py",
    "report/model.py",
)
_CODE_FOLDERS = ("norms",)


class NotCacheable(Exception):
    """The node holds something :func:`layer_key` cannot hash canonically: it is computed, not cached."""


def is_cacheable(node: Node) -> bool:
    return node.op_type in CACHED_OPS and node.domain in ("", "ai.onnx")


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """lipcheck's version, a hash of the numerics' source files, and the numeric libraries' versions."""
    import importlib.metadata

    import lipcheck

    root = Path(__file__).resolve().parent.parent
    files = [root / f for f in _CODE_FILES]
    for folder in _CODE_FOLDERS:
        files.extend(sorted((root / folder).glob("*.py")))
    code = hashlib.sha256()
    for path in files:
        code.update(path.relative_to(root).as_posix().encode() + b"\0")
        try:
            code.update(path.read_bytes())
        except OSError:
            code.update(b"<missing>")
        code.update(b"\0")
    libs: dict[str, str | None] = {}
    for name in ("numpy", "scipy", "torch"):
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libs[name] = None
    return json.dumps(
        {"format": CACHE_FORMAT, "lipcheck": lipcheck.__version__, "code": code.hexdigest(), "libs": libs},
        sort_keys=True,
    )


def _canonical(value: Any) -> Any:
    """A JSON-able form of an attribute value in which equal values are equal (floats exactly, by hex)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return {"float": float(value).hex()}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise NotCacheable("an object array attribute")
        digest = hashlib.sha256()
        _hash_array(digest, value)
        return {"array": value.dtype.str, "shape": list(value.shape), "sha256": digest.hexdigest()}
    if isinstance(value, Mapping):
        return {"map": sorted([str(k), _canonical(v)] for k, v in value.items())}
    raise NotCacheable(f"an attribute of type {type(value).__name__}")


def _hash_array(digest: Any, array: np.ndarray) -> None:
    """Feed the C-order bytes of ``array`` to ``digest``: in place when contiguous, else in bounded slices."""
    if array.ndim == 0 or array.size == 0:
        digest.update(np.ascontiguousarray(array).tobytes())
        return
    if array.flags.c_contiguous:
        flat = array.reshape(-1).view(np.uint8).data  # a memoryview of the array: no copy
        for start in range(0, len(flat), _CHUNK):
            digest.update(flat[start : start + _CHUNK])
        return
    rows = max(1, _CHUNK // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows):
        digest.update(np.ascontiguousarray(array[start : start + rows]).tobytes())


def layer_key(node: Node, graph: Graph, settings: Settings) -> str | None:
    """The sha256 (hex) of everything the node's rule reads (see the module docstring); ``None`` when the
    node holds something that cannot be hashed canonically (then it is computed, not cached)."""
    try:
        inputs: list[dict[str, Any]] = []
        arrays: list[np.ndarray] = []
        for name in node.inputs:
            shape = graph.shapes.get(name) if name else None
            entry: dict[str, Any] = {"shape": list(shape) if shape is not None else None}
            if not name:
                entry["kind"] = "absent"
            elif name in graph.constants:
                array = np.asarray(graph.constants[name])
                if array.dtype.hasobject:
                    raise NotCacheable("an object array")
                entry |= {"kind": "const", "dtype": array.dtype.str, "array_shape": list(array.shape)}
                arrays.append(array)
            else:
                entry |= {"kind": "var", "dtype": graph.dtypes.get(name)}
            inputs.append(entry)
        outputs = [list(graph.shapes[o]) if o in graph.shapes else None for o in node.outputs]
        header = {
            "environment": _environment(),
            "op": node.op_type,
            "domain": node.domain,
            "opset": graph.opset,
            "attrs": _canonical(dict(node.attrs)),
            "inputs": inputs,
            "outputs": outputs,
            "settings": {
                "power_iterations": settings.power_iterations,
                "tolerance": float(settings.tolerance).hex(),
                "seed": settings.seed,
                "exact_limit": settings.exact_limit,
            },
        }
    except NotCacheable as exc:
        log.debug("node %s is not cached: %s", node.name, exc)
        return None
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for array in arrays:  # byte lengths follow from the dtypes and shapes in the header: unambiguous
        digest.update(b"\0array\0")
        _hash_array(digest, array)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- the JSON form


def _gains_to_json(gains: Mapping[int, float] | None) -> list[list[float]] | None:
    return None if gains is None else [[int(i), float(g)] for i, g in gains.items()]


def bound_to_json(node: Node, bound: OpBound) -> dict[str, Any]:
    """The JSON form of a rule's result; the weight is stored as the index of its input."""
    weight = None
    if bound.weight is not None:
        if bound.weight not in node.inputs:
            raise NotCacheable(f"the weight {bound.weight!r} is not an input of the node")
        weight = node.inputs.index(bound.weight)
    return {
        "gains": _gains_to_json(bound.gains),
        "rule": bound.rule,
        "combine": bound.combine,
        "estimate_gains": _gains_to_json(bound.estimate_gains),
        "norms": None if bound.norms is None else {f.name: getattr(bound.norms, f.name) for f in fields(NormResult)},
        "weight": weight,
        "loose": bound.loose,
    }


class _Malformed(ValueError):
    pass


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"expected a number, got {value!r}")
    return float(value)


def _gains_from_json(value: Any, n_inputs: int) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Malformed("gains: expected a list")
    out: dict[int, float] = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and 0 <= item[0] < n_inputs):
            raise _Malformed(f"gains: bad item {item!r}")
        out[item[0]] = _number(item[1])
    return out


_NORM_TYPES: dict[str, tuple[type, ...]] = {
    "sigma_power": (float,),
    "power_iterations": (int,),
    "sigma_exact": (float, type(None)),
    "exact_method": (str,),
    "sigma_upper": (float,),
    "upper_method": (str,),
    "exact_skipped": (str, type(None)),
    "sigma_reshaped": (float, type(None)),
}


def _norms_from_json(value: Any) -> NormResult | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {f.name for f in fields(NormResult)} or set(value) != set(
        _NORM_TYPES
    ):
        raise _Malformed("norms: wrong keys")
    kwargs: dict[str, Any] = {}
    for key, types in _NORM_TYPES.items():
        item = value[key]
        if float in types and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        if not isinstance(item, types) or isinstance(item, bool):
            raise _Malformed(f"norms.{key}: {item!r}")
        kwargs[key] = item
    return NormResult(**kwargs)


def bound_from_json(node: Node, data: Any) -> OpBound:
    """The :class:`OpBound` of a stored entry, for ``node`` (its weight index mapped to its input's name).
    Raises ``ValueError`` on anything malformed."""
    if not isinstance(data, dict):
        raise _Malformed("expected an object")
    n = len(node.inputs)
    gains = _gains_from_json(data.get("gains"), n)
    if gains is None:
        raise _Malformed("gains missing")
    rule, combine, weight, loose = data.get("rule"), data.get("combine"), data.get("weight"), data.get("loose")
    if not isinstance(rule, str) or combine not in ("sum", "rss") or not isinstance(loose, bool):
        raise _Malformed("rule / combine / loose")
    if weight is not None and not (type(weight) is int and 0 <= weight < n and node.inputs[weight]):
        raise _Malformed("weight")
    return OpBound(
        gains=gains,
        rule=rule,
        combine=combine,
        estimate_gains=_gains_from_json(data.get("estimate_gains"), n),
        norms=_norms_from_json(data.get("norms")),
        weight=None if weight is None else node.inputs[weight],
        loose=loose,
    )


# ----------------------------------------------------------------------------------------- the cache


@dataclass
class CacheStats:
    eligible: int = 0  # cacheable nodes looked up
    hits: int = 0
    stored: int = 0
    unreadable: int = 0  # entries that existed but could not be used (recomputed)
    write_errors: int = 0


@dataclass
class LayerCache:
    """Per-layer results in ``directory``: one JSON file per :func:`layer_key`. Never raises on a bad entry
    or a failed write (both are logged at debug level and counted in :attr:`stats`)."""

    directory: Path
    stats: CacheStats = field(default_factory=CacheStats)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def load(self, key: str, node: Node) -> OpBound | None:
        self.stats.eligible += 1
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.debug("layer cache: cannot read %s (%s): recomputing %s", path, exc, node.name)
            self.stats.unreadable += 1
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("key") != key or data.get("format") != CACHE_FORMAT:
                raise _Malformed("not an entry for this key")
            bound = bound_from_json(node, data.get("bound"))
        except (ValueError, TypeError, RecursionError) as exc:
            log.debug("layer cache: ignoring malformed %s (%s): recomputing %s", path, exc, node.name)
            self.stats.unreadable += 1
            return None
        self.stats.hits += 1
        return bound

    def store(self, key: str, node: Node, bound: OpBound) -> None:
        from lipcheck.files import atomic_outputs

        if not is_finite_bound(bound):
            return
        try:
            entry = {"format": CACHE_FORMAT, "key": key, "op": node.op_type, "bound": bound_to_json(node, bound)}
            text = json.dumps(entry, sort_keys=True)  # floats as repr: they read back bit for bit
        except (NotCacheable, TypeError, ValueError) as exc:
            log.debug("layer cache: not storing %s: %s", node.name, exc)
            return
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_outputs([path]) as (tmp,):
                tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            log.debug("layer cache: cannot write %s: %s", path, exc)
            self.stats.write_errors += 1
            return
        self.stats.stored += 1

    def note(self) -> str:
        """What the report says about the cache."""
        s = self.stats
        text = (
            f"layer cache {os.fspath(self.directory)}: {s.hits} of {s.eligible} "
            f"{'layer' if s.eligible == 1 else 'layers'} ({', '.join(sorted(CACHED_OPS))}) read from the cache"
        )
        if s.stored:
            text += f", {s.stored} stored"
        if s.unreadable:
            text += f"; {s.unreadable} unreadable {'entry' if s.unreadable == 1 else 'entries'} recomputed"
        if s.write_errors:
            text += f"; {s.write_errors} could not be written"
        return text


def open_cache(directory: str | os.PathLike[str]) -> LayerCache:
    """The cache in ``directory``, created when missing. Raises :class:`UsageError` (one line) when it is
    not a folder or cannot be created."""
    if not os.fspath(directory).strip():
        raise UsageError("--cache: give a folder")
    path = Path(os.path.expanduser(os.fspath(directory)))
    if path.exists() and not path.is_dir():
        raise UsageError(f"--cache {os.fspath(directory)} is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--cache {os.fspath(directory)}: cannot create the folder: {exc.strerror or exc}") from exc
    return LayerCache(path)


def is_finite_bound(bound: OpBound) -> bool:
    """Only finite, non-negative gains are worth storing (a NaN would be re-served forever)."""
    values = list(bound.gains.values()) + list((bound.estimate_gains or {}).values())
    return all(math.isfinite(v) and v >= 0 for v in values)
