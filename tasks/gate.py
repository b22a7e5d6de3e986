"""Whether a step is done: the one rule that `siked plan`, `siked status`, `siked resume` and the run
all apply (the run through tasks.steps.submit_step).

A step is done when every output

- has its manifest, written under the step's key, of the kind and schema the step writes;
- matches its manifest byte for byte (sha256, every shard and every file of a student folder:
  hashes are checked on every reuse, so a damaged output is recomputed, never read; a large file
  whose identity (inode, size, mtime, ctime) is unchanged since this home last hashed it is not
  read again, storage.fs; `siked verify` reads every byte);
- was made from the inputs as they are now (each parent recorded in its manifest, models
  included, still has the content hash recorded).

And a step whose input runs again runs again too: in the plan (`decide`) and in the run alike.
No other cache exists: Prefect's task cache is off (tasks.steps), so nothing a run reuses can come
from another home.

    decisions = decide(steps)            # {name: Decision}: reuse (whose output) or run, and why
    reason = incomplete(step)            # None when done
    discard_outputs(step, forced=False)  # before a step runs: outputs that are stale or damaged
"""

from __future__ import annotations

from dataclasses import dataclass

from storage import fs
from storage.artifacts import incomplete_reason, read_manifest
from storage.manifest import dir_manifest_url, find_manifest, manifest_url, parent_url
from storage.paths import join
from storage.step_store import LOCK_NAME, read_step_info, remove_tree
from tasks.pipeline import REPORT_KEY_FILE, Step, summary_url_of


def changed_parents(url: str) -> list[tuple[str, str]]:
    """(parent URL, sentence) of every recorded parent of the artifact at `url` whose content is no
    longer the one it was made from (or that is gone)."""
    found = []
    for parent in read_manifest(url).get("parents", []):
        where = parent_url(url, parent["path"])
        try:
            current = read_manifest(where)["content_hash"]
        except fs.ArtifactError:
            found.append((where, f"its input {where} is missing"))
            continue
        if current != parent["content_hash"]:
            found.append((where, f"its input {where} changed since it was made"))
    return found


def output_problem(step: Step, role: str) -> str | None:
    """Why the output `role` of `step` is not complete, or None."""
    out, url = step.outputs[role], step.output(role)
    reason = incomplete_reason(url, kind=out.kind, config_hash=step.key, verify_hash=True)
    if reason is None and step.kind == "evaluate" and not fs.exists(summary_url_of(url)):
        reason = f"{url} has no summary"
    if reason is None:
        changed = changed_parents(url)
        reason = changed[0][1] if changed else None
    return reason


def incomplete(step: Step) -> str | None:
    """Why `step` is not done (an output missing, damaged, made under another key or from other
    inputs), or None when every output is complete."""
    if step.kind == "report":
        key_file = join(step.folder, REPORT_KEY_FILE)
        if not fs.exists(step.output("report")) or not fs.exists(key_file):
            return "no report yet"
        return None if fs.read_bytes(key_file).decode().strip() == step.key else "the report is out of date"
    for role in step.outputs:
        reason = output_problem(step, role)
        if reason is not None:
            return reason
    return None


def discard_outputs(step: Step, *, forced: bool) -> list[str]:
    """Before `step` runs: remove each output whose manifest vouches for something that is no
    longer right (damaged, another key, stale inputs), so the body recomputes it; with `forced`
    (an input ran again) everything in the step's folder goes, checkpoints and shards included.
    Outputs with no manifest yet are partial work of a killed run, left for the body to resume.
    Returns the URLs removed."""
    if step.kind == "report":
        return []
    if forced:
        filesystem, root = fs.resolve(step.folder)
        if not filesystem.isdir(root):
            return []
        removed = []
        for entry in filesystem.ls(root, detail=False):
            name = entry.rstrip("/").rpartition("/")[2]
            if name != LOCK_NAME:
                url = join(step.folder, name)
                remove_tree(url)
                removed.append(url)
        return removed
    removed = []
    for role in step.outputs:
        url = step.output(role)
        if find_manifest(url) is not None and output_problem(step, role) is not None:
            for part in (url, manifest_url(url), dir_manifest_url(url), summary_url_of(url)):
                if fs.exists(part):
                    remove_tree(part)
            removed.append(url)
    return removed


@dataclass
class Decision:
    action: str  # reuse | run
    reason: str = ""  # why it runs
    producer: str | None = None  # the run whose output is reused


def decide(steps: dict[str, Step], computed_before: dict[str, str] | None = None) -> dict[str, Decision]:
    """Reuse a step when its outputs are complete and none of its inputs runs; run it otherwise.
    The run applies the same rule step by step (tasks.steps.submit_step), so what this says is
    what the run does. `computed_before` ({step key: who}) names steps that runs going first will
    have computed (the earlier arms of an experiment): those are reused from them."""
    decisions: dict[str, Decision] = {}
    for name, step in steps.items():
        if computed_before and step.kind != "report" and step.key in computed_before:
            decisions[name] = Decision("reuse", producer=computed_before[step.key])
            continue
        running = [n for n in step.inputs.values() if decisions[n].action == "run"]
        if running:
            decisions[name] = Decision("run", f"its input {running[0]} runs")
            continue
        reason = incomplete(step)
        if reason is not None:
            decisions[name] = Decision("run", reason)
            continue
        info = read_step_info(step.folder) if step.kind != "report" else None
        decisions[name] = Decision("reuse", producer=(info or {}).get("run"))
    return decisions
