"""Sharded artifacts: shards with their own manifests, resume, finalize, verified reads."""

from __future__ import annotations

import uuid

import fsspec
import pytest

from storage import fs
from storage.artifacts import (
    ArtifactCorrupt,
    ArtifactMissing,
    SchemaMismatch,
    ShardedArtifact,
    ShardsMissing,
    incomplete_reason,
    is_complete,
    read_artifact,
    write_artifact,
)
from storage.manifest import dir_manifest_url, manifest_url
from storage.paths import join


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "samples")
    else:
        url = f"memory://siked-test-{uuid.uuid4().hex}/samples"
        yield url
        memory = fsspec.filesystem("memory")
        if memory.exists(url):
            memory.rm(url, recursive=True)


def shard_rows(index: int, n: int = 3) -> list[dict]:
    return [{"question_id": f"q{index}-{j}", "sample_index": j, "text": f"shard {index}"} for j in range(n)]


def test_write_finalize_read_in_shard_order(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1", code_version="test")
    for index in (2, 0, 1):  # written out of order, read in index order
        manifest = out.write_shard(index, shard_rows(index))
        assert manifest["shard"] == index and manifest["rows"] == 3
    assert out.completed_shards() == {0, 1, 2}
    assert not out.is_complete()  # not finalized yet
    with pytest.raises(ArtifactMissing, match="not finalized"):
        out.read()

    manifest = out.finalize(3)
    assert manifest["type"] == "sharded" and manifest["rows"] == 9 and manifest["config_hash"] == "cfg-1"
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    assert fs.exists(dir_manifest_url(folder))
    expected = [row["question_id"] for i in range(3) for row in shard_rows(i)]
    assert out.read().column("question_id").to_pylist() == expected
    assert read_artifact(folder, "samples").column("question_id").to_pylist() == expected
    assert out.read_shard(1).num_rows == 3
    assert out.is_complete() and is_complete(folder, kind="samples", config_hash="cfg-1")


def test_finalize_refuses_missing_shards(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0))
    out.write_shard(2, shard_rows(2))
    with pytest.raises(ShardsMissing, match=r"\[1, 3\]") as info:
        out.finalize(4)
    assert info.value.missing == [1, 3]
    assert not fs.exists(dir_manifest_url(folder))
    out.finalize([0, 2])  # explicit indices
    assert out.read().num_rows == 6


def test_shard_without_manifest_is_ignored_and_overwritten(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0))
    out.write_shard(1, shard_rows(1, n=7))
    fs.remove(manifest_url(out.shard_url(1)))  # as if killed between the rename and the manifest
    assert out.shard_files() == [0, 1]
    assert out.completed_shards() == {0}
    out.write_shard(1, shard_rows(1, n=2))
    assert out.completed_shards() == {0, 1}
    assert out.finalize(2)["rows"] == 5


def test_writing_a_shard_unfinalizes(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0))
    out.finalize(1)
    out.write_shard(1, shard_rows(1))
    assert not fs.exists(dir_manifest_url(folder)) and not out.is_complete()


def test_config_hash_mismatch_means_no_completed_shards(folder):
    ShardedArtifact(folder, "samples", "cfg-1").write_shard(0, shard_rows(0))
    first = ShardedArtifact(folder, "samples", "cfg-1")
    first.finalize(1)
    other = ShardedArtifact(folder, "samples", "cfg-2")
    assert other.completed_shards() == set()
    assert not other.is_complete() and "cfg-2" in other.problem()
    assert not is_complete(folder, config_hash="cfg-2") and is_complete(folder, config_hash="cfg-1")
    with pytest.raises(ShardsMissing):
        other.finalize(1)
    other.write_shard(0, shard_rows(0))
    other.finalize(1)
    assert other.is_complete() and not first.is_complete()


def test_corrupted_shard_is_named(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1")
    for index in range(3):
        out.write_shard(index, shard_rows(index))
    out.finalize(3)
    shard = out.shard_url(1)
    data = bytearray(fs.read_bytes(shard))
    data[len(data) // 2] ^= 0xFF
    filesystem, path = fs.resolve(shard)
    filesystem.pipe_file(path, bytes(data))
    assert not out.is_complete() and shard in out.problem()
    assert out.completed_shards() == {0, 2}
    with pytest.raises(ArtifactCorrupt) as info:
        read_artifact(folder, "samples")
    assert shard in str(info.value)


def test_shard_replaced_behind_the_folder_manifest(folder):
    """A shard rewritten with valid bytes of its own after finalize no longer matches the folder."""
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0))
    manifest = out.finalize(1)
    write_artifact(out.shard_url(0), shard_rows(0, n=5), "samples", config_hash="cfg-1")
    fs.write_json(dir_manifest_url(folder), manifest)  # the stale folder manifest put back
    assert "rewritten after" in incomplete_reason(folder)
    with pytest.raises(ArtifactCorrupt, match="rewritten after"):
        out.read()


def test_sharded_kind_mismatch(folder):
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0))
    out.finalize(1)
    with pytest.raises(SchemaMismatch, match="read as 'verified'"):
        read_artifact(folder, "verified")
    assert not is_complete(folder, kind="verified")


def test_empty_finalize_reads_empty_table(folder):
    out = ShardedArtifact(folder, "predictions", "cfg-1")
    assert out.finalize(0)["rows"] == 0
    assert out.read().num_rows == 0 and out.is_complete()


def test_shard_urls_are_zero_padded(folder):
    out = ShardedArtifact(folder, "samples")
    assert out.shard_url(7) == join(folder, "shard-00007.parquet")
    with pytest.raises(ValueError):
        out.write_shard(-1, [])


def test_the_folder_info_sums_what_every_shard_counted_and_keeps_its_own(folder):
    """A killed attempt's shards count in the sum: finalize reads each shard's manifest."""
    first = ShardedArtifact(folder, "samples", "cfg-1")
    first.write_shard(0, shard_rows(0), info={"tokens_generated": 5, "note": "x"})
    again = ShardedArtifact(folder, "samples", "cfg-1")  # a later attempt
    again.write_shard(1, shard_rows(1), info={"tokens_generated": 7})
    manifest = again.finalize(2, info={"seconds": 1.5})
    assert manifest["info"] == {"tokens_generated": 12, "seconds": 1.5}
    assert fs.read_json(manifest_url(again.shard_url(0)))["info"]["tokens_generated"] == 5
    assert fs.read_json(dir_manifest_url(folder))["info"] == manifest["info"]


def test_a_count_some_shard_lacks_is_left_out_of_the_folder_info(folder):
    """A sum over part of the shards would pass for the whole (a shard written before counting)."""
    out = ShardedArtifact(folder, "samples", "cfg-1")
    out.write_shard(0, shard_rows(0), info={"tokens_generated": 5})
    out.write_shard(1, shard_rows(1))
    assert "info" not in out.finalize(2)
    assert out.finalize(2, info={"seconds": 2.0})["info"] == {"seconds": 2.0}
