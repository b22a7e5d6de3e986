"""What the training loop needs before its first step: the data in the order it is read, and the
student with its optimizer and schedule, restored from a checkpoint when there is one to go on from.

    data = prepare_data(cfg, rows, model_path, world=dist_.world)
    state = build_state(cfg, model_path, dist_, data, resume_from=ckpt.latest_checkpoint(checkpoint_dir))

Data: texts -> validation split by question id -> tokens -> units (examples, or packs of them with
`train.packing`) -> `BatchPlan`, which says which units each process reads at each step. The data
order and the learning-rate schedule (`lr_multiplier`) are functions of the step alone, so a run
restored from a checkpoint's step continues the same trajectory; the checkpoint's data fingerprint
(`data_report`) must match the data at hand.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.answers import answers_match, numbers
from distill.training import checkpoint as ckpt
from distill.training.data import (
    DataStats,
    build_texts,
    collate_packed,
    collate_padded,
    pack_examples,
    split_by_question,
    tokenize_texts,
    weigh_labels_per_question,
)
from distill.training.student import (
    Dist,
    load_optimizer,
    load_student,
    load_trainable,
    param_groups,
    trainable_named,
    wrap_distributed,
)

if TYPE_CHECKING:
    from distill.config import TrainConfig


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The tokenized examples of both splits and the order the training ones are read in."""

    tokenizer: Any
    pad_id: int
    train: list[Any]
    """Training examples (`data.tokenize_texts`)."""
    val: list[Any]
    """Validation examples; empty with `train.val_fraction: 0`."""
    val_texts: list[Any]
    """The validation texts, for the accuracy questions."""
    units: list[list[int]]
    """Indices into `train` read together: one example each, or a pack of them (`train.packing`)."""
    packing: bool
    plan: BatchPlan
    total_steps: int
    report: dict[str, Any]
    """`data_report`: what became of every row, and the fingerprint a checkpoint must match."""

    def collate(self, unit_ids: list[int], device: Any) -> dict[str, Any]:
        """The batch tensors of these units, on `device` (see `data.collate_padded` / `collate_packed`)."""
        if self.packing:
            batch = collate_packed([[self.train[i] for i in self.units[u]] for u in unit_ids], self.pad_id)
        else:
            batch = collate_padded([self.train[self.units[u][0]] for u in unit_ids], self.pad_id)
        return {k: v.to(device) for k, v in batch.items()}


def prepare_data(cfg: TrainConfig, rows: Any, model_path: str, world: int) -> TrainingData:
    """`rows` (TRAIN_EXAMPLES) -> the tokenized splits and their order over `world` processes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, dropped_rows = build_texts(rows, cfg.format)
    train_texts, val_texts = split_by_question(texts, cfg.val_fraction, cfg.seed)
    train_ex, train_stats = tokenize_texts(train_texts, tokenizer, cfg.max_length)
    val_ex, val_stats = tokenize_texts(val_texts, tokenizer, cfg.max_length)
    if cfg.loss.label_weighting == "per_question":
        weigh_labels_per_question(train_ex)
        weigh_labels_per_question(val_ex)
    units = pack_examples(train_ex, cfg.max_length) if cfg.packing else [[i] for i in range(len(train_ex))]
    plan = BatchPlan(len(units), cfg.batch_size, world, cfg.grad_accum, cfg.seed)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * plan.steps_per_epoch)
    report = data_report(len(_as_list(rows)), dropped_rows, train_stats, val_stats, train_texts, val_texts,
                         units, plan, total_steps, cfg)
    return TrainingData(tokenizer, pad_id, train_ex, val_ex, val_texts, units, cfg.packing, plan, total_steps,
                        report)


# --------------------------------------------------------------------------- model and resumption


@dataclass
class TrainState:
    """What the optimizer steps change, and what a step checkpoint holds."""

    model: Any
    """The student (LoRA-wrapped unless full fine-tuning), not wrapped for DDP: what is saved."""
    wrapped: Any
    """The same under DDP or FSDP2: what forward passes go through."""
    head: Any
    """The InfoNCE heads (`dss_infonce`), or None; trained beside the student, never exported."""
    optimizer: Any
    scheduler: Any
    params: list[Any]
    """Every trainable parameter, the heads' included: what the gradient norm is clipped over."""
    fsdp: bool
    step: int = 0
    """Optimizer steps done (the restored checkpoint's step after resuming)."""
    best: dict[str, Any] | None = None
    """The best validation so far (`loop.validate`), as the restored checkpoint recorded it."""


