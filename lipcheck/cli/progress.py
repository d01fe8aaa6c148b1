"""A Rich progress bar on STDERR implementing :class:`lipcheck.progress.Progress`.

It draws only when stderr is a terminal (or when forced with ``--progress``), never on stdout, and it is
transient: the bar disappears when the analysis finishes, leaving the terminal to the report. Work is
weighted (a layer counts by its estimated cost), so the bar shows a percentage, the ETA and the layer.
The layer name comes from the model: it is shown escaped (no control character, no Rich markup).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichBar

from lipcheck.report.text import safe_text

__all__ = ["RichProgress"]

_MAX_LABEL = 48


def _short(label: str) -> str:
    """The label as displayed: escaped (:func:`~lipcheck.report.text.safe_text`), then shortened from the left."""
    label = safe_text(label)
    return label if len(label) <= _MAX_LABEL else "…" + label[-(_MAX_LABEL - 1) :]


class RichProgress:
    """Progress bar with the current layer and an ETA; a no-op when disabled."""

    def __init__(self, console: Console | None = None, *, force: bool = False) -> None:
        self.console = console or Console(stderr=True, force_terminal=True if force else None)
        self.enabled = force or self.console.is_terminal
        self._bar: _RichBar | None = None
        self._task: TaskID | None = None

    def start(self, total: float, description: str) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = _RichBar(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[layer]}", markup=False),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        if self._task is not None:  # a new phase replaces the previous one on the same line
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(safe_text(description), total=total if total > 0 else None, layer="")

    def advance(self, label: str, work: float = 1.0) -> None:
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, advance=work, layer=_short(label))

    def finish(self) -> None:
        if self._bar is None:
            return
        bar, self._bar, self._task = self._bar, None, None
        bar.stop()
