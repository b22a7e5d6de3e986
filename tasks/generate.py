"""Generation step: teacher samples (iteration 0) or student self-samples (iterations >= 1).

The task runs `generate_into` in a spawned child process: vLLM's memory is freed when the step
ends, and a crash of the engine cannot take the flow down. The child writes each shard through
storage as soon as it completes, so a killed step loses at most the shards in flight, and a rerun
generates only the shards whose manifest is missing. With `engine.replicas > 1` the child is the
Ray driver of `tasks.ray_generate` instead, which spreads the shards over engine replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task

from distill.config import EngineConfig, SamplingConfig
from storage.artifacts import artifact_ref, read_manifest
from storage.shards import ShardedArtifact
from tasks.progress import with_progress


@dataclass(frozen=True)
class GenerationJob:
    """Everything the child process needs (picklable)."""

    problems_url: str
    output_url: str
    key: str
    engine: EngineConfig
    sampling: SamplingConfig
    model: str  # model spec or folder; for students the current checkpoint
    strategies: tuple[str, ...]  # teacher strategies; empty = the student picks (self-generation)
    shard_size: int
    iteration: int
    source: str  # teacher | student
    lora_path: str | None = None
    data_dir: str | None = None  # the file engine reads its rationale files from here
    shots: int = 8  # teacher prompts: worked exemplars per prompt


def _teacher_prompts(problems: list[dict], strategies: tuple[str, ...], tokenizer, chat_setting: str,
                     shots: int = 8):
    from distill.generation import PromptSpec
    from distill.strategies.render import prompt_hash, prompt_mode, render_prompt, wants_chat_template

    use_chat = wants_chat_template(tokenizer, chat_setting)
    mode = prompt_mode(use_chat)
    hashes = {s: prompt_hash(s, mode, shots) for s in strategies}
    return [PromptSpec(p["id"], s, render_prompt(s, p["question"], tokenizer, use_chat, shots), hashes[s])
            for p in problems for s in strategies]


def _student_prompts(problems: list[dict]):
    from distill.generation import AUTO_STRATEGY, PromptSpec
    from distill.student_format import rationale_prompt, student_prompt_hash

    version = student_prompt_hash("rationale")
    return [PromptSpec(p["id"], AUTO_STRATEGY, rationale_prompt(p["question"]), version) for p in problems]


def _stop_strings(sampling: SamplingConfig, teacher: bool) -> SamplingConfig:
    """Teacher prompts stop at the next exemplar boundary whatever the config lists."""
    if not teacher:
        return sampling
    from distill.strategies.render import STOP_STRINGS

    stops = list(dict.fromkeys([*sampling.stop, *STOP_STRINGS]))
    return sampling.model_copy(update={"stop": stops})


@dataclass
class PreparedJob:
    """A job's shards of prompts and what each row records, ready for an engine."""

    shards: list
    sampling: SamplingConfig
    provenance: object  # distill.generation.Provenance
    tag_of: object  # None for the teacher; the student's strategy-tag parser otherwise


def model_path_of(job: GenerationJob) -> str:
    """The folder (or name) the engine loads: builtin and Hub models resolve on this machine, and a
    student under a remote run root is downloaded into this machine's mirror (storage.mirror)."""
    from distill.models import resolve_model
    from storage.mirror import local_model
    from storage.paths import models_dir

    local = job.engine.kind in ("vllm", "transformers")
    return resolve_model(local_model(job.model), models_dir()) if local else job.model


def prepare_job(job: GenerationJob, engine) -> PreparedJob:
    """Prompts rendered with `engine`'s tokenizer, cut into shards of `job.shard_size` questions."""
    from distill.generation import Provenance, shard_prompts
    from distill.student_format import parse_student_output
    from storage.artifacts import read_artifact

    problems = read_artifact(job.problems_url, "problems").to_pylist()
    teacher = bool(job.strategies)
    prompts = (_teacher_prompts(problems, job.strategies, engine.tokenizer(), job.engine.chat_template,
                                job.shots) if teacher else _student_prompts(problems))
    provenance = Provenance(model=job.model, engine=engine.name, engine_version=engine.version,
                            seed=job.engine.seed, iteration=job.iteration, source=job.source)
    return PreparedJob(shard_prompts(prompts, job.shard_size), _stop_strings(job.sampling, teacher), provenance,
                       None if teacher else (lambda text: parse_student_output(text)[0]))


def shard_count(job: GenerationJob) -> int:
    """Shards the job's problems make (whole questions per shard)."""
    return -(-read_manifest(job.problems_url)["rows"] // job.shard_size)


def generate_into(job: GenerationJob) -> dict:
    """Child-process body: build the engine, generate the missing shards, finalize the artifact."""
    from distill.engines import make_engine
    from distill.generation import run_generation

    out = ShardedArtifact(job.output_url, "samples", config_hash=job.key, parents=[job.problems_url])
    engine = make_engine(job.engine, model_path_of(job), data_dir=job.data_dir)
    try:
        prepared = prepare_job(job, engine)
        shards = prepared.shards
        done = out.completed_shards()
        stats = run_generation(engine, shards, prepared.sampling, prepared.provenance, out.write_shard, skip=done,
                               lora_path=job.lora_path, tag_of=prepared.tag_of)
    finally:
        engine.close()
    out.finalize(len(shards))
    stats["shards"] = len(shards)
    stats["reused_shards"] = len(done)
    return stats


@task(name="generate", task_run_name="iter-{job.iteration:02d}-generate-{job.source}", retries=1,
      retry_delay_seconds=5)
def generate_samples(job: GenerationJob) -> dict:
    """Sharded SAMPLES artifact at `job.output_url`; returns its ref with generation stats."""
    out = ShardedArtifact(job.output_url, "samples", config_hash=job.key)
    stats: dict = {"reused_shards": "all"}
    if not out.is_complete(verify_hash=False):
        from distill.engines.child import run_in_child

        total = shard_count(job)
        body = generate_into
        if job.engine.replicas > 1:  # shards spread over engine replicas on Ray
            from tasks.ray_generate import ray_generate_into as body
        stats = with_progress(f"generate-{job.source}-{job.iteration:02d}",
                              f"Iteration {job.iteration}: {job.source} samples, shards written",
                              lambda: len(out.completed_shards(verify_hash=False)) / total,
                              run_in_child, body, job)
    ref = artifact_ref(job.output_url)
    ref["stats"] = stats
    return ref
