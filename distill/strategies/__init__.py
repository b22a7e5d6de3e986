"""Strategies as data (docs/method.md, section 1): CoT, L2M and PoT, each an instruction, 8 worked
exemplars over the same GSM8K-train problems, and a parser; one renderer for all three.

    from distill.strategies import render_prompt, prompt_hash, get_strategy, STOP_STRINGS
    prompt = render_prompt("l2m", question)                  # plain 8-shot text (base models)
    prompt = render_prompt("pot", question, tok, use_chat_template=True)
    parsed = get_strategy("l2m").parse(completion_text)      # Parsed(value, rule, format_error, ...)
"""

from distill.strategies.base import Parsed, Strategy, clean_completion, strip_tag
from distill.strategies.exemplars import (
    EXEMPLAR_IDS,
    EXEMPLAR_QUESTIONS,
    EXEMPLARS,
    Exemplar,
    is_exemplar,
    normalize_question,
)
from distill.strategies.render import (
    MODES,
    PROMPT_FORMAT_VERSION,
    STOP_STRINGS,
    STRATEGIES,
    few_shot_text,
    get_strategy,
    prompt_hash,
    prompt_mode,
    render_prompt,
    wants_chat_template,
)

__all__ = [
    "EXEMPLARS",
    "EXEMPLAR_IDS",
    "EXEMPLAR_QUESTIONS",
    "MODES",
    "PROMPT_FORMAT_VERSION",
    "STOP_STRINGS",
    "STRATEGIES",
    "Exemplar",
    "Parsed",
    "Strategy",
    "clean_completion",
    "few_shot_text",
    "get_strategy",
    "is_exemplar",
    "normalize_question",
    "prompt_hash",
    "prompt_mode",
    "render_prompt",
    "strip_tag",
    "wants_chat_template",
]
