"""Verification: verdicts, reasons and rules for CoT / L2M / PoT samples (docs/method.md, section 3)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pytest

from distill.strategies import EXEMPLARS, get_strategy
from distill.verify import PARSER_VERSION, VERDICTS, verify_samples
from storage.schemas import VERIFIED


def sample(text: str, strategy: str = "cot", question_id: str = "q1", index: int = 0,
           finish_reason: str = "stop", **extra) -> dict:
    row = {"question_id": question_id, "strategy": strategy, "sample_index": index, "prompt_hash": "h",
           "text": text, "prompt_tokens": 10, "completion_tokens": 20, "finish_reason": finish_reason,
           "model": "m", "engine": "e", "engine_version": "0", "sampling": "{}", "seed": 0, "iteration": 0,
           "source": "teacher"}
    row.update(extra)
    return row


@dataclass
class StandInResult:
    answer: float | None
    verdict: str
    error: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0


class StandInRunner:
    """An in-process stand-in for SandboxPool.run_many, for the routing tests only: it runs the
    trusted programs these tests write, and counts the calls. Untrusted code goes to distill.sandbox
    (see test_pot_through_the_real_sandbox)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def run_many(self, codes: list[str]) -> list[StandInResult]:
        self.calls.append(list(codes))
        results = []
        for code in codes:
            namespace: dict = {}
            try:
                exec(code, namespace)  # noqa: S102 - trusted test programs only
            except Exception as exc:  # noqa: BLE001 - any failure is the program's verdict
                results.append(StandInResult(None, "exec_error", f"{type(exc).__name__}: {exc}"))
                continue
            answer = namespace.get("answer")
            if isinstance(answer, (list, tuple)):
                answer = answer[0] if answer else None
            try:
                results.append(StandInResult(float(answer), "ok", seconds=0.01))
            except (TypeError, ValueError):
                results.append(StandInResult(None, "no_answer", "answer is not a number"))
        return results


def verdicts(rows, gold=None, runner=None):
    out = verify_samples(rows, gold if gold is not None else {"q1": 66.0}, sandbox=runner or StandInRunner())
    return [(r["verdict"], r["rule"], r["predicted"]) for r in out], out


def test_cot_verdicts():
    got, out = verdicts([
        sample("3 * 20 = 60, plus 6 tax.\nFinal answer: $66"),
        sample("3 * 20 = 60.\nFinal answer: 60", index=1),
        sample("I do not know.", index=2),
        sample("The answer is 66.", index=3),
        sample("3 * 20 = 60 and the tax is 6, so 66", index=4),
    ])
    assert got == [("correct", "final_answer", 66.0), ("wrong", "final_answer", 60.0),
                   ("no_answer", "none", None), ("correct", "the_answer_is", 66.0),
                   ("correct", "last_number", 66.0)]
    assert "differs from gold 66" in out[1]["reason"]
    assert all(r["parser_version"] == PARSER_VERSION and r["exec_seconds"] is None for r in out)


def test_truncated_means_the_token_limit_came_before_a_stated_answer():
    got, out = verdicts([
        sample("3 * 20 = 60, then the tax makes it", finish_reason="length"),
        sample("3 * 20 = 60 + 6.\nFinal answer: 66\nNow another problem: 12", finish_reason="length", index=1),
        sample("Sub-question 1: How much before tax?\nAnswer to sub-question 1: 3 * 20 = 60", strategy="l2m",
               finish_reason="length", index=2),
        sample("answer = (3 * 20", strategy="pot", finish_reason="length", index=3),
    ])
    assert [g[0] for g in got] == ["truncated", "correct", "truncated", "truncated"]
    assert got[0][2] == 60.0  # the fallback number is kept for diagnostics, not judged
    assert "token limit" in out[0]["reason"]


def test_l2m_without_sub_questions_is_bad_format_even_when_right():
    l2m = "Sub-question 1: Cost of shirts?\nAnswer to sub-question 1: 60\nSub-question 2: With tax?\n" \
          "Answer to sub-question 2: 66\nFinal answer: 66"
    got, out = verdicts([sample("60 + 6 = 66\nFinal answer: 66", strategy="l2m"), sample(l2m, strategy="l2m")])
    assert got == [("bad_format", "final_answer", 66.0), ("correct", "final_answer", 66.0)]
    assert "Sub-question" in out[0]["reason"]


