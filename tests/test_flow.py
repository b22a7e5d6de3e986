"""The SIKeD flow end to end on a tiny subset: a full run, a rerun that executes nothing, a run
killed with SIGKILL during an iteration's training and resumed, and bad configs refused up front."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.config import ConfigError, load_config
from flows.cli import main
from flows.run_setup import run_layout
from storage.artifacts import read_manifest
from storage.paths import layout_for_run_dir
from storage.step_store import step_output

REPO = Path(__file__).resolve().parents[1]
# Prefect keys task runs by the task function's name.
STEP_FUNCTIONS = {"freeze_problems", "generate_samples", "verify", "build_distill_set", "mix_training_set",
                  "train_student_step", "evaluate_model", "find_overlaps"}
# Artifacts every run computes the same way from the same config (the student's weights are
# compared through the training metrics instead: resumed training matches within 1e-4).
DETERMINISTIC = [("problems/train", "problems"), ("iter-00/generate", "samples"), ("iter-00/verify", "verified"),
                 ("iter-00/distill_set", "distill_set"), ("iter-01/generate", "samples"),
                 ("iter-01/verify", "verified"), ("iter-01/distill_set", "distill_set"), ("iter-01/mix", "train_set")]


TRAIN = {"name": "arith", "split": "train", "difficulty": 1, "size": 6, "seed": 5}


def teacher_rationales(folder: Path) -> Path:
    """Correct CoT, L2M and PoT solutions of the training problems, served by the `file` engine
    (a random tiny model solves nothing, and training needs verified rows)."""
    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef

    path = folder / "rationales.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in load_benchmark(BenchmarkRef(**TRAIN), None).problems:
        work, _, _ = p.reference.partition("\nThe answer is")
        answer = f"{p.answer:g}"
        texts = {"cot": f"{work}\nFinal answer: {answer}",
                 "l2m": f"Sub-question 1: {p.question}\nAnswer to sub-question 1: {work}\nFinal answer: {answer}",
                 "pot": f"answer = {answer}"}
        lines += [json.dumps({"question_id": p.id, "strategy": s, "text": t}) for s, t in texts.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_run_overrides(root: Path, model: Path, **extra: str) -> list[str]:
    settings = {
        "name": "flow",
        "runs_root": str(root),
        "train_data": json.dumps(TRAIN),
        "teacher.engine.kind": "file", "teacher.engine.files": f"[{teacher_rationales(root.parent / 'teacher')}]",
        "teacher.sampling.n": "2", "teacher.shard_size": "3",
        "siked.engine.kind": "transformers", "siked.iterations": "1", "siked.mixing": "all",
        "siked.sampling.n": "2", "siked.sampling.max_tokens": "8",
        "train.model": str(model), "train.max_steps": "4", "train.batch_size": "2",
        "train.lora.last_layers": "null",  # the quickstart adapts SmolLM2's last 10 layers; tiny has 2
        "train.checkpoint_every": "1", "train.max_length": "2048", "train.val_fraction": "0.2",
        "eval.benchmarks": "[{name: arith, split: test, difficulty: 1, size: 3}]", "eval.max_tokens": "8",
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def output_of(run: Path, step: str, role: str) -> str:
    """Where the run's step keeps an output (the step store, named by the run's steps.json)."""
    return step_output(layout_for_run_dir(str(run)), step, role)


def task_runs_of_last_run() -> list[tuple[str, str, str]]:
    """(task function, task run name, state name) of every task run of the newest `siked` flow run
    and its subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list[tuple[str, str, str]]:
        async with get_client() as client:
            [top] = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["siked"])),
                                                sort=FlowRunSort.START_TIME_DESC, limit=1)
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[top.id])))
            ids = [top.id, *[c.id for c in children]]
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        return [(run.task_key.rsplit("-", 1)[0], run.name, run.state.name if run.state else "none") for run in runs]

    return asyncio.run(read())


def task_states_of_last_run() -> dict[str, list[str]]:
    """State names of every step task of the newest `siked` flow run, by task function."""
    states: dict[str, list[str]] = {}
    for task, _, state in task_runs_of_last_run():
        states.setdefault(task, []).append(state)
    return states


def task_run_name(step: str) -> str | None:
    """The Prefect task run name of a pipeline step (tasks' `task_run_name`); None for the report."""
    stage, _, kind = step.partition("/")
    if step == "report":
        return None
    if stage == "problems":
        return f"problems-{kind}"
    if kind == "generate":
        return f"{stage}-generate-{'teacher' if stage == 'iter-00' else 'student'}"
    return f"{stage}-{kind.replace('_', '-')}"


def executed_steps_of_last_run() -> set[str]:
    """Task run names of the newest run's step tasks (a reused step starts none)."""
    return {name for task, name, _ in task_runs_of_last_run() if task in STEP_FUNCTIONS}


def planned_to_run(config: str, overrides: list[str], capsys) -> set[str]:
    assert main(["plan", config, *overrides, "--json"]) == 0
    return {row["step"] for row in json.loads(capsys.readouterr().out) if row["action"] == "run"}


