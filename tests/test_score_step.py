"""The scoring step (`token_level.use`): in the plan only when asked, with its job; the privileged
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
SCORE = ["token_level.use=record"]

PROBLEMS = [
    {"id": "arith-train-1", "benchmark": "arith", "split": "train", "source": "test", "answer": 7.0,
     "question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer_text": "7",
     "reference": ""},
    {"id": "arith-train-2", "benchmark": "arith", "split": "train", "source": "test", "answer": 30.0,
     "question": "A box holds 12 eggs. How many eggs are in 2.5 boxes?", "answer_text": "30", "reference": ""},
]
# A round's training rows: two questions, two strategies each, and a row whose strategy is unknown;
# two scoring shards of two rows at shard_size 2.
ROW_TEXTS = [("arith-train-1", "cot", 0, "3 + 4 = 7. The answer is 7."), ("arith-train-1", "pot", 0, "answer = 3 + 4"),
             ("arith-train-1", "sql", 1, "seven"),
             ("arith-train-2", "l2m", 0, "How many eggs per box? 12. So 12 * 2.5 = 30. The answer is 30."),
             ("arith-train-2", "cot", 0, "12 * 2.5 = 30. The answer is 30.")]


def train_row(question_id, strategy, index, text) -> dict:
    problem = next(p for p in PROBLEMS if p["id"] == question_id)
    return {"question_id": question_id, "question": problem["question"], "gold": problem["answer"],
            "strategy": strategy, "text": text, "sample_index": index, "source": "student", "iteration": 1,
            "model": "student"}


def write_rows(folder: Path) -> str:
    rows = str(folder / "distill_set.parquet")
    write_artifact(rows, [train_row(*r) for r in ROW_TEXTS], "train_examples", config_hash="d")
    return rows


def score_job(folder: Path, student: Path, teacher: str = "self", model: Path | None = None, k: int = 5) -> ScoreJob:
    return ScoreJob(rows_url=write_rows(folder), output_url=str(folder / "token_scores"), key="s",
                    engine=EngineConfig(kind="transformers", dtype="float32"), model=str(model or student),
                    student=str(student), teacher=teacher, top_k=k, iteration=1, shard_size=2)


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
    assert step.job == {"teacher": "separate", "top_k": 20, "engine": on.teacher.engine, "shard_size": 16,
                        "guards": True, "guard_samples": 4}
    assert step.inputs == {"rows": "iter-02/distill_set", "student": "iter-01/train"}
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
    assert left_out == 1  # the row without a known strategy: no training target, not scored
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


def train_metrics(run: Path, step: str) -> list[dict]:
    return read_artifact(output_of(run, step, "metrics"), "train_metrics").to_pylist()


def output_of(run: Path, step: str, role: str) -> str:
    from tests.test_flow import output_of as of

    return of(run, step, role)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_each_use_of_the_scores_runs_through_prefect(tmp_path, tiny_model_path, capsys):
    """SIKeD with the token term, on-policy distillation and word-level distillation, each a tiny
    run through Prefect with the privileged self-teacher, in one runs root (the teacher round is shared)."""
    from flows.cli import main
    from storage.folders import folder_manifest
    from tests.test_flow import tiny_run_overrides

    k = 4

    def run_with(use: str, expect: int = 0, **extra: str) -> Path | str:
        overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{
            "name": use, "token_level.use": use, "token_level.teacher": "self", "token_level.top_k": str(k),
            "eval.modes": "[rationale]", "eval.evaluate_base": "false", **extra})
        assert main(["run", str(REPO / "configs/quickstart.yaml"), *overrides]) == expect
        said = capsys.readouterr()
        return Path(said.out.strip().splitlines()[-1]) if expect == 0 else said.err

    # The tiny model's random weights make a uniform teacher: its entropy guard stops the run at the
    # score step, in one line with the figures, before a score is written.
    said = run_with("on_policy", expect=1)
    assert re.search(r"siked: guard failed: iter-01/score teacher \S+ mean entropy 10\.\d\d nats of the uniform "
                     r"bound 10\.80 \(log 49152\) over \d+ positions of 4 samples", said), said[-3000:]
    # Without the guards the run goes on, reusing the steps before it.
    guards_off = {"token_level.guards": "false"}

    # On-policy distillation: every tagged sample, right or wrong, scored by the round's starting
    # student shown the answer, and trained on the divergence alone, no mix
    run = run_with("on_policy", **guards_off)
    samples = read_artifact(output_of(run, "iter-01/generate", "samples"), "samples").to_pylist()
    tagged = [s for s in samples if s["strategy"] in ("cot", "l2m", "pot")]
    rows = read_artifact(output_of(run, "iter-01/distill_set", "distill_set"), "train_examples").to_pylist()
    verified = read_artifact(output_of(run, "iter-01/verify", "verified"), "verified").to_pylist()
    assert tagged and len(rows) == len(tagged) and {v["verdict"] for v in verified} - {"correct"}  # wrong ones kept
    scores = read_artifact(output_of(run, "iter-01/score", "token_scores"), "token_scores").to_pylist()
    assert sorted(r["sample_id"] for r in scores) == sorted(
        f"{s['question_id']}|{s['strategy']}|{s['sample_index']}" for s in tagged)
    for row in scores:
        assert row["k"] == k and len(row["top_ids"]) == len(row["completion_ids"]) == len(row["sampled_logprobs"])
        for logprobs in row["top_logprobs"]:
            assert len(logprobs) == k and logprobs == sorted(logprobs, reverse=True)
        assert all(lp <= 0.0 for lp in row["sampled_logprobs"])
        assert row["teacher"] == output_of(run, "iter-00/train", "student")  # the round's starting student
    info = folder_manifest(output_of(run, "iter-01/train", "student"))["info"]
    # every row's scores reached its target tokens: the ids scored are the ids trained
    assert info["token_level"] == {"scored_rows": len(rows), "unscored_rows": 0,
                                   "term": {"kind": "reverse_kl", "weight": 1.0, "supervised": False}}
    assert info["data"]["scores"]["train"] == {"scored": len(rows),
                                               "scored_tokens": sum(len(s["completion_ids"]) for s in scores)}
    # The divergence is the whole loss. Between a random tiny student and itself shown the answer it is
    # near 0 (two near-uniform distributions, top-4 of 49k tokens): its values are checked against a
    # full-vocabulary computation in tests/test_token_training.py.
    metrics = [m for m in train_metrics(run, "iter-01/train") if m["split"] == "train"]
    assert all(m["loss"] == pytest.approx(m["loss_divergence"]) and m["loss_divergence"] >= -1e-6
               and m["loss_label"] == m["loss_mi"] == 0 for m in metrics)
    assert "iter-01/mix" not in (run / "steps.json").read_text()
    assert main(["status", str(run), "--json"]) == 0
    states = {s["step"]: s["state"] for s in json.loads(capsys.readouterr().out) if s["stage"] == "iter-01"}
    assert states["score"] == "done"

    # SIKeD + token term: the round's distillation set scored, its rows in the mix trained with the
    # term. A tiny random student solves nothing, so both are empty here (the join is the on-policy
    # run's, above); the teacher's rows carry no scores.
    run = run_with("siked", **guards_off)
    own = read_artifact(output_of(run, "iter-01/distill_set", "distill_set"), "train_examples").num_rows
    assert read_artifact(output_of(run, "iter-01/score", "token_scores"), "token_scores").num_rows == own
    trained = folder_manifest(output_of(run, "iter-01/train", "student"))
    mixed = read_artifact(output_of(run, "iter-01/mix", "train_set"), "train_examples").to_pylist()
    assert trained["info"]["token_level"] == {"scored_rows": sum(r["source"] == "student" for r in mixed),
                                              "unscored_rows": 0,
                                              "term": {"kind": "reverse_kl", "weight": 1.0, "supervised": True}}
    assert any("score/" in parent["path"] and "token_scores" in parent["path"] for parent in trained["parents"])

    # Word-level distillation: the teacher's rationales scored in the teacher round, forward KL there
    run = run_with("word_level", **{"siked.iterations": "0"}, **guards_off)
    rows = read_artifact(output_of(run, "iter-00/score", "token_scores"), "token_scores").to_pylist()
    assert rows and all(r["teacher"] == str(tiny_model_path) for r in rows)
    trained = folder_manifest(output_of(run, "iter-00/train", "student"))["info"]
    teacher_rows = read_artifact(output_of(run, "iter-00/distill_set", "distill_set"), "train_examples").num_rows
    assert trained["token_level"] == {"scored_rows": teacher_rows, "unscored_rows": 0,
                                      "term": {"kind": "forward_kl", "weight": 1.0, "supervised": True}}
    assert trained["data"]["scores"]["train"]["scored"] > 0 and not trained["data"]["scores"]["train"].get("misaligned")
    metrics = [m for m in train_metrics(run, "iter-00/train") if m["split"] == "train"]
    assert all(m["loss_divergence"] >= -1e-6 and m["loss"] > m["loss_divergence"] for m in metrics)
