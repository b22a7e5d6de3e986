"""`siked plan EXPERIMENT --power [--pilot RESULTS.json] [--effect POINTS]`: what an experiment can
detect before it runs.

For each comparison at the final stage (every arm but the baseline, on each benchmark and mode), the
minimum detectable effect at 80% power and alpha 0.05 from the planned questions and seeds; with
`--effect`, the questions needed for that effect at several seed counts. The discordance (share of
(seed, question) pairs where two arms disagree) and its repetition across seeds come from a pilot
experiment's results.json, or from stated defaults (distill.power).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.power import (
    DEFAULT_AGREEMENT,
    DEFAULT_DISCORDANCE,
    detectable_effect,
    planned_variance,
    questions_needed,
)

SEED_COUNTS = (1, 2, 3, 5, 10)


def pilot_rates(path: str) -> tuple[float, float | None]:
    """(discordance, seed agreement or None) of a pilot results.json: pooled over its comparisons at
    the final stage (the per-seed ones where it has no pooled comparison)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [c for c in document["comparisons"] if c["stage"] == "final"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--pilot {path}: not an experiment's results.json ({exc})") from None
    pooled = [c for c in rows if c["seed"] is None]
    rows = pooled or rows
    if not rows:
        raise ConfigError(f"--pilot {path}: no comparison at the final stage to measure discordance on")
    pairs = sum(c["n"] * c.get("seeds", 1) for c in rows)
    discordant = sum(c["arm_only"] + c["baseline_only"] for c in rows)
    agreements = [c["seed_agreement"] for c in pooled if c.get("seed_agreement") is not None]
    return discordant / pairs, (sum(agreements) / len(agreements) if agreements else None)


def _comparisons(path: str, overrides: list[str]) -> tuple[Any, list[tuple[str, str, str, int | None]]]:
    """The experiment, and (arm, benchmark, mode, questions) of each planned final comparison."""
    from flows.commands.plan import problem_count
    from flows.experiment_file import read_experiment
    from flows.run_setup import run_layout
    from tasks.pipeline import eval_set_label, pipeline_steps

    experiment = read_experiment(path, overrides)
    out = []
    first: dict = {}
    for r in experiment.runs:
        first.setdefault(r.arm, r.cfg)  # each arm's first seed: the seeds differ in nothing evaluated
    for arm, cfg in first.items():
        if arm == experiment.spec.baseline:
            continue
        steps = pipeline_steps(cfg, run_layout(cfg))
        for ref in cfg.eval.benchmarks:
            label = eval_set_label(ref)
            questions = problem_count(steps[f"problems/eval-{label}"], ref, cfg)
            out += [(arm, label, mode, questions) for mode in cfg.eval.modes]
    return experiment, out


def _assumptions(discordance: float, agreement: float | None, pilot: str | None, seeds: int) -> tuple[list[str], float]:
    rho = DEFAULT_AGREEMENT if agreement is None else agreement
    source = f"measured in {pilot}" if pilot else "default: SIKeD against one-pass distillation measured 25%"
    lines = [f"assumed discordance: {100 * discordance:.1f}% of (seed, question) pairs ({source})",
             f"assumed seed agreement rho: {rho:.2f} ("
             + ("measured in the pilot" if agreement is not None else "an assumption, not a measurement")
             + ("; it does not enter with one seed" if seeds == 1 else "") + ")"]
    if seeds == 1:
        lines.append("one seed: the effect is between one trained model per arm; how much another seed's "
                     "models would differ is not in these figures")
    return lines, rho


def power_plan(path: str, overrides: list[str], pilot: str | None, effect_points: float | None) -> str:
    experiment, comparisons = _comparisons(path, overrides)
    seeds = len(experiment.spec.seeds)
    discordance, agreement = pilot_rates(pilot) if pilot else (DEFAULT_DISCORDANCE, None)
    lines, rho = _assumptions(discordance, agreement, pilot, seeds)
    lines.insert(0, f"power of experiment {experiment.spec.name}: {seeds} seed(s), two-sided alpha 0.05, 80% power")
    for arm, benchmark, mode, questions in comparisons:
        name = f"  {arm} − {experiment.spec.baseline}, {benchmark} {mode}"
        if effect_points is not None:
            needed = ", ".join(f"{questions_needed(effect_points / 100, planned_variance(discordance, s, rho)):,} "
                               f"questions at {s} seed{'s' if s > 1 else ''}" for s in SEED_COUNTS)
            lines.append(f"{name}: a {effect_points:g}-point effect needs {needed} "
                         f"(planned: {questions if questions is not None else '?'} at {seeds})")
        elif questions is None:
            lines.append(f"{name}: questions unknown until the set exists")
        else:
            mde = detectable_effect(planned_variance(discordance, seeds, rho), questions)
            lines.append(f"{name}: {questions} questions x {seeds} seed(s): minimum detectable effect "
                         f"{100 * mde:.1f} points")
    return "\n".join(lines)


def check_effect(points: float | None) -> None:
    if points is not None and not (math.isfinite(points) and 0 < points < 100):
        raise ConfigError(f"--effect {points}: an effect in accuracy points, between 0 and 100")
