"""The token-level divergences against slow full-vocabulary references: values and gradients when the
stored top-k covers the vocabulary, the lumped tail's lower bound and its exact worst-case gap when it
does not, GKD's beta limits, masking, a uniform teacher's closed forms, and float32 students that put
nearly all their mass on the stored tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.training.divergences import (
    DIVERGENCES,
    TeacherTopK,
    divergence_term,
    forward_kl,
    forward_kl_tail_bound,
    generalized_jsd,
    reverse_kl,
    reverse_kl_sampled,
)

VOCAB = 11


# ---- slow references: full softmax, loops over positions ---------------------------------------

def ref_divergence(kind, student_logits, teacher_log_probs, mask, beta=0.5):
    """Per-token mean over `mask` of the full-vocabulary divergence, one position at a time."""
    terms = []
    for b, t in mask.nonzero().tolist():
        q = F.softmax(student_logits[b, t], dim=-1)
        p = teacher_log_probs[b, t].exp()
        if kind == "forward_kl":
            terms.append((p * (p.log() - q.log())).sum())
        elif kind == "reverse_kl":
            terms.append((q * (q.log() - p.log())).sum())
        else:  # GKD: m = beta p_T + (1 - beta) p_S, written in probabilities
            m = beta * p + (1 - beta) * q
            terms.append(beta * (p * (p / m).log()).sum() + (1 - beta) * (q * (q / m).log()).sum())
    return torch.stack(terms).mean()


def ref_lumped(kind, student_logits, ids, teacher_top, beta=0.5):
    """One position: the divergence over k + 1 outcomes, the tail as 1 - sum of the others."""
    q = F.softmax(student_logits, dim=-1)[ids]
    p = teacher_top.exp()
    q, p = torch.cat([q, (1 - q.sum())[None]]), torch.cat([p, (1 - p.sum())[None]])
    if kind == "forward_kl":
        return (p * (p / q).log()).sum()
    if kind == "reverse_kl":
        return (q * (q / p).log()).sum()
    m = beta * p + (1 - beta) * q
    return beta * (p * (p / m).log()).sum() + (1 - beta) * (q * (q / m).log()).sum()


def random_case(seed, batch=2, length=5, vocab=VOCAB, k=VOCAB, scale=2.0):
    """Student logits [B, T, V] (leaf, float64), teacher full log-probs, its top-k, a sample, a mask."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) * scale).requires_grad_()
    teacher_lp = F.log_softmax(torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) * scale, -1)
    top_lp, top_ids = teacher_lp.topk(k, dim=-1)
    sampled = torch.multinomial(teacher_lp.exp().reshape(-1, vocab), 1, generator=generator).reshape(batch, length)
    mask = torch.rand(batch, length, generator=generator) < 0.7
    mask[0, 0] = True
    teacher = TeacherTopK(top_ids, top_lp, sampled, teacher_lp.gather(-1, sampled[..., None]).squeeze(-1))
    return logits, teacher_lp, teacher, mask


def value_and_grad(fn, logits):
    value = fn(logits)
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


# ---- (a) k = V: the full divergences, values and gradients ---------------------------------------

@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.5),
                                       ("jsd", 0.9)])
def test_full_top_k_equals_full_vocabulary(kind, beta):
    logits, teacher_lp, teacher, mask = random_case(seed=1)
    got, got_grad = value_and_grad(
        lambda z: divergence_term(kind, F.log_softmax(z, -1), teacher, mask, beta=beta), logits)
    want, want_grad = value_and_grad(lambda z: ref_divergence(kind, z, teacher_lp, mask, beta), logits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)


