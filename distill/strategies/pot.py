"""Program of thought: straight-line Python that leaves its result in a variable named `answer`.

It may use `math` and sympy (`Symbol`, `Eq`, `solve`); the exemplars import what they use, so the
programs run without any prelude. The answer is what running the program (in the sandbox, see
distill/sandbox) leaves in `answer`. Instruction wording as in the SIKeD reference prompt
(`POT-prompt.txt`); programs written here.
"""

from __future__ import annotations

import re
import textwrap

from distill.strategies.base import Parsed, Strategy, clean_completion

NAME = "pot"

INSTRUCTION = "Solve the given math problem by writing a python code. Store your result as a variable named 'answer'."

SOLUTIONS = (
    # gsm8k/train/3365: shirts and tax
    ("shirts = 3\n"
     "price_per_shirt = 20\n"
     "tax_percent = 10\n"
     "cost_before_tax = shirts * price_per_shirt\n"
     "tax = cost_before_tax * tax_percent / 100\n"
     "answer = cost_before_tax + tax"),
    # gsm8k/train/1168: tulips
    ("arwen_tulips = 20\n"
     "elrond_tulips = 2 * arwen_tulips\n"
     "answer = arwen_tulips + elrond_tulips"),
    # gsm8k/train/6454: turtles
    ("original_turtles = 9\n"
     "climbed_turtles = 3 * original_turtles - 2\n"
     "larger_group = original_turtles + climbed_turtles\n"
     "ran_away = larger_group / 2\n"
     "answer = larger_group - ran_away"),
    # gsm8k/train/789: injury
    ("pain_days = 3\n"
     "healing_days = 5 * pain_days\n"
     "rest_days = 3\n"
     "weeks_before_heavy = 3\n"
     "days_before_heavy = weeks_before_heavy * 7\n"
     "answer = healing_days + rest_days + days_before_heavy"),
    # gsm8k/train/5259: fish (an equation, solved with sympy)
    ("from sympy import Symbol, Eq, solve\n"
     "fish_before = Symbol('fish_before')\n"
     "fish_added = fish_before - 4\n"
     "fish_now = 20\n"
     "equation = Eq(fish_before + fish_added, fish_now)\n"
     "fish_before_value = solve(equation, fish_before)[0]\n"
     "answer = fish_before_value - 4"),
    # gsm8k/train/3016: chlorine (whole quarts, with math)
    ("import math\n"
     "length = 10\n"
     "width = 8\n"
     "depth = 6\n"
     "volume = length * width * depth\n"
     "cubic_feet_per_quart = 120\n"
     "quarts = math.ceil(volume / cubic_feet_per_quart)\n"
     "price_per_quart = 3\n"
     "answer = quarts * price_per_quart"),
    # gsm8k/train/7076: Oreos and cookies
    ("total_items = 65\n"
     "oreo_parts = 4\n"
     "cookie_parts = 9\n"
     "items_per_part = total_items / (oreo_parts + cookie_parts)\n"
     "oreos = oreo_parts * items_per_part\n"
     "cookies = cookie_parts * items_per_part\n"
     "oreo_cost = oreos * 2\n"
     "cookie_cost = cookies * 3\n"
     "answer = cookie_cost - oreo_cost"),
    # gsm8k/train/3289: hotel rooms
    ("first_wing_rooms = 9 * 6 * 32\n"
     "second_wing_rooms = 7 * 9 * 40\n"
     "answer = first_wing_rooms + second_wing_rooms"),
)

_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(?P<body>.*?)(?:```|\Z)", re.IGNORECASE | re.DOTALL)
_ASSIGNS_ANSWER_RE = re.compile(r"^\s*answer\s*(?::[^=\n]*)?=(?!=)", re.MULTILINE)


def extract_code(text: str) -> str:
    """The program in a PoT completion: the tag and exemplar boundaries removed, and, when the model
    fenced its code in ``` blocks, the first block that assigns `answer` (else the first block).
    An unclosed fence (a cut-off completion) runs to the end of the text."""
    solution = clean_completion(text)
    blocks = [m.group("body") for m in _FENCE_RE.finditer(solution)]
    if blocks:
        solution = next((b for b in blocks if _ASSIGNS_ANSWER_RE.search(b)), blocks[0])
    return textwrap.dedent(solution.strip("\n")).rstrip()


def parse(text: str) -> Parsed:
    """Read a PoT completion: the program to run. An empty program is bad_format; whether it runs
    and leaves an `answer` is for the sandbox to say."""
    code = extract_code(text)
    problem = "" if code.strip() else "no program in the completion"
    return Parsed(NAME, code, rule="program", code=code or None, format_error=problem)


STRATEGY = Strategy(NAME, INSTRUCTION, SOLUTIONS, parse)
