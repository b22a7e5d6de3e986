"""Where a run lives and what it records before any work: its id, folder and resolved config."""

from __future__ import annotations

from distill.config import RunConfig, section_hash, to_yaml
from storage.fs import exists, write_bytes
from storage.paths import RunLayout, default_runs_root


def run_id(cfg: RunConfig) -> str:
    """`<name>-<hash>`: the same config always maps to the same run folder, so a rerun reuses it.
    Where the run is stored and where data is read from do not change what it computes."""
    identity = cfg.model_dump(mode="json", exclude={"runs_root", "data_dir"})
    return f"{cfg.name}-{section_hash(identity, length=10)}"


def run_layout(cfg: RunConfig) -> RunLayout:
    return RunLayout(root=cfg.runs_root or default_runs_root(), run_id=run_id(cfg))


def save_config(layout: RunLayout, cfg: RunConfig) -> None:
    """The resolved config, saved with the run (once: a rerun maps to the same content)."""
    if not exists(layout.config):
        write_bytes(layout.config, to_yaml(cfg).encode("utf-8"))
