"""Local mirrors of folder artifacts kept in a remote run root (s3://, memory://, ...).

Training writes and vLLM reads model folders on a local disk. With a remote run root, a model
folder lives twice: as the shared copy under the run root, and as a local mirror under
`$SIKED_HOME/mirror/<protocol>/<bucket and key>` (one per machine, keyed by the full URL, so by
the step's key and folder):

    local = mirror_dir(student_url)                  # the URL itself when the run root is local
    train(..., output_dir=local)
    publish_folder(local, student_url, info, config_hash=key)   # upload, manifest last
    ...
    path = local_model(student_url)     # on any machine: download if the mirror is missing,
                                        # incomplete or stale (judged by the folder manifest)

A mirror is complete when its `_manifest.json` has the remote manifest's content hash and every
listed file has its size. Downloads go to a hidden sibling folder, are checked against the
manifest (sizes and sha256), and are renamed into place with the manifest written last, under a
file lock so two processes on one machine never download the same folder at once. Deleting a
mirror is always safe: it is fetched again when needed.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storage import fs
from storage.folders import folder_manifest, folder_problem, mark_folder_complete, unmark_folder_complete
from storage.fs import ArtifactCorrupt
from storage.manifest import DIR_MANIFEST, dir_manifest_url
from storage.paths import join, mirrors_dir


def mirror_dir(url: str) -> str:
    """The local folder standing for `url`: `url` itself (as a path) when it is local, else its mirror."""
    filesystem, path = fs.resolve(url)
    if fs.is_local(filesystem):
        return path
    protocol = filesystem.protocol if isinstance(filesystem.protocol, str) else filesystem.protocol[0]
    return join(str(mirrors_dir()), protocol, path)  # join: a `..` in the URL cannot leave the mirrors folder


def publish_folder(local_dir: str, url: str, info: Mapping[str, Any] | None = None, *,
                   config_hash: str | None = None, code_version: str | None = None,
                   parents: Iterable[str | Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Mark `local_dir` complete and, when `url` is elsewhere, upload it there; returns the manifest.

    The remote manifest is removed first and written last (the local one's bytes), so the remote
    folder never looks complete while files are missing, and the local copy is already a complete
    mirror of it. Files left at `url` by an earlier version and not in the new manifest are deleted.
    """
    manifest = mark_folder_complete(local_dir, info, config_hash=config_hash, code_version=code_version,
                                    parents=parents, at=url)
    if os.path.abspath(local_dir) == os.path.abspath(mirror_dir(url)) and not fs.is_remote_url(url):
        return manifest
    unmark_folder_complete(url)
    filesystem, root = fs.resolve(url)
    listed = [entry["path"] for entry in manifest["files"]]
    for stale in set(fs.list_files(url)) - set(listed) - {DIR_MANIFEST}:
        filesystem.rm_file(posixpath.join(root.rstrip("/"), stale))
    if listed:  # one batched call: s3fs uploads the files concurrently
        filesystem.put([os.path.join(local_dir, p) for p in listed],
                       [posixpath.join(root.rstrip("/"), p) for p in listed])
    problem = _listed_problem(url, manifest)
    if problem:
        raise ArtifactCorrupt(f"upload of {local_dir} to {url} is incomplete: {problem}")
    fs.write_bytes(dir_manifest_url(url), fs.read_bytes(dir_manifest_url(local_dir)))
    return manifest


def _listed_problem(url: str, manifest: Mapping[str, Any]) -> str | None:
    present = fs.list_files(url)
    for entry in manifest["files"]:
        if present.get(entry["path"]) != entry["size"]:
            return f"{join(url, entry['path'])} has {present.get(entry['path'])} bytes, expected {entry['size']}"
    return None


def mirror_problem(url: str) -> str | None:
    """Why the local mirror of `url` is not a complete copy of its current version, or None."""
    remote = folder_manifest(url)  # ArtifactMissing when the remote folder is not complete
    local = mirror_dir(url)
    problem = folder_problem(local)
    if problem:
        return problem
    if fs.read_json(dir_manifest_url(local)).get("content_hash") != remote["content_hash"]:
        return f"{local} holds another version of {url}"
    return None


def fetch_folder(url: str) -> str:
    """A local folder holding the complete folder artifact at `url`, downloaded when needed.

    A local `url` is returned as a path, untouched. ArtifactMissing when the folder at `url` has no
    manifest; ArtifactCorrupt when a downloaded file does not match it.
    """
    local = mirror_dir(url)
    if not fs.is_remote_url(url):
        return local
    folder_manifest(url)  # fail early, before taking the lock, when there is nothing to fetch
    with _locked(local):
        if mirror_problem(url) is None:
            return local
        _download(url, local)
    return local


def local_model(spec: str) -> str:
    """A model name usable by the loaders: a remote folder URL becomes its local mirror
    (downloaded when needed), `file://` becomes a path, anything else is returned as is."""
    if "://" not in spec:
        return spec
    return fetch_folder(spec)


@contextmanager
def _locked(local: str) -> Iterator[None]:
    parent, name = os.path.split(local.rstrip("/"))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{name}.lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(url: str, local: str) -> None:
    """Fetch every file of the remote manifest into a hidden sibling, check it, swap it into place."""
    parent, name = os.path.split(local.rstrip("/"))
    for stale in Path(parent).glob(f".{name}.tmp-*"):  # left by a killed download
        shutil.rmtree(stale, ignore_errors=True)
    # One read: the files fetched, checked and the manifest written are of the same version.
    manifest_bytes = fs.read_bytes(dir_manifest_url(url))
    manifest = fs.parse_json(manifest_bytes, dir_manifest_url(url))
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        filesystem, root = fs.resolve(url)
        listed = [entry["path"] for entry in manifest["files"]]
        for rel in listed:
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        filesystem.get([posixpath.join(root.rstrip("/"), p) for p in listed], [os.path.join(tmp, p) for p in listed])
        _check_download(url, tmp, manifest)
        with open(os.path.join(tmp, DIR_MANIFEST), "wb") as handle:
            handle.write(manifest_bytes)
        if os.path.lexists(local):
            shutil.rmtree(local)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_download(url: str, tmp: str, manifest: Mapping[str, Any]) -> None:
    for entry in manifest["files"]:
        path = os.path.join(tmp, entry["path"])
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != entry["size"]:
            raise ArtifactCorrupt(f"{join(url, entry['path'])}: downloaded {size} bytes, "
                                  f"its folder manifest says {entry['size']}")
        if entry.get("sha256") and fs.sha256_file(path) != entry["sha256"]:
            raise ArtifactCorrupt(f"{join(url, entry['path'])} does not match the sha256 in its folder manifest")
