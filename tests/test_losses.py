"""The training losses against slow, obvious references (loops over examples and positions, full
softmax): values and gradients, masking of prompt and padding, chunk-size invariance, the detached
label side of the MI term, InfoNCE, and `compute_loss` on a tiny Llama built from a config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.config import LossConfig
from distill.training.infonce import InfoNCEHead, infonce_loss
from distill.training.losses import (
    StepNorm,
    compute_loss,
    dss_loss,
    mi_from_log_probs,
    mi_loss,
    pooled_softmax_max,
    step_norm,
    to_log_probs,
    token_ce,
    token_nll,
)
from distill.training.targets import target_mask

VOCAB = 23


# ---- slow references -------------------------------------------------------------------------

def targets_of(labels: torch.Tensor, b: int) -> list[int]:
    """Positions t of example b whose logits predict a target token (labels[b, t + 1] != -100)."""
    return [t for t in range(labels.size(1) - 1) if labels[b, t + 1] != -100]


def ref_token_ce(logits, labels):
    terms = [-F.log_softmax(logits[b, t], dim=-1)[labels[b, t + 1]]
             for b in range(labels.size(0)) for t in targets_of(labels, b)]
    return torch.stack(terms).mean()


def ref_pooled(logits, labels):
    rows = []
    for b in range(labels.size(0)):
        positions = targets_of(labels, b)
        if not positions:
            rows.append(torch.zeros(logits.size(-1), dtype=logits.dtype))
            continue
        probs = torch.stack([F.softmax(logits[b, t], dim=-1) for t in positions])
        rows.append(probs.max(dim=0).values)
    return torch.stack(rows)


def ref_mi(label_logits, label_labels, rationale_logits, rationale_labels):
    p = ref_pooled(label_logits.detach(), label_labels)
    q = ref_pooled(rationale_logits, rationale_labels)
    terms = [-(p[b] * F.log_softmax(q[b], dim=-1)).sum() for b in range(p.size(0))
             if targets_of(label_labels, b) and targets_of(rationale_labels, b)]
    return torch.stack(terms).mean()


def ref_infonce(head, label_hidden, label_labels, rationale_hidden, rationale_labels, temperature):
    pooled_l, pooled_r = [], []
    for b in range(label_hidden.size(0)):
        pl, pr = targets_of(label_labels, b), targets_of(rationale_labels, b)
        if pl and pr:
            pooled_l.append(torch.stack([label_hidden[b, t] for t in pl]).mean(dim=0))
            pooled_r.append(torch.stack([rationale_hidden[b, t] for t in pr]).mean(dim=0))
    zl = [F.normalize(head.label_proj(h), dim=-1) for h in pooled_l]
    zr = [F.normalize(head.rationale_proj(h), dim=-1) for h in pooled_r]
    n = len(zl)
    score = [[torch.dot(zl[i], zr[j]) / temperature for j in range(n)] for i in range(n)]
    row = [-(score[i][i] - torch.logsumexp(torch.stack(score[i]), 0)) for i in range(n)]
    col = [-(score[j][j] - torch.logsumexp(torch.stack([score[i][j] for i in range(n)]), 0))
           for j in range(n)]
    return 0.5 * (torch.stack(row).mean() + torch.stack(col).mean())


# ---- random batches --------------------------------------------------------------------------

def make_labels(layout: list[tuple[int, int]], length: int, seed: int) -> torch.Tensor:
    """One row per (prompt_len, target_len): -100 on the prompt, random ids, -100 on the padding."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full((len(layout), length), -100, dtype=torch.long)
    for b, (prompt, target) in enumerate(layout):
        labels[b, prompt:prompt + target] = torch.randint(0, VOCAB, (target,), generator=gen)
    return labels


def make_logits(labels: torch.Tensor, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*labels.shape, VOCAB, generator=gen, dtype=dtype)).requires_grad_()


LABEL_LAYOUT = [(8, 2), (5, 1), (10, 3), (3, 4)]      # short answers after long prompts
RATIONALE_LAYOUT = [(4, 9), (2, 14), (6, 5), (3, 11)]  # longer solutions, padded to 16
TL, TR = 14, 16


