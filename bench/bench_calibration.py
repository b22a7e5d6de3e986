"""Do the comparison test's error rates and the power formula hold? Simulated experiments.

    python bench/bench_calibration.py                 # 5,000 null experiments per setting, 10,000 for power
    python bench/bench_calibration.py --draws 2000 --json

Null settings (distill.power_simulation.outcomes_under_null): 300 questions, 3 seeds, question
difficulty shared by both arms and every seed, each trained model's own noise per question; then
the same with a question-specific effect of mean zero (one arm better on some questions, worse on
others, under every seed), and with a whole-model shift per seed. Each row gives the share of
experiments the clustered sign-flip test (distill.significance) rejects at 5%, and the old pooled
McNemar over every (seed, question) pair, with Wilson 95% intervals. Power settings: the formula's
minimum detectable effect (distill.power), and how often the test finds it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from distill.power import detectable_effect, planned_variance
from distill.power_simulation import discordant_differences, outcomes_under_null
from distill.significance import mcnemar_exact, sign_flip_p, wilson_interval

NULLS = {
    "difficulty and model noise": {"effect_sd": 0.0, "noise_sd": 1.0},
    "question-specific effects, mean zero": {"effect_sd": 3.0, "noise_sd": 0.5},
    "whole-model shift per seed (sd 0.3 logit)": {"effect_sd": 0.0, "noise_sd": 1.0, "seed_shift_sd": 0.3},
}
POWER = [(300, 1, 0.25, 0.0), (200, 3, 0.2, 0.5), (1000, 1, 0.1, 0.0)]


def _rate(hits: int, draws: int) -> dict:
    low, high = wilson_interval(hits, draws)
    return {"rate": hits / draws, "ci_low": low, "ci_high": high, "n": draws}


def null_rates(draws: int, questions: int = 300, seeds: int = 3) -> dict:
    rng = np.random.default_rng(2024)
    out = {}
    for name, setting in NULLS.items():
        clustered = pooled = 0
        for _ in range(draws):
            arm, base = outcomes_under_null(rng, questions, seeds, **setting)
            clustered += sign_flip_p((arm - base).sum(axis=0)) < 0.05
            pooled += mcnemar_exact(arm.ravel(), base.ravel()) < 0.05
        out[name] = {"clustered": _rate(clustered, draws), "pooled_mcnemar": _rate(pooled, draws)}
    return out


def power_rates(draws: int) -> list[dict]:
    rng = np.random.default_rng(2025)
    rows = []
    for questions, seeds, discordance, agreement in POWER:
        effect = detectable_effect(planned_variance(discordance, seeds, agreement), questions)
        found = sum(sign_flip_p(discordant_differences(rng, questions, seeds, discordance, effect, agreement)
                                .sum(axis=0)) < 0.05 for _ in range(draws))
        rows.append({"questions": questions, "seeds": seeds, "discordance": discordance, "agreement": agreement,
                     "effect": effect, "formula": 0.80, "simulated": _rate(found, draws)})
    return rows


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n {r['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5000, help="null experiments per setting")
    parser.add_argument("--power-draws", type=int, default=10000, help="experiments per power setting")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"null": null_rates(args.draws), "power": power_rates(args.power_draws)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, rates in result["null"].items():
        print(f"{name}: clustered {_pct(rates['clustered'])}; pooled McNemar {_pct(rates['pooled_mcnemar'])}")
    for r in result["power"]:
        print(f"{r['questions']} questions x {r['seeds']} seeds, discordance {r['discordance']}, rho {r['agreement']}: "
              f"MDE {100 * r['effect']:.1f} points, formula 80%, test {_pct(r['simulated'])}")


if __name__ == "__main__":
    main()
