"""GPU tags: which task runs hold which device, so Prefect runs one GPU step per device at a time.

A task run tagged `gpu:<device>` takes one slot of the concurrency limit of that tag while it
runs. With `prefect concurrency-limit create gpu:0 1` at most one such task runs on device 0,
whichever flow run or worker submitted it; the others wait in `AwaitingConcurrencySlot`.
Without a limit the tags only label the runs in the UI. The flow applies them around the call
of a GPU task:

    with on_gpus(engine_devices(cfg.teacher.engine)):
        samples = submit_step(generate_samples, key, samples_url, "samples", job=job)

A step on several devices (tensor parallelism, DDP) carries one tag per device and takes all
its slots at once. The slot is a lease that Prefect renews while the task runs: a process killed
with SIGKILL frees it when the lease expires (about a minute).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager

from distill.config import EngineConfig, TrainConfig

# Tags are global on a Prefect server: workers on several hosts that share one server set a
# per-host prefix (e.g. SIKED_GPU_TAG_PREFIX=gpu-node1) so node1's device 0 is not node2's.
TAG_PREFIX_ENV = "SIKED_GPU_TAG_PREFIX"
DEFAULT_PREFIX = "gpu"


def visible_devices(env: Mapping[str, str] | None = None) -> list[str] | None:
    """Device ids listed in CUDA_VISIBLE_DEVICES (indices, GPU-/MIG- UUIDs), None when it is unset.

    CUDA stops reading the list at the first invalid entry; `-1` (or an empty value) hides all.
    """
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    devices = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        devices.append(entry)
    return devices


def gpu_tags(count: int = 1, env: Mapping[str, str] | None = None) -> list[str]:
    """Tags `<prefix>:<device>` of the first `count` devices a step in this process uses.

    The devices are the first `count` entries of CUDA_VISIBLE_DEVICES (what CUDA numbers 0, 1, ...
    in the process), or `0 .. count-1` when it is unset. `count <= 0` (no local GPU) gives [].
    """
    if count <= 0:
        return []
    env = os.environ if env is None else env
    prefix = env.get(TAG_PREFIX_ENV) or DEFAULT_PREFIX
    visible = visible_devices(env)
    devices = [str(i) for i in range(count)] if visible is None else visible[:count]
    return [f"{prefix}:{device}" for device in devices]


def engine_devices(engine: EngineConfig) -> int:
    """Local GPUs one generation step occupies: tensor_parallel_size x replicas for vLLM, one for
    transformers, none for an OpenAI endpoint, pre-generated files or a remote Ray cluster."""
    if engine.kind in ("openai", "file") or engine.ray_address:
        return 0
    if engine.kind == "vllm":
        return engine.tensor_parallel_size * engine.replicas
    return 1


def train_devices(train: TrainConfig) -> int:
    """Local GPUs one training step occupies: one process per device under DDP/FSDP."""
    return train.nproc if train.distributed != "none" else 1


def on_gpus(count: int, env: Mapping[str, str] | None = None) -> AbstractContextManager:
    """Context manager: task runs created inside it carry the tags of `gpu_tags(count)`."""
    from prefect import tags

    return tags(*gpu_tags(count, env))
