"""The scoring step against raw vLLM prompt log-probabilities on the same samples: scored tokens per second.

    python bench/bench_scoring.py --repeats 3        # BENCHMARKS.md figures (about 10 minutes on 2 cores)
    python bench/bench_scoring.py --same-engine 4    # both sides on one engine, alternating (8 minutes)
    python bench/bench_scoring.py --rows 16 --repeats 1 --guard-samples 0 --json

Samples: `--rows` training rows of the built-in `arith` benchmark (train split, `--difficulty`),
each a `cot` row whose text is the problem's step-by-step reference solution (`Each neighbor gets
45 / 3 = 15 strawberries. ... The answer is 2.`), as a round's distillation set holds them
(TRAIN_EXAMPLES). They are scored by the privileged self-teacher (`token_level.teacher: self`: the
embedded SmolLM2-135M-Instruct, shown the gold answer), so the engine is the config's `siked.engine`
(the quickstart's: float32, a 512 MiB KV cache), top-k `--k`.

Project: the scoring step's child-process body itself (`tasks.jobs.score.score_into` with a
`ScoreJob`): it reads the rows, checks the tokenizers, starts the `vllm` engine, and
`distill.scoring.score_shards` encodes each shard of `--shard-size` rows (the quickstart's
`teacher.shard_size`), scores it through `VllmEngine.score`, turns vLLM's prompt log-probabilities
into the TOKEN_SCORES rows and writes the shard's Parquet file (rows, sha256, manifest) before the
next shard; then it finalizes the folder. Guards off (`guard_samples=0`) in the timed pairs. Timed:
`score_shards`' own window (`seconds`: from the first shard's encoding to the last shard written);
engine start and the rest of the step (reading the rows, tokenizers, finalize) are reported apart.
With `--guard-samples N` one more project run has the guards on, and their seconds are reported.

Raw: `vllm.LLM(...)` with the engine arguments, CPU thread binding and in-process engine core that
`VllmEngine` uses for the same `EngineConfig`, the same token-id prompts (prompt + completion ids,
encoded by `distill.scoring.encode` as `score_shard` does, before the timer starts), and one
`llm.generate` over all of them with the `SamplingParams` `VllmEngine.score` passes
(`max_tokens=1, temperature=0, prompt_logprobs=k, detokenize=False`; vLLM's default `detokenize=True`
would also decode every top-k token, work the step does not do). Timed: that call alone.

Each side runs in a child process of its own, with no spare process importing beside it
(`SIKED_WARM_START=0`). With `--repeats`, the pairs alternate which side goes first, and the median
of the per-pair ratios is the result. Both sides score the same completion tokens; the first
sample's scores of the two sides are compared (top-k ids and log-probabilities). The CPU seconds of
each side's processes in the same window are reported beside the wall clock, as scored tokens per
CPU second.

`--same-engine ROUNDS` measures the same two things without the process-to-process spread: one
child, one engine (started as the step starts it), a small warm-up call, then ROUNDS rounds of the
raw call and the step's scoring (`score_shards` over the step's shards, each written as `score_into`
writes it), the order alternating. The step's part of the time (encoding, turning vLLM's
log-probabilities into rows, writing the shards) is then what separates the two sides.
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
from bench.bench_teacher import tree_cpu_s  # the repository root is on the path now

GOAL = 0.9


def arith_rows(count: int, difficulty: int) -> list[dict]:
    """TRAIN_EXAMPLES rows: `count` arith training problems, each a `cot` row with its reference solution."""
    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef

    problems = load_benchmark(BenchmarkRef(name="arith", split="train", difficulty=difficulty, size=count),
                              None).problems
    return [{"question_id": p.id, "question": p.question, "gold": p.answer, "strategy": "cot",
             "text": p.reference, "sample_index": 0, "source": "teacher", "iteration": 0, "model": "reference"}
            for p in problems]


def in_process_like_the_engine(cfg) -> None:
    """Where vLLM's engine core runs, decided as `VllmEngine.__init__` decides it."""
    from distill.engines.vllm_settings import on_gpus

    if cfg.in_process is not None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.in_process else "1"
    elif not on_gpus():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def raw_side(cfg, model_path: str, requests: list[tuple[list[int], int]], k: int) -> dict:
    """Plain `vllm.LLM.generate` with prompt log-probabilities over the step's token ids (runs in a child)."""
    import vllm
    from vllm.inputs import TokensPrompt

    from distill.engines.prompt_logprobs import ScoreRequest, token_scores
    from distill.engines.vllm_settings import bind_all_cpus, llm_kwargs

    bind_all_cpus(cfg)  # the same thread binding as VllmEngine
    in_process_like_the_engine(cfg)
    started = time.perf_counter()
    llm = vllm.LLM(**llm_kwargs(cfg, model_path))  # what VllmEngine passes for the same config
    start_s = time.perf_counter() - started
    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids, _ in requests]
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
    cpu, started = tree_cpu_s(), time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - started, tree_cpu_s() - cpu
    positions = [len(o.prompt_logprobs or ()) for o in outputs]
    if positions != [len(ids) for ids, _ in requests]:
        raise SystemExit("raw vLLM returned prompt log-probabilities for other positions than asked")
    first = token_scores(outputs[0].prompt_logprobs, ScoreRequest("0", requests[0][0], requests[0][1]), k)
    llm.llm_engine.engine_core.shutdown()
    return {"side": "raw vLLM", "start_s": start_s, "seconds": seconds, "cpu_s": cpu, "samples": len(outputs),
            "tokens": sum(len(ids) - prompt_len for ids, prompt_len in requests),
            "first": {"top_ids": first.top_ids, "top_logprobs": first.top_logprobs,
                      "sampled_logprobs": first.sampled_logprobs}}


