"""Where a run's wall time goes: named spans (process start, imports, engine start, generation,
training...) appended as JSON Lines to the file `SIKED_TIMINGS` names, from every process of a run.

Off unless the variable is set (bench/bench_startup.py sets it); child processes inherit it, and
each line is written with one `write` in append mode, so processes can share the file.

    with span("engine_start", model=path):
        llm = vllm.LLM(...)
    record("child_boot", started_at, time.time())   # a span measured across processes

A line: {"span", "start", "end", "seconds", "pid", ...labels}; times are `time.time()` seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV = "SIKED_TIMINGS"


def record(name: str, start: float, end: float, **labels: Any) -> None:
    """Append one span to the timings file (nothing when SIKED_TIMINGS is unset)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"span": name, "start": start, "end": end, "seconds": round(end - start, 4),
                       "pid": os.getpid(), **labels}, default=str)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@contextmanager
def span(name: str, **labels: Any) -> Iterator[None]:
    """Time the block as `name` (recorded also when it raises)."""
    start = time.time()
    try:
        yield
    finally:
        record(name, start, time.time(), **labels)
