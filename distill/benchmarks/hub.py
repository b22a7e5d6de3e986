"""The same benchmarks from the Hugging Face Hub, through `datasets` (the `hub` extra).

| benchmark | Hub dataset | config | our split <- Hub splits |
|---|---|---|---|
| gsm8k | openai/gsm8k | main | train <- train, test <- test |
| svamp | ChilleD/SVAMP | default | test <- train + test (700 + 300 = the 1,000 of SVAMP.json) |
| asdiv | EleutherAI/asdiv | default | test <- validation (2,305) |
| multiarith | ChilleD/MultiArith | default | test <- train + test (420 + 180 = 600) |

Rows go through the same parsing as the local files. Ids match the local ones where the Hub copy
keeps what they are made of: GSM8K rows are in file order (`gsm8k/train/0` is row 0), SVAMP rows keep
`ID`. ASDiv and MultiArith rows have no id of their own, so theirs name the Hub split and row:
`asdiv/test/validation-0`, `multiarith/test/train-17`. The dss_* sets are not on the Hub, nor is ASDiv's
`arithmetic` split (ASDiv-A): it is picked by the ASDiv ids its fold files list, which the Hub rows lack.

`name: file` benchmarks with `source: hub` read any dataset through `dataset_rows`, with the field
mapping of `distill.benchmarks.file`.

`mirror`: a folder holding local copies of the Hub repositories at `<mirror>/<owner>/<name>` (as
`huggingface-cli download --repo-type dataset openai/gsm8k --local-dir <mirror>/openai/gsm8k` leaves
them), for machines that cannot reach the Hub; `datasets.load_dataset` reads them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.benchmarks import asdiv, gsm8k, multiarith, svamp
from distill.benchmarks.records import BenchmarkError, LoadedBenchmark, collect, field


class HubUnreachable(BenchmarkError):
    """The Hub could not be reached at all (offline mode, no network): other datasets will fail too."""


@dataclass(frozen=True)
class HubDataset:
    repo: str
    config: str | None
    splits: dict[str, tuple[str, ...]]
    """Our split -> the Hub splits it is made of, in order."""


HUB = {
    "gsm8k": HubDataset("openai/gsm8k", "main", {"train": ("train",), "test": ("test",)}),
    "svamp": HubDataset("ChilleD/SVAMP", None, {"test": ("train", "test")}),
    "asdiv": HubDataset("EleutherAI/asdiv", None, {"test": ("validation",)}),
    "multiarith": HubDataset("ChilleD/MultiArith", None, {"test": ("train", "test")}),
}

LOCAL_ONLY = {
    ("asdiv", "arithmetic"): "ASDiv-A is picked by the ASDiv ids its fold files list, and the Hub copy's rows "
                             "carry no ids",
}
"""Splits of a benchmark with a Hub copy that only the local files give, and why."""


def dataset_rows(repo: str, config: str | None, hub_split: str, mirror: Path | None) -> Any:
    """The rows of one split of a Hub dataset (or of its copy under `mirror`), as `datasets` loads them."""
    try:
        import datasets
    except ImportError:
        raise BenchmarkError("source=hub needs the `datasets` package (pip install '.[hub]')") from None
    path = repo if mirror is None else str(Path(mirror) / repo)
    where = "the Hugging Face Hub" if mirror is None else path
    try:
        return datasets.load_dataset(path, config, split=hub_split)
    except Exception as exc:  # datasets raises many kinds (connection, offline mode, missing files)
        kind = HubUnreachable if isinstance(exc, ConnectionError) and mirror is None else BenchmarkError
        raise kind(f"could not load {repo} (split {hub_split}) from {where}: "
                   f"{type(exc).__name__}: {exc}") from exc


def _parse(benchmark: str, split: str, hub_split: str, index: int, row: Any, source: str):
    where = f"{source}: row {index}"
    if benchmark == "gsm8k":
        return gsm8k.parse_record(row, split, index, source, where)
    if benchmark == "svamp":
        return svamp.parse_record(row, source, where)
    native_id = f"{hub_split}-{index}"
    if benchmark == "asdiv":
        return asdiv.parse_problem(
            native_id, field(row, "body", where), field(row, "question", where), field(row, "answer", where),
            field(row, "solution_type", where), row.get("formula"), source)
    return multiarith.parse_hub_row(row, f"multiarith/test/{native_id}", source, where)


def load(benchmark: str, split: str, mirror: Path | None = None) -> LoadedBenchmark:
    """A benchmark split from the Hub (or a local mirror of it); BenchmarkError when unreachable."""
    spec = HUB.get(benchmark)
    if spec is None:
        raise BenchmarkError(f"{benchmark} has no Hugging Face Hub copy; use source=local "
                             f"(Hub copies: {', '.join(HUB)})")
    if (benchmark, split) in LOCAL_ONLY:
        raise BenchmarkError(f"{benchmark} split {split!r} loads from the local files only (source: local): "
                             f"{LOCAL_ONLY[benchmark, split]}")
    if split not in spec.splits:
        raise BenchmarkError(f"{benchmark} has no split {split!r} (known: {', '.join(spec.splits)})")
    items, sources = [], []
    for hub_split in spec.splits[split]:
        source = f"hf:{spec.repo}" + (f"/{spec.config}" if spec.config else "") + f":{hub_split}"
        sources.append(source)
        rows = dataset_rows(spec.repo, spec.config, hub_split, mirror)
        items += [_parse(benchmark, split, hub_split, i, row, source) for i, row in enumerate(rows)]
    loaded = collect(items, " + ".join(sources))
    ids = [p.id for p in loaded.problems] + [e.id for e in loaded.exclusions]
    if len(set(ids)) != len(ids):
        raise BenchmarkError(f"{loaded.source}: duplicate problem ids")
    return loaded
