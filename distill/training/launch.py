"""Run the training loop in child processes: one spawned child, or `torchrun` with N processes.

    result = launch_training(cfg.train, rows, model_path, output_dir, checkpoint_dir)
    python -m distill.training.launch JOB_FOLDER      # what each torchrun process runs

The parent writes a job folder (`<checkpoint_dir>/job/`: `job.json` with the train config, the
model and the folders, and `rows.jsonl` with the training rows), starts the children and waits:

- `train.nproc == 1`: one spawned child (`distill.engines.child.run_in_child`, as generation runs),
  so the parent's CUDA or thread state never leaks in and the model's memory is returned when it
  exits; with warm start it is a process that imported torch and transformers while the previous
  step worked;
- `train.nproc == N > 1`: `python -m torch.distributed.run --standalone --nproc_per_node N -m
  distill.training.launch JOB_FOLDER`, DDP or FSDP by `train.distributed`, NCCL on GPUs and gloo on
  CPUs (how the two-process test runs).

Rank 0 writes `result.json` into the job folder; the metric rows come from `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.training.loop import LoopOptions, TrainResult

if TYPE_CHECKING:
    from distill.config import TrainConfig


class TrainingFailed(RuntimeError):
    """A training child process exited with an error (its traceback went to stderr)."""


def _json_rows(rows: Any) -> list[dict[str, Any]]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict(orient="records")
    elif hasattr(rows, "to_pylist"):
        rows = rows.to_pylist()
    out = []
    for row in rows:
        clean = {}
        for key, value in dict(row).items():
            if hasattr(value, "item"):  # numpy scalars
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            clean[key] = value
        out.append(clean)
    return out


def write_job(train: TrainConfig, rows: Any, model_path: str, output_dir: str | Path,
              checkpoint_dir: str | Path, options: LoopOptions) -> Path:
    """The job folder a child reads: job.json + rows.jsonl. Returns the folder."""
    job = Path(checkpoint_dir) / "job"
    job.mkdir(parents=True, exist_ok=True)
    with open(job / "rows.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, default=str) + "\n" for row in _json_rows(rows))
    spec = {"train": train.model_dump(mode="json"), "model_path": str(model_path),
            "output_dir": str(output_dir), "checkpoint_dir": str(checkpoint_dir), "options": asdict(options)}
    (job / "job.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    result = job / "result.json"
    if result.exists():
        result.unlink()
    return job


def run_job(job: str | Path) -> TrainResult:
    """What a child does: read the job folder, train, and (rank 0) write result.json."""
    from distill.config import TrainConfig
    from distill.training.loop import train_student

    job = Path(job)
    spec = json.loads((job / "job.json").read_text(encoding="utf-8"))
    lines = (job / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line]
    result = train_student(TrainConfig.model_validate(spec["train"]), rows, spec["model_path"],
                           spec["output_dir"], spec["checkpoint_dir"], LoopOptions(**spec["options"]))
    if int(os.environ.get("RANK", "0")) == 0:
        summary = asdict(result)
        summary.pop("metrics")
        (job / "result.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return result


def launch_training(train: TrainConfig, rows: Any, model_path: str, output_dir: str | Path,
                    checkpoint_dir: str | Path, options: LoopOptions | None = None) -> TrainResult:
    """Train in child processes (see the module docstring); the result with its metric rows.

    Raises TrainingFailed when a child exits with an error.
    """
    options = options or LoopOptions()
    if train.nproc > 1 and train.distributed == "none":
        raise ValueError(f"train.nproc is {train.nproc} but train.distributed is 'none': choose ddp or fsdp")
    job = write_job(train, rows, model_path, output_dir, checkpoint_dir, options)
    if train.nproc == 1:
        from distill.engines.child import ChildProcessDied, run_in_child

        try:
            run_in_child(run_job, str(job))
        except ChildProcessDied as exc:
            raise TrainingFailed(f"the training process died ({exc}); job folder {job}") from exc
        return read_result(job, Path(checkpoint_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(train.nproc), "-m", "distill.training.launch", str(job)]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise TrainingFailed(f"training exited with code {code} (see the messages above); "
                             f"job folder {job}")
    return read_result(job, Path(checkpoint_dir))


def read_result(job: Path, checkpoint_dir: Path) -> TrainResult:
    path = job / "result.json"
    if not path.is_file():
        raise TrainingFailed(f"{path} missing: the training child ended without a result")
    summary = json.loads(path.read_text(encoding="utf-8"))
    metrics_file = checkpoint_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line] \
        if metrics_file.is_file() else []
    return TrainResult(metrics=metrics, **summary)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m distill.training.launch JOB_FOLDER", file=sys.stderr)
        sys.exit(2)
    run_job(sys.argv[1])
