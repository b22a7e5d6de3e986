"""What a vLLM engine is started with, decided before `vllm.LLM` runs: its arguments, the CPUs it
binds, batch invariance on GPUs, and what to say when it refuses to start for want of memory.

    kwargs = llm_kwargs(cfg, model_path)   # what VllmEngine gives vllm.LLM
    bind_all_cpus(cfg)                     # vLLM-CPU: every CPU this process may use

Apart from `vllm_engine` so that `kept_engine`, which compares engines by these arguments, and the
engine itself both read them from here (vLLM itself is not imported).
"""

from __future__ import annotations

import os
from typing import Any

from distill.config import EngineConfig
from distill.engines.base import EngineError


def on_gpus() -> bool:
    import torch

    return torch.cuda.is_available()


def _eager(cfg: EngineConfig) -> bool:
    """Eager on CPU builds unless the config says otherwise (see EngineConfig.enforce_eager)."""
    if cfg.enforce_eager is not None:
        return cfg.enforce_eager
    return not on_gpus()


def llm_kwargs(cfg: EngineConfig, model_path: str) -> dict[str, Any]:
    """The keyword arguments this engine gives `vllm.LLM` for `cfg` (also what bench/ compares with)."""
    named = {
        "model": model_path, "seed": cfg.seed, "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len, "enable_lora": cfg.enable_lora,
        "enforce_eager": _eager(cfg),
    }
    clash = sorted(set(named) & set(cfg.vllm_args))
    if clash:
        raise EngineError(f"engine.vllm_args repeats {clash}: set them as engine.{clash[0]} instead")
    return {**named, **cfg.vllm_args}


def bind_all_cpus(cfg: EngineConfig) -> None:
    """vLLM-CPU: run the model on every CPU this process may use, unless the user chose a binding.

    By default vLLM-CPU keeps one core per rank for its scheduler process and binds its compute
    threads to the rest: on a 2-core machine that is one compute thread. Binding both cores makes
    generation about 1.7x faster there (the scheduler mostly waits for the model), measured with
    the embedded model (BENCHMARKS.md). A `VLLM_CPU_OMP_THREADS_BIND` already in the environment
    wins; tensor parallelism on CPUs needs one list per rank, so it is left alone too.

    Reproducibility: with several compute threads, sampled (temperature > 0) tokens of vLLM-CPU were
    seen to differ between two generations after reseeding with the same seed (greedy output did
    not); with one thread they repeat. Set VLLM_CPU_OMP_THREADS_BIND to a single core where
    bit-reproducible sampling matters more than speed.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or cfg.tensor_parallel_size != 1 or on_gpus():
        return
    cpus = sorted(os.sched_getaffinity(0))
    # `deterministic`: one compute thread, the setting under which sampled tokens repeat
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cpus[0]) if cfg.deterministic else ",".join(str(c) for c in cpus)


def batch_invariant_on_gpus(cfg: EngineConfig) -> None:
    """`deterministic` on CUDA: vLLM's batch-invariant kernels, so a request's logits do not depend
    on what else is in its batch (set before the engine starts; one already set wins)."""
    if cfg.deterministic and on_gpus():
        os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")


# vLLM's words when the memory it may take cannot hold a KV cache (vllm/v1/worker/cpu_worker.py,
# v1/worker/utils.py, v1/core/kv_cache_utils.py): the start-up share, the cache allocation, none left.
_MEMORY_REFUSALS = ("less than desired CPU memory utilization", "less than desired GPU memory utilization",
                    "on kv cache allocation is less than requested memory",
                    "No available memory for the cache blocks",
                    "which is larger than the available KV cache memory")


def memory_hint(message: str, on_gpus: bool) -> str | None:
    """What to set when vLLM refused to start for want of memory (None for any other failure).

    On CPUs vLLM takes `gpu_memory_utilization` (default 0.3 here) of the machine's RAM unless the KV
    cache has a set size, and refuses to start when less than that is free: a second run on the same
    machine fails that way while the first one's engine holds its share.
    """
    if not any(words in message for words in _MEMORY_REFUSALS):
        return None
    said = " ".join(message.split()).split(". ")[0]
    if on_gpus:
        return (f"vLLM refused to start for want of GPU memory ({said}): lower engine.gpu_memory_utilization "
                "or engine.max_model_len, give the KV cache a set size with "
                "engine.vllm_args.kv_cache_memory_bytes, or free the GPU of other processes")
    return (f"vLLM refused to start for want of memory ({said}): on CPUs, without a set KV cache size, it "
            "reserves engine.gpu_memory_utilization of the machine's RAM; give the cache a size that fits "
            "with engine.vllm_args.kv_cache_memory_bytes (bytes, e.g. 536870912) or VLLM_CPU_KVCACHE_SPACE "
            "(GiB), which also lets several runs share one machine")
