from lipcheck.report.model import (
    InputInfo,
    LayerResult,
    LowerBound,
    NormResult,
    OpResult,
    Report,
    Settings,
    Unbounded,
)

__all__ = [
    "InputInfo",
    "LayerResult",
    "LowerBound",
    "NormResult",
    "OpResult",
    "Report",
    "Settings",
    "Unbounded",
]
