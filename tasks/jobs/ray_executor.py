"""Generation over several engine replicas on Ray (`engine.replicas > 1`).

`ray_generate_into(job)` is the body `tasks.generate.generate_samples` runs in its child process
instead of `generate_into` when the engine config asks for replicas. It is the Ray driver:

- it connects to `engine.ray_address`, or with None starts a local Ray instance sized for this
  machine (one CPU slot per replica, or the machine's cores split between them; no dashboard) and
  shuts it down at the end;
- it starts `engine.replicas` replicas, one Ray actor each (`ShardWriter`: an engine and the job's
  shards of prompts), reserving `tensor_parallel_size` GPUs per vLLM replica (one per transformers
  replica) when the cluster has GPUs, CPUs otherwise (on a local CPU-only instance each replica is
  also pinned to its own cores, so vLLM's thread binding does not put every replica on one core);
- it hands each replica one pending shard at a time; the replica generates the whole shard and
  writes it itself through `ShardedArtifact.write_shard`, so replicas on other machines write to
  the shared run root; the driver prints each shard written and finally writes the folder manifest.

Seeding: each shard is generated alone with the sampler reseeded to a hash of the configured seed
and the shard index (`distill.generation.shard_seed`), so its rows do not depend on which replica
ran it or in what order, and a redone shard is the shard the lost replica would have written. The
rows record that shard seed. Greedy decoding (temperature 0) gives the rows of the single-engine
path; with sampling the rows differ from it (that path seeds once for the whole job).

Failures: a replica whose process ends (killed, out of memory, its node lost) loses only the shard
it was generating; that shard goes back to the queue and the surviving replicas take it. When no
replica is left, new ones are started, `engine.replicas` times at most in one run. A shard whose
manifest is present is never generated again: the driver skips the shards already complete when it
starts, and a replica checks its shard's manifest before generating it (a lost replica may have
written it just before it died). A replica that fails while starting (bad model path, engine error)
or a Python error while generating fails the step at once: those would fail again.

A test hook: with `SIKED_TEST_REPLICA_EXIT=<shard>:<marker file>` in the environment, the replica
that generates shard `<shard>` ends its process (os._exit) after generating and before writing it,
once: it first creates the marker file (holding its replica number), and a replica that finds the
marker there carries on. A replica lost mid-shard, whichever replica the timing gave that shard.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import Any, Protocol

from storage.parquet_file import file_problem
from storage.shards import ShardedArtifact
from tasks.compute import Stopwatch, cost
from tasks.jobs.generate import GenerationJob, model_path_of, prepare_job, shard_count, write_samples_shard

EXIT_HOOK_ENV = "SIKED_TEST_REPLICA_EXIT"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # only small results travel through it
CLOSE_TIMEOUT_S = 60


class ReplicaLost(RuntimeError):
    """A replica's process ended before it answered (or it never started: `init_failed`)."""

    def __init__(self, message: str, init_failed: bool = False):
        super().__init__(message)
        self.init_failed = init_failed


class ShardsNotWritten(RuntimeError):
    """Every replica was lost, and the replacements too, with shards still to write."""


# ---------------------------------------------------------------------------------------- replica


class ShardWriter:
    """One replica: an engine and the job's shards; generates and writes whole shards on request.

    Ray-free, so it also runs in-process (tests give it a fake `engine`).
    """

    def __init__(self, job: GenerationJob, replica_id: int, cpus: list[int] | None = None, engine: Any = None):
        if cpus:
            os.sched_setaffinity(0, cpus)  # before the engine starts its threads and processes
        self.job = job
        self.replica_id = replica_id
        self.out = ShardedArtifact(job.output_url, "samples", config_hash=job.key, parents=[job.problems_url])
        if engine is None:
            from distill.generation import make_replica_engine

            engine = make_replica_engine(job.engine, model_path_of(job))
        self.engine = engine
        self.prepared = prepare_job(job, engine)

    def generate(self, index: int) -> dict:
        """Generate and write shard `index` (unless it is complete already); what was done."""
        from distill.generation import generate_shard

        if self._complete(index):
            return {"shard": index, "replica": self.replica_id, "skipped": True}
        prepared = self.prepared
        rows, stats = generate_shard(self.engine, prepared.shards[index], index, prepared.sampling,
                                     prepared.provenance, lora_path=self.job.lora_path, tag_of=prepared.tag_of)
        self._exit_hook(index)
        write_samples_shard(self.out, index, rows)
        return {"shard": index, "replica": self.replica_id, "skipped": False, **stats}

    def _complete(self, index: int) -> bool:
        return file_problem(self.out.shard_url(index), kind="samples", config_hash=self.job.key) is None

    def _exit_hook(self, index: int) -> None:
        wanted = os.environ.get(EXIT_HOOK_ENV)
        if not wanted:
            return
        shard, marker = wanted.split(":", 1)
        if int(shard) != index:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(self.replica_id).encode())
        os.close(fd)
        os._exit(3)

    def close(self) -> None:
        self.engine.close()


