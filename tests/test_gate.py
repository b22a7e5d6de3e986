"""The one completion rule (tasks.gate) on a tiny hand-made step store: hashes checked on reuse,
stale and damaged outputs removed before a step runs again, lineage recorded relative to the runs
root so a copied root is judged by its own files, and `siked verify` naming a changed parent."""

from __future__ import annotations

import shutil
from pathlib import Path

from flows.cli import main
from storage.artifacts import read_manifest, write_artifact
from storage.manifest import parent_url
from storage.paths import RunLayout
from storage.step_store import step_dir, write_index
from tasks.gate import changed_parents, decide, discard_outputs, incomplete
from tasks.pipeline import Output, Step

ROWS = [{"id": f"q{i}", "question": "1 + 1?", "answer": 2.0, "reference": "", "benchmark": "arith",
         "split": "train"} for i in range(4)]


def chain(root: Path) -> dict[str, Step]:
    """Two steps: `a` writes a table, `b` a table made from it (its manifest records `a` as parent)."""
    a = Step("a", "problems", None, {}, {}, {}, {"t": Output("t.parquet", "problems")}, "ka",
             step_dir(str(root), "problems", "ka"))
    b = Step("b", "problems", None, {}, {}, {"in": "a"}, {"t": Output("t.parquet", "problems")}, "kb",
             step_dir(str(root), "problems", "kb"))
    return {"a": a, "b": b}


def compute(steps: dict[str, Step], rows=ROWS) -> None:
    a, b = steps["a"], steps["b"]
    write_artifact(a.output("t"), rows, "problems", config_hash=a.key)
    write_artifact(b.output("t"), rows[:2], "problems", config_hash=b.key, parents=[a.output("t")])


def flip_byte(path: str, offset: int = 40) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def test_a_finished_chain_is_reused_and_a_changed_input_reruns_what_is_below_it(tmp_path):
    steps = chain(tmp_path)
    compute(steps)
    assert {d.action for d in decide(steps).values()} == {"reuse"}
    write_artifact(steps["a"].output("t"), ROWS[:3], "problems", config_hash="ka")  # regenerated, other content
    decisions = decide(steps)
    assert decisions["a"].action == "reuse"
    assert decisions["b"].action == "run" and "changed since it was made" in decisions["b"].reason


def test_a_flipped_byte_is_found_on_reuse_and_the_damaged_output_removed_before_it_runs(tmp_path):
    steps = chain(tmp_path)
    compute(steps)
    flip_byte(steps["a"].output("t"))
    assert "sha256" in incomplete(steps["a"])
    assert [d.action for d in decide(steps).values()] == ["run", "run"]
    assert discard_outputs(steps["a"], forced=False) == [steps["a"].output("t")]
    assert not Path(steps["a"].output("t")).exists()
    assert incomplete(steps["a"]).endswith("has no manifest")


def test_outputs_without_a_manifest_are_partial_work_and_stay_unless_an_input_ran(tmp_path):
    steps = chain(tmp_path)
    compute(steps)
    b = steps["b"]
    Path(b.output("t") + ".manifest.json").unlink()  # killed before its manifest
    assert discard_outputs(b, forced=False) == []
    assert Path(b.output("t")).exists()
    discard_outputs(b, forced=True)
    assert not Path(b.output("t")).exists()


def test_parents_are_recorded_relative_so_a_copied_runs_root_judges_its_own_files(tmp_path):
    steps = chain(tmp_path / "one")
    compute(steps)
    [parent] = read_manifest(steps["b"].output("t"))["parents"]
    assert parent["path"] == "../ka/t.parquet"
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    copied = chain(tmp_path / "two")
    assert parent_url(copied["b"].output("t"), parent["path"]) == copied["a"].output("t")
    # The original changes; the copy is still complete by its own files, and the other way round.
    write_artifact(steps["a"].output("t"), ROWS[:1], "problems", config_hash="ka")
    assert decide(copied)["b"].action == "reuse"
    assert decide(steps)["b"].action == "run"


def test_a_parent_outside_the_step_store_is_recorded_as_it_is(tmp_path):
    model = tmp_path / "models/base.parquet"
    write_artifact(str(model), ROWS, "problems")
    steps = chain(tmp_path / "runs")
    write_artifact(steps["b"].output("t"), ROWS, "problems", config_hash="kb", parents=[str(model)])
    assert read_manifest(steps["b"].output("t"))["parents"][0]["path"] == str(model)
    assert changed_parents(steps["b"].output("t")) == []


def test_verify_names_an_output_whose_parent_changed_with_both_steps(tmp_path, capsys):
    steps = chain(tmp_path)
    compute(steps)
    layout = RunLayout(str(tmp_path), "run-a")
    write_index(layout, [s.index_entry() for s in steps.values()])
    assert main(["verify", layout.run_dir]) == 0
    capsys.readouterr()
    write_artifact(steps["a"].output("t"), ROWS[:3], "problems", config_hash="ka")
    assert main(["verify", layout.run_dir]) == 1
    out = capsys.readouterr().out
    assert out.startswith("b: its input") and "changed since it was made (the output of a)" in out


def test_the_run_index_travels_with_a_copied_runs_root(tmp_path, capsys):
    steps = chain(tmp_path / "one")
    compute(steps)
    write_index(RunLayout(str(tmp_path / "one"), "run-a"), [s.index_entry() for s in steps.values()])
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    flip_byte(steps["a"].output("t"))  # damage in the original only
    assert main(["verify", str(tmp_path / "two/run-a")]) == 0
    assert main(["verify", str(tmp_path / "one/run-a")]) == 1


def test_a_large_file_is_hashed_once_per_identity_and_again_after_any_write(tmp_path, monkeypatch):
    """The remembered hashes (storage.fs) are keyed by inode, size, mtime and ctime: a later process of
    the same home reads them back, and a byte flipped in place, same size, is hashed again."""
    from storage import fs

    monkeypatch.setenv("SIKED_HOME", str(tmp_path / "home"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x01" * (2 << 20))
    first = fs.sha256_file(str(weights))
    fs._hash_memo.clear()  # as a new process would start
    reads = []
    original_open = fs.LocalFileSystem.open

    def counting_open(self, path, *args, **kwargs):
        reads.append(path)
        return original_open(self, path, *args, **kwargs)

    monkeypatch.setattr(fs.LocalFileSystem, "open", counting_open)
    assert fs.sha256_file(str(weights)) == first and reads == []  # remembered by this home
    flip_byte(str(weights), offset=12345)
    changed = fs.sha256_file(str(weights))
    assert changed != first and changed == fs.sha256_file_read(str(weights)) and reads
