"""Turning rows into a table of a declared schema, strictly.

Accepts a pyarrow Table, a pandas DataFrame or a list of dicts. Columns come out in the schema's
order with its types. A missing nullable column is filled with nulls; an extra column, a missing
non-nullable column, or a value of another type is an error naming the column. Casts are safe and
limited to the same family (integers and floats among themselves, string and large_string, lists
of such), so a string "1.5" never turns into a number and 1.5 never into the integer 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from storage.fs import ArtifactError
from storage.schemas import schema_for

Rows = pa.Table | Sequence[Mapping[str, Any]] | Any  # Any: a pandas DataFrame


class SchemaMismatch(ArtifactError, ValueError):
    """Rows or a stored file do not fit the declared schema of their kind (message names the column)."""


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    return (
        source == target
        or pa.types.is_null(source)
        or (_is_numeric(source) and _is_numeric(target))
        or (_is_text(source) and _is_text(target))
        # lists (token ids, log-probabilities): Python ints and floats arrive as int64 and double
        or (pa.types.is_list(source) and pa.types.is_list(target) and _castable(source.value_type, target.value_type))
    )


def _from_dicts(rows: Sequence[Mapping[str, Any]], kind: str) -> pa.Table:
    """Columns inferred one by one, so a bad value is reported with its column."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = {}
    for name in names:
        try:
            arrays[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaMismatch(f"{kind}: column {name!r} has values of mixed or unsupported types: {e}") from None
    return pa.table(arrays) if arrays else pa.table({})


def _as_table(rows: Rows, kind: str) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if type(rows).__name__ == "DataFrame" and hasattr(rows, "columns"):
        try:
            return pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaMismatch(f"{kind}: DataFrame does not convert to Arrow: {e}") from None
    if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        return _from_dicts(rows, kind)
    raise TypeError(f"{kind}: rows must be a pyarrow Table, a pandas DataFrame or a list of dicts, "
                    f"not {type(rows).__name__}")


def to_table(rows: Rows, kind: str) -> pa.Table:
    """`rows` as a pyarrow Table with exactly the declared schema of `kind`."""
    _, schema = schema_for(kind)
    table = _as_table(rows, kind)
    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise SchemaMismatch(f"{kind}: columns not in the schema: {', '.join(extra)} "
                             f"(expected some of: {', '.join(schema.names)})")
    n_rows = table.num_rows if table.num_columns else len(rows)  # a list of empty dicts has no columns
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaMismatch(f"{kind}: required column {field.name!r} is missing")
            columns.append(pa.nulls(n_rows, field.type))
            continue
        column = table.column(field.name)
        if not _castable(column.type, field.type):
            raise SchemaMismatch(f"{kind}: column {field.name!r} has type {column.type}, expected {field.type}")
        try:
            column = column.cast(field.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaMismatch(f"{kind}: column {field.name!r} does not fit {field.type}: {e}") from None
        if not field.nullable and column.null_count:
            raise SchemaMismatch(f"{kind}: column {field.name!r} may not hold nulls")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def check_stored_schema(url: str, kind: str, stored: pa.Schema) -> None:
    """Raise SchemaMismatch naming `url` when a stored file's schema is not the declared one."""
    _, schema = schema_for(kind)
    if stored.equals(schema, check_metadata=False):
        return
    declared = {f.name: f.type for f in schema}
    found = {f.name: f.type for f in stored}
    problems = [f"missing {n}" for n in declared if n not in found]
    problems += [f"unexpected {n}" for n in found if n not in declared]
    problems += [f"{n} is {found[n]}, expected {t}" for n, t in declared.items() if n in found and found[n] != t]
    if not problems:
        problems = ["column order or nullability differs"]
    raise SchemaMismatch(f"{url}: stored schema differs from the declared {kind!r} schema: {'; '.join(problems)}")
