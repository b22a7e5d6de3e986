"""Evaluation of a student (docs/method.md, section 9): greedy decoding, or samples for self-consistency.

- rationale mode (SIKeD): the student writes a strategy tag and a solution; the answer is parsed by
  the sample's own tag (PoT programs run in the sandbox).
- label mode (DSS): the student writes the bare answer.
- sampled mode (self-consistency): `eval.sampled.n` rationale samples per question at a temperature;
  `summarize_sampled` gives maj@k (the most frequent answer is right), pass@k (some sample is right)
  and pass@1 (the mean share of right samples).
- forced modes (`forced_cot`, `forced_l2m`, `forced_pot`; SIKeD's per-strategy analysis): the
  rationale prompt primed with one strategy's tag, so the student solves with that strategy; the
  tag is put back in front of the completion before it is parsed and stored. Together they give
  each strategy's accuracy and the any-strategy oracle beside the student's own choice.

`evaluate` returns per-question PREDICTIONS rows and `summarize_predictions` the numbers of the
report: accuracy per benchmark and mode, per chosen strategy, the strategy histogram, the shares of
extraction failures and sandbox timeouts, and the protocol stored beside them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from distill.answers import answers_match
from distill.choices import gold_answers, label_choice_answer
from distill.config import SamplingConfig
from distill.engines.base import GenerationRequest
from distill.student_format import (
    forced_prompt,
    label_prompt,
    parse_label_output,
    parse_student_output,
    rationale_prompt,
    strategy_tag,
    student_prompt_hash,
)
from distill.verify import PARSER_VERSION, verify_samples

FORCED_MODES = ("forced_cot", "forced_l2m", "forced_pot")
SAMPLED_MODE = "sampled"
MODES = ("rationale", "label", *FORCED_MODES, SAMPLED_MODE)
EXTRACTION_FAILURES = ("no_answer", "bad_format")
# Rules that read an answer the model stated as its answer (or a program's result): the strict
# score. The flexible score, the pipeline's own, also accepts the last number of the text.
STRICT_RULES = ("final_answer", "the_answer_is", "program", "label", "choice")


def greedy(max_tokens: int) -> SamplingConfig:
    """Greedy decoding; the student's own end-of-sequence token ends an answer."""
    return SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=["### Instruction"])


def forced_strategy(mode: str) -> str | None:
    """The strategy a forced mode primes (`forced_pot` -> `pot`), None for the other modes."""
    return mode.removeprefix("forced_") if mode in FORCED_MODES else None


def _prompt(mode: str, question: str) -> str:
    if mode == "label":
        return label_prompt(question)
    forced = forced_strategy(mode)
    return forced_prompt(question, forced) if forced else rationale_prompt(question)


