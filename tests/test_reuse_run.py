"""Reuse decided by one rule, in the plan and the run alike: a regenerated input reruns exactly what
the plan lists below it, a damaged output is recomputed when a run needs it, and a step finished in
one home is never served to another (Prefect keeps no result cache of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.config import load_config
from flows.cli import main
from flows.teacher import teacher_flow
from storage.artifacts import read_artifact, read_manifest
from storage.paths import layout_for_run_dir
from storage.shards import ShardedArtifact
from storage.step_store import read_index
from tasks.gate import changed_parents
from tests.test_flow import (
    executed_steps_of_last_run,
    output_of,
    planned_to_run,
    task_run_name,
    teacher_rationales,
    tiny_run_overrides,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/quickstart.yaml")


def rewrite_one_sample(samples_url: str) -> None:
    """What a regeneration on a GPU (not bit-repeatable) leaves: the teacher's samples under the same
    key, one text changed."""
    manifest = read_manifest(samples_url)
    shards = ShardedArtifact(samples_url, "samples", config_hash=manifest["config_hash"],
                             parents=[{"path": p["path"], "content_hash": p["content_hash"]}
                                      for p in manifest["parents"]])
    rows = shards.read_shard(0).to_pylist()
    rows[0]["text"] += "\nFinal answer: 12345"
    shards.write_shard(0, rows)
    shards.finalize(len(manifest["shards"]))


def stale_lineage(run: Path) -> list[str]:
    """Every output of the run whose manifest records a parent whose content has changed since."""
    return [f"{entry['name']}: {problem}" for entry in read_index(layout_for_run_dir(str(run)))
            if entry["kind"] != "report" for url in entry["outputs"].values() for _, problem in changed_parents(url)]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_rewritten_teacher_output_reruns_what_the_plan_lists_and_a_damaged_output_is_recomputed(
        tmp_path, tiny_model_path, capsys):
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path)
    assert main(["run", CONFIG, *overrides]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])

    samples = output_of(run, "iter-00/generate", "samples")
    rewrite_one_sample(samples)
    planned = planned_to_run(CONFIG, overrides, capsys)
    assert "iter-00/verify" in planned and "iter-01/train" in planned and "iter-00/generate" not in planned
    assert "base/evaluate" not in planned
    assert main(["run", CONFIG, *overrides]) == 0
    capsys.readouterr()
    assert executed_steps_of_last_run() == {task_run_name(s) for s in planned} - {None}
    assert stale_lineage(run) == []
    assert planned_to_run(CONFIG, overrides, capsys) == set()
    verdicts = read_artifact(output_of(run, "iter-00/verify", "verified"), "verified").to_pylist()
    assert any(v["text"].endswith("12345") for v in verdicts)  # the verdicts judge the samples that exist

    # A flipped byte in a finished training set (the last round's mixture): the plan and the next
    # run recompute it and what reads it, and end with it whole; nothing reads the damaged bytes.
    train_set = Path(output_of(run, "iter-01/mix", "train_set"))
    data = bytearray(train_set.read_bytes())
    data[40] ^= 0xFF
    train_set.write_bytes(bytes(data))
    planned = planned_to_run(CONFIG, overrides, capsys)
    assert {"iter-01/mix", "iter-01/train", "iter-01/evaluate"} <= planned and "iter-01/verify" not in planned
    assert main(["run", CONFIG, *overrides]) == 0
    assert executed_steps_of_last_run() == {task_run_name(s) for s in planned} - {None}
    assert main(["verify", str(run)]) == 0


def teacher_only(root: Path, rationales: Path):
    return load_config(Path(CONFIG).read_text(), [
        "name=homes", f"runs_root={root}", 'train_data={name: arith, split: train, difficulty: 1, size: 6, seed: 5}',
        "teacher.engine.kind=file", f"teacher.engine.files=[{rationales}]", "teacher.sampling.n=2",
        "teacher.shard_size=3", "eval.benchmarks=[]", "eval.evaluate_base=false"])


def test_a_step_finished_in_one_home_is_never_served_to_another(tmp_path):
    rationales = teacher_rationales(tmp_path / "teacher")
    refs = {}
    for home in ("one", "two", "one"):
        refs.setdefault(home, []).append(teacher_flow(teacher_only(tmp_path / home, rationales)))
    for home, runs in refs.items():
        for result in runs:
            for name in ("problems", "samples", "verified", "distill_set"):
                assert result[name]["path"].startswith(str(tmp_path / home)), (home, name, result[name]["path"])
    assert json.dumps(refs["one"][0]["distill_set"]["summary"]) == json.dumps(refs["one"][1]["distill_set"]["summary"])
    # A teacher-only run's index names the steps it ran: verify and status judge those, nothing missing.
    assert main(["verify", refs["one"][1]["run_dir"]]) == 0
    assert main(["status", refs["one"][1]["run_dir"]]) == 0
