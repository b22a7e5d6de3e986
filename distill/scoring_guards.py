"""Guards on a scoring teacher: three checks, run before a step writes any score, that catch the
failures that leave training on scores silently wrong (docs/method.md, "Guards").

    figures = check_teacher(engine, samples, student_tokenizer, k=20,
                            step="iter-01/score", teacher=job.model)   # or GuardFailed

1. Entropy: the teacher's mean per-token entropy over the guard samples' completion positions,
   against the uniform bound log V. A teacher whose distribution went uniform (weights not loaded,
   a zeroed head or norm) says nothing a student can learn.
2. Two passes: the same samples scored again, one request at a time, against the first (batched)
   pass. Replicas or kernels that disagree make the scores depend on how requests were batched.
3. Greedy: the teacher generates greedily from the scoring prompts, then those completions are
   scored; its top-1 token must be the token it generated. A prompt or template that reaches the
   teacher one way when it generates and another when it scores fails here.

Each check raises GuardFailed, one line with the figures and where they came from (the step, the
teacher, the samples); passing, `check_teacher` returns the figures for the step's record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distill.engines.base import GenerationRequest
from distill.engines.prompt_logprobs import ScoreRequest, TokenScores
from distill.scoring import ScoringSample, encode

UNIFORM_FRACTION = 0.9
"""The entropy check fails when the mean entropy is above this share of log V. A trained model's
mean entropy on text of its kind is a few nats (the embedded SmolLM2-135M: about 2.8 of its 10.8,
26%), a uniform teacher's is log V (a random-weight tiny model's within 0.01% of it): 0.9 is far from both."""
MEAN_LOGPROB_TOLERANCE = 0.1
"""Two passes: the most the sampled tokens' log-probabilities may differ on average, in nats. A bfloat16
pass against a float32 one differs by 0.04 on average (0.17 at most) on the embedded model, and
passes; what fails is more than precision: replicas serving other weights, kernels that are wrong."""
TWO_PASS_TOP1 = 0.9
"""Two passes: least share of positions whose top-1 token is the same in both (bfloat16 against
float32: 0.97; near-ties may flip)."""
GREEDY_TOP1 = 0.9
"""Greedy: least share of the generated tokens that are the teacher's top-1 when scored. Exactly
the same input would give 1.0; the share left allows for generated text whose tokens come out
otherwise when it is encoded again (scoring encodes text, as it does the student's samples)."""
GREEDY_TOKENS = 32
"""Tokens the greedy check generates per prompt."""


class GuardFailed(RuntimeError):
    """A teacher failed a guard: its scores must not be trained on."""


# --------------------------------------------------------------------------- the figures


def entropy_upper_bound(top_logprobs: Sequence[float], vocab: int) -> float:
    """The entropy (nats) of one position's distribution, from its top-k log-probabilities: the
    top-k's own terms plus the tail's mass r = 1 - sum of their probabilities spread evenly over the
    V - k other tokens. Even spreading maximizes the tail's entropy and is possible (no tail token is
    likelier than the k-th, and r / (V - k) is not), so this is an upper bound, reached by a uniform
    teacher (log V) and exact when k = V."""
    probs = [math.exp(lp) for lp in top_logprobs]
    entropy = -sum(p * lp for p, lp in zip(probs, top_logprobs, strict=True))
    tail, others = 1.0 - sum(probs), vocab - len(probs)
    if tail > 0 and others > 0:
        entropy -= tail * math.log(tail / others)
    return entropy


def mean_entropy(scores: Sequence[TokenScores], vocab: int) -> tuple[float, int]:
    """(mean `entropy_upper_bound` over every position of `scores`, positions)."""
    values = [entropy_upper_bound(top, vocab) for score in scores for top in score.top_logprobs]
    return sum(values) / max(len(values), 1), len(values)


def pass_agreement(first: Sequence[TokenScores], second: Sequence[TokenScores]) -> dict[str, float]:
    """Mean and largest |difference| of the sampled tokens' log-probabilities (nats) between two passes
    over the same requests, and the share of positions whose top-1 token is the same."""
    diffs, same = [], []
    for a, b in zip(first, second, strict=True):
        diffs += [abs(x - y) for x, y in zip(a.sampled_logprobs, b.sampled_logprobs, strict=True)]
        same += [x[0] == y[0] for x, y in zip(a.top_ids, b.top_ids, strict=True)]
    count = max(len(diffs), 1)
    return {"mean_abs_diff": sum(diffs) / count, "max_abs_diff": max(diffs, default=0.0),
            "top1_agreement": sum(same) / count, "positions": len(diffs)}


# --------------------------------------------------------------------------- the checks


def guard_samples(samples: Sequence[ScoringSample], count: int) -> list[ScoringSample]:
    """The first `count` samples, one per prompt while there are prompts enough (so that the greedy
    check sees as many prompts as it can), then the next ones in order."""
    first_of_prompt: dict[str, ScoringSample] = {}
    for sample in samples:
        first_of_prompt.setdefault(sample.prompt, sample)
    chosen = list(first_of_prompt.values())[:count]
    taken = {s.sample_id for s in chosen}
    return chosen + [s for s in samples if s.sample_id not in taken][:count - len(chosen)]


def requests_of(samples: Sequence[ScoringSample], tokenizer: Any) -> list[ScoreRequest]:
    """Score requests exactly as the step builds them (`distill.scoring.score_shard`)."""
    requests = []
    for sample in samples:
        prompt_ids, completion_ids = encode(tokenizer, sample.prompt, sample.completion)
        requests.append(ScoreRequest(sample.sample_id, prompt_ids + completion_ids, len(prompt_ids)))
    return requests


def greedy_agreement(engine: Any, prompts: Sequence[str], tokenizer: Any, k: int) -> dict[str, float]:
    """Generate greedily from each prompt, score what was generated, and count the generated tokens
    that are the teacher's top-1 where it is scored. The EOS that encoding appends is left out: the
    teacher may end on another stop token, or not end within GREEDY_TOKENS."""
    from distill.config import SamplingConfig

    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=GREEDY_TOKENS, stop=[])
    answers = engine.generate([GenerationRequest(f"greedy-{i}", p) for i, p in enumerate(prompts)], sampling)
    samples = [ScoringSample(f"greedy-{i}", "", p, a[0].text) for i, (p, a) in enumerate(zip(prompts, answers))]
    requests = requests_of(samples, tokenizer)
    same = []
    for request, score in zip(requests, engine.score(requests, k), strict=True):
        generated = request.token_ids[request.prompt_len:-1]
        same += [top[0] == token for top, token in zip(score.top_ids, generated)]
    return {"top1_agreement": sum(same) / max(len(same), 1), "positions": len(same), "prompts": len(prompts)}


