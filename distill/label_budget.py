"""How many new tokens a label-mode answer gets: enough for the longest gold label, in the student's tokens.

    count = token_counter(tokenizer)                               # or model_token_counter(model_path)
    lengths = [max(count(text) for text in gold_labels(p)) for p in problems]
    budget = label_budget("auto", lengths)                          # longest + LABEL_MARGIN
    note = shortfall_warning(16, lengths, "dss_svamp-test")         # a line when 16 cannot hold some

A fixed budget cuts the labels longer than it, and a cut label is never scored correct: DSS's SVAMP
labels are equations (`( ( 301.0 - 157.0 ) / 144.0 )`, 24 SmolLM2 tokens), 48 of its 200 test labels
need more than 16 tokens, so under a fixed 16 a perfect student scored at most 76% there. Evaluation
(`eval.label_max_tokens`) and label-mode checkpoint selection (`train.select_on: label`) budget with
these functions, so one setting, read the same way, decides both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

AUTO = "auto"
# Slack above the longest gold label: the end-of-sequence token that closes an answer, and room for
# an answer spelt a little longer than the gold (`12.0` for `12`, other spacing around an equation's
# brackets, a trailing period), so that the budget never decides between one spelling and another.
# A well-trained student stops at its end-of-sequence token, so the slack costs nothing there.
# Step keys hold the setting `auto`, not the number: changing the margin or `gold_labels` changes what
# the evaluate and train steps write, so bump their STEP_CODE_VERSIONS (tasks/pipeline.py) with it.
LABEL_MARGIN = 8


def gold_labels(problem: Mapping[str, Any]) -> list[str]:
    """The label texts a student may be trained to write for `problem` (a PROBLEMS row): the bare
    number (`train.format: siked`) and the label as the dataset writes it (`dss`: SVAMP's equation,
    a choice's text). An evaluation does not know which format trained its model; the budget covers
    both."""
    from distill.student_format import dss_label_target, label_target

    answer = problem.get("answer")
    finite = answer is not None and math.isfinite(float(answer))
    labels = [label_target(float(answer))] if finite else []
    text = problem.get("answer_text")
    if text and str(text).strip():
        labels.append(dss_label_target(str(text), float(answer) if finite else math.nan))
    return labels


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of a text as the student writes it: the target's own ids, no special tokens (the
    training code tokenizes label targets this way, `distill.training.data.tokenize_texts`)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def model_token_counter(model_path: str) -> Callable[[str], int]:
    """`token_counter` of the tokenizer in the model folder `model_path`. A model with no local
    tokenizer (a name an OpenAI-compatible server serves) counts UTF-8 bytes, at least as many as
    byte-level tokens."""
    if (Path(model_path) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return token_counter(AutoTokenizer.from_pretrained(model_path))
    return lambda text: len(text.encode("utf-8"))


def label_lengths(problems: Sequence[Mapping[str, Any]], count: Callable[[str], int]) -> list[int]:
    """Per problem, the tokens of its longest gold label (`gold_labels`); 0 for a problem with none."""
    return [max((count(text) for text in gold_labels(p)), default=0) for p in problems]


def label_budget(setting: int | str, lengths: Sequence[int]) -> int:
    """New tokens per label-mode answer: `setting` when it is a number; for `auto`, the longest gold
    label (`lengths`, in the student's tokens) plus LABEL_MARGIN."""
    if setting != AUTO:
        return int(setting)
    return max(lengths, default=0) + LABEL_MARGIN


def shortfall_warning(setting: int | str, lengths: Sequence[int], where: str) -> str | None:
    """A line counting the gold labels a set budget cannot hold (they cannot be scored correct);
    None when every one fits, and always for `auto`."""
    if setting == AUTO:
        return None
    over = [n for n in lengths if n > int(setting)]
    if not over:
        return None
    return (f"eval.label_max_tokens={setting}: {len(over)} of {len(lengths)} gold labels of {where} need "
            f"more tokens (up to {max(over)}); they cannot be scored correct")
