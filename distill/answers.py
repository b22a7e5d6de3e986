"""Numbers out of model text (docs/method.md, section 3), and when a predicted number counts as the gold.

CoT and L2M answers are read by the first rule that yields a number:

1. `final_answer`: the number after the last `Final answer:` (case-insensitive). On that line, text
   after the last `=` wins (`Final answer: 12 + 3 = 15` gives 15); `$`, thousands commas, `%` and
   trailing units are ignored. A marker followed by nothing on its line reads the next non-empty line.
   A line that is nothing but arithmetic is evaluated (`The answer is (84 / 2).` gives 42).
2. `the_answer_is`: the number after the last `The answer is` that starts a line or a sentence.
3. `last_number`: the last number anywhere in the text.
4. `none`: no number at all.

A number is an integer or decimal with an optional sign and `$` (`-$1,234.50`), a fraction (`3/4`
gives 0.75) or a mixed number (`1 1/2` gives 1.5). A `-` counts as a sign only where it cannot be a
subtraction (`48-24` holds 48 and 24). A percentage reads as its number (`50%` gives 50): golds of
percentage questions are the number of percent.

`distill.numbers.parse_number` is the other half: it reads a gold field that holds exactly one number
and rejects anything else; this module finds numbers inside free text, so it keeps its own scanner.

    from distill.answers import extract_answer, answers_match
    found = extract_answer("... Final Answer: $1,234.50")   # Extraction(value=1234.5, rule="final_answer")
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RULES = ("final_answer", "the_answer_is", "last_number", "none")

# Integer part: thousands groups (1,234,567) or plain digits; then optional decimals.
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_SIGN = r"(?:(?<![\w)\]])-)?"  # a minus right after a word, digit or bracket is subtraction
_NUMBER_RE = re.compile(
    rf"""
    (?P<sign>{_SIGN})(?:\$\s?(?P<sign2>-)?)?
    (?:
        (?P<whole>\d+)[ ](?P<mnum>\d+)/(?P<mden>\d+)(?![\d/])      # mixed number 1 1/2
      | (?P<num>\d+)/(?P<den>\d+)(?![\d/])                          # fraction 3/4
      | (?P<dec>{_INT}(?:\.\d+)?|\.\d+)                             # 1,234.50 or .5
    )
    """,
    re.VERBOSE,
)
_FINAL_RE = re.compile(r"final\s+answer\s*(?:is)?\s*[:：]", re.IGNORECASE)
# At the start of a line, or of a sentence within one (`... = 42. The answer is (84 / 2).`)
_ANSWER_IS_RE = re.compile(r"(?:^|(?<=[.!?])[ \t]+)[\W_]*the\s+answer\s+is\b(?P<rest>.*)$",
                           re.IGNORECASE | re.MULTILINE)
_MINUS_CHARS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})

# Integers compare exactly, up to the noise of binary floating point (4/13*65 is 20.000000000000004).
FLOAT_NOISE = 1e-9


@dataclass(frozen=True)
class Extraction:
    """The number read from a text, the rule that read it, and the text it was read from."""

    value: float | None
    rule: str  # final_answer | the_answer_is | last_number | none
    matched: str = ""


def _value(match: re.Match) -> float | None:
    negative = bool(match.group("sign") or match.group("sign2"))
    if match.group("whole") is not None:
        den = int(match.group("mden"))
        if den == 0:
            return None
        value = int(match.group("whole")) + int(match.group("mnum")) / den
    elif match.group("num") is not None:
        den = int(match.group("den"))
        if den == 0:
            return None
        value = int(match.group("num")) / den
    else:
        value = float(match.group("dec").replace(",", ""))
    return -value if negative else value


def _numbers(text: str) -> list[tuple[float, str]]:
    text = text.translate(_MINUS_CHARS)
    found = []
    for match in _NUMBER_RE.finditer(text):
        value = _value(match)
        if value is not None and math.isfinite(value):
            found.append((value, match.group(0).strip()))
    return found


def first_number(text: str) -> float | None:
    """The first number in `text` (`"$1,234.50"` -> 1234.5, `"3/4"` -> 0.75, `"-7 apples"` -> -7.0)."""
    found = _numbers(text)
    return found[0][0] if found else None


def numbers(text: str) -> list[float]:
    """Every number in `text`, in order."""
    return [value for value, _ in _numbers(text)]


def expression_or_first_number(text: str) -> float | None:
    """A bare answer's value: the whole text evaluated when it is nothing but arithmetic (DSS's SVAMP
    labels are equations such as `( 84.0 / 2.0 )`), else its first number."""
    value = _expression_value(text.strip().rstrip("."))
    return value if value is not None else first_number(text)


def last_number(text: str) -> float | None:
    """The last number in `text`, or None."""
    found = _numbers(text)
    return found[-1][0] if found else None


# An answer stated as arithmetic, the whole line: "(84 / 2).", "12 * 3", "(5 + 7) - 2"
_EXPRESSION_RE = re.compile(r"^[\d\s.()]*\d[\d\s.()]*(?:[-+*/][\d\s.()]*\d[\d\s.()]*)+$")


def _expression_value(rest: str) -> float | None:
    """The value of an answer line that is nothing but an arithmetic expression (PaLM's SVAMP
    rationales end `The answer is (84 / 2).`), evaluated exactly; None for anything else."""
    from distill.numbers import ExpressionError, evaluate_arithmetic

    candidate = rest.strip().rstrip(".").strip()
    if not _EXPRESSION_RE.match(candidate):
        return None
    try:
        return evaluate_arithmetic(candidate)
    except (ExpressionError, ZeroDivisionError):
        return None


def _answer_on_line(rest: str) -> tuple[float | None, str]:
    """The number an answer line gives: an arithmetic expression's value when the line is one, the
    number after its last `=`, else its first number."""
    rest = rest.strip()
    value = _expression_value(rest)
    if value is not None:
        return value, rest
    if "=" in rest:
        after = rest.rsplit("=", 1)[1]
        if _numbers(after):
            rest = after
    found = _numbers(rest)
    return (found[0][0], found[0][1]) if found else (None, "")


def _after_last_final_answer(text: str) -> tuple[float | None, str]:
    markers = list(_FINAL_RE.finditer(text))
    if not markers:
        return None, ""
    tail = text[markers[-1].end():]
    lines = tail.split("\n")
    line = lines[0]
    if not line.strip():  # `Final answer:` alone on its line: the answer is on the next one
        line = next((candidate for candidate in lines[1:] if candidate.strip()), "")
    return _answer_on_line(line)


def extract_answer(text: str) -> Extraction:
    """Read the answer of a CoT or L2M solution by the first rule that yields a number."""
    text = text or ""
    value, matched = _after_last_final_answer(text)
    if value is not None:
        return Extraction(value, "final_answer", matched)
    answer_lines = list(_ANSWER_IS_RE.finditer(text))
    if answer_lines:
        value, matched = _answer_on_line(answer_lines[-1].group("rest"))
        if value is not None:
            return Extraction(value, "the_answer_is", matched)
    found = _numbers(text)
    if found:
        return Extraction(found[-1][0], "last_number", found[-1][1])
    return Extraction(None, "none")


def trim_after_final_answer(text: str) -> str:
    """`text` up to the end of its last `Final answer:` line (or of the next non-empty line when the
    number stands there), dropping whatever the model added after its answer; unchanged without one."""
    markers = list(_FINAL_RE.finditer(text))
    if not markers:
        return text
    start = markers[-1].end()
    end = text.find("\n", start)
    if end == -1:
        return text
    if not _numbers(text[start:end]):
        following = re.compile(r"[^\s].*").search(text, end)
        if following is None:
            return text[:end].rstrip()
        end = following.end()
    return text[:end].rstrip()


def has_final_answer(text: str) -> bool:
    """True when the text states its answer (`Final answer:` or `The answer is` with a number)."""
    return extract_answer(text).rule in ("final_answer", "the_answer_is")


def answers_match(predicted: float | None, gold: float, rel_tol: float = 1e-6) -> bool:
    """Equality of a predicted number and the gold: exact for integer golds (up to FLOAT_NOISE),
    relative tolerance `rel_tol` otherwise. None, NaN and infinities never match."""
    if predicted is None or not math.isfinite(predicted) or not math.isfinite(gold):
        return False
    if float(gold).is_integer():
        return abs(predicted - gold) <= FLOAT_NOISE * max(1.0, abs(gold))
    return math.isclose(predicted, gold, rel_tol=rel_tol, abs_tol=0.0)


def format_number(value: float) -> str:
    """A number as an answer is written: integers without `.0`, others without float noise."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    text = f"{value:.12g}"  # 12 significant digits hide float noise (0.1 + 0.2 -> 0.3)
    return repr(value) if "e" in text else text
