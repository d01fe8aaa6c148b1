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
(:func:`_write_entry`: a symlink or FIFO planted at an entry's path is replaced, never followed).

An entry is never trusted as it is. Anything wrong with it is a miss: the layer is recomputed (debug log) and
the report's note counts it; never an error, never a number taken on faith:

- reading cannot hang or blow memory: opened non-blocking without following a symlink, a regular file of at
  most :data:`MAX_ENTRY_BYTES`, strict UTF-8, strict JSON (no NaN / Infinity);
- it is authentic: an HMAC-SHA256 (:func:`entry_mac`) over the canonical JSON of the entry, its key included,
  with a secret kept *outside* the cache folder (:func:`cache_secret`: ``$LIPCHECK_CACHE_KEY``, else a random
  key in ``$XDG_CONFIG_HOME/lipcheck/cache-keys/`` (default ``~/.config``) named by the sha256 of the
  folder's real path, created mode 0600 on first use). A missing or wrong MAC, or an entry copied under
  another key, is a miss;
- it is for this request: format :data:`CACHE_FORMAT`, its key is the requested one, its op the node's;
- it is consistent: every number finite, every certified gain > 0 (a zero gain, e.g. an all-zero weight,
  is simply never cached), the layer's gain equal to its ``norms.sigma_upper`` and its estimate to
  ``sigma_power``, σ_power ≤ σ_exact ≤ σ_upper (relative slack :data:`ORDER_RTOL`), the shape each op's
  rule gives (:func:`check_entry`).

What the MAC protects against: someone who can write to the cache folder but cannot read the secret (a
shared or CI-restored folder, a stray edit, a bit flip, an entry copied from another layer) cannot make
lipcheck report a number it did not compute with this secret. What it does not: anyone who can read the
secret (the key file, ``LIPCHECK_CACHE_KEY``, the account running lipcheck) can forge entries that pass
every check; and a valid entry of *this* key from an earlier run can be put back (it is still the result
for that exact layer: the key hashes everything the rule reads). Machines sharing a cache must share the
secret (``LIPCHECK_CACHE_KEY``); with another machine's key every entry is recomputed and re-signed. When
no secret can be had (no key given, the key file cannot be created), the cache is not used and the note
says why.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import UsageError
from lipcheck.ir.graph import Graph, Node
from lipcheck.report.model import NormResult, Settings
from lipcheck.rules.registry import OpBound

__all__ = [
    "CACHED_OPS",
    "CacheStats",
    "LayerCache",
    "CacheKeyError",
    "cache_secret",
    "check_entry",
    "entry_mac",
    "is_cacheable",
    "layer_key",
    "open_cache",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: entries carry an HMAC (format-1 entries are misses)
MAX_ENTRY_BYTES = 1 << 20  # a real entry is about 1 KiB; anything bigger is not read
MAX_TEXT = 1000  # characters of a stored string (rule, methods, reasons)
ORDER_RTOL = 1e-6  # slack of σ_power ≤ σ_exact ≤ σ_upper for the rounding of the estimates
KEY_ENV = "LIPCHECK_CACHE_KEY"
MIN_SECRET_CHARS = 16
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
                "tight_work": float(settings.tight_work).hex(),
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
    """An entry that is not a valid entry for the requested key and node."""


class _Forged(_Malformed):
    """An entry whose MAC is not the one this cache's secret gives (edited, or signed with another secret)."""


class _NotAnEntry(OSError):
    """A path that is not a regular file of a sane size (a FIFO, a device, a folder, a huge file)."""


def _number(value: Any, what: str) -> float:
    """A finite number (JSON int or float): NaN, ±inf (``1e999``), booleans and strings are malformed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"{what}: expected a number, got {value!r:.80}")
    number = float(value)  # OverflowError for an int past the float range
    if not math.isfinite(number):
        raise _Malformed(f"{what}: {number} is not finite")
    return number


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Malformed(f"{what}: expected a string of at most {MAX_TEXT} characters, got {value!r:.80}")
    return value


def _gains_from_json(value: Any, n_inputs: int, what: str) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > n_inputs:
        raise _Malformed(f"{what}: expected a list of at most {n_inputs} pairs")
    out: dict[int, float] = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and 0 <= item[0] < n_inputs):
            raise _Malformed(f"{what}: bad item {item!r:.80}")
        if item[0] in out:
            raise _Malformed(f"{what}: input {item[0]} twice")
        out[item[0]] = _number(item[1], f"{what}[{item[0]}]")
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
        if item is None and type(None) in types:
            kwargs[key] = None
        elif float in types:
            kwargs[key] = _number(item, f"norms.{key}")
        elif int in types:
            if type(item) is not int or not 0 <= item < 1 << 31:
                raise _Malformed(f"norms.{key}: {item!r:.80}")
            kwargs[key] = item
        else:
            kwargs[key] = _text(item, f"norms.{key}")
    return NormResult(**kwargs)


_BOUND_KEYS = frozenset({"gains", "rule", "combine", "estimate_gains", "norms", "weight", "loose"})


def bound_from_json(node: Node, data: Any) -> OpBound:
    """The :class:`OpBound` of a stored entry, for ``node`` (its weight index mapped to its input's name),
    checked by :func:`check_bound`. Raises ``ValueError`` on anything malformed or inconsistent."""
    if not isinstance(data, dict) or set(data) != _BOUND_KEYS:
        raise _Malformed("bound: expected an object with the fields " + ", ".join(sorted(_BOUND_KEYS)))
    n = len(node.inputs)
    gains = _gains_from_json(data["gains"], n, "gains")
    if gains is None:
        raise _Malformed("gains missing")
    rule, combine, weight, loose = data["rule"], data["combine"], data["weight"], data["loose"]
    if combine not in ("sum", "rss") or not isinstance(loose, bool):
        raise _Malformed("combine / loose")
    if weight is not None and not (type(weight) is int and 0 <= weight < n and node.inputs[weight]):
        raise _Malformed("weight")
    bound = OpBound(
        gains=gains,
        rule=_text(rule, "rule"),
        combine=combine,
        estimate_gains=_gains_from_json(data["estimate_gains"], n, "estimate_gains"),
        norms=_norms_from_json(data["norms"]),
        weight=None if weight is None else node.inputs[weight],
        loose=loose,
    )
    check_bound(node, bound, weight)
    return bound


def _at_most(a: float, b: float) -> bool:
    return a <= b * (1.0 + ORDER_RTOL)


def check_bound(node: Node, bound: OpBound, weight: int | None) -> None:
    """Raise ``ValueError`` unless ``bound`` has the shape the rules of :data:`CACHED_OPS` give it
    (``lipcheck/rules/linear.py``): every certified gain finite and > 0; estimates in [0, gain]; combined by
    sum; with norms, the layer's input (the other of inputs 0 and 1 than the weight ``weight``, an index)
    has gain ``sigma_upper`` and estimate ``sigma_power`` exactly, and σ_power ≤ σ_exact ≤ σ_upper; besides
    it, only a Gemm's bias C has a gain. A Conv / ConvTranspose always has norms, its weight at index 1."""
    gains, estimates, norms, op = bound.gains, bound.estimate_gains, bound.norms, node.op_type
    for i, g in gains.items():
        if not (math.isfinite(g) and g > 0):
            raise _Malformed(f"gains[{i}] = {g}: a certified gain must be finite and > 0")
    if estimates is not None:
        if set(estimates) != set(gains):
            raise _Malformed("estimate_gains: not the inputs of gains")
        for i, e in estimates.items():
            if not (math.isfinite(e) and 0 <= e and _at_most(e, gains[i])):
                raise _Malformed(f"estimate_gains[{i}] = {e}: not in [0, gain {gains[i]}]")
    if bound.combine != "sum":
        raise _Malformed(f"combine {bound.combine!r}: the weighted rules sum their inputs' terms")
    others = {2} if op == "Gemm" else set()  # Gemm: the gain of a variable bias C
    if norms is None:
        if weight is not None or op in ("Conv", "ConvTranspose") or not set(gains) <= others:
            raise _Malformed(f"a {op} entry without norms: weight {weight}, gains of {sorted(gains)}")
        return
    if weight not in (0, 1) or (op in ("Conv", "ConvTranspose") and weight != 1):
        raise _Malformed(f"weight at input {weight}")
    layer = 1 - weight
    if layer not in gains or not set(gains) - {layer} <= others:
        raise _Malformed(f"gains of {sorted(gains)} for a layer on input {layer}")
    if gains[layer] != norms.sigma_upper:
        raise _Malformed(f"gains[{layer}] = {gains[layer]} is not norms.sigma_upper = {norms.sigma_upper}")
    if estimates is None or estimates[layer] != norms.sigma_power:
        raise _Malformed(f"estimate_gains[{layer}] is not norms.sigma_power = {norms.sigma_power}")
    exact, reshaped = norms.sigma_exact, norms.sigma_reshaped
    if norms.sigma_power < 0 or (exact is not None and exact < 0) or (reshaped is not None and reshaped < 0):
        raise _Malformed("a negative norm")
    if not _at_most(norms.sigma_power, norms.sigma_upper) or (
        exact is not None and not (_at_most(norms.sigma_power, exact) and _at_most(exact, norms.sigma_upper))
    ):
        raise _Malformed(f"not σ_power {norms.sigma_power} ≤ σ_exact {exact} ≤ σ_upper {norms.sigma_upper}")


# ------------------------------------------------------------------------------------- authenticity

_ENTRY_KEYS = frozenset({"format", "key", "op", "bound", "hmac"})
_MAC_CONTEXT = b"lipcheck layer cache entry\0"
_HEX = frozenset("0123456789abcdef")


class CacheKeyError(Exception):
    """No secret for a cache (a bad ``LIPCHECK_CACHE_KEY``, a key file that cannot be read or created)."""


def entry_mac(secret: bytes, entry: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of ``entry`` without its ``hmac`` field (sorted keys, no
    spaces, ASCII, floats as ``repr``: they read back bit for bit, so a parsed entry gives the same bytes)."""
    body = {k: v for k, v in entry.items() if k != "hmac"}
    message = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hmac.new(secret, _MAC_CONTEXT + message.encode("ascii"), hashlib.sha256).hexdigest()


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not a number lipcheck stores")


def check_entry(raw: bytes, key: str, node: Node, secret: bytes) -> OpBound:
    """The :class:`OpBound` of the file content ``raw`` when it is a valid entry for ``key`` and ``node``
    signed with ``secret``; raises ``ValueError`` (``RecursionError`` for absurd nesting) otherwise."""
    data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    if not isinstance(data, dict) or set(data) != _ENTRY_KEYS:
        raise _Malformed("not an object with the fields " + ", ".join(sorted(_ENTRY_KEYS)))
    if type(data["format"]) is not int or data["format"] != CACHE_FORMAT:
        raise _Malformed(f"format {data['format']!r:.40}, this lipcheck reads format {CACHE_FORMAT}")
    if data["key"] != key:
        raise _Malformed(f"an entry for another key ({data['key']!r:.80})")
    if data["op"] != node.op_type:
        raise _Malformed(f"an entry for op {data['op']!r:.40}, the node is a {node.op_type}")
    mac = data["hmac"]
    if not (isinstance(mac, str) and len(mac) == 64 and set(mac) <= _HEX):
        raise _Forged("no MAC")
    if not hmac.compare_digest(mac, entry_mac(secret, data)):
        raise _Forged("wrong MAC: edited, or signed with another cache key")
    return bound_from_json(node, data["bound"])


def key_file(directory: str | os.PathLike[str]) -> Path:
    """Where the secret of the cache in ``directory`` is kept when ``LIPCHECK_CACHE_KEY`` is not set:
    ``$XDG_CONFIG_HOME`` (default ``~/.config``) ``/lipcheck/cache-keys/<sha256 of the folder's real path>``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and os.path.isabs(config) else Path.home() / ".config"
    name = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()
    return base / "lipcheck" / "cache-keys" / name


def cache_secret(directory: str | os.PathLike[str]) -> bytes:
    """The HMAC secret of the cache in ``directory``: ``$LIPCHECK_CACHE_KEY`` when set (at least
    :data:`MIN_SECRET_CHARS` characters; the same for every folder, for machines that share a cache), else
    the 32 random bytes of :func:`key_file`, created (mode 0600, atomically, never overwritten) on first
    use. Raises :class:`CacheKeyError` when neither can be had."""
    given = os.environ.get(KEY_ENV, "").strip()
    if given:
        if len(given) < MIN_SECRET_CHARS:
            raise CacheKeyError(f"{KEY_ENV} has fewer than {MIN_SECRET_CHARS} characters")
        return given.encode("utf-8", "surrogateescape")
    try:
        path = key_file(directory)
    except (OSError, RuntimeError) as exc:  # no home folder
        raise CacheKeyError(f"no folder for its key file ({exc}); set {KEY_ENV}") from exc
    try:
        for _ in range(3):  # read it, else create it; a concurrent creator wins and is read back
            secret = _read_key_file(path)
            if secret is None:
                secret = _create_key_file(path)
            if secret is not None:
                return secret
    except OSError as exc:
        raise CacheKeyError(f"cannot use its key file {path} ({exc.strerror or exc}); set {KEY_ENV}") from exc
    raise CacheKeyError(f"cannot create its key file {path}; set {KEY_ENV}")


def _read_key_file(path: Path) -> bytes | None:
    """The secret in ``path``, ``None`` when there is no such file. Raises ``OSError`` when it is unusable."""
    try:
        raw = _read_regular(path, 4096, follow_symlinks=True)
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", "replace").strip()
    if len(text) != 64 or not set(text) <= _HEX:
        raise _NotAnEntry(f"not a key written by lipcheck ({len(raw)} bytes)")
    return bytes.fromhex(text)


def _create_key_file(path: Path) -> bytes | None:
    """Write a new random secret to ``path`` unless it exists; ``None`` when another process made it first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    temp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secret.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # atomic, and never replaces a key another process just wrote
        except FileExistsError:
            return None
        except OSError:  # no hard links on this filesystem: a rename, when the name is still free
            if os.path.lexists(path):
                return None
            os.replace(temp, path)
        return secret
    finally:
        try:
            os.unlink(temp)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------- the cache

def _read_regular(path: Path, limit: int, *, follow_symlinks: bool = False) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes (never blocks: opened
    non-blocking, the type checked on the open descriptor). Raises ``OSError`` otherwise."""
    from lipcheck.readlimits import FileLimitError, read_limited

    try:
        return read_limited(path, limit, what="cache file", follow_symlinks=follow_symlinks)
    except FileLimitError as exc:
        raise _NotAnEntry(str(exc)) from exc


@dataclass
class CacheStats:
    eligible: int = 0  # cacheable nodes looked up
    hits: int = 0
    stored: int = 0
    unreadable: int = 0  # entries that existed but could not be read (recomputed)
    invalid: int = 0  # entries read but not valid for their key (recomputed)
    forged: int = 0  # of those, the ones with a missing or wrong MAC
    write_errors: int = 0


@dataclass
class LayerCache:
    """Per-layer results in ``directory``: one JSON file per :func:`layer_key`, signed with ``secret``
    (:func:`cache_secret` when not given). Never raises on a bad entry or a failed write (both are logged at
    debug level and counted in :attr:`stats`); without a secret it is not used (:attr:`disabled` says why)."""

    directory: Path
    stats: CacheStats = field(default_factory=CacheStats)
    secret: bytes | None = field(default=None, repr=False, compare=False)
    disabled: str | None = None

    def __post_init__(self) -> None:
        if self.secret is None and self.disabled is None:
            try:
                self.secret = cache_secret(self.directory)
            except CacheKeyError as exc:
                self.disabled = str(exc)
                log.debug("layer cache %s is not used: %s", self.directory, exc)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def load(self, key: str, node: Node) -> OpBound | None:
        """The stored result for ``key`` when there is a valid one, else ``None`` (a miss: recompute)."""
        self.stats.eligible += 1
        if self.secret is None:
            return None
        path = self.path(key)
        try:
            raw = _read_regular(path, MAX_ENTRY_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a FIFO, a folder, a symlink, a huge file, no permission, ...
            log.debug("layer cache: cannot read %s (%s): recomputing %s", path, exc, node.name)
            self.stats.unreadable += 1
            return None
        try:
            bound = check_entry(raw, key, node, self.secret)
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            log.debug("layer cache: invalid entry %s (%s): recomputing %s", path, exc, node.name)
            self.stats.invalid += 1
            self.stats.forged += isinstance(exc, _Forged)
            return None
        self.stats.hits += 1
        return bound

    def store(self, key: str, node: Node, bound: OpBound) -> None:
        """Store ``bound`` under ``key``, signed; only what :meth:`load` gives back unchanged is stored (a
        zero or non-finite gain, for one, is recomputed every time rather than stored)."""
        if self.secret is None:
            return
        n = bound.norms
        if n is not None and any("--force" in (text or "") for text in (n.exact_skipped, n.upper_method)):
            # a stage skipped under the resource limits: a later run (--force, another machine) computes it
            log.debug("layer cache: not storing %s: a stage was skipped under the resource limits", node.name)
            return
        try:
            entry = {"format": CACHE_FORMAT, "key": key, "op": node.op_type, "bound": bound_to_json(node, bound)}
            entry["hmac"] = entry_mac(self.secret, entry)
            text = json.dumps(entry, sort_keys=True, allow_nan=False)  # floats as repr: read back bit for bit
            if check_entry(text.encode("utf-8"), key, node, self.secret) != bound:
                raise _Malformed("does not read back as computed")
        except (NotCacheable, ValueError, TypeError, RecursionError, OverflowError) as exc:
            log.debug("layer cache: not storing %s: %s", node.name, exc)
            return
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent.is_symlink():
                raise _NotAnEntry(f"{path.parent} is a symbolic link")
            _write_entry(path, text)
        except OSError as exc:
            log.debug("layer cache: cannot write %s: %s", path, exc)
            self.stats.write_errors += 1
            return
        self.stats.stored += 1

    def note(self) -> str:
        """What the report says about the cache."""
        s = self.stats
        if self.disabled is not None:
            return f"layer cache {os.fspath(self.directory)}: not used: {self.disabled}"
        text = (
            f"layer cache {os.fspath(self.directory)}: {s.hits} of {s.eligible} "
            f"{'layer' if s.eligible == 1 else 'layers'} ({', '.join(sorted(CACHED_OPS))}) read from the cache"
        )
        if s.stored:
            text += f", {s.stored} stored"
        if s.invalid:
            text += (
                f"; {s.invalid} cache {'entry was' if s.invalid == 1 else 'entries were'} invalid and recomputed"
            )
            if s.forged:
                text += (
                    f" ({s.forged} not signed with this cache's key; machines that share a cache need the same "
                    f"{KEY_ENV})"
                )
        if s.unreadable:
            text += f"; {s.unreadable} unreadable {'entry' if s.unreadable == 1 else 'entries'} recomputed"
        if s.write_errors:
            text += f"; {s.write_errors} could not be written"
        return text


def _write_entry(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a new temporary file in the same folder (created exclusively,
    never through a symlink), then ``os.replace``, which replaces a symlink or FIFO planted at ``path`` itself,
    never the file it points to (:func:`lipcheck.files.atomic_outputs` follows symlinks: right for a user's
    outputs, not for a shared folder). Not fsynced: an entry torn by a crash is invalid, hence a miss."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, flags, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def open_cache(directory: str | os.PathLike[str]) -> LayerCache:
    """The cache in ``directory``, created when missing. Raises :class:`UsageError` (one line) when it is
    not a folder or cannot be created. Without a secret (:func:`cache_secret`) it is returned disabled."""
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
