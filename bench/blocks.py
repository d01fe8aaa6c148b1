"""Bench of the composition methods on convolutional models: product, auto and blocks bounds against a lower bound.

    python bench/blocks.py [--models a,b] [--lower-seconds 30] [--quick] [--out FILE.json]

Models (``--models``, default all; ``--quick``: the sample models only):
  cnn_bn, resnet_block, weight_norm, strided_dilated_depthwise, sn_discriminator   sample_models/<name>.onnx
  resnet18      bench/models.py's ResNet-18 at 1×3×224×224 (written to bench/.models/ once, reused)
  resnet18_32   the same network and weights at a CIFAR-size input 1×3×32×32, exported with bench/models.py's
                exporter settings (TorchScript, opset 17, BatchNorm kept) to bench/.models/resnet18_32.onnx
Each model is analysed three times through the Python API (``lipcheck.analyze``), each call timed wall-clock:
  - ``method="product"`` with the empirical lower bound (``lower_bound_seconds`` = --lower-seconds);
  - ``method="auto"`` and ``method="blocks"`` (explicit, the larger limits) without it.
The table gives each certified value over the lower bound; "improvement" is (product/lower) ÷ (best/lower), i.e.
product/best, and "halved?" says whether it is ≥ 2 (the best certified ratio at most half the product's). Every
certified value is checked to be ≥ the lower bound ("UNSOUND" is printed otherwise). Then, per model, the pieces
of the blocks method (first..last node, the method that bounded the piece, its value and its product factor).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before numpy / torch load: a shared machine

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import lipcheck  # noqa: E402
from models import DEFAULT_OUT, build, export  # noqa: E402

SAMPLES = ("cnn_bn", "resnet_block", "weight_norm", "strided_dilated_depthwise", "sn_discriminator")
BUILT = ("resnet18", "resnet18_32")
SMALL = 32  # resnet18_32's input side


def model_file(name: str) -> Path:
    """The ONNX file of ``name`` (building the ResNet-18 variants into bench/.models/ when missing)."""
    if name in SAMPLES:
        return ROOT / "sample_models" / f"{name}.onnx"
    if name == "resnet18":
        return export("resnet18", DEFAULT_OUT)
    if name != "resnet18_32":
        raise SystemExit(f"unknown model {name!r}: choose from {', '.join(SAMPLES + BUILT)}")
    path = DEFAULT_OUT / f"resnet18_{SMALL}.onnx"
    if path.exists():
        return path
    import torch

    DEFAULT_OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(  # bench/models.py's export settings, at another input size
            build("resnet18"), (torch.zeros(1, 3, SMALL, SMALL),), str(tmp), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"], do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE, export_params=True,
        )
    os.replace(tmp, path)
    return path


def timed(path: Path, method: str, lower_seconds: float | None) -> tuple[Any, float]:
    t0 = time.perf_counter()
    report = lipcheck.analyze(str(path), method=method, lower_bound=lower_seconds is not None,
                              lower_bound_seconds=lower_seconds or 0.0)
    return report, time.perf_counter() - t0


def bound_of(report: Any, method: str) -> Any:
    return next((b for b in report.bounds if b.method == method), None)


def run_model(name: str, lower_seconds: float) -> dict[str, Any]:
    path = model_file(name)
    row: dict[str, Any] = {"model": name, "path": str(path.relative_to(ROOT))}
    prod, row["product_s"] = timed(path, "product", lower_seconds)
    row["input"] = "×".join(str(d) for d in prod.inputs[0].shape)
    row["product"] = prod.upper_bound
    lb = prod.lower_bound
    row["lower"] = lb.value if lb is not None else None
    row["lower_note"] = lb.note if lb is not None else None
    auto, row["auto_s"] = timed(path, "auto", None)
    row["auto"], row["auto_method"] = auto.upper_bound, auto.method
    blk, row["blocks_s"] = timed(path, "blocks", None)
    b = bound_of(blk, "blocks")
    row["blocks"] = b.value if b is not None and b.certified else None
    row["blocks_method_s"] = b.seconds if b is not None else None
    row["blocks_reason"] = b.detail.get("reason") if b is not None else "no blocks result"
    row["pieces"] = list(b.detail.get("blocks", [])) if b is not None else []
    row["notes"] = [n for n in blk.notes if "blocks" in n]
    # soundness: every certified value of the three runs against the lower bound
    runs = {"product": prod, "auto": auto, "blocks": blk}
    row["unsound"] = [f"{run}:{bd.method}={bd.value!r}" for run, rep in runs.items() for bd in rep.bounds
                      if bd.certified and bd.value is not None and row["lower"] is not None and bd.value < row["lower"]]
    return row


def fmt(v: float | None, digits: int = 5) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(rows: list[dict[str, Any]]) -> None:
    print("\n| model | input | product (s) | auto (value, s) | blocks (value, s) | lower bound | product/lower "
          "| blocks/lower | improvement | halved? |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | | error: {r['error']} | | | | | | | |")
            continue
        certified = [v for v in (r["product"], r["auto"], r["blocks"]) if v is not None]
        best = min(certified) if certified else None
        imp = ratio(r["product"], best)
        r["best"], r["improvement"] = best, imp
        print(f"| {r['model']} | {r['input']} | {fmt(r['product'])} ({r['product_s']:.1f} s) "
              f"| {fmt(r['auto'])} ({r['auto_s']:.1f} s, {r['auto_method']}) "
              f"| {fmt(r['blocks'])} ({r['blocks_s']:.1f} s) | {fmt(r['lower'])} "
              f"| {fmt(ratio(r['product'], r['lower']), 4)} | {fmt(ratio(r['blocks'], r['lower']), 4)} | {fmt(imp, 4)} "
              f"| {'yes' if imp is not None and imp >= 2 else 'no'} |")
    for r in rows:
        if "error" in r:
            continue
        print(f"\n{r['model']}: blocks {fmt(r['blocks'])} (method {fmt(r['blocks_method_s'], 3)} s)"
              + (f", reason: {r['blocks_reason']}" if r["blocks"] is None else "")
              + "".join(f"\n  note: {n}" for n in r["notes"]))
        if r["pieces"]:
            print("| first .. last | nodes | method | value | product | s | note |\n|---|---:|---|---:|---:|---:|---|")
            for p in r["pieces"]:
                print(f"| {p['first']} .. {p['last']} | {p['nodes']} | {p['method']} | {fmt(p['value'])} "
                      f"| {fmt(p['product'])} | {p['seconds']:.2f} | {p.get('note', '')} |")
    print("\nsoundness (every certified value ≥ lower bound):")
    for r in rows:
        if "error" in r:
            continue
        if r["lower"] is None:
            print(f"  {r['model']}: no lower bound ({r['lower_note']})")
        elif r["unsound"]:
            print(f"  !!!!! UNSOUND !!!!! {r['model']}: below the lower bound {r['lower']!r}: "
                  + ", ".join(r["unsound"]))
        else:
            print(f"  {r['model']}: ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(SAMPLES + BUILT)}")
    parser.add_argument("--lower-seconds", type=float, default=30.0, help="lower-bound budget of the product run")
    parser.add_argument("--quick", action="store_true", help="the sample models only")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(SAMPLES if args.quick else SAMPLES + BUILT)
    if args.quick:
        names = [n for n in names if n in SAMPLES]
    for name in names:
        if name not in SAMPLES + BUILT:
            parser.error(f"unknown model {name!r}")
    rows = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            row = run_model(name, args.lower_seconds)
        except Exception as exc:  # a lipcheck failure on one model: report it, go on
            traceback.print_exc()
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        rows.append(row)
    render(rows)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 1 if any(r.get("unsound") or "error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
