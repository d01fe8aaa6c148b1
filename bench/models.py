"""Benchmark models, built here with fixed seeds (no torchvision) and written to ONNX.

- ``resnet18`` / ``resnet50``: the torchvision architectures (BasicBlock [2, 2, 2, 2] / Bottleneck [3, 4, 6, 3],
  7×7 s2 stem, 3×3 s2 max pool, BatchNorm after every conv, global average pool, fc 1000) at 1×3×224×224.
- ``vgg16``: torchvision's configuration "D" (13 convs 3×3, 5 max pools) at 1×3×224×224 and its classifier
  25088 → 4096 → 4096 → 1000 (dropout is a no-op in eval mode and is left out).
- ``mlp``: 12 Linear layers 1024 → 1024 with ReLU between them, input 1×1024.
- ``big``: a chain of square Gemm layers whose float32 weights total ``--big-gb`` GiB (3 layers of 16384×16384,
  1 GiB each, by default), written as external data without ever holding more than a few MB of weights.

Weights: He-uniform U(±√(6/fan_in)) from ``numpy.random.default_rng(seed)``, biases U(±1/√fan_in); BatchNorm
with non-trivial statistics (γ ~ U(0.5, 1.5), β ~ N(0, 0.1), running mean ~ N(0, 0.1), running var ~
U(0.5, 2)). The torch models are exported with the TorchScript exporter (``dynamo=False``, opset 17) with
BatchNorm kept in the graph (``TrainingMode.PRESERVE`` on an eval-mode module, no constant folding), the way
lipcheck's own torch loader exports, so lipcheck's BatchNorm folding is part of what is timed.

``python bench/models.py [NAME ...] [--out-dir bench/.models] [--big-gb 3]`` writes them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / ".models"
TORCH_MODELS = ("resnet18", "resnet50", "vgg16", "mlp")
ALL_MODELS = (*TORCH_MODELS, "big")
SEEDS = {"resnet18": 18, "resnet50": 50, "vgg16": 16, "mlp": 12, "big": 7}
INPUT_SHAPES = {
    "resnet18": (1, 3, 224, 224),
    "resnet50": (1, 3, 224, 224),
    "vgg16": (1, 3, 224, 224),
    "mlp": (1, 1024),
}


# --------------------------------------------------------------------------------------------------------
# torch architectures


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _basic_block(nn, c_in: int, c_out: int, stride: int):  # type: ignore[no-untyped-def]
    class BasicBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):  # type: ignore[no-untyped-def]
            idt = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + idt)

    return BasicBlock()


def _bottleneck(nn, c_in: int, width: int, stride: int):  # type: ignore[no-untyped-def]
    c_out = 4 * width

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # torchvision v1.5: stride on the 3×3
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):  # type: ignore[no-untyped-def]
            idt = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + idt)

    return Bottleneck()


def resnet(depth: int):  # type: ignore[no-untyped-def]
    """torchvision's resnet18 / resnet50 architecture (1000 classes)."""
    _, nn = _torch()
    bottleneck = depth == 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    layers: list = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]
    c = 64
    for stage, (n_blocks, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        stage_blocks = []
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            if bottleneck:
                stage_blocks.append(_bottleneck(nn, c, width, stride))
                c = 4 * width
            else:
                stage_blocks.append(_basic_block(nn, c, width, stride))
                c = width
        layers.append(nn.Sequential(*stage_blocks))
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


def vgg16():  # type: ignore[no-untyped-def]
    """torchvision's vgg16 (configuration D, no BatchNorm) for 224×224 inputs."""
    _, nn = _torch()
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    layers: list = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
            c = int(v)
    # at 224×224 the features are already 7×7: torchvision's AdaptiveAvgPool2d((7, 7)) is the identity here
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def mlp(depth: int = 12, width: int = 1024):  # type: ignore[no-untyped-def]
    _, nn = _torch()
    layers: list = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_weights(model, seed: int) -> None:  # type: ignore[no-untyped-def]
    """He-uniform weights, small uniform biases and non-trivial BatchNorm statistics from one seeded rng."""
    torch, nn = _torch()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                fan_in = int(np.prod(w.shape[1:]))
                bound = math.sqrt(6.0 / fan_in)
                w.copy_(torch.from_numpy(rng.uniform(-bound, bound, tuple(w.shape)).astype(np.float32)))
                if module.bias is not None:
                    b = 1.0 / math.sqrt(fan_in)
                    module.bias.copy_(torch.from_numpy(rng.uniform(-b, b, tuple(module.bias.shape)).astype(np.float32)))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, c).astype(np.float32)))
                module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.1, c).astype(np.float32)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))


def build(name: str):  # type: ignore[no-untyped-def]
    """The eval-mode torch module ``name`` with its fixed-seed weights."""
    builders = {"resnet18": lambda: resnet(18), "resnet50": lambda: resnet(50), "vgg16": vgg16, "mlp": mlp}
    if name not in builders:
        raise ValueError(f"unknown torch model {name!r}; choose from {', '.join(builders)}")
    model = builders[name]()
    init_weights(model, SEEDS[name])
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# ONNX export


