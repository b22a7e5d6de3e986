"""Training objective of the student: DSS + MI (docs/method.md, section 5), for a decoder-only causal LM.

    from distill.training.losses import compute_loss
    loss = compute_loss(model, batch, cfg.train.loss)   # BatchLoss: terms {name: tensor}, weights, total
    loss.total.backward()

Shapes: B examples, T positions, V vocabulary. `labels[b, t]` is the token at position t when it is
a target and -100 on prompt and padding; every loss here reads the logits at the *target positions*
only, the t with `labels[b, t + 1] != -100` (`targets.target_mask`, which also gives the examples
of a packed batch).

Each task's log-softmax [B, T, V] is computed once (`to_log_probs`) and shared by its cross-entropy
and the MI term, so the MI term adds no B x T x V tensor to what cross-entropy holds anyway.

A batch (built by `distill.training.data`) holds two tasks per example, each a causal-LM sequence:
the label task (prompt + bare final answer) and the rationale task (prompt + strategy-tagged
solution): `label_input_ids`, `label_attention_mask`, `label_labels` [B, Tl] and the same three
`rationale_*` [B, Tr]. The `sft` loss reads only the rationale tensors.

docs/equations.md maps each equation of the papers to the function here that computes it.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from distill.training.infonce import InfoNCEHead, infonce_loss
from distill.training.targets import (
    IGNORE_INDEX,
    Examples,
    batch_examples,
    has_targets,
    row_examples,
    shifted_labels,
    target_mask,
)

if TYPE_CHECKING:
    from distill.config import LossConfig



TERMS = ("label", "rationale", "mi", "divergence")
"""The loss terms by name, in the order they are summed; the metrics log each as `loss_<name>`.
"mi" is L_MI (`dss_mi`) or InfoNCE (`dss_infonce`); "divergence" the token-level term against a
teacher's stored scores (`TokenTerm`)."""


@dataclass(frozen=True)
class TokenTerm:
    """The token-level term of a training that reads a teacher's scores (`token_level`,
    docs/method.md "Token-level divergences"): `weight` x the divergence `kind` over the scored
    rationale tokens (distill.training.divergences)."""

    kind: str
    """One of `divergences.DIVERGENCES`."""
    weight: float
    beta: float = 0.5
    """The generalized JSD's beta (`jsd` only)."""
    supervised: bool = True
    """False (on-policy distillation): the divergence is the whole loss. The rows are the student's
    own unfiltered samples, so a cross-entropy on them would teach its mistakes."""


def loss_weights(loss_cfg: LossConfig, token: TokenTerm | None = None) -> dict[str, float]:
    """The weight of each term `loss_cfg.kind` sums (the terms it leaves out count 0).

    sft: L_rationale. dss: alpha * L_label + (1 - alpha) * L_rationale (`dss_loss`). dss_mi and
    dss_infonce: dss + beta * the MI term. With `token`: + its weight * the divergence, or the
    divergence alone when it is not `supervised`.
    """
    kind = loss_cfg.kind
    if kind not in ("sft", "dss", "dss_mi", "dss_infonce"):
        raise ValueError(f"unknown loss kind {kind!r}")
    if token is not None and not token.supervised:
        return {"divergence": token.weight}
    if kind == "sft":
        weights = {"rationale": 1.0}
    else:
        weights = {"label": loss_cfg.alpha, "rationale": 1.0 - loss_cfg.alpha}
    if kind in ("dss_mi", "dss_infonce"):
        weights["mi"] = loss_cfg.beta
    if token is not None:
        weights["divergence"] = token.weight
    return weights


@dataclass
class BatchLoss:
    """The loss of one batch: each term by name, the weight of each term summed, and their sum."""

    terms: dict[str, torch.Tensor]
    """A scalar tensor for every name of `TERMS`; zero where the loss kind computes no such term."""
    weights: dict[str, float]
    """{name: weight} of the terms summed into `total` (`loss_weights`)."""
    mi_floor: float | None = None
    """`dss_mi`: the lowest value L_MI could reach for this batch (`mi_floor`), logged beside it."""
    total: torch.Tensor = field(init=False)
    """sum of weights[name] * terms[name], in the order of `weights`."""

    def __post_init__(self):
        parts = [weight * self.terms[name] for name, weight in self.weights.items()]
        self.total = functools.reduce(operator.add, parts)

    def as_floats(self) -> dict[str, float]:
        """Detached values for logging: {"total": ..., "label": ..., "rationale": ..., "mi": ...}."""
        return {"total": float(self.total.detach())} | {name: float(self.terms[name].detach()) for name in TERMS}


