"""The rule that a finished step never runs again, in this run or in any other run sharing it.

`submit_step(task, steps, name, run, **params)` runs the step `name` of tasks.pipeline:

- reused: none of its inputs ran in this run and its outputs are complete (tasks.gate.incomplete,
  hashes included). No Prefect task runs; the step's result is read back from its files
  (`task.result_from_files`) and a log line names the run that computed it.
- run: otherwise the run takes the step's claim (storage.step_store), waiting while another run
  computes the same step, and checks again. Outputs that are damaged or stale are removed first
  (all of them when an input ran again), with a log line naming them; the task body then
  computes what is missing, and `step.json`, written last in the step folder, records which run
  computed it, with the attempt (one flow execution, subflows included) that did.

Prefect keeps no result of its own (`step_task`: no cache policy, nothing persisted), so the files
in the home are the only cache: a wiped Prefect home costs nothing, and a step done in another
home is never served to this one. What `siked plan` says (tasks.gate.decide) is what this does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distill import timings
from storage.step_store import claim_step, read_step_info, write_step_info
from tasks.gate import discard_outputs, incomplete
from tasks.pipeline import Step


def sharded_output_ref(job: Any, stats: dict | None = None) -> dict:
    """The result of a sharded step (generation, scoring): the ref of its output at `job.output_url`,
    with the stats of the attempt that wrote it (none when read back from its files)."""
    from storage.artifacts import artifact_ref

    ref = artifact_ref(job.output_url)
    ref["stats"] = stats if stats is not None else {"reused_shards": "all"}
    return ref


def step_task(result_from_files: Callable[..., Any], **options: Any):
    """Decorator: a Prefect task for a step body, with no result cache or persisted result (the
    step store is the only cache), and `result_from_files(**params)`, which gives what the body
    returns from the files it wrote, for a reused step."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def wrap(body):
        step = task(cache_policy=NO_CACHE, persist_result=False, **options)(body)
        step.result_from_files = result_from_files
        return step
    return wrap


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("siked")


def _log_wait(step: Step):
    def say(holder: dict) -> None:
        who = holder.get("label") or "another run"
        _logger().info("waiting for %s: %s is computing it (pid %s on %s)", step.name, who,
                       holder.get("pid", "?"), holder.get("host", "?"))
    return say


def _reuse(task, step: Step, params: dict[str, Any]):
    producer = (read_step_info(step.folder) or {}).get("run") or "an earlier run"
    _logger().info("reusing %s (computed by %s)", step.name, producer)
    return task.result_from_files(**params)


def ran_in(step: Step, attempt: str) -> bool:
    """True when `step` was computed by the flow execution `attempt` (its step.json says so)."""
    return step.kind != "report" and (read_step_info(step.folder) or {}).get("attempt") == attempt


def submit_step(task, steps: dict[str, Step], name: str, run: tuple[str, str], /, **params: Any):
    """Run `task(**params)` for the step `name` unless it is done; returns the task's result
    either way. `run` is (run id, attempt): the attempt names this flow execution, so a step whose
    input this execution computed runs again, as the plan says."""
    step, (run_id, attempt) = steps[name], run
    forced = [n for n in step.inputs.values() if ran_in(steps[n], attempt)]
    if not forced and incomplete(step) is None:
        return _reuse(task, step, params)
    claim = claim_step(step.folder, f"{run_id} {step.name}", on_wait=_log_wait(step))
    with timings.span("step", step=step.name, kind=step.kind), claim:
        reason = f"its input {forced[0]} was computed in this run" if forced else incomplete(step)
        if reason is None:  # another run finished it while this one waited for the claim
            return _reuse(task, step, params)
        for url in discard_outputs(step, forced=bool(forced)):
            _logger().warning("%s: removed %s before computing it again (%s)", step.name, url, reason)
        _logger().info("running %s: %s", step.name, reason)
        result = task(**params)
        write_step_info(step.folder, {"run": run_id, "attempt": attempt, "step": step.name, "kind": step.kind,
                                      "key": step.key, "iteration": step.iteration, "reads": step.reads,
                                      "inputs": step.inputs})
    return result
