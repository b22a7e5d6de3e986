"""`siked status RUN [--json]`: every step of a run with done / running / failed / missing and where
its output is.

The steps are the pipeline's own list (tasks.pipeline); the answer comes from the files alone
(manifests and claims), never from the Prefect API: a run killed with SIGKILL stays "Running" there
forever, while the step store says exactly what finished.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from distill.config import RunConfig
from storage.fs import list_files
from storage.mirror import mirror_dir
from storage.paths import RunLayout
from storage.step_store import claim_held
from tasks.gate import incomplete
from tasks.pipeline import Step, pipeline_steps


@dataclass
class StepStatus:
    stage: str
    step: str
    state: str  # done | running (another process holds its claim) | failed (started, not finished) | missing
    artifact: str  # the step's folder in the step store (the run folder for the report)
    detail: str = ""


def _started(step: Step) -> bool:
    """Something of the step is on disk (a shard, a checkpoint, an output) without its manifests."""
    if step.kind == "report":
        return False
    if list_files(step.folder):
        return True
    # Under a remote run root checkpoints stay in the training machine's mirror (storage.mirror).
    return step.kind == "train" and os.path.isdir(mirror_dir(f"{step.folder}/checkpoints"))


def step_status(step: Step) -> StepStatus:
    stage, _, name = step.name.rpartition("/")
    stage = stage or "run"
    reason = incomplete(step)
    if reason is None:
        return StepStatus(stage, name, "done", step.folder)
    if step.kind != "report" and claim_held(step.folder):
        return StepStatus(stage, name, "running", step.folder, reason)
    if _started(step):
        return StepStatus(stage, name, "failed", step.folder, f"started, not finished: {reason}")
    return StepStatus(stage, name, "missing", step.folder)


def run_status(cfg: RunConfig, layout: RunLayout) -> list[StepStatus]:
    return [step_status(step) for step in pipeline_steps(cfg, layout).values()]


def format_status(statuses: list[StepStatus]) -> str:
    width = max(len(s.step) for s in statuses)
    lines = []
    for s in statuses:
        line = f"{s.stage:<8} {s.step:<{width}} {s.state:<7} {s.artifact}"
        lines.append(line + (f"\n{'':<9}{s.detail}" if s.detail else ""))
    done = sum(s.state == "done" for s in statuses)
    lines.append(f"{done}/{len(statuses)} steps done")
    return "\n".join(lines)


def as_json(statuses: list[StepStatus]) -> list[dict]:
    return [asdict(s) for s in statuses]
