"""The run report's figures, returned as PNG bytes (the caller writes them through storage).

Figures are drawn on matplotlib's Agg canvas without pyplot, so nothing global (the backend, the
current figure) changes in the process that draws them; matplotlib is imported inside each function
to keep the CLI fast.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

BASE_X = -1  # where the untrained student sits on the iteration axis
STRATEGY_COLOURS = {"cot": "#4c72b0", "l2m": "#dd8452", "pot": "#55a868"}
OTHER_COLOURS = ["#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
MODE_STYLES = {"rationale": ("#4c72b0", "o"), "label": ("#c44e52", "s")}


def png_bytes(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def strategy_colour(name: str, order: list[str]) -> str:
    if name in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[name]
    others = [s for s in order if s not in STRATEGY_COLOURS]
    return OTHER_COLOURS[others.index(name) % len(OTHER_COLOURS)] if name in others else OTHER_COLOURS[-1]


def _iteration_label(x: int) -> str:
    return "base" if x == BASE_X else str(x)


def _plot_mode(ax: Any, mode: str, points: list[tuple], index: int) -> None:
    """One mode's accuracy: iterations as a solid line, the base model as a hollow marker joined to
    iteration 0 by a dotted line (it was not trained, so it is not part of the sequence). A point
    `(x, y, low, high)` carries its interval, drawn as an error bar."""
    colour, marker = MODE_STYLES.get(mode, (OTHER_COLOURS[index % len(OTHER_COLOURS)], "^"))
    points = sorted(points)
    base = [p for p in points if p[0] == BASE_X]
    trained = [p for p in points if p[0] != BASE_X]
    if trained:
        ax.plot([p[0] for p in trained], [p[1] for p in trained], color=colour, marker=marker, label=mode)
    if base:
        ax.plot([base[0][0]], [base[0][1]], color=colour, marker=marker, markerfacecolor="white",
                linestyle="none", label=None if trained else mode)
        if trained and trained[0][0] == 0:
            ax.plot([BASE_X, 0], [base[0][1], trained[0][1]], color=colour, linestyle=":")
    shift = 0.06 * (1 if index % 2 else -1)  # the second mode's bars beside the first's
    for p in points:
        if len(p) == 4 and p[2] is not None and p[3] is not None:
            ax.errorbar([p[0] + shift], [p[1]], yerr=[[max(0.0, p[1] - p[2])], [max(0.0, p[3] - p[1])]],
                        color=colour, capsize=3, linewidth=0.8, alpha=0.6)
    offset = (0, 6) if index % 2 == 0 else (0, -12)  # second mode's labels below, so close lines stay legible
    for p in points:
        ax.annotate(f"{100 * p[1]:.1f}", (p[0], p[1]), textcoords="offset points", xytext=offset, ha="center",
                    fontsize=7, color=colour)


def accuracy_plot(series: dict[str, dict[str, list[tuple[int, float]]]]) -> bytes:
    """Accuracy per iteration, one panel per benchmark, one line per mode.

    `series`: {benchmark: {mode: [(iteration, accuracy in [0, 1][, low, high]), ...]}}, iteration -1 =
    base; low and high, when given, are the accuracy's interval (error bars).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    names = list(series)
    cols = min(len(names), 3) or 1
    rows = (len(names) + cols - 1) // cols or 1
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        xs = sorted({p[0] for points in series[name].values() for p in points})
        for index, (mode, points) in enumerate(series[name].items()):
            _plot_mode(ax, mode, points, index)
        ax.set_title(name)
        ax.set_xticks(xs, [_iteration_label(x) for x in xs])
        ax.set_xlim(min(xs, default=0) - 0.5, max(xs, default=0) + 0.5)
        top = max((max(p[1], p[3] if len(p) == 4 and p[3] is not None else p[1])
                   for points in series[name].values() for p in points), default=1.0)
        ax.set_ylim(0, min(1.05, top * 1.25 + 0.05))  # a benchmark near 0% still shows its changes
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("iteration")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return png_bytes(fig)


def _stacked_bar(ax: Any, x: float, width: float, shares: dict[str, float], strategies: list[str]) -> None:
    bottom = 0.0
    for name in strategies:
        value = shares.get(name, 0.0)
        if value <= 0:
            continue
        ax.bar(x, value, width, bottom=bottom, color=strategy_colour(name, strategies))
        if value >= 0.08:  # label segments tall enough to hold text
            ax.text(x, bottom + value / 2, f"{100 * value:.0f}%", ha="center", va="center", fontsize=7,
                    color="white")
        bottom += value


def strategy_mix_plot(mixes: list[tuple[int, dict[str, dict[str, float]]]], strategies: list[str],
                      sources: list[str]) -> bytes:
    """Stacked bars of strategy shares: per iteration one bar per data source, in `sources` order.

    `mixes`: [(iteration, {source label: {strategy: share in [0, 1]}}), ...] where the source labels
    are e.g. "teacher (P_L)", "student (P_SM)", "train (P_train)"; a missing source is marked "none".
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    width, gap = 0.8, 1.0
    group = len(sources) * width + gap
    fig = Figure(figsize=(min(16.0, max(4.5, 1.0 + group * len(mixes) * 0.75)), 3.8), layout="constrained")
    ax = fig.subplots()
    ticks, labels = [], []
    for g, (iteration, by_source) in enumerate(mixes):
        for s, source in enumerate(sources):
            x = g * group + s * width
            ticks.append(x)
            labels.append(source.replace(" ", "\n"))
            shares = by_source.get(source)
            if not shares:
                ax.text(x, 0.02, "none", ha="center", va="bottom", rotation=90, fontsize=8, color="grey")
                continue
            _stacked_bar(ax, x, width * 0.9, shares, strategies)
        ax.text(g * group + (len(sources) - 1) * width / 2, 1.04, f"iteration {iteration}", ha="center",
                fontsize=9)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("share of rows")
    handles = [Patch(color=strategy_colour(name, strategies), label=name) for name in strategies]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="strategy")
    ax.set_title("Strategy mix: teacher data, student samples, training data")
    return png_bytes(fig)
