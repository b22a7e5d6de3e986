"""Training step: one student per iteration, trained in child processes, merged and marked done.

The training loop checkpoints every N steps under `checkpoints/` in the step's folder, so a step killed mid-way
resumes from its newest complete checkpoint; the student folder gets its manifest last.

Under a remote run root (s3://) training runs in the local mirrors of those folders
(storage.mirror): the student is uploaded when training ends, its manifest last, and a previous
student to start from is downloaded first. Checkpoints stay on the training machine: a step
resumed on another machine retrains that iteration from its start model.
"""

from __future__ import annotations

from pathlib import Path

from storage.artifacts import read_artifact, with_manifests, write_artifact
from storage.folders import folder_manifest, unmark_folder_complete
from storage.mirror import local_model, mirror_dir, publish_folder
from storage.paths import models_dir
from tasks.compute import Stopwatch, cost
from tasks.jobs.train import TrainJob, attach_scores, fraction_done, planned_steps
from tasks.progress import with_progress
from tasks.steps import step_task


def _ref(job: TrainJob) -> dict:
    manifest = folder_manifest(job.output_dir)
    return {"path": job.output_dir, "content_hash": manifest["content_hash"], "train": manifest.get("info", {})}


@step_task(_ref, name="train", task_run_name="iter-{job.iteration:02d}-train", retries=1, retry_delay_seconds=5)
def train_student_step(job: TrainJob) -> dict:
    """The merged student folder at `job.output_dir`, and the training metrics artifact. A killed
    attempt's newest checkpoint is resumed from."""
    from distill.models import resolve_model
    from distill.training.launch import launch_training
    from distill.training.loop import LoopOptions

    watch = Stopwatch()
    rows = read_artifact(job.train_set_url, "train_examples").to_pandas()
    if rows.empty:
        raise ValueError(f"{job.train_set_url} has no training rows: nothing was verified correct")
    if job.problems_url is not None:
        problems = read_artifact(job.problems_url, "problems").to_pandas()
        rows["label_text"] = rows["question_id"].map(dict(zip(problems["id"], problems["answer_text"], strict=True)))
    joined = None
    if job.token_scores_url is not None:
        columns = ["sample_id", "completion_ids", "top_ids", "top_logprobs", "sampled_logprobs"]
        scores = read_artifact(job.token_scores_url, "token_scores", columns=columns).to_pylist()
        rows, joined = attach_scores(rows, scores, job.scored_rows)
    model_path = resolve_model(local_model(job.start_model), models_dir())
    output, checkpoints = mirror_dir(job.output_dir), mirror_dir(job.checkpoint_dir)
    unmark_folder_complete(job.output_dir)  # the shared copy, then the local one being rewritten
    unmark_folder_complete(output)
    result = with_progress(f"train-{Path(job.output_dir).parent.name}", f"Training iteration {job.iteration}",
                           lambda: fraction_done(job, planned_steps(job.cfg, len(rows))),
                           launch_training, job.cfg, rows, model_path, output, checkpoints,
                           LoopOptions(label_max_tokens=job.label_max_tokens, rel_tol=job.rel_tol,
                                       schedule_round=job.schedule_round, token_term=job.token_term))
    # The model it started from is a parent too: a retrained start model retrains this one.
    parents = with_manifests(job.train_set_url, job.problems_url, job.token_scores_url, job.start_model)
    write_artifact(job.metrics_url, result.metrics, "train_metrics", config_hash=job.key, parents=parents)
    info = {"best_step": result.best_step, "best_val": result.best_val, "steps": result.steps,
            "data": result.data_report, "start_model": job.start_model,
            **cost(watch, tokens_trained=result.tokens_trained)}
    if joined is not None:
        info["token_level"] = {**joined, "term": job.token_term}
    publish_folder(output, job.output_dir, info, config_hash=job.key, parents=parents)
    return _ref(job)
