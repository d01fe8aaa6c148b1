"""The CI gate: thresholds, project configuration, baselines, and the pure decision.

- :mod:`lipcheck.gate.decision`: :func:`evaluate` (report, thresholds, baseline) -> :class:`Verdict`, and the
  rounding rule (:func:`should_fail`: compare what the report prints).
- :mod:`lipcheck.gate.config`: ``[tool.lipcheck]`` in ``pyproject.toml`` / ``lipcheck.toml``.
- :mod:`lipcheck.gate.baseline`: saved JSON reports and the layer-by-layer comparison.
- :mod:`lipcheck.gate.run`: resolve the models to check, analyse them, decide.

Only the standard library is imported here, so the CLI can load it without slowing ``lipcheck --help``.
"""

from __future__ import annotations

from lipcheck.gate.baseline import Comparison, Snapshot, compare, load_snapshot, save_baseline
from lipcheck.gate.config import Config, ConfigError, ModelOptions, load_config
from lipcheck.gate.decision import (
    CheckKind,
    CheckResult,
    Outcome,
    Reason,
    Thresholds,
    Verdict,
    evaluate,
    should_fail,
)

__all__ = [
    "CheckKind",
    "CheckResult",
    "Comparison",
    "Config",
    "ConfigError",
    "ModelOptions",
    "Outcome",
    "Reason",
    "Snapshot",
    "Thresholds",
    "Verdict",
    "compare",
    "evaluate",
    "load_config",
    "load_snapshot",
    "save_baseline",
    "should_fail",
]
