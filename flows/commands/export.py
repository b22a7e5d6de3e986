"""`siked export RUN [--iteration N] --to DIR`: a run's student as a standard Hugging Face model folder.

The student a training step leaves is already a merged model folder (LoRA folded into the
weights, tokenizer and generation config beside them). The export copies it out of the step store
and adds a model card (`README.md`) that says what it is: the base model and the teacher, the data
it was trained on (which artifacts, how many rows per source and strategy, iteration by
iteration), its evaluation results with their protocol and 95% intervals, and the prompt format it
expects. transformers and vLLM load the folder as it is.

Only the files the student's folder manifest lists are copied, each checked against its size and
sha256 first: a damaged student is refused, naming the file, and nothing is written.

The folder appears whole or not at all: it is written under a temporary name beside `DIR` and
renamed at the end; an existing non-empty `DIR` is refused. `--push-to-hub REPO` then uploads it
as a model repository (created when missing; a Hub token is needed), in one commit; the local
folder stays either way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from distill.significance import wilson_interval
from distill.strict_yaml import load_yaml, yaml_problem
from distill.student_format import label_prompt, rationale_prompt
from storage import fs
from storage.artifacts import read_artifact
from storage.folders import folder_manifest, folder_problems
from storage.manifest import read_manifest
from storage.mirror import local_model
from storage.paths import layout_for_run_dir
from storage.step_store import read_index


class ExportError(ValueError):
    """The run has no finished student to export, or the target is not free."""


class ExportDamaged(Exception):
    """A file of the student does not match its folder manifest: nothing is exported."""


def export_student(run_dir: str, to: str | Path, iteration: int | None = None) -> Path:
    """Copy the student of `iteration` (default: the last finished one) of the run at `run_dir` to
    `to`, with a model card; returns `to`."""
    layout = layout_for_run_dir(run_dir)
    steps = {s["name"]: s for s in read_index(layout)}
    train = _train_step(steps, iteration, layout.run_dir)
    student = train["outputs"]["student"]
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} exists and is not empty: export into a new folder")
    source = Path(local_model(student))
    files = verified_files(source)
    card = model_card(steps, train, _run_config(layout.config))
    temporary = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        for name in files:
            (temporary / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, temporary / name)
        (temporary / "README.md").write_text(card, encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty, checked above
        temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _run_config(url: str) -> dict[str, Any]:
    """The run's saved config for the model card ({} when it has none)."""
    if not fs.exists(url):
        return {}
    try:
        return load_yaml(fs.read_bytes(url).decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = yaml_problem(exc) if isinstance(exc, yaml.YAMLError) else "not UTF-8 text"
        raise ExportDamaged(f"{url}: not valid YAML: {problem}") from None


def verified_files(folder: Path) -> list[str]:
    """The files the student's folder manifest lists, once each has been checked against its size and
    sha256: a damaged student (a flipped byte, a truncated or missing file) is refused, naming the file,
    and a file the manifest does not list is not exported."""
    problems = folder_problems(str(folder))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ExportDamaged(f"the student is damaged, nothing exported: {problems[0]}{more}; "
                            "`siked verify RUN` lists every altered file")
    return [entry["path"] for entry in folder_manifest(str(folder))["files"]]


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub as the model repository `repo_id`, created
    when missing, in one commit; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="siked export: student, tokenizer and model card")
    return str(url)


def _train_step(steps: dict[str, dict], iteration: int | None, run_dir: str) -> dict:
    trains = sorted((s for s in steps.values() if s["kind"] == "train"), key=lambda s: s["iteration"])
    if iteration is not None:
        trains = [s for s in trains if s["iteration"] == iteration]
        if not trains:
            raise ExportError(f"{run_dir} has no iteration {iteration} (it trains iterations "
                              f"{', '.join(str(s['iteration']) for s in steps.values() if s['kind'] == 'train')})")
    finished = [s for s in trains if _finished(s["outputs"]["student"])]
    if not finished:
        which = f"iteration {iteration}'s student" if iteration is not None else "no student"
        raise ExportError(f"{run_dir}: {which} is not finished yet (`siked status {run_dir}` shows the steps)")
    return finished[-1]


def _finished(folder: str) -> bool:
    try:
        folder_manifest(folder)
    except fs.ArtifactMissing:
        return False
    return True


# --------------------------------------------------------------------------- the model card


