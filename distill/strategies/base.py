"""What a strategy is (an instruction, worked exemplars, a parser) and the text clean-up they share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Lines that open the next block of the Alpaca few-shot format; a completion ends before them.
BOUNDARY_MARKERS = ("### Instruction", "### Input", "### Response")
_BOUNDARY_RE = re.compile(r"^[ \t]*###[ \t]*(?:Instruction|Input|Response)\b.*$", re.IGNORECASE | re.MULTILINE)
_LEADING_RESPONSE_RE = re.compile(r"^\s*###[ \t]*Response[ \t]*:?[ \t]*\n?", re.IGNORECASE)
# A strategy tag as the student writes it: `[cot]: ...`; `[cot]` without the colon and `cot:` without
# the brackets are read too (a bare `cot` is not: it could be the first word of a solution).
TAG_RE = re.compile(r"^\s*(?:\[\s*(?P<bracketed>cot|l2m|pot)\s*\][ \t]*:?|(?P<bare>cot|l2m|pot)[ \t]*:)",
                    re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """A completion read by its strategy's parser.

    CoT / L2M fill `value` and `rule`; PoT fills `code` (its answer comes from running it).
    A non-empty `format_error` means the text breaks the strategy's format (verdict bad_format).
    """

    strategy: str
    solution: str  # the cleaned solution text (no tag, no trailing exemplar boundary)
    value: float | None = None
    rule: str = "none"  # final_answer | the_answer_is | last_number | none | program
    code: str | None = None
    format_error: str = ""


@dataclass(frozen=True)
class Strategy:
    """A strategy as data: how the teacher is asked, 8 worked exemplars, and how to read an answer."""

    name: str  # cot | l2m | pot
    instruction: str  # the `### Instruction:` text of the few-shot prompt
    solutions: tuple[str, ...]  # one worked solution per exemplar problem, in EXEMPLARS order
    parse: Callable[[str], Parsed]


def strip_tag(text: str) -> tuple[str | None, str]:
    """(`cot` | `l2m` | `pot` | None, the text after a leading strategy tag)."""
    match = TAG_RE.match(text or "")
    if not match:
        return None, text or ""
    return (match.group("bracketed") or match.group("bare")).lower(), text[match.end():]


def clean_completion(text: str) -> str:
    """The solution part of a completion: no leading strategy tag or `### Response:` line, and
    nothing from the first exemplar-boundary line on (models that miss the stop string go on to
    invent the next problem, whose `Final answer:` must not be read as this one's)."""
    _, text = strip_tag(text or "")
    text = _LEADING_RESPONSE_RE.sub("", text, count=1)
    boundary = _BOUNDARY_RE.search(text)
    if boundary:
        text = text[: boundary.start()]
    return text.strip()
