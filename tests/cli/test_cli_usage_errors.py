"""Usage errors of the real command (unknown options, values out of range, missing arguments): one line on
stderr, exit 2, like every other bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "sample_models" / "mlp.onnx")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lipcheck", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.mark.parametrize(
    "args, words",
    [
        (["analyze", MLP, "--seed", "-1"], "--seed"),
        (["analyze", MLP, "--power-iterations", "0"], "--power-iterations"),
        (["analyze", MLP, "--bogus"], "--bogus"),
        (["analyze"], "MODEL"),
        (["normalize", MLP], "--out"),
        (["check", MLP, "--max-lipschitz", "ten"], "--max-lipschitz"),
        (["analyze", MLP, "--method", "sdp"], "--method"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_usage_error_is_one_line_exit_2(args: list[str], words: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr
    assert proc.stdout == ""


def test_help_and_version_still_exit_0() -> None:
    assert _run("--version").returncode == 0
    proc = _run("analyze", "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout
