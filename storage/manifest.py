"""Manifests: the JSON written last beside (or inside) an artifact, saying it is complete.

A Parquet file `x.parquet` has `x.parquet.manifest.json`; a sharded folder or a folder made by
other code has `<folder>/_manifest.json`. Every manifest holds:

    type            "parquet" | "sharded" | "folder"
    kind            artifact kind (schemas.py), null for folders
    schema_version  version of that kind's schema when written, null for folders
    rows            row count (null for folders)
    content_hash    sha256 of the Parquet bytes; for sharded and folder manifests a sha256 over
                    the parts' hashes (see the modules that write them)
    config_hash     the caller's cache key (null when not given)
    code_version    package version + git short sha, or the caller's string
    parents         [{"path": url, "content_hash": ...}] of the artifacts this one was made from
    created         UTC time, ISO 8601
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from storage import fs
from storage.paths import join

MANIFEST_SUFFIX = ".manifest.json"
DIR_MANIFEST = "_manifest.json"
DISTRIBUTION = "siked-pipeline"


def manifest_url(url: str) -> str:
    """The manifest of a single-file artifact: `<file>.manifest.json` beside it."""
    return str(url) + MANIFEST_SUFFIX


def dir_manifest_url(folder_url: str) -> str:
    """The manifest of a folder artifact (sharded Parquet or a folder made by other code)."""
    return join(str(folder_url), DIR_MANIFEST)


def find_manifest(url: str) -> str | None:
    """The manifest URL of `url` (file manifest first, then folder manifest), or None."""
    for candidate in (manifest_url(url), dir_manifest_url(url)):
        if fs.exists(candidate):
            return candidate
    return None


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest of the artifact at `url`; ArtifactMissing when it has none."""
    found = find_manifest(url)
    if found is None:
        raise fs.ArtifactMissing(f"{url} has no manifest (never written, or its write did not finish)")
    return fs.read_json(found)


@functools.cache
def code_version() -> str:
    """`<package version>` plus `+g<git short sha>` when the code sits in a git checkout."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def parent_ref(parent: str | Mapping[str, Any]) -> dict[str, Any]:
    """{"path", "content_hash"} of a parent artifact, read from its manifest (or given as a dict)."""
    if isinstance(parent, Mapping):
        return {"path": str(parent["path"]), "content_hash": parent["content_hash"]}
    return {"path": str(parent), "content_hash": read_manifest(parent)["content_hash"]}


def build_manifest(*, type: str, content_hash: str, kind: str | None = None,
                   schema_version: int | None = None, rows: int | None = None,
                   config_hash: str | None = None, code: str | None = None,
                   parents: Iterable[str | Mapping[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    """A manifest dict with the common fields; `extra` adds type-specific ones."""
    return {
        "type": type,
        "kind": kind,
        "schema_version": schema_version,
        "rows": rows,
        "content_hash": content_hash,
        "config_hash": config_hash,
        "code_version": code if code is not None else code_version(),
        "parents": [parent_ref(p) for p in parents],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def combined_hash(parts: Iterable[str]) -> str:
    """One sha256 over an ordered list of strings (shard hashes, file entries)."""
    return fs.sha256_bytes("\n".join(parts).encode("utf-8"))


def config_matches(manifest: Mapping[str, Any], config_hash: str | None) -> bool:
    """True when no config hash is expected, or the manifest was written under that one."""
    return config_hash is None or manifest.get("config_hash") == config_hash