def project_side(job) -> dict:
    """The step's `score_into`, with engine start and the scoring window's CPU measured (runs in a child)."""
    import distill.engines
    import distill.scoring
    from storage.shards import ShardedArtifact
    from tasks.jobs.score import score_into

    make_engine, score_shard, score_shards = (distill.engines.make_engine, distill.scoring.score_shard,
                                              distill.scoring.score_shards)
    timed: dict = {}

    def timed_make_engine(*args, **kwargs):  # score_into imports it when it runs
        started = time.perf_counter()
        try:
            return make_engine(*args, **kwargs)
        finally:
            timed["engine_start_s"] = time.perf_counter() - started

    def measured_shard(*args, **kwargs):  # the window of `seconds` opens with the first shard
        timed.setdefault("cpu_start", tree_cpu_s())
        return score_shard(*args, **kwargs)

    def measured_shards(*args, **kwargs):
        try:
            return score_shards(*args, **kwargs)
        finally:
            timed["cpu_s"] = tree_cpu_s() - timed.get("cpu_start", tree_cpu_s())

    distill.engines.make_engine = timed_make_engine
    distill.scoring.score_shard = measured_shard
    distill.scoring.score_shards = measured_shards
    started = time.perf_counter()
    stats = score_into(job)
    total = time.perf_counter() - started
    scores = ShardedArtifact(job.output_url, "token_scores").read(
        columns=["top_ids", "top_logprobs", "sampled_logprobs", "completion_ids"]).to_pylist()
    guards = stats.get("guards", {}).get("seconds", 0.0)
    return {"side": "project step", "seconds": stats["seconds"], "samples": stats["samples"],
            "tokens": stats["tokens"], "shards": stats["shards"], "rows_written": len(scores),
            "tokens_written": sum(len(r["completion_ids"]) for r in scores), "cpu_s": timed["cpu_s"],
            "engine_start_s": timed["engine_start_s"], "guards_s": guards,
            "other_s": total - stats["seconds"] - timed["engine_start_s"] - guards,
            "first": {key: scores[0][key] for key in ("top_ids", "top_logprobs", "sampled_logprobs")}}


