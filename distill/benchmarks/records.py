"""What a loader returns: problems, the problems it excluded and why, and errors naming the file.

A `Problem` has the columns of the PROBLEMS schema (storage/schemas.py); `to_row()` gives the dict
written to Parquet. Ids come from the source (a line index, or the dataset's own id), so they stay
the same however the problems are later shuffled or subset.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded: a missing or malformed file, an unknown split, no Hub access."""


@dataclass(frozen=True)
class Problem:
    id: str
    """`<benchmark>/<split>/<native id or 0-based line index>`, e.g. `gsm8k/train/0`, `svamp/test/chal-1`."""
    benchmark: str
    split: str
    source: str
    """The file (relative to the data folder) or Hub dataset the problem came from."""
    question: str
    answer: float
    """The numeric gold answer; NaN where the answer is not a number (dss_cqa's answer choices)."""
    answer_text: str
    """The gold answer as written in the source (`1,080`, `9 (apples)`, `( 84.0 / 2.0 )`, `math problem`)."""
    reference: str | None = None
    """The source's reference solution (worked solution, equation or explanation), when it has one."""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_numeric(self) -> bool:
        return not math.isnan(self.answer)


@dataclass(frozen=True)
class Exclusion:
    """A problem left out on purpose (its gold answer is not a single number, a record of a user's
    file that cannot be used), with the reason."""

    id: str
    reason: str
    """A short key: `multiple_values`, `ratio`, `time_of_day`, `not_a_number`, `missing_field`, ..."""
    answer_text: str
    detail: str = ""
    """Where and what, for records of a user's file: `data.jsonl: line 7: no answer field 'gold'`."""
    where: str = ""
    """The where part of `detail` alone: `data.jsonl: line 7`."""

    @property
    def message(self) -> str:
        """What was wrong, without the where: `no answer field 'gold'`."""
        return self.detail.removeprefix(f"{self.where}: ") if self.where else self.detail


class LoadedBenchmark(NamedTuple):
    """`problems, exclusions = load_benchmark(...)`; `source` says where they came from."""

    problems: list[Problem]
    exclusions: list[Exclusion]
    source: str

    def excluded_reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason for e in self.exclusions).items()))

    def why_no_problem(self) -> str | None:
        """Why not one problem was loaded, or None when some were. Every record missing the same
        field means the field path matches nothing in this file: that field is named on its own."""
        if self.problems:
            return None
        count = len(self.exclusions)
        if not count:
            return f"{self.source}: holds no records"
        records = "its one record" if count == 1 else f"any of its {count} records"
        messages = {e.message for e in self.exclusions}
        if len(messages) == 1 and self.exclusions[0].reason == "missing_field":
            return f"{self.source}: {messages.pop()} in {records} (is the field's path right?)"
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.excluded_reasons().items())
        first = self.exclusions[0]
        shown = first.detail.removeprefix(f"{self.source}: ") or first.reason
        return f"{self.source}: no usable record, {count} excluded ({reasons}); the first: {shown}"


def collect(items: list[Problem | Exclusion], source: str) -> LoadedBenchmark:
    """Parsed records, in source order, split into problems and exclusions."""
    problems = [item for item in items if isinstance(item, Problem)]
    exclusions = [item for item in items if isinstance(item, Exclusion)]
    return LoadedBenchmark(problems, exclusions, source)


# --------------------------------------------------------------------------- reading files


def relative_name(path: Path, data_dir: Path) -> str:
    """The path as recorded in `Problem.source`: relative to the data folder when inside it."""
    try:
        return Path(path).relative_to(data_dir).as_posix()
    except ValueError:
        return str(path)


def source_file(data_dir: Path, relative: str) -> Path:
    """`data_dir/relative`, or a BenchmarkError saying which file is missing."""
    path = Path(data_dir) / relative
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found (is the data folder {data_dir} complete?)")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line; an error names the file and line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}: invalid JSON on line {number}: {exc.msg}") from None
            if not isinstance(record, dict):
                raise BenchmarkError(f"{path}: line {number} is not a JSON object")
            yield number, record


def read_json_array(path: Path) -> list[Any]:
    """A file holding one JSON array; an error names the file and the line of the syntax error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: invalid JSON on line {exc.lineno} (column {exc.colno}): {exc.msg}") from None
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON array, found {type(data).__name__}")
    return data


def field(record: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """`record[key]`, checked for presence and type; `where` names the file and record in errors."""
    if not isinstance(record, dict):
        raise BenchmarkError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if key not in record:
        raise BenchmarkError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkError(f"{where}: key {key!r} should be {expected}, found {type(value).__name__}")
    return value
