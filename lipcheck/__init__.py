"""lipcheck: certified Lipschitz bounds for PyTorch and ONNX models.

Heavy libraries (torch, onnx, onnxruntime, scipy) are imported lazily, inside the functions that need them,
so that ``lipcheck --help`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "analyze", "load"]

if TYPE_CHECKING:
    from lipcheck.ir import Graph
    from lipcheck.report import Report


def load(model: Any, input_shape: Any = None) -> Graph:
    """Load a model file (ONNX) into lipcheck's graph IR with static shapes."""
    from lipcheck.loaders import load_model

    return load_model(model, input_shape=input_shape)


def analyze(model: Any, input_shape: Any = None, **options: Any) -> Report:
    """Analyse a model (a path to an ONNX file, or a loaded Graph) and return a frozen Report.

    ``input_shape``: a shape ``(1, 3, 32, 32)`` for a single input, or a mapping ``{name: shape}``.
    Options: power_iterations, tolerance, seed, exact_limit, lower_bound, lower_bound_seconds, progress.
    """
    from lipcheck.bound.analysis import analyze as _analyze

    return _analyze(model, input_shape=input_shape, **options)
