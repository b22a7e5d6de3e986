"""GSM8K (Cobbe et al. 2021): `gsm8k/{train,test}.jsonl`, one {"question", "answer"} object a line.

The answer is a worked solution whose last line is `#### <number>`. Gold: the text after the last
`####`, with commas and `$` removed. Reference: the solution above that line, without the calculator
annotations `<<48/2=24>>`. Ids are `gsm8k/<split>/<n>` with n the 0-based line index in the original
file (= the row index of the Hub copy): `gsm8k/train/0` is the first line of train.jsonl (Natalia's
clips). Error messages count lines from 1, as editors do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from distill.benchmarks.records import (
    BenchmarkError,
    Exclusion,
    LoadedBenchmark,
    Problem,
    collect,
    field,
    read_jsonl,
    relative_name,
    source_file,
)
from distill.numbers import parse_number

SPLITS = ("train", "test")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(solution: str) -> str:
    """`48/2 = <<48/2=24>>24 clips` -> `48/2 = 24 clips`."""
    return _CALCULATOR.sub("", solution)


def parse_record(record: Any, split: str, index: int, source: str, where: str) -> Problem | Exclusion:
    """One GSM8K record (file line or Hub row) as a Problem, or an Exclusion if its gold is no number."""
    question = field(record, "question", where)
    answer = field(record, "answer", where)
    if "####" not in answer:
        raise BenchmarkError(f"{where}: the answer has no '#### <number>' line")
    solution, _, gold_text = answer.rpartition("####")
    gold_text = gold_text.strip()
    problem_id = f"gsm8k/{split}/{index}"
    gold = parse_number(gold_text.replace(",", "").replace("$", ""))
    if gold is None:
        return Exclusion(problem_id, "not_a_number", gold_text)
    return Problem(
        id=problem_id, benchmark="gsm8k", split=split, source=source, question=question.strip(),
        answer=gold, answer_text=gold_text, reference=strip_calculator_annotations(solution).strip(),
    )


def load(data_dir: Path, split: str) -> LoadedBenchmark:
    path = source_file(data_dir, f"gsm8k/{split}.jsonl")
    source = relative_name(path, data_dir)
    items = [parse_record(record, split, number - 1, source, f"{path}: line {number}")
             for number, record in read_jsonl(path)]
    return collect(items, source)
