"""Engines without a model: the file engine on the released PaLM SVAMP rationales, the openai engine
against a small local HTTP server (retries, refusals, the concurrency bound), and the shared helpers.

    pytest tests/test_engines.py
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines import EngineError, GenerationRequest, collect, make_engine
from distill.engines.base import Completion, cut_at_stop
from distill.engines.file_engine import completion_text
from distill.engines.openai_engine import OpenAIEngine, split_total

SVAMP_LLM = "distilling_step_by_step/svamp/llm"
SVAMP_FILES = [f"{SVAMP_LLM}/train_CoT_0.json", f"{SVAMP_LLM}/train_CoT_1.json"]


# --------------------------------------------------------------------------- shared helpers


def test_cut_at_stop_takes_the_earliest_stop_string():
    assert cut_at_stop("a\n\nb### Instruction c", ["### Instruction", "\n\n"]) == ("a", True)
    assert cut_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert cut_at_stop("text", []) == ("text", False)


def test_collect_orders_a_stream_and_rejects_gaps():
    one, two = [Completion("a", 1, 1, "stop")], [Completion("b", 1, 1, "stop")]
    assert collect([(1, two), (0, one)], 2) == [one, two]
    with pytest.raises(EngineError, match="no answer"):
        collect([(1, two)], 2)
    with pytest.raises(EngineError, match="twice"):
        collect([(0, one), (0, one)], 1)


def test_split_total_keeps_the_sum_and_the_proportions():
    assert split_total(10, [1, 1]) == [5, 5]
    assert split_total(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the remainder goes to the first
    assert sum(split_total(7, [5, 9, 2])) == 7
    assert split_total(5, [0, 0]) in ([3, 2], [2, 3])
    assert split_total(0, [4, 4]) == [0, 0]


# --------------------------------------------------------------------------- file engine


def test_file_engine_serves_the_palm_rationale_of_each_svamp_problem(data_dir):
    from distill.benchmarks import load_benchmark
    from distill.config import BenchmarkRef

    engine = make_engine(EngineConfig(kind="file", files=SVAMP_FILES), "", data_dir=data_dir)
    problems = {p.id: p for p in load_benchmark(BenchmarkRef(name="dss_svamp", split="train"), data_dir).problems}
    ids = ["dss_svamp/train/0", "dss_svamp/train/499", "dss_svamp/train/500", "dss_svamp/train/799"]
    requests = [GenerationRequest(key=f"{i}|cot", prompt=f"Q: {problems[i].question}\nA:", question_id=i) for i in ids]
    answers = engine.generate(requests, SamplingConfig(n=3))

    # One rationale per problem whatever n asks: the CoT_k files are slices of the split, not samples.
    assert [len(a) for a in answers] == [1, 1, 1, 1]
    first, row500 = answers[0][0], answers[2][0]
    assert first.text == ("Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. "
                          "84 / 2 = 42. The answer is (84 / 2).")
    # Element 0 of train_CoT_1.json belongs to row 500 (its question), not to row 0.
    assert "79 bottles of regular soda" in problems["dss_svamp/train/500"].question
    assert row500.text.startswith("The grocery store had 79 bottles of regular soda")
    assert all(a[0].finish_reason == "stop" for a in answers)
    assert first.completion_tokens == len(first.text.split())
    assert first.prompt_tokens == len(requests[0].prompt.split())
    assert engine.name == "file" and engine.model == "palm-540b" and engine.version.startswith("dss-release-")


def test_file_engine_cuts_every_rationale_before_the_made_up_next_question(data_dir):
    engine = make_engine(EngineConfig(kind="file", files=SVAMP_FILES), "", data_dir=data_dir)
    texts = [t for ts in engine._rationales.values() for t in ts]
    assert len(texts) == 800
    assert not any("\nQ:" in t for t in texts)
    assert sum("The answer is" in t for t in texts) == 789  # the count data_utils.py parsing finds
    raw = json.loads((data_dir / SVAMP_FILES[0]).read_text())[0]
    assert raw.startswith(completion_text(raw)) and "\n\nQ: There are 120 students" in raw


def test_file_engine_answers_only_problems_the_listed_files_cover(data_dir):
    engine = make_engine(EngineConfig(kind="file", files=[SVAMP_FILES[1]]), "", data_dir=data_dir)
    requests = [GenerationRequest("a", "p", "dss_svamp/train/0"), GenerationRequest("b", "p", "dss_svamp/train/500"),
                GenerationRequest("c", "p", "gsm8k/train/0")]
    assert [len(a) for a in engine.generate(requests, SamplingConfig(n=2))] == [0, 1, 0]


def test_file_engine_counts_tokens_with_a_tokenizer_when_given_one(data_dir, builtin_model_path):
    from transformers import AutoTokenizer

    engine = make_engine(EngineConfig(kind="file", files=SVAMP_FILES), str(builtin_model_path), data_dir=data_dir)
    (answer,), = engine.generate([GenerationRequest("k", "Q: x", "dss_svamp/train/0")], SamplingConfig(n=1))
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    assert answer.completion_tokens == len(tokenizer(answer.text, add_special_tokens=False)["input_ids"])
    assert engine.tokenizer() is not None


def test_file_engine_rejects_files_it_cannot_place(data_dir, tmp_path):
    with pytest.raises(EngineError, match="not found"):
        make_engine(EngineConfig(kind="file", files=[f"{SVAMP_LLM}/train_CoT_7.json"]), "", data_dir=data_dir)
    stray = tmp_path / "train_CoT_0.json"
    stray.write_text("[]")
    with pytest.raises(EngineError, match="not a Distilling Step-by-Step rationale file"):
        make_engine(EngineConfig(kind="file", files=[str(stray)]), "", data_dir=data_dir)
    with pytest.raises(EngineError, match="needs engine.files"):
        make_engine(EngineConfig(kind="file"), "", data_dir=data_dir)


# --------------------------------------------------------------------------- openai engine


class FakeServer:
    """An OpenAI-style /v1/completions endpoint on a free local port. `script` lists the status codes
    to answer in turn (200 once the list is used up); every request is recorded."""

    def __init__(self, script: list[int] | None = None, delay_s: float = 0.0, headers: dict | None = None):
        self.script = list(script or [])
        self.delay_s = delay_s
        self.headers = headers or {}
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, payload: dict) -> dict:
        n = payload.get("n", 1)
        texts = [f"{payload['prompt']}#{i}" + "x" * i for i in range(n)]
        return {"choices": [{"index": i, "text": t, "finish_reason": "stop" if i else "length"}
                            for i, t in reversed(list(enumerate(texts)))],  # out of order on purpose
                "usage": {"prompt_tokens": 7, "completion_tokens": 10 * n, "total_tokens": 7 + 10 * n}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self.send_response(404)
                self.end_headers()

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(payload)
                    server.auth.append(self.headers.get("Authorization"))
                    status = server.script.pop(0) if server.script else 200
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                time.sleep(server.delay_s)
                with server.lock:
                    server.in_flight -= 1
                body = json.dumps(server.answer(payload) if status == 200 else {"error": f"status {status}"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        return Handler


def _openai(base_url: str, **overrides) -> OpenAIEngine:
    cfg = EngineConfig(kind="openai", base_url=base_url, api_key_env="SIKED_TEST_KEY", **overrides)
    return OpenAIEngine(cfg, "served-model", backoff_s=0.01)


def test_openai_engine_sends_the_sampling_settings_and_keeps_order(monkeypatch):
    monkeypatch.setenv("SIKED_TEST_KEY", "secret")
    with FakeServer() as server:
        engine = _openai(server.base_url)
        sampling = SamplingConfig(n=3, temperature=0.5, top_p=0.9, max_tokens=33, stop=["###"])
        answers = engine.generate([GenerationRequest(f"k{i}", f"p{i}") for i in range(5)], sampling)
    assert [[c.text for c in a] for a in answers] == [[f"p{i}#0", f"p{i}#1x", f"p{i}#2xx"] for i in range(5)]
    sent = server.requests[0]
    assert {k: sent[k] for k in ("model", "n", "temperature", "top_p", "max_tokens", "stop")} == {
        "model": "served-model", "n": 3, "temperature": 0.5, "top_p": 0.9, "max_tokens": 33, "stop": ["###"]}
    assert set(server.auth) == {"Bearer secret"}
    first = answers[0]
    assert [c.prompt_tokens for c in first] == [7, 7, 7]
    assert sum(c.completion_tokens for c in first) == 30  # usage sums the 3 choices; split by length
    assert [c.finish_reason for c in first] == ["length", "stop", "stop"]
    assert engine.version == "unknown"  # no GET /version on this server


def test_openai_engine_retries_server_errors_and_429(monkeypatch):
    monkeypatch.delenv("SIKED_TEST_KEY", raising=False)
    with FakeServer(script=[500, 503, 429], headers={"Retry-After": "0"}) as server:
        (answer,) = _openai(server.base_url).generate([GenerationRequest("k", "p")], SamplingConfig(n=1))
    assert answer[0].text == "p#0"
    assert len(server.requests) == 4
    assert set(server.auth) == {None}  # no key in the environment: no Authorization header


def test_openai_engine_does_not_retry_other_client_errors():
    with FakeServer(script=[400]) as server, pytest.raises(EngineError, match=r"HTTP 400 \(not retried\): .*status 400"):
        _openai(server.base_url).generate([GenerationRequest("k", "p")], SamplingConfig(n=1))
    assert len(server.requests) == 1


def test_openai_engine_gives_up_after_max_retries():
    with FakeServer(script=[502] * 10) as server, pytest.raises(EngineError, match="HTTP 502 after 3 attempts"):
        _openai(server.base_url, max_retries=2).generate([GenerationRequest("k", "p")], SamplingConfig(n=1))
    assert len(server.requests) == 3


def test_openai_engine_retries_connection_errors():
    with FakeServer() as server:
        url = server.base_url
    with pytest.raises(EngineError, match="gave up after 2 attempts"):  # the server is closed
        _openai(url, max_retries=1).generate([GenerationRequest("k", "p")], SamplingConfig(n=1))


def test_openai_engine_keeps_at_most_concurrency_requests_in_flight():
    with FakeServer(delay_s=0.2) as server:
        engine = _openai(server.base_url, concurrency=3)
        finished = list(engine.generate_stream([GenerationRequest(f"k{i}", f"p{i}") for i in range(12)],
                                               SamplingConfig(n=1)))
    assert sorted(i for i, _ in finished) == list(range(12))
    assert len(server.requests) == 12
    assert 2 <= server.peak <= 3


def test_openai_engine_needs_a_base_url():
    with pytest.raises(EngineError, match="base_url"):
        make_engine(EngineConfig(kind="openai"), "m")


def test_vllm_cpu_threads_are_bound_to_every_allowed_cpu_unless_the_user_chose(monkeypatch):
    import os

    from distill.config import EngineConfig
    from distill.engines.vllm_settings import bind_all_cpus

    # setenv first so that monkeypatch restores the variable's absence: bind_all_cpus writes
    # os.environ itself, and a binding leaked to later tests breaks every vLLM engine they start.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "unset")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bind_all_cpus(EngineConfig(tensor_parallel_size=2))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # one list per rank: left to the user
    bind_all_cpus(EngineConfig())
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "1,3"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    bind_all_cpus(EngineConfig())
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0"


# vLLM's own words (vllm/v1/worker/cpu_worker.py, v1/core/kv_cache_utils.py) with this machine's numbers
CPU_STARTUP_REFUSAL = (
    "Available memory on node 0 (1.10/7.65 GiB) on startup is less than desired CPU memory utilization "
    "(0.3, 2.30 GiB). On the CPU backend, the `--gpu-memory-utilization` flag controls the fraction of CPU "
    "memory reserved (despite its name). To resolve: decrease `--gpu-memory-utilization` (e.g. "
    "`--gpu-memory-utilization 0.5`) or reduce CPU memory used by other processes.")
KV_TOO_SMALL = (
    "To serve at least one request with the model's max seq len (2048), (0.04 GiB KV cache is needed, which "
    "is larger than the available KV cache memory (0.01 GiB). Try increasing `gpu_memory_utilization`")


@pytest.mark.parametrize("message", [
    CPU_STARTUP_REFUSAL, KV_TOO_SMALL,
    "No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
    ("Available memory on node 0 (0.50/7.65 GiB) on kv cache allocation is less than requested memory for kv "
     "(0.70/2.30 GiB). Reduce CPU memory used by other processes."),
])
def test_vllm_memory_refusals_name_the_settings_that_give_the_kv_cache_a_size(message):
    from distill.engines.vllm_settings import memory_hint

    hint = memory_hint(message, on_gpus=False)
    assert "engine.vllm_args.kv_cache_memory_bytes" in hint and "VLLM_CPU_KVCACHE_SPACE" in hint
    assert message.split(". ")[0] in hint and "\n" not in hint
    assert "gpu_memory_utilization" in memory_hint(message, on_gpus=True)


def test_other_vllm_failures_get_no_memory_hint():
    from distill.engines.vllm_settings import memory_hint

    assert memory_hint("User-specified max_model_len (262144) is greater than the derived max_model_len",
                       on_gpus=False) is None


def test_vllm_engine_turns_the_memory_refusal_into_an_engine_error(monkeypatch):
    import sys
    import types

    import torch

    from distill.engines.vllm_engine import VllmEngine

    def refuse(**kwargs):
        raise ValueError(CPU_STARTUP_REFUSAL)

    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(name, "unset")  # then restored to absent, whatever the engine writes
        monkeypatch.delenv(name)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=refuse, __version__="test"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="engine.vllm_args.kv_cache_memory_bytes") as info:
        VllmEngine(EngineConfig(kind="vllm"), "some-model")
    assert isinstance(info.value.__cause__, ValueError)
