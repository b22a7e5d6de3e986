"""Packed against padded batches on the same training rows: real tokens per second of training steps.

    python bench/bench_packing.py                            # tiny 2-layer Llama, DSS SVAMP rows
    python bench/bench_packing.py --model PATH --rows 64     # any causal LM folder

The rows are Distilling Step-by-Step's SVAMP training rows with PaLM rationales (read from
`$SIKED_DATA_DIR`), turned into two-task examples exactly as training does (`distill.training.data`).
Both variants train on the same `--rows` examples once, `--batch` examples per step for padded
batches (each task padded to its longest sequence, in the loop's shuffled order) and packed rows of
at most `--max-length` tokens for packed ones (`--packed-batch` rows per step, by default as many
as hold the same number of examples on average). One step is `compute_loss` (kind `dss`) forward +
backward + AdamW. "Real tokens" are the non-padding tokens of both tasks; padding waste is the share
of computed positions that are padding. Rounds alternate the order of the variants (the machine
may be shared) and the report takes the best round of each. The ratio is packed over padded.

The default model is a 2-layer, hidden-64 Llama with SmolLM2's tokenizer (random weights), built
under a temporary folder from the prepared embedded model (`siked model prepare`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_model(work: Path) -> str:
    from distill.models import prepare_builtin_model
    from storage.paths import models_dir
    from tests.tiny_models import build_tiny_llama

    return str(build_tiny_llama(Path(prepare_builtin_model(models_dir())), work / "tiny"))


def training_examples(tokenizer, rows: int, max_length: int):
    from distill.benchmarks import load_benchmark, load_rationales
    from distill.config import BenchmarkRef
    from distill.training.data import build_texts, dss_rationale_rows, tokenize_texts
    from storage.paths import data_dir

    folder = data_dir(None)
    problems = load_benchmark(BenchmarkRef(name="dss_svamp", split="train"), folder).problems
    train_rows, _ = dss_rationale_rows(problems, load_rationales("dss_svamp", "train", folder))
    texts, _ = build_texts(train_rows[:rows])
    examples, stats = tokenize_texts(texts, tokenizer, max_length)
    return examples, stats


def batches(examples, packing: bool, batch: int, packed_batch: int, max_length: int, pad_id: int):
    import torch

    from distill.training.data import collate_packed, collate_padded, pack_examples

    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    if not packing:
        return [collate_padded([examples[i] for i in order[s: s + batch]], pad_id)
                for s in range(0, len(order), batch)]
    packs = pack_examples(examples, max_length)
    return [collate_packed([[examples[i] for i in p] for p in packs[s: s + packed_batch]], pad_id)
            for s in range(0, len(packs), packed_batch)]


def run(model_path: str, batch_list, label: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import LossConfig
    from distill.training.data import batch_tokens
    from distill.training.losses import compute_loss

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = LossConfig(kind="dss")

    def step(batch):
        compute_loss(model, batch, cfg).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batch_list[0])  # warm-up
    real = positions = 0
    start = time.perf_counter()
    for batch in batch_list:
        step(batch)
        real += batch_tokens(batch)
        positions += sum(batch[f"{t}_input_ids"].numel() for t in ("label", "rationale"))
    seconds = time.perf_counter() - start
    return {"variant": label, "steps": len(batch_list), "seconds": seconds, "real_tokens": real,
            "positions": positions, "tokens_per_s": real / seconds, "padding_share": 1 - real / positions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="causal LM folder (default: a tiny 2-layer Llama)")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8, help="examples per padded step")
    parser.add_argument("--packed-batch", type=int, default=None, help="packed rows per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from distill.training.data import pack_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        model_path = args.model or default_model(Path(work))
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        examples, stats = training_examples(tokenizer, args.rows, args.max_length)
        packs = pack_examples(examples, args.max_length)
        packed_batch = args.packed_batch or max(1, round(args.batch * len(packs) / len(examples)))
        padded = batches(examples, False, args.batch, packed_batch, args.max_length, pad_id)
        packed = batches(examples, True, args.batch, packed_batch, args.max_length, pad_id)
        results: dict[str, list[dict]] = {"padded": [], "packed": []}
        for r in range(args.rounds):
            for label in (("padded", "packed") if r % 2 == 0 else ("packed", "padded")):
                results[label].append(run(model_path, padded if label == "padded" else packed, label))
    best = {k: max(v, key=lambda x: x["tokens_per_s"]) for k, v in results.items()}
    summary = {
        "model": args.model or "tiny-llama-2x64", "examples": len(examples), "packs": len(packs),
        "truncated": dict(stats.truncated), "batch": args.batch, "packed_batch": packed_batch,
        "max_length": args.max_length, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "padded": best["padded"], "packed": best["packed"],
        "ratio_tokens_per_s": best["packed"]["tokens_per_s"] / best["padded"]["tokens_per_s"],
        "rounds": {k: [round(x["tokens_per_s"], 1) for x in v] for k, v in results.items()},
    }
    print(json.dumps(summary, indent=2))
    padded, packed = best["padded"], best["packed"]
    print(f"padded {padded['tokens_per_s']:.0f} tok/s (padding {padded['padding_share']:.0%}), "
          f"packed {packed['tokens_per_s']:.0f} tok/s (padding {packed['padding_share']:.0%}); "
          f"ratio {summary['ratio_tokens_per_s']:.2f}x", file=sys.stderr)
    return 0 if math.isfinite(summary["ratio_tokens_per_s"]) else 1


if __name__ == "__main__":
    sys.exit(main())
