"""One generation function for teacher and student alike.

A generation job is a list of prompts (question x strategy, or question alone when the student
chooses its strategy), cut into shards of whole questions. The engine receives every pending prompt
at once so it can batch continuously; as soon as every prompt of a shard has its completions, the
shard's rows are handed to `on_shard` (the caller writes them), so a crash loses at most the shards
still in flight and a rerun skips the shards already written.

Rows carry the SAMPLES columns of the artifact schema (question_id, strategy, sample_index,
prompt_hash, text, token counts, finish_reason, model, engine, engine_version, sampling, seed,
iteration, source).

Replicated generation (several engines, each taking whole shards) uses `generate_shard`: the shard
is generated in a batch of its own after the engine's sampler is reseeded with
`shard_seed(seed, index)`, a hash of the configured seed and the shard index. A shard's rows then
depend on the configured seed, the shard index, its prompts and the engine settings only, not on
which replica ran it nor on what that replica ran before, so a shard redone after a lost replica
comes out as it would have the first time. Its rows record that shard seed in `seed`. (The
single-engine path, `run_generation` over every shard at once, seeds the engine once and records
the configured seed.) Engines that take part offer `reseed(seed)`; `make_replica_engine` builds
one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from distill.config import EngineConfig, SamplingConfig
from distill.engines.base import Completion, GenerationRequest

AUTO_STRATEGY = "auto"  # the student writes its own strategy tag


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of a generation job: what it asks, and for which question."""

    question_id: str
    strategy: str  # cot | l2m | pot, or AUTO_STRATEGY when the model picks
    prompt: str
    prompt_hash: str
    # What the prompt ends with that belongs to the answer (a primed strategy tag): stored in front
    # of each completion, so a row's text reads as the model's whole answer.
    response_prefix: str = ""

    @property
    def key(self) -> str:
        return f"{self.question_id}|{self.strategy}"


@dataclass(frozen=True)
class Provenance:
    """What every row of a job records about how it was made."""

    model: str
    engine: str
    engine_version: str
    seed: int
    iteration: int
    source: str  # teacher | student


def shard_prompts(prompts: list[PromptSpec], shard_size: int) -> list[list[PromptSpec]]:
    """Group prompts into shards of `shard_size` whole questions, in first-seen question order."""
    order: list[str] = []
    by_question: dict[str, list[PromptSpec]] = {}
    for spec in prompts:
        if spec.question_id not in by_question:
            order.append(spec.question_id)
            by_question[spec.question_id] = []
        by_question[spec.question_id].append(spec)
    shards = []
    for start in range(0, len(order), shard_size):
        shards.append([spec for qid in order[start:start + shard_size] for spec in by_question[qid]])
    return shards


def sampling_json(sampling: SamplingConfig) -> str:
    return json.dumps(sampling.model_dump(mode="json"), sort_keys=True)


def completion_rows(spec: PromptSpec, completions: list[Completion], sampling: SamplingConfig,
                    provenance: Provenance, tag_of: Callable[[str], str | None] | None = None) -> list[dict]:
    """Rows for one prompt's n completions, each text led by the prompt's `response_prefix`. With
    AUTO_STRATEGY, `tag_of(text)` names the strategy the model wrote (None -> "none", which
    verification marks bad_format)."""
    rows = []
    params = sampling_json(sampling)
    for index, completion in enumerate(completions):
        strategy = spec.strategy
        if strategy == AUTO_STRATEGY:
            strategy = (tag_of(completion.text) if tag_of else None) or "none"
        rows.append({
            "question_id": spec.question_id,
            "strategy": strategy,
            "sample_index": index,
            "prompt_hash": spec.prompt_hash,
            "text": spec.response_prefix + completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason,
            "model": provenance.model,
            "engine": provenance.engine,
            "engine_version": provenance.engine_version,
            "sampling": params,
            "seed": provenance.seed,
            "iteration": provenance.iteration,
            "source": provenance.source,
        })
    return rows


def _stream(engine, requests: list[GenerationRequest], sampling: SamplingConfig, lora_path: str | None,
            shard_of: list[int]) -> Iterator[tuple[int, list[Completion]]]:
    """(request index, completions) as requests finish. Engines with `generate_stream` keep one
    continuous batch; others are called once per shard."""
    if hasattr(engine, "generate_stream"):
        yield from engine.generate_stream(requests, sampling, lora_path=lora_path)
        return
    start = 0
    while start < len(requests):
        end = start
        while end < len(requests) and shard_of[end] == shard_of[start]:
            end += 1
        outputs = engine.generate(requests[start:end], sampling, lora_path=lora_path)
        yield from ((start + i, out) for i, out in enumerate(outputs))
        start = end


