"""Training data: two-task texts, the validation split, tokens and labels, truncation, packing, and
the order of batches."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from distill.training.data import (
    IGNORE_INDEX,
    build_texts,
    collate_packed,
    collate_padded,
    dss_rationale_rows,
    is_validation_id,
    pack_examples,
    split_by_question,
    tokenize_texts,
)
from distill.training.prepare import BatchPlan, lr_multiplier


def make_rows(n: int, seed: int = 0, words: int = 0) -> list[dict]:
    """Addition problems with a CoT solution; `words` pads the solution to make it long."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rnd.randint(1, 99), rnd.randint(1, 99)
        filler = " ".join(["so"] * (words or rnd.randint(0, 30)))
        rows.append({"question_id": f"arith/train/{i}",
                     "question": f"Ann has {a} pens and buys {b} more. How many?",
                     "gold": float(a + b), "strategy": rnd.choice(["cot", "l2m", "pot"]),
                     "text": f"{filler} {a} + {b} = {a + b}.\nFinal answer: {a + b}"})
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_texts_have_both_tasks_and_drops_are_counted():
    rows = make_rows(3) + [
        {"question_id": "x1", "question": "q", "gold": None, "strategy": "cot", "text": "t"},
        {"question_id": "x2", "question": "q", "gold": float("nan"), "strategy": "cot", "text": "t"},
        {"question_id": "x3", "question": "q", "gold": 1.0, "strategy": "cot", "text": "  "},
        {"question_id": "x4", "question": "q", "gold": 1.0, "strategy": "sql", "text": "t"},
    ]
    texts, dropped = build_texts(rows)
    assert len(texts) == 3
    assert dropped == {"no_gold": 2, "empty_solution": 1, "unknown_strategy": 1}
    first = texts[0]
    assert first.rationale_target.startswith(f"[{rows[0]['strategy']}]: ")
    assert first.label_target == str(int(rows[0]["gold"]))
    assert rows[0]["question"] in first.label_prompt and rows[0]["question"] in first.rationale_prompt
    assert first.label_prompt != first.rationale_prompt  # the task is chosen by the instruction


def test_validation_split_by_id_is_deterministic_and_disjoint():
    rows = make_rows(400)
    rows += [dict(r, strategy="pot") for r in rows[:100]]  # a second strategy for some questions
    texts, _ = build_texts(rows)
    train, val = split_by_question(texts, val_fraction=0.1, seed=42)
    shuffled = list(texts)
    random.Random(1).shuffle(shuffled)
    train2, val2 = split_by_question(shuffled, val_fraction=0.1, seed=42)
    ids = lambda items: {t.question_id for t in items}
    assert ids(val) == ids(val2) and ids(train) == ids(train2)
    assert not ids(train) & ids(val)
    assert len(train) + len(val) == len(texts)
    assert 0.05 < len(ids(val)) / 400 < 0.15
    assert ids(split_by_question(texts, 0.1, seed=7)[1]) != ids(val)
    assert split_by_question(texts, 0.0, seed=42)[1] == []
    assert is_validation_id("a", 0.5, 3) == is_validation_id("a", 0.5, 3)


