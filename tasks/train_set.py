"""The training set `siked train` reads when it is not the pipeline's distillation set, frozen into
the step store like any other step's output: a user's TRAIN_EXAMPLES file, or the rationales that
`train_data` brings (DSS's released PaLM rationales for dss_svamp and dss_cqa, or a file benchmark's
`rationale` field)."""

from __future__ import annotations

import sys
from typing import Any

from distill.config import BenchmarkRef
from storage import fs
from storage.artifacts import ArtifactMissing, artifact_ref, read_artifact, with_manifests, write_artifact
from storage.manifest import manifest_url
from tasks.compute import Stopwatch, cost
from tasks.steps import step_task

DSS_SETS = ("dss_svamp", "dss_cqa")  # the sets whose released PaLM rationales `siked train` reads


def has_given_rationales(ref: BenchmarkRef) -> bool:
    """Whether a training set brings rationales of its own: DSS's released ones, or a file's `rationale` field."""
    return ref.name in DSS_SETS or (ref.name == "file" and ref.rationale is not None)


def read_train_set(path: str) -> Any:
    """TRAIN_EXAMPLES rows (a pyarrow Table) of a Parquet artifact (manifest checked) or a plain Parquet file."""
    if fs.exists(manifest_url(path)):
        return read_artifact(path, "train_examples")
    if not fs.exists(path):
        raise ArtifactMissing(f"train_set {path} does not exist")
    import pyarrow.parquet as pq

    from storage.tables import to_table

    filesystem, inner = fs.resolve(path)
    with filesystem.open(inner, "rb") as handle:
        return to_table(pq.read_table(handle), "train_examples")


def given_rationale_rows(ref: BenchmarkRef, data_folder: str | None, given_rationales: str = "all"
                         ) -> list[dict[str, Any]]:
    """TRAIN_EXAMPLES rows from the rationales `ref` brings: DSS's released PaLM rationales, or the
    `rationale` field of a file benchmark (the text before a final `####` line). Each row keeps the
    dataset's label as `label_text`. `given_rationales` (`teacher.given_rationales`): `all` keeps
    PaLM's rationales whatever answer PaLM gave, as DSS does; `correct` only those whose answer,
    read by DSS's parse, equals the gold."""
    from distill.benchmarks import load_rationales
    from distill.benchmarks.file import given_rationales as file_rationales
    from distill.training.data import dss_rationale_rows
    from tasks.jobs.benchmarks import load_problems

    if not has_given_rationales(ref):
        raise ValueError(f"train_data is {ref.benchmark_name!r}: rationales are read for dss_svamp, dss_cqa "
                         "and file benchmarks with a `rationale` field (give train_set=PATH for other data)")
    if ref.name == "file" and given_rationales == "correct":
        raise ValueError("teacher.given_rationales=correct: a file's `rationale` field states no answer of its "
                         "own to check against the gold; use `all` (every rationale is kept)")
    problems = load_problems(ref, data_folder).problems
    if ref.name == "file":
        rows, counts = dss_rationale_rows(problems, file_rationales(problems), model=f"file:{ref.rationale}")
        counts.pop("palm_answer_differs", None)  # a file's rationales state no separate answer to compare
        note = f"rationales from field {ref.rationale!r}; records without one are dropped"
    else:
        from storage.paths import data_dir

        keep_wrong = given_rationales == "all"
        rows, counts = dss_rationale_rows(problems, load_rationales(ref.name, ref.split, data_dir(data_folder)),
                                          keep_wrong=keep_wrong)
        note = ("no_rationale rows are dropped, palm_answer_differs rows are "
                + ("kept as in DSS" if keep_wrong else "dropped (teacher.given_rationales=correct)"))
    print(f"[siked train] {ref.benchmark_name}/{ref.split}: {len(problems)} problems -> {len(rows)} rows "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none dropped'}; {note})",
          file=sys.stderr)
    return rows


def train_set_result(output: str, **_: object) -> dict:
    return artifact_ref(output)


@step_task(train_set_result, name="train-set", task_run_name="train-set", retries=0)
def freeze_train_set(output: str, key: str, path: str | None = None, ref: BenchmarkRef | None = None,
                     data_folder: str | None = None, given_rationales: str = "all") -> dict:
    """The rows of the file at `path`, or the rationales `ref` brings, as a TRAIN_EXAMPLES artifact."""
    watch = Stopwatch()
    if path is not None:
        table = read_train_set(path)
        parents = with_manifests(path) or [{"path": path, "content_hash": fs.sha256_file(path)}]
        write_artifact(output, table, "train_examples", config_hash=key, parents=parents, info=cost(watch))
        return train_set_result(output)
    rows = given_rationale_rows(ref, data_folder, given_rationales)
    recorded = [{k: v for k, v in row.items() if k != "label_text"} for row in rows]  # not a set column
    write_artifact(output, recorded, "train_examples", config_hash=key, info=cost(watch))
    return train_set_result(output)
