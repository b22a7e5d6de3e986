"""Where a batch's targets are, and which example each position belongs to: what the losses
(`losses.py`) and the InfoNCE heads (`infonce.py`) both read.

    mask = target_mask(batch["rationale_labels"])            # [B, T] bool
    examples = batch_examples(batch, "rationale")            # None (padded) or ([B, T] ids, E)

Shapes: B rows, T positions. `labels[b, t]` is the token at position t when it is a target and
-100 on prompt and padding. Logits at position t predict the token at t + 1, so the *target
positions* of a sequence are the t with `labels[b, t + 1] != -100` (`target_mask`); the last
position is never one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, T] targets aligned with the logits: targets[:, t] = labels[:, t + 1].

    Shifting the labels (padding the end with -100) instead of slicing the logits keeps the logits
    contiguous, so no B x T x V copy is made.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, T] bool, True at the positions whose logits predict a target token."""
    return shifted_labels(labels) != IGNORE_INDEX


Examples = tuple[torch.Tensor, int]
"""Which example each position belongs to: ([B, T] long, -1 on padding; the number of examples E).
A padded batch has one example per row (`None` stands for that); a packed row holds several."""


def batch_examples(batch: dict[str, torch.Tensor], task: str) -> Examples | None:
    """The examples of `task`'s positions in `batch`: None for a padded batch (example = row); for a
    packed one (`<task>_segment_ids`, see `data.collate_packed`) the k-th example of row r is
    number (examples in the rows before r) + k. Both tasks of a packed batch hold the same examples
    in the same order, so the numbers agree across tasks."""
    segments = batch.get(f"{task}_segment_ids")
    if segments is None:
        return None
    per_row = segments.amax(dim=1) + 1  # [B]
    offsets = torch.cumsum(per_row, 0) - per_row
    return torch.where(segments >= 0, segments + offsets[:, None], -1), int(per_row.sum())


def examples_with_positions(mask: torch.Tensor, examples: Examples | None) -> torch.Tensor:
    """[E] bool: the examples with at least one True position in `mask` [B, T] (rows of a padded
    batch; the examples of a packed one)."""
    if examples is None:
        return mask.any(dim=1)
    ids, count = examples
    picked = ids[mask & (ids >= 0)]
    return torch.zeros(count, dtype=torch.long, device=mask.device).index_add_(0, picked, torch.ones_like(picked)) > 0


def row_examples(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] example ids of a padded batch: row b is example b."""
    return torch.arange(labels.size(0), device=labels.device)[:, None].expand_as(labels)


def has_targets(labels: torch.Tensor, examples: Examples | None) -> torch.Tensor:
    """[E] bool: the examples with at least one target position."""
    return examples_with_positions(target_mask(labels), examples)
