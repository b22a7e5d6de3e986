"""The SIKeD pipeline as one Prefect flow.

    siked run configs/quickstart.yaml [key=value ...]

Reads like the paper's algorithm: the teacher solves the training problems with every strategy,
correct solutions train the student (iteration 0); then each iteration the student samples its own
solutions, the correct ones are mixed with teacher data, and the student is trained again, starting
from the previous student. What each step reads and where it writes is described once, in
tasks.pipeline; a step whose outputs are complete in the step store (computed by this run or by
any other run that agrees on what the step reads) is reused, so rerunning a finished config executes
nothing, a changed config executes only the steps it changes, and `siked resume` continues a killed
run from its artifacts.
"""

from __future__ import annotations

from prefect import flow

from distill.config import RunConfig
from flows.reports.ui import publish_base, publish_iteration, publish_run_report
from flows.run_setup import Run, record_run, run_layout
from flows.run_steps import (
    check_contamination,
    evaluate,
    freeze_eval_sets,
    generate,
    mix,
    score,
    train,
    verify_and_select,
)
from flows.teacher import teacher_steps
from storage.fs import write_json
from storage.paths import RunLayout
from tasks.pipeline import eval_only_steps, pipeline_steps


@flow(name="siked-iteration", flow_run_name="iteration-{iteration:02d}")
def siked_iteration(cfg: RunConfig, layout: RunLayout, iteration: int, attempt: str) -> dict:
    """One SIKeD iteration: self-generate, verify, keep the correct (and have the teacher score them,
    with `token_level.use`), mix, train, evaluate."""
    run = Run(cfg, layout, pipeline_steps(cfg, layout), attempt)
    stage = f"iter-{iteration:02d}"
    samples = generate(run, iteration)
    verified, self_set = verify_and_select(run, iteration)
    scored = score(run, iteration)  # the teacher's token-level signal, when `token_level.use` asks for it
    mixed = mix(run, iteration)  # None for on-policy distillation: it trains on every sample
    new_student = train(run, iteration)
    scores = evaluate(run, stage, new_student["path"])
    record = {"iteration": iteration, "samples": samples, "verified": verified, "self_set": self_set,
              "mix": mixed["mix"] if mixed else None, "train_set": mixed or self_set, "student": new_student,
              "eval": scores}
    if scored is not None:
        record["token_scores"] = scored
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
    teacher_scores = score(run, 0)  # word-level distillation: the teacher's scores of its own samples
    if teacher_scores is not None:
        teacher["token_scores"] = teacher_scores
    check_contamination(run)
    base_scores = evaluate(run, "base", cfg.train.model)
    if base_scores:
        publish_base(layout, base_scores)

    student = train(run, 0)
    scores = evaluate(run, "iter-00", student["path"])
    records = [{"iteration": 0, "teacher": teacher, "student": student, "eval": scores}]
    publish_iteration(layout, records[0])

    for iteration in range(1, cfg.siked.iterations + 1):
        records.append(siked_iteration(cfg, layout, iteration, run.attempt))

    report = publish_run_report(layout, run.steps["report"], forced=run.input_ran("report"))
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
