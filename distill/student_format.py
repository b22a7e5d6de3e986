"""What the student reads and writes (docs/method.md, section 4): SIKeD's strategy-tagged solutions and
DSS's two tasks over the same question.

Both tasks use the Alpaca layout of the SIKeD reference training code (`lora_train_and_save.py`);
the task is selected by the instruction, the prefix before the question:

- rationale task (SIKeD): instruction to first name a strategy, then solve; target
  `[cot]: <solution>`, `[l2m]: <solution>` or `[pot]: <program>`. At test time the student writes
  the tag itself (it chooses its strategy); `forced_prompt` primes the response with a tag instead,
  as the reference does (`[pot]:`, no trailing space, so the target's ` <solution>` tokenizes the
  same way as in training).
- label task (DSS): instruction to give the final answer alone; target the bare number (`12`,
  `0.75`).

A multiple-choice question (its choices listed under `Answer Choices:`, `distill.choices`) gets
instructions of its own: the label task asks for the correct choice's text alone, the label DSS
trains on CommonsenseQA and compares exactly with the prediction; the rationale task asks to
reason towards one of the listed choices. DSS's own inputs are the question with its choices
listed behind a task prefix (`predict: ` / `explain: `); here the instruction is the prefix.

Student prompts are plain text, never put through a chat template, for base and instruct students
alike: the student is fine-tuned on exactly these strings, so training, self-generation and
evaluation see the same tokens whatever template the checkpoint ships with (and a merged LoRA
checkpoint cannot change them under us). The training code appends the end-of-sequence token to
every target.

    from distill.student_format import rationale_prompt, rationale_target, parse_student_output
    prompt, target = rationale_prompt(q), rationale_target("cot", solution)
    strategy, solution = parse_student_output(generated_text)
"""

from __future__ import annotations

import hashlib
import json
import re

from distill.answers import expression_or_first_number, first_number, format_number
from distill.choices import listed_choices
from distill.strategies import STRATEGIES, strip_tag
from distill.strategies.render import PREAMBLE

STUDENT_FORMAT_VERSION = "1"
TASKS = ("rationale", "label")
RATIONALE_INSTRUCTION = (
    "Solve the following Math Word Problem by first generating the strategy and then solving the problem "
    "according to the generated strategy."
)
LABEL_INSTRUCTION = "Give only the final numeric answer to the following Math Word Problem."
CHOICE_RATIONALE_INSTRUCTION = (
    "Explain step by step which of the listed answer choices answers the following multiple-choice question."
)
CHOICE_LABEL_INSTRUCTION = (
    "Give only the text of the correct answer choice, as it is listed, for the following multiple-choice question."
)
STUDENT_TEMPLATE = "{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{question}\n\n### Response:\n"


def _prompt(instruction: str, question: str) -> str:
    return STUDENT_TEMPLATE.format(preamble=PREAMBLE, instruction=instruction, question=question.strip())


def is_multiple_choice(question: str) -> bool:
    """Whether `question` lists its answer choices (a multiple-choice problem, `distill.choices`)."""
    return bool(listed_choices(question))


def rationale_prompt(question: str) -> str:
    """The rationale-task (SIKeD) prompt; the student continues with `[strategy]: solution` (for a
    multiple-choice question, its reasoning towards a listed choice)."""
    choice = is_multiple_choice(question)
    return _prompt(CHOICE_RATIONALE_INSTRUCTION if choice else RATIONALE_INSTRUCTION, question)


def label_prompt(question: str) -> str:
    """The label-task (DSS) prompt; the student continues with the bare answer (for a
    multiple-choice question, the correct choice's text)."""
    return _prompt(CHOICE_LABEL_INSTRUCTION if is_multiple_choice(question) else LABEL_INSTRUCTION, question)


RESPONSE_HEADER = "### Response:\n"


