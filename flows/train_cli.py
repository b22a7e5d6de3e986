"""`siked train CONFIG [key=value ...]`: train one student outside the full pipeline.

    siked train configs/quickstart.yaml                        # the run's distillation set
                                                               # (after `siked teacher`)
    siked train configs/quickstart.yaml train_set=set.parquet  # any TRAIN_EXAMPLES Parquet file
    siked train configs/dss_svamp.yaml                         # DSS's SVAMP train split, PaLM rationales

Besides config overrides it takes three keys of its own: `train_set=PATH` (the training rows),
`iteration=N` (which iteration folder of the run to write, default 0) and `resume=false` (start over
instead of continuing from the newest checkpoint). Without `train_set`, the rows are the DSS
rationales when `train_data.name` is `dss_svamp` or `dss_cqa`, a file benchmark's `rationale` field when
it names one, else the run's iteration-0 distillation set.

Writes, in the run folder: `iter-NN/student/` (the merged student, its folder manifest written last;
its path or URL is printed on stdout), `iter-NN/checkpoints/` (step checkpoints, metrics.jsonl,
data_report.json, tensorboard/) and `iter-NN/train_metrics.parquet` (one row per step and per
validation, TRAIN_METRICS). Under a remote run root (s3://) training runs in local mirrors of the
two folders (storage.mirror): the student is uploaded at the end, the checkpoints stay local.
"""

from __future__ import annotations

import sys
from typing import Any

from distill.config import ConfigError, RunConfig, section_hash

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


def _read_train_set(path: str) -> Any:
    """TRAIN_EXAMPLES rows of a Parquet artifact (manifest checked) or of a plain Parquet file."""
    from storage import fs
    from storage.artifacts import ArtifactMissing, read_artifact
    from storage.manifest import manifest_url

    if fs.exists(manifest_url(path)):
        return read_artifact(path, "train_examples").to_pandas()
    if not fs.exists(path):
        raise ArtifactMissing(f"train_set {path} does not exist")
    import pyarrow.parquet as pq

    from storage.tables import to_table

    filesystem, inner = fs.resolve(path)
    with filesystem.open(inner, "rb") as handle:
        return to_table(pq.read_table(handle), "train_examples").to_pandas()


DSS_SETS = ("dss_svamp", "dss_cqa")  # the sets whose released PaLM rationales `siked train` reads


def has_given_rationales(cfg: RunConfig) -> bool:
    """Whether `train_data` brings rationales of its own: DSS's released ones, or a file's `rationale` field."""
    ref = cfg.train_data
    return ref.name in DSS_SETS or (ref.name == "file" and ref.rationale is not None)


def dss_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """TRAIN_EXAMPLES rows from the rationales `cfg.train_data` brings: DSS's released PaLM rationales,
    or the `rationale` field of a file benchmark (the text before a final `####` line)."""
    from distill.benchmarks import load_rationales
    from distill.benchmarks.file import given_rationales
    from distill.training.data import dss_rationale_rows
    from tasks.jobs.benchmarks import load_problems

    ref = cfg.train_data
    if not has_given_rationales(cfg):
        raise ConfigError(f"train_data is {ref.benchmark_name!r}: rationales are read for dss_svamp, dss_cqa "
                          "and file benchmarks with a `rationale` field (give train_set=PATH for other data)")
    problems = load_problems(ref, cfg.data_dir).problems
    if ref.name == "file":
        rows, counts = dss_rationale_rows(problems, given_rationales(problems), model=f"file:{ref.rationale}")
        counts.pop("palm_answer_differs", None)  # a file's rationales state no separate answer to compare
        note = f"rationales from field {ref.rationale!r}; records without one are dropped"
    else:
        from storage.paths import data_dir

        rows, counts = dss_rationale_rows(problems, load_rationales(ref.name, ref.split, data_dir(cfg.data_dir)))
        note = "no_rationale rows are dropped, palm_answer_differs rows are kept as in DSS"
    print(f"[siked train] {ref.benchmark_name}/{ref.split}: {len(problems)} problems -> {len(rows)} rows "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none dropped'}; {note})",
          file=sys.stderr)
    return rows


def training_rows(cfg: RunConfig, layout: Any, own: dict[str, str], iteration: int) -> tuple[Any, Any]:
    """(rows, the parent reference of the metrics: an artifact URL, or {path, content_hash} of a
    plain file). DSS rows are saved as the iteration's train set, for the record."""
    from storage import fs
    from storage.artifacts import is_complete, write_artifact
    from storage.manifest import manifest_url

    if "train_set" in own:
        path = own["train_set"]
        rows = _read_train_set(path)
        if fs.exists(manifest_url(path)):
            return rows, path
        return rows, {"path": path, "content_hash": fs.sha256_file(path)}
    if has_given_rationales(cfg):
        rows = dss_rows(cfg)
        url = layout.train_set(iteration)
        recorded = [{k: v for k, v in row.items() if k != "label_text"} for row in rows]  # not a set column
        write_artifact(url, recorded, "train_examples", config_hash=section_hash(cfg.train_data))
        return rows, url
    from tasks.jobs.pipeline import pipeline_steps

    url = pipeline_steps(cfg, layout)["iter-00/distill_set"].output("distill_set")
    if not is_complete(url, kind="train_examples"):
        raise ConfigError(f"no training rows: give train_set=PATH, run `siked teacher` with this config "
                          f"first (it writes {url}), or use train_data.name=dss_svamp or dss_cqa")
    return _read_train_set(url), url


def run_train_cli(config_path: str, overrides: list[str]) -> int:
    from distill.models import resolve_model
    from distill.training.launch import launch_training
    from distill.training.loop import LoopOptions
    from flows.config_files import read_config
    from flows.preflight import check_train
    from flows.run_setup import run_layout, save_config
    from storage.artifacts import write_artifact
    from storage.folders import unmark_folder_complete
    from storage.fs import is_remote_url
    from storage.mirror import local_model, mirror_dir, publish_folder
    from storage.paths import models_dir

    own, rest = split_cli_keys(overrides)
    cfg = read_config(config_path, rest)
    iteration = int(own.get("iteration", "0"))
    resume = own.get("resume", "true").lower() not in ("false", "0", "no")
    check_train(cfg.train)
    layout = run_layout(cfg)
    save_config(layout, cfg)
    rows, parent = training_rows(cfg, layout, own, iteration)
    model_path = resolve_model(local_model(cfg.train.model), models_dir())
    # Training writes local folders; under a remote run root, the local mirrors of the run's ones.
    student = layout.student(iteration)
    unmark_folder_complete(student)  # never complete-looking while being rewritten
    unmark_folder_complete(mirror_dir(student))
    result = launch_training(cfg.train, rows, model_path, mirror_dir(student),
                             mirror_dir(layout.checkpoints(iteration)), LoopOptions(resume=resume))
    metrics_url = layout.train_metrics(iteration)
    write_artifact(metrics_url, result.metrics, "train_metrics", config_hash=section_hash(cfg.train),
                   parents=[parent])
    # Marked complete; under a remote run root also uploaded, its folder manifest written last.
    publish_folder(mirror_dir(student), student, {"steps": result.steps, "start_model": cfg.train.model},
                   config_hash=section_hash(cfg.train), parents=[parent])
    best = f"best step {result.best_step} {result.best_val}" if result.best_step else "no validation split"
    print(f"[siked train] {result.steps} steps; {best}; metrics {metrics_url}", file=sys.stderr)
    print(student if is_remote_url(student) else result.output_dir)
    return 0
