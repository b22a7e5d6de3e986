"""The rule that a finished step never runs again, in this run or in any other run sharing it.

`submit_step(task, step, run_id, **params)` runs one step of tasks.jobs.pipeline as a Prefect task:

- outputs complete (tasks.jobs.pipeline.incomplete): the task is submitted with the step key as its
  cache key and Prefect reports it Cached (or, with no cached result in this Prefect home, its body
  finds the manifests and returns at once);
- otherwise the run takes the step's claim (storage.step_store), waiting while another run computes
  the same step, checks again, and runs the task with `refresh_cache=True`; `step.json`, written
  last in the step folder, records which run computed it.

The files on disk stay the truth: a wiped Prefect home or a run the API still calls "Running" costs
nothing but the checks.
"""

from __future__ import annotations

from typing import Any

from distill import timings
from storage.step_store import claim_step, write_step_info
from tasks.jobs.pipeline import Step, incomplete


def _cached(task, step: Step, refresh: bool):
    return task.with_options(cache_key_fn=lambda *_: step.key, refresh_cache=refresh)


def _log_wait(step: Step):
    def say(holder: dict) -> None:
        from prefect import get_run_logger

        who = holder.get("label") or "another run"
        get_run_logger().info("waiting for %s: %s is computing it (pid %s on %s)", step.name, who,
                              holder.get("pid", "?"), holder.get("host", "?"))
    return say


def submit_step(task, step: Step, run_id: str, /, **params: Any):
    """Run `task(**params)` for `step` unless its outputs are complete; returns the task's result."""
    if incomplete(step) is None:
        return _cached(task, step, refresh=False)(**params)
    claim = claim_step(step.folder, f"{run_id} {step.name}", on_wait=_log_wait(step))
    with timings.span("step", step=step.name, kind=step.kind), claim:
        done = incomplete(step) is None  # another run may have finished it while this one waited
        result = _cached(task, step, refresh=not done)(**params)
        if not done:
            write_step_info(step.folder, {"run": run_id, "step": step.name, "kind": step.kind, "key": step.key,
                                          "iteration": step.iteration, "reads": step.reads, "inputs": step.inputs})
    return result
