"""``--plot FILE.png``: the report as a picture (matplotlib, the optional ``plot`` extra).

Two panels sharing the layer axis:

1. **Per-layer spectral norms**: σ upper (certified) as bars, σ exact and σ power as markers on them, and for
   convs σ reshaped (the kernel reshaped to a matrix, what ``spectral_norm`` normalizes) so the gap between
   the reshaped kernel and the real operator shows; a line at 1 and at ``max-layer-sigma`` when set.
2. **Certified bound along depth** (log axis): the running certified bound after each layer, the running
   power estimate, the final certified upper bound, the measured lower bound and the band between them where
   the true constant lies; ``max-lipschitz`` when set; where the bound becomes unbounded.

With ``--around`` results (``Report.around``) a third panel, below the two (its own value axis):

3. **Per-point values**: histograms of the per-point certified local bounds, of ‖J(x)‖₂ measured at the points
   and of ‖J‖₂ measured at the interpolates between them (log-spaced bins when the values span more than a
   decade), with lines at the global certified bound (when finite) and at the ``--domain`` region's bound (when
   the report has one); points whose local bound is unbounded are counted in the panel's title. For a classifier
   a small histogram of the certified radii sits beside it.

Without ``around`` the figure is the two panels alone.

matplotlib is imported only here, inside the functions; the figure is a bare ``matplotlib.figure.Figure``
(no pyplot state) saved through the Agg canvas. Without matplotlib, :class:`MissingExtraError` says how to
install it.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lipcheck.errors import MissingExtraError, UsageError
from lipcheck.report.model import Report
from lipcheck.report.numbers import format_number
from lipcheck.report.text import safe_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_SUFFIXES", "build_figure", "check_plot_path", "layer_labels", "require_matplotlib", "save_plot"]

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
INSTALL_HINT = "pip install 'lipcheck[plot]'"
_MAX_LABEL = 28


def require_matplotlib() -> None:
    """Raise :class:`MissingExtraError` when matplotlib cannot be imported (checked before any analysis)."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out installation
        found = False
    if not found:
        raise MissingExtraError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")


def check_plot_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`UsageError` unless ``path`` ends in a format the plot can be saved as."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {os.fspath(path)}: the file must end in {', '.join(PLOT_SUFFIXES)}")


def _plain(text: str) -> str:
    """Text for matplotlib as it reads: ``$`` escaped (no mathtext: ``$\\foo$`` in a name would fail to
    draw), control characters as visible escapes (:func:`~lipcheck.report.text.safe_text`)."""
    return safe_text(text).replace("$", r"\$")


