"""The pipeline on a real Prefect server: PostgreSQL on loopback, `prefect server start` and a
process worker (flows/server/local_server.py, as `make prefect-server` starts them), in temporary folders
on free ports. The `quickstart` deployment of prefect.yaml is deployed with `prefect deploy`, a
tiny run of it is started through the API, and the run, its table artifacts and the Parquet files
its link artifacts point to are read back."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flows.server import local_postgres, local_server
from tests.test_flow import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]
TABLE_COLUMNS = {"benchmark", "mode", "accuracy", "n"}  # flows/reports/ui.py: publish_iteration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stack(tmp_path):
    if local_postgres.bindir() is None:
        if os.environ.get("CI") or os.environ.get("SIKED_REQUIRE_POSTGRES"):
            pytest.fail("no PostgreSQL server binaries, but CI installs Debian's postgresql (.ci/run)")
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    # As root the cluster belongs to an unprivileged user, who cannot enter pytest's 0700 folders.
    pg_parent = Path(tempfile.mkdtemp(prefix="siked-pg-"))
    pg_parent.chmod(0o755)
    # The worker looks for runs every second instead of every 10 (only the wait gets shorter).
    worker_env = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    try:
        with local_server.running(tmp_path / "prefect-server", _free_port(), _free_port(),
                                  pg_parent / "cluster", worker_env) as running:
            yield running
    finally:
        shutil.rmtree(pg_parent, ignore_errors=True)


def _read_back(run_id) -> tuple:
    """The flow run, its subflow runs, and the artifacts of them all, through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
            ids = [run_id, *[c.id for c in children]]
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
            return run, children, artifacts

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_deployed_flow_runs_on_the_postgres_server(stack, tmp_path, tiny_model_path):
    import pyarrow.parquet as pq
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_API_URL": stack.api_url, "SIKED_PROJECT_DIR": str(REPO)}
    deployed = subprocess.run([sys.executable, "-m", "prefect", "deploy", "--name", "quickstart", "--no-prompt"],
                              check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    # LoRA on all layers: quickstart.yaml picks the last 10 of SmolLM2's, the tiny model has 2.
    overrides = tiny_run_overrides(tmp_path / "runs", tiny_model_path, **{
        "siked.iterations": "0", "eval.evaluate_base": "false", "train.lora.last_layers": "null"})
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        # config_path stays the deployment's own (configs/quickstart.yaml, relative to the project).
        started = run_deployment("siked-from-file/quickstart", parameters={"overrides": overrides},
                                 timeout=1500, poll_interval=2)
        run, children, artifacts = _read_back(started.id)

    worker_log = stack.log("worker").read_text(errors="replace")[-6000:]
    assert run.state.is_completed(), f"{run.state}\n{worker_log}"
    assert run.parameters["config_path"] == "configs/quickstart.yaml"
    assert children and all(c.state.is_completed() for c in children), [c.state for c in children]

    by_type: dict[str, list] = {}
    for artifact in artifacts:
        by_type.setdefault(artifact.type, []).append(artifact)
    [table] = [a for a in by_type.get("table", []) if a.key.endswith("iter-00")]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows and all(set(row) == TABLE_COLUMNS for row in rows), rows
    scores = {r["mode"]: r for r in rows if r["benchmark"] == "arith-test"}  # one row per answer mode
    assert set(scores) == {"rationale", "label"}, rows
    assert all(0 <= s["accuracy"] <= 1 and s["n"] == 3 for s in scores.values()), scores
    [mix] = [r for r in rows if r["benchmark"] == "training data"]
    assert mix["n"] > 0
    assert [a for a in by_type.get("markdown", []) if a.key.endswith("report")]

    # Link artifacts are Markdown artifacts holding `[text](target)`.
    links = {a.key: Path(m[1]) for a in by_type.get("markdown", [])
             if (m := re.fullmatch(r"\[[^\]]*\]\((.+)\)", a.data.strip()))}
    assert any(key.endswith("iter-00-distill-set") for key in links), sorted(links)
    for key, path in links.items():
        assert path.exists(), f"{key}: {path}"
        if not key.endswith("student"):  # the rest are Parquet files or folders of Parquet shards
            files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
            assert files and all(pq.read_metadata(f).num_rows > 0 for f in files), f"{key}: {files}"


def _processes_of_flow_run(flow_run_id) -> list[int]:
    """Pids of the flow run's process and everything it started (they inherit its run id)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _retry_as_the_ui_does(flow_run_id) -> None:
    """The UI's Retry button: the run's state forced to Scheduled, named AwaitingRetry."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    async def retry():
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Scheduled(name="AwaitingRetry"), force=True)

    asyncio.run(retry())


