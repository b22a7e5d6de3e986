"""`siked plan CONFIG [key=value ...] [--json]`: what `siked run` would do, before anything runs.

Every step the config asks for, with `reuse` (and which run computed the output) or `run` (and why),
then what the steps to run amount to: prompts and samples to generate, training steps, evaluation
questions. The decisions are tasks.pipeline.decide, the test the flow applies step by step.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from distill.config import BenchmarkRef, RunConfig
from flows.commands.config_files import read_config
from flows.commands.preflight import check_scoring_teacher, check_sets
from flows.run_setup import run_layout
from storage.artifacts import read_manifest
from storage.fs import ArtifactError
from tasks.gate import Decision, decide
from tasks.pipeline import Step, eval_set_label, pipeline_steps


def problem_count(step: Step, ref: BenchmarkRef, cfg: RunConfig) -> int | None:
    """Questions a problems step holds: from its manifest when frozen, else by loading the benchmark."""
    try:
        return int(read_manifest(step.output("problems"))["rows"])
    except ArtifactError:
        pass
    try:
        from distill.strategies.exemplars import is_exemplar
        from tasks.jobs.benchmarks import load_problems

        return sum(not is_exemplar(p.id, p.question) for p in load_problems(ref, cfg.data_dir).problems)
    except Exception:  # noqa: BLE001 -- a Hub dataset offline, a missing file: the plan says "unknown"
        return None


def _refs(cfg: RunConfig) -> dict[str, BenchmarkRef]:
    refs = {"problems/train": cfg.train_data}
    refs.update({f"problems/eval-{eval_set_label(r)}": r for r in cfg.eval.benchmarks})
    return refs


def _plus(total: int | None, value: int | None) -> int | None:
    """A running total that becomes unknown (None) once one of its parts is."""
    return None if total is None or value is None else total + value


def amounts(cfg: RunConfig, steps: dict[str, Step], decisions: dict[str, Decision]) -> dict[str, Any]:
    """What the steps to run amount to. Numbers are None where they depend on data not made yet."""
    refs = _refs(cfg)
    counts = {name: problem_count(step, refs[name], cfg) for name, step in steps.items() if step.kind == "problems"}
    out: dict[str, Any] = {"steps_to_run": 0, "prompts": 0, "samples": 0, "training_steps": 0,
                           "trainings": 0, "evaluation_questions": 0}
    for name, step in steps.items():
        if decisions[name].action != "run":
            continue
        out["steps_to_run"] += 1
        if step.kind == "generate":
            questions = counts["problems/train"]
            # (prompts per question, samples per prompt): the teacher's or the student's strategies
            # (none when the student picks), and forced self-generation's free-choice samples.
            per_question = [(len(step.job["strategies"]) or 1, step.job["sampling"].n)]
            if step.job.get("free_choice_samples"):
                per_question.append((1, step.job["free_choice_samples"]))
            for count, n in per_question:
                prompts = None if questions is None else questions * count
                out["prompts"] = _plus(out["prompts"], prompts)
                out["samples"] = _plus(out["samples"], None if prompts is None else prompts * n)
        elif step.kind == "train":
            out["trainings"] += 1
            # Without max_steps the count is epochs over a training set not built yet.
            out["training_steps"] = _plus(out["training_steps"], cfg.train.max_steps)
        elif step.kind == "evaluate":
            sets = [counts.get(n) for role, n in step.inputs.items() if role.startswith("problems:")]
            questions = None if None in sets else sum(sets) * len(cfg.eval.modes)
            out["evaluation_questions"] = _plus(out["evaluation_questions"], questions)
    return out


def plan_rows(steps: dict[str, Step], decisions: dict[str, Decision]) -> list[dict[str, Any]]:
    return [{"step": name, "iteration": step.iteration, "kind": step.kind, "action": decisions[name].action,
             "key": step.key, "output": step.folder, "reuses_from": decisions[name].producer,
             "reason": decisions[name].reason or None} for name, step in steps.items()]


def _number(value: Any, unit: str) -> str:
    return f"{value} {unit}" if value is not None else f"? {unit} (known once the data exists)"


def format_plan(rows: list[dict[str, Any]], total: dict[str, Any], run_dir: str) -> str:
    width = max(len(r["step"]) for r in rows)
    lines = [f"plan for {run_dir}"]
    for r in rows:
        why = f"(from {r['reuses_from']})" if r["action"] == "reuse" and r["reuses_from"] else (r["reason"] or "")
        lines.append(f"  {r['step']:<{width}}  {r['action']:<5}  {why}")
    lines.append(f"{total['steps_to_run']} of {len(rows)} steps to run: "
                 f"{_number(total['prompts'], 'prompts')}, {_number(total['samples'], 'samples')}, "
                 f"{total['trainings']} trainings of {_number(total['training_steps'], 'steps')} in all, "
                 f"{_number(total['evaluation_questions'], 'evaluation questions')}")
    return "\n".join(lines)


def experiment_plan(path: str, overrides: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Rows of every (arm, seed) run, in the order the experiment runs them. A step an earlier run of
    the experiment computes is reused by the later ones (`reuses_from` names that arm and seed)."""
    from flows.experiment import experiment_layout
    from flows.experiment_file import read_experiment

    experiment = read_experiment(path, overrides)
    for r in experiment.runs:  # as `siked experiment` refuses them: before planning anything
        check_sets(r.cfg)
    rows: list[dict[str, Any]] = []
    total: dict[str, Any] = {}
    scheduled: dict[str, str] = {}  # step key -> the arm and seed that computes it
    for r in experiment.runs:
        steps = pipeline_steps(r.cfg, run_layout(r.cfg))
        decisions = decide(steps, scheduled)
        for name, step in steps.items():
            if decisions[name].action == "run":
                scheduled.setdefault(step.key, f"{r.arm} seed {r.seed} of this experiment")
        rows += [{"arm": r.arm, "seed": r.seed, **row} for row in plan_rows(steps, decisions)]
        for k, v in amounts(r.cfg, steps, decisions).items():
            total[k] = _plus(total[k], v) if k in total else v
    return rows, total, experiment_layout(experiment).dir


def plan_cli(config_path: str, overrides: list[str], as_json: bool) -> int:
    from flows.experiment_file import is_experiment_file

    if is_experiment_file(config_path):
        rows, total, folder = experiment_plan(config_path, overrides)
        shown = [{**row, "step": f"{row['arm']}/s{row['seed']}/{row['step']}"} for row in rows]
        text = format_plan(shown, total, f"experiment {folder}")
        print(json.dumps(rows, indent=2) if as_json else text)
        if as_json:
            print(text, file=sys.stderr)
        return 0
    cfg = read_config(config_path, overrides)
    check_sets(cfg)  # a set `siked run` would refuse is refused here too, not counted as 0 questions
    check_scoring_teacher(cfg)  # a teacher `siked run` would refuse for its tokenizer, too
    layout = run_layout(cfg)
    steps = pipeline_steps(cfg, layout)
    decisions = decide(steps)
    rows = plan_rows(steps, decisions)
    if as_json:
        print(json.dumps(rows, indent=2))
        print(format_plan(rows, amounts(cfg, steps, decisions), layout.run_dir), file=sys.stderr)
    else:
        print(format_plan(rows, amounts(cfg, steps, decisions), layout.run_dir))
    return 0