@pytest.fixture
def batch():
    ll, rl = make_labels(LABEL_LAYOUT, TL, 1), make_labels(RATIONALE_LAYOUT, TR, 2)
    return make_logits(ll, 3), ll, make_logits(rl, 4), rl


def grads(value, *inputs):
    return torch.autograd.grad(value, inputs, allow_unused=True)


# ---- token CE and DSS ------------------------------------------------------------------------

def test_token_ce_matches_reference(batch):
    _, _, logits, labels = batch
    got, want = token_ce(logits, labels), ref_token_ce(logits, labels)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits)[0], grads(want, logits)[0])


def test_token_ce_without_targets_is_zero_not_nan():
    labels = torch.full((2, 5), -100)
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    loss = token_ce(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_token_ce_equals_torch_cross_entropy(batch):
    _, _, logits, labels = batch
    want = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(token_ce(logits, labels), want)


def test_dss_weights_the_two_tasks(batch):
    ll_logits, ll, rl_logits, rl = batch
    got = dss_loss(token_ce(ll_logits, ll), token_ce(rl_logits, rl), alpha=0.3)
    torch.testing.assert_close(got, 0.3 * ref_token_ce(ll_logits, ll) + 0.7 * ref_token_ce(rl_logits, rl))


def ref_weighted_sum(logits, labels, weights):
    """sum over target positions of weight * nll, the weight being the target token's (labels[b, t + 1])."""
    terms = [-weights[b, t + 1] * F.log_softmax(logits[b, t], dim=-1)[labels[b, t + 1]]
             for b in range(labels.size(0)) for t in targets_of(labels, b)]
    return torch.stack(terms).sum()


@pytest.mark.parametrize("denominator", [None, 37.0])
def test_weighted_token_nll_matches_reference(batch, denominator):
    """Without a denominator the weighted mean of this batch; with one (the step's target positions)
    the weighted sum divided by it, whatever the weights add up to."""
    logits, labels, _, _ = batch
    weights = torch.tensor([0.5, 2.0, 1.0 / 3.0, 1.5], dtype=torch.float64)[:, None].expand_as(labels)
    got = token_nll(to_log_probs(logits), labels, weights, denominator)
    total = sum(weights[b, t + 1] for b in range(labels.size(0)) for t in targets_of(labels, b))
    want = ref_weighted_sum(logits, labels, weights) / (total if denominator is None else denominator)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, logits)[0], grads(want, logits)[0])


def step_examples(seed: int = 0):
    """32 label rows of 16 questions with 1, 2 or 3 rows each (identical label tasks within a
    question), label targets of 1 to 4 tokens after prompts of 3 to 9, in a shuffled order."""
    import random

    from distill.training.data import TokenizedExample

    rnd = random.Random(seed)
    examples = []
    for q, k in enumerate([1, 2, 3] * 5 + [2]):
        prompt, target = rnd.randint(3, 9), rnd.randint(1, 4)
        ids = [rnd.randint(1, VOCAB - 1) for _ in range(prompt + target)]
        examples += [TokenizedExample(f"q{q}", ids, prompt, [1, 2, 3], 1) for _ in range(k)]
    rnd.shuffle(examples)
    return examples


def question_shares(examples, micro: int) -> dict[str, float]:
    """Each question's share of one optimizer step's label loss, the step's rows split into
    micro-batches of `micro` rows: the summed |gradient| of the step's loss at its target tokens'
    log-probabilities (d loss / d log p = -weight / denominator)."""
    from distill.training.data import collate_padded

    batches = [collate_padded(examples[i:i + micro], pad_id=0) for i in range(0, len(examples), micro)]
    norm = step_norm(batches, len(batches))
    shares: dict[str, float] = {}
    for a, b in enumerate(batches):
        log_probs = to_log_probs(torch.randn(*b["label_labels"].shape, VOCAB, dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(a))).requires_grad_()
        loss = token_nll(log_probs, b["label_labels"], b["label_weights"], norm.label_tokens)
        (grad,) = grads(loss, log_probs)
        per_row = grad.abs().sum(dim=(1, 2))
        for row, e in enumerate(examples[a * micro:(a + 1) * micro]):
            shares[e.question_id] = shares.get(e.question_id, 0.0) + float(per_row[row])
    return shares


