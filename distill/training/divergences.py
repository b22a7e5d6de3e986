"""Token-level divergences between the student and a teacher known only through stored top-k log-probabilities.

    from distill.training.divergences import TeacherTopK, divergence_term
    teacher = TeacherTopK(topk_ids, topk_log_probs, sampled_ids, sampled_log_probs)
    term = divergence_term("jsd", to_log_probs(logits), teacher, mask, beta=0.5)   # scalar
    term.backward()

Shapes: B sequences, T positions, V vocabulary, k stored teacher tokens per position. Every tensor
is aligned with `student_log_probs` [B, T, V]: row (b, t) of the teacher's tensors describes the
same next token as the student's distribution at (b, t) (the caller shifts, as
`targets.shifted_labels` does), and `mask` [B, T] marks the completion positions. Whatever the
teacher's tensors hold at any other position (padding ids, NaN, -inf) reaches neither a value nor a
gradient; the student's log-probabilities must be finite everywhere (a log-softmax of finite logits is).

The teacher (`TeacherTopK`): `topk_ids` [B, T, k], k distinct token ids; `topk_log_probs` [B, T, k],
their natural-log probabilities under the teacher's full softmax (so they sum to <= 1 in
probability); `sampled_ids` [B, T], the token the sequence holds; `sampled_log_probs` [B, T], the
teacher's log-probability of that token.

Top-k and a lumped tail. With k < V each divergence is computed over k + 1 outcomes: the k stored
tokens, and "any other token" (the tail), whose probability is r_T = 1 - sum_k p_T for the teacher
and r_S = 1 - sum over the same k ids of p_S for the student. Merging outcomes never increases an
f-divergence (data-processing inequality; for the KL, the log-sum inequality), so each lumped value
is a lower bound on the full-vocabulary one. For the forward KL the gap is exactly
r_T * KL(p_T(. | tail) || p_S(. | tail)) (the chain rule of KL), at most `forward_kl_tail_bound`.
With k = V there is no tail, and every divergence is the full one.

Each divergence returns the per-token mean over the masked positions (0, still attached to the
graph, when there are none), so it adds to the supervised and DSS terms of `losses` as one more
token-level term; `reduction="none"` gives the [B, T] values instead (0 off the mask).

Memory: the student's log-softmax [B, T, V] is what cross-entropy already holds; the k stored
columns are gathered ([B, T, k]). The student's tail mass is a logsumexp over its log-probabilities
with the k columns set to -inf: one B x T x V copy, kept for the backward pass, the one extra
B x T x V tensor of these terms. It is not 1 - sum_k p_S: in float32 that sum rounds to 1 once the
student leaves less than about 1e-7 to the tail, and the tail term would lose its value and gradient.

docs/method.md ("Token-level divergences") gives the formulas and their references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "reverse_kl_sampled", "jsd")
"""The kinds `divergence_term` computes by name."""

TAIL_FLOOR = 1e-7
"""The least tail mass r_T the teacher is given. Stored top-k log-probabilities are float32, so
1 - sum_k p_T is known to about 1e-7; where rounding makes it smaller (or negative) it is taken as
this, which keeps the reverse KL and the JSD finite."""

MIN_LOG_PROB = -1e4
"""Teacher log-probabilities below this (-inf included) are taken as this: probability 0 (exp
underflows), with finite differences, so that 0 * log 0 never turns into NaN."""


@dataclass(frozen=True)
class TeacherTopK:
    """What is stored of the teacher at each completion position."""

    topk_ids: torch.Tensor
    """[B, T, k] int64: the teacher's k most likely tokens, distinct."""
    topk_log_probs: torch.Tensor
    """[B, T, k] float: their log-probabilities under the teacher's full softmax."""
    sampled_ids: torch.Tensor | None = None
    """[B, T] int64: the token the sequence holds (needed by `reverse_kl_sampled` only)."""
    sampled_log_probs: torch.Tensor | None = None
    """[B, T] float: the teacher's log-probability of that token."""


