"""The run report: `<run>/report/report.md` with PNG plots beside it.

    siked report RUN            # RUN: a run folder, local or an fsspec URL

Reads only what the flow leaves in the run folder: `config.yaml`, `base/summary.json` and
`iter-XX/summary.json` (shapes in flows/reports/ui.py), and what the steps that `steps.json` lists
recorded of their cost (tasks.compute), which it also writes as `compute.json`. A run killed mid-way
is reported as far as it got, and the report says which stages are missing. Everything is written through storage, so runs on
memory:// or s3:// report the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from distill.significance import wilson_interval
from distill.strict_yaml import load_yaml
from distill.verify import VERDICTS
from flows.reports.plots import BASE_X, accuracy_plot, strategy_mix_plot
from storage.fs import (
    ArtifactCorrupt,
    ArtifactError,
    exists,
    read_bytes,
    read_json,
    remove,
    write_bytes,
    write_json,
)
from storage.paths import RunLayout, join
from storage.step_store import OldRunFolder, read_index
from tasks.compute import run_compute

PLOTS = {"accuracy": "accuracy.png", "mix": "strategy_mix.png"}
SOURCES = {"p_teacher": "teacher (P_L)", "p_student_samples": "student (P_SM)", "p_train": "train (P_train)"}
KNOWN_STRATEGIES = ("cot", "l2m", "pot")
DASH = "–"


class RunNotFound(FileNotFoundError):
    """The folder holds no run (no config.yaml and no stage)."""


@dataclass
class RunData:
    """What a run folder holds: the parsed config ({} when absent), the base model's evaluation
    summaries, the iteration summaries in order, and one line per missing or unreadable stage."""

    run_id: str
    run_dir: str
    config: dict[str, Any]
    base: list[dict[str, Any]] | None
    iterations: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    contamination: dict[str, Any] | None = None  # contamination.json (flows.siked.check_contamination)
    compute: dict[str, Any] | None = None  # tasks.compute.run_compute over the steps of steps.json


# --------------------------------------------------------------------------- reading the run


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _read_config(layout: RunLayout, missing: list[str]) -> dict[str, Any]:
    if not exists(layout.config):
        missing.append("config.yaml: missing")
        return {}
    try:
        data = load_yaml(read_bytes(layout.config).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        missing.append(f"config.yaml: unreadable ({exc.__class__.__name__})")
        return {}
    return data if isinstance(data, dict) else {}


def _read_summary(layout: RunLayout, stage: str, missing: list[str], not_done: str) -> dict | None:
    """The stage's summary, or None with a line in `missing` (`not_done`: why a started stage has none)."""
    url = layout.summary(stage)
    if exists(url):
        try:
            data = read_json(url)
        except ArtifactCorrupt:
            missing.append(f"{stage}: summary.json is not valid JSON")
            return None
        if isinstance(data, dict):
            return data
        missing.append(f"{stage}: summary.json is not a JSON object")
        return None
    missing.append(f"{stage}: {not_done}" if exists(layout.stage_dir(stage)) else f"{stage}: not started")
    return None


def _iteration_numbers(layout: RunLayout, expected: int | None) -> list[int]:
    """0..expected from the config, and any further iteration folders found on disk."""
    numbers, i = [], 0
    while (expected is not None and i <= expected) or exists(layout.iteration_dir(i)):
        numbers.append(i)
        i += 1
    return numbers


