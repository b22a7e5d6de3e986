"""The artifact store on s3:// through s3fs, against moto's S3-compatible server on loopback: atomic
writes, manifests written last, listings that see other processes' writes, sharded artifacts,
folder manifests, and the local mirrors of model folders. The slow test runs a whole tiny pipeline
with its run root in the bucket."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage import fs
from storage.artifacts import ArtifactMissing, incomplete_reason, is_complete, read_artifact, write_artifact
from storage.folders import folder_manifest, is_folder_complete, mark_folder_complete
from storage.fs import ArtifactCorrupt
from storage.manifest import DIR_MANIFEST, manifest_url
from storage.mirror import fetch_folder, local_model, mirror_dir, mirror_problem, publish_folder
from storage.paths import join
from storage.shards import ShardedArtifact
from tests.test_storage import sample_rows

REPO = Path(__file__).resolve().parents[1]
BUCKET = "siked-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, a bucket, and the standard AWS variables naming it."""
    s3fs = pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    endpoint = f"http://127.0.0.1:{_free_port()}"
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]),
                                              verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()  # instances keep the endpoint they were made with
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture
def root(s3_endpoint) -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """This test's SIKED_HOME (where local mirrors go)."""
    monkeypatch.setenv("SIKED_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def keys(url: str) -> list[str]:
    """Every key under `url`, hidden ones included, relative to it."""
    filesystem, path = fs.resolve(url)
    return sorted(p[len(path) + 1:] for p in filesystem.find(path))


def in_another_process(code: str) -> None:
    """Run `code` in a fresh interpreter (its own s3fs instance and caches), as another worker would."""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# --------------------------------------------------------------------------- files and manifests


def test_parquet_artifact_round_trip_leaves_only_the_file_and_its_manifest(root):
    url = join(root, "verified.parquet")
    manifest = write_artifact(url, sample_rows("verified", 4), "verified", config_hash="k1")
    assert read_artifact(url, "verified").num_rows == 4
    assert is_complete(url, kind="verified", config_hash="k1")
    assert not is_complete(url, kind="verified", config_hash="other")
    assert keys(root) == ["verified.parquet", "verified.parquet.manifest.json"]  # no temporary objects
    assert manifest["size"] == fs.size(url) and manifest["content_hash"] == fs.sha256_file(url)


def test_a_failed_write_publishes_nothing_and_keeps_the_old_object(root):
    url = join(root, "info.json")
    fs.write_json(url, {"v": 1})
    with pytest.raises(RuntimeError), fs.atomic_open(url) as f:
        f.write(b"half of a new version")
        raise RuntimeError("killed mid-write")
    assert fs.read_json(url) == {"v": 1}
    fresh = join(root, "fresh.bin")
    with pytest.raises(RuntimeError), fs.atomic_open(fresh) as f:
        f.write(b"x" * 1000)
        raise RuntimeError("killed mid-write")
    assert not fs.exists(fresh)
    assert keys(root) == ["info.json"]


def test_a_rewrite_that_fails_leaves_no_manifest_vouching_for_the_file(root, monkeypatch):
    """The manifest goes first and comes back last: a rewrite that dies in between is incomplete."""
    url = join(root, "samples.parquet")
    write_artifact(url, sample_rows("samples"), "samples")

    def dies(table, where, **_):
        where.write(b"PAR1 partial")
        raise RuntimeError("killed while writing Parquet")

    monkeypatch.setattr(pq, "write_table", dies)
    with pytest.raises(RuntimeError):
        write_artifact(url, sample_rows("samples", 5), "samples")
    assert not fs.exists(manifest_url(url))
    assert "no manifest" in incomplete_reason(url, kind="samples")
    with pytest.raises(ArtifactMissing, match="no manifest"):
        read_artifact(url, "samples")


def test_a_corrupted_object_is_detected(root):
    url = join(root, "problems.parquet")
    write_artifact(url, sample_rows("problems"), "problems")
    filesystem, path = fs.resolve(url)
    filesystem.pipe_file(path, filesystem.cat_file(path)[:-10])
    assert "bytes" in incomplete_reason(url, kind="problems")
    with pytest.raises(ArtifactCorrupt):
        read_artifact(url, "problems")


def test_list_files_skips_hidden_names(root):
    for name in ("a.txt", "sub/b.txt", ".hidden", "sub/.c.tmp-1"):
        fs.write_bytes(join(root, name), b"12345")
    assert fs.list_files(root) == {"a.txt": 5, "sub/b.txt": 5}


def test_a_manifest_written_by_another_process_is_seen_at_once(root):
    """s3fs caches directory listings per instance; with the cache on, `exists` would answer from
    the listing made before the other process wrote, and this process would never see the step done."""
    url = join(root, "iter-00", "verified.parquet")
    fs.write_bytes(join(root, "iter-00", "other.txt"), b"x")
    assert fs.list_files(join(root, "iter-00")) == {"other.txt": 1}  # the listing is now made
    assert not is_complete(url, kind="verified")
    in_another_process(f"from storage.artifacts import write_artifact; "
                       f"write_artifact({url!r}, {sample_rows('verified', 2)!r}, 'verified')")
    assert is_complete(url, kind="verified")
    assert read_artifact(url, "verified").num_rows == 2
    assert set(fs.list_files(join(root, "iter-00"))) == {"other.txt", "verified.parquet",
                                                         "verified.parquet.manifest.json"}


# --------------------------------------------------------------------------- sharded artifacts


def test_sharded_artifact_across_processes(root):
    url = join(root, "teacher_samples")
    out = ShardedArtifact(url, "samples", config_hash="k")
    out.write_shard(0, sample_rows("samples", 2))
    assert out.completed_shards() == {0}
    in_another_process(f"from storage.shards import ShardedArtifact; from tests.test_storage import sample_rows; "
                       f"ShardedArtifact({url!r}, 'samples', config_hash='k').write_shard(1, sample_rows('samples', 3))")
    assert out.completed_shards() == {0, 1}
    out.finalize(2)
    assert out.is_complete() and is_complete(url, kind="samples", config_hash="k")
    assert read_artifact(url, "samples").num_rows == 5
    assert keys(url) == ["_manifest.json", "shard-00000.parquet", "shard-00000.parquet.manifest.json",
                         "shard-00001.parquet", "shard-00001.parquet.manifest.json"]


def test_a_shard_without_manifest_does_not_count(root):
    url = join(root, "self_samples")
    out = ShardedArtifact(url, "samples")
    out.write_shard(0, sample_rows("samples", 2))
    fs.write_bytes(out.shard_url(1), b"PAR1 a killed shard write")  # no manifest beside it
    assert out.shard_files() == [0, 1] and out.completed_shards() == {0}
    with pytest.raises(ArtifactMissing):
        out.finalize(2)
    out.write_shard(1, sample_rows("samples", 1))
    out.finalize(2)
    assert out.read().num_rows == 3


# --------------------------------------------------------------------------- folders and mirrors


def model_folder(folder: Path, weights: bytes = b"w" * 4096) -> Path:
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    return folder


def test_folder_manifest_on_s3(root, tmp_path):
    local = model_folder(tmp_path / "student")
    url = join(root, "student")
    filesystem, path = fs.resolve(url)
    filesystem.put(str(local), path, recursive=True)
    mark_folder_complete(url, {"steps": 3}, config_hash="k")
    assert is_folder_complete(url, config_hash="k", verify_hashes=True)
    assert [e["path"] for e in folder_manifest(url)["files"]] == ["config.json", "model.safetensors",
                                                                  "tokenizer/tokenizer.json"]
    assert is_complete(url, config_hash="k")
    filesystem.pipe_file(f"{path}/model.safetensors", b"short")
    assert not is_folder_complete(url)


def test_publish_uploads_the_files_then_the_manifest(root, home):
    url = join(root, "iter-00", "student")
    local = mirror_dir(url)
    assert Path(local).is_relative_to(home / "mirror" / "s3" / BUCKET)
    model_folder(Path(local))
    manifest = publish_folder(local, url, {"steps": 4}, config_hash="k")
    assert is_folder_complete(url, config_hash="k", verify_hashes=True)
    assert fs.read_bytes(join(url, DIR_MANIFEST)) == (Path(local) / DIR_MANIFEST).read_bytes()
    assert manifest["info"] == {"steps": 4}
    assert mirror_problem(url) is None


def test_publish_failing_midway_leaves_the_folder_incomplete(root, home, tmp_path, monkeypatch):
    url = join(root, "student")
    publish_folder(str(model_folder(tmp_path / "v1")), url, config_hash="k")
    filesystem, _ = fs.resolve(url)

    def lost_connection(*args, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(filesystem, "put", lost_connection)  # the instance resolve() returns again
    with pytest.raises(OSError):
        publish_folder(str(model_folder(tmp_path / "v2", b"v" * 10)), url, config_hash="k")
    assert not is_folder_complete(url)
    assert incomplete_reason(url) is not None


def test_republish_removes_files_of_the_old_version(root, home, tmp_path):
    url = join(root, "student")
    old = model_folder(tmp_path / "v1")
    (old / "adapter.bin").write_bytes(b"a")
    publish_folder(str(old), url)
    publish_folder(str(model_folder(tmp_path / "v2", b"v" * 10)), url)
    assert "adapter.bin" not in fs.list_files(url)
    assert fs.size(join(url, "model.safetensors")) == 10


def test_fetch_downloads_once_and_again_when_incomplete_or_stale(root, home, tmp_path):
    url = join(root, "iter-01", "student")
    publish_folder(str(model_folder(tmp_path / "trained")), url, config_hash="k")
    local = Path(fetch_folder(url))  # another machine: nothing mirrored yet
    assert local == Path(mirror_dir(url)) and local.is_relative_to(home)
    assert (local / "model.safetensors").read_bytes() == b"w" * 4096 and (local / DIR_MANIFEST).is_file()
    assert local_model(url) == str(local)

    stamp = (local / "config.json").stat().st_mtime_ns
    assert fetch_folder(url) == str(local) and (local / "config.json").stat().st_mtime_ns == stamp  # reused

    (local / "model.safetensors").write_bytes(b"torn")  # an interrupted copy, or a damaged disk
    assert "bytes" in mirror_problem(url)
    fetch_folder(url)
    assert (local / "model.safetensors").read_bytes() == b"w" * 4096

    publish_folder(str(model_folder(tmp_path / "retrained", b"r" * 100)), url, config_hash="k2")
    assert "another version" in mirror_problem(url)
    fetch_folder(url)
    assert (local / "model.safetensors").read_bytes() == b"r" * 100
    assert not [p for p in local.parent.iterdir() if ".tmp-" in p.name]


def test_fetch_refuses_a_folder_that_is_not_complete(root, home):
    url = join(root, "student")
    fs.write_bytes(join(url, "config.json"), b"{}")  # training died before the upload finished
    with pytest.raises(ArtifactMissing, match="not marked complete"):
        fetch_folder(url)
    assert not os.path.exists(mirror_dir(url))


def test_fetch_rejects_a_download_that_does_not_match_the_manifest(root, home, tmp_path):
    url = join(root, "student")
    publish_folder(str(model_folder(tmp_path / "s")), url)
    filesystem, path = fs.resolve(url)
    filesystem.pipe_file(f"{path}/model.safetensors", b"x" * 4096)  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        fetch_folder(url)
    assert not os.path.exists(mirror_dir(url))


def test_local_paths_and_model_names_pass_through(tmp_path, home):
    folder = str(model_folder(tmp_path / "m"))
    assert mirror_dir(folder) == folder and fetch_folder(folder) == folder
    assert local_model(f"file://{folder}") == folder
    assert local_model("builtin:smollm2-135m-instruct") == "builtin:smollm2-135m-instruct"
    assert local_model("org/name") == "org/name"
    assert not (home / "mirror").exists()


def test_steps_load_a_remote_student_from_the_mirror(root, home, tmp_path):
    """Generation resolves a student URL to this machine's mirror; preflight accepts a complete
    remote model folder and names the problem of an incomplete one."""
    from distill.config import ConfigError, EngineConfig, SamplingConfig, TrainConfig
    from flows.commands.preflight import check_train
    from tasks.jobs.generate import GenerationJob, model_path_of

    url = join(root, "iter-00", "student")
    publish_folder(str(model_folder(tmp_path / "trained")), url)
    job = GenerationJob(problems_url="", output_url="", key="", engine=EngineConfig(kind="transformers"),
                        sampling=SamplingConfig(), model=url, strategies=(), shard_size=1, iteration=1,
                        source="student")
    assert model_path_of(job) == mirror_dir(url) and mirror_problem(url) is None
    check_train(TrainConfig(model=url))
    with pytest.raises(ConfigError, match="not marked complete"):
        check_train(TrainConfig(model=join(root, "iter-01", "student")))


# --------------------------------------------------------------------------- a whole run


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_run_with_its_run_root_on_s3(s3_endpoint, tmp_path, tiny_model_path, capsys, monkeypatch):
    """The whole pipeline with `runs_root=s3://...`: every artifact and manifest lands in the bucket,
    `siked status` reads them from there, and on another machine (a fresh SIKED_HOME, no mirrors)
    `siked resume` finds every step done and the student can be fetched from the bucket."""
    from flows.cli import main
    from storage.paths import layout_for_run_dir
    from storage.step_store import step_output
    from tests.test_flow import STEP_FUNCTIONS, task_states_of_last_run, tiny_run_overrides

    runs_root = f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"
    config = str(REPO / "configs/quickstart.yaml")
    # The tiny model has two layers, fewer than the quickstart's LoRA `last_layers`.
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path,
                                   **{"runs_root": runs_root, "train.lora.last_layers": "null"})
    assert main(["run", config, *overrides]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    assert run.startswith(f"{runs_root}/flow-")

    stored = fs.list_files(run)  # the run's own files
    for name in ("config.yaml", "steps.json", "iter-01/summary.json", "report/report.md"):
        assert name in stored, f"{name} not in the bucket"
    layout = layout_for_run_dir(run)
    outputs = {(step, role): step_output(layout, step, role) for step, role in [
        ("problems/train", "problems"), ("iter-00/generate", "samples"), ("iter-00/verify", "verified"),
        ("iter-00/train", "student"), ("iter-01/generate", "samples"), ("iter-01/mix", "train_set"),
        ("iter-01/train", "student"), ("iter-01/train", "metrics")]}
    for (step, role), url in outputs.items():  # every step output, in the step store in the bucket
        assert url.startswith(f"{runs_root}/steps/"), url
        assert fs.exists(url + ".manifest.json") or fs.exists(join(url, "_manifest.json")), f"{step} {role}"
    assert fs.exists(join(outputs[("iter-00/train", "student")], "config.json"))
    everything = fs.list_files(runs_root)
    assert not any("checkpoints/" in name for name in everything)  # checkpoints stay on the training machine
    assert not any(".tmp-" in name for name in keys(runs_root))
    student_url = outputs[("iter-01/train", "student")]
    assert is_folder_complete(student_url, verify_hashes=True)
    assert main(["verify", run]) == 0

    assert main(["status", run, "--json"]) == 0
    statuses = json.loads(capsys.readouterr().out)
    assert statuses and all(s["state"] == "done" for s in statuses), statuses

    other_home = tmp_path / "other-machine"
    monkeypatch.setenv("SIKED_HOME", str(other_home))
    assert main(["status", run]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{len(statuses)}/{len(statuses)} steps done")
    assert main(["resume", run]) == 0
    states = task_states_of_last_run()
    executed = {task: s for task, s in states.items() if task in STEP_FUNCTIONS}
    assert not executed, states  # a reused step starts no task run
    assert not (other_home / "mirror").exists()  # finished steps need no model
    student = fetch_folder(student_url)
    assert Path(student).is_relative_to(other_home) and (Path(student) / "config.json").is_file()


@pytest.mark.slow
def test_siked_train_cli_uploads_the_student(s3_endpoint, tiny_model_path, tmp_path, home, capsys):
    """`siked train` with a remote run root trains in the local mirror and uploads the student,
    its folder manifest last; the checkpoints stay local."""
    from flows.commands.train_cli import run_train_cli
    from tests.test_training_data import make_rows

    train_set = f"s3://{BUCKET}/sets-{uuid.uuid4().hex[:8]}/set.parquet"
    write_artifact(train_set, make_rows(8, words=2), "train_examples")
    config = tmp_path / "c.yaml"
    config.write_text("name: clitest\ntrain: {max_steps: 2, batch_size: 2, max_length: 160, checkpoint_every: 1}\n")
    runs_root = f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"
    assert run_train_cli(str(config), [f"train_set={train_set}", f"runs_root={runs_root}",
                                       f"train.model={tiny_model_path}"]) == 0
    student = capsys.readouterr().out.strip().splitlines()[-1]
    assert student.startswith(f"{runs_root}/steps/train/") and student.endswith("/student")  # the step store
    assert is_folder_complete(student, verify_hashes=True)
    assert "config.json" in fs.list_files(student)
    assert mirror_problem(student) is None  # the local copy training wrote is the uploaded version
    assert (Path(mirror_dir(student)).parent / "checkpoints" / "metrics.jsonl").is_file()
    assert not fs.exists(student.removesuffix("student") + "checkpoints")
    assert is_complete(student.removesuffix("student") + "train_metrics.parquet", kind="train_metrics")
