"""`siked data list`: how many problems each benchmark split loads and excludes, and why.

    siked data list --json                 # local files under $SIKED_DATA_DIR
    siked data list --source hub --json    # the Hugging Face Hub (or $SIKED_HUB_MIRROR, a local copy)
    siked data list configs/my_data.yaml   # the sets a config names: its own files too

With a config, the sets listed are its `train_data` and `eval.benchmarks`, whatever their kind; a
file benchmark's excluded records are listed with file, line or record, and reason. A set of which
not one record is usable is listed under "unusable" with the reason (the field that matched
nothing), and the command exits 2, as `siked run` would refuse the config.

`arith` is listed with its default settings (difficulty, size and seed of `BenchmarkRef`). A split
that fails to load is reported under "errors" and the others are still listed; once the Hub proves
unreachable, the remaining Hub splits are reported as skipped instead of each waiting out its retries.
"""

from __future__ import annotations

import os
from typing import Any

from distill.benchmarks import BENCHMARK_SPLITS, BenchmarkError, LoadedBenchmark, load_benchmark
from distill.benchmarks.hub import HUB, HubUnreachable
from distill.config import BenchmarkRef, RunConfig
from storage.paths import DataDirMissing
from storage.paths import data_dir as resolve_data_dir


def list_benchmarks(data_dir: str | None, source: str) -> dict[str, Any]:
    """{"data_dir", "source", "benchmarks": [{"benchmark", "split", "loaded", "excluded",
    "excluded_reasons", "source"}], "errors": [...]}."""
    errors: list[str] = []
    folder = None
    if source == "local":
        try:
            folder = resolve_data_dir(data_dir)
        except DataDirMissing as exc:
            errors.append(str(exc))
    mirror = os.environ.get("SIKED_HUB_MIRROR") or None
    unreachable = None
    rows = []
    for name, splits in BENCHMARK_SPLITS.items():
        if source == "hub" and name not in HUB and name != "arith":
            continue  # the dss_* sets have no Hub copy
        if folder is None and source == "local" and name != "arith":
            continue
        for split in splits:
            if source == "hub" and name in HUB and split not in HUB[name].splits:
                continue  # a split only the local files give (ASDiv-A)
            ref = BenchmarkRef(name=name, split=split, source=source)
            if unreachable and name != "arith":
                errors.append(f"{name} {split}: skipped, the Hub is unreachable ({unreachable})")
                continue
            try:
                loaded = load_benchmark(ref, folder, hub_mirror=mirror)
            except HubUnreachable as exc:
                unreachable = type(exc.__cause__).__name__
                errors.append(f"{name} {split}: {exc}")
                continue
            except (BenchmarkError, OSError) as exc:
                errors.append(f"{name} {split}: {exc}")
                continue
            rows.append(_row(name, split, loaded))
    return {"data_dir": str(folder) if folder else data_dir, "source": source, "benchmarks": rows,
            "errors": errors}


SHOWN_EXCLUSIONS = 20  # a file's excluded records listed one by one; the counts hold them all


def _row(name: str, split: str, loaded: LoadedBenchmark) -> dict[str, Any]:
    row = {"benchmark": name, "split": split, "loaded": len(loaded.problems),
           "excluded": len(loaded.exclusions), "excluded_reasons": loaded.excluded_reasons(),
           "source": loaded.source}
    details = [e.detail for e in loaded.exclusions if e.detail]
    if details:
        row["excluded_records"] = details[:SHOWN_EXCLUSIONS]
    return row


def list_config_benchmarks(cfg: RunConfig) -> dict[str, Any]:
    """The same listing for the sets a config names (`train_data`, then `eval.benchmarks`)."""
    from tasks.jobs.benchmarks import load_problems

    rows, errors, unusable = [], [], []
    for role, ref in [("train_data", cfg.train_data), *(("eval", r) for r in cfg.eval.benchmarks)]:
        try:
            loaded = load_problems(ref, cfg.data_dir)
        except (BenchmarkError, OSError) as exc:
            errors.append(f"{role} {ref.benchmark_name} {ref.split}: {exc}")
            continue
        if why := loaded.why_no_problem():  # a run would refuse it: bad input, not a missing file
            unusable.append(f"{role} {ref.benchmark_name} {ref.split}: {why}")
        label = {"label": ref.eval_label} if role == "eval" else {}  # the name its steps and files go by
        rows.append({"role": role, **label, **_row(ref.benchmark_name, ref.split, loaded)})
    return {"data_dir": cfg.data_dir or os.environ.get("SIKED_DATA_DIR"), "source": "config",
            "benchmarks": rows, "errors": errors, "unusable": unusable}
