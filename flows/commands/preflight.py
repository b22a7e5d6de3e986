"""Checks that fail a run at once, before any model is loaded, when the outcome is already known:
a model that cannot be found, a data folder that is missing, an engine missing its settings, an
option whose package is not installed, a file benchmark of which not one record can be used."""

from __future__ import annotations

import importlib.util

from distill.benchmarks import BenchmarkError
from distill.config import BenchmarkRef, ConfigError, EngineConfig, RunConfig, TrainConfig
from storage.paths import DataDirMissing, data_dir
from tasks.jobs.benchmarks import data_available, load_problems


def _check_model(spec: str, where: str) -> None:
    from distill.models import ModelSpecError, model_spec_kind

    if "://" in spec:
        from storage.folders import folder_problem
        from storage.fs import is_remote_url, resolve

        if not is_remote_url(spec):
            spec = resolve(spec)[1]  # file://: a local path
        elif problem := folder_problem(spec):  # a model folder under a remote run root
            raise ConfigError(f"{where}: {problem}")
        else:
            return
    try:
        model_spec_kind(spec)
    except ModelSpecError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_engine(engine: EngineConfig, where: str) -> None:
    if engine.kind == "openai" and not engine.base_url:
        raise ConfigError(f"{where}.base_url: the openai engine needs the endpoint URL")
    if engine.kind == "file" and not engine.files:
        raise ConfigError(f"{where}.files: the file engine needs rationale files")
    if engine.replicas > 1 and engine.kind in ("openai", "file"):
        raise ConfigError(f"{where}.replicas: engine replicas are for local engines (vllm, transformers); "
                          f"the {engine.kind} engine runs as one")
    if engine.kind not in ("openai", "file"):
        _check_model(engine.model, f"{where}.model")


def check_train(train: TrainConfig) -> None:
    """The training section: its model name, and the optional packages its options need."""
    _check_model(train.model, "train.model")
    if train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard: the tensorboard package is not installed "
                          "(pip install 'siked-pipeline[tensorboard]', or set train.tensorboard=false)")


def _named_sets(cfg: RunConfig) -> list[tuple[str, BenchmarkRef]]:
    return [("train_data", cfg.train_data), *((f"eval.benchmarks.{i}", r) for i, r in enumerate(cfg.eval.benchmarks))]


def check_sets(cfg: RunConfig) -> None:
    """Read each local file benchmark once, before any work: a file that cannot be parsed, or of
    which not one record is usable (a field path that matches nothing, a CSV without the answer
    column), would otherwise fail only when its step runs, after the steps before it. The error
    names the set's key and the field that matched nothing. Built-in sets are the published files;
    Hub datasets are read by their step (the problems step gives the same reason)."""
    for where, ref in _named_sets(cfg):
        if ref.name != "file" or ref.source != "local" or not data_available(ref, cfg.data_dir):
            continue
        try:
            loaded = load_problems(ref, cfg.data_dir)
        except BenchmarkError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if why := loaded.why_no_problem():
            raise ConfigError(f"{where}: {why}")


def _tokenizer_folder(spec: str) -> str | None:
    """The local folder holding `spec`'s tokenizer, when one is at hand without preparing or
    downloading anything (a local folder, or a builtin model already prepared); else None."""
    from distill.models import BUILTIN_PREFIX, ModelSpecError, builtin_model_dir, is_prepared, model_spec_kind
    from storage.paths import models_dir

    try:
        kind = model_spec_kind(spec)
    except ModelSpecError:  # a URL, or a name the other checks refuse
        return None
    if kind == "local":
        return spec
    if kind == "builtin":
        folder = builtin_model_dir(models_dir(), spec.strip()[len(BUILTIN_PREFIX):])
        return str(folder) if is_prepared(folder) else None
    return None


def check_scoring_teacher(cfg: RunConfig) -> None:
    """`token_level.teacher=separate`: the teacher must share the student's tokenizer (scoring reads
    the student's token ids). Refused here, naming both, when both tokenizers are at hand; otherwise
    the scoring step checks it before it loads the teacher."""
    if not (cfg.token_level.scored_iterations(cfg.siked.iterations) and cfg.token_level.teacher == "separate"):
        return
    teacher, student = cfg.teacher.engine.model, cfg.train.model
    if cfg.teacher.engine.kind not in ("vllm", "transformers") or teacher.strip() == student.strip():
        return
    folders = (_tokenizer_folder(teacher), _tokenizer_folder(student))
    if None in folders:
        return
    from transformers import AutoTokenizer

    from distill.scoring import TokenizerMismatch, check_shared_tokenizer

    try:
        check_shared_tokenizer(AutoTokenizer.from_pretrained(folders[0]), AutoTokenizer.from_pretrained(folders[1]),
                               teacher, student)
    except TokenizerMismatch as exc:
        raise ConfigError(f"token_level.teacher: {exc}") from None


def preflight(cfg: RunConfig) -> None:
    """Raise ConfigError for problems detectable before any work."""
    _check_engine(cfg.teacher.engine, "teacher.engine")
    check_train(cfg.train)
    refs = [r for r in [cfg.train_data, *cfg.eval.benchmarks] if not r.skip_if_missing]
    needs_data = [r for r in refs if r.reads_data_folder]
    if needs_data:
        try:
            data_dir(cfg.data_dir)
        except DataDirMissing as exc:
            names = ", ".join(sorted({r.name for r in needs_data}))
            raise ConfigError(f"{exc} (needed by: {names})") from None
    for ref in refs:
        if ref.name == "file" and not data_available(ref, cfg.data_dir):
            raise ConfigError(f"{ref.path}: file not found (benchmark {ref.benchmark_name}; a relative path "
                              "is read from the directory siked runs in)")
    if cfg.siked.iterations and cfg.siked.engine.kind in ("openai", "file"):
        raise ConfigError("siked.engine.kind: students generate with a local engine (vllm or transformers)")
    check_sets(cfg)
    check_scoring_teacher(cfg)
