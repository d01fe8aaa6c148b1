"""Weighted linear layers: Gemm, MatMul with a constant operand, Conv, ConvTranspose, BatchNormalization,
and element-wise scaling by constants. Each produces a layer row with σ power / exact / certified upper.

The math lives in :mod:`lipcheck.norms`; these adapters only read nodes.
"""

from __future__ import annotations

import math

import numpy as np

from lipcheck.arrays import release_pages
from lipcheck.ir.graph import Node
from lipcheck.norms.margin import EPS64
from lipcheck.report.model import NormResult
from lipcheck.rules.activations import GELU, MISH, SILU
from lipcheck.rules.registry import NoGlobalConstant, OpBound, RuleContext, register

EPS = float(np.finfo(np.float64).eps)


def _layer(index: int, norms: NormResult, rule: str, weight: str | None) -> OpBound:
    return OpBound(
        gains={index: norms.sigma_upper},
        estimate_gains={index: norms.sigma_power},
        rule=rule,
        norms=norms,
        weight=weight,
    )


def closed_form(value: float, what: str) -> NormResult:
    """A norm known in closed form (max |scale|): exact up to rounding; certified with a 4ε margin."""
    return NormResult(
        sigma_power=value, power_iterations=0, sigma_exact=value, exact_method="closed-form",
        sigma_upper=value * (1 + 4 * EPS), upper_method=f"closed-form ({what})",
    )


def matmul_blocks(w: np.ndarray, x_shape: tuple[int, ...], w_on_right: bool) -> np.ndarray:
    """The matrices M_g, stacked (G, K, N), such that the map X ↦ X @ W (or W @ X) has σ = max_g σ(M_g).

    Batched operands are broadcast like numpy.matmul: an X batch element multiplied by several W matrices
    (X broadcast) meets their horizontal concatenation, so those are concatenated (in float64). A 1-D or 2-D
    W comes back as a view in its own dtype (a memmap stays a memmap): the norm kernels stream big matrices.
    """
    w = np.asarray(w)
    if not w_on_right:
        # Y = W X  <=>  Yᵀ = Xᵀ Wᵀ
        w = w[None, :] if w.ndim == 1 else np.swapaxes(w, -1, -2)
        x_shape = x_shape if len(x_shape) < 2 else x_shape[:-2] + (x_shape[-1], x_shape[-2])
    elif w.ndim == 1:
        w = w[:, None]
    if w.ndim == 2:
        return w[None]
    w = np.asarray(w, dtype=np.float64)
    bw = w.shape[:-2]
    bx = x_shape[:-2] if len(x_shape) >= 2 else ()
    batch = np.broadcast_shapes(bx, bw)
    ix = np.broadcast_to(np.arange(int(np.prod(bx))).reshape(bx), batch).ravel()
    iw = np.broadcast_to(np.arange(int(np.prod(bw))).reshape(bw), batch).ravel()
    flat = w.reshape((-1,) + w.shape[-2:])
    groups: dict[int, list[int]] = {}
    for a, b in zip(ix, iw):
        groups.setdefault(int(a), []).append(int(b))
    unique = {tuple(v) for v in groups.values()}
    return np.stack([np.concatenate([flat[b] for b in g], axis=1) for g in sorted(unique)])


def _matrix_layer(blocks: np.ndarray, ctx: RuleContext, node: Node) -> NormResult:
    from lipcheck.budget import matrix_costs, plan_layer
    from lipcheck.norms.matrix import batched_matrix_norms, ldexp_norms, matrix_norms, normalizing_exponent

    options = ctx.norm_options()
    b, m, n = blocks.shape
    costs = matrix_costs(batch=b, m=m, n=n, iterations=int(options["iterations"]),
                         exact_limit=int(options["exact_limit"]))
    plan = plan_layer(node.name, node.op_type, costs, int(options["iterations"]))
    options["iterations"] = plan.iterations
    k = normalizing_exponent(blocks)  # float64 weights of 1e-200: normalized, so that no square underflows
    if k:
        blocks = np.ldexp(blocks, -k)
    if b == 1:
        return ldexp_norms(matrix_norms(blocks[0], skip=plan.skip, **options), k)  # type: ignore[arg-type]
    return ldexp_norms(batched_matrix_norms(blocks, skip=plan.skip, **options), k)  # type: ignore[arg-type]


