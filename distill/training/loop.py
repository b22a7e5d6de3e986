"""The student training loop (docs/method.md, sections 4 to 6): one explicit loop, each loss term visible.

    result = train_student(cfg.train, rows, model_path, output_dir, checkpoint_dir)
    print(result.output_dir)          # the best validation step, LoRA merged, as a plain model folder

`rows` are TRAIN_EXAMPLES rows (question_id, question, gold, strategy, text, ...). The loop takes
the folders it is handed and knows nothing of a run's layout:

- `checkpoint_dir`: `step-<N>/` checkpoints every `train.checkpoint_every` steps (see
  `checkpoint.py`), `best/` (the weights of the best validation step), `metrics.jsonl` (one row
  per train step and per validation, the TRAIN_METRICS columns), `data_report.json`, `tensorboard/`;
- `output_dir`: the final student, written under a temporary name and renamed into place.

`train_student` is the loop itself; its parts, in the order a step meets them:

- set-up and resumption (`prepare.py`): the data and its order, the student, its optimizer and
  schedule, restored from the newest checkpoint when there is one;
- `optimizer_step`: `train.batch_size` examples (packed rows when `train.packing`), split over
  `nproc` processes and `grad_accum` micro-batches each; the loss terms by name (`losses.compute_loss`),
  AdamW (weight decay on matrices only, not on biases and norms), a warm-up + linear/cosine
  schedule, gradient clipping; bf16 autocast on CUDA, float32 on CPU;
- `validate`: the validation loss terms and accuracy, and the best step's weights kept in `best/`;
- `save_step_checkpoint`: all a resumed run needs (weights, optimizer, schedule, heads, random state);
- `export_final_student`: the best step's weights merged into the base model.

The data order of epoch e is a permutation drawn from `seed + e`, so the position in the data is a
function of the step alone and a resumed run continues the same trajectory.

The best checkpoint is chosen on the held-out validation questions (answer accuracy in the mode
`train.select_on` names, rationale by default; ties broken by the supervised validation loss,
`fit_loss`), never on a test set. With `val_fraction: 0` there is no validation and the last step
is the student.

Distributed: started by `torchrun` (RANK / WORLD_SIZE in the environment), DDP or FSDP2
(`fully_shard`) over NCCL on GPUs, gloo on CPUs; see `student.py` and `launch.py`. Every micro-batch's
loss is its share of the step's (`losses.StepNorm`: token means over the whole step's target
positions), so the logged losses and the gradient are the step's, however its examples are split
over processes and micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill import timings
from distill.training import checkpoint as ckpt
from distill.training.data import batch_tokens
from distill.training.prepare import TrainingData, TrainState, build_state, prepare_data
from distill.training.student import Dist, init_distributed, optimizer_state, trainable_state

if TYPE_CHECKING:
    from distill.config import TrainConfig


@dataclass
class LoopOptions:
    """Settings of the loop beyond `train.*`: how it runs (not part of the method, so not in the run
    config), and the label-mode scoring validation shares with evaluation (the training step's job
    carries `eval.label_max_tokens` and `verify.rel_tol` with `train.select_on: label`)."""

    resume: bool = True
    """Continue from the newest complete checkpoint in `checkpoint_dir` when there is one."""
    keep_checkpoints: int = 2
    """Step checkpoints kept on disk (the newest ones); `best/` is kept apart."""
    val_accuracy_limit: int = 200
    """Validation questions answered greedily for the accuracy (the first ones by id hash order)."""
    label_max_tokens: int | str = "auto"
    """New tokens per label-mode validation answer (`eval.label_max_tokens`): `auto` resolves from the
    validation questions' label targets in the student's tokens, as evaluation resolves it from its
    set (`distill.label_budget`)."""
    rel_tol: float = 1e-6
    """Relative tolerance of a label-mode validation answer against a non-integer gold (`verify.rel_tol`)."""
    schedule_round: tuple[int, int] | None = None
    """(round, rounds): this training is round `round` of `rounds` sharing one learning-rate schedule
    of `rounds` x its own steps (`train.schedule_across_rounds: continue`); None: its own schedule."""
    token_term: dict[str, Any] | None = None
    """The token-level term (`losses.TokenTerm` as a dict: it travels to the child processes as
    JSON) of a training whose rows carry a teacher's scores (`token_level`); None: no such term."""
    val_batch_size: int = 16
    log_every: int = 10
    """A progress line on stderr every this many steps."""
    stop_after_step: int | None = None
    """Stop (without exporting) after this step, as if the process were killed: for tests."""

    def token(self) -> Any:
        """`token_term` as a `losses.TokenTerm`, or None."""
        from distill.training.losses import TokenTerm

        return TokenTerm(**self.token_term) if self.token_term is not None else None


