"""Distilling Step-by-Step's released data (Hsieh et al. 2023) with its PaLM-540B rationales.

Files under `distilling_step_by_step/` (see that folder's README):

- `svamp/svamp_{train,test}.json`: JSON Lines {"input", "label"}; the label is an equation such as
  "( 84.0 / 2.0 )", evaluated safely (`distill.numbers.evaluate_arithmetic`) to the numeric gold.
  Ids: `dss_svamp/<split>/<0-based line index>`, the index the rationale files use.
- `cqa/cqa_{train,test}.json`: JSON Lines {"id", "question", "choices", "answer", ...} (CoS-E v1.11).
  Multiple choice, not numeric: answer = NaN, answer_text = the text of the correct choice (the DSS
  label), the question lists the choices as DSS's loader writes them. It serves DSS training with
  rationales, not math verification. Ids: `dss_cqa/<split>/<id>`.
- `<task>/llm/<split>_CoT_<k>.json`: JSON arrays of raw PaLM completions; element j of file k belongs
  to example k*B + j of the split (B = 500 for svamp, 1000 for cqa). `load_rationales` returns them
  keyed by problem id, parsed as the official `data_utils.py` does.

    from distill.benchmarks.dss import load_rationales
    rationales = load_rationales("dss_svamp", "train", data_dir)   # {"dss_svamp/train/0": Rationale}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from distill.benchmarks.records import (
    BenchmarkError,
    LoadedBenchmark,
    Problem,
    field,
    read_json_array,
    read_jsonl,
    relative_name,
    source_file,
)
from distill.choices import render_choices
from distill.numbers import ExpressionError, evaluate_arithmetic

SPLITS = ("train", "test")
ROOT = "distilling_step_by_step"


@dataclass(frozen=True)
class _Task:
    folder: str
    batch: int  # completions per llm/<split>_CoT_<k>.json file
    marker: str  # the official parser splits rationale and label here


TASKS = {
    "dss_svamp": _Task("svamp", 500, "The answer is"),
    "dss_cqa": _Task("cqa", 1000, "So the answer is"),
}


def _svamp_problem(record: dict, split: str, index: int, source: str, where: str) -> Problem:
    question = field(record, "input", where)
    label = field(record, "label", where)
    try:
        answer = evaluate_arithmetic(label)
    except ExpressionError as exc:
        raise BenchmarkError(f"{where}: label {label!r} is not an arithmetic expression ({exc})") from None
    return Problem(
        id=f"dss_svamp/{split}/{index}", benchmark="dss_svamp", split=split, source=source,
        question=question.strip(), answer=answer, answer_text=label, reference=label.strip(),
    )


def _cqa_problem(record: dict, split: str, source: str, where: str) -> Problem:
    native_id = field(record, "id", where)
    question = field(record, "question", where)
    choices = field(record, "choices", where, list)
    answer = field(record, "answer", where)
    if len(choices) != 5 or not all(isinstance(c, str) for c in choices):
        raise BenchmarkError(f"{where}: 'choices' should be 5 strings, found {choices!r}")
    if answer not in choices:
        raise BenchmarkError(f"{where}: answer {answer!r} is not one of the choices")
    explanation = record.get("abstractive_explanation")
    return Problem(
        id=f"dss_cqa/{split}/{native_id}", benchmark="dss_cqa", split=split, source=source,
        question=render_choices(question, choices), answer=math.nan, answer_text=answer,
        reference=explanation.strip() if isinstance(explanation, str) and explanation.strip() else None,
    )


def load(benchmark: str, data_dir: Path, split: str) -> LoadedBenchmark:
    task = TASKS[benchmark]
    path = source_file(data_dir, f"{ROOT}/{task.folder}/{task.folder}_{split}.json")
    source = relative_name(path, data_dir)
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}: line {number}"
        if benchmark == "dss_svamp":
            problems.append(_svamp_problem(record, split, number - 1, source, where))
        else:
            problems.append(_cqa_problem(record, split, source, where))
    if len({p.id for p in problems}) != len(problems):
        raise BenchmarkError(f"{path}: duplicate ids")
    return LoadedBenchmark(problems, [], source)


# --------------------------------------------------------------------------- rationales


@dataclass(frozen=True)
class Rationale:
    """One released PaLM-540B completion for a problem, with the official parsing of it."""

    problem_id: str
    raw: str
    """The completion as released; it runs on past the answer into a made-up next `Q:`."""
    rationale: str | None
    """Text before `The answer is` / `So the answer is`, after cutting at the first `Q:`; None
    where the marker is missing (the official loader then uses ' ' for rationale and label)."""
    label: str | None
    """svamp: the parenthesised expression after the marker, `(84 / 2)`; cqa: the choice text after
    `(d)`, without a final period. None where it cannot be read."""
    source: str
    """`<file relative to the data folder>[<index in the array>]`."""


def parse_completion(benchmark: str, raw: str) -> tuple[str | None, str | None]:
    """(rationale, label) as `data_utils.py` of google-research/distilling-step-by-step reads them."""
    parts = raw.split("Q:")[0].rstrip().split(TASKS[benchmark].marker)
    if len(parts) != 2:
        return None, None
    rationale, tail = parts[0].rstrip(), parts[1]
    if benchmark == "dss_svamp":
        found = re.search(r"\(.*\)", tail)
        return rationale, found.group(0) if found else None
    pieces = re.split(r"\(.\)", tail)
    label = pieces[1].strip().removesuffix(".") if len(pieces) > 1 else ""
    return rationale, label or None


def load_rationales(benchmark: str, split: str, data_dir: Path) -> dict[str, Rationale]:
    """PaLM-540B rationales of a dss_* split, keyed by problem id (every problem has exactly one)."""
    if benchmark not in TASKS:
        raise BenchmarkError(f"no released rationales for {benchmark!r}; known: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise BenchmarkError(f"{benchmark} has no split {split!r}; known: {', '.join(SPLITS)}")
    task = TASKS[benchmark]
    problems = load(benchmark, data_dir, split).problems
    folder = Path(data_dir) / ROOT / task.folder / "llm"
    files = sorted(folder.glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if [int(p.stem.rsplit("_", 1)[1]) for p in files] != list(range(len(files))) or not files:
        raise BenchmarkError(f"{folder}: expected {split}_CoT_0.json, {split}_CoT_1.json, ... "
                             f"found {[p.name for p in files]}")
    rationales: dict[str, Rationale] = {}
    for k, path in enumerate(files):
        completions = read_json_array(path)
        last = k == len(files) - 1
        if len(completions) > task.batch or (not last and len(completions) != task.batch):
            raise BenchmarkError(f"{path}: {len(completions)} completions; every file but the last "
                                 f"holds {task.batch}")
        for j, raw in enumerate(completions):
            index = k * task.batch + j
            if index >= len(problems):
                raise BenchmarkError(f"{path}: element {j} has no problem ({len(problems)} in {split})")
            if not isinstance(raw, str):
                raise BenchmarkError(f"{path}: element {j} is {type(raw).__name__}, not a string")
            rationale, label = parse_completion(benchmark, raw)
            problem_id = problems[index].id
            rationales[problem_id] = Rationale(
                problem_id, raw, rationale, label, f"{relative_name(path, data_dir)}[{j}]")
    if len(rationales) != len(problems):
        raise BenchmarkError(f"{folder}: {len(rationales)} {split} completions for {len(problems)} problems")
    return rationales
