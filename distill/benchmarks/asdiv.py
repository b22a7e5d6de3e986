"""ASDiv (Miao et al. 2020): `asdiv/ASDiv.xml`, 2,305 `<Problem ID="nluds-0001">` elements (used as test).

The question is `Body + " " + Question`. Answers carry units, `9 (apples)`, and are parsed as numbers;
answers that are not one number are excluded with a reason and counted, never silently dropped:

- `multiple_values`: several values, `5 (years old); 15 (years old)`
- `ratio`: `3:4` where the solution type is Ratio
- `time_of_day`: clock times, `3:30 p.m.`, `14:55`
- `not_a_number`: names, yes/no, colours, ordinals, dates (`Mrs. Hilt`, `6th`)

Ids: `asdiv/test/<ID>`; the reference is the `Formula` (`7+2=9`).

Splits:

- `test`: all 2,305 problems (ASDiv has no train/test split of its own).
- `arithmetic`: ASDiv-A, the 1,218 problems whose ids `asdiv/nfolds/asdiv-a/fold0.txt` ... `fold4.txt`
  list: the arithmetic subset (solution types Addition, Subtraction, Multiplication, Common-, Floor-
  and Ceil-Division, Sum, Difference and TVQ-*) that the SVAMP paper and the distillation literature
  evaluate on. The split is named for what the subset is: a config reads `{name: asdiv, split:
  arithmetic}` and the evaluation set's label is `asdiv-arithmetic`, where `asdiv-a` would repeat the
  benchmark in the label (`asdiv-asdiv-a`) and `a` alone says nothing. (`label: asdiv-a` in the
  config names the set as the papers do.)

ASDiv-A is `test` filtered: the same parsing, the same exclusions with their reasons (those whose ids
the folds list), and the same `Problem`s, ids and `split` field included, so a question has one id,
`asdiv/test/<ID>`, whichever set it was read from. The `test` in the id is the part of ASDiv the
question belongs to, not the set it was loaded as: ASDiv-A selects from that part, as a `limit`
subset does, and subsets keep their ids. Nothing needs the set in the id: wherever sets meet, the set
is named by its label (step names `problems/eval-<label>`, prediction files, decontamination overlaps
and outcomes are recorded per label and question id), and step keys hash the config's split. One id
per question lets results on the two sets be joined per question, and rationales keyed by question
id serve both.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from distill.benchmarks.records import (
    BenchmarkError,
    Exclusion,
    LoadedBenchmark,
    Problem,
    collect,
    relative_name,
    source_file,
)
from distill.numbers import parse_number

SPLITS = ("test", "arithmetic")
XML_FILE = "asdiv/ASDiv.xml"
ARITHMETIC_FOLDS = tuple(f"asdiv/nfolds/asdiv-a/fold{k}.txt" for k in range(5))
"""The five cross-validation folds of ASDiv-A; together they list its problem ids, each once."""
_RATIO = re.compile(r"\d+\s*:\s*\d+")
_CLOCK = re.compile(r"\d{1,2}:\d{2}\b")


def exclusion_reason(answer: str, solution_type: str = "") -> str:
    """Why an answer that `parse_number` rejects is not one number."""
    if ";" in answer:
        return "multiple_values"
    if _RATIO.fullmatch(answer.strip()) and solution_type.strip().lower() == "ratio":
        return "ratio"
    if _CLOCK.match(answer.strip()):
        return "time_of_day"
    return "not_a_number"


def parse_problem(native_id: str, body: str, question: str, answer: str, solution_type: str,
                  formula: str | None, source: str) -> Problem | Exclusion:
    """One ASDiv problem (XML element or Hub row) as a Problem, or an Exclusion with its reason."""
    problem_id = f"asdiv/test/{native_id}"
    answer = answer.strip()
    gold = parse_number(answer)
    if gold is None:
        return Exclusion(problem_id, exclusion_reason(answer, solution_type), answer)
    return Problem(
        id=problem_id, benchmark="asdiv", split="test", source=source,
        question=f"{body.strip()} {question.strip()}", answer=gold, answer_text=answer,
        reference=formula.strip() if formula else None,
    )


def _text(problem: ET.Element, tag: str, where: str, required: bool = True) -> str | None:
    child = problem.find(tag)
    if child is None or child.text is None:
        if required:
            raise BenchmarkError(f"{where}: missing <{tag}>")
        return None
    return child.text


def load(data_dir: Path, split: str) -> LoadedBenchmark:
    if split == "arithmetic":
        return load_arithmetic(data_dir)
    return _load_all(data_dir)


def _load_all(data_dir: Path) -> LoadedBenchmark:
    path = source_file(data_dir, XML_FILE)
    source = relative_name(path, data_dir)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        raise BenchmarkError(f"{path}: malformed XML at line {line}, column {column}") from None
    items = []
    for number, problem in enumerate(root.iter("Problem"), start=1):
        native_id = problem.get("ID")
        where = f"{path}: <Problem> {number}" + (f" (ID {native_id})" if native_id else "")
        if not native_id:
            raise BenchmarkError(f"{where}: missing attribute ID")
        items.append(parse_problem(
            native_id, _text(problem, "Body", where), _text(problem, "Question", where),
            _text(problem, "Answer", where), _text(problem, "Solution-Type", where, required=False) or "",
            _text(problem, "Formula", where, required=False), source,
        ))
    if not items:
        raise BenchmarkError(f"{path}: no <Problem> elements")
    return collect(items, source)


def arithmetic_ids(data_dir: Path) -> dict[str, str]:
    """{ASDiv id (`nluds-0153`): `<fold file>: line <n>`} of every id the ASDiv-A folds list.

    A missing fold file, or an id listed twice, is a BenchmarkError naming the file (and line)."""
    listed: dict[str, str] = {}
    for relative in ARITHMETIC_FOLDS:
        path = source_file(data_dir, relative)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            native_id = line.strip()
            if not native_id:
                continue
            where = f"{path}: line {number}"
            if native_id in listed:
                raise BenchmarkError(f"{where}: {native_id} is listed twice (first at {listed[native_id]})")
            listed[native_id] = where
    return listed


def load_arithmetic(data_dir: Path) -> LoadedBenchmark:
    """ASDiv-A: the problems and exclusions of the whole set whose ids the fold files list, in the
    order of `ASDiv.xml`. An id the folds list that `ASDiv.xml` lacks is a BenchmarkError naming it."""
    listed = arithmetic_ids(data_dir)
    whole = _load_all(data_dir)
    wanted = {f"asdiv/test/{native_id}" for native_id in listed}
    found = {item.id for item in [*whole.problems, *whole.exclusions]}
    for native_id, where in listed.items():
        if f"asdiv/test/{native_id}" not in found:
            raise BenchmarkError(f"{where}: {native_id} is not a problem of {whole.source}")
    folds = ARITHMETIC_FOLDS[0].removesuffix("0.txt") + f"{{0..{len(ARITHMETIC_FOLDS) - 1}}}.txt"
    return LoadedBenchmark([p for p in whole.problems if p.id in wanted],
                           [e for e in whole.exclusions if e.id in wanted],
                           f"{whole.source}, ASDiv-A ids from {folds}")
