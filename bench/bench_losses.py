"""Step time and peak memory of the training losses: DSS, DSS + MI (chunked), DSS + MI (naive).

    python bench/bench_losses.py                       # defaults below; about 3 minutes on 2 cores
    python bench/bench_losses.py --label-length 512 --rounds 1

One step is `compute_loss` forward + backward on a shallow causal LM (embedding -> lm_head with
the vocabulary of SmolLM2, so the logits are real activations whose gradient flows back into
weights), B examples per task: the label task (prompt + answer, `--label-length` positions) and the
rationale task (prompt + solution + padding, `--length` positions). With `--loss-only` the logits
are the leaves and the step is the loss terms alone. "naive" pools full B x T x V probability
tensors, as the MI reference code does (restricted to target positions).

Every (variant, round) runs in a fresh subprocess: step time (wall clock) and CPU time (of the
process, all threads) are medians of `--steps` timed steps after one warm-up, and peak memory is
the process's peak RSS (ru_maxrss) minus its RSS once the inputs exist, so each variant's figure is
the memory its steps add. Ratios are against DSS in the same run. On a shared machine wall time
follows the neighbours' load; CPU time with `--threads 1` (no idle spinning) is the steadier
measure. Rounds alternate the order of the variants and the report takes the median over rounds.
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

    from distill.training.losses import target_mask

    def pooled(log_probs, labels):
        return log_probs.exp().masked_fill(~target_mask(labels)[..., None], 0.0).max(dim=1).values

    with torch.no_grad():
        p = pooled(label_log_probs.detach(), label_labels)
    q = pooled(rationale_log_probs, rationale_labels)
    keep = target_mask(label_labels).any(1) & target_mask(rationale_labels).any(1)
    return ((-(p * F.log_softmax(q, dim=-1)).sum(-1)) * keep).sum() / keep.sum().clamp(min=1)


def step(variant, inputs, args):
    """One `compute_loss` forward + backward (the naive variant swaps in its MI term)."""
    from distill.config import LossConfig
    from distill.training import losses

    cfg = LossConfig(kind="dss" if variant == "dss" else "dss_mi", alpha=0.5, beta=0.1, chunk_size=args.chunk)
    if variant == "dss_mi_naive":
        losses.mi_from_log_probs = naive_mi_from_log_probs
    losses.compute_loss(inputs["model"], inputs["batch"], cfg).total.backward()
    for leaf in inputs["leaves"]:
        leaf.grad = None


def run_variant(variant, args) -> dict:
    """Inside the subprocess: time `args.steps` steps and measure the peak memory they add."""
    import psutil
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = make_inputs(args)
    baseline = psutil.Process().memory_info().rss
    wall, cpu = [], []
    for i in range(args.steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(variant, inputs, args)
        if i:  # the first step warms up
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"variant": variant, "step_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "peak_mib": (peak - baseline) / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="examples per task")
    parser.add_argument("--length", type=int, default=512, help="rationale-task positions")
    parser.add_argument("--label-length", type=int, default=160, help="label-task positions")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=64, help="chunk_size of the chunked MI")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--loss-only", action="store_true", help="logits as leaves, no model")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return

    results = {v: [] for v in VARIANTS}
    passthrough = list(argv if argv is not None else sys.argv[1:])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for r in range(args.rounds):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                                 check=False, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{variant} failed:\n{out.stderr}")
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))

    mode = "loss terms only (logits are leaves)" if args.loss_only else f"embedding + lm_head (H={args.hidden}) + loss"
    print(f"B={args.batch} per task, label T={args.label_length}, rationale T={args.length}, V={args.vocab}, "
          f"chunk={args.chunk}; {mode}; median of {args.steps} steps x {args.rounds} rounds; "
          f"torch threads={args.threads or 'default'}")
    print("| variant | step time (s) | x DSS | CPU time (s) | x DSS | peak memory added (MiB) | x DSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    median = {key: {v: statistics.median(r[key] for r in results[v]) for v in VARIANTS}
              for key in ("step_s", "cpu_s", "peak_mib")}
    for v in VARIANTS:
        cells = [f"{median[key][v]:{fmt}} | {median[key][v] / median[key]['dss']:.2f}"
                 for key, fmt in (("step_s", ".2f"), ("cpu_s", ".2f"), ("peak_mib", ".0f"))]
        print(f"| {v} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
