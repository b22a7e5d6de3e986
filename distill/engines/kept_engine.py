"""One vLLM engine kept across the steps a worker process runs, its weights replaced in place.

A generation or evaluation step builds its engine with `make_engine` and closes it when done. In a
worker that runs step after step (`distill.engines.child.run_in_engine_worker`, which turns keeping
on with `keep_engines(True)`), `close()` parks the engine here instead of shutting it down, and the
next step's `make_engine` gets it back when it can serve that step exactly as a new engine would:

- the same `vllm.LLM` arguments but the model folder (dtype, context length, KV cache, LoRA, seed,
  the worker extension...), the same in-process setting and the same `deterministic` flag;
- a model whose every file but the weights is byte for byte the same as the engine's first model's
  (config, tokenizer, chat and generation settings): a student trained from it, merged and saved;
  a Hub id or any other name only when it is the very same name.

Then the new model's weights are loaded into the live engine (vLLM's `reload_weights`), the prefix
cache is emptied (its blocks were computed with the old weights) and the random state the engine
had just after it started is restored, so the step samples what a new engine would
(tests/test_kept_engine.py checks it token for token). Anything else closes the parked engine and
starts a new one. This costs about 0.5 s where a new engine costs about 5 s to start and 1.4 s to
stop with the embedded model on 2 cores (BENCHMARKS.md, "Start-up").

Only on CPU builds with the engine core in the step's process (the default there), and a KV cache
of a set size (`kv_cache_sized`): the random state then lives in this process, a parked engine holds
host memory, not a GPU that training needs, and the engine's KV cache is the size a new one's would be.
On GPUs every step still starts its own engine (docs/pipeline.md, "On GPUs", for the design there).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from distill import timings
from distill.config import EngineConfig
from distill.engines.vllm_settings import llm_kwargs

# Files that hold weights: what a kept engine replaces. Our own bookkeeping files (step manifests,
# the student's record) change nothing the engine reads. Everything else must match byte for byte.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")
_OWN_FILES = ("_manifest.json",)
_OWN_PREFIX = "siked-"

_keeping = False
_parked: tuple[str, Any] | None = None  # (engine key, VllmEngine)


def keep_engines(on: bool) -> None:
    """Whether `close()` parks a vLLM engine for the next step of this process (see the docstring)."""
    global _keeping
    _keeping = on


def holding() -> bool:
    """Whether an engine is parked here."""
    return _parked is not None


def engine_key(cfg: EngineConfig, model_path: str) -> str:
    """What must be equal for a parked engine to serve `cfg` with the model at `model_path`."""
    arguments = {k: v for k, v in llm_kwargs(cfg, model_path).items() if k != "model"}
    described = {"llm": arguments, "in_process": cfg.in_process, "deterministic": cfg.deterministic,
                 "model": model_family(model_path)}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def model_family(model_path: str) -> str:
    """A digest of a model folder's files other than its weights; a name that is not a folder is
    its own family (no weights can be swapped in for it)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return "name:" + model_path
    digest = hashlib.sha256()
    # The files at the top of the folder: what vLLM and the tokenizer read (subfolders hold other things).
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _engine_reads(p.name)):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "files:" + digest.hexdigest()


def _engine_reads(name: str) -> bool:
    return not (name.endswith(_WEIGHT_SUFFIXES) or name in _OWN_FILES or name.startswith(_OWN_PREFIX))


def take(cfg: EngineConfig, model_path: str):
    """The parked engine made ready for `model_path`, or None (any engine parked is then closed)."""
    global _parked
    if _parked is None:
        return None
    (key, engine), _parked = _parked, None
    if key != engine_key(cfg, model_path):
        engine.shutdown()
        return None
    with timings.span("engine_swap", engine="vllm", model=model_path):
        engine.serve_weights_of(model_path)
    return engine


def park(engine, cfg: EngineConfig) -> bool:
    """Keep `engine` for the next step if keeping is on and it can be kept; True if it was."""
    global _parked
    if not (_keeping and engine.can_be_kept()):
        return False
    release()
    _parked = (engine_key(cfg, engine.model), engine)
    return True


def release() -> None:
    """Shut the parked engine down (a worker does this before it exits)."""
    global _parked
    parked, _parked = _parked, None
    if parked is not None:
        parked[1].shutdown()


def kv_cache_sized(cfg: EngineConfig) -> bool:
    """Whether the KV cache has a set size (`engine.vllm_args.kv_cache_memory_bytes`, or
    VLLM_CPU_KVCACHE_SPACE on CPU builds).

    Without one, vLLM-CPU gives the KV cache `gpu_memory_utilization` of the machine's RAM minus what
    the process already holds, so its size, and with it which requests share a batch and what is
    sampled, depends on what the process did before: an engine started after another one in the
    same process got 65 blocks where a new process got 77 to 101, and sampled other tokens. Such an
    engine is not kept.
    """
    return "kv_cache_memory_bytes" in cfg.vllm_args or bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE"))

