"""Progress reporting as an observer, so that the analysis core never imports Rich.

The analysis calls ``start`` once per phase (e.g. "bounding layers" with ``total`` = number of nodes), then
``advance`` once per unit of work with the name of the layer it is on, then ``finish``. A phase may be
followed by another ``start``. The CLI passes a Rich implementation (``lipcheck.cli.progress``); library
callers pass nothing (``NullProgress``) or their own object with these three methods.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["NullProgress", "Progress"]


@runtime_checkable
class Progress(Protocol):
    """Observer of a long computation. Implementations must never raise and never write to stdout."""

    def start(self, total: int, description: str) -> None:
        """A phase of ``total`` units begins (``total`` may be 0 when unknown)."""

    def advance(self, label: str) -> None:
        """One unit is done; ``label`` names the layer (node) being worked on."""

    def finish(self) -> None:
        """The computation is over (or was interrupted); safe to call more than once."""


class NullProgress:
    """A progress observer that does nothing."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, label: str) -> None:
        pass

    def finish(self) -> None:
        pass
