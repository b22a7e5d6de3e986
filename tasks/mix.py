"""Mixing step: the student's correct solutions plus teacher rows -> the next training set."""

from __future__ import annotations

from storage.artifacts import artifact_ref, read_artifact, write_artifact
from storage.fs import read_json, write_json
from tasks.compute import Stopwatch, cost
from tasks.steps import step_task


def stats_url(output: str) -> str:
    return output.removesuffix(".parquet") + ".mix.json"


def mix_result(output: str, **_: object) -> dict:
    ref = artifact_ref(output)
    ref["mix"] = read_json(stats_url(output))
    return ref


@step_task(mix_result, name="mix", task_run_name="iter-{iteration:02d}-mix")
def mix_training_set(self_set_url: str, verified_url: str, teacher_set_url: str, output: str, key: str,
                     iteration: int, rule: str, target_alpha: float | None, seed: int,
                     biased: str | None = None, free_choice_url: str | None = None) -> dict:
    """TRAIN_EXAMPLES rows at `output` under `rule`; the realised alpha, strategy distributions and
    KL(P_train || P_SM) beside it. P_SM is the student's free choice: the strategies of the
    free-choice samples at `free_choice_url` (forced self-generation, whose own strategies are the
    primed ones), else of every self-generated sample."""
    from distill.mixing import mix

    watch = Stopwatch()
    self_rows = read_artifact(self_set_url, "train_examples").to_pylist()
    teacher_rows = read_artifact(teacher_set_url, "train_examples").to_pylist()
    verified = read_artifact(verified_url, "verified", columns=["question_id", "strategy", "verdict"]).to_pydict()
    correct = [(q, s) for q, s, v in zip(verified["question_id"], verified["strategy"], verified["verdict"],
                                         strict=True) if v == "correct"]
    chosen = verified["strategy"]
    if free_choice_url is not None:
        chosen = read_artifact(free_choice_url, "samples", columns=["strategy"]).column("strategy").to_pylist()
    result = mix(self_rows, teacher_rows, chosen, rule, target_alpha=target_alpha,
                 solved_questions={q for q, _ in correct}, solved_pairs=set(correct), seed=seed + iteration,
                 biased=biased)
    stats = result.stats()
    stats["p_student_samples_from"] = "free_choice" if free_choice_url is not None else "samples"
    stats["student_choices"] = len(chosen)
    write_json(stats_url(output), stats)
    write_artifact(output, result.rows, "train_examples", config_hash=key,
                   parents=[self_set_url, verified_url, teacher_set_url, *([free_choice_url] if free_choice_url else [])],
                   info=cost(watch))
    return mix_result(output)
