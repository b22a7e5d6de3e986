"""The scoring step's job and its child-process body.

`score_into(job)` runs in a spawned child (tasks.score), in the engine worker when one is waiting
(the self-teacher is the model the round's generation just ran, so a kept vLLM engine serves it as
it is). It reads the round's samples and the training problems, checks that the scorer shares the
student's tokenizer before it loads the scorer, checks the loaded scorer (the guards,
distill.scoring_guards) before it scores anything, scores the shards not written yet and writes each
one as it is done (distill.scoring.score_shards), so a killed step loses at most the shard in
flight. Scoring shard i holds the samples of generation shard i, in their order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distill import timings
from distill.config import EngineConfig
from storage.artifacts import read_artifact, read_manifest, with_manifests
from storage.shards import ShardedArtifact
from tasks.jobs.generate import engine_model_path


@dataclass(frozen=True)
class ScoreJob:
    """Everything the child process needs (picklable)."""

    samples_url: str
    problems_url: str
    output_url: str
    key: str
    engine: EngineConfig
    model: str  # the scorer: the teacher's model, or the student that generated the samples (`self`)
    student: str  # the student that generated the samples: its tokenizer gives the ids scored
    teacher: str  # separate | self
    top_k: int
    iteration: int
    guard_samples: int = 0  # samples the guards check before anything is scored (0: no guards)


def scoring_shards(job: ScoreJob) -> tuple[list[list], int]:
    """(the samples as distill.scoring samples, one list per generation shard; how many samples were
    left out). The self-teacher reads the privileged prompt with the gold answer (`answer_reference`); a separate teacher the
    student's own rationale prompt. Samples without a known strategy (a free-choice sample whose
    tag did not parse) have no training target and are left out, as training leaves them out."""
    from distill.scoring import rationale_samples
    from distill.strategies import STRATEGIES
    from distill.student_format import answer_reference

    problems = {p["id"]: p for p in read_artifact(job.problems_url, "problems").to_pylist()}
    rows = read_artifact(job.samples_url, "samples").to_pylist()
    reference = (lambda row: answer_reference(row["gold"])) if job.teacher == "self" else None
    shards, start, left_out = [], 0, 0
    for entry in read_manifest(job.samples_url)["shards"]:
        part = rows[start:start + entry["rows"]]
        kept = [{**row, "question": problems[row["question_id"]]["question"],
                 "gold": problems[row["question_id"]]["answer"]} for row in part if row["strategy"] in STRATEGIES]
        shards.append(rationale_samples(kept, reference=reference))
        left_out += len(part) - len(kept)
        start += entry["rows"]
    return shards, left_out


def shard_count(job: ScoreJob) -> int:
    """Scoring shards: the samples' shards."""
    return len(read_manifest(job.samples_url)["shards"])


def check_tokenizers(job: ScoreJob, student_tokenizer: Any, scorer_path: str) -> None:
    """A separate teacher served from a local folder must share the student's tokenizer: refused
    here, before its engine is loaded (distill.scoring.check_shared_tokenizer names both). A served
    teacher (`openai`) is checked by `score_shards`, before it scores anything."""
    from distill.scoring import check_shared_tokenizer

    if job.teacher == "self" or job.engine.kind not in ("vllm", "transformers"):
        return
    from transformers import AutoTokenizer

    check_shared_tokenizer(AutoTokenizer.from_pretrained(scorer_path), student_tokenizer, job.model, job.student)


def teacher_guards(job: ScoreJob, engine: Any, shards: list[list], student_tokenizer: Any):
    """The guards `score_shards` runs before it scores (None when the job asks for none): the
    scorer checked on the step's first samples (distill.scoring_guards), failing with the step's
    name and the scoring model."""
    if job.guard_samples < 1:
        return None
    from distill.scoring_guards import check_teacher, guard_samples

    samples = guard_samples([sample for shard in shards for sample in shard], job.guard_samples)
    return lambda: check_teacher(engine, samples, student_tokenizer, job.top_k,
                                 step=f"iter-{job.iteration:02d}/score", teacher=job.model)


def score_into(job: ScoreJob) -> Mapping[str, Any]:
    """Child-process body: check the tokenizers, build the scorer, check it (the guards), score the
    missing shards, finalize. A teacher failing a guard stops the step before it writes a shard."""
    from transformers import AutoTokenizer

    from distill.engines import make_engine
    from distill.scoring import score_shards

    out = ShardedArtifact(job.output_url, "token_scores", config_hash=job.key,
                          parents=with_manifests(*dict.fromkeys((job.samples_url, job.problems_url, job.model,
                                                                 job.student))))  # the self-teacher is the student
    student_tokenizer = AutoTokenizer.from_pretrained(engine_model_path(job.student, "transformers"))
    scorer_path = engine_model_path(job.model, job.engine.kind)
    check_tokenizers(job, student_tokenizer, scorer_path)
    shards, left_out = scoring_shards(job)
    done = out.completed_shards()
    if len(done) == len(shards):  # every shard written by a killed attempt: no engine needed
        stats: dict[str, Any] = {"shards_scored": 0, "reused_shards": len(done), "samples": 0, "tokens": 0}
    else:
        engine = make_engine(job.engine, scorer_path)
        try:
            with timings.span("score", teacher=job.teacher, iteration=job.iteration):
                stats = score_shards(engine, shards, student_tokenizer, job.top_k, on_shard=out.write_shard,
                                     skip=done, teacher=job.model, student=job.student,
                                     guards=teacher_guards(job, engine, shards, student_tokenizer))
        finally:
            engine.close()
    out.finalize(len(shards))
    stats["shards"] = len(shards)
    stats["left_out"] = left_out  # samples without a known strategy
    return stats
