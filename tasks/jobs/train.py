"""The training step's job: what a student's training reads and where it writes.

The loop itself runs through `distill.training.launch` (in child processes under DDP/FSDP); the
task (tasks.train) marks the student folder complete last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import TrainConfig
from storage.mirror import mirror_dir


@dataclass(frozen=True)
class TrainJob:
    train_set_url: str
    start_model: str  # model spec or the previous student's folder
    cfg: TrainConfig
    output_dir: str
    checkpoint_dir: str
    metrics_url: str
    key: str
    iteration: int
    problems_url: str | None = None
    """The training problems, read for their `answer_text` (the `dss` format's label targets)."""
    label_max_tokens: int | str = "auto"
    """Label-mode validation's budget (`eval.label_max_tokens`; read with `train.select_on: label`)."""
    rel_tol: float = 1e-6
    """Label-mode validation's tolerance (`verify.rel_tol`; read with `train.select_on: label`)."""
    schedule_round: tuple[int, int] | None = None
    """(this round, rounds) of one learning-rate schedule over every round
    (`train.schedule_across_rounds: continue`); None: a schedule of its own."""
    token_scores_url: str | None = None
    """The teacher's scores of the round's samples (`token_level`), joined onto `scored_rows`."""
    token_term: dict | None = None
    """The token-level term (distill.training.losses.TokenTerm's fields)."""
    scored_rows: tuple[str, int] | None = None
    """(source, iteration) of the rows the scores describe: the samples of that round's generation
    (a mixed set also holds teacher rows, whose sample ids may repeat the student's)."""


def attach_scores(rows: Any, scores: list[dict[str, Any]], scored_rows: tuple[str, int]) -> tuple[Any, dict[str, int]]:
    """`rows` (a TRAIN_EXAMPLES DataFrame) with distill.training.data.SCORE_COLUMNS filled from the
    `token_scores` rows of its (source, iteration) rows' samples, None elsewhere; and the counts:
    rows scored, rows of that round without a score (a sample the scoring step left out)."""
    from distill.scoring import sample_id
    from distill.training.data import SCORE_COLUMNS

    by_id = {row["sample_id"]: row for row in scores}
    source, iteration = scored_rows
    found: list[dict[str, Any] | None] = []
    for row in rows.to_dict(orient="records"):
        ours = row.get("source") == source and row.get("iteration") == iteration
        found.append(by_id.get(sample_id(row["question_id"], row["strategy"], row["sample_index"])) if ours else None)
    rows = rows.copy()
    for column in SCORE_COLUMNS:
        field = column.removeprefix("teacher_")
        rows[column] = [None if hit is None else hit[field] for hit in found]
    round_rows = int(((rows["source"] == source) & (rows["iteration"] == iteration)).sum())
    scored = sum(hit is not None for hit in found)
    return rows, {"scored_rows": scored, "unscored_rows": round_rows - scored}


def fraction_done(job: TrainJob, total_steps: int) -> float:
    metrics = Path(mirror_dir(job.checkpoint_dir)) / "metrics.jsonl"
    if not metrics.is_file() or total_steps <= 0:
        return 0.0
    lines = metrics.read_text(encoding="utf-8").strip().splitlines()
    steps = [json.loads(line).get("step", 0) for line in lines[-5:] if line.startswith("{")]
    return max(steps, default=0) / total_steps


def planned_steps(cfg: TrainConfig, rows: int) -> int:
    per_step = cfg.batch_size * cfg.grad_accum
    return cfg.max_steps or max(1, round(cfg.epochs * -(-rows // per_step)))