def test_pot_runs_through_the_sandbox_interface():
    runner = StandInRunner()
    program = "shirts = 3 * 20\nanswer = shirts + shirts * 10 / 100"
    got, out = verdicts([
        sample(program, strategy="pot"),
        sample(f"```python\n{program}\n```", strategy="pot", index=1),
        sample("answer = 1 / 0", strategy="pot", index=2),
        sample("x = 5", strategy="pot", index=3),
        sample("answer = 65", strategy="pot", index=4),
        sample("", strategy="pot", index=5),
    ], runner=runner)
    assert got == [("correct", "program", 66.0), ("correct", "program", 66.0), ("exec_error", "program", None),
                   ("no_answer", "program", None), ("wrong", "program", 65.0), ("bad_format", "program", None)]
    assert "ZeroDivisionError" in out[2]["reason"]
    # One batch; the fenced copy of the same program runs once.
    assert len(runner.calls) == 1 and len(runner.calls[0]) == 4
    assert out[0]["exec_seconds"] == pytest.approx(0.01) and out[5]["exec_seconds"] is None


def test_the_parser_follows_each_samples_own_strategy():
    runner = StandInRunner()
    got, out = verdicts([
        sample("answer = 66", strategy="pot"),
        sample("Final answer: 66", strategy="cot"),
        sample("[pot]: answer = 66", strategy="none"),  # student sample: the tag names the strategy
        sample("[cot]: 60 + 6 = 66\nFinal answer: 66", strategy=None),
        sample("60 + 6 = 66\nFinal answer: 66", strategy="none"),  # untagged student sample
        sample("[pot]: answer = 66", strategy="cot"),  # tag and column disagree
        sample("Final answer: 66", strategy="tot"),
    ], runner=runner)
    assert [g[0] for g in got] == ["correct", "correct", "correct", "correct", "bad_format", "bad_format",
                                   "bad_format"]
    assert [g[1] for g in got][:4] == ["program", "final_answer", "program", "final_answer"]
    assert "no strategy tag" in out[4]["reason"]
    assert "disagrees" not in out[5]["reason"] and "tagged [pot]" in out[5]["reason"]
    assert "unknown strategy" in out[6]["reason"]
    assert runner.calls == [["answer = 66"]]


def test_gold_from_a_column_or_a_mapping():
    rows = [sample("Final answer: 0.75", question_id="a", gold=0.75), sample("Final answer: 3/4", question_id="b")]
    out = verify_samples(rows, {"b": 0.75}, sandbox=StandInRunner())
    assert [r["verdict"] for r in out] == ["correct", "correct"]
    with pytest.raises(KeyError):
        verify_samples([sample("Final answer: 1", question_id="zz")], {"q1": 1.0}, sandbox=StandInRunner())


def test_no_sandbox_is_opened_without_programs():
    out = verify_samples([sample("Final answer: 66")], {"q1": 66})  # sandbox=None, no PoT rows
    assert out[0]["verdict"] == "correct"


def test_output_rows_fit_the_verified_schema():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame([sample("Final answer: 66"), sample("answer = 66", strategy="pot", index=1)])
    out = verify_samples(frame, {"q1": 66}, sandbox=StandInRunner())
    table = pa.Table.from_pylist(out, schema=VERIFIED)
    assert table.num_rows == 2 and set(table.column("verdict").to_pylist()) <= set(VERDICTS)
    assert set(out[0]) == set(VERIFIED.names)


def test_pot_through_the_real_sandbox():
    sandbox = pytest.importorskip("distill.sandbox")
    pot = get_strategy("pot")
    rows = [sample(code, strategy="pot", question_id=e.id, index=0) for e, code in zip(EXEMPLARS, pot.solutions,
                                                                                         strict=True)]
    gold = {e.id: e.answer for e in EXEMPLARS}
    rows += [sample("while True:\n    pass", strategy="pot", question_id=EXEMPLARS[0].id, index=1),
             sample("answer = 1 / 0", strategy="pot", question_id=EXEMPLARS[0].id, index=2),
             sample("x = 3", strategy="pot", question_id=EXEMPLARS[0].id, index=3),
             sample("answer = (66, 1)", strategy="pot", question_id=EXEMPLARS[0].id, index=4)]
    limits = sandbox.SandboxLimits(timeout_s=3.0, cpu_seconds=3, memory_mb=512, max_output_kb=16)
    with sandbox.SandboxPool(limits, workers=2) as pool:
        out = verify_samples(rows, gold, sandbox=pool)
    assert [r["verdict"] for r in out[:8]] == ["correct"] * 8, [r["reason"] for r in out[:8]]
    assert [r["verdict"] for r in out[8:]] == ["timeout", "exec_error", "no_answer", "correct"]
