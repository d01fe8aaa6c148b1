"""A differentiable torch evaluator of lipcheck's graph IR, with ONNX semantics.

The empirical lower bound (:mod:`lipcheck.bound.lower`) needs ``f(x)`` and its Jacobian products for any
model the loaders produce; this module runs a :class:`~lipcheck.ir.graph.Graph` with torch ops so that
autograd (``torch.func.jvp`` / ``vjp``) works on it.

- Float inputs are passed positionally in the order of ``graph.float_inputs``.
- Integer / bool inputs of the graph are held FIXED at zeros (index 0 is valid for any Gather / Embedding)
  unless the caller passes other values in ``fixed_inputs``. A Lipschitz constant is then the one of the
  function of the float inputs with the integer inputs held at those values.
- Every float tensor is computed in ``dtype`` (float64 by default): float constants are cast once, at
  construction; ``Cast`` to a float type (float16, bfloat16, float32, double) keeps ``dtype`` (no rounding to
  the narrower type). Integer constants become int64, bool constants bool.
- Each op is a small module-level function ``(node, inputs, ctx) -> tensor | tuple of tensors`` in ONE table,
  :data:`OPS` (see the bottom of the file); ops with attribute values this evaluator does not implement are
  refused by a check in :data:`LIMITS`. Semantics follow the ONNX spec; where the spec and onnxruntime differ
  (ConvTranspose ``output_shape`` padding split, pool ``ceil_mode`` windows, nearest rounding in Resize-10 /
  Upsample) onnxruntime is followed, because the lower bound is only reported when the evaluator agrees with
  onnxruntime on the model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from lipcheck.errors import LipcheckError
from lipcheck.ir.graph import Graph, Node, TensorInfo
from lipcheck.threads import configure_torch

configure_torch()  # the thread count the CLI chose (lipcheck.threads), if any

Tensor = torch.Tensor

__all__ = [
    "LIMITS",
    "OPS",
    "EvaluationError",
    "TorchEvaluator",
    "UnsupportedOpError",
    "is_float_info",
    "supported_ops",
    "unsupported_nodes",
    "unsupported_reason",
]


class UnsupportedOpError(LipcheckError):
    """The graph has a node the torch evaluator cannot run (unknown op, domain or attribute value)."""

    def __init__(self, node: Node, reason: str, opset: int = 0) -> None:
        self.node = node
        self.reason = reason
        super().__init__(
            f"node {node.label}{f' (opset {opset})' if opset else ''}: {reason}; "
            "the torch evaluator supports "
            f"{len(OPS)} ONNX ops (lipcheck.bound.torch_eval.supported_ops())"
        )


class EvaluationError(LipcheckError):
    """A supported node failed at run time (bad shapes, inputs the evaluator cannot handle...)."""

    def __init__(self, node: Node, message: str) -> None:
        self.node = node
        super().__init__(f"while evaluating node {node.label}: {message}")


@dataclass(frozen=True)
class EvalContext:
    """What an op function may read besides its inputs: the graph (static shapes, opset), the float dtype."""

    graph: Graph
    dtype: torch.dtype

    @property
    def opset(self) -> int:
        return self.graph.opset


OpOutput = Tensor | tuple[Tensor, ...]
OpFn = Callable[[Node, list[Tensor | None], EvalContext], OpOutput]


# ----------------------------------------------------------------------------------------------------
# helpers


def _opt(x: Sequence[Tensor | None], i: int) -> Tensor | None:
    """The i-th input, or None when it is omitted ("" in the node) or absent."""
    return x[i] if i < len(x) else None


def _req(x: Sequence[Tensor | None], i: int) -> Tensor:
    t = _opt(x, i)
    if t is None:
        raise ValueError(f"required input #{i} is missing")
    return t


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.detach().reshape(-1).tolist()]


def _floats(t: Tensor | None) -> list[float]:
    return [] if t is None else [float(v) for v in t.detach().reshape(-1).tolist()]


def _scalar(t: Tensor) -> float:
    return float(t.detach().reshape(-1)[0].item())


def _attr_ints(node: Node, key: str, default: Sequence[int] | None = None) -> list[int] | None:
    v = node.attr(key)
    if v is None:
        return None if default is None else list(default)
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _attr_str(node: Node, key: str, default: str) -> str:
    v = node.attr(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _torch_pad(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX-style per-dim (begins, ends) -> F.pad's list, which starts at the LAST dim."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out += [int(b), int(e)]
    return out


def _pad_dims(t: Tensor, first_dim: int, begins: Sequence[int], ends: Sequence[int],
              value: float = 0.0) -> Tensor:
    """Constant-pad dims first_dim.. (negative values crop)."""
    if not any(begins) and not any(ends):
        return t
    return F.pad(t, _torch_pad(begins, ends), mode="constant", value=value)


def _split_pads(pads: Sequence[int], n: int) -> tuple[list[int], list[int]]:
    return list(pads[:n]), list(pads[n : 2 * n])


def _same_pads(auto_pad: str, in_sp: Sequence[int], k: Sequence[int], s: Sequence[int],
               d: Sequence[int]) -> tuple[list[int], list[int]]:
    """auto_pad SAME_UPPER / SAME_LOWER: output = ceil(in / stride); the odd padding element goes at the end
    (UPPER) or at the start (LOWER)."""
    begins, ends = [], []
    for i, ki, si, di in zip(in_sp, k, s, d, strict=True):
        out = -(-i // si)
        total = max(0, (out - 1) * si + (ki - 1) * di + 1 - i)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins, ends


def _conv_like_pads(node: Node, in_sp: Sequence[int], k: Sequence[int], s: Sequence[int],
                    d: Sequence[int]) -> tuple[list[int], list[int]]:
    n = len(in_sp)
    auto_pad = _attr_str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(auto_pad, in_sp, k, s, d)
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    return _split_pads(_attr_ints(node, "pads", [0] * (2 * n)) or [0] * (2 * n), n)


def _index_along(t: Tensor, axis: int, idx: Sequence[int] | np.ndarray) -> Tensor:
    return t.index_select(axis, torch.as_tensor(np.asarray(idx, dtype=np.int64), device=t.device))


def _bcast_along(w: np.ndarray, axis: int, rank: int, like: Tensor) -> Tensor:
    """A 1-D weight vector shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = len(w)
    return torch.as_tensor(w, dtype=like.dtype, device=like.device).reshape(shape)


# ----------------------------------------------------------------------------------------------------
# linear layers and normalizations


