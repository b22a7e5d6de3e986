"""Teacher stage: problems -> teacher samples -> verdicts -> distillation set.

    siked teacher configs/quickstart.yaml teacher.sampling.n=2

Prints the run folder; a rerun with the same config reuses every finished shard and step.
"""

from __future__ import annotations

import sys

from prefect import flow

from distill.config import RunConfig
from flows.run_setup import Run, record_run, run_layout
from flows.run_steps import freeze_training_problems, generate, verify_and_select
from tasks.pipeline import pipeline_steps

TEACHER_STEPS = ("problems/train", "iter-00/generate", "iter-00/verify", "iter-00/distill_set")


def teacher_steps(run: Run) -> dict:
    """Run (or reuse) the teacher steps of iteration 0; returns their artifact refs."""
    problems = freeze_training_problems(run)
    samples = generate(run, 0)
    verified, distill_set = verify_and_select(run, 0)
    return {"problems": problems, "samples": samples, "verified": verified, "distill_set": distill_set}


@flow(name="siked-teacher", flow_run_name="teacher-{cfg.name}")
def teacher_flow(cfg: RunConfig) -> dict:
    layout = run_layout(cfg)
    run = Run(cfg, layout, pipeline_steps(cfg, layout))
    # The index names the steps this command runs, so `siked verify` and `status` judge those.
    record_run(layout, cfg, {name: run.steps[name] for name in TEACHER_STEPS})
    refs = teacher_steps(run)
    refs["run_dir"] = layout.run_dir
    return refs


def format_summary(summary: dict) -> str:
    lines = [f"{'strategy':<9} {'generated':>9} {'correct':>8} {'kept':>6}"]
    for name, counts in summary["per_strategy"].items():
        lines.append(f"{name:<9} {counts['generated']:>9} {counts['correct']:>8} {counts['kept']:>6}")
    lines.append("verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items()))
    return "\n".join(lines)


def run_teacher_cli(config_path: str, overrides: list[str]) -> int:
    from flows import prefect_api
    from flows.commands.config_files import read_config

    cfg = read_config(config_path, overrides)
    prefect_api.ready()
    refs = teacher_flow(cfg)
    print(format_summary(refs["distill_set"]["summary"]), file=sys.stderr)
    print(refs["run_dir"])
    return 0
