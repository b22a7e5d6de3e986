"""vLLM against batched transformers `generate` on the same prompts: output tokens per second.

    python bench/bench_engines.py                                # embedded SmolLM2, 32 prompts x 128 tokens
    python bench/bench_engines.py --prompts 64 --max-tokens 256 --compile --json

Both sides are this project's engines (`distill.engines`), each in a child process of its own, one
after the other in one run, on the same chat-templated prompts (the embedded model's chat template
over generated `arith` word problems) with the same sampling (n=1, temperature 0.7, top-p 0.95, no
stop strings), and vLLM with the engine's own defaults (eager on CPU builds; `--compile` compiles).
The timed part is one `generate` call over all prompts, after a short warm-up call;
engine start is reported apart. Output tokens are the engines' own `completion_tokens` (end of
sequence included); a sequence may end before `--max-tokens`, so the totals differ a little between
engines. transformers gets every prompt in one left-padded batch (its best case for throughput).

Threads: vLLM-CPU binds one compute thread per core and keeps one core for its engine process, so
transformers gets the same number of torch threads (`--threads`, default: cores - 1). On a shared
machine that also keeps torch out of the oversubscribed-OpenMP trap (2 threads on 2 busy cores ran
16x slower than 1 thread here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_prompts(model_path: str, count: int) -> list[str]:
    from transformers import AutoTokenizer

    from distill.benchmarks import arith

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problems = arith.generate(difficulty=2, split="test", size=count, seed=0)
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{p.question}\nSolve it step by step."}],
        tokenize=False, add_generation_prompt=True) for p in problems]


def measure(kind: str, model_path: str, prompts: list[str], max_tokens: int, dtype: str, compile_: bool,
            threads: int) -> dict:
    """Start one engine, warm it up, time one generate call over all prompts (runs in a child)."""
    import torch

    from distill.config import EngineConfig, SamplingConfig
    from distill.engines import GenerationRequest, make_engine

    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM logs to stdout: keep the report clean
    if kind == "transformers":
        torch.set_num_threads(threads)

    cfg = EngineConfig(kind=kind, dtype=dtype, max_model_len=2048, concurrency=len(prompts), seed=0,
                       enforce_eager=False if compile_ else None)
    started = time.perf_counter()
    engine = make_engine(cfg, model_path)
    start_s = time.perf_counter() - started
    requests = [GenerationRequest(key=str(i), prompt=p) for i, p in enumerate(prompts)]
    sampling = SamplingConfig(n=1, temperature=0.7, top_p=0.95, max_tokens=max_tokens, stop=[])
    engine.generate(requests[:2], sampling.model_copy(update={"max_tokens": 8}))  # warm-up
    started = time.perf_counter()
    answers = engine.generate(requests, sampling)
    seconds = time.perf_counter() - started
    engine.close()
    tokens = sum(c.completion_tokens for a in answers for c in a)
    return {"engine": kind, "dtype": dtype, "version": engine.version, "start_s": round(start_s, 1),
            "seconds": round(seconds, 2), "output_tokens": tokens,
            "finished_by_length": sum(c.finish_reason == "length" for a in answers for c in a),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the prepared embedded SmolLM2)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", help="vLLM's dtype")
    parser.add_argument("--hf-dtype", default="float32", help="transformers' dtype (bfloat16 is slow without AVX512-BF16)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads of transformers (default: the compute threads of vLLM-CPU)")
    parser.add_argument("--compile", action="store_true", help="vLLM compiled (enforce_eager: false)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from distill.engines import run_in_child

    model = args.model
    if model is None:
        from distill.models import prepare_builtin_model
        from storage.paths import models_dir

        model = str(prepare_builtin_model(models_dir()))
    prompts = make_prompts(model, args.prompts)
    load_before = os.getloadavg()[0]
    vllm = run_in_child(measure, "vllm", model, prompts, args.max_tokens, args.dtype, args.compile, 0)
    hf = run_in_child(measure, "transformers", model, prompts, args.max_tokens, args.hf_dtype, False, args.threads)
    runs = [vllm, hf]
    result = {"prompts": len(prompts), "max_tokens": args.max_tokens, "compiled": args.compile,
              "cpus": os.cpu_count(), "hf_threads": args.threads,
              "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)],
              "runs": runs, "ratio_vllm_over_transformers": round(vllm["tokens_per_s"] / hf["tokens_per_s"], 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(prompts)} prompts x up to {args.max_tokens} tokens, {os.cpu_count()} CPUs "
          f"({args.threads} torch threads for transformers), load average "
          f"{result['load_avg'][0]} -> {result['load_avg'][1]}")
    print("| engine | dtype | start s | generate s | output tokens | ended by length | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(f"| {r['engine']} {r['version']} | {r['dtype']} | {r['start_s']} | {r['seconds']} | "
              f"{r['output_tokens']} | {r['finished_by_length']} | {r['tokens_per_s']} |")
    print(f"vLLM / transformers output tokens/s: {result['ratio_vllm_over_transformers']}x")


if __name__ == "__main__":
    main()
