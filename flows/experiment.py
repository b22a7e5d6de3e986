"""`siked experiment FILE [key=value ...]`: every arm and seed of a comparison, then its statistics.

    siked experiment experiments/mixing.yaml
    siked plan experiments/mixing.yaml        # what it would run, shared steps counted once

One Prefect flow (`siked-experiment`) runs the SIKeD flow of each (arm, seed) as a subflow, one after
another. The runs are ordinary runs under the same runs root, so steps that arms agree on (the
teacher's, the untrained student's evaluation, a training that only `eval.*` separates) are computed
once and reused by the others (tasks.pipeline). A failed arm does not stop the others; the
experiment then reports what finished and exits non-zero.

Then, from the runs' per-question predictions, the experiment folder
`<runs_root>/experiments/<name>-<hash>/` receives `outcomes.parquet` (OUTCOMES: one row per arm,
seed, benchmark, mode, stage and question), `results.json` (accuracies with intervals and the paired
comparisons, computed from exactly those outcomes by flows.reports.experiment_results, and each run's
compute as its steps recorded it, tasks.compute), `report.md` with its plots, and the same tables as
Prefect artifacts. The folder is the last line of standard output.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import pandas as pd
import yaml
from prefect import flow, get_run_logger

from distill.config import RunConfig, section_hash
from distill.significance import LEVEL, SIGN_FLIPS
from flows import prefect_api
from flows.experiment_file import ArmRun, Experiment, ExperimentSpec, read_experiment
from flows.reports.experiment_results import (
    FAMILIES,
    accuracy_rows,
    comparison_rows,
    oracle_rows,
    outcome_frame,
    sampled_predictions_as_outcomes,
)
from flows.run_setup import run_id, run_layout
from storage.artifacts import read_artifact, write_artifact
from storage.fs import ArtifactError, write_bytes, write_json
from storage.manifest import code_version
from storage.paths import ExperimentLayout
from storage.schemas import OUTCOMES
from tasks.compute import FIGURES, run_compute
from tasks.pipeline import Step, pipeline_steps, prediction_kind


class RunsFailed(RuntimeError):
    """Some arms' runs failed; the experiment's files cover the others."""


def experiment_layout(experiment: Experiment) -> ExperimentLayout:
    """`<runs_root>/experiments/<name>-<hash>`: the hash covers every run's identity (its resolved
    config) and the baseline, so the same file maps to the same folder until a config changes."""
    identity = {"baseline": experiment.spec.baseline,
                "runs": [[r.arm, r.seed, run_id(r.cfg)] for r in experiment.runs]}
    root = run_layout(experiment.runs[0].cfg).root
    return ExperimentLayout(root, f"{experiment.spec.name}-{section_hash(identity, length=10)}")


# --------------------------------------------------------------------------- outcomes


def evaluation_steps(cfg: RunConfig) -> list[Step]:
    """The run's evaluate steps in pipeline order (base, iter-00, iter-01, ...)."""
    return [s for s in pipeline_steps(cfg, run_layout(cfg)).values() if s.kind == "evaluate"]


