"""Learned variational MI estimator (the `dss_infonce` loss): InfoNCE across the batch.

    head = InfoNCEHead(model.config.hidden_size, dim=cfg.train.loss.infonce_dim)
    terms = compute_loss(model, batch, cfg.train.loss, infonce_head=head)

Each example gives two representations: the last hidden states of its label task and of its
rationale task, mean-pooled over each task's target positions (per example in a packed row). Small
projection heads map them to unit vectors z_l, z_r [N, dim]; the positive pairs are the two tasks
of the same example (the diagonal of z_l @ z_r.T), the other examples are the negatives. For N
examples I(label; rationale) >= log N - L_InfoNCE (van den Oord et al. 2018), so minimising the
loss raises a lower bound on the mutual information of the two tasks' representations, a bound
capped at log N.

N is the whole optimizer step, not one micro-batch: with gradient accumulation or several
processes the training loop first embeds every example of the step without gradients
(`step_negatives`, one extra forward pass of the step), and each micro-batch scores its own
examples against all of them. The loss value is then the full step's InfoNCE; the gradient reaches
each example through its own micro-batch's terms (the other micro-batches' embeddings are
constants), as open_clip's local loss does across GPUs.

The heads are trained with the student (give their parameters to the optimizer) and dropped after
training: they are not part of the saved student.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.training.targets import batch_examples, examples_with_positions, target_mask


class InfoNCEHead(nn.Module):
    """Two projection heads, hidden_size -> dim (Linear, GELU, Linear), one per task."""

    def __init__(self, hidden_size: int, dim: int = 128):
        super().__init__()
        self.label_proj = _projection(hidden_size, dim)
        self.rationale_proj = _projection(hidden_size, dim)

    def forward(self, label_pooled: torch.Tensor, rationale_pooled: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, hidden] pooled states of each task -> unit vectors z_l, z_r [N, dim] (head's dtype)."""
        dtype = self.label_proj[0].weight.dtype
        z_label = F.normalize(self.label_proj(label_pooled.to(dtype)), dim=-1)
        z_rationale = F.normalize(self.rationale_proj(rationale_pooled.to(dtype)), dim=-1)
        return z_label, z_rationale


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor, examples: tuple[torch.Tensor, int] | None = None
                ) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] bool -> [B, H] mean over the masked positions (0 if none).

    With `examples` (a packed batch: [B, T] example ids, -1 on padding, and their count E, see
    `targets.batch_examples`) -> [E, H], each example's mean over its own masked positions.
    Half-precision states are averaged in float32.
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if examples is None:
        weights = mask.to(dtype)
        summed = torch.einsum("bth,bt->bh", hidden.to(dtype), weights)
        return summed / weights.sum(dim=1, keepdim=True).clamp(min=1)
    ids, count = examples
    picked = mask & (ids >= 0)
    summed = hidden.new_zeros((count, hidden.size(-1)), dtype=dtype).index_add(0, ids[picked], hidden[picked].to(dtype))
    counts = torch.zeros(count, dtype=dtype, device=hidden.device).index_add(
        0, ids[picked], torch.ones(int(picked.sum()), dtype=dtype, device=hidden.device))
    return summed / counts[:, None].clamp(min=1)