def model_path(name: str, out_dir: Path, big_gb: float = 3.0) -> Path:
    if name == "big":
        return out_dir / f"big_{big_gb:g}gb.onnx"
    return out_dir / f"{name}.onnx"


def export(name: str, out_dir: str | os.PathLike[str] = DEFAULT_OUT, *, big_gb: float = 3.0,
           force: bool = False) -> Path:
    """Write model ``name`` to ``out_dir`` as ONNX (skipped when the file exists, unless ``force``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = model_path(name, out, big_gb)
    if path.exists() and not force:
        return path
    if name == "big":
        return write_big_linear(path, big_gb)
    torch, _ = _torch()
    model = build(name)
    x = torch.zeros(INPUT_SHAPES[name])
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (x,), str(tmp), dynamo=False, opset_version=17, input_names=["input"], output_names=["output"],
            do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, export_params=True,
        )
    os.replace(tmp, path)
    return path


def big_layout(big_gb: float) -> tuple[int, int]:
    """(layers, width): square float32 Gemm layers totalling about ``big_gb`` GiB (width a multiple of 64)."""
    n_layers = max(2, round(big_gb))
    width = int(math.sqrt(big_gb * 2**30 / (4 * n_layers))) // 64 * 64
    return n_layers, max(64, width)


def write_big_linear(path: Path, big_gb: float = 3.0, seed: int = SEEDS["big"]) -> Path:
    """A Gemm → Relu → ... → Gemm chain with external data, written row block by row block.

    Each weight W (out, in) is stored once in ``<path>.data`` at a 4096-aligned offset; the TensorProto only
    carries the external_data fields (location, offset, length), so the writer never holds a whole weight.
    Entries are U(±√3/√width)·√2 (He-uniform scale), i.e. σ_max ≈ 2·√2 per layer.
    """
    import onnx
    from onnx import TensorProto, helper

    n_layers, width = big_layout(big_gb)
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    tmp_data = data_path.with_name(data_name + ".tmp")
    initializers = []
    nodes = []
    bound = math.sqrt(6.0 / width)
    rows_per_block = max(1, (16 << 20) // (4 * width))  # ~16 MB of float32 at a time
    offset = 0
    with open(tmp_data, "wb") as f:
        for layer in range(n_layers):
            pad = (-offset) % 4096
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            start = offset
            for r0 in range(0, width, rows_per_block):
                rows = min(rows_per_block, width - r0)
                block = rng.uniform(-bound, bound, (rows, width)).astype("<f4")
                f.write(block.tobytes())
                offset += block.nbytes
            w = TensorProto()
            w.name = f"fc{layer}.weight"
            w.data_type = TensorProto.FLOAT
            w.dims.extend([width, width])
            w.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(start)), ("length", str(offset - start))):
                entry = w.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(w)
            b = 1.0 / math.sqrt(width)
            initializers.append(helper.make_tensor(
                f"fc{layer}.bias", TensorProto.FLOAT, [width], rng.uniform(-b, b, width).astype(np.float32).tolist()))
            x_in = "input" if layer == 0 else f"relu{layer - 1}"
            y = "output" if layer == n_layers - 1 else f"fc{layer}"
            nodes.append(helper.make_node("Gemm", [x_in, f"fc{layer}.weight", f"fc{layer}.bias"], [y],
                                          name=f"/fc{layer}/Gemm", transB=1))
            if layer < n_layers - 1:
                nodes.append(helper.make_node("Relu", [y], [f"relu{layer}"], name=f"/relu{layer}/Relu"))
    graph = helper.make_graph(
        nodes, "big_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lipcheck-bench")
    model.ir_version = 8
    tmp_model = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp_model))  # no raw data in the proto: the weights stay in the .data file
    os.replace(tmp_data, data_path)
    os.replace(tmp_model, path)
    return path


def largest_tensor_bytes(path: Path) -> int:
    """Bytes of the largest initializer (external data included) without loading any data."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    best = 0
    for t in model.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        best = max(best, int(np.prod(t.dims, dtype=np.int64)) * itemsize)
    return best


def model_files_bytes(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(ALL_MODELS), help=f"models ({', '.join(ALL_MODELS)})")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    ap.add_argument("--big-gb", type=float, default=3.0, help="total GiB of the big linear model's weights")
    ap.add_argument("--force", action="store_true", help="rebuild even when the file exists")
    args = ap.parse_args(argv)
    for name in args.names:
        t0 = time.perf_counter()
        path = export(name, args.out_dir, big_gb=args.big_gb, force=args.force)
        mb = model_files_bytes(path) / 2**20
        print(f"{name}: {path} ({mb:,.0f} MiB, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