@dataclass
class TrainResult:
    output_dir: str | None
    best_step: int | None
    best_val: dict[str, float] | None
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    data_report: dict[str, Any] = field(default_factory=dict)
    tokens_trained: int = 0
    """Target tokens of both tasks the optimizer saw, each counted once per step that trained it,
    summed over every step (a resumed run's earlier steps included)."""


# --------------------------------------------------------------------------- the loop


def train_student(cfg: TrainConfig, rows: Any, model_path: str, output_dir: str | Path,
                  checkpoint_dir: str | Path, options: LoopOptions | None = None,
                  on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a student on `rows` (TRAIN_EXAMPLES) from `model_path`; see the module docstring."""
    import torch

    options = options or LoopOptions()
    dist_ = init_distributed(cfg.distributed)
    is_main = dist_.rank == 0
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    data = prepare_data(cfg, rows, model_path, dist_.world)
    if is_main:
        (checkpoint_dir / "data_report.json").write_text(json.dumps(data.report, indent=2), encoding="utf-8")
        _say(f"data: {json.dumps(data.report)}")
    if is_main and data.val and cfg.select_on == "label":
        from distill.training.validation import label_validation_budget

        budget, warning = label_validation_budget(data.val_texts, data.tokenizer, options)
        _say(f"label-mode validation: {budget} new tokens per answer, relative tolerance {options.rel_tol:g}")
        if warning:
            _say(f"warning: {warning}")
    found = ckpt.latest_checkpoint(checkpoint_dir) if options.resume else None
    state = build_state(cfg, model_path, dist_, data, resume_from=found, schedule_round=options.schedule_round)
    if found is not None and is_main:
        _say(f"resuming from {found} (step {state.step})")
    metrics = _MetricsLog(checkpoint_dir / "metrics.jsonl", is_main, keep_until=state.step,
                          tensorboard=checkpoint_dir / "tensorboard" if cfg.tensorboard else None,
                          on_metrics=on_metrics)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if str(dist_.device).startswith("cuda")
                else contextlib.nullcontext())
    eval_every = cfg.eval_every or data.plan.steps_per_epoch
    last_step = data.total_steps

    state.wrapped.train()
    start_step, loop_started = state.step, time.time()
    # The steps before a resumed checkpoint trained tokens too: their count travels in its state.
    trained = ckpt.load_state(found).get("tokens_trained", 0) if found is not None else 0
    for step in range(start_step, last_step):
        t0 = time.perf_counter()
        values = optimizer_step(state, data, step, cfg, dist_, autocast, token=options.token())
        trained += values.target_tokens
        done = state.step
        row = _row(done, done / data.plan.steps_per_epoch, "train", values.total, values.terms, lr=values.lr,
                   grad_norm=values.grad_norm, tokens=values.tokens, seconds=time.perf_counter() - t0)
        metrics.add(row)
        if is_main and (done % options.log_every == 0 or done in (1, last_step)):
            _say(_progress_line(row, values, last_step, cfg.loss.kind))
        if data.val and (done % eval_every == 0 or done == last_step):
            validate(state, data, cfg, options, dist_, autocast, metrics, checkpoint_dir)
        if done % cfg.checkpoint_every == 0 or done == last_step:
            save_step_checkpoint(state, data, checkpoint_dir, dist_, options.keep_checkpoints, trained)
        if options.stop_after_step is not None and done >= options.stop_after_step:
            metrics.close()
            return TrainResult(None, None, state.best, done, metrics.rows, data.report, trained)

    timings.record("train_loop", loop_started, time.time(), steps=state.step - start_step, rank=dist_.rank)
    metrics.close()
    out = export_final_student(cfg, model_path, output_dir, checkpoint_dir, state, data, dist_)
    best = state.best
    return TrainResult(out, best["step"] if best else None, best, state.step, metrics.rows, data.report, trained)


# --------------------------------------------------------------------------- one optimizer step


@dataclass
class StepValues:
    """What one optimizer step reports; the losses are the step's (token means over all its target
    positions, per-example means over all its examples: `losses.StepNorm`)."""

    total: float
    terms: dict[str, float]
    """Each loss term by name (`losses.TERMS`), unweighted."""
    mi_floor: float
    """`dss_mi`: the lowest value the MI term could reach (`losses.mi_floor`); 0 for other kinds."""
    tokens: int
    lr: float
    """The learning rate the step used."""
    grad_norm: float
    """The gradient norm before clipping."""
    target_tokens: int = 0
    """Target positions of both tasks in the step (every process's): the tokens it trained."""


def optimizer_step(state: TrainState, data: TrainingData, step: int, cfg: TrainConfig, dist_: Dist,
                   autocast: Any, token: Any = None) -> StepValues:
    """Optimizer step `step` (0-based): forward and backward over this process's micro-batches of
    the step, gradients summed over them and over processes, clipped; AdamW and the schedule step
    once. Leaves `state.step` at `step + 1`.

    Each micro-batch's loss is its share of the step's loss (`losses.StepNorm`): the token
    cross-entropies are divided by the target positions of the whole step, counted before the
    first backward pass, so the step's gradient does not depend on how its examples are split into
    micro-batches and processes. `token` (`losses.TokenTerm`): the token-level term, a mean over
    the step's scored positions."""
    import torch

    from distill.training.losses import TERMS, compute_loss, step_norm

    batches = [data.collate(unit_ids, dist_.device) for unit_ids in data.plan.micro_batches(step, dist_.rank)]
    norm = step_norm(batches, len(batches) * dist_.world, dist_.all_sum)
    negatives = [None] * len(batches)
    if state.head is not None and dist_.world * cfg.grad_accum > 1:  # InfoNCE over the whole step
        from distill.training.infonce import step_negatives

        with autocast:
            negatives = step_negatives(state.wrapped, state.head, batches, dist_)
    sums = dict.fromkeys(["total", *TERMS, "mi_floor", "tokens"], 0.0)
    for a, batch in enumerate(batches):
        # DDP: synchronise the gradients once, in the backward pass of the last micro-batch
        last = a == len(batches) - 1
        sync = (contextlib.nullcontext() if last or not hasattr(state.wrapped, "no_sync")
                else state.wrapped.no_sync())
        with sync:
            with autocast:
                loss = compute_loss(state.wrapped, batch, cfg.loss, infonce_head=state.head, negatives=negatives[a],
                                    norm=norm, token=token)
            # DDP and FSDP average the gradients over processes; the shares are to be summed
            (loss.total * dist_.world).backward()
        for name, value in loss.as_floats().items():
            sums[name] += value
        sums["mi_floor"] += (loss.mi_floor or 0.0) / norm.micro_batches
        sums["tokens"] += batch_tokens(batch)
    if state.head is not None and dist_.enabled:  # the heads live outside DDP: average their gradients
        _average_grads(list(state.head.parameters()), dist_)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip if cfg.grad_clip else float("inf"))
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step = step + 1

    totals = dict(zip(sums, dist_.all_sum(list(sums.values())), strict=True))  # the shares add up to the step's
    return StepValues(totals["total"], {name: totals[name] for name in TERMS}, totals["mi_floor"],
                      int(totals["tokens"]), lr, float(grad_norm), int(norm.label_tokens + norm.rationale_tokens))


