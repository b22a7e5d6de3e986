"""Completion marks for folders written by other code (a prepared model, a training checkpoint).

The producer writes its files however it likes, then calls `mark_folder_complete` last; the
manifest `<folder>/_manifest.json` lists every file with its size and (optionally) sha256.
`is_folder_complete` checks the sizes, and the hashes only on request: hashing gigabytes of
weights on every skip check would cost more than it protects.

    unmark_folder_complete(out)          # before rewriting a folder
    model.save_pretrained(out)
    mark_folder_complete(out, {"model": name}, config_hash=key)
    ...
    if is_folder_complete(out, config_hash=key): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storage import fs
from storage.fs import ArtifactCorrupt, ArtifactMissing
from storage.manifest import DIR_MANIFEST, build_manifest, combined_hash, config_matches, dir_manifest_url
from storage.paths import join


def _files_hash(entries: list[Mapping[str, Any]]) -> str:
    return combined_hash(f"{e['path']}:{e['size']}:{e.get('sha256') or ''}" for e in entries)


def mark_folder_complete(folder_url: str, info: Mapping[str, Any] | None = None, *,
                         config_hash: str | None = None, code_version: str | None = None,
                         parents: Iterable[str | Mapping[str, Any]] = (),
                         hash_files: bool = True, at: str | None = None) -> dict[str, Any]:
    """Write the folder's manifest listing its files (hidden names skipped); returns it.

    `at` is where the folder is published when that is not `folder_url` (a local mirror of a
    remote folder): its parents are recorded relative to that place.

    `info` is free-form JSON kept under "info". `content_hash` is the sha256 over the lines
    `"<path>:<size>:<sha256 or empty>"` in path order.
    """
    files = {p: n for p, n in fs.list_files(folder_url).items() if p != DIR_MANIFEST}
    if not files:
        raise ArtifactMissing(f"{folder_url} holds no files to mark complete")
    entries = [
        {"path": path, "size": n, "sha256": fs.sha256_file(join(folder_url, path)) if hash_files else None}
        for path, n in files.items()
    ]
    manifest = build_manifest(type="folder", content_hash=_files_hash(entries), config_hash=config_hash,
                              code=code_version, parents=parents, at=str(at or folder_url), files=entries, info=dict(info or {}))
    fs.write_json(dir_manifest_url(folder_url), manifest)
    return manifest


def unmark_folder_complete(folder_url: str) -> None:
    """Remove the folder's manifest, so a rewrite in progress never looks complete."""
    fs.remove(dir_manifest_url(folder_url))


def folder_manifest(folder_url: str) -> dict[str, Any]:
    """The manifest of a marked folder; ArtifactMissing naming the folder when it has none."""
    at = dir_manifest_url(folder_url)
    if not fs.exists(at):
        raise ArtifactMissing(f"{folder_url} is not marked complete (no {DIR_MANIFEST})")
    manifest = fs.read_json(at)
    if manifest.get("type") != "folder":
        raise ArtifactCorrupt(f"{at} is a {manifest.get('type')!r} manifest, not a folder's")
    return manifest


def folder_problem(folder_url: str, *, config_hash: str | None = None,
                   verify_hashes: bool = False) -> str | None:
    """Why the folder is not complete, or None when every listed file is there with its size."""
    try:
        manifest = folder_manifest(folder_url)
    except (ArtifactMissing, ArtifactCorrupt) as e:
        return str(e)
    if not config_matches(manifest, config_hash):
        return f"{folder_url} was marked under config hash {manifest.get('config_hash')}, not {config_hash}"
    present = fs.list_files(folder_url)
    for entry in manifest["files"]:
        url = join(folder_url, entry["path"])
        if entry["path"] not in present:
            return f"{url} is listed in the folder manifest but missing"
        if present[entry["path"]] != entry["size"]:
            return f"{url} has {present[entry['path']]} bytes, the folder manifest says {entry['size']}"
        if verify_hashes and entry.get("sha256") and fs.sha256_file(url) != entry["sha256"]:
            return f"{url} does not match the sha256 in the folder manifest"
    return None


def is_folder_complete(folder_url: str, *, config_hash: str | None = None, verify_hashes: bool = False) -> bool:
    return folder_problem(folder_url, config_hash=config_hash, verify_hashes=verify_hashes) is None


def folder_problems(folder_url: str) -> list[str]:
    """Every file of a marked folder that is missing or altered (size and sha256 checked)."""
    try:
        manifest = folder_manifest(folder_url)
    except (ArtifactMissing, ArtifactCorrupt) as e:
        return [str(e)]
    present = fs.list_files(folder_url)
    problems = []
    for entry in manifest["files"]:
        url = join(folder_url, entry["path"])
        if entry["path"] not in present:
            problems.append(f"{url} is listed in the folder manifest but missing")
        elif present[entry["path"]] != entry["size"] or (
                entry.get("sha256") and fs.sha256_file_read(url) != entry["sha256"]):
            problems.append(f"{url} does not match the size or sha256 in the folder manifest")
    return problems
