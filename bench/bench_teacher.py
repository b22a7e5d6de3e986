"""The teacher generation step against raw vLLM on the same prompts: output tokens per second.

    python bench/bench_teacher.py                  # 8 arith questions x 3 strategies x n=2, 128 tokens
    python bench/bench_teacher.py --repeats 3 --json teacher.engine.dtype=bfloat16

Project: the generation step's child-process body itself (`tasks.jobs.generate.generate_into`): it reads
the problems artifact, starts the `vllm` engine, renders the few-shot prompts, streams completions
through `run_generation` and writes each Parquet shard (rows, sha256, manifest) through storage as
soon as its questions are done, then finalizes the folder. Timed: `run_generation`'s own window,
from queueing the first request to the last shard written; engine start, rendering and finalize are
reported apart.

Raw: `vllm.LLM(...)` with the engine arguments and CPU thread binding `VllmEngine` uses (the same `EngineConfig`), the
same prompts (rendered by the step's own `distill.prompts.teacher_prompts` with vLLM's tokenizer), the same
`SamplingParams` (the step's stop strings included) and one `llm.generate` over all prompts, without
a progress bar. Timed: that call alone.

Both use the teacher engine of `--config` (the quickstart's by default) with any `key=value`
overrides. Each side runs in a child process of its own (vLLM's memory is returned between them). With
`--repeats`, the pairs alternate which side goes first, and the median of the per-pair ratios is the
result. Sampling is random, so output token counts differ a little between sides; the completions
counted must match. On a shared machine the wall-clock rate follows the other jobs' load; the CPU
seconds of each side's processes (front end, engine core, worker) in the same window are reported
beside it, as output tokens per CPU second, which the load moves much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 0.95


def load_problems(benchmark: str, count: int) -> tuple[str, list[dict]]:
    """PROBLEMS rows: `count` questions of arith (generated) or GSM8K train (SIKED_DATA_DIR), exemplars removed."""
    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef
    from distill.strategies.exemplars import is_exemplar
    from storage.paths import DataDirMissing, data_dir

    if benchmark == "auto":
        try:
            data_dir()
            benchmark = "gsm8k"
        except DataDirMissing:
            benchmark = "arith"
    if benchmark == "arith":
        ref, folder = BenchmarkRef(name="arith", split="train", difficulty=2, size=count + 16), None
    else:
        ref, folder = BenchmarkRef(name=benchmark, split="train", limit=count + 16), data_dir()
    problems = [p for p in load_benchmark(ref, folder).problems if not is_exemplar(p.id, p.question)]
    return benchmark, [p.to_row() for p in problems[:count]]


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its descendants (vLLM's engine core and worker)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def raw_side(cfg, sampling, model_path: str, problems: list[dict], strategies: tuple[str, ...],
             shots: int) -> dict:
    """Plain `vllm.LLM.generate` over the step's prompts (runs in a child)."""
    import vllm

    from distill.engines.vllm_settings import bind_all_cpus, llm_kwargs
    from distill.prompts import stop_strings, teacher_prompts

    bind_all_cpus(cfg)  # the same thread binding as VllmEngine
    started = time.perf_counter()
    llm = vllm.LLM(**llm_kwargs(cfg, model_path))  # what VllmEngine passes for the same config
    start_s = time.perf_counter() - started
    prompts = [spec.prompt for spec in teacher_prompts(problems, strategies, llm.get_tokenizer(),
                                                         cfg.chat_template, shots)]
    stopped = stop_strings(sampling, teacher=True)
    params = vllm.SamplingParams(n=stopped.n, temperature=stopped.temperature, top_p=stopped.top_p,
                                 max_tokens=stopped.max_tokens, stop=list(stopped.stop) or None)
    cpu, started = tree_cpu_s(), time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - started, tree_cpu_s() - cpu
    llm.llm_engine.engine_core.shutdown()
    return {"side": "raw vLLM", "start_s": start_s, "seconds": seconds, "cpu_s": cpu,
            "completions": sum(len(o.outputs) for o in outputs),
            "output_tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs)}


def project_side(job) -> dict:
    """The step's `generate_into`, with its finalize timed apart (runs in a child)."""
    import distill.generation
    from storage.shards import ShardedArtifact
    from tasks.jobs.generate import generate_into

    finalize, generation = ShardedArtifact.finalize, distill.generation.run_generation
    timed = {"finalize_s": 0.0}

    def measured_generation(*args, **kwargs):  # generate_into imports it when it runs
        cpu = tree_cpu_s()
        try:
            return generation(*args, **kwargs)
        finally:
            timed["cpu_s"] = tree_cpu_s() - cpu

    def timed_finalize(self, expected):
        started = time.perf_counter()
        try:
            return finalize(self, expected)
        finally:
            timed["finalize_s"] += time.perf_counter() - started

    ShardedArtifact.finalize = timed_finalize
    distill.generation.run_generation = measured_generation
    started = time.perf_counter()
    stats = generate_into(job)
    total = time.perf_counter() - started
    rows = ShardedArtifact(job.output_url, "samples").read(columns=["question_id"]).num_rows
    return {"side": "project step", "seconds": stats["seconds"], "completions": stats["completions"],
            "output_tokens": stats["output_tokens"], "shards": stats["shards"], "rows_written": rows,
            "finalize_s": timed["finalize_s"], "cpu_s": timed["cpu_s"],
            "start_s": total - stats["seconds"] - timed["finalize_s"]}


def _rate(run: dict) -> float:
    return run["output_tokens"] / run["seconds"]


def _cpu_rate(run: dict) -> float:
    return run["output_tokens"] / run["cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="auto", choices=["auto", "arith", "gsm8k"],
                        help="auto: GSM8K train when SIKED_DATA_DIR is set, else generated arith")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--strategies", default="cot,l2m,pot")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=4, help="questions per shard")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating which goes first")
    parser.add_argument("--kv-cache-gib", type=int, default=2,
                        help="vLLM-CPU KV cache size (VLLM_CPU_KVCACHE_SPACE) unless already set: a fixed size "
                             "that fits beside other jobs, instead of a share of host RAM")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="run config whose teacher.engine both sides use")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. teacher.engine.dtype=bfloat16")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))  # both children inherit it
    from distill.config import SamplingConfig
    from distill.engines.child import run_in_child
    from distill.models import resolve_model
    from flows.commands.config_files import read_config
    from storage.artifacts import write_artifact
    from storage.paths import models_dir
    from tasks.jobs.generate import GenerationJob

    # The config's teacher engine (the quickstart's: embedded SmolLM2, seeded); both sides get it.
    teacher = read_config(args.config, args.overrides).teacher
    engine = teacher.engine
    if engine.kind != "vllm":
        raise SystemExit(f"teacher.engine.kind is {engine.kind!r}; this benchmark compares vllm engines")
    model_path = resolve_model(engine.model, models_dir())
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    benchmark, problems = load_problems(args.benchmark, args.questions)
    sampling = SamplingConfig(n=args.n, temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)

    pairs = []
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as root:
        problems_url = str(Path(root) / "problems.parquet")
        write_artifact(problems_url, problems, "problems", config_hash="bench")

        def project(repeat: int) -> dict:
            job = GenerationJob(problems_url=problems_url, output_url=str(Path(root) / f"samples-{repeat}"),
                                key="bench", engine=engine, sampling=sampling, model=engine.model,
                                strategies=strategies, shard_size=args.shard_size, iteration=0,
                                source="teacher", shots=teacher.shots)
            return run_in_child(project_side, job)

        def raw(repeat: int) -> dict:
            return run_in_child(raw_side, engine, sampling, model_path, problems, strategies, teacher.shots)

        for repeat in range(args.repeats):
            load = os.getloadavg()[0]
            order = [raw, project] if repeat % 2 == 0 else [project, raw]
            runs = {r["side"]: r for r in (side(repeat) for side in order)}
            base, step = runs["raw vLLM"], runs["project step"]
            if base["completions"] != step["completions"] or step["rows_written"] != step["completions"]:
                raise SystemExit(f"completions differ: raw {base['completions']}, project "
                                 f"{step['completions']} ({step['rows_written']} rows written)")
            pairs.append({"repeat": repeat, "first": order[0].__name__, "load_avg": round(load, 1),
                          "raw": base, "project": step, "ratio": _rate(step) / _rate(base),
                          "cpu_ratio": _cpu_rate(step) / _cpu_rate(base)})
            print(f"repeat {repeat + 1}/{args.repeats}: raw {_rate(base):.1f} tok/s, project "
                  f"{_rate(step):.1f} tok/s, ratio {pairs[-1]['ratio']:.3f}", file=sys.stderr, flush=True)

    median = statistics.median(p["ratio"] for p in pairs)
    cpu_median = statistics.median(p["cpu_ratio"] for p in pairs)
    from distill.engines.vllm_settings import llm_kwargs

    eager = llm_kwargs(engine, model_path)["enforce_eager"]
    result = {"benchmark": benchmark, "dtype": engine.dtype, "enforce_eager": eager,
              "questions": len(problems), "strategies": list(strategies), "shots": teacher.shots,
              "prompts": len(problems) * len(strategies), "n": args.n, "max_tokens": args.max_tokens,
              "shard_size": args.shard_size, "cpus": os.cpu_count(), "pairs": pairs,
              "median_ratio": median, "median_cpu_ratio": cpu_median, "goal": GOAL, "met": median >= GOAL}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{benchmark}: {len(problems)} questions x {len(strategies)} strategies x n={args.n}, up to "
          f"{args.max_tokens} tokens, {teacher.shots}-shot prompts, shards of {args.shard_size} questions; "
          f"vLLM {engine.dtype}"
          f"{', eager' if eager else ''}; {os.cpu_count()} CPUs")
    print("| pair | first | load | raw tokens | raw s | raw tok/s | step tokens | step s | step tok/s "
          "| ratio | raw CPU s | step CPU s | ratio per CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in pairs:
        b, s = p["raw"], p["project"]
        print(f"| {p['repeat'] + 1} | {p['first']} | {p['load_avg']} | {b['output_tokens']} | {b['seconds']:.1f} "
              f"| {_rate(b):.1f} | {s['output_tokens']} | {s['seconds']:.1f} | {_rate(s):.1f} | "
              f"{p['ratio']:.3f} | {b['cpu_s']:.1f} | {s['cpu_s']:.1f} | {p['cpu_ratio']:.3f} |")
    last = pairs[-1]
    print(f"outside the timed window (last pair): raw engine start {last['raw']['start_s']:.1f} s; "
          f"step engine start + rendering {last['project']['start_s']:.1f} s, finalize "
          f"{last['project']['finalize_s']:.2f} s")
    print(f"project / raw, output tokens per CPU second of the step's processes (median): {cpu_median:.3f}")
    print(f"project / raw, output tokens per second (median of {len(pairs)}): {median:.3f}  goal >= {GOAL}: "
          f"{'met' if median >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
