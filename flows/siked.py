"""The SIKeD pipeline as one Prefect flow.

    siked run configs/quickstart.yaml [key=value ...]

Reads like the paper's algorithm: the teacher solves the training problems with every strategy,
correct solutions train the student (iteration 0); then each iteration the student samples its own
solutions, the correct ones are mixed with teacher data, and the student is trained again, starting
from the previous student. What each step reads and where it writes is described once, in
tasks.jobs.pipeline; a step whose outputs are complete in the step store (computed by this run or by
any other run that agrees on what the step reads) is reused, so rerunning a finished config executes
nothing, a changed config executes only the steps it changes, and `siked resume` continues a killed
run from its artifacts.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from distill.config import RunConfig
from flows.run_setup import Run, record_run, run_layout
from flows.teacher import teacher_steps
from flows.ui import publish_base, publish_iteration, publish_run_report
from storage.fs import write_json
from storage.paths import RunLayout
from tasks.contamination import find_overlaps
from tasks.distill_set import build_distill_set
from tasks.evaluate import EvalJob, evaluate_model
from tasks.generate import GenerationJob, generate_samples
from tasks.gpu import engine_devices, on_gpus, train_devices
from tasks.jobs.pipeline import (
    CONTAMINATION,
    eval_only_steps,
    eval_set_label,
    eval_targets,
    pipeline_steps,
    skipped_eval_sets,
)
from tasks.mix import mix_training_set
from tasks.problems import freeze_problems
from tasks.train import TrainJob, train_student_step
from tasks.verify import verify


def freeze_eval_sets(run: Run) -> None:
    """Every evaluation set the config names, frozen once and shared by every stage's evaluation."""
    for ref in skipped_eval_sets(run.cfg):
        get_run_logger().warning("skipping %s: %s missing and skip_if_missing is set", ref.benchmark_name,
                                 ref.path if ref.name == "file" else "no data folder (SIKED_DATA_DIR)")
    for ref in run.cfg.eval.benchmarks:
        name = f"problems/eval-{eval_set_label(ref)}"
        if name in run.steps:
            step = run.steps[name]
            run.submit(freeze_problems, name, ref=ref, name=name.removeprefix("problems/"),
                       output=step.output("problems"), key=step.key, data_folder=run.cfg.data_dir)


def check_contamination(run: Run) -> None:
    """Overlaps of the evaluation sets with the training problems, saved with the run for its report."""
    step = run.steps.get(CONTAMINATION)
    if step is None:
        return
    sets = {role.removeprefix("problems:"): run.output(name, "problems")
            for role, name in step.inputs.items() if role.startswith("problems:")}
    summary = run.submit(find_overlaps, CONTAMINATION, train_url=run.output("problems/train", "problems"),
                         eval_sets=sets, output=step.output("overlaps"), key=step.key,
                         cfg=run.cfg.eval.decontamination)
    write_json(run.layout.contamination, {"ngram": run.cfg.eval.decontamination.ngram,
                                          "dropped": run.cfg.eval.decontamination.drop, "sets": summary})


def evaluate(run: Run, stage: str, model: str) -> list[dict]:
    """Summaries of `model` on every evaluation set and mode (`stage`: `base`, `iter-XX` or `eval`)."""
    name = f"{stage}/evaluate"
    if name not in run.steps:
        return []
    step, engine = run.steps[name], run.cfg.siked.engine
    job = EvalJob(model=model, engine=engine, verify=run.cfg.verify, max_tokens=run.cfg.eval.max_tokens,
                  label_max_tokens=run.cfg.eval.label_max_tokens, targets=eval_targets(step, run.steps),
                  key=step.key, label=stage,
                  exclude_url=run.output(CONTAMINATION, "overlaps") if "contamination" in step.inputs else None,
                  self_consistency=run.cfg.eval.self_consistency if "sampled" in run.cfg.eval.modes else None)
    with on_gpus(engine_devices(engine)):
        return run.submit(evaluate_model, name, job=job)


def train(run: Run, iteration: int, train_set_url: str, start_model: str) -> dict:
    """Train the student of `iteration` on `train_set_url`, starting from `start_model`."""
    name = f"iter-{iteration:02d}/train"
    step = run.steps[name]
    job = TrainJob(train_set_url=train_set_url, start_model=start_model, cfg=run.cfg.train,
                   output_dir=step.output("student"), checkpoint_dir=f"{step.folder}/checkpoints",
                   metrics_url=step.output("metrics"), key=step.key, iteration=iteration,
                   problems_url=run.output("problems/train", "problems") if "problems" in step.inputs else None)
    with on_gpus(train_devices(run.cfg.train)):
        return run.submit(train_student_step, name, job=job)