def _wait_for_final_state(flow_run_id, timeout: float):
    from prefect.client.orchestration import get_client

    async def wait():
        async with get_client() as client:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                run = await client.read_flow_run(flow_run_id)
                if run.state.is_final() or asyncio.get_running_loop().time() > deadline:
                    return run
                await asyncio.sleep(2)

    return asyncio.run(wait())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_deployment_run_killed_in_an_iteration_continues_when_retried_from_the_ui(stack, tmp_path,
                                                                                   tiny_model_path):
    """The flow run's processes are SIGKILLed during iteration 1's training; the worker reports the
    run crashed; Retry (through the API, as the UI does it) runs it again on the worker, which
    continues from the artifacts: no finished step is redone and the run completes."""
    import time

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from storage.paths import layout_for_run_dir
    from storage.step_store import step_output

    env = {**os.environ, "PREFECT_API_URL": stack.api_url, "SIKED_PROJECT_DIR": str(REPO)}
    deployed = subprocess.run([sys.executable, "-m", "prefect", "deploy", "--name", "quickstart", "--no-prompt"],
                              check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    root = tmp_path / "runs"
    overrides = tiny_run_overrides(root, tiny_model_path, **{
        "eval.evaluate_base": "false", "train.lora.last_layers": "null", "train.max_steps": "12"})
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        started = run_deployment("siked-from-file/quickstart", parameters={"overrides": overrides}, timeout=0)
        deadline = time.monotonic() + 1200
        checkpoints = None
        while time.monotonic() < deadline:
            index = list(root.glob("flow-*/steps.json"))
            if index:
                student = Path(step_output(layout_for_run_dir(str(index[0].parent)), "iter-01/train", "student"))
                if list((student.parent / "checkpoints").glob("step-*")):
                    checkpoints = student.parent / "checkpoints"
                    break
            time.sleep(0.2)
        assert checkpoints is not None, stack.log("worker").read_text(errors="replace")[-4000:]
        pids = _processes_of_flow_run(started.id)
        assert pids, "the flow run's process was not found"
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        crashed = _wait_for_final_state(started.id, 300)
        assert not crashed.state.is_completed(), crashed.state
        finished = {p: p.stat().st_mtime_ns for p in root.rglob("*manifest.json")}
        assert not (student / "_manifest.json").exists()

        _retry_as_the_ui_does(started.id)
        run = _wait_for_final_state(started.id, 1500)
    worker_log = stack.log("worker").read_text(errors="replace")[-6000:]
    assert run.state.is_completed(), f"{run.state}\n{worker_log}"
    assert (student / "_manifest.json").exists()
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten by the retried run"


def test_status_and_stop_with_nothing_started(tmp_path, capsys):
    folder = tmp_path / "state"
    assert local_server.main(["status", "--dir", str(folder)]) == 1
    assert local_server.main(["stop", "--dir", str(folder)]) == 0
    assert "not running" in capsys.readouterr().out


def test_cluster_settings(tmp_path, monkeypatch):
    cluster = local_postgres.Cluster(tmp_path / "pg", 5499, "secret")
    assert cluster.url == "postgresql+asyncpg://prefect:secret@127.0.0.1:5499/prefect"
    monkeypatch.setenv("SIKED_PG_BINDIR", str(tmp_path / "bin"))
    assert local_postgres.bindir() == tmp_path / "bin"
    where = local_postgres.default_cluster_dir(tmp_path / "state", "abc")
    if os.geteuid() == 0:  # root's cluster belongs to an unprivileged user: outside root's folders
        assert where.name == "siked-prefect-abc" and not where.is_relative_to(tmp_path)
    else:
        assert where == tmp_path / "state" / "postgres"