def build_state(cfg: TrainConfig, model_path: str, dist_: Dist, data: TrainingData,
                resume_from: Path | None, schedule_round: tuple[int, int] | None = None) -> TrainState:
    """The student, its InfoNCE heads, AdamW and the schedule; restored from the checkpoint folder
    `resume_from` when given (weights, optimizer, schedule, heads, random state). With
    `schedule_round` (round, rounds) the schedule is `rounds` x this training's steps long and this
    training takes round `round`'s share of it."""
    import torch

    fsdp = dist_.enabled and cfg.distributed == "fsdp"
    model = load_student(model_path, cfg, dist_.device)
    head = None
    if cfg.loss.kind == "dss_infonce":
        from distill.training.infonce import InfoNCEHead

        head = InfoNCEHead(model.config.hidden_size, cfg.loss.infonce_dim).to(dist_.device)
    step, best = 0, None
    if resume_from is not None:
        step, best = _resumable_state(resume_from, data.report["fingerprint"])
        if not fsdp:  # plain parameters: loaded before wrapping (DDP then starts every process from them)
            load_trainable(model, ckpt.load_file(resume_from, "trainable.pt"), fsdp=False)
    wrapped = wrap_distributed(model, cfg.distributed, dist_)
    if fsdp and resume_from is not None:  # FSDP2 turned the parameters into sharded ones: load into those
        load_trainable(model, ckpt.load_file(resume_from, "trainable.pt"), fsdp=True)
    named = _named_trainables(model, head)
    optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.lr)
    round_, rounds = schedule_round or (0, 1)
    offset, length = round_ * data.total_steps, rounds * data.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(offset + s, cfg.schedule, cfg.warmup_steps, length))
    if resume_from is not None:
        load_optimizer(model, optimizer, ckpt.load_file(resume_from, "optimizer.pt"), fsdp)
        scheduler.load_state_dict(ckpt.load_file(resume_from, "scheduler.pt"))
        if head is not None:
            head.load_state_dict(ckpt.load_file(resume_from, "head.pt"))
        ckpt.restore_rng(resume_from, dist_.rank)
    return TrainState(model, wrapped, head, optimizer, scheduler, [p for _, p in named], fsdp, step, best)


def _resumable_state(folder: Path, fingerprint: str) -> tuple[int, dict[str, Any] | None]:
    """(step, best) of the checkpoint `folder`, which must have been written for this data."""
    state = ckpt.load_state(folder)
    if state["data_fingerprint"] != fingerprint:
        raise ValueError(f"{folder}: written for other training data or settings "
                         f"({state['data_fingerprint']} != {fingerprint}); "
                         "use another checkpoint folder or resume=false")
    return state["step"], state.get("best")


# --------------------------------------------------------------------------- data order