@dataclass(frozen=True)
class StepNorm:
    """What turns one micro-batch's loss terms into its share of the optimizer step's terms, so that
    the shares of the step's micro-batches (over every process) add up to the step's terms whatever
    the micro-batch size (`loop.optimizer_step`).

    The token cross-entropies are divided by the target positions of the whole step: every target
    token of the step weighs the same, and a label weight (`data.weigh_labels_per_question`) keeps
    its value instead of being renormalised by the micro-batch it falls in. The per-example terms
    (MI, InfoNCE) are means over each micro-batch's examples, divided by the step's micro-batches
    (equal-sized, so their sum is the step's mean when every example has targets and rows are not
    packed).
    """

    label_tokens: float
    """Label-task target positions in the step (every micro-batch of every process)."""
    rationale_tokens: float
    """Rationale-task target positions in the step."""
    micro_batches: int
    """Micro-batches in the step, every process's: `grad_accum * nproc`."""
    scored_tokens: float = 0.0
    """Rationale target positions with the teacher's scores in the step: the divergence is a mean
    over them, so a scored token weighs the same whichever micro-batch holds it."""


def step_norm(batches: list[dict[str, torch.Tensor]], micro_batches: int,
              all_sum: Any = None) -> StepNorm:
    """The `StepNorm` of a step from this process's micro-batches; `all_sum` (a list of floats ->
    their sums over processes, `student.Dist.all_sum`) adds the other processes' positions."""
    counts = [float(sum(int(target_mask(b[f"{task}_labels"]).sum()) for b in batches if f"{task}_labels" in b))
              for task in ("label", "rationale")]
    counts.append(float(sum(int(b["rationale_teacher_mask"].sum()) for b in batches if "rationale_teacher_mask" in b)))
    if all_sum is not None:
        counts = all_sum(counts)
    return StepNorm(counts[0], counts[1], micro_batches, counts[2])


