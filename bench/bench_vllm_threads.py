"""vLLM-CPU generation speed under its thread bindings: vLLM's own default against binding every CPU.

    python bench/bench_vllm_threads.py                   # embedded SmolLM2, 48 prompts x n=2 x 128 tokens
    python bench/bench_vllm_threads.py --prompts 96 --bindings auto,all,nobind

By default vLLM-CPU keeps one core per rank for its scheduler process and binds its compute
threads to the others (`VLLM_CPU_OMP_THREADS_BIND=auto`): on a 2-core machine, one compute thread.
`all` binds every CPU this process may use (what `distill.engines.vllm_settings.bind_all_cpus` does
when the user has not chosen); `nobind` leaves the threads to the OS. Each binding runs in a fresh
process (the binding is read when the engine starts), one after the other, on the same
chat-templated prompts with `ignore_eos` so that every binding generates exactly the same number of
tokens; one short warm-up call, then one timed `generate` over all prompts. The ratio is against
`auto` in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(binding: str, prompts: int, n: int, max_tokens: int) -> dict:
    """Child body: one engine under `binding`, one timed generate call."""
    if binding == "all":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import vllm
    from transformers import AutoTokenizer

    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef
    from distill.models import resolve_model
    from storage.paths import models_dir

    path = resolve_model("builtin:smollm2-135m-instruct", models_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    problems = load_benchmark(BenchmarkRef(name="arith", split="train", difficulty=1, size=prompts), None).problems
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                           add_generation_prompt=True) for p in problems]
    llm = vllm.LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    llm.generate(texts[:2], vllm.SamplingParams(max_tokens=4), use_tqdm=False)
    params = vllm.SamplingParams(n=n, temperature=0.7, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return {"binding": binding, "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--bindings", default="auto,all,nobind")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM logs to stdout: keep the pipe for the result
        result = measure(args.child, args.prompts, args.n, args.max_tokens)
        os.write(report, (json.dumps(result) + "\n").encode())
        return

    results = []
    for binding in args.bindings.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", binding, "--prompts", str(args.prompts),
                               "--n", str(args.n), "--max-tokens", str(args.max_tokens)],
                              check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in results if r["binding"] == "auto"), results[0])
    print(f"{args.prompts} prompts x n={args.n} x {args.max_tokens} tokens (ignore_eos), "
          f"embedded SmolLM2 float32 eager, {os.cpu_count()} CPUs")
    print("| binding | tokens | seconds | tokens/s | x auto |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['binding']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} |")


if __name__ == "__main__":
    main()
