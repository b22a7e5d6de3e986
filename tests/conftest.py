"""Test isolation: every session gets its own SIKED_HOME and PREFECT_HOME, the shared data folder,
and a small vLLM CPU KV cache so several engines fit in memory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # Set before anything imports prefect, so its settings see the temporary home.
    base = Path(tempfile.mkdtemp(prefix="siked-tests-"))
    config._siked_tmp = base
    os.environ.setdefault("SIKED_DATA_DIR", str(DEFAULT_DATA_DIR))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No spare child processes between tests (their environments differ, so spares would be started
    # and thrown away); tests/test_engines_child.py turns warm start on where it tests it.
    os.environ.setdefault("SIKED_WARM_START", "0")
    # Quieter Prefect; also keeps its shutdown message off the closed capture stream at exit.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    session_home = Path(base) / "siked-home"
    session_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SIKED_HOME", str(session_home))
    prefect_home = Path(base) / "prefect-home"
    prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(prefect_home)


def pytest_unconfigure(config):
    base = getattr(config, "_siked_tmp", None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["SIKED_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"data folder {path} not present")
    return path


@pytest.fixture(scope="session")
def builtin_model_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (prepared once per session)."""
    from distill.models import prepare_builtin_model
    from storage.paths import models_dir

    return Path(prepare_builtin_model(models_dir()))


@pytest.fixture(scope="session")
def tiny_model_path(builtin_model_path: Path, tmp_path_factory) -> Path:
    """A two-layer Llama built from a config, with the SmolLM2 tokenizer (random weights)."""
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(builtin_model_path, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_vllm_model_path(builtin_model_path: Path, tmp_path_factory) -> Path:
    """A tiny Llama whose heads vLLM's CPU attention supports (head size 64: hidden 128, 2 heads)."""
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(builtin_model_path, tmp_path_factory.mktemp("tiny-vllm-llama"), hidden=128, heads=2,
                            kv_heads=1)
