"""An experiment's report: `report.md`, `accuracy.png` and `training_tokens.png` beside its
results.json, drawn from it alone.

The accuracy table gives every (arm, seed) with its Wilson interval, the strict accuracy beside it,
and, with several seeds, the mean over seeds with its t interval; the comparison table gives each
arm against the baseline: the difference, the interval and p-value of one test (sign flips over
questions), the Holm adjustment over the declared family and the minimum detectable effect. The
verdict says in words which differences are significant at the 5% level after the adjustment, and
for the others which effects the experiment could have seen. The compute table gives what each
arm's runs cost (tokens generated, scored and trained, seconds per step kind), so arms can be
compared at equal compute, and the second plot puts each stage's accuracy against the training
tokens spent up to it.
"""

from __future__ import annotations

from typing import Any

from flows.reports.plots import png_bytes
from flows.reports.report import COMPUTE_NOTE, markdown_table, table_cell
from storage.fs import remove, write_bytes
from storage.paths import ExperimentLayout, join

PLOT = "accuracy.png"
TOKENS_PLOT = "training_tokens.png"


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "–"


def _interval(low: Any, high: Any) -> str:
    return f"[{_pct(low)}, {_pct(high)}]" if isinstance(low, (int, float)) else "–"


def _p(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x:.3g}" if x >= 0.001 else "<0.001"


def headline_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a reader looks at first: over seeds when there are several, else the one seed."""
    several = len(document.get("seeds", [])) > 1
    return [r for r in document["accuracy"] if (r["seed"] is None) == several]


def accuracy_table(document: dict[str, Any]) -> str:
    several = len(document.get("seeds", [])) > 1
    rows = []
    for r in headline_rows(document):
        rows.append([r["arm"], r["benchmark"], r["mode"], r["stage"] + (" (final)" if r["final"] else ""),
                     r["n"], _pct(r["accuracy"]), _interval(r["ci_low"], r["ci_high"]),
                     _pct(r["sd"]) if several else None, _pct(r["accuracy_strict"])])
    header = ["Arm", "Benchmark", "Mode", "Stage", "n", "Accuracy %",
              "95% CI (t over seeds)" if several else "95% CI (Wilson)", "SD over seeds", "Strict %"]
    if not several:
        header.pop(7)
        rows = [row[:7] + row[8:] for row in rows]
    return markdown_table(header, rows)


def per_seed_table(document: dict[str, Any]) -> str:
    rows = [[r["arm"], r["seed"], r["benchmark"], r["mode"], r["stage"], r["n"], _pct(r["accuracy"]),
             _interval(r["ci_low"], r["ci_high"]), _pct(r["accuracy_strict"])]
            for r in document["accuracy"] if r["seed"] is not None]
    return markdown_table(["Arm", "Seed", "Benchmark", "Mode", "Stage", "n", "Accuracy %", "95% CI (Wilson)", "Strict %"],
                  rows)


def comparison_table(document: dict[str, Any]) -> str:
    rows = []
    for c in document["comparisons"]:
        rows.append([f"{c['arm']} − {c['baseline']}", "pooled" if c["seed"] is None else c["seed"], c["benchmark"],
                     c["mode"], c["stage"], c["n"], f"{100 * c['diff']:+.1f}", _interval(c["ci_low"], c["ci_high"]),
                     f"{c['arm_only']}/{c['baseline_only']}", _p(c["p_value"]), _p(c.get("p_holm")),
                     c.get("family") or "none (unadjusted)", _pct(c.get("mde")), "yes" if significant(c) else "no"])
    return markdown_table(["Comparison", "Seed", "Benchmark", "Mode", "Stage", "n", "Δ pp", "95% CI (inverted test)",
                           "Only arm / only baseline", "p (sign flips)", "Holm p", "Holm family", "MDE pp",
                           "Significant"], rows)


def significant(c: dict[str, Any], alpha: float = 0.05) -> bool:
    """Below alpha after Holm; a comparison outside the declared family is never significant."""
    p = c.get("p_holm")
    return isinstance(p, (int, float)) and p < alpha


def _finding(c: dict[str, Any]) -> str:
    """What a verdict may claim: significant, or which effects the experiment could have found."""
    if significant(c):
        return "significant"
    reach = f"it had 80% power only for effects of {_pct(c['mde'])} points or more" if isinstance(
        c.get("mde"), (int, float)) else "the two never disagree, so it could size no effect"
    bounds = f"its interval rules out effects below {_pct(c['ci_low'])} and beyond {_pct(c['ci_high'])} points"
    return f"not significant; {bounds}, and {reach}"


def verdict_lines(document: dict[str, Any]) -> list[str]:
    """One sentence per headline comparison (pooled, or the only seed) at the final stage."""
    seeds = document.get("seeds", [])
    several = len(seeds) > 1
    lines = []
    for c in document["comparisons"]:
        if c["stage"] != "final" or (c["seed"] is None) != several:
            continue
        lines.append(f"- {c['arm']} vs {c['baseline']}, {c['benchmark']} {c['mode']}: "
                     f"{100 * c['diff']:+.1f} points [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}], "
                     f"Holm p {_p(c.get('p_holm'))} ({c.get('family') or 'no family'}): {_finding(c)} "
                     f"(n = {c['n']}).")
    if not lines:
        return ["- No comparison at the final stage (runs missing, or arms sharing every evaluation)."]
    if not several:
        lines.insert(0, f"One seed ({seeds[0] if seeds else '?'}): each comparison is between one trained model "
                        "per arm, not between the procedures; another seed's models may differ by more "
                        "(run several seeds to compare procedures).\n")
    return lines


def _panel_grid(count: int) -> tuple[Any, Any]:
    """A figure of `count` panels, three to a row, and its axes (flattened)."""
    from matplotlib.figure import Figure

    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _interval_bars(ys: list[float], rows: list[dict[str, Any]]) -> list[list[float]]:
    """Error-bar lengths [below, above] of each accuracy `ys[i]` from its row's interval. max(0, ...):
    a Wilson bound of 0/n or n/n can sit a rounding error past the point."""
    lows = [max(0.0, y - (r["ci_low"] if r["ci_low"] is not None else y)) for y, r in zip(ys, rows)]
    highs = [max(0.0, (r["ci_high"] if r["ci_high"] is not None else y) - y) for y, r in zip(ys, rows)]
    return [lows, highs]


def _finished(fig: Any, axes: Any, used: int) -> bytes:
    """The accuracy axis, grid and legend on the `used` panels, the rest hidden; the figure as PNG."""
    from matplotlib.ticker import PercentFormatter

    for ax in axes[:used]:
        ax.set_ylim(0, 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[used:]:
        ax.set_visible(False)
    return png_bytes(fig)


def accuracy_plot(document: dict[str, Any]) -> bytes | None:
    """Accuracy per stage, one panel per (benchmark, mode), one line per arm, with interval bars."""

    rows = headline_rows(document)
    panels = list(dict.fromkeys((r["benchmark"], r["mode"]) for r in rows))
    if not panels:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in sorted(rows, key=lambda r: (r["stage"] != "base", r["stage"]))))
    fig, axes = _panel_grid(len(panels))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for ax, (benchmark, mode) in zip(axes, panels):
        for i, arm in enumerate(arms):
            points = sorted((stages.index(r["stage"]), r) for r in rows
                            if r["arm"] == arm and r["benchmark"] == benchmark and r["mode"] == mode)
            if not points:
                continue
            shift = (i - (len(arms) - 1) / 2) * 0.08  # arms side by side, so their bars stay apart
            xs = [x + shift for x, _ in points]
            ys = [r["accuracy"] for _, r in points]
            ax.errorbar(xs, ys, yerr=_interval_bars(ys, [r for _, r in points]), marker="o", capsize=3, label=arm)
        ax.set_title(f"{benchmark} ({mode})")
        ax.set_xticks(range(len(stages)), stages)
    return _finished(fig, axes, len(panels))


def headline_compute(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The compute rows beside the headline accuracy: each arm's mean over seeds when there are
    several, else its one seed's."""
    several = len(document.get("seeds", [])) > 1
    return [r for r in document.get("compute", []) if (r["seed"] is None) == several]


