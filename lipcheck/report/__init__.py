from lipcheck.report.model import (
    InputInfo,
    LayerResult,
    LowerBound,
    NormResult,
    OpResult,
    Report,
    Settings,
    SpectralNormAudit,
    SpectralNormAuditSummary,
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
    "SpectralNormAudit",
    "SpectralNormAuditSummary",
    "Unbounded",
]
