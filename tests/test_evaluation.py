"""Evaluation modes: the student's own strategy, the bare label, and each strategy forced by its tag."""

from __future__ import annotations

import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines import make_engine
from distill.engines.base import Completion
from distill.evaluation import (
    FORCED_MODES,
    evaluate,
    majority_answer,
    summarize_predictions,
    summarize_sampled,
)
from distill.student_format import rationale_prompt

PROBLEMS = [{"id": "q1", "question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": 7.0},
            {"id": "q2", "question": "A box holds 10 pens; 6 are taken. How many remain?", "answer": 4.0}]


class ScriptedEngine:
    """Answers each prompt by a function of it, and keeps the prompts it was given."""

    name, version, model = "scripted", "0", "scripted"

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, requests, sampling, lora_path=None):
        self.prompts += [r.prompt for r in requests]
        return [[Completion(self.answer(r.prompt, i), 10, 5, "stop") for i in range(sampling.n)] for r in requests]

    def close(self):
        pass


def solves_with_cot_only(prompt: str, sample: int = 0) -> str:
    """A student that gets the answer right when primed with CoT and wrong otherwise."""
    right = "7" if "apples" in prompt else "4"
    if prompt.endswith("[cot]:"):
        return f" We add.\nFinal answer: {right}"
    if prompt.endswith("[l2m]:"):
        return " Sub-question 1: ...\nFinal answer: 0"
    if prompt.endswith("[pot]:"):
        return " answer = 1"
    return "[l2m]: Final answer: 0"


def test_forced_modes_prime_the_tag_and_read_the_solution_with_it():
    engine = ScriptedEngine(solves_with_cot_only)
    by_mode = {mode: evaluate(engine, PROBLEMS, "toy", mode, 32, "m") for mode in ("rationale", *FORCED_MODES)}
    assert [p for p in engine.prompts if p.endswith("[pot]:")] == [rationale_prompt(q["question"]) + "[pot]:"
                                                                   for q in PROBLEMS]
    assert [r["verdict"] for r in by_mode["forced_cot"]] == ["correct", "correct"]
    assert all(r["text"].startswith("[cot]: ") and r["strategy"] == "cot" for r in by_mode["forced_cot"])
    assert all(r["verdict"] != "correct" and r["strategy"] == "l2m" for r in by_mode["forced_l2m"])
    assert [(r["rule"], r["verdict"]) for r in by_mode["forced_pot"]] == [("program", "wrong")] * 2
    assert [r["strategy"] for r in by_mode["rationale"]] == ["l2m", "l2m"]  # its own choice
    assert summarize_predictions(by_mode["forced_cot"])["accuracy"] == 1.0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        evaluate(ScriptedEngine(lambda p, i: p), PROBLEMS, "toy", "forced_xyz", 8, "m")


def answers_by_sample(prompt: str, sample: int) -> str:
    """q1 (gold 7): samples say 7, 5, 5 -> the majority is wrong, one sample is right.
    q2 (gold 4): samples say 4, 4, 9 -> the majority is right."""
    said = {"apples": ["7", "5", "5"], "pens": ["4", "4", "9"]}["apples" if "apples" in prompt else "pens"]
    return f"[cot]: Work.\nFinal answer: {said[sample]}"


def test_sampled_mode_gives_maj_at_k_and_pass_at_k():
    sampling = SamplingConfig(n=3, temperature=0.7, top_p=0.95, max_tokens=32)
    rows = evaluate(ScriptedEngine(answers_by_sample), PROBLEMS, "toy", "sampled", 32, "m", sampling=sampling)
    assert [(r["question_id"], r["sample_index"]) for r in rows] == [("q1", 0), ("q1", 1), ("q1", 2),
                                                                     ("q2", 0), ("q2", 1), ("q2", 2)]
    summary = summarize_sampled(rows)
    assert (summary["n"], summary["k"], summary["maj_at_k"], summary["pass_at_k"]) == (2, 3, 0.5, 1.0)
    assert summary["pass_at_1"] == pytest.approx((1 / 3 + 2 / 3) / 2) and summary["accuracy"] == 0.5
    with pytest.raises(ValueError, match="needs its sampling"):
        evaluate(ScriptedEngine(answers_by_sample), PROBLEMS, "toy", "sampled", 32, "m")


def test_majority_vote_ties_go_to_the_answer_reached_first():
    assert majority_answer([3.0, 5.0, 5.0, 3.0]) == 3.0
    assert majority_answer([None, 2.0, 2.0000000000001, 1.0]) == 2.0
    assert majority_answer([None, float("nan")]) is None


def test_evaluation_honours_the_relative_tolerance():
    def close(prompt, i):
        return "7.0001" if "apples" in prompt else "4"
    rows = evaluate(ScriptedEngine(close), [{**PROBLEMS[0], "answer": 7.00005}], "toy", "label", 8, "m", rel_tol=1e-3)
    assert rows[0]["verdict"] == "correct"
    rows = evaluate(ScriptedEngine(close), [{**PROBLEMS[0], "answer": 7.00005}], "toy", "label", 8, "m")
    assert rows[0]["verdict"] == "wrong"


@pytest.mark.slow
def test_forced_and_label_modes_on_a_tiny_model(tiny_model_path):
    engine = make_engine(EngineConfig(kind="transformers"), str(tiny_model_path))
    try:
        for mode in FORCED_MODES:
            rows = evaluate(engine, PROBLEMS, "toy", mode, 6, str(tiny_model_path))
            tag = f"[{mode.removeprefix('forced_')}]:"
            assert [r["question_id"] for r in rows] == ["q1", "q2"]
            assert all(r["text"].startswith(tag) and r["strategy"] == tag[1:-2] for r in rows)
            assert all(r["verdict"] in ("correct", "wrong", "no_answer", "bad_format", "truncated", "error",
                                        "timeout") for r in rows)
        sampling = SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_tokens=6)
        rows = evaluate(engine, PROBLEMS, "toy", "sampled", 6, str(tiny_model_path), sampling=sampling)
        assert len(rows) == 8 and {r["sample_index"] for r in rows} == {0, 1, 2, 3}
        assert len({r["text"] for r in rows if r["question_id"] == "q1"}) > 1  # samples, not one greedy answer
        summary = summarize_sampled(rows)
        assert summary["k"] == 4 and summary["n"] == 2 and 0 <= summary["maj_at_k"] <= summary["pass_at_k"] <= 1
    finally:
        engine.close()


def test_strict_accuracy_counts_only_stated_answers():
    def trailing_number(prompt, i):
        return "[cot]: 3 + 4 makes 7" if "apples" in prompt else "[cot]: So\\nFinal answer: 4"
    rows = evaluate(ScriptedEngine(trailing_number), PROBLEMS, "toy", "rationale", 16, "m")
    assert [r["rule"] for r in rows] == ["last_number", "final_answer"]
    summary = summarize_predictions(rows)
    assert (summary["accuracy"], summary["accuracy_strict"]) == (1.0, 0.5)
