"""The distillation set: first correct sample per (question, strategy), biased sets, counts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from distill.distill_set import (
    BIAS_PRIORITY,
    bias,
    build_distill_set,
    select_correct,
    solution_text,
    summarize,
)
from distill.strategies import EXEMPLARS
from storage.schemas import TRAIN_EXAMPLES

QUESTIONS = {"q1": "How much did John pay?", "q2": "How many tulips?", "q3": "How many turtles?"}


def verified(question_id, strategy, index, verdict, text="Final answer: 1", gold=1.0, **extra):
    row = {"question_id": question_id, "strategy": strategy, "sample_index": index, "text": text,
           "verdict": verdict, "gold": gold, "source": "teacher", "iteration": 0, "model": "teacher-model",
           "finish_reason": "stop"}
    row.update(extra)
    return row


ROWS = [
    verified("q1", "cot", 0, "wrong"),
    verified("q1", "cot", 3, "correct", "3 * 20 = 60.\nFinal answer: 66\nI hope this helps."),
    verified("q1", "cot", 1, "correct", "Second try.\nFinal answer: 66"),
    verified("q1", "pot", 0, "correct", "```python\nanswer = 66\n```"),
    verified("q1", "l2m", 0, "bad_format"),
    verified("q2", "l2m", 2, "correct", "Sub-question 1: x?\nAnswer to sub-question 1: 60\nFinal answer: 60"),
    verified("q2", "pot", 5, "correct", "answer = 60"),
    verified("q2", "cot", 0, "truncated"),
    verified("q3", "cot", 0, "no_answer"),
    verified("q3", "pot", 0, "timeout"),
]


def test_one_correct_sample_per_question_and_strategy_the_first_by_index():
    rows = select_correct(ROWS, QUESTIONS)
    assert [(r["question_id"], r["strategy"], r["sample_index"]) for r in rows] == [
        ("q1", "cot", 1), ("q1", "pot", 0), ("q2", "l2m", 2), ("q2", "pot", 5)]
    assert rows[0]["text"] == "Second try.\nFinal answer: 66"
    assert rows[1]["text"] == "answer = 66"  # the program alone, without fences
    assert rows[0]["question"] == QUESTIONS["q1"] and rows[0]["model"] == "teacher-model"
    table = pa.Table.from_pylist(rows, schema=TRAIN_EXAMPLES)
    assert table.num_rows == 4 and set(rows[0]) == set(TRAIN_EXAMPLES.names)


def test_training_text_has_no_tag_and_nothing_after_the_answer():
    assert solution_text("cot", "[cot]: 3 * 20 = 60.\nFinal answer: 66\nI hope this helps.") == \
        "3 * 20 = 60.\nFinal answer: 66"
    assert solution_text("pot", "[pot]: x = 2\nanswer = x") == "x = 2\nanswer = x"


@pytest.mark.parametrize(("prefer", "expected"), [
    ("cot", {"q1": "cot", "q2": "pot"}),
    ("pot", {"q1": "pot", "q2": "pot"}),
    ("l2m", {"q1": "pot", "q2": "l2m"}),
])
def test_biased_sets_keep_one_row_per_question_by_priority(prefer, expected):
    rows = bias(select_correct(ROWS, QUESTIONS), prefer)
    assert {r["question_id"]: r["strategy"] for r in rows} == expected
    assert BIAS_PRIORITY[prefer][0] == prefer
    with pytest.raises(ValueError):
        bias(rows, "tot")


def test_counts_and_verdict_histogram():
    rows, stats = build_distill_set(ROWS, QUESTIONS)
    assert stats["per_strategy"]["cot"] == {"generated": 5, "correct": 2, "kept": 1, "questions_solved": 1}
    assert stats["per_strategy"]["pot"] == {"generated": 3, "correct": 2, "kept": 2, "questions_solved": 2}
    assert stats["per_strategy"]["l2m"] == {"generated": 2, "correct": 1, "kept": 1, "questions_solved": 1}
    assert stats["verdicts"] == {"correct": 5, "wrong": 1, "no_answer": 1, "bad_format": 1, "exec_error": 0,
                                 "timeout": 1, "truncated": 1}
    assert stats["verdicts_by_strategy"]["pot"]["timeout"] == 1
    assert stats["questions"] == 3 and stats["questions_solved"] == 2 and stats["rows"] == len(rows) == 4
    _, biased_stats = build_distill_set(ROWS, QUESTIONS, biased="cot")
    assert biased_stats["rows"] == 2 and biased_stats["biased"] == "cot"
    assert biased_stats["per_strategy"]["cot"]["kept"] == 1 and biased_stats["per_strategy"]["l2m"]["kept"] == 0


def test_student_samples_count_under_the_strategy_they_chose():
    rows = [verified("q1", "none", 0, "bad_format", "no tag here"),
            verified("q1", "pot", 1, "correct", "[pot]: answer = 1")]
    kept = select_correct(rows, QUESTIONS)
    assert kept[0]["text"] == "answer = 1"
    assert summarize(rows, kept)["per_strategy"]["none"]["generated"] == 1


def test_exemplar_problems_never_enter_the_set():
    leaked = EXEMPLARS[0].id
    rows, stats = build_distill_set(ROWS + [verified(leaked, "cot", 0, "correct")], {**QUESTIONS, leaked: "x"})
    assert leaked not in {r["question_id"] for r in rows}
    assert stats["excluded_exemplar_rows"] == 1


def test_missing_question_text_is_an_error():
    with pytest.raises(KeyError):
        select_correct(ROWS, {"q1": "only one"})


def test_tables_and_frames_give_the_same_set():
    pd = pytest.importorskip("pandas")
    expected, _ = build_distill_set(ROWS, QUESTIONS)
    from_table, _ = build_distill_set(pa.Table.from_pylist(ROWS), QUESTIONS)
    assert from_table == expected
    frame = pd.DataFrame([{**r, "iteration": None} for r in ROWS])  # a null int column turns into NaN
    from_frame, _ = build_distill_set(frame, QUESTIONS)
    assert [r["iteration"] for r in from_frame] == [None] * len(expected)
