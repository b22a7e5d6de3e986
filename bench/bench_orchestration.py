"""Orchestration overhead of the SIKeD flow, and the cost of rerunning a finished config.

    python bench/bench_orchestration.py [CONFIG] [key=value ...]      # default: configs/quickstart.yaml
    python bench/bench_orchestration.py --flow-run ID|latest CONFIG [key=value ...]

With `--flow-run ID`, step 1 reads a finished run of the same config from the Prefect API instead
of running it (for example the `make quickstart` that just ran, with the same PREFECT_HOME and
runs root): its wall time is the flow run's start to end as the API recorded them.

Runs the flow twice in this process (Prefect's temporary API unless PREFECT_API_URL is set):
1. a fresh run: its wall time against the sum of its step tasks' own run times (from the Prefect
   API); the difference is what orchestration adds (flow and task bookkeeping, cache checks,
   artifacts); goal: under 5% of the wall time;
2. the same config again: no step executes; its wall time as a fraction of the first run's.
Pass `runs_root=...` to keep the run; by default it goes to a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

STEP_TASKS = {"freeze_problems", "generate_samples", "verify", "build_distill_set", "mix_training_set",
              "train_student_step", "evaluate_model"}


def task_times(flow_run_id) -> tuple[float, dict[str, int]]:
    """Sum of the step tasks' run times (seconds) under a flow run and its subflows, and their states."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async def read():
        async with get_client() as client:
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id, *[c.id for c in children]]
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))

    runs = asyncio.run(read())
    total, states = 0.0, {}
    for run in runs:
        if run.task_key.rsplit("-", 1)[0] in STEP_TASKS:
            total += run.total_run_time.total_seconds()
            name = run.state.name if run.state else "none"
            states[name] = states.get(name, 0) + 1
    return total, states


def timed_run(cfg):
    from flows.siked import siked_flow

    started = time.perf_counter()
    state = siked_flow(cfg, return_state=True)
    wall = time.perf_counter() - started
    if not state.is_completed():
        raise SystemExit(f"flow ended {state.name}: {state.message}")
    return wall, state.state_details.flow_run_id


def recorded_run(flow_run_id: str) -> tuple[float, str]:
    """Wall time (start to end, from the API) of a finished flow run (`latest`: the newest `siked` run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    async def read():
        async with get_client() as client:
            if flow_run_id != "latest":
                return await client.read_flow_run(flow_run_id)
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["siked"])),
                flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True)),
                sort=FlowRunSort.START_TIME_DESC, limit=1)
            if not runs:
                raise SystemExit("no siked flow run recorded in this Prefect API")
            return runs[0]

    run = asyncio.run(read())
    if not (run.state and run.state.is_completed()):
        raise SystemExit(f"flow run {flow_run_id} is {run.state.name if run.state else 'unknown'}, not completed")
    return (run.end_time - run.start_time).total_seconds(), run.id


def main(argv: list[str]) -> None:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.commands.config_files import read_config

    existing = None
    if argv[:1] == ["--flow-run"]:
        existing, argv = argv[1], argv[2:]
    config = argv[0] if argv and not "=" in argv[0] else "configs/quickstart.yaml"
    overrides = [a for a in argv if "=" in a]
    if existing is None and not any(o.startswith("runs_root=") for o in overrides):
        overrides.append(f"runs_root={tempfile.mkdtemp(prefix='bench-orch-')}")
    cfg = read_config(Path(config), overrides)

    wall_1, run_1 = recorded_run(existing) if existing else timed_run(cfg)
    steps_1, states_1 = task_times(run_1)
    wall_2, run_2 = timed_run(cfg)
    steps_2, states_2 = task_times(run_2)
    overhead = (wall_1 - steps_1) / wall_1
    print(f"config: {config} {' '.join(overrides)}")
    print(f"first run:  wall {wall_1:8.1f} s, step tasks {steps_1:8.1f} s, states {states_1}")
    print(f"            orchestration overhead {wall_1 - steps_1:.1f} s = {100 * overhead:.1f}% of wall "
          f"(goal < 5%: {'met' if overhead < 0.05 else 'NOT met'})")
    print(f"second run: wall {wall_2:8.1f} s, step tasks {steps_2:8.1f} s, states {states_2}")
    print(f"            second run / first run = {wall_2 / wall_1:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
