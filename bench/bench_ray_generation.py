"""Generation with engine replicas on Ray against one engine, on the same questions.

    python bench/bench_ray_generation.py                          # 16 arith questions, 2 replicas
    python bench/bench_ray_generation.py --questions 64 --shard-size 8 --max-tokens 128 --json

Both sides are the generation step's own child-process bodies (`tasks/jobs/generate.py`): the baseline
is `generate_into` (`engine.replicas: 1`, one vLLM engine, every prompt in one continuous batch),
the other `ray_generate_into` (`engine.replicas: N`, a local Ray instance, one vLLM engine per
replica, whole shards handed out one at a time, each in a batch of its own). The questions are
generated `arith` word problems with the teacher's few-shot CoT prompt (`--strategy`), greedy
(temperature 0), so both sides generate the same tokens; the baseline runs first, in the same run.

Two figures per side: end to end (output tokens over the whole step's wall time: process and engine
starts, Ray's start, generation, writing) and generating (output tokens over the time the engines
spent in generation; for replicas the busiest replica's time, as they run side by side). The ratio
is replicas over baseline. On a CPU-only machine each replica gets its share of the cores (see
`tasks.jobs.ray_executor.local_cpu_layout`), so the ratio measures how well the cores are split, not a
gain in hardware; on a GPU machine each replica gets its own GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_problems(folder: Path, count: int, difficulty: int = 2) -> str:
    from distill.benchmarks import arith
    from storage.artifacts import write_artifact

    url = str(folder / "problems.parquet")
    problems = arith.load("train", difficulty=difficulty, size=count, seed=0).problems
    write_artifact(url, [p.to_row() for p in problems], "problems", config_hash="bench")
    return url


def make_job(problems_url: str, folder: Path, name: str, args, replicas: int):
    from distill.config import EngineConfig, SamplingConfig
    from tasks.jobs.generate import GenerationJob

    engine = EngineConfig(kind="vllm", model=args.model, dtype=args.dtype, max_model_len=4096, replicas=replicas)
    sampling = SamplingConfig(n=args.n, temperature=0.0, max_tokens=args.max_tokens, stop=[])
    return GenerationJob(problems_url=problems_url, output_url=str(folder / name), key="bench", engine=engine,
                         sampling=sampling, model=args.model, strategies=(args.strategy,),
                         shard_size=args.shard_size, iteration=0, source="teacher")


def measure(body, job) -> dict:
    from distill.engines import run_in_child

    load = os.getloadavg()[0]
    started = time.perf_counter()
    stats = run_in_child(body, job)
    wall = time.perf_counter() - started
    generating = max(stats["busy_s"].values()) if "busy_s" in stats else stats["seconds"]
    tokens = stats["output_tokens"]
    return {"wall_s": round(wall, 1), "generating_s": round(generating, 1), "output_tokens": tokens,
            "shards": stats["shards_written"], "end_to_end_tok_s": round(tokens / wall, 1),
            "generating_tok_s": round(tokens / generating, 1), "load_avg_before": round(load, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=4, help="questions per shard")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (identical under greedy decoding)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--strategy", default="cot", choices=["cot", "l2m", "pot"])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", help="float32 is the fast one on CPUs without AVX-512")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tasks.jobs.generate import generate_into
    from tasks.jobs.ray_executor import ray_generate_into

    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM and Ray log to stdout: keep the report apart
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # several engines side by side in host RAM
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp)
        problems = write_problems(folder, args.questions)
        report = {
            "questions": args.questions, "shard_size": args.shard_size, "strategy": args.strategy,
            "n": args.n, "max_tokens": args.max_tokens, "cores": len(os.sched_getaffinity(0)),
            "baseline": measure(generate_into, make_job(problems, folder, "one", args, 1)),
            "replicas": args.replicas,
            "ray": measure(ray_generate_into, make_job(problems, folder, "ray", args, args.replicas)),
        }
    for figure in ("end_to_end_tok_s", "generating_tok_s"):
        report[f"ratio_{figure}"] = round(report["ray"][figure] / report["baseline"][figure], 2)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
        return
    print(f"{args.questions} questions x {args.strategy}, n={args.n}, max_tokens={args.max_tokens}, "
          f"shards of {args.shard_size}, {report['cores']} cores", file=out)
    for side, label in (("baseline", "1 engine"), ("ray", f"{args.replicas} Ray replicas")):
        r = report[side]
        print(f"  {label:>16}: {r['output_tokens']} tokens, wall {r['wall_s']} s ({r['end_to_end_tok_s']} tok/s), "
              f"generating {r['generating_s']} s ({r['generating_tok_s']} tok/s)", file=out)
    print(f"  ratio (replicas / one engine): end to end {report['ratio_end_to_end_tok_s']}x, "
          f"generating {report['ratio_generating_tok_s']}x", file=out)


if __name__ == "__main__":
    main()
