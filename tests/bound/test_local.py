"""Local bounds on an input region (lipcheck.bound.local, ``--domain``): sound against dense Jacobians sampled in the
region, never above the global bound, finite where the global one is not, and the lower bound stays inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lipcheck
from lipcheck.cli.app import app
from lipcheck.errors import UsageError

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
runner = CliRunner()


class _Mlp(torch.nn.Module):
    def __init__(self, seed: int, act: str, widths: tuple[int, ...] = (4, 12, 10, 3)) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.act = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "sigmoid": torch.nn.Sigmoid(),
                    "softplus": torch.nn.Softplus()}[act]
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class _Cnn(torch.nn.Module):
    """conv → φ → conv (stride 2) → φ → linear on a 1×1×6×6 input; φ = tanh then sigmoid, or ReLU."""

    def __init__(self, seed: int, relu: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        width = 3 if relu else 2
        self.relu = relu
        self.c1 = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(width * 3 * 3, width)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu:
            h = torch.relu(self.c2(torch.relu(self.c1(x))))
        else:
            h = torch.sigmoid(self.c2(torch.tanh(self.c1(x))))
        return self.fc(torch.flatten(h, 1))


class _SqrtLog(torch.nn.Module):
    """A front end of the kind audio models have: log(sqrt(x² + 1) ... ) with a division by a variable."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.fc = torch.nn.Linear(6, 2)
        with torch.no_grad():
            for p in self.fc.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = torch.log(torch.sqrt(x) + 0.1) / (x.mean(dim=1, keepdim=True) + 0.5)
        return self.fc(feat)


def _max_jacobian(net: torch.nn.Module, lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> float:
    ref = net.double().eval()
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n):
        x = torch.from_numpy(lo + (hi - lo) * rng.random(lo.shape))
        j = torch.autograd.functional.jacobian(ref, x)
        worst = max(worst, float(torch.linalg.matrix_norm(j.reshape(-1, lo.size), ord=2)))
    return worst


@pytest.mark.parametrize("seed,act", [(0, "relu"), (1, "tanh"), (2, "sigmoid"), (3, "softplus"), (4, "tanh")])
def test_local_bound_is_sound_and_below_the_global_one_on_small_boxes(seed: int, act: str) -> None:
    net = _Mlp(seed, act).eval()
    rng = np.random.default_rng(seed)
    center = rng.standard_normal((1, 4))
    lo, hi = center - 0.1, center + 0.1
    report = lipcheck.analyze(net, input_shape=(1, 4), method="product", domain=(lo, hi), lower_bound=True,
                              lower_bound_seconds=0.5)
    local = report.local
    assert local is not None and local.certified and local.upper_bound is not None
    assert local.upper_bound <= report.upper_bound
    worst = _max_jacobian(_Mlp(seed, act), lo, hi, 200, seed)
    assert worst <= local.upper_bound
    # the lower bound is measured inside the region: never above the local certificate
    assert local.lower_bound is not None and local.lower_bound <= local.upper_bound
    if act != "relu":  # smooth activations: a small box strictly lowers their derivative's max
        assert local.upper_bound < report.upper_bound


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_bound_of_a_small_cnn_on_a_box(seed: int) -> None:
    net = _Cnn(seed).eval()
    lo, hi = np.full((1, 1, 6, 6), 0.0), np.full((1, 1, 6, 6), 1.0)
    report = lipcheck.analyze(net, input_shape=(1, 1, 6, 6), method="product", domain=(0.0, 1.0),
                              lower_bound=False)
    local = report.local
    assert local is not None and local.upper_bound is not None and local.upper_bound <= report.upper_bound
    assert _max_jacobian(_Cnn(seed), lo, hi, 100, seed) <= local.upper_bound
    assert dict(local.region) == {"input": (0.0, 1.0)}


def test_sqrt_log_front_end_is_bounded_away_from_zero_and_named_near_it() -> None:
    net = _SqrtLog().eval()
    report = lipcheck.analyze(net, input_shape=(1, 6), domain=(0.5, 2.0), lower_bound=False)
    assert report.upper_bound is None  # Sqrt, Log and Div by a variable have no global constant
    local = report.local
    assert local is not None and local.upper_bound is not None
    lo, hi = np.full((1, 6), 0.5), np.full((1, 6), 2.0)
    assert _max_jacobian(_SqrtLog(), lo, hi, 200, 0) <= local.upper_bound
    changed = {c["op"] for c in local.changed}
    assert {"Sqrt", "Log", "Div"} <= changed
    near = lipcheck.analyze(net, input_shape=(1, 6), domain=(0.0, 2.0), lower_bound=False).local
    assert near is not None and near.upper_bound is None and not near.certified
    assert near.unbounded and near.unbounded[0].op == "Sqrt" and "range" in near.unbounded[0].reason


def test_attention_sample_gets_a_finite_local_bound_where_the_global_one_is_unbounded() -> None:
    report = lipcheck.analyze(str(SAMPLES / "attention.onnx"), domain=(-1.0, 1.0), lower_bound=True,
                              lower_bound_seconds=1.0)
    assert report.upper_bound is None and report.local is not None
    local = report.local
    assert local.upper_bound is not None and local.lower_bound is not None
    assert 0 < local.lower_bound <= local.upper_bound
    assert {c["op"] for c in local.changed} == {"MatMul"}


