"""Evaluation step: one model on every configured benchmark, in rationale and label mode, in one
child process (tasks.jobs.evaluate); only the (benchmark, mode) pairs not yet on disk are run."""

from __future__ import annotations

from storage.fs import read_json
from tasks.jobs.evaluate import EvalJob, evaluate_into, pending_targets, summary_url
from tasks.steps import step_task


def summaries_result(job: EvalJob) -> list[dict]:
    return [read_json(summary_url(t[3])) for t in job.targets]


@step_task(summaries_result, name="evaluate", task_run_name="{job.label}-evaluate", retries=1,
           retry_delay_seconds=5)
def evaluate_model(job: EvalJob) -> list[dict]:
    """Summaries of every (benchmark, mode) pair of `job`, evaluating those not yet on disk (the
    pairs a killed attempt finished are kept)."""
    if pending_targets(job):
        from distill.engines.child import run_in_engine_worker

        run_in_engine_worker(evaluate_into, job)
    return summaries_result(job)
