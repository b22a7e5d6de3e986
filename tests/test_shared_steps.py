"""Steps shared across runs, without running a pipeline: which keys a config change moves, claims
that a killed holder cannot keep, `siked verify`, `siked gc` and run folders from before the store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distill.config import load_config, to_yaml
from flows.cli import main
from flows.run_setup import run_layout
from storage import fs, step_store
from storage.artifacts import ShardedArtifact, write_artifact
from storage.folders import mark_folder_complete
from storage.paths import RunLayout
from storage.step_store import claim_held, claim_step, write_index
from tasks.gate import decide
from tasks.pipeline import pipeline_steps

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "configs/quickstart.yaml").read_text()
TEACHER_SIDE = {"problems/train", "iter-00/generate", "iter-00/verify", "iter-00/distill_set"}


def keys(tmp_path: Path, *overrides: str) -> dict[str, str]:
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", *overrides])
    return {name: step.key for name, step in pipeline_steps(cfg, run_layout(cfg)).items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


def test_a_train_change_keeps_every_teacher_and_base_step(tmp_path):
    base = keys(tmp_path)
    moved = changed(base, keys(tmp_path, "train.lr=0.0005"))
    assert not moved & (TEACHER_SIDE | {"base/evaluate"} | {n for n in base if n.startswith("problems/")})
    assert {"iter-00/train", "iter-00/evaluate", "iter-01/generate", "iter-02/train", "report"} <= moved


def test_an_eval_change_moves_only_evaluations_and_the_report(tmp_path):
    base = keys(tmp_path)
    moved = changed(base, keys(tmp_path, "eval.max_tokens=96"))
    assert moved == {n for n in base if n.endswith("/evaluate")} | {"report"}


def test_the_label_parser_is_part_of_an_evaluation_key_only_with_label_mode(tmp_path, monkeypatch):
    from tasks import pipeline

    with_label = keys(tmp_path, "eval.modes=[rationale, label]")
    rationale_only = keys(tmp_path, "eval.modes=[rationale]")
    monkeypatch.setattr(pipeline, "LABEL_PARSER_VERSION", "next")
    assert changed(with_label, keys(tmp_path, "eval.modes=[rationale, label]")) == \
        {n for n in with_label if n.endswith("/evaluate")} | {"report"}
    assert not changed(rationale_only, keys(tmp_path, "eval.modes=[rationale]"))


def test_the_dss_format_reads_the_datasets_labels_and_trains_one_pass(tmp_path):
    from distill.config import ConfigError

    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", "train.format=dss", "train.select_on=label",
                                   "siked.iterations=0"])
    assert pipeline_steps(cfg, run_layout(cfg))["iter-00/train"].inputs == {"train_set": "iter-00/distill_set",
                                                                             "problems": "problems/train"}
    with pytest.raises(ConfigError, match="siked.iterations"):
        load_config(QUICKSTART, ["train.format=dss", "train.select_on=label"])
    with pytest.raises(ConfigError, match="select_on=label"):
        load_config(QUICKSTART, ["train.format=dss", "siked.iterations=0"])
    with pytest.raises(ConfigError, match="multiple choice"):
        load_config(QUICKSTART, ["train_data.name=dss_cqa", "siked.iterations=0"])


def test_a_biased_chain_biases_every_iterations_set(tmp_path):
    base = keys(tmp_path)
    moved = changed(base, keys(tmp_path, "teacher.biased=cot"))
    assert {"iter-00/distill_set", "iter-01/mix", "iter-02/mix"} <= moved
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}", "teacher.biased=pot"])
    steps = pipeline_steps(cfg, run_layout(cfg))
    assert steps["iter-00/distill_set"].job == {"biased": "pot"}
    assert steps["iter-02/distill_set"].job == {"biased": None} and steps["iter-02/mix"].job["biased"] == "pot"


def test_the_seed_moves_the_students_steps_not_the_teachers_nor_the_base_evaluation(tmp_path):
    base = keys(tmp_path)
    moved = changed(base, keys(tmp_path, "seed=7"))
    assert not moved & (TEACHER_SIDE | {"base/evaluate", "problems/contamination"})
    assert {"iter-00/train", "iter-01/generate", "iter-01/mix"} <= moved


def test_one_more_iteration_keeps_every_key_and_adds_its_steps(tmp_path):
    base = keys(tmp_path)
    longer = keys(tmp_path, "siked.iterations=3")
    assert changed(base, longer) == {n for n in longer if n.startswith("iter-03/")} | {"report"}


def test_the_run_name_and_the_runs_root_location_do_not_change_step_keys(tmp_path):
    a, b = keys(tmp_path, "name=one"), keys(tmp_path, "name=two")
    assert changed(a, b) == {"report"}  # the report is the run's own


def test_a_skipped_eval_set_is_not_a_step(tmp_path, monkeypatch):
    monkeypatch.delenv("SIKED_DATA_DIR", raising=False)
    names = set(keys(tmp_path))
    assert "problems/eval-arith-test" in names and "problems/eval-gsm8k-test" not in names


def test_a_fresh_config_plans_every_step_to_run(tmp_path):
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}"])
    decisions = decide(pipeline_steps(cfg, run_layout(cfg)))
    assert {d.action for d in decisions.values()} == {"run"}


def test_plan_json_lists_each_step_with_kind_iteration_and_action(tmp_path, capsys):
    assert main(["plan", str(REPO / "configs/quickstart.yaml"), f"runs_root={tmp_path}", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    by_step = {r["step"]: r for r in rows}
    assert by_step["iter-01/train"]["iteration"] == 1 and by_step["iter-01/train"]["kind"] == "train"
    assert by_step["problems/train"]["iteration"] is None and by_step["report"]["kind"] == "report"
    assert {r["action"] for r in rows} == {"run"}
    assert {r["kind"] for r in rows} == {"problems", "contamination", "generate", "verify", "distill_set", "mix",
                                         "train", "evaluate", "report"}
    # Teacher: 40 questions x 3 strategies, 2 samples each; then per iteration (forced self-generation)
    # 40 questions x 3 primed strategies x 1 sample, and 40 free-choice prompts x 1 sample.
    # Three trainings of 24 steps; 24 arith + 3 GSM8K questions x 2 modes x 4 evaluated stages.
    assert "440 prompts, 560 samples, 3 trainings of 72 steps in all, 216 evaluation questions" in captured.err
    free = ["plan", str(REPO / "configs/quickstart.yaml"), f"runs_root={tmp_path}", "siked.self_generation=free",
            "--json"]
    assert main(free) == 0  # the student picks: 40 prompts x 1 sample per iteration; the same steps
    captured = capsys.readouterr()
    assert [r["step"] for r in json.loads(captured.out)] == [r["step"] for r in rows]
    assert "200 prompts, 320 samples, 3 trainings of 72 steps in all, 216 evaluation questions" in captured.err


# --------------------------------------------------------------------------- claims


HOLDER = """
import sys, time
from storage.step_store import claim_step
with claim_step(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_local_claim_waits_for_its_holder_and_a_killed_holder_frees_it(tmp_path):
    folder = str(tmp_path / "steps/generate/abc")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert claim_held(folder)
        waited, acquired = [], threading.Event()

        def take() -> None:
            with claim_step(folder, "taker", on_wait=waited.append):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        time.sleep(1.5)
        assert not acquired.is_set() and waited and waited[0]["label"] == "holder"
        os.kill(holder.pid, signal.SIGKILL)
        assert acquired.wait(10), "the claim of a killed process was never freed"
        taker.join(10)
    finally:
        holder.kill()
        holder.wait()
    assert not claim_held(folder)


def test_a_remote_claim_is_taken_over_once_its_heartbeat_is_stale(monkeypatch):
    monkeypatch.setattr(step_store, "CLAIM_STALE_S", 2.0)
    monkeypatch.setattr(step_store, "POLL_S", 0.1)
    folder = "memory://claims/steps/train/k1"
    fs.write_json(f"{folder}/_claim.json", {"label": "dead run", "updated": time.time()})
    assert claim_held(folder)
    waited = []
    start = time.monotonic()
    with claim_step(folder, "me", on_wait=waited.append):
        assert fs.read_json(f"{folder}/_claim.json")["label"] == "me"
        took = time.monotonic() - start
    assert waited and waited[0]["label"] == "dead run" and took >= 1.5
    assert not fs.exists(f"{folder}/_claim.json")


# --------------------------------------------------------------------------- verify and gc


def fake_run(root: Path, run_id: str, step_dirs: list[Path]) -> RunLayout:
    """A run folder whose index names one Parquet output, one sharded output and one folder."""
    layout = RunLayout(str(root), run_id)
    entries = []
    for i, d in enumerate(step_dirs):
        outputs = {"table": str(d / "verified.parquet"), "samples": str(d / "samples"), "student": str(d / "student")}
        if not (d / "verified.parquet").exists():
            rows = [{"id": f"q{i}-{j}", "question": "1 + 1?", "answer": 2.0, "reference": "", "benchmark": "arith",
                     "split": "train"} for j in range(5)]
            write_artifact(outputs["table"], rows, "problems")
            shards = ShardedArtifact(outputs["samples"], "problems")
            shards.write_shard(0, rows[:2])
            shards.write_shard(1, rows[2:])
            shards.finalize(2)
            (d / "student").mkdir(parents=True)
            (d / "student/weights.bin").write_bytes(b"\x00" * 64)
            mark_folder_complete(outputs["student"])
        entries.append({"name": f"iter-00/s{i}", "kind": "verify", "iteration": 0, "key": d.name, "dir": str(d),
                        "inputs": {}, "outputs": outputs})
    write_index(layout, entries)
    return layout


def flip_byte(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_each_altered_or_missing_file(tmp_path, capsys):
    store = tmp_path / "steps/verify"
    layout = fake_run(tmp_path, "run-a", [store / "k1"])
    assert main(["verify", layout.run_dir]) == 0
    capsys.readouterr()
    flip_byte(store / "k1/verified.parquet")
    flip_byte(store / "k1/samples/shard-00001.parquet")
    (store / "k1/student/weights.bin").write_bytes(b"\x01" * 64)
    assert main(["verify", layout.run_dir]) == 1
    out = capsys.readouterr().out
    assert str(store / "k1/verified.parquet") in out
    assert str(store / "k1/samples/shard-00001.parquet") in out and "shard-00000" not in out
    assert str(store / "k1/student/weights.bin") in out
    (store / "k1/samples/shard-00000.parquet").unlink()
    assert main(["verify", layout.run_dir]) == 1
    assert "shard-00000.parquet" in capsys.readouterr().out


def test_gc_dry_run_lists_only_outputs_no_run_refers_to(tmp_path, capsys):
    store = tmp_path / "steps/verify"
    fake_run(tmp_path, "run-a", [store / "shared", store / "only-a"])
    fake_run(tmp_path, "run-b", [store / "shared"])
    fake_run(tmp_path, "gone", [store / "orphan", store / "busy"])
    (tmp_path / "gone/steps.json").unlink()  # its run folder was deleted: nothing refers to them
    with claim_step(str(store / "busy"), "a run computing it"):
        assert main(["gc", "--dry-run", "--runs-root", str(tmp_path)]) == 0
        listed = capsys.readouterr().out
        assert str(store / "orphan") in listed
        assert not any(str(store / name) in listed for name in ("shared", "only-a", "busy"))
        assert (store / "orphan/verified.parquet").exists()
        assert main(["gc", "--runs-root", str(tmp_path)]) == 0
    assert not (store / "orphan").exists()
    assert all((store / name).exists() for name in ("shared", "only-a", "busy"))


def _spell_root(spelling: str, home: Path, tmp_path: Path, monkeypatch) -> tuple[list[str], Path]:
    """The `siked gc` options that reach `home/runs` spelled another way than its indexes spell it,
    and the runs root gc then works on."""
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(home / "runs")
        return ["--runs-root", str(tmp_path / "link")], home / "runs"
    if spelling == "double slash":
        return ["--runs-root", "/" + str(home / "runs")], home / "runs"
    if spelling == "relative":
        monkeypatch.chdir(home)
        return ["--runs-root", "runs"], home / "runs"
    if spelling == "symlinked home":
        (tmp_path / "home-link").symlink_to(home)
        monkeypatch.setenv("SIKED_HOME", str(tmp_path / "home-link"))
        return [], home / "runs"
    shutil.copytree(home, tmp_path / "copy", symlinks=True)  # a copied home: indexes name the original
    monkeypatch.setenv("SIKED_HOME", str(tmp_path / "copy"))
    return [], tmp_path / "copy" / "runs"


@pytest.mark.parametrize("spelling", ["symlink", "double slash", "relative", "symlinked home", "copied home"])
def test_gc_tells_step_folders_by_what_they_are_not_by_how_their_path_is_spelled(tmp_path, capsys, monkeypatch,
                                                                                 spelling):
    home = tmp_path / "home"
    store = home / "runs/steps/verify"
    fake_run(home / "runs", "run-a", [store / "used-1", store / "used-2"])
    fake_run(home / "runs", "gone", [store / "orphan"])
    (home / "runs/gone/steps.json").unlink()
    args, root = _spell_root(spelling, home, tmp_path, monkeypatch)
    assert main(["gc", "--dry-run", *args]) == 0
    listed = capsys.readouterr().out
    assert "orphan" in listed and "used-" not in listed
    assert main(["gc", *args]) == 0
    assert not (root / "steps/verify/orphan").exists()
    assert (root / "steps/verify/used-1/verified.parquet").exists()
    assert (root / "steps/verify/used-2/student/weights.bin").exists()


def test_gc_keeps_a_folder_an_index_names_by_another_path(tmp_path, capsys):
    """An entry without kind and key keeps the folder its `dir` resolves to, however spelled."""
    store = tmp_path / "real/steps/verify"
    layout = fake_run(tmp_path / "real", "run-a", [store / "used"])
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    steps = [{**s, "dir": f"{tmp_path}/alias/steps//verify/used/.", "kind": None, "key": None}
             for s in step_store.read_index(layout)]
    write_index(layout, steps)
    assert main(["gc", "--dry-run", "--runs-root", str(tmp_path / "real")]) == 0
    assert "used" not in capsys.readouterr().out


def test_a_relative_runs_root_is_made_absolute_before_anything_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(QUICKSTART, ["runs_root=runs"])
    layout = run_layout(cfg)
    assert layout.root == str(tmp_path / "runs")
    entries = [step.index_entry() for step in pipeline_steps(cfg, layout).values()]
    assert all(os.path.isabs(e["dir"]) and all(map(os.path.isabs, e["outputs"].values())) for e in entries)
    monkeypatch.setenv("SIKED_HOME", "home")  # a relative home too
    assert run_layout(load_config(QUICKSTART)).root == str(tmp_path / "home/runs")


def test_a_run_folder_from_before_the_step_store_says_what_to_do(tmp_path, capsys):
    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}"])
    layout = run_layout(cfg)
    fs.write_bytes(layout.config, to_yaml(cfg).encode())
    (Path(layout.run_dir) / "iter-00/teacher_samples").mkdir(parents=True)
    assert main(["resume", layout.run_dir]) == 2
    err = capsys.readouterr().err
    assert "before steps were shared" in err and "siked run" in err
    assert main(["status", layout.run_dir]) == 2


# --------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class Output:
    """A process's merged output, collected by a thread so the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return True
            time.sleep(0.2)
        return False

    def text(self) -> str:
        return "".join(self.lines)


def teacher_overrides(root: Path, model: Path, lr: str) -> list[str]:
    return [f"runs_root={root}", "name=shared", "train_data={name: arith, split: train, difficulty: 1, size: 6, seed: 3}",
            "teacher.engine.kind=transformers", f"teacher.engine.model={model}", "teacher.engine.chat_template=never",
            "teacher.sampling.n=2", "teacher.sampling.max_tokens=48", "teacher.shard_size=1", f"train.lr={lr}",
            "eval.benchmarks=[]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_runs_needing_the_same_teacher_step_generate_it_once(tmp_path, tiny_model_path):
    """Run A takes the teacher step's claim and is frozen (SIGSTOP) mid-generation; run B, another
    learning rate, waits for the claim instead of generating; A resumes and finishes; B reuses."""
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    args = [sys.executable, "-m", "flows.cli", "teacher", str(REPO / "configs/quickstart.yaml")]
    cfg = load_config(QUICKSTART, teacher_overrides(root, tiny_model_path, "0.001"))
    step = pipeline_steps(cfg, run_layout(cfg))["iter-00/generate"]
    a = subprocess.Popen([*args, *teacher_overrides(root, tiny_model_path, "0.001")], cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    b = None
    frozen: list[int] = []
    try:
        a_out = Output(a)
        deadline = time.monotonic() + 300
        while not claim_held(step.folder):
            assert a.poll() is None and time.monotonic() < deadline, a_out.text()[-3000:]
            time.sleep(0.05)
        frozen = [a.pid, *descendants(a.pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        b = subprocess.Popen([*args, *teacher_overrides(root, tiny_model_path, "0.0005")], cwd=REPO, env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        b_out = Output(b)
        assert b_out.wait_for("waiting for iter-00/generate", 300), b_out.text()[-3000:]
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        assert a.wait(600) == 0, a_out.text()[-3000:]
        assert b.wait(600) == 0, b_out.text()[-3000:]
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    a_out.thread.join(10)
    b_out.thread.join(10)
    assert "generation: shard" in a_out.text()
    assert "generation: shard" not in b_out.text(), "run B generated the shared step too"
    a_dir, b_dir = ([line for line in out.text().splitlines() if line.startswith(str(root))][-1] for out in (a_out, b_out))
    assert a_dir != b_dir
    from storage.artifacts import read_artifact
    from storage.step_store import read_step_info, step_output

    for run_dir in (a_dir, b_dir):
        from storage.paths import layout_for_run_dir

        assert step_output(layout_for_run_dir(run_dir), "iter-00/generate", "samples") == step.output("samples")
    assert len(read_artifact(step.output("samples"), "samples")) == 6 * 3 * 2
    assert read_step_info(step.folder)["run"] == Path(a_dir).name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_ends_a_run_without_leaving_its_prefect_server_behind(tmp_path, tiny_model_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "teacher", str(REPO / "configs/quickstart.yaml"),
                             *teacher_overrides(tmp_path / "runs", tiny_model_path, "0.001")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not servers:
            assert proc.poll() is None and time.monotonic() < deadline, "no Prefect server was started"
            servers = [p for p in descendants(proc.pid) if "uvicorn" in cmdline(p)]
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        deadline = time.monotonic() + 60
        while any(alive(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [p for p in servers if alive(p)]
        assert not left, f"Prefect's server outlived the run: {[cmdline(p) for p in left]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in servers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_progress_artifacts_of_two_flow_runs_do_not_share_a_key():
    import asyncio

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.progress import with_progress

    @task
    def long_step() -> int:
        return with_progress("generate-teacher-00", "teacher samples", lambda: 1.0, lambda: 1)

    @flow
    def a_run() -> int:
        return long_step()

    runs = [str(a_run(return_state=True).state_details.flow_run_id) for _ in range(2)]

    async def keys() -> set[str]:
        # Filtered by the server: an unfiltered read returns one page (200) of the whole suite's artifacts.
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=runs)))
            return {a.key for a in found if a.key and a.key.endswith("generate-teacher-00")}

    assert len(asyncio.run(keys())) == 2


def test_settings_that_change_only_how_a_step_runs_move_no_key(tmp_path):
    base = keys(tmp_path)
    assert changed(base, keys(tmp_path, "teacher.engine.gpu_memory_utilization=0.5",
                              "siked.engine.request_timeout_s=30", "train.checkpoint_every=7")) == {"report"}


def test_with_deterministic_sampling_the_kv_cache_share_is_part_of_the_generation_key(tmp_path):
    det = ["teacher.engine.deterministic=true"]
    base = keys(tmp_path, *det)
    assert "iter-00/generate" in changed(base, keys(tmp_path, *det, "teacher.engine.gpu_memory_utilization=0.5"))
    plain = keys(tmp_path)
    assert "iter-00/generate" not in changed(plain, keys(tmp_path, "teacher.engine.gpu_memory_utilization=0.5"))


def test_a_step_code_version_moves_that_step_and_what_follows_it(tmp_path, monkeypatch):
    from tasks import pipeline

    base = keys(tmp_path)
    monkeypatch.setitem(pipeline.STEP_CODE_VERSIONS, "verify", pipeline.STEP_CODE_VERSIONS["verify"] + "-next")
    moved = changed(base, keys(tmp_path))
    assert "iter-00/verify" in moved and "iter-02/verify" in moved
    assert not moved & {"problems/train", "iter-00/generate", "base/evaluate"}


def test_an_eval_set_is_one_step_wherever_it_is_listed(tmp_path):
    one = keys(tmp_path, "eval.benchmarks=[{name: arith, split: test, size: 24}, {name: arith, split: train, size: 9}]")
    two = keys(tmp_path, "eval.benchmarks=[{name: arith, split: train, size: 9}, "
                         "{name: arith, split: test, size: 24, skip_if_missing: true}]")
    assert one["problems/eval-arith-test"] == two["problems/eval-arith-test"]
    assert one["problems/eval-arith-train"] == two["problems/eval-arith-train"]


def test_siked_train_runs_through_the_pipelines_steps_and_keys(tmp_path):
    """`siked train`: the teacher round's steps with the pipeline's own keys, or a frozen training set
    keyed by its file's content (not its path), then the same training step."""
    from tasks.pipeline import train_only_steps

    cfg = load_config(QUICKSTART, [f"runs_root={tmp_path}"])
    full = pipeline_steps(cfg, run_layout(cfg))
    own = train_only_steps(cfg, run_layout(cfg), train_set=None, given_rationales=False)
    assert list(own) == ["problems/train", "iter-00/generate", "iter-00/verify", "iter-00/distill_set", "iter-00/train"]
    assert all(own[name].key == full[name].key for name in own)

    rows = tmp_path / "set.parquet"
    write_artifact(str(rows), [], "train_examples")
    first = train_only_steps(cfg, run_layout(cfg), train_set=str(rows), given_rationales=False)
    assert list(first) == ["train_set", "iter-00/train"]
    moved = tmp_path / "moved.parquet"
    rows.rename(moved)
    assert train_only_steps(cfg, run_layout(cfg), train_set=str(moved), given_rationales=False)["train_set"].key == \
        first["train_set"].key
    dss = load_config((REPO / "configs/dss_svamp.yaml").read_text(), [f"runs_root={tmp_path}"])
    assert list(train_only_steps(dss, run_layout(dss), train_set=None, given_rationales=True)) == \
        ["problems/train", "train_set", "iter-00/train"]
