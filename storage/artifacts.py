"""The artifact store's front door: write, read, and ask whether a step is done.

    from storage.artifacts import write_artifact, read_artifact, is_complete
    if not is_complete(url, kind="verified", config_hash=key):
        write_artifact(url, rows, "verified", config_hash=key, parents=[samples_url])
    table = read_artifact(url, "verified")      # pyarrow Table, schema and sha256 checked

`url` is a local path or fsspec URL. A Parquet file's manifest sits beside it
(`x.parquet.manifest.json`); a sharded artifact (storage.shards) or a marked folder
(storage.folders) has `<folder>/_manifest.json`. Reading and completion checks find either.

Errors (all ArtifactError, each naming the file): ArtifactMissing (no file or no manifest),
ArtifactCorrupt (bytes do not match the manifest), SchemaMismatch (wrong kind, schema version,
column or type).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from storage import fs
from storage.folders import folder_problem, folder_problems
from storage.fs import ArtifactCorrupt, ArtifactError, ArtifactMissing
from storage.manifest import dir_manifest_url, manifest_url, read_manifest
from storage.parquet_file import file_problem, read_file, write_file
from storage.shards import ShardedArtifact, ShardsMissing, read_sharded, sharded_problem, sharded_problems
from storage.tables import Rows, SchemaMismatch, to_table

__all__ = [
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactMissing",
    "SchemaMismatch",
    "ShardedArtifact",
    "ShardsMissing",
    "artifact_problems",
    "artifact_ref",
    "incomplete_reason",
    "is_complete",
    "read_artifact",
    "read_manifest",
    "to_table",
    "with_manifests",
    "write_artifact",
]


def write_artifact(url: str, rows: Rows, kind: str, *, config_hash: str | None = None,
                   code_version: str | None = None,
                   parents: Iterable[str | Mapping[str, Any]] = (),
                   info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write `rows` (Table, DataFrame or list of dicts) as a Parquet artifact of `kind`.

    `parents` are URLs of the artifacts this one was made from (their manifests give the hashes)
    or ready {"path", "content_hash"} dicts. `code_version` defaults to manifest.code_version().
    `info` is free-form JSON kept under the manifest's "info" (what making it cost, say).
    Returns the manifest written.
    """
    extra = {"info": dict(info)} if info else {}
    return write_file(url, rows, kind, config_hash=config_hash, code_version=code_version, parents=parents,
                      **extra)


def read_artifact(url: str, kind: str, *, columns: list[str] | None = None) -> pa.Table:
    """The rows of a Parquet or sharded artifact of `kind`, after verifying schema and sha256."""
    if fs.exists(manifest_url(url)):
        return read_file(url, kind, columns=columns)
    if fs.exists(dir_manifest_url(url)):
        return read_sharded(url, kind, columns=columns)
    if fs.exists(url):
        raise ArtifactMissing(f"{url} exists but has no manifest (its write did not finish)")
    raise ArtifactMissing(f"{url} does not exist")


def incomplete_reason(url: str, *, kind: str | None = None, config_hash: str | None = None,
                      verify_hash: bool = True) -> str | None:
    """Why the artifact at `url` is not complete (a sentence naming the file), or None when it is.

    Complete means: a manifest exists; its kind and schema version are `kind`'s current ones
    (when `kind` is given); it was written under `config_hash` (when given); and the bytes match
    (size, plus sha256 when `verify_hash`, of every file of a marked folder too).
    """
    if fs.exists(manifest_url(url)):
        return file_problem(url, kind=kind, config_hash=config_hash, verify_hash=verify_hash)
    if fs.exists(dir_manifest_url(url)):
        try:
            manifest_type = fs.read_json(dir_manifest_url(url)).get("type")
        except ArtifactCorrupt as e:
            return str(e)
        if manifest_type == "folder" and kind is None:
            return folder_problem(url, config_hash=config_hash, verify_hashes=verify_hash)
        return sharded_problem(url, kind=kind, config_hash=config_hash, verify_hash=verify_hash)
    return f"{url} has no manifest" + (" (its write did not finish)" if fs.exists(url) else "")


def is_complete(url: str, *, kind: str | None = None, config_hash: str | None = None,
                verify_hash: bool = True) -> bool:
    """True when the step that writes `url` is done (see incomplete_reason)."""
    return incomplete_reason(url, kind=kind, config_hash=config_hash, verify_hash=verify_hash) is None


def with_manifests(*urls: str | None) -> list[str]:
    """The URLs among `urls` that have a manifest: the parents a step can record, models included
    (a student folder has one; a builtin or Hub model does not, and is named by the step's key)."""
    return [url for url in urls if url and read_manifest_or_none(url) is not None]


def read_manifest_or_none(url: str) -> dict[str, Any] | None:
    try:
        return read_manifest(url)
    except ArtifactError:
        return None


def artifact_ref(url: str) -> dict[str, Any]:
    """The small reference a task returns: {"path", "kind", "rows", "content_hash"}."""
    manifest = read_manifest(url)
    return {"path": str(url), "kind": manifest.get("kind"), "rows": manifest.get("rows"),
            "content_hash": manifest["content_hash"]}


def artifact_problems(url: str) -> list[str]:
    """Every file of the artifact at `url` that is missing or altered, each sentence naming it: the
    whole check (sha256 of every file, every shard, every file of a marked folder), for `siked verify`."""
    if fs.exists(manifest_url(url)):
        problem = file_problem(url, verify_hash=True, reread=True)
        return [problem] if problem else []
    if fs.exists(dir_manifest_url(url)):
        try:
            manifest_type = fs.read_json(dir_manifest_url(url)).get("type")
        except ArtifactCorrupt as e:
            return [str(e)]
        return folder_problems(url) if manifest_type == "folder" else sharded_problems(url)
    return [f"{url} has no manifest" + (" (its write did not finish)" if fs.exists(url) else " (missing)")]