def to_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] -> log-softmax over the vocabulary [B, T, V] (half precision upcast to float32)."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def token_nll(log_probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
              denominator: float | None = None) -> torch.Tensor:
    """Token-level cross-entropy from log-probabilities [B, T, V]: the mean over all target tokens.

    `weights` [B, T] (optional): each position's weight (`data.collate_*` gives `label_weights`, see
    `data.weigh_labels_per_question`). Without `denominator` the result is the weighted mean over
    this batch's target positions, sum w * nll / sum w. With it, sum w * nll / denominator: the
    training loop passes the number of target positions of the whole optimizer step (`StepNorm`),
    so that the micro-batches' values add up to the step's mean and no micro-batch renormalises
    the weights it happens to hold. A batch without target tokens gives 0 (still attached to the
    graph), not NaN. Written with gather (what F.nll_loss computes) so that its gradient is a fresh
    B x T x V tensor, not a view, into which autograd can add the MI term's sparse gradient in place.
    """
    targets = shifted_labels(labels)
    is_target = (targets != IGNORE_INDEX).to(log_probs.dtype)
    if weights is not None:
        # the logits at t predict the token at t + 1: weigh them with that token's example
        is_target = is_target * F.pad(weights[:, 1:], (0, 1)).to(log_probs.dtype)
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # [B, T]
    total = is_target.sum() if denominator is None else torch.as_tensor(denominator, dtype=log_probs.dtype, device=log_probs.device)
    return -(picked * is_target).sum() / total.clamp(min=torch.finfo(log_probs.dtype).tiny)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy, the mean over all target tokens: logits [B, T, V], labels [B, T] -> scalar.

    F.cross_entropy is log_softmax followed by the negative log-likelihood; the two halves are
    separate here (`to_log_probs`, `token_nll`) so that `compute_loss` can hand the same log-softmax
    to the MI term.
    """
    return token_nll(to_log_probs(logits), labels)


def pooled_softmax_max(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 64,
                       examples: Examples | None = None) -> torch.Tensor:
    """Per example, the softmax over the vocabulary at each target position, max-pooled over them.

    logits [B, T, V], labels [B, T] -> [B, V] (float32; float64 for float64 logits):
    out[b, v] = max over the target positions t of example b of softmax(logits[b, t])[v]; prompt and
    padding never enter. An example without target positions gives a zero vector (`mi_loss` leaves
    it out of its mean). With `examples` (a packed batch, `batch_examples`) the output is [E, V],
    one row per example, pooled over that example's target positions only. Holds one log-softmax [B, T, V], as cross-entropy does (`compute_loss`
    shares that one); the pooling itself allocates no B x T x V tensor
    (`pooled_max_from_log_probs`, which also describes the gradient). With `examples` (a packed
    batch, `batch_examples`) the output is [E, V], each example pooled over its own targets.
    """
    return pooled_max_from_log_probs(to_log_probs(logits), labels, chunk_size, examples=examples)


def pooled_max_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor, chunk_size: int = 64,
                              sparse_grad: bool = False, examples: Examples | None = None) -> torch.Tensor:
    """`pooled_softmax_max` from the log-softmax [B, T, V] (probabilities are exp(log_probs)).

    Since exp is monotonic, the maximum is taken over the log-probabilities themselves, read in
    place; the backward pass looks for the argmax positions `chunk_size` positions at a time (a
    chunk_size x V boolean temporary). No B x T x V tensor is created. The gradient
    is the one of max-pooling: d out[b, v] / d log_probs[b, t, v] = out[b, v] at the argmax position
    t of (b, v) (the first one on ties, as torch.max), 0 elsewhere; the log-softmax backward carries
    it on to the logits. It has at most B x V non-zeros: with `sparse_grad` it is returned as a
    sparse tensor, which autograd adds in place into the dense gradient that the cross-entropy
    sharing `log_probs` sends (no B x T x V buffer). Use it only with such a partner: the
    log-softmax backward itself accepts dense gradients only.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ids, count = examples if examples is not None else (row_examples(labels), labels.size(0))
    return _PooledMaxProb.apply(log_probs, target_mask(labels), ids, count, chunk_size, sparse_grad)


def mi_loss(label_logits: torch.Tensor, label_labels: torch.Tensor, rationale_logits: torch.Tensor,
            rationale_labels: torch.Tensor, chunk_size: int = 64,
            examples: tuple[Examples, Examples] | None = None) -> torch.Tensor:
    """The parameter-free MI term of the MI reference code: L_MI = -sum_v p[v] * log_softmax(q)[v].

    p = pooled_softmax_max over the label task (detached: no gradient reaches the label logits),
    q = pooled_softmax_max over the rationale task, fed to log_softmax as logits (no temperature).
    Averaged over the examples that have target positions in both tasks; 0 when none has.
    label_logits [B, Tl, V], label_labels [B, Tl], rationale_logits [B, Tr, V],
    rationale_labels [B, Tr] -> scalar. `examples`: each task's `batch_examples` for a packed batch
    (the pooling is then per packed example, the mean over examples).
    """
    with torch.no_grad():
        label_log_probs = to_log_probs(label_logits)
    return mi_from_log_probs(label_log_probs, label_labels, to_log_probs(rationale_logits), rationale_labels,
                             chunk_size, examples=examples)


def mi_from_log_probs(label_log_probs: torch.Tensor, label_labels: torch.Tensor,
                      rationale_log_probs: torch.Tensor, rationale_labels: torch.Tensor,
                      chunk_size: int = 64, sparse_grad: bool = False,
                      examples: tuple[Examples, Examples] | None = None) -> torch.Tensor:
    """`mi_loss` from each task's log-softmax [B, T, V].

    `sparse_grad=True` when `rationale_log_probs` also feeds the rationale cross-entropy (as in
    `compute_loss`): see `pooled_max_from_log_probs`.
    """
    label_examples, rationale_examples = examples if examples is not None else (None, None)
    with torch.no_grad():
        p = pooled_max_from_log_probs(label_log_probs.detach(), label_labels, chunk_size, examples=label_examples)
    q = pooled_max_from_log_probs(rationale_log_probs, rationale_labels, chunk_size, sparse_grad,
                                  examples=rationale_examples)
    per_example = -(p * F.log_softmax(q, dim=-1)).sum(dim=-1)
    keep = has_targets(label_labels, label_examples) & has_targets(rationale_labels, rationale_examples)
    return (per_example * keep).sum() / keep.sum().clamp(min=1)


