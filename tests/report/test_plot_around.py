"""``--plot`` with ``--around``: the third panel (histograms of the per-point values), the certified radii beside
it for a classifier, unbounded points counted in its title, and the figure unchanged without ``around``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from lipcheck.report import plot
from lipcheck.report.model import AroundResult, LocalBound, PointResult, Report
from tests.gate.reports import report

pytest.importorskip("matplotlib")

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
LOCAL = "certified local bound"
AT_POINTS = "‖J(x)‖ at the points (measured)"
AT_INTERPOLATES = "‖J‖ at interpolates (measured)"


def _with_around(points: list[PointResult], interpolates: tuple[float, ...] = (), *, upper: float | None = 250.0,
                 region: float | None = None, radius: float = 0.1, norm: str = "2") -> Report:
    local = None
    if region is not None:
        local = LocalBound(region={"x": (0.0, 1.0)}, upper_bound=region, certified=True, lower_bound=None,
                           lower_points=0)
    return dataclasses.replace(report(upper), local=local,
                               around=AroundResult(radius=radius, norm=norm, points=tuple(points),
                                                   interpolate_norms=interpolates))


def _spread(count: int, unbounded: int = 0, unmeasured: int = 0) -> list[PointResult]:
    """Local bounds 0.5 .. 100 (more than a decade), ‖J(x)‖ below them; the first ``unbounded`` have no bound."""
    rng = np.random.default_rng(0)
    points = []
    for k in range(count):
        upper = None if k < unbounded else float(10 ** rng.uniform(-0.3, 2.0))
        jnorm = None if unbounded <= k < unbounded + unmeasured else float(10 ** rng.uniform(-1.0, 0.3))
        points.append(PointResult(k, upper, jnorm, unbounded_at="/Div" if upper is None else None))
    return points


def _counts(ax: Any) -> dict[str, float]:
    """Each bar series of ``ax`` by its legend label (hist puts it on the series' first bar): the sum of its bar
    heights, its number of values."""
    return {c.patches[0].get_label(): sum(bar.get_height() for bar in c.patches) for c in ax.containers}


def _vlines(ax: Any) -> dict[str, float]:
    return {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()}


def test_histogram_panel_counts_values_marks_bounds_and_unbounded_points() -> None:
    interpolates = tuple(float(v) for v in np.geomspace(0.2, 3.0, 32))
    rep = _with_around(_spread(40, unbounded=3, unmeasured=2), interpolates, upper=250.0, region=120.0)
    figure = plot.build_figure(rep)
    assert len(figure.axes) == 3  # no classifier: no certified radii
    hist_ax = figure.axes[2]
    assert _counts(hist_ax) == {LOCAL: 37, AT_POINTS: 38, AT_INTERPOLATES: 32}
    lines = _vlines(hist_ax)
    assert lines == {"global certified bound 250.0": 250.0, "region certified bound 120.0 (--domain)": 120.0}
    assert {LOCAL, AT_POINTS, AT_INTERPOLATES, *lines} == set(hist_ax.get_legend_handles_labels()[1])
    title = hist_ax.get_title(loc="left")
    assert "40 points, L2 balls of radius 0.1" in title
    assert "3 points unbounded (at /Div)" in title
    assert "‖J(x)‖ not measured at 2 points" in title
    assert hist_ax.get_xscale() == "log"  # 0.1 .. 250
    low, high = hist_ax.get_xlim()
    assert low < 0.1 and high > 250.0  # every value and both lines are in view
    [local] = [c for c in hist_ax.containers if c.patches[0].get_label() == LOCAL]
    edges = [bar.get_x() for bar in local.patches]
    assert edges[1] / edges[0] == pytest.approx(edges[2] / edges[1], rel=1e-6)  # log-spaced bins


def test_values_within_a_decade_get_linear_bins_and_one_unbounded_point_is_singular() -> None:
    points = [PointResult(0, None, 1.5, unbounded_at="/Sqrt")] + [
        PointResult(k, 2.0 + 0.1 * k, 1.0 + 0.05 * k) for k in range(1, 12)]
    figure = plot.build_figure(_with_around(points, upper=None, norm="inf"))
    hist_ax = figure.axes[2]
    assert hist_ax.get_xscale() == "linear"
    assert _counts(hist_ax) == {LOCAL: 11, AT_POINTS: 12}  # no interpolates: no such series
    assert _vlines(hist_ax) == {}  # the global bound is unbounded: no line
    title = hist_ax.get_title(loc="left")
    assert "L∞ balls" in title and "1 point unbounded (at /Sqrt)" in title
    assert "unbounded" in figure.get_suptitle()  # the first two panels as before


def test_every_point_unbounded_and_nothing_measured_does_not_crash(tmp_path: Path) -> None:
    points = [PointResult(k, None if k % 2 else float("inf"), None) for k in range(3)]
    rep = _with_around(points, upper=None)
    figure = plot.build_figure(rep)
    hist_ax = figure.axes[2]
    assert "3 points unbounded" in hist_ax.get_title(loc="left")
    assert "No finite per-point values" in [t.get_text() for t in hist_ax.texts]
    assert _counts(hist_ax) == {}
    plot.save_plot(rep, tmp_path / "none.png")
    assert (tmp_path / "none.png").stat().st_size > 0


def test_identical_values_and_zeros_do_not_crash() -> None:
    same = [PointResult(k, 3.0, 0.0 if k == 0 else 3.0) for k in range(5)]
    hist_ax = plot.build_figure(_with_around(same, (0.0, 3.0), upper=3.0)).axes[2]
    assert hist_ax.get_xscale() == "linear"  # a zero: no log axis
    assert _counts(hist_ax) == {LOCAL: 5, AT_POINTS: 5, AT_INTERPOLATES: 2}
    one = [PointResult(0, 4.0, 4.0)]
    hist_ax = plot.build_figure(_with_around(one, upper=4.0)).axes[2]
    assert _counts(hist_ax) == {LOCAL: 1, AT_POINTS: 1}


def test_classifier_radii_get_a_small_histogram_beside_the_panel() -> None:
    points = [PointResult(k, 5.0, 2.0, margin=0.1 * k, certified_radius=min(0.02 * k, 0.1)) for k in range(8)]
    points.append(PointResult(8, None, 2.0, margin=0.3, unbounded_at="/Div"))  # no bound: no radius
    figure = plot.build_figure(_with_around(points, upper=5.0))
    assert len(figure.axes) == 4
    hist_ax, radii_ax = figure.axes[2:]
    assert _counts(hist_ax) == {LOCAL: 8, AT_POINTS: 9}
    assert _counts(radii_ax) == {"certified radius": 8}
    assert "ball radius 0.1\n(3 of 8 reach it)" in radii_ax.get_legend_handles_labels()[1]
    assert radii_ax.get_xlim()[1] >= 0.1


def test_without_around_the_figure_keeps_its_two_panels() -> None:
    figure = plot.build_figure(report(2.5))
    assert len(figure.axes) == 2
    assert tuple(figure.get_size_inches()) == (10.0, 8.5)


def test_model_without_layers_still_gets_the_histogram() -> None:
    rep = dataclasses.replace(_with_around(_spread(4)), layers=())
    figure = plot.build_figure(rep)
    assert len(figure.axes) == 3
    assert _counts(figure.axes[2])[LOCAL] == 4


def test_save_plot_with_around_writes_png_and_svg(tmp_path: Path) -> None:
    rep = _with_around(_spread(10, unbounded=1), (0.5, 0.7))
    plot.save_plot(rep, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    plot.save_plot(rep, tmp_path / "a.svg")
    svg = (tmp_path / "a.svg").read_text(encoding="utf-8")
    assert "<svg" in svg[:500]
    assert "1 point unbounded" in svg  # text stays text in the SVG


def test_cli_analyze_around_plot_on_the_sample_mlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.cli.app import app

    captured: list[Report] = []
    real = plot.build_figure

    def spy(rep: Report, **kwargs: Any) -> Any:
        captured.append(rep)
        return real(rep, **kwargs)

    monkeypatch.setattr(plot, "build_figure", spy)
    points = np.random.default_rng(0).standard_normal((3, 1, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    result = CliRunner().invoke(app, [
        "analyze", str(SAMPLES / "mlp.onnx"), "--around", str(tmp_path / "points.npy"), "--radius", "0.05",
        "--method", "product", "--no-lower-bound", "--plot", str(tmp_path / "mlp.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlp.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    [rep] = captured
    assert rep.around is not None and len(rep.around.points) == 3
    figure = real(rep)
    hist_ax = figure.axes[2]
    counts = _counts(hist_ax)
    assert counts[LOCAL] == sum(p.upper_bound is not None for p in rep.around.points) == 3
    assert counts[AT_POINTS] == 3
    assert counts[AT_INTERPOLATES] == len(rep.around.interpolate_norms)
    assert any(label.startswith("global certified bound") for label in _vlines(hist_ax))
    if any(p.certified_radius is not None for p in rep.around.points):  # mlp.onnx: 10 logits, a classifier
        assert len(figure.axes) == 4
