"""The teacher's token-level signal: its log-probabilities at every token of the student's samples
(docs/method.md, "Scoring"), for an external teacher or the privileged self-teacher alike.

    from distill.scoring import check_shared_tokenizer, rationale_samples, score_shards, shard_samples
    samples = rationale_samples(rows)                                   # under the student's prompt
    samples = rationale_samples(rows, reference=lambda r: answer_reference(r["gold"]))  # privileged
    stats = score_shards(engine, shard_samples(samples, 64), student_tokenizer, k=20,
                         on_shard=out.write_shard, skip=out.completed_shards())

A step body builds the engine (in a child process for vLLM), hands `score_shards` the shards and
the student's tokenizer, and writes each shard's rows (columns of `storage.schemas.TOKEN_SCORES`)
as it comes; a rerun passes the shards already written in `skip`, so only the missing ones are
scored. `score_shards` refuses a teacher whose tokenizer differs from the student's before it scores
anything (`check_shared_tokenizer`).

Tokens: prompt and completion are tokenized apart and their ids concatenated, as the student's
training does (`distill.training.data.tokenize_texts`): the prompt with the tokenizer's special
tokens, the completion without, then EOS. The completion's ids are therefore the ids the student
is trained on, whatever prompt precedes them (the student's own or a privileged one), and the
engine receives ids, never text, so it cannot tokenize them otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distill.engines.prompt_logprobs import ScoreRequest
from distill.training.data import prompt_target_ids

# Encoded by both tokenizers in the shared-tokenizer check: digits, spacing, newlines, code, the
# student's section headers and strategy tags, and text outside ASCII.
PROBE_TEXTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "### Response:\n[pot]: def solution():\n    total = 12 * 7.5  # per hour\n    return total\n",
    "[cot]: 3 + 4 = 7.\tThe answer is 1,234.56 ($) -- naïve café, 東京, ✓",
)


@dataclass(frozen=True)
class ScoringSample:
    """One (prompt, completion) pair to score, as text."""

    sample_id: str
    question_id: str
    prompt: str
    """The prompt the scoring model reads (the student's, or a privileged one)."""
    completion: str
    """The completion as the student trains on it (without EOS: `encode` appends it)."""


def sample_id(question_id: str, strategy: str, sample_index: int) -> str:
    """`<question_id>|<strategy>|<sample_index>`: unique among a step's samples (teacher samples are
    one prompt per strategy; a student's n samples of a question have distinct indices)."""
    return f"{question_id}|{strategy}|{int(sample_index)}"


def rationale_samples(rows: Iterable[Mapping[str, Any]],
                      reference: Callable[[Mapping[str, Any]], str] | None = None) -> list[ScoringSample]:
    """Rationale-task samples from rows with question_id, question, strategy, sample_index and text
    (TRAIN_EXAMPLES, or VERIFIED samples joined with their question).

    The completion is the rationale target the student trains on (`[strategy]: text`). The prompt
    is the student's rationale prompt, or with `reference` (row -> the reference to show, e.g. its
    gold answer) the privileged prompt (`distill.student_format.privileged_prompt`). A row whose
    strategy is unknown raises ValueError (training drops such rows; so should the caller).
    """
    from distill.student_format import privileged_prompt, rationale_prompt, rationale_target

    samples = []
    for row in rows:
        question = str(row["question"])
        prompt = rationale_prompt(question) if reference is None else privileged_prompt(question, reference(row))
        samples.append(ScoringSample(
            sample_id=sample_id(str(row["question_id"]), str(row["strategy"]), int(row["sample_index"])),
            question_id=str(row["question_id"]), prompt=prompt,
            completion=rationale_target(str(row["strategy"]), str(row["text"]))))
    return samples


def shard_samples(samples: Sequence[ScoringSample], shard_size: int) -> list[list[ScoringSample]]:
    """Consecutive shards of `shard_size` samples: the same samples in the same order give the same
    shards, so a rerun's shard i is the first run's shard i."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [list(samples[i:i + shard_size]) for i in range(0, len(samples), shard_size)]


# --------------------------------------------------------------------------- tokens


# (prompt ids, completion ids): exactly the ids the student's training gives a prompt and its target.
encode = prompt_target_ids


class TokenizerMismatch(ValueError):
    """The teacher and the student do not share a tokenizer: the teacher's log-probabilities would be
    over other tokens than the student's."""


def _tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return {
        "vocabulary size": len(tokenizer),
        "vocabulary": hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest(),
        "special tokens": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id},
        "encodings": [list(tokenizer(text, add_special_tokens=True)["input_ids"]) for text in PROBE_TEXTS],
    }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest (16 hex digits) of what the shared-tokenizer rule compares (`check_shared_tokenizer`)."""
    return hashlib.sha256(json.dumps(_tokenizer_facts(tokenizer), sort_keys=True).encode()).hexdigest()[:16]


def check_shared_tokenizer(teacher: Any, student: Any, teacher_name: str, student_name: str) -> str:
    """Raise TokenizerMismatch, naming both models, unless the two tokenizers are the same; else
    return their fingerprint.

    The rule: the same number of tokens (added ones included), the same token -> id map (compared by
    a hash of the whole vocabulary), the same BOS and EOS ids, and the same ids for a few probe texts
    with special tokens added (catching a different normalizer, pre-tokenizer or BOS habit). Then a
    sequence of ids means the same text to both, and the teacher's distribution at a position is
    over the student's vocabulary.
    """
    if teacher is None:
        raise TokenizerMismatch(f"the teacher {teacher_name} offers no tokenizer to compare with the student's "
                                f"({student_name}): serve it from a local model folder, or pass its tokenizer")
    facts = {"teacher": _tokenizer_facts(teacher), "student": _tokenizer_facts(student)}
    differ = [name for name in facts["teacher"] if facts["teacher"][name] != facts["student"][name]]
    if differ:
        said = {"vocabulary": "their token -> id maps differ", "encodings": "they encode the probe texts differently"}
        details = "; ".join(said.get(name) or f"{name} {facts['teacher'][name]} vs {facts['student'][name]}"
                            for name in differ)
        raise TokenizerMismatch(f"the teacher {teacher_name} ({type(teacher).__name__}) and the student "
                                f"{student_name} ({type(student).__name__}) do not share a tokenizer ({details}); "
                                "scoring needs the student's token ids to mean the same to the teacher")
    return tokenizer_fingerprint(teacher)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoringRun:
    """What every row of a scoring job records about the scorer."""

    teacher: str
    """The scoring model (folder, name or Hub id)."""
    engine: str
    engine_version: str
    tokenizer_hash: str
    k: int


def score_shard(engine: Any, samples: Sequence[ScoringSample], tokenizer: Any, run: ScoringRun,
                lora_path: str | None = None) -> list[dict[str, Any]]:
    """TOKEN_SCORES rows of `samples`, in their order: each sample's prompt and completion encoded
    with the student's `tokenizer` (`encode`) and scored by `engine` in one call."""
    requests, encoded = [], []
    for sample in samples:
        prompt_ids, completion_ids = encode(tokenizer, sample.prompt, sample.completion)
        requests.append(ScoreRequest(sample.sample_id, prompt_ids + completion_ids, len(prompt_ids)))
        encoded.append((prompt_ids, completion_ids))
    scores = engine.score(requests, run.k, lora_path=lora_path)
    rows = []
    for sample, (prompt_ids, completion_ids), score in zip(samples, encoded, scores, strict=True):
        rows.append({
            "sample_id": sample.sample_id,
            "question_id": sample.question_id,
            "prompt_hash": hashlib.sha256(sample.prompt.encode()).hexdigest()[:16],
            "prompt_tokens": len(prompt_ids),
            "completion_ids": completion_ids,
            "sampled_logprobs": score.sampled_logprobs,
            "top_ids": score.top_ids,
            "top_logprobs": score.top_logprobs,
            "k": run.k,
            "teacher": run.teacher,
            "engine": run.engine,
            "engine_version": run.engine_version,
            "tokenizer_hash": run.tokenizer_hash,
        })
    return rows


