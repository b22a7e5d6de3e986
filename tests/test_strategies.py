"""Strategies as data: exemplars checked against GSM8K train, parsers, rendering and prompt hashes."""

from __future__ import annotations

import json

import pytest

from distill.strategies import (
    EXEMPLAR_IDS,
    EXEMPLARS,
    STOP_STRINGS,
    STRATEGIES,
    clean_completion,
    few_shot_text,
    get_strategy,
    is_exemplar,
    prompt_hash,
    render_prompt,
    wants_chat_template,
)
from distill.strategies import render as render_module
from distill.strategies.pot import extract_code


def _gsm8k_train(data_dir):
    with open(data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_exemplars_are_gsm8k_train_lines_with_their_gold(data_dir):
    rows = _gsm8k_train(data_dir)
    assert len(EXEMPLARS) == 8 and len(EXEMPLAR_IDS) == 8
    for exemplar in EXEMPLARS:
        line = int(exemplar.id.removeprefix("gsm8k/train/"))
        assert rows[line]["question"] == exemplar.question
        gold = float(rows[line]["answer"].split("####")[-1].replace(",", "").replace("$", "").strip())
        assert gold == exemplar.answer


def test_every_strategy_solves_the_same_eight_problems():
    for spec in STRATEGIES.values():
        assert len(spec.solutions) == len(EXEMPLARS)
        assert spec.instruction


@pytest.mark.parametrize("name", ["cot", "l2m"])
def test_text_exemplars_state_the_gold_as_final_answer(name):
    spec = get_strategy(name)
    for exemplar, solution in zip(EXEMPLARS, spec.solutions, strict=True):
        parsed = spec.parse(solution)
        assert parsed.rule == "final_answer"
        assert parsed.value == exemplar.answer
        assert parsed.format_error == ""
        assert solution.rstrip().splitlines()[-1].startswith("Final answer: ")


def test_pot_exemplars_compute_the_gold():
    # Our own exemplar programs (trusted code), run in-process; test_verify runs them in the sandbox.
    spec = get_strategy("pot")
    for exemplar, solution in zip(EXEMPLARS, spec.solutions, strict=True):
        parsed = spec.parse(solution)
        assert parsed.code == solution and parsed.format_error == ""
        namespace: dict = {}
        exec(compile(parsed.code, exemplar.id, "exec"), namespace)  # noqa: S102 - our own exemplar code
        assert float(namespace["answer"]) == exemplar.answer
    assert any("sympy" in s and "solve(" in s for s in spec.solutions)
    assert any("import math" in s for s in spec.solutions)


def test_solutions_never_contain_a_stop_string():
    for spec in STRATEGIES.values():
        for solution in spec.solutions:
            assert not any(stop in solution for stop in STOP_STRINGS)
            assert "\n\n" not in solution  # blank lines separate blocks of the prompt


def test_exemplar_lookup_by_id_and_by_text():
    first = EXEMPLARS[0]
    assert is_exemplar(question_id=first.id)
    assert is_exemplar(question=first.question.replace("  ", " ").upper())
    assert not is_exemplar(question_id="gsm8k/train/0", question="Natalia sold clips to 48 of her friends")


def test_plain_prompt_layout():
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    prompt = render_prompt("cot", question, use_chat_template=False)
    assert prompt == few_shot_text("cot", question)
    assert prompt.startswith(render_module.PREAMBLE + "\n\n### Instruction:\n" + get_strategy("cot").instruction)
    assert prompt.count("### Instruction:") == 1
    assert prompt.count("### Input:") == 9 and prompt.count("### Response:") == 9
    assert prompt.endswith(f"### Input:\n{question}\n\n### Response:\n")
    for exemplar, solution in zip(EXEMPLARS, get_strategy("cot").solutions, strict=True):
        assert f"### Input:\n{exemplar.question}\n\n### Response:\n{solution}\n\n" in prompt


def _word_level_tokenizer(chat_template: str | None):
    """A real (tiny) fast tokenizer carrying `chat_template`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_chat_prompt_puts_the_few_shot_text_in_one_user_turn():
    template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tokenizer = _word_level_tokenizer(template)
    prompt = render_prompt("pot", "What is 2 + 2?", tokenizer, use_chat_template=True)
    assert prompt == "<|user|>\n" + few_shot_text("pot", "What is 2 + 2?").rstrip("\n") + "\n<|assistant|>\n"
    assert wants_chat_template(tokenizer, "auto")
    assert not wants_chat_template(_word_level_tokenizer(None), "auto")
    with pytest.raises(ValueError):
        render_prompt("pot", "q", _word_level_tokenizer(None), use_chat_template=True)


@pytest.mark.slow
def test_chat_prompt_with_the_embedded_model(builtin_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    prompt = render_prompt("l2m", question, tokenizer, use_chat_template=True)
    plain = few_shot_text("l2m", question)
    assert plain.rstrip("\n") in prompt
    expected = tokenizer.apply_chat_template([{"role": "user", "content": plain.rstrip("\n")}],
                                             tokenize=False, add_generation_prompt=True)
    assert prompt == expected
    assert prompt.index(plain.rstrip("\n")) + len(plain.rstrip("\n")) < len(prompt)  # generation prompt after
    assert wants_chat_template(tokenizer, "auto") and not wants_chat_template(tokenizer, "never")


def test_chat_prompt_needs_a_tokenizer():
    with pytest.raises(ValueError):
        render_prompt("cot", "q", None, use_chat_template=True)
    assert not wants_chat_template(None, "auto") and wants_chat_template(None, "always")
    with pytest.raises(ValueError):
        wants_chat_template(None, "sometimes")


def test_prompt_hash_is_stable_and_tracks_every_part(monkeypatch):
    hashes = {(s, m): prompt_hash(s, m) for s in STRATEGIES for m in ("plain", "chat")}
    assert len(set(hashes.values())) == 6
    assert all(len(h) == 16 for h in hashes.values())
    assert prompt_hash("cot", "plain") == hashes[("cot", "plain")]
    # Any edit of the template changes the hash (so stored samples show which prompt made them).
    monkeypatch.setattr(render_module, "PREAMBLE", render_module.PREAMBLE + " ")
    assert prompt_hash("cot", "plain") != hashes[("cot", "plain")]
    with pytest.raises(ValueError):
        prompt_hash("cot", "jinja")
    with pytest.raises(KeyError):
        prompt_hash("tot", "plain")


def test_l2m_needs_answered_sub_questions():
    l2m = get_strategy("l2m")
    assert "no 'Sub-question k:'" in l2m.parse("12 + 3 = 15.\nFinal answer: 15").format_error
    unanswered = "Sub-question 1: How many?\nAnswer to sub-question 1: 3.\nSub-question 2: And then?\nFinal answer: 3"
    assert "2" in l2m.parse(unanswered).format_error
    ok = "Sub-question 1: How many?\nAnswer to Sub-question 1: 3\nFinal Answer: 3"
    parsed = l2m.parse(ok)
    assert parsed.format_error == "" and parsed.value == 3.0


def test_clean_completion_cuts_at_the_next_exemplar_and_drops_tags():
    text = "[cot]: 2 + 2 = 4.\nFinal answer: 4\n\n### Input:\nAnother problem\n\n### Response:\nFinal answer: 9"
    assert clean_completion(text) == "2 + 2 = 4.\nFinal answer: 4"
    assert get_strategy("cot").parse(text).value == 4.0
    assert clean_completion("### Response:\nFinal answer: 5") == "Final answer: 5"


def test_pot_code_extraction():
    assert extract_code("[pot]: a = 2\nanswer = a * 3") == "a = 2\nanswer = a * 3"
    fenced = "Here is the program:\n```python\n  x = 4\n  answer = x + 1\n```\nThis prints 5."
    assert extract_code(fenced) == "x = 4\nanswer = x + 1"
    two_blocks = "```\nprint('hi')\n```\nand\n```python\nanswer = 7\n```"
    assert extract_code(two_blocks) == "answer = 7"
    assert extract_code("```python\nanswer = 3\n") == "answer = 3"  # cut-off fence
    assert extract_code("answer = 1\n### Instruction:\nmore") == "answer = 1"
    assert get_strategy("pot").parse("   \n").format_error


def test_fewer_shots_keep_the_first_exemplars_and_change_the_hash():
    question = "Tom has 5 apples and buys 3 more. How many apples does he have?"
    full, two, none = (few_shot_text("cot", question, shots) for shots in (8, 2, 0))
    assert full == few_shot_text("cot", question)
    assert full.count("### Input:") == 9 and two.count("### Input:") == 3 and none.count("### Input:") == 1
    assert two.endswith(full[full.rindex("### Input:"):])  # the same query block
    assert full.startswith(two[:two.index("### Input:")])  # the same instruction
    assert prompt_hash("cot", "plain", 8) == prompt_hash("cot", "plain")
    assert len({prompt_hash("cot", "plain", k) for k in (0, 2, 8)}) == 3
    with pytest.raises(ValueError, match="shots"):
        few_shot_text("cot", question, 9)
