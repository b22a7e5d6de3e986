"""Intervals and tests against published or independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from distill.significance import (
    across_seeds,
    holm,
    mcnemar_exact,
    paired_bootstrap_interval,
    paired_comparison,
    pooled_comparison,
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


def test_paired_bootstrap_agrees_with_a_plain_resampling_loop():
    rng = np.random.default_rng(3)
    arm = rng.integers(0, 2, 200)
    base = np.where(rng.random(200) < 0.8, arm, 1 - arm)
    low, high = paired_bootstrap_interval(arm, base, resamples=4000, seed=1)
    diffs = arm - base
    reference = [diffs[rng.integers(0, 200, 200)].mean() for _ in range(4000)]
    ref_low, ref_high = np.percentile(reference, [2.5, 97.5])
    assert low == pytest.approx(ref_low, abs=0.015) and high == pytest.approx(ref_high, abs=0.015)
    assert low < diffs.mean() < high


def test_paired_comparison_counts_and_degenerate_case():
    c = paired_comparison([1, 1, 0, 0], [1, 0, 0, 1])
    assert (c.n, c.diff, c.arm_only, c.baseline_only) == (4, 0.0, 1, 1)
    same = paired_comparison([1, 0, 1], [1, 0, 1])
    assert (same.diff, same.ci_low, same.ci_high, same.p_mcnemar) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1, 0], [1])


def test_pooled_comparison_resamples_questions_not_seed_question_pairs():
    arm = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    base = np.array([[0, 1, 0, 1], [1, 0, 0, 0]])
    c = pooled_comparison(arm, base)
    assert c.n == 4 and c.diff == pytest.approx(0.25)
    assert c.p_mcnemar == pytest.approx(binomtest(0, 2, 0.5).pvalue)
    assert c.ci_low <= 0.25 <= c.ci_high


def test_wilson_bounds_at_none_and_all_correct_are_exact():
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0
