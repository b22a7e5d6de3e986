"""A training step with the token-level divergence term (top-k 20) against the same step without it.

    python bench/bench_divergence.py --threads 1     # BENCHMARKS.md figures (about 8 minutes on 2 busy cores)
    python bench/bench_divergence.py --threads 1 --memory-only --mmap-threshold 65536   # RSS = live tensors
    python bench/bench_divergence.py --steps 2 --rows 8 --kinds reverse_kl

The model is the quickstart's student: the embedded SmolLM2-135M-Instruct in float32, LoRA r 16 on
the last 10 of its 30 layers (`distill.training.student.load_student` with the quickstart's `train`
section), loss `dss_mi` (alpha 0.2, beta 0.1). The batches are the training's own:
`--rows` arith training rows (`cot`, the problem's step-by-step reference solution as the text)
through `build_texts`, `tokenize_texts` (max_length 256) and `collate_padded`, `--batch` examples
each. Every example carries a teacher's scores of every rationale target token
(`TokenizedExample.teacher`: top-k ids [n, k], their log-probabilities [n, k], the token's own [n]),
computed once, before anything is timed, by the privileged self-teacher: the same model, frozen,
reading the row's question with its gold answer (`privileged_prompt`) before the target's ids, as
the scoring step scores them (`distill.scoring.encode`).

A step is what `distill.training.loop.optimizer_step` does for one micro-batch, without the
optimizer: `compute_loss(model, batch, loss, norm=step_norm([batch], 1), token=...)` forward +
backward, the gradients then dropped. Variants: `token=None` (the base: the same step without the
term) and `TokenTerm(kind, 1.0)` for each of `--kinds` (reverse_kl, forward_kl, jsd with beta 0.5).
Step time (wall clock) and CPU time (of the process, all threads) are medians over `--steps`
steps per variant after one warm-up each; the variants are interleaved step by step in one process
(each round on the next batch, the variants' order rotating), so the load of other processes falls
on all of them alike. Peak memory is measured as in bench/bench_losses.py, twice: the peak of live
tensor bytes during one step, from torch.profiler's allocation events (tensors that exist before the
step, the weights and the batches, are not counted), and, in a fresh subprocess per variant, the
peak resident memory during two steps above what is resident once the model and batches exist (the
heap's free memory handed back first). The RSS figure that decides is the anonymous one (RssAnon,
sampled every 5 ms): file-backed pages (the weights' memory map, the libraries) come and go as other
processes need memory; the whole RSS (VmHWM, its peak reset after loading through
/proc/self/clear_refs) is printed beside it. Ratios are against the base in the same run; the
memory goal counts the larger of the tensor and anonymous RSS ratios. With glibc's default
allocator the RSS also holds freed blocks kept in the heap, which vary from run to run;
`--mmap-threshold 65536` fixes the allocator's threshold so that RSS follows the live tensors.

On a busy machine run it with `--threads 1`: with two torch threads on two shared cores each
parallel region waits for a thread the scheduler has put aside, and a step took 40 s instead of 6 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_losses import set_threads  # the repository root is on the path now
from bench.bench_scoring import arith_rows

TIME_GOAL, MEMORY_GOAL = 1.3, 1.2
BASE = "none"


def teacher_scores(model, tokenizer, text, kept: int, k: int):
    """The privileged self-teacher's scores of the first `kept` tokens of `text`'s rationale target:
    (top-k ids [kept, k] long, their log-probabilities [kept, k], the target tokens' own [kept])."""
    import torch

    from distill.scoring import encode
    from distill.student_format import answer_reference, privileged_prompt

    prompt, completion = encode(tokenizer, privileged_prompt(text.question, answer_reference(text.gold)),
                                text.rationale_target)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) - 1 + kept].float()
    log_probs = logits.log_softmax(-1)
    top = log_probs.topk(k, dim=-1)
    own = log_probs.gather(-1, torch.tensor(completion[:kept])[:, None]).squeeze(-1)
    return top.indices, top.values, own