# ---------------------------------------------------------------------------------------- planning


class ShardQueue:
    """Which shard each replica generates next, and what goes back when a replica is lost."""

    def __init__(self, pending: list[int]):
        self._waiting = deque(sorted(pending))
        self.running: dict[int, int] = {}  # replica -> shard
        self.written: list[int] = []
        self.redone: list[int] = []  # shards handed out again after their replica was lost

    def take(self, replica: int) -> int | None:
        """The next shard for `replica` (which must be idle), or None when none is waiting."""
        if replica in self.running:
            raise ValueError(f"replica {replica} is still generating shard {self.running[replica]}")
        if not self._waiting:
            return None
        shard = self._waiting.popleft()
        self.running[replica] = shard
        return shard

    def done(self, replica: int) -> int:
        shard = self.running.pop(replica)
        self.written.append(shard)
        return shard

    def lost(self, replica: int) -> int | None:
        """Put the lost replica's shard (if any) first in line again."""
        shard = self.running.pop(replica, None)
        if shard is not None:
            self._waiting.appendleft(shard)
            self.redone.append(shard)
        return shard

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def left(self) -> list[int]:
        return sorted([*self._waiting, *self.running.values()])


class ReplicaPool(Protocol):
    """Replicas the driver starts, feeds and drops (Ray actors, or in-process ones in tests)."""

    def start(self, replica: int) -> None: ...

    def submit(self, replica: int, shard: int) -> Hashable: ...

    def wait(self, handles: list[Hashable]) -> Hashable:
        """One handle whose call has finished (or failed)."""
        ...

    def result(self, handle: Hashable) -> dict:
        """The call's answer; raises ReplicaLost when the replica's process is gone."""
        ...

    def drop(self, replica: int) -> None: ...

    def close(self) -> None: ...


def drive(pool: ReplicaPool, pending: list[int], replicas: int, total: int,
          say: Callable[[str], None] | None = None) -> dict:
    """Generate the `pending` shards (of `total`) on `replicas` replicas.

    Returns counts (shards_written, prompts, completions, output_tokens, seconds: the whole drive,
    replica starts included), replicas started and lost, shards found complete or redone,
    `written_by` {shard: replica} and `busy_s` {replica: seconds spent generating}.
    """
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    queue = ShardQueue(pending)
    live: set[int] = set()
    inflight: dict[Hashable, int] = {}  # handle -> replica
    stats: dict[str, Any] = {"shards_written": 0, "prompts": 0, "completions": 0, "output_tokens": 0,
                             "replicas": replicas, "replicas_started": 0, "replicas_lost": 0,
                             "found_complete": 0, "written_by": {}, "busy_s": {}}
    replacements = replicas
    started = time.perf_counter()

    def start(replica: int) -> None:
        pool.start(replica)
        live.add(replica)
        stats["replicas_started"] += 1

    def feed_idle() -> None:
        busy = set(inflight.values())
        for replica in sorted(live - busy):
            shard = queue.take(replica)
            if shard is not None:
                inflight[pool.submit(replica, shard)] = replica

    for replica in range(min(replicas, len(pending))):
        start(replica)
    feed_idle()
    while inflight:
        handle = pool.wait(list(inflight))
        replica = inflight.pop(handle)
        try:
            answer = pool.result(handle)
        except ReplicaLost as lost:
            if lost.init_failed:
                raise RuntimeError(f"replica {replica} could not start: {lost}") from lost
            shard = queue.lost(replica)
            live.discard(replica)
            pool.drop(replica)
            stats["replicas_lost"] += 1
            say(f"ray generation: replica {replica} lost while generating shard {shard + 1}/{total}; "
                "the shard goes back to the queue")
            if not live and queue.waiting and replacements:
                replacements -= 1
                start(stats["replicas_started"])  # a fresh replica number
            feed_idle()
            continue
        shard = queue.done(replica)
        _count(stats, answer)
        elapsed = time.perf_counter() - started
        verb = "was already written" if answer.get("skipped") else f"written by replica {replica}"
        say(f"ray generation: shard {shard + 1}/{total} {verb} ({len(queue.written)}/{len(pending)} this run, "
            f"{stats['output_tokens']} tokens in {elapsed:.0f} s, replica starts included)")
        feed_idle()
    if queue.left():
        raise ShardsNotWritten(f"every replica was lost; shards not written: {queue.left()} "
                               "(a rerun generates only those)")
    stats["redone_shards"] = queue.redone
    stats["seconds"] = time.perf_counter() - started
    return stats


