"""``lipcheck --help`` must not import the heavy libraries (they are imported inside the command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "scipy", "numpy")

_SCRIPT = """
import json, sys
from lipcheck.cli.app import main
args, heavy_names = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["lipcheck", *args]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & heavy_names)
sys.stderr.write("\\nRESULT " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["analyze", "--help"], ["--version"], ["analyze", "m.onnx", "-s", "1,x"]]
)
def test_cli_does_not_import_heavy_modules(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(proc.stderr.rsplit("RESULT ", 1)[1])
    assert result["heavy"] == [], f"lipcheck {' '.join(args)} imported {result['heavy']}"
    assert result["code"] in (0, 2, None)


def test_python_dash_m_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lipcheck", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "analyze" in proc.stdout
    assert proc.stderr == ""
