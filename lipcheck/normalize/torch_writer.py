"""Write a PyTorch model with some weights multiplied by factors, in the format it was read.

The analysis names each weighted layer's weight by ``param`` (the torch name the in-memory ONNX export
carries, see :mod:`lipcheck.loaders.torch_loader`); :func:`write_scaled_torch` multiplies what that layer
computes with by ``factors[param]``, so its certified σ scales by exactly that factor:

- TorchScript archive → TorchScript archive (read as the loader reads it, :func:`load_torchscript`: without
  ``trust_pickle`` its code is inspected before any of it runs; ``torch.jit.save``, extra files kept).
- torch.export program (``.pt2``) → ``.pt2`` (the tensor in ``program.state_dict`` or ``program.constants``;
  without ``trust_pickle`` the archive is checked as the loader checks it before ``torch.export.load``;
  ``torch.export.save``, extra files kept).
- state dict / training checkpoint → the same object (loaded with ``weights_only=True``, or unpickled with
  ``trust_pickle``): every key, the nesting, the optimizer state, the epoch stay; only the tensors of the
  state dict the loader uses (found the same way, ``key`` and the ``module.`` / ``_orig_mod.`` prefix
  included) change, in place, so tensors that share memory with them (tied weights) change with them.
- whole pickled module (only with ``trust_pickle``: unpickling runs code from the file) → pickled module.

Parametrized weights keep their parametrization, and the weight the module uses in EVAL mode is scaled:

- spectral_norm (``parametrizations.weight.original`` / ``0._u`` / ``0._v``; legacy ``weight_orig`` /
  ``weight_u`` / ``weight_v``): eval mode uses original / σ̂ with σ̂ = uᵀ·W_mat·v from the STORED u, v.
  Scaling the original scales σ̂ too and changes nothing, so the stored u is divided by f: σ̂ → σ̂ / f.
  A training step runs power iteration, re-normalizes u and undoes it.
- weight_norm (``original0`` g / ``original1`` v; legacy ``weight_g`` / ``weight_v``): W = g·v/‖v‖, so g is
  multiplied by f (scaling v would change nothing).

Tensors are rescaled in float64 and rounded once to their own dtype. The source file is never modified;
the output is written atomically (:func:`lipcheck.files.atomic_outputs`). Files are read with
``map_location="cpu"``: tensors saved on a GPU are written back as CPU tensors.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from lipcheck.errors import LoadError, UnsupportedModelError, UsageError
from lipcheck.files import atomic_outputs, check_output_path
from lipcheck.loaders import TorchOptions
from lipcheck.loaders.parametrizations import (
    LEGACY,
    PARAMETRIZATIONS,
    SPECTRAL_NORM,
    Parametrization,
    _keys_for,
    find_parametrizations,
)
from lipcheck.loaders.torch_loader import (
    _check_export_archive,
    load_torchscript,
    locate_state_dict,
    read_torch_save,
    sniff,
)
from lipcheck.normalize.onnx_writer import WrittenScale  # one record type for both writers

__all__ = ["HOW_PLAIN", "HOW_SPECTRAL_NORM", "HOW_WEIGHT_NORM", "WrittenScale", "write_scaled_torch"]

HOW_PLAIN = "weight multiplied by f"
HOW_SPECTRAL_NORM = ("spectral_norm: stored u divided by f, so original/σ̂ scales by f in eval mode "
                     "(a training step re-normalizes u and undoes it)")
HOW_WEIGHT_NORM = "weight_norm: g multiplied by f, so g·v/‖v‖ scales by f"

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile, as the loader strips them
_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.")


def write_scaled_torch(
    source: Path, out: Path, factors: Mapping[str, float], options: TorchOptions
) -> list[WrittenScale]:
    """Write ``source`` to ``out`` in the same format, each ``param`` of ``factors`` scaled by its factor in
    eval mode (see the module docstring for each format and parametrization). Returns one
    :class:`WrittenScale` per param, in the order of ``factors``. Raises :class:`LoadError` for an unreadable
    file or a param the file does not have, :class:`UnsupportedModelError` for a weight that cannot be
    scaled on its own; nothing is written then."""
    source, out = Path(source), Path(out)
    for param, factor in factors.items():
        if not (math.isfinite(factor) and factor > 0):
            raise UsageError(f"{param}: scale factor {factor!r} is not a finite positive number")
    out = check_output_path(out)  # never a folder, device, FIFO or socket; a symlink: the file it points to
    if out.exists() and (out.resolve() == source.resolve() or os.path.samefile(out, source)):
        raise UsageError(f"{out}: is the source model; the torch writer never overwrites its input")
    label = str(source)
    kind = sniff(source)
    if kind == "torchscript":
        return _write_torchscript(source, out, factors, options, label)
    if kind == "export":
        return _write_exported_program(source, out, factors, options, label)
    if kind != "pickle":
        raise LoadError(f"{label}: not a PyTorch file (expected a TorchScript archive, a torch.export .pt2 "
                        "program, or a torch.save checkpoint)")
    return _write_torch_save(source, out, factors, options, label)


# ------------------------------------------------------------------------------------------------ formats


def _extra_file_names(path: Path) -> list[str]:
    """The names of the ``extra/`` records of a TorchScript / torch.export archive (saved with extra files)."""
    with zipfile.ZipFile(path) as z:
        return [parts[2] for parts in (n.split("/", 2) for n in z.namelist())
                if len(parts) == 3 and parts[1] == "extra" and parts[2]]


def _extra_file_contents(path: Path) -> dict[str, bytes]:
    """The ``extra/`` records of a TorchScript archive, name → bytes, read from the zip (nothing runs)."""
    with zipfile.ZipFile(path) as z:
        return {parts[2]: z.read(n) for n in z.namelist()
                if len(parts := n.split("/", 2)) == 3 and parts[1] == "extra" and parts[2]}


def _write_torchscript(
    source: Path, out: Path, factors: Mapping[str, float], options: TorchOptions, label: str
) -> list[WrittenScale]:
    extra: dict[str, Any] = _extra_file_contents(source)
    module = load_torchscript(source, options)  # a LoadError for code with side effects, without trust_pickle
    written = _scale(_module_tensors(module), factors, label, "the TorchScript module")

    def save(f: IO[bytes]) -> None:
        torch.jit.save(module, f, _extra_files=extra)

    _save_atomically(out, save)
    return written


def _write_exported_program(
    source: Path, out: Path, factors: Mapping[str, float], options: TorchOptions, label: str
) -> list[WrittenScale]:
    if not options.trust_pickle:
        _check_export_archive(source)  # what torch.export.load would unpickle in full: refused, as the loader does
    extra: dict[str, Any] = dict.fromkeys(_extra_file_names(source), "")
    try:
        program = torch.export.load(str(source), extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{label}: a torch.export program that torch.export.load cannot read ({_short(exc)})") from exc
    tensors = {**program.state_dict, **program.constants}
    written = _scale({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, factors, label,
                     "the exported program's state dict and constants")

    def save(f: IO[bytes]) -> None:
        torch.export.save(program, f, extra_files=extra or None)

    _save_atomically(out, save)
    return written


def _write_torch_save(
    source: Path, out: Path, factors: Mapping[str, float], options: TorchOptions, label: str
) -> list[WrittenScale]:
    obj = read_torch_save(source, options)  # a LoadError without trust_pickle for a pickled module
    if isinstance(obj, torch.nn.Module):
        written = _scale(_module_tensors(obj), factors, label, "the pickled module")
    elif isinstance(obj, Mapping):
        path, where = locate_state_dict(obj, options.key, label)
        node: Any = obj
        for part in path:
            node = node[part]
        state = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
        written = _scale(state, factors, label, f"the state dict {where}", others=_all_tensors(obj))
    else:
        raise LoadError(f"{label}: a torch.save file holding a {type(obj).__module__}.{type(obj).__name__}, "
                        "neither a module nor a state dict: lipcheck does not know what model it describes")
    legacy_format = not zipfile.is_zipfile(source)  # torch.save(..., _use_new_zipfile_serialization=False)

    def save(f: IO[bytes]) -> None:
        torch.save(obj, f, _use_new_zipfile_serialization=not legacy_format)

    _save_atomically(out, save)
    return written


def _save_atomically(out: Path, save: Callable[[IO[bytes]], None]) -> None:
    # an open file rather than a path: torch then names the archive's top folder "archive/" (as the samples
    # are written), not after the temporary file
    with atomic_outputs([out]) as temporary:
        with open(temporary[0], "wb") as f:
            save(f)


# ------------------------------------------------------------------------------------------------ tensors


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its full name (shared ones under each name, non-persistent buffers too)."""
    tensors = dict(module.state_dict(keep_vars=True))
    for name, buffer in module.named_buffers():
        tensors.setdefault(name, buffer)
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def _all_tensors(obj: Any, where: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a checkpoint's nested dicts, lists and tuples, with a readable location."""
    if isinstance(obj, torch.Tensor):
        yield where or "(top level)", obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _all_tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _all_tensors(v, f"{where}[{i}]")


@dataclass(frozen=True)
class _Target:
    param: str
    key: str  # the key in the mapping that was searched (with any prefix)
    tensor: torch.Tensor
    factor: float
    tensor_factor: float
    how: str


def _scale(
    tensors: Mapping[str, torch.Tensor],
    factors: Mapping[str, float],
    label: str,
    what: str,
    others: Iterator[tuple[str, torch.Tensor]] | None = None,
) -> list[WrittenScale]:
    """Resolve every param to the tensor to change, check none is changed twice or only partly shares memory
    with another tensor, then scale them all in place (nothing is changed when a check fails)."""
    resolver = _Resolver(tensors, label, what)
    targets = [resolver.resolve(param, factor) for param, factor in factors.items()]
    for i, a in enumerate(targets):
        for b in targets[:i]:
            if _overlap(a.tensor, b.tensor):
                raise UnsupportedModelError(
                    f"{label}: {a.param!r} and {b.param!r} are stored in the same tensor ({b.key}): one weight "
                    "cannot be scaled by two factors"
                )
    everything = list(others) if others is not None else list(tensors.items())
    for target in targets:
        for where, other in everything:
            if _overlap(target.tensor, other) and not _same_view(target.tensor, other):
                raise UnsupportedModelError(
                    f"{label}: {target.key} (for {target.param!r}) shares memory with {where}, a different view "
                    "of the same storage: lipcheck cannot scale one without the other"
                )
    with torch.no_grad():
        for target in targets:
            t = target.tensor
            t.copy_(t.detach().to(torch.float64) * target.tensor_factor)
    return [WrittenScale(t.param, t.key, t.factor, t.tensor_factor, t.how) for t in targets]


def _byte_range(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage address, first byte, end byte) of the memory the tensor's elements span."""
    start = int(t.storage_offset()) * t.element_size()
    extent = 1 + sum((int(size) - 1) * int(stride) for size, stride in zip(t.shape, t.stride()) if size > 0)
    length = 0 if t.numel() == 0 else extent * t.element_size()
    return t.untyped_storage().data_ptr(), start, start + length


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    (pa, sa, ea), (pb, sb, eb) = _byte_range(a), _byte_range(b)
    return pa == pb and sa < eb and sb < ea


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (_byte_range(a) == _byte_range(b) and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


class _Resolver:
    """Maps an analysed layer's ``param`` to the tensor of ``tensors`` to scale and by what."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str, what: str) -> None:
        self.tensors = tensors
        self.label = label
        self.what = what
        self.prefix = next((p for p in _PREFIXES if tensors and all(k.startswith(p) for k in tensors)), None)
        self._views: list[tuple[str, dict[str, Parametrization]]] | None = None

    def views(self) -> list[tuple[str, dict[str, Parametrization]]]:
        """(prefix, alias -> parametrization) for the keys as they are and, when every key has a DataParallel /
        torch.compile prefix, without it. Aliases: every key of the parametrization, in both styles (a legacy
        checkpoint loads into a model built with the new style and back), and the plain ``<module>.weight``
        (a checkpoint loaded into an architecture without the parametrization)."""
        if self._views is None:
            prefixes = [""] + ([self.prefix] if self.prefix else [])
            self._views = []
            for prefix in prefixes:
                arrays = {k[len(prefix):]: _as_numpy(v) for k, v in self.tensors.items()}
                try:
                    found = find_parametrizations(arrays)
                except LoadError as exc:
                    raise LoadError(f"{self.label}: {exc}") from exc
                aliases: dict[str, Parametrization] = {}
                for p in found:
                    other = _keys_for(p.kind, LEGACY if p.style == PARAMETRIZATIONS else PARAMETRIZATIONS,
                                      p.module, p.name)
                    for alias in (*p.keys.values(), *other.values(), p.weight_key):
                        aliases.setdefault(alias, p)
                self._views.append((prefix, aliases))
        return self._views

    def resolve(self, param: str, factor: float) -> _Target:
        for prefix, aliases in self.views():
            p = aliases.get(param)
            if p is not None:
                if p.kind == SPECTRAL_NORM:
                    return self._target(param, prefix + p.keys["u"], factor, 1.0 / factor, HOW_SPECTRAL_NORM)
                return self._target(param, prefix + p.keys["g"], factor, factor, HOW_WEIGHT_NORM)
        if _PARAMETRIZED.search(param):
            raise UnsupportedModelError(
                f"{self.label}: {param!r} belongs to a parametrization lipcheck cannot scale (only spectral_norm "
                "and weight_norm: scaling the stored tensors of another one need not scale the weight)"
            )
        for prefix in ("", self.prefix or ""):
            if prefix + param in self.tensors:
                return self._target(param, prefix + param, factor, factor, HOW_PLAIN)
        examples = ", ".join(repr(k) for k in list(self.tensors)[:5])
        raise LoadError(f"{self.label}: no tensor for the weight {param!r} in {self.what} (its keys: {examples}"
                        f"{', ...' if len(self.tensors) > 5 else ''})")

    def _target(self, param: str, key: str, factor: float, tensor_factor: float, how: str) -> _Target:
        tensor = self.tensors[key]
        if not tensor.is_floating_point():
            raise UnsupportedModelError(f"{self.label}: {key} (for {param!r}) is a {tensor.dtype} tensor, not a "
                                        "floating-point weight that can be scaled")
        return _Target(param, key, tensor, factor, tensor_factor, how)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's values for :func:`find_parametrizations` (shares memory where numpy has the dtype)."""
    t = t.detach().cpu()
    try:
        return t.numpy()
    except TypeError:  # bfloat16 and other dtypes numpy lacks
        return t.to(torch.float64).numpy() if t.is_floating_point() else np.zeros(tuple(t.shape))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:297] + '...' if len(text) > 300 else text}"
