"""Word n-gram overlap between training text and evaluation questions.

    found = overlaps(train=[("t1", "Tom has 3 apples ...")], evaluation=[("e7", "...")], n=13)
    # [Overlap(question_id="e7", source_id="t1", shared=3, example="tom has 3 apples and ...")]

An evaluation question overlaps a training problem (or a prompt exemplar) when they share at least
one word n-gram after normalisation (lower case, words and numbers only): the test of GPT-3's
contamination study (Brown et al. 2020, appendix C), with its n = 13 as the default. Shorter n flag
phrasing that word problems share without being copies: on GSM8K, 8-grams flag 80 of the 1,319 test
questions ("how many ... does she have left"), 13-grams 3, each a near copy of a training problem.
Exact copies of the prompt exemplars are already removed from every set when it is frozen
(distill.strategies.exemplars); this finds near copies. A text shorter than n words counts as one
n-gram of all its words (it matches its own exact copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from distill.strategies.exemplars import EXEMPLARS

WORD = re.compile(r"[a-z0-9]+(?:[.,/][0-9]+)*")
DEFAULT_N = 13


@dataclass(frozen=True)
class Overlap:
    question_id: str  # the evaluation question
    source_id: str  # the training problem, or `exemplar:<id>`
    shared: int  # distinct n-grams the two share
    example: str  # one shared n-gram, for the reader


def words(text: str) -> list[str]:
    return WORD.findall((text or "").lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Distinct word n-grams of `text`; a text shorter than n words is one n-gram of all its words,
    so a short question copied whole still matches."""
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {tuple(w)}
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def exemplar_texts() -> list[tuple[str, str]]:
    """(`exemplar:<id>`, question) of every prompt exemplar of the teacher."""
    return [(f"exemplar:{e.id}", e.question) for e in EXEMPLARS]


def overlaps(train: Iterable[tuple[str, str]], evaluation: Iterable[tuple[str, str]], n: int = DEFAULT_N,
             include_exemplars: bool = True) -> list[Overlap]:
    """Every (evaluation question, training problem or exemplar) pair sharing an n-gram, in
    evaluation order. `train`, `evaluation`: (id, text) pairs."""
    if n < 1:
        raise ValueError(f"n-gram length must be at least 1, got {n}")
    sources = list(train) + (exemplar_texts() if include_exemplars else [])
    index: dict[tuple[str, ...], list[str]] = {}
    for source_id, text in sources:
        for gram in ngrams(text, n):
            index.setdefault(gram, []).append(source_id)
    found = []
    for question_id, text in evaluation:
        shared: dict[str, list[tuple[str, ...]]] = {}
        for gram in ngrams(text, n):
            for source_id in index.get(gram, ()):
                shared.setdefault(source_id, []).append(gram)
        for source_id, grams in shared.items():
            found.append(Overlap(question_id, source_id, len(grams), " ".join(min(grams))))
    return found
