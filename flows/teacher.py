"""Teacher stage: problems -> teacher samples -> verdicts -> distillation set.

    siked teacher configs/quickstart.yaml teacher.sampling.n=2

Prints the run folder; a rerun with the same config reuses every finished shard and step.
"""

from __future__ import annotations

import sys

from prefect import flow

from distill.config import RunConfig
from flows.run_setup import run_layout, save_config
from storage.paths import DataDirMissing, RunLayout, data_dir
from tasks.distill_set import build_distill_set
from tasks.generate import GenerationJob, generate_samples
from tasks.gpu import engine_devices, on_gpus
from tasks.problems import freeze_problems
from tasks.steps import step_key, submit_step
from tasks.verify import verify


def teacher_steps(cfg: RunConfig, layout: RunLayout) -> dict:
    """Run (or reuse) the teacher steps of iteration 0; returns their artifact refs."""
    problems_url = layout.problems("train")
    key = step_key("problems", cfg.train_data)
    problems = submit_step(freeze_problems, key, problems_url, "problems",
                           ref=cfg.train_data, name="train", output=problems_url, key=key,
                           data_folder=cfg.data_dir)

    samples_url = layout.samples(0)
    teacher = cfg.teacher
    key = step_key("generate", {"engine": teacher.engine, "sampling": teacher.sampling,
                                "strategies": teacher.strategies, "shard_size": teacher.shard_size,
                                "shots": teacher.shots},
                   inputs=[problems_url])
    job = GenerationJob(problems_url=problems_url, output_url=samples_url, key=key, engine=teacher.engine,
                        sampling=teacher.sampling, model=teacher.engine.model,
                        strategies=tuple(teacher.strategies), shard_size=teacher.shard_size,
                        iteration=0, source="teacher", shots=teacher.shots,
                        data_dir=_data_dir_if_any(cfg) if teacher.engine.kind == "file" else None)
    with on_gpus(engine_devices(teacher.engine)):
        samples = submit_step(generate_samples, key, samples_url, "samples", job=job)

    verified_url = layout.verified(0)
    key = step_key("verify", cfg.verify, inputs=[samples_url])
    verified = submit_step(verify, key, verified_url, "verified", samples_url=samples_url,
                           problems_url=problems_url, output=verified_url, key=key, cfg=cfg.verify, iteration=0)

    set_url = layout.distill_set(0)
    key = step_key("distill_set", {"biased": teacher.biased}, inputs=[verified_url, problems_url])
    distill_set = submit_step(build_distill_set, key, set_url, "train_examples",
                              verified_url=verified_url, problems_url=problems_url, output=set_url, key=key,
                              iteration=0, biased=teacher.biased)
    return {"problems": problems, "samples": samples, "verified": verified, "distill_set": distill_set}


def _data_dir_if_any(cfg: RunConfig) -> str | None:
    try:
        return str(data_dir(cfg.data_dir))
    except DataDirMissing:
        return None


@flow(name="siked-teacher", flow_run_name="teacher-{cfg.name}")
def teacher_flow(cfg: RunConfig) -> dict:
    layout = run_layout(cfg)
    save_config(layout, cfg)
    refs = teacher_steps(cfg, layout)
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
