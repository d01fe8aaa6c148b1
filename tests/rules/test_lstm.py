"""The ONNX LSTM rule (lipcheck.rules.recurrent): certified against float64 Jacobians of an independent torch
implementation (checked against onnxruntime) and against onnxruntime's own difference quotients."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lipcheck
from lipcheck.bound.ranges import propagate
from lipcheck.loaders.onnx_loader import load_onnx
from tests.helpers import jacobian_ascent

T, B, I, H = 3, 1, 4, 5


def lstm_model(*, directions: int = 1, c0: str = "none", peephole: bool = False, seed: int = 0,
               scale: float = 1.0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """X [T, B, I] → LSTM → (Y, Y_h, Y_c) concatenated into one output vector. c0: "none", "const" or "input"
    (h0 likewise an input then)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((directions, 4 * H, I)) * scale).astype(np.float32)
    r = (rng.standard_normal((directions, 4 * H, H)) * scale / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal((directions, 8 * H)) * 0.3).astype(np.float32)
    inits = {"W": w, "R": r, "B": b}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    names = ["X", "W", "R", "B", "", "", ""]
    if c0 == "const":
        inits["c0"] = (rng.standard_normal((directions, B, H)) * 2).astype(np.float32)
        names[6] = "c0"
    elif c0 == "input":
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [directions, B, H]) for n in ("h0", "c0")]
        names[5], names[6] = "h0", "c0"
    if peephole:
        inits["P"] = (rng.standard_normal((directions, 3 * H)) * 0.5).astype(np.float32)
        names.append("P")
    while names and names[-1] == "":
        names.pop()
    nodes = [
        helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H,
                         direction="bidirectional" if directions == 2 else "forward", name="lstm"),
        helper.make_node("Flatten", ["Y"], ["fy"], axis=0), helper.make_node("Flatten", ["Y_c"], ["fc"], axis=0),
        helper.make_node("Concat", ["fy", "fc"], ["out"], axis=1),
    ]
    graph = helper.make_graph(nodes, "lstm", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, inits


def torch_lstm(x: torch.Tensor, inits: dict[str, np.ndarray], h0: torch.Tensor | None, c0: torch.Tensor | None,
               directions: int) -> torch.Tensor:
    """ONNX LSTM semantics (gates i, o, f, c; B = [Wb, Rb]), float64, for B = 1; returns cat(Y, Y_c) flattened
    in the model's order."""
    ys, cs = [], []
    for d in range(directions):
        w, r, b = (torch.tensor(inits[k][d], dtype=torch.float64) for k in ("W", "R", "B"))
        p = torch.tensor(inits["P"][d], dtype=torch.float64) if "P" in inits else torch.zeros(3 * H, dtype=torch.float64)
        h = h0[d, 0] if h0 is not None else torch.zeros(H, dtype=torch.float64)
        if c0 is not None:
            c = c0[d, 0]
        elif "c0" in inits:
            c = torch.tensor(inits["c0"][d, 0], dtype=torch.float64)
        else:
            c = torch.zeros(H, dtype=torch.float64)
        order = range(T) if d == 0 else range(T - 1, -1, -1)
        out = [None] * T
        for t in order:
            z = w @ x[t, 0] + r @ h + b[:4 * H] + b[4 * H:]
            zi, zo, zf, zc = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
            i = torch.sigmoid(zi + p[:H] * c)
            f = torch.sigmoid(zf + p[2 * H:] * c)
            g = torch.tanh(zc)
            c = f * c + i * g
            o = torch.sigmoid(zo + p[H:2 * H] * c)
            h = o * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out))  # [T, H]
        cs.append(c)
    y = torch.stack(ys, dim=1)  # [T, dirs, H] (B = 1)
    return torch.cat([y.reshape(-1), torch.stack(cs).reshape(-1)])


def worst_jacobian(fn, n: int, seed: int = 0, scale: float = 3.0) -> float:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(60):
        v = torch.tensor(rng.standard_normal(n) * scale * rng.uniform(0.1, 1.0), dtype=torch.float64)
        best = max(best, float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(fn, v), 2)))
    return max(best, jacobian_ascent(fn, rng.standard_normal(n), 80, 0.05))


def assert_quotients_below(sess: ort.InferenceSession, bound: float, rng: np.random.Generator) -> None:
    """‖f(a + d) − f(a)‖ / ‖d‖ by onnxruntime at 50 random pairs (input "X") never exceeds ``bound``."""
    for _ in range(50):
        a = (rng.standard_normal((T, B, I)) * 2).astype(np.float32)
        d = (rng.standard_normal((T, B, I)) * 0.05).astype(np.float32)
        fa, fb = (np.asarray(sess.run(None, {"X": v})[0], np.float64) for v in (a, a + d))
        assert np.linalg.norm(fa - fb) / np.linalg.norm((a + d).astype(np.float64) - a) <= bound


