"""Malformed benchmark files fail with an error naming the file and the line or record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.benchmarks import BenchmarkError, load_benchmark, load_rationales
from distill.config import BenchmarkRef


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(root: Path, name: str, split: str = "test"):
    return load_benchmark(BenchmarkRef(name=name, split=split), root)


GOOD_GSM8K = json.dumps({"question": "1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"})


def test_gsm8k_invalid_json_names_file_and_line(tmp_path):
    lines = [GOOD_GSM8K] * 16 + ['{"question": "broken", "answer": '] + [GOOD_GSM8K]
    write(tmp_path, "gsm8k/train.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(BenchmarkError, match=r"gsm8k/train\.jsonl: invalid JSON on line 17"):
        load(tmp_path, "gsm8k", "train")


def test_gsm8k_missing_key_names_the_line(tmp_path):
    lines = [GOOD_GSM8K, GOOD_GSM8K, json.dumps({"question": "no answer"})]
    write(tmp_path, "gsm8k/test.jsonl", "\n".join(lines))
    with pytest.raises(BenchmarkError, match=r"test\.jsonl: line 3: missing key 'answer'"):
        load(tmp_path, "gsm8k")


def test_gsm8k_answer_without_hashes(tmp_path):
    write(tmp_path, "gsm8k/test.jsonl", json.dumps({"question": "q", "answer": "just prose"}))
    with pytest.raises(BenchmarkError, match=r"line 1: the answer has no '#### <number>' line"):
        load(tmp_path, "gsm8k")


def test_gsm8k_blank_lines_keep_line_numbers_and_bad_gold_is_excluded(tmp_path):
    odd = json.dumps({"question": "Which?", "answer": "It is\n#### blue"})
    write(tmp_path, "gsm8k/test.jsonl", f"{GOOD_GSM8K}\n\n{odd}\n{GOOD_GSM8K}\n")
    problems, exclusions, _ = load(tmp_path, "gsm8k")
    assert [p.id for p in problems] == ["gsm8k/test/0", "gsm8k/test/3"]  # 0-based line index
    assert [(e.id, e.reason, e.answer_text) for e in exclusions] == [("gsm8k/test/2", "not_a_number", "blue")]
    assert problems[0].reference == "1 + 1 = 2"


def test_svamp_missing_key_names_the_record(tmp_path):
    record = {"ID": "chal-1", "Body": "b", "Question": "q?", "Equation": "( 1.0 + 1.0 )", "Answer": 2.0}
    broken = {k: v for k, v in record.items() if k != "Answer"}
    write(tmp_path, "svamp/SVAMP.json", json.dumps([record, record | {"ID": "chal-2"}, broken]))
    with pytest.raises(BenchmarkError, match=r"SVAMP\.json: record 3 \(of 3\): missing key 'Answer'"):
        load(tmp_path, "svamp")


def test_svamp_invalid_json_and_wrong_top_level(tmp_path):
    write(tmp_path, "svamp/SVAMP.json", '[\n {"ID": "chal-1"},\n {"ID": }\n]')
    with pytest.raises(BenchmarkError, match=r"SVAMP\.json: invalid JSON on line 3"):
        load(tmp_path, "svamp")
    write(tmp_path, "svamp/SVAMP.json", '{"ID": "chal-1"}')
    with pytest.raises(BenchmarkError, match="expected a JSON array"):
        load(tmp_path, "svamp")


def test_multiarith_wrong_type_names_the_record(tmp_path):
    record = {"iIndex": 0, "sQuestion": "q", "lEquations": ["X=(1+1)"], "lSolutions": [2.0]}
    write(tmp_path, "multiarith/MultiArith.json", json.dumps([record, record | {"iIndex": "one"}]))
    with pytest.raises(BenchmarkError, match=r"record 2 \(of 2\): key 'iIndex' should be int, found str"):
        load(tmp_path, "multiarith")


ASDIV_PROBLEM = """<Problem ID="nluds-{n:04d}" Grade="1" Source="x">
  <Body>Seven red apples and two green apples are in the basket.</Body>
  <Question>How many apples are in the basket?</Question>
  <Solution-Type>Addition</Solution-Type>
  {answer}
  <Formula>7+2=9</Formula>
