"""The generation step's job and its child-process body.

`generate_into(job)` runs in a spawned child (tasks.generate): it builds the engine, generates the
shards whose manifest is missing and writes each one as soon as it completes, so a killed step loses
at most the shards in flight. With `engine.replicas > 1` the child runs
`tasks.jobs.ray_executor.ray_generate_into` instead, which spreads the shards over engine replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from distill import timings
from distill.config import EngineConfig, SamplingConfig
from storage.artifacts import read_manifest, with_manifests
from storage.shards import ShardedArtifact
from tasks.compute import Stopwatch, cost


@dataclass(frozen=True)
class GenerationJob:
    """Everything the child process needs (picklable)."""

    problems_url: str
    output_url: str
    key: str
    engine: EngineConfig
    sampling: SamplingConfig
    model: str  # model spec or folder; for students the current checkpoint
    strategies: tuple[str, ...]  # the teacher's strategies, or those primed for the student; empty = it picks
    shard_size: int
    iteration: int
    source: str  # teacher | student
    lora_path: str | None = None
    data_dir: str | None = None  # the file engine reads its rationale files from here
    shots: int = 8  # teacher prompts: worked exemplars per prompt
    self_generation: str | None = None  # the student's: forced (each of `strategies` primed) | free
    free_choice_samples: int = 0  # forced: free-choice samples per question, written to `free_choice_url`
    free_choice_url: str | None = None

    def free_choice_job(self) -> GenerationJob | None:
        """The job that measures P_SM beside forced self-generation: the student picks its strategy,
        `free_choice_samples` per question, written to `free_choice_url` (None when not asked)."""
        if not self.free_choice_samples or self.free_choice_url is None:
            return None
        return replace(self, output_url=self.free_choice_url, strategies=(), self_generation="free",
                       sampling=self.sampling.model_copy(update={"n": self.free_choice_samples}),
                       free_choice_samples=0, free_choice_url=None)


@dataclass
class PreparedJob:
    """A job's shards of prompts and what each row records, ready for an engine."""

    shards: list
    sampling: SamplingConfig
    provenance: object  # distill.generation.Provenance
    tag_of: object  # None for the teacher; the student's strategy-tag parser otherwise


def model_path_of(job: GenerationJob) -> str:
    """The folder (or name) the job's engine loads (`engine_model_path`)."""
    return engine_model_path(job.model, job.engine.kind)


def engine_model_path(model: str, kind: str) -> str:
    """The folder (or name) an engine of `kind` loads for `model`: builtin and Hub models resolve on
    this machine, and a student under a remote run root is downloaded into this machine's mirror
    (storage.mirror); a served model (`openai`) stays a name."""
    from distill.models import resolve_model
    from storage.mirror import local_model
    from storage.paths import models_dir

    return resolve_model(local_model(model), models_dir()) if kind in ("vllm", "transformers") else model


def prepare_job(job: GenerationJob, engine) -> PreparedJob:
    """Prompts rendered with `engine`'s tokenizer, cut into shards of `job.shard_size` questions."""
    from distill.generation import Provenance, shard_prompts
    from distill.prompts import forced_student_prompts, stop_strings, student_prompts, teacher_prompts
    from distill.student_format import parse_student_output
    from storage.artifacts import read_artifact

    problems = read_artifact(job.problems_url, "problems").to_pylist()
    teacher = job.source == "teacher"
    if teacher:
        prompts = teacher_prompts(problems, job.strategies, engine.tokenizer(), job.engine.chat_template, job.shots)
    elif job.self_generation == "forced":
        prompts = forced_student_prompts(problems, job.strategies)
    else:
        prompts = student_prompts(problems)
    provenance = Provenance(model=job.model, engine=engine.name, engine_version=engine.version,
                            seed=job.engine.seed, iteration=job.iteration, source=job.source)
    return PreparedJob(shard_prompts(prompts, job.shard_size), stop_strings(job.sampling, teacher), provenance,
                       None if teacher else (lambda text: parse_student_output(text)[0]))


def shard_count(job: GenerationJob) -> int:
    """Shards the job's problems make (whole questions per shard)."""
    return -(-read_manifest(job.problems_url)["rows"] // job.shard_size)


def write_samples_shard(out: ShardedArtifact, index: int, rows: list[dict]) -> None:
    """Write one shard of samples, its manifest recording the completion tokens the engine produced
    for it (the folder's manifest sums them: tasks.compute)."""
    out.write_shard(index, rows, info={"tokens_generated": sum(int(r["completion_tokens"] or 0) for r in rows)})


def generate_shard_by_shard(engine, prepared: PreparedJob, out: ShardedArtifact, done: set[int],
                            lora_path: str | None) -> dict:
    """`engine.deterministic`: each missing shard alone, the sampler reseeded for it
    (distill.generation.generate_shard), so a shard's samples repeat whatever ran before it."""
    from distill.generation import generate_shard

    stats = {"prompts": 0, "completions": 0, "output_tokens": 0, "seconds": 0.0, "shards_written": 0}
    pending = [i for i in range(len(prepared.shards)) if i not in done]
    for count, index in enumerate(pending, 1):
        rows, shard_stats = generate_shard(engine, prepared.shards[index], index, prepared.sampling,
                                           prepared.provenance, lora_path=lora_path, tag_of=prepared.tag_of)
        write_samples_shard(out, index, rows)
        for key in stats:
            stats[key] += shard_stats.get(key, 0)
        stats["shards_written"] += 1
        print(f"generation: shard {index + 1}/{len(prepared.shards)} written ({count}/{len(pending)} this run, "
              "reseeded)", flush=True)
    return stats


def generate_into(job: GenerationJob) -> dict:
    """Child-process body: build the engine, generate the missing shards, finalize the artifact."""
    from distill.engines import make_engine
    from distill.generation import make_replica_engine, run_generation

    watch = Stopwatch()
    out = ShardedArtifact(job.output_url, "samples", config_hash=job.key,
                          parents=with_manifests(job.problems_url, job.model))  # a student is a parent
    repeatable = job.engine.deterministic and job.engine.kind in ("vllm", "transformers")
    engine = (make_replica_engine(job.engine, model_path_of(job)) if repeatable
              else make_engine(job.engine, model_path_of(job), data_dir=job.data_dir))
    try:
        prepared = prepare_job(job, engine)
        shards = prepared.shards
        done = out.completed_shards()
        with timings.span("generate", source=job.source, iteration=job.iteration):
            if repeatable:
                stats = generate_shard_by_shard(engine, prepared, out, set(done), job.lora_path)
            else:
                stats = run_generation(engine, shards, prepared.sampling, prepared.provenance,
                                       lambda index, rows: write_samples_shard(out, index, rows),
                                       skip=done, lora_path=job.lora_path, tag_of=prepared.tag_of)
    finally:
        engine.close()
    out.finalize(len(shards), info=cost(watch))
    stats["shards"] = len(shards)
    stats["reused_shards"] = len(done)
    return stats