def self_generate(run: Run, iteration: int, student: str) -> dict:
    name = f"iter-{iteration:02d}/generate"
    step, cfg = run.steps[name], run.cfg
    job = GenerationJob(problems_url=run.output("problems/train", "problems"), output_url=step.output("samples"),
                        key=step.key, engine=cfg.siked.engine, sampling=cfg.siked.sampling, model=student,
                        strategies=(), shard_size=cfg.teacher.shard_size, iteration=iteration, source="student")
    with on_gpus(engine_devices(cfg.siked.engine)):
        return run.submit(generate_samples, name, job=job)


@flow(name="siked-iteration", flow_run_name="iteration-{iteration:02d}")
def siked_iteration(cfg: RunConfig, layout: RunLayout, iteration: int, student: dict) -> dict:
    """One SIKeD iteration: self-generate, verify, keep the correct, mix, train, evaluate."""
    run = Run(cfg, layout, pipeline_steps(cfg, layout))
    stage = f"iter-{iteration:02d}"
    problems_url = run.output("problems/train", "problems")
    samples = self_generate(run, iteration, student["path"])

    verified_url = run.output(f"{stage}/verify", "verified")
    verified = run.submit(verify, f"{stage}/verify", samples_url=samples["path"], problems_url=problems_url,
                          output=verified_url, key=run.steps[f"{stage}/verify"].key, cfg=run.cfg.verify,
                          iteration=iteration)

    self_set_url = run.output(f"{stage}/distill_set", "distill_set")
    self_set = run.submit(build_distill_set, f"{stage}/distill_set", verified_url=verified_url,
                          problems_url=problems_url, output=self_set_url, key=run.steps[f"{stage}/distill_set"].key,
                          iteration=iteration, biased=run.cfg.teacher.biased)

    mix_step = run.steps[f"{stage}/mix"]
    mixed = run.submit(mix_training_set, mix_step.name, self_set_url=self_set_url, verified_url=verified_url,
                       teacher_set_url=run.output("iter-00/distill_set", "distill_set"),
                       output=mix_step.output("train_set"), key=mix_step.key, iteration=iteration,
                       rule=run.cfg.siked.mixing, target_alpha=mix_step.reads["target_alpha"], seed=run.cfg.seed)

    start = student["path"] if run.cfg.train.continue_from_previous else run.cfg.train.model
    new_student = train(run, iteration, mixed["path"], start)
    scores = evaluate(run, stage, new_student["path"])
    record = {"iteration": iteration, "samples": samples, "verified": verified, "self_set": self_set,
              "mix": mixed["mix"], "train_set": mixed, "student": new_student, "eval": scores}
    publish_iteration(run.layout, record)
    return record


@flow(name="siked", flow_run_name="{cfg.name}")
def siked_flow(cfg: RunConfig) -> dict:
    """Teacher round (iteration 0), then `cfg.siked.iterations` self-guided iterations."""
    layout = run_layout(cfg)
    run = Run(cfg, layout, pipeline_steps(cfg, layout))
    record_run(layout, cfg, run.steps)
    freeze_eval_sets(run)
    teacher = teacher_steps(run)  # freezes the training problems the contamination check reads
    check_contamination(run)
    base_scores = evaluate(run, "base", cfg.train.model)
    if base_scores:
        publish_base(layout, base_scores)

    student = train(run, 0, teacher["distill_set"]["path"], cfg.train.model)
    scores = evaluate(run, "iter-00", student["path"])
    records = [{"iteration": 0, "teacher": teacher, "student": student, "eval": scores}]
    publish_iteration(layout, records[0])

    for iteration in range(1, cfg.siked.iterations + 1):
        record = siked_iteration(cfg, layout, iteration, student)
        student = record["student"]
        records.append(record)

    report = publish_run_report(layout, run.steps["report"])
    return {"run_id": layout.run_id, "run_dir": layout.run_dir, "report": report, "iterations": len(records)}


@flow(name="siked-eval", flow_run_name="eval-{cfg.name}")
def eval_only_flow(cfg: RunConfig, model: str, model_hash: str | None = None) -> tuple[list[dict], str]:
    """Evaluate one model on the configured benchmarks, as runs evaluate their students."""
    layout = run_layout(cfg)
    run = Run(cfg, layout, eval_only_steps(cfg, layout, model, model_hash))
    record_run(layout, cfg, run.steps)
    freeze_eval_sets(run)
    scores = evaluate(run, "eval", model)
    write_json(layout.summary("eval"), {"stage": "eval", "model": model, "eval": scores})
    return scores, layout.run_dir
