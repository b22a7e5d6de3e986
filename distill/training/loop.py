"""The student training loop (docs/method.md, sections 4 to 6): one explicit loop, each loss term visible.

    result = train_student(cfg.train, rows, model_path, output_dir, checkpoint_dir)
    print(result.output_dir)          # the best validation step, LoRA merged, as a plain model folder

`rows` are TRAIN_EXAMPLES rows (question_id, question, gold, strategy, text, ...). The loop takes
the folders it is handed and knows nothing of a run's layout:

- `checkpoint_dir`: `step-<N>/` checkpoints every `train.checkpoint_every` steps (see
  `checkpoint.py`), `best/` (the weights of the best validation step), `metrics.jsonl` (one row
  per train step and per validation, the TRAIN_METRICS columns), `data_report.json`, `tensorboard/`;
- `output_dir`: the final student, written under a temporary name and renamed into place.

One optimizer step: `train.batch_size` examples (packed rows when `train.packing`), split over
`nproc` processes and `grad_accum` micro-batches each; AdamW (weight decay on matrices only, not on
biases and norms), a warm-up + linear/cosine schedule, gradient clipping; bf16 autocast on CUDA,
float32 on CPU. The data order of epoch e is a permutation drawn from `seed + e`, so the position in
the data is a function of the step alone and a resumed run continues the same trajectory.

The best checkpoint is chosen on the held-out validation questions (answer accuracy in the mode
`train.select_on` names, rationale by default; ties broken by the supervised validation loss,
`fit_loss`), never on a test set. With
`val_fraction: 0` there is no validation and the last step is the student.

Distributed: started by `torchrun` (RANK / WORLD_SIZE in the environment), DDP or FSDP2
(`fully_shard`) over NCCL on GPUs, gloo on CPUs; see `student.py` and `launch.py`. Logged losses are
the mean over processes; with DDP each process averages over its own target tokens.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill import timings
from distill.answers import answers_match, numbers
from distill.training import checkpoint as ckpt
from distill.training.data import (
    DataStats,
    batch_tokens,
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
    init_distributed,
    load_optimizer,
    load_student,
    load_trainable,
    optimizer_state,
    param_groups,
    trainable_named,
    trainable_state,
    wrap_distributed,
)

if TYPE_CHECKING:
    from distill.config import TrainConfig

@dataclass
class LoopOptions:
    """Settings of the loop that are not part of the method (so not in the run config)."""

    resume: bool = True
    """Continue from the newest complete checkpoint in `checkpoint_dir` when there is one."""
    keep_checkpoints: int = 2
    """Step checkpoints kept on disk (the newest ones); `best/` is kept apart."""
    val_accuracy_limit: int = 200
    """Validation questions answered greedily for the accuracy (the first ones by id hash order)."""
    val_max_new_tokens: int = 16
    val_batch_size: int = 16
    log_every: int = 10
    """A progress line on stderr every this many steps."""
    stop_after_step: int | None = None
    """Stop (without exporting) after this step, as if the process were killed: for tests."""


@dataclass
class TrainResult:
    output_dir: str | None
    best_step: int | None
    best_val: dict[str, float] | None
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    data_report: dict[str, Any] = field(default_factory=dict)


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


# --------------------------------------------------------------------------- the loop


def train_student(cfg: TrainConfig, rows: Any, model_path: str, output_dir: str | Path,
                  checkpoint_dir: str | Path, options: LoopOptions | None = None,
                  on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a student on `rows` (TRAIN_EXAMPLES) from `model_path`; see the module docstring."""
    import torch
    from transformers import AutoTokenizer

    from distill.training.losses import compute_loss
    from distill.training.validation import evaluate

    options = options or LoopOptions()
    dist_ = init_distributed(cfg.distributed)
    is_main = dist_.rank == 0
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    fsdp = dist_.enabled and cfg.distributed == "fsdp"

    # Data: texts -> validation split by question id -> tokens -> units (examples or packs).
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
    plan = BatchPlan(len(units), cfg.batch_size, dist_.world, cfg.grad_accum, cfg.seed)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * plan.steps_per_epoch)
    report = data_report(len(_as_list(rows)), dropped_rows, train_stats, val_stats, train_texts, val_texts,
                         units, plan, total_steps, cfg)
    if is_main:
        (checkpoint_dir / "data_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        _say(f"data: {json.dumps(report)}")

    def collate(unit_ids: list[int]) -> dict[str, Any]:
        if cfg.packing:
            batch = collate_packed([[train_ex[i] for i in units[u]] for u in unit_ids], pad_id)
        else:
            batch = collate_padded([train_ex[units[u][0]] for u in unit_ids], pad_id)
        return {k: v.to(dist_.device) for k, v in batch.items()}

    # Model, optional InfoNCE heads, optimizer, schedule.
    model = load_student(model_path, cfg, dist_.device)
    head = None
    if cfg.loss.kind == "dss_infonce":
        from distill.training.infonce import InfoNCEHead, step_negatives

        head = InfoNCEHead(model.config.hidden_size, cfg.loss.infonce_dim).to(dist_.device)
    named = _named_trainables(model, head)
    start_step, best = 0, None
    found = ckpt.latest_checkpoint(checkpoint_dir) if options.resume else None
    if found is not None:
        state = ckpt.load_state(found)
        if state["data_fingerprint"] != report["fingerprint"]:
            raise ValueError(f"{found}: written for other training data or settings "
                             f"({state['data_fingerprint']} != {report['fingerprint']}); "
                             "use another checkpoint folder or resume=false")
        start_step, best = state["step"], state.get("best")
        if not fsdp:
            load_trainable(model, ckpt.load_file(found, "trainable.pt"), fsdp=False)
    wrapped = wrap_distributed(model, cfg.distributed, dist_)
    if fsdp:  # FSDP2 turned the parameters into sharded ones: collect them again
        named = _named_trainables(model, head)
        if found is not None:
            load_trainable(model, ckpt.load_file(found, "trainable.pt"), fsdp=True)
    optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, cfg.schedule, cfg.warmup_steps, total_steps))
    if found is not None:
        load_optimizer(model, optimizer, ckpt.load_file(found, "optimizer.pt"), fsdp)
        scheduler.load_state_dict(ckpt.load_file(found, "scheduler.pt"))
        if head is not None:
            head.load_state_dict(ckpt.load_file(found, "head.pt"))
        ckpt.restore_rng(found, dist_.rank)
        if is_main:
            _say(f"resuming from {found} (step {start_step})")
    metrics = _MetricsLog(checkpoint_dir / "metrics.jsonl", is_main, keep_until=start_step,
                          tensorboard=checkpoint_dir / "tensorboard" if cfg.tensorboard else None,
                          on_metrics=on_metrics)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if str(dist_.device).startswith("cuda")
                else contextlib.nullcontext())
    params = [p for _, p in named]
    eval_every = cfg.eval_every or plan.steps_per_epoch
    wrapped.train()
    done = start_step
    loop_started = time.time()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        # total, label, rationale, mi, tokens, and (dss_mi) the lowest value the MI term could reach
        sums = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        batches = [collate(unit_ids) for unit_ids in plan.micro_batches(step, dist_.rank)]
        negatives = [None] * len(batches)
        if head is not None and dist_.world * cfg.grad_accum > 1:  # InfoNCE over the whole step
            with autocast:
                negatives = step_negatives(wrapped, head, batches, dist_)
        for a, batch in enumerate(batches):
            last = a == len(batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()
            with sync:
                with autocast:
                    terms = compute_loss(wrapped, batch, cfg.loss, infonce_head=head, negatives=negatives[a])
                (terms.total / cfg.grad_accum).backward()
            for i, value in enumerate(terms.as_floats().values()):
                sums[i] += value / cfg.grad_accum
            sums[5] += (terms.mi_floor or 0.0) / cfg.grad_accum
            sums[4] += batch_tokens(batch)
        if head is not None and dist_.enabled:  # the heads live outside DDP: average their gradients
            _average_grads(list(head.parameters()), dist_)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        totals = dist_.all_sum(sums)
        losses = [v / dist_.world for v in totals[:4]]
        row = _row(step + 1, (step + 1) / plan.steps_per_epoch, "train", losses, lr=lr,
                   grad_norm=float(grad_norm), tokens=int(totals[4]), seconds=time.perf_counter() - t0)
        metrics.add(row)
        if is_main and ((step + 1) % options.log_every == 0 or step + 1 in (1, total_steps)):
            floor = f" floor {totals[5] / dist_.world:.4f}" if cfg.loss.kind == "dss_mi" else ""
            _say(f"step {step + 1}/{total_steps} loss {row['loss']:.4f} (label {row['loss_label']:.4f} "
                 f"rationale {row['loss_rationale']:.4f} mi {row['loss_mi']:.4f}{floor}) lr {lr:.2e} "
                 f"grad_norm {row['grad_norm']:.3f} tokens {row['tokens']} {row['seconds']:.2f}s")

        done = step + 1
        if val_ex and (done % eval_every == 0 or done == total_steps):
            val = evaluate(wrapped, model, val_ex, val_texts, tokenizer, cfg, options, dist_, autocast, head)
            metrics.add(_row(done, done / plan.steps_per_epoch, "val",
                             [val["loss"], val["loss_label"], val["loss_rationale"], val["loss_mi"]],
                             tokens=val["tokens"], seconds=val["seconds"], val_accuracy=val["accuracy"]))
            if is_main:
                _say(f"validation at step {done}: loss {val['loss']:.4f} {val['accuracy_mode']} accuracy "
                     f"{val['accuracy']:.3f} ({val['answered']} questions)")
            fit = fit_loss(val, cfg.loss.alpha)
            if _better(val["accuracy"], fit, best):
                best = {"step": done, "accuracy": val["accuracy"], "metric": f"{val['accuracy_mode']} accuracy",
                        "val_questions": val["answered"], "loss": val["loss"], "fit_loss": fit}
                state = trainable_state(model, fsdp)
                ckpt.save_checkpoint(checkpoint_dir / "best", {"trainable.pt": state},
                                     {"step": done, "best": best}, rank=dist_.rank, barrier=dist_.barrier)
        if done % cfg.checkpoint_every == 0 or done == total_steps:
            files = {"trainable.pt": trainable_state(model, fsdp),
                     "optimizer.pt": optimizer_state(model, optimizer, fsdp),
                     "scheduler.pt": scheduler.state_dict()}
            if head is not None:
                files["head.pt"] = head.state_dict()
            state = {"step": done, "total_steps": total_steps, **plan.position(done), "best": best,
                     "data_fingerprint": report["fingerprint"]}
            ckpt.save_checkpoint(ckpt.step_dir(checkpoint_dir, done), files, state, rank=dist_.rank,
                                 barrier=dist_.barrier)
            if is_main:
                ckpt.prune_checkpoints(checkpoint_dir, options.keep_checkpoints)
        if options.stop_after_step is not None and done >= options.stop_after_step:
            metrics.close()
            return TrainResult(None, None, best, done, metrics.rows, report)

    timings.record("train_loop", loop_started, time.time(), steps=done - start_step, rank=dist_.rank)
    metrics.close()
    source = checkpoint_dir / "best" if best is not None else ckpt.latest_checkpoint(checkpoint_dir)
    if best is not None and ckpt.load_state(source)["step"] != best["step"]:
        raise RuntimeError(f"{source} holds step {ckpt.load_state(source)['step']}, not the best step "
                           f"{best['step']} recorded in the checkpoint: remove {checkpoint_dir} and retrain")
    out = None
    if is_main:
        from distill.training.lora import export_student

        out = str(export_student(model_path, cfg.lora, ckpt.load_file(source, "trainable.pt"), tokenizer,
                                 output_dir, summary={"best": best, "steps": done, "source": str(source),
                                                      "data": report}))
        _say(f"student written to {out} (from {source.name})")
    dist_.barrier()
    return TrainResult(out, best["step"] if best else None, best, done, metrics.rows, report)


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


def _say(message: str) -> None:
    print(f"[siked train] {message}", file=sys.stderr, flush=True)


def fit_loss(val: dict[str, float], alpha: float) -> float:
    """The supervised part of a validation loss: alpha * label + (1 - alpha) * rationale.

    The MI (or InfoNCE) term ties the two tasks together but says nothing about how well either
    target is predicted, and on small validation sets its noise outweighs the fit's changes."""
    return alpha * val["loss_label"] + (1.0 - alpha) * val["loss_rationale"]


def _better(accuracy: float, fit: float, best: dict[str, Any] | None) -> bool:
    """Higher validation accuracy wins; equal accuracy, lower supervised validation loss."""
    if best is None:
        return True
    if accuracy != best["accuracy"]:
        return accuracy > best["accuracy"]
    return fit < best.get("fit_loss", best["loss"])


def _average_grads(params: list[Any], dist_: Dist) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist_.world


def _row(step: int, epoch: float, split: str, losses: Sequence[float], *, lr: float | None = None,
         grad_norm: float | None = None, tokens: int = 0, seconds: float = 0.0,
         val_accuracy: float | None = None) -> dict[str, Any]:
    total, label, rationale, mi = (float(v) for v in losses)
    return {"step": step, "epoch": float(epoch), "split": split, "loss": total, "loss_label": label,
            "loss_rationale": rationale, "loss_mi": mi, "lr": lr, "grad_norm": grad_norm,
            "tokens": int(tokens), "seconds": float(seconds), "val_accuracy": val_accuracy}


class _MetricsLog:
    """Metric rows: kept in memory, appended to metrics.jsonl (rank 0), optionally to TensorBoard.

    On resume the file keeps the rows up to the resumed step; the rows after it are redone.
    """

    def __init__(self, path: Path, is_main: bool, keep_until: int, tensorboard: Path | None,
                 on_metrics: Callable[[dict[str, Any]], None] | None):
        self.path, self.is_main, self.on_metrics = path, is_main, on_metrics
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if not is_main:
            return
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [json.loads(line) for line in lines if line.strip()]
            self.rows = [r for r in kept if r["step"] <= keep_until]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard))

    def add(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key in ("loss", "loss_label", "loss_rationale", "loss_mi", "lr", "grad_norm", "val_accuracy"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"{row['split']}/{key}", row[key], row["step"])
        if self.on_metrics is not None:
            self.on_metrics(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
