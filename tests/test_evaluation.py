"""Evaluation modes: the student's own strategy, the bare label, and each strategy forced by its tag."""

from __future__ import annotations

import pytest

from distill.config import EngineConfig
from distill.engines import make_engine
from distill.engines.base import Completion
from distill.evaluation import FORCED_MODES, evaluate, summarize_predictions
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
        return [[Completion(self.answer(r.prompt), 10, 5, "stop")] for r in requests]

    def close(self):
        pass


def solves_with_cot_only(prompt: str) -> str:
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
        evaluate(ScriptedEngine(str), PROBLEMS, "toy", "forced_xyz", 8, "m")


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
    finally:
        engine.close()