def test_domain_parsing_errors_are_one_line() -> None:
    graph = lipcheck.load(str(SAMPLES / "mlp.onnx"))
    from lipcheck.bound.local import parse_domain

    assert parse_domain("-1,1", graph) == {"input": (-1.0, 1.0)}
    assert parse_domain({"input": (0, 2)}, graph) == {"input": (0.0, 2.0)}
    for bad, match in (("1,-1", "LO < HI"), ("0,nan", "LO < HI"), ("a,b", "two numbers"), ("1", "LO,HI"),
                       ("nope=0,1", "no input 'nope'")):
        with pytest.raises(UsageError, match=match):
            parse_domain(bad, graph)


def test_cli_domain_table_json_and_bad_input() -> None:
    model = str(SAMPLES / "mlp.onnx")
    result = runner.invoke(app, ["analyze", model, "--domain", "-0.5,0.5", "--no-lower-bound", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert "Local bound on the region" in result.stdout and "input ∈ [-0.5, 0.5]" in result.stdout
    result = runner.invoke(app, ["analyze", model, "--domain", "input=0,1", "--no-lower-bound", "--no-progress",
                                 "-f", "json"])
    data = json.loads(result.stdout)
    assert data["local"]["region"] == {"input": [0.0, 1.0]} and data["local"]["certified"] is True
    assert data["local"]["upper_bound"] <= data["upper_bound"]
    bad = runner.invoke(app, ["analyze", model, "--domain", "1,0", "--no-progress"])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0 and "LO < HI" in bad.stderr


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_around_points_local_bounds_are_below_the_global_one_and_sound(kind: str) -> None:
    net, shape = ((_Mlp(7, "relu").eval(), (1, 4)) if kind == "mlp" else (_Cnn(3, relu=True).eval(), (1, 1, 6, 6)))
    rng = np.random.default_rng(11)
    points = rng.standard_normal((100,) + shape[1:])
    radius = 0.1
    report = lipcheck.analyze(net, input_shape=shape, method="product", around=points, radius=radius,
                              lower_bound=False)
    around = report.around
    assert around is not None and len(around.points) == 100
    ref = (_Mlp(7, "relu") if kind == "mlp" else _Cnn(3, relu=True)).double().eval()
    for p in around.points:
        assert p.upper_bound is not None and p.upper_bound < report.upper_bound  # strictly below the global bound
        assert p.jacobian_norm is not None and p.jacobian_norm <= p.upper_bound
        assert p.margin is not None and p.certified_radius is not None and 0 <= p.certified_radius <= radius
    # ratios of pairs inside each ball (the L2 ball: its bound holds there) never exceed that ball's bound
    def in_ball(shape: tuple[int, ...]) -> torch.Tensor:
        d = rng.standard_normal(shape)
        return torch.from_numpy(d / np.linalg.norm(d) * radius * rng.random() ** (1.0 / d.size))

    for p in around.points[:20]:
        x = torch.from_numpy(points[p.index][None])
        for _ in range(20):
            d1, d2 = in_ball(x.shape), in_ball(x.shape)
            with torch.no_grad():
                diff = float(torch.linalg.vector_norm(ref(x + d1) - ref(x + d2)))
            assert diff <= p.upper_bound * float(torch.linalg.vector_norm(d1 - d2)) * (1 + 1e-9)
    assert len(around.interpolate_norms) == 32


def test_around_errors_are_one_line(tmp_path: Path) -> None:
    model = str(SAMPLES / "mlp.onnx")
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    for args, match in ((["--around", str(tmp_path / "bad.npy"), "--radius", "0.1"], "do not hold points"),
                        (["--around", str(tmp_path / "missing.npy"), "--radius", "0.1"], "no such file"),
                        (["--radius", "0.1"], "go together"),
                        (["--around", str(tmp_path / "bad.npy"), "--radius", "-1"], "above 0")):
        result = runner.invoke(app, ["analyze", model, "--no-progress", *args])
        assert result.exit_code == 2 and match in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in SAMPLES.glob("*.onnx") if p.stem != "dynamic_batch"))
def test_every_sample_model_local_bound_is_above_what_is_measured_inside(name: str) -> None:
    graph = lipcheck.load(str(SAMPLES / f"{name}.onnx"))
    domain = {i.name: (-1.0, 1.0) for i in graph.inputs}
    report = lipcheck.analyze(graph, method="product", domain=domain, lower_bound=True, lower_bound_seconds=0.3,
                              exact_limit=0)
    local = report.local
    assert local is not None
    if report.upper_bound is not None:
        assert local.upper_bound is not None and local.upper_bound <= report.upper_bound
    if local.upper_bound is not None and local.lower_bound is not None:
        assert local.lower_bound <= local.upper_bound
    if local.upper_bound is None:
        assert local.unbounded  # named, never silently dropped