def make_inputs(args) -> dict:
    """The student (quickstart LoRA), the loss config and the scored batches."""
    import torch
    from transformers import AutoTokenizer

    from distill.models import resolve_model
    from distill.training.data import build_texts, collate_padded, tokenize_texts
    from distill.training.student import load_student
    from distill.training.targets import target_mask
    from flows.commands.config_files import read_config
    from storage.paths import models_dir

    torch.manual_seed(0)
    cfg = read_config(args.config, []).train
    model_path = resolve_model(cfg.model, models_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_student(model_path, cfg, "cpu")
    texts, dropped = build_texts(arith_rows(args.rows, args.difficulty))
    examples, stats = tokenize_texts(texts, tokenizer, cfg.max_length)
    if dropped or stats.dropped or len(examples) != args.rows:
        raise SystemExit(f"rows dropped: {dict(dropped)} {dict(stats.dropped)}")
    model.eval()  # the teacher: the same weights, frozen (LoRA's B is 0 at the start)
    for text, example in zip(texts, examples, strict=True):
        example.teacher = teacher_scores(model, tokenizer, text, len(example.rationale_ids) -
                                         example.rationale_prompt_len, args.k)
    model.train()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = [collate_padded(examples[i:i + args.batch], pad) for i in range(0, len(examples), args.batch)]
    for batch in batches:  # the scores cover every rationale target token
        assert bool((batch["rationale_teacher_mask"] == target_mask(batch["rationale_labels"])).all())
    params = [p for p in model.parameters() if p.requires_grad]
    return {"model": model, "loss": cfg.loss, "batches": batches, "params": params,
            "lora": f"LoRA r {cfg.lora.r} on the last {cfg.lora.last_layers} layers" if cfg.lora.enabled else "full",
            "max_length": cfg.max_length, "trainable": sum(p.numel() for p in params),
            "truncated": dict(stats.truncated)}


def token_term(variant: str):
    from distill.training.losses import TokenTerm

    return None if variant == BASE else TokenTerm(variant, 1.0, beta=0.5)


def step(variant: str, inputs: dict, batch: dict) -> dict:
    """One `compute_loss` forward + backward, as the training loop runs it for one micro-batch."""
    from distill.training.losses import compute_loss, step_norm

    loss = compute_loss(inputs["model"], batch, inputs["loss"], norm=step_norm([batch], 1), token=token_term(variant))
    loss.total.backward()
    for param in inputs["params"]:
        param.grad = None
    return loss.as_floats()


def time_variants(variants: list[str], inputs: dict, steps: int) -> dict:
    """Wall and CPU time per step, the variants interleaved step by step (round r on batch r, the
    order rotating); then the peak tensor bytes of one step of each (only these with `steps` 0)."""
    batches = inputs["batches"]
    terms = {v: step(v, inputs, batches[0]) for v in variants}  # warm-up
    wall, cpu = {v: [] for v in variants}, {v: [] for v in variants}
    for r in range(steps):
        batch = batches[r % len(batches)]
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            step(variant, inputs, batch)
            wall[variant].append(time.perf_counter() - start)
            cpu[variant].append(time.process_time() - start_cpu)
        print(f"round {r + 1}/{steps} (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{v} {wall[v][-1]:.2f} s" for v in variants), file=sys.stderr, flush=True)
    timed = {v: {"step_s": statistics.median(wall[v]), "cpu_s": statistics.median(cpu[v]), "steps_s": wall[v]}
             if steps else {} for v in variants}
    return {v: {**timed[v], "divergence": terms[v]["divergence"],
                "tensor_peak_mib": tensor_peak(v, inputs, batches[0]) / 2**20} for v in variants}