def same_engine_side(job, model_path: str, rounds: int) -> list[dict]:
    """One engine, both sides alternately (runs in a child): `rounds` rounds of raw `llm.generate`
    over the step's token ids against the step's own scoring (`score_shards` with `VllmEngine.score`,
    each shard written as `score_into` writes it; its tokenizer check is inside the window here), the
    order alternating; after a small warm-up call."""
    import vllm
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from distill.engines import make_engine
    from distill.scoring import encode, score_shards
    from storage.shards import ShardedArtifact
    from tasks.jobs.score import scoring_shards, write_scored_shard

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    shards, _ = scoring_shards(job)
    encoded = [encode(tokenizer, s.prompt, s.completion) for shard in shards for s in shard]
    prompts = [TokensPrompt(prompt_token_ids=prompt + completion) for prompt, completion in encoded]
    tokens = sum(len(completion) for _, completion in encoded)
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=job.top_k, detokenize=False)
    engine = make_engine(job.engine, model_path)
    try:
        score_shards(engine, [shards[0][:2]], tokenizer, job.top_k, on_shard=lambda i, rows: None,
                     progress=lambda text: None)  # warm-up
        runs = []
        for r in range(rounds):
            timed = {}
            for side in (("raw", "project") if r % 2 == 0 else ("project", "raw")):
                cpu, started = tree_cpu_s(), time.perf_counter()
                if side == "raw":
                    engine._llm.generate(prompts, params, use_tqdm=False)
                else:
                    out = ShardedArtifact(f"{job.output_url}-{r}", "token_scores", config_hash="bench")
                    score_shards(engine, shards, tokenizer, job.top_k, progress=lambda text: None,
                                 on_shard=lambda index, rows, out=out: write_scored_shard(out, index, rows))
                timed[side] = {"seconds": time.perf_counter() - started, "cpu_s": tree_cpu_s() - cpu, "tokens": tokens}
            runs.append({"round": r, "first": "raw" if r % 2 == 0 else "project", "load_avg": round(os.getloadavg()[0], 1),
                         **timed, "ratio": _rate(timed["project"]) / _rate(timed["raw"])})
        return runs
    finally:
        engine.shutdown()


def first_sample_difference(raw: dict, step: dict) -> dict:
    """How the two sides' scores of the first sample compare: top-k ids equal, largest log-prob gap."""
    a, b = raw["first"], step["first"]
    gaps = [abs(x - y) for key in ("top_logprobs", "sampled_logprobs")
            for xs, ys in zip(a[key], b[key], strict=True)
            for x, y in (zip(xs, ys, strict=True) if isinstance(xs, list) else [(xs, ys)])]
    same = sum(x == y for x, y in zip(a["top_ids"], b["top_ids"], strict=True))
    return {"positions": len(a["top_ids"]), "same_top_ids": same, "max_logprob_gap": max(gaps, default=0.0)}


def _rate(run: dict) -> float:
    return run["tokens"] / run["seconds"]