CASES = [dict(), dict(c0="const"), pytest.param(dict(directions=2), marks=pytest.mark.slow), pytest.param(dict(peephole=True), marks=pytest.mark.slow),
         pytest.param(dict(scale=2.0, seed=3), marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", CASES, ids=["plain", "const_c0", "bidirectional", "peephole", "large_weights"])
def test_global_bound_above_exact_jacobians_and_onnxruntime_ratios(case: dict) -> None:  # type: ignore[type-arg]
    model, inits = lstm_model(**case)
    directions = case.get("directions", 1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    ref = torch_lstm(torch.tensor(x, dtype=torch.float64), inits, None, None, directions).numpy()
    np.testing.assert_allclose(sess.run(None, {"X": x})[0].reshape(-1), ref, rtol=1e-4, atol=1e-5)

    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert report.certified and report.upper_bound is not None, report.unbounded
    bound = report.upper_bound

    def fn(v: torch.Tensor) -> torch.Tensor:
        return torch_lstm(v.reshape(T, B, I), inits, None, None, directions)

    worst = worst_jacobian(fn, T * B * I)
    assert worst <= bound
    assert bound <= 200 * worst  # a bound, not a blow-up (measured 22-70× on these nets: the recurrence is unrolled by triangle inequalities)
    assert_quotients_below(sess, bound, rng)  # onnxruntime's own difference quotients


def test_initial_cell_state_as_input_is_unbounded_globally_and_bounded_on_a_region() -> None:
    model, inits = lstm_model(c0="input")
    report = lipcheck.analyze(model, lower_bound=False, method="product", domain="X=-2,2;h0=-1,1;c0=-1,1")
    assert not report.certified
    [u] = [u for u in report.unbounded if u.node == "lstm"]
    assert "initial cell state" in u.reason and "--domain" in u.reason
    local = report.local
    assert local is not None and local.upper_bound is not None and local.certified, local.unbounded

    def fn(v: torch.Tensor) -> torch.Tensor:
        n = T * B * I
        return torch_lstm(v[:n].reshape(T, B, I), inits, v[n:n + H].reshape(1, 1, H),
                          torch.clamp(v[n + H:], -1, 1).reshape(1, 1, H), 1)

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(80):  # Jacobians at points inside the region (c0 within [-1, 1])
        v = torch.tensor(np.concatenate([rng.uniform(-2, 2, T * B * I), rng.uniform(-1, 1, 2 * H)]))
        worst = max(worst, float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(fn, v), 2)))
    assert worst <= local.upper_bound
    # a wider c0 range gives a larger local bound (the forget gate's product grows with |c_0|)
    wider = lipcheck.analyze(model, lower_bound=False, method="product", domain="X=-2,2;h0=-1,1;c0=-5,5")
    assert wider.local is not None and wider.local.upper_bound > local.upper_bound


def test_ranges_hold_onnxruntime_outputs() -> None:
    model, _ = lstm_model(c0="input", peephole=True)
    graph = load_onnx(model)
    box = {"X": (-3.0, 3.0), "h0": (-1.0, 1.0), "c0": (-2.0, 2.0)}
    ranges = propagate(graph, box)
    y, yc = ranges.intervals["Y"], ranges.intervals["Y_c"]
    assert np.all(y.lo >= -1.001) and np.all(y.hi <= 1.001)
    assert np.all(yc.hi <= 2.0 + T + 0.01)
    inter = helper.make_model(model.graph, opset_imports=model.opset_import)
    inter.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_c")])
    inter.ir_version = 8
    sess = ort.InferenceSession(inter.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(100):
        feed = {k: rng.uniform(lo, hi, s).astype(np.float32)
                for (k, (lo, hi)), s in zip(box.items(), ([T, B, I], [1, B, H], [1, B, H]))}
        _, y_out, yc_out = sess.run(None, feed)
        assert np.all(y_out >= y.lo) and np.all(y_out <= y.hi)
        assert np.all(yc_out >= yc.lo) and np.all(yc_out <= yc.hi)


def test_non_default_activations_and_unknown_lengths_are_unbounded_with_the_reason() -> None:
    model, _ = lstm_model()
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("activations", ["Relu", "Tanh", "Tanh"]))
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    [u] = [u for u in report.unbounded if u.node == "lstm"]
    assert "activations" in u.reason


# ----------------------------------------------------------------------------------------------------------------
# GRU and RNN


def gru_model(*, lbr: int = 0, h0: str = "none", seed: int = 0, directions: int = 1):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    inits = {"W": rng.standard_normal((directions, 3 * H, I)).astype(np.float32),
             "R": (rng.standard_normal((directions, 3 * H, H)) / np.sqrt(H)).astype(np.float32),
             "B": (rng.standard_normal((directions, 6 * H)) * 0.3).astype(np.float32)}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    names = ["X", "W", "R", "B"]
    if h0 == "const":
        inits["h0"] = (rng.standard_normal((directions, B, H)) * 2).astype(np.float32)
        names += ["", "h0"]
    elif h0 == "input":
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [directions, B, H]))
        names += ["", "h0"]
    nodes = [helper.make_node("GRU", names, ["Y", "Y_h"], hidden_size=H, linear_before_reset=lbr, name="gru",
                              direction="bidirectional" if directions == 2 else "forward"),
             helper.make_node("Flatten", ["Y"], ["out"], axis=0)]
    graph = helper.make_graph(nodes, "gru", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, inits


def torch_gru(x: torch.Tensor, inits: dict[str, np.ndarray], h0: torch.Tensor | None, lbr: int,
              directions: int = 1) -> torch.Tensor:
    ys = []
    for d in range(directions):
        w, r, b = (torch.tensor(inits[k][d], dtype=torch.float64) for k in ("W", "R", "B"))
        if h0 is not None:
            h = h0[d, 0]
        elif "h0" in inits:
            h = torch.tensor(inits["h0"][d, 0], dtype=torch.float64)
        else:
            h = torch.zeros(H, dtype=torch.float64)
        out = [None] * T
        for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
            wx = w @ x[t, 0] + b[:3 * H]
            z = torch.sigmoid(wx[:H] + r[:H] @ h + b[3 * H:4 * H])
            rr = torch.sigmoid(wx[H:2 * H] + r[H:2 * H] @ h + b[4 * H:5 * H])
            if lbr:
                hh = torch.tanh(wx[2 * H:] + rr * (r[2 * H:] @ h + b[5 * H:]))
            else:
                hh = torch.tanh(wx[2 * H:] + r[2 * H:] @ (rr * h) + b[5 * H:])
            h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out))
    return torch.stack(ys, dim=1).reshape(-1)


