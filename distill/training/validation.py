"""Validation on the held-out questions: the training loss terms, and answer accuracy in label mode.

    val = evaluate(wrapped, model, val_examples, val_texts, tokenizer, cfg, options, dist_, autocast)
    val["loss"], val["accuracy"], val["answered"]

Accuracy is the DSS protocol, cheap enough to run at every validation: greedy generation from the
label prompt (`options.val_max_new_tokens` new tokens), the first number of the completion
(`student_format.parse_label_output`) compared with the gold (`answers.answers_match`), over the
first `options.val_accuracy_limit` validation questions in a fixed order (sha256 of the id).

Distributed: the examples are dealt out to the processes (example i to rank i mod world), each
shard padded with repeats of weight 0 to the same length, so every process makes the same number of
forward calls (FSDP needs that) and the sums are exact.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any


def _shard(n: int, rank: int, world: int) -> list[tuple[int, float]]:
    """(index, weight) pairs of this rank: equal length on every rank, padding repeats weigh 0."""
    padded = math.ceil(n / world) * world if n else 0
    return [(i % n, 1.0 if i < n else 0.0) for i in range(rank, padded, world)]


def evaluate(wrapped: Any, model: Any, examples: list[Any], texts: list[Any], tokenizer: Any, cfg: Any,
             options: Any, dist_: Any, autocast: Any, head: Any = None) -> dict[str, Any]:
    """Validation loss terms (mean over examples) and label-mode accuracy; the same on every rank."""
    import torch

    from distill.training.data import batch_tokens, collate_padded
    from distill.training.losses import compute_loss

    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = wrapped.training
    wrapped.eval()
    sums = [0.0] * 6  # total, label, rationale, mi (weighted by examples), examples, tokens
    mine = _shard(len(examples), dist_.rank, dist_.world)
    with torch.no_grad():
        for start in range(0, len(mine), options.val_batch_size):
            chunk = mine[start: start + options.val_batch_size]
            batch = {k: v.to(dist_.device) for k, v in
                     collate_padded([examples[i] for i, _ in chunk], pad_id).items()}
            with autocast:
                terms = compute_loss(wrapped, batch, cfg.loss, infonce_head=head)
            weight = sum(w for _, w in chunk)
            for k, value in enumerate(terms.as_floats().values()):
                sums[k] += value * weight
            sums[4] += weight
            sums[5] += batch_tokens(batch) * weight / len(chunk)
        correct, answered = _accuracy(model, texts, tokenizer, options, dist_, autocast,
                                      synced=dist_.enabled and cfg.distributed == "fsdp")
    totals = dist_.all_sum(sums + [correct, answered])
    if was_training:
        wrapped.train()
    count = max(totals[4], 1.0)
    return {"loss": totals[0] / count, "loss_label": totals[1] / count, "loss_rationale": totals[2] / count,
            "loss_mi": totals[3] / count, "tokens": int(totals[5]),
            "accuracy": totals[6] / totals[7] if totals[7] else 0.0, "answered": int(totals[7]),
            "seconds": time.perf_counter() - t0}


def accuracy_questions(texts: list[Any], limit: int) -> list[Any]:
    """One text per validation question, the first `limit` in sha256(id) order."""
    first: dict[str, Any] = {}
    for text in texts:
        first.setdefault(text.question_id, text)
    ordered = sorted(first.values(), key=lambda t: hashlib.sha256(t.question_id.encode()).hexdigest())
    return ordered[:limit]


def _accuracy(model: Any, texts: list[Any], tokenizer: Any, options: Any, dist_: Any, autocast: Any,
              synced: bool) -> tuple[float, float]:
    """(correct, answered) of this rank's share of the accuracy questions."""
    from distill.answers import answers_match
    from distill.student_format import parse_label_output

    questions = accuracy_questions(texts, options.val_accuracy_limit)
    mine = _shard(len(questions), dist_.rank, dist_.world)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    correct = answered = 0.0
    try:
        for start in range(0, len(mine), options.val_batch_size):
            chunk = mine[start: start + options.val_batch_size]
            prompts = [questions[i].label_prompt for i, _ in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True).to(dist_.device)
            with autocast:
                out = model.generate(**enc, max_new_tokens=options.val_max_new_tokens, do_sample=False,
                                     pad_token_id=pad_id, use_cache=True, synced_gpus=synced)
            completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for (i, weight), completion in zip(chunk, completions):
                hit = answers_match(parse_label_output(completion), questions[i].gold)
                correct += weight * float(hit)
                answered += weight
    finally:
        tokenizer.padding_side = side
    return correct, answered
