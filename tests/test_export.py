"""`siked export` refusals, without a pipeline run (the slow full-run test in test_flow.py exports a
real student and loads it with transformers and vLLM)."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from flows.commands.export import ExportError, export_student


def fake_run(tmp_path, finished: bool):
    """A run folder whose index names one iteration-0 student, marked complete or not."""
    from storage.folders import mark_folder_complete

    run = tmp_path / "runs" / "r-1"
    student = tmp_path / "runs" / "steps" / "train" / "k" / "student"
    student.mkdir(parents=True)
    (student / "config.json").write_text("{}")
    if finished:
        mark_folder_complete(str(student), {"steps": 3})
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    steps = [{"name": "iter-00/train", "kind": "train", "iteration": 0, "key": "k", "dir": str(student.parent),
              "inputs": {"train_set": "iter-00/distill_set"}, "outputs": {"student": str(student)}}]
    (run / "steps.json").write_text(json.dumps({"format": 1, "run": "r-1", "steps": steps}))
    return run


def test_an_unfinished_student_or_a_missing_iteration_is_refused(tmp_path):
    run = fake_run(tmp_path, finished=False)
    with pytest.raises(ExportError, match="not finished"):
        export_student(str(run), tmp_path / "out")
    with pytest.raises(ExportError, match="no iteration 2"):
        export_student(str(run), tmp_path / "out", iteration=2)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_target_is_refused_and_left_alone(tmp_path, capsys):
    run = fake_run(tmp_path, finished=True)
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    assert main(["export", str(run), "--to", str(target)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


def with_weights(run, tmp_path):
    """The fake run's student with a weights file, marked complete again; returns the weights."""
    from storage.folders import mark_folder_complete

    student = tmp_path / "runs" / "steps" / "train" / "k" / "student"
    (student / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    mark_folder_complete(str(student), {"steps": 3})
    return student / "model.safetensors"


def test_a_damaged_student_is_refused_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("flows.commands.export.model_card", lambda steps, train, config: "card\n")
    run = fake_run(tmp_path, finished=True)
    weights = with_weights(run, tmp_path)
    data = bytearray(weights.read_bytes())
    data[300] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["export", str(run), "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(weights) in err[0] and "damaged" in err[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    weights.unlink()
    assert main(["export", str(run), "--to", str(tmp_path / "out")]) == 1
    assert str(weights) in capsys.readouterr().err


def test_only_the_files_the_manifest_lists_are_exported(tmp_path, monkeypatch):
    monkeypatch.setattr("flows.commands.export.model_card", lambda steps, train, config: "card\n")
    run = fake_run(tmp_path, finished=True)
    weights = with_weights(run, tmp_path)
    (weights.parent / "added-later.txt").write_text("not part of the student")
    out = export_student(str(run), tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == weights.read_bytes()


class LocalHub:
    """Stands in for `huggingface_hub.HfApi`, keeping repositories as folders under `root`."""

    root = None

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        assert repo_type == "model" and exist_ok
        (LocalHub.root / repo_id).mkdir(parents=True, exist_ok=True)
        return f"local-hub/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        import shutil

        shutil.copytree(folder_path, LocalHub.root / repo_id, dirs_exist_ok=True)


def test_push_to_hub_uploads_the_exported_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    run = fake_run(tmp_path, finished=True)
    monkeypatch.setattr("flows.commands.export.model_card", lambda steps, train, config: "card\n")
    LocalHub.root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    assert main(["export", str(run), "--to", str(tmp_path / "out"), "--push-to-hub", "me/student"]) == 0
    assert "pushed to local-hub/me/student" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "hub/me/student").iterdir()) == ["README.md", "config.json"]

    class Refusing(LocalHub):
        def create_repo(self, *args, **kwargs):
            raise PermissionError("no token")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    assert main(["export", str(run), "--to", str(tmp_path / "out2"), "--push-to-hub", "me/student"]) == 1
    assert "out2 is exported, but pushing it" in capsys.readouterr().err
    assert (tmp_path / "out2" / "config.json").is_file()
