"""lipcheck benchmark: stage times, peak memory and accuracy on large models, against reference methods.

    python bench/run.py [--models resnet50,resnet18,vgg16,mlp,big] [--quick] [--skip-references]
                        [--out-dir bench/.models] [--big-gb 3] [--lower-bound-seconds 5] [--render-only]

For each model (built by ``bench/models.py``, written to ONNX once and reused), lipcheck runs as a subprocess of
the unchanged CLI (``bench/_cli_timer.py`` only adds timers around the stages), twice:

A. ``analyze M --no-exact --lower-bound-seconds 5 --jobs 1 --format json``: load, power iteration, certified upper
   bound, then the lower bound (timed apart; the peak RSS at the end of the walk is what ``--no-lower-bound`` reaches);
B. ``analyze M --no-lower-bound --jobs 1 --format json``: the same with the exact values (walk B − walk A = exact
   stage). Both in one process, where the stage timers run; the CLI's default (``--jobs size``: workers for large
   models) is timed apart with the other CI features (``--jobs 1`` / ``2`` / default, ``--cache``).

Each run's peak RSS comes from ``os.wait4`` (that process alone). Then ``bench/references.py`` (another subprocess)
times the reference methods on the same conv layers: (a) reshaped-kernel power iteration as torch's
spectral_norm, (b) circular embedding + full SVD per frequency (Sedghi et al.), the tightest certified reference,
(c) scipy eigsh on the conv operator's Gram, the exact reference. The tables go to stdout and into
bench/README.md between the BENCH markers; raw results to ``<out-dir>/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from models import ALL_MODELS, DEFAULT_OUT, model_files_bytes, model_path  # noqa: E402

README = BENCH / "README.md"
START, END = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
CONV_MODELS = ("resnet18", "resnet50", "vgg16")
GB = 1e9

# targets of the issue
T_CONV_SECONDS, T_CONV_AIM = 15.0, 5.0
T_RSS_RESNET50 = 2 * GB
T_REL_TO_CIRCULAR = 1e-3
T_SPEEDUP = 10.0
T_EXACT_SECONDS = 60.0
T_BIG_EXTRA = 1 * GB
ENV = dict(os.environ)  # what every subprocess gets (--blas-threads sets OPENBLAS_NUM_THREADS in it)
T_LOWER_SLACK = 1.2  # the lower-bound stage may overrun its budget by 20 % (evaluator build, final checks)


# --------------------------------------------------------------------------------------------------------
# running things


def run_process(cmd: list[str], stdout: Path, stderr: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit code and the peak RSS of that process alone (os.wait4)."""
    t0 = time.time()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=str(ROOT), env=ENV)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() - t0 > timeout and not timed_out:
            timed_out = True
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return {"t_popen": t0, "wall": time.time() - t0, "rc": proc.returncode, "timed_out": timed_out,
            "peak_rss": usage.ru_maxrss * 1024, "cmd": cmd}


def run_cli(tag: str, model: Path, flags: list[str], work: Path, timeout: float) -> dict[str, Any]:
    timings = work / f"{tag}.timings.json"
    timings.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / "_cli_timer.py"), str(timings), "analyze", str(model), *flags,
           "--format", "json"]
    print(f"  [{tag}] lipcheck analyze {model.name} {' '.join(flags)}", file=sys.stderr, flush=True)
    res = run_process(cmd, work / f"{tag}.stdout.json", work / f"{tag}.stderr.txt", timeout)
    res["timings"] = json.loads(timings.read_text()) if timings.exists() else None
    try:
        res["report"] = json.loads((work / f"{tag}.stdout.json").read_text())
    except (OSError, ValueError):
        res["report"] = None
        res["stderr"] = (work / f"{tag}.stderr.txt").read_text(errors="replace")[-2000:]
    print(f"  [{tag}] rc {res['rc']} in {res['wall']:.1f} s, peak RSS {res['peak_rss'] / 2**20:,.0f} MiB",
          file=sys.stderr, flush=True)
    return res


