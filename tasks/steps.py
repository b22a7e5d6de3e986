"""Step keys and the rule that a finished step never runs again.

A step's key hashes its config section, the content hashes of its input artifacts (from their
manifests) and the code's cache version. The key is written into the output's manifest as its
`config_hash`; the step is done when that manifest exists and matches (storage.is_complete).

Prefect caching sits on top: a task whose output is complete is submitted with the step key as its
cache key, so Prefect reports it as Cached without running it; a task whose output is missing or
stale is submitted with `refresh_cache=True` and runs. The files on disk stay the truth: every task
body checks its manifest first, so a wiped Prefect home or a run the API still calls "Running"
costs nothing but the check.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from distill.config import section_hash
from storage.artifacts import is_complete, read_manifest

# Bump when a change to the code must invalidate finished steps (the package version is part of
# the key too). Git commits alone do not: resuming after an unrelated fix must reuse finished work.
CACHE_VERSION = "1"


def cache_version() -> str:
    try:
        package = metadata.version("siked-pipeline")
    except metadata.PackageNotFoundError:
        package = "0"
    return f"{package}/{CACHE_VERSION}"


def step_key(step: str, config: BaseModel | dict | list | None = None, inputs: list[str] = (),
             **extra: Any) -> str:
    """Key of one step: its name, config, input artifacts' content hashes, code cache version."""
    payload = {
        "step": step,
        "config": section_hash(config) if config is not None else None,
        "inputs": [read_manifest(url)["content_hash"] for url in inputs],
        "code": cache_version(),
        "extra": extra,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def submit_step(task, key: str, outputs: str | list[str], kind: str | None, /, **params: Any):
    """Run `task(**params)` under Prefect with `key` as its cache key, refreshing the cache when
    an `outputs` artifact is not complete under that key. Returns the task's result."""
    urls = [outputs] if isinstance(outputs, str) else outputs
    done = all(is_complete(url, kind=kind, config_hash=key, verify_hash=False) for url in urls)
    configured = task.with_options(cache_key_fn=lambda *_: key, refresh_cache=not done)
    return configured(**params)
