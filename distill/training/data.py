"""Training rows -> tokenized two-task examples -> batches (docs/method.md, section 4).

    texts, dropped = build_texts(rows)                        # rows: TRAIN_EXAMPLES dicts / DataFrame
    train, val = split_by_question(texts, val_fraction=0.1, seed=42)
    examples, stats = tokenize_texts(train, tokenizer, max_length=1024)
    batch = collate_padded(examples[:8], pad_id)              # or collate_packed(units, pad_id)

Every row of a distillation set (columns of `storage.schemas.TRAIN_EXAMPLES`: question_id,
question, gold, strategy, text, ...) gives one example with two tasks over the same question:

- rationale task (SIKeD): `rationale_prompt(question)` -> `[strategy]: text` + EOS;
- label task (DSS): `label_prompt(question)` -> the bare final answer + EOS.

The loss reads target tokens only: `*_labels` is -100 on the prompt and on padding. Nothing is
dropped or cut silently: rows without a usable gold answer or solution, and examples whose prompt
alone leaves no room for a target token in `max_length`, are dropped and counted by reason; targets
that do not fit are truncated (keeping the prompt whole) and counted per task.

Packing (`pack_examples`, `collate_packed`) puts several examples into one row of at most
`max_length` tokens per task. Attention never crosses an example boundary: the attention mask of a
packed batch is 4-D, [B, 1, T, T], block-diagonal and causal (True = may attend), which transformers
passes to the attention kernel as is (the `sdpa` implementation; `eager` wants an additive mask).
Position ids continue across the row; with rotary position embeddings (Llama, Qwen2, Gemma, SmolLM)
attention depends on position differences only, so inside one block this equals running the
example alone (`tests/test_training_data.py` checks the logits). `*_position_ids` restarting at 0 per
example are in the batch too, for code that wants them. Labels never cross a boundary: the first
token of an example is never a target of the previous one (prompts are never targets).

A row a teacher scored (`token_level`, columns `SCORE_COLUMNS`) keeps its scores with its example
when their ids are the example's rationale target ids, cut as the target is cut; its batch then
carries `rationale_teacher_*` tensors aligned with the logits (`_teacher_tensors`), which
`losses.token_divergence` reads.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
TASKS = ("label", "rationale")


@dataclass(frozen=True)
class TwoTaskText:
    """The text of one training example: both tasks' prompts and targets (targets without EOS)."""

    question_id: str
    strategy: str
    gold: float
    question: str
    label_prompt: str
    label_target: str
    rationale_prompt: str
    rationale_target: str
    scores: TeacherScores | None = None
    """The teacher's scores of `rationale_target` (`token_level`), when the row was scored."""


@dataclass(frozen=True)
class TeacherScores:
    """What a teacher said about each token of one rationale target: a `token_scores` row
    (storage.schemas), [C] per completion token, [C][K] per stored top-k entry."""

    completion_ids: list[int]
    """The target's ids as the scorer encoded them: training uses the scores only if they equal its own."""
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    sampled_logprobs: list[float]


SCORE_COLUMNS = ("teacher_completion_ids", "teacher_top_ids", "teacher_top_logprobs", "teacher_sampled_logprobs")
"""The columns a scored training row carries (`token_scores`' completion_ids, top_ids, top_logprobs
and sampled_logprobs, joined on the row's sample by the training step); None on other rows."""


def row_scores(row: Mapping[str, Any]) -> TeacherScores | None:
    """The teacher's scores a training row carries (`SCORE_COLUMNS`), or None."""
    values = [row.get(column) for column in SCORE_COLUMNS]
    if any(value is None or isinstance(value, float) for value in values):  # pandas writes a missing one as NaN
        return None
    return TeacherScores(*values)


@dataclass
class TokenizedExample:
    """Token ids of both tasks; the first `*_prompt_len` ids of each are the prompt (not targets)."""

    question_id: str
    label_ids: list[int]
    label_prompt_len: int
    rationale_ids: list[int]
    rationale_prompt_len: int
    label_weight: float = 1.0
    """Weight of this example's label tokens in the label loss (`weigh_labels_per_question`)."""
    teacher: tuple[Any, Any, Any] | None = None
    """The teacher's scores of the rationale target tokens kept (after truncation): top-k ids [n, K]
    (int64), their log-probabilities [n, K] and the target tokens' own log-probabilities [n]
    (float32 tensors); None for a row no teacher scored."""

    def length(self, task: str) -> int:
        return len(self.label_ids if task == "label" else self.rationale_ids)