def run_references(model: Path, work: Path, subset: str, timeout: float) -> dict[str, Any] | None:
    out = work / "references.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / "references.py"), str(model), str(out), "--layers", subset]
    print(f"  [refs] {subset} conv layers of {model.name}", file=sys.stderr, flush=True)
    res = run_process(cmd, work / "references.stdout.txt", work / "references.stderr.txt", timeout)
    if not out.exists():
        print(f"  [refs] failed (rc {res['rc']}): see {work / 'references.stderr.txt'}", file=sys.stderr)
        return None
    doc = json.loads(out.read_text())
    doc.update(rc=res["rc"], wall=res["wall"], timed_out=res["timed_out"], peak_rss=res["peak_rss"])
    return doc


def _largest_tensor_bytes(path: Path) -> int:
    """models.largest_tensor_bytes in a subprocess (an inline model's proto would grow this process; see below)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from models import largest_tensor_bytes; print(largest_tensor_bytes(Path(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(BENCH), str(path)], check=True, capture_output=True,
                         text=True, env=ENV)
    return int(out.stdout.strip())


def build_model(name: str, out_dir: Path, big_gb: float) -> Path:
    """Write the model in a subprocess of its own: a child's peak RSS (os.wait4, getrusage) starts from its parent's
    size at fork, so this process must never grow by building a model (the first full run had mlp and big at
    2.57 GB from a parent that had exported VGG-16)."""
    path = model_path(name, out_dir, big_gb)
    if not path.exists():
        subprocess.run([sys.executable, str(BENCH / "models.py"), name, "--out-dir", str(out_dir), "--big-gb",
                        f"{big_gb:g}"], check=True, cwd=str(ROOT), env=ENV)
    return path


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out_dir)
    t0 = time.perf_counter()
    print(f"== {name}", file=sys.stderr, flush=True)
    path = Path(name) if name.endswith(".onnx") else build_model(name, out_dir, args.big_gb)
    build_seconds = time.perf_counter() - t0
    work = out_dir / "runs" / path.stem
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "model": name, "path": str(path), "file_bytes": model_files_bytes(path),
        "largest_tensor_bytes": _largest_tensor_bytes(path), "build_seconds": build_seconds,
        "big_gb": args.big_gb if name == "big" else None,
    }
    with_lower = name != "big" or args.big_lower_bound
    lower = ["--lower-bound-seconds", f"{args.lower_bound_seconds:g}"] if with_lower else ["--no-lower-bound"]
    # one process (--jobs 1): the stage timers run in it (the CLI's default, --jobs size, would bound a large
    # model's layers in workers, out of their sight; it is timed apart below as "default")
    res["A"] = run_cli("A", path, ["--no-exact", *lower, "--jobs", "1"], work, args.timeout)
    res["B"] = run_cli("B", path, ["--no-lower-bound", "--jobs", "1"], work, args.timeout)
    res["lower_bound_seconds"] = args.lower_bound_seconds if with_lower else None
    if name != "big" and not args.skip_ci_runs:
        # the CI features: --jobs 2 on the same work as A without the lower bound, then --cache cold and warm
        fast = ["--no-exact", "--no-lower-bound"]
        res["J1"] = run_cli("J1", path, [*fast, "--jobs", "1"], work, args.timeout)
        res["J2"] = run_cli("J2", path, [*fast, "--jobs", "2"], work, args.timeout)
        res["D"] = run_cli("D", path, fast, work, args.timeout)  # the default, --jobs size
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        res["C_cold"] = run_cli("C_cold", path, [*fast, "--jobs", "1", "--cache", str(cache)], work, args.timeout)
        res["C_warm"] = run_cli("C_warm", path, [*fast, "--jobs", "1", "--cache", str(cache)], work, args.timeout)
    if (name in CONV_MODELS or name.endswith(".onnx")) and not args.skip_references:
        quick = args.quick == "all" or name in args.quick.split(",")
        res["refs"] = run_references(path, work, "quick" if quick else "all", args.ref_timeout)
    return res


# --------------------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict[str, Any]:
    import numpy
    import scipy
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "lipcheck").splitlines()]
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu, "ram_bytes": mem, "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "numpy": numpy.__version__, "scipy": scipy.__version__,
        "commit": git("rev-parse", "--short", "HEAD").strip(), "dirty": dirty,
        "openblas_threads": ENV.get("OPENBLAS_NUM_THREADS", "default"), "load_avg": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------------------------------------
# numbers


def _ev(run: dict[str, Any] | None, key: str) -> float | None:
    t = (run or {}).get("timings") or {}
    return (t.get("events") or {}).get(key)


def walk_seconds(run: dict[str, Any] | None) -> float | None:
    a, b = _ev(run, "walk_start"), _ev(run, "walk_end")
    return None if a is None or b is None else b - a


def load_seconds(run: dict[str, Any] | None) -> float | None:
    a = _ev(run, "walk_start")
    return None if a is None or run is None else a - run["t_popen"]


def lower_stage_seconds(run: dict[str, Any] | None) -> float | None:
    a, b = _ev(run, "lower_start"), _ev(run, "lower_end")
    return None if a is None or b is None else b - a


def stage(run: dict[str, Any] | None, key: str) -> float:
    t = (run or {}).get("timings") or {}
    return float((t.get("stages") or {}).get(key, 0.0))


def node_seconds(run: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    t = (run or {}).get("timings") or {}
    return {n["name"]: n for n in t.get("nodes", [])}


def layers_of(run: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    rep = (run or {}).get("report") or {}
    return {layer["name"]: layer for layer in rep.get("layers", [])}


def rel(x: float | None, ref: float | None) -> float | None:
    if x is None or ref is None or ref == 0:
        return None
    return (x - ref) / ref


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_rel(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    return f"{x:+.1e}"


def fmt_gap(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 100:.2g} %" if abs(x) >= 1e-3 else f"{x:.1e}"


def fmt_x(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}×" if x < 100 else f"{x:.0f}×"


def fmt_mem(b: float | None) -> str:
    if b is None:
        return "–"
    return f"{b / GB:.2f} GB" if b >= 0.1 * GB else f"{b / 1e6:.1f} MB"


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def conv_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per conv layer with references: lipcheck's values and times next to the references'."""
    refs = res.get("refs") or {}
    la, lb = layers_of(res.get("A")), layers_of(res.get("B"))
    ta, tb = node_seconds(res.get("A")), node_seconds(res.get("B"))
    rows = []
    for r in refs.get("records", []):
        name = r["name"]
        a_layer, b_layer = la.get(name, {}), lb.get(name, {})
        exact_c = (r.get("c") or {}).get("value")
        lip_exact = b_layer.get("sigma_exact")
        exact = exact_c if exact_c is not None else lip_exact
        upper, power = a_layer.get("sigma_upper"), a_layer.get("sigma_power")
        circ = (r.get("b") or {}).get("value")
        row = {
            "name": name, "geom": r, "exact": exact, "exact_is_ref": exact_c is not None,
            "upper": upper, "upper_method": a_layer.get("upper_method"), "power": power,
            "upper_vs_b": rel(upper, circ), "upper_gap": rel(upper, exact),
            "power_gap": None if exact is None or power is None else (exact - power) / exact,
            "lip_exact_vs_c": rel(lip_exact, exact_c), "a_vs_exact": rel((r.get("a") or {}).get("value"), exact),
            "b_gap": rel(circ, exact), "reshaped": a_layer.get("sigma_reshaped"),
            "t_lip": (ta.get(name) or {}).get("seconds"), "t_lip_exact": (tb.get(name) or {}).get("seconds"),
            "t_cert": ((ta.get(name) or {}).get("parts") or {}).get("upper"),
            "t_a": (r.get("a") or {}).get("seconds"), "t_b": (r.get("b") or {}).get("seconds"),
            "t_c": (r.get("c") or {}).get("seconds"), "b_stride_as_1": (r.get("b") or {}).get("stride_as_1"),
        }
        row["x_b"] = div(row["t_b"], row["t_lip"])
        row["x_c"] = div(row["t_c"], row["t_lip_exact"])
        rows.append(row)
    return rows


