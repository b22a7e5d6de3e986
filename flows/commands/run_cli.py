"""`siked run`, `siked resume`, `siked status` and `siked eval`: entry points around the main flow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from distill.config import ConfigError, RunConfig, load_config
from distill.strict_yaml import load_yaml, yaml_problem
from flows import prefect_api
from flows.commands.config_files import read_config
from flows.commands.preflight import preflight
from flows.run_setup import run_layout
from storage.fs import ArtifactMissing, exists, read_bytes
from storage.paths import RunLayout, layout_for_run_dir
from storage.step_store import OldRunFolder, read_index


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_cli(config_path: str, overrides: list[str]) -> int:
    """Validate, check what can be checked up front, then run the whole pipeline."""
    cfg = read_config(config_path, overrides)
    return _run(cfg)


def _run(cfg: RunConfig) -> int:
    prefect_api.start_early()
    from flows.siked import siked_flow

    preflight(cfg)
    layout = run_layout(cfg)
    _say(f"run {layout.run_id}: {layout.run_dir}")
    prefect_api.ready()
    result = siked_flow(cfg)
    _say(f"report: {result['report']}")
    print(layout.run_dir)
    return 0


def load_run(run: str) -> tuple[RunConfig, RunLayout]:
    """The saved config and layout of the run folder `run` (a path or URL)."""
    layout = layout_for_run_dir(run)
    if not exists(layout.config):
        raise ConfigError(f"{run} is not a run folder (no config.yaml)")
    data = _saved_config(layout)
    data["runs_root"] = layout.root  # the folder may have moved since the run started
    cfg = load_config(data, source=layout.config)
    if run_layout(cfg).run_id != layout.run_id:
        raise ConfigError(f"{layout.config} does not belong to {layout.run_id} "
                          f"(its config maps to {run_layout(cfg).run_id}); was it edited?")
    try:
        read_index(layout)
    except OldRunFolder as exc:
        raise ConfigError(str(exc)) from None
    except ArtifactMissing:
        pass  # killed before its first step: resuming starts it
    return cfg, layout


def _saved_config(layout: RunLayout) -> dict:
    """The run's config.yaml as a mapping; ConfigError naming the file when it is not one."""
    try:
        data = load_yaml(read_bytes(layout.config).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = yaml_problem(exc) if isinstance(exc, yaml.YAMLError) else "not UTF-8 text"
        raise ConfigError(f"{layout.config}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{layout.config}: not a run's config (the top level is not a mapping)")
    return data


def resume_cli(run: str) -> int:
    """Continue a failed or killed run from its artifacts, whatever the Prefect API says about it."""
    cfg, _ = load_run(run)
    return _run(cfg)


def status_cli(run: str, as_json: bool) -> int:
    from flows.commands.status import as_json as status_json
    from flows.commands.status import format_status, run_status

    cfg, layout = load_run(run)
    statuses = run_status(cfg, layout)
    print(json.dumps(status_json(statuses), indent=2) if as_json else format_status(statuses))
    return 0


def eval_cli(model: str, overrides: list[str], config_path: str | None) -> int:
    """Evaluate any model (checkpoint folder, built-in or Hub id) the way runs evaluate students."""
    from flows.siked import eval_only_flow

    cfg = read_config(config_path, overrides) if config_path else load_config(None, overrides)
    prefect_api.start_early()
    if not cfg.eval.benchmarks:
        raise ConfigError("eval.benchmarks is empty: name at least one, e.g. "
                          "'eval.benchmarks=[{name: arith, split: test}]'")
    model_hash = None
    if Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
        model_hash = _folder_hash(model)
    cfg = cfg.model_copy(update={"name": "eval"})
    cfg.train = cfg.train.model_copy(update={"model": model})
    preflight(cfg)
    prefect_api.ready()
    scores, folder = eval_only_flow(cfg, model, model_hash)
    for s in scores:
        print(f"{s['benchmark']:<16} {s['mode']:<9} accuracy {s['accuracy']:.4f}  (n={s['n']})", file=sys.stderr)
    print(folder)
    return 0


def _folder_hash(folder: str) -> str | None:
    """The content hash of a marked model folder (a student), None for an unmarked one."""
    from storage.folders import folder_manifest

    try:
        return folder_manifest(folder)["content_hash"]
    except ArtifactMissing:
        return None
