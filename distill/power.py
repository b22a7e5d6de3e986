"""How large a difference an experiment can see: before it runs (from its plan) and after (from
its outcomes).

    variance = planned_variance(discordance=0.25, seeds=3, agreement=0.5)
    detectable_effect(variance, questions=300)     # MDE at 80% power, alpha 0.05 (accuracy units)
    questions_needed(0.03, variance)               # questions for a 3-point effect
    power(0.03, variance, questions=300)

The comparison test (distill.significance) sums each question's difference over seeds and flips
its sign. Under the null, a question's mean difference over S seeds varies by

    V = r (1 + (S - 1) rho) / S

r: the share of (seed, question) pairs where the two arms disagree (discordance); rho: how much of
that disagreement repeats across seeds (0: each seed disagrees on other questions; 1: every seed on
the same ones, so seeds add nothing). The test's statistic is then a mean of n such values, and
the normal approximation (statsmodels' one-sample NormalIndPower) gives power and effect sizes.
"""

from __future__ import annotations

import math

ALPHA = 0.05
POWER = 0.80
# Defaults where no pilot is given: the discordance SIKeD against one-pass distillation measured
# (223 of 900 (seed, question) pairs, docs/results.md); rho is an assumption, not a measurement.
DEFAULT_DISCORDANCE = 0.25
DEFAULT_AGREEMENT = 0.5


def planned_variance(discordance: float, seeds: int, agreement: float = DEFAULT_AGREEMENT) -> float:
    """V above: the null variance of one question's mean difference over `seeds` seeds."""
    return discordance * (1 + (seeds - 1) * agreement) / seeds


def seed_agreement(null_variance: float, discordance: float, seeds: int) -> float:
    """rho recovered from a comparison's measured V and r (NaN with one seed or no discordance)."""
    if seeds < 2 or discordance == 0:
        return math.nan
    return min(1.0, max(0.0, (seeds * null_variance / discordance - 1) / (seeds - 1)))


def _solver():
    from statsmodels.stats.power import NormalIndPower

    return NormalIndPower()


def detectable_effect(variance: float, questions: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest difference in accuracy found with probability `target` by a two-sided test at
    `alpha`, on `questions` questions whose mean differences vary by `variance`."""
    standardised = _solver().solve_power(effect_size=None, nobs1=questions, alpha=alpha, power=target, ratio=0)
    return float(standardised * math.sqrt(variance))


def questions_needed(effect: float, variance: float, alpha: float = ALPHA, target: float = POWER) -> int:
    """Questions for `effect` (accuracy units) to be found with probability `target`."""
    n = _solver().solve_power(effect_size=abs(effect) / math.sqrt(variance), nobs1=None, alpha=alpha,
                              power=target, ratio=0)
    return math.ceil(n)


def power(effect: float, variance: float, questions: int, alpha: float = ALPHA) -> float:
    """Probability that the test finds `effect` (accuracy units) on `questions` questions."""
    return float(_solver().power(effect_size=abs(effect) / math.sqrt(variance), nobs1=questions, alpha=alpha,
                                 ratio=0))
