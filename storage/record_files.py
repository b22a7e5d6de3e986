"""Records of a user's data file, whatever its format: the reading half of `name: file` benchmarks.

The format follows the extension, after any compression suffix (`.gz`, `.bz2`, `.xz`, `.zst`):

- `.jsonl`: JSON Lines, one object a line (blank lines skipped);
- `.json`: one JSON array of objects, or JSON Lines under a `.json` name, as some datasets ship;
- `.csv`: a header line, then one record a row (every value a string);
- `.parquet`: one record a row, nested columns as dicts and lists.

`read_records(url)` yields `(where, record)` in file order, `where` naming the file and the line
(JSON Lines, CSV) or the record (JSON arrays, Parquet), counted from 1 as editors do. A line that is
not valid JSON (or nested too deeply to parse) is yielded as a `ValueError` in place of its record,
so the caller can exclude that one record and go on; a file that cannot be read at all raises
`RecordFileError`. A JSON number that neither an int nor a float can hold (more digits than Python
converts, `1e999`) is kept as its text, so that the record, not the file, is refused.

    for where, record in read_records("data/problems.jsonl"):   # ("data/problems.jsonl: line 1", {...})
        ...
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

from storage.fs import ArtifactError, resolve

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


class RecordFileError(ArtifactError, ValueError):
    """A data file that cannot be read: missing, of an unknown format, or not records at all."""


def data_format(url: str) -> tuple[str, str | None]:
    """(format extension, compression or None) of a data file's name."""
    name = str(url).rstrip("/").rsplit("/", 1)[-1].lower()
    compression = next((kind for suffix, kind in _COMPRESSION.items() if name.endswith(suffix)), None)
    if compression:
        name = name.rsplit(".", 1)[0]
    extension = next((f for f in FORMATS if name.endswith(f)), None)
    if extension is None:
        raise RecordFileError(f"{url}: unknown data format; the name should end in "
                              f"{', '.join(FORMATS)} (optionally followed by {', '.join(_COMPRESSION)})")
    return extension, compression


def read_records(url: str) -> Iterator[tuple[str, Any]]:
    """(where, record or ValueError) for every record of the file at `url` (see the module docstring)."""
    extension, compression = data_format(url)
    fs, path = resolve(url)
    if not fs.isfile(path):
        raise RecordFileError(f"{url}: file not found")
    with fs.open(path, "rb", compression=compression) as handle:
        data = handle.read()
    if extension == ".parquet":
        yield from _parquet(data, url)
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecordFileError(f"{url}: not UTF-8 text (byte {exc.start})") from None
    if extension == ".csv":
        yield from _csv(text, url)
    elif extension == ".jsonl":
        yield from _json_lines(text, url)
    else:
        yield from _json(text, url)


def _int_or_text(text: str) -> int | str:
    # int() refuses more digits than sys.get_int_max_str_digits(): json would fail the whole file.
    limit = sys.get_int_max_str_digits()
    return text if limit and len(text.lstrip("-")) > limit else int(text)


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text  # `1e999`: kept as written, not as infinity


def _loads(text: str) -> Any:
    return json.loads(text, parse_int=_int_or_text, parse_float=_float_or_text)


def _json_lines(text: str, url: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = _loads(line)
        except json.JSONDecodeError as exc:
            record = ValueError(f"invalid JSON ({exc.msg}, column {exc.colno})")
        except RecursionError:
            record = ValueError("invalid JSON (nested too deeply)")
        yield f"{url}: line {number}", record


def _json(text: str, url: str) -> Iterator[tuple[str, Any]]:
    try:
        data = _loads(text)
    except RecursionError:
        raise RecordFileError(f"{url}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a second value after the first: JSON Lines under a .json name
            yield from _json_lines(text, url)
            return
        raise RecordFileError(f"{url}: invalid JSON on line {exc.lineno} (column {exc.colno}): {exc.msg}") from None
    if isinstance(data, dict) and len(text.strip().splitlines()) == 1:
        yield f"{url}: line 1", data  # JSON Lines of a single record
        return
    if not isinstance(data, list):
        raise RecordFileError(f"{url}: expected a JSON array of records (or JSON Lines), "
                              f"found {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        yield f"{url}: record {number}", record


def _csv(text: str, url: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise RecordFileError(f"{url}: no header line")
    while True:
        start = reader.line_num + 1  # the line the next record starts on (blank lines are skipped)
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecordFileError(f"{url}: line {reader.line_num}: {exc}") from None
        record.pop(None, None)  # cells beyond the header: no field names them
        yield f"{url}: line {start}", record


def _parquet(data: bytes, url: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecordFileError(f"{url}: not a readable Parquet file ({exc})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{url}: record {number}", record
