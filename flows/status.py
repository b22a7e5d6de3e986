"""`siked status RUN [--json]`: every step of a run with done / missing / failed and its artifact.

The answer comes from the files alone (manifests), never from the Prefect API: a run killed with
SIGKILL stays "Running" there forever, while its folder says exactly what finished.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from distill.config import RunConfig
from storage.artifacts import incomplete_reason
from storage.fs import exists, resolve
from storage.mirror import mirror_dir
from storage.paths import RunLayout


@dataclass
class StepStatus:
    stage: str
    step: str
    state: str  # done | missing | failed (started, not finished)
    artifact: str
    detail: str = ""


def expected_steps(cfg: RunConfig, layout: RunLayout) -> list[tuple[str, str, str, str | None]]:
    """(stage, step, artifact URL, kind) of every step the config asks for, in pipeline order."""
    steps: list[tuple[str, str, str, str | None]] = [("data", "problems-train", layout.problems("train"), "problems")]
    labels = [f"{ref.name}-{ref.split}" for ref in cfg.eval.benchmarks]
    steps += [("data", f"problems-eval-{label}", layout.problems(f"eval-{label}"), "problems") for label in labels]

    def evals(stage: str) -> list[tuple[str, str, str, str | None]]:
        return [(stage, f"eval-{label}-{mode}", layout.predictions_at(stage, label, mode), "predictions")
                for label in labels for mode in cfg.eval.modes]

    if cfg.eval.evaluate_base:
        steps += evals("base")
    for iteration in range(cfg.siked.iterations + 1):
        stage = f"iter-{iteration:02d}"
        steps.append((stage, "generate", layout.samples(iteration), "samples"))
        steps.append((stage, "verify", layout.verified(iteration), "verified"))
        steps.append((stage, "distill-set", layout.distill_set(iteration), "train_examples"))
        if iteration > 0:
            steps.append((stage, "mix", layout.train_set(iteration), "train_examples"))
        steps.append((stage, "train", layout.student(iteration), None))
        steps += evals(stage)
    return steps


def _started(url: str) -> bool:
    """Something of the step is on disk (a shard, a temporary file, a checkpoint) without a manifest."""
    if exists(url):
        return True
    filesystem, path = resolve(url)
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        siblings = filesystem.ls(parent, detail=False)
    except FileNotFoundError:
        return False
    return any(s.rpartition("/")[2].startswith(f".{name}.tmp") for s in siblings)


def step_status(stage: str, step: str, url: str, kind: str | None, layout: RunLayout) -> StepStatus:
    reason = incomplete_reason(url, kind=kind, verify_hash=False)
    if reason is None:
        return StepStatus(stage, step, "done", url)
    started = _started(url)
    if step == "train" and not started:
        checkpoints = layout.checkpoints(int(stage.split("-")[1]))
        # Under a remote run root checkpoints stay in the training machine's mirror (storage.mirror).
        started = exists(checkpoints) or os.path.isdir(mirror_dir(checkpoints))
    return StepStatus(stage, step, "failed" if started else "missing", url,
                      f"started, not finished: {reason}" if started else "")


def run_status(cfg: RunConfig, layout: RunLayout) -> list[StepStatus]:
    return [step_status(stage, step, url, kind, layout) for stage, step, url, kind in expected_steps(cfg, layout)]


def format_status(statuses: list[StepStatus]) -> str:
    width = max(len(s.step) for s in statuses)
    lines = []
    for s in statuses:
        line = f"{s.stage:<7} {s.step:<{width}} {s.state:<7} {s.artifact}"
        lines.append(line + (f"\n{'':<8}{s.detail}" if s.detail else ""))
    done = sum(s.state == "done" for s in statuses)
    lines.append(f"{done}/{len(statuses)} steps done")
    return "\n".join(lines)


def as_json(statuses: list[StepStatus]) -> list[dict]:
    return [asdict(s) for s in statuses]
