"""How a flow submits each kind of step: the step's job (tasks.pipeline) and the locations of
its inputs and outputs, handed to the step's task through Run.submit (tasks.steps decides reuse).
Nothing here reads the run's config for a step's settings: a step is given its job, nothing else.
"""

from __future__ import annotations

from prefect import get_run_logger

from flows.run_setup import Run
from storage.fs import write_json
from tasks.contamination import find_overlaps
from tasks.distill_set import build_distill_set
from tasks.evaluate import EvalJob, evaluate_model
from tasks.generate import GenerationJob, generate_samples
from tasks.gpu import engine_devices, on_gpus, train_devices
from tasks.mix import mix_training_set
from tasks.pipeline import CONTAMINATION, FREE_CHOICE, eval_targets, skipped_eval_sets
from tasks.problems import freeze_problems
from tasks.score import ScoreJob, score_samples
from tasks.train import TrainJob, train_student_step
from tasks.verify import verify


def freeze_training_problems(run: Run) -> dict:
    step = run.steps["problems/train"]
    return run.submit(freeze_problems, step.name, **step.job, name="train", output=step.output("problems"),
                      key=step.key)


def freeze_eval_sets(run: Run) -> None:
    """Every evaluation set the config names, frozen once and shared by every stage's evaluation."""
    for ref in skipped_eval_sets(run.cfg):
        get_run_logger().warning("skipping %s: %s missing and skip_if_missing is set", ref.benchmark_name,
                                 ref.path if ref.name == "file" else "no data folder (SIKED_DATA_DIR)")
    for name, step in run.steps.items():
        if name.startswith("problems/eval-"):
            run.submit(freeze_problems, name, **step.job, name=name.removeprefix("problems/"),
                       output=step.output("problems"), key=step.key)


def check_contamination(run: Run) -> None:
    """Overlaps of the evaluation sets with the training problems, saved with the run for its report."""
    step = run.steps.get(CONTAMINATION)
    if step is None:
        return
    sets = {role.removeprefix("problems:"): run.input(CONTAMINATION, role)
            for role in step.inputs if role.startswith("problems:")}
    summary = run.submit(find_overlaps, CONTAMINATION, **step.job, train_url=run.input(CONTAMINATION, "train"),
                         eval_sets=sets, output=step.output("overlaps"), key=step.key)
    write_json(run.layout.contamination, {"ngram": step.job["cfg"].ngram, "dropped": run.cfg.eval.decontamination.drop,
                                          "sets": summary})


def evaluate(run: Run, stage: str, model: str) -> list[dict]:
    """Summaries of `model` on every evaluation set and mode (`stage`: `base`, `iter-XX` or `eval`)."""
    name = f"{stage}/evaluate"
    if name not in run.steps:
        return []
    step = run.steps[name]
    job = EvalJob(**{"model": model, **step.job}, targets=eval_targets(step, run.steps), key=step.key, label=stage,
                  exclude_url=run.input(name, "contamination") if "contamination" in step.inputs else None)
    with on_gpus(engine_devices(job.engine)):
        return run.submit(evaluate_model, name, job=job)


def train(run: Run, iteration: int) -> dict:
    """Train the student of `iteration` on its training set, from the previous student or `train.model`."""
    name = f"iter-{iteration:02d}/train"
    step = run.steps[name]
    start = run.input(name, "start") if "start" in step.inputs else step.job["cfg"].model
    optional = {role: run.input(name, role) if role in step.inputs else None for role in ("problems", "token_scores")}
    job = TrainJob(train_set_url=run.input(name, "train_set"), start_model=start, cfg=step.job["cfg"],
                   output_dir=step.output("student"), checkpoint_dir=f"{step.folder}/checkpoints",
                   metrics_url=step.output("metrics"), key=step.key, iteration=iteration,
                   problems_url=optional["problems"], token_scores_url=optional["token_scores"],
                   **{k: v for k, v in step.job.items() if k != "cfg"})  # label-mode validation's scoring
    with on_gpus(train_devices(job.cfg)):
        return run.submit(train_student_step, name, job=job)


def generate(run: Run, iteration: int) -> dict:
    """The teacher's samples (iteration 0) or the current student's."""
    name = f"iter-{iteration:02d}/generate"
    step = run.steps[name]
    job = step.job
    model = run.input(name, "student") if "student" in step.inputs else job["engine"].model
    probe = {"free_choice_url": step.output(FREE_CHOICE)} if FREE_CHOICE in step.outputs else {}
    gen = GenerationJob(problems_url=run.input(name, "problems"), output_url=step.output("samples"), key=step.key,
                        model=model, iteration=iteration, **job, **probe)
    with on_gpus(engine_devices(gen.engine)):
        return run.submit(generate_samples, name, job=gen)


def score(run: Run, iteration: int) -> dict | None:
    """The teacher's token-level scores of the iteration's training rows (`token_level.use`), or None
    when the run does not score them. The self-teacher is the student that generated them (in the
    teacher round, the student to be)."""
    name = f"iter-{iteration:02d}/score"
    if name not in run.steps:
        return None
    step = run.steps[name]
    job = step.job
    student = run.input(name, "student") if "student" in step.inputs else job["student_model"]
    scoring = ScoreJob(rows_url=run.input(name, "rows"), output_url=step.output("token_scores"), key=step.key,
                       engine=job["engine"], model=student if job["teacher"] == "self" else job["engine"].model,
                       student=student, teacher=job["teacher"], top_k=job["top_k"], iteration=iteration,
                       shard_size=job["shard_size"], guard_samples=job["guard_samples"] if job["guards"] else 0)
    with on_gpus(engine_devices(scoring.engine)):
        return run.submit(score_samples, name, job=scoring)


def verify_and_select(run: Run, iteration: int) -> tuple[dict, dict]:
    """Verdicts for the iteration's samples, then its distillation set (one correct row per
    question and strategy)."""
    stage = f"iter-{iteration:02d}"
    name = f"{stage}/verify"
    verified = run.submit(verify, name, **run.steps[name].job, samples_url=run.input(name, "samples"),
                          problems_url=run.input(name, "problems"), output=run.steps[name].output("verified"),
                          key=run.steps[name].key, iteration=iteration)
    name = f"{stage}/distill_set"
    selected = run.submit(build_distill_set, name, **run.steps[name].job, verified_url=run.input(name, "verified"),
                          problems_url=run.input(name, "problems"), output=run.steps[name].output("distill_set"),
                          key=run.steps[name].key, iteration=iteration)
    return verified, selected


def mix(run: Run, iteration: int) -> dict | None:
    """The round's training set, or None in a round that mixes nothing (on-policy distillation)."""
    name = f"iter-{iteration:02d}/mix"
    if name not in run.steps:
        return None
    step = run.steps[name]
    free_choice = run.input(name, FREE_CHOICE) if FREE_CHOICE in step.inputs else None
    return run.submit(mix_training_set, name, **step.job, self_set_url=run.input(name, "self_set"),
                      verified_url=run.input(name, "verified"), teacher_set_url=run.input(name, "teacher_set"),
                      output=step.output("train_set"), key=step.key, iteration=iteration,
                      free_choice_url=free_choice)
