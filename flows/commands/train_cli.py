"""`siked train CONFIG [key=value ...]`: train one student outside the full pipeline, through the
same steps, keys and training body as `siked run` (tasks.pipeline.train_only_steps).

    siked train configs/quickstart.yaml                        # the teacher round's distillation set
                                                               # (computed first when not done)
    siked train configs/quickstart.yaml train_set=set.parquet  # any TRAIN_EXAMPLES Parquet file
    siked train configs/dss_svamp.yaml                         # DSS's SVAMP train split, PaLM rationales

Besides config overrides it takes three keys of its own: `train_set=PATH` (the training rows),
`iteration=N` (the iteration the student stands for, default 0) and `resume=false` (start over
instead of continuing from the newest checkpoint, or reusing a finished student). Without
`train_set`, the rows are the DSS rationales when `train_data.name` is `dss_svamp` or `dss_cqa`, a
file benchmark's `rationale` field when it names one, else the teacher round's distillation set.

The rows and the student are steps like any other: frozen into the step store under their keys
(a `train_set` file by its content), reused when done, listed in the run's steps.json. The student's
folder (its folder manifest written last) is printed on stdout; beside it `train_metrics.parquet`
and `checkpoints/`. Under a remote run root (s3://) training runs in local mirrors of those folders
(storage.mirror): the student is uploaded at the end, the checkpoints stay local.
"""

from __future__ import annotations

import sys

from prefect import flow

from distill.config import ConfigError, RunConfig
from flows import prefect_api
from flows.run_setup import Run, record_run, run_layout
from flows.run_steps import freeze_training_problems, generate, train, verify_and_select
from tasks.gate import discard_outputs
from tasks.pipeline import train_only_steps
from tasks.train_set import freeze_train_set, has_given_rationales

CLI_KEYS = ("train_set", "iteration", "resume")


def split_cli_keys(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this command's own keys, the config overrides)."""
    own, rest = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() in CLI_KEYS:
            own[key.strip()] = value.strip()
        else:
            rest.append(item)
    return own, rest


@flow(name="siked-train", flow_run_name="train-{cfg.name}")
def train_flow(cfg: RunConfig, train_set: str | None, iteration: int, fresh: bool) -> dict:
    """The steps that make the training rows, then the student of `iteration` (from scratch with `fresh`)."""
    layout = run_layout(cfg)
    given = train_set is None and has_given_rationales(cfg.train_data)
    run = Run(cfg, layout, train_only_steps(cfg, layout, train_set=train_set, given_rationales=given,
                                            iteration=iteration))
    record_run(layout, cfg, run.steps)
    if "problems/train" in run.steps:
        freeze_training_problems(run)
    if "train_set" in run.steps:
        step = run.steps["train_set"]
        run.submit(freeze_train_set, step.name, **step.job, output=step.output("train_set"), key=step.key)
    else:
        generate(run, 0)
        verify_and_select(run, 0)
    name = f"iter-{iteration:02d}/train"
    if fresh:
        discard_outputs(run.steps[name], forced=True)
    return train(run, iteration)


def run_train_cli(config_path: str, overrides: list[str]) -> int:
    from flows.commands.config_files import read_config
    from flows.commands.preflight import check_train
    from storage.fs import is_remote_url
    from storage.mirror import mirror_dir

    own, rest = split_cli_keys(overrides)
    cfg = read_config(config_path, rest)
    prefect_api.start_early()
    iteration = int(own.get("iteration", "0"))
    fresh = own.get("resume", "true").lower() in ("false", "0", "no")
    check_train(cfg.train)
    train_set = own.get("train_set")
    if train_set is not None:
        from storage import fs

        if not fs.exists(train_set):
            raise ConfigError(f"train_set {train_set} does not exist")
    prefect_api.ready()
    result = train_flow(cfg, train_set, iteration, fresh)
    student = result["path"]
    info = result.get("train", {})
    best = f"best step {info.get('best_step')} {info.get('best_val')}" if info.get("best_step") else "no validation split"
    print(f"[siked train] {info.get('steps')} steps; {best}; metrics {student.removesuffix('student')}"
          "train_metrics.parquet", file=sys.stderr)
    print(student if is_remote_url(student) else mirror_dir(student))
    return 0
