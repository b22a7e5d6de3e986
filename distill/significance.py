"""How sure a comparison is: intervals and tests on per-question outcomes.

    wilson_interval(correct=17, n=24)                    # (low, high) of an accuracy, 95%
    paired_comparison(arm_correct, baseline_correct)     # diff, paired bootstrap interval, McNemar p
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
BOOTSTRAP_RESAMPLES = 10_000


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


def paired_bootstrap_interval(arm: Sequence[float], baseline: Sequence[float], level: float = LEVEL,
                              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(arm) - mean(baseline), resampling questions (pairs kept).
    Values may be 0/1 outcomes or per-question means over seeds."""
    from scipy.stats import bootstrap

    diff = np.asarray(arm, dtype=float) - np.asarray(baseline, dtype=float)
    if diff.size == 0:
        return math.nan, math.nan
    if np.all(diff == diff[0]):  # no spread to resample: the interval is the point
        return float(diff[0]), float(diff[0])
    result = bootstrap((diff,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                       rng=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on the same `n` questions; `diff` = arm accuracy - baseline's."""

    n: int
    arm_accuracy: float
    baseline_accuracy: float
    diff: float
    ci_low: float
    ci_high: float
    p_mcnemar: float
    arm_only: int  # questions the arm solved and the baseline did not
    baseline_only: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(arm: Sequence[int], baseline: Sequence[int], level: float = LEVEL,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Comparison:
    """Paired 0/1 outcomes of one arm and the baseline on the same questions."""
    a, b = np.asarray(arm, dtype=int), np.asarray(baseline, dtype=int)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.size} and {b.size}")
    low, high = paired_bootstrap_interval(a, b, level, resamples, seed)
    n = int(a.size)
    return Comparison(n=n, arm_accuracy=float(a.mean()) if n else math.nan,
                      baseline_accuracy=float(b.mean()) if n else math.nan,
                      diff=float(a.mean() - b.mean()) if n else math.nan, ci_low=low, ci_high=high,
                      p_mcnemar=mcnemar_exact(a, b), arm_only=int(np.sum((a == 1) & (b == 0))),
                      baseline_only=int(np.sum((a == 0) & (b == 1))))


def pooled_comparison(arm: np.ndarray, baseline: np.ndarray, level: float = LEVEL,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Comparison:
    """Outcomes of several seeds, shape (seeds, questions), the same questions in every seed.

    The difference is the mean over seeds; its interval resamples questions, each carrying its
    outcomes under every seed (so a question that is hard in every seed counts once, not per seed);
    the McNemar test counts every (seed, question) pair."""
    a, b = np.asarray(arm, dtype=int), np.asarray(baseline, dtype=int)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"pooled outcomes must be (seeds, questions) of one shape: {a.shape} and {b.shape}")
    low, high = paired_bootstrap_interval(a.mean(axis=0), b.mean(axis=0), level, resamples, seed)
    return Comparison(n=int(a.shape[1]), arm_accuracy=float(a.mean()), baseline_accuracy=float(b.mean()),
                      diff=float(a.mean() - b.mean()), ci_low=low, ci_high=high, p_mcnemar=mcnemar_exact(a.ravel(), b.ravel()),
                      arm_only=int(np.sum((a == 1) & (b == 0))), baseline_only=int(np.sum((a == 0) & (b == 1))))


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
