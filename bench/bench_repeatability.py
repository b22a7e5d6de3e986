"""Do two generations with one seed give the same samples? Default engine against `deterministic`.

    python bench/bench_repeatability.py                   # 16 arith questions x cot, l2m, pot, n=2
    python bench/bench_repeatability.py --questions 32 --repeats 3 --json

Each side runs the generation step's own child-process body (`tasks/jobs/generate.py`,
`generate_into`) `--repeats` times on the same problems with the same seed, sampling at the
quickstart teacher's temperature, into fresh folders (nothing is reused). The figure per side is the
share of samples (question, strategy, sample index) whose text is identical in every repeat, and the
share of questions whose set of correct strategies is identical (what the distillation set keeps);
the ratio of wall times, deterministic over default, is the price. The sides alternate (default,
deterministic, default, ...), each generation in a fresh child process, engine start included.
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

from bench.bench_ray_generation import write_problems  # the repository root is on the path now


def make_job(problems_url: str, output: str, args, deterministic: bool):
    from distill.config import EngineConfig, SamplingConfig
    from tasks.jobs.generate import GenerationJob

    engine = EngineConfig(kind="vllm", model=args.model, dtype="float32", max_model_len=2048, seed=0,
                          deterministic=deterministic)
    sampling = SamplingConfig(n=args.n, temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)
    return GenerationJob(problems_url=problems_url, output_url=output, key="bench", engine=engine, sampling=sampling,
                         model=args.model, strategies=("cot", "l2m", "pot"), shard_size=args.shard_size,
                         iteration=0, source="teacher", shots=2)


def samples_of(url: str) -> dict[tuple, str]:
    from storage.artifacts import read_artifact

    rows = read_artifact(url, "samples").to_pylist()
    return {(r["question_id"], r["strategy"], r["sample_index"]): r["text"] for r in rows}


def solved_sets(url: str, problems_url: str) -> dict[str, frozenset]:
    """{question: strategies with a correct sample}."""
    from distill.verify import verify_samples
    from storage.artifacts import read_artifact

    gold = {p["id"]: p["answer"] for p in read_artifact(problems_url, "problems").to_pylist()}
    rows = verify_samples(read_artifact(url, "samples").to_pylist(), gold)
    solved: dict[str, set] = {q: set() for q in gold}
    for r in rows:
        if r["verdict"] == "correct":
            solved[r["question_id"]].add(r["strategy"])
    return {q: frozenset(s) for q, s in solved.items()}


def run_once(problems_url: str, folder: Path, args, deterministic: bool, repeat: int) -> tuple[str, float]:
    from distill.engines import run_in_child
    from tasks.jobs.generate import generate_into

    url = str(folder / f"{'det' if deterministic else 'default'}-{repeat}")
    started = time.perf_counter()
    run_in_child(generate_into, make_job(problems_url, url, args, deterministic))
    return url, time.perf_counter() - started


def summary(problems_url: str, runs: list[tuple[str, float]]) -> dict:
    outputs, walls = [u for u, _ in runs], [w for _, w in runs]
    texts = [samples_of(u) for u in outputs]
    solved = [solved_sets(u, problems_url) for u in outputs]
    keys = set(texts[0])
    same_text = sum(all(t.get(k) == texts[0][k] for t in texts[1:]) for k in keys)
    same_solved = sum(all(s[q] == solved[0][q] for s in solved[1:]) for q in solved[0])
    return {"samples": len(keys), "identical_samples": same_text, "identical_share": round(same_text / len(keys), 3),
            "questions": len(solved[0]), "identical_solved_sets": same_solved,
            "wall_s": [round(w, 1) for w in walls], "mean_wall_s": round(sum(walls) / len(walls), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=112)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # vLLM logs to stdout: keep the report apart
    with tempfile.TemporaryDirectory(prefix="bench-repeat-") as tmp:
        folder = Path(tmp)
        problems = write_problems(folder, args.questions, difficulty=1)
        report = {"questions": args.questions, "strategies": 3, "n": args.n, "repeats": args.repeats,
                  "cores": len(os.sched_getaffinity(0)), "load_avg_before": round(os.getloadavg()[0], 1)}
        runs: dict[bool, list[tuple[str, float]]] = {False: [], True: []}
        for repeat in range(args.repeats):  # the sides alternate, so a drift in load falls on both
            for deterministic in (False, True):
                runs[deterministic].append(run_once(problems, folder, args, deterministic, repeat))
        report["default"] = summary(problems, runs[False])
        report["deterministic"] = summary(problems, runs[True])
    report["time_ratio"] = round(report["deterministic"]["mean_wall_s"] / report["default"]["mean_wall_s"], 2)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
        return
    print(f"{args.questions} questions x 3 strategies x n={args.n}, temperature 0.7, {args.repeats} repeats, "
          f"{report['cores']} cores", file=out)
    for name in ("default", "deterministic"):
        r = report[name]
        print(f"  {name:>13}: identical samples {r['identical_samples']}/{r['samples']} ({r['identical_share']:.1%}), "
              f"identical solved strategies {r['identical_solved_sets']}/{r['questions']}, "
              f"wall {r['wall_s']} s", file=out)
    print(f"  time ratio (deterministic / default): {report['time_ratio']}x", file=out)


if __name__ == "__main__":
    main()
