"""The built-in `arith` benchmark: deterministic, exact, as hard as asked, train and test disjoint."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from distill.benchmarks import load_benchmark
from distill.benchmarks.arith import ITEMS, NAMES, generate, split_of
from distill.config import BenchmarkRef
from distill.numbers import evaluate_exact

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_generation_is_deterministic_and_extends_with_size():
    assert generate(2, "train", 100, seed=7) == generate(2, "train", 100, seed=7)
    assert generate(2, "train", 100, seed=7)[:40] == generate(2, "train", 40, seed=7)
    assert {p.question for p in generate(2, "train", 100, seed=7)} != \
           {p.question for p in generate(2, "train", 100, seed=8)}


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_answers_are_exact_and_difficulty_counts_operations(difficulty):
    for problem in generate(difficulty, "train", 300, seed=0) + generate(difficulty, "test", 100, seed=0):
        assert len(problem.operations) == difficulty
        assert len(re.findall(r" [-+*/] ", problem.expression)) == difficulty
        value = evaluate_exact(problem.expression)  # exact: a division that leaves a remainder shows
        assert value.denominator == 1 and value == problem.answer >= 0
        assert isinstance(problem.answer, int)
        steps = STEP.findall(problem.solution)
        assert len(steps) == difficulty
        for left, op, right, result in steps:  # every line of the reference solution is right
            assert evaluate_exact(f"{left} {op} {right}") == int(result)
        assert steps[-1][3] == str(problem.answer)
        assert problem.solution.endswith(f"The answer is {problem.answer}.")
        assert problem.question.endswith("?") and problem.question.count("?") == 1


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_train_and_test_share_no_question(difficulty):
    train = {p.question for seed in (0, 1) for p in generate(difficulty, "train", 500, seed)}
    test = {p.question for seed in (0, 1) for p in generate(difficulty, "test", 200, seed)}
    assert not train & test
    assert all(split_of(q) == "train" for q in train) and all(split_of(q) == "test" for q in test)
    assert len(generate(difficulty, "train", 500, 0)) == len({p.question for p in generate(difficulty, "train", 500, 0)})


def test_difficulty_one_is_simple_and_varied():
    problems = generate(1, "train", 500, seed=0)
    assert max(p.answer for p in problems) <= 100
    assert all(p.answer >= 2 for p in problems)
    assert all(len(p.question.split()) <= 30 for p in problems)
    assert set(Counter(p.operations[0] for p in problems)) == {"+", "-", "*", "/"}
    assert len({name for name, _ in NAMES if any(p.question.startswith(name + " ") for p in problems)}) >= 25
    assert len({item.noun for item in ITEMS if any(item.noun in p.question for p in problems)}) >= 20
    openings = Counter(re.sub(r"\d+", "N", p.question.split(" ", 1)[1])[:25] for p in problems)
    assert len(openings) >= 40  # many sentence shapes, not one template
    plain = re.compile(r"^(\w+) has (\d+) ([a-z ]+) and buys (\d+) more \3\. How many \3 does \1 have now\?$")
    assert any(plain.match(p.question) for p in problems)  # "Tom has 5 apples and buys 3 more apples. ..."


def test_load_benchmark_gives_problem_records_with_stable_ids():
    ref = BenchmarkRef(name="arith", split="test", difficulty=3, size=30, seed=5)
    problems, exclusions, source = load_benchmark(ref, None)
    assert exclusions == [] and len(problems) == 30 and "difficulty 3" in source
    assert [p.id for p in problems] == [f"arith/d3/s5/test/{i}" for i in range(30)]
    generated = generate(3, "test", 30, seed=5)
    assert [(p.question, p.answer, p.answer_text, p.reference) for p in problems] == \
           [(g.question, float(g.answer), str(g.answer), g.solution) for g in generated]
    subset = load_benchmark(ref.model_copy(update={"limit": 10}), None).problems
    assert len(subset) == 10 and set(subset) <= set(problems)
