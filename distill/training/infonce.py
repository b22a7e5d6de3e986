"""Learned variational MI estimator (the `dss_infonce` loss): InfoNCE across the batch.

    head = InfoNCEHead(model.config.hidden_size, dim=cfg.train.loss.infonce_dim)
    terms = compute_loss(model, batch, cfg.train.loss, infonce_head=head)

Each example gives two representations: the last hidden states of its label task and of its
rationale task, mean-pooled over each task's target positions. Small projection heads map them to
unit vectors z_l, z_r [N, dim]; the positive pairs are the two tasks of the same example (the
diagonal of z_l @ z_r.T), the other examples of the batch are the negatives. For N examples
I(label; rationale) >= log N - L_InfoNCE (van den Oord et al. 2018), so minimising the loss raises a
lower bound on the mutual information of the two tasks' representations.

The heads are trained with the student (give their parameters to the optimizer) and dropped after
training: they are not part of the saved student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] bool -> [B, H] mean over the masked positions (0 if none).

    Half-precision states are averaged in float32.
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    weights = mask.to(dtype)
    summed = torch.einsum("bth,bt->bh", hidden.to(dtype), weights)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1)


def infonce_loss(head: InfoNCEHead, label_hidden: torch.Tensor, label_mask: torch.Tensor,
                 rationale_hidden: torch.Tensor, rationale_mask: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between the two tasks' pooled representations -> scalar.

    label_hidden [B, Tl, H], label_mask [B, Tl] (target positions, `losses.target_mask`), and the same
    for the rationale task. Examples without targets in either task are left out; with N examples
    left, L = (CE(S, diag) + CE(S.T, diag)) / 2 with S = z_l @ z_r.T / temperature [N, N].
    N = 1 gives 0; N = 0 gives 0 attached to the heads (so every parameter still gets a gradient).
    """
    keep = label_mask.any(dim=1) & rationale_mask.any(dim=1)
    z_label, z_rationale = head(masked_mean(label_hidden, label_mask)[keep],
                                masked_mean(rationale_hidden, rationale_mask)[keep])
    if z_label.size(0) == 0:
        return (z_label.sum() + z_rationale.sum()) * 0.0
    scores = z_label @ z_rationale.T / temperature
    positives = torch.arange(scores.size(0), device=scores.device)
    return 0.5 * (F.cross_entropy(scores, positives) + F.cross_entropy(scores.T, positives))


def _projection(hidden_size: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size, dim), nn.GELU(), nn.Linear(dim, dim))
