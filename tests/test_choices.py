"""Multiple-choice answers end to end without a model: reading the choices and the answer a text
names, verification and evaluation by choice, and DSS's CommonsenseQA rows with PaLM's rationales."""

from __future__ import annotations

import math

import pytest

from distill.choices import (
    choice_index,
    extract_choice,
    gold_answers,
    gold_choice,
    listed_choices,
    render_choices,
)
from distill.engines.base import Completion
from distill.verify import verify_samples

CHOICES = ["british columbia", "body of water", "wooded area", "pay debts", "zoo"]
QUESTION = render_choices("A beaver is know for building prowess, their supplies come from where?", CHOICES)


def test_choices_listed_in_the_question_are_read_back_in_order():
    assert listed_choices(QUESTION) == CHOICES
    assert listed_choices("How many apples? (a) is not a list") == []
    assert gold_choice(QUESTION, "wooded area") == (CHOICES, 2)
    assert gold_choice(QUESTION, "a forest") is None


@pytest.mark.parametrize(("answer", "index"), [
    ("wooded area", 2), ("Wooded Area.", 2), ("(c)", 2), ("c)", 2), ("C", 2), ("(c) wooded area", 2),
    ("(c) zoo", 4), ("(c) laundry.", 2), ("c.", 2), ("(f)", None), ("forest", None), ("a zoo", None), ("", None),
])
def test_a_choice_is_named_by_its_letter_or_its_text(answer, index):
    assert choice_index(answer, CHOICES) == index


def test_a_repeated_choice_text_is_one_answer():
    repeated = ["park", "zoo", "park", "home", "lake"]
    assert choice_index("(c)", repeated) == choice_index("park", repeated) == choice_index("(a)", repeated) == 0


def test_the_choice_of_a_completion_comes_from_its_last_answer_statement_or_its_bare_first_line():
    palm = "The answer must be a place. Of the above choices, only wooded area fits. So the answer is (c) wooded area."
    assert extract_choice(palm, CHOICES) == 2
    assert extract_choice("[cot]: beavers chew trees.\nFinal answer: (e)", CHOICES) == 4
    assert extract_choice("body of water\n", CHOICES) == 1  # a label-mode answer
    assert extract_choice("Beavers live near a zoo sometimes.", CHOICES) is None
    # a label-mode answer in PaLM's words (a student's, evaluating DSS's CQA): it once counted as none
    assert extract_choice("The answer is (c) laundry.", CHOICES) == 2


def test_gold_answers_give_choice_indices_for_multiple_choice_and_numbers_otherwise():
    problems = [{"id": "q1", "question": QUESTION, "answer": math.nan, "answer_text": "wooded area"},
                {"id": "q2", "question": "1 + 2?", "answer": 3.0, "answer_text": "3"}]
    assert gold_answers(problems) == ({"q1": 2.0, "q2": 3.0}, {"q1": CHOICES})


def test_verification_judges_the_named_choice():
    samples = [{"question_id": "q1", "strategy": "cot", "text": text, "finish_reason": finish}
               for text, finish in [("So the answer is (c) wooded area.", "stop"), ("So the answer is (e).", "stop"),
                                    ("Beavers are", "length")]]
    rows = verify_samples(samples, {"q1": 2.0}, choices={"q1": CHOICES}, sandbox=lambda codes: {})
    assert [(r["verdict"], r["predicted"], r["rule"]) for r in rows] == [
        ("correct", 2.0, "choice"), ("wrong", 4.0, "choice"), ("truncated", None, "none")]
    assert "(e) differs from the gold choice (c)" in rows[1]["reason"]


class ScriptedEngine:
    """Answers every prompt with the next scripted text."""

    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, requests, sampling, lora_path=None):
        return [[Completion(self.texts.pop(0), 10, 3, "stop")] for _ in requests]


