"""Verification (docs/method.md, section 3): every sample gets a verdict, a reason and the rule that read it.

Rows in: the SAMPLES columns (question_id, strategy, sample_index, text, finish_reason, ...), with the
gold either in a `gold` column or in a `{question_id: gold}` mapping. Rows out: the same columns plus
gold, predicted, verdict, reason, rule, parser_version, exec_seconds (the VERIFIED columns).

Which parser reads a sample is decided by the sample itself, never by the batch: its `strategy`
column, or, when that is empty or `none` (a student that wrote no tag), the tag at the start of its
text. A tag that disagrees with the column is bad_format.

Verdicts, in the order they are decided:
1. bad_format: the sample has no known strategy (no tag, an unknown name, a tag that disagrees).
2. truncated: the engine stopped at the token limit (finish_reason `length`) before the sample stated
   its answer. For CoT / L2M: no `Final answer:` / `The answer is` line with a number (a number found
   by the last-number fallback is not a stated answer); for PoT: a program that did not run to a
   numeric `answer`. A length-limited sample that did state its answer is judged like any other.
   This comes before the format checks: a cut-off sample may simply not have reached its structure.
3. bad_format: an L2M sample without `Sub-question k:` lines or with a sub-question left unanswered
   (even when its number is right); a PoT completion with no program; a program the sandbox cannot
   parse (syntax error).
4. no_answer: no number in a CoT / L2M text, or a program that ran but left no numeric `answer`.
5. exec_error / timeout: the program failed, or ran out of time, in the sandbox.
6. correct / wrong: the predicted number equals the gold or not (`distill.answers.answers_match`:
   exact for integer golds, relative tolerance `rel_tol` otherwise).
`predicted` keeps whatever number was read even when the verdict is not correct/wrong (diagnostics).

    from distill.verify import verify_samples
    verified = verify_samples(rows, gold={"gsm8k/train/0": 72.0}, sandbox=pool)  # pool: SandboxPool
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from distill.answers import answers_match, format_number
from distill.strategies import STRATEGIES, get_strategy, strip_tag

PARSER_VERSION = "2"  # 2: arithmetic answer lines evaluated; `The answer is` mid-line
VERDICTS = ("correct", "wrong", "no_answer", "bad_format", "exec_error", "timeout", "truncated")
VERIFIED_FIELDS = ("gold", "predicted", "verdict", "reason", "rule", "parser_version", "exec_seconds")
STATED_RULES = ("final_answer", "the_answer_is")

# What runs PoT programs: SandboxPool.run_many or any callable with its signature, returning objects
# with SandboxResult's fields (answer, verdict, error, stderr_tail, seconds).
RunMany = Callable[[list[str]], list[Any]]


def records(rows: Any) -> list[dict[str, Any]]:
    """Rows as a list of dicts, from dicts, a pandas DataFrame or a pyarrow Table."""
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        return rows.to_dict("records")
    return [dict(row) for row in rows]


def sample_strategy(row: Mapping[str, Any]) -> tuple[str | None, str]:
    """(strategy, "") for a sample, or (None, why not) when it has no usable strategy."""
    column = str(row.get("strategy") or "").strip().lower()
    tag, _ = strip_tag(str(row.get("text") or ""))
    if column in STRATEGIES:
        if tag is not None and tag != column:
            return None, f"text is tagged [{tag}] but the sample's strategy is {column}"
        return column, ""
    if column in ("", "none", "auto"):
        if tag is not None:
            return tag, ""
        return None, "no strategy tag ([cot]:, [l2m]: or [pot]:) at the start of the text"
    return None, f"unknown strategy {column!r}"


def _gold_of(row: Mapping[str, Any], gold: Mapping[str, float] | None) -> float:
    value = row.get("gold")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if gold is None or row.get("question_id") not in gold:
            raise KeyError(f"no gold answer for question {row.get('question_id')!r}")
        value = gold[row["question_id"]]
    return float(value)


def _judged(predicted: float, gold: float, rel_tol: float, how: str) -> tuple[str, str]:
    if answers_match(predicted, gold, rel_tol):
        return "correct", f"{how} {format_number(predicted)} equals gold {format_number(gold)}"
    return "wrong", f"{how} {format_number(predicted)} differs from gold {format_number(gold)}"


def _choice_verdict(row: Mapping[str, Any], listed: Sequence[str], gold: float, truncated: bool
                    ) -> tuple[float | None, str, str, str]:
    """(predicted choice index, verdict, reason, rule) of a multiple-choice sample (`distill.choices`)."""
    from distill.choices import LETTERS, extract_choice

    index = extract_choice(str(row.get("text") or ""), listed)
    if index is None:
        return None, "truncated" if truncated else "no_answer", "names none of the listed choices", "none"
    said, right = f"({LETTERS[index]})", f"({LETTERS[int(gold)]})"
    if index == int(gold):
        return float(index), "correct", f"choice {said} is the gold choice", "choice"
    return float(index), "wrong", f"choice {said} differs from the gold choice {right}", "choice"


def _verdict_text(strategy: str, parsed, gold: float, truncated: bool, rel_tol: float) -> tuple[str, str]:
    """Verdict and reason of a CoT or L2M sample."""
    if truncated and parsed.rule not in STATED_RULES:
        return "truncated", "hit the token limit before stating a final answer"
    if parsed.format_error:
        return "bad_format", f"not a valid {strategy} sample: {parsed.format_error}"
    if parsed.value is None:
        return "no_answer", "no number in the text"
    return _judged(parsed.value, gold, rel_tol, parsed.rule.replace("_", " "))


def _verdict_program(result, gold: float, truncated: bool, rel_tol: float) -> tuple[str, str]:
    """Verdict and reason of a PoT sample from its SandboxResult."""
    answer = getattr(result, "answer", None)
    if result.verdict == "ok" and answer is not None and math.isfinite(answer):
        return _judged(float(answer), gold, rel_tol, "program answer")
    detail = (getattr(result, "error", "") or getattr(result, "stderr_tail", "") or "").strip()
    detail = detail.splitlines()[-1] if detail else ""
    sandbox_verdict = "no_answer" if result.verdict == "ok" else result.verdict
    if truncated:
        return "truncated", f"hit the token limit; the program gave {sandbox_verdict}" + (f": {detail}" if detail else "")
    if sandbox_verdict not in ("exec_error", "timeout", "no_answer", "bad_format"):
        return "exec_error", f"sandbox verdict {result.verdict!r}" + (f": {detail}" if detail else "")
    reasons = {"no_answer": "the program left no numeric `answer`", "timeout": "the program ran out of time",
               "exec_error": "the program failed", "bad_format": "the sandbox could not run the program"}
    return sandbox_verdict, reasons[sandbox_verdict] + (f": {detail}" if detail else "")


@contextlib.contextmanager
def _runner(sandbox, limits, workers: int):
    """A `run_many(codes)` callable from a SandboxPool, a callable, or a pool opened for the call."""
    if sandbox is not None:
        yield sandbox.run_many if hasattr(sandbox, "run_many") else sandbox
        return
    from distill.sandbox import SandboxLimits, SandboxPool

    with SandboxPool(limits or SandboxLimits(), workers) as pool:
        yield pool.run_many


def _run_programs(codes: list[str], sandbox, limits, workers: int) -> dict[str, Any]:
    """Run each distinct program once (teacher samples often repeat); {code: SandboxResult}."""
    unique = list(dict.fromkeys(codes))
    if not unique:
        return {}
    with _runner(sandbox, limits, workers) as run_many:
        results = list(run_many(unique))
    if len(results) != len(unique):
        raise RuntimeError(f"sandbox returned {len(results)} results for {len(unique)} programs")
    return dict(zip(unique, results, strict=True))


def verify_samples(samples: Iterable[Mapping[str, Any]], gold: Mapping[str, float] | None = None, *,
                   sandbox: Any | RunMany | None = None, limits: Any = None, workers: int = 2,
                   rel_tol: float = 1e-6, choices: Mapping[str, Sequence[str]] | None = None
                   ) -> list[dict[str, Any]]:
    """Verdict for every sample, in input order.

    `samples`: dicts, a DataFrame or a pyarrow Table with SAMPLES columns; `gold`: {question_id: gold} for rows
    without a `gold` column. PoT programs run through `sandbox`: a SandboxPool (anything with
    `run_many(codes)`), a `run_many` callable, or None to open a SandboxPool(`limits`, `workers`)
    for this call. `choices`: {question_id: listed choices} of multiple-choice questions, whose gold
    is the correct choice's index and whose samples are read for the choice they name. Returns the
    input records with the VERIFIED_FIELDS added.
    """
    rows = records(samples)
    plans = []
    for row in rows:
        strategy, problem = sample_strategy(row)
        parsed = get_strategy(strategy).parse(str(row.get("text") or "")) if strategy else None
        plans.append((strategy, problem, parsed))
    codes = [p.code for s, _, p in plans if s == "pot" and p is not None and p.code]
    results = _run_programs(codes, sandbox, limits, workers)

    out = []
    for row, (strategy, problem, parsed) in zip(rows, plans, strict=True):
        gold_value = _gold_of(row, gold)
        truncated = str(row.get("finish_reason") or "") == "length"
        predicted, rule, seconds = None, "none", None
        listed = (choices or {}).get(str(row.get("question_id")))
        if listed is not None:  # multiple choice: gold and prediction are choice indices
            predicted, verdict, reason, rule = _choice_verdict(row, listed, gold_value, truncated)
        elif strategy is None:
            verdict, reason = "bad_format", problem
        elif strategy == "pot":
            rule = "program"
            if parsed.format_error:
                verdict = "truncated" if truncated else "bad_format"
                reason = parsed.format_error
            else:
                result = results[parsed.code]
                seconds = float(result.seconds) if getattr(result, "seconds", None) is not None else None
                predicted = float(result.answer) if getattr(result, "answer", None) is not None else None
                verdict, reason = _verdict_program(result, gold_value, truncated, rel_tol)
        else:
            predicted, rule = parsed.value, parsed.rule
            verdict, reason = _verdict_text(strategy, parsed, gold_value, truncated, rel_tol)
        row.update(gold=gold_value, predicted=predicted, verdict=verdict, reason=reason, rule=rule,
                   parser_version=PARSER_VERSION, exec_seconds=seconds)
        out.append(row)
    return out


def sandbox_limits(cfg):
    """The sandbox limits a VerifyConfig asks for (PoT programs in verification and evaluation)."""
    from distill.sandbox import SandboxLimits

    return SandboxLimits(timeout_s=cfg.timeout_s, cpu_seconds=cfg.cpu_seconds, memory_mb=cfg.memory_mb,
                         max_output_kb=cfg.max_output_kb)
