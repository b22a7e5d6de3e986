"""How sure a comparison is: intervals and tests on per-question outcomes.

    wilson_interval(correct=17, n=24)                    # (low, high) of an accuracy, 95%
    paired_comparison(arm_correct, baseline_correct)     # diff, interval and p of one test, MDE
    pooled_comparison(arm_by_seed, baseline_by_seed)     # the same over seeds, the question the unit
    holm([0.01, 0.04, 0.03])                             # Holm-adjusted p-values
    across_seeds([0.21, 0.25, 0.17])                     # mean, sd and t interval over seeds

Every formula comes from scipy or statsmodels; this module only decides what is paired with what.
Outcomes are 0/1 arrays aligned on the same questions (index i is one question in both arms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
SIGN_FLIPS = 10_000  # Monte Carlo draws that place an interval's bounds (the p at zero is exact)


def wilson_interval(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of `correct` out of `n` (NaNs for n = 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    low, high = proportion_confint(correct, n, alpha=1 - level, method="wilson")
    # The bounds at 0/n and n/n are exactly 0 and 1; floating point leaves them a hair inside.
    return (0.0 if correct == 0 else float(low)), (1.0 if correct == n else float(high))


def mcnemar_exact(arm: Sequence[int], baseline: Sequence[int]) -> float:
    """Exact (binomial) McNemar p-value of paired 0/1 outcomes; 1.0 when no pair disagrees."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(arm, dtype=bool), np.asarray(baseline, dtype=bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def sign_flip_p(diffs: Sequence[int]) -> float:
    """Exact two-sided p of the sign-flip test of per-question integer differences (the arm's
    correct seeds minus the baseline's): under the null each question's difference is as likely
    negated, so the sum's distribution is that of sum(+-|d|). With one seed this is the exact
    McNemar test (a sum of +-1 over the discordant questions is a symmetric binomial).

    The distribution is a convolution of binomials, one per distinct |d|: exact and fast, where a
    Monte Carlo permutation test would give a p that moves with its random draws."""
    from scipy.stats import binom

    d = np.abs(np.asarray(diffs, dtype=int))
    observed = abs(int(np.asarray(diffs, dtype=int).sum()))
    if observed == 0:
        return 1.0
    total = int(d.sum())
    pmf = np.ones(1)  # distribution of W = sum of |d| over questions whose sign stays positive
    for value, count in zip(*np.unique(d[d > 0], return_counts=True), strict=True):
        part = np.zeros(value * count + 1)
        part[::value] = binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, part)
    t = np.abs(2 * np.arange(total + 1) - total)  # |sum| when W takes each value
    return float(min(1.0, pmf[t >= observed].sum()))


def _flip_p(centred: np.ndarray, signs: np.ndarray) -> float:
    """Monte Carlo sign-flip p of `centred` (real values), with the given sign draws."""
    observed = abs(centred.sum())
    hits = sum(int(np.sum(np.abs(block @ centred) >= observed - 1e-9)) for block in np.array_split(signs, 10))
    return (hits + 1) / (len(signs) + 1)


def sign_flip_interval(diffs: np.ndarray, seeds: int, level: float = LEVEL, flips: int = SIGN_FLIPS,
                       seed: int = 0) -> tuple[float, float]:
    """The shifts delta (in accuracy, per question and seed) the sign-flip test does not reject on
    diffs / seeds - delta: the test inverted, so zero lies outside the interval exactly when
    sign_flip_p(diffs) < 1 - level (that p, exact, decides at delta = 0; Monte Carlo flips, the
    same draws for every delta, decide elsewhere)."""
    d = np.asarray(diffs, dtype=float) / seeds
    estimate = float(d.mean())
    if np.all(d == d[0]):  # nothing to flip against: the interval is the point
        return estimate, estimate
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], dtype=np.float32), size=(flips, d.size))
    alpha = 1 - level
    zero_rejected = sign_flip_p(diffs) < alpha

    def rejected(delta: float) -> bool:
        return zero_rejected if delta == 0 else _flip_p((d - delta).astype(np.float32), signs) < alpha

    step = 4 * float(d.std(ddof=1)) / math.sqrt(d.size) + 1e-3
    return _bound(estimate, -step, rejected), _bound(estimate, step, rejected)