def load_run(layout: RunLayout) -> RunData:
    """Read every summary of the run; raise RunNotFound when the folder holds no run."""
    if not exists(layout.run_dir):
        raise RunNotFound(f"no run at {layout.run_dir}")
    missing: list[str] = []
    config = _read_config(layout, missing)
    base_expected = bool(_get(config, "eval.evaluate_base", True) and _get(config, "eval.benchmarks"))
    base = None
    if base_expected or exists(layout.summary("base")):
        summary = _read_summary(layout, "base", missing,
                                "predictions exist but no summary.json (written when the run finishes)")
        base = summary.get("eval", []) if summary else None
    expected = _get(config, "siked.iterations")
    iterations = []
    for i in _iteration_numbers(layout, expected if isinstance(expected, int) else None):
        summary = _read_summary(layout, f"iter-{i:02d}", missing, "started, no summary.json (killed or running)")
        if summary is not None:
            iterations.append({**summary, "iteration": i})  # the folder name is authoritative
    if not config and base is None and not iterations and not exists(layout.stage_dir("base")):
        raise RunNotFound(f"{layout.run_dir} holds no config.yaml and no stage summary")
    contamination = read_json(layout.contamination) if exists(layout.contamination) else None
    return RunData(layout.run_id, layout.run_dir, config, base, iterations, missing, contamination,
                   _read_compute(layout))


def _read_compute(layout: RunLayout) -> dict[str, Any] | None:
    """The run's compute from the manifests of the steps its index lists; None without an index."""
    try:
        return run_compute(read_index(layout))
    except (OldRunFolder, ArtifactError):
        return None


# --------------------------------------------------------------------------- numbers


def stages(data: RunData) -> list[tuple[str, int, list[dict]]]:
    """(label, x position, evaluation summaries): base first (x = -1), then iterations."""
    out = [("base", BASE_X, data.base)] if data.base else []
    return out + [(f"iter {s['iteration']}", s["iteration"], s.get("eval") or []) for s in data.iterations]


def accuracy_rows(data: RunData) -> list[dict[str, Any]]:
    """One row per (benchmark, mode, stage), grouped by benchmark and mode, stages in run order:
    keys benchmark, mode, stage, x, n, accuracy, vs_base, vs_iter0 (differences in [−1, 1] or None)."""
    by_key: dict[tuple[str, str], list[tuple[str, int, dict]]] = {}
    for label, x, scores in stages(data):
        for s in scores:
            by_key.setdefault((str(s.get("benchmark")), str(s.get("mode"))), []).append((label, x, s))
    rows = []
    for (benchmark, mode), entries in by_key.items():
        ref = {x: s.get("accuracy") for _, x, s in entries}
        for label, x, s in entries:
            acc = s.get("accuracy")
            low, high = _wilson(acc, s.get("n"))
            rows.append({"benchmark": benchmark, "mode": mode, "stage": label, "x": x, "n": s.get("n"),
                         "accuracy": acc, "ci_low": low, "ci_high": high, "strict": s.get("accuracy_strict"),
                         "vs_base": _diff(acc, ref.get(BASE_X), x == BASE_X),
                         "vs_iter0": _diff(acc, ref.get(0), x <= 0)})
    return rows


def _wilson(accuracy: Any, n: Any) -> tuple[float | None, float | None]:
    """The 95% Wilson interval of an accuracy over `n` questions (None when either is unknown)."""
    if not isinstance(accuracy, (int, float)) or not isinstance(n, int) or n <= 0:
        return None, None
    return wilson_interval(round(accuracy * n), n)


def _diff(value: Any, reference: Any, itself: bool) -> float | None:
    if itself or not isinstance(value, (int, float)) or not isinstance(reference, (int, float)):
        return None
    return value - reference


def _kept_shares(per_strategy: dict[str, dict]) -> dict[str, float]:
    total = sum(c.get("kept", 0) for c in per_strategy.values())
    return {name: c.get("kept", 0) / total for name, c in per_strategy.items()} if total else {}


