"""The 8 exemplar problems shared by the CoT, L2M and PoT teacher prompts.

The same 8 GSM8K-train problems as the SIKeD reference prompts (github shivam0109/SIKeD,
`dataset_creation/PROMPTS/*-prompt.txt`), in the same order. The worked solutions in cot.py, l2m.py
and pot.py are this project's own. Ids follow the benchmark loader: `gsm8k/train/<n>` with n the
0-based line of `gsm8k/train.jsonl`. These problems must never be training questions or evaluation
problems: EXEMPLAR_IDS excludes them by id, EXEMPLAR_QUESTIONS (with `normalize_question`) by text
for benchmarks with other ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Exemplar:
    id: str
    question: str  # verbatim from train.jsonl (double spaces included)
    answer: float  # the gold after `####`


EXEMPLARS: tuple[Exemplar, ...] = (
    Exemplar(
        "gsm8k/train/3365",
        "John buys 3 dress shirts.  They sell for $20 each.  He also has to pay 10% tax on everything.  "
        "How much did he pay in total?",
        66,
    ),
    Exemplar(
        "gsm8k/train/1168",
        "Arwen and Elrond picked some flowers. Arwen was able to get 20 tulips and Elrond was able to get "
        "twice as many tulips as Arwen did. How many tulips were they able to get in total?",
        60,
    ),
    Exemplar(
        "gsm8k/train/6454",
        "A group of nine turtles sat on a log.  Two less than three times the original number of turtles "
        "climbed onto the log with the original group, creating an even larger group on the log.  "
        "Suddenly, half of the large group of turtles were frightened by a sound and jumped off of the log "
        "and ran away.  How many turtles remained on the log?",
        17,
    ),
    Exemplar(
        "gsm8k/train/789",
        "James hurt himself exercising.  The pain subsided after 3 days, but he knew that the injury would "
        "take at least 5 times that long to fully heal. After that, he wanted to wait another 3 days before "
        "he started working out again.  If he wants to wait 3 weeks after that to start lifting heavy again, "
        "how long until he can lift heavy again?",
        39,
    ),
    Exemplar(
        "gsm8k/train/5259",
        "I caught 4 fewer fish than the number in my tank and added them to my fish tank. If the tank has "
        "20 fish right now, how many did I add?",
        8,
    ),
    Exemplar(
        "gsm8k/train/3016",
        "Gary is buying chlorine for his rectangular pool, which is 10 feet long, 8 feet wide, and 6 feet "
        "deep. Gary needs to buy one quart of chlorine for every 120 cubic feet of water in his pool. If "
        "chlorine costs $3 a quart, how much does Gary spend on chlorine?",
        12,
    ),
    Exemplar(
        "gsm8k/train/7076",
        "The number of Oreos and cookies in a box is in the ratio 4:9. Zane bought each Oreo at $2 and each "
        "cookie at $3. How much more money did Zane spend on buying the cookies than buying the Oreos if the "
        "total number of items in the box is 65?",
        95,
    ),
    Exemplar(
        "gsm8k/train/3289",
        "Linda is building a new hotel with two wings. The first wing has 9 floors and each floor has 6 halls "
        "each with 32 rooms. The second wing has 7 floors each with 9 halls with 40 rooms each. How many "
        "rooms are in the hotel total?",
        4248,
    ),
)

EXEMPLAR_IDS: frozenset[str] = frozenset(e.id for e in EXEMPLARS)


def normalize_question(text: str) -> str:
    """Question text for matching across sources: lower case, single spaces, no outer space."""
    return re.sub(r"\s+", " ", text or "").strip().lower()


EXEMPLAR_QUESTIONS: frozenset[str] = frozenset(normalize_question(e.question) for e in EXEMPLARS)


def is_exemplar(question_id: str | None = None, question: str | None = None) -> bool:
    """True when a problem is one of the prompt exemplars, by id or by (normalized) question text."""
    if question_id is not None and question_id in EXEMPLAR_IDS:
        return True
    return question is not None and normalize_question(question) in EXEMPLAR_QUESTIONS
