"""`siked verify RUN` and `siked gc [--dry-run]`: the step store's integrity and its clean-up.

    siked verify RUN          # re-hash every output the run uses; name each altered or missing file,
                              # and each output whose recorded input has changed since it was made
    siked gc --dry-run        # step outputs no run refers to (under $SIKED_HOME/runs or --runs-root)
    siked gc                  # ... and delete them

A run refers to the outputs listed in its steps.json (storage.step_store), written before its first
step, so gc never removes what a started run uses; a step folder whose claim is held (a run
computing it right now) is kept too.
"""

from __future__ import annotations

import posixpath
import sys

from storage.artifacts import artifact_problems
from storage.fs import ArtifactMissing, list_files
from storage.paths import layout_for_run_dir, resolve_runs_root
from storage.step_store import OldRunFolder, claim_held, read_index, remove_tree, unreferenced_step_dirs


def verify_cli(run: str) -> int:
    layout = layout_for_run_dir(run)
    try:
        steps = read_index(layout)
    except (OldRunFolder, ArtifactMissing) as exc:
        print(f"siked: {exc}", file=sys.stderr)
        return 2
    problems, checked = [], 0
    # Keyed as manifests' parents read back (storage.manifest.parent_url normalises them).
    producers = {posixpath.normpath(url): step["name"] for step in steps for url in step["outputs"].values()}
    for step in steps:
        if step["kind"] == "report":
            continue
        for url in step["outputs"].values():
            checked += 1
            damaged = artifact_problems(url)
            problems += [f"{step['name']}: {p}" for p in damaged]
            if not damaged:
                problems += [f"{step['name']}: {p}" for p in lineage_problems(url, producers)]
    for line in problems:
        print(line)
    print(f"{checked} outputs of {len(steps)} steps checked: "
          + (f"{len(problems)} problems" if problems else "all match their manifests"), file=sys.stderr)
    return 1 if problems else 0


def lineage_problems(url: str, producers: dict[str, str]) -> list[str]:
    """Each recorded parent of the output at `url` whose content changed since, with the step
    that produced it (`producers`: output URL -> step name)."""
    from tasks.gate import changed_parents

    return [f"{sentence} (the output of {producers[parent]})" if parent in producers else sentence
            for parent, sentence in changed_parents(url)]


def unreferenced_steps(runs_root: str) -> list[str]:
    """Step folders no run's index names (however either is spelled) and no process is computing."""
    return [d for d in unreferenced_step_dirs(runs_root) if not claim_held(d)]


def gc_cli(runs_root: str | None, dry_run: bool) -> int:
    root = resolve_runs_root(runs_root)
    doomed = unreferenced_steps(root)
    total = 0
    for folder in doomed:
        size = sum(list_files(folder).values())
        total += size
        print(f"{'would remove' if dry_run else 'removing'} {folder} ({size / 1e6:.1f} MB)")
        if not dry_run:
            remove_tree(folder)
    print(f"{len(doomed)} unreferenced step outputs, {total / 1e6:.1f} MB"
          + (" (dry run: nothing removed)" if dry_run else " removed"), file=sys.stderr)
    return 0