def geom_text(g: dict[str, Any]) -> str:
    k = "×".join(str(v) for v in g["kernel"])
    s = "" if g["strides"] == [1, 1] else f" s{g['strides'][0]}"
    return f"{g['c_out']}×{g['c_in']}×{k}{s} @{g['input'][0]}"


def model_summary(res: dict[str, Any]) -> dict[str, Any]:
    a, b = res.get("A"), res.get("B")
    walk_a, walk_b = walk_seconds(a), walk_seconds(b)
    ta = node_seconds(a)
    conv_a = sum(n["seconds"] for n in ta.values() if n.get("op") in ("Conv", "ConvTranspose"))
    rep_b = (b or {}).get("report") or {}
    layers_b = rep_b.get("layers", [])
    rep_a = (a or {}).get("report") or {}
    timings_a = (a or {}).get("timings") or {}
    return {
        "load": load_seconds(a), "walk_a": walk_a, "walk_b": walk_b, "conv_a": conv_a,
        "power": stage(a, "power"), "upper": stage(a, "upper"), "reshaped": stage(a, "reshaped"),
        "exact_in_a": stage(a, "exact"),
        "other_a": None if walk_a is None else walk_a - sum(stage(a, k) for k in ("power", "upper", "reshaped",
                                                                                      "exact")),
        "exact_stage": None if walk_a is None or walk_b is None else walk_b - walk_a,
        "exact_done": sum(1 for layer in layers_b if layer.get("sigma_exact") is not None),
        "layers": len(layers_b), "lower_stage": lower_stage_seconds(a), "lower": rep_a.get("lower_bound_details"),
        "lower_value": rep_a.get("lower_bound"), "upper_bound": rep_a.get("upper_bound"),
        "rss_load": (timings_a.get("rss_after_load_kb") or 0) * 1024 or None,
        "rss_walk": (timings_a.get("rss_after_walk_kb") or 0) * 1024 or None,
        "rss_a": (a or {}).get("peak_rss"), "rss_b": (b or {}).get("peak_rss"),
        "t_no_lower": None if _ev(a, "walk_end") is None else _ev(a, "walk_end") - a["t_popen"],  # type: ignore[index]
        "wall_a": (a or {}).get("wall"), "wall_b": (b or {}).get("wall"),
        "failed": [t for t in ("A", "B") if res.get(t) and res[t]["rc"] != 0],
    }