def _label(name: str) -> str:
    name = safe_text(name)  # shortened as displayed
    return _plain(name if len(name) <= _MAX_LABEL else "…" + name[-(_MAX_LABEL - 1):])


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def build_figure(
    report: Report, *, max_lipschitz: float | None = None, max_layer_sigma: float | None = None
) -> Figure:
    """The two-panel figure of ``report``, three with ``around`` results (see the module docstring). Raises
    :class:`MissingExtraError`."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError as exc:
        raise MissingExtraError(f"--plot needs matplotlib ({exc}): {INSTALL_HINT}") from exc

    layers = report.layers
    n = len(layers)
    width = max(10.0, min(26.0, 0.6 * n + 7.0))
    around = report.around
    if around is None:
        fig = Figure(figsize=(width, 8.5), layout="constrained")
        ax_sigma, ax_bound = fig.subplots(2, 1, sharex=True, height_ratios=[1.0, 1.15])
    else:
        fig = Figure(figsize=(width, 12.0), layout="constrained")
        outer = fig.add_gridspec(2, 1, height_ratios=[2.15, 1.0])
        ax_sigma, ax_bound = outer[0].subgridspec(2, 1, height_ratios=[1.0, 1.15]).subplots(sharex=True)
        radii = [p.certified_radius for p in around.points
                 if p.certified_radius is not None and math.isfinite(p.certified_radius)]
        row = outer[1].subgridspec(1, 2, width_ratios=[3.0, 1.0]) if radii else outer[1].subgridspec(1, 1)
        _draw_around(fig.add_subplot(row[0]), report)
        if radii:
            _draw_radii(fig.add_subplot(row[1]), radii, around.radius)
    x = list(range(n))
    upper_text = format_number(report.upper_bound, none="unbounded")
    lower = report.lower_bound.value if report.lower_bound else None
    title = f"{_plain(report.model)}: certified upper bound {upper_text}"
    if lower is not None:
        title += f", lower bound {format_number(lower)}"
    if report.ratio is not None:
        title += f", ratio {format_number(report.ratio)}"
    fig.suptitle(title, fontsize=11)

    if n == 0:
        for ax in (ax_sigma, ax_bound):
            ax.text(0.5, 0.5, "No weighted (linear) layers", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        return fig

    # -- panel 1: per-layer σ
    upper = [layer.sigma_upper for layer in layers]
    ax_sigma.bar(x, upper, width=0.6, color="#4C72B0", alpha=0.45, label="σ upper (certified)", zorder=2)
    exact = [_nan(layer.sigma_exact) for layer in layers]
    if any(not math.isnan(v) for v in exact):
        ax_sigma.scatter(x, exact, marker="_", s=260, linewidths=2.2, color="black", label="σ exact", zorder=4)
    ax_sigma.scatter(x, [layer.sigma_power for layer in layers], marker="o", s=28, facecolors="none",
                     edgecolors="#DD8452", linewidths=1.5, label="σ power (estimate)", zorder=5)
    reshaped = [_nan(layer.sigma_reshaped) for layer in layers]
    if any(not math.isnan(v) for v in reshaped):
        ax_sigma.scatter(x, reshaped, marker="D", s=30, color="#55A868",
                         label="σ reshaped kernel (convs; what spectral_norm normalizes)", zorder=5)
    finite = [v for v in (*upper, *exact, *reshaped) if math.isfinite(v) and v > 0]
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    if finite and max(finite) / min(finite) > 30:
        ax_sigma.set_yscale("log")
        ax_sigma.yaxis.set_major_formatter(plain)
        ax_sigma.yaxis.set_minor_formatter(NullFormatter())
    ax_sigma.axhline(1.0, color="grey", linestyle=":", linewidth=1, zorder=1)
    if max_layer_sigma is not None:
        ax_sigma.axhline(max_layer_sigma, color="#C44E52", linestyle="--", linewidth=1.5,
                         label=f"max-layer-sigma {max_layer_sigma:g}", zorder=3)
    if n <= 24:
        for xi, value in zip(x, upper):
            ax_sigma.annotate(format_number(value), (xi, value), textcoords="offset points", xytext=(0, 3),
                              ha="center", va="bottom", fontsize=7)
    ax_sigma.set_ylabel("spectral norm σ")
    ax_sigma.set_title("Per-layer spectral norms (bars: certified; convs: operator vs reshaped kernel)",
                       fontsize=10, loc="left")
    ax_sigma.grid(axis="y", alpha=0.3)
    ax_sigma.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    # -- panel 2: the running certified bound
    cumulative = [_nan(layer.cumulative_upper) for layer in layers]
    ax_bound.plot(x, cumulative, marker="o", color="#4C72B0", linewidth=2, label="certified bound so far")
    estimate = [_nan(layer.cumulative_estimate) for layer in layers]
    ax_bound.plot(x, estimate, marker=".", linestyle="--", color="#DD8452", linewidth=1,
                  label="power estimate so far (not a certificate)")
    if report.upper_bound is not None:
        ax_bound.axhline(report.upper_bound, color="#4C72B0", linewidth=1, alpha=0.7,
                         label=f"certified upper bound {upper_text}")
    if lower is not None and lower > 0:
        ax_bound.axhline(lower, color="#55A868", linestyle="-.", linewidth=1.5,
                         label=f"measured lower bound {format_number(lower)}")
        if report.upper_bound is not None:
            ax_bound.axhspan(lower, report.upper_bound, color="#55A868", alpha=0.08,
                             label="the true constant lies in this band")
    if max_lipschitz is not None:
        ax_bound.axhline(max_lipschitz, color="#C44E52", linestyle="--", linewidth=1.5,
                         label=f"max-lipschitz {max_lipschitz:g}")
    first_unbounded = next((i for i, v in enumerate(cumulative) if math.isnan(v)), None)
    if first_unbounded is not None:
        ax_bound.axvspan(first_unbounded - 0.5, n - 0.5, color="#C44E52", alpha=0.08, label="unbounded")
        ax_bound.text(first_unbounded - 0.4, 0.95, "unbounded from here", color="#C44E52", fontsize=9,
                      va="top", transform=ax_bound.get_xaxis_transform())
    levels = [v for v in (*cumulative, *estimate, report.upper_bound, lower, max_lipschitz)
              if v is not None and math.isfinite(v) and v > 0]
    if levels:
        ax_bound.set_yscale("log")
        # clamped, so that the margins below stay finite for bounds near float64's limits (1e-200 weights, 1e300)
        low, high = max(min(levels), 1e-300), min(max(levels), 1e300)
        if high / low < 10:  # show at least a decade, centred, so that the log axis has readable ticks
            centre = math.exp((math.log(low) + math.log(high)) / 2)
            low, high = centre / math.sqrt(10), centre * math.sqrt(10)
        ax_bound.set_ylim(low / 1.25, high * 1.25)
        ax_bound.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_bound.yaxis.set_major_formatter(plain)
        ax_bound.yaxis.set_minor_formatter(NullFormatter())
    ax_bound.set_ylabel("Lipschitz bound (log)")
    ax_bound.set_title("Certified bound along depth", fontsize=10, loc="left")
    ax_bound.grid(alpha=0.3, which="both")
    ax_bound.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_bound.set_xticks(x, layer_labels([layer.name for layer in layers]), rotation=30, ha="right", fontsize=8)
    ax_bound.set_xlim(-0.6, n - 0.4)
    return fig


_COLOURS = {"local": "#4C72B0", "point": "#DD8452", "interpolate": "#55A868"}


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _draw_around(ax: Axes, report: Report) -> None:
    """Panel 3: histograms of the per-point values of ``report.around`` and lines at the certified bounds."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    around = report.around
    assert around is not None
    points = around.points
    series = [
        ("certified local bound", _finite([p.upper_bound for p in points]), "local"),
        ("‖J(x)‖ at the points (measured)", _finite([p.jacobian_norm for p in points]), "point"),
        ("‖J‖ at interpolates (measured)", _finite(list(around.interpolate_norms)), "interpolate"),
    ]
    lines: list[tuple[str, float, str, str]] = []  # label, value, colour, line style
    if report.upper_bound is not None and math.isfinite(report.upper_bound):
        lines.append((f"global certified bound {format_number(report.upper_bound)}", report.upper_bound,
                      "black", "--"))
    region = report.local.upper_bound if report.local is not None else None
    if region is not None and math.isfinite(region):
        lines.append((f"region certified bound {format_number(region)} (--domain)", region, "#C44E52", "-."))

    unbounded = sum(1 for p in points if p.upper_bound is None or not math.isfinite(p.upper_bound))
    ball = "L∞" if around.norm == "inf" else "L2"
    title = f"Per-point values: {_plural(len(points), 'point')}, {ball} balls of radius {around.radius:g}"
    if unbounded:
        title += f"; {unbounded} {'point' if unbounded == 1 else 'points'} unbounded"
        nodes = {p.unbounded_at for p in points if p.upper_bound is None and p.unbounded_at}
        if len(nodes) == 1:
            title += f" (at {_label(nodes.pop())})"
    unmeasured = sum(1 for p in points if p.jacobian_norm is None or not math.isfinite(p.jacobian_norm))
    if unmeasured:
        title += f"; ‖J(x)‖ not measured at {_plural(unmeasured, 'point')}"
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)

    data = [v for _, values, _ in series for v in values]
    if not data:
        ax.text(0.5, 0.5, "No finite per-point values", ha="center", va="center", transform=ax.transAxes)
    levels = data + [value for _, value, _, _ in lines]
    if not levels:
        ax.set_xticks([])
        return
    low, high = min(levels), max(levels)
    log = low > 0 and high / low > 10  # more than a decade: log-spaced bins on a log axis
    if data:
        lo, hi = min(data), max(data)
        count = max(10, min(40, round(3.0 * math.sqrt(max(len(v) for _, v, _ in series)))))
        if log:
            edges = np.geomspace(lo, hi, count + 1) if hi > lo else np.geomspace(lo / 1.1, lo * 1.1, count + 1)
        elif hi > lo:
            edges = np.linspace(lo, hi, count + 1)
        else:  # every value the same: bins over a narrow range around it
            half = abs(lo) * 0.05 or 0.5
            edges = np.linspace(lo - half, lo + half, count + 1)
        drawn = [(label, values, _COLOURS[key]) for label, values, key in series if values]
        # side by side within each bin (one BarContainer per series, labelled), so that no series hides another
        ax.hist([values for _, values, _ in drawn], bins=edges, color=[colour for _, _, colour in drawn],
                label=[label for label, _, _ in drawn], alpha=0.8, zorder=2)
    for label, value, colour, style in lines:
        ax.axvline(value, color=colour, linestyle=style, linewidth=1.5, label=label, zorder=3)
    if log:
        ax.set_xscale("log")
        low, high = max(low, 1e-300), min(high, 1e300)
        ax.set_xlim(low / 1.25, high * 1.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif high > low:
        margin = (high - low) * 0.05
        ax.set_xlim(low - margin, high + margin)
    ax.set_xlabel("Lipschitz constant / ‖J‖₂" + (" (log)" if log else ""))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _draw_radii(ax: Axes, radii: Sequence[float], radius: float) -> None:
    """Beside panel 3: the certified robust radii of a classifier's points, up to the balls' radius."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    top = max(radius, max(radii)) if math.isfinite(radius) and radius > 0 else max(radii)
    edges = np.linspace(0.0, top, 11) if top > 0 else np.linspace(-0.5, 0.5, 11)
    counts, _, _ = ax.hist(radii, bins=edges, color="#8172B3", alpha=0.6, edgecolor="#8172B3",
                           label="certified radius", zorder=2)
    if math.isfinite(radius) and radius > 0:
        full = sum(1 for r in radii if r >= radius)
        ax.axvline(radius, color="black", linestyle="--", linewidth=1.2,
                   label=f"ball radius {radius:g}\n({full} of {len(radii)} reach it)", zorder=3)
    ax.set_ylim(0, max(counts) * 1.4)  # room for the legend above the bars
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Certified radii (classifier)", fontsize=10, loc="left")
    ax.set_xlabel("certified robust radius")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", frameon=False)


def save_plot(
    report: Report,
    path: str | os.PathLike[str],
    *,
    max_lipschitz: float | None = None,
    max_layer_sigma: float | None = None,
) -> None:
    """Write the figure to ``path`` (``.png``, ``.svg`` or ``.pdf``); creates missing folders."""
    check_plot_path(path)
    figure = build_figure(report, max_lipschitz=max_lipschitz, max_layer_sigma=max_layer_sigma)
    target = os.fspath(path)
    try:
        folder = os.path.dirname(target)
        if folder:
            os.makedirs(folder, exist_ok=True)
        figure.savefig(target, dpi=120)
    except OSError as exc:
        from lipcheck.errors import LipcheckError

        raise LipcheckError(f"cannot write plot {target}: {exc.strerror or exc}") from exc


def layer_labels(names: Sequence[str]) -> list[str]:
    """The x-axis labels: long names shortened from the left (the end of a name is the informative part)."""
    return [_label(name) for name in names]