def strategy_mix(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{source label: {strategy: share}} of one iteration. At iteration 0 the training data is the
    teacher distillation set, so P_L = P_train = its kept rows and there are no student samples."""
    mix = summary.get("mix")
    if mix:
        return {label: mix[key] for key, label in SOURCES.items() if mix.get(key)}
    shares = _kept_shares(_get(summary, "data.per_strategy", {}) or {})
    return {SOURCES["p_teacher"]: shares, SOURCES["p_train"]: shares} if shares else {}


def strategy_names(mixes: list[dict[str, dict[str, float]]]) -> list[str]:
    seen = {name for by_source in mixes for shares in by_source.values() for name in shares}
    return [s for s in KNOWN_STRATEGIES if s in seen] + sorted(seen - set(KNOWN_STRATEGIES))


# --------------------------------------------------------------------------- Markdown


def table_cell(value: Any) -> str:
    return DASH if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(table_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x: Any) -> str | None:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else None


def _pp(x: float | None) -> str | None:
    return f"{100 * x:+.1f} pp" if x is not None else None


def _num(x: Any, digits: int) -> str | None:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else None


def _decoding(value: Any) -> str | None:
    """The decoding settings (a JSON string in the predictions) as `key=value, ...`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return f"`{value}`"
    if isinstance(value, dict):
        return "`" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(value.items())) + "`"
    return None if value is None else f"`{value}`"


def _config_section(data: RunData) -> str:
    cfg = data.config
    if not cfg:
        return "## Configuration\n\nNo readable `config.yaml` in the run folder."
    bench = [f"{b.get('name')}-{b.get('split')}" for b in _get(cfg, "eval.benchmarks", []) or []]
    train_data = _get(cfg, "train_data", {}) or {}
    loss = _get(cfg, "train.loss", {}) or {}
    loss_text = loss.get("kind") and f"{loss.get('kind')} (alpha {loss.get('alpha')}, beta {loss.get('beta')})"
    mixing = _get(cfg, "siked.mixing")
    if mixing == "alpha":
        mixing = f"alpha, schedule {_get(cfg, 'siked.alpha_schedule')}"
    rows = [
        ["Teacher model", _get(cfg, "teacher.engine.model"), _get(cfg, "teacher.engine.kind")],
        ["Student model", _get(cfg, "train.model"), "LoRA" if _get(cfg, "train.lora.enabled") else "full"],
        ["Training problems", train_data.get("name") and f"{train_data.get('name')}-{train_data.get('split')}", None],
        ["Evaluation benchmarks", ", ".join(bench) or None, ", ".join(_get(cfg, "eval.modes", []) or [])],
        ["Strategies", ", ".join(_get(cfg, "teacher.strategies", []) or []) or None, None],
        ["Loss", loss_text, None],
        ["SIKeD iterations", _get(cfg, "siked.iterations"), "after iteration 0 (teacher data only)"],
        ["Mixing rule", mixing, None],
        ["Seed", _get(cfg, "seed"), None],
    ]
    return "## Configuration\n\n" + markdown_table(["Setting", "Value", "Detail"], rows)


MAX_IDS_SHOWN = 20


def _contamination_section(data: RunData) -> str:
    c = data.contamination
    if not c:
        return ""
    rows = []
    for label, s in (c.get("sets") or {}).items():
        ids = s.get("ids") or []
        shown = ", ".join(f"`{i}`" for i in ids[:MAX_IDS_SHOWN]) + (f" and {len(ids) - MAX_IDS_SHOWN} more"
                                                                  if len(ids) > MAX_IDS_SHOWN else "")
        rows.append([label, s.get("questions"), s.get("overlapping"), s.get("with_exemplars"), shown or None])
    action = ("left out of every evaluation above" if c.get("dropped")
              else "kept in the evaluations (eval.decontamination.drop=true leaves them out)")
    return (f"## Contamination\n\nEvaluation questions sharing a word {c.get('ngram')}-gram with a training "
            f"problem or a prompt exemplar; {action}. The full list: the run's `problems/contamination` step "
            "(`overlaps.parquet`).\n\n"
            + markdown_table(["Evaluation set", "Questions", "Overlapping", "Pairs with exemplars", "Ids"], rows))


def _status_section(data: RunData) -> str:
    if not data.missing:
        done = f"iterations 0–{data.iterations[-1]['iteration']}" if data.iterations else "no iterations"
        return f"**Status:** complete ({'base model, ' if data.base else ''}{done})."
    lines = "\n".join(f"- {line}" for line in data.missing)
    return f"**Status:** partial run; missing stages:\n\n{lines}"


