"""Loading a benchmark reference with everything it needs found: the one way every step, the plan,
`siked data list` and `siked train` load problems.

`distill.benchmarks.load_benchmark` is the method's loader and reads no paths of its own choosing;
this module supplies them: the data folder (config value or SIKED_DATA_DIR) for the built-in sets,
storage's record reader for `name: file`, and the Hub mirror folder (SIKED_HUB_MIRROR) for
`source: hub`.

    loaded = load_problems(cfg.train_data, cfg.data_dir)
"""

from __future__ import annotations

import functools
import os
from typing import Any

from distill.benchmarks import LoadedBenchmark, load_benchmark
from distill.config import BenchmarkRef
from storage import fs
from storage.paths import DataDirMissing, data_dir
from storage.record_files import read_records


def hub_mirror() -> str | None:
    """A folder of local copies of Hub datasets, for machines that cannot reach the Hub."""
    return os.environ.get("SIKED_HUB_MIRROR") or None


def load_problems(ref: BenchmarkRef, configured_data_dir: str | None = None) -> LoadedBenchmark:
    """Problems and exclusions of `ref`; BenchmarkError or DataDirMissing say what is missing."""
    folder = data_dir(configured_data_dir) if ref.reads_data_folder else None
    return load_benchmark(ref, folder, hub_mirror=hub_mirror(), read_records=read_records)


def data_available(ref: BenchmarkRef, configured_data_dir: str | None) -> bool:
    """Whether what `ref` reads from disk is there: the data folder, or a file benchmark's file."""
    if ref.name == "file" and ref.source == "local":
        return fs.exists(ref.path)
    if not ref.reads_data_folder:
        return True
    try:
        data_dir(configured_data_dir)
    except DataDirMissing:
        return False
    return True


def content_key(ref: BenchmarkRef) -> dict[str, Any]:
    """What of a file benchmark's file enters the key of the step that freezes it: the sha256 of its
    bytes (beside its path, which the key holds too), so an edited file is read again. Empty for
    every other reference (their files are the published datasets, fixed by name)."""
    if ref.name != "file" or ref.source != "local" or not fs.exists(ref.path):
        return {}
    return {"file_sha256": file_content_hash(ref.path)}


def file_content_hash(path: str) -> str | None:
    """sha256 of the file at `path` (None when there is none), hashed once per size and time."""
    if not fs.exists(path):
        return None
    filesystem, inner = fs.resolve(path)
    info = filesystem.info(inner)
    return _sha256(path, info.get("size"), str(info.get("mtime") or info.get("LastModified")))


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: Any, modified: str) -> str:
    """The file's sha256, hashed once per (path, size, modification time) in a process: plans are
    made many times in a run."""
    return fs.sha256_file(path)
