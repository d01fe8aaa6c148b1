"""Loaders turn model files into lipcheck's graph IR. Only loaders import onnx (and, later, torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lipcheck.errors import LoadError
from lipcheck.ir.graph import Graph


def load_model(model: Any, input_shape: Any = None) -> Graph:
    """Load a model given as a path, an ``onnx.ModelProto`` or an already loaded :class:`Graph`."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.exists() and path.is_file() and _looks_like_torch(path):
            raise LoadError(
                f"{path}: this looks like a PyTorch file; this version of lipcheck reads ONNX models "
                "(export with torch.onnx.export)"
            )
        from lipcheck.loaders.onnx_loader import load_onnx

        return load_onnx(path, input_shape)
    type_name = f"{type(model).__module__}.{type(model).__name__}"
    if type_name == "onnx.onnx_ml_pb2.ModelProto" or type(model).__name__ == "ModelProto":
        from lipcheck.loaders.onnx_loader import load_onnx

        return load_onnx(model, input_shape)
    raise LoadError(f"cannot analyse an object of type {type_name}: pass a path to an ONNX file")


def _looks_like_torch(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02"