def _tokens(x: Any) -> str:
    return f"{round(x):,}" if isinstance(x, (int, float)) else "–"


def _seconds_by_kind(row: dict[str, Any]) -> str:
    kinds = sorted(row["by_kind"].items(), key=lambda item: -(item[1]["seconds"] or 0))
    return ", ".join(f"{kind} {figures['seconds']:.1f}" for kind, figures in kinds if figures["seconds"]) or "–"


def compute_table(document: dict[str, Any]) -> str:
    """Per arm and seed (and the mean over seeds, with several): tokens and seconds."""
    several = len(document.get("seeds", [])) > 1
    rows = [[r["arm"], "mean" if r["seed"] is None else r["seed"], _tokens(r["tokens_generated"]),
             _tokens(r["tokens_scored"]), _tokens(r["tokens_trained"]),
             f"{r['seconds']:.1f}" if isinstance(r["seconds"], (int, float)) else "–", _seconds_by_kind(r)]
            for r in document.get("compute", []) if several or r["seed"] is not None]
    return markdown_table(["Arm", "Seed", "Tokens generated", "Tokens scored", "Tokens trained", "Seconds",
                           "Seconds by step kind"], rows)


def _token_points(document: dict[str, Any], benchmark: str, mode: str, arm: str) -> list[tuple[float, dict]]:
    """(training tokens spent up to the stage, accuracy row) of one arm's headline rows, in token order."""
    spent = {(c["arm"], c["seed"]): c.get("tokens_trained_by_stage") or {} for c in headline_compute(document)}
    points = []
    for r in headline_rows(document):
        tokens = spent.get((r["arm"], r["seed"]), {}).get(r["stage"])
        if (r["arm"], r["benchmark"], r["mode"]) == (arm, benchmark, mode) and tokens is not None:
            points.append((tokens, r))
    return sorted(points, key=lambda p: p[0])


