"""Benchmarks as `Problem` records: GSM8K, SVAMP, ASDiv, MultiArith, Distilling Step-by-Step's SVAMP and
CommonsenseQA (with PaLM-540B rationales), and the generated `arith`.

    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef
    problems, exclusions, source = load_benchmark(BenchmarkRef(name="gsm8k", split="test", limit=50), data_dir)

`data_dir` is the folder of original files (the caller resolves it; see docs/datasets.md). Each
benchmark has a module of its own here; `hub` loads the same benchmarks through `datasets`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from distill.benchmarks import arith, asdiv, dss, file, gsm8k, hub, multiarith, svamp
from distill.benchmarks.dss import Rationale, load_rationales
from distill.benchmarks.records import BenchmarkError, Exclusion, LoadedBenchmark, Problem
from distill.config import BenchmarkRef

__all__ = [
    "BENCHMARK_SPLITS", "BenchmarkError", "Exclusion", "LoadedBenchmark", "Problem", "Rationale",
    "load_benchmark", "load_rationales", "select_subset",
]

# Every benchmark and its splits, in the order `siked data list` shows them.
BENCHMARK_SPLITS: dict[str, tuple[str, ...]] = {
    "gsm8k": gsm8k.SPLITS,
    "svamp": svamp.SPLITS,
    "asdiv": asdiv.SPLITS,
    "multiarith": multiarith.SPLITS,
    "dss_svamp": dss.SPLITS,
    "dss_cqa": dss.SPLITS,
    "arith": arith.SPLITS,
}
_LOCAL = {"gsm8k": gsm8k.load, "svamp": svamp.load, "asdiv": asdiv.load, "multiarith": multiarith.load}


def select_subset(problems: list[Problem], limit: int | None, seed: int) -> list[Problem]:
    """The first `limit` problems after a seeded shuffle: a stable subset (None keeps all, in order).

    The shuffle runs over the problems sorted by id, so the subset depends only on the ids and the
    seed, not on file order; a larger limit gives a superset of a smaller one.
    """
    if limit is None:
        return list(problems)
    ordered = sorted(problems, key=lambda p: p.id)
    random.Random(seed).shuffle(ordered)
    return ordered[:limit]


RecordReader = Callable[[str], Iterable[tuple[str, Any]]]
"""A data file's `(where, record)` pairs (`storage.record_files.read_records`)."""


def load_benchmark(ref: BenchmarkRef, data_dir: Path | str | None,
                   hub_mirror: Path | str | None = None, read_records: RecordReader | None = None) -> LoadedBenchmark:
    """Problems and exclusions of `ref.name`/`ref.split`, subset by `ref.limit` (exclusions in full).

    `ref.source`: `local` reads the original files under `data_dir`; `hub` loads through `datasets`
    (from `hub_mirror` when given, see `distill.benchmarks.hub`). `arith` is generated from
    `ref.difficulty`, `ref.size` and `ref.seed` and needs neither. Raises BenchmarkError naming the
    file and line or record of any problem.

    `name: file` reads `ref.path` through `read_records` (files are storage's business; callers
    pass `storage.record_files.read_records`, as `tasks.jobs.benchmarks.load_problems` does), or the
    Hub dataset `ref.repo`.
    """
    if ref.name == "file":
        loaded = _load_file(ref, hub_mirror, read_records)
        return loaded._replace(problems=select_subset(loaded.problems, ref.limit, ref.seed))
    splits = BENCHMARK_SPLITS.get(ref.name)
    if splits is None:
        raise BenchmarkError(f"unknown benchmark {ref.name!r}; known: {', '.join(BENCHMARK_SPLITS)}")
    if ref.split not in splits:
        raise BenchmarkError(f"{ref.name} has no split {ref.split!r}; known: {', '.join(splits)}")
    if ref.name == "arith":
        loaded = arith.load(ref.split, ref.difficulty, ref.size, ref.seed)
    elif ref.source == "hub":
        loaded = hub.load(ref.name, ref.split, Path(hub_mirror) if hub_mirror else None)
    elif data_dir is None:
        raise BenchmarkError(f"{ref.name} needs the data folder (SIKED_DATA_DIR or data_dir)")
    elif ref.name in dss.TASKS:
        loaded = dss.load(ref.name, Path(data_dir), ref.split)
    else:
        loaded = _LOCAL[ref.name](Path(data_dir), ref.split)
    return loaded._replace(problems=select_subset(loaded.problems, ref.limit, ref.seed))


def _load_file(ref: BenchmarkRef, hub_mirror: Path | str | None, read_records: RecordReader | None) -> LoadedBenchmark:
    if ref.source == "hub":
        rows = hub.dataset_rows(ref.repo, ref.config, ref.split, Path(hub_mirror) if hub_mirror else None)
        source = f"hf:{ref.repo}" + (f"/{ref.config}" if ref.config else "") + f":{ref.split}"
        return file.parse_records(((f"{source}: row {i}", row) for i, row in enumerate(rows)), ref, source)
    if read_records is None:
        raise BenchmarkError(f"{ref.path}: a file benchmark is read through a record reader "
                             "(storage.record_files.read_records); none was given")
    try:
        return file.parse_records(read_records(ref.path), ref, ref.path)
    except BenchmarkError:
        raise
    except (OSError, ValueError) as exc:  # storage's RecordFileError, an unreachable URL
        raise BenchmarkError(str(exc) if ref.path in str(exc) else f"{ref.path}: {exc}") from exc
