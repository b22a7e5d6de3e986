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
    parents         [{"path": ..., "content_hash": ...}] of the artifacts this one was made from,
                    models included; a parent in the same step store is recorded relative to this
                    artifact's folder (`../../generate/<key>/samples`), so a runs root copied,
                    moved or mounted elsewhere checks its lineage against its own files
                    (parent_url reads it back)
    created         UTC time, ISO 8601
    info            (optional) free-form JSON: a folder's own facts (a student's training result),
                    and what making the artifact cost (tasks.compute: seconds, tokens); a sharded
                    artifact's sums its shards' numbers (storage.shards)
"""

from __future__ import annotations

import functools
import posixpath
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


def _split(url: str) -> tuple[str, str]:
    """(scheme, path) of a URL or local path; a local path's scheme is ""."""
    url = str(url)
    if "://" in url:
        scheme, _, path = url.partition("://")
        return scheme, path
    return "", url


STEP_STORE = "/steps/"  # storage.step_store: <runs_root>/steps/<kind>/<key>/...


def _runs_root_of(path: str) -> str | None:
    """The runs root of a path inside a step store, or None for a path outside one."""
    at = path.rfind(STEP_STORE)
    return path[:at] if at > 0 else None


def relative_parent(at: str, parent: str) -> str:
    """`parent` relative to the folder holding the artifact `at` when both live in one step store
    (the same scheme and runs root); otherwise (a model folder, another runs root) as given."""
    (scheme_a, path_a), (scheme_p, path_p) = _split(at), _split(parent)
    path_a, path_p = posixpath.normpath(path_a), posixpath.normpath(path_p)
    root = _runs_root_of(path_a)
    if scheme_a != scheme_p or root is None or _runs_root_of(path_p) != root:
        return str(parent)
    return posixpath.relpath(path_p, posixpath.dirname(path_a))


def parent_url(at: str, recorded: str) -> str:
    """The URL of a parent recorded in the manifest of the artifact `at` (see relative_parent)."""
    if "://" in recorded or recorded.startswith("/"):
        return recorded
    scheme, path = _split(at)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(posixpath.normpath(path)), recorded))
    return f"{scheme}://{joined}" if scheme else joined


def parent_ref(parent: str | Mapping[str, Any], at: str | None = None) -> dict[str, Any]:
    """{"path", "content_hash"} of a parent artifact, read from its manifest (or given as a dict);
    with `at` (the artifact being written), the path is recorded relative to it."""
    if isinstance(parent, Mapping):
        path, content_hash = str(parent["path"]), parent["content_hash"]
    else:
        path, content_hash = str(parent), read_manifest(parent)["content_hash"]
    return {"path": relative_parent(at, path) if at else path, "content_hash": content_hash}


def build_manifest(*, type: str, content_hash: str, kind: str | None = None,
                   schema_version: int | None = None, rows: int | None = None,
                   config_hash: str | None = None, code: str | None = None,
                   parents: Iterable[str | Mapping[str, Any]] = (), at: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    """A manifest dict with the common fields; `extra` adds type-specific ones. `at` is the
    artifact's own URL: its parents are recorded relative to it."""
    return {
        "type": type,
        "kind": kind,
        "schema_version": schema_version,
        "rows": rows,
        "content_hash": content_hash,
        "config_hash": config_hash,
        "code_version": code if code is not None else code_version(),
        "parents": [parent_ref(p, at) for p in parents],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def combined_hash(parts: Iterable[str]) -> str:
    """One sha256 over an ordered list of strings (shard hashes, file entries)."""
    return fs.sha256_bytes("\n".join(parts).encode("utf-8"))


def config_matches(manifest: Mapping[str, Any], config_hash: str | None) -> bool:
    """True when no config hash is expected, or the manifest was written under that one."""
    return config_hash is None or manifest.get("config_hash") == config_hash
