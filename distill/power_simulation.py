"""Simulated experiments that check the tests and the power formula against what they claim.

    outcomes_under_null(rng, questions=300, seeds=3, effect_sd=1.0)   # (arm, baseline), (seeds, questions) 0/1
    discordant_differences(rng, questions=300, seeds=3, discordance=0.25, effect=0.05, agreement=0.5)

bench/bench_calibration.py runs them by the thousand; the tests run a few hundred.
"""

from __future__ import annotations

import numpy as np


def outcomes_under_null(rng: np.random.Generator, questions: int, seeds: int, effect_sd: float = 0.0,
                        noise_sd: float = 1.0, seed_shift_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two arms with no average difference. On the logit scale, a question's difficulty is shared by
    both arms and every seed (N(-0.5, 1.5)); `effect_sd` gives each question an effect of one arm
    over the other, the same under every seed, with mean zero over questions; `noise_sd` is each
    trained model's own luck on each question; `seed_shift_sd` shifts a whole model (one seed of
    one arm) up or down. Returns 0/1 outcomes of shape (seeds, questions) per arm."""
    from scipy.special import expit

    difficulty = rng.normal(-0.5, 1.5, questions)
    effect = rng.normal(0.0, effect_sd, questions) if effect_sd else np.zeros(questions)

    def arm(sign: float) -> np.ndarray:
        shift = rng.normal(0.0, seed_shift_sd, (seeds, 1)) if seed_shift_sd else 0.0
        logit = difficulty + sign * effect / 2 + rng.normal(0.0, noise_sd, (seeds, questions)) + shift
        return (rng.random((seeds, questions)) < expit(logit)).astype(int)

    return arm(1.0), arm(-1.0)


def discordant_differences(rng: np.random.Generator, questions: int, seeds: int, discordance: float,
                           effect: float, agreement: float = 0.0) -> np.ndarray:
    """Per (seed, question) arm-minus-baseline outcomes in {-1, 0, 1}, shape (seeds, questions):
    each pair disagrees with probability `discordance`, in the arm's favour by `effect` on average;
    with probability `agreement` a question repeats one draw under every seed (rho in distill.power)."""
    probabilities = [(discordance - effect) / 2, 1 - discordance, (discordance + effect) / 2]
    shared = rng.choice([-1, 0, 1], size=questions, p=probabilities)
    own = rng.choice([-1, 0, 1], size=(seeds, questions), p=probabilities)
    repeats = rng.random(questions) < agreement
    return np.where(repeats, shared, own)
