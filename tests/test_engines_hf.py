"""The transformers engine: counts, order, left padding, stop strings, greedy decoding, LoRA adapters.

    pytest tests/test_engines_hf.py
"""

from __future__ import annotations

import pytest

from distill.config import EngineConfig, SamplingConfig
from distill.engines import GenerationRequest, make_engine

PROMPTS = ["Hi", "The capital of France is", "1, 2, 3, 4,",
           "Once upon a time, in a land far away, there lived a", "Water boils at"]


def _engine(model_path, **overrides):
    return make_engine(EngineConfig(kind="transformers", **overrides), str(model_path))


def _requests(prompts):
    return [GenerationRequest(key=str(i), prompt=p) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path):
    engine = _engine(tiny_model_path, concurrency=4)
    yield engine
    engine.close()


def test_n_samples_per_prompt_with_counts_in_request_order(tiny_model_path):
    engine = _engine(tiny_model_path, concurrency=2, seed=1)  # 3 batches, sorted by length
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_tokens=6, stop=[])
    answers = engine.generate(_requests(PROMPTS), sampling)
    tokenizer = engine.tokenizer()
    assert [len(a) for a in answers] == [2] * len(PROMPTS)
    for prompt, samples in zip(PROMPTS, answers):
        assert {c.prompt_tokens for c in samples} == {len(tokenizer(prompt)["input_ids"])}
        for c in samples:
            assert 1 <= c.completion_tokens <= 6
            assert c.finish_reason == ("length" if c.completion_tokens == 6 else "stop")
    assert engine.name == "transformers" and engine.version


def test_left_padding_leaves_greedy_answers_unchanged(tiny_engine):
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12, stop=[])
    alone = [tiny_engine.generate(_requests([p]), greedy)[0][0].text for p in PROMPTS]
    together = [a[0].text for a in tiny_engine.generate(_requests(PROMPTS), greedy)]
    assert together == alone


def test_greedy_repeats_the_one_answer_n_times(tiny_engine):
    (samples,) = tiny_engine.generate(_requests(["The capital of France is"]),
                                         SamplingConfig(n=3, temperature=0.0, max_tokens=8, stop=[]))
    assert len(samples) == 3 and len({c.text for c in samples}) == 1


def test_stop_strings_end_the_answer_and_are_cut_off(tiny_engine):
    request = _requests(["1, 2, 3, 4,"])
    free = tiny_engine.generate(request, SamplingConfig(n=1, temperature=0.0, max_tokens=16, stop=[]))[0][0]
    assert len(free.text) >= 6, free.text
    stop = free.text[3:6]
    stopped = tiny_engine.generate(request, SamplingConfig(n=1, temperature=0.0, max_tokens=16, stop=[stop]))[0][0]
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < free.completion_tokens


def test_lora_adapter_changes_answers_and_is_dropped_again(tiny_engine, tiny_model_path, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    # init_lora_weights=False: random, non-zero B, so the adapter changes the model.
    adapter = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")

    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12, stop=[])
    request = _requests(["The capital of France is"])
    before = tiny_engine.generate(request, greedy)[0][0].text
    with_adapter = tiny_engine.generate(request, greedy, lora_path=str(tmp_path / "adapter"))[0][0].text
    after = tiny_engine.generate(request, greedy)[0][0].text
    assert with_adapter != before
    assert after == before