def test_each_question_counts_once_in_a_steps_label_loss_whatever_the_micro_batch():
    """A step of 32 rows (questions with 1 to 3 identical label rows): each question's share of the
    label loss is the same at micro-batch 1, 4 and 32, and proportional to its label tokens alone
    (k rows weighted 1/k each count as one), so its rows' count does not matter."""
    from distill.training.data import weigh_labels_per_question

    examples = step_examples()
    weigh_labels_per_question(examples)
    tokens = {e.question_id: len(e.label_ids) - e.label_prompt_len for e in examples}
    mean_weight = (sum(e.label_weight * tokens[e.question_id] for e in examples)
                   / sum(tokens[e.question_id] for e in examples))
    assert mean_weight == pytest.approx(1.0)  # the label loss keeps a token mean's scale
    shares = {micro: question_shares(examples, micro) for micro in (1, 4, 32)}
    for micro in (1, 4):
        assert shares[micro] == pytest.approx(shares[32], rel=1e-12), micro
    per_token = [shares[32][q] / n for q, n in tokens.items()]
    # (the weights are float32 in a batch)
    assert per_token == pytest.approx([per_token[0]] * len(per_token), rel=1e-6)
    assert sum(shares[32].values()) == pytest.approx(1.0)  # the weights' mean over the step's tokens is 1 here


def test_step_norm_counts_the_target_positions_of_every_micro_batch():
    from distill.training.data import collate_padded

    examples = step_examples()
    batches = [collate_padded(examples[i:i + 4], pad_id=0) for i in range(0, 32, 4)]
    norm = step_norm(batches, 8)
    assert norm == StepNorm(sum(len(e.label_ids) - e.label_prompt_len for e in examples), 2.0 * 32, 8)
    assert step_norm(batches, 16, lambda values: [2 * v for v in values]).label_tokens == 2 * norm.label_tokens


# ---- pooled softmax maxima -------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 3, TR])
def test_pooled_max_matches_reference(batch, chunk):
    _, _, logits, labels = batch
    got, want = pooled_softmax_max(logits, labels, chunk), ref_pooled(logits, labels)
    torch.testing.assert_close(got, want)
    weights = torch.randn(want.shape, dtype=torch.float64)
    g_got = grads((got * weights).sum(), logits)[0]
    g_want = grads((want * weights).sum(), logits)[0]
    torch.testing.assert_close(g_got, g_want)


def test_pooled_max_ignores_prompt_and_padding(batch):
    _, _, logits, labels = batch
    weights = torch.randn(labels.size(0), VOCAB, dtype=torch.float64)
    base = pooled_softmax_max(logits, labels, 3)
    base_grad = grads((base * weights).sum(), logits)[0]

    outside = ~target_mask(labels)  # prompt, padding and the last position
    spiked = logits.detach().clone()
    spiked[outside] = 0.0
    spiked[..., 5][outside] = 1e4  # a probability of 1 for token 5 wherever no target is predicted
    spiked.requires_grad_()
    got = pooled_softmax_max(spiked, labels, 3)
    got_grad = grads((got * weights).sum(), spiked)[0]
    torch.testing.assert_close(got, base)
    torch.testing.assert_close(got_grad, base_grad)
    assert torch.count_nonzero(got_grad[outside]) == 0


@pytest.mark.parametrize("chunk", [1, 2, 6])
def test_pooled_max_gradcheck(chunk):
    labels = make_labels([(1, 3), (2, 2), (0, 4)], 6, 7)
    logits = make_logits(labels, 8)[..., :7].detach().requires_grad_()  # 7 tokens: few columns to check
    assert torch.autograd.gradcheck(lambda x: pooled_softmax_max(x, labels, chunk), (logits,),
                                    eps=1e-6, atol=1e-5, fast_mode=True)


def test_pooled_max_without_targets_is_zero():
    labels = make_labels([(2, 3), (6, 0), (1, 1)], 6, 9)
    logits = make_logits(labels, 10)
    out = pooled_softmax_max(logits, labels, 2)
    assert torch.count_nonzero(out[1]) == 0
    torch.testing.assert_close(out, ref_pooled(logits, labels))
    (grad,) = grads(out.sum(), logits)
    assert torch.count_nonzero(grad[1]) == 0
    none = torch.full_like(labels, -100)  # not a single target in the batch
    out = pooled_softmax_max(logits, none, 2)
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(grads(out.sum(), logits)[0]) == 0