@dataclass(frozen=True)
class BatchPlan:
    """Which units (examples or packs) each process uses at each step.

    Epoch e visits the units in the order `randperm(n, seed + e)`, `batch_size` per step; the last
    step of an epoch is filled up with the first units of the same order (so every step has the
    same size and nothing is left out). A step's units are split into `world * grad_accum`
    micro-batches of `micro` units: micro-batch a of rank r is slice (a * world + r).
    """

    units: int
    batch_size: int
    world: int
    grad_accum: int
    seed: int

    def __post_init__(self):
        if self.batch_size % (self.world * self.grad_accum):
            raise ValueError(f"train.batch_size {self.batch_size} must be a multiple of nproc * grad_accum "
                             f"= {self.world} * {self.grad_accum} (it is the global batch of one step)")
        if self.units < 1:
            raise ValueError("no training examples left (see the data report)")

    @property
    def micro(self) -> int:
        return self.batch_size // (self.world * self.grad_accum)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.units / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.units, generator=generator).tolist()

    def position(self, step: int) -> dict[str, int]:
        """Data position of optimizer step `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batch_index": index, "order_seed": self.seed + epoch}

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        pos = self.position(step)
        order = self.order(pos["epoch"])
        start = pos["batch_index"] * self.batch_size
        chosen = (order + order)[start: start + self.batch_size]  # wraps within the epoch's order
        if len(chosen) < self.batch_size:  # fewer units than one batch: repeat them
            chosen = (order * math.ceil(self.batch_size / len(order)))[: self.batch_size]
        return [chosen[(a * self.world + rank) * self.micro: (a * self.world + rank + 1) * self.micro]
                for a in range(self.grad_accum)]


def lr_multiplier(step: int, schedule: str, warmup: int, total: int) -> float:
    """The schedule of transformers' get_{linear,cosine,constant}_schedule_with_warmup."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- helpers


def _named_trainables(model: Any, head: Any) -> list[tuple[str, Any]]:
    """The model's trainable parameters, then the InfoNCE heads' (prefixed `head.`)."""
    extra = [(f"head.{n}", p) for n, p in head.named_parameters()] if head is not None else []
    return trainable_named(model) + extra


def _as_list(rows: Any) -> list[Any]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        return rows.to_dict(orient="records")
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    return list(rows)


def data_report(rows: int, dropped_rows: Any, train_stats: DataStats, val_stats: DataStats,
                train_texts: list[Any], val_texts: list[Any], units: list[list[int]], plan: BatchPlan,
                total_steps: int, cfg: TrainConfig) -> dict[str, Any]:
    """What became of every row, the split sizes, and a fingerprint of the data and its order."""
    import hashlib

    dropped = dict(dropped_rows + train_stats.dropped + val_stats.dropped)
    fingerprint_src = json.dumps({
        "train": [(t.question_id, t.strategy) for t in train_texts], "units": units,
        "batch": cfg.batch_size, "accum": cfg.grad_accum, "world": plan.world, "seed": cfg.seed,
        "max_length": cfg.max_length, "packing": cfg.packing, "steps": total_steps,
        "label_weighting": cfg.loss.label_weighting,
    })
    per_question = Counter(t.question_id for t in train_texts)
    share = (lambda hits: round(hits / len(train_texts), 4) if train_texts else None)
    return {
        "rows": rows, "dropped": dropped, "dropped_total": sum(dropped.values()),
        "train_examples": train_stats.examples, "train_questions": len({t.question_id for t in train_texts}),
        "val_examples": val_stats.examples, "val_questions": len({t.question_id for t in val_texts}),
        "val_fraction": cfg.val_fraction,
        "truncated": {"train": dict(train_stats.truncated), "val": dict(val_stats.truncated)},
        "truncated_tokens": {"train": dict(train_stats.truncated_tokens),
                             "val": dict(val_stats.truncated_tokens)},
        "scores": {"train": dict(train_stats.scores), "val": dict(val_stats.scores)},  # the teacher's (`token_level`)
        "max_length": cfg.max_length, "packing": cfg.packing, "units": len(units),
        "label_weighting": cfg.loss.label_weighting,
        "train_questions_with_several_rows": sum(1 for k in per_question.values() if k > 1),
        "format": cfg.format,
        # With the answer inside the rationale target, cross-entropy pins it there already and the
        # MI term has little left to tie (docs/method.md, section 4).
        "rationale_contains_label": share(sum(t.label_target in t.rationale_target for t in train_texts)),
        "rationale_states_answer": share(sum(any(answers_match(v, t.gold) for v in numbers(t.rationale_target))
                                             for t in train_texts)),
        "steps_per_epoch": plan.steps_per_epoch, "total_steps": total_steps,
        "global_batch": cfg.batch_size, "micro_batch": plan.micro, "processes": plan.world,
        "fingerprint": hashlib.sha256(fingerprint_src.encode()).hexdigest()[:16],
    }
