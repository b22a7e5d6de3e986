"""Training checkpoints: written atomically, found again after a crash, pruned.

A checkpoint is a folder `<checkpoint_dir>/step-<NNNNNNNN>/` holding

- `trainable.pt`: the weights training changes (the LoRA adapter, or the whole model);
- `optimizer.pt`, `scheduler.pt`, `head.pt` (the InfoNCE heads, when the loss has them);
- `rng-rank<R>.pt`: the python, numpy, torch (and CUDA) generator states of each process;
- `state.json`: step, data position (epoch, batch index in the epoch, the sampler's order seed),
  the best validation result so far;
- `COMPLETE`: written last. A folder without it is an interrupted write and is never read.

It is written under a temporary name (`.step-<N>.tmp`), renamed into place, and marked complete
last, so a process killed at any moment leaves either the previous checkpoint or the new one.
`best/` (the weights of the best validation step) follows the same rule.

    save_checkpoint(folder, step, files={"trainable.pt": state, ...}, state={...}, rank=0, ...)
    found = latest_checkpoint(checkpoint_dir)      # Path or None
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
PREFIX = "step-"


def step_dir(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"{PREFIX}{step:08d}"


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete `step-*` folder with the highest step, or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and is_complete(p)]
    return max(done, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def rng_state() -> dict[str, Any]:
    """The generator states this process draws from (python, numpy, torch CPU, CUDA if present)."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: Path) -> None:
    import torch

    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(folder: str | Path, files: dict[str, Any], state: dict[str, Any], *, rank: int = 0,
                    barrier: Callable[[], None] = lambda: None) -> Path:
    """Write a checkpoint folder atomically; every process calls it (collective when distributed).

    `files` (name -> object for torch.save) and `state` (JSON) are written by rank 0; every rank
    writes its own RNG state. Returns the final folder.
    """
    final = Path(folder)
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        for leftover in (tmp, final):  # an earlier interrupted write of this same step
            if leftover.exists():
                shutil.rmtree(leftover)
        tmp.mkdir(parents=True)
    barrier()
    _torch_save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        for name, obj in files.items():
            _torch_save(obj, tmp / name)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    barrier()
    if rank == 0:
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        (final / MARKER).write_text("ok\n", encoding="utf-8")
        _fsync_dir(final)
    barrier()
    return final


def load_state(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))


def load_file(folder: str | Path, name: str) -> Any:
    import torch

    return torch.load(Path(folder) / name, map_location="cpu", weights_only=False)


def restore_rng(folder: str | Path, rank: int) -> None:
    """Set this process's generators from the checkpoint (its own rank's file)."""
    path = Path(folder) / f"rng-rank{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the checkpoint was written by fewer processes than this run has")
    set_rng_state(load_file(folder, path.name))


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete step folders (and stale temporary folders)."""
    root = Path(checkpoint_dir)
    done = sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir() and is_complete(p)),
                  key=lambda p: int(p.name[len(PREFIX):]))
    removed = done[: max(0, len(done) - keep)]
    removed += [p for p in root.glob(f".{PREFIX}*.tmp") if p.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
