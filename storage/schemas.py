"""Declared pyarrow schemas, one per artifact kind, with a version each.

Bump a kind's version when its columns change: manifests record it, and readers refuse an
artifact written under another version instead of misreading it.
"""

from __future__ import annotations

import pyarrow as pa

# One problem of a benchmark. `id` is derived from the source (file + native id or line),
# never from a row number after shuffling.
PROBLEMS = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),  # file name or hub dataset it came from
        ("question", pa.string()),
        ("answer", pa.float64()),  # numeric gold answer
        ("answer_text", pa.string()),  # the gold answer as written in the source
        ("reference", pa.string()),  # reference solution / rationale when the source has one
    ]
)

# One generated sample with its provenance.
SAMPLE_COLUMNS = [
    ("question_id", pa.string()),
    ("strategy", pa.string()),  # cot | l2m | pot (the tag the sample carries)
    ("sample_index", pa.int32()),
    ("prompt_hash", pa.string()),  # version hash of the rendered prompt template
    ("text", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("finish_reason", pa.string()),  # stop | length | ...
    ("model", pa.string()),
    ("engine", pa.string()),
    ("engine_version", pa.string()),
    ("sampling", pa.string()),  # JSON of the sampling parameters
    ("seed", pa.int64()),
    ("iteration", pa.int32()),
    ("source", pa.string()),  # teacher | student
]
SAMPLES = pa.schema(SAMPLE_COLUMNS)

# A sample with its verdict (docs/method.md, section 3).
VERIFIED = pa.schema(
    SAMPLE_COLUMNS
    + [
        ("gold", pa.float64()),
        ("predicted", pa.float64()),  # null when no answer could be extracted
        ("verdict", pa.string()),  # correct | wrong | no_answer | bad_format | exec_error | timeout | truncated
        ("reason", pa.string()),  # human-readable detail
        ("rule", pa.string()),  # which extraction rule fired (final_answer | the_answer_is | last_number | program)
        ("parser_version", pa.string()),
        ("exec_seconds", pa.float64()),  # PoT only
    ]
)

# Training examples: one verified solution per (question, strategy) with its question text.
TRAIN_EXAMPLES = pa.schema(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("gold", pa.float64()),
        ("strategy", pa.string()),
        ("text", pa.string()),  # the solution, without the strategy tag
        ("sample_index", pa.int32()),
        ("source", pa.string()),  # teacher | student
        ("iteration", pa.int32()),
        ("model", pa.string()),
    ]
)

# Per-step training metrics.
TRAIN_METRICS = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("split", pa.string()),  # train | val
        ("loss", pa.float64()),
        ("loss_label", pa.float64()),
        ("loss_rationale", pa.float64()),
        ("loss_mi", pa.float64()),
        ("loss_divergence", pa.float64()),  # the token-level term (`token_level`); 0 without one
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("val_accuracy", pa.float64()),
    ]
)

# Per-question evaluation predictions.
PREDICTIONS = pa.schema(
    [
        ("question_id", pa.string()),
        ("benchmark", pa.string()),
        ("mode", pa.string()),  # rationale | label
        ("strategy", pa.string()),  # the strategy the student chose (null in label mode)
        ("text", pa.string()),
        ("gold", pa.float64()),
        ("predicted", pa.float64()),
        ("verdict", pa.string()),
        ("rule", pa.string()),
        ("finish_reason", pa.string()),
        ("model", pa.string()),
        ("prompt_hash", pa.string()),
        ("parser_version", pa.string()),
        ("decoding", pa.string()),  # JSON of the decoding parameters
    ]
)

# One question's outcome under one (arm, seed, benchmark, mode, stage) of an experiment: what every
# interval and paired test of its results.json is computed from.
OUTCOMES = pa.schema(
    [
        ("arm", pa.string()),
        ("seed", pa.int64()),
        ("run_id", pa.string()),
        ("benchmark", pa.string()),
        ("mode", pa.string()),
        ("stage", pa.string()),  # base | iter-XX
        ("final", pa.bool_()),  # the run's last stage (compared across arms with other iteration counts)
        ("step_key", pa.string()),  # the evaluate step's key: arms with one key share one evaluation
        ("question_id", pa.string()),
        ("correct", pa.bool_()),  # as the pipeline scores it (any extraction rule)
        ("correct_strict", pa.bool_()),  # only an explicitly stated answer (or a program's result)
        ("strategy", pa.string()),
        ("verdict", pa.string()),
        ("rule", pa.string()),
    ]
)

# An evaluation question sharing word n-grams with a training problem or a prompt exemplar.
OVERLAPS = pa.schema(
    [
        ("benchmark", pa.string()),  # the evaluation set, `<name>-<split>`
        ("question_id", pa.string()),
        ("source_id", pa.string()),  # a training problem's id, or `exemplar:<id>`
        ("shared", pa.int32()),  # distinct shared n-grams
        ("example", pa.string()),  # one of them
    ]
)

# The `sampled` evaluation mode (self-consistency): k rows per question.
SAMPLED_PREDICTIONS = pa.schema([("sample_index", pa.int32()), *PREDICTIONS])

# The teacher's token-level signal on samples (docs/method.md, "Scoring"): one row per scored
# sample, C = the completion's tokens (as the student trains on them: its ids, EOS included), K = `k`.
# Position c holds what the teacher predicts for completion token c from the prompt and tokens 0..c-1.
# Log-probabilities are natural logs of the teacher's full softmax (no temperature, no top-p), in
# float32; a probability too small for the engine to report comes as -9999.
TOKEN_SCORES = pa.schema(
    [
        ("sample_id", pa.string()),  # `<question_id>|<strategy>|<sample_index>` (distill.scoring.sample_id)
        ("question_id", pa.string()),
        ("prompt_hash", pa.string()),  # sha256 (16 hex digits) of the scoring prompt's text
        ("prompt_tokens", pa.int32()),  # length of the scoring prompt in tokens
        ("completion_ids", pa.list_(pa.int32())),  # [C] the completion's token ids
        ("sampled_logprobs", pa.list_(pa.float32())),  # [C] log p_teacher(completion token c)
        ("top_ids", pa.list_(pa.list_(pa.int32()))),  # [C][K] the teacher's K likeliest tokens, likeliest first
        ("top_logprobs", pa.list_(pa.list_(pa.float32()))),  # [C][K] their log-probabilities, descending
        ("k", pa.int32()),  # K
        ("teacher", pa.string()),  # the scoring model: its folder, name or Hub id
        ("engine", pa.string()),  # vllm | openai | ...
        ("engine_version", pa.string()),
        ("tokenizer_hash", pa.string()),  # distill.scoring.tokenizer_fingerprint's digest, shared by teacher and student
    ]
)

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    "problems": (1, PROBLEMS),
    "samples": (1, SAMPLES),
    "verified": (1, VERIFIED),
    "train_examples": (1, TRAIN_EXAMPLES),
    "train_metrics": (2, TRAIN_METRICS),  # 2: loss_divergence
    "predictions": (1, PREDICTIONS),
    "outcomes": (1, OUTCOMES),
    "overlaps": (1, OVERLAPS),
    "sampled_predictions": (1, SAMPLED_PREDICTIONS),
    "token_scores": (1, TOKEN_SCORES),
}


def schema_for(kind: str) -> tuple[int, pa.Schema]:
    """(version, schema) of an artifact kind; a KeyError names the known kinds."""
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise KeyError(f"unknown artifact kind {kind!r}; known: {', '.join(sorted(SCHEMAS))}") from None