def test_tiny_model_logits_and_parameter_gradients():
    """The same on a two-layer Llama built from a config: the divergences reach its parameters as the
    full-vocabulary references do."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).double()
    input_ids = torch.randint(0, VOCAB, (2, 6))
    _, teacher_lp, teacher, mask = random_case(seed=2, length=6)
    params = [p for p in model.parameters() if p.requires_grad]
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        logits = model(input_ids=input_ids).logits
        got = torch.autograd.grad(divergence_term(kind, F.log_softmax(logits, -1), teacher, mask, beta=0.3), params)
        logits = model(input_ids=input_ids).logits
        want = torch.autograd.grad(ref_divergence(kind, logits, teacher_lp, mask, beta=0.3), params)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


def test_sampled_estimator_is_unbiased_for_reverse_kl():
    """Averaged over every token x with weight p_S(x) (the exact expectation over the student's
    samples), the estimator's value and gradient are the reverse KL's."""
    logits, teacher_lp, _, _ = random_case(seed=3, batch=1, length=4)
    positions, vocab = logits.size(1), logits.size(-1)

    def expected(z):
        log_probs = F.log_softmax(z[0], -1)  # [P, V]
        # one row per position, one column per sampled token x: [P, V samples, V]
        per_sample = reverse_kl_sampled(log_probs[:, None, :].expand(positions, vocab, vocab),
                                        torch.arange(vocab).expand(positions, vocab), teacher_lp[0],
                                        torch.ones(positions, vocab, dtype=torch.bool), reduction="none")
        return (log_probs.exp().detach() * per_sample).sum(-1).mean()

    got, got_grad = value_and_grad(expected, logits)
    all_positions = torch.ones(1, positions, dtype=torch.bool)
    want, want_grad = value_and_grad(lambda z: ref_divergence("reverse_kl", z, teacher_lp, all_positions), logits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)


def test_sampled_estimator_value_and_gradient_per_token():
    """Value log p_S(x) - log p_T(x); gradient (log p_S(x) - log p_T(x)) * grad log p_S(x)."""
    logits, _, teacher, mask = random_case(seed=4)
    got, got_grad = value_and_grad(lambda z: divergence_term("reverse_kl_sampled", F.log_softmax(z, -1), teacher, mask),
                                   logits)
    student = F.log_softmax(logits, -1).gather(-1, teacher.sampled_ids[..., None]).squeeze(-1)
    advantage = (student - teacher.sampled_log_probs).detach()
    want, want_grad = value_and_grad(lambda z: (advantage * F.log_softmax(z, -1).gather(
        -1, teacher.sampled_ids[..., None]).squeeze(-1))[mask].mean(), logits)
    torch.testing.assert_close(got, advantage[mask].mean())
    torch.testing.assert_close(got_grad, want_grad)
    assert not torch.allclose(got, want)  # the value is the estimate, not the surrogate


# ---- (b) k < V: lumped values, the lower bound, the exact gap and its worst case -------------------

@pytest.mark.parametrize("k", [1, 3, 10])
def test_lumped_tail_is_a_lower_bound_within_the_documented_gap(k):
    vocab, n = 40, 300
    generator = torch.Generator().manual_seed(k)
    temperature = torch.rand(1, n, 1, generator=generator, dtype=torch.float64) * 4 + 0.2
    logits = torch.randn(1, n, vocab, generator=generator, dtype=torch.float64) * temperature
    teacher_lp = F.log_softmax(torch.randn(1, n, vocab, generator=generator, dtype=torch.float64) * temperature.flip(1), -1)
    top_lp, ids = teacher_lp.topk(k, dim=-1)
    mask = torch.ones(1, n, dtype=torch.bool)
    student_lp = F.log_softmax(logits, -1)
    q, p = student_lp.exp(), teacher_lp.exp()
    full = {"forward_kl": (p * (teacher_lp - student_lp)).sum(-1), "reverse_kl": (q * (student_lp - teacher_lp)).sum(-1)}
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        full[beta] = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    lumped = {"forward_kl": forward_kl(student_lp, ids, top_lp, mask, reduction="none"),
              "reverse_kl": reverse_kl(student_lp, ids, top_lp, mask, reduction="none")}
    for beta in (0.1, 0.5, 0.9):
        lumped[beta] = generalized_jsd(student_lp, ids, top_lp, mask, beta=beta, reduction="none")
    for key, value in lumped.items():
        assert (value <= full[key] + 1e-12).all(), key
        kind, beta = (key, 0.5) if isinstance(key, str) else ("jsd", key)
        slow = torch.stack([ref_lumped(kind, logits[0, i], ids[0, i], top_lp[0, i], beta) for i in range(0, n, 37)])
        torch.testing.assert_close(value[0, ::37], slow, rtol=1e-9, atol=1e-12)
    # the gap of the forward KL is exactly r_T * KL(p_T(. | tail) || p_S(. | tail)) ...
    tail = torch.ones_like(p, dtype=torch.bool).scatter(-1, ids, False)
    p_tail, q_tail = torch.where(tail, p, 0.0), torch.where(tail, q, 0.0)
    r_t, r_s = p_tail.sum(-1, keepdim=True), q_tail.sum(-1, keepdim=True)
    conditional_kl = torch.where(tail, p_tail / r_t * ((p_tail / r_t).log() - (q_tail / r_s).log()), 0.0).sum(-1)
    gap = full["forward_kl"] - lumped["forward_kl"]
    torch.testing.assert_close(gap, r_t[..., 0] * conditional_kl, rtol=1e-7, atol=1e-11)
    # ... and within the bound
    bound = forward_kl_tail_bound(student_lp, ids, top_lp, mask)
    assert (gap <= bound + 1e-10).all()
    assert (bound >= 0).all() and (bound > gap + 1e-3).any()  # a bound, not the gap itself
    # ... which is no looser than the closed form r_T log(c r_S / min_tail p_S), c = p_(k) / r_T
    c = top_lp.amin(-1).exp() / r_t[..., 0]
    closed_form = r_t[..., 0] * (c * r_s[..., 0] / torch.where(tail, q, torch.inf).amin(-1)).log()
    assert (bound <= closed_form + 1e-12).all()


def test_tail_bound_is_reached_by_a_teacher_that_agrees_with_the_top_k():
    """Put the teacher's tail where the bound says the worst case lies: the gap equals the bound."""
    vocab, k, n = 40, 3, 50
    generator = torch.Generator().manual_seed(7)
    student_lp = F.log_softmax(torch.randn(1, n, vocab, generator=generator, dtype=torch.float64) * 2, -1)
    teacher_p = torch.zeros(1, n, vocab, dtype=torch.float64)
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(n)])[None]
    for i in range(n):
        top = torch.rand(k, generator=generator, dtype=torch.float64) * 0.3 + 0.05  # each >= 0.05, sum <= 0.95
        teacher_p[0, i, ids[0, i]] = top
        r_t, cap = 1 - top.sum(), top.min()
        order = [v for v in student_lp[0, i].argsort().tolist() if v not in ids[0, i].tolist()]
        left = r_t
        for v in order:  # fill the student's least likely tail tokens up to the cap, least likely first
            teacher_p[0, i, v] = min(cap, left)
            left -= teacher_p[0, i, v]
    teacher_lp = teacher_p.log()
    top_lp = teacher_lp.gather(-1, ids)
    mask = torch.ones(1, n, dtype=torch.bool)
    full = torch.where(teacher_p > 0, teacher_p * (teacher_lp - student_lp), 0.0).sum(-1)
    gap = full - forward_kl(student_lp, ids, top_lp, mask, reduction="none")
    torch.testing.assert_close(forward_kl_tail_bound(student_lp, ids, top_lp, mask), gap, rtol=1e-9, atol=1e-12)


