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


def load(model: Any, input_shape: Any = None, **torch_options: Any) -> Graph:
    """Load a model (ONNX or PyTorch file, ModelProto, nn.Module) into lipcheck's graph IR with static shapes.
    ``torch_options``: trust_pickle, arch, arch_kwargs, key (see :func:`analyze`)."""
    from lipcheck.loaders import TorchOptions, load_model

    return load_model(model, input_shape=input_shape, torch_options=TorchOptions(**torch_options))


def analyze(model: Any, input_shape: Any = None, **options: Any) -> Report:
    """Analyse a model and return a frozen Report.

    ``model``: a path to an ONNX or PyTorch file, an ``onnx.ModelProto``, a ``torch.nn.Module`` (ScriptModule,
    ExportedProgram) or a loaded Graph. ``input_shape``: a shape ``(1, 3, 32, 32)`` for a single input, or a
    mapping ``{name: shape}``. Options: power_iterations, tolerance, seed, exact_limit, lower_bound,
    lower_bound_seconds, progress, jobs, cache_dir, force, limits; ``method`` = ``"auto"`` (default: the product,
    plus LipSDP-Neuron on small MLP chains and the blocks method within small limits elsewhere), ``"product"``,
    ``"lipsdp"`` or ``"blocks"``; ``domain`` = ``(lo, hi)`` for every float input or ``{name: (lo, hi)}``: also a
    certified bound on that input box (``report.local``), with a lower bound measured inside it; for PyTorch files
    trust_pickle, arch, arch_kwargs, key. ``report.upper_bound`` is the least certified value in ``report.bounds``.
    """
    from lipcheck.bound.analysis import analyze as _analyze

    return _analyze(model, input_shape=input_shape, **options)