def embed_pairs(head: InfoNCEHead, label_hidden: torch.Tensor, label_mask: torch.Tensor,
                rationale_hidden: torch.Tensor, rationale_mask: torch.Tensor,
                examples: tuple[Any, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_l, z_r) [N, dim] of the examples with targets in both tasks (the rest left out).

    `examples`: (label, rationale) `targets.batch_examples` of a packed batch, or None.
    """
    label_ex, rationale_ex = examples if examples is not None else (None, None)
    keep = examples_with_positions(label_mask, label_ex) & examples_with_positions(rationale_mask, rationale_ex)
    return head(masked_mean(label_hidden, label_mask, label_ex)[keep],
                masked_mean(rationale_hidden, rationale_mask, rationale_ex)[keep])


def infonce_loss(head: InfoNCEHead, label_hidden: torch.Tensor, label_mask: torch.Tensor,
                 rationale_hidden: torch.Tensor, rationale_mask: torch.Tensor,
                 temperature: float, examples: tuple[Any, Any] | None = None,
                 negatives: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between the two tasks' pooled representations -> scalar.

    label_hidden [B, Tl, H], label_mask [B, Tl] (target positions, `targets.target_mask`), and the same
    for the rationale task. Examples without targets in either task are left out; with N examples
    left, L = (CE(S, diag) + CE(S.T, diag)) / 2 with S = z_l @ z_r.T / temperature [N, N].
    `negatives` (z_l, z_r) [M, dim] of the step's other examples (`step_negatives`, no gradient)
    widen S to [N, N + M] on each side: each example's label is scored against every rationale of
    the step, and each rationale against every label.
    N = 1 without negatives gives 0; N = 0 gives 0 attached to the heads (so every parameter still
    gets a gradient).
    """
    z_label, z_rationale = embed_pairs(head, label_hidden, label_mask, rationale_hidden, rationale_mask, examples)
    if z_label.size(0) == 0:
        return (z_label.sum() + z_rationale.sum()) * 0.0
    other_label, other_rationale = (negatives if negatives is not None
                                    else (z_label[:0].detach(), z_rationale[:0].detach()))
    positives = torch.arange(z_label.size(0), device=z_label.device)
    by_label = z_label @ torch.cat([z_rationale, other_rationale.to(z_rationale.dtype)]).T / temperature
    by_rationale = z_rationale @ torch.cat([z_label, other_label.to(z_label.dtype)]).T / temperature
    return 0.5 * (F.cross_entropy(by_label, positives) + F.cross_entropy(by_rationale, positives))


def step_negatives(model: Any, head: InfoNCEHead, batches: list[dict[str, torch.Tensor]], dist_: Any
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of this process's micro-batches of one optimizer step, the (z_l, z_r) of every other
    example of the step, on this and every other process: its InfoNCE negatives.

    One forward pass of both tasks per micro-batch, without gradients; the embeddings of all
    processes are gathered (`dist_.enabled`).
    """
    own = []
    with torch.no_grad():
        for batch in batches:
            hidden = {}
            for task in ("label", "rationale"):
                out = model(input_ids=batch[f"{task}_input_ids"], attention_mask=batch[f"{task}_attention_mask"],
                            use_cache=False, output_hidden_states=True)
                hidden[task] = out.hidden_states[-1]
            examples = (batch_examples(batch, "label"), batch_examples(batch, "rationale"))
            own.append(embed_pairs(head, hidden["label"], target_mask(batch["label_labels"]), hidden["rationale"],
                                   target_mask(batch["rationale_labels"]), None if examples[0] is None else examples))
    everyone = _gather_rows([torch.cat(z) for z in zip(*own, strict=True)], dist_) if own else []
    sizes = [z_label.size(0) for z_label, _ in own]
    start = sum(_gather_sizes(sum(sizes), dist_)[: dist_.rank])  # this process's rows in `everyone`
    negatives = []
    for a, size in enumerate(sizes):
        lo = start + sum(sizes[:a])
        negatives.append(tuple(torch.cat([z[:lo], z[lo + size:]]) for z in everyone))
    return negatives


def _gather_sizes(size: int, dist_: Any) -> list[int]:
    if not dist_.enabled:
        return [size]
    import torch.distributed as dist

    sizes = [None] * dist_.world
    dist.all_gather_object(sizes, size)
    return sizes


def _gather_rows(tensors: list[torch.Tensor], dist_: Any) -> list[torch.Tensor]:
    """Concatenate each tensor's rows over processes, in rank order (rows may differ per rank)."""
    if not dist_.enabled:
        return tensors
    import torch.distributed as dist

    sizes = _gather_sizes(tensors[0].size(0), dist_)
    width = max(sizes)
    out = []
    for tensor in tensors:
        padded = torch.cat([tensor, tensor.new_zeros((width - tensor.size(0), *tensor.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(dist_.world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]))
    return out


def _projection(hidden_size: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size, dim), nn.GELU(), nn.Linear(dim, dim))
