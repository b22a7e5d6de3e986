"""Problems from any records: `name: file` benchmarks, a user's own data (docs/datasets.md).

The records come from a data file (`storage.record_files.read_records`) or a Hub dataset; the
benchmark reference says which field holds what, each a dotted path into a record (`question`,
`meta.answer`, `solutions.0` for the first item of a list). A record that cannot be used is excluded,
not fatal: the Exclusion names the file, the line or record, and the reason.

Answers:
- numeric: a number, or a string holding one (`1,080`, `$5`, `-3.5`, `3/4`), an arithmetic
  expression (`( 84.0 / 2.0 )`, as SVAMP's equations), or GSM8K's worked solution `... #### 72`
  (the gold is the text after the last `####`, and is the answer_text);
- multiple choice (with `choices`): the correct choice's letter (`B`, `(b)`, `b)`) or its text. The
  choices are a list of texts, of `A) text` / `(A) text` / `A. text` strings, or `{label, text}` lists
  (CommonsenseQA on the Hub), a JSON list in a CSV cell, or one field per choice (`choices: [A, B, C, D]`). The problem then carries them in its question, as every multiple-choice
  problem here does (`distill.choices`): answer NaN, answer_text the correct choice's text.

Ids are `<name>/<split>/<the id field, or the record's 0-based position>`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from distill.benchmarks.dss import Rationale
from distill.benchmarks.records import Exclusion, LoadedBenchmark, Problem
from distill.choices import LETTERS, choice_index, render_choices
from distill.config import BenchmarkRef
from distill.numbers import ExpressionError, evaluate_arithmetic, parse_number

_MISSING = object()
_LETTERED = re.compile(r"^\s*\(?([A-Ja-j])\s*[).:]\s*(.*?)\s*$", re.DOTALL)


class _Unusable(Exception):
    """A record left out: `reason` is a short key, the message says what was wrong."""

    def __init__(self, reason: str, message: str, answer_text: str = ""):
        super().__init__(message)
        self.reason, self.answer_text = reason, answer_text


def lookup(record: Any, dotted: str) -> Any:
    """The value at a dotted path: a key whose name holds dots is found as it is, then `a.b.0`
    walks dict keys and list indices. `_MISSING` when the path leads nowhere."""
    if isinstance(record, dict) and dotted in record:
        return record[dotted]
    node = record
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _value(record: Any, dotted: str, what: str) -> Any:
    value = lookup(record, dotted)
    if value is _MISSING or value is None:
        raise _Unusable("missing_field", f"no {what} field {dotted!r}")
    return value


def _text(record: Any, dotted: str, what: str) -> str:
    value = _value(record, dotted, what)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Unusable(f"bad_{what}", f"{what} field {dotted!r} is {type(value).__name__}, not text")
    text = str(value).strip()
    if not text:
        raise _Unusable(f"bad_{what}", f"{what} field {dotted!r} is empty")
    return text


def _too_large(value: Any) -> bool:
    """Whether an answer that is no usable number is one a float cannot hold (`1e999`, 400 digits)."""
    try:
        number = float(value.replace(",", "").strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isinf(number)


def _shown(text: str, width: int = 40) -> str:
    """`text` quoted for a message, shortened: a 5,001-digit answer would fill the screen."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}... ({len(text)} characters)"


def numeric_answer(value: Any) -> float | None:
    """The number an answer field gives (see the module docstring), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    number = parse_number(text)
    if number is not None:
        return number
    try:
        return evaluate_arithmetic(text)
    except ExpressionError:
        return None


def choice_texts(value: Any) -> list[str] | None:
    """The choices' texts from a list of texts, of lettered strings, or `{label: [...], text: [...]}`,
    or a string holding such a list as JSON (a CSV cell)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, dict) and isinstance(value.get("text"), (list, tuple)):
        value = value["text"]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        return None
    texts = [str(v).strip() for v in value]
    lettered = [_LETTERED.match(t) for t in texts]
    if texts and all(lettered) and [m.group(1).lower() for m in lettered] == list(LETTERS[: len(texts)]):
        texts = [m.group(2) for m in lettered]
    return texts


