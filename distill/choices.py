"""Multiple-choice answers: the choices listed in the question, an answer given by letter or by text.

A multiple-choice problem keeps its choices inside its question, as the student and the teacher
read them (Distilling Step-by-Step's CommonsenseQA layout):

    A beaver is know for building prowess, their supplies come from where?
    Answer Choices:
    (a) british columbia
    (b) body of water
    ...

Its numeric `answer` is NaN and its `answer_text` the correct choice's text. Verification compares
choice indices: `gold_choice` gives the correct one, `extract_choice` reads the one a completion
gives, by letter (`(c)`, `c)`, `C`) or by text (`wooded area`), in an answer statement (`So the
answer is (c) wooded area.`, `Final answer: (c)`) or, for a bare label-mode answer, on its first
line.

    choices, gold = gold_choice(question, "wooded area")     # (["british columbia", ...], 2)
    extract_choice("... So the answer is (c) wooded area.", choices)   # 2
    label_choice("wooded area", choices)                                # 2 (DSS's exact match)

A label-mode completion (the bare answer) is scored as Distilling Step-by-Step scores CommonsenseQA
(`metrics.py`, `compute_metrics_text`: the decoded prediction must equal the label string, the
correct choice's text): `label_choice` accepts the completion only when it is exactly one choice's
text (surrounding whitespace aside), so neither a letter nor `(c) wooded area` counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

LETTERS = "abcdefghij"
HEADER = "Answer Choices:"
_LISTED = re.compile(r"^\(([a-j])\)\s*(.*?)\s*$", re.IGNORECASE)
_STATEMENT = re.compile(r"(?:the answer is|final answer\s*:)\s*(.+)", re.IGNORECASE)
# `(c)` followed by anything, or a bare `c)`, `c.`, `c:` or `c` (not `a forest`: a word, not a letter)
_LETTER = re.compile(r"^(?:\(([a-j])\)|([a-j])(?:[).:]|$))", re.IGNORECASE)


def render_choices(question: str, choices: Sequence[str]) -> str:
    """The question with its choices listed below it, as multiple-choice problems carry them."""
    listed = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, choices, strict=False))
    return f"{question.strip()}\n{HEADER}\n{listed}"


def listed_choices(question: str) -> list[str]:
    """The choices listed after `Answer Choices:` in `question`, in order ([] when it lists none)."""
    _, found, tail = question.rpartition(HEADER)
    if not found:
        return []
    choices = []
    for line in tail.strip().splitlines():
        match = _LISTED.match(line.strip())
        if not match or match.group(1).lower() != LETTERS[len(choices)]:
            return []
        choices.append(match.group(2))
    return choices


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """The index of the choice `answer` names: by its text (case and a final period ignored), by its
    letter (`(b)`, `b)`, `b.`, `B`), or as `(b) some text`, where a text that is one of the choices
    wins over the letter (students pair letters and texts wrongly); None otherwise. CommonsenseQA repeats a
    choice's text now and then: a repeated text is always its first listing, so naming either
    copy gives one answer."""
    said = _normalise(answer)
    texts = [_normalise(c) for c in choices]
    if said in texts:
        return texts.index(said)
    letter = _LETTER.match(answer.strip())
    if letter:
        index = LETTERS.index((letter.group(1) or letter.group(2)).lower())
        rest = _normalise(answer.strip()[letter.end():])
        if rest in texts:  # `(c) laundry` where laundry is (a): the text is the answer, as DSS compares texts
            return texts.index(rest)
        if index < len(choices):
            return texts.index(texts[index])  # a repeated choice text counts as its first listing
    return None


def extract_choice(text: str, choices: Sequence[str]) -> int | None:
    """The choice a completion gives: from its last answer statement, else from its first line."""
    statements = _STATEMENT.findall(text or "")
    for candidate in ([statements[-1]] if statements else []) + (text or "").strip().splitlines()[:1]:
        index = choice_index(candidate.strip().splitlines()[0] if candidate.strip() else "", choices)
        if index is not None:
            return index
    return None


def label_choice(text: str, choices: Sequence[str]) -> int | None:
    """The choice a label-mode completion is, by DSS's exact string match: the index of the choice
    whose text equals the completion (stripped of surrounding whitespace), else None. The index is
    `choice_index`'s for that text, as the gold's is: a repeated text is its first listing."""
    said = (text or "").strip()
    return choice_index(said, choices) if said in choices else None


def label_choice_answer(text: str, choices: Sequence[str]) -> float | None:
    """`label_choice` as an answer value (the choice's index as a float)."""
    index = label_choice(text, choices)
    return None if index is None else float(index)


def choice_answer(text: str, choices: Sequence[str]) -> float | None:
    """`extract_choice` as an answer value (the choice's index as a float), for the code that
    compares answers as numbers."""
    index = extract_choice(text, choices)
    return None if index is None else float(index)


def gold_choice(question: str, answer_text: str | None) -> tuple[list[str], int] | None:
    """(choices, index of the correct one) of a multiple-choice problem; None for any other."""
    choices = listed_choices(question)
    if not choices or not answer_text:
        return None
    index = choice_index(answer_text, choices)
    return (choices, index) if index is not None else None


def gold_answers(problems: Sequence[dict]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """PROBLEMS rows -> ({id: gold}, {id: choices}): the numeric answer, or for a multiple-choice
    problem the index of its correct choice (and its choices in the second mapping)."""
    gold, choices = {}, {}
    for p in problems:
        found = gold_choice(p["question"], p.get("answer_text")) if _nan(p["answer"]) else None
        if found is not None:
            choices[p["id"]], gold[p["id"]] = found[0], float(found[1])
        else:
            gold[p["id"]] = p["answer"]
    return gold, choices


def _nan(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()
