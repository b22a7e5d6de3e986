"""Verification step: a verdict for every sample (PoT programs run in the sandbox pool)."""

from __future__ import annotations

from distill import timings
from distill.config import VerifyConfig
from storage.artifacts import artifact_ref, read_artifact, write_artifact
from tasks.compute import Stopwatch, cost
from tasks.steps import step_task


def verified_result(output: str, **_: object) -> dict:
    return artifact_ref(output)


@step_task(verified_result, name="verify", task_run_name="iter-{iteration:02d}-verify", retries=1,
           retry_delay_seconds=5)
def verify(samples_url: str, problems_url: str, output: str, key: str, cfg: VerifyConfig,
           iteration: int) -> dict:
    """VERIFIED rows for the samples at `samples_url`, gold answers from `problems_url`."""
    from distill.choices import gold_answers
    from distill.verify import sandbox_limits, verify_samples

    watch = Stopwatch()
    problems = read_artifact(problems_url, "problems", columns=["id", "question", "answer", "answer_text"]).to_pylist()
    gold, choices = gold_answers(problems)
    samples = read_artifact(samples_url, "samples").to_pylist()
    with timings.span("verify", iteration=iteration):
        rows = verify_samples(samples, gold, limits=sandbox_limits(cfg), workers=cfg.workers, rel_tol=cfg.rel_tol,
                              choices=choices)
    write_artifact(output, rows, "verified", config_hash=key, parents=[samples_url, problems_url],
                   info=cost(watch))
    return verified_result(output)