def lumped_log_probs(student_log_probs: torch.Tensor, topk_ids: torch.Tensor, topk_log_probs: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's log-probabilities over the k stored tokens and the tail.

    student_log_probs [B, T, V], topk_ids [B, T, k], topk_log_probs [B, T, k], mask [B, T] ->
    (student, teacher), each [B, T, k + 1], the tail last (log r_S, log r_T); [B, T, k] when k = V.
    The teacher's tail is floored at `TAIL_FLOOR`. Off the mask, whatever the teacher's tensors hold
    is replaced by k distinct ids and a uniform teacher, so that it reaches neither value nor gradient.
    """
    vocab, k = student_log_probs.size(-1), topk_ids.size(-1)
    if k > vocab:
        raise ValueError(f"{k} stored teacher tokens for a vocabulary of {vocab}")
    ids, teacher = _stored_tokens(topk_ids, topk_log_probs, mask, student_log_probs.dtype)
    student = student_log_probs.gather(-1, ids)
    if k == vocab:
        return student, teacher
    student_tail = student_log_probs.scatter(-1, ids, -torch.inf).logsumexp(-1, keepdim=True)
    teacher_mass = teacher.double().exp().sum(-1, keepdim=True)  # float64: 1 - mass cancels
    teacher_tail = (1.0 - teacher_mass).clamp(min=TAIL_FLOOR).log().to(teacher.dtype)
    return torch.cat([student, student_tail], dim=-1), torch.cat([teacher, teacher_tail], dim=-1)


def forward_kl(student_log_probs: torch.Tensor, topk_ids: torch.Tensor, topk_log_probs: torch.Tensor,
               mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(p_T || p_S) per token over the k stored tokens and the lumped tail, word-level distillation.

    sum_{i in top-k} p_T,i (log p_T,i - log p_S,i) + r_T (log r_T - log r_S), a lower bound on the
    full-vocabulary KL that falls short of it by r_T * KL(p_T(. | tail) || p_S(. | tail)) <=
    `forward_kl_tail_bound`. Meant for the teacher's own samples (the teacher's expectation).
    Shapes as `lumped_log_probs`; -> scalar per-token mean over `mask` (or [B, T] with "none").
    """
    student, teacher = lumped_log_probs(student_log_probs, topk_ids, topk_log_probs, mask)
    return _reduce(_kl(teacher, student), mask, reduction)


def reverse_kl(student_log_probs: torch.Tensor, topk_ids: torch.Tensor, topk_log_probs: torch.Tensor,
               mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(p_S || p_T) per token over the k stored tokens and the lumped tail, the gradient through p_S.

    sum_{i in top-k} p_S,i (log p_S,i - log p_T,i) + r_S (log r_S - log r_T): the exact expectation
    over the student's own distribution at each position (no sampling), a lower bound on the full
    reverse KL. Unlike the forward KL the gap has no bound from the top-k alone: the teacher may give
    a tail token as little probability as it likes. Shapes as `forward_kl`.
    """
    student, teacher = lumped_log_probs(student_log_probs, topk_ids, topk_log_probs, mask)
    return _reduce(_kl(student, teacher), mask, reduction)


def reverse_kl_sampled(student_log_probs: torch.Tensor, sampled_ids: torch.Tensor,
                       sampled_log_probs: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The one-sample reverse-KL estimator of on-policy distillation, on tokens the student sampled.

    d_t = log p_S(x_t) - log p_T(x_t), x_t = sampled_ids [B, T], log p_T(x_t) = sampled_log_probs
    [B, T]. The value is d_t (the per-token penalty, whose mean estimates KL(p_S || p_T)); the
    gradient is the REINFORCE one, d_t.detach() * grad log p_S(x_t), i.e. the loss
    sum_t stopgrad(d_t) * log p_S(x_t) with -d_t as each token's advantage. When x_t ~ p_S its
    expectation is the gradient of the reverse KL (E[grad log p_S] = 0 drops the path through d_t
    itself), so the tokens must come from the student being trained. Teacher log-probabilities below
    `MIN_LOG_PROB` count as it. Shapes: student_log_probs [B, T, V], mask [B, T] -> scalar
    per-token mean (or [B, T] with "none").
    """
    keep = mask.bool()
    ids = torch.where(keep, sampled_ids, 0)
    student = student_log_probs.gather(-1, ids[..., None]).squeeze(-1)
    teacher = torch.where(keep, sampled_log_probs.to(student.dtype), 0.0).clamp(min=MIN_LOG_PROB)
    estimate = (student - teacher).detach()
    return _reduce(estimate + estimate * (student - student.detach()), mask, reduction)


def generalized_jsd(student_log_probs: torch.Tensor, topk_ids: torch.Tensor, topk_log_probs: torch.Tensor,
                    mask: torch.Tensor, beta: float = 0.5, reduction: str = "mean") -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per token, over the k stored tokens and the lumped tail.

    m = beta p_T + (1 - beta) p_S, JSD_beta = beta KL(p_T || m) + (1 - beta) KL(p_S || m): beta
    weighs the teacher, as TRL's `GKDTrainer.generalized_jsd_loss` does. As there, beta = 0 gives the
    forward KL(p_T || p_S) (`forward_kl`) and beta = 1 the reverse KL(p_S || p_T) (`reverse_kl`): the
    JSD itself vanishes at both ends, and JSD_beta / beta -> KL(p_T || p_S) as beta -> 0,
    JSD_beta / (1 - beta) -> KL(p_S || p_T) as beta -> 1. A lower bound on the full-vocabulary
    JSD_beta (an f-divergence). Shapes as `forward_kl`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_log_probs, topk_ids, topk_log_probs, mask, reduction)
    if beta == 1.0:
        return reverse_kl(student_log_probs, topk_ids, topk_log_probs, mask, reduction)
    student, teacher = lumped_log_probs(student_log_probs, topk_ids, topk_log_probs, mask)
    mixture = torch.logaddexp(teacher + math.log(beta), student + math.log1p(-beta))
    per_token = beta * _kl(teacher, mixture) + (1.0 - beta) * _kl(student, mixture)
    return _reduce(per_token, mask, reduction)


def divergence_term(kind: str, student_log_probs: torch.Tensor, teacher: TeacherTopK, mask: torch.Tensor,
                    beta: float = 0.5) -> torch.Tensor:
    """The divergence `kind` (one of `DIVERGENCES`) -> scalar per-token mean over `mask` [B, T].

    forward_kl, reverse_kl: `forward_kl`, `reverse_kl` on the teacher's top-k; reverse_kl_sampled:
    `reverse_kl_sampled` on `teacher.sampled_*`; jsd: `generalized_jsd` with `beta`.
    """
    return _reduce(divergence_values(kind, student_log_probs, teacher, mask, beta), mask, "mean")


def divergence_values(kind: str, student_log_probs: torch.Tensor, teacher: TeacherTopK, mask: torch.Tensor,
                      beta: float = 0.5) -> torch.Tensor:
    """`divergence_term`'s per-token values [B, T], 0 off `mask`: what a caller sums when it divides
    by a count of its own (the training loop divides by the optimizer step's scored positions)."""
    if kind == "reverse_kl_sampled":
        if teacher.sampled_ids is None or teacher.sampled_log_probs is None:
            raise ValueError("reverse_kl_sampled needs the sampled tokens and their teacher log-probabilities")
        return reverse_kl_sampled(student_log_probs, teacher.sampled_ids, teacher.sampled_log_probs, mask, "none")
    stored = (student_log_probs, teacher.topk_ids, teacher.topk_log_probs, mask)
    if kind == "forward_kl":
        return forward_kl(*stored, reduction="none")
    if kind == "reverse_kl":
        return reverse_kl(*stored, reduction="none")
    if kind == "jsd":
        return generalized_jsd(*stored, beta=beta, reduction="none")
    raise ValueError(f"unknown divergence {kind!r}; expected one of {DIVERGENCES}")


@torch.no_grad()
def forward_kl_tail_bound(student_log_probs: torch.Tensor, topk_ids: torch.Tensor, topk_log_probs: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """The most by which `forward_kl` can fall short of the full-vocabulary KL, per token -> [B, T].

    The gap is r_T * KL(u || w), u = p_T(. | tail) unknown, w = p_S(. | tail) known. No tail token
    is likelier under the teacher than the least likely stored one, p_(k), so u_j <= c = p_(k) / r_T.
    KL(u || w) is convex in u, so over that polytope its maximum lies at a vertex: n = floor(1 / c)
    tokens hold c, one holds 1 - n c, the rest 0; the cross-entropy part is largest with these
    weights on the tokens the student finds least likely, in that order. This returns r_T times that
    maximum: reached by some teacher that agrees with the stored top-k, so no smaller bound holds. A
    looser closed form: r_T * log(c / w_min). A diagnostic, not a loss: it sorts the student's
    distribution at every position (B x T x V temporaries). 0 off the mask and when k = V.
    """
    vocab, k = student_log_probs.size(-1), topk_ids.size(-1)
    keep = mask.bool()
    if k == vocab:
        return torch.zeros(keep.shape, dtype=student_log_probs.dtype, device=student_log_probs.device)
    student, teacher = lumped_log_probs(student_log_probs, topk_ids, topk_log_probs, mask)
    ids, _ = _stored_tokens(topk_ids, topk_log_probs, mask, student_log_probs.dtype)
    # log w, least likely first; the k stored tokens (+inf) sort last, past the V - k tail tokens
    tail = (student_log_probs.scatter(-1, ids, torch.inf) - student[..., -1:]).sort(dim=-1).values
    log_tail_mass = teacher[..., -1]
    c = (teacher[..., :-1].amin(dim=-1) - log_tail_mass).exp()[..., None]
    n = torch.floor(1.0 / c).clamp(max=vocab - k)
    rank = torch.arange(vocab, device=tail.device)
    u = torch.where(rank < n, c, torch.where(rank == n, (1.0 - n * c).clamp(min=0.0), 0.0))
    held = (u > 0) & (rank < vocab - k)
    gap = torch.where(held, u * (u.log() - tail), 0.0).sum(dim=-1)
    return torch.where(keep, log_tail_mass.exp() * gap, 0.0)


def _stored_tokens(topk_ids: torch.Tensor, topk_log_probs: torch.Tensor, mask: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T, k], log-probs [B, T, k] in `dtype`); off the mask ids 0..k-1 and a uniform teacher."""
    k = topk_ids.size(-1)
    keep = mask.bool()[..., None]
    ids = torch.where(keep, topk_ids, torch.arange(k, device=topk_ids.device))
    log_probs = torch.where(keep, topk_log_probs.to(dtype), -math.log(k + 1)).clamp(min=MIN_LOG_PROB)
    return ids, log_probs


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[..., n] log-probabilities of two distributions over the same outcomes -> [...] KL(p || q)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """[B, T] -> its mean over `mask` ("mean") or the [B, T] values with 0 off the mask ("none")."""
    keep = mask.bool()
    per_token = torch.where(keep, per_token, 0.0)
    if reduction == "none":
        return per_token
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'none'")
    return per_token.sum() / keep.sum().clamp(min=1)
