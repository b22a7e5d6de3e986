"""The Parquet artifact store: round trips, casting, corruption, schema and config checks, JSON and
folder manifests, on local paths, file:// URLs and memory://."""

from __future__ import annotations

import uuid

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import fs
from storage.artifacts import (
    ArtifactCorrupt,
    ArtifactMissing,
    SchemaMismatch,
    artifact_ref,
    incomplete_reason,
    is_complete,
    read_artifact,
    read_manifest,
    to_table,
    write_artifact,
)
from storage.folders import folder_manifest, is_folder_complete, mark_folder_complete, unmark_folder_complete
from storage.manifest import code_version, manifest_url
from storage.paths import join
from storage.schemas import SCHEMAS, schema_for


@pytest.fixture(params=["local", "file", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
    elif request.param == "file":
        yield f"file://{tmp_path}"
    else:
        url = f"memory://siked-test-{uuid.uuid4().hex}"
        yield url
        memory = fsspec.filesystem("memory")
        if memory.exists(url):
            memory.rm(url, recursive=True)


def sample_rows(kind: str, n: int = 3) -> list[dict]:
    """`n` rows of `kind` with a value of the right type in every column and one null per row."""
    _, schema = schema_for(kind)
    rows = []
    for i in range(n):
        row = {}
        for j, field in enumerate(schema):
            if j == (i + 1) % len(schema):
                row[field.name] = None
            elif pa.types.is_string(field.type):
                row[field.name] = f"{field.name}-{i}"
            elif pa.types.is_integer(field.type):
                row[field.name] = i * 10 + j
            elif pa.types.is_boolean(field.type):
                row[field.name] = (i + j) % 2 == 0
            elif pa.types.is_list(field.type):  # token ids and log-probabilities
                row[field.name] = list_value(field.type, [i, j])
            else:
                row[field.name] = i + 0.25 * j
        rows.append(row)
    return rows


def list_value(list_type: pa.DataType, values: list[int]) -> list:
    """`values` shaped as `list_type` (a list, or a list of lists), floats exact in float32."""
    inner = list_type.value_type
    if pa.types.is_list(inner):
        return [list_value(inner, values)]
    return [v + 0.25 for v in values] if pa.types.is_floating(inner) else list(values)


def flip_byte(url: str, offset: int) -> None:
    data = bytearray(fs.read_bytes(url))
    data[offset] ^= 0xFF
    filesystem, path = fs.resolve(url)
    filesystem.pipe_file(path, bytes(data))


def leftovers(folder_url: str) -> list[str]:
    filesystem, path = fs.resolve(folder_url)
    if not filesystem.isdir(path):
        return []
    return [p for p in filesystem.ls(path, detail=False) if ".tmp-" in p]


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_round_trip_every_kind(root, kind):
    url = join(root, f"{kind}.parquet")
    rows = sample_rows(kind)
    manifest = write_artifact(url, rows, kind, config_hash="cfg-1", code_version="test")
    version, schema = schema_for(kind)
    assert manifest["kind"] == kind and manifest["schema_version"] == version
    assert manifest["rows"] == len(rows) and manifest["config_hash"] == "cfg-1"
    assert manifest["code_version"] == "test" and manifest["created"]
    assert manifest["content_hash"] == fs.sha256_bytes(fs.read_bytes(url))
    assert fs.exists(manifest_url(url))
    assert read_manifest(url) == manifest

    table = read_artifact(url, kind)
    assert table.schema.equals(schema, check_metadata=False)
    assert table.to_pylist() == rows
    assert is_complete(url, kind=kind, config_hash="cfg-1")
    assert leftovers(root) == []


def test_inputs_dataframe_table_and_dicts_agree(root):
    rows = sample_rows("train_metrics", 4)
    write_artifact(join(root, "a.parquet"), rows, "train_metrics")
    by_dicts = read_artifact(join(root, "a.parquet"), "train_metrics")
    write_artifact(join(root, "b.parquet"), pd.DataFrame(rows), "train_metrics")
    write_artifact(join(root, "c.parquet"), pa.Table.from_pylist(rows), "train_metrics")
    assert read_artifact(join(root, "b.parquet"), "train_metrics").equals(by_dicts)
    assert read_artifact(join(root, "c.parquet"), "train_metrics").equals(by_dicts)


def test_missing_nullable_columns_are_filled_and_order_follows_schema(root):
    url = join(root, "problems.parquet")
    write_artifact(url, [{"question": "1+1?", "id": "p1", "answer": 2}], "problems")
    table = read_artifact(url, "problems")
    assert table.column_names == schema_for("problems")[1].names
    assert table.to_pylist()[0] == {"id": "p1", "benchmark": None, "split": None, "source": None,
                                    "question": "1+1?", "answer": 2.0, "answer_text": None, "reference": None}


def test_empty_rows_and_column_subset(root):
    url = join(root, "empty.parquet")
    assert write_artifact(url, [], "predictions")["rows"] == 0
    assert read_artifact(url, "predictions").num_rows == 0
    url = join(root, "full.parquet")
    write_artifact(url, sample_rows("samples"), "samples")
    assert read_artifact(url, "samples", columns=["question_id"]).column_names == ["question_id"]


def test_pandas_integers_with_missing_values_cast_back(root):
    url = join(root, "s.parquet")
    frame = pd.DataFrame({"question_id": ["a", "b"], "sample_index": [1, None], "seed": [7, 8]})
    write_artifact(url, frame, "samples")
    assert read_artifact(url, "samples").column("sample_index").to_pylist() == [1, None]


def test_rewrite_replaces_and_parents_are_recorded(root):
    parent = join(root, "problems.parquet")
    parent_manifest = write_artifact(parent, sample_rows("problems"), "problems")
    child = join(root, "samples.parquet")
    write_artifact(child, sample_rows("samples", 2), "samples", parents=[parent])
    manifest = write_artifact(child, sample_rows("samples", 5), "samples", parents=[parent])
    assert manifest["parents"] == [{"path": parent, "content_hash": parent_manifest["content_hash"]}]
    assert read_artifact(child, "samples").num_rows == 5
    assert artifact_ref(child) == {"path": child, "kind": "samples", "rows": 5,
                                   "content_hash": manifest["content_hash"]}


def test_code_version_names_the_package():
    assert code_version().startswith("0.") or code_version().startswith("0+")
    assert code_version() == code_version()


# -- casting errors ------------------------------------------------------------------------------


def test_extra_columns_are_named(root):
    with pytest.raises(SchemaMismatch, match="bogus, other"):
        write_artifact(join(root, "x.parquet"), [{"id": "1", "bogus": 1, "other": 2}], "problems")


@pytest.mark.parametrize("rows, column", [
    ([{"answer": "12"}], "answer"),           # a string is never parsed into a number
    ([{"id": 3}], "id"),                      # a number is not a string
    ([{"answer": 1}, {"answer": "x"}], "answer"),  # mixed types
])
def test_type_mismatch_names_the_column(root, rows, column):
    url = join(root, "x.parquet")
    with pytest.raises(SchemaMismatch, match=f"'{column}'") as info:
        write_artifact(url, rows, "problems")
    assert url in str(info.value)
    assert not fs.exists(url) and not fs.exists(manifest_url(url))


def test_fractional_value_in_integer_column_is_refused():
    with pytest.raises(SchemaMismatch, match="sample_index"):
        to_table(pd.DataFrame({"sample_index": [1.5]}), "samples")
    with pytest.raises(SchemaMismatch, match="sample_index"):
        to_table([{"sample_index": 2.5}], "samples")


def test_unknown_kind_and_wrong_input_type():
    with pytest.raises(KeyError, match="unknown artifact kind"):
        to_table([], "nope")
    with pytest.raises(TypeError, match="list of dicts"):
        to_table("not rows", "problems")


# -- corruption, missing files, schema and config mismatches ----------------------------------


@pytest.fixture
def written(root):
    url = join(root, "verified.parquet")
    write_artifact(url, sample_rows("verified", 20), "verified", config_hash="cfg-1")
    return url


def test_flipped_byte_is_detected_and_named(written):
    flip_byte(written, fs.size(written) // 2)
    with pytest.raises(ArtifactCorrupt, match="truncated or altered") as info:
        read_artifact(written, "verified")
    assert written in str(info.value)
    assert not is_complete(written)
    assert written in incomplete_reason(written)
    assert is_complete(written, verify_hash=False)  # same size: only the hash can tell


def test_truncated_file_is_detected_and_named(written):
    filesystem, path = fs.resolve(written)
    filesystem.pipe_file(path, fs.read_bytes(written)[:-100])
    with pytest.raises(ArtifactCorrupt) as info:
        read_artifact(written, "verified")
    assert written in str(info.value)
    assert not is_complete(written, verify_hash=False)


def test_deleted_file_or_manifest_reads_as_missing(written):
    fs.remove(manifest_url(written))
    with pytest.raises(ArtifactMissing, match="no manifest") as info:
        read_artifact(written, "verified")
    assert written in str(info.value)
    assert not is_complete(written)
    fs.remove(written)
    with pytest.raises(ArtifactMissing, match="does not exist"):
        read_artifact(written, "verified")


def test_data_file_gone_but_manifest_present(written):
    fs.remove(written)
    with pytest.raises(ArtifactMissing, match="though its manifest does"):
        read_artifact(written, "verified")
    assert not is_complete(written)


def test_unreadable_manifest_is_corrupt(written):
    filesystem, path = fs.resolve(manifest_url(written))
    filesystem.pipe_file(path, b"{not json")
    with pytest.raises(ArtifactCorrupt, match="not valid JSON"):
        read_artifact(written, "verified")
    assert not is_complete(written)


def test_read_as_another_kind_is_a_schema_mismatch(written):
    with pytest.raises(SchemaMismatch, match="written as 'verified'.*read as 'samples'"):
        read_artifact(written, "samples")
    assert not is_complete(written, kind="samples")
    assert is_complete(written, kind="verified")


def test_schema_version_bump_invalidates(written, monkeypatch):
    _, schema = SCHEMAS["verified"]
    monkeypatch.setitem(SCHEMAS, "verified", (2, schema))
    with pytest.raises(SchemaMismatch, match="v1.*v2"):
        read_artifact(written, "verified")
    assert not is_complete(written, kind="verified")


def test_stored_schema_that_differs_from_manifest_claim(root):
    """A file whose manifest matches its bytes but whose columns are not the declared ones."""
    url = join(root, "odd.parquet")
    write_artifact(url, sample_rows("problems"), "problems")
    filesystem, path = fs.resolve(url)
    with filesystem.open(path, "wb") as f:
        pq.write_table(pa.table({"id": ["1"], "answer": ["not a float"]}), f)
    manifest = read_manifest(url)
    data = fs.read_bytes(url)
    manifest.update(size=len(data), content_hash=fs.sha256_bytes(data), rows=1)
    fs.write_json(manifest_url(url), manifest)
    with pytest.raises(SchemaMismatch, match="missing benchmark.*answer is string") as info:
        read_artifact(url, "problems")
    assert url in str(info.value)


def test_config_hash_mismatch_is_not_complete(written):
    assert is_complete(written, config_hash="cfg-1")
    assert not is_complete(written, config_hash="cfg-2")
    assert "cfg-2" in incomplete_reason(written, config_hash="cfg-2")
    write_artifact(written, sample_rows("verified", 2), "verified", config_hash="cfg-2")
    assert is_complete(written, config_hash="cfg-2") and not is_complete(written, config_hash="cfg-1")


def test_never_written_is_not_complete(root):
    url = join(root, "nothing.parquet")
    assert not is_complete(url)
    assert "no manifest" in incomplete_reason(url)
    with pytest.raises(ArtifactMissing, match=url):
        read_artifact(url, "problems")


# -- atomic writes and JSON ---------------------------------------------------------------------


def test_failed_write_leaves_nothing(root):
    url = join(root, "boom.bin")
    with pytest.raises(RuntimeError), fs.atomic_open(url) as f:
        f.write(b"partial")
        raise RuntimeError("writer failed")
    assert not fs.exists(url)
    assert leftovers(root) == []


def test_json_round_trip_and_errors(root):
    url = join(root, "sub", "info.json")
    fs.write_json(url, {"b": [1, 2], "a": "x"})
    assert fs.read_json(url) == {"a": "x", "b": [1, 2]}
    fs.write_json(url, {"replaced": True})
    assert fs.read_json(url) == {"replaced": True}
    assert leftovers(join(root, "sub")) == []
    with pytest.raises(ArtifactMissing, match="missing.json"):
        fs.read_json(join(root, "missing.json"))
    fs.write_bytes(join(root, "bad.json"), b"[1,")
    with pytest.raises(ArtifactCorrupt, match="bad.json"):
        fs.read_json(join(root, "bad.json"))


# -- folders made by other code -----------------------------------------------------------------


@pytest.fixture
def model_folder(root):
    folder = join(root, "model")
    fs.write_bytes(join(folder, "config.json"), b'{"layers": 2}')
    fs.write_bytes(join(folder, "weights", "model.safetensors"), b"\x00" * 1000)
    return folder


def test_folder_mark_and_check(model_folder):
    assert not is_folder_complete(model_folder)
    manifest = mark_folder_complete(model_folder, {"model": "tiny"}, config_hash="m1")
    assert [f["path"] for f in manifest["files"]] == ["config.json", "weights/model.safetensors"]
    assert all(f["sha256"] for f in manifest["files"]) and manifest["info"] == {"model": "tiny"}
    assert folder_manifest(model_folder) == manifest
    assert is_folder_complete(model_folder, config_hash="m1", verify_hashes=True)
    assert is_complete(model_folder, config_hash="m1")
    assert not is_folder_complete(model_folder, config_hash="m2")
    # A same-size change is only seen when hashes are checked.
    fs.write_bytes(join(model_folder, "weights", "model.safetensors"), b"\x01" * 1000)
    assert is_folder_complete(model_folder)
    assert not is_folder_complete(model_folder, verify_hashes=True)
    fs.write_bytes(join(model_folder, "config.json"), b"{}")
    assert not is_folder_complete(model_folder)
    mark_folder_complete(model_folder, hash_files=False)
    assert is_folder_complete(model_folder, verify_hashes=True)
    fs.remove(join(model_folder, "config.json"))
    assert not is_folder_complete(model_folder)


def test_folder_unmark_and_empty(model_folder, root):
    mark_folder_complete(model_folder)
    unmark_folder_complete(model_folder)
    assert not is_folder_complete(model_folder)
    with pytest.raises(ArtifactMissing, match="is not marked complete"):
        folder_manifest(model_folder)
    with pytest.raises(ArtifactMissing, match="no files"):
        mark_folder_complete(join(root, "empty"))


@pytest.mark.parametrize("root, parts", [
    ("/srv/runs", ("steps", "evaluate", "k", "data-x/../../../../../out/pwned-label.parquet")),
    ("runs", ("..",)),
    ("memory://runs", ("../elsewhere",)),
    ("s3://bucket/runs", ("a/../../other-bucket-key",)),
    ("file:///srv/runs", ("x", "../../etc")),
])
def test_join_refuses_a_path_that_climbs_out_of_its_root(root, parts):
    """Every run, step and output path is built by `join`: a name that climbs out with `..` is
    refused, locally and on fsspec URLs, before anything is written."""
    from storage.paths import PathOutsideRoot

    with pytest.raises(PathOutsideRoot, match="leads outside"):
        join(root, *parts)


def test_join_keeps_paths_inside_their_root():
    assert join("/srv/runs/", "iter-00", "student") == "/srv/runs/iter-00/student"
    assert join("memory://runs", "a..b", "x/../y") == "memory://runs/a..b/x/../y"  # stays inside
    assert join("s3://bucket/runs", "steps") == "s3://bucket/runs/steps"


def test_a_mirror_never_lies_outside_the_mirrors_folder(tmp_path, monkeypatch):
    """A remote URL's local mirror is under $SIKED_HOME/mirror, whatever `..` the URL holds."""
    from storage.mirror import mirror_dir
    from storage.paths import PathOutsideRoot

    monkeypatch.setenv("SIKED_HOME", str(tmp_path))
    assert mirror_dir("memory://runs/a/student") == f"{tmp_path}/mirror/memory/runs/a/student"
    with pytest.raises(PathOutsideRoot):
        mirror_dir("memory://runs/../../../../../pwned")


def test_info_is_kept_in_the_manifest_and_leaves_the_content_hash_alone(root):
    url = join(root, "verified.parquet")
    plain = write_artifact(url, sample_rows("verified", 3), "verified")
    counted = write_artifact(url, sample_rows("verified", 3), "verified", info={"seconds": 0.5})
    assert "info" not in plain and counted["info"] == {"seconds": 0.5}
    assert read_manifest(url)["info"] == {"seconds": 0.5}
    assert counted["content_hash"] == plain["content_hash"]
