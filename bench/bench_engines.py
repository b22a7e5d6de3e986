"""vLLM against batched transformers `generate` on the same prompts: output tokens per second.

    python bench/bench_engines.py                                # embedded SmolLM2, 32 prompts x 128 tokens
    python bench/bench_engines.py --prompts 64 --max-tokens 256 --compile --rounds 3 --json

Both sides are this project's engines (`distill.engines`), started side by side in one child
process, on the same chat-templated prompts (the embedded model's chat template over generated
`arith` word problems) with the same sampling (n=1, temperature 0.7, top-p 0.95, no stop strings).
vLLM runs with the engine's defaults (eager on CPU builds; `--compile` compiles). One round times one
`generate` call over all prompts on each engine, after a short warm-up call; rounds alternate which
engine goes first (the machine may be shared) and the report keeps every round and takes the best
of each engine. Engine start is reported apart. Output tokens are the engines' own
`completion_tokens` (end of sequence included); a sequence may end before `--max-tokens`, so the
totals differ a little between engines. transformers gets every prompt in one left-padded batch
(its best case for throughput).

Threads: the project's vLLM engine binds its compute threads to every CPU the process may use
(`bind_all_cpus`), so transformers gets as many torch threads (`--threads`, default: all cores).
Both engines live in the same child and run one after the other, never at once. On a shared machine
pass `--threads 1` (and VLLM_CPU_OMP_THREADS_BIND=0) to keep both out of the oversubscribed-OpenMP
trap (2 threads on 2 busy cores ran 16x slower than 1 thread here).
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

KINDS = ("vllm", "transformers")


def make_prompts(model_path: str, count: int) -> list[str]:
    from transformers import AutoTokenizer

    from distill.benchmarks import arith

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problems = arith.generate(difficulty=2, split="test", size=count, seed=0)
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{p.question}\nSolve it step by step."}],
        tokenize=False, add_generation_prompt=True) for p in problems]


def measure(model_path: str, prompts: list[str], max_tokens: int, dtypes: dict[str, str], compile_: bool,
            threads: int, rounds: int) -> dict:
    """Start both engines, warm them up, then time `rounds` generate calls on each (runs in a child)."""
    import torch

    from distill.config import EngineConfig, SamplingConfig
    from distill.engines import GenerationRequest, make_engine

    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM logs to stdout: keep the report clean
    torch.set_num_threads(threads)  # transformers computes here; vLLM's workers set their own
    requests = [GenerationRequest(key=str(i), prompt=p) for i, p in enumerate(prompts)]
    sampling = SamplingConfig(n=1, temperature=0.7, top_p=0.95, max_tokens=max_tokens, stop=[])
    engines, report = {}, {}
    for kind in KINDS:
        cfg = EngineConfig(kind=kind, dtype=dtypes[kind], max_model_len=2048, concurrency=len(prompts),
                           seed=0, enforce_eager=False if compile_ else None)
        started = time.perf_counter()
        engines[kind] = make_engine(cfg, model_path)
        engines[kind].generate(requests[:2], sampling.model_copy(update={"max_tokens": 8}))  # warm-up
        report[kind] = {"engine": kind, "version": engines[kind].version, "dtype": dtypes[kind],
                        "start_s": round(time.perf_counter() - started, 1), "rounds": []}
    for round_index in range(rounds):
        for kind in KINDS if round_index % 2 == 0 else reversed(KINDS):
            load = os.getloadavg()[0]
            started = time.perf_counter()
            answers = engines[kind].generate(requests, sampling)
            seconds = time.perf_counter() - started
            tokens = sum(c.completion_tokens for a in answers for c in a)
            report[kind]["rounds"].append({
                "seconds": round(seconds, 2), "output_tokens": tokens, "load_avg": round(load, 1),
                "ended_by_length": sum(c.finish_reason == "length" for a in answers for c in a),
                "tokens_per_s": round(tokens / seconds, 1)})
    for engine in engines.values():
        engine.close()
    for entry in report.values():
        entry["best_tokens_per_s"] = max(r["tokens_per_s"] for r in entry["rounds"])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the prepared embedded SmolLM2)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="timed generate calls per engine")
    parser.add_argument("--dtype", default="bfloat16", help="vLLM's dtype")
    parser.add_argument("--hf-dtype", default="float32", help="transformers' dtype (bfloat16 is slow without AVX512-BF16)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
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
    dtypes = {"vllm": args.dtype, "transformers": args.hf_dtype}
    report = run_in_child(measure, model, prompts, args.max_tokens, dtypes, args.compile, args.threads, args.rounds)
    ratio = report["vllm"]["best_tokens_per_s"] / report["transformers"]["best_tokens_per_s"]
    result = {"prompts": len(prompts), "max_tokens": args.max_tokens, "compiled": args.compile,
              "cpus": os.cpu_count(), "hf_threads": args.threads, "engines": report,
              "ratio_vllm_over_transformers": round(ratio, 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(prompts)} prompts x up to {args.max_tokens} tokens, {os.cpu_count()} CPUs "
          f"({args.threads} torch threads for transformers), vLLM {'compiled' if args.compile else 'default'}")
    print("| engine | dtype | start s | round | load avg | generate s | output tokens | ended by length | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for entry in report.values():
        for i, r in enumerate(entry["rounds"], start=1):
            print(f"| {entry['engine']} {entry['version']} | {entry['dtype']} | {entry['start_s']} | {i} | "
                  f"{r['load_avg']} | {r['seconds']} | {r['output_tokens']} | {r['ended_by_length']} | "
                  f"{r['tokens_per_s']} |")
    print(f"best tokens/s: vLLM {report['vllm']['best_tokens_per_s']}, transformers "
          f"{report['transformers']['best_tokens_per_s']}; vLLM / transformers: {result['ratio_vllm_over_transformers']}x")


if __name__ == "__main__":
    main()