def pack_rows(tensor: torch.Tensor, rows_per_pack: int) -> torch.Tensor:
    """[B, T, ...] -> [B / k, k * T, ...]: k consecutive rows laid end to end, as packing does."""
    return tensor.reshape(tensor.size(0) // rows_per_pack, rows_per_pack * tensor.size(1), *tensor.shape[2:])


def packed_examples(rows: int, rows_per_pack: int, length: int) -> tuple[torch.Tensor, int]:
    ids = torch.arange(rows).repeat_interleave(length).reshape(rows // rows_per_pack, rows_per_pack * length)
    return ids, rows


@pytest.mark.parametrize("chunk", [1, 5])
def test_pooled_max_per_packed_example_equals_one_example_per_row(batch, chunk):
    """Four examples packed two to a row pool exactly as four padded rows (values and gradients)."""
    label_logits, ll, logits, labels = batch
    packed_logits = pack_rows(logits.detach(), 2).requires_grad_()
    examples = packed_examples(4, 2, TR)
    got = pooled_softmax_max(packed_logits, pack_rows(labels, 2), chunk, examples=examples)
    want = pooled_softmax_max(logits, labels, chunk)
    torch.testing.assert_close(got, want)
    weights = torch.randn(want.shape, dtype=torch.float64)
    torch.testing.assert_close(pack_rows(grads((want * weights).sum(), logits)[0], 2),
                               grads((got * weights).sum(), packed_logits)[0])
    mi_packed = mi_loss(pack_rows(label_logits, 2), pack_rows(ll, 2), packed_logits, pack_rows(labels, 2), chunk,
                        examples=(packed_examples(4, 2, TL), examples))
    torch.testing.assert_close(mi_packed, mi_loss(label_logits, ll, logits, labels, chunk))


def test_infonce_with_the_step_as_negatives_is_the_whole_batch_loss():
    """Two halves, each scored against the other half's embeddings as constants: their mean is the
    InfoNCE of the whole batch."""
    from distill.training.infonce import embed_pairs

    torch.manual_seed(0)
    head = InfoNCEHead(6, 5).double()
    ll, rl = make_labels(LABEL_LAYOUT, TL, 1), make_labels(RATIONALE_LAYOUT, TR, 2)
    lh, rh = torch.randn(4, TL, 6, dtype=torch.float64), torch.randn(4, TR, 6, dtype=torch.float64)
    lm, rm = target_mask(ll), target_mask(rl)
    whole = infonce_loss(head, lh, lm, rh, rm, 0.1)
    halves = []
    for own, other in ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2))):
        with torch.no_grad():
            negatives = embed_pairs(head, lh[other], lm[other], rh[other], rm[other])
        halves.append(infonce_loss(head, lh[own], lm[own], rh[own], rm[own], 0.1, negatives=negatives))
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
    alone = infonce_loss(head, lh[:2], lm[:2], rh[:2], rm[:2], 0.1).detach()
    assert abs(float(alone) - float(halves[0].detach())) > 1e-3


def test_pooled_max_bfloat16_logits(batch):
    _, _, logits, labels = batch
    low = logits.detach().to(torch.bfloat16).requires_grad_()
    got = pooled_softmax_max(low, labels, 4)
    torch.testing.assert_close(got, ref_pooled(low.detach().double(), labels).float())
    (grad,) = grads(got.sum(), low)
    assert grad.dtype == torch.bfloat16


