"""Benchmark loaders on the real files of the data folder: counts, ids, gold answers, subsets,
the released PaLM rationales, and `siked data list --json`."""

from __future__ import annotations

import json
import math

import pytest

from distill.benchmarks import BENCHMARK_SPLITS, load_benchmark, load_rationales, select_subset
from distill.config import BenchmarkRef
from flows.cli import main

EXPECTED = {  # (benchmark, split): (loaded, excluded)
    ("gsm8k", "train"): (7473, 0),
    ("gsm8k", "test"): (1319, 0),
    ("svamp", "test"): (1000, 0),
    ("asdiv", "test"): (2093, 212),
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
    assert all(i.startswith(f"{name}/{split}/") for i in ids)
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
