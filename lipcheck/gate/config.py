"""Project configuration: ``[tool.lipcheck]`` in ``pyproject.toml``, or the top level of ``lipcheck.toml``.

```toml
[tool.lipcheck]                      # defaults for every model
max-lipschitz = 10.0
max-layer-sigma = 4.0

[[tool.lipcheck.models]]
path = "models/classifier.onnx"      # relative to the folder of the config file
input-shape = [1, 3, 32, 32]
max-lipschitz = 50.0                 # overrides the default above
baseline = "lipcheck/classifier.json"
max-increase = 2.0                   # percent
```

``jobs`` (processes, ``"auto"``, ``"size"``) and ``cache`` (the layer cache folder, relative to the config file) may be
set at the top level or per model.

``trust-pickle = true`` is refused (:class:`ConfigError`): the file is part of what is reviewed, so trust in a
model file comes only from ``--trust-pickle`` or ``LIPCHECK_TRUST_PICKLE=1``, set by whoever runs lipcheck.
For the same reason an ``arch`` read here (a Python file or module that builds the module, also under review)
is used only with that trust (:func:`lipcheck.gate.run.resolve_targets` refuses it otherwise); ``--arch`` on
the command line is the user's choice and needs none.

The file is found by walking up from the current folder: in each folder ``lipcheck.toml`` first, then a
``pyproject.toml`` that has a ``[tool.lipcheck]`` table. Keys are kebab-case; every key is validated and an
unknown or ill-typed one is a :class:`ConfigError` that names the file and the key. Precedence: command-line
flags (and their ``LIPCHECK_*`` environment variables) > the model's table > the top-level table > built-in
defaults (:meth:`ModelOptions.merged`).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from lipcheck.errors import LipcheckError

__all__ = [
    "CONFIG_FILES",
    "Config",
    "ConfigError",
    "ModelEntry",
    "ModelOptions",
    "find_config",
    "load_config",
    "parse_config",
]

CONFIG_FILES = ("lipcheck.toml", "pyproject.toml")

InputShapes = dict[str, tuple[int, ...]] | tuple[int, ...]


class ConfigError(LipcheckError):
    """The configuration file is not valid TOML, or a key is unknown, missing or of the wrong type."""


@dataclass(frozen=True)
class ModelOptions:
    """One model's settings; ``None`` means "not set here" (the next layer of precedence decides)."""

    input_shape: InputShapes | None = None
    max_lipschitz: float | None = None
    max_layer_sigma: float | None = None
    allow_uncertified: bool | None = None
    baseline: str | None = None
    max_increase: float | None = None
    plot: str | None = None
    power_iterations: int | None = None
    tolerance: float | None = None
    seed: int | None = None
    exact_limit: int | None = None
    exact: bool | None = None
    tight_work: float | None = None  # GFLOP per conv for the zero-padded certificate (lipcheck.norms.zeropad)
    method: str | None = None  # auto, product, lipsdp or blocks (lipcheck.bound.methods.choose)
    domain: str | None = None  # an input region, "LO,HI" or "NAME=LO,HI;..." (lipcheck.bound.local.parse_domain)
    lower_bound: bool | None = None
    lower_bound_seconds: float | None = None
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    key: str | None = None
    trust_pickle: bool | None = None
    jobs: int | str | None = None  # 0 = one process per CPU; "size": by the model's size
    cache: str | None = None  # the layer cache folder
    force: bool | None = None  # lift the resource limits (command line only)

    def merged(self, override: ModelOptions) -> ModelOptions:
        """These options with every field ``override`` sets replaced."""
        changes = {f.name: getattr(override, f.name) for f in fields(override) if getattr(override, f.name) is not None}
        return replace(self, **changes)


@dataclass(frozen=True)
class ModelEntry:
    """A configured model: ``path`` resolved against the config folder (relative to the cwd when inside it)."""

    path: str
    name: str  # display name: ``name`` from the config, else the path
    options: ModelOptions  # the model's table merged over the top-level table


@dataclass(frozen=True)
class Config:
    file: str | None  # the file it came from, as shown in messages; None when there is none
    defaults: ModelOptions
    models: tuple[ModelEntry, ...] = ()

    def entry_for(self, model: str) -> ModelEntry | None:
        """The configured model whose path is ``model`` (compared as absolute paths)."""
        target = os.path.abspath(model)
        return next((entry for entry in self.models if os.path.abspath(entry.path) == target), None)


