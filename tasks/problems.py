"""Freeze the problems a run uses into a Parquet artifact, so every later step reads the same ones.

Exemplar problems of the teacher prompts are removed here: from training questions by id and
text, from evaluation sets by text (other benchmarks have other ids), with the count recorded.
"""

from __future__ import annotations

from prefect import get_run_logger

from distill.benchmarks import BenchmarkError
from distill.config import BenchmarkRef
from distill.strategies.exemplars import is_exemplar
from storage.artifacts import artifact_ref, write_artifact
from tasks.compute import Stopwatch, cost
from tasks.jobs.benchmarks import load_problems
from tasks.steps import step_task


def problems_result(output: str, **_: object) -> dict:
    return artifact_ref(output)


@step_task(problems_result, name="problems", task_run_name="problems-{name}", retries=0)
def freeze_problems(ref: BenchmarkRef, name: str, output: str, key: str, data_folder: str | None = None) -> dict:
    """Load `ref`, drop exemplar problems, write PROBLEMS rows to `output`. Returns the artifact ref."""
    watch = Stopwatch()
    loaded = load_problems(ref, data_folder)
    if loaded.exclusions and ref.name == "file":
        shown = "\n".join(f"  {e.detail}" for e in loaded.exclusions[:10])
        more = f"\n  ... and {len(loaded.exclusions) - 10} more" if len(loaded.exclusions) > 10 else ""
        get_run_logger().warning("%s: %d records excluded (%s):\n%s%s", ref.path or ref.repo,
                                 len(loaded.exclusions), loaded.excluded_reasons(), shown, more)
    if why := loaded.why_no_problem():  # every record excluded: say why, not "after removing exemplars"
        raise BenchmarkError(why)
    kept = [p for p in loaded.problems if not is_exemplar(p.id, p.question)]
    if not kept:
        raise ValueError(f"benchmark {ref.benchmark_name}/{ref.split} gave no problems after removing exemplars")
    write_artifact(output, [p.to_row() for p in kept], "problems", config_hash=key, info=cost(watch))
    ref_out = problems_result(output)
    ref_out["excluded_exemplars"] = len(loaded.problems) - len(kept)
    ref_out["excluded"] = loaded.excluded_reasons()
    return ref_out