def _bound(estimate: float, step: float, rejected) -> float:
    """Bisection for where the test starts rejecting, walking from the estimate (never rejected)
    by `step`. Zero, when it lies on this side, is an anchor: the bound falls between the estimate
    and zero when zero is rejected and beyond zero when it is not, so interval and test agree."""
    accepted, far = estimate, estimate + step
    if (0 - estimate) * step > 0:  # zero lies on this side
        if rejected(0.0):
            far = 0.0
        else:
            accepted, far = 0.0, step
    while not rejected(far):
        if abs(far) >= 1:  # too few questions for the test to reject anything: the whole range
            return math.copysign(1.0, step)
        accepted, far = far, max(-1.0, min(1.0, far + step))
        step *= 2
    for _ in range(40):
        if abs(far - accepted) < 1e-5:
            break
        middle = (accepted + far) / 2
        accepted, far = (accepted, middle) if rejected(middle) else (middle, far)
    return float(accepted)


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on the same `n` questions under `seeds` seeds; `diff` = arm
    accuracy - baseline's. The interval and `p_value` come from one test (sign flips over
    questions), so `ci_low` > 0 or `ci_high` < 0 exactly when `p_value` < 1 - level."""

    n: int
    seeds: int
    arm_accuracy: float
    baseline_accuracy: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    arm_only: int  # (seed, question) pairs the arm solved and the baseline did not
    baseline_only: int
    discordance: float  # share of (seed, question) pairs where the two disagree
    seed_agreement: float  # share of the discordance that repeats across seeds (rho, distill.power); NaN for one seed
    mde: float  # minimum detectable effect (80% power, alpha 0.05) of this design and spread; NaN if nothing differs

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(arm: Sequence[int], baseline: Sequence[int], level: float = LEVEL,
                      flips: int = SIGN_FLIPS, seed: int = 0) -> Comparison:
    """Paired 0/1 outcomes of one arm and the baseline on the same questions (one seed)."""
    a, b = np.asarray(arm, dtype=int), np.asarray(baseline, dtype=int)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} and {b.size}")
    return pooled_comparison(a[None, :], b[None, :], level, flips, seed)


def pooled_comparison(arm: np.ndarray, baseline: np.ndarray, level: float = LEVEL,
                      flips: int = SIGN_FLIPS, seed: int = 0) -> Comparison:
    """Outcomes of several seeds, shape (seeds, questions), the same questions in every seed.

    The question is the unit: a question one arm is better on tends to be so under every seed, so
    its (seed, question) pairs are not independent. Each question's difference is summed over seeds
    and the sign-flip test (exact at zero) runs over questions; its inversion gives the interval."""
    from distill.power import detectable_effect, seed_agreement

    a, b = np.asarray(arm, dtype=int), np.asarray(baseline, dtype=int)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"pooled outcomes must be (seeds, questions) of one shape: {a.shape} and {b.shape}")
    seeds, n = a.shape
    if n == 0:
        nan = math.nan
        return Comparison(0, seeds, nan, nan, nan, nan, nan, nan, 0, 0, nan, nan, nan)
    per_question = (a - b).sum(axis=0)
    low, high = sign_flip_interval(per_question, seeds, level, flips, seed)
    discordant = a != b
    # What each question's mean difference varies by under the null: the sign-flip sum's variance.
    null_variance = float(np.mean((per_question / seeds) ** 2))
    return Comparison(n=n, seeds=seeds, arm_accuracy=float(a.mean()), baseline_accuracy=float(b.mean()),
                      diff=float(a.mean() - b.mean()), ci_low=low, ci_high=high,
                      p_value=sign_flip_p(per_question), arm_only=int(np.sum(discordant & (a == 1))),
                      baseline_only=int(np.sum(discordant & (b == 1))), discordance=float(discordant.mean()),
                      seed_agreement=seed_agreement(null_variance, float(discordant.mean()), seeds),
                      mde=detectable_effect(null_variance, n) if null_variance > 0 else math.nan)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order); NaNs stay NaN and do not count."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(p_values, dtype=float)
    out = np.full(values.shape, math.nan)
    finite = ~np.isnan(values)
    if finite.any():
        out[finite] = multipletests(values[finite], method="holm")[1]
    return [float(v) for v in out]


def across_seeds(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean, sample standard deviation and Student-t interval of one number measured under several
    seeds (sd and interval NaN with fewer than two seeds)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return {"mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "seeds": int(x.size)}
    sd = float(x.std(ddof=1))
    if sd == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(level, x.size - 1, loc=mean, scale=sd / math.sqrt(x.size))
    return {"mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high), "seeds": int(x.size)}
