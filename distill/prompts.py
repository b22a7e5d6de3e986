"""Prompts of the generation steps: the teacher's few-shot prompts per strategy, the student's
rationale prompt (it picks the strategy) or that prompt primed with each strategy's tag (forced),
and the stop strings each needs.

    prompts = teacher_prompts(problems, ("cot", "pot"), tokenizer, "auto", shots=8)
    prompts = student_prompts(problems)
    prompts = forced_student_prompts(problems, ("cot", "l2m", "pot"))

`problems` are PROBLEMS rows (dicts with `id` and `question`); the result is one PromptSpec per
(question, strategy) in question order.
"""

from __future__ import annotations

from distill.config import SamplingConfig
from distill.generation import AUTO_STRATEGY, PromptSpec


def teacher_prompts(problems: list[dict], strategies: tuple[str, ...], tokenizer, chat_setting: str,
                    shots: int = 8) -> list[PromptSpec]:
    from distill.strategies.render import prompt_hash, prompt_mode, render_prompt, wants_chat_template

    use_chat = wants_chat_template(tokenizer, chat_setting)
    mode = prompt_mode(use_chat)
    hashes = {s: prompt_hash(s, mode, shots) for s in strategies}
    return [PromptSpec(p["id"], s, render_prompt(s, p["question"], tokenizer, use_chat, shots), hashes[s])
            for p in problems for s in strategies]


def student_prompts(problems: list[dict]) -> list[PromptSpec]:
    from distill.student_format import is_multiple_choice, rationale_prompt, student_prompt_hash

    return [PromptSpec(p["id"], AUTO_STRATEGY, rationale_prompt(p["question"]),
                       student_prompt_hash("rationale", is_multiple_choice(p["question"]))) for p in problems]


def forced_student_prompts(problems: list[dict], strategies: tuple[str, ...]) -> list[PromptSpec]:
    """The rationale prompt primed with each strategy's tag (SIKeD's forced self-generation). The tag
    is the prompt's last text and the completion's first: each row's text starts with it, as a
    free-choice completion does and as the training target is written (`[pot]: <program>`)."""
    from distill.student_format import forced_prompt, forced_prompt_hash, strategy_tag

    hashes = {s: forced_prompt_hash(s) for s in strategies}
    return [PromptSpec(p["id"], s, forced_prompt(p["question"], s), hashes[s], response_prefix=strategy_tag(s))
            for p in problems for s in strategies]


def stop_strings(sampling: SamplingConfig, teacher: bool) -> SamplingConfig:
    """Teacher prompts stop at the next exemplar boundary whatever the config lists."""
    if not teacher:
        return sampling
    from distill.strategies.render import STOP_STRINGS

    stops = list(dict.fromkeys([*sampling.stop, *STOP_STRINGS]))
    return sampling.model_copy(update={"stop": stops})