def test_loss_only_on_targets_and_targets_end_with_eos(tokenizer):
    texts, _ = build_texts(make_rows(4))
    examples, stats = tokenize_texts(texts, tokenizer, max_length=512)
    assert stats.examples == 4 and not stats.truncated and not stats.dropped
    pad = tokenizer.pad_token_id
    batch = collate_padded(examples, pad)
    for task in ("label", "rationale"):
        ids, mask, labels = (batch[f"{task}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
        for row, example in enumerate(examples):
            n, prompt = example.length(task), getattr(example, f"{task}_prompt_len")
            assert (labels[row, :prompt] == IGNORE_INDEX).all()  # prompt: never a target
            assert (labels[row, n:] == IGNORE_INDEX).all() and (mask[row, n:] == 0).all()  # padding
            assert (labels[row, prompt:n] == ids[row, prompt:n]).all()
            assert int(labels[row, n - 1]) == tokenizer.eos_token_id
    decoded = tokenizer.decode(batch["label_labels"][0][batch["label_labels"][0] != IGNORE_INDEX])
    assert decoded.startswith(texts[0].label_target)


def test_truncation_is_counted_and_prompt_only_examples_are_dropped(tokenizer):
    texts, _ = build_texts(make_rows(3, words=300))
    examples, stats = tokenize_texts(texts, tokenizer, max_length=128)
    assert stats.truncated["rationale"] == 3 and stats.truncated_tokens["rationale"] > 3 * 100
    assert all(e.length("rationale") == 128 for e in examples)
    full_prompt = len(tokenizer(texts[0].rationale_prompt)["input_ids"])
    assert examples[0].rationale_prompt_len == full_prompt  # the prompt is never cut
    label_prompt = len(tokenizer(texts[0].label_prompt)["input_ids"])
    short = (label_prompt + full_prompt) // 2 + 1  # the label prompt fits, the rationale prompt does not
    kept, stats = tokenize_texts(texts, tokenizer, max_length=short)
    assert kept == [] and stats.dropped == {"rationale_prompt_too_long": 3} and stats.rows == 3


def test_packing_fits_every_example_exactly_once(tokenizer):
    texts, _ = build_texts(make_rows(40))
    examples, _ = tokenize_texts(texts, tokenizer, max_length=512)
    packs = pack_examples(examples, max_length=512)
    assert sorted(i for p in packs for i in p) == list(range(40))
    for pack in packs:
        for task in ("label", "rationale"):
            assert sum(examples[i].length(task) for i in pack) <= 512
    assert len(packs) < 40 / 3
    assert pack_examples(examples, 512) == packs  # deterministic


def test_packed_rows_equal_separate_examples(tokenizer, tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import LossConfig
    from distill.training.infonce import InfoNCEHead
    from distill.training.losses import compute_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    texts, _ = build_texts(make_rows(3))
    examples, _ = tokenize_texts(texts, tokenizer, max_length=512)
    packed = collate_packed([examples], tokenizer.pad_token_id)
    assert packed["rationale_attention_mask"].shape[-2:] == packed["rationale_input_ids"].shape[-1:] * 2
    with torch.no_grad():
        logits = model(input_ids=packed["rationale_input_ids"],
                       attention_mask=packed["rationale_attention_mask"]).logits[0]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example.rationale_ids])).logits[0]
            n = example.length("rationale")
            torch.testing.assert_close(logits[start: start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
        padded = collate_padded(examples, tokenizer.pad_token_id)
        torch.manual_seed(0)
        head = InfoNCEHead(model.config.hidden_size, 16)
        # token-level means, and the MI terms pooled per example: packing changes no loss term
        for kind in ("sft", "dss", "dss_mi", "dss_infonce"):
            a = compute_loss(model, packed, LossConfig(kind=kind), infonce_head=head)
            b = compute_loss(model, padded, LossConfig(kind=kind), infonce_head=head)
            torch.testing.assert_close(a.total, b.total, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a.terms, b.terms, atol=1e-4, rtol=1e-4)
        assert float(compute_loss(model, packed, LossConfig(kind="dss_mi")).terms["mi"]) > 0
    targets = lambda batch: int((batch["rationale_labels"] != IGNORE_INDEX).sum())
    assert targets(packed) == targets(padded)


def test_batch_plan_visits_every_unit_each_epoch_and_splits_over_ranks():
    plan = BatchPlan(units=10, batch_size=4, world=2, grad_accum=1, seed=3)
    assert plan.steps_per_epoch == 3 and plan.micro == 2
    for epoch in range(2):
        seen = []
        for index in range(plan.steps_per_epoch):
            step = epoch * plan.steps_per_epoch + index
            parts = [mb for rank in range(2) for mb in plan.micro_batches(step, rank)]
            assert all(len(mb) == 2 for mb in parts)
            seen += [u for mb in parts for u in mb]
        assert set(seen) == set(range(10)) and len(seen) == 12  # the last step is filled up, not cut
    assert plan.order(0) != plan.order(1)
    assert plan.position(4) == {"epoch": 1, "batch_index": 1, "order_seed": 4}
    with pytest.raises(ValueError, match="multiple of nproc"):
        BatchPlan(units=10, batch_size=6, world=4, grad_accum=1, seed=0)


def test_schedules_warm_up_then_decay():
    assert lr_multiplier(0, "linear", 5, 100) == 0.0
    assert lr_multiplier(5, "linear", 5, 100) == 1.0
    assert lr_multiplier(100, "linear", 5, 100) == 0.0
    assert math.isclose(lr_multiplier(52.5, "cosine", 5, 100), 0.5)
    assert lr_multiplier(80, "constant", 5, 100) == 1.0


def test_dss_svamp_rationales_become_cot_rows(data_dir):
    from distill.benchmarks import load_benchmark, load_rationales
    from distill.config import BenchmarkRef

    problems = load_benchmark(BenchmarkRef(name="dss_svamp", split="train"), data_dir).problems
    rows, counts = dss_rationale_rows(problems, load_rationales("dss_svamp", "train", data_dir))
    assert len(problems) == 800
    assert len(rows) + counts["no_rationale"] == 800 and counts["no_rationale"] == 11  # per the data README
    assert {r["strategy"] for r in rows} == {"cot"}
    from distill.answers import format_number

    assert all(r["text"].endswith(f"\nFinal answer: {format_number(r['gold'])}") for r in rows)
    texts, dropped = build_texts(rows)
    assert len(texts) == len(rows) and not dropped


def test_a_question_counts_once_in_the_label_loss(tokenizer, tiny_model_path):
    """A question with k kept solutions has k identical label rows; weighted 1/k each, the label
    loss of [A, A, A, B] equals that of [A, B] (as in DSS, one row per question)."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import LossConfig
    from distill.training.data import weigh_labels_per_question
    from distill.training.losses import compute_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    rows = make_rows(2, seed=3)
    a, b = rows
    repeated = [dict(a, strategy=s, text=f"{s} {a['text']}") for s in ("cot", "l2m", "pot")] + [b]
    once, _ = tokenize_texts(build_texts([a, b])[0], tokenizer, max_length=512)
    several, _ = tokenize_texts(build_texts(repeated)[0], tokenizer, max_length=512)
    weigh_labels_per_question(several)
    assert [e.label_weight / several[-1].label_weight for e in several] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    cfg = LossConfig(kind="dss")
    with torch.no_grad():
        expected = compute_loss(model, collate_padded(once, tokenizer.pad_token_id), cfg).terms["label"]
        weighted = collate_padded(several, tokenizer.pad_token_id)
        assert weighted["label_weights"].shape == weighted["label_labels"].shape
        torch.testing.assert_close(compute_loss(model, weighted, cfg).terms["label"], expected)
        packed = collate_packed([several[:2], several[2:]], tokenizer.pad_token_id)
        torch.testing.assert_close(compute_loss(model, packed, cfg).terms["label"], expected, atol=1e-5, rtol=1e-5)
        unweighted = collate_padded(several, tokenizer.pad_token_id)
        unweighted.pop("label_weights")  # what every row counting once gives: A three times over
        for e in several:
            e.label_weight = 1.0
        counted_per_row = compute_loss(model, collate_padded(several, tokenizer.pad_token_id), cfg).terms["label"]
        torch.testing.assert_close(compute_loss(model, unweighted, cfg).terms["label"], counted_per_row)
        assert abs(float(counted_per_row) - float(expected)) > 1e-4


def test_dss_format_trains_the_rationale_as_released_and_the_dataset_label(data_dir):
    """`train.format=dss` on DSS's SVAMP: the rationale without its answer statement or tag, the
    label the equation string; the SIKeD format puts the answer in every rationale target."""
    from distill.benchmarks import load_benchmark, load_rationales
    from distill.config import BenchmarkRef, TrainConfig
    from distill.student_format import parse_label_output
    from distill.training.data import DataStats
    from distill.training.prepare import BatchPlan, data_report

    problems = load_benchmark(BenchmarkRef(name="dss_svamp", split="train"), data_dir).problems
    rows, _ = dss_rationale_rows(problems, load_rationales("dss_svamp", "train", data_dir))
    dss, dropped = build_texts(rows, "dss")
    assert not dropped and len(dss) == len(rows)
    first = dss[0]
    assert first.label_target == rows[0]["label_text"] and first.label_target.startswith("(")
    assert parse_label_output(first.label_target) == first.gold  # the equation is scored by its value
    assert not any(t.rationale_target.startswith("[") or "answer is" in t.rationale_target.lower() for t in dss)
    siked, _ = build_texts(rows)
    assert siked[0].rationale_target.startswith("[cot]: ") and siked[0].label_target == f"{first.gold:g}"

    def shares(texts, fmt):
        cfg = TrainConfig(format=fmt, select_on="label" if fmt == "dss" else "rationale", val_fraction=0.0)
        units = [[i] for i in range(len(texts))]
        report = data_report(len(texts), Counter(), DataStats(), DataStats(), texts, [], units,
                             BatchPlan(len(texts), 8, 1, 1, 0), 10, cfg)
        return report["rationale_contains_label"], report["rationale_states_answer"]

    assert shares(siked, "siked") == (1.0, 1.0)
    contains, states = shares(dss, "dss")
    assert contains < 0.05 and 0.5 < states < 1.0  # the equation is never quoted; its value often is


def test_dss_rows_without_a_dataset_label_use_the_number():
    rows = [dict(make_rows(1)[0], text="Add them: 3 + 4 = 7. The answer is 7.")]
    (text,), _ = build_texts(rows, "dss")
    assert text.rationale_target == "Add them: 3 + 4 = 7." and text.label_target == "{:g}".format(rows[0]["gold"])
    empty = [dict(rows[0], text="The answer is 7.")]
    assert build_texts(empty, "dss")[1] == {"empty_solution": 1}
