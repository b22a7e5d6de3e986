"""The training loop's step against a plain causal-LM step on the same batches: tokens/s and MFU.

    python bench/bench_training_mfu.py                         # embedded SmolLM2-135M, DSS SVAMP rows
    python bench/bench_training_mfu.py --loss dss_mi --json    # on a CUDA machine: bf16, MFU printed

Both sides train the same model from the same weights on the same padded two-task batches
(Distilling Step-by-Step's SVAMP rows with PaLM rationales, `$SIKED_DATA_DIR`), full fine-tuning,
AdamW, one optimizer step per batch:

- project: `distill.training.losses.compute_loss` (`--loss`, default `dss_mi`: two forward passes,
  one per task, cross-entropy on target tokens and the MI term), as the training loop runs it;
- baseline: transformers' own causal-LM loss (`model(input_ids, labels=...)`) on the same two
  tasks, one forward and backward per task: what a plain fine-tuning script would do.

Tokens are the real (non-padding) tokens of both tasks. MFU = 6 x parameters x tokens/s over the
device's peak dense bf16 FLOP/s (`--peak-tflops`, or known for H100 / H200 / A100), the usual
estimate that counts the forward (2N) and backward (4N) matrix products per token and ignores
attention; printed on CUDA only. Rounds alternate which side goes first; the best round of each
counts. The ratio is project tokens/s over baseline tokens/s (1.0: the loop adds nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_packing import batches, training_examples  # the repository root is on the path now

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def timed_steps(model, batch_list, step) -> tuple[float, int]:
    import torch

    from distill.training.data import batch_tokens

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step(model, batch_list[0])  # warm-up: kernels, allocator
    optimizer.zero_grad(set_to_none=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for batch in batch_list[1:]:
        step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch_tokens(batch)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def project_step(loss_kind: str):
    from distill.config import LossConfig
    from distill.training.losses import compute_loss

    cfg = LossConfig(kind=loss_kind)

    def step(model, batch):
        compute_loss(model, batch, cfg).total.backward()
    return step


def baseline_step(model, batch):
    for task in ("label", "rationale"):
        out = model(input_ids=batch[f"{task}_input_ids"], attention_mask=batch[f"{task}_attention_mask"],
                    labels=batch[f"{task}_labels"], use_cache=False)
        (0.5 * out.loss).backward()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="causal LM folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--loss", default="dss_mi", choices=["sft", "dss", "dss_mi"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models import prepare_builtin_model
    from storage.paths import models_dir

    model_path = args.model or str(prepare_builtin_model(models_dir()))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples, _ = training_examples(tokenizer, args.rows, args.max_length)
    batch_list = [{k: v.to(device) for k, v in b.items()}
                  for b in batches(examples, False, args.batch, 0, args.max_length, pad_id)]
    sides = {"project": project_step(args.loss), "baseline": baseline_step}
    best: dict[str, float] = {}
    params = None
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
            params = sum(p.numel() for p in model.parameters())
            seconds, tokens = timed_steps(model, batch_list, sides[name])
            best[name] = max(best.get(name, 0.0), tokens / seconds)
            del model
            if cuda:
                torch.cuda.empty_cache()
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if cuda else None)
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).split(".")[-1],
              "model": model_path if args.model else "builtin:smollm2-135m-instruct", "parameters": params,
              "loss": args.loss, "batches": len(batch_list) - 1, "batch": args.batch,
              "project_tokens_per_s": round(best["project"], 1), "baseline_tokens_per_s": round(best["baseline"], 1),
              "ratio": round(best["project"] / best["baseline"], 3)}
    if peak:
        report["peak_tflops"] = peak
        report["mfu_project"] = round(6 * params * best["project"] / (peak * 1e12), 4)
        report["mfu_baseline"] = round(6 * params * best["baseline"] / (peak * 1e12), 4)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
