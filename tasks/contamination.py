"""Contamination step: which evaluation questions share word n-grams with the training problems or
the teacher's prompt exemplars (distill.decontamination), written as an OVERLAPS artifact."""

from __future__ import annotations

from collections import Counter

from distill.config import DecontaminationConfig
from distill.decontamination import overlaps
from storage.artifacts import read_artifact, write_artifact
from tasks.compute import Stopwatch, cost
from tasks.steps import step_task


def overlap_summary(rows: list[dict], sizes: dict[str, int]) -> dict[str, dict]:
    """{evaluation set: {questions, overlapping, ids}} from OVERLAPS rows."""
    ids: dict[str, set[str]] = {label: set() for label in sizes}
    for r in rows:
        ids.setdefault(r["benchmark"], set()).add(r["question_id"])
    return {label: {"questions": sizes.get(label), "overlapping": len(found), "ids": sorted(found),
                    "with_exemplars": sum(1 for r in rows if r["benchmark"] == label
                                          and r["source_id"].startswith("exemplar:"))}
            for label, found in ids.items()}


def _sizes(eval_sets: dict[str, str]) -> dict[str, int]:
    return {label: read_artifact(url, "problems", columns=["id"]).num_rows for label, url in eval_sets.items()}


def overlaps_result(eval_sets: dict[str, str], output: str, **_: object) -> dict:
    return overlap_summary(read_artifact(output, "overlaps").to_pylist(), _sizes(eval_sets))


@step_task(overlaps_result, name="contamination", task_run_name="problems-contamination", retries=0)
def find_overlaps(train_url: str, eval_sets: dict[str, str], output: str, key: str,
                  cfg: DecontaminationConfig) -> dict:
    """Overlaps of every evaluation set (`{label: problems URL}`) with the training problems."""
    watch = Stopwatch()
    sizes = _sizes(eval_sets)
    train = read_artifact(train_url, "problems", columns=["id", "question"]).to_pylist()
    pairs = [(p["id"], p["question"]) for p in train]
    rows = []
    for label, url in eval_sets.items():
        problems = read_artifact(url, "problems", columns=["id", "question"]).to_pylist()
        for o in overlaps(pairs, [(p["id"], p["question"]) for p in problems], cfg.ngram, cfg.exemplars):
            rows.append({"benchmark": label, "question_id": o.question_id, "source_id": o.source_id,
                         "shared": o.shared, "example": o.example})
    write_artifact(output, rows, "overlaps", config_hash=key, parents=[train_url, *eval_sets.values()],
                   info=cost(watch))
    summary = overlap_summary(rows, sizes)
    counts = Counter({label: s["overlapping"] for label, s in summary.items()})
    print("contamination: " + ", ".join(f"{label} {n} of {sizes[label]}" for label, n in counts.items()), flush=True)
    return summary
