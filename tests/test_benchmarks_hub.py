"""source=hub: the `datasets` code path, run for real on local mirrors of the Hub repositories.

The Hub cannot be reached here, so each test writes a small copy of a Hub dataset's repository
(Parquet files and the README's config block, as on the Hub) built from rows of the real files, and
`datasets.load_dataset` reads it. Without a mirror, loading must fail with an error, not succeed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from distill.benchmarks import BenchmarkError, load_benchmark
from distill.benchmarks.hub import HubUnreachable
from distill.config import BenchmarkRef
from flows.cli import main


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def readme(repo: Path, config: str, splits: dict[str, str], default: bool = False) -> None:
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, pattern in splits.items():
        lines += [f"  - split: {split}", f"    path: {pattern}"]
    if default:
        lines.append("  default: true")
    (repo / "README.md").write_text("\n".join(lines + ["---", ""]), encoding="utf-8")


@pytest.fixture
def mirror(tmp_path, data_dir) -> Path:
    """Copies of openai/gsm8k, ChilleD/SVAMP, EleutherAI/asdiv and ChilleD/MultiArith, a few rows each."""
    root = tmp_path / "mirror"
    gsm8k = root / "openai" / "gsm8k"
    for split in ("train", "test"):
        lines = (data_dir / "gsm8k" / f"{split}.jsonl").read_text().splitlines()[:5]
        parquet(gsm8k / "main" / f"{split}-00000-of-00001.parquet", [json.loads(line) for line in lines])
    readme(gsm8k, "main", {"train": "main/train-*", "test": "main/test-*"})

    svamp = json.loads((data_dir / "svamp" / "SVAMP.json").read_text())[:5]
    for record in svamp:
        record["question_concat"] = f"{record['Body']} {record['Question']}"
    parquet(root / "ChilleD" / "SVAMP" / "data" / "train-00000-of-00001.parquet", svamp[:3])
    parquet(root / "ChilleD" / "SVAMP" / "data" / "test-00000-of-00001.parquet", svamp[3:])

    xml = ET.parse(data_dir / "asdiv" / "ASDiv.xml").getroot()
    wanted = {"nluds-0001", "nluds-0002", "nluds-0851", "nluds-1295"}  # two numbers, a ratio, two values
    rows = [{"body": p.findtext("Body"), "question": p.findtext("Question"),
             "solution_type": p.findtext("Solution-Type"), "answer": p.findtext("Answer"),
             "formula": p.findtext("Formula")} for p in xml.iter("Problem") if p.get("ID") in wanted]
    asdiv = root / "EleutherAI" / "asdiv"
    parquet(asdiv / "asdiv" / "validation-00000-of-00001.parquet", rows)
    readme(asdiv, "asdiv", {"validation": "asdiv/validation-*"}, default=True)

    multiarith = json.loads((data_dir / "multiarith" / "MultiArith.json").read_text())[:4]
    rows = [{"question": r["sQuestion"].strip(), "final_ans": str(int(r["lSolutions"][0]))} for r in multiarith]
    parquet(root / "ChilleD" / "MultiArith" / "data" / "train-00000-of-00001.parquet", rows[:3])
    parquet(root / "ChilleD" / "MultiArith" / "data" / "test-00000-of-00001.parquet", rows[3:])
    return root


def hub(name: str, split: str, mirror: Path | None):
    return load_benchmark(BenchmarkRef(name=name, split=split, source="hub"), None, hub_mirror=mirror)


def local(name: str, split: str, data_dir: Path):
    return load_benchmark(BenchmarkRef(name=name, split=split), data_dir)


def test_gsm8k_from_the_hub_matches_the_local_file(mirror, data_dir):
    for split in ("train", "test"):
        loaded = hub("gsm8k", split, mirror)
        assert loaded.source == f"hf:openai/gsm8k/main:{split}"
        expected = local("gsm8k", split, data_dir).problems[:5]
        assert [p.id for p in loaded.problems] == [p.id for p in expected]
        assert [p.source for p in loaded.problems] == [loaded.source] * 5
        for got, want in zip(loaded.problems, expected):
            assert (got.question, got.answer, got.answer_text, got.reference) == \
                   (want.question, want.answer, want.answer_text, want.reference)


def test_svamp_joins_both_hub_splits_and_keeps_native_ids(mirror, data_dir):
    loaded = hub("svamp", "test", mirror)
    expected = local("svamp", "test", data_dir).problems[:5]
    assert [p.id for p in loaded.problems] == [f"svamp/test/chal-{n}" for n in range(1, 6)]
    assert [(p.question, p.answer) for p in loaded.problems] == [(p.question, p.answer) for p in expected]
    assert loaded.source == "hf:ChilleD/SVAMP:train + hf:ChilleD/SVAMP:test"


def test_asdiv_from_the_hub_parses_and_excludes_like_local(mirror):
    problems, exclusions, _ = hub("asdiv", "test", mirror)
    assert [(p.id, p.answer) for p in problems] == [("asdiv/test/validation-0", 9.0),
                                                    ("asdiv/test/validation-1", 15.0)]
    assert [(e.id, e.reason) for e in exclusions] == [("asdiv/test/validation-2", "ratio"),
                                                      ("asdiv/test/validation-3", "multiple_values")]


def test_multiarith_from_the_hub(mirror, data_dir):
    problems = hub("multiarith", "test", mirror).problems
    assert [p.id for p in problems] == ["multiarith/test/train-0", "multiarith/test/train-1",
                                        "multiarith/test/train-2", "multiarith/test/test-0"]
    expected = local("multiarith", "test", data_dir).problems[:4]
    assert [(p.question, p.answer) for p in problems] == [(p.question, p.answer) for p in expected]


def test_limit_applies_to_hub_problems(mirror):
    ref = BenchmarkRef(name="gsm8k", split="train", source="hub", limit=2, seed=1)
    assert len(load_benchmark(ref, None, hub_mirror=mirror).problems) == 2


def test_a_wrong_hub_layout_is_an_error_naming_the_dataset(tmp_path):
    parquet(tmp_path / "openai" / "gsm8k" / "main" / "train-00000-of-00001.parquet", [{"text": "no question"}])
    readme(tmp_path / "openai" / "gsm8k", "main", {"train": "main/train-*"})
    with pytest.raises(BenchmarkError, match=r"hf:openai/gsm8k/main:train: row 0: missing key 'question'"):
        hub("gsm8k", "train", tmp_path)
    with pytest.raises(BenchmarkError, match=r"could not load openai/gsm8k \(split test\)"):
        hub("gsm8k", "test", tmp_path)


def test_unreachable_hub_fails_instead_of_pretending(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable, match="could not load ChilleD/MultiArith"):
        hub("multiarith", "test", None)


def test_dss_sets_have_no_hub_copy(mirror):
    with pytest.raises(BenchmarkError, match="no Hugging Face Hub copy"):
        hub("dss_svamp", "train", mirror)


def test_data_list_from_a_hub_mirror(mirror, monkeypatch, capsys):
    monkeypatch.setenv("SIKED_HUB_MIRROR", str(mirror))
    assert main(["data", "list", "--json", "--source", "hub"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {(r["benchmark"], r["split"]): (r["loaded"], r["excluded"]) for r in report["benchmarks"]}
    assert rows == {("gsm8k", "train"): (5, 0), ("gsm8k", "test"): (5, 0), ("svamp", "test"): (5, 0),
                    ("asdiv", "test"): (2, 2), ("multiarith", "test"): (4, 0),
                    ("arith", "train"): (200, 0), ("arith", "test"): (200, 0)}


def test_data_list_with_the_hub_unreachable(monkeypatch, capsys):
    monkeypatch.delenv("SIKED_HUB_MIRROR", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert main(["data", "list", "--json", "--source", "hub"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(r["benchmark"], r["split"]) for r in report["benchmarks"]] == [("arith", "train"), ("arith", "test")]
    assert report["errors"][0].startswith("gsm8k train: could not load openai/gsm8k")
    assert len(report["errors"]) == 5 and all("skipped" in e for e in report["errors"][1:])