def tensor_peak(variant: str, inputs: dict, batch: dict) -> int:
    """Peak bytes of the tensors one step allocates and holds at once (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(variant, inputs, batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _status_kib(*fields: str) -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    return values


class AnonPeak:
    """The peak of this process's anonymous resident memory (RssAnon), sampled every `every_s` by a
    thread while the `with` block runs. File-backed pages (the weights' memory map, the libraries)
    are left out: the kernel drops and reloads them as other processes need memory."""

    def __init__(self, every_s: float = 0.005):
        import threading

        self.every_s, self.peak_kib, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon")["RssAnon"])
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon")["RssAnon"])


def rss_added(variant: str, args) -> dict:
    """Inside a fresh subprocess: the peak anonymous RSS during two steps minus the anonymous RSS once
    the inputs exist (MiB); beside it the same for the whole RSS (VmHWM after a reset of the peak)."""
    import ctypes
    import gc

    inputs = make_inputs(args)
    gc.collect()
    try:  # glibc: hand the heap's free memory back first, so that the baseline is what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:  # reset the peak (VmHWM) to the current RSS: loading the model must not count
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    baseline = _status_kib("VmRSS", "RssAnon")
    with AnonPeak() as anon:
        for _ in range(2):
            step(variant, inputs, inputs["batches"][0])
    peak = _status_kib("VmHWM")["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_mib": (anon.peak_kib - baseline["RssAnon"]) / 1024,
            "total_rss_mib": (peak - baseline["VmRSS"]) / 1024, "peak_reset": reset}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="arith training rows (4 batches of 4)")
    parser.add_argument("--difficulty", type=int, default=3, help="arith difficulty (3: three steps, ~60 tokens)")
    parser.add_argument("--batch", type=int, default=4, help="examples per batch (quickstart: 4)")
    parser.add_argument("--k", type=int, default=20, help="stored teacher tokens per position")
    parser.add_argument("--kinds", default="reverse_kl,forward_kl,jsd", help="divergences to time beside the base")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="run config whose train section (model, LoRA, loss, max_length) the step uses")
    parser.add_argument("--memory-only", action="store_true", help="peak memory only, no timed steps")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="glibc's MALLOC_MMAP_THRESHOLD_ for the RSS subprocesses: a fixed threshold (e.g. "
                             "65536) keeps freed blocks from staying in the heap, so RSS follows the live tensors")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rss-of", help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    variants = [BASE, *(k.strip() for k in args.kinds.split(",") if k.strip())]
    if args.rss_of:
        set_threads(args)
        print(json.dumps(rss_added(args.rss_of, args)))
        return

    # The subprocesses start while this process is small, before it loads anything.
    rss = {}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    for variant in variants:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--rss-of", variant],
                             check=False, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr}")
        rss[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS of {variant}: {rss[variant]['rss_mib']:.0f} MiB added", file=sys.stderr, flush=True)
    threads = set_threads(args)
    load = os.getloadavg()
    inputs = make_inputs(args)
    results = time_variants(variants, inputs, 0 if args.memory_only else args.steps)
    for variant in variants:
        results[variant] |= rss[variant]
    base = results[BASE]
    timed = not args.memory_only
    met = {v: {"memory": max(results[v]["rss_mib"] / base["rss_mib"],
                             results[v]["tensor_peak_mib"] / base["tensor_peak_mib"]) <= MEMORY_GOAL}
           | ({"time": results[v]["step_s"] / base["step_s"] <= TIME_GOAL} if timed else {})
           for v in variants if v != BASE}
    batches = inputs["batches"]
    shapes = [tuple(b["rationale_input_ids"].shape) for b in batches]
    scored = [int(b["rationale_teacher_mask"].sum()) for b in batches]
    if args.json:
        print(json.dumps({"variants": results, "met": met, "threads": threads, "load_avg": load,
                          "mmap_threshold": args.mmap_threshold,
                          "rationale_shapes": shapes, "scored_positions": scored, "k": args.k,
                          "lora": inputs["lora"], "trainable": inputs["trainable"]}))
        return
    print(f"SmolLM2-135M float32, {inputs['lora']} ({inputs['trainable']:,} trainable), loss {inputs['loss'].kind}; "
          f"{len(batches)} batches of {args.batch} arith d{args.difficulty} rows, rationale [B, T] {shapes}, "
          f"{scored} scored positions, k={args.k}, max_length {inputs['max_length']}; "
          + (f"median of {args.steps} interleaved steps; " if timed else "memory only; ")
          + f"torch threads={threads}; MALLOC_MMAP_THRESHOLD_ {args.mmap_threshold or 'unset'} for the RSS; "
          f"load average {load[0]:.1f} at the start")
    columns = (("step_s", "step time (s)", ".2f"), ("cpu_s", "CPU time (s)", ".2f"),
               ("rss_mib", "peak anon RSS added (MiB)", ".0f"), ("total_rss_mib", "peak RSS added (MiB)", ".0f"),
               ("tensor_peak_mib", "peak tensors (MiB)", ".0f"))[0 if timed else 2:]
    print("| token term | " + " | ".join(f"{title} | x base" for _, title, _ in columns) + " |")
    print("| --- " * (1 + 2 * len(columns)) + "|")
    for v in variants:
        cells = [f"{results[v][key]:{fmt}} | {results[v][key] / base[key]:.2f}" for key, _, fmt in columns]
        print(f"| {'none (dss_mi alone)' if v == BASE else v} | " + " | ".join(cells) + " |")
    for v, ok in met.items():
        said = (f"time {results[v]['step_s'] / base['step_s']:.2f}x (goal <= {TIME_GOAL}: "
                f"{'met' if ok['time'] else 'NOT met'}), " if timed else "")
        print(f"{v}: {said}peak memory {results[v]['rss_mib'] / base['rss_mib']:.2f}x anon RSS, "
              f"{results[v]['tensor_peak_mib'] / base['tensor_peak_mib']:.2f}x tensors (goal <= {MEMORY_GOAL}: "
              f"{'met' if ok['memory'] else 'NOT met'}); divergence at the first batch {results[v]['divergence']:.4f}")

if __name__ == "__main__":
    main()
