"""What a run shows: a summary JSON per stage on disk, and Prefect UI artifacts.

The JSON files (`<run>/<stage>/summary.json`) are what `siked report` and `siked status` read; the
Prefect artifacts (a table per iteration, links to its Parquet files, the run's Markdown report)
mirror them in the UI.
"""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from distill import timings
from flows.reports.report import write_report
from storage.fs import write_bytes, write_json
from storage.paths import ExperimentLayout, RunLayout, join
from tasks.gate import incomplete
from tasks.pipeline import REPORT_KEY_FILE, Step


def _key(*parts: Any) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def stage_name(iteration: int) -> str:
    return f"iter-{iteration:02d}"


def iteration_summary(record: dict) -> dict:
    """The JSON-able essentials of one iteration's record (refs, counts, scores)."""
    iteration = record["iteration"]
    summary: dict[str, Any] = {"iteration": iteration, "eval": record.get("eval", [])}
    if iteration == 0:
        teacher = record["teacher"]
        summary["data"] = teacher["distill_set"]["summary"]
        summary["train_rows"] = teacher["distill_set"]["rows"]
        summary["alpha"] = 1.0
        summary["artifacts"] = {name: ref["path"] for name, ref in teacher.items() if isinstance(ref, dict)}
    else:
        summary["data"] = record["self_set"]["summary"]
        summary["mix"] = record["mix"]
        # on-policy distillation mixes nothing: every row is the student's own
        summary["alpha"] = record["mix"]["alpha"] if record["mix"] else 0.0
        summary["train_rows"] = record["train_set"]["rows"]
        summary["artifacts"] = {name: record[name]["path"] for name in ("samples", "verified", "self_set", "train_set")}
        if "token_scores" in record:  # `token_level.use`
            summary["artifacts"]["token_scores"] = record["token_scores"]["path"]
    summary["student"] = record["student"]["path"]
    summary["artifacts"]["student"] = record["student"]["path"]
    summary["train"] = record["student"].get("train", {})
    return summary


def publish_iteration(layout: RunLayout, record: dict) -> dict:
    """Write the iteration's summary.json and show it in the Prefect UI."""
    summary = iteration_summary(record)
    iteration = summary["iteration"]
    write_json(layout.summary(stage_name(iteration)), summary)
    rows = [{"benchmark": s["benchmark"], "mode": s["mode"], "accuracy": round(s["accuracy"], 4), "n": s["n"]}
            for s in summary["eval"]]
    verdicts = summary["data"].get("verdicts", {})
    strategies = {name: counts.get("kept", 0) for name, counts in summary["data"].get("per_strategy", {}).items()}
    rows.append({"benchmark": "training data", "mode": "alpha", "accuracy": round(summary["alpha"], 4),
                 "n": summary["train_rows"]})
    rows += [{"benchmark": "strategy (kept)", "mode": k, "accuracy": None, "n": v} for k, v in strategies.items()]
    rows += [{"benchmark": "verdicts", "mode": k, "accuracy": None, "n": v} for k, v in verdicts.items()]
    create_table_artifact(rows, key=_key(layout.run_id, stage_name(iteration)),
                          description=f"Iteration {iteration}: accuracy, training mix and verdicts")
    for name, path in summary["artifacts"].items():
        create_link_artifact(path, link_text=f"{stage_name(iteration)} {name}",
                             key=_key(layout.run_id, stage_name(iteration), name))
    return summary


def publish_base(layout: RunLayout, scores: list[dict]) -> None:
    write_json(layout.summary("base"), {"stage": "base", "eval": scores})


def publish_run_report(layout: RunLayout, step: Step, *, forced: bool = False) -> str:
    """Write the run report (Markdown + plots) from the run folder and attach it to the flow run.
    Skipped when the report on disk was written from the same step outputs (`step.key`) and none
    of them was computed again (`forced`), as tasks.gate.decide plans it."""
    key_file = join(step.folder, REPORT_KEY_FILE)
    if not forced and incomplete(step) is None:
        return layout.report()
    with timings.span("report"):
        path, markdown = write_report(layout)
    write_bytes(key_file, step.key.encode())
    create_markdown_artifact(markdown, key=_key(layout.run_id, "report"), description=f"SIKeD run {layout.run_id}")
    return path


def publish_experiment(layout: ExperimentLayout, document: dict) -> None:
    """The experiment's report and its comparison table in the Prefect UI."""
    from storage.fs import read_bytes

    create_markdown_artifact(read_bytes(layout.report).decode("utf-8"), key=_key("experiment", layout.name),
                             description=f"Experiment {document['experiment']}")
    rows = [{k: c.get(k) for k in ("arm", "baseline", "seed", "benchmark", "mode", "stage", "n", "diff", "ci_low",
                                   "ci_high", "p_value", "p_holm", "mde")} for c in document["comparisons"]]
    if rows:
        create_table_artifact(rows, key=_key("experiment", layout.name, "comparisons"),
                              description=f"Experiment {document['experiment']}: arms against {document['baseline']}")
    compute = [{k: c.get(k) for k in ("arm", "seed", "tokens_generated", "tokens_scored", "tokens_trained", "seconds")}
               for c in document.get("compute", [])]
    if compute:
        create_table_artifact(compute, key=_key("experiment", layout.name, "compute"),
                              description=f"Experiment {document['experiment']}: what each arm's runs cost "
                                          "(seed empty: the mean over seeds)")
