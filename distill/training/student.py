"""The student model in training: loading (LoRA or full), optimizer groups, the state that checkpoints
hold, and the process group (DDP or FSDP2) it trains in.

    dist_ = init_distributed(cfg.distributed)          # rank, world, device from torchrun's environment
    model = load_student(model_path, cfg, dist_.device)
    wrapped = wrap_distributed(model, cfg.distributed, dist_)
    state = trainable_state(model, fsdp=False)         # {parameter name: CPU tensor} of what trains

Trainable weights are keyed by the parameter names of the unwrapped (peft) model, the same names a
freshly wrapped copy of the base has, so `lora.export_student` can rebuild the student from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.config import TrainConfig


# --------------------------------------------------------------------------- processes


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Any = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Sum of `values` over processes (float64, on the CPU for gloo, the device for NCCL)."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def init_distributed(kind: str) -> Dist:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        if kind == "none":
            raise ValueError(f"{world} processes but train.distributed is 'none': choose ddp or fsdp")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if not cuda:  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(rank, world, local_rank, device)


# --------------------------------------------------------------------------- model and optimizer


def load_student(model_path: str, cfg: TrainConfig, device: Any) -> Any:
    """The causal LM in float32 (bf16 autocast on CUDA), LoRA-wrapped unless full fine-tuning."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.training.lora import wrap_lora

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = wrap_lora(model, cfg.lora)
    return model.to(device)


def trainable_named(module: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def param_groups(named: list[tuple[str, Any]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices; none on biases and norm weights (1-D tensors)."""
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith(".bias")]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not n.endswith(".bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def trainable_state(module: Any, fsdp: bool) -> dict[str, Any]:
    """Full CPU copies of the trainable weights, keyed by the unwrapped module's parameter names."""
    names = {n for n, _ in trainable_named(module)}
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v for k, v in full.items() if k in names}
    return {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if n in names}


def load_trainable(module: Any, state: dict[str, Any], fsdp: bool) -> None:
    names = {n for n, _ in trainable_named(module)}
    if set(state) != names:
        raise ValueError(f"checkpoint weights do not match the model's trainable ones: "
                         f"{sorted(set(state) ^ names)[:5]} (another model or LoRA setting?)")
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        module.load_state_dict(state, strict=False)


def optimizer_state(module: Any, optimizer: Any, fsdp: bool) -> dict[str, Any]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer(module: Any, optimizer: Any, state: dict[str, Any], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def wrap_distributed(model: Any, kind: str, dist_: Dist) -> Any:
    """DDP (one replica per process) or FSDP2 (each decoder layer and the root sharded)."""
    if not dist_.enabled:
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist_.local_rank] if str(dist_.device).startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model