def run_generation(engine, shards: list[list[PromptSpec]], sampling: SamplingConfig, provenance: Provenance,
                   on_shard: Callable[[int, list[dict]], None], skip: Iterable[int] = (),
                   lora_path: str | None = None, tag_of: Callable[[str], str | None] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Generate every shard not in `skip`, calling `on_shard(index, rows)` as each one completes.

    Returns counts: shards written, prompts, completions, output tokens, seconds.
    """
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    skip = set(skip)
    pending = [i for i in range(len(shards)) if i not in skip]
    requests: list[GenerationRequest] = []
    owner: list[tuple[int, int, PromptSpec]] = []  # (shard, position in shard, prompt)
    for shard_index in pending:
        for position, spec in enumerate(shards[shard_index]):
            requests.append(GenerationRequest(key=spec.key, prompt=spec.prompt, question_id=spec.question_id))
            owner.append((shard_index, position, spec))
    if skip:
        say(f"generation: {len(skip)} of {len(shards)} shards already written, reusing them")
    remaining = {i: len(shards[i]) for i in pending}
    results: dict[int, list[tuple[int, list[dict]]]] = {i: [] for i in pending}
    stats = {"shards_written": 0, "prompts": len(requests), "completions": 0, "output_tokens": 0}
    started = time.perf_counter()
    for request_index, completions in _stream(engine, requests, sampling, lora_path, [shard for shard, _, _ in owner]):
        shard_index, position, spec = owner[request_index]
        rows = completion_rows(spec, completions, sampling, provenance, tag_of)
        results[shard_index].append((position, rows))
        stats["completions"] += len(rows)
        stats["output_tokens"] += sum(r["completion_tokens"] for r in rows)
        remaining[shard_index] -= 1
        if remaining[shard_index] == 0:
            # Rows in prompt order whatever order the engine finished them in.
            shard_rows = [row for _, rows_ in sorted(results.pop(shard_index), key=lambda item: item[0])
                          for row in rows_]
            on_shard(shard_index, shard_rows)
            stats["shards_written"] += 1
            elapsed = time.perf_counter() - started
            say(f"generation: shard {shard_index + 1}/{len(shards)} written "
                f"({stats['shards_written']}/{len(pending)} this run, {stats['output_tokens']} tokens, "
                f"{stats['output_tokens'] / max(elapsed, 1e-9):.0f} tok/s)")
    stats["seconds"] = time.perf_counter() - started
    return stats


def shard_seed(seed: int, index: int) -> int:
    """The sampling seed of shard `index` under the configured `seed` (31 bits, as engines take)."""
    digest = hashlib.sha256(f"siked-shard:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def make_replica_engine(cfg: EngineConfig, model_path: str) -> Any:
    """An engine that can be reseeded between shards (vllm or transformers)."""
    from distill.engines import EngineError, make_engine

    if cfg.kind == "vllm":
        from distill.engines.vllm_engine import reseedable

        cfg = reseedable(cfg)
    elif cfg.kind != "transformers":
        raise EngineError(f"engine.replicas > 1 needs a local engine (vllm or transformers), not {cfg.kind!r}")
    return make_engine(cfg, model_path)


def generate_shard(engine, shard: list[PromptSpec], index: int, sampling: SamplingConfig,
                   provenance: Provenance, lora_path: str | None = None,
                   tag_of: Callable[[str], str | None] | None = None) -> tuple[list[dict], dict]:
    """Rows of shard `index` alone, sampled under `shard_seed(provenance.seed, index)`; and counts
    (prompts, completions, output tokens, seconds)."""
    seed = shard_seed(provenance.seed, index)
    engine.reseed(seed)
    rows: list[dict] = []
    stats = run_generation(engine, [shard], sampling, replace(provenance, seed=seed),
                           lambda _, shard_rows: rows.extend(shard_rows), lora_path=lora_path,
                           tag_of=tag_of, progress=lambda _: None)
    stats.pop("shards_written")
    return rows, stats