@pytest.mark.parametrize("lbr,h0,directions", [(0, "none", 1), pytest.param(1, "const", 1, marks=pytest.mark.slow),
                                                pytest.param(0, "const", 2, marks=pytest.mark.slow)])
def test_gru_bound_above_exact_jacobians_and_onnxruntime(lbr: int, h0: str, directions: int) -> None:
    model, inits = gru_model(lbr=lbr, h0=h0, directions=directions)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    ref = torch_gru(torch.tensor(x, dtype=torch.float64), inits, None, lbr, directions).numpy()
    np.testing.assert_allclose(sess.run(None, {"X": x})[0].reshape(-1), ref, rtol=1e-4, atol=1e-5)
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert report.certified and report.upper_bound is not None, report.unbounded
    worst = worst_jacobian(lambda v: torch_gru(v.reshape(T, B, I), inits, None, lbr, directions), T * B * I)
    assert worst <= report.upper_bound <= 200 * worst
    assert_quotients_below(sess, report.upper_bound, rng)


def test_gru_hidden_state_as_input_is_bounded_on_a_region_only() -> None:
    model, inits = gru_model(h0="input")
    report = lipcheck.analyze(model, lower_bound=False, method="product", domain="X=-2,2;h0=-3,3")
    [u] = [u for u in report.unbounded if u.node == "gru"]
    assert "initial hidden state" in u.reason
    local = report.local
    assert local is not None and local.certified and local.upper_bound is not None

    def fn(v: torch.Tensor) -> torch.Tensor:
        n = T * B * I
        return torch_gru(v[:n].reshape(T, B, I), inits, torch.clamp(v[n:], -3, 3).reshape(1, 1, H), 0)

    rng = np.random.default_rng(0)
    for _ in range(60):
        v = torch.tensor(np.concatenate([rng.uniform(-2, 2, T * B * I), rng.uniform(-3, 3, H)]))
        assert float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(fn, v), 2)) <= local.upper_bound


@pytest.mark.parametrize("act,slope_fn", [("Tanh", torch.tanh), ("Relu", torch.relu)])
def test_rnn_bound_above_exact_jacobians(act: str, slope_fn) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    w = rng.standard_normal((1, H, I)).astype(np.float32)
    r = (rng.standard_normal((1, H, H)) / np.sqrt(H)).astype(np.float32)
    nodes = [helper.make_node("RNN", ["X", "W", "R", "", "", "h0"], ["Y"], hidden_size=H, activations=[act],
                              name="rnn"),
             helper.make_node("Flatten", ["Y"], ["out"], axis=0)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("X", [T, B, I]), ("h0", [1, B, H]))]
    graph = helper.make_graph(nodes, "rnn", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    report = lipcheck.analyze(model, lower_bound=False, method="product")
    assert report.certified and report.upper_bound is not None  # h_0 as an input: still global (a linear path)
    w64, r64 = torch.tensor(w[0], dtype=torch.float64), torch.tensor(r[0], dtype=torch.float64)

    def fn(v: torch.Tensor) -> torch.Tensor:
        x, h = v[:T * I].reshape(T, I), v[T * I:]
        out = []
        for t in range(T):
            h = slope_fn(w64 @ x[t] + r64 @ h)
            out.append(h)
        return torch.cat(out)

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, h0 = rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((1, B, H)).astype(np.float32)
    ref = fn(torch.tensor(np.concatenate([x.ravel(), h0.ravel()]), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(sess.run(None, {"X": x, "h0": h0})[0].reshape(-1), ref, rtol=1e-4, atol=1e-5)
    assert worst_jacobian(fn, T * I + H) <= report.upper_bound
