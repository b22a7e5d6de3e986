"""What steps cost (tasks.compute): the figures each step body records in its outputs' manifests,
read back from the files and summed per step, per kind and per run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from distill.config import EngineConfig, SamplingConfig, VerifyConfig
from distill.engines.base import Completion
from storage.artifacts import read_artifact, read_manifest, write_artifact
from storage.folders import mark_folder_complete
from storage.shards import ShardedArtifact
from tasks.compute import FIGURES, Stopwatch, cost, run_compute, step_figures

# --------------------------------------------------------------------------- the step bodies


class CountingEngine:
    """Completions of `tokens` tokens each; fails on the call after `dies_after` calls."""

    name, version, model = "fake", "0", "fake"

    def __init__(self, tokens: int = 3, dies_after: int | None = None):
        self.tokens, self.dies_after, self.calls = tokens, dies_after, 0

    def generate(self, requests, sampling, lora_path=None):
        if self.dies_after is not None and self.calls >= self.dies_after:
            raise RuntimeError("killed")
        self.calls += 1
        return [[Completion(f"{r.key} The answer is 1.", 5, self.tokens, "stop") for _ in range(sampling.n)]
                for r in requests]

    def tokenizer(self):
        return None

    def close(self) -> None:
        pass


def test_generation_records_every_shards_completion_tokens_a_killed_attempts_too(tmp_path, monkeypatch):
    import distill.engines
    from tasks.jobs.generate import generate_into
    from tests.test_ray_generation import make_job

    job = make_job(tmp_path, "samples", EngineConfig(kind="file", model="fake"),
                   SamplingConfig(n=2, temperature=0.7, max_tokens=8, stop=[]))
    engines = iter([CountingEngine(tokens=3, dies_after=2), CountingEngine(tokens=4)])
    monkeypatch.setattr(distill.engines, "make_engine", lambda *a, **k: next(engines))
    with pytest.raises(RuntimeError, match="killed"):
        generate_into(job)  # shards 0 and 1 written: 2 questions x 2 samples x 3 tokens
    assert generate_into(job)["reused_shards"] == 2  # shards 2 to 4: 3 x 2 x 4 tokens
    info = read_manifest(job.output_url)["info"]
    rows = read_artifact(job.output_url, "samples").to_pylist()
    assert info["tokens_generated"] == sum(r["completion_tokens"] for r in rows) == 12 + 24
    assert info["seconds"] >= 0


def test_replicas_record_the_tokens_of_the_shards_they_write(tmp_path):
    from tests.test_ray_generation import run_drive

    _, _, url = run_drive(tmp_path, "replicas", replicas=2)
    rows = read_artifact(url, "samples").to_pylist()
    assert read_manifest(url)["info"]["tokens_generated"] == sum(r["completion_tokens"] for r in rows) == 20


def test_each_evaluation_output_records_its_tokens_and_the_seconds_add_up_to_the_body(tmp_path, monkeypatch):
    import distill.engines
    from tasks.jobs.evaluate import EvalJob, evaluate_into
    from tests.test_ray_generation import make_problems

    monkeypatch.setattr(distill.engines, "make_engine", lambda *a, **k: CountingEngine(tokens=6))
    problems = make_problems(tmp_path, count=4)
    outputs = [str(tmp_path / f"arith-test-{mode}.parquet") for mode in ("rationale", "forced_cot")]
    job = EvalJob(model="fake/model", engine=EngineConfig(kind="transformers"), verify=VerifyConfig(workers=1),
                  max_tokens=8, key="evaluate", label="base",
                  targets=tuple(("arith-test", problems, mode, out) for mode, out in zip(("rationale", "forced_cot"),
                                                                                        outputs, strict=True)))
    started = time.perf_counter()
    evaluate_into(job)
    took = time.perf_counter() - started
    infos = [read_manifest(out)["info"] for out in outputs]
    assert [i["tokens_generated"] for i in infos] == [4 * 6, 4 * 6]  # per pair, not the running total
    assert 0 < sum(i["seconds"] for i in infos) <= took + 0.01


def test_scoring_records_the_completion_positions_it_scored(tmp_path, tiny_model_path):
    from tasks.jobs.score import score_into
    from tests.test_score_step import score_job

    job = score_job(tmp_path, tiny_model_path)
    score_into(job)
    rows = read_artifact(job.output_url, "token_scores").to_pylist()
    info = read_manifest(job.output_url)["info"]
    assert info["tokens_scored"] == sum(len(r["completion_ids"]) for r in rows) > 0
    assert info["seconds"] > 0


def test_training_counts_each_target_token_once_per_step_that_trained_it_across_a_resume(tiny_model_path,
                                                                                         tmp_path):
    """Every step trains the whole set (one batch of 8 rows), so two steps train twice one step's
    tokens; a run stopped after step 1 and resumed counts as much as one never stopped."""
    from distill.training.loop import train_student
    from tests.test_training import quiet, tiny_cfg
    from tests.test_training_data import make_rows

    rows, model = make_rows(8, words=2), str(tiny_model_path)
    cfg = tiny_cfg(batch_size=8, val_fraction=0.0, checkpoint_every=1, max_steps=2)
    two = train_student(cfg, rows, model, tmp_path / "o2", tmp_path / "c2", quiet())
    one = train_student(cfg, rows, model, tmp_path / "o1", tmp_path / "c1", quiet(stop_after_step=1))
    resumed = train_student(cfg, rows, model, tmp_path / "o1", tmp_path / "c1", quiet())
    assert 0 < one.tokens_trained < one.metrics[0]["tokens"]  # targets only: the prompts are not trained
    assert two.tokens_trained == 2 * one.tokens_trained
    assert resumed.tokens_trained == two.tokens_trained


# --------------------------------------------------------------------------- reading and summing


def test_stopwatch_laps_count_each_second_once_and_cost_leaves_unknown_counts_out():
    watch = Stopwatch()
    time.sleep(0.02)
    first = cost(watch, tokens_generated=7, tokens_scored=None)
    second = cost(watch)
    assert first["seconds"] >= 0.02 and second["seconds"] < first["seconds"]
    assert first.keys() == {"seconds", "tokens_generated"} and second.keys() == {"seconds"}


def parquet_output(folder: Path, name: str, **info) -> str:
    url = str(folder / f"{name}.parquet")
    write_artifact(url, [{"question_id": "q", "benchmark": "b", "source_id": "s", "shared": 1, "example": "e"}],
                   "overlaps", info=info or None)
    return url


def student(folder: Path, name: str, **info) -> str:
    out = folder / name
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"w")
    mark_folder_complete(str(out), {"best_step": 2, **info})
    return str(out)


def entry(name: str, kind: str, iteration: int | None, **outputs: str) -> dict:
    return {"name": name, "kind": kind, "iteration": iteration, "outputs": outputs}


def test_a_runs_compute_sums_its_steps_per_kind_and_names_the_steps_without_figures(tmp_path):
    entries = [
        entry("base/evaluate", "evaluate", None, a=parquet_output(tmp_path, "b1", tokens_generated=10, seconds=1.0),
              b=parquet_output(tmp_path, "b2", tokens_generated=5, seconds=0.5)),
        entry("iter-00/generate", "generate", 0, samples=parquet_output(tmp_path, "g0", tokens_generated=100,
                                                                         seconds=4.0)),
        entry("iter-00/train", "train", 0, student=student(tmp_path, "s0", tokens_trained=40, seconds=8.0),
              metrics=parquet_output(tmp_path, "m0")),  # the metrics record nothing: the student does
        entry("iter-00/evaluate", "evaluate", None, a=parquet_output(tmp_path, "e0", tokens_generated=7, seconds=1.0)),
        entry("iter-01/score", "score", 1, token_scores=parquet_output(tmp_path, "sc1", tokens_scored=90,
                                                                       seconds=3.0)),
        entry("iter-01/train", "train", 1, student=student(tmp_path, "s1", tokens_trained=60, seconds=9.0)),
        entry("iter-01/evaluate", "evaluate", 1, a=parquet_output(tmp_path, "e1", tokens_generated=8, seconds=1.0)),
        entry("problems/train", "problems", None, problems=parquet_output(tmp_path, "p")),  # made before figures
        entry("iter-02/train", "train", 2, student=str(tmp_path / "not-yet")),  # not done
        entry("iter-02/evaluate", "evaluate", 2, a=str(tmp_path / "not-yet.parquet")),
        entry("report", "report", None, report=str(tmp_path / "report.md")),
    ]
    c = run_compute(entries)
    assert c["total"] == {"tokens_generated": 130, "tokens_scored": 90, "tokens_trained": 100, "seconds": 27.5}
    assert c["by_kind"]["evaluate"] == {"tokens_generated": 30, "tokens_scored": 0, "tokens_trained": 0,
                                        "seconds": 3.5, "steps": 3}
    assert c["by_kind"]["train"]["steps"] == 2 and list(c["by_kind"]) == ["evaluate", "generate", "train", "score"]
    assert c["unrecorded"] == ["problems/train", "iter-02/train", "iter-02/evaluate"]  # the report is no step
    # The training of every round so far; unknown from a round whose training has no figures on.
    assert c["tokens_trained_by_stage"] == {"base": 0, "iter-00": 40, "iter-01": 100, "iter-02": None}
    assert step_figures([str(tmp_path / "nothing")]) is None
    assert set(c["total"]) == set(FIGURES)


def test_a_reused_step_reads_the_figures_of_the_run_that_computed_it(tmp_path):
    """Figures live in the outputs' manifests: reading them computes nothing and changes nothing."""
    url = parquet_output(tmp_path, "g", tokens_generated=100, seconds=4.0)
    before = Path(url + ".manifest.json").stat().st_mtime_ns
    assert run_compute([entry("iter-00/generate", "generate", 0, samples=url)])["total"]["tokens_generated"] == 100
    assert Path(url + ".manifest.json").stat().st_mtime_ns == before


def test_sharded_outputs_read_as_one_output(tmp_path):
    out = ShardedArtifact(str(tmp_path / "samples"), "samples", config_hash="k")
    out.write_shard(0, [{"question_id": "q", "sample_index": 0, "text": "t"}], info={"tokens_generated": 4})
    out.finalize(1, info={"seconds": 1.25})
    assert step_figures([out.url]) == {"tokens_generated": 4, "tokens_scored": 0, "tokens_trained": 0,
                                       "seconds": 1.25}
