"""Training on the teacher's token-level scores (`token_level.use`): scores joined to the rows they
describe, aligned with the student's logits in padded and packed batches, the divergence term equal
to a direct full-vocabulary computation, and each use's steps in the plan."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from distill.config import LossConfig, load_config
from distill.training.data import (
    TeacherScores,
    TokenizedExample,
    build_texts,
    collate_packed,
    collate_padded,
    prompt_target_ids,
    tokenize_texts,
)
from distill.training.losses import TokenTerm, compute_loss, loss_weights, step_norm
from distill.training.targets import shifted_labels, target_mask
from flows.run_setup import run_layout
from tasks.jobs.train import attach_scores
from tasks.pipeline import pipeline_steps
from tests.test_training_data import make_rows

VOCAB = 101
QUICKSTART = Path(__file__).resolve().parents[1] / "configs/quickstart.yaml"


# ---- the scores reach the positions they describe ------------------------------------------------


def scored_rows(tokenizer, n: int = 3, k: int = 4) -> list[dict]:
    """Rows whose scores put the target token itself first among the teacher's top-k at each position."""
    rows = make_rows(n)
    for row in rows:
        (text,), _ = build_texts([row])
        _, target = prompt_target_ids(tokenizer, text.rationale_prompt, text.rationale_target)
        row |= {"teacher_completion_ids": target,
                "teacher_top_ids": [[t] + [(t + j) % 1000 + 1 for j in range(1, k)] for t in target],
                "teacher_top_logprobs": [[-0.1 * (j + 1) for j in range(k)] for _ in target],
                "teacher_sampled_logprobs": [-0.1] * len(target)}
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.mark.parametrize("packed", [False, True])
def test_teacher_scores_sit_at_the_logits_that_predict_the_scored_tokens(tokenizer, packed):
    texts, _ = build_texts(scored_rows(tokenizer))
    examples, stats = tokenize_texts(texts, tokenizer, max_length=512)
    assert stats.scores["scored"] == 3 and not stats.scores["misaligned"]
    batch = collate_packed([examples], 0) if packed else collate_padded(examples, 0)
    mask = batch["rationale_teacher_mask"]
    # every rationale target position is scored, and nothing else
    assert torch.equal(mask, target_mask(batch["rationale_labels"]))
    targets = shifted_labels(batch["rationale_labels"])
    assert torch.equal(batch["rationale_teacher_ids"][..., 0][mask], targets[mask])
    assert torch.allclose(batch["rationale_teacher_sampled"][mask], torch.tensor(-0.1))
    assert int(step_norm([batch], 1).scored_tokens) == int(mask.sum()) == stats.scores["scored_tokens"]


def test_truncated_targets_keep_the_scores_of_their_kept_tokens_and_misaligned_scores_are_dropped(tokenizer):
    rows = scored_rows(tokenizer, n=2)
    rows[1]["teacher_completion_ids"] = rows[1]["teacher_completion_ids"][1:]  # another text's ids
    texts, _ = build_texts(rows)
    prompt_len = len(prompt_target_ids(tokenizer, texts[0].rationale_prompt, "")[0])
    examples, stats = tokenize_texts(texts, tokenizer, max_length=prompt_len + 3)
    assert stats.scores == {"scored": 1, "misaligned": 1, "scored_tokens": 3}
    assert examples[0].teacher[0].shape[0] == 3 and examples[1].teacher is None
    batch = collate_padded(examples, 0)
    assert batch["rationale_teacher_mask"][0].sum() == 3 and not batch["rationale_teacher_mask"][1].any()


def test_a_batch_without_scored_rows_carries_no_teacher_tensors(tokenizer):
    examples, _ = tokenize_texts(build_texts(make_rows(2))[0], tokenizer, max_length=512)
    assert not any(key.startswith("rationale_teacher") for key in collate_padded(examples, 0))


# ---- the term equals a direct computation over the full vocabulary -----------------------------------


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).double().eval()


