"""Teacher stage: problems -> teacher samples -> verdicts -> distillation set.

    siked teacher configs/quickstart.yaml teacher.sampling.n=2

Prints the run folder; a rerun with the same config reuses every finished shard and step.
"""

from __future__ import annotations

import sys

from prefect import flow

from distill.config import RunConfig
from flows.run_setup import Run, record_run, run_layout
from storage.paths import DataDirMissing, data_dir
from tasks.distill_set import build_distill_set
from tasks.generate import GenerationJob, generate_samples
from tasks.gpu import engine_devices, on_gpus
from tasks.jobs.pipeline import pipeline_steps
from tasks.problems import freeze_problems
from tasks.verify import verify


def teacher_steps(run: Run) -> dict:
    """Run (or reuse) the teacher steps of iteration 0; returns their artifact refs."""
    cfg, teacher = run.cfg, run.cfg.teacher
    step = run.steps["problems/train"]
    problems_url = step.output("problems")
    problems = run.submit(freeze_problems, step.name, ref=cfg.train_data, name="train", output=problems_url,
                          key=step.key, data_folder=cfg.data_dir)

    step = run.steps["iter-00/generate"]
    samples_url = step.output("samples")
    job = GenerationJob(problems_url=problems_url, output_url=samples_url, key=step.key, engine=teacher.engine,
                        sampling=teacher.sampling, model=teacher.engine.model,
                        strategies=tuple(teacher.strategies), shard_size=teacher.shard_size,
                        iteration=0, source="teacher", shots=teacher.shots,
                        data_dir=_data_dir_if_any(cfg) if teacher.engine.kind == "file" else None)
    with on_gpus(engine_devices(teacher.engine)):
        samples = run.submit(generate_samples, step.name, job=job)

    step = run.steps["iter-00/verify"]
    verified_url = step.output("verified")
    verified = run.submit(verify, step.name, samples_url=samples_url, problems_url=problems_url,
                          output=verified_url, key=step.key, cfg=cfg.verify, iteration=0)

    step = run.steps["iter-00/distill_set"]
    distill_set = run.submit(build_distill_set, step.name, verified_url=verified_url, problems_url=problems_url,
                             output=step.output("distill_set"), key=step.key, iteration=0,
                             biased=teacher.biased)
    return {"problems": problems, "samples": samples, "verified": verified, "distill_set": distill_set}


def _data_dir_if_any(cfg: RunConfig) -> str | None:
    try:
        return str(data_dir(cfg.data_dir))
    except DataDirMissing:
        return None


@flow(name="siked-teacher", flow_run_name="teacher-{cfg.name}")
def teacher_flow(cfg: RunConfig) -> dict:
    layout = run_layout(cfg)
    run = Run(cfg, layout, pipeline_steps(cfg, layout))
    record_run(layout, cfg, run.steps)
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
    from flows.config_files import read_config

    cfg = read_config(config_path, overrides)
    refs = teacher_flow(cfg)
    print(format_summary(refs["distill_set"]["summary"]), file=sys.stderr)
    print(refs["run_dir"])
    return 0