def evaluate(engine, problems: list[Mapping[str, Any]], benchmark: str, mode: str, max_tokens: int,
             model: str, sandbox=None, limits=None, lora_path: str | None = None, rel_tol: float = 1e-6,
             sampling: SamplingConfig | None = None) -> list[dict[str, Any]]:
    """PREDICTIONS rows for `problems` (dicts with id, question, answer) in `mode`, greedy. Mode
    `sampled` draws `sampling.n` rationale completions per question instead: one row per sample,
    with its `sample_index` (SAMPLED_PREDICTIONS)."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == SAMPLED_MODE and sampling is None:
        raise ValueError("mode 'sampled' needs its sampling settings (eval.sampled)")
    sampling = sampling.model_copy(update={"max_tokens": max_tokens}) if mode == SAMPLED_MODE else greedy(max_tokens)
    requests = [GenerationRequest(key=p["id"], prompt=_prompt(mode, p["question"]), question_id=p["id"])
                for p in problems]
    gold, choices = gold_answers(problems)  # multiple choice: the correct choice's index
    outputs = engine.generate(requests, sampling, lora_path=lora_path)
    samples = []
    forced = forced_strategy(mode)
    for problem, completions in zip(problems, outputs, strict=True):
        for index, completion in enumerate(completions if mode == SAMPLED_MODE else completions[:1]):
            text = completion.text
            if forced:  # the primed tag is part of the prompt; the solution is read with it
                text = strategy_tag(forced) + text
            strategy = parse_student_output(text)[0] if mode != "label" else "label"
            samples.append({"question_id": problem["id"], "strategy": strategy or "none", "text": text,
                            "finish_reason": completion.finish_reason, "gold": float(gold[problem["id"]]),
                            "sample_index": index})
    verified = _verify(samples, mode, sandbox, limits, rel_tol, choices)
    decoding = json.dumps(sampling.model_dump(mode="json"), sort_keys=True)
    rows = []
    for sample, result in zip(samples, verified, strict=True):
        rows.append({
            **({"sample_index": sample["sample_index"]} if mode == SAMPLED_MODE else {}),
            "question_id": sample["question_id"], "benchmark": benchmark, "mode": mode,
            "strategy": sample["strategy"] if mode != "label" else None,
            "text": sample["text"], "gold": sample["gold"], "predicted": result["predicted"],
            "verdict": result["verdict"], "rule": result["rule"], "finish_reason": sample["finish_reason"],
            "model": model, "prompt_hash": student_prompt_hash("label" if mode == "label" else "rationale",
                                                               sample["question_id"] in choices),
            "parser_version": PARSER_VERSION,
            "decoding": decoding,
        })
    return rows


def _verify(samples: list[dict], mode: str, sandbox, limits, rel_tol: float,
            choices: Mapping[str, list[str]]) -> list[dict]:
    if mode != "label":
        return verify_samples(samples, sandbox=sandbox, limits=limits, rel_tol=rel_tol, choices=choices)
    return [_verify_label(s, rel_tol, choices.get(s["question_id"])) for s in samples]


def _verify_label(sample: Mapping[str, Any], rel_tol: float, listed: list[str] | None = None) -> dict[str, Any]:
    """Label mode: the completion is the bare answer; its first number is the prediction (for a
    multiple-choice question, the choice whose text it is exactly, as DSS scores it)."""
    value = parse_label_output(sample["text"]) if listed is None else label_choice_answer(sample["text"], listed)
    if value is None:
        verdict = "truncated" if sample["finish_reason"] == "length" else "no_answer"
    else:
        verdict = "correct" if answers_match(value, sample["gold"], rel_tol) else "wrong"
    return {"predicted": value, "verdict": verdict, "rule": "label" if value is not None else "none"}


def summarize_predictions(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy and failure shares of one (benchmark, mode) prediction set, with its protocol."""
    total = len(rows)
    correct = sum(r["verdict"] == "correct" for r in rows)
    by_strategy: dict[str, Counter] = {}
    for r in rows:
        by_strategy.setdefault(str(r["strategy"]), Counter())[r["verdict"] == "correct"] += 1
    first = rows[0] if rows else {}
    return {
        "benchmark": first.get("benchmark"), "mode": first.get("mode"), "n": total,
        "accuracy": correct / total if total else 0.0,
        # strict: only answers stated as the answer (or a program's result), beside the flexible score
        "accuracy_strict": sum(r["verdict"] == "correct" and r["rule"] in STRICT_RULES for r in rows) / total
        if total else 0.0,
        "accuracy_by_strategy": {s: c[True] / (c[True] + c[False]) for s, c in sorted(by_strategy.items())},
        "strategy_histogram": {s: c[True] + c[False] for s, c in sorted(by_strategy.items())},
        "extraction_failure_rate": sum(r["verdict"] in EXTRACTION_FAILURES for r in rows) / total if total else 0.0,
        "sandbox_timeout_rate": sum(r["verdict"] == "timeout" for r in rows) / total if total else 0.0,
        "protocol": {"model": first.get("model"), "prompt_hash": first.get("prompt_hash"),
                     "parser_version": first.get("parser_version"), "decoding": first.get("decoding")},
    }


def majority_answer(predicted: list[float | None]) -> float | None:
    """The most frequent answer among samples (None: no sample gave one); ties go to the answer
    reached first, so the vote does not depend on how values sort. Answers within 1e-9 are one."""
    counts: dict[float, int] = {}
    first: dict[float, int] = {}
    for i, value in enumerate(predicted):
        if value is None or not math.isfinite(value):
            continue
        key = round(value, 9)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], -first[v]))


def sampled_outcomes(rows: list[Mapping[str, Any]], rel_tol: float = 1e-6) -> list[dict[str, Any]]:
    """Per question of SAMPLED_PREDICTIONS rows: k, correct samples, majority answer, maj@k and pass@k."""
    by_question: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_question.setdefault(r["question_id"], []).append(r)
    out = []
    for question_id, samples in by_question.items():
        samples = sorted(samples, key=lambda r: r["sample_index"])
        majority = majority_answer([r["predicted"] for r in samples])
        correct = sum(r["verdict"] == "correct" for r in samples)
        out.append({"question_id": question_id, "k": len(samples), "correct_samples": correct,
                    "majority": majority, "maj_at_k": majority is not None
                    and answers_match(majority, samples[0]["gold"], rel_tol), "pass_at_k": correct > 0})
    return out


def summarize_sampled(rows: list[Mapping[str, Any]], rel_tol: float = 1e-6) -> dict[str, Any]:
    """The sampled mode's summary: `accuracy` is maj@k; pass@k and pass@1 beside it."""
    per_question = sampled_outcomes(rows, rel_tol)
    summary = summarize_predictions(rows)
    n = len(per_question)
    summary.update({
        "n": n, "k": max((q["k"] for q in per_question), default=0), "samples": len(rows),
        "accuracy": sum(q["maj_at_k"] for q in per_question) / n if n else 0.0,
        "maj_at_k": sum(q["maj_at_k"] for q in per_question) / n if n else 0.0,
        "pass_at_k": sum(q["pass_at_k"] for q in per_question) / n if n else 0.0,
        "pass_at_1": sum(q["correct_samples"] / q["k"] for q in per_question) / n if n else 0.0,
    })
    return summary
