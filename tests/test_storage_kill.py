"""Writes killed part-way (a child process sent SIGKILL) never leave anything that reads as complete,
and a rerun completes, writing only what is missing.

The child blocks at a chosen point (half of the Parquet bytes on disk, or the data file renamed but
its manifest not yet written) and says so on stdout; the test then kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import fs
from storage.artifacts import (
    ArtifactMissing,
    ShardedArtifact,
    incomplete_reason,
    is_complete,
    read_artifact,
    write_artifact,
)
from storage.manifest import dir_manifest_url, manifest_url

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

REPO_ROOT = Path(__file__).resolve().parents[1]

# argv: mode (single | sharded), url, stop (data | manifest), rows, shards, shard to stop in
CHILD = textwrap.dedent("""
    import io, sys, time
    import pyarrow.parquet as pq
    from storage import fs
    from storage.artifacts import ShardedArtifact, write_artifact

    mode, url, stop, n_rows, n_shards, stop_shard = sys.argv[1:]
    n_rows, n_shards, stop_shard = int(n_rows), int(n_shards), int(stop_shard)
    real_write_table, real_write_json = pq.write_table, fs.write_json
    state = {"armed": mode == "single"}

    def hang(message):
        print(message, flush=True)
        time.sleep(600)

    def half_write_table(table, where, **kwargs):
        if not (state["armed"] and stop == "data"):
            return real_write_table(table, where, **kwargs)
        buffer = io.BytesIO()
        real_write_table(table, buffer, **kwargs)
        where.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        where.flush()
        hang("HALF-WRITTEN")

    def write_json_then_hang(target, obj):
        if state["armed"] and stop == "manifest" and target.endswith(".manifest.json"):
            hang("DATA-RENAMED")
        return real_write_json(target, obj)

    pq.write_table, fs.write_json = half_write_table, write_json_then_hang

    def rows(tag, n):
        return [{"question_id": f"{tag}-{i}", "sample_index": i, "text": "x" * 200} for i in range(n)]

    if mode == "single":
        write_artifact(url, rows("single", n_rows), "samples", config_hash="cfg")
    else:
        out = ShardedArtifact(url, "samples", "cfg")
        done = out.completed_shards()
        for index in range(n_shards):
            state["armed"] = index == stop_shard
            if index not in done:
                out.write_shard(index, rows(f"s{index}", n_rows))
                print(f"SHARD-DONE {index}", flush=True)
        out.finalize(n_shards)
        print("FINALIZED", flush=True)
""")


def run_child_until(marker: str, *args: object) -> list[str]:
    """Start the writer child, wait for `marker` on its stdout, SIGKILL it; return the lines it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == marker:
                proc.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail(f"child ended without {marker!r}: {lines} {proc.stderr.read()}")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return lines


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_killed_while_writing_parquet_bytes(tmp_path):
    url = str(tmp_path / "samples.parquet")
    write_artifact(url, [{"question_id": "old"}], "samples", config_hash="old-cfg")  # an earlier complete run
    run_child_until("HALF-WRITTEN", "single", url, "data", 20000, 0, 0)

    assert temp_files(tmp_path), "the killed write should have left its temporary file"
    assert not fs.exists(manifest_url(url))  # the old manifest was withdrawn before writing
    assert not is_complete(url) and not is_complete(url, config_hash="old-cfg")
    with pytest.raises(ArtifactMissing):
        read_artifact(url, "samples")

    write_artifact(url, [{"question_id": "new"}], "samples", config_hash="cfg")  # the rerun
    assert is_complete(url, kind="samples", config_hash="cfg")
    assert read_artifact(url, "samples").column("question_id").to_pylist() == ["new"]
    assert temp_files(tmp_path) == []


def test_killed_between_rename_and_manifest(tmp_path):
    url = str(tmp_path / "samples.parquet")
    run_child_until("DATA-RENAMED", "single", url, "manifest", 1000, 0, 0)

    assert fs.exists(url) and not fs.exists(manifest_url(url))
    assert not is_complete(url)
    assert "did not finish" in incomplete_reason(url)
    with pytest.raises(ArtifactMissing, match="no manifest"):
        read_artifact(url, "samples")

    write_artifact(url, [{"question_id": "rerun"}], "samples", config_hash="cfg")
    assert read_artifact(url, "samples").num_rows == 1


@pytest.mark.parametrize("stop", ["data", "manifest"])
def test_sharded_write_killed_after_k_shards_resumes_with_the_missing_ones(tmp_path, stop):
    folder = tmp_path / "samples"
    n_shards, k = 5, 3
    marker = "HALF-WRITTEN" if stop == "data" else "DATA-RENAMED"
    lines = run_child_until(marker, "sharded", folder, stop, 200, n_shards, k)
    assert lines == [f"SHARD-DONE {i}" for i in range(k)] + [marker]

    out = ShardedArtifact(str(folder), "samples", "cfg")
    assert out.completed_shards() == set(range(k))
    assert not out.is_complete() and not fs.exists(dir_manifest_url(str(folder)))
    if stop == "manifest":
        assert k in out.shard_files()  # the shard file is there, but without a manifest it does not count
    with pytest.raises(ArtifactMissing):
        read_artifact(str(folder), "samples")
    kept = {i: (folder / f"shard-{i:05d}.parquet").stat().st_mtime_ns for i in range(k)}

    # The rerun (a fresh child, nothing armed) writes only shards k..n-1.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    rerun = subprocess.run([sys.executable, "-c", CHILD, "sharded", str(folder), stop, "200", str(n_shards), "-1"],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split("\n")[:-1] == [f"SHARD-DONE {i}" for i in range(k, n_shards)] + ["FINALIZED"]
    assert {i: (folder / f"shard-{i:05d}.parquet").stat().st_mtime_ns for i in range(k)} == kept

    assert out.is_complete()
    table = read_artifact(str(folder), "samples")
    assert table.num_rows == 200 * n_shards
    assert table.column("question_id").to_pylist()[::200] == [f"s{i}-0" for i in range(n_shards)]
    assert temp_files(folder) == []
