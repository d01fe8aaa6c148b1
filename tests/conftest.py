"""Shared pytest configuration: ``--update-golden`` rewrites the golden files in tests/golden/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite tests/golden/* from the current output instead of comparing against it.",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(autouse=True)
def _private_config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache keys (``--cache``) and any other per-user file go to a temporary config folder, never ~/.config."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def _thread_settings_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A CLI command run in-process sizes the thread pools (:func:`lipcheck.threads.limit_threads`): the
    variables it sets and its chosen count end with the test, and torch's pool goes back to its size."""
    import os
    import sys

    from lipcheck import threads

    for name in (*threads.BLAS_VARIABLES, "OMP_WAIT_POLICY"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:  # recorded as absent, so that a value set during the test is removed
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)
    monkeypatch.setattr(threads, "_limit", threads._limit)
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