def parse_record(record: Any, ref: BenchmarkRef, position: int, source: str) -> Problem:
    """One record as a Problem; raises _Unusable saying why it cannot be one."""
    if isinstance(record, Exception):
        raise _Unusable("unreadable", str(record))
    if not isinstance(record, dict):
        raise _Unusable("not_a_record", f"a {type(record).__name__}, not a record with fields")
    native_id = _text(record, ref.id, "id") if ref.id else str(position)
    question = _text(record, ref.question, "question")
    raw_answer = _value(record, ref.answer, "answer")
    if isinstance(raw_answer, str) and "####" in raw_answer:  # GSM8K's worked solution: the gold follows ####
        raw_answer = raw_answer.rpartition("####")[2]
    answer_text = str(raw_answer).strip()
    reference = None
    if ref.rationale:
        found = lookup(record, ref.rationale)
        reference = str(found).strip() if isinstance(found, str) and found.strip() else None
    name = ref.benchmark_name
    problem = {"id": f"{name}/{ref.split}/{native_id}", "benchmark": name, "split": ref.split,
               "source": source, "reference": reference}
    if ref.choices is None:
        answer = numeric_answer(raw_answer)
        if answer is None and _too_large(raw_answer):
            raise _Unusable("not_finite", f"answer {_shown(answer_text)} is not a finite number (too large "
                            "for a float)", answer_text)
        if answer is None:
            raise _Unusable("not_a_number", f"answer {_shown(answer_text)} is not a number", answer_text)
        return Problem(question=question, answer=answer, answer_text=answer_text, **problem)
    if isinstance(ref.choices, list):  # one field per choice: a CSV's `A`, `B`, `C`, `D` columns
        choices = choice_texts([_text(record, name, "choice") for name in ref.choices])
    else:
        choices = choice_texts(_value(record, ref.choices, "choices"))
    if choices is None or not 2 <= len(choices) <= len(LETTERS) or not all(choices):
        raise _Unusable("bad_choices", f"choices field {ref.choices!r} should be a list of 2 to "
                        f"{len(LETTERS)} texts", answer_text)
    index = choice_index(answer_text, choices)
    if index is None:
        raise _Unusable("answer_not_a_choice", f"answer {answer_text!r} names none of the choices "
                        "by letter or text", answer_text)
    return Problem(question=render_choices(question, choices), answer=math.nan, answer_text=choices[index],
                   **problem)


def given_rationales(problems: Iterable[Problem]) -> dict[str, Rationale]:
    """The worked solutions a file's `rationale` field gave (kept as each problem's reference), as
    the rationales `siked train` trains on: the text before a final `####` line (GSM8K's layout)."""
    return {p.id: Rationale(p.id, p.reference, p.reference.rpartition("####")[0].strip() if "####" in p.reference
                            else p.reference, None, p.source)
            for p in problems if p.reference}


def parse_records(records: Iterable[tuple[str, Any]], ref: BenchmarkRef, source: str) -> LoadedBenchmark:
    """Problems and exclusions of `(where, record)` pairs in file order; a repeated id is excluded."""
    problems: list[Problem] = []
    exclusions: list[Exclusion] = []
    seen: dict[str, str] = {}
    for position, (where, record) in enumerate(records):
        fallback_id = f"{ref.benchmark_name}/{ref.split}/{position}"
        try:
            problem = parse_record(record, ref, position, source)
            if problem.id in seen:
                raise _Unusable("duplicate_id", f"id {problem.id!r} was already used at {seen[problem.id]}",
                                problem.answer_text)
        except _Unusable as unusable:
            exclusions.append(Exclusion(fallback_id, unusable.reason, unusable.answer_text,
                                        detail=f"{where}: {unusable}", where=where))
            continue
        seen[problem.id] = where
        problems.append(problem)
    return LoadedBenchmark(problems, exclusions, source)
