"""Where a run lives and what it records before any work: its id, folder, resolved config and the
index of the steps it uses (storage.step_store)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from distill.config import RunConfig, section_hash, to_yaml
from storage.fs import exists, write_bytes
from storage.paths import RunLayout, resolve_runs_root
from storage.step_store import write_index
from tasks.pipeline import Step
from tasks.steps import ran_in, submit_step


def run_id(cfg: RunConfig) -> str:
    """`<name>-<hash>`: the same config always maps to the same run folder, so a rerun reuses it.
    Where the run is stored and where data is read from do not change what it computes."""
    identity = cfg.model_dump(mode="json", exclude={"runs_root", "data_dir"})
    return f"{cfg.name}-{section_hash(identity, length=10)}"


def run_layout(cfg: RunConfig) -> RunLayout:
    return RunLayout(root=resolve_runs_root(cfg.runs_root), run_id=run_id(cfg))


def save_config(layout: RunLayout, cfg: RunConfig) -> None:
    """The resolved config, saved with the run (once: a rerun maps to the same content)."""
    if not exists(layout.config):
        write_bytes(layout.config, to_yaml(cfg).encode("utf-8"))


def record_run(layout: RunLayout, cfg: RunConfig, steps: dict[str, Step]) -> None:
    """config.yaml and steps.json, before any step runs: the index tells `siked gc` which outputs
    this run uses from the moment it starts, and `siked verify` what to check."""
    save_config(layout, cfg)
    write_index(layout, [step.index_entry() for step in steps.values()])


@dataclass(frozen=True)
class Run:
    """One flow run's steps (tasks.pipeline) and where its own files go. `attempt` names one
    execution of the flow (its subflows pass it on): a step whose input this attempt computed
    runs again (tasks.steps)."""

    cfg: RunConfig
    layout: RunLayout
    steps: dict[str, Step]
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)

    def submit(self, task, name: str, /, **params):
        return submit_step(task, self.steps, name, (self.layout.run_id, self.attempt), **params)

    def input_ran(self, name: str) -> bool:
        """True when an input of the step `name` was computed by this attempt."""
        return any(ran_in(self.steps[n], self.attempt) for n in self.steps[name].inputs.values())

    def output(self, name: str, role: str) -> str:
        return self.steps[name].output(role)

    def input(self, name: str, role: str) -> str:
        """Where the step `name` reads its input `role`: the output of that name of the step that
        makes it, else its one output (a train step's: the student)."""
        source = self.steps[self.steps[name].inputs[role]]
        if role in source.outputs:
            return source.output(role)
        [output] = ["student"] if source.kind == "train" else source.outputs
        return source.output(output)