def collect_outcomes(experiment: Experiment) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(OUTCOMES rows of every finished evaluation, the predictions files read, what is missing)."""
    frames, parents, missing = [], [], []
    for r in experiment.runs:
        steps = evaluation_steps(r.cfg)
        last = steps[-1].name if steps else None
        for step in steps:
            stage = step.name.partition("/")[0]
            stage_frames = []
            for role in step.outputs:
                url, mode = step.output(role), role.rpartition("/")[2]
                try:
                    table = read_artifact(url, prediction_kind(mode)).to_pandas()
                except ArtifactError as exc:
                    missing.append(f"{r.arm} seed {r.seed} {stage} {role}: {exc}")
                    continue
                tables = sampled_predictions_as_outcomes(table, r.cfg.verify.rel_tol) if mode == "sampled" else [table]
                stage_frames += [outcome_frame(r.arm, r.seed, run_id(r.cfg), stage, step.name == last, step.key, t)
                                 for t in tables]
                parents.append(url)
            if stage_frames:
                oracle = oracle_rows(pd.concat(stage_frames, ignore_index=True))
                frames += [*stage_frames, oracle] if len(oracle) else stage_frames
    outcomes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OUTCOMES.names)
    return outcomes, parents, missing


# --------------------------------------------------------------------------- compute


def compute_rows(experiment: Experiment) -> list[dict[str, Any]]:
    """results.json's `compute`: per (arm, seed) what the steps of its run's plan recorded, shared
    steps counted in every run that uses them (tasks.compute.run_compute); then per arm the means
    over its seeds (`seed` None), as `accuracy` gives them."""
    rows = [_run_compute_row(r) for r in experiment.runs]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rows.append(_mean_over_seeds(arm, [r for r in rows if r["arm"] == arm]))
    return rows


def _run_compute_row(r: ArmRun) -> dict[str, Any]:
    steps = pipeline_steps(r.cfg, run_layout(r.cfg))
    c = run_compute(step.index_entry() for step in steps.values())
    return {"arm": r.arm, "seed": r.seed, "run_id": run_id(r.cfg), **c["total"], "by_kind": c["by_kind"],
            "tokens_trained_by_stage": c["tokens_trained_by_stage"], "unrecorded": c["unrecorded"]}


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when a value is unknown (a mean over part of the seeds would pass for all)."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _mean_over_seeds(arm: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = dict.fromkeys(k for r in rows for k in r["by_kind"])
    stages = dict.fromkeys(s for r in rows for s in r["tokens_trained_by_stage"])
    return {"arm": arm, "seed": None, "seeds": len(rows), **{f: _mean([r[f] for r in rows]) for f in FIGURES},
            "by_kind": {k: {f: _mean([r["by_kind"].get(k, {}).get(f, 0) for r in rows]) for f in (*FIGURES, "steps")}
                        for k in kinds},
            "tokens_trained_by_stage": {s: _mean([r["tokens_trained_by_stage"].get(s) for r in rows]) for s in stages},
            "unrecorded": sorted({name for r in rows for name in r["unrecorded"]})}


def _json_safe(value: Any) -> Any:
    """NaN (an undefined interval) as null: results.json stays standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def results_document(experiment: Experiment, outcomes: pd.DataFrame, missing: list[str]) -> dict[str, Any]:
    spec = experiment.spec
    return _json_safe({
        "experiment": spec.name, "file": experiment.source, "code_version": code_version(),
        "baseline": spec.baseline, "seeds": spec.seeds, "teacher_seed": spec.teacher_seed,
        "arms": spec.arms, "overrides": spec.overrides,
        "runs": [{"arm": r.arm, "seed": r.seed, "run_id": run_id(r.cfg), "run_dir": run_layout(r.cfg).run_dir}
                 for r in experiment.runs],
        "method": {"level": LEVEL, "accuracy_interval": "Wilson score (statsmodels)",
                   "test": "sign-flip test over questions of each question's difference summed over "
                           "seeds, exact (scipy binomials); with one seed, the exact McNemar test",
                   "difference_interval": f"the same test inverted (shifts it does not reject; {SIGN_FLIPS} "
                                          "sign flips place the bounds): it excludes zero exactly when p < 0.05",
                   "seed_interval": "Student t over the seeds' values (scipy)",
                   "detectable_effect": "difference found with 80% power at alpha 0.05, normal approximation "
                                        "of the test (statsmodels NormalIndPower) on the measured spread",
                   "holm_family": spec.holm_family,
                   "multiple_comparisons": f"Holm (statsmodels) over {FAMILIES[spec.holm_family]}; pooled "
                                           "and per-seed comparisons adjusted apart",
                   "compute": "as each step of a run's plan recorded it in its outputs' manifests when it was "
                              "computed (a step shared by runs counts in each); tokens_trained_by_stage: the "
                              "training tokens of every round up to that stage; seed null: the mean over seeds"},
        "accuracy": accuracy_rows(outcomes) if len(outcomes) else [],
        "comparisons": comparison_rows(outcomes, spec.baseline, spec.holm_family) if len(outcomes) else [],
        "compute": compute_rows(experiment),
        "missing": missing,
    })