def _accuracy_section(rows: list[dict], plot: str | None) -> str:
    if not rows:
        return "## Accuracy\n\nNo stage has been evaluated yet."
    table = markdown_table(["Benchmark", "Mode", "Stage", "n", "Accuracy", "95% CI", "Δ vs base", "Δ vs iter 0",
                            "Strict"],
                   [[r["benchmark"], r["mode"], r["stage"], r["n"], _pct(r["accuracy"]), _ci(r), _pp(r["vs_base"]),
                     _pp(r["vs_iter0"]), _pct(r["strict"])] for r in rows])
    image = f"\n\n![Accuracy per iteration]({plot})" if plot else ""
    note = ("\n\nStrict accuracy counts only answers the model stated as its answer (`Final answer:`, `The "
            "answer is`, a program's result, a label); the accuracy also accepts the last number of the text. "
            "Intervals are 95% Wilson intervals over the n questions; differences between stages of "
            "one run are on the same questions, and a paired test of them is what `siked experiment` "
            "reports (docs/experiments.md).")
    return f"## Accuracy\n\n{table}{note}{image}"


def _ci(row: dict) -> str | None:
    if row.get("ci_low") is None:
        return None
    return f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _strategy_cells(summary: dict) -> str | None:
    hist, acc = summary.get("strategy_histogram") or {}, summary.get("accuracy_by_strategy") or {}
    return ", ".join(f"{name} {count} ({_pct(acc.get(name))})" for name, count in hist.items()) or None


def _protocol_rows(scored: list[tuple[str, dict]]) -> list[list[Any]]:
    """One row per stage and distinct protocol, naming the benchmark/mode sets evaluated under it."""
    groups: dict[tuple, list[str]] = {}
    for label, s in scored:
        key = (label, _get(s, "protocol.model"), _get(s, "protocol.prompt_hash"),
               _get(s, "protocol.parser_version"), _decoding(_get(s, "protocol.decoding")))
        groups.setdefault(key, []).append(f"{s.get('benchmark')} {s.get('mode')}")
    return [[label, ", ".join(sets), model, prompt, parser, decoding]
            for (label, model, prompt, parser, decoding), sets in groups.items()]


def _protocol_section(data: RunData) -> str:
    scored = [(label, s) for label, _, scores in stages(data) for s in scores]
    if not scored:
        return ""
    failures = markdown_table(
        ["Stage", "Benchmark", "Mode", "n", "Extraction failures", "Sandbox timeouts", "Strategy: count (accuracy)"],
        [[label, s.get("benchmark"), s.get("mode"), s.get("n"), _pct(s.get("extraction_failure_rate")),
          _pct(s.get("sandbox_timeout_rate")), _strategy_cells(s)] for label, s in scored])
    protocol = markdown_table(["Stage", "Evaluated sets", "Model", "Prompt hash", "Parser version", "Decoding"],
                      _protocol_rows(scored))
    return f"## Evaluation failures and protocol\n\n{failures}\n\n{protocol}"


def _training_row(summary: dict) -> list[Any]:
    i, mix = summary["iteration"], summary.get("mix") or {}
    if i == 0 and not mix:
        return [i, "teacher", "teacher only", summary.get("train_rows"), summary.get("train_rows"), 0,
                _num(summary.get("alpha"), 3), None, None]
    return [i, "teacher + student", mix.get("rule"), summary.get("train_rows"), mix.get("teacher_rows"),
            mix.get("student_rows"), _num(summary.get("alpha", mix.get("alpha")), 3),
            _num(mix.get("target_alpha"), 3), _num(mix.get("kl_train_vs_student"), 4)]


