"""Progress reporting as an observer, so that the analysis core never imports Rich.

The analysis calls ``start`` once per phase (e.g. "bounding layers"), then ``advance`` as work gets done,
with the name of the layer it is on, then ``finish``. A phase may be followed by another ``start``. The CLI
passes a Rich implementation (``lipcheck.cli.progress``); library callers pass nothing (``NullProgress``)
or their own object with these three methods.

Work is weighted: ``start(total, ...)`` gives the phase's total work and ``advance(label, work)`` the work
just done, so that an ETA means something when one convolution costs 100× a Relu. ``work`` defaults to 1:
an observer written for one unit per layer (``advance(self, label)``, no ``work`` parameter) still works —
:class:`WorkMeter` then gives it the number of layers as the total and one ``advance`` per layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["NullProgress", "Progress", "WorkMeter", "accepts_work"]


@runtime_checkable
class Progress(Protocol):
    """Observer of a long computation. Implementations must never raise and never write to stdout."""

    def start(self, total: float, description: str) -> None:
        """A phase of ``total`` units of work begins (``total`` may be 0 when unknown)."""

    def advance(self, label: str, work: float = 1.0) -> None:
        """``work`` more units are done (0: none yet); ``label`` names the layer (node) being worked on, as
        the model spells it: any character, escape it before display (``lipcheck.report.text.safe_text``)."""

    def finish(self) -> None:
        """The computation is over (or was interrupted); safe to call more than once."""


class NullProgress:
    """A progress observer that does nothing."""

    def start(self, total: float, description: str) -> None:
        pass

    def advance(self, label: str, work: float = 1.0) -> None:
        pass

    def finish(self) -> None:
        pass


def accepts_work(progress: object) -> bool:
    """Whether ``progress.advance`` takes a ``work`` argument (observers written before weights do not)."""
    try:
        params = inspect.signature(progress.advance).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError, AttributeError):
        return False
    return "work" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class WorkMeter:
    """One phase over a list of items (the graph's nodes, in order) with a work weight each.

    Each item's work is reported exactly once: :meth:`done` when it finished out of order (a worker's
    result), or through :meth:`working_on` in the walk, which reports the previous item's work and names the
    item about to be computed. Observers without ``work`` get one unit per item instead.
    """

    def __init__(self, progress: Progress, description: str, items: Sequence[tuple[str, float]]) -> None:
        self.progress = progress
        self.weighted = accepts_work(progress)
        self.labels = [label for label, _ in items]
        self.weights = [max(0.0, float(w)) for _, w in items]
        self.reported = [False] * len(items)
        self._carry = 0.0
        total = sum(self.weights) if self.weighted else len(items)
        progress.start(total, description)

    def done(self, index: int) -> None:
        """Item ``index`` is finished (out of order)."""
        if self.reported[index]:
            return
        self.reported[index] = True
        if self.weighted:
            self.progress.advance(self.labels[index], work=self.weights[index])
        else:
            self.progress.advance(self.labels[index])

    def working_on(self, index: int) -> None:
        """Item ``index`` is about to be computed (in order); the previous one is finished."""
        label = self.labels[index]
        if self.weighted:
            self.progress.advance(label, work=self._carry)
            self._carry = 0.0 if self.reported[index] else self.weights[index]
            self.reported[index] = True
        elif not self.reported[index]:
            self.reported[index] = True
            self.progress.advance(label)

    def close(self) -> None:
        """The last item is finished."""
        if self.weighted and self._carry:
            self.progress.advance(self.labels[-1] if self.labels else "", work=self._carry)
        self._carry = 0.0