def write_results(experiment: Experiment, layout: ExperimentLayout) -> dict[str, Any]:
    """outcomes.parquet, results.json, runs.json, experiment.yaml and the report, from the runs' files."""
    from flows.reports.experiment_report import write_experiment_report

    outcomes, parents, missing = collect_outcomes(experiment)
    write_bytes(layout.spec, yaml.safe_dump(experiment.spec.model_dump(mode="json"), sort_keys=False).encode())
    write_artifact(layout.outcomes, outcomes, "outcomes", parents=parents)
    document = results_document(experiment, outcomes, missing)
    write_json(layout.results, document)
    write_experiment_report(layout, document)
    return document


# --------------------------------------------------------------------------- the flow


@flow(name="siked-experiment", flow_run_name="{spec.name}")
def experiment_flow(spec: ExperimentSpec, source: str, configs: list[RunConfig]) -> dict[str, Any]:
    """Each (arm, seed) as a `siked` subflow, one after another; then outcomes, results and report."""
    from flows.reports.ui import publish_experiment
    from flows.siked import siked_flow

    pairs = [(arm, seed) for arm in spec.arms for seed in spec.seeds]
    experiment = Experiment(spec, source, tuple(ArmRun(a, s, c) for (a, s), c in zip(pairs, configs, strict=True)))
    layout = experiment_layout(experiment)
    failed = []
    for r in experiment.runs:
        get_run_logger().info("arm %s, seed %s: run %s", r.arm, r.seed, run_layout(r.cfg).run_dir)
        try:
            siked_flow(r.cfg)
        except Exception as exc:  # noqa: BLE001 -- one arm's failure must not cost the others
            get_run_logger().error("arm %s, seed %s failed: %s", r.arm, r.seed, exc)
            failed.append(f"{r.arm} seed {r.seed}: {exc.__class__.__name__}: {exc}")
    document = write_results(experiment, layout)
    publish_experiment(layout, document)
    if failed:
        raise RunsFailed(f"{len(failed)} of {len(experiment.runs)} runs failed (results written for the "
                           f"rest, {layout.dir}):\n" + "\n".join(failed))
    return {"dir": layout.dir, "comparisons": len(document["comparisons"])}


def experiment_cli(path: str, overrides: list[str], collect: bool = False) -> int:
    """`siked experiment FILE`; with `collect`, no run starts: outcomes, results and report are
    written from the evaluations finished so far (results.json lists what is missing), for a look
    at an experiment that is still running or was interrupted."""
    from flows.commands.preflight import preflight

    experiment = read_experiment(path, overrides)
    if collect:
        layout = experiment_layout(experiment)
        document = write_results(experiment, layout)
        print(f"{len(document['missing'])} evaluation outputs missing; report: {layout.report}", file=sys.stderr)
        print(layout.dir)
        return 0
    prefect_api.start_early()
    for r in experiment.runs:
        preflight(r.cfg)
    layout = experiment_layout(experiment)
    print(f"experiment {experiment.spec.name}: {len(experiment.spec.arms)} arms x {len(experiment.spec.seeds)} "
          f"seeds -> {layout.dir}", file=sys.stderr, flush=True)
    status = 0
    try:
        prefect_api.ready()
        experiment_flow(experiment.spec, experiment.source, [r.cfg for r in experiment.runs])
    except RunsFailed as exc:
        print(f"siked: {exc}", file=sys.stderr)
        status = 1
    print(f"report: {layout.report}", file=sys.stderr)
    print(layout.dir)
    return status
