"""What each step's outputs cost, as the step recorded it, and a run's totals.

A step that computes records its figures in the manifest "info" of each output it writes, so a
reused step still has them, read from its files, and they are the figures of the run that
computed it:

    seconds           wall time of the step's body up to that output, from the body's start or
                      from the output it wrote before (`Stopwatch`): the figures of a step's
                      outputs add up to its body's time
    tokens_generated  completion tokens the engine produced (generation, evaluation)
    tokens_scored     completion positions scored (the scoring step)
    tokens_trained    target tokens the optimizer saw (training: both tasks, counted once per
                      optimizer step that trained them, summed over the steps)

A sharded output sums its shards' tokens (storage.shards), so shards a killed attempt wrote count;
its seconds are those of the attempt that finished it. A step made before its kind recorded
figures has none: a run's totals name it among the `unrecorded`.

    run_compute([step.index_entry() for step in steps.values()])   # or a run's steps.json entries
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from storage.artifacts import read_manifest_or_none

FIGURES = ("tokens_generated", "tokens_scored", "tokens_trained", "seconds")


class Stopwatch:
    """The seconds of a step's body, handed out per output: `lap()` gives the seconds since the
    body started or since the previous lap, so each second is counted once, by one output."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return round(seconds, 3)


def cost(watch: Stopwatch, **tokens: int | None) -> dict[str, Any]:
    """The "info" figures of one output: the watch's lap and the given token counts (None: not
    known, left out)."""
    return {"seconds": watch.lap(), **{name: int(n) for name, n in tokens.items() if n is not None}}


def output_figures(url: str) -> dict[str, float] | None:
    """The figures the output at `url` recorded, or None (no manifest yet, or made before its step
    recorded figures)."""
    info = (read_manifest_or_none(url) or {}).get("info") or {}
    found = {name: info[name] for name in FIGURES if isinstance(info.get(name), int | float)}
    return found or None


def step_figures(outputs: Iterable[str]) -> dict[str, float] | None:
    """A step's figures: the sums over its outputs that recorded any (None when none did)."""
    recorded = [f for f in (output_figures(url) for url in outputs) if f is not None]
    if not recorded:
        return None
    return {name: sum(f.get(name, 0) for f in recorded) for name in FIGURES}


def _zero() -> dict[str, float]:
    return dict.fromkeys(FIGURES, 0)


def _add(into: dict[str, float], figures: Mapping[str, float]) -> None:
    for name in FIGURES:
        into[name] += figures.get(name, 0)


def run_compute(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A run's compute from its steps (steps.json entries or `Step.index_entry()`: name, kind,
    iteration, outputs): the totals, the totals per step kind (with the steps counted), the
    training tokens spent up to each evaluated stage (every earlier round's included), and the
    steps without figures. A step the run shares with other runs counts in each run's totals:
    it is part of what each one's result cost."""
    entries = [e for e in entries if e["kind"] != "report"]  # the report records nothing it computes
    total, by_kind, unrecorded, trained = _zero(), {}, [], {}
    for entry in entries:
        figures = step_figures(entry["outputs"].values())
        if entry["kind"] == "train":
            trained[entry.get("iteration")] = None if figures is None else figures["tokens_trained"]
        if figures is None:
            unrecorded.append(entry["name"])
            continue
        _add(total, figures)
        kind = by_kind.setdefault(entry["kind"], {**_zero(), "steps": 0})
        _add(kind, figures)
        kind["steps"] += 1
    return {"total": _rounded(total), "by_kind": {k: _rounded(v) for k, v in by_kind.items()},
            "tokens_trained_by_stage": _trained_by_stage(entries, trained), "unrecorded": unrecorded}


def _trained_by_stage(entries: list[Mapping[str, Any]],
                      trained: Mapping[int | None, float | None]) -> dict[str, float | None]:
    """{stage: training tokens of every round up to and including it} for each evaluated stage
    (`base`: none yet; `iter-0t`: rounds 0..t); None when one of those trainings has no figures."""
    out = {}
    for stage in (e["name"].partition("/")[0] for e in entries if e["kind"] == "evaluate"):
        last = int(stage.split("-")[1]) if stage.startswith("iter-") else -1
        rounds = [n for i, n in trained.items() if i is not None and i <= last]
        out[stage] = None if None in rounds else sum(rounds)
    return out


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {name: round(v, 3) if name == "seconds" else v for name, v in figures.items()}
