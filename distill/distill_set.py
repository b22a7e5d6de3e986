"""The distillation set (docs/method.md, section 3): verified samples -> training examples.

- `select_correct`: the correct samples, one per (question, strategy): the correct one with the
  lowest sample index. Exemplar problems of the teacher prompts are dropped (and counted) even if an
  upstream step let one through.
- `select_given`: for rationales given rather than generated (`teacher.given_rationales: all`),
  one row per (question, strategy) whatever answer it states, as Distilling Step-by-Step trains on
  its PaLM rationales: the rationale cut before its answer statement and ending with the gold
  answer (`Final answer: 42`, `Final answer: (c) wooded area`). A program (PoT) cannot be given
  the gold answer: it is kept only when correct.
- `bias`: one row per question, the first strategy of a priority order that has a correct sample.
  The orders follow the SIKeD reference code (`create_data.py`): cot: cot > pot > l2m; pot: pot > cot
  > l2m; l2m: l2m > pot > cot.
- `summarize`: per-strategy counts (generated, correct, kept) and the verdict histograms.

Rows out have the TRAIN_EXAMPLES columns: question_id, question, gold, strategy, text (the solution
without its strategy tag: the program for PoT; for CoT / L2M the text through its `Final answer:`
line), sample_index, source, iteration, model.

    from distill.distill_set import build_distill_set
    rows, stats = build_distill_set(verified_rows, questions={"gsm8k/train/0": "Natalia sold ..."})
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from distill.answers import format_number, trim_after_final_answer
from distill.choices import LETTERS, listed_choices
from distill.strategies import EXEMPLAR_IDS, STRATEGIES, get_strategy
from distill.verify import VERDICTS, records, sample_strategy

BIAS_PRIORITY: dict[str, tuple[str, ...]] = {
    "cot": ("cot", "pot", "l2m"),
    "pot": ("pot", "cot", "l2m"),
    "l2m": ("l2m", "pot", "cot"),
}
TRAIN_FIELDS = ("question_id", "question", "gold", "strategy", "text", "sample_index", "source", "iteration",
                "model")


def solution_text(strategy: str, text: str) -> str:
    """The training text of a sample: no tag, no exemplar boundary, nothing after the final answer;
    for PoT the program alone (code fences removed)."""
    solution = get_strategy(strategy).parse(text).solution
    return solution if strategy == "pot" else trim_after_final_answer(solution)


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # pandas turns null ints into NaN
        return None
    return int(value)


def _strategy(row: Mapping[str, Any]) -> str:
    return sample_strategy(row)[0] or str(row.get("strategy") or "none")


def select_correct(verified: Iterable[Mapping[str, Any]], questions: Mapping[str, str],
                   exclude_ids: Iterable[str] = EXEMPLAR_IDS) -> list[dict[str, Any]]:
    """One training row per (question, strategy) from the correct samples: the lowest sample index.
    Rows come in first-seen question order, strategies in cot, l2m, pot order."""
    exclude = set(exclude_ids)
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    order: dict[str, int] = {}
    for row in records(verified):
        if row.get("verdict") != "correct" or row["question_id"] in exclude:
            continue
        key = (row["question_id"], _strategy(row))
        order.setdefault(row["question_id"], len(order))
        if key not in best or int(row["sample_index"]) < int(best[key]["sample_index"]):
            best[key] = row
    rank = {name: i for i, name in enumerate(STRATEGIES)}
    ordered = sorted(best.items(), key=lambda kv: (order[kv[0][0]], rank[kv[0][1]]))
    return [_training_row(row, strategy, questions) for (_, strategy), row in ordered]


def _training_row(sample: Mapping[str, Any], strategy: str, questions: Mapping[str, str]) -> dict[str, Any]:
    """A TRAIN_EXAMPLES row of a verified sample: its question's text, its training text
    (`solution_text`) and its provenance."""
    question_id = sample["question_id"]
    if question_id not in questions:
        raise KeyError(f"no question text for {question_id!r}")
    return {"question_id": question_id, "question": questions[question_id], "gold": float(sample["gold"]),
            "strategy": strategy, "text": solution_text(strategy, str(sample["text"])),
            "sample_index": int(sample["sample_index"]), "source": sample.get("source"),
            "iteration": _optional_int(sample.get("iteration")), "model": sample.get("model")}


def select_all(verified: Iterable[Mapping[str, Any]], questions: Mapping[str, str],
                exclude_ids: Iterable[str] = EXEMPLAR_IDS) -> list[dict[str, Any]]:
    """Every sample with a known strategy, right or wrong, in sample order: on-policy distillation's
    rows (its teacher judges every token, so no verdict filters them). Columns as `select_correct`."""
    exclude = set(exclude_ids)
    return [_training_row(row, strategy, questions) for row in records(verified)
            if (strategy := sample_strategy(row)[0]) is not None and row["question_id"] not in exclude]


def gold_statement(gold: float, question: str) -> str:
    """The gold answer as a `Final answer:` line states it: the number, or for a multiple-choice
    question (its choices listed, `gold` the correct one's index) `(c) <choice text>`."""
    choices = listed_choices(question)
    if choices:
        return f"({LETTERS[int(gold)]}) {choices[int(gold)]}"
    return format_number(gold)


def with_gold_answer(rationale: str, gold: float, question: str) -> str | None:
    """A given rationale cut before its answer statement (`The answer is`, `So the answer is`,
    `Final answer:`), then `Final answer: <gold>`; None when it states no answer or nothing comes
    before the statement (DSS's parse finds no rationale there either)."""
    from distill.student_format import dss_rationale_target, states_answer

    if not states_answer(rationale):
        return None
    kept = dss_rationale_target(rationale)
    return f"{kept}\nFinal answer: {gold_statement(gold, question)}" if kept else None


def select_given(verified: Iterable[Mapping[str, Any]], questions: Mapping[str, str],
                 exclude_ids: Iterable[str] = EXEMPLAR_IDS) -> list[dict[str, Any]]:
    """One training row per (question, strategy) from given rationales, right or wrong: the lowest
    sample index among a question's usable samples (a CoT / L2M text that states an answer, its
    statement replaced by the gold's; a correct program). Order and columns as `select_correct`."""
    exclude = set(exclude_ids)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    order: dict[str, int] = {}
    for row in records(verified):
        strategy = sample_strategy(row)[0]
        if strategy is None or row["question_id"] in exclude:
            continue
        if row["question_id"] not in questions:
            raise KeyError(f"no question text for {row['question_id']!r}")
        question = questions[row["question_id"]]
        if strategy == "pot":
            text = solution_text(strategy, str(row["text"])) if row.get("verdict") == "correct" else None
        else:
            text = with_gold_answer(get_strategy(strategy).parse(str(row["text"])).solution, float(row["gold"]),
                                    question)
        key = (row["question_id"], strategy)
        if text is None or (key in best and int(row["sample_index"]) >= best[key]["sample_index"]):
            continue
        order.setdefault(row["question_id"], len(order))
        best[key] = {"question_id": row["question_id"], "question": question, "gold": float(row["gold"]),
                     "strategy": strategy, "text": text, "sample_index": int(row["sample_index"]),
                     "source": row.get("source"), "iteration": _optional_int(row.get("iteration")),
                     "model": row.get("model")}
    rank = {name: i for i, name in enumerate(STRATEGIES)}
    return [row for (_, _), row in sorted(best.items(), key=lambda kv: (order[kv[0][0]], rank[kv[0][1]]))]


def bias(examples: Iterable[Mapping[str, Any]], prefer: str) -> list[dict[str, Any]]:
    """One row per question: its strategy ranked highest in BIAS_PRIORITY[prefer] (order kept)."""
    if prefer not in BIAS_PRIORITY:
        raise ValueError(f"biased set for {prefer!r}? choose one of {', '.join(BIAS_PRIORITY)}")
    rank = {name: i for i, name in enumerate(BIAS_PRIORITY[prefer])}
    chosen: dict[str, Mapping[str, Any]] = {}
    for row in records(examples):
        current = chosen.get(row["question_id"])
        if current is None or rank[row["strategy"]] < rank[current["strategy"]]:
            chosen[row["question_id"]] = row
    return [dict(row) for row in chosen.values()]


def summarize(verified: Iterable[Mapping[str, Any]], kept: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts for the run report: per strategy generated / correct / kept (rows of the final set) /
    questions solved, the verdict histogram overall and per strategy, and question coverage."""
    verified = records(verified)
    kept = records(kept)
    generated = Counter(_strategy(r) for r in verified)
    correct = Counter(_strategy(r) for r in verified if r.get("verdict") == "correct")
    kept_by = Counter(r["strategy"] for r in kept)
    solved: dict[str, set] = {}
    by_strategy: dict[str, Counter] = {}
    for row in verified:
        name = _strategy(row)
        by_strategy.setdefault(name, Counter())[row.get("verdict")] += 1
        if row.get("verdict") == "correct":
            solved.setdefault(name, set()).add(row["question_id"])
    names = list(STRATEGIES) + sorted(set(generated) - set(STRATEGIES))
    return {
        "per_strategy": {
            name: {"generated": generated[name], "correct": correct[name], "kept": kept_by[name],
                   "questions_solved": len(solved.get(name, ()))}
            for name in names if generated[name] or kept_by[name]
        },
        "verdicts": {v: sum(c[v] for c in by_strategy.values()) for v in VERDICTS},
        "verdicts_by_strategy": {name: {v: c[v] for v in VERDICTS} for name, c in by_strategy.items()},
        "questions": len({r["question_id"] for r in verified}),
        "questions_solved": len(set().union(*solved.values())) if solved else 0,
        "rows": len(kept),
    }


def build_distill_set(verified: Iterable[Mapping[str, Any]], questions: Mapping[str, str],
                      biased: str | None = None,
                      exclude_ids: Iterable[str] = EXEMPLAR_IDS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(training rows, stats): the correct samples one per (question, strategy), or with `biased`
    one per question by that strategy's priority."""
    verified = records(verified)
    exclude = set(exclude_ids)
    rows = select_correct(verified, questions, exclude)
    if biased is not None:
        rows = bias(rows, biased)
    stats = summarize(verified, rows)
    stats["biased"] = biased
    stats["excluded_exemplar_rows"] = sum(1 for r in verified if r["question_id"] in exclude)
    return rows, stats
