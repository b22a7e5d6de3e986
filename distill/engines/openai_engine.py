"""Any OpenAI-compatible endpoint (`vllm serve`, a hosted API) through `POST <base_url>/completions`.

    vllm serve MODEL_FOLDER --host 127.0.0.1 --port 8000     # engine.base_url: http://127.0.0.1:8000/v1

Prompts are sent rendered (`prompt`, `n`, `temperature`, `top_p`, `max_tokens`, `stop`, `model`),
at most `engine.concurrency` requests in flight (one request carries a prompt's n samples).
Connection errors, timeouts, 429 and 5xx are retried up to `engine.max_retries` times with
exponential backoff and full jitter (a 429's Retry-After is honoured); any other 4xx fails at once
with the status and the start of the body. The API key is read from the environment variable named
by `engine.api_key_env` and may be absent (local servers need none).

Token counts come from the response's `usage`. OpenAI and vLLM report one `usage` per request:
`prompt_tokens` counts the prompt once (every choice gets that number) and `completion_tokens` sums
the n choices, so it is split across choices in proportion to their text length (largest remainders
keep the sum exact; exact when n = 1). Without `usage` the counts are 0.

Scoring (`score`): each sequence goes to `/completions` as a prompt of token ids with `max_tokens: 1`
and vLLM's `prompt_logprobs: k`, and each choice's `prompt_logprobs` (one dict token id -> {logprob,
rank, decoded_token} per prompt token, None first) is read back, as the offline engine reads
vLLM's (distill.engines.prompt_logprobs). The OpenAI-standard `echo: true, logprobs: k` is not used:
it keys the top-k by decoded text, not by id, so tokens that decode alike merge and ids are lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from distill.config import EngineConfig, SamplingConfig
from distill.engines.base import Completion, EngineError, GenerationRequest, collect
from distill.engines.prompt_logprobs import ScoreRequest, TokenScores, check_score_requests, token_scores

MAX_BACKOFF_S = 30.0


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: EngineConfig, model_path: str, backoff_s: float = 0.5):
        if not cfg.base_url:
            raise EngineError("engine.kind openai needs engine.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.base_url = cfg.base_url.rstrip("/")
        self.model = model_path
        self.concurrency = cfg.concurrency
        self.max_retries = cfg.max_retries
        self.timeout_s = cfg.request_timeout_s
        self.backoff_s = backoff_s
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._tokenizer: Any | None = None
        self.version = self._server_version()

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 lora_path: str | None = None) -> list[list[Completion]]:
        return collect(self.generate_stream(requests, sampling, lora_path), len(requests))

    def generate_stream(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                        lora_path: str | None = None) -> Iterator[tuple[int, list[Completion]]]:
        """(request index, completions) in finishing order. The requests run on an event loop in a
        background thread, so they keep flowing while the caller handles each answer; closing the
        iterator cancels those still in flight."""
        if lora_path is not None:
            raise EngineError("the openai engine serves no LoRA adapter per request: serve it as a model "
                              "of its own (vllm serve ... --lora-modules NAME=PATH) and name it in engine.model")
        if not requests:
            return
        answers: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="openai-engine", daemon=True)
        thread.start()
        job = asyncio.run_coroutine_threadsafe(self._run_all(requests, sampling, answers), loop)
        answered = False
        try:
            for _ in requests:
                yield _next_answer(answers, job)
            answered = True
        finally:
            if not answered:
                job.cancel()
            with contextlib.suppress(Exception):  # cancelled, or the error already raised above
                job.result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    def score(self, requests: list[ScoreRequest], k: int, lora_path: str | None = None) -> list[TokenScores]:
        """The served model's log-probabilities at each completion token, in request order
        (distill.engines.prompt_logprobs), from vLLM's `prompt_logprobs` extension (module docstring);
        a server that does not send them back is refused."""
        if lora_path is not None:
            raise EngineError("the openai engine serves no LoRA adapter per request: serve it as a model of its own")
        check_score_requests(requests, k)
        if not requests:
            return []
        # A thread of its own: asyncio.run needs a thread without a running event loop.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="openai-score") as pool:
            try:
                bodies = pool.submit(asyncio.run, self._score_all(requests, k)).result()
            except ExceptionGroup as failed:  # the first failure cancelled the other requests
                raise failed.exceptions[0] from None
        return [token_scores(_prompt_logprobs(body, r.key), r, k) for body, r in zip(bodies, requests, strict=True)]

    # ------------------------------------------------------------------ async side

    async def _score_all(self, requests: list[ScoreRequest], k: int) -> list[dict[str, Any]]:
        limit = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)

        async def one(client: httpx.AsyncClient, request: ScoreRequest) -> dict[str, Any]:
            # Token ids as the prompt: the server reads them as they are (no tokenization, no BOS added).
            payload = {"model": self.model, "prompt": list(request.token_ids), "max_tokens": 1,
                       "temperature": 0.0, "prompt_logprobs": k}
            async with limit:
                return await self._post_with_retries(client, payload)

        async with (httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers, limits=limits) as client,
                    asyncio.TaskGroup() as group):
            tasks = [group.create_task(one(client, r)) for r in requests]
        return [t.result() for t in tasks]

    async def _run_all(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                       answers: queue.Queue) -> None:
        limit = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)

        async def one(client: httpx.AsyncClient, index: int, request: GenerationRequest) -> None:
            async with limit:
                body = await self._post_with_retries(client, self._payload(request, sampling))
            answers.put((index, _completions(body, request.key)))

        try:
            async with (httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers, limits=limits) as client,
                        asyncio.TaskGroup() as group):
                for index, request in enumerate(requests):
                    group.create_task(one(client, index, request))
        except* Exception as failed:  # noqa: BLE001 - handed to the caller; the first failure cancelled the rest
            answers.put(failed.exceptions[0])

    def _payload(self, request: GenerationRequest, sampling: SamplingConfig) -> dict[str, Any]:
        payload = {"model": self.model, "prompt": request.prompt, "n": sampling.n,
                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                   "max_tokens": sampling.max_tokens}
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        return payload

    async def _post_with_retries(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/completions"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await client.post(url, json=payload)
            except httpx.TransportError as exc:  # connection errors and timeouts
                if last:
                    raise EngineError(f"POST {url}: {type(exc).__name__}: {exc} "
                                      f"(gave up after {attempt + 1} attempts)") from exc
                await asyncio.sleep(self._backoff(attempt))
                continue
            status = response.status_code
            if status < 400:
                return response.json()
            excerpt = response.text[:500]
            if status != 429 and status < 500:
                raise EngineError(f"POST {url} -> HTTP {status} (not retried): {excerpt}")
            if last:
                raise EngineError(f"POST {url} -> HTTP {status} after {attempt + 1} attempts: {excerpt}")
            await asyncio.sleep(self._backoff(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), MAX_BACKOFF_S)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        # Full jitter: clients that failed together do not retry together.
        return random.uniform(0, min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt))

    # ------------------------------------------------------------------ the rest

    def _server_version(self) -> str:
        """`vllm <version>` when the server answers vLLM's GET /version, else `unknown`."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = httpx.get(f"{root}/version", headers=self._headers, timeout=10)
            if response.status_code == 200 and "version" in response.json():
                return f"vllm {response.json()['version']}"
        except (httpx.HTTPError, ValueError):
            pass
        return "unknown"

    def tokenizer(self) -> Any | None:
        """The tokenizer of the served model when `model` is a local folder, else None."""
        if self._tokenizer is None and (Path(self.model) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def close(self) -> None:
        pass


def _next_answer(answers: queue.Queue, job) -> tuple[int, list[Completion]]:
    while True:
        try:
            item = answers.get(timeout=1.0)
        except queue.Empty:
            if not job.done():
                continue
            try:  # the loop may have queued its last item just before ending
                item = answers.get_nowait()
            except queue.Empty:
                job.result()  # raises what ended the loop, if anything
                raise EngineError("the request loop ended before answering every request") from None
        if isinstance(item, BaseException):
            raise item
        return item


def _completions(body: dict[str, Any], key: str) -> list[Completion]:
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise EngineError(f"request {key}: the server returned no choices: {str(body)[:300]}")
    texts = [c.get("text") or "" for c in choices]
    usage = body.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    counts = split_total(int(usage.get("completion_tokens") or 0), [len(t) for t in texts])
    return [Completion(text=t, prompt_tokens=prompt_tokens, completion_tokens=k,
                       finish_reason=c.get("finish_reason") or "unknown")
            for t, k, c in zip(texts, counts, choices)]


def _prompt_logprobs(body: dict[str, Any], key: str) -> list:
    choices = body.get("choices") or []
    found = choices[0].get("prompt_logprobs") if choices else None
    if found is None:
        raise EngineError(f"request {key}: the server sent no prompt_logprobs; scoring needs vLLM's OpenAI "
                          f"server (`vllm serve`), which returns them per prompt token: {str(body)[:300]}")
    return found


def split_total(total: int, weights: list[int]) -> list[int]:
    """Split `total` into integers proportional to `weights` (equal shares when all are 0); the
    parts sum to `total` (largest remainders get the leftover units)."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts
