"""ASDiv (Miao et al. 2020): `asdiv/ASDiv.xml`, 2,305 `<Problem ID="nluds-0001">` elements (used as test).

The question is `Body + " " + Question`. Answers carry units, `9 (apples)`, and are parsed as numbers;
answers that are not one number are excluded with a reason and counted, never silently dropped:

- `multiple_values`: several values, `5 (years old); 15 (years old)`
- `ratio`: `3:4` where the solution type is Ratio
- `time_of_day`: clock times, `3:30 p.m.`, `14:55`
- `not_a_number`: names, yes/no, colours, ordinals, dates (`Mrs. Hilt`, `6th`)

Ids: `asdiv/test/<ID>`; the reference is the `Formula` (`7+2=9`).
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

SPLITS = ("test",)
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
    path = source_file(data_dir, "asdiv/ASDiv.xml")
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