# --------------------------------------------------------------------------------------------------------
# tables


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Run {m['date']} on {m['nproc']} cores ({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM; Python "
        f"{m['python']}, torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, scipy {m['scipy']} "
        f"(OpenBLAS threads: {m.get('openblas_threads', '?')}); load average {m.get('load_avg', 0):.1f} at the "
        "start; "
        f"lipcheck at {m['commit'] or '?'}"
        + (f" with uncommitted changes in {', '.join(m['dirty'])}" if m["dirty"] else "") + ".",
        f"Command: `{results['command']}`.",
    ]
    for name, res in results["models"].items():
        ran = res.get("ran")
        if ran and ran.get("machine"):
            em = ran["machine"]
            lines.append(f"{name}: kept from the run of {em['date']} (lipcheck at {em['commit'] or '?'}; "
                         f"`{ran.get('command')}`).")
    lines.append("")
    models = results["models"]

    # ---- stages
    lines += ["### Stages (lipcheck CLI, one process per run)", ""]
    rows = []
    for name, res in models.items():
        s = model_summary(res)
        lb = s["lower"] or {}
        lower = "skipped"
        if res.get("lower_bound_seconds"):
            lower = (f"{fmt_s(s['lower_stage'])} (budget {res['lower_bound_seconds']:g}; "
                     f"{lb.get('jacobian_samples', '?')} Jacobians, {lb.get('ascent_steps', '?')} ascent steps, "
                     f"{'completed' if lb.get('completed') else 'cut by budget'})")
        rows.append([
            name, f"{fmt_mem(res['file_bytes'])} / {fmt_mem(res['largest_tensor_bytes'])}",
            fmt_s(s["load"]), fmt_s(s["power"]), fmt_s(s["upper"]), fmt_s(s["reshaped"]), fmt_s(s["exact_in_a"]),
            fmt_s(s["other_a"]), fmt_s(s["walk_a"]), fmt_s(s["conv_a"]),
            f"{fmt_s(s['exact_stage'])} ({s['exact_done']}/{s['layers']})",
            lower,
            f"{fmt_mem(s['rss_load'])} / {fmt_mem(s['rss_walk'])} / {fmt_mem(s['rss_a'])} / {fmt_mem(s['rss_b'])}",
            f"{fmt_s(s['t_no_lower'])} / {fmt_s(s['wall_a'])} / {fmt_s(s['wall_b'])}"
            + (f" (failed: {', '.join(s['failed'])})" if s["failed"] else ""),
        ])
    lines += md_table(
        ["model", "files / largest tensor", "load s", "power s", "certified s", "σ reshaped s", "Lanczos in A s",
         "other s", "walk A s", "convs in A s", "exact stage s (layers with exact)", "lower bound s",
         "peak RSS: load / walk A / A / B", "time to walk end A / wall A / wall B s"], rows)
    lines += [
        "",
        "A = `analyze --no-exact --lower-bound-seconds N` (`--no-lower-bound` for big), B = `analyze "
        "--no-lower-bound` (with exact). load = process start to the walk (imports, ONNX load, shape inference, "
        "BN folding). power / certified / σ reshaped / Lanczos: self time during A in the functions of "
        "lipcheck.norms.conv / .matrix whose names say so (`*power*`; `*_bound`, `*_certificate`, `*circular*`; "
        "`reshaped_kernel_norm`, `_reshaped_sigma`; `*lanczos*`, which A runs for matrix layers although "
        "`--no-exact`); other = the "
        "rest of the walk (operator set-up, 1×1 convs' SVD, rules). walk A = all per-layer bounds in A; "
        "convs in A = the Conv nodes' share. exact stage = walk B − walk A. lower bound = "
        "wall time of the whole lower-bound stage in A. Peak RSS per process (os.wait4); load / walk A = the peak "
        "when the walk starts / ends (walk A = what `--no-exact --no-lower-bound` needs). time to walk end A = "
        "process start to the end of the walk (what `--no-exact --no-lower-bound` takes, minus printing).",
        "",
    ]

    # ---- convs vs references
    for name, res in models.items():
        refs = res.get("refs")
        if not refs:
            continue
        rows_c = conv_rows(res)
        subset = refs.get("subset")
        broken = (f" — the reference run stopped early (exit code {refs.get('rc')}"
                  + (", timed out" if refs.get("timed_out") else "") + ")") if refs.get("rc") else ""
        lines += [f"### {name}: conv layers against the references "
                  f"({len(rows_c)} of {refs.get('conv_layers')} convs"
                  + (", quick subset: the first conv of each (input size, kernel, stride)" if subset == "quick"
                     else "") + ")" + broken, ""]
        table = []
        for r in rows_c:
            table.append([
                f"`{r['name']}`", geom_text(r["geom"]), f"{r['exact']:.6g}" + ("" if r["exact_is_ref"] else "*")
                if r["exact"] is not None else "–",
                fmt_rel(r["upper_vs_b"]) + (" ˢ" if r["b_stride_as_1"] else ""),
                fmt_gap(r["upper_gap"]) + f" {r['upper_method'] or ''}", fmt_gap(r["power_gap"]),
                fmt_rel(r["lip_exact_vs_c"]), fmt_gap(r["a_vs_exact"]), fmt_gap(r["b_gap"]),
                fmt_s(r["t_lip"]), fmt_s(r["t_b"]), fmt_x(r["x_b"]), fmt_s(r["t_lip_exact"]), fmt_s(r["t_c"]),
                fmt_x(r["x_c"]), fmt_s(r["t_a"]),
            ])
        tot = {k: sum(r[k] or 0.0 for r in rows_c) for k in ("t_lip", "t_b", "t_lip_exact", "t_c", "t_a")}
        table.append(["**total**", "", "", "", "", "", "", "", "", fmt_s(tot["t_lip"]), fmt_s(tot["t_b"]),
                      fmt_x(div(tot["t_b"], tot["t_lip"])), fmt_s(tot["t_lip_exact"]), fmt_s(tot["t_c"]),
                      fmt_x(div(tot["t_c"], tot["t_lip_exact"])), fmt_s(tot["t_a"])])
        lines += md_table(
            ["layer", "C_out×C_in×k×k @n", "σ exact", "certified vs (b)", "certified gap", "power gap",
             "lipcheck exact vs (c)", "(a) vs exact", "(b) gap", "lipcheck s", "(b) s", "(b)/lipcheck",
             "lipcheck+exact s", "(c) s", "(c)/lipcheck+exact", "(a) s"], table)
        lines += [""]
    if any(m.get("refs") for m in models.values()):
        lines += [
            "σ exact: (c) eigsh on the Gram operator (tol 1e-8); * = lipcheck's own sigma_exact where (c) did not run. "
            "certified vs (b): (σ_upper − (b)) / (b), negative = lipcheck's certificate is tighter than the circular "
            "reference; ˢ = strided conv, (b) taken at stride 1 (still an upper bound, looser than lipcheck's "
            "polyphase bound). certified gap: (σ_upper − exact) / exact for the zero-padded operator, then the "
            "winning method. power gap: (exact − σ_power) / exact. (a) vs exact: torch spectral_norm's reshaped "
            "value relative to the operator's exact norm (a different quantity). (b) gap: (b) over exact. lipcheck s:"
            " the layer's whole row in run A (power + certified + σ reshaped); lipcheck+exact s: the row in run B. "
            "Ratios: reference time / lipcheck time.",
            "",
        ]

    # ---- matrix layers
    mat_rows = []
    for name, res in models.items():
        la, lb = layers_of(res.get("A")), layers_of(res.get("B"))
        ta, tb = node_seconds(res.get("A")), node_seconds(res.get("B"))
        for lname, layer in la.items():
            if layer["op"] not in ("Gemm", "MatMul"):
                continue
            exact = (lb.get(lname) or {}).get("sigma_exact")
            mat_rows.append([
                name, f"`{lname}`", "×".join(str(v) for v in (layer["input_shape"][-1], layer["output_shape"][-1])),
                f"{exact:.6g}" if exact is not None else "–",
                fmt_gap(rel(layer["sigma_upper"], exact)) + f" {layer['upper_method']}",
                fmt_gap(None if exact is None else (exact - layer["sigma_power"]) / exact),
                str(layer.get("power_iterations")), fmt_s((ta.get(lname) or {}).get("seconds")),
                fmt_s((tb.get(lname) or {}).get("seconds")),
            ])
    if mat_rows:
        lines += ["### Matrix layers (Gemm / MatMul)", ""]
        lines += md_table(["model", "layer", "in×out", "σ exact (lipcheck)", "certified gap", "power gap",
                           "power iterations", "A s", "B s"], mat_rows)
        lines += [""]

    lines += ["### Targets", ""] + targets(results) + [""]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    models = results["models"]
    out: list[str] = []

    def line(ok: bool | None, text: str) -> None:
        mark = "not measured" if ok is None else "**met**" if ok else "**missed**"
        out.append(f"- {mark}: {text}")

    r50 = models.get("resnet50")
    if r50:
        s = model_summary(r50)
        conv = s["conv_a"]
        line(conv <= T_CONV_SECONDS if s["walk_a"] is not None else None,
             f"ResNet-50, power + certified for every conv ≤ {T_CONV_SECONDS:g} s (aim {T_CONV_AIM:g}): "
             f"{fmt_s(conv)} s in the convs ({fmt_s(s['walk_a'])} s for all layers; process start to the end of "
             f"the walk {fmt_s(s['t_no_lower'])} s, of which load {fmt_s(s['load'])} s)")
        peak = max(v for v in (s["rss_walk"], s["rss_b"], 0) if v is not None)
        line(peak <= T_RSS_RESNET50 if peak else None,
             f"ResNet-50 `analyze --no-lower-bound` peak RSS ≤ 2 GB: {fmt_mem(s['rss_b'])} with exact, "
             f"{fmt_mem(s['rss_walk'])} without (with the lower bound: {fmt_mem(s['rss_a'])})")
        rows = conv_rows(r50)
        with_b = [r for r in rows if r["upper_vs_b"] is not None]
        scope = f"{len(with_b)} of {(r50.get('refs') or {}).get('conv_layers', '?')} convs" + (
            " (quick subset)" if (r50.get("refs") or {}).get("subset") == "quick" else "")
        if with_b:
            above = [r for r in with_b if r["upper_vs_b"] > T_REL_TO_CIRCULAR]
            worst = max(with_b, key=lambda r: r["upper_vs_b"])
            tighter = sum(1 for r in with_b if r["upper_vs_b"] < -T_REL_TO_CIRCULAR)
            line(not above, f"ResNet-50 certified σ not more than 1e-3 (relative) above the circular reference (b) "
                 f"on {scope}: worst {fmt_rel(worst['upper_vs_b'])} (`{worst['name']}`), {len(above)} above, "
                 f"{tighter} tighter by more than 1e-3 (strided convs: polyphase vs (b) at stride 1; 1×1: exact SVD)")
            t_lip = sum(r["t_lip"] or 0 for r in with_b)
            t_b = sum(r["t_b"] or 0 for r in with_b)
            ratios = [r["x_b"] for r in with_b if r["x_b"] is not None]
            slow = min(with_b, key=lambda r: r["x_b"] if r["x_b"] is not None else math.inf)
            kxk = [r for r in with_b if r["geom"]["kernel"] != [1, 1]]
            kxk_ratio = div(sum(r["t_b"] or 0 for r in kxk), sum(r["t_lip"] or 0 for r in kxk))
            t_cert = sum(r["t_cert"] or 0 for r in kxk)
            t_b_kxk = sum(r["t_b"] or 0 for r in kxk)
            cert_ratio = div(t_b_kxk, t_cert)
            line(cert_ratio is not None and cert_ratio >= T_SPEEDUP,
                 f"ResNet-50 certified σ ≥ {T_SPEEDUP:g}× faster than (b), the same quantity computed by (b)'s "
                 f"method: lipcheck's certified stage on the {len(kxk)} k×k convs {fmt_s(t_cert)} s vs (b) "
                 f"{fmt_s(t_b_kxk)} s = {fmt_x(cert_ratio)} (1×1 convs, where lipcheck needs one SVD and (b) one per "
                 "frequency, left out: they would flatter the ratio)")
            out.append(f"- whole rows (power estimate + certified + σ reshaped) vs (b): {fmt_x(div(t_b, t_lip))} "
                 f"in total on {scope} "
                 f"({fmt_s(t_b)} s vs {fmt_s(t_lip)} s for power + certified), {fmt_x(kxk_ratio)} on the "
                 f"{len(kxk)} k×k convs alone (on a 1×1 conv every frequency of (b) has the same matrix); per layer "
                 "from "
                 f"{fmt_x(min(ratios) if ratios else None)} (`{slow['name']}`) to "
                 f"{fmt_x(max(ratios) if ratios else None)}")
            gaps = [r["upper_gap"] for r in with_b if r["upper_gap"] is not None]
            gaps_k = [r["upper_gap"] for r in kxk if r["upper_gap"] is not None]
            if gaps:
                out.append(f"- certified-over-exact gap of the zero-padded operator on {scope}: median "
                           f"{fmt_gap(sorted(gaps)[len(gaps) // 2])}, max {fmt_gap(max(gaps))}; on the k×k convs "
                           f"median {fmt_gap(sorted(gaps_k)[len(gaps_k) // 2] if gaps_k else None)}, max "
                           f"{fmt_gap(max(gaps_k) if gaps_k else None)} (per layer in the table above)")
        else:
            line(None, "ResNet-50 certified σ vs the circular reference (b) and the speed-up (references skipped)")
        ex = s["exact_stage"]
        line(None if ex is None else ex <= T_EXACT_SECONDS and s["exact_done"] == s["layers"],
             f"ResNet-50 exact σ for every layer ≤ {T_EXACT_SECONDS:g} s: exact stage {fmt_s(ex)} s (= walk B − walk "
             f"A; walk B {fmt_s(s['walk_b'])} s, of which {fmt_s(stage(r50.get('B'), 'exact'))} s in Lanczos), "
             f"{s['exact_done']}/{s['layers']} layers have sigma_exact")
    else:
        line(None, "ResNet-50 targets (resnet50 not in this run)")

    big = models.get("big")
    if big:
        s = model_summary(big)
        largest = big["largest_tensor_bytes"]
        peak = max(v for v in (s["rss_walk"], s["rss_b"], 0) if v is not None)
        line(peak <= largest + T_BIG_EXTRA if peak else None,
             f"large model ({big['file_bytes'] / GB:.2f} GB of weights, largest tensor {largest / GB:.2f} GB): "
             f"peak RSS "
             f"≤ largest + 1 GB = {fmt_mem(largest + T_BIG_EXTRA)}: {fmt_mem(s['rss_walk'])} without exact, "
             f"{fmt_mem(s['rss_b'])} with exact (after load: {fmt_mem(s['rss_load'])}); "
             f"{fmt_s(s['t_no_lower'])} s / {fmt_s(s['wall_b'])} s")
    else:
        line(None, "large external-data model (big not in this run)")

    ci_parts = []
    for name, res in models.items():
        if not res.get("J1"):
            continue
        walls = {k: (res.get(k) or {}).get("wall") for k in ("J1", "J2", "D", "C_cold", "C_warm")}
        rss = (res.get("D") or {}).get("peak_rss")
        note = ((res.get("C_warm") or {}).get("report") or {}).get("notes", [])
        cached = next((n for n in note if "cache" in n), "")
        default = (f"; the default (`--jobs size`) {fmt_s(walls['D'])} s, peak RSS {fmt_mem(rss)}"
                   if walls["D"] is not None else "")
        ci_parts.append(f"{name}: `--jobs 2` {fmt_s(walls['J2'])} s vs `--jobs 1` {fmt_s(walls['J1'])} s "
                        f"({fmt_x(div(walls['J1'], walls['J2']))}){default}; "
                        f"`--cache` cold {fmt_s(walls['C_cold'])} s, "
                        f"warm {fmt_s(walls['C_warm'])} s ({cached or 'no cache note'})")
    out.append("- CI features (whole `analyze --no-exact --no-lower-bound` commands, not targets of their own): "
               + ("; ".join(ci_parts) or "not run"))

    lb_parts = []
    lb_ok: bool | None = None
    for name, res in models.items():
        if not res.get("lower_bound_seconds"):
            continue
        s = model_summary(res)
        d = s["lower"] or {}
        budget = res["lower_bound_seconds"]
        ok = (s["lower_stage"] is not None and s["lower_stage"] <= T_LOWER_SLACK * budget
              and bool(d.get("completed") or d.get("note")))
        lb_ok = ok if lb_ok is None else lb_ok and ok
        lb_parts.append(f"{name} {fmt_s(s['lower_stage'])} s (search {fmt_s(d.get('seconds'))} s)"
                        + ("" if ok else " ✗"))
    line(lb_ok, f"lower bound within the user's budget (stage wall ≤ {T_LOWER_SLACK:g} × budget) and says how far it "
         "got (`completed`, `note`): " + ("; ".join(lb_parts) or "no lower-bound run"))
    return out


def write_readme(text: str) -> None:
    body = README.read_text() if README.exists() else f"# lipcheck benchmark\n\n{START}\n{END}\n"
    if START not in body or END not in body:
        body = body.rstrip() + f"\n\n## Latest results\n\n{START}\n{END}\n"
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text.rstrip()}\n{END}{tail}")


