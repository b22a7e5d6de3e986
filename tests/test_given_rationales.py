"""Rationales given rather than generated (Distilling Step-by-Step's released PaLM-540B ones): kept
whatever answer PaLM gave, the gold as the answer, as DSS's loader does (`run.py` keeps every row and
trains on the gold label by default), unless `teacher.given_rationales=correct`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from distill.config import load_config
from distill.distill_set import select_correct, select_given
from flows.run_setup import run_layout
from tasks.pipeline import pipeline_steps, train_only_steps

REPO = Path(__file__).resolve().parents[1]
DSS_SVAMP = (REPO / "configs/dss_svamp.yaml").read_text()
QUESTIONS = {"q1": "How many apples?", "q2": "Where do beavers live?\nAnswer Choices:\n(a) desert\n(b) river"}


def row(question_id, strategy, index, verdict, text, gold):
    return {"question_id": question_id, "strategy": strategy, "sample_index": index, "text": text,
            "verdict": verdict, "gold": gold, "source": "teacher", "iteration": 0, "model": "palm-540b",
            "finish_reason": "stop"}


def test_a_given_rationale_is_kept_right_or_wrong_and_ends_with_the_gold():
    rows = [row("q1", "cot", 0, "wrong", "3 + 4 = 8. The answer is (3 + 5).", 7.0),
            row("q1", "pot", 0, "wrong", "answer = 8", 7.0),  # a program cannot be given the gold answer
            row("q2", "cot", 0, "wrong", "Beavers build dams. So the answer is (a) desert.", 1.0),
            row("q2", "l2m", 0, "correct", "Sub-question 1: where? Answer to sub-question 1: river", 1.0)]
    kept = select_given(rows, QUESTIONS)
    assert [(r["question_id"], r["strategy"], r["text"]) for r in kept] == [
        ("q1", "cot", "3 + 4 = 8.\nFinal answer: 7"),
        ("q2", "cot", "Beavers build dams.\nFinal answer: (b) river")]  # the l2m text states no answer
    assert [r["strategy"] for r in select_correct(rows, QUESTIONS)] == ["l2m"]


def _write_palm_round(cfg, data_dir: Path, folder: Path) -> tuple[str, str]:
    """The problems and the verified file-engine samples of the teacher round, as those steps write them."""
    from distill.benchmarks.dss import load
    from distill.choices import gold_answers
    from distill.engines.file_engine import load_dss_rationales
    from distill.verify import verify_samples
    from storage.artifacts import write_artifact

    problems = [dataclasses.asdict(p) for p in load("dss_svamp", data_dir, "train").problems]
    served = load_dss_rationales([data_dir / f for f in cfg.teacher.engine.files], data_dir)
    gold, choices = gold_answers(problems)
    samples = [{"question_id": p["id"], "strategy": "cot", "sample_index": 0, "text": served[p["id"]][0],
                "finish_reason": "stop", "source": "teacher", "iteration": 0, "model": "palm-540b"}
               for p in problems]
    problems_url, verified_url = str(folder / "problems.parquet"), str(folder / "verified.parquet")
    write_artifact(problems_url, problems, "problems")
    write_artifact(verified_url, verify_samples(samples, gold, workers=1, choices=choices), "verified")
    return problems_url, verified_url


@pytest.mark.parametrize(("setting", "rows", "palm_wrong"), [([], 789, 195), (["teacher.given_rationales=correct"], 595, 0)])
def test_dss_svamp_teacher_round_trains_on_palm_rationales_whatever_their_answer(data_dir, tmp_path, setting, rows,
                                                                                   palm_wrong):
    """`siked run` (the objectives experiment) on DSS's SVAMP: of the 800 released rationales, the 789
    that state an answer (11 lack `The answer is`, which DSS's parse leaves blank), 195 of them with
    an answer other than the gold; the `correct` setting keeps the 595 that verify."""
    from storage.artifacts import read_artifact
    from tasks.distill_set import build_distill_set

    cfg = load_config(DSS_SVAMP, [f"runs_root={tmp_path / 'runs'}", *setting])
    step = pipeline_steps(cfg, run_layout(cfg))["iter-00/distill_set"]
    problems_url, verified_url = _write_palm_round(cfg, data_dir, tmp_path)
    output = str(tmp_path / "distill_set.parquet")
    build_distill_set.fn(**step.job, verified_url=verified_url, problems_url=problems_url, output=output,
                         key=step.key, iteration=0)
    kept = read_artifact(output, "train_examples").to_pylist()
    verdicts = {r["question_id"]: r["verdict"] for r in read_artifact(verified_url, "verified").to_pylist()}
    assert len(kept) == rows
    assert sum(verdicts[r["question_id"]] == "wrong" for r in kept) == palm_wrong
    if palm_wrong:  # the gold is the answer: no rationale keeps PaLM's answer statement
        assert all("The answer is" not in r["text"] and r["text"].rsplit("Final answer: ", 1)[1] != "" for r in kept)


@pytest.mark.parametrize(("setting", "rows"), [([], 789), (["teacher.given_rationales=correct"], 586)])
def test_siked_train_on_dss_svamp_keeps_the_filter_only_when_asked(data_dir, tmp_path, setting, rows):
    """`siked train`: the same 789 rows by default; with `correct`, the 586 whose answer, read by
    DSS's own parse (the parenthesised expression after `The answer is`), equals the gold."""
    from storage.artifacts import read_artifact
    from tasks.train_set import freeze_train_set

    cfg = load_config(DSS_SVAMP, [f"runs_root={tmp_path / 'runs'}", *setting])
    step = train_only_steps(cfg, run_layout(cfg), train_set=None, given_rationales=True)["train_set"]
    output = str(tmp_path / "train_set.parquet")
    freeze_train_set.fn(**step.job, output=output, key=step.key)
    assert read_artifact(output, "train_examples").num_rows == rows


def test_the_setting_moves_the_keys_of_the_steps_that_read_it(tmp_path):
    cfg = load_config(DSS_SVAMP, [f"runs_root={tmp_path}"])
    strict = load_config(DSS_SVAMP, [f"runs_root={tmp_path}", "teacher.given_rationales=correct"])
    before, after = pipeline_steps(cfg, run_layout(cfg)), pipeline_steps(strict, run_layout(strict))
    assert before["iter-00/generate"].key == after["iter-00/generate"].key
    assert before["iter-00/distill_set"].key != after["iter-00/distill_set"].key


def test_a_file_benchmarks_rationales_have_no_answer_to_filter_on(tmp_path):
    from tasks.train_set import given_rationale_rows

    cfg = load_config(DSS_SVAMP, [f"runs_root={tmp_path}", "train_data={name: file, path: p.jsonl, question: q, answer: a, rationale: r}"])
    with pytest.raises(ValueError, match="given_rationales=correct"):
        given_rationale_rows(cfg.train_data, str(tmp_path), "correct")
