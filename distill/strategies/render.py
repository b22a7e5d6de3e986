"""Teacher prompts: the 8-shot Alpaca-style text of a strategy, as plain text or through a chat template.

Layout (as the SIKeD reference prompts: the preamble and instruction once, then the exemplars):

    Below is an instruction that describes a task, ... completes the request.

    ### Instruction:
    <strategy instruction>

    ### Input:
    <exemplar question 1>

    ### Response:
    <exemplar solution 1>

    ... (8 exemplars)

    ### Input:
    <the question>

    ### Response:

Base models get this text as is (mode `plain`) and continue after `### Response:`. Instruct models
(mode `chat`) get the same text, without its final newline, as the single user message of their chat
template with the generation prompt added, so the assistant turn is the solution: one message keeps
the exemplars and the question in one frame for every model, whatever its template does with
multi-turn history. Either way generation stops at the next block header (STOP_STRINGS).

`prompt_hash(strategy, mode, shots)` fingerprints everything that shapes the prompt except the
question and the model's own chat template (the `model` column records that): layout, instruction,
exemplars.

`shots` (default 8, the papers' setting) keeps the first `shots` exemplars. Fewer shots make much
shorter prompts: on a CPU, where decoding reads every sequence's whole KV cache at each step, the
prompt length sets the teacher's speed (the quickstart uses 2).
"""

from __future__ import annotations

import hashlib
import json

from distill.strategies import cot, l2m, pot
from distill.strategies.base import BOUNDARY_MARKERS, Strategy
from distill.strategies.exemplars import EXEMPLARS

MAX_SHOTS = len(EXEMPLARS)

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (cot.STRATEGY, l2m.STRATEGY, pot.STRATEGY)}

PROMPT_FORMAT_VERSION = "1"
MODES = ("plain", "chat")
PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
HEADER = "{preamble}\n\n### Instruction:\n{instruction}\n\n"
EXEMPLAR_BLOCK = "### Input:\n{question}\n\n### Response:\n{solution}\n\n"
QUERY_BLOCK = "### Input:\n{question}\n\n### Response:\n"
# The next exemplar boundary: a completion that reaches one has finished its answer.
STOP_STRINGS: tuple[str, ...] = BOUNDARY_MARKERS


def get_strategy(name: str) -> Strategy:
    """The strategy called `name` (cot | l2m | pot); a KeyError lists the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


def _exemplars(spec: Strategy, shots: int) -> list[tuple]:
    """(exemplar, solution) of the first `shots` exemplars."""
    if not 0 <= shots <= len(EXEMPLARS):
        raise ValueError(f"shots must be between 0 and {len(EXEMPLARS)}, not {shots}")
    return list(zip(EXEMPLARS, spec.solutions, strict=True))[:shots]


def few_shot_text(strategy: str, question: str, shots: int = MAX_SHOTS) -> str:
    """The plain few-shot prompt for `question`, ending with `### Response:` and a newline."""
    spec = get_strategy(strategy)
    parts = [HEADER.format(preamble=PREAMBLE, instruction=spec.instruction)]
    for exemplar, solution in _exemplars(spec, shots):
        parts.append(EXEMPLAR_BLOCK.format(question=exemplar.question, solution=solution))
    parts.append(QUERY_BLOCK.format(question=question.strip()))
    return "".join(parts)


def render_prompt(strategy: str, question: str, tokenizer=None, use_chat_template: bool = False,
                  shots: int = MAX_SHOTS) -> str:
    """The teacher prompt for one question: plain few-shot text, or (with `use_chat_template`) that
    text as one user message through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`."""
    text = few_shot_text(strategy, question, shots)
    if not use_chat_template:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("use_chat_template=True needs a tokenizer that has a chat template")
    messages = [{"role": "user", "content": text.rstrip("\n")}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def wants_chat_template(tokenizer, setting: str = "auto") -> bool:
    """Resolve the `chat_template` setting (auto | always | never): auto means when the model has one."""
    if setting not in ("auto", "always", "never"):
        raise ValueError(f"chat_template setting must be auto, always or never, not {setting!r}")
    if setting == "auto":
        return bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))
    return setting == "always"


def prompt_mode(use_chat_template: bool) -> str:
    return "chat" if use_chat_template else "plain"


def prompt_hash(strategy: str, mode: str, shots: int = MAX_SHOTS) -> str:
    """Version hash (16 hex digits of a sha256) of a strategy's prompt template in `mode`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    spec = get_strategy(strategy)
    payload = {
        "format_version": PROMPT_FORMAT_VERSION,
        "mode": mode,
        "strategy": spec.name,
        "template": [PREAMBLE, HEADER, EXEMPLAR_BLOCK, QUERY_BLOCK],
        "instruction": spec.instruction,
        "exemplars": [[e.id, e.question, s] for e, s in _exemplars(spec, shots)],
        "stop": list(STOP_STRINGS),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
