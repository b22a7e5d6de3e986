"""The training step's job: what a student's training reads and where it writes.

The loop itself runs through `distill.training.launch` (in child processes under DDP/FSDP); the
task (tasks.train) marks the student folder complete last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