def test_float32_student_confident_on_the_stored_tokens():
    """A student with tail mass far below float32's resolution near 1 (about 1e-9): the tail still has
    the right value and gradient, as in float64."""
    logits = torch.zeros(1, 2, VOCAB, dtype=torch.float64)
    logits[..., :3] = 20.0
    logits = logits.requires_grad_()
    ids = torch.arange(3).expand(1, 2, 3)
    top_lp = torch.log(torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64)).expand(1, 2, 3)
    mask = torch.ones(1, 2, dtype=torch.bool)
    for kind, fn in (("forward_kl", forward_kl), ("reverse_kl", reverse_kl), ("jsd", generalized_jsd)):
        want, want_grad = value_and_grad(
            lambda z, kind=kind: torch.stack([ref_lumped(kind, z[0, i], ids[0, i], top_lp[0, i]) for i in range(2)]
                                             ).mean(), logits)
        got, got_grad = value_and_grad(lambda z, fn=fn: fn(F.log_softmax(z.float(), -1), ids, top_lp.float(), mask),
                                       logits)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-7)
    assert (want_grad[..., 3:] < 0).all()  # forward KL pulls the tail up: the student gives it ~1e-9, the teacher 0.1


# ---- (c) GKD's beta limits -----------------------------------------------------------------------

@pytest.mark.parametrize("k", [4, VOCAB])
def test_jsd_beta_limits(k):
    logits, _, teacher, mask = random_case(seed=5, k=k)
    log_probs = F.log_softmax(logits, -1).detach()
    args = (log_probs, teacher.topk_ids, teacher.topk_log_probs, mask)
    forward, reverse = forward_kl(*args), reverse_kl(*args)
    assert generalized_jsd(*args, beta=0.0) == forward  # TRL: beta = 0 is KL(teacher || student)
    assert generalized_jsd(*args, beta=1.0) == reverse  # TRL: beta = 1 is KL(student || teacher)
    small = 1e-6
    torch.testing.assert_close(generalized_jsd(*args, beta=small) / small, forward, rtol=1e-4, atol=0)
    torch.testing.assert_close(generalized_jsd(*args, beta=1 - small) / small, reverse, rtol=1e-4, atol=0)
    values = [float(generalized_jsd(*args, beta=b)) for b in (0.25, 0.5, 0.75)]
    assert all(0 < v <= math.log(2) for v in values)  # bounded by the mixture, unlike either KL
    with pytest.raises(ValueError):
        generalized_jsd(*args, beta=1.5)


