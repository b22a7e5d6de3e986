"""Answer extraction and equality (docs/method.md, section 3), on hand-written model outputs."""

from __future__ import annotations

import pytest

from distill.answers import (
    answers_match,
    extract_answer,
    first_number,
    format_number,
    trim_after_final_answer,
)


@pytest.mark.parametrize(
    ("text", "value", "rule"),
    [
        ("So she paid that much.\nFinal Answer: $1,234.50", 1234.5, "final_answer"),
        ("final answer: 7", 7.0, "final_answer"),
        ("FINAL ANSWER:42", 42.0, "final_answer"),
        ("The answer is 12.", 12.0, "the_answer_is"),
        ("We add them up.\nthe answer is: $30", 30.0, "the_answer_is"),
        ("The temperature fell by 8 degrees.\nFinal answer: -8", -8.0, "final_answer"),
        ("It ends at (-3) on the line.", -3.0, "last_number"),
        ("Final answer: 3/4", 0.75, "final_answer"),
        ("Final answer: 1 1/2 cups", 1.5, "final_answer"),
        ("Final answer: -1/4", -0.25, "final_answer"),
        ("I am not sure how to solve this.", None, "none"),
        ("", None, "none"),
        ("Final answer: 10\nWait, I made a mistake.\nFinal answer: 12", 12.0, "final_answer"),
        ("Final answer: 480 cubic feet", 480.0, "final_answer"),
        ("Final answer: 15 apples (5 + 10)", 15.0, "final_answer"),
        ("Final answer: 25%", 25.0, "final_answer"),
        ("Final answer: 12 + 3 = 15", 15.0, "final_answer"),
        ("Final answer:\n\n 42 pages", 42.0, "final_answer"),
        ("**Final Answer:** \\boxed{96}", 96.0, "final_answer"),
        ("Final answer: none\nThe answer is 9", 9.0, "the_answer_is"),
        ("Final answer: unknown", None, "none"),
        ("He had 48 and gave away 24, so 48-24 = 24 remain", 24.0, "last_number"),
        ("She earned $1,200,000.75 last year", 1200000.75, "last_number"),
        ("Final answer: \u22127", -7.0, "final_answer"),
        ("Final answer: .5", 0.5, "final_answer"),
    ],
)
def test_extract_answer(text, value, rule):
    found = extract_answer(text)
    assert found.rule == rule
    assert found.value == value


def test_final_answer_beats_a_later_answer_is_line():
    text = "The answer is 5 at first.\nFinal answer: 6\nThe answer is 7"
    assert extract_answer(text).value == 6.0


def test_subtraction_is_not_a_sign():
    assert first_number("x-4") == 4.0
    assert first_number("costs -$3") == -3.0
    assert first_number("costs $-3") == -3.0


def test_thousands_commas_only_in_groups_of_three():
    assert first_number("1,234") == 1234.0
    assert first_number("3, 4 and 5") == 3.0


def test_answers_match_is_exact_for_integers_up_to_float_noise():
    assert answers_match(66.0, 66)
    assert answers_match(20.000000000000004, 20)  # 4/13*65 in floating point
    assert not answers_match(66.5, 66)
    assert not answers_match(1_000_001.0, 1_000_000)  # within 1e-6 relative, but integers are exact
    assert not answers_match(1_000_000.5, 1_000_000)


def test_answers_match_relative_tolerance_for_non_integers():
    assert answers_match(0.75, 0.75)
    assert answers_match(0.7500001, 0.75)
    assert not answers_match(0.7501, 0.75)
    assert answers_match(0.7501, 0.75, rel_tol=1e-3)
    assert not answers_match(None, 3.0)
    assert not answers_match(float("nan"), 3.0)
    assert not answers_match(float("inf"), 3.0)


@pytest.mark.parametrize(("value", "text"), [(12.0, "12"), (-3, "-3"), (0.75, "0.75"), (0.1 + 0.2, "0.3"),
                                             (1 / 3, "0.333333333333"), (-0.0, "0"), (4248, "4248")])
def test_format_number(value, text):
    assert format_number(value) == text


def test_trim_after_final_answer():
    assert trim_after_final_answer("a\nFinal answer: 5\nHope this helps!") == "a\nFinal answer: 5"
    assert trim_after_final_answer("a\nFinal answer:\n5\nmore") == "a\nFinal answer:\n5"
    assert trim_after_final_answer("no marker\nhere") == "no marker\nhere"


@pytest.mark.parametrize(("text", "value", "rule"), [
    # PaLM-540B's SVAMP rationales (Distilling Step-by-Step's release) state their answer as arithmetic
    ("Luke scored 84 points after 2 rounds. 84 / 2 = 42. The answer is (84 / 2).", 42.0, "the_answer_is"),
    ("There are 120 students. 1/3 of 120 is 120 / 3 = 40. The answer is (120 / 3).", 40.0, "the_answer_is"),
    ("Final answer: (5 + 7) - 2", 10.0, "final_answer"),
    ("Final answer: 12 - 3", 9.0, "final_answer"),
    ("The answer is 1 1/2 cups.", 1.5, "the_answer_is"),  # a mixed number, not arithmetic
    ("The answer is (10 / 0).", 10.0, "the_answer_is"),  # no value: its first number, as before
    ("I think the answer is 5, or 6", 6.0, "last_number"),  # not the start of a sentence
])
def test_answers_stated_as_arithmetic_or_mid_line(text, value, rule):
    found = extract_answer(text)
    assert (found.value, found.rule) == (value, rule)
