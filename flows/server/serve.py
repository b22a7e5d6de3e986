"""Serve the pipeline on a schedule: one deployment holding the resolved config, run by this process.

    siked serve configs/quickstart.yaml teacher.sampling.n=2 --cron "0 3 * * *"
    siked serve configs/quickstart.yaml --cron "0 3 * * *" --dry-run    # print it, serve nothing

The config is read and validated before anything talks to Prefect, then embedded in the
deployment as JSON (`{"cfg": RunConfig.model_dump(mode="json")}`). Prefect checks a run's
parameters against the flow's schema and validates them back into a RunConfig when the run
starts: every scheduled run computes exactly the config validated here, in the same run folder
(a finished run is reused step by step, an interrupted one resumes). Schedules need a Prefect
server (PREFECT_API_URL): the ephemeral API that flows start on their own has no scheduler.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from distill.config import ConfigError, RunConfig
from flows.run_setup import run_id

# Prefect (and through flows.server.deploy the pipeline's flows) is imported only once the config is
# valid: a mistyped key fails in a fraction of a second.


def cron_schedule(cron: str, timezone: str = "UTC"):
    """A Prefect cron schedule; ConfigError naming the option when the cron or timezone is bad."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    try:
        CronSchedule(cron=cron, timezone=timezone)  # validates both; Cron() checks only the cron
    except ValueError as exc:
        error = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("cron",), "msg": str(exc)}
        option = "timezone" if "timezone" in error["loc"] else "cron"
        value = timezone if option == "timezone" else cron
        raise ConfigError(f"--{option} {value!r}: {error['msg'].removeprefix('Value error, ')}") from None
    return Cron(cron, timezone=timezone)


def build_deployment(cfg: RunConfig, cron: str | None = None, timezone: str = "UTC",
                     name: str | None = None, stage: str | None = None):
    """The deployment `siked serve` serves: `stage`'s flow with `cfg` embedded, on `cron` (or none).

    Returns a prefect RunnerDeployment; nothing is sent to the API until it is served."""
    from prefect.types.entrypoint import EntrypointType

    from flows.server.deploy import DEFAULT_STAGE, load_flow

    stage = stage or DEFAULT_STAGE
    flow = load_flow(stage)
    schedule = cron_schedule(cron, timezone) if cron else None
    identity = run_id(cfg)
    try:
        return flow.to_deployment(
            name=name or cfg.name,
            schedule=schedule,
            parameters={"cfg": cfg.model_dump(mode="json")},
            # Runs of one config share one run folder: a scheduled run waits for the last one.
            concurrency_limit=1,
            tags=["siked", stage],
            version=identity,
            description=f"{stage} on run {identity}, config embedded at serve time",
            # A module path loads the flow from the installed package, whatever the runner's cwd.
            entrypoint_type=EntrypointType.MODULE_PATH,
            # Prefect 3.6's server-side check drops every schema key named "required": no config
            # field may carry that name (tests/test_serve.py guards it).
            enforce_parameter_schema=True,
        )
    except ValueError as exc:  # a deployment name Prefect refuses
        raise ConfigError(f"--name {name or cfg.name!r}: {exc}") from None


def describe(deployment) -> dict[str, Any]:
    """What a deployment will run, as JSON-able data (printed by --dry-run)."""
    return {
        "flow": deployment.flow_name,
        "deployment": deployment.name,
        "entrypoint": deployment.entrypoint,
        "version": deployment.version,
        "schedules": [s.schedule.model_dump(mode="json") for s in deployment.schedules or []],
        "concurrency_limit": deployment.concurrency_limit,
        "tags": deployment.tags,
        "parameters": deployment.parameters,
    }


def api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def serve_cli(config_path: str, overrides: list[str], cron: str | None, timezone: str = "UTC",
              name: str | None = None, stage: str | None = None, dry_run: bool = False) -> int:
    """`siked serve`: validate everything, then serve until interrupted (Ctrl-C pauses the schedule)."""
    from flows.commands.config_files import read_config

    cfg = read_config(config_path, overrides)
    deployment = build_deployment(cfg, cron=cron, timezone=timezone, name=name, stage=stage)
    if dry_run:
        print(json.dumps(describe(deployment), indent=2))
        return 0
    if not api_url():
        print("siked: serving needs a Prefect server: start one (`prefect server start`, or "
              "docker/compose.yaml) and set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api",
              file=sys.stderr)
        return 1
    from prefect import serve

    when = f"cron {cron!r} ({timezone})" if cron else "no schedule (start runs from the UI)"
    print(f"siked: serving {deployment.flow_name}/{deployment.name} for run {run_id(cfg)}, {when}",
          file=sys.stderr)
    serve(deployment, limit=1)
    return 0
