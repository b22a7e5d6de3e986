"""The SIKeD pipeline as one Prefect flow.

    siked run configs/quickstart.yaml [key=value ...]

Reads like the paper's algorithm: the teacher solves the training problems with every strategy,
correct solutions train the student (iteration 0); then each iteration the student samples its own
solutions, the correct ones are mixed with teacher data, and the student is trained again, starting
from the previous student. Every step writes Parquet through storage and is skipped when its
manifest says it is done, so rerunning a finished config executes nothing and `siked resume`
continues a killed run from its artifacts.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from distill.config import BenchmarkRef, RunConfig
from distill.mixing import alpha_for_iteration
from flows.run_setup import run_layout, save_config
from flows.teacher import teacher_steps
from flows.ui import publish_base, publish_iteration, publish_run_report
from storage.fs import write_json
from storage.paths import DataDirMissing, RunLayout, data_dir
from tasks.distill_set import build_distill_set
from tasks.evaluate import EvalJob, evaluate_model
from tasks.generate import GenerationJob, generate_samples
from tasks.gpu import engine_devices, on_gpus, train_devices
from tasks.mix import mix_training_set
from tasks.problems import freeze_problems
from tasks.steps import step_key, submit_step
from tasks.train import TrainJob, train_student_step
from tasks.verify import verify


def eval_problem_sets(cfg: RunConfig, layout: RunLayout) -> list[tuple[str, str]]:
    """(benchmark label, problems URL) of every evaluation set, frozen once per run."""
    sets = []
    for ref in cfg.eval.benchmarks:
        if ref.skip_if_missing and not _data_available(ref, cfg.data_dir):
            get_run_logger().warning("skipping %s: no data folder (SIKED_DATA_DIR) and skip_if_missing is set", ref.name)
            continue
        label = f"{ref.name}-{ref.split}"
        url = layout.problems(f"eval-{label}")
        key = step_key("problems", ref)
        submit_step(freeze_problems, key, url, "problems", ref=ref, name=f"eval-{label}", output=url, key=key,
                    data_folder=cfg.data_dir)
        sets.append((label, url))
    return sets


def _data_available(ref: BenchmarkRef, configured: str | None) -> bool:
    if ref.name == "arith" or ref.source == "hub":
        return True
    try:
        data_dir(configured)
    except DataDirMissing:
        return False
    return True


def evaluate(cfg: RunConfig, layout: RunLayout, model: str, label: str, stage: str,
             eval_sets: list[tuple[str, str]], inputs: list[str]) -> list[dict]:
    """Summaries of `model` on every evaluation set and mode (`stage`: `base` or `iter-XX`)."""
    if not eval_sets:
        return []
    engine = cfg.siked.engine
    key = step_key("evaluate", {"engine": engine, "eval": cfg.eval, "verify": cfg.verify},
                   inputs=[url for _, url in eval_sets] + inputs, model=model)
    targets = tuple((bench, url, mode, layout.predictions_at(stage, bench, mode))
                    for bench, url in eval_sets for mode in cfg.eval.modes)
    job = EvalJob(model=model, engine=engine, verify=cfg.verify, max_tokens=cfg.eval.max_tokens,
                  label_max_tokens=cfg.eval.label_max_tokens,
                  targets=targets, key=key, label=label)
    with on_gpus(engine_devices(engine)):
        return submit_step(evaluate_model, key, [t[3] for t in targets], "predictions", job=job)


def train(cfg: RunConfig, layout: RunLayout, iteration: int, train_set_url: str, start_model: str,
          start_inputs: list[str]) -> dict:
    """Train the student of `iteration` on `train_set_url`, starting from `start_model`."""
    output = layout.student(iteration)
    key = step_key("train", cfg.train, inputs=[train_set_url] + start_inputs, start=start_model)
    job = TrainJob(train_set_url=train_set_url, start_model=start_model, cfg=cfg.train, output_dir=output,
                   checkpoint_dir=layout.checkpoints(iteration), metrics_url=layout.train_metrics(iteration),
                   key=key, iteration=iteration)
    with on_gpus(train_devices(cfg.train)):
        return submit_step(train_student_step, key, output, None, job=job)


def self_generate(cfg: RunConfig, layout: RunLayout, iteration: int, student: str, problems_url: str,
                  student_inputs: list[str]) -> dict:
    output = layout.samples(iteration)
    sampling = cfg.siked.sampling
    key = step_key("generate", {"engine": cfg.siked.engine, "sampling": sampling,
                                "shard_size": cfg.teacher.shard_size},
                   inputs=[problems_url] + student_inputs, iteration=iteration)
    job = GenerationJob(problems_url=problems_url, output_url=output, key=key, engine=cfg.siked.engine,
                        sampling=sampling, model=student, strategies=(), shard_size=cfg.teacher.shard_size,
                        iteration=iteration, source="student")
    with on_gpus(engine_devices(cfg.siked.engine)):
        return submit_step(generate_samples, key, output, "samples", job=job)


@flow(name="siked-iteration", flow_run_name="iteration-{iteration:02d}")
def siked_iteration(cfg: RunConfig, layout: RunLayout, iteration: int, student: dict, problems_url: str,
                    teacher_set_url: str, eval_sets: list[tuple[str, str]]) -> dict:
    """One SIKeD iteration: self-generate, verify, keep the correct, mix, train, evaluate."""
    student_inputs = [student["path"]]
    samples = self_generate(cfg, layout, iteration, student["path"], problems_url, student_inputs)

    verified_url = layout.verified(iteration)
    key = step_key("verify", cfg.verify, inputs=[samples["path"]])
    verified = submit_step(verify, key, verified_url, "verified", samples_url=samples["path"],
                           problems_url=problems_url, output=verified_url, key=key, cfg=cfg.verify,
                           iteration=iteration)

    self_set_url = layout.distill_set(iteration)
    key = step_key("distill_set", {"biased": None}, inputs=[verified_url, problems_url])
    self_set = submit_step(build_distill_set, key, self_set_url, "train_examples", verified_url=verified_url,
                           problems_url=problems_url, output=self_set_url, key=key, iteration=iteration)

    train_set_url = layout.train_set(iteration)
    target = alpha_for_iteration(cfg.siked.alpha_schedule, iteration) if cfg.siked.mixing == "alpha" else None
    key = step_key("mix", {"rule": cfg.siked.mixing, "alpha": target, "seed": cfg.seed},
                   inputs=[self_set_url, verified_url, teacher_set_url])
    mixed = submit_step(mix_training_set, key, train_set_url, "train_examples", self_set_url=self_set_url,
                        verified_url=verified_url, teacher_set_url=teacher_set_url, output=train_set_url, key=key,
                        iteration=iteration, rule=cfg.siked.mixing, target_alpha=target, seed=cfg.seed)

    continuing = cfg.train.continue_from_previous
    start = student["path"] if continuing else cfg.train.model
    new_student = train(cfg, layout, iteration, train_set_url, start, student_inputs if continuing else [])
    scores = evaluate(cfg, layout, new_student["path"], f"iter-{iteration:02d}", f"iter-{iteration:02d}",
                      eval_sets, [new_student["path"]])
    record = {"iteration": iteration, "samples": samples, "verified": verified, "self_set": self_set,
              "mix": mixed["mix"], "train_set": mixed, "student": new_student, "eval": scores}
    publish_iteration(layout, record)
    return record


@flow(name="siked", flow_run_name="{cfg.name}")
def siked_flow(cfg: RunConfig) -> dict:
    """Teacher round (iteration 0), then `cfg.siked.iterations` self-guided iterations."""
    layout = run_layout(cfg)
    save_config(layout, cfg)
    eval_sets = eval_problem_sets(cfg, layout)
    base_scores = (evaluate(cfg, layout, cfg.train.model, "base", "base", eval_sets, [])
                   if cfg.eval.evaluate_base else [])
    if base_scores:
        publish_base(layout, base_scores)

    teacher = teacher_steps(cfg, layout)
    problems_url, teacher_set_url = teacher["problems"]["path"], teacher["distill_set"]["path"]
    student = train(cfg, layout, 0, teacher_set_url, cfg.train.model, [])
    scores = evaluate(cfg, layout, student["path"], "iter-00", "iter-00", eval_sets, [student["path"]])
    records = [{"iteration": 0, "teacher": teacher, "student": student, "eval": scores}]
    publish_iteration(layout, records[0])

    for iteration in range(1, cfg.siked.iterations + 1):
        record = siked_iteration(cfg, layout, iteration, student, problems_url, teacher_set_url, eval_sets)
        student = record["student"]
        records.append(record)

    report = publish_run_report(layout)
    return {"run_id": layout.run_id, "run_dir": layout.run_dir, "report": report, "iterations": len(records)}


@flow(name="siked-eval", flow_run_name="eval-{cfg.name}")
def eval_only_flow(cfg: RunConfig, model: str) -> tuple[list[dict], str]:
    """Evaluate one model on the configured benchmarks, as runs evaluate their students."""
    layout = run_layout(cfg)
    save_config(layout, cfg)
    eval_sets = eval_problem_sets(cfg, layout)
    scores = evaluate(cfg, layout, model, "eval", "eval", eval_sets, [])
    write_json(layout.summary("eval"), {"stage": "eval", "model": model, "eval": scores})
    return scores, layout.run_dir
