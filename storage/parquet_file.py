"""One Parquet artifact: `x.parquet` plus `x.parquet.manifest.json`, the manifest written last.

Write order: delete the old manifest (so it can no longer vouch for the file), write the Parquet
bytes under a temporary name while hashing them, rename into place, then write the manifest
(temporary name + rename too). A process killed anywhere in between leaves either no manifest or
a manifest whose hash does not match, never a complete-looking artifact.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import fs
from storage.fs import ArtifactCorrupt, ArtifactMissing
from storage.manifest import build_manifest, config_matches, manifest_url
from storage.schemas import schema_for
from storage.tables import Rows, SchemaMismatch, check_stored_schema, to_table


def write_file(url: str, rows: Rows, kind: str, *, config_hash: str | None = None,
               code_version: str | None = None,
               parents: Iterable[str | Mapping[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    """Write `rows` as a Parquet artifact of `kind` at `url`; returns the manifest written."""
    version, _ = schema_for(kind)
    try:
        table = to_table(rows, kind)
    except SchemaMismatch as e:
        raise SchemaMismatch(f"{url}: {e}") from None
    manifest_at = manifest_url(url)
    fs.remove(manifest_at)
    fs.remove_stale_temps(url)
    fs.remove_stale_temps(manifest_at)
    with fs.atomic_open(url) as f:
        out = fs.HashingWriter(f)
        pq.write_table(table, out)
    manifest = build_manifest(
        type="parquet", file=posixpath.basename(str(url)), kind=kind, schema_version=version,
        rows=table.num_rows, size=out.size, content_hash=out.hexdigest(), config_hash=config_hash,
        code=code_version, parents=parents, at=str(url), **extra,
    )
    fs.write_json(manifest_at, manifest)
    return manifest


def _check_kind(url: str, manifest: Mapping[str, Any], kind: str) -> None:
    version, _ = schema_for(kind)
    if manifest.get("type") != "parquet":
        raise SchemaMismatch(f"{url}: manifest says type {manifest.get('type')!r}, expected a Parquet file")
    if manifest.get("kind") != kind or manifest.get("schema_version") != version:
        raise SchemaMismatch(
            f"{url}: written as {manifest.get('kind')!r} schema v{manifest.get('schema_version')}, "
            f"read as {kind!r} schema v{version}"
        )


def read_manifest_of(url: str) -> dict[str, Any]:
    """The manifest of a single-file artifact; ArtifactMissing naming the file when absent."""
    at = manifest_url(url)
    if not fs.exists(at):
        state = "exists but has no manifest (its write did not finish)" if fs.exists(url) else "does not exist"
        raise ArtifactMissing(f"{url} {state}")
    return fs.read_json(at)


def read_file(url: str, kind: str, *, columns: list[str] | None = None,
              manifest: Mapping[str, Any] | None = None) -> pa.Table:
    """Read a Parquet artifact after checking its manifest's kind and version, size and sha256."""
    manifest = manifest if manifest is not None else read_manifest_of(url)
    _check_kind(url, manifest, kind)
    try:
        data = fs.read_bytes(url)
    except ArtifactMissing:
        raise ArtifactMissing(f"{url} does not exist, though its manifest does") from None
    if len(data) != manifest.get("size") or fs.sha256_bytes(data) != manifest.get("content_hash"):
        raise ArtifactCorrupt(
            f"{url} was truncated or altered: {len(data)} bytes with sha256 {fs.sha256_bytes(data)[:16]}..., "
            f"its manifest says {manifest.get('size')} bytes with sha256 {str(manifest.get('content_hash'))[:16]}..."
        )
    try:
        stored = pq.read_schema(pa.BufferReader(data))
        check_stored_schema(url, kind, stored)
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except pa.ArrowException as e:
        raise ArtifactCorrupt(f"{url} is not readable Parquet: {e}") from None
    if table.num_rows != manifest.get("rows"):
        raise ArtifactCorrupt(f"{url} has {table.num_rows} rows, its manifest says {manifest.get('rows')}")
    return table


def file_problem(url: str, *, kind: str | None = None, config_hash: str | None = None,
                 verify_hash: bool = True, manifest: Mapping[str, Any] | None = None,
                 reread: bool = False) -> str | None:
    """Why the Parquet artifact at `url` is not complete, or None when it is.

    Complete: the manifest exists, is of `kind` at the current schema version (when given), was
    written under `config_hash` (when given), and the file exists with the manifest's size and
    (with `verify_hash`) sha256.
    """
    try:
        manifest = manifest if manifest is not None else read_manifest_of(url)
        if kind is not None:
            _check_kind(url, manifest, kind)
    except (ArtifactMissing, ArtifactCorrupt, SchemaMismatch) as e:
        return str(e)
    if not config_matches(manifest, config_hash):
        return f"{url} was written under config hash {manifest.get('config_hash')}, not {config_hash}"
    if not fs.exists(url):
        return f"{url} does not exist, though its manifest does"
    if (n_bytes := fs.size(url)) != manifest.get("size"):
        return f"{url} has {n_bytes} bytes, its manifest says {manifest.get('size')}"
    digest = fs.sha256_file_read if reread else fs.sha256_file  # reread: every byte, nothing remembered
    if verify_hash and digest(url) != manifest.get("content_hash"):
        return f"{url} does not match the sha256 in its manifest"
    return None
