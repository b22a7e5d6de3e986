"""LoRA through peft: wrap a causal LM, merge the adapter into its weights, save a plain model folder.

    model = wrap_lora(model, cfg.train.lora)           # peft PeftModel; only the adapter trains
    plain = merged_model(model)                        # LoRA folded into the base weights
    save_model_folder(plain, tokenizer, out_dir)       # config + safetensors + tokenizer, no adapter

Between SIKeD iterations the merged folder is the next iteration's base, and a new LoRA is trained
on top of it (docs/method.md, section 6). With `lora.enabled: false` the model is trained in full and
`merged_model` returns it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.config import LoraConfig


def wrap_lora(model: Any, lora: LoraConfig) -> Any:
    """Add a LoRA adapter (rank r, alpha, dropout, target modules, optionally only in the last
    layers) to a causal LM; freeze the rest.

    Target modules that the model does not have fail here, naming the ones it has, instead of
    inside peft with a less helpful message.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if type(m).__name__ == "Linear"})
        raise ValueError(f"train.lora.target_modules {missing} are not modules of this model; "
                         f"its linear layers: {', '.join(linear)}")
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM",
                            layers_to_transform=_last_layers(model, lora.last_layers))
    return get_peft_model(model, config)


def _last_layers(model: Any, count: int | None) -> list[int] | None:
    """Indices of the last `count` decoder layers (None: every layer)."""
    if count is None:
        return None
    total = model.config.num_hidden_layers
    if count > total:
        raise ValueError(f"train.lora.last_layers is {count} but the model has {total} layers")
    return list(range(total - count, total))


def is_peft(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged_model(model: Any) -> Any:
    """A plain transformers model: the LoRA merged into the base weights (`merge_and_unload`)."""
    return model.merge_and_unload() if is_peft(model) else model


def save_model_folder(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save `model` (plain, not peft) and its tokenizer as a Hugging Face folder (safetensors)."""
    if is_peft(model):
        raise ValueError("merge the adapter first (merged_model): the student folder holds plain weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # training turns the cache off; generation wants it
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


STUDENT_MARKER = "siked-student.json"


def export_student(model_path: str, lora: LoraConfig, state: dict[str, Any], tokenizer: Any,
                   out_dir: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Build the finished student: the base at `model_path`, the trained weights `state` (keyed as
    the training model's trainable parameters, LoRA-wrapped when `lora.enabled`), LoRA merged.

    Written under a temporary sibling name and renamed into place; `siked-student.json` (the
    summary) is written last, so a folder with it is complete.
    """
    import json
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if lora.enabled:
        model = wrap_lora(model, lora)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) - {n for n, _ in model.named_parameters()}:
        raise ValueError(f"trained weights the model lacks: {sorted(set(state) - names)[:5]}")
    model.load_state_dict(state, strict=False)
    plain = merged_model(model)
    final = Path(out_dir)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_folder(plain, tokenizer, tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (final / STUDENT_MARKER).write_text(json.dumps(summary or {}, indent=2, default=str), encoding="utf-8")
    return final


def is_exported(folder: str | Path) -> bool:
    """True when `folder` is a finished student (its marker written last)."""
    return (Path(folder) / STUDENT_MARKER).is_file()
