"""Self-generation as SIKeD's reference samples it (`siked.self_generation`, docs/method.md section 7).

`forced` primes every taught strategy's tag in the student's prompt, `n` samples per question and
strategy, and draws free-choice samples beside them to measure P_SM; `free` lets the student pick.
The generate step's job is turned into the child's GenerationJob as the flow does
(flows.run_steps.generate), and its prompts go to an engine that records them and answers as a
student continuing each prompt would; the rows then go through the real verifier (PoT programs in
the sandbox) and the real distillation set. The slow test runs the step's body in its child process
with a tiny real student:

    pytest tests/test_self_generation.py -m slow
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distill.config import load_config
from distill.distill_set import build_distill_set
from distill.engines.base import Completion
from distill.generation import run_generation
from distill.mixing import distribution
from distill.student_format import rationale_prompt, rationale_target, strategy_tag
from distill.verify import verify_samples
from flows.run_setup import run_layout
from storage.artifacts import read_artifact, write_artifact
from tasks.jobs.generate import GenerationJob, prepare_job
from tasks.pipeline import FREE_CHOICE, pipeline_steps

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "configs/quickstart.yaml").read_text()
QUESTIONS = {"q0": "What is 2 plus 3?", "q1": "What is 7 minus 4?"}
GOLD = {"q0": 5.0, "q1": 3.0}
STRATEGIES = ("cot", "l2m", "pot")
# Without its tag, as the model writes it after a primed tag (and as the teacher writes it).
SOLUTIONS = {
    "cot": " The result is {a}.\nFinal answer: {a}",
    "l2m": " Sub-question 1: What is the result?\nAnswer to sub-question 1: {a}.\nFinal answer: {a}",
    "pot": " answer = {a}",
}
FREE_PICK = {"q0": "pot", "q1": "cot"}  # what the student picks when it chooses


class RecordingStudent:
    """Records every prompt; continues a primed prompt in the primed strategy, and otherwise writes
    the tag of its own pick first. Every answer is right."""

    name, version, model = "recording", "0", "student"

    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, requests, sampling, lora_path=None):
        out = []
        for request in requests:
            self.prompts.append(request.prompt)
            answer = int(GOLD[request.question_id])
            primed = re.search(r"\[(cot|l2m|pot)\]:$", request.prompt)
            if primed:
                text = SOLUTIONS[primed.group(1)].format(a=answer)
            else:
                pick = FREE_PICK[request.question_id]
                text = strategy_tag(pick) + SOLUTIONS[pick].format(a=answer)
            out.append([Completion(text, 10, 5, "stop") for _ in range(sampling.n)])
        return out


def problems_url(folder: Path) -> str:
    url = str(folder / "problems.parquet")
    rows = [{"id": qid, "benchmark": "arith", "split": "train", "source": "test", "question": question,
             "answer": GOLD[qid], "answer_text": str(int(GOLD[qid])), "reference": ""}
            for qid, question in QUESTIONS.items()]
    write_artifact(url, rows, "problems", config_hash="problems")
    return url


def student_job(tmp_path: Path, *overrides: str) -> tuple[GenerationJob, dict]:
    """The iteration-1 generate step's GenerationJob, built from its job as the flow builds it."""
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path / 'runs'}", *overrides])
    steps = pipeline_steps(cfg, run_layout(cfg))
    step = steps["iter-01/generate"]
    probe = {"free_choice_url": str(tmp_path / FREE_CHOICE)} if FREE_CHOICE in step.outputs else {}
    job = GenerationJob(problems_url=problems_url(tmp_path), output_url=str(tmp_path / "samples"), key=step.key,
                        model="student", iteration=1, **step.job, **probe)
    return job, steps


def generate(job: GenerationJob, engine) -> list[dict]:
    prepared = prepare_job(job, engine)
    rows: list[dict] = []
    run_generation(engine, prepared.shards, prepared.sampling, prepared.provenance,
                   lambda _, shard_rows: rows.extend(shard_rows), tag_of=prepared.tag_of, progress=lambda _: None)
    return rows


def test_forced_self_generation_primes_each_strategy_and_samples_n_per_question_and_strategy(tmp_path):
    job, steps = student_job(tmp_path)  # the default: forced, as the reference does
    n = job.sampling.n
    engine = RecordingStudent()
    rows = generate(job, engine)

    primed = []
    for prompt in engine.prompts:
        [(qid, question)] = [(q, text) for q, text in QUESTIONS.items() if question_in(prompt, text)]
        tags = [s for s in STRATEGIES if prompt == rationale_prompt(question) + strategy_tag(s)]
        assert len(tags) == 1, f"a forced prompt primes exactly one strategy: {prompt!r}"
        primed.append((qid, tags[0]))
    assert sorted(primed) == sorted((q, s) for q in QUESTIONS for s in STRATEGIES)  # each pair once
    per_pair = {(q, s): [r for r in rows if (r["question_id"], r["strategy"]) == (q, s)]
                for q in QUESTIONS for s in STRATEGIES}
    assert all(len(found) == n for found in per_pair.values()) and len(rows) == n * len(per_pair)
    assert [r["sample_index"] for r in per_pair["q0", "pot"]] == list(range(n))
    # The strategy column is the primed tag, and the text starts with it: a row reads as a student's
    # whole answer, as a free-choice row does.
    for row in rows:
        assert row["text"].startswith(strategy_tag(row["strategy"]) + " ")
        assert row["source"] == "student" and row["iteration"] == 1
    assert len({r["prompt_hash"] for r in rows}) == len(STRATEGIES)

    # The verifier reads every row by its strategy, PoT programs run in the sandbox.
    verified = verify_samples(rows, GOLD)
    assert {(v["strategy"], v["verdict"], v["rule"]) for v in verified} == {
        ("cot", "correct", "final_answer"), ("l2m", "correct", "final_answer"), ("pot", "correct", "program")}
    # The training rows have the teacher's form: the solution without its tag, which the training
    # target puts back (`[pot]: answer = 5`).
    student_set, _ = build_distill_set(verified, QUESTIONS)
    teacher_rows = [{"question_id": q, "strategy": s, "sample_index": 0, "text": SOLUTIONS[s].format(a=int(GOLD[q])),
                     "finish_reason": "stop", "source": "teacher"} for q in QUESTIONS for s in STRATEGIES]
    teacher_set, _ = build_distill_set(verify_samples(teacher_rows, GOLD), QUESTIONS)
    assert [(r["question_id"], r["strategy"], r["text"]) for r in student_set] == \
        [(r["question_id"], r["strategy"], r["text"]) for r in teacher_set]
    assert rationale_target("pot", student_set[2]["text"]) == "[pot]: answer = 5"

    # P_SM is measured apart: the student's own pick, `free_choice_samples` per question.
    assert steps["iter-01/mix"].inputs[FREE_CHOICE] == "iter-01/generate"
    probe = job.free_choice_job()
    assert probe.output_url == str(tmp_path / FREE_CHOICE) and probe.sampling.n == job.free_choice_samples
    engine = RecordingStudent()
    choices = generate(probe, engine)
    assert engine.prompts == [rationale_prompt(q) for q in QUESTIONS.values()]
    assert [(r["question_id"], r["strategy"]) for r in choices] == [
        (q, FREE_PICK[q]) for q in QUESTIONS for _ in range(job.free_choice_samples)]


