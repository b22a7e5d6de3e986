"""Distillation-set step: one correct solution per (question, strategy), and its counts."""

from __future__ import annotations

from storage.artifacts import artifact_ref, read_artifact, write_artifact
from storage.fs import read_json, write_json
from tasks.compute import Stopwatch, cost
from tasks.steps import step_task


def summary_url(output: str) -> str:
    return output.removesuffix(".parquet") + ".summary.json"


def distill_set_result(output: str, **_: object) -> dict:
    ref = artifact_ref(output)
    ref["summary"] = read_json(summary_url(output))
    return ref


@step_task(distill_set_result, name="distill-set", task_run_name="iter-{iteration:02d}-distill-set")
def build_distill_set(verified_url: str, problems_url: str, output: str, key: str, iteration: int,
                      biased: str | None = None, given_rationales: str | None = None,
                      keep: str = "correct") -> dict:
    """TRAIN_EXAMPLES rows at `output`; the per-strategy counts and verdict histogram beside it.
    `given_rationales` (a `file` teacher's round only): `all` keeps every rationale whatever its
    answer (`select_given`), `correct` or None the correct samples. `keep="all"` (on-policy
    distillation's rounds): every sample with a strategy, right or wrong (`select_all`)."""
    from distill.distill_set import bias, select_all, select_correct, select_given, summarize

    watch = Stopwatch()
    problems = read_artifact(problems_url, "problems", columns=["id", "question"]).to_pydict()
    questions = dict(zip(problems["id"], problems["question"], strict=True))
    verified = read_artifact(verified_url, "verified").to_pylist()
    if keep == "all":
        kept = select_all(verified, questions)
    elif given_rationales == "all":
        kept = select_given(verified, questions)
    else:
        kept = select_correct(verified, questions)
    if biased:
        kept = bias(kept, biased)
    summary = {**summarize(verified, kept), "biased": biased, "given_rationales": given_rationales, "keep": keep}
    # The summary is written before the artifact: the artifact's manifest, written last, is what
    # marks the step done.
    write_json(summary_url(output), summary)
    write_artifact(output, kept, "train_examples", config_hash=key, parents=[verified_url, problems_url],
                   info=cost(watch))
    return distill_set_result(output)
