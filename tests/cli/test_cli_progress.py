"""The progress observer: the protocol, the no-op, and the Rich bar that draws on its own console only."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from lipcheck.cli.progress import RichProgress
from lipcheck.progress import NullProgress, Progress


def _run(progress: Progress) -> None:
    progress.start(3, "bounding layers")
    for label in ("conv1", "conv2", "fc"):
        progress.advance(label)
    progress.start(0, "lower bound")  # a second phase, total unknown
    progress.advance("sample 1")
    progress.finish()
    progress.finish()  # idempotent


def test_implementations_satisfy_the_protocol() -> None:
    assert isinstance(NullProgress(), Progress)
    assert isinstance(RichProgress(Console(file=io.StringIO())), Progress)
    _run(NullProgress())


def test_rich_progress_is_silent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    progress = RichProgress(Console(file=buffer))
    assert not progress.enabled
    _run(progress)
    assert buffer.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_rich_progress_draws_on_its_console_only(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    progress = RichProgress(Console(file=buffer, force_terminal=True, width=120), force=True)
    assert progress.enabled
    _run(progress)
    assert "bounding layers" in buffer.getvalue()
    assert capsys.readouterr().out == ""


def test_default_console_is_stderr() -> None:
    assert RichProgress().console.stderr