# ---- (d) masking ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", DIVERGENCES)
def test_masked_positions_contribute_nothing(kind):
    logits, _, teacher, mask = random_case(seed=6, batch=3, length=6, k=4)
    mask[1] = False  # a sequence without completion positions
    off = ~mask
    garbage = TeacherTopK(
        topk_ids=torch.where(off[..., None], -7, teacher.topk_ids),
        topk_log_probs=torch.where(off[..., None], torch.nan, teacher.topk_log_probs),
        sampled_ids=torch.where(off, 10**6, teacher.sampled_ids),
        sampled_log_probs=torch.where(off, -torch.inf, teacher.sampled_log_probs))
    wild = torch.where(off[..., None], logits * 1e3, logits)  # extreme but finite student off the mask
    got, grad = value_and_grad(lambda z: divergence_term(kind, F.log_softmax(z, -1), garbage, mask, beta=0.3), wild)
    assert torch.isfinite(grad).all()
    assert (grad[off] == 0).all()
    kept = mask.nonzero(as_tuple=True)  # the completion positions alone, as one sequence
    alone = TeacherTopK(teacher.topk_ids[kept][None], teacher.topk_log_probs[kept][None],
                        teacher.sampled_ids[kept][None], teacher.sampled_log_probs[kept][None])
    want = divergence_term(kind, F.log_softmax(logits[kept][None], -1), alone,
                           torch.ones(1, len(kept[0]), dtype=torch.bool), beta=0.3)
    torch.testing.assert_close(got, want.detach())


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_no_completion_positions_gives_attached_zero(kind):
    logits, _, teacher, mask = random_case(seed=8, k=4)
    value = divergence_term(kind, F.log_softmax(logits, -1), teacher, torch.zeros_like(mask))
    (grad,) = torch.autograd.grad(value, logits)
    assert value == 0 and (grad == 0).all()


# ---- (e) a uniform teacher -----------------------------------------------------------------------

def test_uniform_teacher_closed_forms():
    """Teacher uniform over V; student e^a on token 0 and 1 elsewhere. Both tails are uniform, so the
    lumped values are exact with k = 3 < V: KL(U || S) = -log V - (log q0 + (V - 1) log q1) / V,
    KL(S || U) = log V - H(S), and the bound on the gap is 0."""
    a = 2.5
    logits = torch.zeros(1, 1, VOCAB, dtype=torch.float64)
    logits[..., 0] = a
    log_probs = F.log_softmax(logits, -1)
    ids = torch.tensor([[[0, 4, 9]]])
    uniform = torch.full((1, 1, 3), -math.log(VOCAB), dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    q0 = math.exp(a) / (math.exp(a) + VOCAB - 1)
    q1 = 1 / (math.exp(a) + VOCAB - 1)
    forward = -math.log(VOCAB) - (math.log(q0) + (VOCAB - 1) * math.log(q1)) / VOCAB
    reverse = math.log(VOCAB) + q0 * math.log(q0) + (VOCAB - 1) * q1 * math.log(q1)
    u = 1 / VOCAB
    m0, m1 = (u + q0) / 2, (u + q1) / 2
    jsd = 0.5 * (u * math.log(u / m0) + (VOCAB - 1) * u * math.log(u / m1)) \
        + 0.5 * (q0 * math.log(q0 / m0) + (VOCAB - 1) * q1 * math.log(q1 / m1))
    assert float(forward_kl(log_probs, ids, uniform, mask)) == pytest.approx(forward, rel=1e-12)
    assert float(reverse_kl(log_probs, ids, uniform, mask)) == pytest.approx(reverse, rel=1e-12)
    assert float(generalized_jsd(log_probs, ids, uniform, mask, beta=0.5)) == pytest.approx(jsd, rel=1e-12)
    assert float(forward_kl_tail_bound(log_probs, ids, uniform, mask)) == pytest.approx(0.0, abs=1e-15)
    flat = F.log_softmax(torch.zeros(1, 1, VOCAB, dtype=torch.float64), -1)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert float(divergence_term(kind, flat, TeacherTopK(ids, uniform), mask)) == pytest.approx(0.0, abs=1e-15)


def test_divergence_term_refuses_what_it_cannot_compute():
    logits, _, teacher, mask = random_case(seed=9, k=4)
    log_probs = F.log_softmax(logits, -1)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_term("kl", log_probs, teacher, mask)
    with pytest.raises(ValueError, match="sampled"):
        divergence_term("reverse_kl_sampled", log_probs, TeacherTopK(teacher.topk_ids, teacher.topk_log_probs), mask)
    with pytest.raises(ValueError, match="stored teacher tokens"):
        forward_kl(log_probs[..., :3], teacher.topk_ids, teacher.topk_log_probs, mask)