def _mix_section(data: RunData, plot: str | None) -> str:
    if not data.iterations:
        return "## Training data\n\nNo iteration has finished yet."
    overview = markdown_table(["Iteration", "Data", "Rule", "Training rows", "Teacher rows", "Student rows", "α realised",
                       "α target", "KL(P_train ‖ P_SM)"], [_training_row(s) for s in data.iterations])
    mixes = [strategy_mix(s) for s in data.iterations]
    names = strategy_names(mixes)
    rows = [[s["iteration"], label, *[_pct(by_source[label].get(n, 0.0)) for n in names]]
            for s, by_source in zip(data.iterations, mixes) for label in SOURCES.values() if label in by_source]
    shares = markdown_table(["Iteration", "Distribution", *names], rows) if rows else "No strategy counts recorded."
    image = f"\n\n![Strategy mix per iteration]({plot})" if plot else ""
    return (f"## Training data\n\n{overview}\n\nα is the teacher share of the training rows. "
            f"Strategy shares of teacher data (P_L), the student's samples (P_SM) and the training data "
            f"(P_train):\n\n{shares}{image}{_p_sm_note(data)}")


def _p_sm_note(data: RunData) -> str:
    """How P_SM was measured: forced self-generation's strategies are the primed ones, so there it
    is the student's choice in free-choice samples drawn beside them."""
    sources = {(s.get("mix") or {}).get("p_student_samples_from") for s in data.iterations} - {None}
    if "free_choice" not in sources:
        return ""
    return ("\n\nP_SM is the student's own choice of strategy: with forced self-generation (each strategy "
            "primed by its tag) it is read from free-choice samples drawn beside the forced ones "
            "(`siked.free_choice_samples` per question), not from the forced samples.")


def _scalars(values: dict | None) -> str | None:
    items = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (values or {}).items()
             if isinstance(v, (int, float, str, bool))]
    return ", ".join(items) or None


def _checkpoint_line(train: dict) -> str | None:
    """Which step was kept and on what: the selection metric, its value and the validation size."""
    best = train.get("best_val")
    if not isinstance(best, dict):
        return "- Checkpoint: the last step (no validation split)" if train.get("steps") else None
    metric = best.get("metric", "label accuracy")
    return (f"- Checkpoint: step {best.get('step')} of {train.get('steps')}, selected on validation {metric} "
            f"{_pct(best.get('accuracy'))} over {best.get('val_questions', '?')} questions "
            f"(ties: lower validation loss)")


def _iteration_section(summary: dict) -> str:
    i, data = summary["iteration"], summary.get("data") or {}
    origin = "teacher samples" if i == 0 else "the student's own samples"
    per_strategy = data.get("per_strategy") or {}
    table = markdown_table(["Strategy", "Generated", "Correct", "Kept", "Questions solved"],
                   [[name, c.get("generated"), c.get("correct"), c.get("kept"), c.get("questions_solved")]
                    for name, c in per_strategy.items()]) if per_strategy else "No per-strategy counts."
    counts = data.get("verdicts") or {}
    order = [v for v in VERDICTS if v in counts] + sorted(set(counts) - set(VERDICTS))
    verdicts = ", ".join(f"{v} {counts[v]}" for v in order) or DASH
    coverage = (f"Data from {origin}: {data.get('questions', DASH)} questions, "
                f"{data.get('questions_solved', DASH)} solved at least once.")
    lines = [f"### Iteration {i}", "", coverage, "", table, "", f"- Verdicts: {verdicts}"]
    lines += [f"- Mixing note: {note}" for note in (summary.get("mix") or {}).get("notes", [])]
    if _scalars(summary.get("train")):
        lines.append(f"- Training: {_scalars(summary.get('train'))}")
    if _checkpoint_line(summary.get("train") or {}):
        lines.append(_checkpoint_line(summary["train"]))
    if summary.get("student"):
        lines.append(f"- Student: `{summary['student']}`")
    return "\n".join(lines)


