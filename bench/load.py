"""lipcheck on a busy machine: thread pools sized by lipcheck (:mod:`lipcheck.threads`) against the libraries'
defaults, idle and while other processes keep every core busy.

A benchmark, not a test. Four runs of ``lipcheck analyze MODEL --no-exact --no-lower-bound`` (one process each):

- new: the CLI as it is (threads from the CPUs the load average leaves free, ``OMP_WAIT_POLICY=PASSIVE``,
  onnxruntime without spinning);
- old: the same CLI with the thread sizing switched off (every pool at its default: one thread per core, spinning
  waits), i.e. lipcheck before :mod:`lipcheck.threads`;

each idle, then with ``--busy`` busy-loop processes (``python -c "while True: pass"``, each ending by itself after
``--busy-seconds`` and killed at the end). MODEL: ResNet-18 (bench/models.py, fixed seed) exported at
``1×3×SIZE×SIZE``. Every run has a ``--timeout``; a run that hits it is reported as ``> timeout``.

``python bench/load.py [--size 112] [--busy 6] [--timeout 300]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                    "LIPCHECK_THREADS")
# the CLI with lipcheck.threads switched off: what `lipcheck analyze` did before it
OLD_CLI = ("import sys\nimport lipcheck.cli.app as app\napp._limit_threads = lambda requested: None\n"
           "sys.argv[0] = 'lipcheck'\napp.main()\n")


def export_resnet18(size: int, out_dir: Path) -> Path:
    """ResNet-18 (bench/models.py weights) at 1×3×size×size, BatchNorm kept, as bench/models.py exports."""
    path = out_dir / f"resnet18_{size}.onnx"
    if path.exists():
        return path
    import models
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = models.build("resnet18")
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"], do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE, export_params=True,
        )
    os.replace(tmp, path)
    return path


def clean_environment() -> dict[str, str]:
    """This environment without the thread variables (OPENBLAS_CORETYPE and the like are kept)."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


def run(variant: str, model: Path, timeout: float) -> dict[str, Any]:
    """One ``analyze`` process: wall seconds, CPU seconds (user + sys), and the load average at its start."""
    args = ["analyze", str(model), "--no-exact", "--no-lower-bound", "--format", "json"]
    cmd = [sys.executable, "-m", "lipcheck", *args] if variant == "new" else [sys.executable, "-c", OLD_CLI, *args]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = start + timeout
    status = None
    usage = None
    while status is None:
        pid, status_, usage_ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = status_, usage_
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return {"variant": variant, "wall": None, "cpu": usage.ru_utime + usage.ru_stime, "load": load,
                    "timed_out": True}
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: exit {proc.returncode}: {stderr.strip()[-400:]}")
    assert usage is not None
    return {"variant": variant, "wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
            "load": load, "timed_out": False}


def start_busy(n: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def _s(x: float | None, timeout: float) -> str:
    return f"> {timeout:.0f}" if x is None else f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.1f}×"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=112, help="input height and width of the ResNet-18 (default 112)")
    ap.add_argument("--busy", type=int, default=6, help="busy-loop processes during the loaded runs (default 6)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is killed (default 300)")
    ap.add_argument("--out-dir", type=Path, default=HERE / ".models")
    args = ap.parse_args(argv)

    model = export_resnet18(args.size, args.out_dir)
    cpus = len(os.sched_getaffinity(0))
    print(f"model {model.name}; {cpus} CPUs ({platform.processor() or platform.machine()}); "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in ("new", "old"):
        results[("idle", variant)] = run(variant, model, args.timeout)
        print(f"idle   {variant}: {results[('idle', variant)]}", flush=True)
    busy = start_busy(args.busy, seconds=4 * args.timeout + 120)
    try:
        time.sleep(2.0)  # the loops are running
        for variant in ("new", "old"):
            results[("loaded", variant)] = run(variant, model, args.timeout)
            print(f"loaded {variant}: {results[('loaded', variant)]}", flush=True)
    finally:
        stop_busy(busy)

    print()
    print(f"| run | wall s idle | wall s with {args.busy} busy | loaded / idle | CPU s idle | CPU s loaded | "
          "load avg at start (idle / loaded) |")
    print("|---|---|---|---|---|---|---|")
    for variant in ("new", "old"):
        idle, loaded = results[("idle", variant)], results[("loaded", variant)]
        print(f"| {variant} | {_s(idle['wall'], args.timeout)} | {_s(loaded['wall'], args.timeout)} | "
              f"{_ratio(loaded['wall'], idle['wall'])} | {idle['cpu']:.1f} | {loaded['cpu']:.1f} | "
              f"{idle['load']:.1f} / {loaded['load']:.1f} |")
    new, old = results[("loaded", "new")], results[("loaded", "old")]
    print(f"\nloaded: old / new wall = {_ratio(old['wall'], new['wall'])}"
          + (" (old hit the timeout: at least this)" if old["timed_out"] else ""))
    fair = cpus / (args.busy + 1)  # the CPU share one more process gets among busy + 1 runnable ones
    print(f"fair share with {args.busy} busy loops on {cpus} CPUs: {fair:.2f} CPU, i.e. even a perfectly "
          f"single-threaded run takes ≈ {1 / fair:.1f}× its CPU time in wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
