"""Scoring given tokens with an engine: what a scoring request is, what comes back, and how vLLM's
prompt log-probabilities turn into it.

    scores = engine.score([ScoreRequest(key, prompt_ids + completion_ids, len(prompt_ids))], k=20)
    scores[0].sampled_logprobs    # [C] log p(completion token c | prompt, tokens before c)
    scores[0].top_ids             # [C][k] the k likeliest tokens at c, likeliest first

Engines that score (`vllm`, `openai` against a vLLM server) run the whole sequence as a prompt
with `prompt_logprobs=k` and one generated token (`max_tokens=1`), which is thrown away. Token ids go
in, never text, so the scored ids are exactly the ids given (no second tokenization).

vLLM's prompt log-probabilities (`RequestOutput.prompt_logprobs`): one entry per prompt token, None
for the first (nothing predicts it), else a dict token id -> Logprob(logprob, rank, decoded_token)
holding the k likeliest tokens (ranks 1..k) and the token actually there. The actual token is put in
first and the top-k after it, so when it is among the top-k the dict has k entries (its rank is its
top-k rank); when it is not, k + 1 entries, its own rank above k (or, on a tie with the k-th, equal to
it). `position_scores` separates the two. The OpenAI server sends the same dicts as JSON (ids as
string keys, -inf clamped to -9999.0). Log-probabilities are vLLM's `raw_logprobs` (its default):
the log-softmax of the model's logits, natural log, before temperature or top-p.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distill.engines.base import EngineError


@dataclass
class ScoreRequest:
    key: str
    """The caller's id (a sample id)."""
    token_ids: list[int]
    """Prompt ids followed by completion ids: the sequence the model reads."""
    prompt_len: int
    """How many of `token_ids` are the prompt (>= 1); the rest are scored."""


@dataclass
class TokenScores:
    """The model's log-probabilities at each completion token (C tokens, k per position)."""

    sampled_logprobs: list[float]
    """[C] log-probability of the completion token that is there."""
    top_ids: list[list[int]]
    """[C][k] the k likeliest token ids at each position, likeliest first."""
    top_logprobs: list[list[float]]
    """[C][k] their log-probabilities, descending."""


def _logprob_of(entry: Any) -> float:
    """A vLLM `Logprob` or its JSON form ({"logprob": ..., "rank": ..., "decoded_token": ...})."""
    return float(entry["logprob"] if isinstance(entry, Mapping) else entry.logprob)


def _rank_of(entry: Any) -> int | None:
    return entry.get("rank") if isinstance(entry, Mapping) else entry.rank


def position_scores(entries: Mapping[Any, Any], actual: int, k: int) -> tuple[float, list[int], list[float]]:
    """(actual token's log-probability, top-k ids, top-k log-probabilities) of one position.

    `entries`: vLLM's dict token id (int, or str from JSON) -> Logprob for that position, the top-k
    plus the actual token (k or k + 1 entries, module docstring).
    """
    by_id = {int(token): entry for token, entry in entries.items()}
    if actual not in by_id:
        raise EngineError(f"the engine's log-probabilities at a position lack the token there ({actual})")
    if len(by_id) == k + 1:  # the actual token is outside the top-k: vLLM added it
        top = {token: entry for token, entry in by_id.items() if token != actual}
    elif len(by_id) == k:
        top = by_id
    else:
        raise EngineError(f"expected {k} or {k + 1} log-probabilities per position, got {len(by_id)}")
    # Top-k ranks are 1..k in vLLM's top-k order; log-probability, then id, orders any entry without one.
    order = sorted(top, key=lambda t: (_rank_of(top[t]) or k + 1, -_logprob_of(top[t]), t))
    return _logprob_of(by_id[actual]), order, [_logprob_of(top[t]) for t in order]


def token_scores(prompt_logprobs: Sequence[Mapping[Any, Any] | None] | None, request: ScoreRequest,
                 k: int) -> TokenScores:
    """The completion part of one sequence's prompt log-probabilities (one entry per token of
    `request.token_ids`)."""
    ids = request.token_ids
    if prompt_logprobs is None or len(prompt_logprobs) != len(ids):
        got = "none" if prompt_logprobs is None else len(prompt_logprobs)
        raise EngineError(f"request {request.key}: expected prompt log-probabilities for {len(ids)} tokens, got {got}")
    if not 1 <= request.prompt_len <= len(ids):
        raise EngineError(f"request {request.key}: prompt_len {request.prompt_len} outside 1..{len(ids)}")
    sampled, top_ids, top_logprobs = [], [], []
    for position in range(request.prompt_len, len(ids)):
        entries = prompt_logprobs[position]
        if entries is None:
            raise EngineError(f"request {request.key}: no log-probabilities at position {position}")
        actual, ids_k, logprobs_k = position_scores(entries, ids[position], k)
        sampled.append(actual)
        top_ids.append(ids_k)
        top_logprobs.append(logprobs_k)
    return TokenScores(sampled, top_ids, top_logprobs)


def check_score_requests(requests: Sequence[ScoreRequest], k: int) -> None:
    """Refuse what no engine can score: k < 1, an empty prompt, nothing to score."""
    if k < 1:
        raise EngineError(f"k must be at least 1, got {k}")
    for r in requests:
        if not 1 <= r.prompt_len < len(r.token_ids):
            raise EngineError(f"request {r.key}: needs a prompt of at least one token and a completion "
                              f"(prompt_len {r.prompt_len}, {len(r.token_ids)} tokens)")