def question_in(prompt: str, question: str) -> bool:
    return f"### Input:\n{question}\n" in prompt


def test_free_self_generation_keeps_the_students_own_pick(tmp_path):
    job, steps = student_job(tmp_path, "siked.self_generation=free")
    assert job.free_choice_job() is None and set(steps["iter-01/generate"].outputs) == {"samples"}
    assert FREE_CHOICE not in steps["iter-01/mix"].inputs
    engine = RecordingStudent()
    rows = generate(job, engine)
    assert engine.prompts == [rationale_prompt(q) for q in QUESTIONS.values()]  # no tag primed
    assert [(r["question_id"], r["strategy"]) for r in rows] == [
        (q, FREE_PICK[q]) for q in QUESTIONS for _ in range(job.sampling.n)]


def test_the_mix_step_reads_p_sm_from_the_free_choice_samples(tmp_path):
    """Forced samples are a third per strategy by construction; P_SM is what the student picks."""
    from tasks.mix import mix_training_set, stats_url

    job, _ = student_job(tmp_path)
    forced = verify_samples(generate(job, RecordingStudent()), GOLD)
    choices = generate(job.free_choice_job(), RecordingStudent())
    self_set, _ = build_distill_set(forced, QUESTIONS)
    urls = {name: str(tmp_path / f"{name}.parquet") for name in ("verified", "self_set", "teacher_set", "choices")}
    write_artifact(urls["verified"], forced, "verified", config_hash="v")
    write_artifact(urls["self_set"], self_set, "train_examples", config_hash="s")
    write_artifact(urls["teacher_set"], [{**r, "source": "teacher"} for r in self_set], "train_examples",
                   config_hash="t")
    write_artifact(urls["choices"], choices, "samples", config_hash="c")
    output = str(tmp_path / "train_set.parquet")
    mix_training_set.fn(urls["self_set"], urls["verified"], urls["teacher_set"], output, "k", 1, "adaptive", None, 0,
                        free_choice_url=urls["choices"])
    stats = json.loads(Path(stats_url(output)).read_text())
    p_sm = stats["p_student_samples"]
    assert sum(p_sm.values()) == pytest.approx(1.0)
    assert p_sm == distribution(FREE_PICK[q] for q in QUESTIONS) == {"cot": 0.5, "l2m": 0.0, "pot": 0.5}
    assert stats["p_student_samples_from"] == "free_choice" and stats["student_choices"] == len(choices)
    assert stats["kl_train_vs_student"] > 1.0  # P_train holds L2M, which the student never picks
    assert len(read_artifact(output, "train_examples")) == len(self_set)  # every pair solved: no teacher row


@pytest.mark.slow
def test_the_generate_step_writes_the_forced_and_the_free_choice_samples_and_is_then_done(tmp_path, tiny_model_path):
    """The step body in its child process with a tiny real student: both outputs complete under the
    step's key, so the gate reuses the step."""
    from tasks.gate import incomplete
    from tasks.generate import generate_samples

    overrides = ["siked.engine.kind=transformers", "siked.sampling.n=2", "siked.sampling.max_tokens=4"]
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path / 'runs'}", *overrides])
    step = pipeline_steps(cfg, run_layout(cfg))["iter-01/generate"]
    job = GenerationJob(problems_url=problems_url(tmp_path), output_url=step.output("samples"), key=step.key,
                        model=str(tiny_model_path), iteration=1, **step.job,
                        free_choice_url=step.output(FREE_CHOICE))
    assert incomplete(step) is not None
    generate_samples.fn(job)
    assert incomplete(step) is None
    forced = read_artifact(step.output("samples"), "samples").to_pylist()
    assert sorted((r["question_id"], r["strategy"]) for r in forced) == sorted(
        (q, s) for q in QUESTIONS for s in STRATEGIES for _ in range(2))
    assert all(r["text"].startswith(strategy_tag(r["strategy"])) for r in forced)
    choices = read_artifact(step.output(FREE_CHOICE), "samples").to_pylist()
    assert sorted(r["question_id"] for r in choices) == sorted(QUESTIONS)  # free_choice_samples: 1 each