EMPTY = Config(file=None, defaults=ModelOptions())

# ------------------------------------------------------------------------------------------- parsing

Parser = Callable[[Any, "_Where"], Any]


@dataclass(frozen=True)
class _Where:
    file: str
    key: str  # the full key, e.g. tool.lipcheck.models[0].max-lipschitz
    base: Path  # the folder relative paths are resolved against
    cwd: Path

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.key}: {problem}")

    def child(self, key: str) -> _Where:
        return replace(self, key=f"{self.key}.{key}" if self.key else key)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _number(minimum: float, strict: bool) -> Parser:
    def parse(value: Any, where: _Where) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f"expected a number, got {_type_name(value)} ({value!r})")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise where.error(f"expected a finite number, got {value!r}")
        if number < minimum or (strict and number == minimum):
            raise where.error(f"must be {'>' if strict else '≥'} {minimum:g}, got {value!r}")
        return number

    return parse


def _integer(minimum: int) -> Parser:
    def parse(value: Any, where: _Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {_type_name(value)} ({value!r})")
        if value < minimum:
            raise where.error(f"must be ≥ {minimum}, got {value!r}")
        return value

    return parse


def _boolean(value: Any, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {_type_name(value)} ({value!r})")
    return value


def _no_trust(value: Any, where: _Where) -> bool:
    """``trust-pickle = false`` only: the configuration sits in the repository under review, so a pull request
    could add ``true`` next to a model that runs code when loaded. Trust comes from whoever runs lipcheck."""
    if _boolean(value, where):
        raise where.error("trust cannot come from the files under review (a pull request could set it next to a "
                          "model that runs code): remove the key and pass --trust-pickle, or set "
                          "LIPCHECK_TRUST_PICKLE=1, where lipcheck is run (the CI job)")
    return False


def _string(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"expected a non-empty string, got {_type_name(value)} ({value!r})")
    return value


def _shown(path: Path, cwd: Path) -> str:
    """A path for messages and reports: relative to ``cwd`` when inside it, else absolute."""
    try:
        return os.fspath(path.relative_to(cwd))
    except ValueError:
        return os.fspath(path)


def _path(value: Any, where: _Where) -> str:
    text = os.path.expanduser(_string(value, where))
    return _shown(Path(os.path.normpath(where.base / text)), where.cwd)


def _arch(value: Any, where: _Where) -> str:
    """``package.module:factory`` as is; ``path/to/file.py:factory`` resolved against the config folder."""
    text = _string(value, where)
    module, sep, factory = text.rpartition(":")
    if not sep or not module or not factory:
        raise where.error(f"expected package.module:factory or path/to/file.py:factory, got {text!r}")
    if module.endswith(".py") or "/" in module or os.sep in module:
        module = _path(module, where)
    return f"{module}:{factory}"


def _table(value: Any, where: _Where) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(f"expected a table such as {{num_classes = 10}}, got {_type_name(value)} ({value!r})")
    return dict(value)


_DIM_SEPARATOR = re.compile(r"\s*[,x×]\s*")


def _one_shape(value: Any, where: _Where) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in _DIM_SEPARATOR.split(value.strip().strip("()[]")) if p]
        if not parts or not all(p.isdecimal() for p in parts):
            raise where.error(f"expected a shape such as [1, 3, 32, 32] or \"1,3,32,32\", got {value!r}")
        dims: list[Any] = [int(p) for p in parts]
    elif isinstance(value, list) and value:
        dims = value
    else:
        raise where.error(f"expected a shape such as [1, 3, 32, 32], got {_type_name(value)} ({value!r})")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise where.error(f"every dimension must be a positive integer, got {value!r}")
    return tuple(dims)


def _input_shape(value: Any, where: _Where) -> InputShapes:
    """``[1, 3, 32, 32]``, ``"1,3,32,32"``, or a table ``{a = [1, 16], b = [1, 8]}`` for several inputs."""
    if isinstance(value, dict):
        if not value:
            raise where.error("expected at least one input name = shape")
        return {str(name): _one_shape(shape, where.child(str(name))) for name, shape in value.items()}
    return _one_shape(value, where)


def _method(value: Any, where: _Where) -> str:
    """``method = "auto"``, ``"product"``, ``"lipsdp"`` or ``"blocks"`` (any case)."""
    from lipcheck.bound.methods.choose import METHODS

    if not isinstance(value, str) or value.strip().lower() not in METHODS:
        raise where.error(f"expected one of {', '.join(repr(m) for m in METHODS)}, got {value!r}")
    return value.strip().lower()


def _domain(value: Any, where: _Where) -> str:
    """``domain = "0,1"``, ``[0, 1]``, or a table ``{image = [0, 1], mask = "0,1"}``: kept as the string form of
    ``--domain`` ("LO,HI" or "NAME=LO,HI;..."), checked against the model when it is analysed."""

    def pair(v: Any, w: _Where) -> str:
        if isinstance(v, str) and len(v.split(",")) == 2:
            parts: list[Any] = v.split(",")
        elif isinstance(v, list) and len(v) == 2:
            parts = v
        else:
            raise w.error(f"expected \"LO,HI\" or [LO, HI], got {v!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except (TypeError, ValueError):
            raise w.error(f"expected two numbers, got {v!r}") from None
        if not lo < hi:
            raise w.error(f"expected LO < HI, got {v!r}")
        return f"{lo!r},{hi!r}"

    if isinstance(value, dict):
        if not value:
            raise where.error("expected at least one input name = [LO, HI]")
        return ";".join(f"{name}={pair(v, where.child(str(name)))}" for name, v in value.items())
    return pair(value, where)


def _jobs(value: Any, where: _Where) -> int | str:
    """``jobs = 2``, ``0`` / ``"auto"`` for one process per CPU (kept as 0), or ``"size"`` (by the model's size,
    as ``analyze``'s default)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    if isinstance(value, str) and value.strip().lower() == "size":
        return "size"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise where.error(f"expected a number of processes ≥ 1, 0 / \"auto\" for every CPU, or \"size\", got "
                          f"{value!r}")
    return value


# key -> (ModelOptions field, parser)
_OPTION_KEYS: dict[str, tuple[str, Parser]] = {
    "input-shape": ("input_shape", _input_shape),
    "max-lipschitz": ("max_lipschitz", _number(0.0, strict=True)),
    "max-layer-sigma": ("max_layer_sigma", _number(0.0, strict=True)),
    "allow-uncertified": ("allow_uncertified", _boolean),
    "baseline": ("baseline", _path),
    "max-increase": ("max_increase", _number(0.0, strict=False)),
    "plot": ("plot", _path),
    "power-iterations": ("power_iterations", _integer(1)),
    "tolerance": ("tolerance", _number(0.0, strict=False)),
    "seed": ("seed", _integer(0)),
    "exact-limit": ("exact_limit", _integer(0)),
    "exact": ("exact", _boolean),
    "tight-work": ("tight_work", _number(0.0, strict=False)),
    "method": ("method", _method),
    "domain": ("domain", _domain),
    "lower-bound": ("lower_bound", _boolean),
    "lower-bound-seconds": ("lower_bound_seconds", _number(0.0, strict=False)),
    "arch": ("arch", _arch),
    "arch-kwargs": ("arch_kwargs", _table),
    "key": ("key", _string),
    "trust-pickle": ("trust_pickle", _no_trust),
    "jobs": ("jobs", _jobs),
    "cache": ("cache", _path),
}
_PER_MODEL_ONLY = {"baseline", "plot"}  # one file per model: not a default for all of them
MODEL_KEYS = ("path", "name", *_OPTION_KEYS)
TOP_LEVEL_KEYS = ("models", *(key for key in _OPTION_KEYS if key not in _PER_MODEL_ONLY))


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], where: _Where) -> None:
    for key in table:
        if key in known:
            continue
        if key in _PER_MODEL_ONLY and "path" not in known:
            raise where.child(key).error(
                f"'{key}' is set per model: put it in the model's table ([[tool.lipcheck.models]] or "
                "[[models]] in lipcheck.toml)"
            )
        close = difflib.get_close_matches(str(key).replace("_", "-"), known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise where.child(str(key)).error(f"unknown key{hint}; known keys: {', '.join(known)}")


def _options(table: Mapping[str, Any], where: _Where) -> ModelOptions:
    values = {}
    for key, (field_name, parse) in _OPTION_KEYS.items():
        if key in table:
            values[field_name] = parse(table[key], where.child(key))
    return ModelOptions(**values)


def parse_config(data: Mapping[str, Any], file: str, base: Path, cwd: Path, *, prefix: str = "") -> Config:
    """Validate a parsed ``[tool.lipcheck]`` table (``prefix`` = its key path, for messages). Pure."""
    where = _Where(file=file, key=prefix, base=base, cwd=cwd)
    _check_keys(data, TOP_LEVEL_KEYS, where)
    defaults = _options(data, where)
    models_data = data.get("models", [])
    models_where = where.child("models")
    if not isinstance(models_data, list):
        raise models_where.error(
            f"expected an array of tables ([[{prefix + '.' if prefix else ''}models]]) or of paths, "
            f"got {_type_name(models_data)}"
        )
    models: list[ModelEntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(models_data):
        item_where = replace(models_where, key=f"{models_where.key}[{i}]")
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise item_where.error(f"expected a table with a 'path' or a path string, got {_type_name(item)}")
        _check_keys(item, MODEL_KEYS, item_where)
        if "path" not in item:
            raise item_where.error("missing key 'path' (the model file)")
        path = _path(item["path"], item_where.child("path"))
        absolute = os.path.abspath(path)
        if absolute in seen:
            raise item_where.child("path").error(f"{path} is configured twice (also models[{seen[absolute]}])")
        seen[absolute] = i
        name = _string(item["name"], item_where.child("name")) if "name" in item else path
        models.append(ModelEntry(path=path, name=name, options=defaults.merged(_options(item, item_where))))
    names = [entry.name for entry in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise models_where.error(f"model name {duplicated[0]!r} is used twice: names must be unique")
    return Config(file=file, defaults=defaults, models=tuple(models))


# --------------------------------------------------------------------------------------------- files


def _tomllib() -> ModuleType:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:  # pragma: no cover - tomli is a dependency on Python < 3.11
        raise ConfigError("reading TOML configuration needs Python 3.11+ or the tomli package "
                          "(pip install tomli)") from None
    return tomli


def _read_toml(path: Path, shown: str) -> dict[str, Any]:
    from lipcheck.readlimits import MAX_CONFIG_BYTES, FileLimitError, read_limited_text

    toml = _tomllib()
    try:
        text = read_limited_text(path, MAX_CONFIG_BYTES, what="config file")
    except FileLimitError as exc:
        raise ConfigError(str(exc).replace(os.fspath(path), shown)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    try:
        data: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: invalid TOML: {exc}") from exc
    except RecursionError:  # arrays nested thousands deep
        raise ConfigError(f"{shown}: invalid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{shown}: invalid TOML: {exc}") from exc
    return data


def _lipcheck_table(data: Mapping[str, Any]) -> Any:
    tool = data.get("tool")
    return tool.get("lipcheck") if isinstance(tool, dict) else None


def find_config(start: Path) -> Path | None:
    """The nearest ``lipcheck.toml``, or ``pyproject.toml`` with a ``[tool.lipcheck]`` table, from ``start`` up."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / "lipcheck.toml"
        if candidate.is_file():
            return candidate
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _lipcheck_table(_read_toml(candidate, os.fspath(candidate))) is not None:
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Config:
    """Load the configuration: ``path`` when given (a ``pyproject.toml`` or a ``lipcheck.toml``), else the one
    :func:`find_config` finds from ``cwd``; no file at all is an empty :class:`Config`."""
    cwd = (cwd or Path.cwd()).resolve()
    if path is not None:
        file = (cwd / os.fspath(path)).resolve()
        if not file.is_file():
            state = "is not a regular file" if file.exists() else "not found"  # e.g. /dev/zero, a FIFO
            raise ConfigError(f"config file {os.fspath(path)} {state}")
    else:
        found = find_config(cwd)
        if found is None:
            return EMPTY
        file = found
    shown = _shown(file, cwd)
    data = _read_toml(file, shown)
    if file.name != "pyproject.toml":  # lipcheck.toml (or any other name given with --config): top level
        if "tool" in data:
            raise ConfigError(f"{shown}: tool: in {file.name} the keys go at the top level, without [tool.lipcheck]")
        return parse_config(data, shown, file.parent, cwd)
    table = _lipcheck_table(data)
    if table is None:
        raise ConfigError(f"{shown}: no [tool.lipcheck] table")
    if not isinstance(table, dict):
        raise ConfigError(f"{shown}: tool.lipcheck: expected a table, got {_type_name(table)}")
    return parse_config(table, shown, file.parent, cwd, prefix="tool.lipcheck")