def check_teacher(engine: Any, samples: Sequence[ScoringSample], tokenizer: Any, k: int, *, step: str,
                  teacher: str) -> dict[str, Any]:
    """Run the three guards on `samples` (`guard_samples` of the step's), scored with the student's
    `tokenizer`; raise GuardFailed on the first that fails, else return the figures."""
    ids = [s.sample_id for s in samples]
    origin = f"{step} teacher {teacher}"
    of_samples = f"{len(samples)} samples ({', '.join(ids)})"
    requests = requests_of(samples, tokenizer)
    first = engine.score(requests, k)

    vocab = len(tokenizer)
    entropy, positions = mean_entropy(first, vocab)
    uniform = math.log(vocab)
    if entropy > UNIFORM_FRACTION * uniform:
        raise GuardFailed(f"guard failed: {origin} mean entropy {entropy:.2f} nats of the uniform bound "
                          f"{uniform:.2f} (log {vocab}) over {positions} positions of {of_samples}: its distribution "
                          f"is uniform (the check fails above {UNIFORM_FRACTION:.0%} of the bound)")

    # One request per call: a batch of its own for each, unlike the first pass.
    agreement = pass_agreement(first, [engine.score([r], k)[0] for r in requests])
    if agreement["mean_abs_diff"] > MEAN_LOGPROB_TOLERANCE or agreement["top1_agreement"] < TWO_PASS_TOP1:
        raise GuardFailed(f"guard failed: {origin} two scoring passes over {of_samples} disagree: the sampled "
                          f"tokens' log-probabilities differ by {agreement['mean_abs_diff']:.3f} nats on average "
                          f"(at most {agreement['max_abs_diff']:.3f}; tolerance {MEAN_LOGPROB_TOLERANCE}) and the "
                          f"top-1 token agrees at {agreement['top1_agreement']:.1%} of {agreement['positions']} "
                          f"positions (needs {TWO_PASS_TOP1:.0%}): its replicas or kernels do not score alike")

    prompts = list(dict.fromkeys(s.prompt for s in samples))
    greedy = greedy_agreement(engine, prompts, tokenizer, k)
    if greedy["positions"] == 0:
        raise GuardFailed(f"guard failed: {origin} generated no token from the prompts of {of_samples}: there "
                          "is nothing to check its scoring against")
    if greedy["top1_agreement"] < GREEDY_TOP1:
        raise GuardFailed(f"guard failed: {origin} top-1 token agrees with its own greedy tokens at "
                          f"{greedy['top1_agreement']:.1%} of {greedy['positions']} positions, generated from the "
                          f"prompts of {of_samples} (needs {GREEDY_TOP1:.0%}): scoring feeds it something else "
                          "than the prompt it generated from")

    return {"samples": ids, "entropy": {"mean_nats": entropy, "uniform_nats": uniform, "vocab": vocab,
                                        "positions": positions, "fails_above": UNIFORM_FRACTION},
            "two_pass": {**agreement, "tolerance": MEAN_LOGPROB_TOLERANCE, "top1_needed": TWO_PASS_TOP1},
            "greedy": {**greedy, "top1_needed": GREEDY_TOP1}}