def scored_examples(teacher, lengths=((5, 7), (3, 9), (6, 4))) -> list[TokenizedExample]:
    """Examples (prompt, target lengths) whose teacher scores are `teacher`'s full distribution (k = V)."""
    gen = torch.Generator().manual_seed(3)
    examples = []
    for i, (prompt, target) in enumerate(lengths):
        ids = torch.randint(1, VOCAB, (prompt + target,), generator=gen).tolist()
        with torch.no_grad():
            log_probs = F.log_softmax(teacher(torch.tensor([ids])).logits[0], dim=-1)
        at = log_probs[prompt - 1: prompt + target - 1]  # the logits predicting each target token
        top = at.sort(dim=-1, descending=True)
        own = at.gather(-1, torch.tensor(ids[prompt:])[:, None]).squeeze(-1)
        example = TokenizedExample(f"q{i}", ids[:prompt + 1], prompt, ids, prompt)
        example.teacher = (top.indices, top.values.float(), own.float())
        examples.append(example)
    return examples


def direct(kind: str, student, teacher, examples) -> float:
    """The mean over every target token of the divergence, from both models' full softmax."""
    values = []
    for e in examples:
        ids = torch.tensor([e.rationale_ids])
        with torch.no_grad():
            s = F.log_softmax(student(ids).logits[0], dim=-1)[e.rationale_prompt_len - 1:-1]
            t = F.log_softmax(teacher(ids).logits[0], dim=-1)[e.rationale_prompt_len - 1:-1]
        taken = torch.tensor(e.rationale_ids[e.rationale_prompt_len:])[:, None]
        if kind == "forward_kl":
            per = (t.exp() * (t - s)).sum(-1)
        elif kind == "reverse_kl":
            per = (s.exp() * (s - t)).sum(-1)
        elif kind == "jsd":
            m = torch.logaddexp(t + math.log(0.5), s + math.log(0.5))
            per = 0.5 * (t.exp() * (t - m)).sum(-1) + 0.5 * (s.exp() * (s - m)).sum(-1)
        else:  # reverse_kl_sampled: log p_S(x) - log p_T(x) at the tokens the sequence holds
            per = (s.gather(-1, taken) - t.gather(-1, taken)).squeeze(-1)
        values.append(per)
    return float(torch.cat(values).mean())


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "reverse_kl_sampled"])
def test_the_divergence_term_is_the_full_vocabulary_divergence_in_padded_and_packed_batches(kind):
    student, teacher = tiny_llama(0), tiny_llama(1)
    examples = scored_examples(teacher)
    want = direct(kind, student, teacher, examples)
    token = TokenTerm(kind, weight=0.5, beta=0.5)
    cfg = LossConfig(kind="sft")
    for batch in (collate_padded(examples, 0), collate_packed([examples[:2], examples[2:]], 0)):
        loss = compute_loss(student, batch, cfg, token=token)
        assert loss.terms["divergence"].item() == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert loss.total.item() == pytest.approx(loss.terms["rationale"].item() + 0.5 * want, rel=1e-4)


def test_on_policy_trains_on_the_divergence_alone_and_splits_a_step_by_its_scored_tokens():
    student, teacher = tiny_llama(0), tiny_llama(1)
    examples = scored_examples(teacher)
    token = TokenTerm("reverse_kl", weight=2.0, supervised=False)
    cfg = LossConfig(kind="dss_mi", alpha=0.5, beta=0.1)
    assert loss_weights(cfg, token) == {"divergence": 2.0}
    whole = compute_loss(student, collate_padded(examples, 0), cfg, token=token)
    assert whole.total.item() == pytest.approx(2.0 * whole.terms["divergence"].item())
    assert whole.terms["label"].item() == 0.0 and whole.terms["mi"].item() == 0.0  # the label task is not run
    # two micro-batches of one step: their shares add up to the step's mean, token for token
    micro = [collate_padded(examples[:1], 0), collate_padded(examples[1:], 0)]
    norm = step_norm(micro, 2)
    shares = [compute_loss(student, b, cfg, token=token, norm=norm).terms["divergence"].item() for b in micro]
    assert sum(shares) == pytest.approx(whole.terms["divergence"].item(), rel=1e-6)


# ---- the training step joins the scores to the rows they describe --------------------------------