def test_pooled_max_non_consecutive_targets():
    """Targets in two spans (as in a multi-turn layout): chunks that straddle the gap are indexed."""
    labels = torch.full((2, 14), -100)
    labels[0, 2:5] = 1
    labels[0, 8:12] = 2
    labels[1, 1:13:3] = 3
    logits = make_logits(labels, 14)
    want = ref_pooled(logits, labels)
    weights = torch.randn(want.shape, dtype=torch.float64)
    (g_want,) = grads((want * weights).sum(), logits)
    for chunk in (1, 2, 5, 14):
        got = pooled_softmax_max(logits, labels, chunk)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(grads((got * weights).sum(), logits)[0], g_want)


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_pooled_max_ties_send_the_gradient_to_the_first_position(chunk):
    labels = make_labels([(0, 7), (1, 5)], 8, 15)
    logits = make_logits(labels, 16).detach()
    logits[0, 4] = logits[0, 1]  # identical rows: every column ties between positions 1 and 4
    logits[1, 3] = logits[1, 2]  # neighbours: a tie inside one chunk when chunk >= 2
    logits.requires_grad_()
    got, want = pooled_softmax_max(logits, labels, chunk), ref_pooled(logits, labels)
    torch.testing.assert_close(got, want)
    weights = torch.randn(want.shape, dtype=torch.float64)
    g_got = grads((got * weights).sum(), logits)[0]
    torch.testing.assert_close(g_got, grads((want * weights).sum(), logits)[0])
    assert torch.count_nonzero(g_got[0, 4]) == 0 and torch.count_nonzero(g_got[1, 3]) == 0


def test_pooled_max_with_masked_vocabulary(batch):
    """-inf logits (a masked token) give probability 0 there and do not disturb the rest."""
    _, _, logits, labels = batch
    masked = logits.detach().clone()
    masked[..., 0] = -torch.inf
    masked.requires_grad_()
    got, want = pooled_softmax_max(masked, labels, 3), ref_pooled(masked, labels)
    torch.testing.assert_close(got, want)
    assert torch.count_nonzero(got[:, 0]) == 0
    torch.testing.assert_close(grads(got[:, 1:].sum(), masked)[0], grads(want[:, 1:].sum(), masked)[0])


# ---- the MI term -----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 3, TR])
def test_mi_matches_reference(batch, chunk):
    ll_logits, ll, rl_logits, rl = batch
    got = mi_loss(ll_logits, ll, rl_logits, rl, chunk)
    want = ref_mi(ll_logits, ll, rl_logits, rl)
    torch.testing.assert_close(got, want)
    g_label, g_rationale = grads(got, ll_logits, rl_logits)
    assert g_label is None  # p is detached: no gradient reaches the label logits
    torch.testing.assert_close(g_rationale, grads(want, rl_logits)[0])


def test_mi_with_sparse_gradient_next_to_cross_entropy(batch):
    """compute_loss's path: one log-softmax feeds the cross-entropy and the MI term, whose gradient
    travels sparse and is added into the cross-entropy's; both orders of creation are right."""
    ll_logits, ll, rl_logits, rl = batch
    want = ref_token_ce(rl_logits, rl) + ref_mi(ll_logits, ll, rl_logits, rl)
    (g_want,) = grads(want, rl_logits)
    for mi_first in (False, True):
        label_lp, rationale_lp = to_log_probs(ll_logits), to_log_probs(rl_logits)
        mi = mi_from_log_probs(label_lp, ll, rationale_lp, rl, 3, sparse_grad=True) if mi_first else None
        ce = token_nll(rationale_lp, rl)
        if not mi_first:
            mi = mi_from_log_probs(label_lp, ll, rationale_lp, rl, 3, sparse_grad=True)
        torch.testing.assert_close(ce + mi, want)
        g_label, g_rationale = grads(ce + mi, ll_logits, rl_logits)
        assert g_label is None
        torch.testing.assert_close(g_rationale, g_want)


def test_mi_equals_cross_entropy_with_probability_targets(batch):
    """The reference code's nn.CrossEntropyLoss()(q, p), on the target-only pooled vectors."""
    ll_logits, ll, rl_logits, rl = batch
    p = ref_pooled(ll_logits.detach(), ll)
    q = ref_pooled(rl_logits, rl)
    torch.testing.assert_close(mi_loss(ll_logits, ll, rl_logits, rl, 4), F.cross_entropy(q, p))


