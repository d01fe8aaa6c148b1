"""``--plot``: the figure's content, the file, and the message when matplotlib is missing."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from lipcheck.errors import MissingExtraError, UsageError
from lipcheck.report import plot
from tests.gate.reports import layer, report


def test_missing_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib (or a submodule) -> ImportError
    with pytest.raises(MissingExtraError, match=r"--plot needs matplotlib.*pip install 'lipcheck\[plot\]'"):
        plot.require_matplotlib()
    with pytest.raises(MissingExtraError, match=r"pip install 'lipcheck\[plot\]'"):
        plot.build_figure(report(2.0))


def test_plot_file_type_is_checked() -> None:
    plot.check_plot_path("a/b.PNG")
    with pytest.raises(UsageError, match=r"--plot out.jpg: the file must end in .png, .svg, .pdf"):
        plot.check_plot_path("out.jpg")


def test_long_layer_names_keep_their_end() -> None:
    [label] = plot.layer_labels(["/encoder/layers.11/attention/output/dense/MatMul"])
    assert label.startswith("…") and label.endswith("dense/MatMul") and len(label) == 28


def test_figure_shows_sigmas_running_bound_lower_bound_and_limits() -> None:
    pytest.importorskip("matplotlib")
    layers = [layer("conv1", 4.5, op="Conv", reshaped=2.4, cumulative=4.5), layer("pool", 0.0625, cumulative=0.28),
              layer("fc", 2.069, cumulative=2.641)]
    figure = plot.build_figure(report(2.641, layers, lower=0.21), max_lipschitz=3.0, max_layer_sigma=4.0)
    sigma_ax, bound_ax = figure.axes
    assert "certified upper bound 2.641, lower bound 0.2100, ratio 12.58" in figure.get_suptitle()
    sigma_labels = sigma_ax.get_legend_handles_labels()[1]
    assert {"σ upper (certified)", "σ exact", "σ power (estimate)", "max-layer-sigma 4"} <= set(sigma_labels)
    assert any(label.startswith("σ reshaped kernel") for label in sigma_labels)
    assert sigma_ax.get_yscale() == "log"  # 0.0625 .. 4.5
    bound_labels = bound_ax.get_legend_handles_labels()[1]
    assert {"certified bound so far", "certified upper bound 2.641", "measured lower bound 0.2100",
            "max-lipschitz 3"} <= set(bound_labels)
    assert bound_ax.get_yscale() == "log"
    assert [t.get_text() for t in bound_ax.get_xticklabels()] == ["conv1", "pool", "fc"]
    [line] = [ln for ln in bound_ax.get_lines() if ln.get_label() == "certified bound so far"]
    assert list(line.get_ydata()) == [4.5, 0.28, 2.641]


def test_unbounded_model_is_marked() -> None:
    pytest.importorskip("matplotlib")
    layers = [layer("q", 2.5, cumulative=935.0), layer("o", 2.4)]
    layers[1] = dataclasses.replace(layers[1], cumulative_upper=None, cumulative_estimate=None)
    figure = plot.build_figure(report(None, layers, lower=None))
    bound_ax = figure.axes[1]
    assert "unbounded from here" in [t.get_text() for t in bound_ax.texts]
    assert "certified upper bound unbounded" in figure.get_suptitle()


def test_save_plot_writes_png_svg_pdf(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = report(2.5)
    plot.save_plot(rep, tmp_path / "sub" / "p.png")
    assert (tmp_path / "sub" / "p.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    plot.save_plot(rep, tmp_path / "p.svg")
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:500]
    plot.save_plot(report(1.0, layers=[]), tmp_path / "empty.pdf")
    assert (tmp_path / "empty.pdf").read_bytes().startswith(b"%PDF")