def _count(stats: dict, answer: dict) -> None:
    if answer.get("skipped"):
        stats["found_complete"] += 1
        return
    stats["shards_written"] += 1
    replica = str(answer["replica"])
    stats["written_by"][str(answer["shard"])] = answer["replica"]
    stats["busy_s"][replica] = stats["busy_s"].get(replica, 0.0) + answer.get("seconds", 0.0)
    for name in ("prompts", "completions", "output_tokens"):
        stats[name] += answer.get(name, 0)


# ---------------------------------------------------------------------------------------- Ray


class RayPool:
    """Replicas as Ray actors, one `ShardWriter` each."""

    def __init__(self, job: GenerationJob, resources: dict, cpu_slots: list[list[int]] | None):
        import ray

        self._job = job
        self._resources = resources
        self._slots = cpu_slots
        self._actor_class = ray.remote(ShardWriter)
        self._actors: dict[int, Any] = {}

    def start(self, replica: int) -> None:
        cpus = self._slots[replica % len(self._slots)] if self._slots else None
        # No automatic restart or retry: the driver decides what is redone (see the module docstring).
        options = {"max_restarts": 0, "max_task_retries": 0, **self._resources}
        self._actors[replica] = self._actor_class.options(**options).remote(self._job, replica, cpus)

    def submit(self, replica: int, shard: int) -> Hashable:
        return self._actors[replica].generate.remote(shard)

    def wait(self, handles: list[Hashable]) -> Hashable:
        import ray

        ready, _ = ray.wait(handles, num_returns=1)
        return ready[0]

    def result(self, handle: Hashable) -> dict:
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(handle)
        except RayActorError as exc:
            raise ReplicaLost(str(exc), init_failed=exc.actor_init_failed) from None

    def drop(self, replica: int) -> None:
        import ray

        actor = self._actors.pop(replica, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Close every engine (vLLM frees its memory and processes), then end the actors."""
        import ray

        closing = [actor.close.remote() for actor in self._actors.values()]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
        finally:
            for replica in list(self._actors):
                self.drop(replica)


def local_cpu_layout(replicas: int) -> tuple[int, list[list[int]]]:
    """For a local CPU-only Ray instance: its CPU count, and each replica's cores.

    The cores this process may use are split into `replicas` groups (repeating cores when there
    are fewer cores than replicas).
    """
    cores = sorted(os.sched_getaffinity(0))
    per_replica = max(1, len(cores) // replicas)
    slots = [[cores[(r * per_replica + k) % len(cores)] for k in range(per_replica)] for r in range(replicas)]
    return max(replicas, per_replica * replicas), slots


@contextmanager
def ray_session(address: str | None, replicas: int, gpus_per_replica: int = 1):
    """Yield (actor resources per replica, CPU slots or None); connects to `address` or starts and
    sizes a local instance. A Ray session already open in this process is used and left open."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    owned = not ray.is_initialized()
    slots = None
    if owned and address:
        ray.init(address=address)
    elif owned:
        gpus = _local_gpus()
        cpus, slots = local_cpu_layout(replicas)
        if gpus:
            cpus, slots = replicas, None
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    try:
        yield replica_resources(ray.cluster_resources(), slots, gpus_per_replica), slots
    finally:
        if owned:
            ray.shutdown()


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def replica_resources(cluster: dict, slots: list[list[int]] | None, gpus_per_replica: int) -> dict:
    """What each replica's actor reserves: its GPUs when the cluster has any, else its CPUs."""
    if cluster.get("GPU", 0) > 0:
        return {"num_cpus": 1, "num_gpus": gpus_per_replica}
    return {"num_cpus": len(slots[0]) if slots else 1}


def ray_generate_into(job: GenerationJob) -> dict:
    """Child-process body with `engine.replicas > 1`: the missing shards over Ray replicas, then
    the folder manifest. Returns counts as `generate_into` does, plus the replicas' own."""
    from distill.engines import EngineError

    if job.engine.kind not in ("vllm", "transformers"):
        raise EngineError(f"engine.replicas > 1 needs a local engine (vllm or transformers), not {job.engine.kind!r}")
    watch = Stopwatch()
    out = ShardedArtifact(job.output_url, "samples", config_hash=job.key, parents=[job.problems_url])
    total = shard_count(job)
    done = out.completed_shards()
    pending = [index for index in range(total) if index not in done]
    stats: dict[str, Any] = {"shards_written": 0}
    if done:
        print(f"ray generation: {len(done)} of {total} shards already written, reusing them",
              file=sys.stderr, flush=True)
    if pending:
        model_path_of(job)  # prepares a builtin model once here, not in every replica at once
        engine = job.engine
        gpus = engine.tensor_parallel_size if engine.kind == "vllm" else 1  # transformers uses one device
        with ray_session(engine.ray_address, engine.replicas, gpus) as (resources, slots):
            pool = RayPool(job, resources, slots)
            try:
                stats = drive(pool, pending, engine.replicas, total)
            finally:
                pool.close()
    out.finalize(total, info=cost(watch))
    stats["shards"] = total
    stats["reused_shards"] = len(done)
    return stats
