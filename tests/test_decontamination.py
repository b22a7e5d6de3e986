"""n-gram overlap between training problems (and prompt exemplars) and evaluation questions."""

from __future__ import annotations

import pytest

from distill.decontamination import ngrams, overlaps
from distill.strategies.exemplars import EXEMPLARS

TRAIN = [("t1", ("Ravi has 4 stickers and wins 5 more stickers at the fair on a sunny Sunday afternoon. "
                "How many stickers does Ravi have now?")),
         ("t2", "A train travels 60 miles per hour for 3 hours. How far does it go?")]
EVAL = [("e1", "Mateo picks 11 lemons. He sells 9. How many lemons are left?"),  # clean
        ("e2", ("Ravi has 4 stickers and wins 5 more stickers at the fair on a sunny Sunday afternoon. "
               "How many does he own?")),  # planted: the first 19 words of t1
        ("e3", EXEMPLARS[0].question.upper() + " Explain."),  # planted: an exemplar, shouted
        ("e4", "a train travels 60 miles per hour for 3 hours. how far does it go?")]  # short, copied whole


def test_planted_overlaps_are_found_and_clean_questions_are_not():
    found = overlaps(TRAIN, EVAL, n=13)
    pairs = {(o.question_id, o.source_id) for o in found}
    assert ("e2", "t1") in pairs and ("e3", f"exemplar:{EXEMPLARS[0].id}") in pairs
    assert not [o for o in found if o.question_id == "e1"]
    e2 = next(o for o in found if o.question_id == "e2")
    assert e2.shared == 19 - 13 + 1 and len(e2.example.split()) == 13  # 19 words in common, then "does"


def test_a_question_shorter_than_n_matches_its_exact_copy():
    found = overlaps(TRAIN, EVAL, n=20)
    assert ("e4", "t2") in {(o.question_id, o.source_id) for o in found}


def test_exemplars_can_be_left_out_and_n_must_be_positive():
    assert not [o for o in overlaps(TRAIN, EVAL, n=13, include_exemplars=False) if o.source_id.startswith("exemplar")]
    with pytest.raises(ValueError, match="at least 1"):
        overlaps(TRAIN, EVAL, n=0)


def test_ngrams_normalise_case_and_punctuation_and_keep_numbers():
    assert ngrams("Tom's 3.5 apples, $1,200!", 2) == {("tom", "s"), ("s", "3.5"), ("3.5", "apples"),
                                                     ("apples", "1,200")}
