"""Generation step: teacher samples (iteration 0) or student self-samples (iterations >= 1).

The task runs the job's body (tasks.jobs.generate) in a spawned child process: vLLM's memory is
freed when the step ends, and a crash of the engine cannot take the flow down. A rerun generates
only the shards whose manifest is missing.
"""

from __future__ import annotations

from storage.shards import ShardedArtifact
from tasks.jobs.generate import GenerationJob, generate_into, shard_count
from tasks.progress import with_progress
from tasks.steps import sharded_output_ref, step_task


@step_task(sharded_output_ref, name="generate", task_run_name="iter-{job.iteration:02d}-generate-{job.source}",
           retries=1, retry_delay_seconds=5)
def generate_samples(job: GenerationJob) -> dict:
    """Sharded SAMPLES artifact at `job.output_url` (the shards a killed attempt finished are kept),
    and with forced self-generation the free-choice samples at `job.free_choice_url` (the same
    engine settings; a second job: on CPU builds the kept engine serves both, on GPUs the second
    starts its own); returns the samples' ref with generation stats."""
    stats = _generate(job, "samples", "")
    probe = job.free_choice_job()
    if probe is not None:
        stats["free_choice"] = _generate(probe, "free-choice samples", "-free-choice")
    return sharded_output_ref(job, stats)


def _generate(job: GenerationJob, what: str, key_suffix: str) -> dict:
    from distill.engines.child import run_in_child, run_in_engine_worker

    out = ShardedArtifact(job.output_url, "samples", config_hash=job.key)
    total = shard_count(job)
    body, runner = generate_into, run_in_engine_worker  # the engine of the step before, when it fits
    if job.engine.replicas > 1:  # shards spread over engine replicas on Ray
        from tasks.jobs.ray_executor import ray_generate_into as body

        runner = run_in_child
    return with_progress(f"generate-{job.source}-{job.iteration:02d}{key_suffix}",
                         f"Iteration {job.iteration}: {job.source} {what}, shards written",
                         lambda: len(out.completed_shards(verify_hash=False)) / total,
                         runner, body, job)