def _cpu_rate(run: dict) -> float:
    return run["tokens"] / run["cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="arith training rows (one cot row each)")
    parser.add_argument("--difficulty", type=int, default=3, help="arith difficulty (3: three steps, ~60 tokens)")
    parser.add_argument("--k", type=int, default=20, help="top-k log-probabilities per position")
    parser.add_argument("--shard-size", type=int, default=16, help="rows per scoring shard (quickstart: 16)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating which goes first")
    parser.add_argument("--guard-samples", type=int, default=4,
                        help="one more project run with the guards on this many samples (0: none)")
    parser.add_argument("--same-engine", type=int, default=0, metavar="ROUNDS",
                        help="instead of the pairs: ROUNDS rounds of both sides on one engine in one child")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="run config whose siked.engine (the self-teacher's) both sides use")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. siked.engine.dtype=bfloat16")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("SIKED_WARM_START", "0")  # nothing imports beside the measured child
    from transformers import AutoTokenizer

    from distill.engines.child import run_in_child
    from distill.models import resolve_model
    from distill.scoring import encode, rationale_samples
    from distill.student_format import answer_reference
    from flows.commands.config_files import read_config
    from storage.artifacts import write_artifact
    from storage.paths import models_dir
    from tasks.jobs.score import ScoreJob

    cfg = read_config(args.config, ["token_level.use=record", "token_level.teacher=self", *args.overrides])
    engine, student = cfg.scoring_engine(), cfg.train.model
    if engine.kind != "vllm":
        raise SystemExit(f"the scoring engine's kind is {engine.kind!r}; this benchmark compares vllm engines")
    model_path = resolve_model(student, models_dir())
    rows = arith_rows(args.rows, args.difficulty)
    # The ids the step scores: the privileged prompt (the gold answer shown) and the row's target.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    samples = rationale_samples(rows, reference=lambda row: answer_reference(row["gold"]))
    encoded = [encode(tokenizer, s.prompt, s.completion) for s in samples]
    requests = [(prompt + completion, len(prompt)) for prompt, completion in encoded]
    prompt_tokens = sum(len(p) for p, _ in encoded)

    pairs, guarded = [], None
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as root:
        rows_url = str(Path(root) / "rows.parquet")
        write_artifact(rows_url, rows, "train_examples", config_hash="bench")

        def project(repeat: int, guard_samples: int = 0) -> dict:
            job = ScoreJob(rows_url=rows_url, output_url=str(Path(root) / f"scores-{repeat}-{guard_samples}"),
                           key="bench", engine=engine, model=student, student=student, teacher="self",
                           top_k=args.k, iteration=1, shard_size=args.shard_size, guard_samples=guard_samples)
            return run_in_child(project_side, job)

        def raw(repeat: int) -> dict:
            return run_in_child(raw_side, engine, model_path, requests, args.k)

        if args.same_engine:
            job = ScoreJob(rows_url=rows_url, output_url=str(Path(root) / "scores"), key="bench", engine=engine,
                           model=student, student=student, teacher="self", top_k=args.k, iteration=1,
                           shard_size=args.shard_size)
            rounds = run_in_child(same_engine_side, job, model_path, args.same_engine)
            median = statistics.median(r["ratio"] for r in rounds)
            if args.json:
                print(json.dumps({"rows": len(rows), "k": args.k, "shard_size": args.shard_size, "rounds": rounds,
                                  "median_ratio": median}))
                return
            print(f"one engine, {len(rows)} rows, {prompt_tokens} prompt + {rounds[0]['raw']['tokens']} completion "
                  f"tokens, k={args.k}, shards of {args.shard_size} rows")
            print("| round | first | load | raw s | raw CPU s | step s | step CPU s | ratio |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in rounds:
                print(f"| {r['round'] + 1} | {r['first']} | {r['load_avg']} | {r['raw']['seconds']:.1f} | "
                      f"{r['raw']['cpu_s']:.1f} | {r['project']['seconds']:.1f} | {r['project']['cpu_s']:.1f} | "
                      f"{r['ratio']:.3f} |")
            print(f"project / raw on one engine, scored tokens per second (median of {len(rounds)}): {median:.3f}")
            return
        for repeat in range(args.repeats):
            load = os.getloadavg()[0]
            order = [raw, project] if repeat % 2 == 0 else [project, raw]
            runs = {r["side"]: r for r in (side(repeat) for side in order)}
            base, step = runs["raw vLLM"], runs["project step"]
            if (base["tokens"], base["samples"]) != (step["tokens"], step["samples"]) or \
                    (step["tokens_written"], step["rows_written"]) != (step["tokens"], step["samples"]):
                raise SystemExit(f"the sides scored different tokens: raw {base['tokens']} in {base['samples']} "
                                 f"samples, project {step['tokens']} in {step['samples']} "
                                 f"({step['tokens_written']} in {step['rows_written']} rows written)")
            pairs.append({"repeat": repeat, "first": order[0].__name__, "load_avg": round(load, 1),
                          "raw": base, "project": step, "ratio": _rate(step) / _rate(base),
                          "cpu_ratio": _cpu_rate(step) / _cpu_rate(base),
                          "first_sample": first_sample_difference(base, step)})
            print(f"repeat {repeat + 1}/{args.repeats} (load {load:.1f}): raw {_rate(base):.1f} tok/s, project "
                  f"{_rate(step):.1f} tok/s, ratio {pairs[-1]['ratio']:.3f}", file=sys.stderr, flush=True)
        if args.guard_samples:
            load = os.getloadavg()[0]
            guarded = project(args.repeats, args.guard_samples) | {"load_avg": round(load, 1)}

    for pair in pairs:
        for side in ("raw", "project"):
            pair[side].pop("first")
    if guarded:
        guarded.pop("first")
    median = statistics.median(p["ratio"] for p in pairs)
    cpu_median = statistics.median(p["cpu_ratio"] for p in pairs)
    from distill.engines.vllm_settings import llm_kwargs

    eager = llm_kwargs(engine, model_path)["enforce_eager"]
    result = {"rows": len(rows), "difficulty": args.difficulty, "k": args.k, "shard_size": args.shard_size,
              "prompt_tokens": prompt_tokens, "completion_tokens": pairs[0]["raw"]["tokens"],
              "dtype": engine.dtype, "enforce_eager": eager, "vllm_args": dict(engine.vllm_args),
              "cpus": os.cpu_count(), "pairs": pairs, "guarded": guarded,
              "median_ratio": median, "median_cpu_ratio": cpu_median, "goal": GOAL, "met": median >= GOAL}
    if args.json:
        print(json.dumps(result))
        return
    print(f"arith d{args.difficulty}: {len(rows)} cot rows, {prompt_tokens} prompt + {result['completion_tokens']} "
          f"completion tokens, k={args.k}, shards of {args.shard_size} rows; vLLM {engine.dtype}"
          f"{', eager' if eager else ''}, {dict(engine.vllm_args)}; {os.cpu_count()} CPUs")
    print("| pair | first | load | tokens | raw s | raw tok/s | step s | step tok/s | ratio | raw CPU s "
          "| step CPU s | ratio per CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in pairs:
        b, s = p["raw"], p["project"]
        print(f"| {p['repeat'] + 1} | {p['first']} | {p['load_avg']} | {b['tokens']} | {b['seconds']:.1f} "
              f"| {_rate(b):.1f} | {s['seconds']:.1f} | {_rate(s):.1f} | {p['ratio']:.3f} | {b['cpu_s']:.1f} "
              f"| {s['cpu_s']:.1f} | {p['cpu_ratio']:.3f} |")
    for p in pairs:
        f = p["first_sample"]
        print(f"pair {p['repeat'] + 1}: outside the timed window: raw engine start {p['raw']['start_s']:.1f} s; "
              f"step engine start {p['project']['engine_start_s']:.1f} s, rest of the step "
              f"{p['project']['other_s']:.1f} s; first sample: top-k ids equal at {f['same_top_ids']}/"
              f"{f['positions']} positions, log-probabilities within {f['max_logprob_gap']:.2g}")
    if guarded:
        print(f"guards on ({args.guard_samples} samples, load {guarded['load_avg']}): guards {guarded['guards_s']:.1f} s "
              f"before scoring; scoring {guarded['seconds']:.1f} s ({_rate(guarded):.1f} tok/s), engine start "
              f"{guarded['engine_start_s']:.1f} s")
    print(f"project / raw, scored tokens per CPU second of each side's processes (median): {cpu_median:.3f}")
    print(f"project / raw, scored tokens per second (median of {len(pairs)}): {median:.3f}  goal >= {GOAL}: "
          f"{'met' if median >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
