"""Intervals and tests against published or independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from distill.power import detectable_effect, planned_variance, power, questions_needed
from distill.power_simulation import discordant_differences, outcomes_under_null
from distill.significance import (
    across_seeds,
    holm,
    mcnemar_exact,
    paired_comparison,
    pooled_comparison,
    sign_flip_interval,
    sign_flip_p,
    wilson_interval,
)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I (Wilson score method).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombes_table(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_exact_mcnemar_is_the_binomial_test_on_discordant_pairs():
    # 9 questions only the arm solves, 1 only the baseline, 10 both, 5 neither.
    arm = [1] * 9 + [0] * 1 + [1] * 10 + [0] * 5
    base = [0] * 9 + [1] * 1 + [1] * 10 + [0] * 5
    expected = binomtest(1, 10, 0.5).pvalue
    assert expected == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(arm, base) == pytest.approx(expected)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pair


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04), returned in input order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_across_seeds_t_interval():
    out = across_seeds([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2)
    assert out["mean"] == 2.0 and out["sd"] == 1.0
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert math.isnan(across_seeds([0.4])["sd"])


def test_sign_flip_test_is_exact_mcnemar_with_one_seed_and_a_permutation_test_with_several():
    for only_arm, only_base in [(9, 1), (0, 5), (12, 12), (30, 17)]:
        diffs = [1] * only_arm + [-1] * only_base + [0] * 40
        assert sign_flip_p(diffs) == pytest.approx(binomtest(only_arm, only_arm + only_base, 0.5).pvalue)
    from scipy.stats import permutation_test

    diffs = np.array([3, 2, 2, 1, 1, 1, -1, -2, 0, 0, 3, 1])  # summed over 3 seeds
    reference = permutation_test((diffs,), np.sum, permutation_type="samples", n_resamples=np.inf)  # all 4,096 sign sets
    assert sign_flip_p(diffs) == pytest.approx(reference.pvalue)


def test_paired_comparison_counts_and_degenerate_case():
    c = paired_comparison([1, 1, 0, 0], [1, 0, 0, 1])
    assert (c.n, c.diff, c.arm_only, c.baseline_only, c.discordance) == (4, 0.0, 1, 1, 0.5)
    same = paired_comparison([1, 0, 1], [1, 0, 1])
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(same.mde)  # nothing differs: no effect to size
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1, 0], [1])


@pytest.mark.parametrize("only_arm", range(7))
@pytest.mark.parametrize("only_base", range(7))
def test_interval_excludes_zero_exactly_when_the_test_rejects(only_arm, only_base):
    # 0 against 5 was the case where a bootstrap interval (-5.0 to -0.5) and McNemar (p 0.0625) split
    n = 300
    arm = np.array([1] * only_arm + [0] * only_base + [1] * 60 + [0] * (n - 60 - only_arm - only_base))
    base = np.array([0] * only_arm + [1] * only_base + [1] * 60 + [0] * (n - 60 - only_arm - only_base))
    c = paired_comparison(arm, base, flips=2000)
    assert c.ci_low <= c.diff <= c.ci_high
    assert (c.ci_low > 0 or c.ci_high < 0) == (c.p_value < 0.05)
    if (only_arm, only_base) == (0, 5):
        assert c.p_value == pytest.approx(0.0625) and c.ci_high >= 0


def test_pooled_interval_and_test_agree_over_seeds():
    rng = np.random.default_rng(4)
    for _ in range(20):
        diffs = discordant_differences(rng, 60, 3, 0.2, rng.uniform(-0.1, 0.1), 0.5)
        low, high = sign_flip_interval(diffs.sum(axis=0), 3, flips=2000)
        assert low <= diffs.mean() <= high
        assert (low > 0 or high < 0) == (sign_flip_p(diffs.sum(axis=0)) < 0.05)


def test_pooled_comparison_takes_the_question_as_the_unit():
    arm = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    base = np.array([[0, 1, 0, 1], [1, 0, 0, 0]])
    c = pooled_comparison(arm, base)
    assert (c.n, c.seeds) == (4, 2) and c.diff == pytest.approx(0.25)
    # questions 0 and 3 differ by +1 each (summed over seeds): signs of two questions, 2 of 4 sets as extreme
    assert c.p_value == pytest.approx(0.5)
    assert c.ci_low <= 0.25 <= c.ci_high


def test_clustered_test_holds_its_level_under_the_null():
    """Question difficulty and seed noise, no effect anywhere (bench/bench_calibration.py: 5,000 draws)."""
    rng = np.random.default_rng(11)
    draws = 300
    rejected = sum(sign_flip_p(np.subtract(*outcomes_under_null(rng, 150, 3)).sum(axis=0)) < 0.05
                   for _ in range(draws))
    assert 0.015 <= rejected / draws <= 0.09


def test_question_specific_effects_fool_pooled_mcnemar_but_not_the_clustered_test():
    """One arm better on some questions, worse on others, no average effect: every seed repeats the
    pattern, so (seed, question) pairs are not independent and pooled McNemar rejects too often."""
    rng = np.random.default_rng(12)
    draws, clustered, pooled = 300, 0, 0
    for _ in range(draws):
        arm, base = outcomes_under_null(rng, 200, 3, effect_sd=3.0, noise_sd=0.5)
        clustered += sign_flip_p((arm - base).sum(axis=0)) < 0.05
        pooled += mcnemar_exact(arm.ravel(), base.ravel()) < 0.05
    assert clustered / draws <= 0.08
    assert pooled / draws >= 0.10 and pooled > 1.5 * clustered


def _exact_power_one_seed(questions: int, discordance: float, effect: float) -> float:
    """Power of the exact test at one seed, summed over every discordant count: no Monte Carlo error."""
    from scipy.stats import binom

    total = 0.0
    for m in range(1, questions + 1):
        k = np.arange(m + 1)
        p = 2 * np.minimum(binom.cdf(k, m, 0.5), binom.sf(k - 1, m, 0.5))
        total += binom.pmf(m, questions, discordance) * binom.pmf(k, m, (discordance + effect) / (2 * discordance))[p < 0.05].sum()
    return total


@pytest.mark.parametrize(("questions", "seeds", "discordance", "agreement"), [
    (300, 1, 0.25, 0.0), (1000, 1, 0.1, 0.0), (200, 3, 0.2, 0.5)])
def test_power_formula_is_within_3_points_of_the_tests_power(questions, seeds, discordance, agreement):
    """At the formula's minimum detectable effect the test finds the effect 80% of the time, give or
    take 3 points (one seed: about 2 points fewer, the exact test being discrete)."""
    variance = planned_variance(discordance, seeds, agreement)
    effect = detectable_effect(variance, questions)
    assert power(effect, variance, questions) == pytest.approx(0.80, abs=1e-3)
    assert questions_needed(effect, variance) == pytest.approx(questions, abs=1)
    if seeds == 1:
        found = _exact_power_one_seed(questions, discordance, effect)
    else:  # simulated (bench/bench_calibration.py draws 10,000 per setting)
        rng, draws = np.random.default_rng(5), 3000
        found = sum(sign_flip_p(discordant_differences(rng, questions, seeds, discordance, effect, agreement)
                                .sum(axis=0)) < 0.05 for _ in range(draws)) / draws
    assert found == pytest.approx(0.80, abs=0.03)


def test_measured_spread_recovers_the_planned_agreement():
    rng = np.random.default_rng(6)
    diffs = discordant_differences(rng, 4000, 3, 0.25, 0.0, 0.5)
    arm, base = (diffs == 1).astype(int), (diffs == -1).astype(int)
    c = pooled_comparison(arm, base, flips=200)
    assert c.discordance == pytest.approx(0.25, abs=0.01)
    assert c.seed_agreement == pytest.approx(0.5, abs=0.05)
    assert c.mde == pytest.approx(detectable_effect(planned_variance(0.25, 3, 0.5), 4000), rel=0.05)


def test_wilson_bounds_at_none_and_all_correct_are_exact():
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0
