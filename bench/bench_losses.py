"""Step time and peak memory of the training losses: DSS, DSS + MI (chunked), DSS + MI (naive).

    python bench/bench_losses.py --threads 1              # BENCHMARKS.md figures (10 to 20 minutes)
    python bench/bench_losses.py --threads 1 --loss-only  # the loss terms alone

One step is `compute_loss` forward + backward on a shallow causal LM (embedding -> lm_head with
the vocabulary of SmolLM2, so the logits are real activations whose gradient flows back into
weights), B examples per task: the label task (prompt + answer, `--label-length` positions) and the
rationale task (prompt + solution + padding, `--length` positions). With `--loss-only` the logits
are the leaves and the step is the loss terms alone. "naive" pools full B x T x V probability
tensors, as the MI reference code does (restricted to target positions).

Step time (wall clock) and CPU time (of the process, all threads) are medians over `--steps`
steps per variant, after one warm-up each, with the variants interleaved step by step in one process
so that the load of other processes on a shared machine falls on all of them alike. Peak memory is
measured twice: the peak of live tensor bytes during one step, from torch.profiler's allocation
events (exact; tensors that exist before the step, such as the inputs and weights, are not
counted), and, in a fresh subprocess per variant, the peak RSS (ru_maxrss) minus the RSS once the
inputs exist (allocator slack included). Ratios are against DSS in the same run. CPU time with
`--threads 1` (no idle spinning) is the steadier time measure on a busy machine.
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

VARIANTS = ("dss", "dss_mi", "dss_mi_naive")


def make_inputs(args):
    """The batch (both tasks, the layout of `distill.training.data`) and what the step differentiates."""
    import torch

    gen = torch.Generator().manual_seed(0)

    def make_task(length, prompts, targets):
        ids = torch.randint(0, args.vocab, (args.batch, length), generator=gen)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for b in range(args.batch):
            p, t = prompts[b % len(prompts)], targets[b % len(targets)]
            mask[b, :p + t] = 1
            labels[b, p:p + t] = ids[b, p:p + t]
        return ids, mask, labels

    # Realistic layouts: a label task is a prompt and a short answer; a rationale task is a prompt,
    # a long solution and padding up to the longest example of the batch.
    tl, tr = args.label_length, args.length
    batch = {}
    for name, tensors in (("label", make_task(tl, [tl - 6, tl - 40, tl - 25, tl - 60], [6, 4, 5, 3])),
                          ("rationale", make_task(tr, [150, 120, 180, 100],
                                                  [tr - 150, tr - 200, tr - 260, tr - 180]))):
        batch |= dict(zip((f"{name}_input_ids", f"{name}_attention_mask", f"{name}_labels"), tensors))
    if args.loss_only:
        logits = {task: torch.randn(args.batch, t, args.vocab, generator=gen).requires_grad_()
                  for task, t in (("label", tl), ("rationale", tr))}
        return {"batch": batch, "model": FixedLogits(batch, logits), "leaves": list(logits.values())}
    model = ShallowLM(args.vocab, args.hidden)
    return {"batch": batch, "model": model, "leaves": [model.embed.weight, model.lm_head.weight]}


class ShallowLM:
    """The cheapest causal LM with a real lm_head: embedding [V, H] -> lm_head [H -> V] (not tied)."""

    def __init__(self, vocab, hidden):
        import torch

        self.embed = torch.nn.Embedding(vocab, hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def __call__(self, input_ids, **_):
        from types import SimpleNamespace

        hidden = self.embed(input_ids)
        return SimpleNamespace(logits=self.lm_head(hidden), hidden_states=(hidden,))


class FixedLogits:
    """--loss-only: a "model" that returns fixed leaf logits for each task of the batch."""

    def __init__(self, batch, logits):
        self.by_input = {id(batch[f"{task}_input_ids"]): value for task, value in logits.items()}

    def __call__(self, input_ids, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.by_input[id(input_ids)])


def naive_mi_from_log_probs(label_log_probs, label_labels, rationale_log_probs, rationale_labels, *_, **__):
    """The MI term with full probability tensors: exp of the B x T x V log-softmax, a masked copy, max."""
    import torch
    import torch.nn.functional as F

    from distill.training.targets import target_mask

    def pooled(log_probs, labels):
        return log_probs.exp().masked_fill(~target_mask(labels)[..., None], 0.0).max(dim=1).values

    with torch.no_grad():
        p = pooled(label_log_probs.detach(), label_labels)
    q = pooled(rationale_log_probs, rationale_labels)
    keep = target_mask(label_labels).any(1) & target_mask(rationale_labels).any(1)
    return ((-(p * F.log_softmax(q, dim=-1)).sum(-1)) * keep).sum() / keep.sum().clamp(min=1)


def step(variant, inputs, args):
    """One `compute_loss` forward + backward (the naive variant swaps in its MI term for the step)."""
    from contextlib import nullcontext
    from unittest.mock import patch

    from distill.config import LossConfig
    from distill.training import losses

    cfg = LossConfig(kind="dss" if variant == "dss" else "dss_mi", alpha=0.5, beta=0.1, chunk_size=args.chunk)
    naive = variant == "dss_mi_naive"
    with patch.object(losses, "mi_from_log_probs", naive_mi_from_log_probs) if naive else nullcontext():
        losses.compute_loss(inputs["model"], inputs["batch"], cfg).total.backward()
    for leaf in inputs["leaves"]:
        leaf.grad = None


def time_variants(args) -> dict:
    """Wall and CPU time per step, the variants interleaved step by step so that a neighbour's load
    falls on all of them alike; then the peak tensor bytes of one step of each."""
    inputs = make_inputs(args)
    for variant in VARIANTS:  # warm-up
        step(variant, inputs, args)
    wall, cpu = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
    for r in range(args.steps):
        for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
            start, start_cpu = time.perf_counter(), time.process_time()
            step(variant, inputs, args)
            wall[variant].append(time.perf_counter() - start)
            cpu[variant].append(time.process_time() - start_cpu)
    return {v: {"step_s": statistics.median(wall[v]), "cpu_s": statistics.median(cpu[v]),
                "tensor_peak_mib": tensor_peak(v, inputs, args) / 2**20} for v in VARIANTS}


def tensor_peak(variant, inputs, args) -> int:
    """Peak bytes of the tensors one step allocates and holds at once (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(variant, inputs, args)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def rss_added(variant, args) -> float:
    """Inside a fresh subprocess: peak RSS over two steps minus the RSS once the inputs exist (MiB)."""
    import psutil

    inputs = make_inputs(args)
    baseline = psutil.Process().memory_info().rss
    for _ in range(2):
        step(variant, inputs, args)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline) / 2**20  # KiB on Linux


