"""MultiArith (Roy & Roth 2015): `multiarith/MultiArith.json`, a JSON array of 600 problems (test).

Each record has `iIndex`, `sQuestion`, `lEquations` and `lSolutions` (one float). The question is
`sQuestion` stripped; the gold is `lSolutions[0]`; the reference is the equation. Ids:
`multiarith/test/<iIndex>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.benchmarks.records import (
    BenchmarkError,
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
    native_id = field(record, "iIndex", where, int)
    question = field(record, "sQuestion", where)
    solutions = field(record, "lSolutions", where, list)
    equations = field(record, "lEquations", where, list)
    problem_id = f"multiarith/test/{native_id}"
    if len(solutions) != 1:
        return Exclusion(problem_id, "multiple_values", str(solutions))
    gold = parse_number(solutions[0]) if isinstance(solutions[0], (int, float, str)) else None
    if gold is None:
        raise BenchmarkError(f"{where}: lSolutions[0] is not a number: {solutions[0]!r}")
    return Problem(
        id=problem_id, benchmark="multiarith", split="test", source=source, question=question.strip(),
        answer=gold, answer_text=_plain(gold), reference="; ".join(str(e) for e in equations) or None,
    )


def _plain(value: float) -> str:
    """39.0 -> "39" (as zero_shot_cot writes the gold), 2.5 -> "2.5"."""
    return str(int(value)) if value.is_integer() else str(value)


def load(data_dir: Path, split: str) -> LoadedBenchmark:
    path = source_file(data_dir, "multiarith/MultiArith.json")
    source = relative_name(path, data_dir)
    records = read_json_array(path)
    items = [parse_record(record, source, f"{path}: record {i} (of {len(records)})")
             for i, record in enumerate(records, start=1)]
    return collect(items, source)


def parse_hub_row(row: Any, problem_id: str, source: str, where: str) -> Problem | Exclusion:
    """A row of ChilleD/MultiArith ({"question", "final_ans"}); the Hub copy has no iIndex."""
    question = field(row, "question", where)
    final = field(row, "final_ans", where, (str, int, float))
    gold = parse_number(final)
    if gold is None:
        return Exclusion(problem_id, "not_a_number", str(final))
    return Problem(id=problem_id, benchmark="multiarith", split="test", source=source,
                   question=question.strip(), answer=gold, answer_text=str(final).strip())