def conv(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """ONNX Conv, 1-D to 3-D. Asymmetric pads are applied with F.pad, then an unpadded conv."""
    X, W, B = _req(x, 0), _req(x, 1), _opt(x, 2)
    n = X.dim() - 2
    k = list(W.shape[2:])
    s = _attr_ints(node, "strides", [1] * n) or [1] * n
    d = _attr_ints(node, "dilations", [1] * n) or [1] * n
    group = int(node.attr("group", 1))
    begins, ends = _conv_like_pads(node, X.shape[2:], k, s, d)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if begins == ends and min(begins, default=0) >= 0:
        return fn(X, W, B, s, begins, d, group)  # type: ignore[operator]
    return fn(_pad_dims(X, 2, begins, ends), W, B, s, 0, d, group)  # type: ignore[operator]


def conv_transpose(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """ONNX ConvTranspose: the unpadded transposed conv, then output_padding (zeros at the end), then the pads
    are cropped, then the bias. With ``output_shape`` (or auto_pad SAME_*) the total padding is split as the
    spec and onnxruntime do: the odd element is cropped at the end for SAME_UPPER, at the start otherwise."""
    X, W, B = _req(x, 0), _req(x, 1), _opt(x, 2)
    n = X.dim() - 2
    in_sp = list(X.shape[2:])
    k = list(W.shape[2:])
    s = _attr_ints(node, "strides", [1] * n) or [1] * n
    d = _attr_ints(node, "dilations", [1] * n) or [1] * n
    op = _attr_ints(node, "output_padding", [0] * n) or [0] * n
    group = int(node.attr("group", 1))
    auto_pad = _attr_str(node, "auto_pad", "NOTSET")
    full = [si * (i - 1) + (ki - 1) * di + 1 for i, ki, si, di in zip(in_sp, k, s, d, strict=True)]
    out_shape = _attr_ints(node, "output_shape")
    if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = out_shape[-n:] if out_shape else [i * si for i, si in zip(in_sp, s, strict=True)]
        begins, ends = [], []
        for f, o, t in zip(full, op, target, strict=True):
            total = max(0, f + o - t)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(head)
            ends.append(total - head)
    elif auto_pad == "VALID":
        begins, ends = [0] * n, [0] * n
    else:
        begins, ends = _split_pads(_attr_ints(node, "pads", [0] * (2 * n)) or [0] * (2 * n), n)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(X, W, None, s, 0, 0, group, d)  # type: ignore[operator]
    y = _pad_dims(y, 2, [-b for b in begins], [o - e for o, e in zip(op, ends, strict=True)])
    if B is not None:
        y = y + B.reshape([1, -1] + [1] * n)
    return y


def gemm(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    A, Bm, C = _req(x, 0), _req(x, 1), _opt(x, 2)
    if int(node.attr("transA", 0)):
        A = A.transpose(0, 1)
    if int(node.attr("transB", 0)):
        Bm = Bm.transpose(0, 1)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    y = A @ Bm if alpha == 1.0 else alpha * (A @ Bm)
    if C is not None:
        y = y + (C if beta == 1.0 else beta * C)
    return y


def matmul(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return torch.matmul(_req(x, 0), _req(x, 1))


def batch_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """Inference mode: (x - mean) / sqrt(var + eps) * scale + B, per channel (dim 1)."""
    X, scale, B, mean, var = (_req(x, i) for i in range(5))
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    shape = [1, -1] + [1] * (X.dim() - 2)
    inv = torch.rsqrt(var + eps) * scale
    return (X - mean.reshape(shape)) * inv.reshape(shape) + B.reshape(shape)


def instance_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, scale, B = _req(x, 0), _req(x, 1), _req(x, 2)
    return F.instance_norm(X, weight=scale, bias=B, eps=float(node.attr("epsilon", np.float32(1e-5))))


def layer_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    """Normalize over dims axis..end; outputs Y, Mean, InvStdDev."""
    X, scale, B = _req(x, 0), _req(x, 1), _opt(x, 2)
    axis = _axis(int(node.attr("axis", -1)), X.dim())
    dims = tuple(range(axis, X.dim()))
    mean = X.mean(dims, keepdim=True)
    centered = X - mean
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    inv_std = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    y = centered * inv_std * scale
    if B is not None:
        y = y + B
    return y, mean, inv_std


def group_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """Opset 21 (scale/bias per channel) and opset 18 (per group) forms, told apart by the scale's size."""
    X, scale, B = _req(x, 0), _req(x, 1), _req(x, 2)
    g = int(node.attr("num_groups"))
    N, C = X.shape[0], X.shape[1]
    xg = X.reshape(N, g, -1)
    mean = xg.mean(-1, keepdim=True)
    centered = xg - mean
    inv_std = torch.rsqrt((centered * centered).mean(-1, keepdim=True) + float(node.attr("epsilon", np.float32(1e-5))))
    y = (centered * inv_std).reshape(X.shape)
    if scale.numel() != C:
        scale, B = scale.repeat_interleave(C // g), B.repeat_interleave(C // g)
    shape = [1, C] + [1] * (X.dim() - 2)
    return y * scale.reshape(shape) + B.reshape(shape)


def rms_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, scale = _req(x, 0), _req(x, 1)
    axis = _axis(int(node.attr("axis", -1)), X.dim())
    dims = tuple(range(axis, X.dim()))
    ms = (X * X).mean(dims, keepdim=True)
    return X * torch.rsqrt(ms + float(node.attr("epsilon", np.float32(1e-5)))) * scale


def lp_normalization(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    p = int(node.attr("p", 2))
    return X / torch.linalg.vector_norm(X, ord=p, dim=int(node.attr("axis", -1)), keepdim=True)


# ----------------------------------------------------------------------------------------------------
# element-wise


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        return fn(_req(x, 0))

    return op


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        return fn(_req(x, 0), _req(x, 1))

    return op


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        return functools.reduce(fn, [t for t in x if t is not None])

    return op


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def mean(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    ts = [t for t in x if t is not None]
    return functools.reduce(torch.add, ts) / len(ts)


def _attr_unary(fn: Callable[[Tensor, Node], Tensor]) -> OpFn:
    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        return fn(_req(x, 0), node)

    return op


def _selu(X: Tensor, node: Node) -> Tensor:
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    # expm1 of min(x, 0): the branch not taken never produces inf * 0 = NaN gradients
    return gamma * (torch.relu(X) + alpha * torch.expm1(torch.clamp(X, max=0.0)))


def prelu(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, slope = _req(x, 0), _req(x, 1)
    return torch.where(X < 0, X * slope, X)


def clip(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """Clip: min/max from inputs (opset >= 11) or attributes (opset < 11)."""
    X = _req(x, 0)
    lo, hi = _opt(x, 1), _opt(x, 2)
    lo_v = _scalar(lo) if lo is not None else node.attr("min")
    hi_v = _scalar(hi) if hi is not None else node.attr("max")
    if lo_v is None and hi_v is None:
        return X
    return torch.clamp(X, min=lo_v, max=hi_v)


def _softmax_family(fn: Callable[[Tensor, int], Tensor]) -> OpFn:
    """Softmax / LogSoftmax: opset >= 13 along ``axis`` (default -1); opset < 13 on the 2-D flattening at
    ``axis`` (default 1)."""

    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        X = _req(x, 0)
        if 0 < ctx.opset < 13:
            axis = _axis(int(node.attr("axis", 1)), X.dim())
            lead = int(np.prod(X.shape[:axis], dtype=np.int64))
            return fn(X.reshape(lead, -1), 1).reshape(X.shape)
        return fn(X, int(node.attr("axis", -1)))

    return op


def cast(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return _cast_to(_req(x, 0), int(node.attr("to")), ctx)


def cast_like(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, like = _req(x, 0), _req(x, 1)
    if like.is_floating_point():
        return X.to(ctx.dtype)
    return X.to(like.dtype)


# TensorProto element types: FLOAT, FLOAT16, DOUBLE, BFLOAT16 stay in the evaluator's dtype.
_FLOAT_TYPES = {1, 10, 11, 16}
_BOOL_TYPE = 9


def _cast_to(X: Tensor, to: int, ctx: EvalContext) -> Tensor:
    if to in _FLOAT_TYPES:
        return X.to(ctx.dtype)
    if to == _BOOL_TYPE:
        return X != 0
    return X.to(torch.int64)  # integer types: truncation toward zero (no wrap-around)


def where(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return torch.where(_req(x, 0).bool(), _req(x, 1), _req(x, 2))


def einsum(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return torch.einsum(_attr_str(node, "equation", "").replace(" ", ""), *[t for t in x if t is not None])


# ----------------------------------------------------------------------------------------------------
# pooling


def _pool_window(node: Node, in_sp: Sequence[int], k: Sequence[int], s: Sequence[int], d: Sequence[int]
                 ) -> tuple[list[int], list[int], list[int]]:
    """(begins, explicit ends, ends actually needed): the ends make the number of windows onnxruntime's
    (a ceil_mode window must start inside the input or the left padding)."""
    n = len(in_sp)
    begins, ends = _conv_like_pads(node, in_sp, k, s, d)
    ceil_mode = int(node.attr("ceil_mode", 0))
    needed: list[int] = []
    for i in range(n):
        eff = (k[i] - 1) * d[i] + 1
        span = in_sp[i] + begins[i] + ends[i] - eff
        out = (-(-span // s[i]) if ceil_mode else span // s[i]) + 1
        if ceil_mode and (out - 1) * s[i] >= in_sp[i] + begins[i]:
            out -= 1
        needed.append((out - 1) * s[i] + eff - in_sp[i] - begins[i])
    return begins, ends, needed


def _pool_params(node: Node, X: Tensor) -> tuple[list[int], list[int], list[int]]:
    n = X.dim() - 2
    k = _attr_ints(node, "kernel_shape") or []
    s = _attr_ints(node, "strides", [1] * n) or [1] * n
    d = _attr_ints(node, "dilations", [1] * n) or [1] * n
    return k, s, d


def max_pool(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    n = X.dim() - 2
    k, s, d = _pool_params(node, X)
    begins, _, needed = _pool_window(node, X.shape[2:], k, s, d)
    Xp = _pad_dims(X, 2, begins, needed, value=-math.inf)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return fn(Xp, k, s, 0, d)  # type: ignore[operator]


def _window_sum(t: Tensor, k: Sequence[int], s: Sequence[int], d: Sequence[int]) -> Tensor:
    n = t.dim() - 2
    if all(di == 1 for di in d):
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return fn(t, list(k), list(s), 0) * float(np.prod(k))  # type: ignore[operator]
    N, C = t.shape[0], t.shape[1]
    ones = torch.ones([1, 1, *k], dtype=t.dtype, device=t.device)
    conv_fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    y = conv_fn(t.reshape(N * C, 1, *t.shape[2:]), ones, None, s, 0, d)  # type: ignore[operator]
    return y.reshape(N, C, *y.shape[2:])


def average_pool(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """Window sums divided by the number of counted elements: the input's, plus the explicit pads when
    count_include_pad=1 (never the extra ceil_mode region)."""
    X = _req(x, 0)
    n = X.dim() - 2
    k, s, d = _pool_params(node, X)
    begins, ends, needed = _pool_window(node, X.shape[2:], k, s, d)
    sums = _window_sum(_pad_dims(X, 2, begins, needed), k, s, d)
    mask = torch.ones([1, 1, *X.shape[2:]], dtype=X.dtype, device=X.device)
    include = float(int(node.attr("count_include_pad", 0)))
    mask = _pad_dims(mask, 2, begins, ends, value=include)
    mask = _pad_dims(mask, 2, [0] * n, [nd - e for nd, e in zip(needed, ends, strict=True)], value=0.0)
    counts = _window_sum(mask, k, s, d)
    return sums / counts


def global_average_pool(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    return X.mean(tuple(range(2, X.dim())), keepdim=True)


def global_max_pool(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    return X.amax(tuple(range(2, X.dim())), keepdim=True)


# ----------------------------------------------------------------------------------------------------
# structural


def _pad_index(mode: str, length: int, begin: int, end: int) -> np.ndarray:
    """Source indices of a reflect / edge / wrap padded (or, for negative pads, cropped) axis."""
    i = np.arange(-begin, length + end)
    if mode == "edge":
        return np.clip(i, 0, length - 1)
    if mode == "wrap":
        return np.mod(i, length)
    if length == 1:
        return np.zeros_like(i)
    period = 2 * (length - 1)
    j = np.mod(i, period)
    return np.where(j >= length, period - j, j)


def pad(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    r = X.dim()
    mode = _attr_str(node, "mode", "constant")
    pads = _ints(x[1]) if _opt(x, 1) is not None else (_attr_ints(node, "pads") or [0] * (2 * r))
    cval_t = _opt(x, 2)
    cval = _scalar(cval_t) if cval_t is not None and cval_t.numel() else float(node.attr("value", 0.0))
    axes_t = _opt(x, 3)
    axes = [_axis(a, r) for a in _ints(axes_t)] if axes_t is not None else list(range(r))
    begins, ends = [0] * r, [0] * r
    for j, a in enumerate(axes):
        begins[a], ends[a] = pads[j], pads[j + len(axes)]
    if mode == "constant":
        return _pad_dims(X, 0, begins, ends, value=cval)
    for a in range(r):
        if begins[a] or ends[a]:
            X = _index_along(X, a, _pad_index(mode, X.shape[a], begins[a], ends[a]))
    return X


def reshape(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    shape = _ints(x[1])
    if not int(node.attr("allowzero", 0)):
        shape = [X.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return X.reshape(shape)


def flatten(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    axis = _axis(int(node.attr("axis", 1)), X.dim())
    lead = int(np.prod(X.shape[:axis], dtype=np.int64))
    return X.reshape(lead, int(np.prod(X.shape[axis:], dtype=np.int64)))


def transpose(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    perm = _attr_ints(node, "perm") or list(reversed(range(X.dim())))
    return X.permute(perm)


def _axes_from(node: Node, x: list[Tensor | None], i: int) -> list[int] | None:
    """Axes from input i (newer opsets) or from the ``axes`` attribute (older ones); None when absent."""
    t = _opt(x, i)
    if t is not None:
        return _ints(t)
    return _attr_ints(node, "axes")


def squeeze(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    axes = _axes_from(node, x, 1)
    if axes is None:
        drop = {i for i, v in enumerate(X.shape) if v == 1}
    else:
        drop = {_axis(a, X.dim()) for a in axes}
    return X.reshape([v for i, v in enumerate(X.shape) if i not in drop])


def unsqueeze(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    axes = _axes_from(node, x, 1) or []
    rank = X.dim() + len(axes)
    shape = list(X.shape)
    for a in sorted(_axis(a, rank) for a in axes):
        shape.insert(a, 1)
    return X.reshape(shape)


def concat(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    ts = [t for t in x if t is not None]
    return torch.cat(ts, dim=_axis(int(node.attr("axis")), ts[0].dim()))


def _clip(z: Tensor, clip: Any) -> Tensor:
    """The LSTM's cell clip: applied to every gate activation's input (peephole terms included)."""
    return z if clip is None else torch.clamp(z, -float(clip), float(clip))


def lstm(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    """ONNX LSTM (gates i, o, f, c; B = [Wb, Rb]; peepholes P = [i, o, f]; forward / reverse / bidirectional;
    layout 0 or 1; default activations only, see _limit_lstm): (Y, Y_h, Y_c). sequence_lens is not applied
    (_limit_lstm refuses a value shorter than the sequence)."""
    X, W, R = _req(x, 0), _req(x, 1), _req(x, 2)
    Bias, h0, c0, P = _opt(x, 3), _opt(x, 5), _opt(x, 6), _opt(x, 7)
    layout = int(node.attr("layout", 0))
    if layout == 1:  # [batch, seq, input] -> [seq, batch, input]
        X = X.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    steps, batch = X.shape[0], X.shape[1]
    dirs, hidden = W.shape[0], R.shape[2]
    clip = node.attr("clip")
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        b = Bias[d, :4 * hidden] + Bias[d, 4 * hidden:] if Bias is not None else 0.0
        p = P[d] if P is not None else None
        h = h0[d] if h0 is not None else X.new_zeros((batch, hidden))
        c = c0[d] if c0 is not None else X.new_zeros((batch, hidden))
        out: list[Tensor] = [X.new_zeros(0)] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            z = X[t] @ W[d].T + h @ R[d].T + b
            zi, zo, zf, zc = torch.split(z, hidden, dim=-1)
            if p is not None:
                zi, zf = zi + p[:hidden] * c, zf + p[2 * hidden:] * c
            i, f, g = torch.sigmoid(_clip(zi, clip)), torch.sigmoid(_clip(zf, clip)), torch.tanh(_clip(zc, clip))
            c = f * c + i * g
            if p is not None:
                zo = zo + p[hidden:2 * hidden] * c
            h = torch.sigmoid(_clip(zo, clip)) * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out))  # [seq, batch, hidden]
        hs.append(h)
        cs.append(c)
    y, y_h, y_c = torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)  # [seq, dirs, batch, hidden], [dirs, ...]
    if layout == 1:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c)[:len(node.outputs)]


def _seq_first(node: Node, X: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if int(node.attr("layout", 0)) == 1:
        return X.transpose(0, 1), (h0.transpose(0, 1) if h0 is not None else None)
    return X, h0


def _seq_outputs(node: Node, ys: list[Tensor], hs: list[Tensor]) -> OpOutput:
    y, y_h = torch.stack(ys, dim=1), torch.stack(hs)  # [seq, dirs, batch, hidden], [dirs, batch, hidden]
    if int(node.attr("layout", 0)) == 1:
        y, y_h = y.permute(2, 0, 1, 3), y_h.transpose(0, 1)
    return (y, y_h)[:len(node.outputs)]


def _reversed(node: Node, d: int) -> bool:
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    return direction == "reverse" or (direction == "bidirectional" and d == 1)


def gru(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    """ONNX GRU (gates z, r, h; B = [Wb, Rb]; linear_before_reset 0 / 1; default Sigmoid, Tanh; clip)."""
    X, h0 = _seq_first(node, _req(x, 0), _opt(x, 5))
    W, R, Bias = _req(x, 1), _req(x, 2), _opt(x, 3)
    steps, batch, hidden = X.shape[0], X.shape[1], R.shape[2]
    clip, lbr = node.attr("clip"), int(node.attr("linear_before_reset", 0))
    ys, hs = [], []
    for d in range(W.shape[0]):
        wb = Bias[d, :3 * hidden] if Bias is not None else X.new_zeros(3 * hidden)
        rb = Bias[d, 3 * hidden:] if Bias is not None else X.new_zeros(3 * hidden)
        h = h0[d] if h0 is not None else X.new_zeros((batch, hidden))
        out: list[Tensor] = [X.new_zeros(0)] * steps
        for t in (range(steps - 1, -1, -1) if _reversed(node, d) else range(steps)):
            wx = X[t] @ W[d].T + wb
            rz, rr, rh = torch.split(R[d], hidden, dim=0)
            z = torch.sigmoid(_clip(wx[:, :hidden] + h @ rz.T + rb[:hidden], clip))
            r = torch.sigmoid(_clip(wx[:, hidden:2 * hidden] + h @ rr.T + rb[hidden:2 * hidden], clip))
            if lbr:
                pre = wx[:, 2 * hidden:] + r * (h @ rh.T + rb[2 * hidden:])
            else:
                pre = wx[:, 2 * hidden:] + (r * h) @ rh.T + rb[2 * hidden:]
            h = (1 - z) * torch.tanh(_clip(pre, clip)) + z * h
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
    return _seq_outputs(node, ys, hs)


_RNN_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def rnn(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    """ONNX RNN (Tanh / Relu / Sigmoid per direction; B = [Wb, Rb]; clip)."""
    X, h0 = _seq_first(node, _req(x, 0), _opt(x, 5))
    W, R, Bias = _req(x, 1), _req(x, 2), _opt(x, 3)
    steps, batch, hidden = X.shape[0], X.shape[1], R.shape[2]
    acts = node.attr("activations") or ["Tanh"]
    ys, hs = [], []
    for d in range(W.shape[0]):
        name = acts[d] if d < len(acts) else acts[0]
        f = _RNN_ACTIVATIONS[(name.decode() if isinstance(name, bytes) else str(name)).lower()]
        b = Bias[d, :hidden] + Bias[d, hidden:] if Bias is not None else 0.0
        h = h0[d] if h0 is not None else X.new_zeros((batch, hidden))
        out: list[Tensor] = [X.new_zeros(0)] * steps
        for t in (range(steps - 1, -1, -1) if _reversed(node, d) else range(steps)):
            h = f(_clip(X[t] @ W[d].T + h @ R[d].T + b, node.attr("clip")))
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
    return _seq_outputs(node, ys, hs)


def split(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    X = _req(x, 0)
    axis = _axis(int(node.attr("axis", 0)), X.dim())
    sizes = _ints(x[1]) if _opt(x, 1) is not None else _attr_ints(node, "split")
    if sizes:
        return tuple(torch.split(X, sizes, dim=axis))
    parts = int(node.attr("num_outputs", len(node.outputs)))
    return tuple(torch.split(X, -(-X.shape[axis] // parts), dim=axis))


def slice_(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    """Slice with ONNX clamping; negative steps go through index_select."""
    X = _req(x, 0)
    if _opt(x, 1) is not None:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if _opt(x, 3) is not None else list(range(len(starts)))
        steps = _ints(x[4]) if _opt(x, 4) is not None else [1] * len(starts)
    else:  # opset < 10: attributes
        starts, ends = _attr_ints(node, "starts") or [], _attr_ints(node, "ends") or []
        axes = _attr_ints(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis = _axis(axis, X.dim())
        dim = X.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            X = X[(slice(None),) * axis + (slice(start, end, step),)]
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            X = _index_along(X, axis, np.arange(start, end, step))
    return X


def gather(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, idx = _req(x, 0), _req(x, 1).long()
    axis = _axis(int(node.attr("axis", 0)), X.dim())
    dim = X.shape[axis]
    idx = torch.where(idx < 0, idx + dim, idx)
    y = X.index_select(axis, idx.reshape(-1))
    return y.reshape(tuple(X.shape[:axis]) + tuple(idx.shape) + tuple(X.shape[axis + 1 :]))


def gather_elements(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X, idx = _req(x, 0), _req(x, 1).long()
    axis = _axis(int(node.attr("axis", 0)), X.dim())
    idx = torch.where(idx < 0, idx + X.shape[axis], idx)
    return torch.gather(X, axis, idx)


def identity(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return _req(x, 0)


def dropout(node: Node, x: list[Tensor | None], ctx: EvalContext) -> OpOutput:
    """Inference: the identity (and an all-true mask)."""
    X = _req(x, 0)
    return X, torch.ones(X.shape, dtype=torch.bool)


def expand(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    shape = np.broadcast_shapes(tuple(X.shape), tuple(_ints(x[1])))
    return torch.broadcast_to(X, shape)


def tile(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return _req(x, 0).repeat(*_ints(x[1]))


def depth_to_space(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    b = int(node.attr("blocksize"))
    N, C, H, W = X.shape
    if _attr_str(node, "mode", "DCR") == "CRD":
        y = X.reshape(N, C // (b * b), b, b, H, W).permute(0, 1, 4, 2, 5, 3)
    else:
        y = X.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(N, C // (b * b), H * b, W * b)


def space_to_depth(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    b = int(node.attr("blocksize"))
    N, C, H, W = X.shape
    y = X.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(N, C * b * b, H // b, W // b)


def shape(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    start, end = node.attr("start", 0), node.attr("end")
    return torch.tensor(list(X.shape)[slice(start, end)], dtype=torch.int64)


def size(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    return torch.tensor(_req(x, 0).numel(), dtype=torch.int64)


def constant_of_shape(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    value = np.asarray(node.attr("value", np.zeros(1, dtype=np.float32)))
    t = _constant_tensor(value, ctx.dtype)
    return t.reshape(-1)[0].expand(_ints(x[0])).clone()


def cum_sum(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    axis = _axis(_ints(x[1])[0], X.dim())
    if int(node.attr("reverse", 0)):
        X = X.flip(axis)
    y = torch.cumsum(X, axis)
    if int(node.attr("exclusive", 0)):
        y = y - X
    return y.flip(axis) if int(node.attr("reverse", 0)) else y


# ----------------------------------------------------------------------------------------------------
# Resize / Upsample: separable, one axis at a time, with onnxruntime's float32 coordinate arithmetic

_F32 = np.float32


def _source_coords(ctm: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """x_original for every output index, per ``coordinate_transformation_mode`` (in float32, like
    onnxruntime)."""
    xr = np.arange(out_len, dtype=_F32)
    sc = _F32(scale)
    if ctm == "asymmetric":
        return xr / sc
    if ctm == "align_corners":
        if out_len == 1:
            return np.zeros(1, dtype=_F32)
        return xr * _F32(in_len - 1) / _F32(out_len - 1)
    if ctm == "pytorch_half_pixel":
        if out_len == 1:
            return np.zeros(1, dtype=_F32)
        return (xr + _F32(0.5)) / sc - _F32(0.5)
    if ctm == "half_pixel_symmetric":
        adjustment = _F32(out_len) / (sc * _F32(in_len))
        center = _F32(in_len) / _F32(2)
        offset = center * (_F32(1) - adjustment)
        return offset + (xr + _F32(0.5)) / sc - _F32(0.5)
    return (xr + _F32(0.5)) / sc - _F32(0.5)  # half_pixel (the default)


def _nearest_index(coords: np.ndarray, mode: str, in_len: int, scale: float) -> np.ndarray:
    if mode == "floor":
        idx = np.floor(coords)
    elif mode == "ceil":
        idx = np.ceil(coords)
    elif mode == "simple":  # Resize-10 / Upsample in onnxruntime
        idx = np.ceil(coords) if scale < 1 else np.trunc(coords)
    else:
        frac = coords - np.floor(coords)
        tie = np.floor(coords) if mode == "round_prefer_floor" else np.ceil(coords)
        idx = np.where(frac == _F32(0.5), tie, np.round(coords))
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution weights for the taps at offsets -1, 0, 1, 2 (t = fractional part)."""
    t = t.astype(np.float64)
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    w3 = ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a
    return np.stack([w0, w1, w2, w3], axis=1)


def _resize_axis(X: Tensor, axis: int, out_len: int, scale: float, mode: str, ctm: str, nearest_mode: str,
                 cubic_a: float, exclude_outside: bool) -> Tensor:
    in_len = X.shape[axis]
    coords = _source_coords(ctm, out_len, in_len, scale)
    if mode == "nearest":
        return _index_along(X, axis, _nearest_index(coords, nearest_mode, in_len, scale))
    if mode == "linear":
        c = np.clip(coords, 0, in_len - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), in_len - 1)
        i1 = np.minimum(i0 + 1, in_len - 1)
        w1 = (c - i0).astype(np.float64)
        return (_index_along(X, axis, i0) * _bcast_along(1.0 - w1, axis, X.dim(), X)
                + _index_along(X, axis, i1) * _bcast_along(w1, axis, X.dim(), X))
    # cubic
    base = np.floor(coords).astype(np.int64)
    w = _cubic_weights(coords - base, cubic_a)
    taps = base[:, None] + np.arange(-1, 3)[None, :]
    if exclude_outside:
        w = np.where((taps >= 0) & (taps < in_len), w, 0.0)
        w = w / w.sum(axis=1, keepdims=True)
    taps = np.clip(taps, 0, in_len - 1)
    y = None
    for j in range(4):
        term = _index_along(X, axis, taps[:, j]) * _bcast_along(w[:, j], axis, X.dim(), X)
        y = term if y is None else y + term
    assert y is not None
    return y


def resize(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
    X = _req(x, 0)
    r = X.dim()
    mode = _attr_str(node, "mode", "nearest")
    if node.op_type == "Upsample" or ctx.opset == 10:
        scales_t = _opt(x, 1)
        scales = _floats(scales_t) if scales_t is not None else [float(v) for v in node.attr("scales", [])]
        sizes: list[int] = []
        ctm, nearest_mode = "asymmetric", "simple"
        mode = "linear" if mode == "bilinear" else mode
    else:
        scales, sizes = _floats(_opt(x, 2)), _ints(_opt(x, 3))
        ctm = _attr_str(node, "coordinate_transformation_mode", "half_pixel")
        nearest_mode = _attr_str(node, "nearest_mode", "round_prefer_floor")
    axes = [_axis(a, r) for a in (_attr_ints(node, "axes") or list(range(r)))]
    full_scales, full_sizes = [1.0] * r, list(X.shape)
    for j, a in enumerate(axes):
        if sizes:
            full_sizes[a] = sizes[j]
            full_scales[a] = float(_F32(sizes[j]) / _F32(X.shape[a]))
        else:
            full_scales[a] = scales[j]
            full_sizes[a] = int(math.floor(float(_F32(X.shape[a]) * _F32(scales[j]))))
    cubic_a = float(node.attr("cubic_coeff_a", -0.75))
    exclude = bool(int(node.attr("exclude_outside", 0)))
    for a in range(r):
        if full_sizes[a] != X.shape[a] or full_scales[a] != 1.0:
            X = _resize_axis(X, a, full_sizes[a], full_scales[a], mode, ctm, nearest_mode, cubic_a, exclude)
    return X


# ----------------------------------------------------------------------------------------------------
# reductions


def _reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> OpFn:
    """Reductions: axes from input 1 (ReduceSum from opset 13, the others from 18) or from the attribute
    (older opsets); no axes = all axes, unless noop_with_empty_axes=1 (identity)."""

    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        X = _req(x, 0)
        axes = _axes_from(node, x, 1)
        keep = bool(int(node.attr("keepdims", 1)))
        if not axes:
            if int(node.attr("noop_with_empty_axes", 0)):
                return X
            axes = list(range(X.dim()))
        return fn(X, tuple(sorted(_axis(a, X.dim()) for a in axes)), keep)

    return op


def _reduce_prod(X: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        X = X.prod(d, keepdim=keep)
    return X


def _arg(fn: Callable[..., Tensor]) -> OpFn:
    def op(node: Node, x: list[Tensor | None], ctx: EvalContext) -> Tensor:
        X = _req(x, 0)
        axis = _axis(int(node.attr("axis", 0)), X.dim())
        keep = bool(int(node.attr("keepdims", 1)))
        if int(node.attr("select_last_index", 0)):
            i = fn(X.flip(axis), dim=axis, keepdim=keep)
            return X.shape[axis] - 1 - i
        return fn(X, dim=axis, keepdim=keep)

    return op


_REDUCE_FNS: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceSum": lambda X, d, k: X.sum(d, keepdim=k),
    "ReduceMean": lambda X, d, k: X.mean(d, keepdim=k),
    "ReduceMax": lambda X, d, k: X.amax(d, keepdim=k),
    "ReduceMin": lambda X, d, k: X.amin(d, keepdim=k),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda X, d, k: X.abs().sum(d, keepdim=k),
    "ReduceL2": lambda X, d, k: torch.linalg.vector_norm(X, 2, d, keepdim=k),
    "ReduceSumSquare": lambda X, d, k: (X * X).sum(d, keepdim=k),
    "ReduceLogSum": lambda X, d, k: torch.log(X.sum(d, keepdim=k)),
    "ReduceLogSumExp": lambda X, d, k: torch.logsumexp(X, d, keepdim=k),
}


# ----------------------------------------------------------------------------------------------------
# THE TABLE: every op the evaluator runs (domain "" / ai.onnx). Keep it on one screen.

OPS: dict[str, OpFn] = {
    # linear layers and normalizations
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul, "Einsum": einsum, "LSTM": lstm,
    "GRU": gru, "RNN": rnn,
    "BatchNormalization": batch_normalization, "InstanceNormalization": instance_normalization,
    "LayerNormalization": layer_normalization, "GroupNormalization": group_normalization,
    "RMSNormalization": rms_normalization, "LpNormalization": lp_normalization,
    # arithmetic
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(torch.pow), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Round": _unary(torch.round),
    "Sign": _unary(torch.sign), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add), "Mean": mean, "CumSum": cum_sum,
    # activations
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus), "Softsign": _unary(F.softsign), "Mish": _unary(F.mish),
    "HardSwish": _unary(F.hardswish), "PRelu": prelu, "Clip": clip,
    "LeakyRelu": _attr_unary(lambda X, n: F.leaky_relu(X, float(n.attr("alpha", np.float32(0.01))))),
    "Elu": _attr_unary(lambda X, n: F.elu(X, float(n.attr("alpha", 1.0)))),
    "Celu": _attr_unary(lambda X, n: F.celu(X, float(n.attr("alpha", 1.0)))),
    "Selu": _attr_unary(_selu),
    "ThresholdedRelu": _attr_unary(lambda X, n: X * (X > float(n.attr("alpha", 1.0)))),
    "HardSigmoid": _attr_unary(
        lambda X, n: torch.clamp(
            float(n.attr("alpha", np.float32(0.2))) * X + float(n.attr("beta", np.float32(0.5))), 0.0, 1.0
        )
    ),
    "Gelu": _attr_unary(lambda X, n: F.gelu(X, approximate=_attr_str(n, "approximate", "none"))),
    "Swish": _attr_unary(lambda X, n: X * torch.sigmoid(float(n.attr("alpha", 1.0)) * X)),
    "Softmax": _softmax_family(torch.softmax), "LogSoftmax": _softmax_family(torch.log_softmax),
    # pooling
    "MaxPool": max_pool, "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool, "GlobalMaxPool": global_max_pool,
    # structural
    "Pad": pad, "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Squeeze": squeeze,
    "Unsqueeze": unsqueeze, "Concat": concat, "Split": split, "Slice": slice_, "Gather": gather,
    "GatherElements": gather_elements, "Identity": identity, "Dropout": dropout, "Expand": expand,
    "Tile": tile, "DepthToSpace": depth_to_space, "SpaceToDepth": space_to_depth,
    "Resize": resize, "Upsample": resize, "Shape": shape, "Size": size, "ConstantOfShape": constant_of_shape,
    # types, masks, selection (comparisons and arg-reductions are not differentiable)
    "Cast": cast, "CastLike": cast_like, "Where": where,
    "Equal": _binary(torch.eq), "Greater": _binary(torch.gt), "Less": _binary(torch.lt),
    "GreaterOrEqual": _binary(torch.ge), "LessOrEqual": _binary(torch.le), "Not": _unary(torch.logical_not),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
    "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin),
    # reductions
    **{name: _reduce(fn) for name, fn in _REDUCE_FNS.items()},
}


# ----------------------------------------------------------------------------------------------------
# attribute values the ops above do not implement: op -> check(node, graph) -> reason or None


def _limit_spatial(max_rank: int) -> Callable[[Node, Graph], str | None]:
    def check(node: Node, graph: Graph) -> str | None:
        shape = graph.shapes.get(node.inputs[0]) if node.inputs else None
        if shape is not None and not 3 <= len(shape) <= max_rank + 2:
            return f"{len(shape) - 2}-D spatial input (1-D to {max_rank}-D supported)"
        return None

    return check


def _limit_max_pool(node: Node, graph: Graph) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output is not supported"
    if int(node.attr("storage_order", 0)):
        return "storage_order=1 is not supported"
    return _limit_spatial(3)(node, graph)


def _limit_resize(node: Node, graph: Graph) -> str | None:
    mode = _attr_str(node, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic", "bilinear"):
        return f"mode={mode!r} is not supported"
    if node.op_type == "Upsample" and mode == "cubic":
        return "Upsample mode='cubic' is not supported"
    ctm = _attr_str(node, "coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_crop_and_resize":
        return "coordinate_transformation_mode='tf_crop_and_resize' is not supported"
    if int(node.attr("antialias", 0)) and mode != "nearest":
        return "antialias=1 is not supported"
    policy = _attr_str(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        return f"keep_aspect_ratio_policy={policy!r} is not supported"
    return None


def _limit_nodes_attr(key: str, allowed: Sequence[Any], default: Any) -> Callable[[Node, Graph], str | None]:
    def check(node: Node, graph: Graph) -> str | None:
        v = node.attr(key, default)
        v = v.decode() if isinstance(v, bytes) else v
        return None if v in allowed else f"{key}={v!r} is not supported"

    return check


def _limit_batch_norm(node: Node, graph: Graph) -> str | None:
    if int(node.attr("training_mode", 0)) or sum(1 for o in node.outputs if o) > 1:
        return "training mode (running statistics outputs) is not supported"
    return None


def _limit_lstm(node: Node, graph: Graph) -> str | None:
    acts = node.attr("activations")
    if acts is not None:
        names = [str(a.decode() if isinstance(a, bytes) else a).lower() for a in acts]
        if any(names[k:k + 3] != ["sigmoid", "tanh", "tanh"] for k in range(0, len(names), 3)):
            return f"LSTM activations {names} are not supported (only Sigmoid, Tanh, Tanh)"
    if int(node.attr("input_forget", 0)):
        return "LSTM input_forget=1 is not supported"
    lens = node.inputs[4] if len(node.inputs) > 4 else ""
    if lens:
        value = graph.constants.get(lens)
        x_shape = graph.shapes.get(node.inputs[0])
        if value is None or x_shape is None:
            return "LSTM sequence_lens that is not a constant is not supported"
        steps = x_shape[1] if int(node.attr("layout", 0)) == 1 else x_shape[0]
        if not np.all(np.asarray(value) == steps):
            return "LSTM sequence_lens shorter than the sequence is not supported"
    return None


def _limit_gru_rnn(node: Node, graph: Graph) -> str | None:
    acts = node.attr("activations")
    if acts is not None:
        names = [str(a.decode() if isinstance(a, bytes) else a).lower() for a in acts]
        allowed = ("sigmoid", "tanh") if node.op_type == "GRU" else tuple(_RNN_ACTIVATIONS)
        if (node.op_type == "GRU" and any(names[k:k + 2] != ["sigmoid", "tanh"] for k in range(0, len(names), 2))) \
                or any(n not in allowed for n in names):
            return f"{node.op_type} activations {names} are not supported"
    lens = node.inputs[4] if len(node.inputs) > 4 else ""
    if lens:
        return f"{node.op_type} sequence_lens is not supported"
    return None


LIMITS: dict[str, Callable[[Node, Graph], str | None]] = {
    "LSTM": _limit_lstm, "GRU": _limit_gru_rnn, "RNN": _limit_gru_rnn,
    "Conv": _limit_spatial(3), "ConvTranspose": _limit_spatial(3), "AveragePool": _limit_spatial(3),
    "MaxPool": _limit_max_pool, "Resize": _limit_resize, "Upsample": _limit_resize,
    "Pad": _limit_nodes_attr("mode", ("constant", "reflect", "edge", "wrap"), "constant"),
    "BatchNormalization": _limit_batch_norm,
    "LpNormalization": _limit_nodes_attr("p", (1, 2), 2),
}


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) the evaluator runs."""
    return sorted(OPS)


def unsupported_reason(node: Node, graph: Graph) -> str | None:
    """Why the evaluator cannot run ``node`` (None when it can)."""
    if node.domain not in ("", "ai.onnx"):
        return f"op {node.op_type} of domain {node.domain!r} is not supported (only the default ONNX domain)"
    if node.op_type not in OPS:
        return f"op {node.op_type} is not supported"
    check = LIMITS.get(node.op_type)
    return check(node, graph) if check is not None else None


def unsupported_nodes(graph: Graph) -> list[Node]:
    """The nodes of ``graph`` the evaluator cannot run (unknown op or domain, unsupported attributes)."""
    return [n for n in graph.nodes if unsupported_reason(n, graph) is not None]


# ----------------------------------------------------------------------------------------------------
# the evaluator


def is_float_info(info: TensorInfo) -> bool:
    """A float tensor (float16/32/64, bfloat16); False for an unknown dtype instead of raising."""
    if info.dtype == "bfloat16":
        return True
    try:
        return info.is_float
    except TypeError:
        return False


def _constant_tensor(value: Any, dtype: torch.dtype) -> Tensor:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" or arr.dtype.kind == "c":
        return torch.tensor(arr.real if arr.dtype.kind == "c" else arr, dtype=dtype)
    if arr.dtype.kind == "b":
        return torch.tensor(arr, dtype=torch.bool)
    if arr.dtype.kind in "iu":
        return torch.tensor(arr.astype(np.int64), dtype=torch.int64)
    raise TypeError(f"constants of dtype {arr.dtype} are not supported")


class TorchEvaluator:
    """Runs a :class:`Graph` with torch ops (ONNX semantics); differentiable w.r.t. the float inputs.

    ``evaluator(*float_inputs)`` returns the graph outputs (in ``graph.outputs`` order) as tensors in
    ``dtype`` (integer / bool outputs keep their integer / bool type). Integer and bool graph inputs are held
    fixed: zeros unless ``fixed_inputs`` gives their values. Raises :class:`UnsupportedOpError` (naming the
    node) if the graph has a node :func:`unsupported_nodes` lists, :class:`EvaluationError` if a node fails.
    """

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float64,
                 fixed_inputs: Mapping[str, np.ndarray] | None = None) -> None:
        self.graph = graph
        self.dtype = dtype
        self.ctx = EvalContext(graph, dtype)
        self._constants: dict[str, Tensor] = {}
        used = {i for n in graph.nodes for i in n.inputs if i} | {o.name for o in graph.outputs}
        for name, const in graph.constants.items():
            if name in used:
                try:
                    self._constants[name] = _constant_tensor(const, dtype)
                except TypeError:
                    pass  # e.g. string constants; a node reading one fails with a clear KeyError message
        self.float_inputs = tuple(i for i in graph.inputs if is_float_info(i))
        fixed = dict(fixed_inputs or {})
        self._fixed: dict[str, Tensor] = {}
        for info in graph.inputs:
            if is_float_info(info):
                continue
            value: np.ndarray | None = fixed.get(info.name)
            if value is None:
                try:
                    dt = np.dtype(info.dtype)
                except TypeError:
                    dt = np.dtype(np.int64)
                value = np.zeros(info.shape, dtype=dt)
            self._fixed[info.name] = _constant_tensor(value, dtype)
        self.unsupported: list[tuple[Node, str]] = [
            (n, r) for n in graph.nodes if (r := unsupported_reason(n, graph)) is not None
        ]
        # node (by its first output's name) -> the function that runs it instead of its ONNX semantics: the lower
        # bound's smoothed surrogates (lipcheck.bound.smoothing); empty for every evaluation of the model itself
        self.overrides: dict[str, OpFn] = {}

    def fixed_input_values(self) -> dict[str, np.ndarray]:
        """The values the integer / bool inputs are held at."""
        return {name: t.numpy().copy() for name, t in self._fixed.items()}

    def __call__(self, *float_inputs: Tensor) -> list[Tensor]:
        return self.run(*float_inputs)[0]

    def run(self, *float_inputs: Tensor, keep: Collection[str] = ()) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The graph outputs, and the intermediate tensors named in ``keep`` (e.g. an activation's input, for
        the activation-region search of the lower bound); a name no node computes is left out."""
        g = self.graph
        if self.unsupported:
            node, reason = self.unsupported[0]
            raise UnsupportedOpError(node, reason, g.opset)
        if len(float_inputs) != len(self.float_inputs):
            raise ValueError(f"expected {len(self.float_inputs)} float inputs "
                             f"({', '.join(i.name for i in self.float_inputs)}), got {len(float_inputs)}")
        env: dict[str, Tensor] = dict(self._constants)
        env.update(self._fixed)
        for info, t in zip(self.float_inputs, float_inputs, strict=True):
            if tuple(t.shape) != tuple(info.shape):
                raise ValueError(
                    f"input {info.name!r}: expected shape {list(info.shape)}, got {list(t.shape)}")
            env[info.name] = t if t.dtype == self.dtype else t.to(self.dtype)
        for node in g.nodes:
            try:
                args = [env[i] if i else None for i in node.inputs]
            except KeyError as exc:
                raise EvaluationError(node, f"input {exc.args[0]!r} is not available") from None
            try:
                fn = self.overrides.get(node.outputs[0]) if self.overrides and node.outputs else None
                result = (fn or OPS[node.op_type])(node, args, self.ctx)
            except LipcheckError:
                raise
            except Exception as exc:  # noqa: BLE001 - add the node to the message
                raise EvaluationError(node, f"{type(exc).__name__}: {exc}") from exc
            outs = result if isinstance(result, tuple) else (result,)
            for i, name in enumerate(node.outputs):
                if not name:
                    continue
                if i >= len(outs):
                    raise EvaluationError(node, f"output #{i} ({name!r}) is not computed by the evaluator")
                env[name] = outs[i]
        try:
            return [env[o.name] for o in g.outputs], {k: env[k] for k in keep if k in env}
        except KeyError as exc:
            raise LipcheckError(f"graph output {exc.args[0]!r} is not computed by any node") from None
