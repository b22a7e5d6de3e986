"""Benchmark loaders on the real files of the data folder: counts, ids, gold answers, subsets,
the released PaLM rationales, and `siked data list --json`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from distill.benchmarks import BENCHMARK_SPLITS, load_benchmark, load_rationales, select_subset
from distill.config import BenchmarkRef
from flows.cli import main

REPO = Path(__file__).resolve().parents[1]

EXPECTED = {  # (benchmark, split): (loaded, excluded)
    ("gsm8k", "train"): (7473, 0),
    ("gsm8k", "test"): (1319, 0),
    ("svamp", "test"): (1000, 0),
    ("asdiv", "test"): (2093, 212),
    ("asdiv", "arithmetic"): (1218, 0),
    ("multiarith", "test"): (600, 0),
    ("dss_svamp", "train"): (800, 0),
    ("dss_svamp", "test"): (200, 0),
    ("dss_cqa", "train"): (9741, 0),
    ("dss_cqa", "test"): (1221, 0),
}


def load(data_dir, name, split, **kwargs):
    return load_benchmark(BenchmarkRef(name=name, split=split, **kwargs), data_dir)


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED))
def test_counts_and_unique_ids(data_dir, name, split):
    problems, exclusions, _ = load(data_dir, name, split)
    assert (len(problems), len(exclusions)) == EXPECTED[(name, split)]
    ids = [p.id for p in problems] + [e.id for e in exclusions]
    assert len(set(ids)) == len(ids)
    id_split = "test" if (name, split) == ("asdiv", "arithmetic") else split  # ASDiv-A keeps test's ids
    assert all(i.startswith(f"{name}/{id_split}/") for i in ids)
    assert all(p.question.strip() == p.question and p.question for p in problems)
    if name != "dss_cqa":
        assert all(math.isfinite(p.answer) for p in problems)


def test_gsm8k_ids_are_line_numbers_and_gold_follows_the_hashes(data_dir):
    problems = load(data_dir, "gsm8k", "train").problems
    first = problems[0]
    assert first.id == "gsm8k/train/0" and first.question.startswith("Natalia sold clips")
    assert first.answer == 72.0 and first.answer_text == "72"
    assert first.reference == ("Natalia sold 48/2 = 24 clips in May.\n"
                               "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert [p.id for p in problems[:8]] == [f"gsm8k/train/{n}" for n in range(8)]
    lines = (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()
    by_id = {p.id: p for p in problems}
    for n in (0, 3365, 7472):  # 0-based line index; 3365 is the first teacher exemplar (dress shirts)
        assert by_id[f"gsm8k/train/{n}"].question == json.loads(lines[n])["question"].strip()
    assert by_id["gsm8k/train/3365"].question.startswith("John buys 3 dress shirts.")
    with_commas = [p for p in problems if "," in p.answer_text]
    assert with_commas and all(p.answer == float(p.answer_text.replace(",", "")) for p in with_commas)
    assert all("<<" not in p.reference for p in problems)
    negatives = [p for p in load(data_dir, "gsm8k", "test").problems if p.answer < 0]
    assert negatives and all(p.answer_text.startswith("-") for p in negatives)


def test_svamp_question_is_body_then_question(data_dir):
    first = load(data_dir, "svamp", "test").problems[0]
    assert first.id == "svamp/test/chal-1"
    assert first.question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on "
                              "each pack How much do you have to pay to buy each pack?")
    assert first.answer == 51.0 and first.reference == "( 76.0 - 25.0 )"


def test_asdiv_units_fractions_and_exclusions(data_dir):
    loaded = load(data_dir, "asdiv", "test")
    by_id = {p.id: p for p in loaded.problems}
    assert len(loaded.problems) + len(loaded.exclusions) == 2305
    assert by_id["asdiv/test/nluds-0001"].answer == 9.0
    assert by_id["asdiv/test/nluds-0001"].answer_text == "9 (apples)"
    assert by_id["asdiv/test/nluds-1008"].answer == 14.0  # "14  (seats)": extra space
    assert by_id["asdiv/test/nluds-0876"].answer == 77.0  # a bare number
    assert by_id["asdiv/test/nluds-1312"].answer == 2.5  # "5/2"
    assert by_id["asdiv/test/nluds-1331"].answer == pytest.approx(-1 / 3)  # "-(1/3)"
    assert loaded.excluded_reasons() == {"multiple_values": 90, "not_a_number": 61, "ratio": 43,
                                         "time_of_day": 18}
    reasons = {e.id: (e.reason, e.answer_text) for e in loaded.exclusions}
    assert reasons["asdiv/test/nluds-0851"] == ("ratio", "3:4")
    assert reasons["asdiv/test/nluds-0166"] == ("time_of_day", "3:30 p.m.")
    assert reasons["asdiv/test/nluds-1295"][0] == "multiple_values"
    assert reasons["asdiv/test/nluds-0030"] == ("not_a_number", "Mrs. Hilt")


def asdiv_a_ids(data_dir) -> list[list[str]]:
    """The ids each ASDiv-A fold file lists, read here independently of the loader."""
    folds = [(data_dir / "asdiv" / "nfolds" / "asdiv-a" / f"fold{k}.txt").read_text().split() for k in range(5)]
    return [[f"asdiv/test/{native_id}" for native_id in fold] for fold in folds]


def test_asdiv_arithmetic_is_asdiv_a_picked_from_the_whole_set(data_dir):
    folds = asdiv_a_ids(data_dir)
    assert [len(fold) for fold in folds] == [238, 238, 238, 238, 266]
    listed = [i for fold in folds for i in fold]
    subset = load(data_dir, "asdiv", "arithmetic")
    whole = load(data_dir, "asdiv", "test")
    ids = [p.id for p in subset.problems] + [e.id for e in subset.exclusions]
    assert len(ids) == len(set(listed)) == len(listed) == 1218
    assert set(ids) == set(listed)
    # The same Problems, ids and every field included, in the whole set's order.
    assert subset.problems == [p for p in whole.problems if p.id in set(listed)]
    assert all(p.split == "test" and p.source == "asdiv/ASDiv.xml" for p in subset.problems)
    assert subset.source == "asdiv/ASDiv.xml, ASDiv-A ids from asdiv/nfolds/asdiv-a/fold{0..4}.txt"
    # Exclusions: those of the whole set in ASDiv-A, with their reasons; there are none.
    assert subset.exclusions == [e for e in whole.exclusions if e.id in set(listed)] == []
    assert subset.excluded_reasons() == {}
    # The 9 answers of ASDiv-A not written `<number> (<unit>)` (asdiv/README.md): bare numbers and
    # one extra space. All parse, so none is excluded.
    unusual = {p.id.removeprefix("asdiv/test/"): (p.answer_text, p.answer) for p in subset.problems
               if not re.fullmatch(r"\S+ \([^()]*\)", p.answer_text)}
    assert unusual == {"nluds-0876": ("77", 77.0), "nluds-0877": ("26", 26.0), "nluds-0962": ("35", 35.0),
                       "nluds-1008": ("14  (seats)", 14.0), "nluds-1038": ("70", 70.0),
                       "nluds-1039": ("47", 47.0), "nluds-1254": ("3", 3.0), "nluds-1255": ("2", 2.0),
                       "nluds-1256": ("2", 2.0)}
    # A limit subset of ASDiv-A is drawn from ASDiv-A, ids kept.
    few = load(data_dir, "asdiv", "arithmetic", limit=50, seed=1).problems
    assert len(few) == 50 and set(few) <= set(subset.problems)


def test_asdiv_arithmetic_is_local_only(data_dir):
    from distill.benchmarks import BenchmarkError

    with pytest.raises(BenchmarkError, match=r"asdiv split 'arithmetic' loads from the local files only"):
        load_benchmark(BenchmarkRef(name="asdiv", split="arithmetic", source="hub"), data_dir)


def test_a_config_evaluating_asdiv_a_plans(data_dir, tmp_path, capsys, monkeypatch):
    """`siked plan` with both ASDiv sets: each its own problems step, the subset counted in full."""
    from distill.config import load_config

    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    quickstart = str(REPO / "configs" / "quickstart.yaml")
    overrides = [f"runs_root={tmp_path}",
                 "eval.benchmarks=[{name: asdiv, split: test}, {name: asdiv, split: arithmetic}]"]
    assert main(["plan", quickstart, *overrides, "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {r["step"]: r for r in json.loads(out)}
    test_set, subset = rows["problems/eval-asdiv-test"], rows["problems/eval-asdiv-arithmetic"]
    assert test_set["action"] == subset["action"] == "run" and test_set["key"] != subset["key"]
    modes = len(load_config(Path(quickstart).read_text(), overrides).eval.modes)
    evaluations = sum(r["kind"] == "evaluate" for r in rows.values())  # each trained student evaluates both
    assert f"{(2093 + 1218) * modes * evaluations} evaluation questions" in err.splitlines()[-1]
    assert main(["data", "list", "--json", quickstart, *overrides]) == 0
    listed = json.loads(capsys.readouterr().out)["benchmarks"]
    assert [(r["label"], r["loaded"], r["excluded"]) for r in listed if r["role"] == "eval"] == [
        ("asdiv-test", 2093, 212), ("asdiv-arithmetic", 1218, 0)]


def test_multiarith_ids_and_gold(data_dir):
    problems = load(data_dir, "multiarith", "test").problems
    assert problems[0].id == "multiarith/test/0" and problems[0].answer == 39.0
    assert problems[0].question.startswith("For Halloween Debby")
    assert problems[0].answer_text == "39"


def test_dss_svamp_label_is_evaluated(data_dir):
    first = load(data_dir, "dss_svamp", "train").problems[0]
    assert first.id == "dss_svamp/train/0"
    assert first.answer_text == "( 84.0 / 2.0 )" and first.answer == 42.0
    # The DSS split is a permutation of SVAMP: every evaluated label matches the original's answer,
    # except chal-680, whose `Answer` (1.0) in SVAMP.json disagrees with its own equation (4 - 2 + 3).
    original = {p.question: p for p in load(data_dir, "svamp", "test").problems}
    mismatched = []
    for split in ("train", "test"):
        for p in load(data_dir, "dss_svamp", split).problems:
            twin = original[p.question.replace("\n", " ")]
            if twin.answer != pytest.approx(p.answer):
                mismatched.append((twin.id, twin.answer, p.answer))
    assert mismatched == [("svamp/test/chal-680", 1.0, 5.0)]


def test_dss_cqa_is_multiple_choice(data_dir):
    first = load(data_dir, "dss_cqa", "train").problems[0]
    assert first.id == "dss_cqa/train/6b819727eb8a670df26a7ffad036c119"
    assert math.isnan(first.answer) and not first.is_numeric
    assert first.answer_text == "math problem"
    assert first.question.endswith("Answer Choices:\n(a) park\n(b) coloring book\n(c) garden center\n"
                                   "(d) math problem\n(e) gravity")


@pytest.mark.parametrize(("name", "split", "with_rationale"), [
    ("dss_svamp", "train", 789), ("dss_svamp", "test", 198), ("dss_cqa", "train", 9741), ("dss_cqa", "test", 1221),
])
def test_rationales_keyed_by_problem_id(data_dir, name, split, with_rationale):
    problems = load(data_dir, name, split).problems
    rationales = load_rationales(name, split, data_dir)
    assert list(rationales) == [p.id for p in problems]
    assert sum(r.rationale is not None for r in rationales.values()) == with_rationale


def test_rationale_parsing_follows_the_official_loader(data_dir):
    svamp = load_rationales("dss_svamp", "train", data_dir)["dss_svamp/train/0"]
    assert svamp.rationale == ("Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. "
                               "84 / 2 = 42.")
    assert svamp.label == "(84 / 2)" and svamp.raw.startswith(svamp.rationale)
    assert svamp.source == "distilling_step_by_step/svamp/llm/train_CoT_0.json[0]"
    cqa = load_rationales("dss_cqa", "train", data_dir)
    first = cqa["dss_cqa/train/6b819727eb8a670df26a7ffad036c119"]
    assert first.label == "math problem" and "Q:" not in first.rationale
    # Example 1000 of train is element 0 of the second file.
    problem_1001 = load(data_dir, "dss_cqa", "train").problems[1000]
    assert cqa[problem_1001.id].source.endswith("train_CoT_1.json[0]")


def test_subset_is_stable_and_seeded(data_dir):
    full = load(data_dir, "gsm8k", "test").problems
    first = load(data_dir, "gsm8k", "test", limit=50, seed=3).problems
    again = load(data_dir, "gsm8k", "test", limit=50, seed=3).problems
    other_seed = load(data_dir, "gsm8k", "test", limit=50, seed=4).problems
    larger = load(data_dir, "gsm8k", "test", limit=80, seed=3).problems
    assert first == again and len(first) == 50
    assert {p.id for p in first} != {p.id for p in other_seed}
    assert larger[:50] == first  # a larger limit extends the subset
    assert first != full[:50]  # shuffled, not the head of the file
    assert set(first) <= set(full)  # problems unchanged, ids kept
    # The subset depends on ids and seed only, not on the order the problems came in.
    assert select_subset(list(reversed(full)), 50, 3) == first
    assert select_subset(full, None, 3) == full


def test_unknown_split_and_missing_data_dir(data_dir):
    from distill.benchmarks import BenchmarkError

    with pytest.raises(BenchmarkError, match="no split 'train'"):
        load(data_dir, "svamp", "train")
    with pytest.raises(BenchmarkError, match="data folder"):
        load_benchmark(BenchmarkRef(name="gsm8k", split="test"), None)


def test_data_list_json_counts(data_dir, capsys):
    assert main(["data", "list", "--json", "--data-dir", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == []
    rows = {(r["benchmark"], r["split"]): r for r in report["benchmarks"]}
    expected_rows = {(name, split) for name, splits in BENCHMARK_SPLITS.items() for split in splits}
    assert set(rows) == expected_rows
    for key, (loaded, excluded) in EXPECTED.items():
        assert (rows[key]["loaded"], rows[key]["excluded"]) == (loaded, excluded), key
    assert sum(rows[("asdiv", "test")]["excluded_reasons"].values()) == 212
    assert rows[("gsm8k", "train")]["source"] == "gsm8k/train.jsonl"
    assert rows[("arith", "train")]["loaded"] == BenchmarkRef().size  # arith with its defaults
    assert rows[("arith", "test")]["loaded"] == BenchmarkRef().size


def test_data_list_without_data_folder_reports_an_error(tmp_path, capsys):
    assert main(["data", "list", "--json", "--data-dir", str(tmp_path / "absent")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "does not exist" in report["errors"][0]
    assert {r["benchmark"] for r in report["benchmarks"]} == {"arith"}