def test_scores_join_only_the_rows_of_the_round_they_were_computed_for():
    rows = pd.DataFrame([
        {"question_id": "q1", "strategy": "cot", "sample_index": 0, "source": "student", "iteration": 2},
        {"question_id": "q1", "strategy": "cot", "sample_index": 0, "source": "teacher", "iteration": 0},
        {"question_id": "q2", "strategy": "pot", "sample_index": 1, "source": "student", "iteration": 2},
        {"question_id": "q3", "strategy": "cot", "sample_index": 0, "source": "student", "iteration": 1},
    ])
    score = {"sample_id": "q1|cot|0", "completion_ids": [5, 6], "top_ids": [[5], [6]], "top_logprobs": [[-1.0], [-2.0]],
             "sampled_logprobs": [-1.0, -2.0]}
    joined, counts = attach_scores(rows, [score, {**score, "sample_id": "q3|cot|0"}], ("student", 2))
    assert joined["teacher_completion_ids"].tolist() == [[5, 6], None, None, None]
    assert joined["teacher_top_ids"][0] == [[5], [6]]
    assert counts == {"scored_rows": 1, "unscored_rows": 1}  # q2's sample has no score
    (text, *_), _ = build_texts([{**joined.iloc[0].to_dict(), "question": "x", "gold": 1.0, "text": "a"}])
    assert text.scores == TeacherScores([5, 6], [[5], [6]], [[-1.0], [-2.0]], [-1.0, -2.0])


# ---- each use is steps in the plan ----------------------------------------------------------------


def plan(tmp_path, *overrides):
    cfg = load_config(QUICKSTART.read_text(), [f"runs_root={tmp_path}", *overrides])
    return pipeline_steps(cfg, run_layout(cfg))


def test_on_policy_rounds_score_every_sample_and_train_on_them_unmixed(tmp_path):
    steps = plan(tmp_path, "token_level.use=on_policy", "token_level.teacher=self")
    assert "iter-01/mix" not in steps and "iter-00/score" not in steps
    assert steps["iter-01/distill_set"].job["keep"] == "all"
    train = steps["iter-01/train"]
    assert train.inputs["train_set"] == "iter-01/distill_set" and train.inputs["token_scores"] == "iter-01/score"
    assert train.job["token_term"] == {"kind": "reverse_kl", "weight": 1.0, "supervised": False}
    assert train.job["scored_rows"] == ("student", 1)
    assert "token_scores" not in steps["iter-00/train"].inputs


def test_siked_with_the_token_term_trains_its_mixed_rows_and_the_scores_of_its_samples(tmp_path):
    steps = plan(tmp_path, "token_level.use=siked", "token_level.divergence=jsd", "token_level.jsd_beta=0.3")
    train = steps["iter-02/train"]
    assert train.inputs["train_set"] == "iter-02/mix" and train.inputs["token_scores"] == "iter-02/score"
    assert train.job["token_term"] == {"kind": "jsd", "weight": 1.0, "supervised": True, "beta": 0.3}
    assert "keep" not in steps["iter-02/distill_set"].job
    plain = plan(tmp_path)
    assert steps["iter-00/train"].key == plain["iter-00/train"].key  # the teacher round is shared with SIKeD


def test_word_level_scores_the_teacher_round_with_the_student_to_be(tmp_path):
    steps = plan(tmp_path, "token_level.use=word_level", "token_level.teacher=self", "siked.iterations=0")
    score = steps["iter-00/score"]
    assert score.inputs == {"rows": "iter-00/distill_set"}
    assert score.job["student_model"] == "builtin:smollm2-135m-instruct"
    train = steps["iter-00/train"]
    assert train.inputs["token_scores"] == "iter-00/score" and train.job["scored_rows"] == ("teacher", 0)
    assert train.job["token_term"]["kind"] == "forward_kl"


def test_recorded_scores_train_nothing_and_uses_without_rounds_are_refused(tmp_path):
    steps = plan(tmp_path, "token_level.use=record")
    assert "iter-01/score" in steps and not any("token_scores" in s.inputs for s in steps.values())
    with pytest.raises(Exception, match="siked.iterations=0 has none"):
        plan(tmp_path, "token_level.use=on_policy", "siked.iterations=0")
