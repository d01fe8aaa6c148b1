"""Loaders turn model files into lipcheck's graph IR. Only loaders import onnx and torch.

- :mod:`lipcheck.loaders.onnx_loader`: ONNX files and ``onnx.ModelProto``.
- :mod:`lipcheck.loaders.torch_loader`: TorchScript, torch.export programs, pickled modules, state dicts
  with an architecture, live ``nn.Module`` objects (through an in-memory ONNX export into the same IR).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipcheck.errors import LoadError
from lipcheck.ir.graph import Graph


@dataclass(frozen=True)
class TorchOptions:
    """How to read a PyTorch file: ``trust_pickle`` allows unpickling (runs code from the file); ``arch``
    (``package.module:factory`` or ``path/file.py:factory``) builds the nn.Module a state dict is loaded into,
    called with ``arch_kwargs``; ``key`` picks the state dict inside a checkpoint."""

    trust_pickle: bool = False
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    key: str | None = None


def check_model_file(path: Path) -> None:
    """One clear :class:`LoadError` for a path that cannot be a model: missing, a directory, or empty."""
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise LoadError(f"{path}: file is empty")


def load_model(model: Any, input_shape: Any = None, torch_options: TorchOptions | None = None,
               pins: dict[str, float] | None = None) -> Graph:
    """Load a model given as a path (ONNX or PyTorch file), an ``onnx.ModelProto``, a PyTorch module / program,
    or an already loaded :class:`Graph`. ``torch_options``: a :class:`~lipcheck.loaders.torch_loader.TorchOptions`
    (``--trust-pickle``, ``--arch``, ``--arch-kwargs``, ``--key``)."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if _is_torch_file(path):
            from lipcheck.loaders.torch_loader import load_torch

            return load_torch(path if not isinstance(model, str) else model, input_shape, torch_options)
        from lipcheck.loaders.onnx_loader import load_onnx

        return load_onnx(path, input_shape, pins)
    module = type(model).__module__
    name = type(model).__name__
    if name == "ModelProto" and module.startswith("onnx"):
        from lipcheck.loaders.onnx_loader import load_onnx

        return load_onnx(model, input_shape, pins)
    if module.startswith("torch") or _is_torch_object(model):
        from lipcheck.loaders.torch_loader import load_torch

        return load_torch(model, input_shape, torch_options)
    raise LoadError(
        f"cannot analyse an object of type {module}.{name}: pass a model file (.onnx, .pt, .pt2, ...), an "
        "onnx.ModelProto or a torch.nn.Module"
    )


def _is_torch_file(path: Path) -> bool:
    """True for files whose bytes say PyTorch (zip archive or pickle); reads the head only, imports nothing."""
    try:
        if not path.is_file() or path.stat().st_size < 4:
            return False
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _is_torch_object(model: Any) -> bool:
    """A user's nn.Module subclass lives in their module, not torch's: check the class hierarchy by name."""
    return any(c.__module__.startswith("torch.") for c in type(model).__mro__[1:])