def mi_floor(label_log_probs: torch.Tensor, label_labels: torch.Tensor, rationale_labels: torch.Tensor,
             chunk_size: int = 64, examples: tuple[Examples, Examples] | None = None) -> float:
    """The lowest value the MI term can take for this batch, whatever the rationale side does.

    Per example L_MI(q) = S * logsumexp(q) - p . q with S = sum(p), and q is itself a pooled
    probability vector, so every q_v lies in [0, 1]: softmax(q) stays within a factor e of uniform
    and cannot approach p / S (the entropy bound, far below anything reachable). L_MI is convex in q;
    on the box its minimiser satisfies q_v = clip(log(p_v * Z / S), 0, 1) with Z = sum_v exp(q_v)
    (the KKT conditions), and Z is the fixed point of Z -> sum_v clip(p_v * Z / S, 1, e), reached
    from Z = V in a few steps. L_MI minus this floor is what training can still remove: at most
    p . q <= S, about a tenth of the term with a vocabulary of 49k (log V = 10.8).
    """
    label_examples, rationale_examples = examples if examples is not None else (None, None)
    with torch.no_grad():
        p = pooled_max_from_log_probs(label_log_probs.detach(), label_labels, chunk_size,
                                      examples=label_examples).double()
        per_example = box_floor(p)
        keep = has_targets(label_labels, label_examples) & has_targets(rationale_labels, rationale_examples)
        return float((per_example * keep).sum() / keep.sum().clamp(min=1))


