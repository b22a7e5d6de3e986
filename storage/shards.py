"""Sharded Parquet artifacts: a folder of `shard-00000.parquet` files appended one at a time.

A long step (generation over thousands of questions) writes shard after shard, each with its own
manifest, and continues after a crash from what it already wrote:

    out = ShardedArtifact(samples_url, "samples", config_hash=key)
    done = out.completed_shards()
    for index, batch in enumerate(batches):
        if index not in done:
            out.write_shard(index, generate(batch))
    out.finalize(len(batches))          # writes <folder>/_manifest.json
    table = out.read()                  # shards concatenated in index order, all verified

A shard file without a manifest (a killed write) does not count and is overwritten on the rerun.
The folder manifest lists every shard's rows and sha256; its content_hash is the sha256 over
the lines `"<index>:<shard sha256>"` in index order.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from storage import fs
from storage.fs import ArtifactCorrupt, ArtifactMissing
from storage.manifest import build_manifest, combined_hash, config_matches, dir_manifest_url
from storage.parquet_file import file_problem, read_file, read_manifest_of, write_file
from storage.paths import join
from storage.schemas import schema_for
from storage.tables import Rows, SchemaMismatch

SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")


class ShardsMissing(ArtifactMissing):
    """finalize() was asked for shards that are not complete; `.missing` lists their indices."""

    def __init__(self, message: str, missing: list[int]):
        super().__init__(message)
        self.missing = missing


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


class ShardedArtifact:
    """A folder artifact of `kind` built from numbered shards written under `config_hash`."""

    def __init__(self, url: str, kind: str, config_hash: str | None = None, *,
                 code_version: str | None = None, parents: Iterable[str | Mapping[str, Any]] = ()):
        schema_for(kind)  # fail early on an unknown kind
        self.url = str(url).rstrip("/")
        self.kind = kind
        self.config_hash = config_hash
        self.code_version = code_version
        self.parents = list(parents)

    @property
    def manifest_url(self) -> str:
        return dir_manifest_url(self.url)

    def shard_url(self, index: int) -> str:
        return join(self.url, shard_name(index))

    def shard_files(self) -> list[int]:
        """Indices of every shard file present, complete or not."""
        filesystem, folder = fs.resolve(self.url)
        if not filesystem.isdir(folder):
            return []
        names = (posixpath.basename(p) for p in filesystem.ls(folder, detail=False))
        return sorted(int(m.group(1)) for name in names if (m := SHARD_PATTERN.match(name)))

    def completed_shards(self, *, verify_hash: bool = True) -> set[int]:
        """Indices of the shards whose manifest matches (kind, config hash, size, sha256)."""
        return {
            index for index in self.shard_files()
            if file_problem(self.shard_url(index), kind=self.kind, config_hash=self.config_hash,
                            verify_hash=verify_hash) is None
        }

    def write_shard(self, index: int, rows: Rows, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write (or overwrite) shard `index`; returns its manifest. Unfinalizes the folder. `info`
        is kept under the shard manifest's "info" (its numbers add up in the folder's, `finalize`)."""
        if index < 0:
            raise ValueError(f"shard index must be >= 0, got {index}")
        fs.remove(self.manifest_url)  # the folder manifest no longer describes the shards
        extra = {"info": dict(info)} if info else {}
        return write_file(self.shard_url(index), rows, self.kind, config_hash=self.config_hash,
                          code_version=self.code_version, parents=self.parents, shard=index, **extra)

    def finalize(self, expected_shards: int | Iterable[int],
                 info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write `_manifest.json` when every expected shard is complete; else raise ShardsMissing.

        `expected_shards` is a count (shards 0..n-1) or the indices themselves. The folder
        manifest's "info" holds `info` and, for every number that each shard's "info" holds, its
        sum over the shards: shards written by an earlier, killed attempt count too.
        """
        indices = list(range(expected_shards)) if isinstance(expected_shards, int) else sorted(set(expected_shards))
        done = self.completed_shards()
        missing = [i for i in indices if i not in done]
        if missing:
            raise ShardsMissing(f"{self.url}: shards not complete: {missing}", missing)
        version, _ = schema_for(self.kind)
        entries, shard_infos = [], []
        for index in indices:
            shard = read_manifest_of(self.shard_url(index))
            entries.append({"index": index, "file": shard_name(index), "rows": shard["rows"],
                            "size": shard["size"], "content_hash": shard["content_hash"]})
            shard_infos.append(shard.get("info") or {})
        summed = {**summed_numbers(shard_infos), **(info or {})}
        extra = {"info": summed} if summed else {}
        manifest = build_manifest(
            type="sharded", kind=self.kind, schema_version=version, rows=sum(e["rows"] for e in entries),
            content_hash=_shards_hash(entries), config_hash=self.config_hash, code=self.code_version,
            parents=self.parents, at=self.url, shards=entries, **extra,
        )
        fs.write_json(self.manifest_url, manifest)
        return manifest

    def problem(self, *, verify_hash: bool = True) -> str | None:
        return sharded_problem(self.url, kind=self.kind, config_hash=self.config_hash, verify_hash=verify_hash)

    def is_complete(self, *, verify_hash: bool = True) -> bool:
        """True when finalized under this config hash and every listed shard still matches."""
        return self.problem(verify_hash=verify_hash) is None

    def read(self, *, columns: list[str] | None = None) -> pa.Table:
        return read_sharded(self.url, self.kind, columns=columns)

    def read_shard(self, index: int, *, columns: list[str] | None = None) -> pa.Table:
        return read_file(self.shard_url(index), self.kind, columns=columns)


def summed_numbers(infos: list[Mapping[str, Any]]) -> dict[str, Any]:
    """{name: sum} of every number that each of `infos` holds; a name some lack is left out (a sum
    over part of the shards would pass for the whole)."""
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return {name: sum(i[name] for i in infos) for name in (infos[0] if infos else {})
            if all(number(i.get(name)) for i in infos)}


def _shards_hash(entries: list[Mapping[str, Any]]) -> str:
    return combined_hash(f"{e['index']}:{e['content_hash']}" for e in entries)


def _folder_manifest(url: str, kind: str | None) -> dict[str, Any]:
    """The folder manifest of a sharded artifact, checked for type, kind, version and its own hash."""
    at = dir_manifest_url(url)
    if not fs.exists(at):
        raise ArtifactMissing(f"{url} is not finalized (no {posixpath.basename(at)})")
    manifest = fs.read_json(at)
    if manifest.get("type") != "sharded":
        raise SchemaMismatch(f"{url}: manifest says type {manifest.get('type')!r}, expected 'sharded'")
    if kind is not None:
        version, _ = schema_for(kind)
        if manifest.get("kind") != kind or manifest.get("schema_version") != version:
            raise SchemaMismatch(f"{url}: written as {manifest.get('kind')!r} schema "
                                 f"v{manifest.get('schema_version')}, read as {kind!r} schema v{version}")
    if _shards_hash(manifest.get("shards", [])) != manifest.get("content_hash"):
        raise ArtifactCorrupt(f"{at}: the shard list does not match its content hash")
    return manifest


def _shard_manifest(url: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A listed shard's own manifest, which must still be the one the folder manifest recorded."""
    shard_url = join(url, entry["file"])
    shard = read_manifest_of(shard_url)
    if shard.get("content_hash") != entry["content_hash"]:
        raise ArtifactCorrupt(f"{shard_url} was rewritten after {url} was finalized")
    return shard


def read_sharded(url: str, kind: str, *, columns: list[str] | None = None) -> pa.Table:
    """Every shard of a finalized sharded artifact, verified, concatenated in index order."""
    _, schema = schema_for(kind)
    manifest = _folder_manifest(url, kind)
    tables = [
        read_file(join(url, entry["file"]), kind, columns=columns, manifest=_shard_manifest(url, entry))
        for entry in manifest["shards"]
    ]
    if not tables:
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    return pa.concat_tables(tables)


def sharded_problem(url: str, *, kind: str | None = None, config_hash: str | None = None,
                    verify_hash: bool = True) -> str | None:
    """Why the sharded artifact at `url` is not complete, or None when it is."""
    try:
        manifest = _folder_manifest(url, kind)
        if not config_matches(manifest, config_hash):
            return f"{url} was written under config hash {manifest.get('config_hash')}, not {config_hash}"
        for entry in manifest["shards"]:
            shard_url = join(url, entry["file"])
            problem = file_problem(shard_url, kind=manifest["kind"], verify_hash=verify_hash,
                                   manifest=_shard_manifest(url, entry))
            if problem:
                return problem
    except (ArtifactMissing, ArtifactCorrupt, SchemaMismatch) as e:
        return str(e)
    return None


def sharded_problems(url: str) -> list[str]:
    """Every shard of a finalized sharded artifact that is missing or altered (sha256 checked)."""
    try:
        manifest = _folder_manifest(url, None)
    except (ArtifactMissing, ArtifactCorrupt, SchemaMismatch) as e:
        return [str(e)]
    problems = []
    for entry in manifest["shards"]:
        try:
            problem = file_problem(join(url, entry["file"]), verify_hash=True, manifest=_shard_manifest(url, entry),
                                   reread=True)
        except (ArtifactMissing, ArtifactCorrupt) as e:
            problem = str(e)
        if problem:
            problems.append(problem)
    return problems