def _conv_plan(node: Node, ctx: RuleContext, w: np.ndarray, geom, out_spatial: tuple[int, ...],  # type: ignore[no-untyped-def]
               exact_size: int) -> tuple[dict[str, float | int], dict[str, str]]:
    """The norm options and the stages to skip for a Conv (or the Conv a ConvTranspose is the adjoint of, whose
    input is ``geom.input_spatial`` and output ``out_spatial``), under the resource limits
    (:mod:`lipcheck.budget`): estimated from the shapes, before anything of the operator's size exists."""
    from lipcheck.budget import conv_costs, plan_layer, zero_pad_cost

    options = ctx.norm_options()
    costs = conv_costs(
        c_out=int(w.shape[0]), c_in=int(w.shape[1]) * geom.groups, groups=geom.groups,
        kernel=tuple(int(k) for k in w.shape[2:]), input_spatial=tuple(geom.input_spatial),
        output_spatial=tuple(out_spatial),
        padded=tuple(n + b + e for n, b, e in zip(geom.input_spatial, geom.pads_begin, geom.pads_end)),
        strides=tuple(geom.strides), iterations=int(options["iterations"]), exact_size=exact_size,
        exact_limit=int(options["exact_limit"]),
    )
    tight_work = float(ctx.settings.tight_work)
    costs["zero-pad"] = zero_pad_cost(w, geom, tuple(out_spatial), tight_work, exact_size, int(options["exact_limit"]))
    plan = plan_layer(node.name, node.op_type, costs, int(options["iterations"]))
    options["iterations"] = plan.iterations
    options["tight_work"] = tight_work
    return options, dict(plan.skip)


@register("MatMul")
def matmul(node: Node, ctx: RuleContext) -> OpBound:
    a, b = node.inputs[:2]
    var = ctx.var_inputs(node)
    if not var:
        return OpBound(gains={}, rule="constant")
    if len(var) == 2:
        raise NoGlobalConstant("product of two input-dependent tensors (e.g. attention scores) has no global constant")
    index, wname, xname = (0, b, a) if var == [0] else (1, a, b)
    w = ctx.const(wname)
    blocks = matmul_blocks(w, ctx.shape(xname), w_on_right=index == 0)  # type: ignore[arg-type]
    norms = _matrix_layer(blocks, ctx, node)
    release_pages(w)
    return _layer(index, norms, "MatMul: σ_max(W)", wname)


