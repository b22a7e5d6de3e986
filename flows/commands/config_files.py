"""Reading config files: YAML from disk plus command-line overrides, errors naming the file."""

from __future__ import annotations

from pathlib import Path

from distill.config import ConfigError, RunConfig, load_config


def read_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load CONFIG (a YAML file) with `key=value` overrides into a validated RunConfig."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return load_config(path.read_text(encoding="utf-8"), overrides, source=str(path))
