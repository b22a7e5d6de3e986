"""Least-to-most: alternating `Sub-question k: ...` / `Answer to sub-question k: ...` lines, then
`Final answer: N`. A completion without sub-questions, or with a sub-question left unanswered, is not
a valid L2M sample (bad_format), whatever number it ends with.

Instruction wording as in the SIKeD reference prompt (`L2M-prompt.txt`); solutions written here.
"""

from __future__ import annotations

import re

from distill.answers import extract_answer
from distill.strategies.base import Parsed, Strategy, clean_completion

NAME = "l2m"

INSTRUCTION = (
    "Solve the given math problem by decomposing it into smaller, manageable sub-questions. "
    "Put your final answer after 'Final answer: '."
)

SOLUTIONS = (
    # gsm8k/train/3365: shirts and tax
    ("Sub-question 1: How much do the 3 shirts cost before tax?\n"
     "Answer to sub-question 1: 3 * $20 = $60.\n"
     "Sub-question 2: How much is the 10% tax?\n"
     "Answer to sub-question 2: $60 * 10 / 100 = $6.\n"
     "Sub-question 3: How much did John pay in total?\n"
     "Answer to sub-question 3: $60 + $6 = $66.\n"
     "Final answer: 66"),
    # gsm8k/train/1168: tulips
    ("Sub-question 1: How many tulips did Elrond get?\n"
     "Answer to sub-question 1: Twice as many as Arwen: 2 * 20 = 40.\n"
     "Sub-question 2: How many tulips did they get in total?\n"
     "Answer to sub-question 2: 20 + 40 = 60.\n"
     "Final answer: 60"),
    # gsm8k/train/6454: turtles
    ("Sub-question 1: How many turtles climbed onto the log?\n"
     "Answer to sub-question 1: Two less than three times 9: 3 * 9 - 2 = 25.\n"
     "Sub-question 2: How many turtles were in the larger group?\n"
     "Answer to sub-question 2: 9 + 25 = 34.\n"
     "Sub-question 3: How many turtles remained after half of them ran away?\n"
     "Answer to sub-question 3: 34 / 2 = 17.\n"
     "Final answer: 17"),
    # gsm8k/train/789: injury
    ("Sub-question 1: How many days does the injury take to heal fully?\n"
     "Answer to sub-question 1: 5 * 3 = 15 days.\n"
     "Sub-question 2: After how many days does James start working out again?\n"
     "Answer to sub-question 2: 15 + 3 = 18 days.\n"
     "Sub-question 3: How many days are 3 weeks?\n"
     "Answer to sub-question 3: 3 * 7 = 21 days.\n"
     "Sub-question 4: How long until he can lift heavy again?\n"
     "Answer to sub-question 4: 18 + 21 = 39 days.\n"
     "Final answer: 39"),
    # gsm8k/train/5259: fish
    ("Sub-question 1: If the tank had x fish before, how many fish did I add?\n"
     "Answer to sub-question 1: x - 4.\n"
     "Sub-question 2: What equation gives the 20 fish in the tank now?\n"
     "Answer to sub-question 2: x + (x - 4) = 20, so 2x = 24.\n"
     "Sub-question 3: How many fish were in the tank before?\n"
     "Answer to sub-question 3: x = 24 / 2 = 12.\n"
     "Sub-question 4: How many fish did I add?\n"
     "Answer to sub-question 4: 12 - 4 = 8.\n"
     "Final answer: 8"),
    # gsm8k/train/3016: chlorine
    ("Sub-question 1: What is the volume of the pool?\n"
     "Answer to sub-question 1: 10 * 8 * 6 = 480 cubic feet.\n"
     "Sub-question 2: How many quarts of chlorine does Gary need?\n"
     "Answer to sub-question 2: 480 / 120 = 4 quarts.\n"
     "Sub-question 3: How much does the chlorine cost?\n"
     "Answer to sub-question 3: 4 * $3 = $12.\n"
     "Final answer: 12"),
    # gsm8k/train/7076: Oreos and cookies
    ("Sub-question 1: How many items does one part of the 4:9 ratio stand for?\n"
     "Answer to sub-question 1: 65 / (4 + 9) = 5.\n"
     "Sub-question 2: How many Oreos and how many cookies are in the box?\n"
     "Answer to sub-question 2: 4 * 5 = 20 Oreos and 9 * 5 = 45 cookies.\n"
     "Sub-question 3: How much did the Oreos cost?\n"
     "Answer to sub-question 3: 20 * $2 = $40.\n"
     "Sub-question 4: How much did the cookies cost?\n"
     "Answer to sub-question 4: 45 * $3 = $135.\n"
     "Sub-question 5: How much more did Zane spend on cookies than on Oreos?\n"
     "Answer to sub-question 5: $135 - $40 = $95.\n"
     "Final answer: 95"),
    # gsm8k/train/3289: hotel rooms
    ("Sub-question 1: How many rooms are in the first wing?\n"
     "Answer to sub-question 1: 9 * 6 * 32 = 1728.\n"
     "Sub-question 2: How many rooms are in the second wing?\n"
     "Answer to sub-question 2: 7 * 9 * 40 = 2520.\n"
     "Sub-question 3: How many rooms are in the hotel in total?\n"
     "Answer to sub-question 3: 1728 + 2520 = 4248.\n"
     "Final answer: 4248"),
)

_QUESTION_RE = re.compile(r"^[ \t*#>-]*sub[- ]?question[ \t]*(\d+)[ \t*]*:", re.IGNORECASE | re.MULTILINE)
_ANSWER_RE = re.compile(r"^[ \t*#>-]*answer[ \t]+to[ \t]+sub[- ]?question[ \t]*(\d+)[ \t*]*:",
                        re.IGNORECASE | re.MULTILINE)


def format_problem(solution: str) -> str:
    """Why `solution` is not valid L2M, or "" when it is."""
    asked = [int(k) for k in _QUESTION_RE.findall(solution)]
    answered = {int(k) for k in _ANSWER_RE.findall(solution)}
    if not asked:
        return "no 'Sub-question k:' lines"
    missing = sorted(set(asked) - answered)
    if missing:
        return "sub-question(s) without an 'Answer to sub-question k:' line: " + ", ".join(map(str, missing))
    return ""


def parse(text: str) -> Parsed:
    """Read an L2M completion: check the sub-question structure, then extract the answer."""
    solution = clean_completion(text)
    found = extract_answer(solution)
    return Parsed(NAME, solution, value=found.value, rule=found.rule, format_error=format_problem(solution))


STRATEGY = Strategy(NAME, INSTRUCTION, SOLUTIONS, parse)