def test_mi_leaves_out_examples_without_targets(batch):
    ll_logits, ll, rl_logits, rl = batch
    full = mi_loss(ll_logits, ll, rl_logits, rl, 3)
    ll_extra = torch.cat([ll, torch.full((1, TL), -100)])
    rl_extra = torch.cat([rl, make_labels([(2, 5)], TR, 11)])
    ll_logits_extra = torch.cat([ll_logits, make_logits(ll_extra[:1], 12)])
    rl_logits_extra = torch.cat([rl_logits, make_logits(rl_extra[:1], 13)])
    torch.testing.assert_close(mi_loss(ll_logits_extra, ll_extra, rl_logits_extra, rl_extra, 3), full)


# ---- InfoNCE ---------------------------------------------------------------------------------

def test_infonce_matches_reference(batch):
    _, ll, _, rl = batch
    torch.manual_seed(0)
    head = InfoNCEHead(hidden_size=12, dim=6).double()
    hl = torch.randn(ll.size(0), TL, 12, dtype=torch.float64, requires_grad=True)
    hr = torch.randn(rl.size(0), TR, 12, dtype=torch.float64, requires_grad=True)
    got = infonce_loss(head, hl, target_mask(ll), hr, target_mask(rl), temperature=0.2)
    want = ref_infonce(head, hl, ll, hr, rl, temperature=0.2)
    torch.testing.assert_close(got, want)
    inputs = (hl, hr, *head.parameters())
    for g_got, g_want in zip(grads(got, *inputs), grads(want, *inputs)):
        torch.testing.assert_close(g_got, g_want)
    assert got.item() >= 0  # so the bound log N - L never exceeds log N


def test_infonce_degenerate_batches():
    head = InfoNCEHead(hidden_size=4, dim=3)
    hidden = torch.randn(2, 5, 4)
    none = torch.zeros(2, 5, dtype=torch.bool)
    loss = infonce_loss(head, hidden, none, hidden, none, 0.1)
    assert loss.item() == 0.0
    loss.backward()  # attached to the heads
    one = none.clone()
    one[0, 1] = True
    assert infonce_loss(head, hidden, one, hidden, one, 0.1).item() == pytest.approx(0.0, abs=1e-6)


# ---- compute_loss on a tiny model ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def model_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {}
    for task, length, layout in (("label", 10, [(6, 2), (8, 1), (4, 3)]),
                                 ("rationale", 18, [(6, 10), (8, 9), (4, 14)])):
        ids = torch.randint(1, 101, (3, length), generator=gen)
        mask = torch.zeros(3, length, dtype=torch.long)
        labels = torch.full((3, length), -100)
        for b, (prompt, target) in enumerate(layout):
            mask[b, :prompt + target] = 1
            labels[b, prompt:prompt + target] = ids[b, prompt:prompt + target]
        batch |= {f"{task}_input_ids": ids, f"{task}_attention_mask": mask, f"{task}_labels": labels}
    return batch


def reference_total(model, batch, cfg, head):
    """The loss of `cfg.kind` from transformers' own causal-LM loss and the slow references."""
    outs = {task: model(input_ids=batch[f"{task}_input_ids"], attention_mask=batch[f"{task}_attention_mask"],
                        labels=batch[f"{task}_labels"], output_hidden_states=True)
            for task in ("label", "rationale")}
    if cfg.kind == "sft":
        return outs["rationale"].loss
    total = cfg.alpha * outs["label"].loss + (1 - cfg.alpha) * outs["rationale"].loss
    if cfg.kind == "dss_mi":
        total = total + cfg.beta * ref_mi(outs["label"].logits, batch["label_labels"],
                                          outs["rationale"].logits, batch["rationale_labels"])
    if cfg.kind == "dss_infonce":
        total = total + cfg.beta * ref_infonce(head, outs["label"].hidden_states[-1], batch["label_labels"],
                                               outs["rationale"].hidden_states[-1], batch["rationale_labels"],
                                               cfg.infonce_temperature)
    return total