# Columns that legitimately differ between two runs of one config: where the student lives (the
# runs root is part of its path) and how long a program took in the sandbox.
VOLATILE = ("model", "exec_seconds")


def artifact_rows(run: Path) -> dict[str, list[dict]]:
    """The rows of each deterministic artifact, without the volatile columns."""
    from storage.artifacts import read_artifact

    rows = {}
    for step, role in DETERMINISTIC:
        url = output_of(run, step, role)
        kind = read_manifest(url)["kind"]
        table = read_artifact(url, kind)
        rows[step] = table.drop_columns([c for c in VOLATILE if c in table.column_names]).to_pylist()
    return rows


def exported_student_answers_like_the_run(run: Path, target: Path, capsys) -> None:
    """`siked export`: a model folder with a card, which transformers and vLLM load as it is and
    which answers the run's evaluation questions as the run's own evaluation did (greedy)."""
    from distill.config import EngineConfig
    from distill.engines import make_engine
    from distill.evaluation import evaluate
    from storage.artifacts import read_artifact

    assert main(["export", str(run), "--to", str(target)]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == target
    card = (target / "README.md").read_text()
    assert "| 1 | `iter-01/mix`" in card and "95% interval" in card and "### Response:" in card
    assert not (target / "_manifest.json").exists() and (target / "model.safetensors").is_file()
    assert main(["export", str(run), "--to", str(target)]) == 2  # never over an existing folder (a usage error)
    capsys.readouterr()
    problems = read_artifact(output_of(run, "problems/eval-arith-test", "problems"), "problems").to_pylist()
    ran = {r["question_id"]: r for r in read_artifact(output_of(run, "iter-01/evaluate", "arith-test/rationale"),
                                                      "predictions").to_pylist()}
    for kind in ("transformers", "vllm"):
        engine = make_engine(EngineConfig(kind=kind, dtype="float32", max_model_len=2048,
                                          gpu_memory_utilization=0.1), str(target))
        try:
            rows = evaluate(engine, problems, "arith-test", "rationale", 8, str(target))
        finally:
            engine.close()
        for row in rows:
            expected = ran[row["question_id"]]
            assert (row["predicted"], row["verdict"]) == (expected["predicted"], expected["verdict"]), kind
            if kind == "transformers":  # the engine the run evaluated with: the very same text
                assert row["text"] == expected["text"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_run_a_rerun_that_executes_nothing_and_changes_that_execute_only_what_they_touch(
        tmp_path, tiny_vllm_model_path, capsys):
    config = str(REPO / "configs/quickstart.yaml")
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_vllm_model_path)  # its export loads in vLLM
    assert main(["run", config, *overrides]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run / "report/report.md").is_file() and (run / "report/accuracy.png").is_file()
    first = task_states_of_last_run()
    assert STEP_FUNCTIONS <= set(first), first
    assert all(state == "Completed" for state in first["train_student_step"])

    assert main(["status", str(run), "--json"]) == 0
    statuses = json.loads(capsys.readouterr().out)
    assert statuses and all(s["state"] == "done" for s in statuses), statuses
    exported_student_answers_like_the_run(run, tmp_path / "exported", capsys)

    assert main(["run", config, *overrides]) == 0
    capsys.readouterr()
    # A reused step starts no task run: the step store is the only cache (tasks.steps).
    assert not executed_steps_of_last_run(), f"tasks ran again: {task_states_of_last_run()}"

    # One more iteration, another learning rate, another evaluation budget: the plan names exactly
    # the steps each change touches, and the run executes exactly those.
    assert planned_to_run(config, overrides, capsys) == set()
    teacher_side = {"problems/train", "problems/eval-arith-test", "problems/contamination", "iter-00/generate",
                    "iter-00/verify",
                    "iter-00/distill_set", "base/evaluate"}
    changes = {
        "siked.iterations=2": lambda steps: {s for s in steps if s.startswith("iter-02/")} | {"report"},
        "train.lr=0.0005": lambda steps: set(steps) - teacher_side,
        "eval.max_tokens=6": lambda steps: {s for s in steps if s.endswith("/evaluate")} | {"report"},
    }
    for change, expected_of in changes.items():
        variant = [*overrides, change]
        steps = {row["step"] for row in _plan(config, variant, capsys)}
        expected = expected_of(steps)
        assert planned_to_run(config, variant, capsys) == expected, change
        assert main(["run", config, *variant]) == 0
        variant_run = Path(capsys.readouterr().out.strip().splitlines()[-1])
        executed = executed_steps_of_last_run()
        assert executed == {task_run_name(s) for s in expected} - {None}, change
        assert (variant_run / "report/report.md").is_file()
        assert planned_to_run(config, variant, capsys) == set(), f"{change}: a rerun would execute steps"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_biased_chain_keeps_one_row_per_question_in_the_students_sets_too(tmp_path, tiny_model_path, capsys):
    from storage.artifacts import read_artifact

    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{"teacher.biased": "cot"})
    assert main(["run", str(REPO / "configs/quickstart.yaml"), *overrides]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    # The teacher's set is biased, and each later round's mixture (as the reference biases it).
    for step, role in (("iter-00/distill_set", "distill_set"), ("iter-01/mix", "train_set")):
        url = output_of(run, step, role)
        rows = read_artifact(url, "train_examples").to_pylist()
        questions = [r["question_id"] for r in rows]
        assert len(questions) == len(set(questions)), step
    summary = json.loads(Path(output_of(run, "iter-00/distill_set", "distill_set").removesuffix(".parquet")
                              + ".summary.json").read_text())
    assert summary["biased"] == "cot"
    mixed = json.loads(Path(output_of(run, "iter-01/mix", "train_set").removesuffix(".parquet") + ".mix.json").read_text())
    assert mixed["biased"] == "cot"
    teacher_rows = read_artifact(output_of(run, "iter-00/distill_set", "distill_set"), "train_examples").to_pylist()
    assert teacher_rows and {r["strategy"] for r in teacher_rows} == {"cot"}


def _plan(config: str, overrides: list[str], capsys) -> list[dict]:
    assert main(["plan", config, *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three pipeline runs: killed, resumed, and an uninterrupted one
def test_run_killed_during_training_then_resumed(tmp_path, tiny_model_path):
    """SIGKILL during iteration 1's training; `siked resume` runs no finished step again and the
    deterministic artifacts equal those of an uninterrupted run."""
    config = str(REPO / "configs/quickstart.yaml")
    slow_training = {"train.max_steps": "12"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    args = [sys.executable, "-m", "flows.cli", "run", config,
            *tiny_run_overrides(killed_root, tiny_model_path, **slow_training)]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            index = list(killed_root.glob("flow-*/steps.json"))
            train_dir = index and Path(output_of(index[0].parent, "iter-01/train", "student")).parent
            if train_dir and list(train_dir.glob("checkpoints/step-*")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-4000:]
            time.sleep(0.1)
        else:
            pytest.fail("iteration 1 never started training")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [run] = list(killed_root.glob("flow-*"))
    assert not (Path(output_of(run, "iter-01/train", "student")) / "_manifest.json").exists()
    # Finished outputs in the step store and the run folder alike.
    finished = {p: p.stat().st_mtime_ns for p in killed_root.rglob("*.manifest.json")}
    finished.update({p: p.stat().st_mtime_ns for p in killed_root.rglob("_manifest.json")})

    status = subprocess.run([sys.executable, "-m", "flows.cli", "status", str(run), "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    states = {(s["stage"], s["step"]): s["state"] for s in json.loads(status.stdout)}
    assert states[("iter-01", "train")] == "failed" and states[("iter-00", "train")] == "done"

    resumed = subprocess.run([sys.executable, "-m", "flows.cli", "resume", str(run)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1800, check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten by the resume"

    clean = subprocess.run([sys.executable, "-m", "flows.cli", "run", config,
                            *tiny_run_overrides(clean_root, tiny_model_path, **slow_training)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert clean.returncode == 0, clean.stderr[-4000:]
    [clean_run] = list(clean_root.glob("flow-*"))
    assert clean_run.name == run.name
    assert artifact_rows(run) == artifact_rows(clean_run)
    import pyarrow.parquet as pq

    losses = [pq.read_table(output_of(r, "iter-01/train", "metrics")).to_pandas().query("split == 'train'")["loss"]
              for r in (run, clean_run)]
    assert losses[0].tolist() == pytest.approx(losses[1].tolist(), abs=1e-4)


def test_bad_config_rejected_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  loss:\n    kind: dss_mii\n")
    assert main(["run", str(bad), f"runs_root={tmp_path / 'runs'}"]) == 2
    assert "train.loss.kind" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_model_folder_rejected_before_any_work(tmp_path, capsys):
    config = str(REPO / "configs/quickstart.yaml")
    code = main(["run", config, f"runs_root={tmp_path / 'runs'}", f"train.model={tmp_path / 'nowhere'}"])
    assert code == 2
    assert "train.model" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_data_folder_rejected_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SIKED_DATA_DIR", raising=False)
    cfg_file = tmp_path / "gsm.yaml"
    cfg_file.write_text("train_data: {name: gsm8k, split: train}\n")
    assert main(["run", str(cfg_file), f"runs_root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "SIKED_DATA_DIR" in err and "gsm8k" in err
    assert not (tmp_path / "runs").exists()


def test_run_folder_is_stable_and_ignores_where_it_is_stored(tmp_path):
    a = run_layout(load_config("", [f"runs_root={tmp_path}/a"]))
    b = run_layout(load_config("", [f"runs_root={tmp_path}/b"]))
    c = run_layout(load_config("", ["train.lr=0.001"]))
    assert a.run_id == b.run_id != c.run_id


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_unknown_key_error_is_a_config_error():
    with pytest.raises(ConfigError):
        load_config("", ["siked.mixng=all"])