# --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(("resnet50", "resnet18", "vgg16", "mlp", "big")),
                    help=f"comma-separated, from {', '.join(ALL_MODELS)}")
    ap.add_argument("--quick", nargs="?", const="all", default="",
                    help="references on one conv per kind only: for every model, or for the comma-separated models "
                         "given (e.g. --quick vgg16,resnet18)")
    ap.add_argument("--skip-references", action="store_true")
    ap.add_argument("--skip-ci-runs", action="store_true", help="no --jobs 2 / --cache runs")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT), help="models, per-run outputs and results.json")
    ap.add_argument("--big-gb", type=float, default=3.0, help="GiB of weights in the large external-data model")
    ap.add_argument("--big-lower-bound", action="store_true",
                    help="also run the lower bound on the large model (a float64 evaluator: ~3× its size in RAM)")
    ap.add_argument("--lower-bound-seconds", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="per lipcheck run, seconds")
    ap.add_argument("--ref-timeout", type=float, default=7200.0, help="per model for the references, seconds")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OPENBLAS_NUM_THREADS for lipcheck and the references (numpy / scipy only; torch keeps its "
                         "threads). 1 by default: on a busy 2-core machine OpenBLAS threads spin and small batched "
                         "SVDs / matmuls get 10-100x slower. 0 = leave the environment as it is")
    ap.add_argument("--render-only", action="store_true", help="re-render <out-dir>/results.json, run nothing")
    ap.add_argument("--merge", action="store_true",
                    help="keep the models not named in --models from the previous results.json")
    ap.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.blas_threads > 0:
        ENV["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    results_path = out_dir / "results.json"
    if args.render_only:
        results = json.loads(results_path.read_text())
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in ALL_MODELS and not (n.endswith(".onnx") and Path(n).exists())]
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ALL_MODELS)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        results = {"machine": machine_info(), "command": command, "models": {}}
        if args.merge and results_path.exists():
            # re-run some models, keep the others' results from the earlier run (each says when it ran)
            earlier = json.loads(results_path.read_text())
            for name, res in earlier.get("models", {}).items():
                if name not in names:
                    res.setdefault("ran", {"machine": earlier.get("machine"), "command": earlier.get("command")})
                    results["models"][name] = res
        for name in names:
            results["models"][name] = bench_model(name, args)
            results_path.write_text(json.dumps(results, indent=1))
    text = render(results)
    print(text)
    if not args.no_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
