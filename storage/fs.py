"""fsspec URLs and atomic writes: the only place that opens, renames and hashes files.

A URL is a local path, `file://...`, `memory://...` or `s3://...` (when s3fs is installed).
No write is ever visible half done:

- local disks: a hidden temporary name in the same folder, then `os.replace` (atomic);
- object stores (s3://, gs://, az://, ...): straight to the final key, since an object appears only
  when its single PUT or its multipart upload completes; a failed write aborts the upload instead
  of closing the file, so nothing is committed (closing would publish the bytes written so far);
- anything else (memory://): a temporary name, then fsspec `mv`.

Readers still trust a manifest written last, never a file alone. Object stores are opened with
their directory-listing cache off: a process must see the manifests other processes write, and
s3fs otherwise answers `exists` from a listing it made earlier.

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
# Protocols whose writes commit a whole object at once (s3fs, gcsfs, adlfs).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})


class ArtifactError(Exception):
    """Base of every storage error; the message names the file."""


class ArtifactMissing(ArtifactError, FileNotFoundError):
    """The file or its manifest does not exist (never written, or a write was killed)."""


class ArtifactCorrupt(ArtifactError):
    """The file exists but its bytes do not match its manifest, or cannot be parsed."""


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) of a URL or local path.

    Endpoint and credentials come from the environment or fsspec's config (docs/deployment.md),
    never from a run's config. Object stores get `use_listings_cache=False` (see above).
    """
    url = str(url)
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in OBJECT_STORES:
        return url_to_fs(url, use_listings_cache=False)
    return url_to_fs(url)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in OBJECT_STORES for p in protocols)


def is_remote_url(url: str) -> bool:
    """True for a URL outside the local file system (s3://, memory://, ...)."""
    return "://" in str(url) and not is_local(resolve(url)[0])


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


# sha256 of large local files, remembered by the file's identity (real path, inode, size, mtime and
# ctime, in nanoseconds): completion checks hash every output a run reuses, and a student's weights
# unchanged since they were last hashed, in this process or an earlier one of this home, are not
# read again. Any write through the file system moves mtime or ctime (ctime cannot be set back), so a
# changed file is always hashed again; what no write explains (a disk's bit rot) is left to
# `siked verify`, which reads every byte. Small files are hashed every time.
_MEMO_MIN_BYTES = 1 << 20
_hash_memo: dict[tuple, str] = {}


def _hash_store() -> str:
    from storage.paths import siked_home

    return str(siked_home() / "cache" / "sha256.sqlite")


def _stored_hash(identity: tuple) -> str | None:
    import sqlite3

    try:
        with sqlite3.connect(_hash_store(), timeout=5) as db:
            row = db.execute("SELECT sha256 FROM files WHERE identity = ?", (json.dumps(identity),)).fetchone()
    except sqlite3.Error:  # no store yet, or busy: hash the file
        return None
    return row[0] if row else None


def _store_hash(identity: tuple, digest: str) -> None:
    import sqlite3

    try:
        os.makedirs(os.path.dirname(_hash_store()), exist_ok=True)
        with sqlite3.connect(_hash_store(), timeout=5) as db:
            db.execute("CREATE TABLE IF NOT EXISTS files (identity TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (json.dumps(identity), digest))
    except (OSError, sqlite3.Error):  # a memo only: the next check hashes the file again
        pass


def sha256_file(url: str) -> str:
    """sha256 of a file's bytes, read in chunks (for files too big to hold in memory)."""
    fs, path = resolve(url)
    identity = None
    if is_local(fs):
        st = os.stat(path)
        if st.st_size >= _MEMO_MIN_BYTES:
            identity = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            known = _hash_memo.get(identity) or _stored_hash(identity)
            if known:
                _hash_memo[identity] = known
                return known
    digest = sha256_file_read(url)
    if identity is not None:
        _hash_memo[identity] = digest
        _store_hash(identity, digest)
    return digest


def sha256_file_read(url: str) -> str:
    """sha256 of every byte of a file, read now whatever was remembered (`siked verify`, export)."""
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
    if is_object_store(fs):
        return  # nothing is written there under a temporary name
    folder, name = posixpath.split(path)
    if fs.isdir(folder):
        for other in fs.ls(folder, detail=False):
            if posixpath.basename(other).startswith(f".{name}.tmp-"):
                fs.rm_file(other)


@contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open `url` for binary writing; it appears, whole, only when the body succeeds.

    Locally and on memory://: under a temporary name renamed into place; if the body raises, the
    temporary file is deleted and `url` is untouched, and a killed process leaves only a hidden
    `.<name>.tmp-*` file, which no reader looks at. On an object store: straight to the key (see
    the module docstring); a killed process leaves at most an unfinished multipart upload, which
    is never listed or read (a bucket lifecycle rule can expire them).
    """
    fs, path = resolve(url)
    if is_object_store(fs):
        with _object_open(fs, path) as f:
            yield f
        return
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


@contextmanager
def _object_open(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """Write one object in place: committed by close() on success, discarded on failure."""
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        f.discard()  # aborts a multipart upload; a small file was only ever in memory
        f.closed = True  # so that garbage collection does not close, and so commit, it
        raise
    f.close()


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
    return parse_json(read_bytes(url), url)


def parse_json(data: bytes, url: str) -> Any:
    """Parse the bytes read from `url`; ArtifactCorrupt when they are not valid JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactCorrupt(f"{url} is not valid JSON: {e}") from None