@dataclass
class DataStats:
    """Counts of what happened to the rows on the way to batches (all reported, nothing silent)."""

    rows: int = 0
    examples: int = 0
    dropped: Counter = field(default_factory=Counter)
    """reason -> rows or examples left out (`no_gold`, `empty_solution`, `label_prompt_too_long`, ...)."""
    truncated: Counter = field(default_factory=Counter)
    """task -> examples whose target was cut to fit `max_length`."""
    truncated_tokens: Counter = field(default_factory=Counter)
    """task -> target tokens cut away in total."""
    scores: Counter = field(default_factory=Counter)
    """What became of the teacher's scores (`token_level`): `scored` examples, `misaligned` ones
    (the scored ids differ from the target's: trained without the divergence), `scored_tokens`."""

    def merge(self, other: DataStats) -> DataStats:
        return DataStats(self.rows + other.rows, self.examples + other.examples,
                         self.dropped + other.dropped, self.truncated + other.truncated,
                         self.truncated_tokens + other.truncated_tokens, self.scores + other.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "examples": self.examples, "dropped": dict(self.dropped),
                "truncated": dict(self.truncated), "truncated_tokens": dict(self.truncated_tokens),
                "scores": dict(self.scores)}


# --------------------------------------------------------------------------- text


def _records(rows: Any) -> list[Mapping[str, Any]]:
    """A pandas DataFrame, a pyarrow Table or an iterable of dicts -> list of dicts."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        return rows.to_dict(orient="records")
    if hasattr(rows, "to_pylist"):  # pyarrow Table
        return rows.to_pylist()
    return list(rows)


def build_texts(rows: Any, fmt: str = "siked") -> tuple[list[TwoTaskText], Counter]:
    """TRAIN_EXAMPLES rows -> (two-task texts in row order, Counter of dropped rows by reason).

    `fmt` (`train.format`): `siked` targets `[strategy]: solution` and the bare number; `dss` the
    rationale without its answer statement and no tag, and the row's `label_text` (the dataset's
    answer as written, when the row has one) or the bare number. Dropped: `no_gold` (gold missing or
    not a finite number: the label task has no target), `empty_solution` (no solution text, or in
    `dss` nothing before the answer statement), `unknown_strategy`. A row a teacher scored brings
    its scores (`row_scores`).
    """
    from distill.student_format import (
        dss_label_target,
        dss_rationale_target,
        label_prompt,
        label_target,
        rationale_prompt,
        rationale_target,
    )

    if fmt not in ("siked", "dss"):
        raise ValueError(f"unknown training format {fmt!r} (siked | dss)")
    texts: list[TwoTaskText] = []
    dropped: Counter = Counter()
    for row in _records(rows):
        gold, text, strategy = row.get("gold"), row.get("text"), row.get("strategy")
        if gold is None or not math.isfinite(float(gold)):
            dropped["no_gold"] += 1
            continue
        if not isinstance(text, str) or not text.strip():
            dropped["empty_solution"] += 1
            continue
        try:
            target = rationale_target(str(strategy), text)
        except ValueError:
            dropped["unknown_strategy"] += 1
            continue
        label = label_target(float(gold))
        if fmt == "dss":
            target, label = dss_rationale_target(text), dss_label_target(row.get("label_text"), float(gold))
            if not target:
                dropped["empty_solution"] += 1
                continue
        question = str(row["question"])
        texts.append(TwoTaskText(
            question_id=str(row["question_id"]), strategy=str(strategy), gold=float(gold), question=question,
            label_prompt=label_prompt(question), label_target=label,
            rationale_prompt=rationale_prompt(question), rationale_target=target,
            scores=row_scores(row),
        ))
    return texts, dropped


def dss_rationale_rows(problems: Iterable[Any], rationales: Mapping[str, Any], model: str = "palm-540b",
                       keep_wrong: bool = True) -> tuple[list[dict[str, Any]], Counter]:
    """Distilling Step-by-Step's released rationales -> TRAIN_EXAMPLES rows (strategy `cot`).

    `problems`: `distill.benchmarks.Problem` of a dss_* split; `rationales`: problem id ->
    `distill.benchmarks.Rationale`. The solution is the official parse of the PaLM completion (the
    text before `The answer is`) followed by `Final answer: <gold>`, the ending every CoT target has
    here (for CommonsenseQA `Final answer: (c) <choice>`, the gold being the choice's index, and the
    label text the choice). As in DSS, a rationale is kept whether or not PaLM's own answer was
    right (the label task learns the gold); `keep_wrong=False` drops those. Returns (rows, Counter):
    `no_rationale` (the completion lacks the marker; dropped), `no_gold` (dropped),
    `palm_answer_differs` (kept unless `keep_wrong` is False; counted for the report).
    """
    from distill.answers import answers_match, format_number
    from distill.choices import LETTERS, choice_index, gold_choice
    from distill.numbers import ExpressionError, evaluate_arithmetic

    rows: list[dict[str, Any]] = []
    counts: Counter = Counter()
    for problem in problems:
        found = rationales.get(problem.id)
        if found is None or not (found.rationale or "").strip():
            counts["no_rationale"] += 1
            continue
        multiple = gold_choice(problem.question, problem.answer_text) if not math.isfinite(problem.answer) else None
        if multiple is not None:  # CommonsenseQA: the gold is the correct choice's index
            choices, gold = multiple
            palm_right = choice_index(found.label or "", choices) == gold
            answer = f"({LETTERS[gold]}) {choices[gold]}"
        elif math.isfinite(problem.answer):
            try:
                palm = evaluate_arithmetic(found.label) if found.label else None
            except ExpressionError:
                palm = None
            gold, palm_right, answer = problem.answer, answers_match(palm, problem.answer), format_number(problem.answer)
        else:
            counts["no_gold"] += 1
            continue
        if not palm_right:
            counts["palm_answer_differs"] += 1
            if not keep_wrong:
                continue
        text = f"{found.rationale.strip()}\nFinal answer: {answer}"
        rows.append({"question_id": problem.id, "question": problem.question, "gold": float(gold),
                     "strategy": "cot", "text": text, "sample_index": 0, "source": "teacher",
                     "iteration": 0, "model": model, "label_text": problem.answer_text})
    return rows, counts


# --------------------------------------------------------------------------- validation split


def is_validation_id(question_id: str, val_fraction: float, seed: int) -> bool:
    """Deterministic hold-out by question id: sha256(seed:id) read as a number in [0, 1) < fraction.

    Depends on the id and the seed only, never on row order or on the other ids, so the same
    question is held out in every iteration and every run with the same seed.
    """
    if val_fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < val_fraction


def split_by_question(items: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, val) of items with a `question_id` attribute: all rows of a question go to one side."""
    train, val = [], []
    for item in items:
        (val if is_validation_id(item.question_id, val_fraction, seed) else train).append(item)
    return train, val