</Problem>"""


def asdiv_xml(*answers: str) -> str:
    problems = "\n".join(ASDIV_PROBLEM.format(n=n, answer=a) for n, a in enumerate(answers, start=1))
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<Machine-Reading-Corpus-File>\n<ProblemSet>\n' \
           f'{problems}\n</ProblemSet>\n</Machine-Reading-Corpus-File>\n'


def test_asdiv_missing_answer_names_the_problem(tmp_path):
    write(tmp_path, "asdiv/ASDiv.xml", asdiv_xml("<Answer>9 (apples)</Answer>", ""))
    with pytest.raises(BenchmarkError, match=r"ASDiv\.xml: <Problem> 2 \(ID nluds-0002\): missing <Answer>"):
        load(tmp_path, "asdiv")


def test_asdiv_malformed_xml_names_the_line(tmp_path):
    text = asdiv_xml("<Answer>9 (apples)</Answer>").replace("<Formula>7+2=9</Formula>", "<Formula>7+2=9")
    write(tmp_path, "asdiv/ASDiv.xml", text)
    with pytest.raises(BenchmarkError, match=r"ASDiv\.xml: malformed XML at line 1\d"):
        load(tmp_path, "asdiv")


def test_asdiv_exclusions_are_counted_with_reasons(tmp_path):
    write(tmp_path, "asdiv/ASDiv.xml", asdiv_xml(
        "<Answer>9 (apples)</Answer>", "<Answer>3:30 p.m.</Answer>", "<Answer>4; 5</Answer>",
        "<Answer>Yes</Answer>", "<Answer>$1,234.50</Answer>"))
    loaded = load(tmp_path, "asdiv")
    assert [p.answer for p in loaded.problems] == [9.0, 1234.5]
    assert loaded.excluded_reasons() == {"multiple_values": 1, "not_a_number": 1, "time_of_day": 1}


def asdiv_a_folder(root: Path, *folds: str) -> None:
    """An ASDiv.xml of five problems (the third excluded) and ASDiv-A folds listing `folds`."""
    write(root, "asdiv/ASDiv.xml", asdiv_xml(*(f"<Answer>{a}</Answer>" for a in
                                               ("9 (apples)", "4 (pens)", "4; 5", "7", "Yes"))))
    for k, text in enumerate(folds):
        write(root, f"asdiv/nfolds/asdiv-a/fold{k}.txt", text)


def test_asdiv_arithmetic_keeps_the_listed_problems_and_their_exclusions(tmp_path):
    asdiv_a_folder(tmp_path, "nluds-0004\nnluds-0001\n", "\n", "nluds-0003\n", "", " nluds-0002 \n")
    loaded = load(tmp_path, "asdiv", "arithmetic")
    assert [(p.id, p.answer) for p in loaded.problems] == [("asdiv/test/nluds-0001", 9.0),
                                                           ("asdiv/test/nluds-0002", 4.0),
                                                           ("asdiv/test/nluds-0004", 7.0)]
    assert [(e.id, e.reason) for e in loaded.exclusions] == [("asdiv/test/nluds-0003", "multiple_values")]
    whole = load(tmp_path, "asdiv")  # nluds-0005 (`Yes`), not listed, is excluded from the whole set only
    assert loaded.problems == whole.problems
    assert [e.id for e in whole.exclusions] == ["asdiv/test/nluds-0003", "asdiv/test/nluds-0005"]


def test_asdiv_arithmetic_missing_fold_file_is_named(tmp_path):
    asdiv_a_folder(tmp_path, "nluds-0001\n", "nluds-0002\n", "nluds-0003\n", "nluds-0004\n", "nluds-0005\n")
    (tmp_path / "asdiv/nfolds/asdiv-a/fold3.txt").unlink()
    with pytest.raises(BenchmarkError, match=r"asdiv/nfolds/asdiv-a/fold3\.txt: file not found"):
        load(tmp_path, "asdiv", "arithmetic")
    assert len(load(tmp_path, "asdiv").problems) == 3  # the whole set does not read the folds


def test_asdiv_arithmetic_unknown_or_repeated_id_names_the_fold_and_line(tmp_path):
    asdiv_a_folder(tmp_path, "nluds-0001\n", "nluds-0002\n", "nluds-0003\nnluds-0009\n", "", "")
    with pytest.raises(BenchmarkError, match=r"fold2\.txt: line 2: nluds-0009 is not a problem of asdiv/ASDiv\.xml"):
        load(tmp_path, "asdiv", "arithmetic")
    asdiv_a_folder(tmp_path, "nluds-0001\n", "nluds-0002\n", "nluds-0003\n", "", "nluds-0004\nnluds-0002\n")
    with pytest.raises(BenchmarkError, match=r"fold4\.txt: line 2: nluds-0002 is listed twice "
                                             r"\(first at .*fold1\.txt: line 1\)"):
        load(tmp_path, "asdiv", "arithmetic")


def test_dss_svamp_label_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    label = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    lines = [json.dumps({"input": "a\nb?", "label": "( 84.0 / 2.0 )"}), json.dumps({"input": "c", "label": label})]
    write(tmp_path, "distilling_step_by_step/svamp/svamp_train.json", "\n".join(lines))
    with pytest.raises(BenchmarkError, match=r"svamp_train\.json: line 2: label .* is not an arithmetic"):
        load(tmp_path, "dss_svamp", "train")
    assert not marker.exists()
    for bad in ("2 ** 3", "( 1.0 / 0.0 )", "x + 1", "[1][0]"):
        write(tmp_path, "distilling_step_by_step/svamp/svamp_train.json", json.dumps({"input": "q", "label": bad}))
        with pytest.raises(BenchmarkError, match="line 1"):
            load(tmp_path, "dss_svamp", "train")


def test_dss_cqa_answer_must_be_a_choice(tmp_path):
    record = {"id": "abc", "question": "q?", "choices": list("vwxyz"), "answer": "nope"}
    write(tmp_path, "distilling_step_by_step/cqa/cqa_test.json", json.dumps(record))
    with pytest.raises(BenchmarkError, match=r"cqa_test\.json: line 1: answer 'nope' is not one of the choices"):
        load(tmp_path, "dss_cqa")


def test_rationale_count_must_match_problems(tmp_path):
    lines = [json.dumps({"input": f"q{i}", "label": f"( {i}.0 + 1.0 )"}) for i in range(3)]
    write(tmp_path, "distilling_step_by_step/svamp/svamp_test.json", "\n".join(lines))
    completions = ["So 0 + 1 = 1. The answer is (0 + 1).\n\nQ: next", "No marker here.\n\nQ: x"]
    write(tmp_path, "distilling_step_by_step/svamp/llm/test_CoT_0.json", json.dumps(completions))
    with pytest.raises(BenchmarkError, match="2 test completions for 3 problems"):
        load_rationales("dss_svamp", "test", tmp_path)
    write(tmp_path, "distilling_step_by_step/svamp/llm/test_CoT_0.json", json.dumps(completions + ["x"]))
    rationales = load_rationales("dss_svamp", "test", tmp_path)
    assert rationales["dss_svamp/test/0"].label == "(0 + 1)"
    assert rationales["dss_svamp/test/1"].rationale is None  # no "The answer is": as the official ' '


def test_missing_file_is_named(tmp_path):
    with pytest.raises(BenchmarkError, match=r"multiarith/MultiArith\.json: file not found"):
        load(tmp_path, "multiarith")
