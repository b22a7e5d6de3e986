"""Validation on the held-out questions: the training loss terms, and answer accuracy.

    val = evaluate(wrapped, model, val_examples, val_texts, tokenizer, cfg, options, dist_, autocast)
    val["loss"], val["accuracy"], val["accuracy_mode"], val["answered"]

Accuracy is greedy generation over the first `options.val_accuracy_limit` validation questions in a
fixed order (sha256 of the id), in the mode `train.select_on` names: `rationale` (the default, SIKeD's
protocol: the strategy-tagged solution, `train.val_max_tokens` new tokens, read by its own tag and
verified as evaluation does, PoT programs in the sandbox) or `label` (DSS's: the bare answer,
`options.label_max_tokens` new tokens, `auto` derived from the validation labels as evaluation
derives its budget from its set, read and compared within `options.rel_tol` as evaluation reads it).

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
    from distill.training.losses import TERMS, compute_loss

    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = wrapped.training
    wrapped.eval()
    # each loss value weighted by its examples; the padding repeats of a shard weigh 0
    sums = dict.fromkeys(["total", *TERMS, "examples", "tokens"], 0.0)
    mine = _shard(len(examples), dist_.rank, dist_.world)
    with torch.no_grad():
        for start in range(0, len(mine), options.val_batch_size):
            chunk = mine[start: start + options.val_batch_size]
            batch = {k: v.to(dist_.device) for k, v in
                     collate_padded([examples[i] for i, _ in chunk], pad_id).items()}
            with autocast:
                loss = compute_loss(wrapped, batch, cfg.loss, infonce_head=head, token=options.token())
            weight = sum(w for _, w in chunk)
            for name, value in loss.as_floats().items():
                sums[name] += value * weight
            sums["examples"] += weight
            sums["tokens"] += batch_tokens(batch) * weight / len(chunk)
        correct, answered = _accuracy(model, texts, tokenizer, options, dist_, autocast,
                                      synced=dist_.enabled and cfg.distributed == "fsdp", mode=cfg.select_on,
                                      max_new_tokens=cfg.val_max_tokens if cfg.select_on == "rationale"
                                      else label_validation_budget(texts, tokenizer, options)[0])
    sums |= {"correct": correct, "answered": answered}
    totals = dict(zip(sums, dist_.all_sum(list(sums.values())), strict=True))
    if was_training:
        wrapped.train()
    count = max(totals["examples"], 1.0)
    return {"loss": totals["total"] / count, **{f"loss_{name}": totals[name] / count for name in TERMS},
            "tokens": int(totals["tokens"]),
            "accuracy": totals["correct"] / totals["answered"] if totals["answered"] else 0.0,
            "answered": int(totals["answered"]), "accuracy_mode": cfg.select_on,
            "seconds": time.perf_counter() - t0}


def accuracy_questions(texts: list[Any], limit: int) -> list[Any]:
    """One text per validation question, the first `limit` in sha256(id) order."""
    first: dict[str, Any] = {}
    for text in texts:
        first.setdefault(text.question_id, text)
    ordered = sorted(first.values(), key=lambda t: hashlib.sha256(t.question_id.encode()).hexdigest())
    return ordered[:limit]


def label_validation_budget(texts: list[Any], tokenizer: Any, options: Any) -> tuple[int, str | None]:
    """New tokens per label-mode answer of the accuracy questions (`options.label_max_tokens`, `auto`
    resolved from their label targets in the student's tokens, as evaluation resolves it from its
    set), and a warning when a set budget cannot hold some of those targets."""
    from distill.label_budget import label_budget, shortfall_warning, token_counter

    count = token_counter(tokenizer)
    lengths = [count(q.label_target) for q in accuracy_questions(texts, options.val_accuracy_limit)]
    return (label_budget(options.label_max_tokens, lengths),
            shortfall_warning(options.label_max_tokens, lengths, "the validation questions"))


def _judge(mode: str, questions: list[Any], completions: list[str], finished: list[str],
           rel_tol: float = 1e-6) -> list[bool]:
    """Whether each completion answers its question: the label read as evaluation reads it (its value
    within `rel_tol` of the gold; a choice's exact text, as DSS scores a multiple-choice label), or the rationale read by its own strategy tag as evaluation reads
    it (PoT programs run in the sandbox)."""
    from distill.answers import answers_match
    from distill.choices import label_choice_answer, listed_choices
    from distill.student_format import parse_label_output, parse_student_output
    from distill.verify import verify_samples

    # multiple choice (the question lists its choices): the gold and the answer are choice indices
    choices = {q.question_id: listed for q in questions if (listed := listed_choices(q.question))}
    if mode == "label":
        return [answers_match(parse_label_output(c) if q.question_id not in choices else
                              label_choice_answer(c, choices[q.question_id]), q.gold, rel_tol)
                for q, c in zip(questions, completions, strict=True)]
    samples = [{"question_id": q.question_id, "strategy": parse_student_output(c)[0] or "none", "text": c,
                "finish_reason": f, "gold": q.gold} for q, c, f in zip(questions, completions, finished, strict=True)]
    return [row["verdict"] == "correct" for row in verify_samples(samples, workers=1, choices=choices)]


def _accuracy(model: Any, texts: list[Any], tokenizer: Any, options: Any, dist_: Any, autocast: Any,
              synced: bool, mode: str, max_new_tokens: int) -> tuple[float, float]:
    """(correct, answered) of this rank's share of the accuracy questions, in `mode`, answers of at
    most `max_new_tokens` new tokens."""
    questions = accuracy_questions(texts, options.val_accuracy_limit)
    mine = _shard(len(questions), dist_.rank, dist_.world)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    correct = answered = 0.0
    try:
        for start in range(0, len(mine), options.val_batch_size):
            chunk = mine[start: start + options.val_batch_size]
            asked = [questions[i] for i, _ in chunk]
            prompts = [q.label_prompt if mode == "label" else q.rationale_prompt for q in asked]
            enc = tokenizer(prompts, return_tensors="pt", padding=True).to(dist_.device)
            with autocast:
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_id, use_cache=True, synced_gpus=synced)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            completions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            # An answer that filled the budget without the end-of-sequence token was cut off.
            ended = [(row == tokenizer.eos_token_id).any().item() for row in new_tokens]
            finished = ["stop" if e else "length" for e in ended]
            for (_, weight), hit in zip(chunk, _judge(mode, asked, completions, finished, options.rel_tol)):
                correct += weight * float(hit)
                answered += weight
    finally:
        tokenizer.padding_side = side
    return correct, answered