# --------------------------------------------------------------------------- tokens


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompt_target_ids(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of one task as the student trains on it: the prompt with the
    tokenizer's special tokens (as at generation time), the target without them, then EOS. Tokenized
    apart, so a target's ids do not depend on the prompt before it (distill.scoring relies on it)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: targets must end with one")
    return _ids(tokenizer, prompt, special=True), _ids(tokenizer, target, special=False) + [tokenizer.eos_token_id]


def tokenize_texts(texts: Iterable[TwoTaskText], tokenizer: Any, max_length: int
                   ) -> tuple[list[TokenizedExample], DataStats]:
    """Tokenize both tasks of every text: prompt (with the tokenizer's special tokens, as at
    generation time) + target + EOS, at most `max_length` ids per task.

    A target that does not fit is truncated at the end (counted in `stats.truncated[task]`, its
    EOS goes with it); an example whose prompt leaves no room for one target token is dropped
    (`stats.dropped["<task>_prompt_too_long"]`).
    """
    stats = DataStats()
    examples: list[TokenizedExample] = []
    for text in texts:
        stats.rows += 1
        parts: dict[str, tuple[list[int], int]] = {}
        for task in TASKS:
            prompt, target = prompt_target_ids(tokenizer, getattr(text, f"{task}_prompt"),
                                               getattr(text, f"{task}_target"))
            if len(prompt) >= max_length:
                stats.dropped[f"{task}_prompt_too_long"] += 1
                break
            full = target
            room = max_length - len(prompt)
            if len(target) > room:
                stats.truncated[task] += 1
                stats.truncated_tokens[task] += len(target) - room
                target = target[:room]
            parts[task] = (prompt + target, len(prompt))
        else:
            example = TokenizedExample(text.question_id, *parts["label"], *parts["rationale"])
            if text.scores is not None:
                example.teacher = _kept_scores(text.scores, full, len(target), stats)
            examples.append(example)
    stats.examples = len(examples)
    return examples, stats


def _kept_scores(scores: TeacherScores, target_ids: list[int], kept: int, stats: DataStats
                 ) -> tuple[Any, Any, Any] | None:
    """The teacher's scores of the first `kept` tokens of a rationale target whose full ids are
    `target_ids`, as tensors (`TokenizedExample.teacher`); None, counted `misaligned`, when the
    scorer encoded other ids (another text or tokenizer): a divergence against another sequence's
    distributions would train the student towards noise."""
    import torch

    if list(scores.completion_ids) != list(target_ids):
        stats.scores["misaligned"] += 1
        return None
    stats.scores["scored"] += 1
    stats.scores["scored_tokens"] += kept
    return (torch.tensor(scores.top_ids[:kept], dtype=torch.long),
            torch.tensor(scores.top_logprobs[:kept], dtype=torch.float32),
            torch.tensor(scores.sampled_logprobs[:kept], dtype=torch.float32))


def weigh_labels_per_question(examples: Sequence[TokenizedExample]) -> None:
    """Give each example a label weight proportional to 1/k, k = the examples of its question (in place).

    A question with k kept solutions gives k rows whose label tasks are identical (same prompt, same
    answer); unweighted, the label loss counts it k times, so questions the teacher solved with
    several strategies would dominate the label task. DSS has one row per question.

    The weights are scaled so that their mean over the label target tokens of `examples` is 1: the
    label loss of a step then has, on average, the scale of an unweighted token mean (alpha keeps
    its meaning), and the training loop divides by the step's target positions, never by the step's
    own sum of weights, so a row's weight is never undone by the rows it happens to share a step with.
    """
    counts = Counter(e.question_id for e in examples)
    tokens = [len(e.label_ids) - e.label_prompt_len for e in examples]
    weighted = sum(n / counts[e.question_id] for e, n in zip(examples, tokens, strict=True))
    scale = sum(tokens) / weighted if weighted > 0 else 1.0
    for e in examples:
        e.label_weight = scale / counts[e.question_id]


# --------------------------------------------------------------------------- padded batches


def _task_tensors(seqs: list[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """[(ids, prompt_len)] -> right-padded input_ids, attention_mask, labels [B, T] (long)."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
        labels[row, prompt_len: len(ids)] = input_ids[row, prompt_len: len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_padded(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, Any]:
    """One example per row: `label_*` [B, Tl] and `rationale_*` [B, Tr] (input_ids, attention_mask,
    labels), each task padded on the right to its own longest sequence."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for task in TASKS:
        seqs = [(getattr(e, f"{task}_ids"), getattr(e, f"{task}_prompt_len")) for e in examples]
        batch.update({f"{task}_{k}": v for k, v in _task_tensors(seqs, pad_id).items()})
    batch["label_weights"] = _position_weights([[(len(e.label_ids), e.label_weight)] for e in examples],
                                               batch["label_input_ids"].shape[1])
    batch.update(_teacher_tensors([[e] for e in examples], batch["rationale_input_ids"].shape[1]))
    return batch


def _teacher_tensors(rows: Sequence[Sequence[TokenizedExample]], width: int) -> dict[str, Any]:
    """The teacher's scores of a batch's rationale targets, aligned with the student's logits:
    `rationale_teacher_ids` and `_logprobs` [B, T, K], `_sampled` [B, T] and `_mask` [B, T] (bool,
    True where the logits at t predict a scored target token, i.e. the token at t + 1). Rows hold
    their examples back to back, as the padded and packed layouts do. {} when no example is scored:
    the divergence term is then 0 for the batch."""
    import torch

    scored = [e.teacher for row in rows for e in row if e.teacher is not None]
    if not scored:
        return {}
    k = scored[0][0].shape[1]
    ids = torch.zeros((len(rows), width, k), dtype=torch.long)
    logprobs = torch.zeros((len(rows), width, k), dtype=torch.float32)
    sampled = torch.zeros((len(rows), width), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for e in row:
            if e.teacher is not None:
                top_ids, top_logprobs, own = e.teacher
                first = start + e.rationale_prompt_len - 1  # the logits predicting the first target token
                span = slice(first, first + own.shape[0])
                ids[r, span], logprobs[r, span], sampled[r, span], mask[r, span] = top_ids, top_logprobs, own, True
            start += len(e.rationale_ids)
    return {"rationale_teacher_ids": ids, "rationale_teacher_logprobs": logprobs,
            "rationale_teacher_sampled": sampled, "rationale_teacher_mask": mask}


def _position_weights(rows: list[list[tuple[int, float]]], width: int) -> Any:
    """Rows of segments [(length, weight), ...] -> [B, T] float32: each position carries the weight
    of the example it belongs to, 0 on padding (`losses.token_nll` reads it at target positions)."""
    import torch

    weights = torch.zeros((len(rows), width), dtype=torch.float32)
    for row, segs in enumerate(rows):
        start = 0
        for length, weight in segs:
            weights[row, start: start + length] = weight
            start += length
    return weights


# --------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[list[int]]:
    """Group example indices into packs whose label and rationale sequences each fit `max_length`.

    Best-fit decreasing on the rationale length (ties by index, so the result is deterministic);
    a pack is accepted only if the label sequences fit too. Returns packs of indices into
    `examples`, every index exactly once, packs in order of their first (longest) example.
    """
    order = sorted(range(len(examples)), key=lambda i: (-examples[i].length("rationale"), i))
    packs: list[list[int]] = []
    room_r: list[int] = []
    room_l: list[int] = []
    # bins[c] = packs with exactly c rationale tokens of room left (best fit = smallest c that fits)
    bins: list[list[int]] = [[] for _ in range(max_length + 1)]
    for i in order:
        need_r, need_l = examples[i].length("rationale"), examples[i].length("label")
        chosen = None
        for capacity in range(need_r, max_length + 1):
            for p in bins[capacity]:
                if room_l[p] >= need_l:
                    chosen = p
                    break
            if chosen is not None:
                break
        if chosen is None:
            chosen = len(packs)
            packs.append([])
            room_r.append(max_length)
            room_l.append(max_length)
        else:
            bins[room_r[chosen]].remove(chosen)
        packs[chosen].append(i)
        room_r[chosen] -= need_r
        room_l[chosen] -= need_l
        bins[room_r[chosen]].append(chosen)
    return packs


def _packed_task_tensors(rows: list[list[tuple[list[int], int]]], pad_id: int) -> dict[str, Any]:
    """Rows of segments [(ids, prompt_len), ...] -> input_ids, labels, position_ids [B, T] and a
    block-diagonal causal attention mask [B, 1, T, T] (bool; padding attends only to itself)."""
    import torch

    width = max(sum(len(ids) for ids, _ in segs) for segs in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for row, segs in enumerate(rows):
        start = 0
        for k, (ids, prompt_len) in enumerate(segs):
            stop = start + len(ids)
            input_ids[row, start:stop] = torch.tensor(ids, dtype=torch.long)
            labels[row, start + prompt_len: stop] = input_ids[row, start + prompt_len: stop]
            positions[row, start:stop] = torch.arange(len(ids))
            segment[row, start:stop] = k
            start = stop
        positions[row, start:] = torch.arange(width - start)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    mask = (same & causal)[:, None]
    # Padding (segment -1) forms one block of its own: every query row keeps at least one key.
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "position_ids": positions,
            "segment_ids": segment}


def collate_packed(packs: Sequence[Sequence[TokenizedExample]], pad_id: int) -> dict[str, Any]:
    """One pack per row (see the module docstring): `<task>_input_ids`, `_labels`, `_position_ids`,
    `_segment_ids` (example index in the row, -1 on padding) [B, T] and `<task>_attention_mask`
    [B, 1, T, T] bool, block-diagonal causal."""
    if not packs:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for task in TASKS:
        rows = [[(getattr(e, f"{task}_ids"), getattr(e, f"{task}_prompt_len")) for e in pack]
                for pack in packs]
        batch.update({f"{task}_{k}": v for k, v in _packed_task_tensors(rows, pad_id).items()})
    batch["label_weights"] = _position_weights([[(len(e.label_ids), e.label_weight) for e in pack]
                                                for pack in packs], batch["label_input_ids"].shape[1])
    batch.update(_teacher_tensors(packs, batch["rationale_input_ids"].shape[1]))
    return batch


def batch_tokens(batch: Mapping[str, Any]) -> int:
    """Real (non-padding) tokens of both tasks in a padded or packed batch."""
    total = 0
    for task in TASKS:
        if f"{task}_segment_ids" in batch:
            total += int((batch[f"{task}_segment_ids"] >= 0).sum())
        else:
            total += int(batch[f"{task}_attention_mask"].sum())
    return total
