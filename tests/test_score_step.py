"""The scoring step (`token_level.score`): in the plan only when asked, with its job; the privileged
self-teacher's prompt; a killed step resumed without rescoring its finished shards; a teacher with
another tokenizer refused before any work; the transformers engine's scores; the guards moving no
key; and (slow) a tiny run through Prefect whose uniform self-teacher the entropy guard stops, and
that scores the student's samples with it once the guards are off.

    pytest tests/test_score_step.py              # fast ones
    pytest tests/test_score_step.py -m slow      # the run through Prefect
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from distill.config import ConfigError, EngineConfig, load_config
from distill.scoring import TokenizerMismatch, encode
from distill.student_format import answer_reference, forced_prompt, rationale_prompt
from flows.run_setup import run_layout
from storage.artifacts import read_artifact, write_artifact
from storage.shards import ShardedArtifact
from tasks.jobs.score import ScoreJob, score_into, scoring_shards
from tasks.pipeline import pipeline_steps
from tests.test_scoring import check_rows

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "configs/quickstart.yaml").read_text()
SCORE = ["token_level.score=true"]

PROBLEMS = [
    {"id": "arith-train-1", "benchmark": "arith", "split": "train", "source": "test", "answer": 7.0,
     "question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer_text": "7",
     "reference": ""},
    {"id": "arith-train-2", "benchmark": "arith", "split": "train", "source": "test", "answer": 30.0,
     "question": "A box holds 12 eggs. How many eggs are in 2.5 boxes?", "answer_text": "30", "reference": ""},
]
# Two generation shards: one question each, two strategies and a sample whose tag did not parse.
SAMPLE_TEXTS = [
    [("arith-train-1", "cot", 0, "3 + 4 = 7. The answer is 7."), ("arith-train-1", "pot", 0, "answer = 3 + 4"),
     ("arith-train-1", None, 1, "seven")],
    [("arith-train-2", "l2m", 0, "How many eggs per box? 12. So 12 * 2.5 = 30. The answer is 30."),
     ("arith-train-2", "cot", 0, "12 * 2.5 = 30. The answer is 30.")],
]


def sample_row(question_id, strategy, index, text) -> dict:
    return {"question_id": question_id, "strategy": strategy, "sample_index": index, "prompt_hash": "p", "text": text,
            "prompt_tokens": 10, "completion_tokens": 10, "finish_reason": "stop", "model": "student",
            "engine": "transformers", "engine_version": "0", "sampling": "{}", "seed": 0, "iteration": 1,
            "source": "student"}


def write_inputs(folder: Path) -> tuple[str, str]:
    problems = str(folder / "problems.parquet")
    write_artifact(problems, PROBLEMS, "problems", config_hash="p")
    samples = ShardedArtifact(str(folder / "samples"), "samples", config_hash="g")
    for index, shard in enumerate(SAMPLE_TEXTS):
        samples.write_shard(index, [sample_row(*s) for s in shard])
    samples.finalize(len(SAMPLE_TEXTS))
    return str(folder / "samples"), problems


def score_job(folder: Path, student: Path, teacher: str = "self", model: Path | None = None, k: int = 5) -> ScoreJob:
    samples, problems = write_inputs(folder)
    return ScoreJob(samples_url=samples, problems_url=problems, output_url=str(folder / "token_scores"), key="s",
                    engine=EngineConfig(kind="transformers", dtype="float32"), model=str(model or student),
                    student=str(student), teacher=teacher, top_k=k, iteration=1)


def flat(shards: list[list]) -> list:
    return [sample for shard in shards for sample in shard]


# --------------------------------------------------------------------------- the step list


def test_the_plan_has_a_score_step_per_round_only_when_asked(tmp_path, capsys):
    from flows.cli import main

    off = load_config(QUICKSTART, [f"runs_root={tmp_path}"])
    on = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE])
    before, after = pipeline_steps(off, run_layout(off)), pipeline_steps(on, run_layout(on))
    assert not any(s.kind == "score" for s in before.values())
    assert [n for n, s in after.items() if s.kind == "score"] == ["iter-01/score", "iter-02/score"]
    # Nothing else moves but the report, which holds the run id: no other step reads the scores yet.
    assert ({n: s.key for n, s in after.items() if s.kind not in ("score", "report")}
            == {n: s.key for n, s in before.items() if s.kind != "report"})
    step = after["iter-02/score"]
    assert step.job == {"teacher": "separate", "top_k": 20, "engine": on.teacher.engine, "guards": True,
                        "guard_samples": 4}
    assert step.inputs == {"samples": "iter-02/generate", "problems": "problems/train", "student": "iter-01/train"}
    selfish = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE, "token_level.teacher=self"])
    assert pipeline_steps(selfish, run_layout(selfish))["iter-01/score"].job["engine"] == selfish.siked.engine

    assert main(["plan", str(REPO / "configs/quickstart.yaml"), f"runs_root={tmp_path}", *SCORE, "--json"]) == 0
    rows = {r["step"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["iter-01/score"]["kind"] == "score" and rows["iter-01/score"]["action"] == "run"
    assert rows["iter-01/score"]["key"] == after["iter-01/score"].key


def test_score_keys_move_with_the_token_level_fields_and_the_scorer_only(tmp_path):
    base = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE])
    steps = pipeline_steps(base, run_layout(base))
    for change in ("token_level.top_k=5", "token_level.teacher=self", "teacher.engine.dtype=bfloat16"):
        cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE, change])
        moved = {n for n, s in pipeline_steps(cfg, run_layout(cfg)).items() if s.key != steps[n].key}
        if change.startswith("teacher."):  # the teacher's generation moves, and all below it
            assert {"iter-01/score", "iter-02/score", "iter-00/generate"} <= moved, change
        else:
            assert moved == {"iter-01/score", "iter-02/score", "report"}, change  # the report: the run id
    # The guards only stop a step: they move no key.
    for change in ("token_level.guards=false", "token_level.guard_samples=8"):
        cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE, change])
        assert {n: s.key for n, s in pipeline_steps(cfg, run_layout(cfg)).items() if n != "report"} == {
            n: s.key for n, s in steps.items() if n != "report"}, change
    # Greedy scoring: the scorer's seed moves no score key (the separate teacher's samples move).
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *SCORE, "teacher.engine.seed=3"])
    after = pipeline_steps(cfg, run_layout(cfg))
    assert after["iter-01/score"].reads == steps["iter-01/score"].reads


def test_a_scorer_that_cannot_serve_top_k_or_scores_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"top_k=32 is more than vLLM serves \(teacher.engine.vllm_args.max_logprobs"):
        load_config(QUICKSTART, [*SCORE, "token_level.top_k=32"])
    assert load_config(QUICKSTART, [*SCORE, "token_level.top_k=32",
                                    "teacher.engine.vllm_args={max_logprobs: 32}"]).token_level.top_k == 32
    with pytest.raises(ConfigError, match="teacher.engine.kind=file .* computes no log-probabilities"):
        load_config(QUICKSTART, [*SCORE, "teacher.engine.kind=file", "teacher.engine.files=[r.jsonl]"])
    assert load_config(QUICKSTART, [*SCORE, "token_level.teacher=self", "teacher.engine.kind=file",
                                    "teacher.engine.files=[r.jsonl]"]).token_level.teacher == "self"


# --------------------------------------------------------------------------- what is scored


def test_the_self_teacher_sees_the_gold_answer_and_scores_the_same_completion_ids(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    privileged, left_out = scoring_shards(score_job(tmp_path / "self", tiny_model_path, teacher="self"))
    plain, _ = scoring_shards(score_job(tmp_path / "separate", tiny_model_path, teacher="separate"))
    assert left_out == 1  # the sample without a strategy tag: no training target, not scored
    assert [len(s) for s in privileged] == [len(s) for s in plain] == [2, 2]
    golds = {"arith-train-1": 7.0, "arith-train-2": 30.0}
    questions = {p["id"]: p["question"] for p in PROBLEMS}
    for mine, theirs in zip(flat(privileged), flat(plain), strict=True):
        question, strategy = questions[mine.question_id], mine.sample_id.split("|")[1]
        reference = answer_reference(golds[mine.question_id])
        assert reference in mine.prompt
        # The student generated under its own prompt (primed with the strategy): no answer in it.
        assert reference not in forced_prompt(question, strategy) and reference not in rationale_prompt(question)
        assert theirs.prompt == rationale_prompt(question)  # a separate teacher reads the student's prompt
        assert mine.completion == theirs.completion
        assert encode(tokenizer, mine.prompt, mine.completion)[1] == encode(tokenizer, theirs.prompt,
                                                                            theirs.completion)[1]


def test_the_transformers_engine_scores_every_sample_exactly(tmp_path, tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = score_job(tmp_path, tiny_model_path, k=5)
    stats = score_into(job)
    assert stats["shards_scored"] == 2 and stats["samples"] == 4 and stats["left_out"] == 1
    rows = read_artifact(job.output_url, "token_scores").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    samples = flat(scoring_shards(job)[0])
    check_rows(rows, tokenizer, samples, 5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    prompt_ids, completion_ids = encode(tokenizer, samples[0].prompt, samples[0].completion)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0]
    reference = torch.log_softmax(logits, -1)[len(prompt_ids) - 1:-1].gather(1, torch.tensor(completion_ids)[:, None])
    assert torch.allclose(torch.tensor(rows[0]["sampled_logprobs"]), reference[:, 0], atol=1e-5)
    assert {r["teacher"] for r in rows} == {str(tiny_model_path)} and {r["engine"] for r in rows} == {"transformers"}


def test_a_killed_scoring_step_resumes_without_rescoring_its_finished_shards(tmp_path, tiny_model_path, monkeypatch):
    from distill.engines.hf_engine import TransformersEngine

    job = score_job(tmp_path, tiny_model_path)
    real, scored = TransformersEngine.score, []

    def dies_after_one_shard(self, requests, k, lora_path=None):
        if scored:
            raise RuntimeError("killed")
        scored.append([r.key for r in requests])
        return real(self, requests, k, lora_path)

    monkeypatch.setattr(TransformersEngine, "score", dies_after_one_shard)
    with pytest.raises(RuntimeError, match="killed"):
        score_into(job)
    out = ShardedArtifact(job.output_url, "token_scores", config_hash=job.key)
    assert out.completed_shards() == {0} and not out.is_complete()
    first = Path(out.shard_url(0)).read_bytes()

    def counts(self, requests, k, lora_path=None):
        scored.append([r.key for r in requests])
        return real(self, requests, k, lora_path)

    monkeypatch.setattr(TransformersEngine, "score", counts)
    stats = score_into(job)
    assert stats["reused_shards"] == 1 and stats["shards_scored"] == 1
    assert scored[1:] == [["arith-train-2|l2m|0", "arith-train-2|cot|0"]]  # shard 1 only
    assert Path(out.shard_url(0)).read_bytes() == first and out.is_complete()
    assert len(read_artifact(job.output_url, "token_scores")) == 4

    scored.clear()  # a finished step's rerun builds no engine and scores nothing
    monkeypatch.setattr("distill.engines.make_engine", lambda *a, **k: pytest.fail("an engine was built"))
    assert score_into(job)["shards_scored"] == 0 and scored == []


@pytest.fixture
def grown_teacher(tiny_model_path, tmp_path) -> Path:
    """The tiny model with one token added to its tokenizer: another tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path / "grown-teacher"
    shutil.copytree(tiny_model_path, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(folder)
    return folder


def test_a_teacher_with_another_tokenizer_is_refused_before_any_work(tmp_path, tiny_model_path, grown_teacher,
                                                                     monkeypatch, capsys):
    job = score_job(tmp_path, tiny_model_path, teacher="separate", model=grown_teacher)
    monkeypatch.setattr("distill.engines.make_engine", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(TokenizerMismatch) as refused:
        score_into(job)
    assert str(grown_teacher) in str(refused.value) and str(tiny_model_path) in str(refused.value)
    assert ShardedArtifact(job.output_url, "token_scores").shard_files() == []

    # And before the run starts: `siked run` and `siked plan` refuse the config, naming both models.
    from flows.commands.preflight import check_scoring_teacher

    overrides = [*SCORE, "teacher.engine.kind=transformers", f"teacher.engine.model={grown_teacher}",
                 f"train.model={tiny_model_path}"]
    with pytest.raises(ConfigError, match="token_level.teacher: the teacher .* do not share a tokenizer") as early:
        check_scoring_teacher(load_config(QUICKSTART, overrides))
    assert str(grown_teacher) in str(early.value) and str(tiny_model_path) in str(early.value)
    from flows.cli import main

    for command in ("plan", "run"):
        assert main([command, str(REPO / "configs/quickstart.yaml"), f"runs_root={tmp_path / 'runs'}",
                     *overrides]) == 2, command
        said = capsys.readouterr().err
        assert "do not share a tokenizer" in said and str(grown_teacher) in said, command
    assert not (tmp_path / "runs").exists()  # nothing was written
    check_scoring_teacher(load_config(QUICKSTART, [*overrides, f"teacher.engine.model={tiny_model_path}"]))


# --------------------------------------------------------------------------- through Prefect


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_tiny_run_scores_each_student_sample_with_the_self_teacher(tmp_path, tiny_model_path, capsys):
    from flows.cli import main
    from tests.test_flow import output_of, tiny_run_overrides

    k = 4
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{
        "token_level.score": "true", "token_level.teacher": "self", "token_level.top_k": str(k),
        "eval.modes": "[rationale]", "eval.evaluate_base": "false"})
    # The tiny model's random weights make a uniform teacher: its entropy guard stops the run at the
    # score step, in one line with the figures, before a score is written.
    assert main(["run", str(REPO / "configs/quickstart.yaml"), *overrides]) == 1
    said = capsys.readouterr().err
    assert re.search(r"siked: guard failed: iter-01/score teacher \S+ mean entropy 10\.\d\d nats of the uniform "
                     r"bound 10\.80 \(log 49152\) over \d+ positions of 4 samples", said), said[-3000:]
    # Without the guards the run goes on, reusing the steps before it.
    assert main(["run", str(REPO / "configs/quickstart.yaml"), *overrides, "token_level.guards=false"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    samples = read_artifact(output_of(run, "iter-01/generate", "samples"), "samples").to_pylist()
    rows = read_artifact(output_of(run, "iter-01/score", "token_scores"), "token_scores").to_pylist()
    tagged = [s for s in samples if s["strategy"] in ("cot", "l2m", "pot")]
    assert tagged and len(rows) == len(tagged)  # forced self-generation: every sample carries its strategy
    assert sorted(r["sample_id"] for r in rows) == sorted(
        f"{s['question_id']}|{s['strategy']}|{s['sample_index']}" for s in tagged)
    for row in rows:
        assert row["k"] == k and len(row["top_ids"]) == len(row["completion_ids"]) == len(row["sampled_logprobs"])
        for logprobs in row["top_logprobs"]:
            assert len(logprobs) == k and logprobs == sorted(logprobs, reverse=True)
        assert all(lp <= 0.0 for lp in row["sampled_logprobs"])
        assert row["teacher"] == output_of(run, "iter-00/train", "student")  # the round's starting student
    assert main(["status", str(run), "--json"]) == 0
    states = {s["step"]: s["state"] for s in json.loads(capsys.readouterr().out) if s["stage"] == "iter-01"}
    assert states["score"] == "done"
