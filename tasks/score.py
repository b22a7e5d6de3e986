"""Scoring step: the teacher's token-level signal on a round's student samples (`token_level.use`).

The task runs the job's body (tasks.jobs.score) in a spawned child, in the engine worker when one
waits: the privileged self-teacher is the model the round's generation ran, so a kept vLLM engine
serves it without a new start. A rerun scores only the shards whose manifest is missing. A teacher
failing a guard (distill.scoring_guards) fails the step without the retry other errors get: the
check would fail again, after loading the teacher again.
"""

from __future__ import annotations

from storage.shards import ShardedArtifact
from tasks.jobs.score import ScoreJob, score_into, shard_count
from tasks.progress import with_progress
from tasks.steps import sharded_output_ref, step_task


def retried(task, task_run, state) -> bool:
    """Prefect's retry condition: every failure but a failed guard."""
    from distill.scoring_guards import GuardFailed

    return not isinstance(state.data, GuardFailed)


@step_task(sharded_output_ref, name="score", task_run_name="iter-{job.iteration:02d}-score-{job.teacher}",
           retries=1, retry_delay_seconds=5, retry_condition_fn=retried)
def score_samples(job: ScoreJob) -> dict:
    """Sharded TOKEN_SCORES artifact at `job.output_url`, one row per student sample with a known
    strategy (the shards a killed attempt finished are kept); returns its ref with scoring stats."""
    from distill.engines.child import run_in_engine_worker

    out = ShardedArtifact(job.output_url, "token_scores", config_hash=job.key)
    total = max(shard_count(job), 1)
    stats = with_progress(f"score-{job.teacher}-{job.iteration:02d}",
                          f"Iteration {job.iteration}: samples scored by the {job.teacher} teacher, shards written",
                          lambda: len(out.completed_shards(verify_hash=False)) / total,
                          run_in_engine_worker, score_into, job)
    return sharded_output_ref(job, dict(stats))