def model_card(steps: dict[str, dict], train: dict, config: dict[str, Any]) -> str:
    """The README.md of an exported student (Markdown with Hugging Face's YAML front matter)."""
    train_cfg = config.get("train", {})
    stage = f"iter-{train['iteration']:02d}"
    base = str(train_cfg.get("model", "?"))
    hub_id = "://" not in base and not base.startswith(("builtin:", "/", "."))
    front = {**({"base_model": base} if hub_id else {}), "library_name": "transformers",
             "pipeline_tag": "text-generation", "tags": ["siked", "knowledge-distillation", "distilling-step-by-step"]}
    name = config.get("name", "siked")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name} student, {stage}", "",
             (f"A student distilled by the siked pipeline: run `{name}`, iteration {train['iteration']} of "
              f"{config.get('siked', {}).get('iterations', '?')}."), "",
             "## Models", "", *_models(config, folder_manifest(train["outputs"]["student"]).get("info", {})), "",
             "## Training data", "",
             ("Each iteration's training set, from the run's step store (iterations after the first continue "
              "from the previous student):"), "",
             "| iteration | artifact | rows | by source and strategy |", "| --- | --- | --- | --- |",
             *(_data_row(steps, step) for step in _lineage(steps, train)), "",
             "## Evaluation", "", *_evaluation(steps.get(f"{stage}/evaluate")), "",
             "## Prompt format", "",
             ("Plain text, no chat template; generation stops at `### Instruction` (greedy in the evaluation "
              "above). " + _targets(train_cfg.get("format", "siked"))
              + " The prompt, with the question in place of `{question}`:"), "",
             "```text", rationale_prompt("{question}").rstrip("\n"), "```", "", "Label mode:", "",
             "```text", label_prompt("{question}").rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _models(config: dict[str, Any], info: dict[str, Any]) -> list[str]:
    train_cfg, teacher = config.get("train", {}), config.get("teacher", {}).get("engine", {})
    loss, lora = train_cfg.get("loss", {}), train_cfg.get("lora", {})
    teacher_name = teacher.get("model") or ", ".join(teacher.get("files") or ["?"])
    best = info.get("best_val")
    kept = (f"step {best['step']} of {info.get('steps', '?')} ({best['metric']} {best['accuracy']:.3f} on "
            f"{best['val_questions']} validation questions)" if best else
            f"step {info.get('steps', '?')}, the last (no validation split)")
    return [f"- Base model (student): `{train_cfg.get('model', '?')}`",
            f"- Teacher: `{teacher_name}` ({teacher.get('kind', '?')} engine)",
            (f"- Objective: `{loss.get('kind', '?')}` (alpha {loss.get('alpha', '?')}, beta {loss.get('beta', '?')}), "
             f"format `{train_cfg.get('format', 'siked')}`, LoRA {'merged' if lora.get('enabled') else 'off'}"),
            f"- Kept checkpoint: {kept}"]


def _targets(fmt: str) -> str:
    if fmt == "dss":
        return ("Distilling Step-by-Step's format: in rationale mode the student writes a rationale without "
                "its answer; in label mode it writes the answer as the training data wrote it (an "
                "equation is scored by its value).")
    return ("Rationale mode: the student names its strategy (`[cot]:`, `[l2m]:` or `[pot]:`) and solves, "
            "ending with `Final answer: N` (a `[pot]:` program's `solution()` returns it); label mode: the "
            "bare answer.")


def _lineage(steps: dict[str, dict], train: dict) -> list[dict]:
    """The train steps that made this student, first to last (through their `start` inputs)."""
    chain = [train]
    while "start" in chain[-1].get("inputs", {}):
        chain.append(steps[chain[-1]["inputs"]["start"]])
    return chain[::-1]


def _data_row(steps: dict[str, dict], train: dict) -> str:
    source = steps[train["inputs"]["train_set"]]
    url = next(iter(source["outputs"].values()))
    table = read_artifact(url, "train_examples").to_pandas()
    counts = Counter(zip(table["source"], table["strategy"], strict=True))
    split = ", ".join(f"{s} {g} {n}" for (s, g), n in sorted(counts.items()))
    digest = read_manifest(url).get("content_hash", "")[:12]
    return f"| {train['iteration']} | `{source['name']}` (sha256 {digest}) | {len(table)} | {split} |"


def _evaluation(step: dict | None) -> list[str]:
    if step is None:
        return ["This iteration was not evaluated."]
    lines = ["| benchmark | mode | n | accuracy | 95% interval (Wilson) | strict accuracy |",
             "| --- | --- | --- | --- | --- | --- |"]
    protocols = set()
    for url in step["outputs"].values():
        summary_url = url.removesuffix(".parquet") + ".summary.json"
        if not fs.exists(summary_url):
            continue
        summary = json.loads(fs.read_bytes(summary_url))
        n, accuracy = summary["n"], summary["accuracy"]
        low, high = wilson_interval(round(accuracy * n), n)
        strict = summary.get("accuracy_strict")
        lines.append(f"| {summary['benchmark']} | {summary['mode']} | {n} | {accuracy:.1%} | "
                     f"{low:.1%} to {high:.1%} | {'' if strict is None else f'{strict:.1%}'} |")
        protocol = summary.get("protocol", {})
        protocols.add(f"decoding {protocol.get('decoding')}, prompt hash {protocol.get('prompt_hash')}, "
                      f"answer parser {protocol.get('parser_version')}")
    lines += ["", "Protocol: " + "; ".join(sorted(protocols)) + ". A sample counts when its answer equals the "
              "gold answer (programs executed in the pipeline's sandbox)."]
    return lines
