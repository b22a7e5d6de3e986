"""SVAMP (Patel et al. 2021): `svamp/SVAMP.json`, a JSON array of 1,000 problems, all used as test.

Each record has `ID` (`chal-1`), `Body`, `Question`, `Equation` and `Answer` (a float). The question
is `Body + " " + Question`, the usual prompt; the reference is the equation. Ids: `svamp/test/<ID>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.benchmarks.records import (
    Exclusion,
    LoadedBenchmark,
    Problem,
    collect,
    field,
    read_json_array,
    relative_name,
    source_file,
)
from distill.numbers import parse_number

SPLITS = ("test",)


def parse_record(record: Any, source: str, where: str) -> Problem | Exclusion:
    """One SVAMP record (file element or Hub row) as a Problem."""
    native_id = field(record, "ID", where)
    body = field(record, "Body", where)
    question = field(record, "Question", where)
    equation = field(record, "Equation", where)
    answer = field(record, "Answer", where, (int, float, str))
    problem_id = f"svamp/test/{native_id}"
    gold = parse_number(answer)
    if gold is None:
        return Exclusion(problem_id, "not_a_number", str(answer))
    return Problem(
        id=problem_id, benchmark="svamp", split="test", source=source,
        question=f"{body.strip()} {question.strip()}", answer=gold, answer_text=str(answer),
        reference=equation.strip(),
    )


def load(data_dir: Path, split: str) -> LoadedBenchmark:
    path = source_file(data_dir, "svamp/SVAMP.json")
    source = relative_name(path, data_dir)
    records = read_json_array(path)
    items = [parse_record(record, source, f"{path}: record {i} (of {len(records)})")
             for i, record in enumerate(records, start=1)]
    return collect(items, source)