def test_evaluation_scores_multiple_choice_in_label_and_rationale_modes():
    from distill.evaluation import evaluate

    problems = [{"id": "q1", "question": QUESTION, "answer": math.nan, "answer_text": "wooded area"},
                {"id": "q2", "question": QUESTION, "answer": math.nan, "answer_text": "zoo"}]
    label = evaluate(ScriptedEngine(["wooded area", "(a)"]), problems, "dss_cqa-test", "label", 8, "m")
    assert [(r["verdict"], r["gold"], r["predicted"]) for r in label] == [("correct", 2.0, 2.0), ("no_answer", 4.0, None)]
    rationale = evaluate(ScriptedEngine(["[cot]: zoos hold beavers. So the answer is (e) zoo.", "[cot]: hm"]),
                         problems, "dss_cqa-test", "rationale", 8, "m", sandbox=lambda codes: {})
    assert [r["verdict"] for r in rationale] == ["wrong", "no_answer"]


def test_dss_cqa_rows_keep_palms_rationales_with_the_choice_as_gold_and_label(data_dir):
    from distill.benchmarks import load_benchmark, load_rationales
    from distill.config import BenchmarkRef
    from distill.training.data import build_texts, dss_rationale_rows

    problems = load_benchmark(BenchmarkRef(name="dss_cqa", split="train"), data_dir).problems
    rationales = load_rationales("dss_cqa", "train", data_dir)
    rows, counts = dss_rationale_rows(problems, rationales)
    assert "no_gold" not in counts and len(rows) + counts["no_rationale"] == len(problems)
    first = rows[0]
    choices, gold = gold_choice(first["question"], first["label_text"])
    assert first["gold"] == gold and first["text"].endswith(f"Final answer: ({'abcde'[gold]}) {choices[gold]}")
    texts, dropped = build_texts(rows, "dss")
    assert not dropped and texts[0].label_target == choices[gold] and "answer is" not in texts[0].rationale_target.lower()
    # PaLM's own completions as the file engine serves them, verified by the choice they name,
    # agree with its officially parsed label
    from distill.engines.file_engine import completion_text

    samples = [{"question_id": r["question_id"], "strategy": "cot",
                "text": completion_text(rationales[r["question_id"]].raw), "finish_reason": "stop"} for r in rows[:200]]
    gold_map, listed = gold_answers([p.to_row() for p in problems])
    verified = verify_samples(samples, gold_map, choices=listed, sandbox=lambda codes: {})
    share = sum(v["verdict"] == "correct" for v in verified) / len(verified)
    differs = sum(1 for r in rows[:200] if choice_index(rationales[r["question_id"]].label or "",
                                                         listed[r["question_id"]]) != r["gold"])
    assert share == pytest.approx(1 - differs / 200, abs=0.02)


def test_a_label_is_scored_as_dss_scores_commonsenseqa():
    """DSS's `compute_metrics_text` (metrics.py): the decoded prediction must equal the label string,
    the correct choice's text; a letter, a lettered text or another case is no match."""
    from types import SimpleNamespace

    from distill.evaluation import evaluate
    from distill.training.validation import _judge

    said = ["wooded area", " wooded area\n", "(c)", "(c) wooded area", "Wooded area", "zoo"]
    problems = [{"id": f"q{i}", "question": QUESTION, "answer": math.nan, "answer_text": "wooded area"}
                for i in range(len(said))]
    label = evaluate(ScriptedEngine(said), problems, "dss_cqa-test", "label", 8, "m")
    assert [(r["verdict"], r["predicted"]) for r in label] == [
        ("correct", 2.0), ("correct", 2.0), ("no_answer", None), ("no_answer", None), ("no_answer", None),
        ("wrong", 4.0)]
    # checkpoint selection on label accuracy scores the same way
    asked = [SimpleNamespace(question_id=p["id"], question=QUESTION, gold=2.0) for p in problems]
    assert _judge("label", asked, said, ["stop"] * len(said)) == [True, True, False, False, False, False]