def _progress_line(row: dict[str, Any], values: StepValues, last_step: int, kind: str) -> str:
    terms = " ".join(f"{name} {value:.4f}" for name, value in values.terms.items())
    floor = f" floor {values.mi_floor:.4f}" if kind == "dss_mi" else ""
    return (f"step {row['step']}/{last_step} loss {row['loss']:.4f} ({terms}{floor}) lr {row['lr']:.2e} "
            f"grad_norm {row['grad_norm']:.3f} tokens {row['tokens']} {row['seconds']:.2f}s")


def _average_grads(params: list[Any], dist_: Dist) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist_.world


# --------------------------------------------------------------------------- validation and checkpoints


def validate(state: TrainState, data: TrainingData, cfg: TrainConfig, options: LoopOptions, dist_: Dist,
             autocast: Any, metrics: _MetricsLog, checkpoint_dir: Path) -> None:
    """Validation after `state.step` steps (a metrics row); a better step than `state.best` becomes
    it, and its trainable weights are saved to `checkpoint_dir/best`."""
    from distill.training.losses import TERMS
    from distill.training.validation import evaluate

    done = state.step
    val = evaluate(state.wrapped, state.model, data.val, data.val_texts, data.tokenizer, cfg, options, dist_,
                   autocast, state.head)
    metrics.add(_row(done, done / data.plan.steps_per_epoch, "val", val["loss"],
                     {name: val[f"loss_{name}"] for name in TERMS}, tokens=val["tokens"], seconds=val["seconds"],
                     val_accuracy=val["accuracy"]))
    if dist_.rank == 0:
        _say(f"validation at step {done}: loss {val['loss']:.4f} {val['accuracy_mode']} accuracy "
             f"{val['accuracy']:.3f} ({val['answered']} questions)")
    fit = fit_loss(val, cfg.loss.alpha)
    if _better(val["accuracy"], fit, state.best):
        state.best = {"step": done, "accuracy": val["accuracy"], "metric": f"{val['accuracy_mode']} accuracy",
                      "val_questions": val["answered"], "loss": val["loss"], "fit_loss": fit}
        ckpt.save_checkpoint(checkpoint_dir / "best", {"trainable.pt": trainable_state(state.model, state.fsdp)},
                             {"step": done, "best": state.best}, rank=dist_.rank, barrier=dist_.barrier)