def privileged_prompt(question: str, reference: str) -> str:
    """The rationale prompt with a reference shown before the response: what the privileged
    self-teacher (the student frozen at the start of the round) reads when it scores the student's
    own samples (docs/method.md, "Scoring").

    `reference`: the gold answer (`answer_reference(gold)`) or a reference rationale. It goes in a
    `### Reference:` section just before `### Response:`; the rest is `rationale_prompt(question)`
    unchanged, so the response it scores follows the same header. Score the completion's ids
    tokenized on their own (distill.scoring.encode), never re-tokenized after this prompt, so they
    are the ids the student is trained on.
    """
    if not reference or not reference.strip():
        raise ValueError("a privileged prompt needs a reference (a gold answer or a rationale)")
    own = rationale_prompt(question)
    if not own.endswith(RESPONSE_HEADER):
        raise ValueError(f"the rationale prompt does not end with {RESPONSE_HEADER!r}")
    return f"{own.removesuffix(RESPONSE_HEADER)}### Reference:\n{reference.strip()}\n\n{RESPONSE_HEADER}"


def answer_reference(gold: float) -> str:
    """A gold answer as a reference: `The answer is 12.`"""
    return f"The answer is {format_number(gold)}."


def strategy_tag(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return f"[{strategy}]:"


def forced_prompt(question: str, strategy: str) -> str:
    """The rationale prompt primed with a strategy's tag, forcing that strategy. The completion then
    lacks the tag: parse `strategy_tag(strategy) + completion`."""
    return rationale_prompt(question) + strategy_tag(strategy)


def rationale_target(strategy: str, text: str) -> str:
    """`[cot]: <solution>`: the rationale-task target for a solution (given without its tag)."""
    return f"{strategy_tag(strategy)} {text.strip()}"


def label_target(answer: float) -> str:
    """The label-task target: the answer as a bare number (integers without `.0`)."""
    return format_number(answer)


def parse_student_output(text: str) -> tuple[str | None, str]:
    """(strategy, solution) from a rationale-task completion: the leading `[cot]:` / `[l2m]:` /
    `[pot]:` tag (None when missing) and the text after it."""
    strategy, rest = strip_tag(text or "")
    return strategy, rest.strip()


LABEL_PARSER_VERSION = "2"  # 2: a completion that is an arithmetic expression is evaluated


def parse_label_output(text: str) -> float | None:
    """The answer of a label-task completion: the value of its first line when that line is an
    arithmetic expression (a DSS-format student writes SVAMP's equation labels), else its first number."""
    lines = (text or "").strip().splitlines()
    value = expression_or_first_number(lines[0]) if lines else None
    return value if value is not None else first_number(text or "")


_ANSWER_STATEMENT = re.compile(r"(?:\bso\s+)?\bthe answer is\b|\bfinal answer\s*:", re.IGNORECASE)


def dss_rationale_target(text: str) -> str:
    """The `dss` format's rationale target: the teacher's rationale without its answer statement, as
    Distilling Step-by-Step's parse keeps it (the text before `The answer is`; also `Final answer:`),
    with no strategy tag."""
    found = _ANSWER_STATEMENT.search(text)
    return (text[: found.start()] if found else text).strip()


def states_answer(text: str) -> bool:
    """Whether a rationale states its answer (`The answer is`, `So the answer is`, `Final answer:`)."""
    return _ANSWER_STATEMENT.search(text) is not None


def dss_label_target(label_text: str | None, answer: float) -> str:
    """The `dss` format's label target: the label as the dataset writes it (`answer_text`), or the
    bare number where none is given."""
    return label_text.strip() if label_text and label_text.strip() else format_number(answer)


def student_prompt_hash(task: str, multiple_choice: bool = False) -> str:
    """Version hash (16 hex digits) of the student prompt of `task` (rationale | label), for
    questions with listed choices when `multiple_choice`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if multiple_choice:
        instruction = CHOICE_RATIONALE_INSTRUCTION if task == "rationale" else CHOICE_LABEL_INSTRUCTION
    else:
        instruction = RATIONALE_INSTRUCTION if task == "rationale" else LABEL_INSTRUCTION
    payload = {"version": STUDENT_FORMAT_VERSION, "task": task, "preamble": PREAMBLE,
               "template": STUDENT_TEMPLATE, "instruction": instruction}
    if multiple_choice:  # numeric prompts keep the hashes they had before choices had prompts of their own
        payload["multiple_choice"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def forced_prompt_hash(strategy: str) -> str:
    """Version hash (16 hex digits) of the rationale prompt primed with `strategy`'s tag."""
    payload = {"prompt": student_prompt_hash("rationale"), "primed": strategy_tag(strategy)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]