def test_check_reads_the_domain_from_the_config_and_reports_the_local_bound(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copy(SAMPLES / "mlp.onnx", tmp_path / "mlp.onnx")
    (tmp_path / "pyproject.toml").write_text('[tool.lipcheck]\nmodels = ["mlp.onnx"]\nmethod = "product"\n'
                                             'domain = {input = [0, 1]}\n')
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check", "-f", "json", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["local"]["region"] == {"input": [0.0, 1.0]} and data["local"]["certified"]
    (tmp_path / "pyproject.toml").write_text('[tool.lipcheck]\nmodels = ["mlp.onnx"]\ndomain = [1, 0]\n')
    bad = runner.invoke(app, ["check", "--no-progress"])
    assert bad.exit_code == 2 and "tool.lipcheck.domain" in bad.stderr and "LO < HI" in bad.stderr


class _Gate(torch.nn.Module):
    """An LSTM-style gate: σ(Ax)·tanh(Bx), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a, self.b, self.o = torch.nn.Linear(5, 6), torch.nn.Linear(5, 6), torch.nn.Linear(6, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.sigmoid(self.a(x)) * torch.tanh(self.b(x)))


def test_gates_get_a_global_constant_from_their_bounded_ranges() -> None:
    report = lipcheck.analyze(_Gate().eval(), input_shape=(1, 5), lower_bound=False)
    product, ranges = report.bounds
    assert product.value is None and ranges.method == "ranges" and ranges.certified
    assert report.upper_bound == ranges.value and report.method == "ranges"
    # no Jacobian anywhere, far points included, exceeds it
    ref = _Gate().double().eval()
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 10.0):
        for _ in range(100):
            x = torch.from_numpy(scale * rng.standard_normal((1, 5)))
            j = torch.autograd.functional.jacobian(ref, x).reshape(2, 5)
            assert float(torch.linalg.matrix_norm(j, ord=2)) <= ranges.value
    assert any("bounded through the ranges" in n for n in report.notes)
    # the product method alone stays unbounded
    assert lipcheck.analyze(_Gate().eval(), input_shape=(1, 5), lower_bound=False, method="product").upper_bound \
        is None


def _if_model() -> Any:
    """y = 5x if k == 16000 else 2x: the branch depends on an integer input (silero-vad's sample-rate If)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["x", f"s_{name}"], [f"y_{name}"])], name, [],
            [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [1, 4])],
            [numpy_helper.from_array(np.array(scale, dtype=np.float32), f"s_{name}")])

    nodes = [helper.make_node("Equal", ["k", "rate"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 5.0), else_branch=branch("else", 2.0))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                     helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pinning_an_integer_input_folds_the_if_that_depends_on_it(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "if.onnx"
    onnx.save(_if_model(), path)
    free = lipcheck.analyze(str(path), lower_bound=False)
    assert free.upper_bound is None and free.unbounded[0].op == "If"
    for rate, scale in ((16000, 5.0), (8000, 2.0)):
        report = lipcheck.analyze(str(path), domain=f"x=-1,1;k={rate},{rate}", lower_bound=True,
                                  lower_bound_seconds=0.5)
        assert report.upper_bound == pytest.approx(scale, rel=1e-6) and report.local is not None
        assert report.local.upper_bound == pytest.approx(scale, rel=1e-6)
        assert report.lower_bound is not None and report.lower_bound.value == pytest.approx(scale, rel=1e-4)
        assert any(f"k = {rate}" in n for n in report.notes)
    with pytest.raises(UsageError, match="only integer inputs"):
        lipcheck.analyze(str(path), domain="x=1,1;k=16000,16000", lower_bound=False)


def test_a_runtime_if_keeps_the_local_and_the_blocks_bounds_unbounded(tmp_path: Path) -> None:
    """Hostile case: the If's condition varies over the region (k in a range): no method may certify the branch."""
    import onnx

    path = tmp_path / "if.onnx"
    onnx.save(_if_model(), path)
    report = lipcheck.analyze(str(path), domain="x=-1,1;k=0,20000", lower_bound=False, method="blocks")
    assert report.upper_bound is None and not report.certified
    assert all(b.value is None for b in report.bounds)
    assert report.local is not None and report.local.upper_bound is None
    assert report.local.unbounded and report.local.unbounded[0].op == "If"


def test_a_local_rule_without_a_finite_input_range_says_so_before_the_global_reason() -> None:
    """Mul(exp(exp(exp(x))), x) on [-100, 100]: the Mul's local rule has no finite range for its first operand; its
    reason names that input and its range, not only "no global Lipschitz constant"."""
    from onnx import helper

    from tests.helpers import float_model

    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Exp", ["a"], ["b"]),
             helper.make_node("Exp", ["b"], ["c"]), helper.make_node("Mul", ["c", "x"], ["y"], name="mul")]
    report = lipcheck.analyze(float_model(nodes, {}, [1, 4], "y", [1, 4]), lower_bound=False, domain="-100,100",
                              method="product")
    assert report.local is not None and report.local.upper_bound is None
    mul = next(u for u in report.local.unbounded if u.node == "mul")
    assert "input 'c' has range" in mul.reason and "inf" in mul.reason and "global reason" in mul.reason