def save_step_checkpoint(state: TrainState, data: TrainingData, checkpoint_dir: Path, dist_: Dist,
                         keep: int, tokens_trained: int = 0) -> None:
    """`step-<N>/`: what `prepare.build_state` restores, the data position it stands at and the
    target tokens trained so far; only the newest `keep` step checkpoints stay."""
    done = state.step
    files = {"trainable.pt": trainable_state(state.model, state.fsdp),
             "optimizer.pt": optimizer_state(state.model, state.optimizer, state.fsdp),
             "scheduler.pt": state.scheduler.state_dict()}
    if state.head is not None:
        files["head.pt"] = state.head.state_dict()
    meta = {"step": done, "total_steps": data.total_steps, **data.plan.position(done), "best": state.best,
            "data_fingerprint": data.report["fingerprint"], "tokens_trained": tokens_trained}
    ckpt.save_checkpoint(ckpt.step_dir(checkpoint_dir, done), files, meta, rank=dist_.rank, barrier=dist_.barrier)
    if dist_.rank == 0:
        ckpt.prune_checkpoints(checkpoint_dir, keep)


def export_final_student(cfg: TrainConfig, model_path: str, output_dir: Path, checkpoint_dir: Path,
                         state: TrainState, data: TrainingData, dist_: Dist) -> str | None:
    """The best validation step's weights (the last step's without validation) merged into the
    model at `model_path`, written to `output_dir` by the main process: that folder (None elsewhere)."""
    best = state.best
    source = checkpoint_dir / "best" if best is not None else ckpt.latest_checkpoint(checkpoint_dir)
    if best is not None and ckpt.load_state(source)["step"] != best["step"]:
        raise RuntimeError(f"{source} holds step {ckpt.load_state(source)['step']}, not the best step "
                           f"{best['step']} recorded in the checkpoint: remove {checkpoint_dir} and retrain")
    out = None
    if dist_.rank == 0:
        from distill.training.lora import export_student

        out = str(export_student(model_path, cfg.lora, ckpt.load_file(source, "trainable.pt"), data.tokenizer,
                                 output_dir, summary={"best": best, "steps": state.step, "source": str(source),
                                                      "data": data.report}))
        _say(f"student written to {out} (from {source.name})")
    dist_.barrier()
    return out


# --------------------------------------------------------------------------- helpers


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


def _row(step: int, epoch: float, split: str, total: float, terms: dict[str, float], *, lr: float | None = None,
         grad_norm: float | None = None, tokens: int = 0, seconds: float = 0.0,
         val_accuracy: float | None = None) -> dict[str, Any]:
    """A TRAIN_METRICS row: the weighted total as `loss`, each term as `loss_<name>`."""
    return {"step": step, "epoch": float(epoch), "split": split, "loss": float(total),
            **{f"loss_{name}": float(value) for name, value in terms.items()}, "lr": lr, "grad_norm": grad_norm,
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
            for key in [k for k in row if k.startswith("loss")] + ["lr", "grad_norm", "val_accuracy"]:
                if row.get(key) is not None:
                    self.writer.add_scalar(f"{row['split']}/{key}", row[key], row["step"])
        if self.on_metrics is not None:
            self.on_metrics(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
