"""What a deployment runs: the stage -> flow table, and the flow that prefect.yaml deploys.

    prefect deploy --all        # the deployments of prefect.yaml (docs/deployment.md)

`siked serve` embeds a resolved RunConfig in its deployment (flows/server/serve.py). Deployments written
in prefect.yaml name a config file instead: `siked_from_file` reads and validates it when the run
starts, relative to the working directory that the deployment's pull step sets (the project), so
the YAML file stays the one place a config is written.
"""

from __future__ import annotations

import importlib
from typing import Literal

from prefect import flow, get_run_logger

from distill.config import ConfigError

# Flows are named "module:attribute" and imported when asked for, so that listing them imports
# no pipeline code.
FLOWS = {
    "siked": "flows.siked:siked_flow",
    "teacher": "flows.teacher:teacher_flow",
}
Stage = Literal["siked", "teacher"]
DEFAULT_STAGE: Stage = "siked"


def load_flow(stage: str = DEFAULT_STAGE):
    """The Prefect flow of `stage` (a key of FLOWS); each takes one argument, a RunConfig."""
    if stage not in FLOWS:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(FLOWS)})")
    module, _, name = FLOWS[stage].partition(":")
    return getattr(importlib.import_module(module), name)


@flow(name="siked-from-file", flow_run_name="{stage}-{config_path}")
def siked_from_file(config_path: str, overrides: list[str] | None = None,
                    stage: Stage = DEFAULT_STAGE) -> dict:
    """Run `stage` on the config at `config_path` (plus `key=value` overrides) as a subflow.

    A bad config fails this run before any step, with the offending key in the error."""
    from pathlib import Path

    from flows.commands.config_files import read_config

    cfg = read_config(config_path, list(overrides or []))
    get_run_logger().info("config %s (%d overrides), stage %s", Path(config_path).resolve(),
                          len(overrides or []), stage)
    return load_flow(stage)(cfg)
