"""The student's prompts and targets (docs/method.md, section 4): SIKeD tags and DSS's two tasks."""

from __future__ import annotations

import pytest

from distill.student_format import (
    LABEL_INSTRUCTION,
    RATIONALE_INSTRUCTION,
    forced_prompt,
    label_prompt,
    label_target,
    parse_label_output,
    parse_student_output,
    rationale_prompt,
    rationale_target,
    student_prompt_hash,
)

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_two_tasks_share_the_question_and_differ_by_instruction():
    rationale, label = rationale_prompt(QUESTION), label_prompt(QUESTION)
    assert RATIONALE_INSTRUCTION in rationale and LABEL_INSTRUCTION in label
    for prompt in (rationale, label):
        assert prompt.endswith(f"### Input:\n{QUESTION}\n\n### Response:\n")
        assert prompt.startswith("Below is an instruction")
    assert rationale != label
    assert student_prompt_hash("rationale") != student_prompt_hash("label")
    with pytest.raises(ValueError):
        student_prompt_hash("explain")


def test_targets():
    assert rationale_target("cot", " 3 + 4 = 7.\nFinal answer: 7\n") == "[cot]: 3 + 4 = 7.\nFinal answer: 7"
    assert rationale_target("pot", "answer = 3 + 4") == "[pot]: answer = 3 + 4"
    with pytest.raises(ValueError):
        rationale_target("tot", "x")
    assert [label_target(v) for v in (7.0, 0.75, -2, 1234.5)] == ["7", "0.75", "-2", "1234.5"]


def test_forcing_a_strategy_primes_the_response_with_its_tag():
    prompt = forced_prompt(QUESTION, "l2m")
    assert prompt == rationale_prompt(QUESTION) + "[l2m]:"
    completion = " Sub-question 1: How many?\nAnswer to sub-question 1: 7\nFinal answer: 7"
    assert parse_student_output("[l2m]:" + completion) == ("l2m", completion.strip())


@pytest.mark.parametrize(("text", "strategy", "solution"), [
    ("[cot]: 3 + 4 = 7.\nFinal answer: 7", "cot", "3 + 4 = 7.\nFinal answer: 7"),
    ("  [POT]: answer = 7", "pot", "answer = 7"),
    ("[l2m]\nSub-question 1: x", "l2m", "Sub-question 1: x"),
    ("cot 3 + 4 = 7", None, "cot 3 + 4 = 7"),  # a bare word is not a tag
    ("l2m: Sub-question 1: x", "l2m", "Sub-question 1: x"),
    ("3 + 4 = 7", None, "3 + 4 = 7"),
    ("", None, ""),
])
def test_parse_student_output(text, strategy, solution):
    assert parse_student_output(text) == (strategy, solution)


def test_parse_label_output():
    assert parse_label_output("7") == 7.0
    assert parse_label_output(" 0.75\n### Input: 12") == 0.75
    assert parse_label_output("I don't know") is None


def test_a_label_written_as_an_equation_is_scored_by_its_value():
    """A DSS-format student writes SVAMP's labels, equations such as `( 84.0 / 2.0 )`: their value
    counts (before, the first number, 84, was read)."""
    from distill.student_format import parse_label_output

    assert parse_label_output("( 84.0 / 2.0 )") == 42.0
    assert parse_label_output("(5 - 2).\nMore text 9") == 3.0
    assert parse_label_output("42 apples") == 42.0
    assert parse_label_output("about 12 + lots") == 12.0  # not an expression: its first number
    assert parse_label_output("") is None


def test_a_multiple_choice_question_is_asked_for_one_of_its_listed_choices():
    from distill.choices import render_choices

    choices = ["british columbia", "body of water", "wooded area", "pay debts", "zoo"]
    question = render_choices("A beaver is know for building prowess, their supplies come from where?", choices)
    rationale, label = rationale_prompt(question), label_prompt(question)
    for prompt in (rationale, label):
        assert "numeric" not in prompt and "Math Word Problem" not in prompt and "multiple-choice question" in prompt
        assert all(f"({letter}) {choice}\n" in prompt for letter, choice in zip("abcde", choices, strict=True))
    assert "text of the correct answer choice" in label  # DSS's label: the choice's text
    assert "Explain step by step which of the listed answer choices" in rationale
    assert LABEL_INSTRUCTION in label_prompt(QUESTION) and RATIONALE_INSTRUCTION in rationale_prompt(QUESTION)
    assert student_prompt_hash("label", multiple_choice=True) != student_prompt_hash("label")
    assert student_prompt_hash("rationale", multiple_choice=True) != student_prompt_hash("rationale")
