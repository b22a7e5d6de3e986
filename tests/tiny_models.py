"""Tiny models built from a config, for fast unit tests of training and generation code."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(tokenizer_source: Path, out_dir: Path, layers: int = 2, hidden: int = 64,
                     seed: int = 0, heads: int = 4, kv_heads: int = 2) -> Path:
    """Save a random `layers`-layer Llama (hidden size `hidden`) with the tokenizer of `tokenizer_source`.

    The default head size (64 / 4 = 16) is one vLLM's CPU attention does not support; models that
    vLLM must load use `hidden / heads` = 64 (`tests/conftest.py`, `tiny_vllm_model_path`)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