@register("Gemm")
def gemm(node: Node, ctx: RuleContext) -> OpBound:
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    a, b = node.inputs[:2]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    var_a, var_b = ctx.is_var(a), ctx.is_var(b)
    if var_a and var_b:
        raise NoGlobalConstant("Gemm of two input-dependent tensors has no global constant")
    gains: dict[int, float] = {}
    est: dict[int, float] = {}
    norms = None
    weight = None
    if var_a or var_b:
        from lipcheck.norms.matrix import scale_norms

        # views, never copies (a memmapped weight is streamed by the kernel); α applies to the norms
        if var_a:
            stored = np.asarray(ctx.const(b))
            w = stored.T if node.attr("transB", 0) else stored  # X' ↦ α X' B'
            index, weight = 0, b
        else:
            stored = np.asarray(ctx.const(a))
            w = stored.T if node.attr("transA", 0) else stored  # X' ↦ α A' X'
            index, weight = 1, a
        norms = scale_norms(_matrix_layer(w[None], ctx, node), alpha)  # σ(αW) = |α|·σ(W)
        release_pages(stored)
        gains[index], est[index] = norms.sigma_upper, norms.sigma_power
    if c and ctx.is_var(c):
        out = ctx.shape(node.outputs[0])
        copies = max(1, int(np.prod(out)) // max(1, int(np.prod(ctx.shape(c)))))
        gains[2] = est[2] = abs(beta) * math.sqrt(copies)
    return OpBound(gains=gains, estimate_gains=est, rule="Gemm: σ_max(α·W)", norms=norms, weight=weight)


def _conv_geometry(node: Node, ctx: RuleContext, transpose: bool):  # type: ignore[no-untyped-def]
    from lipcheck.norms.conv import ConvGeometry
    from lipcheck.rules.geometry import resolve_pads

    x, wname = node.inputs[0], node.inputs[1]
    w = ctx.const(wname)
    if w is None:
        raise NoGlobalConstant(f"{node.op_type} with input-dependent weights has no global constant")
    # validation, not bounding: a weight whose channels do not fit the input and `group` is another operator
    group, x_shape = int(node.attr("group", 1)), ctx.shape(x)
    reads = int(w.shape[0]) if transpose else int(w.shape[1]) * group if w.ndim >= 2 else -1
    if group < 1 or int(w.shape[0]) % group or len(x_shape) < 2 or x_shape[1] != reads:
        from lipcheck.errors import InvalidModelError

        raise InvalidModelError(
            f"node '{node.name}' ({node.op_type}): input '{x}' of shape {list(x_shape)} does not fit weight "
            f"'{wname}' {list(w.shape)} with group {group}"
        )
    spatial = ctx.shape(x)[2:]
    out_spatial = ctx.shape(node.outputs[0])[2:]
    r = len(spatial)
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = tuple(int(v) for v in node.attr("strides", [1] * r))
    dilations = tuple(int(v) for v in node.attr("dilations", [1] * r))
    groups = int(node.attr("group", 1))
    if not transpose:
        pb, pe = resolve_pads(node, spatial, kernel, strides, dilations)
        expect = tuple(
            (n + b + e - ((k - 1) * d + 1)) // s + 1
            for n, b, e, k, d, s in zip(spatial, pb, pe, kernel, dilations, strides)
        )
        out_pad: tuple[int, ...] = ()
    else:
        out_pad = tuple(int(v) for v in node.attr("output_padding", [0] * r))
        auto = str(node.attr("auto_pad", "NOTSET"))
        target = node.attr("output_shape")
        if target is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            if target is None:
                target = [n * s for n, s in zip(spatial, strides)]
            target = list(target)[-r:]
            pb_l, pe_l = [], []
            for n, s, op, k, d, t in zip(spatial, strides, out_pad, kernel, dilations, target):
                total = s * (n - 1) + op + ((k - 1) * d + 1) - int(t)
                if total < 0:
                    raise NoGlobalConstant(f"{node.op_type} with negative total padding is not supported")
                small, large = total // 2, total - total // 2
                pb_l.append(small if auto == "SAME_UPPER" else large)
                pe_l.append(large if auto == "SAME_UPPER" else small)
            pb, pe = tuple(pb_l), tuple(pe_l)
        elif auto == "VALID":
            pb, pe = (0,) * r, (0,) * r
        else:
            pads = [int(p) for p in node.attr("pads", [0] * (2 * r))]
            pb, pe = tuple(pads[:r]), tuple(pads[r:])
        expect = tuple(
            s * (n - 1) + op + ((k - 1) * d + 1) - b - e
            for n, s, op, k, d, b, e in zip(spatial, strides, out_pad, kernel, dilations, pb, pe)
        )
    if tuple(expect) != tuple(out_spatial):
        # a soundness guard: never bound an operator whose geometry we read differently from the model
        raise NoGlobalConstant(
            f"{node.op_type} geometry: computed output {list(expect)}, the model has {list(out_spatial)}"
        )
    geom = ConvGeometry(
        input_spatial=tuple(spatial), strides=strides, dilations=dilations, pads_begin=pb, pads_end=pe,
        groups=groups,
    )
    return w, geom, out_pad


@register("Conv")
def conv(node: Node, ctx: RuleContext) -> OpBound:
    from lipcheck.norms.conv import conv_norms
    from lipcheck.norms.matrix import ldexp_norms, normalizing_exponent

    if ctx.var_inputs(node) != [0]:
        raise NoGlobalConstant("Conv with input-dependent weights or bias has no global constant")
    w, geom, _ = _conv_geometry(node, ctx, transpose=False)
    out_spatial = ctx.shape(node.outputs[0])[2:]
    options, skip = _conv_plan(node, ctx, w, geom, out_spatial, int(w.shape[1]) * geom.groups * math.prod(
        geom.input_spatial))
    k = normalizing_exponent(w)  # float64 weights of 1e-200: normalized, so that no square underflows
    norms = ldexp_norms(
        conv_norms(np.ldexp(np.asarray(w, dtype=np.float64), -k), geom, skip=skip, **options), k  # type: ignore[arg-type]
    )
    release_pages(w)
    return _layer(0, norms, "Conv: operator norm on its input", node.inputs[1])


@register("ConvTranspose")
def conv_transpose(node: Node, ctx: RuleContext) -> OpBound:
    from lipcheck.norms.conv import conv_transpose_norms
    from lipcheck.norms.matrix import ldexp_norms, normalizing_exponent

    if ctx.var_inputs(node) != [0]:
        raise NoGlobalConstant("ConvTranspose with input-dependent weights or bias has no global constant")
    w, geom, out_pad = _conv_geometry(node, ctx, transpose=True)
    from lipcheck.norms.conv import ConvGeometry

    # the adjoint Conv: from the transpose's output (its input) to the transpose's input (its output)
    adjoint = ConvGeometry(tuple(ctx.shape(node.outputs[0])[2:]), geom.strides, geom.dilations, geom.pads_begin,
                           geom.pads_end, geom.groups)
    options, skip = _conv_plan(node, ctx, w, adjoint, tuple(geom.input_spatial),
                               int(w.shape[0]) * math.prod(geom.input_spatial))
    k = normalizing_exponent(w)
    norms = ldexp_norms(conv_transpose_norms(
        np.ldexp(np.asarray(w, dtype=np.float64), -k), geom, out_pad, skip=skip, **options  # type: ignore[arg-type]
    ), k)
    release_pages(w)
    return _layer(0, norms, "ConvTranspose: operator norm on its input", node.inputs[1])


def batchnorm_scale(node: Node, ctx: RuleContext) -> np.ndarray:
    """Per-channel scale γ/√(var + eps) of an inference-mode BatchNormalization."""
    if node.attr("training_mode", 0):
        raise NoGlobalConstant("BatchNormalization in training mode (batch statistics) is not supported")
    if ctx.var_inputs(node) != [0]:
        raise NoGlobalConstant("BatchNormalization with input-dependent parameters is not supported")
    gamma = np.asarray(ctx.const(node.inputs[1]), dtype=np.float64)
    var = np.asarray(ctx.const(node.inputs[4]), dtype=np.float64)
    # the default is the float attribute's value as ONNX stores it, float32(1e-5) = 9.99999974738e-06, which is
    # what runtimes use: the double 1e-5 is larger and would put the bound below the truth when var ≈ 0
    eps = float(node.attr("epsilon", np.float32(1e-5)))
    if np.any(var + eps <= 0):
        raise NoGlobalConstant("BatchNormalization with var + eps <= 0")
    return gamma / np.sqrt(var + eps)


@register("BatchNormalization")
def batch_norm(node: Node, ctx: RuleContext) -> OpBound:
    s = batchnorm_scale(node, ctx)
    norms = closed_form(float(np.max(np.abs(s))), "max_c |γ_c|/√(var_c + eps)")
    return _layer(0, norms, "BatchNormalization: max |γ|/√(var+eps)", node.inputs[1])


def _scaling_norm(c: np.ndarray, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    """‖x ↦ c ⊙ broadcast(x)‖₂: each input element meets the constants of its copies, √Σ c²."""
    c2 = np.broadcast_to(np.asarray(c, dtype=np.float64) ** 2, out_shape)
    aligned = (1,) * (len(out_shape) - len(x_shape)) + tuple(x_shape)
    axes = tuple(a for a in range(len(out_shape)) if aligned[a] == 1 and out_shape[a] > 1)
    summed = c2.sum(axis=axes) if axes else c2
    return float(np.sqrt(np.max(summed))) if summed.size else 0.0


_SQRT2 = math.sqrt(2.0)


def _scalar(ctx: RuleContext, name: str) -> float | None:
    c = ctx.const(name) if name else None
    if c is None or c.size != 1:
        return None
    value = float(np.asarray(c, dtype=np.float64).reshape(-1)[0])
    return value if math.isfinite(value) else None


def _scaled_clip_of(g: Node, x: str, ctx: RuleContext) -> tuple[float, float, float, float] | None:
    """(k, lo, hi, c) when ``g`` computes k·clip(x + c, lo, hi) from ``x`` (HardSwish's x·relu6(x + 3)/6 as
    exported: Div / Mul by a scalar constant of a Clip with constant finite bounds, lo ≤ hi, of x or of x ± c)."""
    k = 1.0
    node: Node | None = g
    if g.op_type in ("Div", "Mul"):
        var = ctx.var_inputs(g)
        if len(var) != 1 or (g.op_type == "Div" and var[0] != 0):
            return None
        scale = _scalar(ctx, g.inputs[1 - var[0]])
        if scale is None or scale == 0.0:
            return None
        k = 1.0 / scale if g.op_type == "Div" else scale
        node = ctx.producer(g.inputs[var[0]])
    if node is None or node.op_type != "Clip":
        return None
    lo = _scalar(ctx, node.inputs[1]) if len(node.inputs) > 1 else None
    hi = _scalar(ctx, node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) <= 1 and node.attr("min") is not None:
        lo, hi = float(node.attr("min")), float(node.attr("max", np.inf))
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return None
    arg = node.inputs[0]
    if arg == x:
        return k, lo, hi, 0.0
    shift = ctx.producer(arg)
    if shift is None or shift.op_type not in ("Add", "Sub") or ctx.var_inputs(shift) != [0] or shift.inputs[0] != x:
        if shift is not None and shift.op_type == "Add" and ctx.var_inputs(shift) == [1] and shift.inputs[1] == x:
            c = _scalar(ctx, shift.inputs[0])
            return None if c is None else (k, lo, hi, c)
        return None
    c = _scalar(ctx, shift.inputs[1])
    if c is None:
        return None
    return k, lo, hi, (c if shift.op_type == "Add" else -c)


def _times_function_of_self(node: Node, ctx: RuleContext) -> tuple[int, float, str] | None:
    """Recognise x·g(x) patterns that exporters emit for SiLU, Mish and erf-GELU.

    Returns (index of x, constant w.r.t. x, name). x may also be k·x0 with g reading x0 (torch's GELU
    0.5·x·(1 + erf(x/√2))); the constant with respect to the Mul's own operand is the same.
    """
    for xi, gi in ((0, 1), (1, 0)):
        x, g = node.inputs[xi], node.inputs[gi]
        sources = {x}
        px = ctx.producer(x)
        if px is not None and px.op_type == "Mul" and len(ctx.var_inputs(px)) == 1:
            k = ctx.const(px.inputs[1 - ctx.var_inputs(px)[0]])
            if k is not None and k.size == 1:
                sources.add(px.inputs[ctx.var_inputs(px)[0]])
        pg = ctx.producer(g)
        if pg is None:
            continue
        if pg.op_type == "Sigmoid" and pg.inputs[0] == x:
            return xi, SILU, "SiLU x·sigmoid(x): 1.0998 (computed)"
        if pg.op_type == "HardSigmoid" and pg.inputs[0] == x:
            # x·clip(αx + β, 0, 1): slope 2αx + β on the linear piece, whose ends give −β and 2 − β; 0 or 1 outside
            beta = float(pg.attr("beta", np.float32(0.5)))
            k = max(1.0, abs(beta), abs(2.0 - beta)) * (1 + 4 * EPS64)
            return xi, k, f"x·HardSigmoid(x) (HardSwish): max(1, |β|, |2−β|) = {k:.4g}"
        clipped = _scaled_clip_of(pg, x, ctx)
        if clipped is not None:
            # x·k·clip(x + c, lo, hi): slope k(2x + c) on the linear piece (ends: k(2lo − c), k(2hi − c)), k·lo or
            # k·hi outside; continuous and piecewise smooth, so the constant is the largest |slope|
            k, lo, hi, c = clipped
            value = abs(k) * max(abs(lo), abs(hi), abs(2 * lo - c), abs(2 * hi - c)) * (1 + 8 * EPS64)
            return xi, value, f"x·{k:.4g}·clip(x + {c:g}, {lo:g}, {hi:g}) (HardSwish as exported): {value:.4g}"
        if pg.op_type == "Tanh":
            sp = ctx.producer(pg.inputs[0])
            if sp is not None and sp.op_type == "Softplus" and sp.inputs[0] == x:
                return xi, MISH, "Mish x·tanh(softplus(x)): 1.0885 (computed)"
        if pg.op_type == "Add":
            one = [c for c in (ctx.const(i) for i in pg.inputs) if c is not None]
            erf = [ctx.producer(i) for i in pg.inputs if ctx.is_var(i)]
            if (len(one) == 1 and one[0].size == 1 and float(one[0].item()) == 1.0 and len(erf) == 1
                    and erf[0] is not None):
                e = erf[0]
                if e.op_type == "Erf":
                    d = ctx.producer(e.inputs[0])
                    if d is not None and d.op_type in ("Div", "Mul") and ctx.is_var(d.inputs[0]):
                        k = ctx.const(d.inputs[1])
                        want = _SQRT2 if d.op_type == "Div" else 1 / _SQRT2
                        if k is not None and k.size == 1 and abs(float(k.item()) - want) < 1e-5 and d.inputs[0] in sources:
                            if d.inputs[0] == x or px is not None:
                                return xi, 2 * GELU, "GELU x·(1+erf(x/√2)) = 2·GELU(x): 2·1.1290 (computed)"
    return None


@register("Mul", "Div")
def mul_div(node: Node, ctx: RuleContext) -> OpBound:
    var = ctx.var_inputs(node)
    if not var:
        return OpBound(gains={}, rule="constant")
    if len(var) == 2:
        if node.op_type == "Mul":
            pattern = _times_function_of_self(node, ctx)
            if pattern is not None:
                xi, k, text = pattern
                return OpBound(gains={xi: k, 1 - xi: 0.0}, rule=text)
            raise NoGlobalConstant(
                "product of two input-dependent tensors has no global Lipschitz constant"
            )
        raise NoGlobalConstant("division by an input-dependent tensor has no global Lipschitz constant")
    (i,) = var
    if node.op_type == "Div" and i == 1:
        raise NoGlobalConstant("division by an input-dependent tensor has no global Lipschitz constant")
    c = np.asarray(ctx.const(node.inputs[1 - i]), dtype=np.float64)
    if node.op_type == "Div":
        if np.any(c == 0):
            raise NoGlobalConstant("division by a constant that contains zeros")
        c = 1.0 / c
    value = _scaling_norm(c, ctx.shape(node.inputs[i]), ctx.shape(node.outputs[0]))
    what = "max|1/c|" if node.op_type == "Div" else "max|c|"
    norms = closed_form(value, f"{what}, √Σ over broadcast copies")
    return _layer(i, norms, f"{node.op_type} by a constant: {what}", node.inputs[1 - i])
