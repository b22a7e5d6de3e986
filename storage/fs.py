"""fsspec URLs and atomic writes: the only place that opens, renames and hashes files.

A URL is a local path, `file://...`, `memory://...` or `s3://...` (when s3fs is installed).
Every write goes to a hidden temporary name in the same folder and is renamed into place:
`os.replace` on local disks (atomic), fsspec `mv` elsewhere (a copy and a delete on memory:// and
S3, so not atomic there; that is why readers trust a manifest written last, never a file alone).

    from storage.fs import write_json, read_json
    write_json("memory://run/info.json", {"a": 1})
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

CHUNK = 4 << 20  # bytes read at a time when hashing


class ArtifactError(Exception):
    """Base of every storage error; the message names the file."""


class ArtifactMissing(ArtifactError, FileNotFoundError):
    """The file or its manifest does not exist (never written, or a write was killed)."""


class ArtifactCorrupt(ArtifactError):
    """The file exists but its bytes do not match its manifest, or cannot be parsed."""


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) of a URL or local path."""
    return url_to_fs(str(url))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def exists(url: str) -> bool:
    fs, path = resolve(url)
    return fs.exists(path)


def size(url: str) -> int:
    fs, path = resolve(url)
    return int(fs.size(path))


def remove(url: str) -> None:
    """Delete a file if it exists."""
    fs, path = resolve(url)
    if fs.exists(path):
        fs.rm_file(path)


def read_bytes(url: str) -> bytes:
    fs, path = resolve(url)
    if not fs.isfile(path):
        raise ArtifactMissing(f"{url} does not exist")
    return fs.cat_file(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str) -> str:
    """sha256 of a file's bytes, read in chunks (for files too big to hold in memory)."""
    fs, path = resolve(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder_url: str) -> dict[str, int]:
    """{relative path: size} of every file under a folder, recursively, hidden names skipped."""
    fs, root = resolve(folder_url)
    root = root.rstrip("/")
    found = fs.find(root, detail=True) if fs.isdir(root) else {}
    files = {}
    for path, info in found.items():
        rel = posixpath.relpath(path, root)
        if info.get("type") == "file" and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = int(info["size"])
    return dict(sorted(files.items()))


def _temp_path(path: str) -> str:
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temps(url: str) -> None:
    """Delete temporary files a killed write of `url` left beside it."""
    fs, path = resolve(url)
    folder, name = posixpath.split(path)
    if fs.isdir(folder):
        for other in fs.ls(folder, detail=False):
            if posixpath.basename(other).startswith(f".{name}.tmp-"):
                fs.rm_file(other)


@contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open `url` for binary writing under a temporary name; rename into place on success only.

    If the body raises, the temporary file is deleted and `url` is untouched. If the process is
    killed, only a hidden `.<name>.tmp-*` file remains, which no reader looks at.
    """
    fs, path = resolve(url)
    tmp = _temp_path(path)
    try:
        if is_local(fs):
            os.makedirs(posixpath.dirname(path), exist_ok=True)  # object stores have no folders to make
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with fs.open(tmp, "wb") as f:
                yield f
            fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm_file(tmp)
        raise


class HashingWriter:
    """A write-only file wrapper that hashes and counts the bytes passing through it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url) as f:
        f.write(data)


def write_json(url: str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(url: str) -> Any:
    """Parse a JSON file; ArtifactMissing when absent, ArtifactCorrupt when not valid JSON."""
    data = read_bytes(url)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactCorrupt(f"{url} is not valid JSON: {e}") from None