def tokens_plot(document: dict[str, Any]) -> bytes | None:
    """Accuracy against the training tokens spent up to each stage (every earlier round's
    included), one panel per (benchmark, mode), one line per arm, with interval bars; None when no
    run recorded its training tokens."""
    from matplotlib.ticker import EngFormatter

    rows = headline_rows(document)
    panels = list(dict.fromkeys((r["benchmark"], r["mode"]) for r in rows))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = {(panel, arm): _token_points(document, *panel, arm) for panel in panels for arm in arms}
    if not any(lines.values()):
        return None
    fig, axes = _panel_grid(len(panels))
    for ax, panel in zip(axes, panels):
        for arm in arms:
            points = lines[(panel, arm)]
            if not points:
                continue
            xs, ys = [x for x, _ in points], [r["accuracy"] for _, r in points]
            ax.errorbar(xs, ys, yerr=_interval_bars(ys, [r for _, r in points]), marker="o", capsize=3, label=arm)
        ax.set_title(f"{panel[0]} ({panel[1]})")
        ax.set_xlabel("training tokens, every round so far")
        ax.set_xlim(left=0)  # from no training at all, so the arms' spending compares by eye
        ax.xaxis.set_major_formatter(EngFormatter())
    return _finished(fig, axes, len(panels))


def _compute_section(document: dict[str, Any], plot: str | None) -> str | None:
    if not document.get("compute"):
        return None  # a results.json written before runs recorded compute
    unrecorded = sorted({n for r in document["compute"] for n in r["unrecorded"]})
    note = (f" Steps without figures (not done yet, or made before steps recorded them) are not counted: "
            f"{', '.join(f'`{n}`' for n in unrecorded)}." if unrecorded else "")
    image = f"\n\n![Accuracy against training tokens]({plot})" if plot else ""
    return (f"## Compute\n\n{compute_table(document)}\n\nWhat each arm's runs cost, to compare arms at equal "
            f"compute. {COMPUTE_NOTE} `mean`: over the arm's seeds.{note}{image}")


def render(document: dict[str, Any], plot: str | None, tokens_plot_file: str | None = None) -> str:
    method = document["method"]
    runs = markdown_table(["Arm", "Seed", "Run"], [[r["arm"], r["seed"], f"`{r['run_id']}`"] for r in document["runs"]])
    arms = markdown_table(["Arm", "Overrides"], [[arm, table_cell(" ".join(items)) or "(none)"]
                                         for arm, items in document["arms"].items()])
    parts = [
        f"# Experiment `{document['experiment']}`",
        (f"File: `{document['file']}`; baseline `{document['baseline']}`; seeds {document['seeds']}; "
        f"common overrides: {' '.join(document['overrides']) or '(none)'}. "
        + ("The teacher samples again under each seed (`teacher_seed: per_seed`): its sampling variance is "
           "part of the comparison." if document.get("teacher_seed") == "per_seed" else
           "Every seed trains on one set of teacher samples (`teacher_seed: shared`): the seeds vary the "
           "student's order, dropout and sampling, not the teacher's; the comparison leaves the teacher's "
           "sampling variance out.")),
        "## Arms\n\n" + arms,
        "## Verdict\n\n" + "\n".join(verdict_lines(document)),
        "## Accuracy\n\n" + accuracy_table(document) + (f"\n\n![Accuracy per stage]({plot})" if plot else ""),
        "## Comparisons against the baseline\n\n" + comparison_table(document) + "\n\n"
        f"Differences in percentage points on the same questions; {method['difference_interval']}; "
        f"test: {method['test']}. Multiple comparisons: {method['multiple_comparisons']}; a difference "
        "is called significant when its Holm-adjusted p-value is below 0.05. MDE: the "
        f"{method.get('detectable_effect', 'not recorded')}. `final` compares each run's last stage. Stages where the arm "
        "and the baseline share one evaluation step are not compared.",
    ]
    compute = _compute_section(document, tokens_plot_file)
    if compute:
        parts.append(compute)
    if len(document.get("seeds", [])) > 1:
        parts.append("## Per seed\n\n" + per_seed_table(document))
    parts.append("## Runs\n\n" + runs)
    if document.get("missing"):
        parts.append("## Missing\n\n" + "\n".join(f"- {m}" for m in document["missing"]))
    return "\n\n".join(parts) + "\n"


def write_experiment_report(layout: ExperimentLayout, document: dict[str, Any]) -> str:
    png = accuracy_plot(document)
    if png is not None:
        write_bytes(join(layout.dir, PLOT), png)
    tokens_png = tokens_plot(document)
    if tokens_png is not None:
        write_bytes(join(layout.dir, TOKENS_PLOT), tokens_png)
    else:  # a plot an earlier report drew no longer applies
        remove(join(layout.dir, TOKENS_PLOT))
    markdown = render(document, PLOT if png is not None else None, TOKENS_PLOT if tokens_png is not None else None)
    write_bytes(layout.report, markdown.encode("utf-8"))
    return markdown
