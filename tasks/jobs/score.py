"""The scoring step's job and its child-process body.

`score_into(job)` runs in a spawned child (tasks.score), in the engine worker when one is waiting
(the self-teacher is the model the round's generation just ran, so a kept vLLM engine serves it as
it is). It reads the round's training rows (its distillation set: the samples a training can read,
in the text it trains on), checks that the scorer shares the student's tokenizer before it loads
the scorer, checks the loaded scorer (the guards, distill.scoring_guards) before it scores anything,
scores the shards not written yet and writes each one as it is done (distill.scoring.score_shards),
so a killed step loses at most the shard in flight. Shard i holds rows i * shard_size to
(i + 1) * shard_size - 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distill import timings
from distill.config import EngineConfig
from storage.artifacts import read_artifact, read_manifest, with_manifests
from storage.shards import ShardedArtifact
from tasks.compute import Stopwatch, cost
from tasks.jobs.generate import engine_model_path


@dataclass(frozen=True)
class ScoreJob:
    """Everything the child process needs (picklable)."""

    rows_url: str  # the round's training rows (its distillation set: TRAIN_EXAMPLES)
    output_url: str
    key: str
    engine: EngineConfig
    model: str  # the scorer: the teacher's model, or the student that generated the samples (`self`)
    student: str  # the student (the samples' generator, or `train.model` in the teacher round): its tokenizer gives the ids
    teacher: str  # separate | self
    top_k: int
    iteration: int
    shard_size: int = 64
    guard_samples: int = 0  # samples the guards check before anything is scored (0: no guards)


def scoring_shards(job: ScoreJob) -> tuple[list[list], int]:
    """(the rows as distill.scoring samples, `shard_size` rows per shard in row order; how many rows
    were left out). The rows are what a training reads, so the completion scored is a row's own
    rationale target (`[strategy]: text`) and its ids are the target ids training uses. The
    self-teacher reads the privileged prompt with the gold answer (`answer_reference`); a separate
    teacher the student's own rationale prompt. A row without a known strategy has no training
    target and is left out, as training leaves it out."""
    from distill.scoring import rationale_samples, shard_samples
    from distill.strategies import STRATEGIES
    from distill.student_format import answer_reference

    rows = read_artifact(job.rows_url, "train_examples").to_pylist()
    reference = (lambda row: answer_reference(row["gold"])) if job.teacher == "self" else None
    kept = [row for row in rows if row["strategy"] in STRATEGIES]
    return shard_samples(rationale_samples(kept, reference=reference), job.shard_size), len(rows) - len(kept)


def shard_count(job: ScoreJob) -> int:
    """Scoring shards: `shard_size` rows each, one (empty) for a round without rows."""
    return max(1, -(-read_manifest(job.rows_url)["rows"] // job.shard_size))


def check_tokenizers(job: ScoreJob, student_tokenizer: Any, scorer_path: str) -> None:
    """A separate teacher served from a local folder must share the student's tokenizer: refused
    here, before its engine is loaded (distill.scoring.check_shared_tokenizer names both). A served
    teacher (`openai`) is checked by `score_shards`, before it scores anything."""
    from distill.scoring import check_shared_tokenizer

    if job.teacher == "self" or job.engine.kind not in ("vllm", "transformers"):
        return
    from transformers import AutoTokenizer

    check_shared_tokenizer(AutoTokenizer.from_pretrained(scorer_path), student_tokenizer, job.model, job.student)


def write_scored_shard(out: ShardedArtifact, index: int, rows: list[dict[str, Any]]) -> None:
    """Write one shard of scores, its manifest recording the completion positions it scored (the
    folder's manifest sums them: tasks.compute)."""
    out.write_shard(index, rows, info={"tokens_scored": sum(len(r["completion_ids"]) for r in rows)})


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

    watch = Stopwatch()
    out = ShardedArtifact(job.output_url, "token_scores", config_hash=job.key,
                          parents=with_manifests(*dict.fromkeys((job.rows_url, job.model,
                                                                 job.student))))  # the self-teacher is the student
    student_tokenizer = AutoTokenizer.from_pretrained(engine_model_path(job.student, "transformers"))
    scorer_path = engine_model_path(job.model, job.engine.kind)
    check_tokenizers(job, student_tokenizer, scorer_path)
    shards, left_out = scoring_shards(job)
    if not shards:  # a round without training rows (no sample was correct): an empty, finished output
        write_scored_shard(out, 0, [])
        shards = [[]]
    done = out.completed_shards()
    if len(done) == len(shards):  # every shard written by a killed attempt: no engine needed
        stats: dict[str, Any] = {"shards_scored": 0, "reused_shards": len(done), "samples": 0, "tokens": 0}
    else:
        engine = make_engine(job.engine, scorer_path)
        try:
            with timings.span("score", teacher=job.teacher, iteration=job.iteration):
                stats = score_shards(engine, shards, student_tokenizer, job.top_k,
                                     on_shard=lambda index, rows: write_scored_shard(out, index, rows),
                                     skip=done, teacher=job.model, student=job.student,
                                     guards=teacher_guards(job, engine, shards, student_tokenizer))
        finally:
            engine.close()
    out.finalize(len(shards), info=cost(watch))
    stats["shards"] = len(shards)
    stats["left_out"] = left_out  # samples without a known strategy
    return stats
