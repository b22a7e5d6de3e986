"""The generation interface every engine implements, and the records it takes and returns.

An engine turns rendered prompts into `n` completions each. Prompts arrive fully rendered (the
caller applies chat templates); engines only sample. Every engine answers `generate` with one list
of `sampling.n` completions per request, in request order (the file engine may return fewer: only
the rationales it holds).

Engines that can hand back requests as they finish also offer

    generate_stream(requests, sampling, lora_path=None) -> Iterator[(request index, completions)]

which `distill.generation` prefers: one continuous batch, with each shard written as soon as its
prompts are done (`collect` orders such a stream back into `generate`'s answer).

Token counts: `prompt_tokens` is the rendered prompt's length in the model's tokens (the same for
the n completions of one request); `completion_tokens` counts the tokens the engine generated for
that completion, end-of-sequence token included, as vLLM counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from distill.config import SamplingConfig


@dataclass
class GenerationRequest:
    key: str
    """The caller's id, e.g. `<question_id>|<strategy>`."""
    prompt: str
    """Fully rendered prompt text (chat template already applied by the caller)."""
    question_id: str = ""
    """The problem id; the file engine looks its pre-generated rationales up by it."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """`stop` (end of sequence or a stop string), `length` (max_tokens reached), or an engine's own."""


@runtime_checkable
class Engine(Protocol):
    name: str
    """`vllm` | `openai` | `file` | `transformers`."""
    version: str
    """Version of the library or server that generates (recorded with every sample)."""
    model: str
    """The model name or path served."""

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 lora_path: str | None = None) -> list[list[Completion]]:
        """`sampling.n` completions per request, in request order."""
        ...

    def close(self) -> None:
        ...

    def tokenizer(self) -> Any | None:
        """The Hugging Face tokenizer when one is at hand (for chat templates), else None."""
        ...


class EngineError(RuntimeError):
    """An engine could not serve a request (bad settings, a refused request, a dead server)."""


def collect(stream: Iterable[tuple[int, list[Completion]]], count: int) -> list[list[Completion]]:
    """Order a stream of (request index, completions) back into request order; every index once."""
    results: list[list[Completion] | None] = [None] * count
    for index, completions in stream:
        if results[index] is not None:
            raise EngineError(f"request {index} answered twice")
        results[index] = completions
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise EngineError(f"{len(missing)} of {count} requests got no answer (first: {missing[0]})")
    return results  # type: ignore[return-value]


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded, as vLLM returns it), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def adapter_stamp(folder: Path) -> tuple:
    """Names, sizes and modification times of a LoRA adapter's files: changes when it is rewritten,
    so an engine never serves a stale copy of an adapter saved again under the same folder."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                        for p in Path(folder).iterdir() if p.is_file()))
