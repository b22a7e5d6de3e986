"""The teacher stage end to end: problems -> samples (sharded) -> verdicts -> distillation set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.artifacts import read_artifact
from storage.paths import layout_for_run_dir
from storage.schemas import SAMPLE_COLUMNS
from storage.step_store import step_output

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = [name for name, _ in SAMPLE_COLUMNS]


def tiny_overrides(tmp_path: Path, model: Path, **extra: str) -> list[str]:
    settings = {
        "name": "tiny",
        "runs_root": str(tmp_path / "runs"),
        "train_data": "{name: arith, split: train, difficulty: 1, size: 6, seed: 3}",
        "teacher.engine.kind": "transformers",
        "teacher.engine.model": str(model),
        "teacher.sampling.n": "2",
        "teacher.sampling.max_tokens": "12",
        "teacher.shard_size": "2",
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def run_dir_of(output: str) -> Path:
    return Path(output.strip().splitlines()[-1])


def output_of(run: Path, step: str, role: str) -> Path:
    """Where the run's step keeps an output (the step store, named by the run's steps.json)."""
    return Path(step_output(layout_for_run_dir(str(run)), step, role))


def test_teacher_stage_with_a_tiny_model(tmp_path, tiny_model_path, capsys):
    """Every step writes its artifact; a rerun with the same config reuses all of them."""
    assert main(["teacher", str(REPO / "configs/quickstart.yaml"), *tiny_overrides(tmp_path, tiny_model_path)]) == 0
    run = run_dir_of(capsys.readouterr().out)
    samples = read_artifact(str(output_of(run, "iter-00/generate", "samples")), "samples").to_pylist()
    assert len(samples) == 6 * 3 * 2  # questions x strategies x n
    assert {s["strategy"] for s in samples} == {"cot", "l2m", "pot"}
    assert {s["source"] for s in samples} == {"teacher"} and {s["iteration"] for s in samples} == {0}
    assert all(s["engine"] == "transformers" and s["prompt_hash"] for s in samples)
    verified = read_artifact(str(output_of(run, "iter-00/verify", "verified")), "verified").to_pylist()
    assert len(verified) == len(samples) and all(v["verdict"] for v in verified)
    read_artifact(str(output_of(run, "iter-00/distill_set", "distill_set")), "train_examples")  # may be empty: random model
    assert (run / "config.yaml").is_file()

    shard = output_of(run, "iter-00/generate", "samples") / "shard-00000.parquet"
    before = shard.stat().st_mtime_ns
    assert main(["teacher", str(REPO / "configs/quickstart.yaml"), *tiny_overrides(tmp_path, tiny_model_path)]) == 0
    assert run_dir_of(capsys.readouterr().out) == run
    assert shard.stat().st_mtime_ns == before  # nothing regenerated


@pytest.mark.slow
def test_generation_killed_midway_continues_from_its_shards(tmp_path, tiny_model_path):
    """SIGKILL the teacher command after its first shards; the rerun keeps them and adds the rest."""
    args = [sys.executable, "-m", "flows.cli", "teacher", str(REPO / "configs/quickstart.yaml"),
            *tiny_overrides(tmp_path, tiny_model_path, **{"teacher.shard_size": "1",
                                                          "teacher.sampling.max_tokens": "48"})]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    shards_dir = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            found = list((tmp_path / "runs").glob("steps/generate/*/samples/shard-*.manifest.json"))
            if len(found) >= 2:
                shards_dir = found[0].parent
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert shards_dir is not None, "no shard was written in time"
    kept = {p.name: p.stat().st_mtime_ns for p in shards_dir.glob("shard-*.parquet")
            if (shards_dir / (p.name + ".manifest.json")).exists()}
    assert 2 <= len(kept) < 6 and not (shards_dir / "_manifest.json").exists()

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already written, reusing them" in done.stderr
    for name, mtime in kept.items():
        assert (shards_dir / name).stat().st_mtime_ns == mtime, f"{name} was regenerated"
    assert len(read_artifact(str(shards_dir), "samples")) == 6 * 3 * 2


@pytest.mark.slow
def test_vllm_teacher_on_gsm8k_with_every_provenance_column(tmp_path, builtin_model_path, data_dir, capsys):
    """The embedded model through vLLM on 8 GSM8K questions x 3 strategies x 2 samples."""
    overrides = [
        "name=vllm-gsm8k", f"runs_root={tmp_path / 'runs'}",
        "train_data={name: gsm8k, split: train, limit: 8, seed: 1}",
        "teacher.engine.kind=vllm", f"teacher.engine.model={builtin_model_path}",
        "teacher.engine.max_model_len=4096", "teacher.sampling.n=2", "teacher.sampling.max_tokens=96",
        "teacher.shard_size=4", "teacher.shots=8",
    ]
    assert main(["teacher", str(REPO / "configs/quickstart.yaml"), *overrides]) == 0
    run = run_dir_of(capsys.readouterr().out)
    table = read_artifact(str(output_of(run, "iter-00/generate", "samples")), "samples")
    assert table.num_rows == 8 * 3 * 2
    rows = table.to_pylist()
    for column in PROVENANCE:
        assert all(row[column] is not None for row in rows), f"column {column} has nulls"
    assert {r["engine"] for r in rows} == {"vllm"} and all(r["engine_version"] for r in rows)
    assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 500 for r in rows)  # 8-shot prompts
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
    assert sorted({r["sample_index"] for r in rows}) == [0, 1]
    # Shards were written as separate files, and verification judged every sample.
    assert len(list(output_of(run, "iter-00/generate", "samples").glob("shard-*.parquet"))) == 2
    verified = pq.read_table(output_of(run, "iter-00/verify", "verified")).to_pylist()
    assert len(verified) == 48 and all(v["parser_version"] for v in verified)
