"""Thread pools sized for a shared machine (:mod:`lipcheck.threads`): the choice (flag > LIPCHECK_THREADS > the
user's OMP_NUM_THREADS > the CPUs the load leaves free) and what applying it does, in a fresh process each time
(it changes the environment and torch's pools for good)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lipcheck import threads
from lipcheck.errors import UsageError
from lipcheck.threads import busy_cpus, choose_threads, onnxruntime_options

ROOT = Path(__file__).resolve().parents[1]


def test_high_load_leaves_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 6.0, 4.0))
    monkeypatch.setattr(threads, "_runnable_others", lambda: 7.0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert choose_threads(environ={}) == 1
    assert choose_threads(environ={}, cpus=2, load=8.0) == 1


@pytest.mark.parametrize(("cpus", "load", "expected"), [(2, 0.1, 2), (2, 0.6, 1), (2, 1.4, 1), (8, 2.6, 5),
                                                         (8, 0.0, 8), (4, 30.0, 1)])
def test_free_cpus(cpus: int, load: float, expected: int) -> None:
    assert choose_threads(environ={}, cpus=cpus, load=load) == expected


def test_load_is_scaled_to_the_cpus_we_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container pinned to 2 of 64 CPUs: the machine-wide load average of 32 is 1 busy CPU of our 2."""
    monkeypatch.setattr(os, "getloadavg", lambda: (32.0, 32.0, 32.0))
    monkeypatch.setattr(threads, "_runnable_others", lambda: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert busy_cpus(2) == pytest.approx(1.0)


@pytest.mark.parametrize(("load", "now", "expected"), [(1.0, 0.0, 2), (1.0, 1.0, 1), (0.2, 3.0, 2), (1.9, None, 1)])
def test_a_load_average_from_runs_that_ended_does_not_count(monkeypatch: pytest.MonkeyPatch, load: float,
                                                            now: float | None, expected: int) -> None:
    """The 1-minute load average still holds lipcheck's previous run for a minute: what is runnable now (Linux's
    /proc/loadavg, besides this process) caps it, so back-to-back runs keep both cores."""
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "_runnable_others", lambda: now)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert choose_threads(environ={}) == expected


def test_runnable_others_reads_proc_loadavg() -> None:
    value = threads._runnable_others(samples=1)
    if not Path("/proc/loadavg").exists():
        assert value is None
    else:
        assert value is not None and value >= 0.0


def test_flag_then_lipcheck_threads_then_omp_num_threads() -> None:
    high: dict[str, Any] = {"cpus": 2, "load": 8.0}
    assert choose_threads(3, environ={"LIPCHECK_THREADS": "2", "OMP_NUM_THREADS": "4"}, **high) == 3
    assert choose_threads(environ={"LIPCHECK_THREADS": "2", "OMP_NUM_THREADS": "4"}, **high) == 2
    assert choose_threads(environ={"OMP_NUM_THREADS": "4"}, **high) == 4
    assert choose_threads(environ={"OMP_NUM_THREADS": "3,2"}, **high) == 3  # one count per nesting level
    assert choose_threads(environ={"OMP_NUM_THREADS": "", "LIPCHECK_THREADS": " "}, **high) == 1
    assert choose_threads(environ={"OMP_NUM_THREADS": "lots"}, **high) == 1  # not ours to reject


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_lipcheck_threads(value: str) -> None:
    with pytest.raises(UsageError, match="LIPCHECK_THREADS"):
        choose_threads(environ={"LIPCHECK_THREADS": value})


def test_onnxruntime_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(threads, "_limit", None)
    assert onnxruntime_options(ort) is None  # the library keeps onnxruntime's defaults unless asked
    monkeypatch.setattr(threads, "_limit", 2)
    options = onnxruntime_options(ort)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


_APPLY = """
import json, os
from lipcheck.threads import limit_threads
limit_threads(1)
import torch
import lipcheck.norms.conv  # noqa: F401 - configures torch's pools on import
names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
print(json.dumps({"env": {n: os.environ.get(n) for n in names}, "torch": torch.get_num_threads(),
                  "interop": torch.get_num_interop_threads()}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
           and not k.startswith("LIPCHECK_")}
    return {**env, **extra}


def test_limit_keeps_what_the_user_set() -> None:
    env = _clean_env(OMP_NUM_THREADS="2", OMP_WAIT_POLICY="ACTIVE")
    proc = subprocess.run([sys.executable, "-c", _APPLY], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["env"] == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                             "OMP_WAIT_POLICY": "ACTIVE"}
    assert result["torch"] == 1 and result["interop"] == 1  # lipcheck's own pool follows the chosen count


@pytest.mark.slow  # three CLI subprocesses
def test_cli_threads_option() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lipcheck", "analyze", "sample_models/mlp.onnx", "--threads", "1", "--no-lower-bound",
         "--format", "json"],
        capture_output=True, text=True, env=_clean_env(), cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["certified"] is True
    bad = subprocess.run([sys.executable, "-m", "lipcheck", "analyze", "sample_models/mlp.onnx", "--threads", "0"],
                         capture_output=True, text=True, env=_clean_env(), cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--threads" in bad.stderr