@pytest.mark.parametrize("kind", ["sft", "dss", "dss_mi", "dss_infonce"])
def test_compute_loss_on_tiny_llama(tiny_model, kind):
    batch = model_batch()
    cfg = LossConfig(kind=kind, alpha=0.4, beta=0.3, chunk_size=3, infonce_dim=8)
    torch.manual_seed(1)
    head = InfoNCEHead(tiny_model.config.hidden_size, cfg.infonce_dim) if kind == "dss_infonce" else None
    loss = compute_loss(tiny_model, batch, cfg, infonce_head=head)
    want = reference_total(tiny_model, batch, cfg, head)

    torch.testing.assert_close(loss.total, want)
    assert loss.as_floats()["total"] == pytest.approx(want.item(), rel=1e-5)
    assert set(loss.terms) == {"label", "rationale", "mi", "divergence"}
    terms = loss.terms
    if kind == "sft":
        assert loss.weights == {"rationale": 1.0}
        torch.testing.assert_close(loss.total, terms["rationale"])
    else:
        torch.testing.assert_close(loss.total, 0.4 * terms["label"] + 0.6 * terms["rationale"] + 0.3 * terms["mi"])
    if kind in ("sft", "dss"):
        assert terms["mi"].item() == 0.0 and "mi" not in loss.weights
    else:
        assert terms["mi"].item() > 0 and loss.weights["mi"] == 0.3
    params = [*tiny_model.parameters(), *(head.parameters() if head is not None else ())]
    got_grads = torch.autograd.grad(loss.total, params, allow_unused=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    for got, expected in zip(got_grads, want_grads):
        assert got is not None
        torch.testing.assert_close(got, expected)


def test_compute_loss_sft_needs_only_rationale_tensors(tiny_model):
    batch = {k: v for k, v in model_batch().items() if k.startswith("rationale_")}
    loss = compute_loss(tiny_model, batch, LossConfig(kind="sft"))
    assert torch.isfinite(loss.total)


def test_compute_loss_infonce_needs_a_head(tiny_model):
    with pytest.raises(ValueError, match="InfoNCEHead"):
        compute_loss(tiny_model, model_batch(), LossConfig(kind="dss_infonce"))


def test_mi_floor_is_the_lowest_loss_a_pooled_rationale_vector_can_reach(batch):
    """q is a pooled probability vector, so q lies in [0, 1]^V: the floor is the minimum of L_MI over
    that box (found here by L-BFGS-B), above the entropy bound -sum p log(p / sum p), which needs a
    softmax(q) equal to p / sum p that no such q gives."""
    from scipy.optimize import minimize

    from distill.training.losses import mi_floor

    label_logits, ll, rationale_logits, rl = batch
    floor = mi_floor(to_log_probs(label_logits.detach()), ll, rl)
    assert float(mi_loss(label_logits, ll, rationale_logits, rl).detach()) >= floor

    p = ref_pooled(label_logits.detach(), ll).double()
    keep = [b for b in range(p.size(0)) if targets_of(ll, b) and targets_of(rl, b)]
    lowest = []
    for b in keep:
        pb = p[b].numpy()

        def loss_and_grad(q, pb=pb):
            qt = torch.tensor(q, requires_grad=True)
            value = -(torch.tensor(pb) * torch.log_softmax(qt, dim=-1)).sum()
            value.backward()
            return float(value.detach()), qt.grad.numpy()

        found = minimize(loss_and_grad, x0=pb, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * pb.size,
                         options={"ftol": 1e-15, "gtol": 1e-12})
        lowest.append(found.fun)
    assert floor == pytest.approx(sum(lowest) / len(lowest), rel=1e-9, abs=1e-9)
    entropy_bound = -(p * torch.log(p / p.sum(-1, keepdim=True))).sum(-1)[keep].mean()
    assert float(entropy_bound) < floor


def test_mi_floor_on_a_large_vocabulary_leaves_at_most_the_label_mass_to_remove():
    """With V = 49,152 (SmolLM2) and a confident label task, L_MI is about S * log V whatever q is:
    the reachable room, L_MI(q = 0) - floor, is at most S = sum(p)."""
    from distill.training.losses import box_floor

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 49152, dtype=torch.float64) * 2
    logits[:, torch.arange(6), torch.arange(6) * 7] += 12  # six confident label positions
    p = torch.softmax(logits, dim=-1).max(dim=1).values
    floor = box_floor(p)
    at_zero = p.sum(-1) * math.log(49152)
    assert torch.all(floor <= at_zero) and torch.all(at_zero - floor <= p.sum(-1))
    assert torch.all(floor > 0.85 * at_zero)