def score_shards(engine: Any, shards: Sequence[Sequence[ScoringSample]], student_tokenizer: Any, k: int,
                 on_shard: Callable[[int, list[dict[str, Any]]], Any], skip: Iterable[int] = (),
                 teacher: str | None = None, teacher_tokenizer: Any | None = None,
                 student: str = "the student", lora_path: str | None = None,
                 progress: Callable[[str], None] | None = None,
                 guards: Callable[[], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Score every shard not in `skip`, calling `on_shard(index, rows)` after each.

    First, before anything is scored, the teacher's tokenizer (`teacher_tokenizer`, else
    `engine.tokenizer()`) must be the student's (`check_shared_tokenizer`); then, when there is a
    shard to score, `guards()` runs (distill.scoring_guards: it raises when the teacher fails, else
    returns its figures). `teacher` names the scoring model in the rows (default `engine.model`).
    Returns counts: shards scored and reused, samples, completion tokens, seconds, and the guards'
    figures (`guards`) when they ran.
    """
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    teacher = teacher or engine.model
    fingerprint = check_shared_tokenizer(teacher_tokenizer if teacher_tokenizer is not None else engine.tokenizer(),
                                         student_tokenizer, teacher, student)
    run = ScoringRun(teacher=teacher, engine=engine.name, engine_version=engine.version,
                     tokenizer_hash=fingerprint, k=k)
    skip = set(skip)
    pending = [i for i in range(len(shards)) if i not in skip]
    stats = {"shards_scored": 0, "reused_shards": len(shards) - len(pending), "samples": 0, "tokens": 0}
    if skip:
        say(f"scoring: {stats['reused_shards']} of {len(shards)} shards already written, reusing them")
    if guards is not None and pending:
        began = time.perf_counter()
        stats["guards"] = {**guards(), "seconds": time.perf_counter() - began}  # not in scoring's seconds
    started = time.perf_counter()
    for index in pending:
        rows = score_shard(engine, shards[index], student_tokenizer, run, lora_path=lora_path)
        on_shard(index, rows)
        stats["shards_scored"] += 1
        stats["samples"] += len(rows)
        stats["tokens"] += sum(len(r["completion_ids"]) for r in rows)
        say(f"scoring: shard {index + 1}/{len(shards)} written ({stats['shards_scored']}/{len(pending)} this run, "
            f"{stats['tokens']} tokens)")
    stats["seconds"] = time.perf_counter() - started
    return stats