def box_floor(p: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """[E, V] pooled label probabilities -> [E]: min over q in [0, 1]^V of -sum_v p[v] log_softmax(q)[v]."""
    mass = p.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
    z = torch.full_like(mass, float(p.size(-1)))
    for _ in range(steps):  # monotone from below, and a contraction: converges in a handful of steps
        z_next = (p * z / mass).clamp(1.0, math.e).sum(dim=-1, keepdim=True)
        converged = torch.allclose(z_next, z, rtol=1e-13, atol=0.0)
        z = z_next
        if converged:
            break
    q = torch.log((p * z / mass).clamp(1.0, math.e))
    return -(p * F.log_softmax(q, dim=-1)).sum(dim=-1)


def dss_loss(label_loss: torch.Tensor, rationale_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """Distilling step-by-step: L = alpha * L_label + (1 - alpha) * L_rationale (two `token_ce` values)."""
    return alpha * label_loss + (1.0 - alpha) * rationale_loss


def compute_loss(model: Any, batch: dict[str, torch.Tensor], loss_cfg: LossConfig,
                 infonce_head: InfoNCEHead | None = None,
                 negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
                 norm: StepNorm | None = None, token: TokenTerm | None = None) -> BatchLoss:
    """Run the causal LM `model` on both tasks of `batch`; the terms of `loss_cfg.kind`, weighed by
    `loss_weights`. Without `norm` each term is this batch's own mean; with it, this micro-batch's
    share of its optimizer step's term (`StepNorm`).

    label, rationale: `token_nll` of each task. mi: `mi_loss` (dss_mi), or `infonce_loss` over the
    last hidden states (dss_infonce), with `infonce_head` (required) and `negatives`, the step's
    other examples (`infonce.step_negatives`). A packed batch (`data.collate_packed`) pools both MI
    terms per example. Two forward passes (one per task): the tasks differ in length, and separate
    passes pad each task to its own longest sequence only; sft runs the rationale task only.
    divergence (with `token`): `token_divergence` on the rationale task's scored positions; with an
    unsupervised `token` (on-policy) it is the only term, and the label task is not run.
    """
    kind = loss_cfg.kind
    weights = loss_weights(loss_cfg, token)
    if kind == "dss_infonce" and infonce_head is None:
        raise ValueError("loss kind dss_infonce needs an InfoNCEHead (infonce_head=...)")
    rationale_lp, rationale_hidden = _task_log_probs(model, batch, "rationale", kind == "dss_infonce")
    tokens = {"label": None, "rationale": None} if norm is None else \
        {"label": norm.label_tokens, "rationale": norm.rationale_tokens}
    per_example_share = 1.0 if norm is None else 1.0 / norm.micro_batches
    rationale = token_nll(rationale_lp, batch["rationale_labels"], denominator=tokens["rationale"])
    zero = torch.zeros((), device=rationale.device)
    terms = {"label": zero, "rationale": rationale, "mi": zero, "divergence": zero}
    if token is not None:
        terms["divergence"] = token_divergence(rationale_lp, batch, token, None if norm is None else norm.scored_tokens)
    if kind == "sft" or "label" not in weights:
        return BatchLoss(terms, weights)

    label_lp, label_hidden = _task_log_probs(model, batch, "label", kind == "dss_infonce")
    terms["label"] = token_nll(label_lp, batch["label_labels"], batch.get("label_weights"), tokens["label"])
    # packed rows hold several examples: the MI terms pool per example, not per row
    examples = (batch_examples(batch, "label"), batch_examples(batch, "rationale"))
    examples = None if examples[0] is None else examples
    floor = None
    if kind == "dss_mi":
        # rationale_lp also feeds `rationale` above, so the MI gradient can travel sparse. Built
        # after it, the MI term runs first in the backward pass (autograd runs the nodes created
        # last first), so the dense cross-entropy gradient arrives second and autograd adds the
        # sparse one into it in place (the other order would copy B x T x V; correct either way).
        terms["mi"] = mi_from_log_probs(label_lp, batch["label_labels"], rationale_lp, batch["rationale_labels"],
                                        loss_cfg.chunk_size, sparse_grad=True, examples=examples)
        floor = mi_floor(label_lp, batch["label_labels"], batch["rationale_labels"], loss_cfg.chunk_size, examples)
    elif kind == "dss_infonce":
        terms["mi"] = infonce_loss(infonce_head, label_hidden, target_mask(batch["label_labels"]),
                                   rationale_hidden, target_mask(batch["rationale_labels"]),
                                   loss_cfg.infonce_temperature, examples=examples, negatives=negatives)
    terms["mi"] = terms["mi"] * per_example_share
    return BatchLoss(terms, weights, mi_floor=floor)


def token_divergence(rationale_log_probs: torch.Tensor, batch: dict[str, torch.Tensor], token: TokenTerm,
                     denominator: float | None = None) -> torch.Tensor:
    """The divergence `token.kind` between the student's rationale log-softmax [B, T, V] and the
    teacher's scores the batch carries (`data._teacher_tensors`, aligned with the logits): the sum
    over the scored positions divided by `denominator` (the step's scored positions, `StepNorm`),
    or their mean without it. 0 (attached to the graph) for a batch without scores."""
    from distill.training.divergences import TeacherTopK, divergence_values

    if "rationale_teacher_mask" not in batch:
        return rationale_log_probs.sum() * 0.0
    mask = batch["rationale_teacher_mask"] & target_mask(batch["rationale_labels"])
    teacher = TeacherTopK(batch["rationale_teacher_ids"], batch["rationale_teacher_logprobs"],
                          shifted_labels(batch["rationale_labels"]).clamp(min=0), batch["rationale_teacher_sampled"])
    per_token = divergence_values(token.kind, rationale_log_probs, teacher, mask, beta=token.beta)
    total = mask.sum() if denominator is None else torch.as_tensor(denominator, device=per_token.device)
    return per_token.sum() / total.clamp(min=1)


def _task_log_probs(model: Any, batch: dict[str, torch.Tensor], task: str,
                    hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward one task -> (log-softmax [B, T, V], last hidden states [B, T, H] or None).

    The model output is dropped here: the backward pass needs the log-softmax, not the logits, so
    the logits are freed as soon as their log-softmax exists.
    """
    out = model(input_ids=batch[f"{task}_input_ids"], attention_mask=batch[f"{task}_attention_mask"],
                use_cache=False, output_hidden_states=hidden)
    return to_log_probs(out.logits), (out.hidden_states[-1] if hidden else None)


def _target_runs(mask: torch.Tensor, examples: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """[B, T] target mask, [B, T] example ids -> [(row, start, stop, example)]: the runs of
    consecutive target positions of one example (one run per example in the usual prompt, answer,
    padding layout), read in place as log_probs[row, start:stop], in row-major order."""
    runs = []
    for b, (row, ids) in enumerate(zip(mask.cpu(), examples.cpu(), strict=True)):
        positions = row.nonzero().flatten().tolist()
        owner = ids.tolist()
        for (_, e), run in groupby(enumerate(positions), key=lambda item: (item[1] - item[0], owner[item[1]])):
            run = [t for _, t in run]
            runs.append((b, run[0], run[-1] + 1, e))
    return runs


def _first_per_column(row: torch.Tensor, column: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Of row-major (row, column) hits, keep each column's first (lowest-row) hit, order unchanged."""
    order = torch.arange(row.numel(), device=row.device)
    first = torch.full((vocab,), row.numel(), device=row.device).scatter_reduce_(0, column, order, "amin")
    keep = first[column] == order
    return row[keep], column[keep]


class _PooledMaxProb(torch.autograd.Function):
    """Max-pooling of exp(log_probs) over target positions (see `pooled_max_from_log_probs`).

    Forward keeps the running maximum of the log-probabilities [B, V] and the index of the run of
    positions it came from [B, V] (amax over a view of a run allocates only [V]). Backward finds,
    `chunk_size` positions at a time, the argmax position of each column inside its run by equality
    with the saved maximum (exact: the maximum is one of the elements) and puts out[b, v] * grad
    there: at most B x V entries, returned as a sparse tensor when `sparse_grad`. The loops issue
    few, large tensor operations: on a CPU each one is a thread synchronisation.
    """

    @staticmethod
    def forward(ctx, log_probs, mask, examples, count, chunk_size, sparse_grad):
        runs = _target_runs(mask, examples)
        shape = (count, log_probs.size(-1))
        best = torch.full(shape, -torch.inf, dtype=log_probs.dtype, device=log_probs.device)
        best_run = torch.full(shape, -1, dtype=torch.long, device=log_probs.device)
        for i, (b, start, stop, e) in enumerate(runs):
            run_best = log_probs[b, start:stop].amax(dim=0)
            best_run[e].masked_fill_(run_best > best[e], i)  # strict: ties keep the earliest run
            torch.maximum(best[e], run_best, out=best[e])
        pooled = best.exp().masked_fill_(best_run.amax(dim=1, keepdim=True) < 0, 0.0)  # no targets: zeros
        ctx.runs, ctx.chunk_size, ctx.sparse_grad = runs, chunk_size, sparse_grad
        ctx.save_for_backward(log_probs, best, best_run, pooled)
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled):
        log_probs, best, best_run, pooled = ctx.saved_tensors
        owned = torch.bincount(best_run.flatten() + 1, minlength=len(ctx.runs) + 1)[1:].tolist()
        rows, owners, positions, columns = [], [], [], []
        for i, (b, start, stop, e) in enumerate(ctx.runs):
            # NaN equals nothing: only the columns whose maximum lies in this run can hit.
            target = torch.where(best_run[e] == i, best[e], torch.nan)
            hits = [(log_probs[b, t:min(t + ctx.chunk_size, stop)] == target).nonzero()
                    + torch.tensor([t, 0], device=target.device) for t in range(start, stop, ctx.chunk_size)]
            position, column = torch.cat(hits).unbind(1)  # (t, v) in row-major order
            if position.numel() > owned[i]:  # exact ties: keep each column's first position
                position, column = _first_per_column(position, column, log_probs.size(-1))
            rows.append(torch.full_like(position, b))
            owners.append(torch.full_like(position, e))
            positions.append(position)
            columns.append(column)
        none = (None,) * 5  # no gradient for mask, examples, count, chunk_size, sparse_grad
        if not rows:
            return torch.zeros_like(log_probs), *none
        row, owner, position, column = torch.cat(rows), torch.cat(owners), torch.cat(positions), torch.cat(columns)
        values = (grad_pooled * pooled)[owner, column]  # d exp(x) / dx = exp(x)
        if ctx.sparse_grad:  # each (b, t, v) once, in sorted order: coalesced as they stand
            return torch.sparse_coo_tensor(torch.stack([row, position, column]), values, log_probs.shape,
                                           is_coalesced=True, check_invariants=False), *none
        grad_log_probs = torch.zeros_like(log_probs)
        grad_log_probs[row, position, column] = values
        return grad_log_probs, *none