def set_threads(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="examples per task")
    parser.add_argument("--length", type=int, default=512, help="rationale-task positions")
    parser.add_argument("--label-length", type=int, default=160, help="label-task positions")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=64, help="chunk_size of the chunked MI")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--loss-only", action="store_true", help="logits as leaves, no model")
    parser.add_argument("--rss-of", choices=VARIANTS, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.rss_of:
        set_threads(args)
        print(json.dumps(rss_added(args.rss_of, args)))
        return

    # The subprocesses start while this process is small: a child's ru_maxrss counts the memory of
    # the parent it was forked from.
    rss = {}
    passthrough = list(argv if argv is not None else sys.argv[1:])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--rss-of", variant],
                             check=False, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr}")
        rss[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    set_threads(args)
    results = time_variants(args)
    for variant in VARIANTS:
        results[variant]["rss_mib"] = rss[variant]

    mode = "loss terms only (logits are leaves)" if args.loss_only else f"embedding + lm_head (H={args.hidden}) + loss"
    print(f"B={args.batch} per task, label T={args.label_length}, rationale T={args.length}, V={args.vocab}, "
          f"chunk={args.chunk}; {mode}; median of {args.steps} interleaved steps; "
          f"torch threads={set_threads(args)}")
    columns = (("step_s", "step time (s)", ".2f"), ("cpu_s", "CPU time (s)", ".2f"),
               ("rss_mib", "peak RSS added (MiB)", ".0f"), ("tensor_peak_mib", "peak tensors (MiB)", ".0f"))
    print("| variant | " + " | ".join(f"{title} | x DSS" for _, title, _ in columns) + " |")
    print("| --- " * (1 + 2 * len(columns)) + "|")
    for v in VARIANTS:
        cells = [f"{results[v][key]:{fmt}} | {results[v][key] / results['dss'][key]:.2f}" for key, _, fmt in columns]
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