COMPUTE_NOTE = ("Figures as each step recorded them when it was computed (a reused step keeps those of the run "
                "that computed it; a step runs share counts in each run). Tokens generated: completion tokens "
                "the engines produced (generation and evaluation); scored: completion positions the teacher "
                "scored; trained: target tokens the optimizer saw, once per optimizer step that trained them. "
                "Seconds: wall time of the steps' bodies.")


def _count(value: Any) -> str | None:
    """A token count with thousands separators; none (0) as a dash, where the kind makes none."""
    return f"{int(value):,}" if isinstance(value, (int, float)) and value else None


def _compute_row(label: str, figures: dict[str, Any]) -> list[Any]:
    return [label, figures.get("steps"), _count(figures.get("tokens_generated")), _count(figures.get("tokens_scored")),
            _count(figures.get("tokens_trained")), _num(figures.get("seconds"), 1)]


def _compute_section(data: RunData) -> str:
    """What the run's steps cost per step kind, as each step recorded it when it was computed."""
    c = data.compute
    if not c:
        return ""
    steps = sum(k["steps"] for k in c["by_kind"].values())
    rows = [_compute_row(kind, figures) for kind, figures in c["by_kind"].items()]
    rows.append(_compute_row("total", {**c["total"], "steps": steps}))
    table = markdown_table(["Step kind", "Steps", "Tokens generated", "Tokens scored", "Tokens trained", "Seconds"],
                           rows)
    lines = [f"## Compute\n\n{table}", COMPUTE_NOTE]
    if c["unrecorded"]:
        lines.append("Not counted, having no figures (not done yet, or made before steps recorded them): "
                     + ", ".join(f"`{n}`" for n in c["unrecorded"]) + ".")
    return "\n\n".join(lines)


def render_markdown(data: RunData, plots: dict[str, str]) -> str:
    """The report text; `plots` maps `accuracy` / `mix` to image paths relative to the report."""
    rows = accuracy_rows(data)
    parts = [f"# SIKeD run `{data.run_id}`", f"Run folder: `{data.run_dir}`", _status_section(data),
             _config_section(data), _accuracy_section(rows, plots.get("accuracy")), _contamination_section(data),
             _protocol_section(data),
             _mix_section(data, plots.get("mix")), _compute_section(data)]
    if data.iterations:
        parts += ["## Iterations"] + [_iteration_section(s) for s in data.iterations]
    return "\n\n".join(p for p in parts if p) + "\n"


# --------------------------------------------------------------------------- writing


def write_plots(layout: RunLayout, data: RunData) -> dict[str, str]:
    """Draw the plots the data allows into `<run>/report/`; delete ones a previous report left that
    no longer apply. Returns {plot: file name relative to the report}."""
    figures: dict[str, bytes] = {}
    series: dict[str, dict[str, list[tuple]]] = {}
    for r in accuracy_rows(data):
        if isinstance(r["accuracy"], (int, float)):
            series.setdefault(r["benchmark"], {}).setdefault(r["mode"], []).append(
                (r["x"], r["accuracy"], r["ci_low"], r["ci_high"]))
    if series:
        figures["accuracy"] = accuracy_plot(series)
    mixes = [(s["iteration"], strategy_mix(s)) for s in data.iterations]
    mixes = [(i, m) for i, m in mixes if m]
    if mixes:
        figures["mix"] = strategy_mix_plot(mixes, strategy_names([m for _, m in mixes]), list(SOURCES.values()))
    for name, filename in PLOTS.items():
        url = join(layout.report_dir(), filename)
        if name in figures:
            write_bytes(url, figures[name])
        else:
            remove(url)
    return {name: PLOTS[name] for name in figures}


def write_report(layout: RunLayout) -> tuple[str, str]:
    """Write `<run>/report/report.md` and its plots; return (report path, Markdown text)."""
    data = load_run(layout)
    markdown = render_markdown(data, write_plots(layout, data))
    if data.compute is not None:
        write_json(layout.compute, data.compute)
    write_bytes(layout.report(), markdown.encode("utf-8"))
    return layout.report(), markdown
